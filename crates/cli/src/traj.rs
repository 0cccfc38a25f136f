//! `blockdiff traj …`: thin wrappers over `blockdiff-traj`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use blockdiff_core::sample::{CommitPolicy, Corrector, SamplerConfig};
use blockdiff_core::sampler_bench::SamplerBenchReport;
use blockdiff_core::shard::Shard;
use blockdiff_core::train::NoiseKernel;
use blockdiff_traj::generate::{load_model, train_model, TrajModelConfig};
use blockdiff_traj::hoser::{
    read_roadmap, read_trips, write_roadmap, write_trips, write_trips_from,
};
use blockdiff_traj::matching::{evaluate_matching, match_trace, read_gps_csv, MatchConfig};
use blockdiff_traj::network::{ImportOptions, RoadNetwork};
use blockdiff_traj::pipeline::{evaluate_all, requests_of, run_demo, write_geojson, DemoOptions};
use blockdiff_traj::sampler_bench::{run_traj_sampler_bench, TrajSamplerBench};
use blockdiff_traj::simulate::{simulate, SimConfig};
use blockdiff_traj::Trip;
use clap::{Args, Subcommand};

#[derive(Subcommand)]
pub enum TrajCommand {
    /// OSM `.osm.pbf` → HOSER `roadmap.geo` + `roadmap.rel`.
    Import {
        /// The extract (any city).
        #[arg(long)]
        osm: PathBuf,
        /// Output folder.
        #[arg(long)]
        out: PathBuf,
        /// Keep every segment (default: the largest strongly connected component).
        #[arg(long)]
        keep_all: bool,
    },
    /// Simulate trips on a network → `train.csv`, `val.csv`, `test.csv` (HOSER format).
    Simulate {
        /// Folder with `roadmap.geo`/`roadmap.rel`; the CSVs are written there too.
        #[arg(long)]
        data: PathBuf,
        /// Trips.
        #[arg(long, default_value_t = 10_000)]
        trips: usize,
        /// Seed.
        #[arg(long, default_value_t = 7)]
        seed: u64,
    },
    /// Map-match GPS points (CSV: lon,lat[,t][,traj_id]) to segment sequences, or with
    /// `--evaluate` report accuracy on synthetic noisy GPS of held-out trips.
    Match {
        /// Folder with the network (and `test.csv` for `--evaluate`).
        #[arg(long)]
        data: PathBuf,
        /// GPS points file.
        #[arg(long, required_unless_present = "evaluate")]
        gps: Option<PathBuf>,
        /// GPS noise σ in metres.
        #[arg(long, default_value_t = 20.0)]
        sigma: f64,
        /// Output CSV (HOSER `rid_list`); stdout summary only when absent.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Evaluate on synthetic GPS (σ = 10, 20, 40 m; 1–30 s sampling) instead.
        #[arg(long)]
        evaluate: bool,
    },
    /// Train a generator on `train.csv` (validating on `val.csv`).
    Train {
        /// Folder with the network and trips.
        #[arg(long)]
        data: PathBuf,
        /// Checkpoint folder (resumed when it holds resume state).
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        model: ModelArgs,
    },
    /// Generate trips for held-out requests (origin, destination, departure of `test.csv`,
    /// cycled to `-n`).
    Generate {
        /// Folder with the network and `test.csv`.
        #[arg(long)]
        data: PathBuf,
        /// Checkpoint folder.
        #[arg(long)]
        checkpoint: PathBuf,
        /// Number of trips.
        #[arg(short, long, default_value_t = 1000)]
        n: usize,
        /// Output: `.geojson` (FeatureCollection of LineStrings) or `.csv` (HOSER rid_list).
        #[arg(long)]
        out: PathBuf,
        /// Generate only shard I of N (0-based) of the `n` trips, seeded by global trip id:
        /// the N CSV outputs concatenated (later headers dropped) equal the single run.
        #[arg(long, default_value = "0/1")]
        shard: Shard,
        #[command(flatten)]
        sampler: SamplerArgs,
    },
    /// Metric table (model vs Markov vs shortest path) of generated trips against `test.csv`;
    /// writes `metrics.json` and `eval.png` into `--out`.
    Eval {
        /// Folder with the network, `train.csv` and `test.csv`.
        #[arg(long)]
        data: PathBuf,
        /// Generated trips (HOSER CSV, one per `test.csv` row, as `generate -n <rows>` writes).
        #[arg(long)]
        generated: PathBuf,
        /// Output folder.
        #[arg(long)]
        out: PathBuf,
        /// Also score the simulator's own re-drawn routes for the held-out requests (the
        /// benchmark's noise floor); for data made by `traj simulate`/`demo` with default settings.
        #[arg(long)]
        simulator_floor: bool,
    },
    /// Speed and quality of decoding policies on a trained checkpoint: trips/s, tokens per
    /// forward and metrics for block decoding vs AR mode of the same weights (one run).
    Bench {
        /// Folder with the network, `train.csv` and `test.csv`.
        #[arg(long)]
        data: PathBuf,
        /// Checkpoint folder.
        #[arg(long)]
        checkpoint: PathBuf,
        /// Requests per policy (from `test.csv`, cycled).
        #[arg(short, long, default_value_t = 1000)]
        n: usize,
        /// Requests per sampler call.
        #[arg(long, default_value_t = 1)]
        batch_size: usize,
        /// Write the rows as JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// End to end on the bundled Helsinki network: import, simulate, train, generate, evaluate.
    Demo {
        /// Output folder (`trips.geojson`, `metrics.json`, `eval.png`, `checkpoint/`, `data/`).
        #[arg(long, default_value = "out/traj-demo")]
        out: PathBuf,
        /// OSM extract (default: `datasets/helsinki/Helsinki.osm.pbf`).
        #[arg(long)]
        osm: Option<PathBuf>,
        /// Simulated trips.
        #[arg(long, default_value_t = 10_000)]
        trips: usize,
        /// Training steps.
        #[arg(long, default_value_t = 1600)]
        steps: usize,
        #[command(flatten)]
        sampler: SamplerArgs,
    },
}

#[derive(Args, Clone)]
pub struct ModelArgs {
    /// Training steps.
    #[arg(long, default_value_t = 1600)]
    steps: usize,
    /// Residual width.
    #[arg(long, default_value_t = 96)]
    d_model: usize,
    /// Layers.
    #[arg(long, default_value_t = 3)]
    layers: usize,
    /// Heads.
    #[arg(long, default_value_t = 4)]
    heads: usize,
    /// Batch size.
    #[arg(long, default_value_t = 32)]
    batch: usize,
    /// Seed.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Train with the uniform-state noise kernel instead of the absorbing one; sample the
    /// checkpoint with `--policy uniform:STEPS[:K:ROUNDS]`.
    #[arg(long)]
    uniform: bool,
    /// Leave out the feature head (output segments scored by their id's row alone).
    #[arg(long)]
    no_feature_head: bool,
    /// Leave out the destination features (each segment's hop and straight-line distance to
    /// the trip's destination, given to the model per request).
    #[arg(long)]
    no_dest_features: bool,
}

#[derive(Args, Clone)]
pub struct SamplerArgs {
    /// Block size (1 = autoregressive mode of the same weights).
    #[arg(long, default_value_t = 16)]
    block: usize,
    /// Commit policy: `threshold:TAU`, `topk:K`, `dynamic:TAU:K`, `first-hitting`, `s2d2`
    /// (always verify), `s2d2:static:COST:TAU`, `s2d2:dynamic:COST:TAU`,
    /// `s2d2:hysteresis:COST:ON:OFF:TAU`,
    /// `dcd:TAU:WINDOW:MAX_WINDOW`, `uniform:STEPS[:K:ROUNDS]` (uniform-kernel checkpoints).
    #[arg(long, default_value = "threshold:0.9")]
    policy: String,
    /// Corrector on complete blocks: `arpc:REMASK:ROUNDS:MAX_PROB`.
    #[arg(long)]
    corrector: Option<String>,
    /// FlashBlock: reuse each layer's attention to the cache from a block's first call.
    #[arg(long)]
    flashblock: bool,
    /// Call the model even for positions the road network leaves a single segment for (by
    /// default they are committed without a call: most segments have one successor).
    #[arg(long)]
    no_forced: bool,
    /// Softmax temperature.
    #[arg(long, default_value_t = 1.0)]
    temperature: f32,
    /// Classifier-free guidance scale (1 = off; the default guides toward the request, which
    /// costs a second row per request and brings the trips closer to the held-out ones).
    #[arg(long, default_value_t = blockdiff_traj::pipeline::DEFAULT_CFG_SCALE)]
    cfg_scale: f32,
    /// Requests per sampler call. 1 is fastest on a CPU for block decoding: a call then
    /// ends with its own request, and the worker threads (one per core) keep every core busy;
    /// AR mode is fastest at 16 (README, trajectory results).
    #[arg(long, default_value_t = 1)]
    batch_size: usize,
    /// Seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

impl SamplerArgs {
    fn config(&self) -> Result<SamplerConfig> {
        let policy = if self.block == 1 {
            CommitPolicy::TopK { k: 1 }
        } else {
            self.policy.parse::<CommitPolicy>()?
        };
        let corrector = self
            .corrector
            .as_deref()
            .map(str::parse::<Corrector>)
            .transpose()?;
        Ok(SamplerConfig {
            block_size: self.block,
            policy,
            temperature: self.temperature,
            cfg_scale: self.cfg_scale,
            seed: self.seed,
            max_len: usize::MAX,
            flashblock: self.flashblock,
            corrector,
            forced: !self.no_forced,
            ..SamplerConfig::default()
        })
    }
}

/// `bench samplers --task traj`: every decoding policy on a trained checkpoint.
/// The uniform-kernel policies run on `uniform_checkpoint` (`traj train --uniform`) when given.
pub fn sampler_bench(
    data: &Path,
    checkpoint: &Path,
    uniform_checkpoint: Option<&Path>,
    settings: &TrajSamplerBench,
) -> Result<SamplerBenchReport> {
    let net = read_roadmap(data)?;
    let val = load_trips(data, "val.csv", &net)?;
    let test = load_trips(data, "test.csv", &net)?;
    let model = load_model(checkpoint, &net)?;
    let uniform = uniform_checkpoint
        .map(|dir| load_model(dir, &net))
        .transpose()?;
    eprintln!(
        "benchmarking decoding policies on {} trajectory requests...",
        settings.n
    );
    Ok(run_traj_sampler_bench(
        &model,
        uniform.as_ref(),
        &net,
        &val,
        &test,
        settings,
    )?)
}

fn default_osm() -> PathBuf {
    let local = PathBuf::from("datasets/helsinki/Helsinki.osm.pbf");
    if local.exists() {
        return local;
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../datasets/helsinki/Helsinki.osm.pbf")
}

fn load_trips(data: &Path, name: &str, net: &RoadNetwork) -> Result<Vec<Trip>> {
    Ok(read_trips(&data.join(name), net.len())?)
}

fn print_table(report: &blockdiff_traj::pipeline::EvalReport) {
    println!("| generator | JSD dist | JSD radius | Hausdorff km | DTW km | EDR | connectivity | dest. hit | trips/s |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for (name, m) in [
        ("blockdiff", &report.model),
        ("Markov chain", &report.markov),
        ("shortest path", &report.shortest_path),
    ]
    .into_iter()
    .chain(
        report
            .simulator
            .as_ref()
            .map(|m| ("simulator (noise floor)", m)),
    ) {
        println!(
            "| {name} | {:.4} | {:.4} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {} |",
            m.jsd_distance,
            m.jsd_radius,
            m.hausdorff_km,
            m.dtw_km,
            m.edr,
            m.connectivity,
            m.destination_hit,
            m.trips_per_s.map_or("-".into(), |t| format!("{t:.0}"))
        );
    }
}

pub fn run(cmd: TrajCommand) -> Result<()> {
    match cmd {
        TrajCommand::Import { osm, out, keep_all } => {
            let net = RoadNetwork::from_pbf(
                &osm,
                &ImportOptions {
                    largest_scc: !keep_all,
                },
            )?;
            write_roadmap(&out, &net)?;
            println!(
                "{}: {} directed segments, {} successor edges → {}",
                osm.display(),
                net.len(),
                net.n_edges(),
                out.display()
            );
        }
        TrajCommand::Simulate { data, trips, seed } => {
            let net = read_roadmap(&data)?;
            let sim = simulate(
                &net,
                &SimConfig {
                    n_trips: trips,
                    seed,
                    ..SimConfig::default()
                },
            )?;
            write_trips(&data.join("train.csv"), &sim.train)?;
            write_trips(&data.join("val.csv"), &sim.val)?;
            write_trips(&data.join("test.csv"), &sim.test)?;
            blockdiff_traj::hoser::write_atomic(
                &data.join("sim_stats.json"),
                &serde_json::to_vec_pretty(&sim.stats)?,
            )?;
            println!("{}", serde_json::to_string_pretty(&sim.stats)?);
        }
        TrajCommand::Match {
            data,
            gps,
            sigma,
            out,
            evaluate,
        } => {
            let net = read_roadmap(&data)?;
            if evaluate {
                let test = load_trips(&data, "test.csv", &net)?;
                let routes: Vec<Vec<usize>> =
                    test.iter().take(100).map(|t| t.route.clone()).collect();
                println!("| σ (m) | interval (s) | accuracy | precision |\n|---|---|---|---|");
                for s in [10.0, 20.0, 40.0] {
                    for iv in [1.0, 5.0, 15.0, 30.0] {
                        let a = evaluate_matching(&net, &routes, s, iv, 0)?;
                        println!("| {s} | {iv} | {:.4} | {:.4} |", a.accuracy, a.precision);
                    }
                }
                return Ok(());
            }
            let gps = gps.expect("clap requires --gps without --evaluate");
            let traces = read_gps_csv(&gps)?;
            let cfg = MatchConfig::for_sigma(sigma);
            let mut trips = Vec::new();
            for (id, pts) in &traces {
                let route =
                    match_trace(&net, pts, &cfg).with_context(|| format!("trace `{id}`"))?;
                println!("{id}: {} points → {} segments", pts.len(), route.len());
                trips.push(Trip::new(route));
            }
            if let Some(out) = out {
                write_trips(&out, &trips)?;
            }
        }
        TrajCommand::Train { data, out, model } => {
            let net = read_roadmap(&data)?;
            let train = load_trips(&data, "train.csv", &net)?;
            let val = load_trips(&data, "val.csv", &net).unwrap_or_default();
            let cfg = TrajModelConfig {
                d_model: model.d_model,
                n_layers: model.layers,
                n_heads: model.heads,
                steps: model.steps,
                batch_size: model.batch,
                seed: model.seed,
                kernel: if model.uniform {
                    NoiseKernel::Uniform
                } else {
                    NoiseKernel::Absorbing
                },
                feature_head: !model.no_feature_head,
                dest_features: !model.no_dest_features,
                ..TrajModelConfig::default()
            };
            let (_, report) = train_model(&net, &train, &val, &cfg, Some(&out))?;
            println!(
                "trained {} steps ({:.0} tokens/s); final loss {:.4}; validation NELBO {:?} → {}",
                report.steps,
                report.tokens_per_s,
                report.final_train_loss,
                report.val_nelbo.last(),
                out.display()
            );
        }
        TrajCommand::Generate {
            data,
            checkpoint,
            n,
            out,
            shard,
            sampler,
        } => {
            let net = read_roadmap(&data)?;
            let test = load_trips(&data, "test.csv", &net)?;
            let base = requests_of(&test);
            if base.is_empty() {
                bail!("{}: no requests", data.join("test.csv").display());
            }
            let range = shard.range(n);
            let requests: Vec<_> = base
                .iter()
                .cycle()
                .skip(range.start)
                .take(range.len())
                .copied()
                .collect();
            let model = load_model(&checkpoint, &net)?;
            let g = model.generate_from(
                &net,
                &requests,
                range.start as u64,
                &sampler.config()?,
                sampler.batch_size,
                true,
            )?;
            match out.extension().and_then(|e| e.to_str()) {
                Some("csv") => write_trips_from(
                    &out,
                    &g.routes
                        .iter()
                        .map(|r| Trip::new(r.clone()))
                        .collect::<Vec<_>>(),
                    range.start,
                )?,
                Some("geojson") | Some("json") => write_geojson(&out, &net, &g.routes, &requests)?,
                _ => bail!("--out must end in .geojson or .csv"),
            }
            println!(
                "{} trips (shard {shard}: ids {}..{}) in {:.2} s ({:.0} trips/s, {:.2} tokens per forward) → {}",
                requests.len(),
                range.start,
                range.end,
                g.stats.wall_s,
                requests.len() as f64 / g.stats.wall_s.max(1e-9),
                g.stats.tokens_per_forward(),
                out.display()
            );
        }
        TrajCommand::Eval {
            data,
            generated,
            out,
            simulator_floor,
        } => {
            let net = read_roadmap(&data)?;
            let train = load_trips(&data, "train.csv", &net)?;
            let test = load_trips(&data, "test.csv", &net)?;
            let gen = read_trips(&generated, net.len())?;
            let routes: Vec<Vec<usize>> = gen.into_iter().map(|t| t.route).collect();
            let mut report =
                evaluate_all(&net, &train, &test, &routes, Some(&out.join("eval.png")))?;
            if simulator_floor {
                report.simulator = Some(blockdiff_traj::pipeline::simulator_floor(
                    &net,
                    &blockdiff_traj::simulate::SimConfig::default(),
                    &test,
                    &requests_of(&test),
                )?);
            }
            blockdiff_traj::hoser::write_atomic(
                &out.join("metrics.json"),
                &serde_json::to_vec_pretty(&report)?,
            )?;
            print_table(&report);
        }
        TrajCommand::Bench {
            data,
            checkpoint,
            n,
            batch_size,
            json,
        } => {
            let net = read_roadmap(&data)?;
            let train = load_trips(&data, "train.csv", &net)?;
            let test = load_trips(&data, "test.csv", &net)?;
            let test: Vec<Trip> = test.iter().cycle().take(n).cloned().collect();
            let requests = requests_of(&test);
            let model = load_model(&checkpoint, &net)?;
            let mut rows = Vec::new();
            println!("| decoding | trips/s | tokens/forward | NFE | JSD dist | JSD radius | DTW km | dest. hit |\n|---|---|---|---|---|---|---|---|");
            for (name, block, policy) in [
                ("AR (block 1)", 1, CommitPolicy::TopK { k: 1 }),
                (
                    "block 16, threshold 0.9",
                    16,
                    CommitPolicy::Threshold { tau: 0.9 },
                ),
                (
                    "block 16, threshold 0.7",
                    16,
                    CommitPolicy::Threshold { tau: 0.7 },
                ),
                ("block 16, top-2", 16, CommitPolicy::TopK { k: 2 }),
                ("block 16, top-4", 16, CommitPolicy::TopK { k: 4 }),
                (
                    "block 8, threshold 0.9",
                    8,
                    CommitPolicy::Threshold { tau: 0.9 },
                ),
            ] {
                let sampler = SamplerConfig {
                    block_size: block,
                    policy,
                    max_len: usize::MAX,
                    ..SamplerConfig::default()
                };
                let g = model.generate(&net, &requests, &sampler, batch_size, false)?;
                let report = evaluate_all(&net, &train, &test, &g.routes, None)?;
                let tps = n as f64 / g.stats.wall_s.max(1e-9);
                println!(
                    "| {name} | {tps:.0} | {:.2} | {} | {:.4} | {:.4} | {:.3} | {:.3} |",
                    g.stats.tokens_per_forward(),
                    g.stats.nfe,
                    report.model.jsd_distance,
                    report.model.jsd_radius,
                    report.model.dtw_km,
                    report.model.destination_hit
                );
                rows.push(serde_json::json!({
                    "decoding": name, "trips_per_s": tps, "tokens_per_forward": g.stats.tokens_per_forward(),
                    "nfe": g.stats.nfe, "metrics": report.model,
                }));
            }
            if let Some(path) = json {
                blockdiff_traj::hoser::write_atomic(&path, &serde_json::to_vec_pretty(&rows)?)?;
            }
        }
        TrajCommand::Demo {
            out,
            osm,
            trips,
            steps,
            sampler,
        } => {
            let osm = osm.unwrap_or_else(default_osm);
            if !osm.exists() {
                bail!(
                    "{} not found: run datasets/helsinki/fetch.sh (or pass --osm FILE)",
                    osm.display()
                );
            }
            let mut opts = DemoOptions::new(osm, out.clone());
            opts.trips = trips;
            opts.model.steps = steps;
            let mut s = sampler.config()?;
            s.max_len = opts.sampler.max_len;
            opts.sampler = s;
            opts.batch = sampler.batch_size;
            let report = run_demo(&opts)?;
            println!(
                "network: {} segments, {} edges; simulated {} trips ({:.0}% differ from the shortest path); training {:.0} tokens/s",
                report.segments,
                report.edges,
                report.simulation.trips,
                100.0 * report.simulation.share_not_shortest_distance,
                report.train_tokens_per_s
            );
            print_table(&report.metrics);
            println!(
                "wrote {}/{{trips.geojson, metrics.json, eval.png}}",
                out.display()
            );
        }
    }
    Ok(())
}
