//! The serving study: `serve-min` with one backbone and every skillpack against the
//! separate-models baseline (each skill's merged full model, a memory budget of what the
//! shared server holds, LRU evict-and-reload), both in this process on a loopback port, loaded
//! by `serve-min`'s own load generator (Gamma arrivals, an even skill mix) at a few rates.
//! Skillpacks come from a bundle, or are random X8A8B8 layers of a bundle's shape on every
//! linear (serving cost does not depend on what a skillpack learned).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serve_min::bench::{self, BenchConfig, Report, RequestKind};
use serve_min::engine::{self, EngineConfig};
use serve_min::load::{self, Loaded, Parts};
use serve_min::server::{ServerOptions, ServerState, router};
use skillzip_lm::checkpoint::Checkpoint;
use skillzip_lm::model::Llama;
use skillzip_lm::tokenizer::Tokenizer;

use super::plot::{Axis, Figure, Mark, Series};
use super::table::{Table, num};
use super::{Context, Preset, ReportError, Result, Section};
use crate::random_skillpacks;

/// The study's name in the manifest.
pub const STUDY: &str = "serving";

/// What the paper and issue 7 say, for the figure's notes.
const PAPER: &str = "paper: 2.7–6× the request throughput of separate models; issue 7: ≥ 3× sustainable rate, ≥ 2× lower mean latency at a rate both sustain";

/// Inputs of the serving study.
#[derive(Debug, Clone)]
pub struct ServingInputs {
    /// The base checkpoint.
    pub base: PathBuf,
    /// A bundle made from it; without one, random skillpacks of rank 32 on every linear.
    pub bundle: Option<PathBuf>,
    /// Where the baseline's merged models are written (removed afterwards).
    pub scratch: PathBuf,
}

/// The load of one preset.
#[derive(Debug, Clone)]
struct Plan {
    random_skills: usize,
    random_rank: usize,
    prompt_tokens: usize,
    gen_tokens: usize,
    requests: usize,
    rates: Vec<f64>,
    /// Longest one request may take before the study fails.
    request_timeout: Duration,
}

fn plan(preset: Preset) -> Plan {
    match preset {
        Preset::Quick => Plan {
            random_skills: 2,
            random_rank: 32,
            prompt_tokens: 16,
            gen_tokens: 8,
            requests: 8,
            rates: vec![1.0],
            request_timeout: Duration::from_secs(120),
        },
        Preset::Full => Plan {
            random_skills: 4,
            random_rank: 32,
            prompt_tokens: 64,
            gen_tokens: 32,
            requests: 40,
            rates: vec![0.25, 0.5, 1.0, 1.5],
            request_timeout: Duration::from_secs(900),
        },
    }
}

/// The two servers compared.
const MODES: [&str; 2] = ["shared backbone + skillpacks", "separate full models"];

fn fail(message: impl std::fmt::Display) -> ReportError {
    ReportError::Study {
        study: STUDY,
        message: message.to_string(),
    }
}

/// The server's parts: from the bundle, or the base with random skillpacks.
fn parts(inputs: &ServingInputs, plan: &Plan) -> Result<Parts> {
    if let Some(bundle) = &inputs.bundle {
        return load::open(&inputs.base, Some(bundle)).map_err(fail);
    }
    let ckpt = Checkpoint::open(&inputs.base)
        .map_err(|e| ReportError::Input(format!("{}: {e}", inputs.base.display())))?;
    let config = ckpt.config().clone();
    let tokenizer = Tokenizer::of_checkpoint(&ckpt).map_err(fail)?;
    let model = Llama::from_checkpoint(&ckpt).map_err(fail)?;
    let backbone_hash = load::backbone_hash(&model).map_err(fail)?;
    let packs = random_skillpacks(
        &config,
        plan.random_skills,
        plan.random_rank,
        &backbone_hash,
        100,
    )
    .map_err(fail)?;
    Ok(Parts {
        model,
        tokenizer,
        backbone_hash,
        packs,
        router: None,
    })
}

/// Serves `loaded` on a loopback port and runs the load generator at every rate of `plan`.
fn measure(loaded: Loaded, plan: &Plan, progress: &mut dyn FnMut(&str)) -> Result<Vec<Report>> {
    let mix: Vec<(String, f64)> = loaded.skills.iter().map(|s| (s.clone(), 1.0)).collect();
    let context = loaded.backbone.config().max_position_embeddings;
    let tokenizer = loaded.backbone.tokenizer.clone();
    let handle = engine::start(
        loaded.backbone,
        EngineConfig {
            max_batch: 16,
            max_queue: 256,
        },
    )
    .map_err(fail)?;
    let options = ServerOptions {
        skills: loaded.skills,
        context,
        backbone_hash: loaded.backbone_hash,
        admin: false,
        routing: false,
        body_timeout: Duration::from_secs(30),
    };
    let state = Arc::new(ServerState::new(handle, tokenizer, options));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(fail)?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(fail)?;
        let addr = listener.local_addr().map_err(fail)?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve_min::server::serve(
            listener,
            router(state),
            Duration::from_secs(30),
            async {
                let _ = stopped.await;
            },
        ));
        let mut reports = Vec::new();
        for (i, &rate) in plan.rates.iter().enumerate() {
            progress(&format!("{rate} req/s"));
            let config = BenchConfig {
                addr,
                rate,
                cv: 1.0,
                requests: plan.requests,
                prompt_tokens: plan.prompt_tokens,
                gen_tokens: plan.gen_tokens,
                skills: mix.clone(),
                token_range: (256, 4096),
                seed: i as u64,
                timeout: plan.request_timeout,
                cancel_fraction: 0.0,
                malformed_fraction: 0.0,
            };
            let report = bench::run(&config).await.map_err(fail)?;
            if report.completed != report.requests {
                let why = report.records.iter().find_map(|r| r.error.clone());
                return Err(fail(format!(
                    "{} of {} requests completed at {rate} req/s: {}",
                    report.completed,
                    report.requests,
                    why.unwrap_or_default()
                )));
            }
            reports.push(report);
        }
        let _ = stop.send(());
        server.await.map_err(fail)?.map_err(fail)?;
        Ok(reports)
    })
}

/// A directory removed when dropped.
struct Scratch<'a>(&'a std::path::Path);

impl Drop for Scratch<'_> {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(self.0);
    }
}

/// The empirical CDF of sorted `values` as a step line: up by `1/n` at each value.
fn empirical_cdf(sorted: &[f64]) -> Vec<(f64, f64)> {
    let n = sorted.len() as f64;
    sorted
        .iter()
        .enumerate()
        .flat_map(|(k, &v)| [(v, k as f64 / n), (v, (k + 1) as f64 / n)])
        .collect()
}

/// Runs the study and writes `serving_summary.csv`, `serving_requests.csv` and the
/// `serving_latency_cdf` figure.
pub fn run(
    ctx: &Context,
    inputs: &ServingInputs,
    progress: &mut dyn FnMut(&str),
) -> Result<Section> {
    let plan = plan(ctx.preset);
    let mut results: Vec<(&str, Vec<Report>)> = Vec::new();
    let mut models = String::new();
    for mode in MODES {
        progress(&format!("{mode}: loading"));
        let parts = parts(inputs, &plan)?;
        // The baseline's merged models (a full model per skill) go when this scope ends,
        // whether the study succeeds or not.
        let _scratch = Scratch(&inputs.scratch);
        let loaded = if mode == MODES[0] {
            load::shared(parts, &inputs.base).map_err(fail)?
        } else {
            let _ = std::fs::remove_dir_all(&inputs.scratch);
            load::separate(parts, &inputs.scratch, None, |name| {
                progress(&format!("{mode}: writing the full model of {name}"))
            })
            .map_err(fail)?
        };
        models = loaded.skills.join(", ");
        let mut tagged = |line: &str| progress(&format!("{mode}: {line}"));
        results.push((mode, measure(loaded, &plan, &mut tagged)?));
    }

    let mut summary = Table::new(&[
        "server",
        "rate_req_s",
        "requests",
        "completed",
        "throughput_req_s",
        "tokens_s",
        "ttft_mean_ms",
        "latency_mean_ms",
        "latency_p50_ms",
        "latency_p99_ms",
        "tpot_ms",
    ]);
    let mut requests = Table::new(&[
        "server",
        "rate_req_s",
        "skill",
        "sent_s",
        "ttft_s",
        "latency_s",
        "tokens",
        "outcome",
    ]);
    for (mode, reports) in &results {
        for (rate, r) in plan.rates.iter().zip(reports) {
            summary.push(vec![
                mode.to_string(),
                rate.to_string(),
                r.requests.to_string(),
                r.completed.to_string(),
                num(r.request_throughput, 3),
                num(r.token_throughput, 1),
                num(r.ttft_ms.mean, 0),
                num(r.latency_ms.mean, 0),
                num(r.latency_ms.median, 0),
                num(r.latency_ms.p99, 0),
                num(r.tpot_ms, 1),
            ]);
            for rec in &r.records {
                requests.push(vec![
                    mode.to_string(),
                    rate.to_string(),
                    rec.skill.clone(),
                    num(rec.sent, 3),
                    rec.ttft.map_or("-".into(), |t| num(t, 3)),
                    num(rec.latency, 3),
                    rec.tokens.to_string(),
                    match (&rec.error, rec.kind) {
                        (Some(_), _) => "failed".into(),
                        (None, RequestKind::Normal) => "completed".into(),
                        (None, _) => "other".into(),
                    },
                ]);
            }
        }
    }
    super::write_file(
        &ctx.path("serving_summary.csv"),
        summary.to_csv().as_bytes(),
    )?;
    super::write_file(
        &ctx.path("serving_requests.csv"),
        requests.to_csv().as_bytes(),
    )?;

    // Latency CDFs: one colour per rate, solid for the shared server, dashed for the baseline.
    let mut series = Vec::new();
    for (m, (_, reports)) in results.iter().enumerate() {
        for (i, (rate, r)) in plan.rates.iter().zip(reports).enumerate() {
            let mut lat: Vec<f64> = r
                .records
                .iter()
                .filter(|x| x.error.is_none() && x.kind == RequestKind::Normal)
                .map(|x| x.latency)
                .collect();
            lat.sort_by(f64::total_cmp);
            let cdf = empirical_cdf(&lat);
            let short = if m == 0 { "shared" } else { "separate" };
            series.push(
                Series::line(&format!("{short}, {rate} req/s"), cdf)
                    .mark(if m == 0 { Mark::Line } else { Mark::Dashed })
                    .color(i),
            );
        }
    }
    let source = match &inputs.bundle {
        Some(b) => format!("bundle {}", b.display()),
        None => format!(
            "{} random X8A8B8 skillpacks of rank {} on every linear",
            plan.random_skills, plan.random_rank
        ),
    };
    let figure = Figure {
        stem: "serving_latency_cdf".into(),
        title: format!(
            "End-to-end latency CDF, {} prompt + {} generated tokens",
            plan.prompt_tokens, plan.gen_tokens
        ),
        notes: vec![
            ctx.footer(),
            format!("{}; {source}", inputs.base.display()),
            PAPER.into(),
        ],
        x: Axis::log("end-to-end latency (s)"),
        y: Axis::linear("fraction of requests"),
        series,
        legend: super::plot::Corner::LowerRight,
    };
    super::plot::render(&figure, &ctx.out)?;

    let mut md = format!(
        "### Serving: one backbone + skillpacks against separate full models\n\n\
         `serve-min` in this process on a loopback port, both servers in turn: the shared \
         backbone with {source} (skills {models}), and the separate-models baseline (each \
         skill's merged full model, memory budget = what the shared server holds, so one full \
         model is resident; LRU evict-and-reload). {} requests per rate, Gamma arrivals (cv 1), \
         an even skill mix, {} prompt + {} generated tokens, batch ≤ 16. {PAPER}.\n\n\
         ![latency CDF](./serving_latency_cdf.png)\n\n",
        plan.requests, plan.prompt_tokens, plan.gen_tokens
    );
    md.push_str(&summary.to_markdown());
    Ok(Section { markdown: md })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cdf_steps_up_at_each_value() {
        assert_eq!(
            empirical_cdf(&[1.0, 2.0]),
            [(1.0, 0.0), (1.0, 0.5), (2.0, 0.5), (2.0, 1.0)]
        );
        assert!(empirical_cdf(&[]).is_empty());
    }
}
