//! WAV input and output, mono 24 kHz.
//!
//! Reading is forgiving where a user would expect it and strict where data would be lost:
//! - several channels are **averaged to mono**;
//! - another sample rate is **resampled** to 24 kHz (windowed-sinc, see [`resample`]);
//! - integer PCM of 8–32 bits and 32-bit float are accepted;
//! - an empty, truncated or non-WAV file is a [`MusicError::Wav`] naming the file.
//!
//! Writing is atomic: a temporary file in the same folder, renamed when complete.

use std::f64::consts::PI;
use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};

use crate::error::{io, MusicError};

/// The sample rate of everything inside blockdiff-music.
pub const SAMPLE_RATE: u32 = 24_000;

/// Reads a WAV file as mono samples in [-1, 1] at [`SAMPLE_RATE`] (see the module docs).
pub fn read_wav(path: &Path) -> Result<Vec<f32>, MusicError> {
    let wav_err = |message: String| MusicError::Wav {
        path: path.to_path_buf(),
        message,
    };
    let mut reader = hound::WavReader::open(path).map_err(|e| match e {
        hound::Error::IoError(source) if source.kind() != std::io::ErrorKind::UnexpectedEof => {
            MusicError::Io {
                path: path.to_path_buf(),
                source,
            }
        }
        other => wav_err(format!("not a readable WAV file: {other}")),
    })?;
    let spec = reader.spec();
    if spec.channels == 0 {
        return Err(wav_err("header declares 0 channels".into()));
    }
    if spec.sample_rate < 1000 || spec.sample_rate > 384_000 {
        return Err(wav_err(format!(
            "sample rate {} Hz is outside 1 kHz..384 kHz",
            spec.sample_rate
        )));
    }
    let declared = reader.len() as usize;
    let interleaved: Vec<f32> = match spec.sample_format {
        hound::SampleFormat::Float => {
            if spec.bits_per_sample != 32 {
                return Err(wav_err(format!(
                    "{}-bit float samples are not supported (32-bit only)",
                    spec.bits_per_sample
                )));
            }
            reader
                .samples::<f32>()
                .collect::<Result<_, _>>()
                .map_err(|e| wav_err(format!("data chunk unreadable (truncated?): {e}")))?
        }
        hound::SampleFormat::Int => {
            let bits = spec.bits_per_sample;
            if !(1..=32).contains(&bits) {
                return Err(wav_err(format!("{bits}-bit integer samples not supported")));
            }
            let scale = 1.0 / (1u64 << (bits - 1)) as f32;
            reader
                .samples::<i32>()
                .map(|s| s.map(|v| v as f32 * scale))
                .collect::<Result<_, _>>()
                .map_err(|e| wav_err(format!("data chunk unreadable (truncated?): {e}")))?
        }
    };
    if interleaved.len() < declared {
        return Err(wav_err(format!(
            "truncated: header declares {declared} samples, file holds {}",
            interleaved.len()
        )));
    }
    let ch = spec.channels as usize;
    if interleaved.len() < ch {
        return Err(wav_err("no audio samples (0 length)".into()));
    }
    if let Some(i) = interleaved.iter().position(|x| !x.is_finite()) {
        return Err(wav_err(format!("sample {i} is NaN or infinite")));
    }
    let mono: Vec<f32> = if ch == 1 {
        interleaved
    } else {
        interleaved
            .chunks_exact(ch)
            .map(|f| f.iter().sum::<f32>() / ch as f32)
            .collect()
    };
    Ok(if spec.sample_rate == SAMPLE_RATE {
        mono
    } else {
        resample(&mono, spec.sample_rate, SAMPLE_RATE)
    })
}

/// Band-limited resampling by a windowed sinc (Hann window, 16 zero crossings each side,
/// cut-off at the lower Nyquist frequency). Quality is ample for analysis and prompts.
pub fn resample(x: &[f32], from: u32, to: u32) -> Vec<f32> {
    if from == to || x.is_empty() {
        return x.to_vec();
    }
    let ratio = to as f64 / from as f64;
    let n_out = ((x.len() as f64) * ratio).round().max(1.0) as usize;
    let cutoff = ratio.min(1.0); // relative to the input Nyquist
    let zeros = 16.0;
    let half = (zeros / cutoff).ceil() as isize;
    let mut out = Vec::with_capacity(n_out);
    for i in 0..n_out {
        let t = i as f64 / ratio; // position in input samples
        let center = t.floor() as isize;
        let mut acc = 0.0f64;
        for j in center - half + 1..=center + half {
            if j < 0 || j as usize >= x.len() {
                continue;
            }
            let d = t - j as f64;
            let arg = d * cutoff;
            let sinc = if arg.abs() < 1e-9 {
                1.0
            } else {
                (PI * arg).sin() / (PI * arg)
            };
            let w = 0.5 + 0.5 * (PI * arg / zeros).cos();
            if arg.abs() < zeros {
                acc += x[j as usize] as f64 * sinc * w * cutoff;
            }
        }
        out.push(acc as f32);
    }
    out
}

fn spec(sample_rate: u32) -> hound::WavSpec {
    hound::WavSpec {
        channels: 1,
        sample_rate,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    }
}

fn to_i16(x: f32) -> i16 {
    (x.clamp(-1.0, 1.0) * 32767.0).round() as i16
}

/// Writes mono 16-bit PCM atomically.
pub fn write_wav(path: &Path, samples: &[f32], sample_rate: u32) -> Result<(), MusicError> {
    let mut w = WavStreamWriter::create(path, sample_rate)?;
    w.write(samples)?;
    w.finish()
}

/// A WAV file written piece by piece (a stream), made visible under its name only by
/// [`Self::finish`]; dropped unfinished, the temporary file is removed.
pub struct WavStreamWriter {
    path: PathBuf,
    tmp: PathBuf,
    writer: Option<hound::WavWriter<BufWriter<File>>>,
}

impl WavStreamWriter {
    /// Opens `path`'s temporary sibling for writing.
    pub fn create(path: &Path, sample_rate: u32) -> Result<Self, MusicError> {
        let name = path
            .file_name()
            .ok_or_else(|| MusicError::Config(format!("{}: not a file path", path.display())))?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io(dir))?;
        }
        let tmp = path.with_file_name(format!(
            ".{}.tmp{}",
            name.to_string_lossy(),
            std::process::id()
        ));
        let file = File::create(&tmp).map_err(io(&tmp))?;
        let writer =
            hound::WavWriter::new(BufWriter::new(file), spec(sample_rate)).map_err(|e| {
                MusicError::Wav {
                    path: tmp.clone(),
                    message: e.to_string(),
                }
            })?;
        Ok(Self {
            path: path.to_path_buf(),
            tmp,
            writer: Some(writer),
        })
    }

    /// Appends samples (clipped to [-1, 1]).
    pub fn write(&mut self, samples: &[f32]) -> Result<(), MusicError> {
        let w = self.writer.as_mut().expect("writer open until finish");
        for &s in samples {
            w.write_sample(to_i16(s)).map_err(|e| MusicError::Wav {
                path: self.tmp.clone(),
                message: e.to_string(),
            })?;
        }
        Ok(())
    }

    /// Flushes, closes and renames into place.
    pub fn finish(mut self) -> Result<(), MusicError> {
        let w = self.writer.take().expect("writer open until finish");
        w.finalize().map_err(|e| MusicError::Wav {
            path: self.tmp.clone(),
            message: e.to_string(),
        })?;
        std::fs::rename(&self.tmp, &self.path).map_err(io(&self.path))
    }
}

impl Drop for WavStreamWriter {
    fn drop(&mut self) {
        if self.writer.is_some() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sine(freq: f64, sr: u32, n: usize) -> Vec<f32> {
        (0..n)
            .map(|i| (2.0 * PI * freq * i as f64 / sr as f64).sin() as f32 * 0.5)
            .collect()
    }

    #[test]
    fn resampling_keeps_a_tone() {
        let x = sine(440.0, 44_100, 44_100);
        let y = resample(&x, 44_100, SAMPLE_RATE);
        assert_eq!(y.len(), 24_000);
        let reference = sine(440.0, SAMPLE_RATE, 24_000);
        // Ignore the edges, where the sinc runs out of input.
        let err: f32 = y[200..23_800]
            .iter()
            .zip(&reference[200..23_800])
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        assert!(err < 0.01, "max error {err}");
    }

    #[test]
    fn odd_wavs() {
        let dir = tempfile::tempdir().unwrap();
        // Stereo 48 kHz float: averaged and resampled.
        let p = dir.path().join("stereo.wav");
        let spec = hound::WavSpec {
            channels: 2,
            sample_rate: 48_000,
            bits_per_sample: 32,
            sample_format: hound::SampleFormat::Float,
        };
        let mut w = hound::WavWriter::create(&p, spec).unwrap();
        for s in sine(300.0, 48_000, 4800) {
            w.write_sample(s).unwrap();
            w.write_sample(-s).unwrap(); // opposite phase: the mono mix is silence
        }
        w.finalize().unwrap();
        let mono = read_wav(&p).unwrap();
        assert_eq!(mono.len(), 2400);
        assert!(mono.iter().all(|x| x.abs() < 1e-6));

        // Zero samples.
        let p = dir.path().join("empty.wav");
        hound::WavWriter::create(&p, spec)
            .unwrap()
            .finalize()
            .unwrap();
        let e = read_wav(&p).unwrap_err().to_string();
        assert!(e.contains("empty.wav") && e.contains("0 length"), "{e}");

        // Truncated: cut the file in the middle of the data chunk.
        let p = dir.path().join("cut.wav");
        write_wav(&p, &sine(200.0, SAMPLE_RATE, 2000), SAMPLE_RATE).unwrap();
        let bytes = std::fs::read(&p).unwrap();
        std::fs::write(&p, &bytes[..bytes.len() - 1001]).unwrap();
        let e = read_wav(&p).unwrap_err().to_string();
        assert!(e.contains("cut.wav") && e.contains("truncated"), "{e}");

        // Garbage.
        let p = dir.path().join("junk.wav");
        std::fs::write(&p, b"this is not a RIFF file at all").unwrap();
        let e = read_wav(&p).unwrap_err().to_string();
        assert!(e.contains("junk.wav"), "{e}");

        // Missing.
        assert!(matches!(
            read_wav(&dir.path().join("nope.wav")),
            Err(MusicError::Io { .. })
        ));
    }

    #[test]
    fn write_read_round_trip_is_atomic() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.wav");
        let x = sine(500.0, SAMPLE_RATE, 1000);
        let mut w = WavStreamWriter::create(&p, SAMPLE_RATE).unwrap();
        w.write(&x[..500]).unwrap();
        assert!(!p.exists(), "visible only when finished");
        w.write(&x[500..]).unwrap();
        w.finish().unwrap();
        let y = read_wav(&p).unwrap();
        assert_eq!(y.len(), 1000);
        assert!(x.iter().zip(&y).all(|(a, b)| (a - b).abs() < 1e-4));
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
