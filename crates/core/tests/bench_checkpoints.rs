//! The Markov benchmarks' checkpoint folders: a model trained once is loaded back unchanged
//! (weights and fit), a folder of another task or order is a typed error, and a fit file from
//! before the task was recorded is still accepted.

use blockdiff_core::bench::{
    load_or_fit_markov, load_or_fit_markov_ordered, load_or_fit_markov_uniform, MarkovTask,
};
use blockdiff_core::burn::prelude::*;
use blockdiff_core::error::CheckpointError;
use blockdiff_core::model::{BlockDiffusionModel, ForwardInput};
use blockdiff_core::CpuBackend as B;

/// The model's logits on one fixed input: equal logits, equal weights.
fn logits(model: &BlockDiffusionModel<B>) -> Vec<f32> {
    let device = Default::default();
    let toks: Vec<i64> = (0..16).map(|i| (i * 7 % 32) as i64).collect();
    let input = ForwardInput {
        tokens: Tensor::<B, 1, Int>::from_data(TensorData::new(toks, [16]), &device)
            .reshape([2, 8]),
        positions: (0..8).collect(),
        cond: None,
        cond_drop: None,
        request_features: None,
        mask: None,
    };
    let out = model.forward(input, None).0.into_data();
    out.into_vec::<f32>().expect("f32 logits")
}

fn tiny() -> MarkovTask {
    MarkovTask {
        n_train: 64,
        n_val: 16,
        steps: 3,
        batch_size: 8,
        d_model: 32,
        n_layers: 1,
        ..MarkovTask::small()
    }
}

#[test]
fn block_model_is_trained_once_then_loaded() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path().join("block");
    let task = tiny();
    let (trained, fit) = load_or_fit_markov(&task, Some(&dir), false).expect("trains");
    assert!(dir.join("fit.json").exists());
    let (loaded, fit2) = load_or_fit_markov(&task, Some(&dir), false).expect("loads");
    assert_eq!(logits(&trained), logits(&loaded));
    assert_eq!(fit.val_nelbo_block, fit2.val_nelbo_block);
    assert_eq!(fit.train.steps, fit2.train.steps);
    // Another task (more steps) must not silently reuse the folder.
    let other = MarkovTask { steps: 4, ..tiny() };
    match load_or_fit_markov(&other, Some(&dir), false) {
        Err(CheckpointError::Config { path, message }) => {
            assert!(path.ends_with("fit.json"), "{}", path.display());
            assert!(message.contains("steps"), "{message}");
        }
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("a model of another task was reused"),
    }
}

#[test]
fn uniform_model_round_trips() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path().join("uniform");
    let task = tiny();
    let (m, loss) = load_or_fit_markov_uniform(&task, Some(&dir), false).expect("trains");
    let (m2, loss2) = load_or_fit_markov_uniform(&task, Some(&dir), false).expect("loads");
    assert_eq!(logits(&m), logits(&m2));
    assert_eq!(loss, loss2);
    assert!(loss.is_finite() && loss > 0.0);
}

#[test]
fn ordered_folder_checks_order_and_accepts_a_fit_without_task() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path().join("ordered");
    let task = tiny();
    let (m, fit) =
        load_or_fit_markov_ordered(&task, (16, 4), 4, Some(&dir), false).expect("trains");
    assert!(matches!(
        load_or_fit_markov_ordered(&task, (16, 2), 2, Some(&dir), false),
        Err(CheckpointError::Config { .. })
    ));
    // A fit file written before the task was recorded (no "task" key) still loads.
    let path = dir.join("ordered_fit.json");
    let mut v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).expect("read")).expect("json");
    assert!(v.get("task").is_some());
    v.as_object_mut().expect("object").remove("task");
    std::fs::write(&path, serde_json::to_vec(&v).expect("json")).expect("write");
    let (m2, fit2) =
        load_or_fit_markov_ordered(&task, (16, 4), 4, Some(&dir), false).expect("loads");
    assert_eq!(logits(&m), logits(&m2));
    assert_eq!(fit.val_nll_ordered, fit2.val_nll_ordered);
    // A damaged fit file is a typed error naming it, not a panic.
    std::fs::write(&path, b"{ not json").expect("write");
    match load_or_fit_markov_ordered(&task, (16, 4), 4, Some(&dir), false) {
        Err(CheckpointError::Json { path: p, .. }) => assert_eq!(p, path),
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("a damaged fit file was accepted"),
    }
}
