//! The PTX kernels against the reference runtime (`skillzip_core::runtime`), on a real GPU.
//! Without one every test prints `skipped: <test>: <reason>` and passes.
//!
//! Bit-exact everywhere: the debug tap (`x̂`, `σ_x`, `z`, `M`, `ẑ`) against
//! `runtime::trace_row` row by row, `acc` against the trace's, and `y` against
//! `runtime::apply` / `apply_grouped` run on an f32 copy of the backbone output (for an
//! f16/bf16 `y` the expected value is that f32 sum rounded to nearest even, which is what the
//! kernel's `y + v` in f32 followed by `cvt.rn` computes; the reference adds `v` into the
//! actual `f32(y_in)`, never into a zero start, so signed zeros come out as the kernel's).
//! A NaN in `y` (rows whose smoothed activations overflow: `σ_x = ∞`, `M = 0`) must be NaN on
//! both sides; its bit pattern is not compared ([`nan_as_one`]). Inputs are fresh on every
//! run: the seed comes from the clock and is printed (`SKILLZIP_GPU_SEED=<seed>` replays a
//! run).
//!
//! Every workspace buffer and the `acc` tap are poisoned with `0x5A` bytes before a launch, so
//! an element the kernels should write but do not shows up; rows with no skillpack must keep
//! their poison in `x̂`, `σ_x`, `M`, `ẑ` and `acc` (and their `y`) while their `z` row is
//! zeroed (quantize zeroes `z` for every row); the gaps of strided `x`/`y` hold sentinels the
//! kernels must neither read nor write.

use std::fmt::Debug;

use cudarc::driver::CudaSlice;
use half::{bf16, f16};
use rand::RngExt;
use skillzip_core::layer::{CompressedLayer, Truncation};
use skillzip_core::quant::{ActScale, Bits};
use skillzip_core::runtime::{self, Scratch};
use skillzip_core::synth::{RandomLayer, random_layer};
use skillzip_core::{SeededRng, seeded_rng};
use skillzip_cuda::lowrank::NO_PACK;
use skillzip_cuda::pack::pad32;
use skillzip_cuda::{Error, Gpu, GpuFloat, PackedSkillpack, SkillpackSet, Workspace, open_or_skip};

const POISON: u8 = 0x5A;

/// A fresh seed per run (printed), or `SKILLZIP_GPU_SEED` to replay one.
fn fresh_rng(test: &str) -> (SeededRng, u64) {
    let seed = std::env::var("SKILLZIP_GPU_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            let d = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            d.as_nanos() as u64 ^ 0x9E37_79B9_7F4A_7C15
        });
    eprintln!("{test}: seed {seed} (SKILLZIP_GPU_SEED={seed} replays it)");
    (seeded_rng(seed), seed)
}

/// Panics with the first differing position (and how many differ) instead of two huge
/// vectors.
fn check_eq<T: PartialEq + Debug>(got: &[T], want: &[T], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths differ");
    let diffs: Vec<usize> = (0..got.len()).filter(|&i| got[i] != want[i]).collect();
    if let Some(&i) = diffs.first() {
        panic!(
            "{what}: {} of {} elements differ; first at {i}: got {:?}, want {:?}",
            diffs.len(),
            got.len(),
            got[i],
            want[i]
        );
    }
}

/// The bits of `v`, with every NaN mapped to one pattern. A row whose smoothed activations
/// overflow gets `σ_x = ∞` and `M = 0`, so `rs = (∞·σ_A)·0` is NaN in the reference and in
/// the kernel alike, but the NaN's bits differ: x86 makes `0xFFC0_0000` (and `half` keeps
/// its sign and payload), a GPU makes the canonical `0x7FFF_FFFF` (f16/bf16 `0x7FFF`). The
/// contract is "NaN", not a payload; every other value is compared bit for bit.
fn nan_as_one(v: f32) -> u32 {
    if v.is_nan() { 0x7FC0_0000 } else { v.to_bits() }
}

fn check_all<T: PartialEq + Debug>(got: &[T], want: T, what: &str) {
    if let Some(i) = got.iter().position(|g| *g != want) {
        panic!("{what}: element {i} is {:?}, want {:?}", got[i], want);
    }
}

#[allow(clippy::too_many_arguments)]
fn layer(
    ci: usize,
    r: usize,
    co: usize,
    bits: (Bits, Bits, Bits),
    smoothing: bool,
    b_per_channel: bool,
    act_scale: ActScale,
    truncation: Truncation,
    rng: &mut SeededRng,
) -> CompressedLayer {
    let spec = RandomLayer {
        c_in: ci,
        rank: r,
        c_out: co,
        act_bits: bits.0,
        a_bits: bits.1,
        b_bits: bits.2,
        smoothing,
        b_per_channel,
        act_scale,
        truncation,
    };
    random_layer(&spec, rng).unwrap()
}

const X8A8B8: (Bits, Bits, Bits) = (Bits::Int8, Bits::Int8, Bits::Int8);
const X8A4B4: (Bits, Bits, Bits) = (Bits::Int8, Bits::Int4, Bits::Int4);
const X4A4B4: (Bits, Bits, Bits) = (Bits::Int4, Bits::Int4, Bits::Int4);
const X4A4B8: (Bits, Bits, Bits) = (Bits::Int4, Bits::Int4, Bits::Int8);

fn dynamic(ci: usize, r: usize, co: usize, rng: &mut SeededRng) -> CompressedLayer {
    layer(
        ci,
        r,
        co,
        X8A8B8,
        true,
        true,
        ActScale::Dynamic,
        Truncation::Dynamic,
        rng,
    )
}

/// [`skillzip_core::synth::contract_rows`]: an outlier channel and zero, huge, subnormal,
/// tie and overflowing rows.
fn activations(t: usize, layer: &CompressedLayer, rng: &mut SeededRng) -> Vec<f32> {
    skillzip_core::synth::contract_rows(t, layer, rng)
}

/// `v` in the element type (f16 saturated to its finite range first, so huge rows stay
/// finite as the runtime contract requires).
fn to_elem<X: GpuFloat>(v: f32) -> X {
    let v = if X::DTYPE == 1 {
        v.clamp(-65504.0, 65504.0)
    } else {
        v
    };
    X::from_f32(v)
}

#[derive(Debug, Clone, Copy)]
struct Opts {
    /// Extra elements between `x` rows (filled with huge sentinels).
    x_pad: usize,
    /// Extra elements between `y` rows (filled with sentinels that must survive).
    y_pad: usize,
    /// Poison the workspace before the call.
    poison: bool,
    /// Force stage 1's split count (`None` = `Gpu::apply`'s own plan).
    k_splits: Option<usize>,
    /// Pass an `acc` tap.
    acc_tap: bool,
}

const OPTS: Opts = Opts {
    x_pad: 0,
    y_pad: 0,
    poison: true,
    k_splits: None,
    acc_tap: true,
};

/// One call of the skillpack path on the GPU, checked element by element against the
/// reference. `assign = None` passes a null `pack_of_row` (every row uses skillpack 0).
#[allow(clippy::too_many_arguments)]
fn run_case<X: GpuFloat, Y: GpuFloat>(
    gpu: &Gpu,
    set: &SkillpackSet,
    ws: &mut Workspace,
    layers: &[&CompressedLayer],
    assign: Option<&[Option<usize>]>,
    x: &[f32],
    rows: usize,
    opts: Opts,
    rng: &mut SeededRng,
    what: &str,
) {
    let (ci, co) = (layers[0].c_in(), layers[0].c_out());
    let what = format!(
        "{what} [T = {rows}, C_i = {ci}, C_o = {co}, x {}, y {}, {opts:?}]",
        X::DTYPE,
        Y::DTYPE
    );
    let stream = gpu.stream();
    // Inputs, strided, with sentinels in the gaps.
    let x_stride = ci + opts.x_pad;
    let mut host_x = vec![to_elem::<X>(1e30); rows * x_stride];
    for t in 0..rows {
        for i in 0..ci {
            host_x[t * x_stride + i] = to_elem(x[t * ci + i]);
        }
    }
    let x_ref: Vec<f32> = (0..rows * ci)
        .map(|k| host_x[(k / ci) * x_stride + k % ci].to_f32())
        .collect();
    let y_stride = co + opts.y_pad;
    let sentinel = Y::from_f32(1234.5);
    let mut host_y0 = vec![sentinel; rows * y_stride];
    for t in 0..rows {
        for o in 0..co {
            host_y0[t * y_stride + o] = Y::from_f32(rng.random_range(-1.0f32..1.0));
        }
    }
    let skill: Vec<Option<usize>> = match assign {
        Some(a) => a.to_vec(),
        None => vec![Some(0); rows],
    };

    let dx = stream.clone_htod(&host_x).unwrap();
    let mut dy = stream.clone_htod(&host_y0).unwrap();
    let pack_of_row = assign.map(|a| gpu.upload_pack_of_row(set, a).unwrap());
    let mut acc: Option<CudaSlice<i32>> = opts
        .acc_tap
        .then(|| stream.alloc_zeros::<i32>(rows * co).unwrap());
    if let Some(a) = acc.as_mut() {
        gpu.fill_bytes(a, POISON).unwrap();
    }
    if opts.poison {
        gpu.fill_workspace(ws, POISON).unwrap();
    }
    let plan = match opts.k_splits {
        Some(k) => gpu.plan(set, rows, assign.is_some()).with_k_splits(k),
        None => gpu.plan(set, rows, assign.is_some()),
    };
    if opts.k_splits.is_some() {
        gpu.apply_with_plan(
            set,
            ws,
            &dx,
            x_stride,
            rows,
            pack_of_row.as_ref(),
            &mut dy,
            y_stride,
            acc.as_mut(),
            &plan,
        )
    } else {
        gpu.apply(
            set,
            ws,
            &dx,
            x_stride,
            rows,
            pack_of_row.as_ref(),
            &mut dy,
            y_stride,
            acc.as_mut(),
        )
    }
    .unwrap_or_else(|e| panic!("{what}: apply failed: {e}"));
    let tap = gpu.read_tap(ws, rows).unwrap();
    let y_got = stream.clone_dtoh(&dy).unwrap();
    let acc_got = acc.as_ref().map(|a| stream.clone_dtoh(a).unwrap());
    stream.synchronize().unwrap();

    // The reference output, from the f32 image of the backbone output.
    let mut y_ref: Vec<f32> = (0..rows * co)
        .map(|k| host_y0[(k / co) * y_stride + k % co].to_f32())
        .collect();
    match assign {
        None => runtime::apply(layers[0], &x_ref, &mut y_ref, &mut Scratch::default()),
        Some(a) => runtime::apply_grouped(layers, a, &x_ref, &mut y_ref, &mut Scratch::default()),
    }
    .unwrap();

    let poison_i8 = POISON as i8;
    let poison_f32 = f32::from_bits(u32::from_ne_bytes([POISON; 4]));
    let poison_u64 = u64::from_ne_bytes([POISON; 8]);
    let poison_i32 = i32::from_ne_bytes([POISON; 4]);
    for t in 0..rows {
        let row = format!("{what}, row {t}");
        match skill[t] {
            Some(p) => {
                let trace = runtime::trace_row(layers[p], &x_ref[t * ci..(t + 1) * ci]).unwrap();
                check_eq(tap.x_hat(t), &trace.x_hat, &format!("{row}: x̂"));
                check_all(tap.x_hat_padding(t), 0, &format!("{row}: x̂ padding"));
                assert_eq!(
                    tap.sigma_x[t].to_bits(),
                    trace.sigma_x.to_bits(),
                    "{row}: σ_x {} vs {}",
                    tap.sigma_x[t],
                    trace.sigma_x
                );
                check_eq(tap.z(t, p), &trace.z, &format!("{row}: z (pack {p})"));
                check_all(tap.z_padding(t, p), 0, &format!("{row}: z beyond R"));
                assert_eq!(tap.m[t], trace.m, "{row}: M");
                check_eq(
                    tap.z_hat(t, p),
                    &trace.z_hat,
                    &format!("{row}: ẑ (pack {p})"),
                );
                check_all(tap.z_hat_padding(t, p), 0, &format!("{row}: ẑ padding"));
                if let Some(acc) = &acc_got {
                    check_eq(
                        &acc[t * co..(t + 1) * co],
                        &trace.acc,
                        &format!("{row}: acc"),
                    );
                }
            }
            None => {
                // Quantize zeroes z for every row, then stops; nothing else touches the row.
                check_all(&tap.z_padded[t * tap.r_max..(t + 1) * tap.r_max], 0, &row);
                if opts.poison {
                    check_all(
                        &tap.x_hat_padded[t * tap.ci_pad..(t + 1) * tap.ci_pad],
                        poison_i8,
                        &format!("{row}: x̂ of a row with no skillpack"),
                    );
                    assert_eq!(tap.sigma_x[t].to_bits(), poison_f32.to_bits(), "{row}: σ_x");
                    assert_eq!(tap.m[t], poison_u64, "{row}: M");
                    check_all(
                        &tap.z_hat_padded[t * tap.r_max..(t + 1) * tap.r_max],
                        poison_i8,
                        &format!("{row}: ẑ of a row with no skillpack"),
                    );
                }
                // The acc tap is poisoned before every call (with or without `poison`).
                if let Some(acc) = &acc_got {
                    check_all(
                        &acc[t * co..(t + 1) * co],
                        poison_i32,
                        &format!("{row}: acc of a row with no skillpack"),
                    );
                }
            }
        }
        let got: Vec<u32> = (0..co)
            .map(|o| nan_as_one(y_got[t * y_stride + o].to_f32()))
            .collect();
        let want: Vec<u32> = (0..co)
            .map(|o| nan_as_one(Y::from_f32(y_ref[t * co + o]).to_f32()))
            .collect();
        check_eq(&got, &want, &format!("{row}: y bits"));
        if skill[t].is_none() {
            let untouched: Vec<u32> = (0..co)
                .map(|o| host_y0[t * y_stride + o].to_f32().to_bits())
                .collect();
            check_eq(
                &got,
                &untouched,
                &format!("{row}: y of a row with no skillpack"),
            );
        }
        let gap: Vec<u32> = (co..y_stride)
            .map(|o| y_got[t * y_stride + o].to_f32().to_bits())
            .collect();
        check_all(
            &gap,
            sentinel.to_f32().to_bits(),
            &format!("{row}: y stride gap"),
        );
    }

    // The hand-off counters (`ptx/README.md`): quantize zeroed the call's `P × S`, and the
    // counter of (skillpack p, slot s), at index `p·S + s` with `S = plan.slots` (stage 1's
    // grid y), ends at `n_tiles_p · k_splits` where that slot has rows of p, 0 elsewhere
    // (CTAs of empty slots exit without counting). Without `pack_of_row` only skillpack 0 is
    // launched (grid z = 1) and every row is its.
    let packs_launched = if assign.is_some() { set.len() } else { 1 };
    assert_eq!(plan.packs, packs_launched, "{what}: plan.packs");
    assert_eq!(
        tap.counters.len(),
        packs_launched * plan.slots,
        "{what}: counters read back"
    );
    let mut want_counters = Vec::with_capacity(packs_launched * plan.slots);
    for (p, l) in layers.iter().enumerate().take(packs_launched) {
        let n_rows = skill.iter().filter(|s| **s == Some(p)).count();
        let busy = n_rows.div_ceil(64);
        let tiles = pad32(l.rank()).div_ceil(64);
        for s in 0..plan.slots {
            want_counters.push(if s < busy {
                (tiles * plan.k_splits) as u32
            } else {
                0
            });
        }
    }
    check_eq(&tap.counters, &want_counters, &format!("{what}: counters"));
}

/// One skillpack for every row: uploads `l`, draws `rows` activation rows and checks one call.
fn single<X: GpuFloat, Y: GpuFloat>(
    gpu: &Gpu,
    l: &CompressedLayer,
    rows: usize,
    opts: Opts,
    rng: &mut SeededRng,
    what: &str,
) {
    let set = upload_set(gpu, &[l]);
    let mut ws = gpu.workspace(&set, rows).unwrap();
    let x = activations(rows, l, rng);
    run_case::<X, Y>(gpu, &set, &mut ws, &[l], None, &x, rows, opts, rng, what);
}

fn upload_set(gpu: &Gpu, layers: &[&CompressedLayer]) -> SkillpackSet {
    let device: Vec<_> = layers
        .iter()
        .map(|l| gpu.upload(&PackedSkillpack::new(l).unwrap()).unwrap())
        .collect();
    let refs: Vec<_> = device.iter().collect();
    // The set keeps the buffers alive after `device` is dropped.
    gpu.skillpack_set(&refs).unwrap()
}

/// One skillpack for every row (null `pack_of_row`) over ragged shapes and every row count
/// of the contract's list: C_i, R and C_o off every tile multiple.
#[test]
fn single_skillpack_ragged_shapes_are_exact() {
    let Some(gpu) = open_or_skip("single_skillpack_ragged_shapes_are_exact") else {
        return;
    };
    let (mut rng, _) = fresh_rng("single_skillpack_ragged_shapes_are_exact");
    for (t, ci, r, co) in [
        (1, 4000, 640, 1000),
        (4, 2050, 600, 300),
        (10, 1000, 33, 129),
        (17, 333, 31, 65),
        (63, 100, 1, 70),
        (64, 129, 64, 64),
        (65, 700, 640, 200),
        (130, 257, 33, 1),
        (1000, 300, 64, 129),
    ] {
        let l = dynamic(ci, r, co, &mut rng);
        single::<f32, f32>(&gpu, &l, t, OPTS, &mut rng, "f32");
    }
}

/// f32/f16/bf16 activations × f32/f16/bf16 outputs, strided rows with sentinels in the gaps.
#[test]
fn every_dtype_pair_is_exact() {
    let Some(gpu) = open_or_skip("every_dtype_pair_is_exact") else {
        return;
    };
    let (mut rng, _) = fresh_rng("every_dtype_pair_is_exact");
    let l = dynamic(333, 100, 150, &mut rng);
    let set = upload_set(&gpu, &[&l]);
    let mut ws = gpu.workspace(&set, 70).unwrap();
    let opts = Opts {
        x_pad: 5,
        y_pad: 3,
        ..OPTS
    };
    for t in [1, 17, 70] {
        let x = activations(t, &l, &mut rng);
        macro_rules! pair {
            ($x:ty, $y:ty) => {
                run_case::<$x, $y>(
                    &gpu,
                    &set,
                    &mut ws,
                    &[&l],
                    None,
                    &x,
                    t,
                    opts,
                    &mut rng,
                    "dtype pair",
                )
            };
        }
        pair!(f32, f32);
        pair!(f32, f16);
        pair!(f32, bf16);
        pair!(f16, f32);
        pair!(f16, f16);
        pair!(f16, bf16);
        pair!(bf16, f32);
        pair!(bf16, f16);
        pair!(bf16, bf16);
    }
}

/// INT4-packed weights: X8A4B4, X4A4B4 and X4A4B8 (and the 3-/2-bit grids that pack the same
/// way), per-tensor and per-channel `σ_B`, with and without smoothing.
#[test]
fn int4_weights_and_activations_are_exact() {
    let Some(gpu) = open_or_skip("int4_weights_and_activations_are_exact") else {
        return;
    };
    let (mut rng, _) = fresh_rng("int4_weights_and_activations_are_exact");
    let grids = [X8A4B4, X4A4B4, X4A4B8, (Bits::Int8, Bits::Int3, Bits::Int2)];
    for (i, bits) in grids.into_iter().enumerate() {
        for (t, ci, r, co) in [(1, 1000, 600, 129), (17, 100, 33, 64), (130, 257, 64, 100)] {
            let l = layer(
                ci,
                r,
                co,
                bits,
                i % 2 == 0,
                i != 1,
                ActScale::Dynamic,
                Truncation::Dynamic,
                &mut rng,
            );
            single::<bf16, f32>(&gpu, &l, t, OPTS, &mut rng, &format!("{bits:?}"));
        }
    }
}

/// Static activation scales (saturating, and one below the overflow limit of `qmax/amax`)
/// and static truncation multipliers from tiny to far above the calibrated range, so the
/// 128-bit `z·M` product and the saturation are exercised.
#[test]
fn static_scales_and_truncation_saturate_exactly() {
    let Some(gpu) = open_or_skip("static_scales_and_truncation_saturate_exactly") else {
        return;
    };
    let (mut rng, _) = fresh_rng("static_scales_and_truncation_saturate_exactly");
    let amaxes = [2.0f32, 0.3, 1e-38, 1e4];
    let ms = [1u64, 1 << 20, 1 << 40, u64::MAX / 3, u64::MAX];
    for (k, &amax) in amaxes.iter().enumerate() {
        for (j, &m) in ms.iter().enumerate() {
            let bits = [X8A8B8, X4A4B4][(k + j) % 2];
            let static_act = (k + j) % 3 != 0;
            let l = layer(
                300,
                65,
                70,
                bits,
                true,
                true,
                if static_act {
                    ActScale::Static { amax }
                } else {
                    ActScale::Dynamic
                },
                Truncation::Static { m },
                &mut rng,
            );
            single::<f32, f32>(
                &gpu,
                &l,
                20,
                OPTS,
                &mut rng,
                &format!("static amax {amax} ({static_act}), M {m}"),
            );
        }
        // Static activation scale with dynamic truncation.
        let l = layer(
            130,
            31,
            33,
            X8A8B8,
            false,
            false,
            ActScale::Static { amax },
            Truncation::Dynamic,
            &mut rng,
        );
        single::<f16, f16>(&gpu, &l, 5, OPTS, &mut rng, "static amax");
    }
}

/// Five skillpacks of different ranks, grids and modes; rows name their skillpack, some name
/// none (their `y` rows stay untouched), the last skillpack gets no row; against
/// `runtime::apply_grouped`.
#[test]
fn grouped_skillpacks_are_exact() {
    let Some(gpu) = open_or_skip("grouped_skillpacks_are_exact") else {
        return;
    };
    let (mut rng, _) = fresh_rng("grouped_skillpacks_are_exact");
    let (ci, co) = (450, 190);
    let layers: Vec<CompressedLayer> = [1usize, 31, 33, 64, 600]
        .iter()
        .enumerate()
        .map(|(i, &r)| {
            let bits = [X8A8B8, X8A4B4, X4A4B4, X8A8B8, X4A4B8][i];
            let act = if i == 2 {
                ActScale::Static { amax: 1.5 }
            } else {
                ActScale::Dynamic
            };
            let trunc = if i == 3 {
                Truncation::Static { m: 1 << 12 }
            } else {
                Truncation::Dynamic
            };
            layer(ci, r, co, bits, i != 1, i != 4, act, trunc, &mut rng)
        })
        .collect();
    let refs: Vec<&CompressedLayer> = layers.iter().collect();
    let set = upload_set(&gpu, &refs);
    let mut ws = gpu.workspace(&set, 1000).unwrap();
    for t in [1usize, 4, 10, 65, 130, 1000] {
        let assign: Vec<Option<usize>> = (0..t)
            .map(|_| {
                if rng.random_range(0..5) == 0 {
                    None
                } else {
                    Some(rng.random_range(0..4))
                }
            })
            .collect();
        let x = activations(t, &layers[0], &mut rng);
        run_case::<f16, f32>(
            &gpu,
            &set,
            &mut ws,
            &refs,
            Some(&assign),
            &x,
            t,
            OPTS,
            &mut rng,
            "grouped",
        );
        run_case::<bf16, bf16>(
            &gpu,
            &set,
            &mut ws,
            &refs,
            Some(&assign),
            &x,
            t,
            Opts {
                x_pad: 7,
                y_pad: 1,
                ..OPTS
            },
            &mut rng,
            "grouped, strided",
        );
    }
    // Every row on one skillpack through `pack_of_row` equals the null-pointer form.
    let t = 70;
    let x = activations(t, &layers[4], &mut rng);
    let all_four = vec![Some(4); t];
    run_case::<f32, f32>(
        &gpu,
        &set,
        &mut ws,
        &refs,
        Some(&all_four),
        &x,
        t,
        OPTS,
        &mut rng,
        "grouped, one skillpack",
    );
    let none = vec![None; t];
    run_case::<f32, f32>(
        &gpu,
        &set,
        &mut ws,
        &refs,
        Some(&none),
        &x,
        t,
        OPTS,
        &mut rng,
        "grouped, no row has a skillpack",
    );
}

/// Split-K forced to 1 and to its maximum (one 128-byte K tile per split), decode and
/// prefill, single and grouped.
#[test]
fn split_k_extremes_are_exact() {
    let Some(gpu) = open_or_skip("split_k_extremes_are_exact") else {
        return;
    };
    let (mut rng, _) = fresh_rng("split_k_extremes_are_exact");
    let a = dynamic(2900, 96, 130, &mut rng);
    let b = layer(
        2900,
        200,
        130,
        X8A4B4,
        true,
        true,
        ActScale::Dynamic,
        Truncation::Dynamic,
        &mut rng,
    );
    let set = upload_set(&gpu, &[&a, &b]);
    let mut ws = gpu.workspace(&set, 129).unwrap();
    for t in [1usize, 65, 129] {
        let x = activations(t, &a, &mut rng);
        let assign: Vec<Option<usize>> = (0..t).map(|i| Some(i % 2)).collect();
        for k in [1, 3, usize::MAX] {
            let opts = Opts {
                k_splits: Some(k),
                ..OPTS
            };
            run_case::<f32, f32>(
                &gpu,
                &set,
                &mut ws,
                &[&a, &b],
                None,
                &x,
                t,
                opts,
                &mut rng,
                "split-K, single",
            );
            run_case::<f16, f16>(
                &gpu,
                &set,
                &mut ws,
                &[&a, &b],
                Some(&assign),
                &x,
                t,
                opts,
                &mut rng,
                "split-K, grouped",
            );
        }
    }
}

/// One workspace reused across calls of different row counts and across sets whose shapes
/// fit it, without re-poisoning: the counters and `z` are reset by every call.
#[test]
fn repeated_calls_reuse_the_workspace() {
    let Some(gpu) = open_or_skip("repeated_calls_reuse_the_workspace") else {
        return;
    };
    let (mut rng, _) = fresh_rng("repeated_calls_reuse_the_workspace");
    let big = dynamic(700, 300, 90, &mut rng);
    let small = layer(
        650,
        40,
        50,
        X8A4B4,
        false,
        true,
        ActScale::Dynamic,
        Truncation::Dynamic,
        &mut rng,
    );
    let big_set = upload_set(&gpu, &[&big]);
    let small_set = upload_set(&gpu, &[&small]);
    let mut ws = gpu.workspace(&big_set, 300).unwrap();
    let no_poison = Opts {
        poison: false,
        ..OPTS
    };
    for (i, t) in [300usize, 3, 65, 1, 300].into_iter().enumerate() {
        let opts = if i == 0 { OPTS } else { no_poison };
        let x = activations(t, &big, &mut rng);
        run_case::<f32, f32>(
            &gpu,
            &big_set,
            &mut ws,
            &[&big],
            None,
            &x,
            t,
            opts,
            &mut rng,
            "repeat, big",
        );
        let x = activations(t, &small, &mut rng);
        run_case::<f32, f32>(
            &gpu,
            &small_set,
            &mut ws,
            &[&small],
            None,
            &x,
            t,
            no_poison,
            &mut rng,
            "repeat, small",
        );
        // Back to back without reading anything in between.
        run_case::<f32, f32>(
            &gpu,
            &small_set,
            &mut ws,
            &[&small],
            None,
            &x,
            t,
            no_poison,
            &mut rng,
            "repeat, small again",
        );
    }
}

/// Invalid calls are typed errors that issue nothing (the output is untouched); a call of
/// zero rows is a no-op.
#[test]
fn invalid_calls_are_typed_errors() {
    let Some(gpu) = open_or_skip("invalid_calls_are_typed_errors") else {
        return;
    };
    let (mut rng, _) = fresh_rng("invalid_calls_are_typed_errors");
    assert!(gpu.sm_count() > 0 && !gpu.name().is_empty());
    assert!(matches!(Gpu::open(100_000), Err(Error::NoDevice { .. })));
    let l = dynamic(100, 40, 70, &mut rng);
    let other = dynamic(101, 40, 70, &mut rng);
    let pa = gpu.upload(&PackedSkillpack::new(&l).unwrap()).unwrap();
    let pb = gpu.upload(&PackedSkillpack::new(&other).unwrap()).unwrap();
    assert!(matches!(
        gpu.skillpack_set(&[&pa, &pb]),
        Err(Error::InvalidInput(_))
    ));
    assert!(matches!(
        gpu.skillpack_set(&[]),
        Err(Error::InvalidInput(_))
    ));
    let set = gpu.skillpack_set(&[&pa]).unwrap();
    assert!(matches!(
        gpu.workspace(&set, 0),
        Err(Error::InvalidInput(_))
    ));
    let mut ws = gpu.workspace(&set, 8).unwrap();
    assert!(matches!(gpu.read_tap(&ws, 1), Err(Error::InvalidInput(_))));
    assert!(matches!(
        gpu.upload_pack_of_row(&set, &[Some(0), Some(1)]),
        Err(Error::InvalidInput(_))
    ));
    let s = gpu.stream();
    let assigned = gpu.upload_pack_of_row(&set, &[Some(0), None]).unwrap();
    assert_eq!(s.clone_dtoh(&assigned).unwrap(), vec![0, NO_PACK]);
    let x = s.clone_htod(&vec![1.0f32; 8 * 100]).unwrap();
    let y0 = vec![0.25f32; 8 * 70];
    let mut y = s.clone_htod(&y0).unwrap();
    let short_pack = gpu.upload_pack_of_row(&set, &[Some(0); 3]).unwrap();
    let mut short_acc = s.alloc_zeros::<i32>(10).unwrap();
    // Too many rows, short x, short stride, short pack_of_row, short acc tap.
    let errs = [
        gpu.apply(&set, &mut ws, &x, 100, 9, None, &mut y, 70, None),
        gpu.apply(&set, &mut ws, &x, 101, 8, None, &mut y, 70, None),
        gpu.apply(&set, &mut ws, &x, 99, 8, None, &mut y, 70, None),
        gpu.apply(&set, &mut ws, &x, 100, 8, None, &mut y, 71, None),
        gpu.apply(
            &set,
            &mut ws,
            &x,
            100,
            4,
            Some(&short_pack),
            &mut y,
            70,
            None,
        ),
        gpu.apply(
            &set,
            &mut ws,
            &x,
            100,
            4,
            None,
            &mut y,
            70,
            Some(&mut short_acc),
        ),
    ];
    for (i, e) in errs.into_iter().enumerate() {
        assert!(matches!(e, Err(Error::InvalidInput(_))), "case {i}: {e:?}");
    }
    // A plan for another call.
    let plan = gpu.plan(&set, 5, false);
    assert!(matches!(
        gpu.apply_with_plan(&set, &mut ws, &x, 100, 4, None, &mut y, 70, None, &plan),
        Err(Error::InvalidInput(_))
    ));
    // A workspace too small for the set.
    let wide = dynamic(100, 200, 70, &mut rng);
    let wide_set = upload_set(&gpu, &[&wide]);
    assert!(matches!(
        gpu.apply(&wide_set, &mut ws, &x, 100, 1, None, &mut y, 70, None),
        Err(Error::InvalidInput(_))
    ));
    // Zero rows: nothing happens.
    gpu.apply(&set, &mut ws, &x, 100, 0, None, &mut y, 70, None)
        .unwrap();
    let y_after = s.clone_dtoh(&y).unwrap();
    s.synchronize().unwrap();
    check_eq(&y_after, &y0, "y after rejected calls");
}
