//! Trips as tokens: one token per directed segment plus core specials and eight departure-time
//! tokens; the prompt `[TIME_b, destination, origin]` conditions a sample; a per-segment
//! feature table (geometry, class, and one round of graph propagation over successors and
//! predecessors) is added to the id embedding; [`TopologyConstraint`] keeps every sample on
//! the road graph and makes it stop at its destination.

use std::sync::Arc;

use blockdiff_core::condition::{Conditioning, Example};
use blockdiff_core::constraint::{Constraint, SuccessorConstraint};
use blockdiff_core::error::TokenizerError;
use blockdiff_core::tokenizer::{decode_regular, encode_regular, Tokenizer, Vocab};
use serde::{Deserialize, Serialize};

use crate::network::{RoadNetwork, DRIVABLE_HIGHWAYS};
use crate::trip::{time_bucket, Trip, TIME_BUCKETS};

/// Prompt length: `[TIME_b, destination, origin]`.
pub const PROMPT_LEN: usize = 3;

/// Segments ⇄ token ids.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SegmentTokenizer {
    vocab: Vocab,
}

impl SegmentTokenizer {
    /// A tokenizer for a network of `n_segments` segments.
    pub fn new(n_segments: usize) -> Self {
        let specials = (0..TIME_BUCKETS).map(|b| format!("TIME_{b}")).collect();
        Self {
            vocab: Vocab::new(specials, n_segments),
        }
    }

    /// Token of segment `s`.
    pub fn token(&self, s: usize) -> u32 {
        self.vocab.regular_id(s)
    }

    /// Token of departure-time bucket `b`.
    pub fn time_token(&self, b: usize) -> u32 {
        self.vocab
            .special(&format!("TIME_{}", b.min(TIME_BUCKETS - 1)))
            .expect("time specials exist")
    }

    /// The prompt of a request.
    pub fn prompt(&self, req: &TripRequest) -> Vec<u32> {
        vec![
            self.time_token(req.time_bucket),
            self.token(req.destination),
            self.token(req.origin),
        ]
    }

    /// A training example: prompt from the trip's origin, destination and departure time;
    /// target = the route after the origin.
    pub fn example(&self, trip: &Trip) -> Result<Example, TokenizerError> {
        let req =
            TripRequest::of(trip).ok_or_else(|| TokenizerError::Encode("empty route".into()))?;
        let tokens = self.encode(&trip.route[1..].to_vec())?;
        Ok(Example {
            tokens,
            condition: Conditioning {
                prompt: self.prompt(&req),
                ..Default::default()
            },
        })
    }
}

impl Tokenizer for SegmentTokenizer {
    type Item = Vec<usize>;

    fn vocab(&self) -> &Vocab {
        &self.vocab
    }

    fn encode(&self, route: &Vec<usize>) -> Result<Vec<u32>, TokenizerError> {
        encode_regular(&self.vocab, route, "segment")
    }

    fn decode(&self, ids: &[u32]) -> Result<Vec<usize>, TokenizerError> {
        decode_regular(&self.vocab, ids)
    }

    fn metadata(&self) -> serde_json::Value {
        serde_json::json!({ "kind": "segment", "vocab": self.vocab })
    }
}

/// What to generate: a trip from `origin` to `destination` departing in `time_bucket`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TripRequest {
    /// First segment.
    pub origin: usize,
    /// Last segment.
    pub destination: usize,
    /// Departure bucket (hour / 3).
    pub time_bucket: usize,
}

impl TripRequest {
    /// The request a real trip answers (bucket 0 when it has no times).
    pub fn of(trip: &Trip) -> Option<Self> {
        Some(Self {
            origin: trip.origin()?,
            destination: trip.destination()?,
            time_bucket: trip.departure().map_or(0, time_bucket),
        })
    }
}

/// Road topology for decoding: consecutive segments must be successor edges (also across a
/// block boundary and between tokens committed in the same parallel step, by the core's
/// walk-length reasoning), the trip stops right after its destination (read from the
/// prompt), and with a horizon every trip reaches its destination within the length limit.
#[derive(Clone, Debug)]
pub struct TopologyConstraint {
    inner: Arc<SuccessorConstraint>,
    horizon: Option<usize>,
    detour: Option<DetourBound>,
}

/// A bound on a trip's length relative to its origin's hop distance to the destination:
/// at most `ceil(factor · hops) + slack` segments after the origin. Fitted on training trips
/// (a high quantile of their ratio), so generated trips detour no more than real ones do.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct DetourBound {
    /// Multiplier of the shortest hop count.
    pub factor: f64,
    /// Extra segments allowed.
    pub slack: usize,
}

impl DetourBound {
    /// The bound covering `quantile` of `trips` (with the slack fixed to 2 segments).
    pub fn fit(net: &RoadNetwork, trips: &[Trip], quantile: f64) -> Self {
        let tok = SegmentTokenizer::new(net.len());
        let c = TopologyConstraint::new(net, &tok, None);
        let slack = 2usize;
        let mut ratios: Vec<f64> = trips
            .iter()
            .filter_map(|t| {
                let (o, d) = (t.origin()?, t.destination()?);
                let h = c.inner.hops_to(d)[o];
                (h != usize::MAX && h > 0)
                    .then(|| (t.route.len() - 1).saturating_sub(slack) as f64 / h as f64)
            })
            .collect();
        ratios.sort_by(f64::total_cmp);
        let factor = if ratios.is_empty() {
            2.0
        } else {
            ratios[((ratios.len() - 1) as f64 * quantile.clamp(0.0, 1.0)).round() as usize]
        };
        Self {
            factor: factor.max(1.0),
            slack,
        }
    }

    /// Most segments after the origin for an origin `hops` hops from the destination.
    pub fn max_len(&self, hops: usize) -> usize {
        (hops as f64 * self.factor).ceil() as usize + self.slack
    }
}

impl TopologyConstraint {
    /// From a network and its tokenizer. `horizon` = prompt + max generated tokens.
    pub fn new(net: &RoadNetwork, tok: &SegmentTokenizer, horizon: Option<usize>) -> Self {
        let succ = net
            .successors
            .iter()
            .map(|s| s.iter().map(|&b| b as u32).collect())
            .collect();
        Self {
            inner: Arc::new(SuccessorConstraint::new(tok.vocab(), succ, true)),
            horizon,
            detour: None,
        }
    }

    /// Hop distance from segment `o` to segment `d` (`usize::MAX` when unreachable).
    pub fn hops(&self, o: usize, d: usize) -> usize {
        self.hops_to(d).get(o).copied().unwrap_or(usize::MAX)
    }

    /// Hop distance from every segment to segment `d` (cached per destination).
    pub fn hops_to(&self, d: usize) -> Arc<Vec<usize>> {
        self.inner.hops_to(d)
    }

    /// The same constraint with a per-trip detour bound.
    pub fn with_detour(mut self, detour: Option<DetourBound>) -> Self {
        self.detour = detour;
        self
    }
}

impl Constraint for TopologyConstraint {
    fn restrict(&self, seq: &[u32], pos: usize, allowed: &mut [bool]) {
        match seq.get(1) {
            Some(&dest) if pos >= PROMPT_LEN => {
                // Per-trip horizon from the detour bound: origin (prompt slot 2) → destination.
                let bound = self.detour.and_then(|b| {
                    let o = self.inner.node_of(*seq.get(2)?)?;
                    let d = self.inner.node_of(dest)?;
                    let h = self.inner.hops_to(d)[o];
                    (h != usize::MAX).then(|| PROMPT_LEN + b.max_len(h))
                });
                let horizon = match (self.horizon, bound) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                self.inner
                    .restrict_to_terminal(seq, pos, allowed, dest, horizon)
            }
            _ => self.inner.restrict(seq, pos, allowed),
        }
    }
}

/// Width of [`DestinationFeatures`] rows.
pub const DEST_FEATURE_DIM: usize = 3;

/// Most floats [`DestinationFeatures`] keeps memoised (64 MiB) before it starts afresh.
const MAX_MEMO_FLOATS: usize = 16 << 20;

/// Per-destination token features (the core's request features): for every segment, its hop
/// distance to the trip's destination (capped at 64, / 16), its straight-line centroid
/// distance to it (km / 2), and whether it is the destination. HOSER's navigator scores
/// candidates by their distance to the destination; here the model learns how much to.
/// Tables are memoised per destination and shared by the requests that go there.
#[derive(Debug)]
pub struct DestinationFeatures {
    constraint: TopologyConstraint,
    vocab_size: usize,
    regular_offset: usize,
    centroids: Vec<[f64; 2]>,
    tables: std::sync::Mutex<std::collections::HashMap<usize, Arc<Vec<f32>>>>,
}

impl DestinationFeatures {
    /// The features of `net` in `tok`'s vocabulary.
    pub fn new(net: &RoadNetwork, tok: &SegmentTokenizer) -> Self {
        Self {
            constraint: TopologyConstraint::new(net, tok, None),
            vocab_size: tok.vocab().size(),
            regular_offset: tok.vocab().regular_id(0) as usize,
            centroids: net.centroids_xy(),
            tables: Default::default(),
        }
    }

    /// The table of trips to `dest`, computed when read ([`Self::table`]).
    pub fn lazy(this: &Arc<Self>, dest: usize) -> blockdiff_core::condition::TokenFeatures {
        let this = this.clone();
        blockdiff_core::condition::TokenFeatures::lazy(move || this.table(dest))
    }

    /// The `[vocab × DEST_FEATURE_DIM]` table of trips to segment `dest`.
    pub fn table(&self, dest: usize) -> Arc<Vec<f32>> {
        let mut memo = self.tables.lock().unwrap_or_else(|e| e.into_inner());
        // Bounded like the constraint's hop tables: on a large city one table per destination
        // would otherwise grow to vocab² floats.
        if memo.len() * self.vocab_size * DEST_FEATURE_DIM > MAX_MEMO_FLOATS {
            memo.clear();
        }
        memo.entry(dest)
            .or_insert_with(|| {
                let mut t = vec![0f32; self.vocab_size * DEST_FEATURE_DIM];
                let d = self.centroids[dest];
                let hops_to = self.constraint.hops_to(dest);
                for (s, c) in self.centroids.iter().enumerate() {
                    let hops = hops_to.get(s).copied().unwrap_or(usize::MAX).min(64);
                    let km = ((c[0] - d[0]).powi(2) + (c[1] - d[1]).powi(2)).sqrt() / 1000.0;
                    let row = &mut t[(self.regular_offset + s) * DEST_FEATURE_DIM..];
                    row[0] = hops as f32 / 16.0;
                    row[1] = (km / 2.0) as f32;
                    row[2] = f32::from(s == dest);
                }
                Arc::new(t)
            })
            .clone()
    }
}

/// Width of [`segment_features`] rows.
pub const FEATURE_DIM: usize = 9 + DRIVABLE_HIGHWAYS.len() + 1 + 8;

/// Per-token feature table `[vocab_size × FEATURE_DIM]` (row-major; special tokens are zero
/// rows): standardised start/end/centroid position, log length, bearing (sin, cos), highway
/// class one-hot (last column = other), then the mean centroid and bearing of successors and
/// of predecessors (one graph-propagation step).
pub fn segment_features(net: &RoadNetwork, tok: &SegmentTokenizer) -> Vec<f32> {
    let n = net.len();
    let xy = |p: [f64; 2]| net.projection.to_xy(p);
    let mut base: Vec<[f64; 9]> = Vec::with_capacity(n);
    for s in &net.segments {
        let c = s.geometry.0.as_slice();
        let a = xy([c[0].x, c[0].y]);
        let e = xy([c[c.len() - 1].x, c[c.len() - 1].y]);
        let m = xy(s.centroid());
        let b = s.bearing_deg().to_radians();
        base.push([
            a[0],
            a[1],
            e[0],
            e[1],
            m[0],
            m[1],
            s.length_m.max(1.0).ln(),
            b.sin(),
            b.cos(),
        ]);
    }
    // Standardise the first 7 columns.
    let mut mean = [0.0; 7];
    let mut sd = [0.0; 7];
    for r in &base {
        for k in 0..7 {
            mean[k] += r[k] / n as f64;
        }
    }
    for r in &base {
        for k in 0..7 {
            sd[k] += (r[k] - mean[k]).powi(2) / n as f64;
        }
    }
    // Positions share one scale so distances keep their meaning.
    let pos_sd = ((0..6).map(|k| sd[k]).sum::<f64>() / 6.0).sqrt().max(1e-9);
    let len_sd = sd[6].sqrt().max(1e-9);
    let norm: Vec<[f64; 9]> = base
        .iter()
        .map(|r| {
            let mut o = *r;
            for k in 0..6 {
                o[k] = (r[k] - mean[k]) / pos_sd;
            }
            o[6] = (r[6] - mean[6]) / len_sd;
            o
        })
        .collect();
    let mut preds: Vec<Vec<usize>> = vec![Vec::new(); n];
    for (a, s) in net.successors.iter().enumerate() {
        for &b in s {
            preds[b].push(a);
        }
    }
    let mean_of = |ids: &[usize]| -> [f64; 4] {
        if ids.is_empty() {
            return [0.0; 4];
        }
        let k = ids.len() as f64;
        let mut o = [0.0; 4];
        for &j in ids {
            o[0] += norm[j][4] / k;
            o[1] += norm[j][5] / k;
            o[2] += norm[j][7] / k;
            o[3] += norm[j][8] / k;
        }
        o
    };
    let v = tok.vocab();
    let mut table = vec![0f32; v.size() * FEATURE_DIM];
    for (i, s) in net.segments.iter().enumerate() {
        let row = &mut table[v.regular_id(i) as usize * FEATURE_DIM..][..FEATURE_DIM];
        for k in 0..9 {
            row[k] = norm[i][k] as f32;
        }
        let cls = DRIVABLE_HIGHWAYS
            .iter()
            .position(|h| *h == s.highway)
            .unwrap_or(DRIVABLE_HIGHWAYS.len());
        row[9 + cls] = 1.0;
        let off = 9 + DRIVABLE_HIGHWAYS.len() + 1;
        let sm = mean_of(&net.successors[i]);
        let pm = mean_of(&preds[i]);
        for k in 0..4 {
            row[off + k] = sm[k] as f32;
            row[off + 4 + k] = pm[k] as f32;
        }
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;
    use blockdiff_core::tokenizer::EOS;

    #[test]
    fn segment_tokens_round_trip_and_prompt_layout() {
        let tok = SegmentTokenizer::new(50);
        let route = vec![0, 7, 49, 3];
        let ids = tok.encode(&route).unwrap();
        let mut framed = ids.clone();
        framed.push(EOS);
        assert_eq!(tok.decode(&framed).unwrap(), route);
        assert!(tok.encode(&vec![50]).is_err());
        assert!(tok.decode(&[tok.time_token(2)]).is_err());
        let trip = Trip {
            route: route.clone(),
            times: Some(vec![3600 * 7, 3600 * 7 + 10, 3600 * 7 + 20, 3600 * 7 + 30]),
        };
        let ex = tok.example(&trip).unwrap();
        assert_eq!(
            ex.condition.prompt,
            vec![tok.time_token(2), tok.token(3), tok.token(0)]
        );
        assert_eq!(ex.tokens, tok.encode(&route[1..].to_vec()).unwrap());
        assert_eq!(ex.condition.prompt.len(), PROMPT_LEN);
    }
}
