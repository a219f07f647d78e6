//! The device-side skillpack path: uploaded skillpacks ([`DeviceSkillpack`]), the descriptor
//! table of one call ([`SkillpackSet`]), the intermediates ([`Workspace`]) and
//! [`Gpu::apply`], which issues the three launches of `ptx/README.md` on [`Gpu::stream`]:
//!
//! ```text
//! skillzip_quantize (grid T) → skillzip_lowrank stage 1 → skillzip_lowrank stage 2
//! ```
//!
//! Everything a launch relies on (buffer sizes, strides, the split-K plan, 32-bit parameters,
//! grid limits) is validated on the host first; invalid calls return
//! [`Error::InvalidInput`] and issue nothing.
//!
//! The host-side checks are pure ([`SetShape::new`], [`CallSizes::check`], [`plan_launch`],
//! [`LaunchPlan::check`]), so they are tested without a GPU.
//!
//! Kernel arguments are pushed by parameter name and checked, in order and width, against
//! the one declaration of each kernel's ABI ([`crate::device::QUANTIZE_PARAMS`],
//! [`crate::device::LOWRANK_PARAMS`]) before each launch ([`Error::KernelAbi`] on a
//! mismatch); `tests/abi.rs` checks those lists against the PTX `.entry` declarations and
//! `ptx/README.md`, and the pushes in this file against the lists, without a GPU.

use std::sync::Arc;

use cudarc::driver::{
    CudaSlice, DevicePtr, DevicePtrMut, DeviceRepr, LaunchConfig, ValidAsZeroBits,
};

use crate::device::{
    Gpu, KernelArgs, LOWRANK_KERNEL, LOWRANK_PARAMS, LOWRANK_SMEM_BYTES, QUANTIZE_KERNEL,
    QUANTIZE_PARAMS,
};
use crate::error::{Error, Result};
use crate::pack::{DESCRIPTOR_BYTES, PackedSkillpack, pad32};

/// Token rows per CTA row slot (`S = ⌈T/64⌉` slots).
pub const ROWS_PER_SLOT: usize = 64;
/// Columns per CTA tile (rank columns in stage 1, output channels in stage 2).
pub const COLS_PER_TILE: usize = 64;
/// Bytes of K per main-loop tile; `k_chunk` is a multiple of it.
pub const K_TILE: usize = 128;
/// Threads per `skillzip_quantize` CTA.
pub const QUANTIZE_THREADS: u32 = 512;
/// Threads per `skillzip_lowrank` CTA (4 warps).
pub const LOWRANK_THREADS: u32 = 128;
/// `pack_of_row` value of a row that uses no skillpack (left untouched).
pub const NO_PACK: u32 = 0xFFFF_FFFF;
/// The largest grid `y`/`z` extent (row slots, skillpacks).
pub const MAX_GRID_YZ: usize = 65_535;

fn invalid(msg: impl Into<String>) -> Error {
    Error::InvalidInput(msg.into())
}

fn to_u32(what: &str, v: usize) -> Result<u32> {
    u32::try_from(v).map_err(|_| {
        invalid(format!(
            "{what} = {v} does not fit a 32-bit kernel parameter"
        ))
    })
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for half::f16 {}
    impl Sealed for half::bf16 {}
    impl Sealed for i8 {}
    impl Sealed for u8 {}
    impl Sealed for i32 {}
    impl Sealed for u32 {}
    impl Sealed for u64 {}
}

/// An activation / output element type of the kernels: f32, f16 or bf16, with the dtype code
/// the PTX parameters take.
pub trait GpuFloat:
    sealed::Sealed
    + AnyBits
    + DeviceRepr
    + ValidAsZeroBits
    + Copy
    + Send
    + Sync
    + std::fmt::Debug
    + 'static
{
    /// The kernels' dtype code: 0 f32, 1 f16, 2 bf16.
    const DTYPE: u32;
    /// The exact f32 value.
    fn to_f32(self) -> f32;
    /// Round to nearest even from f32 (what `cvt.rn` does in the kernels).
    fn from_f32(v: f32) -> Self;
}

impl GpuFloat for f32 {
    const DTYPE: u32 = 0;
    fn to_f32(self) -> f32 {
        self
    }
    fn from_f32(v: f32) -> Self {
        v
    }
}

impl GpuFloat for half::f16 {
    const DTYPE: u32 = 1;
    fn to_f32(self) -> f32 {
        half::f16::to_f32(self)
    }
    fn from_f32(v: f32) -> Self {
        half::f16::from_f32(v)
    }
}

impl GpuFloat for half::bf16 {
    const DTYPE: u32 = 2;
    fn to_f32(self) -> f32 {
        half::bf16::to_f32(self)
    }
    fn from_f32(v: f32) -> Self {
        half::bf16::from_f32(v)
    }
}

/// Element types for which every byte pattern is a valid value, so a device buffer of them
/// may be filled with any byte ([`Gpu::fill_bytes`]). Sealed.
pub trait AnyBits: sealed::Sealed + DeviceRepr {}
impl AnyBits for f32 {}
impl AnyBits for half::f16 {}
impl AnyBits for half::bf16 {}
impl AnyBits for i8 {}
impl AnyBits for u8 {}
impl AnyBits for i32 {}
impl AnyBits for u32 {}
impl AnyBits for u64 {}

/// The shape facts of one skillpack that a set and a launch need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PackMeta {
    /// Input channels `C_i`.
    pub c_in: usize,
    /// Rank `R`.
    pub rank: usize,
    /// Output channels `C_o`.
    pub c_out: usize,
}

impl From<&PackedSkillpack> for PackMeta {
    fn from(p: &PackedSkillpack) -> Self {
        PackMeta {
            c_in: p.c_in(),
            rank: p.rank(),
            c_out: p.c_out(),
        }
    }
}

/// The shape of a skillpack set: common `C_i` and `C_o`, every rank, `R_max`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetShape {
    /// Input channels `C_i` (shared by every skillpack).
    pub c_in: usize,
    /// `Ci_pad = pad32(C_i)`.
    pub ci_pad: usize,
    /// Output channels `C_o` (shared by every skillpack).
    pub c_out: usize,
    /// Rank of each skillpack.
    pub ranks: Vec<usize>,
    /// `R_max = max_p pad32(R_p)`.
    pub r_max: usize,
}

impl SetShape {
    /// Checks that the skillpacks can share one call: at least one, at most
    /// [`MAX_GRID_YZ`], all with the same `C_i` and `C_o`.
    pub fn new(packs: &[PackMeta]) -> Result<SetShape> {
        let first = packs
            .first()
            .ok_or_else(|| invalid("a skillpack set needs at least one skillpack"))?;
        if packs.len() > MAX_GRID_YZ {
            return Err(invalid(format!(
                "{} skillpacks in one set, at most {MAX_GRID_YZ}",
                packs.len()
            )));
        }
        for (i, p) in packs.iter().enumerate() {
            if (p.c_in, p.c_out) != (first.c_in, first.c_out) {
                return Err(invalid(format!(
                    "skillpack {i} has C_i × C_o = {} × {}, skillpack 0 has {} × {}: one set \
                     needs one shape",
                    p.c_in, p.c_out, first.c_in, first.c_out
                )));
            }
            if p.rank == 0 || p.c_in == 0 || p.c_out == 0 {
                return Err(invalid(format!("skillpack {i} has an empty dimension")));
            }
        }
        let r_max = packs.iter().map(|p| pad32(p.rank)).max().unwrap_or(0);
        Ok(SetShape {
            c_in: first.c_in,
            ci_pad: pad32(first.c_in),
            c_out: first.c_out,
            ranks: packs.iter().map(|p| p.rank).collect(),
            r_max,
        })
    }

    /// Number of skillpacks `P`.
    pub fn len(&self) -> usize {
        self.ranks.len()
    }

    /// Always false (a set holds at least one skillpack).
    pub fn is_empty(&self) -> bool {
        self.ranks.is_empty()
    }
}

/// The sizes of one [`Gpu::apply`] call's caller-owned buffers (element counts), checked
/// against a [`SetShape`] before anything is launched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallSizes {
    /// Token rows `T`.
    pub rows: usize,
    /// Elements in `x`.
    pub x_len: usize,
    /// Row stride of `x` in elements (`≥ C_i`).
    pub x_stride: usize,
    /// Elements in `pack_of_row`, if given.
    pub pack_of_row_len: Option<usize>,
    /// Elements in `y`.
    pub y_len: usize,
    /// Row stride of `y` in elements (`≥ C_o`).
    pub y_stride: usize,
    /// Elements in `acc_tap`, if given (needs `T × C_o`).
    pub acc_tap_len: Option<usize>,
}

fn strided_need(rows: usize, stride: usize, width: usize) -> Option<usize> {
    if rows == 0 {
        return Some(0);
    }
    (rows - 1).checked_mul(stride)?.checked_add(width)
}

impl CallSizes {
    /// Checks the buffers against `set` and a workspace of `max_rows` rows.
    pub fn check(&self, set: &SetShape, max_rows: usize) -> Result<()> {
        if self.rows > max_rows {
            return Err(invalid(format!(
                "{} rows, but the workspace holds {max_rows}",
                self.rows
            )));
        }
        to_u32("T (rows)", self.rows)?;
        to_u32("x_stride", self.x_stride)?;
        to_u32("y_stride", self.y_stride)?;
        if self.x_stride < set.c_in {
            return Err(invalid(format!(
                "x_stride {} is below C_i = {}",
                self.x_stride, set.c_in
            )));
        }
        if self.y_stride < set.c_out {
            return Err(invalid(format!(
                "y_stride {} is below C_o = {}",
                self.y_stride, set.c_out
            )));
        }
        let x_need = strided_need(self.rows, self.x_stride, set.c_in)
            .ok_or_else(|| invalid("x extent overflows"))?;
        if self.x_len < x_need {
            return Err(invalid(format!(
                "x holds {} elements, {} rows of stride {} need {x_need}",
                self.x_len, self.rows, self.x_stride
            )));
        }
        let y_need = strided_need(self.rows, self.y_stride, set.c_out)
            .ok_or_else(|| invalid("y extent overflows"))?;
        if self.y_len < y_need {
            return Err(invalid(format!(
                "y holds {} elements, {} rows of stride {} need {y_need}",
                self.y_len, self.rows, self.y_stride
            )));
        }
        if let Some(n) = self.pack_of_row_len
            && n < self.rows
        {
            return Err(invalid(format!(
                "pack_of_row holds {n} entries for {} rows",
                self.rows
            )));
        }
        if let Some(n) = self.acc_tap_len {
            let need = self
                .rows
                .checked_mul(set.c_out)
                .ok_or_else(|| invalid("acc_tap extent overflows"))?;
            if n < need {
                return Err(invalid(format!(
                    "acc_tap holds {n} elements, T × C_o = {need} needed"
                )));
            }
        }
        Ok(())
    }
}

/// Grid geometry and split-K choice of one call (see [`plan_launch`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LaunchPlan {
    /// Token rows `T`.
    pub rows: usize,
    /// Row slots `S = ⌈T/64⌉` (grid `y` of both low-rank stages).
    pub slots: usize,
    /// Skillpacks launched (grid `z`): `P` with `pack_of_row`, 1 without.
    pub packs: usize,
    /// Rank tiles `⌈R_max/64⌉`.
    pub n_tiles_max: usize,
    /// K tiles `⌈Ci_pad/128⌉`.
    pub k_tiles: usize,
    /// K splits of stage 1, `⌈Ci_pad/k_chunk⌉`.
    pub k_splits: usize,
    /// K bytes per split, a multiple of 128.
    pub k_chunk: usize,
    /// Output tiles `⌈C_o/64⌉` (grid `x` of stage 2).
    pub out_tiles: usize,
}

/// The split-K plan of a call: `slots = ⌈T/64⌉`, `n_tiles_max = ⌈R_max/64⌉`,
/// `k_tiles = ⌈Ci_pad/128⌉`; aiming at `3·sm_count` stage-1 CTAs,
/// `k_splits = clamp(3·sm_count / (n_tiles_max·slots·P), 1, k_tiles)`, then
/// `k_chunk = ⌈k_tiles/k_splits⌉·128` and `k_splits = ⌈Ci_pad/k_chunk⌉` (so no split is
/// empty and every K is covered). Total (never panics); [`LaunchPlan::check`] tells whether
/// the result is launchable.
pub fn plan_launch(
    rows: usize,
    ci_pad: usize,
    r_max: usize,
    c_out: usize,
    packs: usize,
    sm_count: usize,
) -> LaunchPlan {
    let slots = rows.div_ceil(ROWS_PER_SLOT);
    let n_tiles_max = r_max.div_ceil(COLS_PER_TILE);
    let k_tiles = ci_pad.div_ceil(K_TILE).max(1);
    let target = sm_count.max(1).saturating_mul(3);
    let ctas = n_tiles_max
        .max(1)
        .saturating_mul(slots.max(1))
        .saturating_mul(packs.max(1));
    let base = LaunchPlan {
        rows,
        slots,
        packs,
        n_tiles_max,
        k_tiles,
        k_splits: 1,
        k_chunk: k_tiles * K_TILE,
        out_tiles: c_out.div_ceil(COLS_PER_TILE),
    };
    base.with_k_splits(target / ctas)
}

impl LaunchPlan {
    /// The same plan with `k_splits` requested explicitly (clamped to `1..=k_tiles`, then
    /// normalised like [`plan_launch`]); tests use it to force split-K to 1 or to its maximum.
    pub fn with_k_splits(self, k_splits: usize) -> LaunchPlan {
        let k_tiles = self.k_tiles.max(1);
        let wanted = k_splits.clamp(1, k_tiles);
        let tiles_per_split = k_tiles.div_ceil(wanted);
        LaunchPlan {
            k_chunk: tiles_per_split * K_TILE,
            // `⌈Ci_pad/k_chunk⌉ = ⌈⌈Ci_pad/128⌉ / (k_chunk/128)⌉` (nested ceilings).
            k_splits: k_tiles.div_ceil(tiles_per_split),
            ..self
        }
    }

    /// Stage-1 grid `(n_tiles_max · k_splits, S, P)` (valid after [`Self::check`]).
    pub fn stage1_grid(&self) -> (u32, u32, u32) {
        (
            (self.n_tiles_max * self.k_splits) as u32,
            self.slots as u32,
            self.packs as u32,
        )
    }

    /// Stage-2 grid `(⌈C_o/64⌉, S, P)` (valid after [`Self::check`]).
    pub fn stage2_grid(&self) -> (u32, u32, u32) {
        (self.out_tiles as u32, self.slots as u32, self.packs as u32)
    }

    /// Counters the call uses, `P × S`.
    pub fn n_counters(&self) -> usize {
        self.packs * self.slots
    }

    /// Checks that the plan belongs to a call of `rows` rows over a set of this shape with
    /// `packs` skillpacks launched, that `k_chunk` is a non-zero multiple of 128 with
    /// `k_splits = ⌈Ci_pad/k_chunk⌉` (every K covered, no empty split), that the grids fit
    /// the hardware limits and that the kernels' 32-bit indices (`P × S` counters, the
    /// `p·T + rank` entries of `pack_rows`) do not wrap.
    pub fn check(
        &self,
        rows: usize,
        ci_pad: usize,
        r_max: usize,
        c_out: usize,
        packs: usize,
    ) -> Result<()> {
        let expect = (
            rows,
            rows.div_ceil(ROWS_PER_SLOT),
            packs,
            r_max.div_ceil(COLS_PER_TILE),
            ci_pad.div_ceil(K_TILE).max(1),
            c_out.div_ceil(COLS_PER_TILE),
        );
        let got = (
            self.rows,
            self.slots,
            self.packs,
            self.n_tiles_max,
            self.k_tiles,
            self.out_tiles,
        );
        if got != expect {
            return Err(invalid(format!(
                "launch plan {self:?} was made for another call (rows, slots, packs, rank \
                 tiles, K tiles, output tiles should be {expect:?})"
            )));
        }
        if self.k_chunk == 0 || !self.k_chunk.is_multiple_of(K_TILE) {
            return Err(invalid(format!(
                "k_chunk {} is not a positive multiple of {K_TILE}",
                self.k_chunk
            )));
        }
        if self.k_splits != ci_pad.div_ceil(self.k_chunk).max(1) {
            return Err(invalid(format!(
                "k_splits {} is not ⌈Ci_pad / k_chunk⌉ = ⌈{ci_pad} / {}⌉",
                self.k_splits, self.k_chunk
            )));
        }
        if self.slots > MAX_GRID_YZ || self.packs > MAX_GRID_YZ {
            return Err(invalid(format!(
                "{} row slots × {} skillpacks exceed the grid limit {MAX_GRID_YZ}",
                self.slots, self.packs
            )));
        }
        let x1 = self
            .n_tiles_max
            .checked_mul(self.k_splits)
            .filter(|&v| v <= i32::MAX as usize);
        if x1.is_none() || self.out_tiles > i32::MAX as usize {
            return Err(invalid("stage grid x exceeds the grid limit"));
        }
        to_u32("k_chunk", self.k_chunk)?;
        to_u32("n_tiles_max", self.n_tiles_max)?;
        to_u32("counters", self.n_counters())?;
        // Both kernels index `pack_rows` with a 32-bit `p·T + rank` (`mad.lo.u32`).
        let pack_rows = self
            .packs
            .checked_mul(self.rows)
            .ok_or_else(|| invalid("P × T overflows"))?;
        to_u32("P × T (pack_rows entries)", pack_rows)?;
        Ok(())
    }
}

struct DeviceBuffers {
    a: CudaSlice<u8>,
    b: CudaSlice<u8>,
    s_inv: Option<CudaSlice<f32>>,
    sigma_b: CudaSlice<f32>,
    meta: PackMeta,
    descriptor: [u8; DESCRIPTOR_BYTES],
}

/// One [`PackedSkillpack`] uploaded to the device ([`Gpu::upload`]). Cloning is cheap and
/// shares the buffers (a [`SkillpackSet`] holds clones, so the addresses in its descriptors
/// stay valid as long as the set lives).
#[derive(Clone)]
pub struct DeviceSkillpack {
    inner: Arc<DeviceBuffers>,
}

impl std::fmt::Debug for DeviceSkillpack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceSkillpack")
            .field("meta", &self.inner.meta)
            .field("a_bytes", &self.inner.a.len())
            .field("b_bytes", &self.inner.b.len())
            .field("smoothing", &self.inner.s_inv.is_some())
            .finish()
    }
}

impl DeviceSkillpack {
    /// Shape facts (`C_i`, `R`, `C_o`).
    pub fn meta(&self) -> PackMeta {
        self.inner.meta
    }

    /// Rank `R`.
    pub fn rank(&self) -> usize {
        self.inner.meta.rank
    }

    /// `Rp_pad`.
    pub fn rank_pad(&self) -> usize {
        pad32(self.inner.meta.rank)
    }

    /// Input channels `C_i`.
    pub fn c_in(&self) -> usize {
        self.inner.meta.c_in
    }

    /// Output channels `C_o`.
    pub fn c_out(&self) -> usize {
        self.inner.meta.c_out
    }

    /// Device bytes held (packed factors, `s⁻¹`, `σ_B`).
    pub fn device_bytes(&self) -> usize {
        let i = &self.inner;
        i.a.num_bytes()
            + i.b.num_bytes()
            + i.s_inv.as_ref().map_or(0, |s| s.num_bytes())
            + i.sigma_b.num_bytes()
    }

    /// The 64-byte descriptor of this skillpack (device addresses filled in).
    pub fn descriptor(&self) -> [u8; DESCRIPTOR_BYTES] {
        self.inner.descriptor
    }
}

/// The skillpacks one call may use (`pack_of_row` indexes them), with their descriptor table
/// on the device ([`Gpu::skillpack_set`]). All share `C_i` and `C_o`.
#[derive(Debug)]
pub struct SkillpackSet {
    packs: Vec<DeviceSkillpack>,
    descriptors: CudaSlice<u8>,
    shape: Arc<SetShape>,
}

impl SkillpackSet {
    /// Number of skillpacks `P`.
    pub fn len(&self) -> usize {
        self.packs.len()
    }

    /// Always false (a set holds at least one skillpack).
    pub fn is_empty(&self) -> bool {
        self.packs.is_empty()
    }

    /// The skillpacks, in index order.
    pub fn packs(&self) -> &[DeviceSkillpack] {
        &self.packs
    }

    /// The set's shape (`C_i`, `Ci_pad`, `C_o`, ranks, `R_max`).
    pub fn shape(&self) -> &SetShape {
        &self.shape
    }

    /// Input channels `C_i`.
    pub fn c_in(&self) -> usize {
        self.shape.c_in
    }

    /// `Ci_pad`.
    pub fn ci_pad(&self) -> usize {
        self.shape.ci_pad
    }

    /// Output channels `C_o`.
    pub fn c_out(&self) -> usize {
        self.shape.c_out
    }

    /// `R_max = max_p Rp_pad`.
    pub fn r_max(&self) -> usize {
        self.shape.r_max
    }

    /// The `P × 64`-byte descriptor table on the device (the `packs` kernel parameter).
    pub fn descriptors(&self) -> &CudaSlice<u8> {
        &self.descriptors
    }
}

/// The per-call intermediates ([`Gpu::workspace`]): `x̂` (i8 `T × Ci_pad`), `σ_x` (f32 `T`),
/// `z` (i32 `T × R_max`), `M` (u64 `T`), `ẑ` (i8 `T × R_max`) and the hand-off counters
/// (u32 `P × ⌈T/64⌉`), for up to `max_rows` rows. Reusable across calls and across sets
/// whose `Ci_pad`, `R_max` and `P` fit.
#[derive(Debug)]
pub struct Workspace {
    x_hat: CudaSlice<i8>,
    sigma_x: CudaSlice<f32>,
    z: CudaSlice<i32>,
    m: CudaSlice<u64>,
    z_hat: CudaSlice<i8>,
    counters: CudaSlice<u32>,
    /// Grouped calls: each skillpack's rows (`P × T`), listed by the quantize kernel.
    pack_rows: CudaSlice<u32>,
    /// Grouped calls: rows per skillpack; zeroed on the stream before each quantize launch.
    pack_count: CudaSlice<u32>,
    max_rows: usize,
    ci_pad: usize,
    r_max: usize,
    packs: usize,
    last: Option<(Arc<SetShape>, usize)>,
}

impl Workspace {
    /// The most rows one call may have.
    pub fn max_rows(&self) -> usize {
        self.max_rows
    }

    /// `Ci_pad` capacity.
    pub fn ci_pad(&self) -> usize {
        self.ci_pad
    }

    /// `R_max` capacity.
    pub fn r_max(&self) -> usize {
        self.r_max
    }

    /// Skillpack capacity `P` (counter rows).
    pub fn packs(&self) -> usize {
        self.packs
    }

    /// Device bytes held.
    pub fn device_bytes(&self) -> usize {
        self.x_hat.num_bytes()
            + self.sigma_x.num_bytes()
            + self.z.num_bytes()
            + self.m.num_bytes()
            + self.z_hat.num_bytes()
            + self.counters.num_bytes()
            + self.pack_rows.num_bytes()
            + self.pack_count.num_bytes()
    }

    fn check_fits(&self, set: &SetShape) -> Result<()> {
        if set.ci_pad > self.ci_pad || set.r_max > self.r_max || set.len() > self.packs {
            return Err(invalid(format!(
                "the workspace holds Ci_pad {}, R_max {}, P {}; the set needs {}, {}, {}",
                self.ci_pad,
                self.r_max,
                self.packs,
                set.ci_pad,
                set.r_max,
                set.len()
            )));
        }
        Ok(())
    }
}

/// Every intermediate of the last call on a workspace, copied back by [`Gpu::read_tap`].
///
/// The padded buffers are kept whole (so tests can check what the kernels wrote into
/// padding); the accessors trim a row to its real width.
#[derive(Debug, Clone, PartialEq)]
pub struct Tap {
    /// Rows copied back.
    pub rows: usize,
    /// `C_i` of the call.
    pub c_in: usize,
    /// `Ci_pad` of the call (row stride of `x_hat_padded`).
    pub ci_pad: usize,
    /// `R_max` of the call (row stride of `z_padded` and `z_hat_padded`).
    pub r_max: usize,
    /// Rank of each skillpack of the call's set.
    pub ranks: Vec<usize>,
    /// `x̂`, `rows × Ci_pad`.
    pub x_hat_padded: Vec<i8>,
    /// `σ_x`, one per row.
    pub sigma_x: Vec<f32>,
    /// `z`, `rows × R_max`.
    pub z_padded: Vec<i32>,
    /// `M`, one per row.
    pub m: Vec<u64>,
    /// `ẑ`, `rows × R_max`.
    pub z_hat_padded: Vec<i8>,
    /// The hand-off counters of the call (`P × S`, skillpack-major).
    pub counters: Vec<u32>,
}

impl Tap {
    /// `x̂` of row `t` (`C_i` codes).
    pub fn x_hat(&self, t: usize) -> &[i8] {
        &self.x_hat_padded[t * self.ci_pad..t * self.ci_pad + self.c_in]
    }

    /// `x̂` padding of row `t` (`C_i..Ci_pad`, zeros when the row has a skillpack).
    pub fn x_hat_padding(&self, t: usize) -> &[i8] {
        &self.x_hat_padded[t * self.ci_pad + self.c_in..(t + 1) * self.ci_pad]
    }

    /// `z` of row `t` under skillpack `pack` (`R_pack` values).
    pub fn z(&self, t: usize, pack: usize) -> &[i32] {
        &self.z_padded[t * self.r_max..t * self.r_max + self.ranks[pack]]
    }

    /// The rest of the `z` row (`R_pack..R_max`; zeroed by quantize, nothing added).
    pub fn z_padding(&self, t: usize, pack: usize) -> &[i32] {
        &self.z_padded[t * self.r_max + self.ranks[pack]..(t + 1) * self.r_max]
    }

    /// `ẑ` of row `t` under skillpack `pack` (`R_pack` codes).
    pub fn z_hat(&self, t: usize, pack: usize) -> &[i8] {
        &self.z_hat_padded[t * self.r_max..t * self.r_max + self.ranks[pack]]
    }

    /// `ẑ` padding of row `t` that the kernel writes (`R_pack..Rp_pad`, zeros).
    pub fn z_hat_padding(&self, t: usize, pack: usize) -> &[i8] {
        let r = self.ranks[pack];
        &self.z_hat_padded[t * self.r_max + r..t * self.r_max + pad32(r)]
    }
}

/// The raw device address of a buffer (the stream is ordered after the buffer's last write).
fn address<T>(buf: &CudaSlice<T>, stream: &cudarc::driver::CudaStream) -> u64 {
    let (ptr, _sync) = buf.device_ptr(stream);
    ptr
}

struct LowrankParams {
    t_rows: u32,
    ci_pad: u32,
    k_chunk: u32,
    n_tiles_max: u32,
    c_out: u32,
    r_max: u32,
    y_dtype: u32,
    y_stride: u32,
}

impl Gpu {
    fn same_device<T>(&self, what: &str, s: &CudaSlice<T>) -> Result<()> {
        if **s.context() != **self.context() {
            return Err(invalid(format!("{what} lives on another CUDA context")));
        }
        Ok(())
    }

    /// Uploads a packed skillpack (factors, `s⁻¹`, `σ_B`) and fills in its descriptor.
    pub fn upload(&self, packed: &PackedSkillpack) -> Result<DeviceSkillpack> {
        let s = self.stream();
        let a = s.clone_htod(packed.a_bytes())?;
        let b = s.clone_htod(packed.b_bytes())?;
        let s_inv = packed.s_inv().map(|v| s.clone_htod(v)).transpose()?;
        let sigma_b = s.clone_htod(packed.sigma_b())?;
        let a_addr = address(&a, s);
        let b_addr = address(&b, s);
        let sb_addr = address(&sigma_b, s);
        let s_inv_addr = s_inv.as_ref().map_or(0, |v| address(v, s));
        let descriptor = packed.descriptor_bytes(a_addr, b_addr, s_inv_addr, sb_addr);
        Ok(DeviceSkillpack {
            inner: Arc::new(DeviceBuffers {
                a,
                b,
                s_inv,
                sigma_b,
                meta: PackMeta::from(packed),
                descriptor,
            }),
        })
    }

    /// Builds the set of skillpacks one call may use: checks that all share `C_i` and `C_o`
    /// (else [`Error::InvalidInput`]) and uploads the `P` descriptors. The set keeps the
    /// skillpacks' buffers alive.
    pub fn skillpack_set(&self, packs: &[&DeviceSkillpack]) -> Result<SkillpackSet> {
        let metas: Vec<PackMeta> = packs.iter().map(|p| p.meta()).collect();
        let shape = SetShape::new(&metas)?;
        for (i, p) in packs.iter().enumerate() {
            self.same_device(&format!("skillpack {i}"), &p.inner.a)?;
        }
        let table: Vec<u8> = packs.iter().flat_map(|p| p.descriptor()).collect();
        let descriptors = self.stream().clone_htod(&table)?;
        Ok(SkillpackSet {
            packs: packs.iter().map(|p| (*p).clone()).collect(),
            descriptors,
            shape: Arc::new(shape),
        })
    }

    /// Allocates zeroed intermediates for calls of up to `max_rows` rows over `set` (or any
    /// set whose `Ci_pad`, `R_max` and `P` are not larger).
    pub fn workspace(&self, set: &SkillpackSet, max_rows: usize) -> Result<Workspace> {
        if max_rows == 0 {
            return Err(invalid("a workspace needs at least one row"));
        }
        let (ci_pad, r_max, packs) = (set.ci_pad(), set.r_max(), set.len());
        let len = |a: usize, b: usize| {
            a.checked_mul(b)
                .ok_or_else(|| invalid("workspace size overflows"))
        };
        let s = self.stream();
        Ok(Workspace {
            x_hat: s.alloc_zeros(len(max_rows, ci_pad)?)?,
            sigma_x: s.alloc_zeros(max_rows)?,
            z: s.alloc_zeros(len(max_rows, r_max)?)?,
            m: s.alloc_zeros(max_rows)?,
            z_hat: s.alloc_zeros(len(max_rows, r_max)?)?,
            counters: s.alloc_zeros(len(packs, max_rows.div_ceil(ROWS_PER_SLOT))?)?,
            pack_rows: s.alloc_zeros(len(packs, max_rows)?)?,
            pack_count: s.alloc_zeros(packs)?,
            max_rows,
            ci_pad,
            r_max,
            packs,
            last: None,
        })
    }

    /// Uploads a row → skillpack assignment (`None` = no skillpack, the row is left
    /// untouched), checking every index against `set`.
    pub fn upload_pack_of_row(
        &self,
        set: &SkillpackSet,
        pack_of_row: &[Option<usize>],
    ) -> Result<CudaSlice<u32>> {
        let mut v = Vec::with_capacity(pack_of_row.len());
        for (row, p) in pack_of_row.iter().enumerate() {
            v.push(match *p {
                None => NO_PACK,
                Some(i) if i < set.len() => i as u32,
                Some(i) => {
                    return Err(invalid(format!(
                        "row {row} names skillpack {i}, but the set holds {}",
                        set.len()
                    )));
                }
            });
        }
        Ok(self.stream().clone_htod(&v)?)
    }

    /// Fills a device buffer with one byte value (tests poison buffers with it to prove
    /// the kernels write every element they own).
    pub fn fill_bytes<T: AnyBits>(&self, buf: &mut CudaSlice<T>, byte: u8) -> Result<()> {
        let n = buf.num_bytes();
        if n == 0 {
            return Ok(());
        }
        let stream = self.stream();
        // The raw driver call below needs the context current on this thread (cudarc's own
        // calls bind it themselves).
        self.context().bind_to_thread()?;
        let (ptr, _sync) = buf.device_ptr_mut(stream);
        // SAFETY: `ptr` is a live allocation of `n` bytes on this context, the memset is
        // ordered on the stream the buffer is tracked with, and every byte pattern is a
        // valid `T` (`AnyBits`).
        unsafe { cudarc::driver::result::memset_d8_async(ptr, byte, n, stream.cu_stream()) }?;
        Ok(())
    }

    /// Fills every buffer of a workspace with `byte` (see [`Gpu::fill_bytes`]).
    pub fn fill_workspace(&self, ws: &mut Workspace, byte: u8) -> Result<()> {
        self.fill_bytes(&mut ws.x_hat, byte)?;
        self.fill_bytes(&mut ws.sigma_x, byte)?;
        self.fill_bytes(&mut ws.z, byte)?;
        self.fill_bytes(&mut ws.m, byte)?;
        self.fill_bytes(&mut ws.z_hat, byte)?;
        self.fill_bytes(&mut ws.pack_rows, byte)?;
        self.fill_bytes(&mut ws.counters, byte)
    }

    /// The launch plan [`Gpu::apply`] uses for `rows` rows over `set`, with (`grouped`) or
    /// without a `pack_of_row` buffer.
    pub fn plan(&self, set: &SkillpackSet, rows: usize, grouped: bool) -> LaunchPlan {
        let packs = if grouped { set.len() } else { 1 };
        plan_launch(
            rows,
            set.ci_pad(),
            set.r_max(),
            set.c_out(),
            packs,
            self.sm_count(),
        )
    }

    /// `y[t] += X̂_t·Â·B̂` (the skillpack path, DESIGN.md §4.6) for `rows` token rows: issues
    /// `skillzip_quantize`, `skillzip_lowrank` stage 1 and stage 2 on [`Gpu::stream`] (no
    /// host synchronisation).
    ///
    /// - `x`: `rows` rows of `x_stride ≥ C_i` elements (f32/f16/bf16);
    /// - `pack_of_row`: the skillpack of each row ([`NO_PACK`] = none, row untouched), or
    ///   `None` = every row uses skillpack 0. Indices must be `< P` or [`NO_PACK`]
    ///   ([`Gpu::upload_pack_of_row`] checks that; the kernels do not);
    /// - `y`: `rows` rows of `y_stride ≥ C_o` elements, added into;
    /// - `acc_tap`: if given (`≥ rows × C_o` i32), receives `acc = ẑ·B̂ᵀ`.
    ///
    /// The split-K plan is [`Gpu::plan`]'s. Sizes are validated first
    /// ([`Error::InvalidInput`]); `rows = 0` issues nothing.
    #[allow(clippy::too_many_arguments)]
    pub fn apply<X: GpuFloat, Y: GpuFloat>(
        &self,
        set: &SkillpackSet,
        ws: &mut Workspace,
        x: &CudaSlice<X>,
        x_stride: usize,
        rows: usize,
        pack_of_row: Option<&CudaSlice<u32>>,
        y: &mut CudaSlice<Y>,
        y_stride: usize,
        acc_tap: Option<&mut CudaSlice<i32>>,
    ) -> Result<()> {
        let plan = self.plan(set, rows, pack_of_row.is_some());
        self.apply_with_plan(
            set,
            ws,
            x,
            x_stride,
            rows,
            pack_of_row,
            y,
            y_stride,
            acc_tap,
            &plan,
        )
    }

    /// [`Gpu::apply`] with an explicit launch plan (for example one from
    /// [`LaunchPlan::with_k_splits`]); the plan is checked against the call
    /// ([`LaunchPlan::check`]).
    #[allow(clippy::too_many_arguments)]
    pub fn apply_with_plan<X: GpuFloat, Y: GpuFloat>(
        &self,
        set: &SkillpackSet,
        ws: &mut Workspace,
        x: &CudaSlice<X>,
        x_stride: usize,
        rows: usize,
        pack_of_row: Option<&CudaSlice<u32>>,
        y: &mut CudaSlice<Y>,
        y_stride: usize,
        mut acc_tap: Option<&mut CudaSlice<i32>>,
        plan: &LaunchPlan,
    ) -> Result<()> {
        let shape = &*set.shape;
        CallSizes {
            rows,
            x_len: x.len(),
            x_stride,
            pack_of_row_len: pack_of_row.map(|p| p.len()),
            y_len: y.len(),
            y_stride,
            acc_tap_len: acc_tap.as_ref().map(|a| a.len()),
        }
        .check(shape, ws.max_rows)?;
        ws.check_fits(shape)?;
        let packs_launched = if pack_of_row.is_some() { set.len() } else { 1 };
        plan.check(rows, shape.ci_pad, shape.r_max, shape.c_out, packs_launched)?;
        self.same_device("x", x)?;
        self.same_device("y", y)?;
        self.same_device("the skillpack set", &set.descriptors)?;
        self.same_device("the workspace", &ws.x_hat)?;
        if let Some(p) = pack_of_row {
            self.same_device("pack_of_row", p)?;
        }
        if let Some(a) = acc_tap.as_deref() {
            self.same_device("acc_tap", a)?;
        }
        if rows == 0 {
            return Ok(());
        }

        let t_rows = to_u32("T", rows)?;
        let c_in = to_u32("C_i", shape.c_in)?;
        let ci_pad = to_u32("Ci_pad", shape.ci_pad)?;
        let r_max = to_u32("R_max", shape.r_max)?;
        let x_stride = to_u32("x_stride", x_stride)?;
        let n_counters = to_u32("counters", plan.n_counters())?;
        let n_packs = to_u32("P", packs_launched)?;
        let x_dtype = X::DTYPE;
        let stream = self.stream();

        // Grouped calls list each skillpack's rows with one atomic per row: the counts start
        // at zero (a memset node inside a captured graph).
        if pack_of_row.is_some() {
            stream.memset_zeros(&mut ws.pack_count)?;
        }
        // skillzip_quantize: the arguments are pushed by name and checked against
        // `QUANTIZE_PARAMS` (the ABI of `ptx/README.md`) before the launch.
        {
            let mut b = KernelArgs::new(
                stream,
                self.quantize_function(),
                QUANTIZE_KERNEL,
                QUANTIZE_PARAMS,
            );
            b.input("x", x)
                .u32("x_dtype", &x_dtype)
                .u32("x_stride", &x_stride)
                .u32("t_rows", &t_rows)
                .u32("c_in", &c_in)
                .u32("ci_pad", &ci_pad)
                .input_or_null("pack_of_row", pack_of_row)
                .input("packs", &set.descriptors)
                .output("x_hat", &mut ws.x_hat)
                .output("sigma_x", &mut ws.sigma_x)
                .output("z", &mut ws.z)
                .u32("r_max", &r_max)
                .output("counters", &mut ws.counters)
                .u32("n_counters", &n_counters)
                .u32("n_packs", &n_packs)
                .output("pack_rows", &mut ws.pack_rows)
                .output("pack_count", &mut ws.pack_count);
            let cfg = LaunchConfig {
                grid_dim: (t_rows, 1, 1),
                block_dim: (QUANTIZE_THREADS, 1, 1),
                shared_mem_bytes: 0,
            };
            // SAFETY: the argument list is checked against the kernel's; every buffer was
            // checked above to hold what the kernel indexes (x: rows × x_stride, the
            // workspace: max_rows ≥ rows rows of Ci_pad / R_max, counters ≥ P × S,
            // pack_rows ≥ P × rows, pack_count ≥ P), and the descriptors point at live
            // buffers owned by `set`.
            unsafe { b.launch(cfg) }?;
        }

        let params = LowrankParams {
            t_rows,
            ci_pad,
            k_chunk: to_u32("k_chunk", plan.k_chunk)?,
            n_tiles_max: to_u32("n_tiles_max", plan.n_tiles_max)?,
            c_out: to_u32("C_o", shape.c_out)?,
            r_max,
            y_dtype: Y::DTYPE,
            y_stride: to_u32("y_stride", y_stride)?,
        };
        for (stage, grid) in [(1u32, plan.stage1_grid()), (2u32, plan.stage2_grid())] {
            self.launch_lowrank(
                stage,
                grid,
                set,
                ws,
                pack_of_row,
                y,
                acc_tap.as_deref_mut(),
                &params,
            )?;
        }
        ws.last = Some((Arc::clone(&set.shape), plan.n_counters()));
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn launch_lowrank<Y: GpuFloat>(
        &self,
        stage: u32,
        grid: (u32, u32, u32),
        set: &SkillpackSet,
        ws: &mut Workspace,
        pack_of_row: Option<&CudaSlice<u32>>,
        y: &mut CudaSlice<Y>,
        acc_tap: Option<&mut CudaSlice<i32>>,
        p: &LowrankParams,
    ) -> Result<()> {
        let stream = self.stream();
        // The arguments are pushed by name and checked against `LOWRANK_PARAMS` (the ABI of
        // `ptx/README.md`) before the launch.
        let mut b = KernelArgs::new(
            stream,
            self.lowrank_function(),
            LOWRANK_KERNEL,
            LOWRANK_PARAMS,
        );
        b.u32("stage", &stage)
            .input("packs", &set.descriptors)
            .input_or_null("pack_of_row", pack_of_row)
            .u32("t_rows", &p.t_rows)
            .u32("ci_pad", &p.ci_pad)
            .u32("k_chunk", &p.k_chunk)
            .u32("n_tiles_max", &p.n_tiles_max)
            .u32("c_out", &p.c_out)
            .u32("r_max", &p.r_max)
            .input("x_hat", &ws.x_hat)
            .output("z", &mut ws.z)
            .output("z_hat", &mut ws.z_hat)
            .output("m", &mut ws.m)
            .input("sigma_x", &ws.sigma_x)
            .output("counters", &mut ws.counters)
            .output("y", y)
            .u32("y_dtype", &p.y_dtype)
            .u32("y_stride", &p.y_stride)
            .output_or_null("acc_tap", acc_tap)
            .input("pack_rows", &ws.pack_rows)
            .input("pack_count", &ws.pack_count);
        let cfg = LaunchConfig {
            grid_dim: grid,
            block_dim: (LOWRANK_THREADS, 1, 1),
            shared_mem_bytes: LOWRANK_SMEM_BYTES,
        };
        // SAFETY: the argument list is checked against the kernel's; the plan was checked
        // against the call (k_chunk a multiple of 128 covering Ci_pad, grid within the set
        // and the workspace), and `y` / `acc_tap` hold `rows` rows of their strides.
        unsafe { b.launch(cfg) }?;
        Ok(())
    }

    /// Copies back the intermediates of the last call on `ws` (its first `rows` rows; at
    /// most `ws.max_rows()`), synchronising the stream.
    pub fn read_tap(&self, ws: &Workspace, rows: usize) -> Result<Tap> {
        let (shape, n_counters) = ws
            .last
            .as_ref()
            .ok_or_else(|| invalid("read_tap: no call has run on this workspace"))?;
        if rows > ws.max_rows {
            return Err(invalid(format!(
                "read_tap: {rows} rows, the workspace holds {}",
                ws.max_rows
            )));
        }
        let s = self.stream();
        let x_hat_padded = s.clone_dtoh(&ws.x_hat.slice(0..rows * shape.ci_pad))?;
        let sigma_x = s.clone_dtoh(&ws.sigma_x.slice(0..rows))?;
        let z_padded = s.clone_dtoh(&ws.z.slice(0..rows * shape.r_max))?;
        let m = s.clone_dtoh(&ws.m.slice(0..rows))?;
        let z_hat_padded = s.clone_dtoh(&ws.z_hat.slice(0..rows * shape.r_max))?;
        let counters = s.clone_dtoh(&ws.counters.slice(0..*n_counters))?;
        s.synchronize()?;
        Ok(Tap {
            rows,
            c_in: shape.c_in,
            ci_pad: shape.ci_pad,
            r_max: shape.r_max,
            ranks: shape.ranks.clone(),
            x_hat_padded,
            sigma_x,
            z_padded,
            m,
            z_hat_padded,
            counters,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn covers(p: &LaunchPlan, ci_pad: usize) {
        assert!(p.k_chunk > 0 && p.k_chunk.is_multiple_of(K_TILE), "{p:?}");
        assert!(p.k_splits >= 1 && p.k_splits <= p.k_tiles, "{p:?}");
        assert!(p.k_splits * p.k_chunk >= ci_pad, "K not covered: {p:?}");
        assert!((p.k_splits - 1) * p.k_chunk < ci_pad, "empty split: {p:?}");
    }

    #[test]
    fn plan_covers_k_without_empty_splits() {
        for rows in [1, 4, 64, 65, 1000, 4096] {
            for ci in [1, 31, 33, 100, 128, 129, 896, 2048, 4097, 14336] {
                let ci_pad = pad32(ci);
                for r_max in [32, 64, 96, 640] {
                    for packs in [1, 5] {
                        for sm in [1, 46, 132] {
                            let p = plan_launch(rows, ci_pad, r_max, 100, packs, sm);
                            covers(&p, ci_pad);
                            p.check(rows, ci_pad, r_max, 100, packs).unwrap();
                            for k in [0, 1, 2, 3, 7, 1000] {
                                let q = p.with_k_splits(k);
                                covers(&q, ci_pad);
                                q.check(rows, ci_pad, r_max, 100, packs).unwrap();
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn decode_splits_k_and_prefill_does_not() {
        // Decode: one slot, few rank tiles → split K to fill the GPU.
        let p = plan_launch(1, 4096, 64, 4096, 1, 132);
        assert_eq!(p.k_tiles, 32);
        assert_eq!(p.k_splits, 32);
        assert_eq!(p.k_chunk, 128);
        // Prefill: many slots → one split.
        let p = plan_launch(4096, 4096, 640, 4096, 1, 132);
        assert_eq!(p.k_splits, 1);
        assert_eq!(p.k_chunk, 4096);
        // k_splits rounds to what the chunk size allows: 3 wanted over 4 tiles → chunks of
        // 2 tiles → 2 splits.
        let p = plan_launch(1, 512, 64, 64, 1, 1);
        assert_eq!((p.k_tiles, p.k_splits, p.k_chunk), (4, 2, 256));
    }

    #[test]
    fn mismatched_plans_are_typed_errors() {
        let p = plan_launch(10, 256, 64, 100, 1, 10);
        assert!(matches!(
            p.check(11, 256, 64, 100, 1),
            Err(Error::InvalidInput(_))
        ));
        let bad = LaunchPlan { k_chunk: 100, ..p };
        assert!(matches!(
            bad.check(10, 256, 64, 100, 1),
            Err(Error::InvalidInput(_))
        ));
        let bad = LaunchPlan {
            k_splits: p.k_splits + 1,
            ..p
        };
        assert!(matches!(
            bad.check(10, 256, 64, 100, 1),
            Err(Error::InvalidInput(_))
        ));
        let huge = plan_launch(64 * 70_000, 256, 64, 100, 1, 10);
        assert!(matches!(
            huge.check(64 * 70_000, 256, 64, 100, 1),
            Err(Error::InvalidInput(_))
        ));
        // Grid and counters fit, but p·T + rank would wrap a 32-bit pack_rows index.
        let (rows, packs) = (64 * 60_000, 2_000);
        let wide = plan_launch(rows, 256, 64, 100, packs, 10);
        assert!(wide.n_counters() <= u32::MAX as usize);
        assert!(matches!(
            wide.check(rows, 256, 64, 100, packs),
            Err(Error::InvalidInput(_))
        ));
        let (rows, packs) = (64 * 60_000, 1_000);
        plan_launch(rows, 256, 64, 100, packs, 10)
            .check(rows, 256, 64, 100, packs)
            .unwrap();
    }
}
