//! Replays the `skillpack_reader` and `manifest_parser` fuzz corpora
//! (`fuzz/corpus/<target>/`) through the same checks the targets run, so the targets and their
//! seeds never rot; `seed_corpus_is_current` checks (or, with `SKILLZIP_WRITE_SEEDS=1`, rewrites)
//! the `seed-*` files.

mod common;
#[path = "../../fuzz/corpus_support.rs"]
mod corpus_support;

use std::path::PathBuf;

use serde_json::json;
use skillzip_core::layer::Truncation;
use skillzip_core::quant::{ActScale, Bits};
use skillzip_core::synth::RandomLayer;
use skillzip_format::fuzzing::{check_manifest_bytes, check_skillpack_bytes};
use skillzip_format::{
    DenseDtype, DenseTensor, LayerEntry, Skillpack, parse_manifest, parse_skillpack, to_bytes,
};

fn corpus(target: &str) -> PathBuf {
    corpus_support::corpus(env!("CARGO_MANIFEST_DIR"), target)
}

fn replay(target: &str, check: fn(&[u8])) -> usize {
    corpus_support::replay(env!("CARGO_MANIFEST_DIR"), target, check)
}

#[test]
fn skillpack_reader_corpus() {
    replay("skillpack_reader", check_skillpack_bytes);
    // The seeds include valid skillpacks, so the round-trip path is exercised.
    let valid = std::fs::read_dir(corpus("skillpack_reader"))
        .unwrap()
        .filter(|e| {
            let data = std::fs::read(e.as_ref().unwrap().path()).unwrap();
            parse_skillpack(&data, "seed").is_ok()
        })
        .count();
    assert!(valid >= 3, "only {valid} valid skillpacks in the corpus");
}

#[test]
fn manifest_parser_corpus() {
    replay("manifest_parser", check_manifest_bytes);
    let valid = std::fs::read_dir(corpus("manifest_parser"))
        .unwrap()
        .filter(|e| {
            let data = std::fs::read(e.as_ref().unwrap().path()).unwrap();
            parse_manifest(&data, "seed").is_ok()
        })
        .count();
    assert!(valid >= 2, "only {valid} valid manifests in the corpus");
}

#[test]
fn empty_and_tiny_inputs() {
    for len in 0..32 {
        for fill in [0u8, 0xff, b'{', b' '] {
            let data = vec![fill; len];
            check_skillpack_bytes(&data);
            check_manifest_bytes(&data);
        }
    }
}

fn one_layer_pack(skill: &str, spec: RandomLayer, seed: u64) -> Skillpack {
    let mut p = Skillpack::new(common::meta(skill));
    p.layers.insert(
        "model.layers.0.mlp.down_proj".into(),
        LayerEntry {
            layer: common::random(&spec, seed),
            report: None,
        },
    );
    p
}

fn seed_skillpacks() -> Vec<(&'static str, Vec<u8>)> {
    let int8 = one_layer_pack(
        "int8",
        RandomLayer {
            act_scale: ActScale::Static { amax: 2.5 },
            truncation: Truncation::Static { m: u64::MAX },
            ..RandomLayer::x8a8b8(16, 4, 8)
        },
        1,
    );
    let int4 = one_layer_pack(
        "int4",
        RandomLayer {
            smoothing: false,
            b_per_channel: false,
            ..common::spec(7, 3, 5, Bits::Int4, Bits::Int4)
        },
        2,
    );
    let mut dense_only = Skillpack::new(common::meta("dense"));
    dense_only.dense.insert(
        "model.embed_tokens.weight".into(),
        DenseTensor::new(vec![2, 2], vec![1.0, -1.0, 0.5, 0.0], DenseDtype::BF16).unwrap(),
    );
    let small = common::small_pack();
    let small_bytes = to_bytes(&small).unwrap();
    let n = 8 + u64::from_le_bytes(small_bytes[..8].try_into().unwrap()) as usize;
    let mut flipped_header = small_bytes.clone();
    flipped_header[n / 2] ^= 0x04;
    let mut flipped_data = small_bytes.clone();
    flipped_data[n + 3] ^= 0x10;
    let mut appended = small_bytes.clone();
    appended.extend_from_slice(b"trailing");
    let mut forged = small_bytes.clone();
    let (s, _) = common::tensor_range(&forged, "model.layers.0.mlp.down_proj.a");
    forged[s] = 0x80;
    common::fix_checksum(&mut forged);
    // Valid, but the dequantized factors overflow f32: the PEFT export must say so, typed.
    let mut huge = small_bytes.clone();
    let (s, e) = common::tensor_range(&huge, "model.layers.0.mlp.down_proj.a_scale");
    huge[s..e].copy_from_slice(&f32::MAX.to_le_bytes());
    common::fix_checksum(&mut huge);
    vec![
        ("seed-int8", to_bytes(&int8).unwrap()),
        ("seed-int4", to_bytes(&int4).unwrap()),
        ("seed-dense-only", to_bytes(&dense_only).unwrap()),
        ("seed-mixed-with-dense", small_bytes.clone()),
        (
            "seed-truncated",
            small_bytes[..small_bytes.len() - 5].to_vec(),
        ),
        ("seed-header-bitflip", flipped_header),
        ("seed-data-bitflip", flipped_data),
        ("seed-appended", appended),
        ("seed-forged-code-off-grid", forged),
        ("seed-huge-scale", huge),
    ]
}

fn seed_manifests() -> Vec<(&'static str, Vec<u8>)> {
    let h = |c: char| c.to_string().repeat(64);
    let full = json!({
        "format": "skillzip.bundle", "version": 1,
        "base": {"architecture": "llama", "backbone_hash": h('a'), "source": "SmolLM2-135M"},
        "backbone_delta": {"file": "backbone_delta.safetensors", "sha256": h('b'), "bytes": 1000},
        "skillpacks": [
            {"name": "math", "file": "math.safetensors", "sha256": h('c'), "bytes": 2000},
            {"name": "code", "file": "code.safetensors", "sha256": h('d'), "bytes": 3000}
        ],
        "router": {"file": "router.json", "sha256": h('e'), "bytes": 10}
    });
    let minimal = json!({
        "format": "skillzip.bundle", "version": 1,
        "base": {"architecture": "llama", "backbone_hash": h('0'), "source": ""},
        "skillpacks": []
    });
    let mut traversal = full.clone();
    traversal["skillpacks"][0]["file"] = json!("../../etc/passwd");
    let mut duplicate = full.clone();
    duplicate["skillpacks"][1]["name"] = json!("math");
    let mut unknown = full.clone();
    unknown["base"]["extra"] = json!(true);
    let mut bad_hex = full.clone();
    bad_hex["router"]["sha256"] = json!(h('E'));
    let mut v2 = full.clone();
    v2["version"] = json!(2);
    let s = |v: &serde_json::Value| serde_json::to_vec_pretty(v).unwrap();
    vec![
        ("seed-valid-full.json", s(&full)),
        ("seed-valid-minimal.json", s(&minimal)),
        ("seed-path-traversal.json", s(&traversal)),
        ("seed-duplicate-name.json", s(&duplicate)),
        ("seed-unknown-field.json", s(&unknown)),
        ("seed-bad-hex.json", s(&bad_hex)),
        ("seed-version-2.json", s(&v2)),
        ("seed-not-json", b"manifest?".to_vec()),
    ]
}

#[test]
fn seeds_are_what_they_claim() {
    for (name, bytes) in seed_skillpacks() {
        assert!(bytes.len() < 64 * 1024, "{name}");
        let ok = parse_skillpack(&bytes, name).is_ok();
        let broken = ["bitflip", "truncated", "appended", "off-grid"];
        assert_eq!(ok, !broken.iter().any(|b| name.contains(b)), "{name}");
    }
    for (name, bytes) in seed_manifests() {
        assert_eq!(
            parse_manifest(&bytes, name).is_ok(),
            name.contains("valid"),
            "{name}"
        );
    }
}

/// The `seed-*` files on disk are exactly what the seed generators produce (the generators
/// are deterministic). Regenerate them with
/// `SKILLZIP_WRITE_SEEDS=1 cargo test -p skillzip-format --test fuzz_corpus seed_corpus_is_current`.
#[test]
fn seed_corpus_is_current() {
    let dir = env!("CARGO_MANIFEST_DIR");
    corpus_support::check_seeds(dir, "skillpack_reader", seed_skillpacks());
    corpus_support::check_seeds(dir, "manifest_parser", seed_manifests());
}
