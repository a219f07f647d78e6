//! The safetensors container as this crate uses it: bounded header, exact length, owned
//! tensors for writing.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};

use safetensors::tensor::{Dtype, SafeTensors, View};

use crate::error::{Error, Result};

/// The largest safetensors JSON header this crate reads or writes (16 MiB). A skillpack for
/// a 80-layer model needs well under 1 MiB.
pub const MAX_HEADER_BYTES: u64 = 16 << 20;

/// A tensor to be written.
#[derive(Debug, Clone)]
pub(crate) struct Owned {
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub data: Vec<u8>,
}

impl View for &Owned {
    fn dtype(&self) -> Dtype {
        self.dtype
    }

    fn shape(&self) -> &[usize] {
        &self.shape
    }

    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.data)
    }

    fn data_len(&self) -> usize {
        self.data.len()
    }
}

/// Serializes `tensors` with `metadata`, refusing headers a reader would reject.
pub(crate) fn serialize(
    tensors: &BTreeMap<String, Owned>,
    metadata: Option<HashMap<String, String>>,
    label: &str,
) -> Result<Vec<u8>> {
    let bytes = safetensors::serialize(tensors.iter(), metadata).map_err(|e| Error::Container {
        file: label.to_string(),
        detail: e.to_string(),
    })?;
    let header = header_len(&bytes).unwrap_or(u64::MAX);
    if header > MAX_HEADER_BYTES {
        return Err(Error::TooLarge {
            file: label.to_string(),
            what: "header",
            len: header,
            max: MAX_HEADER_BYTES,
        });
    }
    Ok(bytes)
}

fn header_len(bytes: &[u8]) -> Option<u64> {
    let first: [u8; 8] = bytes.get(..8)?.try_into().ok()?;
    Some(u64::from_le_bytes(first))
}

/// One tensor of a parsed container, borrowing its bytes.
#[derive(Debug, Clone)]
pub(crate) struct TensorRef<'a> {
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub data: &'a [u8],
}

/// A parsed container: the `__metadata__` map and the tensors by name.
#[derive(Debug)]
pub(crate) struct Parsed<'a> {
    pub metadata: Option<HashMap<String, String>>,
    pub tensors: BTreeMap<String, TensorRef<'a>>,
}

/// Parses the container: header at most [`MAX_HEADER_BYTES`], offsets contiguous and inside
/// the file, shapes matching byte lengths, and the data section ending exactly where the
/// last tensor ends.
pub(crate) fn open<'a>(bytes: &'a [u8], label: &str) -> Result<Parsed<'a>> {
    let container = |detail: String| Error::Container {
        file: label.to_string(),
        detail,
    };
    let Some(n) = header_len(bytes) else {
        return Err(container(format!(
            "{} bytes is shorter than the 8-byte header length",
            bytes.len()
        )));
    };
    if n > MAX_HEADER_BYTES {
        return Err(Error::TooLarge {
            file: label.to_string(),
            what: "header",
            len: n,
            max: MAX_HEADER_BYTES,
        });
    }
    let (_, metadata) = SafeTensors::read_metadata(bytes).map_err(|e| container(e.to_string()))?;
    // safetensors checks this too; the format's promise is worth a second look.
    let expected = 8 + n + metadata.data_len() as u64;
    if expected != bytes.len() as u64 {
        return Err(Error::Length {
            file: label.to_string(),
            expected,
            actual: bytes.len() as u64,
        });
    }
    // `n <= MAX_HEADER_BYTES`, so this fits a usize.
    let data = bytes.get(8 + n as usize..).unwrap_or(&[]);
    let mut tensors = BTreeMap::new();
    for (name, info) in metadata.tensors() {
        let (s, e) = info.data_offsets;
        let Some(slice) = data.get(s..e) else {
            return Err(container(format!(
                "tensor `{name}` lies outside the data section"
            )));
        };
        tensors.insert(
            name,
            TensorRef {
                dtype: info.dtype,
                shape: info.shape.clone(),
                data: slice,
            },
        );
    }
    Ok(Parsed {
        metadata: metadata.metadata().clone(),
        tensors,
    })
}

/// The safetensors name of a dtype (`"F32"`).
pub(crate) fn dtype_name(d: Dtype) -> String {
    d.to_string()
}
