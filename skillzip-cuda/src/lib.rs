//! # skillzip-cuda
//!
//! SkillZip's GPU runtime: the skillpack path of DESIGN.md §4.6 on NVIDIA tensor cores,
//! through hand-written PTX (`ptx/quantize.ptx`, `ptx/lowrank.ptx`, embedded at build time
//! and JIT-compiled by the driver) loaded with `cudarc`. No CUDA toolkit is needed to build;
//! without a driver every entry point returns [`Error::NoDevice`].
//!
//! The buffer layouts and kernel parameters are the ABI of `ptx/README.md`.
//!
//! - [`Gpu`]: one device, its stream and the loaded kernels ([`Gpu::open`]).
//! - [`PackedSkillpack`]: a [`skillzip_core::layer::CompressedLayer`] in the packed device
//!   layout (INT8 or INT4 nibble order, zero padding) — pure host code.
//! - [`DeviceSkillpack`], [`SkillpackSet`], [`Workspace`]: uploaded weights, the descriptor
//!   table of the skillpacks one call may use, and the per-call intermediates.
//! - [`Gpu::apply`]: `y += X̂·Â·B̂` for f32/f16/bf16 activations and outputs ([`GpuFloat`]),
//!   one skillpack for every row or one per row; [`Gpu::read_tap`] copies back every
//!   intermediate for bit-exact comparisons with [`skillzip_core::runtime`].
//! - [`baseline`]: the dense and fp16 low-rank cuBLAS baselines; [`graph`]: CUDA-graph capture
//!   of the three launches.
//! - [`Error`]: the crate's typed error.
#![deny(missing_docs)]

pub mod baseline;
pub mod device;
pub mod error;
pub mod graph;
pub mod lowrank;
pub mod pack;

pub use device::{Gpu, LOWRANK_PTX, LOWRANK_SMEM_BYTES, QUANTIZE_PTX, open_or_skip};
pub use error::{Error, Result};
pub use lowrank::{
    DeviceSkillpack, GpuFloat, LaunchPlan, SkillpackSet, Tap, Workspace, plan_launch,
};
pub use pack::PackedSkillpack;
