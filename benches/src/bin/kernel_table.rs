//! Turns the criterion results of the `kernels` bench into the ratio tables of BENCHMARKS.md:
//! every figure relative to anchors measured in the same run (`floor_read*`, `f32_lowrank`,
//! `f32_dense` of the same group).
//!
//! Usage: `cargo bench -p skillzip-benches --bench kernels` then
//! `cargo run --release -p skillzip-benches --bin kernel_table [target/criterion]`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

/// One bench: its group, function, median seconds and declared throughput.
struct Entry {
    function: String,
    median_s: f64,
    bytes: Option<f64>,
    elements: Option<f64>,
}

fn read_json(path: &Path) -> Option<Value> {
    serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()
}

fn entries(root: &Path) -> BTreeMap<String, Vec<Entry>> {
    let mut groups: BTreeMap<String, Vec<Entry>> = BTreeMap::new();
    let Ok(dirs) = std::fs::read_dir(root) else {
        return groups;
    };
    for group_dir in dirs.flatten() {
        let Ok(functions) = std::fs::read_dir(group_dir.path()) else {
            continue;
        };
        for f in functions.flatten() {
            let new = f.path().join("new");
            let (Some(meta), Some(est)) = (
                read_json(&new.join("benchmark.json")),
                read_json(&new.join("estimates.json")),
            ) else {
                continue;
            };
            let group = meta["group_id"].as_str().unwrap_or_default().to_string();
            if !["decode/", "prefill/", "smollm/", "grouped/"]
                .iter()
                .any(|p| group.starts_with(p))
            {
                continue;
            }
            let Some(median_ns) = est["median"]["point_estimate"].as_f64() else {
                continue;
            };
            groups.entry(group).or_default().push(Entry {
                function: meta["function_id"].as_str().unwrap_or_default().to_string(),
                median_s: median_ns * 1e-9,
                bytes: meta["throughput"]["Bytes"].as_f64(),
                elements: meta["throughput"]["Elements"].as_f64(),
            });
        }
    }
    groups
}

fn fmt_time(s: f64) -> String {
    if s >= 1e-3 {
        format!("{:.3} ms", s * 1e3)
    } else {
        format!("{:.2} µs", s * 1e6)
    }
}

fn ratio(num: Option<f64>, den: f64) -> String {
    num.map_or("—".into(), |n| format!("{:.2}×", n / den))
}

fn main() {
    let root = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("target/criterion"));
    let groups = entries(&root);
    if groups.is_empty() {
        eprintln!(
            "no kernel bench results under {}; run `cargo bench -p skillzip-benches --bench kernels` first",
            root.display()
        );
        std::process::exit(1);
    }
    println!(
        "| group | bench | median | ÷ memory floor | f32 low-rank ÷ this | f32 dense ÷ this | rate |"
    );
    println!("|---|---|---|---|---|---|---|");
    for (group, mut list) in groups {
        list.sort_by(|a, b| a.function.cmp(&b.function));
        let find = |prefix: &str| {
            list.iter()
                .find(|e| e.function.starts_with(prefix))
                .map(|e| e.median_s)
        };
        let (floor, lowrank, dense) = (find("floor_read"), find("f32_lowrank"), find("f32_dense"));
        for e in &list {
            let rate = match (e.bytes, e.elements) {
                (Some(b), _) => format!("{:.1} GB/s", b / e.median_s / 1e9),
                (_, Some(ops)) => format!("{:.0} GOPS", ops / e.median_s / 1e9),
                _ => String::new(),
            };
            let vs_floor = floor.map_or("—".into(), |f| format!("{:.2}×", e.median_s / f));
            println!(
                "| {group} | {} | {} | {vs_floor} | {} | {} | {rate} |",
                e.function,
                fmt_time(e.median_s),
                ratio(lowrank, e.median_s),
                ratio(dense, e.median_s),
            );
        }
        if let (Some(five), Some(one)) = (find("x8a8b8_5packs"), find("x8a8b8_1pack")) {
            println!(
                "| {group} | 5 packs ÷ 1 pack | {:.2}× | | | | |",
                five / one
            );
        }
    }
}
