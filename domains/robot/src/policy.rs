//! The action-chunk policy on the blockdiff core: observation history (+ task one-hot) as the
//! continuous condition prefix, chunk tokens generated block-wise.
//!
//! The condition occupies `history` prefix positions; the core sampler writes its keys/values to
//! the KV cache on the first model call of a chunk and every later denoising step and block
//! reads them from there, so the observation is encoded once per request.

use std::path::Path;

use blockdiff_core::checkpoint;
use blockdiff_core::condition::{Conditioning, Example};
use blockdiff_core::constraint::Constraint;
use blockdiff_core::model::{BlockDiffusionConfig, BlockDiffusionModel};
use blockdiff_core::sample::{sample, CommitPolicy, SampleStats, SamplerConfig};
use blockdiff_core::tokenizer::{Tokenizer, EOS, PAD};
use blockdiff_core::train::{
    train_on_cores as core_train, CheckpointSpec, TrainConfig, TrainReport,
};
use blockdiff_core::{CpuBackend, CpuTrainBackend};
use burn::module::AutodiffModule;
use burn::prelude::*;
use serde::{Deserialize, Serialize};

use crate::bins::QuantileBinTokenizer;
use crate::chunk::{ActionChunk, ActionStats};
use crate::data::{Demos, ObsNormalizer};
use crate::error::RobotError;
use crate::fast::{FastConfig, FastTokenizer};

/// Which action tokenizer a policy uses.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ActionTokenizer {
    /// One token per value ([`QuantileBinTokenizer`]); fixed `H × D` tokens.
    Bins(QuantileBinTokenizer),
    /// DCT + BPE ([`FastTokenizer`]); variable length, ended by `EOS`.
    Fast(FastTokenizer),
}

impl ActionTokenizer {
    /// Tokens of a chunk.
    pub fn encode(&self, c: &ActionChunk) -> Result<Vec<u32>, RobotError> {
        Ok(match self {
            Self::Bins(t) => t.encode(c)?,
            Self::Fast(t) => t.encode(c)?,
        })
    }

    /// A chunk from generated tokens (FAST tolerates a wrong coefficient count).
    pub fn decode(&self, ids: &[u32]) -> Result<ActionChunk, RobotError> {
        Ok(match self {
            Self::Bins(t) => t.decode(ids)?,
            Self::Fast(t) => t.decode_lenient(ids)?,
        })
    }

    /// Vocabulary size.
    pub fn vocab_size(&self) -> usize {
        match self {
            Self::Bins(t) => t.vocab().size(),
            Self::Fast(t) => t.vocab().size(),
        }
    }

    /// Whether sequences end with `EOS` (variable length).
    pub fn variable_length(&self) -> bool {
        matches!(self, Self::Fast(_))
    }

    fn rebuild(&mut self) {
        if let Self::Fast(t) = self {
            t.rebuild();
        }
    }
}

/// Generated chunks may only hold action tokens (and, for FAST, the end marker).
#[derive(Clone, Copy, Debug)]
pub struct ChunkConstraint {
    /// Allow `EOS`/`PAD`.
    pub allow_end: bool,
    /// First regular id.
    pub regular_offset: u32,
}

impl Constraint for ChunkConstraint {
    fn restrict(&self, _seq: &[u32], _pos: usize, allowed: &mut [bool]) {
        for (id, a) in allowed
            .iter_mut()
            .enumerate()
            .take(self.regular_offset as usize)
        {
            let end = id as u32 == EOS || id as u32 == PAD;
            if !(self.allow_end && end) {
                *a = false;
            }
        }
    }

    /// Every action token stays allowed: no position is ever down to one token.
    fn may_force(&self) -> bool {
        false
    }
}

/// A derived observation feature: `obs[minuend..minuend + len] − obs[subtrahend..subtrahend +
/// len]`, appended to the raw observation before normalisation (e.g. goal − hand: a policy
/// that sees the offset it must close does not have to learn the subtraction from a handful
/// of demonstrations per goal).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiffFeature {
    /// First index of the minuend.
    pub minuend: usize,
    /// First index of the subtrahend.
    pub subtrahend: usize,
    /// Values in each.
    pub len: usize,
}

impl DiffFeature {
    /// MetaWorld's 39-d observation (hand xyz at 0, first object xyz at 4, goal xyz at 36):
    /// goal − hand, object − hand, goal − object.
    pub fn metaworld() -> Vec<Self> {
        let d = |minuend, subtrahend| Self {
            minuend,
            subtrahend,
            len: 3,
        };
        vec![d(36, 0), d(4, 0), d(36, 4)]
    }
}

/// Which tokenizer to train.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenizerKind {
    /// Quantile bins.
    Bins,
    /// FAST.
    Fast,
}

/// Policy, model and training settings. Saved in `robot.json` beside the checkpoint.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PolicyConfig {
    /// Actions per chunk (H).
    pub horizon: usize,
    /// Observations stacked into the condition (1 = current only).
    pub history: usize,
    /// Tokenizer kind.
    pub tokenizer: TokenizerKind,
    /// Bins per value (bins tokenizer).
    pub bins: usize,
    /// FAST vocabulary size.
    pub fast_vocab: usize,
    /// Model width.
    pub d_model: usize,
    /// Transformer layers.
    pub n_layers: usize,
    /// Attention heads.
    pub n_heads: usize,
    /// Block sizes of the training mixture (1 keeps AR decoding of the same weights possible).
    pub train_blocks: Vec<usize>,
    /// Training steps.
    pub steps: usize,
    /// Batch size.
    pub batch_size: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Seed.
    pub seed: u64,
    /// Block size used when serving.
    pub block: usize,
    /// Commit policy when serving.
    pub policy: CommitPolicy,
    /// Sampling temperature when serving (0 = greedy).
    pub temperature: f32,
    /// Derived difference features appended to each observation row.
    #[serde(default)]
    pub diff_features: Vec<DiffFeature>,
    /// Chunks sampled per observation when serving, averaged value by value (1 = one chunk).
    /// With a temperature above 0 the average estimates the mean action under the model
    /// instead of the per-token mode: greedy bins snap small, uncertain actions to the most
    /// common bin.
    #[serde(default = "one")]
    pub samples: usize,
    /// Value features of the bin tokens (bins tokenizer only): every bin carries a few smooth
    /// functions of its centre ([`value_features`]), added to its embedding and scored by the
    /// core's feature head. Bins are otherwise unrelated classes; with the features a logit
    /// can be a smooth function of the value (a quadratic in it is a Gaussian over bins), so
    /// neighbouring bins share what is learnt and a small, goal-dependent action does not have
    /// to be learnt bin by bin.
    #[serde(default)]
    pub value_features: bool,
    /// Ranges `[start, end)` of the raw observation the policy reads (empty = all of it);
    /// difference features are still computed from the whole raw observation. MetaWorld's
    /// observation stacks the previous frame (hand, gripper, objects one step earlier) beside
    /// the current one, and from it a policy can read its own last motion and simply continue
    /// it (the "copycat" shortcut of behaviour cloning from observation histories, Wen et al.
    /// 2020) instead of acting on where the goal is: [`metaworld_current`] drops it.
    #[serde(default)]
    pub obs_keep: Vec<[usize; 2]>,
}

/// MetaWorld's current frame (hand, gripper, objects: values 0..18) and goal (36..39), without
/// the previous frame (18..36).
pub fn metaworld_current() -> Vec<[usize; 2]> {
    vec![[0, 18], [36, 39]]
}

fn one() -> usize {
    1
}

impl Default for PolicyConfig {
    fn default() -> Self {
        Self {
            horizon: 10,
            history: 1,
            tokenizer: TokenizerKind::Bins,
            bins: 256,
            fast_vocab: 512,
            d_model: 64,
            n_layers: 2,
            n_heads: 4,
            train_blocks: vec![1, 8, 40],
            steps: 3000,
            batch_size: 64,
            lr: 3e-3,
            seed: 0,
            block: 8,
            // Bins of a continuous value spread probability over neighbouring bins, so a
            // confidence threshold rarely fires; a fixed count per call is the robust choice.
            policy: CommitPolicy::TopK { k: 4 },
            temperature: 0.0,
            diff_features: Vec::new(),
            samples: 1,
            value_features: false,
            obs_keep: Vec::new(),
        }
    }
}

/// Everything beside the weights a policy needs. `robot.json` in the checkpoint directory.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RobotSettings {
    /// Settings the policy was trained with.
    pub config: PolicyConfig,
    /// Task names, in one-hot order.
    pub tasks: Vec<String>,
    /// Observation width (one step).
    pub obs_dim: usize,
    /// Action width.
    pub act_dim: usize,
    /// Observation normalisation.
    pub obs_norm: ObsNormalizer,
    /// The action tokenizer with its statistics.
    pub tokenizer: ActionTokenizer,
    /// Generated tokens per chunk (fixed for bins; the longest training chunk for FAST).
    pub seq_len: usize,
}

/// Settings file name.
pub const SETTINGS_FILE: &str = "robot.json";

/// One observation to act on.
#[derive(Clone, Debug, PartialEq)]
pub struct Observation {
    /// `history × obs_dim` raw values, oldest first.
    pub state: Vec<f32>,
    /// Task index.
    pub task: usize,
}

impl RobotSettings {
    fn cond_dim(&self) -> usize {
        self.feature_dim() + self.tasks.len()
    }

    /// Width of one observation row with its derived features.
    fn feature_dim(&self) -> usize {
        feature_width(self.obs_dim, &self.config)
    }

    /// The condition vectors of an observation (normalised history rows, each with the task
    /// one-hot appended).
    pub fn condition(&self, obs: &Observation) -> Result<Vec<f32>, RobotError> {
        let h = self.config.history;
        if obs.state.len() != h * self.obs_dim {
            return Err(RobotError::Observation(format!(
                "state has {} values, the policy expects history {h} × obs_dim {}",
                obs.state.len(),
                self.obs_dim
            )));
        }
        if let Some(i) = obs.state.iter().position(|v| !v.is_finite()) {
            return Err(RobotError::Observation(format!(
                "state value {i} is NaN or infinite"
            )));
        }
        if obs.task >= self.tasks.len() {
            return Err(RobotError::Observation(format!(
                "task {} outside the {} tasks the policy knows",
                obs.task,
                self.tasks.len()
            )));
        }
        let mut v = Vec::with_capacity(h * self.cond_dim());
        for raw in obs.state.chunks_exact(self.obs_dim) {
            let mut row = with_features(raw, &self.config);
            self.obs_norm.apply(&mut row);
            v.extend_from_slice(&row);
            v.extend((0..self.tasks.len()).map(|t| if t == obs.task { 1.0 } else { 0.0 }));
        }
        Ok(v)
    }

    /// Task index of a name.
    pub fn task_index(&self, name: &str) -> Option<usize> {
        self.tasks.iter().position(|t| t == name)
    }

    fn model_config(&self) -> BlockDiffusionConfig {
        let c = &self.config;
        let features = if c.value_features { VALUE_FEATURES } else { 0 };
        BlockDiffusionConfig::new(self.tokenizer.vocab_size())
            .with_d_model(c.d_model)
            .with_n_layers(c.n_layers)
            .with_n_heads(c.n_heads)
            .with_cond_dim(self.cond_dim())
            .with_cond_len(c.history)
            .with_max_len(c.history + self.seq_len)
            .with_token_feature_dim(features)
            .with_feature_head(c.value_features)
    }

    /// The `[vocab, VALUE_FEATURES]` table of [`PolicyConfig::value_features`], row-major:
    /// [`value_features`] of each bin's centre, zero rows for the special tokens.
    pub fn value_feature_table(&self) -> Result<Vec<f32>, RobotError> {
        let ActionTokenizer::Bins(t) = &self.tokenizer else {
            return Err(RobotError::Config(
                "value features need the bins tokenizer (FAST tokens are not values)".into(),
            ));
        };
        let vocab = self.tokenizer.vocab_size();
        let mut table = vec![0f32; vocab * VALUE_FEATURES];
        for bin in 0..t.bins {
            let id = t.vocab().regular_id(bin) as usize;
            table[id * VALUE_FEATURES..(id + 1) * VALUE_FEATURES]
                .copy_from_slice(&value_features(t.centre(bin)));
        }
        Ok(table)
    }
}

/// Width of [`value_features`].
pub const VALUE_FEATURES: usize = 8;

/// Smooth features of a normalised action value `u ∈ [-1, 1]`: `u`, `u² − 1/3` (with `u`, a
/// logit quadratic in the value: a Gaussian over bins) and three Fourier pairs for
/// skewed or two-peaked shapes. Every entry is within [-1, 1].
pub fn value_features(u: f32) -> [f32; VALUE_FEATURES] {
    use std::f32::consts::PI;
    [
        u,
        u * u - 1.0 / 3.0,
        (PI * u).sin(),
        (PI * u).cos(),
        (2.0 * PI * u).sin(),
        (2.0 * PI * u).cos(),
        (4.0 * PI * u).sin(),
        (4.0 * PI * u).cos(),
    ]
}

/// Width of the policy's row for an `obs_dim`-value observation: the kept values
/// ([`PolicyConfig::obs_keep`]) and the difference features.
fn feature_width(obs_dim: usize, cfg: &PolicyConfig) -> usize {
    let kept = if cfg.obs_keep.is_empty() {
        obs_dim
    } else {
        cfg.obs_keep.iter().map(|[a, b]| b - a).sum()
    };
    kept + cfg.diff_features.iter().map(|f| f.len).sum::<usize>()
}

/// Every kept range must be non-empty and inside the observation.
fn check_obs_keep(keep: &[[usize; 2]], obs_dim: usize) -> Result<(), RobotError> {
    match keep.iter().find(|[a, b]| a >= b || *b > obs_dim) {
        Some([a, b]) => Err(RobotError::Config(format!(
            "kept observation range {a}..{b} is empty or reaches past the {obs_dim}-value observation"
        ))),
        None => Ok(()),
    }
}

/// The policy's row of one raw observation: the kept values, then the difference features.
fn with_features(raw: &[f32], cfg: &PolicyConfig) -> Vec<f32> {
    let mut row = if cfg.obs_keep.is_empty() {
        raw.to_vec()
    } else {
        cfg.obs_keep
            .iter()
            .flat_map(|&[a, b]| raw[a..b].iter().copied())
            .collect()
    };
    for f in &cfg.diff_features {
        row.extend((0..f.len).map(|i| raw[f.minuend + i] - raw[f.subtrahend + i]));
    }
    row
}

/// Builds the tokenizer, normaliser and training examples from demonstrations.
pub fn prepare(
    demos: &Demos,
    cfg: &PolicyConfig,
) -> Result<(RobotSettings, Vec<Example>, Vec<Example>), RobotError> {
    if cfg.horizon == 0 || cfg.history == 0 {
        return Err(RobotError::Config("horizon and history must be > 0".into()));
    }
    let episodes: Vec<_> = demos.successful().cloned().collect();
    if episodes.is_empty() {
        return Err(RobotError::Config(
            "no successful demonstrations to learn from".into(),
        ));
    }
    let rows: Vec<usize> = episodes.iter().flat_map(|e| e.start..e.end).collect();
    let acts: Vec<f32> = rows
        .iter()
        .flat_map(|&r| {
            demos.actions[r * demos.act_dim..(r + 1) * demos.act_dim]
                .iter()
                .copied()
        })
        .collect();
    if let Some(f) = cfg
        .diff_features
        .iter()
        .find(|f| f.len == 0 || f.minuend.max(f.subtrahend) + f.len > demos.obs_dim)
    {
        return Err(RobotError::Config(format!(
            "difference feature {f:?} is empty or reaches past the {}-value observation",
            demos.obs_dim
        )));
    }
    check_obs_keep(&cfg.obs_keep, demos.obs_dim)?;
    let obs: Vec<f32> = rows
        .iter()
        .flat_map(|&r| with_features(demos.obs_row(r), cfg))
        .collect();
    let stats = ActionStats::fit(&acts, demos.act_dim)?;
    let obs_norm = ObsNormalizer::fit(&obs, feature_width(demos.obs_dim, cfg));
    // (episode, row) of every training chunk, and the chunks themselves.
    let (index, chunks): (Vec<(usize, usize)>, Vec<ActionChunk>) = episodes
        .iter()
        .enumerate()
        .flat_map(|(i, e)| (e.start..e.end).map(move |t| ((i, t), demos.chunk(e, t, cfg.horizon))))
        .unzip();
    let tokenizer = match cfg.tokenizer {
        TokenizerKind::Bins => {
            ActionTokenizer::Bins(QuantileBinTokenizer::new(stats, cfg.bins, cfg.horizon))
        }
        TokenizerKind::Fast => ActionTokenizer::Fast(FastTokenizer::train(
            stats,
            cfg.horizon,
            &chunks,
            &FastConfig {
                vocab_size: cfg.fast_vocab,
                ..FastConfig::default()
            },
        )?),
    };
    let encoded: Vec<Vec<u32>> = chunks
        .iter()
        .map(|c| tokenizer.encode(c))
        .collect::<Result<_, _>>()?;
    let lcm = cfg
        .train_blocks
        .iter()
        .chain([&cfg.block])
        .fold(1, |a, &b| lcm(a, b.max(1)));
    let longest = encoded.iter().map(Vec::len).max().unwrap_or(0);
    let need = if tokenizer.variable_length() {
        longest + 1
    } else {
        longest
    };
    let seq_len = need.div_ceil(lcm) * lcm;
    let settings = RobotSettings {
        config: cfg.clone(),
        tasks: demos.tasks.clone(),
        obs_dim: demos.obs_dim,
        act_dim: demos.act_dim,
        obs_norm,
        tokenizer,
        seq_len,
    };
    if !settings.tokenizer.variable_length() && seq_len != longest {
        // Fixed-length chunks must fill the sequence exactly; trim the mixture instead.
        return Err(RobotError::Config(format!(
            "block sizes {:?} and serving block {} must divide the {longest} tokens of a chunk",
            cfg.train_blocks, cfg.block
        )));
    }
    let mut train = Vec::new();
    let mut val = Vec::new();
    for ((ep, t), tokens) in index.iter().zip(encoded) {
        let e = &episodes[*ep];
        let cond = settings.condition(&Observation {
            state: demos.history(e, *t, cfg.history),
            task: e.task,
        })?;
        let ex = Example {
            tokens,
            condition: Conditioning {
                prompt: Vec::new(),
                vectors: Some(cond),
                ..Default::default()
            },
        };
        // Every 25th episode is held out for the validation NELBO.
        if ep % 25 == 24 {
            val.push(ex);
        } else {
            train.push(ex);
        }
    }
    Ok((settings, train, val))
}

fn lcm(a: usize, b: usize) -> usize {
    fn gcd(a: usize, b: usize) -> usize {
        if b == 0 {
            a
        } else {
            gcd(b, a % b)
        }
    }
    a / gcd(a, b) * b
}

/// Trains a policy on demonstrations; with `dir`, writes the checkpoint (weights, configs,
/// tokenizer, `robot.json`) there.
pub fn train(
    demos: &Demos,
    cfg: &PolicyConfig,
    dir: Option<&Path>,
    progress: bool,
) -> Result<(RobotPolicy, TrainReport), RobotError> {
    let (settings, train, val) = prepare(demos, cfg)?;
    let mcfg = settings.model_config();
    mcfg.validate().map_err(RobotError::Config)?;
    let device = Default::default();
    let mut model = mcfg.init_seeded::<CpuTrainBackend>(cfg.seed, &device);
    if cfg.value_features {
        let table = settings.value_feature_table()?;
        model = model.with_token_features(Tensor::from_data(
            TensorData::new(table, [mcfg.vocab_size, VALUE_FEATURES]),
            &device,
        ));
    }
    let tcfg = TrainConfig::new(settings.seq_len)
        .with_block_sizes(cfg.train_blocks.clone())
        .with_block_weights(vec![1.0; cfg.train_blocks.len()])
        .with_eval_block_size(cfg.block)
        .with_steps(cfg.steps)
        .with_batch_size(cfg.batch_size)
        .with_lr(cfg.lr)
        .with_warmup_steps((cfg.steps / 20).max(1))
        .with_seed(cfg.seed)
        .with_progress(progress && std::env::var_os("CI").is_none());
    let tok_meta = serde_json::to_value(&settings.tokenizer).unwrap_or_default();
    let spec = dir.map(|dir| CheckpointSpec {
        dir,
        tokenizer: tok_meta,
        resume: false,
    });
    if let Some(dir) = dir {
        std::fs::create_dir_all(dir).map_err(|source| RobotError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
    }
    let (model, report) = core_train(model, &mcfg, &tcfg, &train, &val, spec, &device)?;
    if let Some(dir) = dir {
        checkpoint::write_json(&dir.join(SETTINGS_FILE), &settings)?;
    }
    Ok((RobotPolicy::new(model.valid(), mcfg, settings), report))
}

/// A trained policy ready to act (inference backend).
pub struct RobotPolicy {
    model: BlockDiffusionModel<CpuBackend>,
    model_cfg: BlockDiffusionConfig,
    settings: RobotSettings,
    device: burn::tensor::Device<CpuBackend>,
}

impl RobotPolicy {
    fn new(
        model: BlockDiffusionModel<CpuBackend>,
        model_cfg: BlockDiffusionConfig,
        settings: RobotSettings,
    ) -> Self {
        Self {
            model,
            model_cfg,
            settings,
            device: Default::default(),
        }
    }

    /// Loads a checkpoint directory written by [`train`].
    pub fn load(dir: &Path) -> Result<Self, RobotError> {
        let device = Default::default();
        let ck = checkpoint::load::<CpuBackend>(dir, &device)?;
        let mut settings: RobotSettings = checkpoint::read_json(&dir.join(SETTINGS_FILE))?;
        settings.tokenizer.rebuild();
        check_obs_keep(&settings.config.obs_keep, settings.obs_dim)?;
        if settings.model_config() != ck.config {
            return Err(RobotError::Config(format!(
                "{}: settings do not match the checkpoint's config.json",
                dir.join(SETTINGS_FILE).display()
            )));
        }
        Ok(Self::new(ck.model, ck.config, settings))
    }

    /// Overrides the serving decoding: chunks averaged per observation and the sampling
    /// temperature (`None` keeps the checkpoint's).
    pub fn with_decoding(
        mut self,
        samples: Option<usize>,
        temperature: Option<f32>,
    ) -> Result<Self, RobotError> {
        if let Some(k) = samples {
            if k == 0 {
                return Err(RobotError::Config("samples must be >= 1".into()));
            }
            self.settings.config.samples = k;
        }
        if let Some(t) = temperature {
            if !(t >= 0.0 && t.is_finite()) {
                return Err(RobotError::Config(format!(
                    "temperature {t} must be finite and >= 0"
                )));
            }
            self.settings.config.temperature = t;
        }
        Ok(self)
    }

    /// Settings (tasks, dimensions, tokenizer).
    pub fn settings(&self) -> &RobotSettings {
        &self.settings
    }

    /// The serving sampler: the configured block and commit policy, or `block` = 1 for the
    /// autoregressive mode of the same weights; `per_step` replaces the commit policy by a
    /// fixed number of tokens per model call.
    pub fn sampler(&self, block: Option<usize>, per_step: Option<usize>) -> SamplerConfig {
        let c = &self.settings.config;
        let block = block.unwrap_or(c.block);
        SamplerConfig {
            block_size: block,
            policy: match (block, per_step) {
                (1, _) => CommitPolicy::TopK { k: 1 },
                (_, Some(k)) => CommitPolicy::TopK { k: k.max(1) },
                _ => c.policy.clone(),
            },
            temperature: c.temperature,
            max_len: self.settings.seq_len,
            stop_at_eos: self.settings.tokenizer.variable_length(),
            seed: c.seed,
            ..SamplerConfig::default()
        }
    }

    /// Action chunks for a batch of observations, decoded with `sampler`.
    pub fn act(
        &self,
        obs: &[Observation],
        sampler: &SamplerConfig,
    ) -> Result<(Vec<ActionChunk>, SampleStats), RobotError> {
        let k = self.settings.config.samples.max(1);
        let conds: Vec<Conditioning> = obs
            .iter()
            .map(|o| {
                Ok(Conditioning {
                    prompt: Vec::new(),
                    vectors: Some(self.settings.condition(o)?),
                    ..Default::default()
                })
            })
            .collect::<Result<Vec<_>, RobotError>>()?
            .into_iter()
            .flat_map(|c| std::iter::repeat_n(c, k))
            .collect();
        let constraint = ChunkConstraint {
            allow_end: self.settings.tokenizer.variable_length(),
            regular_offset: blockdiff_core::tokenizer::NUM_CORE_SPECIALS,
        };
        let out = sample(
            &self.model,
            &self.model_cfg,
            &conds,
            &constraint,
            sampler,
            &self.device,
        )?;
        let chunks: Vec<ActionChunk> = out
            .full_sequences
            .iter()
            .map(|s| {
                self.settings
                    .tokenizer
                    .decode(&s[..self.settings.seq_len.min(s.len())])
            })
            .collect::<Result<_, _>>()?;
        if k == 1 {
            return Ok((chunks, out.stats));
        }
        let averaged = chunks
            .chunks(k)
            .map(|group| {
                let mut mean = group[0].clone();
                for c in &group[1..] {
                    mean.values
                        .iter_mut()
                        .zip(&c.values)
                        .for_each(|(m, v)| *m += v);
                }
                mean.values.iter_mut().for_each(|m| *m /= k as f32);
                mean
            })
            .collect();
        Ok((averaged, out.stats))
    }
}
