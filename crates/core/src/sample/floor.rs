//! The decoding floor: what one known sequence costs when it goes through the model in a
//! single call.
//!
//! A decoder of these weights must compute, for every token it generates, that token's keys
//! and values in every layer (later tokens attend to them), and it must make at least one
//! model call. It cannot do less than one call over the prompt ⊕ the whole sequence that
//! computes every position's keys and values and the output head on one row. The wall-clock
//! of that call is therefore a lower bound on every policy's time per sequence, at the same
//! batch, threads and backend, and `AR wall / floor wall` bounds the speed-up over AR mode any
//! commit policy could reach (`blockdiff bench samplers`, report field
//! [`crate::sampler_bench::DecodingFloor`]).
//! (Strictly, the last layer's output rows and the keys of tokens after the last decision are
//! not needed either; the call skips the former, and the latter is a handful of rows.)

use burn::prelude::*;

use super::{check_vectors, int_tensor, request_feature_tensor, to_vec};
use crate::condition::Condition;
use crate::error::SampleError;
use crate::model::{BlockDiffusionConfig, BlockDiffusionModel, ForwardInput};

/// Runs the floor call for one request: the prompt (and condition vectors) ⊕ `tokens`, no
/// cache and no mask, the output head on the last row only. Returns that row's logits.
pub fn floor_call<B: Backend, C: Condition>(
    model: &BlockDiffusionModel<B>,
    model_cfg: &BlockDiffusionConfig,
    request: &C,
    tokens: &[u32],
    device: &B::Device,
) -> Result<Vec<f32>, SampleError> {
    let req_err = |message: String| SampleError::Request { index: 0, message };
    let vocab = model_cfg.vocab_size;
    let mut toks = request.prompt().to_vec();
    toks.extend_from_slice(tokens);
    if toks.is_empty() {
        return Err(req_err("the floor call needs at least one token".into()));
    }
    if let Some(&t) = toks.iter().find(|&&t| t as usize >= vocab) {
        return Err(req_err(format!("token {t} outside vocabulary {vocab}")));
    }
    check_vectors(request.vectors(), model_cfg).map_err(req_err)?;
    let (cond, cond_len) = match request.vectors() {
        Some(v) => {
            let t = Tensor::<B, 1>::from_floats(v, device).reshape([
                1,
                model_cfg.cond_len,
                model_cfg.cond_dim,
            ]);
            (Some(t), model_cfg.cond_len)
        }
        None => (None, 0),
    };
    if cond_len + toks.len() > model_cfg.max_len {
        return Err(req_err(format!(
            "{} positions exceed the model's max_len {}",
            cond_len + toks.len(),
            model_cfg.max_len
        )));
    }
    let request_features = request_feature_tensor::<B>(
        std::iter::once(request.token_features()),
        1,
        model_cfg,
        device,
    )
    .map_err(|(_, m)| req_err(m))?;
    let n = toks.len();
    let input = ForwardInput {
        tokens: int_tensor::<B>(&toks, 1, n, device),
        positions: (cond_len..cond_len + n).collect(),
        cond,
        cond_drop: None,
        mask: None,
        request_features,
    };
    let (logits, _) = model.forward_range(input, None, n - 1, 1);
    Ok(to_vec(logits))
}
