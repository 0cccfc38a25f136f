//! Checkpoints: `model.safetensors` (weights, readable from PyTorch), `config.json` (model
//! config), `tokenizer.json` (domain tokenizer metadata), `train_config.json`, and `resume/`
//! (burn records of the model and optimiser, for continuing a run).
//!
//! Every file is written atomically (temporary file + rename). Loading checks the weights file
//! against the config before touching the model, so a truncated or mismatched checkpoint is a
//! typed error naming the file and tensor, never a panic.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::optim::Optimizer;
use burn::prelude::*;
use burn::record::{BinBytesRecorder, FullPrecisionSettings, Recorder};
use burn::store::{ModuleSnapshot, SafetensorsStore};
use burn::tensor::backend::AutodiffBackend;
use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::error::CheckpointError;
use crate::model::{BlockDiffusionConfig, BlockDiffusionModel};

/// Weights file name.
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// Model config file name.
pub const CONFIG_FILE: &str = "config.json";
/// Tokenizer metadata file name.
pub const TOKENIZER_FILE: &str = "tokenizer.json";
/// Train config file name.
pub const TRAIN_CONFIG_FILE: &str = "train_config.json";
const RESUME_DIR: &str = "resume";

/// A loaded checkpoint.
pub struct Checkpoint<B: Backend> {
    /// The model with its weights.
    pub model: BlockDiffusionModel<B>,
    /// Its config.
    pub config: BlockDiffusionConfig,
    /// The tokenizer metadata saved with it.
    pub tokenizer: serde_json::Value,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CheckpointError + '_ {
    move |source| CheckpointError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes `bytes` to `path` atomically (temporary file in the same directory, then rename).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), CheckpointError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    std::fs::write(&tmp, bytes).map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

/// Serialises `value` as pretty JSON to `path`, atomically.
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), CheckpointError> {
    let s = serde_json::to_vec_pretty(value).map_err(|e| CheckpointError::Json {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    write_atomic(path, &s)
}

/// Reads JSON from `path` into `T`.
pub fn read_json<T: DeserializeOwned>(path: &Path) -> Result<T, CheckpointError> {
    let bytes = std::fs::read(path).map_err(io(path))?;
    serde_json::from_slice(&bytes).map_err(|e| CheckpointError::Json {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// The weights of `model` as safetensors bytes.
pub fn weights_to_bytes<B: Backend>(model: &BlockDiffusionModel<B>) -> Vec<u8> {
    let mut store = SafetensorsStore::from_bytes(None);
    model
        .save_into(&mut store)
        .expect("serialising to memory cannot fail");
    store.get_bytes().expect("memory store holds bytes")
}

/// Saves weights, config and tokenizer metadata into `dir`.
pub fn save<B: Backend>(
    dir: &Path,
    model: &BlockDiffusionModel<B>,
    config: &BlockDiffusionConfig,
    tokenizer: &serde_json::Value,
) -> Result<(), CheckpointError> {
    write_atomic(&dir.join(WEIGHTS_FILE), &weights_to_bytes(model))?;
    write_json(&dir.join(CONFIG_FILE), config)?;
    write_json(&dir.join(TOKENIZER_FILE), tokenizer)
}

/// One tensor entry of a safetensors header.
#[derive(Debug, Deserialize)]
struct HeaderEntry {
    dtype: String,
    shape: Vec<usize>,
    data_offsets: [usize; 2],
}

/// Parses and bounds-checks a safetensors header: name → (dtype, shape).
fn parse_header(
    bytes: &[u8],
    path: &Path,
) -> Result<BTreeMap<String, (String, Vec<usize>)>, CheckpointError> {
    let corrupt = |m: String| CheckpointError::Corrupt {
        path: path.to_path_buf(),
        message: m,
    };
    if bytes.len() < 8 {
        return Err(corrupt(format!(
            "{} bytes, too short for a header",
            bytes.len()
        )));
    }
    let n = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")) as usize;
    if n > bytes.len() - 8 {
        return Err(corrupt(format!(
            "header claims {n} bytes but the file has {} after the length (truncated?)",
            bytes.len() - 8
        )));
    }
    let raw: BTreeMap<String, serde_json::Value> = serde_json::from_slice(&bytes[8..8 + n])
        .map_err(|e| corrupt(format!("header is not JSON: {e}")))?;
    let data_len = bytes.len() - 8 - n;
    let mut out = BTreeMap::new();
    for (name, v) in raw {
        if name == "__metadata__" {
            continue;
        }
        let e: HeaderEntry = serde_json::from_value(v)
            .map_err(|e| corrupt(format!("tensor `{name}`: bad header entry: {e}")))?;
        let elem = match e.dtype.as_str() {
            "F32" | "I32" | "U32" => 4,
            "F64" | "I64" | "U64" => 8,
            "F16" | "BF16" | "I16" | "U16" => 2,
            "BOOL" | "U8" | "I8" => 1,
            other => {
                return Err(corrupt(format!(
                    "tensor `{name}`: unsupported dtype {other}"
                )))
            }
        };
        let [a, b] = e.data_offsets;
        let expected = e
            .shape
            .iter()
            .try_fold(elem, |acc: usize, &d| acc.checked_mul(d))
            .ok_or_else(|| corrupt(format!("tensor `{name}`: shape overflows")))?;
        if a > b || b > data_len || b - a != expected {
            return Err(corrupt(format!(
                "tensor `{name}`: data range {a}..{b} does not fit {data_len} data bytes / shape {:?} (truncated?)",
                e.shape
            )));
        }
        out.insert(name, (e.dtype, e.shape));
    }
    Ok(out)
}

/// Loads weights from safetensors `bytes` (read from `path`) into `model`, checking every
/// tensor name and shape against the model first.
pub fn load_weights<B: Backend>(
    model: BlockDiffusionModel<B>,
    bytes: Vec<u8>,
    path: &Path,
) -> Result<BlockDiffusionModel<B>, CheckpointError> {
    let found = parse_header(&bytes, path)?;
    let expected = parse_header(&weights_to_bytes(&model), path)?;
    let missing: Vec<String> = expected
        .keys()
        .filter(|k| !found.contains_key(*k))
        .cloned()
        .collect();
    if !missing.is_empty() {
        return Err(CheckpointError::MissingTensors {
            path: path.to_path_buf(),
            tensors: missing,
        });
    }
    let unexpected: Vec<String> = found
        .keys()
        .filter(|k| !expected.contains_key(*k))
        .cloned()
        .collect();
    if !unexpected.is_empty() {
        return Err(CheckpointError::UnexpectedTensors {
            path: path.to_path_buf(),
            tensors: unexpected,
        });
    }
    for (name, (dtype, shape)) in &expected {
        let (fdtype, fshape) = &found[name];
        if fshape != shape || fdtype != dtype {
            return Err(CheckpointError::ShapeMismatch {
                path: path.to_path_buf(),
                tensor: format!("{name} ({fdtype})"),
                expected: shape.clone(),
                found: fshape.clone(),
            });
        }
    }
    let mut model = model;
    let mut store = SafetensorsStore::from_bytes(Some(bytes));
    let result = model
        .load_from(&mut store)
        .map_err(|e| CheckpointError::Corrupt {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
    if !result.errors.is_empty() {
        return Err(CheckpointError::Corrupt {
            path: path.to_path_buf(),
            message: format!("{:?}", result.errors),
        });
    }
    Ok(model)
}

/// A freshly initialised model for `config`, with a token-feature slot of the right shape
/// when the config has one (the table is part of the weights that are then loaded).
fn empty_model<B: Backend>(
    config: &BlockDiffusionConfig,
    device: &B::Device,
) -> BlockDiffusionModel<B> {
    let model = config.init::<B>(device);
    if config.token_feature_dim > 0 {
        model.with_token_features(Tensor::zeros(
            [config.vocab_size, config.token_feature_dim],
            device,
        ))
    } else {
        model
    }
}

/// The same weights on another backend (e.g. a CPU-trained model onto `CudaBackend`), through
/// the safetensors bytes a checkpoint holds, so what moves is exactly what [`save`] writes.
pub fn to_backend<B1: Backend, B2: Backend>(
    model: &BlockDiffusionModel<B1>,
    config: &BlockDiffusionConfig,
    device: &B2::Device,
) -> Result<BlockDiffusionModel<B2>, CheckpointError> {
    load_weights(
        empty_model(config, device),
        weights_to_bytes(model),
        Path::new("<in-memory weights>"),
    )
}

/// Loads a checkpoint directory written by [`save`].
pub fn load<B: Backend>(dir: &Path, device: &B::Device) -> Result<Checkpoint<B>, CheckpointError> {
    let cfg_path = dir.join(CONFIG_FILE);
    let config: BlockDiffusionConfig = read_json(&cfg_path)?;
    config
        .validate()
        .map_err(|message| CheckpointError::Config {
            path: cfg_path.clone(),
            message,
        })?;
    let tok_path = dir.join(TOKENIZER_FILE);
    let tokenizer: serde_json::Value = if tok_path.exists() {
        read_json(&tok_path)?
    } else {
        serde_json::Value::Null
    };
    let w_path = dir.join(WEIGHTS_FILE);
    let bytes = std::fs::read(&w_path).map_err(io(&w_path))?;
    let model = load_weights(empty_model(&config, device), bytes, &w_path)?;
    Ok(Checkpoint {
        model,
        config,
        tokenizer,
    })
}

#[derive(Serialize, Deserialize)]
struct ResumeState {
    step: usize,
}

/// Saves the autodiff model and optimiser records for resuming at `step`.
pub fn save_resume<B: AutodiffBackend, O: Optimizer<BlockDiffusionModel<B>, B>>(
    dir: &Path,
    model: &BlockDiffusionModel<B>,
    optim: &O,
    step: usize,
) -> Result<(), CheckpointError> {
    let rdir = dir.join(RESUME_DIR);
    let rec = BinBytesRecorder::<FullPrecisionSettings>::default();
    let m = rec
        .record(model.clone().into_record(), ())
        .map_err(|e| CheckpointError::Corrupt {
            path: rdir.join("model.bin"),
            message: e.to_string(),
        })?;
    let o = rec
        .record(optim.to_record(), ())
        .map_err(|e| CheckpointError::Corrupt {
            path: rdir.join("optim.bin"),
            message: e.to_string(),
        })?;
    write_atomic(&rdir.join("model.bin"), &m)?;
    write_atomic(&rdir.join("optim.bin"), &o)?;
    write_json(&rdir.join("state.json"), &ResumeState { step })
}

/// Restores a run saved by [`save_resume`]; `None` when `dir` has no resume state.
pub fn load_resume<B: AutodiffBackend, O: Optimizer<BlockDiffusionModel<B>, B>>(
    dir: &Path,
    model: BlockDiffusionModel<B>,
    optim: O,
    device: &B::Device,
) -> Result<Option<(BlockDiffusionModel<B>, O, usize)>, CheckpointError> {
    let rdir = dir.join(RESUME_DIR);
    let state_path = rdir.join("state.json");
    if !state_path.exists() {
        return Ok(None);
    }
    let state: ResumeState = read_json(&state_path)?;
    let rec = BinBytesRecorder::<FullPrecisionSettings>::default();
    let read = |name: &str| -> Result<(Vec<u8>, PathBuf), CheckpointError> {
        let p = rdir.join(name);
        Ok((std::fs::read(&p).map_err(io(&p))?, p))
    };
    let (mb, mp) = read("model.bin")?;
    let m_rec = rec.load(mb, device).map_err(|e| CheckpointError::Corrupt {
        path: mp,
        message: e.to_string(),
    })?;
    let (ob, op) = read("optim.bin")?;
    let o_rec = rec.load(ob, device).map_err(|e| CheckpointError::Corrupt {
        path: op,
        message: e.to_string(),
    })?;
    // Burn records carry the parameter ids the optimiser state is keyed by, which is why resume
    // uses them rather than the safetensors weights.
    Ok(Some((
        model.load_record(m_rec),
        optim.load_record(o_rec),
        state.step,
    )))
}
