//! The core's decoding policies on the trajectory benchmark (`blockdiff bench samplers
//! --task traj`): AR mode of the same weights, the threshold sweep, S2D2, DCD, ARPC and
//! FlashBlock ([`blockdiff_core::sampler_bench::sampler_candidates`]) on a trained checkpoint,
//! each generating one trip per held-out request.
//!
//! Quality is JSD(distance) against the held-out trips (HOSER's definition, lower is better).
//! A JSD over 100 bins from about a thousand trips has a noise floor of its own, so equal
//! quality is "at most AR mode's JSD plus the floor", the floor being the JSD between two real
//! samples of the same size (validation trips vs test trips).

use std::collections::BTreeMap;

use blockdiff_core::sample::SamplerConfig;
use blockdiff_core::sampler_bench::{sampler_candidates, SamplerBenchReport, SamplerRun};
use blockdiff_core::CpuBackend;

use crate::generate::{evaluate, TrajModel};
use crate::metrics::MetricsConfig;
use crate::pipeline::requests_of;
use crate::{RoadNetwork, TrajError, Trip};

/// Settings of [`run_traj_sampler_bench`].
#[derive(Clone, Debug)]
pub struct TrajSamplerBench {
    /// Requests (held-out trips, cycled).
    pub n: usize,
    /// Requests per sampler call.
    pub batch: usize,
    /// Block size of the block policies.
    pub block: usize,
}

impl Default for TrajSamplerBench {
    fn default() -> Self {
        Self {
            n: 1000,
            batch: 1,
            block: 16,
        }
    }
}

/// Runs every policy on `model` for `settings.n` requests of `test` (cycled) and scores the
/// trips against those requests' real trips. `val` gives the real-vs-real noise floor. The
/// uniform-kernel policies run on `uniform` (a model trained with the uniform-state kernel)
/// when given.
pub fn run_traj_sampler_bench(
    model: &TrajModel<CpuBackend>,
    uniform: Option<&TrajModel<CpuBackend>>,
    net: &RoadNetwork,
    val: &[Trip],
    test: &[Trip],
    settings: &TrajSamplerBench,
) -> Result<SamplerBenchReport, TrajError> {
    if test.is_empty() || val.is_empty() {
        return Err(TrajError::Config(
            "the sampler bench needs non-empty validation and test trips".into(),
        ));
    }
    let n = settings.n.max(1);
    let real: Vec<Trip> = test.iter().cycle().take(n).cloned().collect();
    let requests = requests_of(&real);
    let mcfg = MetricsConfig::default();
    let floor_routes: Vec<Vec<usize>> = val
        .iter()
        .cycle()
        .take(n)
        .map(|t| t.route.clone())
        .collect();
    let floor = evaluate(net, &real, &requests, &floor_routes, &mcfg)?.jsd_distance;

    let measure =
        |name: &str, family: &str, cfg: &SamplerConfig| -> Result<SamplerRun, TrajError> {
            let on = match (uniform, family) {
                (Some(u), "uniform") => u,
                _ => model,
            };
            let g = on.generate(net, &requests, cfg, settings.batch, false)?;
            let m = evaluate(net, &real, &requests, &g.routes, &mcfg)?;
            let calls = n.div_ceil(settings.batch.max(1)) as f64;
            tracing::info!(
                policy = name,
                jsd = m.jsd_distance,
                wall_s = g.stats.wall_s,
                "measured"
            );
            Ok(SamplerRun {
                name: name.into(),
                family: family.into(),
                nfe: g.stats.nfe as f64 / calls,
                wall_s: g.stats.wall_s / n as f64,
                quality: m.jsd_distance,
                tokens_per_forward: g.stats.tokens_per_forward(),
                equal_quality: false,
                extra: BTreeMap::from([
                    ("jsd_radius".to_string(), m.jsd_radius),
                    ("dtw_km".to_string(), m.dtw_km),
                    ("hausdorff_km".to_string(), m.hausdorff_km),
                    ("connectivity".to_string(), m.connectivity),
                    ("destination_hit".to_string(), m.destination_hit),
                    (
                        "trips_per_s".to_string(),
                        n as f64 / g.stats.wall_s.max(1e-9),
                    ),
                ]),
            })
        };
    let ar_cfg = SamplerConfig::autoregressive(usize::MAX);
    // AR mode commits forced segments without a call, as every policy here does by default;
    // the unforced runs show what forcing is worth (the speed-ups are against forced AR).
    let mut runs = vec![measure("ar", "ar", &ar_cfg)?];
    let unforced = |cfg: SamplerConfig| SamplerConfig {
        forced: false,
        ..cfg
    };
    runs.push(measure("ar(unforced)", "ar", &unforced(ar_cfg.clone()))?);
    for (name, family, cfg) in sampler_candidates(settings.block, uniform.is_some()) {
        let cfg = SamplerConfig {
            max_len: usize::MAX,
            stop_at_eos: true,
            ..cfg
        };
        if name == "threshold(0.5)" {
            runs.push(measure(
                "threshold(0.5,unforced)",
                &family,
                &unforced(cfg.clone()),
            )?);
        }
        runs.push(measure(&name, &family, &cfg)?);
    }
    let ar = runs[0].quality;
    let mut report = SamplerBenchReport::from_runs(
        "traj",
        "JSD(distance) vs held-out trips",
        ar,
        floor,
        [0.0, ar + floor],
        runs,
    );
    if settings.batch <= 1 {
        // The floor is one trip per call, like the policies at batch 1.
        report.set_floor(model.floor_wall(&real)?);
    }
    Ok(report)
}
