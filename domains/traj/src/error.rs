//! Typed errors of the trajectory domain. Messages name the file, field or id at fault.

use std::path::PathBuf;

/// Everything that can go wrong in the trajectory domain.
#[derive(Debug, thiserror::Error)]
pub enum TrajError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// An `.osm.pbf` file that is not valid PBF.
    #[error("{path}: not a valid OSM PBF file: {message}")]
    Pbf {
        /// The file.
        path: PathBuf,
        /// What the reader said.
        message: String,
    },
    /// A network without any drivable segment.
    #[error("{path}: no drivable road segments found")]
    EmptyNetwork {
        /// The file.
        path: PathBuf,
    },
    /// A malformed record in a CSV/JSON input.
    #[error("{path}: line {line}: {message}")]
    Format {
        /// The file.
        path: PathBuf,
        /// 1-based line (0 = whole file).
        line: usize,
        /// What is wrong, naming the field.
        message: String,
    },
    /// A segment id that the network does not have.
    #[error("unknown segment id {id}{context}")]
    UnknownSegment {
        /// The id.
        id: i64,
        /// Where it came from (e.g. " in train.csv line 4").
        context: String,
    },
    /// Two consecutive segments of a trip that are not connected.
    #[error("trip {trip}: segment {from} is not followed by {to} in the road graph")]
    Disconnected {
        /// The trip index.
        trip: usize,
        /// Segment before the break.
        from: usize,
        /// Segment after it.
        to: usize,
    },
    /// GPS points that cannot be matched (outside the map, too few...).
    #[error("map matching: {0}")]
    Matching(String),
    /// Invalid settings.
    #[error("invalid setting: {0}")]
    Config(String),
    /// Errors from the core engine.
    #[error(transparent)]
    Train(#[from] blockdiff_core::error::TrainError),
    /// Errors from sampling.
    #[error(transparent)]
    Sample(#[from] blockdiff_core::error::SampleError),
    /// Errors from checkpoints.
    #[error(transparent)]
    Checkpoint(#[from] blockdiff_core::error::CheckpointError),
    /// Errors from plotting.
    #[error("plot {path}: {message}")]
    Plot {
        /// The PNG file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
}

impl TrajError {
    /// An [`TrajError::Io`] for `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}
