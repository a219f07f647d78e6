//! `serve-min`: serve a base model and a bundle's skillpacks over OpenAI-compatible HTTP.
//!
//! Exit codes: `0` after a clean shutdown (Ctrl-C), `1` when the server cannot start (one line
//! naming the file and the problem), `2` on a wrong command line.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
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
    Serve {
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
    },
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
    let Command::Serve {
        base,
        bundle,
        listen,
        max_batch,
        max_queue,
        admin,
        body_timeout_s,
    } = cli.command;
    if !(body_timeout_s.is_finite() && body_timeout_s > 0.0 && body_timeout_s <= 86_400.0) {
        return Err(serve_min::Error::Config(
            "--body-timeout-s must be a number of seconds in (0, 86400]".into(),
        ));
    }
    if max_batch == 0 || max_queue == 0 {
        return Err(serve_min::Error::Config(
            "--max-batch and --max-queue must be at least 1".into(),
        ));
    }
    eprintln!("serve-min: loading {}", base.display());
    let loaded = serve_min::load::backbone(&base, bundle.as_deref())?;
    let backbone = loaded.backbone;
    let context = backbone.model.config().max_position_embeddings;
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
        body_timeout: std::time::Duration::from_secs_f64(body_timeout_s),
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
        axum::serve(listener, router(state))
            .with_graceful_shutdown(async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await?;
        Ok(())
    })
}
