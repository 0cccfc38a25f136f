//! A documented, seeded trip simulator on a real road network (no public trip set can be
//! fetched here).
//!
//! - **Origins and destinations** come from a gravity model: a segment's attraction is its
//!   length times the number of segments within `density_radius_m` of it (activity is where
//!   streets are dense); the origin is drawn ∝ attraction, the destination ∝ attraction ×
//!   `exp(-d / distance_scale_m)` over a pool of `od_pool` attraction-weighted candidates
//!   (d = great-circle distance between the segments' centroids, at least `min_trip_m`).
//! - **Routes** are shortest-*time* paths with turn penalties (left turns cost more than right
//!   turns, U-turns most) where every segment's time is multiplied by a per-trip log-normal
//!   factor (`preference_noise`) and by a per-trip preference for or against major roads,
//!   so drivers differ and routes are not all shortest paths.
//! - **Departure times** follow a daily profile: morning and evening peaks plus a daytime
//!   base; per-segment entry times add the segment's travel time, slower in the peaks.
//! - Trips are split into train/val/test by trip (shuffled with the seed).

use petgraph::algo::astar;
use petgraph::graph::NodeIndex;
use petgraph::visit::EdgeRef;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::error::TrajError;
use crate::network::RoadNetwork;
use crate::trip::Trip;

/// Simulator settings (all defaults documented in the field docs).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SimConfig {
    /// Trips to simulate (before the split).
    pub n_trips: usize,
    /// Seed of everything random.
    pub seed: u64,
    /// Minimum origin–destination distance, metres (default 500).
    pub min_trip_m: f64,
    /// Distance decay of the gravity model, metres (default 2000).
    pub distance_scale_m: f64,
    /// Radius for the segment-density attraction, metres (default 300).
    pub density_radius_m: f64,
    /// Destination candidates per trip (default 64).
    pub od_pool: usize,
    /// σ of the per-trip, per-segment log-normal travel-time factor (default 0.35).
    pub preference_noise: f64,
    /// σ of the per-trip log-normal factor on minor-road times (default 0.3).
    pub class_noise: f64,
    /// Seconds added for a left turn (default 12), a right turn (6), a U-turn (40).
    pub turn_penalty_s: [f64; 3],
    /// Share of trips in validation and test (default 0.1 each).
    pub val_share: f64,
    /// See `val_share`.
    pub test_share: f64,
    /// Unix time of the simulated day's midnight (default 2024-05-06, a Monday).
    pub day_start: i64,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            n_trips: 10_000,
            seed: 7,
            min_trip_m: 500.0,
            distance_scale_m: 2000.0,
            density_radius_m: 300.0,
            od_pool: 64,
            preference_noise: 0.35,
            class_noise: 0.3,
            turn_penalty_s: [12.0, 6.0, 40.0],
            val_share: 0.1,
            test_share: 0.1,
            day_start: 1_714_953_600,
        }
    }
}

/// Simulated trips and what the simulator measured about them.
#[derive(Clone, Debug)]
pub struct SimulatedTrips {
    /// Training trips.
    pub train: Vec<Trip>,
    /// Validation trips.
    pub val: Vec<Trip>,
    /// Test (held-out) trips.
    pub test: Vec<Trip>,
    /// Summary numbers.
    pub stats: SimStats,
}

/// Summary of a simulation.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct SimStats {
    /// Trips simulated.
    pub trips: usize,
    /// Share of trips whose route differs from the shortest-distance path between the same
    /// origin and destination segments.
    pub share_not_shortest_distance: f64,
    /// Share of trips whose route differs from the noise-free fastest path (with turn
    /// penalties) — the driver-preference effect alone.
    pub share_not_fastest: f64,
    /// Mean route length, metres.
    pub mean_length_m: f64,
    /// Mean segments per trip.
    pub mean_segments: f64,
    /// Longest trip, segments.
    pub max_segments: usize,
}

/// Turn penalty (seconds) for a turn angle in degrees (+ = right; driving on the right).
pub fn turn_penalty(angle: f64, p: &[f64; 3]) -> f64 {
    let a = angle.abs();
    if a < 30.0 {
        0.0
    } else if a > 150.0 {
        p[2]
    } else if angle < 0.0 {
        p[0]
    } else {
        p[1]
    }
}

fn is_major(highway: &str) -> bool {
    let base = highway.trim_end_matches("_link");
    matches!(base, "motorway" | "trunk" | "primary" | "secondary")
}

/// A standard normal draw (Box–Muller).
pub fn normal(rng: &mut StdRng) -> f64 {
    let u1: f64 = rng.random::<f64>().max(1e-12);
    let u2: f64 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// What a route minimises.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RouteCost {
    /// Total length.
    Distance,
    /// Free-flow travel time plus turn penalties.
    Time,
}

/// The cheapest route from segment `from` to segment `to` (both included) by `cost`, or
/// `None` if `to` cannot be reached. `factor[s]` multiplies segment `s`'s cost when given.
pub fn best_route(
    net: &RoadNetwork,
    from: usize,
    to: usize,
    cost: RouteCost,
    turn_penalty_s: &[f64; 3],
    factor: Option<&[f64]>,
) -> Option<Vec<usize>> {
    if from >= net.len() || to >= net.len() {
        return None;
    }
    let seg_cost = |s: usize| {
        let base = match cost {
            RouteCost::Distance => net.segments[s].length_m,
            RouteCost::Time => net.segments[s].travel_time_s(),
        };
        base * factor.map_or(1.0, |f| f[s])
    };
    let (_, path) = astar(
        &net.graph,
        NodeIndex::new(from),
        |n| n.index() == to,
        |e| {
            let turn = match cost {
                RouteCost::Distance => 0.0,
                RouteCost::Time => turn_penalty(*e.weight(), turn_penalty_s),
            };
            seg_cost(e.target().index()) + turn
        },
        |_| 0.0,
    )?;
    Some(path.into_iter().map(|n| n.index()).collect())
}

/// Daily departure profile: returns seconds after midnight.
fn departure_second(rng: &mut StdRng) -> f64 {
    let u: f64 = rng.random();
    let hours = if u < 0.3 {
        8.0 + 1.2 * normal(rng)
    } else if u < 0.6 {
        17.0 + 1.5 * normal(rng)
    } else {
        6.0 + 17.0 * rng.random::<f64>()
    };
    hours.rem_euclid(24.0) * 3600.0
}

/// Congestion slow-down factor at a time of day (seconds after midnight).
fn congestion(sec: f64) -> f64 {
    let h = sec / 3600.0;
    let peak = |c: f64, w: f64| (-(h - c).powi(2) / (2.0 * w * w)).exp();
    1.0 + 0.5 * peak(8.0, 1.0) + 0.6 * peak(17.0, 1.3)
}

/// One trip's route from `o` to `d`: the fastest route under this trip's own preferences
/// (a class preference for minor roads and per-segment noise, both log-normal).
fn noisy_route(
    net: &RoadNetwork,
    cfg: &SimConfig,
    o: usize,
    d: usize,
    rng: &mut StdRng,
) -> Option<Vec<usize>> {
    let class_f = (cfg.class_noise * normal(rng)).exp();
    let factor: Vec<f64> = (0..net.len())
        .map(|s| {
            let pref = if is_major(&net.segments[s].highway) {
                1.0
            } else {
                class_f
            };
            pref * (cfg.preference_noise * normal(rng)).exp()
        })
        .collect();
    best_route(
        net,
        o,
        d,
        RouteCost::Time,
        &cfg.turn_penalty_s,
        Some(&factor),
    )
}

/// The simulator's own answer to a set of requests: a fresh route for every (origin,
/// destination) pair, drawn as [`simulate`] draws them but with new preference noise
/// (`seed`). Scored against held-out trips this is the best any generator can do on these
/// requests — the benchmark's noise floor. `None` where `d` is unreachable from `o`.
pub fn resample_routes(
    net: &RoadNetwork,
    cfg: &SimConfig,
    pairs: &[(usize, usize)],
    seed: u64,
) -> Vec<Option<Vec<usize>>> {
    let mut rng = StdRng::seed_from_u64(seed);
    pairs
        .iter()
        .map(|&(o, d)| {
            (o < net.len() && d < net.len())
                .then(|| noisy_route(net, cfg, o, d, &mut rng))
                .flatten()
        })
        .collect()
}

/// Runs the simulator. Needs a network where the sampled destinations are reachable (import
/// with `largest_scc`); unreachable pairs are redrawn.
pub fn simulate(net: &RoadNetwork, cfg: &SimConfig) -> Result<SimulatedTrips, TrajError> {
    if net.len() < 2 {
        return Err(TrajError::Config(
            "network needs at least 2 segments".into(),
        ));
    }
    if cfg.n_trips == 0
        || !(cfg.val_share >= 0.0 && cfg.test_share >= 0.0 && cfg.val_share + cfg.test_share < 1.0)
    {
        return Err(TrajError::Config(
            "n_trips must be > 0 and val_share + test_share in [0, 1)".into(),
        ));
    }
    let mut rng = StdRng::seed_from_u64(cfg.seed);
    let n = net.len();
    let centroids = net.centroids_xy();
    let r2 = cfg.density_radius_m.powi(2);
    let attraction: Vec<f64> = (0..n)
        .map(|i| {
            let dens = net.rtree.locate_within_distance(centroids[i], r2).count() as f64;
            net.segments[i].length_m * (1.0 + dens)
        })
        .collect();
    let cum: Vec<f64> = attraction
        .iter()
        .scan(0.0, |acc, w| {
            *acc += w;
            Some(*acc)
        })
        .collect();
    let total = cum[n - 1];
    let draw = |rng: &mut StdRng| -> usize {
        let u = rng.random::<f64>() * total;
        cum.partition_point(|&c| c <= u).min(n - 1)
    };
    let dist = |a: usize, b: usize| {
        let (p, q) = (centroids[a], centroids[b]);
        ((p[0] - q[0]).powi(2) + (p[1] - q[1]).powi(2)).sqrt()
    };

    let bar = crate::progress_bar(cfg.n_trips as u64, "simulate");
    let mut trips = Vec::with_capacity(cfg.n_trips);
    let (mut not_shortest, mut not_fastest) = (0usize, 0usize);
    let mut attempts = 0usize;
    while trips.len() < cfg.n_trips {
        attempts += 1;
        if attempts > cfg.n_trips * 20 + 1000 {
            return Err(TrajError::Config(format!(
                "could not draw enough trips: the network may be too small for min_trip_m = {} m",
                cfg.min_trip_m
            )));
        }
        let o = draw(&mut rng);
        let pool: Vec<usize> = (0..cfg.od_pool.max(1))
            .map(|_| draw(&mut rng))
            .filter(|&d| d != o && dist(o, d) >= cfg.min_trip_m)
            .collect();
        if pool.is_empty() {
            continue;
        }
        let w: Vec<f64> = pool
            .iter()
            .map(|&d| (-dist(o, d) / cfg.distance_scale_m).exp())
            .collect();
        let wsum: f64 = w.iter().sum();
        let mut u = rng.random::<f64>() * wsum;
        let mut d = pool[pool.len() - 1];
        for (k, wk) in w.iter().enumerate() {
            if u < *wk {
                d = pool[k];
                break;
            }
            u -= wk;
        }
        let Some(route) = noisy_route(net, cfg, o, d, &mut rng) else {
            continue;
        };
        let shortest = best_route(net, o, d, RouteCost::Distance, &cfg.turn_penalty_s, None);
        let fastest = best_route(net, o, d, RouteCost::Time, &cfg.turn_penalty_s, None);
        not_shortest += (shortest.as_ref() != Some(&route)) as usize;
        not_fastest += (fastest.as_ref() != Some(&route)) as usize;
        let dep = departure_second(&mut rng);
        let slow = congestion(dep);
        let mut t = dep;
        let times = route
            .iter()
            .map(|&s| {
                let at = cfg.day_start + t as i64;
                t += net.segments[s].travel_time_s() * slow * (0.15 * normal(&mut rng)).exp();
                at
            })
            .collect();
        trips.push(Trip {
            route,
            times: Some(times),
        });
        bar.inc(1);
    }
    bar.finish_and_clear();
    let k = trips.len() as f64;
    let stats = SimStats {
        trips: trips.len(),
        share_not_shortest_distance: not_shortest as f64 / k,
        share_not_fastest: not_fastest as f64 / k,
        mean_length_m: trips
            .iter()
            .map(|t| net.route_length_m(&t.route))
            .sum::<f64>()
            / k,
        mean_segments: trips.iter().map(|t| t.route.len() as f64).sum::<f64>() / k,
        max_segments: trips.iter().map(|t| t.route.len()).max().unwrap_or(0),
    };
    // Split by trip: a seeded shuffle, then val, test, train.
    for i in (1..trips.len()).rev() {
        let j = rng.random_range(0..=i);
        trips.swap(i, j);
    }
    let n_val = (k * cfg.val_share).round() as usize;
    let n_test = (k * cfg.test_share).round() as usize;
    let test = trips.split_off(trips.len() - n_test);
    let val = trips.split_off(trips.len() - n_val);
    Ok(SimulatedTrips {
        train: trips,
        val,
        test,
        stats,
    })
}
