//! Where a training step's time goes (forward, backward, optimiser) at the twin's full size.
//! `cargo run --release --example profile_train`
use std::time::Instant;

use blockdiff::core::burn::module::AutodiffModule;
use blockdiff::core::burn::optim::{AdamWConfig, GradientsParams, Optimizer};
use blockdiff::core::burn::prelude::*;
use blockdiff::core::condition::Example;
use blockdiff::core::model::BlockDiffusionModel;
use blockdiff::core::train::{batch_loss, noised_batch, Noise, NoisedBatch};
use blockdiff::core::twin::TwinSpec;
use blockdiff::core::{CpuBackend, CpuTrainBackend};
use rand::rngs::StdRng;
use rand::SeedableRng;

/// The twin's noised training batch on backend `B`.
fn noise<B: Backend>(
    refs: &[&Example],
    spec: &TwinSpec,
    rng: &mut StdRng,
    device: &B::Device,
) -> NoisedBatch<B> {
    let (cfg, tcfg) = (spec.timing_config(), spec.train_config());
    noised_batch::<B>(
        refs,
        &cfg,
        &tcfg,
        spec.block_size,
        Noise::Random,
        false,
        rng,
        device,
    )
}

fn main() {
    let spec = TwinSpec::full();
    let device = Default::default();
    let cfg = spec.timing_config();
    let mut rng = StdRng::seed_from_u64(1);
    let data = spec.timing_data(&mut rng);
    let refs: Vec<&Example> = data.iter().collect();
    let mut model = cfg.init::<CpuTrainBackend>(&device);
    let mut optim =
        AdamWConfig::new().init::<CpuTrainBackend, BlockDiffusionModel<CpuTrainBackend>>();
    let inner: BlockDiffusionModel<CpuBackend> = model.valid();
    // Iterations from argv (default 6); the first two warm the allocator and are not timed.
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(6);
    let warm = 2;
    let (mut t_batch, mut t_inf, mut t_fwd, mut t_bwd, mut t_opt) = (0.0, 0.0, 0.0, 0.0, 0.0);
    for it in 0..n + warm {
        if it == warm {
            (t_batch, t_inf, t_fwd, t_bwd, t_opt) = (0.0, 0.0, 0.0, 0.0, 0.0);
        }
        let t = Instant::now();
        let batch = noise::<CpuTrainBackend>(&refs, &spec, &mut rng, &device);
        let b2 = noise::<CpuBackend>(&refs, &spec, &mut rng, &device);
        t_batch += t.elapsed().as_secs_f64();
        let t = Instant::now();
        let l: f32 = batch_loss(&inner, b2).into_scalar().elem();
        t_inf += t.elapsed().as_secs_f64();
        let t = Instant::now();
        let loss = batch_loss(&model, batch);
        let _: f32 = loss.clone().into_scalar().elem();
        t_fwd += t.elapsed().as_secs_f64();
        let t = Instant::now();
        let grads = loss.backward();
        let grads = GradientsParams::from_grads(grads, &model);
        t_bwd += t.elapsed().as_secs_f64();
        let t = Instant::now();
        model = optim.step(1e-3, model, grads);
        t_opt += t.elapsed().as_secs_f64();
        let _ = l;
    }
    let ms = |x: f64| x / n as f64 * 1e3;
    println!("batch {:.1} ms (x2) | inference fwd {:.1} | autodiff fwd {:.1} | backward {:.1} | adamw {:.1}", ms(t_batch), ms(t_inf), ms(t_fwd), ms(t_bwd), ms(t_opt));
}
