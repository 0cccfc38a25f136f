//! Reward fine-tuning: steer a trained generator toward high reward with a policy gradient over
//! the sampler's own denoising trajectory (GDPO's *eager* policy gradient, Liu et al. 2024).
//!
//! A sample `x_0` is produced by a chain of partially masked states `x_T → … → x_0`; the
//! sampler records when each token was committed ([`crate::sample::SampleOutput::commit_steps`]),
//! so every intermediate state can be rebuilt exactly. The update ascends
//! `E[A(x_0) · Σ_t log p_θ(x_0 | x_t)]`: for each block one step `t` of its trajectory is drawn
//! uniformly and weighted by the block's step count (an unbiased estimate of the sum over
//! steps), and all blocks of a sample are scored in one BD3-LM `x_t ⊕ x_0` forward — the same
//! vectorised pass as pre-training ([`crate::train::batch_from_states`]).
//!
//! Around that gradient: rewards normalised by a running mean/std, advantages clipped,
//! duplicates within a batch dropped (each distinct sample counts once), invalid samples given
//! the most negative advantage, and optionally the lower layers frozen.

use burn::module::AutodiffModule;
use burn::optim::adaptor::OptimizerAdaptor;
use burn::optim::{AdamW, AdamWConfig, GradientsParams, Optimizer};
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::condition::Conditioning;
use crate::error::TrainError;
use crate::model::{BlockDiffusionConfig, BlockDiffusionModel};
use crate::sample::{SampleOutput, NOT_COMMITTED};
use crate::tokenizer::MASK;
use crate::train::{batch_from_states, batch_loss, clip_global_norm};

/// Running mean and standard deviation of rewards, for advantage normalisation: over all
/// rewards so far or, with a `decay` below 1, exponentially weighted so the baseline follows a
/// policy that improves quickly.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RewardNormalizer {
    count: f64,
    mean: f64,
    var: f64,
    decay: Option<f64>,
}

impl RewardNormalizer {
    /// Cumulative (`decay >= 1`) or exponentially weighted (`decay < 1`) statistics.
    pub fn new(decay: f64) -> Self {
        Self {
            decay: (decay < 1.0).then_some(decay.max(0.0)),
            ..Self::default()
        }
    }

    /// Adds rewards to the running statistics.
    pub fn update(&mut self, rewards: &[f64]) {
        for &r in rewards {
            self.count += 1.0;
            // Weight of the new reward: 1/n (exact running moments), at least 1 − decay (EMA).
            let w = match self.decay {
                Some(g) => (1.0 / self.count).max(1.0 - g),
                None => 1.0 / self.count,
            };
            let d = r - self.mean;
            self.mean += w * d;
            self.var = (1.0 - w) * (self.var + w * d * d);
        }
    }

    /// Running mean.
    pub fn mean(&self) -> f64 {
        self.mean
    }

    /// Running standard deviation, at least `1e-8` (1 before two rewards).
    pub fn std(&self) -> f64 {
        if self.count < 2.0 {
            1.0
        } else {
            self.var.sqrt().max(1e-8)
        }
    }

    /// `(r − mean) / std`.
    pub fn normalize(&self, r: f64) -> f64 {
        (r - self.mean) / self.std()
    }
}

/// Settings of the policy-gradient fine-tuner.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PolicyGradientConfig {
    /// AdamW learning rate (constant).
    pub lr: f64,
    /// AdamW weight decay.
    pub weight_decay: f64,
    /// Global gradient-norm clip; 0 = off.
    pub grad_clip: f64,
    /// Advantages are clipped to `[-adv_clip, adv_clip]`; invalid samples get `-adv_clip`.
    pub adv_clip: f64,
    /// Trajectory states replayed per sample and update (each draws its own step per block).
    pub states_per_sample: usize,
    /// Gradient steps per batch of samples.
    pub epochs: usize,
    /// Freeze the embedding and this many lowest transformer layers.
    pub freeze_layers: usize,
    /// Reward statistics: 1 = over all rewards so far, below 1 = exponential decay per reward.
    pub reward_decay: f64,
    /// Seed of the state draws.
    pub seed: u64,
}

impl Default for PolicyGradientConfig {
    fn default() -> Self {
        Self {
            lr: 3e-4,
            weight_decay: 0.0,
            grad_clip: 1.0,
            adv_clip: 3.0,
            states_per_sample: 2,
            epochs: 1,
            freeze_layers: 0,
            reward_decay: 1.0,
            seed: 0,
        }
    }
}

/// One sample with its denoising trajectory.
#[derive(Clone, Debug)]
pub struct Rollout {
    /// The request's conditioning (prompt and/or vectors).
    pub condition: Conditioning,
    /// Generated tokens, a whole number of blocks (`PAD` after the end).
    pub tokens: Vec<u32>,
    /// Per token, the call within its block that committed it ([`NOT_COMMITTED`] for padding).
    pub commit_steps: Vec<u32>,
}

/// Rollouts of a sampling call, in request order.
pub fn rollouts(output: &SampleOutput, requests: &[Conditioning]) -> Vec<Rollout> {
    output
        .full_sequences
        .iter()
        .zip(&output.commit_steps)
        .zip(requests)
        .map(|((t, c), r)| Rollout {
            condition: r.clone(),
            tokens: t.clone(),
            commit_steps: c.clone(),
        })
        .collect()
}

/// What one [`PolicyGradientTrainer::step`] did.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct PolicyGradientReport {
    /// Distinct samples used (after dropping duplicates).
    pub unique: usize,
    /// Of those, samples without a reward (invalid).
    pub invalid: usize,
    /// Mean raw reward of the valid distinct samples.
    pub mean_reward: f64,
    /// Mean surrogate loss over the epochs.
    pub loss: f64,
}

/// Fine-tunes a model on rewards of its own samples.
pub struct PolicyGradientTrainer<B: AutodiffBackend> {
    model: BlockDiffusionModel<B>,
    model_cfg: BlockDiffusionConfig,
    optim: OptimizerAdaptor<AdamW, BlockDiffusionModel<B>, B>,
    cfg: PolicyGradientConfig,
    normalizer: RewardNormalizer,
    rng: StdRng,
}

impl<B: AutodiffBackend> PolicyGradientTrainer<B> {
    /// Wraps a (pre-trained) model; freezes its lower layers when configured.
    pub fn new(
        model: BlockDiffusionModel<B>,
        model_cfg: &BlockDiffusionConfig,
        cfg: PolicyGradientConfig,
    ) -> Result<Self, TrainError> {
        let bad = |m: &str| Err(TrainError::Config(m.to_string()));
        if !(cfg.lr > 0.0 && cfg.lr.is_finite()) {
            return bad("lr must be finite and > 0");
        }
        if !(cfg.adv_clip > 0.0) {
            return bad("adv_clip must be > 0");
        }
        if cfg.states_per_sample == 0 || cfg.epochs == 0 {
            return bad("states_per_sample and epochs must be > 0");
        }
        if cfg.freeze_layers > model.n_layers() {
            return Err(TrainError::Config(format!(
                "freeze_layers {} exceeds the model's {} layers",
                cfg.freeze_layers,
                model.n_layers()
            )));
        }
        let optim = AdamWConfig::new()
            .with_weight_decay(cfg.weight_decay as f32)
            .init::<B, BlockDiffusionModel<B>>();
        Ok(Self {
            model: model.freeze_lower(cfg.freeze_layers),
            model_cfg: model_cfg.clone(),
            optim,
            rng: StdRng::seed_from_u64(cfg.seed ^ 0x9E37_79B9),
            normalizer: RewardNormalizer::new(cfg.reward_decay),
            cfg,
        })
    }

    /// The current policy for sampling (no autodiff).
    pub fn policy(&self) -> BlockDiffusionModel<B::InnerBackend> {
        self.model.valid()
    }

    /// The trained model.
    pub fn into_model(self) -> BlockDiffusionModel<B> {
        self.model
    }

    /// The running reward statistics.
    pub fn normalizer(&self) -> &RewardNormalizer {
        &self.normalizer
    }

    /// One update from a batch of rollouts sampled with block size `block` and their rewards
    /// (`None` = invalid sample). Duplicate token sequences count once.
    pub fn step(
        &mut self,
        rollouts: &[Rollout],
        rewards: &[Option<f64>],
        block: usize,
        device: &B::Device,
    ) -> Result<PolicyGradientReport, TrainError> {
        if rollouts.len() != rewards.len() {
            return Err(TrainError::Data(format!(
                "{} rollouts but {} rewards",
                rollouts.len(),
                rewards.len()
            )));
        }
        // Distinct samples only: a mode the policy keeps re-sampling must not dominate.
        let mut seen = std::collections::HashSet::new();
        let picked: Vec<usize> = (0..rollouts.len())
            .filter(|&i| seen.insert((&rollouts[i].tokens, &rollouts[i].condition.prompt)))
            .collect();
        let mut report = PolicyGradientReport {
            unique: picked.len(),
            ..Default::default()
        };
        if picked.is_empty() {
            return Ok(report);
        }
        let len = rollouts[picked[0]].tokens.len();
        for &i in &picked {
            let r = &rollouts[i];
            if block == 0 || r.tokens.len() != len || len % block != 0 {
                return Err(TrainError::Data(format!(
                    "rollout {i}: {} tokens, expected {len}, a multiple of block {block}",
                    r.tokens.len()
                )));
            }
            if r.commit_steps.len() != len {
                return Err(TrainError::Data(format!(
                    "rollout {i}: {} commit steps for {len} tokens",
                    r.commit_steps.len()
                )));
            }
            if let Some(&t) = r
                .tokens
                .iter()
                .find(|&&t| t as usize >= self.model_cfg.vocab_size || t == MASK)
            {
                return Err(TrainError::Data(format!(
                    "rollout {i}: token {t} is MASK or outside the vocabulary"
                )));
            }
        }
        let valid: Vec<f64> = picked.iter().filter_map(|&i| rewards[i]).collect();
        if let Some(bad) = valid.iter().find(|r| !r.is_finite()) {
            return Err(TrainError::Data(format!("reward {bad} is not finite")));
        }
        report.invalid = picked.len() - valid.len();
        report.mean_reward = if valid.is_empty() {
            f64::NAN
        } else {
            valid.iter().sum::<f64>() / valid.len() as f64
        };
        self.normalizer.update(&valid);
        let c = self.cfg.adv_clip;
        let adv: Vec<f64> = picked
            .iter()
            .map(|&i| match rewards[i] {
                Some(r) => self.normalizer.normalize(r).clamp(-c, c),
                None => -c,
            })
            .collect();
        if adv.iter().all(|a| a.abs() < 1e-12) {
            return Ok(report);
        }
        let mut total = 0.0;
        for _ in 0..self.cfg.epochs {
            let mut conditions = Vec::new();
            let mut states = Vec::new();
            let mut clean = Vec::new();
            let mut weights = Vec::new();
            for (k, &i) in picked.iter().enumerate() {
                let r = &rollouts[i];
                for _ in 0..self.cfg.states_per_sample {
                    let (xt, w) = replay_state(r, block, adv[k], &mut self.rng);
                    conditions.push(&r.condition);
                    states.push(xt);
                    clean.push(r.tokens.clone());
                    weights.push(w);
                }
            }
            let drops = vec![false; conditions.len()];
            let batch = batch_from_states::<B>(
                &conditions,
                &states,
                &clean,
                &weights,
                &drops,
                &self.model_cfg,
                block,
                device,
            );
            let loss = batch_loss(&self.model, batch);
            let v: f64 = loss.clone().into_scalar().elem();
            if !v.is_finite() {
                return Err(TrainError::Data(format!("policy loss became {v}")));
            }
            total += v;
            let grads = loss.backward();
            let mut grads = GradientsParams::from_grads(grads, &self.model);
            if self.cfg.grad_clip > 0.0 {
                clip_global_norm(&self.model, &mut grads, self.cfg.grad_clip);
            }
            self.model = self.optim.step(self.cfg.lr, self.model.clone(), grads);
        }
        report.loss = total / self.cfg.epochs as f64;
        Ok(report)
    }
}

/// Rebuilds one intermediate state of `r`'s trajectory: per block a step `s` drawn uniformly
/// from its calls; tokens committed at or after `s` are masked and weighted
/// `advantage · calls` (so the expectation over `s` is the sum over the block's states).
fn replay_state(
    r: &Rollout,
    block: usize,
    advantage: f64,
    rng: &mut StdRng,
) -> (Vec<u32>, Vec<f32>) {
    let mut xt = r.tokens.clone();
    let mut w = vec![0f32; r.tokens.len()];
    for start in (0..r.tokens.len()).step_by(block) {
        let steps = &r.commit_steps[start..start + block];
        let calls = steps
            .iter()
            .filter(|&&s| s != NOT_COMMITTED)
            .map(|&s| s + 1)
            .max()
            .unwrap_or(0);
        if calls == 0 {
            continue;
        }
        let s = rng.random_range(0..calls);
        for (j, &c) in steps.iter().enumerate() {
            if c != NOT_COMMITTED && c >= s {
                xt[start + j] = MASK;
                w[start + j] = (advantage * calls as f64) as f32;
            }
        }
    }
    (xt, w)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizer_matches_batch_statistics() {
        let mut n = RewardNormalizer::new(1.0);
        n.update(&[1.0, 2.0]);
        n.update(&[3.0, 4.0]);
        assert!((n.mean() - 2.5).abs() < 1e-12);
        assert!((n.std() - 1.25f64.sqrt()).abs() < 1e-12);
        assert!((n.normalize(2.5)).abs() < 1e-12);
        // Exponential decay forgets: after a jump the mean sits near the new level.
        let mut e = RewardNormalizer::new(0.5);
        e.update(&[0.0; 20]);
        e.update(&[10.0; 20]);
        assert!((e.mean() - 10.0).abs() < 1e-3, "{}", e.mean());
        let mut c = RewardNormalizer::new(1.0);
        c.update(&[0.0; 20]);
        c.update(&[10.0; 20]);
        assert!((c.mean() - 5.0).abs() < 1e-12);
    }

    #[test]
    fn replayed_state_masks_what_was_committed_later() {
        let r = Rollout {
            condition: Conditioning::default(),
            tokens: vec![10, 11, 12, 13, 14, 15, 16, 17],
            commit_steps: vec![0, 2, 1, 2, 0, 0, NOT_COMMITTED, NOT_COMMITTED],
        };
        let mut rng = StdRng::seed_from_u64(1);
        for _ in 0..50 {
            let (xt, w) = replay_state(&r, 4, 1.0, &mut rng);
            // Block 0 has 3 calls; its masked set is {commit step >= s} for some s.
            let masked: Vec<usize> = (0..4).filter(|&j| xt[j] == MASK).collect();
            assert!(
                masked == vec![0, 1, 2, 3] || masked == vec![1, 2, 3] || masked == vec![1, 3],
                "{masked:?}"
            );
            for &j in &masked {
                assert_eq!(w[j], 3.0);
            }
            // Block 1: one call, everything it decided is masked; padding stays clean.
            assert_eq!(&xt[4..], &[MASK, MASK, 16, 17]);
            assert_eq!(&w[4..], &[1.0, 1.0, 0.0, 0.0]);
        }
    }
}
