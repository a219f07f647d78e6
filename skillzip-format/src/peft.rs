//! Export of a skillpack as a PEFT LoRA adapter (DESIGN.md §5), so vLLM, PEFT or S-LoRA can
//! serve it dequantized.
//!
//! `adapter_model.safetensors` holds, for each layer `<m>` (HF module name):
//!
//! - `base_model.model.<m>.lora_A.weight` `[r, in]`: `lora_A[k, i] = s⁻¹[i] · Â_deq[k, i]`
//!   (the smoothing folded in; `Â_deq = code · σ_A`);
//! - `base_model.model.<m>.lora_B.weight` `[out, r]`: `lora_B[o, k] = B̂_deq[o, k]` (the
//!   per-output-channel or per-tensor scale applied).
//!
//! so `lora_B · lora_A` is the layer's `effective_weight()` transposed (HF `[out, in]`).
//! `adapter_config.json` sets `lora_alpha = r` and, per layer, `alpha_pattern[m] =
//! rank_pattern[m] = R_m` wherever `R_m ≠ r`, so the LoRA scaling `alpha / r` is 1 everywhere;
//! `r` is the most common rank (ties: the smaller).
//!
//! What a LoRA adapter cannot express, and the export therefore does not carry:
//!
//! - **activation quantization and truncation**: the adapter computes `x · lora_Aᵀ · lora_Bᵀ`
//!   in floating point; SkillZip's INT8/INT4 activations and the i32→i8 truncation of the
//!   intermediate (DESIGN.md §4.6) are gone, so outputs differ from the integer runtime by
//!   that quantization error (the export is the dequantized weights, exactly);
//! - **dense tensors** (embeddings, norms, biases, `lm_head`): listed in
//!   [`PeftReport::not_exported`]; and
//! - **the merged backbone**: the skillpacks apply to `θ_0 + Δ_shared`, so the caller must
//!   write that merged backbone as its own checkpoint and point `base_model_name_or_path` at
//!   it — an adapter on the original `θ_0` is wrong. That is the model crate's job.
//!
//! `rank_pattern` keys are full module names (`model.layers.3.mlp.down_proj`), which PEFT's
//! `get_pattern_key` matches as `(.*\.)?<key>$`. `target_modules` is the set of leaf names
//! (`q_proj`, `down_proj`, …): PEFT wraps every module with such a leaf name, and those the
//! skillpack does not cover keep LoRA's zero initialisation of `lora_B` (no effect).
//! Engines cap LoRA ranks (vLLM at 512); each layer above [`PeftOptions::target_engine_rank_cap`]
//! gets a warning in [`PeftReport::warnings`].

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use half::f16;
use safetensors::tensor::Dtype;
use serde_json::{Map, Value, json};
use skillzip_core::layer::CompressedLayer;

use crate::atomic::write_atomic_bytes;
use crate::container::{self, Owned};
use crate::error::{Error, Result};
use crate::skillpack::Skillpack;

/// vLLM's largest LoRA rank.
pub const VLLM_MAX_LORA_RANK: usize = 512;
/// The adapter config file name.
pub const ADAPTER_CONFIG_FILE: &str = "adapter_config.json";
/// The adapter weights file name.
pub const ADAPTER_MODEL_FILE: &str = "adapter_model.safetensors";

/// The storage type of the exported LoRA factors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PeftDtype {
    /// f32: exactly the dequantized factors.
    #[default]
    F32,
    /// f16: rounded to nearest even; a value beyond the f16 range is an error.
    F16,
}

/// Options of [`export_peft`].
#[derive(Debug, Clone, PartialEq)]
pub struct PeftOptions {
    /// `base_model_name_or_path` of the config: the merged backbone `θ_0 + Δ_shared`.
    pub base_model_name_or_path: String,
    /// Warn for layers whose rank exceeds this (default: vLLM's 512).
    pub target_engine_rank_cap: Option<usize>,
    /// Storage type of the factors (default f32).
    pub dtype: PeftDtype,
}

impl Default for PeftOptions {
    fn default() -> Self {
        Self {
            base_model_name_or_path: String::new(),
            target_engine_rank_cap: Some(VLLM_MAX_LORA_RANK),
            dtype: PeftDtype::F32,
        }
    }
}

/// What [`export_peft`] wrote and could not write.
#[derive(Debug, Clone, PartialEq)]
pub struct PeftReport {
    /// Path of `adapter_config.json`.
    pub config_path: PathBuf,
    /// Path of `adapter_model.safetensors`.
    pub weights_path: PathBuf,
    /// Bytes of the weights file.
    pub weights_bytes: u64,
    /// The config's default rank `r` (also its `lora_alpha`).
    pub r: usize,
    /// Every exported module's rank.
    pub ranks: BTreeMap<String, usize>,
    /// The config's `target_modules` (leaf names).
    pub target_modules: Vec<String>,
    /// Dense tensors of the skillpack a LoRA adapter cannot hold (they belong in the merged
    /// backbone checkpoint or a full-weight export).
    pub not_exported: Vec<String>,
    /// Layers whose rank exceeds the target engine's cap.
    pub warnings: Vec<String>,
}

/// The dequantized LoRA factors of one layer.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraFactors {
    /// Rank `r`.
    pub rank: usize,
    /// `in` = `C_i`.
    pub c_in: usize,
    /// `out` = `C_o`.
    pub c_out: usize,
    /// `lora_A`, `[r, in]` row-major: `s⁻¹[i] · (code · σ_A)`.
    pub a: Vec<f32>,
    /// `lora_B`, `[out, r]` row-major: `code · σ_B[o]`.
    pub b: Vec<f32>,
}

/// The LoRA factors of `layer` (see the module docs). `lora_A` uses the same f32 operations as
/// `CompressedLayer::effective_weight`.
pub fn lora_factors(layer: &CompressedLayer) -> LoraFactors {
    let (r, ci, co) = (layer.rank(), layer.c_in(), layer.c_out());
    let a_deq = layer.a().dequantize();
    let a = match layer.s_inv() {
        Some(s) => a_deq
            .iter()
            .enumerate()
            .map(|(idx, v)| s[idx % ci] * v)
            .collect(),
        None => a_deq,
    };
    LoraFactors {
        rank: r,
        c_in: ci,
        c_out: co,
        a,
        b: layer.b().dequantize(),
    }
}

fn leaf(module: &str) -> &str {
    module.rsplit('.').next().unwrap_or(module)
}

/// The most common rank, ties to the smaller (`None` without layers).
fn common_rank(ranks: &BTreeMap<String, usize>) -> Option<usize> {
    let mut counts: BTreeMap<usize, usize> = BTreeMap::new();
    for &r in ranks.values() {
        *counts.entry(r).or_default() += 1;
    }
    // BTreeMap iterates ranks ascending; `max_by_key` keeps the last maximum, so reverse.
    counts
        .iter()
        .rev()
        .max_by_key(|(_, c)| **c)
        .map(|(r, _)| *r)
}

/// The two adapter files in memory, and the report.
#[derive(Debug, Clone)]
pub struct AdapterFiles {
    /// `adapter_config.json`.
    pub config: Vec<u8>,
    /// `adapter_model.safetensors`.
    pub weights: Vec<u8>,
    /// The report (paths empty).
    pub report: PeftReport,
}

/// Builds both adapter files in memory (what [`export_peft`] writes).
pub fn adapter_files(pack: &Skillpack, opts: &PeftOptions) -> Result<AdapterFiles> {
    build(pack, opts, "<memory>")
}

fn build(pack: &Skillpack, opts: &PeftOptions, label: &str) -> Result<AdapterFiles> {
    let ranks: BTreeMap<String, usize> = pack
        .layers
        .iter()
        .map(|(m, e)| (m.clone(), e.layer.rank()))
        .collect();
    let Some(r) = common_rank(&ranks) else {
        return Err(Error::invalid(
            label,
            "layers",
            "the skillpack has no linear layers to export",
        ));
    };
    let mut tensors = BTreeMap::new();
    for (module, entry) in &pack.layers {
        let f = lora_factors(&entry.layer);
        let prefix = format!("base_model.model.{module}");
        let a_name = format!("{prefix}.lora_A.weight");
        let b_name = format!("{prefix}.lora_B.weight");
        let a = factor(&f.a, vec![f.rank, f.c_in], opts.dtype, label, &a_name)?;
        let b = factor(&f.b, vec![f.c_out, f.rank], opts.dtype, label, &b_name)?;
        tensors.insert(a_name, a);
        tensors.insert(b_name, b);
    }
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    let weights = container::serialize(&tensors, Some(metadata), label)?;

    let target_modules: Vec<String> = ranks
        .keys()
        .map(|m| leaf(m).to_string())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let mut rank_pattern = Map::new();
    let mut alpha_pattern = Map::new();
    for (m, &rank) in &ranks {
        if rank != r {
            rank_pattern.insert(m.clone(), rank.into());
            alpha_pattern.insert(m.clone(), rank.into());
        }
    }
    let config = json!({
        "alpha_pattern": Value::Object(alpha_pattern),
        "auto_mapping": null,
        "base_model_name_or_path": opts.base_model_name_or_path,
        "bias": "none",
        "fan_in_fan_out": false,
        "inference_mode": true,
        "init_lora_weights": true,
        "layers_pattern": null,
        "layers_to_transform": null,
        "lora_alpha": r,
        "lora_dropout": 0.0,
        "modules_to_save": null,
        "peft_type": "LORA",
        "r": r,
        "rank_pattern": Value::Object(rank_pattern),
        "revision": null,
        "target_modules": target_modules,
        "task_type": "CAUSAL_LM",
        "use_dora": false,
        "use_rslora": false,
    });
    let mut config_bytes = serde_json::to_vec_pretty(&config)
        .map_err(|e| Error::json(label, ADAPTER_CONFIG_FILE, e))?;
    config_bytes.push(b'\n');

    let warnings = match opts.target_engine_rank_cap {
        Some(cap) => ranks
            .iter()
            .filter(|(_, r)| **r > cap)
            .map(|(m, r)| format!("{m}: rank {r} exceeds the target engine's LoRA rank cap {cap}"))
            .collect(),
        None => Vec::new(),
    };
    let report = PeftReport {
        config_path: PathBuf::new(),
        weights_path: PathBuf::new(),
        weights_bytes: weights.len() as u64,
        r,
        ranks,
        target_modules,
        not_exported: pack.dense.keys().cloned().collect(),
        warnings,
    };
    Ok(AdapterFiles {
        config: config_bytes,
        weights,
        report,
    })
}

fn factor(
    values: &[f32],
    shape: Vec<usize>,
    dtype: PeftDtype,
    file: &str,
    tensor: &str,
) -> Result<Owned> {
    let bad = |index| Error::NonFinite {
        file: file.into(),
        tensor: tensor.into(),
        index,
    };
    let mut data = Vec::with_capacity(values.len() * 4);
    for (i, &v) in values.iter().enumerate() {
        if !v.is_finite() {
            return Err(bad(i));
        }
        match dtype {
            PeftDtype::F32 => data.extend_from_slice(&v.to_le_bytes()),
            PeftDtype::F16 => {
                let h = f16::from_f32(v);
                if !h.is_finite() {
                    return Err(bad(i));
                }
                data.extend_from_slice(&h.to_le_bytes());
            }
        }
    }
    Ok(Owned {
        dtype: match dtype {
            PeftDtype::F32 => Dtype::F32,
            PeftDtype::F16 => Dtype::F16,
        },
        shape,
        data,
    })
}

/// Writes `dir/adapter_config.json` and `dir/adapter_model.safetensors` (each atomically;
/// the directory must exist) for `pack`. See the module docs for what the adapter holds and
/// what it cannot.
pub fn export_peft(
    pack: &Skillpack,
    dir: impl AsRef<Path>,
    opts: &PeftOptions,
) -> Result<PeftReport> {
    let dir = dir.as_ref();
    let config_path = dir.join(ADAPTER_CONFIG_FILE);
    let weights_path = dir.join(ADAPTER_MODEL_FILE);
    let files = build(pack, opts, &weights_path.display().to_string())?;
    let weights_bytes = write_atomic_bytes(&weights_path, &files.weights)?;
    write_atomic_bytes(&config_path, &files.config)?;
    Ok(PeftReport {
        config_path,
        weights_path,
        weights_bytes,
        ..files.report
    })
}
