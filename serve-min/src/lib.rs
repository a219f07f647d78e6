//! # serve-min
//!
//! A minimal multi-skillpack server: one backbone resident, every skill a small SkillZip
//! skillpack on top, served over OpenAI-compatible HTTP (S-LoRA style: rows of different
//! skills share each decode step).
//!
//! - [`engine`]: the engine thread, continuous batching over a
//!   [`skillzip_lm::model::KvCache::continuous`] cache, skillpacks grouped per step through
//!   [`skillzip_lm::skillpack::SkillpackSet`]; a bounded queue; cancellation when a client
//!   leaves.
//! - [`api`]: request bodies parsed into validated [`api::GenerationRequest`]s or typed
//!   errors.
//! - [`server`]: the axum routes (`/v1/completions`, `/v1/chat/completions` with SSE
//!   streaming, `/v1/models`, `/health`, `/metrics`).
//! - [`load`]: a backbone and its skillpacks from a base checkpoint and a bundle.
//! - [`bench`]: the load generator (Gamma arrivals, a skill mix, the paper's serving
//!   statistics).
//! - [`error`]: [`ApiError`] (what a client sees) and [`Error`] (what stops a start).
//! - [`fuzzing`]: the check of the `http_body` fuzz target.
//!
//! A request's `model` names a skill, `base`, or `auto`: the bundle's learned router picks the
//! skill from the backbone's hidden states over the prompt (one extra backbone pass, no second
//! model). Not yet here (issue 7 continues): the separate-models baseline server the load
//! generator compares against.
#![deny(missing_docs)]

pub mod api;
pub mod bench;
pub mod engine;
pub mod error;
pub mod fuzzing;
pub mod load;
pub mod server;

pub use error::{ApiError, Error, Result};
