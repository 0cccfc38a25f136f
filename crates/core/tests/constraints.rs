//! A non-trivial constraint (successors in a random sparse graph) holds in 100% of 1,000
//! samples under every commit policy (speculative, deferred, uniform, ARPC and FlashBlock
//! included), batch > 1, block size > 1, with and without a cache.
//! An untrained model is the hardest case: its predictions ignore the graph entirely.

use blockdiff_core::burn::prelude::Backend;
use blockdiff_core::condition::Conditioning;
use blockdiff_core::constraint::{Constraint, SuccessorConstraint};
use blockdiff_core::model::{BlockDiffusionConfig, BlockDiffusionModel};
use blockdiff_core::sample::{sample, CommitPolicy, Corrector, SamplerConfig, SpecRouting};
use blockdiff_core::synthetic::MarkovSource;
use blockdiff_core::tokenizer::{SymbolTokenizer, Tokenizer, EOS, MASK, PAD};
use blockdiff_core::CpuBackend as B;

fn graph() -> (SymbolTokenizer, Vec<Vec<u32>>) {
    // 32 symbols, 3 successors each: a random sparse graph (plus a ring edge for connectivity).
    let src = MarkovSource::random(32, 3, 9);
    (SymbolTokenizer::new(32), src.successors().to_vec())
}

/// The graph and an untrained one-layer model over its vocabulary, seeded.
fn untrained(
    seed: u64,
) -> (
    SymbolTokenizer,
    Vec<Vec<u32>>,
    BlockDiffusionConfig,
    BlockDiffusionModel<B>,
) {
    B::seed(&Default::default(), seed);
    let (tok, succ) = graph();
    let cfg = BlockDiffusionConfig::new(tok.vocab().size())
        .with_d_model(32)
        .with_n_layers(1);
    let model = cfg.init::<B>(&Default::default());
    (tok, succ, cfg, model)
}

/// Every policy, as (policy, corrector, FlashBlock, must commit in parallel somewhere).
fn variants() -> Vec<(CommitPolicy, Option<Corrector>, bool, bool)> {
    let arpc = Some(Corrector::Arpc {
        remask: 3,
        rounds: 2,
        max_prob: 0.9,
    });
    vec![
        (CommitPolicy::TopK { k: 3 }, None, false, true),
        // low threshold: many parallel commits per step
        (CommitPolicy::Threshold { tau: 0.05 }, None, false, true),
        (
            CommitPolicy::DynamicFallback { tau: 0.1, k: 2 },
            None,
            false,
            true,
        ),
        (CommitPolicy::FirstHitting, None, false, false),
        (
            CommitPolicy::Speculative {
                routing: SpecRouting::Always,
            },
            None,
            false,
            false,
        ),
        (
            CommitPolicy::Speculative {
                routing: SpecRouting::Score {
                    cost: 1.0,
                    dynamic: true,
                    tau: 0.05,
                },
            },
            None,
            true,
            false,
        ),
        (
            // E[K] of a constrained untrained draft is about 1–3 here, so the score crosses
            // the band both ways and both modes run.
            CommitPolicy::Speculative {
                routing: SpecRouting::Hysteresis {
                    cost: 1.0,
                    on: 1.2,
                    off: 0.9,
                    tau: 0.05,
                },
            },
            None,
            false,
            false,
        ),
        (
            CommitPolicy::Deferred {
                tau: 0.05,
                window: 6,
                max_window: 12,
            },
            None,
            false,
            true,
        ),
        (CommitPolicy::Threshold { tau: 0.05 }, arpc, true, false),
        (
            CommitPolicy::Uniform {
                steps: 4,
                corrector_k: 3,
                corrector_rounds: 1,
            },
            None,
            false,
            true,
        ),
        (CommitPolicy::Dilated { per_step: 3 }, None, false, true),
        (
            CommitPolicy::Ordered {
                per_step: 3,
                stripes: 0,
            },
            None,
            false,
            true,
        ),
        (
            CommitPolicy::Ordered {
                per_step: 2,
                stripes: 4,
            },
            None,
            false,
            true,
        ),
    ]
}

#[test]
fn successor_constraint_holds_in_every_sample_under_every_policy() {
    let device = Default::default();
    let (tok, succ, cfg, model) = untrained(5);
    let constraint = SuccessorConstraint::new(tok.vocab(), succ.clone(), false);
    let variants = variants();
    let batch = 25;
    for (pi, (policy, corrector, flashblock, parallel)) in variants.iter().enumerate() {
        let mut checked = 0;
        let mut parallel_steps = 0;
        // The newer samplers need the cache; the original ones alternate with the reference.
        let always_cache = pi >= 4;
        for round in 0..(1000 / batch) {
            let scfg = SamplerConfig {
                block_size: 8,
                policy: policy.clone(),
                max_len: 20,
                stop_at_eos: false,
                seed: (pi * 1000 + round) as u64,
                use_cache: always_cache || round % 2 == 0,
                corrector: *corrector,
                flashblock: *flashblock,
                ..SamplerConfig::default()
            };
            let reqs = vec![Conditioning::default(); batch];
            let out =
                sample(&model, &cfg, &reqs, &constraint, &scfg, &device).expect("no dead end");
            for s in &out.sequences {
                assert_eq!(s.len(), 20, "{policy:?}: full length");
                let syms = tok.decode(s).expect("only regular tokens");
                for w in syms.windows(2) {
                    assert!(
                        succ[w[0]].contains(&(w[1] as u32)),
                        "{policy:?}: {} -> {} is not an edge in {syms:?}",
                        w[0],
                        w[1]
                    );
                }
                checked += 1;
            }
            if out.stats.tokens_per_forward() > 1.0 {
                parallel_steps += 1;
            }
        }
        assert_eq!(checked, 1000);
        if *parallel {
            assert!(parallel_steps > 0, "{policy:?} never committed in parallel");
        }
    }
}

#[test]
fn successor_constraint_is_exact_about_gaps() {
    let (tok, succ) = graph();
    let c = SuccessorConstraint::new(tok.vocab(), succ.clone(), true);
    let v = tok.vocab().size();
    let id = |s: usize| tok.vocab().regular_id(s);
    // a _ _ c : the middle may only hold nodes on a 3-edge walk from a to c.
    let (a, target) = (
        0usize,
        succ[succ[succ[0][0] as usize][0] as usize][0] as usize,
    );
    let seq = vec![id(a), MASK, MASK, id(target)];
    let mut allowed = vec![true; v];
    c.restrict(&seq, 1, &mut allowed);
    for s in 0..32 {
        let ok = allowed[id(s) as usize];
        let walk = succ[a].contains(&(s as u32))
            && succ[s]
                .iter()
                .any(|&m| succ[m as usize].contains(&(target as u32)));
        assert_eq!(ok, walk, "symbol {s}");
    }
    assert!(!allowed[EOS as usize], "no end before a committed node");
    // After EOS only padding.
    let seq = vec![id(a), EOS, MASK];
    let mut allowed = vec![true; v];
    c.restrict(&seq, 2, &mut allowed);
    assert_eq!(allowed.iter().filter(|&&x| x).count(), 1);
    assert!(allowed[PAD as usize]);
}

/// Every sequence ends at `terminal` within `horizon` positions.
struct ToTerminal {
    graph: SuccessorConstraint,
    terminal: u32,
    horizon: usize,
}

impl Constraint for ToTerminal {
    fn restrict(&self, seq: &[u32], pos: usize, allowed: &mut [bool]) {
        self.graph
            .restrict_to_terminal(seq, pos, allowed, self.terminal, Some(self.horizon));
    }
}

/// With `EOS` allowed and `stop_at_eos`, every policy ends its sequences cleanly: no masked
/// position is ever left before the end (DCD's look-ahead may commit an `EOS` in the next block
/// before the current block is complete), and the edges hold up to the end.
#[test]
fn every_policy_ends_eos_terminated_sequences_without_gaps() {
    let device = Default::default();
    let (tok, succ, cfg, model) = untrained(6);
    // Trips end at a fixed node within a horizon (the traj setting): PAD may then be committed
    // far right while positions to its left are still masked.
    let constraint = ToTerminal {
        graph: SuccessorConstraint::new(tok.vocab(), succ.clone(), true),
        terminal: tok.vocab().regular_id(5),
        horizon: 1 + 24,
    };
    let batch = 25;
    // Plus DCD with a window twice the block: it always decodes the next block too.
    let mut runs: Vec<(usize, CommitPolicy, Option<Corrector>, bool)> = variants()
        .into_iter()
        .map(|(p, c, f, _)| (8, p, c, f))
        .collect();
    let wide = CommitPolicy::Deferred {
        tau: 0.05,
        window: 8,
        max_window: 8,
    };
    runs.push((4, wide, None, false));
    for (pi, (block, policy, corrector, flashblock)) in runs.iter().enumerate() {
        let mut ended_early = 0;
        for round in 0..8 {
            let scfg = SamplerConfig {
                block_size: *block,
                policy: policy.clone(),
                max_len: 24,
                stop_at_eos: true,
                seed: (pi * 100 + round) as u64,
                corrector: *corrector,
                flashblock: *flashblock,
                ..SamplerConfig::default()
            };
            let reqs = vec![Conditioning::default(); batch];
            let out =
                sample(&model, &cfg, &reqs, &constraint, &scfg, &device).expect("no dead end");
            for (s, ended) in out.sequences.iter().zip(&out.ended) {
                let syms = tok
                    .decode(s)
                    .unwrap_or_else(|e| panic!("{policy:?}: {e} in {s:?}"));
                for w in syms.windows(2) {
                    assert!(succ[w[0]].contains(&(w[1] as u32)), "{policy:?}: {syms:?}");
                }
                assert!(*ended || s.len() == 24, "{policy:?}: short but not ended");
                ended_early += usize::from(s.len() < 24);
            }
        }
        assert!(ended_early > 0, "{policy:?}: no sequence ended with EOS");
    }
}

/// `restrict_to_terminal` is exact: committing any allowed token at any masked position, in a
/// random order, never leaves a position with nothing allowed, and every finished sequence is a
/// walk from the prompt's last node that ends at the terminal (once), then EOS, then PAD,
/// within the horizon.
#[test]
fn terminal_constraint_never_dead_ends_in_any_commit_order() {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    let (tok, succ) = graph();
    let vocab = tok.vocab();
    let c = SuccessorConstraint::new(vocab, succ, true);
    let mut rng = StdRng::seed_from_u64(17);
    let (block, blocks) = (8usize, 3usize);
    for trial in 0..1500 {
        let start = rng.random_range(0..32usize);
        let terminal = vocab.regular_id(rng.random_range(0..32usize));
        // No limit, the sequence's own length, or (the traj detour bound) a limit shorter than
        // the sequence that the terminal is still reachable within: positions past it exist.
        let full = 1 + block * blocks;
        let hops = c.hops_to(c.node_of(terminal).unwrap())[start];
        let horizon = match trial % 3 {
            0 => Some(full),
            1 if hops != usize::MAX && hops + 2 < full => Some(rng.random_range(hops + 2..full)),
            _ => None,
        };
        let mut seq = vec![vocab.regular_id(start)];
        for _ in 0..blocks {
            let base = seq.len();
            seq.extend(std::iter::repeat_n(MASK, block));
            // Random commit order inside the block, several "parallel" picks per step.
            let mut order: Vec<usize> = (0..block).collect();
            for i in (1..order.len()).rev() {
                order.swap(i, rng.random_range(0..=i));
            }
            for &p in &order {
                let pos = base + p;
                let mut allowed = vec![true; vocab.size()];
                allowed[MASK as usize] = false;
                allowed[1] = false;
                c.restrict_to_terminal(&seq, pos, &mut allowed, terminal, horizon);
                let opts: Vec<u32> = (0..vocab.size() as u32)
                    .filter(|&t| allowed[t as usize])
                    .collect();
                assert!(
                    !opts.is_empty(),
                    "dead end at {pos} in {seq:?} (terminal {terminal})"
                );
                seq[pos] = opts[rng.random_range(0..opts.len())];
            }
        }
        let gen = &seq[1..];
        if let Some(h) = horizon.filter(|&h| h < full) {
            let at = seq.iter().position(|&t| t == terminal);
            assert!(
                at.is_some_and(|i| i < h),
                "terminal past the limit {h}: {seq:?}"
            );
        }
        match gen.iter().position(|&t| t == EOS) {
            Some(e) => {
                // The token before EOS (the start itself when the walk is empty) is the terminal,
                // and the terminal appears only there.
                assert_eq!(seq[e], terminal, "{seq:?}");
                assert!(gen[e + 1..].iter().all(|&t| t == PAD), "{seq:?}");
                assert_eq!(
                    seq[..=e].iter().filter(|&&t| t == terminal).count(),
                    1,
                    "{seq:?}"
                );
            }
            None => {
                assert!(
                    horizon.is_none() || gen.last() == Some(&terminal),
                    "{seq:?}"
                );
                assert!(!gen.contains(&PAD));
            }
        }
        let nodes: Vec<u32> = seq.iter().copied().take_while(|&t| t != EOS).collect();
        for w in nodes.windows(2) {
            let (a, b) = (c.node_of(w[0]).unwrap(), c.node_of(w[1]).unwrap());
            assert!(c.is_edge(a, b), "{seq:?}");
        }
    }
}

#[test]
fn hysteresis_band_must_be_ordered() {
    let (_, _, cfg, model) = untrained(1);
    let scfg = SamplerConfig {
        policy: CommitPolicy::Speculative {
            routing: SpecRouting::Hysteresis {
                cost: 1.0,
                on: 0.2,
                off: 0.5,
                tau: 0.9,
            },
        },
        ..SamplerConfig::default()
    };
    let reqs = vec![Conditioning::default()];
    let err = sample(
        &model,
        &cfg,
        &reqs,
        &blockdiff_core::constraint::Unconstrained,
        &scfg,
        &Default::default(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("off <= on"), "{err}");
}

/// In-filling: template positions keep their tokens, free positions take neither an excluded
/// token nor anything the inner successor constraint forbids, in every sample and policy.
#[test]
fn template_constraint_infills_valid_and_different_tokens() {
    use blockdiff_core::constraint::TemplateConstraint;
    let device = Default::default();
    let (tok, succ, cfg, model) = untrained(6);
    // A valid 12-step walk to start from.
    let mut walk = vec![0usize];
    for i in 1..12 {
        let next = succ[walk[i - 1]][i % succ[walk[i - 1]].len()] as usize;
        walk.push(next);
    }
    let ids = tok.encode(&walk).unwrap();
    // Slot 3 ends block 0 while its successor's template token sits in block 1 (the template
    // must constrain it before that block is reached); slots 9–11 leave room to differ.
    let free = [3usize, 9, 10, 11];
    let template: Vec<Option<u32>> = ids
        .iter()
        .enumerate()
        .map(|(i, &t)| (!free.contains(&i)).then_some(t))
        .collect();
    let exclude = vec![(11usize, ids[11])];
    let constraint = TemplateConstraint::new(
        SuccessorConstraint::new(tok.vocab(), succ.clone(), false),
        0,
        template,
        exclude,
    );
    let mut changed = 0;
    for (pi, (policy, ..)) in variants().into_iter().take(4).enumerate() {
        let scfg = SamplerConfig {
            block_size: 4,
            policy,
            max_len: 12,
            stop_at_eos: false,
            seed: pi as u64,
            ..SamplerConfig::default()
        };
        let out = sample(
            &model,
            &cfg,
            &vec![Conditioning::default(); 50],
            &constraint,
            &scfg,
            &device,
        )
        .expect("no dead end");
        for s in &out.sequences {
            let syms = tok.decode(s).expect("regular tokens");
            for (i, &x) in syms.iter().enumerate() {
                if !free.contains(&i) {
                    assert_eq!(x, walk[i], "template position {i} changed");
                }
            }
            assert_ne!(syms[11], walk[11], "excluded token at position 11");
            for w in syms.windows(2) {
                assert!(succ[w[0]].contains(&(w[1] as u32)), "{syms:?}");
            }
            changed += usize::from(syms[9] != walk[9] || syms[10] != walk[10]);
        }
    }
    // The free positions really are free (not a copy of the template).
    assert!(changed > 0);
}

/// Dilated unmasking follows its fixed schedule whatever the model says: at block 8 and 3 per
/// step, positions 0, 4, 2 in the first call, 6, 1, 5 in the second, 3, 7 in the third (bit
/// reversal), so ⌈8/3⌉ = 3 calls per block, unconstrained.
#[test]
fn dilated_policy_commits_in_bit_reversed_order() {
    let device = Default::default();
    let (_, _, cfg, model) = untrained(3);
    let scfg = SamplerConfig {
        block_size: 8,
        policy: CommitPolicy::Dilated { per_step: 3 },
        max_len: 16,
        stop_at_eos: false,
        ..SamplerConfig::default()
    };
    let reqs = vec![Conditioning::default(); 4];
    let out = sample(
        &model,
        &cfg,
        &reqs,
        &blockdiff_core::constraint::Unconstrained,
        &scfg,
        &device,
    )
    .expect("sampled");
    assert_eq!(out.stats.nfe, 6, "3 calls per block, 2 blocks");
    let want = [0u32, 1, 0, 2, 0, 1, 1, 2];
    for steps in &out.commit_steps {
        assert_eq!(&steps[..8], &want, "block 1");
        assert_eq!(&steps[8..], &want, "block 2");
    }
}
