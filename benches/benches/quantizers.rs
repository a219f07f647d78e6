//! The quantizers, measured in the same run as their plain-f32 anchors:
//!
//! - `activation_row/<C_i>`: smoothing + per-token INT8 quantization of one activation row by
//!   the reference `quant::quantize_activation_row` against one f32 pass over the row
//!   (`x ⊙ s⁻¹` into a buffer: the memory traffic any quantizer must make). The SIMD
//!   quantizers of the fast kernels run inside a call and are timed with it (`kernels`).
//! - `truncate/<R>`: the integer-only i32→i8 truncation of a rank-`R` intermediate.
//! - `weights/<shape>_r<R>`: RTN and GPTQ (low-rank path over 1024 calibration rows) of the
//!   `Â` factor (`R × C_i`) of the paper's shapes at INT8 and INT4.
//!
//! `SKILLZIP_BENCH_QUANT=activation,truncate,weights` restricts the groups (default all).

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use faer::Mat;
use rand::RngExt;
use skillzip_benches::{DOWN_PROJ, PAPER_RANKS, Q_PROJ, SMOLLM_SHAPES, SPLITS, activations};
use skillzip_core::gptq::{GptqConfig, WeightScales, gptq_from_activations, rtn};
use skillzip_core::quant::{ActScale, Bits, quantize_activation_row, truncate_row};
use skillzip_core::seeded_rng;
use skillzip_core::synth::{ActivationModel, power_law_matrix};

fn enabled(group: &str) -> bool {
    match std::env::var("SKILLZIP_BENCH_QUANT") {
        Ok(list) if !list.is_empty() => list.split(',').any(|g| g.trim() == group),
        _ => true,
    }
}

fn activation_rows(c: &mut Criterion) {
    let mut group = c.benchmark_group("activation_row");
    for c_in in [SMOLLM_SHAPES[2].c_in, Q_PROJ.c_in, DOWN_PROJ.c_in] {
        let x = activations(1, c_in, 11);
        let mut rng = seeded_rng(12);
        let s_inv: Vec<f32> = (0..c_in).map(|_| rng.random_range(0.5f32..2.0)).collect();
        let mut codes = vec![0i8; c_in];
        let mut smoothed = vec![0.0f32; c_in];
        group.throughput(Throughput::Elements(c_in as u64));
        group.bench_function(format!("{c_in}/int8_dynamic"), |b| {
            b.iter(|| {
                black_box(quantize_activation_row(
                    black_box(&x),
                    Some(&s_inv),
                    Bits::Int8,
                    ActScale::Dynamic,
                    &mut codes,
                ))
            })
        });
        group.bench_function(format!("{c_in}/f32_smooth_only"), |b| {
            b.iter(|| {
                for ((o, v), s) in smoothed.iter_mut().zip(black_box(&x)).zip(&s_inv) {
                    *o = v * s;
                }
                black_box(&smoothed);
            })
        });
    }
    group.finish();
}

fn truncation(c: &mut Criterion) {
    let mut group = c.benchmark_group("truncate");
    for rank in [32usize, 64].into_iter().chain(PAPER_RANKS) {
        let mut rng = seeded_rng(13);
        let z: Vec<i32> = (0..rank)
            .map(|_| rng.random_range(-5_000_000..5_000_000))
            .collect();
        let mut out = vec![0i8; rank];
        group.throughput(Throughput::Elements(rank as u64));
        group.bench_function(format!("{rank}"), |b| {
            b.iter(|| black_box(truncate_row(black_box(&z), &mut out)))
        });
    }
    group.finish();
}

fn weights(c: &mut Criterion) {
    for shape in [Q_PROJ, DOWN_PROJ] {
        let mut group = c.benchmark_group(format!("weights/{}_r{}", shape.name, shape.rank));
        group
            .sample_size(10)
            .measurement_time(Duration::from_secs(10));
        // Â in the paper's orientation for quantization: C_i × R (inputs × outputs).
        let a: Mat<f32> = power_law_matrix(shape.c_in, shape.rank, 0.5, 1.0, 14);
        let model = ActivationModel::new(shape.c_in, 64, shape.c_in / 256, 50.0, 15);
        let x = model.sample(SPLITS.0, 16);
        for bits in [Bits::Int8, Bits::Int4] {
            let name = if bits == Bits::Int8 { "int8" } else { "int4" };
            group.bench_function(format!("rtn_{name}"), |b| {
                b.iter(|| black_box(rtn(a.as_ref(), bits, WeightScales::PerTensor).unwrap()))
            });
            group.bench_function(format!("gptq_{name}"), |b| {
                b.iter(|| {
                    black_box(
                        gptq_from_activations(
                            a.as_ref(),
                            x.as_ref(),
                            bits,
                            WeightScales::PerTensor,
                            &GptqConfig::default(),
                        )
                        .unwrap(),
                    )
                })
            });
        }
        group.finish();
    }
}

fn benches(c: &mut Criterion) {
    if enabled("activation") {
        activation_rows(c);
    }
    if enabled("truncate") {
        truncation(c);
    }
    if enabled("weights") {
        weights(c);
    }
}

criterion_group!(quantizer_benches, benches);
criterion_main!(quantizer_benches);
