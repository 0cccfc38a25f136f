//! Real-time streaming: blocks decoded one after another against a playback clock.
//!
//! The generator runs [`blockdiff_core::stream::BlockStream`] (sliding KV window, so the
//! stream never ends) and turns each block of frames into audio at once (streaming inverse
//! MDCT). The playback clock is a simulated sound card: playback starts when
//! `prebuffer_blocks` blocks are ready, then consumes audio in real time. A block finished
//! after its play time is an **underrun** (the card would have played silence; the clock then
//! waits for it). The generator never runs more than `max_buffer_s` ahead of the playhead:
//! there it sleeps, as a live system would, until the buffer has drained to `refill_below_s`,
//! then refills it in one burst. (Sleeping after every block instead made each block ~10%
//! slower on this 2-core machine: every wake-up starts with caches other work has taken.)
//! Without the clock (`music generate`) blocks are made
//! as fast as possible.

use std::time::{Duration, Instant};

use blockdiff_core::bench::percentile;
use blockdiff_core::stream::BlockStream;
use serde::{Deserialize, Serialize};

use crate::audio::SAMPLE_RATE;
use crate::error::MusicError;
use crate::model::MusicModel;
use crate::tokenizer::FrameSlotConstraint;

/// Streaming options.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StreamOptions {
    /// Seconds of audio to make.
    pub seconds: f64,
    /// Pace against a real-time playback clock.
    pub realtime: bool,
    /// Denoising steps (model calls) per block.
    pub steps_per_block: usize,
    /// Sampling temperature.
    pub temperature: f32,
    /// Nucleus sampling mass.
    pub top_p: f32,
    /// Seed.
    pub seed: u64,
    /// Blocks ready before playback starts.
    pub prebuffer_blocks: usize,
    /// Most audio (seconds) made ahead of the playhead.
    pub max_buffer_s: f64,
    /// Buffered audio (seconds) at which a sleeping generator wakes to refill (≤ `max_buffer_s`).
    pub refill_below_s: f64,
}

impl Default for StreamOptions {
    fn default() -> Self {
        Self {
            seconds: 30.0,
            realtime: true,
            steps_per_block: 4,
            temperature: 1.0,
            top_p: 0.95,
            seed: 0,
            prebuffer_blocks: 2,
            max_buffer_s: 1.0,
            refill_below_s: 0.25,
        }
    }
}

/// What a stream measured.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StreamReport {
    /// Seconds of audio produced.
    pub seconds: f64,
    /// Blocks produced.
    pub blocks: usize,
    /// Audio per block (ms).
    pub block_audio_ms: f64,
    /// Compute time / audio time (≤ 1 keeps up; sleeping excluded).
    pub rtf: f64,
    /// Median time to make one block (generate + decode), ms.
    pub p50_block_ms: f64,
    /// 95th percentile of the same.
    pub p95_block_ms: f64,
    /// Slowest block.
    pub max_block_ms: f64,
    /// Blocks that were late for playback.
    pub underruns: usize,
    /// Total playback stall from underruns (s).
    pub underrun_s: f64,
    /// Model calls per block.
    pub nfe_per_block: f64,
    /// Context window in tokens (KV cache + block).
    pub window_tokens: usize,
    /// Whether the real-time clock was on.
    pub realtime: bool,
    /// Prompt seconds used (0 = from scratch).
    pub prompt_s: f64,
    /// Wall-clock seconds of the whole run (with sleeping).
    pub wall_s: f64,
}

/// Streams `opts.seconds` of audio, handing each block's samples to `sink` as soon as it is
/// made. `prompt` (24 kHz mono) is continued when given; its last window is used.
pub fn run_stream(
    m: &MusicModel,
    prompt: Option<&[f32]>,
    opts: &StreamOptions,
    mut sink: impl FnMut(&[f32]) -> Result<(), MusicError>,
) -> Result<StreamReport, MusicError> {
    if !(opts.seconds > 0.0 && opts.seconds.is_finite()) {
        return Err(MusicError::Config("seconds must be positive".into()));
    }
    if opts.steps_per_block == 0 {
        return Err(MusicError::Config("steps_per_block must be > 0".into()));
    }
    if !(opts.refill_below_s >= 0.0 && opts.refill_below_s <= opts.max_buffer_s) {
        return Err(MusicError::Config(format!(
            "refill_below_s {} must be in [0, max_buffer_s = {}]",
            opts.refill_below_s, opts.max_buffer_s
        )));
    }
    let device = Default::default();
    let s = &m.settings;
    let hop = s.codec.hop;
    let frame = s.frame_len();
    let window = s.seq_len;
    let mut decoder = m.codec.stream_decoder();
    let (prompt_ids, prompt_s) = match prompt {
        Some(x) if !x.is_empty() => {
            let codes = m.codec.encode(x);
            // Whole frames, the last window's worth (minus the block being decoded).
            let keep_frames = codes.nrows().min((window - s.block_tokens()) / frame);
            let codes = codes
                .slice(ndarray::s![codes.nrows() - keep_frames.., ..])
                .to_owned();
            // Prime the decoder's overlap with the prompt's last frame.
            if keep_frames > 0 {
                let last = m
                    .codec
                    .decode_coeffs(codes.slice(ndarray::s![keep_frames - 1.., ..]))?;
                decoder.push(last.view());
            }
            (
                m.tokenizer.encode_codes(&codes)?,
                x.len() as f64 / SAMPLE_RATE as f64,
            )
        }
        _ => (Vec::new(), 0.0),
    };
    let constraint = FrameSlotConstraint::new(&m.tokenizer);
    let cfg = m.sampler(
        opts.steps_per_block,
        opts.temperature,
        opts.top_p,
        opts.seed,
    );
    let mut stream = BlockStream::new(
        &m.model,
        &m.model_cfg,
        &constraint,
        cfg,
        window,
        &prompt_ids,
        &device,
    )?;
    let nfe_prefill = stream.stats().nfe;
    let block_s = (s.block_frames * hop) as f64 / SAMPLE_RATE as f64;
    let n_blocks = (opts.seconds / block_s).ceil() as usize;
    let started = Instant::now();
    let mut play_start: Option<Instant> = None;
    let mut stall = 0.0f64;
    let mut underruns = 0usize;
    let mut times = Vec::with_capacity(n_blocks);
    for k in 0..n_blocks {
        if opts.realtime {
            if let Some(p0) = play_start {
                let played = p0.elapsed().as_secs_f64() - stall;
                let ahead = k as f64 * block_s - played;
                if ahead > opts.max_buffer_s {
                    std::thread::sleep(Duration::from_secs_f64(ahead - opts.refill_below_s));
                }
            }
        }
        let t = Instant::now();
        let ids = stream.next_block()?;
        let codes = m.tokenizer.decode_codes(&ids)?;
        let coeffs = m.codec.decode_coeffs(codes.view())?;
        let audio = decoder.push(coeffs.view());
        times.push(t.elapsed().as_secs_f64());
        sink(&audio)?;
        if opts.realtime {
            let now = Instant::now();
            match play_start {
                None if k + 1 >= opts.prebuffer_blocks.max(1) => play_start = Some(now),
                None => {}
                Some(p0) => {
                    let due = k as f64 * block_s + stall;
                    let at = now.duration_since(p0).as_secs_f64();
                    if at > due {
                        underruns += 1;
                        stall += at - due;
                    }
                }
            }
        }
    }
    let audio_s = n_blocks as f64 * block_s;
    let compute: f64 = times.iter().sum();
    times.sort_by(f64::total_cmp);
    Ok(StreamReport {
        seconds: audio_s,
        blocks: n_blocks,
        block_audio_ms: block_s * 1e3,
        rtf: compute / audio_s,
        p50_block_ms: percentile(&times, 50.0) * 1e3,
        p95_block_ms: percentile(&times, 95.0) * 1e3,
        max_block_ms: times.last().copied().unwrap_or(0.0) * 1e3,
        underruns,
        underrun_s: stall,
        nfe_per_block: (stream.stats().nfe - nfe_prefill) as f64 / n_blocks.max(1) as f64,
        window_tokens: window,
        realtime: opts.realtime,
        prompt_s,
        wall_s: started.elapsed().as_secs_f64(),
    })
}
