//! Arbitrary id sequences: decoding reports unknown ids instead of panicking, and the streaming
//! decoder releases exactly the lossy decoding of the whole sequence.
#![no_main]
use libfuzzer_sys::fuzz_target;
use scratchllm_tokenizer::{gpt2_shared, StreamDecoder};

fuzz_target!(|data: &[u8]| {
    let tok = gpt2_shared().expect("bundled vocabulary");
    let ids: Vec<u32> = data.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]]) as u32).collect();
    let whole = tok.decode(&ids);
    let mut dec = StreamDecoder::new(tok);
    let mut streamed = String::new();
    for &id in &ids {
        match dec.push(id) {
            Ok(s) => streamed.push_str(&s),
            Err(_) => {
                assert!(whole.is_err());
                return;
            }
        }
    }
    streamed.push_str(&dec.finish());
    assert_eq!(whole.expect("all ids known"), streamed);
});
