//! Rank-wise rotation of a low-rank factorisation (DESIGN.md §4 step 4).
//!
//! An orthogonal `Q ∈ R^{R×R}` leaves the product unchanged, `(A·Q)·(Qᵀ·B) = A·B`, but spreads
//! the energy of the leading singular directions over all rank channels, which makes `A` and
//! `B` friendlier to per-tensor quantization. Two families:
//!
//! - [`haar_orthogonal`]: Haar-random, from the Householder QR of a Gaussian matrix with the
//!   sign fix `Q ← Q·diag(sign(diag R))` (without it, `Q` is not Haar distributed).
//! - [`randomized_hadamard`]: `H·diag(±1)/√R` with `H` the Sylvester Hadamard matrix, for `R`
//!   a power of two.
//!
//! Every random choice comes from [`crate::seeded_rng`]`(seed)`.

use faer::linalg::matmul::matmul;
use faer::{Accum, Mat, MatRef};
use rand::RngExt;
use rand_distr::StandardNormal;

use crate::error::{Result, ensure_shape};
use crate::seeded_rng;
use crate::svd::LowRank;

/// A Haar-distributed random orthogonal `r × r` matrix.
///
/// Construction (reproducible, and what the tests replay with an independent QR): `G` is
/// `r × r` with entries drawn as f64 [`StandardNormal`] from [`crate::seeded_rng`]`(seed)`,
/// column by column (`G[0][0], G[1][0], …`); `G = Q·R` (faer Householder QR, f64);
/// the result is `Q·diag(sign(diag R))` (sign(0) = +1) rounded to f32. Computing in f64 keeps
/// `QᵀQ = I` to about `√r · 6e-8` after rounding. `r = 0` gives a `0 × 0` matrix.
pub fn haar_orthogonal(r: usize, seed: u64) -> Mat<f32> {
    if r == 0 {
        return Mat::zeros(0, 0);
    }
    let mut rng = seeded_rng(seed);
    let mut g = Mat::<f64>::zeros(r, r);
    for j in 0..r {
        for x in g.col_mut(j).iter_mut() {
            *x = rng.sample(StandardNormal);
        }
    }
    let qr = g.qr();
    let q = qr.compute_thin_Q();
    let rr = qr.thin_R();
    let mut out = Mat::<f32>::zeros(r, r);
    for j in 0..r {
        let flip = rr[(j, j)] < 0.0;
        let src = q.col(j);
        let mut dst = out.col_mut(j);
        for i in 0..r {
            let x = if flip { -src[i] } else { src[i] };
            dst[i] = x as f32;
        }
    }
    out
}

/// A randomized Hadamard rotation `H·diag(d)/√r` with `H` the Sylvester Hadamard matrix
/// (`H[i][j] = (−1)^{popcount(i & j)}`) and `d` i.i.d. uniform ±1 signs from
/// [`crate::seeded_rng`]`(seed)` (one `bool` per column, in order).
///
/// `Some` only when `r` is a power of two (1, 2, 4, …); `None` otherwise (including `r = 0`),
/// since no other Hadamard sizes are constructed here.
pub fn randomized_hadamard(r: usize, seed: u64) -> Option<Mat<f32>> {
    if !r.is_power_of_two() {
        return None;
    }
    let scale = (1.0 / (r as f64).sqrt()) as f32;
    let mut rng = seeded_rng(seed);
    let signs: Vec<f32> = (0..r)
        .map(|_| if rng.random::<bool>() { scale } else { -scale })
        .collect();
    let mut out = Mat::<f32>::zeros(r, r);
    for (j, &s) in signs.iter().enumerate() {
        let mut col = out.col_mut(j);
        for i in 0..r {
            col[i] = if (i & j).count_ones() % 2 == 0 { s } else { -s };
        }
    }
    Some(out)
}

/// Which family of rank-wise rotation to draw.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RotationKind {
    /// [`haar_orthogonal`]: any rank.
    Haar,
    /// [`randomized_hadamard`]: ranks that are powers of two.
    Hadamard,
}

/// An `r × r` rotation of the given kind; `None` when the kind does not exist at `r`
/// (Hadamard at a rank that is not a power of two).
pub fn rotation(kind: RotationKind, r: usize, seed: u64) -> Option<Mat<f32>> {
    match kind {
        RotationKind::Haar => Some(haar_orthogonal(r, seed)),
        RotationKind::Hadamard => randomized_hadamard(r, seed),
    }
}

/// `A ← A·Q`, `B ← Qᵀ·B`, `sigma` unchanged (f32 GEMMs with faer's global parallelism).
///
/// # Panics
/// If `q` is not `R × R` with `R = low.rank()`; [`try_rotate`] returns the error instead.
pub fn rotate(low: &LowRank, q: MatRef<'_, f32>) -> LowRank {
    match try_rotate(low, q) {
        Ok(out) => out,
        Err(e) => panic!("rotate: {e}"),
    }
}

/// [`rotate`] with a typed error: [`crate::Error::ShapeMismatch`] unless `q` is `R × R` and `low`'s
/// factors agree on `R`.
pub fn try_rotate(low: &LowRank, q: MatRef<'_, f32>) -> Result<LowRank> {
    let r = low.a.ncols();
    ensure_shape("rank-wise rotation B", (r, low.b.ncols()), low.b.shape())?;
    ensure_shape("rank-wise rotation Q", (r, r), q.shape())?;
    let par = faer::get_global_parallelism();
    let mut a = Mat::<f32>::zeros(low.a.nrows(), r);
    matmul(a.as_mut(), Accum::Replace, low.a.as_ref(), q, 1.0f32, par);
    let mut b = Mat::<f32>::zeros(r, low.b.ncols());
    matmul(
        b.as_mut(),
        Accum::Replace,
        q.transpose(),
        low.b.as_ref(),
        1.0f32,
        par,
    );
    Ok(LowRank {
        a,
        b,
        sigma: low.sigma.clone(),
    })
}
