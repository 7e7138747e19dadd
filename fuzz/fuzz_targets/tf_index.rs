//! Arbitrary bytes as a TensorFlow checkpoint index: an error or entries, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = scratchllm_model::tf::parse_index(data);
});
