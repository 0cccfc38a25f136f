//! Training and sampling trips on the core engine, the two baselines (order-1 Markov chain on
//! segments, shortest path) and the evaluation that scores all of them with the same code.

use std::path::Path;

use blockdiff_core::burn::module::AutodiffModule;
use blockdiff_core::burn::prelude::*;
use blockdiff_core::checkpoint::{self, read_json};
use blockdiff_core::condition::{Conditioning, Example, TokenFeatures};
use blockdiff_core::model::{BlockDiffusionConfig, BlockDiffusionModel};
use blockdiff_core::sample::{floor_call, sample_with_ids, SampleStats, SamplerConfig};
use blockdiff_core::tokenizer::{Tokenizer, EOS};
use blockdiff_core::train::{
    train_on_cores as core_train, CheckpointSpec, NoiseKernel, TrainConfig, TrainReport,
};
use blockdiff_core::{CpuBackend, CpuTrainBackend};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::error::TrajError;
use crate::metrics::{compare, MetricsConfig, TripMetrics};
use crate::network::RoadNetwork;
use crate::simulate::{best_route, RouteCost};
use crate::tokenizer::{
    segment_features, DestinationFeatures, DetourBound, SegmentTokenizer, TopologyConstraint,
    TripRequest, DEST_FEATURE_DIM, FEATURE_DIM, PROMPT_LEN,
};
use crate::trip::Trip;

/// Model and training settings of the trajectory generator.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrajModelConfig {
    /// Residual width.
    pub d_model: usize,
    /// Transformer layers.
    pub n_layers: usize,
    /// Attention heads.
    pub n_heads: usize,
    /// Optimiser steps.
    pub steps: usize,
    /// Sequences per step.
    pub batch_size: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Probability of dropping the prompt (for classifier-free guidance).
    pub cond_drop_prob: f64,
    /// Seed of initialisation and training.
    pub seed: u64,
    /// Show a progress bar.
    pub progress: bool,
    /// Forward noise kernel: absorbing (masked; every commit policy) or uniform-state (sample
    /// with [`blockdiff_core::sample::CommitPolicy::Uniform`]).
    #[serde(default)]
    pub kernel: NoiseKernel,
    /// Score output segments by their features too (core `feature_head`): the model can
    /// prefer successors by where they lead instead of learning each segment's row alone.
    #[serde(default)]
    pub feature_head: bool,
    /// Give every request its destination's token features ([`DestinationFeatures`]: hop and
    /// straight-line distance of each segment to the destination) through the core's
    /// request features.
    #[serde(default)]
    pub dest_features: bool,
}

impl Default for TrajModelConfig {
    fn default() -> Self {
        Self {
            d_model: 128,
            n_layers: 4,
            n_heads: 4,
            steps: 1500,
            batch_size: 32,
            lr: 2e-3,
            cond_drop_prob: 0.1,
            seed: 42,
            progress: true,
            kernel: NoiseKernel::Absorbing,
            feature_head: true,
            dest_features: true,
        }
    }
}

/// A trained trajectory generator.
#[derive(Debug)]
pub struct TrajModel<B: Backend> {
    /// The denoiser (with the segment feature table attached).
    pub model: BlockDiffusionModel<B>,
    /// Its config.
    pub config: BlockDiffusionConfig,
    /// The tokenizer.
    pub tokenizer: SegmentTokenizer,
    /// Generated tokens per trip (route after the origin, plus `EOS`).
    pub seq_len: usize,
    /// Detour bound fitted on the training trips (`None` = only the length limit).
    pub detour: Option<DetourBound>,
    /// Threads sampling batches concurrently (default: the machine's cores).
    pub workers: usize,
    /// Per-destination request features, when the model was trained with them.
    pub dest_features: Option<std::sync::Arc<DestinationFeatures>>,
}

/// File beside the checkpoint holding the fitted [`DetourBound`].
pub const DETOUR_FILE: &str = "detour.json";

/// Quantile of training trips' detour ratio the bound covers.
pub const DETOUR_QUANTILE: f64 = 0.99;

/// Sequence length for a set of trips: the longest route (after its origin) plus `EOS`,
/// rounded up to a multiple of 16 so every block size of the mixture divides it.
pub fn seq_len_for(trips: &[Trip]) -> usize {
    let longest = trips.iter().map(|t| t.route.len()).max().unwrap_or(1);
    longest.div_ceil(16) * 16
}

fn feature_tensor<B: Backend>(
    net: &RoadNetwork,
    tok: &SegmentTokenizer,
    device: &B::Device,
) -> Tensor<B, 2> {
    let table = segment_features(net, tok);
    Tensor::from_data(
        TensorData::new(table, [tok.vocab().size(), FEATURE_DIM]),
        device,
    )
}

/// Trains a generator on `train` (validating on `val`), saving a checkpoint into `ckpt_dir`
/// when given (with resume state, so an interrupted run continues exactly).
pub fn train_model(
    net: &RoadNetwork,
    train: &[Trip],
    val: &[Trip],
    cfg: &TrajModelConfig,
    ckpt_dir: Option<&Path>,
) -> Result<(TrajModel<CpuBackend>, TrainReport), TrajError> {
    if train.is_empty() {
        return Err(TrajError::Config("no training trips".into()));
    }
    net.check_routes(&train.iter().map(|t| t.route.clone()).collect::<Vec<_>>())?;
    let tok = SegmentTokenizer::new(net.len());
    let seq_len = seq_len_for(train);
    let dest = cfg
        .dest_features
        .then(|| std::sync::Arc::new(DestinationFeatures::new(net, &tok)));
    let to_examples = |trips: &[Trip]| -> Result<Vec<Example>, TrajError> {
        trips
            .iter()
            .filter(|t| t.route.len() <= seq_len)
            .map(|t| {
                let mut ex = tok
                    .example(t)
                    .map_err(|e| TrajError::Config(e.to_string()))?;
                // Lazy: the table is rebuilt (memoised, bounded) when a batch reads it, so the
                // training set holds no per-trip table.
                ex.condition.token_features = dest
                    .as_ref()
                    .zip(t.destination())
                    .map(|(f, d)| DestinationFeatures::lazy(f, d));
                Ok(ex)
            })
            .collect()
    };
    let (train_ex, val_ex) = (to_examples(train)?, to_examples(val)?);
    let mcfg = BlockDiffusionConfig::new(tok.vocab().size())
        .with_d_model(cfg.d_model)
        .with_n_layers(cfg.n_layers)
        .with_n_heads(cfg.n_heads)
        .with_max_len(PROMPT_LEN + seq_len)
        .with_token_feature_dim(FEATURE_DIM)
        .with_feature_head(cfg.feature_head)
        .with_request_feature_dim(if cfg.dest_features {
            DEST_FEATURE_DIM
        } else {
            0
        });
    mcfg.validate().map_err(TrajError::Config)?;
    let device = Default::default();
    let model = mcfg
        .init_seeded::<CpuTrainBackend>(cfg.seed, &device)
        .with_token_features(feature_tensor(net, &tok, &device));
    let tcfg = TrainConfig::new(seq_len)
        .with_steps(cfg.steps)
        .with_batch_size(cfg.batch_size)
        .with_lr(cfg.lr)
        .with_warmup_steps((cfg.steps / 20).max(1))
        .with_cond_drop_prob(cfg.cond_drop_prob)
        .with_seed(cfg.seed)
        .with_progress(cfg.progress && std::env::var_os("CI").is_none())
        .with_eval_block_size(16)
        .with_kernel(cfg.kernel);
    let spec = ckpt_dir.map(|dir| CheckpointSpec {
        dir,
        tokenizer: tok.metadata(),
        resume: true,
    });
    let (model, report) = core_train(model, &mcfg, &tcfg, &train_ex, &val_ex, spec, &device)?;
    let detour = DetourBound::fit(net, train, DETOUR_QUANTILE);
    if let Some(dir) = ckpt_dir {
        checkpoint::write_json(&dir.join(DETOUR_FILE), &detour)?;
    }
    Ok((
        TrajModel {
            model: model.valid(),
            config: mcfg,
            tokenizer: tok,
            seq_len,
            detour: Some(detour),
            workers: blockdiff_core::cpu_cores(),
            dest_features: dest,
        },
        report,
    ))
}

/// Loads a checkpoint written by [`train_model`] for `net` (which must be the network it was
/// trained on: same segment count).
pub fn load_model(dir: &Path, net: &RoadNetwork) -> Result<TrajModel<CpuBackend>, TrajError> {
    let device = Default::default();
    let ck = checkpoint::load::<CpuBackend>(dir, &device)?;
    let tok = SegmentTokenizer::new(net.len());
    if ck.config.vocab_size != tok.vocab().size() {
        return Err(TrajError::Config(format!(
            "{}: the checkpoint's vocabulary ({} tokens) does not fit this network ({} segments → {} tokens); use the network it was trained on",
            dir.display(),
            ck.config.vocab_size,
            net.len(),
            tok.vocab().size()
        )));
    }
    let train_cfg: serde_json::Value = read_json(&dir.join("train_config.json"))?;
    let seq_len = train_cfg
        .get("seq_len")
        .and_then(|v| v.as_u64())
        .ok_or_else(|| TrajError::Format {
            path: dir.join("train_config.json"),
            line: 0,
            message: "missing field `seq_len`".into(),
        })? as usize;
    let detour_path = dir.join(DETOUR_FILE);
    let detour = if detour_path.exists() {
        Some(read_json(&detour_path)?)
    } else {
        None
    };
    let dest_features = match ck.config.request_feature_dim {
        0 => None,
        DEST_FEATURE_DIM => Some(std::sync::Arc::new(DestinationFeatures::new(net, &tok))),
        k => {
            return Err(TrajError::Config(format!(
                "{}: the checkpoint expects {k} request features per segment, this version computes {DEST_FEATURE_DIM}",
                dir.display()
            )))
        }
    };
    Ok(TrajModel {
        model: ck.model,
        config: ck.config,
        tokenizer: tok,
        seq_len,
        detour,
        workers: blockdiff_core::cpu_cores(),
        dest_features,
    })
}

/// Generated routes and the sampler's counters.
#[derive(Clone, Debug, Default)]
pub struct Generated {
    /// One route per request (origin first).
    pub routes: Vec<Vec<usize>>,
    /// Summed counters (`wall_s` = total wall-clock).
    pub stats: SampleStats,
}

impl<B: Backend> TrajModel<B> {
    /// Generates one trip per request, `batch` requests per sampler call.
    pub fn generate(
        &self,
        net: &RoadNetwork,
        requests: &[TripRequest],
        sampler: &SamplerConfig,
        batch: usize,
        progress: bool,
    ) -> Result<Generated, TrajError> {
        self.generate_from(net, requests, 0, sampler, batch, progress)
    }

    /// Like [`Self::generate`] for a slice of a larger job that starts at request `first_id`:
    /// request `i` is seeded by its global id `first_id + i`, so a sharded job
    /// ([`blockdiff_core::shard`]) reproduces a single run exactly.
    pub fn generate_from(
        &self,
        net: &RoadNetwork,
        requests: &[TripRequest],
        first_id: u64,
        sampler: &SamplerConfig,
        batch: usize,
        progress: bool,
    ) -> Result<Generated, TrajError> {
        if let Some(r) = requests
            .iter()
            .find(|r| r.origin >= net.len() || r.destination >= net.len())
        {
            return Err(TrajError::UnknownSegment {
                id: r.origin.max(r.destination) as i64,
                context: " in a generation request".into(),
            });
        }
        let mut sampler = sampler.clone();
        sampler.max_len = sampler.max_len.min(self.seq_len).max(1);
        let constraint =
            TopologyConstraint::new(net, &self.tokenizer, Some(PROMPT_LEN + sampler.max_len))
                .with_detour(self.detour);
        let device = self.model.devices().into_iter().next().unwrap_or_default();
        let bar = if progress {
            crate::progress_bar(requests.len() as u64, "generate")
        } else {
            indicatif::ProgressBar::hidden()
        };
        let started = std::time::Instant::now();
        let mut out = Generated::default();
        // Batch trips of similar length together (by hop distance to the destination): a
        // sampler call runs until its longest trip ends, so mixed batches waste rows.
        let mut order: Vec<usize> = (0..requests.len()).collect();
        order.sort_by_key(|&i| constraint.hops(requests[i].origin, requests[i].destination));
        let sorted: Vec<TripRequest> = order.iter().map(|&i| requests[i]).collect();
        // Chunks are independent (each has its own seed), so worker threads take them in
        // turn: at these sizes one sampler call cannot keep both cores busy on its own.
        let chunks: Vec<&[TripRequest]> = sorted.chunks(batch.max(1)).collect();
        let ids: Vec<u64> = order.iter().map(|&i| first_id + i as u64).collect();
        let id_chunks: Vec<&[u64]> = ids.chunks(batch.max(1)).collect();
        let results = self.on_workers(chunks.len(), |k| {
            let r = self.sample_chunk(chunks[k], id_chunks[k], k, &sampler, &constraint, &device);
            bar.inc(chunks[k].len() as u64);
            r
        });
        let mut per_chunk: Vec<Option<Vec<Vec<usize>>>> = vec![None; chunks.len()];
        for r in results {
            let (k, rs, stats) = r?;
            per_chunk[k] = Some(rs);
            out.stats.nfe += stats.nfe;
            out.stats.tokens += stats.tokens;
            out.stats.batch = out.stats.batch.max(stats.batch);
        }
        let routes: Vec<Vec<usize>> = per_chunk.into_iter().flatten().flatten().collect();
        bar.finish_and_clear();
        out.routes = vec![Vec::new(); requests.len()];
        for (route, &i) in routes.into_iter().zip(&order) {
            out.routes[i] = route;
        }
        out.stats.wall_s = started.elapsed().as_secs_f64();
        Ok(out)
    }
}

impl<B: Backend> TrajModel<B> {
    /// Runs `job(0..jobs)` on the model's worker threads, which take jobs in turn, each
    /// thread's kernels on its own share of the cores; results in no particular order.
    fn on_workers<R: Send>(&self, jobs: usize, job: impl Fn(usize) -> R + Sync) -> Vec<R> {
        let next = std::sync::atomic::AtomicUsize::new(0);
        let workers = self.workers.max(1).min(jobs.max(1));
        std::thread::scope(|scope| {
            let handles: Vec<_> = (0..workers)
                .map(|_| {
                    scope.spawn(|| {
                        blockdiff_core::with_core_share(workers, || {
                            let mut done = Vec::new();
                            loop {
                                let k = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                if k >= jobs {
                                    break;
                                }
                                done.push(job(k));
                            }
                            done
                        })
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().expect("sampling worker panicked"))
                .collect()
        })
    }

    /// The sampler's condition for a request: its prompt and, with destination features, the
    /// destination's table.
    fn conditioning(&self, r: &TripRequest) -> Conditioning {
        Conditioning {
            prompt: self.tokenizer.prompt(r),
            vectors: None,
            token_features: self
                .dest_features
                .as_ref()
                .map(|f| TokenFeatures::shared(f.table(r.destination))),
        }
    }

    /// The decoding floor ([`blockdiff_core::sample::floor_call`]) on real trips: one model
    /// call over each trip's prompt ⊕ route ⊕ `EOS`, one trip per call on the worker threads,
    /// as [`Self::generate`] runs batch 1. Returns wall-clock seconds per trip.
    pub fn floor_wall(&self, trips: &[Trip]) -> Result<f64, TrajError> {
        let device = self.model.devices().into_iter().next().unwrap_or_default();
        let mut jobs = Vec::with_capacity(trips.len());
        for t in trips {
            let req = TripRequest::of(t)
                .ok_or_else(|| TrajError::Config("a trip with an empty route".into()))?;
            let mut tokens = self
                .tokenizer
                .encode(&t.route[1..].to_vec())
                .map_err(|e| TrajError::Config(e.to_string()))?;
            tokens.push(EOS);
            jobs.push((self.conditioning(&req), tokens));
        }
        let started = std::time::Instant::now();
        let results = self.on_workers(jobs.len(), |k| {
            floor_call(&self.model, &self.config, &jobs[k].0, &jobs[k].1, &device).map(|_| ())
        });
        let wall = started.elapsed().as_secs_f64();
        for r in results {
            r?;
        }
        Ok(wall / trips.len().max(1) as f64)
    }

    fn sample_chunk(
        &self,
        chunk: &[TripRequest],
        ids: &[u64],
        k: usize,
        sampler: &SamplerConfig,
        constraint: &TopologyConstraint,
        device: &B::Device,
    ) -> Result<(usize, Vec<Vec<usize>>, SampleStats), TrajError> {
        let conds: Vec<Conditioning> = chunk.iter().map(|r| self.conditioning(r)).collect();
        let res = sample_with_ids(
            &self.model,
            &self.config,
            &conds,
            ids,
            constraint,
            sampler,
            device,
        )?;
        let mut routes = Vec::with_capacity(chunk.len());
        for (r, seq) in chunk.iter().zip(&res.sequences) {
            let mut route = vec![r.origin];
            route.extend(
                self.tokenizer
                    .decode(seq)
                    .map_err(|e| TrajError::Config(e.to_string()))?,
            );
            routes.push(route);
        }
        Ok((k, routes, res.stats))
    }
}

/// Order-1 Markov chain on segments: `P(next | current)` and `P(end | current)` counted on
/// training trips (add-α smoothed over the road successors), walked from the origin until it
/// ends, reaches the destination, or hits the length limit.
#[derive(Clone, Debug)]
pub struct MarkovBaseline {
    next: Vec<Vec<(usize, f64)>>,
    end: Vec<f64>,
}

impl MarkovBaseline {
    /// Fits the chain (smoothing `alpha` per successor edge).
    pub fn fit(net: &RoadNetwork, trips: &[Trip], alpha: f64) -> Self {
        let n = net.len();
        let mut counts: Vec<Vec<(usize, f64)>> = net
            .successors
            .iter()
            .map(|s| s.iter().map(|&b| (b, alpha)).collect())
            .collect();
        let mut ends = vec![alpha; n];
        let mut visits = vec![0.0; n];
        for t in trips {
            for w in t.route.windows(2) {
                if let Some(e) = counts[w[0]].iter_mut().find(|e| e.0 == w[1]) {
                    e.1 += 1.0;
                }
                visits[w[0]] += 1.0;
            }
            if let Some(&last) = t.route.last() {
                ends[last] += 1.0;
                visits[last] += 1.0;
            }
        }
        let next = counts
            .into_iter()
            .map(|row| {
                let z: f64 = row.iter().map(|e| e.1).sum();
                row.into_iter()
                    .map(|(b, c)| (b, c / z.max(1e-12)))
                    .collect()
            })
            .collect();
        let end = (0..n)
            .map(|i| ends[i] / (visits[i] + alpha * (net.successors[i].len() as f64 + 1.0)))
            .collect();
        Self { next, end }
    }

    /// One trip per request.
    pub fn generate(&self, requests: &[TripRequest], max_len: usize, seed: u64) -> Vec<Vec<usize>> {
        let mut rng = StdRng::seed_from_u64(seed);
        requests
            .iter()
            .map(|r| {
                let mut route = vec![r.origin];
                let mut cur = r.origin;
                while route.len() < max_len && cur != r.destination {
                    if rng.random::<f64>() < self.end[cur] || self.next[cur].is_empty() {
                        break;
                    }
                    let mut u = rng.random::<f64>();
                    let mut pick = self.next[cur][self.next[cur].len() - 1].0;
                    for &(b, p) in &self.next[cur] {
                        if u < p {
                            pick = b;
                            break;
                        }
                        u -= p;
                    }
                    route.push(pick);
                    cur = pick;
                }
                route
            })
            .collect()
    }
}

/// Shortest-distance routes for the requests (the origin alone when unreachable).
pub fn shortest_paths(net: &RoadNetwork, requests: &[TripRequest]) -> Vec<Vec<usize>> {
    requests
        .iter()
        .map(|r| {
            best_route(
                net,
                r.origin,
                r.destination,
                RouteCost::Distance,
                &[0.0; 3],
                None,
            )
            .unwrap_or_else(|| vec![r.origin])
        })
        .collect()
}

/// Metrics of one generator against held-out trips.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct GeneratorMetrics {
    /// JSD of trip distance.
    pub jsd_distance: f64,
    /// JSD of radius of gyration.
    pub jsd_radius: f64,
    /// Mean Hausdorff distance on matched OD pairs, km.
    pub hausdorff_km: f64,
    /// Mean DTW on matched OD pairs, km.
    pub dtw_km: f64,
    /// Mean EDR (ε = 100 m) on matched OD pairs.
    pub edr: f64,
    /// Share of trips whose every consecutive pair is a successor edge.
    pub connectivity: f64,
    /// Share of trips that end at their requested destination.
    pub destination_hit: f64,
    /// OD pairs compared for Hausdorff/DTW/EDR.
    pub od_pairs_matched: usize,
    /// Trips generated per second (model only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trips_per_s: Option<f64>,
}

/// Points of a route for the metrics: the centroid of each segment (HOSER's convention).
pub fn route_centroids(net: &RoadNetwork, route: &[usize]) -> Vec<[f64; 2]> {
    route
        .iter()
        .filter_map(|&s| net.segments.get(s))
        .map(|s| s.centroid())
        .collect()
}

/// Scores generated routes against real trips (one generated route per real trip's request).
pub fn evaluate(
    net: &RoadNetwork,
    real: &[Trip],
    requests: &[TripRequest],
    generated: &[Vec<usize>],
    cfg: &MetricsConfig,
) -> Result<GeneratorMetrics, TrajError> {
    let real_pts: Vec<Vec<[f64; 2]>> = real
        .iter()
        .map(|t| route_centroids(net, &t.route))
        .collect();
    let gen_pts: Vec<Vec<[f64; 2]>> = generated
        .iter()
        .filter(|r| !r.is_empty())
        .map(|r| route_centroids(net, r))
        .collect();
    let m: TripMetrics = compare(&real_pts, &gen_pts, cfg)?;
    let n = generated.len().max(1) as f64;
    let connectivity = generated
        .iter()
        .filter(|r| net.is_connected_route(r))
        .count() as f64
        / n;
    let destination_hit = generated
        .iter()
        .zip(requests)
        .filter(|(r, q)| r.last() == Some(&q.destination))
        .count() as f64
        / n;
    Ok(GeneratorMetrics {
        jsd_distance: m.jsd_distance,
        jsd_radius: m.jsd_radius,
        hausdorff_km: m.hausdorff_km,
        dtw_km: m.dtw_km,
        edr: m.edr,
        connectivity,
        destination_hit,
        od_pairs_matched: m.od_pairs_matched,
        trips_per_s: None,
    })
}
