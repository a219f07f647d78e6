//! Shared by each crate's `tests/fuzz_corpus.rs` (included with `#[path]`): replaying a fuzz
//! target's corpus through its invariant check, and keeping generated `seed-*` files current.

use std::path::{Path, PathBuf};

/// `fuzz/corpus/<target>` of the workspace holding the crate at `manifest_dir`.
pub fn corpus(manifest_dir: &str, target: &str) -> PathBuf {
    let root = Path::new(manifest_dir)
        .ancestors()
        .find(|dir| dir.join("fuzz/corpus_support.rs").exists())
        .unwrap_or_else(|| panic!("no fuzz/ directory above {manifest_dir}"));
    root.join("fuzz/corpus").join(target)
}

/// Runs `check` on every file of the target's corpus (naming each, so a failure shows which)
/// and returns how many there were; an empty corpus fails.
pub fn replay(manifest_dir: &str, target: &str, check: fn(&[u8])) -> usize {
    let dir = corpus(manifest_dir, target);
    let mut count = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        eprintln!("replaying {}", path.display());
        check(&data);
        count += 1;
    }
    assert!(count > 0, "no corpus files in {}", dir.display());
    count
}

/// Asserts each generated seed equals its file in the target's corpus; with
/// `SKILLZIP_WRITE_SEEDS=1` in the environment, writes them instead.
#[allow(dead_code)]
pub fn check_seeds<N: AsRef<Path>>(manifest_dir: &str, target: &str, seeds: Vec<(N, Vec<u8>)>) {
    let write = std::env::var_os("SKILLZIP_WRITE_SEEDS").is_some();
    let dir = corpus(manifest_dir, target);
    std::fs::create_dir_all(&dir).unwrap();
    for (name, bytes) in seeds {
        let path = dir.join(name);
        if write {
            std::fs::write(&path, &bytes).unwrap();
        } else {
            let on_disk =
                std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert!(
                on_disk == bytes,
                "{} is stale: regenerate with SKILLZIP_WRITE_SEEDS=1",
                path.display()
            );
        }
    }
}
