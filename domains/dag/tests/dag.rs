//! Integration tests on the real benchmark tables (`datasets/nasbench/fetch.sh`, which
//! `.ci/run` calls first).

use std::path::PathBuf;

use blockdiff_core::burn::module::AutodiffModule;
use blockdiff_core::tokenizer::Tokenizer;
use blockdiff_core::CpuTrainBackend;
use blockdiff_dag::bench::Benchmark;
use blockdiff_dag::generate::{
    infill_cell, pretrain, sample_cells, DagModel, DagModelConfig, PretrainSubset,
};
use blockdiff_dag::search::{run, Method, Oracle, SearchConfig};
use blockdiff_dag::tokenizer::DagTokenizer;
use blockdiff_dag::DagError;

fn data_dir() -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../datasets/nasbench/data");
    assert!(
        p.join("nb201_analog.csv").exists(),
        "{} missing: run datasets/nasbench/fetch.sh first",
        p.display()
    );
    p
}

fn nb201() -> Benchmark {
    Benchmark::open(&data_dir(), "nb201-analog", None).unwrap()
}

fn nbg(ds: &str) -> Benchmark {
    Benchmark::open(&data_dir(), "nas-bench-graph", Some(ds)).unwrap()
}

#[test]
fn tables_have_the_documented_size_and_optimum() {
    let b = nb201();
    assert_eq!(b.cells().len(), 15_625);
    assert_eq!(b.space.size(), 15_625);
    assert!((b.optimum() - 94.0664).abs() < 1e-9);
    let g = nbg("cora");
    assert_eq!(g.cells().len(), g.space.size());
    assert_eq!(g.space.structures.len(), 9);
    let p = nbg("proteins");
    assert_eq!(p.space.ops.len(), 5);
}

#[test]
fn tokenizer_round_trips_every_cell_of_both_spaces() {
    for b in [nb201(), nbg("cora"), nbg("proteins")] {
        let tok = DagTokenizer::new(b.space.clone());
        for cell in b.cells() {
            let ids = tok.encode(cell).unwrap();
            assert_eq!(ids.len(), tok.body_len());
            assert_eq!(&tok.decode(&ids).unwrap(), cell, "{}", b.space.key(cell));
        }
    }
}

/// A generator trained for one step (random logits), committing `k` tokens per step, and its
/// inference copy.
fn untrained(
    b: &Benchmark,
    k: usize,
) -> (
    DagModel<CpuTrainBackend>,
    blockdiff_core::model::BlockDiffusionModel<blockdiff_core::CpuBackend>,
) {
    let tok = DagTokenizer::new(b.space.clone());
    let cfg = DagModelConfig {
        steps: 1,
        batch_size: 2,
        tokens_per_step: k,
        ..DagModelConfig::default()
    };
    let (m, _) = pretrain(&tok, &b.cells()[..2], &cfg, None, false).unwrap();
    let inner = m.model.valid();
    (m, inner)
}

/// An untrained generator (random logits) under the constraint: every sample must be a valid
/// cell of the space, whatever the commit order.
fn validity(b: &Benchmark, k: usize, n: usize) {
    let (m, inner) = untrained(b, k);
    let device = Default::default();
    let mut valid = 0;
    let mut distinct = std::collections::HashSet::new();
    for chunk in 0..n / 500 {
        let (cells, out) = sample_cells(&inner, &m, 500, chunk as u64, 1.0, &device).unwrap();
        for c in cells.iter().flatten() {
            assert!(
                b.get(c).is_some(),
                "{} not in the benchmark",
                b.space.key(c)
            );
            valid += 1;
            distinct.insert(c.clone());
        }
        assert_eq!(out.sequences.len(), 500);
    }
    assert_eq!(valid, n, "{} of {n} samples valid", valid);
    // Random logits explore: thousands of distinct cells, not one mode.
    assert!(distinct.len() > n / 4, "{} distinct", distinct.len());
}

#[test]
fn every_one_of_10000_samples_is_a_valid_nb201_cell() {
    validity(&nb201(), 4, 10_000);
}

#[test]
fn every_one_of_10000_samples_is_a_valid_nas_bench_graph_cell() {
    validity(&nbg("citeseer"), 3, 10_000);
}

/// The search's in-fills (model-guided mutation): on NB201 (one wiring) each is a valid cell
/// that differs from the elite in exactly one operation, never keeping the elite's own op
/// there; on NAS-Bench-Graph each is a valid cell with the elite's operations or its wiring.
#[test]
fn infills_change_one_operation_or_the_wiring_and_stay_valid() {
    use rand::SeedableRng;
    for (b, k) in [(nb201(), 4), (nbg("cora"), 3)] {
        let (m, inner) = untrained(&b, k);
        let device = Default::default();
        let elite = b.cells()[b.cells().len() / 2].clone();
        let mut rng = rand::rngs::StdRng::seed_from_u64(4);
        let (mut one_op, mut rewired) = (0, 0);
        for s in 0..60 {
            let c = infill_cell(&inner, &m, &elite, s, 1.0, &mut rng, &device)
                .unwrap()
                .expect("an in-fill decodes");
            assert!(
                b.get(&c).is_some(),
                "{} not in the benchmark",
                b.space.key(&c)
            );
            let changed = c.ops.iter().zip(&elite.ops).filter(|(x, y)| x != y).count();
            if c.structure == elite.structure && changed == 1 {
                one_op += 1;
            } else {
                assert_eq!(changed, 0, "a rewiring keeps the operations");
                rewired += 1;
            }
        }
        if b.space.structures.len() == 1 {
            assert_eq!(one_op, 60);
        } else {
            assert!(
                one_op > 10 && rewired > 0,
                "{one_op} op in-fills, {rewired} rewirings"
            );
        }
    }
}

#[test]
fn oracle_pays_once_per_canonical_cell() {
    let g = nbg("cora");
    // Two different cells of the space that the benchmark folds into one canonical id.
    let mut by_id = std::collections::HashMap::new();
    let pair = g
        .cells()
        .iter()
        .find_map(|c| {
            let id = g.get(c).unwrap().canonical;
            by_id.insert(id, c.clone()).map(|prev| (prev, c.clone()))
        })
        .expect("isomorphic cells exist");
    assert_ne!(pair.0, pair.1);
    let mut o = Oracle::new(&g, 10, false);
    assert!(o.is_new(&pair.0) && o.is_new(&pair.1));
    let r0 = o.query(&pair.0).unwrap();
    // Its isomorphic twin is no longer new: the RL repeat penalty applies to it.
    assert!(!o.is_new(&pair.1));
    let r1 = o.query(&pair.1).unwrap();
    assert_eq!(o.queries(), 1);
    assert_eq!(r0, r1);
    // The budget is exact: random search stops at it.
    let cfg = SearchConfig {
        budget: 57,
        ..SearchConfig::default()
    };
    let r = run(&g, Method::Random, 3, &cfg, None).unwrap();
    assert_eq!(r.queries, 57);
    assert!(r.curve.windows(2).all(|w| w[1] >= w[0]));
    let e = run(&g, Method::Evolution, 3, &cfg, None).unwrap();
    assert_eq!(e.queries, 57);
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

/// Pre-trains on the cells below 85% (as in the README run, but briefly), then fine-tunes on a
/// small budget: the mean reward of the policy's samples must rise; handed −reward it must fall.
#[test]
fn fine_tuning_raises_mean_reward_and_inverted_reward_lowers_it() {
    let b = nb201();
    let tok = DagTokenizer::new(b.space.clone());
    let cells = PretrainSubset::Below(85.0).cells(&b, 0);
    let cfg = DagModelConfig {
        steps: 120,
        ..DagModelConfig::default()
    };
    let (gen, _): (DagModel<CpuTrainBackend>, _) =
        pretrain(&tok, &cells, &cfg, None, false).unwrap();
    let search = |invert: bool| {
        let mut s = SearchConfig {
            budget: 150,
            batch: 16,
            max_rounds: 14,
            invert,
            ..SearchConfig::default()
        };
        s.pg.epochs = 4;
        s.pg.lr = 2e-3;
        run(&b, Method::Rl, 1, &s, Some(&gen)).unwrap()
    };
    let up = search(false);
    let down = search(true);
    let (u, d) = (&up.round_mean_reward, &down.round_mean_reward);
    assert!(u.len() >= 6 && d.len() >= 6, "{u:?} {d:?}");
    let (u0, u1) = (mean(&u[..2]), mean(&u[u.len() - 2..]));
    let (d0, d1) = (mean(&d[..2]), mean(&d[d.len() - 2..]));
    eprintln!("reward {u0:.2} → {u1:.2}; inverted {d0:.2} → {d1:.2}");
    assert!(
        u1 > u0 + 3.0,
        "fine-tuning did not raise the mean reward: {u:?}"
    );
    assert!(d1 < d0 - 3.0, "inverted reward did not lower it: {d:?}");
}

#[test]
fn a_truncated_real_table_gives_an_error_naming_the_line() {
    let src = std::fs::read_to_string(data_dir().join("nb201_analog.csv")).unwrap();
    let cut = &src[..src.len() / 2];
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("nb201_analog.csv");
    std::fs::write(&p, cut).unwrap();
    match Benchmark::load_nb201(&p) {
        // The cut may fall on a line boundary (a smaller, valid table) or inside a record.
        Ok(b) => assert!(b.cells().len() < 15_625),
        Err(DagError::Format { line, message, .. }) => {
            assert!(line > 1, "{message}");
        }
        Err(e) => panic!("unexpected error {e}"),
    }
    let e = Benchmark::open(dir.path(), "nas-bench-graph", Some("../etc")).unwrap_err();
    assert!(matches!(e, DagError::Config(_)));
    let e = Benchmark::open(dir.path(), "nas-bench-graph", Some("cora")).unwrap_err();
    assert!(matches!(e, DagError::Io { .. }), "{e}");
}
