//! The methods SkillZip is measured against, on the same inputs (DESIGN.md §4, end):
//!
//! - [`BitDelta`]: `sign(Δ) × one scale per matrix`, optionally with the scale distilled on
//!   calibration activations (the closed-form optimum of the output error for one layer).
//! - [`Factored`]: fp16 low-rank factors — plain truncated SVD (`X16A16B16`) or ASVD
//!   (activation-aware: SVD of `diag(m^α)·Δ`, scaling folded back into `A`).
//! - [`DeltaCoMe`]: SVD plus mixed-precision GPTQ over groups of singular vectors (e.g. 8, 3
//!   and 2 bits), weights-only quantization with fp activations. Our 3- and 2-bit grids are
//!   symmetric (`[-3, 3]`, `[-1, 1]`) where Delta-CoMe's GPTQ uses asymmetric min–max grids.
//!
//! Every method implements [`DeltaApprox`], so [`crate::metrics::evaluate`] scores them all.

use faer::{Mat, MatRef};
use half::f16;

use crate::error::{Error, Result, ensure_finite_mat, ensure_shape};
use crate::gptq::{self, GptqConfig, WeightScales};
use crate::metrics::DeltaApprox;
use crate::quant::{Bits, Quantized};
use crate::smooth::ActStats;
use crate::svd::{SvdMethod, truncated_svd};

/// BitDelta: `Ŵ = scale · sign(Δ)` (zeros count as +).
#[derive(Debug, Clone)]
pub struct BitDelta {
    signs: Mat<f32>,
    scale: f32,
}

impl BitDelta {
    /// Fits the scale: `mean |Δ|`, or with `calibration` the distilled scale
    /// `⟨XΔ, XS⟩ / ‖XS‖²` that minimises `‖XΔ − scale·XS‖_F` on those rows.
    pub fn fit(delta: MatRef<'_, f32>, calibration: Option<MatRef<'_, f32>>) -> Result<Self> {
        ensure_finite_mat("delta", delta)?;
        if delta.nrows() == 0 || delta.ncols() == 0 {
            return Err(Error::Empty("delta"));
        }
        let signs = Mat::from_fn(delta.nrows(), delta.ncols(), |i, j| {
            if delta[(i, j)] < 0.0 { -1.0 } else { 1.0 }
        });
        let n = (delta.nrows() * delta.ncols()) as f64;
        let mut scale = (0..delta.ncols())
            .map(|j| {
                (0..delta.nrows())
                    .map(|i| delta[(i, j)].abs() as f64)
                    .sum::<f64>()
            })
            .sum::<f64>()
            / n;
        if let Some(x) = calibration {
            ensure_shape(
                "calibration activations",
                (x.nrows(), delta.nrows()),
                (x.nrows(), x.ncols()),
            )?;
            ensure_finite_mat("calibration activations", x)?;
            let xd = x * delta;
            let xs = x * &signs;
            let (mut num, mut den) = (0.0f64, 0.0f64);
            for j in 0..xd.ncols() {
                for i in 0..xd.nrows() {
                    num += xd[(i, j)] as f64 * xs[(i, j)] as f64;
                    den += (xs[(i, j)] as f64).powi(2);
                }
            }
            if den > 0.0 {
                scale = num / den;
            }
        }
        Ok(Self {
            signs,
            scale: scale as f32,
        })
    }

    /// The per-matrix scale.
    pub fn scale(&self) -> f32 {
        self.scale
    }
}

impl DeltaApprox for BitDelta {
    fn apply(&self, x: MatRef<'_, f32>) -> Result<Mat<f32>> {
        ensure_shape(
            "activations",
            (x.nrows(), self.signs.nrows()),
            (x.nrows(), x.ncols()),
        )?;
        let mut y = x * &self.signs;
        y *= faer::Scale(self.scale);
        Ok(y)
    }
    fn weight(&self) -> Mat<f32> {
        let mut w = self.signs.clone();
        w *= faer::Scale(self.scale);
        w
    }
    fn storage_bytes(&self) -> usize {
        (self.signs.nrows() * self.signs.ncols()).div_ceil(8) + 4
    }
}

fn round_f16(m: &Mat<f32>) -> Mat<f32> {
    Mat::from_fn(m.nrows(), m.ncols(), |i, j| {
        f16::from_f32(m[(i, j)]).to_f32()
    })
}

/// Low-rank factors stored in fp16 and applied in f32: `Ŷ = (X·A)·B`.
#[derive(Debug, Clone)]
pub struct Factored {
    a: Mat<f32>,
    b: Mat<f32>,
}

impl Factored {
    /// Plain truncated SVD at `rank`, factors rounded to fp16 (`X16A16B16`).
    pub fn svd16(delta: MatRef<'_, f32>, rank: usize, method: SvdMethod) -> Result<Self> {
        ensure_finite_mat("delta", delta)?;
        let low = truncated_svd(delta, rank, method)?;
        Ok(Self {
            a: round_f16(&low.a),
            b: round_f16(&low.b),
        })
    }

    /// ASVD: SVD of `S·Δ` with `S = diag(m_i^α)` from calibration mean |x| (α = 0.5 in the
    /// ASVD paper), then `A = S⁻¹·U_RΣ^½`; fp16 factors.
    pub fn asvd(
        delta: MatRef<'_, f32>,
        calibration: MatRef<'_, f32>,
        rank: usize,
        alpha: f32,
        method: SvdMethod,
    ) -> Result<Self> {
        ensure_finite_mat("delta", delta)?;
        let mut stats = ActStats::new(delta.nrows(), 0, 0);
        stats.observe(calibration)?;
        let floor = stats.mean_abs().iter().cloned().fold(0.0f64, f64::max) * 1e-5;
        let s: Vec<f32> = stats
            .mean_abs()
            .iter()
            .map(|m| {
                if floor == 0.0 {
                    1.0
                } else {
                    m.max(floor).powf(alpha as f64) as f32
                }
            })
            .collect();
        let scaled = Mat::from_fn(delta.nrows(), delta.ncols(), |i, j| s[i] * delta[(i, j)]);
        let low = truncated_svd(scaled.as_ref(), rank, method)?;
        let a = Mat::from_fn(low.a.nrows(), low.a.ncols(), |i, k| low.a[(i, k)] / s[i]);
        Ok(Self {
            a: round_f16(&a),
            b: round_f16(&low.b),
        })
    }

    /// The rank.
    pub fn rank(&self) -> usize {
        self.a.ncols()
    }
}

impl DeltaApprox for Factored {
    fn apply(&self, x: MatRef<'_, f32>) -> Result<Mat<f32>> {
        ensure_shape(
            "activations",
            (x.nrows(), self.a.nrows()),
            (x.nrows(), x.ncols()),
        )?;
        Ok((x * &self.a) * &self.b)
    }
    fn weight(&self) -> Mat<f32> {
        &self.a * &self.b
    }
    fn storage_bytes(&self) -> usize {
        2 * (self.a.nrows() * self.a.ncols() + self.b.nrows() * self.b.ncols())
    }
}

/// One group of singular vectors of [`DeltaCoMe`] and its grid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrecisionGroup {
    /// Number of singular vectors in the group.
    pub rank: usize,
    /// Their grid.
    pub bits: Bits,
}

/// Delta-CoMe-style mixed precision: the leading singular vectors keep more bits.
#[derive(Debug, Clone)]
pub struct DeltaCoMe {
    groups: Vec<(Quantized, Quantized)>,
    c_in: usize,
    c_out: usize,
}

impl DeltaCoMe {
    /// Delta-CoMe's split for a total rank: 2 vectors at 8 bits, the next 32 at 3 bits, the
    /// rest at 2 bits (fewer when the rank is small).
    pub fn default_groups(rank: usize) -> Vec<PrecisionGroup> {
        let g8 = rank.min(2);
        let g3 = (rank - g8).min(32);
        let g2 = rank - g8 - g3;
        [(g8, Bits::Int8), (g3, Bits::Int3), (g2, Bits::Int2)]
            .into_iter()
            .filter(|(r, _)| *r > 0)
            .map(|(rank, bits)| PrecisionGroup { rank, bits })
            .collect()
    }

    /// SVD at the total rank of `groups`, then GPTQ per group: `A_g` with `H = XᵀX`, `B_g` with
    /// `H = Z_gᵀZ_g` where `Z_g = X·Â_g` (dequantized), per-output-channel scales.
    pub fn fit(
        delta: MatRef<'_, f32>,
        calibration: MatRef<'_, f32>,
        groups: &[PrecisionGroup],
        gptq_cfg: &GptqConfig,
        method: SvdMethod,
    ) -> Result<Self> {
        ensure_finite_mat("delta", delta)?;
        let rank: usize = groups.iter().map(|g| g.rank).sum();
        let low = truncated_svd(delta, rank, method)?;
        let h_a = gptq::hessian(calibration)?;
        let mut out = Vec::with_capacity(groups.len());
        let mut start = 0;
        for g in groups {
            let a = low.a.as_ref().subcols(start, g.rank);
            let b = low.b.as_ref().subrows(start, g.rank);
            let a_q = gptq::gptq(a, h_a.as_ref(), g.bits, WeightScales::PerOutput, gptq_cfg)?;
            let a_deq = Mat::from_fn(a.nrows(), a.ncols(), |i, k| {
                a_q.codes[k * a.nrows() + i] as f32 * a_q.scale_at(k, i)
            });
            let z = calibration * &a_deq;
            let b_q = gptq::gptq_from_activations(
                b,
                z.as_ref(),
                g.bits,
                WeightScales::PerOutput,
                gptq_cfg,
            )?;
            out.push((a_q, b_q));
            start += g.rank;
        }
        Ok(Self {
            groups: out,
            c_in: delta.nrows(),
            c_out: delta.ncols(),
        })
    }

    fn factors(&self) -> (Mat<f32>, Mat<f32>) {
        let rank: usize = self.groups.iter().map(|(a, _)| a.rows).sum();
        let mut a = Mat::<f32>::zeros(self.c_in, rank);
        let mut b = Mat::<f32>::zeros(rank, self.c_out);
        let mut start = 0;
        for (aq, bq) in &self.groups {
            for k in 0..aq.rows {
                for i in 0..self.c_in {
                    a[(i, start + k)] = aq.codes[k * self.c_in + i] as f32 * aq.scale_at(k, i);
                }
                for o in 0..self.c_out {
                    b[(start + k, o)] = bq.codes[o * aq.rows + k] as f32 * bq.scale_at(o, k);
                }
            }
            start += aq.rows;
        }
        (a, b)
    }
}

impl DeltaApprox for DeltaCoMe {
    fn apply(&self, x: MatRef<'_, f32>) -> Result<Mat<f32>> {
        ensure_shape(
            "activations",
            (x.nrows(), self.c_in),
            (x.nrows(), x.ncols()),
        )?;
        let (a, b) = self.factors();
        Ok((x * &a) * &b)
    }
    fn weight(&self) -> Mat<f32> {
        let (a, b) = self.factors();
        &a * &b
    }
    fn storage_bytes(&self) -> usize {
        self.groups
            .iter()
            .map(|(a, b)| a.storage_bytes() + b.storage_bytes())
            .sum()
    }
}
