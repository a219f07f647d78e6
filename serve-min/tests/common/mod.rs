//! A tiny served model (random weights, a byte-level tokenizer with ChatML specials, two
//! random skillpacks) and a raw HTTP/1.1 client, so tests talk to a real socket with bytes
//! no well-behaved client would send.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use serve_min::engine::{self, Backbone, EngineConfig, EngineHandle, JobQueue, Weights};
use serve_min::server::{ServerOptions, ServerState, router};
use skillzip_format::skillpack::Skillpack;
use skillzip_harness::router::Router;
use skillzip_lm::checkpoint::LinearKind;
use skillzip_lm::config::LlamaConfig;
use skillzip_lm::gguf::Value as Meta;
use skillzip_lm::model::Llama;
use skillzip_lm::skillpack::{SkillpackSet, random_skillpack};
use skillzip_lm::tokenizer::Tokenizer;

/// How long the test server waits for a request's header.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(1);

/// Positions of the test model.
pub const CONTEXT: usize = 512;

pub fn config() -> LlamaConfig {
    LlamaConfig {
        vocab_size: 259,
        max_position_embeddings: CONTEXT,
        ..LlamaConfig::tiny()
    }
}

/// GPT-2's byte-to-character table: printable bytes stand for themselves, the rest are
/// shifted past 255.
fn byte_chars() -> Vec<char> {
    let printable = |b: u32| (33..=126).contains(&b) || (161..=172).contains(&b) || b >= 174;
    let mut shifted = 0;
    (0u32..256)
        .map(|b| {
            if printable(b) {
                char::from_u32(b).unwrap()
            } else {
                shifted += 1;
                char::from_u32(255 + shifted).unwrap()
            }
        })
        .collect()
}

/// Ids 0–2 are `<|endoftext|>` (EOS), `<|im_start|>`, `<|im_end|>`; then one token per
/// byte, no merges.
pub fn tokenizer() -> Tokenizer {
    let s = |v: &str| Meta::String(v.into());
    let mut tokens: Vec<String> = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
        .map(String::from)
        .to_vec();
    tokens.extend(byte_chars().iter().map(|c| c.to_string()));
    let mut m = BTreeMap::new();
    m.insert("tokenizer.ggml.model".into(), s("gpt2"));
    m.insert("tokenizer.ggml.pre".into(), s("gpt2"));
    m.insert(
        "tokenizer.ggml.token_type".into(),
        Meta::Array(
            (0..tokens.len())
                .map(|i| Meta::U64(if i < 3 { 3 } else { 1 }))
                .collect(),
        ),
    );
    m.insert(
        "tokenizer.ggml.tokens".into(),
        Meta::Array(tokens.iter().map(|t| s(t)).collect()),
    );
    m.insert("tokenizer.ggml.merges".into(), Meta::Array(Vec::new()));
    m.insert("tokenizer.ggml.eos_token_id".into(), Meta::U64(0));
    m.insert(
        "tokenizer.chat_template".into(),
        s("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"),
    );
    Tokenizer::from_gguf(&m).unwrap()
}

/// The test model (the same weights on every call).
pub fn model() -> Llama {
    Llama::random(config(), 5, 20.0).unwrap()
}

/// A random skillpack for the test model over `layers`.
pub fn pack(skill: &str, layers: &[(usize, LinearKind)], seed: u64) -> Skillpack {
    random_skillpack(skill, &config(), layers, 4, HASH, seed).unwrap()
}

/// The two skills served: `math` and `code`.
pub fn packs() -> Vec<Skillpack> {
    use LinearKind::*;
    vec![
        pack("math", &[(0, Q), (0, Down), (1, Up)], 1),
        pack("code", &[(0, Down), (1, V), (1, O)], 2),
    ]
}

/// The backbone hash the test skillpacks name.
pub const HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

pub fn backbone() -> (Backbone, Vec<String>) {
    let mut skills = SkillpackSet::new(&config());
    let names = packs()
        .iter()
        .map(|p| {
            skills.insert(p).unwrap();
            p.meta.skill.clone()
        })
        .collect();
    let backbone = Backbone {
        weights: Weights::Shared {
            model: model(),
            skills,
        },
        tokenizer: tokenizer(),
        router: None,
    };
    (backbone, names)
}

/// A server on a loopback port over an engine that is running (`run`) or not yet started
/// (its queue is returned, so a test can fill it first).
pub struct Server {
    pub addr: SocketAddr,
    pub handle: EngineHandle,
    pub queue: Option<(Backbone, JobQueue)>,
    _runtime: Arc<tokio::runtime::Runtime>,
}

impl Server {
    pub fn start(config: EngineConfig, run: bool) -> Self {
        Self::start_with(config, run, None, true)
    }

    /// A running or waiting server whose engine routes `auto` requests with `routes`, with
    /// or without the admin routes.
    pub fn start_with(
        config: EngineConfig,
        run: bool,
        routes: Option<Router>,
        admin: bool,
    ) -> Self {
        let (mut backbone, names) = backbone();
        backbone.router = routes;
        Self::serve(config, run, backbone, names, admin)
    }

    /// A running or waiting server over `backbone`, serving skills `names`.
    pub fn serve(
        config: EngineConfig,
        run: bool,
        backbone: Backbone,
        names: Vec<String>,
        admin: bool,
    ) -> Self {
        let routing = backbone.router.is_some();
        let (handle, queue) = engine::queue(config);
        let tokenizer = backbone.tokenizer.clone();
        let queue = if run {
            engine::spawn(backbone, config, queue).unwrap();
            None
        } else {
            Some((backbone, queue))
        };
        let options = ServerOptions {
            skills: names,
            context: CONTEXT,
            backbone_hash: HASH.into(),
            admin,
            routing,
            body_timeout: Duration::from_secs(1),
        };
        let state = Arc::new(ServerState::new(handle.clone(), tokenizer, options));
        let runtime = Arc::new(
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap(),
        );
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        runtime.spawn(serve_min::server::serve(
            listener,
            router(state),
            HEADER_TIMEOUT,
            std::future::pending(),
        ));
        Server {
            addr,
            handle,
            queue,
            _runtime: runtime,
        }
    }

    /// Starts the engine of a server made with `run: false`.
    pub fn run_engine(&mut self, config: EngineConfig) {
        let (backbone, queue) = self.queue.take().unwrap();
        engine::spawn(backbone, config, queue).unwrap();
    }

    pub fn post(&self, path: &str, body: &[u8]) -> Response {
        request(self.addr, "POST", path, body)
    }

    pub fn get(&self, path: &str) -> Response {
        request(self.addr, "GET", path, b"")
    }

    pub fn delete(&self, path: &str) -> Response {
        request(self.addr, "DELETE", path, b"")
    }

    pub fn post_json(&self, path: &str, body: &Value) -> Response {
        self.post(path, body.to_string().as_bytes())
    }

    /// A metric's value from `/metrics`.
    pub fn metric(&self, name: &str) -> u64 {
        self.metrics(&[name])[0]
    }

    /// Several counters read from one answer of the metrics endpoint.
    pub fn metrics(&self, names: &[&str]) -> Vec<u64> {
        let text = self.get("/metrics").text();
        names
            .iter()
            .map(|name| {
                text.lines()
                    .find_map(|l| l.strip_prefix(&format!("serve_min_{name} ")))
                    .unwrap_or_else(|| panic!("{name} not in {text}"))
                    .parse()
                    .unwrap()
            })
            .collect()
    }
}

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: String,
    pub body: Vec<u8>,
}

impl Response {
    pub fn text(&self) -> String {
        String::from_utf8(self.body.clone()).unwrap()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{e}: {:?}", String::from_utf8_lossy(&self.body)))
    }

    /// The `data:` payloads of a server-sent-events body.
    pub fn events(&self) -> Vec<String> {
        self.text()
            .lines()
            .filter_map(|l| l.strip_prefix("data: ").or_else(|| l.strip_prefix("data:")))
            .map(str::to_string)
            .collect()
    }
}

/// Writes `head` + `body`, reads the response until the server closes the connection.
pub fn raw(addr: SocketAddr, bytes: &[u8]) -> Response {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    stream.write_all(bytes).unwrap();
    let mut data = Vec::new();
    stream.read_to_end(&mut data).unwrap();
    parse_response(&data)
}

pub fn request(addr: SocketAddr, method: &str, path: &str, body: &[u8]) -> Response {
    let mut bytes = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    bytes.extend_from_slice(body);
    raw(addr, &bytes)
}

pub fn parse_response(data: &[u8]) -> Response {
    let split = data
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end in {:?}", String::from_utf8_lossy(data)));
    let headers = String::from_utf8(data[..split].to_vec()).unwrap();
    let status = headers.split_whitespace().nth(1).unwrap().parse().unwrap();
    let mut body = data[split + 4..].to_vec();
    if headers
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body = dechunk(&body);
    }
    Response {
        status,
        headers,
        body,
    }
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let line_end = data.windows(2).position(|w| w == b"\r\n").unwrap();
        let size_text = std::str::from_utf8(&data[..line_end]).unwrap();
        let size = usize::from_str_radix(size_text.split(';').next().unwrap().trim(), 16).unwrap();
        data = &data[line_end + 2..];
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}
