//! Skillpacks of real compressed layers survive write → read unchanged; the checksum covers
//! metadata; writers reject what readers would reject; the backbone check.

mod common;

use common::{HASH, cfg, compressed, meta, small_pack};
use skillzip_core::compress::BitConfig;
use skillzip_core::layer::Truncation;
use skillzip_core::quant::{ActScale, Bits};
use skillzip_core::synth::RandomLayer;
use skillzip_format::{
    BackboneHasher, DenseDtype, DenseTensor, Error, LayerEntry, LayerReport, Skillpack,
    backbone_hash, check_backbone, parse_skillpack, read_skillpack, to_bytes, write_skillpack,
};

fn round_trip(pack: &Skillpack) -> Skillpack {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("skill.safetensors");
    let n = write_skillpack(&path, pack).unwrap();
    assert_eq!(n, std::fs::metadata(&path).unwrap().len());
    let back = read_skillpack(&path).unwrap();
    assert_eq!(&back, pack);
    back
}

#[test]
fn compressed_layers_round_trip_in_every_mode() {
    let variants = [
        ("x8a8b8_smooth_dynamic", BitConfig::X8A8B8, true, false),
        ("x8a8b8_plain_static", BitConfig::X8A8B8, false, true),
        ("x8a4b4_smooth_static", BitConfig::X8A4B4, true, true),
        ("x4a4b8_plain_dynamic", BitConfig::X4A4B8, false, false),
        ("x4a4b4_smooth_dynamic", BitConfig::X4A4B4, true, false),
    ];
    let mut pack = Skillpack::new(meta("code"));
    for (i, (name, bits, smooth, static_modes)) in variants.into_iter().enumerate() {
        // Odd C_i and odd ranks exercise the INT4 padding nibble.
        let c = compressed(33, 20, &cfg(5, bits, smooth, static_modes), 40 + i as u64);
        assert_eq!(c.layer.s_inv().is_some(), smooth, "{name}");
        assert_eq!(
            matches!(c.layer.truncation(), Truncation::Static { .. }),
            static_modes,
            "{name}"
        );
        assert_eq!(
            matches!(c.layer.act_scale(), ActScale::Static { .. }),
            static_modes,
            "{name}"
        );
        pack.layers.insert(
            format!("model.layers.{i}.mlp.down_proj"),
            LayerEntry {
                layer: c.layer,
                report: Some(LayerReport {
                    alpha: c.alpha,
                    rel_output_error: Some(c.selection_error),
                    rel_weight_error: None,
                    bytes: None,
                }),
            },
        );
    }
    let back = round_trip(&pack);
    // Equality covers codes, scales, s⁻¹, modes; check the effective weights too.
    for (m, e) in &pack.layers {
        let w0 = e.layer.effective_weight();
        let w1 = back.layers[m].layer.effective_weight();
        assert_eq!(w0.nrows(), w1.nrows());
        for i in 0..w0.nrows() {
            for j in 0..w0.ncols() {
                assert_eq!(w0[(i, j)].to_bits(), w1[(i, j)].to_bits());
            }
        }
    }
}

#[test]
fn static_multipliers_near_u64_max_and_baseline_grids_round_trip() {
    let mut pack = Skillpack::new(meta("edge"));
    for (i, m) in [u64::MAX, u64::MAX - 1, (1 << 53) + 1, 0, 1]
        .into_iter()
        .enumerate()
    {
        let bits = [Bits::Int8, Bits::Int4, Bits::Int3, Bits::Int2, Bits::Int4][i];
        let layer = common::random(
            &RandomLayer {
                truncation: Truncation::Static { m },
                act_scale: ActScale::Static {
                    amax: f32::from_bits(0x3f80_0001 + i as u32),
                },
                ..common::spec(1 + 2 * i, 1 + i, 3, bits, bits)
            },
            i as u64,
        );
        pack.layers.insert(
            format!("m{i}.proj"),
            LayerEntry {
                layer,
                report: None,
            },
        );
    }
    let back = round_trip(&pack);
    assert_eq!(
        back.layers["m0.proj"].layer.truncation(),
        Truncation::Static { m: u64::MAX }
    );
    assert_eq!(back.layers["m3.proj"].layer.a().bits, Bits::Int2);
}

#[test]
fn small_pack_round_trips_and_serialization_is_deterministic() {
    let pack = small_pack();
    let a = to_bytes(&pack).unwrap();
    let b = to_bytes(&pack.clone()).unwrap();
    assert_eq!(a, b);
    let back = parse_skillpack(&a, "mem").unwrap();
    assert_eq!(back, pack);
    assert_eq!(to_bytes(&back).unwrap(), a);
    assert_eq!(back.meta.config["big"], serde_json::json!(u64::MAX));
    assert_eq!(back.dense["model.norm.weight"].dtype, DenseDtype::F16);
}

#[test]
fn summary_counts_bytes_and_reports() {
    let pack = small_pack();
    let s = pack.summary();
    assert_eq!(s.layers.len(), 3);
    let expected: usize = pack.layers.values().map(|e| e.layer.storage_bytes()).sum();
    assert_eq!(s.layer_bytes, expected as u64);
    assert_eq!(s.delta_params, 12 * 10 + 9 * 7 + 8 * 6);
    assert_eq!(s.dense_bytes, 4 * 2 + 6 * 4 + 4 * 2);
    let l0 = &s.layers[0];
    assert_eq!(l0.module, "model.layers.0.mlp.down_proj");
    assert_eq!(l0.method, "X8A8B8");
    assert_eq!(s.layers[2].method, "X4A4B8");
    assert!(!s.layers[2].b_per_channel);
    assert_eq!(l0.report.as_ref().unwrap().rel_output_error, Some(0.125));
    assert!((s.bits_per_delta_param - 8.0 * expected as f64 / 231.0).abs() < 1e-12);
    let text = s.to_string();
    assert!(text.contains("model.layers.1.self_attn.q_proj"), "{text}");
    assert!(text.contains("0.1250"), "{text}");
}

/// Replaces `from` by `to` (same length) inside the file and checks the reader's verdict.
fn edit(bytes: &[u8], from: &str, to: &str) -> Vec<u8> {
    assert_eq!(from.len(), to.len());
    let pos = bytes
        .windows(from.len())
        .position(|w| w == from.as_bytes())
        .unwrap_or_else(|| panic!("{from} not in file"));
    let mut out = bytes.to_vec();
    out[pos..pos + to.len()].copy_from_slice(to.as_bytes());
    out
}

#[test]
fn checksum_covers_metadata_edits() {
    let bytes = to_bytes(&small_pack()).unwrap();
    for (from, to) in [
        (r#"\"skill\":\"math\""#, r#"\"skill\":\"matt\""#),
        (
            r#"\"architecture\":\"llama\""#,
            r#"\"architecture\":\"llamb\""#,
        ),
        (r#"\"seed\":7"#, r#"\"seed\":8"#),
        (
            r#"\"rel_output_error\":0.125"#,
            r#"\"rel_output_error\":0.126"#,
        ),
        (
            r#"\"m\":\"18446744073709551614\""#,
            r#"\"m\":\"18446744073709551613\""#,
        ),
        (r#"\"amax\":3.25"#, r#"\"amax\":3.75"#),
    ] {
        let e = parse_skillpack(&edit(&bytes, from, to), "edited").unwrap_err();
        assert!(
            matches!(e, Error::ChecksumMismatch { ref file, .. } if file == "edited"),
            "{from}: {e}"
        );
    }
    // Structural edits are caught before the checksum, by the field they break.
    let e =
        parse_skillpack(&edit(&bytes, r#"\"version\":1"#, r#"\"version\":2"#), "f").unwrap_err();
    assert!(matches!(e, Error::UnsupportedVersion { .. }), "{e}");
    let e = parse_skillpack(
        &edit(&bytes, r#""skillzip.skillpack"#, r#""skillzip.skillpacK"#),
        "f",
    )
    .unwrap_err();
    assert!(matches!(e, Error::WrongFormat { .. }), "{e}");
    let e = parse_skillpack(&edit(&bytes, r#"\"rank\":3"#, r#"\"rank\":4"#), "f").unwrap_err();
    assert!(
        matches!(e, Error::TensorShape { ref tensor, .. } if tensor == "model.layers.0.mlp.down_proj.a"),
        "{e}"
    );
    let e = parse_skillpack(&edit(&bytes, r#"\"a_bits\":8"#, r#"\"a_bits\":5"#), "f").unwrap_err();
    assert!(
        matches!(e, Error::InvalidField { ref field, .. } if field.ends_with("a_bits")),
        "{e}"
    );
    let e = parse_skillpack(
        &edit(&bytes, r#"\"smoothing\":true"#, r#"\"smoothinG\":true"#),
        "f",
    )
    .unwrap_err();
    assert!(matches!(e, Error::Json { .. }), "{e}");
}

#[test]
fn writer_rejects_what_the_reader_would() {
    let base = small_pack();
    let mut p = base.clone();
    p.meta.base.backbone_hash = "ABC".into();
    assert!(
        matches!(to_bytes(&p), Err(Error::InvalidField { ref field, .. }) if field == "base.backbone_hash")
    );
    let mut p = base.clone();
    p.meta.skill = String::new();
    assert!(matches!(to_bytes(&p), Err(Error::InvalidField { ref field, .. }) if field == "skill"));
    let mut p = base.clone();
    let e = p.layers["model.layers.0.mlp.down_proj"].clone();
    p.layers.insert("dense.model.norm".into(), e);
    assert!(matches!(to_bytes(&p), Err(Error::InvalidField { .. })));
    let mut p = base.clone();
    p.dense.insert(
        "x".into(),
        DenseTensor {
            shape: vec![2],
            data: vec![1.0, f32::NAN],
            dtype: DenseDtype::F32,
        },
    );
    assert!(
        matches!(to_bytes(&p), Err(Error::NonFinite { ref tensor, index: 1, .. }) if tensor == "dense.x")
    );
    let mut p = base.clone();
    p.dense.insert(
        "y".into(),
        DenseTensor {
            shape: vec![1],
            data: vec![1e6],
            dtype: DenseDtype::F16,
        },
    );
    assert!(
        matches!(to_bytes(&p), Err(Error::NonFinite { .. })),
        "f16 overflow"
    );
    let mut p = base.clone();
    p.dense.insert(
        "z".into(),
        DenseTensor {
            shape: vec![3],
            data: vec![1.0],
            dtype: DenseDtype::F32,
        },
    );
    assert!(matches!(to_bytes(&p), Err(Error::InvalidField { .. })));
    let mut p = base.clone();
    p.layers
        .get_mut("model.layers.0.mlp.down_proj")
        .unwrap()
        .report = Some(LayerReport {
        rel_weight_error: Some(f64::NAN),
        ..Default::default()
    });
    assert!(matches!(to_bytes(&p), Err(Error::InvalidField { .. })));
}

#[test]
fn backbone_check_and_hash() {
    let pack = small_pack();
    check_backbone(&pack.meta, "llama", HASH).unwrap();
    let e = check_backbone(&pack.meta, "mistral", HASH).unwrap_err();
    assert!(
        matches!(
            e,
            Error::BackboneMismatch {
                field: "architecture",
                ..
            }
        ),
        "{e}"
    );
    let other = "f".repeat(64);
    let e = check_backbone(&pack.meta, "llama", &other).unwrap_err();
    assert!(
        matches!(
            e,
            Error::BackboneMismatch {
                field: "backbone_hash",
                ..
            }
        ),
        "{e}"
    );

    let w: Vec<u8> = (0..64u8).collect();
    let n: Vec<u8> = (0..16u8).collect();
    let whole = backbone_hash([
        (
            "model.layers.0.mlp.down_proj.weight",
            "F32",
            &[4usize, 4][..],
            &w[..],
        ),
        ("model.norm.weight", "F32", &[4][..], &n[..]),
    ])
    .unwrap();
    let mut h = BackboneHasher::new();
    h.add("model.norm.weight", "F32", &[4], &n).unwrap();
    h.add("model.layers.0.mlp.down_proj.weight", "F32", &[4, 4], &w)
        .unwrap();
    assert_eq!(h.finish(), whole);
    let mut n2 = n.clone();
    n2[3] ^= 1;
    let changed = backbone_hash([
        (
            "model.layers.0.mlp.down_proj.weight",
            "F32",
            &[4usize, 4][..],
            &w[..],
        ),
        ("model.norm.weight", "F32", &[4][..], &n2[..]),
    ])
    .unwrap();
    assert_ne!(changed, whole);
    // The documented stream, recomputed independently.
    use sha2::{Digest, Sha256};
    let lp = |h: &mut Sha256, b: &[u8]| {
        h.update((b.len() as u64).to_le_bytes());
        h.update(b);
    };
    let tensor = |name: &str, shape: &[usize], data: &[u8]| -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(b"skillzip.backbone.tensor.v1\0");
        lp(&mut h, name.as_bytes());
        lp(&mut h, b"F32");
        h.update((shape.len() as u64).to_le_bytes());
        for d in shape {
            h.update((*d as u64).to_le_bytes());
        }
        lp(&mut h, data);
        h.finalize().into()
    };
    let mut h = Sha256::new();
    h.update(b"skillzip.backbone.v1\0");
    h.update(2u64.to_le_bytes());
    for (name, shape, data) in [
        (
            "model.layers.0.mlp.down_proj.weight",
            &[4usize, 4][..],
            &w[..],
        ),
        ("model.norm.weight", &[4][..], &n[..]),
    ] {
        lp(&mut h, name.as_bytes());
        h.update(tensor(name, shape, data));
    }
    let expect: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(whole, expect);
}

#[test]
fn checksum_stream_is_as_documented() {
    let bytes = to_bytes(&small_pack()).unwrap();
    let (stored, computed) = common::documented_checksum(&bytes);
    assert_eq!(stored, computed);
    assert!(stored.starts_with("sha256:") && stored.len() == 71);
}

/// Patches tensor bytes, then fixes the checksum (same length, so in place): what only a
/// deliberate forger could produce. The validation behind the checksum must still hold.
fn forge(pack_bytes: &[u8], tensor: &str, patch: impl FnOnce(&mut [u8])) -> Vec<u8> {
    let mut bytes = pack_bytes.to_vec();
    let (s, e) = common::tensor_range(&bytes, tensor);
    patch(&mut bytes[s..e]);
    common::fix_checksum(&mut bytes);
    bytes
}

#[test]
fn validation_behind_the_checksum_holds() {
    let bytes = to_bytes(&small_pack()).unwrap();
    assert_eq!(
        forge(&bytes, "model.layers.0.mlp.down_proj.a", |_| {}),
        bytes
    );

    // An INT8 code of -128 leaves the symmetric grid.
    let f = forge(&bytes, "model.layers.0.mlp.down_proj.a", |d| d[0] = 0x80);
    let e = parse_skillpack(&f, "forged").unwrap_err();
    assert!(
        matches!(e, Error::InvalidLayer { ref module, .. } if module == "model.layers.0.mlp.down_proj"),
        "{e}"
    );
    // A packed nibble of -8.
    let f = forge(&bytes, "model.layers.0.self_attn.q_proj.b", |d| d[0] = 0x08);
    assert!(matches!(
        parse_skillpack(&f, "forged"),
        Err(Error::InvalidLayer { .. })
    ));
    // C_i = 9 is odd: the high nibble of each row's last byte is padding and must be 0.
    let f = forge(&bytes, "model.layers.0.self_attn.q_proj.a", |d| {
        d[4] |= 0x10
    });
    let e = parse_skillpack(&f, "forged").unwrap_err();
    assert!(
        matches!(e, Error::InvalidField { ref field, ref reason, .. }
            if field == "model.layers.0.self_attn.q_proj.a" && reason.contains("padding")),
        "{e}"
    );
    // A NaN scale, an infinite smoothing entry, a NaN dense value.
    for tensor in [
        "model.layers.0.mlp.down_proj.a_scale",
        "model.layers.0.mlp.down_proj.b_scales",
        "model.layers.0.mlp.down_proj.s_inv",
        "dense.lm_head.bias",
    ] {
        let f = forge(&bytes, tensor, |d| {
            d[..4].copy_from_slice(&f32::NAN.to_le_bytes())
        });
        let e = parse_skillpack(&f, "forged").unwrap_err();
        assert!(
            matches!(e, Error::NonFinite { tensor: ref t, index: 0, .. } if t == tensor),
            "{e}"
        );
    }
    let f = forge(&bytes, "dense.model.norm.weight", |d| {
        d[..2].copy_from_slice(&half::f16::INFINITY.to_le_bytes())
    });
    assert!(matches!(
        parse_skillpack(&f, "forged"),
        Err(Error::NonFinite { .. })
    ));
}
