//! Replays the `gguf_reader` and `checkpoint_index` fuzz corpora (`fuzz/corpus/<target>/`)
//! through the checks the targets run, so targets and seeds never rot.
//! `seed_corpus_is_current` checks the `seed-*` files against their generators (or, with
//! `SKILLZIP_WRITE_SEEDS=1`, rewrites them).

mod common;
#[path = "../../fuzz/corpus_support.rs"]
mod corpus_support;

use common::{GGML_F32, GGML_Q4_1, GGML_Q8_0, gguf_of};
use skillzip_lm::config::LlamaConfig;
use skillzip_lm::fuzzing::{check_gguf_bytes, check_index_bytes};
use skillzip_lm::gguf::GgufFile;
use skillzip_lm::model::Llama;

fn replay(target: &str, check: fn(&[u8])) -> usize {
    corpus_support::replay(env!("CARGO_MANIFEST_DIR"), target, check)
}

/// A one-block model small enough for a corpus file.
fn small_config() -> LlamaConfig {
    LlamaConfig {
        vocab_size: 32,
        hidden_size: 32,
        intermediate_size: 32,
        num_hidden_layers: 1,
        num_attention_heads: 2,
        num_key_value_heads: 1,
        ..LlamaConfig::tiny()
    }
}

fn seed_ggufs() -> Vec<(String, Vec<u8>)> {
    let model = Llama::random(small_config(), 5, 1.0).unwrap();
    let f32s: fn(&str) -> u32 = |_| GGML_F32;
    let mixed: fn(&str) -> u32 = |name| {
        if name.contains("norm") {
            GGML_F32
        } else if name.contains("mlp") {
            GGML_Q4_1
        } else {
            GGML_Q8_0
        }
    };
    let (plain, _) = gguf_of(&model, f32s);
    let (quant, _) = gguf_of(&model, mixed);
    let mut truncated = quant.clone();
    truncated.truncate(quant.len() / 2);
    vec![
        ("seed-f32.gguf".into(), plain),
        ("seed-q4_1-q8_0.gguf".into(), quant),
        ("seed-truncated.gguf".into(), truncated),
    ]
}

fn seed_indexes() -> Vec<(String, Vec<u8>)> {
    let ok = serde_json::json!({
        "metadata": {"total_size": 1234},
        "weight_map": {
            "model.embed_tokens.weight": "model-00001-of-00002.safetensors",
            "model.norm.weight": "model-00002-of-00002.safetensors"
        }
    });
    let traversal = serde_json::json!({"weight_map": {"a": "../model.safetensors"}});
    vec![
        ("seed-valid.json".into(), ok.to_string().into_bytes()),
        (
            "seed-traversal.json".into(),
            traversal.to_string().into_bytes(),
        ),
        ("seed-not-an-object.json".into(), b"[1, 2, 3]".to_vec()),
    ]
}

#[test]
fn seed_corpus_is_current() {
    let dir = env!("CARGO_MANIFEST_DIR");
    corpus_support::check_seeds(dir, "gguf_reader", seed_ggufs());
    corpus_support::check_seeds(dir, "checkpoint_index", seed_indexes());
}

#[test]
fn seeds_are_what_their_names_say() {
    for (name, bytes) in seed_ggufs() {
        let parsed = GgufFile::parse(&bytes, &name);
        assert_eq!(parsed.is_ok(), !name.contains("truncated"), "{name}");
    }
    for (name, bytes) in seed_indexes() {
        let parsed = skillzip_lm::checkpoint::ShardIndex::parse(&bytes, &name);
        assert_eq!(parsed.is_ok(), name.contains("valid"), "{name}");
    }
}

#[test]
fn gguf_reader_corpus() {
    assert!(replay("gguf_reader", check_gguf_bytes) >= 3);
}

#[test]
fn checkpoint_index_corpus() {
    assert!(replay("checkpoint_index", check_index_bytes) >= 3);
}
