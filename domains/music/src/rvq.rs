//! Residual vector quantisation with codebooks trained by k-means.
//!
//! Level 0 quantises the vector, level 1 what level 0 left over, and so on. Each level's
//! codebook is fitted by Lloyd's k-means on the residuals of the levels before it
//! (initialised from distinct data points, empty clusters re-seeded with the worst-fitted
//! points). Nearest-code search is one matrix product per chunk of rows:
//! `‖x − c‖² = ‖x‖² − 2x·c + ‖c‖²`, split over two threads.

use ndarray::{s, Array1, Array2, ArrayView2, Axis};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;

/// Codebooks of a residual VQ: `levels × [codes, dim]`.
#[derive(Clone, Debug)]
pub struct ResidualVq {
    /// One `[codes, dim]` codebook per level.
    pub codebooks: Vec<Array2<f32>>,
}

const CHUNK: usize = 2048;

/// Index of the nearest code for each row of `x` (and the squared distance).
pub fn nearest(x: ArrayView2<f32>, codebook: &Array2<f32>) -> Vec<(u32, f32)> {
    let c_norm: Array1<f32> = codebook.rows().into_iter().map(|r| r.dot(&r)).collect();
    let work = |part: ArrayView2<f32>| -> Vec<(u32, f32)> {
        let mut out = Vec::with_capacity(part.nrows());
        for chunk in part.axis_chunks_iter(Axis(0), CHUNK) {
            let dots = chunk.dot(&codebook.t());
            for (row, d) in chunk.rows().into_iter().zip(dots.rows()) {
                let xn = row.dot(&row);
                let mut best = (0u32, f32::INFINITY);
                for (k, (&dk, &cn)) in d.iter().zip(c_norm.iter()).enumerate() {
                    let dist = xn - 2.0 * dk + cn;
                    if dist < best.1 {
                        best = (k as u32, dist);
                    }
                }
                out.push((best.0, best.1.max(0.0)));
            }
        }
        out
    };
    let n = x.nrows();
    if n < 2 * CHUNK {
        return work(x);
    }
    let mid = n / 2;
    let (a, b) = (x.slice(s![..mid, ..]), x.slice(s![mid.., ..]));
    std::thread::scope(|scope| {
        let h = scope.spawn(|| work(b));
        let mut first = work(a);
        first.extend(h.join().expect("nearest-code worker"));
        first
    })
}

/// Fits one codebook of `k` codes to the rows of `x` by `iters` Lloyd iterations.
pub fn kmeans(x: ArrayView2<f32>, k: usize, iters: usize, seed: u64) -> Array2<f32> {
    let (n, d) = x.dim();
    assert!(n > 0 && k > 0, "k-means needs data and codes");
    let mut rng = StdRng::seed_from_u64(seed);
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut rng);
    let mut centers = Array2::<f32>::zeros((k, d));
    for (j, mut row) in centers.rows_mut().into_iter().enumerate() {
        row.assign(&x.row(order[j % n]));
    }
    for _ in 0..iters {
        let assign = nearest(x, &centers);
        let mut sums = Array2::<f64>::zeros((k, d));
        let mut counts = vec![0usize; k];
        for (row, &(c, _)) in x.rows().into_iter().zip(&assign) {
            let mut srow = sums.row_mut(c as usize);
            for (s, &v) in srow.iter_mut().zip(row.iter()) {
                *s += v as f64;
            }
            counts[c as usize] += 1;
        }
        // Empty clusters take the worst-fitted points, so no code is wasted.
        let mut worst: Vec<usize> = (0..n).collect();
        worst.sort_by(|&a, &b| assign[b].1.total_cmp(&assign[a].1));
        let mut next_worst = worst.into_iter();
        for j in 0..k {
            let mut row = centers.row_mut(j);
            if counts[j] > 0 {
                let inv = 1.0 / counts[j] as f64;
                for (c, s) in row.iter_mut().zip(sums.row(j).iter()) {
                    *c = (s * inv) as f32;
                }
            } else if let Some(i) = next_worst.next() {
                row.assign(&x.row(i));
            }
        }
    }
    centers
}

impl ResidualVq {
    /// Trains `levels` codebooks of `codes` entries on the rows of `x`.
    pub fn train(x: ArrayView2<f32>, levels: usize, codes: usize, iters: usize, seed: u64) -> Self {
        let mut residual = x.to_owned();
        let mut codebooks = Vec::with_capacity(levels);
        for l in 0..levels {
            let cb = kmeans(
                residual.view(),
                codes,
                iters,
                seed.wrapping_add(l as u64 * 7919),
            );
            let assign = nearest(residual.view(), &cb);
            for (mut row, &(c, _)) in residual.rows_mut().into_iter().zip(&assign) {
                row -= &cb.row(c as usize);
            }
            tracing::info!(
                level = l,
                residual_energy = residual.iter().map(|v| (v * v) as f64).sum::<f64>()
                    / residual.nrows().max(1) as f64,
                "rvq level trained"
            );
            codebooks.push(cb);
        }
        Self { codebooks }
    }

    /// Number of levels.
    pub fn levels(&self) -> usize {
        self.codebooks.len()
    }

    /// Codes `[rows, levels]` of the rows of `x`.
    pub fn encode(&self, x: ArrayView2<f32>) -> Array2<u32> {
        let mut residual = x.to_owned();
        let mut codes = Array2::<u32>::zeros((x.nrows(), self.levels()));
        for (l, cb) in self.codebooks.iter().enumerate() {
            let assign = nearest(residual.view(), cb);
            for (i, (mut row, &(c, _))) in residual.rows_mut().into_iter().zip(&assign).enumerate()
            {
                row -= &cb.row(c as usize);
                codes[[i, l]] = c;
            }
        }
        codes
    }

    /// Sum of the chosen codes per row.
    pub fn decode(&self, codes: ArrayView2<u32>) -> Array2<f32> {
        let dim = self.codebooks.first().map_or(0, |c| c.ncols());
        let mut out = Array2::<f32>::zeros((codes.nrows(), dim));
        for (mut row, c) in out.rows_mut().into_iter().zip(codes.rows()) {
            for (l, &code) in c.iter().enumerate() {
                row += &self.codebooks[l].row(code as usize);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::Rng;

    #[test]
    fn each_level_reduces_error_and_clusters_are_found() {
        let mut rng = StdRng::seed_from_u64(3);
        // Four well-separated clusters plus noise: one level of 4 codes finds them.
        let centers = [
            [5.0, 0.0, 0.0],
            [0.0, 5.0, 0.0],
            [0.0, 0.0, 5.0],
            [-5.0, -5.0, 0.0],
        ];
        let x = Array2::from_shape_fn((400, 3), |(i, j)| {
            centers[i % 4][j] + rng.random_range(-0.5..0.5)
        });
        let vq = ResidualVq::train(x.view(), 3, 4, 20, 1);
        let codes = vq.encode(x.view());
        // Level 0 separates the clusters exactly.
        for i in 0..400 {
            assert_eq!(codes[[i, 0]], codes[[i % 4, 0]]);
        }
        let mut prev = f32::INFINITY;
        for levels in 1..=3 {
            let part = ResidualVq {
                codebooks: vq.codebooks[..levels].to_vec(),
            };
            let y = part.decode(codes.slice(s![.., ..levels]));
            let err: f32 = (&x - &y).iter().map(|v| v * v).sum();
            assert!(err < prev, "level {levels}: {err} !< {prev}");
            prev = err;
        }
    }
}
