//! Shared fixtures of the SkillZip benches: the paper's shapes and the synthetic inputs
//! (power-law deltas, activations with outlier channels) they are measured on.
#![deny(missing_docs)]

use faer::Mat;
use skillzip_core::compress::CompressConfig;
use skillzip_core::synth::{ActivationModel, Splits, power_law_matrix};

/// A linear layer shape from the paper's kernel table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    /// Name used in bench ids.
    pub name: &'static str,
    /// Input channels `C_i`.
    pub c_in: usize,
    /// Output channels `C_o`.
    pub c_out: usize,
    /// The paper's rank for this shape.
    pub rank: usize,
}

/// Llama-3.1-8B `down_proj` (14336 → 4096) at rank 600.
pub const DOWN_PROJ: Shape = Shape {
    name: "llama8b_down_proj",
    c_in: 14336,
    c_out: 4096,
    rank: 600,
};
/// Llama-3.1-8B `q_proj` (4096 → 4096) at rank 400.
pub const Q_PROJ: Shape = Shape {
    name: "llama8b_q_proj",
    c_in: 4096,
    c_out: 4096,
    rank: 400,
};

/// Calibration / selection rows used for compression benches.
pub const SPLITS: (usize, usize, usize) = (1024, 128, 1);

/// A deterministic delta of `shape` with `σ_i ∝ (i+1)^-0.5` and calibration splits.
pub fn fixture(shape: Shape) -> (Mat<f32>, Splits) {
    let delta = power_law_matrix(shape.c_in, shape.c_out, 0.5, 1.0, 7);
    let model = ActivationModel::new(shape.c_in, 64, shape.c_in / 256, 50.0, 8);
    (delta, Splits::draw(&model, SPLITS, 9))
}

/// The full SkillZip configuration the benches time: α search over the default grid,
/// 10 rotation candidates, GPTQ, X8A8B8.
pub fn full_config(shape: Shape) -> CompressConfig {
    CompressConfig::skillzip(shape.rank)
}

/// Peak resident set size of this process in bytes (`VmHWM`), where the OS reports it.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}
