//! Measurements: codec quality, n-gram baselines, key consistency, drift and block seams.

use std::sync::Arc;

use rustfft::num_complex::Complex;
use rustfft::{Fft, FftPlanner};
use serde::{Deserialize, Serialize};

use crate::audio::SAMPLE_RATE;

/// Scale-invariant signal-to-distortion ratio in dB (both signals made zero-mean).
pub fn si_sdr(reference: &[f32], estimate: &[f32]) -> f64 {
    let n = reference.len().min(estimate.len());
    if n == 0 {
        return f64::NAN;
    }
    let mean = |x: &[f32]| x[..n].iter().map(|&v| v as f64).sum::<f64>() / n as f64;
    let (mr, me) = (mean(reference), mean(estimate));
    let mut dot = 0.0;
    let mut rr = 0.0;
    for i in 0..n {
        let r = reference[i] as f64 - mr;
        dot += r * (estimate[i] as f64 - me);
        rr += r * r;
    }
    if rr == 0.0 {
        return f64::NAN;
    }
    let alpha = dot / rr;
    let mut t = 0.0;
    let mut e = 0.0;
    for i in 0..n {
        let target = alpha * (reference[i] as f64 - mr);
        let noise = estimate[i] as f64 - me - target;
        t += target * target;
        e += noise * noise;
    }
    10.0 * (t / e.max(1e-20)).log10()
}

/// A Hann-windowed STFT of fixed size.
pub struct Stft {
    n_fft: usize,
    hop: usize,
    window: Vec<f32>,
    fft: Arc<dyn Fft<f32>>,
}

impl Stft {
    /// STFT of `n_fft` points every `hop` samples.
    pub fn new(n_fft: usize, hop: usize) -> Self {
        let window = (0..n_fft)
            .map(|i| {
                (0.5 - 0.5 * (2.0 * std::f64::consts::PI * i as f64 / n_fft as f64).cos()) as f32
            })
            .collect();
        Self {
            n_fft,
            hop,
            window,
            fft: FftPlanner::new().plan_fft_forward(n_fft),
        }
    }

    /// Magnitudes `[frames][n_fft/2 + 1]`; frame `j` starts at sample `j·hop`.
    pub fn magnitudes(&self, x: &[f32]) -> Vec<Vec<f32>> {
        let mut out = Vec::new();
        let mut buf = vec![Complex::new(0.0f32, 0.0); self.n_fft];
        let mut start = 0;
        while start + self.n_fft <= x.len() {
            for (i, b) in buf.iter_mut().enumerate() {
                *b = Complex::new(x[start + i] * self.window[i], 0.0);
            }
            self.fft.process(&mut buf);
            out.push(buf[..self.n_fft / 2 + 1].iter().map(|c| c.norm()).collect());
            start += self.hop;
        }
        out
    }
}

/// Multi-resolution log-STFT distance: the mean absolute difference of `log10(|X| + 1e-5)`
/// over FFT sizes 512, 1024 and 2048 (hop = size/4), averaged over resolutions.
pub fn multires_stft_distance(reference: &[f32], estimate: &[f32]) -> f64 {
    let n = reference.len().min(estimate.len());
    let mut total = 0.0;
    for size in [512, 1024, 2048] {
        let stft = Stft::new(size, size / 4);
        let a = stft.magnitudes(&reference[..n]);
        let b = stft.magnitudes(&estimate[..n]);
        let mut sum = 0.0f64;
        let mut count = 0usize;
        for (ra, rb) in a.iter().zip(&b) {
            for (x, y) in ra.iter().zip(rb) {
                sum += ((x + 1e-5).log10() - (y + 1e-5).log10()).abs() as f64;
                count += 1;
            }
        }
        total += sum / count.max(1) as f64;
    }
    total / 3.0
}

/// Pitch-class energy per analysis frame (4096-point STFT, hop 2048, 55 Hz – 5 kHz).
pub fn chroma(x: &[f32]) -> Vec<[f64; 12]> {
    let n_fft = 4096;
    let stft = Stft::new(n_fft, n_fft / 2);
    let pc: Vec<Option<usize>> = (0..=n_fft / 2)
        .map(|k| {
            let f = k as f64 * SAMPLE_RATE as f64 / n_fft as f64;
            (55.0..=5000.0).contains(&f).then(|| {
                let midi = 69.0 + 12.0 * (f / 440.0).log2();
                (midi.round() as i64).rem_euclid(12) as usize
            })
        })
        .collect();
    stft.magnitudes(x)
        .into_iter()
        .map(|frame| {
            let mut c = [0f64; 12];
            for (m, p) in frame.iter().zip(&pc) {
                if let Some(p) = p {
                    c[*p] += (*m as f64) * (*m as f64);
                }
            }
            c
        })
        .collect()
}

const MAJOR: [f64; 12] = [
    6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88,
];
const MINOR: [f64; 12] = [
    6.33, 2.68, 3.52, 5.38, 2.60, 3.53, 2.54, 4.75, 3.98, 2.69, 3.34, 3.17,
];

fn pearson(a: &[f64; 12], b: &[f64; 12]) -> f64 {
    let ma = a.iter().sum::<f64>() / 12.0;
    let mb = b.iter().sum::<f64>() / 12.0;
    let (mut num, mut da, mut db) = (0.0, 0.0, 0.0);
    for i in 0..12 {
        num += (a[i] - ma) * (b[i] - mb);
        da += (a[i] - ma).powi(2);
        db += (b[i] - mb).powi(2);
    }
    num / (da * db).sqrt().max(1e-12)
}

/// Krumhansl–Kessler key estimate of a chroma vector: 0–11 major on C…B, 12–23 minor.
pub fn estimate_key(c: &[f64; 12]) -> usize {
    let mut best = (0, f64::NEG_INFINITY);
    for tonic in 0..12 {
        for (mode, profile) in [MAJOR, MINOR].iter().enumerate() {
            let mut rotated = [0f64; 12];
            for i in 0..12 {
                rotated[(i + tonic) % 12] = profile[i];
            }
            let r = pearson(c, &rotated);
            if r > best.1 {
                best = (mode * 12 + tonic, r);
            }
        }
    }
    best.0
}

/// Share of `segment_s`-second segments whose estimated key equals the clip's global key
/// (silent segments skipped). 1.0 = the music never leaves its key.
pub fn key_consistency(x: &[f32], segment_s: f64) -> f64 {
    let frames = chroma(x);
    if frames.is_empty() {
        return f64::NAN;
    }
    let mut total = [0f64; 12];
    for f in &frames {
        for i in 0..12 {
            total[i] += f[i];
        }
    }
    let global = estimate_key(&total);
    let per = ((segment_s * SAMPLE_RATE as f64 / 2048.0).round() as usize).max(1);
    let mut same = 0usize;
    let mut count = 0usize;
    for seg in frames.chunks(per) {
        let mut c = [0f64; 12];
        for f in seg {
            for i in 0..12 {
                c[i] += f[i];
            }
        }
        if c.iter().sum::<f64>() < 1e-6 {
            continue;
        }
        count += 1;
        if estimate_key(&c) == global {
            same += 1;
        }
    }
    if count == 0 {
        f64::NAN
    } else {
        same as f64 / count as f64
    }
}

/// Per-second features: normalised chroma (12), log RMS, spectral centroid (kHz).
fn second_features(x: &[f32]) -> Vec<Vec<f64>> {
    let sr = SAMPLE_RATE as usize;
    let stft = Stft::new(2048, 1024);
    x.chunks(sr)
        .filter(|c| c.len() == sr)
        .map(|c| {
            let mut f = Vec::with_capacity(14);
            let mut ch = [0f64; 12];
            for fr in chroma(c) {
                for i in 0..12 {
                    ch[i] += fr[i];
                }
            }
            let s: f64 = ch.iter().sum::<f64>().max(1e-12);
            f.extend(ch.iter().map(|v| v / s));
            let rms = (c.iter().map(|v| (*v as f64).powi(2)).sum::<f64>() / sr as f64).sqrt();
            f.push((rms + 1e-6).log10());
            let mags = stft.magnitudes(c);
            let (mut num, mut den) = (0.0, 0.0);
            for frame in &mags {
                for (k, m) in frame.iter().enumerate() {
                    num += k as f64 * SAMPLE_RATE as f64 / 2048.0 * *m as f64;
                    den += *m as f64;
                }
            }
            f.push(num / den.max(1e-12) / 1000.0);
            f
        })
        .collect()
}

/// Drift: distance between the mean features of the first and the last `span_s` seconds
/// (halves when the clip is shorter than two spans), features z-scored over the whole clip.
/// 0 = the end sounds like the beginning.
pub fn drift(x: &[f32], span_s: usize) -> f64 {
    let feats = second_features(x);
    let n = feats.len();
    if n < 2 {
        return f64::NAN;
    }
    let span = span_s.min(n / 2).max(1);
    let d = feats[0].len();
    let mut mean = vec![0f64; d];
    let mut sd = vec![0f64; d];
    for f in &feats {
        for i in 0..d {
            mean[i] += f[i] / n as f64;
        }
    }
    for f in &feats {
        for i in 0..d {
            sd[i] += (f[i] - mean[i]).powi(2) / n as f64;
        }
    }
    let avg = |fs: &[Vec<f64>]| -> Vec<f64> {
        (0..d)
            .map(|i| {
                fs.iter()
                    .map(|f| (f[i] - mean[i]) / sd[i].sqrt().max(1e-9))
                    .sum::<f64>()
                    / fs.len() as f64
            })
            .collect()
    };
    let a = avg(&feats[..span]);
    let b = avg(&feats[n - span..]);
    a.iter()
        .zip(&b)
        .map(|(x, y)| (x - y).powi(2))
        .sum::<f64>()
        .sqrt()
}

/// Block-seam discontinuity: mean spectral flux into the hop-aligned frames (2 hops long)
/// that overlap a block boundary, divided by the mean flux elsewhere. 1.0 = seams are inaudible
/// in this measure; > 1 = blocks change more at their edges than inside.
pub fn seam_flux_ratio(x: &[f32], hop: usize, block_frames: usize) -> f64 {
    let stft = Stft::new(2 * hop, hop);
    let mags = stft.magnitudes(x);
    let (mut at_seam, mut n_seam, mut inside, mut n_inside) = (0.0, 0usize, 0.0, 0usize);
    for j in 1..mags.len() {
        let (prev, cur) = (&mags[j - 1], &mags[j]);
        let norm: f64 = cur.iter().map(|v| *v as f64).sum::<f64>().max(1e-9);
        let flux: f64 = cur
            .iter()
            .zip(prev)
            .map(|(c, p)| ((c - p) as f64).max(0.0))
            .sum::<f64>()
            / norm;
        // Frame j covers hops j and j+1; a block starting at hop kB (its first hop is the
        // overlap-add crossfade with the previous block) is entered by frames kB−1 and kB.
        if j % block_frames == 0 || (j + 1) % block_frames == 0 {
            at_seam += flux;
            n_seam += 1;
        } else {
            inside += flux;
            n_inside += 1;
        }
    }
    if n_seam == 0 || n_inside == 0 {
        return f64::NAN;
    }
    (at_seam / n_seam as f64) / (inside / n_inside as f64).max(1e-12)
}

/// Add-α smoothed unigram and bigram models over token ids.
#[derive(Clone, Debug)]
pub struct NgramBaseline {
    vocab: usize,
    alpha: f64,
    unigram: Vec<f64>,
    bigram: Vec<f64>,
    row_totals: Vec<f64>,
}

/// Bits per token of the baselines.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NgramBits {
    /// Unigram.
    pub unigram: f64,
    /// Bigram (first token of a window: unigram).
    pub bigram: f64,
    /// The smoothing chosen on validation data.
    pub alpha: f64,
    /// Bigram bits per token of each frame slot (`evaluate`'s `period`).
    pub bigram_by_slot: Vec<f64>,
}

impl NgramBaseline {
    /// Counts unigrams and bigrams of the streams.
    pub fn fit(streams: &[Vec<u32>], vocab: usize, alpha: f64) -> Self {
        let mut unigram = vec![0f64; vocab];
        let mut bigram = vec![0f64; vocab * vocab];
        for s in streams {
            for (i, &t) in s.iter().enumerate() {
                unigram[t as usize] += 1.0;
                if i > 0 {
                    bigram[s[i - 1] as usize * vocab + t as usize] += 1.0;
                }
            }
        }
        let row_totals = (0..vocab)
            .map(|a| bigram[a * vocab..(a + 1) * vocab].iter().sum())
            .collect();
        Self {
            vocab,
            alpha,
            unigram,
            bigram,
            row_totals,
        }
    }

    /// Bits per token on token windows, scoring each window's positions from `from` on (the
    /// bigram still sees the token before `from`).
    pub fn bits(&self, windows: &[&[u32]], from: usize) -> (f64, f64) {
        let (u, b, _) = self.bits_by_slot(windows, from, 1);
        (u, b)
    }

    /// [`Self::bits`], plus the bigram bits per token of each frame slot: position `i` of a
    /// window is slot `i % period` (windows start on a frame boundary). One pass.
    pub fn bits_by_slot(
        &self,
        windows: &[&[u32]],
        from: usize,
        period: usize,
    ) -> (f64, f64, Vec<f64>) {
        let sums = self.sums_by_slot(windows, from, period.max(1));
        let n: usize = sums.iter().map(|s| s.2).sum();
        let u: f64 = sums.iter().map(|s| s.0).sum();
        let b: f64 = sums.iter().map(|s| s.1).sum();
        let by_slot = sums.iter().map(|&(_, b, n)| b / n.max(1) as f64).collect();
        (u / n.max(1) as f64, b / n.max(1) as f64, by_slot)
    }

    /// Summed unigram and bigram bits and the token count, per slot `i % period`.
    fn sums_by_slot(
        &self,
        windows: &[&[u32]],
        from: usize,
        period: usize,
    ) -> Vec<(f64, f64, usize)> {
        let total: f64 = self.unigram.iter().sum();
        let denom_uni = total + self.alpha * self.vocab as f64;
        let mut sums = vec![(0.0, 0.0, 0usize); period];
        for w in windows {
            for (i, &t) in w.iter().enumerate().skip(from) {
                let t = t as usize;
                let pu = (self.unigram[t] + self.alpha) / denom_uni;
                let pb = if i == 0 {
                    pu
                } else {
                    let a = w[i - 1] as usize;
                    (self.bigram[a * self.vocab + t] + self.alpha)
                        / (self.row_totals[a] + self.alpha * self.vocab as f64)
                };
                let slot = &mut sums[i % period];
                slot.0 -= pu.log2();
                slot.1 -= pb.log2();
                slot.2 += 1;
            }
        }
        sums
    }

    /// Fits on `train` once; for each `from` (see [`Self::bits`]) picks α on `val` (best
    /// bigram bits) and returns the bits on `test`, overall and per slot `i % period`.
    pub fn evaluate(
        train: &[Vec<u32>],
        val: &[&[u32]],
        test: &[&[u32]],
        vocab: usize,
        froms: &[usize],
        period: usize,
    ) -> Vec<NgramBits> {
        // Counts once; only the smoothing changes between candidates.
        let mut m = Self::fit(train, vocab, 1e-3);
        let tune = if val.is_empty() { test } else { val };
        froms
            .iter()
            .map(|&from| {
                let mut best = (f64::INFINITY, m.alpha);
                for alpha in [1e-3, 1e-2, 0.1, 1.0] {
                    m.alpha = alpha;
                    let (_, vb) = m.bits(tune, from);
                    if vb < best.0 {
                        best = (vb, alpha);
                    }
                }
                m.alpha = best.1;
                let (unigram, bigram, bigram_by_slot) = m.bits_by_slot(test, from, period);
                NgramBits {
                    unigram,
                    bigram,
                    alpha: m.alpha,
                    bigram_by_slot,
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone(midi: &[f64], seconds: f64) -> Vec<f32> {
        let n = (seconds * SAMPLE_RATE as f64) as usize;
        (0..n)
            .map(|i| {
                let t = i as f64 / SAMPLE_RATE as f64;
                midi.iter()
                    .map(|m| {
                        let f = 440.0 * 2f64.powf((m - 69.0) / 12.0);
                        (2.0 * std::f64::consts::PI * f * t).sin()
                    })
                    .sum::<f64>() as f32
                    * 0.2
            })
            .collect()
    }

    #[test]
    fn si_sdr_of_known_noise() {
        let x = tone(&[60.0], 0.5);
        assert!(si_sdr(&x, &x) > 100.0);
        let scaled: Vec<f32> = x.iter().map(|v| v * 0.3).collect();
        assert!(si_sdr(&x, &scaled) > 100.0, "scale-invariant");
        // Noise at 1/10 the amplitude of a unit-power signal → 20 dB.
        let noise: Vec<f32> = (0..x.len())
            .map(|i| if i % 2 == 0 { 1.0 } else { -1.0 })
            .collect();
        let p_x = (x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32).sqrt();
        let y: Vec<f32> = x
            .iter()
            .zip(&noise)
            .map(|(a, n)| a + 0.1 * p_x * n)
            .collect();
        let d = si_sdr(&x, &y);
        assert!((d - 20.0).abs() < 0.5, "{d}");
    }

    #[test]
    fn c_major_triad_is_c_major_and_consistent() {
        // C E G with a bass C: C major.
        let x = tone(&[48.0, 60.0, 64.0, 67.0], 3.0);
        let frames = chroma(&x);
        let mut total = [0f64; 12];
        for f in &frames {
            for i in 0..12 {
                total[i] += f[i];
            }
        }
        assert_eq!(estimate_key(&total), 0);
        assert_eq!(key_consistency(&x, 1.0), 1.0);
        // A minor triad A C E: A minor (12 + 9).
        let y = tone(&[57.0, 60.0, 64.0, 45.0], 2.0);
        let mut t2 = [0f64; 12];
        for f in chroma(&y) {
            for i in 0..12 {
                t2[i] += f[i];
            }
        }
        assert_eq!(estimate_key(&t2), 21);
        // Half C major, half F# major: consistency drops to about one half.
        let mut z = tone(&[48.0, 60.0, 64.0, 67.0], 4.0);
        z.extend(tone(&[54.0, 66.0, 70.0, 73.0], 4.0));
        let k = key_consistency(&z, 1.0);
        assert!((0.3..=0.7).contains(&k), "{k}");
        // Drift: a constant tone barely drifts, a key change does.
        assert!(drift(&tone(&[60.0, 64.0], 6.0), 2) < drift(&z, 2));
    }

    #[test]
    fn seams_show_up_in_the_flux_ratio() {
        let hop = 480;
        // Smooth tone: ratio ≈ 1. Tone that changes pitch every 4 hops: ratio ≫ 1.
        let smooth = tone(&[60.0], 4.0);
        let r = seam_flux_ratio(&smooth, hop, 4);
        assert!((0.8..1.25).contains(&r), "{r}");
        let mut jumpy = Vec::new();
        for k in 0..25 {
            let mut seg = tone(&[60.0 + (k % 5) as f64 * 3.0], 4.0 * hop as f64 / 24_000.0);
            seg.truncate(4 * hop);
            jumpy.extend(seg);
        }
        // Blocks start at hop 0; the STFT frame j starts at sample j·hop.
        let r = seam_flux_ratio(&jumpy, hop, 4);
        assert!(r > 2.0, "{r}");
    }

    #[test]
    fn bigram_beats_unigram_on_a_cycle() {
        let stream: Vec<u32> = (0..3000).map(|i| 4 + (i % 5) as u32).collect();
        let w: Vec<&[u32]> = stream.chunks(100).collect();
        let bits =
            NgramBaseline::evaluate(std::slice::from_ref(&stream), &w, &w, 9, &[0], 5).remove(0);
        assert!(
            (bits.unigram - 5f64.log2()).abs() < 0.01,
            "{}",
            bits.unigram
        );
        assert!(bits.bigram < 0.1, "{}", bits.bigram);
        // Windows of 100 start on a cycle boundary, so every slot holds one token of the
        // cycle; the slots' mean is the overall bigram (equal counts), and only a window's
        // first token (slot 0, no predecessor: unigram) costs more than the rest.
        assert_eq!(bits.bigram_by_slot.len(), 5);
        let mean = bits.bigram_by_slot.iter().sum::<f64>() / 5.0;
        assert!(
            (mean - bits.bigram).abs() < 1e-9,
            "{mean} vs {}",
            bits.bigram
        );
        assert!(
            bits.bigram_by_slot[0] > bits.bigram_by_slot[1],
            "{:?}",
            bits.bigram_by_slot
        );
    }
}
