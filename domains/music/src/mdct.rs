//! The MDCT: critically sampled, real, perfect reconstruction by overlap-add (TDAC).
//!
//! Frame `t` takes samples `[t·N − N, t·N + N)` of the signal (zeros before the start), a
//! sine window, and `N` coefficients with an orthonormal basis, so analysis and synthesis are
//! the same matrix. With `N` = 480 at 24 kHz that is 50 frames a second. Analysis is a
//! matrix product (ndarray; it runs offline, on whole files). Synthesis, which a live stream
//! runs for every block, goes through one `2N`-point FFT per frame: the matrix product for a
//! block of 4 frames cost a tenth of a music stream's time (a `[4, 480] × [480, 960]` product
//! spends most of its time packing the basis).

use std::f64::consts::PI;
use std::sync::Arc;

use ndarray::{s, Array2, ArrayView2};
use rustfft::num_complex::Complex;
use rustfft::{Fft, FftPlanner};

/// An MDCT with hop `N` (window `2N`).
#[derive(Clone, Debug)]
pub struct Mdct {
    hop: usize,
    /// `[2N, N]`: windowed orthonormal cosine basis.
    basis: Array2<f32>,
    synthesis: FftSynthesis,
}

/// The synthesis `y[i] = Σₖ c[k]·basis[i, k]` by FFT. With `n₀ = ½ + N/2`,
/// `basis[i, k] = s·w[i]·Re(e^{jπ(i + n₀)/2N} · e^{jπn₀k/N} · e^{j2πik/2N})`, so
/// `y = Re(post ⊙ IDFT₂ₙ(pre ⊙ c))` with the coefficients zero-padded to `2N`.
#[derive(Clone)]
struct FftSynthesis {
    /// Unnormalised inverse FFT of length `2N`.
    fft: Arc<dyn Fft<f32>>,
    /// `e^{jπn₀k/N}`, `k < N`.
    pre: Vec<Complex<f32>>,
    /// `s·w[i]·e^{jπ(i + n₀)/2N}`, `i < 2N`.
    post: Vec<Complex<f32>>,
}

impl std::fmt::Debug for FftSynthesis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FftSynthesis({})", self.post.len())
    }
}

impl FftSynthesis {
    fn new(hop: usize) -> Self {
        let n = hop as f64;
        let n0 = 0.5 + n / 2.0;
        let scale = (2.0 / n).sqrt();
        let cis = |a: f64| Complex::new(a.cos(), a.sin());
        let pre = (0..hop)
            .map(|k| {
                let c = cis(PI * n0 * k as f64 / n);
                Complex::new(c.re as f32, c.im as f32)
            })
            .collect();
        let post = (0..2 * hop)
            .map(|i| {
                let w = (PI * (i as f64 + 0.5) / (2.0 * n)).sin();
                let c = cis(PI * (i as f64 + n0) / (2.0 * n)) * (scale * w);
                Complex::new(c.re as f32, c.im as f32)
            })
            .collect();
        Self {
            fft: FftPlanner::new().plan_fft_inverse(2 * hop),
            pre,
            post,
        }
    }

    /// Windowed time-domain frames `[frames, 2N]` of coefficients `[frames, N]`.
    fn frames(&self, coeffs: ArrayView2<f32>) -> Array2<f32> {
        let n = self.pre.len();
        let mut out = Array2::<f32>::zeros((coeffs.nrows(), 2 * n));
        let mut buf = vec![Complex::new(0f32, 0.0); 2 * n];
        let mut scratch = vec![Complex::new(0f32, 0.0); self.fft.get_inplace_scratch_len()];
        for (c, mut y) in coeffs.rows().into_iter().zip(out.rows_mut()) {
            for ((b, &c), p) in buf.iter_mut().zip(&c).zip(&self.pre) {
                *b = p * c;
            }
            buf[n..].fill(Complex::new(0.0, 0.0));
            self.fft.process_with_scratch(&mut buf, &mut scratch);
            for ((y, b), p) in y.iter_mut().zip(&buf).zip(&self.post) {
                *y = p.re * b.re - p.im * b.im;
            }
        }
        out
    }
}

impl Mdct {
    /// Builds the basis for hop `hop` (> 0).
    pub fn new(hop: usize) -> Self {
        assert!(hop > 0, "MDCT hop must be > 0");
        let n = hop as f64;
        let basis = Array2::from_shape_fn((2 * hop, hop), |(i, k)| {
            let w = (PI * (i as f64 + 0.5) / (2.0 * n)).sin();
            let c = (PI / n * (i as f64 + 0.5 + n / 2.0) * (k as f64 + 0.5)).cos();
            ((2.0 / n).sqrt() * w * c) as f32
        });
        Self {
            hop,
            basis,
            synthesis: FftSynthesis::new(hop),
        }
    }

    /// Hop (= coefficients per frame).
    pub fn hop(&self) -> usize {
        self.hop
    }

    /// Frames covering `len` samples: every sample lies in two frames.
    pub fn frames_for(&self, len: usize) -> usize {
        len.div_ceil(self.hop) + 1
    }

    /// Coefficients `[frames, N]` of a signal.
    pub fn analyze(&self, x: &[f32]) -> Array2<f32> {
        let n = self.hop;
        let t = self.frames_for(x.len());
        // Padded signal: N zeros, x, zeros up to (t + 1)·N.
        let mut padded = vec![0f32; (t + 1) * n];
        padded[n..n + x.len()].copy_from_slice(x);
        let mut frames = Array2::<f32>::zeros((t, 2 * n));
        for (i, mut row) in frames.rows_mut().into_iter().enumerate() {
            row.assign(&ndarray::ArrayView1::from(&padded[i * n..i * n + 2 * n]));
        }
        frames.dot(&self.basis)
    }

    /// Windowed time-domain frames `[frames, 2N]` of coefficients (before overlap-add).
    fn frames(&self, coeffs: ArrayView2<f32>) -> Array2<f32> {
        self.synthesis.frames(coeffs)
    }

    /// Inverse of [`Self::analyze`]: overlap-adds and returns `len` samples.
    pub fn synthesize(&self, coeffs: ArrayView2<f32>, len: usize) -> Vec<f32> {
        let mut dec = MdctDecoder::new(self.clone(), true);
        let mut out = dec.push(coeffs);
        out.resize(len, 0.0);
        out
    }
}

/// Streaming synthesis: feed frames as they are made, get finished samples back. After frame
/// `t` the samples of hop `t` are final; the second half of the frame waits for frame `t + 1`.
#[derive(Clone, Debug)]
pub struct MdctDecoder {
    mdct: Mdct,
    overlap: Vec<f32>,
    /// Drop the first hop (the analysis padding) — for signals that went through
    /// [`Mdct::analyze`]; a generated stream keeps it.
    skip_first: bool,
    started: bool,
}

impl MdctDecoder {
    /// A decoder; see the field docs for `skip_first`.
    pub fn new(mdct: Mdct, skip_first: bool) -> Self {
        let n = mdct.hop;
        Self {
            mdct,
            overlap: vec![0.0; n],
            skip_first,
            started: false,
        }
    }

    /// Adds frames `[t, N]`; returns `t·N` finished samples (one hop fewer on the very first
    /// call when `skip_first`).
    pub fn push(&mut self, coeffs: ArrayView2<f32>) -> Vec<f32> {
        let n = self.mdct.hop;
        let frames = self.mdct.frames(coeffs);
        let mut out = Vec::with_capacity(frames.nrows() * n);
        for row in frames.rows() {
            let first = row.slice(s![..n]);
            let hop: Vec<f32> = first
                .iter()
                .zip(&self.overlap)
                .map(|(a, b)| a + b)
                .collect();
            self.overlap = row.slice(s![n..]).to_vec();
            if self.started || !self.skip_first {
                out.extend_from_slice(&hop);
            }
            self.started = true;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn perfect_reconstruction_and_orthonormality() {
        let m = Mdct::new(48);
        let x: Vec<f32> = (0..1000)
            .map(|i| ((i as f32 * 0.37).sin() + (i as f32 * 0.011).cos()) * 0.3)
            .collect();
        let c = m.analyze(&x);
        assert_eq!(c.nrows(), m.frames_for(x.len()));
        let y = m.synthesize(c.view(), x.len());
        let err = x
            .iter()
            .zip(&y)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        assert!(err < 1e-5, "max error {err}");
        // Parseval for a critically sampled orthogonal transform (TDAC): energy is kept.
        let ex: f32 = x.iter().map(|v| v * v).sum();
        let ec: f32 = c.iter().map(|v| v * v).sum();
        assert!((ex - ec).abs() / ex < 1e-4, "{ex} vs {ec}");
    }

    /// The FFT synthesis is the basis' transpose applied to the coefficients.
    #[test]
    fn fft_synthesis_equals_the_basis_product() {
        for hop in [32, 480] {
            let m = Mdct::new(hop);
            let c = Array2::from_shape_fn((3, hop), |(t, k)| {
                ((t * 31 + k * 7) as f32 * 0.37).sin() / (1.0 + k as f32 * 0.05)
            });
            let want = c.dot(&m.basis.t());
            let got = m.frames(c.view());
            let scale = want.iter().fold(0f32, |a, v| a.max(v.abs()));
            let err = (&got - &want).iter().fold(0f32, |a, v| a.max(v.abs()));
            assert!(err <= 1e-5 * scale, "hop {hop}: max error {err} of {scale}");
        }
    }

    #[test]
    fn streaming_equals_batch() {
        let m = Mdct::new(32);
        let x: Vec<f32> = (0..640).map(|i| (i as f32 * 0.1).sin()).collect();
        let c = m.analyze(&x);
        let mut dec = MdctDecoder::new(m.clone(), true);
        let mut y = Vec::new();
        for chunk in c.axis_chunks_iter(ndarray::Axis(0), 3) {
            y.extend(dec.push(chunk));
        }
        let batch = m.synthesize(c.view(), x.len());
        for (a, b) in batch.iter().zip(&y) {
            assert!((a - b).abs() < 1e-6);
        }
        assert!(y.len() >= x.len());
    }
}
