//! The `skillzip` binary end to end on tiny random models of the real architecture: calibrate,
//! compress, inspect, eval, export, merge — and its error lines and exit codes.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use skillzip_lm::checkpoint::{Checkpoint, TensorRole, tensor_specs};
use skillzip_lm::config::LlamaConfig;
use skillzip_lm::model::Llama;
use skillzip_lm::save::{SaveOptions, save_checkpoint, save_tensors};

fn skillzip(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_skillzip"))
        .arg("--quiet")
        .args(args)
        .output()
        .expect("run skillzip")
}

fn ok(args: &[&str]) -> String {
    let out = skillzip(args);
    assert!(
        out.status.success(),
        "skillzip {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A WordLevel `tokenizer.json` with `<unk>` = 0 and words `w1`..`w{n-1}`.
fn write_tokenizer(dir: &Path, n: usize) {
    let vocab: serde_json::Map<String, serde_json::Value> = (0..n)
        .map(|i| {
            let word = if i == 0 {
                "<unk>".to_string()
            } else {
                format!("w{i}")
            };
            (word, serde_json::Value::from(i))
        })
        .collect();
    let tok = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
        "normalizer": null, "pre_tokenizer": {"type": "Whitespace"}, "post_processor": null,
        "decoder": null, "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"}
    });
    std::fs::write(dir.join("tokenizer.json"), tok.to_string()).unwrap();
}

/// Base values plus a per-skill delta on every linear weight (low-rank-ish: a rank-2 outer
/// product plus small noise), zero elsewhere.
fn tuned_value(name: &str, base: &[f32], shape: &[usize], skill: u32) -> Vec<f32> {
    let inp = shape[1];
    let h = |i: usize, salt: u32| {
        let x = (i as u32)
            .wrapping_mul(2_654_435_761)
            .wrapping_add(salt.wrapping_mul(40_503));
        ((x >> 8) % 2001) as f32 / 1000.0 - 1.0
    };
    let salt = skill * 7919 + name.len() as u32;
    base.iter()
        .enumerate()
        .map(|(k, b)| {
            let (o, i) = (k / inp, k % inp);
            let low = h(o, salt) * h(i, salt + 1) + 0.5 * h(o, salt + 2) * h(i, salt + 3);
            b + 0.01 * low + 0.0005 * h(k, salt + 4)
        })
        .collect()
}

struct Fixture {
    _dir: tempfile::TempDir,
    root: PathBuf,
}

impl Fixture {
    fn path(&self, p: &str) -> String {
        self.root.join(p).display().to_string()
    }
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let config = LlamaConfig::tiny();
    let model = Llama::random(config.clone(), 11, 1.0).unwrap();
    let base_dir = root.join("base");
    save_tensors(
        &base_dir,
        &config,
        model.parameters(),
        SaveOptions::default(),
    )
    .unwrap();
    write_tokenizer(&base_dir, config.vocab_size);
    let base = Checkpoint::open(&base_dir).unwrap();
    for (skill, name) in [(1u32, "alpha"), (2, "beta")] {
        let dir = root.join(name);
        save_checkpoint(&dir, &config, SaveOptions::default(), &[], |n, shape| {
            let b = base.load(n)?.data;
            let linear = tensor_specs(&config)
                .iter()
                .any(|(s, _, r)| s == n && matches!(r, TensorRole::Linear(..)));
            Ok(if linear {
                tuned_value(n, &b, shape, skill)
            } else {
                b
            })
        })
        .unwrap();
        write_tokenizer(&dir, config.vocab_size);
    }
    let lines: Vec<String> = (0..30)
        .map(|p| {
            let words: Vec<String> = (0..12)
                .map(|w| format!("w{}", 1 + (p * 31 + w * 17) % (config.vocab_size - 1)))
                .collect();
            serde_json::json!({ "text": words.join(" ") }).to_string()
        })
        .collect();
    std::fs::write(root.join("prompts.jsonl"), lines.join("\n")).unwrap();
    Fixture { _dir: dir, root }
}

#[test]
fn calibrate_compress_inspect_eval_export_merge() {
    let f = fixture();
    let base = f.path("base");
    for skill in ["alpha", "beta"] {
        ok(&[
            "calibrate",
            "--base",
            &base,
            "--skill",
            skill,
            "--prompts",
            &f.path("prompts.jsonl"),
            "--out",
            &f.path(&format!("{skill}.calib")),
            "--calibration-rows",
            "64",
            "--eval-rows",
            "32",
        ]);
    }
    let summary = ok(&[
        "compress",
        "--base",
        &base,
        "--tuned",
        &format!("alpha={}", f.path("alpha")),
        "--tuned",
        &format!("beta={}", f.path("beta")),
        "--calibration",
        &format!("alpha={}", f.path("alpha.calib")),
        "--calibration",
        &format!("beta={}", f.path("beta.calib")),
        "--method-for",
        "down_proj=X8A4B4",
        "--merge",
        "ties",
        "--density",
        "0.5",
        "--rank",
        "4",
        "--rotations",
        "2",
        "--out",
        &f.path("bundle"),
        "--report",
        &f.path("layers.md"),
    ]);
    assert!(
        summary.contains("alpha") && summary.contains("beta"),
        "{summary}"
    );
    let report = std::fs::read_to_string(f.root.join("layers.md")).unwrap();
    // 2 blocks × 7 linears × 2 skills rows, plus the header.
    assert_eq!(report.lines().count(), 2 + 2 * 7 * 2, "{report}");
    for name in [
        "manifest.json",
        "backbone_delta.safetensors",
        "alpha.skillpack.safetensors",
    ] {
        assert!(f.root.join("bundle").join(name).exists(), "{name}");
    }

    let inspect = ok(&["inspect", &f.path("bundle"), "--layers"]);
    assert!(inspect.contains("skillpack alpha") && inspect.contains("skillpack beta"));
    assert!(
        inspect.contains("model.layers.1.mlp.down_proj"),
        "{inspect}"
    );
    // The per-kind grid: INT4 weights for down_proj only.
    let rows: Vec<&str> = inspect
        .lines()
        .filter(|l| l.contains("| model.layers."))
        .collect();
    assert_eq!(rows.len(), 2 * 2 * 7, "{inspect}");
    for line in rows {
        let want = if line.contains("down_proj") {
            "X8A4B4"
        } else {
            "X8A8B8"
        };
        assert!(line.contains(want), "{line}");
    }

    // Backbone + skillpack is far closer to the fine-tune than the base is.
    let eval = ok(&[
        "eval",
        "--base",
        &base,
        "--bundle",
        &f.path("bundle"),
        "--tuned",
        &format!("alpha={}", f.path("alpha")),
        "--prompts",
        &f.path("prompts.jsonl"),
    ]);
    let row = eval
        .lines()
        .find(|l| l.starts_with("| alpha"))
        .expect(&eval);
    let cells: Vec<f64> = row
        .split('|')
        .filter_map(|c| c.trim().trim_end_matches('%').parse().ok())
        .collect();
    let (kl_base, kl_pack) = (cells[1], cells[2]);
    assert!(
        kl_pack < 0.5 * kl_base,
        "KL base {kl_base} vs skillpack {kl_pack}: {eval}"
    );

    ok(&[
        "export",
        "--peft",
        "--bundle",
        &f.path("bundle"),
        "--skill",
        "alpha",
        "--base",
        &base,
        "--out",
        &f.path("peft"),
    ]);
    let cfg: serde_json::Value = serde_json::from_slice(
        &std::fs::read(f.root.join("peft/adapter/adapter_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(cfg["r"], 4);
    // The exported backbone is θ_0 + Δ_shared: a loadable checkpoint of the same shape.
    let backbone = Checkpoint::open(f.root.join("peft/backbone")).unwrap();
    assert_eq!(backbone.config(), Checkpoint::open(&base).unwrap().config());

    // task_arithmetic with weights 1, 1 and λ = 1: θ_0 + Δ_α + Δ_β, tensor for tensor.
    ok(&[
        "merge",
        "--base",
        &base,
        "--model",
        &f.path("alpha"),
        "--model",
        &f.path("beta"),
        "--merge",
        "task_arithmetic",
        "--weights",
        "1,1",
        "--out",
        &f.path("merged"),
    ]);
    let [b, a, c, m] =
        ["base", "alpha", "beta", "merged"].map(|p| Checkpoint::open(f.root.join(p)).unwrap());
    let name = "model.layers.0.mlp.up_proj.weight";
    let (b, a, c, m) = (
        b.load(name).unwrap().data,
        a.load(name).unwrap().data,
        c.load(name).unwrap().data,
        m.load(name).unwrap().data,
    );
    for i in 0..b.len() {
        let want = b[i] + ((a[i] - b[i]) + (c[i] - b[i]));
        assert!(
            (m[i] - want).abs() <= 1e-6 * (1.0 + want.abs()),
            "{i}: {} vs {want}",
            m[i]
        );
    }
}

#[test]
fn errors_are_one_line_naming_the_file_with_exit_code_1() {
    let f = fixture();
    let missing = f.path("nope.gguf");
    let out = skillzip(&[
        "calibrate",
        "--base",
        &missing,
        "--skill",
        "x",
        "--task",
        "arith",
        "--out",
        &f.path("x.calib"),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("nope.gguf"), "{err}");

    // A corrupted skillpack: the error names the file.
    let garbage = f.root.join("bad.skillpack.safetensors");
    std::fs::write(&garbage, b"not a skillpack").unwrap();
    let out = skillzip(&["inspect", &garbage.display().to_string()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("bad.skillpack.safetensors"));

    // Usage errors exit with 2.
    assert_eq!(skillzip(&["compress", "--base"]).status.code(), Some(2));
    assert_eq!(skillzip(&["no-such-command"]).status.code(), Some(2));
}

#[test]
fn compress_refuses_mismatched_architectures() {
    let f = fixture();
    let mut other = LlamaConfig::tiny();
    other.intermediate_size += 16;
    let model = Llama::random(other.clone(), 3, 1.0).unwrap();
    let dir = f.root.join("other");
    save_tensors(&dir, &other, model.parameters(), SaveOptions::default()).unwrap();
    ok(&[
        "calibrate",
        "--base",
        &f.path("base"),
        "--skill",
        "alpha",
        "--prompts",
        &f.path("prompts.jsonl"),
        "--out",
        &f.path("alpha.calib"),
        "--calibration-rows",
        "16",
        "--eval-rows",
        "8",
    ]);
    let out = skillzip(&[
        "compress",
        "--base",
        &f.path("base"),
        "--tuned",
        &format!("alpha={}", dir.display()),
        "--calibration",
        &format!("alpha={}", f.path("alpha.calib")),
        "--rank",
        "2",
        "--out",
        &f.path("bundle"),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("intermediate_size"), "{err}");
    assert!(!f.root.join("bundle/manifest.json").exists());
}

#[test]
fn weave_refuses_bad_methods_and_a_run_made_with_other_settings() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let run = out.display().to_string();
    let missing = dir.path().join("none.gguf").display().to_string();
    let err = |extra: &[&str]| {
        let mut args = vec!["weave", "--quick", "--base", &missing, "--out", &run];
        args.extend(extra);
        let o = skillzip(&args);
        assert_eq!(o.status.code(), Some(1), "{args:?}");
        let e = String::from_utf8_lossy(&o.stderr).trim().to_string();
        assert_eq!(e.lines().count(), 1, "{e}");
        e
    };
    for (methods, named) in [
        ("X8A8B8,svd9", "svd9"),
        ("X8A8B8-nomerge-nomerge", "nomerge"),
    ] {
        let e = err(&["--methods", methods]);
        assert!(e.contains(named), "{e}");
    }
    assert!(!out.exists(), "a refused configuration wrote nothing");

    // A run directory made with 3 rounds is not continued with 1.
    std::fs::create_dir_all(&out).unwrap();
    let mut cfg = skillzip_harness::weave::WeaveConfig::quick();
    cfg.rounds = 3;
    std::fs::write(out.join("config.json"), serde_json::to_vec(&cfg).unwrap()).unwrap();
    let e = err(&[]);
    assert!(e.contains("other settings (rounds)"), "{e}");
    // The same settings get as far as opening the (missing) base model.
    let e = err(&["--rounds", "3"]);
    assert!(e.contains("none.gguf"), "{e}");
}

#[test]
fn weave_flags_reach_the_run_settings() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("none.gguf").display().to_string();
    let run = |name: &str, extra: &[&str]| {
        let out = dir.path().join(name);
        let run = out.display().to_string();
        let mut args = vec!["weave", "--quick", "--base", &missing, "--out", &run];
        args.extend(extra);
        let o = skillzip(&args);
        assert_eq!(o.status.code(), Some(1), "{args:?}");
        (out, String::from_utf8_lossy(&o.stderr).trim().to_string())
    };
    let (out, e) = run(
        "set",
        &[
            "--methods",
            "none",
            "--nll",
            "0.5",
            "--beta",
            "3",
            "--gamma",
            "0.25",
            "--temperature",
            "0.7",
        ],
    );
    // Valid settings are written before the (missing) base model is opened.
    assert!(e.contains("none.gguf"), "{e}");
    let cfg: skillzip_harness::weave::WeaveConfig =
        serde_json::from_slice(&std::fs::read(out.join("config.json")).unwrap()).unwrap();
    assert!(cfg.methods.is_empty(), "--methods none: {:?}", cfg.methods);
    let o = cfg.train.objective;
    assert_eq!((o.nll, o.beta, o.gamma), (0.5, 3.0, 0.25));
    assert_eq!(cfg.selfgen.temperature, 0.7);
    // Impossible values are refused in one line, and nothing is written.
    for (flag, value, named) in [
        ("--temperature", "0", "temperature"),
        ("--beta", "0", "β"),
        ("--nll", "-1", "likelihood"),
    ] {
        // `--flag=value`, so that a negative value is not read as a flag.
        let (out, e) = run(&format!("bad{flag}"), &[&format!("{flag}={value}")]);
        assert!(e.contains(named), "{flag} {value}: {e}");
        assert_eq!(e.lines().count(), 1, "{e}");
        assert!(!out.exists(), "{flag} {value}: nothing written");
    }
}
