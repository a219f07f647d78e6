//! CUDA-graph capture for benchmarks and for callers that replay a fixed call many times:
//! one call of the skillpack path is three launches (`ptx/README.md`), and at decode sizes the
//! host's launch overhead is of the order of the kernels themselves; a graph issues them (or
//! many calls' worth of them) with one `cuGraphLaunch`.
//!
//! [`capture`] records everything a closure issues on a stream into a graph and instantiates
//! it; [`replay`] launches it. A graph holds raw device addresses and kernel arguments copied
//! at capture time: every buffer the closure used must stay alive, at the same address, for as
//! long as the graph is launched, and each launch recomputes from whatever those buffers hold
//! then.
//!
//! # Why event tracking is paused during capture
//!
//! cudarc guards every [`CudaSlice`](cudarc::driver::CudaSlice) with a read and a write
//! `CudaEvent` once its context has more than one stream (`CudaContext::new_stream`, which
//! capture needs: the legacy default stream cannot be captured). Each use of a slice then
//! makes the stream `cuStreamWaitEvent` on the slice's last write event and
//! `cuEventRecord`s the use afterwards. During a capture both are wrong:
//!
//! - a wait, inside the capture, on an event recorded outside it is not a dependency the
//!   capture graph can express (only `CU_EVENT_WAIT_EXTERNAL` waits become graph nodes), so
//!   the capture is rejected or invalidated;
//! - an event recorded inside the capture becomes a *captured* event, and the slice's next
//!   use or drop outside the capture, which waits on it, fails with
//!   `CUDA_ERROR_CAPTURED_EVENT` ("not permitted on an event which was last recorded in a
//!   capturing stream").
//!
//! cudarc's own graph test turns tracking off for that reason ("avoid waits on events
//! recorded outside capture"). [`capture`] turns it off for the duration of the closure
//! (`CudaContext::disable_event_tracking`) and restores the previous setting afterwards (also
//! on error or panic). Tracking is checked at each use, not
//! at allocation, so existing slices simply skip their event calls while it is off. The
//! price: nothing orders the graph's work against *other* streams, so every buffer the graph
//! touches must be written on the capturing stream (or synchronised with it) before a
//! replay, and the graph's results read on that stream or after a synchronisation — true
//! of the benchmark and of the crate's single-stream [`crate::Gpu`].
//!
//! The capture mode is `CU_STREAM_CAPTURE_MODE_THREAD_LOCAL`: this thread may not make
//! "unsafe" calls (synchronous copies and allocations, synchronisation) while capturing, but
//! other threads using CUDA are not affected. The closure must therefore only enqueue stream
//! work: kernel launches, cuBLAS calls (see [`crate::baseline`], whose handle has its own
//! workspace), async copies between device buffers. It must not allocate, free (drop) or copy
//! from/to host memory — a host copy would be captured with its host address and replayed
//! from it later.

use std::sync::Arc;

use cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode};
use cudarc::driver::{CudaContext, CudaGraph, CudaStream};

use crate::error::{Error, Result};

/// Records every operation `f` issues on `stream` into a CUDA graph, instantiates it and
/// uploads it to the device (so the first [`replay`] pays no setup). Nothing runs during the
/// capture; the work happens at each [`replay`].
///
/// Event tracking is paused while `f` runs (see the [module docs](self) for why and what it
/// implies). If `f` fails, the capture is ended and discarded and `f`'s error returned.
///
/// `stream` must not be the legacy default stream (`CudaContext::default_stream`), which
/// CUDA cannot capture; use a stream from `CudaContext::new_stream`.
pub fn capture<F>(stream: &Arc<CudaStream>, f: F) -> Result<CudaGraph>
where
    F: FnOnce(&Arc<CudaStream>) -> Result<()>,
{
    if stream.cu_stream().is_null() {
        return Err(Error::InvalidInput(
            "CUDA graph capture: the legacy default stream cannot be captured; \
             use a stream from CudaContext::new_stream"
                .into(),
        ));
    }
    let ctx = stream.context();
    // Errors recorded by earlier drops would otherwise be reported as the capture's.
    ctx.check_err()?;
    let _paused = TrackingPaused::new(ctx);
    stream.begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)?;
    let issued = f(stream);
    // End the capture whatever happened, or the stream stays in capture mode.
    let ended = stream.end_capture(CUgraphInstantiate_flags(0));
    issued?;
    // Operations that cannot return errors (drops of the closure's temporaries) record them
    // in the context.
    ctx.check_err()?;
    let graph = ended?.ok_or_else(|| {
        Error::InvalidInput("CUDA graph capture: the capture produced no graph".into())
    })?;
    graph.upload()?;
    Ok(graph)
}

/// Launches `graph` `times` times on the stream it was captured from (asynchronously, like any
/// launch; synchronise the stream or record an event to wait for it).
pub fn replay(graph: &CudaGraph, times: usize) -> Result<()> {
    for _ in 0..times {
        graph.launch()?;
    }
    Ok(())
}

/// Pauses cudarc's event tracking on a context for its lifetime and restores it on drop.
struct TrackingPaused<'a> {
    ctx: &'a CudaContext,
    was_tracking: bool,
}

impl<'a> TrackingPaused<'a> {
    fn new(ctx: &'a CudaContext) -> Self {
        let was_tracking = ctx.is_event_tracking();
        if was_tracking {
            // SAFETY: while tracking is off, the closure only issues work on the one
            // capturing stream (a capture records, it does not execute), so no cross-stream
            // ordering is skipped for work that runs now; slices allocated meanwhile (which
            // the module docs forbid inside the closure) would merely lack events. See the
            // module docs for the single-stream requirement on replays.
            unsafe { ctx.disable_event_tracking() };
        }
        Self { ctx, was_tracking }
    }
}

impl Drop for TrackingPaused<'_> {
    fn drop(&mut self) {
        if self.was_tracking {
            // SAFETY: restores the setting found on entry; slices created while it was off
            // stay untracked, as `enable_event_tracking` documents.
            unsafe { self.ctx.enable_event_tracking() };
        }
    }
}

#[cfg(test)]
mod tests {
    use half::f16;

    use super::*;
    use crate::baseline::GemmDims;
    use crate::baseline::tests::{gpu_and_blas, reference, tri};

    #[test]
    fn captured_gemm_replays() {
        let Some((gpu, blas)) = gpu_and_blas("captured_gemm_replays") else {
            return;
        };
        let stream = gpu.stream();
        let ctx = stream.context();
        let tracking = ctx.is_event_tracking();
        let d = GemmDims::new(4, 45, 21);
        let x: Vec<f32> = (0..d.rows * d.c_in).map(|i| tri(i, 8)).collect();
        let w: Vec<f32> = (0..d.c_out * d.c_in).map(|i| tri(i, 9)).collect();
        let h = |v: &[f32]| v.iter().map(|&f| f16::from_f32(f)).collect::<Vec<_>>();
        let xd = stream.clone_htod(&h(&x)).unwrap();
        let wd = stream.clone_htod(&h(&w)).unwrap();
        let mut yd = stream.alloc_zeros::<f16>(d.rows * d.c_out).unwrap();
        let mut copy = stream.alloc_zeros::<f16>(d.rows * d.c_out).unwrap();
        // Warm-up outside the capture (cuBLAS picks its kernels on first use).
        blas.gemm_f16(&xd, &wd, &mut yd, d, false).unwrap();
        stream.memset_zeros(&mut yd).unwrap();

        // y += x·Wᵀ, then a device-to-device copy of y: two nodes.
        let graph = capture(stream, |s| {
            blas.gemm_f16(&xd, &wd, &mut yd, d, true)?;
            s.memcpy_dtod(&yd, &mut copy)?;
            Ok(())
        })
        .unwrap();
        assert_eq!(ctx.is_event_tracking(), tracking, "tracking restored");
        // Nothing ran during the capture.
        assert!(
            stream
                .clone_dtoh(&yd)
                .unwrap()
                .iter()
                .all(|v| v.to_f32() == 0.0)
        );

        replay(&graph, 3).unwrap();
        let mut want = vec![0.0; d.rows * d.c_out];
        for _ in 0..3 {
            reference(&x, &w, &mut want, d, true);
        }
        let got: Vec<f32> = stream
            .clone_dtoh(&copy)
            .unwrap()
            .into_iter()
            .map(f16::to_f32)
            .collect();
        assert_eq!(got, want);
        drop(graph);
        ctx.check_err().unwrap();
    }

    #[test]
    fn failed_closure_ends_the_capture() {
        let Some(gpu) = crate::device::open_or_skip("failed_closure_ends_the_capture") else {
            return;
        };
        let stream = gpu.stream();
        let ctx = stream.context();
        let tracking = ctx.is_event_tracking();
        let mut buf = stream.alloc_zeros::<u32>(64).unwrap();
        let err = capture(stream, |s| {
            s.memset_zeros(&mut buf)?;
            Err(Error::InvalidInput("stop".into()))
        });
        assert!(matches!(err, Err(Error::InvalidInput(ref m)) if m == "stop"));
        assert_eq!(ctx.is_event_tracking(), tracking);
        assert_eq!(
            stream.capture_status().unwrap(),
            cudarc::driver::sys::CUstreamCaptureStatus::CU_STREAM_CAPTURE_STATUS_NONE
        );
        // The stream still works.
        stream.memcpy_htod(&[7u32; 64], &mut buf).unwrap();
        assert_eq!(stream.clone_dtoh(&buf).unwrap(), vec![7u32; 64]);

        // The legacy default stream is refused up front.
        let legacy = ctx.default_stream();
        assert!(matches!(
            capture(&legacy, |_| Ok(())),
            Err(Error::InvalidInput(_))
        ));
    }
}
