//! Training with the BD3-LM objective: the masked (absorbing-state) block-diffusion NELBO,
//! computed in one vectorised pass over `x_t ⊕ x_0` with the mask of [`crate::mask`].

use std::path::Path;

use burn::module::{AutodiffModule, ModuleVisitor, Param};
use burn::optim::{AdamWConfig, GradientsParams, Optimizer};
use burn::prelude::*;
use burn::tensor::activation::log_softmax;
use burn::tensor::backend::AutodiffBackend;
use indicatif::{ProgressBar, ProgressStyle};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::checkpoint;
use crate::condition::{Conditioning, Example};
use crate::error::TrainError;
use crate::mask;
use crate::model::{BlockDiffusionConfig, BlockDiffusionModel, ForwardInput};
use crate::schedule::{
    sample_block_size, sample_mask_rates, warmup_cosine, BetaCurriculum, LossWeighting,
};
use crate::tokenizer::{EOS, MASK, PAD};

/// Training hyper-parameters. Saved as `train_config.json` next to checkpoints.
#[derive(Config, Debug)]
pub struct TrainConfig {
    /// Tokens per training sequence (a multiple of every block size); shorter examples get
    /// `EOS` then `PAD`.
    pub seq_len: usize,
    /// Block sizes of the mixture; include 1 so the same weights decode autoregressively.
    #[config(default = "vec![1, 4, 8, 16]")]
    pub block_sizes: Vec<usize>,
    /// Mixture weights of `block_sizes`.
    #[config(default = "vec![1.0, 1.0, 1.0, 1.0]")]
    pub block_weights: Vec<f64>,
    /// Sequences per step.
    #[config(default = 32)]
    pub batch_size: usize,
    /// Optimiser steps.
    #[config(default = 1000)]
    pub steps: usize,
    /// Peak learning rate (AdamW).
    #[config(default = 2e-3)]
    pub lr: f64,
    /// Final learning rate as a fraction of the peak (cosine decay).
    #[config(default = 0.1)]
    pub min_lr_ratio: f64,
    /// Linear warm-up steps.
    #[config(default = 50)]
    pub warmup_steps: usize,
    /// AdamW decoupled weight decay.
    #[config(default = 0.01)]
    pub weight_decay: f64,
    /// Global gradient-norm clip (0 = off).
    #[config(default = 1.0)]
    pub grad_clip: f64,
    /// Lower clip `β` of the masking rate `t ~ U[β, ω]`.
    #[config(default = 0.02)]
    pub t_min: f64,
    /// Upper clip `ω` of the masking rate.
    #[config(default = 1.0)]
    pub t_max: f64,
    /// Antithetic (stratified) masking rates across the batch's blocks.
    #[config(default = true)]
    pub antithetic: bool,
    /// Loss weighting of masked tokens.
    #[config(default = "LossWeighting::InverseT")]
    pub loss_weighting: LossWeighting,
    /// Forward noise kernel.
    #[config(default = "NoiseKernel::Absorbing")]
    pub kernel: NoiseKernel,
    /// [`NoiseKernel::Ordered`]: the largest group of positions decoded per call that training
    /// prepares the model for.
    #[config(default = 16)]
    pub max_parallel: usize,
    /// [`NoiseKernel::Ordered`]: the order inside a block (0 = dilated, `s` = `s`
    /// interleaved left-to-right stripes, see [`crate::mask::ordered_order`]).
    #[config(default = 0)]
    pub ordered_stripes: usize,
    /// SDAR-VL's Beta noise curriculum for the per-block rates (absent: `U[t_min, t_max]`).
    pub beta_curriculum: Option<BetaCurriculum>,
    /// Probability of dropping a sample's condition (for classifier-free guidance).
    #[config(default = 0.0)]
    pub cond_drop_prob: f64,
    /// Seed of everything random in training (data order, masks, init is the caller's).
    #[config(default = 42)]
    pub seed: u64,
    /// Validate every this many steps (0 = only at the end).
    #[config(default = 0)]
    pub eval_every: usize,
    /// Block size used for the validation NELBO.
    #[config(default = 8)]
    pub eval_block_size: usize,
    /// Save a checkpoint every this many steps (0 = only at the end).
    #[config(default = 0)]
    pub checkpoint_every: usize,
    /// Show a progress bar.
    #[config(default = true)]
    pub progress: bool,
    /// Stop after this many steps in this call and save resume state (0 = run to `steps`):
    /// for preemptible or time-sliced jobs; a later call with `resume` continues exactly.
    #[config(default = 0)]
    pub stop_after: usize,
    /// Draw each training batch from examples of similar length (a random anchor plus
    /// companions among its `4 · batch_size` nearest neighbours in length order) and cut the
    /// batch's trailing all-`PAD` blocks. Block-causal attention makes the cut exact for the
    /// blocks kept: only the all-`PAD` blocks' own (near-zero) loss terms go, so variable-length
    /// data (trips) trains on its real tokens instead of padding. No effect on fixed-length data.
    #[config(default = true)]
    pub length_buckets: bool,
}

impl TrainConfig {
    pub(crate) fn validate(&self) -> Result<(), TrainError> {
        let bad = |m: String| Err(TrainError::Config(m));
        if self.block_sizes.is_empty() || self.block_sizes.len() != self.block_weights.len() {
            return bad(
                "block_sizes and block_weights must be non-empty and of equal length".into(),
            );
        }
        for &b in self.block_sizes.iter().chain([&self.eval_block_size]) {
            if b == 0 || self.seq_len % b != 0 {
                return bad(format!(
                    "block size {b} must divide seq_len {}",
                    self.seq_len
                ));
            }
        }
        if let Some(c) = &self.beta_curriculum {
            c.validate().map_err(TrainError::Config)?;
        }
        if self
            .block_weights
            .iter()
            .any(|w| !(w.is_finite() && *w >= 0.0))
            || self.block_weights.iter().sum::<f64>() <= 0.0
        {
            return bad("block_weights must be finite and >= 0 with a positive sum".into());
        }
        if !(self.t_min > 0.0 && self.t_min <= self.t_max && self.t_max <= 1.0) {
            return bad(format!(
                "need 0 < t_min <= t_max <= 1, got [{}, {}]",
                self.t_min, self.t_max
            ));
        }
        if self.batch_size == 0 {
            return bad("batch_size must be > 0".into());
        }
        if self.max_parallel == 0 {
            return bad("max_parallel must be > 0".into());
        }
        if self.ordered_stripes > 0 {
            if let Some(b) = self
                .block_sizes
                .iter()
                .chain([&self.eval_block_size])
                .find(|&&b| b % self.ordered_stripes != 0)
            {
                return bad(format!(
                    "ordered_stripes {} must divide block size {b}",
                    self.ordered_stripes
                ));
            }
        }
        Ok(())
    }
}

/// Per-step record of a training run.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct TrainReport {
    /// Steps run in this call (a resumed run counts from where it resumed).
    pub steps: usize,
    /// Step the run ended at.
    pub final_step: usize,
    /// Training loss (NELBO per token, nats) averaged over the last 10% of steps.
    pub final_train_loss: f64,
    /// `(step, validation NELBO per token at eval_block_size)`.
    pub val_nelbo: Vec<(usize, f64)>,
    /// Training tokens per second, counting every example as `seq_len` positions (the padded
    /// frame; with `length_buckets` the cut PAD blocks count too, so runs compare by wall time).
    pub tokens_per_s: f64,
    /// `x_0` positions actually computed per second (after cutting trailing PAD blocks).
    #[serde(default)]
    pub computed_tokens_per_s: f64,
    /// Median wall time of one optimiser step after the first (drawing and noising the batch,
    /// forward, backward, the all-reduce of data-parallel peers, clipping, AdamW; not
    /// validation or checkpoints), seconds; 0 with fewer than two steps.
    #[serde(default)]
    pub median_step_s: f64,
}

/// A batch ready for the model: `context ⊕ x_t ⊕ x_0`.
pub struct NoisedBatch<B: Backend> {
    input: ForwardInput<B>,
    prompt_len: usize,
    seq_len: usize,
    /// Positions the loss sum is divided by per example: `seq_len`, or the configured length
    /// when trailing `PAD` blocks were cut, so the per-token scale matches the uncut batch.
    loss_len: usize,
    targets: Tensor<B, 2, Int>,
    weights: Tensor<B, 2>,
    /// Uniform kernel: the leave-one-out → denoiser logit offset `[batch, L, vocab]`.
    loo_bonus: Option<Tensor<B, 3>>,
}

impl<B: Backend> NoisedBatch<B> {
    /// Rows `start..start + len` of the batch (every per-example tensor narrowed; the mask,
    /// positions and loss scale are shared): one data-parallel peer's share of a batch noised
    /// once for all peers, so the union of the shares is exactly the single-process batch.
    pub fn rows(self, start: usize, len: usize) -> Self {
        let input = self.input;
        Self {
            input: ForwardInput {
                tokens: input.tokens.narrow(0, start, len),
                positions: input.positions,
                cond: input.cond.map(|t| t.narrow(0, start, len)),
                cond_drop: input.cond_drop.map(|t| t.narrow(0, start, len)),
                mask: input.mask,
                request_features: input.request_features.map(|t| t.narrow(0, start, len)),
            },
            prompt_len: self.prompt_len,
            seq_len: self.seq_len,
            loss_len: self.loss_len,
            targets: self.targets.narrow(0, start, len),
            weights: self.weights.narrow(0, start, len),
            loo_bonus: self.loo_bonus.map(|t| t.narrow(0, start, len)),
        }
    }
}

/// Frames an example's tokens to exactly `seq_len`: `tokens ⊕ EOS ⊕ PAD…`.
pub fn frame(tokens: &[u32], seq_len: usize) -> Option<Vec<u32>> {
    if tokens.len() > seq_len {
        return None;
    }
    let mut v = tokens.to_vec();
    if v.len() < seq_len {
        v.push(EOS);
        v.resize(seq_len, PAD);
    }
    Some(v)
}

/// Checks a data set against the model and train configs, returning the prompt length.
pub fn check_data(
    data: &[Example],
    model_cfg: &BlockDiffusionConfig,
    seq_len: usize,
    what: &str,
) -> Result<usize, TrainError> {
    let first = data
        .first()
        .ok_or_else(|| TrainError::Data(format!("{what} set is empty")))?;
    let prompt_len = first.condition.prompt.len();
    let cond_width = model_cfg.cond_dim * model_cfg.cond_len;
    for (i, ex) in data.iter().enumerate() {
        let err = |m: String| TrainError::Data(format!("{what} example {i}: {m}"));
        if ex.tokens.len() > seq_len {
            return Err(err(format!(
                "{} tokens exceed seq_len {seq_len}",
                ex.tokens.len()
            )));
        }
        if ex.condition.prompt.len() != prompt_len {
            return Err(err(format!(
                "prompt length {} differs from example 0's {prompt_len}",
                ex.condition.prompt.len()
            )));
        }
        if let Some(&t) = ex
            .tokens
            .iter()
            .chain(&ex.condition.prompt)
            .find(|&&t| t as usize >= model_cfg.vocab_size || t == MASK)
        {
            return Err(err(format!(
                "token {t} is MASK or outside the vocabulary ({})",
                model_cfg.vocab_size
            )));
        }
        if let Some(t) = &ex.condition.token_features {
            crate::condition::check_request_features(&t.get(), model_cfg).map_err(err)?;
        }
        match (&ex.condition.vectors, cond_width) {
            (None, 0) => {}
            (Some(v), w) if v.len() == w && w > 0 => {
                if v.iter().any(|x| !x.is_finite()) {
                    return Err(err("condition contains NaN or infinity".into()));
                }
            }
            (v, w) => {
                return Err(err(format!(
                    "condition has {} values, the model expects {w}",
                    v.as_ref().map_or(0, |v| v.len())
                )))
            }
        }
    }
    if prompt_len + model_cfg.cond_len + seq_len > model_cfg.max_len {
        return Err(TrainError::Data(format!(
            "prompt {prompt_len} + condition {} + seq_len {seq_len} exceed the model's max_len {}",
            model_cfg.cond_len, model_cfg.max_len
        )));
    }
    Ok(prompt_len)
}

/// The forward (noising) process.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum NoiseKernel {
    /// Absorbing state: a noised token becomes `MASK` (masked diffusion, BD3-LM).
    #[default]
    Absorbing,
    /// Uniform state: a noised token becomes a uniformly random id (all but `MASK`/`BOS`).
    /// The model's output is read as the leave-one-out denoiser `p(x₀ⁱ | x_t^{−i})`: the loss
    /// is the cross-entropy of the full denoiser at every position, obtained exactly from it by
    /// adding `ln(1 + K·α_t/(1 − α_t))` to the logit of the position's own noisy token. Sample
    /// with [`crate::sample::CommitPolicy::Uniform`].
    Uniform,
    /// Ordered (group-parallel) denoising, for KV-cached multi-token decoding: every position
    /// is a masked query predicted from the clean tokens before a cut in a fixed order (blocks
    /// left to right, inside a block the dilated or striped order of
    /// [`TrainConfig::ordered_stripes`], [`crate::mask::ordered_order`]), and
    /// the clean tokens attend causally in that order
    /// ([`crate::mask::ordered_training_mask_data`]). A query at in-block rank `r` is trained
    /// with its cut `d ~ U{0..min(r, max_parallel − 1)}` places before it: what it sees when
    /// it is decoded in a group of up to `max_parallel` positions per call. Loss weight 1 per
    /// position; with every `d = 0` ([`Noise::AllMasked`]) the loss is the exact negative
    /// log-likelihood of the model as an autoregressive model in that order. Sample with
    /// [`crate::sample::CommitPolicy::Ordered`]: each call feeds the tokens committed by the
    /// call before (their keys and values are final, so the cache is exact) and queries the
    /// next group, at a cost of `2·per_step` rows per call.
    Ordered,
}

/// How the noised batch is drawn.
#[derive(Clone, Copy, Debug)]
pub enum Noise {
    /// Evaluation: the NELBO's unbiased estimator. Per block `k ~ U{1..B}` (stratified over
    /// the batch's blocks) positions are masked uniformly at random with loss weight `B/k`,
    /// whose expectation is the continuous-time NELBO over the whole `t ∈ [0, 1]`, whatever
    /// training clip `[t_min, t_max]` the config has.
    Random,
    /// Training at `progress ∈ [0, 1]` of the run: like `Random`, or from the Beta curriculum
    /// when the config has one.
    Training {
        /// Fraction of the run done.
        progress: f64,
    },
    /// Every `x_t` token masked, loss weight 1: with block size 1 this is the exact
    /// autoregressive log-likelihood of the same weights.
    AllMasked,
}

/// Masks `k = ⌊u·B⌋ + 1` of a block's `B` positions uniformly at random (`u ∈ [0, 1)` the
/// block's stratified draw), loss weight `B/k`. With `u ~ U[0, 1)`, `k ~ U{1..B}` and per
/// block the expectation is `Σ_k c_k` (`c_k`: mean loss of a masked token when `k` are
/// masked), the continuous-time NELBO over `t ∈ [0, 1]` (`∫ (1/t)·Bin(k; B, t)·k dt = 1`),
/// with bounded weights and so finite variance.
fn mask_count(block: usize, u: f64, rng: &mut StdRng) -> (Vec<bool>, f64) {
    let k = ((u * block as f64) as usize + 1).min(block);
    let mut order: Vec<usize> = (0..block).collect();
    for a in 0..k {
        let b = rng.random_range(a..block);
        order.swap(a, b);
    }
    let mut m = vec![false; block];
    for &j in &order[..k] {
        m[j] = true;
    }
    (m, block as f64 / k as f64)
}

/// Builds the noised training input for `examples` (all validated by [`check_data`]).
#[allow(clippy::too_many_arguments)]
pub fn noised_batch<B: Backend>(
    examples: &[&Example],
    model_cfg: &BlockDiffusionConfig,
    cfg: &TrainConfig,
    block: usize,
    noise: Noise,
    drop_cond: bool,
    rng: &mut StdRng,
    device: &B::Device,
) -> NoisedBatch<B> {
    let n = examples.len();
    // Training cuts trailing blocks that are all PAD in every example (evaluation keeps the
    // full frame, so reported NELBOs are the exact objective).
    let l = match noise {
        Noise::Training { .. } if cfg.length_buckets => trimmed_len(examples, cfg.seq_len, block),
        _ => cfg.seq_len,
    };
    let n_blocks = l / block;
    if cfg.kernel == NoiseKernel::Ordered {
        return ordered_batch(
            examples, model_cfg, cfg, block, l, noise, drop_cond, rng, device,
        );
    }
    let uniform = cfg.kernel == NoiseKernel::Uniform;
    let rates = match (noise, &cfg.beta_curriculum) {
        (Noise::Training { progress }, Some(c)) => {
            c.sample(n * n_blocks, progress, cfg.t_min, cfg.t_max, rng)
        }
        // The absorbing NELBO estimator reads each block's draw as `u ∈ [0, 1)`, never clipped.
        (Noise::Random, _) if !uniform => {
            sample_mask_rates(n * n_blocks, 0.0, 1.0, cfg.antithetic, rng)
        }
        _ => sample_mask_rates(n * n_blocks, cfg.t_min, cfg.t_max, cfg.antithetic, rng),
    };
    let noise_ids = crate::sample::uniform_noise_ids(model_cfg.vocab_size);
    let k_noise = noise_ids.len() as f64;
    // Uniform kernel: per position, (noisy token, ln(1 + K·α/(1 − α))) for the LOO conversion.
    let mut bonus: Vec<(u32, f32)> = Vec::new();
    let mut states = Vec::with_capacity(n);
    let mut clean = Vec::with_capacity(n);
    let mut weights = Vec::with_capacity(n);
    let mut drops = Vec::with_capacity(n);
    for (i, ex) in examples.iter().enumerate() {
        let x0 = frame(&ex.tokens, l).expect("checked by check_data");
        drops.push(drop_cond && rng.random::<f64>() < cfg.cond_drop_prob);
        let mut xt = Vec::with_capacity(l);
        let mut wt = Vec::with_capacity(l);
        for k in 0..n_blocks {
            let blk = &x0[k * block..(k + 1) * block];
            let t_block = match noise {
                Noise::AllMasked => 1.0,
                _ => rates[i * n_blocks + k],
            };
            if uniform {
                // Every position is predicted (weight 1); noised ones get a random id.
                let alpha = 1.0 - t_block;
                let b = if alpha <= 0.0 {
                    0.0
                } else {
                    (1.0 + k_noise * alpha / t_block.max(1e-9)).ln() as f32
                };
                for &tok in blk {
                    let x = if rng.random::<f64>() < t_block {
                        noise_ids[rng.random_range(0..noise_ids.len())]
                    } else {
                        tok
                    };
                    xt.push(x);
                    wt.push(1.0);
                    bonus.push((x, b));
                }
                continue;
            }
            let (masked, w): (Vec<bool>, f64) = match noise {
                Noise::AllMasked => (vec![true; block], 1.0),
                Noise::Random => mask_count(block, t_block, rng),
                Noise::Training { .. } => match cfg.loss_weighting {
                    LossWeighting::MaskCount => mask_count(block, t_block, rng),
                    weighting => {
                        let t = t_block;
                        let m: Vec<bool> = (0..block).map(|_| rng.random::<f64>() < t).collect();
                        let count = m.iter().filter(|&&x| x).count();
                        let w = if weighting == LossWeighting::InverseT {
                            1.0 / t
                        } else if count == 0 {
                            0.0
                        } else {
                            block as f64 / count as f64
                        };
                        (m, w)
                    }
                },
            };
            for (j, &tok) in blk.iter().enumerate() {
                xt.push(if masked[j] { MASK } else { tok });
                wt.push(if masked[j] { w as f32 } else { 0.0 });
            }
        }
        states.push(xt);
        clean.push(x0);
        weights.push(wt);
    }
    let conditions: Vec<&Conditioning> = examples.iter().map(|e| &e.condition).collect();
    let mut batch = batch_from_states(
        &conditions,
        &states,
        &clean,
        &weights,
        &drops,
        model_cfg,
        block,
        device,
    );
    if uniform {
        let v = model_cfg.vocab_size;
        let mut dense = vec![0f32; bonus.len() * v];
        for (j, &(x, b)) in bonus.iter().enumerate() {
            dense[j * v + x as usize] = b;
        }
        batch.loo_bonus =
            Some(Tensor::<B, 1>::from_floats(dense.as_slice(), device).reshape([n, l, v]));
    }
    batch.loss_len = cfg.seq_len;
    batch
}

/// [`noised_batch`] of the ordered objective ([`NoiseKernel::Ordered`]): every position a
/// query with weight 1, content `x_0`, and one cut per position drawn for the whole batch.
#[allow(clippy::too_many_arguments)]
fn ordered_batch<B: Backend>(
    examples: &[&Example],
    model_cfg: &BlockDiffusionConfig,
    cfg: &TrainConfig,
    block: usize,
    l: usize,
    noise: Noise,
    drop_cond: bool,
    rng: &mut StdRng,
    device: &B::Device,
) -> NoisedBatch<B> {
    let n = examples.len();
    let mut states = Vec::with_capacity(n);
    let mut clean = Vec::with_capacity(n);
    let mut weights = Vec::with_capacity(n);
    let mut drops = Vec::with_capacity(n);
    for ex in examples {
        clean.push(frame(&ex.tokens, l).expect("checked by check_data"));
        states.push(vec![MASK; l]);
        weights.push(vec![1.0f32; l]);
        drops.push(drop_cond && rng.random::<f64>() < cfg.cond_drop_prob);
    }
    let g = mask::ordered_global_rank(l, block, cfg.ordered_stripes);
    let max_d = cfg.max_parallel.max(1);
    let cuts: Vec<usize> = g
        .iter()
        .map(|&gi| {
            let r = gi % block;
            let d = match noise {
                Noise::AllMasked => 0,
                _ => rng.random_range(0..=r.min(max_d - 1)),
            };
            gi - d
        })
        .collect();
    let conditions: Vec<&Conditioning> = examples.iter().map(|e| &e.condition).collect();
    let mut batch = batch_with_mask(
        &conditions,
        (&states, &clean, &weights, &drops),
        model_cfg,
        |ctx, l| mask::ordered_training_mask_data(ctx, l, (block, cfg.ordered_stripes), &cuts),
        device,
    );
    batch.loss_len = cfg.seq_len;
    batch
}

/// The shortest multiple of `block` (at most `seq_len`) holding every example's tokens and
/// its `EOS`: the blocks after it are all `PAD`.
pub fn trimmed_len(examples: &[&Example], seq_len: usize, block: usize) -> usize {
    let need = examples
        .iter()
        .map(|e| e.tokens.len() + 1)
        .max()
        .unwrap_or(1);
    (need.div_ceil(block) * block).min(seq_len)
}

/// Indices of `train` sorted by token count (stable, so ties keep data order).
fn length_order(train: &[Example]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..train.len()).collect();
    order.sort_by_key(|&i| train[i].tokens.len());
    order
}

/// One training batch's example indices: `batch` uniform draws, or with `order` (indices in
/// length order) a uniform anchor plus companions drawn from the `4 · batch` examples nearest
/// to it in length, so the batch can be cut to its longest member ([`trimmed_len`]).
fn draw_batch(n: usize, batch: usize, order: Option<&[usize]>, rng: &mut StdRng) -> Vec<usize> {
    let Some(order) = order else {
        return (0..batch).map(|_| rng.random_range(0..n)).collect();
    };
    let w = (4 * batch).min(n);
    let anchor = rng.random_range(0..n);
    let start = anchor.saturating_sub(w / 2).min(n - w);
    let mut idx = vec![order[anchor]];
    idx.extend((1..batch).map(|_| order[start + rng.random_range(0..w)]));
    idx
}

/// Builds the `context ⊕ x_t ⊕ x_0` model input from explicit noisy states: `conditions[i]`
/// is sample `i`'s prompt/vectors, `states[i]` is
/// `x_t` (`MASK` where noised), `clean[i]` the framed `x_0` (both of one length `L`, a multiple
/// of `block`), `weights[i][j]` the loss weight of position `j` (0 where nothing is predicted),
/// `drops[i]` whether example `i` uses the null condition. Training draws the states at random
/// ([`noised_batch`]); reward fine-tuning replays the sampler's own intermediate states.
#[allow(clippy::too_many_arguments)]
pub fn batch_from_states<B: Backend>(
    conditions: &[&Conditioning],
    states: &[Vec<u32>],
    clean: &[Vec<u32>],
    weights: &[Vec<f32>],
    drops: &[bool],
    model_cfg: &BlockDiffusionConfig,
    block: usize,
    device: &B::Device,
) -> NoisedBatch<B> {
    batch_with_mask(
        conditions,
        (states, clean, weights, drops),
        model_cfg,
        |ctx, l| mask::training_mask_data(ctx, l, block),
        device,
    )
}

/// [`batch_from_states`] with the attention mask over `[context ⊕ x_t ⊕ x_0]` built by
/// `mask_data(context, L)` (the ordered objective's differs from BD3-LM's).
fn batch_with_mask<B: Backend>(
    conditions: &[&Conditioning],
    (states, clean, weights, drops): (&[Vec<u32>], &[Vec<u32>], &[Vec<f32>], &[bool]),
    model_cfg: &BlockDiffusionConfig,
    mask_data: impl FnOnce(usize, usize) -> Vec<bool>,
    device: &B::Device,
) -> NoisedBatch<B> {
    let n = conditions.len();
    let l = clean[0].len();
    let prompt_len = conditions[0].prompt.len();
    let width = prompt_len + 2 * l;
    let mut tokens = Vec::with_capacity(n * width);
    let mut targets = Vec::with_capacity(n * l);
    let mut flat_w = Vec::with_capacity(n * l);
    for (i, cond) in conditions.iter().enumerate() {
        if drops[i] {
            tokens.extend(std::iter::repeat_n(MASK as i64, prompt_len));
        } else {
            tokens.extend(cond.prompt.iter().map(|&t| t as i64));
        }
        tokens.extend(states[i].iter().map(|&t| t as i64));
        tokens.extend(clean[i].iter().map(|&t| t as i64));
        targets.extend(clean[i].iter().map(|&t| t as i64));
        flat_w.extend_from_slice(&weights[i]);
    }
    let drops: Vec<f32> = drops.iter().map(|&d| if d { 1.0 } else { 0.0 }).collect();
    let cond_len = if model_cfg.cond_dim > 0 {
        model_cfg.cond_len
    } else {
        0
    };
    let (cond, cond_drop) = if cond_len > 0 {
        let v: Vec<f32> = conditions
            .iter()
            .flat_map(|c| c.vectors.clone().unwrap_or_default())
            .collect();
        let c = Tensor::<B, 1>::from_floats(v.as_slice(), device).reshape([
            n,
            model_cfg.cond_len,
            model_cfg.cond_dim,
        ]);
        (Some(c), Some(Tensor::from_floats(drops.as_slice(), device)))
    } else {
        (None, None)
    };
    // Per-request token features; dropped conditions get the null (zero) table.
    let request_features = crate::sample::request_feature_tensor::<B>(
        conditions.iter().zip(drops.iter()).map(|(c, &d)| {
            if d > 0.0 {
                None
            } else {
                c.token_features
                    .as_ref()
                    .map(crate::condition::TokenFeatures::get)
            }
        }),
        n,
        model_cfg,
        device,
    )
    .expect("checked by check_data");
    let ctx = cond_len + prompt_len;
    let m = mask_data(ctx, l);
    let side = ctx + 2 * l;
    let mut positions: Vec<usize> = (cond_len..ctx + l).collect();
    positions.extend(ctx..ctx + l);
    NoisedBatch {
        input: ForwardInput {
            tokens: Tensor::<B, 1, Int>::from_data(TensorData::new(tokens, [n * width]), device)
                .reshape([n, width]),
            positions,
            cond,
            cond_drop,
            mask: Some(mask::MaskTable::new(m, side, side)),
            request_features,
        },
        prompt_len,
        seq_len: l,
        targets: Tensor::<B, 1, Int>::from_data(TensorData::new(targets, [n * l]), device)
            .reshape([n, l]),
        weights: Tensor::<B, 1>::from_floats(flat_w.as_slice(), device).reshape([n, l]),
        loss_len: l,
        loo_bonus: None,
    }
}

/// NELBO per token (nats) of a noised batch: `Σ w · CE / (batch · L)`.
pub fn batch_loss<B: Backend>(
    model: &BlockDiffusionModel<B>,
    batch: NoisedBatch<B>,
) -> Tensor<B, 1> {
    let n = batch.targets.dims()[0];
    // `loss_len` ≥ L: the configured length when trailing PAD blocks were cut, so the
    // per-token scale matches the uncut batch.
    let len = batch.loss_len.max(batch.seq_len);
    weighted_nll(model, batch).sum() / (n * len) as f64
}

/// `w · CE` per position `[batch, L]` of a noised batch.
fn weighted_nll<B: Backend>(model: &BlockDiffusionModel<B>, batch: NoisedBatch<B>) -> Tensor<B, 2> {
    let (logits, _) = model.forward_range(batch.input, None, batch.prompt_len, batch.seq_len);
    let logits = match batch.loo_bonus {
        Some(bonus) => logits + bonus,
        None => logits,
    };
    let [n, l, _] = logits.dims();
    let logp = log_softmax(logits, 2);
    let nll = logp
        .gather(2, batch.targets.unsqueeze_dim::<3>(2))
        .reshape([n, l])
        .neg();
    nll * batch.weights
}

/// Mean loss per token over a data set with a fixed seed: the NELBO at block size `block`
/// (`Noise::Random`, its unbiased estimator averaged over `passes` draws), or the exact AR NLL
/// (`block = 1`, `Noise::AllMasked`).
#[allow(clippy::too_many_arguments)]
pub fn evaluate<B: Backend>(
    model: &BlockDiffusionModel<B>,
    model_cfg: &BlockDiffusionConfig,
    cfg: &TrainConfig,
    data: &[Example],
    block: usize,
    noise: Noise,
    passes: usize,
    device: &B::Device,
) -> f64 {
    let per_pos = evaluate_positions(model, model_cfg, cfg, data, block, noise, passes, device);
    per_pos.iter().sum::<f64>() / per_pos.len() as f64
}

/// The loss of [`evaluate`] per position: entry `i` is the mean over examples (and passes)
/// of position `i`'s weighted cross-entropy, so the mean of the vector is [`evaluate`]'s
/// number and the mean of a tail `from..` is the loss of tokens that always see at least
/// `from` earlier ones (as when a stream slides its window over the KV cache).
#[allow(clippy::too_many_arguments)]
pub fn evaluate_positions<B: Backend>(
    model: &BlockDiffusionModel<B>,
    model_cfg: &BlockDiffusionConfig,
    cfg: &TrainConfig,
    data: &[Example],
    block: usize,
    noise: Noise,
    passes: usize,
    device: &B::Device,
) -> Vec<f64> {
    let mut rng = StdRng::seed_from_u64(cfg.seed ^ 0x5EED_E7A1);
    let mut total = vec![0.0f64; cfg.seq_len];
    let mut count = 0usize;
    for _ in 0..passes.max(1) {
        for chunk in data.chunks(cfg.batch_size.max(1)) {
            let refs: Vec<&Example> = chunk.iter().collect();
            let batch =
                noised_batch::<B>(&refs, model_cfg, cfg, block, noise, false, &mut rng, device);
            let sums = weighted_nll(model, batch).sum_dim(0);
            let sums: Vec<f32> = sums
                .into_data()
                .convert::<f32>()
                .to_vec()
                .expect("f32 data");
            for (t, s) in total.iter_mut().zip(sums) {
                *t += s as f64;
            }
            count += chunk.len();
        }
    }
    total.iter().map(|t| t / count.max(1) as f64).collect()
}

/// Rescales all gradients so their global L2 norm is at most `max_norm`; returns the norm.
pub(crate) fn clip_global_norm<B: AutodiffBackend>(
    model: &BlockDiffusionModel<B>,
    grads: &mut GradientsParams,
    max_norm: f64,
) -> f64 {
    struct SumSq<'a> {
        grads: &'a GradientsParams,
        total: f64,
    }
    impl<B: AutodiffBackend> ModuleVisitor<B> for SumSq<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            if let Some(g) = self.grads.get::<B::InnerBackend, D>(param.id) {
                let s: f64 = g.square().sum().into_scalar().elem();
                self.total += s;
            }
        }
    }
    struct Scale<'a> {
        grads: &'a mut GradientsParams,
        factor: f64,
    }
    impl<B: AutodiffBackend> ModuleVisitor<B> for Scale<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            if let Some(g) = self.grads.remove::<B::InnerBackend, D>(param.id) {
                self.grads
                    .register::<B::InnerBackend, D>(param.id, g * self.factor);
            }
        }
    }
    let mut v = SumSq { grads, total: 0.0 };
    model.visit(&mut v);
    let norm = v.total.sqrt();
    if max_norm > 0.0 && norm > max_norm {
        let mut s = Scale {
            grads,
            factor: max_norm / (norm + 1e-6),
        };
        model.visit(&mut s);
    }
    norm
}

/// Where and what to checkpoint during training.
pub struct CheckpointSpec<'a> {
    /// Checkpoint directory.
    pub dir: &'a Path,
    /// Tokenizer metadata saved beside the weights.
    pub tokenizer: serde_json::Value,
    /// Continue from `dir/resume/` if it exists.
    pub resume: bool,
}

/// One optimiser step on a noised batch: loss, backward, global-norm clip (`grad_clip` 0 =
/// off), AdamW update at `lr`. Returns the updated model and the batch loss (nats/token).
pub fn train_step<B: AutodiffBackend, O: Optimizer<BlockDiffusionModel<B>, B>>(
    model: BlockDiffusionModel<B>,
    optim: &mut O,
    batch: NoisedBatch<B>,
    lr: f64,
    grad_clip: f64,
) -> (BlockDiffusionModel<B>, f64) {
    let loss = batch_loss(&model, batch);
    let loss_v: f64 = loss.clone().into_scalar().elem();
    let grads = loss.backward();
    let mut grads = GradientsParams::from_grads(grads, &model);
    if grad_clip > 0.0 {
        clip_global_norm(&model, &mut grads, grad_clip);
    }
    (optim.step(lr, model, grads), loss_v)
}

/// [`train_step`] of one data-parallel peer: the gradients and the loss are averaged over the
/// peers (all-reduce, mean) before clipping and the optimiser step.
fn train_step_all_reduce<B: AutodiffBackend, O: Optimizer<BlockDiffusionModel<B>, B>>(
    model: BlockDiffusionModel<B>,
    optim: &mut O,
    batch: NoisedBatch<B>,
    lr: f64,
    grad_clip: f64,
    peer: burn::collective::PeerId,
) -> Result<(BlockDiffusionModel<B>, f64), TrainError> {
    use burn::collective::{all_reduce, ReduceOperation};
    let loss = batch_loss(&model, batch);
    // The mean loss of all peers: every peer sees the same value, so a non-finite loss stops
    // them all at the same step instead of leaving the others waiting in an all-reduce.
    let mean_loss = all_reduce::<B::InnerBackend>(
        peer,
        loss.clone().inner().into_primitive().tensor(),
        ReduceOperation::Mean,
    )?;
    let loss_v: f64 = Tensor::<B::InnerBackend, 1>::from_primitive(
        burn::tensor::TensorPrimitive::Float(mean_loss),
    )
    .into_scalar()
    .elem();
    let grads = loss.backward();
    let mut grads = GradientsParams::from_grads(grads, &model)
        .all_reduce::<B::InnerBackend>(peer, ReduceOperation::Mean)?;
    if grad_clip > 0.0 {
        clip_global_norm(&model, &mut grads, grad_clip);
    }
    Ok((optim.step(lr, model, grads), loss_v))
}

/// All-reduces one flag over the peers; true when no peer raised it (`raised`). A collective
/// failure counts as raised.
fn peer_flags_clear<B: AutodiffBackend>(peer: Peer, raised: bool, device: &B::Device) -> bool {
    use burn::collective::{all_reduce, ReduceOperation};
    let flag = Tensor::<B::InnerBackend, 1>::from_floats([raised as u8 as f32], device);
    all_reduce::<B::InnerBackend>(
        peer.id(),
        flag.into_primitive().tensor(),
        ReduceOperation::Sum,
    )
    .map(|t| {
        let sum: f32 =
            Tensor::<B::InnerBackend, 1>::from_primitive(burn::tensor::TensorPrimitive::Float(t))
                .into_scalar()
                .elem();
        sum == 0.0
    })
    .unwrap_or(false)
}

/// Trains `model` on `train`, validating on `val`. Deterministic for a given seed.
pub fn train<B: AutodiffBackend>(
    model: BlockDiffusionModel<B>,
    model_cfg: &BlockDiffusionConfig,
    cfg: &TrainConfig,
    train: &[Example],
    val: &[Example],
    ckpt: Option<CheckpointSpec<'_>>,
    device: &B::Device,
) -> Result<(BlockDiffusionModel<B>, TrainReport), TrainError> {
    check_run(model_cfg, cfg, train, val)?;
    train_peer(model, model_cfg, cfg, train, val, ckpt, device, None)
}

/// The config and the data a run needs, checked once before any step (and before any
/// data-parallel peer starts).
fn check_run(
    model_cfg: &BlockDiffusionConfig,
    cfg: &TrainConfig,
    train: &[Example],
    val: &[Example],
) -> Result<(), TrainError> {
    cfg.validate()?;
    check_data(train, model_cfg, cfg.seq_len, "training")?;
    if !val.is_empty() {
        check_data(val, model_cfg, cfg.seq_len, "validation")?;
    }
    Ok(())
}

/// One data-parallel peer (see [`train_data_parallel`]).
#[derive(Clone, Copy, Debug)]
struct Peer {
    /// Index among the peers (its share of every batch); peer 0 validates and saves.
    index: usize,
    /// Number of peers.
    count: usize,
}

impl Peer {
    fn id(&self) -> burn::collective::PeerId {
        burn::collective::PeerId::from(self.index as u32)
    }
}

/// Runs every lazy parameter initialiser of `model` now, so its clones share the values (burn
/// initialises parameters on first use, separately in each clone of a fresh model).
pub fn materialize<B: Backend>(model: &BlockDiffusionModel<B>) {
    struct Touch;
    impl<B: Backend> burn::module::ModuleVisitor<B> for Touch {
        fn visit_float<const D: usize>(&mut self, param: &burn::module::Param<Tensor<B, D>>) {
            let _ = param.val();
        }
        fn visit_int<const D: usize>(&mut self, param: &burn::module::Param<Tensor<B, D, Int>>) {
            let _ = param.val();
        }
        fn visit_bool<const D: usize>(&mut self, param: &burn::module::Param<Tensor<B, D, Bool>>) {
            let _ = param.val();
        }
    }
    model.visit(&mut Touch);
}

/// One data-parallel run at a time per process (see [`train_data_parallel`]).
static DATA_PARALLEL_TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Data-parallel peers [`train_on_cores`] uses for a batch of `batch_size`: the most peers, up
/// to the CPU cores, that divide the batch. `BLOCKDIFF_PEERS=N` sets the cap instead (1 = one
/// process-wide step, as [`train`]).
pub fn cpu_peers(batch_size: usize) -> usize {
    let cap = std::env::var("BLOCKDIFF_PEERS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(crate::cpu_cores);
    (1..=cap.min(batch_size).max(1))
        .rev()
        .find(|p| batch_size % p == 0)
        .unwrap_or(1)
}

/// [`train`] on the CPU with one data-parallel peer per core ([`cpu_peers`]), each peer on its
/// own thread with its share of every batch. On this project's 2-core machine a model runs
/// 1.85x the tokens/s of one process-wide step whose kernels split each op across the cores
/// (`cargo run --release --example data_parallel_speed`), because most ops are too small to
/// split well. Same batches and noise as [`train`]; the result differs only in the order of
/// float sums. Falls back to [`train`] when only one peer fits.
pub fn train_on_cores(
    model: BlockDiffusionModel<crate::CpuTrainBackend>,
    model_cfg: &BlockDiffusionConfig,
    cfg: &TrainConfig,
    train_set: &[Example],
    val: &[Example],
    ckpt: Option<CheckpointSpec<'_>>,
    device: &Device<crate::CpuTrainBackend>,
) -> Result<(BlockDiffusionModel<crate::CpuTrainBackend>, TrainReport), TrainError> {
    match cpu_peers(cfg.batch_size) {
        0 | 1 => train(model, model_cfg, cfg, train_set, val, ckpt, device),
        peers => {
            let devices = vec![device.clone(); peers];
            train_data_parallel(model, model_cfg, cfg, train_set, val, ckpt, &devices)
        }
    }
}

/// Data-parallel training on several devices through burn's collective: one thread per
/// device, each holding a replica of `model`. Every step's batch is drawn and noised exactly
/// as [`train`] draws it, each peer takes its `batch_size / devices` rows, and the gradients
/// (and the loss) are averaged by an all-reduce before clipping and AdamW, so the replicas stay
/// identical and the run is single-device training on the same batches (up to the order of
/// float sums). `batch_size` must be a multiple of the number of devices. Peer 0 validates,
/// shows progress and writes the checkpoints; its model and report are returned.
#[allow(clippy::too_many_arguments)]
pub fn train_data_parallel<B: AutodiffBackend>(
    model: BlockDiffusionModel<B>,
    model_cfg: &BlockDiffusionConfig,
    cfg: &TrainConfig,
    train: &[Example],
    val: &[Example],
    ckpt: Option<CheckpointSpec<'_>>,
    devices: &[B::Device],
) -> Result<(BlockDiffusionModel<B>, TrainReport), TrainError> {
    use burn::collective::{finish_collective, register, CollectiveConfig};
    let count = devices.len();
    if count == 0 {
        return Err(TrainError::Config(
            "data-parallel training needs a device".into(),
        ));
    }
    if cfg.batch_size % count != 0 {
        return Err(TrainError::Config(format!(
            "batch_size {} is not a multiple of the {count} data-parallel devices",
            cfg.batch_size
        )));
    }
    // Checked before any peer starts: a peer that failed alone would leave the others waiting.
    check_run(model_cfg, cfg, train, val)?;
    // burn's collective is one registry per process: two runs at once would register the same
    // peer ids, so data-parallel runs (tests run in parallel threads) take turns.
    let _turn = DATA_PARALLEL_TURN
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    // burn initialises parameters lazily, and each clone of an uninitialised parameter runs
    // its initialiser on its own: replicas forked from a fresh model would start from
    // different weights (and the averaged gradients would fit none of them).
    materialize(&model);
    let ckpt = ckpt.as_ref();
    std::thread::scope(|scope| {
        let handles: Vec<_> = devices
            .iter()
            .enumerate()
            .map(|(index, device)| {
                let replica = model.clone().fork(device);
                // Every peer resumes from the same state; only peer 0 writes (`train_peer`).
                let spec = ckpt.map(|s| CheckpointSpec {
                    dir: s.dir,
                    tokenizer: s.tokenizer.clone(),
                    resume: s.resume,
                });
                scope.spawn(move || {
                    let peer = Peer { index, count };
                    // Each peer runs in a rayon pool of its own share of the cores (see
                    // `with_core_share`): 1.85x one process on 2 cores instead of 1.28-1.44x.
                    crate::with_core_share(count, || {
                        register::<B::InnerBackend>(
                            peer.id(),
                            device.clone(),
                            CollectiveConfig::default().with_num_devices(count),
                        )?;
                        let out = train_peer(
                            replica,
                            model_cfg,
                            cfg,
                            train,
                            if index == 0 { val } else { &[] },
                            spec,
                            device,
                            Some(peer),
                        );
                        finish_collective::<B::InnerBackend>(peer.id())?;
                        out
                    })
                })
            })
            .collect();
        let mut results: Vec<_> = handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| {
                    Err(TrainError::Config("a data-parallel peer panicked".into()))
                })
            })
            .collect();
        // Peer 0's error first (it is the one that writes), then any other peer's.
        let first = results.remove(0);
        match first {
            Err(e) => Err(e),
            Ok(done) => results.into_iter().find(|r| r.is_err()).unwrap_or(Ok(done)),
        }
    })
}

#[allow(clippy::too_many_arguments)]
fn train_peer<B: AutodiffBackend>(
    mut model: BlockDiffusionModel<B>,
    model_cfg: &BlockDiffusionConfig,
    cfg: &TrainConfig,
    train: &[Example],
    val: &[Example],
    ckpt: Option<CheckpointSpec<'_>>,
    device: &B::Device,
    peer: Option<Peer>,
) -> Result<(BlockDiffusionModel<B>, TrainReport), TrainError> {
    let lead = peer.is_none_or(|p| p.index == 0);
    let mut optim = AdamWConfig::new()
        .with_weight_decay(cfg.weight_decay as f32)
        .init::<B, BlockDiffusionModel<B>>();
    let mut first_step = 0;
    if let Some(spec) = ckpt.as_ref().filter(|s| s.resume) {
        if let Some((m, o, step)) = checkpoint::load_resume(spec.dir, model.clone(), optim, device)?
        {
            model = m;
            optim = o;
            first_step = step;
        } else {
            optim = AdamWConfig::new()
                .with_weight_decay(cfg.weight_decay as f32)
                .init::<B, BlockDiffusionModel<B>>();
        }
    }
    let bar = if cfg.progress && lead {
        let b = ProgressBar::new(cfg.steps as u64);
        b.set_style(
            ProgressStyle::with_template("{spinner} train [{bar:30}] {pos}/{len} {msg} ({eta})")
                .expect("static template")
                .progress_chars("=> "),
        );
        b.set_position(first_step as u64);
        b
    } else {
        ProgressBar::hidden()
    };
    let mut report = TrainReport::default();
    let mut recent = Vec::new();
    let started = std::time::Instant::now();
    let tail = (cfg.steps / 10).max(1);
    let validate = |m: &BlockDiffusionModel<B>| {
        evaluate(
            &m.valid(),
            model_cfg,
            cfg,
            val,
            cfg.eval_block_size,
            Noise::Random,
            1,
            device,
        )
    };
    let mut last_step = first_step;
    // Length order only matters when lengths differ.
    let by_length = (cfg.length_buckets
        && train
            .iter()
            .any(|e| e.tokens.len() != train[0].tokens.len()))
    .then(|| length_order(train));
    let mut positions_seen = 0usize;
    let mut step_s = Vec::new();
    for step in first_step..cfg.steps {
        if cfg.stop_after > 0 && report.steps >= cfg.stop_after {
            break;
        }
        let step_started = std::time::Instant::now();
        // One RNG stream per step: resuming at step s replays exactly what a full run does.
        let mut rng =
            StdRng::seed_from_u64(cfg.seed.wrapping_mul(6364136223846793005) ^ step as u64);
        let block = sample_block_size(&cfg.block_sizes, &cfg.block_weights, &mut rng);
        let refs: Vec<&Example> =
            draw_batch(train.len(), cfg.batch_size, by_length.as_deref(), &mut rng)
                .into_iter()
                .map(|i| &train[i])
                .collect();
        positions_seen += refs.len()
            * if cfg.length_buckets {
                trimmed_len(&refs, cfg.seq_len, block)
            } else {
                cfg.seq_len
            };
        let batch = noised_batch::<B>(
            &refs,
            model_cfg,
            cfg,
            block,
            Noise::Training {
                progress: step as f64 / cfg.steps.max(1) as f64,
            },
            true,
            &mut rng,
            device,
        );
        let lr = warmup_cosine(step, cfg.warmup_steps, cfg.steps, cfg.lr, cfg.min_lr_ratio);
        let (m, loss_v) = match peer {
            None => train_step(model, &mut optim, batch, lr, cfg.grad_clip),
            Some(p) => {
                let share = refs.len() / p.count;
                let batch = batch.rows(p.index * share, share);
                train_step_all_reduce(model, &mut optim, batch, lr, cfg.grad_clip, p.id())?
            }
        };
        model = m;
        if step > first_step {
            step_s.push(step_started.elapsed().as_secs_f64());
        }
        if !loss_v.is_finite() {
            return Err(TrainError::Data(format!(
                "loss became {loss_v} at step {step}"
            )));
        }
        if step + tail >= cfg.steps {
            recent.push(loss_v);
        }
        report.steps += 1;
        bar.inc(1);
        bar.set_message(format!("loss {loss_v:.4} b={block}"));
        let done = step + 1;
        last_step = done;
        if cfg.eval_every > 0 && done % cfg.eval_every == 0 && done < cfg.steps && !val.is_empty() {
            let v = validate(&model);
            tracing::info!(step = done, val_nelbo = v, "validation");
            report.val_nelbo.push((done, v));
        }
        if let Some(spec) = &ckpt {
            if cfg.checkpoint_every > 0 && done % cfg.checkpoint_every == 0 && done < cfg.steps {
                let saved = if lead {
                    checkpoint::save(spec.dir, &model.valid(), model_cfg, &spec.tokenizer)
                        .and_then(|()| checkpoint::save_resume(spec.dir, &model, &optim, done))
                } else {
                    Ok(())
                };
                // Only peer 0 writes: the peers agree on whether it worked, so a failed save
                // stops them all instead of leaving the others in the next all-reduce.
                if let Some(p) = peer {
                    if !peer_flags_clear::<B>(p, saved.is_err(), device) {
                        return Err(match saved {
                            Err(e) => e.into(),
                            Ok(()) => TrainError::Config(format!(
                                "data-parallel peer 0 failed to save the step-{done} checkpoint"
                            )),
                        });
                    }
                }
                saved?;
            }
        }
    }
    bar.finish_and_clear();
    let elapsed = started.elapsed().as_secs_f64();
    report.final_step = last_step;
    report.final_train_loss = if recent.is_empty() {
        f64::NAN
    } else {
        recent.iter().sum::<f64>() / recent.len() as f64
    };
    report.tokens_per_s = (report.steps * cfg.batch_size * cfg.seq_len) as f64 / elapsed.max(1e-9);
    report.computed_tokens_per_s = positions_seen as f64 / elapsed.max(1e-9);
    report.median_step_s = if step_s.is_empty() {
        0.0
    } else {
        crate::bench::median(step_s)
    };
    if !val.is_empty() {
        let v = validate(&model);
        report.val_nelbo.push((last_step, v));
    }
    if let Some(spec) = ckpt.as_ref().filter(|_| lead) {
        checkpoint::save(spec.dir, &model.valid(), model_cfg, &spec.tokenizer)?;
        checkpoint::write_json(&spec.dir.join(checkpoint::TRAIN_CONFIG_FILE), &cfg)?;
        checkpoint::save_resume(spec.dir, &model, &optim, last_step)?;
    }
    Ok((model, report))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::CpuBackend;

    /// Cutting a batch's trailing all-PAD blocks leaves the logits of the blocks kept exactly
    /// as in the full frame (block-causal attention: no block reads a later one).
    #[test]
    fn cut_padding_blocks_leave_kept_logits_exact() {
        let device = Default::default();
        let mcfg = BlockDiffusionConfig::new(20)
            .with_d_model(16)
            .with_n_layers(2)
            .with_n_heads(2);
        let model = mcfg.init::<CpuBackend>(&device);
        let examples: Vec<Example> = [vec![5u32, 6, 7], vec![8, 9, 10, 11, 12]]
            .into_iter()
            .map(Example::tokens)
            .collect();
        let refs: Vec<&Example> = examples.iter().collect();
        let block = 4;
        assert_eq!(trimmed_len(&refs, 16, block), 8);
        assert_eq!(trimmed_len(&refs, 6, block), 6);
        let logits = |l: usize| {
            let clean: Vec<Vec<u32>> = refs.iter().map(|e| frame(&e.tokens, l).unwrap()).collect();
            // Every other position masked.
            let states: Vec<Vec<u32>> = clean
                .iter()
                .map(|c| {
                    c.iter()
                        .enumerate()
                        .map(|(j, &t)| if j % 2 == 0 { MASK } else { t })
                        .collect()
                })
                .collect();
            let weights = vec![vec![1.0; l]; 2];
            let conds: Vec<&Conditioning> = refs.iter().map(|e| &e.condition).collect();
            let b = batch_from_states::<CpuBackend>(
                &conds,
                &states,
                &clean,
                &weights,
                &[false, false],
                &mcfg,
                block,
                &device,
            );
            model.forward_range(b.input, None, b.prompt_len, l).0
        };
        let full = logits(16).narrow(1, 0, 8);
        let cut = logits(8);
        let diff: f32 = (full - cut).abs().max().into_scalar().elem();
        assert!(diff <= 1e-5, "kept logits changed by {diff}");
    }

    /// `MaskCount` training masks every block (k ≥ 1, so no block goes without a loss) with
    /// weight B/k, like the evaluation estimator; a block of size 1 is always masked (pure AR
    /// cross-entropy); and the mean weighted mask count per block is B, the NELBO's
    /// normalisation, as it is for `1/t` weighting only in expectation.
    #[test]
    fn mask_count_training_masks_every_block_with_weight_b_over_k() {
        let device = Default::default();
        let mcfg = BlockDiffusionConfig::new(40)
            .with_d_model(16)
            .with_n_layers(1)
            .with_n_heads(2);
        let examples: Vec<Example> = (0..64)
            .map(|i| Example::tokens((0..16).map(|j| 4 + ((i + j) % 30) as u32).collect()))
            .collect();
        let refs: Vec<&Example> = examples.iter().collect();
        let mut rng = StdRng::seed_from_u64(7);
        for block in [1usize, 4, 8] {
            let cfg = TrainConfig::new(16).with_loss_weighting(LossWeighting::MaskCount);
            let b = noised_batch::<CpuBackend>(
                &refs,
                &mcfg,
                &cfg,
                block,
                Noise::Training { progress: 0.5 },
                false,
                &mut rng,
                &device,
            );
            let w: Vec<f32> = b.weights.into_data().to_vec().unwrap();
            let mut weighted = 0.0f64;
            let mut n_blocks = 0usize;
            for blk in w.chunks(block) {
                let k = blk.iter().filter(|&&x| x > 0.0).count();
                assert!(k >= 1, "a block of {block} has no masked token");
                for &x in blk.iter().filter(|&&x| x > 0.0) {
                    assert!((x as f64 - block as f64 / k as f64).abs() < 1e-6);
                }
                weighted += blk.iter().map(|&x| x as f64).sum::<f64>();
                n_blocks += 1;
            }
            let mean = weighted / n_blocks as f64;
            assert!((mean - block as f64).abs() < 1e-6, "block {block}: {mean}");
        }
    }

    /// Per-position AR losses: entry `i` reads only tokens up to `i` (changing later tokens
    /// leaves it bit-identical and changes the later entries), and their mean is `evaluate`'s
    /// number.
    #[test]
    fn per_position_ar_loss_reads_only_the_prefix() {
        let device = Default::default();
        let mcfg = BlockDiffusionConfig::new(24)
            .with_d_model(16)
            .with_n_layers(2)
            .with_n_heads(2);
        let model = mcfg.init::<CpuBackend>(&device);
        let len = 12;
        let cfg = TrainConfig::new(len).with_batch_size(2);
        let a: Vec<Example> = (0..3u32)
            .map(|k| Example::tokens((0..len as u32).map(|i| 4 + (i * 7 + k) % 19).collect()))
            .collect();
        let cut = 7;
        let b: Vec<Example> = a
            .iter()
            .map(|e| {
                let mut t = e.tokens.clone();
                for x in &mut t[cut..] {
                    *x = 4 + (*x - 4 + 5) % 19;
                }
                Example::tokens(t)
            })
            .collect();
        let pos = |d: &[Example]| {
            evaluate_positions(&model, &mcfg, &cfg, d, 1, Noise::AllMasked, 1, &device)
        };
        let (pa, pb) = (pos(&a), pos(&b));
        assert_eq!(pa.len(), len);
        assert_eq!(pa[..cut], pb[..cut], "a position's loss read a later token");
        assert!(pa[cut..].iter().zip(&pb[cut..]).all(|(x, y)| x != y));
        let all = evaluate(&model, &mcfg, &cfg, &a, 1, Noise::AllMasked, 1, &device);
        let mean = pa.iter().sum::<f64>() / len as f64;
        assert!((all - mean).abs() < 1e-9, "{all} vs {mean}");
    }

    /// At block size 1 the NELBO estimator masks the block's one position with weight 1, so
    /// it is the exact AR likelihood bit for bit, whatever the training clip; the old
    /// `t ~ U[t_min, t_max]`, weight `1/t` draw was only right in expectation (and biased by
    /// the clip).
    #[test]
    fn nelbo_at_block_one_is_the_ar_likelihood() {
        let device = Default::default();
        let mcfg = BlockDiffusionConfig::new(24)
            .with_d_model(16)
            .with_n_layers(2)
            .with_n_heads(2);
        let model = mcfg.init::<CpuBackend>(&device);
        let data: Vec<Example> = (0..5u32)
            .map(|k| Example::tokens((0..10).map(|i| 4 + (i * 5 + k * 3) % 19).collect()))
            .collect();
        let cfg = TrainConfig::new(12)
            .with_batch_size(2)
            .with_t_min(0.3)
            .with_t_max(0.8);
        let ar = evaluate(&model, &mcfg, &cfg, &data, 1, Noise::AllMasked, 1, &device);
        let nelbo = evaluate(&model, &mcfg, &cfg, &data, 1, Noise::Random, 3, &device);
        assert_eq!(ar, nelbo);
    }

    /// Length-bucketed draws: the anchor is uniform and companions lie within the window of
    /// `4 · batch` length-sorted neighbours, so a batch's lengths are close.
    #[test]
    fn length_buckets_draw_neighbours_in_length() {
        let data: Vec<Example> = (0..400)
            .map(|i| Example::tokens(vec![4; 1 + (i * 37) % 400]))
            .collect();
        let order = length_order(&data);
        let mut rng = StdRng::seed_from_u64(3);
        for _ in 0..200 {
            let idx = draw_batch(data.len(), 8, Some(&order), &mut rng);
            assert_eq!(idx.len(), 8);
            let lens: Vec<usize> = idx.iter().map(|&i| data[i].tokens.len()).collect();
            let spread = lens.iter().max().unwrap() - lens.iter().min().unwrap();
            assert!(
                spread < 32,
                "lengths {lens:?} spread over more than the window"
            );
        }
    }
}
