//! `skillzip demo`: the fidelity table on the built-in synthetic case.

use skillzip_core::study::{self, StudyCase};

/// Runs the built-in case and prints the table.
pub fn run(small: bool, seed: Option<u64>) -> Result<(), String> {
    let mut case = if small {
        StudyCase::small()
    } else {
        StudyCase::builtin()
    };
    if let Some(seed) = seed {
        case.seed = seed;
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
