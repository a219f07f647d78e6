//! Damaged skillpack files: every truncation, every header bit flip, data bit flips,
//! appended and enlarged files give a typed error (never a panic, never `Ok`); failed writes
//! leave the previous file intact.

mod common;

use common::small_pack;
use skillzip_format::{
    Error, parse_skillpack, read_skillpack, to_bytes, write_atomic, write_skillpack,
};

fn file() -> Vec<u8> {
    to_bytes(&small_pack()).unwrap()
}

fn header_end(bytes: &[u8]) -> usize {
    8 + u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize
}

#[test]
fn every_truncation_is_a_typed_error() {
    let bytes = file();
    assert!(bytes.len() < 16 * 1024, "fixture grew: {}", bytes.len());
    for len in 0..bytes.len() {
        match parse_skillpack(&bytes[..len], "cut") {
            Ok(_) => panic!("truncation to {len} bytes parsed"),
            Err(e) => {
                assert_eq!(e.file(), "cut");
                assert!(
                    matches!(e, Error::Container { .. } | Error::Length { .. }),
                    "len {len}: {e}"
                );
            }
        }
    }
}

#[test]
fn every_header_bit_flip_is_a_typed_error() {
    let bytes = file();
    let end = header_end(&bytes);
    let mut copy = bytes.clone();
    let mut kinds = std::collections::BTreeMap::<String, usize>::new();
    for bit in 0..end * 8 {
        copy[bit / 8] ^= 1 << (bit % 8);
        match parse_skillpack(&copy, "flip") {
            Ok(_) => panic!(
                "flip of bit {} of byte {} ({:?}) parsed",
                bit % 8,
                bit / 8,
                copy[bit / 8] as char
            ),
            Err(e) => {
                assert_eq!(e.file(), "flip");
                let kind = format!("{e:?}");
                let kind = kind.split([' ', '{', '(']).next().unwrap().to_string();
                *kinds.entry(kind).or_default() += 1;
            }
        }
        copy[bit / 8] ^= 1 << (bit % 8);
    }
    assert_eq!(copy, bytes);
    // The sweep reaches more than the JSON parser.
    for kind in ["Container", "ChecksumMismatch", "TooLarge"] {
        assert!(kinds.contains_key(kind), "{kinds:?}");
    }
}

#[test]
fn data_bit_flips_are_caught_by_the_checksum() {
    let bytes = file();
    let start = header_end(&bytes);
    let mut copy = bytes.clone();
    // Every bit of the (small) data section.
    for bit in start * 8..bytes.len() * 8 {
        copy[bit / 8] ^= 1 << (bit % 8);
        match parse_skillpack(&copy, "flip") {
            Ok(_) => panic!("flip of data bit {bit} parsed"),
            Err(e) => assert!(
                matches!(e, Error::ChecksumMismatch { .. }),
                "bit {bit}: {e}"
            ),
        }
        copy[bit / 8] ^= 1 << (bit % 8);
    }
}

#[test]
fn appended_and_enlarged_files_are_rejected() {
    let bytes = file();
    for extra in [1usize, 2, 7, 8, 64, 4096] {
        for fill in [0u8, b' ', 0xff] {
            let mut b = bytes.clone();
            b.extend(std::iter::repeat_n(fill, extra));
            let e = parse_skillpack(&b, "grown").unwrap_err();
            assert!(
                matches!(e, Error::Container { .. } | Error::Length { .. }),
                "{e}"
            );
        }
    }
    // A header length that claims more than the file holds.
    let mut b = bytes.clone();
    let n = u64::from_le_bytes(b[..8].try_into().unwrap());
    b[..8].copy_from_slice(&(n + 8).to_le_bytes());
    assert!(parse_skillpack(&b, "grown").is_err());
    // Two skillpacks back to back.
    let mut b = bytes.clone();
    b.extend_from_slice(&bytes);
    assert!(parse_skillpack(&b, "grown").is_err());
    // The same through the file reader, which names the path.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("grown.safetensors");
    let mut b = bytes.clone();
    b.push(0);
    std::fs::write(&path, &b).unwrap();
    let e = read_skillpack(&path).unwrap_err();
    assert_eq!(e.file(), path.display().to_string());
}

#[test]
fn failed_writes_leave_the_previous_file_intact() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("math.safetensors");
    let pack = small_pack();
    write_skillpack(&path, &pack).unwrap();
    let before = std::fs::read(&path).unwrap();

    // A writer that fails halfway.
    let e = write_atomic(&path, |w| {
        w.write_all(&before[..before.len() / 2])?;
        Err(std::io::Error::other("disk full"))
    })
    .unwrap_err();
    assert!(matches!(e, Error::Io { op: "write", .. }), "{e}");
    assert_eq!(e.file(), path.display().to_string());
    assert_eq!(std::fs::read(&path).unwrap(), before);
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("math.safetensors")]);

    // An invalid skillpack is refused before anything is written.
    let mut bad = pack.clone();
    bad.meta.skill.clear();
    assert!(write_skillpack(&path, &bad).is_err());
    assert_eq!(std::fs::read(&path).unwrap(), before);

    // A target directory that no longer exists.
    let gone = dir.path().join("gone");
    std::fs::create_dir(&gone).unwrap();
    std::fs::remove_dir(&gone).unwrap();
    let e = write_skillpack(gone.join("x.safetensors"), &pack).unwrap_err();
    assert!(matches!(e, Error::Io { .. }), "{e}");
    assert!(!gone.exists());

    // A target that is a directory: the rename fails, the temp file is removed.
    let target_dir = dir.path().join("occupied");
    std::fs::create_dir(&target_dir).unwrap();
    std::fs::write(target_dir.join("keep"), b"x").unwrap();
    let e = write_skillpack(&target_dir, &pack).unwrap_err();
    assert!(matches!(e, Error::Io { op: "rename", .. }), "{e}");
    assert!(target_dir.join("keep").exists());
    let mut names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, vec!["math.safetensors", "occupied"]);
    assert_eq!(read_skillpack(&path).unwrap(), pack);
}
