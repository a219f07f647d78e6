//! `weave` end to end on a tiny model: every stage writes its artifact, the table has every
//! configuration, and a second run over the same directory reuses everything.

mod common;

use common::{chat_tokenizer, tiny_model};
use skillzip_format::bundle::Bundle;
use skillzip_harness::selfgen::SelfGenConfig;
use skillzip_harness::weave::{Event, SkillSpec, WeaveConfig, weave};
use skillzip_harness::{Error, evaluate};
use skillzip_harness::{LnDpo, Schedule, TrainConfig};
use skillzip_lm::checkpoint::Checkpoint;
use skillzip_lm::save::{SaveOptions, save_tensors};
use skillzip_lm::skillpack::bundle_model;
use skillzip_lm::tokenizer::Tokenizer;
use skillzip_tasks::Domain;
use skillzip_tasks::jsonl::read_jsonl;
use std::path::{Path, PathBuf};

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
        router: true,
    }
}

/// A base model and tokenizer saved in `dir/base`; returns the model file.
fn tiny_base(dir: &Path) -> PathBuf {
    let model_dir = dir.join("base");
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
    model_dir.join("model.safetensors")
}

/// `count` tasks asking for a lowercase answer to prompts `words(i)`, as JSONL.
fn lowercase_tasks(path: &Path, count: usize, words: impl Fn(usize) -> String) -> PathBuf {
    let lines: Vec<String> = (0..count)
        .map(|i| {
            serde_json::json!({
                "prompt": words(i),
                "check": {"type": "constraints", "constraints": [{"type": "lowercase"}]}
            })
            .to_string()
        })
        .collect();
    std::fs::write(path, lines.join("\n")).unwrap();
    path.to_path_buf()
}

#[test]
fn a_tiny_run_writes_every_artifact_and_resumes_by_reusing_them() {
    let dir = tempfile::tempdir().unwrap();
    let base = tiny_base(dir.path());
    // A lowercase constraint: the tiny model's vocabulary has a few capitalised words, so
    // some of its samples pass and some fail, which is what makes preference pairs.
    let tasks = lowercase_tasks(&dir.path().join("tasks.jsonl"), 15, |i| {
        format!("w{i} w{} w{}", i + 1, i + 2)
    });
    let cfg = tiny_run_config(tasks);
    let run = dir.path().join("run");
    let mut events = Vec::new();
    let report = weave(&base, &run, &cfg, &mut |e| events.push(e)).unwrap();

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
    assert!(
        table.contains("| skill | gain | paired | independent | beyond noise | X8A8B8 |"),
        "{table}"
    );

    // A second run over the same directory trains nothing and evaluates nothing again.
    let mut again = Vec::new();
    let second = weave(&base, &run, &cfg, &mut |e| again.push(e)).unwrap();
    assert!(!again.iter().any(|e| matches!(e, Event::Step(_))));
    let reused = again
        .iter()
        .filter(|e| matches!(e, Event::Note(n) if n.contains("reused")))
        .count();
    assert_eq!(reused, 4, "{again:?}");
    assert_eq!(second.cells, report.cells);
    // Each cell keeps its verdicts per task, in task order, so comparisons can be paired.
    for cell in &report.cells {
        assert_eq!(cell.outcomes.len(), cell.accuracy.total, "{}", cell.config);
        let correct = cell.outcomes.iter().filter(|&&h| h).count();
        assert_eq!(correct, cell.accuracy.correct, "{}", cell.config);
    }

    // Batching and the list of methods may change; anything that shaped the artifacts may not.
    let mut batched = cfg.clone();
    batched.eval_batch = 2;
    weave(&base, &run, &batched, &mut |_| {}).unwrap();
    let mut other = cfg.clone();
    other.rounds = 3;
    other.train.schedule.peak_lr *= 2.0;
    match weave(&base, &run, &other, &mut |_| {}) {
        Err(Error::RunMismatch { fields, .. }) => assert_eq!(fields, ["rounds", "train"]),
        r => panic!("a run with other settings was continued: {r:?}"),
    }
    let before = std::fs::read(run.join("config.json")).unwrap();
    assert_eq!(
        serde_json::from_slice::<WeaveConfig>(&before)
            .unwrap()
            .rounds,
        2,
        "the refused settings were not recorded"
    );

    // A directory written before a setting existed continues when the setting keeps its
    // default (here the likelihood weight, added after the first runs).
    let mut old: serde_json::Value = serde_json::from_slice(&before).unwrap();
    old["train"]["objective"]
        .as_object_mut()
        .unwrap()
        .remove("nll")
        .unwrap();
    std::fs::write(run.join("config.json"), serde_json::to_vec(&old).unwrap()).unwrap();
    weave(&base, &run, &cfg, &mut |_| {}).unwrap();

    // Another base model (same shapes, other values) is refused: every artifact is its own.
    let other_dir = dir.path().join("other");
    std::fs::create_dir_all(other_dir.join("base")).unwrap();
    let other_model = tiny_model(42, 20.0);
    save_tensors(
        &other_dir.join("base"),
        other_model.config(),
        other_model.parameters(),
        SaveOptions::default(),
    )
    .unwrap();
    chat_tokenizer(&other_dir.join("base"));
    match weave(
        &other_dir.join("base/model.safetensors"),
        &run,
        &cfg,
        &mut |_| {},
    ) {
        Err(Error::RunMismatch { fields, .. }) => {
            assert!(fields[0].starts_with("base model"), "{fields:?}")
        }
        r => panic!("a run was continued on another base model: {r:?}"),
    }
}

/// Two skills: the shared component, the router, an ablation and the baselines.
#[test]
fn two_skills_get_a_router_ablations_and_baselines() {
    let dir = tempfile::tempdir().unwrap();
    let base = tiny_base(dir.path());
    let mut cfg = tiny_run_config(lowercase_tasks(&dir.path().join("w.jsonl"), 15, |i| {
        format!("w{i} w{} w{}", i + 1, i + 2)
    }));
    let mut digits = cfg.skills[0].clone();
    digits.name = "digits".into();
    digits.tasks_file = Some(lowercase_tasks(&dir.path().join("d.jsonl"), 15, |i| {
        format!("{} {} A B {}", i % 10, (i + 3) % 10, (i * 7) % 10)
    }));
    cfg.skills.push(digits);
    cfg.rounds = 1;
    cfg.methods = ["X8A8B8", "X8A8B8-nomerge", "svd16", "bitdelta", "deltacome"]
        .map(String::from)
        .to_vec();
    let run = dir.path().join("run");
    let report = weave(&base, &run, &cfg, &mut |_| {}).unwrap();

    let cell = |config: &str, skill: &str| {
        report
            .cells
            .iter()
            .find(|c| c.config == config && c.skill == skill)
            .unwrap_or_else(|| panic!("no {config} cell for {skill}"))
            .accuracy
    };
    let router = report.router.as_ref().expect("two skills have a router");
    assert_eq!(router.train_prompts, 16);
    for (k, skill) in ["lower", "digits"].into_iter().enumerate() {
        for config in cfg
            .methods
            .iter()
            .map(String::as_str)
            .chain(["X8A8B8+router"])
        {
            assert_eq!(cell(config, skill).total, 3, "{config} on {skill}");
        }
        for m in &cfg.methods {
            let stored = report
                .storage
                .iter()
                .find(|s| &s.config == m && s.skill == skill);
            assert!(
                stored.is_some_and(|s| s.bytes > 0),
                "{m} on {skill}: no storage"
            );
        }
        assert_eq!(router.confusion[k].iter().sum::<usize>(), 3);
        assert_eq!(router.routes[k].len(), 3);
        // A task routed to its own skill keeps the oracle's answer; the others were answered
        // with the skillpack they were routed to.
        let answers = |config: &str| -> Vec<serde_json::Value> {
            let path = run.join(format!("eval/{config}/{skill}.json"));
            let v: serde_json::Value =
                serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
            v["answers"].as_array().unwrap().clone()
        };
        let (oracle, routed) = (answers("X8A8B8"), answers("X8A8B8+router"));
        for (i, r) in router.routes[k].iter().enumerate() {
            assert_eq!(oracle[i]["id"], routed[i]["id"]);
            if *r == k {
                assert_eq!(oracle[i], routed[i]);
            }
        }
    }
    // Two skills share a component, except in the no-merge ablation; the router travels with
    // every SkillZip bundle.
    assert!(
        run.join("bundle-X8A8B8/backbone_delta.safetensors")
            .exists()
    );
    assert!(
        !run.join("bundle-X8A8B8-nomerge/backbone_delta.safetensors")
            .exists()
    );
    for bundle in ["bundle-X8A8B8", "bundle-X8A8B8-nomerge"] {
        let manifest = skillzip_format::bundle::read_manifest(run.join(bundle)).unwrap();
        assert!(manifest.router.is_some(), "{bundle} has no router");
    }
    let router_file = skillzip_harness::router::Router::load(&run.join("router.json")).unwrap();
    assert_eq!(router_file.skills(), ["lower", "digits"]);
    for file in [
        "baseline-svd16/digits.json",
        "baseline-deltacome/lower.json",
    ] {
        assert!(run.join(file).exists(), "{file} missing");
    }
    let table = std::fs::read_to_string(run.join("results.md")).unwrap();
    for needle in ["X8A8B8+router", "Learned router", "Storage", "bitdelta"] {
        assert!(table.contains(needle), "{needle} not in {table}");
    }

    // The tiny router gets every task right; swap its routes to exercise misrouting: each
    // task must then be answered with the other skill's skillpack.
    let mut swapped = router.clone();
    for routes in &mut swapped.routes {
        routes.iter_mut().for_each(|r| *r = 1 - *r);
    }
    std::fs::write(
        run.join("router-report.json"),
        serde_json::to_vec(&swapped).unwrap(),
    )
    .unwrap();
    std::fs::remove_dir_all(run.join("eval/X8A8B8+router")).unwrap();
    let mut events = Vec::new();
    let again = weave(&base, &run, &cfg, &mut |e| events.push(e)).unwrap();
    // A report that does not fit the run (a route per task, below the skill count) is
    // computed again, never indexed.
    let mut short = router.clone();
    short.routes[1].pop();
    short.confusion.pop();
    let report_path = run.join("router-report.json");
    let saved = std::fs::read(&report_path).unwrap();
    std::fs::write(&report_path, serde_json::to_vec(&short).unwrap()).unwrap();
    let recomputed = weave(&base, &run, &cfg, &mut |_| {}).unwrap();
    assert_eq!(recomputed.router.as_ref(), Some(router));
    std::fs::write(&report_path, saved).unwrap();
    for to in ["lower", "digits"] {
        let stage = format!("3 tasks routed to {to}");
        assert!(
            events
                .iter()
                .any(|e| matches!(e, Event::Stage(s) if s.ends_with(&stage))),
            "{events:?}"
        );
    }
    let ckpt = Checkpoint::open(&base).unwrap();
    let tok = Tokenizer::of_checkpoint(&ckpt).unwrap();
    let bundle = Bundle::open(run.join("bundle-X8A8B8")).unwrap();
    let (model, hook) = bundle_model(&ckpt, &bundle, Some("digits")).unwrap();
    let held: Vec<_> = read_jsonl(dir.path().join("w.jsonl"), Domain::Instructions)
        .unwrap()
        .into_iter()
        .skip(4)
        .step_by(5)
        .collect();
    let (accuracy, generated) = evaluate(
        &model,
        &tok,
        &held,
        3,
        None,
        &mut hook.unwrap(),
        &mut |_, _| {},
    )
    .unwrap();
    let routed = again
        .cells
        .iter()
        .find(|c| c.config == "X8A8B8+router" && c.skill == "lower")
        .unwrap();
    assert_eq!(routed.accuracy, accuracy);
    let path = run.join("eval/X8A8B8+router/lower.json");
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    for (record, g) in v["answers"].as_array().unwrap().iter().zip(&generated) {
        assert_eq!(record["answer"], g.samples[0].text.as_str());
    }
}

#[test]
fn impossible_settings_are_refused_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    type Breaker = fn(&mut WeaveConfig);
    let breakers: [(&str, Breaker); 10] = [
        ("no rounds", |c| c.rounds = 0),
        ("unknown grid", |c| c.methods = vec!["X9A9B9".into()]),
        ("duplicate skill", |c| {
            c.skills[1].name = c.skills[0].name.clone()
        }),
        ("β = 0", |c| c.train.objective.beta = 0.0),
        ("γ NaN", |c| c.train.objective.gamma = f64::NAN),
        ("negative likelihood weight", |c| {
            c.train.objective.nll = -1.0
        }),
        ("infinite learning rate", |c| {
            c.train.schedule.peak_lr = f64::INFINITY
        }),
        ("zero rank", |c| c.rank = 0),
        ("zero temperature", |c| c.selfgen.temperature = 0.0),
        ("one sample per prompt", |c| {
            c.selfgen.samples_per_prompt = 1
        }),
    ];
    for (what, breaker) in breakers {
        let mut cfg = WeaveConfig::quick();
        breaker(&mut cfg);
        let r = weave(
            &dir.path().join("none.gguf"),
            &dir.path().join("run"),
            &cfg,
            &mut |_| {},
        );
        assert!(matches!(r, Err(Error::InvalidInput(_))), "{what}: {r:?}");
        assert!(
            !dir.path().join("run").exists(),
            "{what}: nothing written for a refused config"
        );
    }
    // The preset itself is valid: the same call gets past validation and fails on the file.
    let r = weave(
        &dir.path().join("none.gguf"),
        &dir.path().join("run"),
        &WeaveConfig::quick(),
        &mut |_| {},
    );
    assert!(!matches!(r, Err(Error::InvalidInput(_))), "{r:?}");
}
