//! The one error type of `skillzip-format`.
//!
//! Every variant names the file it is about (`file`: a path, or a label such as
//! `"<memory>"` for bytes that never touched a disk) and, where one is at fault, the field or
//! tensor. Readers return these for every malformed input; they never panic.

use std::io;

use thiserror::Error;

/// Everything that can go wrong reading, validating or writing SkillZip files.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum Error {
    /// An I/O operation on a file failed (`op` says which: open, read, write, rename, …).
    #[error("{file}: {op} failed: {source}")]
    Io {
        /// The file (the target path for atomic writes).
        file: String,
        /// The operation that failed.
        op: &'static str,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The bytes are not a well-formed safetensors container (bad header length, JSON,
    /// offsets, overflowing shapes, a data section that does not end where the last tensor
    /// ends, …); `detail` is the safetensors reader's message.
    #[error("{file}: not a valid safetensors file: {detail}")]
    Container {
        /// The file.
        file: String,
        /// What the container reader found.
        detail: String,
    },
    /// A header (safetensors JSON header or a manifest) is larger than this reader accepts.
    #[error("{file}: {what} of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// The file.
        file: String,
        /// Which part is too large ("header", "manifest").
        what: &'static str,
        /// Its size in bytes, as the file states it.
        len: u64,
        /// The largest size accepted.
        max: u64,
    },
    /// The file's length differs from what its header describes (truncated or enlarged).
    #[error("{file}: file is {actual} bytes long, but its header describes {expected}")]
    Length {
        /// The file.
        file: String,
        /// The length the header implies.
        expected: u64,
        /// The actual length.
        actual: u64,
    },
    /// A JSON document or field does not parse or does not have the expected structure.
    #[error("{file}: field `{field}` is not valid JSON of the expected form: {detail}")]
    Json {
        /// The file.
        file: String,
        /// The field (a dotted path; `""` for the whole document).
        field: String,
        /// The JSON reader's message.
        detail: String,
    },
    /// A required field is absent.
    #[error("{file}: required field `{field}` is missing")]
    Missing {
        /// The file.
        file: String,
        /// The missing field (a dotted path).
        field: String,
    },
    /// The `format` field names another format.
    #[error("{file}: field `format` is {found:?}, expected {expected:?}")]
    WrongFormat {
        /// The file.
        file: String,
        /// The format this reader understands.
        expected: &'static str,
        /// What the file says.
        found: String,
    },
    /// The `version` field names a version this reader does not support.
    #[error("{file}: field `version` is {found}, this reader supports version {supported}")]
    UnsupportedVersion {
        /// The file.
        file: String,
        /// The version the file states (as JSON text).
        found: String,
        /// The version this reader supports.
        supported: u64,
    },
    /// A field holds a value outside its valid range or form.
    #[error("{file}: field `{field}` is invalid: {reason}")]
    InvalidField {
        /// The file.
        file: String,
        /// The field (a dotted path).
        field: String,
        /// Why it is rejected.
        reason: String,
    },
    /// A tensor the metadata requires is absent.
    #[error("{file}: tensor `{tensor}` is missing")]
    MissingTensor {
        /// The file.
        file: String,
        /// The missing tensor.
        tensor: String,
    },
    /// The file holds a tensor its metadata does not describe.
    #[error("{file}: unexpected tensor `{tensor}`")]
    UnexpectedTensor {
        /// The file.
        file: String,
        /// The extra tensor.
        tensor: String,
    },
    /// A tensor has another dtype than the metadata implies.
    #[error("{file}: tensor `{tensor}` has dtype {found}, expected {expected}")]
    TensorDtype {
        /// The file.
        file: String,
        /// The tensor.
        tensor: String,
        /// The dtype(s) required.
        expected: String,
        /// The dtype found.
        found: String,
    },
    /// A tensor has another shape than the metadata implies.
    #[error("{file}: tensor `{tensor}` has shape {found:?}, expected {expected:?}")]
    TensorShape {
        /// The file.
        file: String,
        /// The tensor.
        tensor: String,
        /// The shape required (computed from the metadata, never from the tensor).
        expected: Vec<usize>,
        /// The shape found.
        found: Vec<usize>,
    },
    /// A tensor holds a NaN or an infinity (or a value that overflows its storage type).
    #[error("{file}: tensor `{tensor}` holds a non-finite value at flat index {index}")]
    NonFinite {
        /// The file.
        file: String,
        /// The tensor.
        tensor: String,
        /// Row-major flat index of the first offending value.
        index: usize,
    },
    /// The stored checksum does not match the content.
    #[error("{file}: field `checksum` is {expected}, but the content hashes to {computed}")]
    ChecksumMismatch {
        /// The file.
        file: String,
        /// The checksum stored in the file.
        expected: String,
        /// The checksum of the content.
        computed: String,
    },
    /// A layer's tensors are well-formed but `CompressedLayer::new` rejects them (codes off
    /// the grid, shapes, reduction length, …).
    #[error("{file}: layer `{module}` is invalid: {source}")]
    InvalidLayer {
        /// The file.
        file: String,
        /// The module name of the layer.
        module: String,
        /// What `skillzip-core` found.
        #[source]
        source: skillzip_core::Error,
    },
    /// A skillpack was made for another base model than the one it is applied to.
    #[error("{file}: field `base.{field}` is {found:?}, but the base model has {expected:?}")]
    BackboneMismatch {
        /// The skillpack (path or label).
        file: String,
        /// `architecture` or `backbone_hash`.
        field: &'static str,
        /// The base model's value.
        expected: String,
        /// The skillpack's value.
        found: String,
    },
    /// A name that must be unique appears twice.
    #[error("{file}: field `{field}` names {name:?} twice")]
    Duplicate {
        /// The file.
        file: String,
        /// The field holding the names.
        field: String,
        /// The repeated name.
        name: String,
    },
    /// A file listed in a bundle manifest has another size than the manifest states.
    #[error("{file}: file is {actual} bytes, the manifest lists {expected}")]
    FileSize {
        /// The listed file.
        file: String,
        /// The size the manifest states.
        expected: u64,
        /// The size on disk.
        actual: u64,
    },
    /// A file listed in a bundle manifest has another SHA-256 than the manifest states.
    #[error("{file}: SHA-256 is {computed}, the manifest lists {expected}")]
    FileDigest {
        /// The listed file.
        file: String,
        /// The digest the manifest states.
        expected: String,
        /// The digest of the file's bytes.
        computed: String,
    },
    /// A bundle was asked for a skill its manifest does not list.
    #[error("{file}: no skillpack named {name:?}")]
    UnknownSkill {
        /// The manifest.
        file: String,
        /// The requested skill.
        name: String,
    },
}

impl Error {
    /// The file (path or label) the error is about.
    pub fn file(&self) -> &str {
        match self {
            Error::Io { file, .. }
            | Error::Container { file, .. }
            | Error::TooLarge { file, .. }
            | Error::Length { file, .. }
            | Error::Json { file, .. }
            | Error::Missing { file, .. }
            | Error::WrongFormat { file, .. }
            | Error::UnsupportedVersion { file, .. }
            | Error::InvalidField { file, .. }
            | Error::MissingTensor { file, .. }
            | Error::UnexpectedTensor { file, .. }
            | Error::TensorDtype { file, .. }
            | Error::TensorShape { file, .. }
            | Error::NonFinite { file, .. }
            | Error::ChecksumMismatch { file, .. }
            | Error::InvalidLayer { file, .. }
            | Error::BackboneMismatch { file, .. }
            | Error::Duplicate { file, .. }
            | Error::FileSize { file, .. }
            | Error::FileDigest { file, .. }
            | Error::UnknownSkill { file, .. } => file,
        }
    }

    pub(crate) fn io(file: &str, op: &'static str, source: io::Error) -> Self {
        Error::Io {
            file: file.to_string(),
            op,
            source,
        }
    }

    pub(crate) fn invalid(file: &str, field: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::InvalidField {
            file: file.to_string(),
            field: field.into(),
            reason: reason.into(),
        }
    }

    pub(crate) fn json(file: &str, field: impl Into<String>, detail: impl ToString) -> Self {
        Error::Json {
            file: file.to_string(),
            field: field.into(),
            detail: detail.to_string(),
        }
    }
}

/// `Result` with [`Error`](enum@Error).
pub type Result<T> = std::result::Result<T, Error>;
