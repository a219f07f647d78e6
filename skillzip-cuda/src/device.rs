//! [`Gpu`]: one CUDA device, the stream every launch of this crate goes to, and the two PTX
//! kernels, JIT-compiled by the driver when the device is opened.

use std::io::Write;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

use cudarc::driver::sys::{CUdevice_attribute, CUfunction_attribute};
use cudarc::driver::{
    CudaContext, CudaFunction, CudaSlice, CudaStream, LaunchArgs, LaunchConfig, PushKernelArg,
};
use cudarc::nvrtc::Ptx;

use crate::error::{Error, Result};

/// `ptx/quantize.ptx`, embedded at build time (kernel `skillzip_quantize`).
pub const QUANTIZE_PTX: &str = include_str!("../../ptx/quantize.ptx");

/// `ptx/lowrank.ptx`, embedded at build time (kernel `skillzip_lowrank`).
pub const LOWRANK_PTX: &str = include_str!("../../ptx/lowrank.ptx");

/// Dynamic shared memory of every `skillzip_lowrank` launch: 4 pipeline stages × (8 KiB A
/// tile + 8 KiB B tile). Above the default 48 KiB, so [`Gpu::open`] raises the function's
/// `CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES` to this value.
pub const LOWRANK_SMEM_BYTES: u32 = 65536;

/// Entry point of `quantize.ptx`.
pub const QUANTIZE_KERNEL: &str = "skillzip_quantize";

/// Entry point of `lowrank.ptx`.
pub const LOWRANK_KERNEL: &str = "skillzip_lowrank";

/// The PTX type of one kernel parameter (`.param .u32` or `.param .u64`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Param {
    /// `.u32`: a 32-bit scalar.
    U32,
    /// `.u64`: a device address (0 for a null pointer).
    U64,
}

impl Param {
    /// The PTX spelling, `u32` or `u64`.
    pub fn ptx_type(self) -> &'static str {
        match self {
            Param::U32 => "u32",
            Param::U64 => "u64",
        }
    }
}

/// The parameters of `skillzip_quantize`, in order (`ptx/README.md`; names without the
/// `p_` prefix of `quantize.ptx`). Every launch pushes its arguments through `KernelArgs`,
/// which checks them against this list; a host-only test checks the list against the
/// `.entry` of [`QUANTIZE_PTX`] and against the README.
pub const QUANTIZE_PARAMS: &[(&str, Param)] = &[
    ("x", Param::U64),
    ("x_dtype", Param::U32),
    ("x_stride", Param::U32),
    ("t_rows", Param::U32),
    ("c_in", Param::U32),
    ("ci_pad", Param::U32),
    ("pack_of_row", Param::U64),
    ("packs", Param::U64),
    ("x_hat", Param::U64),
    ("sigma_x", Param::U64),
    ("z", Param::U64),
    ("r_max", Param::U32),
    ("counters", Param::U64),
    ("n_counters", Param::U32),
    ("n_packs", Param::U32),
    ("pack_rows", Param::U64),
    ("pack_count", Param::U64),
];

/// The parameters of `skillzip_lowrank`, in order (`ptx/README.md`; names without the `p_`
/// prefix of `lowrank.ptx`), checked like [`QUANTIZE_PARAMS`].
pub const LOWRANK_PARAMS: &[(&str, Param)] = &[
    ("stage", Param::U32),
    ("packs", Param::U64),
    ("pack_of_row", Param::U64),
    ("t_rows", Param::U32),
    ("ci_pad", Param::U32),
    ("k_chunk", Param::U32),
    ("n_tiles_max", Param::U32),
    ("c_out", Param::U32),
    ("r_max", Param::U32),
    ("x_hat", Param::U64),
    ("z", Param::U64),
    ("z_hat", Param::U64),
    ("m", Param::U64),
    ("sigma_x", Param::U64),
    ("counters", Param::U64),
    ("y", Param::U64),
    ("y_dtype", Param::U32),
    ("y_stride", Param::U32),
    ("acc_tap", Param::U64),
    ("pack_rows", Param::U64),
    ("pack_count", Param::U64),
];

/// The value a null pointer parameter is pushed as.
static NULL_PTR: u64 = 0;

/// Walks a kernel's parameter list while arguments are pushed: each push names the parameter
/// it means and has a width; the first push that is not the next parameter of the list (by
/// name and type), or a push past its end, is remembered, and [`AbiCursor::finish`] reports
/// it, or a list not pushed to its end, as [`Error::KernelAbi`]. Pure host code.
#[derive(Debug, Clone)]
pub(crate) struct AbiCursor {
    kernel: &'static str,
    params: &'static [(&'static str, Param)],
    next: usize,
    error: Option<String>,
}

impl AbiCursor {
    pub(crate) fn new(kernel: &'static str, params: &'static [(&'static str, Param)]) -> Self {
        AbiCursor {
            kernel,
            params,
            next: 0,
            error: None,
        }
    }

    /// Records the push of parameter `name` of type `ty`.
    pub(crate) fn push(&mut self, name: &str, ty: Param) {
        let i = self.next;
        self.next += 1;
        if self.error.is_some() {
            return;
        }
        self.error = match self.params.get(i) {
            None => Some(format!(
                "argument {i} `{name}` ({}) pushed, but the kernel has only {} parameters",
                ty.ptx_type(),
                self.params.len()
            )),
            Some(&(want, want_ty)) if want != name || want_ty != ty => Some(format!(
                "argument {i} pushed as `{name}` ({}), parameter {i} is `{want}` ({})",
                ty.ptx_type(),
                want_ty.ptx_type()
            )),
            Some(_) => None,
        };
    }

    /// `Ok` when every parameter was pushed exactly once, in order, with its type.
    pub(crate) fn finish(&self) -> Result<()> {
        let detail = match &self.error {
            Some(e) => e.clone(),
            None if self.next != self.params.len() => format!(
                "{} arguments pushed, the kernel has {} parameters (next missing: `{}`)",
                self.next,
                self.params.len(),
                self.params.get(self.next).map_or("-", |p| p.0)
            ),
            None => return Ok(()),
        };
        Err(Error::KernelAbi {
            kernel: self.kernel,
            detail,
        })
    }
}

/// A kernel launch whose arguments are pushed by parameter name and checked against the
/// kernel's declared parameter list ([`QUANTIZE_PARAMS`], [`LOWRANK_PARAMS`]) before anything
/// is launched. Device buffers go in as `&CudaSlice` / `&mut CudaSlice`, so cudarc's stream
/// ordering (read/write events) applies exactly as with [`LaunchArgs::arg`].
pub(crate) struct KernelArgs<'a> {
    args: LaunchArgs<'a>,
    cursor: AbiCursor,
}

impl<'a> KernelArgs<'a> {
    /// A launch of `func` (entry `kernel`, parameters `params`) on `stream`.
    pub(crate) fn new(
        stream: &'a CudaStream,
        func: &'a CudaFunction,
        kernel: &'static str,
        params: &'static [(&'static str, Param)],
    ) -> Self {
        KernelArgs {
            args: stream.launch_builder(func),
            cursor: AbiCursor::new(kernel, params),
        }
    }

    /// Pushes `.u32` parameter `name`.
    pub(crate) fn u32(&mut self, name: &str, v: &'a u32) -> &mut Self {
        self.cursor.push(name, Param::U32);
        self.args.arg(v);
        self
    }

    /// Pushes `.u64` pointer parameter `name`: a buffer the kernel reads.
    pub(crate) fn input<T>(&mut self, name: &str, buf: &'a CudaSlice<T>) -> &mut Self {
        self.cursor.push(name, Param::U64);
        self.args.arg(buf);
        self
    }

    /// Pushes `.u64` pointer parameter `name`: a buffer the kernel writes.
    pub(crate) fn output<T>(&mut self, name: &str, buf: &'a mut CudaSlice<T>) -> &mut Self {
        self.cursor.push(name, Param::U64);
        self.args.arg(buf);
        self
    }

    /// [`Self::input`], or a null pointer for `None`.
    pub(crate) fn input_or_null<T>(
        &mut self,
        name: &str,
        buf: Option<&'a CudaSlice<T>>,
    ) -> &mut Self {
        match buf {
            Some(b) => self.input(name, b),
            None => self.null(name),
        }
    }

    /// [`Self::output`], or a null pointer for `None`.
    pub(crate) fn output_or_null<T>(
        &mut self,
        name: &str,
        buf: Option<&'a mut CudaSlice<T>>,
    ) -> &mut Self {
        match buf {
            Some(b) => self.output(name, b),
            None => self.null(name),
        }
    }

    fn null(&mut self, name: &str) -> &mut Self {
        self.cursor.push(name, Param::U64);
        self.args.arg(&NULL_PTR);
        self
    }

    /// Checks the pushed arguments against the parameter list ([`Error::KernelAbi`] and
    /// nothing launched on a mismatch, a missing or an extra argument), then launches.
    ///
    /// # Safety
    /// As [`LaunchArgs::launch`]: every buffer must hold what the kernel indexes with these
    /// arguments.
    pub(crate) unsafe fn launch(&mut self, cfg: LaunchConfig) -> Result<()> {
        self.cursor.finish()?;
        // SAFETY: forwarded to the caller; the argument list matches the kernel's.
        unsafe { self.args.launch(cfg) }?;
        Ok(())
    }
}

/// One CUDA device with its context, an owned stream and the loaded SkillZip kernels.
///
/// Every launch, upload and copy of this crate is issued on [`Gpu::stream`].
#[derive(Debug)]
pub struct Gpu {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    quantize: CudaFunction,
    lowrank: CudaFunction,
    sm_count: usize,
    name: String,
}

fn no_device(reason: impl Into<String>) -> Error {
    Error::NoDevice {
        reason: reason.into(),
    }
}

fn load(ctx: &Arc<CudaContext>, src: &str, kernel: &'static str) -> Result<CudaFunction> {
    let module = ctx
        .load_module(Ptx::from_src(src))
        .map_err(|source| Error::Ptx { kernel, source })?;
    module
        .load_function(kernel)
        .map_err(|source| Error::Ptx { kernel, source })
}

impl Gpu {
    /// Opens device `ordinal`: probes for the driver library and the device count first (so a
    /// machine without a driver gets [`Error::NoDevice`] instead of a panic inside cudarc),
    /// creates a context and a stream, JIT-loads both PTX modules, raises the low-rank
    /// kernel's dynamic shared-memory limit to [`LOWRANK_SMEM_BYTES`] and reads the SM count.
    pub fn open(ordinal: usize) -> Result<Gpu> {
        match catch_unwind(AssertUnwindSafe(|| Self::open_unguarded(ordinal))) {
            Ok(result) => result,
            Err(payload) => {
                let msg = payload
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "unknown panic".into());
                Err(no_device(format!(
                    "the CUDA driver could not be used: {msg}"
                )))
            }
        }
    }

    fn open_unguarded(ordinal: usize) -> Result<Gpu> {
        // SAFETY: only tries to open the driver library by its usual names.
        if !unsafe { cudarc::driver::sys::is_culib_present() } {
            return Err(no_device("no CUDA driver library (libcuda) found"));
        }
        let count = CudaContext::device_count()
            .map_err(|e| no_device(format!("the CUDA driver reports no usable device ({e})")))?;
        if count <= 0 {
            return Err(no_device("the CUDA driver reports zero devices"));
        }
        if ordinal >= count as usize {
            return Err(no_device(format!(
                "device {ordinal} requested, {count} present"
            )));
        }
        let ctx = CudaContext::new(ordinal)?;
        let stream = ctx.new_stream()?;
        let quantize = load(&ctx, QUANTIZE_PTX, QUANTIZE_KERNEL)?;
        let lowrank = load(&ctx, LOWRANK_PTX, LOWRANK_KERNEL)?;
        lowrank
            .set_attribute(
                CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                LOWRANK_SMEM_BYTES as i32,
            )
            .map_err(|source| Error::Ptx {
                kernel: LOWRANK_KERNEL,
                source,
            })?;
        let sm_count =
            ctx.attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)?;
        let name = ctx.name()?;
        Ok(Gpu {
            ctx,
            stream,
            quantize,
            lowrank,
            sm_count: sm_count.max(1) as usize,
            name,
        })
    }

    /// The device's context.
    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    /// The stream this `Gpu` owns; every operation of the crate is issued on it.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// Number of streaming multiprocessors (drives the split-K heuristic).
    pub fn sm_count(&self) -> usize {
        self.sm_count
    }

    /// The device's name as the driver reports it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The loaded `skillzip_quantize` kernel.
    pub fn quantize_function(&self) -> &CudaFunction {
        &self.quantize
    }

    /// The loaded `skillzip_lowrank` kernel (its dynamic shared-memory limit already raised).
    pub fn lowrank_function(&self) -> &CudaFunction {
        &self.lowrank
    }
}

/// For tests and benches: opens device 0, or — when there is no device
/// ([`Error::NoDevice`]) — prints `skipped: <test_name>: <reason>` to stderr and returns
/// `None`.
///
/// # Panics
/// On any other error (a present GPU that fails is a failure, not a skip), and on a missing
/// device when `SKILLZIP_REQUIRE_GPU=1` (set by `scripts/gpu-run.sh` on the GPU machine).
pub fn open_or_skip(test_name: &str) -> Option<Gpu> {
    match Gpu::open(0) {
        Ok(gpu) => Some(gpu),
        Err(Error::NoDevice { reason })
            if std::env::var("SKILLZIP_REQUIRE_GPU").is_ok_and(|v| v == "1") =>
        {
            panic!("{test_name}: SKILLZIP_REQUIRE_GPU=1 but no GPU: {reason}")
        }
        Err(Error::NoDevice { reason }) => {
            // Written to the stderr handle rather than with `eprintln!`, which libtest
            // captures: the skip and its reason show up in a plain `cargo test` log.
            let _ = writeln!(std::io::stderr().lock(), "skipped: {test_name}: {reason}");
            None
        }
        Err(e) => panic!("{test_name}: opening the GPU failed: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn push_all(c: &mut AbiCursor, list: &[(&str, Param)]) {
        for &(name, ty) in list {
            c.push(name, ty);
        }
    }

    fn abi_error(c: &AbiCursor) -> String {
        match c.finish() {
            Err(Error::KernelAbi { kernel, detail }) => {
                assert_eq!(kernel, QUANTIZE_KERNEL);
                detail
            }
            other => panic!("expected a KernelAbi error, got {other:?}"),
        }
    }

    #[test]
    fn the_declared_lists_pass_their_own_cursor() {
        for (kernel, list) in [
            (QUANTIZE_KERNEL, QUANTIZE_PARAMS),
            (LOWRANK_KERNEL, LOWRANK_PARAMS),
        ] {
            let mut c = AbiCursor::new(kernel, list);
            push_all(&mut c, list);
            c.finish().unwrap();
        }
    }

    #[test]
    fn wrong_order_width_missing_and_extra_arguments_are_errors() {
        let list = QUANTIZE_PARAMS;
        // Two neighbours swapped.
        let mut swapped = list.to_vec();
        swapped.swap(1, 2);
        let mut c = AbiCursor::new(QUANTIZE_KERNEL, list);
        push_all(&mut c, &swapped);
        let e = abi_error(&c);
        assert!(e.contains("`x_stride`") && e.contains("`x_dtype`"), "{e}");
        // Right name, wrong width.
        let mut c = AbiCursor::new(QUANTIZE_KERNEL, list);
        c.push("x", Param::U32);
        let e = abi_error(&c);
        assert!(e.contains("argument 0") && e.contains("u64"), "{e}");
        // One missing at the end.
        let mut c = AbiCursor::new(QUANTIZE_KERNEL, list);
        push_all(&mut c, &list[..list.len() - 1]);
        let e = abi_error(&c);
        assert!(e.contains("`pack_count`"), "{e}");
        // One missing in the middle shifts every later name.
        let mut c = AbiCursor::new(QUANTIZE_KERNEL, list);
        push_all(&mut c, &[&list[..5], &list[6..]].concat());
        assert!(abi_error(&c).contains("`ci_pad`"));
        // One extra.
        let mut c = AbiCursor::new(QUANTIZE_KERNEL, list);
        push_all(&mut c, list);
        c.push("pack_count", Param::U64);
        assert!(abi_error(&c).contains("only 17 parameters"));
        // Nothing pushed.
        let c = AbiCursor::new(QUANTIZE_KERNEL, list);
        assert!(abi_error(&c).contains("`x`"));
    }
}
