//! The packed device layout of `ptx/README.md`, checked on the host (no GPU needed): packing
//! then unpacking gives back the core's codes for INT8 and INT4 grids over ragged shapes,
//! every padding position is zero, the INT4 nibble order is exactly the README's (a
//! hand-written example byte by byte), the descriptor's field offsets, the split-K plan and
//! the typed errors of the host-side checks.

use proptest::prelude::*;
use skillzip_core::layer::{CompressedLayer, Truncation};
use skillzip_core::quant::{ActScale, Bits, Granularity, Quantized};
use skillzip_core::seeded_rng;
use skillzip_core::synth::{RandomLayer, random_layer};
use skillzip_cuda::lowrank::{CallSizes, LaunchPlan, PackMeta, SetShape, plan_launch};
use skillzip_cuda::pack::{
    DESCRIPTOR_BYTES, FLAG_A_INT4, FLAG_B_INT4, FLAG_STATIC_ACT, FLAG_STATIC_TRUNC, pack_row_int4,
    pad32, unpack_row_int4,
};
use skillzip_cuda::{Error, PackedSkillpack};

fn grid() -> impl Strategy<Value = Bits> {
    prop_oneof![
        Just(Bits::Int8),
        Just(Bits::Int4),
        Just(Bits::Int3),
        Just(Bits::Int2)
    ]
}

fn dim() -> impl Strategy<Value = usize> {
    prop_oneof![
        Just(1usize),
        Just(31),
        Just(32),
        Just(33),
        Just(100),
        1usize..=300
    ]
}

/// Checks a padded unpacked matrix against the core's `rows × cols` codes.
fn assert_codes(
    got: &[i8],
    pad_rows: usize,
    pad_cols: usize,
    codes: &[i8],
    rows: usize,
    cols: usize,
    what: &str,
) -> Result<(), TestCaseError> {
    prop_assert_eq!(got.len(), pad_rows * pad_cols, "{} length", what);
    for r in 0..pad_rows {
        for c in 0..pad_cols {
            let want = if r < rows && c < cols {
                codes[r * cols + c]
            } else {
                0
            };
            prop_assert_eq!(got[r * pad_cols + c], want, "{} at ({}, {})", what, r, c);
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    /// Packing then unpacking returns the core's codes; padding is zero; the scalar fields
    /// and flags follow the layer.
    #[test]
    fn pack_round_trips_with_zero_padding(
        ci in dim(), r in dim(), co in dim(), a_bits in grid(), b_bits in grid(),
        act_bits in prop_oneof![Just(Bits::Int8), Just(Bits::Int4)],
        flags in any::<(bool, bool, bool, bool)>(), seed in any::<u64>(),
    ) {
        let (smoothing, b_per_channel, static_act, static_trunc) = flags;
        let spec = RandomLayer {
            c_in: ci, rank: r, c_out: co, act_bits, a_bits, b_bits, smoothing, b_per_channel,
            act_scale: if static_act { ActScale::Static { amax: 2.5 } } else { ActScale::Dynamic },
            truncation: if static_trunc { Truncation::Static { m: 1 << 33 } } else { Truncation::Dynamic },
        };
        let layer = random_layer(&spec, &mut seeded_rng(seed)).unwrap();
        let p = PackedSkillpack::new(&layer).unwrap();
        let (ci_pad, rp) = (pad32(ci), pad32(r));
        prop_assert_eq!((p.c_in(), p.ci_pad(), p.rank(), p.rank_pad(), p.c_out()), (ci, ci_pad, r, rp, co));
        let a4 = a_bits.qmax() <= 7;
        let b4 = b_bits.qmax() <= 7;
        prop_assert_eq!(p.a_int4(), a4);
        prop_assert_eq!(p.b_int4(), b4);
        prop_assert_eq!(p.a_bytes().len(), rp * if a4 { ci_pad / 2 } else { ci_pad });
        prop_assert_eq!(p.b_bytes().len(), co * if b4 { rp / 2 } else { rp });
        assert_codes(&p.unpack_a(), rp, ci_pad, &layer.a().codes, r, ci, "Â")?;
        assert_codes(&p.unpack_b(), co, rp, &layer.b().codes, co, r, "B̂")?;
        // Padding bytes themselves are zero (not just zero nibbles).
        let a_row = p.a_row_bytes();
        for row in r..rp {
            prop_assert!(p.a_bytes()[row * a_row..(row + 1) * a_row].iter().all(|&b| b == 0));
        }
        prop_assert_eq!(p.s_inv(), layer.s_inv());
        let sb: Vec<f32> = (0..co).map(|o| layer.b_scale(o)).collect();
        prop_assert_eq!(p.sigma_b(), &sb[..]);
        prop_assert_eq!(p.sigma_a().to_bits(), layer.a().scales[0].to_bits());
        prop_assert_eq!(p.act_qmax(), act_bits.qmax() as u32);
        prop_assert_eq!(p.static_amax(), static_act.then_some(2.5));
        prop_assert_eq!(p.static_m(), static_trunc.then_some(1u64 << 33));
        let bit = |on: bool, flag: u32| if on { flag } else { 0 };
        let want_flags = bit(static_act, FLAG_STATIC_ACT)
            | bit(static_trunc, FLAG_STATIC_TRUNC)
            | bit(a4, FLAG_A_INT4)
            | bit(b4, FLAG_B_INT4);
        prop_assert_eq!(p.flags(), want_flags);
    }

    /// The INT4 row packer and unpacker are inverse on every row length.
    #[test]
    fn int4_rows_round_trip(codes in prop::collection::vec(-8i8..=7, 0..200)) {
        let k_pad = pad32(codes.len().max(1));
        let mut bytes = Vec::new();
        pack_row_int4(&codes, k_pad, &mut bytes);
        prop_assert_eq!(bytes.len(), k_pad / 2);
        let back = unpack_row_int4(&bytes);
        prop_assert_eq!(&back[..codes.len()], &codes[..]);
        prop_assert!(back[codes.len()..].iter().all(|&c| c == 0));
    }

    /// The split-K plan: `k_chunk` a multiple of 128, every K covered, no empty split, the
    /// forced extremes 1 and `k_tiles`, and `check` accepts its own plans.
    #[test]
    fn plans_cover_k_without_empty_splits(
        rows in 1usize..5000, ci in 1usize..20_000, r_max in (1usize..=25).prop_map(|v| v * 32),
        c_out in 1usize..5000, packs in 1usize..8, sm in 1usize..200, force in 0usize..300,
    ) {
        let ci_pad = pad32(ci);
        let base = plan_launch(rows, ci_pad, r_max, c_out, packs, sm);
        for p in [base, base.with_k_splits(force), base.with_k_splits(1), base.with_k_splits(usize::MAX)] {
            prop_assert!(p.k_chunk > 0 && p.k_chunk % 128 == 0, "{:?}", p);
            prop_assert!(p.k_splits * p.k_chunk >= ci_pad, "K uncovered {:?}", p);
            prop_assert!((p.k_splits - 1) * p.k_chunk < ci_pad, "empty split {:?}", p);
            prop_assert_eq!(p.k_splits, ci_pad.div_ceil(p.k_chunk));
            p.check(rows, ci_pad, r_max, c_out, packs).unwrap();
        }
        prop_assert_eq!(base.with_k_splits(1).k_splits, 1);
        prop_assert_eq!(base.with_k_splits(usize::MAX).k_splits, ci_pad.div_ceil(128));
        prop_assert_eq!(base.slots, rows.div_ceil(64));
        prop_assert_eq!(base.stage1_grid(), ((base.n_tiles_max * base.k_splits) as u32, base.slots as u32, packs as u32));
        prop_assert_eq!(base.stage2_grid(), (c_out.div_ceil(64) as u32, base.slots as u32, packs as u32));
    }
}

fn layer(a: Quantized, b: Quantized, act: ActScale, trunc: Truncation) -> CompressedLayer {
    CompressedLayer::new(None, Bits::Int8, act, a, b, trunc).unwrap()
}

fn quantized(rows: usize, cols: usize, bits: Bits, codes: Vec<i8>, scale: f32) -> Quantized {
    Quantized {
        rows,
        cols,
        bits,
        granularity: Granularity::PerTensor,
        codes,
        scales: vec![scale],
    }
}

/// The README's nibble order, byte by byte: byte `4q + j` of a 32-value group holds
/// `k = 32g + 4q + j` (low nibble) and `k = 32g + 16 + 4q + j` (high nibble).
#[test]
fn int4_nibble_order_matches_the_readme_byte_by_byte() {
    // One Â row of C_i = 40 (Ci_pad = 64, two groups): a few marked positions, zeros else.
    let mut codes = vec![0i8; 40];
    codes[0] = 1; // group 0, byte 0, low
    codes[16] = -1; // group 0, byte 0, high (0xF)
    codes[3] = 7; // group 0, byte 3, low
    codes[19] = -7; // group 0, byte 3, high (0x9)
    codes[5] = -8 + 1; // -7 low nibble 0x9 at byte 5 (q = 1, j = 1)
    codes[30] = 2; // group 0, byte 14, high
    codes[32] = 3; // group 1, byte 0, low
    codes[39] = -2; // group 1, byte 7, low (0xE); its high partner k = 55 is padding
    let a = quantized(1, 40, Bits::Int4, codes.clone(), 0.5);
    let b = quantized(2, 1, Bits::Int4, vec![-3, 6], 0.25);
    let p = PackedSkillpack::new(&layer(a, b, ActScale::Dynamic, Truncation::Dynamic)).unwrap();
    let mut want_a = vec![0u8; 32 * 32]; // Rp_pad = 32 rows × Ci_pad/2 = 32 bytes
    want_a[0] = 0xF1;
    want_a[3] = 0x97;
    want_a[5] = 0x09;
    want_a[14] = 0x20;
    want_a[16] = 0x03;
    want_a[16 + 7] = 0x0E;
    assert_eq!(p.a_bytes(), &want_a[..]);
    // B̂ rows of R = 1 (Rp_pad = 32 → 16 bytes each): the one code in byte 0's low nibble.
    let mut want_b = [0u8; 2 * 16];
    want_b[0] = 0x0D; // -3
    want_b[16] = 0x06;
    assert_eq!(p.b_bytes(), &want_b[..]);
    let unpacked = p.unpack_a();
    assert_eq!(&unpacked[..40], &codes[..]);
    assert!(unpacked[40..].iter().all(|&c| c == 0));
}

#[test]
fn int8_rows_are_plain_bytes_with_zero_padding() {
    let a = quantized(2, 3, Bits::Int8, vec![1, -1, 127, -127, 0, 5], 0.5);
    let b = quantized(1, 2, Bits::Int8, vec![-2, 9], 0.25);
    let p = PackedSkillpack::new(&layer(a, b, ActScale::Dynamic, Truncation::Dynamic)).unwrap();
    assert_eq!(p.a_bytes().len(), 32 * 32);
    assert_eq!(&p.a_bytes()[..4], &[0x01, 0xFF, 0x7F, 0x00]);
    assert_eq!(&p.a_bytes()[32..36], &[0x81, 0x00, 0x05, 0x00]);
    assert!(p.a_bytes()[64..].iter().all(|&b| b == 0));
    assert_eq!(p.b_bytes().len(), 32);
    assert_eq!(&p.b_bytes()[..3], &[0xFE, 0x09, 0x00]);
    assert_eq!(p.flags(), 0);
}

fn u64_at(d: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(d[o..o + 8].try_into().unwrap())
}
fn u32_at(d: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(d[o..o + 4].try_into().unwrap())
}
fn f32_at(d: &[u8], o: usize) -> f32 {
    f32::from_le_bytes(d[o..o + 4].try_into().unwrap())
}

#[test]
fn descriptor_fields_sit_at_the_readme_offsets() {
    // Static activation scale and truncation, INT4 Â, INT8 B̂, INT4 activations, R = 33.
    let a = quantized(33, 5, Bits::Int4, vec![1; 33 * 5], 0.125);
    let b = quantized(3, 33, Bits::Int8, vec![-1; 3 * 33], 0.75);
    let l = CompressedLayer::new(
        Some(vec![2.0; 5]),
        Bits::Int4,
        ActScale::Static { amax: 3.5 },
        a,
        b,
        Truncation::Static {
            m: 0x0123_4567_89AB_CDEF,
        },
    )
    .unwrap();
    let p = PackedSkillpack::new(&l).unwrap();
    let d = p.descriptor_bytes(
        0x1111_2222_3333_4444,
        0x5555_6666_7777_8888,
        0x9999_AAAA_BBBB_CCCC,
        0xDDDD_EEEE_FFFF_0001,
    );
    assert_eq!(d.len(), DESCRIPTOR_BYTES);
    assert_eq!(u64_at(&d, 0), 0x1111_2222_3333_4444);
    assert_eq!(u64_at(&d, 8), 0x5555_6666_7777_8888);
    assert_eq!(u64_at(&d, 16), 0x9999_AAAA_BBBB_CCCC);
    assert_eq!(u64_at(&d, 24), 0xDDDD_EEEE_FFFF_0001);
    assert_eq!(u64_at(&d, 32), 0x0123_4567_89AB_CDEF);
    assert_eq!(f32_at(&d, 40), 0.125);
    assert_eq!(f32_at(&d, 44), 3.5);
    assert_eq!(u32_at(&d, 48), 64);
    assert_eq!(
        u32_at(&d, 52),
        FLAG_STATIC_ACT | FLAG_STATIC_TRUNC | FLAG_A_INT4
    );
    assert_eq!(u32_at(&d, 52), 0b0111);
    assert_eq!(u32_at(&d, 56), 7);
    assert_eq!(u32_at(&d, 60), 0);
    // Little-endian, byte 0 is the least significant byte of Â's address.
    assert_eq!(d[0], 0x44);
    assert_eq!(d[7], 0x11);

    // Dynamic modes: M and amax are zero, INT8 activations give qmax 127, INT4 B̂ sets bit 3.
    let a = quantized(1, 1, Bits::Int8, vec![5], 0.5);
    let b = quantized(1, 1, Bits::Int4, vec![-5], 0.5);
    let p = PackedSkillpack::new(&layer(a, b, ActScale::Dynamic, Truncation::Dynamic)).unwrap();
    let d = p.descriptor_bytes(1, 2, 0, 3);
    assert_eq!(u64_at(&d, 16), 0);
    assert_eq!(u64_at(&d, 32), 0);
    assert_eq!(f32_at(&d, 44).to_bits(), 0);
    assert_eq!(u32_at(&d, 48), 32);
    assert_eq!(u32_at(&d, 52), FLAG_B_INT4);
    assert_eq!(u32_at(&d, 56), 127);
}

fn meta(c_in: usize, rank: usize, c_out: usize) -> PackMeta {
    PackMeta { c_in, rank, c_out }
}

#[test]
fn set_shapes_reject_mixed_or_empty_sets() {
    let s = SetShape::new(&[meta(100, 33, 50), meta(100, 600, 50), meta(100, 1, 50)]).unwrap();
    assert_eq!((s.c_in, s.ci_pad, s.c_out, s.r_max), (100, 128, 50, 608));
    assert_eq!(s.ranks, vec![33, 600, 1]);
    assert_eq!(s.len(), 3);
    for bad in [
        vec![],
        vec![meta(100, 8, 50), meta(101, 8, 50)],
        vec![meta(100, 8, 50), meta(100, 8, 51)],
    ] {
        assert!(
            matches!(SetShape::new(&bad), Err(Error::InvalidInput(_))),
            "{bad:?}"
        );
    }
}

#[test]
fn call_sizes_are_checked_with_typed_errors() {
    let set = SetShape::new(&[meta(100, 40, 70)]).unwrap();
    let ok = CallSizes {
        rows: 10,
        x_len: 9 * 120 + 100,
        x_stride: 120,
        pack_of_row_len: Some(10),
        y_len: 10 * 70,
        y_stride: 70,
        acc_tap_len: Some(700),
    };
    ok.check(&set, 10).unwrap();
    CallSizes { rows: 0, ..ok }.check(&set, 10).unwrap();
    let bad = [
        CallSizes { rows: 11, ..ok },
        CallSizes {
            x_len: ok.x_len - 1,
            ..ok
        },
        CallSizes { x_stride: 99, ..ok },
        CallSizes { y_len: 699, ..ok },
        CallSizes { y_stride: 69, ..ok },
        CallSizes {
            pack_of_row_len: Some(9),
            ..ok
        },
        CallSizes {
            acc_tap_len: Some(699),
            ..ok
        },
        CallSizes {
            x_stride: usize::MAX,
            ..ok
        },
    ];
    for b in bad {
        assert!(
            matches!(b.check(&set, 10), Err(Error::InvalidInput(_))),
            "{b:?}"
        );
    }
    // Exactly the bytes needed is enough: the last row needs only C_i / C_o elements.
    CallSizes {
        y_len: 9 * 80 + 70,
        y_stride: 80,
        ..ok
    }
    .check(&set, 10)
    .unwrap();
}

#[test]
fn plans_for_another_call_are_typed_errors() {
    let p = plan_launch(100, 256, 64, 100, 2, 100);
    p.check(100, 256, 64, 100, 2).unwrap();
    for (rows, ci_pad, r_max, c_out, packs) in [
        (129, 256, 64, 100, 2),
        (100, 512, 64, 100, 2),
        (100, 256, 128, 100, 2),
        (100, 256, 64, 200, 2),
        (100, 256, 64, 100, 1),
    ] {
        assert!(matches!(
            p.check(rows, ci_pad, r_max, c_out, packs),
            Err(Error::InvalidInput(_))
        ));
    }
    let odd = LaunchPlan { k_chunk: 192, ..p };
    assert!(matches!(
        odd.check(100, 256, 64, 100, 2),
        Err(Error::InvalidInput(_))
    ));
}

#[test]
fn a_packed_layer_of_the_compressor_keeps_its_codes() {
    // An X4A4B4 layer with per-tensor B̂ scales: σ_B is expanded to C_o entries.
    let spec = RandomLayer {
        act_bits: Bits::Int4,
        a_bits: Bits::Int4,
        b_bits: Bits::Int4,
        b_per_channel: false,
        ..RandomLayer::x8a8b8(77, 65, 9)
    };
    let l = random_layer(&spec, &mut seeded_rng(5)).unwrap();
    let p = PackedSkillpack::new(&l).unwrap();
    assert_eq!(p.sigma_b(), &vec![l.b().scales[0]; 9][..]);
    assert_eq!(p.act_qmax(), 7);
    assert_eq!(p.flags(), FLAG_A_INT4 | FLAG_B_INT4);
    assert_eq!(p.a_bytes().len(), 96 * 48);
    assert_eq!(p.b_bytes().len(), 9 * 48);
}

/// What the kernels compute for one row, emulated on the host from nothing but the packed
/// bytes and the descriptor (read back field by field at the README's offsets) — so the
/// packed form provably carries everything the reference uses, in the layout the kernels
/// read. Returns `(x̂ over Ci_pad, σ_x, z over Rp_pad, M, ẑ over Rp_pad, acc, y contribution)`.
#[allow(clippy::type_complexity)]
fn emulate_row(
    p: &PackedSkillpack,
    x: &[f32],
) -> (Vec<i8>, f32, Vec<i32>, u64, Vec<i8>, Vec<i32>, Vec<f32>) {
    let d = p.descriptor_bytes(0, 0, p.s_inv().map_or(0, |_| 1), 0);
    let (m_static, sigma_a, amax_static) = (u64_at(&d, 32), f32_at(&d, 40), f32_at(&d, 44));
    let (rp, flags, qmax) = (u32_at(&d, 48) as usize, u32_at(&d, 52), u32_at(&d, 56));
    assert_eq!(flags & FLAG_A_INT4 != 0, p.a_int4());
    assert_eq!(flags & FLAG_B_INT4 != 0, p.b_int4());
    let (ci, ci_pad, co) = (p.c_in(), p.ci_pad(), p.c_out());
    let q = qmax as f32;
    let u: Vec<f32> = (0..ci)
        .map(|i| x[i] * p.s_inv().map_or(1.0, |s| s[i]))
        .collect();
    let amax = if flags & FLAG_STATIC_ACT != 0 {
        amax_static
    } else {
        u.iter().fold(0.0f32, |m, v| m.max(v.abs()))
    };
    let inv = q / amax;
    let (sigma_x, inv) = if amax == 0.0 || inv.is_infinite() {
        (0.0, 0.0)
    } else {
        (amax / q, inv)
    };
    let mut x_hat = vec![0i8; ci_pad];
    for i in 0..ci {
        let v = (u[i] * inv).round_ties_even();
        x_hat[i] = if v.is_nan() { 0 } else { v.clamp(-q, q) as i8 };
    }
    let a = p.unpack_a();
    let z: Vec<i32> = (0..rp)
        .map(|r| {
            (0..ci_pad)
                .map(|k| x_hat[k] as i32 * a[r * ci_pad + k] as i32)
                .sum()
        })
        .collect();
    let m = if flags & FLAG_STATIC_TRUNC != 0 {
        m_static
    } else {
        let zmax = z.iter().map(|v| v.unsigned_abs()).max().unwrap_or(0) as u64;
        (127u64 << 31).checked_div(zmax).unwrap_or(0)
    };
    let z_hat: Vec<i8> = z
        .iter()
        .map(|&v| skillzip_core::quant::rne_shift(v as i128 * m as i128, 31).clamp(-127, 127) as i8)
        .collect();
    let b = p.unpack_b();
    let acc: Vec<i32> = (0..co)
        .map(|o| {
            (0..rp)
                .map(|r| z_hat[r] as i32 * b[o * rp + r] as i32)
                .sum()
        })
        .collect();
    let rho = if m == 0 {
        0.0
    } else {
        ((1u64 << 31) as f64 / m as f64) as f32
    };
    let rs = (sigma_x * sigma_a) * rho;
    let y = (0..co)
        .map(|o| 0.0f32 + (rs * acc[o] as f32) * p.sigma_b()[o])
        .collect();
    (x_hat, sigma_x, z, m, z_hat, acc, y)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// The kernels' arithmetic of `ptx/README.md`, emulated on the packed layout, equals
    /// `runtime::trace_row` bit for bit (integer parts exactly; padding stays zero).
    #[test]
    fn packed_layout_reproduces_the_reference(
        ci in dim(), r in dim(), co in 1usize..=70, a_bits in grid(), b_bits in grid(),
        act_bits in prop_oneof![Just(Bits::Int8), Just(Bits::Int4)],
        flags in any::<(bool, bool, bool, bool)>(), m_shift in 0u32..64, seed in any::<u64>(),
    ) {
        use rand::RngExt;
        let (smoothing, b_per_channel, static_act, static_trunc) = flags;
        let spec = RandomLayer {
            c_in: ci, rank: r, c_out: co, act_bits, a_bits, b_bits, smoothing, b_per_channel,
            act_scale: if static_act { ActScale::Static { amax: 1.7 } } else { ActScale::Dynamic },
            truncation: if static_trunc {
                Truncation::Static { m: 1u64 << m_shift }
            } else {
                Truncation::Dynamic
            },
        };
        let mut rng = seeded_rng(seed);
        let layer = random_layer(&spec, &mut rng).unwrap();
        let p = PackedSkillpack::new(&layer).unwrap();
        for row in 0..4 {
            let x: Vec<f32> = (0..ci)
                .map(|_| match row {
                    0 => 0.0,
                    1 => rng.random_range(-3.0f32..3.0) * 1e30,
                    _ => rng.random_range(-3.0f32..3.0),
                })
                .collect();
            let want = skillzip_core::runtime::trace_row(&layer, &x).unwrap();
            let (x_hat, sigma_x, z, m, z_hat, acc, y) = emulate_row(&p, &x);
            prop_assert_eq!(&x_hat[..ci], &want.x_hat[..]);
            prop_assert!(x_hat[ci..].iter().all(|&v| v == 0));
            prop_assert_eq!(sigma_x.to_bits(), want.sigma_x.to_bits());
            prop_assert_eq!(&z[..r], &want.z[..]);
            prop_assert!(z[r..].iter().all(|&v| v == 0));
            prop_assert_eq!(m, want.m);
            prop_assert_eq!(&z_hat[..r], &want.z_hat[..]);
            prop_assert!(z_hat[r..].iter().all(|&v| v == 0));
            prop_assert_eq!(&acc, &want.acc);
            let got_bits: Vec<u32> = y.iter().map(|v| v.to_bits()).collect();
            let want_bits: Vec<u32> = want.y.iter().map(|v| v.to_bits()).collect();
            prop_assert_eq!(got_bits, want_bits);
        }
    }
}
