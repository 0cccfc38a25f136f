//! Checkpoints round-trip exactly; broken ones give typed errors naming the problem.

use blockdiff_core::burn::prelude::*;
use blockdiff_core::checkpoint::{self, CONFIG_FILE, WEIGHTS_FILE};
use blockdiff_core::error::CheckpointError;
use blockdiff_core::model::{BlockDiffusionConfig, ForwardInput};
use blockdiff_core::CpuBackend as B;

fn logits(
    model: &blockdiff_core::model::BlockDiffusionModel<B>,
    device: &blockdiff_core::burn::backend::flex::FlexDevice,
) -> Vec<f32> {
    let toks: Vec<i64> = (0..12).map(|i| (i * 5 % 20) as i64).collect();
    let input = ForwardInput {
        tokens: Tensor::<B, 1, Int>::from_data(TensorData::new(toks, [12]), device).reshape([2, 6]),
        positions: (0..6).collect(),
        cond: Some(Tensor::ones([2, 1, 3], device)),
        cond_drop: None,
        request_features: None,
        mask: None,
    };
    model
        .forward(input, None)
        .0
        .into_data()
        .into_vec::<f32>()
        .unwrap()
}

fn cfg() -> BlockDiffusionConfig {
    BlockDiffusionConfig::new(20)
        .with_d_model(32)
        .with_n_layers(2)
        .with_cond_dim(3)
        .with_cond_len(1)
}

fn saved(dir: &std::path::Path) -> Vec<f32> {
    let device = Default::default();
    B::seed(&device, 1);
    let model = cfg().init::<B>(&device);
    checkpoint::save(dir, &model, &cfg(), &serde_json::json!({"kind": "test"})).unwrap();
    logits(&model, &device)
}

#[test]
fn round_trip_gives_identical_logits() {
    let dir = tempdir("rt");
    let before = saved(&dir);
    let device = Default::default();
    let ck = checkpoint::load::<B>(&dir, &device).unwrap();
    assert_eq!(ck.config, cfg());
    assert_eq!(ck.tokenizer["kind"], "test");
    assert_eq!(logits(&ck.model, &device), before, "bit-identical logits");
}

/// `to_backend` (how `bench core --device cuda` moves a CPU-trained model) carries every
/// weight: the moved model computes bit-identical logits to a fresh model of another seed.
#[test]
fn to_backend_moves_every_weight() {
    let device = Default::default();
    B::seed(&device, 1);
    let model = cfg().init::<B>(&device);
    let want = logits(&model, &device);
    B::seed(&device, 2);
    let moved = checkpoint::to_backend::<B, B>(&model, &cfg(), &device).unwrap();
    assert_eq!(logits(&moved, &device), want, "bit-identical logits");
    B::seed(&device, 2);
    let other = cfg().init::<B>(&device);
    assert_ne!(
        logits(&other, &device),
        want,
        "a different initialisation differs"
    );
}

#[test]
fn truncated_weights_are_a_typed_error() {
    let dir = tempdir("trunc");
    saved(&dir);
    let w = dir.join(WEIGHTS_FILE);
    let bytes = std::fs::read(&w).unwrap();
    for cut in [0, 5, 100, bytes.len() / 2, bytes.len() - 1] {
        std::fs::write(&w, &bytes[..cut]).unwrap();
        match checkpoint::load::<B>(&dir, &Default::default()) {
            Err(CheckpointError::Corrupt { path, message }) => {
                assert!(path.ends_with(WEIGHTS_FILE));
                assert!(!message.is_empty());
            }
            Err(e) => panic!("cut {cut}: unexpected error {e}"),
            Ok(_) => panic!("cut {cut}: truncated file loaded"),
        }
    }
}

#[test]
fn mismatched_config_names_the_tensor() {
    let dir = tempdir("mismatch");
    saved(&dir);
    let other = cfg().with_d_model(48);
    checkpoint::write_json(&dir.join(CONFIG_FILE), &other).unwrap();
    let err = checkpoint::load::<B>(&dir, &Default::default())
        .err()
        .expect("must fail");
    match &err {
        CheckpointError::ShapeMismatch {
            tensor,
            expected,
            found,
            ..
        } => {
            assert!(!tensor.is_empty());
            assert_ne!(expected, found);
        }
        e => panic!("unexpected error {e}"),
    }
    assert!(err.to_string().contains(WEIGHTS_FILE));
    // A config with an extra layer finds tensors missing.
    checkpoint::write_json(&dir.join(CONFIG_FILE), &cfg().with_n_layers(3)).unwrap();
    match checkpoint::load::<B>(&dir, &Default::default()) {
        Err(CheckpointError::MissingTensors { tensors, .. }) => {
            assert!(
                tensors.iter().any(|t| t.starts_with("layers.2.")),
                "{tensors:?}"
            )
        }
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("loaded with missing layer"),
    }
}

#[test]
fn bad_config_and_missing_files_are_typed_errors() {
    let dir = tempdir("badcfg");
    saved(&dir);
    std::fs::write(dir.join(CONFIG_FILE), b"{not json").unwrap();
    assert!(matches!(
        checkpoint::load::<B>(&dir, &Default::default()),
        Err(CheckpointError::Json { .. })
    ));
    checkpoint::write_json(&dir.join(CONFIG_FILE), &cfg().with_n_heads(5)).unwrap();
    assert!(matches!(
        checkpoint::load::<B>(&dir, &Default::default()),
        Err(CheckpointError::Config { .. })
    ));
    let empty = tempdir("empty");
    assert!(matches!(
        checkpoint::load::<B>(&empty, &Default::default()),
        Err(CheckpointError::Io { .. })
    ));
}

fn tempdir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("blockdiff-ckpt-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}
