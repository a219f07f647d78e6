//! Byte-driven checks run by the `skillpack_reader` and `manifest_parser` fuzz targets and
//! replayed over their corpora by `tests/fuzz_corpus.rs`. Each panics when an invariant
//! breaks; a typed error on hostile bytes is the expected outcome, not a failure.

use crate::bundle::parse_manifest;
use crate::error::Error;
use crate::peft::{PeftOptions, adapter_files};
use crate::skillpack::{self, parse_skillpack, to_bytes};

/// Parses arbitrary bytes as a skillpack. Invariants:
///
/// - no panic;
/// - a checked parse that succeeds agrees with the parse that skips the checksum (which lets
///   the fuzzer reach the validation behind the checksum);
/// - whatever parses (with or without the checksum) serializes again, and the bytes parse,
///   checksum included, to an equal value;
/// - its summary and its PEFT export work (the export may only fail for a skillpack without
///   layers, or with a typed `NonFinite` where a dequantized factor overflows f32).
pub fn check_skillpack_bytes(data: &[u8]) {
    let checked = parse_skillpack(data, "fuzz");
    let unchecked = skillpack::parse(data, "fuzz", false);
    if let Ok(pack) = &checked {
        match &unchecked {
            Ok(u) => assert_eq!(u, pack, "checked and unchecked parses differ"),
            Err(e) => panic!("checked parse succeeded, unchecked failed: {e}"),
        }
    }
    let Ok(pack) = unchecked else { return };
    let bytes =
        to_bytes(&pack).unwrap_or_else(|e| panic!("parsed skillpack does not serialize: {e}"));
    let again = parse_skillpack(&bytes, "fuzz-reserialized")
        .unwrap_or_else(|e| panic!("re-serialized skillpack does not parse: {e}"));
    assert_eq!(again, pack, "round trip changed the skillpack");
    // Canonical bytes are a fixed point.
    assert_eq!(to_bytes(&again).ok().as_deref(), Some(bytes.as_slice()));
    let summary = pack.summary();
    assert_eq!(summary.layers.len(), pack.layers.len());
    let _ = summary.to_string();
    match adapter_files(&pack, &PeftOptions::default()) {
        Ok(files) => assert_eq!(files.report.ranks.len(), pack.layers.len()),
        Err(e) => assert!(
            pack.layers.is_empty() || matches!(e, Error::NonFinite { .. }),
            "PEFT export failed: {e}"
        ),
    }
}

/// Parses arbitrary bytes as a bundle manifest. Invariants: no panic; a manifest that parses
/// serializes, and its JSON parses to an equal manifest.
pub fn check_manifest_bytes(data: &[u8]) {
    let Ok(m) = parse_manifest(data, "fuzz") else {
        return;
    };
    let json = m
        .to_json()
        .unwrap_or_else(|e| panic!("parsed manifest does not serialize: {e}"));
    let again = parse_manifest(&json, "fuzz-reserialized")
        .unwrap_or_else(|e| panic!("re-serialized manifest does not parse: {e}"));
    assert_eq!(again, m, "round trip changed the manifest");
}
