//! The corpus: MIDI files listed by `datasets/music/export_midi.py`'s manifest, rendered to
//! 24 kHz mono WAV with a General MIDI SoundFont by `rustysynth` (pure Rust).
//!
//! Rendering: the MIDI plays to its end plus one second of release, left and right are
//! averaged, and each piece is peak-normalised to 0.7 (−3 dBFS) so every piece uses the
//! codec's gain range alike. WAVs are cached next to the manifest (`wav/<split>/<name>.wav`)
//! and re-rendered only when missing.

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustysynth::{MidiFile, MidiFileSequencer, SoundFont, Synthesizer, SynthesizerSettings};
use serde::{Deserialize, Serialize};

use crate::audio::{read_wav, write_wav, SAMPLE_RATE};
use crate::error::{io, MusicError};

/// Manifest format written by the dataset script.
pub const MANIFEST_FORMAT: &str = "blockdiff-music-midi/1";

/// One MIDI file of the corpus.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ManifestEntry {
    /// Path relative to the manifest's folder.
    pub file: String,
    /// Piece id (variants of a piece share it; splits are by piece).
    pub piece: String,
    /// `train`, `val` or `test`.
    pub split: String,
}

/// `manifest.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Manifest {
    /// Must be [`MANIFEST_FORMAT`].
    pub format: String,
    /// The files.
    pub pieces: Vec<ManifestEntry>,
}

/// A rendered piece.
#[derive(Clone, Debug)]
pub struct Track {
    /// Piece id.
    pub piece: String,
    /// File stem (piece plus variant).
    pub name: String,
    /// 24 kHz mono samples.
    pub samples: Vec<f32>,
}

/// The corpus split by piece.
#[derive(Clone, Debug, Default)]
pub struct Corpus {
    /// Training tracks.
    pub train: Vec<Track>,
    /// Validation tracks.
    pub val: Vec<Track>,
    /// Test tracks.
    pub test: Vec<Track>,
}

impl Corpus {
    /// Seconds of audio per split.
    pub fn seconds(&self) -> [f64; 3] {
        let s = |v: &[Track]| {
            v.iter().map(|t| t.samples.len()).sum::<usize>() as f64 / SAMPLE_RATE as f64
        };
        [s(&self.train), s(&self.val), s(&self.test)]
    }
}

/// Reads and checks a manifest; errors name the file and the field.
pub fn read_manifest(path: &Path) -> Result<Manifest, MusicError> {
    let text = std::fs::read_to_string(path).map_err(io(path))?;
    let bad = |message: String| MusicError::Format {
        path: path.to_path_buf(),
        message,
    };
    let m: Manifest = serde_json::from_str(&text).map_err(|e| bad(format!("invalid JSON: {e}")))?;
    if m.format != MANIFEST_FORMAT {
        return Err(bad(format!(
            "field format is {:?}, expected {MANIFEST_FORMAT:?}",
            m.format
        )));
    }
    if m.pieces.is_empty() {
        return Err(bad("field pieces is empty".into()));
    }
    for (i, p) in m.pieces.iter().enumerate() {
        if !matches!(p.split.as_str(), "train" | "val" | "test") {
            return Err(bad(format!(
                "pieces[{i}].split is {:?}, expected train, val or test",
                p.split
            )));
        }
        if p.file.contains("..") || Path::new(&p.file).is_absolute() {
            return Err(bad(format!(
                "pieces[{i}].file {:?} must stay inside the manifest's folder",
                p.file
            )));
        }
    }
    Ok(m)
}

/// A loaded SoundFont, shareable across render threads.
pub struct SoundFontBank(Arc<SoundFont>);

impl SoundFontBank {
    /// Loads an `.sf2` file.
    pub fn load(path: &Path) -> Result<Self, MusicError> {
        let mut f = BufReader::new(File::open(path).map_err(io(path))?);
        let sf = SoundFont::new(&mut f).map_err(|e| MusicError::Format {
            path: path.to_path_buf(),
            message: format!("not a usable SoundFont: {e:?}"),
        })?;
        Ok(Self(Arc::new(sf)))
    }
}

/// Renders one MIDI file to 24 kHz mono (see the module docs).
pub fn render_midi(bank: &SoundFontBank, midi: &Path) -> Result<Vec<f32>, MusicError> {
    let bad = |message: String| MusicError::Format {
        path: midi.to_path_buf(),
        message,
    };
    let mut f = BufReader::new(File::open(midi).map_err(io(midi))?);
    let file = Arc::new(MidiFile::new(&mut f).map_err(|e| bad(format!("not a MIDI file: {e:?}")))?);
    let length = file.get_length();
    if !(length.is_finite() && length > 0.0) {
        return Err(bad(format!("MIDI length {length} s")));
    }
    if length > 3600.0 {
        return Err(bad(format!("MIDI length {length:.0} s exceeds an hour")));
    }
    let settings = SynthesizerSettings::new(SAMPLE_RATE as i32);
    let synth =
        Synthesizer::new(&bank.0, &settings).map_err(|e| bad(format!("synthesiser: {e:?}")))?;
    let n = ((length + 1.0) * SAMPLE_RATE as f64) as usize;
    // rustysynth asserts on some malformed event streams; keep that a typed error.
    let rendered = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut seq = MidiFileSequencer::new(synth);
        seq.play(&file, false);
        let mut left = vec![0f32; n];
        let mut right = vec![0f32; n];
        seq.render(&mut left, &mut right);
        left.iter()
            .zip(&right)
            .map(|(l, r)| 0.5 * (l + r))
            .collect::<Vec<f32>>()
    }))
    .map_err(|_| bad("the synthesiser failed on this file".into()))?;
    let peak = rendered.iter().fold(0f32, |m, x| m.max(x.abs()));
    if peak <= 1e-6 {
        return Err(bad("renders to silence (no notes?)".into()));
    }
    let g = 0.7 / peak;
    Ok(rendered.into_iter().map(|x| x * g).collect())
}

fn wav_path(dir: &Path, entry: &ManifestEntry) -> PathBuf {
    let stem = Path::new(&entry.file)
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| entry.piece.clone());
    dir.join("wav")
        .join(&entry.split)
        .join(format!("{stem}.wav"))
}

/// Renders every manifest entry that has no WAV yet (two threads), then loads the corpus.
/// `limit` keeps the first N entries of each split (0 = all).
pub fn load_corpus(
    manifest_path: &Path,
    soundfont: Option<&Path>,
    limit: usize,
    progress: bool,
) -> Result<Corpus, MusicError> {
    let m = read_manifest(manifest_path)?;
    let dir = manifest_path.parent().unwrap_or(Path::new("."));
    let mut entries: Vec<ManifestEntry> = Vec::new();
    for split in ["train", "val", "test"] {
        let mut n = 0;
        for e in m.pieces.iter().filter(|e| e.split == split) {
            if limit == 0 || n < limit {
                entries.push(e.clone());
                n += 1;
            }
        }
    }
    let missing: Vec<&ManifestEntry> = entries
        .iter()
        .filter(|e| !wav_path(dir, e).exists())
        .collect();
    if !missing.is_empty() {
        let sf = soundfont.ok_or_else(|| {
            MusicError::Config(format!(
                "{} pieces are not rendered yet; pass a SoundFont (--soundfont)",
                missing.len()
            ))
        })?;
        let bank = SoundFontBank::load(sf)?;
        let bar = if progress {
            indicatif::ProgressBar::new(missing.len() as u64)
        } else {
            indicatif::ProgressBar::hidden()
        };
        let next = std::sync::atomic::AtomicUsize::new(0);
        let results: Vec<Result<(), MusicError>> = std::thread::scope(|scope| {
            let workers: Vec<_> = (0..2)
                .map(|_| {
                    scope.spawn(|| -> Result<(), MusicError> {
                        loop {
                            let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            let Some(e) = missing.get(i) else {
                                return Ok(());
                            };
                            let audio = render_midi(&bank, &dir.join(&e.file))?;
                            write_wav(&wav_path(dir, e), &audio, SAMPLE_RATE)?;
                            bar.inc(1);
                        }
                    })
                })
                .collect();
            workers
                .into_iter()
                .map(|w| w.join().expect("render worker"))
                .collect()
        });
        bar.finish_and_clear();
        for r in results {
            r?;
        }
    }
    let mut corpus = Corpus::default();
    for e in &entries {
        let path = wav_path(dir, e);
        let track = Track {
            piece: e.piece.clone(),
            name: path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default(),
            samples: read_wav(&path)?,
        };
        match e.split.as_str() {
            "train" => corpus.train.push(track),
            "val" => corpus.val.push(track),
            _ => corpus.test.push(track),
        }
    }
    if corpus.train.is_empty() {
        return Err(MusicError::Format {
            path: manifest_path.to_path_buf(),
            message: "no train pieces".into(),
        });
    }
    Ok(corpus)
}
