//! Compresses one delta of a paper shape once and reports the time of each step against one
//! exact thin SVD of the same matrix, and the process's peak RSS.
//!
//! usage: compress_once [q_proj|down_proj] [--no-svd]

use std::time::Instant;

use skillzip_benches::{DOWN_PROJ, Q_PROJ, fixture, full_config, peak_rss_bytes};
use skillzip_core::compress::{CalibrationData, compress_with_progress};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let shape = match args.first().map(String::as_str) {
        Some("down_proj") | None => DOWN_PROJ,
        Some("q_proj") => Q_PROJ,
        Some(other) => {
            eprintln!("unknown shape `{other}` (q_proj or down_proj)");
            std::process::exit(2);
        }
    };
    let with_svd = !args.iter().any(|a| a == "--no-svd");
    let t = Instant::now();
    let (delta, splits) = fixture(shape);
    eprintln!(
        "fixture {}x{} built in {:.1} s",
        shape.c_in,
        shape.c_out,
        t.elapsed().as_secs_f64()
    );
    let data = CalibrationData {
        calibration: splits.calibration.as_ref(),
        selection: splits.selection.as_ref(),
    };
    let cfg = full_config(shape);
    let rss_before = peak_rss_bytes().unwrap_or(0);
    let t = Instant::now();
    let mut last = Instant::now();
    let c = compress_with_progress(delta.as_ref(), &data, &cfg, &mut |step| {
        eprintln!("  {:>6.1} s  {step:?}", last.elapsed().as_secs_f64());
        last = Instant::now();
    })
    .expect("compression succeeds");
    let compress_s = t.elapsed().as_secs_f64();
    let rss_after = peak_rss_bytes().unwrap_or(0);
    println!(
        "{}: SkillZip full (R={}, α grid {:?}, {} rotations, GPTQ, {} calibration tokens): {:.1} s; α = {:?}, rotation {:?}, selection error {:.4}",
        shape.name,
        cfg.rank,
        cfg.alpha_grid,
        cfg.rotation_candidates,
        c.calibration_tokens,
        compress_s,
        c.alpha,
        c.rotation_candidate,
        c.selection_error
    );
    println!(
        "peak RSS: {:.2} GiB after compression ({:.2} GiB before it: inputs)",
        rss_after as f64 / (1u64 << 30) as f64,
        rss_before as f64 / (1u64 << 30) as f64
    );
    if with_svd {
        let t = Instant::now();
        let svd = delta.as_ref().thin_svd().expect("svd converges");
        let svd_s = t.elapsed().as_secs_f64();
        std::hint::black_box(&svd);
        println!(
            "{}: exact thin SVD (faer): {:.1} s; ratio SkillZip / SVD = {:.2}",
            shape.name,
            svd_s,
            compress_s / svd_s
        );
    }
}
