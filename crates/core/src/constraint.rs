//! Constraints: which tokens may be placed at a masked position given what is committed.
//!
//! The sampler turns the answer into a logit mask *before* confidences are computed, and when
//! several tokens are committed in one step it re-asks for each one against the tokens
//! committed just before it, so a committed token is always valid.

use crate::tokenizer::{Vocab, EOS, MASK, PAD};

/// A constraint on generated sequences. Implementations must be deterministic.
///
/// Contract for parallel decoding: a token left allowed at `pos` must keep the sequence
/// completable — after committing it, every other masked position must still have at least one
/// allowed token. Constraints that only look at immediate neighbours can violate this when a
/// gap of two or more masked positions sits between committed tokens; see
/// [`SuccessorConstraint`] for one that reasons about whole gaps.
pub trait Constraint: Send + Sync {
    /// Narrows `allowed` (indexed by token id, arriving with only the model's never-generated
    /// ids `MASK`/`BOS` false) to the tokens valid at `pos`. `seq` is the sample's whole
    /// sequence so far — prompt, finished blocks, the current block — with [`MASK`] at
    /// undecided positions; it ends with the current block. Only ever clear entries.
    fn restrict(&self, seq: &[u32], pos: usize, allowed: &mut [bool]);

    /// Whether `token` is valid at `pos` in a vocabulary of `vocab_size` ids. The default calls
    /// [`Self::restrict`]; override it when a direct check is cheaper.
    fn is_allowed(&self, seq: &[u32], pos: usize, token: u32, vocab_size: usize) -> bool {
        let mut allowed = vec![true; vocab_size.max(token as usize + 1)];
        self.restrict(seq, pos, &mut allowed);
        allowed[token as usize]
    }
}

/// No constraint at all.
#[derive(Clone, Copy, Debug, Default)]
pub struct Unconstrained;

impl Constraint for Unconstrained {
    fn restrict(&self, _seq: &[u32], _pos: usize, _allowed: &mut [bool]) {}
}

/// Consecutive regular tokens must follow the edges of a directed graph over the regular
/// tokens (a road network's segment successors, a Markov support...).
///
/// Exact for parallel decoding: a node is allowed at `pos` only if a walk of the right length
/// connects it to the nearest committed node on each side, so the gap between any two committed
/// nodes can always be filled and no commit order leads to a dead end. With `allow_end`, a
/// sequence may stop (`EOS`, then `PAD`) after any node; otherwise `EOS`/`PAD` are never allowed.
#[derive(Clone, Debug)]
pub struct SuccessorConstraint {
    offset: u32,
    succ: Vec<Vec<u32>>,
    pred: Vec<Vec<u32>>,
    allow_end: bool,
}

impl SuccessorConstraint {
    /// `successors[i]` lists the regular-token indices that may follow regular token `i`.
    /// Indices out of range are ignored.
    pub fn new(vocab: &Vocab, successors: Vec<Vec<u32>>, allow_end: bool) -> Self {
        let n = vocab.n_regular();
        let mut succ = successors;
        succ.resize(n, Vec::new());
        let mut pred = vec![Vec::new(); n];
        for (i, s) in succ.iter_mut().enumerate() {
            s.retain(|&j| (j as usize) < n);
            s.sort_unstable();
            s.dedup();
            for &j in s.iter() {
                pred[j as usize].push(i as u32);
            }
        }
        Self {
            offset: vocab.regular_offset(),
            succ,
            pred,
            allow_end,
        }
    }

    /// Whether regular token index `j` may follow `i`.
    pub fn is_edge(&self, i: usize, j: usize) -> bool {
        self.succ
            .get(i)
            .is_some_and(|s| s.binary_search(&(j as u32)).is_ok())
    }

    fn node(&self, id: u32) -> Option<usize> {
        (id >= self.offset && ((id - self.offset) as usize) < self.succ.len())
            .then(|| (id - self.offset) as usize)
    }

    /// Nodes reachable from `start` by walks of exactly `steps` edges along `adj`.
    fn reach(adj: &[Vec<u32>], start: usize, steps: usize) -> Vec<bool> {
        let n = adj.len();
        let mut cur = vec![false; n];
        cur[start] = true;
        for _ in 0..steps {
            let mut next = vec![false; n];
            for (i, _) in cur.iter().enumerate().filter(|(_, &c)| c) {
                for &j in &adj[i] {
                    next[j as usize] = true;
                }
            }
            cur = next;
        }
        cur
    }
}

impl Constraint for SuccessorConstraint {
    fn restrict(&self, seq: &[u32], pos: usize, allowed: &mut [bool]) {
        let left = (0..pos).rev().find(|&i| seq[i] != MASK);
        let right = (pos + 1..seq.len()).find(|&j| seq[j] != MASK);
        let left_tok = left.map(|i| seq[i]);
        // Once the sequence has ended, only padding follows.
        if matches!(left_tok, Some(EOS) | Some(PAD)) {
            allowed
                .iter_mut()
                .enumerate()
                .for_each(|(t, a)| *a &= t as u32 == PAD);
            return;
        }
        let right_node = right.and_then(|j| self.node(seq[j]).map(|n| (j, n)));
        let mut ok = vec![true; self.succ.len()];
        if let (Some(i), Some(a)) = (left, left_tok.and_then(|t| self.node(t))) {
            let r = Self::reach(&self.succ, a, pos - i);
            ok.iter_mut().zip(r).for_each(|(o, r)| *o &= r);
        }
        if let Some((j, c)) = right_node {
            let r = Self::reach(&self.pred, c, j - pos);
            ok.iter_mut().zip(r).for_each(|(o, r)| *o &= r);
        }
        // A left anchor that is BOS or another special (a prompt marker) does not restrict.
        let end_ok = self.allow_end && right_node.is_none();
        for (t, a) in allowed.iter_mut().enumerate() {
            let t = t as u32;
            *a &= match self.node(t) {
                Some(n) => ok[n],
                None => end_ok && t == EOS,
            };
        }
    }
}
