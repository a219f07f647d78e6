//! The portable path: plain Rust over the packed layout, and the tail handler of the SIMD
//! quantizers. Activation codes arrive signed (no offset).

use super::GemmArgs;
use super::pack::{GROUP_K, TILE_N};
use crate::quant::{Bits, quantize_value};

/// `max_i |x_i · s_i|`, the reference's fold.
pub(super) fn amax(x: &[f32], s_inv: Option<&[f32]>) -> f32 {
    match s_inv {
        Some(s) => x
            .iter()
            .zip(s)
            .fold(0.0f32, |m, (v, s)| m.max((v * s).abs())),
        None => x.iter().fold(0.0f32, |m, v| m.max(v.abs())),
    }
}

/// `sat(rne((x_i · s_i) · inv))` through the crate's one quantization rule.
pub(super) fn quantize(x: &[f32], s_inv: Option<&[f32]>, inv: f32, bits: Bits, out: &mut [i8]) {
    match s_inv {
        Some(s) => {
            for ((o, v), s) in out.iter_mut().zip(x).zip(s) {
                *o = quantize_value(v * s, inv, bits);
            }
        }
        None => {
            for (o, v) in out.iter_mut().zip(x) {
                *o = quantize_value(*v, inv, bits);
            }
        }
    }
}

/// Sign-extends the low nibble of a byte.
fn nibble(byte: u8, high: bool) -> i32 {
    let v = if high { byte >> 4 } else { byte & 0x0f };
    (((v << 4) as i8) >> 4) as i32
}

pub(super) fn gemm(args: GemmArgs<'_>) {
    args.validate();
    let GemmArgs {
        x,
        x_stride,
        rows,
        w,
        tiles,
        out,
    } = args;
    let k_padded = w.k_padded();
    for (j, tile) in tiles.enumerate() {
        let panel = w.panel(tile);
        for t in 0..rows {
            let x_row = &x[t * x_stride..t * x_stride + k_padded];
            let mut acc = [0i32; TILE_N];
            for (c, a) in acc.iter_mut().enumerate() {
                let lane = GROUP_K * c;
                *a = if w.is_nibbles() {
                    (0..k_padded)
                        .map(|k| {
                            let byte = panel[k / (2 * GROUP_K)].0[lane + k % GROUP_K];
                            x_row[k] as i32 * nibble(byte, (k / GROUP_K) % 2 == 1)
                        })
                        .sum()
                } else {
                    (0..k_padded)
                        .map(|k| {
                            x_row[k] as i32 * panel[k / GROUP_K].0[lane + k % GROUP_K] as i8 as i32
                        })
                        .sum()
                };
            }
            out[(j * rows + t) * TILE_N..][..TILE_N].copy_from_slice(&acc);
        }
    }
}
