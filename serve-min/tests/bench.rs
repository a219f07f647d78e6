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
        cancel_fraction: 0.0,
        malformed_fraction: 0.0,
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

#[test]
fn a_soak_mix_cancels_and_sends_malformed_requests_and_the_server_stays_sound() {
    let server = Server::start(EngineConfig::default(), true);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let mut soak = config(&server, 60, &[("math", 1.0), ("code", 1.0), ("base", 1.0)]);
    soak.cancel_fraction = 0.3;
    soak.malformed_fraction = 0.3;
    soak.gen_tokens = 40;
    let report = runtime.block_on(run(&soak)).unwrap();
    let failures: Vec<_> = report
        .records
        .iter()
        .filter(|r| r.error.is_some())
        .collect();
    assert!(failures.is_empty(), "{failures:#?}");
    assert!(report.cancelled > 0 && report.refused > 0, "{report:#?}");
    assert_eq!(
        report.completed + report.cancelled + report.refused,
        report.requests
    );
    assert!(report.table().contains("malformed requests refused"));
    // Every kind of malformed request was tried at least once over a few seeds' worth.
    let kinds: std::collections::BTreeSet<_> = report
        .records
        .iter()
        .filter_map(|r| match r.kind {
            serve_min::bench::RequestKind::Malformed(name) => Some(name),
            _ => None,
        })
        .collect();
    assert!(kinds.len() >= 4, "{kinds:?}");
    // Cancelled requests leave the batch: nothing keeps running or waiting.
    let start = std::time::Instant::now();
    while server.metric("requests_running") + server.metric("requests_waiting") > 0 {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "requests left behind"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let normal = config(&server, 4, &[("math", 1.0)]);
    let after = runtime.block_on(run(&normal)).unwrap();
    assert_eq!(after.completed, 4, "{after:#?}");
}
