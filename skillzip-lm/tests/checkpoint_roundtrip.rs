//! Saving a model with `save` and reopening it with `Checkpoint` gives back the same model,
//! in every layout `save` writes; malformed checkpoints fail with the typed error that names
//! the problem; a failed save leaves the previous checkpoint untouched.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::{
    RawTensor, assert_bits, logits_all, model_from_values, param_values, raw_f32, tokens,
    write_config, write_safetensors,
};
use half::bf16;
use safetensors::Dtype;
use skillzip_lm::Error;
use skillzip_lm::checkpoint::Checkpoint;
use skillzip_lm::config::LlamaConfig;
use skillzip_lm::model::Llama;
use skillzip_lm::save::{DenseDtype, SaveOptions, save_checkpoint, save_tensors};

fn tiny_untied() -> LlamaConfig {
    LlamaConfig {
        tie_word_embeddings: false,
        ..LlamaConfig::tiny()
    }
}

fn reopen(path: &Path) -> Llama {
    Llama::from_checkpoint(&Checkpoint::open(path).unwrap()).unwrap()
}

fn seq(model: &Llama) -> Vec<u32> {
    tokens(10, model.config().vocab_size, 7)
}

/// Every file in `dir` (name → bytes), hidden temporaries included.
fn snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect()
}

fn assert_same_model(a: &Llama, b: &Llama) {
    assert_eq!(a.config(), b.config());
    let (pa, pb) = (param_values(a), param_values(b));
    assert_eq!(pa.keys().collect::<Vec<_>>(), pb.keys().collect::<Vec<_>>());
    for (name, (shape, data)) in &pa {
        assert_eq!(&pb[name].0, shape, "{name}");
        assert_bits(&pb[name].1, data, name);
    }
    let s = seq(a);
    assert_bits(&logits_all(b, &[&s]), &logits_all(a, &[&s]), "logits");
}

#[test]
fn f32_single_file_round_trips_bit_identically() {
    for config in [LlamaConfig::tiny(), tiny_untied()] {
        let model = Llama::random(config, 3, 10.0).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let report = save_tensors(
            dir.path(),
            model.config(),
            model.parameters(),
            SaveOptions::default(),
        )
        .unwrap();
        assert_eq!(report.files, vec!["model.safetensors".to_string()]);
        assert!(!dir.path().join("model.safetensors.index.json").exists());
        assert_same_model(&model, &reopen(dir.path()));
        // A single .safetensors path with config.json beside it.
        assert_same_model(&model, &reopen(&dir.path().join("model.safetensors")));
    }
}

#[test]
fn f32_sharded_round_trips_bit_identically() {
    let model = Llama::random(tiny_untied(), 4, 10.0).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let opts = SaveOptions {
        dtype: DenseDtype::F32,
        max_shard_bytes: Some(20_000),
    };
    let report = save_tensors(dir.path(), model.config(), model.parameters(), opts).unwrap();
    assert!(report.files.len() >= 3, "{:?}", report.files);
    let n = report.files.len();
    for (i, f) in report.files.iter().enumerate() {
        assert_eq!(f, &format!("model-{:05}-of-{n:05}.safetensors", i + 1));
        let len = std::fs::metadata(dir.path().join(f)).unwrap().len();
        // No tensor alone is larger than max_shard_bytes: every shard's data fits (plus its
        // JSON header).
        assert!(len < 20_000 + 2048, "{f}: {len} bytes");
    }
    let index: serde_json::Value = serde_json::from_slice(
        &std::fs::read(dir.path().join("model.safetensors.index.json")).unwrap(),
    )
    .unwrap();
    let weight_map = index["weight_map"].as_object().unwrap();
    assert_eq!(weight_map.len(), model.parameters().len());
    assert_same_model(&model, &reopen(dir.path()));
}

#[test]
fn bf16_round_trips_to_the_bf16_rounded_model() {
    let model = Llama::random(LlamaConfig::tiny(), 5, 10.0).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let opts = SaveOptions {
        dtype: DenseDtype::BF16,
        max_shard_bytes: None,
    };
    save_tensors(dir.path(), model.config(), model.parameters(), opts).unwrap();
    let header_len = u64::from_le_bytes(
        std::fs::read(dir.path().join("model.safetensors")).unwrap()[..8]
            .try_into()
            .unwrap(),
    );
    let st_bytes = std::fs::read(dir.path().join("model.safetensors")).unwrap();
    let header = std::str::from_utf8(&st_bytes[8..8 + header_len as usize]).unwrap();
    assert!(header.contains("\"BF16\"") && !header.contains("\"F32\""));

    let rounded: BTreeMap<_, _> = param_values(&model)
        .into_iter()
        .map(|(n, (shape, data))| {
            let data = data.iter().map(|v| bf16::from_f32(*v).to_f32()).collect();
            (n, (shape, data))
        })
        .collect();
    let rounded = model_from_values(model.config(), &rounded);
    let back = reopen(dir.path());
    assert_same_model(&rounded, &back);
    // And close to the f32 model it came from.
    let s = seq(&model);
    common::assert_close(
        &logits_all(&back, &[&s]),
        &logits_all(&model, &[&s]),
        5e-2,
        "bf16 vs f32 logits",
    );
}

#[test]
fn missing_config_json_is_an_io_error_naming_it() {
    let model = Llama::random(LlamaConfig::tiny(), 6, 1.0).unwrap();
    let dir = tempfile::tempdir().unwrap();
    save_tensors(
        dir.path(),
        model.config(),
        model.parameters(),
        SaveOptions::default(),
    )
    .unwrap();
    std::fs::remove_file(dir.path().join("config.json")).unwrap();
    for path in [
        dir.path().to_path_buf(),
        dir.path().join("model.safetensors"),
    ] {
        match Checkpoint::open(&path) {
            Err(Error::Io { path, .. }) => assert!(path.ends_with("config.json"), "{path:?}"),
            other => panic!("expected an I/O error on config.json, got {other:?}"),
        }
    }
    // An empty directory: no config.
    let empty = tempfile::tempdir().unwrap();
    assert!(matches!(
        Checkpoint::open(empty.path()),
        Err(Error::Io { .. })
    ));
    // Config but no weights.
    write_config(empty.path(), model.config());
    assert!(matches!(
        Checkpoint::open(empty.path()),
        Err(Error::Safetensors { .. })
    ));
}

fn sharded(seed: u64) -> (tempfile::TempDir, Llama, Vec<String>) {
    let model = Llama::random(LlamaConfig::tiny(), seed, 1.0).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let opts = SaveOptions {
        dtype: DenseDtype::F32,
        max_shard_bytes: Some(20_000),
    };
    let report = save_tensors(dir.path(), model.config(), model.parameters(), opts).unwrap();
    assert!(report.files.len() >= 3);
    (dir, model, report.files)
}

#[test]
fn a_missing_shard_is_an_io_error_naming_it() {
    let (dir, _, files) = sharded(7);
    std::fs::remove_file(dir.path().join(&files[1])).unwrap();
    match Checkpoint::open(dir.path()) {
        Err(Error::Io { path, .. }) => assert!(path.ends_with(&files[1]), "{path:?}"),
        other => panic!("expected an I/O error on {}, got {other:?}", files[1]),
    }
}

#[test]
fn an_index_naming_the_wrong_shard_is_rejected() {
    let (dir, _, files) = sharded(8);
    let index_path = dir.path().join("model.safetensors.index.json");
    let mut index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&index_path).unwrap()).unwrap();
    let map = index["weight_map"].as_object_mut().unwrap();
    let victim = "model.norm.weight";
    let holder = map[victim].as_str().unwrap().to_string();
    let other = files.iter().find(|f| **f != holder).unwrap().clone();
    map.insert(victim.into(), other.clone().into());
    std::fs::write(&index_path, serde_json::to_vec(&index).unwrap()).unwrap();
    match Checkpoint::open(dir.path()) {
        Err(Error::Safetensors { what, .. }) => {
            assert!(what.contains(victim) && what.contains(&other), "{what}")
        }
        other => panic!("expected a safetensors error, got {other:?}"),
    }

    // An index naming a shard file that does not exist.
    map_shard(&index_path, victim, "model-00009-of-00009.safetensors");
    assert!(matches!(
        Checkpoint::open(dir.path()),
        Err(Error::Io { .. })
    ));
    // An index entry pointing outside the directory.
    map_shard(&index_path, victim, "../model.safetensors");
    assert!(matches!(
        Checkpoint::open(dir.path()),
        Err(Error::Safetensors { .. })
    ));
}

fn map_shard(index_path: &Path, tensor: &str, shard: &str) {
    let mut index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(index_path).unwrap()).unwrap();
    index["weight_map"][tensor] = shard.into();
    std::fs::write(index_path, serde_json::to_vec(&index).unwrap()).unwrap();
}

/// A directory with `config.json` of the tiny model and a hand-written `model.safetensors`
/// of its tensors, `edit` applied first.
fn hand_written(edit: impl FnOnce(&mut Vec<RawTensor>)) -> tempfile::TempDir {
    let model = Llama::random(LlamaConfig::tiny(), 9, 1.0).unwrap();
    let mut raw = raw_f32(&model);
    edit(&mut raw);
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), model.config());
    write_safetensors(&dir.path().join("model.safetensors"), &raw);
    dir
}

fn raw_mut<'a>(raw: &'a mut [RawTensor], name: &str) -> &'a mut RawTensor {
    raw.iter_mut().find(|t| t.0 == name).unwrap()
}

#[test]
fn an_unmodified_hand_written_checkpoint_loads() {
    let dir = hand_written(|_| {});
    let model = Llama::random(LlamaConfig::tiny(), 9, 1.0).unwrap();
    assert_same_model(&model, &reopen(dir.path()));
}

#[test]
fn a_tensor_of_the_wrong_shape_is_a_shape_error() {
    let dir = hand_written(|raw| {
        let t = raw_mut(raw, "model.layers.1.mlp.up_proj.weight");
        // [48, 32] stored as [32, 48]: same element count, wrong shape.
        t.2 = vec![32, 48];
    });
    let ckpt = Checkpoint::open(dir.path()).unwrap();
    match Llama::from_checkpoint(&ckpt) {
        Err(Error::TensorShape {
            tensor,
            expected,
            got,
            ..
        }) => {
            assert_eq!(tensor, "model.layers.1.mlp.up_proj.weight");
            assert_eq!((expected, got), (vec![48, 32], vec![32, 48]));
        }
        other => panic!("expected a shape error, got {other:?}"),
    }
    let dir = hand_written(|raw| {
        let t = raw_mut(raw, "model.norm.weight");
        t.2 = vec![31];
        t.3.truncate(31 * 4);
    });
    let ckpt = Checkpoint::open(dir.path()).unwrap();
    assert!(matches!(
        Llama::from_checkpoint(&ckpt),
        Err(Error::TensorShape { tensor, .. }) if tensor == "model.norm.weight"
    ));
}

#[test]
fn a_nan_weight_is_a_non_finite_error() {
    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        let dir = hand_written(|raw| {
            let t = raw_mut(raw, "model.layers.0.self_attn.v_proj.weight");
            t.3[4 * 77..4 * 78].copy_from_slice(&bad.to_le_bytes());
        });
        let ckpt = Checkpoint::open(dir.path()).unwrap();
        match Llama::from_checkpoint(&ckpt) {
            Err(Error::NonFinite { tensor, index, .. }) => {
                assert_eq!(tensor, "model.layers.0.self_attn.v_proj.weight");
                assert_eq!(index, 77);
            }
            other => panic!("expected a non-finite error for {bad}, got {other:?}"),
        }
    }
    // A bf16 infinity is caught as well.
    let dir = hand_written(|raw| {
        let t = raw_mut(raw, "model.norm.weight");
        let mut v: Vec<u8> = (0..32)
            .flat_map(|_| bf16::from_f32(1.0).to_le_bytes())
            .collect();
        v[2 * 5..2 * 6].copy_from_slice(&bf16::INFINITY.to_le_bytes());
        t.1 = Dtype::BF16;
        t.3 = v;
    });
    let ckpt = Checkpoint::open(dir.path()).unwrap();
    assert!(matches!(
        Llama::from_checkpoint(&ckpt),
        Err(Error::NonFinite { index: 5, .. })
    ));
}

#[test]
fn an_i8_tensor_is_an_unsupported_dtype_error() {
    let dir = hand_written(|raw| {
        let t = raw_mut(raw, "model.layers.0.input_layernorm.weight");
        t.1 = Dtype::I8;
        t.3 = vec![1u8; 32];
    });
    let ckpt = Checkpoint::open(dir.path()).unwrap();
    match Llama::from_checkpoint(&ckpt) {
        Err(Error::UnsupportedDtype { tensor, dtype, .. }) => {
            assert_eq!(tensor, "model.layers.0.input_layernorm.weight");
            assert!(dtype.contains("I8"), "{dtype}");
        }
        other => panic!("expected an unsupported-dtype error, got {other:?}"),
    }
}

#[test]
fn a_missing_tensor_is_a_missing_tensor_error() {
    let dir = hand_written(|raw| raw.retain(|t| t.0 != "model.layers.1.self_attn.o_proj.weight"));
    let ckpt = Checkpoint::open(dir.path()).unwrap();
    assert!(matches!(
        Llama::from_checkpoint(&ckpt),
        Err(Error::MissingTensor { tensor, .. }) if tensor == "model.layers.1.self_attn.o_proj.weight"
    ));
}

#[test]
fn a_truncated_safetensors_file_is_rejected() {
    let dir = hand_written(|_| {});
    let path = dir.path().join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    for len in [0, 7, 8, 100, bytes.len() - 1] {
        std::fs::write(&path, &bytes[..len]).unwrap();
        assert!(
            matches!(Checkpoint::open(dir.path()), Err(Error::Safetensors { .. })),
            "length {len}"
        );
    }
}

/// Saves `model` with a producer that fails at tensor number `fail_at`.
fn failing_save(dir: &Path, model: &Llama, opts: SaveOptions, fail_at: usize) -> Error {
    let params = param_values(model);
    let mut calls = 0;
    save_checkpoint(dir, model.config(), opts, &[], |name, _| {
        calls += 1;
        if calls == fail_at {
            return Err(Error::InvalidInput(format!("producer failed at {name}")));
        }
        Ok(params[name].1.clone())
    })
    .unwrap_err()
}

#[test]
fn a_failed_save_leaves_the_previous_checkpoint_byte_identical() {
    let new_model = Llama::random(LlamaConfig::tiny(), 99, 1.0).unwrap();
    let n_tensors = new_model.parameters().len();
    for opts in [
        SaveOptions::default(),
        SaveOptions {
            dtype: DenseDtype::F32,
            max_shard_bytes: Some(20_000),
        },
        SaveOptions {
            dtype: DenseDtype::BF16,
            max_shard_bytes: Some(10_000),
        },
    ] {
        // Fail early, in the middle (after whole shards were written) and at the last tensor.
        for fail_at in [1, n_tensors / 2, n_tensors] {
            let old = Llama::random(LlamaConfig::tiny(), 10, 1.0).unwrap();
            let dir = tempfile::tempdir().unwrap();
            save_tensors(dir.path(), old.config(), old.parameters(), opts).unwrap();
            let before = snapshot(dir.path());
            let err = failing_save(dir.path(), &new_model, opts, fail_at);
            assert!(
                matches!(&err, Error::InvalidInput(m) if m.starts_with("producer failed")),
                "{err:?}"
            );
            let after = snapshot(dir.path());
            assert_eq!(
                before.keys().collect::<Vec<_>>(),
                after.keys().collect::<Vec<_>>(),
                "{opts:?}, failing at tensor {fail_at}: files changed"
            );
            for (name, bytes) in &before {
                assert!(
                    after[name] == *bytes,
                    "{opts:?}, failing at tensor {fail_at}: {name} changed"
                );
            }
            if opts.dtype == DenseDtype::F32 {
                assert_same_model(&old, &reopen(dir.path()));
            }
        }
    }
}

#[test]
fn a_non_finite_value_from_the_producer_fails_the_save() {
    let model = Llama::random(LlamaConfig::tiny(), 12, 1.0).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let r = save_checkpoint(
        dir.path(),
        model.config(),
        SaveOptions::default(),
        &[],
        |name, shape| {
            let mut v = vec![0.5f32; shape.iter().product()];
            if name == "model.norm.weight" {
                v[3] = f32::NAN;
            }
            Ok(v)
        },
    );
    assert!(
        matches!(&r, Err(Error::NonFinite { tensor, index: 3, .. }) if tensor == "model.norm.weight"),
        "{r:?}"
    );
    let r = save_checkpoint(
        dir.path(),
        model.config(),
        SaveOptions::default(),
        &[],
        |_, shape| Ok(vec![0.5f32; shape.iter().product::<usize>() - 1]),
    );
    assert!(matches!(r, Err(Error::TensorShape { .. })), "{r:?}");
    assert!(
        !dir.path().join("config.json").exists(),
        "a failed save wrote config.json"
    );
}

#[test]
fn a_new_save_replaces_a_previous_checkpoint_of_another_layout() {
    let old = Llama::random(LlamaConfig::tiny(), 13, 1.0).unwrap();
    let new = Llama::random(LlamaConfig::tiny(), 14, 1.0).unwrap();
    let sharded = SaveOptions {
        dtype: DenseDtype::F32,
        max_shard_bytes: Some(20_000),
    };
    // Sharded, then a single file over it.
    let dir = tempfile::tempdir().unwrap();
    save_tensors(dir.path(), old.config(), old.parameters(), sharded).unwrap();
    save_tensors(
        dir.path(),
        new.config(),
        new.parameters(),
        SaveOptions::default(),
    )
    .unwrap();
    assert_same_model(&new, &reopen(dir.path()));
    // A single file, then sharded over it.
    let dir = tempfile::tempdir().unwrap();
    save_tensors(
        dir.path(),
        old.config(),
        old.parameters(),
        SaveOptions::default(),
    )
    .unwrap();
    save_tensors(dir.path(), new.config(), new.parameters(), sharded).unwrap();
    assert_same_model(&new, &reopen(dir.path()));
}

#[test]
fn a_value_that_overflows_the_storage_type_fails_the_save() {
    // 1e5 is finite in f32 but infinite in f16 (max 65504); f32::MAX rounds to bf16 ∞. A
    // save that succeeded would leave a checkpoint that cannot be loaded.
    let model = Llama::random(LlamaConfig::tiny(), 15, 1.0).unwrap();
    for (dtype, big) in [(DenseDtype::F16, 1e5f32), (DenseDtype::BF16, f32::MAX)] {
        let dir = tempfile::tempdir().unwrap();
        let opts = SaveOptions {
            dtype,
            max_shard_bytes: None,
        };
        let r = save_checkpoint(dir.path(), model.config(), opts, &[], |name, shape| {
            let mut v = vec![0.5f32; shape.iter().product()];
            if name == "model.layers.1.mlp.up_proj.weight" {
                v[9] = big;
            }
            Ok(v)
        });
        assert!(
            matches!(&r, Err(Error::NonFinite { tensor, index: 9, .. }) if tensor == "model.layers.1.mlp.up_proj.weight"),
            "{dtype:?}: {r:?}"
        );
        // The largest finite f16 is kept.
        let r = save_checkpoint(dir.path(), model.config(), opts, &[], |_, shape| {
            Ok(vec![65504f32; shape.iter().product()])
        });
        assert!(r.is_ok(), "{dtype:?}: {r:?}");
        Llama::from_checkpoint(&Checkpoint::open(dir.path()).unwrap()).unwrap();
    }
}
