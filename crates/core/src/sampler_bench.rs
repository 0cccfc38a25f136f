//! `blockdiff bench samplers`: every decoding policy on the core Markov task — the
//! baselines (AR mode, the threshold sweep), self-speculation (S2D2), deferred commitment
//! (DCD), the ARPC corrector, FlashBlock reuse and the uniform-state kernel (its own model,
//! trained on the same data) — measured for NFE, wall-clock and quality (sample NLL under the
//! true source), with the speed-ups at equal quality.

use std::collections::BTreeMap;
use std::path::Path;

use plotters::prelude::*;
use serde::{Deserialize, Serialize};

use crate::bench::{
    measure_decoding, quality_tolerance, DecodeRun, MarkovTask, OrderedFit, Repeats,
};
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
    /// Model calls per sample (per sampler call when samples are batched).
    pub nfe: f64,
    /// Wall-clock seconds per sample: the median of batch-1 samples (Markov), or a batched
    /// run's total divided by its samples (traj).
    pub wall_s: f64,
    /// The benchmark's quality number, lower is better
    /// ([`SamplerBenchReport::quality_metric`]).
    pub quality: f64,
    /// Tokens committed per model call.
    pub tokens_per_forward: f64,
    /// Whether the quality is inside [`SamplerBenchReport::equal_quality_band`].
    pub equal_quality: bool,
    /// Further quality numbers of the benchmark (traj: `jsd_radius`, `dtw_km`, ...).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub extra: BTreeMap<String, f64>,
}

/// The decoding floor of a benchmark next to its AR mode ([`crate::sample::floor_call`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DecodingFloor {
    /// Wall-clock seconds per sequence of one call over the whole sequence, measured like the
    /// benchmark's policies (same batch, threads and sequences' lengths).
    pub wall_s: f64,
    /// AR mode's wall-clock over the floor: the largest speed-up over AR mode that any commit
    /// policy of these weights could reach on this machine.
    pub max_speedup_vs_ar: f64,
}

/// The whole report (`blockdiff bench samplers --json`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SamplerBenchReport {
    /// Which benchmark: `markov` (the core task) or `traj`.
    pub benchmark: String,
    /// What `quality` measures (lower is better).
    pub quality_metric: String,
    /// Markov task settings (Markov benchmark only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<MarkovTask>,
    /// Exact per-token entropy of the source (Markov benchmark only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub true_entropy: Option<f64>,
    /// The reference quality: the true entropy (Markov) or AR mode's quality (traj).
    pub reference: f64,
    /// Half-width of the equal-quality band around the reference.
    pub tolerance: f64,
    /// Equal quality: `quality` inside `[lo, hi]`.
    pub equal_quality_band: [f64; 2],
    /// Every policy measured; the first is AR mode.
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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uniform_val_loss: Option<f64>,
    /// The ordered-objective model (its order and held-out losses), when trained.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ordered_fit: Option<OrderedFit>,
    /// When the best policy is an ordered one: the ordered model's own AR mode over it (the
    /// speed-up on the same weights), if that AR mode is at equal quality.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub best_speedup_vs_ar_same_weights: Option<f64>,
    /// One call over each whole sequence, next to AR mode: a lower bound on any policy's time
    /// and so an upper bound on its speed-up over AR ([`crate::sample::floor_call`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decoding_floor: Option<DecodingFloor>,
}

impl SamplerBenchReport {
    /// Marks each run's equal quality against `band` and picks the tuned threshold policy and
    /// the best policy (when none is inside the band, the one closest to it). `runs[0]` must
    /// be AR mode.
    pub fn from_runs(
        benchmark: &str,
        quality_metric: &str,
        reference: f64,
        tolerance: f64,
        band: [f64; 2],
        mut runs: Vec<SamplerRun>,
    ) -> Self {
        assert_eq!(runs[0].family, "ar", "the first run is AR mode");
        let outside = |q: f64| (band[0] - q).max(q - band[1]).max(0.0);
        for r in &mut runs {
            r.equal_quality = outside(r.quality) == 0.0;
        }
        let fastest = |family: Option<&str>| {
            let candidates = || {
                runs.iter()
                    .filter(|r| r.family != "ar" && family.is_none_or(|f| r.family == f))
            };
            candidates()
                .filter(|r| r.equal_quality)
                .min_by(|a, b| a.wall_s.total_cmp(&b.wall_s))
                .or_else(|| {
                    candidates().min_by(|a, b| outside(a.quality).total_cmp(&outside(b.quality)))
                })
                .cloned()
                .expect("candidates exist")
        };
        let thr = fastest(Some("threshold"));
        let best = fastest(None);
        Self {
            benchmark: benchmark.into(),
            quality_metric: quality_metric.into(),
            task: None,
            true_entropy: None,
            reference,
            tolerance,
            equal_quality_band: band,
            threshold_policy: thr.name.clone(),
            best_policy: best.name.clone(),
            best_speedup_vs_threshold: thr.wall_s / best.wall_s,
            best_speedup_vs_ar: runs[0].wall_s / best.wall_s,
            uniform_val_loss: None,
            ordered_fit: None,
            best_speedup_vs_ar_same_weights: None,
            decoding_floor: None,
            runs,
        }
    }

    /// Records the decoding floor's wall-clock per sequence against AR mode (`runs[0]`).
    pub fn set_floor(&mut self, wall_s: f64) {
        self.decoding_floor = Some(DecodingFloor {
            wall_s,
            max_speedup_vs_ar: self.runs[0].wall_s / wall_s,
        });
    }
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
    v.push((
        "s2d2(hysteresis,c=1,on=0.5,off=-0.5,τ=0.9)".into(),
        "s2d2".into(),
        with(CommitPolicy::Speculative {
            routing: SpecRouting::Hysteresis {
                cost: 1.0,
                on: 0.5,
                off: -0.5,
                tau: 0.9,
            },
        }),
    ));
    for per_step in [2usize, 3] {
        v.push((
            format!("dilated({per_step})"),
            "dilated".into(),
            with(CommitPolicy::Dilated { per_step }),
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

/// The widest group an ordered model of `(block, stripes)` decodes per call, and trains for
/// (`max_parallel`): one position per stripe, or 8 in the dilated order (positions 8 apart at
/// block 64, where the oracle stays at the entropy).
pub fn ordered_widest_group(block: usize, stripes: usize) -> usize {
    if stripes > 0 { stripes } else { 8 }.min(block)
}

/// The ordered policies for a model trained with the ordered objective at `block` in
/// `stripes` stripes: groups of 1 (its own autoregressive order) up to one position per
/// stripe (or 8 in the dilated order) per call.
pub fn ordered_candidates(block: usize, stripes: usize) -> Vec<(String, String, SamplerConfig)> {
    let widest = ordered_widest_group(block, stripes);
    let mut ks = vec![1usize, 2, 4, widest];
    ks.retain(|&k| k <= widest);
    ks.dedup();
    // The widest group also with nucleus sampling: it cuts the tail where an imperfect
    // model's junctions between stripes put mass on transitions the source never makes.
    ks.into_iter()
        .map(|k| (k, 1.0f32))
        .chain([(widest, 0.95), (widest, 0.9)])
        .map(|(per_step, top_p)| {
            let name = if top_p < 1.0 {
                format!("ordered({per_step}),top-p {top_p}")
            } else {
                format!("ordered({per_step})")
            };
            (
                name,
                "ordered".to_string(),
                SamplerConfig {
                    block_size: block,
                    stop_at_eos: false,
                    top_p,
                    policy: CommitPolicy::Ordered { per_step, stripes },
                    ..SamplerConfig::default()
                },
            )
        })
        .collect()
}

/// Measures every candidate at batch 1 (`repeats`: timed calls, median wall-clock, and the
/// sequences the quality averages over; `extra` records `samples` and `quality_se`). The
/// uniform policies run on `uniform_model` (trained with the uniform kernel) and the ordered
/// ones on `ordered_model` (trained with the ordered objective) when given.
pub fn run_sampler_bench(
    model: &BlockDiffusionModel<CpuBackend>,
    uniform_model: Option<(&BlockDiffusionModel<CpuBackend>, f64)>,
    ordered_model: Option<(&BlockDiffusionModel<CpuBackend>, &OrderedFit)>,
    task: &MarkovTask,
    true_entropy: f64,
    repeats: Repeats,
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
        equal_quality: false,
        name: r.name,
        family: family.into(),
        nfe: r.nfe,
        wall_s: r.wall_s,
        quality: r.sample_nll,
        tokens_per_forward: r.tokens_per_forward,
        extra: BTreeMap::from([
            ("samples".to_string(), r.samples as f64),
            ("quality_se".to_string(), r.sample_nll_se),
        ]),
    };
    let mut runs = vec![to_run(ar, "ar")];
    if ordered_model.is_some() {
        // A reference for the nucleus-sampled ordered policies: AR mode with the same cut
        // (family `ar`, so never the best policy).
        let cfg = SamplerConfig {
            top_p: 0.9,
            ..ar_cfg.clone()
        };
        runs.push(to_run(
            measure_decoding(model, task, "ar,top-p 0.9", &cfg, 1, repeats),
            "ar",
        ));
    }
    if let Some((o, _)) = ordered_model {
        // AR mode of the ordered model's own weights (family `ar`, never the best): the
        // same-weights baseline of the ordered policies.
        runs.push(to_run(
            measure_decoding(o, task, crate::bench::AR_ON_ORDERED, &ar_cfg, 1, repeats),
            "ar",
        ));
    }
    let mut candidates = sampler_candidates(task.block_size, uniform_model.is_some());
    if let Some((_, fit)) = ordered_model {
        candidates.extend(ordered_candidates(fit.block, fit.stripes));
    }
    for (name, family, mut cfg) in candidates {
        cfg.max_len = len;
        let m = match (&uniform_model, &ordered_model, family.as_str()) {
            (Some((u, _)), _, "uniform") => *u,
            (_, Some((o, _)), "ordered") => *o,
            _ => model,
        };
        let r = measure_decoding(m, task, &name, &cfg, 1, repeats);
        tracing::info!(policy = %name, wall_ms = r.wall_s * 1e3, nll = r.sample_nll, "measured");
        runs.push(to_run(r, &family));
    }
    let mut report = SamplerBenchReport::from_runs(
        "markov",
        "sample NLL under the true source (nats/token)",
        h,
        tol,
        [h - tol, h + tol],
        runs,
    );
    report.task = Some(task.clone());
    report.true_entropy = Some(h);
    report.set_floor(crate::bench::measure_floor(model, task, repeats));
    report.uniform_val_loss = uniform_model.map(|(_, l)| l);
    report.ordered_fit = ordered_model.map(|(_, f)| f.clone());
    let best = report.runs.iter().find(|r| r.name == report.best_policy);
    let ar_same = report
        .runs
        .iter()
        .find(|r| r.name == crate::bench::AR_ON_ORDERED && r.equal_quality);
    report.best_speedup_vs_ar_same_weights = match (best, ar_same) {
        (Some(b), Some(a)) if b.family == "ordered" => Some(a.wall_s / b.wall_s),
        _ => None,
    };
    report
}

/// The report as a Markdown table.
pub fn sampler_table(r: &SamplerBenchReport) -> String {
    let mut s = String::from(
        "| policy | NFE | wall ms | tokens/call | quality | equal quality |\n|---|---|---|---|---|---|\n",
    );
    for x in &r.runs {
        // The Markov runs carry the quality's standard error.
        let se = x
            .extra
            .get("quality_se")
            .map_or(String::new(), |se| format!(" ± {se:.3}"));
        s += &format!(
            "| {} | {:.1} | {:.2} | {:.2} | {:.4}{se} | {} |\n",
            x.name,
            x.nfe,
            x.wall_s * 1e3,
            x.tokens_per_forward,
            x.quality,
            if x.equal_quality { "yes" } else { "no" }
        );
    }
    if let Some(f) = &r.decoding_floor {
        s += &format!(
            "| floor: one call per sequence (≤ {:.2}x AR) | 1.0 | {:.2} | – | – | – |\n",
            f.max_speedup_vs_ar,
            f.wall_s * 1e3
        );
    }
    s
}

/// Quality vs NFE (left) and vs wall-clock (right), one colour per family; the dashed lines
/// are the reference quality (black) and the equal-quality band (red).
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
        ("dilated", RGBColor(120, 80, 40)),
        ("ordered", RGBColor(0, 128, 128)),
    ];
    let h = r.reference;
    let [lo, hi] = r.equal_quality_band;
    let q_max = r
        .runs
        .iter()
        .map(|x| x.quality)
        .filter(|q| q.is_finite())
        .fold(hi, f64::max);
    let q_min = r.runs.iter().map(|x| x.quality).fold(lo, f64::min);
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
                .y_desc(r.quality_metric.as_str());
            } else {
                mesh.x_labels(0).y_labels(0);
            }
            mesh.draw().map_err(|e| e.to_string())?;
            for (level, style) in [
                (h, BLACK.stroke_width(1)),
                (hi, RED.stroke_width(1)),
                (lo, RED.stroke_width(1)),
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
            // The decoding floor: nothing can sit left of it on the wall-clock panel.
            if let (1, Some(f)) = (k, &r.decoding_floor) {
                let at = f.wall_s * 1e3;
                let series = chart
                    .draw_series(DashedLineSeries::new(
                        vec![(at, y0), (at, y1)],
                        6,
                        4,
                        RGBColor(128, 128, 128).stroke_width(2),
                    ))
                    .map_err(|e| e.to_string())?;
                if text {
                    series
                        .label("floor: one call per sequence")
                        .legend(|(x, y)| {
                            PathElement::new(
                                vec![(x, y), (x + 20, y)],
                                RGBColor(128, 128, 128).stroke_width(2),
                            )
                        });
                }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn run(name: &str, family: &str, wall_s: f64, quality: f64) -> SamplerRun {
        SamplerRun {
            name: name.into(),
            family: family.into(),
            nfe: 1.0,
            wall_s,
            quality,
            tokens_per_forward: 1.0,
            equal_quality: true,
            extra: BTreeMap::new(),
        }
    }

    #[test]
    fn best_policy_is_the_fastest_inside_the_band() {
        let r = SamplerBenchReport::from_runs(
            "test",
            "q",
            1.0,
            0.1,
            [0.9, 1.1],
            vec![
                run("ar", "ar", 10.0, 1.0),
                run("t-fast-bad", "threshold", 1.0, 0.5),
                run("t-ok", "threshold", 8.0, 1.05),
                run("s-ok", "s2d2", 4.0, 0.95),
                run("s-faster-bad", "s2d2", 2.0, 1.3),
            ],
        );
        let flags: Vec<bool> = r.runs.iter().map(|x| x.equal_quality).collect();
        assert_eq!(flags, [true, false, true, true, false]);
        assert_eq!(r.threshold_policy, "t-ok");
        assert_eq!(r.best_policy, "s-ok");
        assert!((r.best_speedup_vs_threshold - 2.0).abs() < 1e-12);
        assert!((r.best_speedup_vs_ar - 2.5).abs() < 1e-12);
    }

    #[test]
    fn without_equal_quality_the_closest_policy_is_reported() {
        let r = SamplerBenchReport::from_runs(
            "test",
            "q",
            0.0,
            0.01,
            [0.0, 0.01],
            vec![
                run("ar", "ar", 10.0, 0.0),
                run("far", "threshold", 1.0, 0.5),
                run("near", "threshold", 5.0, 0.02),
            ],
        );
        assert_eq!(r.best_policy, "near");
        assert_eq!(r.threshold_policy, "near");
        assert!(r.runs[1..].iter().all(|x| !x.equal_quality));
    }
}
