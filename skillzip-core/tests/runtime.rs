//! The reference runtime against independent exact computations: integer parts recomputed in
//! i64 / exact f64, the epilogue in f64, the batched path bit for bit, and the grouped form.

use faer::Mat;
use proptest::prelude::*;
use skillzip_core::Error;
use skillzip_core::layer::{CompressedLayer, MAX_EXACT_REDUCTION, Truncation};
use skillzip_core::quant::{ActScale, Bits, Granularity, Quantized};
use skillzip_core::runtime::{Scratch, apply, apply_batched, apply_grouped, trace_row};

/// Deterministic pseudo-random numbers for fixtures (SplitMix64).
struct Mix(u64);
impl Mix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }
    fn code(&mut self, bits: Bits) -> i8 {
        let q = bits.qmax() as u64;
        ((self.next() % (2 * q + 1)) as i64 - q as i64) as i8
    }
}

struct Case {
    layer: CompressedLayer,
    x: Vec<f32>,
    t: usize,
}

#[allow(clippy::too_many_arguments)]
fn make_case(
    t: usize,
    ci: usize,
    r: usize,
    co: usize,
    seed: u64,
    bits: (Bits, Bits, Bits),
    static_modes: (bool, bool),
    nasty: bool,
) -> Case {
    let mut g = Mix(seed);
    let a_codes: Vec<i8> = (0..r * ci).map(|_| g.code(bits.1)).collect();
    let b_codes: Vec<i8> = (0..co * r).map(|_| g.code(bits.2)).collect();
    let a = Quantized {
        rows: r,
        cols: ci,
        bits: bits.1,
        granularity: Granularity::PerTensor,
        codes: a_codes,
        scales: vec![0.01 + g.unit().abs()],
    };
    let b = Quantized {
        rows: co,
        cols: r,
        bits: bits.2,
        granularity: Granularity::PerRow,
        codes: b_codes,
        scales: (0..co).map(|_| g.unit().abs() * 0.1).collect(),
    };
    let s_inv: Vec<f32> = (0..ci).map(|_| 0.25 + 2.0 * g.unit().abs()).collect();
    let outlier = (g.next() as usize) % ci;
    let mut x: Vec<f32> = (0..t * ci).map(|_| g.unit() * 3.0).collect();
    if nasty {
        for row in 0..t {
            x[row * ci + outlier] *= 100.0;
        }
        // A zero row and an exact-tie row.
        if t > 1 {
            x[ci..2 * ci].fill(0.0);
        }
        if t > 2 {
            for i in 0..ci {
                x[2 * ci + i] = if i % 2 == 0 { 0.5 } else { -2.5 } / s_inv[i];
            }
        }
    }
    let act_scale = if static_modes.0 {
        ActScale::Static { amax: 2.0 }
    } else {
        ActScale::Dynamic
    };
    let truncation = if static_modes.1 {
        Truncation::Static { m: 1 << 20 }
    } else {
        Truncation::Dynamic
    };
    let layer = CompressedLayer::new(Some(s_inv), bits.0, act_scale, a, b, truncation).unwrap();
    Case { layer, x, t }
}

/// Independent recomputation of one row's integer parts and output.
fn check_row(layer: &CompressedLayer, x_row: &[f32]) {
    let tr = trace_row(layer, x_row).unwrap();
    let (ci, r, co) = (layer.c_in(), layer.rank(), layer.c_out());
    let qmax = layer.act_bits().qmax();
    let s_inv = layer.s_inv().unwrap();
    // x̂: each code is the saturated nearest integer of u·inv (ties to even) — checked as a
    // bound in f64 plus the saturation and symmetric-range rules.
    let u: Vec<f32> = (0..ci).map(|i| x_row[i] * s_inv[i]).collect();
    let amax = match layer.act_scale() {
        ActScale::Dynamic => u.iter().fold(0f32, |m, v| m.max(v.abs())),
        ActScale::Static { amax } => amax,
    };
    if amax == 0.0 {
        assert!(tr.x_hat.iter().all(|&c| c == 0));
        assert_eq!(tr.sigma_x, 0.0);
    } else {
        let inv = qmax as f32 / amax;
        for (i, ui) in u.iter().enumerate() {
            let exact = (ui * inv) as f64;
            let c = tr.x_hat[i] as f64;
            assert!(c.abs() <= qmax as f64);
            if exact.abs() <= qmax as f64 {
                assert!((c - exact).abs() <= 0.5, "x̂[{i}] = {c} for {exact}");
                if (c - exact).abs() == 0.5 {
                    assert_eq!(tr.x_hat[i] % 2, 0, "tie not to even");
                }
            } else {
                assert_eq!(c, qmax as f64 * exact.signum());
            }
        }
        assert_eq!(tr.sigma_x, amax / qmax as f32);
    }
    // z in i64.
    let a = &layer.a().codes;
    for k in 0..r {
        let z: i64 = (0..ci)
            .map(|i| tr.x_hat[i] as i64 * a[k * ci + i] as i64)
            .sum();
        assert_eq!(tr.z[k] as i64, z);
    }
    // ẑ through exact f64 (z·M < 2^53 here, and /2^31 is exact).
    let zmax = tr.z.iter().map(|v| v.unsigned_abs()).max().unwrap();
    let m = match layer.truncation() {
        Truncation::Dynamic => {
            if zmax == 0 {
                0
            } else {
                (127u128 * (1u128 << 31) / zmax as u128) as u64
            }
        }
        Truncation::Static { m } => m,
    };
    assert_eq!(tr.m, m);
    for k in 0..r {
        let v = (tr.z[k] as f64 * m as f64 / 2f64.powi(31))
            .round_ties_even()
            .clamp(-127.0, 127.0);
        assert_eq!(tr.z_hat[k] as f64, v, "ẑ[{k}]");
    }
    let b = &layer.b().codes;
    for o in 0..co {
        let acc: i64 = (0..r)
            .map(|k| tr.z_hat[k] as i64 * b[o * r + k] as i64)
            .sum();
        assert_eq!(tr.acc[o] as i64, acc);
        let rho = if m == 0 {
            0.0
        } else {
            2f64.powi(31) / m as f64
        };
        let want = tr.sigma_x as f64
            * layer.a().scales[0] as f64
            * rho
            * acc as f64
            * layer.b_scale(o) as f64;
        assert!(
            (tr.y[o] as f64 - want).abs() <= 1e-5 * want.abs() + 1e-30,
            "y[{o}] {} vs {want}",
            tr.y[o]
        );
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

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn integer_parts_are_exact(
        t in 1usize..6, ci in 1usize..70, r in 1usize..40, co in 1usize..50,
        seed in any::<u64>(), bits in bits_strategy(), st in any::<(bool, bool)>(), nasty in any::<bool>(),
    ) {
        let case = make_case(t, ci, r, co, seed, bits, st, nasty);
        for row in 0..case.t {
            check_row(&case.layer, &case.x[row * ci..(row + 1) * ci]);
        }
    }

    #[test]
    fn batched_equals_rowwise_bit_for_bit(
        t in 1usize..12, ci in 1usize..70, r in 1usize..40, co in 1usize..50,
        seed in any::<u64>(), bits in bits_strategy(), st in any::<(bool, bool)>(),
    ) {
        let case = make_case(t, ci, r, co, seed, bits, st, true);
        let mut y = vec![0.0f32; t * co];
        apply(&case.layer, &case.x, &mut y, &mut Scratch::default()).unwrap();
        let x = Mat::from_fn(t, ci, |i, j| case.x[i * ci + j]);
        let yb = apply_batched(&case.layer, x.as_ref()).unwrap();
        for i in 0..t {
            for o in 0..co {
                prop_assert_eq!(y[i * co + o].to_bits(), yb[(i, o)].to_bits());
            }
        }
    }

    #[test]
    fn grouped_equals_each_skillpack_alone(
        t in 1usize..20, seed in any::<u64>(), assign in proptest::collection::vec(0usize..4, 20),
    ) {
        let (ci, r, co) = (37, 9, 23);
        let packs: Vec<Case> = (0..3).map(|k| make_case(t, ci, r, co, seed ^ k, (Bits::Int8, Bits::Int8, Bits::Int8), (false, false), true)).collect();
        let x = &packs[0].x;
        // Skill 3 means "no skillpack".
        let skill: Vec<Option<usize>> = assign[..t].iter().map(|&s| (s < 3).then_some(s)).collect();
        let mut y: Vec<f32> = (0..t * co).map(|i| i as f32 * 0.5).collect();
        let before = y.clone();
        let layers: Vec<&CompressedLayer> = packs.iter().map(|c| &c.layer).collect();
        apply_grouped(&layers, &skill, x, &mut y, &mut Scratch::default()).unwrap();
        for (row, s) in skill.iter().enumerate() {
            let mut alone = before[row * co..(row + 1) * co].to_vec();
            if let Some(k) = s {
                apply(layers[*k], &x[row * ci..(row + 1) * ci], &mut alone, &mut Scratch::default()).unwrap();
            }
            prop_assert_eq!(&y[row * co..(row + 1) * co], &alone[..]);
        }
    }
}

#[test]
fn grouped_rejects_unknown_skillpack_and_bad_lengths() {
    let c = make_case(
        2,
        5,
        2,
        3,
        1,
        (Bits::Int8, Bits::Int8, Bits::Int8),
        (false, false),
        false,
    );
    let mut y = vec![0.0; 6];
    let err = apply_grouped(
        &[&c.layer],
        &[Some(0), Some(1)],
        &c.x,
        &mut y,
        &mut Scratch::default(),
    );
    assert_eq!(
        err,
        Err(Error::UnknownSkillpack {
            row: 1,
            index: 1,
            count: 1
        })
    );
    assert_eq!(
        y,
        vec![0.0; 6],
        "a rejected batch leaves the output untouched"
    );
    let err = apply(&c.layer, &c.x[..7], &mut y, &mut Scratch::default());
    assert!(matches!(err, Err(Error::ShapeMismatch { .. })));
    let mut x = c.x.clone();
    x[3] = f32::NAN;
    assert!(matches!(
        apply(&c.layer, &x, &mut y, &mut Scratch::default()),
        Err(Error::NonFinite { index: 3, .. })
    ));
}

#[test]
fn saturating_inputs_and_static_scales_stay_in_range() {
    let mut c = make_case(
        3,
        16,
        4,
        8,
        9,
        (Bits::Int8, Bits::Int8, Bits::Int8),
        (true, true),
        false,
    );
    c.x.iter_mut().for_each(|v| *v *= 1e30);
    for row in 0..3 {
        let tr = trace_row(&c.layer, &c.x[row * 16..(row + 1) * 16]).unwrap();
        assert!(tr.x_hat.iter().all(|v| (-127..=127).contains(v)));
        assert!(
            tr.x_hat.iter().any(|v| v.abs() == 127),
            "huge inputs saturate under a static scale"
        );
        assert!(tr.z_hat.iter().all(|v| (-127..=127).contains(v)));
        check_row(&c.layer, &c.x[row * 16..(row + 1) * 16]);
    }
}

#[test]
fn layer_validation_is_typed() {
    let q = |rows, cols, g| Quantized {
        rows,
        cols,
        bits: Bits::Int8,
        granularity: g,
        codes: vec![0; rows * cols],
        scales: vec![1.0; skillzip_core::quant::group_count(rows, cols, g)],
    };
    let ok = CompressedLayer::new(
        None,
        Bits::Int8,
        ActScale::Dynamic,
        q(2, 3, Granularity::PerTensor),
        q(4, 2, Granularity::PerRow),
        Truncation::Dynamic,
    );
    assert!(ok.is_ok());
    let bad_b = CompressedLayer::new(
        None,
        Bits::Int8,
        ActScale::Dynamic,
        q(2, 3, Granularity::PerTensor),
        q(4, 3, Granularity::PerRow),
        Truncation::Dynamic,
    );
    assert!(matches!(bad_b, Err(Error::ShapeMismatch { .. })));
    let bad_a = CompressedLayer::new(
        None,
        Bits::Int8,
        ActScale::Dynamic,
        q(2, 3, Granularity::PerRow),
        q(4, 2, Granularity::PerRow),
        Truncation::Dynamic,
    );
    assert!(matches!(bad_a, Err(Error::InvalidConfig(_))));
    let long = CompressedLayer::new(
        None,
        Bits::Int8,
        ActScale::Dynamic,
        q(1, MAX_EXACT_REDUCTION + 1, Granularity::PerTensor),
        q(1, 1, Granularity::PerRow),
        Truncation::Dynamic,
    );
    assert!(matches!(long, Err(Error::ReductionTooLong { .. })));
    let mut out_of_grid = q(2, 3, Granularity::PerTensor);
    out_of_grid.codes[0] = -128;
    let e = CompressedLayer::new(
        None,
        Bits::Int8,
        ActScale::Dynamic,
        out_of_grid,
        q(4, 2, Granularity::PerRow),
        Truncation::Dynamic,
    );
    assert!(matches!(e, Err(Error::InvalidConfig(_))));
    let s = CompressedLayer::new(
        Some(vec![1.0, f32::NAN, 1.0]),
        Bits::Int8,
        ActScale::Dynamic,
        q(2, 3, Granularity::PerTensor),
        q(4, 2, Granularity::PerRow),
        Truncation::Dynamic,
    );
    assert!(matches!(s, Err(Error::NonFinite { .. })));
}

#[test]
fn exact_bound_is_the_i32_limit() {
    assert!(MAX_EXACT_REDUCTION as i64 * 127 * 127 <= i32::MAX as i64);
    assert!((MAX_EXACT_REDUCTION as i64 + 1) * 127 * 127 > i32::MAX as i64);
}
