//! [`PackedSkillpack`]: a [`CompressedLayer`] in the packed device layout of `ptx/README.md`,
//! built on the host (no GPU needed, so every byte is testable anywhere).
//!
//! - `Â`: `Rp_pad` rows × `Ci_pad` bytes (INT8), row `r` = `Â[r, :]`, K = `C_i` contiguous;
//! - `B̂`: `C_o` rows × `Rp_pad` bytes (INT8), row `o` = `B̂[o, :]`, K = `R` contiguous;
//! - INT4 (a grid of at most 4 bits, i.e. `qmax ≤ 7`): the same rows with half the bytes. Each
//!   group of 32 K values `k = 32g + i` takes 16 bytes; byte `4q + j` holds
//!   `k = 32g + 4q + j` in its low nibble and `k = 32g + 16 + 4q + j` in its high nibble —
//!   i.e. byte `b` of a group holds `k = 32g + b` (low) and `k = 32g + 16 + b` (high);
//! - zeros in every padding position (`pad32` of `C_i` and `R`);
//! - `s⁻¹` f32 `[C_i]` or none, `σ_B` f32 `[C_o]` (a per-tensor scale expanded);
//! - the 64-byte descriptor ([`PackedSkillpack::descriptor_bytes`]).

use skillzip_core::layer::{CompressedLayer, Truncation};
use skillzip_core::quant::ActScale;

use crate::error::{Error, Result};

/// The padding granule of `C_i` and `R`: one `mma.m16n8k32` K step.
pub const PAD: usize = 32;

/// Bytes of one skillpack descriptor.
pub const DESCRIPTOR_BYTES: usize = 64;

/// Descriptor flag bit 0: static activation scale (`amax` read from the descriptor).
pub const FLAG_STATIC_ACT: u32 = 1 << 0;
/// Descriptor flag bit 1: static truncation (`M` read from the descriptor).
pub const FLAG_STATIC_TRUNC: u32 = 1 << 1;
/// Descriptor flag bit 2: `Â` is INT4-packed.
pub const FLAG_A_INT4: u32 = 1 << 2;
/// Descriptor flag bit 3: `B̂` is INT4-packed.
pub const FLAG_B_INT4: u32 = 1 << 3;

/// `⌈n/32⌉·32`.
pub const fn pad32(n: usize) -> usize {
    n.div_ceil(PAD) * PAD
}

/// Packs one row of i8 codes (`codes.len() ≤ k_pad`, `k_pad` a multiple of 32) into `k_pad`
/// bytes, zeros after the codes.
pub fn pack_row_int8(codes: &[i8], k_pad: usize, out: &mut Vec<u8>) {
    debug_assert!(codes.len() <= k_pad);
    out.extend(codes.iter().map(|&c| c as u8));
    out.extend(std::iter::repeat_n(0u8, k_pad - codes.len()));
}

/// Packs one row of codes in `[-8, 7]` (`codes.len() ≤ k_pad`, `k_pad` a multiple of 32) into
/// `k_pad / 2` bytes in the INT4 nibble order of `ptx/README.md`, zeros after the codes.
pub fn pack_row_int4(codes: &[i8], k_pad: usize, out: &mut Vec<u8>) {
    debug_assert!(codes.len() <= k_pad && k_pad.is_multiple_of(PAD));
    let code = |k: usize| codes.get(k).map_or(0u8, |&c| (c as u8) & 0x0F);
    for g in 0..k_pad / PAD {
        for b in 0..16 {
            let lo = code(PAD * g + b);
            let hi = code(PAD * g + 16 + b);
            out.push(lo | (hi << 4));
        }
    }
}

/// Inverse of [`pack_row_int4`]: `bytes.len() · 2` codes (sign-extended nibbles).
pub fn unpack_row_int4(bytes: &[u8]) -> Vec<i8> {
    let nib = |v: u8| ((v << 4) as i8) >> 4;
    let mut out = vec![0i8; bytes.len() * 2];
    for (g, group) in bytes.chunks(16).enumerate() {
        for (b, &v) in group.iter().enumerate() {
            out[PAD * g + b] = nib(v & 0x0F);
            out[PAD * g + 16 + b] = nib(v >> 4);
        }
    }
    out
}

/// A skillpack layer in the packed layout of `ptx/README.md`, on the host.
#[derive(Debug, Clone, PartialEq)]
pub struct PackedSkillpack {
    c_in: usize,
    ci_pad: usize,
    rank: usize,
    rank_pad: usize,
    c_out: usize,
    a: Vec<u8>,
    b: Vec<u8>,
    a_int4: bool,
    b_int4: bool,
    s_inv: Option<Vec<f32>>,
    sigma_b: Vec<f32>,
    sigma_a: f32,
    act_qmax: u32,
    static_amax: Option<f32>,
    static_m: Option<u64>,
}

fn fits_u32(what: &str, v: usize) -> Result<()> {
    u32::try_from(v).map(|_| ()).map_err(|_| {
        Error::InvalidInput(format!(
            "{what} = {v} does not fit the kernels' 32-bit parameter"
        ))
    })
}

impl PackedSkillpack {
    /// Packs `layer`. `Â`/`B̂` with a grid of at most 4 bits (`qmax ≤ 7`: INT4, INT3, INT2)
    /// are INT4-packed, others INT8.
    ///
    /// Errors ([`Error::InvalidInput`]) when a dimension does not fit the kernels' 32-bit
    /// parameters or a code lies outside its grid (a [`CompressedLayer`] validated by
    /// `CompressedLayer::new` always passes).
    pub fn new(layer: &CompressedLayer) -> Result<Self> {
        let (c_in, rank, c_out) = (layer.c_in(), layer.rank(), layer.c_out());
        let (ci_pad, rank_pad) = (pad32(c_in), pad32(rank));
        fits_u32("C_i (padded)", ci_pad)?;
        fits_u32("R (padded)", rank_pad)?;
        fits_u32("C_o", c_out)?;
        let (qa, qb) = (layer.a(), layer.b());
        if qa.codes.len() != rank * c_in || qb.codes.len() != c_out * rank {
            return Err(Error::InvalidInput(format!(
                "factor codes hold {} / {} values, expected {} (R × C_i) / {} (C_o × R)",
                qa.codes.len(),
                qb.codes.len(),
                rank * c_in,
                c_out * rank
            )));
        }
        let a_int4 = qa.bits.qmax() <= 7;
        let b_int4 = qb.bits.qmax() <= 7;
        for (what, q) in [("Â", qa), ("B̂", qb)] {
            let qmax = q.bits.qmax();
            if let Some(c) = q.codes.iter().find(|c| (**c as i32).abs() > qmax) {
                return Err(Error::InvalidInput(format!(
                    "{what} holds the code {c} outside [-{qmax}, {qmax}]"
                )));
            }
        }
        let a_row_bytes = if a_int4 { ci_pad / 2 } else { ci_pad };
        let b_row_bytes = if b_int4 { rank_pad / 2 } else { rank_pad };
        let mut a = Vec::with_capacity(rank_pad * a_row_bytes);
        for r in 0..rank_pad {
            let codes: &[i8] = if r < rank {
                &qa.codes[r * c_in..(r + 1) * c_in]
            } else {
                &[]
            };
            if a_int4 {
                pack_row_int4(codes, ci_pad, &mut a);
            } else {
                pack_row_int8(codes, ci_pad, &mut a);
            }
        }
        let mut b = Vec::with_capacity(c_out * b_row_bytes);
        for o in 0..c_out {
            let codes = &qb.codes[o * rank..(o + 1) * rank];
            if b_int4 {
                pack_row_int4(codes, rank_pad, &mut b);
            } else {
                pack_row_int8(codes, rank_pad, &mut b);
            }
        }
        let sigma_b = (0..c_out).map(|o| layer.b_scale(o)).collect();
        let static_amax = match layer.act_scale() {
            ActScale::Static { amax } => Some(amax),
            ActScale::Dynamic => None,
        };
        let static_m = match layer.truncation() {
            Truncation::Static { m } => Some(m),
            Truncation::Dynamic => None,
        };
        Ok(Self {
            c_in,
            ci_pad,
            rank,
            rank_pad,
            c_out,
            a,
            b,
            a_int4,
            b_int4,
            s_inv: layer.s_inv().map(<[f32]>::to_vec),
            sigma_b,
            sigma_a: qa.scales[0],
            act_qmax: layer.act_bits().qmax() as u32,
            static_amax,
            static_m,
        })
    }

    /// Input channels `C_i`.
    pub fn c_in(&self) -> usize {
        self.c_in
    }

    /// `Ci_pad = pad32(C_i)`.
    pub fn ci_pad(&self) -> usize {
        self.ci_pad
    }

    /// Rank `R`.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// `Rp_pad = pad32(R)`.
    pub fn rank_pad(&self) -> usize {
        self.rank_pad
    }

    /// Output channels `C_o`.
    pub fn c_out(&self) -> usize {
        self.c_out
    }

    /// Packed `Â`: `Rp_pad` rows of `Ci_pad` bytes (INT8) or `Ci_pad / 2` bytes (INT4).
    pub fn a_bytes(&self) -> &[u8] {
        &self.a
    }

    /// Packed `B̂`: `C_o` rows of `Rp_pad` bytes (INT8) or `Rp_pad / 2` bytes (INT4).
    pub fn b_bytes(&self) -> &[u8] {
        &self.b
    }

    /// Whether `Â` is INT4-packed.
    pub fn a_int4(&self) -> bool {
        self.a_int4
    }

    /// Whether `B̂` is INT4-packed.
    pub fn b_int4(&self) -> bool {
        self.b_int4
    }

    /// Bytes of one packed `Â` row.
    pub fn a_row_bytes(&self) -> usize {
        if self.a_int4 {
            self.ci_pad / 2
        } else {
            self.ci_pad
        }
    }

    /// Bytes of one packed `B̂` row.
    pub fn b_row_bytes(&self) -> usize {
        if self.b_int4 {
            self.rank_pad / 2
        } else {
            self.rank_pad
        }
    }

    /// The smoothing reciprocals `s⁻¹` (`C_i`), if smoothing is on.
    pub fn s_inv(&self) -> Option<&[f32]> {
        self.s_inv.as_deref()
    }

    /// `σ_B` expanded to `C_o` entries.
    pub fn sigma_b(&self) -> &[f32] {
        &self.sigma_b
    }

    /// `σ_A` (the per-tensor scale of `Â`).
    pub fn sigma_a(&self) -> f32 {
        self.sigma_a
    }

    /// The activation grid's `qmax` (127 for INT8, 7 for INT4).
    pub fn act_qmax(&self) -> u32 {
        self.act_qmax
    }

    /// The static activation `amax`, if the activation scale is static.
    pub fn static_amax(&self) -> Option<f32> {
        self.static_amax
    }

    /// The static truncation multiplier `M`, if truncation is static.
    pub fn static_m(&self) -> Option<u64> {
        self.static_m
    }

    /// The descriptor's flag word (bits [`FLAG_STATIC_ACT`], [`FLAG_STATIC_TRUNC`],
    /// [`FLAG_A_INT4`], [`FLAG_B_INT4`]).
    pub fn flags(&self) -> u32 {
        let mut f = 0;
        if self.static_amax.is_some() {
            f |= FLAG_STATIC_ACT;
        }
        if self.static_m.is_some() {
            f |= FLAG_STATIC_TRUNC;
        }
        if self.a_int4 {
            f |= FLAG_A_INT4;
        }
        if self.b_int4 {
            f |= FLAG_B_INT4;
        }
        f
    }

    /// The 64-byte descriptor of `ptx/README.md` for buffers at the given device addresses
    /// (`s_inv_addr` 0 = no smoothing; pass 0 when [`Self::s_inv`] is `None`):
    ///
    /// | offset | field |
    /// |---|---|
    /// | 0 | u64 `Â` address |
    /// | 8 | u64 `B̂` address |
    /// | 16 | u64 `s⁻¹` address |
    /// | 24 | u64 `σ_B` address |
    /// | 32 | u64 static `M` (0 when dynamic) |
    /// | 40 | f32 `σ_A` |
    /// | 44 | f32 static `amax` (0 when dynamic) |
    /// | 48 | u32 `Rp_pad` |
    /// | 52 | u32 flags |
    /// | 56 | u32 activation `qmax` |
    /// | 60 | u32 reserved (0) |
    pub fn descriptor_bytes(
        &self,
        a_addr: u64,
        b_addr: u64,
        s_inv_addr: u64,
        sb_addr: u64,
    ) -> [u8; DESCRIPTOR_BYTES] {
        let mut d = [0u8; DESCRIPTOR_BYTES];
        d[0..8].copy_from_slice(&a_addr.to_le_bytes());
        d[8..16].copy_from_slice(&b_addr.to_le_bytes());
        d[16..24].copy_from_slice(&s_inv_addr.to_le_bytes());
        d[24..32].copy_from_slice(&sb_addr.to_le_bytes());
        d[32..40].copy_from_slice(&self.static_m.unwrap_or(0).to_le_bytes());
        d[40..44].copy_from_slice(&self.sigma_a.to_le_bytes());
        d[44..48].copy_from_slice(&self.static_amax.unwrap_or(0.0).to_le_bytes());
        // `new` checked that Rp_pad fits u32.
        d[48..52].copy_from_slice(&(self.rank_pad as u32).to_le_bytes());
        d[52..56].copy_from_slice(&self.flags().to_le_bytes());
        d[56..60].copy_from_slice(&self.act_qmax.to_le_bytes());
        d
    }

    /// `Â` unpacked back to i8 codes, padding included: `Rp_pad × Ci_pad`, row-major.
    pub fn unpack_a(&self) -> Vec<i8> {
        unpack(&self.a, self.a_int4)
    }

    /// `B̂` unpacked back to i8 codes, padding included: `C_o × Rp_pad`, row-major.
    pub fn unpack_b(&self) -> Vec<i8> {
        unpack(&self.b, self.b_int4)
    }
}

fn unpack(bytes: &[u8], int4: bool) -> Vec<i8> {
    if int4 {
        // Groups of 16 bytes never straddle rows (rows are whole groups).
        unpack_row_int4(bytes)
    } else {
        bytes.iter().map(|&b| b as i8).collect()
    }
}
