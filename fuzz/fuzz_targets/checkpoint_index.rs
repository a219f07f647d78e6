//! The `model.safetensors.index.json` parser on arbitrary bytes: typed errors, never a
//! panic, never a shard name outside the checkpoint directory.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    skillzip_lm::fuzzing::check_index_bytes(data);
});
