//! The denoiser: a decoder-only transformer with block-causal attention.
//!
//! One set of weights serves three uses:
//! - training on `prefix ⊕ x_t ⊕ x_0` with the BD3-LM mask ([`crate::mask`]),
//! - sampling one block at a time against a [`KvCache`] of finished blocks,
//! - a full recompute of a whole sequence with the block-causal mask (the cache's reference).
//!
//! Layout per layer: pre-RMSNorm, multi-head attention with RoPE, pre-RMSNorm, SwiGLU MLP.

use burn::module::{Module, Param};
use burn::nn::{Embedding, EmbeddingConfig, Linear, LinearConfig, RmsNorm, RmsNormConfig};
use burn::prelude::*;
// Fused on the CPU backends (`blockdiff-kernels`: one pass, vectorised exp), burn's own ops
// elsewhere: SiLU and the attention softmax were 11–14% of a training step in scalar `expf`.
use blockdiff_kernels::{cached_attention, merge_heads, rope_rotate, silu, softmax, split_heads};

use crate::cache::{KvCache, LayerKv};

/// Hyper-parameters of [`BlockDiffusionModel`]. Saved as `config.json` next to every checkpoint.
#[derive(Config, Debug, PartialEq)]
pub struct BlockDiffusionConfig {
    /// Vocabulary size including the reserved special tokens.
    pub vocab_size: usize,
    /// Width of the residual stream.
    #[config(default = 128)]
    pub d_model: usize,
    /// Number of transformer layers.
    #[config(default = 4)]
    pub n_layers: usize,
    /// Number of attention heads; `d_model` must be divisible by it.
    #[config(default = 4)]
    pub n_heads: usize,
    /// Hidden width of the SwiGLU MLP; 0 picks the LLaMA default `≈ 8/3 · d_model` rounded to 8.
    #[config(default = 0)]
    pub d_ff: usize,
    /// Longest sequence (prefix + tokens) the model is used on; checked, not stored in weights.
    #[config(default = 4096)]
    pub max_len: usize,
    /// RoPE base frequency.
    #[config(default = 10000.0)]
    pub rope_theta: f64,
    /// RMSNorm epsilon.
    #[config(default = 1e-5)]
    pub norm_eps: f64,
    /// Width of each continuous condition vector (0 = no continuous condition).
    #[config(default = 0)]
    pub cond_dim: usize,
    /// Number of continuous condition vectors placed before the tokens.
    #[config(default = 0)]
    pub cond_len: usize,
    /// Width of the optional per-token feature table (0 = off). See
    /// [`BlockDiffusionModel::with_token_features`].
    #[config(default = 0)]
    pub token_feature_dim: usize,
    /// Also score every output token by its features: logits gain `(Q·h) · f_tokenᵀ` with a
    /// learned `Q: d_model → token_feature_dim`. A candidate's logit then depends directly on
    /// what it is (a road segment's position and bearing), so a preference such as "towards
    /// the destination" generalises across tokens instead of being learned per output row.
    /// Needs `token_feature_dim > 0` and a feature table.
    #[config(default = false)]
    pub feature_head: bool,
    /// Width of per-request token features (0 = off): each request may carry a
    /// `[vocab, request_feature_dim]` table that depends on what is asked (a road segment's
    /// hop and straight-line distance to the trip's destination). It is projected into the
    /// embedding of the tokens read, like the fixed table, and scores every output token
    /// through a learned `d_model → request_feature_dim` map, so candidates are ranked by
    /// where they stand relative to the request. Null (zero) rows when the condition is
    /// dropped, so classifier-free guidance still has an unconditional model.
    #[config(default = 0)]
    pub request_feature_dim: usize,
}

impl BlockDiffusionConfig {
    /// SwiGLU hidden width actually used.
    pub fn ff_width(&self) -> usize {
        if self.d_ff > 0 {
            self.d_ff
        } else {
            (self.d_model * 8 / 3).div_ceil(8) * 8
        }
    }

    /// Width of one attention head.
    pub fn head_dim(&self) -> usize {
        self.d_model / self.n_heads
    }

    /// Checks the invariants `init` relies on.
    pub fn validate(&self) -> Result<(), String> {
        if self.vocab_size == 0 {
            return Err("vocab_size must be > 0".into());
        }
        if self.n_heads == 0 || self.d_model % self.n_heads != 0 {
            return Err(format!(
                "d_model ({}) must be divisible by n_heads ({})",
                self.d_model, self.n_heads
            ));
        }
        if self.head_dim() % 2 != 0 {
            return Err(format!(
                "head_dim ({}) must be even for RoPE",
                self.head_dim()
            ));
        }
        if (self.cond_dim == 0) != (self.cond_len == 0) {
            return Err("cond_dim and cond_len must both be 0 or both be > 0".into());
        }
        if self.feature_head && self.token_feature_dim == 0 {
            return Err("feature_head needs token_feature_dim > 0".into());
        }
        Ok(())
    }

    /// [`Self::init`] from burn's process-wide RNG seeded with `seed`, with every parameter
    /// drawn before it returns. burn initialises lazily and its RNG is global, so a plain
    /// `B::seed` + `init` draws the weights whenever they are first read, interleaved with any
    /// other thread's draws (tests, data-parallel peers): the same seed then gave different
    /// weights from run to run. Seeding and drawing here hold one process-wide lock.
    pub fn init_seeded<B: Backend>(&self, seed: u64, device: &B::Device) -> BlockDiffusionModel<B> {
        static SEEDED_INIT: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _turn = SEEDED_INIT.lock().unwrap_or_else(|e| e.into_inner());
        B::seed(device, seed);
        let model = self.init::<B>(device);
        crate::train::materialize(&model);
        model
    }

    /// Builds a freshly initialised model. Panics only on an invalid config; call
    /// [`Self::validate`] first on untrusted configs.
    pub fn init<B: Backend>(&self, device: &B::Device) -> BlockDiffusionModel<B> {
        if let Err(e) = self.validate() {
            panic!("invalid BlockDiffusionConfig: {e}");
        }
        let layers = (0..self.n_layers)
            .map(|_| {
                TransformerBlockConfig::new(self.d_model, self.n_heads, self.ff_width())
                    .with_norm_eps(self.norm_eps)
                    .init(device)
            })
            .collect();
        let cond = (self.cond_dim > 0).then(|| {
            ConditionEncoderConfig::new(self.cond_dim, self.cond_len, self.d_model).init(device)
        });
        let feature_proj = (self.token_feature_dim > 0).then(|| {
            LinearConfig::new(self.token_feature_dim, self.d_model)
                .with_bias(false)
                .init(device)
        });
        BlockDiffusionModel {
            embedding: EmbeddingConfig::new(self.vocab_size, self.d_model).init(device),
            layers,
            norm: RmsNormConfig::new(self.d_model)
                .with_epsilon(self.norm_eps)
                .init(device),
            head: LinearConfig::new(self.d_model, self.vocab_size)
                .with_bias(false)
                .init(device),
            cond,
            feature_proj,
            feature_head: (self.feature_head && self.token_feature_dim > 0).then(|| {
                LinearConfig::new(self.d_model, self.token_feature_dim)
                    .with_bias(false)
                    .init(device)
            }),
            request_proj: (self.request_feature_dim > 0).then(|| {
                LinearConfig::new(self.request_feature_dim, self.d_model)
                    .with_bias(false)
                    .init(device)
            }),
            request_head: (self.request_feature_dim > 0).then(|| {
                LinearConfig::new(self.d_model, self.request_feature_dim)
                    .with_bias(false)
                    .init(device)
            }),
            token_features: None,
            n_heads: self.n_heads,
            rope_theta: self.rope_theta,
        }
    }
}

/// Encodes continuous condition vectors (robot observation, OD features, music style) into
/// prefix embeddings, with a learned "null" prefix used for condition dropout and CFG.
#[derive(Config, Debug)]
pub struct ConditionEncoderConfig {
    /// Width of one condition vector.
    pub cond_dim: usize,
    /// Number of condition vectors.
    pub cond_len: usize,
    /// Model width.
    pub d_model: usize,
}

impl ConditionEncoderConfig {
    /// Builds the encoder.
    pub fn init<B: Backend>(&self, device: &B::Device) -> ConditionEncoder<B> {
        ConditionEncoder {
            fc1: LinearConfig::new(self.cond_dim, self.d_model).init(device),
            fc2: LinearConfig::new(self.d_model, self.d_model).init(device),
            null: Param::from_tensor(Tensor::zeros([self.cond_len, self.d_model], device)),
        }
    }
}

/// Two-layer MLP from condition vectors to prefix embeddings.
#[derive(Module, Debug)]
pub struct ConditionEncoder<B: Backend> {
    fc1: Linear<B>,
    fc2: Linear<B>,
    null: Param<Tensor<B, 2>>,
}

impl<B: Backend> ConditionEncoder<B> {
    /// `vectors`: `[batch, cond_len, cond_dim]`; `drop`: per-sample flags (1.0 = replace by the
    /// null prefix), `[batch]`.
    pub fn forward(&self, vectors: Tensor<B, 3>, drop: Option<Tensor<B, 1>>) -> Tensor<B, 3> {
        let [batch, len, _] = vectors.dims();
        let h = self.fc2.forward(silu(self.fc1.forward(vectors)));
        match drop {
            None => h,
            Some(drop) => {
                let d_model = h.dims()[2];
                let w = drop.reshape([batch, 1, 1]);
                let null = self
                    .null
                    .val()
                    .unsqueeze_dim::<3>(0)
                    .expand([batch, len, d_model]);
                h * (w.clone().neg() + 1.0) + null * w
            }
        }
    }
}

/// One pre-norm transformer layer.
#[derive(Config, Debug)]
pub struct TransformerBlockConfig {
    /// Model width.
    pub d_model: usize,
    /// Attention heads.
    pub n_heads: usize,
    /// SwiGLU hidden width.
    pub d_ff: usize,
    /// RMSNorm epsilon.
    #[config(default = 1e-5)]
    pub norm_eps: f64,
}

impl TransformerBlockConfig {
    /// Builds the layer.
    pub fn init<B: Backend>(&self, device: &B::Device) -> TransformerBlock<B> {
        let lin = |i, o| LinearConfig::new(i, o).with_bias(false).init(device);
        TransformerBlock {
            attn_norm: RmsNormConfig::new(self.d_model)
                .with_epsilon(self.norm_eps)
                .init(device),
            wq: lin(self.d_model, self.d_model),
            wk: lin(self.d_model, self.d_model),
            wv: lin(self.d_model, self.d_model),
            wo: lin(self.d_model, self.d_model),
            mlp_norm: RmsNormConfig::new(self.d_model)
                .with_epsilon(self.norm_eps)
                .init(device),
            w_gate: lin(self.d_model, self.d_ff),
            w_up: lin(self.d_model, self.d_ff),
            w_down: lin(self.d_ff, self.d_model),
        }
    }
}

/// Pre-norm attention + SwiGLU layer.
#[derive(Module, Debug)]
pub struct TransformerBlock<B: Backend> {
    attn_norm: RmsNorm<B>,
    wq: Linear<B>,
    wk: Linear<B>,
    wv: Linear<B>,
    wo: Linear<B>,
    mlp_norm: RmsNorm<B>,
    w_gate: Linear<B>,
    w_up: Linear<B>,
    w_down: Linear<B>,
}

/// Rotary tables for a run of positions, as `[1, n · head_dim/2]` rows. Applied to `x` viewed
/// as `[batch · heads, n · head_dim/2]`: burn-flex has a fast path for broadcasting a single
/// leading row, while general 4-D broadcasting is ~20× slower than a contiguous op.
#[derive(Clone, Debug)]
pub struct Rope<B: Backend> {
    /// `[1, n · d_model]`: per position and head, the cos of each pair's angle, repeated for
    /// both halves of the head.
    cos: Tensor<B, 2>,
    /// `[1, n · d_model]`: the same for sin.
    sin: Tensor<B, 2>,
    /// `[head_dim, head_dim]`: the signed permutation with `x · P = rotate_half(x) = [−x₂, x₁]`.
    rotate: Tensor<B, 2>,
    head_dim: usize,
}

impl<B: Backend> Rope<B> {
    /// Tables for explicit positions (positions need not be contiguous: the training input
    /// repeats `x_t`'s positions for `x_0`).
    pub fn new(
        positions: &[usize],
        n_heads: usize,
        head_dim: usize,
        theta: f64,
        device: &B::Device,
    ) -> Self {
        let half = head_dim / 2;
        let n = positions.len();
        let d = n_heads * head_dim;
        let mut cos = Vec::with_capacity(n * d);
        let mut sin = Vec::with_capacity(n * d);
        let inv: Vec<f64> = (0..half)
            .map(|i| theta.powf(-(2.0 * i as f64) / head_dim as f64))
            .collect();
        let (mut c, mut s) = (vec![0f32; half], vec![0f32; half]);
        for &p in positions {
            // Computed in f64 so any port (the PyTorch twin) matches up to f32 rounding; once
            // per position, then repeated for both halves of every head.
            for ((c, s), inv) in c.iter_mut().zip(&mut s).zip(&inv) {
                let a = p as f64 * inv;
                (*c, *s) = (a.cos() as f32, a.sin() as f32);
            }
            for _ in 0..2 * n_heads {
                cos.extend_from_slice(&c);
                sin.extend_from_slice(&s);
            }
        }
        let mut rotate = vec![0.0f32; head_dim * head_dim];
        for j in 0..half {
            rotate[(j + half) * head_dim + j] = -1.0; // out[j] = −x[j + half]
            rotate[j * head_dim + j + half] = 1.0; // out[j + half] = x[j]
        }
        let row = |v: Vec<f32>| Tensor::<B, 1>::from_floats(v.as_slice(), device).unsqueeze();
        Self {
            cos: row(cos),
            sin: row(sin),
            rotate: Tensor::<B, 1>::from_floats(rotate.as_slice(), device)
                .reshape([head_dim, head_dim]),
            head_dim,
        }
    }

    /// Rotates `x` (`[batch, n, d_model]`, heads side by side, before they are split) with the
    /// "rotate half" convention: `x·cos + rotate_half(x)·sin`.
    ///
    /// Written so every operand stays contiguous: `rotate_half` is a matmul by a signed
    /// permutation (entries 0 and ±1, so bit-identical to negating and swapping halves) and the
    /// tables broadcast as one shared row. Narrowing the halves of the split heads and
    /// concatenating them back copied element by element through strided iterators instead
    /// (13% of a trajectory sampling run's instructions under callgrind).
    ///
    /// `x` holds the rows `first..first + n` of the positions the tables were built for.
    fn apply(&self, x: Tensor<B, 3>, first: usize) -> Tensor<B, 3> {
        let [b, n, d] = x.dims();
        let table = |t: &Tensor<B, 2>| t.clone().narrow(1, first * d, n * d);
        if let Some(y) = rope_rotate(&x, &table(&self.cos), &table(&self.sin), self.head_dim) {
            return y;
        }
        // Batched 3-D (one matrix per sample): flex runs a large 2-D matmul through gemm's
        // own threading, ~3× slower here than splitting the batch across threads.
        let rotated = x
            .clone()
            .reshape([b, n * d / self.head_dim, self.head_dim])
            .matmul(self.rotate.clone().unsqueeze::<3>())
            .reshape([b, n * d]);
        let out = x.reshape([b, n * d]) * table(&self.cos) + rotated * table(&self.sin);
        out.reshape([b, n, d])
    }
}

/// Scaled dot-product attention with an optional additive bias (`0` / [`BLOCKED`]) given as a
/// `[1, q · k]` row (see [`crate::mask::MaskTable::to_bias`]). Written as matmul → softmax →
/// matmul: on burn-flex 0.21 this beats the fused `burn::tensor::module::attention` at our
/// shapes (README, "attention"), and under autodiff the fused op decomposes the same way anyway.
pub fn scaled_attention<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    bias: Option<Tensor<B, 2>>,
) -> Tensor<B, 4> {
    let [b, h, nq, d] = q.dims();
    let nk = k.dims()[2];
    let scores = q.matmul(k.swap_dims(2, 3)) * (1.0 / (d as f64).sqrt());
    let scores = match bias {
        Some(bias) => (scores.reshape([b * h, nq * nk]) + bias).reshape([b, h, nq, nk]),
        None => scores,
    };
    softmax(scores, 3).matmul(v)
}

/// One part of an attention computation over a subset of the keys: the softmax-normalised
/// output over those keys and the log-sum-exp of their scores (`[batch, heads, q, 1]`). Two
/// parts over disjoint key sets merge exactly into attention over their union
/// ([`merge_attention`]) — the identity FlashBlock uses to reuse the block-external part.
#[derive(Clone, Debug)]
pub struct AttentionPart<B: Backend> {
    /// Output `[batch, heads, q, head_dim]`.
    pub out: Tensor<B, 4>,
    /// Log-sum-exp of the scaled scores `[batch, heads, q, 1]`.
    pub lse: Tensor<B, 4>,
}

/// Unmasked attention of `q` over `k`/`v`, returned as an [`AttentionPart`].
pub fn attention_part<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
) -> AttentionPart<B> {
    let d = q.dims()[3];
    let scores = q.matmul(k.swap_dims(2, 3)) * (1.0 / (d as f64).sqrt());
    let max = scores.clone().max_dim(3);
    let e = (scores - max.clone()).exp();
    let sum = e.clone().sum_dim(3);
    AttentionPart {
        out: (e / sum.clone()).matmul(v),
        lse: max + sum.log(),
    }
}

/// Attention over the union of two disjoint key sets from their parts:
/// `(e^{lse_a} o_a + e^{lse_b} o_b) / (e^{lse_a} + e^{lse_b})`, computed stably.
pub fn merge_attention<B: Backend>(a: &AttentionPart<B>, b: &AttentionPart<B>) -> Tensor<B, 4> {
    let m = a.lse.clone().max_pair(b.lse.clone());
    let wa = (a.lse.clone() - m.clone()).exp();
    let wb = (b.lse.clone() - m).exp();
    (a.out.clone() * wa.clone() + b.out.clone() * wb.clone()) / (wa + wb)
}

/// FlashBlock reuse inside one layer (see [`FlashBlockState`]).
enum LayerFlash<'a, B: Backend> {
    /// Plain attention.
    Off,
    /// The last `block` query rows see every key: compute their attention as an external part
    /// (all earlier keys) merged with the block-internal part, and keep the external part.
    Record {
        block: usize,
        out: &'a mut Vec<AttentionPart<B>>,
    },
    /// The input is the block alone: attend inside it and merge with a kept external part
    /// instead of attending to the cache again.
    Reuse(&'a AttentionPart<B>),
}

/// The block-external attention parts of every layer, recorded at a block's first model call
/// and reused on its later calls (FlashBlock). The merge is exact; what is approximate is the
/// reuse: the block's queries change as tokens are committed, and the kept part was computed
/// with the first call's queries (`blockdiff bench samplers` measures the effect).
#[derive(Clone, Debug, Default)]
pub struct FlashBlockState<B: Backend> {
    layers: Vec<AttentionPart<B>>,
}

impl<B: Backend> FlashBlockState<B> {
    /// Nothing recorded.
    pub fn new() -> Self {
        Self { layers: Vec::new() }
    }

    /// True once a first call has recorded the external parts.
    pub fn is_recorded(&self) -> bool {
        !self.layers.is_empty()
    }

    /// Forgets the recorded parts (a new block starts).
    pub fn clear(&mut self) {
        self.layers.clear();
    }
}

/// Additive bias of a blocked attention entry. −∞ rather than a large finite value: glibc's
/// `expf` returns 0 for −∞ at once but takes a slow underflow path for finite values below
/// −104 (measured 8% of a training step). Every mask row keeps at least one visible key, so no
/// row is all −∞.
pub const BLOCKED: f32 = f32::NEG_INFINITY;

impl<B: Backend> TransformerBlock<B> {
    /// `x`: `[batch, n, d]`. `past`: cached keys/values of earlier positions (already rotated).
    /// `bias`: `[1, n · (past + n)]` additive mask. Returns the output and this call's own
    /// (rotated) keys and values, which the caller may append to a cache.
    ///
    /// `rows = Some((first, len))` computes the output only for rows `first..first + len`
    /// (keys and values still for every row): the last layer of a call whose caller reads
    /// only those rows' logits (a sampling call's clean rows only feed the cache; training
    /// scores only the `x_t` half).
    #[allow(clippy::too_many_arguments)]
    fn forward(
        &self,
        x: Tensor<B, 3>,
        rope: &Rope<B>,
        n_heads: usize,
        past: Option<&LayerKv<B>>,
        bias: Option<Tensor<B, 2>>,
        flash: LayerFlash<'_, B>,
        rows: Option<(usize, usize)>,
    ) -> (Tensor<B, 3>, LayerKv<B>) {
        let [batch, n, d] = x.dims();
        let dh = d / n_heads;
        let h = self.attn_norm.forward(x.clone());
        let (first, nq) = rows.unwrap_or((0, n));
        let (x, h_q, bias) = if rows.is_some() {
            let nk = past.map_or(0, LayerKv::len) + n;
            (
                x.narrow(1, first, nq),
                h.clone().narrow(1, first, nq),
                bias.map(|b| b.narrow(1, first * nk, nq * nk)),
            )
        } else {
            (x, h.clone(), bias)
        };
        // Keys and values stay position-major (`[batch, n, heads, head_dim]`, the linear
        // layers' own layout): the cache appends and concatenates along positions with
        // contiguous copies, and attention reads the head-major view through strides (the
        // matmul takes strides as they are; flex's strided element copy is slow).
        let heads = |t: Tensor<B, 3>| {
            let m = t.dims()[1];
            t.reshape([batch, m, n_heads, dh])
        };
        let head_major = |t: Tensor<B, 4>| t.swap_dims(1, 2);
        let q = rope.apply(self.wq.forward(h_q), first);
        let k = rope.apply(self.wk.forward(h.clone()), 0);
        let v = self.wv.forward(h);
        let own = LayerKv {
            k: heads(k.clone()),
            v: heads(v.clone()),
        };
        // A sampling call over a cache: one fused pass on the CPU (no cache concatenation).
        if let (LayerFlash::Off, Some(p)) = (&flash, past) {
            let runs = [(&p.k, &p.v), (&own.k, &own.v)];
            if let Some(a) = cached_attention(&q, n_heads, &runs, bias.as_ref()) {
                let x = x + self.wo.forward(a);
                return (self.mlp(x), own);
            }
        }
        let q = split_heads(q, n_heads);
        let a = match flash {
            LayerFlash::Reuse(ext) => merge_attention(
                ext,
                &attention_part(q, head_major(own.k.clone()), head_major(own.v.clone())),
            ),
            flash => {
                let (k_all, v_all) = match past {
                    Some(p) => (
                        head_major(Tensor::cat(vec![p.k.clone(), own.k.clone()], 1)),
                        head_major(Tensor::cat(vec![p.v.clone(), own.v.clone()], 1)),
                    ),
                    // Training's path: contiguous heads with a fused backward (see
                    // `blockdiff_kernels::split_heads`); a strided view on inference backends.
                    None => (split_heads(k, n_heads), split_heads(v, n_heads)),
                };
                match flash {
                    LayerFlash::Record { block, out } => {
                        record_external(q, k_all, v_all, bias, block, out)
                    }
                    _ => scaled_attention(q, k_all, v_all, bias),
                }
            }
        };
        let a = merge_heads(a);
        let x = x + self.wo.forward(a);
        (self.mlp(x), own)
    }

    /// The residual SwiGLU half of the block.
    fn mlp(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let h = self.mlp_norm.forward(x.clone());
        let m = self
            .w_down
            .forward(silu(self.w_gate.forward(h.clone())) * self.w_up.forward(h));
        x + m
    }
}

/// Attention where the last `block` query rows see every key (the sampler's noisy block): the
/// earlier rows go through [`scaled_attention`] with their slice of `bias`; the block rows are
/// computed as external ⊕ internal parts, and the external part is pushed to `out`.
fn record_external<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    bias: Option<Tensor<B, 2>>,
    block: usize,
    out: &mut Vec<AttentionPart<B>>,
) -> Tensor<B, 4> {
    let [_, _, nq, _] = q.dims();
    let nk = k.dims()[2];
    let (ext_n, head_n) = (nk - block, nq - block);
    let q_blk = q.clone().narrow(2, head_n, block);
    let internal = attention_part(
        q_blk.clone(),
        k.clone().narrow(2, ext_n, block),
        v.clone().narrow(2, ext_n, block),
    );
    let blk = if ext_n == 0 {
        // Nothing outside the block: an empty external part (lse = −∞) merges to the internal.
        out.push(AttentionPart {
            out: internal.out.zeros_like(),
            lse: internal.lse.full_like(f32::NEG_INFINITY),
        });
        internal.out
    } else {
        let external = attention_part(
            q_blk,
            k.clone().narrow(2, 0, ext_n),
            v.clone().narrow(2, 0, ext_n),
        );
        let merged = merge_attention(&external, &internal);
        out.push(external);
        merged
    };
    if head_n == 0 {
        return blk;
    }
    let head_bias = bias.map(|b| b.narrow(1, 0, head_n * nk));
    let head = scaled_attention(q.narrow(2, 0, head_n), k, v, head_bias);
    Tensor::cat(vec![head, blk], 2)
}

/// The block-diffusion transformer. See the module docs.
#[derive(Module, Debug)]
pub struct BlockDiffusionModel<B: Backend> {
    embedding: Embedding<B>,
    layers: Vec<TransformerBlock<B>>,
    norm: RmsNorm<B>,
    head: Linear<B>,
    cond: Option<ConditionEncoder<B>>,
    feature_proj: Option<Linear<B>>,
    /// `Q` of [`BlockDiffusionConfig::feature_head`].
    feature_head: Option<Linear<B>>,
    /// Input projection of [`BlockDiffusionConfig::request_feature_dim`] features.
    request_proj: Option<Linear<B>>,
    /// Output map of the request features.
    request_head: Option<Linear<B>>,
    /// Fixed per-token feature table `[vocab, token_feature_dim]` (not trained, but saved).
    token_features: Option<Param<Tensor<B, 2>>>,
    n_heads: usize,
    rope_theta: f64,
}

/// Input of one forward pass over a run of new positions.
pub struct ForwardInput<B: Backend> {
    /// Token ids `[batch, n]`.
    pub tokens: Tensor<B, 2, Int>,
    /// Absolute position of each of the `n` tokens (shared across the batch).
    pub positions: Vec<usize>,
    /// Continuous condition `[batch, cond_len, cond_dim]`, placed before the tokens. Only on a
    /// pass that starts the sequence (training, or the first sampling pass).
    pub cond: Option<Tensor<B, 3>>,
    /// Per-sample condition-dropout flags `[batch]` (1.0 = use the null condition).
    pub cond_drop: Option<Tensor<B, 1>>,
    /// Which `[cached ⊕ cond ⊕ tokens]` keys each `[cond ⊕ tokens]` query may not see: a
    /// `[q, k]` row-major table, true = blocked (see [`crate::mask`]). `None` = see everything.
    pub mask: Option<crate::mask::MaskTable>,
    /// Per-request token features `[batch, vocab, request_feature_dim]` (see
    /// [`BlockDiffusionConfig::request_feature_dim`]); `None` with a model that has none.
    pub request_features: Option<Tensor<B, 3>>,
}

impl<B: Backend> BlockDiffusionModel<B> {
    /// Attaches a fixed per-token feature table (`[vocab_size, token_feature_dim]`), e.g. road
    /// segment geometry; its projection is added to the id embedding. Requires
    /// `token_feature_dim > 0` in the config.
    pub fn with_token_features(mut self, table: Tensor<B, 2>) -> Self {
        self.token_features = Some(Param::from_tensor(table).set_require_grad(false));
        self
    }

    /// Freezes the token embedding (and feature projection) and the lowest `k` transformer
    /// layers: their parameters get no gradients, so an optimiser leaves them as they are
    /// (reward fine-tuning's "freeze lower layers" option).
    pub fn freeze_lower(mut self, k: usize) -> Self {
        if k == 0 {
            return self;
        }
        self.embedding = self.embedding.no_grad();
        self.feature_proj = self.feature_proj.map(|p| p.no_grad());
        self.layers = self
            .layers
            .into_iter()
            .enumerate()
            .map(|(i, l)| if i < k { l.no_grad() } else { l })
            .collect();
        self
    }

    /// Number of layers.
    pub fn n_layers(&self) -> usize {
        self.layers.len()
    }

    /// Output logits of final hidden states `[batch, n, d_model]`: the head, plus the feature
    /// score when the config has a feature head.
    fn logits(&self, h: Tensor<B, 3>, request: Option<Tensor<B, 3>>) -> Tensor<B, 3> {
        let h = self.norm.forward(h);
        let mut out = self.head.forward(h.clone());
        if let (Some(q), Some(f)) = (&self.request_head, request) {
            // [b, n, k] · [b, k, vocab]
            out = out + q.forward(h.clone()).matmul(f.transpose());
        }
        match (&self.feature_head, &self.token_features) {
            (Some(q), Some(table)) => {
                let [b, n, _] = h.dims();
                let f = table.val();
                let [vocab, fd] = f.dims();
                let score = q
                    .forward(h)
                    .reshape([b * n, fd])
                    .matmul(f.transpose())
                    .reshape([b, n, vocab]);
                out + score
            }
            _ => out,
        }
    }

    /// Embeds the tokens (plus optional fixed and per-request token features).
    fn embed(&self, tokens: Tensor<B, 2, Int>, request: Option<Tensor<B, 3>>) -> Tensor<B, 3> {
        let mut x = self.embedding.forward(tokens.clone());
        if let (Some(proj), Some(f)) = (&self.request_proj, request) {
            let [batch, n] = tokens.dims();
            let k = f.dims()[2];
            let idx = tokens.clone().reshape([batch, n, 1]).repeat_dim(2, k);
            x = x + proj.forward(f.gather(1, idx));
        }
        if let (Some(proj), Some(table)) = (&self.feature_proj, &self.token_features) {
            let [batch, n] = tokens.dims();
            let ids = tokens.reshape([batch * n]);
            let feats = table.val().select(0, ids);
            let f = proj.forward(feats);
            let d = f.dims()[1];
            x = x + f.reshape([batch, n, d]);
        }
        x
    }

    /// Runs the transformer on new positions against an optional cache. Returns logits for the
    /// token positions (`[batch, n, vocab]`, condition positions dropped) and the new per-layer
    /// keys/values of all new positions (condition positions first).
    pub fn forward(
        &self,
        input: ForwardInput<B>,
        cache: Option<&KvCache<B>>,
    ) -> (Tensor<B, 3>, Vec<LayerKv<B>>) {
        let req = input.request_features.clone();
        let (h, kvs, n_cond) = self.hidden(input, cache);
        let total = h.dims()[1];
        let h = h.narrow(1, n_cond, total - n_cond);
        (self.logits(h, req), kvs)
    }

    /// Like [`Self::forward`] but returns logits only for token positions `from..from + len`
    /// (e.g. the `x_t` half in training), saving the output projection on the rest.
    pub fn forward_range(
        &self,
        input: ForwardInput<B>,
        cache: Option<&KvCache<B>>,
        from: usize,
        len: usize,
    ) -> (Tensor<B, 3>, Vec<LayerKv<B>>) {
        let req = input.request_features.clone();
        let (h, kvs, _) = self.hidden_with(input, cache, None, Some((from, len)));
        (self.logits(h, req), kvs)
    }

    /// Like [`Self::forward_range`] over token positions `from..from + len`, with the output
    /// head on `rows` only (indices into those `len` positions): `[batch, rows.len(), vocab]`.
    /// A sampling call reads logits only where a position is still masked, and with forced
    /// commits most of a trajectory block is decided before the call, so the head (the
    /// largest matmul per row of a model with a large vocabulary) shrinks several-fold.
    pub fn forward_rows(
        &self,
        input: ForwardInput<B>,
        cache: Option<&KvCache<B>>,
        (from, len): (usize, usize),
        rows: &[usize],
    ) -> (Tensor<B, 3>, Vec<LayerKv<B>>) {
        let req = input.request_features.clone();
        let (h, kvs, _) = self.hidden_with(input, cache, None, Some((from, len)));
        (self.logits_at(h, rows, req), kvs)
    }

    /// [`Self::logits`] of the hidden rows `rows` only (indices along dimension 1).
    fn logits_at(
        &self,
        h: Tensor<B, 3>,
        rows: &[usize],
        request: Option<Tensor<B, 3>>,
    ) -> Tensor<B, 3> {
        let idx: Vec<i64> = rows.iter().map(|&r| r as i64).collect();
        let idx = Tensor::<B, 1, Int>::from_data(TensorData::new(idx, [rows.len()]), &h.device());
        self.logits(h.select(1, idx), request)
    }

    /// A sampling call's logits for chosen token rows, each over one vocabulary span only.
    ///
    /// Like [`Self::forward_range`] over token positions `from..from + len`, but the output
    /// head is applied only to `rows` (indices into those `len` positions) and, for row
    /// `rows[i]`, only to the ids `spans[i]`; everything else is `-∞`. Returns the logits
    /// flattened as `[len, vocab]` (batch 1). A sampler needs logits only where a position
    /// is still masked and only for the ids its constraint allows: an audio frame slot admits
    /// 64 or 1,024 of 4,164 ids, so the head, the largest matmul of a music stream's call,
    /// shrinks about fourfold. Models with a feature or request head use the full head.
    pub fn forward_spans(
        &self,
        input: ForwardInput<B>,
        cache: Option<&KvCache<B>>,
        (from, len): (usize, usize),
        rows: &[usize],
        spans: &[std::ops::Range<usize>],
    ) -> (Vec<f32>, Vec<LayerKv<B>>) {
        let device = input.tokens.device();
        let req = input.request_features.clone();
        let (h, kvs, _) = self.hidden_with(input, cache, None, Some((from, len)));
        let vocab = self.head.weight.dims()[1];
        let mut out = vec![f32::NEG_INFINITY; len * vocab];
        let to_vec = |t: Tensor<B, 2>| crate::sample::to_vec(t.unsqueeze::<3>());
        if self.feature_head.is_some() || self.request_head.is_some() {
            // The whole vocabulary, but only on the rows asked for.
            let part = to_vec(self.logits_at(h, rows, req).reshape([rows.len(), vocab]));
            for (k, &r) in rows.iter().enumerate() {
                out[r * vocab..(r + 1) * vocab].copy_from_slice(&part[k * vocab..(k + 1) * vocab]);
            }
            return (out, kvs);
        }
        let d = h.dims()[2];
        let h = self.norm.forward(h).reshape([len, d]);
        // Rows sharing a span share one matmul.
        let mut groups: Vec<(std::ops::Range<usize>, Vec<usize>)> = Vec::new();
        for (&r, span) in rows.iter().zip(spans) {
            match groups.iter_mut().find(|g| g.0 == *span) {
                Some(g) => g.1.push(r),
                None => groups.push((span.clone(), vec![r])),
            }
        }
        let weight = self.head.weight.val();
        let bias = self.head.bias.as_ref().map(|b| b.val());
        for (span, rs) in groups {
            let width = span.len();
            if width == 0 {
                continue;
            }
            let idx: Vec<i64> = rs.iter().map(|&r| r as i64).collect();
            let idx = Tensor::<B, 1, Int>::from_data(TensorData::new(idx, [rs.len()]), &device);
            let mut l = h
                .clone()
                .select(0, idx)
                .matmul(weight.clone().narrow(1, span.start, width));
            if let Some(b) = &bias {
                l = l + b.clone().narrow(0, span.start, width).unsqueeze_dim(0);
            }
            let v = to_vec(l);
            for (i, &r) in rs.iter().enumerate() {
                out[r * vocab + span.start..r * vocab + span.end]
                    .copy_from_slice(&v[i * width..(i + 1) * width]);
            }
        }
        (out, kvs)
    }

    /// [`Self::forward_range`] with FlashBlock reuse for a sampling call whose last `len` token
    /// positions are the noisy block and see every key. With an empty `state` the call records
    /// each layer's block-external attention part (exact); with a recorded one, `input` must be
    /// the block alone and attention to the cache is replaced by the recorded parts.
    pub fn forward_block_flash(
        &self,
        input: ForwardInput<B>,
        cache: Option<&KvCache<B>>,
        from: usize,
        len: usize,
        state: &mut FlashBlockState<B>,
    ) -> (Tensor<B, 3>, Vec<LayerKv<B>>) {
        let req = input.request_features.clone();
        let (h, kvs, n_cond) = self.hidden_with(input, cache, Some((len, state)), None);
        let h = h.narrow(1, n_cond + from, len);
        (self.logits(h, req), kvs)
    }

    fn hidden(
        &self,
        input: ForwardInput<B>,
        cache: Option<&KvCache<B>>,
    ) -> (Tensor<B, 3>, Vec<LayerKv<B>>, usize) {
        self.hidden_with(input, cache, None, None)
    }

    fn hidden_with(
        &self,
        input: ForwardInput<B>,
        cache: Option<&KvCache<B>>,
        mut flash: Option<(usize, &mut FlashBlockState<B>)>,
        last_rows: Option<(usize, usize)>,
    ) -> (Tensor<B, 3>, Vec<LayerKv<B>>, usize) {
        let reuse = flash.as_ref().is_some_and(|(_, s)| s.is_recorded());
        let mut recorded = Vec::new();
        let device = input.tokens.device();
        let mut x = self.embed(input.tokens, input.request_features);
        let mut positions = input.positions;
        let mut n_cond = 0;
        if let Some(cond_vec) = input.cond {
            let enc = self
                .cond
                .as_ref()
                .expect("condition vectors given to a model built with cond_dim = 0");
            let c = enc.forward(cond_vec, input.cond_drop);
            n_cond = c.dims()[1];
            // Condition vectors occupy the positions just before the first token.
            let first = positions.first().copied().unwrap_or(n_cond);
            let start = first.saturating_sub(n_cond);
            let mut p: Vec<usize> = (start..start + n_cond).collect();
            p.extend_from_slice(&positions);
            positions = p;
            x = Tensor::cat(vec![c, x], 1);
        }
        let head_dim = x.dims()[2] / self.n_heads;
        let rope = Rope::new(&positions, self.n_heads, head_dim, self.rope_theta, &device);
        let bias = input.mask.as_ref().map(|m| m.to_bias::<B>(&device));
        let mut kvs = Vec::with_capacity(self.layers.len());
        for (i, layer) in self.layers.iter().enumerate() {
            let past = cache.and_then(|c| c.layer(i));
            let mode = match &flash {
                None => LayerFlash::Off,
                Some((_, state)) if reuse => LayerFlash::Reuse(&state.layers[i]),
                Some((block, _)) => LayerFlash::Record {
                    block: *block,
                    out: &mut recorded,
                },
            };
            // The last layer computes only the rows the caller reads (token coordinates
            // `last_rows`, shifted past the condition prefix); FlashBlock keeps whole calls.
            let rows = last_rows
                .filter(|_| i + 1 == self.layers.len() && flash.is_none())
                .map(|(from, len)| (n_cond + from, len));
            let (y, kv) = layer.forward(x, &rope, self.n_heads, past, bias.clone(), mode, rows);
            x = y;
            kvs.push(kv);
        }
        if let Some((_, state)) = flash.as_mut() {
            if !reuse {
                state.layers = recorded;
            }
        }
        (x, kvs, n_cond)
    }
}
