//! `skillzip weave`: SkillWeave end to end (`skillzip_harness::weave`): per skill
//! self-generate → verify → LN-DPO → delta; calibrate; compress into bundles; evaluate base,
//! fine-tune and every compressed configuration on held-out tasks; print the table.

use std::path::PathBuf;

use skillzip_harness::weave::{Event, SkillSpec, WeaveConfig, results_table, weave};
use skillzip_tasks::Domain;

use crate::inputs::{CliResult, bar};

/// Arguments of `skillzip weave`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The base checkpoint (GGUF, model.safetensors or a sharded index).
    #[arg(long)]
    pub base: PathBuf,
    /// The run directory (created; an existing run there is continued).
    #[arg(long)]
    pub out: PathBuf,
    /// The small preset: two skills, small sets, one round (about 15 minutes on 2 cores).
    #[arg(long, conflicts_with = "full")]
    pub quick: bool,
    /// The full preset: four skills, several rounds, X8A8B8, X4A4B4, the ablations and the
    /// baselines (the default preset).
    #[arg(long)]
    pub full: bool,
    /// Skills instead of the preset's: NAME=DOMAIN:LEVEL (domain math, ifeval, mc or code),
    /// or NAME=DOMAIN@FILE.jsonl for your own tasks (every fifth held out). Repeat per skill.
    #[arg(long = "skill", value_name = "SPEC")]
    pub skills: Vec<String>,
    /// Training prompts per skill.
    #[arg(long)]
    pub train_prompts: Option<usize>,
    /// Held-out prompts per skill.
    #[arg(long)]
    pub heldout_prompts: Option<usize>,
    /// Samples per training prompt.
    #[arg(long)]
    pub samples: Option<usize>,
    /// Sampling temperature of self-generation.
    #[arg(long)]
    pub temperature: Option<f32>,
    /// Online rounds.
    #[arg(long)]
    pub rounds: Option<usize>,
    /// LN-DPO steps per round.
    #[arg(long)]
    pub steps: Option<usize>,
    /// Preference pairs per step.
    #[arg(long)]
    pub pairs_per_step: Option<usize>,
    /// Peak learning rate.
    #[arg(long)]
    pub lr: Option<f64>,
    /// LN-DPO's scale β of the length-normalised log-likelihood difference.
    #[arg(long)]
    pub beta: Option<f64>,
    /// LN-DPO's target margin γ.
    #[arg(long)]
    pub gamma: Option<f64>,
    /// Weight of the helpful response's negative log-likelihood added to LN-DPO's loss.
    #[arg(long)]
    pub nll: Option<f64>,
    /// Methods to store the deltas with, comma-separated: SkillZip grids (X8A8B8, X8A4B4,
    /// X4A4B8, X4A4B4), ablations (a grid with -nomerge, -nosmooth and/or -norotate) and
    /// baselines (bitdelta, svd16, asvd, deltacome); `none` evaluates only the base model and
    /// the fine-tunes (a study of the training stage alone).
    #[arg(long, value_delimiter = ',')]
    pub methods: Vec<String>,
    /// No learned router (by default, with two skills or more, it is trained and the first
    /// SkillZip method is also evaluated with routed instead of oracle skillpacks).
    #[arg(long)]
    pub no_router: bool,
    /// Skillpack rank.
    #[arg(long)]
    pub rank: Option<usize>,
    /// Shared-component merge method (`none` for no shared component).
    #[arg(long)]
    pub merge: Option<String>,
    /// Seed of the run.
    #[arg(long)]
    pub seed: Option<u64>,
}

fn parse_skill(spec: &str) -> CliResult<SkillSpec> {
    let (name, rest) = spec
        .split_once('=')
        .ok_or_else(|| format!("--skill {spec}: expected NAME=DOMAIN:LEVEL or NAME=DOMAIN@FILE"))?;
    let (domain, level, file) = if let Some((d, f)) = rest.split_once('@') {
        (d, 1, Some(PathBuf::from(f)))
    } else {
        let (d, l) = rest
            .split_once(':')
            .ok_or_else(|| format!("--skill {spec}: expected DOMAIN:LEVEL after '='"))?;
        let level: u8 = l
            .parse()
            .map_err(|_| format!("--skill {spec}: level {l} is not a number"))?;
        (d, level, None)
    };
    let domain = Domain::parse(domain).ok_or_else(|| {
        format!("--skill {spec}: domain {domain}: expected math, ifeval, mc or code")
    })?;
    Ok(SkillSpec {
        name: name.to_string(),
        domain,
        level,
        tasks_file: file,
    })
}

/// The configuration the arguments ask for.
pub fn config(a: &Args) -> CliResult<WeaveConfig> {
    let mut cfg = if a.quick {
        WeaveConfig::quick()
    } else {
        WeaveConfig::full()
    };
    if !a.skills.is_empty() {
        cfg.skills = a
            .skills
            .iter()
            .map(|s| parse_skill(s))
            .collect::<CliResult<_>>()?;
    }
    let set = |slot: &mut usize, v: Option<usize>| {
        if let Some(v) = v {
            *slot = v;
        }
    };
    set(&mut cfg.train_prompts, a.train_prompts);
    set(&mut cfg.heldout_prompts, a.heldout_prompts);
    set(&mut cfg.selfgen.samples_per_prompt, a.samples);
    set(&mut cfg.rounds, a.rounds);
    set(&mut cfg.steps_per_round, a.steps);
    set(&mut cfg.pairs_per_step, a.pairs_per_step);
    set(&mut cfg.rank, a.rank);
    let objective = &mut cfg.train.objective;
    for (slot, value) in [
        (&mut objective.beta, a.beta),
        (&mut objective.gamma, a.gamma),
        (&mut objective.nll, a.nll),
    ] {
        if let Some(v) = value {
            *slot = v;
        }
    }
    if let Some(t) = a.temperature {
        cfg.selfgen.temperature = t;
    }
    if let Some(lr) = a.lr {
        cfg.train.schedule.peak_lr = lr;
        cfg.train.schedule.min_lr = lr / 10.0;
    }
    match a.methods.as_slice() {
        [] => {}
        [none] if none == "none" => cfg.methods.clear(),
        methods => cfg.methods = methods.to_vec(),
    }
    if a.no_router {
        cfg.router = false;
    }
    if let Some(m) = &a.merge {
        cfg.merge = (m != "none").then(|| m.clone());
    }
    if let Some(seed) = a.seed {
        cfg.seed = seed;
        cfg.selfgen.seed = seed;
    }
    Ok(cfg)
}

/// Runs the command.
pub fn run(a: Args, quiet: bool) -> CliResult<()> {
    let cfg = config(&a)?;
    let pb = bar(0, quiet);
    let report = weave(&a.base, &a.out, &cfg, &mut |ev| match ev {
        Event::Stage(what) => {
            pb.set_position(0);
            pb.set_length(0);
            pb.set_message(what.clone());
            if quiet {
                eprintln!("{what}");
            } else {
                pb.println(format!("» {what}"));
            }
        }
        Event::Progress { done, total } => {
            pb.set_length(total as u64);
            pb.set_position(done as u64);
        }
        Event::Step(s) => {
            let line = format!(
                "  step {:>3}: loss {:.4}, pair accuracy {:.2}, margin {:+.4}, helpful logp {:.3}, |g| {:.3}, lr {:.2e}",
                s.step + 1,
                s.loss,
                s.accuracy,
                s.margin,
                s.chosen_logp,
                s.optimizer.grad_norm,
                s.optimizer.lr
            );
            if quiet {
                eprintln!("{line}");
            } else {
                pb.println(line);
            }
        }
        Event::Note(line) => {
            if quiet {
                eprintln!("  {line}");
            } else {
                pb.println(format!("  {line}"));
            }
        }
    })
    .map_err(|e| e.to_string())?;
    pb.finish_and_clear();
    println!("{}", results_table(&cfg, &report));
    eprintln!("results: {}", a.out.join("results.md").display());
    Ok(())
}
