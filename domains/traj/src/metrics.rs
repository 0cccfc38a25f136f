//! HOSER's trajectory-generation metrics: JSD of trip distance and of radius of
//! gyration, and Hausdorff / DTW / EDR on trips that share an origin–destination
//! grid-cell pair.
//!
//! The definitions follow HOSER's evaluation notebook
//! (`evaluation/main.ipynb` and `evaluation/map_manager.py` in
//! github.com/caoji2001/HOSER, "Holistic Semantic Representation for Navigational
//! Trajectory Generation", AAAI 2025; TrajDLM reuses this evaluation). Where this
//! module departs from it, the item's documentation says so. In short:
//!
//! * **Points.** A trip is a sequence of `(lon, lat)` points in degrees. HOSER
//!   uses one point per road segment (the segment's centroid); callers that want
//!   numbers comparable with HOSER's tables should pass those centroids. DTW in
//!   particular is a *sum* over the warping path, so it grows with point density.
//! * **Distance.** Great-circle (haversine) distance with the mean Earth radius
//!   [`EARTH_RADIUS_KM`] (HOSER: `geopy.distance.great_circle`, same radius). HOSER's
//!   Hausdorff and DTW use a 6378 km radius and its EDR 6378.137 km; this module
//!   uses one radius throughout, so its Hausdorff and DTW values are 0.11% smaller
//!   than HOSER's for the same input (multiply by `6378 / 6371.0088` to compare).
//! * **JSD.** Histograms over `bins` bins whose edges are `linspace(0, max, bins)`
//!   plus `+inf` (numpy semantics), with `max` from the *real* values only: so
//!   `bins - 1` equal bins over `[0, max)` and one overflow bin `[max, +inf]`.
//!   Natural logarithm, no smoothing (0·ln 0 terms are skipped): `0 ≤ JSD ≤ ln 2`.
//! * **OD pairs.** Trips are grouped by the grid cells of their first and last
//!   points; for every OD key of the generated set that the real set also has,
//!   the `i`-th generated trip of that key is compared with the `i`-th real trip of
//!   that key, for `i < min(#real, #generated)` (HOSER's pairing), and each
//!   measure is averaged over all compared pairs.

use std::collections::HashMap;

use serde::{Deserialize, Deserializer, Serialize};

use crate::error::TrajError;

/// A trip: its points as `[lon, lat]` in degrees, in travel order.
pub type Trip = Vec<[f64; 2]>;

/// Mean Earth radius in km (IUGG), the radius of `geopy.distance.great_circle`
/// that HOSER uses for trip distance and radius of gyration.
pub const EARTH_RADIUS_KM: f64 = 6371.0088;

/// A point prepared for repeated haversine evaluations (radians, cached cosine).
#[derive(Clone, Copy, Debug)]
struct Prepared {
    lon: f64,
    lat: f64,
    cos_lat: f64,
}

impl Prepared {
    fn new(p: [f64; 2]) -> Self {
        let lat = p[1].to_radians();
        Self {
            lon: p[0].to_radians(),
            lat,
            cos_lat: lat.cos(),
        }
    }
}

fn haversine_prepared(a: &Prepared, b: &Prepared) -> f64 {
    let s_lat = ((b.lat - a.lat) * 0.5).sin();
    let s_lon = ((b.lon - a.lon) * 0.5).sin();
    let h = (s_lat * s_lat + a.cos_lat * b.cos_lat * s_lon * s_lon).clamp(0.0, 1.0);
    2.0 * EARTH_RADIUS_KM * h.sqrt().asin()
}

fn prepare(t: &[[f64; 2]]) -> Vec<Prepared> {
    t.iter().map(|&p| Prepared::new(p)).collect()
}

/// Great-circle distance in km between two `[lon, lat]` points in degrees
/// (haversine formula, radius [`EARTH_RADIUS_KM`]). One degree of latitude is
/// about 111.195 km.
pub fn haversine_km(a: [f64; 2], b: [f64; 2]) -> f64 {
    haversine_prepared(&Prepared::new(a), &Prepared::new(b))
}

/// Length of a trip in km: the sum of the haversine distances between
/// consecutive points. A trip with fewer than two points has length 0.
///
/// HOSER sums the distances between consecutive road-segment centroids.
pub fn trip_distance_km(t: &[[f64; 2]]) -> f64 {
    t.windows(2).map(|w| haversine_km(w[0], w[1])).sum()
}

/// Radius of gyration of a trip in km, with HOSER's definition: the **mean**
/// haversine distance of the points from their centroid, the centroid being the
/// arithmetic mean of the longitudes and of the latitudes.
///
/// Note that this is HOSER's choice (`np.mean` of the distances), not the
/// textbook root-mean-square `sqrt(mean(d²))`. An empty or one-point trip has
/// radius 0. The centroid is not meaningful for trips that cross the antimeridian.
pub fn radius_of_gyration_km(t: &[[f64; 2]]) -> f64 {
    if t.is_empty() {
        return 0.0;
    }
    let n = t.len() as f64;
    let lon = t.iter().map(|p| p[0]).sum::<f64>() / n;
    let lat = t.iter().map(|p| p[1]).sum::<f64>() / n;
    let c = Prepared::new([lon, lat]);
    t.iter()
        .map(|&p| haversine_prepared(&c, &Prepared::new(p)))
        .sum::<f64>()
        / n
}

/// Bin counts with numpy's `histogram(values, linspace(0, max, bins) ++ [inf])`
/// semantics: bins `0..bins-1` are `[i·w, (i+1)·w)` with `w = max / (bins-1)`,
/// the last bin is `[max, +inf]`. Negative and NaN values are not counted.
/// Requires `bins >= 2`.
fn histogram(values: &[f64], max: f64, bins: usize) -> Vec<f64> {
    let mut counts = vec![0.0; bins];
    let finite_bins = bins - 1;
    let step = max / finite_bins as f64;
    for &v in values {
        if v.is_nan() || v < 0.0 {
            continue;
        }
        let k = if v >= max {
            finite_bins
        } else {
            // Edge i is i·step (numpy's linspace); correct the float division so
            // that edges[k] <= v < edges[k+1] holds exactly as numpy would find it.
            let mut k = ((v / step).floor() as usize).min(finite_bins - 1);
            while k > 0 && v < k as f64 * step {
                k -= 1;
            }
            while k + 1 < finite_bins && v >= (k + 1) as f64 * step {
                k += 1;
            }
            k
        };
        counts[k] += 1.0;
    }
    counts
}

/// Jensen–Shannon divergence (natural log) of two discrete distributions given as
/// unnormalised counts. Returns `None` when either has no mass.
fn jsd_counts(p: &[f64], q: &[f64]) -> Option<f64> {
    let sp: f64 = p.iter().sum();
    let sq: f64 = q.iter().sum();
    if sp <= 0.0 || sq <= 0.0 {
        return None;
    }
    let mut kl_p = 0.0;
    let mut kl_q = 0.0;
    for (&a, &b) in p.iter().zip(q) {
        let (a, b) = (a / sp, b / sq);
        let m = 0.5 * (a + b);
        if a > 0.0 {
            kl_p += a * (a / m).ln();
        }
        if b > 0.0 {
            kl_q += b * (b / m).ln();
        }
    }
    Some((0.5 * kl_p + 0.5 * kl_q).clamp(0.0, std::f64::consts::LN_2))
}

/// Jensen–Shannon divergence between the histograms of `real` and `generated`
/// values, with HOSER's binning.
///
/// The bin edges are `linspace(0, max, bins)` followed by `+inf`, where `max` is
/// the largest finite value of `real`; so `bins - 1` equal-width bins cover
/// `[0, max)` and the last bin `[max, +inf]` collects `max` itself and everything
/// larger (with `bins = 100` this is exactly HOSER's histogram). Both histograms
/// are normalised to probabilities and the JSD uses the natural logarithm with no
/// smoothing (0·ln 0 terms are skipped), so `0 ≤ JSD ≤ ln 2`.
///
/// Negative and NaN values are ignored (numpy drops values below the first edge).
/// Edge cases: `bins < 2` puts everything in one bin and gives 0; if neither side
/// has a counted value the result is 0, if only one side has none it is `ln 2`.
pub fn jsd_of_values(real: &[f64], generated: &[f64], bins: usize) -> f64 {
    if bins < 2 {
        return 0.0;
    }
    let max = real
        .iter()
        .copied()
        .filter(|v| v.is_finite() && *v >= 0.0)
        .fold(f64::NEG_INFINITY, f64::max);
    let max = if max.is_finite() { max } else { 0.0 };
    let p = histogram(real, max, bins);
    let q = histogram(generated, max, bins);
    match jsd_counts(&p, &q) {
        Some(j) => j,
        None => {
            let empty_p = p.iter().sum::<f64>() <= 0.0;
            let empty_q = q.iter().sum::<f64>() <= 0.0;
            if empty_p && empty_q {
                0.0
            } else {
                std::f64::consts::LN_2
            }
        }
    }
}

/// Symmetric Hausdorff distance over an `n × m` cost function.
fn hausdorff_with(n: usize, m: usize, d: impl Fn(usize, usize) -> f64) -> f64 {
    if n == 0 && m == 0 {
        return 0.0;
    }
    if n == 0 || m == 0 {
        return f64::INFINITY;
    }
    let mut cmax: f64 = 0.0;
    // Directed a → b, then b → a; the early exit (a row whose running minimum is
    // already below the current maximum cannot raise it) keeps the result exact.
    for i in 0..n {
        let mut cmin = f64::INFINITY;
        for j in 0..m {
            cmin = cmin.min(d(i, j));
            if cmin < cmax {
                break;
            }
        }
        cmax = cmax.max(cmin);
    }
    for j in 0..m {
        let mut cmin = f64::INFINITY;
        for i in 0..n {
            cmin = cmin.min(d(i, j));
            if cmin < cmax {
                break;
            }
        }
        cmax = cmax.max(cmin);
    }
    cmax
}

/// Exact DTW over an `n × m` cost function, two rows of memory.
fn dtw_with(n: usize, m: usize, d: impl Fn(usize, usize) -> f64) -> f64 {
    if n == 0 && m == 0 {
        return 0.0;
    }
    if n == 0 || m == 0 {
        return f64::INFINITY;
    }
    let mut prev = vec![f64::INFINITY; m + 1];
    let mut cur = vec![f64::INFINITY; m + 1];
    prev[0] = 0.0;
    for i in 0..n {
        cur[0] = f64::INFINITY;
        for j in 0..m {
            let best = prev[j].min(prev[j + 1]).min(cur[j]);
            cur[j + 1] = d(i, j) + best;
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[m]
}

/// EDR over an `n × m` "points match" predicate, normalised by `max(n, m)`.
fn edr_with(n: usize, m: usize, matches: impl Fn(usize, usize) -> bool) -> f64 {
    let longest = n.max(m);
    if longest == 0 {
        return 0.0;
    }
    let mut prev: Vec<usize> = (0..=m).collect();
    let mut cur = vec![0usize; m + 1];
    for i in 1..=n {
        cur[0] = i;
        for j in 1..=m {
            let sub = usize::from(!matches(i - 1, j - 1));
            cur[j] = (cur[j - 1] + 1).min(prev[j] + 1).min(prev[j - 1] + sub);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[m] as f64 / longest as f64
}

/// Symmetric Hausdorff distance in km between the point sets of two trips,
/// with haversine point distances: the largest distance from a point of one
/// trip to the nearest point of the other.
///
/// HOSER uses `hausdorff.hausdorff_distance(..., distance="haversine")`, whose
/// Earth radius is 6378 km (see the module documentation). Two empty trips give
/// 0; one empty trip gives `+inf`.
pub fn hausdorff_km(a: &[[f64; 2]], b: &[[f64; 2]]) -> f64 {
    let (pa, pb) = (prepare(a), prepare(b));
    hausdorff_with(pa.len(), pb.len(), |i, j| {
        haversine_prepared(&pa[i], &pb[j])
    })
}

/// Dynamic time warping distance in km: the minimum, over monotone warping paths
/// from `(0, 0)` to `(n-1, m-1)` with steps (1,0), (0,1), (1,1), of the sum of the
/// haversine distances of the matched points.
///
/// This is exact DTW; HOSER calls `fastdtw` (radius 1), an approximation that is
/// never smaller than exact DTW. Two empty trips give 0; one empty trip `+inf`.
pub fn dtw_km(a: &[[f64; 2]], b: &[[f64; 2]]) -> f64 {
    let (pa, pb) = (prepare(a), prepare(b));
    dtw_with(pa.len(), pb.len(), |i, j| {
        haversine_prepared(&pa[i], &pb[j])
    })
}

/// Edit distance on real sequences, normalised by `max(len(a), len(b))`, so in
/// `[0, 1]`: insertions and deletions cost 1, a substitution costs 0 when the two
/// points are strictly closer than `eps_km` (haversine) and 1 otherwise.
///
/// HOSER uses a 100 m threshold (`eps_km = 0.1`) and the strict `<`, so with
/// `eps_km <= 0` no points ever match. Two empty trips give 0.
pub fn edr(a: &[[f64; 2]], b: &[[f64; 2]], eps_km: f64) -> f64 {
    let (pa, pb) = (prepare(a), prepare(b));
    edr_with(pa.len(), pb.len(), |i, j| {
        haversine_prepared(&pa[i], &pb[j]) < eps_km
    })
}

/// Settings of [`compare`].
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MetricsConfig {
    /// Number of histogram bins for the JSDs, the overflow bin `[max, +inf]`
    /// included (HOSER: 100). At least 2.
    pub bins: usize,
    /// Side of the square OD grid cells in metres (HOSER: 200).
    pub od_cell_m: f64,
    /// EDR matching threshold in km (HOSER: 0.1, i.e. 100 m). Must be positive.
    pub edr_eps_km: f64,
    /// Cap on the number of OD-pair comparisons (HOSER has none). Pairs are taken
    /// in order: generated OD keys by first appearance in the generated set, and
    /// within a key by trip order. 0 skips the pair measures (they become NaN);
    /// `usize::MAX` compares every available pair.
    pub max_pairs: usize,
}

impl Default for MetricsConfig {
    /// HOSER's settings (100 bins, 200 m cells, 100 m EDR threshold) with a cap of
    /// 5000 OD-pair comparisons.
    fn default() -> Self {
        Self {
            bins: 100,
            od_cell_m: 200.0,
            edr_eps_km: 0.1,
            max_pairs: 5000,
        }
    }
}

/// Deserialises an `f64` that may have been written as `null` (serde_json writes
/// NaN and infinities as `null`), reading `null` back as NaN.
fn f64_or_nan<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

/// The metrics of a generated trip set against a real one (see [`compare`]).
///
/// Lower is better for every `f64` field. The pair measures are NaN when no OD
/// pair was compared (serialised to JSON as `null`, read back as NaN).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TripMetrics {
    /// JSD (natural log) of the trip-distance distributions.
    #[serde(deserialize_with = "f64_or_nan")]
    pub jsd_distance: f64,
    /// JSD (natural log) of the radius-of-gyration distributions.
    #[serde(deserialize_with = "f64_or_nan")]
    pub jsd_radius: f64,
    /// Mean Hausdorff distance in km over the compared OD pairs.
    #[serde(deserialize_with = "f64_or_nan")]
    pub hausdorff_km: f64,
    /// Mean DTW distance in km over the compared OD pairs.
    #[serde(deserialize_with = "f64_or_nan")]
    pub dtw_km: f64,
    /// Mean normalised EDR over the compared OD pairs.
    #[serde(deserialize_with = "f64_or_nan")]
    pub edr: f64,
    /// Number of (generated, real) trip pairs with the same OD cells that were
    /// compared (after the [`MetricsConfig::max_pairs`] cap).
    pub od_pairs_matched: usize,
    /// Number of generated trips.
    pub n_generated: usize,
    /// Number of real trips.
    pub n_real: usize,
}

fn check_trips(trips: &[Trip], which: &str) -> Result<(), TrajError> {
    if trips.is_empty() {
        return Err(TrajError::Config(format!("metrics: no {which} trips")));
    }
    for (k, t) in trips.iter().enumerate() {
        if t.is_empty() {
            return Err(TrajError::Config(format!(
                "metrics: {which} trip {k} has no points"
            )));
        }
        for (i, p) in t.iter().enumerate() {
            let ok = p[0].is_finite()
                && p[1].is_finite()
                && (-180.0..=180.0).contains(&p[0])
                && (-90.0..=90.0).contains(&p[1]);
            if !ok {
                return Err(TrajError::Config(format!(
                    "metrics: {which} trip {k} point {i} = [{}, {}] is not a finite \
                     [lon, lat] in degrees",
                    p[0], p[1]
                )));
            }
        }
    }
    Ok(())
}

fn check_config(cfg: &MetricsConfig) -> Result<(), TrajError> {
    if cfg.bins < 2 {
        return Err(TrajError::Config(format!(
            "metrics: bins = {} (need at least 2)",
            cfg.bins
        )));
    }
    if !(cfg.od_cell_m.is_finite() && cfg.od_cell_m > 0.0) {
        return Err(TrajError::Config(format!(
            "metrics: od_cell_m = {} (need a positive number of metres)",
            cfg.od_cell_m
        )));
    }
    if !(cfg.edr_eps_km.is_finite() && cfg.edr_eps_km > 0.0) {
        return Err(TrajError::Config(format!(
            "metrics: edr_eps_km = {} (need a positive number of km)",
            cfg.edr_eps_km
        )));
    }
    Ok(())
}

/// A square grid of cells of about `cell_m` metres, in degrees, anchored at the
/// south-west corner of the real points, with the longitude step taken at their
/// mean latitude.
struct OdGrid {
    lon0: f64,
    lat0: f64,
    dlon: f64,
    dlat: f64,
}

impl OdGrid {
    fn from_real(real: &[Trip], cell_m: f64) -> Self {
        let (mut lon0, mut lat0) = (f64::INFINITY, f64::INFINITY);
        let (mut lat_sum, mut n) = (0.0, 0usize);
        for p in real.iter().flatten() {
            lon0 = lon0.min(p[0]);
            lat0 = lat0.min(p[1]);
            lat_sum += p[1];
            n += 1;
        }
        let mean_lat = lat_sum / n.max(1) as f64;
        let km_per_deg = EARTH_RADIUS_KM.to_radians();
        let dlat = cell_m / 1000.0 / km_per_deg;
        // Keep the cells finite even right at a pole.
        let dlon = dlat / mean_lat.to_radians().cos().max(1e-6);
        Self {
            lon0,
            lat0,
            dlon,
            dlat,
        }
    }

    fn cell(&self, p: [f64; 2]) -> (i64, i64) {
        (
            ((p[0] - self.lon0) / self.dlon).floor() as i64,
            ((p[1] - self.lat0) / self.dlat).floor() as i64,
        )
    }

    fn od(&self, t: &[[f64; 2]]) -> ((i64, i64), (i64, i64)) {
        // Trips are checked non-empty before this is called.
        (self.cell(t[0]), self.cell(t[t.len() - 1]))
    }
}

/// Mean Hausdorff, DTW and EDR of one (real, generated) pair, sharing one cost
/// matrix (`buf` is reused between calls).
fn pair_measures(
    a: &[Prepared],
    b: &[Prepared],
    eps_km: f64,
    buf: &mut Vec<f64>,
) -> (f64, f64, f64) {
    let (n, m) = (a.len(), b.len());
    buf.clear();
    buf.reserve(n * m);
    for pa in a {
        for pb in b {
            buf.push(haversine_prepared(pa, pb));
        }
    }
    let c = &buf[..];
    let d = |i: usize, j: usize| c[i * m + j];
    (
        hausdorff_with(n, m, d),
        dtw_with(n, m, d),
        edr_with(n, m, |i, j| d(i, j) < eps_km),
    )
}

/// Compares generated trips with real (held-out) trips using HOSER's metrics.
///
/// * `jsd_distance` / `jsd_radius`: [`jsd_of_values`] of [`trip_distance_km`] /
///   [`radius_of_gyration_km`] over all trips, with `cfg.bins` bins and the range
///   taken from the real set.
/// * `hausdorff_km`, `dtw_km`, `edr`: each trip is keyed by the grid cells of its
///   first and last points, on a grid of `cfg.od_cell_m` cells (degrees derived at
///   the real points' mean latitude, anchored at their south-west corner; HOSER
///   uses a fixed per-city box instead). For each OD key of the generated set, in
///   order of first appearance, that the real set also has, the `i`-th generated
///   trip with that key is compared with the `i`-th real trip with that key, for
///   `i < min(#real, #generated)`, until `cfg.max_pairs` pairs have been compared.
///   Each measure is the mean over the compared pairs ([`hausdorff_km`], exact
///   [`dtw_km`], [`edr`] with `cfg.edr_eps_km`); NaN when none was compared.
///
/// Errors ([`TrajError::Config`]) on an empty trip set, a trip without points, a
/// point that is not a finite `[lon, lat]` in degrees (|lon| ≤ 180, |lat| ≤ 90;
/// this also catches most swapped `[lat, lon]` inputs), or invalid settings.
pub fn compare(
    real: &[Trip],
    generated: &[Trip],
    cfg: &MetricsConfig,
) -> Result<TripMetrics, TrajError> {
    check_config(cfg)?;
    check_trips(real, "real")?;
    check_trips(generated, "generated")?;

    let dist = |ts: &[Trip]| ts.iter().map(|t| trip_distance_km(t)).collect::<Vec<_>>();
    let rad = |ts: &[Trip]| {
        ts.iter()
            .map(|t| radius_of_gyration_km(t))
            .collect::<Vec<_>>()
    };
    let jsd_distance = jsd_of_values(&dist(real), &dist(generated), cfg.bins);
    let jsd_radius = jsd_of_values(&rad(real), &rad(generated), cfg.bins);

    let grid = OdGrid::from_real(real, cfg.od_cell_m);
    let mut real_by_od: HashMap<_, Vec<usize>> = HashMap::new();
    for (k, t) in real.iter().enumerate() {
        real_by_od.entry(grid.od(t)).or_default().push(k);
    }
    let mut gen_keys = Vec::new();
    let mut gen_by_od: HashMap<_, Vec<usize>> = HashMap::new();
    for (k, t) in generated.iter().enumerate() {
        let key = grid.od(t);
        gen_by_od
            .entry(key)
            .or_insert_with(|| {
                gen_keys.push(key);
                Vec::new()
            })
            .push(k);
    }

    let (mut h_sum, mut d_sum, mut e_sum, mut pairs) = (0.0, 0.0, 0.0, 0usize);
    let mut buf = Vec::new();
    'keys: for key in &gen_keys {
        let Some(reals) = real_by_od.get(key) else {
            continue;
        };
        let gens = &gen_by_od[key];
        for (&r, &g) in reals.iter().zip(gens) {
            if pairs >= cfg.max_pairs {
                break 'keys;
            }
            let (pr, pg) = (prepare(&real[r]), prepare(&generated[g]));
            let (h, d, e) = pair_measures(&pr, &pg, cfg.edr_eps_km, &mut buf);
            h_sum += h;
            d_sum += d;
            e_sum += e;
            pairs += 1;
        }
    }
    let mean = |s: f64| {
        if pairs == 0 {
            f64::NAN
        } else {
            s / pairs as f64
        }
    };

    Ok(TripMetrics {
        jsd_distance,
        jsd_radius,
        hausdorff_km: mean(h_sum),
        dtw_km: mean(d_sum),
        edr: mean(e_sum),
        od_pairs_matched: pairs,
        n_generated: generated.len(),
        n_real: real.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const LN2: f64 = std::f64::consts::LN_2;
    /// Length of one degree along a meridian.
    fn deg_km(deg: f64) -> f64 {
        EARTH_RADIUS_KM * deg.to_radians()
    }
    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol
    }

    #[test]
    fn haversine_one_degree_of_latitude() {
        let d = haversine_km([10.0, 45.0], [10.0, 46.0]);
        assert!(close(d, 111.195, 1e-3), "{d}");
        // One degree of longitude on the equator is the same length.
        assert!(close(haversine_km([0.0, 0.0], [1.0, 0.0]), 111.195, 1e-3));
        // At 60° latitude, a short east-west step is about half as long.
        let d60 = haversine_km([0.0, 60.0], [0.01, 60.0]);
        assert!(close(d60, deg_km(0.01) * 0.5, 1e-5), "{d60}");
        assert_eq!(haversine_km([3.0, 4.0], [3.0, 4.0]), 0.0);
    }

    #[test]
    fn distance_and_radius() {
        let t = vec![[0.0, 0.0], [0.0, 1.0], [0.0, 3.0]];
        assert!(close(trip_distance_km(&t), deg_km(3.0), 1e-9));
        assert_eq!(trip_distance_km(&[[1.0, 2.0]]), 0.0);
        assert_eq!(trip_distance_km(&[]), 0.0);
        // Points at latitudes 0, 0, 3: centroid at latitude 1, distances 1°, 1°,
        // 2°, so HOSER's mean radius is 4/3° (the RMS would be sqrt(2)°).
        let t = vec![[0.0, 0.0], [0.0, 0.0], [0.0, 3.0]];
        assert!(close(radius_of_gyration_km(&t), deg_km(4.0 / 3.0), 1e-9));
        assert_eq!(radius_of_gyration_km(&[[5.0, 5.0]]), 0.0);
        assert_eq!(radius_of_gyration_km(&[]), 0.0);
    }

    #[test]
    fn histogram_has_numpy_edges() {
        // bins = 3, max = 2: edges [0, 1, 2, inf] → [0,1), [1,2), [2,inf].
        let h = histogram(&[0.0, 0.5, 1.0, 1.99, 2.0, 7.0, -1.0, f64::NAN], 2.0, 3);
        assert_eq!(h, vec![2.0, 2.0, 2.0]);
        // numpy: np.histogram([0.3], np.linspace(0, 0.9, 4) ++ inf) puts 0.3 in
        // bin 1 (edge 0.3 is exactly 1 * 0.3).
        let h = histogram(&[0.3, 0.6], 0.9, 4);
        assert_eq!(h, vec![0.0, 1.0, 1.0, 0.0]);
        // All-zero real values: max = 0, everything lands in the overflow bin.
        assert_eq!(histogram(&[0.0, 0.0], 0.0, 3), vec![0.0, 0.0, 2.0]);
    }

    #[test]
    fn jsd_values() {
        let real = [1.0, 2.0, 3.0, 4.0, 10.0];
        assert_eq!(jsd_of_values(&real, &real, 100), 0.0);
        // Real values in bin 0 and the overflow bin, generated in a middle bin.
        let j = jsd_of_values(&[0.0, 10.0], &[5.0, 5.0], 100);
        assert!(close(j, LN2, 1e-12), "{j}");
        // p = (1/2, 0, .., 1/2), q = (1, 0, ..): m = (3/4, .., 1/4),
        // JSD = ½·[½ ln(2/3) + ½ ln 2] + ½·ln(4/3) = ¾ ln(4/3).
        let j = jsd_of_values(&[0.0, 10.0], &[0.0, 0.0], 100);
        assert!(close(j, 0.75 * (4.0f64 / 3.0).ln(), 1e-12), "{j}");
        // Symmetric in the counts once the bins are fixed.
        let j2 = jsd_of_values(&[0.0, 10.0], &[0.0, 0.0, 0.0, 0.0], 100);
        assert!(close(j, j2, 1e-12));
        // Graceful edge cases.
        assert_eq!(jsd_of_values(&[], &[], 100), 0.0);
        assert_eq!(jsd_of_values(&[1.0], &[], 100), LN2);
        assert_eq!(jsd_of_values(&[1.0], &[2.0], 1), 0.0);
    }

    #[test]
    fn hausdorff_values() {
        let line = [[0.0, 0.0], [0.0, 1.0]];
        // A point on one end of a line: the far endpoint is 1° away.
        let h = hausdorff_km(&[[0.0, 0.0]], &line);
        assert!(close(h, deg_km(1.0), 1e-9), "{h}");
        assert!(close(hausdorff_km(&line, &[[0.0, 0.0]]), h, 1e-12));
        assert_eq!(hausdorff_km(&line, &line), 0.0);
        // Point sets: [0,1,2]° vs [0,2]° → the middle point is 1° from both ends.
        let a = [[0.0, 0.0], [0.0, 1.0], [0.0, 2.0]];
        let b = [[0.0, 0.0], [0.0, 2.0]];
        assert!(close(hausdorff_km(&a, &b), deg_km(1.0), 1e-9));
        assert_eq!(hausdorff_km(&[], &[]), 0.0);
        assert_eq!(hausdorff_km(&line, &[]), f64::INFINITY);
    }

    #[test]
    fn dtw_values() {
        let a = [[0.0, 0.0], [0.0, 0.02]];
        let b = [[0.0, 0.0], [0.0, 0.01], [0.0, 0.02]];
        assert_eq!(dtw_km(&a, &a), 0.0);
        // Best path (0,0) (0,1)|(1,1) (1,2): the middle point costs 0.01°.
        let d = dtw_km(&a, &b);
        assert!(close(d, deg_km(0.01), 1e-9), "{d}");
        assert!(close(dtw_km(&b, &a), d, 1e-12));
        // Every point of a 2-point trip must match the single point: ½° + ½°.
        let d = dtw_km(&[[0.0, 0.0], [0.0, 1.0]], &[[0.0, 0.5]]);
        assert!(close(d, deg_km(1.0), 1e-9), "{d}");
        // 3 vs 2 points with none shared (latitudes 0, 0.2, 1.0 vs 0.1, 1.1).
        let a = [[0.0, 0.0], [0.0, 0.2], [0.0, 1.0]];
        let b = [[0.0, 0.1], [0.0, 1.1]];
        // Paths: (0,0)(1,0)(2,1) = 0.1 + 0.1 + 0.1 = 0.3° is optimal.
        assert!(close(dtw_km(&a, &b), deg_km(0.3), 1e-9));
        assert_eq!(dtw_km(&[], &[]), 0.0);
        assert_eq!(dtw_km(&a, &[]), f64::INFINITY);
    }

    #[test]
    fn edr_values() {
        let a = [[0.0, 0.0], [0.0, 0.01], [0.0, 0.02]];
        assert_eq!(edr(&a, &a, 0.1), 0.0);
        // 0.0005° ≈ 56 m < 100 m: all points match.
        let near: Vec<[f64; 2]> = a.iter().map(|p| [p[0], p[1] + 0.0005]).collect();
        assert_eq!(edr(&a, &near, 0.1), 0.0);
        let far: Vec<[f64; 2]> = a.iter().map(|p| [p[0] + 1.0, p[1]]).collect();
        assert_eq!(edr(&a, &far, 0.1), 1.0);
        // One deletion out of three.
        let b = [[0.0, 0.0], [0.0, 0.02]];
        assert!(close(edr(&a, &b, 0.1), 1.0 / 3.0, 1e-12));
        assert!(close(edr(&b, &a, 0.1), 1.0 / 3.0, 1e-12));
        // Different lengths, nothing matches: max(3, 1) edits / 3.
        assert_eq!(edr(&a, &[[5.0, 5.0]], 0.1), 1.0);
        // Strict threshold: 0 never matches.
        assert_eq!(edr(&a, &a, 0.0), 1.0);
        assert_eq!(edr(&[], &[], 0.1), 0.0);
        assert_eq!(edr(&a, &[], 0.1), 1.0);
    }

    /// A straight trip north from `start` with `n` points `step` degrees apart.
    fn trip(start: [f64; 2], n: usize, step: f64) -> Trip {
        (0..n)
            .map(|i| [start[0], start[1] + i as f64 * step])
            .collect()
    }

    fn sample_trips() -> Vec<Trip> {
        let mut t = vec![
            trip([116.30, 39.90], 5, 0.002),
            trip([116.35, 39.91], 8, 0.003),
            trip([116.40, 39.95], 3, 0.01),
        ];
        // Same OD as trip 0 but a detour in the middle.
        let mut detour = trip([116.30, 39.90], 5, 0.002);
        detour[2][0] += 0.005;
        t.push(detour);
        t.push(vec![[116.45, 39.92]]);
        t
    }

    #[test]
    fn compare_identical_sets_is_zero() {
        let trips = sample_trips();
        let m = compare(&trips, &trips, &MetricsConfig::default()).unwrap();
        assert_eq!(
            m,
            TripMetrics {
                jsd_distance: 0.0,
                jsd_radius: 0.0,
                hausdorff_km: 0.0,
                dtw_km: 0.0,
                edr: 0.0,
                od_pairs_matched: trips.len(),
                n_generated: trips.len(),
                n_real: trips.len(),
            }
        );
    }

    #[test]
    fn compare_pairs_by_od_cells() {
        let real = vec![
            trip([116.30, 39.90], 3, 0.01),
            trip([116.50, 39.90], 2, 0.01),
        ];
        // Same OD cells as real[0] (start and end within a few metres), a middle
        // point 0.0005° ≈ 43 m further east; plus a trip with an unseen OD.
        let mut g0 = trip([116.30, 39.90], 3, 0.01);
        g0[1][0] += 0.0005;
        let generated = vec![g0.clone(), trip([117.0, 40.5], 2, 0.01)];
        let m = compare(&real, &generated, &MetricsConfig::default()).unwrap();
        assert_eq!(m.od_pairs_matched, 1);
        assert_eq!((m.n_real, m.n_generated), (2, 2));
        let off = haversine_km(real[0][1], g0[1]);
        assert!(close(m.hausdorff_km, off, 1e-12));
        assert!(close(m.dtw_km, off, 1e-12));
        assert_eq!(m.edr, 0.0);
        assert!(close(m.hausdorff_km, hausdorff_km(&real[0], &g0), 1e-12));
        assert!(close(m.dtw_km, dtw_km(&real[0], &g0), 1e-12));

        // With a 10 m EDR threshold the middle points no longer match: 1/3.
        let cfg = MetricsConfig {
            edr_eps_km: 0.01,
            ..MetricsConfig::default()
        };
        let m = compare(&real, &generated, &cfg).unwrap();
        assert!(close(m.edr, 1.0 / 3.0, 1e-12));

        // The cap limits the comparisons; 0 leaves the pair measures undefined.
        let cfg = MetricsConfig {
            max_pairs: 0,
            ..MetricsConfig::default()
        };
        let m = compare(&real, &generated, &cfg).unwrap();
        assert_eq!(m.od_pairs_matched, 0);
        assert!(m.dtw_km.is_nan() && m.hausdorff_km.is_nan() && m.edr.is_nan());
        // NaN survives a JSON round trip (as null).
        let json = serde_json::to_string(&m).unwrap();
        let back: TripMetrics = serde_json::from_str(&json).unwrap();
        assert!(back.dtw_km.is_nan());
        assert_eq!(back.od_pairs_matched, 0);
    }

    #[test]
    fn compare_pairs_ith_with_ith() {
        let trips = sample_trips();
        // Two generated trips on the OD of real trips 0 and 3, one real trip on it.
        let real = vec![trips[0].clone()];
        let generated = vec![trips[0].clone(), trips[3].clone()];
        let m = compare(&real, &generated, &MetricsConfig::default()).unwrap();
        assert_eq!(m.od_pairs_matched, 1);
        assert_eq!(m.dtw_km, 0.0);
    }

    #[test]
    fn compare_rejects_bad_input() {
        let cfg = MetricsConfig::default();
        let trips = sample_trips();
        let is_config = |r: Result<TripMetrics, TrajError>| matches!(r, Err(TrajError::Config(_)));
        assert!(is_config(compare(&[], &trips, &cfg)));
        assert!(is_config(compare(&trips, &[], &cfg)));
        assert!(is_config(compare(&[vec![]], &trips, &cfg)));
        assert!(is_config(compare(&trips, &[vec![[f64::NAN, 1.0]]], &cfg)));
        assert!(is_config(compare(
            &trips,
            &[vec![[1.0, f64::INFINITY]]],
            &cfg
        )));
        // [lat, lon] by mistake: latitude 116 is out of range.
        assert!(is_config(compare(&trips, &[vec![[39.9, 116.3]]], &cfg)));
        let bad = MetricsConfig {
            bins: 1,
            ..MetricsConfig::default()
        };
        assert!(is_config(compare(&trips, &trips, &bad)));
        let bad = MetricsConfig {
            od_cell_m: 0.0,
            ..MetricsConfig::default()
        };
        assert!(is_config(compare(&trips, &trips, &bad)));
        let bad = MetricsConfig {
            edr_eps_km: f64::NAN,
            ..MetricsConfig::default()
        };
        assert!(is_config(compare(&trips, &trips, &bad)));
    }

    #[test]
    fn config_default_and_serde() {
        let c = MetricsConfig::default();
        assert_eq!((c.bins, c.max_pairs), (100, 5000));
        assert_eq!((c.od_cell_m, c.edr_eps_km), (200.0, 0.1));
        let back: MetricsConfig =
            serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(back.bins, 100);
    }
}
