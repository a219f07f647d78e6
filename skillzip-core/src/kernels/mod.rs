//! Fast CPU skillpack kernels: the runtime of DESIGN.md §4.6 on integer SIMD, bit-identical to
//! [`crate::runtime`] (integer parts exactly; the float epilogue in the same operation order,
//! so outputs match bit for bit).
//!
//! - [`PackedLayer`]: a [`CompressedLayer`] repacked once at load time into the tile layout of
//!   [`pack`] (INT4 factors stay 4-bit and are unpacked in registers).
//! - [`Kernel`]: an instruction-set path ([`Isa`], picked at run time by [`Isa::detect`] or
//!   forced) plus a [`Parallelism`]. [`Kernel::apply`] adds `X̂·Â·B̂` into the backbone output
//!   in place; [`Kernel::apply_grouped`] does the same for a batch whose rows name different
//!   skillpacks (S-LoRA style) or none; [`Kernel::trace_row`] is the debug tap.
//! - [`KernelScratch`]: caller-owned buffers. They grow on first use and are reused; the hot
//!   loops never allocate.
//! - [`Activation`]: activations arrive as `f32`, `f16` or `bf16` (converted exactly to f32).
//!
//! Per batch of rows that share a skillpack the pipeline is: smooth + quantize each row →
//! `z = x̂·Âᵀ` (exact i32, integer SIMD) → per-row truncation to i8 (`quant::truncate_row_with`,
//! the one truncation rule) → `acc = ẑ·B̂ᵀ` (exact i32) → `y += (σ_x·σ_A·ρ)·acc ⊙ σ_B`.
//!
//! Threads: small calls run on the calling thread. Decode-sized batches split each GEMM over
//! output tiles; prefill-sized batches split over blocks of token rows (each block then runs
//! the whole pipeline, reading the weights from cache). Integer results never depend on the
//! split, and every float is computed by one thread in a fixed order, so outputs are identical
//! for every thread count.
//!
//! Unsafe code lives only in the instruction-set files (`avx512.rs`, `avx2.rs`,
//! `vnni256.rs`); this file and `scalar.rs` are safe Rust.

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
pub mod pack;
mod scalar;
#[cfg(target_arch = "x86_64")]
mod vnni256;

use std::ops::Range;

use rayon::prelude::*;

use crate::error::{Error, Result, ensure_shape};
use crate::layer::{CompressedLayer, Truncation};
use crate::quant::{
    ActScale, Bits, scale_and_inverse, truncate_row_with, truncation_multiplier, truncation_scale,
};
use crate::runtime::RowTrace;
pub use pack::PackedMatrix;
use pack::{TILE_N, padded_k, tiles};

/// An instruction-set path of the kernels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Isa {
    /// AVX-512 with VNNI: `vpdpbusd` on 512-bit vectors (16 columns × 4 K per instruction).
    Avx512Vnni,
    /// AVX-VNNI: VEX-coded `vpdpbusd` on 256-bit vectors (Alder Lake and later, Zen 5).
    AvxVnni,
    /// The AVX-VNNI kernel compiled with the EVEX (AVX-512 VL) encoding of the same 256-bit
    /// instruction: the same code as [`Isa::AvxVnni`], runnable (and so testable) on AVX-512
    /// VNNI machines that lack AVX-VNNI.
    AvxVnniEvex,
    /// AVX2: `vpmaddubsw` + `vpmaddwd` with the sign trick (|x̂| unsigned, the sign moved onto
    /// the weights), whose pair sums stay within i16.
    Avx2,
    /// Portable scalar Rust.
    Scalar,
}

impl Isa {
    /// Every path, fastest first.
    pub const ALL: [Isa; 5] = [
        Isa::Avx512Vnni,
        Isa::AvxVnni,
        Isa::AvxVnniEvex,
        Isa::Avx2,
        Isa::Scalar,
    ];

    /// Whether this CPU (and build target) can run the path.
    pub fn is_available(self) -> bool {
        match self {
            Isa::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512Vnni => avx512::available(),
            #[cfg(target_arch = "x86_64")]
            Isa::AvxVnni => vnni256::vex::available(),
            #[cfg(target_arch = "x86_64")]
            Isa::AvxVnniEvex => vnni256::evex::available(),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => avx2::available(),
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }

    /// The paths this CPU can run, fastest first.
    pub fn available() -> impl Iterator<Item = Isa> {
        Self::ALL.into_iter().filter(|i| i.is_available())
    }

    /// The fastest available path. [`Isa::AvxVnniEvex`] is never picked: it exists for tests.
    pub fn detect() -> Isa {
        Self::available()
            .find(|&i| i != Isa::AvxVnniEvex)
            .unwrap_or(Isa::Scalar)
    }

    /// A short name (`avx512-vnni`, `avx-vnni`, `avx-vnni-evex`, `avx2`, `scalar`).
    pub fn name(self) -> &'static str {
        match self {
            Isa::Avx512Vnni => "avx512-vnni",
            Isa::AvxVnni => "avx-vnni",
            Isa::AvxVnniEvex => "avx-vnni-evex",
            Isa::Avx2 => "avx2",
            Isa::Scalar => "scalar",
        }
    }

    /// Whether the path feeds activation codes as unsigned `x + 128` (the VNNI paths; exact
    /// through the `col_sums` correction, see [`pack`]).
    fn offset_activations(self) -> bool {
        matches!(self, Isa::Avx512Vnni | Isa::AvxVnni | Isa::AvxVnniEvex)
    }

    /// `max_i |x_i · s_i|` (or `max |x_i|`) — order-independent, so exact on every path.
    fn amax(self, x: &[f32], s_inv: Option<&[f32]>) -> f32 {
        match self {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512Vnni => avx512::amax(x, s_inv),
            #[cfg(target_arch = "x86_64")]
            Isa::AvxVnni | Isa::AvxVnniEvex | Isa::Avx2 => avx2::amax(x, s_inv),
            _ => scalar::amax(x, s_inv),
        }
    }

    /// `out_i = sat(rne((x_i · s_i) · inv))` to `[-qmax, qmax]` of `bits`.
    fn quantize(self, x: &[f32], s_inv: Option<&[f32]>, inv: f32, bits: Bits, out: &mut [i8]) {
        match self {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512Vnni => avx512::quantize(x, s_inv, inv, bits, out),
            #[cfg(target_arch = "x86_64")]
            Isa::AvxVnni | Isa::AvxVnniEvex | Isa::Avx2 => avx2::quantize(x, s_inv, inv, bits, out),
            _ => scalar::quantize(x, s_inv, inv, bits, out),
        }
    }

    /// Exact `out[j][t][c] = Σ_k x[t][k] · w[16·(tiles.start + j) + c][k]` for `rows` rows of
    /// `x` (row stride `x_stride ≥ w.k_padded()`, codes offset by 128 on the VNNI paths),
    /// written tile-major: `out` is `tiles.len() × rows × 16`.
    fn gemm(
        self,
        x: &[i8],
        x_stride: usize,
        rows: usize,
        w: &PackedMatrix,
        tiles: Range<usize>,
        out: &mut [i32],
    ) {
        let args = GemmArgs {
            x,
            x_stride,
            rows,
            w,
            tiles,
            out,
        };
        match self {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512Vnni => avx512::gemm(args),
            #[cfg(target_arch = "x86_64")]
            Isa::AvxVnni => vnni256::vex::gemm(args),
            #[cfg(target_arch = "x86_64")]
            Isa::AvxVnniEvex => vnni256::evex::gemm(args),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => avx2::gemm(args),
            _ => scalar::gemm(args),
        }
    }
}

/// The operands of one integer GEMM call; every path's `gemm` checks them once with
/// [`GemmArgs::validate`] (the SIMD files before reading them through raw pointers).
struct GemmArgs<'a> {
    x: &'a [i8],
    x_stride: usize,
    rows: usize,
    w: &'a PackedMatrix,
    tiles: Range<usize>,
    out: &'a mut [i32],
}

impl GemmArgs<'_> {
    /// The bounds every unsafe kernel relies on. Panics on violation: callers inside this
    /// module construct the arguments, so a failure is a bug here, not bad input.
    fn validate(&self) {
        assert!(
            self.x_stride >= self.w.k_padded(),
            "gemm: row stride below padded K"
        );
        assert!(
            self.x.len() >= self.rows * self.x_stride,
            "gemm: activation buffer too short"
        );
        assert!(self.tiles.start <= self.tiles.end && self.tiles.end <= self.w.tiles());
        assert_eq!(
            self.out.len(),
            self.tiles.len() * self.rows * TILE_N,
            "gemm: output size"
        );
    }
}

/// Packed blocks per K chunk of the SIMD GEMMs (256 INT8 K values): with 4 tiles the chunk of
/// the panels is 16 KiB and stays in L1 while every row block of a call uses it.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
const KC_BLOCKS: usize = 64;

/// A K chunk of a panel, in blocks, and whether it is the first (accumulators start at zero)
/// or the last (the offset correction follows).
#[derive(Debug, Clone)]
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
struct Chunk {
    blocks: Range<usize>,
    first: bool,
    last: bool,
}

/// How the kernels use threads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Parallelism {
    /// Everything on the calling thread.
    Sequential,
    /// Rayon's current pool (run inside `ThreadPool::install` to choose one); small calls
    /// still run on the calling thread.
    #[default]
    Rayon,
}

/// Activation element types the kernels accept; converted exactly to f32.
pub trait Activation: Copy + Send + Sync + 'static + sealed::Sealed {
    /// The exact f32 value.
    fn to_f32(self) -> f32;
    /// The slice itself when it already is f32 (no conversion pass).
    fn as_f32(values: &[Self]) -> Option<&[f32]>;
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for half::f16 {}
    impl Sealed for half::bf16 {}
}

impl Activation for f32 {
    fn to_f32(self) -> f32 {
        self
    }
    fn as_f32(values: &[Self]) -> Option<&[f32]> {
        Some(values)
    }
}

impl Activation for half::f16 {
    fn to_f32(self) -> f32 {
        half::f16::to_f32(self)
    }
    fn as_f32(_: &[Self]) -> Option<&[f32]> {
        None
    }
}

impl Activation for half::bf16 {
    fn to_f32(self) -> f32 {
        half::bf16::to_f32(self)
    }
    fn as_f32(_: &[Self]) -> Option<&[f32]> {
        None
    }
}

/// A [`CompressedLayer`] in the kernels' packed layout.
#[derive(Debug, Clone, PartialEq)]
pub struct PackedLayer {
    s_inv: Option<Vec<f32>>,
    act_bits: Bits,
    act_scale: ActScale,
    truncation: Truncation,
    a_scale: f32,
    b_scales: Vec<f32>,
    a: PackedMatrix,
    b: PackedMatrix,
}

impl PackedLayer {
    /// Packs a (validated) layer; done once at load time.
    pub fn new(layer: &CompressedLayer) -> Self {
        let (r, ci, co) = (layer.rank(), layer.c_in(), layer.c_out());
        Self {
            s_inv: layer.s_inv().map(<[f32]>::to_vec),
            act_bits: layer.act_bits(),
            act_scale: layer.act_scale(),
            truncation: layer.truncation(),
            a_scale: layer.a().scales[0],
            b_scales: (0..co).map(|o| layer.b_scale(o)).collect(),
            a: PackedMatrix::pack(&layer.a().codes, r, ci, layer.a().bits),
            b: PackedMatrix::pack(&layer.b().codes, co, r, layer.b().bits),
        }
    }

    /// Input channels `C_i`.
    pub fn c_in(&self) -> usize {
        self.a.k()
    }

    /// Output channels `C_o`.
    pub fn c_out(&self) -> usize {
        self.b.n()
    }

    /// Rank `R`.
    pub fn rank(&self) -> usize {
        self.a.n()
    }

    /// Packed `Â` (`N = R`, `K = C_i`).
    pub fn a(&self) -> &PackedMatrix {
        &self.a
    }

    /// Packed `B̂` (`N = C_o`, `K = R`).
    pub fn b(&self) -> &PackedMatrix {
        &self.b
    }

    /// Bytes of packed weights one application streams (`Â` + `B̂`, with tile padding).
    pub fn weight_bytes(&self) -> usize {
        self.a.bytes() + self.b.bytes()
    }
}

/// A span of sorted token positions that share one skillpack and run the pipeline together.
#[derive(Debug, Clone, Copy)]
struct Batch {
    layer: usize,
    start: usize,
    len: usize,
    /// Offset of this batch's `z` region (`tiles(R) × len × 16` i32) in `KernelScratch::z`.
    z_offset: usize,
}

/// Caller-owned buffers for [`Kernel`] calls. Create once, reuse for every call: buffers grow
/// to the largest batch seen and are never shrunk.
#[derive(Debug, Clone, Default)]
pub struct KernelScratch {
    /// Sorted position → source token row.
    order: Vec<u32>,
    /// Source token row → sorted position (`u32::MAX`: no skillpack).
    position: Vec<u32>,
    /// Rows per skillpack during the counting sort, then running offsets.
    counts: Vec<usize>,
    batches: Vec<Batch>,
    x_hat: Vec<i8>,
    z: Vec<i32>,
    z_hat: Vec<i8>,
    acc: Vec<i32>,
    sigma_x: Vec<f32>,
    row_scale: Vec<f32>,
    m: Vec<u64>,
}

/// Mutable views of the scratch buffers that belong to a run of consecutive batches.
struct Buffers<'a> {
    x_hat: &'a mut [i8],
    z: &'a mut [i32],
    z_hat: &'a mut [i8],
    acc: &'a mut [i32],
    sigma_x: &'a mut [f32],
    row_scale: &'a mut [f32],
    m: &'a mut [u64],
}

/// Shapes shared by every batch of one call.
#[derive(Clone, Copy)]
struct Strides {
    /// Row stride of `x_hat` (`padded_k(C_i)`).
    x: usize,
    /// Row stride of `z_hat` (the largest `padded_k(R)`).
    z_hat: usize,
    /// Row stride of `acc` (`16 · tiles(C_o)`).
    acc: usize,
}

impl<'a> Buffers<'a> {
    /// Splits off the first `rows` positions, whose `z` region has `z_len` entries.
    fn split(self, rows: usize, z_len: usize, s: Strides) -> (Buffers<'a>, Buffers<'a>) {
        let (x_hat, x_hat_rest) = self.x_hat.split_at_mut(rows * s.x);
        let (z, z_rest) = self.z.split_at_mut(z_len);
        let (z_hat, z_hat_rest) = self.z_hat.split_at_mut(rows * s.z_hat);
        let (acc, acc_rest) = self.acc.split_at_mut(rows * s.acc);
        let (sigma_x, sigma_rest) = self.sigma_x.split_at_mut(rows);
        let (row_scale, scale_rest) = self.row_scale.split_at_mut(rows);
        let (m, m_rest) = self.m.split_at_mut(rows);
        (
            Buffers {
                x_hat,
                z,
                z_hat,
                acc,
                sigma_x,
                row_scale,
                m,
            },
            Buffers {
                x_hat: x_hat_rest,
                z: z_rest,
                z_hat: z_hat_rest,
                acc: acc_rest,
                sigma_x: sigma_rest,
                row_scale: scale_rest,
                m: m_rest,
            },
        )
    }
}

/// Below this many multiply-accumulates a GEMM runs on the calling thread (a fork-join costs
/// a few microseconds; this much work takes about ten).
const PARALLEL_MIN_MACS: usize = 1 << 20;
/// Below this many elements activation quantization runs on the calling thread.
const PARALLEL_MIN_ELEMENTS: usize = 1 << 15;
/// Token rows per block when a batch is split over rows (prefill).
const ROW_BLOCK_MIN: usize = 16;
/// Rows from which a batch is split over row blocks instead of over output tiles.
const ROW_SPLIT_MIN: usize = 64;
/// Skillpacks up to this size are prefetched whole at the start of a batch (small layers are
/// latency-bound: two dependent phases of a few KiB each).
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
const PREFETCH_MAX_BYTES: usize = 512 << 10;
/// Tiles of the largest register block of any path; tile-split units are multiples of it.
const TILES_PER_BLOCK: usize = 4;
/// Work units per thread when splitting over tiles (load balance).
const UNITS_PER_THREAD: usize = 4;

/// An instruction-set path and a threading policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kernel {
    isa: Isa,
    parallelism: Parallelism,
}

impl Default for Kernel {
    fn default() -> Self {
        Self::detect()
    }
}

impl Kernel {
    /// The fastest path on this CPU, using rayon's pool.
    pub fn detect() -> Self {
        Self {
            isa: Isa::detect(),
            parallelism: Parallelism::Rayon,
        }
    }

    /// A forced path; [`Error::IsaUnavailable`] if this CPU cannot run it.
    pub fn with_isa(isa: Isa) -> Result<Self> {
        if !isa.is_available() {
            return Err(Error::IsaUnavailable { isa: isa.name() });
        }
        Ok(Self {
            isa,
            parallelism: Parallelism::Rayon,
        })
    }

    /// The same path with another threading policy.
    pub fn with_parallelism(self, parallelism: Parallelism) -> Self {
        Self {
            parallelism,
            ..self
        }
    }

    /// The instruction-set path.
    pub fn isa(&self) -> Isa {
        self.isa
    }

    /// The threading policy.
    pub fn parallelism(&self) -> Parallelism {
        self.parallelism
    }

    /// `y += X̂·Â·B̂` for row-major `x` (`T × C_i`) and `y` (`T × C_o`): every token uses
    /// `layer`. Bit-identical to [`crate::runtime::apply`] on `x` converted to f32.
    ///
    /// Activations must be finite (DESIGN.md §4); non-finite values give unspecified (but
    /// memory-safe) results. Shape errors are typed.
    pub fn apply<A: Activation>(
        &self,
        layer: &PackedLayer,
        x: &[A],
        y: &mut [f32],
        scratch: &mut KernelScratch,
    ) -> Result<()> {
        let t = x.len() / layer.c_in();
        scratch.position.clear();
        scratch.position.extend(0..t as u32);
        scratch.order.clear();
        scratch.order.extend(0..t as u32);
        scratch.counts.clear();
        scratch.counts.push(t);
        self.run(&[layer], x, y, scratch)
    }

    /// The grouped form: token row `t` uses `layers[skill[t]]`, or no skillpack when
    /// `skill[t]` is `None` (its output row is left untouched). All layers share `C_i` and
    /// `C_o`; ranks, smoothing vectors and modes may differ. Rows are gathered per skillpack,
    /// run together, and scattered back. Bit-identical to [`crate::runtime::apply_grouped`].
    pub fn apply_grouped<A: Activation>(
        &self,
        layers: &[&PackedLayer],
        skill: &[Option<usize>],
        x: &[A],
        y: &mut [f32],
        scratch: &mut KernelScratch,
    ) -> Result<()> {
        let first = layers.first().ok_or(Error::Empty("skillpack list"))?;
        let t = x.len() / first.c_in();
        ensure_shape("skill assignment (T)", (t, 1), (skill.len(), 1))?;
        // Counting sort of the rows by skillpack: stable, no comparison, no allocation once
        // the scratch has grown.
        scratch.counts.clear();
        scratch.counts.resize(layers.len(), 0);
        for (row, s) in skill.iter().enumerate() {
            if let Some(i) = *s {
                if i >= layers.len() {
                    return Err(Error::UnknownSkillpack {
                        row,
                        index: i,
                        count: layers.len(),
                    });
                }
                scratch.counts[i] += 1;
            }
        }
        let used: usize = scratch.counts.iter().sum();
        scratch.order.clear();
        scratch.order.resize(used, 0);
        scratch.position.clear();
        scratch.position.resize(t, u32::MAX);
        let mut next = 0;
        for c in scratch.counts.iter_mut() {
            let n = *c;
            *c = next;
            next += n;
        }
        for (row, s) in skill.iter().enumerate() {
            if let Some(i) = *s {
                let p = scratch.counts[i];
                scratch.counts[i] += 1;
                scratch.order[p] = row as u32;
                scratch.position[row] = p as u32;
            }
        }
        // Back from end offsets to per-layer counts.
        let mut prev = 0;
        for c in scratch.counts.iter_mut() {
            let end = *c;
            *c = end - prev;
            prev = end;
        }
        self.run(layers, x, y, scratch)
    }

    /// Runs the pipeline on one row and returns every intermediate (the debug tap tests and
    /// fuzzers compare with [`crate::runtime::trace_row`]).
    pub fn trace_row<A: Activation>(&self, layer: &PackedLayer, x_row: &[A]) -> Result<RowTrace> {
        ensure_shape("activation row (C_i)", (layer.c_in(), 1), (x_row.len(), 1))?;
        let mut y = vec![0.0f32; layer.c_out()];
        let mut s = KernelScratch::default();
        self.apply(layer, x_row, &mut y, &mut s)?;
        let (ci, r, co) = (layer.c_in(), layer.rank(), layer.c_out());
        let offset = if self.isa.offset_activations() {
            0x80u8
        } else {
            0
        };
        let unoffset = |codes: &[i8]| -> Vec<i8> {
            codes.iter().map(|&c| ((c as u8) ^ offset) as i8).collect()
        };
        let lanes = |buf: &[i32], n: usize| -> Vec<i32> {
            (0..n)
                .map(|c| buf[(c / TILE_N) * TILE_N + c % TILE_N])
                .collect()
        };
        Ok(RowTrace {
            x_hat: unoffset(&s.x_hat[..ci]),
            sigma_x: s.sigma_x[0],
            z: lanes(&s.z, r),
            m: s.m[0],
            z_hat: unoffset(&s.z_hat[..r]),
            acc: lanes(&s.acc, co),
            y,
        })
    }

    fn run<A: Activation>(
        &self,
        layers: &[&PackedLayer],
        x: &[A],
        y: &mut [f32],
        scratch: &mut KernelScratch,
    ) -> Result<()> {
        let (ci, co) = (layers[0].c_in(), layers[0].c_out());
        for l in layers {
            ensure_shape("skillpack (C_i × C_o)", (ci, co), (l.c_in(), l.c_out()))?;
        }
        let t = x.len() / ci;
        ensure_shape("activations (T × C_i)", (t * ci, 1), (x.len(), 1))?;
        ensure_shape("output (T × C_o)", (t * co, 1), (y.len(), 1))?;
        let used = scratch.order.len();
        let parallel = self.parallelism == Parallelism::Rayon && rayon::current_num_threads() > 1;
        let threads = if parallel {
            rayon::current_num_threads()
        } else {
            1
        };
        // Batches: one per skillpack, or row blocks of it when a group is prefill-sized.
        scratch.batches.clear();
        let (mut start, mut z_offset) = (0, 0);
        for (layer, &n) in scratch.counts.iter().enumerate() {
            let block = if parallel && n >= ROW_SPLIT_MIN {
                n.div_ceil(threads * UNITS_PER_THREAD).max(ROW_BLOCK_MIN)
            } else {
                n.max(1)
            };
            let z_cols = tiles(layers[layer].rank()) * TILE_N;
            let mut done = 0;
            while done < n {
                let len = block.min(n - done);
                scratch.batches.push(Batch {
                    layer,
                    start,
                    len,
                    z_offset,
                });
                start += len;
                z_offset += len * z_cols;
                done += len;
            }
        }
        let strides = Strides {
            x: padded_k(ci),
            z_hat: layers.iter().map(|l| padded_k(l.rank())).max().unwrap_or(0),
            acc: tiles(co) * TILE_N,
        };
        let s = &mut *scratch;
        grow(&mut s.x_hat, used * strides.x);
        grow(&mut s.z, z_offset);
        grow(&mut s.z_hat, used * strides.z_hat);
        grow(&mut s.acc, used * strides.acc);
        grow(&mut s.sigma_x, used);
        grow(&mut s.row_scale, used);
        grow(&mut s.m, used);
        let ctx = Context {
            isa: self.isa,
            layers,
            x,
            order: &s.order,
            strides,
            ci,
        };
        let buffers = Buffers {
            x_hat: &mut s.x_hat[..used * strides.x],
            z: &mut s.z[..z_offset],
            z_hat: &mut s.z_hat[..used * strides.z_hat],
            acc: &mut s.acc[..used * strides.acc],
            sigma_x: &mut s.sigma_x[..used],
            row_scale: &mut s.row_scale[..used],
            m: &mut s.m[..used],
        };
        let row_split = s.batches.len() > s.counts.iter().filter(|&&n| n > 0).count();
        if parallel && row_split {
            ctx.run_batches_parallel(&s.batches, buffers);
        } else {
            ctx.run_batches(&s.batches, buffers, parallel, threads);
        }
        // Epilogue: scatter back into the caller's rows.
        let (acc, row_scale, batches, position) = (&s.acc, &s.row_scale, &s.batches, &s.position);
        let epilogue = |(row, y_row): (usize, &mut [f32])| {
            let p = position[row];
            if p == u32::MAX {
                return;
            }
            let p = p as usize;
            let batch = batches[batches.partition_point(|b| b.start + b.len <= p)];
            let b_scales = &layers[batch.layer].b_scales;
            // The batch's acc region is `acc` rows [start, start + len), tile-major.
            let region = &acc[batch.start * strides.acc..(batch.start + batch.len) * strides.acc];
            let local = p - batch.start;
            let rs = row_scale[p];
            for (tile, (y_tile, s_tile)) in y_row
                .chunks_mut(TILE_N)
                .zip(b_scales.chunks(TILE_N))
                .enumerate()
            {
                let a = &region[(tile * batch.len + local) * TILE_N..][..TILE_N];
                for ((yv, &sb), &av) in y_tile.iter_mut().zip(s_tile).zip(a) {
                    *yv += (rs * av as f32) * sb;
                }
            }
        };
        if parallel && used * co >= PARALLEL_MIN_ELEMENTS {
            y.par_chunks_mut(co).enumerate().for_each(epilogue);
        } else {
            y.chunks_mut(co).enumerate().for_each(epilogue);
        }
        Ok(())
    }
}

fn grow<T: Copy + Default>(v: &mut Vec<T>, len: usize) {
    if v.len() < len {
        v.resize(len, T::default());
    }
}

/// What every batch of one call shares.
struct Context<'a, A> {
    isa: Isa,
    layers: &'a [&'a PackedLayer],
    x: &'a [A],
    order: &'a [u32],
    strides: Strides,
    ci: usize,
}

impl<A: Activation> Context<'_, A> {
    /// Row-parallel mode: batches (row blocks) run in parallel, each sequentially inside.
    fn run_batches_parallel(&self, batches: &[Batch], buffers: Buffers<'_>) {
        if batches.len() == 1 {
            self.run_batch(batches[0], buffers, false, 1);
            return;
        }
        let mid = batches.len() / 2;
        let rows: usize = batches[..mid].iter().map(|b| b.len).sum();
        let z_mid = batches[mid].z_offset - batches[0].z_offset;
        let (left, right) = buffers.split(rows, z_mid, self.strides);
        rayon::join(
            || self.run_batches_parallel(&batches[..mid], left),
            || self.run_batches_parallel(&batches[mid..], right),
        );
    }

    /// Batches one after another, each GEMM split over output tiles when `parallel`.
    fn run_batches(
        &self,
        batches: &[Batch],
        mut buffers: Buffers<'_>,
        parallel: bool,
        threads: usize,
    ) {
        for (i, b) in batches.iter().enumerate() {
            let z_len = match batches.get(i + 1) {
                Some(next) => next.z_offset - b.z_offset,
                None => buffers.z.len(),
            };
            let (mine, rest) = buffers.split(b.len, z_len, self.strides);
            self.run_batch(*b, mine, parallel, threads);
            buffers = rest;
        }
    }

    /// The whole pipeline for one batch; `buf` holds exactly this batch's rows.
    fn run_batch(&self, batch: Batch, buf: Buffers<'_>, parallel: bool, threads: usize) {
        let layer = self.layers[batch.layer];
        let (isa, n, ci, r) = (self.isa, batch.len, self.ci, layer.rank());
        let order = &self.order[batch.start..batch.start + n];
        #[cfg(target_arch = "x86_64")]
        if layer.weight_bytes() <= PREFETCH_MAX_BYTES {
            avx2::prefetch(layer.a.blocks());
            avx2::prefetch(layer.b.blocks());
            avx2::prefetch(layer.b.col_sums());
            avx2::prefetch(&layer.b_scales);
            avx2::prefetch(layer.s_inv.as_deref().unwrap_or_default());
        }
        // 1. Smooth + quantize each row.
        let quantize = |(row, (x_hat, sigma)): (usize, (&mut [i8], &mut f32))| {
            let src = &self.x[order[row] as usize * ci..][..ci];
            *sigma = quantize_row(isa, layer, src, &mut x_hat[..ci]);
            if isa.offset_activations() {
                offset_codes(&mut x_hat[..ci]);
            }
        };
        if parallel && n * ci >= PARALLEL_MIN_ELEMENTS {
            buf.x_hat
                .par_chunks_mut(self.strides.x)
                .zip(buf.sigma_x.par_iter_mut())
                .enumerate()
                .for_each(quantize);
        } else {
            buf.x_hat
                .chunks_mut(self.strides.x)
                .zip(buf.sigma_x.iter_mut())
                .enumerate()
                .for_each(quantize);
        }
        // 2. z = x̂·Âᵀ.
        gemm_split(
            isa,
            buf.x_hat,
            self.strides.x,
            n,
            &layer.a,
            buf.z,
            parallel,
            threads,
        );
        // 3. Truncation per row (the reference rule, element by element).
        let truncate = |(row, ((z_hat, m), scale)): (usize, ((&mut [i8], &mut u64), &mut f32))| {
            let lanes_of = |tile: usize| &buf.z[(tile * n + row) * TILE_N..][..TILE_N];
            let used_lanes = |tile: usize| (r - tile * TILE_N).min(TILE_N);
            *m = match layer.truncation {
                Truncation::Static { m } => m,
                Truncation::Dynamic => {
                    let zmax = (0..tiles(r))
                        .flat_map(|tile| lanes_of(tile)[..used_lanes(tile)].iter())
                        .map(|v| v.unsigned_abs())
                        .max()
                        .unwrap_or(0);
                    truncation_multiplier(zmax)
                }
            };
            for tile in 0..tiles(r) {
                let k = used_lanes(tile);
                let out = &mut z_hat[tile * TILE_N..tile * TILE_N + k];
                truncate_row_with(&lanes_of(tile)[..k], *m, out);
            }
            if isa.offset_activations() {
                offset_codes(&mut z_hat[..r]);
            }
            // The reference's order: (σ_x · σ_A) · f32(ρ).
            *scale = *scale * layer.a_scale * truncation_scale(*m) as f32;
        };
        buf.row_scale.copy_from_slice(buf.sigma_x);
        buf.z_hat
            .chunks_mut(self.strides.z_hat)
            .zip(buf.m.iter_mut())
            .zip(buf.row_scale.iter_mut())
            .enumerate()
            .for_each(truncate);
        // 4. acc = ẑ·B̂ᵀ; the epilogue runs once all batches are done.
        gemm_split(
            isa,
            buf.z_hat,
            self.strides.z_hat,
            n,
            &layer.b,
            buf.acc,
            parallel,
            threads,
        );
    }
}

/// Flips the sign bit of every code: `x` becomes the unsigned byte `x + 128`.
fn offset_codes(codes: &mut [i8]) {
    for c in codes {
        *c = ((*c as u8) ^ 0x80) as i8;
    }
}

/// Calls `f(x_chunk, s_inv_chunk, range)` over f32 views of a row: the row itself when it is
/// f32, else stack-sized chunks converted exactly (no buffer needed).
fn for_each_f32_chunk<A: Activation>(
    x: &[A],
    s_inv: Option<&[f32]>,
    mut f: impl FnMut(&[f32], Option<&[f32]>, Range<usize>),
) {
    const CHUNK: usize = 256;
    match A::as_f32(x) {
        Some(x) => f(x, s_inv, 0..x.len()),
        None => {
            let mut buf = [0.0f32; CHUNK];
            for start in (0..x.len()).step_by(CHUNK) {
                let end = (start + CHUNK).min(x.len());
                for (b, v) in buf.iter_mut().zip(&x[start..end]) {
                    *b = v.to_f32();
                }
                f(
                    &buf[..end - start],
                    s_inv.map(|s| &s[start..end]),
                    start..end,
                );
            }
        }
    }
}

/// Smooths and quantizes one row on the chosen path; returns `σ_x`. Same arithmetic as
/// [`crate::quant::quantize_activation_row`].
fn quantize_row<A: Activation>(isa: Isa, layer: &PackedLayer, x: &[A], out: &mut [i8]) -> f32 {
    let s_inv = layer.s_inv.as_deref();
    let amax = match layer.act_scale {
        ActScale::Static { amax } => amax,
        ActScale::Dynamic => {
            let mut m = 0.0f32;
            for_each_f32_chunk(x, s_inv, |x, s, _| m = m.max(isa.amax(x, s)));
            m
        }
    };
    let (scale, inv) = scale_and_inverse(amax, layer.act_bits);
    for_each_f32_chunk(x, s_inv, |x, s, range| {
        isa.quantize(x, s, inv, layer.act_bits, &mut out[range])
    });
    scale
}

/// One GEMM of a batch, split over ranges of output tiles when `parallel` and large enough.
#[allow(clippy::too_many_arguments)]
fn gemm_split(
    isa: Isa,
    x: &[i8],
    x_stride: usize,
    rows: usize,
    w: &PackedMatrix,
    out: &mut [i32],
    parallel: bool,
    threads: usize,
) {
    let total = w.tiles();
    let macs = rows * w.k_padded() * total * TILE_N;
    if !parallel || macs < PARALLEL_MIN_MACS || total < 2 {
        isa.gemm(x, x_stride, rows, w, 0..total, out);
        return;
    }
    // Units of whole register blocks (4 tiles; a unit ending in a 1-tile remainder runs that
    // tile at a quarter of a block's efficiency), rounded down so there are at least
    // `UNITS_PER_THREAD` per thread to balance (rounding up left one thread 63% of the
    // work for a 38-tile GEMM on 2 threads).
    let per_unit = (total / (threads * UNITS_PER_THREAD) / TILES_PER_BLOCK * TILES_PER_BLOCK)
        .max(TILES_PER_BLOCK);
    out.par_chunks_mut(per_unit * rows * TILE_N)
        .enumerate()
        .for_each(|(u, chunk)| {
            let start = u * per_unit;
            let end = (start + per_unit).min(total);
            isa.gemm(x, x_stride, rows, w, start..end, chunk);
        });
}
