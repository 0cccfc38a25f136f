//! Oracle decoding on the core Markov task: every commit policy driven by the source's *exact*
//! conditionals instead of a model, so what it shows is the best any model could reach with that
//! policy. `cargo run --release --example oracle_decoding [SEQUENCES]`.
//!
//! Each model call is replaced by exact forward-backward marginals of the block's masked positions
//! given everything committed so far (earlier blocks and this block's committed tokens; later
//! blocks are unseen, as under the block-causal mask). Policies that commit several positions in
//! one call draw them independently from those marginals, which is where quality is lost: the
//! loss is the dependence between the positions committed together. The table gives model calls,
//! tokens per call and the samples' NLL under the source against its entropy, with the core
//! bench's quality band (5% of the entropy).

use blockdiff_core::bench::MarkovTask;
use blockdiff_core::sample::dilated_rank;
use blockdiff_core::synthetic::MarkovSource;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// A commit policy run against the oracle.
#[derive(Clone, Copy, Debug)]
enum Policy {
    /// Block size 1: one call per token.
    Ar,
    /// The leftmost masked position of the block (AR order inside block calls).
    LeftToRight,
    /// Fast-dLLM: every drawn token with probability ≥ tau, at least the most confident.
    Threshold(f64),
    /// The k most confident drawn tokens.
    TopK(usize),
    /// One uniformly chosen masked position (exact).
    FirstHitting,
    /// A fixed spread-out order (bit-reversed positions), `g` positions per call.
    Dilated(usize),
    /// Lowest-entropy positions first while their entropies sum to ≤ gamma (at least one).
    EntropyBounded(f64),
    /// Self-speculation: draft the masked run from the marginals, verify against the exact AR
    /// conditionals (accept with min(1, q/p), resample the first rejection from (q − p)+);
    /// two calls per step.
    Speculative,
}

impl Policy {
    fn name(&self) -> String {
        match self {
            Policy::Ar => "ar (block 1)".into(),
            Policy::LeftToRight => "left-to-right".into(),
            Policy::Threshold(t) => format!("threshold({t})"),
            Policy::TopK(k) => format!("top-k({k})"),
            Policy::FirstHitting => "first-hitting".into(),
            Policy::Dilated(g) => format!("dilated({g}/call)"),
            Policy::EntropyBounded(g) => format!("entropy-bounded({g})"),
            Policy::Speculative => "speculative (2 calls/step)".into(),
        }
    }
}

/// Exact marginals of positions `[start, end)` given the known tokens of `seq[..end]`
/// (`None` = masked), with nothing seen after `end`. Row `t - start` is `p(x_t = · | known)`.
fn marginals(src: &MarkovSource, seq: &[Option<usize>], start: usize, end: usize) -> Vec<Vec<f64>> {
    let n = src.n_symbols();
    let ok = |t: usize, c: usize| seq[t].is_none_or(|v| v == c);
    let succ = src.successors();
    // alpha[t][(a, b)] ∝ p(x_{t-1} = a, x_t = b, known up to t), for t ≥ 1.
    let mut alpha = vec![vec![0.0f64; n * n]; end.max(2)];
    for a in 0..n {
        for b in 0..n {
            if ok(0, a) && ok(1, b) {
                alpha[1][a * n + b] = src.pair_prob(a, b);
            }
        }
    }
    for t in 2..end {
        let (done, rest) = alpha.split_at_mut(t);
        let (prev, cur) = (&done[t - 1], &mut rest[0]);
        for (ab, &w) in prev.iter().enumerate() {
            if w == 0.0 {
                continue;
            }
            let (a, b) = (ab / n, ab % n);
            for &c in &succ[b] {
                let c = c as usize;
                if ok(t, c) {
                    cur[b * n + c] += w * src.prob(a, b, c);
                }
            }
        }
        let s: f64 = cur.iter().sum();
        cur.iter_mut().for_each(|x| *x /= s);
    }
    // beta[t][(a, b)] = p(known in (t, end) | x_{t-1} = a, x_t = b).
    let first = start.max(1);
    let mut beta = vec![vec![1.0f64; n * n]; end.max(2)];
    for t in (first..end.saturating_sub(1)).rev() {
        let (lo, hi) = beta.split_at_mut(t + 1);
        let (cur, next) = (&mut lo[t], &hi[0]);
        for (ab, slot) in cur.iter_mut().enumerate() {
            let (a, b) = (ab / n, ab % n);
            *slot = succ[b]
                .iter()
                .map(|&c| c as usize)
                .filter(|&c| ok(t + 1, c))
                .map(|c| src.prob(a, b, c) * next[b * n + c])
                .sum();
        }
    }
    (start..end)
        .map(|t| {
            let mut m = vec![0.0; n];
            if t == 0 {
                for (ab, (&x, &y)) in alpha[1].iter().zip(&beta[1]).enumerate() {
                    m[ab / n] += x * y;
                }
            } else {
                for (ab, (&x, &y)) in alpha[t].iter().zip(&beta[t]).enumerate() {
                    m[ab % n] += x * y;
                }
            }
            let s: f64 = m.iter().sum();
            m.iter_mut().for_each(|x| *x /= s);
            m
        })
        .collect()
}

fn draw(p: &[f64], rng: &mut StdRng) -> usize {
    let mut r: f64 = rng.random();
    for (i, &x) in p.iter().enumerate() {
        if r < x {
            return i;
        }
        r -= x;
    }
    p.iter().rposition(|&x| x > 0.0).unwrap_or(0)
}

fn entropy(p: &[f64]) -> f64 {
    p.iter().filter(|&&x| x > 0.0).map(|&x| -x * x.ln()).sum()
}

/// `0..b` in the sampler's dilated order, so consecutive entries lie far apart.
fn bit_reversed(b: usize) -> Vec<usize> {
    let mut v: Vec<usize> = (0..b).collect();
    v.sort_by_key(|&i| dilated_rank(i, b.next_power_of_two()));
    v
}

/// Generates one sequence; returns it with its model-call count.
fn generate(
    src: &MarkovSource,
    len: usize,
    block: usize,
    policy: Policy,
    rng: &mut StdRng,
) -> (Vec<usize>, usize) {
    let block = if matches!(policy, Policy::Ar) {
        1
    } else {
        block
    };
    let order = bit_reversed(block);
    let mut seq: Vec<Option<usize>> = vec![None; len];
    let mut calls = 0;
    for start in (0..len).step_by(block) {
        let end = (start + block).min(len);
        while seq[start..end].iter().any(Option::is_none) {
            let m = marginals(src, &seq, start, end);
            calls += 1;
            let masked: Vec<usize> = (start..end).filter(|&t| seq[t].is_none()).collect();
            let drawn: Vec<(usize, usize, f64)> = masked
                .iter()
                .map(|&t| {
                    let v = draw(&m[t - start], rng);
                    (t, v, m[t - start][v])
                })
                .collect();
            let mut by_conf = drawn.clone();
            by_conf.sort_by(|x, y| y.2.total_cmp(&x.2));
            let commit: Vec<(usize, usize)> = match policy {
                Policy::Ar | Policy::LeftToRight => vec![(drawn[0].0, drawn[0].1)],
                Policy::Threshold(tau) => {
                    let mut c: Vec<(usize, usize)> = drawn
                        .iter()
                        .filter(|d| d.2 >= tau)
                        .map(|d| (d.0, d.1))
                        .collect();
                    if c.is_empty() {
                        c.push((by_conf[0].0, by_conf[0].1));
                    }
                    c
                }
                Policy::TopK(k) => by_conf.iter().take(k).map(|d| (d.0, d.1)).collect(),
                Policy::FirstHitting => {
                    let d = drawn[rng.random_range(0..drawn.len())];
                    vec![(d.0, d.1)]
                }
                Policy::Dilated(g) => order
                    .iter()
                    .map(|&i| start + i)
                    .filter(|&t| t < end && seq[t].is_none())
                    .take(g)
                    .map(|t| drawn.iter().find(|d| d.0 == t).map(|d| (d.0, d.1)).unwrap())
                    .collect(),
                Policy::EntropyBounded(gamma) => {
                    let mut by_h: Vec<(f64, usize, usize)> = drawn
                        .iter()
                        .map(|d| (entropy(&m[d.0 - start]), d.0, d.1))
                        .collect();
                    by_h.sort_by(|x, y| x.0.total_cmp(&y.0));
                    let mut sum = 0.0;
                    let mut c = Vec::new();
                    for (h, t, v) in by_h {
                        if !c.is_empty() && sum + h > gamma {
                            break;
                        }
                        sum += h;
                        c.push((t, v));
                    }
                    c
                }
                Policy::Speculative => {
                    calls += 1; // the verifying call
                    let mut c = Vec::new();
                    for &(t, d, p) in &drawn {
                        // AR conditional given everything before t (committed or just accepted).
                        let prev = |k: usize| {
                            c.iter()
                                .find(|x: &&(usize, usize)| x.0 == k)
                                .map(|x| x.1)
                                .or(seq[k])
                        };
                        let q: Vec<f64> = if t < 2 {
                            // The first pair: the stationary law (t = 0), or its conditional.
                            let n = src.n_symbols();
                            let mut q: Vec<f64> = (0..n)
                                .map(|v| {
                                    if t == 0 {
                                        (0..n).map(|b| src.pair_prob(v, b)).sum()
                                    } else {
                                        src.pair_prob(prev(0).expect("x0 known"), v)
                                    }
                                })
                                .collect();
                            let s: f64 = q.iter().sum();
                            q.iter_mut().for_each(|x| *x /= s);
                            q
                        } else {
                            let (a, b) = (prev(t - 2).expect("known"), prev(t - 1).expect("known"));
                            (0..src.n_symbols()).map(|v| src.prob(a, b, v)).collect()
                        };
                        if rng.random::<f64>() < (q[d] / p).min(1.0) {
                            c.push((t, d));
                            continue;
                        }
                        let pm = &m[t - start];
                        let resid: Vec<f64> =
                            q.iter().zip(pm).map(|(q, p)| (q - p).max(0.0)).collect();
                        let s: f64 = resid.iter().sum();
                        let v = if s > 0.0 {
                            draw(&resid.iter().map(|x| x / s).collect::<Vec<_>>(), rng)
                        } else {
                            draw(&q, rng)
                        };
                        c.push((t, v));
                        break;
                    }
                    c
                }
            };
            for (t, v) in commit {
                seq[t] = Some(v);
            }
        }
    }
    (
        seq.into_iter().map(|v| v.expect("all committed")).collect(),
        calls,
    )
}

fn main() {
    let sequences: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(400);
    let task = MarkovTask::full();
    let src = task.source();
    let len = task.seq_len;
    let h = src.sequence_entropy_per_token(len);
    let tol = 0.05 * h;
    println!(
        "oracle decoding: {} symbols, degree {}, length {len}; entropy {h:.4} nats/token, quality band ±{tol:.4}; {sequences} sequences per row",
        task.n_symbols, task.degree
    );
    for block in [8usize, 16, 32, 64] {
        println!("\n| block {block}: policy | calls / sequence | tokens / call | sample NLL | NLL − entropy | in band |\n|---|---|---|---|---|---|");
        let mut policies = vec![Policy::Ar, Policy::LeftToRight, Policy::FirstHitting];
        if block <= 16 {
            policies.extend([0.9, 0.7, 0.5, 0.3].map(Policy::Threshold));
            policies.extend([2, 4].map(Policy::TopK));
            policies.extend([0.1, 1.0].map(Policy::EntropyBounded));
            policies.push(Policy::Speculative);
        }
        // Dilated with the committed positions 8, 4 or 2 apart in every call.
        policies.extend(
            [block / 8, block / 4, block / 2]
                .into_iter()
                .filter(|&g| g >= 1)
                .map(Policy::Dilated),
        );
        for policy in policies {
            let mut rng = StdRng::seed_from_u64(7);
            let (mut nll, mut calls) = (0.0, 0usize);
            for _ in 0..sequences {
                let (seq, c) = generate(&src, len, block, policy, &mut rng);
                nll += src.nll_per_token(&seq);
                calls += c;
            }
            let nll = nll / sequences as f64;
            let calls = calls as f64 / sequences as f64;
            println!(
                "| {} | {calls:.1} | {:.2} | {nll:.4} | {:+.4} | {} |",
                policy.name(),
                len as f64 / calls,
                nll - h,
                if (nll - h).abs() <= tol { "yes" } else { "no" }
            );
        }
    }
}
