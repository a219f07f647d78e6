//! Replays every cargo-fuzz target's corpus (`fuzz/corpus/<target>/`) through the same
//! invariant checks the targets run, so the targets and their seeds never rot.

#[path = "../../fuzz/corpus_support.rs"]
mod corpus_support;

use skillzip_core::invariants::{check_kernels, check_quantizers, check_runtime};

fn replay(target: &str, check: fn(&[u8])) {
    corpus_support::replay(env!("CARGO_MANIFEST_DIR"), target, check);
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
