//! The one error type of `skillzip-lm`.

use std::path::PathBuf;

use thiserror::Error;

/// Everything that can go wrong reading, running or writing a model.
///
/// Errors about files name the file (or the label the caller gave in-memory bytes) and the
/// field or tensor that is wrong, so the CLI can print them as one line.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum Error {
    /// An operating-system I/O error on a file.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A GGUF file is malformed; `what` says which field and why.
    #[error("{file}: malformed GGUF: {what}")]
    Gguf {
        /// The file (or label).
        file: String,
        /// Which field is wrong and how.
        what: String,
    },
    /// A GGUF tensor uses a ggml type this crate does not dequantize.
    #[error("{file}: tensor {tensor} has ggml type {ggml_type}, which is not supported")]
    UnsupportedGgmlType {
        /// The file.
        file: String,
        /// The tensor.
        tensor: String,
        /// The ggml type id (and name where known).
        ggml_type: String,
    },
    /// A safetensors file or its shard index is malformed.
    #[error("{file}: malformed safetensors checkpoint: {what}")]
    Safetensors {
        /// The file (or label).
        file: String,
        /// Which field is wrong and how.
        what: String,
    },
    /// A tensor a model needs is not in the checkpoint.
    #[error("{file}: tensor {tensor} is missing")]
    MissingTensor {
        /// The checkpoint.
        file: String,
        /// The tensor name.
        tensor: String,
    },
    /// A tensor has another shape than the model configuration implies.
    #[error("{file}: tensor {tensor} has shape {got:?}, expected {expected:?}")]
    TensorShape {
        /// The checkpoint.
        file: String,
        /// The tensor name.
        tensor: String,
        /// The shape the configuration implies.
        expected: Vec<usize>,
        /// The shape in the file.
        got: Vec<usize>,
    },
    /// A tensor holds a dtype this crate does not read.
    #[error("{file}: tensor {tensor} has dtype {dtype}, expected F32, F16 or BF16")]
    UnsupportedDtype {
        /// The checkpoint.
        file: String,
        /// The tensor name.
        tensor: String,
        /// The dtype found.
        dtype: String,
    },
    /// A tensor from outside holds NaN or an infinity.
    #[error("{file}: tensor {tensor} holds a non-finite value at flat index {index}")]
    NonFinite {
        /// The checkpoint.
        file: String,
        /// The tensor name.
        tensor: String,
        /// Flat index of the first offending value.
        index: usize,
    },
    /// The model configuration is missing a field or holds an impossible value.
    #[error("{file}: model configuration: {what}")]
    Config {
        /// Where the configuration came from.
        file: String,
        /// What is wrong.
        what: String,
    },
    /// Two checkpoints that must describe the same architecture do not.
    #[error("{what}")]
    ArchitectureMismatch {
        /// Which field differs, with both values and both files.
        what: String,
    },
    /// The tokenizer could not be built or failed on an input.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// The model's chat template is not one this crate can apply.
    #[error("chat template not supported: {0}")]
    ChatTemplate(String),
    /// An argument to a model call is invalid (empty prompt, token id out of range, ...).
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// A candle tensor operation failed.
    #[error("tensor operation: {0}")]
    Candle(#[from] candle_core::Error),
    /// Reading or writing a SkillZip file (skillpack, bundle, atomic write) failed.
    #[error(transparent)]
    Format(#[from] skillzip_format::Error),
    /// A `skillzip-core` operation (kernels, calibration statistics) failed.
    #[error(transparent)]
    Core(#[from] skillzip_core::Error),
}

/// `Result` with [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// An [`Error::Io`] for `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}
