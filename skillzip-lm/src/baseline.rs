//! The comparison baselines of DESIGN.md §4 (end) applied to whole models: every linear
//! layer of one fine-tune approximated by BitDelta, plain fp16 SVD, ASVD or Delta-CoMe
//! (`skillzip_core::baselines`), so their models can be evaluated side by side with SkillZip
//! bundles on the same inputs.
//!
//! [`approximate_skill`] walks the model one tensor at a time (memory: one base and one tuned
//! tensor plus the parameters it returns):
//! - a **linear weight**: `Δ = θ_tuned − θ_0` in the paper layout `C_i × C_o`, fitted by the
//!   baseline on the skill's calibration rows ([`Split::Calibration`]), measured on its
//!   held-out rows ([`Split::HeldOut`]) the way the method runs (`DeltaApprox::apply`) against
//!   `X·Δ`, and returned as `θ_0 + approx(Δ)ᵀ` (`[out, in]`). A layer whose delta is all zero
//!   is not fitted: it keeps `θ_0` exactly and costs nothing.
//! - **anything else** (embeddings, norms, an untied LM head): `θ_0 + f16(Δ)`, the delta
//!   stored dense in fp16 as a delta-compression baseline would store it (DESIGN §4.8; the same
//!   rounding as SkillZip's `DensePolicy::Skillpack(F16)`), `2·n` bytes when `Δ ≠ 0`, nothing
//!   and exactly `θ_0` otherwise.
//!
//! The parameters it returns build a model with [`crate::skillpack::model_from_params`].

use std::collections::BTreeMap;

use faer::Mat;
use half::f16;
use serde::{Deserialize, Serialize};
use skillzip_core::baselines::{BitDelta, DeltaCoMe, Factored};
use skillzip_core::gptq::GptqConfig;
use skillzip_core::metrics::{DeltaApprox, evaluate};
use skillzip_core::svd::SvdMethod;

use crate::calibrate::{CalibrationSource, SiteStats, Split};
use crate::checkpoint::{Checkpoint, LinearKind, TensorRole, tensor_specs};
use crate::delta::check_same_architecture;
use crate::error::{Error, Result};

/// ASVD's activation exponent (the ASVD paper's α).
pub const ASVD_ALPHA: f32 = 0.5;

/// Seed of the randomized SVD when [`SvdMethod::Auto`] takes that path (large layers).
const SVD_SEED: u64 = 0;

/// A baseline delta compressor applied to every linear layer of a fine-tune.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Baseline {
    /// `sign(Δ) × one scale per matrix`, the scale distilled on the calibration rows.
    BitDelta,
    /// Plain truncated SVD, factors in fp16 (`X16A16B16`).
    Svd16 {
        /// Rank per layer (clamped to `1..=min(C_i, C_o)`).
        rank: usize,
    },
    /// Activation-aware SVD (α = [`ASVD_ALPHA`]), factors in fp16.
    Asvd {
        /// Rank per layer (clamped to `1..=min(C_i, C_o)`).
        rank: usize,
    },
    /// SVD plus mixed-precision GPTQ over singular-vector groups
    /// (`DeltaCoMe::default_groups`: 8 / 3 / 2 bits).
    DeltaCoMe {
        /// Total rank per layer (clamped to `1..=min(C_i, C_o)`).
        rank: usize,
    },
}

impl Baseline {
    /// Every label, in the order of the variants.
    pub const LABELS: [&'static str; 4] = ["bitdelta", "svd16", "asvd", "deltacome"];

    /// The method's stable name: `bitdelta`, `svd16`, `asvd` or `deltacome`.
    pub fn label(&self) -> &'static str {
        match self {
            Self::BitDelta => Self::LABELS[0],
            Self::Svd16 { .. } => Self::LABELS[1],
            Self::Asvd { .. } => Self::LABELS[2],
            Self::DeltaCoMe { .. } => Self::LABELS[3],
        }
    }

    /// The baseline named `label` (case-insensitive) at `rank` (ignored by BitDelta); `None`
    /// for an unknown name.
    pub fn from_label(label: &str, rank: usize) -> Option<Self> {
        match label.to_ascii_lowercase().as_str() {
            "bitdelta" => Some(Self::BitDelta),
            "svd16" => Some(Self::Svd16 { rank }),
            "asvd" => Some(Self::Asvd { rank }),
            "deltacome" => Some(Self::DeltaCoMe { rank }),
            _ => None,
        }
    }

    /// The rank asked for (`None` for BitDelta).
    pub fn rank(&self) -> Option<usize> {
        match *self {
            Self::BitDelta => None,
            Self::Svd16 { rank } | Self::Asvd { rank } | Self::DeltaCoMe { rank } => Some(rank),
        }
    }

    /// Fits the baseline to one layer's delta (`C_i × C_o`, not all zero) on calibration rows
    /// (`T × C_i`).
    fn fit(&self, delta: &Mat<f32>, calibration: &Mat<f32>) -> Result<Box<dyn DeltaApprox>> {
        let max_rank = delta.nrows().min(delta.ncols());
        let clamp = |r: usize| r.clamp(1, max_rank);
        let method = SvdMethod::Auto { seed: SVD_SEED };
        let (d, x) = (delta.as_ref(), calibration.as_ref());
        Ok(match *self {
            Self::BitDelta => Box::new(BitDelta::fit(d, Some(x))?),
            Self::Svd16 { rank } => Box::new(Factored::svd16(d, clamp(rank), method)?),
            Self::Asvd { rank } => Box::new(Factored::asvd(d, x, clamp(rank), ASVD_ALPHA, method)?),
            Self::DeltaCoMe { rank } => Box::new(DeltaCoMe::fit(
                d,
                x,
                &DeltaCoMe::default_groups(clamp(rank)),
                &GptqConfig::default(),
                method,
            )?),
        })
    }
}

/// What one linear layer came to under a baseline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BaselineLayer {
    /// HF module name, e.g. `model.layers.0.mlp.down_proj`.
    pub module: String,
    /// Storage bytes of the approximation (scales included; 0 for an all-zero delta).
    pub bytes: usize,
    /// Held-out relative output error `‖XΔ − Ŷ‖_F / ‖XΔ‖_F`, `Ŷ` computed the way the method
    /// runs (0 for an all-zero delta).
    pub rel_output_error: f64,
    /// Relative weight error `‖Δ − Ŵ‖_F / ‖Δ‖_F`.
    pub rel_weight_error: f64,
    /// Held-out rows behind the output error.
    pub heldout_rows: usize,
}

/// What [`approximate_skill`] measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BaselineReport {
    /// The baseline's label ([`Baseline::label`]).
    pub baseline: String,
    /// Every linear layer, in checkpoint order.
    pub layers: Vec<BaselineLayer>,
    /// Bytes of all linear layers' approximations.
    pub linear_bytes: u64,
    /// Bytes of the non-linear tensors' fp16 deltas (only those that are non-zero).
    pub dense_bytes: u64,
}

/// `[out, in]` row-major → `C_i × C_o` (`W = weightᵀ`).
fn paper_layout(flat: &[f32], out: usize, inp: usize) -> Mat<f32> {
    Mat::from_fn(inp, out, |i, o| flat[o * inp + i])
}

/// The rows of one calibration site, checked to be present, non-empty and `n × inp`.
fn site_rows(
    calibration: &dyn CalibrationSource,
    l: usize,
    kind: LinearKind,
    split: Split,
    inp: usize,
) -> Result<SiteStats> {
    let module = kind.module_name(l);
    let skill = calibration.skill();
    let s = calibration.site(l, kind, split)?.ok_or_else(|| {
        Error::InvalidInput(format!(
            "skill {skill}: calibration has no {} rows for {module}",
            split.name()
        ))
    })?;
    if s.rows.ncols() != inp || s.rows.nrows() == 0 {
        return Err(Error::InvalidInput(format!(
            "skill {skill}: {} calibration rows for {module} are {}×{}, expected n×{inp}",
            split.name(),
            s.rows.nrows(),
            s.rows.ncols()
        )));
    }
    Ok(s)
}

/// `θ_0 + approx(Δ)` for every linear weight (`Δ = tuned − base` in the paper layout
/// `C_i × C_o`, the approximation's `weight()` transposed back to `[out, in]`); every other
/// tensor is `θ_0 + f16(Δ)`, the fine-tune's own value through the fp16 delta the baseline
/// stores (its `2·n` bytes counted in `dense_bytes` only when the delta is non-zero; a zero
/// delta stays exactly the base value and costs nothing).
///
/// Linear layers are fitted on `calibration`'s [`Split::Calibration`] rows and measured on
/// its [`Split::HeldOut`] rows; both must be present with `C_i` columns for every linear
/// ([`Error::InvalidInput`] naming the skill and module otherwise). `tuned` must have `base`'s
/// architecture ([`check_same_architecture`]). `progress(index, total)` is called before each
/// tensor. The parameters build a model with [`crate::skillpack::model_from_params`]
/// `(base.config(), params)`.
pub fn approximate_skill(
    base: &Checkpoint,
    tuned: &Checkpoint,
    calibration: &dyn CalibrationSource,
    baseline: Baseline,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<(BTreeMap<String, Vec<f32>>, BaselineReport)> {
    check_same_architecture(base, tuned)?;
    let specs = tensor_specs(base.config());
    let total = specs.len();
    let mut params = BTreeMap::new();
    let mut report = BaselineReport {
        baseline: baseline.label().to_string(),
        layers: Vec::new(),
        linear_bytes: 0,
        dense_bytes: 0,
    };
    for (index, (name, shape, role)) in specs.into_iter().enumerate() {
        progress(index, total);
        let theta0 = base.load_expected(&name, &shape)?.data;
        let theta = tuned.load_expected(&name, &shape)?.data;
        let delta: Vec<f32> = theta.iter().zip(&theta0).map(|(t, b)| t - b).collect();
        let nonzero = delta.iter().any(|v| *v != 0.0);
        let value = match role {
            TensorRole::Linear(l, kind) => {
                let (out, inp) = (shape[0], shape[1]);
                let module = kind.module_name(l);
                let calib = site_rows(calibration, l, kind, Split::Calibration, inp)?;
                let heldout = site_rows(calibration, l, kind, Split::HeldOut, inp)?;
                let x = heldout.rows.as_ref();
                if !nonzero {
                    report.layers.push(BaselineLayer {
                        module,
                        bytes: 0,
                        rel_output_error: 0.0,
                        rel_weight_error: 0.0,
                        heldout_rows: x.nrows(),
                    });
                    theta0
                } else {
                    let d = paper_layout(&delta, out, inp);
                    let approx = baseline.fit(&d, &calib.rows)?;
                    let fidelity = evaluate(approx.as_ref(), d.as_ref(), x, None)?;
                    let w = approx.weight();
                    report.linear_bytes += fidelity.bytes as u64;
                    report.layers.push(BaselineLayer {
                        module,
                        bytes: fidelity.bytes,
                        rel_output_error: fidelity.rel_output_error,
                        rel_weight_error: fidelity.rel_weight_error,
                        heldout_rows: x.nrows(),
                    });
                    // `w` is C_i × C_o; element (i, o) belongs at [o, i] of the weight.
                    theta0
                        .iter()
                        .enumerate()
                        .map(|(idx, b)| b + w[(idx % inp, idx / inp)])
                        .collect()
                }
            }
            TensorRole::Embedding | TensorRole::Norm | TensorRole::LmHead => {
                if nonzero {
                    if let Some(i) = delta.iter().position(|d| !f16::from_f32(*d).is_finite()) {
                        return Err(Error::InvalidInput(format!(
                            "{name}: delta {} at flat index {i} overflows fp16",
                            delta[i]
                        )));
                    }
                    report.dense_bytes += 2 * delta.len() as u64;
                    theta0
                        .iter()
                        .zip(&delta)
                        .map(|(b, d)| b + f16::from_f32(*d).to_f32())
                        .collect()
                } else {
                    theta0
                }
            }
        };
        params.insert(name, value);
    }
    Ok((params, report))
}
