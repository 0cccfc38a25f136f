//! Micro-timings of the ops a forward pass is made of, on burn-flex.
use std::time::Instant;

use blockdiff::core::burn::prelude::*;
use blockdiff::core::burn::tensor::activation::{silu, softmax};
use blockdiff::core::burn::tensor::Distribution;
use blockdiff::core::CpuBackend as B;

fn time<F: FnMut()>(name: &str, mut f: F) {
    f();
    let n = 20;
    let t = Instant::now();
    for _ in 0..n {
        f();
    }
    println!(
        "{name:40} {:8.3} ms",
        t.elapsed().as_secs_f64() / n as f64 * 1e3
    );
}

fn main() {
    let d = Default::default();
    let r = |s: [usize; 2]| Tensor::<B, 2>::random(s, Distribution::Normal(0.0, 1.0), &d);
    let x = r([4096, 128]);
    let w = r([128, 128]);
    let w2 = r([128, 344]);
    let w3 = r([344, 128]);
    let h = r([4096, 344]);
    time("matmul 4096x128 @ 128x128", || {
        let _ = x.clone().matmul(w.clone()).into_data();
    });
    time("matmul 4096x128 @ 128x344", || {
        let _ = x.clone().matmul(w2.clone()).into_data();
    });
    time("matmul 4096x344 @ 344x128", || {
        let _ = h.clone().matmul(w3.clone()).into_data();
    });
    let x3 = Tensor::<B, 3>::random([32, 128, 128], Distribution::Normal(0.0, 1.0), &d);
    let w3d =
        Tensor::<B, 2>::random([128, 128], Distribution::Normal(0.0, 1.0), &d).unsqueeze::<3>();
    time("matmul 3d [32,128,128] @ [1,128,128]", || {
        let _ = x3.clone().matmul(w3d.clone()).into_data();
    });
    let q = Tensor::<B, 4>::random([32, 4, 128, 32], Distribution::Normal(0.0, 1.0), &d);
    let k = Tensor::<B, 4>::random([32, 4, 128, 32], Distribution::Normal(0.0, 1.0), &d);
    time("q @ k^T [32,4,128,32]", || {
        let _ = q.clone().matmul(k.clone().swap_dims(2, 3)).into_data();
    });
    let s = Tensor::<B, 4>::random([32, 4, 128, 128], Distribution::Normal(0.0, 1.0), &d);
    time("softmax [32,4,128,128]", || {
        let _ = softmax(s.clone(), 3).into_data();
    });
    time("kernels::softmax [32,4,128,128]", || {
        let _ = blockdiff_kernels::softmax(s.clone(), 3).into_data();
    });
    time("p @ v [32,4,128,128]x[..,128,32]", || {
        let _ = s.clone().matmul(k.clone()).into_data();
    });
    let bias = Tensor::<B, 2>::random([1, 128 * 128], Distribution::Normal(0.0, 1.0), &d);
    time("scores + bias row", || {
        let _ = (s.clone().reshape([128, 128 * 128]) + bias.clone()).into_data();
    });
    time("silu [4096,344]", || {
        let _ = silu(h.clone()).into_data();
    });
    time("kernels::silu [4096,344]", || {
        let _ = blockdiff_kernels::silu(h.clone()).into_data();
    });
    time("swap_dims(1,2) reshape [32,128,4,32]", || {
        let _ = q
            .clone()
            .swap_dims(1, 2)
            .reshape([32, 128, 128])
            .into_data();
    });
    let x3b = Tensor::<B, 3>::random([32, 128, 128], Distribution::Normal(0.0, 1.0), &d);
    let lin = blockdiff::core::burn::nn::LinearConfig::new(128, 128)
        .with_bias(false)
        .init::<B>(&d);
    time("nn::Linear [32,128,128]", || {
        let _ = lin.forward(x3b.clone()).into_data();
    });
    time("exp [4096,344]", || {
        let _ = h.clone().exp().into_data();
    });
    time("tanh [4096,344]", || {
        let _ = h.clone().tanh().into_data();
    });
    time("mul [4096,344]", || {
        let _ = (h.clone() * h.clone()).into_data();
    });
    time("x/(1+exp(-x))", || {
        let _ = (h.clone() / (h.clone().neg().exp() + 1.0)).into_data();
    });
    time("x*sigmoid(x) via tanh", || {
        let _ = (h.clone() * ((h.clone() * 0.5).tanh() * 0.5 + 0.5)).into_data();
    });
    time("k^T made contiguous (*1)", || {
        let _ = (k.clone().swap_dims(2, 3) * 1.0).into_data();
    });
    let kt = k.clone().swap_dims(2, 3) * 1.0;
    time("q @ contiguous k^T", || {
        let _ = q.clone().matmul(kt.clone()).into_data();
    });
    let q3 = q.clone().reshape([128, 128, 32]);
    let kt3 = kt.clone().reshape([128, 32, 128]);
    time("q @ contiguous k^T (3d)", || {
        let _ = q3.clone().matmul(kt3.clone()).into_data();
    });
    let norm = blockdiff::core::burn::nn::RmsNormConfig::new(128).init::<B>(&d);
    time("RmsNorm [32,128,128]", || {
        let _ = norm.forward(x3b.clone()).into_data();
    });
}
