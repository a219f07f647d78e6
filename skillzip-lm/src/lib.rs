//! # skillzip-lm
//!
//! A Llama-family decoder on candle (CPU, f32) for SkillZip: the real model behind
//! calibration, self-generation, training and serving.
//!
//! - [`checkpoint::Checkpoint`]: a model on disk (GGUF, safetensors, sharded safetensors),
//!   read one tensor at a time under HF names; [`gguf`]: the validating GGUF reader.
//! - [`config::LlamaConfig`]: hyper-parameters from GGUF metadata or `config.json`.
//! - [`model::Llama`]: the decoder, built from differentiable ops, with a [`model::LinearHook`]
//!   on every linear layer (activation capture, skillpack deltas) and a [`model::KvCache`].
//! - [`tokenizer::Tokenizer`]: byte-level BPE from GGUF metadata or `tokenizer.json`, and
//!   [`tokenizer::ChatTemplate`].
//! - [`generate`]: greedy and sampled generation.
//! - [`baseline`]: the comparison baselines (BitDelta, fp16 SVD, ASVD, Delta-CoMe) applied to
//!   every linear layer of a fine-tune.
//! - [`error`]: the crate's typed [`Error`].
#![deny(missing_docs)]

pub mod baseline;
pub mod calibrate;
pub mod checkpoint;
pub mod compress;
pub mod config;
pub mod delta;
pub mod divergence;
pub mod error;
pub mod finetune;
pub mod fuzzing;
pub mod generate;
pub mod gguf;
pub mod model;
pub mod save;
pub mod skillpack;
pub mod tokenizer;

/// Where the real SmolLM2-135M-Instruct GGUF is expected (DESIGN.md §6): `$SKILLZIP_SMOLLM2_GGUF`,
/// else `scripts/fetch-smollm2.sh`'s cache,
/// `${SKILLZIP_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/skillzip}/smollm2-135m-instruct/`. The
/// file may be absent; callers check.
pub fn smollm2_path() -> std::path::PathBuf {
    use std::path::PathBuf;
    if let Some(p) = std::env::var_os("SKILLZIP_SMOLLM2_GGUF").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    // Set-but-empty counts as unset, as `${X:-…}` in the fetch script.
    let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
    let cache = var("SKILLZIP_CACHE")
        .map(PathBuf::from)
        .or_else(|| var("XDG_CACHE_HOME").map(|c| PathBuf::from(c).join("skillzip")))
        .or_else(|| var("HOME").map(|h| PathBuf::from(h).join(".cache/skillzip")))
        .unwrap_or_else(|| PathBuf::from(".cache/skillzip"));
    cache.join("smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf")
}

pub use error::{Error, Result};
