//! Slice kernels: SiLU and row softmax, forward and backward, each with a plain reference.
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
        fn $name($($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,fma")]
                fn fast($($arg: $ty),*) {
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
