//! Noise and learning-rate schedules.

use rand::Rng;
use rand_distr::{Beta, Distribution};
use serde::{Deserialize, Serialize};

/// How each block's masked-token losses are weighted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum LossWeighting {
    /// `1/t`: the NELBO weight of the linear schedule `α_t = 1 − t` (BD3-LM).
    #[default]
    InverseT,
    /// `1/r` with `r` the block's realised mask ratio: lower variance, same expectation when
    /// the ratio concentrates around `t` (SDAR-VL's "effective mask ratio").
    RealisedMaskRatio,
    /// The evaluation estimator used for training: per block `k = ⌊t·B⌋ + 1` positions (so
    /// `k ~ U{1..B}` for `t ~ U[0, 1]`) are masked uniformly at random, loss weight `B/k`.
    /// Unbiased for the NELBO like `1/t`, but no block goes without a masked token and no
    /// weight exceeds `B` (with `1/t` and `t_min = 0.02` a lone masked token weighs 50), and
    /// a block of size 1 is always masked: the AR mode trains on every token, not on a
    /// `t`-fraction of them.
    MaskCount,
}

/// SDAR-VL's Beta noise curriculum: per-block rates `t ~ Beta(μC, (1 − μ)C)` with mean `μ` and
/// concentration `C` moved linearly from their start to their end values over training, then
/// clipped to `[t_min, t_max]`. Early training sees a broad spread of noise levels; later
/// training concentrates around `μ_end`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BetaCurriculum {
    /// Mean `μ` at the first step.
    pub mu_start: f64,
    /// Mean `μ` at the last step.
    pub mu_end: f64,
    /// Concentration `C` at the first step.
    pub c_start: f64,
    /// Concentration `C` at the last step.
    pub c_end: f64,
}

impl BetaCurriculum {
    /// The reasoning schedule reported for SDAR-VL: `μ` 0.5 → 0.7, `C` 4 → 25.
    pub fn sdar_vl() -> Self {
        Self {
            mu_start: 0.5,
            mu_end: 0.7,
            c_start: 4.0,
            c_end: 25.0,
        }
    }

    /// Checks `μ ∈ (0, 1)` and `C > 0` at both ends.
    pub fn validate(&self) -> Result<(), String> {
        let mu_ok = |m: f64| m > 0.0 && m < 1.0;
        if !mu_ok(self.mu_start) || !mu_ok(self.mu_end) {
            return Err("beta curriculum mu must be in (0, 1)".into());
        }
        if !(self.c_start > 0.0
            && self.c_end > 0.0
            && self.c_start.is_finite()
            && self.c_end.is_finite())
        {
            return Err("beta curriculum concentration must be finite and > 0".into());
        }
        Ok(())
    }

    /// `n` rates at training progress `progress ∈ [0, 1]`, clipped to `[t_min, t_max]`.
    pub fn sample<R: Rng>(
        &self,
        n: usize,
        progress: f64,
        t_min: f64,
        t_max: f64,
        rng: &mut R,
    ) -> Vec<f64> {
        let f = progress.clamp(0.0, 1.0);
        let mu = self.mu_start + (self.mu_end - self.mu_start) * f;
        let c = self.c_start + (self.c_end - self.c_start) * f;
        let beta = Beta::new(mu * c, (1.0 - mu) * c).expect("validated parameters");
        (0..n)
            .map(|_| beta.sample(rng).clamp(t_min, t_max))
            .collect()
    }
}

/// Draws one masking rate per block: `t ~ U[t_min, t_max]`, antithetic (stratified) over all
/// blocks of a batch so the batch covers the interval evenly, as BD3-LM does.
pub fn sample_mask_rates<R: Rng>(
    n: usize,
    t_min: f64,
    t_max: f64,
    antithetic: bool,
    rng: &mut R,
) -> Vec<f64> {
    let mut u: Vec<f64> = if antithetic {
        let off: f64 = rng.random();
        (0..n)
            .map(|k| (off + k as f64 / n as f64).fract())
            .collect()
    } else {
        (0..n).map(|_| rng.random()).collect()
    };
    if antithetic {
        // Shuffle so stratum k is not tied to block k.
        for i in (1..n).rev() {
            let j = rng.random_range(0..=i);
            u.swap(i, j);
        }
    }
    u.into_iter().map(|u| t_min + (t_max - t_min) * u).collect()
}

/// Picks a block size from a weighted mixture.
pub fn sample_block_size<R: Rng>(sizes: &[usize], weights: &[f64], rng: &mut R) -> usize {
    let total: f64 = weights.iter().sum();
    let mut r = rng.random::<f64>() * total;
    for (s, w) in sizes.iter().zip(weights) {
        if r < *w {
            return *s;
        }
        r -= w;
    }
    *sizes.last().expect("non-empty block size list")
}

/// Linear warm-up to `peak`, then cosine decay to `peak · min_ratio` at `total` steps.
pub fn warmup_cosine(step: usize, warmup: usize, total: usize, peak: f64, min_ratio: f64) -> f64 {
    if warmup > 0 && step < warmup {
        return peak * (step + 1) as f64 / warmup as f64;
    }
    let span = total.saturating_sub(warmup).max(1);
    let p = ((step - warmup.min(step)) as f64 / span as f64).min(1.0);
    let min = peak * min_ratio;
    min + (peak - min) * 0.5 * (1.0 + (std::f64::consts::PI * p).cos())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn beta_curriculum_moves_its_mean_and_narrows() {
        let c = BetaCurriculum::sdar_vl();
        let mut rng = rand::rngs::StdRng::seed_from_u64(4);
        let stats = |progress: f64, rng: &mut rand::rngs::StdRng| {
            let t = c.sample(20_000, progress, 0.02, 1.0, rng);
            let mean = t.iter().sum::<f64>() / t.len() as f64;
            let var = t.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / t.len() as f64;
            assert!(t.iter().all(|&x| (0.02..=1.0).contains(&x)));
            (mean, var)
        };
        let (m0, v0) = stats(0.0, &mut rng);
        let (m1, v1) = stats(1.0, &mut rng);
        // Beta(μC, (1-μ)C): mean μ, variance μ(1-μ)/(C+1).
        assert!((m0 - 0.5).abs() < 0.01, "start mean {m0}");
        assert!((m1 - 0.7).abs() < 0.01, "end mean {m1}");
        assert!((v0 - 0.25 / 5.0).abs() < 0.005, "start variance {v0}");
        assert!((v1 - 0.21 / 26.0).abs() < 0.002, "end variance {v1}");
        assert!(BetaCurriculum {
            mu_start: 1.0,
            ..c.clone()
        }
        .validate()
        .is_err());
    }

    #[test]
    fn antithetic_rates_cover_the_interval_evenly() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let mut t = sample_mask_rates(100, 0.2, 0.8, true, &mut rng);
        t.sort_by(f64::total_cmp);
        for (k, v) in t.iter().enumerate() {
            // One draw per stratum of width 0.006.
            let lo = 0.2 + 0.6 * (k as f64 / 100.0) - 0.006;
            assert!(*v >= lo && *v <= lo + 0.0121, "stratum {k}: {v}");
        }
    }

    #[test]
    fn warmup_then_cosine() {
        assert!((warmup_cosine(0, 10, 100, 1.0, 0.1) - 0.1).abs() < 1e-12);
        assert!((warmup_cosine(9, 10, 100, 1.0, 0.1) - 1.0).abs() < 1e-12);
        assert!((warmup_cosine(100, 10, 100, 1.0, 0.1) - 0.1).abs() < 1e-12);
        let mid = warmup_cosine(55, 10, 100, 1.0, 0.1);
        assert!((mid - 0.55).abs() < 1e-9, "{mid}");
    }
}
