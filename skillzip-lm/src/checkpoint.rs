//! [`Checkpoint`]: a model's tensors on disk, read one at a time under their HF names.
//!
//! Three layouts are read: a `llama` GGUF file (tensors dequantized to f32, renamed to HF
//! names, and the query/key rows that `convert_hf_to_gguf` permutes for ggml's interleaved RoPE
//! put back into HF order), a single `model.safetensors`, and a sharded checkpoint with
//! `model.safetensors.index.json`. Safetensors files are memory-mapped and f32/f16/bf16 tensors
//! converted to f32 one at a time, so reading a model never holds more than one tensor
//! (architecture invariant: peak memory of a pass over a checkpoint is one tensor).

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Component, Path, PathBuf};

use memmap2::Mmap;
use safetensors::tensor::Metadata;
use skillzip_format::dense::{DenseDtype, decode_le};

use crate::config::LlamaConfig;
use crate::error::{Error, Result};
use crate::gguf::{GgufFile, GgufHeader, TensorInfo};

/// The linear layers of one decoder block, named as the paper and HF do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LinearKind {
    /// `self_attn.q_proj`.
    Q,
    /// `self_attn.k_proj`.
    K,
    /// `self_attn.v_proj`.
    V,
    /// `self_attn.o_proj`.
    O,
    /// `mlp.gate_proj`.
    Gate,
    /// `mlp.up_proj`.
    Up,
    /// `mlp.down_proj`.
    Down,
}

impl LinearKind {
    /// All seven, in forward order.
    pub const ALL: [LinearKind; 7] = [
        Self::Q,
        Self::K,
        Self::V,
        Self::O,
        Self::Gate,
        Self::Up,
        Self::Down,
    ];

    /// The HF module path inside a block, e.g. `mlp.down_proj`.
    pub fn module(self) -> &'static str {
        match self {
            Self::Q => "self_attn.q_proj",
            Self::K => "self_attn.k_proj",
            Self::V => "self_attn.v_proj",
            Self::O => "self_attn.o_proj",
            Self::Gate => "mlp.gate_proj",
            Self::Up => "mlp.up_proj",
            Self::Down => "mlp.down_proj",
        }
    }

    /// The leaf name (`q_proj`, `down_proj`, …) PEFT's `target_modules` uses.
    pub fn leaf(self) -> &'static str {
        self.module().rsplit('.').next().unwrap_or_default()
    }

    /// The HF module name of this linear in block `layer`, e.g.
    /// `model.layers.3.mlp.down_proj` (a skillpack's layer key).
    pub fn module_name(self, layer: usize) -> String {
        format!("model.layers.{layer}.{}", self.module())
    }

    /// `(out, in)` of the weight for a configuration.
    pub fn shape(self, c: &LlamaConfig) -> (usize, usize) {
        let kv = c.num_key_value_heads * c.head_dim();
        match self {
            Self::Q | Self::O => (c.hidden_size, c.hidden_size),
            Self::K | Self::V => (kv, c.hidden_size),
            Self::Gate | Self::Up => (c.intermediate_size, c.hidden_size),
            Self::Down => (c.hidden_size, c.intermediate_size),
        }
    }

    /// Parses a module name such as `model.layers.3.mlp.down_proj` (with or without a
    /// trailing `.weight`).
    pub fn parse_module_name(name: &str) -> Option<(usize, LinearKind)> {
        let name = name.strip_suffix(".weight").unwrap_or(name);
        let rest = name.strip_prefix("model.layers.")?;
        let (layer, module) = rest.split_once('.')?;
        let layer = layer.parse().ok()?;
        Self::ALL
            .into_iter()
            .find(|k| k.module() == module)
            .map(|k| (layer, k))
    }
}

/// What role a tensor plays: a linear weight (a skillpack can carry its delta) or anything
/// else (embeddings, norms, the LM head: DESIGN §4.8's "not a linear delta").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TensorRole {
    /// A decoder block's linear weight.
    Linear(usize, LinearKind),
    /// The token embeddings.
    Embedding,
    /// An RMSNorm weight.
    Norm,
    /// An untied LM head.
    LmHead,
}

/// Every tensor a model of `config` has, with its HF name, shape and role, in a fixed order
/// (embeddings, blocks in order, final norm, LM head).
pub fn tensor_specs(config: &LlamaConfig) -> Vec<(String, Vec<usize>, TensorRole)> {
    let d = config.hidden_size;
    let mut specs = vec![(
        "model.embed_tokens.weight".to_string(),
        vec![config.vocab_size, d],
        TensorRole::Embedding,
    )];
    for l in 0..config.num_hidden_layers {
        specs.push((
            format!("model.layers.{l}.input_layernorm.weight"),
            vec![d],
            TensorRole::Norm,
        ));
        for kind in LinearKind::ALL {
            let (o, i) = kind.shape(config);
            specs.push((
                format!("{}.weight", kind.module_name(l)),
                vec![o, i],
                TensorRole::Linear(l, kind),
            ));
        }
        specs.push((
            format!("model.layers.{l}.post_attention_layernorm.weight"),
            vec![d],
            TensorRole::Norm,
        ));
    }
    specs.push(("model.norm.weight".into(), vec![d], TensorRole::Norm));
    if !config.tie_word_embeddings {
        specs.push((
            "lm_head.weight".into(),
            vec![config.vocab_size, d],
            TensorRole::LmHead,
        ));
    }
    specs
}

/// The GGUF name of an HF tensor name (llama.cpp's naming).
fn gguf_name(hf: &str) -> Option<String> {
    match hf {
        "model.embed_tokens.weight" => return Some("token_embd.weight".into()),
        "model.norm.weight" => return Some("output_norm.weight".into()),
        "lm_head.weight" => return Some("output.weight".into()),
        _ => {}
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (layer, module) = rest.split_once('.')?;
    let leaf = match module {
        "input_layernorm.weight" => "attn_norm",
        "post_attention_layernorm.weight" => "ffn_norm",
        "self_attn.q_proj.weight" => "attn_q",
        "self_attn.k_proj.weight" => "attn_k",
        "self_attn.v_proj.weight" => "attn_v",
        "self_attn.o_proj.weight" => "attn_output",
        "mlp.gate_proj.weight" => "ffn_gate",
        "mlp.up_proj.weight" => "ffn_up",
        "mlp.down_proj.weight" => "ffn_down",
        _ => return None,
    };
    Some(format!("blk.{layer}.{leaf}.weight"))
}

/// Undoes `convert_hf_to_gguf`'s row permutation of a query/key weight (`heads` heads of
/// `rows / heads` rows each): GGUF row `h·hd + 2j + t` is HF row `h·hd + t·hd/2 + j`.
fn unpermute_rows(data: &[f32], rows: usize, cols: usize, heads: usize) -> Vec<f32> {
    let hd = rows / heads;
    let mut out = vec![0f32; data.len()];
    for h in 0..heads {
        for j in 0..hd / 2 {
            for t in 0..2 {
                let src = (h * hd + 2 * j + t) * cols;
                let dst = (h * hd + t * hd / 2 + j) * cols;
                out[dst..dst + cols].copy_from_slice(&data[src..src + cols]);
            }
        }
    }
    out
}

/// A dense f32 tensor read from a checkpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct F32Tensor {
    /// Shape, outermost first.
    pub shape: Vec<usize>,
    /// Row-major values.
    pub data: Vec<f32>,
}

struct SafetensorsFile {
    path: PathBuf,
    map: Mmap,
    header_len: usize,
    metadata: Metadata,
}

enum Source {
    Gguf {
        map: Mmap,
        header: Box<GgufHeader>,
    },
    Safetensors {
        files: Vec<SafetensorsFile>,
        /// HF name → index into `files`.
        index: BTreeMap<String, usize>,
    },
}

/// A checkpoint on disk: configuration plus tensors read one at a time, by HF name.
pub struct Checkpoint {
    label: String,
    config: LlamaConfig,
    source: Source,
}

impl std::fmt::Debug for Checkpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checkpoint")
            .field("label", &self.label)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Drops the pages of `map[offset..offset + len]` from this process's resident set once a
/// tensor has been copied out, so a pass over a checkpoint keeps about one tensor resident
/// instead of every byte read so far (the pages stay in the OS page cache).
pub(crate) fn release_pages(map: &Mmap, offset: usize, len: usize) {
    // SAFETY: the map is a read-only, file-backed private mapping that is never written, so
    // MADV_DONTNEED only discards clean copies: a later access re-reads the same bytes from
    // the file. No borrow of the range is alive: callers copied the data out before calling.
    // A failure only means the pages stay resident.
    let _ = unsafe { map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, offset, len) };
}

pub(crate) fn map_file(path: &Path) -> Result<Mmap> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    // SAFETY: the map is read-only and private to this process. Another process truncating
    // the file while it is mapped would fault the reads; checkpoints are treated as immutable
    // while open (documented on `Checkpoint::open`), as every mmap-based loader does.
    unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))
}

/// The parsed `model.safetensors.index.json`: which shard holds each tensor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardIndex {
    /// Tensor name → shard file name (a plain file name in the checkpoint directory).
    pub weight_map: BTreeMap<String, String>,
}

impl ShardIndex {
    /// Parses and validates an index: a JSON object with a `weight_map` of tensor name → file
    /// name, every file a plain relative name (no directories, no `..`), ending `.safetensors`.
    pub fn parse(bytes: &[u8], label: &str) -> Result<Self> {
        let bad = |what: String| Error::Safetensors {
            file: label.to_string(),
            what,
        };
        if bytes.len() > 64 << 20 {
            return Err(bad(format!("index of {} bytes is too large", bytes.len())));
        }
        let value: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|e| bad(format!("not JSON: {e}")))?;
        let map = value
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| bad("weight_map is missing or not an object".into()))?;
        let mut weight_map = BTreeMap::new();
        for (name, file) in map {
            let file = file
                .as_str()
                .ok_or_else(|| bad(format!("weight_map[{name}] is not a string")))?;
            let plain = Path::new(file)
                .components()
                .all(|c| matches!(c, Component::Normal(_)))
                && Path::new(file).components().count() == 1
                && !file.contains(['/', '\\', '\0']);
            if !plain || !file.ends_with(".safetensors") {
                return Err(bad(format!(
                    "weight_map[{name}] = {file:?} is not a plain .safetensors file name"
                )));
            }
            weight_map.insert(name.clone(), file.to_string());
        }
        if weight_map.is_empty() {
            return Err(bad("weight_map is empty".into()));
        }
        Ok(Self { weight_map })
    }
}

impl Checkpoint {
    /// Opens a checkpoint: a `.gguf` file, a `.safetensors` file (with `config.json` beside
    /// it), or a directory holding `config.json` and `model.safetensors` or
    /// `model.safetensors.index.json` with its shards. The files must not change while open.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let label = path.display().to_string();
        if path.is_dir() {
            let config_path = path.join("config.json");
            let config_bytes =
                std::fs::read(&config_path).map_err(|e| Error::io(&config_path, e))?;
            let config =
                LlamaConfig::from_hf_json(&config_bytes, &config_path.display().to_string())?;
            let index_path = path.join("model.safetensors.index.json");
            let single = path.join("model.safetensors");
            let (names, index) = if index_path.exists() {
                let bytes = std::fs::read(&index_path).map_err(|e| Error::io(&index_path, e))?;
                let index = ShardIndex::parse(&bytes, &index_path.display().to_string())?;
                let mut shards: Vec<String> = index.weight_map.values().cloned().collect();
                shards.sort();
                shards.dedup();
                (shards, Some(index))
            } else if single.exists() {
                (vec!["model.safetensors".to_string()], None)
            } else {
                return Err(Error::Safetensors {
                    file: label,
                    what: "neither model.safetensors nor model.safetensors.index.json exists"
                        .into(),
                });
            };
            let files = names
                .iter()
                .map(|n| open_safetensors(&path.join(n)))
                .collect::<Result<Vec<_>>>()?;
            Self::from_safetensors(label, config, files, index)
        } else if path.extension().is_some_and(|e| e == "gguf") {
            let map = map_file(path)?;
            let file = GgufFile::parse(&map, &label)?;
            let config = LlamaConfig::from_gguf(&file)?;
            let header = Box::new(file.into_header(&map));
            Ok(Self {
                label,
                config,
                source: Source::Gguf { map, header },
            })
        } else {
            let dir = path.parent().unwrap_or(Path::new("."));
            let config_path = dir.join("config.json");
            let config_bytes =
                std::fs::read(&config_path).map_err(|e| Error::io(&config_path, e))?;
            let config =
                LlamaConfig::from_hf_json(&config_bytes, &config_path.display().to_string())?;
            Self::from_safetensors(label, config, vec![open_safetensors(path)?], None)
        }
    }

    fn from_safetensors(
        label: String,
        config: LlamaConfig,
        files: Vec<SafetensorsFile>,
        shard_index: Option<ShardIndex>,
    ) -> Result<Self> {
        let mut index = BTreeMap::new();
        for (i, f) in files.iter().enumerate() {
            for name in f.metadata.tensors().keys() {
                if let Some(other) = index.insert(name.clone(), i) {
                    return Err(Error::Safetensors {
                        file: f.path.display().to_string(),
                        what: format!("tensor {name} is also in {}", files[other].path.display()),
                    });
                }
            }
        }
        if let Some(si) = &shard_index {
            for (name, shard) in &si.weight_map {
                let found = index
                    .get(name)
                    .map(|&i| files[i].path.file_name() == Some(shard.as_ref()));
                if found != Some(true) {
                    return Err(Error::Safetensors {
                        file: label,
                        what: format!("the index puts {name} in {shard}, which does not hold it"),
                    });
                }
            }
        }
        Ok(Self {
            label,
            config,
            source: Source::Safetensors { files, index },
        })
    }

    /// The label (path) used in errors.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The model configuration.
    pub fn config(&self) -> &LlamaConfig {
        &self.config
    }

    /// Whether the checkpoint is a GGUF file.
    pub fn is_gguf(&self) -> bool {
        matches!(self.source, Source::Gguf { .. })
    }

    /// The GGUF metadata, for GGUF checkpoints (the tokenizer lives there).
    pub fn gguf_metadata(&self) -> Option<&BTreeMap<String, crate::gguf::Value>> {
        match &self.source {
            Source::Gguf { header, .. } => Some(&header.metadata),
            Source::Safetensors { .. } => None,
        }
    }

    /// The GGUF header and file bytes, for GGUF checkpoints.
    pub fn gguf(&self) -> Option<(&GgufHeader, &[u8])> {
        match &self.source {
            Source::Gguf { header, map } => Some((header, map)),
            Source::Safetensors { .. } => None,
        }
    }

    /// The directory of a safetensors checkpoint (where `tokenizer.json` may sit).
    pub fn directory(&self) -> Option<PathBuf> {
        match &self.source {
            Source::Safetensors { files, .. } => files
                .first()
                .and_then(|f| f.path.parent().map(Path::to_path_buf)),
            Source::Gguf { .. } => None,
        }
    }

    /// Whether the checkpoint holds a tensor of this HF name.
    pub fn contains(&self, name: &str) -> bool {
        match &self.source {
            Source::Gguf { header, .. } => {
                gguf_name(name).is_some_and(|g| header.tensors.iter().any(|t| t.name == g))
            }
            Source::Safetensors { index, .. } => index.contains_key(name),
        }
    }

    /// Reads one tensor as f32 under its HF name, checking that its values are finite.
    pub fn load(&self, name: &str) -> Result<F32Tensor> {
        let missing = || Error::MissingTensor {
            file: self.label.clone(),
            tensor: name.to_string(),
        };
        let tensor = match &self.source {
            Source::Gguf { map, header } => {
                let gname = gguf_name(name).ok_or_else(missing)?;
                let info: &TensorInfo = header
                    .tensors
                    .iter()
                    .find(|t| t.name == gname)
                    .ok_or_else(missing)?;
                let mut data = header.dequantize(map, info)?;
                let range = header.file_range(info);
                release_pages(map, range.start, range.len());
                let shape = info.shape.clone();
                let heads = if name.ends_with("q_proj.weight") {
                    Some(self.config.num_attention_heads)
                } else if name.ends_with("k_proj.weight") {
                    Some(self.config.num_key_value_heads)
                } else {
                    None
                };
                if let Some(heads) = heads
                    && shape.len() == 2
                    && shape[0].is_multiple_of(2 * heads)
                {
                    data = unpermute_rows(&data, shape[0], shape[1], heads);
                }
                F32Tensor { shape, data }
            }
            Source::Safetensors { files, index } => {
                let file = &files[*index.get(name).ok_or_else(missing)?];
                read_safetensors_f32(file, name)?
            }
        };
        if let Some(index) = tensor.data.iter().position(|v| !v.is_finite()) {
            return Err(Error::NonFinite {
                file: self.label.clone(),
                tensor: name.to_string(),
                index,
            });
        }
        Ok(tensor)
    }

    /// Reads a tensor the configuration names, checking its shape.
    pub fn load_expected(&self, name: &str, shape: &[usize]) -> Result<F32Tensor> {
        let t = self.load(name)?;
        if t.shape != shape {
            return Err(Error::TensorShape {
                file: self.label.clone(),
                tensor: name.to_string(),
                expected: shape.to_vec(),
                got: t.shape,
            });
        }
        Ok(t)
    }
}

fn open_safetensors(path: &Path) -> Result<SafetensorsFile> {
    let map = map_file(path)?;
    let (header_len, metadata) =
        safetensors::SafeTensors::read_metadata(&map).map_err(|e| Error::Safetensors {
            file: path.display().to_string(),
            what: e.to_string(),
        })?;
    Ok(SafetensorsFile {
        path: path.to_path_buf(),
        map,
        header_len,
        metadata,
    })
}

fn read_safetensors_f32(file: &SafetensorsFile, name: &str) -> Result<F32Tensor> {
    let label = file.path.display().to_string();
    let info = file
        .metadata
        .info(name)
        .ok_or_else(|| Error::MissingTensor {
            file: label.clone(),
            tensor: name.to_string(),
        })?;
    let (begin, end) = info.data_offsets;
    let start = 8 + file.header_len;
    let bytes = file
        .map
        .get(start + begin..start + end)
        .ok_or_else(|| Error::Safetensors {
            file: label.clone(),
            what: format!("tensor {name} lies outside the file"),
        })?;
    let dtype =
        DenseDtype::from_safetensors(info.dtype).ok_or_else(|| Error::UnsupportedDtype {
            file: label.clone(),
            tensor: name.to_string(),
            dtype: format!("{:?}", info.dtype),
        })?;
    let data = decode_le(dtype, bytes);
    if data.len() != info.shape.iter().product::<usize>() {
        return Err(Error::Safetensors {
            file: label,
            what: format!("tensor {name}: byte length does not match its shape"),
        });
    }
    release_pages(&file.map, start + begin, end - begin);
    Ok(F32Tensor {
        shape: info.shape.clone(),
        data,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpermute_inverts_the_gguf_permutation() {
        // convert_hf_to_gguf: w.reshape(heads, 2, hd/2, cols).swapaxes(1, 2).reshape(rows, cols)
        let (heads, hd, cols) = (3, 8, 2);
        let rows = heads * hd;
        let hf: Vec<f32> = (0..rows * cols).map(|v| v as f32).collect();
        let mut gguf = vec![0f32; hf.len()];
        for h in 0..heads {
            for t in 0..2 {
                for j in 0..hd / 2 {
                    let src = (h * hd + t * hd / 2 + j) * cols;
                    // After swapaxes(1, 2) the index (h, j, t) is row h·hd + 2j + t.
                    let dst = (h * hd + 2 * j + t) * cols;
                    gguf[dst..dst + cols].copy_from_slice(&hf[src..src + cols]);
                }
            }
        }
        assert_eq!(unpermute_rows(&gguf, rows, cols, heads), hf);
    }

    #[test]
    fn module_names_round_trip() {
        for kind in LinearKind::ALL {
            let name = format!("{}.weight", kind.module_name(17));
            assert_eq!(LinearKind::parse_module_name(&name), Some((17, kind)));
            assert!(gguf_name(&name).is_some());
        }
        assert_eq!(LinearKind::parse_module_name("model.norm.weight"), None);
    }

    #[test]
    fn shard_index_rejects_paths_outside_the_directory() {
        let ok = br#"{"metadata": {}, "weight_map": {"a": "model-00001-of-00002.safetensors"}}"#;
        assert_eq!(ShardIndex::parse(ok, "i").unwrap().weight_map.len(), 1);
        for bad in [
            r#"{"weight_map": {"a": "../x.safetensors"}}"#,
            r#"{"weight_map": {"a": "/etc/x.safetensors"}}"#,
            r#"{"weight_map": {"a": "sub/x.safetensors"}}"#,
            r#"{"weight_map": {"a": "x.bin"}}"#,
            r#"{"weight_map": {"a": 3}}"#,
            r#"{"weight_map": {}}"#,
            r#"{"weight_map": []}"#,
            r#"[1, 2]"#,
            "",
        ] {
            assert!(
                matches!(
                    ShardIndex::parse(bad.as_bytes(), "i"),
                    Err(Error::Safetensors { .. })
                ),
                "{bad}"
            );
        }
    }
}
