//! Paired ratios for the CPU kernels on a noisy machine: each pair runs the kernel and its
//! anchor back to back (alternating which goes first) on cold copies, and the reported ratio
//! is the median of the per-pair ratios — robust against memory bandwidth that drifts between
//! the separate criterion measurements of a shared VM. Complements the `kernels` criterion
//! bench (same operands, same cold rotation).
//!
//! Usage: `cargo run --release -p skillzip-benches --bin kernel_pairs [pairs]` (default 101).

use std::hint::black_box;

use faer::linalg::matmul::matmul;
use faer::{Accum, Mat, Par};
use skillzip_benches::{
    COLD_BYTES, Cold, DECODE_TOKENS, DOWN_PROJ, PREFILL_TOKENS, Q_PROJ, activations, f32_matrix,
    packed_layer as packed, round_robin, stream_read,
};
use skillzip_core::kernels::{Kernel, KernelScratch, PackedLayer};

/// Runs `pairs` rounds of kernel and anchor back to back (order alternating) and prints
/// `| case | anchor | median kernel | median anchor | median of kernel/anchor |`.
fn pair(case: &str, anchor: &str, pairs: usize, kernel: &mut dyn FnMut(), base: &mut dyn FnMut()) {
    // round_robin's ratios are to the first contender; kernel ÷ anchor is the inverse, and
    // the median of an odd count commutes with it.
    let r = round_robin(pairs | 1, &mut [kernel, base]);
    println!(
        "| {case} | {anchor} | {:.1} µs | {:.1} µs | {:.2}× |",
        r.seconds[0] * 1e6,
        r.seconds[1] * 1e6,
        1.0 / r.ratios[1]
    );
}

fn main() {
    let pairs: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(101);
    let kernel = Kernel::detect();
    println!(
        "path: {}; {} rayon threads; {pairs} pairs per row",
        kernel.isa().name(),
        rayon::current_num_threads()
    );
    println!(
        "| case | anchor | kernel (median) | anchor (median) | kernel ÷ anchor (median of pairs) |"
    );
    println!("|---|---|---:|---:|---:|");
    let mut scratch = KernelScratch::default();
    for shape in [DOWN_PROJ, Q_PROJ] {
        let one = packed(shape, shape.rank, 1);
        let mut packs = Cold::new(one.weight_bytes(), |_| one.clone());
        let mut floor_packs = Cold::new(one.weight_bytes(), |_| one.clone());
        for t in DECODE_TOKENS {
            let x = activations(t, shape.c_in, 3);
            let mut y = vec![0.0f32; t * shape.c_out];
            pair(
                &format!("decode {} R{} T={t}", shape.name, shape.rank),
                "memory floor (same bytes)",
                pairs,
                &mut || {
                    kernel
                        .apply(packs.next(), &x, &mut y, &mut scratch)
                        .expect("shapes agree")
                },
                &mut || {
                    let p = floor_packs.next();
                    black_box(stream_read(&[p.a().blocks(), p.b().blocks()]));
                },
            );
        }
    }
    // Grouped: 5 skillpacks, 32 tokens round-robin, against the floor of their bytes and
    // against 32 tokens on one skillpack.
    let shape = DOWN_PROJ;
    let five: Vec<PackedLayer> = (0..5).map(|k| packed(shape, shape.rank, 40 + k)).collect();
    let bytes: usize = five.iter().map(PackedLayer::weight_bytes).sum();
    let sets: Vec<Vec<PackedLayer>> = (0..COLD_BYTES.div_ceil(bytes).max(4))
        .map(|_| five.clone())
        .collect();
    let skill: Vec<Option<usize>> = (0..32).map(|i| Some(i % 5)).collect();
    let x = activations(32, shape.c_in, 3);
    let mut y = vec![0.0f32; 32 * shape.c_out];
    let (mut a, mut b, mut c) = (0usize, 0usize, 0usize);
    let mut grouped = |y: &mut Vec<f32>, scratch: &mut KernelScratch| {
        a = (a + 1) % sets.len();
        let refs: Vec<&PackedLayer> = sets[a].iter().collect();
        kernel
            .apply_grouped(&refs, &skill, &x, y, scratch)
            .expect("shapes agree");
    };
    let mut scratch2 = KernelScratch::default();
    let mut y2 = y.clone();
    pair(
        "grouped: 5 skillpacks, T=32",
        "memory floor (5 packs' bytes)",
        pairs,
        &mut || grouped(&mut y, &mut scratch),
        &mut || {
            b = (b + 1) % sets.len();
            let parts: Vec<_> = sets[b]
                .iter()
                .flat_map(|p| [p.a().blocks(), p.b().blocks()])
                .collect();
            black_box(stream_read(&parts));
        },
    );
    pair(
        "grouped: 5 skillpacks, T=32",
        "1 skillpack, T=32",
        pairs,
        &mut || grouped(&mut y2, &mut scratch2),
        &mut || {
            c = (c + 1) % (sets.len() * 5);
            let p = &sets[c % sets.len()][c / sets.len()];
            kernel
                .apply(p, &x, &mut y, &mut scratch)
                .expect("shapes agree");
        },
    );
    drop(sets);
    // Prefill and dense decode against faer (fewer pairs: each call is long).
    let t = PREFILL_TOKENS;
    let x = activations(t, shape.c_in, 3);
    let xm = Mat::from_fn(t, shape.c_in, |i, j| x[i * shape.c_in + j]);
    let one = packed(shape, shape.rank, 1);
    let mut packs = Cold::new(one.weight_bytes(), |_| one.clone());
    let (fa, fb) = (
        f32_matrix(shape.c_in, shape.rank, 9),
        f32_matrix(shape.rank, shape.c_out, 10),
    );
    let mut mid = Mat::<f32>::zeros(t, shape.rank);
    let mut ym = Mat::<f32>::zeros(t, shape.c_out);
    let mut y = vec![0.0f32; t * shape.c_out];
    pair(
        "prefill T=1000 (X8A8B8 vs f32 X·A·B)",
        "f32 low-rank (faer)",
        pairs.div_ceil(5),
        &mut || {
            kernel
                .apply(packs.next(), &x, &mut y, &mut scratch)
                .expect("shapes agree")
        },
        &mut || {
            matmul(
                mid.as_mut(),
                Accum::Replace,
                xm.as_ref(),
                fa.as_ref(),
                1.0,
                Par::rayon(0),
            );
            matmul(
                ym.as_mut(),
                Accum::Replace,
                mid.as_ref(),
                fb.as_ref(),
                1.0,
                Par::rayon(0),
            );
        },
    );
    let w = f32_matrix(shape.c_in, shape.c_out, 11);
    let x1 = activations(1, shape.c_in, 3);
    let x1m = Mat::from_fn(1, shape.c_in, |_, j| x1[j]);
    let mut y1 = vec![0.0f32; shape.c_out];
    let mut y1m = Mat::<f32>::zeros(1, shape.c_out);
    pair(
        "decode T=1 (X8A8B8 vs f32 X·W)",
        "f32 dense (faer)",
        pairs.div_ceil(3),
        &mut || {
            kernel
                .apply(packs.next(), &x1, &mut y1, &mut scratch)
                .expect("shapes agree")
        },
        &mut || {
            matmul(
                y1m.as_mut(),
                Accum::Replace,
                x1m.as_ref(),
                w.as_ref(),
                1.0,
                Par::rayon(0),
            )
        },
    );
}
