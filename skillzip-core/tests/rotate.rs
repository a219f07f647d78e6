//! Rank-wise rotations: orthogonality, the Haar construction against nalgebra's QR, Haar
//! statistics, Hadamard sizes, and `rotate` preserving the product.

use faer::{Mat, MatRef};
use nalgebra::DMatrix;
use rand::RngExt;
use rand_distr::StandardNormal;
use skillzip_core::rotate::{
    RotationKind, haar_orthogonal, randomized_hadamard, rotate, rotation, try_rotate,
};
use skillzip_core::svd::{SvdMethod, truncated_svd};
use skillzip_core::{Error, seeded_rng};

fn to_na(w: MatRef<'_, f32>) -> DMatrix<f64> {
    DMatrix::from_fn(w.nrows(), w.ncols(), |i, j| f64::from(w[(i, j)]))
}

/// max |QᵀQ − I| (f64).
fn orthogonality_defect(q: MatRef<'_, f32>) -> f64 {
    let q = to_na(q);
    let g = q.transpose() * &q;
    let n = g.nrows();
    (g - DMatrix::<f64>::identity(n, n)).abs().max()
}

/// A matrix with a power-law spectrum (σ_i = (i+1)^-0.5) built with nalgebra.
fn power_law(m: usize, n: usize, seed: u64) -> Mat<f32> {
    let mut rng = seeded_rng(seed);
    let k = m.min(n);
    let g1 = DMatrix::<f64>::from_fn(m, k, |_, _| rng.sample(StandardNormal));
    let g2 = DMatrix::<f64>::from_fn(n, k, |_, _| rng.sample(StandardNormal));
    let mut u = g1.qr().q();
    let v = g2.qr().q();
    for j in 0..k {
        u.column_mut(j).scale_mut(((j + 1) as f64).powf(-0.5));
    }
    let w = u * v.transpose();
    Mat::from_fn(m, n, |i, j| w[(i, j)] as f32)
}

#[test]
fn haar_is_orthogonal_with_unit_determinant() {
    for r in [1usize, 2, 3, 5, 16, 33, 64, 100, 257, 600] {
        for seed in [0u64, 1, 77] {
            let q = haar_orthogonal(r, seed);
            assert_eq!(q.shape(), (r, r));
            let d = orthogonality_defect(q.as_ref());
            assert!(d < 1e-5, "r={r} seed={seed}: max|QᵀQ−I| = {d}");
            if r <= 100 {
                let det = to_na(q.as_ref()).determinant();
                assert!((det.abs() - 1.0).abs() < 1e-4, "r={r}: det = {det}");
            }
        }
    }
    assert_eq!(haar_orthogonal(0, 3).shape(), (0, 0));
}

#[test]
fn haar_matches_nalgebra_qr_with_sign_fix() {
    // Replays the documented construction with an independent QR.
    for r in [1usize, 2, 7, 32, 90] {
        for seed in [5u64, 6] {
            let mut rng = seeded_rng(seed);
            // Column by column, f64 StandardNormal.
            let mut g = DMatrix::<f64>::zeros(r, r);
            for j in 0..r {
                for i in 0..r {
                    g[(i, j)] = rng.sample(StandardNormal);
                }
            }
            let qr = g.qr();
            let (mut q, rr) = (qr.q(), qr.r());
            for j in 0..r {
                if rr[(j, j)] < 0.0 {
                    q.column_mut(j).neg_mut();
                }
            }
            let ours = to_na(haar_orthogonal(r, seed).as_ref());
            let diff = (ours - q).abs().max();
            assert!(diff < 1e-5, "r={r} seed={seed}: max diff {diff}");
        }
    }
}

#[test]
fn haar_statistics() {
    // Haar: E[Q_ii] = 0 (a missing sign fix biases the diagonal), Q_00² ~ Beta(1/2, (r−1)/2)
    // with mean 1/r and variance 2(r−1)/(r²(r+2)).
    for r in [2usize, 4, 8] {
        let n = 4000;
        let mut diag_sum = 0.0f64;
        let mut sq = Vec::with_capacity(n);
        let mut det_neg = 0usize;
        for seed in 0..n as u64 {
            let q = haar_orthogonal(r, seed);
            for i in 0..r {
                diag_sum += f64::from(q[(i, i)]);
            }
            sq.push(f64::from(q[(0, 0)]).powi(2));
            if to_na(q.as_ref()).determinant() < 0.0 {
                det_neg += 1;
            }
        }
        let rf = r as f64;
        let mean_diag = diag_sum / (n as f64 * rf);
        // Var(Q_ii) = 1/r; over n·r (weakly dependent) entries. 5σ bound with slack.
        let sd = (1.0 / rf / n as f64).sqrt();
        assert!(
            mean_diag.abs() < 5.0 * sd,
            "r={r}: mean diagonal {mean_diag} (sd {sd})"
        );
        let mean_sq = sq.iter().sum::<f64>() / n as f64;
        let var = 2.0 * (rf - 1.0) / (rf * rf * (rf + 2.0));
        let sd_sq = (var / n as f64).sqrt();
        assert!(
            (mean_sq - 1.0 / rf).abs() < 5.0 * sd_sq,
            "r={r}: E[Q00²] = {mean_sq}, want {} (sd {sd_sq})",
            1.0 / rf
        );
        // Second moment matches the Beta variance within 20%.
        let emp_var = sq.iter().map(|x| (x - mean_sq).powi(2)).sum::<f64>() / (n as f64 - 1.0);
        assert!(
            (emp_var / var - 1.0).abs() < 0.2,
            "r={r}: Var(Q00²) {emp_var} vs {var}"
        );
        // Both components O(r)⁺ and O(r)⁻ are hit about equally.
        let frac = det_neg as f64 / n as f64;
        assert!((frac - 0.5).abs() < 0.05, "r={r}: fraction det=−1 {frac}");
    }
}

#[test]
fn haar_is_reproducible_and_seed_dependent() {
    let a = haar_orthogonal(50, 9);
    let b = haar_orthogonal(50, 9);
    let c = haar_orthogonal(50, 10);
    assert!((0..50).all(|j| (0..50).all(|i| a[(i, j)].to_bits() == b[(i, j)].to_bits())));
    assert!((0..50).any(|j| (0..50).any(|i| a[(i, j)] != c[(i, j)])));
}

#[test]
fn hadamard_exists_only_for_powers_of_two_and_is_orthogonal() {
    for r in 0..=300usize {
        let h = randomized_hadamard(r, 3);
        assert_eq!(h.is_some(), r.is_power_of_two(), "r={r}");
        assert_eq!(
            rotation(RotationKind::Hadamard, r, 3).is_some(),
            r.is_power_of_two()
        );
        if let Some(h) = h {
            assert_eq!(h.shape(), (r, r));
            let d = orthogonality_defect(h.as_ref());
            assert!(d < 1e-6, "r={r}: {d}");
            let mag = 1.0 / (r as f64).sqrt();
            for j in 0..r {
                for i in 0..r {
                    assert!((f64::from(h[(i, j)]).abs() - mag).abs() < 1e-7 * mag.max(1.0));
                }
            }
        }
    }
    for r in [1024usize, 2048] {
        let h = randomized_hadamard(r, 1).unwrap();
        assert!(orthogonality_defect(h.as_ref()) < 1e-5);
    }
}

#[test]
fn hadamard_is_sylvester_times_random_signs() {
    let r = 16;
    let a = randomized_hadamard(r, 4).unwrap();
    let b = randomized_hadamard(r, 4).unwrap();
    let c = randomized_hadamard(r, 5).unwrap();
    let scale = 4.0f32;
    let mut signs = Vec::new();
    for j in 0..r {
        // Column j = d_j · H[:, j] / √r with H[i][j] = (−1)^popcount(i & j), and H[0][j] = 1.
        let d = a[(0, j)] * scale;
        assert!(d == 1.0 || d == -1.0);
        signs.push(d);
        for i in 0..r {
            let h = if (i & j).count_ones() % 2 == 0 {
                1.0
            } else {
                -1.0
            };
            assert_eq!(a[(i, j)] * scale, d * h);
            assert_eq!(a[(i, j)].to_bits(), b[(i, j)].to_bits());
        }
    }
    assert!(
        signs.contains(&1.0) && signs.contains(&-1.0),
        "signs {signs:?}"
    );
    assert!((0..r).any(|j| a[(0, j)] != c[(0, j)]));
}

#[test]
fn rotation_dispatch() {
    let h = rotation(RotationKind::Haar, 7, 2).unwrap();
    let direct = haar_orthogonal(7, 2);
    assert!((0..7).all(|j| (0..7).all(|i| h[(i, j)] == direct[(i, j)])));
    assert!(rotation(RotationKind::Haar, 12, 2).is_some());
    assert!(rotation(RotationKind::Hadamard, 12, 2).is_none());
    let hd = rotation(RotationKind::Hadamard, 8, 2).unwrap();
    let direct = randomized_hadamard(8, 2).unwrap();
    assert!((0..8).all(|j| (0..8).all(|i| hd[(i, j)] == direct[(i, j)])));
}

#[test]
fn rotate_preserves_the_product() {
    let w = power_law(96, 80, 21);
    for r in 1..=64usize {
        let low = truncated_svd(w.as_ref(), r, SvdMethod::Exact).unwrap();
        let before = to_na(low.product().as_ref());
        let norm = before.norm();
        let mut kinds = vec![RotationKind::Haar];
        if r.is_power_of_two() {
            kinds.push(RotationKind::Hadamard);
        }
        for kind in kinds {
            let q = rotation(kind, r, r as u64).unwrap();
            let rot = rotate(&low, q.as_ref());
            assert_eq!(rot.a.shape(), low.a.shape());
            assert_eq!(rot.b.shape(), low.b.shape());
            assert_eq!(rot.sigma, low.sigma);
            let after = to_na(rot.product().as_ref());
            let rel = (&after - &before).norm() / norm;
            assert!(rel < 1e-5, "R={r} {kind:?}: relative change {rel}");
            // A'ᵀA' = Qᵀ Σ Q.
            let qn = to_na(q.as_ref());
            let sig = DMatrix::from_diagonal(&nalgebra::DVector::from_iterator(
                r,
                low.sigma.iter().map(|&s| f64::from(s)),
            ));
            let a = to_na(rot.a.as_ref());
            let want = qn.transpose() * sig * &qn;
            let got = a.transpose() * &a;
            let d = (got - want).abs().max();
            assert!(
                d < 1e-4 * f64::from(low.sigma[0]),
                "R={r} {kind:?}: AᵀA defect {d}"
            );
        }
    }
}

#[test]
fn rotate_rejects_wrong_shapes() {
    let w = power_law(20, 10, 2);
    let low = truncated_svd(w.as_ref(), 4, SvdMethod::Exact).unwrap();
    let q = haar_orthogonal(5, 1);
    assert!(matches!(
        try_rotate(&low, q.as_ref()),
        Err(Error::ShapeMismatch { .. })
    ));
    let q = haar_orthogonal(4, 1);
    assert!(try_rotate(&low, q.as_ref()).is_ok());
    let result = std::panic::catch_unwind(|| rotate(&low, haar_orthogonal(3, 0).as_ref()));
    assert!(result.is_err());
}
