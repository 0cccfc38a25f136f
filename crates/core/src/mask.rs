//! Attention masks (true = blocked), built once per shape on the CPU.
//!
//! Notation: `C` clean context positions (condition vectors and prompt tokens) come first,
//! then the sequence of `L` tokens split into blocks of `b`.

use burn::prelude::*;

/// The BD3-LM training mask over `[context (C) ⊕ x_t (L) ⊕ x_0 (L)]`:
/// - context attends to context;
/// - `x_t` block `i` attends to the context, to itself (block-diagonal), and to `x_0` blocks
///   `< i` (offset block-causal);
/// - `x_0` block `i` attends to the context and to `x_0` blocks `≤ i` (block-causal).
pub fn training_mask_data(context: usize, len: usize, block: usize) -> Vec<bool> {
    let n = context + 2 * len;
    let mut allowed = vec![false; n * n];
    let blk = |p: usize| p / block;
    for q in 0..n {
        for k in 0..n {
            let ok = if k < context {
                true
            } else if q < context {
                false
            } else {
                let (q_clean, qi) = if q < context + len {
                    (false, q - context)
                } else {
                    (true, q - context - len)
                };
                let (k_clean, ki) = if k < context + len {
                    (false, k - context)
                } else {
                    (true, k - context - len)
                };
                match (q_clean, k_clean) {
                    (false, false) => blk(qi) == blk(ki),
                    (false, true) => blk(ki) < blk(qi),
                    (true, false) => false,
                    (true, true) => blk(ki) <= blk(qi),
                }
            };
            allowed[q * n + k] = ok;
        }
    }
    allowed.into_iter().map(|a| !a).collect()
}

/// The inference mask over `[context (C) ⊕ tokens (L)]`: bidirectional inside a block,
/// causal across blocks; the context is visible to all and sees only itself. This is what the
/// KV-cached sampler computes incrementally, so it is the cache's exactness reference.
pub fn block_causal_mask_data(context: usize, len: usize, block: usize) -> Vec<bool> {
    let n = context + len;
    let mut blocked = vec![false; n * n];
    for q in 0..n {
        for k in 0..n {
            let ok = if k < context {
                true
            } else if q < context {
                false
            } else {
                (k - context) / block <= (q - context) / block
            };
            blocked[q * n + k] = !ok;
        }
    }
    blocked
}

/// Mask for a sampling pass that appends `clean` positions (a just-finished block) and then
/// `noisy` positions (the next block, all masked) on top of `cached` positions: the clean rows
/// must not see the noisy block, everything else is visible. Shape `[clean+noisy, cached+clean+noisy]`.
pub fn append_mask_data(cached: usize, clean: usize, noisy: usize) -> Vec<bool> {
    append_blocks_mask_data(cached, clean, noisy, 1)
}

/// [`append_mask_data`] with the noisy part made of `blocks` consecutive blocks of `b`,
/// block-causal among them (deferred decoding's look-ahead). Shape
/// `[clean + blocks·b, cached + clean + blocks·b]`.
pub fn append_blocks_mask_data(cached: usize, clean: usize, b: usize, blocks: usize) -> Vec<bool> {
    append_segments_mask_data(cached, &[clean], b, blocks)
}

/// [`append_blocks_mask_data`] with the clean part made of consecutive `segments` (the prompt,
/// then whole blocks that were finished without a call of their own), block-causal among
/// them: a clean row sees the cache and the clean segments up to and including its own.
pub fn append_segments_mask_data(
    cached: usize,
    segments: &[usize],
    b: usize,
    blocks: usize,
) -> Vec<bool> {
    let clean: usize = segments.iter().sum();
    let q = clean + blocks * b;
    let k = cached + q;
    let mut blocked = vec![false; q * k];
    let mut segment_end = Vec::with_capacity(clean);
    let mut end = 0;
    for &len in segments {
        end += len;
        segment_end.extend(std::iter::repeat_n(end, len));
    }
    for r in 0..q {
        let visible = if r < clean {
            cached + segment_end[r]
        } else {
            cached + clean + ((r - clean) / b + 1) * b
        };
        blocked[r * k + visible..(r + 1) * k]
            .iter_mut()
            .for_each(|x| *x = true);
    }
    blocked
}

/// The self-speculative verifier's mask (S2D2's "2L" mask) for one block of `b` drafted
/// tokens on top of `cached` positions: queries and keys are `[x_t (b, all MASK) ⊕ x_0 (b, the
/// draft)]` after the cache. `x_t` row `i` sees the cache, itself and draft tokens `< i`;
/// `x_0` row `i` sees the cache and draft tokens `≤ i`. That is the block-size-1 training
/// mask, so `x_t` row `i` gives the autoregressive prediction of token `i` given the draft's
/// prefix — every position verified in one model call. Shape `[2b, cached + 2b]`.
pub fn verifier_mask_data(cached: usize, b: usize) -> Vec<bool> {
    let k = cached + 2 * b;
    let mut blocked = vec![true; 2 * b * k];
    for r in 0..2 * b {
        let row = &mut blocked[r * k..(r + 1) * k];
        row[..cached].iter_mut().for_each(|x| *x = false);
        if r < b {
            row[cached + r] = false;
            row[cached + b..cached + b + r]
                .iter_mut()
                .for_each(|x| *x = false);
        } else {
            let i = r - b;
            row[cached + b..cached + b + i + 1]
                .iter_mut()
                .for_each(|x| *x = false);
        }
    }
    blocked
}

/// A `[q, k]` attention mask table (true = blocked), kept on the CPU until a forward pass
/// materialises it at the shape it needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MaskTable {
    /// Row-major entries.
    pub blocked: Vec<bool>,
    /// Query rows.
    pub q: usize,
    /// Key columns.
    pub k: usize,
}

impl MaskTable {
    /// Wraps a row-major table.
    pub fn new(blocked: Vec<bool>, q: usize, k: usize) -> Self {
        assert_eq!(blocked.len(), q * k, "mask table size");
        Self { blocked, q, k }
    }

    /// The additive bias as one `[1, q · k]` row (0 or [`crate::model::BLOCKED`]), which
    /// [`crate::model::scaled_attention`] broadcasts over `batch · heads`.
    pub fn to_bias<B: Backend>(&self, device: &B::Device) -> Tensor<B, 2> {
        let row: Vec<f32> = self
            .blocked
            .iter()
            .map(|&b| if b { crate::model::BLOCKED } else { 0.0 })
            .collect();
        Tensor::<B, 1>::from_floats(row.as_slice(), device).reshape([1, self.q * self.k])
    }
}
