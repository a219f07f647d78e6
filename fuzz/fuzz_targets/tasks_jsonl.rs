//! The JSONL task reader on arbitrary bytes: typed errors naming a real line, never a panic;
//! whatever parses is valid and round-trips.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    skillzip_tasks::fuzzing::check_jsonl_bytes(data);
});
