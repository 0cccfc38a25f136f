//! The KV cache is exact: logits computed with the cache equal logits recomputed from scratch
//! over the whole sequence with the block-causal mask, at every model call, across block
//! boundaries, with a prompt and continuous condition vectors, at batch 1 and 4.

use blockdiff_core::burn::prelude::*;
use blockdiff_core::condition::Conditioning;
use blockdiff_core::constraint::Unconstrained;
use blockdiff_core::mask;
use blockdiff_core::model::{BlockDiffusionConfig, ForwardInput};
use blockdiff_core::sample::{sample_observed, CommitPolicy, SamplerConfig};
use blockdiff_core::CpuBackend as B;

fn check(batch: usize, block: usize, policy: CommitPolicy, with_cond: bool) {
    let device = Default::default();
    B::seed(&device, 7);
    let cfg = BlockDiffusionConfig::new(24)
        .with_d_model(32)
        .with_n_layers(2)
        .with_n_heads(4)
        .with_cond_dim(if with_cond { 5 } else { 0 })
        .with_cond_len(if with_cond { 2 } else { 0 });
    let model = cfg.init::<B>(&device);
    let prompt_len = 3;
    let requests: Vec<Conditioning> = (0..batch)
        .map(|i| Conditioning {
            prompt: (0..prompt_len)
                .map(|j| 4 + ((i * 7 + j * 3) % 20) as u32)
                .collect(),
            vectors: with_cond.then(|| (0..10).map(|k| ((i + k) as f32 * 0.37).sin()).collect()),
        })
        .collect();
    let scfg = SamplerConfig {
        block_size: block,
        policy,
        max_len: 4 * block + 1, // a partial last block too
        stop_at_eos: false,
        seed: 11,
        ..SamplerConfig::default()
    };
    let cond_len = if with_cond { cfg.cond_len } else { 0 };
    let mut worst = 0f32;
    let mut calls = 0;
    let mut blocks_seen = std::collections::BTreeSet::new();
    sample_observed(
        &model,
        &cfg,
        &requests,
        &Unconstrained,
        &scfg,
        &device,
        |view| {
            calls += 1;
            blocks_seen.insert(view.block);
            // Reference: the whole sequence so far, no cache, block-causal mask.
            let total = view.sequences[0].len();
            let gen = total - prompt_len;
            let toks: Vec<i64> = view
                .sequences
                .iter()
                .flat_map(|s| s.iter().map(|&t| t as i64))
                .collect();
            let ctx = cond_len + prompt_len;
            let m = mask::block_causal_mask_data(ctx, gen, block);
            let cond = with_cond.then(|| {
                let v: Vec<f32> = requests
                    .iter()
                    .flat_map(|r| r.vectors.clone().unwrap())
                    .collect();
                Tensor::<B, 1>::from_floats(v.as_slice(), &device).reshape([batch, 2, 5])
            });
            let input = ForwardInput {
                tokens: Tensor::<B, 1, Int>::from_data(
                    TensorData::new(toks, [batch * total]),
                    &device,
                )
                .reshape([batch, total]),
                positions: (cond_len..cond_len + total).collect(),
                cond,
                cond_drop: None,
                mask: Some(mask::MaskTable::new(m, ctx + gen, ctx + gen)),
            };
            let (logits, _) = model.forward_range(input, None, total - block, block);
            let reference = logits.into_data().into_vec::<f32>().unwrap();
            assert_eq!(reference.len(), view.logits.len());
            for (a, b) in reference.iter().zip(view.logits) {
                worst = worst.max((a - b).abs());
            }
        },
    )
    .expect("sampling succeeds");
    assert!(calls >= 5, "expected several model calls, got {calls}");
    assert_eq!(blocks_seen.len(), 5, "all blocks decoded");
    assert!(worst <= 1e-4, "cache vs recompute max |Δ| = {worst}");
}

#[test]
fn cached_logits_equal_recomputed_batch1() {
    check(1, 4, CommitPolicy::TopK { k: 2 }, false);
}

#[test]
fn cached_logits_equal_recomputed_batch4_with_condition() {
    check(4, 4, CommitPolicy::Threshold { tau: 0.5 }, true);
}

#[test]
fn cached_logits_equal_recomputed_ar_mode() {
    check(4, 1, CommitPolicy::TopK { k: 1 }, true);
}

#[test]
fn sampler_without_cache_matches_sampler_with_cache() {
    // Same seed, same weights: the two paths make the same decisions.
    let device = Default::default();
    B::seed(&device, 3);
    let cfg = BlockDiffusionConfig::new(16)
        .with_d_model(32)
        .with_n_layers(2);
    let model = cfg.init::<B>(&device);
    let reqs = vec![Conditioning::default(); 3];
    let mut scfg = SamplerConfig {
        block_size: 4,
        policy: CommitPolicy::TopK { k: 2 },
        max_len: 12,
        stop_at_eos: false,
        temperature: 0.0,
        ..SamplerConfig::default()
    };
    let a = blockdiff_core::sample::sample(&model, &cfg, &reqs, &Unconstrained, &scfg, &device)
        .unwrap();
    scfg.use_cache = false;
    let b = blockdiff_core::sample::sample(&model, &cfg, &reqs, &Unconstrained, &scfg, &device)
        .unwrap();
    assert_eq!(a.sequences, b.sequences);
    assert_eq!(a.stats.nfe, b.stats.nfe);
    assert_eq!(a.stats.nfe, 3 * 2, "two steps per block, three blocks");
}
