//! Data-parallel training through burn's collective (one thread per device; here two peers on
//! the CPU device): every peer trains on its share of the single-process batch and the
//! all-reduced gradients keep the replicas identical, so the result equals single-device
//! training on the same batches up to the order of float sums.

use blockdiff_core::burn::module::AutodiffModule;
use blockdiff_core::burn::prelude::*;
use blockdiff_core::checkpoint;
use blockdiff_core::condition::Example;
use blockdiff_core::error::TrainError;
use blockdiff_core::model::{BlockDiffusionConfig, BlockDiffusionModel};
use blockdiff_core::train::{train, train_data_parallel, CheckpointSpec, TrainConfig};
use blockdiff_core::{CpuBackend, CpuTrainBackend};

/// The backend's seed is global: tests that seed and then initialise take turns.
static SEEDED: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A small model and 6 steps of batch 8 over the block mixture {1, 4, 8}.
fn configs() -> (BlockDiffusionConfig, TrainConfig) {
    let mcfg = BlockDiffusionConfig::new(16)
        .with_d_model(32)
        .with_n_layers(2)
        .with_n_heads(2);
    let tcfg = TrainConfig::new(16)
        .with_steps(6)
        .with_batch_size(8)
        .with_lr(1e-2)
        .with_warmup_steps(1)
        .with_block_sizes(vec![1, 4, 8])
        .with_block_weights(vec![1.0, 1.0, 1.0])
        .with_eval_block_size(4)
        .with_progress(false);
    (mcfg, tcfg)
}

fn data() -> Vec<Example> {
    (0..32)
        .map(|i| {
            Example::tokens(
                (0..10 + i % 5)
                    .map(|j| 4 + ((i * 7 + j * 3 + j * j) % 12) as u32)
                    .collect(),
            )
        })
        .collect()
}

/// The tensor data of a safetensors file (its JSON header's metadata has no fixed order).
fn payload(bytes: Vec<u8>) -> Vec<u8> {
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    bytes[8 + n..].to_vec()
}

/// Every weight, in the checkpoint's tensor order.
fn weights(model: &BlockDiffusionModel<CpuTrainBackend>) -> Vec<f32> {
    payload(checkpoint::weights_to_bytes(&model.valid()))
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn two_peers_train_like_one_device_on_the_same_batches() {
    let _turn = SEEDED.lock().unwrap_or_else(|e| e.into_inner());
    let device: Device<CpuTrainBackend> = Default::default();
    let (mcfg, tcfg) = configs();
    let d = data();
    <CpuTrainBackend as Backend>::seed(&device, 3);
    let init = mcfg.init::<CpuTrainBackend>(&device);
    let w0 = weights(&init);

    let (single, r1) = train(init.clone(), &mcfg, &tcfg, &d, &d[..8], None, &device).unwrap();
    let dir = std::env::temp_dir().join(format!("blockdiff-ddp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let spec = CheckpointSpec {
        dir: &dir,
        tokenizer: serde_json::json!({}),
        resume: false,
    };
    let devices = vec![device.clone(), device.clone()];
    let (parallel, r2) = train_data_parallel(
        init.clone(),
        &mcfg,
        &tcfg,
        &d,
        &d[..8],
        Some(spec),
        &devices,
    )
    .unwrap();

    let (w1, w2) = (weights(&single), weights(&parallel));
    let moved = max_diff(&w0, &w1);
    let diff = max_diff(&w1, &w2);
    eprintln!("moved {moved}, two peers vs one device {diff}");
    assert!(moved > 1e-2, "training moved the weights by only {moved}");
    assert!(
        diff <= 1e-4,
        "two peers differ from one device by {diff} (training moved weights by {moved})"
    );
    assert_eq!(r2.steps, 6);
    let (l1, l2) = (r1.final_train_loss, r2.final_train_loss);
    assert!(
        (l1 - l2).abs() <= 1e-4 * l1.abs().max(1.0),
        "loss {l1} vs {l2}"
    );
    // Peer 0 validated and saved; the checkpoint holds the trained replica.
    assert_eq!(r2.val_nelbo.len(), 1);
    let back = checkpoint::load::<CpuBackend>(&dir, &device).unwrap();
    let saved = payload(checkpoint::weights_to_bytes(&back.model));
    assert!(saved == payload(checkpoint::weights_to_bytes(&parallel.valid())));
    let _ = std::fs::remove_dir_all(&dir);

    // Peer 0 cannot write its step-2 checkpoint (the folder is a file): every peer stops
    // with the error instead of waiting for peer 0 in the next all-reduce.
    let blocked = std::env::temp_dir().join(format!("blockdiff-ddp-file-{}", std::process::id()));
    std::fs::write(&blocked, b"not a folder").unwrap();
    let spec = CheckpointSpec {
        dir: &blocked,
        tokenizer: serde_json::json!({}),
        resume: false,
    };
    let every2 = tcfg.clone().with_checkpoint_every(2);
    let err = train_data_parallel(init.clone(), &mcfg, &every2, &d, &[], Some(spec), &devices)
        .unwrap_err();
    assert!(matches!(err, TrainError::Checkpoint(_)), "{err}");
    let _ = std::fs::remove_file(&blocked);

    // A batch that does not split evenly is a typed error, before any peer starts.
    let three = vec![device.clone(), device.clone(), device];
    let err = train_data_parallel(init, &mcfg, &tcfg, &d, &[], None, &three).unwrap_err();
    assert!(
        matches!(&err, TrainError::Config(m) if m.contains("multiple of the 3")),
        "{err}"
    );
}

/// burn initialises parameters lazily and every clone of a fresh model runs the initialiser on
/// its own, so replicas forked from a model nobody has read yet would start from different
/// weights. `train_data_parallel` (and `train_on_cores`, which every domain trains with) must
/// start all peers from the model's own weights: the run equals one-device training of the
/// same initialisation.
#[test]
fn peers_forked_from_a_fresh_model_start_from_the_same_weights() {
    let _turn = SEEDED.lock().unwrap_or_else(|e| e.into_inner());
    let device: Device<CpuTrainBackend> = Default::default();
    let (mcfg, tcfg) = configs();
    let d = data();
    // Never read before training.
    <CpuTrainBackend as Backend>::seed(&device, 5);
    let fresh = mcfg.init::<CpuTrainBackend>(&device);
    let devices = vec![device.clone(), device.clone()];
    let (parallel, _) = train_data_parallel(fresh, &mcfg, &tcfg, &d, &[], None, &devices).unwrap();
    // The same initialisation, read (and so fixed) before one-device training.
    <CpuTrainBackend as Backend>::seed(&device, 5);
    let same = mcfg.init::<CpuTrainBackend>(&device);
    let w0 = weights(&same);
    let (single, _) = train(same, &mcfg, &tcfg, &d, &[], None, &device).unwrap();
    let (w1, w2) = (weights(&single), weights(&parallel));
    let moved = max_diff(&w0, &w1);
    let diff = max_diff(&w1, &w2);
    assert!(moved > 1e-2, "training moved the weights by only {moved}");
    assert!(
        diff <= 1e-4,
        "peers of a fresh model differ from one device by {diff} (moved {moved})"
    );
}
