//! SHA-256 helpers: the backbone hash, streamed file digests, canonical JSON and the
//! length-prefixed byte streams the checksums are defined over.
//!
//! In every stream below, `lp(x)` is the length of `x` in bytes as a little-endian `u64`
//! followed by `x`, and `u64(n)` is `n` as a little-endian `u64`.
//!
//! **Backbone hash** ([`backbone_hash`], [`BackboneHasher`]): each tensor `t` gets
//!
//! ```text
//! d_t = SHA-256("skillzip.backbone.tensor.v1\0" ‖ lp(name) ‖ lp(dtype) ‖ u64(ndim)
//!               ‖ u64(dim_0) ‖ … ‖ lp(data))
//! ```
//!
//! where `dtype` is the safetensors dtype name (`"F32"`) and `data` the tensor's
//! little-endian row-major bytes; then
//!
//! ```text
//! hash = SHA-256("skillzip.backbone.v1\0" ‖ u64(count) ‖ for t in names sorted by bytes:
//!                lp(name_t) ‖ d_t)
//! ```
//!
//! written as 64 lowercase hex digits. Tensors may be added in any order, one at a time.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::path::Path;

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

const TENSOR_DOMAIN: &[u8] = b"skillzip.backbone.tensor.v1\0";
const BACKBONE_DOMAIN: &[u8] = b"skillzip.backbone.v1\0";

/// Lowercase hex of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(2 * bytes.len());
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

/// Whether `s` is a SHA-256 digest written as exactly 64 lowercase hex digits.
pub fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Feeds `u64(n)`.
pub(crate) fn put_u64(h: &mut Sha256, n: u64) {
    h.update(n.to_le_bytes());
}

/// Feeds `lp(bytes)`.
pub(crate) fn put_lp(h: &mut Sha256, bytes: &[u8]) {
    put_u64(h, bytes.len() as u64);
    h.update(bytes);
}

/// Feeds one tensor record `lp(name) ‖ lp(dtype) ‖ u64(ndim) ‖ u64(dims)… ‖ lp(data)`.
pub(crate) fn put_tensor(h: &mut Sha256, name: &str, dtype: &str, shape: &[usize], data: &[u8]) {
    put_lp(h, name.as_bytes());
    put_lp(h, dtype.as_bytes());
    put_u64(h, shape.len() as u64);
    for &d in shape {
        put_u64(h, d as u64);
    }
    put_lp(h, data);
}

/// Canonical JSON: object keys sorted by their UTF-8 bytes, no whitespace, strings and
/// numbers as `serde_json` writes them (numbers: integers in decimal, floats in the shortest
/// form that parses back to the same `f64`). Independent of serde_json's `preserve_order`.
pub(crate) fn canonical_json(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
        Value::Number(n) => out.extend_from_slice(n.to_string().as_bytes()),
        Value::String(s) => write_json_string(s, out),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                canonical_json(item, out);
            }
            out.push(b']');
        }
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push(b'{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_json_string(k, out);
                out.push(b':');
                canonical_json(&map[k], out);
            }
            out.push(b'}');
        }
    }
}

fn write_json_string(s: &str, out: &mut Vec<u8>) {
    // Serializing a `str` cannot fail.
    match serde_json::to_string(s) {
        Ok(quoted) => out.extend_from_slice(quoted.as_bytes()),
        Err(_) => out.extend_from_slice(b"\"\""),
    }
}

/// The SHA-256 and length of a file, read in 64 KiB blocks (never the whole file at once).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileDigest {
    /// 64 lowercase hex digits.
    pub sha256: String,
    /// Length in bytes.
    pub bytes: u64,
}

/// Streams `path` through SHA-256.
pub fn hash_file(path: impl AsRef<Path>) -> Result<FileDigest> {
    let path = path.as_ref();
    let label = path.display().to_string();
    let file = File::open(path).map_err(|e| Error::io(&label, "open", e))?;
    hash_reader(file, &label)
}

pub(crate) fn hash_reader(mut r: impl Read, label: &str) -> Result<FileDigest> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut bytes = 0u64;
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Error::io(label, "read", e)),
        };
        h.update(&buf[..n]);
        bytes += n as u64;
    }
    Ok(FileDigest {
        sha256: hex(&h.finalize()),
        bytes,
    })
}

/// SHA-256 of a byte slice, as 64 lowercase hex digits.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// Incremental backbone hash (see the module docs for the exact stream): add tensors one at
/// a time in any order; only a 32-byte digest per tensor is kept.
#[derive(Debug, Clone, Default)]
pub struct BackboneHasher {
    tensors: BTreeMap<String, [u8; 32]>,
}

impl BackboneHasher {
    /// An empty hasher.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one tensor: its name, safetensors dtype name (e.g. `"F32"`), shape and
    /// little-endian row-major bytes. A name added twice is a [`Error::Duplicate`].
    pub fn add(&mut self, name: &str, dtype: &str, shape: &[usize], bytes: &[u8]) -> Result<()> {
        if self.tensors.contains_key(name) {
            return Err(Error::Duplicate {
                file: "<backbone>".into(),
                field: "tensors".into(),
                name: name.into(),
            });
        }
        let mut h = Sha256::new();
        h.update(TENSOR_DOMAIN);
        put_tensor(&mut h, name, dtype, shape, bytes);
        self.tensors.insert(name.to_string(), h.finalize().into());
        Ok(())
    }

    /// Number of tensors added.
    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    /// Whether no tensor was added.
    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    /// The backbone hash, 64 lowercase hex digits.
    pub fn finish(&self) -> String {
        let mut h = Sha256::new();
        h.update(BACKBONE_DOMAIN);
        put_u64(&mut h, self.tensors.len() as u64);
        for (name, d) in &self.tensors {
            put_lp(&mut h, name.as_bytes());
            h.update(d);
        }
        hex(&h.finalize())
    }
}

/// The backbone hash of `(name, dtype, shape, bytes)` tensors in any order (see the module
/// docs). Callers feed the backbone's tensors as they apply skillpacks to them (f32).
pub fn backbone_hash<'a, I>(tensors: I) -> Result<String>
where
    I: IntoIterator<Item = (&'a str, &'a str, &'a [usize], &'a [u8])>,
{
    let mut h = BackboneHasher::new();
    for (name, dtype, shape, bytes) in tensors {
        h.add(name, dtype, shape, bytes)?;
    }
    Ok(h.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_json_sorts_keys_and_drops_whitespace() {
        let v: Value =
            serde_json::from_str(r#"{ "b": [1, 2.5, "x\n"], "a": {"d": null, "c": true} }"#)
                .unwrap();
        let mut out = Vec::new();
        canonical_json(&v, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"{"a":{"c":true,"d":null},"b":[1,2.5,"x\n"]}"#
        );
    }

    #[test]
    fn backbone_hash_is_order_free_and_sensitive() {
        let a = [1u8, 2, 3, 4];
        let b = [5u8, 6, 7, 8];
        let h1 = backbone_hash([
            ("x", "F32", &[1usize][..], &a[..]),
            ("y", "F32", &[1][..], &b[..]),
        ])
        .unwrap();
        let h2 = backbone_hash([
            ("y", "F32", &[1usize][..], &b[..]),
            ("x", "F32", &[1][..], &a[..]),
        ])
        .unwrap();
        assert_eq!(h1, h2);
        assert!(is_sha256_hex(&h1));
        let h3 = backbone_hash([
            ("x", "F32", &[1usize][..], &b[..]),
            ("y", "F32", &[1][..], &a[..]),
        ])
        .unwrap();
        assert_ne!(h1, h3);
        // Shape is part of the stream.
        let h4 = backbone_hash([
            ("x", "F32", &[1usize, 1][..], &a[..]),
            ("y", "F32", &[1][..], &b[..]),
        ])
        .unwrap();
        assert_ne!(h1, h4);
        let dup = backbone_hash([
            ("x", "F32", &[1usize][..], &a[..]),
            ("x", "F32", &[1][..], &a[..]),
        ]);
        assert!(matches!(dup, Err(Error::Duplicate { .. })));
    }
}
