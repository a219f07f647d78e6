//! cuBLAS baselines the skillpack path is measured against: the dense FP16/BF16 GEMM of a
//! full weight (what a merged fine-tune costs) and the FP16/BF16 low-rank pair
//! (`SVD-16`-style factors without quantization).
//!
//! # Layouts
//!
//! Everything is row-major, as in the rest of the crate and in HF checkpoints:
//! activations `x` are `T × C_i` (row stride `x_stride ≥ C_i`), a weight `W` is stored
//! `C_o × C_i` (K = `C_i` contiguous, the HF `nn.Linear` layout), outputs `y` are `T × C_o`
//! (row stride `y_stride ≥ C_o`), and the layer computes `y = x · Wᵀ`.
//!
//! cuBLAS is column-major. A row-major `r × c` matrix with row stride `ld` is, byte for byte,
//! the column-major `c × r` matrix with leading dimension `ld`: its transpose. So
//!
//! - `y` (row-major `T × C_o`) is column-major `yᵀ` (`C_o × T`, `ldc = y_stride`);
//! - `x` (row-major `T × C_i`) is column-major `xᵀ` (`C_i × T`, `ldb = x_stride`);
//! - `W` (row-major `C_o × C_i`) is column-major `Wᵀ` (`C_i × C_o`, `lda = C_i`).
//!
//! and `y = x·Wᵀ` is, transposed, `yᵀ = W · xᵀ` = `op(A) · op(B)` with `A` the stored `Wᵀ`
//! taken transposed (`transa = T`) and `B` the stored `xᵀ` as is (`transb = N`):
//! `m = C_o`, `n = T`, `k = C_i`. This "TN" form, with both operands K-contiguous, is the
//! layout cuBLAS's tensor-core kernels prefer.
//!
//! Inputs and outputs are FP16 or BF16; products accumulate in f32 (`CUBLAS_COMPUTE_32F`,
//! through cudarc's [`Gemm`] impls for `half::f16`/`half::bf16`, which call `cublasGemmEx`
//! with that compute type and `CUBLAS_GEMM_DEFAULT`); the result is rounded once to the
//! output type.
//!
//! # CUDA graphs
//!
//! [`DenseBaseline::new`] gives the handle a workspace of its own
//! (`cublasSetWorkspace`, [`WORKSPACE_BYTES`]), so a GEMM issued inside a stream capture
//! ([`crate::graph::capture`]) never needs cuBLAS to allocate.

use std::sync::Arc;

use cudarc::cublas::{CudaBlas, Gemm, GemmConfig, sys as blas_sys};
use cudarc::driver::{CudaSlice, CudaStream, DevicePtr, DevicePtrMut};
use half::{bf16, f16};

use crate::error::{Error, Result};

/// Bytes of the cuBLAS workspace each [`DenseBaseline`] owns (NVIDIA's recommendation for
/// Hopper; more than enough for Ampere).
pub const WORKSPACE_BYTES: usize = 32 << 20;

/// Shape and row strides of one `y = x · Wᵀ` (see the [module docs](self)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GemmDims {
    /// Token rows `T`.
    pub rows: usize,
    /// Input channels `C_i` (the K of the product).
    pub c_in: usize,
    /// Output channels `C_o`.
    pub c_out: usize,
    /// Elements between consecutive rows of `x` (`≥ c_in`).
    pub x_stride: usize,
    /// Elements between consecutive rows of `y` (`≥ c_out`).
    pub y_stride: usize,
}

impl GemmDims {
    /// Densely packed rows: `x_stride = c_in`, `y_stride = c_out`.
    pub fn new(rows: usize, c_in: usize, c_out: usize) -> Self {
        Self {
            rows,
            c_in,
            c_out,
            x_stride: c_in,
            y_stride: c_out,
        }
    }

    /// Elements a buffer of `rows` rows of `cols` valid elements at `stride` must hold.
    fn span(rows: usize, cols: usize, stride: usize) -> Option<usize> {
        if rows == 0 {
            return Some(0);
        }
        (rows - 1).checked_mul(stride)?.checked_add(cols)
    }

    /// Checks the dimensions against the buffers' lengths (in elements) and cuBLAS's `int`
    /// arguments.
    fn validate(&self, x_len: usize, w_len: usize, y_len: usize) -> Result<()> {
        let bad = |what: String| Err(Error::InvalidInput(format!("dense GEMM: {what}")));
        if self.c_in == 0 || self.c_out == 0 {
            return bad(format!("empty weight {} × {}", self.c_out, self.c_in));
        }
        if self.x_stride < self.c_in || self.y_stride < self.c_out {
            return bad(format!(
                "row strides x {} < C_i {} or y {} < C_o {}",
                self.x_stride, self.c_in, self.y_stride, self.c_out
            ));
        }
        let fits = |v: usize| i32::try_from(v).is_ok();
        if ![
            self.rows,
            self.c_in,
            self.c_out,
            self.x_stride,
            self.y_stride,
        ]
        .into_iter()
        .all(fits)
        {
            return bad(format!("dimensions exceed cuBLAS's i32: {self:?}"));
        }
        let need =
            |rows: usize, cols: usize, stride: usize, have: usize, name: &str| match Self::span(
                rows, cols, stride,
            ) {
                Some(n) if n <= have => Ok(()),
                n => Err(Error::InvalidInput(format!(
                    "dense GEMM: `{name}` holds {have} elements, {self:?} needs {n:?}"
                ))),
            };
        need(self.rows, self.c_in, self.x_stride, x_len, "x")?;
        need(self.c_out, self.c_in, self.c_in, w_len, "w")?;
        need(self.rows, self.c_out, self.y_stride, y_len, "y")
    }
}

/// A cuBLAS handle on one stream with its own workspace: the dense and low-rank FP16/BF16
/// baselines.
#[derive(Debug)]
pub struct DenseBaseline {
    blas: CudaBlas,
    stream: Arc<CudaStream>,
    // Kept alive for the handle; cuBLAS writes to it during every GEMM.
    _workspace: CudaSlice<u8>,
}

impl DenseBaseline {
    /// A cuBLAS handle whose work goes to `stream`, with a [`WORKSPACE_BYTES`] workspace.
    pub fn new(stream: &Arc<CudaStream>) -> Result<Self> {
        // `CudaBlas::new` panics when cudarc cannot load libcublas; report it as a missing
        // device instead, so callers (and GPU tests) can skip.
        // SAFETY: only tries to dlopen the library names cudarc would use.
        if !unsafe { blas_sys::is_culib_present() } {
            return Err(Error::NoDevice {
                reason: "the cuBLAS library (libcublas) could not be loaded".into(),
            });
        }
        let blas = CudaBlas::new(stream.clone())?;
        let mut workspace = stream.alloc_zeros::<u8>(WORKSPACE_BYTES)?;
        {
            let (ptr, _record) = workspace.device_ptr_mut(stream);
            // SAFETY: `ptr` is a live allocation of WORKSPACE_BYTES bytes in the stream's
            // context. The returned value owns both the handle and the allocation and drops
            // `blas` (destroying the handle) before `_workspace` (fields drop in declaration
            // order), and the free is stream-ordered after every GEMM issued on the stream,
            // so cuBLAS never touches freed memory.
            unsafe {
                blas_sys::cublasSetWorkspace_v2(
                    *blas.handle(),
                    ptr as *mut std::ffi::c_void,
                    WORKSPACE_BYTES,
                )
                .result()?;
            }
        }
        Ok(Self {
            blas,
            stream: stream.clone(),
            _workspace: workspace,
        })
    }

    /// The stream the GEMMs are issued on.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// `y = x · Wᵀ` (or `y += x · Wᵀ` with `accumulate`) in FP16, f32 accumulation.
    /// `w` is `C_o × C_i` row-major; see the [module docs](self) for the layouts.
    pub fn gemm_f16<X, W, Y>(
        &self,
        x: &X,
        w: &W,
        y: &mut Y,
        dims: GemmDims,
        accumulate: bool,
    ) -> Result<()>
    where
        X: DevicePtr<f16>,
        W: DevicePtr<f16>,
        Y: DevicePtrMut<f16>,
    {
        self.gemm_tn(
            x,
            w,
            y,
            dims,
            f16::ONE,
            scalar(accumulate, f16::ZERO, f16::ONE),
        )
    }

    /// `y = x · Wᵀ` (or `y += x · Wᵀ` with `accumulate`) in BF16, f32 accumulation.
    /// `w` is `C_o × C_i` row-major; see the [module docs](self) for the layouts.
    pub fn gemm_bf16<X, W, Y>(
        &self,
        x: &X,
        w: &W,
        y: &mut Y,
        dims: GemmDims,
        accumulate: bool,
    ) -> Result<()>
    where
        X: DevicePtr<bf16>,
        W: DevicePtr<bf16>,
        Y: DevicePtrMut<bf16>,
    {
        self.gemm_tn(
            x,
            w,
            y,
            dims,
            bf16::ONE,
            scalar(accumulate, bf16::ZERO, bf16::ONE),
        )
    }

    /// The FP16 low-rank baseline `y += (x · Aᵀ) · Bᵀ`: `a` is `R × C_i`, `b` is `C_o × R`
    /// (the stored layouts of a skillpack's factors), `tmp` holds the `T × R` intermediate
    /// (rounded to FP16 between the two GEMMs). `dims.c_in`/`dims.c_out` are the layer's;
    /// strides apply to `x` and `y`.
    #[allow(clippy::too_many_arguments)]
    pub fn lowrank_f16<X, A, B, Y>(
        &self,
        x: &X,
        a: &A,
        b: &B,
        tmp: &mut CudaSlice<f16>,
        y: &mut Y,
        dims: GemmDims,
        rank: usize,
    ) -> Result<()>
    where
        X: DevicePtr<f16>,
        A: DevicePtr<f16>,
        B: DevicePtr<f16>,
        Y: DevicePtrMut<f16>,
    {
        let (first, second) = lowrank_dims(dims, rank);
        self.gemm_tn(x, a, tmp, first, f16::ONE, f16::ZERO)?;
        self.gemm_tn(tmp, b, y, second, f16::ONE, f16::ONE)
    }

    /// The BF16 low-rank baseline `y += (x · Aᵀ) · Bᵀ`; as [`Self::lowrank_f16`].
    #[allow(clippy::too_many_arguments)]
    pub fn lowrank_bf16<X, A, B, Y>(
        &self,
        x: &X,
        a: &A,
        b: &B,
        tmp: &mut CudaSlice<bf16>,
        y: &mut Y,
        dims: GemmDims,
        rank: usize,
    ) -> Result<()>
    where
        X: DevicePtr<bf16>,
        A: DevicePtr<bf16>,
        B: DevicePtr<bf16>,
        Y: DevicePtrMut<bf16>,
    {
        let (first, second) = lowrank_dims(dims, rank);
        self.gemm_tn(x, a, tmp, first, bf16::ONE, bf16::ZERO)?;
        self.gemm_tn(tmp, b, y, second, bf16::ONE, bf16::ONE)
    }

    /// `y = alpha · x · Wᵀ + beta · y` through the column-major identity of the module docs:
    /// `yᵀ (C_o × T) = op_T(Wᵀ stored, lda = C_i) · op_N(xᵀ stored, ldb = x_stride)`.
    fn gemm_tn<T, X, W, Y>(
        &self,
        x: &X,
        w: &W,
        y: &mut Y,
        dims: GemmDims,
        alpha: T,
        beta: T,
    ) -> Result<()>
    where
        CudaBlas: Gemm<T>,
        X: DevicePtr<T>,
        W: DevicePtr<T>,
        Y: DevicePtrMut<T>,
    {
        dims.validate(x.len(), w.len(), y.len())?;
        if dims.rows == 0 {
            return Ok(());
        }
        // `validate` checked every value fits an i32.
        let int = |v: usize| v as i32;
        let cfg = GemmConfig {
            transa: blas_sys::cublasOperation_t::CUBLAS_OP_T,
            transb: blas_sys::cublasOperation_t::CUBLAS_OP_N,
            m: int(dims.c_out),
            n: int(dims.rows),
            k: int(dims.c_in),
            alpha,
            lda: int(dims.c_in),
            ldb: int(dims.x_stride),
            beta,
            ldc: int(dims.y_stride),
        };
        // SAFETY: `validate` proved that `w` holds `C_o` rows of `C_i` (A: `k × m` column-major,
        // lda = k), `x` holds `T` rows of `x_stride ≥ C_i` (B: `k × n`, ldb ≥ k) and `y` holds
        // `T` rows of `y_stride ≥ C_o` (C: `m × n`, ldc ≥ m), so cuBLAS reads and writes only
        // inside the three buffers; all three are device memory of the handle's context.
        unsafe { self.blas.gemm(cfg, w, x, y) }?;
        Ok(())
    }
}

/// `beta` of a GEMM that overwrites (`false`) or accumulates into (`true`) its output.
fn scalar<T>(accumulate: bool, zero: T, one: T) -> T {
    if accumulate { one } else { zero }
}

/// The two GEMMs of the low-rank baseline: `tmp = x·Aᵀ` (`C_i → R`, tmp packed) and
/// `y += tmp·Bᵀ` (`R → C_o`, tmp as input).
fn lowrank_dims(dims: GemmDims, rank: usize) -> (GemmDims, GemmDims) {
    let first = GemmDims {
        rows: dims.rows,
        c_in: dims.c_in,
        c_out: rank,
        x_stride: dims.x_stride,
        y_stride: rank,
    };
    let second = GemmDims {
        rows: dims.rows,
        c_in: rank,
        c_out: dims.c_out,
        x_stride: rank,
        y_stride: dims.y_stride,
    };
    (first, second)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn dims_validation() {
        let d = GemmDims::new(4, 16, 8);
        assert!(d.validate(64, 128, 32).is_ok());
        assert!(d.validate(63, 128, 32).is_err());
        assert!(d.validate(64, 127, 32).is_err());
        assert!(d.validate(64, 128, 31).is_err());
        let strided = GemmDims {
            x_stride: 20,
            y_stride: 10,
            ..d
        };
        // Last row needs only its valid elements: 3·20 + 16 and 3·10 + 8.
        assert!(strided.validate(76, 128, 38).is_ok());
        assert!(strided.validate(75, 128, 38).is_err());
        assert!(
            GemmDims { x_stride: 15, ..d }
                .validate(64, 128, 32)
                .is_err()
        );
        assert!(GemmDims::new(0, 16, 8).validate(0, 128, 0).is_ok());
        assert!(GemmDims::new(1, 0, 8).validate(0, 0, 8).is_err());
        assert!(
            GemmDims::new(1, 1 << 31, 1)
                .validate(usize::MAX, usize::MAX, 1)
                .is_err()
        );
    }

    #[test]
    fn lowrank_split() {
        let (a, b) = lowrank_dims(
            GemmDims {
                rows: 3,
                c_in: 10,
                c_out: 7,
                x_stride: 12,
                y_stride: 9,
            },
            4,
        );
        assert_eq!((a.c_in, a.c_out, a.x_stride, a.y_stride), (10, 4, 12, 4));
        assert_eq!((b.c_in, b.c_out, b.x_stride, b.y_stride), (4, 7, 4, 9));
    }

    /// Opens the GPU and a cuBLAS handle, or says why the test is skipped.
    pub(crate) fn gpu_and_blas(test: &str) -> Option<(crate::device::Gpu, DenseBaseline)> {
        let gpu = crate::device::open_or_skip(test)?;
        match DenseBaseline::new(gpu.stream()) {
            Ok(blas) => Some((gpu, blas)),
            Err(Error::NoDevice { reason }) => {
                eprintln!("skipped: {test}: {reason}");
                None
            }
            Err(e) => panic!("{test}: cuBLAS handle: {e}"),
        }
    }

    /// Small integers in {-1, 0, 1}: every product and sum below is exact in f16, bf16 and
    /// f32, so the GPU result must equal the f64 reference exactly.
    pub(crate) fn tri(i: usize, salt: usize) -> f32 {
        ((i * 7 + salt * 13 + (i / 5) * 3) % 3) as f32 - 1.0
    }

    /// `y[t, o] (+)= Σ_k x[t, k] · w[o, k]` over row-major buffers with strides.
    pub(crate) fn reference(x: &[f32], w: &[f32], y: &mut [f32], d: GemmDims, accumulate: bool) {
        for t in 0..d.rows {
            for o in 0..d.c_out {
                let dot: f64 = (0..d.c_in)
                    .map(|k| x[t * d.x_stride + k] as f64 * w[o * d.c_in + k] as f64)
                    .sum();
                let prev = if accumulate {
                    y[t * d.y_stride + o] as f64
                } else {
                    0.0
                };
                y[t * d.y_stride + o] = (prev + dot) as f32;
            }
        }
    }

    /// One of [`DenseBaseline::gemm_f16`] / [`DenseBaseline::gemm_bf16`] on slices.
    type DenseRun<T> = fn(
        &DenseBaseline,
        &CudaSlice<T>,
        &CudaSlice<T>,
        &mut CudaSlice<T>,
        GemmDims,
        bool,
    ) -> Result<()>;

    fn check_dense<T: Copy + cudarc::driver::DeviceRepr + cudarc::driver::ValidAsZeroBits>(
        test: &str,
        from: fn(f32) -> T,
        to: fn(T) -> f32,
        run: DenseRun<T>,
    ) {
        let Some((gpu, blas)) = gpu_and_blas(test) else {
            return;
        };
        let stream = gpu.stream();
        // Ragged sizes, padded strides; the padding of `y` holds a sentinel that must survive.
        let d = GemmDims {
            rows: 5,
            c_in: 37,
            c_out: 19,
            x_stride: 40,
            y_stride: 23,
        };
        let x: Vec<f32> = (0..d.rows * d.x_stride).map(|i| tri(i, 1)).collect();
        let w: Vec<f32> = (0..d.c_out * d.c_in).map(|i| tri(i, 2)).collect();
        let y0: Vec<f32> = (0..d.rows * d.y_stride).map(|i| 3.0 * tri(i, 3)).collect();
        for accumulate in [false, true] {
            let up = |v: &[f32]| {
                stream
                    .clone_htod(&v.iter().map(|&f| from(f)).collect::<Vec<T>>())
                    .unwrap()
            };
            let (xd, wd, mut yd) = (up(&x), up(&w), up(&y0));
            run(&blas, &xd, &wd, &mut yd, d, accumulate).unwrap();
            let got: Vec<f32> = stream
                .clone_dtoh(&yd)
                .unwrap()
                .into_iter()
                .map(to)
                .collect();
            let mut want = y0.clone();
            reference(&x, &w, &mut want, d, accumulate);
            assert_eq!(got, want, "{test}, accumulate = {accumulate}");
        }
        // Buffers too small are rejected before anything is issued.
        let xd = stream.alloc_zeros::<T>(d.rows * d.x_stride - 4).unwrap();
        let wd = stream.alloc_zeros::<T>(d.c_out * d.c_in).unwrap();
        let mut yd = stream.alloc_zeros::<T>(d.rows * d.y_stride).unwrap();
        assert!(matches!(
            run(&blas, &xd, &wd, &mut yd, d, false),
            Err(Error::InvalidInput(_))
        ));
    }

    #[test]
    fn gemm_f16_matches_reference() {
        check_dense(
            "gemm_f16_matches_reference",
            f16::from_f32,
            f16::to_f32,
            |b, x, w, y, d, acc| b.gemm_f16(x, w, y, d, acc),
        );
    }

    #[test]
    fn gemm_bf16_matches_reference() {
        check_dense(
            "gemm_bf16_matches_reference",
            bf16::from_f32,
            bf16::to_f32,
            |b, x, w, y, d, acc| b.gemm_bf16(x, w, y, d, acc),
        );
    }

    #[test]
    fn lowrank_matches_reference() {
        let Some((gpu, blas)) = gpu_and_blas("lowrank_matches_reference") else {
            return;
        };
        let stream = gpu.stream();
        let d = GemmDims {
            rows: 3,
            c_in: 33,
            c_out: 17,
            x_stride: 35,
            y_stride: 17,
        };
        let rank = 5;
        let x: Vec<f32> = (0..d.rows * d.x_stride).map(|i| tri(i, 4)).collect();
        let a: Vec<f32> = (0..rank * d.c_in).map(|i| tri(i, 5)).collect();
        let b: Vec<f32> = (0..d.c_out * rank).map(|i| tri(i, 6)).collect();
        let y0: Vec<f32> = (0..d.rows * d.y_stride).map(|i| tri(i, 7)).collect();
        let (first, second) = lowrank_dims(d, rank);
        let mut tmp = vec![0.0; d.rows * rank];
        reference(&x, &a, &mut tmp, first, false);
        let mut want = y0.clone();
        reference(&tmp, &b, &mut want, second, true);

        let h = |v: &[f32]| v.iter().map(|&f| f16::from_f32(f)).collect::<Vec<_>>();
        let (xd, ad, bd) = (
            stream.clone_htod(&h(&x)).unwrap(),
            stream.clone_htod(&h(&a)).unwrap(),
            stream.clone_htod(&h(&b)).unwrap(),
        );
        let mut yd = stream.clone_htod(&h(&y0)).unwrap();
        let mut tmpd = stream.alloc_zeros::<f16>(d.rows * rank).unwrap();
        blas.lowrank_f16(&xd, &ad, &bd, &mut tmpd, &mut yd, d, rank)
            .unwrap();
        let got: Vec<f32> = stream
            .clone_dtoh(&yd)
            .unwrap()
            .into_iter()
            .map(f16::to_f32)
            .collect();
        assert_eq!(got, want);

        let hb = |v: &[f32]| v.iter().map(|&f| bf16::from_f32(f)).collect::<Vec<_>>();
        let (xd, ad, bd) = (
            stream.clone_htod(&hb(&x)).unwrap(),
            stream.clone_htod(&hb(&a)).unwrap(),
            stream.clone_htod(&hb(&b)).unwrap(),
        );
        let mut yd = stream.clone_htod(&hb(&y0)).unwrap();
        let mut tmpd = stream.alloc_zeros::<bf16>(d.rows * rank).unwrap();
        blas.lowrank_bf16(&xd, &ad, &bd, &mut tmpd, &mut yd, d, rank)
            .unwrap();
        let got: Vec<f32> = stream
            .clone_dtoh(&yd)
            .unwrap()
            .into_iter()
            .map(bf16::to_f32)
            .collect();
        assert_eq!(got, want);
    }
}
