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
use crate::model::{BlockDiffusionConfig, BlockDiffusionModel, ForwardInput};
use crate::tokenizer::{BOS, EOS, MASK, PAD};

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
    /// First-hitting sampling: one uniformly chosen masked position per step, its token drawn
    /// from the model — an exact sampler of the masked-diffusion reverse process.
    FirstHitting,
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
            CommitPolicy::TopK { k } | CommitPolicy::DynamicFallback { k, .. } if k == 0 => {
                bad("policy k must be > 0")
            }
            CommitPolicy::Threshold { tau } | CommitPolicy::DynamicFallback { tau, .. }
                if !(tau > 0.0 && tau <= 1.0) =>
            {
                bad("policy tau must be in (0, 1]")
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
    /// Sequences in the batch.
    pub batch: usize,
    /// Wall-clock seconds.
    pub wall_s: f64,
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
    /// the unconditional rows follow the conditional ones.
    pub logits: &'a [f32],
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
        match r.vectors() {
            Some(v) if model_cfg.cond_dim == 0 => {
                return Err(req_err(format!(
                    "{} condition values given to a model without a condition encoder",
                    v.len()
                )))
            }
            Some(v) if v.len() != cond_width => {
                return Err(req_err(format!(
                    "condition has {} values, the model expects cond_len × cond_dim = {cond_width}",
                    v.len()
                )))
            }
            Some(v) if v.iter().any(|x| !x.is_finite()) => {
                return Err(req_err("condition contains NaN or infinity".into()))
            }
            None if has_cond => {
                return Err(req_err(
                    "condition vectors missing (request 0 has them)".into(),
                ))
            }
            _ => {}
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
    let mut cache = KvCache::<B>::new();
    // Clean positions not yet in the cache: (tokens per row, count). Starts with the prompt.
    let mut pending: Option<Vec<Vec<u32>>> = Some(
        (0..rows)
            .map(|r| {
                if r >= n {
                    // Unconditional rows see the prompt masked out (as in condition dropout).
                    vec![MASK; prompt_len]
                } else {
                    requests[r].prompt().to_vec()
                }
            })
            .collect(),
    );
    let mut cond_pending = true;
    let mut allowed = vec![true; vocab];
    let mut probs = vec![0f32; vocab];

    for blk in 0..n_blocks {
        if done.iter().all(|&d| d) {
            break;
        }
        let start = gen_start + blk * b; // absolute position of the block
        let seq_off = prompt_len + blk * b; // index of the block in `seqs[i]`
        for (i, s) in seqs.iter_mut().enumerate() {
            let fill = if done[i] { PAD } else { MASK };
            s.extend(std::iter::repeat_n(fill, b));
        }
        let mut step_in_block: u32 = 0;
        loop {
            // ---- one model call ----
            let logits: Vec<f32> = if cfg.use_cache {
                let (tokens, positions, clean, mask_t, with_cond) = {
                    let clean_rows = pending.take();
                    let clean = clean_rows.as_ref().map_or(0, |c| c[0].len());
                    let with_cond = cond_pending && has_cond;
                    let mut toks = Vec::with_capacity(rows * (clean + b));
                    for r in 0..rows {
                        if let Some(c) = &clean_rows {
                            toks.extend_from_slice(&c[r]);
                        }
                        toks.extend_from_slice(&seqs[r % n][seq_off..seq_off + b]);
                    }
                    let mut positions: Vec<usize> = (start - clean..start).collect();
                    positions.extend(start..start + b);
                    let ctx = clean + if with_cond { cond_len } else { 0 };
                    let mask_t = (ctx > 0).then(|| {
                        mask::MaskTable::new(
                            mask::append_mask_data(cache.len(), ctx, b),
                            ctx + b,
                            cache.len() + ctx + b,
                        )
                    });
                    (toks, positions, clean, mask_t, with_cond)
                };
                let input = ForwardInput {
                    tokens: int_tensor::<B>(&tokens, rows, clean + b, device),
                    positions,
                    cond: if with_cond { cond_t.clone() } else { None },
                    cond_drop: if with_cond { cond_drop.clone() } else { None },
                    mask: mask_t,
                };
                let (logits, kvs) = model.forward_range(input, Some(&cache), clean, b);
                let ctx = clean + if with_cond { cond_len } else { 0 };
                if ctx > 0 {
                    cache.append(&kvs, 0, ctx);
                    cond_pending = false;
                }
                to_vec(logits)
            } else {
                // Reference path: recompute prompt ⊕ all generated ⊕ current block.
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
                    tokens: int_tensor::<B>(&toks, rows, total, device),
                    positions: (cond_len..cond_len + total).collect(),
                    cond: cond_t.clone(),
                    cond_drop: cond_drop.clone(),
                    mask: Some(mask::MaskTable::new(m, ctx + gen, ctx + gen)),
                };
                let (logits, _) = model.forward_range(input, None, seq_off, b);
                to_vec(logits)
            };
            stats.nfe += 1;
            observe(&StepView {
                block: blk,
                sequences: &seqs,
                logits: &logits,
            });

            // ---- commit decisions, per request ----
            let mut any_masked = false;
            for i in 0..n {
                if done[i] {
                    continue;
                }
                let row = |p: usize| guided_row(&logits, i, n, p, b, vocab, guided, cfg.cfg_scale);
                let committed = commit_step(
                    &mut seqs[i],
                    seq_off,
                    b,
                    row,
                    constraint,
                    cfg,
                    &mut StepScratch {
                        allowed: &mut allowed,
                        probs: &mut probs,
                        rng: &mut rngs[i],
                    },
                    i,
                )?;
                for p in committed {
                    commit_steps[i][seq_off + p - prompt_len] = step_in_block;
                    stats.tokens += 1;
                }
                if seqs[i][seq_off..seq_off + b].contains(&MASK) {
                    any_masked = true;
                }
            }
            step_in_block += 1;
            if !any_masked {
                break;
            }
        }
        // ---- block final: padding after the end, stop finished requests ----
        for i in 0..n {
            if done[i] {
                continue;
            }
            let gen = &mut seqs[i][prompt_len..];
            if let Some(e) = gen.iter().position(|&t| t == EOS || t == PAD) {
                gen[e + 1..].iter_mut().for_each(|t| *t = PAD);
                ended[i] = true;
                if cfg.stop_at_eos {
                    done[i] = true;
                }
            }
        }
        pending = Some(
            (0..rows)
                .map(|r| seqs[r % n][seq_off..seq_off + b].to_vec())
                .collect(),
        );
    }
    let full_sequences: Vec<Vec<u32>> = seqs
        .iter()
        .map(|s| {
            let mut g = s[prompt_len..].to_vec();
            g.resize(n_blocks * b, PAD);
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
    Ok(SampleOutput {
        sequences,
        ended,
        commit_steps,
        full_sequences,
        stats,
    })
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
    let masked: Vec<usize> = (0..b).filter(|&p| seq[seq_off + p] == MASK).collect();
    if masked.is_empty() {
        return Ok(Vec::new());
    }
    let mut cands: Vec<(usize, u32, f32)> = Vec::with_capacity(masked.len());
    for &p in &masked {
        let logits = row(p);
        let pos = seq_off + p;
        scratch.allowed.iter_mut().for_each(|a| *a = true);
        scratch.allowed[MASK as usize] = false;
        scratch.allowed[BOS as usize] = false;
        constraint.restrict(seq, pos, scratch.allowed);
        if !scratch.allowed.iter().any(|&a| a) {
            return Err(SampleError::DeadEnd {
                sample: sample_index,
                position: pos,
            });
        }
        let (tok, conf) = pick(&logits, scratch.allowed, cfg, scratch.probs, scratch.rng);
        cands.push((p, tok, conf));
    }
    let order: Vec<usize> = match cfg.policy {
        CommitPolicy::FirstHitting => {
            vec![scratch.rng.random_range(0..cands.len())]
        }
        _ => {
            let mut idx: Vec<usize> = (0..cands.len()).collect();
            idx.sort_by(|&a, &c| cands[c].2.total_cmp(&cands[a].2));
            let count = match cfg.policy {
                CommitPolicy::TopK { k } => k,
                CommitPolicy::Threshold { tau } => {
                    idx.iter().filter(|&&j| cands[j].2 >= tau).count().max(1)
                }
                CommitPolicy::DynamicFallback { tau, k } => {
                    idx.iter().filter(|&&j| cands[j].2 >= tau).count().max(k)
                }
                CommitPolicy::FirstHitting => unreachable!(),
            };
            idx.truncate(count.min(cands.len()));
            idx
        }
    };
    let mut committed = Vec::with_capacity(order.len());
    for (rank, &j) in order.iter().enumerate() {
        let (p, tok, _) = cands[j];
        let pos = seq_off + p;
        // The top candidate was proposed under the current context; later ones are re-checked
        // against the tokens committed just before them in this step.
        if rank > 0 && !constraint.is_allowed(seq, pos, tok, vocab) {
            continue;
        }
        seq[pos] = tok;
        committed.push(p);
    }
    Ok(committed)
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
    let temp = if cfg.temperature > 0.0 {
        cfg.temperature
    } else {
        1.0
    };
    let mut max = f32::NEG_INFINITY;
    for (l, &a) in row.iter().zip(allowed) {
        if a && *l > max {
            max = *l;
        }
    }
    let mut sum = 0f32;
    for ((p, l), &a) in probs.iter_mut().zip(row).zip(allowed) {
        *p = if a && l.is_finite() {
            ((l - max) / temp).exp()
        } else {
            0.0
        };
        sum += *p;
    }
    if !(sum > 0.0) {
        // Non-finite logits: fall back to uniform over the allowed set.
        for (p, &a) in probs.iter_mut().zip(allowed) {
            *p = if a { 1.0 } else { 0.0 };
        }
        sum = probs.iter().sum();
    }
    probs.iter_mut().for_each(|p| *p /= sum);
    if cfg.temperature == 0.0 {
        let (tok, &conf) = probs
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .expect("non-empty vocabulary");
        return (tok as u32, conf);
    }
    if cfg.top_p < 1.0 {
        let mut idx: Vec<usize> = (0..probs.len()).filter(|&t| probs[t] > 0.0).collect();
        idx.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]));
        let mut cum = 0f32;
        let mut keep = idx.len();
        for (k, &t) in idx.iter().enumerate() {
            cum += probs[t];
            if cum >= cfg.top_p {
                keep = k + 1;
                break;
            }
        }
        for &t in &idx[keep..] {
            probs[t] = 0.0;
        }
        let s: f32 = probs.iter().sum();
        probs.iter_mut().for_each(|p| *p /= s);
    }
    let mut r: f32 = rng.random();
    let mut last = 0;
    for (t, &p) in probs.iter().enumerate() {
        if p > 0.0 {
            last = t;
            if r < p {
                return (t as u32, p);
            }
            r -= p;
        }
    }
    (last as u32, probs[last])
}
