//! Dense f16/bf16/f32 tensors: the parameters a skillpack or bundle stores as they are
//! (DESIGN.md §4.8: embeddings, norms, biases, `lm_head`, the shared delta), and plain
//! safetensors files of them.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use half::{bf16, f16};
use safetensors::tensor::Dtype;

use crate::atomic::write_atomic_bytes;
use crate::container::{self, Owned};
use crate::error::{Error, Result};

/// The storage type of a [`DenseTensor`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DenseDtype {
    /// IEEE half precision (what DESIGN.md §4.8 stores by default).
    F16,
    /// bfloat16 (common in HF checkpoints).
    BF16,
    /// IEEE single precision.
    F32,
}

impl DenseDtype {
    /// The safetensors name: `"F16"`, `"BF16"` or `"F32"`.
    pub fn name(self) -> &'static str {
        match self {
            DenseDtype::F16 => "F16",
            DenseDtype::BF16 => "BF16",
            DenseDtype::F32 => "F32",
        }
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DenseDtype::F16 | DenseDtype::BF16 => 2,
            DenseDtype::F32 => 4,
        }
    }

    /// Parses a safetensors dtype name.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "F16" => Some(DenseDtype::F16),
            "BF16" => Some(DenseDtype::BF16),
            "F32" => Some(DenseDtype::F32),
            _ => None,
        }
    }

    pub(crate) fn to_safetensors(self) -> Dtype {
        match self {
            DenseDtype::F16 => Dtype::F16,
            DenseDtype::BF16 => Dtype::BF16,
            DenseDtype::F32 => Dtype::F32,
        }
    }

    /// The dense type of a safetensors dtype (`None` for every other dtype).
    pub fn from_safetensors(d: Dtype) -> Option<Self> {
        match d {
            Dtype::F16 => Some(DenseDtype::F16),
            Dtype::BF16 => Some(DenseDtype::BF16),
            Dtype::F32 => Some(DenseDtype::F32),
            _ => None,
        }
    }
}

/// A dense tensor: row-major f32 values, stored as `dtype`.
///
/// Writing converts to `dtype` (round to nearest even); a value that is not finite, or that
/// overflows the storage type, is a typed [`Error::NonFinite`]. Values read from F16/BF16 are
/// exact in f32, so a tensor read back compares equal to what was read.
#[derive(Debug, Clone, PartialEq)]
pub struct DenseTensor {
    /// Dimensions, outermost first (`[]` is a scalar).
    pub shape: Vec<usize>,
    /// `shape.iter().product()` values, row-major.
    pub data: Vec<f32>,
    /// Storage type.
    pub dtype: DenseDtype,
}

impl DenseTensor {
    /// A tensor, checking that `data` has `shape.iter().product()` values.
    pub fn new(shape: Vec<usize>, data: Vec<f32>, dtype: DenseDtype) -> Result<Self> {
        let t = Self { shape, data, dtype };
        t.check_len("<memory>", "tensor")?;
        Ok(t)
    }

    /// Number of elements the shape describes (`None` on overflow).
    pub fn numel(&self) -> Option<usize> {
        numel(&self.shape)
    }

    /// Bytes in storage.
    pub fn storage_bytes(&self) -> usize {
        self.data.len() * self.dtype.size()
    }

    fn check_len(&self, file: &str, tensor: &str) -> Result<()> {
        match self.numel() {
            Some(n) if n == self.data.len() => Ok(()),
            _ => Err(Error::invalid(
                file,
                tensor,
                format!(
                    "shape {:?} does not describe {} values",
                    self.shape,
                    self.data.len()
                ),
            )),
        }
    }

    /// Little-endian bytes in `dtype`.
    pub(crate) fn encode(&self, file: &str, tensor: &str) -> Result<Owned> {
        self.check_len(file, tensor)?;
        let bad = |index| Error::NonFinite {
            file: file.to_string(),
            tensor: tensor.to_string(),
            index,
        };
        let mut data = Vec::with_capacity(self.storage_bytes());
        for (i, &v) in self.data.iter().enumerate() {
            if !v.is_finite() {
                return Err(bad(i));
            }
            match self.dtype {
                DenseDtype::F32 => data.extend_from_slice(&v.to_le_bytes()),
                DenseDtype::F16 => {
                    let h = f16::from_f32(v);
                    if !h.is_finite() {
                        return Err(bad(i));
                    }
                    data.extend_from_slice(&h.to_le_bytes());
                }
                DenseDtype::BF16 => {
                    let h = bf16::from_f32(v);
                    if !h.is_finite() {
                        return Err(bad(i));
                    }
                    data.extend_from_slice(&h.to_le_bytes());
                }
            }
        }
        Ok(Owned {
            dtype: self.dtype.to_safetensors(),
            shape: self.shape.clone(),
            data,
        })
    }

    /// Decodes little-endian `bytes` (whose length the container already matched to the
    /// shape), rejecting non-finite values.
    pub(crate) fn decode(
        dtype: DenseDtype,
        shape: &[usize],
        bytes: &[u8],
        file: &str,
        tensor: &str,
    ) -> Result<Self> {
        let n = numel(shape).filter(|n| n.checked_mul(dtype.size()) == Some(bytes.len()));
        if n.is_none() {
            return Err(Error::invalid(
                file,
                tensor,
                format!(
                    "{} bytes do not hold shape {shape:?} of {}",
                    bytes.len(),
                    dtype.name()
                ),
            ));
        }
        let data = decode_le(dtype, bytes);
        if let Some(index) = data.iter().position(|v| !v.is_finite()) {
            return Err(Error::NonFinite {
                file: file.to_string(),
                tensor: tensor.to_string(),
                index,
            });
        }
        Ok(Self {
            shape: shape.to_vec(),
            data,
            dtype,
        })
    }
}

pub(crate) fn numel(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d))
}

/// A safetensors file of dense tensors with its string metadata.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct DenseTensors {
    /// The `__metadata__` map (empty when the file has none).
    pub metadata: BTreeMap<String, String>,
    /// Tensors by name.
    pub tensors: BTreeMap<String, DenseTensor>,
}

/// Serializes dense tensors (names as given, e.g. HF names) with `metadata` as
/// `__metadata__` (omitted when empty).
pub fn dense_tensors_to_bytes(
    metadata: &BTreeMap<String, String>,
    tensors: &BTreeMap<String, DenseTensor>,
) -> Result<Vec<u8>> {
    encode_dense_file(metadata, tensors, "<memory>")
}

fn encode_dense_file(
    metadata: &BTreeMap<String, String>,
    tensors: &BTreeMap<String, DenseTensor>,
    label: &str,
) -> Result<Vec<u8>> {
    let mut owned = BTreeMap::new();
    for (name, t) in tensors {
        check_tensor_name(name, label)?;
        owned.insert(name.clone(), t.encode(label, name)?);
    }
    let meta = (!metadata.is_empty()).then(|| {
        metadata
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect::<HashMap<_, _>>()
    });
    container::serialize(&owned, meta, label)
}

pub(crate) fn check_tensor_name(name: &str, label: &str) -> Result<()> {
    if name.is_empty() || name == "__metadata__" {
        return Err(Error::invalid(
            label,
            "tensor name",
            format!("{name:?} is not a usable tensor name"),
        ));
    }
    Ok(())
}

/// Writes dense tensors to `path` atomically; returns the bytes written.
pub fn write_dense_tensors(
    path: impl AsRef<Path>,
    metadata: &BTreeMap<String, String>,
    tensors: &BTreeMap<String, DenseTensor>,
) -> Result<u64> {
    let path = path.as_ref();
    let bytes = encode_dense_file(metadata, tensors, &path.display().to_string())?;
    write_atomic_bytes(path, &bytes)
}

/// Reads and validates a dense-tensor safetensors file: container well-formed, every tensor
/// F16, BF16 or F32 with a shape that matches its byte length, every value finite.
pub fn read_dense_tensors(path: impl AsRef<Path>) -> Result<DenseTensors> {
    let path = path.as_ref();
    let label = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|e| Error::io(&label, "read", e))?;
    parse_dense_tensors(&bytes, &label)
}

/// [`read_dense_tensors`] on bytes; `label` names them in errors.
pub fn parse_dense_tensors(bytes: &[u8], label: &str) -> Result<DenseTensors> {
    let parsed = container::open(bytes, label)?;
    let mut out = DenseTensors {
        metadata: parsed.metadata.unwrap_or_default().into_iter().collect(),
        tensors: BTreeMap::new(),
    };
    for (name, view) in parsed.tensors {
        check_tensor_name(&name, label)?;
        let Some(dtype) = DenseDtype::from_safetensors(view.dtype) else {
            return Err(Error::TensorDtype {
                file: label.to_string(),
                tensor: name,
                expected: "F16, BF16 or F32".into(),
                found: container::dtype_name(view.dtype),
            });
        };
        let t = DenseTensor::decode(dtype, &view.shape, view.data, label, &name)?;
        out.tensors.insert(name, t);
    }
    Ok(out)
}

/// Little-endian `dtype` values to f32 (exact widening; a trailing partial element is ignored:
/// callers check the length against the shape).
pub fn decode_le(dtype: DenseDtype, bytes: &[u8]) -> Vec<f32> {
    match dtype {
        DenseDtype::F32 => bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        DenseDtype::F16 => bytes
            .chunks_exact(2)
            .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        DenseDtype::BF16 => bytes
            .chunks_exact(2)
            .map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
    }
}
