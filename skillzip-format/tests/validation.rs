//! Hostile but well-formed skillpacks (valid container, valid checksum): each rule of the
//! reader, one typed error naming the file and the field or tensor.

mod common;

use common::{rebuild, small_pack};
use serde_json::json;
use skillzip_format::{Error, parse_skillpack, to_bytes};

const L0: &str = "model.layers.0.mlp.down_proj";

fn base() -> Vec<u8> {
    to_bytes(&small_pack()).unwrap()
}

fn meta_edit(f: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>)) -> Error {
    let b = rebuild(&base(), f, |_| {}, |_| {});
    let e = parse_skillpack(&b, "hostile.safetensors").unwrap_err();
    assert_eq!(e.file(), "hostile.safetensors");
    e
}

fn layer_edit(f: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>)) -> Error {
    meta_edit(|m| f(m["layers"][L0].as_object_mut().unwrap()))
}

fn field_of(e: &Error) -> String {
    match e {
        Error::InvalidField { field, .. }
        | Error::Json { field, .. }
        | Error::Missing { field, .. } => field.clone(),
        other => panic!("not a field error: {other}"),
    }
}

#[test]
fn rebuild_without_edits_parses() {
    let b = rebuild(&base(), |_| {}, |_| {}, |_| {});
    assert_eq!(parse_skillpack(&b, "x").unwrap(), small_pack());
}

#[test]
fn top_level_fields() {
    let e = meta_edit(|m| {
        m.insert("extra".into(), json!(1));
    });
    assert_eq!(field_of(&e), "extra");
    let e = meta_edit(|m| {
        m.remove("skill");
    });
    assert!(matches!(e, Error::Missing { .. }), "{e}");
    let e = meta_edit(|m| {
        m.insert("config".into(), json!([1, 2]));
    });
    assert_eq!(field_of(&e), "config");
    let e = meta_edit(|m| {
        m["base"]["extra"] = json!("x");
    });
    assert!(
        matches!(e, Error::Json { ref field, .. } if field == "base"),
        "{e}"
    );
    let e = meta_edit(|m| {
        m["base"]["backbone_hash"] = json!("0123");
    });
    assert_eq!(field_of(&e), "base.backbone_hash");
    let e = meta_edit(|m| {
        m.insert("version".into(), json!("1"));
    });
    assert!(matches!(e, Error::UnsupportedVersion { .. }), "{e}");
    let e = meta_edit(|m| {
        m.remove("format");
    });
    assert!(
        matches!(e, Error::Missing { ref field, .. } if field == "format"),
        "{e}"
    );
}

#[test]
fn checksum_field_form() {
    let e = meta_edit(|m| {
        m.remove("checksum");
    });
    assert!(
        matches!(e, Error::Missing { ref field, .. } if field == "checksum"),
        "{e}"
    );
    let stored = common::documented_checksum(&base()).0;
    let e = meta_edit(|m| {
        m.insert("checksum".into(), json!(stored.to_uppercase()));
    });
    assert_eq!(field_of(&e), "checksum");
    let e = meta_edit(|m| {
        m.insert("checksum".into(), json!(7));
    });
    assert_eq!(field_of(&e), "checksum");
}

#[test]
fn layer_fields() {
    let f = |s: &str| format!("layers.{L0}.{s}");
    let e = layer_edit(|l| {
        l.insert("colour".into(), json!("red"));
    });
    assert!(
        matches!(e, Error::Json { ref field, .. } if *field == format!("layers.{L0}")),
        "{e}"
    );
    let e = layer_edit(|l| {
        l.insert("rank".into(), json!(0));
    });
    assert_eq!(field_of(&e), f("rank"));
    let e = layer_edit(|l| {
        l.insert("rank".into(), json!(-1));
    });
    assert!(matches!(e, Error::Json { .. }), "{e}");
    let e = layer_edit(|l| {
        l.insert("b_granularity".into(), json!("per_column"));
    });
    assert_eq!(field_of(&e), f("b_granularity"));
    let e = layer_edit(|l| {
        l.insert("act_bits".into(), json!(16));
    });
    assert_eq!(field_of(&e), f("act_bits"));
    let e = layer_edit(|l| {
        l.insert("act_scale".into(), json!({"mode": "static"}));
    });
    assert_eq!(field_of(&e), f("act_scale"));
    let e = layer_edit(|l| {
        l.insert("act_scale".into(), json!({"mode": "dynamic", "amax": 1.0}));
    });
    assert_eq!(field_of(&e), f("act_scale"));
    // 0.1 is not an f32 value (its f32 rounding differs).
    let e = layer_edit(|l| {
        l.insert("act_scale".into(), json!({"mode": "static", "amax": 0.1}));
    });
    assert_eq!(field_of(&e), f("act_scale.amax"));
    let e = layer_edit(|l| {
        l.insert("act_scale".into(), json!({"mode": "static", "amax": -1.0}));
    });
    assert!(matches!(e, Error::InvalidLayer { .. }), "{e}");
    for m in ["+5", "05", "", "18446744073709551616", "1e3", " 1"] {
        let e = layer_edit(|l| {
            l.insert("truncation".into(), json!({"mode": "static", "m": m}));
        });
        assert_eq!(field_of(&e), f("truncation.m"), "{m:?}");
    }
    let e = layer_edit(|l| {
        l.insert("truncation".into(), json!({"mode": "static", "m": 5}));
    });
    assert!(matches!(e, Error::Json { .. }), "{e}");
    let e = layer_edit(|l| {
        l.insert("truncation".into(), json!({"mode": "sometimes"}));
    });
    assert_eq!(field_of(&e), f("truncation"));
    let e = layer_edit(|l| {
        l.insert("report".into(), json!({"alpha": 0.1}));
    });
    assert_eq!(field_of(&e), f("report.alpha"));
    let e = layer_edit(|l| {
        l.insert("report".into(), json!({"beta": 0.5}));
    });
    assert!(matches!(e, Error::Json { .. }), "{e}");
}

#[test]
fn names() {
    let e = meta_edit(|m| {
        let l = m["layers"][L0].clone();
        m["layers"]
            .as_object_mut()
            .unwrap()
            .insert("dense.x".into(), l);
    });
    assert_eq!(field_of(&e), "layers.dense.x");
    let e = meta_edit(|m| {
        m.insert("skill".into(), json!("a\u{0}b"));
    });
    assert_eq!(field_of(&e), "skill");
}

#[test]
fn tensors_must_match_the_metadata_exactly() {
    let b = base();
    let hostile = |tensors: &dyn Fn(&mut std::collections::BTreeMap<String, common::RawTensor>)| {
        let out = rebuild(&b, |_| {}, |_| {}, tensors);
        parse_skillpack(&out, "t.safetensors").unwrap_err()
    };
    let e = hostile(&|t| {
        t.insert("sneaky".into(), (safetensors::Dtype::U8, vec![1], vec![0]));
    });
    assert!(
        matches!(e, Error::UnexpectedTensor { ref tensor, .. } if tensor == "sneaky"),
        "{e}"
    );
    let e = hostile(&|t| {
        t.remove(&format!("{L0}.s_inv"));
    });
    assert!(
        matches!(e, Error::MissingTensor { ref tensor, .. } if *tensor == format!("{L0}.s_inv")),
        "{e}"
    );
    let e = hostile(&|t| {
        t.get_mut(&format!("{L0}.a")).unwrap().0 = safetensors::Dtype::U8;
    });
    assert!(
        matches!(e, Error::TensorDtype { ref tensor, .. } if *tensor == format!("{L0}.a")),
        "{e}"
    );
    let e = hostile(&|t| {
        let a = t.get_mut(&format!("{L0}.a")).unwrap();
        a.1 = vec![a.1[1], a.1[0]];
    });
    assert!(matches!(e, Error::TensorShape { .. }), "{e}");
    let e = hostile(&|t| {
        t.get_mut("dense.model.norm.weight").unwrap().0 = safetensors::Dtype::BF16;
    });
    assert!(matches!(e, Error::TensorDtype { .. }), "{e}");
    // A dense tensor the metadata does not list.
    let e = hostile(&|t| {
        t.insert(
            "dense.extra".into(),
            (safetensors::Dtype::F32, vec![1], vec![0; 4]),
        );
    });
    assert!(matches!(e, Error::UnexpectedTensor { .. }), "{e}");
}

#[test]
fn metadata_map_must_hold_only_skillzip() {
    let out = rebuild(
        &base(),
        |_| {},
        |m| {
            m.insert("format".into(), "pt".into());
        },
        |_| {},
    );
    let e = parse_skillpack(&out, "m").unwrap_err();
    assert_eq!(field_of(&e), "__metadata__.format");
    let out = rebuild(
        &base(),
        |_| {},
        |m| {
            m.remove("skillzip");
            m.insert("other".into(), "x".into());
        },
        |_| {},
    );
    assert!(parse_skillpack(&out, "m").is_err());
    // A plain safetensors file without metadata.
    let plain = safetensors::serialize(
        [(
            "x",
            safetensors::tensor::TensorView::new(safetensors::Dtype::U8, vec![1], &[0]).unwrap(),
        )],
        None,
    )
    .unwrap();
    let e = parse_skillpack(&plain, "plain").unwrap_err();
    assert!(
        matches!(e, Error::Missing { ref field, .. } if field == "__metadata__"),
        "{e}"
    );
}

#[test]
fn oversized_header_is_refused_before_parsing() {
    let mut b = vec![0u8; 64];
    b[..8].copy_from_slice(&(skillzip_format::MAX_HEADER_BYTES + 1).to_le_bytes());
    let e = parse_skillpack(&b, "big").unwrap_err();
    assert!(matches!(e, Error::TooLarge { .. }), "{e}");
    b[..8].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(matches!(
        parse_skillpack(&b, "big"),
        Err(Error::TooLarge { .. })
    ));
}
