//! Token vocabularies and the [`Tokenizer`] trait every domain implements.
//!
//! Layout of every vocabulary: the four core specials (`MASK`, `BOS`, `EOS`, `PAD`) at ids
//! 0..4, then the domain's own specials, then the regular (item) tokens.

use serde::{Deserialize, Serialize};

use crate::error::TokenizerError;

/// The absorbing "masked" token of the diffusion process.
pub const MASK: u32 = 0;
/// Beginning of sequence.
pub const BOS: u32 = 1;
/// End of sequence: the sequence stops here.
pub const EOS: u32 = 2;
/// Padding after `EOS`.
pub const PAD: u32 = 3;
/// Number of core special tokens.
pub const NUM_CORE_SPECIALS: u32 = 4;
const CORE_NAMES: [&str; 4] = ["<mask>", "<bos>", "<eos>", "<pad>"];

/// A vocabulary: core specials, domain specials, then `n_regular` item tokens.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vocab {
    domain_specials: Vec<String>,
    n_regular: usize,
}

impl Vocab {
    /// A vocabulary with the given domain specials and `n_regular` item tokens.
    pub fn new(domain_specials: Vec<String>, n_regular: usize) -> Self {
        Self {
            domain_specials,
            n_regular,
        }
    }

    /// Total number of ids.
    pub fn size(&self) -> usize {
        NUM_CORE_SPECIALS as usize + self.domain_specials.len() + self.n_regular
    }

    /// First id of the regular tokens.
    pub fn regular_offset(&self) -> u32 {
        NUM_CORE_SPECIALS + self.domain_specials.len() as u32
    }

    /// Number of regular tokens.
    pub fn n_regular(&self) -> usize {
        self.n_regular
    }

    /// Id of regular token `index`.
    pub fn regular_id(&self, index: usize) -> u32 {
        self.regular_offset() + index as u32
    }

    /// Index of a regular token id, `None` for specials and out-of-range ids.
    pub fn regular_index(&self, id: u32) -> Option<usize> {
        let off = self.regular_offset();
        (id >= off && ((id - off) as usize) < self.n_regular).then(|| (id - off) as usize)
    }

    /// Id of a domain special by name.
    pub fn special(&self, name: &str) -> Option<u32> {
        self.domain_specials
            .iter()
            .position(|s| s == name)
            .map(|i| NUM_CORE_SPECIALS + i as u32)
    }

    /// Name of a special id (core or domain), `None` for regular or out-of-range ids.
    pub fn special_name(&self, id: u32) -> Option<&str> {
        if id < NUM_CORE_SPECIALS {
            Some(CORE_NAMES[id as usize])
        } else if id < self.regular_offset() {
            Some(&self.domain_specials[(id - NUM_CORE_SPECIALS) as usize])
        } else {
            None
        }
    }

    /// Checks that `id` is a regular token, naming the position on error.
    pub fn check_regular(&self, id: u32, position: usize) -> Result<usize, TokenizerError> {
        if id as usize >= self.size() {
            return Err(TokenizerError::OutOfVocab {
                id,
                position,
                vocab_size: self.size(),
            });
        }
        match self.regular_index(id) {
            Some(i) => Ok(i),
            None => Err(TokenizerError::Special {
                id,
                position,
                name: self.special_name(id).unwrap_or("?").to_string(),
            }),
        }
    }
}

/// Item ⇄ token ids. Implemented by every domain (segments, action bins, DAG ops, audio codes).
pub trait Tokenizer {
    /// What one sequence of tokens stands for (a trip, an action chunk, a graph...).
    type Item;

    /// The vocabulary.
    fn vocab(&self) -> &Vocab;

    /// Encodes an item to ids (no `BOS`/`EOS`; the trainer adds framing).
    fn encode(&self, item: &Self::Item) -> Result<Vec<u32>, TokenizerError>;

    /// Decodes ids (stopping at `EOS`/`PAD`) to an item; invalid ids give a typed error.
    fn decode(&self, ids: &[u32]) -> Result<Self::Item, TokenizerError>;

    /// Everything needed to rebuild the tokenizer, saved next to checkpoints.
    fn metadata(&self) -> serde_json::Value;
}

/// The ids up to (not including) the first `EOS` or `PAD`.
pub fn until_end(ids: &[u32]) -> &[u32] {
    let end = ids
        .iter()
        .position(|&t| t == EOS || t == PAD)
        .unwrap_or(ids.len());
    &ids[..end]
}

/// Encodes item indices `0..n_regular` as regular token ids; `what` names the item kind in
/// the error ("symbol", "segment"...).
pub fn encode_regular(
    vocab: &Vocab,
    indices: &[usize],
    what: &str,
) -> Result<Vec<u32>, TokenizerError> {
    indices
        .iter()
        .enumerate()
        .map(|(i, &s)| {
            if s < vocab.n_regular() {
                Ok(vocab.regular_id(s))
            } else {
                Err(TokenizerError::Encode(format!(
                    "{what} {s} at position {i} is outside 0..{}",
                    vocab.n_regular()
                )))
            }
        })
        .collect()
}

/// Decodes ids up to the first `EOS`/`PAD` back to item indices; specials and out-of-range
/// ids are typed errors.
pub fn decode_regular(vocab: &Vocab, ids: &[u32]) -> Result<Vec<usize>, TokenizerError> {
    until_end(ids)
        .iter()
        .enumerate()
        .map(|(i, &id)| vocab.check_regular(id, i))
        .collect()
}

/// A tokenizer for sequences of small integers `0..n` (the synthetic Markov task, tests).
#[derive(Clone, Debug)]
pub struct SymbolTokenizer {
    vocab: Vocab,
}

impl SymbolTokenizer {
    /// `n_symbols` regular tokens and no domain specials.
    pub fn new(n_symbols: usize) -> Self {
        Self {
            vocab: Vocab::new(Vec::new(), n_symbols),
        }
    }
}

impl Tokenizer for SymbolTokenizer {
    type Item = Vec<usize>;

    fn vocab(&self) -> &Vocab {
        &self.vocab
    }

    fn encode(&self, item: &Vec<usize>) -> Result<Vec<u32>, TokenizerError> {
        encode_regular(&self.vocab, item, "symbol")
    }

    fn decode(&self, ids: &[u32]) -> Result<Vec<usize>, TokenizerError> {
        decode_regular(&self.vocab, ids)
    }

    fn metadata(&self) -> serde_json::Value {
        serde_json::json!({ "kind": "symbol", "vocab": self.vocab })
    }
}
