//! `approximate_skill` applies the comparison baselines (BitDelta, fp16 SVD, ASVD, Delta-CoMe)
//! to every linear layer of a fine-tune of a tiny model (the `compress` tests' fixture): what
//! each returns for linear and non-linear tensors, what it reports, that every result builds a
//! model, and its input errors.

mod common;

use std::collections::BTreeMap;

use common::fixture::{Fixture, NORM, fixture, linears, paper, save_values};
use common::{Values, param_values, tokens};
use faer::Mat;
use half::f16;
use skillzip_core::baselines::BitDelta;
use skillzip_core::metrics::relative_error;
use skillzip_lm::Error;
use skillzip_lm::baseline::{Baseline, BaselineReport, approximate_skill};
use skillzip_lm::calibrate::{CalibrationOptions, InputSite, Split, calibrate};
use skillzip_lm::checkpoint::{Checkpoint, TensorRole, tensor_specs};
use skillzip_lm::config::LlamaConfig;
use skillzip_lm::model::Llama;
use skillzip_lm::skillpack::model_from_params;

type Params = BTreeMap<String, Vec<f32>>;

/// Skill 0 of a one-skill fixture (its final norm changed too) under `baseline`.
fn approximate(f: &Fixture, baseline: Baseline) -> (Params, BaselineReport) {
    approximate_skill(&f.base, &f.tuned[0], &f.cals[0], baseline, &mut |_, _| {}).unwrap()
}

/// `params − θ_0` of a tensor, row-major.
fn approx_delta(f: &Fixture, params: &Params, name: &str) -> Vec<f32> {
    params[name]
        .iter()
        .zip(&f.base_values[name].1)
        .map(|(p, b)| p - b)
        .collect()
}

/// The relative Frobenius error of `estimate` against `reference`.
fn rel(reference: &[f32], estimate: &[f32]) -> f64 {
    let r = Mat::from_fn(reference.len(), 1, |i, _| reference[i]);
    let e = Mat::from_fn(estimate.len(), 1, |i, _| estimate[i]);
    relative_error(r.as_ref(), e.as_ref())
}

fn weight_name(module: &str) -> String {
    format!("{module}.weight")
}

/// Checks the report's shape and recomputes its held-out output errors from the parameters:
/// `‖X·Δ − X·(params − θ_0)ᵀ‖ / ‖X·Δ‖` on the skill's held-out rows. The report measures the
/// method as it runs (`(X·A)·B`, `(X·S)·scale`) and the parameters hold `θ_0 + Ŵ` rounded to
/// f32, so the two agree to f32 rounding, not bit for bit.
fn check_report(f: &Fixture, params: &Params, report: &BaselineReport, label: &str) {
    let all = linears(&f.config);
    assert_eq!(report.baseline, label);
    assert_eq!(
        report.layers.len(),
        all.len(),
        "{label}: one record per linear"
    );
    assert_eq!(
        report.linear_bytes,
        report.layers.iter().map(|l| l.bytes as u64).sum::<u64>(),
        "{label}"
    );
    // Only the final norm's delta is non-zero among the non-linear tensors: 2 bytes each.
    assert_eq!(
        report.dense_bytes,
        2 * f.config.hidden_size as u64,
        "{label}"
    );
    assert_eq!(params.len(), tensor_specs(&f.config).len(), "{label}");
    for ((l, kind), rec) in all.into_iter().zip(&report.layers) {
        assert_eq!(rec.module, kind.module_name(l), "{label}: checkpoint order");
        let x = &f.cals[0].get(l, kind, Split::HeldOut).unwrap().rows;
        assert_eq!(rec.heldout_rows, x.nrows());
        assert!(rec.bytes > 0, "{label} {}", rec.module);
        let (out, inp) = kind.shape(&f.config);
        let name = weight_name(&rec.module);
        let delta = paper(&f.delta(0, &name), out, inp);
        let approx = paper(&approx_delta(f, params, &name), out, inp);
        let want = relative_error((x * &delta).as_ref(), (x * &approx).as_ref());
        assert!(
            rec.rel_output_error.is_finite()
                && (rec.rel_output_error - want).abs() <= 1e-3 * want + 1e-4,
            "{label} {}: reported held-out error {} vs recomputed {want}",
            rec.module,
            rec.rel_output_error
        );
        let weight = relative_error(delta.as_ref(), approx.as_ref());
        assert!(
            (rec.rel_weight_error - weight).abs() <= 1e-3 * weight + 1e-4,
            "{label} {}: weight error {} vs {weight}",
            rec.module,
            rec.rel_weight_error
        );
    }
}

#[test]
fn full_rank_svd16_reproduces_the_fine_tune_to_fp16_rounding() {
    let f = fixture(1, true);
    let mut seen = Vec::new();
    let (params, report) = approximate_skill(
        &f.base,
        &f.tuned[0],
        &f.cals[0],
        Baseline::Svd16 { rank: usize::MAX },
        &mut |i, n| seen.push((i, n)),
    )
    .unwrap();
    let total = tensor_specs(&f.config).len();
    assert_eq!(seen, (0..total).map(|i| (i, total)).collect::<Vec<_>>());
    check_report(&f, &params, &report, "svd16");
    for (name, shape, role) in tensor_specs(&f.config) {
        let (tuned, base, got) = (
            &f.tuned_values[0][&name].1,
            &f.base_values[&name].1,
            &params[&name],
        );
        match role {
            TensorRole::Linear(..) => {
                // At full rank A·B = Δ up to the SVD's f32 error (~1e-6); what remains is the
                // fp16 rounding of A = UΣ^½ and B = Σ^½Vᵀ, each entry within u = 2⁻¹¹
                // relatively: ‖Â·B̂ − A·B‖_F ≲ 2u·‖A‖_F·‖B‖_F = 2u·Σσ_i ≤ 2u·√r·‖Δ‖_F, at most
                // 2·2⁻¹¹·√48 ≈ 6.8e-3 of ‖Δ‖_F here (r ≤ 48), so 1e-2 holds in the worst case.
                let delta = f.delta(0, &name);
                let e = rel(&delta, &approx_delta(&f, &params, &name));
                assert!(e < 1e-2, "{name}: relative error {e} of the delta");
                assert!(e > 0.0, "{name}: fp16 factors cannot be exact");
                assert_eq!(got.len(), shape.iter().product::<usize>());
            }
            _ => {
                // θ_0 + f16(Δ): the fine-tune's value through the fp16 delta, exactly θ_0 where
                // the delta is zero (everything but the final norm).
                let want: Vec<f32> = base
                    .iter()
                    .zip(tuned)
                    .map(|(b, t)| b + f16::from_f32(t - b).to_f32())
                    .collect();
                common::assert_bits(got, &want, &name);
                if name == NORM {
                    assert_ne!(tuned, base);
                    // |f16(Δ) − Δ| ≤ 2⁻¹¹|Δ|, plus the f32 rounding of the sum.
                    for ((g, t), b) in got.iter().zip(tuned).zip(base) {
                        let bound = (t - b).abs() / 2048.0 + f32::EPSILON * t.abs();
                        assert!((g - t).abs() <= bound, "{name}: {g} vs {t}");
                    }
                } else {
                    common::assert_bits(got, base, &name);
                }
            }
        }
    }
    for rec in &report.layers {
        assert!(rec.rel_weight_error < 1e-2, "{}: {rec:?}", rec.module);
    }
}

#[test]
fn bitdelta_keeps_the_signs_and_one_scale_per_tensor() {
    let f = fixture(1, true);
    let (params, report) = approximate(&f, Baseline::BitDelta);
    check_report(&f, &params, &report, "bitdelta");
    for ((l, kind), rec) in linears(&f.config).into_iter().zip(&report.layers) {
        let name = weight_name(&rec.module);
        let (out, inp) = kind.shape(&f.config);
        let n = out * inp;
        assert_eq!(
            rec.bytes,
            n.div_ceil(8) + 4,
            "{name}: one bit per entry + f32 scale"
        );
        let delta = f.delta(0, &name);
        // The scale core fits with the same calibration rows (distilled on X·Δ).
        let calib = &f.cals[0].get(l, kind, Split::Calibration).unwrap().rows;
        let scale = BitDelta::fit(paper(&delta, out, inp).as_ref(), Some(calib.as_ref()))
            .unwrap()
            .scale();
        // Not guaranteed in general (⟨XΔ, X·sign(Δ)⟩ could be negative), but for these deltas
        // sign(Δ) is far from orthogonal to Δ.
        assert!(scale > 0.0, "{name}: scale {scale}");
        let got = approx_delta(&f, &params, &name);
        let (b, p) = (&f.base_values[&name].1, &params[&name]);
        for j in 0..n {
            // p = fl(θ_0 + s·sign) and q = fl(p − θ_0): two roundings of at most ε/2 of |p|
            // and of |q| each.
            let q = got[j];
            let bound = f32::EPSILON * (p[j].abs() + q.abs() + b[j].abs());
            let sign = if delta[j] < 0.0 { -1.0 } else { 1.0 };
            assert!(
                (q - sign * scale).abs() <= bound,
                "{name}[{j}]: {q} vs {}",
                sign * scale
            );
            if delta[j] != 0.0 {
                assert_eq!(q.signum(), delta[j].signum(), "{name}[{j}]: sign");
            }
        }
    }
}

#[test]
fn every_baseline_builds_a_model_and_svd_error_falls_with_rank() {
    let f = fixture(1, true);
    let vocab = f.config.vocab_size;
    for baseline in [
        Baseline::BitDelta,
        Baseline::Svd16 { rank: 4 },
        Baseline::Asvd { rank: 4 },
        Baseline::DeltaCoMe { rank: 4 },
    ] {
        let (params, report) = approximate(&f, baseline);
        check_report(&f, &params, &report, baseline.label());
        let model = model_from_params(&f.config, params).unwrap();
        let prompts: Vec<Vec<u32>> = (0..3).map(|s| tokens(7, vocab, s)).collect();
        let rows: Vec<&[u32]> = prompts.iter().map(Vec::as_slice).collect();
        let l = common::logits_all(&model, &rows);
        assert!(l.iter().all(|v| v.is_finite()), "{}", baseline.label());
    }
    // Truncated SVD: Δ − Δ_r = Σ_{i>r} σ_i u_i v_iᵀ with orthonormal v_i, so
    // ‖X(Δ − Δ_r)‖²_F = Σ_{i>r} σ_i²‖X u_i‖² and ‖Δ − Δ_r‖²_F = Σ_{i>r} σ_i² can only fall as r
    // grows; the fp16 factors add at most ~7e-3 relative (see the full-rank test), far below
    // the steps between ranks 1, 4 and full on these rank-4-plus-noise deltas.
    let runs: Vec<BaselineReport> = [1, 4, usize::MAX]
        .into_iter()
        .map(|rank| approximate(&f, Baseline::Svd16 { rank }).1)
        .collect();
    let sum = |r: &BaselineReport| r.layers.iter().map(|l| l.rel_output_error).sum::<f64>();
    for pair in runs.windows(2) {
        assert!(
            sum(&pair[0]) > sum(&pair[1]),
            "{} ≤ {}",
            sum(&pair[0]),
            sum(&pair[1])
        );
        assert!(pair[0].linear_bytes < pair[1].linear_bytes);
        for (lo, hi) in pair[0].layers.iter().zip(&pair[1].layers) {
            assert!(
                lo.rel_weight_error >= hi.rel_weight_error - 1e-2,
                "{}: {} < {}",
                lo.module,
                lo.rel_weight_error,
                hi.rel_weight_error
            );
        }
    }
    // Ranks are clamped to 1..=min(C_i, C_o): 0 is rank 1.
    let zero = approximate(&f, Baseline::Svd16 { rank: 0 }).1;
    assert_eq!(zero, runs[0]);
}

#[test]
fn a_linear_with_a_zero_delta_keeps_the_base_weight_and_costs_nothing() {
    let f = fixture(1, false);
    // Only layer 0's down_proj changes.
    let changed = "model.layers.0.mlp.down_proj.weight";
    let mut values: Values = f.base_values.clone();
    values.get_mut(changed).unwrap().1 = f.tuned_values[0][changed].1.clone();
    let tuned = save_values(&f.out("one-layer"), &f.config, &values);
    for baseline in [
        Baseline::BitDelta,
        Baseline::Svd16 { rank: 3 },
        Baseline::Asvd { rank: 3 },
        Baseline::DeltaCoMe { rank: 3 },
    ] {
        let (params, report) =
            approximate_skill(&f.base, &tuned, &f.cals[0], baseline, &mut |_, _| {}).unwrap();
        let label = baseline.label();
        assert_eq!(report.dense_bytes, 0, "{label}");
        for rec in &report.layers {
            let name = weight_name(&rec.module);
            if name == changed {
                assert!(rec.bytes > 0, "{label}");
                assert_eq!(report.linear_bytes, rec.bytes as u64, "{label}");
                assert!(rec.rel_weight_error > 0.0, "{label}");
            } else {
                assert_eq!(
                    (rec.bytes, rec.rel_output_error),
                    (0, 0.0),
                    "{label} {name}"
                );
                assert_eq!(rec.rel_weight_error, 0.0, "{label} {name}");
            }
        }
        for (name, v) in &params {
            if name != changed {
                common::assert_bits(v, &f.base_values[name].1, name);
            }
        }
    }
}

#[test]
fn bad_calibration_and_another_architecture_are_typed_errors() {
    let f = fixture(1, false);
    let all = [
        Baseline::BitDelta,
        Baseline::Svd16 { rank: 2 },
        Baseline::Asvd { rank: 2 },
        Baseline::DeltaCoMe { rank: 2 },
    ];
    let skill = f.names[0].as_str();
    // Calibration of a model with a wider MLP: layer 0's down_proj reads 64 channels, not 48.
    let other_config = LlamaConfig {
        intermediate_size: 64,
        ..f.config.clone()
    };
    let other_model = Llama::random(other_config.clone(), 5, 1.0).unwrap();
    let other: Checkpoint = save_values(
        &f.out("other-model"),
        &other_config,
        &param_values(&other_model),
    );
    let prompts: Vec<Vec<u32>> = (0..3).map(|i| tokens(6, f.config.vocab_size, i)).collect();
    let opts = CalibrationOptions {
        calibration_rows: 8,
        selection_rows: 4,
        heldout_rows: 4,
        seed: 0,
    };
    let wide = calibrate(&other, skill, &prompts, opts, &mut |_, _| {}).unwrap();
    // A calibration without layer 1's held-out MLP rows, and one without its calibration rows.
    let mut no_heldout = f.cals[0].clone();
    assert!(
        no_heldout
            .sites
            .remove(&(1, InputSite::MlpMid, Split::HeldOut))
            .is_some()
    );
    let mut no_calib = f.cals[0].clone();
    assert!(
        no_calib
            .sites
            .remove(&(1, InputSite::MlpIn, Split::Calibration))
            .is_some()
    );
    let mut empty = f.cals[0].clone();
    let s = empty
        .sites
        .get_mut(&(0, InputSite::AttnOut, Split::Calibration))
        .unwrap();
    s.rows = Mat::zeros(0, s.rows.ncols());
    let cases = [
        (&wide, "model.layers.0.mlp.down_proj"),
        (&no_heldout, "model.layers.1.mlp.down_proj"),
        (&no_calib, "model.layers.1.mlp.gate_proj"),
        (&empty, "model.layers.0.self_attn.o_proj"),
    ];
    for baseline in all {
        for (cal, module) in cases {
            let r = approximate_skill(&f.base, &f.tuned[0], cal, baseline, &mut |_, _| {});
            match r {
                Err(Error::InvalidInput(msg)) => assert!(
                    msg.contains(skill) && msg.contains(module),
                    "{}: {msg}",
                    baseline.label()
                ),
                other => panic!("{} {module}: {:?}", baseline.label(), other.map(|r| r.1)),
            }
        }
        // A fine-tune of another architecture, in either role.
        for (base, tuned) in [(&f.base, &other), (&other, &f.base)] {
            match approximate_skill(base, tuned, &f.cals[0], baseline, &mut |_, _| {}) {
                Err(Error::ArchitectureMismatch { what }) => {
                    assert!(what.contains("intermediate_size"), "{what}")
                }
                other => panic!("{}: {:?}", baseline.label(), other.map(|r| r.1)),
            }
        }
    }
}

#[test]
fn labels_round_trip_and_unknown_names_are_rejected() {
    for (i, b) in [
        Baseline::BitDelta,
        Baseline::Svd16 { rank: 7 },
        Baseline::Asvd { rank: 7 },
        Baseline::DeltaCoMe { rank: 7 },
    ]
    .into_iter()
    .enumerate()
    {
        assert_eq!(b.label(), Baseline::LABELS[i]);
        assert_eq!(Baseline::from_label(b.label(), 7), Some(b));
        assert_eq!(
            Baseline::from_label(&b.label().to_ascii_uppercase(), 7),
            Some(b)
        );
    }
    assert_eq!(
        Baseline::from_label("BitDelta", 3),
        Some(Baseline::BitDelta)
    );
    assert_eq!(
        Baseline::from_label("DeltaCoMe", 3),
        Some(Baseline::DeltaCoMe { rank: 3 })
    );
    for bad in ["", "svd", "svd8", "skillzip", " asvd", "bit-delta"] {
        assert_eq!(Baseline::from_label(bad, 3), None, "{bad:?}");
    }
}
