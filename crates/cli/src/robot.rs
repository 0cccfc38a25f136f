//! `blockdiff robot …`: train an action-chunk policy on MetaWorld demonstrations, serve it to
//! robots over openpi's websocket protocol, benchmark its latency, and the end-to-end demo.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use blockdiff_core::checkpoint;
use blockdiff_robot::client::{latency_bench, LatencyReport};
use blockdiff_robot::data::Demos;
use blockdiff_robot::policy::{metaworld_current, train, DiffFeature, PolicyConfig, TokenizerKind};
use blockdiff_robot::server::{spawn, ServeConfig};
use blockdiff_robot::set::{train_per_task, PolicySet};
use clap::{Args, Subcommand, ValueEnum};

#[derive(Clone, Copy, ValueEnum)]
pub enum TokKind {
    Bins,
    Fast,
}

#[derive(Args, Clone)]
pub struct TrainArgs {
    /// Actions per chunk (H).
    #[arg(long, default_value_t = 10)]
    horizon: usize,
    /// Observations stacked into the condition.
    #[arg(long, default_value_t = 1)]
    history: usize,
    /// Action tokenizer.
    #[arg(long, value_enum, default_value_t = TokKind::Bins)]
    tokenizer: TokKind,
    /// Bins per value (bins tokenizer; 256 or 2048 are the usual choices).
    #[arg(long, default_value_t = 256)]
    bins: usize,
    /// FAST vocabulary size.
    #[arg(long, default_value_t = 512)]
    fast_vocab: usize,
    /// Training steps.
    #[arg(long, default_value_t = 3000)]
    steps: usize,
    /// Batch size.
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// Peak learning rate.
    #[arg(long, default_value_t = 3e-3)]
    lr: f64,
    /// Model width.
    #[arg(long, default_value_t = 64)]
    d_model: usize,
    /// Transformer layers.
    #[arg(long, default_value_t = 2)]
    layers: usize,
    /// Serving block size (tokens); must divide H × D for the bins tokenizer.
    #[arg(long, default_value_t = 8)]
    block: usize,
    /// Seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Difference features appended to each observation: `MINUEND:SUBTRAHEND:LEN` (first
    /// indices and length: `obs[m..m+len] − obs[s..s+len]`), repeatable, or `metaworld`
    /// (goal − hand, object − hand, goal − object of MetaWorld's 39-d observation).
    #[arg(long = "diff")]
    diffs: Vec<String>,
    /// Give the bin tokens value features (bins tokenizer): smooth functions of each bin's
    /// value added to its embedding and scored by a feature head, so neighbouring bins share
    /// what is learnt.
    #[arg(long)]
    value_features: bool,
    /// Observation values the policy reads: `START:END` ranges (repeatable) or `metaworld`
    /// (MetaWorld's current frame and goal, without the stacked previous frame). Default: all.
    #[arg(long = "obs-keep")]
    obs_keep: Vec<String>,
    /// One policy per task (each trained on its task's demonstrations alone, with these
    /// settings) in `OUT/<task>/`, served as one task-routed node (`policy_set.json`).
    #[arg(long)]
    per_task: bool,
}

/// Parses `--obs-keep` values.
fn obs_keep(specs: &[String]) -> Result<Vec<[usize; 2]>> {
    let mut out = Vec::new();
    for spec in specs {
        if spec == "metaworld" {
            out.extend(metaworld_current());
            continue;
        }
        let Some((a, b)) = spec.split_once(':') else {
            bail!("--obs-keep {spec:?}: expected START:END or metaworld");
        };
        let num = |v: &str| {
            v.parse::<usize>()
                .with_context(|| format!("--obs-keep {spec:?}: {v:?} is not an index"))
        };
        out.push([num(a)?, num(b)?]);
    }
    Ok(out)
}

/// Parses `--diff` values.
fn diff_features(specs: &[String]) -> Result<Vec<DiffFeature>> {
    let mut out = Vec::new();
    for spec in specs {
        if spec == "metaworld" {
            out.extend(DiffFeature::metaworld());
            continue;
        }
        let parts: Vec<&str> = spec.split(':').collect();
        let [m, s, len] = parts[..] else {
            bail!("--diff {spec:?}: expected MINUEND:SUBTRAHEND:LEN or metaworld");
        };
        let num = |v: &str, what: &str| {
            v.parse::<usize>()
                .with_context(|| format!("--diff {spec:?}: {what} {v:?} is not an index"))
        };
        out.push(DiffFeature {
            minuend: num(m, "minuend")?,
            subtrahend: num(s, "subtrahend")?,
            len: num(len, "length")?,
        });
    }
    Ok(out)
}

impl TrainArgs {
    fn config(&self, act_dim: usize) -> Result<PolicyConfig> {
        let chunk = self.horizon * act_dim;
        let mut blocks = vec![1, self.block, chunk];
        blocks.sort_unstable();
        blocks.dedup();
        Ok(PolicyConfig {
            horizon: self.horizon,
            history: self.history,
            tokenizer: match self.tokenizer {
                TokKind::Bins => TokenizerKind::Bins,
                TokKind::Fast => TokenizerKind::Fast,
            },
            bins: self.bins,
            fast_vocab: self.fast_vocab,
            d_model: self.d_model,
            n_layers: self.layers,
            train_blocks: match self.tokenizer {
                TokKind::Bins => blocks,
                TokKind::Fast => vec![1, self.block],
            },
            steps: self.steps,
            batch_size: self.batch,
            lr: self.lr,
            seed: self.seed,
            block: self.block,
            diff_features: diff_features(&self.diffs)?,
            value_features: self.value_features,
            obs_keep: obs_keep(&self.obs_keep)?,
            ..PolicyConfig::default()
        })
    }
}

#[derive(Args, Clone)]
pub struct NodeArgs {
    /// Most requests one inference thread decodes as one batch.
    #[arg(long, default_value_t = 2)]
    max_batch: usize,
    /// Inference threads sharing the model, each decoding its own batch (default: one per
    /// core).
    #[arg(long, default_value_t = blockdiff_core::cpu_cores())]
    workers: usize,
    /// Requests allowed to wait; more are refused with "server busy".
    #[arg(long, default_value_t = 64)]
    queue: usize,
    /// Per-request deadline in the queue (ms).
    #[arg(long, default_value_t = 1000)]
    deadline_ms: u64,
    /// Largest accepted observation frame (bytes).
    #[arg(long, default_value_t = 1 << 20)]
    max_frame_bytes: usize,
    /// Serving block size (default: the checkpoint's; 1 = autoregressive mode).
    #[arg(long)]
    block: Option<usize>,
    /// Tokens committed per model call (default: the checkpoint's commit rule).
    #[arg(long)]
    per_step: Option<usize>,
    /// Chunks sampled per observation and averaged value by value (default: the
    /// checkpoint's, 1). Use with `--temperature` > 0.
    #[arg(long)]
    samples: Option<usize>,
    /// Sampling temperature (default: the checkpoint's, 0 = greedy).
    #[arg(long)]
    temperature: Option<f32>,
}

impl NodeArgs {
    fn config(&self) -> ServeConfig {
        ServeConfig {
            max_batch: self.max_batch,
            workers: self.workers,
            queue: self.queue,
            deadline_ms: self.deadline_ms,
            max_frame_bytes: self.max_frame_bytes,
            block: self.block,
            per_step: self.per_step,
        }
    }
}

#[derive(Subcommand)]
pub enum RobotCommand {
    /// Train a policy on a demonstrations file (datasets/metaworld/record.py writes one).
    Train {
        /// Demonstrations (safetensors, format blockdiff-robot-demos/1).
        #[arg(long)]
        demos: PathBuf,
        /// Checkpoint directory.
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        train: TrainArgs,
    },
    /// Serve a policy over openpi's websocket protocol (and GET /healthz).
    Serve {
        /// Checkpoint directory.
        #[arg(long)]
        checkpoint: PathBuf,
        /// Port (0 = any free port, printed on start).
        #[arg(long, default_value_t = 8000)]
        port: u16,
        /// Address to bind.
        #[arg(long, default_value = "0.0.0.0")]
        host: String,
        #[command(flatten)]
        node: NodeArgs,
    },
    /// Request→chunk latency at 1 and 8 concurrent clients, block decoding vs AR mode.
    Bench {
        /// Checkpoint directory.
        #[arg(long)]
        checkpoint: PathBuf,
        /// Demonstrations whose observations are sent.
        #[arg(long)]
        demos: PathBuf,
        /// Measured requests per client.
        #[arg(long, default_value_t = 200)]
        requests: usize,
        /// Write the table as JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Record demonstrations, train, serve, evaluate through openpi-client; writes
    /// DIR/results.json (per-task and average success, latency percentiles).
    Demo {
        /// Output directory.
        #[arg(long, default_value = "out/robot")]
        out: PathBuf,
        /// Tasks: MT10 or a comma list of MetaWorld names.
        #[arg(
            long,
            default_value = "reach-v3,push-v3,drawer-close-v3,button-press-topdown-v3"
        )]
        tasks: String,
        /// Demonstrations per task.
        #[arg(long, default_value_t = 50)]
        episodes: usize,
        /// Noise injected into the expert's executed arm motion while recording (DART; the
        /// recorded actions stay the expert's), so the demonstrations show recoveries.
        #[arg(long, default_value_t = 0.0)]
        noise: f64,
        /// With `--noise`: no noise while the hand is within this xy distance (m) of the first
        /// object, so grasping and pushing stay clean (0 = noise everywhere).
        #[arg(long, default_value_t = 0.0)]
        noise_clear: f64,
        /// Evaluation episodes per task.
        #[arg(long, default_value_t = 10)]
        eval_episodes: usize,
        /// Steps per evaluation episode.
        #[arg(long, default_value_t = 500)]
        max_steps: usize,
        /// Actions executed from each chunk before asking for a new one.
        #[arg(long, default_value_t = 2)]
        replan: usize,
        /// Temporal ensembling weight (0 = off; >0 queries every step, as ACT).
        #[arg(long, default_value_t = 0.0)]
        ensemble: f64,
        /// Python interpreter with metaworld and openpi-client (datasets/metaworld/fetch.sh).
        #[arg(long, env = "BLOCKDIFF_PYTHON", default_value = "python3")]
        python: String,
        /// Folder of record.py and eval.py.
        #[arg(long, default_value = "datasets/metaworld")]
        scripts: PathBuf,
        /// Also run the latency bench (requests per client; 0 = skip).
        #[arg(long, default_value_t = 100)]
        bench_requests: usize,
        #[command(flatten)]
        train: TrainArgs,
    },
}

pub fn run(cmd: RobotCommand) -> Result<()> {
    match cmd {
        RobotCommand::Train {
            demos,
            out,
            train: t,
        } => {
            let d = Demos::read(&demos)?;
            train_policy(&d, &t, &out)?;
            Ok(())
        }
        RobotCommand::Serve {
            checkpoint,
            port,
            host,
            node,
        } => {
            let policy =
                PolicySet::load(&checkpoint)?.with_decoding(node.samples, node.temperature)?;
            let handle = spawn(policy, &format!("{host}:{port}"), node.config())?;
            eprintln!(
                "policy node on ws://{} (GET /healthz for health)",
                handle.addr
            );
            println!("{}", handle.addr.port());
            handle.join();
            Ok(())
        }
        RobotCommand::Bench {
            checkpoint,
            demos,
            requests,
            json,
        } => {
            let d = Demos::read(&demos)?;
            let rows = bench(&checkpoint, &d, requests)?;
            print_bench(&rows);
            if let Some(path) = json {
                checkpoint::write_atomic(&path, &serde_json::to_vec_pretty(&rows)?)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            Ok(())
        }
        RobotCommand::Demo {
            out,
            tasks,
            episodes,
            noise,
            noise_clear,
            eval_episodes,
            max_steps,
            replan,
            ensemble,
            python,
            scripts,
            bench_requests,
            train: t,
        } => {
            std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
            let demos_path = out.join("demos.safetensors");
            eprintln!("recording {episodes} expert demonstrations per task of {tasks}...");
            python_script(
                &python,
                &scripts.join("record.py"),
                &[
                    "--tasks",
                    &tasks,
                    "--episodes",
                    &episodes.to_string(),
                    "--seed",
                    &t.seed.to_string(),
                    "--noise",
                    &noise.to_string(),
                    "--noise-clear",
                    &noise_clear.to_string(),
                    "--out",
                    path_str(&demos_path)?,
                ],
            )?;
            let d = Demos::read(&demos_path)?;
            let ckpt = out.join("checkpoint");
            train_policy(&d, &t, &ckpt)?;
            let policy = PolicySet::load(&ckpt)?;
            let handle = spawn(policy, "127.0.0.1:0", ServeConfig::default())?;
            eprintln!(
                "policy node on ws://{}; evaluating through openpi-client...",
                handle.addr
            );
            let eval_path = out.join("eval.json");
            python_script(
                &python,
                &scripts.join("eval.py"),
                &[
                    "--host",
                    "127.0.0.1",
                    "--port",
                    &handle.addr.port().to_string(),
                    "--tasks",
                    &tasks,
                    "--episodes",
                    &eval_episodes.to_string(),
                    "--seed",
                    &t.seed.to_string(),
                    "--max-steps",
                    &max_steps.to_string(),
                    "--replan",
                    &replan.to_string(),
                    "--ensemble",
                    &ensemble.to_string(),
                    "--out",
                    path_str(&eval_path)?,
                ],
            )?;
            handle.stop();
            let eval: serde_json::Value = checkpoint::read_json(&eval_path)?;
            let rows = if bench_requests > 0 {
                let r = bench(&ckpt, &d, bench_requests)?;
                print_bench(&r);
                r
            } else {
                Vec::new()
            };
            let results = serde_json::json!({
                "tasks": eval["tasks"],
                "success": eval["success"],
                "success_ci95": eval["success_ci95"],
                "latency_ms": eval["latency_ms"],
                "server_timing_ms": eval["server_timing_ms"],
                "bench": rows,
                "episodes_per_task": episodes,
                "demo_noise": noise,
                "demo_noise_clear": noise_clear,
                "eval_episodes_per_task": eval_episodes,
                "train": t.config(d.act_dim)?,
                "per_task": t.per_task,
            });
            let path = out.join("results.json");
            checkpoint::write_json(&path, &results)?;
            eprintln!(
                "average success {} | latency p50/p95/p99 {} / {} / {} ms -> {}",
                results["success"],
                results["latency_ms"]["p50"],
                results["latency_ms"]["p95"],
                results["latency_ms"]["p99"],
                path.display()
            );
            Ok(())
        }
    }
}

fn path_str(p: &Path) -> Result<&str> {
    p.to_str().context("path is not UTF-8")
}

fn python_script(python: &str, script: &Path, args: &[&str]) -> Result<()> {
    if !script.exists() {
        bail!(
            "{} not found (run from the repository root or pass --scripts)",
            script.display()
        );
    }
    let status = Command::new(python)
        .arg(script)
        .args(args)
        .status()
        .with_context(|| format!("starting {python} {}", script.display()))?;
    if !status.success() {
        bail!("{} failed ({status})", script.display());
    }
    Ok(())
}

fn train_policy(d: &Demos, t: &TrainArgs, out: &Path) -> Result<()> {
    let cfg = t.config(d.act_dim)?;
    eprintln!(
        "training on {} successful episodes of {} tasks ({} steps{})...",
        d.successful().count(),
        d.tasks.len(),
        cfg.steps,
        if t.per_task { " per task" } else { "" }
    );
    let reports = if t.per_task {
        train_per_task(d, &cfg, out, true)?.1
    } else {
        vec![("policy".to_string(), train(d, &cfg, Some(out), true)?.1)]
    };
    for (name, r) in reports {
        eprintln!(
            "{name}: train loss {:.4}, val NELBO {:?}, {:.0} tokens/s",
            r.final_train_loss,
            r.val_nelbo.last().map(|v| v.1),
            r.tokens_per_s
        );
    }
    eprintln!("-> {}", out.display());
    Ok(())
}

/// One row of the latency table.
#[derive(serde::Serialize)]
struct BenchRow {
    mode: String,
    block: usize,
    nfe: f64,
    workers: usize,
    max_batch: usize,
    #[serde(flatten)]
    report: LatencyReport,
}

fn bench(ckpt: &Path, d: &Demos, requests: usize) -> Result<Vec<BenchRow>> {
    let settings = PolicySet::load(ckpt)?.settings().clone();
    let (block, history) = (settings.config.block, settings.config.history);
    // Real observations: every 37th step of the demonstrations.
    let obs: Vec<(Vec<f32>, String)> = d
        .episodes
        .iter()
        .flat_map(|e| (e.start..e.end).step_by(37).map(move |t| (e, t)))
        .map(|(e, t)| (d.history(e, t, history), d.tasks[e.task].clone()))
        .take(256)
        .collect();
    let mut rows = Vec::new();
    // One inference thread taking up to 8 waiting requests (the node before workers), and
    // the default: one thread per core, batches of at most 2.
    let defaults = ServeConfig::default();
    let nodes = [(1, 8), (defaults.workers, defaults.max_batch)];
    for (mode, b) in [("block", block), ("ar", 1)] {
        for &(workers, max_batch) in &nodes {
            let p = PolicySet::load(ckpt)?;
            let samplers = p.samplers(Some(b), None);
            // Model calls per chunk for this mode, from one direct call.
            let first = blockdiff_robot::Observation {
                state: obs[0].0.clone(),
                task: p.settings().task_index(&obs[0].1).unwrap_or(0),
            };
            let (_, stats) = p.act(&[first], &samplers)?;
            let handle = spawn(
                p,
                "127.0.0.1:0",
                ServeConfig {
                    block: Some(b),
                    workers,
                    max_batch,
                    ..ServeConfig::default()
                },
            )?;
            for clients in [1, 8] {
                let report = latency_bench(handle.addr, &obs, clients, requests, 10)?;
                rows.push(BenchRow {
                    mode: mode.into(),
                    block: b,
                    nfe: stats.nfe as f64,
                    workers,
                    max_batch,
                    report,
                });
            }
            handle.stop();
        }
    }
    Ok(rows)
}

fn print_bench(rows: &[BenchRow]) {
    println!("| mode | block | NFE/chunk | workers | max batch | clients | p50 ms | p95 ms | p99 ms | req/s | errors |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for r in rows {
        println!(
            "| {} | {} | {:.0} | {} | {} | {} | {:.2} | {:.2} | {:.2} | {:.0} | {} |",
            r.mode,
            r.block,
            r.nfe,
            r.workers,
            r.max_batch,
            r.report.clients,
            r.report.p50_ms,
            r.report.p95_ms,
            r.report.p99_ms,
            r.report.throughput_rps,
            r.report.errors
        );
    }
}
