//! Timing and memory check of GPTQ at layer scale (no criterion; run under `/usr/bin/time -v`
//! for the peak RSS).
//!
//! ```text
//! cargo run --release -p skillzip-core --example gptq_scale -- IN OUT TOKENS [owned|borrowed]
//! ```
//!
//! Builds correlated activations `X = G·L + noise` (`TOKENS × IN`), `H = XᵀX`, a Gaussian
//! weight `IN × OUT`, then times RTN and GPTQ (INT4, per output channel) and prints the
//! calibration output error of both. `owned` (default) hands `H` to `gptq_owned` (one
//! `IN × IN` matrix alive); `borrowed` calls `gptq` with `&H` (two).

use std::time::Instant;

use faer::Mat;
use rand_distr::{Distribution, StandardNormal};
use skillzip_core::gptq::{GptqConfig, WeightScales, gptq, gptq_owned, hessian, rtn};
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
    let owned = args.get(4).is_none_or(|s| s == "owned");

    let t0 = Instant::now();
    let latent = 64.min(n);
    let g = gaussian(t, latent, 1);
    let l = gaussian(latent, n, 2);
    let noise = gaussian(t, n, 3);
    let x = Mat::from_fn(t, n, |r, c| noise[(r, c)] * 0.1) + &g * &l;
    drop(noise);
    let w = gaussian(n, m, 4);
    println!(
        "in={n} out={m} tokens={t} threads={} mode={}",
        rayon_threads(),
        if owned { "owned" } else { "borrowed" }
    );
    println!("data: {:.2}s", t0.elapsed().as_secs_f64());

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

fn rayon_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |p| p.get())
}
