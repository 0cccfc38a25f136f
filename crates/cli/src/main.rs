//! `blockdiff`: the command-line front end. Thin: every subcommand calls into the library crates.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use blockdiff_core::bench::{fit_markov, markdown_table, run_core_bench, MarkovTask, Repeats};
use blockdiff_core::checkpoint;
use blockdiff_core::condition::Conditioning;
use blockdiff_core::constraint::SuccessorConstraint;
use blockdiff_core::sample::{sample, CommitPolicy, SamplerConfig};
use blockdiff_core::tokenizer::Tokenizer;
use clap::{Parser, Subcommand, ValueEnum};

mod bench;
mod dag;
mod music;
mod robot;
mod traj;

#[derive(Parser)]
#[command(
    name = "blockdiff",
    version,
    about = "Block-wise discrete diffusion for non-text sequences"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// End-to-end core demo: learn a random order-2 Markov source, then generate with block
    /// decoding (constrained to the source's support graph) and with AR mode of the same weights.
    Demo {
        /// Directory for the checkpoint and samples.
        #[arg(long, default_value = "out/demo")]
        out: PathBuf,
        /// Task size.
        #[arg(long, value_enum, default_value_t = TaskSize::Small)]
        task: TaskSize,
    },
    /// Road-segment trajectories: import, simulate, match, train, generate, eval, demo.
    Traj {
        #[command(subcommand)]
        cmd: traj::TrajCommand,
    },
    /// Neural-architecture DAGs: RL-fine-tuned generation and search on NAS benchmarks.
    Dag {
        #[command(subcommand)]
        cmd: dag::DagCommand,
    },
    /// Robot action chunks: train a policy, serve it over openpi's websocket protocol, demo.
    Robot {
        #[command(subcommand)]
        cmd: robot::RobotCommand,
    },
    /// Music as audio tokens: render, train, generate, stream in real time, evaluate.
    Music {
        #[command(subcommand)]
        cmd: music::MusicCommand,
    },
    /// Benchmarks.
    Bench {
        #[command(subcommand)]
        which: BenchCommand,
    },
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Block decoding vs AR decoding of the same weights on the Markov task, KV cache vs none.
    Core {
        /// Write the report as JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
        /// Task size (`full` is the documented full-size run).
        #[arg(long, value_enum, default_value_t = TaskSize::Small)]
        task: TaskSize,
        /// Sampling calls per configuration (median wall-clock is reported).
        #[arg(long, default_value_t = 20)]
        repeats: usize,
        /// At least this many samples per configuration for its sample NLL (more calls
        /// are made at small batches; the JSON records each run's count and standard error).
        #[arg(long, default_value_t = blockdiff_core::bench::Repeats::MIN_SAMPLES)]
        min_samples: usize,
        /// Training steps (default: the task size's own, 1,500 small / 4,000 full).
        #[arg(long)]
        steps: Option<usize>,
        /// Training loss estimator (default: the task size's own).
        #[arg(long, value_enum)]
        loss: Option<LossArg>,
        /// Relative frequency of each block size of the training mixture, comma-separated
        /// (small: blocks 1,4,8; full: 1,4,8,16).
        #[arg(long, value_delimiter = ',')]
        block_weights: Option<Vec<f64>>,
        /// Block sizes of the training mixture, comma-separated (default: the task size's own).
        #[arg(long, value_delimiter = ',')]
        block_sizes: Option<Vec<usize>>,
        /// Block size the decoders run at (default: the task size's own, 8 small / 16 full).
        #[arg(long)]
        block: Option<usize>,
        /// Backend the decoders run on: the model is trained on the CPU, then its weights are
        /// moved there (`cuda` needs a build with `--features cuda` and a GPU).
        #[arg(long, value_enum, default_value_t = bench::BenchDevice::Cpu)]
        device: bench::BenchDevice,
        /// Also run the ordered policies on an ordered-objective model from this folder
        /// (loaded when it holds one, else trained on the task and written there).
        #[arg(long)]
        ordered_checkpoint: Option<PathBuf>,
        /// Block size of the ordered model's order.
        #[arg(long, default_value_t = 64)]
        ordered_block: usize,
        /// Stripes of the ordered model's order (0 = dilated).
        #[arg(long, default_value_t = 8)]
        ordered_stripes: usize,
        /// Folder of the Markov task's trained models (`block/`): each is loaded when
        /// present (and trained on the same task), else trained and written there, so re-runs
        /// skip training (the training figures are then the stored run's).
        #[arg(long)]
        markov_checkpoints: Option<PathBuf>,
    },
    /// Every decoding policy (threshold sweep, S2D2, DCD, ARPC, FlashBlock, uniform kernel)
    /// on the Markov task or the trajectory benchmark: NFE, wall-clock and quality;
    /// speed-ups at equal quality.
    Samplers {
        /// Write the report as JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
        /// The quality-vs-NFE / quality-vs-wall-clock plot.
        #[arg(long, default_value = "out/bench/samplers.png")]
        png: PathBuf,
        /// Benchmark: the Markov task (`small`, `full`) or `traj` (a trained checkpoint).
        #[arg(long, value_enum, default_value_t = SamplerTask::Small)]
        task: SamplerTask,
        /// Markov: samples per policy (median wall-clock is reported).
        #[arg(long, default_value_t = 20)]
        repeats: usize,
        /// Markov: At least this many samples per configuration for its sample NLL (more calls
        /// are made at small batches; the JSON records each run's count and standard error).
        #[arg(long, default_value_t = blockdiff_core::bench::Repeats::MIN_SAMPLES)]
        min_samples: usize,
        /// Markov: skip training the uniform-kernel model (and its policies).
        #[arg(long)]
        no_uniform: bool,
        /// Markov: skip training the ordered-objective model (and its `ordered(k)` policies).
        #[arg(long)]
        no_ordered: bool,
        /// Markov: block size of the ordered model's order (a divisor of the sequence length).
        #[arg(long, default_value_t = 64)]
        ordered_block: usize,
        /// Markov: stripes of the ordered model's order (0 = dilated); its widest group, one
        /// position per stripe, is the fastest ordered policy.
        #[arg(long, default_value_t = 8)]
        ordered_stripes: usize,
        /// Markov: folder of the ordered model: loaded when it holds one, else written after
        /// training (a full-size model trains for half an hour on 2 cores).
        #[arg(long)]
        ordered_checkpoint: Option<PathBuf>,
        /// Markov: folder of the Markov task's trained models (`block/`, `uniform/`): each is loaded when
        /// present (and trained on the same task), else trained and written there, so re-runs
        /// skip training (the training figures are then the stored run's).
        #[arg(long)]
        markov_checkpoints: Option<PathBuf>,
        /// Traj: folder with the network, `val.csv` and `test.csv`.
        #[arg(long, default_value = "out/traj-demo/data")]
        data: PathBuf,
        /// Traj: checkpoint folder.
        #[arg(long, default_value = "out/traj-demo/checkpoint")]
        checkpoint: PathBuf,
        /// Traj: a checkpoint trained with the uniform-state kernel (`traj train --uniform`)
        /// for the uniform policies.
        #[arg(long)]
        uniform_checkpoint: Option<PathBuf>,
        /// Traj: requests per policy (held-out requests, cycled).
        #[arg(short, long, default_value_t = 1000)]
        n: usize,
        /// Traj: requests per sampler call (1 = the latency regime, as the Markov task; two
        /// worker threads take calls in turn either way).
        #[arg(long, default_value_t = 1)]
        batch_size: usize,
        /// Traj: block size of the block policies.
        #[arg(long, default_value_t = 16)]
        block: usize,
    },
    /// Re-draws a `bench samplers --json` report (its table, summary and plot) without
    /// running anything, e.g. after the plot gained a feature.
    Replot {
        /// The report (`bench samplers --json FILE`).
        #[arg(long)]
        json: PathBuf,
        /// Where to write the plot.
        #[arg(long)]
        png: PathBuf,
    },
    /// Against the PyTorch twin (`tests/torch_twin/twin.py`): logit agreement on our
    /// safetensors weights, then a training step and a full sample timed on both sides.
    Twin(bench::TwinArgs),
    /// Every benchmark in one run: core, the PyTorch twin, the decoding policies (Markov task
    /// and, when its demo output exists, traj) and each domain whose demo output exists; one
    /// JSON with the machine, commit and every ratio.
    All(bench::AllArgs),
}

/// The benchmark of `bench samplers`.
#[derive(Clone, Copy, ValueEnum)]
enum SamplerTask {
    Small,
    Full,
    Traj,
}

/// `--loss`: how training weighs masked tokens.
#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum LossArg {
    /// Bernoulli(t) masking, weight 1/t (BD3-LM).
    InverseT,
    /// Bernoulli(t) masking, weight 1/(realised mask ratio).
    MaskRatio,
    /// k ~ U{1..B} positions masked, weight B/k (the evaluation estimator).
    MaskCount,
}

impl From<LossArg> for blockdiff_core::schedule::LossWeighting {
    fn from(a: LossArg) -> Self {
        match a {
            LossArg::InverseT => Self::InverseT,
            LossArg::MaskRatio => Self::RealisedMaskRatio,
            LossArg::MaskCount => Self::MaskCount,
        }
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum TaskSize {
    Small,
    Full,
}

impl TaskSize {
    /// The command-line spelling (`bench all` passes it on to `bench samplers`).
    fn name(self) -> &'static str {
        match self {
            TaskSize::Small => "small",
            TaskSize::Full => "full",
        }
    }

    fn task(self) -> MarkovTask {
        match self {
            TaskSize::Small => MarkovTask::small(),
            TaskSize::Full => MarkovTask::full(),
        }
    }
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let retained = blockdiff_core::retain_freed_memory();
    tracing::debug!(retained, "allocator keeps freed memory");
    run(Cli::parse().command)
}

/// Runs one parsed command (`bench all` also runs the domain benches through here).
fn run(command: Command) -> Result<()> {
    match command {
        Command::Demo { out, task } => demo(out, task.task()),
        Command::Traj { cmd } => traj::run(cmd),
        Command::Dag { cmd } => dag::run(cmd),
        Command::Robot { cmd } => robot::run(cmd),
        Command::Music { cmd } => music::run(cmd),
        Command::Bench {
            which: BenchCommand::Twin(args),
        } => bench::twin(args).map(|_| ()),
        Command::Bench {
            which: BenchCommand::All(args),
        } => bench::all(args),
        Command::Bench {
            which: BenchCommand::Replot { json, png },
        } => {
            let report: blockdiff_core::sampler_bench::SamplerBenchReport =
                checkpoint::read_json(&json)?;
            report_samplers(&report, None, png)
        }
        Command::Bench {
            which:
                BenchCommand::Samplers {
                    json,
                    png,
                    task,
                    repeats,
                    min_samples,
                    no_uniform,
                    no_ordered,
                    ordered_block,
                    ordered_stripes,
                    ordered_checkpoint,
                    markov_checkpoints,
                    data,
                    checkpoint,
                    uniform_checkpoint,
                    n,
                    batch_size,
                    block,
                },
        } => {
            let report = match task {
                SamplerTask::Small | SamplerTask::Full => {
                    let task = match task {
                        SamplerTask::Small => MarkovTask::small(),
                        _ => MarkovTask::full(),
                    };
                    let ordered = (!no_ordered)
                        .then_some(((ordered_block, ordered_stripes), ordered_checkpoint));
                    markov_samplers(
                        task,
                        Repeats {
                            calls: repeats,
                            min_samples,
                        },
                        !no_uniform,
                        ordered,
                        markov_checkpoints.as_deref(),
                    )?
                }
                SamplerTask::Traj => traj::sampler_bench(
                    &data,
                    &checkpoint,
                    uniform_checkpoint.as_deref(),
                    &blockdiff_traj::sampler_bench::TrajSamplerBench {
                        n,
                        batch: batch_size,
                        block,
                    },
                )?,
            };
            report_samplers(&report, json, png)
        }
        Command::Bench {
            which:
                BenchCommand::Core {
                    json,
                    task,
                    repeats,
                    min_samples,
                    steps,
                    loss,
                    block_weights,
                    block_sizes,
                    block,
                    device,
                    ordered_checkpoint,
                    ordered_block,
                    ordered_stripes,
                    markov_checkpoints,
                },
        } => {
            let mut task = task.task();
            if let Some(steps) = steps {
                anyhow::ensure!(steps > 0, "--steps must be at least 1");
                task.steps = steps;
            }
            if let Some(loss) = loss {
                task.loss_weighting = loss.into();
            }
            if let Some(sizes) = block_sizes {
                task.block_sizes = sizes;
            }
            if let Some(b) = block {
                task.block_size = b;
            }
            if let Some(w) = block_weights {
                task.block_weights = Some(w);
            }
            task.validate().with_context(|| {
                format!(
                    "bench core options (--block-weights for block sizes {:?})",
                    task.block_sizes
                )
            })?;
            let ordered = ordered_checkpoint.map(|d| (d, (ordered_block, ordered_stripes)));
            bench_core(
                json,
                task,
                Repeats {
                    calls: repeats,
                    min_samples,
                },
                device,
                ordered,
                markov_checkpoints.as_deref(),
            )
            .map(|_| ())
        }
    }
}

/// `bench core`: trains the Markov task model, then block vs AR decoding and cache vs none.
fn bench_core(
    json: Option<PathBuf>,
    task: MarkovTask,
    repeats: Repeats,
    device: bench::BenchDevice,
    ordered: Option<(PathBuf, (usize, usize))>,
    markov_checkpoints: Option<&Path>,
) -> Result<blockdiff_core::bench::CoreBenchReport> {
    bench::ensure_device(device)?;
    let (model, fit) = markov_model(&task, markov_checkpoints)?;
    let ordered_model = match &ordered {
        Some((dir, order)) => {
            let (m, _) = ordered_markov_model(&task, *order, Some(dir))?;
            Some((m, *order))
        }
        None => None,
    };
    eprintln!("benchmarking decoders...");
    let report = match device {
        bench::BenchDevice::Cpu => run_core_bench(
            &model,
            ordered_model.as_ref().map(|(m, o)| (m, *o)),
            &task,
            fit,
            repeats,
        ),
        #[cfg(feature = "cuda")]
        bench::BenchDevice::Cuda => {
            let gpu = Default::default();
            let model = checkpoint::to_backend::<_, blockdiff_core::CudaBackend>(
                &model,
                &task.model_config(),
                &gpu,
            )?;
            let ordered_gpu = match &ordered_model {
                Some((m, o)) => Some((
                    checkpoint::to_backend::<_, blockdiff_core::CudaBackend>(
                        m,
                        &task.model_config(),
                        &gpu,
                    )?,
                    *o,
                )),
                None => None,
            };
            blockdiff_core::bench::run_core_bench_on(
                &model,
                ordered_gpu.as_ref().map(|(m, o)| (m, *o)),
                &task,
                fit,
                repeats,
                &gpu,
            )
        }
        #[cfg(not(feature = "cuda"))]
        bench::BenchDevice::Cuda => anyhow::bail!(bench::NO_CUDA),
    };
    eprintln!("decoders ran on {}", report.backend);
    println!("{}", markdown_table(&report));
    println!(
        "true entropy {:.4} nats/token | held-out NELBO (block {}) {:.4} | held-out AR NLL {:.4}",
        report.true_entropy, task.block_size, report.fit.val_nelbo_block, report.fit.val_nll_ar
    );
    let h = report.true_entropy;
    for (b, v) in &report.fit.val_nelbo_by_block {
        println!(
            "held-out NELBO at block {b}: {v:.4} nats/token ({:+.1}% vs the true entropy)",
            100.0 * (v / h - 1.0)
        );
    }
    println!(
        "best block policy {} ({}): {:.2}x AR wall-clock at batch 1, {:.2}x at batch 16, {:.2} tokens/forward; KV cache {:.2}x vs recompute",
        report.best_block,
        if report.best_meets_quality {
            "at equal quality"
        } else {
            "closest; none at equal quality"
        },
        report.speedup_vs_ar,
        report.speedup_vs_ar_batch16,
        report.tokens_per_forward,
        report.cache_speedup
    );
    if let Some(x) = report.speedup_vs_ar_same_weights {
        println!("on the same weights: {x:.2}x the ordered model's own AR mode (at equal quality)");
    }
    if let Some(path) = json {
        let v = serde_json::to_vec_pretty(&report)?;
        checkpoint::write_atomic(&path, &v)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(report)
}

/// `bench samplers` on the Markov task: trains its model (and a uniform-kernel one), then
/// every decoding policy.
fn markov_samplers(
    task: MarkovTask,
    repeats: Repeats,
    uniform: bool,
    ordered: Option<((usize, usize), Option<PathBuf>)>,
    markov_checkpoints: Option<&Path>,
) -> Result<blockdiff_core::sampler_bench::SamplerBenchReport> {
    let (model, fit) = markov_model(&task, markov_checkpoints)?;
    let uniform_model = if uniform {
        eprintln!("the uniform-kernel model ({} steps)...", task.steps);
        let dir = markov_checkpoints.map(|d| d.join("uniform"));
        Some(blockdiff_core::bench::load_or_fit_markov_uniform(
            &task,
            dir.as_deref(),
            true,
        )?)
    } else {
        None
    };
    let ordered_model = match ordered {
        Some((order, dir)) => Some(ordered_markov_model(&task, order, dir.as_deref())?),
        None => None,
    };
    eprintln!("benchmarking decoding policies...");
    Ok(blockdiff_core::sampler_bench::run_sampler_bench(
        &model,
        uniform_model.as_ref().map(|(m, l)| (m, *l)),
        ordered_model.as_ref().map(|(m, f)| (m, f)),
        &task,
        fit.true_entropy,
        repeats,
    ))
}

/// The Markov task's block model of `bench core` / `bench samplers`: loaded from (or trained
/// and written to) `dir/block`, or trained in the run.
fn markov_model(
    task: &MarkovTask,
    dir: Option<&Path>,
) -> Result<(
    blockdiff_core::model::BlockDiffusionModel<blockdiff_core::CpuBackend>,
    blockdiff_core::bench::MarkovFit,
)> {
    eprintln!("the Markov task model ({} steps)...", task.steps);
    let dir = dir.map(|d| d.join("block"));
    Ok(blockdiff_core::bench::load_or_fit_markov(
        task,
        dir.as_deref(),
        true,
    )?)
}

/// The ordered-objective model of `bench core` / `bench samplers`: loaded from (or trained and
/// written to) `dir`, or trained in the run; groups of up to one position per stripe.
fn ordered_markov_model(
    task: &MarkovTask,
    (block, stripes): (usize, usize),
    dir: Option<&Path>,
) -> Result<(
    blockdiff_core::model::BlockDiffusionModel<blockdiff_core::CpuBackend>,
    blockdiff_core::bench::OrderedFit,
)> {
    eprintln!(
        "the ordered-objective model (block {block}, {stripes} stripes, {} steps)...",
        task.steps
    );
    let widest = blockdiff_core::sampler_bench::ordered_widest_group(block, stripes);
    Ok(blockdiff_core::bench::load_or_fit_markov_ordered(
        task,
        (block, stripes),
        widest,
        dir,
        true,
    )?)
}

/// Prints the sampler table and summary, writes the plot and the JSON.
fn report_samplers(
    report: &blockdiff_core::sampler_bench::SamplerBenchReport,
    json: Option<PathBuf>,
    png: PathBuf,
) -> Result<()> {
    use blockdiff_core::sampler_bench::{sampler_table, write_sampler_plot};
    println!("{}", sampler_table(report));
    println!(
        "{}: reference {:.4}, equal quality in [{:.4}, {:.4}]; tuned threshold {}; best {}: {:.2}x the tuned threshold, {:.2}x AR",
        report.quality_metric,
        report.reference,
        report.equal_quality_band[0],
        report.equal_quality_band[1],
        report.threshold_policy,
        report.best_policy,
        report.best_speedup_vs_threshold,
        report.best_speedup_vs_ar
    );
    if let Some(x) = report.best_speedup_vs_ar_same_weights {
        println!("on the same weights: {x:.2}x the ordered model's own AR mode (at equal quality)");
    }
    if let Some(f) = &report.decoding_floor {
        println!(
            "decoding floor (one call over each whole sequence): {:.3} ms, so no policy of these weights can beat AR mode by more than {:.2}x here",
            f.wall_s * 1e3,
            f.max_speedup_vs_ar
        );
    }
    if let Some(f) = &report.ordered_fit {
        println!(
            "ordered-objective model (block {}, {} stripes): held-out NLL in its order {:.4} nats/token",
            f.block, f.stripes, f.val_nll_ordered
        );
    }
    if let Some(l) = report.uniform_val_loss {
        println!("uniform-kernel model: held-out denoiser loss {l:.4} nats/token");
    }
    write_sampler_plot(report, &png).map_err(|m| anyhow::anyhow!("{}: {m}", png.display()))?;
    println!("plot: {}", png.display());
    if let Some(path) = json {
        let v = serde_json::to_vec_pretty(report)?;
        checkpoint::write_atomic(&path, &v)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

fn demo(out: PathBuf, task: MarkovTask) -> Result<()> {
    eprintln!(
        "training on the random order-2 Markov source ({} steps)...",
        task.steps
    );
    let (model, fit) = fit_markov(&task, true);
    let mcfg = task.model_config();
    let tok = task.tokenizer();
    checkpoint::save(&out.join("checkpoint"), &model, &mcfg, &tok.metadata())
        .context("saving the checkpoint")?;
    let src = task.source();
    let constraint = SuccessorConstraint::new(tok.vocab(), src.successors().to_vec(), false);
    let reqs = vec![Conditioning::default(); 8];
    let device = Default::default();
    let mut lines = Vec::new();
    for (name, cfg) in [
        (
            "block decoding, threshold 0.9",
            SamplerConfig {
                block_size: task.block_size,
                policy: CommitPolicy::Threshold { tau: 0.9 },
                max_len: task.seq_len,
                stop_at_eos: false,
                ..SamplerConfig::default()
            },
        ),
        (
            "AR mode (block size 1)",
            SamplerConfig {
                stop_at_eos: false,
                ..SamplerConfig::autoregressive(task.seq_len)
            },
        ),
    ] {
        let outp = sample(&model, &mcfg, &reqs, &constraint, &cfg, &device)?;
        let nll: f64 = outp
            .sequences
            .iter()
            .map(|s| src.nll_per_token(&tok.decode(s).expect("constrained samples decode")))
            .sum::<f64>()
            / reqs.len() as f64;
        println!(
            "{name}: {} sequences in {:.1} ms, NFE {}, {:.2} tokens/forward, sample NLL {:.3} nats (true entropy {:.3})",
            reqs.len(),
            outp.stats.wall_s * 1e3,
            outp.stats.nfe,
            outp.stats.tokens_per_forward(),
            nll,
            fit.true_entropy
        );
        for s in outp.sequences.iter().take(2) {
            let syms = tok.decode(s)?;
            println!("  {:?}", &syms[..syms.len().min(24)]);
        }
        lines.push(serde_json::json!({"decoder": name, "nfe": outp.stats.nfe, "sample_nll": nll, "sequences": outp.sequences}));
    }
    checkpoint::write_json(
        &out.join("samples.json"),
        &serde_json::json!({"fit": fit, "runs": lines}),
    )?;
    println!("checkpoint and samples written to {}", out.display());
    Ok(())
}
