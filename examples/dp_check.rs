//! Diagnostic: data-parallel vs single training weights after k steps on the small Markov task.
use blockdiff::core::bench::MarkovTask;
use blockdiff::core::burn::module::AutodiffModule;
use blockdiff::core::burn::prelude::*;
use blockdiff::core::checkpoint;
use blockdiff::core::model::BlockDiffusionModel;
use blockdiff::core::train::{train, train_data_parallel};
use blockdiff::core::CpuTrainBackend;

fn weights(model: &BlockDiffusionModel<CpuTrainBackend>) -> Vec<f32> {
    let bytes = checkpoint::weights_to_bytes(&model.valid());
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    bytes[8 + n..].chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()
}

fn main() {
    if std::env::var("RETAIN").is_ok() { blockdiff::core::retain_freed_memory(); }
    let mut task = MarkovTask::small();
    task.n_train = 2000;
    let device: Device<CpuTrainBackend> = Default::default();
    let (train_set, val) = task.data();
    let mcfg = task.model_config();
    let batch: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(32);
    for k in std::env::args().skip(2).filter_map(|a| a.parse::<usize>().ok()) {
        task.steps = k;
        let tcfg = if std::env::var("SAME").is_ok() { task.train_config().with_progress(false) } else { task.train_config().with_steps(k).with_batch_size(batch).with_progress(false) };
        eprintln!("{:?}", tcfg.steps);
        <CpuTrainBackend as Backend>::seed(&device, task.seed);
        let model = mcfg.init::<CpuTrainBackend>(&device);
        let w0 = weights(&model);
        let (a, ra) = train(model.clone(), &mcfg, &tcfg, &train_set, &val[..0], None, &device).unwrap();
        let (b, rb) = train_data_parallel(model, &mcfg, &tcfg, &train_set, &val[..0], None, &vec![device.clone(); 2]).unwrap();
        let (wa, wb) = (weights(&a), weights(&b));
        let d = wa.iter().zip(&wb).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
        let moved = wa.iter().zip(&w0).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
        println!("steps {k}: max|single-dp| {d:.3e}, moved {moved:.3e}, loss {:.4} vs {:.4}", ra.final_train_loss, rb.final_train_loss);
    }
}
