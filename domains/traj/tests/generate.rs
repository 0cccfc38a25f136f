//! Topology-constrained generation on the real Helsinki network: every generated trip is
//! connected (pairs decoded in the same parallel step and across block boundaries included),
//! starts at its origin and stops at its destination.

mod common;

use blockdiff_core::sample::{CommitPolicy, SamplerConfig};
use blockdiff_traj::generate::{
    evaluate, load_model, train_model, MarkovBaseline, TrajModelConfig,
};
use blockdiff_traj::metrics::MetricsConfig;
use blockdiff_traj::simulate::{simulate, SimConfig};
use blockdiff_traj::tokenizer::TripRequest;

#[test]
fn generated_trips_are_connected_and_reach_their_destination() {
    let net = common::helsinki();
    let sim = simulate(
        &net,
        &SimConfig {
            n_trips: 1500,
            ..SimConfig::default()
        },
    )
    .unwrap();
    let cfg = TrajModelConfig {
        d_model: 64,
        n_layers: 2,
        n_heads: 2,
        steps: 60,
        batch_size: 16,
        progress: false,
        ..TrajModelConfig::default()
    };
    let dir = tempfile::tempdir().unwrap();
    let (model, report) = train_model(&net, &sim.train, &sim.val, &cfg, Some(dir.path())).unwrap();
    assert!(report.final_train_loss.is_finite());
    // The checkpoint reloads and gives the same samples.
    let reloaded = load_model(dir.path(), &net).unwrap();
    let requests: Vec<TripRequest> = sim
        .train
        .iter()
        .chain(&sim.test)
        .cycle()
        .take(1000)
        .map(|t| TripRequest::of(t).unwrap())
        .collect();
    for (policy, block) in [
        (CommitPolicy::Threshold { tau: 0.5 }, 16),
        (CommitPolicy::TopK { k: 4 }, 8),
        (CommitPolicy::TopK { k: 1 }, 1),
    ] {
        let sampler = SamplerConfig {
            block_size: block,
            policy,
            max_len: model.seq_len,
            seed: 3,
            ..SamplerConfig::default()
        };
        let reqs = if block == 1 {
            &requests[..200]
        } else {
            &requests[..]
        };
        let g = model.generate(&net, reqs, &sampler, 128, false).unwrap();
        assert_eq!(g.routes.len(), reqs.len());
        for (r, q) in g.routes.iter().zip(reqs) {
            assert!(net.is_connected_route(r), "disconnected route {r:?}");
            assert_eq!(r[0], q.origin);
            assert_eq!(
                *r.last().unwrap(),
                q.destination,
                "route {r:?} misses {q:?}"
            );
            // It stops at the destination: it appears only at the end.
            assert_eq!(r.iter().filter(|&&s| s == q.destination).count(), 1);
        }
        eprintln!(
            "block {block}: {} trips in {:.2}s ({:.0} trips/s), {:.2} tokens/forward",
            reqs.len(),
            g.stats.wall_s,
            reqs.len() as f64 / g.stats.wall_s,
            g.stats.tokens_per_forward()
        );
        if block == 16 {
            // Same requests, same batching: the reloaded checkpoint samples identically.
            let a = model
                .generate(&net, &reqs[..64], &sampler, 128, false)
                .unwrap();
            let b = reloaded
                .generate(&net, &reqs[..64], &sampler, 128, false)
                .unwrap();
            assert_eq!(
                a.routes, b.routes,
                "reloaded checkpoint samples differently"
            );
        }
    }
    // The decoding floor runs on real trips and refuses a trip without a route.
    let floor = model.floor_wall(&sim.test[..50]).unwrap();
    assert!(floor > 0.0 && floor.is_finite(), "floor {floor}");
    let mut bad = sim.test[0].clone();
    bad.route.clear();
    let err = model.floor_wall(&[bad]).unwrap_err().to_string();
    assert!(err.contains("empty route"), "{err}");
    let markov = MarkovBaseline::fit(&net, &sim.train, 0.1).generate(&requests[..300], 128, 1);
    let m = evaluate(
        &net,
        &sim.test,
        &requests[..300],
        &markov,
        &MetricsConfig::default(),
    )
    .unwrap();
    assert!((m.connectivity - 1.0).abs() < 1e-12);
}
