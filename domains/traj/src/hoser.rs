//! HOSER's file format (LibCity atomic files), in and out, so users of the Porto / Beijing /
//! San Francisco data used by HOSER and TrajDLM can train and evaluate on exactly their inputs.
//!
//! - `roadmap.geo`: `geo_id,type,coordinates,highway,lanes,tunnel,bridge,roundabout,oneway,
//!   length,maxspeed,u,v`; `coordinates` is a JSON `[[lon,lat],...]` list in driving
//!   direction, `length` in metres, `u,v` the start/end node ids. `geo_id`s must be `0..n`.
//! - `roadmap.rel`: `rel_id,type,origin_id,destination_id`: `destination_id` may follow
//!   `origin_id`.
//! - `{train,val,test}.csv`: `mm_id,entity_id,traj_id,rid_list,time_list`; `rid_list` is a
//!   comma-separated list of `geo_id`s, `time_list` (optional column) the matching
//!   `YYYY-MM-DDTHH:MM:SSZ` entry times.

use std::path::Path;

use geo::{Haversine, Length, LineString};

use crate::error::TrajError;
use crate::network::{default_speed_kmh, RoadNetwork, Segment};
use crate::trip::{format_iso, parse_iso, Trip};

/// Atomic file writes (temporary file + rename) are the core's: one implementation for
/// checkpoints and domain files alike.
pub use blockdiff_core::checkpoint::write_atomic;

fn csv_bytes(header: &[&str], rows: impl Iterator<Item = Vec<String>>) -> Vec<u8> {
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record(header).expect("writing to memory");
    for r in rows {
        w.write_record(&r).expect("writing to memory");
    }
    w.into_inner().expect("writing to memory")
}

/// Writes `roadmap.geo` and `roadmap.rel` for `net` into `dir`.
pub fn write_roadmap(dir: &Path, net: &RoadNetwork) -> Result<(), TrajError> {
    let geo = csv_bytes(
        &[
            "geo_id",
            "type",
            "coordinates",
            "highway",
            "lanes",
            "tunnel",
            "bridge",
            "roundabout",
            "oneway",
            "length",
            "maxspeed",
            "u",
            "v",
        ],
        net.segments.iter().enumerate().map(|(i, s)| {
            let coords: Vec<String> = s
                .points()
                .map(|p| format!("[{:.7},{:.7}]", p[0], p[1]))
                .collect();
            vec![
                i.to_string(),
                "LineString".into(),
                format!("[{}]", coords.join(",")),
                s.highway.clone(),
                "0".into(),
                "0".into(),
                "0".into(),
                (s.roundabout as u8).to_string(),
                (s.oneway as u8).to_string(),
                format!("{:.3}", s.length_m),
                format!("{:.1}", s.speed_kmh),
                s.from_node.to_string(),
                s.to_node.to_string(),
            ]
        }),
    );
    write_atomic(&dir.join("roadmap.geo"), &geo)?;
    let mut k = 0usize;
    let rel = csv_bytes(
        &["rel_id", "type", "origin_id", "destination_id"],
        net.successors
            .iter()
            .enumerate()
            .flat_map(|(a, s)| s.iter().map(move |&b| (a, b)))
            .map(|(a, b)| {
                k += 1;
                vec![
                    (k - 1).to_string(),
                    "geo".into(),
                    a.to_string(),
                    b.to_string(),
                ]
            }),
    );
    Ok(write_atomic(&dir.join("roadmap.rel"), &rel)?)
}

fn open_csv(path: &Path) -> Result<csv::Reader<std::fs::File>, TrajError> {
    let f = std::fs::File::open(path).map_err(|e| TrajError::io(path, e))?;
    Ok(csv::ReaderBuilder::new().flexible(true).from_reader(f))
}

fn column(headers: &csv::StringRecord, name: &str, path: &Path) -> Result<usize, TrajError> {
    headers
        .iter()
        .position(|h| h.trim() == name)
        .ok_or_else(|| TrajError::Format {
            path: path.to_path_buf(),
            line: 1,
            message: format!("missing column `{name}`"),
        })
}

/// Reads a network from `dir/roadmap.geo` and `dir/roadmap.rel`.
pub fn read_roadmap(dir: &Path) -> Result<RoadNetwork, TrajError> {
    let geo_path = dir.join("roadmap.geo");
    let mut rd = open_csv(&geo_path)?;
    let fmt = |line: usize, message: String| TrajError::Format {
        path: geo_path.clone(),
        line,
        message,
    };
    let headers = rd.headers().map_err(|e| fmt(1, e.to_string()))?.clone();
    let c_id = column(&headers, "geo_id", &geo_path)?;
    let c_coords = column(&headers, "coordinates", &geo_path)?;
    let opt = |name: &str| headers.iter().position(|h| h.trim() == name);
    let (c_hw, c_len, c_speed, c_u, c_v, c_ra, c_ow) = (
        opt("highway"),
        opt("length"),
        opt("maxspeed"),
        opt("u"),
        opt("v"),
        opt("roundabout"),
        opt("oneway"),
    );
    let mut rows: Vec<(usize, Segment)> = Vec::new();
    for (k, rec) in rd.records().enumerate() {
        let line = k + 2;
        let rec = rec.map_err(|e| fmt(line, e.to_string()))?;
        let get = |c: Option<usize>| c.and_then(|c| rec.get(c)).map(str::trim).unwrap_or("");
        let id: usize = get(Some(c_id)).parse().map_err(|_| {
            fmt(
                line,
                format!("geo_id `{}` is not a non-negative integer", get(Some(c_id))),
            )
        })?;
        let coords: Vec<[f64; 2]> = serde_json::from_str(get(Some(c_coords)))
            .map_err(|e| fmt(line, format!("coordinates: {e}")))?;
        if coords.len() < 2 || coords.iter().flatten().any(|v| !v.is_finite()) {
            return Err(fmt(
                line,
                "coordinates: need >= 2 finite [lon, lat] points".into(),
            ));
        }
        if coords
            .iter()
            .any(|p| p[0].abs() > 180.0 || p[1].abs() > 90.0)
        {
            return Err(fmt(line, "coordinates: outside lon/lat range".into()));
        }
        let geometry: LineString<f64> = coords.iter().map(|p| (p[0], p[1])).collect();
        let highway = match get(c_hw) {
            "" => "unclassified".to_string(),
            h => h.to_string(),
        };
        let length_m = match get(c_len).parse::<f64>() {
            Ok(l) if l.is_finite() && l > 0.0 => l,
            _ => Haversine.length(&geometry).max(0.1),
        };
        let speed_kmh = match get(c_speed).parse::<f64>() {
            Ok(v) if v.is_finite() && v > 0.0 => v,
            _ => default_speed_kmh(&highway),
        };
        let node = |c: Option<usize>, fallback: i64| get(c).parse::<i64>().unwrap_or(fallback);
        let flag = |c: Option<usize>| matches!(get(c), "1" | "True" | "true" | "yes");
        rows.push((
            id,
            Segment {
                way_id: 0,
                from_node: node(c_u, -(2 * id as i64) - 1),
                to_node: node(c_v, -(2 * id as i64) - 2),
                geometry,
                length_m,
                highway,
                speed_kmh,
                roundabout: flag(c_ra),
                oneway: flag(c_ow),
            },
        ));
    }
    rows.sort_by_key(|r| r.0);
    for (i, (id, _)) in rows.iter().enumerate() {
        if *id != i {
            return Err(fmt(
                0,
                format!(
                    "geo_id must be exactly 0..{} (found {id} where {i} was expected)",
                    rows.len()
                ),
            ));
        }
    }
    if rows.is_empty() {
        return Err(TrajError::EmptyNetwork { path: geo_path });
    }
    let n = rows.len();
    let segments: Vec<Segment> = rows.into_iter().map(|r| r.1).collect();

    let rel_path = dir.join("roadmap.rel");
    let mut rd = open_csv(&rel_path)?;
    let fmt = |line: usize, message: String| TrajError::Format {
        path: rel_path.clone(),
        line,
        message,
    };
    let headers = rd.headers().map_err(|e| fmt(1, e.to_string()))?.clone();
    let c_o = column(&headers, "origin_id", &rel_path)?;
    let c_d = column(&headers, "destination_id", &rel_path)?;
    let mut successors = vec![Vec::new(); n];
    for (k, rec) in rd.records().enumerate() {
        let line = k + 2;
        let rec = rec.map_err(|e| fmt(line, e.to_string()))?;
        let mut ids = [0usize; 2];
        for (slot, (c, name)) in ids
            .iter_mut()
            .zip([(c_o, "origin_id"), (c_d, "destination_id")])
        {
            let v = rec.get(c).unwrap_or("").trim();
            let id: i64 = v
                .parse()
                .map_err(|_| fmt(line, format!("{name} `{v}` is not an integer")))?;
            if id < 0 || id as usize >= n {
                return Err(TrajError::UnknownSegment {
                    id,
                    context: format!(" ({name} in {} line {line})", rel_path.display()),
                });
            }
            *slot = id as usize;
        }
        successors[ids[0]].push(ids[1]);
    }
    Ok(RoadNetwork::build(segments, successors))
}

/// Writes trips as a HOSER trajectory CSV.
pub fn write_trips(path: &Path, trips: &[Trip]) -> Result<(), TrajError> {
    write_trips_from(path, trips, 0)
}

/// Like [`write_trips`] for a slice of a larger job starting at row `first_id`: the id columns
/// carry global row numbers, so shard files concatenated (headers after the first dropped)
/// equal the single-run file.
pub fn write_trips_from(path: &Path, trips: &[Trip], first_id: usize) -> Result<(), TrajError> {
    let bytes = csv_bytes(
        &["mm_id", "entity_id", "traj_id", "rid_list", "time_list"],
        trips.iter().enumerate().map(|(i, t)| {
            let i = first_id + i;
            let rids: Vec<String> = t.route.iter().map(|r| r.to_string()).collect();
            let times = t
                .times
                .as_ref()
                .map(|ts| {
                    ts.iter()
                        .map(|&s| format_iso(s))
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .unwrap_or_default();
            vec![
                i.to_string(),
                i.to_string(),
                i.to_string(),
                rids.join(","),
                times,
            ]
        }),
    );
    Ok(write_atomic(path, &bytes)?)
}

/// Reads a HOSER trajectory CSV, checking every id against a network of `n_segments`
/// segments. `time_list` is optional; when present its length must match `rid_list`.
pub fn read_trips(path: &Path, n_segments: usize) -> Result<Vec<Trip>, TrajError> {
    let mut rd = open_csv(path)?;
    let fmt = |line: usize, message: String| TrajError::Format {
        path: path.to_path_buf(),
        line,
        message,
    };
    let headers = rd.headers().map_err(|e| fmt(1, e.to_string()))?.clone();
    let c_rid = column(&headers, "rid_list", path)?;
    let c_time = headers.iter().position(|h| h.trim() == "time_list");
    let mut trips = Vec::new();
    for (k, rec) in rd.records().enumerate() {
        let line = k + 2;
        let rec = rec.map_err(|e| fmt(line, e.to_string()))?;
        let raw = rec.get(c_rid).unwrap_or("").trim();
        // HOSER's files sometimes wrap the list in brackets (`eval`-able); accept both.
        let raw = raw.trim_start_matches('[').trim_end_matches(']');
        let mut route = Vec::new();
        for v in raw.split(',').map(str::trim).filter(|v| !v.is_empty()) {
            let id: i64 = v
                .parse()
                .map_err(|_| fmt(line, format!("rid_list entry `{v}` is not an integer")))?;
            if id < 0 || id as usize >= n_segments {
                return Err(TrajError::UnknownSegment {
                    id,
                    context: format!(" (rid_list in {} line {line})", path.display()),
                });
            }
            route.push(id as usize);
        }
        if route.is_empty() {
            return Err(fmt(line, "rid_list is empty".into()));
        }
        let times = match c_time.and_then(|c| rec.get(c)).map(str::trim) {
            None | Some("") => None,
            Some(t) => {
                let t = t.trim_start_matches('[').trim_end_matches(']');
                let ts = t
                    .split(',')
                    .map(|s| s.trim().trim_matches(['\'', '"']))
                    .filter(|s| !s.is_empty())
                    .map(|s| {
                        parse_iso(s).ok_or_else(|| {
                            fmt(
                                line,
                                format!("time_list entry `{s}` is not YYYY-MM-DDTHH:MM:SSZ"),
                            )
                        })
                    })
                    .collect::<Result<Vec<i64>, _>>()?;
                if ts.len() != route.len() {
                    return Err(fmt(
                        line,
                        format!(
                            "time_list has {} entries, rid_list {}",
                            ts.len(),
                            route.len()
                        ),
                    ));
                }
                Some(ts)
            }
        };
        trips.push(Trip { route, times });
    }
    Ok(trips)
}
