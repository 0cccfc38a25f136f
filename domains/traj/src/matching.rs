//! HMM map matching (Newson & Krumm 2009): GPS points → a connected segment sequence.
//!
//! - Candidates: segments within `radius_m` of each point, from the network's R-tree (at most
//!   `max_candidates`, nearest first).
//! - Emission: Gaussian on the point–segment distance, `N(d; 0, sigma_m)`.
//! - Transition: exponential on `|route distance − great-circle distance|` with scale `beta_m`,
//!   route distances from a bounded Dijkstra over the segment graph (from the projection on
//!   the previous candidate to the projection on the next one).
//! - Viterbi in log space; the matched candidates are joined by their shortest routes.
//!   Points without any candidate are skipped; a trace with too few matchable points is an
//!   error naming how many points lie off the map.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::error::TrajError;
use crate::network::{Candidate, RoadNetwork};
use crate::simulate::normal;

/// One GPS fix.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct GpsPoint {
    /// Longitude, degrees.
    pub lon: f64,
    /// Latitude, degrees.
    pub lat: f64,
    /// Time, seconds (any origin).
    pub t: f64,
}

/// Matcher settings.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MatchConfig {
    /// GPS noise σ, metres (emission).
    pub sigma_m: f64,
    /// Transition scale β, metres.
    pub beta_m: f64,
    /// Candidate search radius, metres.
    pub radius_m: f64,
    /// Candidates kept per point.
    pub max_candidates: usize,
    /// Route search limit: great-circle distance × this + `route_slack_m`.
    pub route_factor: f64,
    /// See `route_factor`.
    pub route_slack_m: f64,
    /// Fixes closer than this to the last kept fix are skipped (Newson & Krumm use 2σ).
    pub min_fix_spacing_m: f64,
    /// A fix this far behind the previous one on the same segment still counts as staying
    /// on it (GPS noise), rather than as a loop around the block.
    pub backtrack_tolerance_m: f64,
}

impl MatchConfig {
    /// Settings for a given GPS noise level: radius 4σ (at least 50 m).
    pub fn for_sigma(sigma_m: f64) -> Self {
        Self {
            sigma_m,
            beta_m: 30.0,
            radius_m: (4.0 * sigma_m).max(50.0),
            max_candidates: 40,
            route_factor: 4.0,
            route_slack_m: 400.0,
            min_fix_spacing_m: 2.0 * sigma_m,
            backtrack_tolerance_m: f64::INFINITY,
        }
    }
}

impl Default for MatchConfig {
    fn default() -> Self {
        Self::for_sigma(20.0)
    }
}

#[derive(Clone, Copy, PartialEq)]
struct HeapItem(f64, usize);
impl Eq for HeapItem {}
impl Ord for HeapItem {
    fn cmp(&self, o: &Self) -> Ordering {
        o.0.total_cmp(&self.0).then(o.1.cmp(&self.1))
    }
}
impl PartialOrd for HeapItem {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}

/// Dijkstra from the end of `src` over whole segments, up to `limit` metres. Returns, per
/// reached segment, the distance from `src`'s end to that segment's start and the previous
/// segment on the way.
fn bounded_dijkstra(net: &RoadNetwork, src: usize, limit: f64) -> HashMap<usize, (f64, usize)> {
    let mut best: HashMap<usize, (f64, usize)> = HashMap::new();
    let mut heap = BinaryHeap::new();
    for &b in &net.successors[src] {
        best.insert(b, (0.0, src));
        heap.push(HeapItem(0.0, b));
    }
    while let Some(HeapItem(d, s)) = heap.pop() {
        if best.get(&s).is_some_and(|&(bd, _)| d > bd) {
            continue;
        }
        let nd = d + net.segments[s].length_m;
        if nd > limit {
            continue;
        }
        for &b in &net.successors[s] {
            if best.get(&b).is_none_or(|&(bd, _)| nd < bd) {
                best.insert(b, (nd, s));
                heap.push(HeapItem(nd, b));
            }
        }
    }
    best
}

fn path_to(tree: &HashMap<usize, (f64, usize)>, src: usize, dst: usize) -> Vec<usize> {
    let mut path = vec![dst];
    let mut cur = dst;
    while cur != src {
        let Some(&(_, prev)) = tree.get(&cur) else {
            break;
        };
        if prev == src {
            break;
        }
        path.push(prev);
        cur = prev;
    }
    path.reverse();
    path
}

/// Matches a GPS trace to a connected segment sequence.
pub fn match_trace(
    net: &RoadNetwork,
    points: &[GpsPoint],
    cfg: &MatchConfig,
) -> Result<Vec<usize>, TrajError> {
    if points.is_empty() {
        return Err(TrajError::Matching("no GPS points".into()));
    }
    if let Some((i, _)) = points.iter().enumerate().find(|(_, p)| {
        !(p.lon.is_finite() && p.lat.is_finite() && p.lon.abs() <= 180.0 && p.lat.abs() <= 90.0)
    }) {
        return Err(TrajError::Matching(format!(
            "point {i} has invalid coordinates"
        )));
    }
    // Newson & Krumm: fixes within 2σ of the last kept one add noise, not information.
    let mut kept: Vec<usize> = Vec::new();
    for (i, p) in points.iter().enumerate() {
        let close = kept.last().is_some_and(|&k| {
            let q = points[k];
            crate::metrics::haversine_km([p.lon, p.lat], [q.lon, q.lat]) * 1000.0
                < cfg.min_fix_spacing_m
        });
        if !close || i + 1 == points.len() {
            kept.push(i);
        }
    }
    let mut layers: Vec<(usize, Vec<Candidate>)> = Vec::new();
    for (i, p) in kept.iter().map(|&i| (i, &points[i])) {
        let mut c = net.candidates([p.lon, p.lat], cfg.radius_m);
        c.truncate(cfg.max_candidates);
        if !c.is_empty() {
            layers.push((i, c));
        }
    }
    let off = kept.len() - layers.len();
    if layers.is_empty() || off * 2 > kept.len() {
        let bb = net.bbox();
        return Err(TrajError::Matching(format!(
            "{off} of {} GPS points are more than {} m from every road: outside the map \
             (network bounds lon {:.4}..{:.4}, lat {:.4}..{:.4})?",
            points.len(),
            cfg.radius_m,
            bb[0],
            bb[2],
            bb[1],
            bb[3]
        )));
    }
    let ln_emit = |d: f64| -0.5 * (d / cfg.sigma_m).powi(2);
    // Viterbi.
    let mut score: Vec<f64> = layers[0].1.iter().map(|c| ln_emit(c.distance_m)).collect();
    let mut back: Vec<Vec<usize>> = vec![vec![usize::MAX; layers[0].1.len()]];
    let mut scores: Vec<Vec<f64>> = Vec::with_capacity(layers.len());
    // Route (segments between, exclusive) per layer transition for the chosen pairs.
    let mut links: Vec<HashMap<(usize, usize), Vec<usize>>> = vec![HashMap::new()];
    for l in 1..layers.len() {
        let (pi, prev) = (&layers[l - 1].0, &layers[l - 1].1);
        let (ci, cur) = (&layers[l].0, &layers[l].1);
        let (p, q) = (points[*pi], points[*ci]);
        let gc = crate::metrics::haversine_km([p.lon, p.lat], [q.lon, q.lat]) * 1000.0;
        let limit = gc * cfg.route_factor + cfg.route_slack_m;
        let mut new_score = vec![f64::NEG_INFINITY; cur.len()];
        let mut new_back = vec![usize::MAX; cur.len()];
        let mut link = HashMap::new();
        for (a, ca) in prev.iter().enumerate() {
            if !score[a].is_finite() {
                continue;
            }
            let tree = bounded_dijkstra(net, ca.segment, limit);
            for (b, cb) in cur.iter().enumerate() {
                // Same segment, not clearly backwards (GPS noise may put a fix slightly behind
                // the previous one): the car stayed on it.
                let stay = ca.segment == cb.segment
                    && cb.offset_m + cfg.backtrack_tolerance_m >= ca.offset_m;
                let route_d = if stay {
                    Some((cb.offset_m - ca.offset_m).max(0.0))
                } else {
                    tree.get(&cb.segment).map(|&(d, _)| {
                        net.segments[ca.segment].length_m - ca.offset_m + d + cb.offset_m
                    })
                };
                let Some(rd) = route_d else { continue };
                let s = score[a] - (rd - gc).abs() / cfg.beta_m + ln_emit(cb.distance_m);
                if s > new_score[b] {
                    new_score[b] = s;
                    new_back[b] = a;
                    if !stay {
                        link.insert((a, b), path_to(&tree, ca.segment, cb.segment));
                    }
                }
            }
        }
        if new_score.iter().all(|s| !s.is_finite()) {
            // HMM break (no route within the limit): restart from this layer's emissions, as
            // Newson & Krumm do at gaps.
            new_score = cur.iter().map(|c| ln_emit(c.distance_m)).collect();
        }
        scores.push(std::mem::replace(&mut score, new_score));
        back.push(new_back);
        links.push(link);
    }
    scores.push(score);
    // Backtrack.
    let argmax = |s: &[f64]| {
        (0..s.len())
            .max_by(|&a, &b| s[a].total_cmp(&s[b]))
            .expect("non-empty layer")
    };
    let mut idx = argmax(&scores[layers.len() - 1]);
    let mut chosen = vec![0usize; layers.len()];
    for l in (0..layers.len()).rev() {
        chosen[l] = idx;
        let b = back[l][idx];
        if b == usize::MAX {
            if l > 0 {
                // A break: continue from the best state of the previous layer.
                idx = argmax(&scores[l - 1]);
            }
        } else {
            idx = b;
        }
    }
    let mut route: Vec<usize> = Vec::new();
    let push = |s: usize, route: &mut Vec<usize>| {
        if route.last() != Some(&s) {
            route.push(s);
        }
    };
    for l in 0..layers.len() {
        let seg = layers[l].1[chosen[l]].segment;
        if l > 0 {
            if let Some(mid) = links[l].get(&(chosen[l - 1], chosen[l])) {
                for &s in mid.iter().filter(|&&s| s != seg) {
                    push(s, &mut route);
                }
            }
        }
        push(seg, &mut route);
    }
    Ok(route)
}

/// A synthetic GPS trace and the part of the route it covers.
#[derive(Clone, Debug)]
pub struct SyntheticTrace {
    /// The fixes.
    pub points: Vec<GpsPoint>,
    /// The route from the segment of the first fix to the segment of the last one: what a
    /// matcher can recover (segments driven before the first fix leave no trace).
    pub covered: Vec<usize>,
}

/// Synthesises a GPS trace along a known route: constant speed per segment (its free-flow
/// speed), a fix every `interval_s` seconds starting at a random phase, Gaussian noise of
/// `sigma_m` metres per axis.
pub fn synthesize_gps(
    net: &RoadNetwork,
    route: &[usize],
    interval_s: f64,
    sigma_m: f64,
    seed: u64,
) -> SyntheticTrace {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut points = Vec::new();
    let (mut first, mut last) = (None, 0);
    let mut t = 0.0;
    let mut next_fix = rng.random::<f64>() * interval_s;
    for (k, &s) in route.iter().enumerate() {
        let seg = &net.segments[s];
        let dur = seg.travel_time_s();
        while next_fix < t + dur {
            let along = (next_fix - t) / dur * seg.length_m;
            let xy = net.projection.to_xy(net.point_along(s, along));
            let noisy = [
                xy[0] + sigma_m * normal(&mut rng),
                xy[1] + sigma_m * normal(&mut rng),
            ];
            let q = net.projection.to_lonlat(noisy);
            points.push(GpsPoint {
                lon: q[0],
                lat: q[1],
                t: next_fix,
            });
            first.get_or_insert(k);
            last = k;
            next_fix += interval_s;
        }
        t += dur;
    }
    let covered = first.map_or(Vec::new(), |f| route[f..=last].to_vec());
    SyntheticTrace { points, covered }
}

/// Segment-level agreement of a matched route with the true one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RouteAgreement {
    /// Accuracy (recall): longest common subsequence / true segments — the share of the true
    /// route's segments recovered, in order.
    pub accuracy: f64,
    /// Precision: longest common subsequence / matched segments.
    pub precision: f64,
}

fn lcs(a: &[usize], b: &[usize]) -> usize {
    let mut prev = vec![0usize; b.len() + 1];
    for &x in a {
        let mut cur = vec![0usize; b.len() + 1];
        for (j, &y) in b.iter().enumerate() {
            cur[j + 1] = if x == y {
                prev[j] + 1
            } else {
                cur[j].max(prev[j + 1])
            };
        }
        prev = cur;
    }
    prev[b.len()]
}

/// Compares a matched route with the truth. See [`RouteAgreement`].
pub fn route_agreement(truth: &[usize], matched: &[usize]) -> RouteAgreement {
    let l = lcs(truth, matched) as f64;
    RouteAgreement {
        accuracy: if truth.is_empty() {
            1.0
        } else {
            l / truth.len() as f64
        },
        precision: if matched.is_empty() {
            1.0
        } else {
            l / matched.len() as f64
        },
    }
}

/// Mean agreement of matching synthetic traces of `routes` at one noise level and interval.
pub fn evaluate_matching(
    net: &RoadNetwork,
    routes: &[Vec<usize>],
    sigma_m: f64,
    interval_s: f64,
    seed: u64,
) -> Result<RouteAgreement, TrajError> {
    let mut sum = RouteAgreement::default();
    let mut n = 0.0;
    for (i, r) in routes.iter().enumerate() {
        let tr = synthesize_gps(net, r, interval_s, sigma_m, seed.wrapping_add(i as u64));
        if tr.points.is_empty() {
            continue;
        }
        let m = match_trace(net, &tr.points, &MatchConfig::for_sigma(sigma_m))?;
        let a = route_agreement(&tr.covered, &m);
        sum.accuracy += a.accuracy;
        sum.precision += a.precision;
        n += 1.0;
    }
    if n == 0.0 {
        return Err(TrajError::Matching("no routes to evaluate".into()));
    }
    Ok(RouteAgreement {
        accuracy: sum.accuracy / n,
        precision: sum.precision / n,
    })
}

/// Reads GPS points from a CSV with columns `lon,lat` and optionally `t` (or `time`,
/// `timestamp`: seconds, or `YYYY-MM-DDTHH:MM:SSZ`); an optional `traj_id` column splits the
/// file into traces (in order of first appearance).
pub fn read_gps_csv(path: &std::path::Path) -> Result<Vec<(String, Vec<GpsPoint>)>, TrajError> {
    let f = std::fs::File::open(path).map_err(|e| TrajError::io(path, e))?;
    let mut rd = csv::ReaderBuilder::new().flexible(true).from_reader(f);
    let fmt = |line: usize, message: String| TrajError::Format {
        path: path.to_path_buf(),
        line,
        message,
    };
    let headers = rd.headers().map_err(|e| fmt(1, e.to_string()))?.clone();
    let col = |names: &[&str]| {
        headers
            .iter()
            .position(|h| names.contains(&h.trim().to_ascii_lowercase().as_str()))
    };
    let c_lon = col(&["lon", "lng", "longitude", "x"])
        .ok_or_else(|| fmt(1, "missing column `lon`".into()))?;
    let c_lat =
        col(&["lat", "latitude", "y"]).ok_or_else(|| fmt(1, "missing column `lat`".into()))?;
    let c_t = col(&["t", "time", "timestamp"]);
    let c_id = col(&["traj_id", "trip_id", "id"]);
    let mut traces: Vec<(String, Vec<GpsPoint>)> = Vec::new();
    for (k, rec) in rd.records().enumerate() {
        let line = k + 2;
        let rec = rec.map_err(|e| fmt(line, e.to_string()))?;
        let num = |c: usize, name: &str| -> Result<f64, TrajError> {
            let v = rec.get(c).unwrap_or("").trim();
            v.parse::<f64>()
                .ok()
                .filter(|x| x.is_finite())
                .ok_or_else(|| fmt(line, format!("{name} `{v}` is not a finite number")))
        };
        let (lon, lat) = (num(c_lon, "lon")?, num(c_lat, "lat")?);
        if lon.abs() > 180.0 || lat.abs() > 90.0 {
            return Err(fmt(
                line,
                format!("({lon}, {lat}) is not a lon/lat position"),
            ));
        }
        let t = match c_t.and_then(|c| rec.get(c)).map(str::trim) {
            None | Some("") => k as f64,
            Some(v) => v
                .parse::<f64>()
                .ok()
                .or_else(|| crate::trip::parse_iso(v).map(|s| s as f64))
                .ok_or_else(|| fmt(line, format!("time `{v}` is neither seconds nor ISO 8601")))?,
        };
        let id = c_id
            .and_then(|c| rec.get(c))
            .unwrap_or("0")
            .trim()
            .to_string();
        match traces.iter_mut().find(|(i, _)| *i == id) {
            Some((_, pts)) => pts.push(GpsPoint { lon, lat, t }),
            None => traces.push((id, vec![GpsPoint { lon, lat, t }])),
        }
    }
    if traces.is_empty() {
        return Err(fmt(0, "no GPS points".into()));
    }
    Ok(traces)
}
