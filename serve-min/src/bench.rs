//! The load generator behind `serve-min bench`: requests arrive as a Gamma process (a
//! coefficient of variation of 1 is Poisson), each streams a completion of a fixed prompt
//! and generation length (token-id prompts, `ignore_eos`), and the report gives what the
//! SkillWeave paper's serving table gives: request and token throughput, time per output
//! token, time to first token, and latency mean / median / P95 / P99 / min / max.
//!
//! The client is a small HTTP/1.1 reader over `tokio::net::TcpStream` so each server-sent
//! event is timed when its bytes arrive.
//!
//! For soak runs, a fraction of the requests can be cancelled part-way (the client drops the
//! connection after a random number of tokens) and a fraction replaced by malformed requests
//! ([`MALFORMED`]), each of which must be answered with a 4xx status and a JSON error body.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand::RngExt;
use rand_distr::{Distribution, Gamma};
use serde::Serialize;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::error::{Error, Result};

/// One load test.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    /// The server.
    pub addr: SocketAddr,
    /// Mean arrival rate, requests per second.
    pub rate: f64,
    /// Coefficient of variation of the gaps between arrivals (1: Poisson, 0: constant).
    pub cv: f64,
    /// Requests to send.
    pub requests: usize,
    /// Prompt length in tokens.
    pub prompt_tokens: usize,
    /// Tokens each request generates.
    pub gen_tokens: usize,
    /// The skills requested (`model` names) and their weights in the mix.
    pub skills: Vec<(String, f64)>,
    /// Prompt token ids are drawn from `token_range.0..token_range.1`.
    pub token_range: (u32, u32),
    /// Seed of arrivals, skills and prompts.
    pub seed: u64,
    /// Longest a request may take before it counts as failed.
    pub timeout: Duration,
    /// Fraction of requests the client cancels part-way, in `[0, 1]`.
    pub cancel_fraction: f64,
    /// Fraction of requests replaced by a malformed one, in `[0, 1]`.
    pub malformed_fraction: f64,
}

impl BenchConfig {
    fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Config(m));
        if !(self.rate.is_finite() && self.rate > 0.0) {
            return bad(format!("rate {} must be a positive number", self.rate));
        }
        if !(self.cv.is_finite() && self.cv >= 0.0) {
            return bad(format!("cv {} must be a non-negative number", self.cv));
        }
        if self.requests == 0 || self.prompt_tokens == 0 || self.gen_tokens == 0 {
            return bad("requests, prompt and generation lengths must be at least 1".into());
        }
        if self.skills.is_empty()
            || self
                .skills
                .iter()
                .any(|(n, w)| n.is_empty() || !(w.is_finite() && *w > 0.0))
        {
            return bad("the skill mix needs names with positive weights".into());
        }
        let fraction = |f: f64| f.is_finite() && (0.0..=1.0).contains(&f);
        if !fraction(self.cancel_fraction) || !fraction(self.malformed_fraction) {
            return bad("the cancel and malformed fractions must lie in [0, 1]".into());
        }
        if self.token_range.0 >= self.token_range.1 {
            return bad(format!("token range {:?} is empty", self.token_range));
        }
        Ok(())
    }
}

/// Arrival times (seconds from the start) of `n` requests: cumulative Gamma gaps of mean
/// `1/rate` and coefficient of variation `cv` (shape `1/cv²`).
pub fn arrival_times(n: usize, rate: f64, cv: f64, seed: u64) -> Result<Vec<f64>> {
    let mean = 1.0 / rate;
    let mut rng = skillzip_core::seeded_rng(seed);
    let gamma = if cv > 0.0 {
        let shape = 1.0 / (cv * cv);
        Some(Gamma::new(shape, mean / shape).map_err(|e| Error::Config(e.to_string()))?)
    } else {
        None
    };
    let mut t = 0.0;
    Ok((0..n)
        .map(|_| {
            t += gamma.as_ref().map_or(mean, |g| g.sample(&mut rng));
            t
        })
        .collect())
}

/// What a request of a load test was.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RequestKind {
    /// A streamed completion read to its end.
    Normal,
    /// A streamed completion the client dropped after this many text events.
    Cancelled(usize),
    /// The malformed request of this name (from [`MALFORMED`]).
    Malformed(&'static str),
}

/// What happened to one request.
#[derive(Debug, Clone, Serialize)]
pub struct RequestRecord {
    /// What it was.
    pub kind: RequestKind,
    /// The skill asked for.
    pub skill: String,
    /// When it was sent, seconds from the start.
    pub sent: f64,
    /// Seconds from sending to the first text event.
    pub ttft: Option<f64>,
    /// Seconds from sending to the end of the response.
    pub latency: f64,
    /// Tokens generated (the server's usage count).
    pub tokens: usize,
    /// Why it failed, if it did.
    pub error: Option<String>,
}

/// Summary statistics of one quantity, in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Summary {
    /// Mean.
    pub mean: f64,
    /// Median.
    pub median: f64,
    /// 95th percentile.
    pub p95: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Smallest.
    pub min: f64,
    /// Largest.
    pub max: f64,
}

impl Summary {
    /// Of `values` in seconds (nearest-rank percentiles); all zero when empty.
    pub fn of_seconds(values: &[f64]) -> Self {
        if values.is_empty() {
            return Self::default();
        }
        let mut v: Vec<f64> = values.iter().map(|s| s * 1e3).collect();
        v.sort_by(f64::total_cmp);
        let rank = |q: f64| v[((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
        Self {
            mean: v.iter().sum::<f64>() / v.len() as f64,
            median: rank(0.5),
            p95: rank(0.95),
            p99: rank(0.99),
            min: v[0],
            max: v[v.len() - 1],
        }
    }
}

/// The outcome of a load test.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Requests sent.
    pub requests: usize,
    /// Normal requests that completed with every token.
    pub completed: usize,
    /// Requests cancelled by the client as planned.
    pub cancelled: usize,
    /// Malformed requests answered as they must be (a 4xx and a JSON error body).
    pub refused: usize,
    /// Requests of any kind that did not go as they must.
    pub failed: usize,
    /// Wall time from the first arrival to the last completion, seconds.
    pub duration_s: f64,
    /// Completed requests per second.
    pub request_throughput: f64,
    /// Generated tokens per second.
    pub token_throughput: f64,
    /// Time per output token after the first, milliseconds (mean over requests).
    pub tpot_ms: f64,
    /// Time to first token.
    pub ttft_ms: Summary,
    /// End-to-end latency.
    pub latency_ms: Summary,
    /// Every request.
    pub records: Vec<RequestRecord>,
}

impl Report {
    /// From the records of a run that lasted `duration_s`.
    pub fn new(records: Vec<RequestRecord>, duration_s: f64) -> Self {
        let ok = |kind: fn(&RequestKind) -> bool| {
            records
                .iter()
                .filter(|r| r.error.is_none() && kind(&r.kind))
                .count()
        };
        let cancelled = ok(|k| matches!(k, RequestKind::Cancelled(_)));
        let refused = ok(|k| matches!(k, RequestKind::Malformed(_)));
        let failed = records.iter().filter(|r| r.error.is_some()).count();
        let done: Vec<&RequestRecord> = records
            .iter()
            .filter(|r| r.error.is_none() && r.kind == RequestKind::Normal)
            .collect();
        let tokens: usize = done.iter().map(|r| r.tokens).sum();
        let tpots: Vec<f64> = done
            .iter()
            .filter(|r| r.tokens > 1)
            .filter_map(|r| r.ttft.map(|t| (r.latency - t) / (r.tokens - 1) as f64))
            .collect();
        let ttfts: Vec<f64> = done.iter().filter_map(|r| r.ttft).collect();
        let latencies: Vec<f64> = done.iter().map(|r| r.latency).collect();
        let per_second = |x: f64| {
            if duration_s > 0.0 {
                x / duration_s
            } else {
                0.0
            }
        };
        Self {
            requests: records.len(),
            completed: done.len(),
            cancelled,
            refused,
            failed,
            duration_s,
            request_throughput: per_second(done.len() as f64),
            token_throughput: per_second(tokens as f64),
            tpot_ms: Summary::of_seconds(&tpots).mean,
            ttft_ms: Summary::of_seconds(&ttfts),
            latency_ms: Summary::of_seconds(&latencies),
            records,
        }
    }

    /// The markdown table of the paper's serving columns.
    pub fn table(&self) -> String {
        let l = &self.latency_ms;
        let t = &self.ttft_ms;
        let normal = self.requests - self.cancelled - self.refused;
        let mut table = format!(
            "| completed | req/s | tok/s | ms/token | TTFT mean / median / P99 (ms) | latency mean | median | P95 | P99 | min | max (ms) |\n\
             |---|---|---|---|---|---|---|---|---|---|---|\n\
             | {}/{} | {:.2} | {:.1} | {:.1} | {:.0} / {:.0} / {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} |\n",
            self.completed,
            normal,
            self.request_throughput,
            self.token_throughput,
            self.tpot_ms,
            t.mean,
            t.median,
            t.p99,
            l.mean,
            l.median,
            l.p95,
            l.p99,
            l.min,
            l.max
        );
        if self.cancelled + self.refused > 0 {
            table.push_str(&format!(
                "\nAlso: {} cancelled by the client part-way, {} malformed requests refused with \
                 a 4xx; {} requests of any kind failed.\n",
                self.cancelled, self.refused, self.failed
            ));
        }
        table
    }
}

/// Runs one load test against a server.
pub async fn run(config: &BenchConfig) -> Result<Report> {
    config.validate()?;
    let arrivals = arrival_times(config.requests, config.rate, config.cv, config.seed)?;
    let mut rng = skillzip_core::seeded_rng(config.seed ^ 0x5eed);
    let total: f64 = config.skills.iter().map(|(_, w)| w).sum();
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(config.requests);
    for at in arrivals {
        let mut pick = rng.random::<f64>() * total;
        let skill = config
            .skills
            .iter()
            .find(|(_, w)| {
                pick -= w;
                pick < 0.0
            })
            .unwrap_or(&config.skills[config.skills.len() - 1])
            .0
            .clone();
        let prompt: Vec<u32> = (0..config.prompt_tokens)
            .map(|_| rng.random_range(config.token_range.0..config.token_range.1))
            .collect();
        let body = json!({
            "model": skill, "prompt": prompt, "max_tokens": config.gen_tokens,
            "temperature": 0, "ignore_eos": true, "stream": true,
        })
        .to_string();
        let malformed = (rng.random::<f64>() < config.malformed_fraction)
            .then(|| MALFORMED[rng.random_range(0..MALFORMED.len())]);
        let kind = match malformed {
            Some(bad) => RequestKind::Malformed(bad.name),
            None if rng.random::<f64>() < config.cancel_fraction => {
                RequestKind::Cancelled(rng.random_range(0..config.gen_tokens))
            }
            None => RequestKind::Normal,
        };
        tokio::time::sleep_until((start + Duration::from_secs_f64(at)).into()).await;
        let (addr, timeout) = (config.addr, config.timeout);
        let sent = start.elapsed().as_secs_f64();
        tasks.push(tokio::spawn(async move {
            let begun = Instant::now();
            let request = async {
                match (malformed, kind) {
                    (Some(bad), _) => expect_refusal(addr, bad.path, &(bad.body)())
                        .await
                        .map(|()| (None, 0)),
                    (None, RequestKind::Cancelled(after)) => {
                        stream_completion(addr, &body, begun, Some(after)).await
                    }
                    (None, _) => stream_completion(addr, &body, begun, None).await,
                }
            };
            let outcome = tokio::time::timeout(timeout, request).await;
            let latency = begun.elapsed().as_secs_f64();
            let (ttft, tokens, error) = match outcome {
                Ok(Ok((ttft, tokens))) => (ttft, tokens, None),
                Ok(Err(e)) => (None, 0, Some(e)),
                Err(_) => (None, 0, Some(format!("no answer within {timeout:?}"))),
            };
            RequestRecord {
                kind,
                skill,
                sent,
                ttft,
                latency,
                tokens,
                error,
            }
        }));
    }
    let mut records = Vec::with_capacity(tasks.len());
    for task in tasks {
        records.push(
            task.await
                .map_err(|e| Error::Config(format!("a client task failed: {e}")))?,
        );
    }
    let duration = start.elapsed().as_secs_f64() - records.first().map_or(0.0, |r| r.sent);
    let gen_tokens = config.gen_tokens;
    for r in &mut records {
        if r.error.is_none() && r.kind == RequestKind::Normal && r.tokens != gen_tokens {
            r.error = Some(format!("{} tokens instead of {gen_tokens}", r.tokens));
        }
    }
    Ok(Report::new(records, duration))
}

/// A malformed request a soak run mixes in; it must be answered with a 4xx status and a
/// JSON error body.
#[derive(Debug, Clone, Copy)]
pub struct Malformed {
    /// What is wrong with it.
    pub name: &'static str,
    /// The route it goes to.
    pub path: &'static str,
    /// Its body.
    pub body: fn() -> Vec<u8>,
}

/// The malformed requests of a soak run.
pub const MALFORMED: [Malformed; 8] = [
    Malformed {
        name: "truncated_json",
        path: "/v1/completions",
        body: || br#"{"model": "base", "prompt": [1, 2"#.to_vec(),
    },
    Malformed {
        name: "unknown_model",
        path: "/v1/completions",
        body: || br#"{"model": "no-such-skill", "prompt": "hi"}"#.to_vec(),
    },
    Malformed {
        name: "negative_max_tokens",
        path: "/v1/completions",
        body: || br#"{"model": "base", "prompt": "hi", "max_tokens": -5}"#.to_vec(),
    },
    Malformed {
        name: "huge_max_tokens",
        path: "/v1/completions",
        body: || br#"{"model": "base", "prompt": "hi", "max_tokens": 1000000000000}"#.to_vec(),
    },
    Malformed {
        name: "invalid_utf8",
        path: "/v1/completions",
        body: || b"{\"model\": \"base\", \"prompt\": \"\xff\xfe\"}".to_vec(),
    },
    Malformed {
        name: "prompt_beyond_context",
        path: "/v1/completions",
        body: || {
            let ids: Vec<u32> = (0..70_000).map(|i| 256 + i % 1000).collect();
            json!({"model": "base", "prompt": ids})
                .to_string()
                .into_bytes()
        },
    },
    Malformed {
        name: "wrong_types",
        path: "/v1/chat/completions",
        body: || br#"{"model": 5, "messages": "not a list"}"#.to_vec(),
    },
    Malformed {
        name: "not_json",
        path: "/v1/chat/completions",
        body: || b"\x00\x01 garbage".to_vec(),
    },
];

/// Sends a malformed request; fine when the answer is a 4xx with a JSON `error` body.
async fn expect_refusal(
    addr: SocketAddr,
    path: &str,
    body: &[u8],
) -> std::result::Result<(), String> {
    let mut stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream
        .write_all(&[head.as_bytes(), body].concat())
        .await
        .map_err(|e| e.to_string())?;
    let mut answer = Vec::new();
    stream
        .read_to_end(&mut answer)
        .await
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&answer);
    let status: u16 = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no status line in {:?}", &text[..text.len().min(80)]))?;
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    let error = serde_json::from_str::<Value>(body)
        .ok()
        .is_some_and(|v| v.get("error").is_some());
    if (400..500).contains(&status) && error {
        Ok(())
    } else {
        Err(format!("a malformed request got HTTP {status}: {body}"))
    }
}

/// Sends one streamed completion; returns the time to the first text event and the
/// generated token count from the final usage. With `cancel_after`, drops the connection
/// once that many text events have arrived and returns their count.
async fn stream_completion(
    addr: SocketAddr,
    body: &str,
    begun: Instant,
    cancel_after: Option<usize>,
) -> std::result::Result<(Option<f64>, usize), String> {
    let mut stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let request = format!(
        "POST /v1/completions HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut reader = SseReader::default();
    let mut buf = vec![0u8; 16 * 1024];
    let mut ttft = None;
    let mut events = 0;
    loop {
        if cancel_after.is_some_and(|after| events >= after) {
            return Ok((ttft, events));
        }
        let n = stream.read(&mut buf).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err(format!(
                "the connection closed before [DONE] (status {:?})",
                reader.status
            ));
        }
        for event in reader.feed(&buf[..n])? {
            if event == "[DONE]" {
                return reader
                    .tokens
                    .map(|t| (ttft, t))
                    .ok_or_else(|| "no usage".into());
            }
            let v: Value = serde_json::from_str(&event).map_err(|e| e.to_string())?;
            if let Some(e) = v.get("error") {
                return Err(e.to_string());
            }
            let text = v["choices"][0]["text"].as_str().unwrap_or_default();
            if ttft.is_none() && !text.is_empty() {
                ttft = Some(begun.elapsed().as_secs_f64());
            }
            events += usize::from(!text.is_empty());
            if let Some(n) = v["usage"]["completion_tokens"].as_u64() {
                reader.tokens = Some(n as usize);
            }
        }
    }
}

/// Incremental parser of an HTTP/1.1 response carrying server-sent events in chunked
/// transfer encoding.
#[derive(Debug, Default)]
struct SseReader {
    raw: Vec<u8>,
    status: Option<u16>,
    chunked: bool,
    body: Vec<u8>,
    tokens: Option<usize>,
}

impl SseReader {
    /// Adds bytes; returns the `data:` payloads completed by them. A non-200 status is an
    /// error carrying the body read so far.
    fn feed(&mut self, bytes: &[u8]) -> std::result::Result<Vec<String>, String> {
        self.raw.extend_from_slice(bytes);
        if self.status.is_none() {
            let Some(end) = self.raw.windows(4).position(|w| w == b"\r\n\r\n") else {
                return Ok(Vec::new());
            };
            let head = String::from_utf8_lossy(&self.raw[..end]).to_ascii_lowercase();
            let status = head
                .split_whitespace()
                .nth(1)
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| format!("bad status line: {head:?}"))?;
            self.status = Some(status);
            self.chunked = head.contains("transfer-encoding: chunked");
            self.raw.drain(..end + 4);
            if status != 200 {
                return Err(format!(
                    "HTTP {status}: {}",
                    String::from_utf8_lossy(&self.raw)
                ));
            }
        }
        if self.chunked {
            self.dechunk()?;
        } else {
            self.body.append(&mut self.raw);
        }
        let mut events = Vec::new();
        while let Some(end) = self.body.windows(2).position(|w| w == b"\n\n") {
            let event: Vec<u8> = self.body.drain(..end + 2).collect();
            for line in String::from_utf8_lossy(&event).lines() {
                if let Some(data) = line.strip_prefix("data:") {
                    events.push(data.trim_start().to_string());
                }
            }
        }
        Ok(events)
    }

    /// Moves complete chunks from `raw` to `body`.
    fn dechunk(&mut self) -> std::result::Result<(), String> {
        loop {
            let Some(line_end) = self.raw.windows(2).position(|w| w == b"\r\n") else {
                return Ok(());
            };
            let size_text = String::from_utf8_lossy(&self.raw[..line_end]).to_string();
            let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
                .map_err(|_| format!("bad chunk size {size_text:?}"))?;
            if self.raw.len() < line_end + 2 + size + 2 {
                return Ok(());
            }
            let start = line_end + 2;
            self.body.extend_from_slice(&self.raw[start..start + size]);
            self.raw.drain(..start + size + 2);
            if size == 0 {
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gamma_arrivals_have_the_asked_rate_and_variation() {
        for cv in [0.5, 1.0, 2.0] {
            let t = arrival_times(40_000, 4.0, cv, 7).unwrap();
            let gaps: Vec<f64> = t.windows(2).map(|w| w[1] - w[0]).collect();
            let mean = gaps.iter().sum::<f64>() / gaps.len() as f64;
            let var = gaps.iter().map(|g| (g - mean).powi(2)).sum::<f64>() / gaps.len() as f64;
            assert!((mean - 0.25).abs() < 0.01, "cv {cv}: mean gap {mean}");
            let got = var.sqrt() / mean;
            assert!(
                (got - cv).abs() < 0.05 * cv.max(1.0),
                "cv {cv}: measured {got}"
            );
        }
        let constant = arrival_times(4, 2.0, 0.0, 1).unwrap();
        assert_eq!(constant, [0.5, 1.0, 1.5, 2.0]);
    }

    #[test]
    fn summaries_use_nearest_rank_percentiles() {
        let s = Summary::of_seconds(&(1..=100).map(|i| i as f64 / 1e3).collect::<Vec<_>>());
        assert_eq!(
            (s.min, s.median, s.p95, s.p99, s.max),
            (1.0, 50.0, 95.0, 99.0, 100.0)
        );
        assert!((s.mean - 50.5).abs() < 1e-9);
        assert_eq!(Summary::of_seconds(&[]).max, 0.0);
    }

    #[test]
    fn the_sse_reader_takes_events_split_anywhere() {
        let response = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n\
            d\r\ndata: {\"a\":1}\r\n2\r\n\n\n\r\ne\r\ndata: [DONE]\n\n\r\n0\r\n\r\n";
        for split in 1..response.len() {
            let mut reader = SseReader::default();
            let mut events = reader.feed(&response[..split]).unwrap();
            events.extend(reader.feed(&response[split..]).unwrap());
            assert_eq!(events, ["{\"a\":1}", "[DONE]"], "split at {split}");
        }
        let mut reader = SseReader::default();
        let err = reader
            .feed(b"HTTP/1.1 503 Service Unavailable\r\n\r\n{\"error\":1}")
            .unwrap_err();
        assert!(err.contains("503"), "{err}");
    }
}
