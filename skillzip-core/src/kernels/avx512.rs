//! The AVX-512 VNNI path: `vpdpbusd` on 512-bit vectors, one 64-byte packed block (16
//! columns × 4 K) per instruction, activations broadcast four bytes at a time.
//!
//! `vpdpbusd` multiplies unsigned by signed bytes, so activation codes arrive offset
//! (`x + 128`, see [`super::pack`]); the sums wrap in i32 and the `128 · Σ_k w` correction
//! brings them back to the exact value, which fits an i32 (`C_i ≤ 133 144`).
//! Register blocking: up to 4 token rows × 4 tiles = 16 accumulators.

use std::arch::x86_64::*;

use super::pack::{GROUP_K, PackedMatrix, TILE_N};
use super::{Chunk, GemmArgs, KC_BLOCKS};
use crate::quant::Bits;

/// Whether the CPU runs this path.
pub(super) fn available() -> bool {
    is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vnni")
}

/// Mask of the first `k ≤ 16` lanes.
fn lanes(k: usize) -> __mmask16 {
    if k >= 16 { 0xffff } else { (1u16 << k) - 1 }
}

/// `max_i |x_i · s_i|`.
pub(super) fn amax(x: &[f32], s_inv: Option<&[f32]>) -> f32 {
    assert!(available(), "avx512 amax called without AVX-512");
    if let Some(s) = s_inv {
        assert_eq!(s.len(), x.len(), "smoothing vector length");
    }
    // SAFETY: the CPU has AVX-512F (checked above).
    unsafe { amax_impl(x, s_inv) }
}

#[target_feature(enable = "avx512f")]
fn amax_impl(x: &[f32], s_inv: Option<&[f32]>) -> f32 {
    let mut m = _mm512_setzero_ps();
    for i in (0..x.len()).step_by(16) {
        let mask = lanes(x.len() - i);
        // SAFETY: `i < x.len()`, and the mask enables only lanes `i..min(i + 16, len)` of `x`
        // (and of `s`, which has the same length); disabled lanes are not read. They load as
        // zero and leave the maximum (which starts at 0) unchanged.
        let mut v = unsafe { _mm512_maskz_loadu_ps(mask, x.as_ptr().add(i)) };
        if let Some(s) = s_inv {
            // SAFETY: as above.
            v = _mm512_mul_ps(v, unsafe { _mm512_maskz_loadu_ps(mask, s.as_ptr().add(i)) });
        }
        m = _mm512_max_ps(m, _mm512_abs_ps(v));
    }
    _mm512_reduce_max_ps(m)
}

/// `out_i = sat(rne((x_i · s_i) · inv))`. Clamping to `±qmax` before rounding equals
/// rounding first: both bounds are integers and rounding is monotonic.
pub(super) fn quantize(x: &[f32], s_inv: Option<&[f32]>, inv: f32, bits: Bits, out: &mut [i8]) {
    assert!(available(), "avx512 quantize called without AVX-512");
    assert_eq!(out.len(), x.len(), "code buffer length");
    if let Some(s) = s_inv {
        assert_eq!(s.len(), x.len(), "smoothing vector length");
    }
    // SAFETY: the CPU has AVX-512F/BW (checked above); lengths checked above.
    unsafe { quantize_impl(x, s_inv, inv, bits.qmax() as f32, out) }
}

#[target_feature(enable = "avx512f,avx512bw")]
fn quantize_impl(x: &[f32], s_inv: Option<&[f32]>, inv: f32, qmax: f32, out: &mut [i8]) {
    let (vinv, hi, lo) = (
        _mm512_set1_ps(inv),
        _mm512_set1_ps(qmax),
        _mm512_set1_ps(-qmax),
    );
    for i in (0..x.len()).step_by(16) {
        let mask = lanes(x.len() - i);
        // SAFETY: masked to lanes `i..min(i + 16, len)` of `x` and `s` (same length).
        let mut v = unsafe { _mm512_maskz_loadu_ps(mask, x.as_ptr().add(i)) };
        if let Some(s) = s_inv {
            // SAFETY: as above.
            v = _mm512_mul_ps(v, unsafe { _mm512_maskz_loadu_ps(mask, s.as_ptr().add(i)) });
        }
        // `x·s⁻¹` can overflow to ±inf for finite inputs; then `inv = 0` and the product is
        // NaN, which the reference's `as i8` turns into 0. `max_ps` would pick the bound
        // instead, so NaN lanes are zeroed first.
        let p = _mm512_mul_ps(v, vinv);
        let p = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask::<_CMP_ORD_Q>(p, p), p);
        let q = _mm512_min_ps(_mm512_max_ps(p, lo), hi);
        let codes =
            _mm512_cvt_roundps_epi32::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(q);
        // SAFETY: masked to lanes `i..min(i + 16, len)` of `out` (same length as `x`).
        unsafe { _mm512_mask_cvtepi32_storeu_epi8(out.as_mut_ptr().add(i), mask, codes) };
    }
}

/// Exact integer GEMM of [`GemmArgs`] (offset activation codes).
pub(super) fn gemm(args: GemmArgs<'_>) {
    assert!(available(), "avx512 gemm called without AVX-512 VNNI");
    args.validate();
    // SAFETY: the CPU has AVX-512F/BW/VNNI (checked above); `validate` guarantees that every
    // row `t < rows` of `x` has `k_padded` readable bytes at `t · x_stride`, that the tiles
    // exist in `w`, and that `out` holds `tiles × rows × 16` values — the extents `micro`
    // reads and writes.
    unsafe { gemm_impl(args) }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn gemm_impl(args: GemmArgs<'_>) {
    let GemmArgs {
        x,
        x_stride,
        rows,
        w,
        tiles,
        out,
    } = args;
    let out_tile_stride = rows * TILE_N;
    let count = tiles.len();
    let per = w.blocks_per_tile();
    for j in (0..count).step_by(4) {
        let nt = (count - j).min(4);
        // K chunks of `KC_BLOCKS` blocks: the chunk of the `nt` panels stays in L1 while
        // every row block uses it; partial sums wait in `out`.
        for kc in (0..per).step_by(KC_BLOCKS) {
            let chunk = Chunk {
                blocks: kc..(kc + KC_BLOCKS).min(per),
                first: kc == 0,
                last: kc + KC_BLOCKS >= per,
            };
            for t in (0..rows).step_by(4) {
                let tb = (rows - t).min(4);
                // SAFETY: row block `t..t + tb` and tiles `j..j + nt` lie inside the extents
                // `gemm` validated; `micro` reads `tb` rows × `k_padded` bytes from `x_row`
                // and reads/writes `nt` tiles × `tb` rows × 16 lanes at `out_block`.
                unsafe {
                    let x_row = x.as_ptr().add(t * x_stride);
                    let out_block = out.as_mut_ptr().add(j * out_tile_stride + t * TILE_N);
                    let tile = tiles.start + j;
                    let c = chunk.clone();
                    macro_rules! call {
                        ($($tb:literal, $nt:literal);*) => {
                            match (tb, nt) {
                                $(($tb, $nt) => micro::<$tb, $nt>(x_row, x_stride, w, tile, c, out_block, out_tile_stride),)*
                                _ => unreachable!("blocks are at most 4 × 4"),
                            }
                        };
                    }
                    call!(1, 1; 1, 2; 1, 3; 1, 4; 2, 1; 2, 2; 2, 3; 2, 4;
                          3, 1; 3, 2; 3, 3; 3, 4; 4, 1; 4, 2; 4, 3; 4, 4);
                }
            }
        }
    }
}

/// Broadcasts the 4 activation bytes at `p` to all 16 lanes.
///
/// # Safety
/// `p..p + 4` must be readable.
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn broadcast4(p: *const i8) -> __m512i {
    // SAFETY: the caller guarantees 4 readable bytes; the read is unaligned-tolerant.
    _mm512_set1_epi32(unsafe { (p as *const i32).read_unaligned() })
}

/// `TB` rows × `NT` tiles of the GEMM over the blocks of `chunk`, accumulators in registers
/// (starting from the partial sums in `out` unless `chunk.first`; the VNNI correction is
/// applied after `chunk.last`).
///
/// # Safety
/// AVX-512F/BW/VNNI present; rows `0..TB` of `x` (stride `xs`) have `w.k_padded()` readable
/// bytes; tiles `tile0..tile0 + NT` exist in `w` and `chunk.blocks` lies within their panels;
/// `out + j·ots + t·16` is readable and writable for 16 lanes for every `j < NT`, `t < TB`.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
#[inline]
unsafe fn micro<const TB: usize, const NT: usize>(
    x: *const i8,
    xs: usize,
    w: &PackedMatrix,
    tile0: usize,
    chunk: Chunk,
    out: *mut i32,
    ots: usize,
) {
    let mut acc = [[_mm512_setzero_si512(); NT]; TB];
    if !chunk.first {
        for (t, acc_t) in acc.iter_mut().enumerate() {
            for (j, a) in acc_t.iter_mut().enumerate() {
                // SAFETY: the caller guarantees 16 readable lanes at `out + j·ots + t·16`.
                *a = unsafe { _mm512_loadu_si512(out.add(j * ots + t * TILE_N) as *const __m512i) };
            }
        }
    }
    let per = w.blocks_per_tile();
    let panel0 = w.panel(tile0).as_ptr();
    if w.is_nibbles() {
        let lut = _mm512_broadcast_i32x4(_mm_setr_epi8(
            0, 1, 2, 3, 4, 5, 6, 7, -8, -7, -6, -5, -4, -3, -2, -1,
        ));
        let nibble = _mm512_set1_epi8(0x0f);
        for p in chunk.blocks.clone() {
            let mut lo = [_mm512_setzero_si512(); NT];
            let mut hi = [_mm512_setzero_si512(); NT];
            for j in 0..NT {
                // SAFETY: block `p < per` of tile `tile0 + j` (panels are contiguous, 64-byte
                // aligned blocks).
                let raw = unsafe { _mm512_load_si512(panel0.add(j * per + p) as *const __m512i) };
                lo[j] = _mm512_shuffle_epi8(lut, _mm512_and_si512(raw, nibble));
                hi[j] =
                    _mm512_shuffle_epi8(lut, _mm512_and_si512(_mm512_srli_epi16::<4>(raw), nibble));
            }
            for (t, acc_t) in acc.iter_mut().enumerate() {
                // SAFETY: bytes `8p..8p + 8 ≤ k_padded` of row `t`.
                let (x0, x1) = unsafe {
                    let row = x.add(t * xs + 2 * GROUP_K * p);
                    (broadcast4(row), broadcast4(row.add(GROUP_K)))
                };
                for j in 0..NT {
                    acc_t[j] = _mm512_dpbusd_epi32(acc_t[j], x0, lo[j]);
                    acc_t[j] = _mm512_dpbusd_epi32(acc_t[j], x1, hi[j]);
                }
            }
        }
    } else {
        for g in chunk.blocks.clone() {
            for j in 0..NT {
                // Software prefetch one chunk ahead, spread over the k loop of every row block
                // (issued all at once in the first one, it stalls that block on memory).
                // `wrapping_add` keeps the address defined past the panel's end; a prefetch
                // never faults.
                let ahead = panel0.wrapping_add(j * per + g + KC_BLOCKS);
                _mm_prefetch::<_MM_HINT_T0>(ahead as *const i8);
            }
            let mut wv = [_mm512_setzero_si512(); NT];
            for (j, v) in wv.iter_mut().enumerate() {
                // SAFETY: block `g < per` of tile `tile0 + j`.
                *v = unsafe { _mm512_load_si512(panel0.add(j * per + g) as *const __m512i) };
            }
            for (t, acc_t) in acc.iter_mut().enumerate() {
                // SAFETY: bytes `4g..4g + 4 ≤ k_padded` of row `t`.
                let xb = unsafe { broadcast4(x.add(t * xs + GROUP_K * g)) };
                for j in 0..NT {
                    acc_t[j] = _mm512_dpbusd_epi32(acc_t[j], xb, wv[j]);
                }
            }
        }
    }
    for j in 0..NT {
        let correction = if chunk.last {
            // SAFETY: `col_sums` has 16 entries per tile; tile `tile0 + j` exists.
            let sums = unsafe {
                _mm512_loadu_si512(w.col_sums().as_ptr().add((tile0 + j) * TILE_N) as *const __m512i)
            };
            _mm512_slli_epi32::<7>(sums)
        } else {
            _mm512_setzero_si512()
        };
        for (t, acc_t) in acc.iter().enumerate() {
            // SAFETY: the caller guarantees 16 writable lanes at `out + j·ots + t·16`.
            unsafe {
                _mm512_storeu_si512(
                    out.add(j * ots + t * TILE_N) as *mut __m512i,
                    _mm512_sub_epi32(acc_t[j], correction),
                )
            };
        }
    }
}
