//! The report at its boundary: the real-delta fidelity study reads `skillzip weave` run
//! directories (here two small hand-written ones) into CSVs, figures and markdown that the
//! report check accepts; a run directory that is not one is refused with a typed error.

use std::path::{Path, PathBuf};

use serde_json::json;
use skillzip_benches::report::fidelity::{self, RealInputs};
use skillzip_benches::report::table::parse_csv;
use skillzip_benches::report::{self, Context, Preset, ReportError, plot};

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "skillzip-report-test-{name}-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn write(path: &Path, value: serde_json::Value) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, serde_json::to_vec(&value).unwrap()).unwrap();
}

fn cell(config: &str, skill: &str, correct: usize) -> serde_json::Value {
    json!({"config": config, "skill": skill, "accuracy": {"correct": correct, "total": 10}})
}

fn ctx(out: &Path) -> Context {
    Context {
        preset: Preset::Quick,
        machine: "test machine".into(),
        date: "2026-12-07".into(),
        command: "report test".into(),
        out: out.to_path_buf(),
    }
}

#[test]
fn two_weave_runs_make_one_real_delta_table() {
    if let Err(e) = plot::font() {
        println!("skipped: {e}");
        return;
    }
    let root = temp_dir("real");
    let (first, second, out) = (root.join("a"), root.join("b"), root.join("out"));
    std::fs::create_dir_all(&out).unwrap();
    for run in [&first, &second] {
        write(
            &run.join("base.json"),
            json!({"source": "b.gguf", "fingerprint": "f0"}),
        );
    }
    // Run a: base, target and BitDelta on two skills; 1000 linear parameters.
    write(
        &first.join("results.json"),
        json!({
            "cells": [
                cell("base", "math", 2), cell("base", "code", 4),
                cell("target", "math", 6), cell("target", "code", 8),
                cell("bitdelta", "math", 5), cell("bitdelta", "code", 6),
            ],
            "storage": [
                {"config": "bitdelta", "skill": "math", "bytes": 125},
                {"config": "bitdelta", "skill": "code", "bytes": 125},
            ],
            "linear_params": 1000,
            "seconds": [],
            "peak_rss_mib": null,
        }),
    );
    for (skill, errors) in [("math", [0.2, 0.4]), ("code", [0.3, 0.5])] {
        let layers: Vec<_> = errors
            .iter()
            .enumerate()
            .map(|(i, e)| {
                json!({"module": format!("m{i}"), "bytes": 1, "rel_output_error": e,
                       "rel_weight_error": 2.0 * e, "heldout_rows": 8})
            })
            .collect();
        write(
            &first
                .join("baseline-bitdelta")
                .join(format!("{skill}.json")),
            json!({"baseline": "bitdelta", "layers": layers, "linear_bytes": 2, "dense_bytes": 0}),
        );
    }
    // Run b: the same skills (its own base evaluation differs and must not win) plus X8A4B4.
    write(
        &second.join("results.json"),
        json!({
            "cells": [
                cell("base", "math", 9), cell("base", "code", 9),
                cell("X8A4B4", "math", 6), cell("X8A4B4", "code", 7),
            ],
            "storage": [
                {"config": "X8A4B4", "skill": "math", "bytes": 60},
                {"config": "X8A4B4", "skill": "code", "bytes": 70},
            ],
            "linear_params": 1000,
            "seconds": [],
            "peak_rss_mib": null,
        }),
    );
    let inputs = RealInputs {
        runs: vec![first.clone(), second.clone()],
        base: root.join("no-model-needed.gguf"),
        kl_answers: 0,
        max_tokens: 64,
    };
    let ctx = ctx(&out);
    let section = fidelity::real(&ctx, &inputs, &mut |_| {}).unwrap();
    report::finish(&ctx, &[(fidelity::REAL, section)]).unwrap();
    assert_eq!(report::check(&out, &[fidelity::REAL]).unwrap().len(), 6);

    let text = std::fs::read_to_string(out.join("fidelity_real.csv")).unwrap();
    let table = parse_csv(&text).unwrap();
    let col = |name: &str| table.header.iter().position(|h| h == name).unwrap();
    let row = |config: &str| {
        table
            .rows
            .iter()
            .find(|r| r[0] == config)
            .unwrap_or_else(|| panic!("{config} missing"))
            .clone()
    };
    let names: Vec<&str> = table.rows.iter().map(|r| r[0].as_str()).collect();
    assert_eq!(names, ["base", "target", "bitdelta", "X8A4B4"]);
    // Base from run a: (0.2 + 0.4) / 2.
    assert_eq!(row("base")[col("mean_accuracy")], "0.3000");
    // Pooled gain kept: (0.55 − 0.3) / (0.7 − 0.3) and (0.65 − 0.3) / 0.4.
    assert_eq!(row("bitdelta")[col("pooled_gain_kept")], "0.625");
    assert_eq!(row("X8A4B4")[col("pooled_gain_kept")], "0.875");
    // 125 bytes over 1000 parameters is 1 bit; the mean over skills of 60 and 70 bytes.
    assert_eq!(row("bitdelta")[col("bits_per_param")], "1.0000");
    assert_eq!(row("X8A4B4")[col("bits_per_param")], "0.5200");
    // Mean of the layers' errors over both skills.
    assert_eq!(row("bitdelta")[col("rel_output_error")], "0.35000");
    assert_eq!(row("bitdelta")[col("rel_weight_error")], "0.70000");
    // No bundle kept, no KL asked: not measured, not zero.
    assert_eq!(row("X8A4B4")[col("rel_output_error")], "-");
    assert_eq!(row("bitdelta")[col("kl_from_tuned")], "-");
    let md = std::fs::read_to_string(out.join(report::MARKDOWN)).unwrap();
    assert!(md.contains("](./pareto_real_error.png)"), "{md}");
    // A run made from another base model does not extend the first.
    write(
        &second.join("base.json"),
        json!({"source": "b.gguf", "fingerprint": "f1"}),
    );
    let err = fidelity::real(&ctx, &inputs, &mut |_| {}).unwrap_err();
    assert!(err.to_string().contains("another base model"), "{err}");
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn a_directory_that_is_not_a_weave_run_is_refused() {
    let root = temp_dir("notarun");
    let inputs = RealInputs {
        runs: vec![root.clone()],
        base: root.join("x.gguf"),
        kl_answers: 0,
        max_tokens: 64,
    };
    let ctx = ctx(&root);
    let err = fidelity::real(&ctx, &inputs, &mut |_| {}).unwrap_err();
    assert!(matches!(err, ReportError::Io { .. }), "{err}");
    write(
        &root.join("base.json"),
        json!({"source": "b.gguf", "fingerprint": "f0"}),
    );
    write(&root.join("results.json"), json!({"cells": "nope"}));
    let err = fidelity::real(&ctx, &inputs, &mut |_| {}).unwrap_err();
    assert!(matches!(err, ReportError::Input(_)), "{err}");
    write(
        &root.join("results.json"),
        json!({"cells": [cell("X8A8B8", "math", 1)], "linear_params": 10, "seconds": [],
               "peak_rss_mib": null}),
    );
    let err = fidelity::real(&ctx, &inputs, &mut |_| {}).unwrap_err();
    assert!(err.to_string().contains("`base`"), "{err}");
    std::fs::remove_dir_all(&root).unwrap();
}
