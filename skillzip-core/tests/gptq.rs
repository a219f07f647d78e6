//! GPTQ and round-to-nearest weight quantization (DESIGN.md §4 step 5): identity-Hessian
//! equivalence with RTN, error reduction on correlated activations, agreement with an
//! independent unblocked f64 GPTQ, typed errors and determinism; the low-rank path
//! (`gptq_low_rank`, `gptq_from_activations`) against the dense one.

use faer::Mat;
use proptest::prelude::*;
use rand::RngExt;
use rand_distr::{Distribution, StandardNormal};
use skillzip_core::gptq::{
    GptqConfig, WeightScales, gptq, gptq_from_activations, gptq_low_rank, gptq_owned, hessian,
    inverse_hessian_factor, low_rank_is_preferred, rtn,
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
    let n = w.nrows();
    let hd: Vec<Vec<f64>> = (0..n)
        .map(|i| (0..n).map(|j| h[(i, j)] as f64).collect())
        .collect();
    reference_gptq_f64(w, hd, bits, scales, damp)
}

/// [`reference_gptq`] for an f64 Hessian (e.g. `XᵀX` summed in f64).
fn reference_gptq_f64(
    w: &Mat<f32>,
    mut hd: Vec<Vec<f64>>,
    bits: Bits,
    scales: WeightScales,
    damp: f64,
) -> Vec<i8> {
    let (n, m) = (w.nrows(), w.ncols());
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

/// Asserts that `quantize` (GPTQ under every bits/scales setting, act-order on and off, two
/// block sizes) has at most 0.9× RTN's output error on the held-out rows.
fn assert_beats_rtn(
    x_held: &Mat<f32>,
    w: &Mat<f32>,
    what: &str,
    quantize: impl Fn(Bits, WeightScales, &GptqConfig) -> Quantized,
) {
    for (bits, scales) in all_settings() {
        let e_rtn = output_error(x_held, w, &rtn(w.as_ref(), bits, scales).unwrap());
        for act_order in [false, true] {
            for block in [128, 16] {
                let g = quantize(bits, scales, &cfg(block, act_order));
                assert_codes_in_range(&g);
                let e = output_error(x_held, w, &g);
                let ratio = e / e_rtn;
                println!(
                    "{bits:?} {scales:?} act_order={act_order} block={block}: \
                     {what} {e:.4e} rtn {e_rtn:.4e} ratio {ratio:.3}"
                );
                assert!(
                    ratio <= 0.9,
                    "{what}, {bits:?} {scales:?} act_order={act_order} block={block}: held-out \
                     error ratio {ratio:.3} > 0.9"
                );
            }
        }
    }
}

#[test]
fn gptq_beats_rtn_on_held_out_correlated_activations() {
    let (n, m) = (128, 64);
    let acts = Activations::new(n, 16, 4, 11);
    let x_cal = acts.sample(2048, 1001);
    let x_held = acts.sample(1024, 2002); // disjoint draw from the same distribution
    let mut rng = seeded_rng(12);
    let w = gaussian(n, m, &mut rng);
    let h = hessian(x_cal.as_ref()).unwrap();
    assert_beats_rtn(&x_held, &w, "gptq", |bits, scales, c| {
        gptq(w.as_ref(), h.as_ref(), bits, scales, c).unwrap()
    });
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

// ---------------------------------------------------------------------------------------------
// Low-rank GPTQ (H = XᵀX from T < in tokens, never formed) against the dense path.

/// `(differing codes, total codes)` of two results with the same shape and metadata, after
/// asserting bit-identical scales.
fn compare_codes(dense: &Quantized, low: &Quantized, what: &str) -> (usize, usize) {
    assert_eq!(
        (low.rows, low.cols, low.bits, low.granularity),
        (dense.rows, dense.cols, dense.bits, dense.granularity),
        "{what}"
    );
    assert_eq!(
        low.scales.iter().map(|s| s.to_bits()).collect::<Vec<_>>(),
        dense.scales.iter().map(|s| s.to_bits()).collect::<Vec<_>>(),
        "{what}: scales"
    );
    let differ = dense
        .codes
        .iter()
        .zip(&low.codes)
        .filter(|(a, b)| a != b)
        .count();
    (differ, dense.codes.len())
}

/// The largest code difference at the first input (in processing order `order`) where two
/// `out × in` code matrices differ, and the largest difference overall; `(0, 0)` if equal.
/// The first divergence is a rounding-boundary event (one step); later differences can be
/// the error feedback carrying it on.
fn first_and_max_step(a: &[i8], b: &[i8], n: usize, order: &[usize]) -> (i32, i32) {
    let m = a.len() / n;
    let step = |i: usize| {
        (0..m)
            .map(|o| (a[o * n + i] as i32 - b[o * n + i] as i32).abs())
            .max()
            .unwrap_or(0)
    };
    let first = order.iter().map(|&i| step(i)).find(|&d| d > 0).unwrap_or(0);
    let max = (0..n).map(step).max().unwrap_or(0);
    (first, max)
}

/// `XᵀX` summed in f64.
fn hessian_f64(x: &Mat<f32>) -> Vec<Vec<f64>> {
    let n = x.ncols();
    (0..n)
        .map(|i| {
            (0..n)
                .map(|j| {
                    (0..x.nrows())
                        .map(|t| x[(t, i)] as f64 * x[(t, j)] as f64)
                        .sum()
                })
                .collect()
        })
        .collect()
}

/// The processing order of GPTQ: index order, or decreasing `diag H` (dead inputs count as
/// 1, ties by index) with act-order.
fn processing_order(hd: &[Vec<f64>], act_order: bool) -> Vec<usize> {
    let n = hd.len();
    let key: Vec<f32> = (0..n)
        .map(|i| {
            if hd[i][i] as f32 == 0.0 {
                1.0
            } else {
                hd[i][i] as f32
            }
        })
        .collect();
    let mut order: Vec<usize> = (0..n).collect();
    if act_order {
        order.sort_by(|&a, &b| key[b].total_cmp(&key[a]).then(a.cmp(&b)));
    }
    order
}

/// The f64 reference (exact `XᵀX`, unblocked) in processing order `order`, codes returned in
/// the original order.
fn reference_in_order(
    w: &Mat<f32>,
    hd: &[Vec<f64>],
    order: &[usize],
    bits: Bits,
    scales: WeightScales,
) -> Vec<i8> {
    let (n, m) = (w.nrows(), w.ncols());
    let wp = Mat::from_fn(n, m, |k, o| w[(order[k], o)]);
    let hp: Vec<Vec<f64>> = order
        .iter()
        .map(|&a| order.iter().map(|&b| hd[a][b]).collect())
        .collect();
    let cp = reference_gptq_f64(&wp, hp, bits, scales, 0.01);
    let mut codes = vec![0i8; n * m];
    for o in 0..m {
        for (k, &i) in order.iter().enumerate() {
            codes[o * n + i] = cp[o * n + k];
        }
    }
    codes
}

/// Activations for the low-rank tests: the correlated distribution with outlier channels,
/// optionally with one dead input column.
fn low_rank_case(
    n: usize,
    m: usize,
    tokens: usize,
    dead: Option<usize>,
    seed: u64,
) -> (Mat<f32>, Mat<f32>) {
    let acts = Activations::new(n, (n / 6).clamp(1, 12), 2, seed);
    let mut x = acts.sample(tokens, seed ^ 0x5a5a);
    if let Some(d) = dead {
        for t in 0..tokens {
            x[(t, d % n)] = 0.0;
        }
    }
    let mut rng = seeded_rng(seed ^ 0xa5a5);
    let w = gaussian(n, m, &mut rng);
    (w, x)
}

/// Counts of one low-rank comparison.
#[derive(Default, Debug, Clone, Copy)]
struct Agreement {
    total: usize,
    low_vs_dense: usize,
    low_vs_ref: usize,
    dense_vs_ref: usize,
    max_step_vs_dense: i32,
}

impl std::ops::AddAssign for Agreement {
    fn add_assign(&mut self, o: Self) {
        self.total += o.total;
        self.low_vs_dense += o.low_vs_dense;
        self.low_vs_ref += o.low_vs_ref;
        self.dense_vs_ref += o.dense_vs_ref;
        self.max_step_vs_dense = self.max_step_vs_dense.max(o.max_step_vs_dense);
    }
}

/// Runs the low-rank path, the dense path and the f64 reference on one case and checks what
/// must hold exactly: identical scales, codes on the grid, zero codes for the dead input, and
/// a first divergence (from dense and from the reference) of exactly one step.
fn check_low_rank_case(
    n: usize,
    m: usize,
    tokens: usize,
    block: usize,
    act_order: bool,
    dead: Option<usize>,
    seed: u64,
) -> Agreement {
    let (w, x) = low_rank_case(n, m, tokens, dead, seed);
    let h = hessian(x.as_ref()).unwrap();
    let hd = hessian_f64(&x);
    let order = processing_order(&hd, act_order);
    let c = cfg(block, act_order);
    let mut agg = Agreement::default();
    for (bits, scales) in all_settings() {
        let what = format!(
            "n={n} m={m} T={tokens} block={block} act_order={act_order} dead={dead:?} \
             seed={seed} {bits:?} {scales:?}"
        );
        let dense = gptq(w.as_ref(), h.as_ref(), bits, scales, &c).unwrap();
        let low = gptq_low_rank(w.as_ref(), x.as_ref(), bits, scales, &c).unwrap();
        let want = reference_in_order(&w, &hd, &order, bits, scales);
        assert_codes_in_range(&low);
        let (d, total) = compare_codes(&dense, &low, &what);
        if let Some(j) = dead {
            assert!(
                (0..m).all(|o| low.codes[o * n + j % n] == 0),
                "{what}: dead input"
            );
        }
        let (first_d, max_d) = first_and_max_step(&dense.codes, &low.codes, n, &order);
        let (first_r, _) = first_and_max_step(&want, &low.codes, n, &order);
        assert!(
            first_d <= 1,
            "{what}: first divergence from dense is {first_d} steps"
        );
        assert!(
            first_r <= 1,
            "{what}: first divergence from f64 is {first_r} steps"
        );
        let a = Agreement {
            total,
            low_vs_dense: d,
            low_vs_ref: low.codes.iter().zip(&want).filter(|(a, b)| a != b).count(),
            dense_vs_ref: dense
                .codes
                .iter()
                .zip(&want)
                .filter(|(a, b)| a != b)
                .count(),
            max_step_vs_dense: max_d,
        };
        if a.low_vs_dense + a.low_vs_ref > 0 {
            println!("{what}: {a:?}");
        }
        agg += a;
    }
    agg
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn low_rank_path_matches_dense_gptq(
        n in 2usize..120,
        tokens_frac in 0.0f64..1.0,
        m in 1usize..30,
        block in prop_oneof![1usize..8, 8usize..200],
        act_order in any::<bool>(),
        dead in proptest::option::of(any::<usize>()),
        seed in any::<u64>(),
    ) {
        // 1 ≤ T ≤ in/2.
        let tokens = 1 + ((n / 2).saturating_sub(1) as f64 * tokens_frac) as usize;
        check_low_rank_case(n, m, tokens, block, act_order, dead, seed);
    }
}

#[test]
fn low_rank_path_aggregate_agreement() {
    let mut rng = seeded_rng(0x10ad);
    let mut agg = Agreement::default();
    for case in 0..120u64 {
        let n = rng.random_range(2usize..120);
        let tokens = rng.random_range(1..=(n / 2).max(1));
        let m = rng.random_range(1usize..30);
        let block = [1, 3, 16, 32, 128][rng.random_range(0..5usize)];
        let act_order = rng.random::<bool>();
        let dead = rng.random::<bool>().then(|| rng.random_range(0..n));
        agg += check_low_rank_case(n, m, tokens, block, act_order, dead, 1000 + case);
    }
    let frac = |d: usize| d as f64 / agg.total as f64;
    println!(
        "{} codes: low-rank vs dense {} ({:.2e}), low-rank vs f64 {} ({:.2e}), dense vs f64 {} \
         ({:.2e}); largest step vs dense {}",
        agg.total,
        agg.low_vs_dense,
        frac(agg.low_vs_dense),
        agg.low_vs_ref,
        frac(agg.low_vs_ref),
        agg.dense_vs_ref,
        frac(agg.dense_vs_ref),
        agg.max_step_vs_dense
    );
    assert!(frac(agg.low_vs_dense) <= 0.005);
    // The low-rank path works in f64: it is at least as close to the exact answer.
    assert!(agg.low_vs_ref <= agg.dense_vs_ref);
}

#[test]
fn low_rank_gptq_beats_rtn_on_held_out_correlated_activations() {
    let (n, m, tokens) = (256, 64, 100); // T < in/2: H has rank ≤ 100
    let acts = Activations::new(n, 16, 4, 11);
    let x_cal = acts.sample(tokens, 1001);
    let x_held = acts.sample(1024, 2002); // disjoint draw from the same distribution
    let mut rng = seeded_rng(12);
    let w = gaussian(n, m, &mut rng);
    assert_beats_rtn(&x_held, &w, "low-rank gptq", |bits, scales, c| {
        gptq_low_rank(w.as_ref(), x_cal.as_ref(), bits, scales, c).unwrap()
    });
}

#[test]
fn low_rank_rule_is_the_flop_model() {
    let c = GptqConfig::default();
    // The layer that motivates the path, and the measured crossover near T = in/3.
    assert!(low_rank_is_preferred(1024, 14336, 600, &c));
    assert!(low_rank_is_preferred(512, 4096, 400, &c));
    assert!(!low_rank_is_preferred(2048, 4096, 400, &c));
    assert!(!low_rank_is_preferred(100, 100, 10, &c));
    let undamped = GptqConfig { damp: 0.0, ..c };
    assert!(!low_rank_is_preferred(1024, 14336, 600, &undamped));
    // Monotone in T: one crossover.
    let flips = (1..4096)
        .filter(|&t| {
            low_rank_is_preferred(t, 4096, 400, &c) != low_rank_is_preferred(t + 1, 4096, 400, &c)
        })
        .count();
    assert_eq!(flips, 1);
}

#[test]
fn from_activations_dispatch_and_determinism() {
    let (n, m) = (300, 40);
    let acts = Activations::new(n, 20, 3, 61);
    let mut rng = seeded_rng(62);
    let w = gaussian(n, m, &mut rng);
    let c = cfg(64, true);
    // The largest T that takes the low-rank path.
    let t_max = (1..n)
        .take_while(|&t| low_rank_is_preferred(t, n, m, &c))
        .last()
        .unwrap();
    assert!((40..n / 2).contains(&t_max), "{t_max}");
    // At the boundary: low-rank; deterministic run to run.
    let x = acts.sample(t_max, 63);
    let a = gptq_from_activations(
        w.as_ref(),
        x.as_ref(),
        Bits::Int4,
        WeightScales::PerOutput,
        &c,
    )
    .unwrap();
    let b = gptq_low_rank(
        w.as_ref(),
        x.as_ref(),
        Bits::Int4,
        WeightScales::PerOutput,
        &c,
    )
    .unwrap();
    let b2 = gptq_low_rank(
        w.as_ref(),
        x.as_ref(),
        Bits::Int4,
        WeightScales::PerOutput,
        &c,
    )
    .unwrap();
    assert_eq!(a, b);
    assert_eq!(b, b2);
    // One more token: dense, bit for bit `gptq_owned(w, hessian(x))`.
    let x = acts.sample(t_max + 1, 64);
    assert!(!low_rank_is_preferred(t_max + 1, n, m, &c));
    let a = gptq_from_activations(
        w.as_ref(),
        x.as_ref(),
        Bits::Int8,
        WeightScales::PerTensor,
        &c,
    )
    .unwrap();
    let d = gptq_owned(
        w.as_ref(),
        hessian(x.as_ref()).unwrap(),
        Bits::Int8,
        WeightScales::PerTensor,
        &c,
    )
    .unwrap();
    assert_eq!(a, d);
    // The forced low-rank path also works for T ≥ in (it is just not cheaper there).
    let x = acts.sample(400, 65);
    let low = gptq_low_rank(
        w.as_ref(),
        x.as_ref(),
        Bits::Int8,
        WeightScales::PerTensor,
        &c,
    )
    .unwrap();
    let dense = gptq(
        w.as_ref(),
        hessian(x.as_ref()).unwrap().as_ref(),
        Bits::Int8,
        WeightScales::PerTensor,
        &c,
    )
    .unwrap();
    let (diff, total) = compare_codes(&dense, &low, "T > in");
    println!("T > in: {diff} of {total} codes differ");
    assert!(diff * 200 <= total, "{diff} of {total}");
    // No damping: dense (and singular for T < in).
    let undamped = GptqConfig { damp: 0.0, ..c };
    let x = acts.sample(50, 66);
    assert!(!low_rank_is_preferred(50, n, m, &undamped));
    let want = Err(Error::NotPositiveDefinite("gptq hessian"));
    assert_eq!(
        gptq_from_activations(
            w.as_ref(),
            x.as_ref(),
            Bits::Int8,
            WeightScales::PerTensor,
            &undamped
        ),
        want
    );
    assert_eq!(
        gptq_low_rank(
            w.as_ref(),
            x.as_ref(),
            Bits::Int8,
            WeightScales::PerTensor,
            &undamped
        ),
        want
    );
}

#[test]
fn low_rank_dead_inputs_and_zero_activations() {
    let (n, m) = (60, 12);
    let acts = Activations::new(n, 6, 1, 31);
    let mut x = acts.sample(20, 32);
    for t in 0..x.nrows() {
        x[(t, 3)] = 0.0;
        x[(t, 17)] = 0.0;
    }
    let mut rng = seeded_rng(33);
    let w = gaussian(n, m, &mut rng);
    for (bits, scales) in all_settings() {
        for act_order in [false, true] {
            let c = cfg(8, act_order);
            let g = gptq_low_rank(w.as_ref(), x.as_ref(), bits, scales, &c).unwrap();
            for o in 0..m {
                assert_eq!(g.codes[o * n + 3], 0);
                assert_eq!(g.codes[o * n + 17], 0);
            }
            assert!(g.codes.iter().any(|&c| c != 0));
            let d = gptq(
                w.as_ref(),
                hessian(x.as_ref()).unwrap().as_ref(),
                bits,
                scales,
                &c,
            )
            .unwrap();
            compare_codes(&d, &g, "dead inputs");
        }
    }
    // All inputs dead: every code 0 (the dense path sees H = I), also without damping, and the
    // scales are still measured on W.
    let zero = Mat::<f32>::zeros(10, n);
    for damp in [0.0, 0.01] {
        let c = GptqConfig {
            damp,
            ..GptqConfig::default()
        };
        for (bits, scales) in all_settings() {
            let g = gptq_low_rank(w.as_ref(), zero.as_ref(), bits, scales, &c).unwrap();
            let d = gptq(
                w.as_ref(),
                hessian(zero.as_ref()).unwrap().as_ref(),
                bits,
                scales,
                &c,
            )
            .unwrap();
            assert_eq!(g, d);
            assert!(g.codes.iter().all(|&c| c == 0));
            assert_eq!(g.scales, rtn(w.as_ref(), bits, scales).unwrap().scales);
        }
    }
}

#[test]
fn low_rank_typed_errors() {
    let mut rng = seeded_rng(91);
    let (n, m, t) = (12, 5, 4);
    let w = gaussian(n, m, &mut rng);
    let x = gaussian(t, n, &mut rng);
    let x_narrow = gaussian(t, n - 1, &mut rng);
    let c = GptqConfig::default();
    type Path = fn(
        faer::MatRef<'_, f32>,
        faer::MatRef<'_, f32>,
        Bits,
        WeightScales,
        &GptqConfig,
    ) -> skillzip_core::Result<Quantized>;
    let paths: [(&str, Path); 2] = [
        ("from_activations", gptq_from_activations),
        ("low_rank", gptq_low_rank),
    ];
    for (name, f) in paths {
        let run = |w: &Mat<f32>, x: &Mat<f32>, c: &GptqConfig| {
            f(
                w.as_ref(),
                x.as_ref(),
                Bits::Int8,
                WeightScales::PerOutput,
                c,
            )
        };
        let mut xb = x.clone();
        xb[(2, 7)] = f32::NAN;
        assert_eq!(
            run(&w, &xb, &c),
            Err(Error::NonFinite {
                what: "calibration activations",
                index: 2 * n + 7
            }),
            "{name}"
        );
        let mut wb = w.clone();
        wb[(4, 1)] = f32::INFINITY;
        assert_eq!(
            run(&wb, &x, &c),
            Err(Error::NonFinite {
                what: "weight",
                index: 4 * m + 1
            }),
            "{name}"
        );
        assert_eq!(
            run(&w, &x_narrow, &c),
            Err(Error::ShapeMismatch {
                what: "calibration activations",
                expected: (t, n),
                got: (t, n - 1)
            }),
            "{name}"
        );
        assert_eq!(
            run(&w, &Mat::zeros(0, n), &c),
            Err(Error::Empty("calibration activations")),
            "{name}"
        );
        assert_eq!(
            run(&Mat::zeros(0, m), &x, &c),
            Err(Error::Empty("weight")),
            "{name}"
        );
        for bad in [
            GptqConfig { block_size: 0, ..c },
            GptqConfig { damp: -1.0, ..c },
            GptqConfig {
                damp: f32::INFINITY,
                ..c
            },
        ] {
            assert!(
                matches!(run(&w, &x, &bad), Err(Error::InvalidConfig(_))),
                "{name}"
            );
        }
    }
}
