//! The one-layer pipeline end to end: switches, determinism, bytes, typed errors, and the
//! built-in study on its small case.

use faer::Mat;
use skillzip_core::Error;
use skillzip_core::compress::{
    BitConfig, CalibrationData, CompressConfig, ScaleMode, WeightQuantizer, compress,
};
use skillzip_core::layer::Truncation;
use skillzip_core::metrics::evaluate;
use skillzip_core::quant::ActScale;
use skillzip_core::study::{self, StudyCase};
use skillzip_core::synth::{ActivationModel, Splits, power_law_matrix};

fn fixture() -> (Mat<f32>, Splits) {
    let delta = power_law_matrix(80, 48, 0.5, 1.0, 11);
    let model = ActivationModel::new(80, 16, 3, 40.0, 12);
    (delta, Splits::draw(&model, (256, 64, 96), 13))
}

fn data(s: &Splits) -> CalibrationData<'_> {
    CalibrationData {
        calibration: s.calibration.as_ref(),
        selection: s.selection.as_ref(),
    }
}

#[test]
fn same_seed_same_bits_and_switches_take_effect() {
    let (delta, splits) = fixture();
    let cfg = CompressConfig {
        rotation_candidates: 4,
        ..CompressConfig::skillzip(12)
    };
    let a = compress(delta.as_ref(), &data(&splits), &cfg).unwrap();
    let b = compress(delta.as_ref(), &data(&splits), &cfg).unwrap();
    assert_eq!(
        a.layer, b.layer,
        "same seed, machine and thread count: bit-identical"
    );
    assert!(a.alpha.is_some() && a.rotation_candidate.is_some());
    assert_eq!(a.layer.storage_bytes(), cfg.storage_bytes(80, 48));
    assert!(a.selection_error < 1.0);

    let other_seed = compress(
        delta.as_ref(),
        &data(&splits),
        &CompressConfig {
            seed: 99,
            ..cfg.clone()
        },
    )
    .unwrap();
    assert_ne!(a.layer, other_seed.layer);

    let plain = CompressConfig {
        smooth: false,
        rotate: false,
        weights: WeightQuantizer::Rtn,
        activation: ScaleMode::Static { percentile: 100.0 },
        truncation: ScaleMode::Static { percentile: 99.0 },
        bits: BitConfig::X4A4B4,
        ..cfg.clone()
    };
    let p = compress(delta.as_ref(), &data(&splits), &plain).unwrap();
    assert!(p.layer.s_inv().is_none() && p.alpha.is_none() && p.rotation_candidate.is_none());
    assert!(matches!(p.layer.act_scale(), ActScale::Static { .. }));
    assert!(matches!(p.layer.truncation(), Truncation::Static { .. }));
    assert!(p.layer.a().codes.iter().all(|c| (-7..=7).contains(c)));
    assert_eq!(p.layer.storage_bytes(), plain.storage_bytes(80, 48));
}

#[test]
fn rank_equal_to_full_is_close_and_more_rank_helps() {
    let (delta, splits) = fixture();
    let err = |rank| {
        let c = compress(
            delta.as_ref(),
            &data(&splits),
            &CompressConfig {
                rotation_candidates: 3,
                ..CompressConfig::skillzip(rank)
            },
        )
        .unwrap();
        evaluate(&c.layer, delta.as_ref(), splits.heldout.as_ref(), None)
            .unwrap()
            .rel_output_error
    };
    let (e4, e16, e48) = (err(4), err(16), err(48));
    assert!(e4 > e16 && e16 > e48, "{e4} {e16} {e48}");
    // At full rank only the 8-bit quantization remains.
    assert!(e48 < 0.05, "full-rank X8A8B8 error {e48}");
}

#[test]
fn bad_inputs_are_typed_errors() {
    let (mut delta, splits) = fixture();
    let d = data(&splits);
    assert!(matches!(
        compress(delta.as_ref(), &d, &CompressConfig::skillzip(0)),
        Err(Error::InvalidConfig(_))
    ));
    assert!(matches!(
        compress(delta.as_ref(), &d, &CompressConfig::skillzip(49)),
        Err(Error::InvalidConfig(_))
    ));
    let hadamard = CompressConfig {
        rotation: skillzip_core::rotate::RotationKind::Hadamard,
        ..CompressConfig::skillzip(12)
    };
    assert!(matches!(
        compress(delta.as_ref(), &d, &hadamard),
        Err(Error::InvalidConfig(_))
    ));
    let narrow = Mat::<f32>::zeros(10, 79);
    let bad = CalibrationData {
        calibration: narrow.as_ref(),
        selection: splits.selection.as_ref(),
    };
    assert!(matches!(
        compress(delta.as_ref(), &bad, &CompressConfig::skillzip(4)),
        Err(Error::ShapeMismatch { .. })
    ));
    delta[(3, 5)] = f32::NAN;
    assert!(matches!(
        compress(delta.as_ref(), &d, &CompressConfig::skillzip(4)),
        Err(Error::NonFinite { what: "delta", .. })
    ));
}

#[test]
fn splits_are_disjoint() {
    let (_, s) = fixture();
    let rows = |m: &Mat<f32>| {
        (0..m.nrows())
            .map(|t| {
                (0..m.ncols())
                    .map(|i| m[(t, i)].to_bits())
                    .collect::<Vec<_>>()
            })
            .collect::<Vec<_>>()
    };
    let (c, sel, h) = (rows(&s.calibration), rows(&s.selection), rows(&s.heldout));
    for r in &h {
        assert!(
            !c.contains(r) && !sel.contains(r),
            "a held-out row also appears in another split"
        );
    }
    for r in &sel {
        assert!(!c.contains(r));
    }
}

#[test]
fn small_study_runs_and_quantization_costs_little() {
    let rows = study::run(&StudyCase::small(), &mut |_| {}).unwrap();
    assert!(rows.len() >= 17);
    for r in &rows {
        let f = &r.fidelity;
        assert!(
            f.rel_output_error.is_finite() && f.rel_output_error < 1.5,
            "{}: {}",
            r.method,
            f.rel_output_error
        );
        assert!(f.bytes > 0);
    }
    let get = |name: &str| {
        rows.iter()
            .find(|r| r.method == name)
            .unwrap()
            .fidelity
            .clone()
    };
    // X8A8B8 without merging stays close to fp16 SVD at the same rank: smoothing makes the SVD
    // activation-aware and the 8-bit path adds little.
    let skillzip = get("SkillZip X8A8B8 -merge");
    let svd = get("SVD-16 X16A16B16 (SkillZip's rank)");
    assert!(
        skillzip.rel_output_error <= svd.rel_output_error * 1.05,
        "{skillzip:?} vs {svd:?}"
    );
    // Equal-byte rows really are at most BitDelta's bytes.
    let budget = get("BitDelta").bytes;
    for name in [
        "SkillZip X8A8B8",
        "SVD-16 X16A16B16 (equal bytes)",
        "Delta-CoMe 8/3/2-bit (equal bytes)",
        "SkillZip X8A4B4 (equal bytes)",
    ] {
        assert!(get(name).bytes <= budget, "{name} exceeds BitDelta's bytes");
    }
    assert_eq!(study::orderings(&rows).len(), 7);
}

#[test]
fn compress_skills_extracts_the_shared_component() {
    use skillzip_core::compress::compress_skills;
    use skillzip_core::merge::{MaskSource, MergeConfig, MergeMethod, ModelParams};
    let (delta, splits) = fixture();
    let other = power_law_matrix(80, 48, 0.5, 1.0, 21);
    let d2 = &delta + &other;
    let deltas = [delta.as_ref(), d2.as_ref()];
    let sets = [data(&splits), data(&splits)];
    let cfg = CompressConfig {
        rotation_candidates: 2,
        ..CompressConfig::skillzip(8)
    };
    let merge = MergeConfig::new(MergeMethod::TaskArithmetic, vec![ModelParams::new(0.5); 2]);
    let masks = MaskSource::Seeded(1);
    let merged = compress_skills(&deltas, &sets, Some((&merge, &masks)), &cfg).unwrap();
    let shared = merged.shared.as_ref().unwrap();
    // Task arithmetic with weights 1/2 is the mean: Δ_shared = Δ + other/2.
    for i in 0..80 {
        for o in 0..48 {
            let want = (delta[(i, o)] as f64 + d2[(i, o)] as f64) / 2.0;
            assert!((shared[(i, o)] as f64 - want).abs() < 1e-5);
        }
    }
    assert_eq!(merged.skills.len(), 2);
    let plain = compress_skills(&deltas, &sets, None, &cfg).unwrap();
    assert!(plain.shared.is_none());
    let alone = compress(delta.as_ref(), &sets[0], &cfg).unwrap();
    assert_eq!(plain.skills[0].layer, alone.layer);
    let narrow = Mat::<f32>::zeros(80, 47);
    assert!(matches!(
        compress_skills(&[delta.as_ref(), narrow.as_ref()], &sets, None, &cfg),
        Err(Error::ShapeMismatch { .. })
    ));
    assert!(matches!(
        compress_skills(&deltas, &sets[..1], None, &cfg),
        Err(Error::ShapeMismatch { .. })
    ));
}

#[test]
fn activation_model_marks_exactly_the_requested_outliers() {
    // A gain below the ordinary channels' must not stall the choice of outlier channels.
    for gain in [0.01f32, 50.0] {
        let m = ActivationModel::new(40, 4, 7, gain, 3);
        assert_eq!(m.channel_gain().iter().filter(|g| **g == gain).count(), 7);
    }
    let all = ActivationModel::new(5, 2, 9, 50.0, 3);
    assert!(all.channel_gain().iter().all(|g| *g == 50.0));
}
