//! Invariant checks over arbitrary bytes, shared by the cargo-fuzz targets in `fuzz/` and by
//! the test that replays their corpora (so the targets never rot). Each function decodes
//! shapes and values from the bytes, runs the public API and **panics** when an invariant is
//! violated — which is what a fuzzer looks for. Invalid inputs must come back as typed errors,
//! never as panics inside the library.

use faer::Mat;

use crate::Error;
use crate::layer::{CompressedLayer, Truncation};
use crate::quant::{ActScale, Bits, Granularity, Quantized, pack_int4, truncate_row, unpack_int4};
use crate::runtime::{Scratch, apply, apply_batched, trace_row};

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
