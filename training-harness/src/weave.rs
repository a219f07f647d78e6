//! `weave`: SkillWeave end to end on one base model.
//!
//! For each skill: held-out evaluation of the base model; online rounds of self-generation →
//! verification → LN-DPO; the fine-tuned checkpoint (its delta is the skill's). Then every
//! skill is calibrated on the base model, all deltas are compressed with SkillZip (a shared
//! component merged into the backbone, the rest into one skillpack per skill) once per
//! requested method, and every configuration is evaluated on the held-out tasks:
//!
//! ```text
//! run/
//!   config.json                 the settings of the run
//!   base.json                   the base model's fingerprint
//!   <skill>/train/              trainer checkpoints (resumable), rounds' samples (JSON)
//!   <skill>/model/              the fine-tuned checkpoint (f32 safetensors)
//!   <skill>.calib               calibration statistics
//!   bundle-<method>/            manifest, backbone delta, skillpacks (and the router)
//!   baseline-<name>/<skill>.json  a baseline's storage and per-layer errors
//!   router.json, router-report.json  the learned router and its held-out accuracy
//!   eval/<config>/<skill>.json  accuracy and every answer with its verdict
//!   results.md, results.json    the tables
//! ```
//!
//! The configurations are `base`, `target` (the fine-tune itself), every [`Method`] (SkillZip
//! at some grids, its ablations, the baselines) and, with several skills, the first SkillZip
//! method behind the learned router (`<method>+router`) instead of the oracle choice.
//!
//! Every stage's output is written atomically and reused when present, and training resumes
//! from its last checkpoint, so a killed run continues where it stopped. A run directory
//! remembers its settings and its base model: continuing it with different settings or
//! another base model is refused ([`Error::RunMismatch`]), since its artifacts would silently
//! belong to others. (What it cannot pin is the code: tasks, prompts and verifiers of another
//! version of this crate are not detected; use a fresh directory after upgrading.)

use std::path::{Path, PathBuf};
use std::time::Instant;

use rand::seq::SliceRandom;
use skillzip_core::compress::{BitConfig, CompressConfig};
use skillzip_core::merge::{MergeConfig, MergeMethod, ModelParams};
use skillzip_format::bundle::Bundle;
use skillzip_lm::baseline::{Baseline, BaselineReport, approximate_skill};
use skillzip_lm::calibrate::{CalibrationFile, CalibrationOptions, calibrate};
use skillzip_lm::checkpoint::{Checkpoint, TensorRole, tensor_specs};
use skillzip_lm::compress::{ModelCompressOptions, RankPolicy, SkillSource, compress_model};
use skillzip_lm::generate::Sampling;
use skillzip_lm::model::{LinearHook, Llama, NoHook};
use skillzip_lm::save::{SaveOptions, save_checkpoint};
use skillzip_lm::skillpack::{bundle_model, load_params, model_from_params};
use skillzip_lm::tokenizer::{Message, Tokenizer};
use skillzip_tasks::task::generate;
use skillzip_tasks::{Domain, Sandbox, SandboxLimits, Split, Task};

use crate::error::{Error, Result};
use crate::eval::{Accuracy, Paired, accuracy_of};
use crate::router::{Router, RouterConfig, prompt_features, routing_accuracy};
use crate::selfgen::{Generated, SelfGenConfig, answer_tasks, preference_pairs};
use crate::train::{DpoTrainer, StepReport, TrainConfig};

/// One skill to weave.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SkillSpec {
    /// The skill's name (used in file names and the table).
    pub name: String,
    /// The task family.
    pub domain: Domain,
    /// Difficulty level of the generated tasks.
    pub level: u8,
    /// The user's own tasks (JSONL) instead of generated ones: every fifth is held out.
    pub tasks_file: Option<PathBuf>,
}

/// Everything a run does.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct WeaveConfig {
    /// The skills.
    pub skills: Vec<SkillSpec>,
    /// Training prompts per skill (shared out over the rounds).
    pub train_prompts: usize,
    /// Held-out prompts per skill.
    pub heldout_prompts: usize,
    /// Sampling for self-generation.
    pub selfgen: SelfGenConfig,
    /// Online rounds (each regenerates with the current policy on fresh prompts).
    pub rounds: usize,
    /// Optimizer steps per round.
    pub steps_per_round: usize,
    /// Preference pairs per step.
    pub pairs_per_step: usize,
    /// Objective, optimizer and schedule (`total_steps` is set to `rounds·steps_per_round`).
    pub train: TrainConfig,
    /// Prompts per batch in evaluation.
    pub eval_batch: usize,
    /// Methods to store the deltas with ([`Method::parse`]): SkillZip grids (`X8A8B8`,
    /// `X4A4B4`, …), ablations (`X8A8B8-nomerge`, `-nosmooth`, `-norotate`) and baselines
    /// (`bitdelta`, `svd16`, `asvd`, `deltacome`).
    pub methods: Vec<String>,
    /// Rank of every skillpack layer.
    pub rank: usize,
    /// Shared-component merge (`ties`, `task_arithmetic`, …), or none; ignored with one
    /// skill, where the whole delta would count as shared.
    pub merge: Option<String>,
    /// Calibration prompts per skill (from its training tasks).
    pub calibration_prompts: usize,
    /// Seed of every random choice of the run.
    pub seed: u64,
    /// Train the learned router and evaluate routed skillpacks (needs two skills or more).
    #[serde(default = "yes")]
    pub router: bool,
}

fn yes() -> bool {
    true
}

/// One way of storing the skills' deltas that a run evaluates.
#[derive(Debug, Clone, PartialEq)]
pub enum Method {
    /// SkillZip at these grids, with the paper's ablation switches (all on: the method).
    SkillZip {
        /// Activation and factor grids.
        bits: BitConfig,
        /// Shared component merged into the backbone (with several skills).
        merge: bool,
        /// Channel-wise smoothing.
        smooth: bool,
        /// Rotation before quantization.
        rotate: bool,
    },
    /// A baseline applied to each skill's whole delta, at the run's rank where it has one.
    Baseline(Baseline),
}

impl Method {
    /// Parses a method label: a grid (`X8A8B8`, `X8A4B4`, `X4A4B8`, `X4A4B4`) followed by any
    /// of `-nomerge`, `-nosmooth`, `-norotate`; or a baseline (`bitdelta`, `svd16`, `asvd`,
    /// `deltacome`).
    pub fn parse(label: &str, rank: usize) -> Result<Self> {
        if let Some(b) = Baseline::from_label(label, rank) {
            return Ok(Self::Baseline(b));
        }
        let mut parts = label.split('-');
        let bits = parts.next().and_then(BitConfig::from_label);
        let (mut merge, mut smooth, mut rotate) = (true, true, true);
        let mut ok = bits.is_some();
        for part in parts {
            match part.to_ascii_lowercase().as_str() {
                "nomerge" if merge => merge = false,
                "nosmooth" if smooth => smooth = false,
                "norotate" if rotate => rotate = false,
                _ => ok = false,
            }
        }
        match bits {
            Some(bits) if ok => Ok(Self::SkillZip {
                bits,
                merge,
                smooth,
                rotate,
            }),
            _ => Err(Error::InvalidInput(format!(
                "method {label:?}: expected a grid (X8A8B8, X8A4B4, X4A4B8, X4A4B4) with \
                 optional -nomerge, -nosmooth, -norotate, or a baseline ({})",
                Baseline::LABELS.join(", ")
            ))),
        }
    }

    fn is_skillzip(&self) -> bool {
        matches!(self, Self::SkillZip { .. })
    }
}

/// The training recipe of both presets: LN-DPO (β = 2, γ = 1) plus the helpful response's
/// length-normalised NLL at weight 1, AdamW from 5e-5 down to 5e-6 after `warmup_steps`.
/// On SmolLM2-135M, LN-DPO alone made every skill worse after 10 steps (the margin grew by
/// pushing both responses down: arithmetic and answer format degraded), and the NLL term
/// turned that into gains; BENCHMARKS.md §8 has the runs.
fn preset_training(warmup_steps: usize) -> TrainConfig {
    let mut train = TrainConfig::default();
    train.objective.nll = 1.0;
    train.schedule.peak_lr = 5e-5;
    train.schedule.min_lr = 5e-6;
    train.schedule.warmup_steps = warmup_steps;
    train
}

/// Self-generation sampling of both presets: temperature 0.6 (top-p 0.95, top-k 50). At 0.8
/// the 135M model's samples fall well below its greedy accuracy (code 23 % sampled against
/// 38 % greedy), so pairs taught it about a tail that greedy decoding never visits; at 0.6 the
/// pairs sit closer to what it answers when evaluated.
fn preset_sampling() -> SelfGenConfig {
    SelfGenConfig {
        temperature: 0.6,
        ..SelfGenConfig::default()
    }
}

fn skill(name: &str, domain: Domain, level: u8) -> SkillSpec {
    SkillSpec {
        name: name.into(),
        domain,
        level,
        tasks_file: None,
    }
}

impl WeaveConfig {
    /// The `--quick` preset: two skills (multiple choice, one-step math) and small sets,
    /// sized for about 15 minutes on two CPU cores with SmolLM2-135M. Its intervals are wide;
    /// it shows the pipeline, not the paper's numbers.
    pub fn quick() -> Self {
        Self {
            skills: vec![
                skill("mc", Domain::Choice, 2),
                skill("math", Domain::Math, 1),
            ],
            train_prompts: 32,
            heldout_prompts: 48,
            selfgen: SelfGenConfig {
                samples_per_prompt: 4,
                prompts_per_batch: 16,
                ..preset_sampling()
            },
            rounds: 1,
            steps_per_round: 10,
            pairs_per_step: 4,
            train: preset_training(1),
            eval_batch: 48,
            methods: vec!["X8A8B8".into()],
            rank: 16,
            merge: Some("ties".into()),
            calibration_prompts: 16,
            seed: 0,
            router: true,
        }
    }

    /// The full preset: every built-in skill, 100 held-out tasks each, two online rounds,
    /// SkillZip X8A8B8 and X4A4B4, the three ablations and the four baselines (BitDelta,
    /// SVD-16, ASVD, Delta-CoMe-style).
    pub fn full() -> Self {
        Self {
            skills: vec![
                skill("math", Domain::Math, 1),
                skill("ifeval", Domain::Instructions, 2),
                skill("mc", Domain::Choice, 2),
                skill("code", Domain::Code, 2),
            ],
            train_prompts: 96,
            heldout_prompts: 100,
            selfgen: SelfGenConfig {
                samples_per_prompt: 4,
                prompts_per_batch: 16,
                max_pairs_per_prompt: 2,
                ..preset_sampling()
            },
            rounds: 2,
            steps_per_round: 10,
            pairs_per_step: 4,
            train: preset_training(2),
            eval_batch: 50,
            methods: [
                "X8A8B8",
                "X4A4B4",
                "X8A8B8-nomerge",
                "X8A8B8-nosmooth",
                "X8A8B8-norotate",
                "bitdelta",
                "svd16",
                "asvd",
                "deltacome",
            ]
            .map(String::from)
            .to_vec(),
            rank: 32,
            merge: Some("ties".into()),
            calibration_prompts: 32,
            seed: 0,
            router: true,
        }
    }

    fn validate(&self) -> Result<()> {
        let bad = |what: String| Err(Error::InvalidInput(what));
        if self.skills.is_empty() {
            return bad("no skills to weave".into());
        }
        let mut names = std::collections::BTreeSet::new();
        for s in &self.skills {
            let ok_name = !s.name.is_empty()
                && s.name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
                && !s.name.starts_with('.');
            if !ok_name || !names.insert(&s.name) {
                return bad(format!(
                    "skill name {:?} must be unique and use letters, digits, - _ .",
                    s.name
                ));
            }
        }
        if self.rounds == 0 || self.steps_per_round == 0 || self.pairs_per_step == 0 {
            return bad("rounds, steps per round and pairs per step must be positive".into());
        }
        if self.train_prompts < self.rounds || self.heldout_prompts == 0 {
            return bad("each round needs training prompts, and evaluation held-out ones".into());
        }
        if self.selfgen.max_pairs_per_prompt == 0 {
            return bad("at most 0 pairs per prompt would train nothing".into());
        }
        if !self.methods.is_empty() && self.calibration_prompts == 0 {
            return bad("compressing needs calibration prompts".into());
        }
        let mut seen = std::collections::BTreeSet::new();
        for m in &self.methods {
            Method::parse(m, self.rank)?;
            if !seen.insert(m) {
                return bad(format!("method {m} is listed twice"));
            }
        }
        if self.rank == 0 {
            return bad("the rank must be positive".into());
        }
        let o = self.train.objective;
        let finite_objective = o.beta.is_finite() && o.beta > 0.0 && o.gamma.is_finite();
        if !(finite_objective && o.nll.is_finite() && o.nll >= 0.0) {
            return bad(format!(
                "LN-DPO needs a finite β > 0, a finite γ and a finite likelihood weight ≥ 0 \
                 (got β {}, γ {}, weight {})",
                o.beta, o.gamma, o.nll
            ));
        }
        let g = self.selfgen;
        if !(g.temperature.is_finite() && g.temperature > 0.0 && g.top_p > 0.0 && g.top_p <= 1.0) {
            return bad(format!(
                "self-generation needs a finite temperature > 0 and top-p in (0, 1] (got {}, {})",
                g.temperature, g.top_p
            ));
        }
        if g.samples_per_prompt < 2 {
            return bad(
                "self-generation needs two samples per prompt or more to form pairs".into(),
            );
        }
        let lr = self.train.schedule;
        if !(lr.peak_lr.is_finite()
            && lr.peak_lr > 0.0
            && lr.min_lr.is_finite()
            && lr.min_lr >= 0.0
            && lr.min_lr <= lr.peak_lr)
        {
            return bad(format!(
                "the learning rate must be finite and positive, and decay (got {} → {})",
                lr.peak_lr, lr.min_lr
            ));
        }
        if let Some(m) = &self.merge {
            merge_method(m)?;
        }
        Ok(())
    }
}

fn merge_method(name: &str) -> Result<MergeMethod> {
    MergeMethod::ALL
        .into_iter()
        .find(|m| m.name() == name)
        .ok_or_else(|| {
            let names: Vec<&str> = MergeMethod::ALL.iter().map(|m| m.name()).collect();
            Error::InvalidInput(format!(
                "merge method {name}: expected one of {}",
                names.join(", ")
            ))
        })
}

/// What the pipeline reports as it goes.
#[derive(Debug, Clone)]
pub enum Event {
    /// A stage begins (`what` names it).
    Stage(String),
    /// Progress within the stage.
    Progress {
        /// Units done.
        done: usize,
        /// Units in all.
        total: usize,
    },
    /// A training step finished.
    Step(StepReport),
    /// A line worth showing (a stage reused from an earlier run, a round without pairs, …).
    Note(String),
}

/// One cell of the table: a configuration on a skill's held-out tasks.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Cell {
    /// `base`, `target` or a method's name.
    pub config: String,
    /// The skill.
    pub skill: String,
    /// Held-out accuracy.
    pub accuracy: Accuracy,
    /// The verdict on each held-out task, in task order (what paired comparisons between
    /// configurations count).
    #[serde(default)]
    pub outcomes: Vec<bool>,
}

/// What one configuration stores for one skill.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Storage {
    /// A method's label.
    pub config: String,
    /// The skill.
    pub skill: String,
    /// Bytes of the skill's own part (its skillpack file, or the baseline's factors, codes,
    /// scales and dense deltas); a backbone delta shared by all skills is not included.
    pub bytes: u64,
}

/// The learned router's held-out accuracy.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RouterSummary {
    /// Training prompts (all skills).
    pub train_prompts: usize,
    /// Held-out prompts routed to their own skill, per skill in run order.
    pub per_skill: Vec<Accuracy>,
    /// All held-out prompts.
    pub overall: Accuracy,
    /// `confusion[true][routed]` counts.
    pub confusion: Vec<Vec<usize>>,
    /// The skill each held-out task was routed to, per skill in run order.
    pub routes: Vec<Vec<usize>>,
}

impl RouterSummary {
    /// Whether this summary has the shape of a run with these skills' tasks: a per-skill
    /// accuracy, a `k × k` confusion matrix and one route below `k` per held-out task. A
    /// reused `router-report.json` that does not fit is computed again, not indexed.
    fn fits(&self, tasks: &[(Vec<Task>, Vec<Task>)]) -> bool {
        let k = tasks.len();
        self.per_skill.len() == k
            && self.confusion.len() == k
            && self.confusion.iter().all(|row| row.len() == k)
            && self.routes.len() == k
            && self
                .routes
                .iter()
                .zip(tasks)
                .all(|(r, (_, held))| r.len() == held.len() && r.iter().all(|&to| to < k))
    }
}

/// The run's results.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct WeaveReport {
    /// Every evaluated (configuration, skill).
    pub cells: Vec<Cell>,
    /// Storage per method and skill.
    #[serde(default)]
    pub storage: Vec<Storage>,
    /// Bytes of the backbone delta of each SkillZip bundle that has one (config, bytes).
    #[serde(default)]
    pub backbone_delta: Vec<(String, u64)>,
    /// Parameters of the linear layers (what a skill's delta covers).
    #[serde(default)]
    pub linear_params: u64,
    /// The learned router, when the run has one.
    #[serde(default)]
    pub router: Option<RouterSummary>,
    /// Wall seconds per stage, in order.
    pub seconds: Vec<(String, f64)>,
    /// Peak resident memory of the process (MiB), where the OS reports it.
    pub peak_rss_mib: Option<f64>,
}

/// Peak resident memory of this process so far (Linux `VmHWM`), in MiB.
pub fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// A skill's training and held-out tasks.
fn skill_tasks(spec: &SkillSpec, cfg: &WeaveConfig) -> Result<(Vec<Task>, Vec<Task>)> {
    match &spec.tasks_file {
        Some(path) => {
            let all = skillzip_tasks::jsonl::read_jsonl(path, spec.domain)
                .map_err(|e| Error::InvalidInput(format!("{}: {e}", path.display())))?;
            let (mut train, mut held) = (Vec::new(), Vec::new());
            for (i, t) in all.into_iter().enumerate() {
                if i % 5 == 4 { &mut held } else { &mut train }.push(t);
            }
            train.truncate(cfg.train_prompts);
            held.truncate(cfg.heldout_prompts);
            if held.is_empty() || train.len() < cfg.rounds {
                return Err(Error::InvalidInput(format!(
                    "{}: {} training and {} held-out tasks (every fifth is held out); {} \
                     needs at least one held-out task and one training task per round ({})",
                    path.display(),
                    train.len(),
                    held.len(),
                    spec.name,
                    cfg.rounds
                )));
            }
            Ok((train, held))
        }
        None => Ok((
            generate(
                spec.domain,
                spec.level,
                Split::Train,
                cfg.train_prompts,
                cfg.seed,
            ),
            generate(
                spec.domain,
                spec.level,
                Split::HeldOut,
                cfg.heldout_prompts,
                cfg.seed,
            ),
        )),
    }
}

fn write_json(path: &Path, value: &impl serde::Serialize) -> Result<()> {
    let bytes = serde_json::to_vec_pretty(value)
        .map_err(|e| Error::InvalidInput(format!("{}: {e}", path.display())))?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    skillzip_format::write_atomic_bytes(path, &bytes)?;
    Ok(())
}

/// One answer as stored in the run directory (`eval/<config>/<skill>.json`).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct AnswerRecord {
    /// The task's id.
    pub id: String,
    /// The task's prompt (before the chat template).
    pub prompt: String,
    /// The model's answer.
    pub answer: String,
    /// The verifier's verdict.
    pub helpful: bool,
    /// Why the verifier decided so.
    pub reason: String,
    /// Whether the model ended the answer itself (false: the token budget cut it off).
    #[serde(default)]
    pub finished: bool,
}

/// One configuration's held-out evaluation on one skill, as stored in the run directory.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct EvalRecord {
    /// Accuracy over the tasks.
    pub accuracy: Accuracy,
    /// Every answer, in task order.
    pub answers: Vec<AnswerRecord>,
}

fn records(generated: &[Generated]) -> Vec<AnswerRecord> {
    generated
        .iter()
        .flat_map(|g| {
            g.samples.iter().map(|s| AnswerRecord {
                id: g.task.id.clone(),
                prompt: g.task.prompt.clone(),
                answer: s.text.clone(),
                helpful: s.verdict.helpful,
                reason: s.verdict.reason.clone(),
                finished: s.finished,
            })
        })
        .collect()
}

/// A model to evaluate and the hook that adds its skillpack, if any.
type ModelWithHook = (Llama, Option<Box<dyn LinearHook>>);

struct Context<'a> {
    run: &'a Path,
    cfg: &'a WeaveConfig,
    tok: &'a Tokenizer,
    sandbox: Option<&'a Sandbox>,
}

impl Context<'_> {
    fn eval_path(&self, config: &str, skill: &str) -> PathBuf {
        self.run
            .join("eval")
            .join(config)
            .join(format!("{skill}.json"))
    }

    /// An evaluation already on disk.
    fn measured(&self, config: &str, skill: &str) -> Option<EvalRecord> {
        let bytes = std::fs::read(self.eval_path(config, skill)).ok()?;
        serde_json::from_slice::<EvalRecord>(&bytes).ok()
    }

    /// Greedy answers of a model (and hook) to `tasks`, judged.
    fn answer(
        &self,
        (model, mut hook): ModelWithHook,
        tasks: &[Task],
        on: &mut dyn FnMut(Event),
    ) -> Result<Vec<Generated>> {
        let mut no_hook = NoHook;
        let hook: &mut dyn LinearHook = match hook.as_deref_mut() {
            Some(h) => h,
            None => &mut no_hook,
        };
        answer_tasks(
            &model,
            self.tok,
            tasks,
            1,
            Sampling::Greedy,
            self.cfg.eval_batch,
            self.sandbox,
            hook,
            &mut |done, total| on(Event::Progress { done, total }),
        )
    }

    fn save(&self, config: &str, skill: &str, answers: Vec<AnswerRecord>) -> Result<Cell> {
        let accuracy = Accuracy {
            correct: answers.iter().filter(|a| a.helpful).count(),
            total: answers.len(),
        };
        let outcomes = answers.iter().map(|a| a.helpful).collect();
        write_json(
            &self.eval_path(config, skill),
            &EvalRecord { accuracy, answers },
        )?;
        Ok(Cell {
            config: config.into(),
            skill: skill.into(),
            accuracy,
            outcomes,
        })
    }

    fn reused(&self, config: &str, skill: &str, on: &mut dyn FnMut(Event)) -> Option<Cell> {
        let done = self.measured(config, skill)?;
        on(Event::Note(format!(
            "{config} on {skill}: reused {}",
            self.eval_path(config, skill).display()
        )));
        // Counted again from the answers: the stored summary is not trusted.
        let outcomes: Vec<bool> = done.answers.iter().map(|a| a.helpful).collect();
        Some(Cell {
            config: config.into(),
            skill: skill.into(),
            accuracy: Accuracy {
                correct: outcomes.iter().filter(|&&h| h).count(),
                total: outcomes.len(),
            },
            outcomes,
        })
    }

    /// Held-out accuracy of one configuration on one skill, reused when already measured.
    fn evaluate(
        &self,
        config: &str,
        skill: &str,
        tasks: &[Task],
        model: &dyn Fn() -> Result<ModelWithHook>,
        on: &mut dyn FnMut(Event),
    ) -> Result<Cell> {
        if let Some(cell) = self.reused(config, skill, on) {
            return Ok(cell);
        }
        on(Event::Stage(format!("evaluate {config} on {skill}")));
        let generated = self.answer(model()?, tasks, on)?;
        self.save(config, skill, records(&generated))
    }
}

/// Trains one skill (resuming from its checkpoints) and writes its fine-tuned model.
fn train_skill(
    ctx: &Context<'_>,
    base: &Checkpoint,
    spec: &SkillSpec,
    train_tasks: &[Task],
    on: &mut dyn FnMut(Event),
) -> Result<PathBuf> {
    let cfg = ctx.cfg;
    let dir = ctx.run.join(&spec.name);
    let model_dir = dir.join("model");
    if model_dir.join("config.json").exists() {
        on(Event::Note(format!(
            "{}: reused {}",
            spec.name,
            model_dir.display()
        )));
        return Ok(model_dir);
    }
    let config = base.config().clone();
    let ckpt_dir = dir.join("train");
    let mut train = cfg.train;
    train.schedule.total_steps = cfg.rounds * cfg.steps_per_round;
    let (mut trainer, mut next_round) =
        match DpoTrainer::resume(&config, load_params(base)?, &ckpt_dir)? {
            Some((t, extra)) => {
                let round = extra
                    .get("next_round")
                    .and_then(|v| v.as_u64())
                    .unwrap_or(0);
                on(Event::Note(format!(
                    "{}: resumed after {} steps, at round {round}",
                    spec.name,
                    t.steps()
                )));
                (t, round as usize)
            }
            None => (DpoTrainer::new(&config, load_params(base)?, train)?, 0),
        };
    let per_round = train_tasks.len() / cfg.rounds;
    while next_round < cfg.rounds {
        let round = next_round;
        let prompts = &train_tasks[round * per_round..(round + 1) * per_round];
        on(Event::Stage(format!(
            "{}: round {}/{}: self-generate {} × {}",
            spec.name,
            round + 1,
            cfg.rounds,
            prompts.len(),
            cfg.selfgen.samples_per_prompt
        )));
        let seed = cfg.selfgen.seed ^ cfg.seed.wrapping_mul(0x9e37_79b9) ^ (round as u64) << 32;
        let generated = answer_tasks(
            trainer.model(),
            ctx.tok,
            prompts,
            cfg.selfgen.samples_per_prompt,
            Sampling::Sample {
                temperature: cfg.selfgen.temperature,
                top_k: cfg.selfgen.top_k,
                top_p: cfg.selfgen.top_p,
                seed,
            },
            cfg.selfgen.prompts_per_batch,
            ctx.sandbox,
            &mut NoHook,
            &mut |done, total| on(Event::Progress { done, total }),
        )?;
        let sampled = accuracy_of(&generated);
        write_json(
            &dir.join(format!("train/samples-round{round}.json")),
            &records(&generated),
        )?;
        let mut pairs = preference_pairs(&generated, cfg.selfgen.max_pairs_per_prompt);
        on(Event::Note(format!(
            "{}: round {}: {} helpful samples, {} preference pairs",
            spec.name,
            round + 1,
            sampled,
            pairs.len()
        )));
        if pairs.is_empty() {
            on(Event::Note(format!(
                "{}: round {} has no pair (every prompt all helpful or all harmful); no step",
                spec.name,
                round + 1
            )));
        } else {
            pairs.shuffle(&mut skillzip_core::seeded_rng(seed));
            on(Event::Stage(format!(
                "{}: round {}/{}: LN-DPO, {} steps",
                spec.name,
                round + 1,
                cfg.rounds,
                cfg.steps_per_round
            )));
            for step in 0..cfg.steps_per_round {
                let batch: Vec<_> = (0..cfg.pairs_per_step)
                    .map(|i| pairs[(step * cfg.pairs_per_step + i) % pairs.len()].clone())
                    .collect();
                on(Event::Step(trainer.step(&batch)?));
                on(Event::Progress {
                    done: step + 1,
                    total: cfg.steps_per_round,
                });
            }
        }
        next_round = round + 1;
        trainer.save_checkpoint(&ckpt_dir, serde_json::json!({ "next_round": next_round }))?;
    }
    let params = trainer.parameters();
    save_checkpoint(
        &model_dir,
        &config,
        SaveOptions::default(),
        &[("skillzip", "LN-DPO fine-tune")],
        |name, _| {
            params
                .get(name)
                .cloned()
                .ok_or_else(|| skillzip_lm::Error::InvalidInput(format!("no tensor {name}")))
        },
    )?;
    Ok(model_dir)
}

/// A task rendered for calibration: the prompt and, where the task has one, its reference
/// answer, so that the statistics see answer tokens too.
fn calibration_ids(tok: &Tokenizer, task: &Task) -> Result<Vec<u32>> {
    let template = tok
        .chat_template()
        .ok_or_else(|| Error::InvalidInput("the model has no chat template".into()))?;
    let mut messages = vec![Message::user(task.prompt.clone())];
    let with_answer = task.reference_response();
    if let Some(answer) = &with_answer {
        messages.push(Message::assistant(answer.clone()));
    }
    Ok(tok.encode(&template.render(&messages, with_answer.is_none()))?)
}

/// A skill's calibration statistics on the base model, computed once and reused.
fn calibrate_skill(
    ctx: &Context<'_>,
    base: &Checkpoint,
    spec: &SkillSpec,
    train: &[Task],
    on: &mut dyn FnMut(Event),
) -> Result<CalibrationFile> {
    let path = ctx.run.join(format!("{}.calib", spec.name));
    if !path.exists() {
        on(Event::Stage(format!("{}: calibrate", spec.name)));
        let prompts = train
            .iter()
            .take(ctx.cfg.calibration_prompts)
            .map(|t| calibration_ids(ctx.tok, t))
            .collect::<Result<Vec<_>>>()?;
        let stats = calibrate(
            base,
            &spec.name,
            &prompts,
            CalibrationOptions {
                seed: ctx.cfg.seed,
                ..CalibrationOptions::default()
            },
            &mut |done, total| on(Event::Progress { done, total }),
        )?;
        stats.save(&path)?;
    }
    Ok(CalibrationFile::open(&path)?)
}

/// Refuses to continue a run directory whose `config.json` holds other settings. Only the
/// settings that add configurations or change batching (`methods`, `eval_batch`, `router`)
/// may change between invocations.
fn check_run_dir(run: &Path, cfg: &WeaveConfig) -> Result<()> {
    let path = run.join("config.json");
    let Ok(bytes) = std::fs::read(&path) else {
        return Ok(());
    };
    let old: WeaveConfig = serde_json::from_slice(&bytes)
        .map_err(|e| Error::corrupt(&path, format!("not a weave configuration: {e}")))?;
    // Both sides through the same text form, so floats compare as written and a setting
    // added since the directory was made compares at its default.
    let as_value = |c: &WeaveConfig| -> Result<serde_json::Value> {
        serde_json::to_vec(c)
            .and_then(|b| serde_json::from_slice(&b))
            .map_err(|e| Error::InvalidInput(format!("configuration: {e}")))
    };
    let (old, new) = (as_value(&old)?, as_value(cfg)?);
    const FREE: [&str; 3] = ["methods", "eval_batch", "router"];
    let (Some(old), Some(new)) = (old.as_object(), new.as_object()) else {
        return Err(Error::corrupt(&path, "not a weave configuration"));
    };
    let fields: Vec<String> = old
        .keys()
        .chain(new.keys())
        .filter(|k| !FREE.contains(&k.as_str()))
        .filter(|k| old.get(*k) != new.get(*k))
        .cloned()
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    if fields.is_empty() {
        Ok(())
    } else {
        Err(Error::RunMismatch {
            dir: run.to_path_buf(),
            fields,
        })
    }
}

/// The base model's fingerprint: [`skillzip_format::digest::BackboneHasher`] over every
/// tensor of the checkpoint as f32, read one tensor at a time. Two checkpoints with the same
/// values have the same fingerprint, whatever their file format.
pub fn base_fingerprint(base: &Checkpoint) -> Result<String> {
    let mut hasher = skillzip_format::digest::BackboneHasher::new();
    for (name, shape, _) in tensor_specs(base.config()) {
        if !base.contains(&name) {
            continue;
        }
        let t = base.load_expected(&name, &shape)?;
        let bytes: Vec<u8> = t.data.iter().flat_map(|v| v.to_le_bytes()).collect();
        hasher.add(&name, "F32", &t.shape, &bytes)?;
    }
    Ok(hasher.finish())
}

/// The base model a run directory was made from (`base.json`).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct BaseRecord {
    /// Where it was read from (informative: the same model may move).
    pub source: String,
    /// [`base_fingerprint`].
    pub fingerprint: String,
}

/// Refuses to continue a run directory made from another base model: its fine-tunes,
/// evaluations, calibrations and bundles all belong to that model. A directory without a
/// record gets one.
fn check_base(run: &Path, base: &Checkpoint) -> Result<()> {
    let path = run.join("base.json");
    let fingerprint = base_fingerprint(base)?;
    if let Ok(bytes) = std::fs::read(&path) {
        let old: BaseRecord = serde_json::from_slice(&bytes)
            .map_err(|e| Error::corrupt(&path, format!("not a base-model record: {e}")))?;
        if old.fingerprint != fingerprint {
            return Err(Error::RunMismatch {
                dir: run.to_path_buf(),
                fields: vec![format!("base model: made from {}", old.source)],
            });
        }
        return Ok(());
    }
    write_json(
        &path,
        &BaseRecord {
            source: base.label().to_string(),
            fingerprint,
        },
    )
}

/// Trains the router on the base model's features of every skill's training prompts (reused
/// from `router.json`) and routes the held-out prompts (reused from `router-report.json`).
fn route(
    ctx: &Context<'_>,
    base: &Checkpoint,
    tasks: &[(Vec<Task>, Vec<Task>)],
    on: &mut dyn FnMut(Event),
) -> Result<RouterSummary> {
    let report_path = ctx.run.join("router-report.json");
    if let Ok(bytes) = std::fs::read(&report_path)
        && let Ok(summary) = serde_json::from_slice::<RouterSummary>(&bytes)
        && summary.fits(tasks)
    {
        on(Event::Note(format!(
            "router: reused {}",
            report_path.display()
        )));
        return Ok(summary);
    }
    let model = Llama::from_checkpoint(base)?;
    // Features and skill labels of every skill's training (or held-out) prompts.
    let features =
        |held_out: bool, on: &mut dyn FnMut(Event)| -> Result<(Vec<Vec<f32>>, Vec<usize>)> {
            let mut prompts = Vec::new();
            let mut labels = Vec::new();
            for (k, (train, held)) in tasks.iter().enumerate() {
                for task in if held_out { held } else { train } {
                    prompts.push(task.prompt.as_str());
                    labels.push(k);
                }
            }
            let f = prompt_features(&model, ctx.tok, &prompts, &mut |done, total| {
                on(Event::Progress { done, total })
            })?;
            Ok((f, labels))
        };
    let router_path = ctx.run.join("router.json");
    let (router, train_prompts) = match Router::load(&router_path) {
        Ok(r)
            if r.skills().iter().eq(ctx.cfg.skills.iter().map(|s| &s.name))
                && r.dim() == base.config().hidden_size =>
        {
            let n = tasks.iter().map(|t| t.0.len()).sum();
            (r, n)
        }
        _ => {
            on(Event::Stage(
                "router: features of the training prompts".into(),
            ));
            let (x, y) = features(false, on)?;
            let skills = ctx.cfg.skills.iter().map(|s| s.name.clone()).collect();
            let router = Router::train(
                &x,
                &y,
                skills,
                &RouterConfig {
                    seed: ctx.cfg.seed,
                    ..RouterConfig::default()
                },
            )?;
            router.save(&router_path)?;
            (router, x.len())
        }
    };
    on(Event::Stage("router: route the held-out prompts".into()));
    let (x, y) = features(true, on)?;
    let (_, confusion) = routing_accuracy(&router, &x, &y)?;
    let routed: Vec<usize> = x.iter().map(|f| router.route(f)).collect::<Result<_>>()?;
    let k = ctx.cfg.skills.len();
    let mut routes = vec![Vec::new(); k];
    for (label, r) in y.iter().zip(routed) {
        routes[*label].push(r);
    }
    let per_skill: Vec<Accuracy> = (0..k)
        .map(|s| Accuracy {
            correct: confusion[s][s],
            total: confusion[s].iter().sum(),
        })
        .collect();
    let overall = Accuracy {
        correct: per_skill.iter().map(|a| a.correct).sum(),
        total: per_skill.iter().map(|a| a.total).sum(),
    };
    let summary = RouterSummary {
        train_prompts,
        per_skill,
        overall,
        confusion,
        routes,
    };
    write_json(&report_path, &summary)?;
    Ok(summary)
}

/// Adds the run's router to a bundle (once), so whoever serves the bundle routes as measured.
fn attach_router(bundle_dir: &Path, router_path: &Path) -> Result<()> {
    let mut manifest = skillzip_format::bundle::read_manifest(bundle_dir)?;
    if manifest.router.is_some() {
        return Ok(());
    }
    let bytes = std::fs::read(router_path).map_err(|e| Error::io(router_path, e))?;
    skillzip_format::write_atomic_bytes(bundle_dir.join(ROUTER_FILE), &bytes)?;
    manifest.router = Some(skillzip_format::bundle::file_ref(bundle_dir, ROUTER_FILE)?);
    skillzip_format::bundle::write_manifest(bundle_dir, &manifest)?;
    Ok(())
}

/// The router's file name in the run directory and in bundles.
pub const ROUTER_FILE: &str = "router.json";

/// Compresses every skill with one SkillZip variant into `bundle-<label>/` (reused when its
/// manifest exists).
fn compress_bundle(
    ctx: &Context<'_>,
    base: &Checkpoint,
    tuned: &[Checkpoint],
    calibrations: &[CalibrationFile],
    label: &str,
    method: &Method,
    on: &mut dyn FnMut(Event),
) -> Result<PathBuf> {
    let cfg = ctx.cfg;
    let bundle_dir = ctx.run.join(format!("bundle-{label}"));
    let Method::SkillZip {
        bits,
        merge,
        smooth,
        rotate,
    } = method
    else {
        return Err(Error::InvalidInput(format!(
            "{label} is not a SkillZip method"
        )));
    };
    if bundle_dir.join("manifest.json").exists() {
        return Ok(bundle_dir);
    }
    on(Event::Stage(format!("compress {label}")));
    let mut layer = CompressConfig::skillzip(cfg.rank);
    layer.bits = *bits;
    layer.smooth = *smooth;
    layer.rotate = *rotate;
    layer.seed = cfg.seed;
    let mut opts = ModelCompressOptions::new(layer, RankPolicy::Fixed(cfg.rank));
    // With one skill every delta would be "shared": the backbone would absorb the whole
    // fine-tune and the skillpack would measure nothing.
    if let Some(m) = cfg
        .merge
        .as_ref()
        .filter(|_| *merge && cfg.skills.len() > 1)
    {
        let k = cfg.skills.len();
        let models = (0..k).map(|_| ModelParams::new(1.0 / k as f64)).collect();
        opts.merge = Some(MergeConfig::new(merge_method(m)?, models));
    }
    opts.merge_seed = cfg.seed;
    let skills: Vec<SkillSource<'_>> = cfg
        .skills
        .iter()
        .zip(tuned)
        .zip(calibrations)
        .map(|((s, ckpt), calibration)| SkillSource {
            name: &s.name,
            checkpoint: ckpt,
            calibration,
        })
        .collect();
    compress_model(base, &skills, &opts, &bundle_dir, &mut |ev| {
        if let skillzip_lm::compress::Event::Tensor { index, total, .. } = ev {
            on(Event::Progress {
                done: *index,
                total: *total,
            });
        }
    })?;
    Ok(bundle_dir)
}

/// Held-out accuracy with routed skillpacks: each task runs with the skillpack the router
/// picked. Tasks routed to their own skill keep the oracle evaluation's answer (the same
/// greedy decoding; a different batch could change it only through f32 rounding), the others
/// are answered again with the skillpack they were routed to.
#[allow(clippy::too_many_arguments)]
fn evaluate_routed(
    ctx: &Context<'_>,
    base: &Checkpoint,
    bundle: &Bundle,
    oracle: &str,
    k: usize,
    held: &[Task],
    routes: &[usize],
    on: &mut dyn FnMut(Event),
) -> Result<Cell> {
    let skills = &ctx.cfg.skills;
    let config = format!("{oracle}+router");
    let name = &skills[k].name;
    if let Some(cell) = ctx.reused(&config, name, on) {
        return Ok(cell);
    }
    let own = ctx
        .measured(oracle, name)
        .ok_or_else(|| Error::InvalidInput(format!("{oracle} on {name} has not been evaluated")))?;
    if own.answers.len() != held.len() || routes.len() != held.len() {
        return Err(Error::InvalidInput(format!(
            "{oracle} on {name}: {} answers and {} routes for {} held-out tasks",
            own.answers.len(),
            routes.len(),
            held.len()
        )));
    }
    let mut answers: Vec<Option<AnswerRecord>> = own
        .answers
        .into_iter()
        .zip(routes)
        .map(|(a, r)| (*r == k).then_some(a))
        .collect();
    for (other, spec) in skills.iter().enumerate().filter(|(o, _)| *o != k) {
        let idx: Vec<usize> = (0..held.len()).filter(|i| routes[*i] == other).collect();
        if idx.is_empty() {
            continue;
        }
        on(Event::Stage(format!(
            "evaluate {config} on {name}: {} tasks routed to {}",
            idx.len(),
            spec.name
        )));
        let tasks: Vec<Task> = idx.iter().map(|i| held[*i].clone()).collect();
        let (model, hook) = bundle_model(base, bundle, Some(&spec.name))?;
        let generated = ctx.answer(
            (model, hook.map(|h| Box::new(h) as Box<dyn LinearHook>)),
            &tasks,
            on,
        )?;
        for (i, record) in idx.into_iter().zip(records(&generated)) {
            answers[i] = Some(record);
        }
    }
    let answers = answers
        .into_iter()
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| Error::InvalidInput(format!("{config} on {name}: a task has no route")))?;
    ctx.save(&config, name, answers)
}

/// Parameters of the model's linear layers.
fn linear_params(base: &Checkpoint) -> u64 {
    tensor_specs(base.config())
        .iter()
        .filter(|(_, _, role)| matches!(role, TensorRole::Linear(..)))
        .map(|(_, shape, _)| shape.iter().product::<usize>() as u64)
        .sum()
}

/// The bytes a baseline's report (`baseline-<name>/<skill>.json`) records.
fn baseline_bytes(path: &Path) -> Option<u64> {
    let bytes = std::fs::read(path).ok()?;
    let report: BaselineReport = serde_json::from_slice(&bytes).ok()?;
    Some(report.linear_bytes + report.dense_bytes)
}

/// Runs the whole pipeline (see the module doc) on the base model at `base_path`.
pub fn weave(
    base_path: &Path,
    run: &Path,
    cfg: &WeaveConfig,
    on: &mut dyn FnMut(Event),
) -> Result<WeaveReport> {
    cfg.validate()?;
    std::fs::create_dir_all(run).map_err(|e| Error::io(run, e))?;
    check_run_dir(run, cfg)?;
    write_json(&run.join("config.json"), cfg)?;
    let mut report = WeaveReport::default();
    let mut clock = Instant::now();
    let mut lap = |report: &mut WeaveReport, what: &str| {
        report
            .seconds
            .push((what.into(), clock.elapsed().as_secs_f64()));
        clock = Instant::now();
    };
    let base = Checkpoint::open(base_path)?;
    check_base(run, &base)?;
    let tok = Tokenizer::of_checkpoint(&base)?;
    report.linear_params = linear_params(&base);
    let needs_sandbox = cfg.skills.iter().any(|s| s.domain == Domain::Code);
    let sandbox = match Sandbox::new(SandboxLimits::default()) {
        Ok(s) => Some(s),
        Err(e) if needs_sandbox => {
            return Err(Error::InvalidInput(format!(
                "code skills run their answers, and the sandbox is unavailable: {e}"
            )));
        }
        Err(_) => None,
    };
    let ctx = Context {
        run,
        cfg,
        tok: &tok,
        sandbox: sandbox.as_ref(),
    };
    let tasks: Vec<(Vec<Task>, Vec<Task>)> = cfg
        .skills
        .iter()
        .map(|s| skill_tasks(s, cfg))
        .collect::<Result<_>>()?;
    for ((_, held), spec) in tasks.iter().zip(&cfg.skills) {
        let cell = ctx.evaluate(
            "base",
            &spec.name,
            held,
            &|| Ok((Llama::from_checkpoint(&base)?, None)),
            on,
        )?;
        report.cells.push(cell);
    }
    lap(&mut report, "base evaluation");

    let mut tuned = Vec::new();
    for ((train, held), spec) in tasks.iter().zip(&cfg.skills) {
        let dir = train_skill(&ctx, &base, spec, train, on)?;
        lap(
            &mut report,
            &format!("{}: self-generation and training", spec.name),
        );
        let ckpt = Checkpoint::open(&dir)?;
        let cell = ctx.evaluate(
            "target",
            &spec.name,
            held,
            &|| Ok((Llama::from_checkpoint(&ckpt)?, None)),
            on,
        )?;
        report.cells.push(cell);
        lap(&mut report, &format!("{}: target evaluation", spec.name));
        tuned.push(ckpt);
    }

    let mut calibrations = Vec::new();
    // Only the methods use calibration statistics (a run of the training stage alone has none).
    if !cfg.methods.is_empty() {
        for ((train, _), spec) in tasks.iter().zip(&cfg.skills) {
            calibrations.push(calibrate_skill(&ctx, &base, spec, train, on)?);
        }
        lap(&mut report, "calibration");
    }

    if cfg.router && cfg.skills.len() > 1 {
        report.router = Some(route(&ctx, &base, &tasks, on)?);
        lap(&mut report, "router");
    }

    let methods: Vec<(String, Method)> = cfg
        .methods
        .iter()
        .map(|m| Ok((m.clone(), Method::parse(m, cfg.rank)?)))
        .collect::<Result<_>>()?;
    let routed = methods
        .iter()
        .find(|(_, m)| m.is_skillzip())
        .map(|(l, _)| l);
    for (label, method) in &methods {
        match method {
            Method::SkillZip { .. } => {
                let bundle_dir =
                    compress_bundle(&ctx, &base, &tuned, &calibrations, label, method, on)?;
                if report.router.is_some() {
                    attach_router(&bundle_dir, &run.join(ROUTER_FILE))?;
                }
                lap(&mut report, &format!("compress {label}"));
                let bundle = Bundle::open(&bundle_dir)?;
                let manifest = bundle.manifest();
                if let Some(d) = &manifest.backbone_delta {
                    report.backbone_delta.push((label.clone(), d.bytes));
                }
                for (k, ((_, held), spec)) in tasks.iter().zip(&cfg.skills).enumerate() {
                    if let Some(pack) = manifest.skillpack(&spec.name) {
                        report.storage.push(Storage {
                            config: label.clone(),
                            skill: spec.name.clone(),
                            bytes: pack.bytes,
                        });
                    }
                    let cell = ctx.evaluate(
                        label,
                        &spec.name,
                        held,
                        &|| {
                            let (model, hook) = bundle_model(&base, &bundle, Some(&spec.name))?;
                            Ok((model, hook.map(|h| Box::new(h) as Box<dyn LinearHook>)))
                        },
                        on,
                    )?;
                    report.cells.push(cell);
                    if let Some(router) = report.router.as_ref().filter(|_| routed == Some(label)) {
                        let cell = evaluate_routed(
                            &ctx,
                            &base,
                            &bundle,
                            label,
                            k,
                            held,
                            &router.routes[k],
                            on,
                        )?;
                        report.cells.push(cell);
                    }
                }
                lap(&mut report, &format!("evaluate {label}"));
            }
            Method::Baseline(baseline) => {
                for (((_, held), spec), (ckpt, calibration)) in tasks
                    .iter()
                    .zip(&cfg.skills)
                    .zip(tuned.iter().zip(&calibrations))
                {
                    let path = run
                        .join(format!("baseline-{label}"))
                        .join(format!("{}.json", spec.name));
                    let cell = ctx.evaluate(
                        label,
                        &spec.name,
                        held,
                        &|| {
                            let (params, storage) = approximate_skill(
                                &base,
                                ckpt,
                                calibration,
                                *baseline,
                                &mut |_, _| {},
                            )?;
                            write_json(&path, &storage)?;
                            Ok((model_from_params(base.config(), params)?, None))
                        },
                        on,
                    )?;
                    report.cells.push(cell);
                    if let Some(bytes) = baseline_bytes(&path) {
                        report.storage.push(Storage {
                            config: label.clone(),
                            skill: spec.name.clone(),
                            bytes,
                        });
                    }
                }
                lap(&mut report, &format!("{label}: fit and evaluate"));
            }
        }
    }
    report.peak_rss_mib = peak_rss_mib();
    write_json(&run.join("results.json"), &report)?;
    let table = results_table(cfg, &report);
    skillzip_format::write_atomic_bytes(run.join("results.md"), table.as_bytes())?;
    Ok(report)
}

/// The markdown tables of a run: held-out accuracy with its 95 % interval per configuration
/// and skill, the fine-tune's gain with its interval, the share of that gain each method
/// keeps, storage per skill, the router, and wall time per stage.
pub fn results_table(cfg: &WeaveConfig, report: &WeaveReport) -> String {
    let mut configs: Vec<String> = vec!["base".into(), "target".into()];
    configs.extend(cfg.methods.iter().cloned());
    for c in &report.cells {
        if !configs.contains(&c.config) {
            configs.push(c.config.clone());
        }
    }
    let methods = &configs[2..];
    let find = |config: &str, skill: &str| {
        report
            .cells
            .iter()
            .find(|c| c.config == config && c.skill == skill)
    };
    let cell = |config: &str, skill: &str| find(config, skill).map(|c| c.accuracy);
    let pct = |v: f64| format!("{:.1}", 100.0 * v);
    let header = |out: &mut String, first: &[&str], rest: &[String]| {
        out.push('|');
        for h in first
            .iter()
            .map(|s| s.to_string())
            .chain(rest.iter().cloned())
        {
            out.push_str(&format!(" {h} |"));
        }
        out.push('\n');
        out.push_str(&"|---".repeat(first.len() + rest.len()));
        out.push_str("|\n");
    };
    let mut out = String::from("Held-out accuracy, greedy, 95 % Wilson intervals:\n\n");
    header(&mut out, &["skill", "n"], &configs);
    for s in &cfg.skills {
        let n = cell("base", &s.name).map_or(0, |a| a.total);
        out.push_str(&format!("| {} | {n} |", s.name));
        for c in &configs {
            match cell(c, &s.name) {
                Some(a) => {
                    let (lo, hi) = a.wilson95();
                    out.push_str(&format!(" {}% [{}, {}] |", pct(a.rate()), pct(lo), pct(hi)))
                }
                None => out.push_str(" – |"),
            }
        }
        out.push('\n');
    }
    out.push_str(
        "\nThe fine-tune's gain (target − base, points) with two 95 % intervals: paired \
         (Newcombe's interval for paired proportions: both models answered the same tasks) and \
         as if the samples were independent (Newcombe's hybrid score interval, wider); beyond \
         noise when the paired interval excludes 0. Then the share of the gain each method \
         keeps ((method − base)/(target − base)):\n\n",
    );
    header(
        &mut out,
        &["skill", "gain", "paired", "independent", "beyond noise"],
        methods,
    );
    for s in &cfg.skills {
        let (b, t) = (cell("base", &s.name), cell("target", &s.name));
        out.push_str(&format!("| {} |", s.name));
        let interval = |(lo, hi): (f64, f64)| format!("[{:+.1}, {:+.1}]", 100.0 * lo, 100.0 * hi);
        match (b, t) {
            (Some(b), Some(t)) => {
                let paired = match (find("target", &s.name), find("base", &s.name)) {
                    (Some(tc), Some(bc)) => Paired::of(&tc.outcomes, &bc.outcomes)
                        .filter(|p| p.total() == t.total && p.total() > 0),
                    _ => None,
                };
                let independent = t.difference95(&b);
                let (paired_text, beyond) = match paired {
                    Some(p) => {
                        let i = p.difference95();
                        (interval(i), if i.0 > 0.0 { "yes" } else { "no" })
                    }
                    None => ("–".into(), if independent.0 > 0.0 { "yes" } else { "no" }),
                };
                out.push_str(&format!(
                    " {:+.1} | {paired_text} | {} | {beyond} |",
                    100.0 * (t.rate() - b.rate()),
                    interval(independent),
                ));
            }
            _ => out.push_str(" – | – | – | – |"),
        }
        for m in methods {
            let kept = match (b, t, cell(m, &s.name)) {
                (Some(b), Some(t), Some(x)) if t.rate() > b.rate() => format!(
                    "{:.0}%",
                    100.0 * (x.rate() - b.rate()) / (t.rate() - b.rate())
                ),
                (Some(_), Some(_), Some(_)) => "no gain".into(),
                _ => "–".into(),
            };
            out.push_str(&format!(" {kept} |"));
        }
        out.push('\n');
    }
    if !report.storage.is_empty() {
        out.push_str(&format!(
            "\nStorage of each skill's own part (KiB; bits per parameter of the {} linear \
             weights the delta covers):\n\n",
            report.linear_params
        ));
        let labels: Vec<String> = cfg
            .methods
            .iter()
            .filter(|m| report.storage.iter().any(|s| &s.config == *m))
            .cloned()
            .collect();
        header(&mut out, &["skill"], &labels);
        for s in &cfg.skills {
            out.push_str(&format!("| {} |", s.name));
            for m in &labels {
                match report
                    .storage
                    .iter()
                    .find(|x| &x.config == m && x.skill == s.name)
                {
                    Some(x) => out.push_str(&format!(
                        " {:.0} ({:.2} b) |",
                        x.bytes as f64 / 1024.0,
                        8.0 * x.bytes as f64 / report.linear_params.max(1) as f64
                    )),
                    None => out.push_str(" – |"),
                }
            }
            out.push('\n');
        }
        for (m, bytes) in &report.backbone_delta {
            out.push_str(&format!(
                "\n{m}: the backbone delta shared by all skills is {:.0} KiB.",
                *bytes as f64 / 1024.0
            ));
        }
        if !report.backbone_delta.is_empty() {
            out.push('\n');
        }
    }
    if let Some(r) = &report.router {
        out.push_str(&format!(
            "\nLearned router (softmax regression on the base model's mean last hidden state, \
             {} training prompts): held-out routing accuracy {}.\n\n",
            r.train_prompts, r.overall
        ));
        let names: Vec<String> = cfg.skills.iter().map(|s| format!("→ {}", s.name)).collect();
        header(&mut out, &["skill", "routed to own"], &names);
        for (k, s) in cfg.skills.iter().enumerate() {
            match r.per_skill.get(k) {
                Some(a) => out.push_str(&format!("| {} | {a} |", s.name)),
                None => out.push_str(&format!("| {} | – |", s.name)),
            }
            for count in r.confusion.get(k).into_iter().flatten() {
                out.push_str(&format!(" {count} |"));
            }
            out.push('\n');
        }
    }
    out.push_str("\n| stage | seconds |\n|---|---:|\n");
    for (what, secs) in &report.seconds {
        out.push_str(&format!("| {what} | {secs:.0} |\n"));
    }
    if let Some(rss) = report.peak_rss_mib {
        out.push_str(&format!("\nPeak resident memory: {rss:.0} MiB.\n"));
    }
    out
}
