//! Writing HF safetensors checkpoints one tensor at a time.
//!
//! [`save_checkpoint`] asks a closure for each tensor of [`tensor_specs`] in order and streams
//! it to disk, so writing a merged or fine-tuned model holds one tensor in memory. Each file
//! (shards, then `model.safetensors.index.json`, then `config.json`) is written to a temporary
//! name and renamed (`skillzip_format::atomic`), so a crash never leaves a half-written file
//! under a real name; the index and config are renamed last, so a reader never sees an index
//! naming shards that are not complete.

use std::io::Write;
use std::path::Path;

use candle_core::Tensor;
use half::{bf16, f16};
use skillzip_format::atomic::{write_atomic, write_atomic_bytes};
pub use skillzip_format::dense::DenseDtype;

use crate::checkpoint::tensor_specs;
use crate::config::LlamaConfig;
use crate::error::{Error, Result};

/// How to write a checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SaveOptions {
    /// Storage type of every tensor.
    pub dtype: DenseDtype,
    /// Start a new shard when the current one would exceed this many bytes (`None`: one
    /// `model.safetensors`).
    pub max_shard_bytes: Option<u64>,
}

impl Default for SaveOptions {
    fn default() -> Self {
        Self {
            dtype: DenseDtype::F32,
            max_shard_bytes: None,
        }
    }
}

/// What [`save_checkpoint`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SaveReport {
    /// The safetensors files, in order.
    pub files: Vec<String>,
    /// Total bytes written (all files).
    pub bytes: u64,
}

fn encode(dtype: DenseDtype, data: &[f32], out: &mut Vec<u8>) {
    out.clear();
    match dtype {
        DenseDtype::F32 => out.extend(data.iter().flat_map(|v| v.to_le_bytes())),
        DenseDtype::F16 => out.extend(data.iter().flat_map(|v| f16::from_f32(*v).to_le_bytes())),
        DenseDtype::BF16 => out.extend(data.iter().flat_map(|v| bf16::from_f32(*v).to_le_bytes())),
    }
}

/// Writes the checkpoint of a `config`-shaped model to `dir` (created if missing): every
/// tensor of [`tensor_specs`], whose values `tensor(name, shape)` returns (row-major f32,
/// finite), plus `config.json`. `metadata` goes into each file's `__metadata__`.
pub fn save_checkpoint(
    dir: &Path,
    config: &LlamaConfig,
    opts: SaveOptions,
    metadata: &[(&str, &str)],
    mut tensor: impl FnMut(&str, &[usize]) -> Result<Vec<f32>>,
) -> Result<SaveReport> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let specs = tensor_specs(config);
    let elem = opts.dtype.size() as u64;
    // Group tensors into shards.
    let mut shards: Vec<Vec<usize>> = vec![Vec::new()];
    let mut size = 0u64;
    for (i, (_, shape, _)) in specs.iter().enumerate() {
        let bytes = shape.iter().product::<usize>() as u64 * elem;
        if let Some(max) = opts.max_shard_bytes
            && size > 0
            && size + bytes > max
        {
            shards.push(Vec::new());
            size = 0;
        }
        if let Some(s) = shards.last_mut() {
            s.push(i);
        }
        size += bytes;
    }
    let n = shards.len();
    let names: Vec<String> = if n == 1 && opts.max_shard_bytes.is_none() {
        vec!["model.safetensors".into()]
    } else {
        (1..=n)
            .map(|i| format!("model-{i:05}-of-{n:05}.safetensors"))
            .collect()
    };
    let mut total = 0u64;
    let mut weight_map = serde_json::Map::new();
    // Shards are written under staging names and renamed only once all are complete, so a
    // failed save leaves a previous checkpoint in `dir` untouched.
    let mut staged = Vec::new();
    let discard = |staged: &[std::path::PathBuf]| {
        staged.iter().for_each(|p| drop(std::fs::remove_file(p)));
    };
    for (file, members) in names.iter().zip(&shards) {
        let list: Vec<(String, Vec<usize>)> = members
            .iter()
            .map(|&i| (specs[i].0.clone(), specs[i].1.clone()))
            .collect();
        for (name, _) in &list {
            weight_map.insert(name.clone(), file.clone().into());
        }
        let path = dir.join(format!(".{file}.staged-{}", std::process::id()));
        match write_streamed(&path, &list, opts.dtype, metadata, &mut tensor) {
            Ok(bytes) => total += bytes,
            Err(e) => {
                discard(&staged);
                return Err(e);
            }
        }
        staged.push(path);
    }
    for (i, (from, file)) in staged.iter().zip(&names).enumerate() {
        if let Err(e) = std::fs::rename(from, dir.join(file)) {
            discard(&staged[i..]);
            return Err(Error::io(dir.join(file), e));
        }
    }
    // An index left by an earlier sharded save would take precedence over a single file.
    let stale_index = dir.join("model.safetensors.index.json");
    if names.len() == 1 && stale_index.exists() {
        std::fs::remove_file(&stale_index).map_err(|e| Error::io(&stale_index, e))?;
    }
    if names.len() > 1 {
        let index = serde_json::json!({
            "metadata": { "total_size": total },
            "weight_map": weight_map,
        });
        let bytes = serde_json::to_vec_pretty(&index).unwrap_or_default();
        total += write_atomic_bytes(dir.join("model.safetensors.index.json"), &bytes)?;
    }
    let config_bytes = serde_json::to_vec_pretty(&config.to_hf_json()).unwrap_or_default();
    total += write_atomic_bytes(dir.join("config.json"), &config_bytes)?;
    Ok(SaveReport {
        files: names,
        bytes: total,
    })
}

/// Produces a tensor's row-major f32 values from its name and shape.
pub type TensorProducer<'a> = dyn FnMut(&str, &[usize]) -> Result<Vec<f32>> + 'a;

/// Writes one safetensors file (atomically) holding `tensors` (name, shape) in order, whose
/// values `tensor(name, shape)` returns one at a time (row-major f32, finite), stored as
/// `dtype`. Returns the bytes written.
pub fn write_streamed(
    path: &Path,
    tensors: &[(String, Vec<usize>)],
    dtype: DenseDtype,
    metadata: &[(&str, &str)],
    tensor: &mut TensorProducer<'_>,
) -> Result<u64> {
    let label = path.display().to_string();
    let elem = dtype.size() as u64;
    let mut header = serde_json::Map::new();
    // HF loaders expect `format: pt`; a caller's own `format` wins.
    let meta: serde_json::Map<String, serde_json::Value> = [("format", "pt")]
        .iter()
        .chain(metadata)
        .map(|(k, v)| (k.to_string(), serde_json::Value::from(*v)))
        .collect();
    header.insert("__metadata__".into(), meta.into());
    let mut offset = 0u64;
    for (name, shape) in tensors {
        let bytes = shape.iter().product::<usize>() as u64 * elem;
        header.insert(
            name.clone(),
            serde_json::json!({
                "dtype": dtype.name(),
                "shape": shape,
                "data_offsets": [offset, offset + bytes],
            }),
        );
        offset += bytes;
    }
    let mut header_bytes = serde_json::to_vec(&header).map_err(|e| Error::Safetensors {
        file: label.clone(),
        what: e.to_string(),
    })?;
    while header_bytes.len() % 8 != 0 {
        header_bytes.push(b' ');
    }
    // The closure must return io errors; the real error is kept here.
    let mut failure: Option<Error> = None;
    let mut buf = Vec::new();
    let written = write_atomic(path, |w: &mut dyn Write| {
        w.write_all(&(header_bytes.len() as u64).to_le_bytes())?;
        w.write_all(&header_bytes)?;
        for (name, shape) in tensors {
            let checked = tensor(name, shape).and_then(|data| {
                if data.len() != shape.iter().product::<usize>() {
                    return Err(Error::TensorShape {
                        file: label.clone(),
                        tensor: name.clone(),
                        expected: shape.clone(),
                        got: vec![data.len()],
                    });
                }
                // Finite in f32 is not enough: 1e5 is ∞ in f16, f32::MAX is ∞ in bf16.
                let stored_finite = |v: f32| match dtype {
                    DenseDtype::F32 => v.is_finite(),
                    DenseDtype::F16 => f16::from_f32(v).is_finite(),
                    DenseDtype::BF16 => bf16::from_f32(v).is_finite(),
                };
                if let Some(index) = data.iter().position(|v| !stored_finite(*v)) {
                    return Err(Error::NonFinite {
                        file: label.clone(),
                        tensor: name.clone(),
                        index,
                    });
                }
                Ok(data)
            });
            match checked {
                Ok(data) => {
                    encode(dtype, &data, &mut buf);
                    w.write_all(&buf)?;
                }
                Err(e) => {
                    let io = std::io::Error::other(e.to_string());
                    failure = Some(e);
                    return Err(io);
                }
            }
        }
        Ok(())
    });
    match (written, failure) {
        (_, Some(e)) => Err(e),
        (Err(e), None) => Err(Error::Format(e)),
        (Ok(bytes), None) => Ok(bytes),
    }
}

/// Writes a model's parameters (as [`crate::model::Llama::parameters`] holds them).
pub fn save_tensors(
    dir: &Path,
    config: &LlamaConfig,
    params: &std::collections::BTreeMap<String, Tensor>,
    opts: SaveOptions,
) -> Result<SaveReport> {
    save_checkpoint(dir, config, opts, &[], |name, _| {
        let t = params.get(name).ok_or_else(|| Error::MissingTensor {
            file: "model".into(),
            tensor: name.to_string(),
        })?;
        Ok(t.flatten_all()?.to_vec1::<f32>()?)
    })
}
