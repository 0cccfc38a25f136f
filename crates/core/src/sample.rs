//! Block-wise sampling: blocks left to right, an exact KV cache of finished blocks, several
//! tokens committed per model call inside a block.
//!
//! A finished block's clean keys/values are written by running its final tokens once more; that
//! clean pass is merged into the first forward of the next block (the clean rows cannot see the
//! new block, [`crate::mask::append_mask_data`]), so it costs no extra model call.

use std::time::Instant;

use burn::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::cache::KvCache;
use crate::condition::Condition;
use crate::constraint::Constraint;
use crate::error::SampleError;
use crate::mask;
use crate::model::{BlockDiffusionConfig, BlockDiffusionModel, FlashBlockState, ForwardInput};

mod floor;
mod ordered;
mod steps;
mod text;
use crate::tokenizer::{BOS, EOS, MASK, PAD};
pub use floor::floor_call;
pub use steps::uniform_noise_ids;
pub use text::{CORRECTOR_FORMS, POLICY_FORMS};

/// How many masked tokens of a block are committed per model call.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum CommitPolicy {
    /// The `k` most confident tokens per step (a static schedule of `⌈b/k⌉` steps per block).
    TopK {
        /// Tokens per step.
        k: usize,
    },
    /// Every token whose confidence is at least `tau`, and at least the most confident one
    /// (Fast-dLLM's parallel decoding rule).
    Threshold {
        /// Confidence threshold in (0, 1].
        tau: f32,
    },
    /// SDAR's dynamic decoding: every token at or above `tau`, falling back to the static
    /// top-`k` when fewer pass.
    DynamicFallback {
        /// Confidence threshold.
        tau: f32,
        /// Static fallback count.
        k: usize,
    },
    /// Dilated unmasking: `per_step` masked positions per step in a fixed spread-out order
    /// (block positions by their bit-reversed index: 0, b/2, b/4, 3b/4, …), so the positions
    /// committed together lie far apart, where an order-k source makes them nearly independent.
    /// Confidence plays no part: the schedule is `⌈b/per_step⌉` steps per block. With the
    /// source's exact conditionals (`examples/oracle_decoding.rs`) it is the only multi-token
    /// policy that stays at the entropy on the core Markov task (2 per step at block 16).
    Dilated {
        /// Positions committed per step.
        per_step: usize,
    },
    /// Ordered group decoding, for models trained with [`crate::train::NoiseKernel::Ordered`]:
    /// every call commits the next `per_step` positions of the fixed order (inside a block
    /// the dilated or striped order, [`crate::mask::ordered_order`]), each drawn from its own prediction
    /// given every token committed before the group, and feeds the group's tokens to the next
    /// call as clean content attending causally in commit order. Their keys and values are then
    /// final, so the KV cache is exact and a call carries only `2·per_step` rows (the last
    /// group's tokens and the next group's queries), not a whole block.
    Ordered {
        /// Positions committed per call.
        per_step: usize,
        /// The model's order inside a block (0 = dilated, `s` = `s` interleaved stripes; as
        /// trained, [`crate::train::TrainConfig::ordered_stripes`]).
        stripes: usize,
    },
    /// First-hitting sampling: one uniformly chosen masked position per step, its token drawn
    /// from the model — an exact sampler of the masked-diffusion reverse process.
    FirstHitting,
    /// Self-speculative decoding (S2D2): every step drafts the block's first run of masked
    /// positions from the diffusion prediction, then the same weights in block-size-1 mode
    /// verify the whole draft in one extra model call ([`crate::mask::verifier_mask_data`]).
    /// Draft tokens are accepted left to right with probability `min(1, q/p)`; the first
    /// rejected one is resampled from `normalise((q − p)+)`. With [`SpecRouting::Always`] the
    /// samples follow the autoregressive mode's distribution exactly.
    Speculative {
        /// When a step verifies.
        routing: SpecRouting,
    },
    /// Deferred commitment (DCD): a confidence-aware sliding window `[L, R)` over masked
    /// positions, `L` the leftmost mask; every window position with confidence `≥ tau` is
    /// committed (at least the most confident one), uncertain ones are deferred. After each
    /// step `R` grows until the window again holds `window` masks, at most `max_window` wide,
    /// and it may reach into the next block: that block is then decoded in the same model call
    /// (block-causal: it sees the current block, not the other way round).
    Deferred {
        /// Confidence threshold.
        tau: f32,
        /// Masked positions the window holds (DCD's `s_init`).
        window: usize,
        /// Widest window (DCD's `s_max`).
        max_window: usize,
    },
    /// Uniform-state diffusion (for models trained with
    /// [`crate::train::NoiseKernel::Uniform`]): a block starts from uniformly random tokens and
    /// takes `steps` ancestral steps of the uniform kernel's reverse process with the
    /// leave-one-out denoiser; the last step is taken left to right so every token is checked
    /// against its final neighbours. `corrector_rounds` informed-corrector (rev_udm) rounds
    /// after each step except the last each resample the `corrector_k` positions whose
    /// current token has the lowest log-margin.
    Uniform {
        /// Reverse steps per block.
        steps: usize,
        /// Positions resampled per corrector round.
        corrector_k: usize,
        /// Corrector rounds after each predictor step (0 = none), one model call each.
        corrector_rounds: usize,
    },
}

/// When [`CommitPolicy::Speculative`] pays for a verification call.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub enum SpecRouting {
    /// Verify every step; commit only verified tokens (exact AR distribution).
    Always,
    /// S2D2's score routing. Each drafted position gets an acceptance estimate
    /// `α_i = exp(−H_i / ln V)` from its draft entropy; the expected accepted length is
    /// `E[K] = Σ_k Π_{i≤k} α_i`. The step verifies when `E[K] − cost · n ≥ 0`, with `n = 1`
    /// (static) or, when `dynamic`, the number of masked positions whose confidence is
    /// `≥ tau` (what the threshold rule would commit without verifying). Otherwise it commits
    /// by the threshold rule `tau`.
    Score {
        /// Cost of a verification call in accepted tokens.
        cost: f32,
        /// Compare with the threshold rule's count instead of 1.
        dynamic: bool,
        /// Threshold of the fallback rule.
        tau: f32,
    },
    /// Score routing with hysteresis, per request and kept across blocks: with the static score
    /// `s = E[K] − cost`, a request that is not verifying starts once `s ≥ on` and one that is
    /// stops once `s < off` (`off ≤ on`). A score hovering near a single threshold would flip
    /// verification on and off from step to step; the band keeps a run of confident (or of
    /// uncertain) steps on one mode. Starts off. Unverified steps use the threshold rule `tau`.
    Hysteresis {
        /// Cost of a verification call in accepted tokens.
        cost: f32,
        /// Score at which verification switches on.
        on: f32,
        /// Score below which it switches off.
        off: f32,
        /// Threshold of the fallback rule.
        tau: f32,
    },
}

/// A corrector run when a block is complete, before it is finished.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub enum Corrector {
    /// ARPC (BlockGen): one call in block-size-1 mode scores every token of the complete block
    /// by its AR negative log-likelihood given the block to its left; the `remask` tokens the
    /// AR mode finds least likely (and below `max_prob`) are re-masked and decoded again.
    Arpc {
        /// Tokens re-masked per round.
        remask: usize,
        /// Rounds per block.
        rounds: usize,
        /// Only tokens whose AR probability is below this are re-masked.
        max_prob: f32,
    },
}

/// Sampler settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SamplerConfig {
    /// Tokens per block; 1 is autoregressive decoding of the same weights.
    pub block_size: usize,
    /// Commit policy inside a block.
    pub policy: CommitPolicy,
    /// Softmax temperature; 0 = greedy (confidence then uses temperature 1).
    pub temperature: f32,
    /// Nucleus sampling mass; 1 = off.
    pub top_p: f32,
    /// Classifier-free guidance scale `s`: `logits = u + s·(c − u)`; 1 = no guidance.
    pub cfg_scale: f32,
    /// Maximum number of generated tokens.
    pub max_len: usize,
    /// Stop a sequence once it has committed `EOS`.
    pub stop_at_eos: bool,
    /// Seed; request `i` of a call uses its own stream derived from `seed` and its id
    /// ([`request_seed`]; ids are `0..n` unless given, [`sample_with_ids`]).
    pub seed: u64,
    /// Use the KV cache (false recomputes the whole sequence every call: the reference).
    pub use_cache: bool,
    /// FlashBlock: keep each layer's attention to the cache from a block's first call and
    /// merge it with in-block attention on later calls instead of attending to the cache again
    /// (approximate: the kept part used the first call's queries).
    #[serde(default)]
    pub flashblock: bool,
    /// Corrector applied to complete blocks.
    #[serde(default)]
    pub corrector: Option<Corrector>,
    /// Commit, without a model call, every masked position the constraint leaves exactly one
    /// token for (the model would give it probability 1 after the logit mask anyway), and skip
    /// a block's calls once nothing in it is left masked. Exact for AR mode; for the
    /// confidence rules it only moves such commits earlier. Used by the top-k, threshold,
    /// dynamic-fallback, first-hitting and S2D2 rules (on a road network most segments have
    /// one successor).
    #[serde(default = "default_true")]
    pub forced: bool,
}

fn default_true() -> bool {
    true
}

impl Default for SamplerConfig {
    fn default() -> Self {
        Self {
            block_size: 8,
            policy: CommitPolicy::Threshold { tau: 0.9 },
            temperature: 1.0,
            top_p: 1.0,
            cfg_scale: 1.0,
            max_len: 64,
            stop_at_eos: true,
            seed: 0,
            use_cache: true,
            flashblock: false,
            corrector: None,
            forced: true,
        }
    }
}

impl SamplerConfig {
    /// Autoregressive mode of the same weights: block size 1, one token per call.
    pub fn autoregressive(max_len: usize) -> Self {
        Self {
            block_size: 1,
            policy: CommitPolicy::TopK { k: 1 },
            max_len,
            ..Self::default()
        }
    }

    fn validate(&self) -> Result<(), SampleError> {
        let bad = |m: &str| Err(SampleError::Config(m.to_string()));
        if self.block_size == 0 {
            return bad("block_size must be > 0");
        }
        if self.max_len == 0 {
            return bad("max_len must be > 0");
        }
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return bad("temperature must be finite and >= 0");
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad("top_p must be in (0, 1]");
        }
        if !self.cfg_scale.is_finite() {
            return bad("cfg_scale must be finite");
        }
        match self.policy {
            CommitPolicy::TopK { k: 0 }
            | CommitPolicy::DynamicFallback { k: 0, .. }
            | CommitPolicy::Dilated { per_step: 0 }
            | CommitPolicy::Ordered { per_step: 0, .. } => bad("policy k (per_step) must be > 0"),
            CommitPolicy::Ordered { stripes, .. }
                if stripes > 0 && self.block_size % stripes != 0 =>
            {
                bad("ordered stripes must divide block_size")
            }
            CommitPolicy::Threshold { tau }
            | CommitPolicy::DynamicFallback { tau, .. }
            | CommitPolicy::Deferred { tau, .. }
            | CommitPolicy::Speculative {
                routing: SpecRouting::Score { tau, .. } | SpecRouting::Hysteresis { tau, .. },
            } if !(tau > 0.0 && tau <= 1.0) => bad("policy tau must be in (0, 1]"),
            CommitPolicy::Speculative {
                routing: SpecRouting::Score { cost, .. } | SpecRouting::Hysteresis { cost, .. },
            } if !(cost.is_finite() && cost >= 0.0) => bad("routing cost must be finite and >= 0"),
            CommitPolicy::Speculative {
                routing: SpecRouting::Hysteresis { on, off, .. },
            } if !(on.is_finite() && off.is_finite() && off <= on) => {
                bad("hysteresis needs finite on and off with off <= on")
            }
            CommitPolicy::Deferred {
                window, max_window, ..
            } if window == 0 || max_window < window => {
                bad("deferred window must be > 0 and <= max_window")
            }
            CommitPolicy::Uniform { steps, .. } if steps == 0 => bad("uniform steps must be > 0"),
            _ => Ok(()),
        }?;
        let needs_cache = self.flashblock
            || self.corrector.is_some()
            || matches!(
                self.policy,
                CommitPolicy::Speculative { .. } | CommitPolicy::Deferred { .. }
            );
        if needs_cache && !self.use_cache {
            return bad("speculative, deferred, FlashBlock and correctors need use_cache");
        }
        if (self.flashblock || self.corrector.is_some())
            && matches!(self.policy, CommitPolicy::Ordered { .. })
        {
            return bad("the ordered policy makes its own calls: no FlashBlock or corrector");
        }
        if self.flashblock && matches!(self.policy, CommitPolicy::Deferred { .. }) {
            return bad("FlashBlock reuse needs one block per call; deferred may decode two");
        }
        match self.corrector {
            Some(Corrector::Arpc {
                remask, max_prob, ..
            }) if remask == 0 || !(max_prob > 0.0 && max_prob <= 1.0) => {
                bad("ARPC remask must be > 0 and max_prob in (0, 1]")
            }
            _ => Ok(()),
        }
    }
}

/// Counters of one sampling call.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SampleStats {
    /// Model calls (forward passes of the whole batch).
    pub nfe: usize,
    /// Tokens committed by the model, summed over the batch (forced padding excluded).
    pub tokens: usize,
    /// Of `tokens`, those committed without a model call because the constraint left them a
    /// single choice ([`SamplerConfig::forced`]).
    pub forced: usize,
    /// Sequences in the batch.
    pub batch: usize,
    /// Wall-clock seconds.
    pub wall_s: f64,
}

/// The counters of two calls made one after the other on disjoint requests (e.g. one call per
/// model of a task-routed set): every counter and the wall-clock add up.
impl std::ops::AddAssign for SampleStats {
    fn add_assign(&mut self, o: Self) {
        self.nfe += o.nfe;
        self.tokens += o.tokens;
        self.forced += o.forced;
        self.batch += o.batch;
        self.wall_s += o.wall_s;
    }
}

impl SampleStats {
    /// Tokens committed per model call, per sequence.
    pub fn tokens_per_forward(&self) -> f64 {
        if self.nfe == 0 || self.batch == 0 {
            0.0
        } else {
            self.tokens as f64 / self.batch as f64 / self.nfe as f64
        }
    }
}

/// Generated sequences and counters.
#[derive(Clone, Debug)]
pub struct SampleOutput {
    /// Generated tokens per request, cut before the first `EOS`/`PAD`.
    pub sequences: Vec<Vec<u32>>,
    /// Whether each sequence ended with `EOS` (rather than at `max_len`).
    pub ended: Vec<bool>,
    /// The denoising trajectory: per request and generated position (all `⌈max_len/b⌉·b` of
    /// them, not cut at `EOS`), the model call *within its block* at which the token was
    /// committed (0 = the block's first call); [`NOT_COMMITTED`] for positions filled with
    /// `PAD` after the sequence ended. Reward fine-tuning rebuilds every intermediate state
    /// from it ([`crate::reward`]).
    pub commit_steps: Vec<Vec<u32>>,
    /// Generated tokens per request before the cut: `⌈max_len/b⌉·b` tokens, `PAD` after the end.
    pub full_sequences: Vec<Vec<u32>>,
    /// Counters.
    pub stats: SampleStats,
}

/// [`SampleOutput::commit_steps`] of a position the model never decided.
pub const NOT_COMMITTED: u32 = u32::MAX;

/// What an observer sees at every model call (used by the cache-exactness test).
pub struct StepView<'a> {
    /// Block index.
    pub block: usize,
    /// Per request: prompt ⊕ generated tokens as fed to this call (current block included,
    /// `MASK` where undecided).
    pub sequences: &'a [Vec<u32>],
    /// Raw (unguided) logits of the current block, `[rows, block, vocab]` row-major; with CFG
    /// the unconditional rows follow the conditional ones. The head runs only where some
    /// request's position is `MASK` in `sequences` (the only logits a policy reads); the other
    /// positions hold 0, except for the uniform kernel, which has no masks. With `queried`,
    /// `[rows, queried.len(), vocab]`: only those positions'.
    pub logits: &'a [f32],
    /// The block positions a call predicted when it did not predict the whole block (the
    /// ordered policy's group), in the order of the logits' rows.
    pub queried: Option<&'a [usize]>,
}

/// Generates one sequence per request. See [`sample_observed`].
pub fn sample<B: Backend, C: Condition>(
    model: &BlockDiffusionModel<B>,
    model_cfg: &BlockDiffusionConfig,
    requests: &[C],
    constraint: &dyn Constraint,
    cfg: &SamplerConfig,
    device: &B::Device,
) -> Result<SampleOutput, SampleError> {
    sample_observed(model, model_cfg, requests, constraint, cfg, device, |_| {})
}

/// The random stream of request `id` under `seed`: a request's tokens depend only on
/// `(seed, id)` and its own condition, never on which other requests share its batch — so a
/// job split into shards ([`crate::shard`]) reproduces a single run exactly.
pub fn request_seed(seed: u64, id: u64) -> u64 {
    seed ^ id.wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// Generates one sequence per request with explicit request ids (`ids[i]` seeds request `i`'s
/// stream, see [`request_seed`]); [`sample`] uses ids `0..n`.
pub fn sample_with_ids<B: Backend, C: Condition>(
    model: &BlockDiffusionModel<B>,
    model_cfg: &BlockDiffusionConfig,
    requests: &[C],
    ids: &[u64],
    constraint: &dyn Constraint,
    cfg: &SamplerConfig,
    device: &B::Device,
) -> Result<SampleOutput, SampleError> {
    if ids.len() != requests.len() {
        return Err(SampleError::Config(format!(
            "{} request ids for {} requests",
            ids.len(),
            requests.len()
        )));
    }
    sample_inner(
        model,
        model_cfg,
        requests,
        ids,
        constraint,
        cfg,
        device,
        |_| {},
    )
}

/// [`sample_with_ids`] on the CPU with the requests split into `parts` contiguous parts (at
/// most one per request; [`crate::cpu_cores`] is the usual choice), each decoded on its own
/// thread in a rayon pool of its share of the cores. A request's tokens depend only on its
/// seed and condition ([`request_seed`]), so the output is the single call's, in request order
/// (`tests/shard.rs`). Batches gain most when each op of one call is too small to split well
/// across cores (batch 16 at the twin's size: 1.90x PyTorch against 0.87x as one call).
/// Counters: `nfe` is the largest part's (the calls on the critical path), `wall_s` the whole
/// call's, tokens and batch add up.
#[allow(clippy::too_many_arguments)]
pub fn sample_on_cores<C: Condition + Sync>(
    model: &BlockDiffusionModel<crate::CpuBackend>,
    model_cfg: &BlockDiffusionConfig,
    requests: &[C],
    ids: &[u64],
    constraint: &dyn Constraint,
    cfg: &SamplerConfig,
    device: &Device<crate::CpuBackend>,
    parts: usize,
) -> Result<SampleOutput, SampleError> {
    let parts = parts.min(requests.len());
    if parts <= 1 || ids.len() != requests.len() {
        return sample_with_ids(model, model_cfg, requests, ids, constraint, cfg, device);
    }
    let started = Instant::now();
    let shards: Vec<std::ops::Range<usize>> = (0..parts)
        .map(|i| {
            crate::shard::Shard {
                index: i,
                count: parts,
            }
            .range(requests.len())
        })
        .collect();
    let outs: Vec<Result<SampleOutput, SampleError>> = std::thread::scope(|scope| {
        let handles: Vec<_> = shards
            .iter()
            .map(|r| {
                let r = r.clone();
                scope.spawn(move || {
                    crate::with_core_share(parts, || {
                        sample_with_ids(
                            model,
                            model_cfg,
                            &requests[r.clone()],
                            &ids[r],
                            constraint,
                            cfg,
                            device,
                        )
                    })
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| {
                    Err(SampleError::Config("a sampler thread panicked".into()))
                })
            })
            .collect()
    });
    let mut all = SampleOutput {
        sequences: Vec::with_capacity(requests.len()),
        ended: Vec::with_capacity(requests.len()),
        commit_steps: Vec::with_capacity(requests.len()),
        full_sequences: Vec::with_capacity(requests.len()),
        stats: SampleStats::default(),
    };
    for out in outs {
        let out = out?;
        all.sequences.extend(out.sequences);
        all.ended.extend(out.ended);
        all.commit_steps.extend(out.commit_steps);
        all.full_sequences.extend(out.full_sequences);
        all.stats.nfe = all.stats.nfe.max(out.stats.nfe);
        all.stats.tokens += out.stats.tokens;
        all.stats.forced += out.stats.forced;
        all.stats.batch += out.stats.batch;
    }
    all.stats.wall_s = started.elapsed().as_secs_f64();
    Ok(all)
}

/// Generates one sequence per request, calling `observe` after every model call.
#[allow(clippy::too_many_arguments)]
pub fn sample_observed<B: Backend, C: Condition>(
    model: &BlockDiffusionModel<B>,
    model_cfg: &BlockDiffusionConfig,
    requests: &[C],
    constraint: &dyn Constraint,
    cfg: &SamplerConfig,
    device: &B::Device,
    observe: impl FnMut(&StepView<'_>),
) -> Result<SampleOutput, SampleError> {
    let ids: Vec<u64> = (0..requests.len() as u64).collect();
    sample_inner(
        model, model_cfg, requests, &ids, constraint, cfg, device, observe,
    )
}

#[allow(clippy::too_many_arguments)]
fn sample_inner<B: Backend, C: Condition>(
    model: &BlockDiffusionModel<B>,
    model_cfg: &BlockDiffusionConfig,
    requests: &[C],
    ids: &[u64],
    constraint: &dyn Constraint,
    cfg: &SamplerConfig,
    device: &B::Device,
    mut observe: impl FnMut(&StepView<'_>),
) -> Result<SampleOutput, SampleError> {
    cfg.validate()?;
    let started = Instant::now();
    let n = requests.len();
    if n == 0 {
        return Ok(SampleOutput {
            sequences: Vec::new(),
            ended: Vec::new(),
            commit_steps: Vec::new(),
            full_sequences: Vec::new(),
            stats: SampleStats::default(),
        });
    }
    let vocab = model_cfg.vocab_size;
    let b = cfg.block_size;
    let prompt_len = requests[0].prompt().len();
    let cond_width = model_cfg.cond_dim * model_cfg.cond_len;
    let has_cond = requests[0].vectors().is_some();
    for (i, r) in requests.iter().enumerate() {
        let req_err = |message: String| SampleError::Request { index: i, message };
        if r.prompt().len() != prompt_len {
            return Err(req_err(format!(
                "prompt length {} differs from request 0's {prompt_len}; batch equal lengths",
                r.prompt().len()
            )));
        }
        if let Some(&t) = r.prompt().iter().find(|&&t| t as usize >= vocab) {
            return Err(req_err(format!(
                "prompt token {t} outside vocabulary {vocab}"
            )));
        }
        check_vectors(r.vectors(), model_cfg).map_err(req_err)?;
        if r.vectors().is_none() && has_cond {
            return Err(req_err(
                "condition vectors missing (request 0 has them)".into(),
            ));
        }
    }
    let cond_len = if has_cond { model_cfg.cond_len } else { 0 };
    let n_blocks = cfg.max_len.div_ceil(b);
    let gen_start = cond_len + prompt_len; // absolute position of the first generated token
    if gen_start + n_blocks * b > model_cfg.max_len {
        return Err(SampleError::Config(format!(
            "prompt ({prompt_len}) + condition ({cond_len}) + {} generated tokens exceed the model's max_len {}",
            n_blocks * b,
            model_cfg.max_len
        )));
    }
    let guided = cfg.cfg_scale != 1.0;
    let rows = if guided { 2 * n } else { n };

    // Conditions as tensors (rows: conditional, then unconditional for CFG).
    let (cond_t, cond_drop) = if has_cond {
        let mut v: Vec<f32> = Vec::with_capacity(rows * cond_width);
        for r in 0..rows {
            v.extend_from_slice(requests[r % n].vectors().unwrap_or(&[]));
        }
        let t = Tensor::<B, 1>::from_floats(v.as_slice(), device).reshape([
            rows,
            model_cfg.cond_len,
            model_cfg.cond_dim,
        ]);
        let drop: Vec<f32> = (0..rows).map(|r| if r >= n { 1.0 } else { 0.0 }).collect();
        (
            Some(t),
            guided.then(|| Tensor::from_floats(drop.as_slice(), device)),
        )
    } else {
        (None, None)
    };

    let req_t = request_feature_tensor::<B>(
        requests.iter().map(|r| r.token_features()),
        rows,
        model_cfg,
        device,
    )
    .map_err(|(index, message)| SampleError::Request { index, message })?;

    // Per-request state: prompt ⊕ generated.
    let mut seqs: Vec<Vec<u32>> = requests.iter().map(|r| r.prompt().to_vec()).collect();
    let mut rngs: Vec<StdRng> = ids
        .iter()
        .map(|&id| StdRng::seed_from_u64(request_seed(cfg.seed, id)))
        .collect();
    let mut done = vec![false; n];
    let mut ended = vec![false; n];
    let mut commit_steps = vec![vec![NOT_COMMITTED; n_blocks * b]; n];
    let mut stats = SampleStats {
        batch: n,
        ..SampleStats::default()
    };
    let pending: Vec<Vec<u32>> = (0..rows)
        .map(|r| {
            if r >= n {
                // Unconditional rows see the prompt masked out (as in condition dropout).
                vec![MASK; prompt_len]
            } else {
                requests[r].prompt().to_vec()
            }
        })
        .collect();
    let mut dec = Decoder {
        model,
        device,
        n,
        rows,
        b,
        prompt_len,
        cond_len,
        has_cond,
        cond_t,
        cond_drop,
        req_t,
        cache: KvCache::new(),
        // Clean positions not yet in the cache, per row. Starts with the prompt.
        pending: Some(pending),
        pending_spans: vec![prompt_len],
        cond_pending: true,
        flash: FlashBlockState::new(),
        use_flash: cfg.flashblock,
        nfe: 0,
    };
    let mut allowed = vec![true; vocab];
    let mut probs = vec![0f32; vocab];
    // S2D2 hysteresis routing: whether each request is verifying, kept across blocks.
    let mut verifying = vec![false; n];
    // DCD window right edges (indices into `seqs[i]`), kept across blocks.
    let mut windows: Vec<Option<usize>> = vec![None; n];
    let logit_row = |logits: &[f32], i: usize, p: usize, span: usize| {
        guided_row(logits, i, n, p, span, vocab, guided, cfg.cfg_scale)
    };

    // The ordered policy decodes every block itself (its own calls and cache layout); the
    // block loop below then has nothing left to do.
    let mut block_loop = 0..n_blocks;
    if let CommitPolicy::Ordered { per_step, stripes } = cfg.policy {
        let mut run = ordered::OrderedRun {
            seqs: &mut seqs,
            done: &mut done,
            ended: &mut ended,
            rngs: &mut rngs,
            commit_steps: &mut commit_steps,
            stats: &mut stats,
            allowed: &mut allowed,
            probs: &mut probs,
        };
        run.decode(
            &mut dec,
            (per_step, stripes),
            n_blocks,
            constraint,
            cfg,
            &mut observe,
            &logit_row,
        )?;
        block_loop = 0..0;
    }
    for blk in block_loop {
        if done.iter().all(|&d| d) {
            break;
        }
        let start = gen_start + blk * b; // absolute position of the block
        let seq_off = prompt_len + blk * b; // index of the block in `seqs[i]`
        let has_next = blk + 1 < n_blocks;
        extend_to(&mut seqs, &done, seq_off + b);
        dec.flash.clear();
        if let CommitPolicy::Uniform {
            steps,
            corrector_k,
            corrector_rounds,
        } = cfg.policy
        {
            let plan = steps::UniformPlan {
                steps,
                corrector_k,
                corrector_rounds,
            };
            let mut state = steps::BlockState {
                seqs: &mut seqs,
                done: &done,
                rngs: &mut rngs,
                seq_off,
                constraint,
                cfg,
                vocab,
            };
            let mut call = |seqs: &[Vec<u32>]| {
                let l = dec.call(seqs, (seq_off, start, b), false);
                observe(&StepView {
                    block: blk,
                    sequences: seqs,
                    logits: &l,
                    queried: None,
                });
                l
            };
            steps::uniform_block(&mut state, &plan, &mut call, &logit_row)?;
            for i in (0..n).filter(|&i| !done[i]) {
                for p in 0..b {
                    commit_steps[i][seq_off + p - prompt_len] = steps as u32 - 1;
                }
                stats.tokens += b;
            }
        } else {
            let mut step_in_block: u32 = 0;
            let mut corrections_left = cfg
                .corrector
                .map_or(0, |Corrector::Arpc { rounds, .. }| rounds);
            let forcing = cfg.forced
                && constraint.may_force()
                && matches!(
                    cfg.policy,
                    CommitPolicy::TopK { .. }
                        | CommitPolicy::Threshold { .. }
                        | CommitPolicy::DynamicFallback { .. }
                        | CommitPolicy::FirstHitting
                        | CommitPolicy::Dilated { .. }
                        // Exact for S2D2 too: a forced token has p = q = 1, so it would be
                        // drafted and accepted with certainty.
                        | CommitPolicy::Speculative { .. }
                );
            let at = BlockAt {
                seq_off,
                b,
                prompt_len,
            };
            let skip_block = forcing
                && force_all(
                    &mut seqs,
                    &done,
                    at,
                    constraint,
                    &mut allowed,
                    (0, &mut commit_steps),
                    &mut stats,
                )?;
            while !skip_block {
                // DCD: decode the next block in the same call once a window reaches into it.
                let lookahead = has_next
                    && matches!(cfg.policy, CommitPolicy::Deferred { .. })
                    && (0..n).any(|i| !done[i] && windows[i].is_some_and(|r| r > seq_off + b));
                let span = if lookahead { 2 * b } else { b };
                extend_to(&mut seqs, &done, seq_off + span);
                let logits = if cfg.use_cache {
                    dec.call(&seqs, (seq_off, start, span), true)
                } else {
                    dec.reference_call(&seqs, seq_off, blk)
                };
                observe(&StepView {
                    block: blk,
                    sequences: &seqs,
                    logits: &logits,
                    queried: None,
                });

                // ---- commit decisions ----
                let mut committed: Vec<Vec<usize>> = vec![Vec::new(); n];
                match cfg.policy {
                    CommitPolicy::Speculative { routing } => {
                        let mut drafts = Vec::with_capacity(n);
                        for i in 0..n {
                            drafts.push(if done[i] {
                                None
                            } else {
                                let mut scratch = StepScratch {
                                    allowed: &mut allowed,
                                    probs: &mut probs,
                                    rng: &mut rngs[i],
                                };
                                Some(steps::draft(
                                    &mut seqs[i],
                                    seq_off,
                                    b,
                                    |p| logit_row(&logits, i, p, b),
                                    constraint,
                                    cfg,
                                    (routing, &mut verifying[i]),
                                    &mut scratch,
                                    i,
                                )?)
                            });
                        }
                        let verify = drafts.iter().any(|d| d.as_ref().is_some_and(|d| d.verify));
                        let ver_logits = if verify {
                            let blocks: Vec<Vec<u32>> = (0..rows)
                                .map(|r| match &drafts[r % n] {
                                    Some(d) => d.filled(&seqs[r % n], seq_off, b),
                                    None => seqs[r % n][seq_off..seq_off + b].to_vec(),
                                })
                                .collect();
                            dec.verify(&blocks, start)
                        } else {
                            Vec::new()
                        };
                        for (i, d) in drafts.into_iter().enumerate() {
                            let Some(d) = d else { continue };
                            let mut scratch = StepScratch {
                                allowed: &mut allowed,
                                probs: &mut probs,
                                rng: &mut rngs[i],
                            };
                            committed[i] = if d.verify {
                                steps::accept(
                                    &mut seqs[i],
                                    seq_off,
                                    &d,
                                    |p| logit_row(&ver_logits, i, p, b),
                                    constraint,
                                    cfg,
                                    &mut scratch,
                                )
                            } else {
                                steps::commit_unverified(
                                    &mut seqs[i],
                                    seq_off,
                                    &d,
                                    constraint,
                                    vocab,
                                )
                            };
                        }
                    }
                    CommitPolicy::Deferred {
                        tau,
                        window,
                        max_window,
                    } => {
                        let limit = seq_off + if has_next { 2 * b } else { b };
                        for i in (0..n).filter(|&i| !done[i]) {
                            let mut scratch = StepScratch {
                                allowed: &mut allowed,
                                probs: &mut probs,
                                rng: &mut rngs[i],
                            };
                            committed[i] = steps::deferred(
                                &mut seqs[i],
                                seq_off,
                                span,
                                limit,
                                &mut windows[i],
                                (tau, window, max_window),
                                |p| logit_row(&logits, i, p, span),
                                constraint,
                                cfg,
                                &mut scratch,
                                i,
                            )?;
                        }
                    }
                    _ => {
                        for i in (0..n).filter(|&i| !done[i]) {
                            committed[i] = commit_step(
                                &mut seqs[i],
                                seq_off,
                                b,
                                |p| logit_row(&logits, i, p, b),
                                constraint,
                                cfg,
                                &mut StepScratch {
                                    allowed: &mut allowed,
                                    probs: &mut probs,
                                    rng: &mut rngs[i],
                                },
                                i,
                            )?;
                        }
                    }
                }
                let mut any_masked = false;
                for i in (0..n).filter(|&i| !done[i]) {
                    for &p in &committed[i] {
                        commit_steps[i][seq_off + p - prompt_len] = step_in_block;
                        stats.tokens += 1;
                    }
                }
                if forcing {
                    force_all(
                        &mut seqs,
                        &done,
                        at,
                        constraint,
                        &mut allowed,
                        (step_in_block, &mut commit_steps),
                        &mut stats,
                    )?;
                }
                for i in (0..n).filter(|&i| !done[i]) {
                    any_masked |= seqs[i][seq_off..seq_off + b].contains(&MASK);
                }
                step_in_block += 1;
                if let Some(Corrector::Arpc {
                    remask, max_prob, ..
                }) = cfg
                    .corrector
                    .filter(|_| !any_masked && corrections_left > 0)
                {
                    // ARPC: the block is complete; re-mask what the AR mode disagrees with.
                    corrections_left -= 1;
                    let blocks = row_blocks(&seqs, rows, seq_off, b);
                    let ver_logits = dec.verify(&blocks, start);
                    for i in (0..n).filter(|&i| !done[i]) {
                        let k = steps::arpc_remask(
                            &mut seqs[i],
                            seq_off,
                            b,
                            |p| logit_row(&ver_logits, i, p, b),
                            (remask, max_prob),
                            constraint,
                            &mut probs,
                            &mut allowed,
                        );
                        stats.tokens -= k;
                        any_masked |= k > 0;
                    }
                }
                if !any_masked {
                    break;
                }
            }
        }
        finish_block(
            &mut seqs,
            &mut done,
            &mut ended,
            prompt_len,
            seq_off + b,
            cfg,
        );
        dec.queue_clean(row_blocks(&seqs, rows, seq_off, b));
    }
    stats.nfe = dec.nfe;
    Ok(sample_output(
        seqs,
        (prompt_len, n_blocks * b),
        cfg,
        ended,
        commit_steps,
        stats,
        started,
    ))
}

/// The result from the sampler's final state: `seqs` (prompt ⊕ `gen_len` generated tokens
/// per request) cut at the end of each sequence and at `max_len`.
fn sample_output(
    seqs: Vec<Vec<u32>>,
    (prompt_len, gen_len): (usize, usize),
    cfg: &SamplerConfig,
    ended: Vec<bool>,
    commit_steps: Vec<Vec<u32>>,
    mut stats: SampleStats,
    started: Instant,
) -> SampleOutput {
    let full_sequences: Vec<Vec<u32>> = seqs
        .iter()
        .map(|s| {
            let mut g = s[prompt_len..].to_vec();
            g.resize(gen_len, PAD);
            g
        })
        .collect();
    let sequences = seqs
        .into_iter()
        .map(|s| {
            let gen = &s[prompt_len..];
            let end = gen
                .iter()
                .position(|&t| t == EOS || t == PAD)
                .unwrap_or(gen.len())
                .min(cfg.max_len);
            gen[..end].to_vec()
        })
        .collect();
    stats.wall_s = started.elapsed().as_secs_f64();
    SampleOutput {
        sequences,
        ended,
        commit_steps,
        full_sequences,
        stats,
    }
}

/// A block's end: padding after a request's `EOS`, and requests that ended stop (with
/// `stop_at_eos`). Only the tokens before `finished` (an index into `seqs[i]`) count: DCD's
/// look-ahead may already have committed an `EOS` in the next block while positions before it
/// are still masked.
fn finish_block(
    seqs: &mut [Vec<u32>],
    done: &mut [bool],
    ended: &mut [bool],
    prompt_len: usize,
    finished: usize,
    cfg: &SamplerConfig,
) {
    for i in 0..seqs.len() {
        if done[i] {
            continue;
        }
        let gen = &mut seqs[i][prompt_len..];
        let finished = (finished - prompt_len).min(gen.len());
        if let Some(e) = gen[..finished].iter().position(|&t| t == EOS || t == PAD) {
            gen[e + 1..].iter_mut().for_each(|t| *t = PAD);
            ended[i] = true;
            if cfg.stop_at_eos {
                done[i] = true;
            }
        }
    }
}

/// `seqs[r % n][from..from + len]` for every model row (CFG's unconditional rows repeat the
/// requests), `n = seqs.len()`.
fn row_blocks(seqs: &[Vec<u32>], rows: usize, from: usize, len: usize) -> Vec<Vec<u32>> {
    let n = seqs.len();
    (0..rows)
        .map(|r| seqs[r % n][from..from + len].to_vec())
        .collect()
}

/// The `[rows, vocab, k]` request-feature tensor of a batch (`None` when the model has no
/// request features). Rows past the requests (CFG's unconditional copies) and requests without
/// a table get zero rows, the null condition of training. Errors name the request.
pub(crate) fn request_feature_tensor<B: Backend>(
    tables: impl Iterator<Item = Option<std::sync::Arc<Vec<f32>>>>,
    rows: usize,
    model_cfg: &BlockDiffusionConfig,
    device: &B::Device,
) -> Result<Option<Tensor<B, 3>>, (usize, String)> {
    let k = model_cfg.request_feature_dim;
    let tables: Vec<Option<std::sync::Arc<Vec<f32>>>> = tables.collect();
    for (i, t) in tables.iter().enumerate() {
        if let Some(t) = t {
            crate::condition::check_request_features(t, model_cfg).map_err(|m| (i, m))?;
        }
    }
    if k == 0 {
        return Ok(None);
    }
    let width = model_cfg.vocab_size * k;
    let mut data = vec![0f32; rows * width];
    for (i, t) in tables.iter().enumerate().take(rows) {
        if let Some(t) = t {
            data[i * width..(i + 1) * width].copy_from_slice(t);
        }
    }
    Ok(Some(
        Tensor::<B, 1>::from_floats(data.as_slice(), device).reshape([
            rows,
            model_cfg.vocab_size,
            k,
        ]),
    ))
}

/// The positions of `seqs[i][seq_off..seq_off + span]` that are masked in some request, the
/// only ones a commit policy reads; `None` when that is all of them or none (the head then
/// runs on every position).
fn head_rows(seqs: &[Vec<u32>], seq_off: usize, span: usize) -> Option<Vec<usize>> {
    let q: Vec<usize> = (0..span)
        .filter(|&p| seqs.iter().any(|s| s.get(seq_off + p) == Some(&MASK)))
        .collect();
    (!q.is_empty() && q.len() < span).then_some(q)
}

/// Logits `[rows, q.len(), vocab]` for positions `q` spread into `[rows, span, vocab]`, zero
/// elsewhere.
fn spread_rows(compact: &[f32], q: &[usize], rows: usize, span: usize) -> Vec<f32> {
    let vocab = compact.len() / (rows * q.len()).max(1);
    let mut out = vec![0f32; rows * span * vocab];
    for r in 0..rows {
        for (k, &p) in q.iter().enumerate() {
            let src = (r * q.len() + k) * vocab;
            let dst = (r * span + p) * vocab;
            out[dst..dst + vocab].copy_from_slice(&compact[src..src + vocab]);
        }
    }
    out
}

/// A request's condition vectors, if any, must fit the model's condition encoder.
pub(crate) fn check_vectors(
    vectors: Option<&[f32]>,
    model_cfg: &BlockDiffusionConfig,
) -> Result<(), String> {
    let width = model_cfg.cond_dim * model_cfg.cond_len;
    match vectors {
        Some(v) if model_cfg.cond_dim == 0 => Err(format!(
            "{} condition values given to a model without a condition encoder",
            v.len()
        )),
        Some(v) if v.len() != width => Err(format!(
            "condition has {} values, the model expects cond_len × cond_dim = {width}",
            v.len()
        )),
        Some(v) if v.iter().any(|x| !x.is_finite()) => {
            Err("condition contains NaN or infinity".into())
        }
        _ => Ok(()),
    }
}

/// Extends every sequence with `MASK` (`PAD` for finished requests) to length `len`.
fn extend_to(seqs: &mut [Vec<u32>], done: &[bool], len: usize) {
    for (s, &d) in seqs.iter_mut().zip(done) {
        let fill = if d { PAD } else { MASK };
        while s.len() < len {
            s.push(fill);
        }
    }
}

/// The model side of a sampling call: the KV cache, the clean positions waiting to enter it,
/// FlashBlock state and the model-call counter.
struct Decoder<'a, B: Backend> {
    model: &'a BlockDiffusionModel<B>,
    device: &'a B::Device,
    n: usize,
    rows: usize,
    b: usize,
    prompt_len: usize,
    cond_len: usize,
    has_cond: bool,
    cond_t: Option<Tensor<B, 3>>,
    cond_drop: Option<Tensor<B, 1>>,
    /// Per-request token features `[rows, vocab, k]` (zero rows for unconditional CFG rows).
    req_t: Option<Tensor<B, 3>>,
    cache: KvCache<B>,
    pending: Option<Vec<Vec<u32>>>,
    /// Lengths of the segments queued in `pending` (the prompt, finished blocks): clean rows
    /// attend block-causally across them.
    pending_spans: Vec<usize>,
    cond_pending: bool,
    flash: FlashBlockState<B>,
    use_flash: bool,
    nfe: usize,
}

impl<B: Backend> Decoder<'_, B> {
    /// One cached diffusion call over the `span` noisy positions from `seqs[r][seq_off..]`
    /// (absolute position `start`), flushing pending clean positions into the cache.
    /// With FlashBlock, a block's first call records the external attention and later calls
    /// (the block alone: nothing pending) reuse it. Returns logits `[rows, span, vocab]`.
    /// With `only_masked`, the head runs only on the positions still masked in some request
    /// (the only ones a commit policy reads); the others' logits are left at 0.
    fn call(
        &mut self,
        seqs: &[Vec<u32>],
        (seq_off, start, span): (usize, usize, usize),
        only_masked: bool,
    ) -> Vec<f32> {
        let (n, rows, b) = (self.n, self.rows, self.b);
        let head_rows = (only_masked && !self.use_flash)
            .then(|| head_rows(seqs, seq_off, span))
            .flatten();
        self.nfe += 1;
        let clean_rows = self.pending.take();
        let clean = clean_rows.as_ref().map_or(0, |c| c[0].len());
        let with_cond = self.cond_pending && self.has_cond;
        let mut toks = Vec::with_capacity(rows * (clean + span));
        for r in 0..rows {
            if let Some(c) = &clean_rows {
                toks.extend_from_slice(&c[r]);
            }
            toks.extend_from_slice(&seqs[r % n][seq_off..seq_off + span]);
        }
        let mut positions: Vec<usize> = (start - clean..start).collect();
        positions.extend(start..start + span);
        let ctx = clean + if with_cond { self.cond_len } else { 0 };
        // The condition vectors come first, with the first segment (the prompt).
        let mut segments = std::mem::take(&mut self.pending_spans);
        if with_cond {
            match segments.first_mut() {
                Some(first) => *first += self.cond_len,
                None => segments.push(self.cond_len),
            }
        }
        let mask_t = (ctx > 0 || span > b).then(|| {
            mask::MaskTable::new(
                mask::append_segments_mask_data(self.cache.len(), &segments, b, span / b),
                ctx + span,
                self.cache.len() + ctx + span,
            )
        });
        let (cond, cond_drop) = self.cond_input(with_cond);
        let input = ForwardInput {
            tokens: int_tensor::<B>(&toks, rows, clean + span, self.device),
            positions,
            cond,
            cond_drop,
            mask: mask_t,
            request_features: self.req_t.clone(),
        };
        let (logits, kvs) = if let Some(q) = &head_rows {
            self.model
                .forward_rows(input, Some(&self.cache), (clean, span), q)
        } else if self.use_flash {
            self.model
                .forward_block_flash(input, Some(&self.cache), clean, span, &mut self.flash)
        } else {
            self.model
                .forward_range(input, Some(&self.cache), clean, span)
        };
        if ctx > 0 {
            self.cache.append(&kvs, 0, ctx);
            self.cond_pending = false;
        }
        match &head_rows {
            Some(q) => spread_rows(&to_vec(logits), q, rows, span),
            None => to_vec(logits),
        }
    }

    /// The condition tensors of a call that starts the sequence (`with_cond`), else none.
    fn cond_input(&self, with_cond: bool) -> (Option<Tensor<B, 3>>, Option<Tensor<B, 1>>) {
        if with_cond {
            (self.cond_t.clone(), self.cond_drop.clone())
        } else {
            (None, None)
        }
    }

    /// Queues a finished block's clean rows for the next call. A block finished without a call
    /// (all forced) queues behind the one before it, as its own segment.
    fn queue_clean(&mut self, clean: Vec<Vec<u32>>) {
        let len = clean[0].len();
        match &mut self.pending {
            Some(queued) => queued
                .iter_mut()
                .zip(clean)
                .for_each(|(q, c)| q.extend_from_slice(&c)),
            None => self.pending = Some(clean),
        }
        self.pending_spans.push(len);
    }

    /// The reference call: recompute prompt ⊕ all generated ⊕ the current block.
    fn reference_call(&mut self, seqs: &[Vec<u32>], seq_off: usize, blk: usize) -> Vec<f32> {
        let (n, rows, b) = (self.n, self.rows, self.b);
        let (prompt_len, cond_len) = (self.prompt_len, self.cond_len);
        self.nfe += 1;
        let total = seq_off + b;
        let mut toks = Vec::with_capacity(rows * total);
        for r in 0..rows {
            let s = &seqs[r % n];
            if r >= n {
                toks.extend(std::iter::repeat_n(MASK, prompt_len));
                toks.extend_from_slice(&s[prompt_len..total]);
            } else {
                toks.extend_from_slice(&s[..total]);
            }
        }
        let ctx = cond_len + prompt_len;
        let gen = blk * b + b;
        let m = mask::block_causal_mask_data(ctx, gen, b);
        let input = ForwardInput {
            tokens: int_tensor::<B>(&toks, rows, total, self.device),
            positions: (cond_len..cond_len + total).collect(),
            cond: self.cond_t.clone(),
            cond_drop: self.cond_drop.clone(),
            mask: Some(mask::MaskTable::new(m, ctx + gen, ctx + gen)),
            request_features: self.req_t.clone(),
        };
        // The same head rows as the cached call's, so the two agree call by call.
        match head_rows(seqs, seq_off, b) {
            Some(q) => {
                let (logits, _) = self.model.forward_rows(input, None, (seq_off, b), &q);
                spread_rows(&to_vec(logits), &q, rows, b)
            }
            None => to_vec(self.model.forward_range(input, None, seq_off, b).0),
        }
    }

    /// One call in block-size-1 mode over a complete (or drafted) block per row: the logits
    /// at block position `i` are the autoregressive prediction of token `i` given the cache
    /// and the row's tokens `< i` ([`mask::verifier_mask_data`]). `[rows, b, vocab]`.
    fn verify(&mut self, blocks: &[Vec<u32>], start: usize) -> Vec<f32> {
        let (rows, b) = (self.rows, self.b);
        debug_assert!(
            self.pending.is_none(),
            "verify after the block's first call"
        );
        self.nfe += 1;
        let mut toks = Vec::with_capacity(rows * 2 * b);
        for blk in blocks {
            toks.extend(std::iter::repeat_n(MASK, b));
            toks.extend_from_slice(blk);
        }
        let mut positions: Vec<usize> = (start..start + b).collect();
        positions.extend(start..start + b);
        let cached = self.cache.len();
        let input = ForwardInput {
            tokens: int_tensor::<B>(&toks, rows, 2 * b, self.device),
            positions,
            cond: None,
            cond_drop: None,
            mask: Some(mask::MaskTable::new(
                mask::verifier_mask_data(cached, b),
                2 * b,
                cached + 2 * b,
            )),
            request_features: self.req_t.clone(),
        };
        let (logits, _) = self.model.forward_range(input, Some(&self.cache), 0, b);
        to_vec(logits)
    }
}

/// Per-sample buffers reused across steps.
pub(crate) struct StepScratch<'a> {
    pub allowed: &'a mut [bool],
    pub probs: &'a mut [f32],
    pub rng: &'a mut StdRng,
}

/// One denoising step of one sample's current block `seq[seq_off..seq_off + b]`: proposes a
/// token for every masked position (constraint applied to the logits first), ranks the
/// proposals by confidence, commits as many as the policy says, re-checking each against the
/// tokens committed before it in the same step. `row(p)` gives block position `p`'s logits.
/// Returns the committed block positions.
#[allow(clippy::too_many_arguments)]
pub(crate) fn commit_step(
    seq: &mut [u32],
    seq_off: usize,
    b: usize,
    row: impl Fn(usize) -> Vec<f32>,
    constraint: &dyn Constraint,
    cfg: &SamplerConfig,
    scratch: &mut StepScratch<'_>,
    sample_index: usize,
) -> Result<Vec<usize>, SampleError> {
    let vocab = scratch.allowed.len();
    let masked = masked_in_block(seq, seq_off, b);
    if masked.is_empty() {
        return Ok(Vec::new());
    }
    let cands = propose(
        seq,
        seq_off,
        &masked,
        row,
        constraint,
        cfg,
        scratch,
        sample_index,
    )?;
    // Every rule but first-hitting commits the `count` most confident: those at or above a
    // threshold, at least a floor (top-k: no threshold, floor k).
    let (tau, floor) = match cfg.policy {
        CommitPolicy::FirstHitting => {
            let order = [scratch.rng.random_range(0..cands.len())];
            return Ok(commit_in_order(
                seq, seq_off, &cands, &order, constraint, vocab,
            ));
        }
        CommitPolicy::Dilated { per_step } => {
            let width = b.next_power_of_two();
            let mut order: Vec<usize> = (0..cands.len()).collect();
            order.sort_by_key(|&j| dilated_rank(cands[j].0, width));
            order.truncate(per_step);
            return Ok(commit_in_order(
                seq, seq_off, &cands, &order, constraint, vocab,
            ));
        }
        CommitPolicy::TopK { k } => (f32::INFINITY, k),
        CommitPolicy::Threshold { tau } => (tau, 1),
        CommitPolicy::DynamicFallback { tau, k } => (tau, k),
        _ => (f32::INFINITY, 1),
    };
    Ok(commit_confident(
        seq, seq_off, &cands, tau, floor, constraint, vocab,
    ))
}

/// Rank of block position `p` in the dilated order over a block of `width` (a power of two)
/// positions: `p`'s bits reversed, so 0, w/2, w/4, 3w/4, w/8, … come first.
pub fn dilated_rank(p: usize, width: usize) -> usize {
    let bits = width.trailing_zeros();
    if bits == 0 {
        0
    } else {
        p.reverse_bits() >> (usize::BITS - bits)
    }
}

/// Where the current block sits in every request's sequence.
#[derive(Clone, Copy)]
struct BlockAt {
    /// Index of the block in `seqs[i]`.
    seq_off: usize,
    b: usize,
    prompt_len: usize,
}

/// [`commit_forced`] for every live request, recording the commits at `step`; returns true
/// when no live request has a masked position left in the block (its calls can be skipped).
fn force_all(
    seqs: &mut [Vec<u32>],
    done: &[bool],
    at: BlockAt,
    constraint: &dyn Constraint,
    allowed: &mut [bool],
    (step, commit_steps): (u32, &mut [Vec<u32>]),
    stats: &mut SampleStats,
) -> Result<bool, SampleError> {
    let BlockAt {
        seq_off,
        b,
        prompt_len,
    } = at;
    let mut complete = true;
    for i in (0..seqs.len()).filter(|&i| !done[i]) {
        for p in commit_forced(&mut seqs[i], seq_off, b, constraint, allowed, i)? {
            commit_steps[i][seq_off + p - prompt_len] = step;
            stats.tokens += 1;
            stats.forced += 1;
        }
        complete &= !seqs[i][seq_off..seq_off + b].contains(&MASK);
    }
    Ok(complete)
}

/// Commits every masked position of the block whose allowed set is a single token, scanning
/// until nothing changes (a commit can force its neighbours); returns the positions.
pub(crate) fn commit_forced(
    seq: &mut [u32],
    seq_off: usize,
    b: usize,
    constraint: &dyn Constraint,
    allowed: &mut [bool],
    sample_index: usize,
) -> Result<Vec<usize>, SampleError> {
    let mut forced = Vec::new();
    loop {
        let before = forced.len();
        for p in masked_in_block(seq, seq_off, b) {
            allowed_at(seq, seq_off + p, constraint, allowed, sample_index)?;
            let mut ids = allowed
                .iter()
                .enumerate()
                .filter(|(_, &a)| a)
                .map(|(t, _)| t);
            if let (Some(t), None) = (ids.next(), ids.next()) {
                seq[seq_off + p] = t as u32;
                forced.push(p);
            }
        }
        if forced.len() == before {
            return Ok(forced);
        }
    }
}

/// The still-masked positions of the block `seq[seq_off..seq_off + b]`.
pub(crate) fn masked_in_block(seq: &[u32], seq_off: usize, b: usize) -> Vec<usize> {
    (0..b).filter(|&p| seq[seq_off + p] == MASK).collect()
}

/// A proposal: block position, token, confidence.
pub(crate) type Candidate = (usize, u32, f32);

/// Proposes a token for each of the block positions `positions` (all masked), the constraint
/// applied to the logits first; the confidence is the token's probability.
#[allow(clippy::too_many_arguments)]
pub(crate) fn propose(
    seq: &[u32],
    seq_off: usize,
    positions: &[usize],
    row: impl Fn(usize) -> Vec<f32>,
    constraint: &dyn Constraint,
    cfg: &SamplerConfig,
    scratch: &mut StepScratch<'_>,
    sample_index: usize,
) -> Result<Vec<Candidate>, SampleError> {
    let mut cands = Vec::with_capacity(positions.len());
    for &p in positions {
        let logits = row(p);
        let pos = seq_off + p;
        allowed_at(seq, pos, constraint, scratch.allowed, sample_index)?;
        let (tok, conf) = pick(&logits, scratch.allowed, cfg, scratch.probs, scratch.rng);
        cands.push((p, tok, conf));
    }
    Ok(cands)
}

/// Fills `allowed` with the tokens the sampler may place at `pos` (never `MASK`/`BOS`, then
/// the constraint); a dead end is an error.
pub(crate) fn allowed_at(
    seq: &[u32],
    pos: usize,
    constraint: &dyn Constraint,
    allowed: &mut [bool],
    sample_index: usize,
) -> Result<(), SampleError> {
    allowed.iter_mut().for_each(|a| *a = true);
    allowed[MASK as usize] = false;
    allowed[BOS as usize] = false;
    constraint.restrict(seq, pos, allowed);
    if allowed.iter().any(|&a| a) {
        Ok(())
    } else {
        Err(SampleError::DeadEnd {
            sample: sample_index,
            position: pos,
        })
    }
}

/// Candidate indices, most confident first.
pub(crate) fn by_confidence(cands: &[Candidate]) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..cands.len()).collect();
    idx.sort_by(|&a, &c| cands[c].2.total_cmp(&cands[a].2));
    idx
}

/// The confidence rule: commits every candidate with confidence `≥ tau`, and at least the
/// `floor` most confident ones (threshold: floor 1; SDAR's dynamic fallback: floor k; top-k:
/// `tau = ∞`), most confident first.
pub(crate) fn commit_confident(
    seq: &mut [u32],
    seq_off: usize,
    cands: &[Candidate],
    tau: f32,
    floor: usize,
    constraint: &dyn Constraint,
    vocab: usize,
) -> Vec<usize> {
    let idx = by_confidence(cands);
    let count = idx
        .iter()
        .filter(|&&j| cands[j].2 >= tau)
        .count()
        .max(floor);
    commit_in_order(
        seq,
        seq_off,
        cands,
        &idx[..count.min(idx.len())],
        constraint,
        vocab,
    )
}

/// Commits `cands[order[..]]` in order. The first was proposed under the current context;
/// later ones are re-checked against the tokens committed just before them in this step.
pub(crate) fn commit_in_order(
    seq: &mut [u32],
    seq_off: usize,
    cands: &[Candidate],
    order: &[usize],
    constraint: &dyn Constraint,
    vocab: usize,
) -> Vec<usize> {
    let mut committed = Vec::with_capacity(order.len());
    for (rank, &j) in order.iter().enumerate() {
        let (p, tok, _) = cands[j];
        let pos = seq_off + p;
        if rank > 0 && !constraint.is_allowed(seq, pos, tok, vocab) {
            continue;
        }
        seq[pos] = tok;
        committed.push(p);
    }
    committed
}

pub(crate) fn int_tensor<B: Backend>(
    data: &[u32],
    rows: usize,
    cols: usize,
    device: &B::Device,
) -> Tensor<B, 2, Int> {
    let v: Vec<i64> = data.iter().map(|&t| t as i64).collect();
    Tensor::<B, 1, Int>::from_data(TensorData::new(v, [rows * cols]), device).reshape([rows, cols])
}

pub(crate) fn to_vec<B: Backend>(t: Tensor<B, 3>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .expect("f32 logits")
}

/// Logits of request `i` at block position `p`, with classifier-free guidance applied.
#[allow(clippy::too_many_arguments)]
fn guided_row(
    logits: &[f32],
    i: usize,
    n: usize,
    p: usize,
    b: usize,
    vocab: usize,
    guided: bool,
    scale: f32,
) -> Vec<f32> {
    let at = |r: usize| &logits[(r * b + p) * vocab..(r * b + p + 1) * vocab];
    let c = at(i);
    if !guided {
        return c.to_vec();
    }
    let u = at(n + i);
    c.iter().zip(u).map(|(c, u)| u + scale * (c - u)).collect()
}

/// Chooses a token among `allowed` and returns it with its confidence (its probability under
/// the tempered, nucleus-filtered distribution; under temperature 1 for greedy).
fn pick(
    row: &[f32],
    allowed: &[bool],
    cfg: &SamplerConfig,
    probs: &mut [f32],
    rng: &mut StdRng,
) -> (u32, f32) {
    // Only the span of allowed ids is scored: a constraint that admits one codebook of a
    // wide vocabulary (an audio frame slot: 1,024 of 4,164 ids) then costs its own width.
    // Outside the span every probability would be 0, so the draw is the same.
    let span = allowed_span(allowed);
    let first = span.start;
    let probs = &mut probs[span.clone()];
    fill_probs(&row[span.clone()], &allowed[span], cfg, probs);
    let t = if cfg.temperature == 0.0 {
        argmax(probs)
    } else {
        draw(probs, rng)
    };
    (first as u32 + t, probs[t as usize])
}

/// The ids from the first allowed one to the last (everything when none is allowed): all a
/// sampler needs to score, and all of the output head a sampling call needs to compute.
pub(crate) fn allowed_span(allowed: &[bool]) -> std::ops::Range<usize> {
    match (
        allowed.iter().position(|&a| a),
        allowed.iter().rposition(|&a| a),
    ) {
        (Some(first), Some(last)) => first..last + 1,
        _ => 0..allowed.len(),
    }
}

/// The distribution a token is drawn from: softmax of `row` over `allowed` at the sampler's
/// temperature (1 for greedy, whose draw is then the arg-max), nucleus-filtered by `top_p`
/// (not for greedy). Non-finite logits fall back to uniform over the allowed set.
pub(crate) fn fill_probs(row: &[f32], allowed: &[bool], cfg: &SamplerConfig, probs: &mut [f32]) {
    let greedy = cfg.temperature == 0.0;
    let inv_temp = if greedy { 1.0 } else { 1.0 / cfg.temperature };
    let mut sum = blockdiff_kernels::cpu::masked_exp(row, allowed, inv_temp, probs);
    if !(sum > 0.0) {
        for (p, &a) in probs.iter_mut().zip(allowed) {
            *p = if a { 1.0 } else { 0.0 };
        }
        sum = probs.iter().sum();
    }
    let inv = 1.0 / sum;
    probs.iter_mut().for_each(|p| *p *= inv);
    if !greedy && cfg.top_p < 1.0 {
        if let Some((bucket, last)) = nucleus_edge(probs, cfg.top_p) {
            for (t, p) in probs.iter_mut().enumerate() {
                let b = exponent(*p);
                if b < bucket || (b == bucket && rank_key(*p, t) > last) {
                    *p = 0.0;
                }
            }
        }
        let s: f32 = probs.iter().sum();
        let inv = 1.0 / s;
        probs.iter_mut().for_each(|p| *p *= inv);
    }
}

/// The biased binary exponent of a non-negative `f32` (0 for zero): probabilities in one
/// exponent bucket are within a factor of 2 of each other.
fn exponent(p: f32) -> usize {
    (p.to_bits() >> 23) as usize & 0xff
}

/// Sort key of a positive probability `p` at id `t`: descending probability, ties by id.
/// (A positive `f32`'s bits order like its value.)
fn rank_key(p: f32, t: usize) -> u64 {
    (u64::from(!p.to_bits()) << 32) | t as u64
}

/// The nucleus of a normalised distribution: the fewest most probable ids (ties by id) whose
/// mass reaches `top_p`. Returned as its edge: every id in a higher exponent bucket is in,
/// every id in a lower one out, and in the edge bucket the ids up to the key `last`; `None`
/// when rounding keeps the total under `top_p` (keep everything).
///
/// In linear time, where sorting every allowed id was a tenth of a music stream's time: one
/// pass sums the mass per exponent bucket, the buckets are walked from the top, and only the
/// bucket where the mass crosses `top_p` is sorted (its ids are within a factor of 2 of each
/// other, so it is small). Mass is summed by bucket, not id by id in rank order, so where a
/// sum lands within rounding of `top_p` the edge can differ by one id from a full sort's.
fn nucleus_edge(probs: &[f32], top_p: f32) -> Option<(usize, u64)> {
    let mut mass = [0f32; 256];
    for &p in probs {
        mass[exponent(p)] += p;
    }
    let mut cum = 0f32;
    // Bucket 0 holds zeros and subnormals: never worth keeping apart.
    let bucket = (1..256).rev().find(|&b| {
        if cum + mass[b] >= top_p {
            return true;
        }
        cum += mass[b];
        false
    })?;
    let mut keys: Vec<u64> = probs
        .iter()
        .enumerate()
        .filter(|&(_, &p)| exponent(p) == bucket)
        .map(|(t, &p)| rank_key(p, t))
        .collect();
    keys.sort_unstable();
    for &k in &keys {
        cum += f32::from_bits(!((k >> 32) as u32));
        if cum >= top_p {
            return Some((bucket, k));
        }
    }
    keys.last().map(|&k| (bucket, k))
}

/// Index of the largest probability.
pub(crate) fn argmax(probs: &[f32]) -> u32 {
    probs
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map_or(0, |(t, _)| t as u32)
}

/// Draws an index from a normalised distribution (the last positive entry absorbs rounding).
pub(crate) fn draw(probs: &[f32], rng: &mut StdRng) -> u32 {
    let mut r: f32 = rng.random();
    let mut last = 0;
    for (t, &p) in probs.iter().enumerate() {
        if p > 0.0 {
            last = t;
            if r < p {
                return t as u32;
            }
            r -= p;
        }
    }
    last as u32
}
