//! Timing and memory check of GPTQ at layer scale (no criterion; run under `/usr/bin/time -v`
//! for the peak RSS).
//!
//! ```text
//! cargo run --release -p skillzip-core --example gptq_scale -- IN OUT TOKENS \
//!     [owned|borrowed|activations|low-rank|compare]
//! ```
//!
//! Builds correlated activations `X = G·L + noise` (`TOKENS × IN`), a Gaussian weight
//! `IN × OUT`, then times RTN and GPTQ (INT4, per output channel) and prints the calibration
//! output error of both:
//!
//! - `owned` (default): `H = XᵀX`, then `gptq_owned` (one `IN × IN` matrix alive);
//! - `borrowed`: `H = XᵀX`, then `gptq` with `&H` (two);
//! - `activations`: `gptq_from_activations(W, X)` only (the low-rank path when
//!   `low_rank_is_preferred`, roughly `TOKENS ≲ IN/3`; `H` is never formed);
//! - `low-rank`: `gptq_low_rank(W, X)`, the low-rank path forced whatever `TOKENS` (for
//!   locating the crossover with `owned`);
//! - `compare`: `gptq_low_rank(W, X)` (forced; the line says which path
//!   `gptq_from_activations` would take), then the dense `gptq_owned(W, hessian(X))` (Hessian
//!   time included), each with its time and the peak RSS of its phase (`VmHWM`, reset between
//!   phases through `/proc/self/clear_refs`; allocator caching can keep the baseline high),
//!   and the fraction of identical codes.
//!
//! For the whole-process peak RSS of one path, run `owned` or `activations` under
//! `/usr/bin/time -v`.

use std::time::Instant;

use faer::Mat;
use rand_distr::{Distribution, StandardNormal};
use skillzip_core::gptq::{
    GptqConfig, WeightScales, gptq, gptq_from_activations, gptq_low_rank, gptq_owned, hessian,
    low_rank_is_preferred, rtn,
};
use skillzip_core::quant::{Bits, Quantized};
use skillzip_core::seeded_rng;

fn gaussian(rows: usize, cols: usize, seed: u64) -> Mat<f32> {
    let mut rng = seeded_rng(seed);
    Mat::from_fn(rows, cols, |_, _| {
        let v: f64 = StandardNormal.sample(&mut rng);
        v as f32
    })
}

/// `‖X·(W − Ŵ)‖_F / ‖X·W‖_F` on the first `rows` tokens.
fn rel_output_error(x: &Mat<f32>, w: &Mat<f32>, q: &Quantized, rows: usize) -> f64 {
    let d = q.dequantize();
    let (n, m) = (w.nrows(), w.ncols());
    let diff = Mat::from_fn(n, m, |i, o| w[(i, o)] - d[o * n + i]);
    let xs = x.as_ref().subrows(0, rows.min(x.nrows()));
    let e = xs * &diff;
    let y = xs * w;
    (e.norm_l2() / y.norm_l2()) as f64
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let n: usize = args.get(1).map_or(4096, |s| s.parse().expect("IN"));
    let m: usize = args.get(2).map_or(600, |s| s.parse().expect("OUT"));
    let t: usize = args.get(3).map_or(1024, |s| s.parse().expect("TOKENS"));
    let mode = args.get(4).map_or("owned", |s| s.as_str());
    assert!(
        ["owned", "borrowed", "activations", "low-rank", "compare"].contains(&mode),
        "unknown mode {mode}"
    );
    let owned = mode == "owned";

    let t0 = Instant::now();
    let latent = 64.min(n);
    let g = gaussian(t, latent, 1);
    let l = gaussian(latent, n, 2);
    let noise = gaussian(t, n, 3);
    let x = Mat::from_fn(t, n, |r, c| noise[(r, c)] * 0.1) + &g * &l;
    drop(noise);
    let w = gaussian(n, m, 4);
    println!(
        "in={n} out={m} tokens={t} threads={} mode={mode}",
        rayon_threads()
    );
    println!("data: {:.2}s", t0.elapsed().as_secs_f64());
    if mode != "owned" && mode != "borrowed" {
        from_activations(&x, &w, mode);
        return;
    }

    let t1 = Instant::now();
    let h = hessian(x.as_ref()).expect("hessian");
    println!("hessian XᵀX: {:.2}s", t1.elapsed().as_secs_f64());

    let t2 = Instant::now();
    let r = rtn(w.as_ref(), Bits::Int4, WeightScales::PerOutput).expect("rtn");
    println!("rtn: {:.3}s", t2.elapsed().as_secs_f64());

    let cfg = GptqConfig::default();
    let t3 = Instant::now();
    let q = if owned {
        gptq_owned(w.as_ref(), h, Bits::Int4, WeightScales::PerOutput, &cfg)
    } else {
        let q = gptq(
            w.as_ref(),
            h.as_ref(),
            Bits::Int4,
            WeightScales::PerOutput,
            &cfg,
        );
        drop(h);
        q
    }
    .expect("gptq");
    println!(
        "gptq (INT4 per-output, block 128): {:.2}s",
        t3.elapsed().as_secs_f64()
    );

    let rows = 256;
    println!(
        "relative calibration output error on {rows} tokens: rtn {:.4} gptq {:.4}",
        rel_output_error(&x, &w, &r, rows),
        rel_output_error(&x, &w, &q, rows)
    );
}

/// `activations`, `low-rank` and `compare` modes.
fn from_activations(x: &Mat<f32>, w: &Mat<f32>, mode: &str) {
    let (bits, scales) = (Bits::Int4, WeightScales::PerOutput);
    let cfg = GptqConfig::default();
    let forced = mode != "activations";
    let preferred = if low_rank_is_preferred(x.nrows(), w.nrows(), w.ncols(), &cfg) {
        "low-rank"
    } else {
        "dense"
    };
    println!("gptq_from_activations would take the {preferred} path");
    let path = if forced { "low-rank" } else { preferred };
    let base = reset_peak_rss();
    let t0 = Instant::now();
    let q = if forced {
        gptq_low_rank(w.as_ref(), x.as_ref(), bits, scales, &cfg)
    } else {
        gptq_from_activations(w.as_ref(), x.as_ref(), bits, scales, &cfg)
    }
    .expect("gptq");
    println!(
        "{} ({path} path; INT4 per-output, block 128): {:.2}s, phase peak RSS {} (before: {})",
        if forced {
            "gptq_low_rank"
        } else {
            "gptq_from_activations"
        },
        t0.elapsed().as_secs_f64(),
        fmt_kib(peak_rss_kib()),
        fmt_kib(base)
    );
    let rows = 256;
    println!(
        "relative calibration output error on {rows} tokens: {path} gptq {:.4}",
        rel_output_error(x, w, &q, rows)
    );
    if mode != "compare" {
        return;
    }
    let base = reset_peak_rss();
    let t1 = Instant::now();
    let h = hessian(x.as_ref()).expect("hessian");
    let th = t1.elapsed().as_secs_f64();
    let d = gptq_owned(w.as_ref(), h, bits, scales, &cfg).expect("gptq");
    println!(
        "dense hessian + gptq_owned: {:.2}s (hessian {th:.2}s), phase peak RSS {} (before: {})",
        t1.elapsed().as_secs_f64(),
        fmt_kib(peak_rss_kib()),
        fmt_kib(base)
    );
    println!(
        "relative calibration output error on {rows} tokens: dense gptq {:.4}",
        rel_output_error(x, w, &d, rows)
    );
    let same = q.codes.iter().zip(&d.codes).filter(|(a, b)| a == b).count();
    let max_step = q
        .codes
        .iter()
        .zip(&d.codes)
        .map(|(&a, &b)| (a as i32 - b as i32).abs())
        .max()
        .unwrap_or(0);
    println!(
        "identical codes: {same} of {} ({:.4}%), largest difference {max_step} step(s), scales \
         identical: {}",
        q.codes.len(),
        100.0 * same as f64 / q.codes.len() as f64,
        q.scales == d.scales
    );
}

/// `VmHWM` of this process in KiB (0 where `/proc` is unavailable).
fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// Resets `VmHWM` to the current RSS (Linux `clear_refs` value 5) and returns the new value.
fn reset_peak_rss() -> u64 {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    peak_rss_kib()
}

fn fmt_kib(k: u64) -> String {
    format!("{:.1} MiB", k as f64 / 1024.0)
}

fn rayon_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |p| p.get())
}
