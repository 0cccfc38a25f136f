//! Raw slice-kernel timings: `cargo run --release -p blockdiff-kernels --example kernel_speed`.
use std::time::Instant;

use blockdiff_kernels::cpu;

fn time(name: &str, f: impl FnMut()) {
    time_n(name, 20, f);
}

fn time_n(name: &str, reps: usize, mut f: impl FnMut()) {
    f();
    let t = Instant::now();
    for _ in 0..reps {
        f();
    }
    println!(
        "{name:40} {:8.3} ms",
        t.elapsed().as_secs_f64() / reps as f64 * 1e3
    );
}

/// A music stream's sampling call: 20 (and 40) queries, 4 heads of 32, over a 220-position
/// cache plus the call's own keys, fused kernel against burn's composition (concatenate the
/// cache, two matmuls, softmax), alternated.
fn cached_attention() {
    use burn::backend::Flex;
    use burn::prelude::*;
    let d = Default::default();
    let (h, dh, cache) = (4usize, 32usize, 220usize);
    let t = |n: usize, seed: usize| {
        let v: Vec<f32> = (0..n * h * dh)
            .map(|i| (((i + seed) * 7919) % 1000) as f32 / 500.0 - 1.0)
            .collect();
        Tensor::<Flex, 1>::from_floats(v.as_slice(), &d).reshape([1, n, h, dh])
    };
    for nq in [20usize, 40] {
        let (pk, pv, k, v) = (t(cache, 1), t(cache, 2), t(nq, 3), t(nq, 4));
        let q = t(nq, 5).reshape([1, nq, h * dh]);
        let burn = || {
            let kk = Tensor::cat(vec![pk.clone(), k.clone()], 1).swap_dims(1, 2);
            let vv = Tensor::cat(vec![pv.clone(), v.clone()], 1).swap_dims(1, 2);
            let qh = q.clone().reshape([1, nq, h, dh]).swap_dims(1, 2);
            let s = qh.matmul(kk.swap_dims(2, 3)) * (1.0 / (dh as f64).sqrt());
            let a = blockdiff_kernels::softmax(s, 3).matmul(vv);
            blockdiff_kernels::merge_heads(a).into_data()
        };
        let fused = || {
            blockdiff_kernels::cached_attention(&q, h, &[(&pk, &pv), (&k, &v)], None)
                .expect("Flex")
                .into_data()
        };
        for round in 0..2 {
            time_n(
                &format!("attention {nq} q, burn ops (round {round})"),
                500,
                || {
                    let _ = burn();
                },
            );
            time_n(
                &format!("attention {nq} q, fused (round {round})"),
                500,
                || {
                    let _ = fused();
                },
            );
        }
    }
}

/// A music stream call's projections (25 rows of width 128): Q, K and V as three matmuls
/// against one of the concatenated weight, and SwiGLU's gate and up likewise.
fn fused_linears() {
    use burn::backend::Flex;
    use burn::prelude::*;
    let d = Default::default();
    let w = |i: usize, o: usize, seed: usize| {
        let v: Vec<f32> = (0..i * o)
            .map(|j| (((j + seed) * 7919) % 1000) as f32 / 5000.0 - 0.1)
            .collect();
        Tensor::<Flex, 1>::from_floats(v.as_slice(), &d).reshape([i, o])
    };
    let x = w(25, 128, 9).reshape([1, 25, 128]);
    for (name, parts, width) in [("q, k, v", 3usize, 128usize), ("gate, up", 2, 344)] {
        let ws: Vec<_> = (0..parts).map(|p| w(128, width, p)).collect();
        let fused = Tensor::cat(ws.clone(), 1);
        for round in 0..2 {
            time_n(
                &format!("{name}: {parts} matmuls (round {round})"),
                2000,
                || {
                    for w in &ws {
                        let _ = x.clone().matmul(w.clone().unsqueeze::<3>());
                    }
                },
            );
            time_n(
                &format!("{name}: one fused + split (round {round})"),
                2000,
                || {
                    let y = x.clone().matmul(fused.clone().unsqueeze::<3>());
                    let _ = y.split(width, 2);
                },
            );
        }
    }
}

/// The sampler's softmax numerator over one audio codebook (1,024 ids), the kernel against
/// the scalar [`cpu::exp`] in a plain loop (no FMA build: each `mul_add` is a libm call).
fn masked_exp() {
    let x: Vec<f32> = (0..1024)
        .map(|i| ((i * 7919) % 1000) as f32 / 100.0 - 5.0)
        .collect();
    let keep = vec![true; 1024];
    let mut out = vec![0f32; 1024];
    for round in 0..2 {
        time_n(
            &format!("masked exp 1024, kernel (round {round})"),
            20000,
            || {
                std::hint::black_box(cpu::masked_exp(&x, &keep, 1.0, &mut out));
            },
        );
        time_n(
            &format!("masked exp 1024, scalar loop (round {round})"),
            20000,
            || {
                let m = x.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
                let mut s = 0.0;
                for (o, &v) in out.iter_mut().zip(&x) {
                    *o = cpu::exp(v - m);
                    s += *o;
                }
                std::hint::black_box(s);
            },
        );
    }
}

fn main() {
    fused_linears();
    masked_exp();
    let n = 32 * 4 * 128 * 128;
    let x: Vec<f32> = (0..n)
        .map(|i| ((i * 7919) % 1000) as f32 / 100.0 - 5.0)
        .collect();
    let mut out = vec![0f32; n];
    time("softmax rows of 128 (2M)", || {
        cpu::softmax_forward(&x, &mut out, 128)
    });
    time("silu (2M)", || cpu::silu_forward(&x, &mut out));
    time("std exp (2M, 1 thread)", || {
        for (o, v) in out.iter_mut().zip(&x) {
            *o = v.exp();
        }
    });
    {
        use burn::prelude::*;
        let d = Default::default();
        let t = Tensor::<burn::backend::Flex, 1>::from_floats(x.as_slice(), &d)
            .reshape([32, 4, 128, 128]);
        time("ops::softmax (no readback)", || {
            let _ = blockdiff_kernels::softmax(t.clone(), 3);
        });
        time("ops::softmax + into_data", || {
            let _ = blockdiff_kernels::softmax(t.clone(), 3).into_data();
        });
        time("burn softmax + into_data", || {
            let _ = burn::tensor::activation::softmax(t.clone(), 3).into_data();
        });
        time("ops::silu (no readback)", || {
            let _ = blockdiff_kernels::silu(t.clone());
        });
    }
    cached_attention();
    time("cpu::exp (2M, 1 thread)", || {
        for (o, v) in out.iter_mut().zip(&x) {
            *o = cpu::exp(*v);
        }
    });
}
