//! [`Error`]: every way the harness fails.

use std::path::{Path, PathBuf};

/// A harness failure.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The model crate failed (loading, a forward pass, saving).
    #[error(transparent)]
    Model(#[from] skillzip_lm::Error),
    /// A tensor operation failed.
    #[error("tensor operation: {0}")]
    Tensor(#[from] candle_core::Error),
    /// A file format operation failed.
    #[error(transparent)]
    Format(#[from] skillzip_format::Error),
    /// Reading or writing a file failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A file exists but does not hold what it should (a damaged or foreign checkpoint).
    #[error("{file}: {what}")]
    Corrupt {
        /// The file.
        file: String,
        /// What is wrong.
        what: String,
    },
    /// Settings or inputs that cannot work (empty batches, zero steps, …).
    #[error("{0}")]
    InvalidInput(String),
    /// A run directory holds a run made with other settings.
    #[error(
        "{}: holds a run made with other settings ({}); continue it with the same settings or use a fresh directory",
        dir.display(),
        fields.join(", ")
    )]
    RunMismatch {
        /// The run directory.
        dir: PathBuf,
        /// The settings that differ.
        fields: Vec<String>,
    },
}

impl Error {
    /// An I/O error on `path`.
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    /// A damaged-file error.
    pub fn corrupt(file: &Path, what: impl Into<String>) -> Self {
        Self::Corrupt {
            file: file.display().to_string(),
            what: what.into(),
        }
    }
}

/// The harness's result type.
pub type Result<T> = std::result::Result<T, Error>;
