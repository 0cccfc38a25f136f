//! Unbounded block-by-block generation with a sliding window over the KV cache.
//!
//! [`crate::sample::sample`] makes sequences of a known maximum length. A stream (music,
//! a long robot episode) has no end: [`BlockStream`] yields one finished block per call,
//! keeps the K/V of at most `window` earlier tokens and drops the oldest whole blocks when
//! the window is full. RoPE makes attention depend only on relative positions, so a stream
//! that has run for an hour attends to its last `window` tokens exactly as a fresh sequence of
//! `window` tokens does (the positions themselves keep growing; RoPE angles are computed in
//! f64, see [`crate::model::Rope`]). Checked against a full recompute in the tests.

use burn::prelude::*;
use rand::rngs::StdRng;
use rand::SeedableRng;

use crate::cache::KvCache;
use crate::constraint::Constraint;
use crate::error::SampleError;
use crate::mask;
use crate::model::{BlockDiffusionConfig, BlockDiffusionModel, ForwardInput};
use crate::sample::{
    allowed_at, allowed_span, commit_step, int_tensor, masked_in_block, SamplerConfig, StepScratch,
};
use crate::tokenizer::MASK;

/// Counters of a stream so far.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StreamStats {
    /// Model calls, prompt prefill included.
    pub nfe: usize,
    /// Tokens generated.
    pub tokens: usize,
    /// Blocks generated.
    pub blocks: usize,
}

/// A never-ending block sampler for one sequence (no continuous condition, no CFG).
///
/// The constraint sees the recent tokens only: the stream keeps the last `window` tokens (plus
/// the current block) and trims its token history in whole blocks, so a constraint that
/// depends on the absolute position must be periodic with a period dividing the block size
/// (e.g. "slot `pos % frame_len` of an audio frame" with blocks of whole frames).
pub struct BlockStream<'a, B: Backend> {
    model: &'a BlockDiffusionModel<B>,
    constraint: &'a dyn Constraint,
    cfg: SamplerConfig,
    window: usize,
    vocab: usize,
    device: B::Device,
    cache: KvCache<B>,
    /// Finished tokens whose K/V are not in the cache yet (the last block).
    pending: Vec<u32>,
    /// Recent tokens (constraint context); `seq[0]` is token number `trimmed`.
    seq: Vec<u32>,
    trimmed: usize,
    /// Absolute position of the next generated token.
    next_pos: usize,
    rng: StdRng,
    allowed: Vec<bool>,
    probs: Vec<f32>,
    stats: StreamStats,
}

impl<'a, B: Backend> BlockStream<'a, B> {
    /// Starts a stream after `prompt` (may be empty). The prompt is prefilled in chunks of the
    /// block size (the first chunk takes the remainder), matching the block-causal attention the
    /// model was trained with. `window` is the most tokens of context kept (cache plus the block
    /// being decoded); it must hold at least two blocks and not exceed the model's `max_len`.
    pub fn new(
        model: &'a BlockDiffusionModel<B>,
        model_cfg: &BlockDiffusionConfig,
        constraint: &'a dyn Constraint,
        cfg: SamplerConfig,
        window: usize,
        prompt: &[u32],
        device: &B::Device,
    ) -> Result<Self, SampleError> {
        let b = cfg.block_size;
        if b == 0 {
            return Err(SampleError::Config("block_size must be > 0".into()));
        }
        if window < 2 * b || window > model_cfg.max_len {
            return Err(SampleError::Config(format!(
                "window {window} must hold at least two blocks of {b} and at most the model's max_len {}",
                model_cfg.max_len
            )));
        }
        if model_cfg.cond_dim > 0 {
            return Err(SampleError::Config(
                "streams do not take continuous conditions".into(),
            ));
        }
        let vocab = model_cfg.vocab_size;
        if let Some((i, &t)) = prompt
            .iter()
            .enumerate()
            .find(|(_, &t)| t as usize >= vocab || t == MASK)
        {
            return Err(SampleError::Request {
                index: 0,
                message: format!("prompt token {t} at {i} is MASK or outside vocabulary {vocab}"),
            });
        }
        let mut s = Self {
            model,
            constraint,
            rng: StdRng::seed_from_u64(cfg.seed),
            cfg,
            window,
            vocab,
            device: device.clone(),
            cache: KvCache::new(),
            pending: Vec::new(),
            seq: Vec::new(),
            trimmed: 0,
            next_pos: 0,
            allowed: vec![true; vocab],
            probs: vec![0.0; vocab],
            stats: StreamStats::default(),
        };
        // Only the last window's worth of the prompt can ever be attended to.
        let keep = prompt.len().min(window - b);
        let prompt = &prompt[prompt.len() - keep..];
        let first = match prompt.len() % b {
            0 => b,
            r => r,
        };
        let mut at = 0;
        while at < prompt.len() {
            let len = if at == 0 { first } else { b };
            let chunk = &prompt[at..at + len];
            // Each chunk sees the cache and itself: block-causal prefill.
            let input = ForwardInput {
                tokens: int_tensor::<B>(chunk, 1, len, device),
                positions: (s.next_pos..s.next_pos + len).collect(),
                cond: None,
                cond_drop: None,
                request_features: None,
                mask: None,
            };
            let (_, kvs) = s.model.forward_range(input, Some(&s.cache), 0, 1);
            s.cache.append(&kvs, 0, len);
            s.stats.nfe += 1;
            s.next_pos += len;
            at += len;
        }
        s.seq = prompt.to_vec();
        Ok(s)
    }

    /// Counters so far.
    pub fn stats(&self) -> &StreamStats {
        &self.stats
    }

    /// Absolute index of the next generated token (prompt tokens count).
    pub fn position(&self) -> usize {
        self.next_pos
    }

    /// Tokens of context currently cached (for tests and reports).
    pub fn cached(&self) -> usize {
        self.cache.len()
    }

    /// Decodes the next block and returns its tokens.
    pub fn next_block(&mut self) -> Result<Vec<u32>, SampleError> {
        let b = self.cfg.block_size;
        // Make room: cache + the pending block + the new block must fit the window.
        let budget = self.window - self.pending.len() - b;
        if self.cache.len() > budget {
            self.cache.evict_to(budget / b * b, 0);
        }
        // The constraint's context: trim the history in whole blocks.
        if self.seq.len() > self.window {
            let drop = (self.seq.len() - self.window).div_ceil(b) * b;
            let drop = drop.min(self.seq.len());
            self.seq.drain(..drop);
            self.trimmed += drop;
        }
        let seq_off = self.seq.len();
        self.seq.extend(std::iter::repeat_n(MASK, b));
        loop {
            let clean = self.pending.len();
            let mut toks = std::mem::take(&mut self.pending);
            toks.extend_from_slice(&self.seq[seq_off..]);
            let start = self.next_pos - clean;
            let input = ForwardInput {
                tokens: int_tensor::<B>(&toks, 1, clean + b, &self.device),
                positions: (start..self.next_pos + b).collect(),
                cond: None,
                cond_drop: None,
                request_features: None,
                mask: (clean > 0).then(|| {
                    mask::MaskTable::new(
                        mask::append_mask_data(self.cache.len(), clean, b),
                        clean + b,
                        self.cache.len() + clean + b,
                    )
                }),
            };
            // Logits only where the block is still masked, over the ids the constraint allows
            // there (the same sets `commit_step` computes from the same tokens): the rest of
            // the head is never read.
            let rows = masked_in_block(&self.seq, seq_off, b);
            let mut spans = Vec::with_capacity(rows.len());
            for &p in &rows {
                allowed_at(
                    &self.seq,
                    seq_off + p,
                    self.constraint,
                    &mut self.allowed,
                    0,
                )?;
                spans.push(allowed_span(&self.allowed));
            }
            let (logits, kvs) =
                self.model
                    .forward_spans(input, Some(&self.cache), (clean, b), &rows, &spans);
            if clean > 0 {
                self.cache.append(&kvs, 0, clean);
            }
            self.stats.nfe += 1;
            let vocab = self.vocab;
            let row = |p: usize| logits[p * vocab..(p + 1) * vocab].to_vec();
            let committed = commit_step(
                &mut self.seq,
                seq_off,
                b,
                row,
                self.constraint,
                &self.cfg,
                &mut StepScratch {
                    allowed: &mut self.allowed,
                    probs: &mut self.probs,
                    rng: &mut self.rng,
                },
                0,
            )?;
            self.stats.tokens += committed.len();
            if !self.seq[seq_off..].contains(&MASK) {
                break;
            }
        }
        let block = self.seq[seq_off..].to_vec();
        self.pending = block.clone();
        self.next_pos += b;
        self.stats.blocks += 1;
        Ok(block)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::constraint::Unconstrained;
    use crate::sample::{to_vec, CommitPolicy};
    use crate::CpuBackend;

    fn tiny() -> (BlockDiffusionConfig, BlockDiffusionModel<CpuBackend>) {
        let cfg = BlockDiffusionConfig::new(24)
            .with_d_model(32)
            .with_n_layers(2)
            .with_n_heads(2)
            .with_max_len(64);
        let device = Default::default();
        let model = cfg.init::<CpuBackend>(&device);
        (cfg, model)
    }

    /// The span-restricted head computes exactly the full head's logits on each row's span
    /// and nothing elsewhere; rows not asked for stay `-∞`.
    #[test]
    fn span_logits_equal_the_full_head_on_the_span() {
        let (_, model) = tiny();
        let device = Default::default();
        let toks: Vec<u32> = vec![5, 9, 3, 7, MASK, 11, MASK, MASK];
        let input = || ForwardInput {
            tokens: int_tensor::<CpuBackend>(&toks, 1, 8, &device),
            positions: (0..8).collect(),
            cond: None,
            cond_drop: None,
            request_features: None,
            mask: None,
        };
        let (full, kv_full) = model.forward_range(input(), None, 4, 4);
        let full = to_vec(full);
        let rows = [0usize, 2, 3];
        let spans = [2..10, 10..24, 2..10];
        let (part, kv_part) = model.forward_spans(input(), None, (4, 4), &rows, &spans);
        let vocab = 24;
        assert_eq!(part.len(), 4 * vocab);
        for r in 0..4 {
            for t in 0..vocab {
                let got = part[r * vocab + t];
                match rows.iter().position(|&x| x == r) {
                    Some(i) if spans[i].contains(&t) => {
                        let want = full[r * vocab + t];
                        assert!(
                            (got - want).abs() <= 1e-5,
                            "row {r} id {t}: {got} vs {want}"
                        );
                    }
                    _ => assert_eq!(got, f32::NEG_INFINITY, "row {r} id {t}"),
                }
            }
        }
        // Same K/V: the cache a stream keeps does not depend on which head ran.
        for (a, b) in kv_full.iter().zip(&kv_part) {
            let (ka, kb) = (a.k.clone().into_data(), b.k.clone().into_data());
            assert_eq!(ka, kb);
        }
    }

    /// What the sliding cache computes, written as one full-sequence mask: a clean block's K/V
    /// were made seeing the `window/b - 1` blocks up to itself, the block being decoded sees
    /// `window/b` blocks. Greedy streaming must equal greedy decoding of the last block under
    /// this banded mask without any cache.
    #[test]
    fn sliding_window_cache_matches_banded_recompute() {
        let (mcfg, model) = tiny();
        let device = Default::default();
        let b = 4;
        let window = 12;
        let cfg = SamplerConfig {
            block_size: b,
            policy: CommitPolicy::TopK { k: 2 },
            temperature: 0.0,
            ..SamplerConfig::default()
        };
        let prompt: Vec<u32> = (5..17).collect();
        let mut stream = BlockStream::new(
            &model,
            &mcfg,
            &Unconstrained,
            cfg.clone(),
            window,
            &prompt,
            &device,
        )
        .unwrap();
        let mut all = prompt[prompt.len() - (window - b)..].to_vec();
        for _ in 0..6 {
            let block = stream.next_block().unwrap();
            assert_eq!(block.len(), b);
            assert!(stream.cached() + b <= window);
            all.extend_from_slice(&block);
        }
        let n = all.len();
        let ctx = &all[..n - b];
        let block = &all[n - b..];
        let last = n / b - 1;
        let mut blocked = vec![false; n * n];
        for q in 0..n {
            let (qb, span) = (
                q / b,
                if q / b == last {
                    window / b
                } else {
                    window / b - 1
                },
            );
            for k in 0..n {
                let kb = k / b;
                blocked[q * n + k] = !(kb <= qb && qb - kb < span);
            }
        }
        let mut cur = vec![MASK; b];
        while cur.contains(&MASK) {
            let mut toks = ctx.to_vec();
            toks.extend_from_slice(&cur);
            let input = ForwardInput {
                tokens: int_tensor::<CpuBackend>(&toks, 1, n, &device),
                positions: (0..n).collect(),
                cond: None,
                cond_drop: None,
                request_features: None,
                mask: Some(mask::MaskTable::new(blocked.clone(), n, n)),
            };
            let (logits, _) = model.forward_range(input, None, n - b, b);
            let logits = to_vec(logits);
            let vocab = mcfg.vocab_size;
            let mut best: Vec<(usize, u32, f32)> = (0..b)
                .filter(|&p| cur[p] == MASK)
                .map(|p| {
                    let (t, conf) = argmax_prob(&logits[p * vocab..(p + 1) * vocab]);
                    (p, t, conf)
                })
                .collect();
            best.sort_by(|a, c| c.2.total_cmp(&a.2));
            for &(p, t, _) in best.iter().take(2) {
                cur[p] = t;
            }
        }
        assert_eq!(cur, block);
        assert_eq!(stream.stats().blocks, 6);
        assert_eq!(stream.position(), n);
    }

    fn argmax_prob(row: &[f32]) -> (u32, f32) {
        let allowed: Vec<usize> = (0..row.len()).filter(|&t| t != 0 && t != 1).collect();
        let max = allowed
            .iter()
            .map(|&t| row[t])
            .fold(f32::NEG_INFINITY, f32::max);
        let sum: f32 = allowed.iter().map(|&t| (row[t] - max).exp()).sum();
        let &t = allowed
            .iter()
            .max_by(|&&a, &&c| row[a].total_cmp(&row[c]))
            .unwrap();
        (t as u32, 1.0 / sum)
    }

    #[test]
    fn bad_window_and_prompt_are_errors() {
        let (mcfg, model) = tiny();
        let device = Default::default();
        let cfg = SamplerConfig::default();
        assert!(
            BlockStream::new(&model, &mcfg, &Unconstrained, cfg.clone(), 8, &[], &device).is_err()
        );
        assert!(BlockStream::new(
            &model,
            &mcfg,
            &Unconstrained,
            cfg.clone(),
            128,
            &[],
            &device
        )
        .is_err());
        assert!(BlockStream::new(&model, &mcfg, &Unconstrained, cfg, 32, &[99], &device).is_err());
    }
}
