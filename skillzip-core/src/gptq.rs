//! Weight quantization for step 5 of DESIGN.md §4: round-to-nearest ([`rtn`]) and GPTQ
//! ([`gptq`], Frantar et al. 2022, "GPTQ: Accurate Post-Training Quantization for Generative
//! Pre-trained Transformers").
//!
//! # Layout
//!
//! A weight `W` is `in × out` in the math (`Y = X·W`, `X` is `T × in`). The result is stored
//! `out × in` (K-contiguous, K = `in`): a [`Quantized`] with `rows = out`, `cols = in` and
//! granularity [`Granularity::PerTensor`] or [`Granularity::PerRow`] (one scale per output
//! channel), codes `codes[o · in + i]` for weight element `W[i, o]`.
//!
//! # One quantization rule
//!
//! Both quantizers fix their scales from the *original* `W` before anything else (the
//! per-tensor `amax`, or the `amax` of each output column of `W`) through
//! [`quant::scale_and_inverse`], and produce every code with [`quant::quantize_value`]
//! (`sat(rne(v · inv))`). GPTQ only changes the values `v` that get rounded — the error of each
//! quantized input row is pushed onto the rows not yet quantized — so GPTQ with an identity
//! Hessian (or any diagonal one) equals RTN bit for bit.
//!
//! # GPTQ
//!
//! In this layout an *input* is a row of `W`. With `H = XᵀX` (`in × in`):
//!
//! 1. dead inputs (`H_ii = 0`, the input channel never fires) get `H_ii = 1` and their row of
//!    `W` is set to zero (their codes come out 0);
//! 2. optionally ([`GptqConfig::act_order`], off by default) inputs are processed in order of
//!    decreasing `H_ii`;
//! 3. damping: `λ = damp · mean(diag H)` is added to the diagonal (mean taken in f64 after
//!    step 1, as in the reference implementation);
//! 4. `U` = the upper Cholesky factor of `H⁻¹` (`H⁻¹ = UᵀU`);
//! 5. inputs are quantized one at a time: for input `i`, `e = (w_i − q_i) / U_ii` and every
//!    later input row `j > i` gets `w_j −= U_ij · e`. Updates inside a block of
//!    [`GptqConfig::block_size`] inputs are applied at once; the rest of the matrix is updated
//!    lazily with one GEMM per block (`W_rest −= U_blockᵀ · E_block`).
//!
//! `U` is computed without forming `H⁻¹`: with `J` the index reversal, `JHJ = L̃L̃ᵀ` (lower
//! Cholesky) gives `H⁻¹ = (J L̃⁻¹ J)ᵀ (J L̃⁻¹ J)`, and `J L̃⁻¹ J` is upper triangular with a
//! positive diagonal, hence *the* upper Cholesky factor of `H⁻¹`. The reversal is a symmetric
//! permutation applied in place, the Cholesky factorisation is faer's in-place `llt`, and the
//! triangular inverse is done in place (recursive, on faer's triangular solves), so
//! [`gptq_owned`] keeps exactly one `in × in` f32 matrix alive; [`gptq`] copies the borrowed
//! Hessian first (two). Everything O(in³) or O(in²·out) runs on faer with its global
//! parallelism, in f32.
//!
//! If the Cholesky factorisation fails after damping, the result is
//! [`Error::NotPositiveDefinite`]`("gptq hessian")`. A Hessian from fewer calibration tokens
//! than `in` is singular and is only well-posed through the damping (DESIGN.md §4 step 5).

use faer::dyn_stack::{MemBuffer, MemStack};
use faer::linalg::cholesky::llt::factor::{cholesky_in_place, cholesky_in_place_scratch};
use faer::linalg::matmul::matmul;
use faer::linalg::matmul::triangular::{BlockStructure, matmul as tri_matmul};
use faer::linalg::triangular_solve::{
    solve_lower_triangular_in_place, solve_upper_triangular_in_place,
};
use faer::prelude::{Reborrow, ReborrowMut};
use faer::{Accum, Mat, MatMut, MatRef, Par};

use crate::error::{Error, Result, ensure_shape};
use crate::quant::{self, Bits, Granularity, Quantized};

/// Which weight elements share one scale.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WeightScales {
    /// One scale for the whole weight (stored as [`Granularity::PerTensor`]).
    PerTensor,
    /// One scale per output channel, i.e. per column of the `in × out` weight (stored as
    /// [`Granularity::PerRow`] of the `out × in` result).
    PerOutput,
}

impl WeightScales {
    /// The granularity of the stored `out × in` [`Quantized`].
    pub const fn granularity(self) -> Granularity {
        match self {
            WeightScales::PerTensor => Granularity::PerTensor,
            WeightScales::PerOutput => Granularity::PerRow,
        }
    }
}

/// GPTQ parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GptqConfig {
    /// Relative damping: `damp · mean(diag H)` is added to the diagonal of `H`. Finite and
    /// `≥ 0`; default 0.01 (DESIGN.md §4 step 5, the reference's `percdamp`).
    pub damp: f32,
    /// Number of inputs whose updates are applied eagerly before one lazy GEMM update of the
    /// remaining inputs. `≥ 1`; default 128. Changes only rounding order, not the algorithm.
    pub block_size: usize,
    /// Process inputs in order of decreasing `H_ii` ("act-order"; the reference's `actorder`).
    /// Ties keep index order. Default `false`. Codes are returned in the original order.
    pub act_order: bool,
}

impl Default for GptqConfig {
    fn default() -> Self {
        Self {
            damp: 0.01,
            block_size: 128,
            act_order: false,
        }
    }
}

impl GptqConfig {
    fn validate(&self) -> Result<()> {
        if !self.damp.is_finite() || self.damp < 0.0 {
            return Err(Error::InvalidConfig(format!(
                "gptq damp must be finite and >= 0, got {}",
                self.damp
            )));
        }
        if self.block_size == 0 {
            return Err(Error::InvalidConfig(
                "gptq block_size must be at least 1".into(),
            ));
        }
        Ok(())
    }
}

/// `H = XᵀX` (`in × in`) from calibration activations `X` (`T × in`, one token per row).
///
/// Scaling: no normalisation — the plain sum over tokens (the reference implementation uses
/// `2/T · XᵀX`). GPTQ's result does not depend on a positive rescaling of `H` beyond float
/// rounding, because its damping is relative to `mean(diag H)`. The lower triangle is computed
/// with faer's triangular GEMM (f32 accumulation, global parallelism) and mirrored, so the
/// result is exactly symmetric. For many tokens, [`accumulate_hessian`] sums batches.
///
/// Errors: [`Error::Empty`] for `T = 0` or `in = 0`, [`Error::NonFinite`] for NaN/Inf.
pub fn hessian(x: MatRef<'_, f32>) -> Result<Mat<f32>> {
    let mut h = Mat::<f32>::zeros(x.ncols(), x.ncols());
    accumulate_hessian(h.as_mut(), x)?;
    Ok(h)
}

/// `H += XᵀX` for one more batch of calibration rows `X` (`T × in`); `h` must be `in × in`
/// and symmetric (only its lower triangle is read; the upper one is overwritten by the
/// mirror of the lower). Same scaling and checks as [`hessian`].
pub fn accumulate_hessian(mut h: MatMut<'_, f32>, x: MatRef<'_, f32>) -> Result<()> {
    if x.nrows() == 0 {
        return Err(Error::Empty("calibration activations"));
    }
    if x.ncols() == 0 {
        return Err(Error::Empty("calibration channels"));
    }
    let n = x.ncols();
    ensure_shape("hessian", (n, n), (h.nrows(), h.ncols()))?;
    ensure_finite_mat("calibration activations", x)?;
    tri_matmul(
        h.rb_mut(),
        BlockStructure::TriangularLower,
        Accum::Add,
        x.transpose(),
        BlockStructure::Rectangular,
        x,
        BlockStructure::Rectangular,
        1.0f32,
        faer::get_global_parallelism(),
    );
    mirror_lower(h);
    Ok(())
}

/// Copies the strict lower triangle of a square matrix onto its upper triangle (tiled, so
/// both sides stay in cache for large matrices).
fn mirror_lower(mut h: MatMut<'_, f32>) {
    const TILE: usize = 64;
    let n = h.nrows();
    for jb in (0..n).step_by(TILE) {
        for ib in (jb..n).step_by(TILE) {
            // Tile of the lower triangle: rows ib.., cols jb...
            for j in jb..(jb + TILE).min(n) {
                for i in ib.max(j + 1)..(ib + TILE).min(n) {
                    h[(j, i)] = h[(i, j)];
                }
            }
        }
    }
}

/// Round-to-nearest: quantizes `W` (`in × out`) with scales measured on `W`, stored `out × in`.
///
/// Identical to [`Quantized::quantize`] of `Wᵀ` (row-major `out × in`) with the granularity of
/// `scales`. Errors: [`Error::Empty`] for an empty weight, [`Error::NonFinite`] for NaN/Inf
/// (flat index row-major in `W`).
pub fn rtn(w: MatRef<'_, f32>, bits: Bits, scales: WeightScales) -> Result<Quantized> {
    check_weight(w)?;
    let (n, m) = (w.nrows(), w.ncols());
    let pairs = weight_scale_pairs(w, bits, scales);
    let mut codes = vec![0i8; n * m];
    for o in 0..m {
        let (_, inv) = pairs[o];
        let row = &mut codes[o * n..(o + 1) * n];
        for (i, c) in row.iter_mut().enumerate() {
            *c = quant::quantize_value(w[(i, o)], inv, bits);
        }
    }
    Ok(assemble(codes, m, n, bits, scales, &pairs))
}

/// GPTQ quantization of `W` (`in × out`) against the Hessian `H` (`in × in`, e.g. from
/// [`hessian`]), stored `out × in`. See the module documentation for the algorithm.
///
/// Copies `H` into a working buffer (one extra `in × in` f32 matrix); use [`gptq_owned`] to
/// hand the Hessian over and avoid the copy. Only the lower triangle of `H` is trusted to be
/// the symmetric Hessian's.
///
/// Errors: [`Error::Empty`] for an empty weight, [`Error::ShapeMismatch`] for an `H` that is
/// not `in × in`, [`Error::NonFinite`] for NaN/Inf in `W` or `H`, [`Error::InvalidConfig`] for
/// a bad `cfg`, [`Error::NotPositiveDefinite`] when the damped `H` has no Cholesky factor.
pub fn gptq(
    w: MatRef<'_, f32>,
    h: MatRef<'_, f32>,
    bits: Bits,
    scales: WeightScales,
    cfg: &GptqConfig,
) -> Result<Quantized> {
    check_inputs(w, h, cfg)?;
    // Work on an exactly symmetric copy built from the lower triangle.
    let mut buf = h.to_owned();
    mirror_lower(buf.as_mut());
    gptq_unchecked(w, buf, bits, scales, cfg)
}

/// [`gptq`] that takes ownership of the Hessian and works in its storage, so only one
/// `in × in` matrix is alive during the call (the memory-lean path for `in` = 14336). `h` must
/// be symmetric (as [`hessian`] returns it).
pub fn gptq_owned(
    w: MatRef<'_, f32>,
    h: Mat<f32>,
    bits: Bits,
    scales: WeightScales,
    cfg: &GptqConfig,
) -> Result<Quantized> {
    check_inputs(w, h.as_ref(), cfg)?;
    gptq_unchecked(w, h, bits, scales, cfg)
}

/// The upper Cholesky factor `U` of `(H + λI)⁻¹` (`H⁻¹ = UᵀU`), with the dead-input fix
/// (`H_ii = 0 → 1`) applied first and `λ = damp · mean(diag H)`, exactly as [`gptq`] computes
/// it (without act-order). The strict lower triangle of the result is zero. Exposed for
/// inspection and tests.
pub fn inverse_hessian_factor(h: MatRef<'_, f32>, damp: f32) -> Result<Mat<f32>> {
    let n = h.nrows();
    if n == 0 {
        return Err(Error::Empty("gptq hessian"));
    }
    ensure_shape("gptq hessian", (n, n), (h.nrows(), h.ncols()))?;
    ensure_finite_mat("gptq hessian", h)?;
    GptqConfig {
        damp,
        ..GptqConfig::default()
    }
    .validate()?;
    let mut buf = h.to_owned();
    for i in 0..n {
        if buf[(i, i)] == 0.0 {
            buf[(i, i)] = 1.0;
        }
    }
    add_damping(&mut buf, damp);
    let order: Vec<usize> = (0..n).collect();
    upper_inverse_factor_in_place(&mut buf, &order, faer::get_global_parallelism())?;
    for j in 0..n {
        for i in j + 1..n {
            buf[(i, j)] = 0.0;
        }
    }
    Ok(buf)
}

fn check_weight(w: MatRef<'_, f32>) -> Result<()> {
    if w.nrows() == 0 || w.ncols() == 0 {
        return Err(Error::Empty("weight"));
    }
    ensure_finite_mat("weight", w)
}

fn check_inputs(w: MatRef<'_, f32>, h: MatRef<'_, f32>, cfg: &GptqConfig) -> Result<()> {
    cfg.validate()?;
    check_weight(w)?;
    let n = w.nrows();
    ensure_shape("gptq hessian", (n, n), (h.nrows(), h.ncols()))?;
    ensure_finite_mat("gptq hessian", h)
}

/// `Err(NonFinite)` with the row-major flat index of the first NaN/Inf of `m` (scanned in
/// storage order, the smallest row-major index reported).
fn ensure_finite_mat(what: &'static str, m: MatRef<'_, f32>) -> Result<()> {
    let cols = m.ncols();
    let mut first: Option<usize> = None;
    for j in 0..cols {
        for i in 0..m.nrows() {
            if !m[(i, j)].is_finite() {
                let idx = i * cols + j;
                first = Some(first.map_or(idx, |f| f.min(idx)));
                break;
            }
        }
    }
    match first {
        Some(index) => Err(Error::NonFinite { what, index }),
        None => Ok(()),
    }
}

/// `(scale, inv)` per output channel (the per-tensor pair repeated `out` times).
fn weight_scale_pairs(w: MatRef<'_, f32>, bits: Bits, scales: WeightScales) -> Vec<(f32, f32)> {
    let m = w.ncols();
    let col_amax: Vec<f32> = (0..m)
        .map(|o| (0..w.nrows()).fold(0.0f32, |a, i| a.max(w[(i, o)].abs())))
        .collect();
    match scales {
        WeightScales::PerTensor => {
            let a = col_amax.iter().fold(0.0f32, |x, &y| x.max(y));
            vec![quant::scale_and_inverse(a, bits); m]
        }
        WeightScales::PerOutput => col_amax
            .iter()
            .map(|&a| quant::scale_and_inverse(a, bits))
            .collect(),
    }
}

fn assemble(
    codes: Vec<i8>,
    out: usize,
    inp: usize,
    bits: Bits,
    scales: WeightScales,
    pairs: &[(f32, f32)],
) -> Quantized {
    let scales_vec = match scales {
        WeightScales::PerTensor => vec![pairs[0].0],
        WeightScales::PerOutput => pairs.iter().map(|p| p.0).collect(),
    };
    Quantized {
        rows: out,
        cols: inp,
        bits,
        granularity: scales.granularity(),
        codes,
        scales: scales_vec,
    }
}

fn add_damping(h: &mut Mat<f32>, damp: f32) {
    let n = h.nrows();
    let mean = (0..n).map(|i| h[(i, i)] as f64).sum::<f64>() / n as f64;
    let lambda = (damp as f64 * mean) as f32;
    for i in 0..n {
        h[(i, i)] += lambda;
    }
}

fn gptq_unchecked(
    w: MatRef<'_, f32>,
    mut h: Mat<f32>,
    bits: Bits,
    scales: WeightScales,
    cfg: &GptqConfig,
) -> Result<Quantized> {
    let (n, m) = (w.nrows(), w.ncols());
    let par = faer::get_global_parallelism();
    // Scales from the original W, exactly as `rtn`.
    let pairs = weight_scale_pairs(w, bits, scales);

    // Dead inputs.
    let mut dead = vec![false; n];
    for (i, d) in dead.iter_mut().enumerate() {
        if h[(i, i)] == 0.0 {
            h[(i, i)] = 1.0;
            *d = true;
        }
    }

    // Processing order.
    let mut order: Vec<usize> = (0..n).collect();
    if cfg.act_order {
        order.sort_by(|&a, &b| h[(b, b)].total_cmp(&h[(a, a)]).then(a.cmp(&b)));
    }

    add_damping(&mut h, cfg.damp);
    upper_inverse_factor_in_place(&mut h, &order, par)?;
    let u = h; // upper triangle: U in processing order.

    // Working weights, transposed and permuted: column k = input order[k] (length out).
    let mut wt = Mat::<f32>::zeros(m, n);
    for (k, &i) in order.iter().enumerate() {
        if dead[i] {
            continue;
        }
        let col = wt.col_as_slice_mut(k);
        for (o, v) in col.iter_mut().enumerate() {
            *v = w[(i, o)];
        }
    }

    let bs = cfg.block_size.min(n);
    let mut codes = vec![0i8; n * m];
    let mut err = Mat::<f32>::zeros(m, bs);
    let mut ublk = vec![0.0f32; bs * bs];
    let mut i1 = 0;
    while i1 < n {
        let i2 = (i1 + bs).min(n);
        let count = i2 - i1;
        // Row-major copy of the diagonal block of U (upper part).
        for a in 0..count {
            for b in a..count {
                ublk[a * count + b] = u[(i1 + a, i1 + b)];
            }
        }
        for a in 0..count {
            let k = i1 + a;
            let d = ublk[a * count + a];
            let orig = order[k];
            {
                let e = err.col_as_slice_mut(a);
                let col = wt.col_as_slice(k);
                for o in 0..m {
                    let (s, inv) = pairs[o];
                    let v = col[o];
                    let c = quant::quantize_value(v, inv, bits);
                    codes[o * n + orig] = c;
                    e[o] = (v - c as f32 * s) / d;
                }
            }
            let e = err.col_as_slice(a);
            for b in a + 1..count {
                let f = ublk[a * count + b];
                if f == 0.0 {
                    continue;
                }
                let col = wt.col_as_slice_mut(i1 + b);
                for (v, &eo) in col.iter_mut().zip(e) {
                    *v -= eo * f;
                }
            }
        }
        if i2 < n {
            matmul(
                wt.as_mut().subcols_mut(i2, n - i2),
                Accum::Add,
                err.as_ref().subcols(0, count),
                u.as_ref().submatrix(i1, i2, count, n - i2),
                -1.0f32,
                par,
            );
        }
        i1 = i2;
    }
    Ok(assemble(codes, m, n, bits, scales, &pairs))
}

/// Replaces the (damped, symmetric) `h` by the upper Cholesky factor of the inverse of
/// `P h Pᵀ`, where `(P h Pᵀ)(k, l) = h(order[k], order[l])`, in place. Only the upper triangle
/// of the result is meaningful.
fn upper_inverse_factor_in_place(h: &mut Mat<f32>, order: &[usize], par: Par) -> Result<()> {
    let n = h.nrows();
    // Reversed processing order: JPHPᵀJ.
    let rev: Vec<usize> = order.iter().rev().copied().collect();
    permute_symmetric_in_place(h, &rev);
    let mut mem = MemBuffer::new(cholesky_in_place_scratch::<f32>(n, par, Default::default()));
    let stack = MemStack::new(&mut mem);
    cholesky_in_place(
        h.as_mut(),
        Default::default(),
        par,
        stack,
        Default::default(),
    )
    .map_err(|_| Error::NotPositiveDefinite("gptq hessian"))?;
    invert_lower_in_place(h.as_mut(), par);
    let reversal: Vec<usize> = (0..n).rev().collect();
    permute_symmetric_in_place(h, &reversal);
    for i in 0..n {
        let d = h[(i, i)];
        if !(d.is_finite() && d > 0.0) {
            return Err(Error::NotPositiveDefinite("gptq hessian"));
        }
    }
    // Off-diagonal overflow would poison the sweep; it only happens for a near-singular H.
    for j in 0..n {
        if h.col_as_slice(j)[..=j].iter().any(|v| !v.is_finite()) {
            return Err(Error::NotPositiveDefinite("gptq hessian"));
        }
    }
    Ok(())
}

/// `a ← B` with `B(i, j) = a(p[i], p[j])`, in place with two length-`n` temporaries.
fn permute_symmetric_in_place(a: &mut Mat<f32>, p: &[usize]) {
    let n = a.nrows();
    let mut tmp = vec![0.0f32; n];
    // Rows.
    for j in 0..n {
        let col = a.col_as_slice_mut(j);
        for (t, &pi) in tmp.iter_mut().zip(p) {
            *t = col[pi];
        }
        col.copy_from_slice(&tmp);
    }
    // Columns, following the cycles of p.
    let mut done = vec![false; n];
    let mut carry = vec![0.0f32; n];
    for s in 0..n {
        if done[s] || p[s] == s {
            done[s] = true;
            continue;
        }
        carry.copy_from_slice(a.col_as_slice(s));
        let mut j = s;
        loop {
            done[j] = true;
            let k = p[j];
            if k == s {
                a.col_as_slice_mut(j).copy_from_slice(&carry);
                break;
            }
            tmp.copy_from_slice(a.col_as_slice(k));
            a.col_as_slice_mut(j).copy_from_slice(&tmp);
            j = k;
        }
    }
}

/// Inverts the lower triangle (diagonal included) of `a` in place; the strict upper triangle
/// is neither read nor written.
fn invert_lower_in_place(a: MatMut<'_, f32>, par: Par) {
    const BASE: usize = 64;
    let n = a.nrows();
    if n <= BASE {
        invert_lower_small(a);
        return;
    }
    // [A11 0; A21 A22]⁻¹ = [A11⁻¹ 0; −A22⁻¹·A21·A11⁻¹  A22⁻¹].
    let k = (n / 2).next_multiple_of(BASE).min(n - 1);
    let (a11, _, mut a21, a22) = a.split_at_mut(k, k);
    // A21 ← A21·A11⁻¹, i.e. A11ᵀ·Xᵀ = A21ᵀ.
    solve_upper_triangular_in_place(a11.rb().transpose(), a21.rb_mut().transpose_mut(), par);
    // A21 ← A22⁻¹·A21, then negate.
    solve_lower_triangular_in_place(a22.rb(), a21.rb_mut(), par);
    for j in 0..a21.ncols() {
        for i in 0..a21.nrows() {
            a21[(i, j)] = -a21[(i, j)];
        }
    }
    invert_lower_in_place(a11, par);
    invert_lower_in_place(a22, par);
}

/// Column-oriented in-place inverse of a small lower-triangular matrix (LAPACK `trti2` order:
/// last column first, each column transformed by the already inverted trailing block).
fn invert_lower_small(mut a: MatMut<'_, f32>) {
    let n = a.nrows();
    for j in (0..n).rev() {
        let inv = 1.0 / a[(j, j)];
        a[(j, j)] = inv;
        // x = a[j+1.., j] ← T·x with T = a[j+1.., j+1..] (inverted), bottom-up.
        for i in (j + 1..n).rev() {
            let mut s = 0.0f32;
            for k in j + 1..=i {
                s += a[(i, k)] * a[(k, j)];
            }
            a[(i, j)] = -inv * s;
        }
    }
}
