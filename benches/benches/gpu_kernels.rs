//! The GPU skillpack path (`skillzip-cuda`: quantize, then both `mma.sync` stages) against
//! cuBLAS FP16 dense on the paper's shapes: decode at 1/4/10/32 tokens and prefill at 1000,
//! X8A8B8, f16 in and out. Each iteration launches and waits for the stream, with the operands
//! resident (warm); the event-timed table with cold operands, CUDA graphs and the copy floor is
//! `skillzip-gpu-bench` (`scripts/gpu-run.sh`).
//!
//! Without a GPU (or without the CUDA driver / cuBLAS) it prints `skipped: …` and measures
//! nothing, like the GPU tests.

use criterion::{Criterion, criterion_group, criterion_main};
use half::f16;
use skillzip_benches::{DECODE_TOKENS, DOWN_PROJ, PREFILL_TOKENS, Q_PROJ};
use skillzip_core::seeded_rng;
use skillzip_core::synth::{RandomLayer, random_layer};
use skillzip_cuda::PackedSkillpack;
use skillzip_cuda::baseline::{DenseBaseline, GemmDims};

fn benches(c: &mut Criterion) {
    let Some(gpu) = skillzip_cuda::open_or_skip("gpu_kernels bench") else {
        return;
    };
    let stream = gpu.stream().clone();
    let blas = match DenseBaseline::new(&stream) {
        Ok(b) => Some(b),
        Err(e) => {
            eprintln!("skipped: cuBLAS baseline: {e}");
            None
        }
    };
    for shape in [DOWN_PROJ, Q_PROJ] {
        let layer = random_layer(
            &RandomLayer::x8a8b8(shape.c_in, shape.rank, shape.c_out),
            &mut seeded_rng(1),
        )
        .expect("valid random layer");
        let packed = PackedSkillpack::new(&layer).expect("packs");
        let pack = gpu.upload(&packed).expect("uploads");
        let set = gpu.skillpack_set(&[&pack]).expect("one skillpack");
        let mut ws = gpu.workspace(&set, PREFILL_TOKENS).expect("workspace");
        let dense = stream
            .clone_htod(&vec![f16::from_f32(0.01); shape.c_in * shape.c_out])
            .expect("dense weight");
        let mut group = c.benchmark_group(format!("gpu/{}_r{}", shape.name, shape.rank));
        for rows in DECODE_TOKENS.into_iter().chain([PREFILL_TOKENS]) {
            let x = stream
                .clone_htod(&vec![f16::from_f32(0.5); rows * shape.c_in])
                .expect("input");
            let mut y = stream
                .alloc_zeros::<f16>(rows * shape.c_out)
                .expect("output");
            group.bench_function(format!("skillpack_x8a8b8/T{rows}"), |b| {
                b.iter(|| {
                    gpu.apply::<f16, f16>(
                        &set,
                        &mut ws,
                        &x,
                        shape.c_in,
                        rows,
                        None,
                        &mut y,
                        shape.c_out,
                        None,
                    )
                    .expect("launch");
                    stream.synchronize().expect("stream");
                })
            });
            if let Some(blas) = &blas {
                let dims = GemmDims::new(rows, shape.c_in, shape.c_out);
                group.bench_function(format!("cublas_fp16_dense/T{rows}"), |b| {
                    b.iter(|| {
                        blas.gemm_f16(&x, &dense, &mut y, dims, false)
                            .expect("gemm");
                        stream.synchronize().expect("stream");
                    })
                });
            }
        }
        group.finish();
    }
}

criterion_group!(gpu_benches, benches);
criterion_main!(gpu_benches);
