//! Per-layer key/value cache of finished blocks.
//!
//! burn's built-in caches are last-token-only; block diffusion needs to append a whole clean
//! block at once and to attend from a whole noisy block, so the cache is our own. Keys are stored
//! already rotated (RoPE applied at their absolute positions), so cached and recomputed
//! attention agree exactly.

use burn::prelude::*;

/// Keys and values of one layer, position-major: `[batch, len, heads, head_dim]` (appending a
/// block is then one contiguous copy per row).
#[derive(Clone, Debug)]
pub struct LayerKv<B: Backend> {
    /// Rotated keys.
    pub k: Tensor<B, 4>,
    /// Values.
    pub v: Tensor<B, 4>,
}

impl<B: Backend> LayerKv<B> {
    /// Keeps positions `from..from + len` along the sequence axis.
    pub fn narrow(&self, from: usize, len: usize) -> Self {
        Self {
            k: self.k.clone().narrow(1, from, len),
            v: self.v.clone().narrow(1, from, len),
        }
    }

    /// Number of cached positions.
    pub fn len(&self) -> usize {
        self.k.dims()[1]
    }

    /// True when nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The cache of all layers. Every batch row holds the same number of positions.
#[derive(Clone, Debug, Default)]
pub struct KvCache<B: Backend> {
    layers: Vec<LayerKv<B>>,
    /// Absolute position of the first cached entry (non-zero after sliding-window eviction).
    start: usize,
}

impl<B: Backend> KvCache<B> {
    /// An empty cache.
    pub fn new() -> Self {
        Self {
            layers: Vec::new(),
            start: 0,
        }
    }

    /// Cached keys/values of layer `i`, if any.
    pub fn layer(&self, i: usize) -> Option<&LayerKv<B>> {
        self.layers.get(i)
    }

    /// Number of cached positions.
    pub fn len(&self) -> usize {
        self.layers.first().map_or(0, LayerKv::len)
    }

    /// True when nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Absolute position of the first cached entry.
    pub fn start(&self) -> usize {
        self.start
    }

    /// Appends positions `from..from + len` of a forward pass's new keys/values.
    pub fn append(&mut self, new: &[LayerKv<B>], from: usize, len: usize) {
        if len == 0 {
            return;
        }
        if self.layers.is_empty() {
            self.layers = new.iter().map(|kv| kv.narrow(from, len)).collect();
            return;
        }
        for (layer, kv) in self.layers.iter_mut().zip(new) {
            let part = kv.narrow(from, len);
            layer.k = Tensor::cat(vec![layer.k.clone(), part.k], 1);
            layer.v = Tensor::cat(vec![layer.v.clone(), part.v], 1);
        }
    }

    /// Drops the oldest entries so at most `keep` remain, keeping the first `sink` positions
    /// (e.g. the condition prefix) — the sliding window used for unbounded streaming.
    pub fn evict_to(&mut self, keep: usize, sink: usize) {
        let len = self.len();
        if len <= keep || keep <= sink {
            return;
        }
        let drop = len - keep;
        for layer in &mut self.layers {
            let tail = layer.narrow(sink + drop, len - sink - drop);
            if sink == 0 {
                *layer = tail;
            } else {
                let head = layer.narrow(0, sink);
                layer.k = Tensor::cat(vec![head.k, tail.k], 1);
                layer.v = Tensor::cat(vec![head.v, tail.v], 1);
            }
        }
        self.start += drop;
    }

    /// Repeats every batch row `times` times (row-major: `[r0, r0, r1, r1, ...]`).
    pub fn repeat_rows(&self, times: usize) -> Self {
        Self {
            layers: self
                .layers
                .iter()
                .map(|kv| LayerKv {
                    k: repeat_batch(kv.k.clone(), times),
                    v: repeat_batch(kv.v.clone(), times),
                })
                .collect(),
            start: self.start,
        }
    }
}

fn repeat_batch<B: Backend>(t: Tensor<B, 4>, times: usize) -> Tensor<B, 4> {
    if times == 1 {
        return t;
    }
    let [b, n, h, d] = t.dims();
    t.unsqueeze_dim::<5>(1)
        .expand([b, times, n, h, d])
        .reshape([b * times, n, h, d])
}
