//! Replays the `trainer_checkpoint` and `router_json` fuzz corpora (`fuzz/corpus/<target>/`)
//! through the targets' checks; `seed_corpus_is_current` and `router_seed_corpus_is_current`
//! check (or, with `SKILLZIP_WRITE_SEEDS=1`, rewrite) the `seed-*` files: a real checkpoint's
//! tensor file and state of a tiny model, and a tiny trained router with damaged variants.

mod common;
#[path = "../../fuzz/corpus_support.rs"]
mod corpus_support;

use common::{pairs, params_of, tiny_model};
use skillzip_harness::fuzzing::{check_router_bytes, check_trainer_checkpoint_bytes};
use skillzip_harness::{DpoTrainer, Router, RouterConfig, TrainConfig};
use skillzip_lm::config::LlamaConfig;

fn seeds() -> Vec<(String, Vec<u8>)> {
    let dir = tempfile::tempdir().unwrap();
    let mut t = DpoTrainer::new(
        &LlamaConfig::tiny(),
        params_of(&tiny_model(1, 1.0)),
        TrainConfig::default(),
    )
    .unwrap();
    t.step(&pairs()).unwrap();
    let ckpt = t
        .save_checkpoint(dir.path(), serde_json::json!({"round": 1}))
        .unwrap();
    ["trainable.safetensors", "state.json"]
        .iter()
        .map(|f| (format!("seed-{f}"), std::fs::read(ckpt.join(f)).unwrap()))
        .collect()
}

#[test]
fn trainer_checkpoint_corpus() {
    let n = corpus_support::replay(
        env!("CARGO_MANIFEST_DIR"),
        "trainer_checkpoint",
        check_trainer_checkpoint_bytes,
    );
    assert!(n >= 2);
}

#[test]
fn seed_corpus_is_current() {
    // Training is bit-reproducible, so the seeds are too.
    corpus_support::check_seeds(env!("CARGO_MANIFEST_DIR"), "trainer_checkpoint", seeds());
}

/// A router over 3 skills and 3 features trained on 6 fixed points, and damaged copies.
fn router_seeds() -> Vec<(String, Vec<u8>)> {
    let features: Vec<Vec<f32>> = vec![
        vec![1.0, 0.0, 2.0],
        vec![1.5, 0.5, 2.0],
        vec![-1.0, 3.0, 2.0],
        vec![-1.5, 2.5, 2.0],
        vec![0.0, -2.0, 2.0],
        vec![0.5, -2.5, 2.0],
    ];
    let labels = [0, 0, 1, 1, 2, 2];
    let skills = ["math", "code", "mc"].map(String::from).to_vec();
    let cfg = RouterConfig {
        epochs: 40,
        ..RouterConfig::default()
    };
    let router = Router::train(&features, &labels, skills, &cfg).unwrap();
    let valid = router.to_json_bytes().unwrap();
    let edit = |f: &dyn Fn(&mut serde_json::Value)| {
        let mut v: serde_json::Value = serde_json::from_slice(&valid).unwrap();
        f(&mut v);
        serde_json::to_vec(&v).unwrap()
    };
    vec![
        ("seed-valid.json".into(), valid.clone()),
        (
            "seed-short-weights.json".into(),
            edit(&|v| {
                v["weights"].as_array_mut().unwrap().pop();
            }),
        ),
        (
            "seed-duplicate-skill.json".into(),
            edit(&|v| v["skills"][1] = "math".into()),
        ),
        (
            "seed-zero-inv-std.json".into(),
            edit(&|v| v["inv_std"][0] = 0.0.into()),
        ),
        (
            "seed-overflow.json".into(),
            edit(&|v| v["bias"][2] = serde_json::json!(1e39)),
        ),
        (
            "seed-no-skills.json".into(),
            edit(&|v| {
                v["skills"] = serde_json::json!([]);
                v["weights"] = serde_json::json!([]);
                v["bias"] = serde_json::json!([]);
            }),
        ),
        (
            "seed-truncated.json".into(),
            valid[..valid.len() / 2].to_vec(),
        ),
    ]
}

#[test]
fn router_json_corpus() {
    let n = corpus_support::replay(
        env!("CARGO_MANIFEST_DIR"),
        "router_json",
        check_router_bytes,
    );
    assert!(n >= 7);
}

#[test]
fn router_seed_corpus_is_current() {
    let seeds = router_seeds();
    // The valid seed parses; every damaged one is a typed error.
    for (name, bytes) in &seeds {
        assert_eq!(
            Router::from_json_bytes(bytes).is_ok(),
            name == "seed-valid.json",
            "{name}"
        );
    }
    corpus_support::check_seeds(env!("CARGO_MANIFEST_DIR"), "router_json", seeds);
}
