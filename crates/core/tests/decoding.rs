//! The newer decoders' guarantees:
//! - self-speculative sampling (S2D2, always verifying) draws from exactly the distribution of
//!   the autoregressive mode of the same weights: checked against the AR joint enumerated from
//!   the model over every sequence, with a chi-square test that parallel top-k decoding of the
//!   same weights fails;
//! - the FlashBlock merge of block-external and block-internal attention equals full attention,
//!   inside the model too when nothing is stale.

use blockdiff_core::burn::module::AutodiffModule;
use blockdiff_core::burn::prelude::*;
use blockdiff_core::burn::tensor::Distribution;
use blockdiff_core::cache::KvCache;
use blockdiff_core::condition::{Conditioning, Example};
use blockdiff_core::constraint::Constraint;
use blockdiff_core::mask::{self, MaskTable};
use blockdiff_core::model::{
    attention_part, merge_attention, scaled_attention, BlockDiffusionConfig, BlockDiffusionModel,
    FlashBlockState, ForwardInput,
};
use blockdiff_core::sample::{sample, CommitPolicy, SamplerConfig, SpecRouting};
use blockdiff_core::synthetic::MarkovSource;
use blockdiff_core::tokenizer::{SymbolTokenizer, Tokenizer, MASK};
use blockdiff_core::train::{train, TrainConfig};
use blockdiff_core::{CpuBackend as B, CpuTrainBackend as TB};
use rand::rngs::StdRng;
use rand::SeedableRng;

const SYMBOLS: usize = 3;
const LEN: usize = 4;

/// Only the regular symbols (no EOS/PAD), so the sample space is exactly `3^4` sequences.
struct OnlySymbols(u32);

impl Constraint for OnlySymbols {
    fn restrict(&self, _seq: &[u32], _pos: usize, allowed: &mut [bool]) {
        for (t, a) in allowed.iter_mut().enumerate() {
            if (t as u32) < self.0 {
                *a = false;
            }
        }
    }
}

fn trained_model() -> (
    BlockDiffusionModel<B>,
    BlockDiffusionConfig,
    SymbolTokenizer,
) {
    let device = Default::default();
    <TB as Backend>::seed(&device, 3);
    let tok = SymbolTokenizer::new(SYMBOLS);
    let src = MarkovSource::random(SYMBOLS, 2, 4);
    let mut rng = StdRng::seed_from_u64(8);
    let data: Vec<Example> = (0..2000)
        .map(|_| Example::tokens(tok.encode(&src.sample(LEN, &mut rng)).expect("in range")))
        .collect();
    let mcfg = BlockDiffusionConfig::new(tok.vocab().size())
        .with_d_model(32)
        .with_n_layers(2)
        .with_n_heads(2)
        .with_max_len(16);
    let tcfg = TrainConfig::new(LEN)
        .with_block_sizes(vec![1, 4])
        .with_block_weights(vec![1.0, 1.0])
        .with_eval_block_size(4)
        .with_steps(300)
        .with_lr(3e-3)
        .with_progress(false);
    let model = mcfg.init::<TB>(&device);
    let (model, _) = train(model, &mcfg, &tcfg, &data, &data[..64], None, &device).expect("trains");
    (model.valid(), mcfg, tok)
}

/// Index of a sequence of symbol ids in `0..3^LEN`.
fn index(seq: &[u32], offset: u32) -> usize {
    seq.iter()
        .fold(0, |acc, &t| acc * SYMBOLS + (t - offset) as usize)
}

/// The AR mode's joint probability of every sequence: one block-size-1 (verifier-mask) call
/// scores all `3^LEN` sequences at once.
fn ar_joint(model: &BlockDiffusionModel<B>, offset: u32) -> Vec<f64> {
    let device = Default::default();
    let n = SYMBOLS.pow(LEN as u32);
    let seqs: Vec<Vec<u32>> = (0..n)
        .map(|mut k| {
            let mut s = vec![0u32; LEN];
            for p in (0..LEN).rev() {
                s[p] = offset + (k % SYMBOLS) as u32;
                k /= SYMBOLS;
            }
            s
        })
        .collect();
    let mut toks: Vec<i64> = Vec::new();
    for s in &seqs {
        toks.extend(std::iter::repeat_n(MASK as i64, LEN));
        toks.extend(s.iter().map(|&t| t as i64));
    }
    let mut positions: Vec<usize> = (0..LEN).collect();
    positions.extend(0..LEN);
    let input = ForwardInput {
        tokens: Tensor::<B, 1, Int>::from_data(TensorData::new(toks, [n * 2 * LEN]), &device)
            .reshape([n, 2 * LEN]),
        positions,
        cond: None,
        cond_drop: None,
        request_features: None,
        mask: Some(MaskTable::new(
            mask::verifier_mask_data(0, LEN),
            2 * LEN,
            2 * LEN,
        )),
    };
    let (logits, _) = model.forward_range(input, None, 0, LEN);
    let vocab = logits.dims()[2];
    let logits: Vec<f32> = logits.into_data().into_vec().expect("f32");
    seqs.iter()
        .enumerate()
        .map(|(i, s)| {
            (0..LEN)
                .map(|p| {
                    let row = &logits[(i * LEN + p) * vocab..(i * LEN + p + 1) * vocab];
                    let allowed = &row[offset as usize..offset as usize + SYMBOLS];
                    let max = allowed.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
                    let z: f64 = allowed.iter().map(|&l| ((l - max) as f64).exp()).sum();
                    ((row[s[p] as usize] - max) as f64).exp() / z
                })
                .product::<f64>()
        })
        .collect()
}

/// Pearson chi-square of `counts` against `probs`, cells with expected count < 5 pooled;
/// returns (statistic, critical value at p = 0.001).
fn chi_square(counts: &[usize], probs: &[f64]) -> (f64, f64) {
    let total: usize = counts.iter().sum();
    let (mut stat, mut cells) = (0.0, 0usize);
    let (mut pooled_obs, mut pooled_exp) = (0.0, 0.0);
    for (&c, &p) in counts.iter().zip(probs) {
        let e = p * total as f64;
        if e < 5.0 {
            pooled_obs += c as f64;
            pooled_exp += e;
        } else {
            stat += (c as f64 - e).powi(2) / e;
            cells += 1;
        }
    }
    if pooled_exp > 0.0 {
        stat += (pooled_obs - pooled_exp).powi(2) / pooled_exp.max(1.0);
        cells += 1;
    }
    let k = (cells - 1) as f64;
    // Wilson–Hilferty approximation of the chi-square quantile, z = 3.09 (p = 0.001).
    let crit = k * (1.0 - 2.0 / (9.0 * k) + 3.09 * (2.0 / (9.0 * k)).sqrt()).powi(3);
    (stat, crit)
}

fn counts(
    model: &BlockDiffusionModel<B>,
    mcfg: &BlockDiffusionConfig,
    offset: u32,
    cfg: SamplerConfig,
    n: usize,
) -> (Vec<usize>, f64) {
    let device = Default::default();
    let reqs = vec![Conditioning::default(); n];
    let out = sample(model, mcfg, &reqs, &OnlySymbols(offset), &cfg, &device).expect("samples");
    let mut c = vec![0usize; SYMBOLS.pow(LEN as u32)];
    for s in &out.sequences {
        assert_eq!(s.len(), LEN);
        c[index(s, offset)] += 1;
    }
    (c, out.stats.tokens_per_forward())
}

#[test]
fn speculative_sampling_keeps_the_autoregressive_distribution() {
    let (model, mcfg, tok) = trained_model();
    let offset = tok.vocab().regular_offset();
    let joint = ar_joint(&model, offset);
    let total: f64 = joint.iter().sum();
    assert!((total - 1.0).abs() < 1e-4, "AR joint sums to {total}");
    let n = 8000;
    let base = SamplerConfig {
        block_size: LEN,
        max_len: LEN,
        stop_at_eos: false,
        seed: 11,
        ..SamplerConfig::default()
    };
    let spec = SamplerConfig {
        policy: CommitPolicy::Speculative {
            routing: SpecRouting::Always,
        },
        ..base.clone()
    };
    let (c, tpf) = counts(&model, &mcfg, offset, spec, n);
    let (stat, crit) = chi_square(&c, &joint);
    eprintln!("speculative: chi2 {stat:.1} (critical {crit:.1}), {tpf:.2} tokens per call");
    assert!(stat < crit, "speculative: chi2 {stat:.1} >= {crit:.1}");
    // More than one token per verified step on average (2 calls per step): drafts get accepted.
    assert!(tpf > 0.5, "speculative committed {tpf} tokens per call");

    let ar = SamplerConfig {
        seed: 12,
        ..SamplerConfig::autoregressive(LEN)
    };
    let ar = SamplerConfig {
        stop_at_eos: false,
        ..ar
    };
    let (c, _) = counts(&model, &mcfg, offset, ar, n);
    let (stat, crit) = chi_square(&c, &joint);
    eprintln!("AR mode: chi2 {stat:.1} (critical {crit:.1})");
    assert!(stat < crit, "AR mode: chi2 {stat:.1} >= {crit:.1}");

    // The test has power: all four tokens in one parallel step ignore their dependence.
    let parallel = SamplerConfig {
        policy: CommitPolicy::TopK { k: LEN },
        seed: 13,
        ..base
    };
    let (c, _) = counts(&model, &mcfg, offset, parallel, n);
    let (stat, crit) = chi_square(&c, &joint);
    eprintln!("parallel top-k: chi2 {stat:.1} (critical {crit:.1})");
    assert!(
        stat > crit,
        "parallel top-k unexpectedly matches: chi2 {stat:.1} < {crit:.1}"
    );
}

#[test]
fn flashblock_merge_equals_full_attention() {
    let device = Default::default();
    B::seed(&device, 1);
    let shape = |n| [2, 3, n, 8];
    let q = Tensor::<B, 4>::random(shape(5), Distribution::Normal(0.0, 1.0), &device);
    let k = Tensor::<B, 4>::random(shape(11), Distribution::Normal(0.0, 2.0), &device);
    let v = Tensor::<B, 4>::random(shape(11), Distribution::Normal(0.0, 1.0), &device);
    let full = scaled_attention(q.clone(), k.clone(), v.clone(), None);
    let ext = attention_part(
        q.clone(),
        k.clone().narrow(2, 0, 6),
        v.clone().narrow(2, 0, 6),
    );
    let int = attention_part(
        q.clone(),
        k.clone().narrow(2, 6, 5),
        v.clone().narrow(2, 6, 5),
    );
    let merged = merge_attention(&ext, &int);
    let diff: f32 = (full - merged).abs().max().into_scalar();
    assert!(diff < 1e-5, "merge differs by {diff}");
    // Sanity: one part alone is not the answer.
    let alone: f32 = (scaled_attention(q, k, v, None) - int.out)
        .abs()
        .max()
        .into_scalar();
    assert!(alone > 1e-2);
}

#[test]
fn flashblock_in_the_model_is_exact_until_the_block_changes() {
    let device = Default::default();
    B::seed(&device, 2);
    let cfg = BlockDiffusionConfig::new(12)
        .with_d_model(32)
        .with_n_layers(2);
    let model = cfg.init::<B>(&device);
    let prompt: Vec<i64> = vec![4, 5, 6, 7, 8, 9];
    let block: Vec<i64> = vec![10, MASK as i64, 11, MASK as i64];
    let (c, b) = (prompt.len(), block.len());
    let ids = |v: Vec<i64>| {
        let n = v.len();
        Tensor::<B, 1, Int>::from_data(TensorData::new(v, [n]), &device).reshape([1, n])
    };
    let first = |tokens: Vec<i64>| ForwardInput {
        tokens: ids(tokens),
        positions: (0..c + b).collect(),
        cond: None,
        cond_drop: None,
        request_features: None,
        mask: Some(MaskTable::new(
            mask::append_mask_data(0, c, b),
            c + b,
            c + b,
        )),
    };
    let all: Vec<i64> = prompt.iter().chain(&block).copied().collect();
    let (plain, kvs) = model.forward_range(first(all.clone()), None, c, b);
    let mut state = FlashBlockState::new();
    let (recorded, _) = model.forward_block_flash(first(all), None, c, b, &mut state);
    let max_diff = |a: Tensor<B, 3>, b: Tensor<B, 3>| -> f32 { (a - b).abs().max().into_scalar() };
    assert!(
        max_diff(plain.clone(), recorded) < 1e-4,
        "recording call differs"
    );
    assert!(state.is_recorded());

    let mut cache = KvCache::<B>::new();
    cache.append(&kvs, 0, c);
    let block_only = |tokens: Vec<i64>| ForwardInput {
        tokens: ids(tokens),
        positions: (c..c + b).collect(),
        cond: None,
        cond_drop: None,
        request_features: None,
        mask: None,
    };
    // Same block tokens: the kept external part is not stale, reuse is exact.
    let (reused, _) =
        model.forward_block_flash(block_only(block.clone()), Some(&cache), 0, b, &mut state);
    assert!(
        max_diff(plain, reused) < 1e-4,
        "reuse with nothing stale differs"
    );
    // After a commit the kept part is stale: close to, but not the same as, the exact call.
    let committed: Vec<i64> = vec![10, 6, 11, MASK as i64];
    let (stale, _) = model.forward_block_flash(
        block_only(committed.clone()),
        Some(&cache),
        0,
        b,
        &mut state,
    );
    let (exact, _) = model.forward_range(block_only(committed), Some(&cache), 0, b);
    let err = max_diff(exact.clone(), stale);
    let scale: f32 = exact.abs().max().into_scalar();
    assert!(
        err > 0.0 && err < scale,
        "stale error {err} vs logit scale {scale}"
    );
}
