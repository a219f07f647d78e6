//! Bundle manifests and directories: validation of names, digests, sizes and fields; every
//! listed file checked before use; errors name the file.

mod common;

use std::collections::BTreeMap;

use common::{HASH, small_pack};
use serde_json::{Value, json};
use skillzip_format::bundle::MANIFEST_FILE;
use skillzip_format::{
    Bundle, BundleBase, DenseDtype, DenseTensor, Error, Manifest, SkillpackRef, file_ref,
    parse_manifest, read_dense_tensors, write_dense_tensors, write_manifest, write_skillpack,
};

fn valid() -> Value {
    json!({
        "format": "skillzip.bundle",
        "version": 1,
        "base": {"architecture": "llama", "backbone_hash": HASH, "source": "/models/base"},
        "backbone_delta": {"file": "backbone_delta.safetensors", "sha256": "a".repeat(64), "bytes": 10},
        "skillpacks": [
            {"name": "math", "file": "math.safetensors", "sha256": "b".repeat(64), "bytes": 20},
            {"name": "code", "file": "code.safetensors", "sha256": "c".repeat(64), "bytes": 30}
        ],
        "router": {"file": "router.json", "sha256": "d".repeat(64), "bytes": 5}
    })
}

fn parse(v: &Value) -> skillzip_format::Result<Manifest> {
    parse_manifest(
        serde_json::to_string(v).unwrap().as_bytes(),
        "manifest.json",
    )
}

fn field(e: &Error) -> String {
    match e {
        Error::InvalidField { field, .. }
        | Error::Json { field, .. }
        | Error::Missing { field, .. } => field.clone(),
        Error::Duplicate { field, .. } => field.clone(),
        other => panic!("not a field error: {other}"),
    }
}

#[test]
fn valid_manifest_parses_and_round_trips() {
    let m = parse(&valid()).unwrap();
    assert_eq!(m.skillpacks.len(), 2);
    assert_eq!(m.skillpack("code").unwrap().bytes, 30);
    let again = parse_manifest(&m.to_json().unwrap(), "again").unwrap();
    assert_eq!(again, m);
    // Optional parts may be absent.
    let mut v = valid();
    v.as_object_mut().unwrap().remove("router");
    v.as_object_mut().unwrap().remove("backbone_delta");
    let m = parse(&v).unwrap();
    assert!(m.router.is_none() && m.backbone_delta.is_none());
}

#[test]
fn path_traversal_and_odd_names_are_rejected() {
    for bad in [
        "../x.safetensors",
        "..",
        ".",
        "a/b.safetensors",
        "/etc/passwd",
        "a\\b",
        "C:x",
        "",
        "nul\u{0}byte",
        ".hidden",
        "manifest.json",
        "new\nline",
    ] {
        let mut v = valid();
        v["skillpacks"][1]["file"] = json!(bad);
        let e = parse(&v).unwrap_err();
        assert_eq!(field(&e), "skillpacks[1].file", "{bad:?}: {e}");
        assert_eq!(e.file(), "manifest.json");
        let mut v = valid();
        v["router"]["file"] = json!(bad);
        assert_eq!(field(&parse(&v).unwrap_err()), "router.file", "{bad:?}");
        let mut v = valid();
        v["backbone_delta"]["file"] = json!(bad);
        assert_eq!(
            field(&parse(&v).unwrap_err()),
            "backbone_delta.file",
            "{bad:?}"
        );
    }
}

#[test]
fn duplicates_are_rejected() {
    let mut v = valid();
    v["skillpacks"][1]["name"] = json!("math");
    let e = parse(&v).unwrap_err();
    assert!(
        matches!(e, Error::Duplicate { ref name, .. } if name == "math"),
        "{e}"
    );
    let mut v = valid();
    v["skillpacks"][1]["file"] = json!("math.safetensors");
    assert!(matches!(parse(&v), Err(Error::Duplicate { .. })));
    let mut v = valid();
    v["router"]["file"] = json!("code.safetensors");
    assert!(matches!(parse(&v), Err(Error::Duplicate { .. })));
}

#[test]
fn unknown_fields_are_rejected() {
    for path in [
        &[][..],
        &["base"][..],
        &["router"][..],
        &["backbone_delta"][..],
    ] {
        let mut v = valid();
        let mut o = &mut v;
        for p in path {
            o = &mut o[*p];
        }
        o.as_object_mut().unwrap().insert("extra".into(), json!(1));
        assert!(matches!(parse(&v), Err(Error::Json { .. })), "{path:?}");
    }
    let mut v = valid();
    v["skillpacks"][0]["extra"] = json!(true);
    assert!(matches!(parse(&v), Err(Error::Json { .. })));
}

#[test]
fn bad_digests_sizes_and_headers_are_rejected() {
    for bad in [
        "A".repeat(64),
        "a".repeat(63),
        "a".repeat(65),
        "g".repeat(64),
        String::new(),
    ] {
        let mut v = valid();
        v["skillpacks"][0]["sha256"] = json!(bad);
        assert_eq!(
            field(&parse(&v).unwrap_err()),
            "skillpacks[0].sha256",
            "{bad:?}"
        );
        let mut v = valid();
        v["base"]["backbone_hash"] = json!(bad);
        assert_eq!(field(&parse(&v).unwrap_err()), "base.backbone_hash");
    }
    for bad in [
        json!(0),
        json!(-1),
        json!(1u64 << 41),
        json!(1.5),
        json!("10"),
    ] {
        let mut v = valid();
        v["skillpacks"][0]["bytes"] = bad.clone();
        assert!(parse(&v).is_err(), "{bad}");
    }
    let mut v = valid();
    v["version"] = json!(2);
    assert!(matches!(parse(&v), Err(Error::UnsupportedVersion { .. })));
    let mut v = valid();
    v["format"] = json!("skillzip.skillpack");
    assert!(matches!(parse(&v), Err(Error::WrongFormat { .. })));
    let mut v = valid();
    v["skillpacks"][0]["name"] = json!("");
    assert!(parse(&v).is_err());
    assert!(matches!(
        parse_manifest(b"[1]", "m"),
        Err(Error::InvalidField { .. })
    ));
    assert!(matches!(parse_manifest(b"{", "m"), Err(Error::Json { .. })));
    assert!(matches!(
        parse_manifest(&[0xff, 0xfe], "m"),
        Err(Error::Json { .. })
    ));
    let huge = vec![b' '; (skillzip_format::bundle::MAX_MANIFEST_BYTES + 1) as usize];
    assert!(matches!(
        parse_manifest(&huge, "m"),
        Err(Error::TooLarge { .. })
    ));
}

/// A real bundle on disk: a backbone delta, two skillpacks, a router.
fn build_bundle(dir: &std::path::Path) -> Manifest {
    let mut math = small_pack();
    math.meta.skill = "math".into();
    let mut code = small_pack();
    code.meta.skill = "code".into();
    code.dense.clear();
    write_skillpack(dir.join("math.safetensors"), &math).unwrap();
    write_skillpack(dir.join("code.safetensors"), &code).unwrap();
    let mut delta = BTreeMap::new();
    delta.insert(
        "model.layers.0.mlp.down_proj.weight".to_string(),
        DenseTensor::new(
            vec![2, 3],
            vec![0.5, -0.25, 0.0, 1.0, 2.0, -4.0],
            DenseDtype::F16,
        )
        .unwrap(),
    );
    write_dense_tensors(
        dir.join("backbone_delta.safetensors"),
        &BTreeMap::from([("merge".to_string(), "ties".to_string())]),
        &delta,
    )
    .unwrap();
    std::fs::write(dir.join("router.json"), b"{\"kind\":\"keyword\"}").unwrap();
    let mut m = Manifest::new(BundleBase {
        architecture: "llama".into(),
        backbone_hash: HASH.into(),
        source: "tiny".into(),
    });
    m.backbone_delta = Some(file_ref(dir, "backbone_delta.safetensors").unwrap());
    m.router = Some(file_ref(dir, "router.json").unwrap());
    for name in ["math", "code"] {
        let f = file_ref(dir, &format!("{name}.safetensors")).unwrap();
        m.skillpacks.push(SkillpackRef {
            name: name.into(),
            file: f.file,
            sha256: f.sha256,
            bytes: f.bytes,
        });
    }
    write_manifest(dir, &m).unwrap();
    m
}

#[test]
fn bundle_opens_and_serves_its_files() {
    let dir = tempfile::tempdir().unwrap();
    let m = build_bundle(dir.path());
    let b = Bundle::open(dir.path()).unwrap();
    assert_eq!(b.manifest(), &m);
    assert_eq!(b.skill_names().collect::<Vec<_>>(), ["math", "code"]);
    let math = b.skillpack("math").unwrap();
    assert_eq!(math.meta.skill, "math");
    assert_eq!(math.layers, small_pack().layers);
    let delta = b.backbone_delta().unwrap().unwrap();
    assert_eq!(delta.metadata["merge"], "ties");
    assert_eq!(
        delta.tensors["model.layers.0.mlp.down_proj.weight"].data[5],
        -4.0
    );
    assert_eq!(
        b.router_bytes().unwrap().unwrap(),
        b"{\"kind\":\"keyword\"}"
    );
    let e = b.skillpack("poetry").unwrap_err();
    assert!(matches!(e, Error::UnknownSkill { .. }), "{e}");
}

#[test]
fn modified_skillpack_fails_open_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    build_bundle(dir.path());
    let path = dir.path().join("code.safetensors");
    // Same size, one byte changed.
    let mut bytes = std::fs::read(&path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&path, &bytes).unwrap();
    let e = Bundle::open(dir.path()).unwrap_err();
    assert!(matches!(e, Error::FileDigest { .. }), "{e}");
    assert_eq!(e.file(), path.display().to_string());
    // One byte longer.
    bytes[last] ^= 1;
    bytes.push(0);
    std::fs::write(&path, &bytes).unwrap();
    let e = Bundle::open(dir.path()).unwrap_err();
    assert!(
        matches!(e, Error::FileSize { expected, actual, .. } if actual == expected + 1),
        "{e}"
    );
    assert_eq!(e.file(), path.display().to_string());
    // Missing.
    std::fs::remove_file(&path).unwrap();
    let e = Bundle::open(dir.path()).unwrap_err();
    assert!(matches!(e, Error::Io { .. }), "{e}");
    assert_eq!(e.file(), path.display().to_string());
}

#[test]
fn file_changed_after_open_is_caught_on_read() {
    let dir = tempfile::tempdir().unwrap();
    build_bundle(dir.path());
    let b = Bundle::open(dir.path()).unwrap();
    let path = dir.path().join("math.safetensors");
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[20] ^= 4;
    std::fs::write(&path, &bytes).unwrap();
    let e = b.skillpack("math").unwrap_err();
    assert!(matches!(e, Error::FileDigest { .. }), "{e}");
}

#[test]
fn skillpack_of_another_base_or_name_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    build_bundle(dir.path());
    // code.safetensors now holds a skillpack "code" for another backbone.
    let mut other = small_pack();
    other.meta.skill = "code".into();
    other.meta.base.backbone_hash = "e".repeat(64);
    write_skillpack(dir.path().join("code.safetensors"), &other).unwrap();
    let entry = |name: &str, file: &str| {
        let f = file_ref(dir.path(), file).unwrap();
        SkillpackRef {
            name: name.into(),
            file: f.file,
            sha256: f.sha256,
            bytes: f.bytes,
        }
    };
    let mut m = skillzip_format::read_manifest(dir.path()).unwrap();

    // Names swapped: each file's own `skill` disagrees with the manifest.
    m.skillpacks = vec![
        entry("math", "code.safetensors"),
        entry("code", "math.safetensors"),
    ];
    write_manifest(dir.path(), &m).unwrap();
    let b = Bundle::open(dir.path()).unwrap();
    for skill in ["math", "code"] {
        let e = b.skillpack(skill).unwrap_err();
        assert!(
            matches!(e, Error::InvalidField { ref field, .. } if field == "skill"),
            "{e}"
        );
    }

    // Right name, wrong backbone.
    m.skillpacks = vec![entry("code", "code.safetensors")];
    write_manifest(dir.path(), &m).unwrap();
    let e = Bundle::open(dir.path())
        .unwrap()
        .skillpack("code")
        .unwrap_err();
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
    assert!(e.file().ends_with("code.safetensors"));
}

#[test]
fn write_manifest_refuses_invalid_manifests_and_is_atomic() {
    let dir = tempfile::tempdir().unwrap();
    let m = build_bundle(dir.path());
    let before = std::fs::read(dir.path().join(MANIFEST_FILE)).unwrap();
    let mut bad = m.clone();
    bad.skillpacks[0].file = "../escape".into();
    assert!(write_manifest(dir.path(), &bad).is_err());
    assert_eq!(
        std::fs::read(dir.path().join(MANIFEST_FILE)).unwrap(),
        before
    );
}

#[test]
fn dense_tensor_files_are_validated() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("d.safetensors");
    let mut t = BTreeMap::new();
    t.insert(
        "a".to_string(),
        DenseTensor::new(vec![], vec![2.5], DenseDtype::F32).unwrap(),
    );
    t.insert(
        "b".to_string(),
        DenseTensor::new(vec![2, 0], vec![], DenseDtype::BF16).unwrap(),
    );
    t.insert(
        "c".to_string(),
        DenseTensor::new(vec![3], vec![1.0, 2.0, -3.0], DenseDtype::F16).unwrap(),
    );
    write_dense_tensors(&path, &BTreeMap::new(), &t).unwrap();
    let back = read_dense_tensors(&path).unwrap();
    assert_eq!(back.tensors, t);
    assert!(back.metadata.is_empty());
    // Other dtypes and non-finite values are typed errors naming the tensor.
    let i32s = safetensors::serialize(
        [(
            "n",
            safetensors::tensor::TensorView::new(safetensors::Dtype::I32, vec![1], &[0; 4])
                .unwrap(),
        )],
        None,
    )
    .unwrap();
    std::fs::write(&path, &i32s).unwrap();
    let e = read_dense_tensors(&path).unwrap_err();
    assert!(
        matches!(e, Error::TensorDtype { ref tensor, .. } if tensor == "n"),
        "{e}"
    );
    let nan = f32::NAN.to_le_bytes();
    let bad = safetensors::serialize(
        [(
            "x",
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![1], &nan).unwrap(),
        )],
        None,
    )
    .unwrap();
    let e = skillzip_format::parse_dense_tensors(&bad, "bad").unwrap_err();
    assert!(
        matches!(e, Error::NonFinite { ref tensor, .. } if tensor == "x"),
        "{e}"
    );
    // Shape that does not match the data is refused by the writer.
    let mut t = BTreeMap::new();
    t.insert(
        "x".to_string(),
        DenseTensor {
            shape: vec![2],
            data: vec![1.0],
            dtype: DenseDtype::F32,
        },
    );
    assert!(write_dense_tensors(&path, &BTreeMap::new(), &t).is_err());
}
