//! Writes a synthetic Llama-family base checkpoint and a fine-tune of it, of any size, for
//! measuring memory and time of `skillzip calibrate` / `skillzip compress` on models larger
//! than the 135M one the project ships with.
//!
//! ```text
//! cargo run --release -p skillzip-lm --example synthetic_checkpoint -- --out DIR \
//!     [--layers N] [--hidden D] [--intermediate F] [--heads H] [--kv-heads K] [--vocab V] \
//!     [--dtype BF16|F16|F32] [--seed S] [--delta-rank R]
//! ```
//!
//! It writes
//! - `DIR/base`: random weights (`N(0, 0.02²)` for embeddings, LM head and linear weights;
//!   RMSNorm weights `1 + N(0, 0.02²)`), `config.json` and a word-level `tokenizer.json`
//!   (`<unk>` = 0, words `w1`..`w999`);
//! - `DIR/tuned`: the same weights plus a fine-tune-like delta on every linear weight — a
//!   low-rank part `Σ_i σ_i u_i v_iᵀ` (`σ_i ∝ (i+1)^-0.7`, `--delta-rank` terms, unit random
//!   directions) plus dense noise of a tenth of its norm, scaled so that `‖Δ‖_F` is 1% of
//!   `‖W‖_F`; embeddings, norms and the LM head are unchanged;
//! - `DIR/prompts.jsonl`: 40 lines `{"text": "w12 w7 …"}` of 64 random words each, for
//!   `skillzip calibrate --prompts`.
//!
//! Both checkpoints are streamed one tensor at a time through
//! [`skillzip_lm::save::save_checkpoint`]; every tensor is generated from its own seed (the
//! global `--seed` and the tensor's name), so the tuned pass regenerates each base tensor
//! instead of keeping the base model, memory stays at one tensor, and the files are
//! bit-reproducible from the seed (single-threaded GEMM, fixed sampling order).
//!
//! The defaults (hidden 2048, intermediate 5632, 16 heads, 4 key/value heads, 8 layers,
//! vocab 32000, untied LM head) give 45.1M parameters per block and 491.8M in all: about
//! 0.98 GB per checkpoint in BF16.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use faer::linalg::matmul::matmul;
use faer::{Accum, Mat, Par};
use rand::RngExt;
use rand_distr::{Distribution, Normal, StandardNormal};
use skillzip_core::{SeededRng, seeded_rng};
use skillzip_lm::checkpoint::{TensorRole, tensor_specs};
use skillzip_lm::config::LlamaConfig;
use skillzip_lm::save::{DenseDtype, SaveOptions, save_checkpoint};
use skillzip_lm::tokenizer::Tokenizer;

/// Standard deviation of the random weights.
const WEIGHT_STD: f32 = 0.02;
/// `‖Δ‖_F / ‖W‖_F` of each linear weight.
const DELTA_RELATIVE_NORM: f64 = 0.01;
/// `‖noise‖_F / ‖low-rank part‖_F` of each delta (before the common rescaling).
const NOISE_RELATIVE_NORM: f64 = 0.1;
/// Decay exponent of the delta's singular values, `σ_i ∝ (i+1)^-DECAY`.
const DECAY: f64 = 0.7;
/// Words of the tokenizer (`w1`..`w{WORDS}`; id 0 is `<unk>`).
const WORDS: usize = 999;
/// Prompts in `prompts.jsonl` and words per prompt.
const PROMPTS: usize = 40;
const PROMPT_WORDS: usize = 64;

struct Args {
    out: PathBuf,
    config: LlamaConfig,
    dtype: DenseDtype,
    seed: u64,
    delta_rank: usize,
}

const USAGE: &str = "usage: synthetic_checkpoint --out DIR [--layers N] [--hidden D] \
[--intermediate F] [--heads H] [--kv-heads K] [--vocab V] [--dtype BF16|F16|F32] [--seed S] \
[--delta-rank R]";

fn parse_args() -> Result<Args, String> {
    let mut out = None;
    let mut config = LlamaConfig {
        vocab_size: 32_000,
        hidden_size: 2048,
        intermediate_size: 5632,
        num_hidden_layers: 8,
        num_attention_heads: 16,
        num_key_value_heads: 4,
        rms_norm_eps: 1e-5,
        rope_theta: 10_000.0,
        max_position_embeddings: 2048,
        tie_word_embeddings: false,
    };
    let mut dtype = DenseDtype::BF16;
    let mut seed = 0u64;
    let mut delta_rank = 64usize;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "-h" || flag == "--help" {
            return Err(USAGE.into());
        }
        let value = it
            .next()
            .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?;
        let num = || -> Result<usize, String> {
            value
                .parse()
                .map_err(|_| format!("{flag} {value}: expected a non-negative integer"))
        };
        match flag.as_str() {
            "--out" => out = Some(PathBuf::from(&value)),
            "--layers" => config.num_hidden_layers = num()?,
            "--hidden" => config.hidden_size = num()?,
            "--intermediate" => config.intermediate_size = num()?,
            "--heads" => config.num_attention_heads = num()?,
            "--kv-heads" => config.num_key_value_heads = num()?,
            "--vocab" => config.vocab_size = num()?,
            "--delta-rank" => delta_rank = num()?,
            "--seed" => seed = num()? as u64,
            "--dtype" => {
                dtype = DenseDtype::from_name(&value.to_ascii_uppercase())
                    .ok_or_else(|| format!("--dtype {value}: expected BF16, F16 or F32"))?
            }
            other => return Err(format!("unknown argument {other}\n{USAGE}")),
        }
    }
    let out = out.ok_or_else(|| format!("--out is required\n{USAGE}"))?;
    config.validate("command line").map_err(|e| e.to_string())?;
    if config.vocab_size <= WORDS {
        return Err(format!(
            "--vocab {} must exceed the tokenizer's {} ids",
            config.vocab_size,
            WORDS + 1
        ));
    }
    if delta_rank == 0 {
        return Err("--delta-rank must be at least 1".into());
    }
    Ok(Args {
        out,
        config,
        dtype,
        seed,
        delta_rank,
    })
}

/// A seed for one tensor and stream: FNV-1a of the name, mixed with the global seed by
/// SplitMix64's finaliser.
fn tensor_seed(seed: u64, name: &str, stream: u64) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for b in name.bytes() {
        h = (h ^ b as u64).wrapping_mul(0x0100_0000_01b3);
    }
    let mut z = h ^ seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ stream.rotate_left(32);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

const BASE_STREAM: u64 = 1;
const DELTA_STREAM: u64 = 2;

fn normal() -> Normal<f32> {
    Normal::new(0.0, WEIGHT_STD).unwrap_or_else(|_| unreachable!("a positive finite std"))
}

/// The base value of one tensor (row-major).
fn base_tensor(seed: u64, name: &str, n: usize, role: TensorRole) -> Vec<f32> {
    let mut rng = seeded_rng(tensor_seed(seed, name, BASE_STREAM));
    let dist = normal();
    match role {
        TensorRole::Norm => (0..n).map(|_| 1.0 + dist.sample(&mut rng)).collect(),
        _ => (0..n).map(|_| dist.sample(&mut rng)).collect(),
    }
}

fn frobenius(v: &[f32]) -> f64 {
    v.iter()
        .map(|x| (*x as f64) * (*x as f64))
        .sum::<f64>()
        .sqrt()
}

/// A unit vector of `n` Gaussian entries.
fn unit_vector(rng: &mut SeededRng, n: usize) -> Vec<f32> {
    let v: Vec<f64> = (0..n).map(|_| StandardNormal.sample(rng)).collect();
    let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
    v.iter().map(|x| (x / norm) as f32).collect()
}

/// The delta of a linear weight `[out, inp]` (row-major) whose base has Frobenius norm
/// `base_norm`: a power-law low-rank part plus dense noise, scaled to 1% of `base_norm`.
fn linear_delta(
    seed: u64,
    name: &str,
    out: usize,
    inp: usize,
    rank: usize,
    base_norm: f64,
) -> Vec<f32> {
    let mut rng = seeded_rng(tensor_seed(seed, name, DELTA_STREAM));
    let rank = rank.min(out).min(inp);
    // Δᵀ = V · (U·diag σ)ᵀ is `inp × out`, column-major: column o is row o of Δ.
    let mut v = Mat::<f32>::zeros(inp, rank);
    let mut us = Mat::<f32>::zeros(out, rank);
    for i in 0..rank {
        let sigma = ((i + 1) as f64).powf(-DECAY) as f32;
        let u = unit_vector(&mut rng, out);
        let w = unit_vector(&mut rng, inp);
        for (o, x) in u.iter().enumerate() {
            us[(o, i)] = sigma * x;
        }
        for (j, x) in w.iter().enumerate() {
            v[(j, i)] = *x;
        }
    }
    let mut dt = Mat::<f32>::zeros(inp, out);
    matmul(
        dt.as_mut(),
        Accum::Replace,
        v.as_ref(),
        us.transpose(),
        1.0,
        Par::Seq,
    );
    let mut delta = Vec::with_capacity(out * inp);
    for o in 0..out {
        delta.extend((0..inp).map(|j| dt[(j, o)]));
    }
    drop(dt);
    let low_rank_norm = frobenius(&delta);
    // Unit-variance noise has norm ≈ √(out·inp).
    let noise_scale = (NOISE_RELATIVE_NORM * low_rank_norm / ((out * inp) as f64).sqrt()) as f32;
    for d in delta.iter_mut() {
        let z: f32 = StandardNormal.sample(&mut rng);
        *d += noise_scale * z;
    }
    let scale = (DELTA_RELATIVE_NORM * base_norm / frobenius(&delta)) as f32;
    delta.iter_mut().for_each(|d| *d *= scale);
    delta
}

fn tokenizer_json() -> serde_json::Value {
    let mut vocab = serde_json::Map::new();
    vocab.insert("<unk>".into(), 0.into());
    for i in 1..=WORDS {
        vocab.insert(format!("w{i}"), i.into());
    }
    serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [],
        "normalizer": null,
        "pre_tokenizer": { "type": "Whitespace" },
        "post_processor": null,
        "decoder": null,
        "model": { "type": "WordLevel", "vocab": vocab, "unk_token": "<unk>" },
    })
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<(), String> {
    std::fs::write(path, bytes).map_err(|e| format!("{}: {e}", path.display()))
}

fn write_tokenizer(dir: &Path) -> Result<(), String> {
    let json = serde_json::to_vec_pretty(&tokenizer_json()).map_err(|e| e.to_string())?;
    write_file(&dir.join("tokenizer.json"), &json)?;
    let tok = Tokenizer::from_hf_dir(dir).map_err(|e| e.to_string())?;
    let ids = tok.encode("w1 w999 w500").map_err(|e| e.to_string())?;
    if ids != [1, 999, 500] || tok.vocab_size() != WORDS + 1 {
        return Err(format!(
            "{}: the tokenizer reads \"w1 w999 w500\" as {ids:?} (vocab {})",
            dir.display(),
            tok.vocab_size()
        ));
    }
    Ok(())
}

fn write_prompts(path: &Path, seed: u64) -> Result<(), String> {
    let mut rng = seeded_rng(tensor_seed(seed, "prompts.jsonl", 0));
    let mut text = String::new();
    for _ in 0..PROMPTS {
        let words: Vec<String> = (0..PROMPT_WORDS)
            .map(|_| format!("w{}", rng.random_range(1..=WORDS)))
            .collect();
        text.push_str(&serde_json::json!({ "text": words.join(" ") }).to_string());
        text.push('\n');
    }
    write_file(path, text.as_bytes())
}

fn run() -> Result<(), String> {
    let a = parse_args()?;
    let c = &a.config;
    let specs = tensor_specs(c);
    let params: usize = specs
        .iter()
        .map(|(_, s, _)| s.iter().product::<usize>())
        .sum();
    let block: usize = specs
        .iter()
        .filter(|(n, _, _)| n.starts_with("model.layers.0."))
        .map(|(_, s, _)| s.iter().product::<usize>())
        .sum();
    let largest = specs
        .iter()
        .filter(|(_, _, r)| matches!(r, TensorRole::Linear(..)))
        .map(|(_, s, _)| s.iter().product::<usize>())
        .max()
        .unwrap_or(0);
    let elem = a.dtype.size();
    eprintln!(
        "{} blocks of {:.1}M parameters, {:.1}M in all: {:.1} MB per checkpoint in {}; \
         largest linear {:.1}M parameters ({:.1} MB in f32)",
        c.num_hidden_layers,
        block as f64 / 1e6,
        params as f64 / 1e6,
        (params * elem) as f64 / 1e6,
        a.dtype.name(),
        largest as f64 / 1e6,
        (largest * 4) as f64 / 1e6,
    );
    std::fs::create_dir_all(&a.out).map_err(|e| format!("{}: {e}", a.out.display()))?;
    let opts = SaveOptions {
        dtype: a.dtype,
        max_shard_bytes: None,
    };
    let seed_text = a.seed.to_string();
    let rank_text = a.delta_rank.to_string();
    let role_of = |name: &str| {
        specs
            .iter()
            .find(|(n, _, _)| n == name)
            .map(|(_, _, r)| *r)
            .ok_or_else(|| skillzip_lm::Error::InvalidInput(format!("unknown tensor {name}")))
    };
    for tuned in [false, true] {
        let dir = a.out.join(if tuned { "tuned" } else { "base" });
        let start = std::time::Instant::now();
        let meta = [
            ("skillzip", "synthetic"),
            ("role", if tuned { "tuned" } else { "base" }),
            ("seed", seed_text.as_str()),
            ("delta_rank", rank_text.as_str()),
        ];
        let report = save_checkpoint(&dir, c, opts, &meta, |name, shape| {
            let role = role_of(name)?;
            let n = shape.iter().product();
            let mut w = base_tensor(a.seed, name, n, role);
            if tuned && let TensorRole::Linear(..) = role {
                let delta = linear_delta(
                    a.seed,
                    name,
                    shape[0],
                    shape[1],
                    a.delta_rank,
                    frobenius(&w),
                );
                w.iter_mut().zip(&delta).for_each(|(x, d)| *x += d);
            }
            Ok(w)
        })
        .map_err(|e| format!("{}: {e}", dir.display()))?;
        write_tokenizer(&dir)?;
        eprintln!(
            "wrote {} ({} bytes) in {:.1} s",
            dir.display(),
            report.bytes,
            start.elapsed().as_secs_f64()
        );
    }
    write_prompts(&a.out.join("prompts.jsonl"), a.seed)?;
    eprintln!("wrote {}", a.out.join("prompts.jsonl").display());
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("synthetic_checkpoint: {e}");
            ExitCode::from(2)
        }
    }
}
