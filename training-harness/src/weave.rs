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
//!   <skill>/train/              trainer checkpoints (resumable), rounds' samples (JSONL)
//!   <skill>/model/              the fine-tuned checkpoint (f32 safetensors)
//!   <skill>.calib               calibration statistics
//!   bundle-<method>/            manifest, backbone delta, skillpacks
//!   eval/<config>/<skill>.json  accuracy and every answer with its verdict
//!   results.md, results.json    the table
//! ```
//!
//! Every stage's output is written atomically and reused when present, and training resumes
//! from its last checkpoint, so a killed run continues where it stopped.

use std::path::{Path, PathBuf};
use std::time::Instant;

use rand::seq::SliceRandom;
use skillzip_core::compress::{BitConfig, CompressConfig};
use skillzip_core::merge::{MergeConfig, MergeMethod, ModelParams};
use skillzip_format::bundle::Bundle;
use skillzip_lm::calibrate::{CalibrationFile, CalibrationOptions, calibrate};
use skillzip_lm::checkpoint::Checkpoint;
use skillzip_lm::compress::{ModelCompressOptions, RankPolicy, SkillSource, compress_model};
use skillzip_lm::generate::Sampling;
use skillzip_lm::model::{LinearHook, Llama, NoHook};
use skillzip_lm::save::{SaveOptions, save_checkpoint};
use skillzip_lm::skillpack::{bundle_model, load_params};
use skillzip_lm::tokenizer::{Message, Tokenizer};
use skillzip_tasks::task::generate;
use skillzip_tasks::{Domain, Sandbox, SandboxLimits, Split, Task};

use crate::error::{Error, Result};
use crate::eval::{Accuracy, accuracy_of};
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
    /// SkillZip methods to compress with (`X8A8B8`, `X4A4B4`, …).
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
    /// The `--quick` preset: two skills and small sets, sized for about 15 minutes on two
    /// CPU cores with SmolLM2-135M. Its intervals are wide; it shows the pipeline, not the
    /// paper's numbers.
    pub fn quick() -> Self {
        let mut train = TrainConfig::default();
        train.schedule.peak_lr = 2e-5;
        train.schedule.min_lr = 2e-6;
        train.schedule.warmup_steps = 1;
        Self {
            skills: vec![
                skill("ifeval", Domain::Instructions, 2),
                skill("mc", Domain::Choice, 2),
            ],
            train_prompts: 24,
            heldout_prompts: 32,
            selfgen: SelfGenConfig {
                samples_per_prompt: 4,
                prompts_per_batch: 12,
                ..SelfGenConfig::default()
            },
            rounds: 1,
            steps_per_round: 6,
            pairs_per_step: 4,
            train,
            eval_batch: 32,
            methods: vec!["X8A8B8".into()],
            rank: 16,
            merge: Some("ties".into()),
            calibration_prompts: 16,
            seed: 0,
        }
    }

    /// The full preset: every built-in skill, larger sets, several rounds, both grids.
    pub fn full() -> Self {
        let mut train = TrainConfig::default();
        train.schedule.peak_lr = 2e-5;
        train.schedule.min_lr = 2e-6;
        train.schedule.warmup_steps = 4;
        Self {
            skills: vec![
                skill("math", Domain::Math, 1),
                skill("ifeval", Domain::Instructions, 2),
                skill("mc", Domain::Choice, 2),
                skill("code", Domain::Code, 2),
            ],
            train_prompts: 192,
            heldout_prompts: 100,
            selfgen: SelfGenConfig {
                samples_per_prompt: 6,
                prompts_per_batch: 16,
                max_pairs_per_prompt: 3,
                ..SelfGenConfig::default()
            },
            rounds: 3,
            steps_per_round: 16,
            pairs_per_step: 8,
            train,
            eval_batch: 32,
            methods: vec!["X8A8B8".into(), "X4A4B4".into()],
            rank: 32,
            merge: Some("ties".into()),
            calibration_prompts: 64,
            seed: 0,
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
        for m in &self.methods {
            if BitConfig::from_label(m).is_none() {
                return bad(format!(
                    "method {m}: expected X8A8B8, X8A4B4, X4A4B8 or X4A4B4"
                ));
            }
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
}

/// The run's results.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct WeaveReport {
    /// Every evaluated (configuration, skill).
    pub cells: Vec<Cell>,
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

/// One answer as stored in the run directory.
#[derive(serde::Serialize, serde::Deserialize)]
struct AnswerRecord {
    id: String,
    prompt: String,
    answer: String,
    helpful: bool,
    reason: String,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct EvalRecord {
    accuracy: Accuracy,
    answers: Vec<AnswerRecord>,
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
    /// Held-out accuracy of one configuration on one skill, reused when already measured.
    fn evaluate(
        &self,
        config: &str,
        skill: &str,
        tasks: &[Task],
        model: &dyn Fn() -> Result<ModelWithHook>,
        on: &mut dyn FnMut(Event),
    ) -> Result<Cell> {
        let path = self
            .run
            .join("eval")
            .join(config)
            .join(format!("{skill}.json"));
        if let Ok(bytes) = std::fs::read(&path)
            && let Ok(done) = serde_json::from_slice::<EvalRecord>(&bytes)
        {
            on(Event::Note(format!(
                "{config} on {skill}: reused {}",
                path.display()
            )));
            return Ok(Cell {
                config: config.into(),
                skill: skill.into(),
                accuracy: done.accuracy,
            });
        }
        on(Event::Stage(format!("evaluate {config} on {skill}")));
        let (model, mut hook) = model()?;
        let mut no_hook = NoHook;
        let hook: &mut dyn LinearHook = match hook.as_deref_mut() {
            Some(h) => h,
            None => &mut no_hook,
        };
        let generated = answer_tasks(
            &model,
            self.tok,
            tasks,
            1,
            Sampling::Greedy,
            self.cfg.eval_batch,
            self.sandbox,
            hook,
            &mut |done, total| on(Event::Progress { done, total }),
        )?;
        let accuracy = accuracy_of(&generated);
        write_json(
            &path,
            &EvalRecord {
                accuracy,
                answers: records(&generated),
            },
        )?;
        Ok(Cell {
            config: config.into(),
            skill: skill.into(),
            accuracy,
        })
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

/// Runs the whole pipeline (see the module doc) on the base model at `base_path`.
pub fn weave(
    base_path: &Path,
    run: &Path,
    cfg: &WeaveConfig,
    on: &mut dyn FnMut(Event),
) -> Result<WeaveReport> {
    cfg.validate()?;
    std::fs::create_dir_all(run).map_err(|e| Error::io(run, e))?;
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
    let tok = Tokenizer::of_checkpoint(&base)?;
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
    for ((train, _), spec) in tasks.iter().zip(&cfg.skills) {
        let path = run.join(format!("{}.calib", spec.name));
        if !path.exists() {
            on(Event::Stage(format!("{}: calibrate", spec.name)));
            let prompts = train
                .iter()
                .take(cfg.calibration_prompts)
                .map(|t| calibration_ids(&tok, t))
                .collect::<Result<Vec<_>>>()?;
            let stats = calibrate(
                &base,
                &spec.name,
                &prompts,
                CalibrationOptions {
                    seed: cfg.seed,
                    ..CalibrationOptions::default()
                },
                &mut |done, total| on(Event::Progress { done, total }),
            )?;
            stats.save(&path)?;
        }
        calibrations.push(CalibrationFile::open(&path)?);
    }
    lap(&mut report, "calibration");

    for method in &cfg.methods {
        let bundle_dir = run.join(format!("bundle-{method}"));
        if !bundle_dir.join("manifest.json").exists() {
            on(Event::Stage(format!("compress {method}")));
            let mut layer = CompressConfig::skillzip(cfg.rank);
            layer.bits = BitConfig::from_label(method)
                .ok_or_else(|| Error::InvalidInput(format!("method {method}")))?;
            layer.seed = cfg.seed;
            let mut opts = ModelCompressOptions::new(layer, RankPolicy::Fixed(cfg.rank));
            // With one skill every delta would be "shared": the backbone would absorb the
            // whole fine-tune and the skillpack would measure nothing.
            if let Some(m) = cfg.merge.as_ref().filter(|_| cfg.skills.len() > 1) {
                let k = cfg.skills.len();
                let models = (0..k).map(|_| ModelParams::new(1.0 / k as f64)).collect();
                opts.merge = Some(MergeConfig::new(merge_method(m)?, models));
            }
            opts.merge_seed = cfg.seed;
            let skills: Vec<SkillSource<'_>> = cfg
                .skills
                .iter()
                .zip(&tuned)
                .zip(&calibrations)
                .map(|((s, ckpt), calibration)| SkillSource {
                    name: &s.name,
                    checkpoint: ckpt,
                    calibration,
                })
                .collect();
            compress_model(&base, &skills, &opts, &bundle_dir, &mut |ev| {
                if let skillzip_lm::compress::Event::Tensor { index, total, .. } = ev {
                    on(Event::Progress {
                        done: *index,
                        total: *total,
                    });
                }
            })?;
        }
        lap(&mut report, &format!("compress {method}"));
        let bundle = Bundle::open(&bundle_dir)?;
        for ((_, held), spec) in tasks.iter().zip(&cfg.skills) {
            let cell = ctx.evaluate(
                method,
                &spec.name,
                held,
                &|| {
                    let (model, hook) = bundle_model(&base, &bundle, Some(&spec.name))?;
                    Ok((model, hook.map(|h| Box::new(h) as Box<dyn LinearHook>)))
                },
                on,
            )?;
            report.cells.push(cell);
        }
        lap(&mut report, &format!("evaluate {method}"));
    }
    report.peak_rss_mib = peak_rss_mib();
    write_json(&run.join("results.json"), &report)?;
    let table = results_table(cfg, &report);
    skillzip_format::write_atomic_bytes(run.join("results.md"), table.as_bytes())?;
    Ok(report)
}

/// The markdown table of a run: accuracy with its 95 % interval per configuration and skill,
/// and the share of the fine-tune's gain each compressed configuration keeps.
pub fn results_table(cfg: &WeaveConfig, report: &WeaveReport) -> String {
    let mut configs: Vec<String> = vec!["base".into(), "target".into()];
    configs.extend(cfg.methods.iter().cloned());
    let cell = |config: &str, skill: &str| {
        report
            .cells
            .iter()
            .find(|c| c.config == config && c.skill == skill)
            .map(|c| c.accuracy)
    };
    let mut out = String::new();
    out.push_str("| skill | n |");
    for c in &configs {
        out.push_str(&format!(" {c} |"));
    }
    for m in &cfg.methods {
        out.push_str(&format!(" {m} gain kept |"));
    }
    out.push('\n');
    out.push_str(&"|---".repeat(2 + configs.len() + cfg.methods.len()));
    out.push_str("|\n");
    for s in &cfg.skills {
        let n = cell("base", &s.name).map_or(0, |a| a.total);
        out.push_str(&format!("| {} | {n} |", s.name));
        for c in &configs {
            match cell(c, &s.name) {
                Some(a) => {
                    let (lo, hi) = a.wilson95();
                    out.push_str(&format!(
                        " {:.1}% [{:.1}, {:.1}] |",
                        100.0 * a.rate(),
                        100.0 * lo,
                        100.0 * hi
                    ))
                }
                None => out.push_str(" – |"),
            }
        }
        for m in &cfg.methods {
            let kept = match (
                cell("base", &s.name),
                cell("target", &s.name),
                cell(m, &s.name),
            ) {
                (Some(b), Some(t), Some(x)) if t.rate() > b.rate() => format!(
                    "{:.0}%",
                    100.0 * (x.rate() - b.rate()) / (t.rate() - b.rate())
                ),
                _ => "no gain to keep".into(),
            };
            out.push_str(&format!(" {kept} |"));
        }
        out.push('\n');
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
