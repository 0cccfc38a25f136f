//! The ordered objective on the Markov task: trains a model with
//! [`NoiseKernel::Ordered`](blockdiff_core::train::NoiseKernel::Ordered) at one block size and
//! decodes it with `ordered(k)` for several group sizes, against AR-mode calls timed on the
//! same weights. `cargo run --release --example ordered_markov -- [small|full] BLOCK [STEPS [MAX_PARALLEL
//! [STRIPES [CHECKPOINT_DIR [REPEATS]]]]]` (stripes 0 = the dilated order; the
//! checkpoint is loaded when present, else written after training; `[REPEATS]` samples per
//! policy follow it, default 20). Environment knobs for ablations: `ORDERED_D_MODEL`,
//! `ORDERED_LAYERS`, `ORDERED_LR`, `ORDERED_BATCH`, `ORDERED_N_TRAIN` override the task's model
//! width, depth, peak learning rate, batch size and training-set size.

use blockdiff_core::bench::{
    fit_markov_ordered, measure_decoding, quality_tolerance, MarkovTask, Repeats,
};
use blockdiff_core::checkpoint;
use blockdiff_core::model::BlockDiffusionModel;
use blockdiff_core::sample::{CommitPolicy, SamplerConfig};
use blockdiff_core::train::{evaluate_positions, Noise, NoiseKernel};
use blockdiff_core::CpuBackend;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut task = match args.first().map(String::as_str) {
        Some("full") => MarkovTask::full(),
        _ => MarkovTask::small(),
    };
    let block: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(32);
    if let Some(steps) = args.get(2).and_then(|a| a.parse().ok()) {
        task.steps = steps;
    }
    let knob = |name: &str| std::env::var(name).ok().and_then(|v| v.parse::<f64>().ok());
    if let Some(d) = knob("ORDERED_D_MODEL") {
        task.d_model = d as usize;
    }
    if let Some(l) = knob("ORDERED_LAYERS") {
        task.n_layers = l as usize;
    }
    if let Some(lr) = knob("ORDERED_LR") {
        task.lr = lr;
    }
    if let Some(n) = knob("ORDERED_N_TRAIN") {
        task.n_train = n as usize;
    }
    if let Some(b) = knob("ORDERED_BATCH") {
        task.batch_size = b as usize;
    }
    let h = task.source().sequence_entropy_per_token(task.seq_len);
    let max_parallel: usize = args.get(3).and_then(|a| a.parse().ok()).unwrap_or(8);
    let stripes: usize = args.get(4).and_then(|a| a.parse().ok()).unwrap_or(0);
    // Samples per policy (batch 1; the median wall-clock is reported).
    let repeats: usize = args.get(6).and_then(|a| a.parse().ok()).unwrap_or(20);
    // An optional checkpoint folder: loaded when it holds one, written after training if not.
    let dir = args.get(5).map(std::path::PathBuf::from);
    let loaded = dir
        .as_ref()
        .and_then(|d| checkpoint::load::<CpuBackend>(d, &Default::default()).ok());
    if let Some(c) = loaded {
        println!("loaded {}", dir.as_ref().expect("dir").display());
        by_offset(&task, &c.model, block, stripes, h);
        decode(&task, &c.model, block, stripes, h, repeats);
        return;
    }
    let (model, fit) = match fit_markov_ordered(&task, (block, stripes), max_parallel, true) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    };
    if let Some(d) = &dir {
        let saved = std::fs::create_dir_all(d)
            .map_err(|e| e.to_string())
            .and_then(|_| {
                checkpoint::save(d, &model, &task.model_config(), &Default::default())
                    .map_err(|e| e.to_string())
            });
        if let Err(e) = saved {
            eprintln!("error: saving {}: {e}", d.display());
        }
    }
    println!(
        "block {block}, stripes {stripes}, max_parallel {max_parallel}, {} steps: true entropy {h:.4}; held-out ordered NLL {:.4} ({:+.1}%), group-mixture loss {:.4}; training {:.0} tokens/s",
        task.steps,
        fit.val_nll_ordered,
        100.0 * (fit.val_nll_ordered / h - 1.0),
        fit.val_loss_groups,
        fit.train.tokens_per_s
    );
    decode(&task, &model, block, stripes, h, repeats);
}

/// Held-out in-order NLL by offset inside a stripe (0 = the stripe's first position, predicted
/// from far away; the last = the junction with the next stripe's start): where the order's
/// excess over the entropy comes from.
fn by_offset(
    task: &MarkovTask,
    model: &BlockDiffusionModel<CpuBackend>,
    block: usize,
    stripes: usize,
    h: f64,
) {
    if stripes == 0 {
        return;
    }
    let cfg = task
        .train_config()
        .with_kernel(NoiseKernel::Ordered)
        .with_block_sizes(vec![block])
        .with_block_weights(vec![1.0])
        .with_eval_block_size(block)
        .with_max_parallel(stripes)
        .with_ordered_stripes(stripes);
    let val = task.data().1;
    let per_pos = evaluate_positions(
        model,
        &task.model_config(),
        &cfg,
        &val,
        block,
        Noise::AllMasked,
        1,
        &Default::default(),
    );
    let seg = block / stripes;
    let mut sums = vec![(0.0f64, 0usize); seg];
    for (p, v) in per_pos.iter().enumerate() {
        let o = (p % block) % seg;
        sums[o].0 += v;
        sums[o].1 += 1;
    }
    let total: f64 = per_pos.iter().sum();
    println!("in-order NLL by offset in a stripe (entropy {h:.4} per token; total excess {:.1} nats per sequence):", total - h * per_pos.len() as f64);
    for (o, (sum, n)) in sums.iter().enumerate() {
        println!(
            "  offset {o}: {:.4} nats ({} positions)",
            sum / *n as f64,
            n
        );
    }
}

fn decode(
    task: &MarkovTask,
    model: &BlockDiffusionModel<CpuBackend>,
    block: usize,
    stripes: usize,
    h: f64,
    repeats: usize,
) {
    let ar_cfg = SamplerConfig {
        stop_at_eos: false,
        ..SamplerConfig::autoregressive(task.seq_len)
    };
    // AR-mode calls on these weights: the cost of left-to-right decoding (1 row per call).
    let ar = measure_decoding(model, task, "ar", &ar_cfg, 1, Repeats::new(repeats));
    let tol = quality_tolerance(h, h);
    println!("| policy | NFE | wall ms | x AR-call time | sample NLL | in band (±{tol:.3}) |");
    println!("|---|---|---|---|---|---|");
    println!(
        "| ar-mode timing | {:.0} | {:.2} | 1.00 | ({:.3}) | |",
        ar.nfe,
        ar.wall_s * 1e3,
        ar.sample_nll
    );
    let runs = [1usize, 2, 4, 8, 16]
        .into_iter()
        .filter(|&k| k <= block)
        .map(|k| (k, 1.0f32))
        .chain([(8, 0.95), (8, 0.9), (8, 0.85), (8, 0.8)]);
    for (k, top_p) in runs {
        let cfg = SamplerConfig {
            block_size: block,
            max_len: task.seq_len,
            stop_at_eos: false,
            top_p,
            policy: CommitPolicy::Ordered {
                per_step: k,
                stripes,
            },
            ..SamplerConfig::default()
        };
        let r = measure_decoding(model, task, "ordered", &cfg, 1, Repeats::new(repeats));
        println!(
            "| ordered({k}), top-p {top_p} | {:.0} | {:.2} | {:.2} | {:.4} | {} |",
            r.nfe,
            r.wall_s * 1e3,
            ar.wall_s / r.wall_s,
            r.sample_nll,
            if (r.sample_nll - h).abs() <= tol {
                "yes"
            } else {
                "no"
            }
        );
    }
}
