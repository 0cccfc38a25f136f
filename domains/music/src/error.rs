//! Typed errors of the music domain. Messages name the file or field at fault.

use std::path::PathBuf;

/// Everything that can go wrong in the music domain.
#[derive(Debug, thiserror::Error)]
pub enum MusicError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A WAV file that cannot be used (truncated, empty, unsupported format...).
    #[error("{path}: {message}")]
    Wav {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A MIDI file, SoundFont or manifest that cannot be used.
    #[error("{path}: {message}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong, naming the field.
        message: String,
    },
    /// Codec misuse or a malformed codec file.
    #[error("codec: {0}")]
    Codec(String),
    /// Bad settings.
    #[error("configuration: {0}")]
    Config(String),
    /// A token sequence the tokenizer cannot handle.
    #[error("tokenizer: {0}")]
    Tokenizer(#[from] blockdiff_core::error::TokenizerError),
    /// Sampling failed.
    #[error(transparent)]
    Sample(#[from] blockdiff_core::error::SampleError),
    /// Training failed.
    #[error(transparent)]
    Train(#[from] blockdiff_core::error::TrainError),
    /// Checkpoint problem.
    #[error(transparent)]
    Checkpoint(#[from] blockdiff_core::error::CheckpointError),
}

/// Shorthand for an I/O error on `path`.
pub(crate) fn io(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> MusicError + '_ {
    move |source| MusicError::Io {
        path: path.to_path_buf(),
        source,
    }
}
