//! Atomic file replacement: write a sibling temporary file, flush and fsync it, rename it over
//! the target, fsync the directory.
//!
//! A crash or an error at any point leaves either the previous file or the complete new one
//! under the target name, never a half-written file. On error the temporary file is removed
//! (also when the writer closure panics), and an existing target is untouched.

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{Error, Result};

/// Distinguishes temporary files of concurrent writes within one process.
static COUNTER: AtomicU64 = AtomicU64::new(0);

/// How many unique temporary names are tried before giving up.
const TEMP_ATTEMPTS: u32 = 64;

/// Writes `path` atomically with the bytes `write` produces; returns the number of bytes.
///
/// The temporary file is `.<name>.tmp-<pid>-<counter>` in the target's directory (so the
/// rename never crosses a file system), created exclusively. After `write` returns `Ok` the
/// data is flushed and fsynced, the file renamed over `path`, and the directory fsynced where
/// the platform allows (best effort: the rename has happened by then).
///
/// Errors name `path`; an error from `write` is reported as a failed `write`.
pub fn write_atomic<F>(path: impl AsRef<Path>, write: F) -> Result<u64>
where
    F: FnOnce(&mut dyn Write) -> io::Result<()>,
{
    let path = path.as_ref();
    let label = path.display().to_string();
    let Some(name) = path.file_name() else {
        return Err(Error::invalid(&label, "path", "has no file name"));
    };
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let (temp_path, file) = create_temp(dir, name, &label)?;
    let guard = TempGuard {
        path: Some(temp_path),
    };

    let mut counting = CountingWriter {
        inner: BufWriter::new(&file),
        count: 0,
    };
    write(&mut counting).map_err(|e| Error::io(&label, "write", e))?;
    counting
        .inner
        .flush()
        .map_err(|e| Error::io(&label, "write", e))?;
    let count = counting.count;
    drop(counting);
    file.sync_all().map_err(|e| Error::io(&label, "fsync", e))?;
    drop(file);

    let temp_path = guard.path.as_deref().unwrap_or(path);
    fs::rename(temp_path, path).map_err(|e| Error::io(&label, "rename", e))?;
    guard.disarm();
    sync_dir(dir);
    Ok(count)
}

/// [`write_atomic`] with a byte slice.
pub fn write_atomic_bytes(path: impl AsRef<Path>, bytes: &[u8]) -> Result<u64> {
    write_atomic(path, |w| w.write_all(bytes))
}

fn create_temp(dir: &Path, name: &std::ffi::OsStr, label: &str) -> Result<(PathBuf, File)> {
    let pid = std::process::id();
    let mut last_err = None;
    for _ in 0..TEMP_ATTEMPTS {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let mut temp_name = OsString::from(".");
        temp_name.push(name);
        temp_name.push(format!(".tmp-{pid}-{n}"));
        let temp_path = dir.join(temp_name);
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&temp_path)
        {
            Ok(file) => return Ok((temp_path, file)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last_err = Some(e),
            Err(e) => return Err(Error::io(label, "create temporary file", e)),
        }
    }
    Err(Error::io(
        label,
        "create temporary file",
        last_err.unwrap_or_else(|| io::Error::other("no unique temporary name")),
    ))
}

/// Fsyncs a directory so a rename in it is durable. Best effort: not every platform or file
/// system lets a directory be opened or synced.
fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Removes the temporary file on drop unless disarmed (error paths and panics).
struct TempGuard {
    path: Option<PathBuf>,
}

impl TempGuard {
    fn disarm(mut self) {
        self.path = None;
    }
}

impl Drop for TempGuard {
    fn drop(&mut self) {
        if let Some(p) = self.path.take() {
            let _ = fs::remove_file(p);
        }
    }
}

struct CountingWriter<W> {
    inner: W,
    count: u64,
}

impl<W: Write> Write for CountingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.count += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_and_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.bin");
        assert_eq!(write_atomic_bytes(&p, b"hello").unwrap(), 5);
        assert_eq!(fs::read(&p).unwrap(), b"hello");
        assert_eq!(write_atomic_bytes(&p, b"hi").unwrap(), 2);
        assert_eq!(fs::read(&p).unwrap(), b"hi");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn panicking_writer_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.bin");
        write_atomic_bytes(&p, b"old").unwrap();
        let r = std::panic::catch_unwind(|| {
            let _ = write_atomic(&p, |w| {
                w.write_all(b"partial")?;
                panic!("writer panics");
            });
        });
        assert!(r.is_err());
        assert_eq!(fs::read(&p).unwrap(), b"old");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
