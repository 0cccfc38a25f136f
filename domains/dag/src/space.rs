//! Search spaces of neural-architecture cells, as node-labelled DAGs.
//!
//! A cell is a DAG over `n_inner + 2` nodes in topological order: node 0 is the input, the last
//! node the output, the inner nodes carry one operation each. Its wiring is one of the space's
//! [`Structure`]s (NAS-Bench-201 has one fixed wiring; NAS-Bench-Graph nine).
//!
//! * **NAS-Bench-201** puts operations on the six edges of a 4-node cell. As in the
//!   node-labelled form used by NAS-Bench-101-style generators, each edge becomes an inner node:
//!   edge `u→v` (order `0→1, 0→2, 0→3, 1→2, 1→3, 2→3`, the analog-nasbench tuple order) reads
//!   from the input when `u = 0`, else from every edge node ending at `u`; the output reads from
//!   the edge nodes ending at node 3. Op codes are analog-nasbench's (see `datasets/nasbench`).
//! * **NAS-Bench-Graph** has four operation nodes; `link[i]` names the node op `i` reads
//!   (0 = input, `k` = op `k`); the output aggregates every op no other op reads. Only the
//!   benchmark's nine canonical links are structures; the all-`skip` cell is excluded.

use rand::Rng;
use serde::{Deserialize, Serialize};

/// Which benchmark family a space belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SpaceKind {
    /// NAS-Bench-201 cell space (analog-nasbench's table).
    Nb201,
    /// NAS-Bench-Graph GNN space.
    NasBenchGraph,
}

/// NAS-Bench-201 edge order of the analog-nasbench tuples: `(from, to)` of each position.
pub const NB201_EDGES: [(usize, usize); 6] = [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)];

/// NAS-Bench-201 op names by analog-nasbench code. Code 1 = `none` is checked against the
/// data by `datasets/nasbench/convert.py`; the rest follow the ranking of mean accuracies
/// (documented as inferred in the dataset README).
pub const NB201_OPS: [&str; 5] = [
    "skip_connect",
    "none",
    "nor_conv_3x3",
    "nor_conv_1x1",
    "avg_pool_3x3",
];

/// NAS-Bench-Graph operations in the package's own order.
pub const NBG_OPS: [&str; 9] = [
    "gat", "gcn", "gin", "cheb", "sage", "arma", "graph", "fc", "skip",
];

/// One wiring of a space: `adj[i][j]` = edge `j → i` (`j < i`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Structure {
    /// How the benchmark spells it (`"fixed"` or a link such as `"0-1-1-2"`).
    pub label: String,
    /// Lower-triangular adjacency, `n_nodes × n_nodes`.
    pub adj: Vec<Vec<bool>>,
}

/// A point of a space: an operation index (into [`CellSpace::ops`]) per inner node and the
/// index of its [`Structure`].
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Cell {
    /// Operation per inner node.
    pub ops: Vec<u8>,
    /// Index into [`CellSpace::structures`].
    pub structure: u16,
}

/// A cell search space.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CellSpace {
    /// Family.
    pub kind: SpaceKind,
    /// Operation names of the inner nodes.
    pub ops: Vec<String>,
    /// Inner (operation) nodes per cell.
    pub n_inner: usize,
    /// Allowed wirings.
    pub structures: Vec<Structure>,
    /// An operation that may not fill *every* inner node (NAS-Bench-Graph's all-`skip`).
    pub forbid_uniform: Option<u8>,
}

impl CellSpace {
    /// The NAS-Bench-201 space (15,625 cells).
    pub fn nb201() -> Self {
        let n = 8;
        let mut adj = vec![vec![false; n]; n];
        for (k, &(u, _)) in NB201_EDGES.iter().enumerate() {
            if u == 0 {
                adj[1 + k][0] = true;
            }
            for (m, &(_, v)) in NB201_EDGES.iter().enumerate() {
                if v == u && u != 0 {
                    adj[1 + k][1 + m] = true;
                }
            }
            if NB201_EDGES[k].1 == 3 {
                adj[n - 1][1 + k] = true;
            }
        }
        Self {
            kind: SpaceKind::Nb201,
            ops: NB201_OPS.iter().map(|s| s.to_string()).collect(),
            n_inner: 6,
            structures: vec![Structure {
                label: "fixed".into(),
                adj,
            }],
            forbid_uniform: None,
        }
    }

    /// A NAS-Bench-Graph space over the given canonical links and operations.
    pub fn nas_bench_graph(links: &[[u8; 4]], ops: Vec<String>) -> Self {
        let forbid_uniform = ops.iter().position(|o| o == "skip").map(|i| i as u8);
        let structures = links
            .iter()
            .map(|link| {
                let n = 6;
                let mut adj = vec![vec![false; n]; n];
                let mut read = [false; 5];
                for (i, &src) in link.iter().enumerate() {
                    adj[i + 1][src as usize] = true;
                    read[src as usize] = true;
                }
                for k in 1..=4 {
                    if !read[k] {
                        adj[n - 1][k] = true;
                    }
                }
                Structure {
                    label: link_label(link),
                    adj,
                }
            })
            .collect();
        Self {
            kind: SpaceKind::NasBenchGraph,
            ops,
            n_inner: 4,
            structures,
            forbid_uniform,
        }
    }

    /// Nodes per cell (input + inner + output).
    pub fn n_nodes(&self) -> usize {
        self.n_inner + 2
    }

    /// Number of cells in the space.
    pub fn size(&self) -> usize {
        let per =
            self.ops.len().pow(self.n_inner as u32) - usize::from(self.forbid_uniform.is_some());
        per * self.structures.len()
    }

    /// Whether `cell` is a point of the space.
    pub fn check(&self, cell: &Cell) -> Result<(), String> {
        if cell.ops.len() != self.n_inner {
            return Err(format!(
                "{} operations, the space has {} inner nodes",
                cell.ops.len(),
                self.n_inner
            ));
        }
        if let Some(&o) = cell.ops.iter().find(|&&o| o as usize >= self.ops.len()) {
            return Err(format!(
                "operation index {o} outside {} operations",
                self.ops.len()
            ));
        }
        if cell.structure as usize >= self.structures.len() {
            return Err(format!(
                "structure {} outside {}",
                cell.structure,
                self.structures.len()
            ));
        }
        if let Some(u) = self.forbid_uniform {
            if cell.ops.iter().all(|&o| o == u) {
                return Err(format!("every node is {}", self.ops[u as usize]));
            }
        }
        Ok(())
    }

    /// A uniformly random cell of the space.
    pub fn random_cell<R: Rng>(&self, rng: &mut R) -> Cell {
        loop {
            let cell = Cell {
                ops: (0..self.n_inner)
                    .map(|_| rng.random_range(0..self.ops.len()) as u8)
                    .collect(),
                structure: rng.random_range(0..self.structures.len()) as u16,
            };
            if self.check(&cell).is_ok() {
                return cell;
            }
        }
    }

    /// A neighbour for regularised evolution: one operation changed, or (when the space has
    /// several wirings, with probability 1/2) another wiring.
    pub fn mutate<R: Rng>(&self, cell: &Cell, rng: &mut R) -> Cell {
        loop {
            let mut c = cell.clone();
            if self.structures.len() > 1 && rng.random_bool(0.5) {
                let s = rng.random_range(0..self.structures.len() - 1) as u16;
                c.structure = if s >= cell.structure { s + 1 } else { s };
            } else {
                let i = rng.random_range(0..self.n_inner);
                let o = rng.random_range(0..self.ops.len() - 1) as u8;
                c.ops[i] = if o >= cell.ops[i] { o + 1 } else { o };
            }
            if self.check(&c).is_ok() {
                return c;
            }
        }
    }

    /// The benchmark's spelling of a cell: NAS-Bench-201 `"2-2-0-2-3-2"` (op codes);
    /// NAS-Bench-Graph `"0-1-1-2|gcn-gat-sage-fc"` (link | ops).
    pub fn key(&self, cell: &Cell) -> String {
        match self.kind {
            SpaceKind::Nb201 => join(cell.ops.iter().map(|o| o.to_string())),
            SpaceKind::NasBenchGraph => format!(
                "{}|{}",
                self.structures[cell.structure as usize].label,
                join(cell.ops.iter().map(|&o| self.ops[o as usize].clone()))
            ),
        }
    }

    /// Full `n_nodes × n_nodes` adjacency of a cell (`adj[i][j]` = edge `j → i`).
    pub fn adjacency(&self, cell: &Cell) -> &[Vec<bool>] {
        &self.structures[cell.structure as usize].adj
    }
}

/// `"0-1-1-2"`.
pub fn link_label(link: &[u8; 4]) -> String {
    join(link.iter().map(|l| l.to_string()))
}

fn join(parts: impl Iterator<Item = String>) -> String {
    parts.collect::<Vec<_>>().join("-")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_dag_in_order(adj: &[Vec<bool>]) -> bool {
        adj.iter()
            .enumerate()
            .all(|(i, row)| row.iter().enumerate().all(|(j, &e)| !e || j < i))
    }

    #[test]
    fn nb201_wiring_matches_the_cell() {
        let s = CellSpace::nb201();
        let adj = &s.structures[0].adj;
        assert!(is_dag_in_order(adj));
        // Edge node 2→3 (index 5 → node 6) reads edges 0→2 (node 2) and 1→2 (node 4).
        assert_eq!(
            (0..8).filter(|&j| adj[6][j]).collect::<Vec<_>>(),
            vec![2, 4]
        );
        // The output reads 0→3, 1→3, 2→3.
        assert_eq!(
            (0..8).filter(|&j| adj[7][j]).collect::<Vec<_>>(),
            vec![3, 5, 6]
        );
        assert_eq!(s.size(), 15_625);
    }

    #[test]
    fn nbg_output_reads_the_leaves() {
        let s = CellSpace::nas_bench_graph(
            &[[0, 0, 1, 2]],
            NBG_OPS.iter().map(|s| s.to_string()).collect(),
        );
        let adj = &s.structures[0].adj;
        assert!(is_dag_in_order(adj));
        assert_eq!(
            (0..6).filter(|&j| adj[5][j]).collect::<Vec<_>>(),
            vec![3, 4]
        );
        assert_eq!(s.size(), 9usize.pow(4) - 1);
        let all_skip = Cell {
            ops: vec![8; 4],
            structure: 0,
        };
        assert!(s.check(&all_skip).is_err());
    }

    #[test]
    fn mutation_changes_exactly_one_thing() {
        let s = CellSpace::nb201();
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        use rand::SeedableRng;
        for _ in 0..200 {
            let c = s.random_cell(&mut rng);
            let m = s.mutate(&c, &mut rng);
            let diff = c.ops.iter().zip(&m.ops).filter(|(a, b)| a != b).count();
            assert_eq!(diff, 1);
        }
    }
}
