//! The Rust side of the PyTorch twin (`tests/torch_twin/twin.py`): the peer a user would
//! otherwise run. [`write_case`] saves a model (our `model.safetensors` + `config.json`) with
//! every weight perturbed away from its initial value, a set of forward inputs (the BD3-LM
//! training layout and the block-causal inference layout, with condition vectors and token
//! features on), and our logits on them. The twin loads the weights, recomputes the logits and
//! reports the largest difference; then both sides time the same training step and the same
//! block-diffusion sampler (fixed top-k commits, so both make exactly the same model calls).

use std::path::Path;
use std::time::Instant;

use burn::module::{Module, ModuleMapper, Param};
use burn::optim::AdamWConfig;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::Distribution;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::bench::median;
use crate::checkpoint::{self, write_json};
use crate::condition::{Conditioning, Example};
use crate::constraint::Unconstrained;
use crate::error::CheckpointError;
use crate::mask::{self, MaskTable};
use crate::model::{BlockDiffusionConfig, BlockDiffusionModel, ForwardInput};
use crate::sample::{int_tensor, sample, sample_on_cores, to_vec, CommitPolicy, SamplerConfig};
use crate::tokenizer::NUM_CORE_SPECIALS;
use crate::train::{noised_batch, train_on_cores, train_step, Noise, TrainConfig};
use crate::{CpuBackend, CpuTrainBackend};

/// Case file name inside the twin directory.
pub const CASE_FILE: &str = "case.json";

/// Shapes and budgets of the twin comparison.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TwinSpec {
    /// Non-special symbols (the vocabulary adds the 4 core specials).
    pub n_symbols: usize,
    /// Model width.
    pub d_model: usize,
    /// Layers.
    pub n_layers: usize,
    /// Heads.
    pub n_heads: usize,
    /// Generated / trained sequence length.
    pub seq_len: usize,
    /// Block size of training and sampling.
    pub block_size: usize,
    /// Sequences per training step.
    pub train_batch: usize,
    /// Timed training steps (after one warm-up step).
    pub train_steps: usize,
    /// Batch sizes of the timed sampling runs.
    pub sample_batches: Vec<usize>,
    /// Tokens committed per model call (top-k policy).
    pub tokens_per_step: usize,
    /// Timed sampling runs per batch size (the median is reported).
    pub repeats: usize,
    /// Condition vectors (0 = none) of width `cond_dim`, used by the logit checks.
    pub cond_len: usize,
    /// Width of each condition vector.
    pub cond_dim: usize,
    /// Width of the fixed per-token feature table (0 = off), used by the logit checks.
    pub token_feature_dim: usize,
    /// Seed of weights, inputs and sampling.
    pub seed: u64,
}

impl TwinSpec {
    /// The core Markov task's full model size (`blockdiff bench core --task full`).
    pub fn full() -> Self {
        Self {
            n_symbols: 32,
            d_model: 128,
            n_layers: 4,
            n_heads: 4,
            seq_len: 64,
            block_size: 16,
            train_batch: 32,
            train_steps: 10,
            sample_batches: vec![1, 16],
            tokens_per_step: 2,
            repeats: 5,
            cond_len: 2,
            cond_dim: 6,
            token_feature_dim: 3,
            seed: 11,
        }
    }

    /// The CI size (the core Markov task's small model).
    pub fn small() -> Self {
        Self {
            d_model: 64,
            n_layers: 2,
            block_size: 8,
            train_steps: 5,
            repeats: 3,
            ..Self::full()
        }
    }

    fn vocab(&self) -> usize {
        self.n_symbols + NUM_CORE_SPECIALS as usize
    }

    /// The model config of the logit checks (condition encoder and token features on).
    pub fn model_config(&self) -> BlockDiffusionConfig {
        BlockDiffusionConfig::new(self.vocab())
            .with_d_model(self.d_model)
            .with_n_layers(self.n_layers)
            .with_n_heads(self.n_heads)
            .with_max_len(self.cond_len + 2 * self.seq_len + 16)
            .with_cond_dim(self.cond_dim)
            .with_cond_len(self.cond_len)
            .with_token_feature_dim(self.token_feature_dim)
    }

    /// The model config of the timed runs: the plain token model every domain shares.
    pub fn timing_config(&self) -> BlockDiffusionConfig {
        BlockDiffusionConfig::new(self.vocab())
            .with_d_model(self.d_model)
            .with_n_layers(self.n_layers)
            .with_n_heads(self.n_heads)
            .with_max_len(2 * self.seq_len + 16)
    }

    /// The train config of the timed step (one block size, the NELBO's `1/t` weights).
    pub fn train_config(&self) -> TrainConfig {
        TrainConfig::new(self.seq_len)
            .with_block_sizes(vec![self.block_size])
            .with_block_weights(vec![1.0])
            .with_batch_size(self.train_batch)
            .with_lr(1e-3)
            .with_warmup_steps(0)
            .with_seed(self.seed)
            .with_progress(false)
    }

    /// One training batch of uniformly random symbols (`train_batch` × `seq_len`).
    pub fn timing_data(&self, rng: &mut StdRng) -> Vec<Example> {
        (0..self.train_batch)
            .map(|_| {
                Example::tokens(
                    random_tokens(rng, self.seq_len, self.n_symbols, 0.0)
                        .into_iter()
                        .map(|t| t + NUM_CORE_SPECIALS)
                        .collect(),
                )
            })
            .collect()
    }

    /// The sampler of the timed runs.
    pub fn sampler_config(&self) -> SamplerConfig {
        SamplerConfig {
            block_size: self.block_size,
            policy: CommitPolicy::TopK {
                k: self.tokens_per_step,
            },
            temperature: 1.0,
            top_p: 1.0,
            cfg_scale: 1.0,
            max_len: self.seq_len,
            stop_at_eos: false,
            seed: self.seed,
            use_cache: true,
            flashblock: false,
            corrector: None,
            // The twin samples unconstrained: nothing is ever forced.
            forced: false,
        }
    }
}

/// One forward input and our logits on it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LogitCheck {
    /// What layout this is.
    pub name: String,
    /// Token ids, `[batch][n]`.
    pub tokens: Vec<Vec<u32>>,
    /// Absolute position of each token.
    pub positions: Vec<usize>,
    /// Condition vectors `[batch][cond_len · cond_dim]` (placed before the tokens), or none.
    pub cond: Option<Vec<Vec<f32>>>,
    /// Attention mask over `[cond ⊕ tokens]`, `1` = blocked, row-major `[q][k]`.
    pub mask: Vec<Vec<u8>>,
    /// First token position whose logits are compared.
    pub from: usize,
    /// Number of compared positions.
    pub len: usize,
    /// Our logits, `[batch][len][vocab]` flattened.
    pub logits: Vec<f32>,
}

/// Everything the twin reads.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TwinCase {
    /// Shapes and budgets.
    pub spec: TwinSpec,
    /// Logit checks of the saved model.
    pub checks: Vec<LogitCheck>,
}

/// Adds Gaussian noise to every float parameter, so norm gains, the null condition and the
/// feature table are not at their trivial initial values (a twin that ignored them would pass).
struct Perturb {
    std: f64,
}

impl<B: Backend> ModuleMapper<B> for Perturb {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let (id, tensor, mapper) = param.consume();
        let noise = Tensor::random(
            tensor.shape(),
            Distribution::Normal(0.0, self.std),
            &tensor.device(),
        );
        Param::from_mapped_value(id, tensor + noise, mapper)
    }
}

fn random_tokens(rng: &mut StdRng, n: usize, vocab: usize, masked_share: f64) -> Vec<u32> {
    (0..n)
        .map(|_| {
            if rng.random::<f64>() < masked_share {
                crate::tokenizer::MASK
            } else {
                rng.random_range(0..vocab as u32)
            }
        })
        .collect()
}

#[allow(clippy::too_many_arguments)]
fn check<B: Backend>(
    model: &BlockDiffusionModel<B>,
    name: &str,
    tokens: Vec<Vec<u32>>,
    positions: Vec<usize>,
    cond: Option<Vec<Vec<f32>>>,
    cfg: &BlockDiffusionConfig,
    table: MaskTable,
    (from, len): (usize, usize),
    device: &B::Device,
) -> LogitCheck {
    let mask_rows: Vec<Vec<u8>> = table
        .blocked
        .chunks(table.k)
        .map(|r| r.iter().map(|&b| b as u8).collect())
        .collect();
    let mut c = LogitCheck {
        name: name.to_string(),
        tokens,
        positions,
        cond,
        mask: mask_rows,
        from,
        len,
        logits: Vec::new(),
    };
    c.logits = check_logits(model, &c, cfg, device);
    c
}

/// Recomputes a check's logits with `model` (any backend) from the check's own inputs.
fn check_logits<B: Backend>(
    model: &BlockDiffusionModel<B>,
    c: &LogitCheck,
    cfg: &BlockDiffusionConfig,
    device: &B::Device,
) -> Vec<f32> {
    let (tokens, cond) = (&c.tokens, &c.cond);
    let (batch, n) = (tokens.len(), tokens[0].len());
    let flat: Vec<u32> = tokens.concat();
    let cond_t = cond.as_ref().map(|c| {
        let v: Vec<f32> = c.iter().flatten().copied().collect();
        Tensor::<B, 1>::from_floats(v.as_slice(), device).reshape([
            batch,
            cfg.cond_len,
            cfg.cond_dim,
        ])
    });
    let side = c.mask.len();
    let blocked: Vec<bool> = c.mask.iter().flatten().map(|&b| b != 0).collect();
    let input = ForwardInput {
        tokens: int_tensor::<B>(&flat, batch, n, device),
        positions: c.positions.clone(),
        cond: cond_t,
        cond_drop: None,
        request_features: None,
        mask: Some(MaskTable::new(blocked, side, side)),
    };
    let (logits, _) = model.forward_range(input, None, c.from, c.len);
    to_vec(logits)
}

/// Loads the case's model from `dir` on backend `B` and recomputes every check there: the
/// largest |Δ| against the logits the case holds (computed on the CPU backend). This is how a
/// GPU run shows it computes the same model.
pub fn backend_logit_diff<B: Backend>(
    dir: &Path,
    case: &TwinCase,
    device: &B::Device,
) -> Result<f64, CheckpointError> {
    let ck = checkpoint::load::<B>(dir, device)?;
    let corrupt = |name: &str, message: String| CheckpointError::Json {
        path: dir.join(CASE_FILE),
        message: format!("check `{name}`: {message}"),
    };
    let mut worst = 0.0f64;
    for c in &case.checks {
        // The case is read from disk: check its shapes before they reach the model.
        let n = c.tokens.first().map_or(0, Vec::len);
        if n == 0 || c.tokens.iter().any(|t| t.len() != n) {
            return Err(corrupt(&c.name, "token rows are empty or ragged".into()));
        }
        let vocab = ck.config.vocab_size as u32;
        if c.tokens.iter().flatten().any(|&t| t >= vocab) {
            return Err(corrupt(
                &c.name,
                format!("a token id is ≥ the vocabulary {vocab}"),
            ));
        }
        let cond_width = ck.config.cond_len * ck.config.cond_dim;
        if let Some(cv) = &c.cond {
            if cond_width == 0
                || cv.len() != c.tokens.len()
                || cv.iter().any(|r| r.len() != cond_width)
            {
                return Err(corrupt(
                    &c.name,
                    format!("condition rows must be one per sequence of {cond_width} values"),
                ));
            }
        }
        let side = n + c.cond.as_ref().map_or(0, |_| ck.config.cond_len);
        if c.mask.len() != side || c.mask.iter().any(|r| r.len() != side) {
            return Err(corrupt(
                &c.name,
                format!("mask is not {side} × {side} (condition + tokens)"),
            ));
        }
        if c.from + c.len > n || c.positions.len() != n {
            return Err(corrupt(
                &c.name,
                "positions or compared range do not fit the tokens".into(),
            ));
        }
        let ours = check_logits(&ck.model, c, &ck.config, device);
        if ours.len() != c.logits.len() {
            return Err(corrupt(
                &c.name,
                format!(
                    "{} logits stored, the model gives {}",
                    c.logits.len(),
                    ours.len()
                ),
            ));
        }
        for (a, b) in ours.iter().zip(&c.logits) {
            let d = (a - b).abs() as f64;
            // NaN never passes: it becomes the worst difference.
            worst = if d.is_nan() {
                f64::INFINITY
            } else {
                worst.max(d)
            };
        }
    }
    Ok(worst)
}

/// Writes the twin's case into `dir`: `model.safetensors`, `config.json`, `tokenizer.json`
/// (empty metadata) and [`CASE_FILE`].
pub fn write_case(dir: &Path, spec: &TwinSpec) -> Result<TwinCase, CheckpointError> {
    let device = Default::default();
    <CpuBackend as Backend>::seed(&device, spec.seed);
    let cfg = spec.model_config();
    let vocab = cfg.vocab_size;
    let table = Tensor::<CpuBackend, 2>::random(
        [vocab, spec.token_feature_dim],
        Distribution::Normal(0.0, 1.0),
        &device,
    );
    let model = cfg
        .init::<CpuBackend>(&device)
        .with_token_features(table)
        .map(&mut Perturb { std: 0.05 });
    checkpoint::save(dir, &model, &cfg, &serde_json::json!({}))?;

    let mut rng = StdRng::seed_from_u64(spec.seed);
    let (l, b, c) = (spec.seq_len, spec.block_size, spec.cond_len);
    let batch = 2;
    let cond: Vec<Vec<f32>> = (0..batch)
        .map(|_| {
            (0..c * spec.cond_dim)
                .map(|_| rng.random_range(-1.0..1.0))
                .collect()
        })
        .collect();
    // Training layout: cond ⊕ x_t ⊕ x_0 with the BD3-LM mask; x_0's positions repeat x_t's.
    let train_tokens: Vec<Vec<u32>> = (0..batch)
        .map(|_| {
            let x0 = random_tokens(&mut rng, l, vocab, 0.0);
            let mut xt: Vec<u32> = x0
                .iter()
                .map(|&t| {
                    if rng.random::<f64>() < 0.5 {
                        crate::tokenizer::MASK
                    } else {
                        t
                    }
                })
                .collect();
            xt.extend(x0);
            xt
        })
        .collect();
    let mut train_pos: Vec<usize> = (c..c + l).collect();
    train_pos.extend(c..c + l);
    let side = c + 2 * l;
    let training = check(
        &model,
        "training (cond ⊕ x_t ⊕ x_0, BD3-LM mask)",
        train_tokens,
        train_pos,
        Some(cond.clone()),
        &cfg,
        MaskTable::new(mask::training_mask_data(c, l, b), side, side),
        (0, 2 * l),
        &device,
    );
    // Inference layout: cond ⊕ a partly decoded sequence with the block-causal mask.
    let infer_tokens: Vec<Vec<u32>> = (0..batch)
        .map(|_| random_tokens(&mut rng, l, vocab, 0.3))
        .collect();
    let inference = check(
        &model,
        "inference (cond ⊕ tokens, block-causal mask)",
        infer_tokens,
        (c..c + l).collect(),
        Some(cond),
        &cfg,
        MaskTable::new(mask::block_causal_mask_data(c, l, b), c + l, c + l),
        (0, l),
        &device,
    );
    let case = TwinCase {
        spec: spec.clone(),
        checks: vec![training, inference],
    };
    write_json(&dir.join(CASE_FILE), &case)?;
    Ok(case)
}

/// Timings of one side of the comparison (seconds, medians).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TwinTimings {
    /// One training step (noising, forward, backward, clip, AdamW).
    pub train_step_s: f64,
    /// One full sample of `seq_len` tokens, per batch size `(batch, seconds)`.
    pub sample_s: Vec<(usize, f64)>,
    /// Model calls per sample.
    pub nfe: usize,
    /// Threads the side computed with.
    pub threads: usize,
    /// Our CPU side: data-parallel peers of the timed training step (`train_on_cores`, as
    /// every `blockdiff … train` runs); 0 or 1 = one process-wide step.
    #[serde(default)]
    pub train_peers: usize,
    /// Our CPU side: the same step as one process-wide step (kernels split across the
    /// threads), when `train_step_s` was timed with peers.
    #[serde(default)]
    pub train_step_one_process_s: Option<f64>,
    /// Our CPU side: batched samples (batch > 1) as one process-wide call, when `sample_s`
    /// was timed with the batch split over the cores (`sample_on_cores`).
    #[serde(default)]
    pub sample_one_process_s: Vec<(usize, f64)>,
}

/// Times our training step and sampler at the spec's shapes on the CPU backend.
///
/// The training step is timed as `blockdiff` trains on a CPU: [`train_on_cores`], one
/// data-parallel peer per core, each on its own thread with its share of the batch (same
/// batch size, same threads as the twin). The process-wide step is kept alongside.
pub fn time_ours(spec: &TwinSpec) -> TwinTimings {
    let device = Default::default();
    let mut t = time_on::<CpuTrainBackend>(spec, &device);
    let peers = crate::train::cpu_peers(spec.train_batch);
    if peers > 1 {
        CpuTrainBackend::seed(&device, spec.seed);
        let cfg = spec.timing_config();
        let data = spec.timing_data(&mut StdRng::seed_from_u64(spec.seed));
        // One untimed warm-up step, as `time_on`: `median_step_s` skips the first.
        let tcfg = spec.train_config().with_steps(spec.train_steps + 1);
        let timed = train_on_cores(cfg.init(&device), &cfg, &tcfg, &data, &[], None, &device)
            .map(|(_, report)| report.median_step_s);
        match timed {
            Ok(step_s) if step_s > 0.0 => {
                t.train_step_one_process_s = Some(t.train_step_s);
                t.train_step_s = step_s;
                t.train_peers = peers;
            }
            Ok(_) => {}
            Err(e) => tracing::warn!("data-parallel timing failed, kept one process: {e}"),
        }
    }
    if crate::cpu_cores() > 1 {
        // Batched samples as `blockdiff` decodes a batch on a CPU: split over the cores.
        // The twin's policy commits a fixed 2 tokens per call, so the weights do not change
        // the work and a fresh model of the same shape times it.
        let cfg = spec.timing_config();
        let model = cfg.init::<crate::CpuBackend>(&device);
        let scfg = spec.sampler_config();
        for entry in t.sample_s.iter_mut().filter(|(batch, _)| *batch > 1) {
            let batch = entry.0;
            let requests = vec![Conditioning::default(); batch];
            let ids: Vec<u64> = (0..batch as u64).collect();
            let mut runs = Vec::new();
            for rep in 0..=spec.repeats {
                let out = sample_on_cores(
                    &model,
                    &cfg,
                    &requests,
                    &ids,
                    &Unconstrained,
                    &scfg,
                    &device,
                    crate::cpu_cores(),
                )
                .expect("twin sampler config is valid");
                if rep > 0 {
                    runs.push(out.stats.wall_s);
                }
            }
            t.sample_one_process_s.push(*entry);
            entry.1 = median(runs);
        }
    }
    t
}

/// Times our training step and sampler at the spec's shapes on any backend (`CudaTrainBackend`
/// with the `cuda` feature). The sampler reads logits back every call and a training step
/// reads its loss, so the clocks see finished work.
pub fn time_on<B: AutodiffBackend>(spec: &TwinSpec, device: &B::Device) -> TwinTimings {
    B::seed(device, spec.seed);
    let cfg = spec.timing_config();
    let tcfg = spec.train_config();
    let mut rng = StdRng::seed_from_u64(spec.seed);
    let data = spec.timing_data(&mut rng);
    let refs: Vec<&Example> = data.iter().collect();
    let mut model = cfg.init::<B>(device);
    let mut optim = AdamWConfig::new()
        .with_weight_decay(tcfg.weight_decay as f32)
        .init::<B, BlockDiffusionModel<B>>();
    let mut times = Vec::new();
    for step in 0..=spec.train_steps {
        let t = Instant::now();
        let batch = noised_batch::<B>(
            &refs,
            &cfg,
            &tcfg,
            spec.block_size,
            Noise::Training { progress: 0.0 },
            false,
            &mut rng,
            device,
        );
        let (m, _) = train_step(model, &mut optim, batch, tcfg.lr, tcfg.grad_clip);
        model = m;
        if step > 0 {
            times.push(t.elapsed().as_secs_f64());
        }
    }
    let model = burn::module::AutodiffModule::valid(&model);
    let scfg = spec.sampler_config();
    let mut sample_s = Vec::new();
    let mut nfe = 0;
    for &batch in &spec.sample_batches {
        let requests = vec![Conditioning::default(); batch];
        let mut runs = Vec::new();
        for rep in 0..=spec.repeats {
            let out = sample(&model, &cfg, &requests, &Unconstrained, &scfg, device)
                .expect("twin sampler config is valid");
            nfe = out.stats.nfe;
            if rep > 0 {
                runs.push(out.stats.wall_s);
            }
        }
        sample_s.push((batch, median(runs)));
    }
    TwinTimings {
        train_step_s: median(times),
        sample_s,
        nfe,
        threads: crate::cpu_cores(),
        train_peers: 1,
        train_step_one_process_s: None,
        sample_one_process_s: Vec::new(),
    }
}

/// What `twin.py` reports.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TwinSide {
    /// PyTorch version.
    pub torch: String,
    /// Largest |Δ| per logit check, by name.
    pub checks: Vec<(String, f64)>,
    /// Largest |Δ| over all checks.
    pub max_abs_logit_diff: f64,
    /// The twin's timings (absent with `--check-only`).
    pub timings: Option<TwinTimings>,
}

/// Our timings against the twin's, measured in one run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TwinReport {
    /// Shapes and budgets.
    pub spec: TwinSpec,
    /// The twin's side (logit agreement and timings).
    pub twin: TwinSide,
    /// Our timings.
    pub ours: TwinTimings,
    /// Largest |Δ| between our logits and the twin's.
    pub max_abs_logit_diff: f64,
    /// Twin's time / ours for a full sample at batch 1 (> 1: we are faster).
    pub sampling_speedup: f64,
    /// The same at every measured batch size, `(batch, speedup)`.
    pub sampling_speedup_by_batch: Vec<(usize, f64)>,
    /// Twin's time / ours for one training step.
    pub training_speedup: f64,
    /// Where both sides computed: `cpu`, or `cuda` (burn's CUDA backend against torch on the
    /// same GPU).
    #[serde(default)]
    pub device: String,
    /// Off the CPU: the largest |Δ| between our logits on `device` and our CPU logits of the
    /// same case ([`backend_logit_diff`]).
    #[serde(default)]
    pub device_max_abs_logit_diff: Option<f64>,
}

/// Error running the twin.
#[derive(Debug, thiserror::Error)]
pub enum TwinError {
    /// Writing the case failed.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// The Python process could not start or failed.
    #[error("PyTorch twin `{script}` with `{python}`: {message}")]
    Python {
        /// Interpreter.
        python: String,
        /// Script.
        script: String,
        /// What went wrong (its stderr tail).
        message: String,
    },
}

/// The interpreter with torch for the twin: `$BLOCKDIFF_TWIN_PYTHON` if set and non-empty,
/// else the virtualenv `tests/torch_twin/setup.sh` makes, if it exists.
pub fn default_python() -> Option<std::path::PathBuf> {
    if let Some(p) = std::env::var_os("BLOCKDIFF_TWIN_PYTHON").filter(|p| !p.is_empty()) {
        return Some(p.into());
    }
    let home = std::env::var_os("HOME")?;
    let p = std::path::PathBuf::from(home).join(".cache/blockdiff-twin-venv/bin/python");
    p.exists().then_some(p)
}

/// Seconds of `t`'s sample at `batch`; NaN when it was not measured.
fn sample_time(t: &TwinTimings, batch: usize) -> f64 {
    t.sample_s
        .iter()
        .find(|(b, _)| *b == batch)
        .map_or(f64::NAN, |x| x.1)
}

/// Runs the twin script on a case written to `dir`: `--check-only` skips its timings;
/// `torch_device` is torch's device for every tensor (`cpu`, `cuda`).
pub fn run_twin(
    python: &Path,
    script: &Path,
    dir: &Path,
    check_only: bool,
    torch_device: &str,
) -> Result<TwinSide, TwinError> {
    let err = |message: String| TwinError::Python {
        python: python.display().to_string(),
        script: script.display().to_string(),
        message,
    };
    let out_path = dir.join("twin_result.json");
    let _ = std::fs::remove_file(&out_path);
    let mut cmd = std::process::Command::new(python);
    cmd.arg(script)
        .arg("--case")
        .arg(dir)
        .arg("--out")
        .arg(&out_path)
        .arg("--device")
        .arg(torch_device);
    if check_only {
        cmd.arg("--check-only");
    }
    let out = cmd
        .output()
        .map_err(|e| err(format!("cannot start: {e}")))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(12).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        return Err(err(format!(
            "exited with {}:\n{}",
            out.status,
            tail.join("\n")
        )));
    }
    checkpoint::read_json(&out_path).map_err(|e| err(e.to_string()))
}

/// Writes the case, runs the twin (check + timings) on torch's `torch_device` and times our
/// side. `time_ours` times our side ([`time_ours`] on the CPU, [`time_on`] elsewhere).
pub fn compare(
    spec: &TwinSpec,
    python: &Path,
    script: &Path,
    dir: &Path,
    torch_device: &str,
    time_ours: impl FnOnce(&TwinSpec) -> TwinTimings,
) -> Result<TwinReport, TwinError> {
    write_case(dir, spec)?;
    let twin = run_twin(python, script, dir, false, torch_device)?;
    let ours = time_ours(spec);
    let theirs = twin.timings.clone().unwrap_or_default();
    let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { f64::NAN };
    let by_batch: Vec<(usize, f64)> = ours
        .sample_s
        .iter()
        .map(|&(batch, s)| (batch, ratio(sample_time(&theirs, batch), s)))
        .collect();
    Ok(TwinReport {
        spec: spec.clone(),
        max_abs_logit_diff: twin.max_abs_logit_diff,
        sampling_speedup: by_batch.first().map_or(f64::NAN, |x| x.1),
        sampling_speedup_by_batch: by_batch,
        training_speedup: ratio(theirs.train_step_s, ours.train_step_s),
        device: torch_device.to_string(),
        device_max_abs_logit_diff: None,
        twin,
        ours,
    })
}

/// The report as a markdown table.
pub fn markdown_table(r: &TwinReport) -> String {
    let theirs = r.twin.timings.clone().unwrap_or_default();
    let (ours_name, twin_name) = if r.device == "cuda" {
        ("blockdiff (burn CUDA)", "PyTorch twin (CUDA)")
    } else {
        ("blockdiff (burn flex)", "PyTorch twin")
    };
    let mut s =
        format!("| measure | {ours_name} | {twin_name} | twin / ours |\n|---|---|---|---|\n");
    s += &format!(
        "| training step (batch {}, {} tokens) ms | {:.1} | {:.1} | {:.2}× |\n",
        r.spec.train_batch,
        r.spec.seq_len,
        r.ours.train_step_s * 1e3,
        theirs.train_step_s * 1e3,
        r.training_speedup
    );
    if let Some(one) = r.ours.train_step_one_process_s {
        s += &format!(
            "| (ours: {} data-parallel peers above; one process-wide step) ms | {:.1} | {:.1} | {:.2}× |\n",
            r.ours.train_peers,
            one * 1e3,
            theirs.train_step_s * 1e3,
            theirs.train_step_s / one
        );
    }
    for &(batch, ours) in &r.ours.sample_s {
        let t = sample_time(&theirs, batch);
        s += &format!(
            "| sample {} tokens, batch {batch}, {} NFE, ms | {:.1} | {:.1} | {:.2}× |\n",
            r.spec.seq_len,
            r.ours.nfe,
            ours * 1e3,
            t * 1e3,
            t / ours
        );
        if let Some(&(_, one)) = r.ours.sample_one_process_s.iter().find(|x| x.0 == batch) {
            s += &format!(
                "| (ours: batch split over the cores above; one process-wide call) ms | {:.1} | {:.1} | {:.2}× |\n",
                one * 1e3,
                t * 1e3,
                t / one
            );
        }
    }
    s += &format!("| max \\|Δ logit\\| | | | {:.2e} |\n", r.max_abs_logit_diff);
    if let Some(d) = r.device_max_abs_logit_diff {
        s += &format!(
            "| max \\|Δ logit\\|, ours on {} vs ours on the CPU | | | {d:.2e} |\n",
            r.device
        );
    }
    s
}
