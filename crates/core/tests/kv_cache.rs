//! The KV cache is exact: logits computed with the cache equal logits recomputed from scratch
//! over the whole sequence with the block-causal mask, at every model call, across block
//! boundaries, with a prompt and continuous condition vectors, at batch 1 and 4.

use blockdiff_core::burn::prelude::*;
use blockdiff_core::condition::Conditioning;
use blockdiff_core::constraint::Unconstrained;
use blockdiff_core::mask;
use blockdiff_core::model::{BlockDiffusionConfig, ForwardInput};
use blockdiff_core::sample::{sample_observed, CommitPolicy, SamplerConfig};
use blockdiff_core::tokenizer::MASK;
use blockdiff_core::CpuBackend as B;

fn check(batch: usize, block: usize, policy: CommitPolicy, with_cond: bool) {
    let device = Default::default();
    B::seed(&device, 7);
    let cfg = BlockDiffusionConfig::new(24)
        .with_d_model(32)
        .with_n_layers(2)
        .with_n_heads(4)
        .with_cond_dim(if with_cond { 5 } else { 0 })
        .with_cond_len(if with_cond { 2 } else { 0 })
        .with_request_feature_dim(if with_cond { 2 } else { 0 });
    let model = cfg.init::<B>(&device);
    let prompt_len = 3;
    // Per-request token features ride along with the condition vectors.
    let table =
        |i: usize| -> Vec<f32> { (0..48).map(|k| ((i * 5 + k) as f32 * 0.23).cos()).collect() };
    let requests: Vec<Conditioning> = (0..batch)
        .map(|i| Conditioning {
            prompt: (0..prompt_len)
                .map(|j| 4 + ((i * 7 + j * 3) % 20) as u32)
                .collect(),
            vectors: with_cond.then(|| (0..10).map(|k| ((i + k) as f32 * 0.37).sin()).collect()),
            token_features: with_cond
                .then(|| blockdiff_core::condition::TokenFeatures::table(table(i))),
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
                request_features: with_cond.then(|| {
                    let v: Vec<f32> = (0..batch).flat_map(table).collect();
                    Tensor::<B, 1>::from_floats(v.as_slice(), &device).reshape([batch, 24, 2])
                }),
            };
            let (logits, _) = model.forward_range(input, None, total - block, block);
            let reference = logits.into_data().into_vec::<f32>().unwrap();
            assert_eq!(reference.len(), view.logits.len());
            // The sampler computes logits where some request's position is still masked (the
            // only ones a policy reads) and leaves 0 elsewhere.
            let vocab = cfg.vocab_size;
            let mut compared = 0;
            for (k, (a, b)) in reference
                .chunks(vocab)
                .zip(view.logits.chunks(vocab))
                .enumerate()
            {
                let p = total - block + k % block;
                if view.sequences.iter().any(|s| s[p] == MASK) {
                    compared += 1;
                    for (x, y) in a.iter().zip(b) {
                        worst = worst.max((x - y).abs());
                    }
                } else {
                    assert!(
                        b.iter().all(|&y| y == 0.0),
                        "decided position {p} has logits"
                    );
                }
            }
            assert!(compared > 0, "a call with nothing masked");
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

/// Forced commits (positions the constraint leaves one token for) skip model calls, and whole
/// blocks finished that way queue their clean rows behind the prompt or the block before
/// them: the cached sampler must still make exactly the reference's decisions, with a prompt
/// and condition vectors, in AR mode and with blocks, and with fewer calls than without
/// forcing.
#[test]
fn forced_commits_skip_calls_and_keep_the_cache_exact() {
    use blockdiff_core::constraint::SuccessorConstraint;
    use blockdiff_core::tokenizer::{SymbolTokenizer, Tokenizer};
    let device = Default::default();
    B::seed(&device, 5);
    let tok = SymbolTokenizer::new(20);
    // Long single-successor chains with a branch every fifth node (a road network's shape).
    let succ: Vec<Vec<u32>> = (0..20u32)
        .map(|i| {
            if i % 5 == 4 {
                vec![(i + 1) % 20, (i + 7) % 20]
            } else {
                vec![(i + 1) % 20]
            }
        })
        .collect();
    let constraint = SuccessorConstraint::new(tok.vocab(), succ, false);
    let cfg = BlockDiffusionConfig::new(tok.vocab().size())
        .with_d_model(32)
        .with_n_layers(2)
        .with_cond_dim(3)
        .with_cond_len(2);
    let model = cfg.init::<B>(&device);
    let requests: Vec<Conditioning> = (0..3)
        .map(|i| Conditioning {
            prompt: vec![
                tok.vocab().regular_id(i * 3),
                tok.vocab().regular_id(i * 3 + 1),
            ],
            vectors: Some(
                (0..6)
                    .map(|k| ((i as usize + k) as f32 * 0.41).cos())
                    .collect(),
            ),
            ..Default::default()
        })
        .collect();
    for (block, policy) in [
        (1, CommitPolicy::TopK { k: 1 }),
        (4, CommitPolicy::Threshold { tau: 0.5 }),
        (4, CommitPolicy::TopK { k: 1 }),
    ] {
        let mut scfg = SamplerConfig {
            block_size: block,
            policy,
            max_len: 16,
            stop_at_eos: false,
            temperature: 0.0,
            ..SamplerConfig::default()
        };
        // Every call's logits, to compare the cached path with the reference call by call.
        let run = |scfg: &SamplerConfig| {
            let mut logits: Vec<Vec<f32>> = Vec::new();
            let out = sample_observed(
                &model,
                &cfg,
                &requests,
                &constraint,
                scfg,
                &device,
                |view| logits.push(view.logits.to_vec()),
            )
            .unwrap();
            (out, logits)
        };
        let (cached, cached_logits) = run(&scfg);
        scfg.use_cache = false;
        let (reference, reference_logits) = run(&scfg);
        assert_eq!(cached_logits.len(), reference_logits.len());
        let worst = cached_logits
            .iter()
            .flatten()
            .zip(reference_logits.iter().flatten())
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(
            worst <= 1e-4,
            "block {block}: cache vs recompute max |Δ| = {worst}"
        );
        assert_eq!(cached.sequences, reference.sequences, "block {block}");
        assert_eq!(cached.stats.nfe, reference.stats.nfe);
        assert!(cached.stats.forced > 0, "block {block}: nothing forced");
        for s in &cached.sequences {
            assert_eq!(s.len(), 16);
        }
        scfg.use_cache = true;
        scfg.forced = false;
        let (unforced, _) = run(&scfg);
        assert_eq!(unforced.stats.forced, 0);
        assert!(
            cached.stats.nfe < unforced.stats.nfe,
            "block {block}: {} calls with forcing, {} without",
            cached.stats.nfe,
            unforced.stats.nfe
        );
        if block == 1 {
            // AR mode: forcing is exact, so greedy decoding gives the same tokens.
            assert_eq!(cached.sequences, unforced.sequences);
        }
    }
}
