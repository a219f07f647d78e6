//! `report`: runs the fidelity, kernel and serving studies and writes their CSVs, figures
//! (SVG and PNG) and markdown into one directory; optionally splices the markdown into
//! BENCHMARKS.md. `--check DIR` verifies a report directory instead (what CI runs).
//!
//! Exit codes: `0` done, `1` a study or the check failed (one line says which and why),
//! `2` a wrong command line.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use skillzip_benches::report::{
    self, Context, Preset, ReportError, Section, fidelity, kernels, serving,
};

/// Regenerates the benchmark report: tables, CSVs and figures.
#[derive(Parser, Debug)]
#[command(name = "report", version, about, long_about = None)]
struct Cli {
    /// Small cases and few repetitions (minutes on two cores; what CI runs).
    #[arg(long, conflicts_with = "full")]
    quick: bool,
    /// The paper's shapes and the full serving grid (the default; about an hour on two cores
    /// without `--run`, longer with one).
    #[arg(long)]
    full: bool,
    /// The report directory (default: target/report/<preset>).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Studies to run, comma-separated: fidelity (the synthetic case; with --run also the
    /// real deltas), kernels, serving.
    #[arg(
        long,
        default_value = "fidelity,kernels,serving",
        value_delimiter = ','
    )]
    studies: Vec<String>,
    /// A finished `skillzip weave` run directory whose real skill deltas the fidelity study
    /// reads (repeat: later runs add the configurations earlier ones lack).
    #[arg(long = "run", value_name = "DIR")]
    runs: Vec<PathBuf>,
    /// The base checkpoint (default: $SKILLZIP_SMOLLM2_GGUF, else the file
    /// scripts/fetch-smollm2.sh caches).
    #[arg(long)]
    base: Option<PathBuf>,
    /// A bundle for the serving study (default: random skillpacks of rank 32).
    #[arg(long)]
    bundle: Option<PathBuf>,
    /// Held-out answers per skill the real-delta KL divergence is measured on (default: 2
    /// quick, 8 full; 0 skips the KL).
    #[arg(long)]
    kl_answers: Option<usize>,
    /// Write the report's markdown into this file between its report markers (appended as a
    /// new section the first time), with figure links relative to it.
    #[arg(long, value_name = "FILE")]
    benchmarks_md: Option<PathBuf>,
    /// Check a report directory instead of making one: the manifest, every CSV parses, every
    /// figure is an SVG and a PNG.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["quick", "full", "runs", "benchmarks_md"])]
    check: Option<PathBuf>,
    /// With --check: studies that must be in the report, comma-separated (fidelity_synthetic,
    /// fidelity_real, kernels, serving).
    #[arg(long, value_delimiter = ',', requires = "check")]
    require: Vec<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("report: {e}");
            ExitCode::from(1)
        }
    }
}

fn run(cli: Cli) -> Result<(), ReportError> {
    if let Some(dir) = &cli.check {
        let required: Vec<&str> = cli.require.iter().map(String::as_str).collect();
        let files = report::check(dir, &required)?;
        println!(
            "report check of {}: {} files good",
            dir.display(),
            files.len()
        );
        return Ok(());
    }
    let preset = if cli.quick {
        Preset::Quick
    } else {
        Preset::Full
    };
    for s in &cli.studies {
        if !["fidelity", "kernels", "serving"].contains(&s.as_str()) {
            return Err(ReportError::Input(format!(
                "--studies: unknown study {s:?} (fidelity, kernels, serving)"
            )));
        }
    }
    let wants = |s: &str| cli.studies.iter().any(|x| x == s);
    let out = cli
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from("target/report").join(preset.name()));
    std::fs::create_dir_all(&out).map_err(|source| ReportError::Io {
        path: out.clone(),
        source,
    })?;
    // A manifest left by an earlier report would let `--check` approve its files after this
    // run failed; the new one is written last.
    match std::fs::remove_file(out.join(report::MANIFEST)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(ReportError::Io {
                path: out.join(report::MANIFEST),
                source: e,
            });
        }
        _ => {}
    }
    let base = cli.base.clone().unwrap_or_else(skillzip_lm::smollm2_path);
    let needs_model = wants("serving") || (wants("fidelity") && !cli.runs.is_empty());
    if needs_model && !base.exists() {
        return Err(ReportError::Input(format!(
            "{}: the base model is not there (run scripts/fetch-smollm2.sh, pass --base, or \
             leave serving out with --studies)",
            base.display()
        )));
    }
    let ctx = Context {
        preset,
        machine: report::machine(),
        date: report::today(),
        command: command_line(),
        out: out.clone(),
    };
    let start = Instant::now();
    let say = |study: &str, line: &str| {
        eprintln!("[{:>6.1} s] {study}: {line}", start.elapsed().as_secs_f64());
    };
    let mut sections: Vec<(&str, Section)> = Vec::new();
    if wants("fidelity") {
        let section = fidelity::synthetic(&ctx, &mut |l| say(fidelity::SYNTHETIC, l))?;
        sections.push((fidelity::SYNTHETIC, section));
        if !cli.runs.is_empty() {
            let inputs = fidelity::RealInputs {
                runs: cli.runs.clone(),
                base: base.clone(),
                kl_answers: cli.kl_answers.unwrap_or(match preset {
                    Preset::Quick => 2,
                    Preset::Full => 8,
                }),
                max_tokens: 192,
            };
            let section = fidelity::real(&ctx, &inputs, &mut |l| say(fidelity::REAL, l))?;
            sections.push((fidelity::REAL, section));
        }
    }
    if wants("kernels") {
        let section = kernels::run(&ctx, &mut |l| say(kernels::STUDY, l))?;
        sections.push((kernels::STUDY, section));
    }
    if wants("serving") {
        let inputs = serving::ServingInputs {
            base: base.clone(),
            bundle: cli.bundle.clone(),
            scratch: out.join("separate-models.tmp"),
        };
        let section = serving::run(&ctx, &inputs, &mut |l| say(serving::STUDY, l))?;
        sections.push((serving::STUDY, section));
    }
    let markdown = report::finish(&ctx, &sections)?;
    // Checked before BENCHMARKS.md is touched, so a bad report never lands there.
    let files = report::check(&out, &[])?;
    if let Some(md) = &cli.benchmarks_md {
        report::update_benchmarks(md, &ctx, &markdown)?;
        eprintln!("report: wrote the report section of {}", md.display());
    }
    eprintln!(
        "report: {} files in {} after {:.0} s (checked)",
        files.len() + 2,
        out.display(),
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The command as typed, for every figure's footer; a build with debug assertions (the dev
/// or test profile, as CI uses) says so, since its timings mean nothing.
fn command_line() -> String {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let build = if cfg!(debug_assertions) {
        "cargo run -p skillzip-benches --bin report (debug-assertions build: timings not representative)"
    } else {
        "cargo run --release -p skillzip-benches --bin report"
    };
    format!("{build} -- {}", args.join(" "))
        .trim_end()
        .to_string()
}
