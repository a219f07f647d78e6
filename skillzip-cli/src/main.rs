//! `skillzip`: thin glue over `skillzip-core`.
//!
//! ```text
//! skillzip demo [--small] [--seed N]   fidelity table on the built-in synthetic case
//! skillzip help
//! ```

use std::process::ExitCode;

use skillzip_core::study::{self, StudyCase};

const USAGE: &str = "\
usage: skillzip <command> [options]

commands:
  demo [--small] [--seed N]   compress the built-in synthetic case (power-law skill deltas,
                              activations with outlier channels) with SkillZip, its ablations
                              and the baselines, and print the fidelity table
  help                        this text
";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("demo") => match demo(&args[1..]) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("skillzip demo: {e}");
                ExitCode::FAILURE
            }
        },
        Some("help") | Some("--help") | Some("-h") => {
            print!("{USAGE}");
            ExitCode::SUCCESS
        }
        Some(other) => {
            eprintln!("skillzip: unknown command `{other}`\n\n{USAGE}");
            ExitCode::from(2)
        }
        None => {
            eprint!("{USAGE}");
            ExitCode::from(2)
        }
    }
}

fn demo(args: &[String]) -> Result<(), String> {
    let mut case = StudyCase::builtin();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--small" => {
                case = StudyCase {
                    seed: case.seed,
                    ..StudyCase::small()
                }
            }
            "--seed" => {
                let v = it.next().ok_or("--seed needs a value")?;
                case.seed = v
                    .parse()
                    .map_err(|_| format!("--seed: `{v}` is not an unsigned integer"))?;
            }
            other => return Err(format!("unknown option `{other}`")),
        }
    }
    eprintln!(
        "built-in case: {} skills, delta {}x{} with sigma_i ~ (i+1)^-{}, {} outlier channels x{}, splits {}/{}/{} rows (calibration/selection/held-out), seed {}",
        case.skills,
        case.c_in,
        case.c_out,
        case.decay,
        case.outliers,
        case.outlier_gain,
        case.splits.0,
        case.splits.1,
        case.splits.2,
        case.seed
    );
    let start = std::time::Instant::now();
    let rows =
        study::run(&case, &mut |line| eprintln!("  done: {line}")).map_err(|e| e.to_string())?;
    println!();
    println!(
        "| method | rank | bits/param | bytes | ratio vs fp16 | rel. output error | rel. weight error |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for r in &rows {
        let f = &r.fidelity;
        println!(
            "| {} | {} | {:.3} | {} | {:.1}x | {:.4} | {:.4} |",
            r.method,
            r.rank.map_or("-".to_string(), |r| r.to_string()),
            f.bits_per_param,
            f.bytes,
            f.compression_ratio,
            f.rel_output_error,
            f.rel_weight_error
        );
    }
    println!();
    println!(
        "Errors: relative Frobenius error on held-out activations against the original delta (shared component applied exactly), mean over skills. Bytes include scales, smoothing vectors and padding."
    );
    println!();
    println!("Paper orderings:");
    for (statement, holds) in study::orderings(&rows) {
        println!("  [{}] {statement}", if holds { "holds" } else { "FAILS" });
    }
    eprintln!("\nfinished in {:.1} s", start.elapsed().as_secs_f64());
    Ok(())
}
