//! `blockdiff bench samplers`: every decoding policy on the core Markov task — the
//! baselines (AR mode, the threshold sweep), self-speculation (S2D2), deferred commitment
//! (DCD), the ARPC corrector, FlashBlock reuse and the uniform-state kernel (its own model,
//! trained on the same data) — measured for NFE, wall-clock and quality (sample NLL under the
//! true source), with the speed-ups at equal quality.

use std::path::Path;

use plotters::prelude::*;
use serde::{Deserialize, Serialize};

use crate::bench::{measure_decoding, quality_tolerance, DecodeRun, MarkovTask};
use crate::model::BlockDiffusionModel;
use crate::sample::{CommitPolicy, Corrector, SamplerConfig, SpecRouting};
use crate::CpuBackend;

/// One policy's measurement.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SamplerRun {
    /// Label, e.g. `s2d2(always)`.
    pub name: String,
    /// Family for plotting: `ar`, `threshold`, `s2d2`, `dcd`, `arpc`, `flashblock`, `uniform`.
    pub family: String,
    /// Model calls per sample.
    pub nfe: f64,
    /// Median wall-clock seconds per sample (batch 1).
    pub wall_s: f64,
    /// Quality: mean NLL per token of the samples under the true source (nats; lower is
    /// better, the true entropy is the floor).
    pub quality: f64,
    /// Tokens committed per model call.
    pub tokens_per_forward: f64,
    /// Whether the quality is within the tolerance of the true entropy.
    pub equal_quality: bool,
}

/// The whole report (`blockdiff bench samplers --json`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SamplerBenchReport {
    /// Task settings.
    pub task: MarkovTask,
    /// Exact per-token entropy of the source (nats).
    pub true_entropy: f64,
    /// Equal quality: sample NLL within this many nats of the true entropy
    /// ([`quality_tolerance`]).
    pub tolerance: f64,
    /// Every policy measured.
    pub runs: Vec<SamplerRun>,
    /// The tuned threshold policy: the fastest threshold setting at equal quality.
    pub threshold_policy: String,
    /// The fastest policy at equal quality (AR excluded).
    pub best_policy: String,
    /// Tuned threshold wall-clock / best wall-clock.
    pub best_speedup_vs_threshold: f64,
    /// AR wall-clock / best wall-clock.
    pub best_speedup_vs_ar: f64,
    /// Held-out loss of the uniform-kernel model (cross-entropy of its denoiser), when trained.
    pub uniform_val_loss: Option<f64>,
}

/// The policies compared, with their plotting family.
pub fn sampler_candidates(
    block: usize,
    with_uniform: bool,
) -> Vec<(String, String, SamplerConfig)> {
    let base = SamplerConfig {
        block_size: block,
        stop_at_eos: false,
        ..SamplerConfig::default()
    };
    let with = |policy: CommitPolicy| SamplerConfig {
        policy,
        ..base.clone()
    };
    let mut v: Vec<(String, String, SamplerConfig)> = Vec::new();
    for tau in [0.95f32, 0.9, 0.8, 0.7, 0.5] {
        v.push((
            format!("threshold({tau})"),
            "threshold".into(),
            with(CommitPolicy::Threshold { tau }),
        ));
    }
    v.push((
        "s2d2(always)".into(),
        "s2d2".into(),
        with(CommitPolicy::Speculative {
            routing: SpecRouting::Always,
        }),
    ));
    for (name, cost, dynamic, tau) in [
        ("s2d2(static,c=1,τ=0.9)", 1.0f32, false, 0.9f32),
        ("s2d2(dynamic,c=1,τ=0.9)", 1.0, true, 0.9),
        ("s2d2(dynamic,c=1,τ=0.7)", 1.0, true, 0.7),
    ] {
        v.push((
            name.into(),
            "s2d2".into(),
            with(CommitPolicy::Speculative {
                routing: SpecRouting::Score { cost, dynamic, tau },
            }),
        ));
    }
    for tau in [0.9f32, 0.7] {
        v.push((
            format!("dcd(τ={tau},w={block})"),
            "dcd".into(),
            with(CommitPolicy::Deferred {
                tau,
                window: block,
                max_window: 2 * block,
            }),
        ));
    }
    for tau in [0.7f32, 0.5] {
        v.push((
            format!("threshold({tau})+arpc"),
            "arpc".into(),
            SamplerConfig {
                corrector: Some(Corrector::Arpc {
                    remask: (block / 4).max(1),
                    rounds: 1,
                    max_prob: 0.3,
                }),
                ..with(CommitPolicy::Threshold { tau })
            },
        ));
    }
    for tau in [0.9f32, 0.7] {
        v.push((
            format!("threshold({tau})+flashblock"),
            "flashblock".into(),
            SamplerConfig {
                flashblock: true,
                ..with(CommitPolicy::Threshold { tau })
            },
        ));
    }
    if with_uniform {
        for (steps, k, rounds) in [(4usize, 0usize, 0usize), (8, 0, 0), (4, block / 4, 1)] {
            v.push((
                format!("uniform(steps={steps},corrector={k}x{rounds})"),
                "uniform".into(),
                with(CommitPolicy::Uniform {
                    steps,
                    corrector_k: k.max(1),
                    corrector_rounds: rounds,
                }),
            ));
        }
    }
    v
}

/// Measures every candidate at batch 1 (`repeats` samples each, median wall-clock). The
/// uniform policies run on `uniform_model` (trained with the uniform kernel) when given.
pub fn run_sampler_bench(
    model: &BlockDiffusionModel<CpuBackend>,
    uniform_model: Option<(&BlockDiffusionModel<CpuBackend>, f64)>,
    task: &MarkovTask,
    true_entropy: f64,
    repeats: usize,
) -> SamplerBenchReport {
    let len = task.seq_len;
    let h = true_entropy;
    let ar_cfg = SamplerConfig {
        stop_at_eos: false,
        ..SamplerConfig::autoregressive(len)
    };
    let ar = measure_decoding(model, task, "ar", &ar_cfg, 1, repeats);
    let tol = quality_tolerance(h, ar.sample_nll);
    let to_run = |r: DecodeRun, family: &str| SamplerRun {
        equal_quality: (r.sample_nll - h).abs() <= tol,
        name: r.name,
        family: family.into(),
        nfe: r.nfe,
        wall_s: r.wall_s,
        quality: r.sample_nll,
        tokens_per_forward: r.tokens_per_forward,
    };
    let mut runs = vec![to_run(ar.clone(), "ar")];
    for (name, family, mut cfg) in sampler_candidates(task.block_size, uniform_model.is_some()) {
        cfg.max_len = len;
        let m = match (&uniform_model, family.as_str()) {
            (Some((u, _)), "uniform") => *u,
            _ => model,
        };
        let r = measure_decoding(m, task, &name, &cfg, 1, repeats);
        tracing::info!(policy = %name, wall_ms = r.wall_s * 1e3, nll = r.sample_nll, "measured");
        runs.push(to_run(r, &family));
    }
    let fastest = |family: Option<&str>| {
        runs.iter()
            .filter(|r| r.family != "ar" && family.is_none_or(|f| r.family == f))
            .filter(|r| r.equal_quality)
            .min_by(|a, b| a.wall_s.total_cmp(&b.wall_s))
            .or_else(|| {
                // None at equal quality: the closest to it.
                runs.iter()
                    .filter(|r| r.family != "ar" && family.is_none_or(|f| r.family == f))
                    .min_by(|a, b| (a.quality - h).abs().total_cmp(&(b.quality - h).abs()))
            })
            .cloned()
            .expect("candidates exist")
    };
    let thr = fastest(Some("threshold"));
    let best = fastest(None);
    SamplerBenchReport {
        task: task.clone(),
        true_entropy: h,
        tolerance: tol,
        threshold_policy: thr.name.clone(),
        best_policy: best.name.clone(),
        best_speedup_vs_threshold: thr.wall_s / best.wall_s,
        best_speedup_vs_ar: ar.wall_s / best.wall_s,
        uniform_val_loss: uniform_model.map(|(_, l)| l),
        runs,
    }
}

/// The report as a Markdown table.
pub fn sampler_table(r: &SamplerBenchReport) -> String {
    let mut s = String::from(
        "| policy | NFE | wall ms | tokens/call | sample NLL (nats) | equal quality |\n|---|---|---|---|---|---|\n",
    );
    for x in &r.runs {
        s += &format!(
            "| {} | {:.1} | {:.2} | {:.2} | {:.3} | {} |\n",
            x.name,
            x.nfe,
            x.wall_s * 1e3,
            x.tokens_per_forward,
            x.quality,
            if x.equal_quality { "yes" } else { "no" }
        );
    }
    s
}

/// Quality vs NFE (left) and vs wall-clock (right), one colour per family; the dashed lines
/// are the true entropy (black) and the equal-quality band (red).
pub fn write_sampler_plot(r: &SamplerBenchReport, path: &Path) -> Result<(), String> {
    let text = crate::plot::font_ready();
    let families = [
        ("ar", BLACK),
        ("threshold", BLUE),
        ("s2d2", RED),
        ("dcd", GREEN),
        ("arpc", MAGENTA),
        ("flashblock", CYAN),
        ("uniform", RGBColor(255, 140, 0)),
    ];
    let h = r.true_entropy;
    let q_max = r
        .runs
        .iter()
        .map(|x| x.quality)
        .filter(|q| q.is_finite())
        .fold(h + r.tolerance, f64::max);
    let q_min = r
        .runs
        .iter()
        .map(|x| x.quality)
        .fold(h - r.tolerance, f64::min);
    let (y0, y1) = (
        q_min - 0.05 * (q_max - q_min + 0.01),
        q_max + 0.05 * (q_max - q_min + 0.01),
    );
    crate::plot::write_png(path, (1200, 520), |root| {
        let panels = root.split_evenly((1, 2));
        for (k, panel) in panels.iter().enumerate() {
            let x = |run: &SamplerRun| if k == 0 { run.nfe } else { run.wall_s * 1e3 };
            let x_max = r.runs.iter().map(x).fold(1.0, f64::max) * 1.1;
            let mut b = ChartBuilder::on(panel);
            b.margin(16).x_label_area_size(40).y_label_area_size(60);
            if text {
                b.caption(
                    if k == 0 {
                        "quality vs NFE"
                    } else {
                        "quality vs wall-clock"
                    },
                    ("sans-serif", 20),
                );
            }
            let mut chart = b
                .build_cartesian_2d(0.0..x_max, y0..y1)
                .map_err(|e| e.to_string())?;
            let mut mesh = chart.configure_mesh();
            if text {
                mesh.x_desc(if k == 0 {
                    "model calls per sample"
                } else {
                    "ms per sample"
                })
                .y_desc("sample NLL (nats/token)");
            } else {
                mesh.x_labels(0).y_labels(0);
            }
            mesh.draw().map_err(|e| e.to_string())?;
            for (level, style) in [
                (h, BLACK.stroke_width(1)),
                (h + r.tolerance, RED.stroke_width(1)),
                (h - r.tolerance, RED.stroke_width(1)),
            ] {
                chart
                    .draw_series(DashedLineSeries::new(
                        vec![(0.0, level), (x_max, level)],
                        6,
                        4,
                        style,
                    ))
                    .map_err(|e| e.to_string())?;
            }
            for (family, color) in families {
                let pts: Vec<(f64, f64)> = r
                    .runs
                    .iter()
                    .filter(|run| run.family == family && run.quality.is_finite())
                    .map(|run| (x(run), run.quality))
                    .collect();
                if pts.is_empty() {
                    continue;
                }
                let series = &mut chart
                    .draw_series(pts.iter().map(|&p| Circle::new(p, 5, color.filled())))
                    .map_err(|e| e.to_string())?;
                if text {
                    series
                        .label(family)
                        .legend(move |(x, y)| Circle::new((x + 10, y), 5, color.filled()));
                }
            }
            if text {
                crate::plot::draw_legend(&mut chart)?;
            }
        }
        Ok(())
    })
}
