//! Slice kernels: SiLU and row softmax (forward and backward), attention over KV-cache runs and
//! rotary embedding (inference), each with a plain reference.
//!
//! Every kernel is written as straight-line loops over lanes so LLVM vectorises it; the entry
//! points pick an AVX2 + FMA build at run time on x86-64 and split large inputs across rayon's
//! threads (row-aligned for softmax). Results do not depend on the split: each element's value
//! is computed from its own row only.

use rayon::prelude::*;

/// Inputs with fewer elements run on the calling thread (spawning costs more than it saves).
const PARALLEL_MIN: usize = 1 << 15;

/// `exp` on `[-87.34, 88.72]` (0 below, +∞ above): `x = n·ln2 + r`, `|r| ≤ ln2/2`, `e^r` by its
/// degree-7 Taylor polynomial (truncation ≤ 5e-9 relative), `2^n` built in the exponent bits.
/// Branch-free, so a loop over it vectorises. NaN stays NaN.
///
/// Fast only inside an FMA build (this module's kernels, e.g. [`masked_exp`]): compiled for
/// the x86-64 baseline, each `mul_add` is a call to libm's `fmaf`, about 20× slower.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split so n·LN2_HI is exact for |n| ≤ 2^9.
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // Adding 1.5·2^23 rounds to the nearest integer in the low mantissa bits.
    const ROUND: f32 = 12_582_912.0;
    let xc = x.clamp(-87.336_54, 88.722_83);
    let t = xc.mul_add(LOG2E, ROUND);
    let n = t - ROUND;
    let r = n.mul_add(-LN2_LO, n.mul_add(-LN2_HI, xc));
    let mut p: f32 = 1.0 / 5040.0;
    p = p.mul_add(r, 1.0 / 720.0);
    p = p.mul_add(r, 1.0 / 120.0);
    p = p.mul_add(r, 1.0 / 24.0);
    p = p.mul_add(r, 1.0 / 6.0);
    p = p.mul_add(r, 0.5);
    p = p.mul_add(r, 1.0);
    p = p.mul_add(r, 1.0);
    let k = (t.to_bits() as i32).wrapping_sub(0x4B40_0000);
    let scale = f32::from_bits(((k + 127) as u32) << 23);
    let y = p * scale;
    let y = if x > 88.722_83 { f32::INFINITY } else { y };
    if x < -87.336_54 {
        0.0
    } else {
        y
    }
}

/// `1 / (1 + e^{−x})` with [`exp`].
#[inline(always)]
fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

// ---------------------------------------------------------------------------------------
// Bodies (generic over nothing, inlined into each target-feature build below)
// ---------------------------------------------------------------------------------------

#[inline(always)]
fn silu_body(x: &[f32], out: &mut [f32]) {
    for (o, &v) in out.iter_mut().zip(x) {
        *o = v * sigmoid(v);
    }
}

#[inline(always)]
fn silu_backward_body(x: &[f32], grad: &[f32], out: &mut [f32]) {
    for ((o, &v), &g) in out.iter_mut().zip(x).zip(grad) {
        let s = sigmoid(v);
        *o = g * s * (1.0 + v * (1.0 - s));
    }
}

const LANES: usize = 16;

/// Max of a row through 16 independent lanes (vectorisable). NaN entries are skipped here
/// but still turn their row's sum, and so the whole row, into NaN in the exp step.
#[inline(always)]
fn row_max(row: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let chunks = row.chunks_exact(LANES);
    let rest = chunks.remainder();
    for c in chunks {
        for i in 0..LANES {
            acc[i] = if c[i] > acc[i] { c[i] } else { acc[i] };
        }
    }
    let mut m = f32::NEG_INFINITY;
    for &a in acc.iter().chain(rest) {
        m = if a > m { a } else { m };
    }
    m
}

#[inline(always)]
fn lane_sum(acc: [f32; LANES]) -> f32 {
    acc.iter().sum()
}

#[inline(always)]
fn softmax_row_body(row: &[f32], out: &mut [f32]) {
    let m = row_max(row);
    let mut acc = [0f32; LANES];
    let n = row.len() / LANES * LANES;
    for (c, o) in row[..n]
        .chunks_exact(LANES)
        .zip(out[..n].chunks_exact_mut(LANES))
    {
        for i in 0..LANES {
            let e = exp(c[i] - m);
            o[i] = e;
            acc[i] += e;
        }
    }
    let mut sum = lane_sum(acc);
    for (o, &v) in out[n..].iter_mut().zip(&row[n..]) {
        let e = exp(v - m);
        *o = e;
        sum += e;
    }
    let inv = 1.0 / sum;
    for o in out.iter_mut() {
        *o *= inv;
    }
}

#[inline(always)]
fn masked_exp_body(x: &[f32], keep: &[bool], scale: f32, out: &mut [f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let n = x.len() / LANES * LANES;
    for (c, k) in x[..n]
        .chunks_exact(LANES)
        .zip(keep[..n].chunks_exact(LANES))
    {
        for i in 0..LANES {
            acc[i] = if k[i] && c[i] > acc[i] { c[i] } else { acc[i] };
        }
    }
    // The lanes hold kept values only; the tail is filtered here.
    let mut m = acc
        .iter()
        .fold(f32::NEG_INFINITY, |m, &v| if v > m { v } else { m });
    for (&v, &k) in x[n..].iter().zip(&keep[n..]) {
        m = if k && v > m { v } else { m };
    }
    let mut acc = [0f32; LANES];
    for ((c, k), o) in x[..n]
        .chunks_exact(LANES)
        .zip(keep[..n].chunks_exact(LANES))
        .zip(out[..n].chunks_exact_mut(LANES))
    {
        for i in 0..LANES {
            let e = exp((c[i] - m) * scale);
            let e = if k[i] && c[i].is_finite() { e } else { 0.0 };
            o[i] = e;
            acc[i] += e;
        }
    }
    let mut sum = lane_sum(acc);
    for ((o, &v), &k) in out[n..].iter_mut().zip(&x[n..]).zip(&keep[n..]) {
        let e = exp((v - m) * scale);
        *o = if k && v.is_finite() { e } else { 0.0 };
        sum += *o;
    }
    sum
}

#[inline(always)]
fn softmax_backward_row_body(y: &[f32], g: &[f32], out: &mut [f32]) {
    let mut acc = [0f32; LANES];
    let n = y.len() / LANES * LANES;
    for (a, b) in y[..n].chunks_exact(LANES).zip(g[..n].chunks_exact(LANES)) {
        for i in 0..LANES {
            acc[i] += a[i] * b[i];
        }
    }
    let mut dot = lane_sum(acc);
    for (a, b) in y[n..].iter().zip(&g[n..]) {
        dot += a * b;
    }
    for ((o, &a), &b) in out.iter_mut().zip(y).zip(g) {
        *o = a * (b - dot);
    }
}

#[inline(always)]
fn softmax_rows_body(x: &[f32], out: &mut [f32], row_len: usize) {
    for (r, o) in x.chunks_exact(row_len).zip(out.chunks_exact_mut(row_len)) {
        softmax_row_body(r, o);
    }
}

#[inline(always)]
fn softmax_backward_rows_body(y: &[f32], g: &[f32], out: &mut [f32], row_len: usize) {
    for ((a, b), o) in y
        .chunks_exact(row_len)
        .zip(g.chunks_exact(row_len))
        .zip(out.chunks_exact_mut(row_len))
    {
        softmax_backward_row_body(a, b, o);
    }
}

/// Defines `name(args)`: the body compiled for AVX2 + FMA when the CPU has them (checked once
/// per call, cheap), and for the build's baseline otherwise.
macro_rules! multiversion {
    ($name:ident, $body:ident, ($($arg:ident: $ty:ty),*)) => {
        multiversion!($name, $body, ($($arg: $ty),*) -> ());
    };
    ($name:ident, $body:ident, ($($arg:ident: $ty:ty),*) -> $ret:ty) => {
        fn $name($($arg: $ty),*) -> $ret {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,fma")]
                fn fast($($arg: $ty),*) -> $ret {
                    $body($($arg),*)
                }
                if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                    // SAFETY: the CPU was just checked to have both features.
                    return unsafe { fast($($arg),*) };
                }
            }
            $body($($arg),*)
        }
    };
}

multiversion!(silu_mv, silu_body, (x: &[f32], out: &mut [f32]));
multiversion!(silu_backward_mv, silu_backward_body, (x: &[f32], g: &[f32], out: &mut [f32]));
multiversion!(softmax_mv, softmax_rows_body, (x: &[f32], out: &mut [f32], row_len: usize));
multiversion!(
    masked_exp_mv,
    masked_exp_body,
    (x: &[f32], keep: &[bool], scale: f32, out: &mut [f32]) -> f32
);
multiversion!(
    softmax_backward_mv,
    softmax_backward_rows_body,
    (y: &[f32], g: &[f32], out: &mut [f32], row_len: usize)
);

/// Elements per parallel piece: a multiple of `align`, about half the input per thread.
fn piece(len: usize, align: usize) -> usize {
    let threads = rayon::current_num_threads().max(1);
    let per = len.div_ceil(threads * 2).max(align);
    per.div_ceil(align) * align
}

/// Runs `f(start, piece)` over `out`: on the calling thread when it is small, else in pieces
/// of a multiple of `align` elements across rayon's threads (`start` = the piece's offset).
fn for_pieces(out: &mut [f32], align: usize, f: impl Fn(usize, &mut [f32]) + Sync) {
    if out.len() < PARALLEL_MIN {
        return f(0, out);
    }
    let p = piece(out.len(), align);
    out.par_chunks_mut(p)
        .enumerate()
        .for_each(|(i, o)| f(i * p, o));
}

/// `out = x · σ(x)`.
pub fn silu_forward(x: &[f32], out: &mut [f32]) {
    assert_eq!(x.len(), out.len(), "silu: lengths differ");
    for_pieces(out, LANES, |s, o| silu_mv(&x[s..s + o.len()], o));
}

/// `out = g · dSiLU/dx = g · σ(x) · (1 + x (1 − σ(x)))`.
pub fn silu_backward(x: &[f32], grad: &[f32], out: &mut [f32]) {
    assert!(
        x.len() == grad.len() && x.len() == out.len(),
        "silu backward: lengths differ"
    );
    for_pieces(out, LANES, |s, o| {
        let e = s + o.len();
        silu_backward_mv(&x[s..e], &grad[s..e], o)
    });
}

/// Softmax of each `row_len`-long row of `x`.
pub fn softmax_forward(x: &[f32], out: &mut [f32], row_len: usize) {
    assert!(
        row_len > 0 && x.len() % row_len == 0 && x.len() == out.len(),
        "softmax: {} elements are not rows of {row_len}",
        x.len()
    );
    for_pieces(out, row_len, |s, o| {
        softmax_mv(&x[s..s + o.len()], o, row_len)
    });
}

/// The unnormalised softmax a sampler draws from: `out[i] = e^{(x[i] − m)·scale}` where
/// `keep[i]` and `x[i]` is finite, else 0, with `m` the largest kept `x`; returns `Σ out`
/// (0 when nothing finite is kept). One pass each for the max and the exponentials, on the
/// calling thread (a row is one vocabulary): the scalar [`exp`] called outside an FMA build
/// lowers each `mul_add` to a libm call, a tenth of a music stream's time before this kernel.
pub fn masked_exp(x: &[f32], keep: &[bool], scale: f32, out: &mut [f32]) -> f32 {
    assert!(
        x.len() == keep.len() && x.len() == out.len(),
        "masked exp: lengths differ"
    );
    masked_exp_mv(x, keep, scale, out)
}

/// Softmax backward from its output `y`: `out = y ⊙ (g − Σ_row g ⊙ y)`.
pub fn softmax_backward(y: &[f32], grad: &[f32], out: &mut [f32], row_len: usize) {
    assert!(
        row_len > 0 && y.len() % row_len == 0 && y.len() == grad.len() && y.len() == out.len(),
        "softmax backward: lengths differ"
    );
    for_pieces(out, row_len, |s, o| {
        let e = s + o.len();
        softmax_backward_mv(&y[s..e], &grad[s..e], o, row_len)
    });
}

/// One run of keys and values, position-major `[b, len, h, dh]` (a KV cache's layout).
#[derive(Clone, Copy, Debug)]
pub struct KvRun<'a> {
    /// Keys.
    pub k: &'a [f32],
    /// Values.
    pub v: &'a [f32],
    /// Positions in the run.
    pub len: usize,
}

/// `dst = [dst +] scale · lhs · rhs` for strided `m × k` and `k × n` matrices (`(row, col)`
/// strides in elements), on the calling thread.
///
/// # Safety
/// Every element the strides address must lie inside the allocation behind its pointer.
#[allow(clippy::too_many_arguments)]
unsafe fn small_gemm(
    [m, n, k]: [usize; 3],
    dst: (*mut f32, isize, isize),
    accumulate: bool,
    lhs: (*const f32, isize, isize),
    rhs: (*const f32, isize, isize),
    scale: f32,
) {
    // SAFETY: forwarded to the caller's contract; gemm reads/writes only addressed elements.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.0,
            dst.2,
            dst.1,
            accumulate,
            lhs.0,
            lhs.2,
            lhs.1,
            rhs.0,
            rhs.2,
            rhs.1,
            1.0,
            scale,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

/// Attention for the heads `(batch, head)` numbered `first..first + out.len() / (nq·dh)`,
/// written head-major into `out` (`[nq, dh]` per head): scores by gemm straight from the
/// strided runs (no gathering copy), a row softmax, then the values by gemm.
fn attention_heads(
    q: &[f32],
    runs: &[KvRun<'_>],
    bias: Option<&[f32]>,
    out: &mut [f32],
    [_, nq, h, dh]: [usize; 4],
    first: usize,
) {
    let nk: usize = runs.iter().map(|r| r.len).sum();
    let scale = 1.0 / (dh as f32).sqrt();
    let row = (h * dh) as isize;
    let mut scores = vec![0f32; nq * nk];
    let mut probs = vec![0f32; nq * nk];
    for (j, o) in out.chunks_exact_mut(nq * dh).enumerate() {
        let (bi, hi) = ((first + j) / h, (first + j) % h);
        let qp = q[(bi * nq * h + hi) * dh..].as_ptr();
        let mut off = 0;
        for r in runs.iter().filter(|r| r.len > 0) {
            let kp = r.k[(bi * r.len * h + hi) * dh..].as_ptr();
            // SAFETY: `attention_forward` checked every slice against [b, ·, h, dh]; the
            // strides address rows of this head inside them, and `scores` is [nq, nk].
            unsafe {
                small_gemm(
                    [nq, r.len, dh],
                    (scores.as_mut_ptr().add(off), nk as isize, 1),
                    false,
                    (qp, row, 1),
                    (kp, 1, row),
                    scale,
                );
            }
            off += r.len;
        }
        if let Some(bias) = bias {
            for (s, b) in scores.iter_mut().zip(bias) {
                *s += b;
            }
        }
        softmax_mv(&scores, &mut probs, nk);
        let mut off = 0;
        for r in runs.iter().filter(|r| r.len > 0) {
            let vp = r.v[(bi * r.len * h + hi) * dh..].as_ptr();
            // SAFETY: as above; `o` is this head's [nq, dh].
            unsafe {
                small_gemm(
                    [nq, dh, r.len],
                    (o.as_mut_ptr(), dh as isize, 1),
                    off > 0,
                    (probs.as_ptr().add(off), nk as isize, 1),
                    (vp, row, 1),
                    1.0,
                );
            }
            off += r.len;
        }
    }
}

/// Scaled dot-product attention of position-major queries `q` (`[b, nq, h, dh]`) over the
/// keys and values of `runs` taken in order (`nk = Σ len` positions), with an optional
/// additive `bias` `[nq, nk]` shared by the batch (`0` or `−∞`); writes `out` head-major
/// (`[b, h, nq, dh]`).
///
/// Why: a sampling call attends 20–40 queries to a cache of a few hundred positions. Composed
/// of burn ops that is a copy of the whole cache (concatenation), two small batched matmuls,
/// a score tensor and a softmax, and it was the largest part of a music stream's model call
/// (1.0 of 3.6 ms). Here each run is read in place through its strides: per head, one gemm
/// per run for the scores, one row softmax, one gemm per run for the values.
pub fn attention_forward(
    q: &[f32],
    runs: &[KvRun<'_>],
    bias: Option<&[f32]>,
    out: &mut [f32],
    dims: [usize; 4],
) {
    let [b, nq, h, dh] = dims;
    let nk: usize = runs.iter().map(|r| r.len).sum();
    assert!(
        q.len() == b * nq * h * dh && out.len() == q.len(),
        "attention: query or output shape"
    );
    assert!(
        runs.iter()
            .all(|r| r.k.len() == b * r.len * h * dh && r.v.len() == r.k.len()),
        "attention: a key/value run's shape"
    );
    assert!(
        bias.is_none_or(|x| x.len() == nq * nk),
        "attention: bias is not [nq, nk]"
    );
    if out.is_empty() {
        return;
    }
    if runs.iter().all(|r| r.len == 0) {
        out.fill(0.0);
        return;
    }
    for_pieces(out, nq * dh, |start, o| {
        attention_heads(q, runs, bias, o, dims, start / (nq * dh))
    });
}

/// Rotary embedding, "rotate half" convention: for each `head_dim`-long head of `x`,
/// `out[j] = x[j]·cos[j] − x[j + half]·sin[j]` and
/// `out[j + half] = x[j + half]·cos[j + half] + x[j]·sin[j + half]`. `cos`/`sin` hold one
/// entry per element of a sample (`x.len()` is a whole number of samples).
pub fn rope_forward(x: &[f32], cos: &[f32], sin: &[f32], out: &mut [f32], head_dim: usize) {
    let per = cos.len();
    assert!(
        head_dim > 0
            && head_dim % 2 == 0
            && per % head_dim == 0
            && sin.len() == per
            && per > 0
            && x.len() % per == 0
            && out.len() == x.len(),
        "rope: shapes"
    );
    let half = head_dim / 2;
    for (xs, os) in x.chunks_exact(per).zip(out.chunks_exact_mut(per)) {
        for (((xh, oh), c), s) in xs
            .chunks_exact(head_dim)
            .zip(os.chunks_exact_mut(head_dim))
            .zip(cos.chunks_exact(head_dim))
            .zip(sin.chunks_exact(head_dim))
        {
            let (x1, x2) = xh.split_at(half);
            let (o1, o2) = oh.split_at_mut(half);
            for j in 0..half {
                o1[j] = x1[j] * c[j] - x2[j] * s[j];
                o2[j] = x2[j] * c[half + j] + x1[j] * s[half + j];
            }
        }
    }
}

/// Plain references (std `exp`, textbook formulas, f64 accumulation) the kernels are tested
/// against.
pub mod reference {
    /// `x · σ(x)`.
    pub fn silu(x: &[f32]) -> Vec<f32> {
        x.iter()
            .map(|&v| (v as f64 / (1.0 + (-v as f64).exp())) as f32)
            .collect()
    }

    /// `g · σ(x)(1 + x(1 − σ(x)))`.
    pub fn silu_backward(x: &[f32], g: &[f32]) -> Vec<f32> {
        x.iter()
            .zip(g)
            .map(|(&v, &g)| {
                let (v, g) = (v as f64, g as f64);
                let s = 1.0 / (1.0 + (-v).exp());
                (g * s * (1.0 + v * (1.0 - s))) as f32
            })
            .collect()
    }

    /// [`super::masked_exp`] in f64: the kept finite entries' `e^{(x − max)·scale}`, 0
    /// elsewhere, and their sum.
    pub fn masked_exp(x: &[f32], keep: &[bool], scale: f32) -> (Vec<f32>, f64) {
        let m = x
            .iter()
            .zip(keep)
            .filter(|(v, &k)| k && !v.is_nan())
            .fold(f64::NEG_INFINITY, |a, (&v, _)| a.max(v as f64));
        let e: Vec<f64> = x
            .iter()
            .zip(keep)
            .map(|(&v, &k)| {
                if k && v.is_finite() {
                    ((v as f64 - m) * scale as f64).exp()
                } else {
                    0.0
                }
            })
            .collect();
        let sum = e.iter().sum();
        (e.into_iter().map(|v| v as f32).collect(), sum)
    }

    /// Row softmax.
    pub fn softmax(x: &[f32], row_len: usize) -> Vec<f32> {
        x.chunks(row_len)
            .flat_map(|r| {
                let m = r.iter().fold(f64::NEG_INFINITY, |a, &b| a.max(b as f64));
                let e: Vec<f64> = r.iter().map(|&v| (v as f64 - m).exp()).collect();
                let s: f64 = e.iter().sum();
                e.into_iter().map(move |v| (v / s) as f32)
            })
            .collect()
    }

    /// Scaled dot-product attention, same layouts as [`super::attention_forward`], in f64.
    pub fn attention(
        q: &[f32],
        runs: &[super::KvRun<'_>],
        bias: Option<&[f32]>,
        [b, nq, h, dh]: [usize; 4],
    ) -> Vec<f32> {
        let nk: usize = runs.iter().map(|r| r.len).sum();
        let key = |bi: usize, hi: usize, j: usize| {
            let mut j = j;
            for r in runs {
                if j < r.len {
                    let s = ((bi * r.len + j) * h + hi) * dh;
                    return (&r.k[s..s + dh], &r.v[s..s + dh]);
                }
                j -= r.len;
            }
            unreachable!("key index within the runs")
        };
        let mut out = vec![0f32; b * h * nq * dh];
        for bi in 0..b {
            for hi in 0..h {
                for i in 0..nq {
                    let qs = ((bi * nq + i) * h + hi) * dh;
                    let scores: Vec<f64> = (0..nk)
                        .map(|j| {
                            let (k, _) = key(bi, hi, j);
                            let d: f64 = (0..dh).map(|c| q[qs + c] as f64 * k[c] as f64).sum();
                            d / (dh as f64).sqrt() + bias.map_or(0.0, |x| x[i * nk + j] as f64)
                        })
                        .collect();
                    let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let e: Vec<f64> = scores.iter().map(|s| (s - m).exp()).collect();
                    let sum: f64 = e.iter().sum();
                    for c in 0..dh {
                        let v: f64 = (0..nk).map(|j| e[j] * key(bi, hi, j).1[c] as f64).sum();
                        out[((bi * h + hi) * nq + i) * dh + c] = (v / sum) as f32;
                    }
                }
            }
        }
        out
    }

    /// Rotary "rotate half" by an explicit signed permutation, in f64.
    pub fn rope(x: &[f32], cos: &[f32], sin: &[f32], head_dim: usize) -> Vec<f32> {
        let half = head_dim / 2;
        (0..x.len())
            .map(|i| {
                let e = i % cos.len();
                let j = i % head_dim;
                let rotated = if j < half {
                    -(x[i + half] as f64)
                } else {
                    x[i - half] as f64
                };
                (x[i] as f64 * cos[e] as f64 + rotated * sin[e] as f64) as f32
            })
            .collect()
    }

    /// Row softmax backward from the output.
    pub fn softmax_backward(y: &[f32], g: &[f32], row_len: usize) -> Vec<f32> {
        y.chunks(row_len)
            .zip(g.chunks(row_len))
            .flat_map(|(y, g)| {
                let dot: f64 = y.iter().zip(g).map(|(&a, &b)| a as f64 * b as f64).sum();
                y.iter()
                    .zip(g)
                    .map(move |(&a, &b)| (a as f64 * (b as f64 - dot)) as f32)
            })
            .collect()
    }
}

/// `[b, a, c, dh] → [b, c, a, dh]`: the two middle axes swapped, copying whole `dh`-long
/// rows where a generic strided copy moves one element at a time. Splitting attention heads
/// is `[b, n, h, dh] → [b, h, n, dh]`; merging them is the same swap back.
pub fn swap_middle_axes(x: &[f32], out: &mut [f32], [b, a, c, dh]: [usize; 4]) {
    assert!(
        x.len() == b * a * c * dh && out.len() == x.len(),
        "swap_middle_axes: shape"
    );
    if out.is_empty() {
        return;
    }
    // One output block per (b, c): its `a` rows come from `a` places in the input.
    let block = a * dh;
    for_pieces(out, block, |start, o| {
        for (j, blk) in o.chunks_mut(block).enumerate() {
            let bc = start / block + j;
            let (bi, ci) = (bc / c, bc % c);
            for (ai, row) in blk.chunks_mut(dh).enumerate() {
                let src = ((bi * a + ai) * c + ci) * dh;
                row.copy_from_slice(&x[src..src + dh]);
            }
        }
    });
}
