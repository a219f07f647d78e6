//! `finetune` on a tiny random model with a tiny byte-level tokenizer: the training loss goes
//! down, only linear weights move, and the same seed gives the same bits.

mod common;

use common::{Meta, meta_values, param_values, tokenizer_meta};
use skillzip_lm::Error;
use skillzip_lm::checkpoint::{TensorRole, tensor_specs};
use skillzip_lm::config::LlamaConfig;
use skillzip_lm::finetune::{Params, SftOptions, SftTask, eval_loss, finetune};
use skillzip_lm::model::Llama;
use skillzip_lm::skillpack::model_from_params;
use skillzip_lm::tokenizer::{Message, Tokenizer};

/// `tokenizer_meta`'s 96 tokens (ChatML specials, `Ġ`, `!`..`z`) with `` ` `` swapped for the
/// byte-level newline `Ċ`, so every character of a rendered arithmetic example has a token.
fn tokenizer(chat_template: bool) -> Tokenizer {
    let mut meta = tokenizer_meta(96);
    for (key, value) in &mut meta {
        if *key == "tokenizer.ggml.tokens"
            && let Meta::StrArray(tokens) = value
        {
            let i = tokens.iter().position(|t| t == "`").unwrap();
            tokens[i] = "Ċ".into();
        }
    }
    if !chat_template {
        meta.retain(|(k, _)| *k != "tokenizer.chat_template");
    }
    Tokenizer::from_gguf(&meta_values(&meta)).unwrap()
}

fn base() -> (LlamaConfig, Params) {
    let config = LlamaConfig::tiny();
    let model = Llama::random(config.clone(), 3, 5.0).unwrap();
    let params = param_values(&model)
        .into_iter()
        .map(|(n, (_, v))| (n, v))
        .collect();
    (config, params)
}

fn opts(seed: u64) -> SftOptions {
    SftOptions {
        steps: 8,
        batch: 3,
        lr: 1e-2,
        seed,
    }
}

#[test]
fn the_tokenizer_covers_the_arithmetic_task() {
    let tok = tokenizer(true);
    let template = tok.chat_template().unwrap();
    for (prompt, response) in SftTask::Arithmetic.examples(20, 1) {
        let text = template.render(&[Message::user(&prompt)], true) + &response;
        let ids = tok.encode(&text).unwrap();
        assert!(ids.iter().all(|&i| i < 96), "{text:?}: {ids:?}");
        assert_eq!(tok.decode(&ids, false).unwrap(), text, "nothing dropped");
    }
    assert_eq!(tok.stop_ids(), [2]);
}

#[test]
fn finetune_lowers_the_loss_moves_only_linears_and_is_reproducible() {
    let (config, params) = base();
    let tok = tokenizer(true);
    let examples = SftTask::Arithmetic.examples(6, 7);
    let before = eval_loss(
        &model_from_params(&config, params.clone()).unwrap(),
        &tok,
        &examples,
    )
    .unwrap();

    let mut seen = Vec::new();
    let (tuned, losses) = finetune(
        &config,
        params.clone(),
        &tok,
        &examples,
        opts(5),
        &mut |step, loss| seen.push((step, loss)),
    )
    .unwrap();
    assert_eq!(losses.len(), 8);
    assert!(
        losses.iter().all(|l| l.is_finite() && *l > 0.0),
        "{losses:?}"
    );
    assert_eq!(
        seen,
        losses
            .iter()
            .enumerate()
            .map(|(i, l)| (i + 1, *l))
            .collect::<Vec<_>>()
    );
    assert!(
        losses[7] < losses[0],
        "the training loss did not go down: {losses:?}"
    );
    let after = eval_loss(
        &model_from_params(&config, tuned.clone()).unwrap(),
        &tok,
        &examples,
    )
    .unwrap();
    assert!(after < before, "held loss {before} → {after}");

    // Only linear weights move; every one of them does.
    assert_eq!(
        tuned.keys().collect::<Vec<_>>(),
        params.keys().collect::<Vec<_>>()
    );
    for (name, _, role) in tensor_specs(&config) {
        let (old, new) = (&params[&name], &tuned[&name]);
        assert_eq!(old.len(), new.len(), "{name}");
        match role {
            TensorRole::Linear(..) => assert_ne!(old, new, "{name} did not change"),
            _ => common::assert_bits(new, old, &name),
        }
    }

    // The same seed gives the same bits; another seed another example order.
    let (again, losses_again) = finetune(
        &config,
        params.clone(),
        &tok,
        &examples,
        opts(5),
        &mut |_, _| {},
    )
    .unwrap();
    common::assert_bits(&losses_again, &losses, "losses");
    for (name, v) in &tuned {
        common::assert_bits(&again[name], v, name);
    }
    let (_, other) = finetune(&config, params, &tok, &examples, opts(6), &mut |_, _| {}).unwrap();
    assert_ne!(other, losses, "the seed orders the examples");
}

#[test]
fn invalid_settings_are_errors() {
    let (config, params) = base();
    let tok = tokenizer(true);
    let examples = SftTask::Capitals.examples(2, 0);
    let cases = [
        ("no examples", Vec::new(), opts(0)),
        (
            "no steps",
            examples.clone(),
            SftOptions {
                steps: 0,
                ..opts(0)
            },
        ),
        (
            "an empty batch",
            examples.clone(),
            SftOptions {
                batch: 0,
                ..opts(0)
            },
        ),
    ];
    for (what, ex, o) in cases {
        let r = finetune(&config, params.clone(), &tok, &ex, o, &mut |_, _| {});
        assert!(matches!(r, Err(Error::InvalidInput(_))), "{what}: {r:?}");
    }
    let r = finetune(
        &config,
        params.clone(),
        &tokenizer(false),
        &examples,
        opts(0),
        &mut |_, _| {},
    );
    assert!(
        matches!(r, Err(Error::ChatTemplate(_))),
        "no chat template: {r:?}"
    );
    let mut missing = params;
    missing.remove("model.norm.weight");
    let r = finetune(&config, missing, &tok, &examples, opts(0), &mut |_, _| {});
    assert!(matches!(r, Err(Error::MissingTensor { .. })), "{r:?}");
}
