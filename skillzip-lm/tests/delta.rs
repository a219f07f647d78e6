//! `DeltaReader` streams exactly `tuned − base`, tensor by tensor, and refuses checkpoints of
//! different architectures with an error naming the field or tensor.

mod common;

use std::path::Path;

use common::{Values, gguf_of, param_values, raw_f32, write_config, write_safetensors};
use skillzip_lm::Error;
use skillzip_lm::checkpoint::{Checkpoint, LinearKind, TensorRole, tensor_specs};
use skillzip_lm::config::LlamaConfig;
use skillzip_lm::delta::DeltaReader;
use skillzip_lm::model::Llama;
use skillzip_lm::save::{SaveOptions, save_checkpoint};

fn save(dir: &Path, config: &LlamaConfig, params: &Values) {
    save_checkpoint(dir, config, SaveOptions::default(), &[], |name, _| {
        Ok(params[name].1.clone())
    })
    .unwrap();
}

const CHANGED: [&str; 3] = [
    "model.embed_tokens.weight",
    "model.layers.1.mlp.down_proj.weight",
    "model.layers.0.post_attention_layernorm.weight",
];

/// Base values, and tuned values with [`CHANGED`] perturbed (each element of those by a
/// different amount, some by zero).
fn base_and_tuned() -> (LlamaConfig, Values, Values) {
    let model = Llama::random(LlamaConfig::tiny(), 31, 5.0).unwrap();
    let base = param_values(&model);
    let mut tuned = base.clone();
    for (k, name) in CHANGED.iter().enumerate() {
        for (i, v) in tuned.get_mut(*name).unwrap().1.iter_mut().enumerate() {
            *v += ((i * 7 + k) % 5) as f32 * 0.01 - 0.02;
        }
    }
    (model.config().clone(), base, tuned)
}

/// Reads every delta, checking it against `base` and `tuned`.
fn check_deltas(base_ckpt: &Checkpoint, tuned_ckpt: &Checkpoint, base: &Values, tuned: &Values) {
    let reader = DeltaReader::new(base_ckpt, tuned_ckpt).unwrap();
    let specs = tensor_specs(base_ckpt.config());
    assert_eq!(reader.len(), specs.len());
    let mut seen = Vec::new();
    for (d, (name, shape, role)) in reader.zip(&specs) {
        let d = d.unwrap();
        assert_eq!(&d.name, name);
        assert_eq!(&d.role, role);
        assert_eq!(&d.base.shape, shape);
        assert_eq!(d.base.data, base[name].1, "{name}: base values");
        let want: Vec<f32> = tuned[name]
            .1
            .iter()
            .zip(&base[name].1)
            .map(|(t, b)| t - b)
            .collect();
        assert_eq!(d.delta, want, "{name}: delta");
        if d.delta.iter().any(|v| *v != 0.0) {
            seen.push(name.clone());
        }
    }
    let mut changed: Vec<String> = CHANGED.iter().map(|s| s.to_string()).collect();
    changed.sort();
    seen.sort();
    assert_eq!(seen, changed, "tensors with a non-zero delta");
}

#[test]
fn deltas_are_zero_except_the_changed_tensors_and_equal_tuned_minus_base() {
    let (config, base, tuned) = base_and_tuned();
    let (bdir, tdir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    save(bdir.path(), &config, &base);
    save(tdir.path(), &config, &tuned);
    let (b, t) = (
        Checkpoint::open(bdir.path()).unwrap(),
        Checkpoint::open(tdir.path()).unwrap(),
    );
    check_deltas(&b, &t, &base, &tuned);
    // Roles: a linear weight is named as one.
    let mut reader = DeltaReader::new(&b, &t).unwrap();
    let down = std::iter::from_fn(|| reader.next_delta())
        .map(Result::unwrap)
        .find(|d| d.name == CHANGED[1])
        .unwrap();
    assert_eq!(down.role, TensorRole::Linear(1, LinearKind::Down));
}

#[test]
fn a_gguf_base_and_a_safetensors_fine_tune_of_it_are_the_same_architecture() {
    // The usual case: the base model is a GGUF (float metadata stored as f32), the fine-tune
    // an HF checkpoint whose config.json says rms_norm_eps = 1e-5.
    let (config, base, tuned) = base_and_tuned();
    let model = common::model_from_values(&config, &base);
    let (bytes, _) = gguf_of(&model, |_| common::GGML_F32);
    let dir = tempfile::tempdir().unwrap();
    let gguf = dir.path().join("base.gguf");
    std::fs::write(&gguf, bytes).unwrap();
    let tdir = tempfile::tempdir().unwrap();
    save(tdir.path(), &config, &tuned);
    let (b, t) = (
        Checkpoint::open(&gguf).unwrap(),
        Checkpoint::open(tdir.path()).unwrap(),
    );
    check_deltas(&b, &t, &base, &tuned);
}

#[test]
fn a_configuration_mismatch_names_the_field() {
    let (config, base, _) = base_and_tuned();
    let bdir = tempfile::tempdir().unwrap();
    save(bdir.path(), &config, &base);
    let b = Checkpoint::open(bdir.path()).unwrap();
    let variants: [(&str, LlamaConfig); 4] = [
        (
            "intermediate_size",
            LlamaConfig {
                intermediate_size: 64,
                ..config.clone()
            },
        ),
        (
            "num_key_value_heads",
            LlamaConfig {
                num_key_value_heads: 4,
                ..config.clone()
            },
        ),
        (
            "rms_norm_eps",
            LlamaConfig {
                rms_norm_eps: 1e-6,
                ..config.clone()
            },
        ),
        (
            "tie_word_embeddings",
            LlamaConfig {
                tie_word_embeddings: false,
                ..config.clone()
            },
        ),
    ];
    for (field, other) in variants {
        let model = Llama::random(other.clone(), 32, 1.0).unwrap();
        let tdir = tempfile::tempdir().unwrap();
        save(tdir.path(), &other, &param_values(&model));
        let t = Checkpoint::open(tdir.path()).unwrap();
        match DeltaReader::new(&b, &t) {
            Err(Error::ArchitectureMismatch { what }) => {
                assert!(what.contains(field), "{field}: {what}");
                assert!(
                    what.contains(&tdir.path().display().to_string()),
                    "{field}: {what}"
                );
            }
            other => panic!("{field}: expected an architecture mismatch, got {other:?}"),
        }
    }
}

#[test]
fn a_missing_tensor_names_it_and_the_file() {
    let (config, base, _) = base_and_tuned();
    let bdir = tempfile::tempdir().unwrap();
    save(bdir.path(), &config, &base);
    let b = Checkpoint::open(bdir.path()).unwrap();
    let missing = "model.layers.1.self_attn.k_proj.weight";
    let model = common::model_from_values(&config, &base);
    let mut raw = raw_f32(&model);
    raw.retain(|t| t.0 != missing);
    let tdir = tempfile::tempdir().unwrap();
    write_config(tdir.path(), &config);
    write_safetensors(&tdir.path().join("model.safetensors"), &raw);
    let t = Checkpoint::open(tdir.path()).unwrap();
    for (x, y, file) in [(&b, &t, tdir.path()), (&t, &b, tdir.path())] {
        match DeltaReader::new(x, y) {
            Err(Error::MissingTensor { file: f, tensor }) => {
                assert_eq!(tensor, missing);
                assert_eq!(f, file.display().to_string());
            }
            other => panic!("expected a missing-tensor error, got {other:?}"),
        }
    }
}
