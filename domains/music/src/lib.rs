//! # blockdiff-music
//!
//! Music as discrete audio tokens, generated block after block by the blockdiff core with a
//! sliding KV window, fast enough to stream indefinitely in real time on a 2-core CPU.
//!
//! | stage | module |
//! |---|---|
//! | WAV in/out (mono 24 kHz, resampling, atomic writes) | [`audio`] |
//! | corpus: manifest → rendered WAV (rustysynth) | [`data`] |
//! | MDCT and streaming inverse | [`mdct`] |
//! | residual VQ (k-means) | [`rvq`] |
//! | codec: gain-shape RVQ on MDCT frames | [`codec`] |
//! | frames ⇄ tokens, frame-slot constraint | [`tokenizer`] |
//! | training, checkpoints | [`model`] |
//! | real-time streaming | [`stream`] |
//! | metrics, evaluation | [`metrics`], [`eval`] |

pub mod audio;
pub mod codec;
pub mod data;
pub mod error;
pub mod eval;
pub mod mdct;
pub mod metrics;
pub mod model;
pub mod rvq;
pub mod stream;
pub mod tokenizer;

pub use error::MusicError;
