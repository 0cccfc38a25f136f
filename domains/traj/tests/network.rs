//! PBF → graph on the real Helsinki extract (fetched by `datasets/helsinki/fetch.sh`).

mod common;

use blockdiff_traj::network::{ImportOptions, RoadNetwork};
use blockdiff_traj::TrajError;
use common::dataset;

#[test]
fn helsinki_graph_is_consistent() {
    let path = dataset("Helsinki.osm.pbf");
    let all = RoadNetwork::from_pbf(&path, &ImportOptions { largest_scc: false }).unwrap();
    let net = RoadNetwork::from_pbf(&path, &ImportOptions::default()).unwrap();
    eprintln!(
        "helsinki: {} segments ({} in the largest SCC), {} successor edges",
        all.len(),
        net.len(),
        net.n_edges()
    );
    assert!(all.len() > 1000, "only {} segments", all.len());
    assert!(net.len() as f64 > 0.5 * all.len() as f64);
    for (a, succ) in net.successors.iter().enumerate() {
        for &b in succ {
            // Every successor shares the node where `a` ends.
            assert_eq!(net.segments[a].to_node, net.segments[b].from_node);
            // ... and the shared vertex is the same point.
            let end = net.segments[a].geometry.0.last().unwrap();
            let start = net.segments[b].geometry.0[0];
            assert_eq!(*end, start);
        }
    }
    // One-way ways give exactly one direction; two-way ways give both.
    let mut dirs: std::collections::HashMap<(i64, i64, i64), usize> = Default::default();
    for s in &all.segments {
        let key = (
            s.way_id,
            s.from_node.min(s.to_node),
            s.from_node.max(s.to_node),
        );
        *dirs.entry(key).or_default() += 1;
    }
    let oneways = all.segments.iter().filter(|s| s.oneway).count();
    assert!(oneways > 0, "Helsinki has one-way streets");
    for s in &all.segments {
        let key = (
            s.way_id,
            s.from_node.min(s.to_node),
            s.from_node.max(s.to_node),
        );
        if s.oneway {
            assert_eq!(
                dirs[&key], 1,
                "one-way way {} has both directions",
                s.way_id
            );
        }
    }
    for s in all.segments.iter().filter(|s| s.roundabout) {
        assert!(s.oneway, "roundabouts are one-way");
    }
    // Lengths and the spatial index agree with the geometry.
    for (i, s) in net.segments.iter().enumerate().step_by(97) {
        assert!(s.length_m > 0.0);
        let mid = net.point_along(i, s.length_m / 2.0);
        let c = net.candidates(mid, 5.0);
        assert!(
            c.iter().any(|c| c.segment == i && c.distance_m < 1.0),
            "segment {i}"
        );
    }
    // Largest SCC: everything reaches everything; spot-check with a BFS.
    let mut seen = vec![false; net.len()];
    let mut stack = vec![0usize];
    seen[0] = true;
    while let Some(a) = stack.pop() {
        for &b in &net.successors[a] {
            if !seen[b] {
                seen[b] = true;
                stack.push(b);
            }
        }
    }
    assert!(seen.iter().all(|&s| s));
}

#[test]
fn other_extract_imports_too() {
    let net = RoadNetwork::from_pbf(&dataset("test.osm.pbf"), &ImportOptions::default()).unwrap();
    assert!(net.len() > 10);
}

#[test]
fn malformed_pbf_is_a_typed_error() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("bad.osm.pbf");
    std::fs::write(&p, b"\x00\x00\x00\x0dnot a pbf at all, just garbage bytes").unwrap();
    match RoadNetwork::from_pbf(&p, &ImportOptions::default()) {
        Err(TrajError::Pbf { path, .. }) => assert_eq!(path, p),
        other => panic!("expected a Pbf error, got {other:?}"),
    }
    let missing = dir.path().join("missing.osm.pbf");
    assert!(matches!(
        RoadNetwork::from_pbf(&missing, &ImportOptions::default()),
        Err(TrajError::Io { .. })
    ));
    let empty = dir.path().join("empty.osm.pbf");
    std::fs::write(&empty, b"").unwrap();
    assert!(RoadNetwork::from_pbf(&empty, &ImportOptions::default()).is_err());
}
