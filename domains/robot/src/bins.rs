//! Quantile-normalised uniform binning: every action value becomes one token.
//!
//! Values are normalised per dimension by [`ActionStats`] into `[-1, 1]` and cut into `bins`
//! equal bins (one shared vocabulary for all dimensions, as in E0 and RT-2); a chunk of `H × D`
//! values becomes `H × D` tokens in time-major order, so a block of `k·D` tokens holds `k` whole
//! actions. Decoding returns bin centres: the error inside the percentile range is at most half
//! a bin, `(q99 − q01) / (2·bins)` per dimension; values outside it are clipped.

use blockdiff_core::error::TokenizerError;
use blockdiff_core::tokenizer::{decode_regular, until_end, Tokenizer, Vocab};
use serde::{Deserialize, Serialize};

use crate::chunk::{ActionChunk, ActionStats};

/// The uniform-bin action tokenizer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QuantileBinTokenizer {
    /// Normalisation statistics (stored with the model).
    pub stats: ActionStats,
    /// Bins per value (256 and 2048 are the usual choices).
    pub bins: usize,
    /// Actions per chunk.
    pub horizon: usize,
    vocab: Vocab,
}

impl QuantileBinTokenizer {
    /// A tokenizer for chunks of `horizon` actions normalised by `stats`.
    pub fn new(stats: ActionStats, bins: usize, horizon: usize) -> Self {
        Self {
            stats,
            bins: bins.max(1),
            horizon,
            vocab: Vocab::new(Vec::new(), bins.max(1)),
        }
    }

    /// Action dimensions.
    pub fn dim(&self) -> usize {
        self.stats.dim()
    }

    /// Tokens per chunk.
    pub fn chunk_tokens(&self) -> usize {
        self.horizon * self.dim()
    }

    /// Bin of a normalised value.
    pub fn bin(&self, u: f32) -> usize {
        let b = ((u.clamp(-1.0, 1.0) + 1.0) * 0.5 * self.bins as f32).floor() as usize;
        b.min(self.bins - 1)
    }

    /// Centre of a bin as a normalised value.
    pub fn centre(&self, bin: usize) -> f32 {
        -1.0 + (bin as f32 + 0.5) * 2.0 / self.bins as f32
    }

    /// Largest decoding error of dimension `d` for values inside its percentile range.
    pub fn max_error(&self, d: usize) -> f32 {
        (self.stats.q99[d] - self.stats.q01[d]) / (2.0 * self.bins as f32)
    }
}

impl Tokenizer for QuantileBinTokenizer {
    type Item = ActionChunk;

    fn vocab(&self) -> &Vocab {
        &self.vocab
    }

    fn encode(&self, chunk: &ActionChunk) -> Result<Vec<u32>, TokenizerError> {
        if chunk.horizon != self.horizon || chunk.dim != self.dim() {
            return Err(TokenizerError::Encode(format!(
                "chunk is {} × {}, the tokenizer expects {} × {}",
                chunk.horizon,
                chunk.dim,
                self.horizon,
                self.dim()
            )));
        }
        if let Some(i) = chunk.values.iter().position(|v| !v.is_finite()) {
            return Err(TokenizerError::Encode(format!(
                "action value {i} is not finite"
            )));
        }
        let d = self.dim();
        Ok(chunk
            .values
            .iter()
            .enumerate()
            .map(|(i, &v)| {
                self.vocab
                    .regular_id(self.bin(self.stats.normalize(i % d, v)))
            })
            .collect())
    }

    fn decode(&self, ids: &[u32]) -> Result<ActionChunk, TokenizerError> {
        let ids = until_end(ids);
        if ids.len() != self.chunk_tokens() {
            return Err(TokenizerError::Decode(format!(
                "{} tokens, a chunk has {}",
                ids.len(),
                self.chunk_tokens()
            )));
        }
        let d = self.dim();
        let bins = decode_regular(&self.vocab, ids)?;
        let values = bins
            .iter()
            .enumerate()
            .map(|(i, &b)| self.stats.denormalize(i % d, self.centre(b)))
            .collect();
        Ok(ActionChunk {
            horizon: self.horizon,
            dim: d,
            values,
        })
    }

    fn metadata(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn stats() -> ActionStats {
        ActionStats {
            q01: vec![-1.0, -0.5, 0.0, 2.0],
            q99: vec![1.0, 0.5, 10.0, 2.0],
        }
    }

    #[test]
    fn round_trip_within_half_a_bin() {
        for bins in [256, 2048] {
            let tok = QuantileBinTokenizer::new(stats(), bins, 10);
            let mut rng = rand::rngs::StdRng::seed_from_u64(bins as u64);
            for _ in 0..200 {
                let values: Vec<f32> = (0..40)
                    .map(|i| {
                        let (lo, hi) = (tok.stats.q01[i % 4], tok.stats.q99[i % 4]);
                        lo + rng.random::<f32>() * (hi - lo)
                    })
                    .collect();
                let chunk = ActionChunk::new(10, 4, values).unwrap();
                let ids = tok.encode(&chunk).unwrap();
                assert_eq!(ids.len(), 40);
                let back = tok.decode(&ids).unwrap();
                for (i, (a, b)) in chunk.values.iter().zip(&back.values).enumerate() {
                    let bound = tok.max_error(i % 4) + 1e-5;
                    assert!((a - b).abs() <= bound, "value {i}: {a} vs {b} > {bound}");
                }
                // Re-encoding the decoded chunk gives the same tokens (bin centres are fixed points).
                assert_eq!(tok.encode(&back).unwrap(), ids);
            }
        }
    }

    #[test]
    fn out_of_range_clips_and_bad_ids_are_typed_errors() {
        let tok = QuantileBinTokenizer::new(stats(), 256, 1);
        let chunk = ActionChunk::new(1, 4, vec![5.0, -5.0, 3.0, 2.0]).unwrap();
        let back = tok.decode(&tok.encode(&chunk).unwrap()).unwrap();
        assert!(back.values[0] <= 1.0 && back.values[0] > 0.99);
        assert!(back.values[1] >= -0.5 && back.values[1] < -0.49);
        assert_eq!(back.values[3], 2.0);
        assert!(tok.decode(&[4, 5, 6]).is_err());
        assert!(tok.decode(&[4, 5, 6, 9999]).is_err());
        assert!(tok.decode(&[4, 5, 0, 7]).is_err());
        let bad = ActionChunk::new(1, 4, vec![f32::NAN, 0.0, 0.0, 0.0]).unwrap();
        assert!(tok.encode(&bad).is_err());
    }
}
