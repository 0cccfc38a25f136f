//! Training throughput on this machine's cores: one process-wide step (`train`) against two
//! data-parallel peers on the CPU device (`train_data_parallel`), same model, batches and
//! steps, from the same weights (the final losses agree up to the order of float sums).
//! `cargo run --release --example data_parallel_speed [steps] [peers]`; `SMALL=1` for the
//! CI-sized model.
use blockdiff::core::bench::MarkovTask;
use blockdiff::core::burn::prelude::*;
use blockdiff::core::train::{train, train_data_parallel};
use blockdiff::core::CpuTrainBackend;

fn main() {
    blockdiff::core::retain_freed_memory();
    let mut args = std::env::args().skip(1);
    let steps: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(30);
    let peers: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(2);
    let mut task = if std::env::var("SMALL").is_ok() {
        MarkovTask::small()
    } else {
        MarkovTask::full()
    };
    task.steps = steps;
    task.n_train = 2000;
    let device: Device<CpuTrainBackend> = Default::default();
    let (train_set, val) = task.data();
    let mcfg = task.model_config();
    let tcfg = task.train_config().with_progress(false);
    for round in 0..2 {
        // Both runs from the same weights.
        let model = mcfg.init_seeded::<CpuTrainBackend>(task.seed, &device);
        let t = std::time::Instant::now();
        let (_, one) = train(
            model.clone(),
            &mcfg,
            &tcfg,
            &train_set,
            &val[..0],
            None,
            &device,
        )
        .expect("valid task");
        let s_one = t.elapsed().as_secs_f64();
        let devices = vec![device.clone(); peers];
        let t = std::time::Instant::now();
        let (_, many) =
            train_data_parallel(model, &mcfg, &tcfg, &train_set, &val[..0], None, &devices)
                .expect("valid task");
        let s_many = t.elapsed().as_secs_f64();
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
