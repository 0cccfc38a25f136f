//! Typed errors of the robot domain. Messages name the file, tensor, key or field at fault.

use std::path::PathBuf;

/// Everything that can go wrong in the robot domain.
#[derive(Debug, thiserror::Error)]
pub enum RobotError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A malformed demonstrations file.
    #[error("{path}: {message}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong, naming the tensor or metadata field.
        message: String,
    },
    /// An action chunk or token sequence the tokenizer cannot handle.
    #[error("tokenizer: {0}")]
    Tokenizer(#[from] blockdiff_core::error::TokenizerError),
    /// An observation the policy cannot act on.
    #[error("observation: {0}")]
    Observation(String),
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
    /// The policy node could not start or failed.
    #[error("server: {0}")]
    Server(String),
}
