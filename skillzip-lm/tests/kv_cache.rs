//! The KV cache, `Logits::Last` and batching change how the decoder is run, never what it
//! computes: each must reproduce one full forward pass over the same tokens.

mod common;

use common::{assert_close, ids, logits_all, tokens};
use skillzip_lm::config::LlamaConfig;
use skillzip_lm::model::{KvCache, Llama, Logits, NoHook};

/// Different kernels (GEMM shapes) sum in different orders: agreement to f32 rounding.
const TOL: f32 = 1e-5;

fn model() -> Llama {
    // scale 20: weights of std 0.4, so attention is far from uniform and logits are O(1).
    Llama::random(LlamaConfig::tiny(), 11, 20.0).unwrap()
}

#[test]
fn incremental_decoding_through_the_cache_matches_one_full_pass() {
    let model = model();
    let vocab = model.config().vocab_size;
    let seq = tokens(12, vocab, 1);
    let full = logits_all(&model, &[&seq]);
    assert!(
        full.iter().any(|v| v.abs() > 0.1),
        "logits are too small to test anything"
    );

    let mut cache = KvCache::new();
    assert!(cache.is_empty());
    let mut incremental = model
        .forward(
            &ids(&[&seq[..5]]),
            Some(&mut cache),
            Logits::All,
            &mut NoHook,
        )
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    assert_eq!(cache.len(), 5);
    for (i, &tok) in seq.iter().enumerate().skip(5) {
        let step = model
            .forward(&ids(&[&[tok]]), Some(&mut cache), Logits::All, &mut NoHook)
            .unwrap();
        assert_eq!(step.dims(), &[1, 1, vocab]);
        incremental.extend(step.flatten_all().unwrap().to_vec1::<f32>().unwrap());
        assert_eq!(cache.len(), i + 1);
    }
    assert_close(&incremental, &full, TOL, "cached vs full logits");

    // The cache really carries the context: the last token alone, without it, differs.
    let alone = logits_all(&model, &[&seq[11..]]);
    let last_full = &full[11 * vocab..];
    let max_diff = alone
        .iter()
        .zip(last_full)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(max_diff > 1e-3, "context has no effect ({max_diff})");
}

#[test]
fn last_logits_are_the_last_row_of_all_logits() {
    let model = model();
    let vocab = model.config().vocab_size;
    for n in [1, 2, 9] {
        let seq = tokens(n, vocab, 2);
        let full = logits_all(&model, &[&seq]);
        let last = model
            .forward(&ids(&[&seq]), None, Logits::Last, &mut NoHook)
            .unwrap();
        assert_eq!(last.dims(), &[1, 1, vocab]);
        let last: Vec<f32> = last.flatten_all().unwrap().to_vec1().unwrap();
        assert_close(&last, &full[(n - 1) * vocab..], TOL, &format!("{n} tokens"));
    }
    // The cached path with Logits::Last as generation uses it.
    let seq = tokens(7, vocab, 3);
    let full = logits_all(&model, &[&seq]);
    let mut cache = KvCache::new();
    model
        .forward(
            &ids(&[&seq[..6]]),
            Some(&mut cache),
            Logits::Last,
            &mut NoHook,
        )
        .unwrap();
    let last = model
        .forward(
            &ids(&[&seq[6..]]),
            Some(&mut cache),
            Logits::Last,
            &mut NoHook,
        )
        .unwrap();
    let last: Vec<f32> = last.flatten_all().unwrap().to_vec1().unwrap();
    assert_close(&last, &full[6 * vocab..], TOL, "cached Logits::Last");
}

#[test]
fn a_batch_of_two_equals_two_single_runs() {
    let model = model();
    let vocab = model.config().vocab_size;
    let (a, b) = (tokens(8, vocab, 4), tokens(8, vocab, 5));
    assert_ne!(a, b);
    let batch = logits_all(&model, &[&a, &b]);
    let (la, lb) = (logits_all(&model, &[&a]), logits_all(&model, &[&b]));
    assert_close(&batch[..8 * vocab], &la, TOL, "batch row 0");
    assert_close(&batch[8 * vocab..], &lb, TOL, "batch row 1");

    // Batched decoding through the cache as well.
    let mut cache = KvCache::new();
    model
        .forward(
            &ids(&[&a[..5], &b[..5]]),
            Some(&mut cache),
            Logits::Last,
            &mut NoHook,
        )
        .unwrap();
    let mut last = Vec::new();
    for t in 5..8 {
        last = model
            .forward(
                &ids(&[&a[t..t + 1], &b[t..t + 1]]),
                Some(&mut cache),
                Logits::Last,
                &mut NoHook,
            )
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
    }
    assert_close(&last[..vocab], &la[7 * vocab..], TOL, "cached batch row 0");
    assert_close(&last[vocab..], &lb[7 * vocab..], TOL, "cached batch row 1");
}

#[test]
fn positions_past_the_context_and_ids_past_the_vocabulary_are_rejected() {
    let mut config = LlamaConfig::tiny();
    config.max_position_embeddings = 8;
    let model = Llama::random(config, 1, 1.0).unwrap();
    let mut cache = KvCache::new();
    model
        .forward(
            &ids(&[&[1; 6]]),
            Some(&mut cache),
            Logits::Last,
            &mut NoHook,
        )
        .unwrap();
    let r = model.forward(
        &ids(&[&[1; 3]]),
        Some(&mut cache),
        Logits::Last,
        &mut NoHook,
    );
    assert!(
        matches!(r, Err(skillzip_lm::Error::InvalidInput(_))),
        "{r:?}"
    );
    let r = model.forward(&ids(&[&[96]]), None, Logits::Last, &mut NoHook);
    assert!(
        matches!(r, Err(skillzip_lm::Error::InvalidInput(_))),
        "{r:?}"
    );
}

/// Fails at the first linear of block 1, after block 0 has extended its cache.
struct FailInBlock1;

impl skillzip_lm::model::LinearHook for FailInBlock1 {
    fn observe(
        &mut self,
        layer: usize,
        _: skillzip_lm::checkpoint::LinearKind,
        _: &candle_core::Tensor,
    ) -> skillzip_lm::Result<()> {
        if layer == 1 {
            return Err(skillzip_lm::Error::InvalidInput("hook failed".into()));
        }
        Ok(())
    }
}

#[test]
fn a_failed_step_leaves_the_cache_as_it_was() {
    let model = model();
    let vocab = model.config().vocab_size;
    let seq = tokens(7, vocab, 6);
    let full = logits_all(&model, &[&seq]);
    let mut cache = KvCache::new();
    model
        .forward(
            &ids(&[&seq[..5]]),
            Some(&mut cache),
            Logits::Last,
            &mut NoHook,
        )
        .unwrap();
    let r = model.forward(
        &ids(&[&seq[5..6]]),
        Some(&mut cache),
        Logits::Last,
        &mut FailInBlock1,
    );
    assert!(r.is_err());
    assert_eq!(cache.len(), 5);
    // The cache still holds exactly the 5 positions: decoding resumes correctly.
    for t in 5..7 {
        let step = model
            .forward(
                &ids(&[&seq[t..t + 1]]),
                Some(&mut cache),
                Logits::Last,
                &mut NoHook,
            )
            .unwrap();
        let step: Vec<f32> = step.flatten_all().unwrap().to_vec1().unwrap();
        assert_close(
            &step,
            &full[t * vocab..(t + 1) * vocab],
            TOL,
            &format!("position {t}"),
        );
    }
}
