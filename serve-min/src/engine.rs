//! The engine: one thread owning the model, running every admitted request in one batch.
//!
//! Continuous batching: each iteration admits waiting requests and runs one forward pass
//! ([`Llama::forward_parts`]) holding the decode step of every running request and the
//! prompts of the requests admitted now, prefill and decode mixed: every backbone weight is
//! applied once to all their token rows, each skillpack's low-rank path to its own rows
//! ([`SkillpackSet`], grouped by skill), and attention runs per part on its own cache. The new
//! requests' cache rows then join the batch's [`KvCache::continuous`]. A request leaves the
//! batch when it stops, reaches its token limit, or its client has gone (its event receiver
//! was dropped); its cache rows are dropped with it.
//!
//! Requests wait in a bounded queue ([`EngineHandle::submit`] refuses when it is full), so
//! memory stays bounded under any load. Skillpacks are loaded and unloaded between steps
//! ([`EngineHandle::load`], [`EngineHandle::unload`]); a skill some running request uses
//! cannot be unloaded.
//!
//! The same engine runs the separate-models baseline ([`Weights::Separate`]): each skill its
//! own full model from a [`ModelStore`]. A batch then holds one model's requests only: when
//! it has drained, the oldest waiting request's model becomes the batch's (read back from disk
//! if the budget had evicted it) and every waiting request of that model joins; newcomers of
//! the same model join a running batch only while no request of another model waits.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, SyncSender, TrySendError};
use std::time::Duration;

use candle_core::{Device, Tensor};
use skillzip_format::skillpack::Skillpack;
use skillzip_harness::router::{Router, token_features};
use skillzip_lm::config::LlamaConfig;
use skillzip_lm::generate::{Sampler, Sampling};
use skillzip_lm::model::{KvCache, Llama, NoHook, Part};
use skillzip_lm::skillpack::SkillpackSet;
use skillzip_lm::tokenizer::Tokenizer;
use tokio::sync::mpsc::UnboundedSender;
use tokio::sync::oneshot;

use crate::error::ApiError;
use crate::store::ModelStore;

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

/// What the engine runs: the weights, their tokenizer and the router that picks a skill for
/// `"model": "auto"`.
pub struct Backbone {
    /// The models.
    pub weights: Weights,
    /// Their tokenizer.
    pub tokenizer: Tokenizer,
    /// The learned router over the backbone's hidden states, if the bundle has one (only
    /// with [`Weights::Shared`]).
    pub router: Option<Router>,
}

/// How the skills' weights are held.
// One per engine, so the size difference between the variants costs nothing.
#[allow(clippy::large_enum_variant)]
pub enum Weights {
    /// One backbone, every skill a skillpack on it; rows of any skills share a step.
    Shared {
        /// The decoder (base plus the bundle's shared backbone delta).
        model: Llama,
        /// The skillpacks, each in a slot.
        skills: SkillpackSet,
    },
    /// The baseline: every skill its own full model, reloaded on demand.
    Separate(ModelStore),
}

impl Weights {
    /// The slot of skill `name`.
    fn slot(&self, name: &str) -> Option<usize> {
        match self {
            Self::Shared { skills, .. } => skills.slot(name),
            Self::Separate(store) => store.slot(name),
        }
    }
}

impl Backbone {
    /// The models' configuration.
    pub fn config(&self) -> &LlamaConfig {
        match &self.weights {
            Weights::Shared { model, .. } => model.config(),
            Weights::Separate(store) => store.config(),
        }
    }
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
    /// Full models read back from disk (the separate-models baseline).
    pub reloads: AtomicU64,
    /// Milliseconds spent reading them.
    pub reload_ms: AtomicU64,
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
        // Counted before sending so the engine's decrement can never come first. The count
        // is the bound: it covers jobs in the channel and those the engine holds back.
        if self.stats.waiting.fetch_add(1, Ordering::SeqCst) >= self.max_queue {
            self.stats.waiting.fetch_sub(1, Ordering::SeqCst);
            self.stats.rejected.fetch_add(1, Ordering::Relaxed);
            return Err(ApiError::Overloaded(self.max_queue));
        }
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

/// A request admitted for the next pass, its prompt not yet run.
struct Arrival {
    job: Job,
    slot: Option<usize>,
    sampler: Sampler,
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
    /// Requests taken from the channel, oldest first, not yet admitted.
    pending: VecDeque<Job>,
}

impl Engine {
    fn new(backbone: Backbone, config: EngineConfig, stats: Arc<Stats>) -> Self {
        Self {
            backbone,
            config,
            stats,
            cache: KvCache::continuous(),
            rows: Vec::new(),
            pending: VecDeque::new(),
        }
    }

    fn run(mut self, jobs: Receiver<Job>, commands: Receiver<Admin>) {
        loop {
            while let Ok(command) = commands.try_recv() {
                self.administer(command);
            }
            if self.rows.is_empty() && self.pending.is_empty() {
                // Idle: wait for a request, looking at admin commands now and then; stop
                // when every handle is gone.
                match jobs.recv_timeout(Duration::from_millis(20)) {
                    Ok(job) => self.pending.push_back(job),
                    Err(RecvTimeoutError::Timeout) => continue,
                    Err(RecvTimeoutError::Disconnected) => return,
                }
            }
            self.pending.extend(jobs.try_iter());
            // A request whose client left while it waited frees its place in the queue now.
            let queued = self.pending.len();
            self.pending.retain(|job| !job.events.is_closed());
            let gone = queued - self.pending.len();
            if gone > 0 {
                self.stats.waiting.fetch_sub(gone, Ordering::SeqCst);
                self.stats
                    .cancelled
                    .fetch_add(gone as u64, Ordering::Relaxed);
            }
            let arrivals: Vec<Arrival> = self
                .admissible()
                .into_iter()
                .filter_map(|job| self.prepare(job))
                .collect();
            if !self.rows.is_empty() || !arrivals.is_empty() {
                self.step(arrivals);
            }
        }
    }

    /// The waiting requests to admit now, oldest first, taken out of the queue: as many as
    /// the batch has room for. With separate models a batch runs one model: an empty batch
    /// takes the oldest request's model and every waiting request of it; a running batch
    /// takes newcomers of its model only while no request of another model waits (so none
    /// waits forever). A request whose model does not resolve is taken, to fail at once.
    fn admissible(&mut self) -> Vec<Job> {
        let room = self.config.max_batch - self.rows.len();
        let take: Vec<bool> = match &self.backbone.weights {
            Weights::Shared { .. } => (0..self.pending.len()).map(|i| i < room).collect(),
            weights @ Weights::Separate(_) => {
                let models: Vec<Option<Option<usize>>> = self
                    .pending
                    .iter()
                    .map(|job| match &job.skill {
                        SkillChoice::Base => Some(None),
                        SkillChoice::Named(name) => weights.slot(name).map(Some),
                        SkillChoice::Auto => None,
                    })
                    .collect();
                let batch = match self.rows.first() {
                    Some(row) => Some(row.slot),
                    None => models.iter().flatten().next().copied(),
                };
                let others_wait =
                    !self.rows.is_empty() && models.iter().flatten().any(|m| Some(*m) != batch);
                let mut left = room;
                models
                    .iter()
                    .map(|m| {
                        let ok = left > 0
                            && match m {
                                None => true,
                                Some(m) => Some(*m) == batch && !others_wait,
                            };
                        left -= usize::from(ok);
                        ok
                    })
                    .collect()
            }
        };
        let mut taken = Vec::new();
        let mut kept = VecDeque::with_capacity(self.pending.len());
        for (job, take) in self.pending.drain(..).zip(take) {
            if take {
                taken.push(job);
            } else {
                kept.push_back(job);
            }
        }
        self.pending = kept;
        taken
    }

    fn administer(&mut self, command: Admin) {
        let skills = match &mut self.backbone.weights {
            Weights::Shared { skills, .. } => skills,
            Weights::Separate(_) => {
                let refuse = || {
                    ApiError::Unsupported(
                        "the separate-models baseline serves a fixed set of models".into(),
                    )
                };
                match command {
                    Admin::Load(_, reply) => drop(reply.send(Err(refuse()))),
                    Admin::Unload(_, reply) => drop(reply.send(Err(refuse()))),
                }
                return;
            }
        };
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

    /// Takes `job` out of the queue for the next pass: looks up (or routes) its skill and
    /// sets up its sampler; a job that cannot run is told why and dropped.
    fn prepare(&mut self, job: Job) -> Option<Arrival> {
        self.stats.waiting.fetch_sub(1, Ordering::SeqCst);
        if job.events.is_closed() {
            self.stats.cancelled.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        self.stats.admitted.fetch_add(1, Ordering::Relaxed);
        // The skill is looked up now: it may have been unloaded while the request waited.
        let prepared = self.slot_of(&job).and_then(|slot| {
            Sampler::new(job.sampling)
                .map(|sampler| (slot, sampler))
                .map_err(|e| ApiError::Internal(e.to_string()))
        });
        match prepared {
            Ok((slot, sampler)) => Some(Arrival { job, slot, sampler }),
            Err(e) => {
                self.stats.failed.fetch_add(1, Ordering::Relaxed);
                let _ = job.events.send(Event::Failed(e));
                None
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
        let slot = self.backbone.weights.slot(&name);
        slot.map(Some).ok_or(ApiError::UnknownModel(name))
    }

    /// The router's skill for a prompt: its features are the backbone's last hidden states
    /// (before the final norm) averaged over the prompt's tokens, as the router was trained.
    fn route(&self, prompt: &[u32]) -> Result<String, ApiError> {
        let no_router =
            || ApiError::Unsupported("this server has no router: name a skill or base".into());
        let router = self.backbone.router.as_ref().ok_or_else(no_router)?;
        let Weights::Shared { model, .. } = &self.backbone.weights else {
            return Err(no_router());
        };
        let features = token_features(model, prompt)
            .map_err(|e| ApiError::Internal(format!("routing: {e}")))?;
        let k = router
            .route(&features)
            .map_err(|e| ApiError::Internal(format!("routing: {e}")))?;
        Ok(router.skills()[k].clone())
    }

    /// One forward pass: a decode step for every running request and the prompts of the
    /// requests arriving now, each its own part ([`Llama::forward_parts`]): every weight is
    /// read once for all of them. Arrivals get their first token and join the batch.
    fn step(&mut self, arrivals: Vec<Arrival>) {
        // Requests whose client has gone leave before the pass.
        let before = self.rows.len();
        let keep: Vec<usize> = (0..before)
            .filter(|&i| !self.rows[i].job.events.is_closed())
            .collect();
        if keep.len() < before {
            self.retain(&keep);
            self.stats
                .cancelled
                .fetch_add((before - keep.len()) as u64, Ordering::Relaxed);
        }
        if self.rows.is_empty() && arrivals.is_empty() {
            return;
        }
        let decoding = !self.rows.is_empty();
        let mut input_rows: Vec<Option<usize>> = self.rows.iter().map(|r| r.slot).collect();
        for a in &arrivals {
            input_rows.extend(std::iter::repeat_n(a.slot, a.job.prompt.len()));
        }
        let mut caches: Vec<KvCache> = arrivals.iter().map(|_| KvCache::new()).collect();
        let logits = (|| -> skillzip_lm::Result<Vec<Vec<Vec<f32>>>> {
            let next: Vec<u32> = self.rows.iter().map(|r| r.next).collect();
            let decode_ids = Tensor::from_vec(next, (self.rows.len(), 1), &Device::Cpu)?;
            let prompt_ids: Vec<Tensor> = arrivals
                .iter()
                .map(|a| {
                    let p = &a.job.prompt;
                    Tensor::from_vec(p.clone(), (1, p.len()), &Device::Cpu)
                })
                .collect::<candle_core::Result<_>>()?;
            let mut parts = Vec::with_capacity(arrivals.len() + 1);
            if decoding {
                parts.push(Part {
                    ids: &decode_ids,
                    cache: &mut self.cache,
                });
            }
            for (ids, cache) in prompt_ids.iter().zip(caches.iter_mut()) {
                parts.push(Part { ids, cache });
            }
            let count = parts.len();
            let logits = forward(
                &mut self.backbone.weights,
                &self.stats,
                &mut parts,
                &input_rows,
            )?;
            if logits.len() != count {
                return Err(skillzip_lm::Error::InvalidInput(format!(
                    "{} logits for {count} parts",
                    logits.len()
                )));
            }
            logits.iter().map(|l| Ok(l.to_vec2()?)).collect()
        })();
        if decoding {
            self.stats.decode_steps.fetch_add(1, Ordering::Relaxed);
        }
        let mut logits = match logits {
            Ok(l) => l.into_iter(),
            Err(e) => {
                let message = e.to_string();
                self.fail_batch(&message);
                for a in arrivals {
                    self.stats.failed.fetch_add(1, Ordering::Relaxed);
                    let _ = a
                        .job
                        .events
                        .send(Event::Failed(ApiError::Internal(message.clone())));
                }
                return;
            }
        };
        if decoding {
            let decoded = logits.next().unwrap_or_default();
            let mut rows = std::mem::take(&mut self.rows);
            let mut keep = Vec::with_capacity(rows.len());
            for (i, (row, logits)) in rows.iter_mut().zip(&decoded).enumerate() {
                if self.accept(row, logits) {
                    keep.push(i);
                }
            }
            self.rows = rows;
            if keep.len() < self.rows.len() {
                self.retain(&keep);
            }
        }
        for ((arrival, cache), logits) in arrivals.into_iter().zip(caches).zip(logits) {
            self.stats
                .prompt_tokens
                .fetch_add(arrival.job.prompt.len() as u64, Ordering::Relaxed);
            let mut row = Row {
                job: arrival.job,
                slot: arrival.slot,
                sampler: arrival.sampler,
                generated: Vec::new(),
                sent: 0,
                next: 0,
            };
            let first = logits.first().map(Vec::as_slice).unwrap_or_default();
            if self.accept(&mut row, first) {
                // With no rows running, the cache is an empty continuous one (`retain` and
                // `fail_batch` reset it), so the first row simply joins it.
                match self.cache.join(cache) {
                    Ok(()) => self.rows.push(row),
                    Err(e) => self.fail_row(row, &e.to_string()),
                }
            }
        }
        self.stats.running.store(self.rows.len(), Ordering::Relaxed);
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
        let max_positions = self.backbone.config().max_position_embeddings;
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

/// One forward pass of `parts`, input row `r` (every token of every part's rows, in order)
/// through skill `input_rows[r]`; each part's last-position logits.
fn forward(
    weights: &mut Weights,
    stats: &Stats,
    parts: &mut [Part<'_>],
    input_rows: &[Option<usize>],
) -> skillzip_lm::Result<Vec<Tensor>> {
    match weights {
        Weights::Shared { model, skills } => {
            skills.assign_input_rows(input_rows)?;
            model.forward_parts(parts, skills)
        }
        Weights::Separate(store) => {
            let slot = input_rows.first().copied().flatten();
            if input_rows.iter().any(|s| *s != slot) {
                return Err(skillzip_lm::Error::InvalidInput(
                    "a batch of separate models mixes skills".into(),
                ));
            }
            let (model, reload) = store
                .activate(slot)
                .map_err(|e| skillzip_lm::Error::InvalidInput(e.to_string()))?;
            if let Some(reload) = reload {
                stats.reloads.fetch_add(1, Ordering::Relaxed);
                stats
                    .reload_ms
                    .fetch_add(reload.took.as_millis() as u64, Ordering::Relaxed);
            }
            model.forward_parts(parts, &mut NoHook)
        }
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
