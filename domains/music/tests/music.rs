//! Music domain behaviour: codec round trip, stream validity and length, bad files.

use std::f64::consts::PI;

use blockdiff_core::model::BlockDiffusionConfig;
use blockdiff_music::audio::{read_wav, write_wav, SAMPLE_RATE};
use blockdiff_music::codec::{Codec, CodecConfig};
use blockdiff_music::data::{read_manifest, SoundFontBank};
use blockdiff_music::metrics::si_sdr;
use blockdiff_music::model::{MusicModel, MusicSettings};
use blockdiff_music::stream::{run_stream, StreamOptions};
use blockdiff_music::tokenizer::AudioTokenizer;
use blockdiff_music::MusicError;

/// A little "piece": a sequence of chords from a fixed set (harmonic tones with a decay),
/// each 0.25 s long.
fn piece(chords: &[usize], seed: u64) -> Vec<f32> {
    const SET: [[f64; 3]; 4] = [
        [48.0, 52.0, 55.0],
        [53.0, 57.0, 60.0],
        [55.0, 59.0, 62.0],
        [57.0, 60.0, 64.0],
    ];
    let n = SAMPLE_RATE as usize / 4;
    let mut out = Vec::with_capacity(chords.len() * n);
    for (k, &c) in chords.iter().enumerate() {
        let phase = (seed as f64 + k as f64) * 0.7;
        for i in 0..n {
            let t = i as f64 / SAMPLE_RATE as f64;
            let env = (-3.0 * t).exp();
            let mut v = 0.0;
            for m in SET[c] {
                let f = 440.0 * 2f64.powf((m - 69.0) / 12.0);
                v += (2.0 * PI * f * t + phase).sin() + 0.3 * (4.0 * PI * f * t).sin();
            }
            out.push((0.15 * env * v) as f32);
        }
    }
    out
}

fn small_codec_config() -> CodecConfig {
    CodecConfig {
        levels: 4,
        codebook_size: 64,
        kmeans_iters: 10,
        train_frames: 20_000,
        ..CodecConfig::default()
    }
}

/// The stated distortion: on held-out audio made of the same material as the training audio,
/// the codec at 4 × 64 codes keeps SI-SDR above 6 dB and every level of the RVQ helps.
#[test]
fn codec_round_trip_within_stated_distortion_and_file_round_trip() {
    let train: Vec<Vec<f32>> = (0..6)
        .map(|s| piece(&[0, 1, 2, 3, 2, 1, 0, 3, 1, 2], s))
        .collect();
    let refs: Vec<&[f32]> = train.iter().map(|t| t.as_slice()).collect();
    let codec = Codec::train(small_codec_config(), &refs).unwrap();
    let held_out = piece(&[3, 1, 0, 2, 2, 3, 0, 1], 17);
    let codes = codec.encode(&held_out);
    assert_eq!(codes.ncols(), 5);
    assert_eq!(codes.nrows(), codec.mdct().frames_for(held_out.len()));
    let y = codec.decode(codes.view(), held_out.len()).unwrap();
    assert_eq!(y.len(), held_out.len());
    let sdr = si_sdr(&held_out, &y);
    assert!(sdr > 6.0, "codec SI-SDR {sdr:.2} dB");
    // Fewer levels → more distortion.
    let mut coarse = codes.clone();
    for mut row in coarse.rows_mut() {
        row[4] = 0;
        row[3] = 0;
    }
    let y2 = codec.decode(coarse.view(), held_out.len()).unwrap();
    assert!(si_sdr(&held_out, &y2) < sdr);

    // Through real files: WAV → tokens → WAV, and the codec file round trip.
    let dir = tempfile::tempdir().unwrap();
    let wav = dir.path().join("in.wav");
    write_wav(&wav, &held_out, SAMPLE_RATE).unwrap();
    let x = read_wav(&wav).unwrap();
    let path = dir.path().join("codec.safetensors");
    codec.save(&path).unwrap();
    let loaded = Codec::load(&path).unwrap();
    assert_eq!(loaded.encode(&x), codec.encode(&x));
    let tok = AudioTokenizer::new(loaded.config());
    let ids = tok.encode_codes(&loaded.encode(&x)).unwrap();
    let back = tok.decode_codes(&ids).unwrap();
    let out = dir.path().join("out.wav");
    write_wav(
        &out,
        &loaded.decode(back.view(), x.len()).unwrap(),
        SAMPLE_RATE,
    )
    .unwrap();
    let z = read_wav(&out).unwrap();
    assert!(si_sdr(&held_out, &z) > 6.0);

    // A damaged codec file is a typed error naming it.
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let e = Codec::load(&path).unwrap_err();
    assert!(matches!(e, MusicError::Format { .. }), "{e}");
    assert!(e.to_string().contains("codec.safetensors"));
    // Codes outside a codebook are refused, not decoded.
    let mut bad = codes.clone();
    bad[[0, 2]] = 64;
    assert!(codec.decode(bad.view(), 10).is_err());
}

fn tiny_model(codec: Codec) -> MusicModel {
    let tokenizer = AudioTokenizer::new(codec.config());
    let settings = MusicSettings {
        codec: codec.config().clone(),
        seq_len: 40,
        block_frames: 2,
    };
    let model_cfg = BlockDiffusionConfig::new(tokenizer.vocab_size())
        .with_d_model(32)
        .with_n_layers(2)
        .with_n_heads(2)
        .with_max_len(40);
    let model = model_cfg.init(&Default::default());
    MusicModel {
        model,
        model_cfg,
        codec,
        tokenizer,
        settings,
    }
}

/// A stream far longer than the model's window: exact length, every frame well formed
/// (decodable by the tokenizer, i.e. the frame-slot constraint held in 100% of positions),
/// a prompt is continued, the real-time clock reports its numbers.
#[test]
fn long_stream_is_valid_and_exactly_as_long_as_asked() {
    let train: Vec<Vec<f32>> = (0..3).map(|s| piece(&[0, 1, 2, 3], s)).collect();
    let refs: Vec<&[f32]> = train.iter().map(|t| t.as_slice()).collect();
    let codec = Codec::train(small_codec_config(), &refs).unwrap();
    let m = tiny_model(codec);
    let opts = StreamOptions {
        seconds: 3.0,
        realtime: false,
        steps_per_block: 3,
        ..StreamOptions::default()
    };
    let mut audio = Vec::new();
    let r = run_stream(&m, None, &opts, |a| {
        assert!(a.iter().all(|x| x.is_finite()));
        audio.extend_from_slice(a);
        Ok(())
    })
    .unwrap();
    // 2 frames of 20 ms per block.
    assert_eq!(r.blocks, 75);
    assert_eq!(audio.len(), 75 * 2 * 480);
    assert_eq!(r.nfe_per_block, 3.0);
    assert_eq!(r.underruns, 0);
    assert!(r.p95_block_ms >= r.p50_block_ms);

    // With a prompt, and with the real-time clock on for a short while.
    let prompt = piece(&[1, 2], 5);
    let opts = StreamOptions {
        seconds: 0.5,
        realtime: true,
        ..StreamOptions::default()
    };
    let mut n = 0;
    let r = run_stream(&m, Some(&prompt), &opts, |a| {
        n += a.len();
        Ok(())
    })
    .unwrap();
    assert!(r.prompt_s > 0.49);
    assert_eq!(n, 13 * 2 * 480);
    assert!(r.realtime && r.wall_s > 0.0);

    // The clock holds the generator back: never more than `max_buffer_s` ahead of the
    // playhead, so the last block cannot start before ~(length − buffer) of playback; it
    // sleeps down to `refill_below_s` and refills in bursts. (Underruns depend on the
    // machine's load, so they are not asserted here.)
    let opts = StreamOptions {
        seconds: 1.5,
        realtime: true,
        max_buffer_s: 0.5,
        refill_below_s: 0.1,
        ..StreamOptions::default()
    };
    let r = run_stream(&m, None, &opts, |_| Ok(())).unwrap();
    assert_eq!(r.blocks, 38);
    assert!(r.wall_s >= 37.0 * 0.04 - 0.5, "wall {} s", r.wall_s);
    let bad = StreamOptions {
        refill_below_s: 0.6,
        ..opts
    };
    let e = run_stream(&m, None, &bad, |_| Ok(())).unwrap_err();
    assert!(e.to_string().contains("refill_below_s"), "{e}");
}

#[test]
fn bad_manifest_and_soundfont_are_typed_errors() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("manifest.json");
    std::fs::write(&p, r#"{"format": "blockdiff-music-midi/1", "pieces": [{"file": "a.mid", "piece": "a", "split": "holdout"}]}"#).unwrap();
    let e = read_manifest(&p).unwrap_err().to_string();
    assert!(
        e.contains("manifest.json") && e.contains("pieces[0].split"),
        "{e}"
    );
    std::fs::write(&p, r#"{"format": "other", "pieces": []}"#).unwrap();
    assert!(read_manifest(&p)
        .unwrap_err()
        .to_string()
        .contains("format"));
    std::fs::write(&p, r#"{"format": "blockdiff-music-midi/1", "pieces": [{"file": "../x.mid", "piece": "a", "split": "train"}]}"#).unwrap();
    assert!(read_manifest(&p)
        .unwrap_err()
        .to_string()
        .contains("inside"));
    std::fs::write(&p, "{not json").unwrap();
    assert!(read_manifest(&p)
        .unwrap_err()
        .to_string()
        .contains("invalid JSON"));
    let sf = dir.path().join("bad.sf2");
    std::fs::write(&sf, b"RIFF....sfbk garbage").unwrap();
    let e = SoundFontBank::load(&sf)
        .err()
        .expect("garbage SoundFont must fail")
        .to_string();
    assert!(e.contains("bad.sf2"), "{e}");
}
