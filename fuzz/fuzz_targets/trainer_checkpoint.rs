//! A training checkpoint's tensor file and `state.json` readers on arbitrary bytes: typed
//! errors, never a panic, never a tensor of the wrong size.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    skillzip_harness::fuzzing::check_trainer_checkpoint_bytes(data);
});
