//! Arbitrary bytes as each vocabulary format: loading returns an error or a tokenizer, never panics,
//! and a tokenizer that loads can encode and decode.
#![no_main]
use libfuzzer_sys::fuzz_target;
use scratchllm_tokenizer::formats;

fuzz_target!(|data: &[u8]| {
    let dir = std::env::temp_dir().join(format!("scratchllm-fuzz-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let (selector, body) = data.split_first().unwrap_or((&0, &[]));
    let files: &[&str] = match selector % 5 {
        0 => &["x.tiktoken"],
        1 => &["tokenizer.json"],
        2 => &["scratchllm-tokenizer.json"],
        3 => &["vocab.json", "merges.txt"],
        _ => &["encoder.json", "vocab.bpe"],
    };
    // Two-file formats: split the input at the first NUL.
    let mut parts = body.splitn(2, |&b| b == 0);
    for f in files {
        let _ = std::fs::write(dir.join(f), parts.next().unwrap_or_default());
    }
    if let Ok(tok) = formats::load(&dir.join(files[0])) {
        let ids = tok.encode_ordinary("Hello, world! 😀 'll  \n");
        let _ = tok.decode(&ids);
    }
    for f in files {
        let _ = std::fs::remove_file(dir.join(f));
    }
});
