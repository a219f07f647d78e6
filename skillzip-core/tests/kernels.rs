//! The fast CPU kernels against the reference runtime, for every instruction-set path this
//! CPU can run (forced, not only the dispatched one), sequential and threaded: outputs bit for
//! bit, integer intermediates exactly, over ragged shapes, INT4/INT8 grids, static and dynamic
//! modes, saturating values, outlier channels, subnormals, and f32/f16/bf16 activations.

use proptest::prelude::*;
use rand::RngExt;
use skillzip_core::Error;
use skillzip_core::kernels::{Isa, Kernel, KernelScratch, PackedLayer, Parallelism};
use skillzip_core::layer::{CompressedLayer, Truncation};
use skillzip_core::quant::{ActScale, Bits};
use skillzip_core::runtime::{self, Scratch};
use skillzip_core::synth::{self, RandomLayer, random_layer};
use skillzip_core::{SeededRng, seeded_rng};

/// Every kernel this CPU runs, in both threading modes.
fn kernels() -> Vec<Kernel> {
    let available: Vec<Isa> = Isa::available().collect();
    assert!(available.contains(&Isa::Scalar));
    available
        .into_iter()
        .flat_map(|isa| {
            let k = Kernel::with_isa(isa).expect("listed as available");
            [k.with_parallelism(Parallelism::Sequential), k]
        })
        .collect()
}

#[derive(Debug, Clone, Copy)]
enum Dtype {
    F32,
    F16,
    Bf16,
}

/// Plain activations in `[-3, 3)`, or (`nasty`) [`synth::contract_rows`]: outliers, zero,
/// huge, subnormal, tie and overflowing rows.
fn activations(t: usize, layer: &CompressedLayer, nasty: bool, rng: &mut SeededRng) -> Vec<f32> {
    if nasty {
        return synth::contract_rows(t, layer, rng);
    }
    (0..t * layer.c_in())
        .map(|_| rng.random_range(-3.0f32..3.0))
        .collect()
}

/// Rounds `x` to the activation type (f16 clamped to its range), returning the converted values and their exact f32
/// images (what the reference sees).
fn in_dtype(x: &[f32], dtype: Dtype) -> (Vec<half::f16>, Vec<half::bf16>, Vec<f32>) {
    match dtype {
        Dtype::F32 => (vec![], vec![], x.to_vec()),
        Dtype::F16 => {
            // Huge rows saturate to f16's range instead of becoming infinite.
            let h: Vec<half::f16> = x
                .iter()
                .map(|&v| half::f16::from_f32(v.clamp(-6e4, 6e4)))
                .collect();
            let f = h.iter().map(|v| v.to_f32()).collect();
            (h, vec![], f)
        }
        Dtype::Bf16 => {
            let h: Vec<half::bf16> = x.iter().map(|&v| half::bf16::from_f32(v)).collect();
            let f = h.iter().map(|v| v.to_f32()).collect();
            (vec![], h, f)
        }
    }
}

fn kernel_apply(
    k: &Kernel,
    layer: &PackedLayer,
    x: &[f32],
    dtype: Dtype,
    y: &mut [f32],
    s: &mut KernelScratch,
) -> Result<(), Error> {
    let (h, b, f) = in_dtype(x, dtype);
    match dtype {
        Dtype::F32 => k.apply(layer, &f, y, s),
        Dtype::F16 => k.apply(layer, &h, y, s),
        Dtype::Bf16 => k.apply(layer, &b, y, s),
    }
}

fn bits_strategy() -> impl Strategy<Value = (Bits, Bits, Bits)> {
    prop_oneof![
        Just((Bits::Int8, Bits::Int8, Bits::Int8)),
        Just((Bits::Int8, Bits::Int4, Bits::Int4)),
        Just((Bits::Int4, Bits::Int4, Bits::Int8)),
        Just((Bits::Int4, Bits::Int4, Bits::Int4)),
    ]
}

fn dtype_strategy() -> impl Strategy<Value = Dtype> {
    prop_oneof![Just(Dtype::F32), Just(Dtype::F16), Just(Dtype::Bf16)]
}

/// Static scale settings that saturate: a small `amax` (or one below the overflow limit of
/// `qmax/amax`) and a multiplier drawn over many octaves.
fn modes(static_act: bool, static_trunc: bool, rng: &mut SeededRng) -> (ActScale, Truncation) {
    let act = if static_act {
        let amax = [2.0f32, 0.3, 1e-38][rng.random_range(0..3)];
        ActScale::Static { amax }
    } else {
        ActScale::Dynamic
    };
    let trunc = if static_trunc {
        Truncation::Static {
            m: 1u64 << rng.random_range(0..40),
        }
    } else {
        Truncation::Dynamic
    };
    (act, trunc)
}

#[allow(clippy::too_many_arguments)]
fn layer_for(
    ci: usize,
    r: usize,
    co: usize,
    bits: (Bits, Bits, Bits),
    flags: (bool, bool, bool, bool),
    rng: &mut SeededRng,
) -> CompressedLayer {
    let (smoothing, b_per_channel, static_act, static_trunc) = flags;
    let (act_scale, truncation) = modes(static_act, static_trunc, rng);
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

/// `y` starts as a random backbone output: the kernels must add in place.
fn backbone(len: usize, rng: &mut SeededRng) -> Vec<f32> {
    (0..len).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

fn assert_bits_eq(got: &[f32], want: &[f32], what: &str) -> Result<(), TestCaseError> {
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        prop_assert_eq!(
            g.to_bits(),
            w.to_bits(),
            "{} differs at {}: {} vs {}",
            what,
            i,
            g,
            w
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Whole-batch application on every path equals `runtime::apply` bit for bit.
    #[test]
    fn every_path_matches_the_reference(
        t in 1usize..=67, ci in prop_oneof![1usize..=200, 520usize..=1100],
        r in prop_oneof![1usize..=40, 41usize..=640],
        co in 1usize..=150, bits in bits_strategy(), flags in any::<(bool, bool, bool, bool)>(),
        nasty in any::<bool>(), dtype in dtype_strategy(), seed in any::<u64>(),
    ) {
        let mut rng = seeded_rng(seed);
        let layer = layer_for(ci, r, co, bits, flags, &mut rng);
        let x = activations(t, &layer, nasty, &mut rng);
        let y0 = backbone(t * co, &mut rng);
        let x_ref = in_dtype(&x, dtype).2;
        let mut want = y0.clone();
        runtime::apply(&layer, &x_ref, &mut want, &mut Scratch::default()).unwrap();
        let packed = PackedLayer::new(&layer);
        let mut scratch = KernelScratch::default();
        for k in kernels() {
            let mut y = y0.clone();
            kernel_apply(&k, &packed, &x, dtype, &mut y, &mut scratch).unwrap();
            assert_bits_eq(&y, &want, &format!("{:?}", k))?;
        }
    }

    /// The debug tap: every integer intermediate equals the reference's.
    #[test]
    fn integer_intermediates_are_exact(
        ci in 1usize..=300, r in 1usize..=100, co in 1usize..=80, bits in bits_strategy(),
        flags in any::<(bool, bool, bool, bool)>(), nasty in any::<bool>(), seed in any::<u64>(),
    ) {
        let mut rng = seeded_rng(seed);
        let layer = layer_for(ci, r, co, bits, flags, &mut rng);
        let x = activations(3, &layer, nasty, &mut rng);
        let packed = PackedLayer::new(&layer);
        for row in 0..3 {
            let x_row = &x[row * ci..(row + 1) * ci];
            let want = runtime::trace_row(&layer, x_row).unwrap();
            for k in kernels() {
                let got = k.trace_row(&packed, x_row).unwrap();
                prop_assert_eq!(&got.x_hat, &want.x_hat, "x̂ on {:?}", k);
                prop_assert_eq!(got.sigma_x.to_bits(), want.sigma_x.to_bits());
                prop_assert_eq!(&got.z, &want.z, "z on {:?}", k);
                prop_assert_eq!(got.m, want.m);
                prop_assert_eq!(&got.z_hat, &want.z_hat, "ẑ on {:?}", k);
                prop_assert_eq!(&got.acc, &want.acc, "acc on {:?}", k);
                assert_bits_eq(&got.y, &want.y, "y")?;
            }
        }
    }

    /// The grouped form: random assignment over up to 5 skillpacks of different ranks, modes
    /// and smoothing; rows with no skillpack; empty groups; one token per group.
    #[test]
    fn grouped_matches_the_reference(
        t in 1usize..=40, ci in 1usize..=150, co in 1usize..=120, packs in 1usize..=5,
        none_share in 0u32..=3, seed in any::<u64>(), dtype in dtype_strategy(),
    ) {
        let mut rng = seeded_rng(seed);
        let layers: Vec<CompressedLayer> = (0..packs)
            .map(|_| {
                let r = rng.random_range(1..=80);
                let bits = [(Bits::Int8, Bits::Int8, Bits::Int8), (Bits::Int8, Bits::Int4, Bits::Int4)]
                    [rng.random_range(0..2)];
                let flags = (rng.random(), rng.random(), rng.random(), rng.random());
                layer_for(ci, r, co, bits, flags, &mut rng)
            })
            .collect();
        // Pack `packs - 1` never gets a row when there is more than one (an empty group).
        let skill: Vec<Option<usize>> = (0..t)
            .map(|_| {
                if rng.random_range(0..4) < none_share {
                    None
                } else {
                    Some(rng.random_range(0..packs.saturating_sub(1).max(1)))
                }
            })
            .collect();
        let x = activations(t, &layers[0], true, &mut rng);
        let y0 = backbone(t * co, &mut rng);
        let x_ref = in_dtype(&x, dtype).2;
        let refs: Vec<&CompressedLayer> = layers.iter().collect();
        let mut want = y0.clone();
        runtime::apply_grouped(&refs, &skill, &x_ref, &mut want, &mut Scratch::default()).unwrap();
        let packed: Vec<PackedLayer> = layers.iter().map(PackedLayer::new).collect();
        let prefs: Vec<&PackedLayer> = packed.iter().collect();
        let (h, b, f) = in_dtype(&x, dtype);
        let mut scratch = KernelScratch::default();
        for k in kernels() {
            let mut y = y0.clone();
            match dtype {
                Dtype::F32 => k.apply_grouped(&prefs, &skill, &f, &mut y, &mut scratch),
                Dtype::F16 => k.apply_grouped(&prefs, &skill, &h, &mut y, &mut scratch),
                Dtype::Bf16 => k.apply_grouped(&prefs, &skill, &b, &mut y, &mut scratch),
            }
            .unwrap();
            assert_bits_eq(&y, &want, &format!("grouped {:?}", k))?;
        }
    }
}

/// Shapes big enough to take every threaded route (tile-split decode GEMMs, row-blocked
/// prefill, the parallel quantizer and epilogue) in pools of several sizes: identical bits to
/// the reference and to the sequential run.
#[test]
fn threaded_routes_are_exact_for_every_pool_size() {
    let mut rng = seeded_rng(7);
    let layer = layer_for(
        2100,
        600,
        1100,
        (Bits::Int8, Bits::Int8, Bits::Int8),
        (true, true, false, false),
        &mut rng,
    );
    let packed = PackedLayer::new(&layer);
    for t in [1usize, 5, 130] {
        let x = activations(t, &layer, true, &mut rng);
        let y0 = backbone(t * 1100, &mut rng);
        let mut want = y0.clone();
        runtime::apply(&layer, &x, &mut want, &mut Scratch::default()).unwrap();
        for threads in [1, 2, 3, 8] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            for isa in Isa::available().filter(|&i| i != Isa::Scalar) {
                let k = Kernel::with_isa(isa).unwrap();
                let mut y = y0.clone();
                pool.install(|| k.apply(&packed, &x, &mut y, &mut KernelScratch::default()))
                    .unwrap();
                assert_bits_eq(&y, &want, &format!("{isa:?}, T = {t}, {threads} threads")).unwrap();
            }
        }
    }
}

/// One scratch reused across layers of different shapes and batch sizes keeps every result
/// exact (stale padding in the buffers must not leak into sums).
#[test]
fn scratch_reuse_across_shapes_is_exact() {
    let mut rng = seeded_rng(11);
    let mut scratch = KernelScratch::default();
    let k = Kernel::detect();
    for (t, ci, r, co) in [
        (9, 300, 200, 50),
        (2, 13, 3, 7),
        (30, 64, 64, 64),
        (1, 301, 5, 99),
    ] {
        let layer = layer_for(
            ci,
            r,
            co,
            (Bits::Int8, Bits::Int4, Bits::Int4),
            (true, false, false, false),
            &mut rng,
        );
        let x = activations(t, &layer, true, &mut rng);
        let mut want = vec![0.0; t * co];
        runtime::apply(&layer, &x, &mut want, &mut Scratch::default()).unwrap();
        let mut y = vec![0.0; t * co];
        k.apply(&PackedLayer::new(&layer), &x, &mut y, &mut scratch)
            .unwrap();
        assert_bits_eq(&y, &want, "reused scratch").unwrap();
    }
}

#[test]
fn errors_are_typed_and_leave_the_output_untouched() {
    let mut rng = seeded_rng(3);
    let layer = layer_for(
        10,
        4,
        6,
        (Bits::Int8, Bits::Int8, Bits::Int8),
        (false, true, false, false),
        &mut rng,
    );
    let packed = PackedLayer::new(&layer);
    let other = PackedLayer::new(&layer_for(
        11,
        4,
        6,
        (Bits::Int8, Bits::Int8, Bits::Int8),
        (false, true, false, false),
        &mut rng,
    ));
    let k = Kernel::detect();
    let x = vec![1.0f32; 20];
    let mut y = vec![0.5f32; 12];
    let mut s = KernelScratch::default();
    let err = k.apply_grouped(&[&packed], &[Some(0), Some(1)], &x, &mut y, &mut s);
    assert_eq!(
        err,
        Err(Error::UnknownSkillpack {
            row: 1,
            index: 1,
            count: 1
        })
    );
    assert!(matches!(
        k.apply(&packed, &x[..15], &mut y, &mut s),
        Err(Error::ShapeMismatch { .. })
    ));
    assert!(matches!(
        k.apply(&packed, &x, &mut y[..11], &mut s),
        Err(Error::ShapeMismatch { .. })
    ));
    assert!(matches!(
        k.apply_grouped(&[&packed, &other], &[Some(0), None], &x, &mut y, &mut s),
        Err(Error::ShapeMismatch { .. })
    ));
    assert!(matches!(
        k.apply_grouped(&[&packed], &[Some(0)], &x, &mut y, &mut s),
        Err(Error::ShapeMismatch { .. })
    ));
    assert_eq!(
        k.apply_grouped::<f32>(&[], &[], &[], &mut [], &mut s),
        Err(Error::Empty("skillpack list"))
    );
    assert_eq!(y, vec![0.5f32; 12], "rejected calls leave y untouched");
    for isa in Isa::ALL {
        match Kernel::with_isa(isa) {
            Ok(k) => assert!(isa.is_available() && k.isa() == isa),
            Err(e) => assert_eq!(e, Error::IsaUnavailable { isa: isa.name() }),
        }
    }
    assert_ne!(
        Isa::detect(),
        Isa::AvxVnniEvex,
        "the test twin is never dispatched"
    );
}

/// The longest reduction the contract allows, with every product at its extreme: `z` reaches
/// ±(2³¹ − 1)-scale values, and on the VNNI paths the offset sums `Σ (x + 128)·w` leave the
/// i32 range — exact only because they wrap and the correction wraps back.
#[test]
fn longest_reduction_is_exact_at_the_i32_limit() {
    use skillzip_core::layer::MAX_EXACT_REDUCTION;
    use skillzip_core::quant::{Granularity, Quantized};
    let (ci, r, co) = (MAX_EXACT_REDUCTION, 3, 2);
    // Rows of Â: all +127, all −127, alternating.
    let a_codes: Vec<i8> = (0..r * ci)
        .map(|i| match i / ci {
            0 => 127,
            1 => -127,
            _ => [127, -127][i % 2],
        })
        .collect();
    let a = Quantized {
        rows: r,
        cols: ci,
        bits: Bits::Int8,
        granularity: Granularity::PerTensor,
        codes: a_codes,
        scales: vec![0.5],
    };
    let b = Quantized {
        rows: co,
        cols: r,
        bits: Bits::Int8,
        granularity: Granularity::PerRow,
        codes: vec![127, 127, -127, -127, 127, 1],
        scales: vec![0.25, 2.0],
    };
    let layer = CompressedLayer::new(
        None,
        Bits::Int8,
        ActScale::Dynamic,
        a,
        b,
        Truncation::Dynamic,
    )
    .unwrap();
    let x = vec![3.0f32; ci];
    let want = runtime::trace_row(&layer, &x).unwrap();
    assert_eq!(want.z[0], 127 * 127 * ci as i32);
    assert_eq!(want.z[1], -127 * 127 * ci as i32);
    let packed = PackedLayer::new(&layer);
    for k in kernels() {
        let got = k.trace_row(&packed, &x).unwrap();
        assert_eq!(got.z, want.z, "{k:?}");
        assert_eq!(got.acc, want.acc, "{k:?}");
        assert_bits_eq(&got.y, &want.y, "y").unwrap();
    }
}
