//! The AVX-VNNI path: `vpdpbusd` on 256-bit vectors, on the 256-bit skeleton of
//! [`super::avx2`] (`gemm256!`). Activation codes arrive offset (`x + 128`); the sums wrap in
//! i32 and the `128 · Σ_k w` correction makes them exact, as on the AVX-512 path.
//!
//! Two instantiations of the same code: [`vex`] uses the VEX encoding (`avxvnni`, CPUs
//! without AVX-512), [`evex`] the EVEX encoding of the same instruction (`avx512vnni` +
//! `avx512vl`). Their semantics are identical, so testing `evex` on an AVX-512 machine tests
//! the AVX-VNNI kernel's code everywhere but the instruction encoding.

/// The VEX-encoded (AVX-VNNI) instantiation.
pub(super) mod vex {
    use std::arch::x86_64::*;

    use super::super::avx2::gemm256;
    use super::super::pack::{GROUP_K, PackedMatrix, TILE_N};
    use super::super::{Chunk, GemmArgs, KC_BLOCKS};

    /// Whether the CPU runs this path.
    pub(in super::super) fn available() -> bool {
        is_x86_feature_detected!("avx2") && is_x86_feature_detected!("avxvnni")
    }

    /// `acc + Σ (x + 128)·w` over the four bytes of each lane.
    #[target_feature(enable = "avx2,avxvnni")]
    #[inline]
    fn step(acc: __m256i, xb: __m256i, w: __m256i) -> __m256i {
        _mm256_dpbusd_avx_epi32(acc, xb, w)
    }

    gemm256!(features = "avx2,avxvnni", step = step, offset = true);
}

/// The EVEX-encoded (AVX-512 VL) instantiation of the same kernel.
pub(super) mod evex {
    use std::arch::x86_64::*;

    use super::super::avx2::gemm256;
    use super::super::pack::{GROUP_K, PackedMatrix, TILE_N};
    use super::super::{Chunk, GemmArgs, KC_BLOCKS};

    /// Whether the CPU runs this path.
    pub(in super::super) fn available() -> bool {
        is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512vl")
            && is_x86_feature_detected!("avx512vnni")
    }

    /// `acc + Σ (x + 128)·w` over the four bytes of each lane.
    #[target_feature(enable = "avx2,avx512f,avx512vl,avx512vnni")]
    #[inline]
    fn step(acc: __m256i, xb: __m256i, w: __m256i) -> __m256i {
        _mm256_dpbusd_epi32(acc, xb, w)
    }

    gemm256!(
        features = "avx2,avx512f,avx512vl,avx512vnni",
        step = step,
        offset = true
    );
}
