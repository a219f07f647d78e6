//! Truncated SVD of a (smoothed) weight delta (DESIGN.md §4 step 3).
//!
//! Layout follows the paper: `W ∈ R^{C_i×C_o}` with `Y = X·W`. A rank-`R` factorisation is
//! `W ≈ A·B` with `A = U_R Σ_R^{1/2}` (`C_i × R`) and `B = Σ_R^{1/2} V_Rᵀ` (`R × C_o`), so the
//! columns of `A` are orthogonal with `AᵀA = Σ_R` and the rows of `B` are orthogonal with
//! `BBᵀ = Σ_R`.
//!
//! Two methods, both on faer in f32 with faer's global parallelism:
//!
//! - [`SvdMethod::Exact`]: faer's thin SVD of the whole matrix, then truncation.
//! - [`SvdMethod::Randomized`]: the Halko–Martinsson–Tropp range finder with power iterations.
//!   The range is sought on the *short* side of `W` (the transpose trick: when `C_i > C_o` the
//!   algorithm runs on `Wᵀ`, a free view), so the tall-skinny work matrices have
//!   `min(C_i, C_o)` rows. With `M` the short-side view (`p × q`, `p ≤ q`) and
//!   `ℓ = min(R + oversample, p)`:
//!   1. `Ω`: `q × ℓ` standard Gaussian from [`crate::seeded_rng`]`(seed)` (f32, column by column);
//!   2. `Q = orth(M·Ω)`;
//!   3. `power_iters` times: `Z = orth(Mᵀ·Q)`, `Q = orth(M·Z)` (Householder QR between every
//!      multiply, so the basis stays orthonormal in f32 even for a slowly decaying spectrum);
//!   4. `B̃ = Qᵀ·M` (`ℓ × q`), its exact thin SVD `B̃ = Ũ Σ Ṽᵀ`, `U = Q·Ũ`; keep `R`.
//!
//!   Memory beyond the input: a handful of `max(p, q) × ℓ` matrices; `W` is never copied
//!   and `WᵀW` is never formed.
//!
//! The sign of every singular pair is fixed deterministically: the entry of largest magnitude
//! of each column of `U` (the first such entry on ties) is made positive, and the matching
//! column of `V` follows. Both methods therefore agree on the factors (not only on `A·B`)
//! wherever the singular values are separated.
//!
//! Reproducibility: the same input, method, seed and faer thread count give bit-identical
//! output.

use faer::linalg::matmul::matmul;
use faer::{Accum, Mat, MatRef};
use rand::RngExt;
use rand_distr::StandardNormal;

use crate::error::{Error, Result};
use crate::seeded_rng;

/// Default oversampling `p` of [`SvdMethod::randomized`]: the range finder draws `R + p`
/// Gaussian test vectors.
pub const DEFAULT_OVERSAMPLE: usize = 64;

/// Default number of power iterations of [`SvdMethod::randomized`]: each one costs two
/// GEMMs with `W` plus two tall-skinny QRs.
pub const DEFAULT_POWER_ITERS: usize = 4;

/// [`SvdMethod::Auto`] always takes the exact SVD when `min(C_i, C_o)` is at most this.
pub const AUTO_EXACT_MAX_DIM: usize = 512;

/// How [`truncated_svd`] computes the leading singular triplets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SvdMethod {
    /// faer's exact thin SVD of the whole matrix, truncated to the rank.
    Exact,
    /// Randomized range finder (Halko–Martinsson–Tropp) with power iterations; see the module
    /// documentation for the exact algorithm. [`SvdMethod::randomized`] gives the defaults.
    Randomized {
        /// Extra test vectors beyond the rank (`p`); `R + p` is clamped to `min(C_i, C_o)`.
        oversample: usize,
        /// Power iterations `q`, each `orth(Wᵀ·Q)` then `orth(W·Z)`.
        power_iters: usize,
        /// Seed of the Gaussian test matrix.
        seed: u64,
    },
    /// Exact when `min(C_i, C_o) ≤` [`AUTO_EXACT_MAX_DIM`] or when `R +`
    /// [`DEFAULT_OVERSAMPLE`] is at least half of `min(C_i, C_o)` (then the randomized
    /// method does not save enough work); otherwise [`SvdMethod::randomized`]`(seed)`.
    Auto {
        /// Seed used when the randomized path is taken.
        seed: u64,
    },
}

impl SvdMethod {
    /// The randomized method with the default parameters: oversample
    /// [`DEFAULT_OVERSAMPLE`] (64) and [`DEFAULT_POWER_ITERS`] (4) power iterations.
    ///
    /// Chosen for deltas with a slowly decaying power-law spectrum (`σ_i ∝ (i+1)^{-1/2}` to
    /// `(i+1)^{-0.6}`, plus a noise floor), where the spectral gap at the rank is tiny: plain
    /// range finding (`q = 0`) misses the exact truncation's Frobenius error by ~25% and `q = 2`
    /// by 1–2%. Measured ratios (randomized / exact rank-`R` Frobenius error) at
    /// 14336×4096, R = 600 (`examples/rsvd_accuracy.rs`), exponent 0.6 / exponent 0.5 with a
    /// doubled noise floor: `p=16,q=4`: 1.0060 / 1.0064; `p=64,q=4`: 1.0037 / 1.0048;
    /// `p=64,q=5`: 1.0021 / 1.0031. The cost is about `(2q + 3)` GEMM passes over `W` with
    /// `R + p` columns, so `p = 64` costs ~8% more than `p = 16` at R = 600 and cuts the
    /// excess error by a third, while each extra power iteration costs ~18%. At 600×400,
    /// R = 60, exponent 0.5 (the test) the ratio is ≈ 1.001.
    pub const fn randomized(seed: u64) -> Self {
        SvdMethod::Randomized {
            oversample: DEFAULT_OVERSAMPLE,
            power_iters: DEFAULT_POWER_ITERS,
            seed,
        }
    }

    /// The concrete method [`SvdMethod::Auto`] resolves to for a `nrows × ncols` matrix at
    /// `rank`; `Exact` and `Randomized` resolve to themselves.
    pub fn resolve(self, nrows: usize, ncols: usize, rank: usize) -> SvdMethod {
        match self {
            SvdMethod::Auto { seed } => {
                let short = nrows.min(ncols);
                if short <= AUTO_EXACT_MAX_DIM
                    || 2 * rank.saturating_add(DEFAULT_OVERSAMPLE) >= short
                {
                    SvdMethod::Exact
                } else {
                    SvdMethod::randomized(seed)
                }
            }
            other => other,
        }
    }
}

/// A rank-`R` factorisation `W ≈ A·B` from a truncated SVD.
#[derive(Debug, Clone)]
pub struct LowRank {
    /// `C_i × R`: `U_R Σ_R^{1/2}` (after [`crate::rotate::rotate`]: `U_R Σ_R^{1/2} Q`).
    pub a: Mat<f32>,
    /// `R × C_o`: `Σ_R^{1/2} V_Rᵀ` (after [`crate::rotate::rotate`]: `Qᵀ Σ_R^{1/2} V_Rᵀ`).
    pub b: Mat<f32>,
    /// The `R` leading singular values, nonincreasing.
    pub sigma: Vec<f32>,
}

impl LowRank {
    /// The rank `R` (columns of `a`).
    pub fn rank(&self) -> usize {
        self.a.ncols()
    }

    /// `A·B` (`C_i × C_o`), with faer's GEMM and global parallelism.
    pub fn product(&self) -> Mat<f32> {
        let mut out = Mat::<f32>::zeros(self.a.nrows(), self.b.ncols());
        matmul(
            out.as_mut(),
            Accum::Replace,
            self.a.as_ref(),
            self.b.as_ref(),
            1.0f32,
            faer::get_global_parallelism(),
        );
        out
    }
}

/// Rank-`rank` truncated SVD of `w` (`C_i × C_o`), split as `A = U_R Σ_R^{1/2}`,
/// `B = Σ_R^{1/2} V_Rᵀ`.
///
/// Errors: [`Error::Empty`] for a matrix with no rows or no columns, [`Error::InvalidConfig`]
/// for `rank == 0` or `rank > min(C_i, C_o)`, [`Error::NonFinite`] (row-major flat index) for
/// a NaN or infinity, [`Error::Factorisation`] if faer's SVD does not converge.
pub fn truncated_svd(w: MatRef<'_, f32>, rank: usize, method: SvdMethod) -> Result<LowRank> {
    let (m, n) = w.shape();
    if m == 0 || n == 0 {
        return Err(Error::Empty("matrix for truncated_svd"));
    }
    let short = m.min(n);
    if rank == 0 {
        return Err(Error::InvalidConfig(
            "truncated SVD rank must be at least 1".into(),
        ));
    }
    if rank > short {
        return Err(Error::InvalidConfig(format!(
            "truncated SVD rank {rank} exceeds min({m}, {n}) = {short}"
        )));
    }
    check_finite("matrix for truncated_svd", w)?;

    let (mut u, s, mut v) = match method.resolve(m, n, rank) {
        SvdMethod::Exact | SvdMethod::Auto { .. } => exact_triplets(w, rank)?,
        SvdMethod::Randomized {
            oversample,
            power_iters,
            seed,
        } => {
            if m > n {
                // Transpose trick: find the range on the short side (Wᵀ is n × m, wide).
                let (ut, s, vt) =
                    randomized_triplets(w.transpose(), rank, oversample, power_iters, seed)?;
                (vt, s, ut)
            } else {
                randomized_triplets(w, rank, oversample, power_iters, seed)?
            }
        }
    };
    fix_signs(&mut u, &mut v);
    Ok(split_sqrt(&u, &s, &v))
}

/// All `min(C_i, C_o)` singular values of `w`, exact (faer), nonincreasing.
///
/// An empty matrix has no singular values (`Ok(vec![])`). Errors: [`Error::NonFinite`],
/// [`Error::Factorisation`].
pub fn singular_values(w: MatRef<'_, f32>) -> Result<Vec<f32>> {
    if w.nrows() == 0 || w.ncols() == 0 {
        return Ok(Vec::new());
    }
    check_finite("matrix for singular_values", w)?;
    w.singular_values()
        .map_err(|e| Error::Factorisation(format!("singular values: {e:?}")))
}

/// The smallest `R` with `Σ_{i<R} σ_i² ≥ energy · Σ_i σ_i²` (sums in f64), at least 1 and at
/// most `sigma.len()`.
///
/// `energy ≤ 0` gives 1, `energy ≥ 1` the smallest rank holding all the energy (trailing zero
/// singular values are not counted). An all-zero spectrum gives 1; an empty one gives 0 (no
/// rank is valid for an empty matrix).
pub fn rank_for_energy(sigma: &[f32], energy: f64) -> usize {
    if sigma.is_empty() {
        return 0;
    }
    let total: f64 = sigma.iter().map(|&s| f64::from(s) * f64::from(s)).sum();
    let target = energy.min(1.0) * total;
    let mut acc = 0.0f64;
    for (i, &s) in sigma.iter().enumerate() {
        acc += f64::from(s) * f64::from(s);
        if acc >= target {
            return i + 1;
        }
    }
    sigma.len()
}

/// Returns `Err(NonFinite)` with the row-major flat index of the first NaN or infinity.
fn check_finite(what: &'static str, w: MatRef<'_, f32>) -> Result<()> {
    let n = w.ncols();
    let mut first: Option<usize> = None;
    // Column by column (the storage order of faer's matrices), keeping the smallest
    // row-major index.
    for j in 0..n {
        for (i, v) in w.col(j).iter().enumerate() {
            if !v.is_finite() {
                let idx = i * n + j;
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

/// Exact thin SVD truncated to `rank`: `(U_R, σ_R, V_R)`.
fn exact_triplets(w: MatRef<'_, f32>, rank: usize) -> Result<(Mat<f32>, Vec<f32>, Mat<f32>)> {
    let svd = w
        .thin_svd()
        .map_err(|e| Error::Factorisation(format!("thin SVD: {e:?}")))?;
    let u = svd.U().subcols(0, rank).to_owned();
    let v = svd.V().subcols(0, rank).to_owned();
    let s = svd.S().column_vector();
    let s: Vec<f32> = (0..rank).map(|i| s[i]).collect();
    Ok((u, s, v))
}

/// Randomized truncated SVD of a wide (or square) `m` (`p × q`, `p ≤ q` preferred):
/// `(U_R, σ_R, V_R)`.
fn randomized_triplets(
    m: MatRef<'_, f32>,
    rank: usize,
    oversample: usize,
    power_iters: usize,
    seed: u64,
) -> Result<(Mat<f32>, Vec<f32>, Mat<f32>)> {
    let (p, q) = m.shape();
    let l = rank.saturating_add(oversample).min(p.min(q));
    let par = faer::get_global_parallelism();

    // Ω: q × ℓ standard Gaussian, filled column by column.
    let mut rng = seeded_rng(seed);
    let mut omega = Mat::<f32>::zeros(q, l);
    for j in 0..l {
        for x in omega.col_mut(j).iter_mut() {
            *x = rng.sample(StandardNormal);
        }
    }

    let mut y = Mat::<f32>::zeros(p, l);
    matmul(y.as_mut(), Accum::Replace, m, omega.as_ref(), 1.0f32, par);
    drop(omega);
    let mut basis = orthonormal_basis(y.as_ref());

    let mut z = Mat::<f32>::zeros(q, l);
    for _ in 0..power_iters {
        matmul(
            z.as_mut(),
            Accum::Replace,
            m.transpose(),
            basis.as_ref(),
            1.0f32,
            par,
        );
        let zq = orthonormal_basis(z.as_ref());
        matmul(y.as_mut(), Accum::Replace, m, zq.as_ref(), 1.0f32, par);
        basis = orthonormal_basis(y.as_ref());
    }
    drop(z);
    drop(y);

    // B̃ = Qᵀ·M (ℓ × q) and its exact thin SVD.
    let mut small = Mat::<f32>::zeros(l, q);
    matmul(
        small.as_mut(),
        Accum::Replace,
        basis.transpose(),
        m,
        1.0f32,
        par,
    );
    let svd = small
        .thin_svd()
        .map_err(|e| Error::Factorisation(format!("thin SVD of the projected matrix: {e:?}")))?;
    drop(small);

    let mut u = Mat::<f32>::zeros(p, rank);
    matmul(
        u.as_mut(),
        Accum::Replace,
        basis.as_ref(),
        svd.U().subcols(0, rank),
        1.0f32,
        par,
    );
    let v = svd.V().subcols(0, rank).to_owned();
    let s = svd.S().column_vector();
    let s: Vec<f32> = (0..rank).map(|i| s[i]).collect();
    Ok((u, s, v))
}

/// Thin `Q` of the Householder QR of `y` (same shape as `y` when `nrows ≥ ncols`).
fn orthonormal_basis(y: MatRef<'_, f32>) -> Mat<f32> {
    y.qr().compute_thin_Q()
}

/// Makes the largest-magnitude entry of each column of `u` positive (first on ties),
/// flipping the matching column of `v` with it.
fn fix_signs(u: &mut Mat<f32>, v: &mut Mat<f32>) {
    for j in 0..u.ncols() {
        let mut best = 0.0f32;
        let mut negative = false;
        for x in u.col(j).iter() {
            if x.abs() > best {
                best = x.abs();
                negative = *x < 0.0;
            }
        }
        if negative {
            for x in u.col_mut(j).iter_mut() {
                *x = -*x;
            }
            for x in v.col_mut(j).iter_mut() {
                *x = -*x;
            }
        }
    }
}

/// `A = U·diag(√σ)`, `B = diag(√σ)·Vᵀ`.
fn split_sqrt(u: &Mat<f32>, s: &[f32], v: &Mat<f32>) -> LowRank {
    let r = s.len();
    let roots: Vec<f32> = s.iter().map(|&x| x.max(0.0).sqrt()).collect();
    let mut a = u.clone();
    for (j, &rt) in roots.iter().enumerate() {
        for x in a.col_mut(j).iter_mut() {
            *x *= rt;
        }
    }
    let n = v.nrows();
    let mut b = Mat::<f32>::zeros(r, n);
    for j in 0..n {
        let mut col = b.col_mut(j);
        for i in 0..r {
            col[i] = roots[i] * v[(j, i)];
        }
    }
    LowRank {
        a,
        b,
        sigma: s.to_vec(),
    }
}
