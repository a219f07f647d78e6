//! Fixtures shared by the harness tests: tiny random models and preference pairs.
#![allow(dead_code)]

use std::collections::BTreeMap;

use skillzip_harness::PreferencePair;
use skillzip_lm::config::LlamaConfig;
use skillzip_lm::model::Llama;

/// A tiny random model with logits of order one (weights of std 0.2·`scale`/10).
pub fn tiny_model(seed: u64, scale: f32) -> Llama {
    Llama::random(LlamaConfig::tiny(), seed, scale).unwrap()
}

/// Every parameter of `model` as f32 vectors.
pub fn params_of(model: &Llama) -> BTreeMap<String, Vec<f32>> {
    model
        .parameters()
        .iter()
        .map(|(n, t)| (n.clone(), t.flatten_all().unwrap().to_vec1().unwrap()))
        .collect()
}

/// `n` token ids below 96 from a small deterministic generator.
pub fn tokens(n: usize, salt: u32) -> Vec<u32> {
    (0..n as u32)
        .map(|i| {
            (i.wrapping_mul(2_654_435_761)
                .wrapping_add(salt.wrapping_mul(97))
                >> 7)
                % 96
        })
        .collect()
}

/// Pairs of different prompt and response lengths (ragged, so padding is exercised).
pub fn pairs() -> Vec<PreferencePair> {
    vec![
        PreferencePair {
            prompt: tokens(5, 1),
            chosen: tokens(3, 2),
            rejected: tokens(6, 3),
        },
        PreferencePair {
            prompt: tokens(1, 4),
            chosen: tokens(7, 5),
            rejected: tokens(1, 6),
        },
        PreferencePair {
            prompt: tokens(9, 7),
            chosen: tokens(2, 8),
            rejected: tokens(4, 9),
        },
    ]
}

/// A word-level tokenizer with ChatML special tokens, sized for [`LlamaConfig::tiny`]'s
/// vocabulary, written to `dir` and loaded.
pub fn chat_tokenizer(dir: &std::path::Path) -> skillzip_lm::tokenizer::Tokenizer {
    let vocab_size = LlamaConfig::tiny().vocab_size;
    let mut words: Vec<String> = [
        "<unk>",
        "<|im_start|>",
        "<|im_end|>",
        "user",
        "assistant",
        "system",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    words.extend(
        [
            "The", "answer", "is", ".", "A", "B", "C", "D", "def", "return",
        ]
        .map(String::from),
    );
    words.extend((0..10).map(|d| d.to_string()));
    let mut i = 0;
    while words.len() < vocab_size {
        words.push(format!("w{i}"));
        i += 1;
    }
    let vocab: serde_json::Map<String, serde_json::Value> = words
        .iter()
        .enumerate()
        .map(|(i, w)| (w.clone(), serde_json::Value::from(i)))
        .collect();
    let special = |id: usize, content: &str| {
        serde_json::json!({"id": id, "content": content, "single_word": false, "lstrip": false,
            "rstrip": false, "normalized": false, "special": true})
    };
    let tok = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": [special(1, "<|im_start|>"), special(2, "<|im_end|>")],
        "normalizer": null, "pre_tokenizer": {"type": "Whitespace"}, "post_processor": null,
        "decoder": null, "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"}
    });
    std::fs::write(dir.join("tokenizer.json"), tok.to_string()).unwrap();
    let config = serde_json::json!({
        "eos_token": "<|im_end|>",
        "chat_template": "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
    });
    std::fs::write(dir.join("tokenizer_config.json"), config.to_string()).unwrap();
    skillzip_lm::tokenizer::Tokenizer::from_hf_dir(dir).unwrap()
}
