//! Invariant checks over arbitrary bytes, shared by the cargo-fuzz targets in `fuzz/` and by
//! the test that replays their corpora (so the targets never rot). Each function decodes
//! shapes and values from the bytes, runs the public API and **panics** when an invariant is
//! violated — which is what a fuzzer looks for. Invalid inputs must come back as typed errors,
//! never as panics inside the library.

use faer::Mat;

use crate::Error;
use crate::kernels::{Isa, Kernel, KernelScratch, PackedLayer, Parallelism};
use crate::layer::{CompressedLayer, Truncation};
use crate::quant::{ActScale, Bits, Granularity, Quantized, pack_int4, truncate_row, unpack_int4};
use crate::runtime::{self, RowTrace, Scratch, apply, apply_batched, trace_row};

/// A cursor over fuzz bytes; reads past the end yield zeros.
struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn u8(&mut self) -> u8 {
        match self.0.split_first() {
            Some((b, rest)) => {
                self.0 = rest;
                *b
            }
            None => 0,
        }
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }
    fn f32(&mut self) -> f32 {
        f32::from_bits(self.u32())
    }
    fn dim(&mut self, max: usize) -> usize {
        1 + self.u8() as usize % max
    }
    fn bits(&mut self) -> Bits {
        [Bits::Int8, Bits::Int4, Bits::Int3, Bits::Int2][self.u8() as usize % 4]
    }
    /// Any finite f32: the raw bits, with the top exponent bit cleared when they encode
    /// NaN/Inf.
    fn finite(&mut self) -> f32 {
        finite(self.u32())
    }
    /// A scale: usually `k/64` for `k` in `1..=192`, else any finite value (zero, negative,
    /// subnormal, huge).
    fn scale(&mut self) -> f32 {
        match self.u8() {
            k @ 0..=191 => (k as f32 + 1.0) / 64.0,
            _ => self.finite(),
        }
    }
}

/// `bits` as an f32, made finite by clearing the top exponent bit of NaN/Inf patterns.
fn finite(bits: u32) -> f32 {
    let v = f32::from_bits(bits);
    if v.is_finite() {
        v
    } else {
        f32::from_bits(bits & !(1 << 30))
    }
}

/// SplitMix64: bulk values (codes, smoothing, activations) that a few bytes seed, so short
/// inputs still reach large, varied shapes.
struct Mix(u64);

impl Mix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// Quantize / dequantize / pack / truncate on arbitrary values: typed errors for NaN/Inf,
/// codes inside the grid, dequantization error at most half a step, INT4 packing round trip,
/// truncation bounds.
pub fn check_quantizers(data: &[u8]) {
    let mut b = Bytes(data);
    let (rows, cols) = (b.dim(8), b.dim(40));
    let bits = b.bits();
    let granularity = [
        Granularity::PerTensor,
        Granularity::PerRow,
        Granularity::PerColumn,
    ][b.u8() as usize % 3];
    let values: Vec<f32> = (0..rows * cols).map(|_| b.f32()).collect();
    match Quantized::quantize(&values, rows, cols, bits, granularity) {
        Err(Error::NonFinite { index, .. }) => {
            assert!(!values[index].is_finite(), "NonFinite names a finite value");
            assert!(
                values[..index].iter().all(|v| v.is_finite()),
                "NonFinite is not the first"
            );
        }
        Err(e) => panic!("unexpected error {e}"),
        Ok(q) => {
            assert!(
                values.iter().all(|v| v.is_finite()),
                "a non-finite input was accepted"
            );
            let qmax = bits.qmax();
            assert!(
                q.codes.iter().all(|c| (*c as i32).abs() <= qmax),
                "code outside the grid"
            );
            let deq = q.dequantize();
            for (i, (v, d)) in values.iter().zip(&deq).enumerate() {
                let scale = q.scale_at(i / cols, i % cols) as f64;
                if scale == 0.0 {
                    assert_eq!(q.codes[i], 0, "zero scale with a non-zero code");
                } else if scale.is_normal() && d.is_finite() {
                    // (`code · scale` may round past f32::MAX for groups whose amax is within
                    // one rounding of it; that overflow is documented on `dequantize`.)
                    let err = (*v as f64 - *d as f64).abs();
                    assert!(
                        err <= 0.5 * scale * (1.0 + 1e-5)
                            + 1e-30 * v.abs() as f64
                            + f32::EPSILON as f64 * v.abs() as f64,
                        "dequantization error {err} beyond half a step {scale}"
                    );
                }
            }
            if bits == Bits::Int4 {
                assert_eq!(
                    unpack_int4(&pack_int4(&q.codes, rows, cols), rows, cols),
                    q.codes
                );
            }
        }
    }
    let z: Vec<i32> = (0..b.dim(64)).map(|_| b.u32() as i32).collect();
    let mut z_hat = vec![0i8; z.len()];
    let m = truncate_row(&z, &mut z_hat);
    let zmax = z.iter().map(|v| v.unsigned_abs()).max().unwrap_or(0);
    assert!(z_hat.iter().all(|v| (-127..=127).contains(v)));
    if zmax == 0 {
        assert_eq!(m, 0);
        assert!(z_hat.iter().all(|v| *v == 0));
    } else {
        let top = z.iter().position(|v| v.unsigned_abs() == zmax).unwrap();
        assert!(
            z_hat[top].unsigned_abs() >= 126,
            "the largest |z| maps to ±127 (±126 for zmax ≥ 2^30)"
        );
    }
}

/// The reference runtime on arbitrary layers and inputs: exact i32 sums recomputed in i64,
/// the batched path bit-identical to the row path, typed errors for non-finite inputs.
pub fn check_runtime(data: &[u8]) {
    let mut b = Bytes(data);
    let (t, ci, r, co) = (b.dim(4), b.dim(48), b.dim(24), b.dim(24));
    let (act_bits, a_bits, b_bits) = (b.bits(), b.bits(), b.bits());
    let code = |b: &mut Bytes<'_>, bits: Bits| {
        let q = bits.qmax();
        ((b.u8() as i32) % (2 * q + 1) - q) as i8
    };
    let a_codes: Vec<i8> = (0..r * ci).map(|_| code(&mut b, a_bits)).collect();
    let b_codes: Vec<i8> = (0..co * r).map(|_| code(&mut b, b_bits)).collect();
    let small = |b: &mut Bytes<'_>| (b.u8() as f32 + 1.0) / 64.0;
    let a = Quantized {
        rows: r,
        cols: ci,
        bits: a_bits,
        granularity: Granularity::PerTensor,
        codes: a_codes,
        scales: vec![small(&mut b)],
    };
    let bq = Quantized {
        rows: co,
        cols: r,
        bits: b_bits,
        granularity: Granularity::PerRow,
        codes: b_codes,
        scales: (0..co).map(|_| small(&mut b)).collect(),
    };
    let s_inv: Vec<f32> = (0..ci).map(|_| small(&mut b)).collect();
    let flags = b.u8();
    let act = if flags & 1 == 1 {
        ActScale::Static {
            amax: small(&mut b),
        }
    } else {
        ActScale::Dynamic
    };
    let trunc = if flags & 2 == 2 {
        Truncation::Static { m: b.u32() as u64 }
    } else {
        Truncation::Dynamic
    };
    let layer = CompressedLayer::new(Some(s_inv), act_bits, act, a, bq, trunc)
        .expect("a well-formed layer is accepted");
    let x: Vec<f32> = (0..t * ci).map(|_| b.f32()).collect();
    let mut y = vec![0.0f32; t * co];
    let result = apply(&layer, &x, &mut y, &mut Scratch::default());
    if let Some(bad) = x.iter().position(|v| !v.is_finite()) {
        assert!(matches!(result, Err(Error::NonFinite { index, .. }) if index == bad));
        return;
    }
    result.expect("finite input is applied");
    let xm = Mat::from_fn(t, ci, |i, j| x[i * ci + j]);
    let yb = apply_batched(&layer, xm.as_ref()).expect("batched path accepts the same input");
    for row in 0..t {
        let tr = trace_row(&layer, &x[row * ci..(row + 1) * ci]).unwrap();
        for k in 0..r {
            let z: i64 = (0..ci)
                .map(|i| tr.x_hat[i] as i64 * layer.a().codes[k * ci + i] as i64)
                .sum();
            assert_eq!(z, tr.z[k] as i64, "z is not the exact sum");
        }
        for o in 0..co {
            let acc: i64 = (0..r)
                .map(|k| tr.z_hat[k] as i64 * layer.b().codes[o * r + k] as i64)
                .sum();
            assert_eq!(acc, tr.acc[o] as i64, "acc is not the exact sum");
            assert_eq!(
                y[row * co + o].to_bits(),
                yb[(row, o)].to_bits(),
                "batched path differs"
            );
            if !y[row * co + o].is_nan() {
                assert_eq!(y[row * co + o].to_bits(), (0.0f32 + tr.y[o]).to_bits());
            }
        }
    }
}

/// One skillpack of [`check_kernels`], as its header bytes describe it.
struct KernelLayerSpec {
    rank: usize,
    bits: (Bits, Bits, Bits),
    /// Bits 0–1: code source (bytes, uniform, ±qmax, {-1, 0, 1}); bit 2: per-channel `B̂`
    /// scales; bit 3: static activation amax; bit 4: static truncation `M`; bits 5–6:
    /// smoothing (none, per-channel scales from the bytes, 2^±12 with mantissas, any finite
    /// value).
    flags: u8,
    seed: u64,
    act_scale: ActScale,
    truncation: Truncation,
}

impl KernelLayerSpec {
    fn decode(b: &mut Bytes<'_>, max_rank: usize) -> Self {
        let rank = b.dim(max_rank);
        let bits = (b.bits(), b.bits(), b.bits());
        let flags = b.u8();
        let seed = b.u32() as u64;
        let act_scale = if flags & 8 == 8 {
            let amax = match b.u8() % 4 {
                0 => (b.u8() as f32 + 1.0) / 64.0,
                1 => 0.0,
                // Below 127 / f32::MAX: `qmax / amax` overflows, the all-zero rule applies.
                2 => 1e-38,
                _ => b.finite().abs(),
            };
            ActScale::Static { amax }
        } else {
            ActScale::Dynamic
        };
        let truncation = if flags & 16 == 16 {
            Truncation::Static {
                m: (b.u32() as u64) << (b.u8() % 64),
            }
        } else {
            Truncation::Dynamic
        };
        Self {
            rank,
            bits,
            flags,
            seed,
            act_scale,
            truncation,
        }
    }

    /// Reads the bulk (scales, smoothing, codes) and assembles the layer.
    fn build(&self, b: &mut Bytes<'_>, ci: usize, co: usize) -> CompressedLayer {
        let (r, (act_bits, a_bits, b_bits)) = (self.rank, self.bits);
        let mut mix = Mix(self.seed);
        let mut codes = |b: &mut Bytes<'_>, n: usize, bits: Bits| -> Vec<i8> {
            let q = bits.qmax();
            (0..n)
                .map(|_| match self.flags & 3 {
                    0 => (b.u8() as i32 % (2 * q + 1) - q) as i8,
                    1 => ((mix.next() % (2 * q as u64 + 1)) as i32 - q) as i8,
                    2 => [q as i8, -q as i8][(mix.next() & 1) as usize],
                    _ => (mix.next() % 3) as i8 - 1,
                })
                .collect()
        };
        let a_codes = codes(b, r * ci, a_bits);
        let b_codes = codes(b, co * r, b_bits);
        let a_scale = b.scale();
        let (granularity, b_scales) = if self.flags & 4 == 4 {
            (Granularity::PerRow, (0..co).map(|_| b.scale()).collect())
        } else {
            (Granularity::PerTensor, vec![b.scale()])
        };
        let s_inv: Option<Vec<f32>> = match (self.flags >> 5) & 3 {
            0 => None,
            1 => Some((0..ci).map(|_| b.scale()).collect()),
            2 => Some(
                (0..ci)
                    .map(|_| {
                        let v = mix.next();
                        let exponent = 127 - 12 + (v % 24) as u32;
                        f32::from_bits(exponent << 23 | ((v >> 40) as u32 & 0x7f_ffff))
                    })
                    .collect(),
            ),
            _ => Some((0..ci).map(|_| b.finite()).collect()),
        };
        let a = Quantized {
            rows: r,
            cols: ci,
            bits: a_bits,
            granularity: Granularity::PerTensor,
            codes: a_codes,
            scales: vec![a_scale],
        };
        let bq = Quantized {
            rows: co,
            cols: r,
            bits: b_bits,
            granularity,
            codes: b_codes,
            scales: b_scales,
        };
        CompressedLayer::new(s_inv, act_bits, self.act_scale, a, bq, self.truncation)
            .expect("a well-formed layer is accepted")
    }
}

/// Activations in the element type a kernel call receives.
enum Acts {
    F32(Vec<f32>),
    F16(Vec<half::f16>),
    Bf16(Vec<half::bf16>),
}

impl Acts {
    fn new(x: &[f32], dtype: u8) -> Self {
        match dtype {
            0 => Acts::F32(x.to_vec()),
            1 => Acts::F16(x.iter().map(|&v| half::f16::from_f32(v)).collect()),
            _ => Acts::Bf16(x.iter().map(|&v| half::bf16::from_f32(v)).collect()),
        }
    }

    /// The exact f32 images: what the reference runtime sees.
    fn image(&self) -> Vec<f32> {
        match self {
            Acts::F32(x) => x.clone(),
            Acts::F16(x) => x.iter().map(|v| v.to_f32()).collect(),
            Acts::Bf16(x) => x.iter().map(|v| v.to_f32()).collect(),
        }
    }
}

/// Runs `$body` with `$x` bound to the activation slice in its own element type.
macro_rules! with_acts {
    ($acts:expr, |$x:ident| $body:expr) => {
        match $acts {
            Acts::F32($x) => $body,
            Acts::F16($x) => $body,
            Acts::Bf16($x) => $body,
        }
    };
}

/// The first element where two f32 slices differ in their bits.
fn first_bit_difference(got: &[f32], want: &[f32]) -> Option<(usize, f32, f32)> {
    got.iter()
        .zip(want)
        .position(|(g, w)| g.to_bits() != w.to_bits())
        .map(|i| (i, got[i], want[i]))
}

fn assert_same_trace(got: &RowTrace, want: &RowTrace, what: &str) {
    assert_eq!(got.x_hat, want.x_hat, "{what}: x̂ differs");
    assert_eq!(
        got.sigma_x.to_bits(),
        want.sigma_x.to_bits(),
        "{what}: σ_x differs ({} vs {})",
        got.sigma_x,
        want.sigma_x
    );
    assert_eq!(got.z, want.z, "{what}: z differs");
    assert_eq!(got.m, want.m, "{what}: M differs");
    assert_eq!(got.z_hat, want.z_hat, "{what}: ẑ differs");
    assert_eq!(got.acc, want.acc, "{what}: acc differs");
    if let Some((o, g, w)) = first_bit_difference(&got.y, &want.y) {
        panic!(
            "{what}: y differs at {o}: {g:e} ({:#010x}) vs {w:e} ({:#010x})",
            g.to_bits(),
            w.to_bits()
        );
    }
}

/// The fast CPU kernels against the reference runtime on arbitrary skillpacks (1–3 of one
/// `C_i × C_o`, each with its own rank, grids including INT3/INT2 nibbles, codes, scales,
/// smoothing and static/dynamic modes) and arbitrary f32/f16/bf16 activations: on every
/// available instruction-set path, sequential and threaded, `apply_grouped` and `apply` equal
/// the reference bit for bit from a non-zero backbone output and `trace_row`'s intermediates
/// equal the reference's; shape errors, unknown skillpacks and an empty skillpack list come
/// back typed with the output untouched; non-finite activations (which the reference rejects)
/// run without a panic.
pub fn check_kernels(data: &[u8]) {
    let mut b = Bytes(data);
    // Bit 0: a prefill-sized batch (≥ 64 rows, small layers) that takes the row-split route
    // under rayon; bits 1–3: a fault to inject (4–7) before the normal checks.
    let mode = b.u8();
    let fault = (mode >> 1) & 7;
    let dtype = b.u8() % 3;
    let (t, ci, co, max_rank) = if mode & 1 == 1 {
        (63 + b.dim(18), b.dim(64), b.dim(48), 32)
    } else {
        (b.dim(12), b.dim(200), b.dim(100), 80)
    };
    let packs = b.dim(3);
    let specs: Vec<KernelLayerSpec> = (0..packs)
        .map(|_| KernelLayerSpec::decode(&mut b, max_rank))
        .collect();
    // Activations: 0 raw bits (NaN/Inf included), 1 raw bits made finite, 2 seeded values
    // with exponents in [lo, lo + span], 3 small integers times 2^(lo − 127).
    let x_mode = b.u8() % 4;
    let x_seed = b.u32() as u64;
    let (lo, span, zero_rows) = (b.u8() as u32, (b.u8() % 32) as u64, b.u8());
    let skill: Vec<Option<usize>> = (0..t)
        .map(|_| Some(b.u8() as usize % (packs + 1)).filter(|&s| s < packs))
        .collect();
    let fault_param = b.u32() as usize;
    let layers: Vec<CompressedLayer> = specs.iter().map(|s| s.build(&mut b, ci, co)).collect();
    let mut mix = Mix(x_seed);
    let pow2 = f32::from_bits(lo.clamp(1, 254) << 23);
    let mut x: Vec<f32> = (0..t * ci)
        .map(|_| match x_mode {
            0 => f32::from_bits(b.u32()),
            1 => b.finite(),
            2 => {
                let v = mix.next();
                let exponent = (lo + (v % (span + 1)) as u32).min(254);
                f32::from_bits(
                    ((v >> 63) as u32) << 31 | exponent << 23 | ((v >> 8) as u32 & 0x7f_ffff),
                )
            }
            _ => (b.u8() as i8) as f32 * pow2,
        })
        .collect();
    for (row, xr) in x.chunks_mut(ci).enumerate() {
        if zero_rows >> (row % 8) & 1 == 1 {
            xr.fill(0.0);
        }
    }
    let acts = Acts::new(&x, dtype);
    let xf = acts.image();
    // A non-zero backbone output: the kernels add in place.
    let y0: Vec<f32> = (0..t * co)
        .map(|i| ((i * 37 % 29) as f32 - 14.5) * 0.25)
        .collect();

    let refs: Vec<&CompressedLayer> = layers.iter().collect();
    let packed: Vec<PackedLayer> = layers.iter().map(PackedLayer::new).collect();
    let prefs: Vec<&PackedLayer> = packed.iter().collect();
    for isa in Isa::ALL {
        match Kernel::with_isa(isa) {
            Ok(k) => assert!(isa.is_available() && k.isa() == isa),
            Err(e) => assert_eq!(e, Error::IsaUnavailable { isa: isa.name() }),
        }
    }
    let kernels: Vec<Kernel> = Isa::available()
        .flat_map(|isa| {
            let k = Kernel::with_isa(isa).expect("an available path is accepted");
            [Parallelism::Sequential, Parallelism::Rayon].map(|p| k.with_parallelism(p))
        })
        .collect();
    assert!(kernels.iter().any(|k| k.isa() == Isa::Scalar));
    let mut scratch = KernelScratch::default();
    let non_finite = xf.iter().position(|v| !v.is_finite());

    if fault >= 4 {
        check_kernel_faults(
            fault,
            fault_param,
            (t, ci, co),
            &kernels,
            &refs,
            &prefs,
            &skill,
            &acts,
            &xf,
            &y0,
            non_finite,
            &mut scratch,
        );
    }

    let mut want = y0.clone();
    let result = runtime::apply_grouped(&refs, &skill, &xf, &mut want, &mut Scratch::default());
    let traced = skill
        .iter()
        .enumerate()
        .find_map(|(row, s)| s.map(|s| (row, s)));
    if let Some(bad) = non_finite {
        assert!(
            matches!(result, Err(Error::NonFinite { index, .. }) if index == bad),
            "the reference must reject the non-finite activation at {bad}: {result:?}"
        );
        // Unspecified values, but no panic, no error and (under the sanitizers) no bad access.
        for k in &kernels {
            let mut y = y0.clone();
            with_acts!(&acts, |x| k.apply_grouped(
                &prefs,
                &skill,
                x,
                &mut y,
                &mut scratch
            ))
            .unwrap_or_else(|e| panic!("{k:?}: apply_grouped on non-finite input: {e}"));
            with_acts!(&acts, |x| k.apply(prefs[0], x, &mut y, &mut scratch))
                .unwrap_or_else(|e| panic!("{k:?}: apply on non-finite input: {e}"));
            if let Some((row, s)) = traced {
                with_acts!(&acts, |x| k
                    .trace_row(prefs[s], &x[row * ci..(row + 1) * ci]))
                .unwrap_or_else(|e| panic!("{k:?}: trace_row on non-finite input: {e}"));
            }
        }
        return;
    }
    result.expect("the reference applies finite activations");
    let mut want_all = y0.clone();
    runtime::apply(&layers[0], &xf, &mut want_all, &mut Scratch::default())
        .expect("the reference applies finite activations");
    let want_trace = traced.map(|(row, s)| {
        let tr = runtime::trace_row(&layers[s], &xf[row * ci..(row + 1) * ci])
            .expect("the reference traces a finite row");
        (row, s, tr)
    });
    for k in &kernels {
        let mut y = y0.clone();
        with_acts!(&acts, |x| k.apply_grouped(
            &prefs,
            &skill,
            x,
            &mut y,
            &mut scratch
        ))
        .unwrap_or_else(|e| panic!("{k:?}: apply_grouped rejected valid input: {e}"));
        if let Some((i, g, w)) = first_bit_difference(&y, &want) {
            panic!(
                "{k:?}: apply_grouped differs from the reference at row {}, column {} (skillpack \
                 {:?}): {g:e} ({:#010x}) vs {w:e} ({:#010x})",
                i / co,
                i % co,
                skill[i / co],
                g.to_bits(),
                w.to_bits()
            );
        }
        let mut y = y0.clone();
        with_acts!(&acts, |x| k.apply(prefs[0], x, &mut y, &mut scratch))
            .unwrap_or_else(|e| panic!("{k:?}: apply rejected valid input: {e}"));
        if let Some((i, g, w)) = first_bit_difference(&y, &want_all) {
            panic!(
                "{k:?}: apply differs from the reference at row {}, column {}: {g:e} ({:#010x}) \
                 vs {w:e} ({:#010x})",
                i / co,
                i % co,
                g.to_bits(),
                w.to_bits()
            );
        }
        if let Some((row, s, want_trace)) = &want_trace {
            let got = with_acts!(&acts, |x| k
                .trace_row(prefs[*s], &x[row * ci..(row + 1) * ci]))
            .unwrap_or_else(|e| panic!("{k:?}: trace_row rejected valid input: {e}"));
            assert_same_trace(&got, want_trace, &format!("{k:?}: trace_row of row {row}"));
        }
    }
}

/// The injected faults of [`check_kernels`]: 4 truncated activations, 5 a short output, 6 an
/// unknown skillpack index, 7 a skill list of the wrong length, a skillpack of another shape,
/// or no skillpack at all. Every kernel must return the typed error and leave `y` untouched.
#[allow(clippy::too_many_arguments)]
fn check_kernel_faults(
    fault: u8,
    param: usize,
    (t, ci, co): (usize, usize, usize),
    kernels: &[Kernel],
    refs: &[&CompressedLayer],
    prefs: &[&PackedLayer],
    skill: &[Option<usize>],
    acts: &Acts,
    xf: &[f32],
    y0: &[f32],
    non_finite: Option<usize>,
    scratch: &mut KernelScratch,
) {
    let shape = |r: &Result<(), Error>| matches!(r, Err(Error::ShapeMismatch { .. }));
    let untouched = |y: &[f32], what: &str| {
        assert!(
            y.iter().zip(y0).all(|(a, b)| a.to_bits() == b.to_bits()),
            "{what}: a rejected call wrote to the output"
        );
    };
    let mut y = y0.to_vec();
    match fault {
        4 => {
            let len = t * ci - (1 + param % (t * ci));
            let row_len = ci - (1 + param % ci);
            let r =
                runtime::apply_grouped(refs, skill, &xf[..len], &mut y, &mut Scratch::default());
            assert!(shape(&r), "reference on truncated activations: {r:?}");
            for k in kernels {
                let r = with_acts!(acts, |x| k.apply_grouped(
                    prefs,
                    skill,
                    &x[..len],
                    &mut y,
                    scratch
                ));
                assert!(
                    shape(&r),
                    "{k:?}: apply_grouped on {len} activations: {r:?}"
                );
                let r = with_acts!(acts, |x| k.apply(prefs[0], &x[..len], &mut y, scratch));
                assert!(shape(&r), "{k:?}: apply on {len} activations: {r:?}");
                let r = with_acts!(acts, |x| k.trace_row(prefs[0], &x[..row_len]));
                assert!(
                    matches!(r, Err(Error::ShapeMismatch { .. })),
                    "{k:?}: trace_row on a row of {row_len}: {r:?}"
                );
                untouched(&y, &format!("{k:?}"));
            }
        }
        5 => {
            let short = &mut y[..t * co - 1];
            let r = runtime::apply_grouped(refs, skill, xf, short, &mut Scratch::default());
            assert!(shape(&r), "reference on a short output: {r:?}");
            for k in kernels {
                let r = with_acts!(acts, |x| k.apply_grouped(prefs, skill, x, short, scratch));
                assert!(shape(&r), "{k:?}: apply_grouped on a short output: {r:?}");
                let r = with_acts!(acts, |x| k.apply(prefs[0], x, short, scratch));
                assert!(shape(&r), "{k:?}: apply on a short output: {r:?}");
                untouched(short, &format!("{k:?}"));
            }
        }
        6 => {
            let (row, index) = (param % t, prefs.len() + (param / t) % 4);
            let mut bad = skill.to_vec();
            bad[row] = Some(index);
            let want = Error::UnknownSkillpack {
                row,
                index,
                count: prefs.len(),
            };
            let r = runtime::apply_grouped(refs, &bad, xf, &mut y, &mut Scratch::default());
            match non_finite {
                Some(_) => assert!(matches!(r, Err(Error::NonFinite { .. })), "{r:?}"),
                None => assert_eq!(r, Err(want.clone()), "reference on an unknown skillpack"),
            }
            for k in kernels {
                let r = with_acts!(acts, |x| k.apply_grouped(prefs, &bad, x, &mut y, scratch));
                assert_eq!(
                    r,
                    Err(want.clone()),
                    "{k:?}: apply_grouped on an unknown skillpack"
                );
                untouched(&y, &format!("{k:?}"));
            }
        }
        _ => {
            let long: Vec<Option<usize>> = skill.iter().copied().chain([None]).collect();
            let other = CompressedLayer::new(
                None,
                Bits::Int8,
                ActScale::Dynamic,
                Quantized {
                    rows: 1,
                    cols: ci + 1,
                    bits: Bits::Int8,
                    granularity: Granularity::PerTensor,
                    codes: vec![1; ci + 1],
                    scales: vec![1.0],
                },
                Quantized {
                    rows: co,
                    cols: 1,
                    bits: Bits::Int8,
                    granularity: Granularity::PerTensor,
                    codes: vec![1; co],
                    scales: vec![1.0],
                },
                Truncation::Dynamic,
            )
            .expect("a well-formed layer is accepted");
            let other_packed = PackedLayer::new(&other);
            let mixed: Vec<&PackedLayer> = prefs.iter().copied().chain([&other_packed]).collect();
            let mixed_refs: Vec<&CompressedLayer> = refs.iter().copied().chain([&other]).collect();
            let variant = param % 3;
            let r = match variant {
                0 => runtime::apply_grouped(refs, &long, xf, &mut y, &mut Scratch::default()),
                1 => {
                    runtime::apply_grouped(&mixed_refs, skill, xf, &mut y, &mut Scratch::default())
                }
                _ => runtime::apply_grouped(&[], skill, xf, &mut y, &mut Scratch::default()),
            };
            match variant {
                // (The reference checks finiteness before the skill list's length.)
                0 => assert!(
                    non_finite.is_some() || shape(&r),
                    "reference on {} skills: {r:?}",
                    t + 1
                ),
                1 => assert!(shape(&r), "reference on mixed shapes: {r:?}"),
                _ => assert_eq!(
                    r,
                    Err(Error::Empty("skillpack list")),
                    "reference on no skillpack"
                ),
            }
            for k in kernels {
                let r = match variant {
                    0 => with_acts!(acts, |x| k.apply_grouped(prefs, &long, x, &mut y, scratch)),
                    1 => with_acts!(acts, |x| k.apply_grouped(&mixed, skill, x, &mut y, scratch)),
                    _ => with_acts!(acts, |x| k.apply_grouped(&[], skill, x, &mut y, scratch)),
                };
                match variant {
                    0 => assert!(shape(&r), "{k:?}: apply_grouped on {} skills: {r:?}", t + 1),
                    1 => assert!(shape(&r), "{k:?}: apply_grouped on mixed shapes: {r:?}"),
                    _ => assert_eq!(
                        r,
                        Err(Error::Empty("skillpack list")),
                        "{k:?}: apply_grouped on no skillpack"
                    ),
                }
                untouched(&y, &format!("{k:?}"));
            }
        }
    }
}
