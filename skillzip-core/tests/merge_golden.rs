//! Golden vectors for `skillzip_core::merge`, computed by hand from mergekit 0.1.5 semantics
//! (`mergekit/sparsify.py`, `mergekit/merge_methods/generalized_task_arithmetic.py`,
//! `mergekit/merge_methods/registry.py`), with injected masks for the random methods.
//!
//! Every golden value is a dyadic rational (or a stated fraction), so the expected vectors are
//! exact; the arithmetic is written out next to each case.

use proptest::prelude::*;
use skillzip_core::Error;
use skillzip_core::merge::{
    Consensus, Keep, MaskSource, MergeConfig, MergeMethod, ModelParams, RescaleMode,
    Sparsification, della_keep_probabilities, extract_shared, merge, sparsify,
};

// Three task vectors of six elements; the magnitudes inside each are distinct.
//            i0     i1    i2     i3     i4     i5
const D1: [f32; 6] = [4.0, -2.0, 1.0, -3.0, 0.5, 1.5];
const D2: [f32; 6] = [1.5, 2.0, -1.0, -4.0, 0.5, -6.0];
const D3: [f32; 6] = [-2.0, 1.0, 0.25, 5.0, -0.75, 3.0];

fn deltas() -> Vec<Vec<f32>> {
    vec![D1.to_vec(), D2.to_vec(), D3.to_vec()]
}

/// Weights 1, 1, 0.5 with one density for all.
fn models(density: f64) -> Vec<ModelParams> {
    [1.0, 1.0, 0.5]
        .iter()
        .map(|&w| ModelParams::new(w).with_density(density))
        .collect()
}

/// The injected keep-masks of the random methods (1 = kept).
fn dare_masks() -> MaskSource {
    let m = |bits: [u8; 6]| bits.iter().map(|&b| b == 1).collect::<Vec<bool>>();
    MaskSource::Given(vec![
        m([1, 0, 1, 1, 0, 0]),
        m([0, 0, 0, 1, 0, 1]),
        m([1, 0, 1, 1, 1, 0]),
    ])
}

fn run(config: &MergeConfig, masks: &MaskSource) -> Vec<f32> {
    merge(&deltas(), config, masks).expect("valid merge")
}

fn assert_close(got: &[f32], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len());
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!(
            (f64::from(g) - w).abs() <= tol * w.abs().max(1.0),
            "element {i}: got {g}, want {w} (all: {got:?})"
        );
    }
}

const NO_MASKS: MaskSource = MaskSource::Seeded(0);

// ---------------------------------------------------------------------------------------------
// Method table (registry.py)

#[test]
fn method_defaults_follow_mergekit_registry() {
    use MergeMethod::*;
    let table = [
        // (method, name, sparsification, consensus, normalize, rescale)
        (TaskArithmetic, "task_arithmetic", None, None, false, false),
        (
            Ties,
            "ties",
            Some(Sparsification::Magnitude),
            Some(Consensus::Sum),
            true,
            false,
        ),
        (
            DareTies,
            "dare_ties",
            Some(Sparsification::Random),
            Some(Consensus::Sum),
            false,
            true,
        ),
        (
            DareLinear,
            "dare_linear",
            Some(Sparsification::Random),
            None,
            false,
            true,
        ),
        (
            Breadcrumbs,
            "breadcrumbs",
            Some(Sparsification::MagnitudeOutliers),
            None,
            false,
            false,
        ),
        (
            BreadcrumbsTies,
            "breadcrumbs_ties",
            Some(Sparsification::MagnitudeOutliers),
            Some(Consensus::Sum),
            false,
            false,
        ),
        (
            Della,
            "della",
            Some(Sparsification::DellaMagprune),
            Some(Consensus::Sum),
            true,
            true,
        ),
        (
            DellaLinear,
            "della_linear",
            Some(Sparsification::DellaMagprune),
            None,
            false,
            true,
        ),
    ];
    for (method, name, sparsification, consensus, normalize, rescale) in table {
        assert_eq!(method.name(), name);
        assert_eq!(name.parse::<MergeMethod>().unwrap(), method);
        assert_eq!(method.sparsification(), sparsification, "{name}");
        assert_eq!(method.consensus(), consensus, "{name}");
        let config = MergeConfig::new(method, vec![ModelParams::new(1.0)]);
        assert_eq!(config.normalize, normalize, "{name}");
        assert_eq!(config.rescale, rescale, "{name}");
        assert_eq!(config.rescale_mode, RescaleMode::L1, "{name}");
        assert_eq!(config.lambda, 1.0);
    }
    assert!(matches!(
        "slerp".parse::<MergeMethod>(),
        Err(Error::InvalidConfig(_))
    ));
    let p = ModelParams::new(0.7);
    assert_eq!((p.density, p.gamma, p.epsilon), (1.0, 0.01, 0.15));
}

// ---------------------------------------------------------------------------------------------
// task_arithmetic

#[test]
fn task_arithmetic_golden() {
    let models: Vec<ModelParams> = [1.0, 0.5, 0.5].map(ModelParams::new).to_vec();
    // Σ w·Δ with w = (1, 0.5, 0.5):
    // i0:  4    + 0.75  − 1     =  3.75
    // i1: −2    + 1     + 0.5   = −0.5
    // i2:  1    − 0.5   + 0.125 =  0.625
    // i3: −3    − 2     + 2.5   = −2.5
    // i4:  0.5  + 0.25  − 0.375 =  0.375
    // i5:  1.5  − 3     + 1.5   =  0
    let plain = [3.75, -0.5, 0.625, -2.5, 0.375, 0.0];
    let config = MergeConfig::new(MergeMethod::TaskArithmetic, models.clone());
    assert!(!config.normalize);
    assert_close(&run(&config, &NO_MASKS), &plain, 0.0);

    // normalize: ÷ Σw = 2.
    let normalized = plain.map(|v| v / 2.0);
    let config = config.with_normalize(true);
    assert_close(&run(&config, &NO_MASKS), &normalized, 0.0);

    // normalize and lambda 0.5: ÷ 2 × 0.5.
    let config = config.with_lambda(0.5);
    assert_close(&run(&config, &NO_MASKS), &plain.map(|v| v / 4.0), 0.0);

    // lambda 2 without normalize: [7.5, −1, 1.25, −5, 0.75, 0].
    let config = MergeConfig::new(MergeMethod::TaskArithmetic, models).with_lambda(2.0);
    assert_close(
        &run(&config, &NO_MASKS),
        &[7.5, -1.0, 1.25, -5.0, 0.75, 0.0],
        0.0,
    );
}

#[test]
fn task_arithmetic_zero_weight_sum_divides_by_one() {
    // w = (1, −1, 0): Σw = 0 < 1e-8, so normalize divides by 1: Δ1 − Δ2.
    let models = [1.0, -1.0, 0.0].map(ModelParams::new).to_vec();
    let config = MergeConfig::new(MergeMethod::TaskArithmetic, models).with_normalize(true);
    assert_close(
        &run(&config, &NO_MASKS),
        &[2.5, -4.0, 2.0, 1.0, 0.0, 7.5],
        0.0,
    );
}

// ---------------------------------------------------------------------------------------------
// ties (magnitude top-k + sum consensus)

// density 0.5, n = 6 → k = int(3.0) = 3 largest |Δ| kept:
//   Δ1 |4 2 1 3 .5 1.5| → i0, i3, i1 → [ 4, −2, 0, −3, 0,  0]
//   Δ2 |1.5 2 1 4 .5 6| → i5, i3, i1 → [ 0,  2, 0, −4, 0, −6]
//   Δ3 |2 1 .25 5 .75 3| → i3, i5, i0 → [−2,  0, 0,  5, 0,  3]
// weighted (w = 1, 1, 0.5):
//   δ1 = [ 4, −2, 0, −3, 0,  0]
//   δ2 = [ 0,  2, 0, −4, 0, −6]
//   δ3 = [−1,  0, 0, 2.5, 0, 1.5]
// Σδ: i0 3 (+), i1 0 (tie → +), i2 0 (+, nothing nonzero), i3 −4.5 (−), i4 0, i5 −4.5 (−)
// kept (sign(δ) == elected; a zero δ never):
//   i0: δ1 = 4            → mixed 4,  divisor 1
//   i1: δ2 = 2 (δ1 = −2 out) → mixed 2,  divisor 1
//   i2: none              → mixed 0,  divisor 0 → 1
//   i3: δ1, δ2            → mixed −7, divisor 2
//   i4: none              → 0
//   i5: δ2 = −6 (δ3 out)  → mixed −6, divisor 1
const TIES_NORMALIZED: [f64; 6] = [4.0, 2.0, 0.0, -3.5, 0.0, -6.0];
const TIES_RAW: [f64; 6] = [4.0, 2.0, 0.0, -7.0, 0.0, -6.0];

#[test]
fn ties_golden_with_zero_sum_tie_electing_plus() {
    let config = MergeConfig::new(MergeMethod::Ties, models(0.5));
    assert!(config.normalize);
    assert_close(&run(&config, &NO_MASKS), &TIES_NORMALIZED, 0.0);

    let config = config.with_normalize(false);
    assert_close(&run(&config, &NO_MASKS), &TIES_RAW, 0.0);

    // lambda 0.5 on the normalized merge.
    let config = MergeConfig::new(MergeMethod::Ties, models(0.5)).with_lambda(0.5);
    assert_close(
        &run(&config, &NO_MASKS),
        &[2.0, 1.0, 0.0, -1.75, 0.0, -3.0],
        0.0,
    );
}

#[test]
fn ties_count_consensus_golden() {
    // Count: sign votes. i0: +,0,− → 0 → +; i1: −,+,0 → 0 → +; i3: −,−,+ → −;
    // i5: 0,−,+ → 0 → + → only δ3 = 1.5 kept, divisor 0.5 → 3.
    let config =
        MergeConfig::new(MergeMethod::Ties, models(0.5)).with_consensus(Some(Consensus::Count));
    assert_close(
        &run(&config, &NO_MASKS),
        &[4.0, 2.0, 0.0, -3.5, 0.0, 3.0],
        0.0,
    );
}

#[test]
fn ties_negative_weight_flips_the_vote() {
    // One model, weight −1, density 1: δ = −Δ1; every nonzero δ agrees with its own sign,
    // divisor −1, so normalize gives back Δ1 and no normalize gives −Δ1.
    let config = MergeConfig::new(MergeMethod::Ties, vec![ModelParams::new(-1.0)]);
    let got = merge(&[D1], &config, &NO_MASKS).unwrap();
    assert_eq!(got, D1.to_vec());
    let got = merge(&[D1], &config.with_normalize(false), &NO_MASKS).unwrap();
    assert_eq!(got, D1.map(|v| -v).to_vec());
}

#[test]
fn magnitude_sparsify_rounding_and_l1_rescale() {
    let keep = || Keep::Given(&[]); // ignored by deterministic sparsifiers
    // density 0.1: k = max(1, int(0.6)) = 1 → only |4| survives.
    let p = ModelParams::new(1.0).with_density(0.1);
    let got = sparsify(&D1, Sparsification::Magnitude, &p, None, None, keep()).unwrap();
    assert_eq!(got, vec![4.0, 0.0, 0.0, 0.0, 0.0, 0.0]);
    // density 0.5 with L1 rescale: kept 4, 2, 3 → ‖·‖₁ 9 of 12 → × 4/3.
    let p = ModelParams::new(1.0).with_density(0.5);
    let got = sparsify(
        &D1,
        Sparsification::Magnitude,
        &p,
        Some(RescaleMode::L1),
        None,
        keep(),
    )
    .unwrap();
    let r = 4.0 / 3.0;
    assert_close(&got, &[4.0 * r, -2.0 * r, 0.0, -3.0 * r, 0.0, 0.0], 1e-7);
    // density 0 → zeros; density 1 → unchanged (no rescale either).
    let p0 = ModelParams::new(1.0).with_density(0.0);
    let got = sparsify(&D1, Sparsification::Magnitude, &p0, None, None, keep()).unwrap();
    assert_eq!(got, vec![0.0; 6]);
    let p1 = ModelParams::new(1.0);
    let got = sparsify(
        &D1,
        Sparsification::Magnitude,
        &p1,
        Some(RescaleMode::InverseDensity),
        None,
        keep(),
    )
    .unwrap();
    assert_eq!(got, D1.to_vec());
    // Exact magnitude ties: the lower index wins (stable descending sort).
    let tied = [1.0, -3.0, 3.0, 2.0];
    let p = ModelParams::new(1.0).with_density(0.25);
    let got = sparsify(&tied, Sparsification::Magnitude, &p, None, None, keep()).unwrap();
    assert_eq!(got, vec![0.0, -3.0, 0.0, 0.0]);
}

// ---------------------------------------------------------------------------------------------
// DARE (Bernoulli keep, injected masks)

// masks: M1 = 101100, M2 = 000101, M3 = 101110, density 0.5.
// L1 rescale (mergekit 0.1.5, default):
//   Δ1 ⊙ M1 = [4, 0, 1, −3, 0, 0]: ‖Δ1‖₁ = 12, kept 8 → ×1.5 → r1 = [6, 0, 1.5, −4.5, 0, 0]
//   Δ2 ⊙ M2 = [0, 0, 0, −4, 0, −6]: ‖Δ2‖₁ = 15, kept 10 → ×1.5 → r2 = [0, 0, 0, −6, 0, −9]
//   Δ3 ⊙ M3 = [−2, 0, .25, 5, −.75, 0]: ‖Δ3‖₁ = 12, kept 8 → ×1.5
//                                        → r3 = [−3, 0, .375, 7.5, −1.125, 0]
// 1/density rescale (×2):
//   q1 = [8, 0, 2, −6, 0, 0], q2 = [0, 0, 0, −8, 0, −12], q3 = [−4, 0, .5, 10, −1.5, 0]

#[test]
fn dare_linear_golden_both_rescale_modes() {
    // L1, w = (1, 1, .5), no normalize:
    // i0: 6 − 1.5 = 4.5; i1: 0; i2: 1.5 + .1875 = 1.6875; i3: −4.5 − 6 + 3.75 = −6.75;
    // i4: −.5625; i5: −9
    let config = MergeConfig::new(MergeMethod::DareLinear, models(0.5));
    assert!(config.rescale && !config.normalize);
    let l1 = [4.5, 0.0, 1.6875, -6.75, -0.5625, -9.0];
    assert_close(&run(&config, &dare_masks()), &l1, 0.0);

    // 1/density: i0: 8 − 2 = 6; i2: 2 + .25 = 2.25; i3: −6 − 8 + 5 = −9; i4: −.75; i5: −12
    let config = config.with_rescale_mode(RescaleMode::InverseDensity);
    assert_close(
        &run(&config, &dare_masks()),
        &[6.0, 0.0, 2.25, -9.0, -0.75, -12.0],
        0.0,
    );

    // rescale off: i0: 4 − 1 = 3; i2: 1 + .125; i3: −3 − 4 + 2.5; i4: −.375; i5: −6
    let config = MergeConfig::new(MergeMethod::DareLinear, models(0.5)).with_rescale(false);
    assert_close(
        &run(&config, &dare_masks()),
        &[3.0, 0.0, 1.125, -4.5, -0.375, -6.0],
        0.0,
    );

    // lambda 2 on the L1 result.
    let config = MergeConfig::new(MergeMethod::DareLinear, models(0.5)).with_lambda(2.0);
    assert_close(&run(&config, &dare_masks()), &l1.map(|v| 2.0 * v), 0.0);
}

#[test]
fn dare_ties_golden() {
    // L1: δ1 = [6, 0, 1.5, −4.5, 0, 0], δ2 = [0, 0, 0, −6, 0, −9],
    //     δ3 = 0.5·r3 = [−1.5, 0, .1875, 3.75, −.5625, 0]
    // Σδ: i0 4.5 (+): δ1 → 6 / 1
    //     i1 0: nothing → 0
    //     i2 1.6875 (+): δ1 + δ3 = 1.6875 / 1.5 = 1.125
    //     i3 −6.75 (−): δ1 + δ2 = −10.5 / 2 = −5.25
    //     i4 −.5625 (−): δ3 → −.5625 / .5 = −1.125
    //     i5 −9 (−): δ2 → −9 / 1
    let config = MergeConfig::new(MergeMethod::DareTies, models(0.5));
    assert!(!config.normalize);
    assert_close(
        &run(&config, &dare_masks()),
        &[6.0, 0.0, 1.6875, -10.5, -0.5625, -9.0],
        0.0,
    );
    let config = config.with_normalize(true);
    assert_close(
        &run(&config, &dare_masks()),
        &[6.0, 0.0, 1.125, -5.25, -1.125, -9.0],
        0.0,
    );
    // 1/density, no normalize: δ1 = [8, 0, 2, −6, 0, 0], δ2 = [0, 0, 0, −8, 0, −12],
    // δ3 = [−2, 0, .25, 5, −.75, 0]; i0 8; i2 2.25; i3 −14; i4 −.75; i5 −12.
    let config = MergeConfig::new(MergeMethod::DareTies, models(0.5))
        .with_rescale_mode(RescaleMode::InverseDensity);
    assert_close(
        &run(&config, &dare_masks()),
        &[8.0, 0.0, 2.25, -14.0, -0.75, -12.0],
        0.0,
    );
}

#[test]
fn l1_rescale_skips_vanishing_norms() {
    // A mask that keeps nothing: ‖kept‖₁ = 0 < 1e-7 → the zeros come back, no NaN.
    let p = ModelParams::new(1.0).with_density(0.5);
    let none = [false; 6];
    let got = sparsify(
        &D1,
        Sparsification::Random,
        &p,
        Some(RescaleMode::L1),
        None,
        Keep::Given(&none),
    )
    .unwrap();
    assert_eq!(got, vec![0.0; 6]);
}

// ---------------------------------------------------------------------------------------------
// breadcrumbs (magnitude outliers)

// density 0.5, gamma 0.2, n = 6: target = int(3.0) = 3, top = int(1.2) = 1,
// bottom = 6 − 3 − 1 = 2 → keep ascending-sorted positions 2, 3, 4:
//   Δ1 (ascending |.|): i4 .5, i2 1, i5 1.5, i1 2, i3 3, i0 4 → i5, i1, i3
//                                             → b1 = [0, −2, 0, −3, 0, 1.5]
//   Δ2: i4 .5, i2 1, i0 1.5, i1 2, i3 4, i5 6 → i0, i1, i3 → b2 = [1.5, 2, 0, −4, 0, 0]
//   Δ3: i2 .25, i4 .75, i1 1, i0 2, i5 3, i3 5 → i1, i0, i5 → b3 = [−2, 1, 0, 0, 0, 3]
fn breadcrumb_models() -> Vec<ModelParams> {
    models(0.5).into_iter().map(|m| m.with_gamma(0.2)).collect()
}

#[test]
fn breadcrumbs_golden() {
    // Σ w·b: i0: 1.5 − 1 = .5; i1: −2 + 2 + .5 = .5; i3: −3 − 4 = −7; i5: 1.5 + 1.5 = 3
    let config = MergeConfig::new(MergeMethod::Breadcrumbs, breadcrumb_models());
    assert!(!config.normalize && !config.rescale);
    assert_close(
        &run(&config, &NO_MASKS),
        &[0.5, 0.5, 0.0, -7.0, 0.0, 3.0],
        0.0,
    );
}

#[test]
fn breadcrumbs_ties_golden() {
    // δ1 = [0, −2, 0, −3, 0, 1.5], δ2 = [1.5, 2, 0, −4, 0, 0], δ3 = [−1, .5, 0, 0, 0, 1.5]
    // i0 Σ .5 (+): δ2 → 1.5 / 1;   i1 Σ .5 (+): δ2 + δ3 = 2.5 / 1.5;
    // i3 Σ −7 (−): −7 / 2;          i5 Σ 3 (+): δ1 + δ3 = 3 / 1.5
    let config = MergeConfig::new(MergeMethod::BreadcrumbsTies, breadcrumb_models());
    assert_close(
        &run(&config, &NO_MASKS),
        &[1.5, 2.5, 0.0, -7.0, 0.0, 3.0],
        0.0,
    );
    let config = config.with_normalize(true);
    assert_close(
        &run(&config, &NO_MASKS),
        &[1.5, 2.5 / 1.5, 0.0, -3.5, 0.0, 2.0],
        1e-7,
    );
}

#[test]
fn breadcrumbs_clamps_outlier_removal_and_density_one_keeps_all() {
    // density .75, gamma .5: target = int(4.5) = 4, top = 3, bottom = max(0, 6 − 7) = 0
    // → the 4 smallest: i4, i2, i5, i1.
    let p = ModelParams::new(1.0).with_density(0.75).with_gamma(0.5);
    let got = sparsify(
        &D1,
        Sparsification::MagnitudeOutliers,
        &p,
        None,
        None,
        Keep::Given(&[]),
    )
    .unwrap();
    assert_eq!(got, vec![0.0, -2.0, 1.0, 0.0, 0.5, 1.5]);

    // mergekit returns the tensor untouched at density ≥ 1, whatever gamma is.
    let models: Vec<ModelParams> = [1.0, 0.5, 0.5]
        .map(|w| ModelParams::new(w).with_gamma(0.5))
        .to_vec();
    let crumbs = run(
        &MergeConfig::new(MergeMethod::Breadcrumbs, models),
        &NO_MASKS,
    );
    let plain_models = [1.0, 0.5, 0.5].map(ModelParams::new).to_vec();
    let plain = run(
        &MergeConfig::new(MergeMethod::TaskArithmetic, plain_models),
        &NO_MASKS,
    );
    assert_eq!(crumbs, plain);
}

// ---------------------------------------------------------------------------------------------
// DELLA (magnitude-ranked keep probabilities)

// density .5, epsilon .25: p = .25 + .5·(r − 1)/(m − 1).
// Rows of 3 (row_len = 3): ranks 1, 2, 3 → p = .25, .5, .75.
//   Δ1 rows [4, −2, 1] [−3, .5, 1.5]   → ranks [3, 2, 1] [3, 1, 2] → P1 = [.75 .5 .25 .75 .25 .5]
//   Δ2 rows [1.5, 2, −1] [−4, .5, −6]  → ranks [2, 3, 1] [2, 1, 3] → P2 = [.5 .75 .25 .5 .25 .75]
//   Δ3 rows [−2, 1, .25] [5, −.75, 3]  → ranks [3, 2, 1] [3, 1, 2] → P3 = [.75 .5 .25 .75 .25 .5]
fn della_models() -> Vec<ModelParams> {
    models(0.5)
        .into_iter()
        .map(|m| m.with_epsilon(0.25))
        .collect()
}

#[test]
fn della_keep_probabilities_golden() {
    let p = |d: &[f32]| della_keep_probabilities(d, 0.5, 0.25, Some(3)).unwrap();
    assert_eq!(p(&D1), vec![0.75, 0.5, 0.25, 0.75, 0.25, 0.5]);
    assert_eq!(p(&D2), vec![0.5, 0.75, 0.25, 0.5, 0.25, 0.75]);
    assert_eq!(p(&D3), vec![0.75, 0.5, 0.25, 0.75, 0.25, 0.5]);
    // One row of 6 (mergekit's 1-D case): Δ1 ranks i4 1, i2 2, i5 3, i1 4, i3 5, i0 6,
    // p = .25 + .1·(r − 1).
    let whole = della_keep_probabilities(&D1, 0.5, 0.25, None).unwrap();
    assert_close(&whole, &[0.75, 0.55, 0.35, 0.65, 0.25, 0.45], 1e-7);
    // density 1 / 0: everything / nothing kept; a one-element row gets p = density.
    assert_eq!(
        della_keep_probabilities(&D1, 1.0, 0.5, None).unwrap(),
        vec![1.0; 6]
    );
    assert_eq!(
        della_keep_probabilities(&D1, 0.0, 0.5, None).unwrap(),
        vec![0.0; 6]
    );
    assert_eq!(
        della_keep_probabilities(&[3.0], 0.4, 0.1, None).unwrap(),
        vec![0.4]
    );
}

#[test]
fn della_golden_l1() {
    // L1 rescale does not depend on p: with the DARE masks the sparsified vectors are r1, r2,
    // r3 above, and della (sum consensus, normalize) equals dare_ties normalized:
    // [6, 0, 1.125, −5.25, −1.125, −9].
    let config = MergeConfig::new(MergeMethod::Della, della_models()).with_row_len(Some(3));
    assert!(config.normalize && config.rescale);
    assert_close(
        &run(&config, &dare_masks()),
        &[6.0, 0.0, 1.125, -5.25, -1.125, -9.0],
        0.0,
    );
}

#[test]
fn della_golden_inverse_probability() {
    // Kept values divided by their own p:
    //   q1 = M1: [4/.75, 0, 1/.25, −3/.75, 0, 0]      = [16/3, 0, 4, −4, 0, 0]
    //   q2 = M2: [0, 0, 0, −4/.5, 0, −6/.75]          = [0, 0, 0, −8, 0, −8]
    //   q3 = M3: [−2/.75, 0, .25/.25, 5/.75, −.75/.25, 0] = [−8/3, 0, 1, 20/3, −3, 0]
    // della_linear (no consensus, no normalize), w = (1, 1, .5):
    //   i0: 16/3 − 4/3 = 4; i2: 4 + .5 = 4.5; i3: −4 − 8 + 10/3 = −26/3; i4: −1.5; i5: −8
    let config = MergeConfig::new(MergeMethod::DellaLinear, della_models())
        .with_row_len(Some(3))
        .with_rescale_mode(RescaleMode::InverseDensity);
    assert!(!config.normalize);
    assert_close(
        &run(&config, &dare_masks()),
        &[4.0, 0.0, 4.5, -26.0 / 3.0, -1.5, -8.0],
        1e-6,
    );
    // della (sum consensus, normalize): δ3 = [−4/3, 0, .5, 10/3, −1.5, 0]
    //   i0 Σ 4 (+): δ1 → 16/3;  i2 Σ 4.5 (+): (4 + .5) / 1.5 = 3;
    //   i3 Σ −26/3 (−): (−4 − 8) / 2 = −6;  i4 (−): −1.5 / .5 = −3;  i5 (−): −8 / 1
    let config = MergeConfig::new(MergeMethod::Della, della_models())
        .with_row_len(Some(3))
        .with_rescale_mode(RescaleMode::InverseDensity);
    assert_close(
        &run(&config, &dare_masks()),
        &[16.0 / 3.0, 0.0, 3.0, -6.0, -3.0, -8.0],
        1e-6,
    );
}

#[test]
fn della_seeded_keep_frequencies_follow_rank_probabilities() {
    // 10 000 rows of [1, −3, 2]: ranks 1, 3, 2 → p = .25, .75, .5 (density .5, epsilon .25).
    let delta: Vec<f32> = [1.0f32, -3.0, 2.0].repeat(10_000);
    let p = ModelParams::new(1.0).with_density(0.5).with_epsilon(0.25);
    let mut rng = skillzip_core::seeded_rng(11);
    let got = sparsify(
        &delta,
        Sparsification::DellaMagprune,
        &p,
        None,
        Some(3),
        Keep::Draw(&mut rng),
    )
    .unwrap();
    for (col, want) in [(0, 0.25), (1, 0.75), (2, 0.5)] {
        let kept = got
            .iter()
            .skip(col)
            .step_by(3)
            .filter(|&&v| v != 0.0)
            .count();
        let freq = kept as f64 / 10_000.0;
        assert!((freq - want).abs() < 0.03, "column {col}: {freq} vs {want}");
    }
}

// ---------------------------------------------------------------------------------------------
// Seeded masks

fn long_deltas(n: usize) -> Vec<Vec<f32>> {
    (0..3)
        .map(|k| {
            (0..n)
                .map(|i| ((i * 37 + k * 11) % 17) as f32 / 4.0 - 2.0 + 0.125)
                .collect()
        })
        .collect()
}

#[test]
fn seeded_masks_are_reproducible_and_seed_dependent() {
    let deltas = long_deltas(512);
    for method in [
        MergeMethod::DareTies,
        MergeMethod::DareLinear,
        MergeMethod::Della,
    ] {
        let config = MergeConfig::new(method, models(0.4));
        let a = merge(&deltas, &config, &MaskSource::Seeded(7)).unwrap();
        let b = merge(&deltas, &config, &MaskSource::Seeded(7)).unwrap();
        let c = merge(&deltas, &config, &MaskSource::Seeded(8)).unwrap();
        assert_eq!(a, b, "{method}");
        assert_ne!(a, c, "{method}");
    }
    // Deterministic methods ignore the seed.
    let config = MergeConfig::new(MergeMethod::Ties, models(0.4));
    assert_eq!(
        merge(&deltas, &config, &MaskSource::Seeded(1)).unwrap(),
        merge(&deltas, &config, &MaskSource::Seeded(2)).unwrap()
    );
}

#[test]
fn seeded_bernoulli_keeps_about_density() {
    let delta: Vec<f32> = (0..20_000).map(|i| 1.0 + (i % 7) as f32).collect();
    let p = ModelParams::new(1.0).with_density(0.3);
    let mut rng = skillzip_core::seeded_rng(3);
    let got = sparsify(
        &delta,
        Sparsification::Random,
        &p,
        None,
        None,
        Keep::Draw(&mut rng),
    )
    .unwrap();
    let freq = got.iter().filter(|&&v| v != 0.0).count() as f64 / 20_000.0;
    assert!((freq - 0.3).abs() < 0.015, "{freq}");
    // Kept values are untouched without rescale.
    assert!(got.iter().zip(&delta).all(|(g, d)| *g == 0.0 || g == d));
}

#[test]
fn given_masks_equal_seeded_masks_they_reproduce() {
    // Draw masks by hand in MaskSource::Seeded's order and inject them: same result.
    let deltas = long_deltas(64);
    let config = MergeConfig::new(MergeMethod::DareTies, models(0.5)).with_rescale(false);
    let seeded = merge(&deltas, &config, &MaskSource::Seeded(5)).unwrap();
    let mut rng = skillzip_core::seeded_rng(5);
    let mut masks = Vec::new();
    for d in &deltas {
        let p = ModelParams::new(1.0).with_density(0.5);
        let kept = sparsify(
            d,
            Sparsification::Random,
            &p,
            None,
            None,
            Keep::Draw(&mut rng),
        );
        masks.push(kept.unwrap().iter().map(|&v| v != 0.0).collect());
    }
    let given = merge(&deltas, &config, &MaskSource::Given(masks)).unwrap();
    assert_eq!(seeded, given);
}

// ---------------------------------------------------------------------------------------------
// Shared component and residuals

#[test]
fn extract_shared_residuals_reconstruct_deltas() {
    let deltas = deltas();
    let config = MergeConfig::new(MergeMethod::Ties, models(0.5));
    let (shared, residuals) = extract_shared(&deltas, &config, &NO_MASKS).unwrap();
    assert_close(&shared, &TIES_NORMALIZED, 0.0);
    assert_eq!(residuals.len(), 3);
    // Golden: residual_1 = Δ1 − shared = [0, −4, 1, 0.5, 0.5, 7.5]
    assert_eq!(residuals[0], vec![0.0, -4.0, 1.0, 0.5, 0.5, 7.5]);
    for (r, d) in residuals.iter().zip(&deltas) {
        for ((r, s), d) in r.iter().zip(&shared).zip(d) {
            assert_eq!(r + s, *d);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Typed errors

#[test]
fn bad_input_gives_typed_errors() {
    let config = MergeConfig::new(MergeMethod::Ties, models(0.5));
    let empty: Vec<Vec<f32>> = Vec::new();
    assert_eq!(
        merge(&empty, &config, &NO_MASKS),
        Err(Error::Empty("task vectors"))
    );
    let zero_len = vec![Vec::<f32>::new(); 3];
    assert_eq!(
        merge(&zero_len, &config, &NO_MASKS),
        Err(Error::Empty("task vector"))
    );

    let mut ragged = deltas();
    ragged[2].pop();
    assert!(matches!(
        merge(&ragged, &config, &NO_MASKS),
        Err(Error::ShapeMismatch {
            what: "task vector",
            ..
        })
    ));

    let mut nan = deltas();
    nan[1][4] = f32::NAN;
    assert_eq!(
        merge(&nan, &config, &NO_MASKS),
        Err(Error::NonFinite {
            what: "task vectors",
            index: 6 + 4
        })
    );
    let mut inf = deltas();
    inf[0][0] = f32::INFINITY;
    assert!(matches!(
        extract_shared(&inf, &config, &NO_MASKS),
        Err(Error::NonFinite { index: 0, .. })
    ));

    // Finite input whose merge overflows f32.
    let huge = MergeConfig::new(
        MergeMethod::TaskArithmetic,
        vec![ModelParams::new(1e300); 3],
    );
    assert!(matches!(
        merge(&deltas(), &huge, &NO_MASKS),
        Err(Error::NonFinite {
            what: "merged task vector",
            ..
        })
    ));

    // Parameter count.
    let two = MergeConfig::new(MergeMethod::Ties, models(0.5)[..2].to_vec());
    assert!(matches!(
        merge(&deltas(), &two, &NO_MASKS),
        Err(Error::ShapeMismatch {
            what: "model parameters",
            ..
        })
    ));

    // Out-of-range parameters.
    for bad in [
        ModelParams::new(1.0).with_density(1.5),
        ModelParams::new(1.0).with_density(-0.1),
        ModelParams::new(1.0).with_density(f64::NAN),
        ModelParams::new(f64::INFINITY),
        ModelParams::new(1.0).with_gamma(2.0),
        ModelParams::new(1.0).with_epsilon(-0.5),
    ] {
        let config = MergeConfig::new(MergeMethod::Ties, vec![bad; 3]);
        assert!(
            matches!(
                merge(&deltas(), &config, &NO_MASKS),
                Err(Error::InvalidConfig(_))
            ),
            "{bad:?}"
        );
    }
    let config = MergeConfig::new(MergeMethod::Ties, models(0.5)).with_lambda(f64::NAN);
    assert!(matches!(
        merge(&deltas(), &config, &NO_MASKS),
        Err(Error::InvalidConfig(_))
    ));

    // DELLA band: density ± epsilon must lie in (0, 1) (mergekit raises ValueError).
    let band = vec![ModelParams::new(1.0).with_density(0.5).with_epsilon(0.5); 3];
    let config = MergeConfig::new(MergeMethod::Della, band.clone());
    assert!(matches!(
        merge(&deltas(), &config, &NO_MASKS),
        Err(Error::InvalidConfig(_))
    ));
    assert!(matches!(
        della_keep_probabilities(&D1, 0.5, 0.5, None),
        Err(Error::InvalidConfig(_))
    ));
    // ... but not at density 1, where mergekit returns before the check.
    let band_at_one = vec![ModelParams::new(1.0).with_epsilon(0.5); 3];
    assert!(
        merge(
            &deltas(),
            &MergeConfig::new(MergeMethod::Della, band_at_one),
            &NO_MASKS
        )
        .is_ok()
    );

    // Row length that does not divide n.
    let config = MergeConfig::new(MergeMethod::Della, della_models()).with_row_len(Some(4));
    assert!(matches!(
        merge(&deltas(), &config, &dare_masks()),
        Err(Error::InvalidConfig(_))
    ));
    let config = MergeConfig::new(MergeMethod::Della, della_models()).with_row_len(Some(0));
    assert!(matches!(
        merge(&deltas(), &config, &dare_masks()),
        Err(Error::InvalidConfig(_))
    ));

    // Given masks of the wrong shape.
    let config = MergeConfig::new(MergeMethod::DareTies, models(0.5));
    let few = MaskSource::Given(vec![vec![true; 6]; 2]);
    assert!(matches!(
        merge(&deltas(), &config, &few),
        Err(Error::ShapeMismatch {
            what: "keep masks",
            ..
        })
    ));
    let short = MaskSource::Given(vec![vec![true; 6], vec![true; 5], vec![true; 6]]);
    assert!(matches!(
        merge(&deltas(), &config, &short),
        Err(Error::ShapeMismatch {
            what: "keep masks",
            ..
        })
    ));
    let p = ModelParams::new(1.0).with_density(0.5);
    assert!(matches!(
        sparsify(
            &D1,
            Sparsification::Random,
            &p,
            None,
            None,
            Keep::Given(&[true; 5])
        ),
        Err(Error::ShapeMismatch { .. })
    ));
    assert!(matches!(
        sparsify(
            &[],
            Sparsification::Random,
            &p,
            None,
            None,
            Keep::Given(&[])
        ),
        Err(Error::Empty(_))
    ));
}

// ---------------------------------------------------------------------------------------------
// Properties

/// `K` task vectors of length `n` with weights.
fn task_vectors() -> impl Strategy<Value = (Vec<Vec<f32>>, Vec<f64>)> {
    (1usize..5, 1usize..40).prop_flat_map(|(k, n)| {
        (
            prop::collection::vec(prop::collection::vec(-100.0f32..100.0, n), k),
            prop::collection::vec(-2.0f64..2.0, k),
        )
    })
}

proptest! {
    #[test]
    fn task_arithmetic_matches_f64_reference((deltas, weights) in task_vectors()) {
        let models: Vec<ModelParams> = weights.iter().map(|&w| ModelParams::new(w)).collect();
        let config = MergeConfig::new(MergeMethod::TaskArithmetic, models);
        let got = merge(&deltas, &config, &NO_MASKS).unwrap();
        for (i, g) in got.iter().enumerate() {
            let want: f64 = deltas.iter().zip(&weights).map(|(d, w)| w * f64::from(d[i])).sum();
            let tol = f64::from(f32::EPSILON) * want.abs() + f64::from(f32::MIN_POSITIVE);
            prop_assert!((f64::from(*g) - want).abs() <= tol, "{} vs {}", g, want);
        }
    }

    #[test]
    fn ties_with_full_density_and_agreeing_signs_is_the_weighted_mean(
        (deltas, weights) in task_vectors(),
        negative in any::<bool>(),
    ) {
        // All deltas of one sign and positive weights: nothing is trimmed or outvoted.
        let s = if negative { -1.0 } else { 1.0 };
        let deltas: Vec<Vec<f32>> = deltas
            .iter()
            .map(|d| d.iter().map(|v| s * (v.abs() + 0.5)).collect())
            .collect();
        let weights: Vec<f64> = weights.iter().map(|w| w.abs() + 0.1).collect();
        let models: Vec<ModelParams> = weights.iter().map(|&w| ModelParams::new(w)).collect();
        let config = MergeConfig::new(MergeMethod::Ties, models);
        let got = merge(&deltas, &config, &NO_MASKS).unwrap();
        let wsum: f64 = weights.iter().sum();
        for (i, g) in got.iter().enumerate() {
            let want: f64 =
                deltas.iter().zip(&weights).map(|(d, w)| w * f64::from(d[i])).sum::<f64>() / wsum;
            prop_assert!((f64::from(*g) - want).abs() <= 1e-6 * want.abs(), "{} vs {}", g, want);
        }
    }

    #[test]
    fn residuals_plus_shared_give_back_the_deltas(
        (deltas, weights) in task_vectors(),
        method_index in 0usize..8,
        density in 0.05f64..1.0,
        seed in any::<u64>(),
    ) {
        let method = MergeMethod::ALL[method_index];
        let models: Vec<ModelParams> = weights
            .iter()
            .map(|&w| {
                let epsilon = density.min(1.0 - density) / 2.0;
                ModelParams::new(w).with_density(density).with_epsilon(epsilon)
            })
            .collect();
        let config = MergeConfig::new(method, models);
        let masks = MaskSource::Seeded(seed);
        let (shared, residuals) = extract_shared(&deltas, &config, &masks).unwrap();
        prop_assert!(shared.iter().all(|v| v.is_finite()));
        for (r, d) in residuals.iter().zip(&deltas) {
            for ((r, s), d) in r.iter().zip(&shared).zip(d) {
                let tol = f32::EPSILON * (d.abs() + s.abs());
                prop_assert!((r + s - d).abs() <= tol, "{} + {} vs {}", r, s, d);
            }
        }
    }

    #[test]
    fn magnitude_keeps_exactly_k_values(
        delta in prop::collection::vec(prop_oneof![-100.0f32..-0.01, 0.01f32..100.0], 1..60),
        density in 0.0f64..1.0,
    ) {
        let p = ModelParams::new(1.0).with_density(density);
        let keep = Keep::Given(&[]);
        let got = sparsify(&delta, Sparsification::Magnitude, &p, None, None, keep).unwrap();
        let n = delta.len();
        let k = if density <= 0.0 { 0 } else { ((density * n as f64) as usize).max(1) };
        prop_assert_eq!(got.iter().filter(|&&v| v != 0.0).count(), k);
        // Every kept magnitude is at least every dropped one.
        let min_kept = got
            .iter()
            .filter(|&&v| v != 0.0)
            .map(|v| v.abs())
            .fold(f32::INFINITY, f32::min);
        let max_dropped = delta
            .iter()
            .zip(&got)
            .filter(|(_, g)| **g == 0.0)
            .map(|(d, _)| d.abs())
            .fold(0.0, f32::max);
        prop_assert!(k == 0 || k == n || min_kept >= max_dropped);
    }
}
