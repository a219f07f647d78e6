//! The reference runtime (DESIGN.md §4.6): applies a [`CompressedLayer`] to token rows with
//! exact integer parts. This is the oracle the fast CPU kernels and the PTX kernels must match.
//!
//! Per token row `t`:
//! 1. `u = x_t ⊙ s⁻¹` (f32), `x̂ = sat(rne(u · qmax/amax))`, `σ_x = amax/qmax`;
//! 2. `z = x̂·Âᵀ` in exact i32;
//! 3. `ẑ = sat(rne_shift(z·M, 31))` with `M` dynamic (`⌊127·2³¹/zmax⌋`) or static;
//! 4. `acc = ẑ·B̂ᵀ` in exact i32;
//! 5. `y_t[o] += (s_t · f32(acc_o)) · σ_B[o]` with `s_t = (σ_x · σ_A) · f32(2³¹/M)`, each
//!    operation a single f32 rounding in exactly this order (so float outputs are
//!    bit-identical wherever the same order is used).

use crate::error::{Error, Result, ensure_finite, ensure_shape};
use crate::layer::{CompressedLayer, Truncation};
use crate::quant::{quantize_activation_row, truncate_row, truncate_row_with, truncation_scale};

/// Per-row buffers of the reference runtime, reusable across calls.
#[derive(Debug, Clone, Default)]
pub struct Scratch {
    x_hat: Vec<i8>,
    z: Vec<i32>,
    z_hat: Vec<i8>,
    acc: Vec<i32>,
}

/// Every intermediate of one token row — the debug tap GPU and fast-kernel tests compare.
#[derive(Debug, Clone, PartialEq)]
pub struct RowTrace {
    /// Quantized smoothed activation `x̂` (`C_i`).
    pub x_hat: Vec<i8>,
    /// Activation scale `σ_x`.
    pub sigma_x: f32,
    /// `z = x̂·Âᵀ` (`R`).
    pub z: Vec<i32>,
    /// The truncation multiplier `M` used.
    pub m: u64,
    /// Truncated intermediate `ẑ` (`R`).
    pub z_hat: Vec<i8>,
    /// `acc = ẑ·B̂ᵀ` (`C_o`).
    pub acc: Vec<i32>,
    /// The contribution added to the output row (`C_o`).
    pub y: Vec<f32>,
}

fn dot_i8(a: &[i8], b: &[i8]) -> i32 {
    a.iter().zip(b).map(|(&x, &w)| x as i32 * w as i32).sum()
}

/// Runs one row through the layer, adding into `y_row`; returns `(σ_x, M)`.
fn apply_row(
    layer: &CompressedLayer,
    x_row: &[f32],
    y_row: &mut [f32],
    s: &mut Scratch,
) -> (f32, u64) {
    let (ci, r, co) = (layer.c_in(), layer.rank(), layer.c_out());
    s.x_hat.resize(ci, 0);
    s.z.resize(r, 0);
    s.z_hat.resize(r, 0);
    s.acc.resize(co, 0);
    let sigma_x = quantize_activation_row(
        x_row,
        layer.s_inv(),
        layer.act_bits(),
        layer.act_scale(),
        &mut s.x_hat,
    );
    let a = &layer.a().codes;
    for (k, zk) in s.z.iter_mut().enumerate() {
        *zk = dot_i8(&s.x_hat, &a[k * ci..(k + 1) * ci]);
    }
    let m = match layer.truncation() {
        Truncation::Dynamic => truncate_row(&s.z, &mut s.z_hat),
        Truncation::Static { m } => {
            truncate_row_with(&s.z, m, &mut s.z_hat);
            m
        }
    };
    let b = &layer.b().codes;
    for (o, acc) in s.acc.iter_mut().enumerate() {
        *acc = dot_i8(&s.z_hat, &b[o * r..(o + 1) * r]);
    }
    let row_scale = sigma_x * layer.a().scales[0] * truncation_scale(m) as f32;
    for (o, y) in y_row.iter_mut().enumerate() {
        *y += (row_scale * s.acc[o] as f32) * layer.b_scale(o);
    }
    (sigma_x, m)
}

fn check_io(c_in: usize, c_out: usize, x: &[f32], y: &[f32]) -> Result<usize> {
    let t = x.len() / c_in;
    ensure_shape("activations (T × C_i)", (t * c_in, 1), (x.len(), 1))?;
    ensure_shape("output (T × C_o)", (t * c_out, 1), (y.len(), 1))?;
    ensure_finite("activations", x)?;
    Ok(t)
}

/// `y += X̂·Â·B̂` for row-major `x` (`T × C_i`) and `y` (`T × C_o`), the skillpack path of
/// DESIGN.md §1 for tokens that all use `layer`.
pub fn apply(
    layer: &CompressedLayer,
    x: &[f32],
    y: &mut [f32],
    scratch: &mut Scratch,
) -> Result<()> {
    let (ci, co) = (layer.c_in(), layer.c_out());
    let t = check_io(ci, co, x, y)?;
    for row in 0..t {
        apply_row(
            layer,
            &x[row * ci..(row + 1) * ci],
            &mut y[row * co..(row + 1) * co],
            scratch,
        );
    }
    Ok(())
}

/// Applies the layer to one row and returns every intermediate (the debug tap).
pub fn trace_row(layer: &CompressedLayer, x_row: &[f32]) -> Result<RowTrace> {
    let mut y = vec![0.0f32; layer.c_out()];
    check_io(layer.c_in(), layer.c_out(), x_row, &y)?;
    let mut s = Scratch::default();
    let (sigma_x, m) = apply_row(layer, x_row, &mut y, &mut s);
    Ok(RowTrace {
        x_hat: s.x_hat,
        sigma_x,
        z: s.z,
        m,
        z_hat: s.z_hat,
        acc: s.acc,
        y,
    })
}

/// The grouped form: token row `t` uses `layers[skill[t]]`, or no skillpack when
/// `skill[t] = None`. All layers must share `C_i` and `C_o`.
pub fn apply_grouped(
    layers: &[&CompressedLayer],
    skill: &[Option<usize>],
    x: &[f32],
    y: &mut [f32],
    scratch: &mut Scratch,
) -> Result<()> {
    let first = layers.first().ok_or(Error::Empty("skillpack list"))?;
    let (ci, co) = (first.c_in(), first.c_out());
    for l in layers {
        ensure_shape("skillpack (C_i × C_o)", (ci, co), (l.c_in(), l.c_out()))?;
    }
    let t = check_io(ci, co, x, y)?;
    ensure_shape("skill assignment (T)", (t, 1), (skill.len(), 1))?;
    if let Some((row, index)) = skill
        .iter()
        .enumerate()
        .find_map(|(row, s)| s.filter(|&i| i >= layers.len()).map(|i| (row, i)))
    {
        return Err(Error::UnknownSkillpack {
            row,
            index,
            count: layers.len(),
        });
    }
    for (row, s) in skill.iter().enumerate() {
        if let Some(i) = *s {
            apply_row(
                layers[i],
                &x[row * ci..(row + 1) * ci],
                &mut y[row * co..(row + 1) * co],
                scratch,
            );
        }
    }
    Ok(())
}

/// First stage for a batch, exactly as [`apply`] computes it: per row `σ_x` and
/// `z = x̂·Âᵀ` (`T × R`, integer-valued f64).
///
/// The integer GEMM runs as an f64 GEMM on integer-valued matrices: every product and partial
/// sum is an integer of magnitude below `C_i·127² < 2³¹ < 2⁵³`, so any summation order is
/// exact and equals the i32 result.
pub fn first_stage(
    s_inv: Option<&[f32]>,
    act_bits: crate::quant::Bits,
    act_scale: crate::quant::ActScale,
    a: &crate::quant::Quantized,
    x: faer::MatRef<'_, f32>,
) -> Result<(faer::Mat<f64>, Vec<f32>)> {
    use faer::Mat;
    let (r, ci, t) = (a.rows, a.cols, x.nrows());
    ensure_shape("activations (T × C_i)", (t, ci), (x.nrows(), x.ncols()))?;
    let mut row = vec![0.0f32; ci];
    let mut codes = vec![0i8; ci];
    let mut sigma_x = vec![0.0f32; t];
    let mut x_hat = Mat::<f64>::zeros(t, ci);
    for tt in 0..t {
        for (i, v) in row.iter_mut().enumerate() {
            *v = x[(tt, i)];
        }
        ensure_finite("activations", &row)?;
        sigma_x[tt] = quantize_activation_row(&row, s_inv, act_bits, act_scale, &mut codes);
        for (i, c) in codes.iter().enumerate() {
            x_hat[(tt, i)] = *c as f64;
        }
    }
    let a_t = Mat::<f64>::from_fn(ci, r, |i, k| a.codes[k * ci + i] as f64);
    Ok((&x_hat * &a_t, sigma_x))
}

/// Truncates row `t` of an integer-valued `z` (`T × R`) into `z_hat_row`, returning `M`.
pub fn truncate_batch_row(
    z: faer::MatRef<'_, f64>,
    t: usize,
    truncation: Truncation,
    z_hat_row: &mut [i8],
) -> u64 {
    let z_row: Vec<i32> = (0..z.ncols()).map(|k| z[(t, k)] as i32).collect();
    match truncation {
        Truncation::Dynamic => truncate_row(&z_row, z_hat_row),
        Truncation::Static { m } => {
            truncate_row_with(&z_row, m, z_hat_row);
            m
        }
    }
}

/// The same computation as [`apply`] for a whole batch, returning `X̂·Â·B̂` (`T × C_o`) bit for
/// bit as [`apply`] would add it to a zero output. Both integer GEMMs run as exact f64 GEMMs
/// (see [`first_stage`]). Used where many candidates are evaluated (α search, rotation
/// selection) and by the metrics.
pub fn apply_batched(layer: &CompressedLayer, x: faer::MatRef<'_, f32>) -> Result<faer::Mat<f32>> {
    use faer::Mat;
    let (r, co, t) = (layer.rank(), layer.c_out(), x.nrows());
    let (z, sigma_x) = first_stage(
        layer.s_inv(),
        layer.act_bits(),
        layer.act_scale(),
        layer.a(),
        x,
    )?;
    let mut z_hat_row = vec![0i8; r];
    let mut z_hat = Mat::<f64>::zeros(t, r);
    let mut row_scale = vec![0.0f32; t];
    for tt in 0..t {
        let m = truncate_batch_row(z.as_ref(), tt, layer.truncation(), &mut z_hat_row);
        for (k, v) in z_hat_row.iter().enumerate() {
            z_hat[(tt, k)] = *v as f64;
        }
        row_scale[tt] = sigma_x[tt] * layer.a().scales[0] * truncation_scale(m) as f32;
    }
    let b_codes = &layer.b().codes;
    let b = Mat::<f64>::from_fn(r, co, |k, o| b_codes[o * r + k] as f64);
    let acc = &z_hat * &b;
    Ok(Mat::from_fn(t, co, |tt, o| {
        0.0f32 + (row_scale[tt] * (acc[(tt, o)] as i32) as f32) * layer.b_scale(o)
    }))
}
