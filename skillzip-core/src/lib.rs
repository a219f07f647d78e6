//! # skillzip-core
//!
//! The SkillZip numerics (DESIGN.md §4): how a fine-tuned weight delta becomes a compressed
//! skillpack layer, and how that layer is applied at run time with integer GEMMs.
//!
//! - [`quant`]: symmetric INT8/INT4 quantizers, INT4 packing and the i32→i8 truncation.
//! - [`runtime`]: the reference runtime (the oracle); [`kernels`]: the same computation on
//!   integer SIMD (AVX-512 VNNI, AVX-VNNI, AVX2, scalar), bit-identical, grouped by skillpack.
//! - [`compress`]: the one-layer SkillZip pipeline; [`baselines`], [`metrics`], [`study`].
//! - [`error`]: the crate's typed [`Error`].
#![deny(missing_docs)]

pub mod baselines;
pub mod compress;
pub mod error;
pub mod gptq;
pub mod invariants;
pub mod kernels;
pub mod layer;
pub mod merge;
pub mod metrics;
pub mod quant;
pub mod rotate;
pub mod runtime;
pub mod smooth;
pub mod study;
pub mod svd;
pub mod synth;

pub use error::{Error, Result};

/// The random generator used everywhere in the crate: every random choice takes an explicit
/// seed, and Xoshiro256++ has a fixed, documented output sequence.
pub type SeededRng = rand::rngs::Xoshiro256PlusPlus;

/// A [`SeededRng`] from a 64-bit seed.
pub fn seeded_rng(seed: u64) -> SeededRng {
    use rand::SeedableRng;
    SeededRng::seed_from_u64(seed)
}
