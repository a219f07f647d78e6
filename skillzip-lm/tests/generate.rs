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

#[test]
fn a_left_padded_batch_computes_what_each_prompt_computes_alone() {
    use skillzip_lm::model::{KvCache, Logits};
    let model = model(256);
    let vocab = model.config().vocab_size;
    let prompts = [tokens(3, 96, 21), tokens(9, 96, 22), tokens(6, 96, 23)];
    let pad_id = 5;
    let width = 9;
    let mut ids = Vec::new();
    let pads: Vec<usize> = prompts.iter().map(|p| width - p.len()).collect();
    for (p, &pad) in prompts.iter().zip(&pads) {
        ids.extend(std::iter::repeat_n(pad_id, pad));
        ids.extend(p);
    }
    let ids = candle_core::Tensor::from_vec(ids, (3, width), &candle_core::Device::Cpu).unwrap();
    let mut cache = KvCache::with_left_padding(pads.clone());
    let batched = model
        .forward(&ids, Some(&mut cache), Logits::All, &mut NoHook)
        .unwrap();
    let batched: Vec<Vec<Vec<f32>>> = batched.to_vec3().unwrap();
    for (r, p) in prompts.iter().enumerate() {
        let alone = logits_all(&model, &[p]);
        let real: Vec<f32> = batched[r][pads[r]..].concat();
        // RoPE positions are shifted by the padding; scores depend only on distances.
        common::assert_close(&real, &alone, 1e-4, &format!("row {r}"));
        assert!(real.iter().all(|v| v.is_finite()));
        // Filler positions are finite too (they attend among themselves), so nothing NaN
        // reaches a real position through a masked score.
        assert!(batched[r].concat().iter().all(|v| v.is_finite()));
    }
    assert_eq!(batched[0][0].len(), vocab);
    // Dropping a finished row keeps the others' caches aligned with their padding.
    cache.retain_rows(&[2, 0]).unwrap();
    assert_eq!(cache.left_padding(), Some(&[pads[2], pads[0]][..]));
    let next =
        candle_core::Tensor::from_vec(vec![7u32, 8], (2, 1), &candle_core::Device::Cpu).unwrap();
    let step: Vec<Vec<Vec<f32>>> = model
        .forward(&next, Some(&mut cache), Logits::Last, &mut NoHook)
        .unwrap()
        .to_vec3()
        .unwrap();
    for (row, (prompt, tok)) in [(&prompts[2], 7u32), (&prompts[0], 8u32)]
        .iter()
        .enumerate()
    {
        let mut seq = prompt.to_vec();
        seq.push(*tok);
        let alone = logits_all(&model, &[&seq]);
        common::assert_close(
            &step[row][0],
            &alone[alone.len() - vocab..],
            1e-4,
            "after retain",
        );
    }
    assert!(cache.retain_rows(&[5]).is_err());
    assert!(cache.retain_rows(&[]).is_err());
    // A padded cache refuses a batch of another size.
    let r = model.forward(
        &next.narrow(0, 0, 1).unwrap(),
        Some(&mut cache),
        Logits::Last,
        &mut NoHook,
    );
    assert!(matches!(r, Err(Error::InvalidInput(_))), "{r:?}");
}

#[test]
fn batched_generation_matches_generating_each_prompt_alone() {
    use skillzip_lm::generate::generate_batch;
    let model = model(256);
    let prompts = vec![
        tokens(2, 96, 31),
        tokens(10, 96, 32),
        tokens(5, 96, 33),
        tokens(7, 96, 34),
    ];
    let alone: Vec<Vec<u32>> = prompts
        .iter()
        .map(|p| generate(&model, p, &greedy(9, vec![]), &mut NoHook, |_| true).unwrap())
        .collect();
    let batched = generate_batch(&model, &prompts, &greedy(9, vec![]), 0, &mut NoHook).unwrap();
    assert_eq!(batched, alone);
    // A stop id that ends some rows early: those rows leave the batch, the rest go on.
    let stop = alone[1][2];
    let want: Vec<Vec<u32>> = alone
        .iter()
        .map(|o| o.iter().take_while(|t| **t != stop).copied().collect())
        .collect();
    assert!(
        want.iter().any(|w| w.len() < 9) && want.iter().any(|w| w.len() == 9),
        "{want:?}"
    );
    let batched = generate_batch(&model, &prompts, &greedy(9, vec![stop]), 0, &mut NoHook).unwrap();
    assert_eq!(batched, want);

    // Sampled rows: row r uses seed + r, so a batch of one prompt reproduces row r.
    let sampled = |prompts: &[Vec<u32>], seed| {
        let opts = GenerateOptions {
            max_new_tokens: 8,
            sampling: Sampling::Sample {
                temperature: 1.3,
                top_k: 20,
                top_p: 0.95,
                seed,
            },
            stop: vec![],
        };
        generate_batch(&model, prompts, &opts, 0, &mut NoHook).unwrap()
    };
    let all = sampled(&prompts, 40);
    assert_eq!(all, sampled(&prompts, 40));
    assert_eq!(sampled(&prompts[2..3], 42)[0], all[2]);
    assert_ne!(all, sampled(&prompts, 41));

    assert_eq!(
        generate_batch(&model, &[], &greedy(4, vec![]), 0, &mut NoHook)
            .unwrap()
            .len(),
        0
    );
    let r = generate_batch(&model, &[vec![]], &greedy(4, vec![]), 0, &mut NoHook);
    assert!(matches!(r, Err(Error::InvalidInput(_))), "{r:?}");
}

#[test]
fn copies_of_a_prompt_share_its_prefill_and_sample_like_separate_rows() {
    use skillzip_lm::generate::{generate_batch, sample_batch};
    let model = model(256);
    let prompts = vec![tokens(4, 96, 51), tokens(8, 96, 52)];
    let opts = GenerateOptions {
        max_new_tokens: 7,
        sampling: Sampling::Sample {
            temperature: 1.2,
            top_k: 30,
            top_p: 0.9,
            seed: 70,
        },
        stop: vec![],
    };
    let samples = sample_batch(&model, &prompts, 3, &opts, 0, &mut NoHook).unwrap();
    assert_eq!(samples.len(), 2);
    assert!(samples.iter().all(|s| s.len() == 3));
    // The same rows laid out as six separate prompts (row r = p·3 + j, seed 70 + r).
    let repeated: Vec<Vec<u32>> = prompts
        .iter()
        .flat_map(|p| std::iter::repeat_n(p.clone(), 3))
        .collect();
    let separate = generate_batch(&model, &repeated, &opts, 0, &mut NoHook).unwrap();
    assert_eq!(samples.concat(), separate);
    // Copies of one prompt differ (different seeds), so they are real samples.
    assert!(samples[0][0] != samples[0][1] || samples[0][1] != samples[0][2]);
    assert_eq!(
        sample_batch(&model, &prompts, 0, &opts, 0, &mut NoHook).unwrap(),
        vec![Vec::<Vec<u32>>::new(); 2]
    );
}
