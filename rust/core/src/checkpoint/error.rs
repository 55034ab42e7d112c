//! The checkpoint error type. Every variant names the file (or the input) so the Python layer
//! can raise `CheckpointError` / `CorruptCheckpointError` with a message a user can act on.

use std::fmt;
use std::path::{Path, PathBuf};

/// What went wrong while writing or reading a checkpoint.
#[derive(Debug)]
pub enum CheckpointError {
    /// The operating system refused an operation (permissions, disk full, missing folder...).
    Io {
        path: PathBuf,
        what: String,
        source: std::io::Error,
    },
    /// The file is damaged or is not a ferrotrain checkpoint.
    Corrupt { path: PathBuf, what: String },
    /// The caller asked for something the format cannot hold (a bug in the caller or bad input).
    Invalid(String),
}

impl CheckpointError {
    pub(crate) fn io(path: &Path, what: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.to_path_buf(),
            what: what.into(),
            source,
        }
    }

    pub(crate) fn corrupt(path: &Path, what: impl Into<String>) -> Self {
        Self::Corrupt {
            path: path.to_path_buf(),
            what: what.into(),
        }
    }

    /// True for a damaged or malformed file (as opposed to an I/O failure or bad input).
    pub fn is_corrupt(&self) -> bool {
        matches!(self, Self::Corrupt { .. })
    }
}

impl fmt::Display for CheckpointError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Io { path, what, source } => {
                write!(f, "checkpoint '{}': {what}: {source}", path.display())
            }
            Self::Corrupt { path, what } => {
                write!(f, "corrupt checkpoint '{}': {what}", path.display())
            }
            Self::Invalid(msg) => write!(f, "invalid checkpoint: {msg}"),
        }
    }
}

impl std::error::Error for CheckpointError {}

/// A malformed header or a checksum mismatch, found without knowing the file's name; the I/O layer
/// turns it into `CheckpointError::Corrupt` with the path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FormatError(pub String);

impl FormatError {
    pub(crate) fn new(msg: impl Into<String>) -> Self {
        Self(msg.into())
    }

    pub(crate) fn at(self, path: &Path) -> CheckpointError {
        CheckpointError::corrupt(path, self.0)
    }
}

impl fmt::Display for FormatError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
