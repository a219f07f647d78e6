//! Error metrics of DESIGN.md §4.7 and the [`DeltaApprox`] trait every method implements, so
//! SkillZip, its ablations and the baselines are measured by one function on the same inputs.

use faer::{Mat, MatRef};

use crate::Result;
use crate::layer::CompressedLayer;
use crate::runtime;

/// A compressed stand-in for a dense delta `W` (`C_i × C_o`).
pub trait DeltaApprox {
    /// `Ŷ ≈ X·W` for held-out activations `X` (`T × C_i`), computed the way the method runs.
    fn apply(&self, x: MatRef<'_, f32>) -> Result<Mat<f32>>;
    /// The dense weight the method stores (dequantized).
    fn weight(&self) -> Mat<f32>;
    /// Bytes in storage, scales, smoothing vectors and padding included.
    fn storage_bytes(&self) -> usize;
}

impl DeltaApprox for CompressedLayer {
    fn apply(&self, x: MatRef<'_, f32>) -> Result<Mat<f32>> {
        runtime::apply_batched(self, x)
    }
    fn weight(&self) -> Mat<f32> {
        self.effective_weight()
    }
    fn storage_bytes(&self) -> usize {
        CompressedLayer::storage_bytes(self)
    }
}

/// Squared Frobenius norm in f64.
pub fn frobenius_sq(m: MatRef<'_, f32>) -> f64 {
    let mut s = 0.0f64;
    for j in 0..m.ncols() {
        for i in 0..m.nrows() {
            let v = m[(i, j)] as f64;
            s += v * v;
        }
    }
    s
}

/// `‖reference − estimate‖_F / ‖reference‖_F` in f64 (0 when both are zero; infinite when
/// only the reference is zero).
///
/// # Panics
/// If the two shapes differ.
pub fn relative_error(reference: MatRef<'_, f32>, estimate: MatRef<'_, f32>) -> f64 {
    assert_eq!(
        (reference.nrows(), reference.ncols()),
        (estimate.nrows(), estimate.ncols()),
        "relative_error: shapes differ"
    );
    let mut num = 0.0f64;
    for j in 0..reference.ncols() {
        for i in 0..reference.nrows() {
            let d = reference[(i, j)] as f64 - estimate[(i, j)] as f64;
            num += d * d;
        }
    }
    let den = frobenius_sq(reference);
    if den == 0.0 {
        if num == 0.0 { 0.0 } else { f64::INFINITY }
    } else {
        (num / den).sqrt()
    }
}

/// One row of a fidelity table.
#[derive(Debug, Clone, PartialEq)]
pub struct Fidelity {
    /// `‖XΔ − Ŷ‖_F / ‖XΔ‖_F` on held-out activations.
    pub rel_output_error: f64,
    /// `‖Δ − Ŵ‖_F / ‖Δ‖_F`.
    pub rel_weight_error: f64,
    /// Bytes in storage, everything included.
    pub bytes: usize,
    /// `8 · bytes / (C_i · C_o)`.
    pub bits_per_param: f64,
    /// Bytes of the fp16 delta over `bytes`.
    pub compression_ratio: f64,
}

/// Measures `approx` against the original `delta` on held-out activations `x` (`T × C_i`).
/// `reference_output` is `X·Δ` when the caller has it (it is the same for every method).
pub fn evaluate(
    approx: &dyn DeltaApprox,
    delta: MatRef<'_, f32>,
    x: MatRef<'_, f32>,
    reference_output: Option<MatRef<'_, f32>>,
) -> Result<Fidelity> {
    let owned;
    let reference = match reference_output {
        Some(r) => r,
        None => {
            owned = x * delta;
            owned.as_ref()
        }
    };
    let y_hat = approx.apply(x)?;
    let bytes = approx.storage_bytes();
    let params = (delta.nrows() * delta.ncols()) as f64;
    Ok(Fidelity {
        rel_output_error: relative_error(reference, y_hat.as_ref()),
        rel_weight_error: relative_error(delta, approx.weight().as_ref()),
        bytes,
        bits_per_param: 8.0 * bytes as f64 / params,
        compression_ratio: 2.0 * params / bytes as f64,
    })
}
