//! `skillzip-gpu-bench`: the GPU kernel table on the Llama-3.1-8B `down_proj` shape
//! (`C_i` = 14336, `C_o` = 4096, rank 600), timed with CUDA events.
//!
//! Rows: decode `T` ∈ {1, 4, 10, 32} and prefill `T` = 1000 for X8A8B8 and X8A4B4, and grouped
//! decode (32 rows spread over 5 skillpacks by a `pack_of_row` array). For each row it times
//!
//! - the skillpack path (`Gpu::apply`: quantize + stage 1 + stage 2), eagerly and replayed
//!   from a CUDA graph;
//! - cuBLAS FP16 dense `y = x·Wᵀ` on the same shape (grouped: one GEMM per skillpack's rows,
//!   each with its own weight), eagerly and from a graph;
//! - cuBLAS FP16 low-rank `y += (x·Aᵀ)·Bᵀ` at the same rank (graph);
//! - a device-to-device copy of the same number of bytes as the skillpack's packed `Â` + `B̂`
//!   (and as the dense weight): the bandwidth floor.
//!
//! Operands are cold: weights, inputs and outputs rotate through at least 6 copies, and
//! through enough that one rotation exceeds twice the GPU's L2 (`CU_DEVICE_ATTRIBUTE_L2_CACHE_SIZE`),
//! for the kernel and the baselines alike. A timing is the median over repeats of
//! (event-timed batch of whole rotations) / calls; the batch length is calibrated to about
//! `target` milliseconds.
//!
//! Writes `kernel-table.md` and `results.csv` to `--out DIR` (default `target/gpu-bench`) and
//! prints the table. Without a GPU it prints `skipped: <reason>` and exits 0.
//!
//! Usage: `skillzip-gpu-bench [--out DIR] [--quick]` (`--quick` or `SKILLZIP_GPU_QUICK=1`:
//! fewer, shorter repeats).

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use cudarc::driver::sys::{CUdevice_attribute, CUevent_flags};
use cudarc::driver::{CudaEvent, CudaSlice, CudaStream};
use half::f16;
use skillzip_core::quant::Bits;
use skillzip_core::seeded_rng;
use skillzip_core::synth::{RandomLayer, random_layer};
use skillzip_cuda::baseline::{DenseBaseline, GemmDims};
use skillzip_cuda::graph;
use skillzip_cuda::{DeviceSkillpack, Error, Gpu, PackedSkillpack, Result, SkillpackSet};

/// Llama-3.1-8B `down_proj`: input channels.
const C_IN: usize = 14336;
/// Llama-3.1-8B `down_proj`: output channels.
const C_OUT: usize = 4096;
/// Skillpack rank.
const RANK: usize = 600;
/// Decode row counts.
const DECODE: [usize; 4] = [1, 4, 10, 32];
/// Prefill row count.
const PREFILL: usize = 1000;
/// Skillpacks of the grouped decode row.
const GROUP_PACKS: usize = 5;
/// Rows of the grouped decode row.
const GROUP_ROWS: usize = 32;
/// Seed of every random choice.
const SEED: u64 = 2026;
/// Fewest rotating copies of any operand.
const MIN_COPIES: usize = 6;

fn main() -> ExitCode {
    let settings = match Settings::from_args() {
        Ok(s) => s,
        Err(msg) => {
            eprintln!("{msg}");
            return ExitCode::from(2);
        }
    };
    match run(&settings) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Error::NoDevice { reason }) => {
            println!("skipped: {reason}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("skillzip-gpu-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Command-line settings.
struct Settings {
    out: PathBuf,
    repeats: usize,
    target_ms: f64,
    warmup_units: usize,
    quick: bool,
}

impl Settings {
    fn from_args() -> std::result::Result<Settings, String> {
        let usage = "usage: skillzip-gpu-bench [--out DIR] [--quick]";
        let mut out = PathBuf::from("target/gpu-bench");
        let mut quick = std::env::var("SKILLZIP_GPU_QUICK").is_ok_and(|v| v == "1");
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--out" => out = args.next().ok_or(usage)?.into(),
                "--quick" => quick = true,
                "-h" | "--help" => {
                    println!("{usage}");
                    std::process::exit(0);
                }
                other => return Err(format!("unknown argument `{other}`\n{usage}")),
            }
        }
        Ok(if quick {
            Settings {
                out,
                repeats: 3,
                target_ms: 3.0,
                warmup_units: 1,
                quick,
            }
        } else {
            Settings {
                out,
                repeats: 9,
                target_ms: 10.0,
                warmup_units: 2,
                quick,
            }
        })
    }
}

/// Per-call times of one measurement, in microseconds.
#[derive(Debug, Clone, Copy)]
struct Timing {
    median_us: f64,
    min_us: f64,
    max_us: f64,
    repeats: usize,
    calls_per_repeat: usize,
}

/// Two timing events on the benchmark stream.
struct Clock {
    stream: Arc<CudaStream>,
    start: CudaEvent,
    end: CudaEvent,
}

impl Clock {
    fn new(gpu: &Gpu) -> Result<Clock> {
        let ctx = gpu.context();
        Ok(Clock {
            stream: gpu.stream().clone(),
            start: ctx.new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))?,
            end: ctx.new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))?,
        })
    }

    /// Milliseconds the GPU spends on `units` back-to-back calls of `unit`.
    fn time(&self, units: usize, unit: &mut impl FnMut() -> Result<()>) -> Result<f64> {
        self.start.record(&self.stream)?;
        for _ in 0..units {
            unit()?;
        }
        self.end.record(&self.stream)?;
        self.end.synchronize()?;
        Ok(f64::from(self.start.elapsed_ms(&self.end)?))
    }

    /// Warm-up, then `repeats` event-timed batches of `unit` (each `calls_per_unit` calls),
    /// each batch about `target_ms` long.
    fn measure(
        &self,
        s: &Settings,
        calls_per_unit: usize,
        mut unit: impl FnMut() -> Result<()>,
    ) -> Result<Timing> {
        for _ in 0..s.warmup_units {
            unit()?;
        }
        let one = self.time(1, &mut unit)?.max(1e-3);
        let units = ((s.target_ms / one).ceil() as usize).clamp(1, 100_000);
        let mut per_call: Vec<f64> = Vec::with_capacity(s.repeats);
        for _ in 0..s.repeats {
            let ms = self.time(units, &mut unit)?;
            per_call.push(ms * 1e3 / (units * calls_per_unit) as f64);
        }
        per_call.sort_by(f64::total_cmp);
        self.stream.context().check_err()?;
        Ok(Timing {
            median_us: per_call[per_call.len() / 2],
            min_us: per_call[0],
            max_us: per_call[per_call.len() - 1],
            repeats: s.repeats,
            calls_per_repeat: units * calls_per_unit,
        })
    }

    /// Times `rotation` calls `call(0..rotation)` eagerly, then captured once into a CUDA graph
    /// and replayed: `(eager, graph)`.
    fn eager_and_graph(
        &self,
        s: &Settings,
        rotation: usize,
        mut call: impl FnMut(usize) -> Result<()>,
    ) -> Result<(Timing, Timing)> {
        let eager = self.measure(s, rotation, || (0..rotation).try_for_each(&mut call))?;
        let captured = graph::capture(&self.stream, |_| (0..rotation).try_for_each(&mut call))?;
        let replayed = self.measure(s, rotation, || graph::replay(&captured, 1))?;
        Ok((eager, replayed))
    }
}

/// One measured line of `results.csv`.
struct Record {
    case: String,
    rows: usize,
    method: &'static str,
    graph: bool,
    timing: Timing,
    /// Copies each operand rotates through.
    copies: usize,
    /// Weight bytes one call reads (the copy rows: bytes copied).
    weight_bytes: usize,
}

/// Rotating copies so that one rotation of `bytes_per_call` exceeds twice the L2.
fn copies_for(bytes_per_call: usize, l2: usize) -> usize {
    (2 * l2 / bytes_per_call.max(1) + 1).max(MIN_COPIES)
}

/// Deterministic values in `[-scale, scale)` (SplitMix64), for operands whose values do not
/// matter to the timing.
fn noise_f16(n: usize, seed: u64, scale: f32) -> Vec<f16> {
    let mut state = seed;
    (0..n)
        .map(|_| {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            let unit = (z >> 40) as f32 / (1u64 << 24) as f32;
            f16::from_f32((2.0 * unit - 1.0) * scale)
        })
        .collect()
}

/// `count` device copies of `host`.
fn upload_copies(
    stream: &Arc<CudaStream>,
    host: &[f16],
    count: usize,
) -> Result<Vec<CudaSlice<f16>>> {
    (0..count).map(|_| Ok(stream.clone_htod(host)?)).collect()
}

/// Rotating inputs and outputs of `rows` rows.
struct Io {
    xs: Vec<CudaSlice<f16>>,
    ys: Vec<CudaSlice<f16>>,
}

impl Io {
    fn new(stream: &Arc<CudaStream>, rows: usize, copies: usize) -> Result<Io> {
        let x = noise_f16(rows * C_IN, SEED ^ rows as u64, 1.0);
        Ok(Io {
            xs: upload_copies(stream, &x, copies)?,
            ys: (0..copies)
                .map(|_| Ok(stream.alloc_zeros::<f16>(rows * C_OUT)?))
                .collect::<Result<_>>()?,
        })
    }
}

/// The cuBLAS FP16 baselines and their weights, each in rotating copies.
struct Baselines {
    blas: DenseBaseline,
    dense: Vec<CudaSlice<f16>>,
    low_a: Vec<CudaSlice<f16>>,
    low_b: Vec<CudaSlice<f16>>,
    low_tmp: CudaSlice<f16>,
}

/// Bytes of the dense FP16 weight.
const DENSE_BYTES: usize = C_OUT * C_IN * 2;
/// Bytes of the FP16 low-rank factors.
const LOWRANK_BYTES: usize = (RANK * C_IN + C_OUT * RANK) * 2;

impl Baselines {
    /// `None` (with a note) when cuBLAS cannot be loaded.
    fn new(stream: &Arc<CudaStream>, l2: usize) -> Result<Option<Baselines>> {
        let blas = match DenseBaseline::new(stream) {
            Ok(blas) => blas,
            Err(Error::NoDevice { reason }) => {
                eprintln!("note: {reason}; the cuBLAS baselines are skipped");
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        // Grouped decode reads GROUP_PACKS distinct dense weights per call; two calls in a
        // row never share one.
        let dense_copies = copies_for(DENSE_BYTES, l2).max(2 * GROUP_PACKS);
        let dense = upload_copies(
            stream,
            &noise_f16(C_OUT * C_IN, SEED + 1, 1.0 / 64.0),
            dense_copies,
        )?;
        let low_copies = copies_for(LOWRANK_BYTES, l2);
        let low_a = upload_copies(stream, &noise_f16(RANK * C_IN, SEED + 2, 0.01), low_copies)?;
        let low_b = upload_copies(stream, &noise_f16(C_OUT * RANK, SEED + 3, 0.01), low_copies)?;
        let low_tmp = stream.alloc_zeros::<f16>(PREFILL.max(GROUP_ROWS) * RANK)?;
        Ok(Some(Baselines {
            blas,
            dense,
            low_a,
            low_b,
            low_tmp,
        }))
    }
}

/// Times a device-to-device copy of `bytes` (rotating sources): the bandwidth floor.
fn measure_copy(
    clock: &Clock,
    s: &Settings,
    l2: usize,
    label: &str,
    bytes: usize,
) -> Result<Record> {
    let stream = &clock.stream;
    let copies = copies_for(bytes, l2);
    let srcs: Vec<CudaSlice<u8>> = (0..copies)
        .map(|_| Ok(stream.alloc_zeros::<u8>(bytes)?))
        .collect::<Result<_>>()?;
    let mut dst = stream.alloc_zeros::<u8>(bytes)?;
    let timing = clock.measure(s, copies, || {
        for src in &srcs {
            stream.memcpy_dtod(src, &mut dst)?;
        }
        Ok(())
    })?;
    eprintln!(
        "copy of {label} ({bytes} bytes): {:.2} us",
        timing.median_us
    );
    Ok(Record {
        case: label.to_string(),
        rows: 0,
        method: "copy",
        graph: false,
        timing,
        copies,
        weight_bytes: bytes,
    })
}

/// Pushes an (eager, graph) pair of records.
#[allow(clippy::too_many_arguments)]
fn push_pair(
    records: &mut Vec<Record>,
    case: &str,
    rows: usize,
    method: &'static str,
    (eager, graphed): (Timing, Timing),
    copies: usize,
    weight_bytes: usize,
) {
    eprintln!(
        "{case:<18} T={rows:<5} {method:<13} eager {:>10.2} us   graph {:>10.2} us",
        eager.median_us, graphed.median_us
    );
    for (graph, timing) in [(false, eager), (true, graphed)] {
        records.push(Record {
            case: case.to_string(),
            rows,
            method,
            graph,
            timing,
            copies,
            weight_bytes,
        });
    }
}

/// Case label of the grouped row.
const GROUPED: &str = "X8A8B8 grouped 5";
/// Case label of the dense baselines' single-weight rows.
const DENSE: &str = "dense";

fn run(s: &Settings) -> Result<()> {
    let wall = Instant::now();
    let gpu = Gpu::open(0)?;
    let stream = gpu.stream().clone();
    let ctx = gpu.context().clone();
    let l2 = ctx
        .attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_L2_CACHE_SIZE)?
        .max(0) as usize;
    let (_, total_mem) = ctx.mem_get_info()?;
    let (cc_major, cc_minor) = ctx.compute_capability()?;
    let device = format!(
        "{} (sm_{cc_major}{cc_minor}, {} SMs, L2 {:.1} MiB, {:.1} GiB)",
        gpu.name(),
        gpu.sm_count(),
        l2 as f64 / f64::from(1 << 20),
        total_mem as f64 / (1u64 << 30) as f64
    );
    eprintln!("{device}");
    let clock = Clock::new(&gpu)?;
    let mut records: Vec<Record> = Vec::new();
    let mut baselines = Baselines::new(&stream, l2)?;
    if baselines.is_some() {
        records.push(measure_copy(
            &clock,
            s,
            l2,
            "dense FP16 weight",
            DENSE_BYTES,
        )?);
    }

    for bits in [Bits::Int8, Bits::Int4] {
        let case = if bits == Bits::Int8 {
            "X8A8B8"
        } else {
            "X8A4B4"
        };
        let spec = RandomLayer {
            a_bits: bits,
            b_bits: bits,
            ..RandomLayer::x8a8b8(C_IN, RANK, C_OUT)
        };
        let packed = PackedSkillpack::new(&random_layer(&spec, &mut seeded_rng(SEED))?)?;
        let pack_bytes = packed.a_bytes().len() + packed.b_bytes().len();
        let single = copies_for(pack_bytes, l2);
        let group_sets = copies_for(GROUP_PACKS * pack_bytes, l2);
        // X8A8B8 also runs the grouped row and the FP16 baselines (which do not depend on
        // the skillpack's grid, so they are measured once).
        let with_group = bits == Bits::Int8;
        let pool_len = if with_group {
            single.max(GROUP_PACKS * group_sets)
        } else {
            single
        };
        let pool: Vec<DeviceSkillpack> = (0..pool_len)
            .map(|_| gpu.upload(&packed))
            .collect::<Result<_>>()?;
        let sets: Vec<SkillpackSet> = pool[..single]
            .iter()
            .map(|p| gpu.skillpack_set(&[p]))
            .collect::<Result<_>>()?;
        let mut ws = gpu.workspace(&sets[0], PREFILL)?;
        records.push(measure_copy(
            &clock,
            s,
            l2,
            &format!("skillpack {case}"),
            pack_bytes,
        )?);

        for rows in DECODE.into_iter().chain([PREFILL]) {
            // One rotation visits every copy of every operand pool (indexed modulo its
            // length); inputs and outputs have one copy per call of the rotation.
            let rotation = match &baselines {
                Some(b) => single.max(b.dense.len()).max(b.low_a.len()),
                None => single,
            };
            let mut io = Io::new(&stream, rows, rotation)?;
            let timings = clock.eager_and_graph(s, rotation, |i| {
                gpu.apply::<f16, f16>(
                    &sets[i % sets.len()],
                    &mut ws,
                    &io.xs[i],
                    C_IN,
                    rows,
                    None,
                    &mut io.ys[i],
                    C_OUT,
                    None,
                )
            })?;
            push_pair(
                &mut records,
                case,
                rows,
                "skillpack",
                timings,
                single,
                pack_bytes,
            );

            if let (Some(b), true) = (baselines.as_mut(), with_group) {
                let dims = GemmDims::new(rows, C_IN, C_OUT);
                let Baselines {
                    blas,
                    dense,
                    low_a,
                    low_b,
                    low_tmp,
                } = b;
                let timings = clock.eager_and_graph(s, rotation, |i| {
                    blas.gemm_f16(
                        &io.xs[i],
                        &dense[i % dense.len()],
                        &mut io.ys[i],
                        dims,
                        false,
                    )
                })?;
                push_pair(
                    &mut records,
                    DENSE,
                    rows,
                    "dense-fp16",
                    timings,
                    dense.len(),
                    DENSE_BYTES,
                );
                let timings = clock.eager_and_graph(s, rotation, |i| {
                    let k = i % low_a.len();
                    blas.lowrank_f16(
                        &io.xs[i],
                        &low_a[k],
                        &low_b[k],
                        low_tmp,
                        &mut io.ys[i],
                        dims,
                        RANK,
                    )
                })?;
                push_pair(
                    &mut records,
                    DENSE,
                    rows,
                    "lowrank-fp16",
                    timings,
                    low_a.len(),
                    LOWRANK_BYTES,
                );
            }
        }
        drop(sets);
        drop(ws);

        if with_group {
            grouped(
                &gpu,
                &clock,
                s,
                l2,
                &pool,
                group_sets,
                pack_bytes,
                baselines.as_mut(),
                &mut records,
            )?;
        }
    }
    drop(baselines);

    let report = Report {
        device,
        tracking: ctx.is_managing_stream_synchronization(),
        l2,
        settings: s,
        wall_s: wall.elapsed().as_secs_f64(),
        records: &records,
    };
    let markdown = report.markdown();
    println!("{markdown}");
    std::fs::create_dir_all(&s.out).map_err(|e| io_error(&s.out, e))?;
    let md_path = s.out.join("kernel-table.md");
    std::fs::write(&md_path, &markdown).map_err(|e| io_error(&md_path, e))?;
    let csv_path = s.out.join("results.csv");
    std::fs::write(&csv_path, report.csv()).map_err(|e| io_error(&csv_path, e))?;
    eprintln!("wrote {} and {}", md_path.display(), csv_path.display());
    Ok(())
}

fn io_error(path: &std::path::Path, e: std::io::Error) -> Error {
    Error::InvalidInput(format!("writing {}: {e}", path.display()))
}

/// Grouped decode: `GROUP_ROWS` rows spread over `GROUP_PACKS` skillpacks by `pack_of_row`,
/// against one FP16 GEMM per skillpack's rows (each its own dense weight) and the copy floor
/// of the bytes of all `GROUP_PACKS` skillpacks.
#[allow(clippy::too_many_arguments)]
fn grouped(
    gpu: &Gpu,
    clock: &Clock,
    s: &Settings,
    l2: usize,
    pool: &[DeviceSkillpack],
    group_sets: usize,
    pack_bytes: usize,
    baselines: Option<&mut Baselines>,
    records: &mut Vec<Record>,
) -> Result<()> {
    let stream = gpu.stream();
    let sets: Vec<SkillpackSet> = pool
        .chunks_exact(GROUP_PACKS)
        .take(group_sets)
        .map(|chunk| gpu.skillpack_set(&chunk.iter().collect::<Vec<_>>()))
        .collect::<Result<_>>()?;
    let mut ws = gpu.workspace(&sets[0], GROUP_ROWS)?;
    // Every skillpack gets at least one row; the rest are spread by a fixed hash.
    let assignment: Vec<Option<usize>> = (0..GROUP_ROWS)
        .map(|r| {
            Some(if r < GROUP_PACKS {
                r
            } else {
                (r.wrapping_mul(2_654_435_761) >> 7) % GROUP_PACKS
            })
        })
        .collect();
    let pack_of_row = gpu.upload_pack_of_row(&sets[0], &assignment)?;
    let mut rows_of = [0usize; GROUP_PACKS];
    for p in assignment.iter().flatten() {
        rows_of[*p] += 1;
    }
    let group_bytes = GROUP_PACKS * pack_bytes;
    records.push(measure_copy(clock, s, l2, GROUPED, group_bytes)?);

    let rotation = match &baselines {
        Some(b) => sets.len().max(b.dense.len()),
        None => sets.len(),
    };
    let mut io = Io::new(stream, GROUP_ROWS, rotation)?;
    let timings = clock.eager_and_graph(s, rotation, |i| {
        gpu.apply::<f16, f16>(
            &sets[i % sets.len()],
            &mut ws,
            &io.xs[i],
            C_IN,
            GROUP_ROWS,
            Some(&pack_of_row),
            &mut io.ys[i],
            C_OUT,
            None,
        )
    })?;
    push_pair(
        records,
        GROUPED,
        GROUP_ROWS,
        "skillpack",
        timings,
        sets.len(),
        group_bytes,
    );

    if let Some(b) = baselines {
        // Rows grouped by skillpack (contiguous), one GEMM each with its own weight.
        let dense = &b.dense;
        let blas = &b.blas;
        let timings = clock.eager_and_graph(s, rotation, |i| {
            let mut first = 0;
            for (p, &n) in rows_of.iter().enumerate() {
                let w = &dense[(i * GROUP_PACKS + p) % dense.len()];
                let x = io.xs[i].slice(first * C_IN..(first + n) * C_IN);
                let mut y = io.ys[i].slice_mut(first * C_OUT..(first + n) * C_OUT);
                blas.gemm_f16(&x, w, &mut y, GemmDims::new(n, C_IN, C_OUT), false)?;
                first += n;
            }
            Ok(())
        })?;
        push_pair(
            records,
            GROUPED,
            GROUP_ROWS,
            "dense-fp16",
            timings,
            dense.len(),
            GROUP_PACKS * DENSE_BYTES,
        );
    }
    Ok(())
}

/// The tables written at the end.
struct Report<'a> {
    device: String,
    /// Whether cudarc's per-buffer event tracking was active (it costs host time per launch).
    tracking: bool,
    l2: usize,
    settings: &'a Settings,
    wall_s: f64,
    records: &'a [Record],
}

impl Report<'_> {
    fn find(&self, case: &str, rows: usize, method: &str, graph: bool) -> Option<&Record> {
        self.records
            .iter()
            .find(|r| r.case == case && r.rows == rows && r.method == method && r.graph == graph)
    }

    fn us(&self, case: &str, rows: usize, method: &str, graph: bool) -> Option<f64> {
        self.find(case, rows, method, graph)
            .map(|r| r.timing.median_us)
    }

    fn markdown(&self) -> String {
        let s = self.settings;
        let cell = |v: Option<f64>| v.map_or("n/a".to_string(), |v| format!("{v:.2}"));
        let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) if b > 0.0 => format!("{:.2}x", a / b),
            _ => "n/a".to_string(),
        };
        let mut md = String::new();
        let _ = writeln!(md, "# SkillZip GPU kernel table\n");
        let _ = writeln!(md, "- GPU: {}", self.device);
        let _ = writeln!(
            md,
            "- shape: Llama-3.1-8B `down_proj`, C_i = {C_IN}, C_o = {C_OUT}, rank {RANK}; \
             activations and outputs f16; skillpacks with smoothing, dynamic activation \
             scales and dynamic truncation (`RandomLayer`, seed {SEED})"
        );
        let _ = writeln!(
            md,
            "- timing: CUDA events; per call = median over {} repeats of a batch of whole \
             operand rotations (about {} ms each) / calls in the batch{}",
            s.repeats,
            s.target_ms,
            if s.quick { " (quick mode)" } else { "" }
        );
        let _ = writeln!(
            md,
            "- cold operands: weights, inputs and outputs rotate through at least \
             {MIN_COPIES} copies and more than 2 x L2 ({:.0} MiB) of weights per rotation, \
             for the kernel and the baselines alike; graph = the whole rotation captured \
             once as one CUDA graph and replayed",
            2.0 * self.l2 as f64 / f64::from(1 << 20)
        );
        let _ = writeln!(
            md,
            "- eager = `Gpu::apply` / `cublasGemmEx` issued one by one as the library does; \
             cudarc event tracking {} (when on, every buffer argument adds a \
             `cuStreamWaitEvent` and a `cuEventRecord` on the host)",
            if self.tracking { "on" } else { "off" }
        );
        let _ = writeln!(md, "- wall time of the run: {:.1} s\n", self.wall_s);

        let _ = writeln!(
            md,
            "| case | T | skillpack µs | skillpack graph µs | dense FP16 µs | \
             dense FP16 graph µs | FP16 low-rank graph µs | copy µs | floor µs | \
             dense/skillpack | skillpack/floor |"
        );
        let _ = writeln!(
            md,
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        );
        let mut rows_of_table: Vec<(&str, usize, &str, &str)> = Vec::new();
        for case in ["X8A8B8", "X8A4B4"] {
            for rows in DECODE.into_iter().chain([PREFILL]) {
                rows_of_table.push((case, rows, DENSE, case));
            }
        }
        rows_of_table.push((GROUPED, GROUP_ROWS, GROUPED, GROUPED));
        for (case, rows, dense_case, copy_case) in rows_of_table {
            let sp = self.us(case, rows, "skillpack", false);
            let sp_graph = self.us(case, rows, "skillpack", true);
            if sp.is_none() && sp_graph.is_none() {
                continue;
            }
            let dense = self.us(dense_case, rows, "dense-fp16", false);
            let dense_graph = self.us(dense_case, rows, "dense-fp16", true);
            let low_graph = if dense_case == DENSE {
                self.us(DENSE, rows, "lowrank-fp16", true)
            } else {
                None
            };
            let copy_label = if copy_case == GROUPED {
                GROUPED.to_string()
            } else {
                format!("skillpack {copy_case}")
            };
            let copy = self.us(&copy_label, 0, "copy", false);
            let floor = copy.map(|c| c / 2.0);
            let _ = writeln!(
                md,
                "| {case} | {rows} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                cell(sp),
                cell(sp_graph),
                cell(dense),
                cell(dense_graph),
                cell(low_graph),
                cell(copy),
                cell(floor),
                ratio(dense_graph, sp_graph),
                ratio(sp_graph, floor),
            );
        }
        let _ = writeln!(
            md,
            "\nRatios use the graph timings. *copy*: a device-to-device copy of as many bytes \
             as the skillpack's packed Â + B̂ (grouped: all {GROUP_PACKS} skillpacks), cold; \
             *floor* = copy / 2, the time to read those bytes once at the copy's bandwidth (a \
             copy reads and writes every byte; reads alone usually stream a little faster, so \
             the true floor is a little lower). Grouped dense: one FP16 GEMM per skillpack's \
             rows, each with its own weight.\n"
        );

        let _ = writeln!(
            md,
            "| copied bytes of | MB | copies | copy µs | GB/s (read + write) |"
        );
        let _ = writeln!(md, "|---|---:|---:|---:|---:|");
        for r in self.records.iter().filter(|r| r.method == "copy") {
            let t = r.timing.median_us;
            let _ = writeln!(
                md,
                "| {} | {:.2} | {} | {:.2} | {:.0} |",
                r.case,
                r.weight_bytes as f64 / 1e6,
                r.copies,
                t,
                2.0 * r.weight_bytes as f64 / (t * 1e3)
            );
        }
        md
    }

    fn csv(&self) -> String {
        let mut csv = String::from(
            "case,rows,method,graph,median_us,min_us,max_us,repeats,calls_per_repeat,copies,weight_bytes\n",
        );
        for r in self.records {
            let t = &r.timing;
            let _ = writeln!(
                csv,
                "{},{},{},{},{:.3},{:.3},{:.3},{},{},{},{}",
                r.case,
                r.rows,
                r.method,
                r.graph,
                t.median_us,
                t.min_us,
                t.max_us,
                t.repeats,
                t.calls_per_repeat,
                r.copies,
                r.weight_bytes
            );
        }
        csv
    }
}
