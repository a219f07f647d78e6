//! Skillpack files (DESIGN.md §5): one safetensors file per skill holding the
//! [`CompressedLayer`]s of its linear deltas, optional dense tensors, and a `__metadata__`
//! JSON that describes and checksums all of it.
//!
//! # Layout
//!
//! For each compressed linear layer, keyed by its HF module name `<m>` (for example
//! `model.layers.3.mlp.down_proj`; `C_i` = input channels, `C_o` = output channels, `R` =
//! rank):
//!
//! | tensor | dtype | shape |
//! |---|---|---|
//! | `<m>.a` | `I8` (8-bit `Â`) or `U8` (≤ 4-bit, packed) | `[R, C_i]` or `[R, ⌈C_i/2⌉]` |
//! | `<m>.a_scale` | `F32` | `[1]` |
//! | `<m>.b` | `I8` or `U8` (packed) | `[C_o, R]` or `[C_o, ⌈R/2⌉]` |
//! | `<m>.b_scales` | `F32` | `[C_o]` (per output channel) or `[1]` (per tensor) |
//! | `<m>.s_inv` | `F32` | `[C_i]`, only when smoothing is on |
//!
//! Packed codes (the 4-bit grid and the 3- and 2-bit baseline grids) hold two codes per byte
//! along K, low nibble first, two's complement, an odd K padded with a zero nibble
//! (`skillzip_core::quant::pack_int4`). Dense tensors (DESIGN.md §4.8) are
//! `dense.<hf name>`, `F16`, `BF16` or `F32`. Module names must not start with `dense.`.
//!
//! `__metadata__` has exactly one key, `skillzip`, whose value is a JSON object:
//!
//! ```json
//! {"format": "skillzip.skillpack", "version": 1, "skill": "math",
//!  "base": {"architecture": "llama", "backbone_hash": "<64 hex>"},
//!  "config": {"method": "X8A8B8", "seed": 0},
//!  "layers": {"model.layers.0.mlp.down_proj": {
//!      "rank": 16, "c_in": 1536, "c_out": 576, "act_bits": 8, "a_bits": 8, "b_bits": 8,
//!      "b_granularity": "per_channel", "smoothing": true,
//!      "act_scale": {"mode": "dynamic"} | {"mode": "static", "amax": 3.25},
//!      "truncation": {"mode": "dynamic"} | {"mode": "static", "m": "18446744073709551615"},
//!      "report": {"alpha": 0.5, "rel_output_error": 0.1, "rel_weight_error": 0.2, "bytes": 100}}},
//!  "dense": {"model.norm.weight": {"shape": [576], "dtype": "F16"}},
//!  "checksum": "sha256:<64 hex>"}
//! ```
//!
//! `report` and each of its fields are optional; `m` is a decimal string because JSON numbers
//! lose `u64` precision; `amax` and `alpha` are f32 values written exactly.
//!
//! # Checksum
//!
//! With `lp(x)` = `x`'s length as a little-endian u64 followed by `x`, and `u64(n)` = `n` as
//! a little-endian u64:
//!
//! ```text
//! SHA-256( "skillzip.skillpack.checksum.v1\0"
//!          ‖ u64(number of tensors)
//!          ‖ for each tensor, names sorted by bytes:
//!              lp(name) ‖ lp(dtype name) ‖ u64(ndim) ‖ u64(dim)… ‖ lp(data bytes)
//!          ‖ lp(canonical JSON of the `skillzip` object without its `checksum` key) )
//! ```
//!
//! Canonical JSON sorts object keys by their bytes and has no whitespace; numbers and
//! strings are written as `serde_json` writes them. Editing any tensor byte or any metadata
//! value therefore fails the check.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use skillzip_core::layer::{CompressedLayer, Truncation};
use skillzip_core::quant::{ActScale, Bits, Granularity, Quantized, pack_int4, unpack_int4};

use crate::atomic::write_atomic_bytes;
use crate::container::{self, Owned, TensorRef};
use crate::dense::{DenseDtype, DenseTensor};
use crate::digest::{canonical_json, hex, is_sha256_hex, put_lp, put_tensor, put_u64};
use crate::error::{Error, Result};
use safetensors::tensor::Dtype;

/// The `format` value of a skillpack.
pub const SKILLPACK_FORMAT: &str = "skillzip.skillpack";
/// The skillpack format version this crate reads and writes.
pub const SKILLPACK_VERSION: u64 = 1;
/// The `__metadata__` key that holds the skillpack JSON.
pub const METADATA_KEY: &str = "skillzip";
/// Prefix of dense tensor names.
pub const DENSE_PREFIX: &str = "dense.";

const CHECKSUM_DOMAIN: &[u8] = b"skillzip.skillpack.checksum.v1\0";
const CHECKSUM_PREFIX: &str = "sha256:";
const TOP_LEVEL_KEYS: [&str; 8] = [
    "format", "version", "skill", "base", "config", "layers", "dense", "checksum",
];
const MEMORY: &str = "<memory>";

/// The base model a skillpack applies to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BaseModel {
    /// Architecture name, e.g. `"llama"`.
    pub architecture: String,
    /// [`crate::backbone_hash`] of the backbone tensors (64 lowercase hex digits).
    pub backbone_hash: String,
}

/// Everything in a skillpack besides its tensors.
#[derive(Debug, Clone, PartialEq)]
pub struct SkillpackMeta {
    /// The skill's name.
    pub skill: String,
    /// The base model.
    pub base: BaseModel,
    /// Free-form settings the compressor records (method label such as `"X8A8B8"`, seed,
    /// rank policy, …).
    pub config: Map<String, Value>,
}

/// Optional per-layer figures of the compression run, shown by `inspect`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LayerReport {
    /// The chosen smoothing exponent α.
    pub alpha: Option<f32>,
    /// Relative output error on held-out activations.
    pub rel_output_error: Option<f64>,
    /// Relative weight error.
    pub rel_weight_error: Option<f64>,
    /// Storage bytes as the compressor counted them.
    pub bytes: Option<u64>,
}

/// One compressed linear layer and its report.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerEntry {
    /// The layer.
    pub layer: CompressedLayer,
    /// What the compressor measured, if recorded.
    pub report: Option<LayerReport>,
}

/// A skillpack in memory: what [`read_skillpack`] returns and [`write_skillpack`] stores.
#[derive(Debug, Clone, PartialEq)]
pub struct Skillpack {
    /// Name, base model and configuration.
    pub meta: SkillpackMeta,
    /// Compressed linear layers by HF module name (e.g. `model.layers.3.mlp.down_proj`).
    pub layers: BTreeMap<String, LayerEntry>,
    /// Dense tensors by HF tensor name (stored as `dense.<name>`).
    pub dense: BTreeMap<String, DenseTensor>,
}

impl Skillpack {
    /// An empty skillpack.
    pub fn new(meta: SkillpackMeta) -> Self {
        Self {
            meta,
            layers: BTreeMap::new(),
            dense: BTreeMap::new(),
        }
    }

    /// A summary for `inspect`: per-layer shapes, grids, bytes and reported errors; totals.
    pub fn summary(&self) -> SkillpackSummary {
        SkillpackSummary::new(self)
    }
}

// ---------------------------------------------------------------------------------------
// JSON schema of the metadata.

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct LayerJson {
    rank: usize,
    c_in: usize,
    c_out: usize,
    act_bits: u8,
    a_bits: u8,
    b_bits: u8,
    b_granularity: String,
    smoothing: bool,
    act_scale: ModeJson,
    truncation: TruncationJson,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    report: Option<ReportJson>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ModeJson {
    mode: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    amax: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TruncationJson {
    mode: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    m: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReportJson {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    alpha: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    rel_output_error: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    rel_weight_error: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    bytes: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct DenseJson {
    shape: Vec<usize>,
    dtype: String,
}

const DYNAMIC: &str = "dynamic";
const STATIC: &str = "static";
const PER_CHANNEL: &str = "per_channel";
const PER_TENSOR: &str = "per_tensor";

fn bits_code(b: Bits) -> u8 {
    b.bits() as u8
}

fn bits_from(file: &str, field: String, v: u8) -> Result<Bits> {
    match v {
        8 => Ok(Bits::Int8),
        4 => Ok(Bits::Int4),
        3 => Ok(Bits::Int3),
        2 => Ok(Bits::Int2),
        _ => Err(Error::invalid(
            file,
            field,
            format!("{v} is not one of 8, 4, 3, 2"),
        )),
    }
}

/// An f32 as an f64 (exact); read back with [`f32_from`].
fn f32_json(v: f32) -> f64 {
    v as f64
}

fn f32_from(file: &str, field: String, v: f64) -> Result<f32> {
    let f = v as f32;
    if f as f64 == v && f.is_finite() {
        Ok(f)
    } else {
        Err(Error::invalid(
            file,
            field,
            format!("{v} is not an f32 value"),
        ))
    }
}

/// Parses a canonical decimal u64: ASCII digits, no sign, no leading zeros.
fn parse_u64_decimal(s: &str) -> Option<u64> {
    let canonical =
        !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) && (s == "0" || !s.starts_with('0'));
    if canonical { s.parse().ok() } else { None }
}

// ---------------------------------------------------------------------------------------
// Name and value rules shared by the writer and the reader.

fn check_meta(file: &str, meta: &SkillpackMeta) -> Result<()> {
    check_text(file, "skill", &meta.skill)?;
    check_text(file, "base.architecture", &meta.base.architecture)?;
    if !is_sha256_hex(&meta.base.backbone_hash) {
        return Err(Error::invalid(
            file,
            "base.backbone_hash",
            "is not 64 lowercase hex digits",
        ));
    }
    Ok(())
}

fn check_text(file: &str, field: &str, s: &str) -> Result<()> {
    if s.is_empty() {
        return Err(Error::invalid(file, field, "is empty"));
    }
    if s.chars().any(char::is_control) {
        return Err(Error::invalid(file, field, "holds a control character"));
    }
    Ok(())
}

fn check_module_name(file: &str, module: &str) -> Result<()> {
    if module.is_empty() {
        return Err(Error::invalid(file, "layers", "a module name is empty"));
    }
    if module.starts_with(DENSE_PREFIX) {
        return Err(Error::invalid(
            file,
            format!("layers.{module}"),
            format!("module names must not start with {DENSE_PREFIX:?}"),
        ));
    }
    Ok(())
}

fn check_dense_name(file: &str, name: &str) -> Result<()> {
    if name.is_empty() {
        return Err(Error::invalid(
            file,
            "dense",
            "a dense tensor name is empty",
        ));
    }
    Ok(())
}

fn check_report(file: &str, module: &str, r: &LayerReport) -> Result<()> {
    let field = |f: &str| format!("layers.{module}.report.{f}");
    if let Some(a) = r.alpha
        && !a.is_finite()
    {
        return Err(Error::invalid(file, field("alpha"), "is not finite"));
    }
    for (name, v) in [
        ("rel_output_error", r.rel_output_error),
        ("rel_weight_error", r.rel_weight_error),
    ] {
        if let Some(v) = v
            && !v.is_finite()
        {
            return Err(Error::invalid(file, field(name), "is not finite"));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Tensor plan: the tensors a metadata object implies.

/// The tensors one layer's metadata implies, with dtypes and shapes computed from the
/// metadata alone.
fn layer_plan(
    module: &str,
    j: &LayerJson,
    a_bits: Bits,
    b_bits: Bits,
) -> Vec<(String, Dtype, Vec<usize>)> {
    let codes = |bits: Bits, rows: usize, k: usize| match bits {
        Bits::Int8 => (Dtype::I8, vec![rows, k]),
        _ => (Dtype::U8, vec![rows, k.div_ceil(2)]),
    };
    let (a_dt, a_shape) = codes(a_bits, j.rank, j.c_in);
    let (b_dt, b_shape) = codes(b_bits, j.c_out, j.rank);
    let b_groups = if j.b_granularity == PER_CHANNEL {
        j.c_out
    } else {
        1
    };
    let mut v = vec![
        (format!("{module}.a"), a_dt, a_shape),
        (format!("{module}.a_scale"), Dtype::F32, vec![1]),
        (format!("{module}.b"), b_dt, b_shape),
        (format!("{module}.b_scales"), Dtype::F32, vec![b_groups]),
    ];
    if j.smoothing {
        v.push((format!("{module}.s_inv"), Dtype::F32, vec![j.c_in]));
    }
    v
}

// ---------------------------------------------------------------------------------------
// Checksum.

fn checksum<'a>(
    tensors: impl ExactSizeIterator<Item = (&'a str, Dtype, &'a [usize], &'a [u8])>,
    meta_without_checksum: &Value,
) -> String {
    let mut h = Sha256::new();
    h.update(CHECKSUM_DOMAIN);
    put_u64(&mut h, tensors.len() as u64);
    for (name, dtype, shape, data) in tensors {
        put_tensor(&mut h, name, &container::dtype_name(dtype), shape, data);
    }
    let mut json = Vec::new();
    canonical_json(meta_without_checksum, &mut json);
    put_lp(&mut h, &json);
    format!("{CHECKSUM_PREFIX}{}", hex(&h.finalize()))
}

// ---------------------------------------------------------------------------------------
// Writing.

/// Serializes a skillpack to bytes (validating it as the reader would).
pub fn to_bytes(pack: &Skillpack) -> Result<Vec<u8>> {
    encode(pack, MEMORY)
}

/// Writes a skillpack to `path` atomically; returns the number of bytes written.
pub fn write_skillpack(path: impl AsRef<Path>, pack: &Skillpack) -> Result<u64> {
    let path = path.as_ref();
    let bytes = encode(pack, &path.display().to_string())?;
    write_atomic_bytes(path, &bytes)
}

fn f32_tensor(values: &[f32]) -> Owned {
    Owned {
        dtype: Dtype::F32,
        shape: vec![values.len()],
        data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
    }
}

fn codes_tensor(q: &Quantized) -> Owned {
    match q.bits {
        Bits::Int8 => Owned {
            dtype: Dtype::I8,
            shape: vec![q.rows, q.cols],
            data: q.codes.iter().map(|&c| c as u8).collect(),
        },
        _ => Owned {
            dtype: Dtype::U8,
            shape: vec![q.rows, q.cols.div_ceil(2)],
            data: pack_int4(&q.codes, q.rows, q.cols),
        },
    }
}

fn mode_json(s: ActScale) -> ModeJson {
    match s {
        ActScale::Dynamic => ModeJson {
            mode: DYNAMIC.into(),
            amax: None,
        },
        ActScale::Static { amax } => ModeJson {
            mode: STATIC.into(),
            amax: Some(f32_json(amax)),
        },
    }
}

fn truncation_json(t: Truncation) -> TruncationJson {
    match t {
        Truncation::Dynamic => TruncationJson {
            mode: DYNAMIC.into(),
            m: None,
        },
        Truncation::Static { m } => TruncationJson {
            mode: STATIC.into(),
            m: Some(m.to_string()),
        },
    }
}

fn encode(pack: &Skillpack, file: &str) -> Result<Vec<u8>> {
    check_meta(file, &pack.meta)?;
    let mut tensors: BTreeMap<String, Owned> = BTreeMap::new();
    let insert = |tensors: &mut BTreeMap<String, Owned>, name: String, t: Owned| {
        if tensors.contains_key(&name) {
            return Err(Error::Duplicate {
                file: file.to_string(),
                field: "tensors".into(),
                name,
            });
        }
        tensors.insert(name, t);
        Ok(())
    };
    let mut layers = Map::new();
    for (module, entry) in &pack.layers {
        check_module_name(file, module)?;
        let l = &entry.layer;
        let b_granularity = match l.b().granularity {
            Granularity::PerRow => PER_CHANNEL,
            Granularity::PerTensor => PER_TENSOR,
            Granularity::PerColumn => {
                return Err(Error::invalid(
                    file,
                    format!("layers.{module}.b_granularity"),
                    "B̂ scales per column cannot be stored",
                ));
            }
        };
        if let Some(r) = &entry.report {
            check_report(file, module, r)?;
        }
        insert(&mut tensors, format!("{module}.a"), codes_tensor(l.a()))?;
        insert(
            &mut tensors,
            format!("{module}.a_scale"),
            f32_tensor(&l.a().scales),
        )?;
        insert(&mut tensors, format!("{module}.b"), codes_tensor(l.b()))?;
        insert(
            &mut tensors,
            format!("{module}.b_scales"),
            f32_tensor(&l.b().scales),
        )?;
        if let Some(s) = l.s_inv() {
            insert(&mut tensors, format!("{module}.s_inv"), f32_tensor(s))?;
        }
        let j = LayerJson {
            rank: l.rank(),
            c_in: l.c_in(),
            c_out: l.c_out(),
            act_bits: bits_code(l.act_bits()),
            a_bits: bits_code(l.a().bits),
            b_bits: bits_code(l.b().bits),
            b_granularity: b_granularity.into(),
            smoothing: l.s_inv().is_some(),
            act_scale: mode_json(l.act_scale()),
            truncation: truncation_json(l.truncation()),
            report: entry.report.as_ref().map(|r| ReportJson {
                alpha: r.alpha.map(f32_json),
                rel_output_error: r.rel_output_error,
                rel_weight_error: r.rel_weight_error,
                bytes: r.bytes,
            }),
        };
        let v = serde_json::to_value(&j)
            .map_err(|e| Error::json(file, format!("layers.{module}"), e))?;
        layers.insert(module.clone(), v);
    }
    let mut dense = Map::new();
    for (name, t) in &pack.dense {
        check_dense_name(file, name)?;
        let tname = format!("{DENSE_PREFIX}{name}");
        insert(&mut tensors, tname.clone(), t.encode(file, &tname)?)?;
        let j = DenseJson {
            shape: t.shape.clone(),
            dtype: t.dtype.name().into(),
        };
        let v =
            serde_json::to_value(&j).map_err(|e| Error::json(file, format!("dense.{name}"), e))?;
        dense.insert(name.clone(), v);
    }

    let mut meta = Map::new();
    meta.insert("format".into(), SKILLPACK_FORMAT.into());
    meta.insert("version".into(), SKILLPACK_VERSION.into());
    meta.insert("skill".into(), pack.meta.skill.clone().into());
    meta.insert(
        "base".into(),
        serde_json::to_value(&pack.meta.base).map_err(|e| Error::json(file, "base", e))?,
    );
    meta.insert("config".into(), Value::Object(pack.meta.config.clone()));
    meta.insert("layers".into(), Value::Object(layers));
    meta.insert("dense".into(), Value::Object(dense));
    let mut meta = Value::Object(meta);
    let sum = checksum(
        tensors
            .iter()
            .map(|(n, t)| (n.as_str(), t.dtype, t.shape.as_slice(), t.data.as_slice())),
        &meta,
    );
    if let Value::Object(m) = &mut meta {
        m.insert("checksum".into(), sum.into());
    }
    let text = serde_json::to_string(&meta).map_err(|e| Error::json(file, METADATA_KEY, e))?;
    let metadata = HashMap::from([(METADATA_KEY.to_string(), text)]);
    container::serialize(&tensors, Some(metadata), file)
}

// ---------------------------------------------------------------------------------------
// Reading.

/// Reads and fully validates a skillpack file (see [`parse_skillpack`]).
pub fn read_skillpack(path: impl AsRef<Path>) -> Result<Skillpack> {
    let path = path.as_ref();
    let label = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|e| Error::io(&label, "read", e))?;
    parse_skillpack(&bytes, &label)
}

/// Parses and validates a skillpack; `label` names the bytes in errors.
///
/// Checked before anything is returned: the container (header size, offsets, exact file
/// length), the format name and version, the metadata schema (no unknown fields), names,
/// every tensor the metadata implies present with exactly the dtype and shape computed from
/// the metadata, no other tensor, the checksum, finite scales and dense values, zero padding
/// nibbles, and finally `CompressedLayer::new` (codes on their grid, reduction lengths).
pub fn parse_skillpack(bytes: &[u8], label: &str) -> Result<Skillpack> {
    parse(bytes, label, true)
}

/// Parsed metadata, before the tensors are looked at.
struct Header {
    meta: SkillpackMeta,
    layers: BTreeMap<String, LayerJson>,
    dense: BTreeMap<String, DenseJson>,
}

pub(crate) fn parse(bytes: &[u8], file: &str, verify_checksum: bool) -> Result<Skillpack> {
    let parsed = container::open(bytes, file)?;
    let Some(raw_meta) = parsed.metadata else {
        return Err(Error::Missing {
            file: file.into(),
            field: "__metadata__".into(),
        });
    };
    if let Some(k) = raw_meta.keys().find(|k| *k != METADATA_KEY) {
        return Err(Error::invalid(
            file,
            format!("__metadata__.{k}"),
            "unknown key",
        ));
    }
    let Some(text) = raw_meta.get(METADATA_KEY) else {
        return Err(Error::Missing {
            file: file.into(),
            field: format!("__metadata__.{METADATA_KEY}"),
        });
    };
    let mut value: Value =
        serde_json::from_str(text).map_err(|e| Error::json(file, METADATA_KEY, e))?;
    let Some(obj) = value.as_object_mut() else {
        return Err(Error::invalid(file, METADATA_KEY, "is not a JSON object"));
    };
    check_format_version(file, obj, SKILLPACK_FORMAT, SKILLPACK_VERSION)?;
    let stored = match obj.remove("checksum") {
        Some(Value::String(s)) => s,
        Some(_) => return Err(Error::invalid(file, "checksum", "is not a string")),
        None => {
            return Err(Error::Missing {
                file: file.into(),
                field: "checksum".into(),
            });
        }
    };
    if !stored
        .strip_prefix(CHECKSUM_PREFIX)
        .is_some_and(is_sha256_hex)
    {
        return Err(Error::invalid(
            file,
            "checksum",
            "is not \"sha256:\" followed by 64 lowercase hex digits",
        ));
    }
    let header = decode_header(file, obj)?;

    // Every tensor the metadata implies, with its dtype and shape from the metadata alone.
    let mut plan: BTreeMap<String, (Dtype, Vec<usize>)> = BTreeMap::new();
    let mut layer_bits = BTreeMap::new();
    for (module, j) in &header.layers {
        let field = |f: &str| format!("layers.{module}.{f}");
        let a_bits = bits_from(file, field("a_bits"), j.a_bits)?;
        let b_bits = bits_from(file, field("b_bits"), j.b_bits)?;
        let act_bits = bits_from(file, field("act_bits"), j.act_bits)?;
        layer_bits.insert(module.clone(), (act_bits, a_bits, b_bits));
        for (name, dt, shape) in layer_plan(module, j, a_bits, b_bits) {
            if plan.insert(name.clone(), (dt, shape)).is_some() {
                return Err(Error::Duplicate {
                    file: file.into(),
                    field: "tensors".into(),
                    name,
                });
            }
        }
    }
    for (name, j) in &header.dense {
        let Some(dt) = DenseDtype::from_name(&j.dtype) else {
            return Err(Error::invalid(
                file,
                format!("dense.{name}.dtype"),
                format!("{:?} is not F16, BF16 or F32", j.dtype),
            ));
        };
        let tname = format!("{DENSE_PREFIX}{name}");
        if plan
            .insert(tname.clone(), (dt.to_safetensors(), j.shape.clone()))
            .is_some()
        {
            return Err(Error::Duplicate {
                file: file.into(),
                field: "tensors".into(),
                name: tname,
            });
        }
    }
    for (name, (dt, shape)) in &plan {
        let Some(t) = parsed.tensors.get(name) else {
            return Err(Error::MissingTensor {
                file: file.into(),
                tensor: name.clone(),
            });
        };
        if t.dtype != *dt {
            return Err(Error::TensorDtype {
                file: file.into(),
                tensor: name.clone(),
                expected: container::dtype_name(*dt),
                found: container::dtype_name(t.dtype),
            });
        }
        if t.shape != *shape {
            return Err(Error::TensorShape {
                file: file.into(),
                tensor: name.clone(),
                expected: shape.clone(),
                found: t.shape.clone(),
            });
        }
    }
    if let Some(extra) = parsed.tensors.keys().find(|n| !plan.contains_key(*n)) {
        return Err(Error::UnexpectedTensor {
            file: file.into(),
            tensor: extra.clone(),
        });
    }

    let computed = checksum(
        parsed
            .tensors
            .iter()
            .map(|(n, t)| (n.as_str(), t.dtype, t.shape.as_slice(), t.data)),
        &value,
    );
    if verify_checksum && computed != stored {
        return Err(Error::ChecksumMismatch {
            file: file.into(),
            expected: stored,
            computed,
        });
    }

    let mut pack = Skillpack::new(header.meta);
    for (module, j) in header.layers {
        // Present: the loop above filled one entry per layer.
        let Some(&(act_bits, a_bits, b_bits)) = layer_bits.get(&module) else {
            continue;
        };
        let entry = decode_layer(file, &module, &j, act_bits, a_bits, b_bits, &parsed.tensors)?;
        pack.layers.insert(module, entry);
    }
    for (name, j) in header.dense {
        let tname = format!("{DENSE_PREFIX}{name}");
        let (Some(t), Some(dtype)) = (parsed.tensors.get(&tname), DenseDtype::from_name(&j.dtype))
        else {
            // Both were checked against the plan above.
            return Err(Error::MissingTensor {
                file: file.into(),
                tensor: tname,
            });
        };
        let dense = DenseTensor::decode(dtype, &j.shape, t.data, file, &tname)?;
        pack.dense.insert(name, dense);
    }
    Ok(pack)
}

/// Checks `format` and `version` of a JSON object before anything else is read, so a file of
/// another format or version gets the error that says so.
pub(crate) fn check_format_version(
    file: &str,
    obj: &Map<String, Value>,
    format: &'static str,
    version: u64,
) -> Result<()> {
    match obj.get("format") {
        Some(Value::String(s)) if s == format => {}
        Some(Value::String(s)) => {
            return Err(Error::WrongFormat {
                file: file.into(),
                expected: format,
                found: s.clone(),
            });
        }
        Some(other) => {
            return Err(Error::WrongFormat {
                file: file.into(),
                expected: format,
                found: other.to_string(),
            });
        }
        None => {
            return Err(Error::Missing {
                file: file.into(),
                field: "format".into(),
            });
        }
    }
    match obj.get("version") {
        Some(v) if v.as_u64() == Some(version) => Ok(()),
        Some(v) => Err(Error::UnsupportedVersion {
            file: file.into(),
            found: v.to_string(),
            supported: version,
        }),
        None => Err(Error::Missing {
            file: file.into(),
            field: "version".into(),
        }),
    }
}

fn take<T: for<'de> Deserialize<'de>>(file: &str, field: &str, v: &Value) -> Result<T> {
    T::deserialize(v).map_err(|e| Error::json(file, field, e))
}

fn decode_header(file: &str, obj: &Map<String, Value>) -> Result<Header> {
    if let Some(k) = obj.keys().find(|k| !TOP_LEVEL_KEYS.contains(&k.as_str())) {
        return Err(Error::invalid(file, k.as_str(), "unknown field"));
    }
    let get = |k: &str| {
        obj.get(k).ok_or_else(|| Error::Missing {
            file: file.into(),
            field: k.into(),
        })
    };
    let skill: String = take(file, "skill", get("skill")?)?;
    let base: BaseModel = take(file, "base", get("base")?)?;
    let Value::Object(config) = get("config")? else {
        return Err(Error::invalid(file, "config", "is not a JSON object"));
    };
    let meta = SkillpackMeta {
        skill,
        base,
        config: config.clone(),
    };
    check_meta(file, &meta)?;
    let Value::Object(layers_v) = get("layers")? else {
        return Err(Error::invalid(file, "layers", "is not a JSON object"));
    };
    let mut layers = BTreeMap::new();
    for (module, v) in layers_v {
        check_module_name(file, module)?;
        let field = format!("layers.{module}");
        let j: LayerJson = take(file, &field, v)?;
        for (f, n) in [("rank", j.rank), ("c_in", j.c_in), ("c_out", j.c_out)] {
            if n == 0 {
                return Err(Error::invalid(file, format!("{field}.{f}"), "is 0"));
            }
        }
        if j.b_granularity != PER_CHANNEL && j.b_granularity != PER_TENSOR {
            return Err(Error::invalid(
                file,
                format!("{field}.b_granularity"),
                format!(
                    "{:?} is not {PER_CHANNEL:?} or {PER_TENSOR:?}",
                    j.b_granularity
                ),
            ));
        }
        layers.insert(module.clone(), j);
    }
    let Value::Object(dense_v) = get("dense")? else {
        return Err(Error::invalid(file, "dense", "is not a JSON object"));
    };
    let mut dense = BTreeMap::new();
    for (name, v) in dense_v {
        check_dense_name(file, name)?;
        let j: DenseJson = take(file, &format!("dense.{name}"), v)?;
        dense.insert(name.clone(), j);
    }
    Ok(Header {
        meta,
        layers,
        dense,
    })
}

fn f32_values(file: &str, tensor: &str, data: &[u8]) -> Result<Vec<f32>> {
    let v: Vec<f32> = data
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    if let Some(index) = v.iter().position(|x| !x.is_finite()) {
        return Err(Error::NonFinite {
            file: file.into(),
            tensor: tensor.into(),
            index,
        });
    }
    Ok(v)
}

/// Codes of a `rows × k` tensor whose dtype and shape were already checked against the plan.
fn decode_codes(
    file: &str,
    tensor: &str,
    bits: Bits,
    rows: usize,
    k: usize,
    data: &[u8],
) -> Result<Vec<i8>> {
    if bits == Bits::Int8 {
        return Ok(data.iter().map(|&b| b as i8).collect());
    }
    let kb = k.div_ceil(2);
    if rows.checked_mul(kb) != Some(data.len()) {
        return Err(Error::invalid(
            file,
            tensor,
            "packed length does not match its shape",
        ));
    }
    if k % 2 == 1
        && let Some(row) = data.chunks_exact(kb).position(|r| r[kb - 1] & 0xf0 != 0)
    {
        return Err(Error::invalid(
            file,
            tensor,
            format!("row {row} has a non-zero padding nibble"),
        ));
    }
    Ok(unpack_int4(data, rows, k))
}

fn decode_layer(
    file: &str,
    module: &str,
    j: &LayerJson,
    act_bits: Bits,
    a_bits: Bits,
    b_bits: Bits,
    tensors: &BTreeMap<String, TensorRef<'_>>,
) -> Result<LayerEntry> {
    let field = |f: &str| format!("layers.{module}.{f}");
    let tensor = |suffix: &str| -> Result<(String, &[u8])> {
        let name = format!("{module}.{suffix}");
        match tensors.get(&name) {
            Some(t) => Ok((name, t.data)),
            None => Err(Error::MissingTensor {
                file: file.into(),
                tensor: name,
            }),
        }
    };
    let act_scale = match (j.act_scale.mode.as_str(), j.act_scale.amax) {
        (DYNAMIC, None) => ActScale::Dynamic,
        (STATIC, Some(a)) => ActScale::Static {
            amax: f32_from(file, field("act_scale.amax"), a)?,
        },
        (mode, amax) => {
            return Err(Error::invalid(
                file,
                field("act_scale"),
                format!(
                    "mode {mode:?} with amax {amax:?} is not dynamic (no amax) or static (an amax)"
                ),
            ));
        }
    };
    let truncation = match (j.truncation.mode.as_str(), &j.truncation.m) {
        (DYNAMIC, None) => Truncation::Dynamic,
        (STATIC, Some(m)) => match parse_u64_decimal(m) {
            Some(m) => Truncation::Static { m },
            None => {
                return Err(Error::invalid(
                    file,
                    field("truncation.m"),
                    format!("{m:?} is not a decimal u64"),
                ));
            }
        },
        (mode, m) => {
            return Err(Error::invalid(
                file,
                field("truncation"),
                format!("mode {mode:?} with m {m:?} is not dynamic (no m) or static (an m)"),
            ));
        }
    };
    let report = match &j.report {
        None => None,
        Some(r) => Some(LayerReport {
            alpha: match r.alpha {
                Some(a) => Some(f32_from(file, field("report.alpha"), a)?),
                None => None,
            },
            rel_output_error: r.rel_output_error,
            rel_weight_error: r.rel_weight_error,
            bytes: r.bytes,
        }),
    };

    let (name, data) = tensor("a")?;
    let a_codes = decode_codes(file, &name, a_bits, j.rank, j.c_in, data)?;
    let (name, data) = tensor("a_scale")?;
    let a_scales = f32_values(file, &name, data)?;
    let (name, data) = tensor("b")?;
    let b_codes = decode_codes(file, &name, b_bits, j.c_out, j.rank, data)?;
    let (name, data) = tensor("b_scales")?;
    let b_scales = f32_values(file, &name, data)?;
    let s_inv = if j.smoothing {
        let (name, data) = tensor("s_inv")?;
        Some(f32_values(file, &name, data)?)
    } else {
        None
    };
    let a = Quantized {
        rows: j.rank,
        cols: j.c_in,
        bits: a_bits,
        granularity: Granularity::PerTensor,
        codes: a_codes,
        scales: a_scales,
    };
    let b = Quantized {
        rows: j.c_out,
        cols: j.rank,
        bits: b_bits,
        granularity: if j.b_granularity == PER_CHANNEL {
            Granularity::PerRow
        } else {
            Granularity::PerTensor
        },
        codes: b_codes,
        scales: b_scales,
    };
    let layer =
        CompressedLayer::new(s_inv, act_bits, act_scale, a, b, truncation).map_err(|e| {
            Error::InvalidLayer {
                file: file.into(),
                module: module.into(),
                source: e,
            }
        })?;
    Ok(LayerEntry { layer, report })
}

// ---------------------------------------------------------------------------------------
// Base model check.

/// Checks that a skillpack was made for the base model `architecture` whose backbone hashes
/// to `backbone_hash` ([`crate::backbone_hash`]); a [`Error::BackboneMismatch`] otherwise.
pub fn check_backbone(meta: &SkillpackMeta, architecture: &str, backbone_hash: &str) -> Result<()> {
    check_base(
        &format!("skillpack {:?}", meta.skill),
        &meta.base,
        architecture,
        backbone_hash,
    )
}

pub(crate) fn check_base(
    file: &str,
    base: &BaseModel,
    architecture: &str,
    hash: &str,
) -> Result<()> {
    if base.architecture != architecture {
        return Err(Error::BackboneMismatch {
            file: file.into(),
            field: "architecture",
            expected: architecture.into(),
            found: base.architecture.clone(),
        });
    }
    if base.backbone_hash != hash {
        return Err(Error::BackboneMismatch {
            file: file.into(),
            field: "backbone_hash",
            expected: hash.into(),
            found: base.backbone_hash.clone(),
        });
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Summary.

/// One layer of a [`SkillpackSummary`].
#[derive(Debug, Clone, PartialEq)]
pub struct LayerSummary {
    /// HF module name.
    pub module: String,
    /// Rank `R`.
    pub rank: usize,
    /// Input channels `C_i`.
    pub c_in: usize,
    /// Output channels `C_o`.
    pub c_out: usize,
    /// Grids as the paper writes them, e.g. `X8A4B4`.
    pub method: String,
    /// Whether `B̂` has one scale per output channel (else one per tensor).
    pub b_per_channel: bool,
    /// Whether the layer carries a smoothing vector.
    pub smoothing: bool,
    /// Activation scale mode.
    pub act_scale: ActScale,
    /// Truncation mode.
    pub truncation: Truncation,
    /// Storage bytes (`CompressedLayer::storage_bytes`: codes, scales, smoothing, constants).
    pub bytes: usize,
    /// The compressor's report, if recorded.
    pub report: Option<LayerReport>,
}

/// One dense tensor of a [`SkillpackSummary`].
#[derive(Debug, Clone, PartialEq)]
pub struct DenseSummary {
    /// HF tensor name.
    pub name: String,
    /// Shape.
    pub shape: Vec<usize>,
    /// Storage type.
    pub dtype: DenseDtype,
    /// Storage bytes.
    pub bytes: usize,
}

/// What `skillzip inspect` shows: per layer and in total.
#[derive(Debug, Clone, PartialEq)]
pub struct SkillpackSummary {
    /// The skill.
    pub skill: String,
    /// The base model.
    pub base: BaseModel,
    /// Layers in module-name order.
    pub layers: Vec<LayerSummary>,
    /// Dense tensors in name order.
    pub dense: Vec<DenseSummary>,
    /// Sum of the layers' storage bytes.
    pub layer_bytes: u64,
    /// Sum of the dense tensors' storage bytes.
    pub dense_bytes: u64,
    /// Parameters of the linear deltas the layers replace (`Σ C_i·C_o`).
    pub delta_params: u64,
    /// `8 · layer_bytes / delta_params` (0 without layers).
    pub bits_per_delta_param: f64,
    /// `2 · delta_params / layer_bytes`: the compression ratio against the fp16 deltas (0
    /// without layers).
    pub ratio_vs_fp16: f64,
}

impl SkillpackSummary {
    /// Summarises `pack`.
    pub fn new(pack: &Skillpack) -> Self {
        let layers: Vec<LayerSummary> = pack
            .layers
            .iter()
            .map(|(module, e)| {
                let l = &e.layer;
                LayerSummary {
                    module: module.clone(),
                    rank: l.rank(),
                    c_in: l.c_in(),
                    c_out: l.c_out(),
                    method: format!(
                        "X{}A{}B{}",
                        l.act_bits().bits(),
                        l.a().bits.bits(),
                        l.b().bits.bits()
                    ),
                    b_per_channel: l.b().granularity == Granularity::PerRow,
                    smoothing: l.s_inv().is_some(),
                    act_scale: l.act_scale(),
                    truncation: l.truncation(),
                    bytes: l.storage_bytes(),
                    report: e.report.clone(),
                }
            })
            .collect();
        let dense: Vec<DenseSummary> = pack
            .dense
            .iter()
            .map(|(name, t)| DenseSummary {
                name: name.clone(),
                shape: t.shape.clone(),
                dtype: t.dtype,
                bytes: t.storage_bytes(),
            })
            .collect();
        let layer_bytes: u64 = layers.iter().map(|l| l.bytes as u64).sum();
        let dense_bytes: u64 = dense.iter().map(|d| d.bytes as u64).sum();
        let delta_params: u64 = layers.iter().map(|l| l.c_in as u64 * l.c_out as u64).sum();
        let (bits_per_delta_param, ratio_vs_fp16) = if layer_bytes == 0 || delta_params == 0 {
            (0.0, 0.0)
        } else {
            (
                8.0 * layer_bytes as f64 / delta_params as f64,
                2.0 * delta_params as f64 / layer_bytes as f64,
            )
        };
        Self {
            skill: pack.meta.skill.clone(),
            base: pack.meta.base.clone(),
            layers,
            dense,
            layer_bytes,
            dense_bytes,
            delta_params,
            bits_per_delta_param,
            ratio_vs_fp16,
        }
    }
}

impl fmt::Display for SkillpackSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "skill {:?} for {} (backbone {})",
            self.skill, self.base.architecture, self.base.backbone_hash
        )?;
        writeln!(
            f,
            "{:<44} {:>6} {:>6} {:>6} {:<7} {:>10} {:>8} {:>8}",
            "module", "rank", "c_in", "c_out", "grids", "bytes", "out_err", "w_err"
        )?;
        let opt = |v: Option<f64>| v.map_or_else(|| "-".to_string(), |v| format!("{v:.4}"));
        for l in &self.layers {
            let r = l.report.as_ref();
            writeln!(
                f,
                "{:<44} {:>6} {:>6} {:>6} {:<7} {:>10} {:>8} {:>8}",
                l.module,
                l.rank,
                l.c_in,
                l.c_out,
                l.method,
                l.bytes,
                opt(r.and_then(|r| r.rel_output_error)),
                opt(r.and_then(|r| r.rel_weight_error)),
            )?;
        }
        for d in &self.dense {
            writeln!(
                f,
                "dense {:<38} {:?} {} {} bytes",
                d.name,
                d.shape,
                d.dtype.name(),
                d.bytes
            )?;
        }
        write!(
            f,
            "{} layers, {} bytes ({:.3} bits per delta parameter, {:.1}x vs fp16); {} dense tensors, {} bytes",
            self.layers.len(),
            self.layer_bytes,
            self.bits_per_delta_param,
            self.ratio_vs_fp16,
            self.dense.len(),
            self.dense_bytes
        )
    }
}
