//! The trainer learns (the loss falls, only linear layers move), and a run killed after a
//! checkpoint resumes to exactly the parameters of an uninterrupted run; damaged or foreign
//! checkpoints are typed errors and a half-written one is never picked up.

mod common;

use common::{pairs, params_of, tiny_model};
use skillzip_harness::train::Params;
use skillzip_harness::{DpoTrainer, Error, LnDpo, Schedule, TrainConfig};
use skillzip_lm::checkpoint::{TensorRole, tensor_specs};
use skillzip_lm::config::LlamaConfig;

fn config(total_steps: usize) -> TrainConfig {
    TrainConfig {
        objective: LnDpo {
            beta: 2.0,
            gamma: 0.5,
            nll: 0.0,
        },
        schedule: Schedule {
            peak_lr: 3e-3,
            min_lr: 3e-4,
            warmup_steps: 2,
            total_steps,
        },
        clip_norm: Some(1.0),
        ..TrainConfig::default()
    }
}

fn base() -> Params {
    params_of(&tiny_model(21, 10.0))
}

#[test]
fn training_lowers_the_loss_and_moves_only_linear_layers() {
    let base = base();
    let mut trainer = DpoTrainer::new(&LlamaConfig::tiny(), base.clone(), config(30)).unwrap();
    let pairs = pairs();
    let first = trainer.step(&pairs).unwrap();
    let mut last = first;
    for _ in 1..30 {
        last = trainer.step(&pairs).unwrap();
        assert!(last.loss.is_finite());
    }
    assert_eq!(trainer.steps(), 30);
    assert!(
        last.loss < 0.5 * first.loss,
        "{} → {}",
        first.loss,
        last.loss
    );
    assert!(last.margin > first.margin);
    assert_eq!(last.accuracy, 1.0);
    assert!(last.optimizer.lr < first.optimizer.lr);
    let after = trainer.parameters();
    for (name, _, role) in tensor_specs(&LlamaConfig::tiny()) {
        let moved = after[&name] != base[&name];
        assert_eq!(moved, matches!(role, TensorRole::Linear(..)), "{name}");
    }
}

#[test]
fn a_resumed_run_ends_exactly_where_an_uninterrupted_one_does() {
    let pairs = pairs();
    let batches = [
        &pairs[..2],
        &pairs[1..],
        &pairs[..],
        &pairs[2..],
        &pairs[..1],
        &pairs[..],
    ];
    let tiny = LlamaConfig::tiny();
    let mut straight = DpoTrainer::new(&tiny, base(), config(6)).unwrap();
    for b in batches {
        straight.step(b).unwrap();
    }

    let dir = tempfile::tempdir().unwrap();
    let mut first = DpoTrainer::new(&tiny, base(), config(6)).unwrap();
    assert!(
        DpoTrainer::resume(&tiny, base(), dir.path())
            .unwrap()
            .is_none()
    );
    for b in &batches[..2] {
        first.step(b).unwrap();
    }
    first
        .save_checkpoint(dir.path(), serde_json::json!({"cursor": 1}))
        .unwrap();
    first.step(batches[2]).unwrap();
    let ckpt = first
        .save_checkpoint(dir.path(), serde_json::json!({"cursor": 2}))
        .unwrap();
    assert!(ckpt.ends_with("ckpt-000003"));
    // Killed here, after a step that was never saved.
    first.step(batches[3]).unwrap();
    drop(first);
    // Only the newest complete checkpoint is kept.
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    assert!(!names.iter().any(|n| n == "ckpt-000002"), "{names:?}");

    let (mut resumed, extra) = DpoTrainer::resume(&tiny, base(), dir.path())
        .unwrap()
        .unwrap();
    assert_eq!(extra, serde_json::json!({"cursor": 2}));
    assert_eq!(resumed.steps(), 3);
    for b in &batches[3..] {
        resumed.step(b).unwrap();
    }
    assert_eq!(
        resumed.parameters(),
        straight.parameters(),
        "bit-identical parameters"
    );
}

#[test]
fn half_written_and_damaged_checkpoints_are_never_used_silently() {
    let tiny = LlamaConfig::tiny();
    let dir = tempfile::tempdir().unwrap();
    let mut t = DpoTrainer::new(&tiny, base(), config(4)).unwrap();
    t.step(&pairs()).unwrap();
    t.save_checkpoint(dir.path(), serde_json::Value::Null)
        .unwrap();
    let saved = t.parameters();
    // A crash while writing the next checkpoint leaves a `.partial` directory: ignored.
    let partial = dir.path().join("ckpt-000002.partial");
    std::fs::create_dir_all(&partial).unwrap();
    std::fs::write(partial.join("trainable.safetensors"), b"half").unwrap();
    let (resumed, _) = DpoTrainer::resume(&tiny, base(), dir.path())
        .unwrap()
        .unwrap();
    assert_eq!(resumed.parameters(), saved);

    // A damaged tensor file is a typed error naming it.
    let file = dir.path().join("ckpt-000001/adam_v.safetensors");
    let mut bytes = std::fs::read(&file).unwrap();
    bytes.truncate(bytes.len() / 2);
    std::fs::write(&file, &bytes).unwrap();
    let r = DpoTrainer::resume(&tiny, base(), dir.path());
    assert!(
        matches!(&r, Err(Error::Corrupt { file, .. }) if file.contains("adam_v")),
        "{r:?}"
    );
    // LATEST pointing outside the directory is refused.
    std::fs::write(dir.path().join("LATEST"), "../elsewhere").unwrap();
    let r = DpoTrainer::resume(&tiny, base(), dir.path());
    assert!(matches!(r, Err(Error::Corrupt { .. })), "{r:?}");

    // A checkpoint of another architecture does not load into this one.
    let dir2 = tempfile::tempdir().unwrap();
    t.save_checkpoint(dir2.path(), serde_json::Value::Null)
        .unwrap();
    let wider = LlamaConfig {
        intermediate_size: LlamaConfig::tiny().intermediate_size + 8,
        ..LlamaConfig::tiny()
    };
    let wider_base = params_of(&skillzip_lm::model::Llama::random(wider.clone(), 1, 1.0).unwrap());
    let r = DpoTrainer::resume(&wider, wider_base, dir2.path());
    assert!(matches!(r, Err(Error::Corrupt { .. })), "{r:?}");
}

#[test]
fn starting_parameters_must_fit_the_model() {
    let tiny = LlamaConfig::tiny();
    let mut missing = base();
    missing.remove("model.norm.weight");
    assert!(matches!(
        DpoTrainer::new(&tiny, missing, config(2)),
        Err(Error::InvalidInput(_))
    ));
    let mut extra = base();
    extra.insert("model.extra".into(), vec![0.0]);
    assert!(DpoTrainer::new(&tiny, extra, config(2)).is_err());
    let mut short = base();
    short.insert("model.norm.weight".into(), vec![1.0]);
    assert!(DpoTrainer::new(&tiny, short, config(2)).is_err());
}
