//! Training throughput on this machine's cores: one process-wide step (`train`) against two
//! data-parallel peers on the CPU device (`train_data_parallel`), same model, batches and
//! steps. `cargo run --release --example data_parallel_speed [steps] [peers]`
use blockdiff::core::bench::MarkovTask;
use blockdiff::core::burn::prelude::*;
use blockdiff::core::train::{train, train_data_parallel};
use blockdiff::core::CpuTrainBackend;

fn main() {
    blockdiff::core::retain_freed_memory();
    let mut args = std::env::args().skip(1);
    let steps: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(30);
    let peers: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(2);
    let mut task = if std::env::var("SMALL").is_ok() { MarkovTask::small() } else { MarkovTask::full() };
    task.steps = steps;
    task.n_train = 2000;
    let device: Device<CpuTrainBackend> = Default::default();
    let (train_set, val) = task.data();
    let mcfg = task.model_config();
    let tcfg = task.train_config().with_progress(false);
    for round in 0..2 {
        <CpuTrainBackend as Backend>::seed(&device, task.seed);
        let model = mcfg.init::<CpuTrainBackend>(&device);
        // Both runs from the same weights (a fresh model's clones initialise separately).
        blockdiff::core::train::materialize(&model);
        let t = std::time::Instant::now();
        let (m1, one) = train(model.clone(), &mcfg, &tcfg, &train_set, &val[..0], None, &device)
            .expect("valid task");
        let s_one = t.elapsed().as_secs_f64();
        let devices = vec![device.clone(); peers];
        let t = std::time::Instant::now();
        let (m2, many) =
            train_data_parallel(model, &mcfg, &tcfg, &train_set, &val[..0], None, &devices)
                .expect("valid task");
        let s_many = t.elapsed().as_secs_f64();
        {
            use blockdiff::core::burn::module::AutodiffModule;
            let w = |m: &blockdiff::core::model::BlockDiffusionModel<CpuTrainBackend>| {
                let b = blockdiff::core::checkpoint::weights_to_bytes(&m.valid());
                let n = u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
                b[8 + n..].chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect::<Vec<f32>>()
            };
            let (a, b) = (w(&m1), w(&m2));
            eprintln!("max diff {}", a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max));
        }
        println!(
            "round {round}: 1 process {:.0} tok/s ({s_one:.1} s) | {peers} peers {:.0} tok/s ({s_many:.1} s) | {:.2}x | final train loss {:.4} vs {:.4}",
            one.tokens_per_s,
            many.tokens_per_s,
            s_one / s_many,
            one.final_train_loss,
            many.final_train_loss
        );
    }
}
