//! The HTTP side: axum routes over an [`EngineHandle`].
//!
//! | route | what |
//! |---|---|
//! | `POST /v1/completions` | text completion, JSON or server-sent events (`"stream": true`) |
//! | `POST /v1/chat/completions` | chat completion (the model's chat template), JSON or SSE |
//! | `GET /v1/models` | `base` and every loaded skill |
//! | `GET /health` | `{"status": "ok"}` |
//! | `GET /metrics` | the engine's counters, Prometheus text format |
//! | `POST /admin/skillpacks` | `{"path": FILE}`: load a skillpack made for this backbone (admin only) |
//! | `DELETE /admin/skillpacks/{name}` | unload a skill no running request uses (admin only) |
//!
//! A request's `model` names a skill (vLLM's convention for adapters) or `base`. A client that
//! disconnects cancels its request: the engine drops its row at the next step. The admin
//! routes read files named by the client, so they exist only when the server is started with
//! them enabled (`serve-min serve --admin`).
//!
//! [`serve`] accepts connections: HTTP/1.1 with a deadline for each request's header (a client
//! that trickles its header in, or opens a connection and sends nothing, is dropped when it
//! passes) on top of the handlers' deadline for the body.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use futures_util::stream::{self, Stream, StreamExt};
use serde_json::{Value, json};
use skillzip_lm::generate::Sampling;
use skillzip_lm::tokenizer::{ChatTemplate, Tokenizer};
use tokio::sync::mpsc::UnboundedReceiver;

use crate::api::{
    AUTO_MODEL, BASE_MODEL, DEFAULT_CHAT_TOKENS, DEFAULT_COMPLETION_TOKENS, GenerationRequest,
    Prompt, parse_chat, parse_completion, reserved_skill_name,
};
use crate::engine::{EngineHandle, Event, FinishReason, Job, SkillChoice};
use crate::error::ApiError;

/// Serves `app` on `listener` until `shutdown` completes: HTTP/1.1, each connection on its
/// own task, a connection whose request header has not fully arrived within `header_timeout`
/// closed (axum's own `serve` sets no timer, so slow-header clients would hold connections
/// for ever). Connections still open at shutdown are dropped with the runtime.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    header_timeout: Duration,
    shutdown: impl std::future::Future<Output = ()>,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use hyper_util::service::TowerToHyperService;
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => return Ok(()),
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            // Out of descriptors or a connection reset while queued: the listener itself is
            // fine, so wait a moment and go on accepting.
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let service = TowerToHyperService::new(app.clone());
        tokio::spawn(async move {
            // A connection's errors (a reset, the header deadline) concern only it.
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// Largest request body accepted.
pub const MAX_BODY_BYTES: usize = 1 << 20;

/// What the handlers share.
pub struct ServerState {
    engine: EngineHandle,
    tokenizer: Tokenizer,
    /// Names of the skills served, in load order.
    skills: RwLock<Vec<String>>,
    context: usize,
    backbone_hash: String,
    admin: bool,
    routing: bool,
    body_timeout: Duration,
    next_id: AtomicU64,
}

/// What the server serves, besides its engine.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// Names of the skills the engine starts with.
    pub skills: Vec<String>,
    /// The model's positions (prompt plus generated tokens).
    pub context: usize,
    /// The backbone hash every skillpack loaded later must name.
    pub backbone_hash: String,
    /// Whether the admin routes exist.
    pub admin: bool,
    /// Whether the engine has a router (`"model": "auto"`).
    pub routing: bool,
    /// How long a client may take to send a request body (then 408).
    pub body_timeout: Duration,
}

impl ServerState {
    /// The state over an engine (started or not); `tokenizer` is the engine model's.
    pub fn new(engine: EngineHandle, tokenizer: Tokenizer, options: ServerOptions) -> Self {
        Self {
            engine,
            tokenizer,
            skills: RwLock::new(options.skills),
            context: options.context,
            backbone_hash: options.backbone_hash,
            admin: options.admin,
            routing: options.routing,
            body_timeout: options.body_timeout,
            next_id: AtomicU64::new(0),
        }
    }

    fn skills(&self) -> Vec<String> {
        self.skills.read().map(|s| s.clone()).unwrap_or_default()
    }
}

/// The router over shared state.
pub fn router(state: Arc<ServerState>) -> Router {
    let mut router = Router::new()
        .route(
            "/health",
            get(|| async { axum::Json(json!({"status": "ok"})) }),
        )
        .route("/v1/models", get(models))
        .route("/metrics", get(metrics))
        .route("/v1/completions", post(completions))
        .route("/v1/chat/completions", post(chat_completions));
    if state.admin {
        router = router
            .route("/admin/skillpacks", post(load_skillpack))
            .route("/admin/skillpacks/{name}", delete(unload_skillpack));
    }
    // Bodies are read by `read_body` (a limit and a deadline with JSON errors), not by
    // axum's extractor.
    router.layer(DefaultBodyLimit::disable()).with_state(state)
}

/// The whole body, or 413 past [`MAX_BODY_BYTES`], or 408 when the client has not sent it
/// within the server's body timeout (a slow or stalled client holds no engine resources).
async fn read_body(state: &ServerState, body: Body) -> Result<Bytes, ApiError> {
    match tokio::time::timeout(
        state.body_timeout,
        axum::body::to_bytes(body, MAX_BODY_BYTES),
    )
    .await
    {
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(e)) => {
            let length_limit = std::error::Error::source(&e)
                .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
            if length_limit {
                Err(ApiError::TooLarge(MAX_BODY_BYTES))
            } else {
                Err(ApiError::InvalidRequest(format!(
                    "reading the body failed: {e}"
                )))
            }
        }
        Err(_) => Err(ApiError::Timeout(state.body_timeout.as_secs_f64())),
    }
}

async fn load_skillpack(State(state): State<Arc<ServerState>>, body: Body) -> Response {
    let result = match read_body(&state, body).await {
        Ok(body) => load(&state, &body).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(v) => axum::Json(v).into_response(),
        Err(e) => e.into_response(),
    }
}

/// Reads the skillpack file a load request names, checks it against this backbone and
/// hands it to the engine.
async fn load(state: &ServerState, body: &[u8]) -> Result<Value, ApiError> {
    let request: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::InvalidRequest(format!("malformed JSON: {e}")))?;
    let path = request
        .get("path")
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::InvalidRequest("`path` (a skillpack file) is required".into()))?
        .to_string();
    let pack = tokio::task::spawn_blocking(move || skillzip_format::read_skillpack(&path))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .map_err(|e| ApiError::InvalidRequest(format!("the skillpack was refused: {e}")))?;
    let name = pack.meta.skill.clone();
    if let Some(why) = reserved_skill_name(&name) {
        return Err(ApiError::Conflict(why));
    }
    if pack.meta.base.backbone_hash != state.backbone_hash {
        return Err(ApiError::Conflict(format!(
            "skillpack {name} was made for backbone {}, this server runs {}",
            pack.meta.base.backbone_hash, state.backbone_hash
        )));
    }
    let layers = state.engine.load(pack).await?;
    if let Ok(mut skills) = state.skills.write() {
        skills.push(name.clone());
    }
    Ok(json!({"loaded": name, "layers": layers}))
}

async fn unload_skillpack(
    State(state): State<Arc<ServerState>>,
    Path(name): Path<String>,
) -> Response {
    match state.engine.unload(&name).await {
        Ok(()) => {
            if let Ok(mut skills) = state.skills.write() {
                skills.retain(|s| *s != name);
            }
            axum::Json(json!({"unloaded": name})).into_response()
        }
        Err(e) => e.into_response(),
    }
}

async fn models(State(state): State<Arc<ServerState>>) -> Response {
    let created = unix_now();
    let auto = state.routing.then(|| AUTO_MODEL.to_string());
    let data: Vec<Value> = std::iter::once(BASE_MODEL.to_string())
        .chain(state.skills())
        .chain(auto)
        .map(|id| json!({"id": id, "object": "model", "created": created, "owned_by": "skillzip"}))
        .collect();
    axum::Json(json!({"object": "list", "data": data})).into_response()
}

async fn metrics(State(state): State<Arc<ServerState>>) -> Response {
    let s = state.engine.stats();
    let counters = [
        (
            "requests_admitted_total",
            s.admitted.load(Ordering::Relaxed),
        ),
        (
            "requests_completed_total",
            s.completed.load(Ordering::Relaxed),
        ),
        (
            "requests_cancelled_total",
            s.cancelled.load(Ordering::Relaxed),
        ),
        (
            "requests_rejected_total",
            s.rejected.load(Ordering::Relaxed),
        ),
        ("requests_failed_total", s.failed.load(Ordering::Relaxed)),
        (
            "prompt_tokens_total",
            s.prompt_tokens.load(Ordering::Relaxed),
        ),
        (
            "generated_tokens_total",
            s.generated_tokens.load(Ordering::Relaxed),
        ),
        ("decode_steps_total", s.decode_steps.load(Ordering::Relaxed)),
        ("model_reloads_total", s.reloads.load(Ordering::Relaxed)),
        (
            "model_reload_milliseconds_total",
            s.reload_ms.load(Ordering::Relaxed),
        ),
    ];
    let gauges = [
        ("requests_running", s.running.load(Ordering::Relaxed)),
        ("requests_waiting", s.waiting.load(Ordering::Relaxed)),
    ];
    let mut text = String::new();
    for (name, v) in counters {
        text.push_str(&format!(
            "# TYPE serve_min_{name} counter\nserve_min_{name} {v}\n"
        ));
    }
    for (name, v) in gauges {
        text.push_str(&format!(
            "# TYPE serve_min_{name} gauge\nserve_min_{name} {v}\n"
        ));
    }
    ([("content-type", "text/plain; version=0.0.4")], text).into_response()
}

async fn completions(State(state): State<Arc<ServerState>>, body: Body) -> Response {
    respond(state, body, Endpoint::Completion).await
}

async fn chat_completions(State(state): State<Arc<ServerState>>, body: Body) -> Response {
    respond(state, body, Endpoint::Chat).await
}

/// Reads and parses a generation request for `endpoint` and answers it.
async fn respond(state: Arc<ServerState>, body: Body, endpoint: Endpoint) -> Response {
    let body = match read_body(&state, body).await {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    let parsed = match endpoint {
        Endpoint::Completion => parse_completion(&body),
        Endpoint::Chat => parse_chat(&body),
    };
    match parsed {
        Ok(req) => generate(state, req, endpoint).await,
        Err(e) => e.into_response(),
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    Completion,
    Chat,
}

/// The fields every response of one request repeats.
#[derive(Clone)]
struct Envelope {
    id: String,
    created: u64,
    model: String,
    endpoint: Endpoint,
}

impl Envelope {
    fn object(&self, chunk: bool) -> &'static str {
        match (self.endpoint, chunk) {
            (Endpoint::Completion, _) => "text_completion",
            (Endpoint::Chat, false) => "chat.completion",
            (Endpoint::Chat, true) => "chat.completion.chunk",
        }
    }

    fn with(&self, chunk: bool, choice: Value, usage: Option<Value>) -> Value {
        let mut v = json!({
            "id": self.id,
            "object": self.object(chunk),
            "created": self.created,
            "model": self.model,
            "choices": [choice],
        });
        if let Some(u) = usage {
            v["usage"] = u;
        }
        v
    }
}

fn usage(prompt: usize, completion: usize) -> Value {
    json!({
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    })
}

async fn generate(state: Arc<ServerState>, req: GenerationRequest, endpoint: Endpoint) -> Response {
    let (job, events) = match job_of(&state, &req, endpoint) {
        Ok(j) => j,
        Err(e) => return e.into_response(),
    };
    if let Err(e) = state.engine.submit(job) {
        return e.into_response();
    }
    let n = state.next_id.fetch_add(1, Ordering::Relaxed);
    let envelope = Envelope {
        id: match endpoint {
            Endpoint::Completion => format!("cmpl-{n}"),
            Endpoint::Chat => format!("chatcmpl-{n}"),
        },
        created: unix_now(),
        model: req.model.clone(),
        endpoint,
    };
    if req.stream {
        Sse::new(sse_stream(envelope, events))
            .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
            .into_response()
    } else {
        whole(envelope, events).await
    }
}

/// Validates a request against the model and turns it into an engine job.
fn job_of(
    state: &ServerState,
    req: &GenerationRequest,
    endpoint: Endpoint,
) -> Result<(Job, UnboundedReceiver<Event>), ApiError> {
    let skill = match req.model.as_str() {
        BASE_MODEL => SkillChoice::Base,
        AUTO_MODEL if state.routing => SkillChoice::Auto,
        AUTO_MODEL => {
            return Err(ApiError::Unsupported(
                "\"model\": \"auto\" needs a router, and this server's bundle has none; name \
                 a skill or base"
                    .into(),
            ));
        }
        name if state.skills().iter().any(|s| s == name) => SkillChoice::Named(name.to_string()),
        name => return Err(ApiError::UnknownModel(name.to_string())),
    };
    let prompt = match &req.prompt {
        Prompt::Tokens(ids) => {
            let vocab = state.tokenizer.vocab_size();
            if let Some(bad) = ids.iter().find(|&&id| id as usize >= vocab) {
                return Err(ApiError::InvalidRequest(format!(
                    "`prompt`: token id {bad} is outside the vocabulary of {vocab}"
                )));
            }
            ids.clone()
        }
        Prompt::Text(text) => encode(&state.tokenizer, text)?,
        Prompt::Chat(messages) => match state.tokenizer.chat_template() {
            Some(template @ ChatTemplate::ChatMl { .. }) => {
                encode(&state.tokenizer, &template.render(messages, true))?
            }
            None => {
                return Err(ApiError::Unsupported(
                    "this model has no chat template: use /v1/completions".into(),
                ));
            }
        },
    };
    if prompt.is_empty() {
        return Err(ApiError::InvalidRequest("the prompt is empty".into()));
    }
    let room = state.context.saturating_sub(prompt.len());
    if room == 0 {
        return Err(ApiError::ContextLength(format!(
            "the prompt has {} tokens; the model's context is {}",
            prompt.len(),
            state.context
        )));
    }
    let max_tokens = match req.max_tokens {
        Some(n) if n > room => {
            return Err(ApiError::ContextLength(format!(
                "the prompt ({} tokens) plus max_tokens ({n}) exceeds the model's context of {}",
                prompt.len(),
                state.context
            )));
        }
        Some(n) => n,
        None => match endpoint {
            Endpoint::Completion => DEFAULT_COMPLETION_TOKENS,
            Endpoint::Chat => DEFAULT_CHAT_TOKENS,
        }
        .min(room),
    };
    let sampling = if req.temperature == 0.0 {
        Sampling::Greedy
    } else {
        Sampling::Sample {
            temperature: req.temperature,
            top_k: 0,
            top_p: req.top_p,
            seed: req.seed.unwrap_or_else(|| {
                state.next_id.load(Ordering::Relaxed) ^ unix_now().rotate_left(17)
            }),
        }
    };
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let job = Job {
        prompt,
        skill,
        max_tokens,
        sampling,
        stop_ids: if req.ignore_eos {
            Vec::new()
        } else {
            state.tokenizer.stop_ids()
        },
        stop_strings: req.stop.clone(),
        events: tx,
    };
    Ok((job, rx))
}

fn encode(tokenizer: &Tokenizer, text: &str) -> Result<Vec<u32>, ApiError> {
    tokenizer
        .encode(text)
        .map_err(|e| ApiError::InvalidRequest(format!("the prompt cannot be tokenized: {e}")))
}

/// Waits for the whole completion and answers one JSON body.
async fn whole(mut envelope: Envelope, mut events: UnboundedReceiver<Event>) -> Response {
    let mut text = String::new();
    while let Some(event) = events.recv().await {
        match event {
            Event::Routed(skill) => envelope.model = skill,
            Event::Text(t) => text.push_str(&t),
            Event::Done {
                finish,
                prompt_tokens,
                completion_tokens,
            } => {
                let choice = match envelope.endpoint {
                    Endpoint::Completion => json!({
                        "index": 0, "text": text, "logprobs": null,
                        "finish_reason": finish.as_str(),
                    }),
                    Endpoint::Chat => json!({
                        "index": 0,
                        "message": {"role": "assistant", "content": text},
                        "finish_reason": finish.as_str(),
                    }),
                };
                let usage = usage(prompt_tokens, completion_tokens);
                return axum::Json(envelope.with(false, choice, Some(usage))).into_response();
            }
            Event::Failed(e) => return e.into_response(),
        }
    }
    ApiError::Internal("the engine dropped the request".into()).into_response()
}

/// The server-sent events of a streamed completion: (chat: a first chunk with the role)
/// one chunk per text delta, a last chunk with the finish reason and usage, then `[DONE]`.
/// An `auto` request's chunks name the skill the router chose.
fn sse_stream(
    envelope: Envelope,
    events: UnboundedReceiver<Event>,
) -> impl Stream<Item = Result<SseEvent, Infallible>> {
    let data = |v: Value| SseEvent::default().data(v.to_string());
    stream::unfold(Some((events, envelope, false)), move |state| async move {
        let (mut events, mut envelope, mut started) = state?;
        let mut out = Vec::new();
        let mut event = events.recv().await;
        if let Some(Event::Routed(skill)) = &event {
            envelope.model = skill.clone();
            event = events.recv().await;
        }
        if !started && envelope.endpoint == Endpoint::Chat {
            let role = json!({"index": 0, "delta": {"role": "assistant"}, "finish_reason": null});
            out.push(data(envelope.with(true, role, None)));
        }
        started = true;
        let finished = match event {
            Some(Event::Text(t)) => {
                out.push(data(envelope.with(true, delta(&envelope, &t, None), None)));
                false
            }
            Some(Event::Done {
                finish,
                prompt_tokens,
                completion_tokens,
            }) => {
                let choice = delta(&envelope, "", Some(finish));
                let usage = usage(prompt_tokens, completion_tokens);
                out.push(data(envelope.with(true, choice, Some(usage))));
                out.push(SseEvent::default().data("[DONE]"));
                true
            }
            Some(Event::Failed(e)) => {
                out.push(data(e.body()));
                true
            }
            // A second routing decision cannot happen; the engine dropping the request
            // ends the stream.
            Some(Event::Routed(_)) | None => return None,
        };
        let next = (!finished).then_some((events, envelope, started));
        Some((stream::iter(out), next))
    })
    .flatten()
    .map(Ok)
}

fn delta(envelope: &Envelope, text: &str, finish: Option<FinishReason>) -> Value {
    let finish = finish.map(FinishReason::as_str);
    match envelope.endpoint {
        Endpoint::Completion => json!({"index": 0, "text": text, "finish_reason": finish}),
        Endpoint::Chat => {
            let delta = if text.is_empty() {
                json!({})
            } else {
                json!({"content": text})
            };
            json!({"index": 0, "delta": delta, "finish_reason": finish})
        }
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
