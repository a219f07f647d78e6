//! The kernel study: the CPU skillpack kernel (X8A8B8, the dispatched instruction-set path)
//! against batch size on the paper's Llama-3.1-8B shapes, with two anchors timed in the same
//! rounds: an f32 dense GEMM of the same layer (faer, the weights a fine-tune without
//! SkillZip would read) and the memory floor (streaming exactly the skillpack's packed bytes on
//! the same threads). Every operand rotates through cold copies ([`crate::Cold`]).

use faer::linalg::matmul::matmul;
use faer::{Accum, Mat, Par};
use skillzip_core::kernels::{Kernel, KernelScratch};

use super::plot::{Axis, Figure, Mark, Series};
use super::table::{Table, num};
use super::{Context, Preset, Result, Section};
use crate::{
    Cold, DECODE_TOKENS, DOWN_PROJ, PREFILL_TOKENS, Q_PROJ, Shape, activations, f32_matrix,
    packed_layer, round_robin, stream_read,
};

/// The study's name in the manifest.
pub const STUDY: &str = "kernels";

/// The CPU targets the figure and table quote.
const TARGETS: &str = "targets (issue 3, CPU): decode T=1 ≤ 1.3× the floor; X8A8B8 decode ≥ 15× faster than f32 dense";

/// The paper's own kernel numbers (GPU, so a reference point rather than a target here).
const PAPER: &str = "paper (A100, down_proj R600): decode FP16 dense 0.1167 ms vs X8A8B8 0.0558 ms (0.0271 with graphs); prefill T=1000 0.6673 vs 0.1698 ms";

/// What one preset measures.
struct Plan {
    shapes: Vec<Shape>,
    prefill: usize,
    rounds: usize,
}

fn plan(preset: Preset) -> Plan {
    match preset {
        Preset::Quick => Plan {
            shapes: vec![Q_PROJ],
            prefill: 256,
            rounds: 9,
        },
        Preset::Full => Plan {
            shapes: vec![DOWN_PROJ, Q_PROJ],
            prefill: PREFILL_TOKENS,
            rounds: 41,
        },
    }
}

/// One measured point.
#[derive(Debug, Clone)]
struct Point {
    shape: Shape,
    tokens: usize,
    kernel: f64,
    dense: f64,
    floor: f64,
    dense_over_kernel: f64,
    kernel_over_floor: f64,
}

/// Runs the study, writes `kernels.csv` and the `kernel_time` figure.
pub fn run(ctx: &Context, progress: &mut dyn FnMut(&str)) -> Result<Section> {
    let plan = plan(ctx.preset);
    let kernel = Kernel::detect();
    let mut scratch = KernelScratch::default();
    let mut points = Vec::new();
    for &shape in &plan.shapes {
        let one = packed_layer(shape, shape.rank, 1);
        let bytes = one.weight_bytes();
        let mut packs = Cold::new(bytes, |_| one.clone());
        let mut floor_packs = Cold::new(bytes, |_| one.clone());
        let dense_bytes = 4 * shape.c_in * shape.c_out;
        let w = f32_matrix(shape.c_in, shape.c_out, 9);
        let mut dense_w = Cold::new(dense_bytes, |_| w.clone());
        drop(w);
        let tokens: Vec<usize> = DECODE_TOKENS
            .iter()
            .copied()
            .chain([plan.prefill])
            .collect();
        for t in tokens {
            progress(&format!("{} R{} T={t}", shape.name, shape.rank));
            let x = activations(t, shape.c_in, 3);
            let xm = Mat::from_fn(t, shape.c_in, |i, j| x[i * shape.c_in + j]);
            let mut y = vec![0.0f32; t * shape.c_out];
            let mut ym = Mat::<f32>::zeros(t, shape.c_out);
            let mut failed = None;
            let rounds = if t > 32 {
                plan.rounds.div_ceil(4)
            } else {
                plan.rounds
            };
            let r = round_robin(
                rounds,
                &mut [
                    &mut || {
                        if let Err(e) = kernel.apply(packs.next(), &x, &mut y, &mut scratch) {
                            failed = Some(e.to_string());
                        }
                    },
                    &mut || {
                        matmul(
                            ym.as_mut(),
                            Accum::Replace,
                            xm.as_ref(),
                            dense_w.next().as_ref(),
                            1.0,
                            Par::rayon(0),
                        )
                    },
                    &mut || {
                        let p = floor_packs.next();
                        std::hint::black_box(stream_read(&[p.a().blocks(), p.b().blocks()]));
                    },
                ],
            );
            if let Some(message) = failed {
                return Err(super::ReportError::Study {
                    study: STUDY,
                    message,
                });
            }
            points.push(Point {
                shape,
                tokens: t,
                kernel: r.seconds[0],
                dense: r.seconds[1],
                floor: r.seconds[2],
                dense_over_kernel: r.ratios[1],
                kernel_over_floor: 1.0 / r.ratios[2],
            });
        }
    }
    let mut table = Table::new(&[
        "shape",
        "c_in",
        "c_out",
        "rank",
        "tokens",
        "kernel_us",
        "f32_dense_us",
        "floor_us",
        "dense_over_kernel",
        "kernel_over_floor",
    ]);
    for p in &points {
        table.push(vec![
            p.shape.name.into(),
            p.shape.c_in.to_string(),
            p.shape.c_out.to_string(),
            p.shape.rank.to_string(),
            p.tokens.to_string(),
            num(p.kernel * 1e6, 1),
            num(p.dense * 1e6, 1),
            num(p.floor * 1e6, 1),
            num(p.dense_over_kernel, 2),
            num(p.kernel_over_floor, 2),
        ]);
    }
    super::write_file(&ctx.path("kernels.csv"), table.to_csv().as_bytes())?;

    let mut series = Vec::new();
    for (i, shape) in plan.shapes.iter().enumerate() {
        let of = |f: fn(&Point) -> f64| -> Vec<(f64, f64)> {
            points
                .iter()
                .filter(|p| p.shape == *shape)
                .map(|p| (p.tokens as f64, f(p) * 1e6))
                .collect()
        };
        let base = 3 * i;
        series.push(
            Series::line(
                &format!("SkillZip X8A8B8, {}", shape.name),
                of(|p| p.kernel),
            )
            .mark(Mark::LinePoints)
            .color(base),
        );
        series.push(
            Series::line(&format!("f32 dense, {}", shape.name), of(|p| p.dense))
                .mark(Mark::LinePoints)
                .color(base + 1),
        );
        series.push(
            Series::line(&format!("memory floor, {}", shape.name), of(|p| p.floor))
                .mark(Mark::Dashed)
                .color(base + 2),
        );
    }
    let command_note = format!("{}; path {}", ctx.footer(), kernel.isa().name());
    let figure = Figure {
        stem: "kernel_time".into(),
        title: "CPU kernel time vs tokens per call (cold weights)".into(),
        notes: vec![command_note, TARGETS.into(), PAPER.into()],
        x: Axis::log("tokens per call (decode 1–32, prefill)"),
        y: Axis::log("time per call (µs)"),
        series,
        legend: super::plot::Corner::UpperLeft,
    };
    super::plot::render(&figure, &ctx.out)?;

    let mut md = format!(
        "### Kernels: time against tokens per call\n\n\
         Path `{}`, {} rayon threads; medians of {} rounds (prefill: a quarter), each round \
         timing the three contenders back to back in rotating order on cold copies. \
         Dense: f32 `X·W` (faer) of the same layer; floor: streaming the skillpack's packed \
         bytes. {TARGETS}; {PAPER}.\n\n![kernel time](./kernel_time.png)\n\n",
        kernel.isa().name(),
        rayon::current_num_threads(),
        plan.rounds
    );
    let mut shown = Table::new(&[
        "shape",
        "tokens",
        "kernel (µs)",
        "f32 dense (µs)",
        "floor (µs)",
        "dense ÷ kernel",
        "kernel ÷ floor",
    ]);
    for p in &points {
        shown.push(vec![
            format!("{} R{}", p.shape.name, p.shape.rank),
            p.tokens.to_string(),
            num(p.kernel * 1e6, 1),
            num(p.dense * 1e6, 1),
            num(p.floor * 1e6, 1),
            format!("{}×", num(p.dense_over_kernel, 1)),
            format!("{}×", num(p.kernel_over_floor, 2)),
        ]);
    }
    md.push_str(&shown.to_markdown());
    Ok(Section { markdown: md })
}
