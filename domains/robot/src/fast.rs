//! FAST action tokenization (Pertsch et al., 2025): a discrete cosine transform along time per
//! action dimension, scaling and rounding of the coefficients, then byte-pair encoding over the
//! coefficient stream.
//!
//! Smooth chunks concentrate their energy in a few low-frequency coefficients, most of the rest
//! round to 0, and BPE folds the long runs of zeros into few tokens, so a chunk costs far fewer
//! tokens than `H × D` bins. Coefficients are laid out frequency-major (the lowest frequency of
//! every dimension first), so a truncated sequence still decodes to a coarse chunk.
//!
//! Lossless up to the rounding: with values normalised into `[-1, 1]` the orthonormal DCT bounds
//! every coefficient by `√H`, so the symbol alphabet `[-⌈scale·√H⌉, ⌈scale·√H⌉]` never clips, and
//! the reconstruction error of a normalised value is at most `√H · 0.5 / scale`.

use std::collections::HashMap;

use blockdiff_core::error::TokenizerError;
use blockdiff_core::tokenizer::{decode_regular, until_end, Tokenizer, Vocab};
use serde::{Deserialize, Serialize};

use crate::chunk::{ActionChunk, ActionStats};

/// Settings of [`FastTokenizer::train`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FastConfig {
    /// Coefficient scale before rounding (FAST's default is 10).
    pub scale: f32,
    /// Vocabulary size of regular tokens after BPE (base symbols included).
    pub vocab_size: usize,
    /// Chunks used to learn the merges (a seeded subsample keeps training fast).
    pub max_train_chunks: usize,
}

impl Default for FastConfig {
    fn default() -> Self {
        Self {
            scale: 10.0,
            vocab_size: 1024,
            max_train_chunks: 4000,
        }
    }
}

/// The FAST tokenizer: DCT + rounding + BPE.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FastTokenizer {
    /// Normalisation statistics.
    pub stats: ActionStats,
    /// Actions per chunk.
    pub horizon: usize,
    /// Coefficient scale.
    pub scale: f32,
    /// Largest rounded coefficient magnitude (`⌈scale·√H⌉`).
    pub max_abs: i32,
    /// Learned merges in rank order: symbols `a`, `b` → symbol `base + rank`.
    pub merges: Vec<(u32, u32)>,
    #[serde(skip)]
    ranks: HashMap<(u32, u32), u32>,
    #[serde(skip)]
    expansions: Vec<Vec<u32>>,
    vocab: Vocab,
}

impl FastTokenizer {
    /// Learns the BPE merges on `chunks` (normalised by `stats`).
    pub fn train(
        stats: ActionStats,
        horizon: usize,
        chunks: &[ActionChunk],
        cfg: &FastConfig,
    ) -> Result<Self, TokenizerError> {
        if horizon == 0 || !(cfg.scale > 0.0 && cfg.scale.is_finite()) {
            return Err(TokenizerError::Encode(
                "FAST needs horizon > 0 and a positive finite scale".into(),
            ));
        }
        let max_abs = (cfg.scale * (horizon as f32).sqrt()).ceil() as i32;
        let mut tok = Self::from_merges(stats, horizon, cfg.scale, max_abs, Vec::new());
        let base = tok.n_base() as u32;
        if cfg.vocab_size < base as usize {
            return Err(TokenizerError::Encode(format!(
                "vocab_size {} is below the {} base symbols of scale {} and horizon {horizon}",
                cfg.vocab_size, base, cfg.scale
            )));
        }
        // A deterministic, evenly spaced subsample.
        let step = chunks.len().div_ceil(cfg.max_train_chunks.max(1)).max(1);
        let mut seqs: Vec<Vec<u32>> = chunks
            .iter()
            .step_by(step)
            .map(|c| tok.symbols(c))
            .collect::<Result<_, _>>()?;
        let mut merges = Vec::new();
        while (base as usize) + merges.len() < cfg.vocab_size {
            let mut counts: HashMap<(u32, u32), usize> = HashMap::new();
            for s in &seqs {
                for w in s.windows(2) {
                    *counts.entry((w[0], w[1])).or_default() += 1;
                }
            }
            // Most frequent pair; ties broken by the smaller pair so training is deterministic.
            let Some((&pair, &n)) = counts
                .iter()
                .max_by(|a, b| a.1.cmp(b.1).then_with(|| b.0.cmp(a.0)))
            else {
                break;
            };
            if n < 2 {
                break;
            }
            let new = base + merges.len() as u32;
            merges.push(pair);
            for s in &mut seqs {
                merge_pair(s, pair, new);
            }
        }
        tok = Self::from_merges(tok.stats, horizon, cfg.scale, max_abs, merges);
        Ok(tok)
    }

    fn from_merges(
        stats: ActionStats,
        horizon: usize,
        scale: f32,
        max_abs: i32,
        merges: Vec<(u32, u32)>,
    ) -> Self {
        let n_base = (2 * max_abs + 1) as usize;
        let mut tok = Self {
            stats,
            horizon,
            scale,
            max_abs,
            merges,
            ranks: HashMap::new(),
            expansions: Vec::new(),
            vocab: Vocab::new(Vec::new(), n_base),
        };
        tok.rebuild();
        tok
    }

    /// Rebuilds the lookup tables after deserialisation.
    pub fn rebuild(&mut self) {
        let n_base = self.n_base();
        self.vocab = Vocab::new(Vec::new(), n_base + self.merges.len());
        self.ranks = self
            .merges
            .iter()
            .enumerate()
            .map(|(r, &p)| (p, r as u32))
            .collect();
        let mut exp: Vec<Vec<u32>> = (0..n_base as u32).map(|s| vec![s]).collect();
        for &(a, b) in &self.merges {
            let mut e = exp[a as usize].clone();
            e.extend_from_slice(&exp[b as usize]);
            exp.push(e);
        }
        self.expansions = exp;
    }

    /// Base (coefficient) symbols.
    pub fn n_base(&self) -> usize {
        (2 * self.max_abs + 1) as usize
    }

    /// Action dimensions.
    pub fn dim(&self) -> usize {
        self.stats.dim()
    }

    /// Largest error of a normalised value after a round trip (`√H · 0.5 / scale`).
    pub fn max_normalized_error(&self) -> f32 {
        (self.horizon as f32).sqrt() * 0.5 / self.scale
    }

    /// Base symbols of a chunk: rounded scaled DCT coefficients, frequency-major.
    fn symbols(&self, chunk: &ActionChunk) -> Result<Vec<u32>, TokenizerError> {
        let (h, d) = (self.horizon, self.dim());
        if chunk.horizon != h || chunk.dim != d {
            return Err(TokenizerError::Encode(format!(
                "chunk is {} × {}, the tokenizer expects {h} × {d}",
                chunk.horizon, chunk.dim
            )));
        }
        if let Some(i) = chunk.values.iter().position(|v| !v.is_finite()) {
            return Err(TokenizerError::Encode(format!(
                "action value {i} is not finite"
            )));
        }
        let mut coeffs = vec![0i32; h * d];
        let mut col = vec![0f32; h];
        for j in 0..d {
            for (t, c) in col.iter_mut().enumerate() {
                *c = self.stats.normalize(j, chunk.values[t * d + j]);
            }
            for k in 0..h {
                let c = dct_coefficient(&col, k) * self.scale;
                coeffs[k * d + j] = (c.round() as i32).clamp(-self.max_abs, self.max_abs);
            }
        }
        Ok(coeffs.iter().map(|&c| (c + self.max_abs) as u32).collect())
    }

    /// Decodes tokens, tolerating a wrong number of coefficients (missing ones are 0, extra
    /// ones dropped) as a policy must when a generated sequence is malformed; invalid ids are
    /// still errors.
    pub fn decode_lenient(&self, ids: &[u32]) -> Result<ActionChunk, TokenizerError> {
        let mut syms = self.expand(ids)?;
        syms.resize(self.horizon * self.dim(), self.max_abs as u32);
        Ok(self.chunk_from_symbols(&syms))
    }

    fn expand(&self, ids: &[u32]) -> Result<Vec<u32>, TokenizerError> {
        let idx = decode_regular(&self.vocab, until_end(ids))?;
        Ok(idx
            .iter()
            .flat_map(|&i| self.expansions[i].iter().copied())
            .collect())
    }

    fn chunk_from_symbols(&self, syms: &[u32]) -> ActionChunk {
        let (h, d) = (self.horizon, self.dim());
        let mut values = vec![0f32; h * d];
        let mut coef = vec![0f32; h];
        for j in 0..d {
            for (k, c) in coef.iter_mut().enumerate() {
                *c = (syms[k * d + j] as i32 - self.max_abs) as f32 / self.scale;
            }
            for t in 0..h {
                let u = inverse_dct(&coef, t);
                let (lo, hi) = (self.stats.q01[j], self.stats.q99[j]);
                // No clipping: a round trip must not bias values near the range edges.
                values[t * d + j] = lo + (u + 1.0) * 0.5 * (hi - lo);
            }
        }
        ActionChunk {
            horizon: h,
            dim: d,
            values,
        }
    }
}

/// Replaces every non-overlapping occurrence of `pair` (left to right) by `new`.
fn merge_pair(s: &mut Vec<u32>, pair: (u32, u32), new: u32) {
    let mut out = 0;
    let mut i = 0;
    while i < s.len() {
        if i + 1 < s.len() && (s[i], s[i + 1]) == pair {
            s[out] = new;
            i += 2;
        } else {
            s[out] = s[i];
            i += 1;
        }
        out += 1;
    }
    s.truncate(out);
}

/// Orthonormal DCT-II coefficient `k` of `x`.
fn dct_coefficient(x: &[f32], k: usize) -> f32 {
    let n = x.len() as f32;
    let s = if k == 0 {
        (1.0 / n).sqrt()
    } else {
        (2.0 / n).sqrt()
    };
    let sum: f32 = x
        .iter()
        .enumerate()
        .map(|(t, &v)| v * (std::f32::consts::PI * (t as f32 + 0.5) * k as f32 / n).cos())
        .sum();
    s * sum
}

/// Sample `t` of the orthonormal inverse (DCT-III) of coefficients `c`.
fn inverse_dct(c: &[f32], t: usize) -> f32 {
    let n = c.len() as f32;
    c.iter()
        .enumerate()
        .map(|(k, &v)| {
            let s = if k == 0 {
                (1.0 / n).sqrt()
            } else {
                (2.0 / n).sqrt()
            };
            s * v * (std::f32::consts::PI * (t as f32 + 0.5) * k as f32 / n).cos()
        })
        .sum()
}

impl Tokenizer for FastTokenizer {
    type Item = ActionChunk;

    fn vocab(&self) -> &Vocab {
        &self.vocab
    }

    fn encode(&self, chunk: &ActionChunk) -> Result<Vec<u32>, TokenizerError> {
        let mut s = self.symbols(chunk)?;
        // Standard BPE encoding: repeatedly apply the lowest-ranked merge present.
        loop {
            let best = s
                .windows(2)
                .filter_map(|w| self.ranks.get(&(w[0], w[1])).map(|&r| (r, (w[0], w[1]))))
                .min();
            let Some((rank, pair)) = best else { break };
            merge_pair(&mut s, pair, self.n_base() as u32 + rank);
        }
        Ok(s.iter()
            .map(|&x| self.vocab.regular_id(x as usize))
            .collect())
    }

    fn decode(&self, ids: &[u32]) -> Result<ActionChunk, TokenizerError> {
        let syms = self.expand(ids)?;
        let want = self.horizon * self.dim();
        if syms.len() != want {
            return Err(TokenizerError::Decode(format!(
                "tokens expand to {} coefficients, a chunk has {want}",
                syms.len()
            )));
        }
        Ok(self.chunk_from_symbols(&syms))
    }

    fn metadata(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// Smooth random chunks: low-frequency sinusoids plus a little noise.
    fn chunks(n: usize, h: usize, seed: u64) -> Vec<ActionChunk> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        (0..n)
            .map(|_| {
                let params: Vec<(f32, f32, f32)> = (0..4)
                    .map(|_| {
                        (
                            rng.random_range(-0.8..0.8),
                            rng.random_range(0.0..0.4),
                            rng.random_range(0.0..3.0),
                        )
                    })
                    .collect();
                let values = (0..h)
                    .flat_map(|t| {
                        params
                            .iter()
                            .map(|&(a, b, ph)| a + b * (t as f32 * 0.3 + ph).sin())
                            .collect::<Vec<_>>()
                    })
                    .collect();
                ActionChunk::new(h, 4, values).unwrap()
            })
            .collect()
    }

    fn stats() -> ActionStats {
        ActionStats {
            q01: vec![-1.5; 4],
            q99: vec![1.5; 4],
        }
    }

    #[test]
    fn dct_is_orthonormal() {
        let x = [0.3f32, -0.2, 0.9, 0.1, -0.7, 0.0, 0.4, 0.5];
        let c: Vec<f32> = (0..8).map(|k| dct_coefficient(&x, k)).collect();
        for (t, v) in x.iter().enumerate() {
            assert!((inverse_dct(&c, t) - v).abs() < 1e-5);
        }
        let e1: f32 = x.iter().map(|v| v * v).sum();
        let e2: f32 = c.iter().map(|v| v * v).sum();
        assert!((e1 - e2).abs() < 1e-4);
    }

    #[test]
    fn round_trip_is_lossless_up_to_rounding_and_compresses() {
        let train = chunks(600, 10, 1);
        let tok = FastTokenizer::train(
            stats(),
            10,
            &train,
            &FastConfig {
                vocab_size: 300,
                ..FastConfig::default()
            },
        )
        .unwrap();
        assert!(tok.merges.len() > 50, "learned {} merges", tok.merges.len());
        assert!(tok.vocab().n_regular() <= 300);
        let bound = tok.max_normalized_error() * 1.5 + 1e-4; // (q99 − q01)/2 = 1.5
        let mut total = 0;
        for c in chunks(200, 10, 2) {
            let ids = tok.encode(&c).unwrap();
            total += ids.len();
            let back = tok.decode(&ids).unwrap();
            for (a, b) in c.values.iter().zip(&back.values) {
                assert!((a - b).abs() <= bound, "{a} vs {b} > {bound}");
            }
            // Coefficient-level losslessness: the same symbols come back.
            assert_eq!(tok.expand(&ids).unwrap(), tok.symbols(&c).unwrap());
        }
        let mean = total as f64 / 200.0;
        assert!(
            mean < 40.0 * 0.6,
            "FAST should compress 40 values, got {mean} tokens"
        );
    }

    #[test]
    fn serde_round_trip_and_malformed_tokens() {
        let tok = FastTokenizer::train(
            stats(),
            10,
            &chunks(100, 10, 3),
            &FastConfig {
                vocab_size: 150,
                ..FastConfig::default()
            },
        )
        .unwrap();
        let mut back: FastTokenizer = serde_json::from_value(tok.metadata()).unwrap();
        back.rebuild();
        let c = &chunks(1, 10, 4)[0];
        assert_eq!(back.encode(c).unwrap(), tok.encode(c).unwrap());
        let ids = tok.encode(c).unwrap();
        assert!(tok.decode(&ids[..ids.len() - 1]).is_err() || ids.len() == 1);
        assert_eq!(tok.decode_lenient(&ids[..1]).unwrap().values.len(), 40);
        assert!(tok.decode(&[9999]).is_err());
    }
}
