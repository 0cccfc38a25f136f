//! Raw slice-kernel timings: `cargo run --release -p blockdiff-kernels --example kernel_speed`.
use std::time::Instant;

use blockdiff_kernels::cpu;

fn time(name: &str, mut f: impl FnMut()) {
    f();
    let t = Instant::now();
    for _ in 0..20 {
        f();
    }
    println!(
        "{name:32} {:8.3} ms",
        t.elapsed().as_secs_f64() / 20.0 * 1e3
    );
}

fn main() {
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
    time("cpu::exp (2M, 1 thread)", || {
        for (o, v) in out.iter_mut().zip(&x) {
            *o = cpu::exp(*v);
        }
    });
}
