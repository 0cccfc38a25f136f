//! Where a block-diffusion sample's time goes at the twin's full size (batch from argv, 16
//! by default): `cargo run --release --example profile_sample -- 16`, or under `perf record`.
use blockdiff::core::burn::module::AutodiffModule;
use blockdiff::core::condition::Conditioning;
use blockdiff::core::constraint::Unconstrained;
use blockdiff::core::model::BlockDiffusionModel;
use blockdiff::core::sample::sample;
use blockdiff::core::twin::TwinSpec;
use blockdiff::core::{CpuBackend, CpuTrainBackend};

fn main() {
    let batch: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(16);
    let spec = TwinSpec::full();
    let device = Default::default();
    let cfg = spec.timing_config();
    let model: BlockDiffusionModel<CpuBackend> = cfg.init::<CpuTrainBackend>(&device).valid();
    let scfg = spec.sampler_config();
    let requests = vec![Conditioning::default(); batch];
    let mut times = Vec::new();
    for _ in 0..8 {
        let out = sample(&model, &cfg, &requests, &Unconstrained, &scfg, &device).expect("valid");
        times.push(out.stats.wall_s * 1e3);
    }
    times.sort_by(|a, b| a.total_cmp(b));
    println!(
        "batch {batch}: median {:.1} ms per sample of {} tokens",
        times[4], spec.seq_len
    );
}
