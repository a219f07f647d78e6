//! The load generator against a real server on a loopback port: every request completes with
//! exactly the tokens asked for, the skill mix is honoured, and the statistics are consistent.

mod common;

use std::time::Duration;

use common::Server;
use serve_min::bench::{BenchConfig, run};
use serve_min::engine::EngineConfig;

fn config(server: &Server, requests: usize, skills: &[(&str, f64)]) -> BenchConfig {
    BenchConfig {
        addr: server.addr,
        rate: 200.0,
        cv: 1.0,
        requests,
        prompt_tokens: 9,
        gen_tokens: 7,
        skills: skills.iter().map(|(n, w)| (n.to_string(), *w)).collect(),
        token_range: (3, 259),
        seed: 4,
        timeout: Duration::from_secs(60),
    }
}

#[test]
fn a_load_test_completes_every_request_with_consistent_statistics() {
    let server = Server::start(EngineConfig::default(), true);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let report = runtime
        .block_on(run(&config(
            &server,
            24,
            &[("math", 1.0), ("code", 1.0), ("base", 2.0)],
        )))
        .unwrap();
    assert_eq!((report.requests, report.completed), (24, 24), "{report:#?}");
    for r in &report.records {
        assert!(r.error.is_none(), "{r:?}");
        assert_eq!(r.tokens, 7);
        let ttft = r.ttft.unwrap();
        assert!(ttft > 0.0 && ttft <= r.latency, "{r:?}");
    }
    for skill in ["math", "code", "base"] {
        assert!(
            report.records.iter().any(|r| r.skill == skill),
            "{skill} never asked"
        );
    }
    assert_eq!(server.metric("generated_tokens_total"), 24 * 7);
    assert_eq!(server.metric("prompt_tokens_total"), 24 * 9);
    let l = report.latency_ms;
    assert!(l.min <= l.median && l.median <= l.p95 && l.p95 <= l.p99 && l.p99 <= l.max);
    assert!(report.ttft_ms.mean <= l.mean);
    assert!(report.request_throughput > 0.0 && report.tpot_ms > 0.0);
    let expected = report.completed as f64 * 7.0 / report.duration_s;
    assert!((report.token_throughput - expected).abs() < 1e-6 * expected);
    assert!(report.table().contains("| 24/24 |"), "{}", report.table());
}

#[test]
fn failures_are_counted_with_their_reason() {
    let server = Server::start(EngineConfig::default(), true);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let report = runtime
        .block_on(run(&config(&server, 3, &[("nope", 1.0)])))
        .unwrap();
    assert_eq!(report.completed, 0);
    for r in &report.records {
        let e = r.error.as_deref().unwrap();
        assert!(e.contains("404"), "{e}");
    }
    // Impossible settings are refused before anything is sent.
    let mut bad = config(&server, 3, &[("base", 1.0)]);
    bad.rate = 0.0;
    assert!(runtime.block_on(run(&bad)).is_err());
}
