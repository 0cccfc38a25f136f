//! Cells ⇄ tokens: nodes in topological order, each as its operation token followed by its
//! incoming-edge bits from every earlier node (the lower-triangular adjacency row), so any
//! token sequence of this layout is acyclic by construction:
//!
//! ```text
//! node 0: [input]   node 1: [op₁, a₁₀]   node 2: [op₂, a₂₀, a₂₁]   …   node N−1: [output, …]
//! ```
//!
//! `N + N(N−1)/2` tokens (36 for NAS-Bench-201's 8 nodes, 21 for NAS-Bench-Graph's 6), then
//! the core's `EOS` and `PAD` up to a whole number of blocks.

use blockdiff_core::error::TokenizerError;
use blockdiff_core::tokenizer::{until_end, Tokenizer, Vocab};
use serde::{Deserialize, Serialize};

use crate::space::{Cell, CellSpace};

/// Regular-token index of "no edge".
pub const EDGE_OFF: usize = 0;
/// Regular-token index of "edge".
pub const EDGE_ON: usize = 1;
/// Regular-token index of the input node's label.
pub const NODE_INPUT: usize = 2;
/// Regular-token index of the output node's label.
pub const NODE_OUTPUT: usize = 3;
/// Regular-token index of the first operation.
pub const FIRST_OP: usize = 4;

/// What a position of the layout holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Slot {
    /// The label of node `i`.
    Op(usize),
    /// Whether edge `from → to` exists (`from < to`).
    Edge {
        /// Target node.
        to: usize,
        /// Source node.
        from: usize,
    },
}

/// Tokenizer of a [`CellSpace`].
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DagTokenizer {
    vocab: Vocab,
    space: CellSpace,
    slots: Vec<Slot>,
}

impl DagTokenizer {
    /// The tokenizer of `space`.
    pub fn new(space: CellSpace) -> Self {
        let n = space.n_nodes();
        let mut slots = Vec::new();
        for i in 0..n {
            slots.push(Slot::Op(i));
            for j in 0..i {
                slots.push(Slot::Edge { to: i, from: j });
            }
        }
        Self {
            vocab: Vocab::new(Vec::new(), FIRST_OP + space.ops.len()),
            space,
            slots,
        }
    }

    /// The space.
    pub fn space(&self) -> &CellSpace {
        &self.space
    }

    /// The layout: what each body position holds.
    pub fn slots(&self) -> &[Slot] {
        &self.slots
    }

    /// Body positions of the inner nodes' operations (the slots a mutation changes).
    pub fn op_slots(&self) -> Vec<usize> {
        let n = self.space.n_nodes();
        (0..self.slots.len())
            .filter(|&p| matches!(self.slots[p], Slot::Op(i) if i > 0 && i < n - 1))
            .collect()
    }

    /// Body positions of the edge bits (the wiring).
    pub fn edge_slots(&self) -> Vec<usize> {
        (0..self.slots.len())
            .filter(|&p| matches!(self.slots[p], Slot::Edge { .. }))
            .collect()
    }

    /// Body length (tokens before `EOS`).
    pub fn body_len(&self) -> usize {
        self.slots.len()
    }

    /// Sequence length for block size `block`: body, `EOS`, padded to whole blocks.
    pub fn seq_len(&self, block: usize) -> usize {
        (self.body_len() + 1).div_ceil(block) * block
    }

    /// Token id of an edge bit.
    pub fn edge_id(&self, on: bool) -> u32 {
        self.vocab.regular_id(if on { EDGE_ON } else { EDGE_OFF })
    }

    /// Token id of node `node`'s label for operation `op` (ignored for input/output).
    pub fn label_id(&self, node: usize, op: u8) -> u32 {
        let n = self.space.n_nodes();
        if node == 0 {
            self.vocab.regular_id(NODE_INPUT)
        } else if node == n - 1 {
            self.vocab.regular_id(NODE_OUTPUT)
        } else {
            self.op_id(op)
        }
    }

    /// Token id of operation `op`.
    pub fn op_id(&self, op: u8) -> u32 {
        self.vocab.regular_id(FIRST_OP + op as usize)
    }

    /// Operation index of a token id, if it is an operation.
    pub fn op_of(&self, id: u32) -> Option<u8> {
        self.vocab
            .regular_index(id)
            .and_then(|i| i.checked_sub(FIRST_OP))
            .filter(|&o| o < self.space.ops.len())
            .map(|o| o as u8)
    }
}

impl Tokenizer for DagTokenizer {
    type Item = Cell;

    fn vocab(&self) -> &Vocab {
        &self.vocab
    }

    fn encode(&self, cell: &Cell) -> Result<Vec<u32>, TokenizerError> {
        self.space.check(cell).map_err(TokenizerError::Encode)?;
        let adj = self.space.adjacency(cell);
        Ok(self
            .slots
            .iter()
            .map(|s| match *s {
                Slot::Op(i) => {
                    let op = if i == 0 || i == self.space.n_nodes() - 1 {
                        0
                    } else {
                        cell.ops[i - 1]
                    };
                    self.label_id(i, op)
                }
                Slot::Edge { to, from } => self.edge_id(adj[to][from]),
            })
            .collect())
    }

    fn decode(&self, ids: &[u32]) -> Result<Cell, TokenizerError> {
        let body = until_end(ids);
        if body.len() != self.slots.len() {
            return Err(TokenizerError::Decode(format!(
                "{} tokens before the end, a cell has {}",
                body.len(),
                self.slots.len()
            )));
        }
        let n = self.space.n_nodes();
        let mut adj = vec![vec![false; n]; n];
        let mut ops = Vec::with_capacity(self.space.n_inner);
        for (pos, (&id, slot)) in body.iter().zip(&self.slots).enumerate() {
            let idx = self.vocab.check_regular(id, pos)?;
            match *slot {
                Slot::Op(i) if i == 0 || i == n - 1 => {
                    let want = if i == 0 { NODE_INPUT } else { NODE_OUTPUT };
                    if idx != want {
                        return Err(TokenizerError::Decode(format!(
                            "position {pos}: node {i} must be the {} node",
                            if i == 0 { "input" } else { "output" }
                        )));
                    }
                }
                Slot::Op(i) => ops.push(self.op_of(id).ok_or_else(|| {
                    TokenizerError::Decode(format!("position {pos}: node {i} needs an operation"))
                })?),
                Slot::Edge { to, from } => {
                    adj[to][from] = match idx {
                        EDGE_ON => true,
                        EDGE_OFF => false,
                        _ => {
                            return Err(TokenizerError::Decode(format!(
                                "position {pos}: edge {from}→{to} needs an edge bit"
                            )))
                        }
                    }
                }
            }
        }
        let structure = self
            .space
            .structures
            .iter()
            .position(|s| s.adj == adj)
            .ok_or_else(|| TokenizerError::Decode("wiring is not one of the space's".into()))?;
        let cell = Cell {
            ops,
            structure: structure as u16,
        };
        self.space.check(&cell).map_err(TokenizerError::Decode)?;
        Ok(cell)
    }

    fn metadata(&self) -> serde_json::Value {
        serde_json::json!({ "kind": "dag", "space": self.space, "vocab": self.vocab })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::space::NBG_OPS;
    use rand::SeedableRng;

    #[test]
    fn layout_lengths() {
        let t = DagTokenizer::new(CellSpace::nb201());
        assert_eq!(t.body_len(), 36);
        assert_eq!(t.seq_len(8), 40);
        let g = DagTokenizer::new(CellSpace::nas_bench_graph(
            &[[0, 0, 0, 0]],
            NBG_OPS.iter().map(|s| s.to_string()).collect(),
        ));
        assert_eq!(g.body_len(), 21);
    }

    #[test]
    fn decode_rejects_wrong_layouts() {
        let t = DagTokenizer::new(CellSpace::nb201());
        let mut rng = rand::rngs::StdRng::seed_from_u64(0);
        let cell = t.space().random_cell(&mut rng);
        let ids = t.encode(&cell).unwrap();
        assert_eq!(t.decode(&ids).unwrap(), cell);
        // An op where an edge bit belongs, a flipped fixed edge, a short body, a special.
        let mut bad = ids.clone();
        bad[2] = t.label_id(1, 0);
        assert!(t.decode(&bad).is_err());
        let mut bad = ids.clone();
        bad[2] = t.edge_id(false);
        assert!(t.decode(&bad).unwrap_err().to_string().contains("wiring"));
        assert!(t.decode(&ids[..30]).is_err());
        let mut bad = ids.clone();
        bad[5] = blockdiff_core::tokenizer::MASK;
        assert!(t.decode(&bad).is_err());
        let mut bad = ids;
        bad[0] = 999;
        assert!(t.decode(&bad).is_err());
    }
}
