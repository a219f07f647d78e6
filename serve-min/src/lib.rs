//! # serve-min
//!
//! A minimal multi-skillpack server: one backbone resident, every skill a small SkillZip
//! skillpack on top, served over OpenAI-compatible HTTP (S-LoRA style: rows of different
//! skills share each decode step).
//!
//! - [`engine`]: the engine thread, continuous batching over a
//!   [`skillzip_lm::model::KvCache::continuous`] cache, new prompts' prefill and the running
//!   requests' decode step in one forward pass, skillpacks grouped per pass through
//!   [`skillzip_lm::skillpack::SkillpackSet`]; a bounded queue; cancellation when a client
//!   leaves.
//! - [`api`]: request bodies parsed into validated [`api::GenerationRequest`]s or typed
//!   errors.
//! - [`server`]: the axum routes (`/v1/completions`, `/v1/chat/completions` with SSE
//!   streaming, `/v1/models`, `/health`, `/metrics`) and the accept loop with a deadline for
//!   each request's header.
//! - [`load`]: a backbone and its skillpacks from a base checkpoint and a bundle, or the
//!   separate-models baseline from the same.
//! - [`store`]: the separate-models baseline the load generator compares against (every skill
//!   its own merged full model, evicted and reloaded within a memory budget).
//! - [`bench`]: the load generator (Gamma arrivals, a skill mix, the paper's serving
//!   statistics; cancellations and malformed requests mixed in for soak runs).
//! - [`error`]: [`ApiError`] (what a client sees) and [`Error`] (what stops a start).
//! - [`fuzzing`]: the check of the `http_body` fuzz target.
//!
//! A request's `model` names a skill, `base`, or `auto`: the bundle's learned router picks the
//! skill from the backbone's hidden states over the prompt (one extra backbone pass, no second
//! model).
#![deny(missing_docs)]

pub mod api;
pub mod bench;
pub mod engine;
pub mod error;
pub mod fuzzing;
pub mod load;
pub mod server;
pub mod store;

pub use error::{ApiError, Error, Result};
