//! The decisions of the newer samplers, one function per rule: self-speculative drafting and
//! verification (S2D2), deferred commitment (DCD), the ARPC corrector and the uniform-state
//! kernel's reverse process with its informed corrector. The model calls are the caller's
//! ([`super::Decoder`]); these functions only read logits and edit one sample's sequence.

use rand::rngs::StdRng;
use rand::Rng;

use super::{
    allowed_at, argmax, commit_confident, draw, fill_probs, masked_in_block, propose, Candidate,
    SampleError, SamplerConfig, SpecRouting, StepScratch,
};
use crate::constraint::Constraint;
use crate::tokenizer::{BOS, MASK, PAD};

/// A drafted run of masked positions and the distributions it was drawn from.
pub(super) struct Draft {
    /// Drafted block positions: the first run of masked positions, ascending.
    positions: Vec<usize>,
    /// Drafted tokens.
    tokens: Vec<u32>,
    /// The draft distribution `p` of each drafted position.
    probs: Vec<Vec<f32>>,
    /// Whether this step pays for verification.
    pub verify: bool,
    /// Proposals over all masked positions for an unverified step's threshold rule.
    cands: Vec<Candidate>,
    /// Threshold of the unverified rule.
    tau: f32,
}

impl Draft {
    /// The block with the draft filled in.
    pub fn filled(&self, seq: &[u32], seq_off: usize, b: usize) -> Vec<u32> {
        let mut blk = seq[seq_off..seq_off + b].to_vec();
        for (&p, &t) in self.positions.iter().zip(&self.tokens) {
            blk[p] = t;
        }
        blk
    }
}

/// Drafts the block's first run of masked positions left to right — each token drawn from the
/// diffusion prediction restricted by the constraint given the draft to its left, so the draft
/// is valid and `p` is exactly the distribution each token was drawn from — and decides
/// whether to verify ([`SpecRouting`]).
#[allow(clippy::too_many_arguments)]
pub(super) fn draft(
    seq: &mut [u32],
    seq_off: usize,
    b: usize,
    row: impl Fn(usize) -> Vec<f32>,
    constraint: &dyn Constraint,
    cfg: &SamplerConfig,
    (routing, verifying): (SpecRouting, &mut bool),
    scratch: &mut StepScratch<'_>,
    sample_index: usize,
) -> Result<Draft, SampleError> {
    let masked = masked_in_block(seq, seq_off, b);
    let mut d = Draft {
        positions: Vec::new(),
        tokens: Vec::new(),
        probs: Vec::new(),
        verify: false,
        cands: Vec::new(),
        tau: 1.0,
    };
    let Some(&first) = masked.first() else {
        return Ok(d);
    };
    let greedy = cfg.temperature == 0.0;
    let run = (first..b).take_while(|&p| seq[seq_off + p] == MASK).count();
    for p in first..first + run {
        let pos = seq_off + p;
        allowed_at(seq, pos, constraint, scratch.allowed, sample_index)?;
        fill_probs(&row(p), scratch.allowed, cfg, scratch.probs);
        let tok = if greedy {
            argmax(scratch.probs)
        } else {
            draw(scratch.probs, scratch.rng)
        };
        seq[pos] = tok; // visible to the constraint of the next drafted position
        d.positions.push(p);
        d.tokens.push(tok);
        d.probs.push(scratch.probs.to_vec());
    }
    for &p in &d.positions {
        seq[seq_off + p] = MASK;
    }
    // S2D2's expected accepted length: `α_i = exp(−H_i / ln V)`, `E[K] = Σ_k Π_{i≤k} α_i`.
    let expected_accepted = |probs: &[Vec<f32>], vocab: usize| {
        let ln_v = (vocab as f32).ln().max(f32::MIN_POSITIVE);
        let mut expected = 0f32;
        let mut run = 1f32;
        for p in probs {
            let h: f32 = p.iter().filter(|&&x| x > 0.0).map(|&x| -x * x.ln()).sum();
            run *= (-h / ln_v).exp();
            expected += run;
        }
        expected
    };
    let vocab = scratch.allowed.len();
    // Proposals over all masked positions only where they are used: the dynamic rule counts
    // them, and an unverified step commits from them.
    let mut proposals = || {
        propose(
            seq,
            seq_off,
            &masked,
            &row,
            constraint,
            cfg,
            scratch,
            sample_index,
        )
    };
    match routing {
        SpecRouting::Always => d.verify = true,
        SpecRouting::Hysteresis { cost, on, off, tau } => {
            let score = expected_accepted(&d.probs, vocab) - cost;
            *verifying = score >= if *verifying { off } else { on };
            d.verify = *verifying;
            if !d.verify {
                d.cands = proposals()?;
            }
            d.tau = tau;
        }
        SpecRouting::Score { cost, dynamic, tau } => {
            let expected = expected_accepted(&d.probs, vocab);
            if dynamic {
                d.cands = proposals()?;
                let confident = d.cands.iter().filter(|c| c.2 >= tau).count();
                d.verify = expected - cost * confident as f32 >= 0.0;
            } else {
                d.verify = expected - cost >= 0.0;
                if !d.verify {
                    d.cands = proposals()?;
                }
            }
            d.tau = tau;
        }
    }
    Ok(d)
}

/// Verifies a draft against the block-size-1 predictions `ver_row(p)` (the AR distribution `q`
/// given the draft to the left): accepts left to right with probability `min(1, q/p)` and
/// replaces the first rejected token by a draw from `normalise((q − p)+)`. Greedy decoding
/// accepts while the arg-maxes agree and takes `q`'s arg-max at the first disagreement.
/// Returns the committed block positions.
pub(super) fn accept(
    seq: &mut [u32],
    seq_off: usize,
    d: &Draft,
    ver_row: impl Fn(usize) -> Vec<f32>,
    constraint: &dyn Constraint,
    cfg: &SamplerConfig,
    scratch: &mut StepScratch<'_>,
) -> Vec<usize> {
    let greedy = cfg.temperature == 0.0;
    let mut committed = Vec::with_capacity(d.positions.len());
    for (k, &p) in d.positions.iter().enumerate() {
        let pos = seq_off + p;
        if allowed_at(seq, pos, constraint, scratch.allowed, 0).is_err() {
            break; // cannot happen for a valid draft; leave the rest masked
        }
        fill_probs(&ver_row(p), scratch.allowed, cfg, scratch.probs);
        let q = &mut *scratch.probs;
        let (tok, draft_p) = (d.tokens[k], &d.probs[k]);
        let accepted = if greedy {
            argmax(q) == tok
        } else {
            let u: f32 = scratch.rng.random();
            u * draft_p[tok as usize] < q[tok as usize]
        };
        committed.push(p);
        if accepted {
            seq[pos] = tok;
            continue;
        }
        seq[pos] = if greedy {
            argmax(q)
        } else {
            let mut mass = 0f32;
            let residual: Vec<f32> = q
                .iter()
                .zip(draft_p)
                .map(|(&a, &b)| {
                    let r = (a - b).max(0.0);
                    mass += r;
                    r
                })
                .collect();
            if mass > 0.0 {
                q.iter_mut()
                    .zip(&residual)
                    .for_each(|(x, &r)| *x = r / mass);
            }
            draw(q, scratch.rng)
        };
        break;
    }
    committed
}

/// An unverified step of score routing: the threshold rule over all masked positions.
pub(super) fn commit_unverified(
    seq: &mut [u32],
    seq_off: usize,
    d: &Draft,
    constraint: &dyn Constraint,
    vocab: usize,
) -> Vec<usize> {
    commit_confident(seq, seq_off, &d.cands, d.tau, 1, constraint, vocab)
}

fn is_masked(seq: &[u32], q: usize) -> bool {
    q >= seq.len() || seq[q] == MASK
}

/// One deferred-commitment step (see [`super::CommitPolicy::Deferred`]). `span` block positions from
/// `seq_off` have logits (`row(p)`), `limit` is the first index the window may never reach,
/// `right` the window's right edge kept between steps. Returns the committed positions
/// relative to `seq_off` (they may lie in the next block).
#[allow(clippy::too_many_arguments)]
pub(super) fn deferred(
    seq: &mut [u32],
    seq_off: usize,
    span: usize,
    limit: usize,
    right: &mut Option<usize>,
    (tau, window, max_window): (f32, usize, usize),
    row: impl Fn(usize) -> Vec<f32>,
    constraint: &dyn Constraint,
    cfg: &SamplerConfig,
    scratch: &mut StepScratch<'_>,
    sample_index: usize,
) -> Result<Vec<usize>, SampleError> {
    let end = seq_off + span;
    let Some(l) = (seq_off..end).find(|&q| seq[q] == MASK) else {
        return Ok(Vec::new());
    };
    let r = right
        .unwrap_or(l + window)
        .min(l + max_window)
        .min(limit)
        .max(l + 1);
    let positions: Vec<usize> = (l..r.min(end))
        .filter(|&q| seq[q] == MASK)
        .map(|q| q - seq_off)
        .collect();
    let cands = propose(
        seq,
        seq_off,
        &positions,
        row,
        constraint,
        cfg,
        scratch,
        sample_index,
    )?;
    let vocab = scratch.allowed.len();
    let committed = commit_confident(seq, seq_off, &cands, tau, 1, constraint, vocab);
    // Slide: the window again holds `window` masks, starting at the new leftmost mask.
    let l2 = (l..limit).find(|&q| is_masked(seq, q)).unwrap_or(limit);
    let remaining = (l2..r).filter(|&q| is_masked(seq, q)).count();
    let grown = (r + window.saturating_sub(remaining))
        .min(l2 + max_window)
        .min(limit);
    *right = Some(grown.max(l2 + 1).max(r.min(limit)));
    Ok(committed)
}

/// ARPC's re-noising of a complete block: scores every token by its probability under the AR
/// mode (`ver_row(p)`, block-size-1 logits given the block to its left, restricted to what the
/// constraint allows there) and re-masks the `remask` least likely ones below `max_prob`. A
/// re-masked token stays a valid choice for its position, so decoding it again cannot dead-end.
/// Returns how many were re-masked.
#[allow(clippy::too_many_arguments)]
pub(super) fn arpc_remask(
    seq: &mut [u32],
    seq_off: usize,
    b: usize,
    ver_row: impl Fn(usize) -> Vec<f32>,
    (remask, max_prob): (usize, f32),
    constraint: &dyn Constraint,
    probs: &mut [f32],
    allowed: &mut [bool],
) -> usize {
    let unit = SamplerConfig {
        temperature: 1.0,
        top_p: 1.0,
        ..SamplerConfig::default()
    };
    let mut scored: Vec<(f32, usize)> = Vec::new();
    for p in 0..b {
        let pos = seq_off + p;
        let tok = seq[pos];
        if tok == PAD || tok == MASK {
            continue;
        }
        seq[pos] = MASK;
        let ok = allowed_at(seq, pos, constraint, allowed, 0).is_ok();
        seq[pos] = tok;
        if !ok {
            continue;
        }
        fill_probs(&ver_row(p), allowed, &unit, probs);
        if probs[tok as usize] < max_prob {
            scored.push((probs[tok as usize], p));
        }
    }
    scored.sort_by(|a, b| a.0.total_cmp(&b.0));
    scored.truncate(remask);
    for &(_, p) in &scored {
        seq[seq_off + p] = MASK;
    }
    scored.len()
}

/// What a uniform-state block needs besides the model.
pub(super) struct BlockState<'a> {
    pub seqs: &'a mut Vec<Vec<u32>>,
    pub done: &'a [bool],
    pub rngs: &'a mut [StdRng],
    pub seq_off: usize,
    pub constraint: &'a dyn Constraint,
    pub cfg: &'a SamplerConfig,
    pub vocab: usize,
}

/// The step plan of [`CommitPolicy::Uniform`].
pub(super) struct UniformPlan {
    pub steps: usize,
    pub corrector_k: usize,
    pub corrector_rounds: usize,
}

/// The token ids uniform noise draws from: everything but `MASK` and `BOS`.
pub fn uniform_noise_ids(vocab: usize) -> Vec<u32> {
    (0..vocab as u32)
        .filter(|&t| t != MASK && t != BOS)
        .collect()
}

/// Decodes one block with the uniform-state kernel ([`super::CommitPolicy::Uniform`]) (linear schedule `α_t = 1 − t`). The model's
/// output is the leave-one-out denoiser `x̂ = p(x₀ⁱ | x_t^{−i})`, so the reverse step is the
/// exact bridge posterior
/// `q(x_s = v | x_t, x̂) ∝ (α_t/α_s·[v = x_t] + (1 − α_t/α_s)/K) · (α_s·x̂_v + (1 − α_s)/K)`.
/// Intermediate steps restrict `x̂` to what the constraint allows given the finished blocks;
/// the last step (`α_s = 1`) goes left to right, each token restricted given its final left
/// neighbours, so every committed token is valid. Between steps the informed corrector
/// resamples the positions with the lowest log-margin under
/// `p(xⁱ | x^{−i}) = α_s·x̂ + (1 − α_s)/K` (Gumbel-top-k, Hogwild: all from one call).
pub(super) fn uniform_block(
    st: &mut BlockState<'_>,
    plan: &UniformPlan,
    call: &mut impl FnMut(&[Vec<u32>]) -> Vec<f32>,
    row: &impl Fn(&[f32], usize, usize, usize) -> Vec<f32>,
) -> Result<(), SampleError> {
    let b = st.cfg.block_size;
    let n = st.done.len();
    let noise = uniform_noise_ids(st.vocab);
    let k_noise = noise.len() as f32;
    let live: Vec<usize> = (0..n).filter(|&i| !st.done[i]).collect();
    // Allowed sets given the finished blocks only (the block itself still undecided).
    let mut ctx_allowed: Vec<Vec<Vec<bool>>> = vec![Vec::new(); n];
    let mut allowed = vec![true; st.vocab];
    for &i in &live {
        for p in 0..b {
            allowed_at(&st.seqs[i], st.seq_off + p, st.constraint, &mut allowed, i)?;
            ctx_allowed[i].push(allowed.clone());
        }
        for p in 0..b {
            st.seqs[i][st.seq_off + p] = noise[st.rngs[i].random_range(0..noise.len())];
        }
    }
    let mut probs = vec![0f32; st.vocab];
    let mut weights = vec![0f32; st.vocab];
    let steps = plan.steps;
    for k in 0..steps {
        let alpha_t = k as f32 / steps as f32;
        let alpha_s = (k + 1) as f32 / steps as f32;
        let last = k + 1 == steps;
        let logits = call(st.seqs);
        for &i in &live {
            let seq = &mut st.seqs[i];
            let rng = &mut st.rngs[i];
            if last {
                // α_s = 1: the posterior of x₀ itself, left to right under the final context.
                let current = seq[st.seq_off..st.seq_off + b].to_vec();
                seq[st.seq_off..st.seq_off + b].fill(MASK);
                for p in 0..b {
                    let pos = st.seq_off + p;
                    allowed_at(seq, pos, st.constraint, &mut allowed, i)?;
                    fill_probs(&row(&logits, i, p, b), &allowed, st.cfg, &mut probs);
                    for (v, w) in weights.iter_mut().enumerate() {
                        let keep =
                            alpha_t * f32::from(v as u32 == current[p]) + (1.0 - alpha_t) / k_noise;
                        *w = keep * probs[v];
                    }
                    seq[pos] = pick_weights(&mut weights, &probs, st.cfg, rng);
                }
            } else {
                let ratio = alpha_t / alpha_s;
                for p in 0..b {
                    let pos = st.seq_off + p;
                    fill_probs(
                        &row(&logits, i, p, b),
                        &ctx_allowed[i][p],
                        st.cfg,
                        &mut probs,
                    );
                    let x_t = seq[pos];
                    for (v, w) in weights.iter_mut().enumerate() {
                        *w = if ctx_allowed[i][p][v] {
                            (ratio * f32::from(v as u32 == x_t) + (1.0 - ratio) / k_noise)
                                * (alpha_s * probs[v] + (1.0 - alpha_s) / k_noise)
                        } else {
                            0.0
                        };
                    }
                    normalise(&mut weights);
                    seq[pos] = draw(&weights, rng);
                }
            }
        }
        if last {
            break;
        }
        for _ in 0..plan.corrector_rounds {
            let logits = call(st.seqs);
            for &i in &live {
                let seq = &mut st.seqs[i];
                let rng = &mut st.rngs[i];
                // Conditional of each position given the others at level s, and its log-margin.
                let mut conds: Vec<Vec<f32>> = Vec::with_capacity(b);
                let mut keys: Vec<(f32, usize)> = Vec::with_capacity(b);
                for p in 0..b {
                    fill_probs(
                        &row(&logits, i, p, b),
                        &ctx_allowed[i][p],
                        st.cfg,
                        &mut probs,
                    );
                    let c: Vec<f32> = probs
                        .iter()
                        .zip(&ctx_allowed[i][p])
                        .map(|(&x, &a)| {
                            if a {
                                alpha_s * x + (1.0 - alpha_s) / k_noise
                            } else {
                                0.0
                            }
                        })
                        .collect();
                    let cur = seq[st.seq_off + p] as usize;
                    let best_other = c
                        .iter()
                        .enumerate()
                        .filter(|&(v, _)| v != cur)
                        .map(|(_, &x)| x)
                        .fold(0f32, f32::max);
                    let score = -(c[cur].max(1e-30).ln() - best_other.max(1e-30).ln());
                    let u: f32 = rng.random::<f32>().clamp(1e-12, 1.0 - 1e-7);
                    keys.push((score - (-u.ln()).ln(), p));
                    conds.push(c);
                }
                keys.sort_by(|a, b| b.0.total_cmp(&a.0));
                for &(_, p) in keys.iter().take(plan.corrector_k) {
                    let c = &mut conds[p];
                    normalise(c);
                    seq[st.seq_off + p] = draw(c, rng);
                }
            }
        }
    }
    Ok(())
}

fn normalise(w: &mut [f32]) {
    let s: f32 = w.iter().sum();
    if s > 0.0 {
        w.iter_mut().for_each(|x| *x /= s);
    }
}

/// Draws from unnormalised `weights` (arg-max when greedy); falls back to `probs` when the
/// weights vanish.
fn pick_weights(weights: &mut [f32], probs: &[f32], cfg: &SamplerConfig, rng: &mut StdRng) -> u32 {
    let s: f32 = weights.iter().sum();
    if !(s > 0.0) {
        weights.copy_from_slice(probs);
    }
    normalise(weights);
    if cfg.temperature == 0.0 {
        argmax(weights)
    } else {
        draw(weights, rng)
    }
}
