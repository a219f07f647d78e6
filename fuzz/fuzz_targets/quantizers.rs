//! Quantize / dequantize / INT4 pack / truncation on arbitrary bytes.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    skillzip_core::invariants::check_quantizers(data);
});
