//! `blockdiff bench twin` and `blockdiff bench all`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use blockdiff_core::checkpoint;
use blockdiff_core::twin::{self, TwinReport, TwinSpec};
use clap::{Args, Parser, ValueEnum};
use serde_json::{json, Value};

use crate::{Cli, TaskSize};

#[derive(Args)]
pub struct TwinArgs {
    /// Model size: the core Markov task's small (d 64, 2 layers, block 8) or full model
    /// (d 128, 4 layers, block 16).
    #[arg(long, value_enum, default_value_t = TaskSize::Full)]
    pub size: TaskSize,
    /// Python with torch (default: `$BLOCKDIFF_TWIN_PYTHON`, else the virtualenv of
    /// `tests/torch_twin/setup.sh`, else `python3`).
    #[arg(long)]
    pub python: Option<PathBuf>,
    /// The twin script.
    #[arg(long, default_value = "tests/torch_twin/twin.py")]
    pub script: PathBuf,
    /// Where the case (weights, inputs, our logits) is written.
    #[arg(long, default_value = "out/twin")]
    pub dir: PathBuf,
    /// Write the report as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Backend our side runs on (`cuda` needs a build with `--features cuda` and a GPU).
    #[arg(long, value_enum, default_value_t = BenchDevice::Cpu)]
    pub device: BenchDevice,
    /// Batch sizes of the timed samples, comma-separated (default: the size's own, 1,16).
    #[arg(long, value_delimiter = ',')]
    pub batches: Option<Vec<usize>>,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum BenchDevice {
    /// burn-flex on the CPU.
    Cpu,
    /// burn's CUDA backend.
    Cuda,
}

/// Why `--device cuda` cannot run in a build without the `cuda` feature.
#[cfg(not(feature = "cuda"))]
pub const NO_CUDA: &str =
    "this binary was built without CUDA: cargo build --release -p blockdiff-cli --features cuda";

impl BenchDevice {
    /// torch's name for the same device (the twin runs there too).
    pub fn torch_name(self) -> &'static str {
        match self {
            BenchDevice::Cpu => "cpu",
            BenchDevice::Cuda => "cuda",
        }
    }
}

/// Fails with a clear message when `device` cannot run here (before any backend op panics).
pub fn ensure_device(device: BenchDevice) -> Result<()> {
    match device {
        BenchDevice::Cpu => Ok(()),
        #[cfg(feature = "cuda")]
        BenchDevice::Cuda => {
            blockdiff_core::cuda_available().map_err(|e| anyhow::anyhow!("--device cuda: {e}"))
        }
        #[cfg(not(feature = "cuda"))]
        BenchDevice::Cuda => anyhow::bail!(NO_CUDA),
    }
}

/// Off the CPU: our logits of the twin's case recomputed on `device` against our CPU logits.
#[cfg_attr(not(feature = "cuda"), allow(unused_variables))]
fn device_logit_diff(device: BenchDevice, dir: &Path) -> Result<Option<f64>> {
    match device {
        BenchDevice::Cpu => Ok(None),
        #[cfg(feature = "cuda")]
        BenchDevice::Cuda => {
            let case: twin::TwinCase = checkpoint::read_json(&dir.join(twin::CASE_FILE))?;
            let d = twin::backend_logit_diff::<blockdiff_core::CudaBackend>(
                dir,
                &case,
                &Default::default(),
            )?;
            Ok(Some(d))
        }
        #[cfg(not(feature = "cuda"))]
        BenchDevice::Cuda => anyhow::bail!(NO_CUDA),
    }
}

/// Our side's timing function for `device`.
fn timer(device: BenchDevice) -> Result<fn(&TwinSpec) -> twin::TwinTimings> {
    match device {
        BenchDevice::Cpu => Ok(twin::time_ours),
        #[cfg(feature = "cuda")]
        BenchDevice::Cuda => {
            Ok(|spec| twin::time_on::<blockdiff_core::CudaTrainBackend>(spec, &Default::default()))
        }
        #[cfg(not(feature = "cuda"))]
        BenchDevice::Cuda => anyhow::bail!(NO_CUDA),
    }
}

pub fn twin(args: TwinArgs) -> Result<TwinReport> {
    let mut spec = match args.size {
        TaskSize::Small => TwinSpec::small(),
        TaskSize::Full => TwinSpec::full(),
    };
    if let Some(b) = args.batches {
        anyhow::ensure!(
            !b.is_empty() && b.iter().all(|&x| x > 0),
            "--batches: every batch size must be at least 1"
        );
        spec.sample_batches = b;
    }
    ensure_device(args.device)?;
    let python = args
        .python
        .or_else(twin::default_python)
        .unwrap_or_else(|| PathBuf::from("python3"));
    eprintln!(
        "PyTorch twin: d_model {}, {} layers, seq {} / block {}; python {}",
        spec.d_model,
        spec.n_layers,
        spec.seq_len,
        spec.block_size,
        python.display()
    );
    let mut report = twin::compare(
        &spec,
        &python,
        &args.script,
        &args.dir,
        args.device.torch_name(),
        timer(args.device)?,
    )?;
    report.device_max_abs_logit_diff = device_logit_diff(args.device, &args.dir)?;
    println!("{}", twin::markdown_table(&report));
    println!(
        "torch {} ({} threads) vs blockdiff ({} threads): sampling {:.2}x at batch 1, training {:.2}x; max |Δ logit| {:.2e}",
        report.twin.torch,
        report.twin.timings.as_ref().map_or(0, |t| t.threads),
        report.ours.threads,
        report.sampling_speedup,
        report.training_speedup,
        report.max_abs_logit_diff
    );
    if let Some(path) = &args.json {
        checkpoint::write_json(path, &report)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(report)
}

#[derive(Args)]
pub struct AllArgs {
    /// Write every result as one JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Size of the core Markov task (core and samplers benches) and of the twin's model.
    #[arg(long, value_enum, default_value_t = TaskSize::Small)]
    pub task: TaskSize,
    /// Sampling calls per core configuration (medians are reported).
    #[arg(long, default_value_t = 10)]
    pub repeats: usize,
    /// At least this many samples per core and samplers configuration for its sample NLL.
    #[arg(long, default_value_t = blockdiff_core::bench::Repeats::MIN_SAMPLES)]
    pub min_samples: usize,
    /// `blockdiff traj demo --out` folder (its `data/` and `checkpoint/`).
    #[arg(long, default_value = "out/traj-demo")]
    pub traj: PathBuf,
    /// `blockdiff robot demo --out` folder (its `checkpoint/` and `demos.safetensors`).
    #[arg(long, default_value = "out/robot")]
    pub robot: PathBuf,
    /// `blockdiff music train` checkpoint.
    #[arg(long, default_value = "out/music/model")]
    pub music: PathBuf,
    /// DAG search budget (queries per seed; 2 seeds).
    #[arg(long, default_value_t = 60)]
    pub dag_budget: usize,
    /// Scratch folder for the per-bench files.
    #[arg(long, default_value = "out/bench")]
    pub dir: PathBuf,
    /// Python with torch for the twin (see `bench twin --python`).
    #[arg(long)]
    pub python: Option<PathBuf>,
    /// Folder of the ordered-objective model that the core and samplers benches both use:
    /// loaded when it holds one, else trained by the first of them and written there (so it
    /// is trained once). Without it the core bench runs no ordered policy and the samplers
    /// bench trains its own ordered model.
    #[arg(long)]
    pub ordered_checkpoint: Option<PathBuf>,
    /// Block size of the ordered model's order.
    #[arg(long, default_value_t = 64)]
    pub ordered_block: usize,
    /// Stripes of the ordered model's order (0 = dilated).
    #[arg(long, default_value_t = 8)]
    pub ordered_stripes: usize,
    /// Folder of the Markov task's trained models (block, uniform) that the core and samplers
    /// benches share: each is loaded when present (trained on the same task), else trained once
    /// and written there. Without it each bench trains its own.
    #[arg(long)]
    pub markov_checkpoints: Option<PathBuf>,
}

/// Host facts recorded with every result.
fn machine() -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map_or("unknown".to_string(), |s| s.trim().to_string());
    let mem_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0 / 1024.0);
    json!({
        "cpu": cpu,
        "threads": blockdiff_core::cpu_cores(),
        "mem_gib": mem_gib,
        "os": std::env::consts::OS,
        "arch": std::env::consts::ARCH,
    })
}

/// Peak resident memory of this process since the last [`reset_peak_rss`] (Linux `VmHWM`),
/// in MiB; `None` elsewhere.
fn peak_rss_mib() -> Option<f64> {
    std::fs::read_to_string("/proc/self/status")
        .ok()?
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse::<f64>()
        .ok()
        .map(|kb| kb / 1024.0)
}

/// Resets the peak-RSS counter (Linux ≥ 4.0: write `5` to `/proc/self/clear_refs`), so each
/// bench reports its own peak.
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// Runs `f` and records its peak resident memory next to its result.
fn with_peak(f: impl FnOnce() -> Result<Value>) -> Result<Value> {
    reset_peak_rss();
    let mut v = f()?;
    if let Value::Object(m) = &mut v {
        m.insert("peak_rss_mib".into(), json!(peak_rss_mib()));
    }
    Ok(v)
}

fn commit() -> String {
    std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map_or("unknown".into(), |o| {
            String::from_utf8_lossy(&o.stdout).trim().to_string()
        })
}

/// Runs `blockdiff ARGS…` in-process; the command writes its JSON to `json`, read back here.
/// A missing prerequisite or a failure is recorded as `{"skipped": reason}`, not fatal.
fn domain_bench(name: &str, missing: Option<String>, args: &[String], json: &Path) -> Value {
    if let Some(reason) = missing {
        eprintln!("bench all: {name} skipped: {reason}");
        return json!({ "skipped": reason });
    }
    eprintln!("bench all: {name}: blockdiff {}", args.join(" "));
    let run = || -> Result<Value> {
        let cli = Cli::try_parse_from(
            std::iter::once("blockdiff".to_string()).chain(args.iter().cloned()),
        )?;
        let started = std::time::Instant::now();
        crate::run(cli.command)?;
        let wall_s = started.elapsed().as_secs_f64();
        let bytes = std::fs::read(json).with_context(|| format!("reading {}", json.display()))?;
        Ok(
            json!({ "command": format!("blockdiff {}", args.join(" ")), "wall_s": wall_s,
                   "result": serde_json::from_slice::<Value>(&bytes)? }),
        )
    };
    with_peak(run).unwrap_or_else(|e| {
        eprintln!("bench all: {name} failed: {e:#}");
        json!({ "skipped": format!("failed: {e:#}") })
    })
}

fn need(paths: &[PathBuf], how: &str) -> Option<String> {
    paths
        .iter()
        .find(|p| !p.exists())
        .map(|p| format!("{} missing ({how})", p.display()))
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

/// The `blockdiff bench samplers` command line `bench all` runs: its task size and, when given,
/// the ordered checkpoint shared with the core bench.
fn samplers_bench_args(args: &AllArgs, json: &Path) -> Vec<String> {
    let mut v: Vec<String> = [
        "bench",
        "samplers",
        "--task",
        args.task.name(),
        "--repeats",
        &args.repeats.to_string(),
        "--min-samples",
        &args.min_samples.to_string(),
        "--json",
        &s(json),
        "--png",
        &s(&args.dir.join("samplers.png")),
        "--ordered-block",
        &args.ordered_block.to_string(),
        "--ordered-stripes",
        &args.ordered_stripes.to_string(),
    ]
    .map(String::from)
    .to_vec();
    if let Some(d) = &args.ordered_checkpoint {
        v.extend(["--ordered-checkpoint".to_string(), s(d)]);
    }
    if let Some(d) = &args.markov_checkpoints {
        v.extend(["--markov-checkpoints".to_string(), s(d)]);
    }
    v
}

pub fn all(args: AllArgs) -> Result<()> {
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("creating {}", args.dir.display()))?;
    let task = args.task.task();
    let mut out = json!({
        "machine": machine(),
        "commit": commit(),
        "config": { "task": task, "repeats": args.repeats, "min_samples": args.min_samples,
                    "ordered_checkpoint": args.ordered_checkpoint.as_ref().map(|d| s(d)),
                    "ordered_order": [args.ordered_block, args.ordered_stripes] },
    });
    let mut core = None;
    out["core"] = with_peak(|| {
        let r = crate::bench_core(
            Some(args.dir.join("core.json")),
            task,
            blockdiff_core::bench::Repeats {
                calls: args.repeats,
                min_samples: args.min_samples,
            },
            BenchDevice::Cpu,
            args.ordered_checkpoint
                .clone()
                .map(|d| (d, (args.ordered_block, args.ordered_stripes))),
            args.markov_checkpoints.as_deref(),
        )?;
        let v = serde_json::to_value(&r)?;
        core = Some(r);
        Ok(v)
    })?;
    let core = core.expect("set by the core bench");
    let twin_args = TwinArgs {
        size: args.task,
        python: args.python.clone(),
        script: PathBuf::from("tests/torch_twin/twin.py"),
        dir: args.dir.join("twin"),
        json: None,
        device: BenchDevice::Cpu,
        batches: None,
    };
    out["twin"] = with_peak(|| {
        Ok(match twin(twin_args) {
            Ok(r) => serde_json::to_value(&r)?,
            Err(e) => {
                eprintln!("bench all: twin skipped: {e:#}");
                json!({ "skipped": format!("{e:#}") })
            }
        })
    })?;
    let j = |name: &str| args.dir.join(format!("{name}.json"));
    let (td, tc) = (args.traj.join("data"), args.traj.join("checkpoint"));
    out["traj"] = domain_bench(
        "traj",
        need(&[td.clone(), tc.clone()], "run `blockdiff traj demo` first"),
        &[
            "traj",
            "bench",
            "--data",
            &s(&td),
            "--checkpoint",
            &s(&tc),
            "-n",
            "200",
            "--json",
            &s(&j("traj")),
        ]
        .map(String::from),
        &j("traj"),
    );
    let samplers_args = samplers_bench_args(&args, &j("samplers"));
    out["samplers"] = domain_bench("samplers", None, &samplers_args, &j("samplers"));
    out["traj_samplers"] = domain_bench(
        "traj_samplers",
        need(&[td.clone(), tc.clone()], "run `blockdiff traj demo` first"),
        &[
            "bench",
            "samplers",
            "--task",
            "traj",
            "--data",
            &s(&td),
            "--checkpoint",
            &s(&tc),
            "-n",
            "500",
            "--json",
            &s(&j("traj_samplers")),
            "--png",
            &s(&args.dir.join("traj_samplers.png")),
        ]
        .map(String::from),
        &j("traj_samplers"),
    );
    let (rc, rd) = (
        args.robot.join("checkpoint"),
        args.robot.join("demos.safetensors"),
    );
    out["robot"] = domain_bench(
        "robot",
        need(
            &[rc.clone(), rd.clone()],
            "run `blockdiff robot demo` first",
        ),
        &[
            "robot",
            "bench",
            "--checkpoint",
            &s(&rc),
            "--demos",
            &s(&rd),
            "--requests",
            "50",
            "--json",
            &s(&j("robot")),
        ]
        .map(String::from),
        &j("robot"),
    );
    out["music"] = domain_bench(
        "music",
        need(&[args.music.clone()], "run `blockdiff music demo` first"),
        &[
            "music",
            "stream",
            "--checkpoint",
            &s(&args.music),
            "--seconds",
            "20",
            "--out",
            &s(&args.dir.join("music.wav")),
            "--json",
            &s(&j("music")),
        ]
        .map(String::from),
        &j("music"),
    );
    let budget = args.dag_budget.to_string();
    out["dag"] = domain_bench(
        "dag",
        need(
            &[PathBuf::from("datasets/nasbench/data")],
            "run datasets/nasbench/fetch.sh first",
        ),
        &[
            "dag",
            "search",
            "--method",
            "all",
            "--seeds",
            "2",
            "--budget",
            &budget,
            "--pretrain-steps",
            "60",
            "--json",
            &s(&j("dag")),
            "--plot",
            &s(&args.dir.join("dag.png")),
        ]
        .map(String::from),
        &j("dag"),
    );
    println!(
        "\n## bench all ({}, commit {})",
        out["machine"]["cpu"].as_str().unwrap_or("?"),
        out["commit"].as_str().unwrap_or("?")
    );
    println!("| bench | headline |\n|---|---|");
    println!(
        "| core | best {} ({}): {:.2}x AR at batch 1, {:.2}x at batch 16{}; {:.2} tokens/forward; KV cache {:.2}x recompute |",
        core.best_block,
        if core.best_meets_quality {
            "at equal quality"
        } else {
            "closest, none at equal quality"
        },
        core.speedup_vs_ar,
        core.speedup_vs_ar_batch16,
        core.speedup_vs_ar_same_weights
            .map_or(String::new(), |x| format!(", {x:.2}x its own AR mode")),
        core.tokens_per_forward,
        core.cache_speedup
    );
    if let Some(t) = out["twin"].get("sampling_speedup") {
        println!(
            "| twin | sampling {:.2}x PyTorch (batch 1), training {:.2}x; max |Δ logit| {:.1e} |",
            t.as_f64().unwrap_or(f64::NAN),
            out["twin"]["training_speedup"].as_f64().unwrap_or(f64::NAN),
            out["twin"]["max_abs_logit_diff"]
                .as_f64()
                .unwrap_or(f64::NAN)
        );
    }
    for name in ["samplers", "traj_samplers"] {
        if let Some(r) = out[name].get("result") {
            let best = r["best_policy"].as_str().unwrap_or("?");
            let at_equal = r["runs"].as_array().is_some_and(|runs| {
                runs.iter().any(|x| {
                    x["name"].as_str() == Some(best) && x["equal_quality"].as_bool() == Some(true)
                })
            });
            println!(
                "| {name} | best {best} ({}): {:.2}x the tuned threshold, {:.2}x AR{}{} |",
                if at_equal {
                    "at equal quality"
                } else {
                    "closest, none at equal quality"
                },
                r["best_speedup_vs_threshold"].as_f64().unwrap_or(f64::NAN),
                r["best_speedup_vs_ar"].as_f64().unwrap_or(f64::NAN),
                r["best_speedup_vs_ar_same_weights"]
                    .as_f64()
                    .map_or(String::new(), |x| format!(", {x:.2}x its own AR mode")),
                r["decoding_floor"]["max_speedup_vs_ar"]
                    .as_f64()
                    .map_or(String::new(), |x| format!(
                        "; any policy ≤ {x:.2}x AR (floor)"
                    ))
            );
        }
    }
    for name in [
        "core",
        "twin",
        "samplers",
        "traj_samplers",
        "traj",
        "robot",
        "music",
        "dag",
    ] {
        if let Some(p) = out[name]["peak_rss_mib"].as_f64() {
            println!("| {name} peak memory | {p:.0} MiB resident |");
        }
    }
    for name in ["traj", "robot", "music", "dag"] {
        let v = &out[name];
        match v.get("skipped") {
            Some(r) => println!("| {name} | skipped: {} |", r.as_str().unwrap_or("")),
            None => println!(
                "| {name} | ran in {:.0} s (`{}`) |",
                v["wall_s"].as_f64().unwrap_or(0.0),
                v["command"].as_str().unwrap_or("")
            ),
        }
    }
    if let Some(path) = &args.json {
        checkpoint::write_json(path, &out)
            .with_context(|| format!("writing {}", path.display()))?;
        println!("wrote {}", path.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_args(cmdline: &[&str]) -> AllArgs {
        let cli = Cli::try_parse_from(cmdline).expect("bench all parses");
        match cli.command {
            crate::Command::Bench {
                which: crate::BenchCommand::All(a),
            } => a,
            _ => panic!("not bench all"),
        }
    }

    /// `bench all`'s size and ordered checkpoint reach the samplers bench as flags it accepts.
    #[test]
    fn samplers_command_carries_task_and_ordered_checkpoint() {
        let a = all_args(&[
            "blockdiff",
            "bench",
            "all",
            "--task",
            "full",
            "--ordered-checkpoint",
            "ck/ordered",
            "--ordered-stripes",
            "4",
            "--markov-checkpoints",
            "ck/markov",
        ]);
        let line = samplers_bench_args(&a, Path::new("x.json"));
        let cli = Cli::try_parse_from(std::iter::once("blockdiff".to_string()).chain(line))
            .expect("the samplers command line parses");
        let crate::Command::Bench {
            which:
                crate::BenchCommand::Samplers {
                    task,
                    ordered_checkpoint,
                    ordered_stripes,
                    ordered_block,
                    markov_checkpoints,
                    ..
                },
        } = cli.command
        else {
            panic!("not bench samplers");
        };
        assert!(matches!(task, crate::SamplerTask::Full));
        assert_eq!(ordered_checkpoint, Some(PathBuf::from("ck/ordered")));
        assert_eq!((ordered_block, ordered_stripes), (64, 4));
        assert_eq!(markov_checkpoints, Some(PathBuf::from("ck/markov")));
        // Without the flag the samplers bench trains its own ordered model.
        let a = all_args(&["blockdiff", "bench", "all"]);
        let line = samplers_bench_args(&a, Path::new("x.json"));
        assert!(!line
            .iter()
            .any(|f| f == "--ordered-checkpoint" || f == "--markov-checkpoints"));
        assert_eq!(line[3], "small");
    }
}
