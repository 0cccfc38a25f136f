//! Training is seeded and resumable: stopping at a checkpoint and resuming gives exactly the
//! weights of an uninterrupted run; the saved weights reload into the same logits.

use blockdiff_core::burn::module::AutodiffModule;
use blockdiff_core::burn::prelude::*;
use blockdiff_core::checkpoint;
use blockdiff_core::condition::Example;
use blockdiff_core::model::BlockDiffusionConfig;
use blockdiff_core::train::{train, CheckpointSpec, TrainConfig};
use blockdiff_core::{CpuBackend, CpuTrainBackend};

fn data() -> Vec<Example> {
    (0..16)
        .map(|i| {
            Example::tokens(
                (0..6 + i % 3)
                    .map(|j| 4 + ((i * 3 + j * 5) % 10) as u32)
                    .collect(),
            )
        })
        .collect()
}

fn run(steps_total: usize, stop_after: Option<usize>, dir: &std::path::Path) -> Vec<u8> {
    let device = Default::default();
    let mcfg = BlockDiffusionConfig::new(14)
        .with_d_model(16)
        .with_n_layers(1)
        .with_n_heads(2);
    let tcfg = TrainConfig::new(8)
        .with_steps(steps_total)
        .with_batch_size(4)
        .with_block_sizes(vec![1, 4])
        .with_block_weights(vec![1.0, 1.0])
        .with_eval_block_size(4)
        .with_stop_after(stop_after.unwrap_or(0))
        .with_progress(false);
    let d = data();
    <CpuTrainBackend as Backend>::seed(&device, 1);
    let model = mcfg.init::<CpuTrainBackend>(&device);
    let spec = CheckpointSpec {
        dir,
        tokenizer: serde_json::json!({}),
        resume: true,
    };
    let (model, _) = train(model, &mcfg, &tcfg, &d, &d[..4], Some(spec), &device).unwrap();
    let w = payload(checkpoint::weights_to_bytes(&model.valid()));
    let ck = checkpoint::load::<CpuBackend>(dir, &device).unwrap();
    let back = payload(checkpoint::weights_to_bytes(&ck.model));
    let first_diff = back.iter().zip(&w).position(|(a, b)| a != b);
    assert!(
        back.len() == w.len() && first_diff.is_none(),
        "saved weights reload: lengths {} vs {}, first difference at byte {first_diff:?}",
        back.len(),
        w.len()
    );
    w
}

#[test]
fn resumed_run_equals_uninterrupted_run() {
    let base = std::env::temp_dir().join(format!("blockdiff-resume-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    let full = run(8, None, &base.join("full"));
    // Interrupted after 3 of 8 steps (resume state saved), then continued in a new call.
    let part = base.join("part");
    let stopped = run(8, Some(3), &part);
    assert!(stopped != full, "the interrupted run really stopped early");
    let resumed = run(8, None, &part);
    assert_eq!(full.len(), resumed.len());
    let first_diff = full.iter().zip(&resumed).position(|(a, b)| a != b);
    assert!(
        first_diff.is_none(),
        "resumed weights differ from the uninterrupted run at byte {first_diff:?}"
    );
}

/// The tensor data of a safetensors file (the JSON header's metadata map has no fixed order).
fn payload(bytes: Vec<u8>) -> Vec<u8> {
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    bytes[8 + n..].to_vec()
}
