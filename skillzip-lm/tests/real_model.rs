//! Tests on the real SmolLM2-135M-Instruct GGUF (DESIGN.md §6), when it is present.
//!
//! The file is found through `SKILLZIP_SMOLLM2_GGUF`, else under
//! `${SKILLZIP_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/skillzip}/smollm2-135m-instruct/`
//! (`scripts/fetch-smollm2.sh` puts it there). Without it each test prints
//! `skipped: model not present (<path>)` and passes.

use std::sync::OnceLock;
use std::time::Instant;

use candle_core::{Device, Tensor};
use skillzip_lm::checkpoint::Checkpoint;
use skillzip_lm::generate::{GenerateOptions, Sampling, generate};
use skillzip_lm::model::{Llama, Logits, NoHook};
use skillzip_lm::tokenizer::{Message, Tokenizer};

struct Real {
    ckpt: Checkpoint,
    model: Llama,
    tok: Tokenizer,
}

/// The model, loaded once for every test of this file; `None` (after printing the skip line)
/// when the file is absent.
fn real() -> Option<&'static Real> {
    static REAL: OnceLock<Option<Real>> = OnceLock::new();
    let path = skillzip_lm::smollm2_path();
    let loaded = REAL.get_or_init(|| {
        if !path.is_file() {
            return None;
        }
        let start = Instant::now();
        let ckpt = Checkpoint::open(&path).unwrap();
        let model = Llama::from_checkpoint(&ckpt).unwrap();
        let tok = Tokenizer::from_gguf(ckpt.gguf_metadata().unwrap()).unwrap();
        eprintln!("loaded {} in {:.1?}", path.display(), start.elapsed());
        Some(Real { ckpt, model, tok })
    });
    if loaded.is_none() {
        println!("skipped: model not present ({})", path.display());
    }
    loaded.as_ref()
}

#[test]
fn the_configuration_is_smollm2_135m() {
    let Some(r) = real() else { return };
    let c = r.ckpt.config();
    assert_eq!(
        (
            c.num_hidden_layers,
            c.hidden_size,
            c.num_attention_heads,
            c.num_key_value_heads,
            c.vocab_size,
            c.intermediate_size,
        ),
        (30, 576, 9, 3, 49152, 1536)
    );
    assert!(c.tie_word_embeddings);
    assert_eq!(c.rms_norm_eps, 1e-5);
    assert_eq!(r.tok.vocab_size(), 49152);
}

#[test]
fn the_tokenizer_encodes_and_round_trips() {
    let Some(r) = real() else { return };
    let ids = r.tok.encode("Hello world").unwrap();
    assert_eq!(ids.len(), 2, "{ids:?}");
    assert_eq!(r.tok.decode(&ids[..1], false).unwrap(), "Hello");
    assert_eq!(r.tok.decode(&ids[1..], false).unwrap(), " world");
    for text in [
        "Hello world",
        "The year 2024 had 366 days; π ≈ 3.14159.",
        "  leading spaces,\ttabs\nand newlines\n\n",
        "naïve café — 東京 🙂",
    ] {
        let ids = r.tok.encode(text).unwrap();
        assert_eq!(r.tok.decode(&ids, false).unwrap(), text, "{ids:?}");
    }
    // Digits are split one by one (the "smollm" pre-tokenizer).
    let ids = r.tok.encode("2024").unwrap();
    assert_eq!(ids.len(), 4, "{ids:?}");
    // Control tokens are matched whole.
    let im_start = r.tok.token_id("<|im_start|>").unwrap();
    assert_eq!(r.tok.encode("<|im_start|>user").unwrap()[0], im_start);
}

#[test]
fn greedy_chat_knows_the_capital_of_france() {
    let Some(r) = real() else { return };
    let template = r
        .tok
        .chat_template()
        .expect("SmolLM2 has a ChatML template");
    let prompt = template.render(&[Message::user("What is the capital of France?")], true);
    let ids = r.tok.encode(&prompt).unwrap();
    let stop = r.tok.stop_ids();
    assert!(stop.contains(&r.tok.token_id("<|im_end|>").unwrap()));
    let opts = GenerateOptions {
        max_new_tokens: 24,
        sampling: Sampling::Greedy,
        stop,
    };
    let start = Instant::now();
    let out = generate(&r.model, &ids, &opts, &mut NoHook, |_| true).unwrap();
    let answer = r.tok.decode(&out, true).unwrap();
    eprintln!(
        "{} prompt tokens, {} new in {:.1?}: {answer:?}",
        ids.len(),
        out.len(),
        start.elapsed()
    );
    assert!(answer.contains("Paris"), "{answer:?}");
}

#[test]
fn the_forward_pass_is_deterministic() {
    let Some(r) = real() else { return };
    let ids = r.tok.encode("The quick brown fox jumps over").unwrap();
    let t = Tensor::from_vec(ids.clone(), (1, ids.len()), &Device::Cpu).unwrap();
    let run = || -> Vec<f32> {
        r.model
            .forward(&t, None, Logits::All, &mut NoHook)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    };
    let (a, b) = (run(), run());
    assert_eq!(a.len(), ids.len() * 49152);
    assert!(a.iter().all(|v| v.is_finite()));
    assert!(
        a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()),
        "two runs differ"
    );
}
