//! `generate` decodes through the KV cache exactly as re-running the whole sequence would,
//! honours stop ids, the callback and seeds, and uses the whole context window.

mod common;

use common::{logits_all, tokens};
use skillzip_lm::Error;
use skillzip_lm::config::LlamaConfig;
use skillzip_lm::generate::{GenerateOptions, Sampling, argmax, generate};
use skillzip_lm::model::{Llama, NoHook};

fn model(max_positions: usize) -> Llama {
    let config = LlamaConfig {
        max_position_embeddings: max_positions,
        ..LlamaConfig::tiny()
    };
    Llama::random(config, 61, 20.0).unwrap()
}

fn greedy(max_new_tokens: usize, stop: Vec<u32>) -> GenerateOptions {
    GenerateOptions {
        max_new_tokens,
        sampling: Sampling::Greedy,
        stop,
    }
}

/// Greedy decoding without a cache: the whole sequence re-run for every token.
fn naive_greedy(model: &Llama, prompt: &[u32], n: usize) -> Vec<u32> {
    let vocab = model.config().vocab_size;
    let mut seq = prompt.to_vec();
    for _ in 0..n {
        let logits = logits_all(model, &[&seq]);
        seq.push(argmax(&logits[logits.len() - vocab..]));
    }
    seq[prompt.len()..].to_vec()
}

#[test]
fn greedy_generation_equals_re_running_the_whole_sequence() {
    let model = model(256);
    let prompt = tokens(6, 96, 1);
    let out = generate(&model, &prompt, &greedy(12, vec![]), &mut NoHook, |_| true).unwrap();
    assert_eq!(out, naive_greedy(&model, &prompt, 12));
    // Not a degenerate repetition of one token, so the comparison means something.
    assert!(out.iter().any(|t| *t != out[0]), "{out:?}");
}

#[test]
fn stop_ids_and_the_callback_end_generation() {
    let model = model(256);
    let prompt = tokens(6, 96, 2);
    let full = naive_greedy(&model, &prompt, 8);
    let stop = full[3];
    let first = full.iter().position(|t| *t == stop).unwrap();
    let out = generate(&model, &prompt, &greedy(8, vec![stop]), &mut NoHook, |_| {
        true
    })
    .unwrap();
    assert_eq!(out, full[..first], "stops before the stop id, without it");

    let mut seen = Vec::new();
    let out = generate(&model, &prompt, &greedy(8, vec![]), &mut NoHook, |t| {
        seen.push(t);
        seen.len() < 2
    })
    .unwrap();
    assert_eq!(out, full[..2]);
    assert_eq!(seen, out);
}

#[test]
fn sampling_is_reproducible_from_its_seed() {
    let model = model(256);
    let prompt = tokens(4, 96, 3);
    let sampled = |seed| {
        let opts = GenerateOptions {
            max_new_tokens: 16,
            sampling: Sampling::Sample {
                temperature: 1.5,
                top_k: 0,
                top_p: 1.0,
                seed,
            },
            stop: vec![],
        };
        generate(&model, &prompt, &opts, &mut NoHook, |_| true).unwrap()
    };
    assert_eq!(sampled(1), sampled(1));
    assert_ne!(sampled(1), sampled(2));
    // top_k = 1 is greedy.
    let opts = GenerateOptions {
        max_new_tokens: 10,
        sampling: Sampling::Sample {
            temperature: 1.0,
            top_k: 1,
            top_p: 1.0,
            seed: 9,
        },
        stop: vec![],
    };
    let top1 = generate(&model, &prompt, &opts, &mut NoHook, |_| true).unwrap();
    assert_eq!(top1, naive_greedy(&model, &prompt, 10));
}

#[test]
fn generation_uses_the_whole_context_window_and_no_more() {
    let model = model(8);
    // Positions 0..8 hold the prompt and every generated token but the last, which is
    // never fed back: a prompt of p tokens leaves room for 8 − p + 1 new ones.
    for (p, want) in [(5, 4), (7, 2), (8, 1)] {
        let prompt = tokens(p, 96, 4);
        let out = generate(&model, &prompt, &greedy(20, vec![]), &mut NoHook, |_| true).unwrap();
        assert_eq!(out.len(), want, "prompt of {p}");
        assert_eq!(out, naive_greedy(&model, &prompt, want), "prompt of {p}");
    }
    // A prompt longer than the context is an error, not an empty answer.
    let r = generate(
        &model,
        &tokens(9, 96, 5),
        &greedy(4, vec![]),
        &mut NoHook,
        |_| true,
    );
    assert!(matches!(r, Err(Error::InvalidInput(_))), "{r:?}");
    let r = generate(&model, &[], &greedy(4, vec![]), &mut NoHook, |_| true);
    assert!(matches!(r, Err(Error::InvalidInput(_))), "{r:?}");
}
