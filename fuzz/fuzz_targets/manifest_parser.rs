//! The bundle manifest parser on arbitrary bytes: typed errors, never a panic; whatever
//! parses re-serializes to an equal manifest.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    skillzip_format::fuzzing::check_manifest_bytes(data);
});
