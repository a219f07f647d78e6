//! `weave` end to end on a tiny model: every stage writes its artifact, the table has every
//! configuration, and a second run over the same directory reuses everything.

mod common;

use common::{chat_tokenizer, tiny_model};
use skillzip_harness::selfgen::SelfGenConfig;
use skillzip_harness::weave::{Event, SkillSpec, WeaveConfig, weave};
use skillzip_harness::{LnDpo, Schedule, TrainConfig};
use skillzip_lm::save::{SaveOptions, save_tensors};
use skillzip_tasks::Domain;

fn tiny_run_config(tasks: std::path::PathBuf) -> WeaveConfig {
    WeaveConfig {
        skills: vec![SkillSpec {
            name: "lower".into(),
            domain: Domain::Instructions,
            level: 1,
            tasks_file: Some(tasks),
        }],
        train_prompts: 8,
        heldout_prompts: 3,
        selfgen: SelfGenConfig {
            samples_per_prompt: 4,
            prompts_per_batch: 4,
            max_pairs_per_prompt: 2,
            ..SelfGenConfig::default()
        },
        rounds: 2,
        steps_per_round: 2,
        pairs_per_step: 2,
        train: TrainConfig {
            objective: LnDpo::default(),
            schedule: Schedule {
                peak_lr: 1e-3,
                min_lr: 1e-4,
                warmup_steps: 1,
                total_steps: 0,
            },
            ..TrainConfig::default()
        },
        eval_batch: 3,
        methods: vec!["X8A8B8".into()],
        rank: 2,
        // Ignored with one skill: the whole delta would count as shared.
        merge: Some("ties".into()),
        calibration_prompts: 4,
        seed: 3,
    }
}

#[test]
fn a_tiny_run_writes_every_artifact_and_resumes_by_reusing_them() {
    let dir = tempfile::tempdir().unwrap();
    let model_dir = dir.path().join("base");
    std::fs::create_dir_all(&model_dir).unwrap();
    let model = tiny_model(41, 20.0);
    save_tensors(
        &model_dir,
        model.config(),
        model.parameters(),
        SaveOptions::default(),
    )
    .unwrap();
    chat_tokenizer(&model_dir);
    // A lowercase constraint: the tiny model's vocabulary has a few capitalised words, so
    // some of its samples pass and some fail, which is what makes preference pairs.
    let tasks = dir.path().join("tasks.jsonl");
    let lines: Vec<String> = (0..15)
        .map(|i| {
            serde_json::json!({
                "prompt": format!("w{i} w{} w{}", i + 1, i + 2),
                "check": {"type": "constraints", "constraints": [{"type": "lowercase"}]}
            })
            .to_string()
        })
        .collect();
    std::fs::write(&tasks, lines.join("\n")).unwrap();
    let cfg = tiny_run_config(tasks);
    let run = dir.path().join("run");
    let mut events = Vec::new();
    let report = weave(&model_dir.join("model.safetensors"), &run, &cfg, &mut |e| {
        events.push(e)
    })
    .unwrap();

    let steps = events
        .iter()
        .filter(|e| matches!(e, Event::Step(_)))
        .count();
    assert!(steps > 0, "no training step ran: {events:?}");
    for config in ["base", "target", "X8A8B8"] {
        let cell = report
            .cells
            .iter()
            .find(|c| c.config == config && c.skill == "lower")
            .unwrap_or_else(|| panic!("no {config} cell"));
        assert_eq!(cell.accuracy.total, 3, "{config}");
        assert!(run.join(format!("eval/{config}/lower.json")).exists());
    }
    for file in [
        "config.json",
        "lower/model/config.json",
        "lower/train/LATEST",
        "lower/train/samples-round0.json",
        "lower/train/samples-round1.json",
        "lower.calib",
        "bundle-X8A8B8/manifest.json",
        "results.json",
        "results.md",
    ] {
        assert!(run.join(file).exists(), "{file} missing");
    }
    assert!(
        !run.join("bundle-X8A8B8/backbone_delta.safetensors")
            .exists(),
        "one skill has no shared component"
    );
    let table = std::fs::read_to_string(run.join("results.md")).unwrap();
    assert!(table.contains("| lower | 3 |"), "{table}");
    assert!(table.contains("X8A8B8 gain kept"), "{table}");

    // A second run over the same directory trains nothing and evaluates nothing again.
    let mut again = Vec::new();
    let second = weave(&model_dir.join("model.safetensors"), &run, &cfg, &mut |e| {
        again.push(e)
    })
    .unwrap();
    assert!(!again.iter().any(|e| matches!(e, Event::Step(_))));
    let reused = again
        .iter()
        .filter(|e| matches!(e, Event::Note(n) if n.contains("reused")))
        .count();
    assert_eq!(reused, 4, "{again:?}");
    assert_eq!(second.cells, report.cells);
}

#[test]
fn impossible_settings_are_refused_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = WeaveConfig::quick();
    cfg.rounds = 0;
    let r = weave(
        &dir.path().join("none.gguf"),
        &dir.path().join("run"),
        &cfg,
        &mut |_| {},
    );
    assert!(r.is_err());
    let mut cfg = WeaveConfig::quick();
    cfg.methods = vec!["X9A9B9".into()];
    assert!(
        weave(
            &dir.path().join("none.gguf"),
            &dir.path().join("run"),
            &cfg,
            &mut |_| {}
        )
        .is_err()
    );
    let mut cfg = WeaveConfig::quick();
    cfg.skills[1].name = cfg.skills[0].name.clone();
    assert!(
        weave(
            &dir.path().join("none.gguf"),
            &dir.path().join("run"),
            &cfg,
            &mut |_| {}
        )
        .is_err()
    );
    assert!(
        !dir.path().join("run").exists(),
        "nothing written for a refused config"
    );
}
