//! A random order-2 Markov source with known entropy: the core's learning and speed benchmark.
//!
//! Every symbol `b` has a sparse successor set `S(b)` (an order-1 support graph, used by the
//! constraint tests); the next symbol after `(a, b)` is drawn from a distribution over `S(b)`
//! that depends on both `a` and `b` (Dirichlet(1) weights), so the source is truly order 2.
//! Sequences start from the stationary distribution over pairs, so the per-token entropy of a
//! length-`L` sequence is exactly `(H(pair) + (L − 2)·h) / L` with `h` the entropy rate.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

/// The source. Symbols are `0..n`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MarkovSource {
    n: usize,
    successors: Vec<Vec<u32>>,
    /// `probs[(a * n + b) * n + c] = p(c | a, b)`.
    probs: Vec<f64>,
    /// Stationary distribution over pairs `(a, b)`, index `a * n + b`.
    stationary: Vec<f64>,
}

/// Probability floor when scoring sequences that contain impossible transitions.
pub const NLL_FLOOR_PROB: f64 = 1e-4;

impl MarkovSource {
    /// A random source over `n` symbols with `degree` successors per symbol.
    pub fn random(n: usize, degree: usize, seed: u64) -> Self {
        assert!(n >= 2 && degree >= 1 && degree <= n);
        let mut rng = StdRng::seed_from_u64(seed);
        // A ring edge b → b+1 keeps the support graph strongly connected (so the pair chain
        // is irreducible and the stationary distribution unique).
        let successors: Vec<Vec<u32>> = (0..n)
            .map(|b| {
                let mut s = vec![((b + 1) % n) as u32];
                while s.len() < degree {
                    let c = rng.random_range(0..n) as u32;
                    if !s.contains(&c) {
                        s.push(c);
                    }
                }
                s.sort_unstable();
                s
            })
            .collect();
        let mut probs = vec![0.0; n * n * n];
        for a in 0..n {
            for b in 0..n {
                // Weights E² with E ~ Exp(1): peakier than Dirichlet(1), so some contexts are
                // near-deterministic and others uncertain, as in real sequence data.
                let w: Vec<f64> = successors[b]
                    .iter()
                    .map(|_| rng.random::<f64>().max(1e-12).ln().powi(2))
                    .collect();
                let s: f64 = w.iter().sum();
                for (&c, wc) in successors[b].iter().zip(&w) {
                    probs[(a * n + b) * n + c as usize] = wc / s;
                }
            }
        }
        let stationary = Self::stationary_pairs(n, &probs);
        Self {
            n,
            successors,
            probs,
            stationary,
        }
    }

    fn stationary_pairs(n: usize, probs: &[f64]) -> Vec<f64> {
        let mut pi = vec![1.0 / (n * n) as f64; n * n];
        for _ in 0..2000 {
            let mut next = vec![0.0; n * n];
            for a in 0..n {
                for b in 0..n {
                    let m = pi[a * n + b];
                    if m == 0.0 {
                        continue;
                    }
                    for c in 0..n {
                        next[b * n + c] += m * probs[(a * n + b) * n + c];
                    }
                }
            }
            // Damped update: the pair chain can be periodic.
            for (p, q) in pi.iter_mut().zip(next) {
                *p = 0.5 * *p + 0.5 * q;
            }
        }
        let s: f64 = pi.iter().sum();
        pi.iter_mut().for_each(|p| *p /= s);
        pi
    }

    /// Number of symbols.
    pub fn n_symbols(&self) -> usize {
        self.n
    }

    /// The order-1 support graph: `successors()[b]` are the symbols that can follow `b`.
    pub fn successors(&self) -> &[Vec<u32>] {
        &self.successors
    }

    /// `p(c | a, b)`.
    pub fn prob(&self, a: usize, b: usize, c: usize) -> f64 {
        self.probs[(a * self.n + b) * self.n + c]
    }

    /// Stationary probability of the pair `(a, b)`: the distribution of a sequence's first two
    /// symbols.
    pub fn pair_prob(&self, a: usize, b: usize) -> f64 {
        self.stationary[a * self.n + b]
    }

    /// Entropy rate `h` in nats per symbol.
    pub fn entropy_rate(&self) -> f64 {
        let n = self.n;
        let mut h = 0.0;
        for a in 0..n {
            for b in 0..n {
                let w = self.stationary[a * n + b];
                for c in 0..n {
                    let p = self.prob(a, b, c);
                    if p > 0.0 {
                        h -= w * p * p.ln();
                    }
                }
            }
        }
        h
    }

    /// Exact per-token entropy of a length-`len` sequence (nats): the NLL per token a perfect
    /// model reaches on this source's sequences.
    pub fn sequence_entropy_per_token(&self, len: usize) -> f64 {
        assert!(len >= 2);
        let h_pair: f64 = self
            .stationary
            .iter()
            .filter(|&&p| p > 0.0)
            .map(|&p| -p * p.ln())
            .sum();
        (h_pair + (len - 2) as f64 * self.entropy_rate()) / len as f64
    }

    /// Draws a sequence of `len` symbols.
    pub fn sample<R: Rng>(&self, len: usize, rng: &mut R) -> Vec<usize> {
        let n = self.n;
        let mut r: f64 = rng.random();
        let mut pair = n * n - 1;
        for (i, &p) in self.stationary.iter().enumerate() {
            if r < p {
                pair = i;
                break;
            }
            r -= p;
        }
        let mut out = vec![pair / n, pair % n];
        while out.len() < len {
            let (a, b) = (out[out.len() - 2], out[out.len() - 1]);
            let mut r: f64 = rng.random();
            let mut next = self.successors[b][0] as usize;
            for &c in &self.successors[b] {
                let p = self.prob(a, b, c as usize);
                if r < p {
                    next = c as usize;
                    break;
                }
                r -= p;
            }
            out.push(next);
        }
        out.truncate(len);
        out
    }

    /// NLL per token (nats) of a sequence under the source; impossible events are scored at
    /// [`NLL_FLOOR_PROB`] so that a bad sampler gets a large finite number.
    pub fn nll_per_token(&self, seq: &[usize]) -> f64 {
        if seq.len() < 2 {
            return -NLL_FLOOR_PROB.ln();
        }
        let n = self.n;
        let lp = |p: f64| p.max(NLL_FLOOR_PROB).ln();
        let mut s = lp(self.stationary[seq[0] * n + seq[1]]);
        for w in seq.windows(3) {
            s += lp(self.prob(w[0], w[1], w[2]));
        }
        -s / seq.len() as f64
    }

    /// Share of transitions in `seq` that are edges of the support graph.
    pub fn valid_transition_share(&self, seq: &[usize]) -> f64 {
        if seq.len() < 2 {
            return 1.0;
        }
        let ok = seq
            .windows(2)
            .filter(|w| self.successors[w[0]].contains(&(w[1] as u32)))
            .count();
        ok as f64 / (seq.len() - 1) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empirical_nll_matches_the_exact_entropy() {
        let src = MarkovSource::random(16, 4, 1);
        let mut rng = StdRng::seed_from_u64(2);
        let len = 64;
        let m = 4000;
        let mean: f64 = (0..m)
            .map(|_| src.nll_per_token(&src.sample(len, &mut rng)))
            .sum::<f64>()
            / m as f64;
        let exact = src.sequence_entropy_per_token(len);
        assert!(
            (mean - exact).abs() < 0.02,
            "empirical {mean} vs exact {exact}"
        );
        assert!(src.entropy_rate() < (4f64).ln());
    }
}
