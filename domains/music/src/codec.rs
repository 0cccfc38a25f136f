//! The audio codec: WAV ⇄ frames of discrete codes.
//!
//! Per 20 ms frame (hop 480 at 24 kHz, 50 frames/s):
//! 1. MDCT coefficients `x ∈ R^480` ([`crate::mdct`]);
//! 2. **gain**: the frame's RMS in dB, uniformly quantised to `gain_levels` steps between
//!    `gain_min_db` and `gain_max_db` (code 0 = silence);
//! 3. **shape**: `x / rms` (unit RMS) quantised by a residual VQ of `levels` codebooks of
//!    `codebook_size` codes, trained locally by k-means ([`crate::rvq`]).
//!
//! Decoding multiplies the RVQ reconstruction by the gain and overlap-adds the inverse MDCT.
//! A frame is `1 + levels` codes: `[gain, q0, q1, …]`. Gain-shape coding lets the codebooks
//! spend their codes on spectral shape rather than on loudness, which a chorale spans over
//! 40 dB.

use std::collections::HashMap;
use std::path::Path;

use ndarray::{Array2, ArrayView2, Axis};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use safetensors::tensor::{Dtype, TensorView};
use serde::{Deserialize, Serialize};

use crate::audio::SAMPLE_RATE;
use crate::error::{io, MusicError};
use crate::mdct::{Mdct, MdctDecoder};
use crate::rvq::ResidualVq;

/// Codec hyper-parameters (saved in the codec file's metadata).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CodecConfig {
    /// Samples per frame (MDCT hop); 480 = 20 ms at 24 kHz.
    pub hop: usize,
    /// MDCT coefficients coded per frame, from the lowest (bin `k` is centred on
    /// `(k + ½)·12 kHz/hop`); higher bins are dropped. Default: all. Band-limiting to 0–4 kHz
    /// (160) was measured to gain only 0.15 dB SI-SDR and to quadruple the log-STFT distance.
    pub coded_bins: usize,
    /// Residual VQ levels.
    pub levels: usize,
    /// Codes per RVQ codebook.
    pub codebook_size: usize,
    /// Gain quantiser steps (code 0 = silence).
    pub gain_levels: usize,
    /// Lowest coded frame level (dB re full scale RMS); quieter frames are silence.
    pub gain_min_db: f32,
    /// Highest coded frame level.
    pub gain_max_db: f32,
    /// Lloyd iterations per level.
    pub kmeans_iters: usize,
    /// Frames sampled from the training audio to fit the codebooks.
    pub train_frames: usize,
    /// Seed of the frame sample and the k-means initialisation.
    pub seed: u64,
}

impl Default for CodecConfig {
    fn default() -> Self {
        Self {
            hop: 480,
            coded_bins: 480,
            levels: 4,
            codebook_size: 1024,
            gain_levels: 64,
            gain_min_db: -75.0,
            gain_max_db: -5.0,
            kmeans_iters: 12,
            train_frames: 40_000,
            seed: 0,
        }
    }
}

impl CodecConfig {
    fn validate(&self) -> Result<(), MusicError> {
        let bad = |m: &str| Err(MusicError::Config(format!("codec: {m}")));
        if self.hop == 0 {
            return bad("hop must be > 0");
        }
        if self.coded_bins == 0 || self.coded_bins > self.hop {
            return bad("coded_bins must be in 1..=hop");
        }
        if !(1..=16).contains(&self.levels) {
            return bad("levels must be in 1..=16");
        }
        if !(2..=65_536).contains(&self.codebook_size) {
            return bad("codebook_size must be in 2..=65536");
        }
        if self.gain_levels < 3 {
            return bad("gain_levels must be >= 3");
        }
        if !(self.gain_min_db < self.gain_max_db) {
            return bad("gain_min_db must be below gain_max_db");
        }
        Ok(())
    }

    /// Codes per frame (gain + levels).
    pub fn codes_per_frame(&self) -> usize {
        1 + self.levels
    }

    /// Frames per second.
    pub fn frame_rate(&self) -> f64 {
        SAMPLE_RATE as f64 / self.hop as f64
    }
}

/// Frames of codes: `[frames, 1 + levels]`, column 0 the gain.
pub type Codes = Array2<u32>;

/// A trained codec.
#[derive(Clone, Debug)]
pub struct Codec {
    cfg: CodecConfig,
    mdct: Mdct,
    rvq: ResidualVq,
}

const FORMAT: &str = "blockdiff-music-codec/1";

impl Codec {
    /// Fits the codebooks on a sample of about `train_frames` non-silent frames drawn evenly
    /// from `signals` (24 kHz mono). Each signal keeps a share proportional to its length, so
    /// memory stays at the sample's size whatever the corpus size.
    pub fn train(cfg: CodecConfig, signals: &[&[f32]]) -> Result<Self, MusicError> {
        cfg.validate()?;
        let mdct = Mdct::new(cfg.hop);
        let total: usize = signals.iter().map(|x| x.len()).sum();
        let want = cfg.train_frames.max(cfg.codebook_size) as f64;
        let mut rng = StdRng::seed_from_u64(cfg.seed);
        let mut shapes: Vec<Array2<f32>> = Vec::new();
        for x in signals {
            let c = mdct.analyze(x);
            let (gains, shape) = split_gain(&c, cfg.coded_bins);
            // Silent frames carry no shape.
            let mut keep: Vec<usize> = gains
                .iter()
                .enumerate()
                .filter(|(_, &g)| db(g) >= cfg.gain_min_db)
                .map(|(i, _)| i)
                .collect();
            let share = (want * x.len() as f64 / total.max(1) as f64).ceil() as usize;
            keep.shuffle(&mut rng);
            keep.truncate(share.max(1));
            shapes.push(shape.select(Axis(0), &keep));
        }
        let views: Vec<_> = shapes.iter().map(|s| s.view()).collect();
        let sample = ndarray::concatenate(Axis(0), &views)
            .map_err(|e| MusicError::Codec(format!("collecting frames: {e}")))?;
        if sample.nrows() < cfg.codebook_size {
            return Err(MusicError::Codec(format!(
                "{} non-silent frames cannot fit {} codes; give more audio",
                sample.nrows(),
                cfg.codebook_size
            )));
        }
        let rvq = ResidualVq::train(
            sample.view(),
            cfg.levels,
            cfg.codebook_size,
            cfg.kmeans_iters,
            cfg.seed,
        );
        Ok(Self { cfg, mdct, rvq })
    }

    /// The configuration.
    pub fn config(&self) -> &CodecConfig {
        &self.cfg
    }

    /// The MDCT in use.
    pub fn mdct(&self) -> &Mdct {
        &self.mdct
    }

    fn gain_code(&self, rms: f32) -> u32 {
        let c = &self.cfg;
        let d = db(rms);
        if d < c.gain_min_db {
            return 0;
        }
        let steps = (c.gain_levels - 2) as f32;
        let q = ((d - c.gain_min_db) / (c.gain_max_db - c.gain_min_db) * steps).round();
        1 + q.clamp(0.0, steps) as u32
    }

    fn gain_value(&self, code: u32) -> f32 {
        let c = &self.cfg;
        if code == 0 {
            return 0.0;
        }
        let steps = (c.gain_levels - 2) as f32;
        let d = c.gain_min_db + (code - 1) as f32 / steps * (c.gain_max_db - c.gain_min_db);
        10f32.powf(d / 20.0)
    }

    /// Encodes MDCT coefficients `[frames, hop]`.
    pub fn encode_coeffs(&self, coeffs: &Array2<f32>) -> Codes {
        let (gains, shape) = split_gain(coeffs, self.cfg.coded_bins);
        let q = self.rvq.encode(shape.view());
        let mut codes = Array2::<u32>::zeros((coeffs.nrows(), self.cfg.codes_per_frame()));
        for (i, mut row) in codes.rows_mut().into_iter().enumerate() {
            row[0] = self.gain_code(gains[i]);
            for l in 0..self.cfg.levels {
                row[1 + l] = q[[i, l]];
            }
        }
        codes
    }

    /// Encodes a 24 kHz mono signal.
    pub fn encode(&self, x: &[f32]) -> Codes {
        self.encode_coeffs(&self.mdct.analyze(x))
    }

    /// MDCT coefficients of code frames; errors name the first out-of-range code.
    pub fn decode_coeffs(&self, codes: ArrayView2<u32>) -> Result<Array2<f32>, MusicError> {
        let c = &self.cfg;
        if codes.ncols() != c.codes_per_frame() {
            return Err(MusicError::Codec(format!(
                "frames have {} codes, this codec uses {}",
                codes.ncols(),
                c.codes_per_frame()
            )));
        }
        for ((i, j), &v) in codes.indexed_iter() {
            let limit = if j == 0 {
                c.gain_levels
            } else {
                c.codebook_size
            };
            if v as usize >= limit {
                return Err(MusicError::Codec(format!(
                    "frame {i} code {j} is {v}, outside 0..{limit}"
                )));
            }
        }
        let shape = self.rvq.decode(codes.slice(ndarray::s![.., 1..]));
        let mut out = Array2::<f32>::zeros((codes.nrows(), c.hop));
        for ((mut row, s), code) in out
            .rows_mut()
            .into_iter()
            .zip(shape.rows())
            .zip(codes.column(0))
        {
            let g = self.gain_value(*code);
            row.slice_mut(ndarray::s![..c.coded_bins]).assign(&(&s * g));
        }
        Ok(out)
    }

    /// Decodes frames back to `len` samples (the encoder's alignment).
    pub fn decode(&self, codes: ArrayView2<u32>, len: usize) -> Result<Vec<f32>, MusicError> {
        let coeffs = self.decode_coeffs(codes)?;
        Ok(self.mdct.synthesize(coeffs.view(), len))
    }

    /// A streaming decoder for generated frames (keeps the first hop).
    pub fn stream_decoder(&self) -> MdctDecoder {
        MdctDecoder::new(self.mdct.clone(), false)
    }

    /// Saves codebooks and config as safetensors, atomically.
    pub fn save(&self, path: &Path) -> Result<(), MusicError> {
        let c = &self.cfg;
        let mut flat: Vec<u8> = Vec::with_capacity(c.levels * c.codebook_size * c.coded_bins * 4);
        for cb in &self.rvq.codebooks {
            for v in cb.iter() {
                flat.extend_from_slice(&v.to_le_bytes());
            }
        }
        let view = TensorView::new(
            Dtype::F32,
            vec![c.levels, c.codebook_size, c.coded_bins],
            &flat,
        )
        .map_err(|e| MusicError::Codec(e.to_string()))?;
        let mut meta = HashMap::new();
        meta.insert("format".to_string(), FORMAT.to_string());
        meta.insert(
            "config".to_string(),
            serde_json::to_string(c).expect("config serialises"),
        );
        let bytes = safetensors::serialize([("codebooks", view)], Some(meta))
            .map_err(|e| MusicError::Codec(e.to_string()))?;
        blockdiff_core::checkpoint::write_atomic(path, &bytes)?;
        Ok(())
    }

    /// Loads a codec file; errors name the file and the field.
    pub fn load(path: &Path) -> Result<Self, MusicError> {
        let bytes = std::fs::read(path).map_err(io(path))?;
        let bad = |message: String| MusicError::Format {
            path: path.to_path_buf(),
            message,
        };
        let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes)
            .map_err(|e| bad(format!("not a safetensors file: {e}")))?;
        let meta = meta
            .metadata()
            .clone()
            .ok_or_else(|| bad("metadata missing".into()))?;
        match meta.get("format") {
            Some(f) if f == FORMAT => {}
            other => {
                return Err(bad(format!(
                    "metadata format is {other:?}, expected {FORMAT}"
                )))
            }
        }
        let cfg: CodecConfig = serde_json::from_str(
            meta.get("config")
                .ok_or_else(|| bad("metadata config missing".into()))?,
        )
        .map_err(|e| bad(format!("metadata config: {e}")))?;
        cfg.validate().map_err(|e| bad(e.to_string()))?;
        let st = safetensors::SafeTensors::deserialize(&bytes)
            .map_err(|e| bad(format!("not a safetensors file: {e}")))?;
        let t = st
            .tensor("codebooks")
            .map_err(|e| bad(format!("tensor codebooks: {e}")))?;
        let want = vec![cfg.levels, cfg.codebook_size, cfg.coded_bins];
        if t.dtype() != Dtype::F32 || t.shape() != want.as_slice() {
            return Err(bad(format!(
                "tensor codebooks is {:?} {:?}, expected F32 {want:?}",
                t.dtype(),
                t.shape()
            )));
        }
        let vals: Vec<f32> = t
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        if vals.iter().any(|v| !v.is_finite()) {
            return Err(bad("tensor codebooks holds NaN or infinity".into()));
        }
        let per = cfg.codebook_size * cfg.coded_bins;
        let codebooks = (0..cfg.levels)
            .map(|l| {
                Array2::from_shape_vec(
                    (cfg.codebook_size, cfg.coded_bins),
                    vals[l * per..(l + 1) * per].to_vec(),
                )
                .expect("shape checked")
            })
            .collect();
        Ok(Self {
            mdct: Mdct::new(cfg.hop),
            rvq: ResidualVq { codebooks },
            cfg,
        })
    }
}

fn db(rms: f32) -> f32 {
    20.0 * rms.max(1e-12).log10()
}

/// Per-frame RMS of the coded bins and their unit-RMS shapes (silent frames stay zero).
fn split_gain(coeffs: &Array2<f32>, bins: usize) -> (Vec<f32>, Array2<f32>) {
    let bins = bins.min(coeffs.ncols());
    let n = bins.max(1) as f32;
    let mut shape = coeffs.slice(ndarray::s![.., ..bins]).to_owned();
    let mut gains = Vec::with_capacity(coeffs.nrows());
    for mut row in shape.rows_mut() {
        let rms = (row.iter().map(|v| v * v).sum::<f32>() / n).sqrt();
        gains.push(rms);
        if rms > 1e-9 {
            row /= rms;
        }
    }
    (gains, shape)
}

/// μ-law companding to `bits` bits and back (the reference codec the issue names).
pub fn mu_law_round_trip(x: &[f32], bits: u32) -> Vec<f32> {
    let levels = (1u32 << bits) as f32;
    let mu = levels - 1.0;
    x.iter()
        .map(|&s| {
            let s = s.clamp(-1.0, 1.0);
            let y = s.signum() * (1.0 + mu * s.abs()).ln() / (1.0 + mu).ln();
            let q = ((y + 1.0) / 2.0 * mu).round() / mu * 2.0 - 1.0;
            q.signum() * ((1.0 + mu).powf(q.abs()) - 1.0) / mu
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gain_quantiser_is_monotone_and_close() {
        let codec = Codec {
            cfg: CodecConfig::default(),
            mdct: Mdct::new(8),
            rvq: ResidualVq { codebooks: vec![] },
        };
        let mut last = 0;
        for i in 0..200 {
            let d = -80.0 + i as f32 * 0.4;
            let code = codec.gain_code(10f32.powf(d / 20.0));
            assert!(code >= last);
            last = code;
            if (-74.0..-6.0).contains(&d) {
                let back = db(codec.gain_value(code));
                assert!((back - d).abs() < 0.6, "{d} dB → {back} dB");
            }
        }
        assert_eq!(codec.gain_code(0.0), 0);
        assert_eq!(codec.gain_value(0), 0.0);
    }

    #[test]
    fn mu_law_is_accurate() {
        let x: Vec<f32> = (0..1000).map(|i| ((i as f32) * 0.05).sin() * 0.8).collect();
        let y = mu_law_round_trip(&x, 8);
        let err = x
            .iter()
            .zip(&y)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        assert!(err < 0.03, "{err}");
    }
}
