//! GPTQ and round-to-nearest weight quantization (DESIGN.md §4 step 5): identity-Hessian
//! equivalence with RTN, error reduction on correlated activations, agreement with an
//! independent unblocked f64 GPTQ, typed errors and determinism.

use faer::Mat;
use proptest::prelude::*;
use rand::RngExt;
use rand_distr::{Distribution, StandardNormal};
use skillzip_core::gptq::{
    GptqConfig, WeightScales, gptq, gptq_owned, hessian, inverse_hessian_factor, rtn,
};
use skillzip_core::quant::{self, Bits, Granularity, Quantized};
use skillzip_core::{Error, SeededRng, seeded_rng};

// ---------------------------------------------------------------------------------------------
// Data helpers.

fn gaussian(rows: usize, cols: usize, rng: &mut SeededRng) -> Mat<f32> {
    Mat::from_fn(rows, cols, |_, _| {
        let v: f64 = StandardNormal.sample(rng);
        v as f32
    })
}

/// A distribution of activations with strongly correlated channels: `X = G·L + 0.05·N`
/// (`G` is `T × latent`, `L` a fixed random `latent × in` mixing matrix), a per-channel gain
/// spread over two decades and a few outlier channels scaled by 20.
struct Activations {
    mixing: Mat<f32>,
    gain: Vec<f32>,
}

impl Activations {
    fn new(c_in: usize, latent: usize, outliers: usize, seed: u64) -> Self {
        let mut rng = seeded_rng(seed);
        let mixing = gaussian(latent, c_in, &mut rng);
        let mut gain: Vec<f32> = (0..c_in)
            .map(|_| 10f32.powf(rng.random::<f32>() - 0.5))
            .collect();
        for _ in 0..outliers {
            let i = rng.random_range(0..c_in);
            gain[i] *= 20.0;
        }
        Self { mixing, gain }
    }

    fn sample(&self, tokens: usize, seed: u64) -> Mat<f32> {
        let mut rng = seeded_rng(seed);
        let (latent, c_in) = (self.mixing.nrows(), self.mixing.ncols());
        let g = gaussian(tokens, latent, &mut rng);
        let noise = gaussian(tokens, c_in, &mut rng);
        let mixed = &g * &self.mixing;
        Mat::from_fn(tokens, c_in, |t, i| {
            (mixed[(t, i)] + 0.05 * noise[(t, i)]) * self.gain[i]
        })
    }
}

/// `Ŵ` (`in × out`) from a quantized `out × in` result.
fn dequantized(q: &Quantized) -> Mat<f32> {
    let d = q.dequantize();
    Mat::from_fn(q.cols, q.rows, |i, o| d[o * q.cols + i])
}

/// `‖X·W − X·Ŵ‖_F` in f64.
fn output_error(x: &Mat<f32>, w: &Mat<f32>, q: &Quantized) -> f64 {
    let wq = dequantized(q);
    let mut s = 0.0f64;
    for t in 0..x.nrows() {
        for o in 0..w.ncols() {
            let mut acc = 0.0f64;
            for i in 0..w.nrows() {
                acc += x[(t, i)] as f64 * (w[(i, o)] as f64 - wq[(i, o)] as f64);
            }
            s += acc * acc;
        }
    }
    s.sqrt()
}

fn identity(n: usize) -> Mat<f32> {
    Mat::from_fn(n, n, |i, j| if i == j { 1.0 } else { 0.0 })
}

fn all_settings() -> Vec<(Bits, WeightScales)> {
    vec![
        (Bits::Int8, WeightScales::PerTensor),
        (Bits::Int8, WeightScales::PerOutput),
        (Bits::Int4, WeightScales::PerTensor),
        (Bits::Int4, WeightScales::PerOutput),
    ]
}

fn assert_codes_in_range(q: &Quantized) {
    let qmax = q.bits.qmax();
    assert_eq!(q.codes.len(), q.rows * q.cols);
    assert!(
        q.codes
            .iter()
            .all(|&c| (-qmax..=qmax).contains(&(c as i32))),
        "a code is outside [-{qmax}, {qmax}]"
    );
}

// ---------------------------------------------------------------------------------------------
// Independent reference: unblocked GPTQ in f64 with an explicit inverse.

fn reference_gptq(
    w: &Mat<f32>,
    h: &Mat<f32>,
    bits: Bits,
    scales: WeightScales,
    damp: f64,
) -> Vec<i8> {
    let (n, m) = (w.nrows(), w.ncols());
    let mut hd: Vec<Vec<f64>> = (0..n)
        .map(|i| (0..n).map(|j| h[(i, j)] as f64).collect())
        .collect();
    let mut wd: Vec<Vec<f64>> = (0..n)
        .map(|i| (0..m).map(|o| w[(i, o)] as f64).collect())
        .collect();
    for i in 0..n {
        if hd[i][i] == 0.0 {
            hd[i][i] = 1.0;
            wd[i].iter_mut().for_each(|v| *v = 0.0);
        }
    }
    let lambda = damp * (0..n).map(|i| hd[i][i]).sum::<f64>() / n as f64;
    for (i, row) in hd.iter_mut().enumerate() {
        row[i] += lambda;
    }
    let hinv = invert_f64(&hd);
    // Upper Cholesky of H⁻¹: H⁻¹ = UᵀU.
    let mut u = vec![vec![0.0f64; n]; n];
    for i in 0..n {
        let s: f64 = (0..i).map(|k| u[k][i] * u[k][i]).sum();
        u[i][i] = (hinv[i][i] - s).sqrt();
        for j in i + 1..n {
            let s: f64 = (0..i).map(|k| u[k][i] * u[k][j]).sum();
            u[i][j] = (hinv[i][j] - s) / u[i][i];
        }
    }
    // Scales from the original W (f32, the crate's rule).
    let col_amax: Vec<f32> = (0..m)
        .map(|o| quant::amax(&(0..n).map(|i| w[(i, o)]).collect::<Vec<_>>()))
        .collect();
    let pairs: Vec<(f32, f32)> = match scales {
        WeightScales::PerTensor => {
            let a = quant::amax(&col_amax);
            vec![quant::scale_and_inverse(a, bits); m]
        }
        WeightScales::PerOutput => col_amax
            .iter()
            .map(|&a| quant::scale_and_inverse(a, bits))
            .collect(),
    };
    let qmax = bits.qmax() as f64;
    let mut codes = vec![0i8; n * m];
    for i in 0..n {
        let mut e = vec![0.0f64; m];
        for o in 0..m {
            let (s, inv) = pairs[o];
            let v = wd[i][o];
            let c = (v * inv as f64).round_ties_even().clamp(-qmax, qmax);
            codes[o * n + i] = c as i8;
            e[o] = (v - c * s as f64) / u[i][i];
        }
        for j in i + 1..n {
            for o in 0..m {
                wd[j][o] -= e[o] * u[i][j];
            }
        }
    }
    codes
}

/// Gauss–Jordan inverse with partial pivoting, f64.
fn invert_f64(a: &[Vec<f64>]) -> Vec<Vec<f64>> {
    let n = a.len();
    let mut m: Vec<Vec<f64>> = a
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let mut row = r.clone();
            row.extend((0..n).map(|j| if i == j { 1.0 } else { 0.0 }));
            row
        })
        .collect();
    for c in 0..n {
        let p = (c..n)
            .max_by(|&x, &y| m[x][c].abs().total_cmp(&m[y][c].abs()))
            .unwrap();
        m.swap(c, p);
        let d = m[c][c];
        m[c].iter_mut().for_each(|v| *v /= d);
        for r in 0..n {
            if r != c {
                let f = m[r][c];
                if f != 0.0 {
                    let pivot = m[c].clone();
                    m[r].iter_mut().zip(&pivot).for_each(|(v, p)| *v -= f * p);
                }
            }
        }
    }
    m.into_iter().map(|r| r[n..].to_vec()).collect()
}

// ---------------------------------------------------------------------------------------------
// Identity / diagonal Hessian ⇒ RTN, bit for bit.

fn cfg(block_size: usize, act_order: bool) -> GptqConfig {
    GptqConfig {
        block_size,
        act_order,
        ..GptqConfig::default()
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn identity_hessian_equals_rtn_bit_for_bit(
        n in 1usize..70,
        m in 1usize..40,
        block in prop_oneof![1usize..8, 8usize..200],
        seed in any::<u64>(),
        grid in any::<bool>(),
    ) {
        let mut rng = seeded_rng(seed);
        // `grid` puts many values exactly on rounding ties (multiples of half a step).
        let w = if grid {
            Mat::from_fn(n, m, |_, _| (rng.random_range(-30i32..=30) as f32) * 0.25)
        } else {
            gaussian(n, m, &mut rng)
        };
        let h = identity(n);
        for (bits, scales) in all_settings() {
            let r = rtn(w.as_ref(), bits, scales).unwrap();
            for act_order in [false, true] {
                let g = gptq(w.as_ref(), h.as_ref(), bits, scales, &cfg(block, act_order)).unwrap();
                prop_assert_eq!(&g.codes, &r.codes);
                prop_assert_eq!(
                    g.scales.iter().map(|s| s.to_bits()).collect::<Vec<_>>(),
                    r.scales.iter().map(|s| s.to_bits()).collect::<Vec<_>>()
                );
                prop_assert_eq!(&g, &r);
            }
        }
    }

    #[test]
    fn diagonal_hessian_equals_rtn_also_with_act_order(
        n in 1usize..70,
        m in 1usize..40,
        block in 1usize..100,
        seed in any::<u64>(),
    ) {
        let mut rng = seeded_rng(seed);
        let w = gaussian(n, m, &mut rng);
        // Distinct positive diagonal: act-order really permutes, and codes must come back in
        // the original order.
        let h = Mat::from_fn(n, n, |i, j| if i == j { 0.5 + rng.random::<f32>() * 10.0 } else { 0.0 });
        for (bits, scales) in all_settings() {
            let r = rtn(w.as_ref(), bits, scales).unwrap();
            for act_order in [false, true] {
                let g = gptq(w.as_ref(), h.as_ref(), bits, scales, &cfg(block, act_order)).unwrap();
                prop_assert_eq!(&g, &r);
            }
        }
    }

    #[test]
    fn codes_stay_on_the_grid_for_correlated_hessians(
        n in 1usize..70,
        m in 1usize..40,
        block in 1usize..100,
        tokens in 1usize..150,
        seed in any::<u64>(),
        act_order in any::<bool>(),
    ) {
        let acts = Activations::new(n, (n / 4).max(1), 2, seed);
        let x = acts.sample(tokens, seed ^ 1);
        let mut rng = seeded_rng(seed ^ 2);
        let w = gaussian(n, m, &mut rng);
        let h = hessian(x.as_ref()).unwrap();
        for (bits, scales) in all_settings() {
            let g = gptq(w.as_ref(), h.as_ref(), bits, scales, &cfg(block, act_order)).unwrap();
            prop_assert_eq!((g.rows, g.cols), (m, n));
            prop_assert_eq!(g.granularity, scales.granularity());
            assert_codes_in_range(&g);
            // Scales are RTN's.
            prop_assert_eq!(&g.scales, &rtn(w.as_ref(), bits, scales).unwrap().scales);
        }
    }
}

#[test]
fn rtn_is_the_crate_quantizer_on_the_transpose() {
    let mut rng = seeded_rng(7);
    let (n, m) = (37, 23);
    let w = gaussian(n, m, &mut rng);
    let wt: Vec<f32> = (0..m)
        .flat_map(|o| (0..n).map(move |i| (o, i)))
        .map(|(o, i)| w[(i, o)])
        .collect();
    for (bits, scales) in all_settings() {
        let r = rtn(w.as_ref(), bits, scales).unwrap();
        let q = Quantized::quantize(&wt, m, n, bits, scales.granularity()).unwrap();
        assert_eq!(r, q);
        assert_eq!(
            r.granularity,
            match scales {
                WeightScales::PerTensor => Granularity::PerTensor,
                WeightScales::PerOutput => Granularity::PerRow,
            }
        );
    }
}

// ---------------------------------------------------------------------------------------------
// GPTQ beats RTN on correlated activations.

#[test]
fn gptq_beats_rtn_on_held_out_correlated_activations() {
    let (n, m) = (128, 64);
    let acts = Activations::new(n, 16, 4, 11);
    let x_cal = acts.sample(2048, 1001);
    let x_held = acts.sample(1024, 2002); // disjoint draw from the same distribution
    let mut rng = seeded_rng(12);
    let w = gaussian(n, m, &mut rng);
    let h = hessian(x_cal.as_ref()).unwrap();
    for (bits, scales) in all_settings() {
        let e_rtn = output_error(&x_held, &w, &rtn(w.as_ref(), bits, scales).unwrap());
        for act_order in [false, true] {
            for block in [128, 16] {
                let g = gptq(w.as_ref(), h.as_ref(), bits, scales, &cfg(block, act_order)).unwrap();
                assert_codes_in_range(&g);
                let e = output_error(&x_held, &w, &g);
                let ratio = e / e_rtn;
                println!(
                    "{bits:?} {scales:?} act_order={act_order} block={block}: \
                     gptq {e:.4e} rtn {e_rtn:.4e} ratio {ratio:.3}"
                );
                assert!(
                    ratio <= 0.9,
                    "{bits:?} {scales:?} act_order={act_order} block={block}: held-out error \
                     ratio {ratio:.3} > 0.9"
                );
            }
        }
    }
}

#[test]
fn fewer_tokens_than_inputs_works_through_damping() {
    let (n, m) = (96, 40);
    let acts = Activations::new(n, 12, 3, 21);
    let x_cal = acts.sample(24, 5); // T = 24 < in = 96: H has rank ≤ 24
    let mut rng = seeded_rng(22);
    let w = gaussian(n, m, &mut rng);
    let h = hessian(x_cal.as_ref()).unwrap();
    // Undamped, the rank-deficient Hessian has no Cholesky factor.
    let undamped = GptqConfig {
        damp: 0.0,
        ..GptqConfig::default()
    };
    assert_eq!(
        gptq(
            w.as_ref(),
            h.as_ref(),
            Bits::Int4,
            WeightScales::PerOutput,
            &undamped
        ),
        Err(Error::NotPositiveDefinite("gptq hessian"))
    );
    for (bits, scales) in all_settings() {
        let g = gptq(w.as_ref(), h.as_ref(), bits, scales, &GptqConfig::default()).unwrap();
        assert_codes_in_range(&g);
        let r = rtn(w.as_ref(), bits, scales).unwrap();
        let (eg, er) = (output_error(&x_cal, &w, &g), output_error(&x_cal, &w, &r));
        println!("{bits:?} {scales:?}: calibration error gptq {eg:.4e} rtn {er:.4e}");
        assert!(eg < 0.9 * er, "{bits:?} {scales:?}: {eg} vs {er}");
    }
}

// ---------------------------------------------------------------------------------------------
// Agreement with the independent f64 implementation.

#[test]
fn matches_unblocked_f64_reference() {
    let mut total = 0usize;
    let mut differ = 0usize;
    for (case, &(n, m, tokens)) in [(40, 24, 400), (67, 31, 300), (90, 16, 50)]
        .iter()
        .enumerate()
    {
        let acts = Activations::new(n, 10, 2, 100 + case as u64);
        let x = acts.sample(tokens, 200 + case as u64);
        let mut rng = seeded_rng(300 + case as u64);
        let w = gaussian(n, m, &mut rng);
        let h = hessian(x.as_ref()).unwrap();
        for (bits, scales) in all_settings() {
            let want = reference_gptq(&w, &h, bits, scales, 0.01);
            for block in [1, 7, 32, 128] {
                let g = gptq(w.as_ref(), h.as_ref(), bits, scales, &cfg(block, false)).unwrap();
                let d = g.codes.iter().zip(&want).filter(|(a, b)| a != b).count();
                // A differing code is never more than one step away.
                assert!(
                    g.codes
                        .iter()
                        .zip(&want)
                        .all(|(&a, &b)| (a as i32 - b as i32).abs() <= 1)
                );
                total += want.len();
                differ += d;
                if d > 0 {
                    println!("n={n} m={m} {bits:?} {scales:?} block={block}: {d} codes differ");
                }
            }
        }
    }
    let frac = differ as f64 / total as f64;
    println!("{differ} of {total} codes differ from the f64 reference ({frac:.2e})");
    assert!(frac <= 0.005, "{differ} of {total} codes differ");
}

#[test]
fn inverse_factor_matches_f64() {
    for (n, tokens, seed) in [(5, 50, 1), (70, 500, 2), (150, 60, 3), (300, 1000, 4)] {
        let acts = Activations::new(n, (n / 5).max(2), 2, seed);
        let x = acts.sample(tokens, seed + 10);
        let mut h = hessian(x.as_ref()).unwrap();
        // One dead input.
        for j in 0..n {
            h[(n / 2, j)] = 0.0;
            h[(j, n / 2)] = 0.0;
        }
        let u = inverse_hessian_factor(h.as_ref(), 0.01).unwrap();
        let mut hd: Vec<Vec<f64>> = (0..n)
            .map(|i| (0..n).map(|j| h[(i, j)] as f64).collect())
            .collect();
        hd[n / 2][n / 2] = 1.0;
        let lambda = 0.01 * (0..n).map(|i| hd[i][i]).sum::<f64>() / n as f64;
        for (i, row) in hd.iter_mut().enumerate() {
            row[i] += lambda;
        }
        // UᵀU·H ≈ I.
        let mut max_err = 0.0f64;
        let mut utu = vec![vec![0.0f64; n]; n];
        for i in 0..n {
            for j in 0..n {
                utu[i][j] = (0..=i.min(j))
                    .map(|k| u[(k, i)] as f64 * u[(k, j)] as f64)
                    .sum();
            }
        }
        for i in 0..n {
            // H is symmetric: column j of H is row j.
            for (j, hj) in hd.iter().enumerate() {
                let p: f64 = utu[i].iter().zip(hj).map(|(a, b)| a * b).sum();
                let target = if i == j { 1.0 } else { 0.0 };
                max_err = max_err.max((p - target).abs());
            }
            for j in 0..i {
                assert_eq!(u[(i, j)], 0.0, "strict lower triangle is zero");
            }
            assert!(u[(i, i)] > 0.0);
        }
        println!("n={n}: max |UᵀU·H − I| = {max_err:.2e}");
        assert!(max_err < 1e-3, "n={n}: {max_err}");
    }
}

// ---------------------------------------------------------------------------------------------
// Properties.

#[test]
fn dead_inputs_get_zero_codes() {
    let (n, m) = (30, 12);
    let acts = Activations::new(n, 6, 1, 31);
    let mut x = acts.sample(200, 32);
    for t in 0..x.nrows() {
        x[(t, 3)] = 0.0;
        x[(t, 17)] = 0.0;
    }
    let mut rng = seeded_rng(33);
    let w = gaussian(n, m, &mut rng);
    let h = hessian(x.as_ref()).unwrap();
    for (bits, scales) in all_settings() {
        for act_order in [false, true] {
            let g = gptq(w.as_ref(), h.as_ref(), bits, scales, &cfg(8, act_order)).unwrap();
            for o in 0..m {
                assert_eq!(g.codes[o * n + 3], 0);
                assert_eq!(g.codes[o * n + 17], 0);
            }
            assert!(g.codes.iter().any(|&c| c != 0));
        }
    }
}

#[test]
fn power_of_two_rescaled_hessian_gives_identical_codes() {
    let (n, m) = (150, 20);
    let acts = Activations::new(n, 20, 3, 41);
    let x = acts.sample(400, 42);
    let mut rng = seeded_rng(43);
    let w = gaussian(n, m, &mut rng);
    let h = hessian(x.as_ref()).unwrap();
    let h4 = Mat::from_fn(n, n, |i, j| 4.0 * h[(i, j)]);
    for (bits, scales) in all_settings() {
        let a = gptq(w.as_ref(), h.as_ref(), bits, scales, &GptqConfig::default()).unwrap();
        let b = gptq(
            w.as_ref(),
            h4.as_ref(),
            bits,
            scales,
            &GptqConfig::default(),
        )
        .unwrap();
        assert_eq!(a, b);
    }
}

#[test]
fn deterministic_and_owned_path_agrees() {
    let (n, m) = (400, 70);
    let acts = Activations::new(n, 40, 5, 51);
    let x = acts.sample(600, 52);
    let mut rng = seeded_rng(53);
    let w = gaussian(n, m, &mut rng);
    let h = hessian(x.as_ref()).unwrap();
    assert_eq!(hessian(x.as_ref()).unwrap(), h);
    for act_order in [false, true] {
        let c = cfg(128, act_order);
        let a = gptq(
            w.as_ref(),
            h.as_ref(),
            Bits::Int4,
            WeightScales::PerOutput,
            &c,
        )
        .unwrap();
        let b = gptq(
            w.as_ref(),
            h.as_ref(),
            Bits::Int4,
            WeightScales::PerOutput,
            &c,
        )
        .unwrap();
        let o = gptq_owned(
            w.as_ref(),
            h.clone(),
            Bits::Int4,
            WeightScales::PerOutput,
            &c,
        )
        .unwrap();
        assert_eq!(a, b);
        assert_eq!(a, o);
    }
}

#[test]
fn hessian_is_symmetric_xtx_and_accumulates() {
    let mut rng = seeded_rng(61);
    let x = gaussian(90, 33, &mut rng);
    let h = hessian(x.as_ref()).unwrap();
    for i in 0..33 {
        for j in 0..33 {
            assert_eq!(h[(i, j)].to_bits(), h[(j, i)].to_bits());
            let want: f64 = (0..90).map(|t| x[(t, i)] as f64 * x[(t, j)] as f64).sum();
            assert!((h[(i, j)] as f64 - want).abs() <= 1e-4 * (1.0 + want.abs()));
        }
    }
    let mut acc = hessian(x.as_ref().subrows(0, 40)).unwrap();
    skillzip_core::gptq::accumulate_hessian(acc.as_mut(), x.as_ref().subrows(40, 50)).unwrap();
    for i in 0..33 {
        for j in 0..33 {
            assert!((acc[(i, j)] - h[(i, j)]).abs() <= 1e-4 * (1.0 + h[(i, j)].abs()));
            assert_eq!(acc[(i, j)].to_bits(), acc[(j, i)].to_bits());
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Typed errors.

#[test]
fn non_finite_inputs_are_typed_errors() {
    let mut rng = seeded_rng(71);
    let (n, m) = (6, 4);
    let mut w = gaussian(n, m, &mut rng);
    let h = identity(n);
    let c = GptqConfig::default();
    w[(2, 3)] = f32::NAN;
    let want = Err(Error::NonFinite {
        what: "weight",
        index: 2 * m + 3,
    });
    assert_eq!(
        gptq(
            w.as_ref(),
            h.as_ref(),
            Bits::Int8,
            WeightScales::PerTensor,
            &c
        ),
        want
    );
    assert_eq!(rtn(w.as_ref(), Bits::Int8, WeightScales::PerTensor), want);

    let w = gaussian(n, m, &mut rng);
    let mut hb = identity(n);
    hb[(4, 1)] = f32::INFINITY;
    assert_eq!(
        gptq(
            w.as_ref(),
            hb.as_ref(),
            Bits::Int4,
            WeightScales::PerOutput,
            &c
        ),
        Err(Error::NonFinite {
            what: "gptq hessian",
            index: 4 * n + 1
        })
    );

    let mut x = gaussian(10, n, &mut rng);
    x[(7, 5)] = f32::NEG_INFINITY;
    assert_eq!(
        hessian(x.as_ref()),
        Err(Error::NonFinite {
            what: "calibration activations",
            index: 7 * n + 5
        })
    );
}

#[test]
fn wrong_shapes_and_configs_are_typed_errors() {
    let mut rng = seeded_rng(81);
    let w = gaussian(8, 5, &mut rng);
    let c = GptqConfig::default();
    let h_small = identity(7);
    assert_eq!(
        gptq(
            w.as_ref(),
            h_small.as_ref(),
            Bits::Int8,
            WeightScales::PerTensor,
            &c
        ),
        Err(Error::ShapeMismatch {
            what: "gptq hessian",
            expected: (8, 8),
            got: (7, 7)
        })
    );
    let h_rect = Mat::<f32>::zeros(8, 5);
    assert!(matches!(
        gptq(
            w.as_ref(),
            h_rect.as_ref(),
            Bits::Int8,
            WeightScales::PerTensor,
            &c
        ),
        Err(Error::ShapeMismatch { .. })
    ));
    let h = identity(8);
    for bad in [
        GptqConfig { block_size: 0, ..c },
        GptqConfig { damp: -0.1, ..c },
        GptqConfig {
            damp: f32::NAN,
            ..c
        },
    ] {
        assert!(matches!(
            gptq(
                w.as_ref(),
                h.as_ref(),
                Bits::Int8,
                WeightScales::PerTensor,
                &bad
            ),
            Err(Error::InvalidConfig(_))
        ));
    }
    let empty = Mat::<f32>::zeros(0, 5);
    assert_eq!(
        rtn(empty.as_ref(), Bits::Int8, WeightScales::PerTensor),
        Err(Error::Empty("weight"))
    );
    assert!(matches!(
        hessian(Mat::<f32>::zeros(0, 4).as_ref()),
        Err(Error::Empty(_))
    ));
    // Not positive definite even after damping.
    let neg = Mat::from_fn(8, 8, |i, j| if i == j { -1.0 } else { 0.0 });
    assert_eq!(
        gptq(
            w.as_ref(),
            neg.as_ref(),
            Bits::Int8,
            WeightScales::PerTensor,
            &c
        ),
        Err(Error::NotPositiveDefinite("gptq hessian"))
    );
}

#[test]
fn all_zero_weight_gives_zero_codes_and_scales() {
    let w = Mat::<f32>::zeros(20, 6);
    let acts = Activations::new(20, 5, 1, 91);
    let h = hessian(acts.sample(50, 92).as_ref()).unwrap();
    for (bits, scales) in all_settings() {
        let g = gptq(w.as_ref(), h.as_ref(), bits, scales, &GptqConfig::default()).unwrap();
        assert!(g.codes.iter().all(|&c| c == 0));
        assert!(g.scales.iter().all(|&s| s == 0.0));
        assert_eq!(g, rtn(w.as_ref(), bits, scales).unwrap());
    }
}
