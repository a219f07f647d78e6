//! The fast CPU kernels against the reference runtime, on every available instruction-set path.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    skillzip_core::invariants::check_kernels(data);
});
