//! A request body for `/v1/completions` and `/v1/chat/completions` on arbitrary bytes: a typed
//! 4xx error with a JSON body, never a panic; a parsed request has every field in range.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    serve_min::fuzzing::check_request_bytes(data);
});
