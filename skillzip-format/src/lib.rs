//! # skillzip-format
//!
//! SkillZip's on-disk formats (DESIGN.md §5); the one crate that knows them.
//!
//! - [`Skillpack`]: one skill's compressed layers ([`skillzip_core::layer::CompressedLayer`]),
//!   optional [`DenseTensor`]s, and [`SkillpackMeta`] (skill name, [`BaseModel`], compressor
//!   config), stored as one safetensors file with a checksummed `__metadata__`
//!   ([`write_skillpack`], [`read_skillpack`], [`parse_skillpack`]; layout in [`skillpack`]).
//!   [`SkillpackSummary`] is what `inspect` shows.
//! - [`backbone_hash`] / [`BackboneHasher`]: the identity of the backbone a skillpack applies
//!   to; [`check_backbone`] compares it.
//! - [`Manifest`] and [`Bundle`]: a directory with a backbone delta, several skillpacks and a
//!   router, every file checked against its size and SHA-256 before use; dense tensor files
//!   through [`write_dense_tensors`] / [`read_dense_tensors`].
//! - [`export_peft`]: a PEFT LoRA adapter of the dequantized factors, for vLLM, PEFT, S-LoRA.
//! - [`write_atomic`]: every writer goes through it (temporary file, fsync, rename).
//! - [`Error`]: every failure, naming the file and the field or tensor; readers never panic
//!   and never allocate more than the input's size justifies.
//! - [`fuzzing`]: the checks behind the fuzz targets.
#![deny(missing_docs)]

pub mod atomic;
pub mod bundle;
mod container;
pub mod dense;
pub mod digest;
pub mod error;
pub mod fuzzing;
pub mod peft;
pub mod skillpack;

pub use atomic::{write_atomic, write_atomic_bytes};
pub use bundle::{
    Bundle, BundleBase, FileRef, Manifest, SkillpackRef, file_ref, parse_manifest, read_manifest,
    write_manifest,
};
pub use container::MAX_HEADER_BYTES;
pub use dense::{
    DenseDtype, DenseTensor, DenseTensors, dense_tensors_to_bytes, parse_dense_tensors,
    read_dense_tensors, write_dense_tensors,
};
pub use digest::{BackboneHasher, FileDigest, backbone_hash, hash_file, sha256_hex};
pub use error::{Error, Result};
pub use peft::{PeftDtype, PeftOptions, PeftReport, export_peft};
pub use skillpack::{
    BaseModel, LayerEntry, LayerReport, Skillpack, SkillpackMeta, SkillpackSummary, check_backbone,
    parse_skillpack, read_skillpack, to_bytes, write_skillpack,
};
