//! Any UTF-8 text: GPT-2 encoding never panics and decoding gives the text back, in all three
//! special-token modes; the heap and flat merge paths agree.
#![no_main]
use libfuzzer_sys::fuzz_target;
use scratchllm_tokenizer::merge::{merge_flat, merge_heap};
use scratchllm_tokenizer::{gpt2_shared, SpecialMode};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let tok = gpt2_shared().expect("bundled vocabulary");
    let ids = tok.encode_ordinary(text);
    assert_eq!(tok.decode(&ids).expect("own ids"), text);
    if let Ok(ids) = tok.encode(text, SpecialMode::Allow) {
        assert_eq!(tok.decode(&ids).expect("own ids"), text);
    }
    let _ = tok.encode(text, SpecialMode::Forbid);
    let bytes: Vec<u32> = data.iter().map(|&b| tok.byte_token(b)).collect();
    let (mut a, mut b) = (bytes.clone(), bytes);
    merge_flat(&mut a, tok.merge_table());
    merge_heap(&mut b, tok.merge_table());
    assert_eq!(a, b);
});
