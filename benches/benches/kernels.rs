//! The CPU skillpack kernels against their floors and baselines, measured in the same run:
//!
//! - `decode/<shape>/T<t>`: X8A8B8 on every available instruction-set path (forced) vs
//!   `floor_read` (streaming the same packed bytes of Â + B̂ through memory with the same
//!   threads), f32 dense `X·W` and f32 low-rank `X·A·B` (faer).
//! - `prefill/<shape>/T1000`: X8A8B8 per path vs f32 low-rank (faer).
//! - `smollm/<shape>_r<R>/T1`: the server's small shapes, where per-call overhead dominates.
//! - `grouped/<shape>/T32`: 32 decode tokens over 5 skillpacks vs one skillpack and vs the
//!   floor of five skillpacks' bytes.
//!
//! Every operand (packed skillpacks, f32 matrices) rotates through copies spanning 3× the
//! last-level cache, so kernel and baselines read weights cold alike. Ratios: run the
//! `kernel_table` binary after this bench.
//!
//! `SKILLZIP_BENCH_KERNELS=decode,prefill,smollm,grouped` restricts the groups (default all).

use std::hint::black_box;
use std::time::Duration;

use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion, Throughput, criterion_group, criterion_main};
use faer::linalg::matmul::matmul;
use faer::{Accum, Mat, Par};
use skillzip_benches::{
    Cold, DECODE_TOKENS, DOWN_PROJ, PREFILL_TOKENS, Q_PROJ, SMOLLM_SHAPES, Shape, activations,
    f32_matrix, packed_layer as packed, stream_read,
};
use skillzip_core::kernels::{Isa, Kernel, KernelScratch, PackedLayer};

fn enabled(group: &str) -> bool {
    match std::env::var("SKILLZIP_BENCH_KERNELS") {
        Ok(list) if !list.is_empty() => list.split(',').any(|g| g.trim() == group),
        _ => true,
    }
}

fn cold_packs(shape: Shape, rank: usize) -> Cold<PackedLayer> {
    let layer = packed(shape, rank, 1);
    Cold::new(layer.weight_bytes(), |_| layer.clone())
}

/// `floor_read` and the X8A8B8 kernel on `paths`.
fn kernel_benches(
    group: &mut BenchmarkGroup<'_, WallTime>,
    packs: &mut Cold<PackedLayer>,
    x: &[f32],
    paths: &[Isa],
    with_floor: bool,
) {
    let co = packs.next().c_out();
    let t = x.len() / packs.next().c_in();
    if with_floor {
        group.bench_function("floor_read", |b| {
            b.iter(|| {
                let p = packs.next();
                black_box(stream_read(&[p.a().blocks(), p.b().blocks()]))
            })
        });
    }
    let mut y = vec![0.0f32; t * co];
    let mut scratch = KernelScratch::default();
    for &isa in paths {
        let kernel = Kernel::with_isa(isa).expect("listed as available");
        group.bench_function(format!("x8a8b8_{}", isa.name()), |b| {
            b.iter(|| {
                kernel
                    .apply(packs.next(), black_box(x), &mut y, &mut scratch)
                    .expect("shapes agree")
            })
        });
    }
}

/// f32 low-rank `X·A·B` (and dense `X·W` when `dense`) through faer, operands cold.
fn f32_benches(
    group: &mut BenchmarkGroup<'_, WallTime>,
    shape: Shape,
    rank: usize,
    x: &Mat<f32>,
    dense: bool,
) {
    let t = x.nrows();
    let (ci, co) = (shape.c_in, shape.c_out);
    let mut factors = Cold::new(4 * rank * (ci + co), |i| {
        (
            f32_matrix(ci, rank, 10 + i as u64),
            f32_matrix(rank, co, 20 + i as u64),
        )
    });
    let mut mid = Mat::<f32>::zeros(t, rank);
    let mut y = Mat::<f32>::zeros(t, co);
    group.bench_function("f32_lowrank", |b| {
        b.iter(|| {
            let (a, bm) = factors.next();
            matmul(
                mid.as_mut(),
                Accum::Replace,
                x.as_ref(),
                a.as_ref(),
                1.0,
                Par::rayon(0),
            );
            matmul(
                y.as_mut(),
                Accum::Add,
                mid.as_ref(),
                bm.as_ref(),
                1.0,
                Par::rayon(0),
            );
        })
    });
    drop(factors);
    if dense {
        let mut w = Cold::new(4 * ci * co, |i| f32_matrix(ci, co, 30 + i as u64));
        group.bench_function("f32_dense", |b| {
            b.iter(|| {
                matmul(
                    y.as_mut(),
                    Accum::Add,
                    x.as_ref(),
                    w.next().as_ref(),
                    1.0,
                    Par::rayon(0),
                )
            })
        });
    }
}

fn as_mat(x: &[f32], t: usize, ci: usize) -> Mat<f32> {
    Mat::from_fn(t, ci, |i, j| x[i * ci + j])
}

fn decode(c: &mut Criterion) {
    let paths: Vec<Isa> = Isa::available().collect();
    for shape in [DOWN_PROJ, Q_PROJ] {
        let mut packs = cold_packs(shape, shape.rank);
        for t in DECODE_TOKENS {
            let mut group =
                c.benchmark_group(format!("decode/{}_r{}/T{t}", shape.name, shape.rank));
            group
                .warm_up_time(Duration::from_secs(1))
                .measurement_time(Duration::from_secs(3))
                .sample_size(20)
                .throughput(Throughput::Bytes(packs.next().weight_bytes() as u64));
            let x = activations(t, shape.c_in, 3);
            // The scalar path is timed at T = 1 only (it is the portability fallback).
            let paths: Vec<Isa> = paths
                .iter()
                .copied()
                .filter(|&i| t == 1 || i != Isa::Scalar)
                .collect();
            kernel_benches(&mut group, &mut packs, &x, &paths, true);
            f32_benches(
                &mut group,
                shape,
                shape.rank,
                &as_mat(&x, t, shape.c_in),
                true,
            );
            group.finish();
        }
    }
}

fn prefill(c: &mut Criterion) {
    let paths: Vec<Isa> = Isa::available().filter(|&i| i != Isa::Scalar).collect();
    let shape = DOWN_PROJ;
    let t = PREFILL_TOKENS;
    let mut packs = cold_packs(shape, shape.rank);
    let mut group = c.benchmark_group(format!("prefill/{}_r{}/T{t}", shape.name, shape.rank));
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(10))
        .throughput(Throughput::Elements(
            (2 * t * shape.rank * (shape.c_in + shape.c_out)) as u64,
        ));
    let x = activations(t, shape.c_in, 4);
    kernel_benches(&mut group, &mut packs, &x, &paths, false);
    f32_benches(
        &mut group,
        shape,
        shape.rank,
        &as_mat(&x, t, shape.c_in),
        false,
    );
    group.finish();
}

fn smollm(c: &mut Criterion) {
    let detected = [Isa::detect()];
    for shape in SMOLLM_SHAPES {
        for rank in [32usize, 64, 128, 192] {
            let mut packs = cold_packs(shape, rank);
            let mut group = c.benchmark_group(format!("smollm/{}_r{rank}/T1", shape.name));
            group
                .warm_up_time(Duration::from_millis(500))
                .measurement_time(Duration::from_secs(2))
                .throughput(Throughput::Bytes(packs.next().weight_bytes() as u64));
            let x = activations(1, shape.c_in, 5);
            kernel_benches(&mut group, &mut packs, &x, &detected, true);
            f32_benches(&mut group, shape, rank, &as_mat(&x, 1, shape.c_in), false);
            group.finish();
        }
    }
}

fn grouped(c: &mut Criterion) {
    let shape = DOWN_PROJ;
    let (t, count) = (32usize, 5usize);
    let skill: Vec<Option<usize>> = (0..t).map(|i| Some(i % count)).collect();
    // At least 4 sets so that even one skillpack's copies span more than the cache.
    let layer_sets: Vec<Vec<PackedLayer>> = {
        let five: Vec<PackedLayer> = (0..count)
            .map(|k| packed(shape, shape.rank, 40 + k as u64))
            .collect();
        let bytes: usize = five.iter().map(PackedLayer::weight_bytes).sum();
        let sets = skillzip_benches::COLD_BYTES.div_ceil(bytes).max(4);
        (0..sets).map(|_| five.clone()).collect()
    };
    let bytes: usize = layer_sets[0].iter().map(PackedLayer::weight_bytes).sum();
    let mut group = c.benchmark_group(format!("grouped/{}_r{}/T{t}", shape.name, shape.rank));
    group
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4))
        .throughput(Throughput::Bytes(bytes as u64));
    let x = activations(t, shape.c_in, 6);
    let mut y = vec![0.0f32; t * shape.c_out];
    let mut scratch = KernelScratch::default();
    let kernel = Kernel::detect();
    let mut next = 0;
    group.bench_function("floor_read_5packs", |b| {
        b.iter(|| {
            next = (next + 1) % layer_sets.len();
            let parts: Vec<&[skillzip_core::kernels::pack::Block]> = layer_sets[next]
                .iter()
                .flat_map(|p| [p.a().blocks(), p.b().blocks()])
                .collect();
            black_box(stream_read(&parts))
        })
    });
    group.bench_function(format!("x8a8b8_5packs_{}", kernel.isa().name()), |b| {
        b.iter(|| {
            next = (next + 1) % layer_sets.len();
            let refs: Vec<&PackedLayer> = layer_sets[next].iter().collect();
            kernel
                .apply_grouped(&refs, &skill, black_box(&x), &mut y, &mut scratch)
                .expect("shapes agree")
        })
    });
    group.bench_function(format!("x8a8b8_1pack_{}", kernel.isa().name()), |b| {
        b.iter(|| {
            // Every skillpack of every set in turn, so one pack's copies are cold too.
            next = (next + 1) % (layer_sets.len() * count);
            let pack = &layer_sets[next % layer_sets.len()][next / layer_sets.len()];
            kernel
                .apply(pack, black_box(&x), &mut y, &mut scratch)
                .expect("shapes agree")
        })
    });
    group.finish();
}

fn benches(c: &mut Criterion) {
    eprintln!(
        "kernel paths on this CPU: {:?}; dispatched: {}",
        Isa::available().map(Isa::name).collect::<Vec<_>>(),
        Isa::detect().name()
    );
    if enabled("decode") {
        decode(c);
    }
    if enabled("prefill") {
        prefill(c);
    }
    if enabled("smollm") {
        smollm(c);
    }
    if enabled("grouped") {
        grouped(c);
    }
}

criterion_group!(kernel_benches_group, benches);
criterion_main!(kernel_benches_group);
