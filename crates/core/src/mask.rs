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

/// The ordered decoding order of a block of `b` positions: `order[r]` is the block position
/// committed `r`-th.
/// - `stripes = 0`: the dilated order, positions sorted by their bit-reversed rank
///   ([`crate::sample::dilated_rank`]), so consecutive ones lie far apart;
/// - `stripes = s > 0` (`s` divides `b`): `s` interleaved left-to-right streams over the block's
///   `s` equal segments — the first position of every segment, then the second of every
///   segment, and so on — so `s` consecutive positions of the order lie `b/s` apart and every
///   position is predicted with its left neighbours known; only a segment's last positions
///   see the next segment's start (the one bridge per segment).
pub fn ordered_order(b: usize, stripes: usize) -> Vec<usize> {
    if stripes > 0 {
        let len = b / stripes;
        return (0..len)
            .flat_map(|t| (0..stripes).map(move |j| j * len + t))
            .collect();
    }
    let width = b.next_power_of_two();
    let mut order: Vec<usize> = (0..b).collect();
    order.sort_by_key(|&p| crate::sample::dilated_rank(p, width));
    order
}

/// Each position's index in the ordered objective's global order over `len` positions in
/// blocks of `block`: blocks left to right, inside a block [`ordered_order`].
pub fn ordered_global_rank(len: usize, block: usize, stripes: usize) -> Vec<usize> {
    let order = ordered_order(block, stripes);
    let mut rank = vec![0; len];
    for start in (0..len).step_by(block) {
        for (r, &p) in order.iter().enumerate() {
            if start + p < len {
                rank[start + p] = start + r;
            }
        }
    }
    rank
}

/// The ordered objective's training mask over `[context (C) ⊕ queries (L) ⊕ content (L)]`.
/// Content (the clean tokens) is causal in the global order ([`ordered_global_rank`]): content
/// row `i` sees the context and content `j` with `g(j) ≤ g(i)`, so a token's keys and values
/// never change once it is committed and the sampler caches them exactly. Query row `i` (a
/// `MASK` at position `i`) sees the context, itself, and content `j` with `g(j) < cuts[i]`
/// (`cuts[i] ≤ g(i)`): the prediction of token `i` when the first `cuts[i]` tokens of the
/// order are known. Queries never see each other, so one call predicts a whole group of
/// positions independently given what was committed before it.
pub fn ordered_training_mask_data(
    context: usize,
    len: usize,
    (block, stripes): (usize, usize),
    cuts: &[usize],
) -> Vec<bool> {
    assert_eq!(cuts.len(), len, "one cut per position");
    let g = ordered_global_rank(len, block, stripes);
    let n = context + 2 * len;
    let mut blocked = vec![true; n * n];
    for q in 0..n {
        let row = &mut blocked[q * n..(q + 1) * n];
        row[..context].iter_mut().for_each(|x| *x = false);
        if q < context {
            continue;
        }
        let (is_query, i) = if q < context + len {
            (true, q - context)
        } else {
            (false, q - context - len)
        };
        if is_query {
            row[q] = false;
        }
        for j in 0..len {
            let visible = if is_query {
                g[j] < cuts[i]
            } else {
                g[j] <= g[i]
            };
            if visible {
                row[context + len + j] = false;
            }
        }
    }
    blocked
}

/// The ordered sampler's call mask over `[context (C) ⊕ content (c) ⊕ queries (k)]` on top of
/// `cached` positions: context rows see the cache and the context; content row `j` (content
/// in commit order) sees the cache, the context and content `≤ j`; query rows see the cache,
/// the context, all content and themselves. The same visibility as
/// [`ordered_training_mask_data`] with each query's cut at its group's start. Shape
/// `[C + c + k, cached + C + c + k]`.
pub fn ordered_call_mask_data(
    cached: usize,
    context: usize,
    content: usize,
    queries: usize,
) -> Vec<bool> {
    let q = context + content + queries;
    let k = cached + q;
    let mut blocked = vec![true; q * k];
    for r in 0..q {
        let row = &mut blocked[r * k..(r + 1) * k];
        let visible = if r < context + content {
            cached + r + 1
        } else {
            cached + context + content
        };
        row[..visible].iter_mut().for_each(|x| *x = false);
        if r < context {
            row[cached..cached + context]
                .iter_mut()
                .for_each(|x| *x = false);
        }
        if r >= context + content {
            row[cached + r] = false;
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
