//! Bundles: a directory holding a backbone delta, several skillpacks and a router, described
//! by `manifest.json` (DESIGN.md §5).
//!
//! ```json
//! {"format": "skillzip.bundle", "version": 1,
//!  "base": {"architecture": "llama", "backbone_hash": "<64 hex>", "source": "SmolLM2-135M"},
//!  "backbone_delta": {"file": "backbone_delta.safetensors", "sha256": "<64 hex>", "bytes": 123},
//!  "skillpacks": [{"name": "math", "file": "math.safetensors", "sha256": "<64 hex>", "bytes": 456}],
//!  "router": {"file": "router.json", "sha256": "<64 hex>", "bytes": 789}}
//! ```
//!
//! `backbone_delta` (dense `Δ_shared` tensors under HF names, F16/BF16/F32, read with
//! [`crate::read_dense_tensors`]) and `router` are optional. `backbone_hash` identifies the
//! backbone the skillpacks apply to, i.e. the merged `θ_0 + Δ_shared`. File names are plain
//! names inside the bundle directory. Every listed file's size and SHA-256 are checked
//! before it is used.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::atomic::write_atomic_bytes;
use crate::dense::{DenseTensors, parse_dense_tensors};
use crate::digest::{hash_reader, is_sha256_hex, sha256_hex};
use crate::error::{Error, Result};
use crate::skillpack::{Skillpack, check_base, check_format_version, parse_skillpack};

/// The manifest's file name inside a bundle directory.
pub const MANIFEST_FILE: &str = "manifest.json";
/// The `format` value of a manifest.
pub const BUNDLE_FORMAT: &str = "skillzip.bundle";
/// The manifest version this crate reads and writes.
pub const BUNDLE_VERSION: u64 = 1;
/// The largest manifest accepted (4 MiB).
pub const MAX_MANIFEST_BYTES: u64 = 4 << 20;
/// The largest listed file accepted (1 TiB).
pub const MAX_LISTED_FILE_BYTES: u64 = 1 << 40;

/// A bundle's `manifest.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Always [`BUNDLE_FORMAT`].
    pub format: String,
    /// Always [`BUNDLE_VERSION`].
    pub version: u64,
    /// The base model.
    pub base: BundleBase,
    /// The shared delta `Δ_shared` as dense tensors, if the bundle carries it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backbone_delta: Option<FileRef>,
    /// The skillpacks.
    pub skillpacks: Vec<SkillpackRef>,
    /// The router, if any (its format belongs to the router's owner).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub router: Option<FileRef>,
}

/// The base model of a bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleBase {
    /// Architecture name, e.g. `"llama"`.
    pub architecture: String,
    /// [`crate::backbone_hash`] of the backbone the skillpacks apply to.
    pub backbone_hash: String,
    /// Where the base came from (free text, e.g. a checkpoint path).
    pub source: String,
}

/// A file of the bundle with its size and digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRef {
    /// Plain file name inside the bundle directory.
    pub file: String,
    /// SHA-256, 64 lowercase hex digits.
    pub sha256: String,
    /// Size in bytes.
    pub bytes: u64,
}

/// A skillpack of the bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SkillpackRef {
    /// The skill's name (must equal the skillpack's own `skill`).
    pub name: String,
    /// Plain file name inside the bundle directory.
    pub file: String,
    /// SHA-256, 64 lowercase hex digits.
    pub sha256: String,
    /// Size in bytes.
    pub bytes: u64,
}

impl Manifest {
    /// An empty manifest (no skillpacks, no backbone delta, no router) for `base`.
    pub fn new(base: BundleBase) -> Self {
        Self {
            format: BUNDLE_FORMAT.into(),
            version: BUNDLE_VERSION,
            base,
            backbone_delta: None,
            skillpacks: Vec::new(),
            router: None,
        }
    }

    /// Checks everything [`parse_manifest`] checks after the JSON parsed; `file` names the
    /// manifest in errors.
    pub fn validate(&self, file: &str) -> Result<()> {
        if self.format != BUNDLE_FORMAT {
            return Err(Error::WrongFormat {
                file: file.into(),
                expected: BUNDLE_FORMAT,
                found: self.format.clone(),
            });
        }
        if self.version != BUNDLE_VERSION {
            return Err(Error::UnsupportedVersion {
                file: file.into(),
                found: self.version.to_string(),
                supported: BUNDLE_VERSION,
            });
        }
        if self.base.architecture.is_empty() || self.base.architecture.chars().any(char::is_control)
        {
            return Err(Error::invalid(
                file,
                "base.architecture",
                "is empty or holds a control character",
            ));
        }
        if !is_sha256_hex(&self.base.backbone_hash) {
            return Err(Error::invalid(
                file,
                "base.backbone_hash",
                "is not 64 lowercase hex digits",
            ));
        }
        let mut files = BTreeSet::new();
        let mut check_file = |field: String, file_name: &str, sha: &str, bytes: u64| {
            check_plain_name(file, &format!("{field}.file"), file_name)?;
            if !is_sha256_hex(sha) {
                return Err(Error::invalid(
                    file,
                    format!("{field}.sha256"),
                    "is not 64 lowercase hex digits",
                ));
            }
            if bytes == 0 || bytes > MAX_LISTED_FILE_BYTES {
                return Err(Error::invalid(
                    file,
                    format!("{field}.bytes"),
                    format!("{bytes} is outside 1..={MAX_LISTED_FILE_BYTES}"),
                ));
            }
            if !files.insert(file_name.to_string()) {
                return Err(Error::Duplicate {
                    file: file.into(),
                    field: "file".into(),
                    name: file_name.into(),
                });
            }
            Ok(())
        };
        if let Some(d) = &self.backbone_delta {
            check_file("backbone_delta".into(), &d.file, &d.sha256, d.bytes)?;
        }
        if let Some(r) = &self.router {
            check_file("router".into(), &r.file, &r.sha256, r.bytes)?;
        }
        let mut names = BTreeSet::new();
        for (i, s) in self.skillpacks.iter().enumerate() {
            let field = format!("skillpacks[{i}]");
            if s.name.is_empty() || s.name.chars().any(char::is_control) {
                return Err(Error::invalid(
                    file,
                    format!("{field}.name"),
                    "is empty or holds a control character",
                ));
            }
            if !names.insert(s.name.as_str()) {
                return Err(Error::Duplicate {
                    file: file.into(),
                    field: "skillpacks.name".into(),
                    name: s.name.clone(),
                });
            }
            check_file(field, &s.file, &s.sha256, s.bytes)?;
        }
        Ok(())
    }

    /// The manifest as pretty-printed JSON (validated first).
    pub fn to_json(&self) -> Result<Vec<u8>> {
        self.validate("<memory>")?;
        let mut v = serde_json::to_vec_pretty(self).map_err(|e| Error::json("<memory>", "", e))?;
        v.push(b'\n');
        Ok(v)
    }

    /// The skillpack entry named `name`.
    pub fn skillpack(&self, name: &str) -> Option<&SkillpackRef> {
        self.skillpacks.iter().find(|s| s.name == name)
    }
}

/// A file name must be one plain component: not empty, no `/` or `\`, not `.`/`..`, no
/// leading `.` (hidden and temporary files), no `:` (drive letters, streams), no control
/// characters or NUL, and not the manifest itself.
fn check_plain_name(file: &str, field: &str, name: &str) -> Result<()> {
    let reason = if name.is_empty() {
        Some("is empty")
    } else if name.contains('/') || name.contains('\\') {
        Some("holds a path separator")
    } else if name.starts_with('.') {
        Some("starts with '.' (., .., hidden or temporary files)")
    } else if name.contains(':') {
        Some("holds ':'")
    } else if name.chars().any(char::is_control) {
        Some("holds a control character")
    } else if name == MANIFEST_FILE {
        Some("names the manifest itself")
    } else if name.len() > 255 {
        Some("is longer than 255 bytes")
    } else {
        None
    };
    match reason {
        Some(r) => Err(Error::invalid(file, field, format!("{name:?} {r}"))),
        None => Ok(()),
    }
}

/// Parses and validates a manifest: at most [`MAX_MANIFEST_BYTES`], UTF-8 JSON, `format`
/// and `version` (checked first), no unknown fields, plain unique file names, unique skill
/// names, well-formed digests and sane sizes. `label` names the manifest in errors.
pub fn parse_manifest(bytes: &[u8], label: &str) -> Result<Manifest> {
    if bytes.len() as u64 > MAX_MANIFEST_BYTES {
        return Err(Error::TooLarge {
            file: label.into(),
            what: "manifest",
            len: bytes.len() as u64,
            max: MAX_MANIFEST_BYTES,
        });
    }
    let value: Value = serde_json::from_slice(bytes).map_err(|e| Error::json(label, "", e))?;
    let Some(obj) = value.as_object() else {
        return Err(Error::invalid(
            label,
            "",
            "the manifest is not a JSON object",
        ));
    };
    check_format_version(label, obj, BUNDLE_FORMAT, BUNDLE_VERSION)?;
    let m = Manifest::deserialize(&value).map_err(|e| Error::json(label, "", e))?;
    m.validate(label)?;
    Ok(m)
}

/// Reads `dir/manifest.json` (see [`parse_manifest`]).
pub fn read_manifest(dir: impl AsRef<Path>) -> Result<Manifest> {
    let path = dir.as_ref().join(MANIFEST_FILE);
    let label = path.display().to_string();
    let file = File::open(&path).map_err(|e| Error::io(&label, "open", e))?;
    let mut bytes = Vec::new();
    file.take(MAX_MANIFEST_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Error::io(&label, "read", e))?;
    parse_manifest(&bytes, &label)
}

/// Writes `dir/manifest.json` atomically (validated first); returns the bytes written.
pub fn write_manifest(dir: impl AsRef<Path>, manifest: &Manifest) -> Result<u64> {
    let path = dir.as_ref().join(MANIFEST_FILE);
    let label = path.display().to_string();
    manifest.validate(&label)?;
    let bytes = manifest.to_json()?;
    write_atomic_bytes(&path, &bytes)
}

/// A [`FileRef`] for `dir/file` as it is now on disk (size and streamed SHA-256), for
/// writers assembling a manifest.
pub fn file_ref(dir: impl AsRef<Path>, file: &str) -> Result<FileRef> {
    let path = dir.as_ref().join(file);
    check_plain_name(&path.display().to_string(), "file", file)?;
    let d = crate::digest::hash_file(&path)?;
    Ok(FileRef {
        file: file.into(),
        sha256: d.sha256,
        bytes: d.bytes,
    })
}

/// An opened bundle whose listed files matched their sizes and digests when opened.
#[derive(Debug, Clone)]
pub struct Bundle {
    dir: PathBuf,
    manifest: Manifest,
}

impl Bundle {
    /// Reads the manifest and checks every listed file's size and SHA-256 (streamed, never
    /// loading a file whole). Errors name the file at fault.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        let manifest = read_manifest(&dir)?;
        let bundle = Self { dir, manifest };
        for (file, sha, bytes) in bundle.listed() {
            bundle.verify_streamed(file, sha, bytes)?;
        }
        Ok(bundle)
    }

    fn listed(&self) -> Vec<(&str, &str, u64)> {
        let m = &self.manifest;
        let mut v = Vec::new();
        if let Some(d) = &m.backbone_delta {
            v.push((d.file.as_str(), d.sha256.as_str(), d.bytes));
        }
        for s in &m.skillpacks {
            v.push((s.file.as_str(), s.sha256.as_str(), s.bytes));
        }
        if let Some(r) = &m.router {
            v.push((r.file.as_str(), r.sha256.as_str(), r.bytes));
        }
        v
    }

    /// The bundle directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The skills' names in manifest order.
    pub fn skill_names(&self) -> impl Iterator<Item = &str> {
        self.manifest.skillpacks.iter().map(|s| s.name.as_str())
    }

    /// The path of a listed file.
    pub fn path_of(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }

    fn open_listed(&self, file: &str, expected: u64) -> Result<(File, String)> {
        let path = self.path_of(file);
        let label = path.display().to_string();
        let f = File::open(&path).map_err(|e| Error::io(&label, "open", e))?;
        let meta = f.metadata().map_err(|e| Error::io(&label, "stat", e))?;
        if !meta.is_file() {
            return Err(Error::invalid(&label, "file", "is not a regular file"));
        }
        if meta.len() != expected {
            return Err(Error::FileSize {
                file: label,
                expected,
                actual: meta.len(),
            });
        }
        Ok((f, label))
    }

    fn verify_streamed(&self, file: &str, sha: &str, bytes: u64) -> Result<()> {
        let (f, label) = self.open_listed(file, bytes)?;
        let d = hash_reader(f.take(bytes + 1), &label)?;
        check_digest(&label, sha, bytes, &d.sha256, d.bytes)
    }

    /// Reads a listed file whole, checking size and digest on the bytes actually read (the
    /// file may have changed since [`Bundle::open`]). Allocates at most `bytes`, which the
    /// file's size on disk already matched.
    fn read_verified(&self, file: &str, sha: &str, bytes: u64) -> Result<(Vec<u8>, String)> {
        let (f, label) = self.open_listed(file, bytes)?;
        let mut data = Vec::with_capacity(usize::try_from(bytes).unwrap_or(0));
        f.take(bytes + 1)
            .read_to_end(&mut data)
            .map_err(|e| Error::io(&label, "read", e))?;
        check_digest(&label, sha, bytes, &sha256_hex(&data), data.len() as u64)?;
        Ok((data, label))
    }

    /// Reads, verifies and parses the skillpack of skill `name`, and checks that it names
    /// the same skill and base model as the manifest.
    pub fn skillpack(&self, name: &str) -> Result<Skillpack> {
        let Some(entry) = self.manifest.skillpack(name) else {
            return Err(Error::UnknownSkill {
                file: self.path_of(MANIFEST_FILE).display().to_string(),
                name: name.into(),
            });
        };
        let (bytes, label) = self.read_verified(&entry.file, &entry.sha256, entry.bytes)?;
        let pack = parse_skillpack(&bytes, &label)?;
        if pack.meta.skill != entry.name {
            return Err(Error::invalid(
                &label,
                "skill",
                format!(
                    "is {:?}, the manifest lists it as {:?}",
                    pack.meta.skill, entry.name
                ),
            ));
        }
        let base = &self.manifest.base;
        check_base(
            &label,
            &pack.meta.base,
            &base.architecture,
            &base.backbone_hash,
        )?;
        Ok(pack)
    }

    /// Reads, verifies and parses the backbone delta, if the bundle has one.
    pub fn backbone_delta(&self) -> Result<Option<DenseTensors>> {
        let Some(d) = &self.manifest.backbone_delta else {
            return Ok(None);
        };
        let (bytes, label) = self.read_verified(&d.file, &d.sha256, d.bytes)?;
        parse_dense_tensors(&bytes, &label).map(Some)
    }

    /// Reads and verifies the router file's bytes, if the bundle has one.
    pub fn router_bytes(&self) -> Result<Option<Vec<u8>>> {
        let Some(r) = &self.manifest.router else {
            return Ok(None);
        };
        self.read_verified(&r.file, &r.sha256, r.bytes)
            .map(|(b, _)| Some(b))
    }
}

fn check_digest(label: &str, sha: &str, bytes: u64, computed: &str, read: u64) -> Result<()> {
    if read != bytes {
        return Err(Error::FileSize {
            file: label.into(),
            expected: bytes,
            actual: read,
        });
    }
    if computed != sha {
        return Err(Error::FileDigest {
            file: label.into(),
            expected: sha.into(),
            computed: computed.into(),
        });
    }
    Ok(())
}
