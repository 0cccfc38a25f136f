//! Tabular NAS benchmarks as converted by `datasets/nasbench/convert.py`: every cell of the
//! space with its scores and the benchmark's canonical id (isomorphic cells share one id, and
//! a search pays once per id).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::DagError;
use crate::space::{Cell, CellSpace, NBG_OPS};

/// Scores of one cell.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// The benchmark's canonical id (query accounting).
    pub canonical: u64,
    /// The searched metric: NAS-Bench-201 CIFAR-10 accuracy (%); NAS-Bench-Graph validation
    /// performance.
    pub accuracy: f64,
    /// Held-out metric where the benchmark has one (NAS-Bench-Graph test performance).
    pub test: Option<f64>,
    /// Latency (s), NAS-Bench-Graph.
    pub latency: Option<f64>,
    /// Parameters (millions), NAS-Bench-Graph.
    pub params: Option<f64>,
}

/// The reward a search maximises: accuracy minus optional penalties on latency and parameter
/// count, each divided by its maximum over the space (NAS-Bench-Graph's multi-objective form).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Objective {
    /// Weight of `latency / max latency`.
    pub latency_weight: f64,
    /// Weight of `params / max params`.
    pub params_weight: f64,
}

/// A benchmark table over a space.
#[derive(Clone, Debug)]
pub struct Benchmark {
    /// The space the table covers.
    pub space: CellSpace,
    /// `"nb201-analog"` or `"nas-bench-graph/<dataset>"`.
    pub name: String,
    records: HashMap<Cell, Record>,
    cells: Vec<Cell>,
    objective: Objective,
    max_latency: f64,
    max_params: f64,
}

/// The file a space name maps to under the converted-data directory.
pub fn benchmark_path(
    data_dir: &Path,
    space: &str,
    dataset: Option<&str>,
) -> Result<PathBuf, DagError> {
    match space {
        "nb201-analog" => Ok(data_dir.join("nb201_analog.csv")),
        "nas-bench-graph" => {
            let ds = dataset.ok_or_else(|| {
                DagError::Config("nas-bench-graph needs a dataset (e.g. cora, citeseer, pubmed, cs, physics, photo, computers, arxiv, proteins)".into())
            })?;
            if ds.is_empty() || !ds.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(DagError::Config(format!("bad dataset name {ds:?}")));
            }
            Ok(data_dir.join(format!("nbg_{ds}.csv")))
        }
        other => Err(DagError::Config(format!(
            "unknown space {other:?} (nb201-analog | nas-bench-graph)"
        ))),
    }
}

impl Benchmark {
    /// Opens `space` (`nb201-analog` | `nas-bench-graph` with a dataset) under `data_dir`.
    pub fn open(data_dir: &Path, space: &str, dataset: Option<&str>) -> Result<Self, DagError> {
        let path = benchmark_path(data_dir, space, dataset)?;
        match space {
            "nb201-analog" => Self::load_nb201(&path),
            _ => Self::load_nas_bench_graph(&path),
        }
    }

    /// Reads `nb201_analog.csv` (`arch,baseline_accuracy,…`).
    pub fn load_nb201(path: &Path) -> Result<Self, DagError> {
        let space = CellSpace::nb201();
        let mut rdr = reader(path, &["arch", "baseline_accuracy"])?;
        let mut records = HashMap::new();
        let mut cells = Vec::new();
        for (i, row) in rdr.records().enumerate() {
            let line = i + 2;
            let err = format_err(path, line);
            let row = row.map_err(|e| err(e.to_string()))?;
            let arch = row.get(0).unwrap_or("");
            let ops = dashed_ints(arch, "arch").map_err(err)?;
            let cell = Cell { ops, structure: 0 };
            space
                .check(&cell)
                .map_err(|m| err(format!("field arch: {arch:?}: {m}")))?;
            let acc = number(row.get(1), "baseline_accuracy").map_err(err)?;
            let canonical = cell.ops.iter().fold(0u64, |h, &o| h * 5 + o as u64);
            insert(
                &mut records,
                &mut cells,
                cell,
                Record {
                    canonical,
                    accuracy: acc,
                    test: None,
                    latency: None,
                    params: None,
                },
            )
            .map_err(err)?;
        }
        Self::finish(space, "nb201-analog".into(), records, cells, path)
    }

    /// Reads `nbg_<dataset>.csv` (`link,ops,hash,valid_perf,perf,latency,params`).
    pub fn load_nas_bench_graph(path: &Path) -> Result<Self, DagError> {
        let mut rdr = reader(
            path,
            &[
                "link",
                "ops",
                "hash",
                "valid_perf",
                "perf",
                "latency",
                "params",
            ],
        )?;
        let mut rows = Vec::new();
        let mut links: Vec<[u8; 4]> = Vec::new();
        let mut used_ops = [false; NBG_OPS.len()];
        for (i, row) in rdr.records().enumerate() {
            let line = i + 2;
            let err = format_err(path, line);
            let row = row.map_err(|e| err(e.to_string()))?;
            let link_s = row.get(0).unwrap_or("");
            let link = dashed_ints(link_s, "link").map_err(err)?;
            let link: [u8; 4] = link
                .try_into()
                .map_err(|_| err(format!("field link: {link_s:?} must have four entries")))?;
            if link.iter().enumerate().any(|(i, &l)| l as usize > i) {
                return Err(err(format!(
                    "field link: {link_s:?}: op i may only read nodes 0..=i (acyclic)"
                )));
            }
            let ops_s = row.get(1).unwrap_or("");
            let ops: Vec<u8> = ops_s
                .split('-')
                .map(|o| NBG_OPS.iter().position(|n| *n == o).map(|p| p as u8))
                .collect::<Option<_>>()
                .ok_or_else(|| err(format!("field ops: {ops_s:?} names an unknown operation")))?;
            if ops.len() != 4 {
                return Err(err(format!(
                    "field ops: {ops_s:?} must have four operations"
                )));
            }
            ops.iter().for_each(|&o| used_ops[o as usize] = true);
            let canonical: u64 = row.get(2).unwrap_or("").trim().parse().map_err(|_| {
                err(format!(
                    "field hash: {:?} is not an integer",
                    row.get(2).unwrap_or("")
                ))
            })?;
            let valid = number(row.get(3), "valid_perf").map_err(err)?;
            let test = number(row.get(4), "perf").map_err(err)?;
            let latency = number(row.get(5), "latency").map_err(err)?;
            let params = number(row.get(6), "params").map_err(err)?;
            if !links.contains(&link) {
                links.push(link);
            }
            rows.push((
                line,
                link,
                ops,
                Record {
                    canonical,
                    accuracy: valid,
                    test: Some(test),
                    latency: Some(latency),
                    params: Some(params),
                },
            ));
        }
        // The space: the file's links, and the operations it uses (in the package's order).
        let op_index: Vec<Option<u8>> = {
            let mut next = 0u8;
            used_ops
                .iter()
                .map(|&u| {
                    u.then(|| {
                        next += 1;
                        next - 1
                    })
                })
                .collect()
        };
        let ops: Vec<String> = NBG_OPS
            .iter()
            .zip(&used_ops)
            .filter(|(_, &u)| u)
            .map(|(n, _)| n.to_string())
            .collect();
        let space = CellSpace::nas_bench_graph(&links, ops);
        let mut records = HashMap::new();
        let mut cells = Vec::new();
        for (line, link, ops, rec) in rows {
            let err = format_err(path, line);
            let cell = Cell {
                ops: ops
                    .iter()
                    .map(|&o| op_index[o as usize].expect("used"))
                    .collect(),
                structure: links.iter().position(|l| *l == link).expect("collected") as u16,
            };
            space.check(&cell).map_err(|m| err(m))?;
            insert(&mut records, &mut cells, cell, rec).map_err(err)?;
        }
        let ds = path
            .file_stem()
            .and_then(|s| s.to_str())
            .and_then(|s| s.strip_prefix("nbg_"))
            .unwrap_or("custom")
            .to_string();
        Self::finish(space, format!("nas-bench-graph/{ds}"), records, cells, path)
    }

    fn finish(
        space: CellSpace,
        name: String,
        records: HashMap<Cell, Record>,
        cells: Vec<Cell>,
        path: &Path,
    ) -> Result<Self, DagError> {
        if cells.is_empty() {
            return Err(DagError::Format {
                path: path.to_path_buf(),
                line: 0,
                message: "no cells".into(),
            });
        }
        let max_of = |f: fn(&Record) -> Option<f64>| {
            records
                .values()
                .filter_map(f)
                .fold(0f64, f64::max)
                .max(1e-12)
        };
        let max_latency = max_of(|r| r.latency);
        let max_params = max_of(|r| r.params);
        Ok(Self {
            space,
            name,
            records,
            cells,
            objective: Objective::default(),
            max_latency,
            max_params,
        })
    }

    /// Uses `objective` as the reward from now on.
    pub fn with_objective(mut self, objective: Objective) -> Self {
        self.objective = objective;
        self
    }

    /// The record of a cell (`None` = not in the table).
    pub fn get(&self, cell: &Cell) -> Option<&Record> {
        self.records.get(cell)
    }

    /// The reward of a cell under the objective.
    pub fn reward(&self, cell: &Cell) -> Option<f64> {
        self.get(cell).map(|r| self.score(r))
    }

    /// The reward of a record under the objective.
    pub fn score(&self, r: &Record) -> f64 {
        let o = &self.objective;
        r.accuracy
            - o.latency_weight * r.latency.unwrap_or(0.0) / self.max_latency
            - o.params_weight * r.params.unwrap_or(0.0) / self.max_params
    }

    /// Every cell of the table, in file order.
    pub fn cells(&self) -> &[Cell] {
        &self.cells
    }

    /// The best reward in the table.
    pub fn optimum(&self) -> f64 {
        self.records
            .values()
            .map(|r| self.score(r))
            .fold(f64::NEG_INFINITY, f64::max)
    }
}

fn reader(path: &Path, expect: &[&str]) -> Result<csv::Reader<std::fs::File>, DagError> {
    let file = std::fs::File::open(path).map_err(|source| DagError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut rdr = csv::ReaderBuilder::new().flexible(false).from_reader(file);
    let header = rdr.headers().map_err(|e| DagError::Format {
        path: path.to_path_buf(),
        line: 1,
        message: format!("header: {e}"),
    })?;
    for (i, want) in expect.iter().enumerate() {
        if header.get(i) != Some(want) {
            return Err(DagError::Format {
                path: path.to_path_buf(),
                line: 1,
                message: format!(
                    "header column {} is {:?}, expected {want:?}",
                    i + 1,
                    header.get(i).unwrap_or("")
                ),
            });
        }
    }
    Ok(rdr)
}

/// The error of a malformed `line` of `path`.
fn format_err(path: &Path, line: usize) -> impl Fn(String) -> DagError + Copy + '_ {
    move |message| DagError::Format {
        path: path.to_path_buf(),
        line,
        message,
    }
}

/// `"0-1-1-2"` → `[0, 1, 1, 2]`.
fn dashed_ints(s: &str, name: &str) -> Result<Vec<u8>, String> {
    s.split('-')
        .map(|p| p.trim().parse::<u8>())
        .collect::<Result<_, _>>()
        .map_err(|_| format!("field {name}: {s:?} is not small integers joined by '-'"))
}

fn number(field: Option<&str>, name: &str) -> Result<f64, String> {
    let s = field.unwrap_or("").trim();
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() => Ok(v),
        _ => Err(format!("field {name}: {s:?} is not a finite number")),
    }
}

fn insert(
    records: &mut HashMap<Cell, Record>,
    cells: &mut Vec<Cell>,
    cell: Cell,
    rec: Record,
) -> Result<(), String> {
    if records.insert(cell.clone(), rec).is_some() {
        return Err(format!("duplicate cell {:?}", cell.ops));
    }
    cells.push(cell);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn write(content: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(content.as_bytes()).unwrap();
        f
    }

    #[test]
    fn malformed_tables_give_errors_naming_line_and_field() {
        let cases = [
            (
                "arch,baseline_accuracy\n0-0-0-0-0-0,60.5\n0-0-0-0-0,1\n",
                "line 3",
                "arch",
            ),
            (
                "arch,baseline_accuracy\n0-0-0-0-0-9,60.5\n",
                "line 2",
                "arch",
            ),
            (
                "arch,baseline_accuracy\n0-0-0-0-0-0,abc\n",
                "line 2",
                "baseline_accuracy",
            ),
            (
                "arch,baseline_accuracy\n0-0-0-0-0-0,NaN\n",
                "line 2",
                "baseline_accuracy",
            ),
            (
                "arch,baseline_accuracy\n0-0-0-0-0-0,1\n0-0-0-0-0-0,2\n",
                "line 3",
                "duplicate",
            ),
            ("wrong,header\n", "line 1", "header"),
            (
                "arch,baseline_accuracy\n0-0-0-0-0-0,1,extra\n",
                "line 2",
                "",
            ),
            ("", "line 1", "header"),
        ];
        for (content, line, field) in cases {
            let f = write(content);
            let e = Benchmark::load_nb201(f.path()).unwrap_err();
            let msg = e.to_string();
            assert!(matches!(e, DagError::Format { .. }), "{msg}");
            assert!(
                msg.contains(line) && msg.contains(field),
                "{content:?} → {msg}"
            );
        }
        let e = Benchmark::load_nb201(Path::new("/nonexistent/nb201.csv")).unwrap_err();
        assert!(matches!(e, DagError::Io { .. }));
        let f = write("link,ops,hash,valid_perf,perf,latency,params\n0-2-0-0,gcn-gcn-gcn-gcn,1,0.5,0.5,0.1,1\n");
        let msg = Benchmark::load_nas_bench_graph(f.path())
            .unwrap_err()
            .to_string();
        assert!(msg.contains("line 2") && msg.contains("link"), "{msg}");
        let f = write("link,ops,hash,valid_perf,perf,latency,params\n0-0-0-0,gcn-gcn-xyz-gcn,1,0.5,0.5,0.1,1\n");
        let msg = Benchmark::load_nas_bench_graph(f.path())
            .unwrap_err()
            .to_string();
        assert!(msg.contains("line 2") && msg.contains("ops"), "{msg}");
    }

    #[test]
    fn objective_penalises_latency() {
        let f = write("link,ops,hash,valid_perf,perf,latency,params\n0-0-0-0,gcn-gcn-gcn-gcn,1,0.8,0.7,2.0,1\n0-0-0-1,gcn-gcn-gcn-gat,2,0.7,0.7,1.0,1\n");
        let b = Benchmark::load_nas_bench_graph(f.path()).unwrap();
        assert!((b.optimum() - 0.8).abs() < 1e-12);
        let b = b.with_objective(Objective {
            latency_weight: 0.3,
            params_weight: 0.0,
        });
        // 0.8 − 0.3·1 = 0.5 < 0.7 − 0.3·0.5 = 0.55
        assert!((b.optimum() - 0.55).abs() < 1e-12);
    }
}
