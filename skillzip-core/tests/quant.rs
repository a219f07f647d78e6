//! Quantizers against an f64 reference over ragged shapes and nasty values.

use proptest::prelude::*;
use skillzip_core::Error;
use skillzip_core::quant::{Bits, Granularity, Quantized, pack_int4, unpack_int4};

fn nasty_value() -> impl Strategy<Value = f32> {
    prop_oneof![
        4 => -10.0f32..10.0,
        1 => Just(0.0f32),
        1 => (-254i32..254).prop_map(|k| k as f32 * 0.5),  // exact half-integers: ties
        1 => -1e4f32..1e4,                                  // outliers
        1 => prop_oneof![Just(f32::MIN_POSITIVE), Just(-1e-38f32), Just(3.4e38f32)],
    ]
}

fn granularity() -> impl Strategy<Value = Granularity> {
    prop_oneof![
        Just(Granularity::PerTensor),
        Just(Granularity::PerRow),
        Just(Granularity::PerColumn)
    ]
}

fn bits() -> impl Strategy<Value = Bits> {
    prop_oneof![
        Just(Bits::Int8),
        Just(Bits::Int4),
        Just(Bits::Int3),
        Just(Bits::Int2)
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn codes_are_nearest_within_grid(
        rows in 1usize..9, cols in 1usize..35, g in granularity(), b in bits(),
        seed_vals in proptest::collection::vec(nasty_value(), 8 * 34),
    ) {
        let values = &seed_vals[..rows * cols];
        let q = Quantized::quantize(values, rows, cols, b, g).unwrap();
        let qmax = b.qmax();
        // Reference amax per group in f64.
        for r in 0..rows {
            for c in 0..cols {
                let group: Vec<f64> = match g {
                    Granularity::PerTensor => values.iter().map(|v| *v as f64).collect(),
                    Granularity::PerRow => values[r * cols..(r + 1) * cols].iter().map(|v| *v as f64).collect(),
                    Granularity::PerColumn => (0..rows).map(|rr| values[rr * cols + c] as f64).collect(),
                };
                let amax = group.iter().fold(0f64, |m, v| m.max(v.abs()));
                let code = q.codes[r * cols + c] as i32;
                prop_assert!(code.abs() <= qmax);
                let scale = q.scale_at(r, c) as f64;
                if amax == 0.0 {
                    prop_assert_eq!(code, 0);
                    prop_assert_eq!(scale, 0.0);
                    continue;
                }
                if (qmax as f32 / amax as f32).is_infinite() {
                    // amax < qmax / f32::MAX: quantized as an all-zero group.
                    prop_assert_eq!(code, 0);
                    prop_assert_eq!(scale, 0.0);
                    continue;
                }
                // Subnormal scales lose relative precision.
                prop_assert!((scale - amax / qmax as f64).abs() <= 1e-6 * scale + 1e-44);
                let exact = values[r * cols + c] as f64 * qmax as f64 / amax;
                // Nearest up to one f32 rounding of the product.
                prop_assert!((code as f64 - exact).abs() <= 0.5 + 1e-5 * exact.abs().max(1.0),
                    "code {} for {}", code, exact);
            }
        }
        // The group maximum maps to ±qmax.
        if g == Granularity::PerTensor {
            let (i, _) = values.iter().enumerate().fold((0, 0f32), |(bi, bv), (i, v)| if v.abs() > bv { (i, v.abs()) } else { (bi, bv) });
            if (qmax as f32 / values[i].abs()).is_finite() {
                prop_assert_eq!(q.codes[i].unsigned_abs() as i32, qmax);
            }
        }
    }

    #[test]
    fn int4_pack_round_trips(rows in 1usize..6, k in 1usize..40, codes in proptest::collection::vec(-8i8..=7, 6 * 40)) {
        let c = &codes[..rows * k];
        let packed = pack_int4(c, rows, k);
        prop_assert_eq!(packed.len(), rows * k.div_ceil(2));
        prop_assert_eq!(unpack_int4(&packed, rows, k), c.to_vec());
        if k % 2 == 1 {
            for r in 0..rows {
                prop_assert_eq!(packed[r * k.div_ceil(2) + k / 2] >> 4, 0, "odd K pads with 0");
            }
        }
    }

    #[test]
    fn static_scales_saturate(values in proptest::collection::vec(-100f32..100.0, 1..50), amax in 0.1f32..10.0) {
        let n = values.len();
        let q = Quantized::quantize_static(&values, 1, n, Bits::Int8, Granularity::PerTensor, &[amax]).unwrap();
        for (v, c) in values.iter().zip(&q.codes) {
            if v.abs() > amax * 1.01 {
                prop_assert_eq!(*c as f32, 127.0 * v.signum());
            }
        }
    }
}

#[test]
fn ties_go_to_even_per_tensor() {
    // amax = 127 gives inv = 1, so the codes are the values rounded half to even.
    let v = [0.5f32, 1.5, 2.5, -0.5, -1.5, -2.5, 126.5, 127.0];
    let q = Quantized::quantize(&v, 1, 8, Bits::Int8, Granularity::PerTensor).unwrap();
    assert_eq!(q.codes, vec![0, 2, 2, 0, -2, -2, 126, 127]);
}

#[test]
fn bad_inputs_are_typed_errors() {
    assert!(matches!(
        Quantized::quantize(&[1.0, f32::INFINITY], 1, 2, Bits::Int8, Granularity::PerRow),
        Err(Error::NonFinite { index: 1, .. })
    ));
    assert!(matches!(
        Quantized::quantize(&[1.0; 5], 2, 3, Bits::Int8, Granularity::PerRow),
        Err(Error::ShapeMismatch { .. })
    ));
    assert!(matches!(
        Quantized::quantize_static(
            &[1.0; 6],
            2,
            3,
            Bits::Int8,
            Granularity::PerColumn,
            &[1.0; 2]
        ),
        Err(Error::ShapeMismatch { .. })
    ));
}

#[test]
fn storage_bytes_count_packing_and_scales() {
    let q = Quantized::quantize(&[1.0; 3 * 5], 3, 5, Bits::Int4, Granularity::PerRow).unwrap();
    assert_eq!(q.storage_bytes(), 3 * 3 + 3 * 4);
    let q = Quantized::quantize(&[1.0; 3 * 5], 3, 5, Bits::Int8, Granularity::PerTensor).unwrap();
    assert_eq!(q.storage_bytes(), 15 + 4);
}

#[test]
fn groups_whose_inverse_overflows_quantize_as_zero() {
    // amax = 3 denormal ulps: qmax/amax overflows, amax/qmax would underflow to 0.
    let tiny = f32::from_bits(3);
    let q = Quantized::quantize(
        &[tiny, -tiny, 0.0],
        1,
        3,
        Bits::Int8,
        Granularity::PerTensor,
    )
    .unwrap();
    assert_eq!(
        (q.codes.clone(), q.scales.clone()),
        (vec![0, 0, 0], vec![0.0])
    );
    // Just above the threshold the rule is the ordinary one.
    let small = 127.0 / f32::MAX * 2.0;
    let q = Quantized::quantize(
        &[small, -small / 2.0],
        1,
        2,
        Bits::Int8,
        Granularity::PerTensor,
    )
    .unwrap();
    assert_eq!(q.codes, vec![127, -64]);
}
