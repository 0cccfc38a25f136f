//! The road network: OSM `.osm.pbf` → directed road segments with geometry, a successor graph
//! with turn angles, and an R-tree over segment geometry.
//!
//! A *segment* is a piece of an OSM way between two intersections (nodes shared by two or more
//! drivable ways, or a way's end points), in one driving direction. Two-way streets give two
//! segments; `oneway=yes`, motorways and roundabouts give one; `oneway=-1` gives the reversed
//! one. Segment `b` succeeds `a` when `b` starts at the node where `a` ends; the U-turn onto the
//! same street's other direction is only kept at dead ends, where it is the only way on.

use std::collections::HashMap;
use std::path::Path;

use geo::{Bearing, Distance, Haversine, Length, LineString, Point};
use petgraph::graph::{DiGraph, NodeIndex};
use rstar::primitives::{GeomWithData, Line};
use rstar::RTree;
use serde::{Deserialize, Serialize};

use crate::error::TrajError;

/// OSM `highway=*` values treated as drivable, in the order of their class index. Service roads
/// (parking aisles, driveways), tracks and paths are left out, as in the road networks used by
/// HOSER and TrajDLM.
pub const DRIVABLE_HIGHWAYS: &[&str] = &[
    "motorway",
    "motorway_link",
    "trunk",
    "trunk_link",
    "primary",
    "primary_link",
    "secondary",
    "secondary_link",
    "tertiary",
    "tertiary_link",
    "unclassified",
    "residential",
    "living_street",
    "road",
];

/// Default free-flow speed (km/h) of a highway class when `maxspeed` is missing.
pub fn default_speed_kmh(highway: &str) -> f64 {
    match highway {
        "motorway" => 100.0,
        "motorway_link" => 60.0,
        "trunk" => 80.0,
        "trunk_link" => 50.0,
        "primary" | "primary_link" => 50.0,
        "secondary" | "secondary_link" => 40.0,
        "tertiary" | "tertiary_link" => 40.0,
        "living_street" => 15.0,
        _ => 30.0,
    }
}

/// One directed road segment.
#[derive(Clone, Debug, PartialEq)]
pub struct Segment {
    /// OSM way id (0 when unknown, e.g. read from HOSER files).
    pub way_id: i64,
    /// Start node id.
    pub from_node: i64,
    /// End node id.
    pub to_node: i64,
    /// Polyline in driving direction, `(lon, lat)` degrees.
    pub geometry: LineString<f64>,
    /// Length in metres (haversine).
    pub length_m: f64,
    /// OSM highway class (a [`DRIVABLE_HIGHWAYS`] value, or what a HOSER file gave).
    pub highway: String,
    /// Speed used for travel times, km/h.
    pub speed_kmh: f64,
    /// Part of a roundabout.
    pub roundabout: bool,
    /// One-way street (no segment in the other direction).
    pub oneway: bool,
}

impl Segment {
    /// Mean of the polyline's vertices, `(lon, lat)`.
    pub fn centroid(&self) -> [f64; 2] {
        let n = self.geometry.0.len().max(1) as f64;
        let (x, y) = self
            .geometry
            .0
            .iter()
            .fold((0.0, 0.0), |(x, y), c| (x + c.x, y + c.y));
        [x / n, y / n]
    }

    /// Bearing from the first to the last vertex, degrees clockwise from north in [0, 360).
    pub fn bearing_deg(&self) -> f64 {
        let c = &self.geometry.0;
        bearing(c[0].into(), c[c.len() - 1].into())
    }

    /// Bearing of the first piece (direction when entering the segment).
    pub fn start_bearing_deg(&self) -> f64 {
        let c = &self.geometry.0;
        bearing(c[0].into(), c[1].into())
    }

    /// Bearing of the last piece (direction when leaving the segment).
    pub fn end_bearing_deg(&self) -> f64 {
        let c = &self.geometry.0;
        bearing(c[c.len() - 2].into(), c[c.len() - 1].into())
    }

    /// Free-flow travel time in seconds.
    pub fn travel_time_s(&self) -> f64 {
        self.length_m / (self.speed_kmh / 3.6)
    }

    /// The polyline's vertices as `(lon, lat)` pairs.
    pub fn points(&self) -> impl Iterator<Item = [f64; 2]> + '_ {
        self.geometry.0.iter().map(|c| [c.x, c.y])
    }
}

fn bearing(a: Point<f64>, b: Point<f64>) -> f64 {
    let d = Haversine.bearing(a, b);
    if d.is_finite() {
        d.rem_euclid(360.0)
    } else {
        0.0
    }
}

/// Signed turn angle from bearing `a` to bearing `b`, degrees in (-180, 180]; positive = right.
pub fn turn_angle(a: f64, b: f64) -> f64 {
    let d = (b - a).rem_euclid(360.0);
    if d > 180.0 {
        d - 360.0
    } else {
        d
    }
}

/// R-tree item: one straight piece of a segment in local metres, tagged with the segment index.
pub type PieceItem = GeomWithData<Line<[f64; 2]>, usize>;

/// Equirectangular projection to local metres around a reference latitude: accurate to well
/// under a metre over a city, and lets the R-tree use plain Euclidean distances.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct LocalProjection {
    lon0: f64,
    lat0: f64,
    cos_lat0: f64,
}

const EARTH_RADIUS_M: f64 = 6_371_008.8;

impl LocalProjection {
    /// Projection centred on `(lon0, lat0)`.
    pub fn new(lon0: f64, lat0: f64) -> Self {
        Self {
            lon0,
            lat0,
            cos_lat0: lat0.to_radians().cos(),
        }
    }

    /// `(lon, lat)` → metres east/north of the centre.
    pub fn to_xy(&self, p: [f64; 2]) -> [f64; 2] {
        [
            (p[0] - self.lon0).to_radians() * self.cos_lat0 * EARTH_RADIUS_M,
            (p[1] - self.lat0).to_radians() * EARTH_RADIUS_M,
        ]
    }

    /// Metres east/north of the centre → `(lon, lat)`.
    pub fn to_lonlat(&self, xy: [f64; 2]) -> [f64; 2] {
        [
            self.lon0 + (xy[0] / (self.cos_lat0 * EARTH_RADIUS_M)).to_degrees(),
            self.lat0 + (xy[1] / EARTH_RADIUS_M).to_degrees(),
        ]
    }
}

/// A directed road network: segments, successors with turn angles, and a spatial index.
#[derive(Debug)]
pub struct RoadNetwork {
    /// Segments; a segment's index is its id (HOSER `geo_id`).
    pub segments: Vec<Segment>,
    /// `successors[a]` = segments that may follow `a`, sorted.
    pub successors: Vec<Vec<usize>>,
    /// `turns[a][k]` = turn angle (degrees, + = right) from `a` onto `successors[a][k]`.
    pub turns: Vec<Vec<f64>>,
    /// The same relation as a petgraph graph (node weight = segment index, edge weight = turn
    /// angle), for graph algorithms.
    pub graph: DiGraph<usize, f64>,
    /// R-tree over the segments' straight pieces in [`Self::projection`] metres.
    pub rtree: RTree<PieceItem>,
    /// Local projection used by the R-tree.
    pub projection: LocalProjection,
}

/// Options of [`RoadNetwork::from_pbf`].
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ImportOptions {
    /// Keep only the largest strongly connected component, so every segment can reach every
    /// other (what trip generation between any origin and destination needs).
    pub largest_scc: bool,
}

impl Default for ImportOptions {
    fn default() -> Self {
        Self { largest_scc: true }
    }
}

struct RawWay {
    id: i64,
    refs: Vec<i64>,
    highway: String,
    oneway: i8, // 1 forward only, -1 backward only, 0 both
    roundabout: bool,
    speed: f64,
}

fn parse_speed(s: &str) -> Option<f64> {
    let s = s.trim();
    let (num, mph) = match s.strip_suffix("mph") {
        Some(n) => (n.trim(), true),
        None => (s, false),
    };
    let v: f64 = num.parse().ok()?;
    (v > 0.0 && v < 200.0).then_some(if mph { v * 1.609_344 } else { v })
}

impl RoadNetwork {
    /// Reads drivable roads from an OSM PBF extract. See the module docs for the rules.
    pub fn from_pbf(path: &Path, opts: &ImportOptions) -> Result<Self, TrajError> {
        let pbf_err = |e: osmpbf::Error| TrajError::Pbf {
            path: path.to_path_buf(),
            message: e.to_string(),
        };
        if !path.exists() {
            return Err(TrajError::io(
                path,
                std::io::Error::new(std::io::ErrorKind::NotFound, "file not found"),
            ));
        }
        // Pass 1: drivable ways and how often each node is used.
        let mut ways = Vec::new();
        let reader = osmpbf::ElementReader::from_path(path).map_err(pbf_err)?;
        reader
            .for_each(|el| {
                if let osmpbf::Element::Way(w) = el {
                    let mut highway = None;
                    let (mut oneway, mut roundabout, mut speed) = (None, false, None);
                    let mut excluded = false;
                    for (k, v) in w.tags() {
                        match k {
                            "highway" if DRIVABLE_HIGHWAYS.contains(&v) => {
                                highway = Some(v.to_string())
                            }
                            "oneway" => oneway = Some(v.to_string()),
                            "junction" => roundabout = v == "roundabout" || v == "circular",
                            "maxspeed" => speed = parse_speed(v),
                            "area" => excluded |= v == "yes",
                            "access" | "motor_vehicle" | "motorcar" => {
                                excluded |= v == "no" || v == "private"
                            }
                            _ => {}
                        }
                    }
                    let Some(highway) = highway else { return };
                    if excluded {
                        return;
                    }
                    let refs: Vec<i64> = w.refs().collect();
                    if refs.len() < 2 {
                        return;
                    }
                    let implied = roundabout || highway == "motorway";
                    let oneway = match oneway.as_deref() {
                        Some("yes" | "true" | "1") => 1,
                        Some("-1" | "reverse") => -1,
                        Some("no" | "false" | "0") => 0,
                        _ if implied => 1,
                        _ => 0,
                    };
                    let speed = speed.unwrap_or_else(|| default_speed_kmh(&highway));
                    ways.push(RawWay {
                        id: w.id(),
                        refs,
                        highway,
                        oneway,
                        roundabout,
                        speed,
                    });
                }
            })
            .map_err(pbf_err)?;
        ways.sort_by_key(|w| w.id);
        let mut uses: HashMap<i64, u32> = HashMap::new();
        for w in &ways {
            for (i, r) in w.refs.iter().enumerate() {
                // End points always split; interior nodes split when shared.
                let bump = if i == 0 || i + 1 == w.refs.len() {
                    2
                } else {
                    1
                };
                *uses.entry(*r).or_default() += bump;
            }
        }
        // Pass 2: coordinates of the nodes those ways use.
        let mut coords: HashMap<i64, [f64; 2]> = HashMap::with_capacity(uses.len());
        let reader = osmpbf::ElementReader::from_path(path).map_err(pbf_err)?;
        reader
            .for_each(|el| {
                let (id, lon, lat) = match el {
                    osmpbf::Element::Node(n) => (n.id(), n.lon(), n.lat()),
                    osmpbf::Element::DenseNode(n) => (n.id(), n.lon(), n.lat()),
                    _ => return,
                };
                if uses.contains_key(&id) {
                    coords.insert(id, [lon, lat]);
                }
            })
            .map_err(pbf_err)?;

        let mut segments = Vec::new();
        for w in &ways {
            // Nodes missing from the extract (clipped at its border) cut the way.
            let mut piece: Vec<i64> = Vec::new();
            let flush = |piece: &mut Vec<i64>, segments: &mut Vec<Segment>| {
                if piece.len() >= 2 {
                    push_segments(w, piece, &coords, segments);
                }
                piece.clear();
            };
            for (i, r) in w.refs.iter().enumerate() {
                if !coords.contains_key(r) {
                    flush(&mut piece, &mut segments);
                    continue;
                }
                piece.push(*r);
                let split = i > 0 && uses.get(r).copied().unwrap_or(0) > 1;
                if split {
                    let last = *r;
                    flush(&mut piece, &mut segments);
                    piece.push(last);
                }
            }
            flush(&mut piece, &mut segments);
        }
        // Zero-length pieces (duplicated nodes) carry no route information.
        segments.retain(|s| s.length_m > 0.0);
        if segments.is_empty() {
            return Err(TrajError::EmptyNetwork {
                path: path.to_path_buf(),
            });
        }
        let successors = node_successors(&segments);
        let net = Self::build(segments, successors);
        Ok(if opts.largest_scc {
            net.largest_scc()
        } else {
            net
        })
    }

    /// Builds the turn angles, graph and index from segments and a successor relation
    /// (indices out of range are dropped).
    pub fn build(segments: Vec<Segment>, mut successors: Vec<Vec<usize>>) -> Self {
        let n = segments.len();
        successors.resize(n, Vec::new());
        for s in successors.iter_mut() {
            s.retain(|&j| j < n);
            s.sort_unstable();
            s.dedup();
        }
        let turns = successors
            .iter()
            .enumerate()
            .map(|(a, s)| {
                let out = segments[a].end_bearing_deg();
                s.iter()
                    .map(|&b| turn_angle(out, segments[b].start_bearing_deg()))
                    .collect()
            })
            .collect::<Vec<Vec<f64>>>();
        let mut graph = DiGraph::with_capacity(n, successors.iter().map(Vec::len).sum());
        for i in 0..n {
            graph.add_node(i);
        }
        for (a, s) in successors.iter().enumerate() {
            for (k, &b) in s.iter().enumerate() {
                graph.add_edge(NodeIndex::new(a), NodeIndex::new(b), turns[a][k]);
            }
        }
        let (mut lo, mut hi) = ([f64::MAX; 2], [f64::MIN; 2]);
        for c in segments.iter().flat_map(|s| s.geometry.0.iter()) {
            lo = [lo[0].min(c.x), lo[1].min(c.y)];
            hi = [hi[0].max(c.x), hi[1].max(c.y)];
        }
        let projection = LocalProjection::new((lo[0] + hi[0]) / 2.0, (lo[1] + hi[1]) / 2.0);
        let pieces = segments
            .iter()
            .enumerate()
            .flat_map(|(i, s)| {
                s.geometry.0.windows(2).map(move |w| {
                    GeomWithData::new(
                        Line::new(
                            projection.to_xy([w[0].x, w[0].y]),
                            projection.to_xy([w[1].x, w[1].y]),
                        ),
                        i,
                    )
                })
            })
            .collect();
        Self {
            segments,
            successors,
            turns,
            graph,
            rtree: RTree::bulk_load(pieces),
            projection,
        }
    }

    /// The sub-network of the largest strongly connected component, renumbered in order.
    pub fn largest_scc(self) -> Self {
        let sccs = petgraph::algo::kosaraju_scc(&self.graph);
        let Some(best) = sccs.iter().max_by_key(|c| c.len()) else {
            return self;
        };
        let mut keep: Vec<usize> = best.iter().map(|n| n.index()).collect();
        keep.sort_unstable();
        self.subset(&keep)
    }

    /// The sub-network of the given segments (sorted, unique), renumbered in that order.
    pub fn subset(self, keep: &[usize]) -> Self {
        let mut new_id = vec![usize::MAX; self.segments.len()];
        for (k, &i) in keep.iter().enumerate() {
            new_id[i] = k;
        }
        let successors = keep
            .iter()
            .map(|&i| {
                self.successors[i]
                    .iter()
                    .filter_map(|&j| (new_id[j] != usize::MAX).then_some(new_id[j]))
                    .collect()
            })
            .collect();
        let segs = keep.iter().map(|&i| self.segments[i].clone()).collect();
        Self::build(segs, successors)
    }

    /// Number of segments.
    pub fn len(&self) -> usize {
        self.segments.len()
    }

    /// Whether the network has no segments.
    pub fn is_empty(&self) -> bool {
        self.segments.is_empty()
    }

    /// Number of successor edges.
    pub fn n_edges(&self) -> usize {
        self.successors.iter().map(Vec::len).sum()
    }

    /// Whether `b` may follow `a`.
    pub fn is_successor(&self, a: usize, b: usize) -> bool {
        self.successors
            .get(a)
            .is_some_and(|s| s.binary_search(&b).is_ok())
    }

    /// Index of the first consecutive pair of `route` that is not a successor edge.
    pub fn first_break(&self, route: &[usize]) -> Option<usize> {
        route
            .windows(2)
            .position(|w| w[0] >= self.len() || !self.is_successor(w[0], w[1]))
            .or_else(|| route.iter().position(|&s| s >= self.len()))
    }

    /// Whether every consecutive pair of `route` is a successor edge.
    pub fn is_connected_route(&self, route: &[usize]) -> bool {
        !route.is_empty() && self.first_break(route).is_none()
    }

    /// Concatenated polyline of a route (shared end/start vertices once), `(lon, lat)`.
    pub fn route_points(&self, route: &[usize]) -> Vec<[f64; 2]> {
        let mut pts: Vec<[f64; 2]> = Vec::new();
        for &s in route.iter().filter(|&&s| s < self.len()) {
            for p in self.segments[s].points() {
                if pts.last() != Some(&p) {
                    pts.push(p);
                }
            }
        }
        pts
    }

    /// Every segment's centroid in metres east/north of the network's centre.
    pub fn centroids_xy(&self) -> Vec<[f64; 2]> {
        self.segments
            .iter()
            .map(|s| self.projection.to_xy(s.centroid()))
            .collect()
    }

    /// Route length in metres.
    pub fn route_length_m(&self, route: &[usize]) -> f64 {
        route
            .iter()
            .filter_map(|&s| self.segments.get(s))
            .map(|s| s.length_m)
            .sum()
    }

    /// Segments whose geometry passes within `radius_m` of `p` (`(lon, lat)`), with the
    /// distance and the projected point's offset along the segment (metres from its start),
    /// nearest first, one entry per segment.
    pub fn candidates(&self, p: [f64; 2], radius_m: f64) -> Vec<Candidate> {
        let xy = self.projection.to_xy(p);
        let mut best: HashMap<usize, Candidate> = HashMap::new();
        for item in self.rtree.locate_within_distance(xy, radius_m * radius_m) {
            let seg = item.data;
            let (dist, along) = self.project_onto(seg, xy);
            let c = Candidate {
                segment: seg,
                distance_m: dist,
                offset_m: along,
            };
            best.entry(seg)
                .and_modify(|b| {
                    if c.distance_m < b.distance_m {
                        *b = c
                    }
                })
                .or_insert(c);
        }
        let mut out: Vec<Candidate> = best.into_values().collect();
        out.sort_by(|a, b| {
            a.distance_m
                .total_cmp(&b.distance_m)
                .then(a.segment.cmp(&b.segment))
        });
        out
    }

    /// The segment nearest to `p` and its distance in metres.
    pub fn nearest_segment(&self, p: [f64; 2]) -> Option<(usize, f64)> {
        let xy = self.projection.to_xy(p);
        self.rtree
            .nearest_neighbor(&xy)
            .map(|it| (it.data, self.project_onto(it.data, xy).0))
    }

    /// Distance (m) from local point `xy` to segment `seg`, and the offset along it (m).
    fn project_onto(&self, seg: usize, xy: [f64; 2]) -> (f64, f64) {
        let pts: Vec<[f64; 2]> = self.segments[seg]
            .points()
            .map(|p| self.projection.to_xy(p))
            .collect();
        let (mut best, mut best_along, mut walked) = (f64::MAX, 0.0, 0.0);
        for w in pts.windows(2) {
            let (a, b) = (w[0], w[1]);
            let d = [b[0] - a[0], b[1] - a[1]];
            let len2 = d[0] * d[0] + d[1] * d[1];
            let t = if len2 > 0.0 {
                (((xy[0] - a[0]) * d[0] + (xy[1] - a[1]) * d[1]) / len2).clamp(0.0, 1.0)
            } else {
                0.0
            };
            let q = [a[0] + t * d[0], a[1] + t * d[1]];
            let dist = ((xy[0] - q[0]).powi(2) + (xy[1] - q[1]).powi(2)).sqrt();
            let len = len2.sqrt();
            if dist < best {
                best = dist;
                best_along = walked + t * len;
            }
            walked += len;
        }
        // Scale the offset from projected to true (haversine) length.
        let scale = if walked > 0.0 {
            self.segments[seg].length_m / walked
        } else {
            1.0
        };
        (best, best_along * scale)
    }

    /// The point at `offset_m` metres along segment `seg`, `(lon, lat)`.
    pub fn point_along(&self, seg: usize, offset_m: f64) -> [f64; 2] {
        let s = &self.segments[seg];
        let mut left = offset_m.max(0.0);
        for w in s.geometry.0.windows(2) {
            let l = Haversine.distance(Point::from(w[0]), Point::from(w[1]));
            if left <= l && l > 0.0 {
                let t = left / l;
                return [
                    w[0].x + t * (w[1].x - w[0].x),
                    w[0].y + t * (w[1].y - w[0].y),
                ];
            }
            left -= l;
        }
        let last = s.geometry.0[s.geometry.0.len() - 1];
        [last.x, last.y]
    }

    /// Bounding box `[min_lon, min_lat, max_lon, max_lat]`.
    pub fn bbox(&self) -> [f64; 4] {
        let mut b = [f64::MAX, f64::MAX, f64::MIN, f64::MIN];
        for c in self.segments.iter().flat_map(|s| s.geometry.0.iter()) {
            b = [b[0].min(c.x), b[1].min(c.y), b[2].max(c.x), b[3].max(c.y)];
        }
        b
    }

    /// Checks that every consecutive pair of every route is an edge; names the first break.
    pub fn check_routes(&self, routes: &[Vec<usize>]) -> Result<(), TrajError> {
        for (t, r) in routes.iter().enumerate() {
            if let Some(&s) = r.iter().find(|&&s| s >= self.len()) {
                return Err(TrajError::UnknownSegment {
                    id: s as i64,
                    context: format!(" in trip {t}"),
                });
            }
            if let Some(k) = self.first_break(r) {
                return Err(TrajError::Disconnected {
                    trip: t,
                    from: r[k],
                    to: r[k + 1],
                });
            }
        }
        Ok(())
    }
}

/// A map-matching candidate: a segment near a point.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Candidate {
    /// Segment index.
    pub segment: usize,
    /// Distance from the point to the segment, metres.
    pub distance_m: f64,
    /// Offset of the point's projection along the segment, metres from its start.
    pub offset_m: f64,
}

fn push_segments(
    w: &RawWay,
    nodes: &[i64],
    coords: &HashMap<i64, [f64; 2]>,
    out: &mut Vec<Segment>,
) {
    let pts: Vec<[f64; 2]> = nodes.iter().map(|n| coords[n]).collect();
    let mut make = |nodes: Vec<i64>, pts: Vec<[f64; 2]>| {
        let geometry: LineString<f64> = pts.into_iter().map(|p| (p[0], p[1])).collect();
        out.push(Segment {
            way_id: w.id,
            from_node: nodes[0],
            to_node: nodes[nodes.len() - 1],
            length_m: Haversine.length(&geometry),
            geometry,
            highway: w.highway.clone(),
            speed_kmh: w.speed,
            roundabout: w.roundabout,
            oneway: w.oneway != 0,
        });
    };
    if w.oneway >= 0 {
        make(nodes.to_vec(), pts.clone());
    }
    if w.oneway <= 0 {
        make(
            nodes.iter().rev().copied().collect(),
            pts.into_iter().rev().collect(),
        );
    }
}

/// Successors by shared node: `b` follows `a` when `b.from_node == a.to_node`, except the
/// immediate U-turn onto the reverse of `a` unless that is the only way on.
pub fn node_successors(segments: &[Segment]) -> Vec<Vec<usize>> {
    let mut starts: HashMap<i64, Vec<usize>> = HashMap::new();
    for (i, s) in segments.iter().enumerate() {
        starts.entry(s.from_node).or_default().push(i);
    }
    let empty = Vec::new();
    segments
        .iter()
        .map(|a| {
            let cands = starts.get(&a.to_node).unwrap_or(&empty);
            let is_uturn = |b: &Segment| {
                b.way_id == a.way_id
                    && b.to_node == a.from_node
                    && b.geometry.0.len() == a.geometry.0.len()
            };
            let forward: Vec<usize> = cands
                .iter()
                .copied()
                .filter(|&b| !is_uturn(&segments[b]))
                .collect();
            if forward.is_empty() {
                cands.clone()
            } else {
                forward
            }
        })
        .collect()
}
