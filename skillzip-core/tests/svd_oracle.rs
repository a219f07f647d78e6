//! `svd` against an independent oracle: nalgebra's f64 SVD.
//!
//! Test matrices carry a power-law spectrum with energy beyond the rank (DESIGN.md §4: "a
//! Gaussian matrix proves nothing about a truncated SVD"), plus ragged and degenerate shapes.

use faer::{Mat, MatRef};
use nalgebra::DMatrix;
use proptest::prelude::*;
use rand::RngExt;
use rand_distr::StandardNormal;
use skillzip_core::svd::{LowRank, SvdMethod, rank_for_energy, singular_values, truncated_svd};
use skillzip_core::{Error, seeded_rng};

// ---------------------------------------------------------------- helpers

fn gaussian_na(rows: usize, cols: usize, seed: u64) -> DMatrix<f64> {
    let mut rng = seeded_rng(seed);
    DMatrix::from_fn(rows, cols, |_, _| rng.sample::<f64, _>(StandardNormal))
}

/// `rows × k` with orthonormal columns, from nalgebra's QR (independent of faer).
fn orthonormal_na(rows: usize, k: usize, seed: u64) -> DMatrix<f64> {
    let g = gaussian_na(rows, k, seed);
    g.qr().q().columns(0, k).into_owned()
}

/// `U·diag(σ)·Vᵀ` with random orthonormal `U` (m × k), `V` (n × k), `k = σ.len()`.
fn with_spectrum(m: usize, n: usize, sigma: &[f64], seed: u64) -> DMatrix<f64> {
    let k = sigma.len();
    let u = orthonormal_na(m, k, seed);
    let v = orthonormal_na(n, k, seed.wrapping_add(0x9e37_79b9));
    let mut us = u;
    for (j, &s) in sigma.iter().enumerate() {
        us.column_mut(j).scale_mut(s);
    }
    us * v.transpose()
}

/// Power law `σ_i = (i+1)^(-exponent)` over the full rank `min(m, n)`.
fn power_law(m: usize, n: usize, exponent: f64, seed: u64) -> DMatrix<f64> {
    let k = m.min(n);
    let sigma: Vec<f64> = (0..k).map(|i| ((i + 1) as f64).powf(-exponent)).collect();
    with_spectrum(m, n, &sigma, seed)
}

fn to_faer(w: &DMatrix<f64>) -> Mat<f32> {
    Mat::from_fn(w.nrows(), w.ncols(), |i, j| w[(i, j)] as f32)
}

fn to_na(w: MatRef<'_, f32>) -> DMatrix<f64> {
    DMatrix::from_fn(w.nrows(), w.ncols(), |i, j| f64::from(w[(i, j)]))
}

/// Singular values of the f32 matrix, computed in f64 by nalgebra (nonincreasing).
fn oracle_sigma(w: MatRef<'_, f32>) -> Vec<f64> {
    let mut s: Vec<f64> = to_na(w).singular_values().iter().copied().collect();
    s.sort_by(|a, b| b.partial_cmp(a).unwrap());
    s
}

fn frob2_diff(w: MatRef<'_, f32>, p: MatRef<'_, f32>) -> f64 {
    let mut acc = 0.0f64;
    for j in 0..w.ncols() {
        for i in 0..w.nrows() {
            let d = f64::from(w[(i, j)]) - f64::from(p[(i, j)]);
            acc += d * d;
        }
    }
    acc
}

fn frob2(w: MatRef<'_, f32>) -> f64 {
    let mut acc = 0.0f64;
    for j in 0..w.ncols() {
        for i in 0..w.nrows() {
            acc += f64::from(w[(i, j)]).powi(2);
        }
    }
    acc
}

fn tail2(sigma: &[f64], r: usize) -> f64 {
    sigma[r..].iter().map(|s| s * s).sum()
}

/// Checks shapes, σ against the oracle, the Eckart–Young error, `AᵀA = Σ` and `BBᵀ = Σ`.
fn check_low_rank(w: MatRef<'_, f32>, low: &LowRank, rank: usize, oracle: &[f64]) {
    let (m, n) = w.shape();
    assert_eq!(low.rank(), rank);
    assert_eq!(low.a.shape(), (m, rank));
    assert_eq!(low.b.shape(), (rank, n));
    assert_eq!(low.sigma.len(), rank);
    let smax = oracle[0].max(1e-30);
    for (i, (&s, &o)) in low.sigma.iter().zip(oracle).enumerate() {
        assert!(
            (f64::from(s) - o).abs() <= 5e-5 * smax,
            "sigma[{i}] = {s} vs oracle {o}"
        );
    }
    for w2 in low.sigma.windows(2) {
        assert!(w2[0] >= w2[1], "sigma not nonincreasing: {:?}", low.sigma);
    }
    // Eckart–Young: ‖W − AB‖_F² = Σ_{i≥R} σ_i².
    let prod = low.product();
    let err2 = frob2_diff(w, prod.as_ref());
    let tail = tail2(oracle, rank);
    let total = frob2(w).max(1e-30);
    assert!(
        (err2 - tail).abs() <= 1e-4 * total,
        "‖W−AB‖² = {err2}, Σ tail σ² = {tail}, ‖W‖² = {total}"
    );
    // AᵀA = Σ and BBᵀ = Σ (orthogonal columns / rows carrying √σ each).
    let a = to_na(low.a.as_ref());
    let b = to_na(low.b.as_ref());
    let ata = a.transpose() * &a;
    let bbt = &b * b.transpose();
    for i in 0..rank {
        for j in 0..rank {
            let expect = if i == j { f64::from(low.sigma[i]) } else { 0.0 };
            assert!(
                (ata[(i, j)] - expect).abs() <= 5e-5 * smax,
                "AᵀA[{i},{j}] = {} vs {expect}",
                ata[(i, j)]
            );
            assert!(
                (bbt[(i, j)] - expect).abs() <= 5e-5 * smax,
                "BBᵀ[{i},{j}] = {} vs {expect}",
                bbt[(i, j)]
            );
        }
    }
}

fn bits(m: &Mat<f32>) -> Vec<u32> {
    let mut out = Vec::with_capacity(m.nrows() * m.ncols());
    for j in 0..m.ncols() {
        for i in 0..m.nrows() {
            out.push(m[(i, j)].to_bits());
        }
    }
    out
}

// ---------------------------------------------------------------- singular values

#[test]
fn singular_values_match_nalgebra_on_random_matrices() {
    for (k, &(m, n)) in [
        (1, 1),
        (1, 9),
        (9, 1),
        (7, 13),
        (13, 7),
        (33, 17),
        (64, 64),
        (150, 90),
    ]
    .iter()
    .enumerate()
    {
        let w = to_faer(&gaussian_na(m, n, 100 + k as u64));
        let s = singular_values(w.as_ref()).unwrap();
        let o = oracle_sigma(w.as_ref());
        assert_eq!(s.len(), m.min(n));
        for (a, b) in s.iter().zip(&o) {
            assert!(
                (f64::from(*a) - b).abs() <= 2e-5 * o[0],
                "{m}×{n}: {a} vs {b}"
            );
        }
    }
}

#[test]
fn singular_values_match_nalgebra_on_structured_matrices() {
    let mut cases: Vec<DMatrix<f64>> = vec![
        power_law(120, 80, 0.5, 1),
        power_law(80, 120, 1.0, 2),
        // Exactly rank 5 inside 60×40: 35 zero singular values.
        with_spectrum(60, 40, &[5.0, 4.0, 3.0, 2.0, 1.0], 3),
        // Repeated singular values.
        with_spectrum(50, 30, &[2.0, 2.0, 2.0, 1.0, 1.0], 4),
        // Diagonal with a zero and a tiny value; a zero matrix.
        DMatrix::from_fn(6, 4, |i, j| {
            if i == j {
                [3.0, 0.0, 1e-3, 7.0][j]
            } else {
                0.0
            }
        }),
        DMatrix::zeros(5, 3),
    ];
    // Wildly scaled rows.
    let mut scaled = gaussian_na(40, 25, 5);
    for i in 0..40 {
        scaled.row_mut(i).scale_mut(10f64.powi(i as i32 % 7 - 3));
    }
    cases.push(scaled);
    for (k, w) in cases.iter().enumerate() {
        let w = to_faer(w);
        let s = singular_values(w.as_ref()).unwrap();
        let o = oracle_sigma(w.as_ref());
        let tol = 2e-5 * o[0].max(1e-30);
        for (a, b) in s.iter().zip(&o) {
            assert!((f64::from(*a) - b).abs() <= tol, "case {k}: {a} vs {b}");
        }
    }
    assert!(
        singular_values(Mat::<f32>::zeros(0, 4).as_ref())
            .unwrap()
            .is_empty()
    );
}

// ---------------------------------------------------------------- exact truncated SVD

#[test]
fn exact_truncation_matches_nalgebra_rank_r_truncation() {
    for &(m, n, r) in &[(120, 80, 10), (80, 120, 10), (90, 90, 1), (70, 50, 50)] {
        let wn = power_law(m, n, 0.5, (m * n + r) as u64);
        let w = to_faer(&wn);
        let low = truncated_svd(w.as_ref(), r, SvdMethod::Exact).unwrap();
        let oracle = oracle_sigma(w.as_ref());
        check_low_rank(w.as_ref(), &low, r, &oracle);

        // nalgebra's own rank-R truncation of the same f32 matrix.
        let svd = to_na(w.as_ref()).svd(true, true);
        let mut idx: Vec<usize> = (0..svd.singular_values.len()).collect();
        idx.sort_by(|&a, &b| {
            svd.singular_values[b]
                .partial_cmp(&svd.singular_values[a])
                .unwrap()
        });
        let u = svd.u.as_ref().unwrap();
        let vt = svd.v_t.as_ref().unwrap();
        let mut trunc = DMatrix::<f64>::zeros(m, n);
        for &k in &idx[..r] {
            trunc += svd.singular_values[k] * u.column(k) * vt.row(k);
        }
        let prod = low.product();
        let diff = to_na(prod.as_ref()) - &trunc;
        let rel = diff.norm() / wn.norm();
        assert!(rel < 1e-4, "{m}×{n} R={r}: ‖AB − W_R‖/‖W‖ = {rel}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn ragged_shapes_exact_and_randomized(
        shape in prop::sample::select(vec![
            (1usize, 1usize), (1, 9), (9, 1), (1, 40), (40, 1), (7, 13), (13, 7),
            (33, 17), (17, 33), (2, 2), (5, 5),
        ]),
        rank_frac in 0.0f64..1.0,
        seed in any::<u64>(),
        exponent in prop::sample::select(vec![0.0f64, 0.5, 1.5]),
    ) {
        let (m, n) = shape;
        let short = m.min(n);
        // R ∈ 1..=min(m, n), with R = 1 and R = min(m, n) both reachable.
        let rank = 1 + ((rank_frac * short as f64) as usize).min(short - 1);
        let w = if exponent == 0.0 {
            to_faer(&gaussian_na(m, n, seed))
        } else {
            to_faer(&power_law(m, n, exponent, seed))
        };
        let oracle = oracle_sigma(w.as_ref());
        for method in [
            SvdMethod::Exact,
            SvdMethod::randomized(seed ^ 1),
            SvdMethod::Randomized { oversample: 0, power_iters: 0, seed },
            SvdMethod::Auto { seed },
        ] {
            let low = truncated_svd(w.as_ref(), rank, method).unwrap();
            if let SvdMethod::Randomized { oversample: 0, power_iters: 0, .. } = method {
                // Without oversampling the range finder is not exact unless R = min(m, n);
                // it can only be worse than Eckart–Young.
                let err2 = frob2_diff(w.as_ref(), low.product().as_ref());
                prop_assert!(err2 >= tail2(&oracle, rank) - 1e-4 * frob2(w.as_ref()));
                if rank == short {
                    check_low_rank(w.as_ref(), &low, rank, &oracle);
                }
            } else {
                check_low_rank(w.as_ref(), &low, rank, &oracle);
            }
        }
    }
}

#[test]
fn a_has_orthogonal_columns_and_b_orthogonal_rows() {
    let w = to_faer(&power_law(200, 150, 0.7, 11));
    let oracle = oracle_sigma(w.as_ref());
    for r in [1, 2, 17, 150] {
        let low = truncated_svd(w.as_ref(), r, SvdMethod::Exact).unwrap();
        check_low_rank(w.as_ref(), &low, r, &oracle);
    }
}

// ---------------------------------------------------------------- randomized SVD

#[test]
fn randomized_on_slow_power_law_is_within_one_percent_of_exact() {
    // σ_i = (i+1)^-0.5: slow decay, tiny gap at R, most energy beyond R.
    for &(m, n) in &[(600usize, 400usize), (400, 600)] {
        let w = to_faer(&power_law(m, n, 0.5, 2024));
        let r = 60;
        let norm = frob2(w.as_ref()).sqrt();
        let exact = truncated_svd(w.as_ref(), r, SvdMethod::Exact).unwrap();
        let e_exact = frob2_diff(w.as_ref(), exact.product().as_ref()).sqrt() / norm;
        let oracle = oracle_sigma(w.as_ref());
        let e_opt = tail2(&oracle, r).sqrt() / norm;
        assert!(
            (e_exact / e_opt - 1.0).abs() < 1e-4,
            "exact {e_exact} vs optimum {e_opt}"
        );
        for seed in [1u64, 2, 3] {
            let rand = truncated_svd(w.as_ref(), r, SvdMethod::randomized(seed)).unwrap();
            let e_rand = frob2_diff(w.as_ref(), rand.product().as_ref()).sqrt() / norm;
            let ratio = e_rand / e_exact;
            assert!(
                ratio <= 1.01,
                "{m}×{n} R={r} seed {seed}: randomized {e_rand} vs exact {e_exact} (ratio {ratio})"
            );
            assert!(ratio >= 1.0 - 1e-4, "randomized beat Eckart–Young: {ratio}");
            // The leading singular values are accurate too.
            for (i, (&s, &o)) in rand.sigma.iter().zip(&oracle).take(10).enumerate() {
                let rel = (f64::from(s) - o).abs() / o;
                assert!(rel < 1e-2, "sigma[{i}]: {s} vs {o}");
            }
        }
    }
}

#[test]
fn randomized_without_power_iterations_is_measurably_worse() {
    // Documents why the defaults use power iterations: q = 0 on this spectrum misses by far
    // more than 1%.
    let w = to_faer(&power_law(600, 400, 0.5, 2024));
    let norm = frob2(w.as_ref()).sqrt();
    let exact = truncated_svd(w.as_ref(), 60, SvdMethod::Exact).unwrap();
    let e_exact = frob2_diff(w.as_ref(), exact.product().as_ref()).sqrt() / norm;
    let plain = SvdMethod::Randomized {
        oversample: 16,
        power_iters: 0,
        seed: 7,
    };
    let low = truncated_svd(w.as_ref(), 60, plain).unwrap();
    let e = frob2_diff(w.as_ref(), low.product().as_ref()).sqrt() / norm;
    assert!(e / e_exact > 1.01, "q = 0 ratio {}", e / e_exact);
}

#[test]
fn randomized_and_exact_agree_on_factors_with_a_clear_spectrum() {
    // Fast decay: well-separated singular values, so the sign fix makes the factors comparable.
    let sigma: Vec<f64> = (0..300).map(|i| 0.8f64.powi(i)).collect();
    let w = to_faer(&with_spectrum(700, 300, &sigma, 5));
    let r = 12;
    let exact = truncated_svd(w.as_ref(), r, SvdMethod::Exact).unwrap();
    let rand = truncated_svd(w.as_ref(), r, SvdMethod::randomized(3)).unwrap();
    let scale = f64::from(exact.sigma[0]).sqrt();
    for j in 0..r {
        for i in 0..700 {
            let d = (f64::from(exact.a[(i, j)]) - f64::from(rand.a[(i, j)])).abs();
            assert!(
                d <= 1e-3 * scale,
                "A[{i},{j}]: {} vs {}",
                exact.a[(i, j)],
                rand.a[(i, j)]
            );
        }
        for i in 0..300 {
            let d = (f64::from(exact.b[(j, i)]) - f64::from(rand.b[(j, i)])).abs();
            assert!(d <= 1e-3 * scale, "B[{j},{i}]");
        }
    }
}

#[test]
fn sign_fix_makes_largest_entry_of_each_u_column_positive() {
    let w = to_faer(&power_law(90, 60, 0.5, 8));
    for method in [SvdMethod::Exact, SvdMethod::randomized(1)] {
        let low = truncated_svd(w.as_ref(), 20, method).unwrap();
        for j in 0..20 {
            let col: Vec<f32> = (0..90).map(|i| low.a[(i, j)]).collect();
            let (mut best, mut val) = (0.0f32, 0.0f32);
            for &x in &col {
                if x.abs() > best {
                    best = x.abs();
                    val = x;
                }
            }
            assert!(val > 0.0, "column {j} of A has a negative largest entry");
        }
    }
}

#[test]
fn same_seed_is_bit_identical_and_seeds_differ() {
    let w = to_faer(&power_law(300, 520, 0.5, 9));
    let r = 40;
    let a = truncated_svd(w.as_ref(), r, SvdMethod::randomized(42)).unwrap();
    let b = truncated_svd(w.as_ref(), r, SvdMethod::randomized(42)).unwrap();
    assert_eq!(bits(&a.a), bits(&b.a));
    assert_eq!(bits(&a.b), bits(&b.b));
    assert_eq!(
        a.sigma.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
        b.sigma.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
    );
    let c = truncated_svd(w.as_ref(), r, SvdMethod::randomized(43)).unwrap();
    assert_ne!(bits(&a.a), bits(&c.a));
    let e1 = truncated_svd(w.as_ref(), r, SvdMethod::Exact).unwrap();
    let e2 = truncated_svd(w.as_ref(), r, SvdMethod::Exact).unwrap();
    assert_eq!(bits(&e1.a), bits(&e2.a));
    assert_eq!(bits(&e1.b), bits(&e2.b));
}

#[test]
fn transpose_gives_transposed_factors() {
    let w = to_faer(&power_law(300, 200, 1.0, 12));
    let wt = w.transpose().to_owned();
    for method in [SvdMethod::Exact, SvdMethod::randomized(4)] {
        let low = truncated_svd(w.as_ref(), 15, method).unwrap();
        let lowt = truncated_svd(wt.as_ref(), 15, method).unwrap();
        for (s, t) in low.sigma.iter().zip(&lowt.sigma) {
            assert!((s - t).abs() <= 1e-4 * low.sigma[0]);
        }
        let p = low.product();
        let pt = lowt.product();
        let d = frob2_diff(p.transpose(), pt.as_ref()).sqrt() / frob2(w.as_ref()).sqrt();
        assert!(d < 1e-3, "{method:?}: {d}");
    }
}

#[test]
fn auto_resolution() {
    assert_eq!(
        SvdMethod::Auto { seed: 1 }.resolve(600, 400, 60),
        SvdMethod::Exact
    );
    assert_eq!(
        SvdMethod::Auto { seed: 1 }.resolve(14336, 4096, 600),
        SvdMethod::randomized(1)
    );
    assert_eq!(
        SvdMethod::Auto { seed: 1 }.resolve(4096, 14336, 2100),
        SvdMethod::Exact
    );
    assert_eq!(SvdMethod::Exact.resolve(14336, 4096, 600), SvdMethod::Exact);
}

// ---------------------------------------------------------------- errors

#[test]
fn invalid_inputs_give_typed_errors() {
    let w = to_faer(&gaussian_na(7, 5, 1));
    assert!(matches!(
        truncated_svd(w.as_ref(), 0, SvdMethod::Exact),
        Err(Error::InvalidConfig(_))
    ));
    for method in [
        SvdMethod::Exact,
        SvdMethod::randomized(0),
        SvdMethod::Auto { seed: 0 },
    ] {
        assert!(matches!(
            truncated_svd(w.as_ref(), 6, method),
            Err(Error::InvalidConfig(_))
        ));
        assert!(truncated_svd(w.as_ref(), 5, method).is_ok());
    }
    assert!(matches!(
        truncated_svd(Mat::<f32>::zeros(0, 3).as_ref(), 1, SvdMethod::Exact),
        Err(Error::Empty(_))
    ));
    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        let mut w2 = w.clone();
        w2[(3, 2)] = bad;
        w2[(4, 0)] = bad;
        // Row-major flat index of the first offender: 3·5 + 2 = 17.
        let expect = Error::NonFinite {
            what: "matrix for truncated_svd",
            index: 17,
        };
        assert_eq!(
            truncated_svd(w2.as_ref(), 2, SvdMethod::Exact).unwrap_err(),
            expect
        );
        assert_eq!(
            truncated_svd(w2.as_ref(), 2, SvdMethod::randomized(0)).unwrap_err(),
            expect
        );
        assert!(matches!(
            singular_values(w2.as_ref()),
            Err(Error::NonFinite { index: 17, .. })
        ));
    }
}

#[test]
fn zero_and_rank_deficient_matrices() {
    let z = Mat::<f32>::zeros(10, 6);
    for method in [SvdMethod::Exact, SvdMethod::randomized(0)] {
        let low = truncated_svd(z.as_ref(), 3, method).unwrap();
        assert!(low.sigma.iter().all(|&s| s == 0.0));
        assert!(frob2(low.product().as_ref()) == 0.0);
    }
    // Rank 3 matrix asked for rank 5: reconstruction exact, extra σ ≈ 0.
    let w = to_faer(&with_spectrum(40, 30, &[3.0, 2.0, 1.0], 6));
    for method in [SvdMethod::Exact, SvdMethod::randomized(0)] {
        let low = truncated_svd(w.as_ref(), 5, method).unwrap();
        assert!(low.sigma[3].abs() < 1e-5 && low.sigma[4].abs() < 1e-5);
        assert!(frob2_diff(w.as_ref(), low.product().as_ref()) < 1e-9);
    }
}

// ---------------------------------------------------------------- rank_for_energy

#[test]
fn rank_for_energy_boundaries() {
    let s = [3.0f32, 2.0, 1.0, 0.0];
    // Energies: 9, 4, 1 of 14.
    assert_eq!(rank_for_energy(&s, 0.0), 1);
    assert_eq!(rank_for_energy(&s, -1.0), 1);
    assert_eq!(rank_for_energy(&s, 9.0 / 14.0), 1);
    assert_eq!(rank_for_energy(&s, 9.0 / 14.0 + 1e-9), 2);
    assert_eq!(rank_for_energy(&s, 13.0 / 14.0), 2);
    assert_eq!(rank_for_energy(&s, 0.99), 3);
    assert_eq!(rank_for_energy(&s, 1.0), 3);
    assert_eq!(rank_for_energy(&s, 2.0), 3);
    assert_eq!(rank_for_energy(&[0.0, 0.0], 0.9), 1);
    assert_eq!(rank_for_energy(&[5.0], 1.0), 1);
    assert_eq!(rank_for_energy(&[], 0.5), 0);
    // On a real spectrum, the returned rank is the smallest that reaches the energy.
    let w = to_faer(&power_law(100, 80, 0.5, 3));
    let sig = singular_values(w.as_ref()).unwrap();
    let total: f64 = sig.iter().map(|&x| f64::from(x).powi(2)).sum();
    for e in [0.1, 0.5, 0.9, 0.99] {
        let r = rank_for_energy(&sig, e);
        let head: f64 = sig[..r].iter().map(|&x| f64::from(x).powi(2)).sum();
        let head_less: f64 = sig[..r - 1].iter().map(|&x| f64::from(x).powi(2)).sum();
        assert!(head >= e * total && head_less < e * total);
    }
}
