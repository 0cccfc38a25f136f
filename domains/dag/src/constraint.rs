//! The valid-cell constraint for parallel decoding: the input and output labels at their
//! nodes, the space's operations at inner nodes (never all of them the forbidden uniform op),
//! edge bits that keep at least one of the space's wirings possible, then `EOS` and `PAD`.
//!
//! Exact for any commit order: a value is allowed only if some point of the space agrees with
//! it and with everything committed, so the rest can always be completed.

use blockdiff_core::constraint::Constraint;
use blockdiff_core::tokenizer::{EOS, MASK, PAD};

use crate::tokenizer::{DagTokenizer, Slot};

/// Constraint keeping samples inside a [`crate::space::CellSpace`].
#[derive(Clone, Debug)]
pub struct DagConstraint {
    tokenizer: DagTokenizer,
    /// Tokens before the generated sequence (prompt length).
    prompt_len: usize,
    /// Per wiring, the edge bit of every body position (`None` at op positions).
    patterns: Vec<Vec<Option<bool>>>,
    /// Body positions of the inner nodes' labels.
    op_positions: Vec<usize>,
}

impl DagConstraint {
    /// The constraint of `tokenizer`'s space for sequences after a `prompt_len`-token prompt.
    pub fn new(tokenizer: &DagTokenizer, prompt_len: usize) -> Self {
        let space = tokenizer.space();
        let n = space.n_nodes();
        let patterns = space
            .structures
            .iter()
            .map(|s| {
                tokenizer
                    .slots()
                    .iter()
                    .map(|slot| match *slot {
                        Slot::Op(_) => None,
                        Slot::Edge { to, from } => Some(s.adj[to][from]),
                    })
                    .collect()
            })
            .collect();
        let op_positions = tokenizer
            .slots()
            .iter()
            .enumerate()
            .filter(|(_, s)| matches!(s, Slot::Op(i) if *i > 0 && *i < n - 1))
            .map(|(p, _)| p)
            .collect();
        Self {
            tokenizer: tokenizer.clone(),
            prompt_len,
            patterns,
            op_positions,
        }
    }
}

impl Constraint for DagConstraint {
    fn restrict(&self, seq: &[u32], pos: usize, allowed: &mut [bool]) {
        let keep_only = |allowed: &mut [bool], ids: &[u32]| {
            for (t, a) in allowed.iter_mut().enumerate() {
                if !ids.contains(&(t as u32)) {
                    *a = false;
                }
            }
        };
        let Some(p) = pos.checked_sub(self.prompt_len) else {
            allowed.iter_mut().for_each(|a| *a = false);
            return;
        };
        let t = &self.tokenizer;
        let body = t.body_len();
        if p >= body {
            keep_only(allowed, &[if p == body { EOS } else { PAD }]);
            return;
        }
        let gen = &seq[self.prompt_len.min(seq.len())..];
        let at = |q: usize| gen.get(q).copied().unwrap_or(MASK);
        let n = t.space().n_nodes();
        match t.slots()[p] {
            Slot::Op(i) if i == 0 || i == n - 1 => keep_only(allowed, &[t.label_id(i, 0)]),
            Slot::Op(_) => {
                let space = t.space();
                let mut ids: Vec<u32> = (0..space.ops.len() as u8).map(|o| t.op_id(o)).collect();
                if let Some(u) = space.forbid_uniform {
                    let others_all_u = self
                        .op_positions
                        .iter()
                        .filter(|&&q| q != p)
                        .all(|&q| t.op_of(at(q)) == Some(u));
                    if others_all_u {
                        ids.retain(|&id| t.op_of(id) != Some(u));
                    }
                }
                keep_only(allowed, &ids);
            }
            Slot::Edge { .. } => {
                let mut ok = [false; 2];
                for pat in &self.patterns {
                    let consistent = pat.iter().enumerate().all(|(q, bit)| match bit {
                        Some(b) if q != p => {
                            let tok = at(q);
                            tok == MASK || tok == t.edge_id(*b)
                        }
                        _ => true,
                    });
                    if consistent {
                        ok[usize::from(pat[p].unwrap_or(false))] = true;
                    }
                }
                let ids: Vec<u32> = [false, true]
                    .into_iter()
                    .filter(|&b| ok[usize::from(b)])
                    .map(|b| t.edge_id(b))
                    .collect();
                keep_only(allowed, &ids);
            }
        }
    }
}
