//! `serve-min`: serve a base model and a bundle's skillpacks over OpenAI-compatible HTTP.
//!
//! Exit codes: `0` after a clean shutdown (Ctrl-C), `1` when the server cannot start (one line
//! naming the file and the problem), `2` on a wrong command line.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, Parser, Subcommand};
use serve_min::bench::{self, BenchConfig};
use serve_min::engine::{self, EngineConfig};
use serve_min::server::{ServerOptions, ServerState, router};

/// One backbone, many skillpacks, OpenAI-compatible HTTP.
#[derive(Parser, Debug)]
#[command(name = "serve-min", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Serve the base model and every skillpack of a bundle.
    Serve(ServeArgs),
    /// Load a running server: Gamma arrivals, a skill mix, fixed prompt and generation
    /// lengths; prints the serving table (and writes every request with --json).
    Bench(BenchArgs),
}

#[derive(Args, Debug)]
struct ServeArgs {
    /// The base checkpoint (GGUF, model.safetensors or a sharded index).
    #[arg(long)]
    base: PathBuf,
    /// A bundle directory made by `skillzip compress` (or `skillzip weave`) from this
    /// base; without one only `base` is served.
    #[arg(long)]
    bundle: Option<PathBuf>,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Most requests decoding at once.
    #[arg(long, default_value_t = 16)]
    max_batch: usize,
    /// Most requests waiting; more are answered 503.
    #[arg(long, default_value_t = 64)]
    max_queue: usize,
    /// Enable `POST /admin/skillpacks` (load a skillpack file named in the body) and
    /// `DELETE /admin/skillpacks/NAME`. The server then reads files clients name: keep
    /// it on a trusted address.
    #[arg(long)]
    admin: bool,
    /// Seconds a client may take to send its request body (then 408).
    #[arg(long, default_value_t = 30.0)]
    body_timeout_s: f64,
    /// Seconds a client may take to send a request's header (then the connection closes);
    /// also how long an idle kept-alive connection stays open.
    #[arg(long, default_value_t = 30.0)]
    header_timeout_s: f64,
    /// Serve the separate-models baseline instead: each skill as its own full model (the
    /// backbone with the skillpack's delta merged in), written under this directory and
    /// read back on demand when the memory budget had evicted it.
    #[arg(long, value_name = "DIR")]
    separate_models: Option<PathBuf>,
    /// With --separate-models: MiB of weights resident at once (default: what the shared
    /// backbone needs, the backbone plus every skillpack).
    #[arg(long, requires = "separate_models")]
    memory_budget_mib: Option<u64>,
}

#[derive(Args, Debug)]
struct BenchArgs {
    /// The server's address.
    #[arg(long, default_value = "127.0.0.1:8080")]
    server: SocketAddr,
    /// Mean arrival rate, requests per second.
    #[arg(long)]
    rate: f64,
    /// Requests to send.
    #[arg(long, default_value_t = 100)]
    requests: usize,
    /// Coefficient of variation of the arrival gaps (1: Poisson).
    #[arg(long, default_value_t = 1.0)]
    cv: f64,
    /// Prompt length, tokens.
    #[arg(long, default_value_t = 64)]
    prompt_tokens: usize,
    /// Tokens generated per request.
    #[arg(long, default_value_t = 32)]
    gen_tokens: usize,
    /// The skill mix: NAME or NAME:WEIGHT, comma-separated (e.g. math,code:2,base).
    #[arg(long, default_value = "base")]
    skills: String,
    /// Prompt token ids are drawn from LO:HI (half-open).
    #[arg(long, default_value = "256:4096")]
    token_range: String,
    /// Seed of arrivals, skills and prompts.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Seconds before a request counts as failed.
    #[arg(long, default_value_t = 600.0)]
    timeout_s: f64,
    /// Write the report with every request as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Fraction of requests the client cancels part-way (a soak run).
    #[arg(long, default_value_t = 0.0)]
    cancel_fraction: f64,
    /// Fraction of requests replaced by malformed ones, each of which must get a 4xx.
    #[arg(long, default_value_t = 0.0)]
    malformed_fraction: f64,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("serve-min: {e}");
            ExitCode::from(1)
        }
    }
}

fn run(cli: Cli) -> serve_min::Result<()> {
    match cli.command {
        Command::Serve(args) => run_server(args),
        Command::Bench(BenchArgs {
            server,
            rate,
            requests,
            cv,
            prompt_tokens,
            gen_tokens,
            skills,
            token_range,
            seed,
            timeout_s,
            json,
            cancel_fraction,
            malformed_fraction,
        }) => {
            let config = BenchConfig {
                addr: server,
                rate,
                cv,
                requests,
                prompt_tokens,
                gen_tokens,
                skills: parse_mix(&skills)?,
                token_range: parse_range(&token_range)?,
                seed,
                timeout: seconds(timeout_s, "--timeout-s")?,
                cancel_fraction,
                malformed_fraction,
            };
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            eprintln!(
                "serve-min bench: {requests} requests at {rate}/s (cv {cv}) to {server}, \
                 {prompt_tokens} prompt + {gen_tokens} generated tokens, skills {skills}"
            );
            let report = runtime.block_on(bench::run(&config))?;
            print!("{}", report.table());
            for r in report.records.iter().filter(|r| r.error.is_some()).take(5) {
                eprintln!(
                    "failed ({}, {:?}): {}",
                    r.skill,
                    r.kind,
                    r.error.as_deref().unwrap_or("")
                );
            }
            if let Some(path) = json {
                let text = serde_json::to_vec_pretty(&report)
                    .map_err(|e| serve_min::Error::Config(e.to_string()))?;
                skillzip_format::write_atomic_bytes(&path, &text)?;
            }
            Ok(())
        }
    }
}

/// `math,code:2` → `[("math", 1), ("code", 2)]`.
fn parse_mix(text: &str) -> serve_min::Result<Vec<(String, f64)>> {
    text.split(',')
        .map(|item| {
            let (name, weight) = match item.split_once(':') {
                Some((n, w)) => (n, w.parse::<f64>().ok()),
                None => (item, Some(1.0)),
            };
            match weight {
                Some(w) if !name.is_empty() && w.is_finite() && w > 0.0 => {
                    Ok((name.to_string(), w))
                }
                _ => Err(serve_min::Error::Config(format!(
                    "--skills: {item:?} is not NAME or NAME:WEIGHT (weight > 0)"
                ))),
            }
        })
        .collect()
}

/// `LO:HI` → `(LO, HI)`.
fn parse_range(text: &str) -> serve_min::Result<(u32, u32)> {
    text.split_once(':')
        .and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)))
        .filter(|(a, b)| a < b)
        .ok_or_else(|| {
            serve_min::Error::Config(format!("--token-range {text:?} is not LO:HI with LO < HI"))
        })
}

fn seconds(value: f64, flag: &str) -> serve_min::Result<std::time::Duration> {
    if value.is_finite() && value > 0.0 && value <= 86_400.0 {
        Ok(std::time::Duration::from_secs_f64(value))
    } else {
        Err(serve_min::Error::Config(format!(
            "{flag} must be a number of seconds in (0, 86400]"
        )))
    }
}

fn run_server(args: ServeArgs) -> serve_min::Result<()> {
    let ServeArgs {
        base,
        bundle,
        listen,
        max_batch,
        max_queue,
        admin,
        body_timeout_s,
        header_timeout_s,
        separate_models,
        memory_budget_mib,
    } = args;
    let body_timeout = seconds(body_timeout_s, "--body-timeout-s")?;
    let header_timeout = seconds(header_timeout_s, "--header-timeout-s")?;
    if max_batch == 0 || max_queue == 0 {
        return Err(serve_min::Error::Config(
            "--max-batch and --max-queue must be at least 1".into(),
        ));
    }
    eprintln!("serve-min: loading {}", base.display());
    let loaded = match &separate_models {
        None => serve_min::load::backbone(&base, bundle.as_deref())?,
        Some(dir) => {
            if admin {
                return Err(serve_min::Error::Config(
                    "--admin: the separate-models baseline serves a fixed set of models".into(),
                ));
            }
            let budget = memory_budget_mib.map(|m| m.saturating_mul(1 << 20));
            let loaded =
                serve_min::load::separate_models(&base, bundle.as_deref(), dir, budget, |name| {
                    eprintln!("serve-min: writing the full model of {name}")
                })?;
            if let engine::Weights::Separate(store) = &loaded.backbone.weights {
                eprintln!(
                    "serve-min: separate models of {} MiB each, {} resident at once",
                    store.model_bytes() >> 20,
                    store.capacity()
                );
            }
            loaded
        }
    };
    let backbone = loaded.backbone;
    let routing = backbone.router.is_some();
    let context = backbone.config().max_position_embeddings;
    let tokenizer = backbone.tokenizer.clone();
    let handle = engine::start(
        backbone,
        EngineConfig {
            max_batch,
            max_queue,
        },
    )?;
    let names = loaded.skills.clone();
    let options = ServerOptions {
        skills: loaded.skills,
        context,
        backbone_hash: loaded.backbone_hash,
        admin,
        routing,
        body_timeout,
    };
    let state = Arc::new(ServerState::new(handle, tokenizer, options));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(listen).await?;
        eprintln!(
            "serve-min: listening on http://{} (models: base{})",
            listener.local_addr()?,
            names.iter().map(|n| format!(", {n}")).collect::<String>()
        );
        serve_min::server::serve(listener, router(state), header_timeout, async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
        Ok(())
    })
}
