//! The cell generator on the blockdiff core: pre-training on a restricted subset of a space,
//! constrained sampling with the denoising trajectory kept for reward fine-tuning.

use std::path::Path;

use blockdiff_core::checkpoint;
use blockdiff_core::condition::{Conditioning, Example};
use blockdiff_core::constraint::TemplateConstraint;
use blockdiff_core::model::{BlockDiffusionConfig, BlockDiffusionModel};
use blockdiff_core::sample::{sample, CommitPolicy, SampleOutput, SamplerConfig};
use blockdiff_core::tokenizer::Tokenizer;
use blockdiff_core::train::{
    train_on_cores as core_train, CheckpointSpec, TrainConfig, TrainReport,
};
use blockdiff_core::CpuTrainBackend;
use burn::prelude::*;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::bench::Benchmark;
use crate::constraint::DagConstraint;
use crate::error::DagError;
use crate::space::Cell;
use crate::tokenizer::DagTokenizer;

/// Model and pre-training settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DagModelConfig {
    /// Width.
    pub d_model: usize,
    /// Transformer layers.
    pub n_layers: usize,
    /// Attention heads.
    pub n_heads: usize,
    /// Block size for training and sampling.
    pub block: usize,
    /// Tokens committed per model call inside a block (top-k policy).
    pub tokens_per_step: usize,
    /// Pre-training steps.
    pub steps: usize,
    /// Pre-training batch size.
    pub batch_size: usize,
    /// Pre-training peak learning rate.
    pub lr: f64,
    /// Seed.
    pub seed: u64,
}

impl Default for DagModelConfig {
    fn default() -> Self {
        Self {
            d_model: 64,
            n_layers: 2,
            n_heads: 4,
            block: 8,
            tokens_per_step: 2,
            steps: 400,
            batch_size: 64,
            lr: 2e-3,
            seed: 0,
        }
    }
}

/// Which cells the generator is pre-trained on (DGPO pre-trains on a restricted part of the
/// space, then fine-tunes toward reward).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub enum PretrainSubset {
    /// Cells whose benchmark accuracy is below the value.
    Below(f64),
    /// A seeded random fraction of the space.
    Fraction(f64),
    /// The whole space.
    All,
}

impl PretrainSubset {
    /// Parses `below:85`, `fraction:0.07` or `all`.
    pub fn parse(s: &str) -> Result<Self, DagError> {
        let bad = || {
            DagError::Config(format!(
                "pretrain subset {s:?}: use below:X, fraction:F or all"
            ))
        };
        if s == "all" {
            return Ok(Self::All);
        }
        let (kind, v) = s.split_once(':').ok_or_else(bad)?;
        let v: f64 = v.parse().map_err(|_| bad())?;
        match kind {
            "below" if v.is_finite() => Ok(Self::Below(v)),
            "fraction" if v > 0.0 && v <= 1.0 => Ok(Self::Fraction(v)),
            _ => Err(bad()),
        }
    }

    /// DGPO-style defaults: cells below 85% accuracy on NAS-Bench-201, a random 7% of
    /// NAS-Bench-Graph (whose scores are not percentages).
    pub fn default_for(space: &crate::space::CellSpace) -> Self {
        match space.kind {
            crate::space::SpaceKind::Nb201 => Self::Below(85.0),
            crate::space::SpaceKind::NasBenchGraph => Self::Fraction(0.07),
        }
    }

    /// The cells of `bench` in the subset.
    pub fn cells(&self, bench: &Benchmark, seed: u64) -> Vec<Cell> {
        let all = bench.cells();
        match *self {
            Self::All => all.to_vec(),
            Self::Below(x) => all
                .iter()
                .filter(|c| bench.get(c).is_some_and(|r| r.accuracy < x))
                .cloned()
                .collect(),
            Self::Fraction(f) => {
                let mut v = all.to_vec();
                v.shuffle(&mut StdRng::seed_from_u64(seed ^ 0xF7AC));
                v.truncate(((all.len() as f64 * f).round() as usize).max(1));
                v
            }
        }
    }
}

/// A cell generator.
#[derive(Clone, Debug)]
pub struct DagModel<B: Backend> {
    /// Weights.
    pub model: BlockDiffusionModel<B>,
    /// Architecture.
    pub config: BlockDiffusionConfig,
    /// Tokenizer of the space.
    pub tokenizer: DagTokenizer,
    /// Block size and commit policy.
    pub settings: DagModelConfig,
}

impl<B: Backend> DagModel<B> {
    /// Generated tokens per cell (body, `EOS`, padding to whole blocks).
    pub fn seq_len(&self) -> usize {
        self.tokenizer.seq_len(self.settings.block)
    }

    /// The sampler settings used for generation.
    pub fn sampler(&self, seed: u64, temperature: f32) -> SamplerConfig {
        SamplerConfig {
            block_size: self.settings.block,
            policy: CommitPolicy::TopK {
                k: self.settings.tokens_per_step.max(1),
            },
            temperature,
            max_len: self.seq_len(),
            seed,
            // RL fine-tuning replays every commit as a policy action (`reward::replay_state`);
            // forced commits without a call would enter that replay at a step the model did
            // not take them, so the DAG sampler keeps one call per decision.
            forced: false,
            ..SamplerConfig::default()
        }
    }
}

/// Samples `n` cells with the sampler's trajectory kept. A sample that does not decode
/// (impossible under the constraint, but checked) is `None`.
pub fn sample_cells<B: Backend>(
    model: &BlockDiffusionModel<B>,
    dag: &DagModel<impl Backend>,
    n: usize,
    seed: u64,
    temperature: f32,
    device: &B::Device,
) -> Result<(Vec<Option<Cell>>, SampleOutput), DagError> {
    let constraint = DagConstraint::new(&dag.tokenizer, 0);
    let requests = vec![Conditioning::default(); n];
    let out = sample(
        model,
        &dag.config,
        &requests,
        &constraint,
        &dag.sampler(seed, temperature),
        device,
    )?;
    let cells = out
        .sequences
        .iter()
        .map(|s| dag.tokenizer.decode(s).ok())
        .collect();
    Ok((cells, out))
}

/// Model-guided mutation: `elite` with one inner operation re-drawn from the generator
/// (conditioned on the rest of the cell, and never the elite's own operation) or, in a space
/// with several wirings and with probability 1/2, its wiring re-drawn. The diffusion model's
/// in-filling used as evolution's mutation operator. `None` when the draw does not decode.
#[allow(clippy::too_many_arguments)]
pub fn infill_cell<B: Backend, R: Rng>(
    model: &BlockDiffusionModel<B>,
    dag: &DagModel<impl Backend>,
    elite: &Cell,
    seed: u64,
    temperature: f32,
    rng: &mut R,
    device: &B::Device,
) -> Result<Option<Cell>, DagError> {
    let ids = dag
        .tokenizer
        .encode(elite)
        .map_err(|e| DagError::Config(e.to_string()))?;
    let ops = dag.tokenizer.op_slots();
    let rewire = dag.tokenizer.space().structures.len() > 1 && rng.random_bool(0.5);
    let (free, exclude) = if rewire || ops.is_empty() {
        (dag.tokenizer.edge_slots(), Vec::new())
    } else {
        let p = ops[rng.random_range(0..ops.len())];
        (vec![p], vec![(p, ids[p])])
    };
    let template = ids
        .iter()
        .enumerate()
        .map(|(i, &t)| (!free.contains(&i)).then_some(t))
        .collect();
    let constraint =
        TemplateConstraint::new(DagConstraint::new(&dag.tokenizer, 0), 0, template, exclude);
    let out = sample(
        model,
        &dag.config,
        &[Conditioning::default()],
        &constraint,
        &dag.sampler(seed, temperature),
        device,
    )?;
    Ok(dag.tokenizer.decode(&out.sequences[0]).ok())
}

/// Pre-trains a generator on `cells` (writing a checkpoint into `dir` when given).
pub fn pretrain(
    tokenizer: &DagTokenizer,
    cells: &[Cell],
    cfg: &DagModelConfig,
    dir: Option<&Path>,
    progress: bool,
) -> Result<(DagModel<CpuTrainBackend>, TrainReport), DagError> {
    if cells.is_empty() {
        return Err(DagError::Config("no cells to pre-train on".into()));
    }
    if cfg.block == 0 {
        return Err(DagError::Config("block must be > 0".into()));
    }
    let examples: Vec<Example> = cells
        .iter()
        .map(|c| tokenizer.encode(c).map(Example::tokens))
        .collect::<Result<_, _>>()
        .map_err(|e| DagError::InvalidCell(e.to_string()))?;
    let seq_len = tokenizer.seq_len(cfg.block);
    let mcfg = BlockDiffusionConfig::new(tokenizer.vocab().size())
        .with_d_model(cfg.d_model)
        .with_n_layers(cfg.n_layers)
        .with_n_heads(cfg.n_heads)
        .with_max_len(seq_len);
    mcfg.validate().map_err(DagError::Config)?;
    let device = Default::default();
    let model = mcfg.init_seeded::<CpuTrainBackend>(cfg.seed, &device);
    let tcfg = TrainConfig::new(seq_len)
        .with_block_sizes(vec![cfg.block])
        .with_block_weights(vec![1.0])
        .with_eval_block_size(cfg.block)
        .with_steps(cfg.steps)
        .with_batch_size(cfg.batch_size)
        .with_lr(cfg.lr)
        .with_warmup_steps((cfg.steps / 20).max(1))
        .with_seed(cfg.seed)
        .with_progress(progress && std::env::var_os("CI").is_none());
    let spec = dir.map(|dir| CheckpointSpec {
        dir,
        tokenizer: tokenizer.metadata(),
        resume: false,
    });
    let (model, report) = core_train(model, &mcfg, &tcfg, &examples, &[], spec, &device)?;
    if let Some(dir) = dir {
        checkpoint::write_json(&dir.join(SETTINGS_FILE), cfg)?;
    }
    Ok((
        DagModel {
            model,
            config: mcfg,
            tokenizer: tokenizer.clone(),
            settings: cfg.clone(),
        },
        report,
    ))
}

/// Generator settings saved beside the checkpoint.
pub const SETTINGS_FILE: &str = "dag_settings.json";

/// Loads a generator written by [`pretrain`] for `tokenizer`'s space.
pub fn load(dir: &Path, tokenizer: &DagTokenizer) -> Result<DagModel<CpuTrainBackend>, DagError> {
    let device = Default::default();
    let ck = checkpoint::load::<CpuTrainBackend>(dir, &device)?;
    let saved: serde_json::Value = ck.tokenizer.get("space").cloned().unwrap_or_default();
    if saved != serde_json::to_value(tokenizer.space()).expect("serialisable") {
        return Err(DagError::Config(format!(
            "{}: the checkpoint was trained on another search space",
            dir.display()
        )));
    }
    let settings: DagModelConfig = checkpoint::read_json(&dir.join(SETTINGS_FILE))?;
    Ok(DagModel {
        model: ck.model,
        config: ck.config,
        tokenizer: tokenizer.clone(),
        settings,
    })
}
