//! The deterministic built-in case: synthetic skill deltas and activations with the structure
//! real ones have (DESIGN.md §4 end): deltas with a power-law spectrum and energy beyond any
//! practical rank, a component shared by all skills, and activations with stable outlier
//! channels and correlated features, split into disjoint calibration / selection / held-out
//! sets. Real deltas replace it once checkpoints can be read.

use faer::Mat;
use rand::RngExt;
use rand_distr::{Distribution, StandardNormal};

use crate::error::Result;
use crate::layer::{CompressedLayer, Truncation};
use crate::quant::{ActScale, Bits, Granularity, Quantized};
use crate::{SeededRng, seeded_rng};

/// A `rows × cols` matrix of independent standard normals.
pub fn gaussian(rows: usize, cols: usize, rng: &mut SeededRng) -> Mat<f32> {
    Mat::from_fn(rows, cols, |_, _| {
        let v: f64 = StandardNormal.sample(rng);
        v as f32
    })
}

/// An orthonormal `n × k` basis (`k ≤ n`): the Q of a Gaussian's QR.
pub fn orthonormal(n: usize, k: usize, rng: &mut SeededRng) -> Mat<f32> {
    gaussian(n, k, rng).qr().compute_thin_Q()
}

/// `U·diag(σ)·Vᵀ` of shape `c_in × c_out` with `σ_i = scale · (i+1)^(-decay)` for
/// `i < min(c_in, c_out)` and random orthonormal `U`, `V`: a spectrum that decays like a
/// power law, so energy remains beyond any truncation rank.
pub fn power_law_matrix(c_in: usize, c_out: usize, decay: f64, scale: f64, seed: u64) -> Mat<f32> {
    let mut rng = seeded_rng(seed);
    let k = c_in.min(c_out);
    let u = orthonormal(c_in, k, &mut rng);
    let v = orthonormal(c_out, k, &mut rng);
    let us = Mat::from_fn(c_in, k, |i, j| {
        u[(i, j)] * (scale * ((j + 1) as f64).powf(-decay)) as f32
    });
    us * v.transpose()
}

/// Activations `T × C_i` with correlated features (a Gaussian through a random mixing matrix
/// of `latent` dimensions plus independent noise), per-channel magnitudes that vary smoothly
/// over a decade, and a fixed set of outlier channels scaled by `outlier_gain`, the same for
/// every token (stable, as in real LLM activations).
#[derive(Debug, Clone)]
pub struct ActivationModel {
    mixing: Mat<f32>,
    channel_gain: Vec<f32>,
}

impl ActivationModel {
    /// A model for `c_in` channels; `outliers` channels (chosen by `seed`) get `outlier_gain`.
    pub fn new(c_in: usize, latent: usize, outliers: usize, outlier_gain: f32, seed: u64) -> Self {
        let mut rng = seeded_rng(seed);
        let mixing = gaussian(latent, c_in, &mut rng);
        let mut channel_gain: Vec<f32> = (0..c_in)
            .map(|_| 10f32.powf(rng.random::<f32>() - 0.5))
            .collect();
        // Distinct outlier channels (a partial Fisher–Yates shuffle of the indices).
        let mut order: Vec<usize> = (0..c_in).collect();
        for k in 0..outliers.min(c_in) {
            let j = rng.random_range(k..c_in);
            order.swap(k, j);
            channel_gain[order[k]] = outlier_gain;
        }
        let norm = 1.0 / (latent as f32).sqrt();
        Self {
            mixing: Mat::from_fn(latent, c_in, |l, i| mixing[(l, i)] * norm),
            channel_gain,
        }
    }

    /// `tokens` rows drawn with `seed`.
    pub fn sample(&self, tokens: usize, seed: u64) -> Mat<f32> {
        let mut rng = seeded_rng(seed);
        let latent = gaussian(tokens, self.mixing.nrows(), &mut rng);
        let noise = gaussian(tokens, self.mixing.ncols(), &mut rng);
        let mixed = latent * &self.mixing;
        Mat::from_fn(tokens, self.mixing.ncols(), |t, i| {
            (mixed[(t, i)] + 0.3 * noise[(t, i)]) * self.channel_gain[i]
        })
    }

    /// The per-channel gains (outlier channels have the largest).
    pub fn channel_gain(&self) -> &[f32] {
        &self.channel_gain
    }
}

/// Disjoint activation splits (DESIGN.md §4.7): smoothing statistics and Hessians come from
/// `calibration`, α and rotation choices from `selection`, reported errors from `heldout`.
/// Each split is drawn from its own seed stream, so no row is shared.
#[derive(Debug, Clone)]
pub struct Splits {
    /// Calibration rows.
    pub calibration: Mat<f32>,
    /// Selection rows.
    pub selection: Mat<f32>,
    /// Held-out rows.
    pub heldout: Mat<f32>,
}

impl Splits {
    /// Draws the three splits from `model` with sizes `(calibration, selection, heldout)`.
    pub fn draw(model: &ActivationModel, sizes: (usize, usize, usize), seed: u64) -> Self {
        Self {
            calibration: model.sample(sizes.0, seed.wrapping_mul(3).wrapping_add(1)),
            selection: model.sample(sizes.1, seed.wrapping_mul(3).wrapping_add(2)),
            heldout: model.sample(sizes.2, seed.wrapping_mul(3).wrapping_add(3)),
        }
    }
}

/// The built-in multi-skill case: `skills` deltas `Δ_k = S + E_k` sharing a power-law
/// component `S`, each with its own power-law part `E_k`.
#[derive(Debug, Clone)]
pub struct SkillDeltas {
    /// One delta per skill, `c_in × c_out`.
    pub deltas: Vec<Mat<f32>>,
}

impl SkillDeltas {
    /// Deterministic deltas for `skills` skills. `shared_weight` sets the share of `S`.
    pub fn generate(
        c_in: usize,
        c_out: usize,
        skills: usize,
        decay: f64,
        shared_weight: f64,
        seed: u64,
    ) -> Self {
        let shared = power_law_matrix(c_in, c_out, decay, shared_weight, seed);
        let deltas = (0..skills)
            .map(|k| {
                let own =
                    power_law_matrix(c_in, c_out, decay, 1.0, seed.wrapping_add(1 + k as u64));
                &shared + &own
            })
            .collect();
        Self { deltas }
    }
}

/// What [`random_layer`] builds: shapes, grids and runtime modes of a [`CompressedLayer`]
/// with uniformly random codes — the fixture of kernel tests and benches, where the values
/// only need to be valid, not to approximate a delta.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RandomLayer {
    /// Input channels `C_i`.
    pub c_in: usize,
    /// Rank `R`.
    pub rank: usize,
    /// Output channels `C_o`.
    pub c_out: usize,
    /// Activation grid.
    pub act_bits: Bits,
    /// `Â` grid.
    pub a_bits: Bits,
    /// `B̂` grid.
    pub b_bits: Bits,
    /// Whether the layer carries a smoothing vector.
    pub smoothing: bool,
    /// `B̂` scales per output channel (else one per tensor).
    pub b_per_channel: bool,
    /// Activation scale mode.
    pub act_scale: ActScale,
    /// Truncation mode.
    pub truncation: Truncation,
}

impl RandomLayer {
    /// An X8A8B8 layer with dynamic scales, smoothing and per-channel `B̂` scales.
    pub fn x8a8b8(c_in: usize, rank: usize, c_out: usize) -> Self {
        Self {
            c_in,
            rank,
            c_out,
            act_bits: Bits::Int8,
            a_bits: Bits::Int8,
            b_bits: Bits::Int8,
            smoothing: true,
            b_per_channel: true,
            act_scale: ActScale::Dynamic,
            truncation: Truncation::Dynamic,
        }
    }
}

/// A [`CompressedLayer`] with uniformly random codes on each grid, scales in `(0.001, 0.1]`
/// and smoothing reciprocals in `[0.25, 4)`.
pub fn random_layer(spec: &RandomLayer, rng: &mut SeededRng) -> Result<CompressedLayer> {
    let mut codes = |n: usize, bits: Bits| -> Vec<i8> {
        let q = bits.qmax();
        (0..n).map(|_| rng.random_range(-q..=q) as i8).collect()
    };
    let a_codes = codes(spec.rank * spec.c_in, spec.a_bits);
    let b_codes = codes(spec.c_out * spec.rank, spec.b_bits);
    let b_granularity = if spec.b_per_channel {
        Granularity::PerRow
    } else {
        Granularity::PerTensor
    };
    let b_groups = if spec.b_per_channel { spec.c_out } else { 1 };
    let mut scale = || 0.001 + 0.099 * (1.0 - rng.random::<f32>());
    let a = Quantized {
        rows: spec.rank,
        cols: spec.c_in,
        bits: spec.a_bits,
        granularity: Granularity::PerTensor,
        codes: a_codes,
        scales: vec![scale()],
    };
    let b = Quantized {
        rows: spec.c_out,
        cols: spec.rank,
        bits: spec.b_bits,
        granularity: b_granularity,
        codes: b_codes,
        scales: (0..b_groups).map(|_| scale()).collect(),
    };
    let s_inv = spec.smoothing.then(|| {
        (0..spec.c_in)
            .map(|_| 0.25 * 16f32.powf(rng.random::<f32>()))
            .collect()
    });
    CompressedLayer::new(s_inv, spec.act_bits, spec.act_scale, a, b, spec.truncation)
}

/// Activation rows for kernel tests (`t × C_i`, row-major) with the features every backend of
/// DESIGN.md §4.6 must survive: values in `[-3, 3)`, one stable outlier channel (×150) and, by
/// row (`row % 7`), a zero row, a huge row (×1e30), a subnormal row (×1e-41), a row of exact
/// quantization ties (`0.5`, `-2.5` after smoothing), and a row whose smoothed values overflow
/// to ±inf (the reference quantizes those NaN products to 0).
pub fn contract_rows(t: usize, layer: &CompressedLayer, rng: &mut SeededRng) -> Vec<f32> {
    let ci = layer.c_in();
    let mut x: Vec<f32> = (0..t * ci)
        .map(|_| rng.random_range(-3.0f32..3.0))
        .collect();
    let outlier = rng.random_range(0..ci);
    for (row, r) in x.chunks_exact_mut(ci).enumerate() {
        r[outlier] *= 150.0;
        match row % 7 {
            1 => r.fill(0.0),
            2 => r.iter_mut().for_each(|v| *v *= 1e30),
            3 => r.iter_mut().for_each(|v| *v *= 1e-41),
            4 => {
                let s = layer.s_inv();
                for (i, v) in r.iter_mut().enumerate() {
                    let tie = if i % 2 == 0 { 0.5 } else { -2.5 };
                    *v = tie / s.map_or(1.0, |s| s[i]);
                }
            }
            // Finite, but `x·s⁻¹` overflows to ±inf where `s⁻¹ > 1` (found by fuzzing).
            5 => r.iter_mut().for_each(|v| *v = 3e38f32.copysign(*v)),
            _ => {}
        }
    }
    x
}
