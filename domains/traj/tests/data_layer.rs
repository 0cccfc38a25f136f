//! HOSER round trip and the trip simulator on the real Helsinki network.

mod common;

use blockdiff_traj::hoser;
use blockdiff_traj::simulate::{simulate, SimConfig};
use blockdiff_traj::{TrajError, Trip};
use common::helsinki;

#[test]
fn hoser_round_trip() {
    let net = helsinki();
    let dir = tempfile::tempdir().unwrap();
    hoser::write_roadmap(dir.path(), &net).unwrap();
    let back = hoser::read_roadmap(dir.path()).unwrap();
    assert_eq!(back.len(), net.len());
    assert_eq!(back.successors, net.successors);
    for (a, b) in net.segments.iter().zip(&back.segments) {
        assert_eq!(a.from_node, b.from_node);
        assert_eq!(a.to_node, b.to_node);
        assert_eq!(a.highway, b.highway);
        assert!((a.length_m - b.length_m).abs() < 1e-3);
        for (p, q) in a.points().zip(b.points()) {
            assert!((p[0] - q[0]).abs() < 1e-6 && (p[1] - q[1]).abs() < 1e-6);
        }
    }
    let sim = simulate(
        &net,
        &SimConfig {
            n_trips: 50,
            ..SimConfig::default()
        },
    )
    .unwrap();
    let path = dir.path().join("train.csv");
    hoser::write_trips(&path, &sim.train).unwrap();
    let trips = hoser::read_trips(&path, back.len()).unwrap();
    assert_eq!(trips, sim.train);
    // No temporary files are left behind.
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().extension().is_some_and(|x| x == "tmp"))
        .collect();
    assert!(leftovers.is_empty());
}

#[test]
fn hoser_bad_input_is_typed() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("trips.csv");
    std::fs::write(
        &p,
        "mm_id,entity_id,traj_id,rid_list,time_list\n0,0,0,\"1,2,99999\",\n",
    )
    .unwrap();
    match hoser::read_trips(&p, 100) {
        Err(TrajError::UnknownSegment { id, context }) => {
            assert_eq!(id, 99999);
            assert!(context.contains("line 2"), "{context}");
        }
        other => panic!("expected UnknownSegment, got {other:?}"),
    }
    std::fs::write(&p, "mm_id,rid_list\n0,\"1,x\"\n").unwrap();
    assert!(matches!(
        hoser::read_trips(&p, 100),
        Err(TrajError::Format { line: 2, .. })
    ));
    std::fs::write(&p, "mm_id,foo\n0,1\n").unwrap();
    assert!(matches!(
        hoser::read_trips(&p, 100),
        Err(TrajError::Format { line: 1, .. })
    ));
    std::fs::write(&p, "rid_list,time_list\n\"1,2\",\"2019-11-25T00:00:52Z\"\n").unwrap();
    assert!(matches!(
        hoser::read_trips(&p, 100),
        Err(TrajError::Format { line: 2, .. })
    ));
    // Roadmap with a relation to a missing segment.
    std::fs::write(
        dir.path().join("roadmap.geo"),
        "geo_id,type,coordinates,highway,length\n0,LineString,\"[[24.9,60.1],[24.91,60.1]]\",residential,500\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("roadmap.rel"),
        "rel_id,type,origin_id,destination_id\n0,geo,0,7\n",
    )
    .unwrap();
    assert!(matches!(
        hoser::read_roadmap(dir.path()),
        Err(TrajError::UnknownSegment { id: 7, .. })
    ));
    std::fs::write(
        dir.path().join("roadmap.geo"),
        "geo_id,type,coordinates\n0,LineString,\"[[24.9,60.1]]\"\n",
    )
    .unwrap();
    assert!(matches!(
        hoser::read_roadmap(dir.path()),
        Err(TrajError::Format { line: 2, .. })
    ));
}

#[test]
fn simulator_is_seeded_connected_and_not_just_shortest_paths() {
    let net = helsinki();
    let cfg = SimConfig {
        n_trips: 400,
        ..SimConfig::default()
    };
    let a = simulate(&net, &cfg).unwrap();
    let b = simulate(&net, &cfg).unwrap();
    assert_eq!(a.train, b.train);
    assert_eq!(a.train.len() + a.val.len() + a.test.len(), 400);
    assert_eq!(a.test.len(), 40);
    let all: Vec<&Trip> = a.train.iter().chain(&a.val).chain(&a.test).collect();
    for t in &all {
        assert!(net.is_connected_route(&t.route));
        let times = t.times.as_ref().unwrap();
        assert!(times.windows(2).all(|w| w[0] <= w[1]));
    }
    eprintln!("{:?}", a.stats);
    assert!(a.stats.share_not_shortest_distance > 0.2, "{:?}", a.stats);
    assert!(a.stats.share_not_shortest_distance < 1.0);
    assert!(a.stats.mean_length_m > 500.0);
}

#[test]
fn simulator_floor_routes_answer_the_requests_and_beat_the_markov_chain() {
    use blockdiff_traj::generate::MarkovBaseline;
    use blockdiff_traj::pipeline::{requests_of, simulator_floor};
    use blockdiff_traj::simulate::resample_routes;
    let net = helsinki();
    let cfg = SimConfig {
        n_trips: 2_000,
        ..SimConfig::default()
    };
    let sim = simulate(&net, &cfg).unwrap();
    let pairs: Vec<(usize, usize)> = sim
        .test
        .iter()
        .map(|t| (t.origin().unwrap(), t.destination().unwrap()))
        .collect();
    let a = resample_routes(&net, &cfg, &pairs, 9);
    assert_eq!(a, resample_routes(&net, &cfg, &pairs, 9), "seeded");
    let mut differs = 0;
    for ((r, &(o, d)), real) in a.iter().zip(&pairs).zip(&sim.test) {
        let r = r.as_ref().expect("the network is strongly connected");
        assert_eq!((r[0], *r.last().unwrap()), (o, d));
        assert!(net.is_connected_route(r));
        differs += usize::from(*r != real.route);
    }
    // Fresh preference noise: a real share of routes differ from the held-out ones.
    assert!(
        differs * 10 > pairs.len(),
        "{differs} of {} differ",
        pairs.len()
    );
    // Out-of-range ids are no route, not a panic.
    assert_eq!(
        resample_routes(&net, &cfg, &[(net.len(), 0)], 1),
        vec![None]
    );
    let requests = requests_of(&sim.test);
    let floor = simulator_floor(&net, &cfg, &sim.test, &requests).unwrap();
    let markov = MarkovBaseline::fit(&net, &sim.train, 0.1).generate(&requests, 400, 17);
    let markov = blockdiff_traj::generate::evaluate(
        &net,
        &sim.test,
        &requests,
        &markov,
        &blockdiff_traj::metrics::MetricsConfig::default(),
    )
    .unwrap();
    eprintln!("floor {floor:?}\nmarkov {markov:?}");
    assert_eq!(floor.connectivity, 1.0);
    assert_eq!(floor.destination_hit, 1.0);
    assert!(floor.jsd_distance < markov.jsd_distance / 3.0);
    assert!(floor.dtw_km < markov.dtw_km / 2.0);
}

#[test]
fn map_matching_accuracy_on_noisy_gps() {
    use blockdiff_traj::matching::{match_trace, route_agreement, synthesize_gps, MatchConfig};
    let net = helsinki();
    let sim = simulate(
        &net,
        &SimConfig {
            n_trips: 60,
            seed: 11,
            ..SimConfig::default()
        },
    )
    .unwrap();
    let trips: Vec<&Trip> = sim.train.iter().take(40).collect();
    use blockdiff_traj::matching::evaluate_matching;
    let routes: Vec<Vec<usize>> = trips.iter().map(|t| t.route.clone()).collect();
    for (i, t) in trips.iter().take(5).enumerate() {
        let tr = synthesize_gps(&net, &t.route, 10.0, 20.0, i as u64);
        let m = match_trace(&net, &tr.points, &MatchConfig::for_sigma(20.0)).unwrap();
        assert!(
            net.is_connected_route(&m),
            "matched route must be connected"
        );
        assert!(route_agreement(&tr.covered, &m).accuracy > 0.5);
    }
    for (sigma, interval, goal) in [(10.0, 5.0, 0.95), (20.0, 15.0, 0.95), (40.0, 15.0, 0.8)] {
        let a = evaluate_matching(&net, &routes, sigma, interval, 0).unwrap();
        eprintln!("sigma {sigma} m, every {interval} s: {a:?}");
        assert!(a.accuracy >= goal, "sigma {sigma}: {a:?} < {goal}");
        assert!(a.precision >= goal - 0.1, "sigma {sigma}: {a:?}");
    }
    // GPS outside the map is a typed error.
    let far = vec![
        blockdiff_traj::matching::GpsPoint {
            lon: 0.0,
            lat: 0.0,
            t: 0.0
        };
        5
    ];
    assert!(matches!(
        match_trace(&net, &far, &MatchConfig::default()),
        Err(TrajError::Matching(_))
    ));
}
