//! The one error type of `skillzip-core`.

use thiserror::Error;

/// Everything that can go wrong in `skillzip-core`.
///
/// Every API that takes data from outside the crate (calibration batches, deltas, configs)
/// validates it and returns one of these instead of panicking.
#[derive(Debug, Clone, PartialEq, Error)]
#[non_exhaustive]
pub enum Error {
    /// An input held a NaN or an infinity; `what` names the input, `index` the flat position.
    #[error("{what} holds a non-finite value at flat index {index}")]
    NonFinite {
        /// Which input (e.g. "delta", "calibration activations").
        what: &'static str,
        /// Row-major flat index of the first offending value.
        index: usize,
    },
    /// Two shapes that must agree do not.
    #[error("shape mismatch in {what}: expected {expected:?}, got {got:?}")]
    ShapeMismatch {
        /// Which operand.
        what: &'static str,
        /// The shape that was required (rows, cols).
        expected: (usize, usize),
        /// The shape that was given (rows, cols).
        got: (usize, usize),
    },
    /// A configuration value is out of its valid range.
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
    /// The reduction length would let an exact i32 accumulator overflow (DESIGN.md §4.6).
    #[error(
        "reduction length {len} exceeds {max}, the largest that an exact i32 accumulator of i8 products holds"
    )]
    ReductionTooLong {
        /// The requested reduction length.
        len: usize,
        /// The largest safe one.
        max: usize,
    },
    /// An input that must not be empty is empty.
    #[error("{0} is empty")]
    Empty(&'static str),
    /// A dense factorisation failed (for example an SVD that did not converge).
    #[error("factorisation failed: {0}")]
    Factorisation(String),
    /// A matrix that must be symmetric positive definite is not, even after damping.
    #[error("{0} is not positive definite after damping")]
    NotPositiveDefinite(&'static str),
    /// Grouped application named a skillpack index that does not exist.
    #[error("token row {row} names skillpack {index}, but only {count} were given")]
    UnknownSkillpack {
        /// The token row.
        row: usize,
        /// The skillpack index it named.
        index: usize,
        /// How many skillpacks exist.
        count: usize,
    },
    /// A kernel was requested for an instruction set this CPU (or build target) lacks.
    #[error("the {isa} kernel path is not available on this CPU")]
    IsaUnavailable {
        /// The instruction-set path that was asked for.
        isa: &'static str,
    },
}

/// `Result` with [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

/// Returns `Err(NonFinite)` at the first NaN or infinity of `values`.
pub fn ensure_finite(what: &'static str, values: &[f32]) -> Result<()> {
    match values.iter().position(|v| !v.is_finite()) {
        Some(index) => Err(Error::NonFinite { what, index }),
        None => Ok(()),
    }
}

/// Returns `Err(ShapeMismatch)` unless `got == expected`.
pub fn ensure_shape(
    what: &'static str,
    expected: (usize, usize),
    got: (usize, usize),
) -> Result<()> {
    if expected == got {
        Ok(())
    } else {
        Err(Error::ShapeMismatch {
            what,
            expected,
            got,
        })
    }
}

/// Returns `Err(NonFinite)` at the first NaN or infinity of a matrix (row-major index).
pub fn ensure_finite_mat(what: &'static str, m: faer::MatRef<'_, f32>) -> Result<()> {
    for i in 0..m.nrows() {
        for j in 0..m.ncols() {
            if !m[(i, j)].is_finite() {
                return Err(Error::NonFinite {
                    what,
                    index: i * m.ncols() + j,
                });
            }
        }
    }
    Ok(())
}
