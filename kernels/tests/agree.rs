//! Every kernel agrees with its plain reference, and the burn ops (values and gradients) agree
//! with burn's own composed ops on both CPU backends.

use blockdiff_kernels::cpu::{self, reference};
use burn::backend::{Autodiff, Flex};
use burn::prelude::*;
use burn::tensor::activation;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn randn(n: usize, scale: f32, seed: u64) -> Vec<f32> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n)
        .map(|_| (rng.random::<f32>() * 2.0 - 1.0) * scale)
        .collect()
}

/// Max relative error, with an absolute floor `tiny` for values near 0.
fn max_rel(a: &[f32], b: &[f32], tiny: f32) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(&x, &y)| {
            if x == y {
                0.0
            } else {
                (x - y).abs() / y.abs().max(tiny)
            }
        })
        .fold(0.0, f32::max)
}

#[test]
fn exp_is_within_two_ulp_and_handles_the_edges() {
    let mut worst = 0.0f64;
    let mut x = -87.0f32;
    while x < 88.0 {
        let got = cpu::exp(x) as f64;
        let want = (x as f64).exp();
        worst = worst.max(((got - want) / want).abs());
        x += 0.0137;
    }
    assert!(worst < 2.5e-7, "relative error {worst:e}");
    assert_eq!(cpu::exp(f32::NEG_INFINITY), 0.0);
    assert_eq!(cpu::exp(-200.0), 0.0);
    assert_eq!(cpu::exp(0.0), 1.0);
    assert_eq!(cpu::exp(200.0), f32::INFINITY);
    assert_eq!(cpu::exp(f32::INFINITY), f32::INFINITY);
    assert!(cpu::exp(f32::NAN).is_nan());
}

#[test]
fn masked_exp_matches_the_reference_with_masks_and_non_finite_entries() {
    let mut rng = StdRng::seed_from_u64(7);
    for (n, scale) in [
        (1usize, 1.0f32),
        (15, 1.0),
        (16, 0.5),
        (1031, 1.0 / 0.7),
        (4164, 2.0),
    ] {
        let mut x = randn(n, 20.0, n as u64);
        let keep: Vec<bool> = (0..n).map(|_| rng.random::<f32>() < 0.7).collect();
        for i in (0..n).step_by(97) {
            x[i] = [f32::NEG_INFINITY, f32::NAN, -1e30][i % 3];
        }
        let mut out = vec![f32::NAN; n];
        let sum = cpu::masked_exp(&x, &keep, scale, &mut out);
        let (want, want_sum) = reference::masked_exp(&x, &keep, scale);
        // The f32 argument `(x − m)·scale` (up to ~80) carries ~1e-5 relative rounding.
        assert!(max_rel(&out, &want, 1e-30) < 2e-5, "n {n}");
        assert!(
            ((sum as f64 - want_sum) / want_sum.max(1e-30)).abs() < 1e-5,
            "n {n}"
        );
        for (i, &o) in out.iter().enumerate() {
            if !keep[i] || !x[i].is_finite() {
                assert_eq!(o, 0.0, "n {n} id {i}");
            }
        }
    }
    // Nothing kept, or only −∞ kept: all zero, sum 0 (the sampler then falls back to uniform).
    let mut out = vec![1.0; 3];
    assert_eq!(
        cpu::masked_exp(&[1.0, 2.0, 3.0], &[false; 3], 1.0, &mut out),
        0.0
    );
    assert_eq!(out, [0.0; 3]);
    let x = [f32::NEG_INFINITY, 2.0, f32::NEG_INFINITY];
    assert_eq!(
        cpu::masked_exp(&x, &[true, false, true], 1.0, &mut out),
        0.0
    );
    assert_eq!(out, [0.0; 3]);
}

#[test]
fn silu_kernels_match_the_reference_small_and_parallel() {
    for (n, seed) in [(37usize, 1u64), (200_003, 2)] {
        let x = randn(n, 12.0, seed);
        let g = randn(n, 1.0, seed + 10);
        let mut out = vec![0.0; n];
        cpu::silu_forward(&x, &mut out);
        assert!(max_rel(&out, &reference::silu(&x), 1e-3) < 1e-6);
        cpu::silu_backward(&x, &g, &mut out);
        // The derivative crosses 0 near x = −1.28, where f32 rounding of `1 + x(1 − σ)` is
        // absolute, not relative: compare against the size of the terms.
        let want = reference::silu_backward(&x, &g);
        let err = (0..n)
            .map(|i| (out[i] - want[i]).abs() / (g[i].abs() * (1.0 + x[i].abs())).max(1e-6))
            .fold(0.0, f32::max);
        assert!(err < 1e-6, "silu backward {err:e}");
    }
}

#[test]
fn softmax_kernels_match_the_reference_with_masked_entries() {
    for (rows, len, seed) in [(3usize, 5usize, 3u64), (40, 33, 4), (2000, 128, 5)] {
        let mut x = randn(rows * len, 20.0, seed);
        // Blocked attention entries are −∞ (every row keeps one visible key).
        for r in 0..rows {
            for j in (r % 3..len).step_by(4) {
                if j != 0 {
                    x[r * len + j] = f32::NEG_INFINITY;
                }
            }
        }
        let g = randn(rows * len, 1.0, seed + 20);
        let mut y = vec![0.0; rows * len];
        cpu::softmax_forward(&x, &mut y, len);
        let want = reference::softmax(&x, len);
        assert!(max_rel(&y, &want, 1e-6) < 2e-6, "rows {rows} × {len}");
        for (j, v) in y.iter().enumerate() {
            if x[j] == f32::NEG_INFINITY {
                assert_eq!(*v, 0.0, "a blocked entry gets exactly 0");
            }
        }
        let mut dx = vec![0.0; rows * len];
        cpu::softmax_backward(&y, &g, &mut dx, len);
        let want = reference::softmax_backward(&y, &g, len);
        let err = dx
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        assert!(err < 1e-6, "softmax backward {err:e}");
    }
}

fn tensor<B: Backend>(v: &[f32], shape: [usize; 4], dev: &B::Device) -> Tensor<B, 4> {
    Tensor::<B, 1>::from_floats(v, dev).reshape(shape)
}

fn max_diff<B: Backend, const D: usize>(a: Tensor<B, D>, b: Tensor<B, D>) -> f32 {
    (a - b).abs().max().into_scalar().elem()
}

#[test]
fn burn_ops_match_burns_own_on_flex_including_strided_inputs() {
    let dev = Default::default();
    let shape = [2, 3, 7, 24];
    let x = tensor::<Flex>(&randn(2 * 3 * 7 * 24, 6.0, 7), shape, &dev);
    let d = max_diff(
        blockdiff_kernels::silu(x.clone()),
        activation::silu(x.clone()),
    );
    assert!(d < 1e-5, "silu {d:e}");
    let d = max_diff(
        blockdiff_kernels::softmax(x.clone(), 3),
        activation::softmax(x.clone(), 3),
    );
    assert!(d < 1e-6, "softmax {d:e}");
    // A strided view (the attention layout) and a softmax over a non-last dim (falls back).
    let xt = x.clone().swap_dims(1, 2);
    let d = max_diff(
        blockdiff_kernels::softmax(xt.clone(), 3),
        activation::softmax(xt.clone(), 3),
    );
    assert!(d < 1e-6, "strided softmax {d:e}");
    let d = max_diff(
        blockdiff_kernels::softmax(x.clone(), 2),
        activation::softmax(x, 2),
    );
    assert_eq!(d, 0.0, "non-last dim uses burn's op");
}

#[test]
fn autodiff_gradients_match_burns_own() {
    type Ad = Autodiff<Flex>;
    let dev = Default::default();
    let shape = [2, 4, 9, 40];
    let n = 2 * 4 * 9 * 40;
    let xs = randn(n, 5.0, 11);
    let ws = randn(n, 1.0, 12);
    let grads = |fast: bool, op: &str| -> (Vec<f32>, Vec<f32>) {
        let x = tensor::<Ad>(&xs, shape, &dev).require_grad();
        let w = tensor::<Ad>(&ws, shape, &dev);
        // A strided input, as attention scores are after a transpose.
        let xv = x.clone().swap_dims(2, 3).swap_dims(2, 3);
        let y = match (op, fast) {
            ("silu", true) => blockdiff_kernels::silu(xv),
            ("silu", false) => activation::silu(xv),
            (_, true) => blockdiff_kernels::softmax(xv, 3),
            (_, false) => activation::softmax(xv, 3),
        };
        // Chained through a second use so the gradient reaching the kernel is not all ones.
        let loss = (y.clone() * w.clone() + y.clone() * y * 0.25).sum();
        let g = loss.backward();
        let gx = x.grad(&g).expect("x has a gradient");
        let y_val = match op {
            "silu" => activation::silu(x.inner()),
            _ => activation::softmax(x.inner(), 3),
        };
        (
            gx.into_data().to_vec().expect("f32"),
            y_val.into_data().to_vec().expect("f32"),
        )
    };
    for op in ["silu", "softmax"] {
        let (fast, _) = grads(true, op);
        let (slow, _) = grads(false, op);
        let err = fast
            .iter()
            .zip(&slow)
            .map(|(a, b)| (a - b).abs() / b.abs().max(1e-3))
            .fold(0.0, f32::max);
        assert!(err < 1e-4, "{op} gradient relative error {err:e}");
        assert!(fast.iter().any(|v| *v != 0.0), "{op}: gradients flow");
    }
}

#[test]
fn head_split_and_merge_equal_burns_views_values_and_gradients() {
    type Ad = Autodiff<Flex>;
    let dev = Default::default();
    let (b, n, h, dh) = (3, 70, 4, 24);
    let xs = randn(b * n * h * dh, 2.0, 21);
    let ws = randn(b * n * h * dh, 1.0, 22);
    let x3 = |xs: &[f32]| Tensor::<Ad, 1>::from_floats(xs, &dev).reshape([b, n, h * dh]);
    // Forward: the same tensors, exactly.
    let fast = blockdiff_kernels::split_heads(x3(&xs), h);
    let view = x3(&xs).reshape([b, n, h, dh]).swap_dims(1, 2);
    assert_eq!(max_diff(fast.clone(), view), 0.0);
    let merged = blockdiff_kernels::merge_heads(fast);
    assert_eq!(max_diff(merged, x3(&xs)), 0.0, "merge undoes split");
    // Backward through split → (·w) → merge, against burn's views.
    let run = |fast: bool| -> Vec<f32> {
        let x = x3(&xs).require_grad();
        let w = Tensor::<Ad, 1>::from_floats(ws.as_slice(), &dev).reshape([b, h, n, dh]);
        let s = if fast {
            blockdiff_kernels::split_heads(x.clone(), h)
        } else {
            x.clone().reshape([b, n, h, dh]).swap_dims(1, 2)
        };
        let y = s * w;
        let m = if fast {
            blockdiff_kernels::merge_heads(y)
        } else {
            y.swap_dims(1, 2).reshape([b, n, h * dh])
        };
        let loss = (m.clone() * m).sum();
        let g = loss.backward();
        x.grad(&g).expect("grad").into_data().to_vec().expect("f32")
    };
    assert_eq!(run(true), run(false));
    // Inference backend: split is burn's own view, merge a row copy, both exact.
    let xf = Tensor::<Flex, 1>::from_floats(xs.as_slice(), &dev).reshape([b, n, h * dh]);
    let s = blockdiff_kernels::split_heads(xf.clone(), h);
    assert_eq!(max_diff(blockdiff_kernels::merge_heads(s), xf), 0.0);
}

#[test]
fn axis_swap_is_exact_serial_and_parallel() {
    for (dims, seed) in [([2usize, 5, 3, 4], 31u64), ([4, 130, 4, 32], 32)] {
        let [b, a, c, dh] = dims;
        let x = randn(b * a * c * dh, 1.0, seed);
        let mut out = vec![0.0; x.len()];
        cpu::swap_middle_axes(&x, &mut out, dims);
        for bi in 0..b {
            for ai in 0..a {
                for ci in 0..c {
                    for k in 0..dh {
                        let src = ((bi * a + ai) * c + ci) * dh + k;
                        let dst = ((bi * c + ci) * a + ai) * dh + k;
                        assert_eq!(out[dst], x[src]);
                    }
                }
            }
        }
        let mut back = vec![0.0; x.len()];
        cpu::swap_middle_axes(&out, &mut back, [b, c, a, dh]);
        assert_eq!(back, x, "swapping back restores the input");
    }
}

/// The fused cached attention equals the f64 reference over several key runs, with and
/// without a mask, and the burn op equals burn's composed attention over the concatenation.
#[test]
fn cached_attention_matches_the_reference_and_burn() {
    let (b, nq, h, dh) = (2usize, 5usize, 3usize, 8usize);
    let lens = [7usize, 5];
    let q = randn(b * nq * h * dh, 1.5, 40);
    let ks: Vec<Vec<f32>> = lens
        .iter()
        .enumerate()
        .map(|(i, &m)| randn(b * m * h * dh, 1.5, 41 + i as u64))
        .collect();
    let vs: Vec<Vec<f32>> = lens
        .iter()
        .enumerate()
        .map(|(i, &m)| randn(b * m * h * dh, 1.0, 51 + i as u64))
        .collect();
    let nk: usize = lens.iter().sum();
    // Block-causal style mask: query i sees keys up to 7 + i.
    let bias: Vec<f32> = (0..nq * nk)
        .map(|x| {
            if x % nk <= 7 + x / nk {
                0.0
            } else {
                f32::NEG_INFINITY
            }
        })
        .collect();
    let runs: Vec<cpu::KvRun<'_>> = lens
        .iter()
        .enumerate()
        .map(|(i, &len)| cpu::KvRun {
            k: &ks[i],
            v: &vs[i],
            len,
        })
        .collect();
    for mask in [None, Some(bias.as_slice())] {
        let mut out = vec![0.0; q.len()];
        cpu::attention_forward(&q, &runs, mask, &mut out, [b, nq, h, dh]);
        let want = reference::attention(&q, &runs, mask, [b, nq, h, dh]);
        let e = max_rel(&out, &want, 1e-3);
        assert!(e < 5e-5, "mask {}: {e}", mask.is_some());
    }
    // The burn op (heads merged) against burn's composition over the concatenated cache.
    let device = Default::default();
    let t4 =
        |v: &[f32], m: usize| Tensor::<Flex, 1>::from_floats(v, &device).reshape([b, m, h, dh]);
    let qt = Tensor::<Flex, 1>::from_floats(q.as_slice(), &device).reshape([b, nq, h * dh]);
    let (k0, v0, k1, v1) = (t4(&ks[0], 7), t4(&vs[0], 7), t4(&ks[1], 5), t4(&vs[1], 5));
    let bias_t = Tensor::<Flex, 1>::from_floats(bias.as_slice(), &device).reshape([1, nq * nk]);
    let got = blockdiff_kernels::cached_attention(&qt, h, &[(&k0, &v0), (&k1, &v1)], Some(&bias_t))
        .expect("Flex runs the kernel");
    let k = Tensor::cat(vec![k0, k1], 1).swap_dims(1, 2);
    let v = Tensor::cat(vec![v0, v1], 1).swap_dims(1, 2);
    let qh = qt.reshape([b, nq, h, dh]).swap_dims(1, 2);
    let scores = qh.matmul(k.swap_dims(2, 3)) * (1.0 / (dh as f64).sqrt());
    let scores = (scores.reshape([b * h, nq * nk]) + bias_t).reshape([b, h, nq, nk]);
    let want = activation::softmax(scores, 3)
        .matmul(v)
        .swap_dims(1, 2)
        .reshape([b, nq, h * dh]);
    let (got, want) = (
        got.into_data().to_vec::<f32>().unwrap(),
        want.into_data().to_vec::<f32>().unwrap(),
    );
    assert!(max_rel(&got, &want, 1e-3) < 1e-4);
}

/// The one-pass rotary embedding equals the reference and burn's rotate-half composition.
#[test]
fn rope_matches_the_reference_and_burn() {
    let (b, n, d, hd) = (2usize, 3usize, 8usize, 4usize);
    let x = randn(b * n * d, 2.0, 60);
    let cos = randn(n * d, 1.0, 61);
    let sin = randn(n * d, 1.0, 62);
    let mut out = vec![0.0; x.len()];
    cpu::rope_forward(&x, &cos, &sin, &mut out, hd);
    assert!(max_rel(&out, &reference::rope(&x, &cos, &sin, hd), 1e-3) < 1e-5);
    let device = Default::default();
    let xt = Tensor::<Flex, 1>::from_floats(x.as_slice(), &device).reshape([b, n, d]);
    let ct = Tensor::<Flex, 1>::from_floats(cos.as_slice(), &device).reshape([1, n * d]);
    let st = Tensor::<Flex, 1>::from_floats(sin.as_slice(), &device).reshape([1, n * d]);
    let got = blockdiff_kernels::rope_rotate(&xt, &ct, &st, hd).expect("Flex runs the kernel");
    let halves = xt.clone().reshape([b, n * d / hd, hd]);
    let (x1, x2) = (
        halves.clone().narrow(2, 0, hd / 2),
        halves.narrow(2, hd / 2, hd / 2),
    );
    let rotated = Tensor::cat(vec![x2.neg(), x1], 2).reshape([b, n * d]);
    let want = (xt.reshape([b, n * d]) * ct + rotated * st).reshape([b, n, d]);
    let (got, want) = (
        got.into_data().to_vec::<f32>().unwrap(),
        want.into_data().to_vec::<f32>().unwrap(),
    );
    assert!(max_rel(&got, &want, 1e-3) < 1e-5);
}
