//! The reference runtime on arbitrary layers and activations.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    skillzip_core::invariants::check_runtime(data);
});
