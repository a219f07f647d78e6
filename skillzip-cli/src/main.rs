//! `skillzip`: thin glue over `skillzip-core` (the math), `skillzip-lm` (the model, calibration,
//! model-level compression), `skillzip-harness` (self-generation, LN-DPO, the weave pipeline)
//! and `skillzip-format` (the files).
//!
//! Exit codes: `0` success; `1` the command failed (one line on stderr naming the file and the
//! problem); `2` the command line is wrong (usage printed).

mod commands;
mod demo;
mod inputs;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// One LLM, many skills: compress fine-tuned deltas into INT8/INT4 skillpacks.
#[derive(Parser, Debug)]
#[command(name = "skillzip", version, about, long_about = None)]
#[command(
    after_help = "Exit codes: 0 success, 1 failure (one line naming the file and the problem), 2 usage error."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// No progress bars (per-step lines still go to stderr); implied when stderr is not a
    /// terminal, so a redirected log keeps every stage line.
    #[arg(long, global = true)]
    quiet: bool,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Compress the built-in synthetic case with SkillZip, its ablations and the baselines and
    /// print the fidelity table.
    Demo {
        /// The small case (seconds instead of half a minute).
        #[arg(long)]
        small: bool,
        /// Seed of the case.
        #[arg(long)]
        seed: Option<u64>,
    },
    /// Run the base model over a skill's prompts and save its calibration statistics.
    Calibrate(commands::calibrate::Args),
    /// Compress fine-tuned checkpoints against their base into a bundle.
    Compress(commands::compress::Args),
    /// Show what a skillpack file or a bundle directory holds.
    Inspect {
        /// A `.skillpack.safetensors` file or a bundle directory.
        path: PathBuf,
        /// Print every layer.
        #[arg(long)]
        layers: bool,
    },
    /// Merge fine-tuned checkpoints into one checkpoint (mergekit semantics).
    Merge(commands::merge::Args),
    /// Export a bundle's skill as a PEFT LoRA adapter plus the merged backbone checkpoint.
    Export(commands::export::Args),
    /// Compare fine-tuned models with backbone + skillpack: KL divergence, top-1 agreement,
    /// response loss.
    Eval(commands::eval::Args),
    /// A short supervised fine-tune of the linear layers on a built-in task (makes real
    /// skill deltas for trying the pipeline before the training harness exists).
    Finetune(commands::finetune::Args),
    /// SkillWeave end to end: per skill self-generate, verify, train with LN-DPO; compress
    /// every skill's delta into skillpacks; evaluate base, fine-tunes and skillpacks on
    /// held-out tasks.
    Weave(commands::weave::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // A hidden progress bar swallows the lines printed through it: without a terminal,
    // print plain lines instead.
    let quiet = cli.quiet || !std::io::stderr().is_terminal();
    let result = match cli.command {
        Command::Demo { small, seed } => demo::run(small, seed),
        Command::Calibrate(a) => commands::calibrate::run(a, quiet),
        Command::Compress(a) => commands::compress::run(a, quiet),
        Command::Inspect { path, layers } => commands::inspect::run(&path, layers),
        Command::Merge(a) => commands::merge::run(a, quiet),
        Command::Export(a) => commands::export::run(a),
        Command::Eval(a) => commands::eval::run(a, quiet),
        Command::Finetune(a) => commands::finetune::run(a, quiet),
        Command::Weave(a) => commands::weave::run(a, quiet),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("skillzip: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn the_command_line_definition_is_consistent() {
        super::Cli::command().debug_assert();
    }
}
