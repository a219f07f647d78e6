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
//!
//! # Low-rank GPTQ (few calibration tokens)
//!
//! For `H = XᵀX` from `T ≪ in` tokens the dense path wastes its `O(in³)` time and `in × in`
//! memory on a matrix of rank `≤ T`. [`gptq_low_rank`] computes the same GPTQ from `X` itself
//! in `O(in·T·(T + out))` time and `O(T² + T·out + in·out)` memory; [`gptq_from_activations`]
//! picks it when a flop model says it is faster (roughly `T ≲ in/3` for `out ≪ in`, and only
//! with `damp > 0`; [`low_rank_is_preferred`]) and the dense path otherwise.
//!
//! GPTQ in processing order sets `q_i = Q(v_i)` where `v_{i:}` is the minimiser of
//! `(w − q)ᵀH(w − q)` over the inputs not yet quantized given the quantized ones:
//! `v_{i:} = w_{i:} − H_{i:,i:}⁻¹ H_{i:,:i} e_{:i}` with `e_k = q_k − w_k` against the
//! *original* `w`. With `H = λI + XᵀX` (dead inputs left out, see below), `B_i = X_{:, i:}`,
//! `s_i = X_{:, :i} e_{:i}` (`T`-vector per output; all outputs: `S`, `T × out`) and
//! `K_i = (λI_T + B_iB_iᵀ)⁻¹` (`T × T`), push-through gives
//! `H_{i:,i:}⁻¹ H_{i:,:i} e_{:i} = (λI + B_iᵀB_i)⁻¹B_iᵀ s_i = B_iᵀ K_i s_i`, and for a block
//! `blk` of `b` inputs starting at `i`, `λ·(H_{i:,i:}⁻¹)_{blk,blk} = I_b − X_blkᵀ K_i X_blk`
//! (`M`, the block's inverse Hessian with every later input minimised out). The trailing
//! block of the dense path's `U` is the upper Cholesky factor of exactly that matrix, so per
//! block (blocks of [`GptqConfig::block_size`] live inputs in processing order):
//!
//! 1. `P = K·X_blk` (`T × b`); targets `V_blk = W_blk − Pᵀ·S` (`b × out`);
//! 2. `M = I − X_blkᵀ·P = L·Lᵀ` (lower Cholesky; `U_blk = λ^{-1/2}·Lᵀ`, and the sweep only
//!    uses ratios `U_ab / U_aa`, so `λ` cancels);
//! 3. the dense sweep inside the block, starting from `V_blk`: `q_a = Q(v_a)`,
//!    `v_b −= L_ba · (v_a − q_a) / L_aa` for the later inputs `b` of the block;
//! 4. `S += X_blk·(Q_blk − W_blk)` (errors against the original `W`);
//! 5. downdate `K ← (K⁻¹ − X_blk X_blkᵀ)⁻¹ = K + P·M⁻¹·Pᵀ = K + Z·Zᵀ` with
//!    `Zᵀ = L⁻¹·Pᵀ` (Woodbury, reusing the factor of step 2).
//!
//! The start is `K = (λI_T + Σ X_blk X_blkᵀ)⁻¹` from a `T × T` Cholesky factorisation, summed
//! over the same blocks that step 5 later removes. All of this runs in f64 (`X` is converted
//! one block at a time): `cond(λI + XXᵀ)` reaches `in/damp`, and the downdates of step 5
//! subtract nearly equal quantities (in f64, `λ·K` returns to `I` within ~1e-8 after the last
//! block, see the unit tests). Codes still come from [`quant::quantize_value`] of the f32
//! rounding of `v`, with the scales of [`rtn`]. Costs per input: `2T²` (step 1) + `T²`
//! (step 5) + `T²` (start) + `4·T·out` (targets and `S`) flops, i.e. about 86 GFLOP for
//! `in = 14336, out = 600, T = 1024` against ~2.3 TFLOP (f32) for the dense path.
//!
//! Rules shared with the dense path: `λ = damp · mean(diag H)` with the f32 diagonal (each
//! `‖x_j‖²` is summed in f64 and rounded to f32), dead inputs counted as 1, rounded to f32;
//! act-order sorts by that diagonal (dead = 1, ties by index). A dead input (`‖x_j‖²` rounds to
//! 0) has no coupling to any other input in `H`, and its row of `W` is zeroed by the dense path,
//! so its code is 0 and it changes nothing else: the low-rank path drops it from the sweep
//! instead of giving it `H_jj = 1`, which is the same result. The blocks are formed from the
//! live inputs only (block boundaries only change rounding).

use faer::dyn_stack::{MemBuffer, MemStack};
use faer::linalg::cholesky::llt::factor::{cholesky_in_place, cholesky_in_place_scratch};
use faer::linalg::cholesky::llt::inverse as llt_inverse;
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
fn mirror_lower<T: Copy>(mut h: MatMut<'_, T>) {
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

/// Whether [`gptq_from_activations`] takes the low-rank path for `tokens` calibration rows
/// (`T`), `inputs` input channels (`in`), `outputs` output channels (`out`) and `cfg`.
///
/// Rule: `cfg.damp > 0` and the modelled low-rank time does not exceed the dense one,
/// `2.5·(4·in·T² + 4·in·T·out) ≤ T·in² + ⅔·in³ + in²·out`. The left side counts the low-rank
/// path's f64 flops (see the module documentation), weighted 2.5× for f64 against f32 and its
/// thinner GEMMs; the right side the dense path's f32 flops (`XᵀX`, Cholesky + triangular
/// inverse, lazy updates). The weight was fitted on a 2-core AVX-512 machine with `in` = 4096,
/// `out` = 400, `T` = 512…2048 (measured crossover `T ≈ 1280`; fitted weights 2.1–2.6 on a
/// quiet machine, ~3 under CPU contention). Roughly: low-rank for `T ≲ in/3` when `out ≪ in`;
/// for `in` = 14336, `out` = 600, `T` = 1024 it predicts ~10× (measured 7–8×). Both paths
/// compute the same GPTQ, so the rule only trades time; the low-rank path also needs far less
/// memory (`O(T² + T·out)` f64 against `in²` f32), so a memory-bound caller can call
/// [`gptq_low_rank`] directly.
///
/// Without damping (`λ = 0`) the low-rank form does not exist, and `H = XᵀX` of rank
/// `≤ T < in` is singular anyway, so the dense path gives the definitive answer (normally
/// [`Error::NotPositiveDefinite`]).
pub fn low_rank_is_preferred(
    tokens: usize,
    inputs: usize,
    outputs: usize,
    cfg: &GptqConfig,
) -> bool {
    let (t, n, m) = (tokens as f64, inputs as f64, outputs as f64);
    let low_rank = 2.5 * (4.0 * n * t * t + 4.0 * n * t * m);
    let dense = t * n * n + 2.0 / 3.0 * n * n * n + n * n * m;
    cfg.damp > 0.0 && low_rank <= dense
}

/// GPTQ of `W` (`in × out`) for the Hessian `H = XᵀX` of calibration activations `X`
/// (`T × in`), stored `out × in`: the same result as `gptq(w, hessian(x)?, ..)` (same damping
/// convention, same dead-input and act-order rules, same scales), computed by the cheaper of
/// the two paths — [`gptq_low_rank`] when [`low_rank_is_preferred`] (roughly `T ≲ in/3`, and
/// `damp > 0`), otherwise [`hessian`] followed by [`gptq_owned`].
///
/// The two paths compute the same mathematical result with different rounding (f64 `T × T`
/// algebra against f32 `in × in` algebra), so a small fraction of codes can differ where a
/// value lies within rounding noise of a rounding boundary (one step at the first such input,
/// carried on by the error feedback); see [`gptq_low_rank`].
///
/// Errors: [`Error::Empty`] for an empty weight or no calibration rows,
/// [`Error::ShapeMismatch`] when `X` does not have `in` columns, [`Error::NonFinite`] for
/// NaN/Inf in `W` or `X`, [`Error::InvalidConfig`] for a bad `cfg`,
/// [`Error::NotPositiveDefinite`] when the damped Hessian cannot be factored.
pub fn gptq_from_activations(
    w: MatRef<'_, f32>,
    x: MatRef<'_, f32>,
    bits: Bits,
    scales: WeightScales,
    cfg: &GptqConfig,
) -> Result<Quantized> {
    check_activation_inputs(w, x, cfg)?;
    if low_rank_is_preferred(x.nrows(), w.nrows(), w.ncols(), cfg) {
        low_rank_unchecked(w, x, bits, scales, cfg, false).map(|(q, _)| q)
    } else {
        gptq_owned(w, hessian(x)?, bits, scales, cfg)
    }
}

/// The low-rank GPTQ path of [`gptq_from_activations`], forced: GPTQ of `W` (`in × out`) for
/// `H = XᵀX` (`X` is `T × in`) without forming `H`, in `O(in·T·(T + out))` time and
/// `O(T² + T·out + in·out)` memory. See the module documentation ("Low-rank GPTQ") for the
/// algorithm.
///
/// Works for any `T`, but is only cheaper than the dense path for `T` well below `in`. It needs
/// `λ = damp · mean(diag H) > 0`: with `λ = 0` and at least one live input the result is
/// [`Error::NotPositiveDefinite`]`("gptq hessian")` (the low-rank form of `H⁻¹` does not
/// exist; for `T < in` live inputs `XᵀX` is singular). Dead inputs (all-zero columns of `X`)
/// get code 0 as in [`gptq`].
///
/// Agreement with [`gptq`]`(w, hessian(x))`: scales are bit-identical (both measure them on
/// `W`); codes are the same mathematical GPTQ codes, with rounding differences (this path does
/// the `T × T` algebra and the error bookkeeping in f64, the dense one works in f32 with
/// condition numbers up to `in/damp`), so a value within rounding noise of a rounding boundary
/// can land one step apart, and the error feedback carries such a first difference on to later
/// inputs (so later differences can exceed one step). The f32 dense path is the less accurate
/// of the two: against an independent unblocked f64 GPTQ on the same `XᵀX`, this path gave
/// identical codes at `in` = 4096 and 14336 (`T` = 1024, INT4 per output) where the dense path
/// differed in 0.38% and 0.54% of them; in the small randomized tests ~1e-4 of codes differ.
///
/// Errors: as [`gptq_from_activations`].
pub fn gptq_low_rank(
    w: MatRef<'_, f32>,
    x: MatRef<'_, f32>,
    bits: Bits,
    scales: WeightScales,
    cfg: &GptqConfig,
) -> Result<Quantized> {
    check_activation_inputs(w, x, cfg)?;
    low_rank_unchecked(w, x, bits, scales, cfg, false).map(|(q, _)| q)
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

fn check_activation_inputs(w: MatRef<'_, f32>, x: MatRef<'_, f32>, cfg: &GptqConfig) -> Result<()> {
    cfg.validate()?;
    check_weight(w)?;
    if x.nrows() == 0 {
        return Err(Error::Empty("calibration activations"));
    }
    ensure_shape(
        "calibration activations",
        (x.nrows(), w.nrows()),
        (x.nrows(), x.ncols()),
    )?;
    ensure_finite_mat("calibration activations", x)
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

/// `(K, λ)` after the last downdate of the low-rank sweep (`λ·K = I` in exact arithmetic).
type FinalK = (Mat<f64>, f64);

/// The low-rank sweep (module documentation, "Low-rank GPTQ"). Inputs are validated. Returns
/// the result and, when `keep_final_k`, the final `K` (after downdating every live input, which
/// is `λ⁻¹·I` in exact arithmetic; used by the tests to measure the downdate drift).
fn low_rank_unchecked(
    w: MatRef<'_, f32>,
    x: MatRef<'_, f32>,
    bits: Bits,
    scales: WeightScales,
    cfg: &GptqConfig,
    keep_final_k: bool,
) -> Result<(Quantized, Option<FinalK>)> {
    let (n, m) = (w.nrows(), w.ncols());
    let t = x.nrows();
    let par = faer::get_global_parallelism();
    // Scales from the original W, exactly as `rtn`.
    let pairs = weight_scale_pairs(w, bits, scales);

    // diag H = ‖x_j‖², summed in f64 and rounded to f32 (the dense path's f32 diagonal).
    // Dead inputs: the diagonal is 0 → it counts as 1 for the damping mean and act-order,
    // exactly as in `gptq_unchecked`; their codes stay 0 and they take no part in the sweep.
    let diag: Vec<f32> = (0..n)
        .map(|j| {
            let c = x.col(j);
            (0..t)
                .map(|r| {
                    let v = c[r] as f64;
                    v * v
                })
                .sum::<f64>() as f32
        })
        .collect();
    let key: Vec<f32> = diag
        .iter()
        .map(|&d| if d == 0.0 { 1.0 } else { d })
        .collect();
    let mut order: Vec<usize> = (0..n).collect();
    if cfg.act_order {
        order.sort_by(|&a, &b| key[b].total_cmp(&key[a]).then(a.cmp(&b)));
    }
    let live: Vec<usize> = order.into_iter().filter(|&j| diag[j] != 0.0).collect();
    // λ as `add_damping` computes it (f64 mean of the f32 diagonal, rounded to f32).
    let mean = key.iter().map(|&v| v as f64).sum::<f64>() / n as f64;
    let lambda = (cfg.damp as f64 * mean) as f32 as f64;

    let mut codes = vec![0i8; n * m];
    if live.is_empty() {
        return Ok((assemble(codes, m, n, bits, scales, &pairs), None));
    }
    if !(lambda > 0.0 && lambda.is_finite()) {
        return Err(Error::NotPositiveDefinite("gptq hessian"));
    }
    let npd = || Error::NotPositiveDefinite("gptq hessian");
    let bs = cfg.block_size.min(live.len());

    // X columns of one block, in processing order, as f64.
    let gather = |cols: &[usize], mut dst: MatMut<'_, f64>| {
        for (a, &j) in cols.iter().enumerate() {
            let src = x.col(j);
            for r in 0..t {
                dst[(r, a)] = src[r] as f64;
            }
        }
    };
    let mut xb = Mat::<f64>::zeros(t, bs);

    // K = (λI + Σ_live x_j x_jᵀ)⁻¹ (T × T), summed block by block with the same f64 blocks
    // that the sweep later downdates.
    let mut k = {
        let mut c = Mat::<f64>::zeros(t, t);
        for chunk in live.chunks(bs) {
            let mut xv = xb.as_mut().subcols_mut(0, chunk.len());
            gather(chunk, xv.rb_mut());
            tri_matmul(
                c.as_mut(),
                BlockStructure::TriangularLower,
                Accum::Add,
                xv.rb(),
                BlockStructure::Rectangular,
                xv.rb().transpose(),
                BlockStructure::Rectangular,
                1.0f64,
                par,
            );
        }
        for i in 0..t {
            c[(i, i)] += lambda;
        }
        cholesky_f64_in_place(c.as_mut(), par).map_err(|_| npd())?;
        let mut kinv = Mat::<f64>::zeros(t, t);
        let mut mem = MemBuffer::new(llt_inverse::inverse_scratch::<f64>(t, par));
        llt_inverse::inverse(kinv.as_mut(), c.as_ref(), par, MemStack::new(&mut mem));
        mirror_lower(kinv.as_mut());
        kinv
    };

    // Sᵀ = ((Q − W)_{done})ᵀ·X_{:, done}ᵀ (out × T; S is the pull of the quantized inputs'
    // errors, stored transposed so that the target GEMM reads both operands column-major).
    let mut st = Mat::<f64>::zeros(m, t);
    let mut p = Mat::<f64>::zeros(t, bs);
    let mut vt = Mat::<f64>::zeros(m, bs);
    let mut et = Mat::<f64>::zeros(m, bs);
    let mut mblk = Mat::<f64>::zeros(bs, bs);
    let mut prop = vec![0.0f64; m];
    let nblocks = live.len().div_ceil(bs);
    for (bi, chunk) in live.chunks(bs).enumerate() {
        let c = chunk.len();
        let last = bi + 1 == nblocks;
        let mut xv = xb.as_mut().subcols_mut(0, c);
        gather(chunk, xv.rb_mut());
        let xv = xv.rb();
        // P = K·X_blk.
        let mut pv = p.as_mut().subcols_mut(0, c);
        matmul(pv.rb_mut(), Accum::Replace, k.as_ref(), xv, 1.0f64, par);
        // Targets: Vᵀ = W_blkᵀ − Sᵀ·P (out × c).
        let mut vv = vt.as_mut().subcols_mut(0, c);
        for (a, &j) in chunk.iter().enumerate() {
            let col = vv
                .rb_mut()
                .col_mut(a)
                .try_as_col_major_mut()
                .unwrap()
                .as_slice_mut();
            for (o, v) in col.iter_mut().enumerate() {
                *v = w[(j, o)] as f64;
            }
        }
        if bi > 0 {
            matmul(vv.rb_mut(), Accum::Add, st.as_ref(), pv.rb(), -1.0f64, par);
        }
        // λ·(block of H⁻¹ of the free inputs) = I − X_blkᵀ·K·X_blk = L·Lᵀ.
        let mut mv = mblk.as_mut().submatrix_mut(0, 0, c, c);
        tri_matmul(
            mv.rb_mut(),
            BlockStructure::TriangularLower,
            Accum::Replace,
            xv.transpose(),
            BlockStructure::Rectangular,
            pv.rb(),
            BlockStructure::Rectangular,
            -1.0f64,
            par,
        );
        for a in 0..c {
            mv[(a, a)] += 1.0;
        }
        cholesky_f64_in_place(mv.rb_mut(), par).map_err(|_| npd())?;
        for a in 0..c {
            let d = mv[(a, a)];
            if !(d.is_finite() && d > 0.0) || (a + 1..c).any(|b| !mv[(b, a)].is_finite()) {
                return Err(npd());
            }
        }
        // In-block GPTQ with U = Lᵀ (up to the factor λ^{-1/2}, which cancels in U_ab/U_aa).
        let mut ev = et.as_mut().subcols_mut(0, c);
        for a in 0..c {
            let j = chunk[a];
            let d = mv[(a, a)];
            {
                let col = vv.rb().col(a).try_as_col_major().unwrap().as_slice();
                let ecol = ev
                    .rb_mut()
                    .col_mut(a)
                    .try_as_col_major_mut()
                    .unwrap()
                    .as_slice_mut();
                for o in 0..m {
                    let (sc, inv) = pairs[o];
                    let v = col[o];
                    let code = quant::quantize_value(v as f32, inv, bits);
                    codes[o * n + j] = code;
                    let q = code as f64 * sc as f64;
                    ecol[o] = q - w[(j, o)] as f64;
                    prop[o] = (v - q) / d;
                }
            }
            for b in a + 1..c {
                let f = mv[(b, a)];
                if f == 0.0 {
                    continue;
                }
                let col = vv
                    .rb_mut()
                    .col_mut(b)
                    .try_as_col_major_mut()
                    .unwrap()
                    .as_slice_mut();
                for (v, &e) in col.iter_mut().zip(&prop) {
                    *v -= e * f;
                }
            }
        }
        if last && !keep_final_k {
            break;
        }
        // Sᵀ += (Q − W)_blkᵀ·X_blkᵀ.
        matmul(
            st.as_mut(),
            Accum::Add,
            ev.rb(),
            xv.transpose(),
            1.0f64,
            par,
        );
        // Downdate K ← (K⁻¹ − X_blk X_blkᵀ)⁻¹ = K + P·M⁻¹·Pᵀ = K + Z·Zᵀ with Zᵀ = L⁻¹·Pᵀ.
        solve_lower_triangular_in_place(mv.rb(), pv.rb_mut().transpose_mut(), par);
        tri_matmul(
            k.as_mut(),
            BlockStructure::TriangularLower,
            Accum::Add,
            pv.rb(),
            BlockStructure::Rectangular,
            pv.rb().transpose(),
            BlockStructure::Rectangular,
            1.0f64,
            par,
        );
        mirror_lower(k.as_mut());
    }
    let q = assemble(codes, m, n, bits, scales, &pairs);
    Ok((q, keep_final_k.then_some((k, lambda))))
}

/// In-place lower Cholesky factorisation of a symmetric f64 matrix (lower triangle read).
fn cholesky_f64_in_place(a: MatMut<'_, f64>, par: Par) -> Result<()> {
    let n = a.nrows();
    let mut mem = MemBuffer::new(cholesky_in_place_scratch::<f64>(n, par, Default::default()));
    cholesky_in_place(
        a,
        Default::default(),
        par,
        MemStack::new(&mut mem),
        Default::default(),
    )
    .map(|_| ())
    .map_err(|_| Error::NotPositiveDefinite("gptq hessian"))
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

#[cfg(test)]
mod tests {
    use super::*;
    use rand_distr::{Distribution, StandardNormal};

    /// `X = g·ℓᵀ·gain + noise·X_noise` (`T × in`): nearly rank one, the worst case for the
    /// conditioning of `λI + XXᵀ` (`cond ≈ in/damp`).
    fn nearly_rank_one(t: usize, n: usize, noise: f32, seed: u64) -> Mat<f32> {
        let mut rng = crate::seeded_rng(seed);
        let mut draw = || {
            let v: f64 = StandardNormal.sample(&mut rng);
            v as f32
        };
        let g: Vec<f32> = (0..t).map(|_| draw()).collect();
        let l: Vec<f32> = (0..n).map(|_| draw()).collect();
        Mat::from_fn(t, n, |r, c| g[r] * l[c] + noise * draw())
    }

    /// Largest `|λ·K_end − I|` after downdating every input: 0 in exact arithmetic.
    fn downdate_drift(n: usize, t: usize, m: usize, block: usize, noise: f32) -> f64 {
        let x = nearly_rank_one(t, n, noise, 5);
        let w = Mat::from_fn(n, m, |i, o| ((i * 31 + o * 17) % 23) as f32 - 11.0);
        let cfg = GptqConfig {
            block_size: block,
            ..GptqConfig::default()
        };
        let (_, fin) = low_rank_unchecked(
            w.as_ref(),
            x.as_ref(),
            Bits::Int4,
            WeightScales::PerOutput,
            &cfg,
            true,
        )
        .unwrap();
        let (k, lambda) = fin.unwrap();
        let mut worst = 0.0f64;
        for j in 0..t {
            for i in 0..t {
                let want = if i == j { 1.0 } else { 0.0 };
                worst = worst.max((lambda * k[(i, j)] - want).abs());
            }
        }
        worst
    }

    #[test]
    fn woodbury_downdates_return_to_the_damping_inverse() {
        for (n, t, block, noise) in [
            (600, 40, 16, 1e-3),
            (2000, 64, 128, 0.0),
            (2000, 64, 7, 0.05),
        ] {
            let d = downdate_drift(n, t, 3, block, noise);
            println!("in={n} T={t} block={block} noise={noise}: max |λK_end − I| = {d:.2e}");
            assert!(d < 1e-6, "drift {d}");
        }
    }
}
