//! The decoding floor's call (`sample::floor_call`) is the model on the whole sequence: its
//! last-row logits equal a plain forward over the same tokens (with a prompt, condition
//! vectors and per-request token features), and bad requests are typed errors.

use blockdiff_core::burn::prelude::*;
use blockdiff_core::condition::{Conditioning, TokenFeatures};
use blockdiff_core::error::SampleError;
use blockdiff_core::model::{BlockDiffusionConfig, ForwardInput};
use blockdiff_core::sample::floor_call;
use blockdiff_core::CpuBackend as B;

fn setup() -> (BlockDiffusionConfig, Conditioning) {
    let cfg = BlockDiffusionConfig::new(24)
        .with_d_model(32)
        .with_n_layers(2)
        .with_n_heads(4)
        .with_cond_dim(5)
        .with_cond_len(2)
        .with_request_feature_dim(2)
        .with_max_len(32);
    let request = Conditioning {
        prompt: vec![5, 9, 4],
        vectors: Some((0..10).map(|k| (k as f32 * 0.37).sin()).collect()),
        token_features: Some(TokenFeatures::table(
            (0..48).map(|k| (k as f32 * 0.23).cos()).collect(),
        )),
    };
    (cfg, request)
}

#[test]
fn floor_call_is_the_forward_over_the_whole_sequence() {
    let device = Default::default();
    let (cfg, request) = setup();
    let model = cfg.init_seeded::<B>(11, &device);
    let tokens: Vec<u32> = (0..12).map(|i| 4 + (i * 7 % 20) as u32).collect();
    let got = floor_call(&model, &cfg, &request, &tokens, &device).expect("valid request");

    let mut all = request.prompt.clone();
    all.extend_from_slice(&tokens);
    let n = all.len();
    let ids: Vec<i64> = all.iter().map(|&t| t as i64).collect();
    let vectors = request.vectors.clone().expect("set");
    let table = request.token_features.as_ref().expect("set").get();
    let input = ForwardInput {
        tokens: Tensor::<B, 1, Int>::from_data(TensorData::new(ids, [n]), &device).reshape([1, n]),
        positions: (2..2 + n).collect(),
        cond: Some(Tensor::<B, 1>::from_floats(vectors.as_slice(), &device).reshape([1, 2, 5])),
        cond_drop: None,
        mask: None,
        request_features: Some(
            Tensor::<B, 1>::from_floats(table.as_slice(), &device).reshape([1, 24, 2]),
        ),
    };
    let (logits, _) = model.forward(input, None);
    let want: Vec<f32> = logits
        .narrow(1, n - 1, 1)
        .into_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .expect("f32");
    assert_eq!(got.len(), 24);
    let diff = got
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(diff < 1e-4, "floor call differs from the forward by {diff}");
}

#[test]
fn floor_call_refuses_bad_requests() {
    let device = Default::default();
    let (cfg, request) = setup();
    let model = cfg.init_seeded::<B>(11, &device);
    let err = |tokens: &[u32], request: &Conditioning| match floor_call(
        &model, &cfg, request, tokens, &device,
    ) {
        Err(SampleError::Request { message, .. }) => message,
        other => panic!("expected a request error, got {:?}", other.map(|v| v.len())),
    };
    assert!(err(&[4, 99], &request).contains("token 99 outside vocabulary 24"));
    assert!(err(&[4; 40], &request).contains("exceed the model's max_len 32"));
    let short = Conditioning {
        vectors: Some(vec![0.5; 3]),
        ..request.clone()
    };
    assert!(err(&[4, 5], &short).contains("condition has 3 values"));
    let nan = Conditioning {
        vectors: Some(vec![f32::NAN; 10]),
        ..request.clone()
    };
    assert!(err(&[4, 5], &nan).contains("NaN"));
}
