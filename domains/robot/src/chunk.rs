//! Action chunks and the per-dimension quantile statistics both action tokenizers normalise by.

use serde::{Deserialize, Serialize};

use crate::error::RobotError;

/// `horizon` future actions of `dim` values each, row-major (`[H, D]`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ActionChunk {
    /// Actions in the chunk (H).
    pub horizon: usize,
    /// Values per action (D).
    pub dim: usize,
    /// `horizon × dim` values, time-major.
    pub values: Vec<f32>,
}

impl ActionChunk {
    /// A chunk from row-major values; errors when the length does not match.
    pub fn new(horizon: usize, dim: usize, values: Vec<f32>) -> Result<Self, RobotError> {
        if values.len() != horizon * dim {
            return Err(RobotError::Config(format!(
                "action chunk has {} values, expected {horizon} × {dim}",
                values.len()
            )));
        }
        Ok(Self {
            horizon,
            dim,
            values,
        })
    }

    /// Action `t` (D values).
    pub fn action(&self, t: usize) -> &[f32] {
        &self.values[t * self.dim..(t + 1) * self.dim]
    }
}

/// Per-dimension 1st/99th percentiles of the training actions: values map linearly from
/// `[q01, q99]` to `[-1, 1]` and are clipped there (π0-FAST / E0 normalisation; robust to the
/// rare large actions a percentile ignores). Stored with the model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ActionStats {
    /// 1st percentile per dimension.
    pub q01: Vec<f32>,
    /// 99th percentile per dimension.
    pub q99: Vec<f32>,
}

impl ActionStats {
    /// Percentiles of `actions` (`n × dim`, row-major).
    pub fn fit(actions: &[f32], dim: usize) -> Result<Self, RobotError> {
        if dim == 0 || actions.is_empty() || !actions.len().is_multiple_of(dim) {
            return Err(RobotError::Config(format!(
                "cannot fit action statistics on {} values of dimension {dim}",
                actions.len()
            )));
        }
        if actions.iter().any(|v| !v.is_finite()) {
            return Err(RobotError::Config("actions contain NaN or infinity".into()));
        }
        let n = actions.len() / dim;
        let mut q01 = Vec::with_capacity(dim);
        let mut q99 = Vec::with_capacity(dim);
        let mut col = Vec::with_capacity(n);
        for d in 0..dim {
            col.clear();
            col.extend((0..n).map(|i| actions[i * dim + d]));
            col.sort_by(f32::total_cmp);
            q01.push(quantile(&col, 0.01));
            q99.push(quantile(&col, 0.99));
        }
        Ok(Self { q01, q99 })
    }

    /// Dimensions.
    pub fn dim(&self) -> usize {
        self.q01.len()
    }

    /// Value of dimension `d` in `[-1, 1]` (clipped). A constant dimension maps to 0.
    pub fn normalize(&self, d: usize, v: f32) -> f32 {
        let (lo, hi) = (self.q01[d], self.q99[d]);
        if hi - lo <= f32::EPSILON {
            return 0.0;
        }
        (2.0 * (v - lo) / (hi - lo) - 1.0).clamp(-1.0, 1.0)
    }

    /// Inverse of [`Self::normalize`] inside the percentile range.
    pub fn denormalize(&self, d: usize, u: f32) -> f32 {
        let (lo, hi) = (self.q01[d], self.q99[d]);
        if hi - lo <= f32::EPSILON {
            return lo;
        }
        lo + (u.clamp(-1.0, 1.0) + 1.0) * 0.5 * (hi - lo)
    }
}

/// Linear-interpolated quantile of sorted values.
fn quantile(sorted: &[f32], q: f64) -> f32 {
    let pos = q * (sorted.len() - 1) as f64;
    let i = pos.floor() as usize;
    let j = (i + 1).min(sorted.len() - 1);
    let f = (pos - i as f64) as f32;
    sorted[i] * (1.0 - f) + sorted[j] * f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_and_normalisation_invert() {
        let actions: Vec<f32> = (0..1000).flat_map(|i| [i as f32, 5.0]).collect();
        let s = ActionStats::fit(&actions, 2).unwrap();
        assert!((s.q01[0] - 9.99).abs() < 1e-3 && (s.q99[0] - 989.01).abs() < 1e-2);
        assert_eq!(s.normalize(1, 5.0), 0.0);
        assert_eq!(s.denormalize(1, 0.3), 5.0);
        for v in [20.0f32, 500.0, 900.0] {
            assert!((s.denormalize(0, s.normalize(0, v)) - v).abs() < 1e-3);
        }
        assert_eq!(s.normalize(0, -100.0), -1.0);
        assert!(ActionStats::fit(&[f32::NAN, 1.0], 2).is_err());
        assert!(ActionStats::fit(&[1.0, 2.0, 3.0], 2).is_err());
    }
}
