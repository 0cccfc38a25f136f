//! Typed errors of the DAG domain. Messages name the file, line or field at fault.

use std::path::PathBuf;

/// Everything that can go wrong in the DAG domain.
#[derive(Debug, thiserror::Error)]
pub enum DagError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A malformed benchmark file.
    #[error("{path}: line {line}: {message}")]
    Format {
        /// The file.
        path: PathBuf,
        /// 1-based line (0 = whole file).
        line: usize,
        /// What is wrong, naming the field.
        message: String,
    },
    /// A cell that is not a point of the search space.
    #[error("invalid cell: {0}")]
    InvalidCell(String),
    /// A token sequence that does not decode to a cell.
    #[error("cannot decode tokens: {0}")]
    Decode(String),
    /// Bad settings.
    #[error("configuration: {0}")]
    Config(String),
    /// Sampling failed.
    #[error(transparent)]
    Sample(#[from] blockdiff_core::error::SampleError),
    /// Training failed.
    #[error(transparent)]
    Train(#[from] blockdiff_core::error::TrainError),
    /// Checkpoint problem.
    #[error(transparent)]
    Checkpoint(#[from] blockdiff_core::error::CheckpointError),
    /// A plot could not be drawn.
    #[error("{path}: plot failed: {message}")]
    Plot {
        /// The PNG.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
}
