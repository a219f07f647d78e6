//! The checks behind the `tasks_jsonl` fuzz target (and its corpus replay test).

use crate::jsonl::parse_jsonl;
use crate::task::Domain;

/// Parses arbitrary bytes as a JSONL task file: invalid UTF-8 and malformed lines must be
/// typed errors naming a line that exists; whatever parses must hold valid, uniquely named
/// tasks that survive a write-and-reparse round trip unchanged.
pub fn check_jsonl_bytes(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match parse_jsonl(text, Domain::Instructions) {
        Err(e) => {
            if let Some(line) = e.line() {
                assert!(line >= 1 && line <= text.split('\n').count(), "{e}");
            }
        }
        Ok(tasks) => {
            let mut ids = std::collections::BTreeSet::new();
            for t in &tasks {
                assert!(t.check.validate().is_ok(), "{t:?}");
                assert!(ids.insert(&t.id), "duplicate id {}", t.id);
            }
            let again: Vec<String> = tasks
                .iter()
                .map(|t| serde_json::to_string(t).expect("a task serialises"))
                .collect();
            let back = parse_jsonl(&again.join("\n"), Domain::Instructions)
                .expect("written tasks parse back");
            assert_eq!(back, tasks);
        }
    }
}
