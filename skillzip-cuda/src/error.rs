//! The one error type of `skillzip-cuda`.

use thiserror::Error;

/// Everything that can go wrong in `skillzip-cuda`.
///
/// Host-side validation (shapes, sizes, mixed skillpack sets) happens before anything is
/// issued to the GPU and reports [`Error::InvalidInput`]; the crate does not panic on bad
/// input.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum Error {
    /// No usable GPU: the CUDA driver library is missing, it reports zero devices, or the
    /// requested ordinal does not exist. GPU tests report themselves skipped on this error.
    #[error("no CUDA device: {reason}")]
    NoDevice {
        /// Why no device could be opened.
        reason: String,
    },
    /// A CUDA driver call failed.
    #[error("CUDA driver error: {0}")]
    Driver(#[from] cudarc::driver::DriverError),
    /// The driver could not load (JIT-compile) one of the embedded PTX modules, or the module
    /// lacks its kernel.
    #[error("loading PTX kernel `{kernel}` failed: {source}")]
    Ptx {
        /// The kernel (entry point) whose module failed.
        kernel: &'static str,
        /// The driver's error.
        source: cudarc::driver::DriverError,
    },
    /// A cuBLAS call failed.
    #[error("cuBLAS error: {0}")]
    Cublas(#[from] cudarc::cublas::result::CublasError),
    /// An error of the numerics crate (for example an invalid layer).
    #[error(transparent)]
    Core(#[from] skillzip_core::Error),
    /// A call's arguments do not fit together: shape or size mismatches, skillpacks with
    /// different `C_i`/`C_o` in one set, more rows than a workspace holds, buffers of another
    /// device, and so on.
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// The arguments a launch pushed do not match the kernel's parameter list
    /// (`device::QUANTIZE_PARAMS` / `device::LOWRANK_PARAMS`, the ABI of `ptx/README.md`): a
    /// wrong name or width, a missing or an extra argument. A bug in this crate, caught before
    /// anything is launched.
    #[error("kernel `{kernel}` argument list does not match its ABI: {detail}")]
    KernelAbi {
        /// The kernel (entry point) being launched.
        kernel: &'static str,
        /// Which argument disagrees, and how.
        detail: String,
    },
}

/// `Result` with the crate's [`Error`](enum@Error).
pub type Result<T, E = Error> = std::result::Result<T, E>;
