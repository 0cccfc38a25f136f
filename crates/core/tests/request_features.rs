//! Per-request token features: they change the model's output (so the sampler cannot be
//! silently dropping them), a dropped condition's zero table is the same as giving none, and
//! bad tables are typed errors naming the request or example, in sampling and in training.

use std::sync::Arc;

use blockdiff_core::burn::prelude::*;
use blockdiff_core::condition::{Conditioning, Example, TokenFeatures};
use blockdiff_core::constraint::Unconstrained;
use blockdiff_core::error::{SampleError, TrainError};
use blockdiff_core::model::{BlockDiffusionConfig, ForwardInput};
use blockdiff_core::sample::{sample, SamplerConfig};
use blockdiff_core::train::check_data;
use blockdiff_core::CpuBackend as B;

const VOCAB: usize = 20;
const K: usize = 3;

fn config(k: usize) -> BlockDiffusionConfig {
    BlockDiffusionConfig::new(VOCAB)
        .with_d_model(32)
        .with_n_layers(2)
        .with_n_heads(4)
        .with_request_feature_dim(k)
}

fn logits(
    model: &blockdiff_core::model::BlockDiffusionModel<B>,
    table: Option<Vec<f32>>,
) -> Vec<f32> {
    let device = Default::default();
    let toks: Vec<i64> = (0..6).map(|i| 4 + (i * 3 % 16) as i64).collect();
    let input = ForwardInput {
        tokens: Tensor::<B, 1, Int>::from_data(TensorData::new(toks, [6]), &device).reshape([1, 6]),
        positions: (0..6).collect(),
        cond: None,
        cond_drop: None,
        mask: None,
        request_features: table
            .map(|t| Tensor::<B, 1>::from_floats(t.as_slice(), &device).reshape([1, VOCAB, K])),
    };
    model
        .forward(input, None)
        .0
        .into_data()
        .into_vec::<f32>()
        .unwrap()
}

#[test]
fn request_features_change_the_output_and_zero_is_the_null_table() {
    let device = Default::default();
    B::seed(&device, 3);
    let model = config(K).init::<B>(&device);
    let a: Vec<f32> = (0..VOCAB * K).map(|i| (i as f32 * 0.31).sin()).collect();
    let b: Vec<f32> = (0..VOCAB * K).map(|i| (i as f32 * 0.17).cos()).collect();
    let (la, lb) = (logits(&model, Some(a)), logits(&model, Some(b)));
    let diff = la
        .iter()
        .zip(&lb)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    assert!(
        diff > 1e-3,
        "two tables give the same logits (max |Δ| {diff})"
    );
    let zero = logits(&model, Some(vec![0.0; VOCAB * K]));
    let none = logits(&model, None);
    assert_eq!(
        zero, none,
        "a zero table must equal no table (the dropped condition)"
    );
}

#[test]
fn bad_tables_are_typed_errors_naming_the_request() {
    let device = Default::default();
    let cfg = config(K);
    let model = cfg.init::<B>(&device);
    let scfg = SamplerConfig {
        block_size: 4,
        max_len: 8,
        ..SamplerConfig::default()
    };
    let good = Arc::new(vec![0.5f32; VOCAB * K]);
    let mut nan = vec![0.5f32; VOCAB * K];
    nan[7] = f32::NAN;
    for (bad, needle) in [(vec![0.5f32; VOCAB * K - 1], "values"), (nan, "NaN")] {
        let requests = vec![
            Conditioning {
                token_features: Some(TokenFeatures::shared(good.clone())),
                ..Default::default()
            },
            Conditioning {
                token_features: Some(TokenFeatures::table(bad.clone())),
                ..Default::default()
            },
        ];
        match sample(&model, &cfg, &requests, &Unconstrained, &scfg, &device) {
            Err(SampleError::Request { index: 1, message }) => {
                assert!(message.contains(needle), "{message}")
            }
            other => panic!("expected a request error, got {other:?}"),
        }
        let data = vec![
            Example {
                tokens: vec![5, 6, 7],
                condition: Conditioning {
                    token_features: Some(TokenFeatures::shared(good.clone())),
                    ..Default::default()
                },
            },
            Example {
                tokens: vec![5, 6, 7],
                condition: Conditioning {
                    token_features: Some(TokenFeatures::lazy(move || Arc::new(bad.clone()))),
                    ..Default::default()
                },
            },
        ];
        match check_data(&data, &cfg, 8, "train") {
            Err(TrainError::Data(m)) => {
                assert!(m.contains("example 1") && m.contains(needle), "{m}")
            }
            other => panic!("expected a data error, got {other:?}"),
        }
    }
    // A model without request features refuses a table.
    let plain_cfg = config(0);
    let plain = plain_cfg.init::<B>(&device);
    let requests = vec![Conditioning {
        token_features: Some(TokenFeatures::shared(good)),
        ..Default::default()
    }];
    assert!(matches!(
        sample(
            &plain,
            &plain_cfg,
            &requests,
            &Unconstrained,
            &scfg,
            &device
        ),
        Err(SampleError::Request { index: 0, .. })
    ));
}

/// A lazily computed table samples exactly like the same table given outright, and is read
/// when the sampler builds its batch (not only at construction).
#[test]
fn lazy_tables_sample_like_given_ones() {
    let device = Default::default();
    let cfg = config(K);
    let model = cfg.init::<B>(&device);
    let scfg = SamplerConfig {
        block_size: 4,
        max_len: 12,
        seed: 5,
        ..SamplerConfig::default()
    };
    let table = |i: usize| -> Vec<f32> {
        (0..VOCAB * K)
            .map(|j| ((i * 11 + j) as f32 * 0.29).sin())
            .collect()
    };
    let reads = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let given: Vec<Conditioning> = (0..3)
        .map(|i| Conditioning {
            token_features: Some(TokenFeatures::table(table(i))),
            ..Default::default()
        })
        .collect();
    let lazy: Vec<Conditioning> = (0..3)
        .map(|i| {
            let reads = reads.clone();
            Conditioning {
                token_features: Some(TokenFeatures::lazy(move || {
                    reads.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    Arc::new(table(i))
                })),
                ..Default::default()
            }
        })
        .collect();
    let a = sample(&model, &cfg, &given, &Unconstrained, &scfg, &device).unwrap();
    let b = sample(&model, &cfg, &lazy, &Unconstrained, &scfg, &device).unwrap();
    assert_eq!(a.sequences, b.sequences);
    assert!(reads.load(std::sync::atomic::Ordering::Relaxed) >= 3);
}
