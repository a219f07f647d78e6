//! The packed weight layout every kernel path reads, produced once at load time.
//!
//! A stored factor is `N × K` and K-contiguous (`Â`: `R × C_i`, `B̂`: `C_o × R`). The packed
//! form cuts it into **tiles** of [`TILE_N`] = 16 output columns; a tile's **panel** is a
//! sequence of 64-byte blocks, each holding 16 columns × 4 consecutive K values:
//!
//! - INT8: block `g` of tile `j` holds, at byte `4c + e`, `w[16j + c][4g + e]` — the operand
//!   shape of `vpdpbusd` (one 32-bit lane per column, four K bytes per lane). A 256-bit kernel
//!   reads columns 0–7 from the first half and 8–15 from the second.
//! - INT4 (and the narrower baseline grids, whose codes fit a nibble): block `p` holds byte
//!   `4c + e` = `w[16j + c][8p + e]` in the low nibble and `w[16j + c][8p + 4 + e]` in the high
//!   nibble, two's complement — so one 64-byte load yields two INT8-shaped blocks after a
//!   nibble split and a 16-entry table lookup, in registers.
//!
//! `K` is padded with zero weights to a multiple of [`K_ALIGN`] = 8 and `N` to whole tiles.
//! Because padded weights are zero, whatever an activation buffer holds in its padding
//! columns contributes nothing — kernels never need to clear it. Blocks are 64-byte aligned.
//! `col_sums` (`Σ_k w[c][k]` per padded column) lets the VNNI paths feed activations as
//! unsigned `x + 128` and subtract `128 · Σ_k w` afterwards (exact in wrapping i32).

use crate::quant::Bits;

/// Output columns per tile.
pub const TILE_N: usize = 16;
/// K values per 32-bit lane of a block.
pub const GROUP_K: usize = 4;
/// K is padded to a multiple of this.
pub const K_ALIGN: usize = 8;

/// One 64-byte, 64-byte-aligned block of a panel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C, align(64))]
pub struct Block(pub [u8; 64]);

/// A factor in the packed layout of this module.
#[derive(Debug, Clone, PartialEq)]
pub struct PackedMatrix {
    n: usize,
    k: usize,
    k_padded: usize,
    nibbles: bool,
    blocks: Vec<Block>,
    col_sums: Vec<i32>,
}

/// `k` rounded up to whole [`K_ALIGN`] groups.
pub fn padded_k(k: usize) -> usize {
    k.div_ceil(K_ALIGN) * K_ALIGN
}

/// Number of tiles that cover `n` columns.
pub fn tiles(n: usize) -> usize {
    n.div_ceil(TILE_N)
}

impl PackedMatrix {
    /// Packs row-major `N × K` codes. INT8 codes keep a byte each; every narrower grid is
    /// stored as nibbles.
    ///
    /// # Panics
    /// If `codes.len() != n * k` or a code does not fit its grid's storage (the layer
    /// constructor has validated both).
    pub fn pack(codes: &[i8], n: usize, k: usize, bits: Bits) -> Self {
        assert_eq!(codes.len(), n * k, "pack: codes do not match N × K");
        let nibbles = bits != Bits::Int8;
        if nibbles {
            assert!(
                codes.iter().all(|c| (-8..=7).contains(c)),
                "pack: a code does not fit a nibble"
            );
        }
        let k_padded = padded_k(k);
        let per_tile = Self::blocks_per_tile_for(k_padded, nibbles);
        let mut blocks = vec![Block([0; 64]); tiles(n) * per_tile];
        let mut col_sums = vec![0i32; tiles(n) * TILE_N];
        for row in 0..n {
            let (tile, c) = (row / TILE_N, row % TILE_N);
            let codes_row = &codes[row * k..(row + 1) * k];
            col_sums[row] = codes_row.iter().map(|&v| v as i32).sum();
            for (kk, &v) in codes_row.iter().enumerate() {
                let e = kk % GROUP_K;
                if nibbles {
                    let (pair, high) = (kk / (2 * GROUP_K), (kk / GROUP_K) % 2 == 1);
                    let byte = &mut blocks[tile * per_tile + pair].0[GROUP_K * c + e];
                    *byte |= ((v as u8) & 0x0f) << (4 * high as u8);
                } else {
                    blocks[tile * per_tile + kk / GROUP_K].0[GROUP_K * c + e] = v as u8;
                }
            }
        }
        Self {
            n,
            k,
            k_padded,
            nibbles,
            blocks,
            col_sums,
        }
    }

    fn blocks_per_tile_for(k_padded: usize, nibbles: bool) -> usize {
        if nibbles {
            k_padded / (2 * GROUP_K)
        } else {
            k_padded / GROUP_K
        }
    }

    /// Output columns `N`.
    pub fn n(&self) -> usize {
        self.n
    }

    /// Reduction length `K` (unpadded).
    pub fn k(&self) -> usize {
        self.k
    }

    /// `K` padded to [`K_ALIGN`]: the row stride activation buffers must have.
    pub fn k_padded(&self) -> usize {
        self.k_padded
    }

    /// Whether codes are stored as nibbles.
    pub fn is_nibbles(&self) -> bool {
        self.nibbles
    }

    /// Number of tiles.
    pub fn tiles(&self) -> usize {
        tiles(self.n)
    }

    /// 64-byte blocks per tile panel.
    pub fn blocks_per_tile(&self) -> usize {
        Self::blocks_per_tile_for(self.k_padded, self.nibbles)
    }

    /// The panel of one tile.
    pub fn panel(&self, tile: usize) -> &[Block] {
        let per = self.blocks_per_tile();
        &self.blocks[tile * per..(tile + 1) * per]
    }

    /// All blocks, tile after tile.
    pub fn blocks(&self) -> &[Block] {
        &self.blocks
    }

    /// `Σ_k w[c][k]` for every padded column (zero for padding).
    pub fn col_sums(&self) -> &[i32] {
        &self.col_sums
    }

    /// Bytes a kernel streams for this factor (the packed blocks).
    pub fn bytes(&self) -> usize {
        self.blocks.len() * 64
    }

    /// The code at `(row, kk)`, read back from the packed form (0 in the padding).
    pub fn code(&self, row: usize, kk: usize) -> i8 {
        if row >= self.n || kk >= self.k {
            return 0;
        }
        let (panel, c, e) = (self.panel(row / TILE_N), row % TILE_N, kk % GROUP_K);
        if self.nibbles {
            let byte = panel[kk / (2 * GROUP_K)].0[GROUP_K * c + e];
            let nibble = (byte >> (4 * ((kk / GROUP_K) % 2))) & 0x0f;
            ((nibble << 4) as i8) >> 4
        } else {
            panel[kk / GROUP_K].0[GROUP_K * c + e] as i8
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packing_round_trips_for_ragged_shapes() {
        for (n, k, bits) in [
            (1, 1, Bits::Int8),
            (17, 13, Bits::Int8),
            (33, 9, Bits::Int4),
        ] {
            let q = bits.qmax() as i64;
            let codes: Vec<i8> = (0..n * k)
                .map(|i| ((i as i64 * 37 + 11) % (2 * q + 1) - q) as i8)
                .collect();
            let p = PackedMatrix::pack(&codes, n, k, bits);
            assert_eq!(p.k_padded() % K_ALIGN, 0);
            for row in 0..n {
                for kk in 0..k {
                    assert_eq!(p.code(row, kk), codes[row * k + kk], "({row}, {kk})");
                }
                let sum: i32 = codes[row * k..(row + 1) * k]
                    .iter()
                    .map(|&v| v as i32)
                    .sum();
                assert_eq!(p.col_sums()[row], sum);
            }
            // Padding holds zero weights.
            let padded: usize = p.blocks().iter().map(|b| b.0.len()).sum();
            assert_eq!(padded, p.bytes());
            assert_eq!(p.col_sums()[n..].iter().filter(|&&s| s != 0).count(), 0);
        }
    }

    #[test]
    fn int8_block_layout_is_the_vpdpbusd_operand_shape() {
        // w[c][k] = 10·c + k for 2 columns, K = 5.
        let codes: Vec<i8> = (0..2)
            .flat_map(|c| (0..5).map(move |k| (10 * c + k) as i8))
            .collect();
        let p = PackedMatrix::pack(&codes, 2, 5, Bits::Int8);
        let b0 = &p.panel(0)[0].0;
        assert_eq!(&b0[0..8], &[0, 1, 2, 3, 10, 11, 12, 13]);
        let b1 = &p.panel(0)[1].0;
        assert_eq!(&b1[0..8], &[4, 0, 0, 0, 14, 0, 0, 0]);
    }
}
