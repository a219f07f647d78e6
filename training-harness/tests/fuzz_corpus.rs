//! Replays the `trainer_checkpoint` fuzz corpus (`fuzz/corpus/trainer_checkpoint/`) through
//! the target's check; `seed_corpus_is_current` checks (or, with `SKILLZIP_WRITE_SEEDS=1`,
//! rewrites) the `seed-*` files: a real checkpoint's tensor file and state of a tiny model.

mod common;
#[path = "../../fuzz/corpus_support.rs"]
mod corpus_support;

use common::{pairs, params_of, tiny_model};
use skillzip_harness::fuzzing::check_trainer_checkpoint_bytes;
use skillzip_harness::{DpoTrainer, TrainConfig};
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
