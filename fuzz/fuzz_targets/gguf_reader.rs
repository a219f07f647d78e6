//! The GGUF reader (and the configuration / tokenizer built from its metadata) on arbitrary
//! bytes: typed errors, never a panic, never an allocation the bytes do not justify.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    skillzip_lm::fuzzing::check_gguf_bytes(data);
});
