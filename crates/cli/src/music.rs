//! `blockdiff music …`: render the MIDI corpus, train codec and model, generate, stream in real
//! time, round-trip WAVs through the codec, evaluate, and the end-to-end demo.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use blockdiff_core::checkpoint;
use blockdiff_music::audio::{read_wav, write_wav, WavStreamWriter, SAMPLE_RATE};
use blockdiff_music::codec::{mu_law_round_trip, CodecConfig};
use blockdiff_music::data::{load_corpus, Corpus};
use blockdiff_music::eval::{evaluate, EvalReport};
use blockdiff_music::metrics::{multires_stft_distance, si_sdr};
use blockdiff_music::model::{train, MusicModel, MusicTrainConfig};
use blockdiff_music::stream::{run_stream, StreamOptions, StreamReport};
use clap::{Args, Subcommand};
use serde::Serialize;

use crate::LossArg;

/// Debian's `fluid-soundfont-gm` (installed by `datasets/music/fetch.sh`).
const DEFAULT_SOUNDFONT: &str = "/usr/share/sounds/sf2/FluidR3_GM.sf2";
const DEFAULT_MANIFEST: &str = "out/music/midi/manifest.json";
const DEFAULT_CHECKPOINT: &str = "out/music/model";

#[derive(Args, Clone)]
pub struct CorpusArgs {
    /// `manifest.json` written by `datasets/music/fetch.sh OUT_DIR`.
    #[arg(long, default_value = DEFAULT_MANIFEST)]
    manifest: PathBuf,
    /// General MIDI SoundFont (.sf2) used to render pieces that have no WAV yet.
    #[arg(long, env = "BLOCKDIFF_SOUNDFONT", default_value = DEFAULT_SOUNDFONT)]
    soundfont: PathBuf,
    /// Use only the first N pieces of each split (0 = all).
    #[arg(long, default_value_t = 0)]
    limit: usize,
}

#[derive(Args, Clone)]
pub struct TrainArgs {
    /// Training steps.
    #[arg(long, default_value_t = 2000)]
    steps: usize,
    /// Windows per batch.
    #[arg(long, default_value_t = 16)]
    batch: usize,
    /// Peak learning rate.
    #[arg(long, default_value_t = 2e-3)]
    lr: f64,
    /// Model width.
    #[arg(long, default_value_t = 128)]
    d_model: usize,
    /// Transformer layers.
    #[arg(long, default_value_t = 4)]
    layers: usize,
    /// Attention heads.
    #[arg(long, default_value_t = 4)]
    heads: usize,
    /// Frames per training window (and the most a stream attends to).
    #[arg(long, default_value_t = 48)]
    window_frames: usize,
    /// Frames per generated block (20 ms each).
    #[arg(long, default_value_t = 4)]
    block_frames: usize,
    /// Residual VQ levels.
    #[arg(long, default_value_t = 4)]
    levels: usize,
    /// MDCT bins coded per frame, lowest first (480 = all; 160 = 0–4 kHz).
    #[arg(long, default_value_t = 480)]
    coded_bins: usize,
    /// Codes per RVQ codebook.
    #[arg(long, default_value_t = 1024)]
    codebook_size: usize,
    /// Frames sampled to fit the codebooks.
    #[arg(long, default_value_t = 40_000)]
    codec_frames: usize,
    /// Share of steps at block size 1 (the AR mode that scores exact bits per token).
    #[arg(long, default_value_t = 0.4)]
    ar_share: f64,
    /// Training loss estimator (mask-count: 7.25 → 6.30 held-out bits/token, README).
    #[arg(long, value_enum, default_value_t = LossArg::MaskCount)]
    loss: LossArg,
    /// Seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

impl TrainArgs {
    fn config(&self) -> MusicTrainConfig {
        MusicTrainConfig {
            codec: CodecConfig {
                levels: self.levels,
                coded_bins: self.coded_bins,
                codebook_size: self.codebook_size,
                train_frames: self.codec_frames,
                seed: self.seed,
                ..CodecConfig::default()
            },
            window_frames: self.window_frames,
            block_frames: self.block_frames,
            d_model: self.d_model,
            n_layers: self.layers,
            n_heads: self.heads,
            steps: self.steps,
            batch_size: self.batch,
            lr: self.lr,
            ar_share: self.ar_share,
            loss_weighting: self.loss.into(),
            seed: self.seed,
        }
    }
}

#[derive(Args, Clone)]
pub struct GenArgs {
    /// Checkpoint folder written by `music train`.
    #[arg(long, default_value = DEFAULT_CHECKPOINT)]
    checkpoint: PathBuf,
    /// Seconds of audio.
    #[arg(long, default_value_t = 30.0)]
    seconds: f64,
    /// Output WAV (24 kHz mono, 16-bit).
    #[arg(long)]
    out: PathBuf,
    /// Continue this WAV (any rate/channels: resampled and mixed to mono).
    #[arg(long)]
    prompt: Option<PathBuf>,
    /// Model calls per block.
    #[arg(long, default_value_t = 4)]
    steps_per_block: usize,
    /// Sampling temperature.
    #[arg(long, default_value_t = 1.0)]
    temperature: f32,
    /// Nucleus sampling mass.
    #[arg(long, default_value_t = 0.95)]
    top_p: f32,
    /// Seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Write the report as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Subcommand)]
pub enum MusicCommand {
    /// Render the manifest's MIDI files to 24 kHz mono WAV (cached next to the manifest).
    Render {
        #[command(flatten)]
        corpus: CorpusArgs,
    },
    /// Fit the codec on the training split, tokenize, train the model.
    Train {
        #[command(flatten)]
        corpus: CorpusArgs,
        #[command(flatten)]
        train: TrainArgs,
        /// Checkpoint folder.
        #[arg(long, default_value = DEFAULT_CHECKPOINT)]
        out: PathBuf,
    },
    /// Generate a file as fast as possible (no clock).
    Generate {
        #[command(flatten)]
        gen: GenArgs,
    },
    /// Stream against a real-time playback clock; reports RTF, block latency, underruns.
    Stream {
        #[command(flatten)]
        gen: GenArgs,
        /// Blocks ready before playback starts.
        #[arg(long, default_value_t = 2)]
        prebuffer_blocks: usize,
        /// Most audio made ahead of the playhead (s).
        #[arg(long, default_value_t = 1.0)]
        max_buffer: f64,
        /// Buffered audio (s) at which the sleeping generator refills to `--max-buffer`.
        #[arg(long, default_value_t = 0.25)]
        refill_below: f64,
    },
    /// WAV → tokens → WAV through a checkpoint's codec; prints SI-SDR against 8-bit μ-law.
    Codec {
        /// Checkpoint folder (its `codec.safetensors`).
        #[arg(long, default_value = DEFAULT_CHECKPOINT)]
        checkpoint: PathBuf,
        /// Input WAV.
        #[arg(long)]
        input: PathBuf,
        /// Reconstructed WAV.
        #[arg(long)]
        out: PathBuf,
    },
    /// Held-out bits/token vs n-gram baselines, codec quality, key consistency, drift, seams.
    Eval {
        /// Checkpoint folder.
        #[arg(long, default_value = DEFAULT_CHECKPOINT)]
        checkpoint: PathBuf,
        #[command(flatten)]
        corpus: CorpusArgs,
        /// Seconds generated for the audio measures.
        #[arg(long, default_value_t = 60.0)]
        gen_seconds: f64,
        /// Seed.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Write the report as JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// End to end: render, train, evaluate, stream; reports in `OUT/`.
    Demo {
        #[command(flatten)]
        corpus: CorpusArgs,
        #[command(flatten)]
        train: TrainArgs,
        /// Output folder (model in `OUT/model`).
        #[arg(long, default_value = "out/music")]
        out: PathBuf,
        /// Seconds streamed against the clock at the end.
        #[arg(long, default_value_t = 30.0)]
        stream_seconds: f64,
        /// Seconds generated for the evaluation's audio measures.
        #[arg(long, default_value_t = 60.0)]
        gen_seconds: f64,
    },
}

fn write_json<T: Serialize>(path: &Path, v: &T) -> Result<()> {
    checkpoint::write_atomic(path, &serde_json::to_vec_pretty(v)?)
        .with_context(|| format!("writing {}", path.display()))
}

fn print_stream(r: &StreamReport) {
    println!(
        "| audio s | blocks | block audio ms | RTF | p50 block ms | p95 block ms | max ms | underruns | NFE/block |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    println!(
        "| {:.1} | {} | {:.0} | {:.3} | {:.1} | {:.1} | {:.1} | {} | {:.1} |",
        r.seconds,
        r.blocks,
        r.block_audio_ms,
        r.rtf,
        r.p50_block_ms,
        r.p95_block_ms,
        r.max_block_ms,
        r.underruns,
        r.nfe_per_block
    );
}

fn print_eval(r: &EvalReport) {
    println!("| measure | value |");
    println!("|---|---|");
    let ctx = r.stream_context_tokens;
    let slots = |v: &[f64]| {
        v.iter()
            .map(|b| format!("{b:.2}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let rows: [(String, String); 15] = [
        (
            format!("bits/token, AR NLL (context ≥ {ctx} / whole windows)"),
            format!("{:.3} / {:.3}", r.bits_per_token, r.bits_per_token_window),
        ),
        (
            "bits/token, block NELBO".into(),
            format!(
                "{:.3} / {:.3}",
                r.block_nelbo_bits_per_token, r.block_nelbo_bits_per_token_window
            ),
        ),
        (
            "bigram bits/token".into(),
            format!(
                "{:.3} / {:.3}",
                r.bigram_bits_per_token, r.bigram_bits_per_token_window
            ),
        ),
        (
            "unigram bits/token".into(),
            format!(
                "{:.3} / {:.3}",
                r.unigram_bits_per_token, r.unigram_bits_per_token_window
            ),
        ),
        (
            "gain vs bigram".into(),
            format!(
                "{:.1}% / {:.1}%",
                100.0 * r.gain_vs_bigram,
                100.0 * r.gain_vs_bigram_window
            ),
        ),
        (
            "per slot [gain q0 q1 …], AR / bigram".into(),
            format!(
                "{} / {}",
                slots(&r.slot_bits_per_token),
                slots(&r.slot_bigram_bits_per_token)
            ),
        ),
        (
            "codec SI-SDR dB".into(),
            format!("{:.2}", r.codec_si_sdr_db),
        ),
        (
            "μ-law 8-bit SI-SDR dB".into(),
            format!("{:.2}", r.mulaw_si_sdr_db),
        ),
        (
            "log-STFT distance codec / μ-law".into(),
            format!(
                "{:.3} / {:.3}",
                r.codec_stft_distance, r.mulaw_stft_distance
            ),
        ),
        (
            "kbit/s codec / μ-law".into(),
            format!("{:.1} / {:.0}", r.codec_kbps, r.mulaw_kbps),
        ),
        (
            "key consistency generated / real".into(),
            format!("{:.2} / {:.2}", r.key_consistency, r.key_consistency_real),
        ),
        (
            "drift generated / real".into(),
            format!("{:.2} / {:.2}", r.drift, r.drift_real),
        ),
        (
            "seam flux ratio generated / real".into(),
            format!("{:.3} / {:.3}", r.seam_flux_ratio, r.seam_flux_ratio_real),
        ),
        ("test windows".into(), r.test_windows.to_string()),
        ("generated s".into(), format!("{:.0}", r.generated_s)),
    ];
    for (k, v) in rows {
        println!("| {k} | {v} |");
    }
}

/// Streams into `out` (atomically) and writes the report as JSON when asked.
fn write_stream(
    m: &MusicModel,
    prompt: Option<&Path>,
    out: &Path,
    json: Option<&Path>,
    opts: &StreamOptions,
) -> Result<StreamReport> {
    let prompt = prompt.map(read_wav).transpose()?;
    let mut wav = WavStreamWriter::create(out, SAMPLE_RATE)?;
    let report = run_stream(m, prompt.as_deref(), opts, |a| wav.write(a))?;
    wav.finish()?;
    if let Some(j) = json {
        write_json(j, &report)?;
    }
    Ok(report)
}

fn load_model(dir: &Path) -> Result<MusicModel> {
    MusicModel::load(dir).with_context(|| format!("loading {}", dir.display()))
}

fn generate(gen: &GenArgs, opts: StreamOptions) -> Result<StreamReport> {
    let m = load_model(&gen.checkpoint)?;
    write_stream(
        &m,
        gen.prompt.as_deref(),
        &gen.out,
        gen.json.as_deref(),
        &opts,
    )
}

/// Renders what is missing, loads the corpus and prints its size.
fn load(corpus: &CorpusArgs) -> Result<Corpus> {
    let c = load_corpus(
        &corpus.manifest,
        Some(&corpus.soundfont),
        corpus.limit,
        true,
    )?;
    let [tr, va, te] = c.seconds();
    println!(
        "corpus: train {} pieces ({tr:.0} s), val {} ({va:.0} s), test {} ({te:.0} s)",
        c.train.len(),
        c.val.len(),
        c.test.len()
    );
    Ok(c)
}

/// Trains into `dir` and writes `train_report.json` there.
fn train_into(c: &Corpus, t: &TrainArgs, dir: &Path) -> Result<()> {
    let r = train(c, &t.config(), dir, true)?;
    write_json(&dir.join("train_report.json"), &r)?;
    println!(
        "trained {} steps on {} windows at {:.0} tokens/s; codec fit {:.0} s; checkpoint {}",
        r.train.steps,
        r.train_windows,
        r.train.tokens_per_s,
        r.codec_fit_s,
        dir.display()
    );
    Ok(())
}

fn stream_opts(gen: &GenArgs, realtime: bool) -> StreamOptions {
    StreamOptions {
        seconds: gen.seconds,
        realtime,
        steps_per_block: gen.steps_per_block,
        temperature: gen.temperature,
        top_p: gen.top_p,
        seed: gen.seed,
        ..StreamOptions::default()
    }
}

pub fn run(cmd: MusicCommand) -> Result<()> {
    match cmd {
        MusicCommand::Render { corpus } => {
            load(&corpus)?;
        }
        MusicCommand::Train {
            corpus,
            train: t,
            out,
        } => train_into(&load(&corpus)?, &t, &out)?,
        MusicCommand::Generate { gen } => {
            let r = generate(&gen, stream_opts(&gen, false))?;
            print_stream(&r);
        }
        MusicCommand::Stream {
            gen,
            prebuffer_blocks,
            max_buffer,
            refill_below,
        } => {
            let opts = StreamOptions {
                prebuffer_blocks,
                max_buffer_s: max_buffer,
                refill_below_s: refill_below,
                ..stream_opts(&gen, true)
            };
            let r = generate(&gen, opts)?;
            print_stream(&r);
        }
        MusicCommand::Codec {
            checkpoint,
            input,
            out,
        } => {
            let codec = blockdiff_music::codec::Codec::load(
                &checkpoint.join(blockdiff_music::model::CODEC_FILE),
            )?;
            let x = read_wav(&input)?;
            let codes = codec.encode(&x);
            let y = codec.decode(codes.view(), x.len())?;
            write_wav(&out, &y, SAMPLE_RATE)?;
            let mu = mu_law_round_trip(&x, 8);
            println!(
                "{} frames × {} codes; SI-SDR codec {:.2} dB (μ-law 8-bit {:.2} dB); log-STFT distance {:.3} ({:.3})",
                codes.nrows(),
                codes.ncols(),
                si_sdr(&x, &y),
                si_sdr(&x, &mu),
                multires_stft_distance(&x, &y),
                multires_stft_distance(&x, &mu)
            );
        }
        MusicCommand::Eval {
            checkpoint,
            corpus,
            gen_seconds,
            seed,
            json,
        } => {
            let m = load_model(&checkpoint)?;
            let c = load(&corpus)?;
            let r = evaluate(&m, &c, gen_seconds, seed)?;
            print_eval(&r);
            if let Some(j) = json {
                write_json(&j, &r)?;
            }
        }
        MusicCommand::Demo {
            corpus,
            train: t,
            out,
            stream_seconds,
            gen_seconds,
        } => {
            let c = load(&corpus)?;
            let model_dir = out.join("model");
            train_into(&c, &t, &model_dir)?;
            let m = load_model(&model_dir)?;
            let e = evaluate(&m, &c, gen_seconds, t.seed)?;
            print_eval(&e);
            write_json(&out.join("eval.json"), &e)?;
            let opts = StreamOptions {
                seconds: stream_seconds,
                seed: t.seed,
                ..StreamOptions::default()
            };
            let s = write_stream(
                &m,
                None,
                &out.join("stream.wav"),
                Some(&out.join("stream.json")),
                &opts,
            )?;
            print_stream(&s);
        }
    }
    Ok(())
}
