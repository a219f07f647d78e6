//! Replays every cargo-fuzz target's corpus (`fuzz/corpus/<target>/`) through the same
//! invariant checks the targets run, so the targets and their seeds never rot.

use std::path::Path;

use skillzip_core::invariants::{check_kernels, check_quantizers, check_runtime};

fn replay(target: &str, check: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let mut count = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        // Shown with the panic message when a file fails.
        eprintln!("replaying {}", path.display());
        check(&data);
        count += 1;
    }
    assert!(count > 0, "no corpus files in {}", dir.display());
}

#[test]
fn quantizers_corpus() {
    replay("quantizers", check_quantizers);
}

#[test]
fn runtime_corpus() {
    replay("runtime", check_runtime);
}

#[test]
fn kernels_corpus() {
    replay("kernels", check_kernels);
}

#[test]
fn empty_and_tiny_inputs() {
    for len in 0..16 {
        let data = vec![0xffu8; len];
        check_quantizers(&data);
        check_runtime(&data);
        check_kernels(&data);
    }
}
