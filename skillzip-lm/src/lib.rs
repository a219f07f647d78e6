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
pub mod error;
pub mod finetune;
pub mod fuzzing;
pub mod generate;
pub mod gguf;
pub mod model;
pub mod save;
pub mod skillpack;
pub mod tokenizer;

pub use error::{Error, Result};
