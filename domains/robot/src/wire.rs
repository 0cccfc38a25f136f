//! openpi's wire format: msgpack with numpy arrays encoded as `openpi_client.msgpack_numpy`
//! does — a map with *binary* keys `__ndarray__` (true), `data` (raw bytes), `dtype` (a numpy
//! dtype string such as `<f4`) and `shape` (array of ints); numpy scalars as `__npgeneric__`.
//!
//! Everything arriving here is untrusted: every failure is a message naming the key at fault,
//! never a panic, and sizes are checked before anything is allocated from them.

use rmpv::Value;

use crate::chunk::ActionChunk;
use crate::policy::{Observation, RobotSettings};

const ND: &[u8] = b"__ndarray__";
const NPG: &[u8] = b"__npgeneric__";

/// Deepest msgpack nesting accepted (an observation dict is 2–3 levels deep).
const MAX_DEPTH: usize = 16;

/// A numeric numpy array converted to `f64`.
#[derive(Clone, Debug, PartialEq)]
pub struct NdArray {
    /// numpy dtype string as sent.
    pub dtype: String,
    /// Shape.
    pub shape: Vec<usize>,
    /// Values, row-major.
    pub values: Vec<f64>,
}

fn key_is(k: &Value, name: &[u8]) -> bool {
    match k {
        Value::Binary(b) => b.as_slice() == name,
        Value::String(s) => s.as_bytes() == name,
        _ => false,
    }
}

fn get<'a>(map: &'a [(Value, Value)], name: &str) -> Option<&'a Value> {
    map.iter()
        .find(|(k, _)| key_is(k, name.as_bytes()))
        .map(|(_, v)| v)
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => s.as_str().map(str::to_string),
        Value::Binary(b) => String::from_utf8(b.clone()).ok(),
        _ => None,
    }
}

/// Parses a numpy array (or a plain msgpack list of numbers, or a number) into `f64`s.
pub fn parse_array(v: &Value, what: &str) -> Result<NdArray, String> {
    match v {
        Value::Map(m) if m.iter().any(|(k, _)| key_is(k, ND)) => {
            let dtype = get(m, "dtype")
                .and_then(text)
                .ok_or_else(|| format!("`{what}`: numpy array without a `dtype` string"))?;
            let shape: Vec<usize> = match get(m, "shape") {
                Some(Value::Array(a)) => a
                    .iter()
                    .map(|x| x.as_u64().map(|u| u as usize))
                    .collect::<Option<_>>()
                    .ok_or_else(|| format!("`{what}`: shape must be non-negative integers"))?,
                _ => return Err(format!("`{what}`: numpy array without a `shape` list")),
            };
            let data = match get(m, "data") {
                Some(Value::Binary(b)) => b.as_slice(),
                _ => return Err(format!("`{what}`: numpy array without binary `data`")),
            };
            let (little, kind, size) = parse_dtype(&dtype).ok_or_else(|| {
                format!("`{what}`: unsupported dtype {dtype:?} (need float32/float64/int32/int64)")
            })?;
            let count = shape
                .iter()
                .try_fold(1usize, |a, &d| a.checked_mul(d))
                .ok_or_else(|| format!("`{what}`: shape {shape:?} overflows"))?;
            if count.checked_mul(size) != Some(data.len()) {
                return Err(format!(
                    "`{what}`: {} data bytes do not match shape {shape:?} of {dtype}",
                    data.len()
                ));
            }
            let values = data
                .chunks_exact(size)
                .map(|b| decode_scalar(b, little, kind))
                .collect();
            Ok(NdArray {
                dtype,
                shape,
                values,
            })
        }
        Value::Array(a) => {
            let values = a
                .iter()
                .map(|x| x.as_f64().or_else(|| x.as_i64().map(|i| i as f64)))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| format!("`{what}`: list must hold numbers only"))?;
            Ok(NdArray {
                dtype: "list".into(),
                shape: vec![values.len()],
                values,
            })
        }
        _ => Err(format!(
            "`{what}`: expected a numpy array or a list of numbers"
        )),
    }
}

fn parse_dtype(d: &str) -> Option<(bool, char, usize)> {
    let b = d.as_bytes();
    if b.len() != 3 {
        return None;
    }
    let little = match b[0] {
        b'<' | b'|' | b'=' => cfg!(target_endian = "little") || b[0] == b'<',
        b'>' => false,
        _ => return None,
    };
    let kind = b[1] as char;
    let size = (b[2] as char).to_digit(10)? as usize;
    match (kind, size) {
        ('f', 4) | ('f', 8) | ('i', 4) | ('i', 8) => Some((little, kind, size)),
        _ => None,
    }
}

fn decode_scalar(b: &[u8], little: bool, kind: char) -> f64 {
    let mut buf = [0u8; 8];
    buf[..b.len()].copy_from_slice(b);
    if !little {
        buf[..b.len()].reverse();
    }
    match (kind, b.len()) {
        ('f', 4) => f32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]) as f64,
        ('f', _) => f64::from_le_bytes(buf),
        ('i', 4) => i32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]) as f64,
        _ => i64::from_le_bytes(buf) as f64,
    }
}

/// Reads one msgpack value from a whole frame (trailing bytes are an error).
pub fn read_frame(bytes: &[u8]) -> Result<Value, String> {
    let mut rd = bytes;
    let v = rmpv::decode::read_value_with_max_depth(&mut rd, MAX_DEPTH)
        .map_err(|e| format!("frame is not valid msgpack: {e}"))?;
    if !rd.is_empty() {
        return Err(format!("{} bytes after the msgpack value", rd.len()));
    }
    Ok(v)
}

/// Decodes an observation frame: a map with `state` (or `observation/state`: `[obs_dim]`,
/// `[history, obs_dim]` or flat) and `prompt` (task name) or `task` (index). The prompt may be
/// left out when the policy knows one task.
pub fn decode_observation(bytes: &[u8], s: &RobotSettings) -> Result<Observation, String> {
    let v = read_frame(bytes)?;
    let Value::Map(m) = &v else {
        return Err("observation must be a msgpack map".into());
    };
    let state_v = get(m, "state")
        .or_else(|| get(m, "observation/state"))
        .ok_or("missing key `state` (the robot state vector)")?;
    let arr = parse_array(state_v, "state")?;
    let want = s.config.history * s.obs_dim;
    if arr.values.len() != want {
        return Err(format!(
            "`state` has shape {:?} ({} values); the policy expects {want} (history {} × obs_dim {})",
            arr.shape,
            arr.values.len(),
            s.config.history,
            s.obs_dim
        ));
    }
    if let Some(i) = arr.values.iter().position(|x| !x.is_finite()) {
        return Err(format!("`state` value {i} is NaN or infinite"));
    }
    let task = if let Some(p) = get(m, "prompt") {
        let name = text(p).ok_or("`prompt` must be a string naming the task")?;
        s.task_index(&name)
            .ok_or_else(|| format!("unknown task {name:?}; known: {}", s.tasks.join(", ")))?
    } else if let Some(t) = get(m, "task") {
        let i = match t {
            Value::Map(g) if g.iter().any(|(k, _)| key_is(k, NPG)) => {
                get(g, "data").and_then(Value::as_i64)
            }
            other => other.as_i64(),
        }
        .ok_or("`task` must be an integer index")?;
        if i < 0 || i as usize >= s.tasks.len() {
            return Err(format!("`task` {i} outside 0..{}", s.tasks.len()));
        }
        i as usize
    } else if s.tasks.len() == 1 {
        0
    } else {
        return Err(format!(
            "missing key `prompt` (one of: {})",
            s.tasks.join(", ")
        ));
    };
    Ok(Observation {
        state: arr.values.iter().map(|&x| x as f32).collect(),
        task,
    })
}

/// A float32 numpy array value.
pub fn ndarray_f32(shape: &[usize], data: &[f32]) -> Value {
    let bytes: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
    Value::Map(vec![
        (Value::Binary(ND.to_vec()), Value::Boolean(true)),
        (Value::Binary(b"data".to_vec()), Value::Binary(bytes)),
        (Value::Binary(b"dtype".to_vec()), Value::from("<f4")),
        (
            Value::Binary(b"shape".to_vec()),
            Value::Array(shape.iter().map(|&d| Value::from(d as u64)).collect()),
        ),
    ])
}

/// Serialises a value.
pub fn write_frame(v: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    rmpv::encode::write_value(&mut out, v).expect("writing to a Vec cannot fail");
    out
}

/// The reply frame: `{"actions": f32[H, D], "server_timing": {name: ms}}`.
pub fn encode_actions(chunk: &ActionChunk, timing: &[(&str, f64)]) -> Vec<u8> {
    let t = Value::Map(
        timing
            .iter()
            .map(|(k, v)| (Value::from(*k), Value::F64(*v)))
            .collect(),
    );
    write_frame(&Value::Map(vec![
        (
            Value::from("actions"),
            ndarray_f32(&[chunk.horizon, chunk.dim], &chunk.values),
        ),
        (Value::from("server_timing"), t),
    ]))
}

/// A JSON value as msgpack (the metadata frame).
pub fn json_to_value(j: &serde_json::Value) -> Value {
    match j {
        serde_json::Value::Null => Value::Nil,
        serde_json::Value::Bool(b) => Value::Boolean(*b),
        serde_json::Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                Value::from(i)
            } else {
                Value::F64(n.as_f64().unwrap_or(f64::NAN))
            }
        }
        serde_json::Value::String(s) => Value::from(s.as_str()),
        serde_json::Value::Array(a) => Value::Array(a.iter().map(json_to_value).collect()),
        serde_json::Value::Object(o) => Value::Map(
            o.iter()
                .map(|(k, v)| (Value::from(k.as_str()), json_to_value(v)))
                .collect(),
        ),
    }
}

/// Decodes a reply frame's actions (for Rust clients and tests).
pub fn decode_actions(bytes: &[u8]) -> Result<NdArray, String> {
    let v = read_frame(bytes)?;
    let Value::Map(m) = &v else {
        return Err("reply is not a map".into());
    };
    parse_array(
        get(m, "actions").ok_or("reply has no `actions`")?,
        "actions",
    )
}

/// An observation frame as `openpi-client` would send it (for Rust clients and tests).
pub fn encode_observation(state: &[f32], prompt: &str) -> Vec<u8> {
    write_frame(&Value::Map(vec![
        (Value::from("state"), ndarray_f32(&[state.len()], state)),
        (Value::from("prompt"), Value::from(prompt)),
    ]))
}
