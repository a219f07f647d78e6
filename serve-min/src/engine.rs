//! The engine: one thread owning the model, running every admitted request in one batch.
//!
//! Continuous batching: each iteration first admits waiting requests (each prompt is
//! prefilled alone through its skillpack and its cache rows join the batch's
//! [`KvCache::continuous`]), then runs one decode step for every running request at once —
//! the backbone once for the whole batch, each skillpack's low-rank path on its own rows
//! ([`SkillpackSet`], grouped by skill). A request leaves the batch when it stops, reaches its
//! token limit, or its client has gone (its event receiver was dropped); its cache rows are
//! dropped with it.
//!
//! Requests wait in a bounded queue ([`EngineHandle::submit`] refuses when it is full), so
//! memory stays bounded under any load. Skillpacks are loaded and unloaded between steps
//! ([`EngineHandle::load`], [`EngineHandle::unload`]); a skill some running request uses
//! cannot be unloaded.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, SyncSender, TrySendError};
use std::time::Duration;

use candle_core::{Device, Tensor};
use skillzip_format::skillpack::Skillpack;
use skillzip_harness::router::{Router, token_features};
use skillzip_lm::generate::{Sampler, Sampling};
use skillzip_lm::model::{KvCache, Llama, Logits};
use skillzip_lm::skillpack::SkillpackSet;
use skillzip_lm::tokenizer::Tokenizer;
use tokio::sync::mpsc::UnboundedSender;
use tokio::sync::oneshot;

use crate::error::ApiError;

/// Limits of the engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineConfig {
    /// Most requests decoding at once (rows of the batch).
    pub max_batch: usize,
    /// Most requests waiting for a row; more are refused with 503.
    pub max_queue: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            max_batch: 16,
            max_queue: 64,
        }
    }
}

/// The model the engine runs: the backbone, its tokenizer, the loaded skillpacks and the
/// router that picks one for `"model": "auto"`.
pub struct Backbone {
    /// The decoder (base plus the bundle's shared backbone delta).
    pub model: Llama,
    /// Its tokenizer.
    pub tokenizer: Tokenizer,
    /// The skillpacks, each in a slot.
    pub skills: SkillpackSet,
    /// The learned router over the backbone's hidden states, if the bundle has one.
    pub router: Option<Router>,
}

/// Which skillpack a request runs through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SkillChoice {
    /// None: the backbone alone.
    Base,
    /// The named skill.
    Named(String),
    /// The skill the router picks from the prompt (one extra backbone pass over it).
    Auto,
}

/// Why a request finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// A stop token or stop string.
    Stop,
    /// The `max_tokens` limit (or the model's context).
    Length,
}

impl FinishReason {
    /// The OpenAI name (`stop`, `length`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stop => "stop",
            Self::Length => "length",
        }
    }
}

/// What the engine tells a request's handler.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// The skill the router chose (first event of an `auto` request).
    Routed(String),
    /// New text (never splits a UTF-8 character or shows part of a stop string).
    Text(String),
    /// The request is complete.
    Done {
        /// Why it ended.
        finish: FinishReason,
        /// Prompt tokens.
        prompt_tokens: usize,
        /// Generated tokens (the stop token excluded).
        completion_tokens: usize,
    },
    /// The request could not be run (the engine failed, or its skill was unloaded).
    Failed(ApiError),
}

/// One request, tokenized and validated.
#[derive(Debug)]
pub struct Job {
    /// Prompt token ids (non-empty, fits the context with `max_tokens`).
    pub prompt: Vec<u32>,
    /// The skillpack to run through.
    pub skill: SkillChoice,
    /// Most tokens to generate (≥ 1).
    pub max_tokens: usize,
    /// Token choice.
    pub sampling: Sampling,
    /// Token ids that end the request (not part of the text).
    pub stop_ids: Vec<u32>,
    /// Strings that end the request (not part of the text).
    pub stop_strings: Vec<String>,
    /// Where the events go; dropping the receiver cancels the request.
    pub events: UnboundedSender<Event>,
}

/// Counters the metrics endpoint reports.
#[derive(Debug, Default)]
pub struct Stats {
    /// Requests admitted to the batch.
    pub admitted: AtomicU64,
    /// Requests that finished normally.
    pub completed: AtomicU64,
    /// Requests dropped because their client left.
    pub cancelled: AtomicU64,
    /// Requests refused because the queue was full.
    pub rejected: AtomicU64,
    /// Requests that failed in the engine.
    pub failed: AtomicU64,
    /// Prompt tokens prefilled.
    pub prompt_tokens: AtomicU64,
    /// Tokens generated.
    pub generated_tokens: AtomicU64,
    /// Decode steps run (each one forward pass of the whole batch).
    pub decode_steps: AtomicU64,
    /// Requests in the batch now.
    pub running: AtomicUsize,
    /// Requests waiting in the queue now.
    pub waiting: AtomicUsize,
}

/// A change to the loaded skillpacks, run by the engine between steps.
enum Admin {
    Load(Box<Skillpack>, oneshot::Sender<Result<usize, ApiError>>),
    Unload(String, oneshot::Sender<Result<(), ApiError>>),
}

/// The handle request handlers submit jobs through.
#[derive(Clone)]
pub struct EngineHandle {
    queue: SyncSender<Job>,
    admin: Sender<Admin>,
    stats: Arc<Stats>,
    max_queue: usize,
}

impl EngineHandle {
    /// Queues `job`, or refuses it when the queue is full or the engine has stopped.
    pub fn submit(&self, job: Job) -> Result<(), ApiError> {
        // Counted before sending so the engine's decrement can never come first.
        self.stats.waiting.fetch_add(1, Ordering::SeqCst);
        match self.queue.try_send(job) {
            Ok(()) => Ok(()),
            Err(e) => {
                self.stats.waiting.fetch_sub(1, Ordering::SeqCst);
                match e {
                    TrySendError::Full(_) => {
                        self.stats.rejected.fetch_add(1, Ordering::Relaxed);
                        Err(ApiError::Overloaded(self.max_queue))
                    }
                    TrySendError::Disconnected(_) => Err(stopped()),
                }
            }
        }
    }

    /// The engine's counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Loads `pack` (a skill name not yet served, layers of this model, no dense deltas)
    /// and returns its layer count.
    pub async fn load(&self, pack: Skillpack) -> Result<usize, ApiError> {
        let (reply, answer) = oneshot::channel();
        self.admin
            .send(Admin::Load(Box::new(pack), reply))
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }

    /// Unloads skill `name`; refused while a running request uses it.
    pub async fn unload(&self, name: &str) -> Result<(), ApiError> {
        let (reply, answer) = oneshot::channel();
        self.admin
            .send(Admin::Unload(name.to_string(), reply))
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

fn stopped() -> ApiError {
    ApiError::Internal("the engine has stopped".into())
}

/// Starts the engine thread over `backbone`; it runs until every handle is dropped.
pub fn start(backbone: Backbone, config: EngineConfig) -> std::io::Result<EngineHandle> {
    let (handle, queue) = queue(config);
    spawn(backbone, config, queue)?;
    Ok(handle)
}

/// The waiting-request queue of an engine not yet running: jobs submitted through the
/// handle wait until [`spawn`] starts the engine on the queue.
pub fn queue(config: EngineConfig) -> (EngineHandle, JobQueue) {
    let (sender, jobs) = std::sync::mpsc::sync_channel(config.max_queue);
    let (admin, commands) = std::sync::mpsc::channel();
    let stats = Arc::new(Stats::default());
    let handle = EngineHandle {
        queue: sender,
        admin,
        stats: Arc::clone(&stats),
        max_queue: config.max_queue,
    };
    (
        handle,
        JobQueue {
            jobs,
            commands,
            stats,
        },
    )
}

/// The receiving end of an engine's queue (see [`queue`]).
pub struct JobQueue {
    jobs: Receiver<Job>,
    commands: Receiver<Admin>,
    stats: Arc<Stats>,
}

/// Runs the engine over `queue` on its own thread.
pub fn spawn(backbone: Backbone, config: EngineConfig, queue: JobQueue) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("serve-min-engine".into())
        .spawn(move || Engine::new(backbone, config, queue.stats).run(queue.jobs, queue.commands))
        .map(drop)
}

/// A request in the batch.
struct Row {
    job: Job,
    /// Its skill's slot in the [`SkillpackSet`].
    slot: Option<usize>,
    sampler: Sampler,
    generated: Vec<u32>,
    /// Bytes of the decoded text already sent.
    sent: usize,
    /// The token to feed at the next step.
    next: u32,
}

struct Engine {
    backbone: Backbone,
    config: EngineConfig,
    stats: Arc<Stats>,
    cache: KvCache,
    rows: Vec<Row>,
}

impl Engine {
    fn new(backbone: Backbone, config: EngineConfig, stats: Arc<Stats>) -> Self {
        Self {
            backbone,
            config,
            stats,
            cache: KvCache::continuous(),
            rows: Vec::new(),
        }
    }

    fn run(mut self, jobs: Receiver<Job>, commands: Receiver<Admin>) {
        loop {
            while let Ok(command) = commands.try_recv() {
                self.administer(command);
            }
            if self.rows.is_empty() {
                // Idle: wait for a request, looking at admin commands now and then; stop
                // when every handle is gone.
                match jobs.recv_timeout(Duration::from_millis(20)) {
                    Ok(job) => self.admit(job),
                    Err(RecvTimeoutError::Timeout) => continue,
                    Err(RecvTimeoutError::Disconnected) => return,
                }
            }
            while self.rows.len() < self.config.max_batch {
                match jobs.try_recv() {
                    Ok(job) => self.admit(job),
                    Err(_) => break,
                }
            }
            if !self.rows.is_empty() {
                self.step();
            }
        }
    }

    fn administer(&mut self, command: Admin) {
        let skills = &mut self.backbone.skills;
        match command {
            Admin::Load(pack, reply) => {
                let name = &pack.meta.skill;
                let result = if skills.slot(name).is_some() {
                    Err(ApiError::Conflict(format!(
                        "skill {name} is already loaded"
                    )))
                } else {
                    skills
                        .insert(&pack)
                        .map(|_| pack.layers.len())
                        .map_err(|e| ApiError::InvalidRequest(e.to_string()))
                };
                let _ = reply.send(result);
            }
            Admin::Unload(name, reply) => {
                let slot = skills.slot(&name);
                let users = self
                    .rows
                    .iter()
                    .filter(|r| slot.is_some() && r.slot == slot)
                    .count();
                let result = if slot.is_none() {
                    Err(ApiError::UnknownModel(name))
                } else if users > 0 {
                    Err(ApiError::Conflict(format!(
                        "skill {name} is in use by {users} running request(s); unload it when \
                         they finish"
                    )))
                } else {
                    skills.remove(&name);
                    Ok(())
                };
                let _ = reply.send(result);
            }
        }
    }

    /// Prefills `job` alone, sends its first token and joins its cache to the batch.
    fn admit(&mut self, job: Job) {
        self.stats.waiting.fetch_sub(1, Ordering::SeqCst);
        if job.events.is_closed() {
            self.stats.cancelled.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.stats.admitted.fetch_add(1, Ordering::Relaxed);
        // The skill is looked up now: it may have been unloaded while the request waited.
        let slot = match self.slot_of(&job) {
            Ok(slot) => slot,
            Err(e) => {
                self.stats.failed.fetch_add(1, Ordering::Relaxed);
                let _ = job.events.send(Event::Failed(e));
                return;
            }
        };
        let prefilled = (|| -> skillzip_lm::Result<(KvCache, Vec<f32>, Sampler)> {
            let sampler = Sampler::new(job.sampling)?;
            self.backbone.skills.assign_rows(&[slot])?;
            let ids = Tensor::from_vec(job.prompt.clone(), (1, job.prompt.len()), &Device::Cpu)?;
            let mut cache = KvCache::new();
            let logits = self.backbone.model.forward(
                &ids,
                Some(&mut cache),
                Logits::Last,
                &mut self.backbone.skills,
            )?;
            Ok((cache, logits.flatten_all()?.to_vec1()?, sampler))
        })();
        let (cache, logits, sampler) = match prefilled {
            Ok(p) => p,
            Err(e) => {
                self.stats.failed.fetch_add(1, Ordering::Relaxed);
                let _ = job
                    .events
                    .send(Event::Failed(ApiError::Internal(e.to_string())));
                return;
            }
        };
        self.stats
            .prompt_tokens
            .fetch_add(job.prompt.len() as u64, Ordering::Relaxed);
        let mut row = Row {
            job,
            slot,
            sampler,
            generated: Vec::new(),
            sent: 0,
            next: 0,
        };
        if self.accept(&mut row, &logits) {
            // With no rows running, the cache is an empty continuous one (`retain` and
            // `fail_batch` reset it), so the first row simply joins it.
            match self.cache.join(cache) {
                Ok(()) => {
                    self.rows.push(row);
                    self.stats.running.store(self.rows.len(), Ordering::Relaxed);
                }
                Err(e) => self.fail_row(row, &e.to_string()),
            }
        }
    }

    /// The slot `job` runs through; an `auto` job is routed here (and told where).
    fn slot_of(&mut self, job: &Job) -> Result<Option<usize>, ApiError> {
        let name = match &job.skill {
            SkillChoice::Base => return Ok(None),
            SkillChoice::Named(name) => name.clone(),
            SkillChoice::Auto => {
                let name = self.route(&job.prompt)?;
                let _ = job.events.send(Event::Routed(name.clone()));
                name
            }
        };
        self.backbone
            .skills
            .slot(&name)
            .map(Some)
            .ok_or(ApiError::UnknownModel(name))
    }

    /// The router's skill for a prompt: its features are the backbone's last hidden states
    /// (before the final norm) averaged over the prompt's tokens, as the router was trained.
    fn route(&self, prompt: &[u32]) -> Result<String, ApiError> {
        let router = self.backbone.router.as_ref().ok_or_else(|| {
            ApiError::Unsupported("this server has no router: name a skill or base".into())
        })?;
        let features = token_features(&self.backbone.model, prompt)
            .map_err(|e| ApiError::Internal(format!("routing: {e}")))?;
        let k = router
            .route(&features)
            .map_err(|e| ApiError::Internal(format!("routing: {e}")))?;
        Ok(router.skills()[k].clone())
    }

    /// One decode step of the whole batch.
    fn step(&mut self) {
        // Requests whose client has gone leave before the step.
        let before = self.rows.len();
        let keep: Vec<usize> = (0..before)
            .filter(|&i| !self.rows[i].job.events.is_closed())
            .collect();
        if keep.len() < before {
            let going_on = self.retain(&keep);
            self.stats
                .cancelled
                .fetch_add((before - keep.len()) as u64, Ordering::Relaxed);
            if !going_on {
                return;
            }
        }
        let next: Vec<u32> = self.rows.iter().map(|r| r.next).collect();
        let skills: Vec<Option<usize>> = self.rows.iter().map(|r| r.slot).collect();
        let logits = (|| -> skillzip_lm::Result<Vec<Vec<f32>>> {
            self.backbone.skills.assign_rows(&skills)?;
            let ids = Tensor::from_vec(next, (skills.len(), 1), &Device::Cpu)?;
            let logits = self.backbone.model.forward(
                &ids,
                Some(&mut self.cache),
                Logits::Last,
                &mut self.backbone.skills,
            )?;
            Ok(logits.squeeze(1)?.to_vec2()?)
        })();
        self.stats.decode_steps.fetch_add(1, Ordering::Relaxed);
        let logits = match logits {
            Ok(l) => l,
            Err(e) => {
                self.fail_batch(&e.to_string());
                return;
            }
        };
        let mut rows = std::mem::take(&mut self.rows);
        let mut keep = Vec::with_capacity(rows.len());
        for (i, (row, logits)) in rows.iter_mut().zip(&logits).enumerate() {
            if self.accept(row, logits) {
                keep.push(i);
            }
        }
        self.rows = rows;
        if keep.len() < self.rows.len() {
            self.retain(&keep);
        }
    }

    /// Keeps rows `keep` of the batch (and of its cache); false when none is left.
    fn retain(&mut self, keep: &[usize]) -> bool {
        let mut rows: Vec<Option<Row>> = std::mem::take(&mut self.rows)
            .into_iter()
            .map(Some)
            .collect();
        self.rows = keep.iter().filter_map(|&i| rows[i].take()).collect();
        self.stats.running.store(self.rows.len(), Ordering::Relaxed);
        if self.rows.is_empty() {
            self.cache = KvCache::continuous();
            return false;
        }
        if let Err(e) = self.cache.retain_rows(keep) {
            self.fail_batch(&e.to_string());
            return false;
        }
        true
    }

    /// Samples `row`'s next token from `logits`, sends its new text, and says whether the
    /// row goes on (false: it finished and was told so).
    fn accept(&self, row: &mut Row, logits: &[f32]) -> bool {
        let token = row.sampler.next(logits);
        let tokenizer = &self.backbone.tokenizer;
        let max_positions = self.backbone.model.config().max_position_embeddings;
        let finish = if row.job.stop_ids.contains(&token) {
            Some(FinishReason::Stop)
        } else {
            row.generated.push(token);
            self.stats.generated_tokens.fetch_add(1, Ordering::Relaxed);
            let full = row.job.prompt.len() + row.generated.len() >= max_positions;
            (row.generated.len() >= row.job.max_tokens || full).then_some(FinishReason::Length)
        };
        let text = match tokenizer.decode(&row.generated, true) {
            Ok(t) => t,
            Err(e) => {
                let _ = row
                    .job
                    .events
                    .send(Event::Failed(ApiError::Internal(e.to_string())));
                self.stats.failed.fetch_add(1, Ordering::Relaxed);
                return false;
            }
        };
        let (upto, stopped) = releasable(&text, row.sent, &row.job.stop_strings, finish.is_some());
        if upto > row.sent {
            let _ = row
                .job
                .events
                .send(Event::Text(text[row.sent..upto].to_string()));
            row.sent = upto;
        }
        let finish = if stopped {
            Some(FinishReason::Stop)
        } else {
            finish
        };
        match finish {
            Some(finish) => {
                self.stats.completed.fetch_add(1, Ordering::Relaxed);
                let _ = row.job.events.send(Event::Done {
                    finish,
                    prompt_tokens: row.job.prompt.len(),
                    completion_tokens: row.generated.len(),
                });
                false
            }
            None => {
                row.next = token;
                true
            }
        }
    }

    /// The batch's cache is unusable: every running request fails, and the engine goes on
    /// with an empty batch.
    fn fail_batch(&mut self, message: &str) {
        for row in std::mem::take(&mut self.rows) {
            self.fail_row(row, message);
        }
        self.cache = KvCache::continuous();
        self.stats.running.store(0, Ordering::Relaxed);
    }

    fn fail_row(&self, row: Row, message: &str) {
        self.stats.failed.fetch_add(1, Ordering::Relaxed);
        let _ = row
            .job
            .events
            .send(Event::Failed(ApiError::Internal(message.to_string())));
    }
}

/// How much of `text` (of which `sent` bytes went out already) may be sent now, and whether
/// a stop string ended it. Held back: an incomplete UTF-8 character at the end (decoded as
/// U+FFFD) and a tail that could begin a stop string — unless the request is `finished`.
pub fn releasable(text: &str, sent: usize, stops: &[String], finished: bool) -> (usize, bool) {
    // A trailing U+FFFD may be the start of a character the next token completes: until
    // then it is neither sent nor matched against stop strings.
    let settled = if !finished && text.ends_with('\u{FFFD}') {
        text.len() - '\u{FFFD}'.len_utf8()
    } else {
        text.len()
    };
    let text = &text[..settled.max(sent)];
    // A stop string may straddle text already sent: search from the earliest byte where a
    // match could still end in the new text.
    let longest = stops.iter().map(String::len).max().unwrap_or(0);
    let mut from = sent.saturating_sub(longest.saturating_sub(1));
    while !text.is_char_boundary(from) {
        from -= 1;
    }
    let first_stop = stops
        .iter()
        .filter(|s| !s.is_empty())
        .filter_map(|s| text[from..].find(s.as_str()).map(|at| from + at))
        .min();
    if let Some(at) = first_stop {
        return (at.max(sent), true);
    }
    if finished {
        return (text.len(), false);
    }
    // The longest tail that is a proper prefix of a stop string waits for more text.
    let hold = stops
        .iter()
        .filter_map(|s| {
            let cuts: Vec<usize> = s.char_indices().skip(1).map(|(cut, _)| cut).collect();
            cuts.into_iter()
                .rev()
                .find(|&cut| text.ends_with(&s[..cut]))
        })
        .max()
        .unwrap_or(0);
    ((text.len() - hold).max(sent), false)
}

#[cfg(test)]
mod tests {
    use super::releasable;

    fn stops(s: &[&str]) -> Vec<String> {
        s.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn text_is_released_except_what_may_begin_a_stop_string() {
        let s = stops(&["\n\n", "END"]);
        assert_eq!(releasable("hello", 0, &s, false), (5, false));
        assert_eq!(releasable("hello\n", 0, &s, false), (5, false));
        assert_eq!(releasable("hello\n\nmore", 0, &s, false), (5, true));
        assert_eq!(releasable("hello EN", 3, &s, false), (6, false));
        assert_eq!(releasable("hello ENDING", 6, &s, false), (6, true));
        // A stop string straddling what was sent and what is new.
        assert_eq!(releasable("abE", 2, &s, false), (2, false));
        assert_eq!(releasable("abEND", 3, &stops(&["bEND"]), false), (3, true));
        // An incomplete character waits, and is not matched against stop strings; at the
        // end everything goes.
        assert_eq!(releasable("ab\u{FFFD}", 0, &s, false), (2, false));
        assert_eq!(
            releasable("ab\u{FFFD}", 0, &stops(&["b\u{FFFD}"]), false),
            (1, false)
        );
        assert_eq!(
            releasable("ab\u{FFFD}", 0, &stops(&["b\u{FFFD}"]), true),
            (1, true)
        );
        assert_eq!(releasable("hello\n", 0, &s, true), (6, false));
        // Nothing sent is ever taken back.
        assert_eq!(releasable("abcd", 3, &stops(&["cd"]), false), (3, true));
        assert_eq!(releasable("", 0, &[], false), (0, false));
    }
}
