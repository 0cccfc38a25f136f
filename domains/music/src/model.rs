//! Training the audio-token model and loading it back.
//!
//! A checkpoint folder holds the core checkpoint (weights, `config.json`, tokenizer metadata),
//! `codec.safetensors` and `music.json` ([`MusicSettings`]).

use std::path::Path;

use blockdiff_core::checkpoint;
use blockdiff_core::condition::Example;
use blockdiff_core::model::{BlockDiffusionConfig, BlockDiffusionModel};
use blockdiff_core::sample::{CommitPolicy, SamplerConfig};
use blockdiff_core::schedule::LossWeighting;
use blockdiff_core::train::{
    evaluate_positions, train_on_cores as core_train, CheckpointSpec, Noise, TrainConfig,
    TrainReport,
};
use blockdiff_core::{CpuBackend, CpuTrainBackend};
use serde::{Deserialize, Serialize};

use crate::codec::{Codec, CodecConfig};
use crate::data::Corpus;
use crate::error::{io, MusicError};
use crate::tokenizer::AudioTokenizer;

/// Settings saved as `music.json` next to the checkpoint.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MusicSettings {
    /// Codec hyper-parameters (the codebooks are in `codec.safetensors`).
    pub codec: CodecConfig,
    /// Training window in tokens (a whole number of blocks); also the longest context a
    /// stream attends to.
    pub seq_len: usize,
    /// Frames per block at generation time.
    pub block_frames: usize,
}

impl MusicSettings {
    /// Tokens per frame.
    pub fn frame_len(&self) -> usize {
        self.codec.codes_per_frame()
    }
    /// Tokens per block.
    pub fn block_tokens(&self) -> usize {
        self.block_frames * self.frame_len()
    }
    /// Tokens of context a streamed block sees once the window is full: the sliding window
    /// keeps `seq_len` tokens, the block being decoded included (`blockdiff_core::stream`).
    pub fn stream_context(&self) -> usize {
        self.seq_len.saturating_sub(self.block_tokens())
    }
}

/// How to train.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MusicTrainConfig {
    /// Codec settings.
    pub codec: CodecConfig,
    /// Frames per training window.
    pub window_frames: usize,
    /// Frames per block for generation (and the main training block size).
    pub block_frames: usize,
    /// Model width.
    pub d_model: usize,
    /// Layers.
    pub n_layers: usize,
    /// Heads.
    pub n_heads: usize,
    /// Optimiser steps.
    pub steps: usize,
    /// Windows per batch.
    pub batch_size: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Share of steps trained at block size 1 (AR mode: exact held-out bits per token).
    pub ar_share: f64,
    /// How masked-token losses are weighted (`MaskCount` trains block size 1, the AR mode
    /// that scores bits per token, on every token instead of a `t`-fraction of them). A
    /// config saved before this field existed was trained with, and loads as, `InverseT`.
    #[serde(default)]
    pub loss_weighting: LossWeighting,
    /// Seed.
    pub seed: u64,
}

impl Default for MusicTrainConfig {
    fn default() -> Self {
        Self {
            codec: CodecConfig::default(),
            window_frames: 48,
            block_frames: 4,
            d_model: 128,
            n_layers: 4,
            n_heads: 4,
            steps: 2000,
            batch_size: 16,
            lr: 2e-3,
            ar_share: 0.4,
            loss_weighting: LossWeighting::MaskCount,
            seed: 0,
        }
    }
}

/// What training measured.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MusicTrainReport {
    /// Seconds of audio per split.
    pub seconds: [f64; 3],
    /// Training windows.
    pub train_windows: usize,
    /// The core trainer's report.
    pub train: TrainReport,
    /// Seconds spent fitting the codec.
    pub codec_fit_s: f64,
}

/// Settings file name.
pub const SETTINGS_FILE: &str = "music.json";
/// Codec file name.
pub const CODEC_FILE: &str = "codec.safetensors";

/// Tokens of every track, frame-aligned.
pub fn tokenize_tracks(
    codec: &Codec,
    tok: &AudioTokenizer,
    tracks: &[crate::data::Track],
) -> Result<Vec<Vec<u32>>, MusicError> {
    tracks
        .iter()
        .map(|t| Ok(tok.encode_codes(&codec.encode(&t.samples))?))
        .collect()
}

/// Cuts token streams into windows of `len` tokens starting on frame boundaries, `stride`
/// tokens apart (a multiple of the frame length); the tail shorter than a window is dropped.
pub fn windows(streams: &[Vec<u32>], len: usize, stride: usize) -> Vec<Example> {
    let mut out = Vec::new();
    for s in streams {
        let mut at = 0;
        while at + len <= s.len() {
            out.push(Example::tokens(s[at..at + len].to_vec()));
            at += stride;
        }
    }
    out
}

/// Fits the codec on the training split, tokenizes, and trains the model; writes everything
/// to `dir`.
pub fn train(
    corpus: &Corpus,
    cfg: &MusicTrainConfig,
    dir: &Path,
    progress: bool,
) -> Result<MusicTrainReport, MusicError> {
    if cfg.block_frames == 0 || cfg.window_frames % cfg.block_frames != 0 {
        return Err(MusicError::Config(format!(
            "window_frames {} must be a positive multiple of block_frames {}",
            cfg.window_frames, cfg.block_frames
        )));
    }
    if !(0.0..1.0).contains(&cfg.ar_share) {
        return Err(MusicError::Config("ar_share must be in [0, 1)".into()));
    }
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let t0 = std::time::Instant::now();
    let signals: Vec<&[f32]> = corpus.train.iter().map(|t| t.samples.as_slice()).collect();
    let codec = Codec::train(cfg.codec.clone(), &signals)?;
    let codec_fit_s = t0.elapsed().as_secs_f64();
    codec.save(&dir.join(CODEC_FILE))?;
    let tok = AudioTokenizer::new(codec.config());
    let settings = MusicSettings {
        codec: codec.config().clone(),
        seq_len: cfg.window_frames * codec.config().codes_per_frame(),
        block_frames: cfg.block_frames,
    };
    let frame = settings.frame_len();
    let train_streams = tokenize_tracks(&codec, &tok, &corpus.train)?;
    let val_streams = tokenize_tracks(&codec, &tok, &corpus.val)?;
    let train_set = windows(
        &train_streams,
        settings.seq_len,
        settings.seq_len / 2 / frame * frame,
    );
    let val_set = windows(&val_streams, settings.seq_len, settings.seq_len);
    if train_set.is_empty() {
        return Err(MusicError::Config(format!(
            "no training window of {} frames fits the training audio",
            cfg.window_frames
        )));
    }
    tracing::info!(windows = train_set.len(), val = val_set.len(), "tokenized");
    let device = Default::default();
    let mcfg = BlockDiffusionConfig::new(tok.vocab_size())
        .with_d_model(cfg.d_model)
        .with_n_layers(cfg.n_layers)
        .with_n_heads(cfg.n_heads)
        .with_max_len(settings.seq_len);
    mcfg.validate().map_err(MusicError::Config)?;
    let model = mcfg.init_seeded::<CpuTrainBackend>(cfg.seed, &device);
    let block = settings.block_tokens();
    let tcfg = TrainConfig::new(settings.seq_len)
        .with_block_sizes(vec![1, block])
        .with_block_weights(vec![cfg.ar_share, 1.0 - cfg.ar_share])
        .with_loss_weighting(cfg.loss_weighting)
        .with_eval_block_size(block)
        .with_steps(cfg.steps)
        .with_batch_size(cfg.batch_size)
        .with_lr(cfg.lr)
        .with_warmup_steps((cfg.steps / 20).max(1))
        .with_eval_every(0)
        .with_seed(cfg.seed)
        .with_progress(progress && std::env::var_os("CI").is_none());
    let spec = CheckpointSpec {
        dir,
        tokenizer: blockdiff_core::tokenizer::Tokenizer::metadata(&tok),
        resume: false,
    };
    let val_ref: &[Example] = &val_set;
    let (_model, report) = core_train(
        model,
        &mcfg,
        &tcfg,
        &train_set,
        val_ref,
        Some(spec),
        &device,
    )?;
    checkpoint::write_json(&dir.join(SETTINGS_FILE), &settings)?;
    Ok(MusicTrainReport {
        seconds: corpus.seconds(),
        train_windows: train_set.len(),
        train: report,
        codec_fit_s,
    })
}

/// A trained model with its codec, ready to generate or evaluate.
pub struct MusicModel {
    /// The transformer.
    pub model: BlockDiffusionModel<CpuBackend>,
    /// Its config.
    pub model_cfg: BlockDiffusionConfig,
    /// The codec.
    pub codec: Codec,
    /// Frames ⇄ ids.
    pub tokenizer: AudioTokenizer,
    /// `music.json`.
    pub settings: MusicSettings,
}

impl MusicModel {
    /// Loads a checkpoint folder written by [`train`].
    pub fn load(dir: &Path) -> Result<Self, MusicError> {
        let device = Default::default();
        let ck = checkpoint::load::<CpuBackend>(dir, &device)?;
        let settings: MusicSettings = checkpoint::read_json(&dir.join(SETTINGS_FILE))?;
        let codec = Codec::load(&dir.join(CODEC_FILE))?;
        if codec.config() != &settings.codec {
            return Err(MusicError::Format {
                path: dir.join(CODEC_FILE),
                message: format!("codec config differs from {SETTINGS_FILE}'s"),
            });
        }
        let tokenizer = AudioTokenizer::new(codec.config());
        if tokenizer.vocab_size() != ck.config.vocab_size {
            return Err(MusicError::Format {
                path: dir.to_path_buf(),
                message: format!(
                    "model vocabulary {} does not match the codec's {}",
                    ck.config.vocab_size,
                    tokenizer.vocab_size()
                ),
            });
        }
        if settings.block_tokens() == 0 || settings.seq_len % settings.block_tokens() != 0 {
            return Err(MusicError::Format {
                path: dir.join(SETTINGS_FILE),
                message: "seq_len must be a multiple of the block".into(),
            });
        }
        Ok(Self {
            model: ck.model,
            model_cfg: ck.config,
            codec,
            tokenizer,
            settings,
        })
    }

    /// Sampler settings for streaming: `steps` denoising steps per block (top-k commits).
    pub fn sampler(
        &self,
        steps_per_block: usize,
        temperature: f32,
        top_p: f32,
        seed: u64,
    ) -> SamplerConfig {
        let b = self.settings.block_tokens();
        SamplerConfig {
            block_size: b,
            policy: CommitPolicy::TopK {
                k: b.div_ceil(steps_per_block.clamp(1, b)),
            },
            temperature,
            top_p,
            max_len: b,
            stop_at_eos: false,
            seed,
            ..SamplerConfig::default()
        }
    }

    /// Held-out bits per token on token windows: the exact AR-mode NLL (block size 1) and the
    /// block-diffusion NELBO bound at the generation block size, over whole windows and over
    /// the positions from [`MusicSettings::stream_context`] on (the context every block of a
    /// stream has).
    pub fn bits_per_token(&self, windows: &[Example]) -> HeldOutBits {
        let device = Default::default();
        let tcfg = TrainConfig::new(self.settings.seq_len).with_batch_size(8);
        let ln2 = std::f64::consts::LN_2;
        let from = self.settings.stream_context();
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64 / ln2;
        let ar = evaluate_positions(
            &self.model,
            &self.model_cfg,
            &tcfg,
            windows,
            1,
            Noise::AllMasked,
            1,
            &device,
        );
        let block = evaluate_positions(
            &self.model,
            &self.model_cfg,
            &tcfg,
            windows,
            self.settings.block_tokens(),
            Noise::Random,
            2,
            &device,
        );
        // Windows start on a frame boundary, so position p holds frame slot p % frame_len.
        let period = self.settings.frame_len();
        let mut slot_sums = vec![(0.0, 0usize); period];
        for (p, &x) in ar.iter().enumerate().skip(from) {
            slot_sums[p % period].0 += x;
            slot_sums[p % period].1 += 1;
        }
        let ar_stream_by_slot = slot_sums
            .iter()
            .map(|&(sum, n)| sum / n.max(1) as f64 / ln2)
            .collect();
        HeldOutBits {
            ar_window: mean(&ar),
            block_window: mean(&block),
            ar_stream: mean(&ar[from..]),
            block_stream: mean(&block[from..]),
            stream_context: from,
            ar_stream_by_slot,
        }
    }
}

/// [`MusicModel::bits_per_token`]'s numbers (bits per token).
#[derive(Clone, Debug)]
pub struct HeldOutBits {
    /// AR-mode NLL over whole windows (a window's first tokens have no context).
    pub ar_window: f64,
    /// Block NELBO over whole windows.
    pub block_window: f64,
    /// AR-mode NLL of the positions from `stream_context` on.
    pub ar_stream: f64,
    /// Block NELBO of the same positions.
    pub block_stream: f64,
    /// First scored position of the stream numbers.
    pub stream_context: usize,
    /// `ar_stream` per frame slot (`[gain, q0, q1, …]`).
    pub ar_stream_by_slot: Vec<f64>,
}
