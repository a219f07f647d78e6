//! Symmetric integer quantization: the rounding, saturation and special-value rules of
//! DESIGN.md §4, shared by every quantizer in the crate.
//!
//! One rule everywhere: for a group with absolute maximum `amax` and grid `[-qmax, qmax]`
//! (`qmax` = 127 for INT8, 7 for INT4), `inv = qmax / amax` (one correctly rounded f32
//! division), `code = sat(rne(v · inv))` (one f32 multiply, round half to even, saturate;
//! `-qmax - 1` is never produced), and the scale is `amax / qmax`. An all-zero group has
//! `amax = 0`, every code 0 and scale 0; so does a group whose `qmax / amax` overflows.
//!
//! Also here: INT4 packing (two codes per byte along K, low nibble first) and the integer
//! truncation of an i32 row to i8 (`M = ⌊127·2³¹/zmax⌋`, `ẑ = sat(rne_shift(z·M, 31))`).

use crate::error::{Result, ensure_finite, ensure_shape};

/// A symmetric quantization grid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Bits {
    /// Codes in `[-127, 127]`.
    Int8,
    /// Codes in `[-7, 7]`, stored packed two per byte.
    Int4,
    /// Codes in `[-3, 3]`; a baseline-only grid (Delta-CoMe's mixed precision).
    Int3,
    /// Codes in `[-1, 1]` (symmetric 2-bit, i.e. ternary); a baseline-only grid.
    Int2,
}

impl Bits {
    /// The largest code magnitude: 127 or 7.
    pub const fn qmax(self) -> i32 {
        match self {
            Bits::Int8 => 127,
            Bits::Int4 => 7,
            Bits::Int3 => 3,
            Bits::Int2 => 1,
        }
    }

    /// Storage bits per code.
    pub const fn bits(self) -> u32 {
        match self {
            Bits::Int8 => 8,
            Bits::Int4 => 4,
            Bits::Int3 => 3,
            Bits::Int2 => 2,
        }
    }
}

/// `(scale, inv)` for a group with absolute maximum `amax`: `scale = amax / qmax` and
/// `inv = qmax / amax`, both single f32 divisions; `(0, 0)` when `amax == 0`.
///
/// A group so small that `qmax / amax` overflows to +inf (`amax < qmax / f32::MAX`, about
/// 3.7e-37 for INT8) is quantized like an all-zero group, `(0, 0)`: otherwise every non-zero
/// value would saturate, and `amax / qmax` may even underflow to a zero scale under non-zero
/// codes. This extends DESIGN.md §4's `amax = 0` rule (found by the `quantizers` fuzz target);
/// every backend applies the same test on `inv`.
#[inline]
pub fn scale_and_inverse(amax: f32, bits: Bits) -> (f32, f32) {
    let q = bits.qmax() as f32;
    let inv = q / amax;
    if amax == 0.0 || inv.is_infinite() {
        (0.0, 0.0)
    } else {
        (amax / q, inv)
    }
}

/// `sat(rne(v · inv))`: the one quantization step of the crate.
#[inline]
pub fn quantize_value(v: f32, inv: f32, bits: Bits) -> i8 {
    let q = bits.qmax() as f32;
    // Saturating in the float domain first keeps the cast exact and in range.
    (v * inv).round_ties_even().clamp(-q, q) as i8
}

/// Largest absolute value of a slice (0 for an empty slice).
#[inline]
pub fn amax(values: &[f32]) -> f32 {
    values.iter().fold(0.0f32, |m, v| m.max(v.abs()))
}

/// How an activation row gets its scale (DESIGN.md §4.6).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ActScale {
    /// `amax` measured on every token row.
    Dynamic,
    /// `amax` fixed per tensor from calibration; larger values saturate.
    Static {
        /// The calibrated absolute maximum of the smoothed activations.
        amax: f32,
    },
}

/// Smooths and quantizes one activation row: `u = x ⊙ s⁻¹` (f32 multiply),
/// `x̂ = sat(rne(u · qmax/amax))`, returning the activation scale `σ_x = amax / qmax`.
///
/// `s_inv = None` means no smoothing. Inputs are assumed finite (runtime contract).
///
/// # Panics
/// If `out.len() != x.len()` or `s_inv` has another length.
pub fn quantize_activation_row(
    x: &[f32],
    s_inv: Option<&[f32]>,
    bits: Bits,
    mode: ActScale,
    out: &mut [i8],
) -> f32 {
    assert_eq!(
        x.len(),
        out.len(),
        "activation row and code buffer differ in length"
    );
    if let Some(s) = s_inv {
        assert_eq!(
            s.len(),
            x.len(),
            "smoothing vector and activation row differ in length"
        );
    }
    let smoothed = |i: usize| match s_inv {
        Some(s) => x[i] * s[i],
        None => x[i],
    };
    let amax = match mode {
        ActScale::Dynamic => (0..x.len()).fold(0.0f32, |m, i| m.max(smoothed(i).abs())),
        ActScale::Static { amax } => amax,
    };
    let (scale, inv) = scale_and_inverse(amax, bits);
    for (i, o) in out.iter_mut().enumerate() {
        *o = quantize_value(smoothed(i), inv, bits);
    }
    scale
}

/// Which elements share one scale.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Granularity {
    /// One scale for the whole tensor.
    PerTensor,
    /// One scale per row (per token for activations; per output channel for a weight stored
    /// `out × in`).
    PerRow,
    /// One scale per column (per channel).
    PerColumn,
}

/// A row-major matrix of integer codes with its scales.
///
/// `codes[r * cols + c]` is element `(r, c)`; `scales` has one entry (per tensor), `rows`
/// entries (per row) or `cols` entries (per column). INT4 codes are kept unpacked here
/// (one per `i8`); [`pack_int4`] produces the storage form.
#[derive(Debug, Clone, PartialEq)]
pub struct Quantized {
    /// Number of rows.
    pub rows: usize,
    /// Number of columns.
    pub cols: usize,
    /// The grid.
    pub bits: Bits,
    /// Which elements share a scale.
    pub granularity: Granularity,
    /// Row-major codes in `[-qmax, qmax]`.
    pub codes: Vec<i8>,
    /// Dequantization scales (`amax / qmax`).
    pub scales: Vec<f32>,
}

impl Quantized {
    /// Quantizes a row-major `rows × cols` matrix with scales measured on the data (dynamic).
    ///
    /// Rejects NaN/Inf and a `values` length other than `rows · cols`.
    pub fn quantize(
        values: &[f32],
        rows: usize,
        cols: usize,
        bits: Bits,
        granularity: Granularity,
    ) -> Result<Self> {
        ensure_shape(
            "quantize input",
            (rows, cols),
            (values.len() / cols.max(1), cols),
        )?;
        ensure_shape("quantize input", (rows * cols, 1), (values.len(), 1))?;
        ensure_finite("quantize input", values)?;
        let group_amax = match granularity {
            Granularity::PerTensor => vec![amax(values)],
            Granularity::PerRow => values.chunks(cols.max(1)).take(rows).map(amax).collect(),
            Granularity::PerColumn => {
                let mut m = vec![0.0f32; cols];
                for row in values.chunks(cols.max(1)) {
                    for (mc, v) in m.iter_mut().zip(row) {
                        *mc = mc.max(v.abs());
                    }
                }
                m
            }
        };
        Self::quantize_static(values, rows, cols, bits, granularity, &group_amax)
    }

    /// Quantizes with given per-group absolute maxima (static scales); values beyond a
    /// group's `amax` saturate.
    pub fn quantize_static(
        values: &[f32],
        rows: usize,
        cols: usize,
        bits: Bits,
        granularity: Granularity,
        group_amax: &[f32],
    ) -> Result<Self> {
        ensure_shape("quantize input", (rows * cols, 1), (values.len(), 1))?;
        ensure_finite("quantize input", values)?;
        ensure_finite("static amax", group_amax)?;
        let groups = group_count(rows, cols, granularity);
        ensure_shape("static amax", (groups, 1), (group_amax.len(), 1))?;
        let pairs: Vec<(f32, f32)> = group_amax
            .iter()
            .map(|&a| scale_and_inverse(a.abs(), bits))
            .collect();
        let mut codes = vec![0i8; values.len()];
        for r in 0..rows {
            for c in 0..cols {
                let (_, inv) = pairs[group_index(r, c, granularity)];
                codes[r * cols + c] = quantize_value(values[r * cols + c], inv, bits);
            }
        }
        Ok(Self {
            rows,
            cols,
            bits,
            granularity,
            codes,
            scales: pairs.iter().map(|p| p.0).collect(),
        })
    }

    /// The scale that applies to element `(r, c)`.
    #[inline]
    pub fn scale_at(&self, r: usize, c: usize) -> f32 {
        self.scales[group_index(r, c, self.granularity)]
    }

    /// Dequantized row-major values `code · scale` (one f32 multiply). For a group whose
    /// `amax` lies within one rounding of `f32::MAX`, `qmax · scale` can round past it and
    /// dequantize to ±inf.
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = Vec::with_capacity(self.codes.len());
        for r in 0..self.rows {
            for c in 0..self.cols {
                out.push(self.codes[r * self.cols + c] as f32 * self.scale_at(r, c));
            }
        }
        out
    }

    /// Bytes this tensor occupies in storage: packed codes (INT4 rows padded to whole bytes;
    /// the baseline-only 3- and 2-bit grids counted as densely bit-packed) plus f32 scales.
    pub fn storage_bytes(&self) -> usize {
        let code_bytes = match self.bits {
            Bits::Int8 => self.rows * self.cols,
            Bits::Int4 => self.rows * self.cols.div_ceil(2),
            Bits::Int3 | Bits::Int2 => {
                (self.rows * self.cols * self.bits.bits() as usize).div_ceil(8)
            }
        };
        code_bytes + 4 * self.scales.len()
    }
}

/// Number of scale groups for a shape and granularity.
pub fn group_count(rows: usize, cols: usize, granularity: Granularity) -> usize {
    match granularity {
        Granularity::PerTensor => 1,
        Granularity::PerRow => rows,
        Granularity::PerColumn => cols,
    }
}

#[inline]
fn group_index(r: usize, c: usize, granularity: Granularity) -> usize {
    match granularity {
        Granularity::PerTensor => 0,
        Granularity::PerRow => r,
        Granularity::PerColumn => c,
    }
}

/// Packs INT4 codes (`rows × k`, row-major, each in `[-8, 7]`) two per byte along K: element
/// `2j` in the low nibble, `2j+1` in the high nibble, two's complement; an odd `k` pads the
/// last high nibble of each row with 0. Output: `rows × ⌈k/2⌉` bytes.
///
/// # Panics
/// If `codes.len() != rows * k`.
pub fn pack_int4(codes: &[i8], rows: usize, k: usize) -> Vec<u8> {
    assert_eq!(
        codes.len(),
        rows * k,
        "pack_int4: codes do not match rows × k"
    );
    let kb = k.div_ceil(2);
    let mut out = vec![0u8; rows * kb];
    for r in 0..rows {
        for j in 0..k {
            let nibble = (codes[r * k + j] as u8) & 0x0f;
            out[r * kb + j / 2] |= nibble << (4 * (j % 2));
        }
    }
    out
}

/// Inverse of [`pack_int4`]: sign-extends each nibble.
///
/// # Panics
/// If `packed.len() != rows * ⌈k/2⌉`.
pub fn unpack_int4(packed: &[u8], rows: usize, k: usize) -> Vec<i8> {
    let kb = k.div_ceil(2);
    assert_eq!(
        packed.len(),
        rows * kb,
        "unpack_int4: packed length does not match rows × ⌈k/2⌉"
    );
    let mut out = Vec::with_capacity(rows * k);
    for r in 0..rows {
        for j in 0..k {
            let byte = packed[r * kb + j / 2];
            let nibble = (byte >> (4 * (j % 2))) & 0x0f;
            // Shift the nibble to the top of an i8 and back to sign-extend it.
            out.push(((nibble << 4) as i8) >> 4);
        }
    }
    out
}

/// The shift of the truncation multiplier: `ẑ = rne(z · M / 2³¹)`.
pub const TRUNCATION_SHIFT: u32 = 31;

/// `M = ⌊127 · 2³¹ / zmax⌋`, or 0 when `zmax == 0` (DESIGN.md §4.6).
#[inline]
pub fn truncation_multiplier(zmax: u32) -> u64 {
    if zmax == 0 {
        0
    } else {
        (127u64 << TRUNCATION_SHIFT) / zmax as u64
    }
}

/// The scale a multiplier applies: `ρ = 2³¹ / M` (0 for `M = 0`), so `z ≈ ρ · ẑ`.
#[inline]
pub fn truncation_scale(m: u64) -> f64 {
    if m == 0 {
        0.0
    } else {
        (1u64 << TRUNCATION_SHIFT) as f64 / m as f64
    }
}

/// `p / 2^shift` rounded half to even, for any sign (exact integer arithmetic).
#[inline]
pub fn rne_shift(p: i128, shift: u32) -> i128 {
    let floor = p >> shift;
    let rem = p - (floor << shift);
    let half = 1i128 << (shift - 1);
    if rem > half || (rem == half && floor & 1 == 1) {
        floor + 1
    } else {
        floor
    }
}

/// Truncates an i32 row to i8 with a given multiplier `M`:
/// `ẑ_r = sat(rne_shift(z_r · M, 31))` in exact integers. `M = 0` gives all zeros.
///
/// # Panics
/// If `out.len() != z.len()`.
pub fn truncate_row_with(z: &[i32], m: u64, out: &mut [i8]) {
    assert_eq!(
        z.len(),
        out.len(),
        "truncate: row and code buffer differ in length"
    );
    for (o, &v) in out.iter_mut().zip(z) {
        let q = rne_shift(v as i128 * m as i128, TRUNCATION_SHIFT);
        *o = q.clamp(-127, 127) as i8;
    }
}

/// Dynamic truncation of one row: measures `zmax`, derives `M`, truncates, returns `M`.
pub fn truncate_row(z: &[i32], out: &mut [i8]) -> u64 {
    let zmax = z.iter().map(|v| v.unsigned_abs()).max().unwrap_or(0);
    let m = truncation_multiplier(zmax);
    truncate_row_with(z, m, out);
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ties_round_to_even_and_saturate_symmetric() {
        assert_eq!(quantize_value(0.5, 1.0, Bits::Int8), 0);
        assert_eq!(quantize_value(1.5, 1.0, Bits::Int8), 2);
        assert_eq!(quantize_value(-2.5, 1.0, Bits::Int8), -2);
        assert_eq!(quantize_value(-1000.0, 1.0, Bits::Int8), -127);
        assert_eq!(quantize_value(-1000.0, 1.0, Bits::Int4), -7);
        assert_eq!(quantize_value(7.5, 1.0, Bits::Int4), 7);
    }

    #[test]
    fn rne_shift_matches_f64_on_small_values() {
        for p in -5000i128..5000 {
            let expect = (p as f64 / 8.0).round_ties_even() as i128;
            assert_eq!(rne_shift(p, 3), expect, "p = {p}");
        }
    }

    #[test]
    fn int4_pack_round_trips_with_odd_k() {
        let codes: Vec<i8> = vec![-7, 7, 0, -1, 3, 1, -8, 5, 2];
        let packed = pack_int4(&codes, 3, 3);
        assert_eq!(packed.len(), 6);
        // Row 0: -7 (0x9) low, 7 (0x7) high; then 0 padded.
        assert_eq!(packed[0], 0x79);
        assert_eq!(packed[1], 0x00);
        assert_eq!(unpack_int4(&packed, 3, 3), codes);
    }

    #[test]
    fn zero_tensor_has_zero_scale_and_codes() {
        let q = Quantized::quantize(&[0.0; 6], 2, 3, Bits::Int8, Granularity::PerRow).unwrap();
        assert_eq!(q.codes, vec![0; 6]);
        assert_eq!(q.scales, vec![0.0; 2]);
    }

    #[test]
    fn nan_is_a_typed_error() {
        let e = Quantized::quantize(&[0.0, f32::NAN], 1, 2, Bits::Int8, Granularity::PerTensor);
        assert!(matches!(e, Err(crate::Error::NonFinite { index: 1, .. })));
    }
}
