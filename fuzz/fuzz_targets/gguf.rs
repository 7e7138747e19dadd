//! Arbitrary bytes as a GGUF file: an error, or a header whose every tensor reads back at its size
//! (the parser checked it lies in the file) and whose every value goes through the typed getters;
//! a header that parses is also loaded as a model, which gives an error or a model. Never a panic,
//! nor an allocation the file does not back.
#![no_main]
use libfuzzer_sys::fuzz_target;
use scratchllm_model::gguf::GgufFile;

fuzz_target!(|data: &[u8]| {
    let Ok(file) = GgufFile::from_bytes("fuzz.gguf", data.to_vec()) else {
        return;
    };
    for (key, value) in file.metadata() {
        let _ = value.describe();
        assert!(
            file.get(key).is_some_and(|v| std::ptr::eq(v, value)),
            "{key:?} not indexed"
        );
        let _ = (
            file.get_str(key),
            file.get_u64(key),
            file.get_f32(key),
            file.get_bool(key),
        );
        let _ = (file.get_str_array(key), file.get_f32_array(key));
        let _ = (file.get_i32_array(key), file.get_u32_array(key));
    }
    for t in file.tensors() {
        let bytes = file
            .read_tensor(t)
            .expect("a parsed tensor lies in the file");
        assert_eq!(bytes.len() as u64, t.size, "{}", t.name);
    }
    // The model loader reads a path; only headers that parse are worth the file.
    let path =
        std::env::temp_dir().join(format!("scratchllm-fuzz-gguf-{}.gguf", std::process::id()));
    if std::fs::write(&path, data).is_ok() {
        let _ = scratchllm_model::modeldir::gguf::load_gguf(&path, &candle_core::Device::Cpu);
    }
});
