//! `blockdiff bench twin` (and the pieces `bench all` gathers).

use std::path::PathBuf;

use anyhow::{Context, Result};
use blockdiff_core::checkpoint;
use blockdiff_core::twin::{self, TwinReport, TwinSpec};
use clap::{Args, ValueEnum};

#[derive(Clone, Copy, ValueEnum)]
pub enum TwinSize {
    /// The core Markov task's small model (d 64, 2 layers, block 8).
    Small,
    /// Its full model (d 128, 4 layers, block 16).
    Full,
}

#[derive(Args)]
pub struct TwinArgs {
    /// Model size.
    #[arg(long, value_enum, default_value_t = TwinSize::Full)]
    pub size: TwinSize,
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
}

/// The interpreter the twin runs with.
pub fn twin_python(explicit: Option<PathBuf>) -> PathBuf {
    if let Some(p) =
        explicit.or_else(|| std::env::var_os("BLOCKDIFF_TWIN_PYTHON").map(PathBuf::from))
    {
        return p;
    }
    let venv = std::env::var_os("HOME")
        .map(|h| PathBuf::from(h).join(".cache/blockdiff-twin-venv/bin/python"));
    match venv {
        Some(p) if p.exists() => p,
        _ => PathBuf::from("python3"),
    }
}

pub fn twin(args: TwinArgs) -> Result<TwinReport> {
    let spec = match args.size {
        TwinSize::Small => TwinSpec::small(),
        TwinSize::Full => TwinSpec::full(),
    };
    let python = twin_python(args.python);
    eprintln!(
        "PyTorch twin: d_model {}, {} layers, seq {} / block {}; python {}",
        spec.d_model,
        spec.n_layers,
        spec.seq_len,
        spec.block_size,
        python.display()
    );
    let report = twin::compare(&spec, &python, &args.script, &args.dir)?;
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
