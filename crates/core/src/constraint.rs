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

    /// Whether the constraint can ever leave a position a single allowed token (the sampler
    /// then looks for such positions to commit without a model call). The default says yes;
    /// answering no only skips that scan, it never changes what is allowed.
    fn may_force(&self) -> bool {
        true
    }
}

/// No constraint at all.
#[derive(Clone, Copy, Debug, Default)]
pub struct Unconstrained;

impl Constraint for Unconstrained {
    fn restrict(&self, _seq: &[u32], _pos: usize, _allowed: &mut [bool]) {}

    fn may_force(&self) -> bool {
        false
    }
}

/// In-filling on top of another constraint: positions with a template token keep only that
/// token, and listed tokens are taken out at their positions (so an in-fill can be told to
/// differ from the sequence it starts from). Where the template or an exclusion contradicts
/// `inner` (it would leave nothing allowed), `inner`'s set stands: the sample stays valid and
/// only the template gives way.
#[derive(Clone, Debug)]
pub struct TemplateConstraint<C> {
    inner: C,
    /// Position of template slot 0 in the full sequence (the prompt length).
    offset: usize,
    template: Vec<Option<u32>>,
    exclude: Vec<(usize, u32)>,
}

impl<C: Constraint> TemplateConstraint<C> {
    /// `template[i]` fixes position `offset + i` (`None`: free); `exclude` lists
    /// `(template slot, token)` pairs that free slots must not take.
    pub fn new(
        inner: C,
        offset: usize,
        template: Vec<Option<u32>>,
        exclude: Vec<(usize, u32)>,
    ) -> Self {
        Self {
            inner,
            offset,
            template,
            exclude,
        }
    }
}

impl<C: Constraint> Constraint for TemplateConstraint<C> {
    fn restrict(&self, seq: &[u32], pos: usize, allowed: &mut [bool]) {
        // `inner` sees the template as already committed, also in blocks not yet reached, so a
        // free position is only given values that the template's later tokens can still
        // follow (exact in any commit order).
        let mut view = seq.to_vec();
        let last = self.template.iter().rposition(Option::is_some);
        if let Some(last) = last {
            if self.offset + last >= view.len() {
                view.resize(self.offset + last + 1, MASK);
            }
        }
        for (i, t) in self.template.iter().enumerate() {
            if let (Some(t), Some(v)) = (t, view.get_mut(self.offset + i)) {
                if *v == MASK && self.offset + i != pos {
                    *v = *t;
                }
            }
        }
        self.inner.restrict(&view, pos, allowed);
        let Some(slot) = pos.checked_sub(self.offset) else {
            return;
        };
        match self.template.get(slot).copied().flatten() {
            Some(t) if allowed.get(t as usize) == Some(&true) => {
                allowed.iter_mut().for_each(|a| *a = false);
                allowed[t as usize] = true;
            }
            _ => {
                let out: Vec<usize> = self
                    .exclude
                    .iter()
                    .filter(|&&(s, t)| s == slot && allowed.get(t as usize) == Some(&true))
                    .map(|&(_, t)| t as usize)
                    .collect();
                let left = allowed.iter().filter(|&&a| a).count();
                if !out.is_empty() && out.len() < left {
                    out.into_iter().for_each(|t| allowed[t] = false);
                }
            }
        }
    }
}

/// Memory the hop-distance tables of [`SuccessorConstraint::hops_to`] may hold.
pub const HOP_CACHE_BYTES: usize = 256 << 20;

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
    // Shared by clones: they have the same graph.
    hops: std::sync::Arc<
        std::sync::RwLock<std::collections::HashMap<usize, std::sync::Arc<Vec<usize>>>>,
    >,
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
            hops: Default::default(),
        }
    }

    /// The node (regular-token index) of token `id`, if it is one.
    pub fn node_of(&self, id: u32) -> Option<usize> {
        self.node(id)
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
        Self::reach_avoiding(adj, start, steps, None)
    }

    /// Like [`Self::reach`], but the walk never continues *from* `avoid` after its first step
    /// (`avoid` may be the start or the end point, never an intermediate node).
    fn reach_avoiding(
        adj: &[Vec<u32>],
        start: usize,
        steps: usize,
        avoid: Option<usize>,
    ) -> Vec<bool> {
        Self::walk(adj, start, steps, avoid, None).0
    }

    /// Hop distance from every node to `target` along the edges (`usize::MAX` = unreachable),
    /// cached per target.
    pub fn hops_to(&self, target: usize) -> std::sync::Arc<Vec<usize>> {
        if let Some(h) = self.hops.read().ok().and_then(|m| m.get(&target).cloned()) {
            return h;
        }
        let h = std::sync::Arc::new(self.compute_hops(target));
        if let Ok(mut m) = self.hops.write() {
            // Bounded: one table per destination in use; clear rather than grow without limit.
            if m.len() >= self.hop_cache_tables() {
                m.clear();
            }
            m.insert(target, h.clone());
        }
        h
    }

    /// How many hop tables [`Self::hops_to`] keeps: as many as fit in [`HOP_CACHE_BYTES`]
    /// (a table is one `usize` per node), at least 16 and at most 4,096. A 40,000-segment city
    /// keeps 838 tables (256 MiB) instead of 4,096 (1.3 GB).
    pub fn hop_cache_tables(&self) -> usize {
        let table = self.succ.len().max(1) * std::mem::size_of::<usize>();
        (HOP_CACHE_BYTES / table).clamp(16, 4096)
    }

    #[cfg(test)]
    fn hop_cache_len(&self) -> usize {
        self.hops.read().map_or(0, |m| m.len())
    }

    fn compute_hops(&self, target: usize) -> Vec<usize> {
        let mut dist = vec![usize::MAX; self.succ.len()];
        if target >= dist.len() {
            return dist;
        }
        dist[target] = 0;
        let mut queue = std::collections::VecDeque::from([target]);
        while let Some(c) = queue.pop_front() {
            for &p in &self.pred[c] {
                if dist[p as usize] == usize::MAX {
                    dist[p as usize] = dist[c] + 1;
                    queue.push_back(p as usize);
                }
            }
        }
        dist
    }

    /// [`Constraint::restrict`] for sequences that must stop at a destination: the regular
    /// token `terminal` appears exactly once, as the last token before `EOS` (then `PAD`), and
    /// `EOS` may only follow it. With `horizon` (the sequence's length limit, prompt included)
    /// a node is only allowed where `terminal` is still reachable before the limit, so every
    /// sequence reaches its destination. Exact for parallel decoding like [`Self::restrict`]:
    /// a token is allowed iff some valid completion agrees with it and the committed tokens.
    pub fn restrict_to_terminal(
        &self,
        seq: &[u32],
        pos: usize,
        allowed: &mut [bool],
        terminal: u32,
        horizon: Option<usize>,
    ) {
        let Some(d) = self.node(terminal) else {
            return self.restrict(seq, pos, allowed);
        };
        let only = |allowed: &mut [bool], tok: u32| {
            allowed
                .iter_mut()
                .enumerate()
                .for_each(|(t, a)| *a &= t as u32 == tok);
        };
        let left = (0..pos).rev().find(|&i| seq[i] != MASK);
        let right = (pos + 1..seq.len()).find(|&j| seq[j] != MASK);
        let left_tok = left.map(|i| seq[i]);
        if matches!(left_tok, Some(EOS) | Some(PAD)) {
            return only(allowed, PAD);
        }
        if left_tok == Some(terminal) {
            // The destination is committed: EOS right after it, padding beyond.
            let i = left.expect("left token implies left position");
            return only(allowed, if pos == i + 1 { EOS } else { PAD });
        }
        let n = self.succ.len();
        let left_node = left.and_then(|i| left_tok.and_then(|t| self.node(t)).map(|a| (i, a)));
        // Walk sets from the left anchor, step by step (walks never pass through `d`).
        let steps = left_node.map_or(0, |(i, _)| pos - i);
        let walked = left_node.map(|(_, a)| Self::walk(&self.succ, a, steps, Some(d), Some(d)));
        let d_at = |k: usize| walked.as_ref().is_none_or(|(_, at)| at[k]);
        // EOS here: the destination at pos - 1. PAD here: the destination earlier still. Either
        // way the destination must sit before the horizon (the last position it may take is
        // `limit - 1`), which matters once the horizon is shorter than the sequence.
        let gap = left_node.map_or(usize::MAX, |(i, _)| pos - i);
        let before_limit =
            |k: usize| horizon.is_none_or(|limit| left_node.is_some_and(|(i, _)| i + k < limit));
        let eos_here = gap >= 2 && d_at(gap - 1) && before_limit(gap - 1);
        let pad_here = gap >= 3 && (1..=gap - 2).any(|k| d_at(k) && before_limit(k));
        let mut ok = match walked {
            Some((end, _)) => end,
            None => vec![true; n],
        };
        let (mut eos_ok, mut pad_ok) = (false, false);
        let hops = horizon
            .is_some()
            .then(|| self.hops_to(d))
            .or_else(|| matches!(right.map(|j| seq[j]), Some(PAD)).then(|| self.hops_to(d)));
        match right.map(|j| (j, seq[j])) {
            None => {
                eos_ok = eos_here;
                pad_ok = pad_here;
            }
            Some((j, EOS)) => {
                if j == pos + 1 {
                    ok.iter_mut().enumerate().for_each(|(k, o)| *o &= k == d);
                } else {
                    let r = Self::reach_avoiding(&self.pred, d, j - 1 - pos, Some(d));
                    ok.iter_mut().zip(r).for_each(|(o, r)| *o &= r);
                    ok[d] = false;
                }
            }
            Some((j, PAD)) => {
                // The destination must come at j - 2 at the latest.
                let room = (j as isize - 2 - pos as isize).max(-1);
                let h = hops.as_ref().expect("computed for a PAD anchor");
                ok.iter_mut()
                    .zip(h.iter())
                    .for_each(|(o, &h)| *o &= room >= 0 && h <= room as usize);
                eos_ok = eos_here;
                pad_ok = pad_here;
            }
            Some((j, t)) => match self.node(t) {
                Some(c) => {
                    let r = Self::reach_avoiding(&self.pred, c, j - pos, Some(d));
                    ok.iter_mut().zip(r).for_each(|(o, r)| *o &= r);
                    ok[d] = false;
                }
                None => ok.iter_mut().for_each(|o| *o = false),
            },
        }
        if let (Some(limit), Some(h)) = (horizon, hops.as_ref()) {
            // The destination must fit before the limit; at or past the limit no node fits (a
            // saturating room of 0 there would let the destination itself in, and then leave
            // the positions before it with nothing allowed).
            match limit.checked_sub(1 + pos) {
                Some(room) => ok
                    .iter_mut()
                    .zip(h.iter())
                    .for_each(|(o, &h)| *o &= h <= room),
                None => ok.iter_mut().for_each(|o| *o = false),
            }
        }
        for (t, a) in allowed.iter_mut().enumerate() {
            let t = t as u32;
            *a &= match self.node(t) {
                Some(k) => ok[k],
                None => (eos_ok && t == EOS) || (pad_ok && t == PAD),
            };
        }
    }

    /// Walks from `start` along `adj` for exactly `steps` edges, never continuing from `avoid`
    /// after the first step. Returns where the walks can end (one flag per node) and, for each
    /// `k` in `0..=steps`, whether `watch` is reachable after exactly `k` edges.
    ///
    /// Frontiers are sparse node lists deduplicated by a per-step stamp, so a step costs the
    /// frontier's out-edges: road-graph frontiers stay small, and there is no sorting (sorted
    /// sets made this the sampler's most expensive part once blocks reach 56 positions).
    fn walk(
        adj: &[Vec<u32>],
        start: usize,
        steps: usize,
        avoid: Option<usize>,
        watch: Option<usize>,
    ) -> (Vec<bool>, Vec<bool>) {
        let mut stamp = vec![0u32; adj.len()];
        let mut watched = Vec::with_capacity(steps + 1);
        watched.push(watch == Some(start));
        let mut cur = vec![start as u32];
        let mut next: Vec<u32> = Vec::new();
        for step in 0..steps {
            let gen = step as u32 + 1;
            next.clear();
            for &i in &cur {
                if step > 0 && Some(i as usize) == avoid {
                    continue;
                }
                for &j in &adj[i as usize] {
                    if stamp[j as usize] != gen {
                        stamp[j as usize] = gen;
                        next.push(j);
                    }
                }
            }
            watched.push(watch.is_some_and(|w| stamp[w] == gen));
            std::mem::swap(&mut cur, &mut next);
        }
        let mut end = vec![false; adj.len()];
        for i in cur {
            end[i as usize] = true;
        }
        (end, watched)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokenizer::Vocab;

    #[test]
    fn hop_cache_stays_within_its_byte_bound() {
        // A ring big enough that the bound allows fewer tables than targets queried.
        let n = HOP_CACHE_BYTES / std::mem::size_of::<usize>() / 20;
        let succ: Vec<Vec<u32>> = (0..n).map(|i| vec![((i + 1) % n) as u32]).collect();
        let c = SuccessorConstraint::new(&Vocab::new(Vec::new(), n), succ, false);
        let limit = c.hop_cache_tables();
        assert!((16..=4096).contains(&limit) && limit < 40, "limit {limit}");
        for t in 0..limit + 5 {
            let h = c.hops_to(t);
            assert_eq!(h[t], 0);
            assert_eq!(
                h[(t + 1) % n],
                n - 1,
                "one step past the target is a full lap away"
            );
            assert!(c.hop_cache_len() <= limit);
        }
    }
}
