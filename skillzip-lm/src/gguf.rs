//! A GGUF reader (versions 2 and 3) that trusts nothing in the file.
//!
//! [`GgufFile::parse`] validates the whole header against the bytes it was given: every count
//! and length is checked against what remains before anything is allocated, every tensor's
//! extent lies inside the data section, and every tensor's element count is a multiple of its
//! block size. [`GgufFile::dequantize`] then turns one tensor into f32, exactly as ggml's
//! reference `dequantize_row_*` (and the `gguf` Python package) compute it: for `Q4_1`,
//! `y = f32(q)·d + m` with `d`, `m` widened from f16, one rounding per operation.

use std::collections::BTreeMap;

use half::{bf16, f16};

use crate::error::{Error, Result};

const MAGIC: &[u8; 4] = b"GGUF";
/// Arrays nested deeper than this are rejected (GGUF files use depth 1).
const MAX_ARRAY_DEPTH: usize = 4;
/// Tensors have at most this many dimensions in GGUF.
const MAX_DIMS: usize = 4;

/// One metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// An unsigned integer of any width.
    U64(u64),
    /// A signed integer of any width.
    I64(i64),
    /// A float of any width.
    F64(f64),
    /// A boolean.
    Bool(bool),
    /// A UTF-8 string (invalid UTF-8 is rejected).
    String(String),
    /// An array of values.
    Array(Vec<Value>),
}

impl Value {
    /// The value as an unsigned integer, if it is a non-negative integer.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U64(v) => Some(v),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// The value as a float, if it is numeric.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F64(v) => Some(v),
            Value::U64(v) => Some(v as f64),
            Value::I64(v) => Some(v as f64),
            _ => None,
        }
    }

    /// The value as a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    /// The value as a boolean.
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(b) => Some(b),
            _ => None,
        }
    }

    /// The value as an array.
    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// The ggml tensor types this reader dequantizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgmlType {
    /// 32-bit float.
    F32,
    /// IEEE half.
    F16,
    /// bfloat16.
    Bf16,
    /// 32 weights: f16 scale, 4-bit codes offset by 8.
    Q4_0,
    /// 32 weights: f16 scale and minimum, 4-bit codes.
    Q4_1,
    /// 32 weights: f16 scale, 5-bit codes offset by 16.
    Q5_0,
    /// 32 weights: f16 scale and minimum, 5-bit codes.
    Q5_1,
    /// 32 weights: f16 scale, 8-bit signed codes.
    Q8_0,
}

impl GgmlType {
    fn from_id(id: u32) -> Option<Self> {
        Some(match id {
            0 => Self::F32,
            1 => Self::F16,
            2 => Self::Q4_0,
            3 => Self::Q4_1,
            6 => Self::Q5_0,
            7 => Self::Q5_1,
            8 => Self::Q8_0,
            30 => Self::Bf16,
            _ => return None,
        })
    }

    /// The type's name as ggml spells it.
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "F32",
            Self::F16 => "F16",
            Self::Bf16 => "BF16",
            Self::Q4_0 => "Q4_0",
            Self::Q4_1 => "Q4_1",
            Self::Q5_0 => "Q5_0",
            Self::Q5_1 => "Q5_1",
            Self::Q8_0 => "Q8_0",
        }
    }

    /// (elements per block, bytes per block).
    pub fn block(self) -> (usize, usize) {
        match self {
            Self::F32 => (1, 4),
            Self::F16 | Self::Bf16 => (1, 2),
            Self::Q4_0 => (32, 18),
            Self::Q4_1 => (32, 20),
            Self::Q5_0 => (32, 22),
            Self::Q5_1 => (32, 24),
            Self::Q8_0 => (32, 34),
        }
    }
}

/// Names of ggml type ids this reader does not support, for error messages.
fn ggml_type_label(id: u32) -> String {
    let name = match id {
        9 => "Q8_1",
        10 => "Q2_K",
        11 => "Q3_K",
        12 => "Q4_K",
        13 => "Q5_K",
        14 => "Q6_K",
        15 => "Q8_K",
        16..=23 => "IQ*",
        24 => "I8",
        25 => "I16",
        26 => "I32",
        27 => "I64",
        28 => "F64",
        _ => "unknown",
    };
    format!("{id} ({name})")
}

/// One tensor's description.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    /// The tensor's name (ggml naming, e.g. `blk.0.attn_q.weight`).
    pub name: String,
    /// The shape, outermost dimension first (ggml's `ne` reversed): a weight `[out, in]`.
    pub shape: Vec<usize>,
    /// The element type, or the unsupported ggml type id.
    pub ggml_type: std::result::Result<GgmlType, u32>,
    /// Byte offset of the data inside the data section.
    pub offset: usize,
    /// Byte length of the data (0 for unsupported types: unknown).
    pub len: usize,
}

impl TensorInfo {
    /// Number of elements.
    pub fn elements(&self) -> usize {
        self.shape.iter().product()
    }
}

/// A parsed GGUF file: metadata, tensor descriptions and the data section (borrowed).
#[derive(Debug)]
pub struct GgufFile<'a> {
    label: String,
    /// The format version (2 or 3).
    pub version: u32,
    /// Every metadata key and value.
    pub metadata: BTreeMap<String, Value>,
    /// Every tensor, in file order.
    pub tensors: Vec<TensorInfo>,
    data: &'a [u8],
}

/// The parsed header of a GGUF file, owning no file bytes: pair it with the same bytes again
/// (for example a memory map kept alongside) to read tensors.
#[derive(Debug, Clone)]
pub struct GgufHeader {
    label: String,
    /// Every metadata key and value.
    pub metadata: BTreeMap<String, Value>,
    /// Every tensor, in file order.
    pub tensors: Vec<TensorInfo>,
    data_start: usize,
    file_len: usize,
}

impl GgufHeader {
    /// The label the file was parsed under.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The byte range of `info`'s data in the file.
    pub fn file_range(&self, info: &TensorInfo) -> std::ops::Range<usize> {
        let start = self.data_start + info.offset;
        start..start + info.len
    }

    /// Dequantizes `info` from `bytes`, which must be the bytes the header was parsed from.
    pub fn dequantize(&self, bytes: &[u8], info: &TensorInfo) -> Result<Vec<f32>> {
        if bytes.len() != self.file_len {
            return Err(Error::Gguf {
                file: self.label.clone(),
                what: format!(
                    "the file changed size since it was opened ({} → {} bytes)",
                    self.file_len,
                    bytes.len()
                ),
            });
        }
        dequantize_tensor(&self.label, &bytes[self.data_start..], info)
    }
}

struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
    label: &'a str,
}

impl<'a> Cursor<'a> {
    fn err(&self, what: impl Into<String>) -> Error {
        Error::Gguf {
            file: self.label.to_string(),
            what: format!("{} (at byte {})", what.into(), self.pos),
        }
    }

    fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        if n > self.remaining() {
            return Err(self.err(format!(
                "{what}: needs {n} bytes, {} remain",
                self.remaining()
            )));
        }
        let out = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, what)?);
        Ok(out)
    }

    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// A count of items each at least `min_item_bytes` long: never larger than what remains.
    fn count(&mut self, min_item_bytes: usize, what: &str) -> Result<usize> {
        let n = self.u64(what)?;
        let fits = (self.remaining() / min_item_bytes.max(1)) as u64;
        if n > fits {
            return Err(self.err(format!(
                "{what} is {n}, but only {} bytes remain",
                self.remaining()
            )));
        }
        Ok(n as usize)
    }

    fn string(&mut self, what: &str) -> Result<String> {
        let len = self.count(1, what)?;
        let bytes = self.take(len, what)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| self.err(format!("{what} is not UTF-8")))
    }

    fn value(&mut self, ty: u32, depth: usize, key: &str) -> Result<Value> {
        Ok(match ty {
            0 => Value::U64(self.array::<1>(key)?[0] as u64),
            1 => Value::I64(self.array::<1>(key)?[0] as i8 as i64),
            2 => Value::U64(u16::from_le_bytes(self.array(key)?) as u64),
            3 => Value::I64(i16::from_le_bytes(self.array(key)?) as i64),
            4 => Value::U64(self.u32(key)? as u64),
            5 => Value::I64(i32::from_le_bytes(self.array(key)?) as i64),
            6 => Value::F64(f32::from_le_bytes(self.array(key)?) as f64),
            7 => match self.array::<1>(key)?[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => return Err(self.err(format!("{key}: boolean byte {b}"))),
            },
            8 => Value::String(self.string(key)?),
            9 => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(self.err(format!("{key}: arrays nested too deep")));
                }
                let elem = self.u32(key)?;
                let min = match elem {
                    0 | 1 | 7 => 1,
                    2 | 3 => 2,
                    4..=6 => 4,
                    8..=12 => 8,
                    t => return Err(self.err(format!("{key}: unknown array element type {t}"))),
                };
                let n = self.count(min, key)?;
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(self.value(elem, depth + 1, key)?);
                }
                Value::Array(items)
            }
            10 => Value::U64(self.u64(key)?),
            11 => Value::I64(i64::from_le_bytes(self.array(key)?)),
            12 => Value::F64(f64::from_le_bytes(self.array(key)?)),
            t => return Err(self.err(format!("{key}: unknown value type {t}"))),
        })
    }
}

impl<'a> GgufFile<'a> {
    /// Parses and validates `bytes`; `label` names the file in errors.
    pub fn parse(bytes: &'a [u8], label: &str) -> Result<Self> {
        let mut c = Cursor {
            bytes,
            pos: 0,
            label,
        };
        if c.take(4, "magic")? != MAGIC {
            return Err(c.err("not a GGUF file (bad magic)"));
        }
        let version = c.u32("version")?;
        if !(2..=3).contains(&version) {
            return Err(c.err(format!("version {version} is not supported (2 or 3)")));
        }
        // A tensor info is at least 8 (name len) + 4 (n_dims) + 4 (type) + 8 (offset) bytes,
        // a key-value pair at least 8 (key len) + 4 (type) + 1 bytes.
        let tensor_count = c.count(24, "tensor count")?;
        let kv_count = c.count(13, "metadata count")?;
        let mut metadata = BTreeMap::new();
        for _ in 0..kv_count {
            let key = c.string("metadata key")?;
            let ty = c.u32("metadata value type")?;
            let value = c.value(ty, 0, &key)?;
            if metadata.insert(key.clone(), value).is_some() {
                return Err(c.err(format!("metadata key {key} appears twice")));
            }
        }
        let alignment = match metadata.get("general.alignment") {
            None => 32,
            Some(v) => match v.as_u64() {
                Some(a) if a.is_power_of_two() && a <= 1 << 16 => a as usize,
                _ => return Err(c.err(format!("general.alignment {v:?} is not a power of two"))),
            },
        };
        let mut raw = Vec::with_capacity(tensor_count);
        for _ in 0..tensor_count {
            let name = c.string("tensor name")?;
            let n_dims = c.u32("tensor dimension count")? as usize;
            if n_dims == 0 || n_dims > MAX_DIMS {
                return Err(c.err(format!("tensor {name} has {n_dims} dimensions")));
            }
            let mut ne = Vec::with_capacity(n_dims);
            for _ in 0..n_dims {
                ne.push(c.u64("tensor dimension")?);
            }
            let ty = c.u32("tensor type")?;
            let offset = c.u64("tensor offset")?;
            raw.push((name, ne, ty, offset));
        }
        let data_start = c.pos.div_ceil(alignment) * alignment;
        if data_start > bytes.len() {
            return Err(c.err("file ends before the data section"));
        }
        let data = &bytes[data_start..];
        let mut tensors = Vec::with_capacity(raw.len());
        let mut names = std::collections::BTreeSet::new();
        for (name, ne, ty, offset) in raw {
            let bad = |what: String| Error::Gguf {
                file: label.to_string(),
                what: format!("tensor {name}: {what}"),
            };
            if !names.insert(name.clone()) {
                return Err(bad("appears twice".into()));
            }
            let mut elements: u64 = 1;
            for &d in &ne {
                elements = elements
                    .checked_mul(d)
                    .filter(|&e| e <= data.len() as u64 * 2)
                    .ok_or_else(|| bad(format!("dimensions {ne:?} exceed the file")))?;
            }
            if elements == 0 {
                return Err(bad(format!("dimensions {ne:?} hold no element")));
            }
            let shape: Vec<usize> = ne.iter().rev().map(|&d| d as usize).collect();
            let ggml_type = GgmlType::from_id(ty).ok_or(ty);
            let offset_usize = usize::try_from(offset)
                .ok()
                .filter(|&o| o <= data.len())
                .ok_or_else(|| bad(format!("offset {offset} lies outside the data section")))?;
            if offset_usize % alignment != 0 {
                return Err(bad(format!(
                    "offset {offset} is not aligned to {alignment}"
                )));
            }
            let len = match ggml_type {
                Ok(t) => {
                    let (block, block_bytes) = t.block();
                    if !(ne[0] as usize).is_multiple_of(block) {
                        return Err(bad(format!(
                            "row length {} is not a multiple of the {} block size {block}",
                            ne[0],
                            t.name()
                        )));
                    }
                    let len = elements as usize / block * block_bytes;
                    if len > data.len() - offset_usize {
                        return Err(bad(format!(
                            "{len} bytes at offset {offset} run past the end of the file"
                        )));
                    }
                    len
                }
                Err(_) => 0,
            };
            tensors.push(TensorInfo {
                name,
                shape,
                ggml_type,
                offset: offset_usize,
                len,
            });
        }
        Ok(Self {
            label: label.to_string(),
            version,
            metadata,
            tensors,
            data,
        })
    }

    /// Drops the borrow of the file bytes, keeping what is needed to read tensors later.
    pub fn into_header(self, bytes: &[u8]) -> GgufHeader {
        GgufHeader {
            label: self.label,
            metadata: self.metadata,
            tensors: self.tensors,
            data_start: bytes.len() - self.data.len(),
            file_len: bytes.len(),
        }
    }

    /// The label this file was parsed under.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// A tensor's description by name.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// A metadata value by key.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    /// Dequantizes one tensor to f32 in file order (row-major in [`TensorInfo::shape`]).
    pub fn dequantize(&self, info: &TensorInfo) -> Result<Vec<f32>> {
        dequantize_tensor(&self.label, self.data, info)
    }
}

/// Dequantizes `info` from the data section `data` (which the header validated `info` against).
fn dequantize_tensor(label: &str, data: &[u8], info: &TensorInfo) -> Result<Vec<f32>> {
    let ty = info.ggml_type.map_err(|id| Error::UnsupportedGgmlType {
        file: label.to_string(),
        tensor: info.name.clone(),
        ggml_type: ggml_type_label(id),
    })?;
    let bytes = data
        .get(info.offset..info.offset + info.len)
        .ok_or_else(|| Error::Gguf {
            file: label.to_string(),
            what: format!("tensor {} lies outside the data section", info.name),
        })?;
    let mut out = vec![0f32; info.elements()];
    dequantize_into(ty, bytes, &mut out);
    Ok(out)
}

fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// Dequantizes whole blocks of `ty` from `bytes` into `out` (`out.len()` elements; the caller
/// sized `bytes` from the same element count).
pub fn dequantize_into(ty: GgmlType, bytes: &[u8], out: &mut [f32]) {
    let (block, block_bytes) = ty.block();
    for (src, dst) in bytes
        .chunks_exact(block_bytes)
        .zip(out.chunks_exact_mut(block))
    {
        match ty {
            GgmlType::F32 => dst[0] = f32::from_le_bytes([src[0], src[1], src[2], src[3]]),
            GgmlType::F16 => dst[0] = f16_at(src, 0),
            GgmlType::Bf16 => dst[0] = bf16::from_le_bytes([src[0], src[1]]).to_f32(),
            GgmlType::Q4_0 => {
                let d = f16_at(src, 0);
                for (j, &q) in src[2..18].iter().enumerate() {
                    dst[j] = ((q & 0x0f) as i32 - 8) as f32 * d;
                    dst[j + 16] = ((q >> 4) as i32 - 8) as f32 * d;
                }
            }
            GgmlType::Q4_1 => {
                let (d, m) = (f16_at(src, 0), f16_at(src, 2));
                for (j, &q) in src[4..20].iter().enumerate() {
                    dst[j] = (q & 0x0f) as f32 * d + m;
                    dst[j + 16] = (q >> 4) as f32 * d + m;
                }
            }
            GgmlType::Q5_0 | GgmlType::Q5_1 => {
                let (d, m, qh_at) = match ty {
                    GgmlType::Q5_0 => (f16_at(src, 0), None, 2),
                    _ => (f16_at(src, 0), Some(f16_at(src, 2)), 4),
                };
                let qh = u32::from_le_bytes([
                    src[qh_at],
                    src[qh_at + 1],
                    src[qh_at + 2],
                    src[qh_at + 3],
                ]);
                for (j, &q) in src[qh_at + 4..qh_at + 20].iter().enumerate() {
                    let hi0 = ((qh >> j) << 4) & 0x10;
                    let hi1 = (qh >> (j + 12)) & 0x10;
                    let q0 = (q as u32 & 0x0f) | hi0;
                    let q1 = (q as u32 >> 4) | hi1;
                    match m {
                        None => {
                            dst[j] = (q0 as i32 - 16) as f32 * d;
                            dst[j + 16] = (q1 as i32 - 16) as f32 * d;
                        }
                        Some(m) => {
                            dst[j] = q0 as f32 * d + m;
                            dst[j + 16] = q1 as f32 * d + m;
                        }
                    }
                }
            }
            GgmlType::Q8_0 => {
                let d = f16_at(src, 0);
                for (j, &q) in src[2..34].iter().enumerate() {
                    dst[j] = q as i8 as f32 * d;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal GGUF v3 file: one metadata string, one F32 tensor `[2, 3]`.
    pub(crate) fn tiny() -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(b"GGUF");
        b.extend_from_slice(&3u32.to_le_bytes());
        b.extend_from_slice(&1u64.to_le_bytes()); // tensors
        b.extend_from_slice(&1u64.to_le_bytes()); // kv
        let key = b"general.architecture";
        b.extend_from_slice(&(key.len() as u64).to_le_bytes());
        b.extend_from_slice(key);
        b.extend_from_slice(&8u32.to_le_bytes());
        b.extend_from_slice(&5u64.to_le_bytes());
        b.extend_from_slice(b"llama");
        let name = b"w";
        b.extend_from_slice(&(name.len() as u64).to_le_bytes());
        b.extend_from_slice(name);
        b.extend_from_slice(&2u32.to_le_bytes());
        b.extend_from_slice(&3u64.to_le_bytes());
        b.extend_from_slice(&2u64.to_le_bytes());
        b.extend_from_slice(&0u32.to_le_bytes());
        b.extend_from_slice(&0u64.to_le_bytes());
        while b.len() % 32 != 0 {
            b.push(0);
        }
        for v in [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        b
    }

    #[test]
    fn parses_and_dequantizes_a_tiny_file() {
        let bytes = tiny();
        let f = GgufFile::parse(&bytes, "tiny").unwrap();
        assert_eq!(
            f.get("general.architecture").unwrap().as_str(),
            Some("llama")
        );
        let t = f.tensor("w").unwrap();
        assert_eq!(t.shape, vec![2, 3]);
        assert_eq!(f.dequantize(t).unwrap(), vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    }

    #[test]
    fn every_truncation_is_a_typed_error() {
        let bytes = tiny();
        for len in 0..bytes.len() {
            let r = GgufFile::parse(&bytes[..len], "tiny");
            assert!(matches!(r, Err(Error::Gguf { .. })), "length {len}: {r:?}");
        }
    }

    #[test]
    fn huge_counts_are_rejected_before_allocating() {
        let mut bytes = tiny();
        bytes[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(
            GgufFile::parse(&bytes, "t"),
            Err(Error::Gguf { .. })
        ));
        let mut bytes = tiny();
        // The metadata key length.
        bytes[24..32].copy_from_slice(&(1u64 << 60).to_le_bytes());
        assert!(matches!(
            GgufFile::parse(&bytes, "t"),
            Err(Error::Gguf { .. })
        ));
    }

    #[test]
    fn q_blocks_match_hand_computed_values() {
        // Q4_1: d = 0.5, m = -1, codes 0..15 then 15..0.
        let mut blk = Vec::new();
        blk.extend_from_slice(&f16::from_f32(0.5).to_le_bytes());
        blk.extend_from_slice(&f16::from_f32(-1.0).to_le_bytes());
        for j in 0..16u8 {
            blk.push(j | ((15 - j) << 4));
        }
        let mut out = [0f32; 32];
        dequantize_into(GgmlType::Q4_1, &blk, &mut out);
        for j in 0..16 {
            assert_eq!(out[j], j as f32 * 0.5 - 1.0);
            assert_eq!(out[j + 16], (15 - j) as f32 * 0.5 - 1.0);
        }
        // Q8_0: d = 0.25, codes -16..15.
        let mut blk = f16::from_f32(0.25).to_le_bytes().to_vec();
        blk.extend((0..32).map(|j| (j as i8 - 16) as u8));
        dequantize_into(GgmlType::Q8_0, &blk, &mut out);
        for (j, v) in out.iter().enumerate() {
            assert_eq!(*v, (j as f32 - 16.0) * 0.25);
        }
        // Q5_0: d = 1, high bits set for elements 0 and 31 only.
        let mut blk = f16::from_f32(1.0).to_le_bytes().to_vec();
        blk.extend_from_slice(&(1u32 | (1 << 31)).to_le_bytes());
        blk.extend(std::iter::repeat_n(0x21u8, 16));
        dequantize_into(GgmlType::Q5_0, &blk, &mut out);
        assert_eq!(out[0], (1 + 16 - 16) as f32);
        assert_eq!(out[1], (1 - 16) as f32);
        assert_eq!(out[16], (2 - 16) as f32);
        assert_eq!(out[31], (2 + 16 - 16) as f32);
    }
}
