//! Codec frames ⇄ token ids, and the constraint that keeps every frame well formed.
//!
//! Layout: **flattened levels per frame**. Frame `t` becomes `1 + L` consecutive tokens
//! `[gain_t, q0_t, q1_t, …]`. Each slot has its own id range, so the model (and the n-gram
//! baselines) always know which quantiser a token belongs to:
//!
//! | slot | ids (after the 4 core specials) |
//! |---|---|
//! | gain | `0 .. G` |
//! | RVQ level `l` | `G + l·K .. G + (l+1)·K` |
//!
//! A block is a whole number of frames, so slot = `position % (1 + L)` in every block.

use blockdiff_core::constraint::Constraint;
use blockdiff_core::error::TokenizerError;
use blockdiff_core::tokenizer::{Tokenizer, Vocab};
use ndarray::Array2;

use crate::codec::{CodecConfig, Codes};

/// Frames of codec codes ⇄ ids.
#[derive(Clone, Debug, PartialEq)]
pub struct AudioTokenizer {
    gain_levels: usize,
    levels: usize,
    codebook_size: usize,
    vocab: Vocab,
}

impl AudioTokenizer {
    /// The tokenizer of a codec.
    pub fn new(codec: &CodecConfig) -> Self {
        Self {
            gain_levels: codec.gain_levels,
            levels: codec.levels,
            codebook_size: codec.codebook_size,
            vocab: Vocab::new(
                Vec::new(),
                codec.gain_levels + codec.levels * codec.codebook_size,
            ),
        }
    }

    /// Vocabulary size including the core specials.
    pub fn vocab_size(&self) -> usize {
        self.vocab().size()
    }

    /// Tokens per frame.
    pub fn frame_len(&self) -> usize {
        1 + self.levels
    }

    /// Range of regular indices for slot `s` of a frame.
    fn slot_range(&self, s: usize) -> std::ops::Range<usize> {
        if s == 0 {
            0..self.gain_levels
        } else {
            let start = self.gain_levels + (s - 1) * self.codebook_size;
            start..start + self.codebook_size
        }
    }

    /// Id range of slot `s`.
    pub fn slot_ids(&self, s: usize) -> std::ops::Range<u32> {
        let v = self.vocab();
        let r = self.slot_range(s);
        v.regular_id(r.start)..v.regular_id(r.start) + r.len() as u32
    }

    /// Ids of code frames.
    pub fn encode_codes(&self, codes: &Codes) -> Result<Vec<u32>, TokenizerError> {
        if codes.ncols() != self.frame_len() {
            return Err(TokenizerError::Encode(format!(
                "frames have {} codes, the tokenizer expects {}",
                codes.ncols(),
                self.frame_len()
            )));
        }
        let v = self.vocab();
        let mut ids = Vec::with_capacity(codes.len());
        for (t, row) in codes.rows().into_iter().enumerate() {
            for (s, &c) in row.iter().enumerate() {
                let r = self.slot_range(s);
                if c as usize >= r.len() {
                    return Err(TokenizerError::Encode(format!(
                        "frame {t} slot {s}: code {c} outside 0..{}",
                        r.len()
                    )));
                }
                ids.push(v.regular_id(r.start + c as usize));
            }
        }
        Ok(ids)
    }

    /// Code frames of ids; the ids must be whole frames with every slot in its range.
    pub fn decode_codes(&self, ids: &[u32]) -> Result<Codes, TokenizerError> {
        let f = self.frame_len();
        if ids.len() % f != 0 {
            return Err(TokenizerError::Decode(format!(
                "{} tokens are not a whole number of {f}-token frames",
                ids.len()
            )));
        }
        let v = self.vocab();
        let mut codes = Array2::<u32>::zeros((ids.len() / f, f));
        for (i, &id) in ids.iter().enumerate() {
            let idx = v.check_regular(id, i)?;
            let r = self.slot_range(i % f);
            if !r.contains(&idx) {
                return Err(TokenizerError::Decode(format!(
                    "token {id} at position {i} does not belong to frame slot {}",
                    i % f
                )));
            }
            codes[[i / f, i % f]] = (idx - r.start) as u32;
        }
        Ok(codes)
    }
}

impl Tokenizer for AudioTokenizer {
    type Item = Codes;

    fn vocab(&self) -> &Vocab {
        &self.vocab
    }

    fn encode(&self, item: &Codes) -> Result<Vec<u32>, TokenizerError> {
        self.encode_codes(item)
    }

    fn decode(&self, ids: &[u32]) -> Result<Codes, TokenizerError> {
        self.decode_codes(blockdiff_core::tokenizer::until_end(ids))
    }

    fn metadata(&self) -> serde_json::Value {
        serde_json::json!({
            "kind": "audio-codec-frames",
            "gain_levels": self.gain_levels,
            "levels": self.levels,
            "codebook_size": self.codebook_size,
            "layout": "flattened levels per frame: [gain, q0, q1, ...]",
        })
    }
}

/// Only tokens of the right frame slot at each position (and never EOS/PAD: a stream does not
/// end). Positions count from a frame boundary.
#[derive(Clone, Debug)]
pub struct FrameSlotConstraint {
    frame_len: usize,
    slots: Vec<std::ops::Range<u32>>,
}

impl FrameSlotConstraint {
    /// For a tokenizer's layout.
    pub fn new(tok: &AudioTokenizer) -> Self {
        Self {
            frame_len: tok.frame_len(),
            slots: (0..tok.frame_len()).map(|s| tok.slot_ids(s)).collect(),
        }
    }
}

impl Constraint for FrameSlotConstraint {
    fn restrict(&self, _seq: &[u32], pos: usize, allowed: &mut [bool]) {
        let r = &self.slots[pos % self.frame_len];
        let n = allowed.len();
        let (start, end) = ((r.start as usize).min(n), (r.end as usize).min(n));
        allowed[..start].fill(false);
        allowed[end..].fill(false);
    }

    fn is_allowed(&self, _seq: &[u32], pos: usize, token: u32, _vocab: usize) -> bool {
        self.slots[pos % self.frame_len].contains(&token)
    }

    /// A slot allows a whole codebook, so nothing is forced: skip the sampler's scan.
    fn may_force(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_slot_errors() {
        let cfg = CodecConfig {
            levels: 2,
            codebook_size: 8,
            gain_levels: 5,
            ..CodecConfig::default()
        };
        let tok = AudioTokenizer::new(&cfg);
        assert_eq!(tok.vocab().size(), 4 + 5 + 16);
        let codes = Array2::from_shape_vec((2, 3), vec![4, 7, 0, 0, 3, 5]).unwrap();
        let ids = tok.encode(&codes).unwrap();
        assert_eq!(ids.len(), 6);
        assert_eq!(tok.decode(&ids).unwrap(), codes);
        // A level-0 id in the gain slot.
        let mut bad = ids.clone();
        bad.swap(0, 1);
        assert!(tok.decode(&bad).is_err());
        assert!(tok.decode(&ids[..5]).is_err());
        let too_big = Array2::from_shape_vec((1, 3), vec![5, 0, 0]).unwrap();
        assert!(tok.encode(&too_big).is_err());
        // The constraint allows exactly the slot's ids.
        let c = FrameSlotConstraint::new(&tok);
        for pos in 0..6 {
            let mut allowed = vec![true; tok.vocab().size()];
            c.restrict(&[], pos, &mut allowed);
            let n = allowed.iter().filter(|&&a| a).count();
            assert_eq!(n, if pos % 3 == 0 { 5 } else { 8 });
            assert!(allowed[ids[pos] as usize]);
        }
    }
}
