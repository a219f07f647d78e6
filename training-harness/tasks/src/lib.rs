//! # skillzip-tasks
//!
//! The skills SkillWeave's harness trains, and how their answers are judged.
//!
//! - [`task`]: [`Task`]s with seeded generators per [`Domain`] (math word problems,
//!   instruction following with verifiable constraints, multiple-choice reasoning, small Python
//!   functions with unit tests), difficulty levels, and disjoint train / held-out splits.
//! - [`jsonl`]: users' own prompts and checks as JSONL ([`fuzzing`]: its fuzz target's checks).
//! - [`verify`](mod@verify): rule-based verifiers: a [`Verdict`] (helpful or harmful, with a reason) for one
//!   response to one task.
//! - [`sandbox`]: runs untrusted Python in fresh namespaces as an unprivileged user with process,
//!   time, memory and file-size limits, no network and a scratch directory removed after.
#![deny(missing_docs)]

pub mod fuzzing;
pub mod jsonl;
pub mod sandbox;
pub mod task;
pub mod verify;

pub use jsonl::{JsonlError, parse_jsonl, read_jsonl};
pub use sandbox::{Exit, RunOutcome, Sandbox, SandboxError, SandboxLimits};
pub use task::{Check, Constraint, Domain, MAX_LEVEL, Split, Task, generate};
pub use verify::{MathExtraction, Verdict, VerifyOptions, verify, verify_with};
