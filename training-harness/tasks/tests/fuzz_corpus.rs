//! Replays the `tasks_jsonl` fuzz corpus (`fuzz/corpus/tasks_jsonl/`) through the target's
//! check; `seed_corpus_is_current` checks (or, with `SKILLZIP_WRITE_SEEDS=1`, rewrites) the
//! `seed-*` files.

#[path = "../../../fuzz/corpus_support.rs"]
mod corpus_support;

use skillzip_tasks::fuzzing::check_jsonl_bytes;
use skillzip_tasks::{Domain, Split, generate, parse_jsonl};

/// Seeds: generated tasks of every domain as full lines, the short forms, and broken lines.
fn seeds() -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for domain in Domain::ALL {
        let lines: Vec<String> = generate(domain, 2, Split::Train, 3, 9)
            .iter()
            .map(|t| serde_json::to_string(t).unwrap())
            .collect();
        out.push((format!("seed-{domain}"), lines.join("\n").into_bytes()));
    }
    let short = "{\"prompt\": \"What is 2 + 2?\", \"answer\": \"4\"}\n\n{\"prompt\": \"Name a color.\", \"answer\": \"red\", \"id\": \"c1\"}\r\n";
    out.push(("seed-short".into(), short.as_bytes().to_vec()));
    let broken = "{\"prompt\": \"x\", \"check\": {\"type\": \"choice\", \"answer\": \"Z\", \"options\": 2}}\n{\"prompt\": 3}\n{";
    out.push(("seed-broken".into(), broken.as_bytes().to_vec()));
    out
}

#[test]
fn tasks_jsonl_corpus() {
    let n = corpus_support::replay(env!("CARGO_MANIFEST_DIR"), "tasks_jsonl", check_jsonl_bytes);
    assert!(n >= 6);
    // The generated seeds parse, so the round-trip path is exercised.
    for (name, bytes) in seeds().iter().take(Domain::ALL.len()) {
        let text = std::str::from_utf8(bytes).unwrap();
        assert_eq!(parse_jsonl(text, Domain::Math).unwrap().len(), 3, "{name}");
    }
}

#[test]
fn seed_corpus_is_current() {
    corpus_support::check_seeds(env!("CARGO_MANIFEST_DIR"), "tasks_jsonl", seeds());
}
