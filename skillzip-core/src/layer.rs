//! [`CompressedLayer`]: one linear delta as a skillpack stores it — the smoothing vector, the
//! quantized low-rank factors and the activation / truncation settings the runtime needs.
//!
//! Stored layouts are K-contiguous (DESIGN.md §4): `Â` is `R × C_i` (one per-tensor scale),
//! `B̂` is `C_o × R` (per-output-channel or per-tensor scales). The rank is stored exactly;
//! padding to an MMA K is a property of a kernel's packed layout, not of this type.

use faer::Mat;

use crate::error::{Error, Result, ensure_finite, ensure_shape};
use crate::quant::{ActScale, Bits, Granularity, Quantized};

/// The largest reduction length for which a sum of `i8 × i8` products in `[-127, 127]²` fits
/// an i32: `⌊(2³¹ − 1) / 127²⌋`.
pub const MAX_EXACT_REDUCTION: usize = 133_144;

/// How the i32 intermediate `z = x̂·Â` is truncated to i8 (DESIGN.md §4.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Truncation {
    /// `M = ⌊127·2³¹ / zmax⌋` measured per token row.
    Dynamic,
    /// `M` fixed per tensor from calibration.
    Static {
        /// The calibrated multiplier.
        m: u64,
    },
}

/// A compressed linear delta, ready for [`crate::runtime::apply`].
#[derive(Debug, Clone, PartialEq)]
pub struct CompressedLayer {
    s_inv: Option<Vec<f32>>,
    act_bits: Bits,
    act_scale: ActScale,
    a: Quantized,
    b: Quantized,
    truncation: Truncation,
}

impl CompressedLayer {
    /// Assembles a layer, validating every shape and value the runtime relies on.
    ///
    /// `a` must be `R × C_i` with one per-tensor scale; `b` must be `C_o × R` with per-row or
    /// per-tensor scales; `s_inv` (if any) has `C_i` finite entries; `C_i` and `R` are at
    /// most [`MAX_EXACT_REDUCTION`].
    pub fn new(
        s_inv: Option<Vec<f32>>,
        act_bits: Bits,
        act_scale: ActScale,
        a: Quantized,
        b: Quantized,
        truncation: Truncation,
    ) -> Result<Self> {
        let (rank, c_in) = (a.rows, a.cols);
        if rank == 0 || c_in == 0 || b.rows == 0 {
            return Err(Error::Empty("compressed layer factors"));
        }
        ensure_shape("B̂ (C_o × R)", (b.rows, rank), (b.rows, b.cols))?;
        ensure_shape("Â codes", (rank * c_in, 1), (a.codes.len(), 1))?;
        ensure_shape("B̂ codes", (b.rows * rank, 1), (b.codes.len(), 1))?;
        if a.granularity != Granularity::PerTensor || a.scales.len() != 1 {
            return Err(Error::InvalidConfig(
                "Â must carry one per-tensor scale".into(),
            ));
        }
        let b_groups = match b.granularity {
            Granularity::PerTensor => 1,
            Granularity::PerRow => b.rows,
            Granularity::PerColumn => {
                return Err(Error::InvalidConfig(
                    "B̂ scales must be per output channel (rows) or per tensor".into(),
                ));
            }
        };
        ensure_shape("B̂ scales", (b_groups, 1), (b.scales.len(), 1))?;
        ensure_finite("Â scale", &a.scales)?;
        ensure_finite("B̂ scales", &b.scales)?;
        for (what, q) in [("Â codes", &a), ("B̂ codes", &b)] {
            let qmax = q.bits.qmax() as i8;
            if q.codes.iter().any(|c| *c < -qmax || *c > qmax) {
                return Err(Error::InvalidConfig(format!(
                    "{what} leave the [-{qmax}, {qmax}] grid"
                )));
            }
        }
        for len in [c_in, rank] {
            if len > MAX_EXACT_REDUCTION {
                return Err(Error::ReductionTooLong {
                    len,
                    max: MAX_EXACT_REDUCTION,
                });
            }
        }
        if let Some(s) = &s_inv {
            ensure_shape("smoothing vector s⁻¹", (c_in, 1), (s.len(), 1))?;
            ensure_finite("smoothing vector s⁻¹", s)?;
        }
        if let ActScale::Static { amax } = act_scale
            && (!amax.is_finite() || amax < 0.0)
        {
            return Err(Error::InvalidConfig(format!(
                "static activation amax {amax} is invalid"
            )));
        }
        Ok(Self {
            s_inv,
            act_bits,
            act_scale,
            a,
            b,
            truncation,
        })
    }

    /// Input channels `C_i`.
    pub fn c_in(&self) -> usize {
        self.a.cols
    }

    /// Output channels `C_o`.
    pub fn c_out(&self) -> usize {
        self.b.rows
    }

    /// Rank `R`.
    pub fn rank(&self) -> usize {
        self.a.rows
    }

    /// The stored smoothing reciprocals, if smoothing is on.
    pub fn s_inv(&self) -> Option<&[f32]> {
        self.s_inv.as_deref()
    }

    /// Activation grid.
    pub fn act_bits(&self) -> Bits {
        self.act_bits
    }

    /// Activation scale mode.
    pub fn act_scale(&self) -> ActScale {
        self.act_scale
    }

    /// `Â`, stored `R × C_i`.
    pub fn a(&self) -> &Quantized {
        &self.a
    }

    /// `B̂`, stored `C_o × R`.
    pub fn b(&self) -> &Quantized {
        &self.b
    }

    /// Truncation mode.
    pub fn truncation(&self) -> Truncation {
        self.truncation
    }

    /// `σ_B` of output channel `o`.
    #[inline]
    pub fn b_scale(&self, o: usize) -> f32 {
        match self.b.granularity {
            Granularity::PerTensor => self.b.scales[0],
            _ => self.b.scales[o],
        }
    }

    /// The dense weight the factors represent, `diag(s⁻¹)·Â_deqᵀ·B̂_deqᵀ` (`C_i × C_o`), used
    /// for the relative weight error. It ignores activation quantization and truncation.
    pub fn effective_weight(&self) -> Mat<f32> {
        let (r, ci, co) = (self.rank(), self.c_in(), self.c_out());
        let a_deq = self.a.dequantize();
        let b_deq = self.b.dequantize();
        let a = Mat::from_fn(ci, r, |i, k| {
            let s = self.s_inv.as_ref().map_or(1.0, |s| s[i]);
            s * a_deq[k * ci + i]
        });
        let b = Mat::from_fn(r, co, |k, o| b_deq[o * r + k]);
        a * b
    }

    /// Bytes in storage: codes (INT4 packed), scales, the smoothing vector and the static
    /// activation / truncation constants.
    pub fn storage_bytes(&self) -> usize {
        let smoothing = self.s_inv.as_ref().map_or(0, |s| 4 * s.len());
        let act = match self.act_scale {
            ActScale::Static { .. } => 4,
            ActScale::Dynamic => 0,
        };
        let trunc = match self.truncation {
            Truncation::Static { .. } => 8,
            Truncation::Dynamic => 0,
        };
        self.a.storage_bytes() + self.b.storage_bytes() + smoothing + act + trunc
    }
}
