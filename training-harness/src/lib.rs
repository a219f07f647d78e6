//! # skillzip-harness
//!
//! SkillWeave's first stage on a real model: the base model improves itself per skill on its
//! own generations, filtered by rule-based verifiers, trained with length-normalised DPO.
//!
//! - [`dpo`]: the LN-DPO objective ([`LnDpo`], [`PreferencePair`], [`dpo::average_logps`]).
//! - [`optim`]: [`AdamW`] (fused, checkpointable) and the warm-up + cosine [`Schedule`].
//! - [`train`]: [`DpoTrainer`]: full-parameter LN-DPO on the linear layers, with checkpoints
//!   that survive a kill.
//! - [`selfgen`]: self-generation: `n` sampled answers per training prompt, judged by
//!   `skillzip_tasks`' verifiers, turned into preference pairs.
//! - [`eval`]: greedy held-out evaluation and accuracy with a Wilson interval.
//! - [`weave`]: the pipeline: per skill self-generate → verify → train → delta; calibrate;
//!   compress into bundles; evaluate every configuration; the results table.
//! - [`router`]: the learned [`Router`]: multinomial logistic regression on the base model's
//!   mean last hidden state of a prompt ([`router::prompt_features`]), saved as JSON.
//! - [`fuzzing`]: the checks of the `trainer_checkpoint` and `router_json` fuzz targets.
//! - [`Error`]: every failure.
#![deny(missing_docs)]

pub mod dpo;
pub mod error;
pub mod eval;
pub mod fuzzing;
pub mod optim;
pub mod router;
pub mod selfgen;
pub mod train;
pub mod weave;

pub use dpo::{LnDpo, PreferencePair};
pub use error::{Error, Result};
pub use eval::{Accuracy, evaluate};
pub use optim::{AdamW, AdamWConfig, Schedule};
pub use router::{Router, RouterConfig};
pub use selfgen::{Generated, Sample, SelfGenConfig, answer_tasks, preference_pairs};
pub use train::{DpoTrainer, StepReport, TrainConfig};
