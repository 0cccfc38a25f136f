//! Typed errors of the core crate. Messages name the file, field or position at fault.

use std::path::PathBuf;

/// Errors from tokenizers.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    /// A token id outside the vocabulary.
    #[error("token id {id} at position {position} is outside the vocabulary (size {vocab_size})")]
    OutOfVocab {
        /// The offending id.
        id: u32,
        /// Where it was found.
        position: usize,
        /// The vocabulary size.
        vocab_size: usize,
    },
    /// A reserved special token where an item token was expected.
    #[error(
        "token id {id} at position {position} is the special token {name} and cannot be decoded"
    )]
    Special {
        /// The offending id.
        id: u32,
        /// Where it was found.
        position: usize,
        /// The special's name.
        name: String,
    },
    /// An item the tokenizer cannot encode.
    #[error("cannot encode item: {0}")]
    Encode(String),
    /// A token sequence that decodes to no valid item.
    #[error("cannot decode tokens: {0}")]
    Decode(String),
}

/// Errors from saving or loading a checkpoint.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A JSON side file (config, tokenizer, train state) is malformed.
    #[error("{path}: invalid JSON: {message}")]
    Json {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The model config is inconsistent.
    #[error("{path}: invalid model config: {message}")]
    Config {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The weights file is not a readable safetensors file (truncated, corrupt).
    #[error("{path}: corrupt weights file: {message}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A tensor in the weights file does not fit the config.
    #[error("{path}: tensor `{tensor}` has shape {found:?}, the config expects {expected:?}")]
    ShapeMismatch {
        /// The file.
        path: PathBuf,
        /// The tensor's name.
        tensor: String,
        /// Shape the model built from the config has.
        expected: Vec<usize>,
        /// Shape found in the file.
        found: Vec<usize>,
    },
    /// Tensors the config needs are absent from the weights file.
    #[error("{path}: missing tensors {tensors:?}")]
    MissingTensors {
        /// The file.
        path: PathBuf,
        /// Their names.
        tensors: Vec<String>,
    },
    /// The training config of a model to be trained (and then written) is inconsistent.
    #[error(transparent)]
    Train(Box<TrainError>),
    /// Tensors in the weights file that the config does not know.
    #[error("{path}: unexpected tensors {tensors:?} (checkpoint from another config?)")]
    UnexpectedTensors {
        /// The file.
        path: PathBuf,
        /// Their names.
        tensors: Vec<String>,
    },
}

/// Errors from training.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// The training data do not fit the config.
    #[error("training data: {0}")]
    Data(String),
    /// The train config is inconsistent.
    #[error("train config: {0}")]
    Config(String),
    /// Saving or loading a checkpoint failed.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// A data-parallel collective operation (register, all-reduce) failed.
    #[error("data-parallel collective: {0}")]
    Collective(String),
}

impl From<burn::collective::CollectiveError> for TrainError {
    fn from(e: burn::collective::CollectiveError) -> Self {
        Self::Collective(format!("{e:?}"))
    }
}

/// Errors from sampling.
#[derive(Debug, thiserror::Error)]
pub enum SampleError {
    /// The sampler config is inconsistent.
    #[error("sampler config: {0}")]
    Config(String),
    /// A request does not fit the model (prompt too long, wrong condition width...).
    #[error("request {index}: {message}")]
    Request {
        /// Index of the request in the batch.
        index: usize,
        /// What is wrong.
        message: String,
    },
    /// The constraint left no allowed token at a position. Constraints should keep every
    /// partially decoded sequence completable (see [`crate::constraint::Constraint`]).
    #[error("constraint dead end: sample {sample}, position {position} has no allowed token")]
    DeadEnd {
        /// Batch row.
        sample: usize,
        /// Sequence position.
        position: usize,
    },
}
