//! Demonstrations: the safetensors files `datasets/metaworld/record.py` writes, and the
//! (observation history, action chunk) pairs the policy trains on.
//!
//! File format `blockdiff-robot-demos/1` (see `datasets/metaworld/README.md`): tensors
//! `obs` f32 `[N, obs_dim]`, `actions` f32 `[N, act_dim]`, `episode_offsets` i64 `[E+1]`,
//! `episode_task` i64 `[E]`, `episode_seed` i64 `[E]`, `episode_success` i64 `[E]`; metadata
//! `format`, `tasks` (JSON list of names).

use std::path::Path;

use safetensors::{Dtype, SafeTensors};
use serde::{Deserialize, Serialize};

use crate::chunk::ActionChunk;
use crate::error::RobotError;

/// The format tag `record.py` writes.
pub const DEMOS_FORMAT: &str = "blockdiff-robot-demos/1";

/// One recorded episode: rows `start..end` of the step tensors.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Episode {
    /// First row.
    pub start: usize,
    /// One past the last row.
    pub end: usize,
    /// Task index into [`Demos::tasks`].
    pub task: usize,
    /// Environment reset seed.
    pub seed: i64,
    /// Whether the expert succeeded.
    pub success: bool,
}

/// A demonstrations file in memory.
#[derive(Clone, Debug, PartialEq)]
pub struct Demos {
    /// Task names (MetaWorld environment names).
    pub tasks: Vec<String>,
    /// Observation width.
    pub obs_dim: usize,
    /// Action width.
    pub act_dim: usize,
    /// Observations, `n × obs_dim`.
    pub obs: Vec<f32>,
    /// Actions, `n × act_dim`.
    pub actions: Vec<f32>,
    /// Episodes in file order.
    pub episodes: Vec<Episode>,
}

fn tensor_f32(
    st: &SafeTensors<'_>,
    name: &str,
    fail: &dyn Fn(String) -> RobotError,
) -> Result<(Vec<f32>, Vec<usize>), RobotError> {
    let t = st
        .tensor(name)
        .map_err(|_| fail(format!("tensor `{name}` missing")))?;
    if t.dtype() != Dtype::F32 {
        return Err(fail(format!(
            "tensor `{name}` is {:?}, expected F32",
            t.dtype()
        )));
    }
    let v: Vec<f32> = t
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    if let Some(i) = v.iter().position(|x| !x.is_finite()) {
        return Err(fail(format!("tensor `{name}` value {i} is not finite")));
    }
    Ok((v, t.shape().to_vec()))
}

fn tensor_i64(
    st: &SafeTensors<'_>,
    name: &str,
    fail: &dyn Fn(String) -> RobotError,
) -> Result<(Vec<i64>, Vec<usize>), RobotError> {
    let t = st
        .tensor(name)
        .map_err(|_| fail(format!("tensor `{name}` missing")))?;
    if t.dtype() != Dtype::I64 {
        return Err(fail(format!(
            "tensor `{name}` is {:?}, expected I64",
            t.dtype()
        )));
    }
    let v = t
        .data()
        .chunks_exact(8)
        .map(|b| i64::from_le_bytes(b.try_into().expect("8 bytes")))
        .collect();
    Ok((v, t.shape().to_vec()))
}

impl Demos {
    /// Reads and validates a demonstrations file; every error names the file and the tensor
    /// or metadata field at fault.
    pub fn read(path: &Path) -> Result<Self, RobotError> {
        let bytes = std::fs::read(path).map_err(|source| RobotError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_bytes(&bytes, path)
    }

    /// Parses a demonstrations file already in memory (`path` names it in errors).
    pub fn from_bytes(bytes: &[u8], path: &Path) -> Result<Self, RobotError> {
        let fail = |message: String| RobotError::Format {
            path: path.to_path_buf(),
            message,
        };
        let (_, meta) = SafeTensors::read_metadata(bytes)
            .map_err(|e| fail(format!("not a safetensors file: {e}")))?;
        let st = SafeTensors::deserialize(bytes)
            .map_err(|e| fail(format!("not a safetensors file: {e}")))?;
        let md = meta.metadata().clone().unwrap_or_default();
        match md.get("format") {
            Some(f) if f == DEMOS_FORMAT => {}
            other => {
                return Err(fail(format!(
                    "metadata `format` is {other:?}, expected {DEMOS_FORMAT:?}"
                )))
            }
        }
        let tasks: Vec<String> = md
            .get("tasks")
            .ok_or_else(|| fail("metadata `tasks` missing".into()))
            .and_then(|t| {
                serde_json::from_str(t)
                    .map_err(|e| fail(format!("metadata `tasks` is not a JSON list of names: {e}")))
            })?;
        if tasks.is_empty() {
            return Err(fail("metadata `tasks` is empty".into()));
        }
        let (obs, obs_shape) = tensor_f32(&st, "obs", &fail)?;
        let (actions, act_shape) = tensor_f32(&st, "actions", &fail)?;
        if obs_shape.len() != 2 || act_shape.len() != 2 || obs_shape[0] != act_shape[0] {
            return Err(fail(format!(
                "`obs` {obs_shape:?} and `actions` {act_shape:?} must be [N, obs_dim] and [N, act_dim]"
            )));
        }
        let (n, obs_dim, act_dim) = (obs_shape[0], obs_shape[1], act_shape[1]);
        if obs_dim == 0 || act_dim == 0 || n == 0 {
            return Err(fail(format!(
                "empty demonstrations ({n} steps, obs_dim {obs_dim}, act_dim {act_dim})"
            )));
        }
        let (offsets, _) = tensor_i64(&st, "episode_offsets", &fail)?;
        let (task, _) = tensor_i64(&st, "episode_task", &fail)?;
        let (seed, _) = tensor_i64(&st, "episode_seed", &fail)?;
        let (success, _) = tensor_i64(&st, "episode_success", &fail)?;
        let e = task.len();
        if offsets.len() != e + 1 || seed.len() != e || success.len() != e || e == 0 {
            return Err(fail(format!(
                "episode tensors disagree: {} offsets, {} tasks, {} seeds, {} success flags (need E+1, E, E, E with E > 0)",
                offsets.len(),
                e,
                seed.len(),
                success.len()
            )));
        }
        if offsets[0] != 0 || offsets[e] != n as i64 {
            return Err(fail(format!(
                "`episode_offsets` must run from 0 to {n}, got {} .. {}",
                offsets[0], offsets[e]
            )));
        }
        let mut episodes = Vec::with_capacity(e);
        for i in 0..e {
            if offsets[i + 1] <= offsets[i] {
                return Err(fail(format!(
                    "`episode_offsets` not increasing at episode {i}"
                )));
            }
            if task[i] < 0 || task[i] as usize >= tasks.len() {
                return Err(fail(format!(
                    "`episode_task` of episode {i} is {}, outside the {} tasks",
                    task[i],
                    tasks.len()
                )));
            }
            episodes.push(Episode {
                start: offsets[i] as usize,
                end: offsets[i + 1] as usize,
                task: task[i] as usize,
                seed: seed[i],
                success: success[i] != 0,
            });
        }
        Ok(Self {
            tasks,
            obs_dim,
            act_dim,
            obs,
            actions,
            episodes,
        })
    }

    /// Serialises to the `blockdiff-robot-demos/1` safetensors layout (what `record.py`
    /// writes), so demonstrations from other sources can be converted in Rust.
    pub fn to_bytes(&self) -> Result<Vec<u8>, RobotError> {
        use safetensors::tensor::TensorView;
        let f32s = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        let i64s = |v: Vec<i64>| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        let n = self.obs.len() / self.obs_dim.max(1);
        let mut offsets = vec![0i64];
        offsets.extend(self.episodes.iter().map(|e| e.end as i64));
        let e = self.episodes.len();
        let data: Vec<(&str, Dtype, Vec<usize>, Vec<u8>)> = vec![
            ("obs", Dtype::F32, vec![n, self.obs_dim], f32s(&self.obs)),
            (
                "actions",
                Dtype::F32,
                vec![n, self.act_dim],
                f32s(&self.actions),
            ),
            ("episode_offsets", Dtype::I64, vec![e + 1], i64s(offsets)),
            (
                "episode_task",
                Dtype::I64,
                vec![e],
                i64s(self.episodes.iter().map(|x| x.task as i64).collect()),
            ),
            (
                "episode_seed",
                Dtype::I64,
                vec![e],
                i64s(self.episodes.iter().map(|x| x.seed).collect()),
            ),
            (
                "episode_success",
                Dtype::I64,
                vec![e],
                i64s(self.episodes.iter().map(|x| x.success as i64).collect()),
            ),
        ];
        let views = data
            .iter()
            .map(|(name, dt, shape, bytes)| {
                TensorView::new(*dt, shape.clone(), bytes)
                    .map(|v| (name.to_string(), v))
                    .map_err(|e| RobotError::Config(format!("tensor `{name}`: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut md = std::collections::HashMap::new();
        md.insert("format".to_string(), DEMOS_FORMAT.to_string());
        md.insert(
            "tasks".to_string(),
            serde_json::to_string(&self.tasks).unwrap_or_default(),
        );
        md.insert("obs_dim".to_string(), self.obs_dim.to_string());
        md.insert("act_dim".to_string(), self.act_dim.to_string());
        safetensors::serialize(views, Some(md))
            .map_err(|e| RobotError::Config(format!("serialising demonstrations: {e}")))
    }

    /// Observation row `i`.
    pub fn obs_row(&self, i: usize) -> &[f32] {
        &self.obs[i * self.obs_dim..(i + 1) * self.obs_dim]
    }

    /// The chunk of `horizon` actions starting at row `t` of `ep`; past the episode's end the
    /// last action repeats (the robot holds).
    pub fn chunk(&self, ep: &Episode, t: usize, horizon: usize) -> ActionChunk {
        let d = self.act_dim;
        let mut values = Vec::with_capacity(horizon * d);
        for k in 0..horizon {
            let r = (t + k).min(ep.end - 1);
            values.extend_from_slice(&self.actions[r * d..(r + 1) * d]);
        }
        ActionChunk {
            horizon,
            dim: d,
            values,
        }
    }

    /// The stacked observation history ending at row `t` of `ep` (`history × obs_dim`, oldest
    /// first, the first observation repeated before the episode start).
    pub fn history(&self, ep: &Episode, t: usize, history: usize) -> Vec<f32> {
        let mut v = Vec::with_capacity(history * self.obs_dim);
        for k in (0..history).rev() {
            let r = t.saturating_sub(k).max(ep.start);
            v.extend_from_slice(self.obs_row(r));
        }
        v
    }

    /// The demonstrations of task `t` alone, as a one-task file (for per-task policies).
    pub fn only_task(&self, t: usize) -> Result<Demos, RobotError> {
        let name = self.tasks.get(t).ok_or_else(|| {
            RobotError::Config(format!("task {t} outside the {} tasks", self.tasks.len()))
        })?;
        let (mut obs, mut actions, mut episodes) = (Vec::new(), Vec::new(), Vec::new());
        for e in self.episodes.iter().filter(|e| e.task == t) {
            let start = actions.len() / self.act_dim;
            obs.extend_from_slice(&self.obs[e.start * self.obs_dim..e.end * self.obs_dim]);
            actions.extend_from_slice(&self.actions[e.start * self.act_dim..e.end * self.act_dim]);
            episodes.push(Episode {
                start,
                end: start + (e.end - e.start),
                task: 0,
                ..e.clone()
            });
        }
        Ok(Demos {
            tasks: vec![name.clone()],
            obs_dim: self.obs_dim,
            act_dim: self.act_dim,
            obs,
            actions,
            episodes,
        })
    }

    /// Episodes kept for training: those where the expert succeeded.
    pub fn successful(&self) -> impl Iterator<Item = &Episode> {
        self.episodes.iter().filter(|e| e.success)
    }
}

/// Per-dimension observation mean and standard deviation (constant dimensions get std 1).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ObsNormalizer {
    /// Means.
    pub mean: Vec<f32>,
    /// Standard deviations.
    pub std: Vec<f32>,
}

impl ObsNormalizer {
    /// Fits on `rows × dim` values.
    pub fn fit(values: &[f32], dim: usize) -> Self {
        let n = (values.len() / dim.max(1)).max(1) as f64;
        let mut mean = vec![0f64; dim];
        let mut sq = vec![0f64; dim];
        for row in values.chunks_exact(dim) {
            for (j, &v) in row.iter().enumerate() {
                mean[j] += v as f64;
                sq[j] += (v as f64) * (v as f64);
            }
        }
        let mean: Vec<f64> = mean.iter().map(|m| m / n).collect();
        let std = sq
            .iter()
            .zip(&mean)
            .map(|(s, m)| {
                let var = (s / n - m * m).max(0.0);
                if var.sqrt() < 1e-4 {
                    1.0
                } else {
                    var.sqrt() as f32
                }
            })
            .collect();
        Self {
            mean: mean.iter().map(|&m| m as f32).collect(),
            std,
        }
    }

    /// Normalises one observation in place (values clipped to ±10 standard deviations so one
    /// wild sensor reading cannot dominate the condition).
    pub fn apply(&self, obs: &mut [f32]) {
        let d = self.mean.len();
        for (i, v) in obs.iter_mut().enumerate() {
            *v = ((*v - self.mean[i % d]) / self.std[i % d]).clamp(-10.0, 10.0);
        }
    }
}
