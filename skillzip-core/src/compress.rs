//! The one-layer SkillZip pipeline (DESIGN.md §4 steps 2–6): smooth → truncated SVD → rotate →
//! quantize, with a switch for every ablation.
//!
//! [`compress`] takes a delta `Δ` (`C_i × C_o`, after the shared component was removed — see
//! `shared`), calibration activations (smoothing statistics, Hessians, static scales)
//! and selection activations (choice of α and of the rotation), and returns a
//! [`CompressedLayer`] plus what it chose.
//!
//! Candidate α values and rotations are scored by the end-to-end runtime error on the
//! selection split with round-to-nearest weights (cheap and deterministic); the chosen
//! candidate is then quantized with the configured quantizer (GPTQ by default). Running GPTQ
//! for every candidate would multiply its cost by the number of candidates.

use faer::{Mat, MatRef};

use crate::error::{Error, Result, ensure_finite_mat, ensure_shape};
use crate::gptq::{self, GptqConfig, WeightScales};
use crate::layer::{CompressedLayer, Truncation};
use crate::merge::{MaskSource, MergeConfig, extract_shared};
use crate::metrics::relative_error;
use crate::quant::{ActScale, Bits, Quantized, truncation_multiplier, truncation_scale};
use crate::rotate::{RotationKind, rotate, rotation};
use crate::runtime::{apply_batched, first_stage, truncate_batch_row};
use crate::smooth::{ActStats, DEFAULT_ALPHA_GRID, Smoothing};
use crate::svd::{LowRank, SvdMethod, truncated_svd};

/// Bit widths `X{act}A{a}B{b}` of the activation, `Â` and `B̂` grids. The truncated
/// intermediate `ẑ` is always 8-bit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BitConfig {
    /// Activation grid.
    pub act: Bits,
    /// `Â` grid.
    pub a: Bits,
    /// `B̂` grid.
    pub b: Bits,
}

impl BitConfig {
    /// INT8 everywhere.
    pub const X8A8B8: Self = Self {
        act: Bits::Int8,
        a: Bits::Int8,
        b: Bits::Int8,
    };
    /// INT8 activations, INT4 weights.
    pub const X8A4B4: Self = Self {
        act: Bits::Int8,
        a: Bits::Int4,
        b: Bits::Int4,
    };
    /// INT4 activations and `Â`, INT8 `B̂`.
    pub const X4A4B8: Self = Self {
        act: Bits::Int4,
        a: Bits::Int4,
        b: Bits::Int8,
    };
    /// INT4 everywhere (ẑ stays 8-bit).
    pub const X4A4B4: Self = Self {
        act: Bits::Int4,
        a: Bits::Int4,
        b: Bits::Int4,
    };

    /// The paper's label, e.g. `X8A4B4`.
    pub fn label(&self) -> String {
        format!("X{}A{}B{}", self.act.bits(), self.a.bits(), self.b.bits())
    }

    /// The grid a label names: `X8A8B8`, `X8A4B4`, `X4A4B8` or `X4A4B4` (the runtime's
    /// grids); `None` for anything else.
    pub fn from_label(label: &str) -> Option<Self> {
        [Self::X8A8B8, Self::X8A4B4, Self::X4A4B8, Self::X4A4B4]
            .into_iter()
            .find(|b| b.label() == label)
    }
}

/// Which weight quantizer produces `Â` and `B̂`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum WeightQuantizer {
    /// GPTQ with `H_A = X_sᵀX_s` and `H_B = ZᵀZ` (the default).
    Gptq(GptqConfig),
    /// Round-to-nearest.
    Rtn,
}

/// Whether a runtime scale is measured per token row or fixed from calibration.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ScaleMode {
    /// Measured on every token row.
    Dynamic,
    /// Fixed per tensor at the given percentile (0–100] of the per-row maxima on calibration.
    Static {
        /// Percentile of the calibration row maxima.
        percentile: f64,
    },
}

/// Everything [`compress`] can be told.
#[derive(Debug, Clone, PartialEq)]
pub struct CompressConfig {
    /// Rank `R` of the low-rank factors.
    pub rank: usize,
    /// Quantization grids.
    pub bits: BitConfig,
    /// Channel-wise smoothing on/off.
    pub smooth: bool,
    /// Smoothing exponents searched on the selection split.
    pub alpha_grid: Vec<f32>,
    /// Rank-wise rotation on/off.
    pub rotate: bool,
    /// The rotation family.
    pub rotation: RotationKind,
    /// Number of rotation candidates (each a seed).
    pub rotation_candidates: usize,
    /// Seed of every random choice (rotations, randomized SVD).
    pub seed: u64,
    /// Weight quantizer.
    pub weights: WeightQuantizer,
    /// Scale granularity of `B̂`.
    pub b_scales: WeightScales,
    /// Activation scale mode.
    pub activation: ScaleMode,
    /// Truncation mode for `z → ẑ`.
    pub truncation: ScaleMode,
    /// How the truncated SVD is computed.
    pub svd: SvdMethod,
    /// Power iterations of the randomized SVD that scores α candidates when `svd` resolves
    /// to the randomized method and more than one α is searched. The chosen α is then
    /// factorised again with `svd`. Ranking candidates needs less accuracy than the final
    /// factors, and the search would otherwise cost one full SVD per α.
    pub alpha_search_power_iters: usize,
}

impl CompressConfig {
    /// The full SkillZip method at rank `rank`: smoothing with the default α grid, 10 Haar
    /// rotation candidates, GPTQ, per-output-channel `B̂` scales, dynamic activation scales and
    /// truncation, X8A8B8.
    pub fn skillzip(rank: usize) -> Self {
        Self {
            rank,
            bits: BitConfig::X8A8B8,
            smooth: true,
            alpha_grid: DEFAULT_ALPHA_GRID.to_vec(),
            rotate: true,
            rotation: RotationKind::Haar,
            rotation_candidates: 10,
            seed: 0,
            weights: WeightQuantizer::Gptq(GptqConfig::default()),
            b_scales: WeightScales::PerOutput,
            activation: ScaleMode::Dynamic,
            truncation: ScaleMode::Dynamic,
            svd: SvdMethod::Auto { seed: 0 },
            alpha_search_power_iters: 1,
        }
    }

    fn validate(&self, c_in: usize, c_out: usize) -> Result<()> {
        if self.rank == 0 || self.rank > c_in.min(c_out) {
            return Err(Error::InvalidConfig(format!(
                "rank {} is outside 1..={} for a {c_in}×{c_out} delta",
                self.rank,
                c_in.min(c_out)
            )));
        }
        if self.smooth && self.alpha_grid.is_empty() {
            return Err(Error::InvalidConfig(
                "smoothing is on but the α grid is empty".into(),
            ));
        }
        if self.rotate && self.rotation_candidates == 0 {
            return Err(Error::InvalidConfig(
                "rotation is on but there are 0 candidates".into(),
            ));
        }
        for mode in [self.activation, self.truncation] {
            if let ScaleMode::Static { percentile } = mode
                && !(percentile > 0.0 && percentile <= 100.0)
            {
                return Err(Error::InvalidConfig(format!(
                    "percentile {percentile} is outside (0, 100]"
                )));
            }
        }
        Ok(())
    }
}

/// Activations a layer is compressed with. The two splits must be disjoint.
#[derive(Debug, Clone, Copy)]
pub struct CalibrationData<'a> {
    /// Rows for smoothing statistics, Hessians and static scales (`T_c × C_i`).
    pub calibration: MatRef<'a, f32>,
    /// Rows for choosing α and the rotation (`T_s × C_i`).
    pub selection: MatRef<'a, f32>,
}

/// The result of [`compress`].
#[derive(Debug, Clone)]
pub struct Compressed {
    /// The compressed layer.
    pub layer: CompressedLayer,
    /// The chosen smoothing exponent (None when smoothing is off).
    pub alpha: Option<f32>,
    /// The index of the chosen rotation candidate (None when rotation is off).
    pub rotation_candidate: Option<usize>,
    /// Relative output error of the final layer on the selection split.
    pub selection_error: f64,
    /// Number of calibration tokens behind the Hessians and scales.
    pub calibration_tokens: usize,
}

/// One finished step of [`compress_with_progress`], for progress reports on large layers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Progress {
    /// A smoothing exponent was scored (`None`: smoothing off).
    Alpha {
        /// The exponent.
        alpha: Option<f32>,
        /// Its relative output error on the selection split (RTN weights).
        selection_error: f64,
    },
    /// The chosen α was factorised again with the final SVD method.
    Refactorised,
    /// A rotation candidate was scored.
    Rotation {
        /// Candidate index.
        candidate: usize,
        /// Its relative output error on the selection split (RTN weights).
        selection_error: f64,
    },
    /// The final weights were quantized (GPTQ or RTN).
    Quantized {
        /// The final layer's relative output error on the selection split.
        selection_error: f64,
    },
}

/// Compresses one linear delta (`C_i × C_o`) with SkillZip.
pub fn compress(
    delta: MatRef<'_, f32>,
    data: &CalibrationData<'_>,
    cfg: &CompressConfig,
) -> Result<Compressed> {
    compress_with_progress(delta, data, cfg, &mut |_| {})
}

/// [`compress`], calling `progress` after every step.
pub fn compress_with_progress(
    delta: MatRef<'_, f32>,
    data: &CalibrationData<'_>,
    cfg: &CompressConfig,
    progress: &mut dyn FnMut(Progress),
) -> Result<Compressed> {
    let (c_in, c_out) = (delta.nrows(), delta.ncols());
    cfg.validate(c_in, c_out)?;
    ensure_finite_mat("delta", delta)?;
    for (what, x) in [
        ("calibration activations", data.calibration),
        ("selection activations", data.selection),
    ] {
        ensure_shape(what, (x.nrows(), c_in), (x.nrows(), x.ncols()))?;
        if x.nrows() == 0 {
            return Err(Error::Empty(what));
        }
        ensure_finite_mat(what, x)?;
    }
    let reference = data.selection * delta;
    let score = |layer: &CompressedLayer| -> Result<f64> {
        Ok(relative_error(
            reference.as_ref(),
            apply_batched(layer, data.selection)?.as_ref(),
        ))
    };

    // Step 2 + 3: for each α, smooth and factorise; keep the α with the lowest error.
    let alphas: Vec<Option<f32>> = if cfg.smooth {
        cfg.alpha_grid.iter().map(|a| Some(*a)).collect()
    } else {
        vec![None]
    };
    let mean_abs = {
        let mut stats = ActStats::new(c_in, 0, cfg.seed);
        stats.observe(data.calibration)?;
        stats.mean_abs()
    };
    let final_svd = cfg.svd.resolve(c_in, c_out, cfg.rank);
    let search_svd = match final_svd {
        SvdMethod::Randomized {
            oversample, seed, ..
        } if alphas.len() > 1 => SvdMethod::Randomized {
            oversample,
            power_iters: cfg.alpha_search_power_iters,
            seed,
        },
        other => other,
    };
    let smoothed = |smoothing: &Option<Smoothing>| match smoothing {
        Some(s) => s.smooth_weight(delta),
        None => delta.to_owned(),
    };
    let mut best: Option<(f64, Option<f32>, Option<Smoothing>, LowRank)> = None;
    for alpha in alphas {
        let smoothing = alpha
            .map(|a| Smoothing::from_stats(&mean_abs, a))
            .transpose()?;
        let low = truncated_svd(smoothed(&smoothing).as_ref(), cfg.rank, search_svd)?;
        let err = score(&quantize(
            &low,
            smoothing.as_ref(),
            data.calibration,
            cfg,
            false,
        )?)?;
        progress(Progress::Alpha {
            alpha,
            selection_error: err,
        });
        if best.as_ref().is_none_or(|b| err < b.0) {
            best = Some((err, alpha, smoothing, low));
        }
    }
    let (_, alpha, smoothing, mut low) = best.expect("at least one α candidate");
    if search_svd != final_svd {
        low = truncated_svd(smoothed(&smoothing).as_ref(), cfg.rank, final_svd)?;
        progress(Progress::Refactorised);
    }

    // Step 4: best of N rotations.
    let mut rotation_candidate = None;
    if cfg.rotate {
        let mut best_rot: Option<(f64, usize, LowRank)> = None;
        for i in 0..cfg.rotation_candidates {
            let seed = cfg
                .seed
                .wrapping_add(0x9e37_79b9_7f4a_7c15u64.wrapping_mul(i as u64 + 1));
            let q = rotation(cfg.rotation, cfg.rank, seed).ok_or_else(|| {
                Error::InvalidConfig(format!(
                    "no {:?} rotation of size {} exists",
                    cfg.rotation, cfg.rank
                ))
            })?;
            let rotated = rotate(&low, q.as_ref());
            let err = score(&quantize(
                &rotated,
                smoothing.as_ref(),
                data.calibration,
                cfg,
                false,
            )?)?;
            progress(Progress::Rotation {
                candidate: i,
                selection_error: err,
            });
            if best_rot.as_ref().is_none_or(|b| err < b.0) {
                best_rot = Some((err, i, rotated));
            }
        }
        let (_, i, rotated) = best_rot.expect("at least one rotation candidate");
        rotation_candidate = Some(i);
        low = rotated;
    }

    // Step 5 + 6: final quantization with the configured quantizer.
    let use_gptq = matches!(cfg.weights, WeightQuantizer::Gptq(_));
    let layer = quantize(&low, smoothing.as_ref(), data.calibration, cfg, use_gptq)?;
    let selection_error = score(&layer)?;
    progress(Progress::Quantized { selection_error });
    Ok(Compressed {
        layer,
        alpha,
        rotation_candidate,
        selection_error,
        calibration_tokens: data.calibration.nrows(),
    })
}

/// The value at `percentile` (0–100] of `values` (nearest rank).
fn percentile_of(values: &mut [f32], percentile: f64) -> f32 {
    values.sort_by(f32::total_cmp);
    let rank = ((percentile / 100.0) * values.len() as f64).ceil() as usize;
    values[rank.clamp(1, values.len()) - 1]
}

/// Quantizes the factors of `low` into a runtime layer (steps 5 and 6 set-up).
fn quantize(
    low: &LowRank,
    smoothing: Option<&Smoothing>,
    calibration: MatRef<'_, f32>,
    cfg: &CompressConfig,
    use_gptq: bool,
) -> Result<CompressedLayer> {
    let s_inv = smoothing.map(|s| s.s_inv.clone());
    let gptq_cfg = match cfg.weights {
        WeightQuantizer::Gptq(g) if use_gptq => Some(g),
        _ => None,
    };
    // The smoothed calibration rows feed GPTQ's H_A and a static activation scale only; the
    // candidates scored with RTN and dynamic scales never read them, so skip the copy there.
    let needs_smoothed = gptq_cfg.is_some() || matches!(cfg.activation, ScaleMode::Static { .. });
    let smoothed;
    let x_s: MatRef<'_, f32> = match smoothing {
        Some(s) if needs_smoothed => {
            smoothed = s.smooth_activations(calibration);
            smoothed.as_ref()
        }
        // No smoothing: X_s = X. Smoothing but not needed: never read below.
        _ => calibration,
    };
    let quantize_weight =
        |w: MatRef<'_, f32>, x: MatRef<'_, f32>, bits, scales| -> Result<Quantized> {
            match &gptq_cfg {
                Some(g) => gptq::gptq_from_activations(w, x, bits, scales, g),
                None => gptq::rtn(w, bits, scales),
            }
        };
    let a = quantize_weight(low.a.as_ref(), x_s, cfg.bits.a, WeightScales::PerTensor)?;

    let act_scale = match cfg.activation {
        ScaleMode::Dynamic => ActScale::Dynamic,
        ScaleMode::Static { percentile } => {
            let mut row_amax: Vec<f32> = (0..x_s.nrows())
                .map(|t| (0..x_s.ncols()).fold(0.0f32, |m, i| m.max(x_s[(t, i)].abs())))
                .collect();
            ActScale::Static {
                amax: percentile_of(&mut row_amax, percentile),
            }
        }
    };
    if gptq_cfg.is_none() && cfg.truncation == ScaleMode::Dynamic {
        // Neither H_B nor a static M needs the calibration intermediate.
        let b = gptq::rtn(low.b.as_ref(), cfg.bits.b, cfg.b_scales)?;
        return CompressedLayer::new(s_inv, cfg.bits.act, act_scale, a, b, Truncation::Dynamic);
    }
    let (z, sigma_x) = first_stage(s_inv.as_deref(), cfg.bits.act, act_scale, &a, calibration)?;
    let truncation = match cfg.truncation {
        ScaleMode::Dynamic => Truncation::Dynamic,
        ScaleMode::Static { percentile } => {
            let mut zmax: Vec<f32> = (0..z.nrows())
                .map(|t| (0..z.ncols()).fold(0.0f64, |m, k| m.max(z[(t, k)].abs())) as f32)
                .collect();
            let p = percentile_of(&mut zmax, percentile);
            Truncation::Static {
                m: truncation_multiplier(p.min(u32::MAX as f32) as u32),
            }
        }
    };
    // What B̂ really multiplies: the dequantized truncated intermediate σ_x·σ_A·ρ·ẑ.
    let mut z_hat_row = vec![0i8; low.rank()];
    let mut zq = Mat::<f32>::zeros(z.nrows(), low.rank());
    for t in 0..z.nrows() {
        let m = truncate_batch_row(z.as_ref(), t, truncation, &mut z_hat_row);
        let scale = sigma_x[t] * a.scales[0] * truncation_scale(m) as f32;
        for (k, v) in z_hat_row.iter().enumerate() {
            zq[(t, k)] = scale * *v as f32;
        }
    }
    drop(z);
    let b = quantize_weight(low.b.as_ref(), zq.as_ref(), cfg.bits.b, cfg.b_scales)?;
    CompressedLayer::new(s_inv, cfg.bits.act, act_scale, a, b, truncation)
}

impl CompressConfig {
    /// Bytes a layer compressed with this configuration occupies (equals
    /// [`CompressedLayer::storage_bytes`] of the result), for choosing ranks at equal bytes.
    pub fn storage_bytes(&self, c_in: usize, c_out: usize) -> usize {
        let r = self.rank;
        let codes = |rows: usize, k: usize, bits: Bits| match bits {
            Bits::Int4 => rows * k.div_ceil(2),
            b => (rows * k * b.bits() as usize).div_ceil(8),
        };
        let b_scales = match self.b_scales {
            WeightScales::PerTensor => 1,
            WeightScales::PerOutput => c_out,
        };
        codes(r, c_in, self.bits.a)
            + 4
            + codes(c_out, r, self.bits.b)
            + 4 * b_scales
            + if self.smooth { 4 * c_in } else { 0 }
            + if matches!(self.activation, ScaleMode::Static { .. }) {
                4
            } else {
                0
            }
            + if matches!(self.truncation, ScaleMode::Static { .. }) {
                8
            } else {
                0
            }
    }

    /// The largest rank whose [`storage_bytes`](Self::storage_bytes) fits in `budget` (at
    /// least 1, at most `min(c_in, c_out)`).
    pub fn rank_for_bytes(&self, c_in: usize, c_out: usize, budget: usize) -> usize {
        let mut probe = self.clone();
        let mut best = 1;
        for r in 1..=c_in.min(c_out) {
            probe.rank = r;
            if probe.storage_bytes(c_in, c_out) > budget {
                break;
            }
            best = r;
        }
        best
    }
}

/// The skillpack layers of one linear layer for `K` skills, with the shared component that
/// goes into the backbone (DESIGN.md §4 step 1).
#[derive(Debug, Clone)]
pub struct SkillLayers {
    /// `Δ_shared = Merge(Δ_1..Δ_K)` (`C_i × C_o`), to be added to the backbone; `None` when
    /// merging is off.
    pub shared: Option<Mat<f32>>,
    /// One compressed layer per skill, standing for `Δ_k − Δ_shared`.
    pub skills: Vec<Compressed>,
}

/// Compresses the deltas of one linear layer for several skills: optionally extracts the shared
/// component with `merge` (then each skill compresses `Δ_k − Δ_shared`), and compresses each
/// skill with its own calibration data.
pub fn compress_skills(
    deltas: &[MatRef<'_, f32>],
    data: &[CalibrationData<'_>],
    merge: Option<(&MergeConfig, &MaskSource)>,
    cfg: &CompressConfig,
) -> Result<SkillLayers> {
    let first = deltas.first().ok_or(Error::Empty("skill deltas"))?;
    let (c_in, c_out) = (first.nrows(), first.ncols());
    ensure_shape(
        "calibration sets (one per skill)",
        (deltas.len(), 1),
        (data.len(), 1),
    )?;
    for d in deltas {
        ensure_shape("skill delta", (c_in, c_out), (d.nrows(), d.ncols()))?;
    }
    let Some((merge_cfg, masks)) = merge else {
        let skills = deltas
            .iter()
            .zip(data)
            .map(|(d, x)| compress(*d, x, cfg))
            .collect::<Result<_>>()?;
        return Ok(SkillLayers {
            shared: None,
            skills,
        });
    };
    // mergekit works on HF `[out, in]` tensors; rows of that layout are columns here.
    let flat: Vec<Vec<f32>> = deltas
        .iter()
        .map(|d| {
            let mut v = Vec::with_capacity(c_in * c_out);
            for o in 0..c_out {
                v.extend((0..c_in).map(|i| d[(i, o)]));
            }
            v
        })
        .collect();
    let (shared, residuals) = extract_shared(&flat, merge_cfg, masks)?;
    let to_mat = |v: &[f32]| Mat::from_fn(c_in, c_out, |i, o| v[o * c_in + i]);
    let skills = residuals
        .iter()
        .zip(data)
        .map(|(r, x)| compress(to_mat(r).as_ref(), x, cfg))
        .collect::<Result<_>>()?;
    Ok(SkillLayers {
        shared: Some(to_mat(&shared)),
        skills,
    })
}
