//! A router file (`Router::from_json_bytes`) on arbitrary bytes: typed errors, never a panic;
//! a parsed router is valid, round-trips, and gives finite probabilities summing to 1.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    skillzip_harness::fuzzing::check_router_bytes(data);
});
