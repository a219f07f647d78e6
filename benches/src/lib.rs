//! Shared fixtures of the SkillZip benches: the paper's shapes and the synthetic inputs
//! (power-law deltas, activations with outlier channels) they are measured on.
#![deny(missing_docs)]

use faer::Mat;
use skillzip_core::compress::CompressConfig;
use skillzip_core::kernels::pack::Block;
use skillzip_core::synth::{ActivationModel, Splits, power_law_matrix};

/// A linear layer shape from the paper's kernel table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    /// Name used in bench ids.
    pub name: &'static str,
    /// Input channels `C_i`.
    pub c_in: usize,
    /// Output channels `C_o`.
    pub c_out: usize,
    /// The paper's rank for this shape.
    pub rank: usize,
}

/// Llama-3.1-8B `down_proj` (14336 → 4096) at rank 600.
pub const DOWN_PROJ: Shape = Shape {
    name: "llama8b_down_proj",
    c_in: 14336,
    c_out: 4096,
    rank: 600,
};
/// Llama-3.1-8B `q_proj` (4096 → 4096) at rank 400.
pub const Q_PROJ: Shape = Shape {
    name: "llama8b_q_proj",
    c_in: 4096,
    c_out: 4096,
    rank: 400,
};

/// Decode batch sizes of the paper's kernel table.
pub const DECODE_TOKENS: [usize; 4] = [1, 4, 10, 32];

/// Prefill length of the paper's kernel table.
pub const PREFILL_TOKENS: usize = 1000;

/// Ranks the paper uses on the Llama-3.1-8B projections.
pub const PAPER_RANKS: [usize; 3] = [300, 400, 600];

/// Calibration / selection rows used for compression benches.
pub const SPLITS: (usize, usize, usize) = (1024, 128, 1);

/// A deterministic delta of `shape` with `σ_i ∝ (i+1)^-0.5` and calibration splits.
pub fn fixture(shape: Shape) -> (Mat<f32>, Splits) {
    let delta = power_law_matrix(shape.c_in, shape.c_out, 0.5, 1.0, 7);
    let model = ActivationModel::new(shape.c_in, 64, shape.c_in / 256, 50.0, 8);
    (delta, Splits::draw(&model, SPLITS, 9))
}

/// The full SkillZip configuration the benches time: α search over the default grid,
/// 10 rotation candidates, GPTQ, X8A8B8.
pub fn full_config(shape: Shape) -> CompressConfig {
    CompressConfig::skillzip(shape.rank)
}

/// Peak resident set size of this process in bytes (`VmHWM`), where the OS reports it.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// SmolLM2-135M linear shapes the server runs (`q/o_proj` 576², `gate/up_proj` 576→1536,
/// `down_proj` 1536→576); the rank is set per bench.
pub const SMOLLM_SHAPES: [Shape; 3] = [
    Shape {
        name: "smollm_576x576",
        c_in: 576,
        c_out: 576,
        rank: 64,
    },
    Shape {
        name: "smollm_576x1536",
        c_in: 576,
        c_out: 1536,
        rank: 64,
    },
    Shape {
        name: "smollm_1536x576",
        c_in: 1536,
        c_out: 576,
        rank: 64,
    },
];

/// Bytes the rotating copies of a benchmarked operand must span so that every iteration
/// reads them from DRAM: three times a 32 MiB last-level cache.
pub const COLD_BYTES: usize = 96 << 20;

/// Copies of an operand, handed out round-robin so that consecutive iterations touch
/// different memory and the total exceeds the last-level cache ([`COLD_BYTES`]). Kernel and
/// baselines are measured cold alike.
#[derive(Debug)]
pub struct Cold<T> {
    copies: Vec<T>,
    next: usize,
}

impl<T> Cold<T> {
    /// `make(i)` builds copy `i`; enough copies are made to cover [`COLD_BYTES`] given
    /// `bytes` per copy (at least one).
    pub fn new(bytes: usize, mut make: impl FnMut(usize) -> T) -> Self {
        let count = COLD_BYTES.div_ceil(bytes.max(1)).max(1);
        Self {
            copies: (0..count).map(&mut make).collect(),
            next: 0,
        }
    }

    /// The next copy in rotation.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> &T {
        let i = self.next;
        self.next = (i + 1) % self.copies.len();
        &self.copies[i]
    }

    /// Number of copies.
    pub fn len(&self) -> usize {
        self.copies.len()
    }

    /// Whether there are no copies (never, by construction).
    pub fn is_empty(&self) -> bool {
        self.copies.is_empty()
    }
}

/// Reads every byte of `parts` once, split over rayon's pool in 256 KiB chunks, and returns
/// a checksum so the reads cannot be optimised away: the memory floor the decode kernels are
/// compared with (same bytes, same threads).
pub fn stream_read(parts: &[&[Block]]) -> u64 {
    use rayon::prelude::*;
    const CHUNK_BLOCKS: usize = 4096;
    parts
        .iter()
        .map(|part| {
            part.par_chunks(CHUNK_BLOCKS)
                .map(|chunk| {
                    let mut lanes = [0u64; 8];
                    for block in chunk {
                        for (lane, w) in lanes.iter_mut().zip(block.0.chunks_exact(8)) {
                            *lane = lane.wrapping_add(u64::from_le_bytes(w.try_into().unwrap()));
                        }
                    }
                    lanes.iter().fold(0u64, |a, &b| a.wrapping_add(b))
                })
                .reduce(|| 0, u64::wrapping_add)
        })
        .fold(0, u64::wrapping_add)
}

/// A random X8A8B8 layer of `shape` at `rank`, packed for the CPU kernels.
pub fn packed_layer(shape: Shape, rank: usize, seed: u64) -> skillzip_core::kernels::PackedLayer {
    use skillzip_core::synth::{RandomLayer, random_layer};
    let spec = RandomLayer::x8a8b8(shape.c_in, rank, shape.c_out);
    let layer =
        random_layer(&spec, &mut skillzip_core::seeded_rng(seed)).expect("valid random layer");
    skillzip_core::kernels::PackedLayer::new(&layer)
}

/// `t × c_in` activations uniform in `[-2, 2)`, row-major, seeded.
pub fn activations(t: usize, c_in: usize, seed: u64) -> Vec<f32> {
    use rand::RngExt;
    let mut rng = skillzip_core::seeded_rng(seed);
    (0..t * c_in)
        .map(|_| rng.random_range(-2.0f32..2.0))
        .collect()
}

/// An f32 `rows × cols` matrix uniform in `[-0.05, 0.05)`, seeded: the weights of the dense
/// and low-rank f32 baselines.
pub fn f32_matrix(rows: usize, cols: usize, seed: u64) -> Mat<f32> {
    use rand::RngExt;
    let mut rng = skillzip_core::seeded_rng(seed);
    Mat::from_fn(rows, cols, |_, _| rng.random_range(-0.05f32..0.05))
}

/// `count` skillpacks `skill0, skill1, …` of random X8A8B8 layers of rank `rank` on every
/// linear of a model of `config`, naming backbone `backbone_hash`; skill `k` is seeded
/// `seed + k` (serving cost depends on shapes and rank, not on what a skillpack learned).
pub fn random_skillpacks(
    config: &skillzip_lm::config::LlamaConfig,
    count: usize,
    rank: usize,
    backbone_hash: &str,
    seed: u64,
) -> skillzip_lm::error::Result<Vec<skillzip_format::skillpack::Skillpack>> {
    use skillzip_lm::checkpoint::LinearKind;
    let every_linear: Vec<(usize, LinearKind)> = (0..config.num_hidden_layers)
        .flat_map(|l| LinearKind::ALL.map(|k| (l, k)))
        .collect();
    (0..count)
        .map(|k| {
            skillzip_lm::skillpack::random_skillpack(
                &format!("skill{k}"),
                config,
                &every_linear,
                rank,
                backbone_hash,
                seed + k as u64,
            )
        })
        .collect()
}

/// Seconds one call of `f` takes.
pub fn time(f: &mut dyn FnMut()) -> f64 {
    let start = std::time::Instant::now();
    f();
    start.elapsed().as_secs_f64()
}

/// The median of `v` (the upper one of an even count); sorts `v`.
pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Medians of a round-robin measurement: each round times every contender once, the
/// order rotating between rounds, so drift of a shared machine's memory bandwidth hits all
/// alike; `ratios[i]` is the median over rounds of `contender i ÷ contender 0`.
#[derive(Debug, Clone, PartialEq)]
pub struct RoundRobin {
    /// Median seconds of each contender.
    pub seconds: Vec<f64>,
    /// Median per-round ratio of each contender to the first.
    pub ratios: Vec<f64>,
}

/// Runs `rounds` rounds over `contenders` (after one warm-up call each).
pub fn round_robin(rounds: usize, contenders: &mut [&mut dyn FnMut()]) -> RoundRobin {
    let n = contenders.len();
    for c in contenders.iter_mut() {
        c();
    }
    let mut times = vec![Vec::with_capacity(rounds); n];
    let mut ratios = vec![Vec::with_capacity(rounds); n];
    for round in 0..rounds.max(1) {
        let mut this = vec![0.0; n];
        for k in 0..n {
            let i = (round + k) % n;
            this[i] = time(&mut *contenders[i]);
        }
        for i in 0..n {
            times[i].push(this[i]);
            ratios[i].push(this[i] / this[0]);
        }
    }
    RoundRobin {
        seconds: times.iter_mut().map(|t| median(t)).collect(),
        ratios: ratios.iter_mut().map(|r| median(r)).collect(),
    }
}

/// A continuous cache holding one copy of a fixed `prompt`-token prompt per row, each
/// prefilled alone through its row's skillpack of `set` (`rows[i]`) or the backbone alone
/// (`set = None`): the state a server's batch is in when it decodes.
pub fn decode_cache(
    model: &skillzip_lm::model::Llama,
    rows: &[Option<usize>],
    prompt: usize,
    mut set: Option<&mut skillzip_lm::skillpack::SkillpackSet>,
) -> skillzip_lm::error::Result<skillzip_lm::model::KvCache> {
    use candle_core::{Device, Tensor};
    use skillzip_lm::model::{KvCache, LinearHook, Logits, NoHook};
    let vocab = model.config().vocab_size as u32;
    let ids: Vec<u32> = (0..prompt as u32).map(|i| (i * 131 + 7) % vocab).collect();
    let mut cache = KvCache::continuous();
    for skill in rows {
        let mut row = KvCache::new();
        let t = Tensor::from_vec(ids.clone(), (1, prompt), &Device::Cpu)?;
        let hook: &mut dyn LinearHook = match set.as_deref_mut() {
            Some(set) => {
                set.assign_rows(&[*skill])?;
                set
            }
            None => &mut NoHook,
        };
        model.forward(&t, Some(&mut row), Logits::Last, hook)?;
        cache.join(row)?;
    }
    Ok(cache)
}

pub mod report;
