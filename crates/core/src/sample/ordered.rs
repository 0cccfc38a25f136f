//! The decoding loop of [`CommitPolicy::Ordered`]: fixed groups of `per_step` positions in
//! the ordered objective's order, each call feeding the previous group's tokens as clean
//! content (causal in commit order, so their cached keys and values are final) and querying
//! the next group.

use burn::prelude::*;

use super::{
    allowed_at, extend_to, finish_block, int_tensor, pick, to_vec, CommitPolicy, Decoder,
    SampleError, SampleStats, SamplerConfig, StepView,
};
use crate::cache::{KvCache, LayerKv};
use crate::constraint::Constraint;
use crate::mask;
use crate::model::ForwardInput;
use crate::tokenizer::MASK;
use rand::rngs::StdRng;

/// The per-request state the loop updates (owned by `sample_inner`).
pub(super) struct OrderedRun<'s> {
    pub seqs: &'s mut Vec<Vec<u32>>,
    pub done: &'s mut Vec<bool>,
    pub ended: &'s mut Vec<bool>,
    pub rngs: &'s mut Vec<StdRng>,
    pub commit_steps: &'s mut Vec<Vec<u32>>,
    pub stats: &'s mut SampleStats,
    pub allowed: &'s mut Vec<bool>,
    pub probs: &'s mut Vec<f32>,
}

/// Logits of request `i` at query `q` of a call with `width` queries (guidance applied).
type LogitRow<'f> = &'f dyn Fn(&[f32], usize, usize, usize) -> Vec<f32>;

impl OrderedRun<'_> {
    /// Decodes every block. Without the cache (`use_cache = false`) every call recomputes the
    /// prompt and all committed tokens in commit order: the reference the cache must equal.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn decode<B: Backend>(
        &mut self,
        dec: &mut Decoder<'_, B>,
        (per_step, stripes): (usize, usize),
        n_blocks: usize,
        constraint: &dyn Constraint,
        cfg: &SamplerConfig,
        observe: &mut dyn FnMut(&StepView<'_>),
        logit_row: LogitRow<'_>,
    ) -> Result<(), SampleError> {
        debug_assert!(matches!(cfg.policy, CommitPolicy::Ordered { .. }));
        let (n, b, prompt_len) = (dec.n, dec.b, dec.prompt_len);
        let order = mask::ordered_order(b, stripes);
        let prompt_rows = dec.pending.clone().unwrap_or_default();
        // Committed positions (indices into `seqs[i]`) not yet in the cache, and all of them
        // in commit order (for the reference without a cache).
        let mut fresh: Vec<usize> = Vec::new();
        let mut history: Vec<usize> = Vec::new();
        for blk in 0..n_blocks {
            if self.done.iter().all(|&d| d) {
                break;
            }
            let seq_off = prompt_len + blk * b;
            extend_to(self.seqs, self.done, seq_off + b);
            for (step, group) in order.chunks(per_step).enumerate() {
                let queries: Vec<usize> = group.iter().map(|&p| seq_off + p).collect();
                let logits = if cfg.use_cache {
                    dec.ordered_call(self.seqs, &fresh, &queries)
                } else {
                    dec.ordered_reference(self.seqs, &prompt_rows, &history, &queries)
                };
                observe(&StepView {
                    block: blk,
                    sequences: self.seqs,
                    logits: &logits,
                    queried: Some(group),
                });
                for i in (0..n).filter(|&i| !self.done[i]) {
                    // Each token is drawn under the constraint given everything committed so
                    // far, this group's earlier tokens included, so rows stay in lock-step
                    // (every row commits the same positions) and no commit is ever skipped.
                    for (q, &pos) in queries.iter().enumerate() {
                        let row = logit_row(&logits, i, q, group.len());
                        allowed_at(&self.seqs[i], pos, constraint, self.allowed, i)?;
                        let (tok, _) = pick(&row, self.allowed, cfg, self.probs, &mut self.rngs[i]);
                        self.seqs[i][pos] = tok;
                        self.commit_steps[i][pos - prompt_len] = step as u32;
                        self.stats.tokens += 1;
                    }
                }
                history.extend_from_slice(&queries);
                fresh = queries;
            }
            finish_block(
                self.seqs,
                self.done,
                self.ended,
                prompt_len,
                seq_off + b,
                cfg,
            );
        }
        Ok(())
    }
}

impl<B: Backend> Decoder<'_, B> {
    /// One cached call of the ordered policy: the prompt (and condition) on the first call,
    /// then the `content` positions committed since the last call, in commit order, then a
    /// `MASK` query at each of `queries` (indices into `seqs[r]`). The content enters the
    /// cache; returns the queries' logits `[rows, queries, vocab]`.
    fn ordered_call(
        &mut self,
        seqs: &[Vec<u32>],
        content: &[usize],
        queries: &[usize],
    ) -> Vec<f32> {
        let prompt = self.pending.take();
        let with_cond = self.cond_pending && self.has_cond;
        self.cond_pending = false;
        self.pending_spans.clear();
        let (logits, kvs, clean) = self.ordered_forward(
            seqs,
            prompt.as_deref(),
            with_cond,
            content,
            queries,
            &self.cache,
        );
        self.cache.append(&kvs, 0, clean);
        self.nfe += 1;
        logits
    }

    /// The reference of [`Self::ordered_call`]: no cache, the prompt and every committed
    /// position of `history` (commit order) recomputed.
    fn ordered_reference(
        &mut self,
        seqs: &[Vec<u32>],
        prompt: &[Vec<u32>],
        history: &[usize],
        queries: &[usize],
    ) -> Vec<f32> {
        let prompt = (!prompt.is_empty()).then_some(prompt);
        let (logits, _, _) = self.ordered_forward(
            seqs,
            prompt,
            self.has_cond,
            history,
            queries,
            &KvCache::new(),
        );
        self.nfe += 1;
        logits
    }

    /// The forward pass of an ordered call over `cache`. Returns the queries' logits, the
    /// call's keys and values, and how many of their positions (condition, prompt, content)
    /// are clean and belong in the cache.
    fn ordered_forward(
        &self,
        seqs: &[Vec<u32>],
        prompt: Option<&[Vec<u32>]>,
        with_cond: bool,
        content: &[usize],
        queries: &[usize],
        cache: &KvCache<B>,
    ) -> (Vec<f32>, Vec<LayerKv<B>>, usize) {
        let (n, rows) = (self.n, self.rows);
        let p_len = prompt.map_or(0, |p| p[0].len());
        let width = p_len + content.len() + queries.len();
        let mut toks = Vec::with_capacity(rows * width);
        for r in 0..rows {
            if let Some(p) = prompt {
                toks.extend_from_slice(&p[r]);
            }
            toks.extend(content.iter().map(|&x| seqs[r % n][x]));
            toks.extend(std::iter::repeat_n(MASK, queries.len()));
        }
        // A `seqs` index `x` sits at absolute position `cond_len + x`.
        let at = |x: usize| self.cond_len + x;
        let mut positions: Vec<usize> = (0..p_len).map(at).collect();
        positions.extend(content.iter().map(|&x| at(x)));
        positions.extend(queries.iter().map(|&x| at(x)));
        let ctx = p_len + if with_cond { self.cond_len } else { 0 };
        let q = ctx + content.len() + queries.len();
        let cached = cache.len();
        let (cond, cond_drop) = self.cond_input(with_cond);
        let input = ForwardInput {
            tokens: int_tensor::<B>(&toks, rows, width, self.device),
            positions,
            cond,
            cond_drop,
            mask: Some(mask::MaskTable::new(
                mask::ordered_call_mask_data(cached, ctx, content.len(), queries.len()),
                q,
                cached + q,
            )),
            request_features: self.req_t.clone(),
        };
        let (logits, kvs) =
            self.model
                .forward_range(input, Some(cache), p_len + content.len(), queries.len());
        (to_vec(logits), kvs, ctx + content.len())
    }
}
