//! Arbitrary bytes as a model.safetensors: reading gives an error or tensors, never a panic or an
//! allocation the header asked for without the bytes to back it.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = std::env::temp_dir().join(format!("scratchllm-fuzz-st-{}.safetensors", std::process::id()));
    if std::fs::write(&path, data).is_ok() {
        let _ = scratchllm_model::weights::read_safetensors(&path, &candle_core::Device::Cpu);
    }
});
