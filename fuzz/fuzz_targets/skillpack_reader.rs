//! The skillpack reader on arbitrary bytes: typed errors, never a panic; whatever parses
//! re-serializes to an equal skillpack.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    skillzip_format::fuzzing::check_skillpack_bytes(data);
});
