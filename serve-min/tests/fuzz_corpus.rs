//! Replays the `http_body` fuzz corpus (`fuzz/corpus/http_body/`) through the check the
//! target runs, so the target and its seeds never rot.

#[path = "../../fuzz/corpus_support.rs"]
mod corpus_support;

#[test]
fn http_body_corpus() {
    let n = corpus_support::replay(
        env!("CARGO_MANIFEST_DIR"),
        "http_body",
        serve_min::fuzzing::check_request_bytes,
    );
    assert!(n >= 6, "{n} corpus files");
}
