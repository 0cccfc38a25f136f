//! `blockdiff dag …`: architecture search on NAS benchmarks with the RL-fine-tuned generator
//! and the baselines, and constrained sampling of cells.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use blockdiff_core::burn::module::AutodiffModule;
use blockdiff_core::checkpoint;
use blockdiff_core::CpuTrainBackend;
use blockdiff_dag::bench::{Benchmark, Objective};
use blockdiff_dag::generate::{
    load, pretrain, sample_cells, DagModel, DagModelConfig, PretrainSubset, SETTINGS_FILE,
};
use blockdiff_dag::plot::plot_regret;
use blockdiff_dag::search::{run as run_search, summarize, Method, SearchConfig, Summary};
use blockdiff_dag::tokenizer::DagTokenizer;
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

#[derive(Args, Clone)]
pub struct BenchArgs {
    /// Search space: nb201-analog | nas-bench-graph.
    #[arg(long, default_value = "nb201-analog")]
    space: String,
    /// NAS-Bench-Graph dataset (cora, citeseer, pubmed, cs, physics, photo, computers, arxiv, proteins).
    #[arg(long)]
    dataset: Option<String>,
    /// Converted tables (datasets/nasbench/fetch.sh writes them).
    #[arg(long, default_value = "datasets/nasbench/data")]
    data_dir: PathBuf,
    /// Multi-objective reward: weight of latency / max latency (NAS-Bench-Graph).
    #[arg(long, default_value_t = 0.0)]
    latency_weight: f64,
    /// Multi-objective reward: weight of params / max params (NAS-Bench-Graph).
    #[arg(long, default_value_t = 0.0)]
    params_weight: f64,
}

#[derive(Args, Clone)]
pub struct ModelArgs {
    /// Pre-training subset: below:ACC, fraction:F or all (default below:85 on nb201-analog,
    /// fraction:0.07 on nas-bench-graph).
    #[arg(long)]
    pretrain: Option<String>,
    /// Pre-training steps.
    #[arg(long, default_value_t = 400)]
    pretrain_steps: usize,
    /// Reuse (or create) the pre-trained generator in this directory.
    #[arg(long)]
    checkpoint: Option<PathBuf>,
    /// Block size.
    #[arg(long, default_value_t = 8)]
    block: usize,
}

#[derive(Subcommand)]
pub enum DagCommand {
    /// Search for the best cell under a query budget, over several seeds; prints a table,
    /// writes JSON (`p_optimum`, `mean_best`, `optimum`, per-seed curves) and a regret PNG.
    Search {
        #[command(flatten)]
        bench: BenchArgs,
        #[command(flatten)]
        model: ModelArgs,
        /// rl | evolution | random | all.
        #[arg(long, default_value = "rl")]
        method: String,
        /// Unique benchmark queries per seed.
        #[arg(long, default_value_t = 200)]
        budget: usize,
        /// Number of seeds.
        #[arg(long, default_value_t = 20)]
        seeds: u64,
        /// First seed (seeds run from here): held-out seeds for settings tuned on others.
        #[arg(long, default_value_t = 0)]
        first_seed: u64,
        /// RL samples per round.
        #[arg(long, default_value_t = 8)]
        batch: usize,
        /// RL learning rate.
        #[arg(long, default_value_t = 2e-3)]
        lr: f64,
        /// RL gradient steps per round.
        #[arg(long, default_value_t = 4)]
        epochs: usize,
        /// RL reward-baseline decay (1 = mean/std over all rewards so far).
        #[arg(long, default_value_t = 0.97)]
        reward_decay: f64,
        /// RL sampling temperature.
        #[arg(long, default_value_t = 1.0)]
        temperature: f32,
        /// RL: freeze the embedding and this many lowest layers.
        #[arg(long, default_value_t = 0)]
        freeze_layers: usize,
        /// RL: penalty on the reward of a cell already queried in an earlier round (in reward
        /// units; 0 = off).
        #[arg(long, default_value_t = 0.5)]
        repeat_penalty: f64,
        /// RL: extra queries per round that are the policy's in-fills of the best cell so far
        /// (one operation or the wiring re-drawn: model-guided local search; 0 = off).
        #[arg(long, default_value_t = 2)]
        infill: usize,
        /// Control run: the search is handed −reward.
        #[arg(long)]
        invert: bool,
        /// Write the summary as JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
        /// Write the regret-vs-queries PNG here.
        #[arg(long)]
        plot: Option<PathBuf>,
    },
    /// Samples cells from the pre-trained generator and reports validity and reward.
    Sample {
        #[command(flatten)]
        bench: BenchArgs,
        #[command(flatten)]
        model: ModelArgs,
        /// Cells to sample.
        #[arg(long, default_value_t = 1000)]
        n: usize,
        /// Write the cells (benchmark spelling, one per line) here.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

fn open_bench(a: &BenchArgs) -> Result<Benchmark> {
    let b = Benchmark::open(&a.data_dir, &a.space, a.dataset.as_deref())
        .with_context(|| format!("opening {} (run datasets/nasbench/fetch.sh first)", a.space))?;
    Ok(b.with_objective(Objective {
        latency_weight: a.latency_weight,
        params_weight: a.params_weight,
    }))
}

fn generator(bench: &Benchmark, a: &ModelArgs) -> Result<DagModel<CpuTrainBackend>> {
    let tok = DagTokenizer::new(bench.space.clone());
    if let Some(dir) = &a.checkpoint {
        if dir.join(SETTINGS_FILE).exists() {
            eprintln!("loading the pre-trained generator from {}", dir.display());
            return Ok(load(dir, &tok)?);
        }
    }
    let subset = match &a.pretrain {
        Some(s) => PretrainSubset::parse(s)?,
        None => PretrainSubset::default_for(&bench.space),
    };
    let cells = subset.cells(bench, 0);
    let cfg = DagModelConfig {
        steps: a.pretrain_steps,
        block: a.block,
        ..DagModelConfig::default()
    };
    let mean =
        cells.iter().filter_map(|c| bench.reward(c)).sum::<f64>() / cells.len().max(1) as f64;
    eprintln!(
        "pre-training on {} cells ({subset:?}, mean reward {mean:.4}) for {} steps",
        cells.len(),
        cfg.steps
    );
    let (model, report) = pretrain(&tok, &cells, &cfg, a.checkpoint.as_deref(), true)?;
    eprintln!(
        "pre-training done: final loss {:.4}",
        report.final_train_loss
    );
    Ok(model)
}

pub fn run(cmd: DagCommand) -> Result<()> {
    match cmd {
        DagCommand::Search {
            bench,
            model,
            method,
            budget,
            seeds,
            first_seed,
            batch,
            lr,
            epochs,
            reward_decay,
            temperature,
            freeze_layers,
            repeat_penalty,
            infill,
            invert,
            json,
            plot,
        } => {
            let b = open_bench(&bench)?;
            let methods = if method == "all" {
                vec![Method::Random, Method::Evolution, Method::Rl]
            } else {
                vec![Method::parse(&method)?]
            };
            if seeds == 0 {
                bail!("--seeds must be > 0");
            }
            let gen = if methods.contains(&Method::Rl) {
                Some(generator(&b, &model)?)
            } else {
                None
            };
            let mut cfg = SearchConfig {
                budget,
                batch,
                invert,
                temperature,
                repeat_penalty,
                infill,
                ..SearchConfig::default()
            };
            cfg.pg.epochs = epochs;
            cfg.pg.reward_decay = reward_decay;
            cfg.pg.lr = lr;
            cfg.pg.freeze_layers = freeze_layers;
            let mut summaries = Vec::new();
            for m in methods {
                let bar = ProgressBar::new(seeds);
                bar.set_style(
                    ProgressStyle::with_template(
                        "{spinner} {msg} [{bar:30}] {pos}/{len} seeds ({eta})",
                    )
                    .expect("static template")
                    .progress_chars("=> "),
                );
                bar.set_message(m.name());
                let mut runs = Vec::new();
                for seed in first_seed..first_seed + seeds {
                    runs.push(run_search(&b, m, seed, &cfg, gen.as_ref())?);
                    bar.inc(1);
                }
                bar.finish_and_clear();
                summaries.push(summarize(&b, m, budget, runs));
            }
            println!("{}", table(&summaries));
            if let Some(path) = json {
                let v = if summaries.len() == 1 {
                    serde_json::to_value(&summaries[0])?
                } else {
                    serde_json::json!({ "methods": summaries })
                };
                checkpoint::write_json(&path, &v)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            if let Some(path) = plot {
                plot_regret(&summaries, &path)?;
            }
            Ok(())
        }
        DagCommand::Sample {
            bench,
            model,
            n,
            out,
        } => {
            let b = open_bench(&bench)?;
            let gen = generator(&b, &model)?;
            let policy = gen.model.valid();
            let device = Default::default();
            let mut cells = Vec::new();
            let started = std::time::Instant::now();
            for (k, chunk) in (0..n).collect::<Vec<_>>().chunks(256).enumerate() {
                let (c, _) = sample_cells(&policy, &gen, chunk.len(), k as u64, 1.0, &device)?;
                cells.extend(c);
            }
            let secs = started.elapsed().as_secs_f64();
            let valid: Vec<_> = cells.iter().flatten().collect();
            let in_table = valid.iter().filter(|c| b.get(c).is_some()).count();
            let mean =
                valid.iter().filter_map(|c| b.reward(c)).sum::<f64>() / valid.len().max(1) as f64;
            let distinct: std::collections::HashSet<_> = valid.iter().collect();
            println!(
                "{n} samples in {secs:.2} s: {} valid ({:.2}%), {} in the benchmark, {} distinct, mean reward {mean:.4}",
                valid.len(),
                100.0 * valid.len() as f64 / n.max(1) as f64,
                in_table,
                distinct.len()
            );
            if let Some(path) = out {
                let text: String = cells
                    .iter()
                    .map(|c| c.as_ref().map_or("invalid".to_string(), |c| b.space.key(c)) + "\n")
                    .collect();
                write_text(&path, &text)?;
            }
            Ok(())
        }
    }
}

fn write_text(path: &Path, text: &str) -> Result<()> {
    checkpoint::write_atomic(path, text.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

fn table(summaries: &[Summary]) -> String {
    let mut s = String::from("| space | method | seeds | budget | optimum | mean best | P(opt)@50 | @100 | @200 | @500 |\n|---|---|---|---|---|---|---|---|---|---|\n");
    for m in summaries {
        let at = |q: usize| {
            m.p_optimum_at
                .get(&q)
                .map_or("–".to_string(), |p| format!("{:.0}%", 100.0 * p))
        };
        s += &format!(
            "| {} | {} | {} | {} | {:.4} | {:.4} | {} | {} | {} | {} |\n",
            m.space,
            m.method,
            m.seeds,
            m.budget,
            m.optimum,
            m.mean_best,
            at(50),
            at(100),
            at(200),
            at(500)
        );
    }
    s
}
