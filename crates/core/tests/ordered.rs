//! The ordered objective and its sampler ([`NoiseKernel::Ordered`], [`CommitPolicy::Ordered`]):
//! every cached call's logits equal the training layout's on the finished sequence (the cache
//! is exact, and training optimises exactly what the sampler reads), the sampler without the
//! cache makes the same samples, and at block size 1 the objective is the AR likelihood.

use blockdiff_core::burn::prelude::*;
use blockdiff_core::condition::{Conditioning, Example};
use blockdiff_core::constraint::Constraint;
use blockdiff_core::mask;
use blockdiff_core::model::{BlockDiffusionConfig, ForwardInput};
use blockdiff_core::sample::{sample_observed, CommitPolicy, SamplerConfig};
use blockdiff_core::tokenizer::{EOS, PAD};
use blockdiff_core::train::{evaluate, Noise, NoiseKernel, TrainConfig};
use blockdiff_core::CpuBackend as B;

/// Keeps every sequence running (no `EOS`/`PAD`), so the finished tokens are the ones each
/// call saw.
struct NoEnd;

impl Constraint for NoEnd {
    fn restrict(&self, _seq: &[u32], _pos: usize, allowed: &mut [bool]) {
        allowed[EOS as usize] = false;
        allowed[PAD as usize] = false;
    }

    fn may_force(&self) -> bool {
        false
    }
}

const VOCAB: usize = 24;
const COND_LEN: usize = 2;
const COND_DIM: usize = 5;
const PROMPT: usize = 3;

fn model_config() -> BlockDiffusionConfig {
    BlockDiffusionConfig::new(VOCAB)
        .with_d_model(32)
        .with_n_layers(2)
        .with_n_heads(4)
        .with_cond_dim(COND_DIM)
        .with_cond_len(COND_LEN)
}

fn requests(batch: usize) -> Vec<Conditioning> {
    (0..batch)
        .map(|i| Conditioning {
            prompt: (0..PROMPT)
                .map(|j| 4 + ((i * 7 + j * 3) % 20) as u32)
                .collect(),
            vectors: Some(
                (0..COND_LEN * COND_DIM)
                    .map(|k| ((i + k) as f32 * 0.37).sin())
                    .collect(),
            ),
            token_features: None,
        })
        .collect()
}

/// One observed call: block index, the block positions queried, their `[rows, queried, vocab]`
/// logits.
type Call = (usize, Vec<usize>, Vec<f32>);

/// Runs the ordered sampler and returns the final sequences, every observed call and the NFE.
fn run(
    (block, stripes): (usize, usize),
    per_step: usize,
    use_cache: bool,
    batch: usize,
) -> (Vec<Vec<u32>>, Vec<Call>, usize) {
    let device = Default::default();
    let cfg = model_config();
    // Seeded per model: tests run in parallel threads and burn's global seed is shared.
    let model = cfg.init_seeded::<B>(3, &device);
    let scfg = SamplerConfig {
        block_size: block,
        policy: CommitPolicy::Ordered { per_step, stripes },
        max_len: 3 * block,
        stop_at_eos: false,
        seed: 19,
        use_cache,
        ..SamplerConfig::default()
    };
    let mut calls = Vec::new();
    let out = sample_observed(
        &model,
        &cfg,
        &requests(batch),
        &NoEnd,
        &scfg,
        &device,
        |view| {
            let queried = view
                .queried
                .expect("the ordered policy names its queries")
                .to_vec();
            calls.push((view.block, queried, view.logits.to_vec()))
        },
    )
    .expect("sampling succeeds");
    (out.full_sequences, calls, out.stats.nfe)
}

#[test]
fn ordered_cached_logits_equal_the_training_layout_on_the_finished_sequence() {
    // The dilated order in groups of 3 (not a divisor of the block), and 4 stripes of 2.
    training_layout_check(0, 3);
    training_layout_check(4, 4);
}

fn training_layout_check(stripes: usize, per_step: usize) {
    let (block, batch) = (8, 3);
    let (seqs, calls, nfe) = run((block, stripes), per_step, true, batch);
    let len = 3 * block;
    assert_eq!(
        nfe,
        3 * block.div_ceil(per_step),
        "ceil(b/k) calls per block"
    );
    assert_eq!(calls.len(), nfe);
    let device = Default::default();
    let cfg = model_config();
    // Seeded per model: tests run in parallel threads and burn's global seed is shared.
    let model = cfg.init_seeded::<B>(3, &device);
    // Each position's cut: the global rank of its group's first position.
    let g = mask::ordered_global_rank(len, block, stripes);
    let cuts: Vec<usize> = g
        .iter()
        .map(|&gi| (gi / block) * block + (gi % block) / per_step * per_step)
        .collect();
    let ctx = COND_LEN + PROMPT;
    let reqs = requests(batch);
    let mut toks: Vec<i64> = Vec::new();
    for (r, s) in reqs.iter().zip(&seqs) {
        toks.extend(r.prompt.iter().map(|&t| t as i64));
        toks.extend(std::iter::repeat_n(
            blockdiff_core::tokenizer::MASK as i64,
            len,
        ));
        toks.extend(s.iter().map(|&t| t as i64));
    }
    let width = PROMPT + 2 * len;
    let mut positions: Vec<usize> = (COND_LEN..ctx + len).collect();
    positions.extend(ctx..ctx + len);
    let cond: Vec<f32> = reqs
        .iter()
        .flat_map(|r| r.vectors.clone().unwrap())
        .collect();
    let input = ForwardInput {
        tokens: Tensor::<B, 1, Int>::from_data(TensorData::new(toks, [batch * width]), &device)
            .reshape([batch, width]),
        positions,
        cond: Some(
            Tensor::<B, 1>::from_floats(cond.as_slice(), &device)
                .reshape([batch, COND_LEN, COND_DIM]),
        ),
        cond_drop: None,
        mask: Some(mask::MaskTable::new(
            mask::ordered_training_mask_data(ctx, len, (block, stripes), &cuts),
            ctx + 2 * len,
            ctx + 2 * len,
        )),
        request_features: None,
    };
    let (logits, _) = model.forward_range(input, None, PROMPT, len);
    let reference = logits.into_data().into_vec::<f32>().unwrap();
    let mut worst = 0f32;
    let mut compared = 0;
    for (blk, queried, view) in &calls {
        for r in 0..batch {
            for (q, &p) in queried.iter().enumerate() {
                let at = (r * queried.len() + q) * VOCAB;
                let pos = blk * block + p;
                let want = &reference[(r * len + pos) * VOCAB..(r * len + pos + 1) * VOCAB];
                for (a, b) in want.iter().zip(&view[at..at + VOCAB]) {
                    worst = worst.max((a - b).abs());
                }
                compared += 1;
            }
        }
    }
    assert_eq!(compared, batch * len, "every position queried exactly once");
    assert!(
        worst <= 1e-4,
        "cached call vs training layout: max |Δ| = {worst}"
    );
}

#[test]
fn ordered_sampler_without_cache_makes_the_same_samples() {
    let (with, calls_with, _) = run((8, 2), 4, true, 2);
    let (without, calls_without, _) = run((8, 2), 4, false, 2);
    assert_eq!(with, without);
    let worst = calls_with
        .iter()
        .zip(&calls_without)
        .flat_map(|((_, qa, a), (_, qb, b))| {
            assert_eq!(qa, qb, "same queries with and without the cache");
            a.iter().zip(b)
        })
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(worst <= 1e-4, "cache vs recompute: max |Δ| = {worst}");
}

#[test]
fn ordered_objective_at_block_one_is_the_ar_likelihood() {
    // With one position per block the order is left to right and every query sees exactly
    // the tokens before it: the same mask as the absorbing kernel's block-1 training layout.
    let device = Default::default();
    let cfg = BlockDiffusionConfig::new(VOCAB)
        .with_d_model(32)
        .with_n_layers(2);
    let model = cfg.init_seeded::<B>(5, &device);
    let data: Vec<Example> = (0..6)
        .map(|i| Example::tokens((0..10).map(|j| 4 + ((i * 5 + j * 7) % 20) as u32).collect()))
        .collect();
    let base = TrainConfig::new(16).with_batch_size(4);
    let ar = evaluate(&model, &cfg, &base, &data, 1, Noise::AllMasked, 1, &device);
    let ordered_cfg = base.clone().with_kernel(NoiseKernel::Ordered);
    let ordered = evaluate(
        &model,
        &cfg,
        &ordered_cfg,
        &data,
        1,
        Noise::AllMasked,
        1,
        &device,
    );
    assert!((ar - ordered).abs() < 1e-5, "AR {ar} vs ordered {ordered}");
    // At a larger block the ordered NLL is a different (permuted-order) likelihood.
    let ordered8 = evaluate(
        &model,
        &cfg,
        &ordered_cfg,
        &data,
        8,
        Noise::AllMasked,
        1,
        &device,
    );
    assert!(
        (ordered8 - ar).abs() > 1e-4,
        "block 8 reorders: {ordered8} vs {ar}"
    );
}

#[test]
fn ordered_orders_are_permutations_with_spread_out_groups() {
    for b in [1usize, 2, 8, 12, 16, 64] {
        let mut dilated = mask::ordered_order(b, 0);
        assert_eq!(
            dilated[0], 0,
            "block {b}: the dilated order starts at the left edge"
        );
        dilated.sort_unstable();
        assert_eq!(
            dilated,
            (0..b).collect::<Vec<_>>(),
            "block {b}: a permutation"
        );
        for s in (1..=b).filter(|s| b % s == 0) {
            let order = mask::ordered_order(b, s);
            let mut sorted = order.clone();
            sorted.sort_unstable();
            assert_eq!(sorted, (0..b).collect::<Vec<_>>(), "block {b}, {s} stripes");
            // Every run of `s` consecutive entries holds one position per stripe, `b/s` apart.
            for group in order.chunks(s) {
                for w in group.windows(2) {
                    assert_eq!(w[1] - w[0], b / s, "block {b}, {s} stripes: {group:?}");
                }
            }
        }
    }
    // The global rank is blocks left to right.
    let g = mask::ordered_global_rank(16, 8, 2);
    assert_eq!(&g[..8], &[0, 2, 4, 6, 1, 3, 5, 7]);
    assert_eq!(&g[8..], &[8, 10, 12, 14, 9, 11, 13, 15]);
}
