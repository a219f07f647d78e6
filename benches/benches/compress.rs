//! Compressing one delta with the full SkillZip pipeline against one exact thin SVD of the
//! same matrix (faer), measured in the same run (DESIGN.md §7: ratios, not absolute CPU times).
//!
//! `SKILLZIP_BENCH_SHAPES=q_proj` or `=down_proj` restricts the shapes (default: both).

use criterion::{Criterion, criterion_group, criterion_main};
use skillzip_benches::{DOWN_PROJ, Q_PROJ, Shape, fixture, full_config};
use skillzip_core::compress::{CalibrationData, compress};
use std::hint::black_box;

fn bench_shape(c: &mut Criterion, shape: Shape) {
    let (delta, splits) = fixture(shape);
    let data = CalibrationData {
        calibration: splits.calibration.as_ref(),
        selection: splits.selection.as_ref(),
    };
    let cfg = full_config(shape);
    let mut group = c.benchmark_group(format!("compress/{}", shape.name));
    group.sample_size(10);
    group.bench_function("exact_thin_svd", |b| {
        b.iter(|| black_box(delta.as_ref().thin_svd().expect("svd converges")))
    });
    group.bench_function("skillzip_full", |b| {
        b.iter(|| black_box(compress(delta.as_ref(), &data, &cfg).expect("compression succeeds")))
    });
    group.finish();
}

fn benches(c: &mut Criterion) {
    let which = std::env::var("SKILLZIP_BENCH_SHAPES").unwrap_or_default();
    for shape in [Q_PROJ, DOWN_PROJ] {
        if which.is_empty() || shape.name.ends_with(which.as_str()) {
            bench_shape(c, shape);
        }
    }
}

criterion_group!(compress_benches, benches);
criterion_main!(compress_benches);
