//! The AVX2 path, and the 256-bit GEMM skeleton the AVX-VNNI path shares (`gemm256!`).
//!
//! AVX2 has no byte dot product with an i32 accumulator. `vpmaddubsw` multiplies unsigned
//! by signed bytes and adds *pairs* into a saturating i16, then `vpmaddwd` by ones widens the
//! pairs to i32. With the `x + 128` offset a pair can reach `2 · 255 · 127 = 64 770`, which
//! saturates. So this path uses the sign trick (DESIGN.md §4.6): the unsigned operand is `|x̂|`
//! and the sign moves onto the weight (`vpsignb`), giving pairs of at most `2 · 127² = 32 258`
//! — exact. Activation codes arrive signed (no offset).
//!
//! One 64-byte packed block is two 256-bit halves (columns 0–7 and 8–15). Register blocking:
//! up to 2 token rows × 2 tiles = 8 accumulators (16 vector registers without AVX-512).
//! Quantization here (8 lanes, tails in scalar) also serves the AVX-VNNI paths.

use std::arch::x86_64::*;

use super::scalar;
use crate::quant::Bits;

/// Whether the CPU runs this path.
pub(super) fn available() -> bool {
    is_x86_feature_detected!("avx2")
}

/// `max_i |x_i · s_i|`.
pub(super) fn amax(x: &[f32], s_inv: Option<&[f32]>) -> f32 {
    assert!(available(), "avx2 amax called without AVX2");
    if let Some(s) = s_inv {
        assert_eq!(s.len(), x.len(), "smoothing vector length");
    }
    // SAFETY: the CPU has AVX2 (checked above).
    unsafe { amax_impl(x, s_inv) }
}

#[target_feature(enable = "avx2")]
fn amax_impl(x: &[f32], s_inv: Option<&[f32]>) -> f32 {
    let body = x.len() / 8 * 8;
    let sign = _mm256_set1_ps(-0.0);
    let mut m = _mm256_setzero_ps();
    for i in (0..body).step_by(8) {
        // SAFETY: `i + 8 ≤ body ≤ len` for `x` and `s` (same length).
        let mut v = unsafe { _mm256_loadu_ps(x.as_ptr().add(i)) };
        if let Some(s) = s_inv {
            // SAFETY: as above.
            v = _mm256_mul_ps(v, unsafe { _mm256_loadu_ps(s.as_ptr().add(i)) });
        }
        m = _mm256_max_ps(m, _mm256_andnot_ps(sign, v));
    }
    let mut lanes = [0.0f32; 8];
    // SAFETY: `lanes` has 8 writable f32.
    unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), m) };
    let tail = scalar::amax(&x[body..], s_inv.map(|s| &s[body..]));
    lanes.iter().fold(tail, |a, &b| a.max(b))
}

/// `out_i = sat(rne((x_i · s_i) · inv))`, 32 lanes at a time (scalar tail). Clamping before
/// rounding equals rounding first: the bounds are integers and rounding is monotonic.
pub(super) fn quantize(x: &[f32], s_inv: Option<&[f32]>, inv: f32, bits: Bits, out: &mut [i8]) {
    assert!(available(), "avx2 quantize called without AVX2");
    assert_eq!(out.len(), x.len(), "code buffer length");
    if let Some(s) = s_inv {
        assert_eq!(s.len(), x.len(), "smoothing vector length");
    }
    // SAFETY: the CPU has AVX2 (checked above); lengths checked above.
    unsafe { quantize_impl(x, s_inv, inv, bits, out) }
}

#[target_feature(enable = "avx2")]
fn quantize_impl(x: &[f32], s_inv: Option<&[f32]>, inv: f32, bits: Bits, out: &mut [i8]) {
    let qmax = bits.qmax() as f32;
    let (vinv, hi, lo) = (
        _mm256_set1_ps(inv),
        _mm256_set1_ps(qmax),
        _mm256_set1_ps(-qmax),
    );
    let body = x.len() / 32 * 32;
    // After the two packs, dword d of lane l holds quarter (d, l); this restores the order.
    let unshuffle = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    for i in (0..body).step_by(32) {
        let mut q = [_mm256_setzero_si256(); 4];
        for (part, qp) in q.iter_mut().enumerate() {
            let at = i + 8 * part;
            // SAFETY: `at + 8 ≤ body ≤ len` for `x` and `s` (same length).
            let mut v = unsafe { _mm256_loadu_ps(x.as_ptr().add(at)) };
            if let Some(s) = s_inv {
                // SAFETY: as above.
                v = _mm256_mul_ps(v, unsafe { _mm256_loadu_ps(s.as_ptr().add(at)) });
            }
            // A smoothed value that overflowed to ±inf meets `inv = 0`: NaN, which the
            // reference turns into code 0 (`max_ps` would pick the bound), so zero it first.
            let p = _mm256_mul_ps(v, vinv);
            let p = _mm256_and_ps(p, _mm256_cmp_ps::<_CMP_ORD_Q>(p, p));
            let c = _mm256_min_ps(_mm256_max_ps(p, lo), hi);
            let r = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(c);
            *qp = _mm256_cvtps_epi32(r);
        }
        // Values are within ±127 already, so the saturating packs only narrow.
        let bytes = _mm256_packs_epi16(
            _mm256_packs_epi32(q[0], q[1]),
            _mm256_packs_epi32(q[2], q[3]),
        );
        let ordered = _mm256_permutevar8x32_epi32(bytes, unshuffle);
        // SAFETY: `i + 32 ≤ body ≤ out.len()`.
        unsafe { _mm256_storeu_si256(out.as_mut_ptr().add(i) as *mut __m256i, ordered) };
    }
    scalar::quantize(
        &x[body..],
        s_inv.map(|s| &s[body..]),
        inv,
        bits,
        &mut out[body..],
    );
}

/// Asks the cache hierarchy to fetch `values` into L2 ahead of use (`prefetcht1`, SSE: every
/// x86-64 CPU has it). Small skillpacks are read in two dependent phases (Â, then B̂ after
/// the truncation); prefetching everything at the start overlaps their DRAM latency.
pub(super) fn prefetch<T>(values: &[T]) {
    let bytes = std::mem::size_of_val(values);
    let base = values.as_ptr() as *const i8;
    for offset in (0..bytes).step_by(64) {
        // SAFETY: `offset < bytes`, so the address lies inside `values`; a prefetch never
        // faults and has no architectural effect.
        unsafe { _mm_prefetch::<_MM_HINT_T1>(base.add(offset)) };
    }
}

/// `acc + Σ_pairs (|x| · sign(w, x))`: four exact products of each 32-bit lane added to `acc`.
#[target_feature(enable = "avx2")]
#[inline]
fn sign_trick_step(acc: __m256i, xb: __m256i, w: __m256i) -> __m256i {
    let pairs = _mm256_maddubs_epi16(_mm256_abs_epi8(xb), _mm256_sign_epi8(w, xb));
    _mm256_add_epi32(acc, _mm256_madd_epi16(pairs, _mm256_set1_epi16(1)))
}

/// Generates `gemm`, `gemm_impl` and `micro` for a 256-bit path: `$features` enables the
/// instructions, `$step(acc, x_broadcast, w)` adds the four products of each lane, and
/// `$offset` says whether activation codes arrive as `x + 128` (then `128 · Σ_k w` is
/// subtracted at the end).
macro_rules! gemm256 {
    (features = $features:literal, step = $step:path, offset = $offset:literal) => {
        /// Exact integer GEMM of [`GemmArgs`].
        pub(in crate::kernels) fn gemm(args: GemmArgs<'_>) {
            assert!(
                available(),
                "256-bit gemm called on a CPU without its features"
            );
            args.validate();
            // SAFETY: the CPU has the features (checked above); `validate` guarantees that
            // every row `t < rows` of `x` has `k_padded` readable bytes at `t · x_stride`,
            // that the tiles exist in `w`, and that `out` holds `tiles × rows × 16` values —
            // the extents `micro` reads and writes.
            unsafe { gemm_impl(args) }
        }

        #[target_feature(enable = $features)]
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
            for j in (0..count).step_by(2) {
                let nt = (count - j).min(2);
                // K chunks: the chunk of the `nt` panels stays in L1 for every row block.
                for kc in (0..per).step_by(KC_BLOCKS) {
                    let chunk = Chunk {
                        blocks: kc..(kc + KC_BLOCKS).min(per),
                        first: kc == 0,
                        last: kc + KC_BLOCKS >= per,
                    };
                    for t in (0..rows).step_by(2) {
                        let tb = (rows - t).min(2);
                        // SAFETY: row block `t..t + tb` and tiles `j..j + nt` lie inside the
                        // extents `gemm` validated.
                        unsafe {
                            let x_row = x.as_ptr().add(t * x_stride);
                            let out_block = out.as_mut_ptr().add(j * out_tile_stride + t * TILE_N);
                            let tile = tiles.start + j;
                            let c = chunk.clone();
                            match (tb, nt) {
                                (1, 1) => micro::<1, 1>(
                                    x_row,
                                    x_stride,
                                    w,
                                    tile,
                                    c,
                                    out_block,
                                    out_tile_stride,
                                ),
                                (1, 2) => micro::<1, 2>(
                                    x_row,
                                    x_stride,
                                    w,
                                    tile,
                                    c,
                                    out_block,
                                    out_tile_stride,
                                ),
                                (2, 1) => micro::<2, 1>(
                                    x_row,
                                    x_stride,
                                    w,
                                    tile,
                                    c,
                                    out_block,
                                    out_tile_stride,
                                ),
                                _ => micro::<2, 2>(
                                    x_row,
                                    x_stride,
                                    w,
                                    tile,
                                    c,
                                    out_block,
                                    out_tile_stride,
                                ),
                            }
                        }
                    }
                }
            }
        }

        /// Broadcasts the 4 activation bytes at `p` to all 8 lanes.
        ///
        /// # Safety
        /// `p..p + 4` must be readable.
        #[target_feature(enable = $features)]
        #[inline]
        unsafe fn broadcast4(p: *const i8) -> __m256i {
            // SAFETY: the caller guarantees 4 readable bytes.
            _mm256_set1_epi32(unsafe { (p as *const i32).read_unaligned() })
        }

        /// `TB` rows × `NT` tiles (two 8-column halves each) over the blocks of `chunk`,
        /// accumulators in registers (starting from the partial sums in `out` unless
        /// `chunk.first`; an offset correction is applied after `chunk.last`).
        ///
        /// # Safety
        /// The features are present; rows `0..TB` of `x` (stride `xs`) have `w.k_padded()`
        /// readable bytes; tiles `tile0..tile0 + NT` exist in `w` and `chunk.blocks` lies
        /// within their panels; `out + j·ots + t·16` is readable and writable for 16 lanes
        /// for every `j < NT`, `t < TB`.
        #[target_feature(enable = $features)]
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
            let mut acc = [[[_mm256_setzero_si256(); 2]; NT]; TB];
            if !chunk.first {
                for (t, acc_t) in acc.iter_mut().enumerate() {
                    for (j, acc_tj) in acc_t.iter_mut().enumerate() {
                        for (h, a) in acc_tj.iter_mut().enumerate() {
                            // SAFETY: the caller guarantees 16 readable lanes at
                            // `out + j·ots + t·16`; this half reads 8 of them.
                            *a = unsafe {
                                _mm256_loadu_si256(
                                    out.add(j * ots + t * TILE_N + 8 * h) as *const __m256i
                                )
                            };
                        }
                    }
                }
            }
            let per = w.blocks_per_tile();
            let panel0 = w.panel(tile0).as_ptr() as *const __m256i;
            // Half `h` of block `b` of tile `tile0 + j`.
            let half = |j: usize, b: usize, h: usize| 2 * (j * per + b) + h;
            if w.is_nibbles() {
                let lut = _mm256_setr_epi8(
                    0, 1, 2, 3, 4, 5, 6, 7, -8, -7, -6, -5, -4, -3, -2, -1, 0, 1, 2, 3, 4, 5, 6, 7,
                    -8, -7, -6, -5, -4, -3, -2, -1,
                );
                let nibble = _mm256_set1_epi8(0x0f);
                for p in chunk.blocks.clone() {
                    let mut lo = [[_mm256_setzero_si256(); 2]; NT];
                    let mut hi = [[_mm256_setzero_si256(); 2]; NT];
                    for j in 0..NT {
                        for h in 0..2 {
                            // SAFETY: half `h` of block `p < per` of tile `tile0 + j`.
                            let raw = unsafe { _mm256_load_si256(panel0.add(half(j, p, h))) };
                            lo[j][h] = _mm256_shuffle_epi8(lut, _mm256_and_si256(raw, nibble));
                            hi[j][h] = _mm256_shuffle_epi8(
                                lut,
                                _mm256_and_si256(_mm256_srli_epi16::<4>(raw), nibble),
                            );
                        }
                    }
                    for (t, acc_t) in acc.iter_mut().enumerate() {
                        // SAFETY: bytes `8p..8p + 8 ≤ k_padded` of row `t`.
                        let (x0, x1) = unsafe {
                            let row = x.add(t * xs + 2 * GROUP_K * p);
                            (broadcast4(row), broadcast4(row.add(GROUP_K)))
                        };
                        for j in 0..NT {
                            for h in 0..2 {
                                acc_t[j][h] = $step(acc_t[j][h], x0, lo[j][h]);
                                acc_t[j][h] = $step(acc_t[j][h], x1, hi[j][h]);
                            }
                        }
                    }
                }
            } else {
                for g in chunk.blocks.clone() {
                    for j in 0..NT {
                        // Software prefetch one chunk ahead in every row block (see avx512.rs);
                        // `wrapping_add` keeps the address defined past the panel's end.
                        let ahead = panel0.wrapping_add(2 * (j * per + g + KC_BLOCKS));
                        _mm_prefetch::<_MM_HINT_T0>(ahead as *const i8);
                    }
                    let mut wv = [[_mm256_setzero_si256(); 2]; NT];
                    for j in 0..NT {
                        for h in 0..2 {
                            // SAFETY: half `h` of block `g < per` of tile `tile0 + j`.
                            wv[j][h] = unsafe { _mm256_load_si256(panel0.add(half(j, g, h))) };
                        }
                    }
                    for (t, acc_t) in acc.iter_mut().enumerate() {
                        // SAFETY: bytes `4g..4g + 4 ≤ k_padded` of row `t`.
                        let xb = unsafe { broadcast4(x.add(t * xs + GROUP_K * g)) };
                        for j in 0..NT {
                            for h in 0..2 {
                                acc_t[j][h] = $step(acc_t[j][h], xb, wv[j][h]);
                            }
                        }
                    }
                }
            }
            for j in 0..NT {
                for h in 0..2 {
                    let correction = if $offset && chunk.last {
                        // SAFETY: `col_sums` has 16 entries per tile; tile `tile0 + j` exists.
                        let sums = unsafe {
                            _mm256_loadu_si256(
                                w.col_sums().as_ptr().add((tile0 + j) * TILE_N + 8 * h)
                                    as *const __m256i,
                            )
                        };
                        _mm256_slli_epi32::<7>(sums)
                    } else {
                        _mm256_setzero_si256()
                    };
                    for (t, acc_t) in acc.iter().enumerate() {
                        // SAFETY: the caller guarantees 16 writable lanes at
                        // `out + j·ots + t·16`; this half writes 8 of them.
                        unsafe {
                            _mm256_storeu_si256(
                                out.add(j * ots + t * TILE_N + 8 * h) as *mut __m256i,
                                _mm256_sub_epi32(acc_t[j][h], correction),
                            )
                        };
                    }
                }
            }
        }
    };
}
pub(super) use gemm256;

mod kernel {
    use std::arch::x86_64::*;

    use super::super::pack::{GROUP_K, PackedMatrix, TILE_N};
    use super::super::{Chunk, GemmArgs, KC_BLOCKS};
    use super::{available, sign_trick_step};

    gemm256!(features = "avx2", step = sign_trick_step, offset = false);
}
pub(super) use kernel::gemm;
