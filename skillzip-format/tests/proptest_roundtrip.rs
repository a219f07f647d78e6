//! Random layer shapes, grids and modes round trip bit for bit (ragged sizes, R = 1, odd
//! C_i and R for packed INT4), and the serialized bytes are a fixed point.

mod common;

use proptest::prelude::*;
use skillzip_core::layer::Truncation;
use skillzip_core::quant::{ActScale, Bits};
use skillzip_core::synth::RandomLayer;
use skillzip_format::{
    DenseDtype, DenseTensor, LayerEntry, LayerReport, Skillpack, parse_skillpack, to_bytes,
};

fn bits() -> impl Strategy<Value = Bits> {
    prop_oneof![
        Just(Bits::Int8),
        Just(Bits::Int4),
        Just(Bits::Int3),
        Just(Bits::Int2)
    ]
}

fn act_scale() -> impl Strategy<Value = ActScale> {
    prop_oneof![
        Just(ActScale::Dynamic),
        (0u32..0x7f80_0000).prop_map(|b| ActScale::Static {
            amax: f32::from_bits(b)
        }),
    ]
}

fn truncation() -> impl Strategy<Value = Truncation> {
    prop_oneof![
        Just(Truncation::Dynamic),
        any::<u64>().prop_map(|m| Truncation::Static { m }),
        (0u64..1000).prop_map(|d| Truncation::Static { m: u64::MAX - d }),
    ]
}

prop_compose! {
    fn layer_spec()(
        c_in in 1usize..40, rank in 1usize..9, c_out in 1usize..40,
        act_bits in bits(), a_bits in bits(), b_bits in bits(),
        smoothing in any::<bool>(), b_per_channel in any::<bool>(),
        act_scale in act_scale(), truncation in truncation(),
    ) -> RandomLayer {
        RandomLayer { c_in, rank, c_out, act_bits, a_bits, b_bits, smoothing, b_per_channel,
                      act_scale, truncation }
    }
}

fn dense_dtype() -> impl Strategy<Value = DenseDtype> {
    prop_oneof![
        Just(DenseDtype::F16),
        Just(DenseDtype::BF16),
        Just(DenseDtype::F32)
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn random_layers_round_trip(
        specs in prop::collection::vec((layer_spec(), any::<u64>(), any::<bool>()), 1..4),
        dense in prop::collection::vec((prop::collection::vec(1usize..4, 0..3), dense_dtype(), any::<u64>()), 0..3),
        alpha in prop::option::of(0.0f32..1.0),
        err in prop::option::of(0.0f64..10.0),
    ) {
        let mut pack = Skillpack::new(common::meta("prop"));
        for (i, (spec, seed, report)) in specs.iter().enumerate() {
            let layer = common::random(spec, *seed);
            let report = report.then_some(LayerReport {
                alpha,
                rel_output_error: err,
                rel_weight_error: err.map(|e| e / 3.0),
                bytes: Some(*seed),
            });
            pack.layers.insert(format!("model.layers.{i}.mlp.up_proj"), LayerEntry { layer, report });
        }
        for (i, (shape, dtype, seed)) in dense.iter().enumerate() {
            let n: usize = shape.iter().product();
            // Values exactly representable in every dtype: small dyadic rationals.
            let data = (0..n).map(|k| ((seed.wrapping_add(k as u64) % 64) as f32 - 32.0) / 8.0).collect();
            pack.dense.insert(format!("model.layers.{i}.norm.weight"), DenseTensor::new(shape.clone(), data, *dtype).unwrap());
        }
        let bytes = to_bytes(&pack).unwrap();
        let back = parse_skillpack(&bytes, "prop").unwrap();
        prop_assert_eq!(&back, &pack);
        prop_assert_eq!(to_bytes(&back).unwrap(), bytes);
    }
}
