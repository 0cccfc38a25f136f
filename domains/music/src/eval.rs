//! `music eval`: held-out bits per token against n-gram baselines, codec quality against
//! μ-law, and key consistency, drift and block seams of generated audio against the same
//! measures on real held-out audio.

use serde::{Deserialize, Serialize};

use crate::audio::SAMPLE_RATE;
use crate::codec::mu_law_round_trip;
use crate::data::Corpus;
use crate::error::MusicError;
use crate::metrics::{
    drift, key_consistency, multires_stft_distance, seam_flux_ratio, si_sdr, NgramBaseline,
};
use crate::model::{tokenize_tracks, windows, MusicModel};
use crate::stream::{run_stream, StreamOptions};

/// Key-consistency segment length (seconds).
pub const KEY_SEGMENT_S: f64 = 3.0;

/// Everything `music eval` reports (field names are the JSON keys where it names one).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EvalReport {
    /// Held-out bits per token: exact NLL of the model's AR mode (block size 1) on the
    /// tokens scored at streaming context (each window's last block, seeing
    /// `stream_context_tokens` tokens before it, as every block of `music stream` does).
    pub bits_per_token: f64,
    /// Held-out NELBO bound of block decoding at the generation block size, same tokens.
    pub block_nelbo_bits_per_token: f64,
    /// Add-α bigram on the same tokens.
    pub bigram_bits_per_token: f64,
    /// Add-α unigram on the same tokens.
    pub unigram_bits_per_token: f64,
    /// `1 − bits / bigram`.
    pub gain_vs_bigram: f64,
    /// `bits_per_token` per frame slot, in token-layout order `[gain, q0, q1, …]`: where
    /// the model gains on the bigram and where neither predicts much.
    #[serde(default)]
    pub slot_bits_per_token: Vec<f64>,
    /// `bigram_bits_per_token` per frame slot.
    #[serde(default)]
    pub slot_bigram_bits_per_token: Vec<f64>,
    /// Tokens of context before every token scored by the numbers above.
    pub stream_context_tokens: usize,
    /// AR-mode bits per token over whole windows (a window's first tokens see no context).
    pub bits_per_token_window: f64,
    /// Block NELBO bound over whole windows.
    pub block_nelbo_bits_per_token_window: f64,
    /// Bigram over whole windows.
    pub bigram_bits_per_token_window: f64,
    /// Unigram over whole windows.
    pub unigram_bits_per_token_window: f64,
    /// `1 − bits / bigram` over whole windows.
    pub gain_vs_bigram_window: f64,
    /// Test windows.
    pub test_windows: usize,
    /// Tokens scored at streaming context.
    pub test_tokens: usize,
    /// Codec SI-SDR on the test audio (dB).
    pub codec_si_sdr_db: f64,
    /// 8-bit μ-law SI-SDR on the same audio (reference).
    pub mulaw_si_sdr_db: f64,
    /// Multi-resolution log-STFT distance, codec.
    pub codec_stft_distance: f64,
    /// Same for μ-law.
    pub mulaw_stft_distance: f64,
    /// Codec bit rate (kbit/s) at log2 of each slot's alphabet.
    pub codec_kbps: f64,
    /// μ-law bit rate (kbit/s).
    pub mulaw_kbps: f64,
    /// Key consistency of generated audio ([`KEY_SEGMENT_S`]-second segments vs the clip's key).
    pub key_consistency: f64,
    /// Same measure on the real test audio (mean over tracks).
    pub key_consistency_real: f64,
    /// Drift of the generated clip (first vs last part).
    pub drift: f64,
    /// Same measure on real test tracks (mean).
    pub drift_real: f64,
    /// Spectral-flux ratio at block seams vs inside blocks, generated audio.
    pub seam_flux_ratio: f64,
    /// The same arithmetic on codec-decoded real audio (no seams: the reference level).
    pub seam_flux_ratio_real: f64,
    /// Seconds generated for the audio measures.
    pub generated_s: f64,
}

/// Runs every measurement. `gen_seconds` of audio are generated (no clock) for the audio
/// measures.
pub fn evaluate(
    m: &MusicModel,
    corpus: &Corpus,
    gen_seconds: f64,
    seed: u64,
) -> Result<EvalReport, MusicError> {
    let test_tracks = if corpus.test.is_empty() {
        &corpus.val
    } else {
        &corpus.test
    };
    if test_tracks.is_empty() {
        return Err(MusicError::Config(
            "no test or validation pieces to evaluate on".into(),
        ));
    }
    let s = &m.settings;
    let train_streams = tokenize_tracks(&m.codec, &m.tokenizer, &corpus.train)?;
    let val_streams = tokenize_tracks(&m.codec, &m.tokenizer, &corpus.val)?;
    let test_streams = tokenize_tracks(&m.codec, &m.tokenizer, test_tracks)?;
    let test_windows = windows(&test_streams, s.seq_len, s.seq_len);
    if test_windows.is_empty() {
        return Err(MusicError::Config(format!(
            "test pieces are shorter than one {}-token window",
            s.seq_len
        )));
    }
    let val_windows = windows(&val_streams, s.seq_len, s.seq_len);
    let bits = m.bits_per_token(&test_windows);
    let tw: Vec<&[u32]> = test_windows.iter().map(|e| e.tokens.as_slice()).collect();
    let vw: Vec<&[u32]> = val_windows.iter().map(|e| e.tokens.as_slice()).collect();
    let vocab = m.tokenizer.vocab_size();
    let [ngram, ngram_window]: [_; 2] = NgramBaseline::evaluate(
        &train_streams,
        &vw,
        &tw,
        vocab,
        &[bits.stream_context, 0],
        s.frame_len(),
    )
    .try_into()
    .expect("one result per start");

    // Codec quality on the test audio (whole tracks).
    let (mut sdr_c, mut sdr_m, mut d_c, mut d_m) = (0.0, 0.0, 0.0, 0.0);
    let (mut key_real, mut drift_real, mut seam_real) = (0.0, 0.0, 0.0);
    let (mut n_key, mut n_drift) = (0usize, 0usize);
    for t in test_tracks {
        let codes = m.codec.encode(&t.samples);
        let y = m.codec.decode(codes.view(), t.samples.len())?;
        let mu = mu_law_round_trip(&t.samples, 8);
        sdr_c += si_sdr(&t.samples, &y);
        sdr_m += si_sdr(&t.samples, &mu);
        d_c += multires_stft_distance(&t.samples, &y);
        d_m += multires_stft_distance(&t.samples, &mu);
        seam_real += seam_flux_ratio(&y, s.codec.hop, s.block_frames);
        let k = key_consistency(&t.samples, KEY_SEGMENT_S);
        if k.is_finite() {
            key_real += k;
            n_key += 1;
        }
        let d = drift(&t.samples, 60);
        if d.is_finite() {
            drift_real += d;
            n_drift += 1;
        }
    }
    let n = test_tracks.len() as f64;
    let c = &s.codec;
    let bits_per_frame =
        (c.gain_levels as f64).log2() + c.levels as f64 * (c.codebook_size as f64).log2();

    let mut generated = Vec::new();
    let opts = StreamOptions {
        seconds: gen_seconds,
        realtime: false,
        seed,
        ..StreamOptions::default()
    };
    run_stream(m, None, &opts, |a| {
        generated.extend_from_slice(a);
        Ok(())
    })?;
    Ok(EvalReport {
        bits_per_token: bits.ar_stream,
        block_nelbo_bits_per_token: bits.block_stream,
        bigram_bits_per_token: ngram.bigram,
        unigram_bits_per_token: ngram.unigram,
        gain_vs_bigram: 1.0 - bits.ar_stream / ngram.bigram,
        slot_bits_per_token: bits.ar_stream_by_slot,
        slot_bigram_bits_per_token: ngram.bigram_by_slot,
        stream_context_tokens: bits.stream_context,
        bits_per_token_window: bits.ar_window,
        block_nelbo_bits_per_token_window: bits.block_window,
        bigram_bits_per_token_window: ngram_window.bigram,
        unigram_bits_per_token_window: ngram_window.unigram,
        gain_vs_bigram_window: 1.0 - bits.ar_window / ngram_window.bigram,
        test_windows: test_windows.len(),
        test_tokens: test_windows.len() * (s.seq_len - bits.stream_context),
        codec_si_sdr_db: sdr_c / n,
        mulaw_si_sdr_db: sdr_m / n,
        codec_stft_distance: d_c / n,
        mulaw_stft_distance: d_m / n,
        codec_kbps: bits_per_frame * c.frame_rate() / 1000.0,
        mulaw_kbps: 8.0 * SAMPLE_RATE as f64 / 1000.0,
        key_consistency: key_consistency(&generated, KEY_SEGMENT_S),
        key_consistency_real: key_real / n_key.max(1) as f64,
        drift: drift(&generated, 60),
        drift_real: drift_real / n_drift.max(1) as f64,
        seam_flux_ratio: seam_flux_ratio(&generated, s.codec.hop, s.block_frames),
        seam_flux_ratio_real: seam_real / n,
        generated_s: generated.len() as f64 / SAMPLE_RATE as f64,
    })
}
