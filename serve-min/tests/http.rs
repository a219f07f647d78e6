//! The server over a loopback socket: what each endpoint answers, that requests of different
//! skills batched together produce what each produces alone, streaming, cancellation,
//! overload, and a 4xx with a JSON error body for every kind of bad input.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{CONTEXT, Server, packs};
use serde_json::{Value, json};
use serve_min::engine::EngineConfig;
use skillzip_lm::generate::{GenerateOptions, Sampling, generate};
use skillzip_lm::model::{LinearHook, NoHook};
use skillzip_lm::skillpack::SkillpackHook;

fn running() -> Server {
    Server::start(EngineConfig::default(), true)
}

/// What greedy decoding of `prompt` alone gives with skill `model` (`base`: none): the text
/// and the number of tokens.
fn alone(model: &str, prompt: &str, max_tokens: usize) -> (String, usize) {
    let tokenizer = common::tokenizer();
    let lm = common::model();
    let mut hook: Box<dyn LinearHook> = match packs().iter().find(|p| p.meta.skill == model) {
        Some(pack) => Box::new(SkillpackHook::new(pack, &common::config()).unwrap()),
        None => Box::new(NoHook),
    };
    let ids = tokenizer.encode(prompt).unwrap();
    let opts = GenerateOptions {
        max_new_tokens: max_tokens,
        sampling: Sampling::Greedy,
        stop: tokenizer.stop_ids(),
    };
    let out = generate(&lm, &ids, &opts, hook.as_mut(), |_| true).unwrap();
    (tokenizer.decode(&out, true).unwrap(), out.len())
}

fn completion(model: &str, prompt: &str, max_tokens: usize) -> Value {
    json!({"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0})
}

#[test]
fn health_models_and_metrics_answer() {
    let server = running();
    let health = server.get("/health");
    assert_eq!(
        (health.status, health.json()),
        (200, json!({"status": "ok"}))
    );
    let models = server.get("/v1/models").json();
    let ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["base", "math", "code"]);
    assert_eq!(server.metric("requests_running"), 0);
    assert_eq!(server.metric("requests_completed_total"), 0);
    assert_eq!(server.get("/nowhere").status, 404);
}

#[test]
fn a_completion_of_each_skill_equals_greedy_decoding_alone() {
    let server = running();
    let mut texts = Vec::new();
    for model in ["base", "math", "code"] {
        let (want, tokens) = alone(model, "Once upon a time", 24);
        let r = server.post_json(
            "/v1/completions",
            &completion(model, "Once upon a time", 24),
        );
        assert_eq!(r.status, 200, "{}", r.text());
        let body = r.json();
        assert_eq!(body["object"], "text_completion");
        assert_eq!(body["model"], model);
        assert_eq!(body["choices"][0]["text"], want.as_str(), "{model}");
        assert_eq!(body["usage"]["completion_tokens"], tokens);
        assert_eq!(body["usage"]["prompt_tokens"], "Once upon a time".len());
        let finish = if tokens == 24 { "length" } else { "stop" };
        assert_eq!(body["choices"][0]["finish_reason"], finish);
        texts.push(want);
    }
    // Each skillpack changes what the model writes, so the comparisons above tell skills
    // apart.
    assert!(texts[0] != texts[1] && texts[0] != texts[2] && texts[1] != texts[2]);
}

#[test]
fn concurrent_requests_of_different_skills_in_one_batch_match_each_alone() {
    // The engine starts only once every request waits, so all of them share every step.
    let config = EngineConfig::default();
    let mut server = Server::start(config, false);
    let requests: Vec<(&str, &str)> = vec![
        ("math", "Two plus two"),
        ("code", "def f(x):"),
        ("base", "Hello"),
        ("math", "A longer prompt than the others, by far"),
        ("code", "x"),
        ("base", "Once upon a time"),
    ];
    let addr = server.addr;
    let clients: Vec<_> = requests
        .iter()
        .map(|&(model, prompt)| {
            let body = completion(model, prompt, 20).to_string();
            std::thread::spawn(move || {
                common::request(addr, "POST", "/v1/completions", body.as_bytes())
            })
        })
        .collect();
    wait_for(|| server.metric("requests_waiting") == requests.len() as u64);
    server.run_engine(config);
    let mut tokens = 0;
    for (client, (model, prompt)) in clients.into_iter().zip(&requests) {
        let r = client.join().unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        let (want, n) = alone(model, prompt, 20);
        assert_eq!(
            r.json()["choices"][0]["text"],
            want.as_str(),
            "{model}: {prompt}"
        );
        tokens += n;
    }
    // One decode step serves every running request: far fewer steps than tokens.
    let steps = server.metric("decode_steps_total");
    assert!(steps < 20, "{steps} steps for {tokens} tokens");
    assert_eq!(server.metric("generated_tokens_total"), tokens as u64);
    assert_eq!(
        server.metric("requests_completed_total"),
        requests.len() as u64
    );
}

#[test]
fn streamed_completions_send_the_same_text_in_chunks_then_done() {
    let server = running();
    let (want, tokens) = alone("math", "Stream me", 30);
    let mut body = completion("math", "Stream me", 30);
    body["stream"] = json!(true);
    let r = server.post_json("/v1/completions", &body);
    assert_eq!(r.status, 200);
    assert!(r.headers.contains("text/event-stream"), "{}", r.headers);
    let events = r.events();
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    assert!(chunks.len() > 2, "{events:?}");
    let text: String = chunks
        .iter()
        .map(|c| c["choices"][0]["text"].as_str().unwrap())
        .collect();
    assert_eq!(text, want);
    let last = chunks.last().unwrap();
    assert!(last["choices"][0]["finish_reason"].is_string());
    assert_eq!(last["usage"]["completion_tokens"], tokens);

    // Chat: the role first, then content deltas, then the finish reason.
    let chat = json!({
        "model": "code", "stream": true, "temperature": 0, "max_tokens": 12,
        "messages": [{"role": "user", "content": "Hi"}],
    });
    let events = server.post_json("/v1/chat/completions", &chat).events();
    let first: Value = serde_json::from_str(&events[0]).unwrap();
    assert_eq!(first["object"], "chat.completion.chunk");
    assert_eq!(first["choices"][0]["delta"]["role"], "assistant");
    let streamed: String = events[1..events.len() - 1]
        .iter()
        .map(|e| {
            let v: Value = serde_json::from_str(e).unwrap();
            v["choices"][0]["delta"]["content"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    let (want, _) = alone(
        "code",
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n",
        12,
    );
    assert_eq!(streamed, want);
    let mut whole = chat.clone();
    whole["stream"] = json!(false);
    let whole = server.post_json("/v1/chat/completions", &whole).json();
    assert_eq!(whole["object"], "chat.completion");
    assert_eq!(whole["choices"][0]["message"]["content"], want.as_str());
}

#[test]
fn a_stop_string_ends_the_text_before_it() {
    let server = running();
    let (full, _) = alone("base", "Stop here", 40);
    let chars: Vec<char> = full.chars().collect();
    let start = (3..chars.len() - 2)
        .find(|&i| !chars[i..i + 2].contains(&'\u{FFFD}'))
        .expect("two plain characters in the text");
    let stop: String = chars[start..start + 2].iter().collect();
    let want = &full[..full.find(&stop).unwrap()];
    for stream in [false, true] {
        let mut body = completion("base", "Stop here", 40);
        body["stop"] = json!([stop]);
        body["stream"] = json!(stream);
        let r = server.post_json("/v1/completions", &body);
        let text: String = if stream {
            let events = r.events();
            events[..events.len() - 1]
                .iter()
                .map(|e| {
                    let v: Value = serde_json::from_str(e).unwrap();
                    v["choices"][0]["text"].as_str().unwrap().to_string()
                })
                .collect()
        } else {
            let v = r.json();
            assert_eq!(v["choices"][0]["finish_reason"], "stop");
            v["choices"][0]["text"].as_str().unwrap().to_string()
        };
        assert_eq!(text, want, "stream {stream}, stop {stop:?}");
    }
}

#[test]
fn every_kind_of_bad_request_is_a_4xx_with_a_json_error_body() {
    let server = running();
    let long_prompt = "x".repeat(CONTEXT);
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        (
            "/v1/completions",
            b"{not json".to_vec(),
            400,
            "malformed JSON",
        ),
        ("/v1/completions", b"[]".to_vec(), 400, "JSON object"),
        (
            "/v1/completions",
            b"{\"model\": \"base\", \"prompt\": \"\xc3\x28\"}".to_vec(),
            400,
            "UTF-8",
        ),
        (
            "/v1/completions",
            completion("nope", "x", 4).to_string().into_bytes(),
            404,
            "nope",
        ),
        (
            "/v1/completions",
            completion("auto", "x", 4).to_string().into_bytes(),
            400,
            "auto",
        ),
        (
            "/v1/completions",
            json!({"model": "base", "prompt": "x", "max_tokens": -5})
                .to_string()
                .into_bytes(),
            400,
            "max_tokens",
        ),
        (
            "/v1/completions",
            json!({"model": "base", "prompt": "x", "max_tokens": 1u64 << 60})
                .to_string()
                .into_bytes(),
            400,
            "context",
        ),
        (
            "/v1/completions",
            completion("base", &long_prompt, 1).to_string().into_bytes(),
            400,
            "context",
        ),
        (
            "/v1/completions",
            completion("base", "", 4).to_string().into_bytes(),
            400,
            "empty",
        ),
        (
            "/v1/completions",
            json!({"model": "base", "prompt": [5, 259]})
                .to_string()
                .into_bytes(),
            400,
            "vocabulary",
        ),
        (
            "/v1/chat/completions",
            json!({"model": "base", "messages": [{"role": "robot", "content": "x"}]})
                .to_string()
                .into_bytes(),
            400,
            "role",
        ),
        ("/v1/completions", vec![b' '; (1 << 20) + 1], 413, "exceeds"),
    ];
    for (path, body, status, needle) in cases {
        let r = server.post(path, &body);
        assert_eq!(
            r.status,
            status,
            "{path} {:?}: {}",
            &body[..body.len().min(60)],
            r.text()
        );
        if status != 413 {
            let v = r.json();
            let message = v["error"]["message"].as_str().unwrap();
            assert!(message.contains(needle), "{message} lacks {needle:?}");
            assert_eq!(v["error"]["code"], status);
        }
    }
    // The server is unharmed.
    let r = server.post_json("/v1/completions", &completion("base", "still here", 3));
    assert_eq!(r.status, 200);
    assert_eq!(server.metric("requests_failed_total"), 0);
}

#[test]
fn a_full_queue_is_answered_503_and_the_queued_requests_still_complete() {
    let config = EngineConfig {
        max_batch: 4,
        max_queue: 2,
    };
    let mut server = Server::start(config, false);
    let addr = server.addr;
    let queued: Vec<_> = (0..2)
        .map(|i| {
            let body = completion("base", &format!("queued {i}"), 4).to_string();
            std::thread::spawn(move || {
                common::request(addr, "POST", "/v1/completions", body.as_bytes())
            })
        })
        .collect();
    wait_for(|| server.metric("requests_waiting") == 2);
    let r = server.post_json("/v1/completions", &completion("base", "one too many", 4));
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.headers.to_ascii_lowercase().contains("retry-after"));
    assert_eq!(r.json()["error"]["type"], "overloaded");
    assert_eq!(server.metric("requests_rejected_total"), 1);
    server.run_engine(config);
    for q in queued {
        assert_eq!(q.join().unwrap().status, 200);
    }
}

#[test]
fn a_client_that_leaves_cancels_its_request() {
    // Greedy decoding of this prompt runs 400 tokens without a stop token: only the
    // hang-up can end it early.
    assert_eq!(alone("math", "Go on and on", 400).1, 400);
    let server = running();
    let body = json!({"model": "math", "prompt": "Go on and on", "max_tokens": 400,
                      "temperature": 0, "stream": true})
    .to_string();
    let mut stream = open_completion(server.addr, &body);
    // Read until the first event has arrived, then hang up.
    let mut seen = Vec::new();
    let mut buf = [0u8; 256];
    while !String::from_utf8_lossy(&seen).contains("data:") {
        let n = stream.read(&mut buf).unwrap();
        assert!(n > 0, "closed before any event");
        seen.extend_from_slice(&buf[..n]);
    }
    drop(stream);
    wait_for(|| server.metric("requests_cancelled_total") == 1);
    assert!(server.metric("generated_tokens_total") < 400);
    assert_eq!(server.metric("requests_running"), 0);
    // The engine goes on serving.
    let r = server.post_json("/v1/completions", &completion("base", "next", 3));
    assert_eq!(r.status, 200);
}

/// A connection that has sent a completion request with `body` and reads nothing yet.
fn open_completion(addr: std::net::SocketAddr, body: &str) -> TcpStream {
    let mut stream = TcpStream::connect(addr).unwrap();
    write!(
        stream,
        "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    stream
}

/// Polls `done` for up to 30 s.
fn wait_for(mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < Duration::from_secs(30), "timed out");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn skillpacks_are_loaded_and_unloaded_while_serving() {
    let server = running();
    let dir = std::env::temp_dir().join(format!("serve-min-admin-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    use skillzip_lm::checkpoint::LinearKind::*;
    let chess = common::pack("chess", &[(0, Gate), (1, Down)], 9);
    let path = dir.join("chess.skillpack.safetensors");
    skillzip_format::write_skillpack(&path, &chess).unwrap();
    let load = |path: &std::path::Path| {
        server.post_json(
            "/admin/skillpacks",
            &json!({"path": path.to_str().unwrap()}),
        )
    };

    let r = load(&path);
    assert_eq!(
        (r.status, r.json()),
        (200, json!({"loaded": "chess", "layers": 2}))
    );
    let models = server.get("/v1/models").json();
    assert_eq!(models["data"][3]["id"], "chess");
    // The loaded skill decodes what the skillpack decodes alone.
    let r = server.post_json("/v1/completions", &completion("chess", "e4 e5", 16));
    let mut hook = SkillpackHook::new(&chess, &common::config()).unwrap();
    let tokenizer = common::tokenizer();
    let ids = tokenizer.encode("e4 e5").unwrap();
    let opts = GenerateOptions {
        max_new_tokens: 16,
        sampling: Sampling::Greedy,
        stop: tokenizer.stop_ids(),
    };
    let want = generate(&common::model(), &ids, &opts, &mut hook, |_| true).unwrap();
    let want = tokenizer.decode(&want, true).unwrap();
    assert_eq!(r.json()["choices"][0]["text"], want.as_str());

    // The same name again, another backbone, a broken file, a missing file: refused, and
    // the server goes on serving what it had.
    assert_eq!(load(&path).status, 409);
    let mut other = common::pack("other", &[(0, Up)], 3);
    other.meta.base.backbone_hash = "f".repeat(64);
    let other_path = dir.join("other.skillpack.safetensors");
    skillzip_format::write_skillpack(&other_path, &other).unwrap();
    let r = load(&other_path);
    assert_eq!(r.status, 409);
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("backbone")
    );
    let broken = dir.join("broken.skillpack.safetensors");
    let mut bytes = std::fs::read(&path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x55;
    std::fs::write(&broken, bytes).unwrap();
    assert_eq!(load(&broken).status, 400);
    assert_eq!(load(&dir.join("missing")).status, 400);
    // The server's own model names cannot be taken by a skill.
    let reserved = dir.join("auto.skillpack.safetensors");
    skillzip_format::write_skillpack(&reserved, &common::pack("auto", &[(0, Up)], 4)).unwrap();
    let r = load(&reserved);
    assert_eq!(r.status, 409);
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("reserved")
    );
    assert_eq!(server.post("/admin/skillpacks", b"{}").status, 400);

    let r = server.delete("/admin/skillpacks/chess");
    assert_eq!((r.status, r.json()), (200, json!({"unloaded": "chess"})));
    assert_eq!(server.delete("/admin/skillpacks/chess").status, 404);
    let r = server.post_json("/v1/completions", &completion("chess", "e4 e5", 4));
    assert_eq!(r.status, 404);
    // The other skills are untouched, and a reload takes the freed slot.
    let (math, _) = alone("math", "Two plus two", 8);
    let r = server.post_json("/v1/completions", &completion("math", "Two plus two", 8));
    assert_eq!(r.json()["choices"][0]["text"], math.as_str());
    assert_eq!(load(&path).status, 200);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn without_admin_enabled_the_admin_routes_do_not_exist() {
    let server = Server::start_with(EngineConfig::default(), true, None, false);
    let r = server.post("/admin/skillpacks", b"{\"path\": \"/etc/passwd\"}");
    assert_eq!(r.status, 404);
    assert_eq!(server.delete("/admin/skillpacks/math").status, 404);
    // The rest of the server is there.
    assert_eq!(server.get("/health").status, 200);
}

#[test]
fn a_client_that_stalls_mid_body_gets_408_and_others_are_served() {
    let server = running();
    let mut slow = TcpStream::connect(server.addr).unwrap();
    write!(
        slow,
        "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{{\"model\""
    )
    .unwrap();
    // Served while the slow client stalls.
    let r = server.post_json("/v1/completions", &completion("base", "meanwhile", 3));
    assert_eq!(r.status, 200);
    let start = Instant::now();
    let mut data = Vec::new();
    slow.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut buf = [0u8; 1024];
    while !data.windows(4).any(|w| w == b"\r\n\r\n") || !data.ends_with(b"}") {
        let n = slow.read(&mut buf).unwrap();
        assert!(n > 0, "closed without an answer");
        data.extend_from_slice(&buf[..n]);
    }
    let r = common::parse_response(&data);
    assert_eq!(r.status, 408);
    assert_eq!(r.json()["error"]["type"], "timeout");
    assert!(start.elapsed() < Duration::from_secs(10));
}

#[test]
fn auto_requests_run_through_the_skill_the_router_picks_and_say_which() {
    use skillzip_harness::router::{Router, RouterConfig, token_features};
    let tokenizer = common::tokenizer();
    let model = common::model();
    let features =
        |prompt: &str| token_features(&model, &tokenizer.encode(prompt).unwrap()).unwrap();
    // Digits for math, keywords for code: prompts the tiny model's features tell apart.
    let math: Vec<String> = (0..12)
        .map(|i| format!("{} + {} = ?", i * 7, i * 3 + 1))
        .collect();
    let code: Vec<String> = (0..12).map(|i| format!("def f{i}(x): return x")).collect();
    let mut x = Vec::new();
    let mut y = Vec::new();
    for (k, prompts) in [&math, &code].iter().enumerate() {
        for p in prompts.iter() {
            x.push(features(p));
            y.push(k);
        }
    }
    let names = vec!["math".to_string(), "code".to_string()];
    let router = Router::train(&x, &y, names, &RouterConfig::default()).unwrap();
    let server = Server::start_with(EngineConfig::default(), true, Some(router.clone()), true);
    let listed = server.get("/v1/models").json();
    assert_eq!(listed["data"][3]["id"], "auto");

    let mut seen = std::collections::BTreeSet::new();
    for prompt in [
        "99 + 1 = ?",
        "def g(y): return y",
        "7 + 8 = ?",
        "def h(z): return z",
    ] {
        let routed = &router.skills()[router.route(&features(prompt)).unwrap()];
        seen.insert(routed.clone());
        let (want, _) = alone(routed, prompt, 10);
        let r = server.post_json("/v1/completions", &completion("auto", prompt, 10));
        assert_eq!(r.status, 200, "{}", r.text());
        let body = r.json();
        assert_eq!(body["model"], routed.as_str(), "{prompt}");
        assert_eq!(body["choices"][0]["text"], want.as_str(), "{prompt}");
        // Streamed: every chunk names the routed skill.
        let mut streamed = completion("auto", prompt, 10);
        streamed["stream"] = json!(true);
        let events = server.post_json("/v1/completions", &streamed).events();
        for e in &events[..events.len() - 1] {
            let v: Value = serde_json::from_str(e).unwrap();
            assert_eq!(v["model"], routed.as_str());
        }
    }
    assert_eq!(
        seen.len(),
        2,
        "the router sent every prompt to one skill: {seen:?}"
    );
}

#[test]
fn clients_that_trickle_or_never_send_a_header_are_cut_off_and_others_are_served() {
    let server = running();
    // One sends part of a header, one nothing at all.
    let mut partial = TcpStream::connect(server.addr).unwrap();
    write!(partial, "POST /v1/completions HTTP/1.1\r\nHost: x\r\n").unwrap();
    let silent = TcpStream::connect(server.addr).unwrap();
    let r = server.post_json("/v1/completions", &completion("base", "meanwhile", 3));
    assert_eq!(r.status, 200);
    let start = Instant::now();
    for mut stalled in [partial, silent] {
        stalled
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let mut rest = Vec::new();
        // The server closes the connection (possibly after a 408 of its own).
        stalled.read_to_end(&mut rest).unwrap();
        assert!(
            rest.is_empty() || rest.starts_with(b"HTTP/1.1 408"),
            "{}",
            String::from_utf8_lossy(&rest)
        );
    }
    let waited = start.elapsed();
    assert!(
        waited < common::HEADER_TIMEOUT * 5,
        "closed after {waited:?}, the deadline is {:?}",
        common::HEADER_TIMEOUT
    );
}

#[test]
fn a_queued_request_whose_client_leaves_frees_its_place_at_once() {
    // One row: a long request and, behind it, one whose client leaves before the engine
    // starts. The engine drops the second at its first look at the queue, while the first
    // runs — not when the second's turn comes.
    let config = EngineConfig {
        max_batch: 1,
        max_queue: 2,
    };
    let mut server = Server::start(config, false);
    let addr = server.addr;
    let long = json!({"model": "math", "prompt": "Go on and on", "max_tokens": 400,
                      "temperature": 0})
    .to_string();
    let running = std::thread::spawn(move || {
        common::request(addr, "POST", "/v1/completions", long.as_bytes())
    });
    wait_for(|| server.metric("requests_waiting") == 1);
    let body = completion("base", "waiting", 3).to_string();
    let leaving = open_completion(addr, &body);
    wait_for(|| server.metric("requests_waiting") == 2);
    drop(leaving);
    std::thread::sleep(Duration::from_millis(100));
    server.run_engine(config);
    let start = Instant::now();
    loop {
        let [cancelled, completed, waiting] = server
            .metrics(&[
                "requests_cancelled_total",
                "requests_completed_total",
                "requests_waiting",
            ])
            .try_into()
            .unwrap();
        if cancelled == 1 {
            assert_eq!(completed, 0, "dropped only when its turn came");
            assert_eq!(waiting, 0);
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "never dropped");
        std::thread::sleep(Duration::from_millis(2));
    }
    assert_eq!(running.join().unwrap().status, 200);
    assert_eq!(server.metric("requests_completed_total"), 1);
}
