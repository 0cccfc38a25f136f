//! Shared by the integration tests: the real Helsinki data (fetched by
//! `datasets/helsinki/fetch.sh`, which `.ci/run` calls first).

#![allow(dead_code)]

use std::path::PathBuf;

use blockdiff_traj::network::{ImportOptions, RoadNetwork};

/// Path of a file in `datasets/helsinki/`, failing clearly when it was not fetched.
pub fn dataset(name: &str) -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../datasets/helsinki")
        .join(name);
    assert!(
        p.exists(),
        "{} missing: run datasets/helsinki/fetch.sh first",
        p.display()
    );
    p
}

/// The Helsinki network (largest strongly connected component).
pub fn helsinki() -> RoadNetwork {
    RoadNetwork::from_pbf(&dataset("Helsinki.osm.pbf"), &ImportOptions::default()).unwrap()
}
