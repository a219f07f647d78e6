//! Accuracy and speed of the randomized truncated SVD against faer's exact thin SVD on a
//! delta-like matrix: a slowly decaying power-law spectrum plus a Gaussian noise floor.
//!
//! ```text
//! cargo run --release -p skillzip-core --example rsvd_accuracy -- [options]
//!   --rows M --cols N     matrix size (default 14336 × 4096, a Llama-style down_proj delta)
//!   --rank R              truncation rank (default 600)
//!   --k K                 rank of the power-law part (default min(1500, min(M, N)))
//!   --exponent A          σ_i = (i+1)^-A on the power-law part (default 0.6)
//!   --noise F             Gaussian floor whose largest singular value is about F·σ_{K-1}
//!                         (default 1.0; 0 disables it)
//!   --seed S              seed of the matrix and of the randomized SVD (default 1)
//!   --oversample P --power-iters Q   randomized parameters (default: the crate's defaults)
//!   --sweep P:Q,P:Q,...   also run these randomized parameter pairs
//!   --skip-exact          skip the exact SVD (reports the randomized error only)
//! ```
//!
//! The matrix is `U·diag(σ)·Vᵀ + s·G` with `U`, `V` the thin Q factors of Gaussian `M × K`
//! and `N × K` matrices (cheap for `K ≪ N`), so its spectrum is the power law on the first
//! `K` values blended into a Marchenko–Pastur bulk below.

use std::time::Instant;

use faer::linalg::matmul::matmul;
use faer::{Accum, Mat, MatRef};
use rand::RngExt;
use rand_distr::StandardNormal;
use skillzip_core::seeded_rng;
use skillzip_core::svd::{
    DEFAULT_OVERSAMPLE, DEFAULT_POWER_ITERS, LowRank, SvdMethod, truncated_svd,
};

struct Opts {
    rows: usize,
    cols: usize,
    rank: usize,
    k: Option<usize>,
    exponent: f64,
    noise: f64,
    seed: u64,
    oversample: usize,
    power_iters: usize,
    sweep: Vec<(usize, usize)>,
    skip_exact: bool,
}

fn parse() -> Result<Opts, String> {
    let mut o = Opts {
        rows: 14336,
        cols: 4096,
        rank: 600,
        k: None,
        exponent: 0.6,
        noise: 1.0,
        seed: 1,
        oversample: DEFAULT_OVERSAMPLE,
        power_iters: DEFAULT_POWER_ITERS,
        sweep: Vec::new(),
        skip_exact: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        if flag == "--skip-exact" {
            o.skip_exact = true;
            continue;
        }
        let val = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let bad = |e: &dyn std::fmt::Display| format!("{flag} {val}: {e}");
        match flag.as_str() {
            "--rows" => o.rows = val.parse().map_err(|e| bad(&e))?,
            "--cols" => o.cols = val.parse().map_err(|e| bad(&e))?,
            "--rank" => o.rank = val.parse().map_err(|e| bad(&e))?,
            "--k" => o.k = Some(val.parse().map_err(|e| bad(&e))?),
            "--exponent" => o.exponent = val.parse().map_err(|e| bad(&e))?,
            "--noise" => o.noise = val.parse().map_err(|e| bad(&e))?,
            "--seed" => o.seed = val.parse().map_err(|e| bad(&e))?,
            "--oversample" => o.oversample = val.parse().map_err(|e| bad(&e))?,
            "--power-iters" => o.power_iters = val.parse().map_err(|e| bad(&e))?,
            "--sweep" => {
                for pair in val.split(',') {
                    let (p, q) = pair.split_once(':').ok_or_else(|| bad(&"want P:Q"))?;
                    o.sweep.push((
                        p.parse().map_err(|e| bad(&e))?,
                        q.parse().map_err(|e| bad(&e))?,
                    ));
                }
            }
            _ => return Err(format!("unknown option {flag}")),
        }
    }
    Ok(o)
}

fn gaussian(rows: usize, cols: usize, seed: u64) -> Mat<f32> {
    let mut rng = seeded_rng(seed);
    let mut g = Mat::<f32>::zeros(rows, cols);
    for j in 0..cols {
        for x in g.col_mut(j).iter_mut() {
            *x = rng.sample(StandardNormal);
        }
    }
    g
}

fn build(o: &Opts, k: usize) -> (Mat<f32>, Vec<f64>) {
    let par = faer::get_global_parallelism();
    let sigma: Vec<f64> = (0..k).map(|i| ((i + 1) as f64).powf(-o.exponent)).collect();
    let mut u = gaussian(o.rows, k, o.seed.wrapping_mul(3))
        .qr()
        .compute_thin_Q();
    let v = gaussian(o.cols, k, o.seed.wrapping_mul(3) + 1)
        .qr()
        .compute_thin_Q();
    for (j, &s) in sigma.iter().enumerate() {
        for x in u.col_mut(j).iter_mut() {
            *x *= s as f32;
        }
    }
    let mut w = Mat::<f32>::zeros(o.rows, o.cols);
    if o.noise > 0.0 {
        // Largest singular value of an M × N Gaussian with entry std s is about s(√M + √N).
        let s = o.noise * sigma[k - 1] / ((o.rows as f64).sqrt() + (o.cols as f64).sqrt());
        let mut rng = seeded_rng(o.seed.wrapping_mul(3) + 2);
        for j in 0..o.cols {
            for x in w.col_mut(j).iter_mut() {
                *x = (s * rng.sample::<f64, _>(StandardNormal)) as f32;
            }
        }
        matmul(
            w.as_mut(),
            Accum::Add,
            u.as_ref(),
            v.transpose(),
            1.0f32,
            par,
        );
    } else {
        matmul(
            w.as_mut(),
            Accum::Replace,
            u.as_ref(),
            v.transpose(),
            1.0f32,
            par,
        );
    }
    (w, sigma)
}

fn frob(w: MatRef<'_, f32>) -> f64 {
    let mut acc = 0.0f64;
    for j in 0..w.ncols() {
        for &x in w.col(j).iter() {
            acc += f64::from(x) * f64::from(x);
        }
    }
    acc.sqrt()
}

/// ‖W − A·B‖_F / ‖W‖_F, in f64 accumulation.
fn rel_error(w: MatRef<'_, f32>, low: &LowRank, norm: f64) -> f64 {
    let p = low.product();
    let mut acc = 0.0f64;
    for j in 0..w.ncols() {
        for (&x, &y) in w.col(j).iter().zip(p.col(j).iter()) {
            let d = f64::from(x) - f64::from(y);
            acc += d * d;
        }
    }
    acc.sqrt() / norm
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let o = parse()?;
    let k =
        o.k.unwrap_or(1500.min(o.rows.min(o.cols)))
            .min(o.rows.min(o.cols));
    println!(
        "matrix {}×{} f32, power law σ_i=(i+1)^-{} on rank {k}, noise floor {}, rank R={}, threads={:?}",
        o.rows,
        o.cols,
        o.exponent,
        o.noise,
        o.rank,
        faer::get_global_parallelism()
    );
    let t = Instant::now();
    let (w, _sigma) = build(&o, k);
    let norm = frob(w.as_ref());
    println!(
        "built in {:.2} s, ‖W‖_F = {norm:.6}",
        t.elapsed().as_secs_f64()
    );

    let exact = if o.skip_exact {
        None
    } else {
        let t = Instant::now();
        let low = truncated_svd(w.as_ref(), o.rank, SvdMethod::Exact)?;
        let secs = t.elapsed().as_secs_f64();
        let e = rel_error(w.as_ref(), &low, norm);
        println!(
            "exact thin SVD:          {secs:8.2} s   rel. Frobenius error at R={}: {e:.6}",
            o.rank
        );
        Some((low, e))
    };

    let mut runs = vec![(o.oversample, o.power_iters)];
    runs.extend(o.sweep.iter().copied());
    for (p, q) in runs {
        let method = SvdMethod::Randomized {
            oversample: p,
            power_iters: q,
            seed: o.seed,
        };
        let t = Instant::now();
        let low = truncated_svd(w.as_ref(), o.rank, method)?;
        let secs = t.elapsed().as_secs_f64();
        let e = rel_error(w.as_ref(), &low, norm);
        print!(
            "randomized p={p:<3} q={q}: {secs:8.2} s   rel. Frobenius error at R={}: {e:.6}",
            o.rank
        );
        if let Some((ex, ee)) = &exact {
            let max_sig = ex
                .sigma
                .iter()
                .zip(&low.sigma)
                .map(|(a, b)| ((a - b) / a).abs())
                .fold(0.0f32, f32::max);
            print!("   ratio {:.5}   max rel σ error {max_sig:.2e}", e / ee);
        }
        println!();
    }
    Ok(())
}
