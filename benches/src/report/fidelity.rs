//! The fidelity study, twice:
//!
//! - [`synthetic`]: every method (SkillZip at four grids, its ablations, BitDelta, SVD-16,
//!   ASVD, Delta-CoMe-style) on the deterministic power-law case of
//!   [`skillzip_core::study`]: relative output error on held-out rows against bits per
//!   parameter, the compression Pareto front.
//! - [`real`]: the real SmolLM2 skill deltas of one or more `skillzip weave` runs: held-out
//!   task accuracy (from the run's `results.json`), the mean per-layer held-out relative
//!   output error the compressor and the baselines recorded, and the KL divergence from the
//!   fine-tuned model to backbone + skillpack on the fine-tune's own held-out answers
//!   (computed here, for every configuration whose bundle the run kept).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use skillzip_core::study::{self, StudyCase};
use skillzip_format::bundle::Bundle;
use skillzip_harness::eval::Accuracy;
use skillzip_harness::weave::{BaseRecord, EvalRecord, WeaveReport, base_fingerprint};
use skillzip_lm::baseline::BaselineReport;
use skillzip_lm::checkpoint::Checkpoint;
use skillzip_lm::divergence::{kl_divergence, log_prob_rows};
use skillzip_lm::model::{LinearHook, Llama, NoHook};
use skillzip_lm::skillpack::bundle_model;
use skillzip_lm::tokenizer::Tokenizer;

use super::plot::{Axis, Figure, Mark, Series};
use super::table::{Table, num};
use super::{Context, Preset, ReportError, Result, Section};

/// The synthetic study's name in the manifest.
pub const SYNTHETIC: &str = "fidelity_synthetic";
/// The real-delta study's name in the manifest.
pub const REAL: &str = "fidelity_real";

/// The paper's orderings as the figures state them.
const PAPER_ORDERINGS: &str = "paper: full < −rotate < −smooth; X8A8B8 < X4A4B4; SkillZip below BitDelta and SVD-16 at equal bytes";

fn study_err(study: &'static str) -> impl Fn(String) -> ReportError {
    move |message| ReportError::Study { study, message }
}

/// Runs the synthetic study (quick: [`StudyCase::small`]; full: [`StudyCase::builtin`]) and
/// writes `fidelity_synthetic.csv` and the `pareto_synthetic` figure.
pub fn synthetic(ctx: &Context, progress: &mut dyn FnMut(&str)) -> Result<Section> {
    let case = match ctx.preset {
        Preset::Quick => StudyCase::small(),
        Preset::Full => StudyCase::builtin(),
    };
    let rows = study::run(&case, progress).map_err(|e| study_err(SYNTHETIC)(e.to_string()))?;
    let mut table = Table::new(&[
        "method",
        "rank",
        "bits_per_param",
        "bytes",
        "ratio_vs_fp16",
        "rel_output_error",
        "rel_weight_error",
    ]);
    for r in &rows {
        let f = &r.fidelity;
        table.push(vec![
            r.method.clone(),
            r.rank.map_or("-".into(), |k| k.to_string()),
            num(f.bits_per_param, 4),
            f.bytes.to_string(),
            num(f.compression_ratio, 2),
            num(f.rel_output_error, 5),
            num(f.rel_weight_error, 5),
        ]);
    }
    super::write_file(
        &ctx.path("fidelity_synthetic.csv"),
        table.to_csv().as_bytes(),
    )?;

    let (ours, theirs): (Vec<_>, Vec<_>) =
        rows.iter().partition(|r| r.method.starts_with("SkillZip"));
    let series_of = |name: &str, rows: &[&study::StudyRow], color: usize| {
        Series::line(
            name,
            rows.iter()
                .map(|r| (r.fidelity.bits_per_param, r.fidelity.rel_output_error))
                .collect(),
        )
        .mark(Mark::Points)
        .color(color)
        .labels(
            rows.iter()
                .map(|r| r.method.trim_start_matches("SkillZip ").to_string())
                .collect(),
        )
    };
    let orderings = study::orderings(&rows);
    let held = orderings.iter().filter(|(_, h)| *h).count();
    let figure = Figure {
        stem: "pareto_synthetic".into(),
        title: format!(
            "Error vs storage, synthetic {}→{} deltas, {} skills",
            case.c_in, case.c_out, case.skills
        ),
        notes: vec![
            ctx.footer(),
            format!("{PAPER_ORDERINGS}: {held} of {} hold here", orderings.len()),
        ],
        x: Axis::linear("bits per delta parameter (scales, smoothing, padding included)"),
        y: Axis::linear("held-out relative output error"),
        series: vec![
            series_of("SkillZip (grids and ablations)", &ours, 0),
            series_of("baselines", &theirs, 1),
        ],
        legend: super::plot::Corner::UpperLeft,
    };
    super::plot::render(&figure, &ctx.out)?;

    let mut md = format!(
        "### Fidelity on the synthetic case (every method)\n\n\
         `skillzip_core::study` on {}→{}, {} skills sharing a power-law component \
         (σᵢ ∝ (i+1)^-{}), {} outlier channels ×{}, {}/{}/{} calibration/selection/held-out rows. \
         Errors are held-out relative output errors against the original delta, averaged over \
         the skills; bits count codes, scales, smoothing vectors and padding.\n\n\
         ![error vs bits](./pareto_synthetic.png)\n\n",
        case.c_in,
        case.c_out,
        case.skills,
        case.decay,
        case.outliers,
        case.outlier_gain,
        case.splits.0,
        case.splits.1,
        case.splits.2
    );
    md.push_str(&table.to_markdown());
    md.push_str("\nThe paper's orderings on this case:\n\n");
    for (statement, holds) in &orderings {
        md.push_str(&format!(
            "- {statement}: {}\n",
            if *holds { "holds" } else { "does not hold" }
        ));
    }
    Ok(Section { markdown: md })
}

/// Inputs of the real-delta study.
#[derive(Debug, Clone)]
pub struct RealInputs {
    /// `skillzip weave` run directories, read in order: a configuration already seen in an
    /// earlier run is taken from that one, so a second run holding only extra methods extends
    /// the first. Runs must share the base model (`base.json`) and its shapes; that a later
    /// run's methods compressed the same fine-tunes (as `weave` does when it reuses them) is
    /// the caller's to ensure: fine-tunes, their answers and `base`/`target` come from the
    /// runs that evaluated them first.
    pub runs: Vec<PathBuf>,
    /// The base checkpoint the runs were made from.
    pub base: PathBuf,
    /// Held-out answers per skill the KL divergence is measured on (0: none).
    pub kl_answers: usize,
    /// Longest sequence (prompt + answer) fed to the models, tokens.
    pub max_tokens: usize,
}

/// Where one configuration's data lives.
#[derive(Debug, Clone)]
struct Config {
    name: String,
    run: PathBuf,
    /// Accuracy per skill (by name).
    accuracy: BTreeMap<String, Accuracy>,
    bytes: BTreeMap<String, u64>,
}

/// Per skill and configuration: the layer errors and the KL divergence.
#[derive(Debug, Clone, Default)]
struct Measured {
    rel_output_error: Option<f64>,
    rel_weight_error: Option<f64>,
    kl: Option<f64>,
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    serde_json::from_slice(&super::read_file(path)?)
        .map_err(|e| ReportError::Input(format!("{}: {e}", path.display())))
}

/// Mean per-layer errors of a bundle's skillpack as the compressor recorded them.
fn skillpack_errors(bundle: &Bundle, skill: &str) -> Result<(Option<f64>, Option<f64>)> {
    let pack = bundle
        .skillpack(skill)
        .map_err(|e| ReportError::Input(format!("skillpack {skill}: {e}")))?;
    let reports: Vec<_> = pack
        .layers
        .values()
        .filter_map(|e| e.report.as_ref())
        .collect();
    let mean = |f: &dyn Fn(&skillzip_format::skillpack::LayerReport) -> Option<f64>| {
        let v: Vec<f64> = reports.iter().filter_map(|r| f(r)).collect();
        (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
    };
    Ok((mean(&|r| r.rel_output_error), mean(&|r| r.rel_weight_error)))
}

/// One skill's held-out answers of the fine-tuned model, as token ids (prompt + answer, at
/// most `max_tokens`) with the index where the answer starts (always ≥ 1 and < the length).
fn answer_sequences(
    run: &Path,
    skill: &str,
    tok: &Tokenizer,
    count: usize,
    max_tokens: usize,
) -> Result<Vec<(Vec<u32>, usize)>> {
    let path = run
        .join("eval")
        .join("target")
        .join(format!("{skill}.json"));
    let record: EvalRecord = read_json(&path)?;
    let mut out = Vec::new();
    for a in record
        .answers
        .iter()
        .filter(|a| !a.answer.trim().is_empty())
        .take(count)
    {
        let fail = |e: String| ReportError::Input(format!("{}: {e}", path.display()));
        let mut ids = skillzip_harness::selfgen::encode_prompt(tok, &a.prompt)
            .map_err(|e| fail(e.to_string()))?;
        let start = ids.len();
        // A prompt that leaves no room for an answer token within `max_tokens` is skipped.
        if start == 0 || start >= max_tokens {
            continue;
        }
        ids.extend(tok.encode(&a.answer).map_err(|e| fail(e.to_string()))?);
        ids.truncate(max_tokens);
        if ids.len() > start {
            out.push((ids, start));
        }
    }
    Ok(out)
}

/// The log-probability rows predicting each answer token (positions `start-1 .. n-1`).
fn answer_rows(
    model: &Llama,
    seq: &(Vec<u32>, usize),
    hook: &mut dyn LinearHook,
) -> Result<Vec<Vec<f64>>> {
    let (ids, start) = seq;
    let rows = log_prob_rows(model, &ids[..ids.len() - 1], hook)
        .map_err(|e| study_err(REAL)(e.to_string()))?;
    Ok(rows[start - 1..].to_vec())
}

/// Mean `KL(tuned ‖ other)` over every answer position (`None` without any).
fn mean_kl(tuned: &[Vec<Vec<f64>>], other: &[Vec<Vec<f64>>]) -> Option<f64> {
    mean(
        tuned
            .iter()
            .zip(other)
            .flat_map(|(t, o)| t.iter().zip(o).map(|(p, q)| kl_divergence(p, q))),
    )
}

/// Runs the real-delta study over `inputs.runs` and writes `fidelity_real.csv` (one row per
/// configuration), `fidelity_real_skills.csv` (per skill) and the `pareto_real_error` and
/// `pareto_real_accuracy` figures.
pub fn real(ctx: &Context, inputs: &RealInputs, progress: &mut dyn FnMut(&str)) -> Result<Section> {
    let fail = study_err(REAL);
    let mut configs: Vec<Config> = Vec::new();
    let mut skills: Vec<String> = Vec::new();
    let mut linear_params = 0u64;
    let mut fingerprint: Option<String> = None;
    for run in &inputs.runs {
        let report: WeaveReport = read_json(&run.join("results.json"))?;
        // Runs extend each other only when they come from the same base model and shapes.
        let base: BaseRecord = read_json(&run.join("base.json"))?;
        match &fingerprint {
            Some(f) if *f != base.fingerprint => {
                return Err(ReportError::Input(format!(
                    "{}: made from another base model than {}",
                    run.display(),
                    inputs.runs[0].display()
                )));
            }
            _ => fingerprint = Some(base.fingerprint),
        }
        if linear_params != 0 && report.linear_params != linear_params {
            return Err(ReportError::Input(format!(
                "{}: {} linear parameters, the first run has {linear_params}",
                run.display(),
                report.linear_params
            )));
        }
        linear_params = report.linear_params;
        for cell in &report.cells {
            if !skills.contains(&cell.skill) {
                skills.push(cell.skill.clone());
            }
            let config = match configs.iter_mut().find(|c| c.name == cell.config) {
                Some(c) if c.run != *run => continue,
                Some(c) => c,
                None => {
                    configs.push(Config {
                        name: cell.config.clone(),
                        run: run.clone(),
                        accuracy: BTreeMap::new(),
                        bytes: BTreeMap::new(),
                    });
                    configs.last_mut().expect("just pushed")
                }
            };
            config.accuracy.insert(cell.skill.clone(), cell.accuracy);
        }
        for s in &report.storage {
            if let Some(c) = configs
                .iter_mut()
                .find(|c| c.name == s.config && c.run == *run)
            {
                c.bytes.insert(s.skill.clone(), s.bytes);
            }
        }
    }
    if configs.is_empty() || linear_params == 0 {
        return Err(ReportError::Input(format!(
            "{}: no evaluated configurations (is it a finished `skillzip weave` run?)",
            inputs
                .runs
                .first()
                .map_or("(no run)".into(), |r| r.display().to_string())
        )));
    }
    for needed in ["base", "target"] {
        if !configs.iter().any(|c| c.name == needed) {
            return Err(ReportError::Input(format!(
                "the runs evaluate no `{needed}` configuration"
            )));
        }
    }

    // The bundles the runs kept, opened (and their checksums verified) once.
    let mut bundles: BTreeMap<String, Bundle> = BTreeMap::new();
    for c in &configs {
        let dir = c.run.join(format!("bundle-{}", c.name));
        if dir.join("manifest.json").exists() {
            let bundle = Bundle::open(&dir)
                .map_err(|e| ReportError::Input(format!("{}: {e}", dir.display())))?;
            bundles.insert(c.name.clone(), bundle);
        }
    }

    // Layer errors: skillpack reports of kept bundles, or a baseline's per-layer file.
    let mut measured: BTreeMap<(String, String), Measured> = BTreeMap::new();
    for c in &configs {
        let baseline_dir = c.run.join(format!("baseline-{}", c.name));
        for skill in &skills {
            let m = measured.entry((c.name.clone(), skill.clone())).or_default();
            if let Some(bundle) = bundles.get(&c.name) {
                if bundle.manifest().skillpack(skill).is_some() {
                    (m.rel_output_error, m.rel_weight_error) = skillpack_errors(bundle, skill)?;
                }
            } else if baseline_dir.join(format!("{skill}.json")).exists() {
                let b: BaselineReport = read_json(&baseline_dir.join(format!("{skill}.json")))?;
                m.rel_output_error = mean(b.layers.iter().map(|l| l.rel_output_error));
                m.rel_weight_error = mean(b.layers.iter().map(|l| l.rel_weight_error));
            }
        }
    }

    // KL divergence from each fine-tune to base, and to every kept bundle's model.
    let mut kl_base: BTreeMap<String, f64> = BTreeMap::new();
    if inputs.kl_answers > 0 {
        let base_ckpt = Checkpoint::open(&inputs.base)
            .map_err(|e| ReportError::Input(format!("{}: {e}", inputs.base.display())))?;
        let tok = Tokenizer::of_checkpoint(&base_ckpt).map_err(|e| fail(e.to_string()))?;
        let got = base_fingerprint(&base_ckpt).map_err(|e| fail(e.to_string()))?;
        if Some(&got) != fingerprint.as_ref() {
            return Err(ReportError::Input(format!(
                "{}: not the base model the runs were made from",
                inputs.base.display()
            )));
        }
        let base_model = Llama::from_checkpoint(&base_ckpt).map_err(|e| fail(e.to_string()))?;
        // The fine-tunes and their answers come from the run that evaluated `target`.
        let target_run = &configs
            .iter()
            .find(|c| c.name == "target")
            .expect("checked")
            .run;
        for skill in &skills {
            progress(&format!("KL on {skill}: the fine-tune and the base"));
            let seqs = answer_sequences(
                target_run,
                skill,
                &tok,
                inputs.kl_answers,
                inputs.max_tokens,
            )?;
            let tuned_dir = target_run.join(skill).join("model");
            let tuned_ckpt = Checkpoint::open(&tuned_dir)
                .map_err(|e| ReportError::Input(format!("{}: {e}", tuned_dir.display())))?;
            let tuned = Llama::from_checkpoint(&tuned_ckpt).map_err(|e| fail(e.to_string()))?;
            let tuned_rows = seqs
                .iter()
                .map(|s| answer_rows(&tuned, s, &mut NoHook))
                .collect::<Result<Vec<_>>>()?;
            drop(tuned);
            let base_rows = seqs
                .iter()
                .map(|s| answer_rows(&base_model, s, &mut NoHook))
                .collect::<Result<Vec<_>>>()?;
            if let Some(kl) = mean_kl(&tuned_rows, &base_rows) {
                kl_base.insert(skill.clone(), kl);
            }
            for (name, bundle) in &bundles {
                if bundle.manifest().skillpack(skill).is_none() {
                    continue;
                }
                progress(&format!("KL on {skill}: {name}"));
                let (model, hook) = bundle_model(&base_ckpt, bundle, Some(skill))
                    .map_err(|e| ReportError::Input(format!("bundle-{name}: {e}")))?;
                let mut hook = hook.ok_or_else(|| fail(format!("{name}: no skillpack hook")))?;
                let rows = seqs
                    .iter()
                    .map(|s| answer_rows(&model, s, &mut hook))
                    .collect::<Result<Vec<_>>>()?;
                let m = measured.entry((name.clone(), skill.clone())).or_default();
                m.kl = mean_kl(&tuned_rows, &rows);
            }
        }
    }

    write_real(
        ctx,
        inputs,
        &configs,
        &skills,
        linear_params,
        &measured,
        &kl_base,
    )
}

fn mean(values: impl Iterator<Item = f64>) -> Option<f64> {
    let v: Vec<f64> = values.collect();
    (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or("-".into(), |v| num(v, digits))
}

/// Tables, CSVs and figures of the real-delta study.
fn write_real(
    ctx: &Context,
    inputs: &RealInputs,
    configs: &[Config],
    skills: &[String],
    linear_params: u64,
    measured: &BTreeMap<(String, String), Measured>,
    kl_base: &BTreeMap<String, f64>,
) -> Result<Section> {
    let find = |name: &str| configs.iter().find(|c| c.name == name).expect("checked");
    let (base, target) = (find("base"), find("target"));
    let rate = |c: &Config, s: &str| c.accuracy.get(s).map(Accuracy::rate);
    let gain_kept = |c: &Config, s: &str| -> Option<f64> {
        let (b, t, m) = (rate(base, s)?, rate(target, s)?, rate(c, s)?);
        (t != b).then(|| (m - b) / (t - b))
    };
    let bits = |c: &Config, s: &str| {
        c.bytes
            .get(s)
            .map(|b| *b as f64 * 8.0 / linear_params as f64)
    };
    let get = |c: &Config, s: &str| measured.get(&(c.name.clone(), s.to_string()));

    let mut per_skill = Table::new(&[
        "config",
        "skill",
        "n",
        "correct",
        "accuracy",
        "wilson_lo",
        "wilson_hi",
        "gain_kept",
        "bits_per_param",
        "rel_output_error",
        "rel_weight_error",
        "kl_from_tuned",
        "kl_tuned_base",
    ]);
    for c in configs {
        for s in skills {
            let Some(acc) = c.accuracy.get(s) else {
                continue;
            };
            let (lo, hi) = acc.wilson95();
            let m = get(c, s).cloned().unwrap_or_default();
            per_skill.push(vec![
                c.name.clone(),
                s.clone(),
                acc.total.to_string(),
                acc.correct.to_string(),
                num(acc.rate(), 4),
                num(lo, 4),
                num(hi, 4),
                opt(gain_kept(c, s), 3),
                opt(bits(c, s), 4),
                opt(m.rel_output_error, 5),
                opt(m.rel_weight_error, 5),
                opt(m.kl, 5),
                opt(kl_base.get(s).copied(), 5),
            ]);
        }
    }
    super::write_file(
        &ctx.path("fidelity_real_skills.csv"),
        per_skill.to_csv().as_bytes(),
    )?;

    struct Row {
        name: String,
        bits: Option<f64>,
        accuracy: Option<f64>,
        gain_kept: Option<f64>,
        rel_output_error: Option<f64>,
        rel_weight_error: Option<f64>,
        kl: Option<f64>,
    }
    let mut rows: Vec<Row> = configs
        .iter()
        .map(|c| {
            let over = |f: &dyn Fn(&str) -> Option<f64>| mean(skills.iter().filter_map(|s| f(s)));
            Row {
                name: c.name.clone(),
                bits: over(&|s| bits(c, s)),
                accuracy: over(&|s| rate(c, s)),
                gain_kept: None,
                rel_output_error: over(&|s| get(c, s).and_then(|m| m.rel_output_error)),
                rel_weight_error: over(&|s| get(c, s).and_then(|m| m.rel_weight_error)),
                kl: over(&|s| get(c, s).and_then(|m| m.kl)),
            }
        })
        .collect();
    // Gain kept, pooled over the skills a configuration, base and target all have:
    // (mean − base mean) / (target mean − base mean); a mean of per-skill shares would be
    // dominated by skills whose gain is within noise.
    for (r, c) in rows.iter_mut().zip(configs) {
        let common: Vec<&String> = skills
            .iter()
            .filter(|s| {
                [c, base, target]
                    .iter()
                    .all(|k| k.accuracy.contains_key(*s))
            })
            .collect();
        let over = |k: &Config| mean(common.iter().filter_map(|s| rate(k, s)));
        if let (Some(m), Some(b), Some(t)) = (over(c), over(base), over(target)) {
            r.gain_kept = (t != b).then(|| (m - b) / (t - b));
        }
    }
    let kl_tuned_base = mean(kl_base.values().copied());
    let mut summary = Table::new(&[
        "config",
        "bits_per_param",
        "mean_accuracy",
        "pooled_gain_kept",
        "rel_output_error",
        "rel_weight_error",
        "kl_from_tuned",
    ]);
    for r in &rows {
        summary.push(vec![
            r.name.clone(),
            opt(r.bits, 4),
            opt(r.accuracy, 4),
            opt(r.gain_kept, 3),
            opt(r.rel_output_error, 5),
            opt(r.rel_weight_error, 5),
            opt(r.kl, 5),
        ]);
    }
    super::write_file(&ctx.path("fidelity_real.csv"), summary.to_csv().as_bytes())?;

    // Figures: methods with storage, SkillZip and baselines apart.
    let is_ours = |name: &str| name.starts_with('X');
    let points = |ours: bool, y: &dyn Fn(&Row) -> Option<f64>| -> (Vec<(f64, f64)>, Vec<String>) {
        rows.iter()
            .filter(|r| is_ours(&r.name) == ours)
            .filter_map(|r| Some(((r.bits?, y(r)?), r.name.clone())))
            .unzip()
    };
    let series = |y: &dyn Fn(&Row) -> Option<f64>| -> Vec<Series> {
        [
            (true, "SkillZip (grids and ablations)"),
            (false, "baselines"),
        ]
        .into_iter()
        .enumerate()
        .filter_map(|(i, (ours, name))| {
            let (pts, labels) = points(ours, y);
            (!pts.is_empty()).then(|| {
                Series::line(name, pts)
                    .mark(Mark::Points)
                    .color(i)
                    .labels(labels)
            })
        })
        .collect()
    };
    let runs: Vec<String> = inputs
        .runs
        .iter()
        .map(|r| r.display().to_string())
        .collect();
    let runs_note = format!("runs: {}", runs.join(", "));
    let error_fig = Figure {
        stem: "pareto_real_error".into(),
        title: "Error vs storage on the real SmolLM2-135M skill deltas".into(),
        notes: vec![
            ctx.footer(),
            runs_note.clone(),
            "y: held-out relative output error per linear, mean over all layers and skills".into(),
        ],
        x: Axis::linear("bits per delta parameter (each skill's own part)"),
        y: Axis::linear("mean held-out relative output error"),
        series: series(&|r| r.rel_output_error),
        legend: super::plot::Corner::UpperRight,
    };
    let mut acc_series = series(&|r| r.accuracy);
    let bits: Vec<f64> = rows.iter().filter_map(|r| r.bits).collect();
    let span = (
        bits.iter().copied().fold(f64::INFINITY, f64::min),
        bits.iter().copied().fold(f64::NEG_INFINITY, f64::max),
    );
    for (i, (name, row)) in [("target (fine-tune)", "target"), ("base", "base")]
        .into_iter()
        .enumerate()
    {
        // Reference lines across the methods' storage range, where there is one.
        if bits.is_empty() {
            break;
        }
        if let Some(a) = rows.iter().find(|r| r.name == row).and_then(|r| r.accuracy) {
            acc_series.push(
                Series::line(name, vec![(span.0, a), (span.1, a)])
                    .mark(Mark::Dashed)
                    .color(2 + i),
            );
        }
    }
    let acc_fig = Figure {
        stem: "pareto_real_accuracy".into(),
        title: "Held-out accuracy vs storage on the real SmolLM2-135M skills".into(),
        notes: vec![
            ctx.footer(),
            runs_note,
            "y: greedy held-out task accuracy, mean over skills (n per skill in the table)".into(),
        ],
        x: Axis::linear("bits per delta parameter (each skill's own part)"),
        y: Axis::linear("mean held-out accuracy"),
        series: acc_series,
        legend: super::plot::Corner::LowerRight,
    };
    for fig in [&error_fig, &acc_fig] {
        if fig.series.is_empty() {
            return Err(study_err(REAL)(format!("{}: nothing to draw", fig.stem)));
        }
        super::plot::render(fig, &ctx.out)?;
    }

    let mut md = format!(
        "### Fidelity on the real SmolLM2-135M skill deltas\n\n\
         Run directories: {}. Skills: {}. Accuracy: greedy held-out tasks (from each run's \
         `results.json`). Errors: the held-out relative output error of every linear layer as \
         the compressor (skillpack metadata) or the baseline (`baseline-*/`) recorded it, mean \
         over layers and skills. KL: mean `KL(fine-tune ‖ configuration)` over the answer \
         tokens of {} of the fine-tune's own held-out answers per skill (at most {} tokens \
         each), for every configuration whose bundle the run kept (the baselines' weights are \
         not kept); `KL(fine-tune ‖ base)` is {}. Bits: each skill's own part over the {} \
         linear parameters its delta covers (a shared backbone delta is not counted).\n\n\
         ![error vs bits](./pareto_real_error.png)\n\n![accuracy vs bits](./pareto_real_accuracy.png)\n\n",
        runs.iter()
            .map(|r| format!("`{r}`"))
            .collect::<Vec<_>>()
            .join(", "),
        skills.join(", "),
        inputs.kl_answers,
        inputs.max_tokens,
        opt(kl_tuned_base, 4),
        linear_params
    );
    let mut shown = Table::new(&[
        "configuration",
        "bits/param",
        "accuracy (mean)",
        "gain kept (pooled)",
        "rel. output error",
        "rel. weight error",
        "KL from fine-tune",
    ]);
    for r in &rows {
        shown.push(vec![
            r.name.clone(),
            opt(r.bits, 3),
            r.accuracy
                .map_or("-".into(), |a| format!("{:.1} %", 100.0 * a)),
            r.gain_kept
                .map_or("-".into(), |g| format!("{:.0} %", 100.0 * g)),
            opt(r.rel_output_error, 4),
            opt(r.rel_weight_error, 4),
            opt(r.kl, 5),
        ]);
    }
    md.push_str(&shown.to_markdown());
    md.push_str(
        "\nPer-skill accuracy with Wilson intervals, gain kept and KL: `fidelity_real_skills.csv`.\n",
    );
    Ok(Section { markdown: md })
}

#[cfg(test)]
mod tests {
    use super::*;
    use skillzip_lm::config::LlamaConfig;

    #[test]
    fn answer_rows_are_the_distributions_of_the_answer_tokens() {
        let model = Llama::random(LlamaConfig::tiny(), 3, 1.0).unwrap();
        let ids = vec![1u32, 5, 7, 9, 11, 13];
        let start = 2;
        let rows = answer_rows(&model, &(ids.clone(), start), &mut NoHook).unwrap();
        // One row per answer token: row k is the distribution after ids[..start + k].
        assert_eq!(rows.len(), ids.len() - start);
        let full = log_prob_rows(&model, &ids, &mut NoHook).unwrap();
        for (k, row) in rows.iter().enumerate() {
            for (a, b) in row.iter().zip(&full[start - 1 + k]) {
                assert!((a - b).abs() < 1e-4, "row {k}: {a} vs {b}");
            }
        }
    }

    #[test]
    fn kl_over_no_positions_is_not_zero_but_absent() {
        assert_eq!(mean_kl(&[], &[]), None);
        let rows = || vec![vec![0.5f64.ln(), 0.5f64.ln()]];
        assert_eq!(mean_kl(&[rows()], &[rows()]), Some(0.0));
    }
}
