//! Properties of the tokenizers that must hold for every input.
use proptest::prelude::*;
use scratchllm_tokenizer::merge::{merge_flat, merge_heap};
use scratchllm_tokenizer::pretokenize::pieces;
use scratchllm_tokenizer::{gpt2_shared, SpecialMode, StreamDecoder};

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn decode_inverts_encode(text in any::<String>()) {
        let tok = gpt2_shared().unwrap();
        let ids = tok.encode(&text, SpecialMode::AsText).unwrap();
        prop_assert_eq!(tok.decode(&ids).unwrap(), text);
    }

    #[test]
    fn pieces_tile_the_text(text in any::<String>()) {
        let joined: String = pieces(&text).collect();
        prop_assert_eq!(joined, text.clone());
        prop_assert!(pieces(&text).all(|p| !p.is_empty()));
    }

    #[test]
    fn stream_decoding_equals_whole_decoding(text in any::<String>()) {
        let tok = gpt2_shared().unwrap();
        let ids = tok.encode_ordinary(&text);
        let mut dec = StreamDecoder::new(tok);
        let mut streamed = String::new();
        for &id in &ids {
            let part = dec.push(id).unwrap();
            // Nothing released may end inside a character: it is a whole `String`.
            streamed.push_str(&part);
        }
        streamed.push_str(&dec.finish());
        prop_assert_eq!(streamed, text);
    }

    #[test]
    fn heap_merge_agrees_with_the_plain_merge(text in "[a-e ]{0,400}|[\\PC]{0,300}") {
        let tok = gpt2_shared().unwrap();
        let bytes: Vec<u32> = text.bytes().map(|b| tok.byte_token(b)).collect();
        let (mut flat, mut heap) = (bytes.clone(), bytes);
        merge_flat(&mut flat, tok.merge_table());
        merge_heap(&mut heap, tok.merge_table());
        prop_assert_eq!(flat, heap);
    }
}

#[test]
fn stream_decoder_holds_back_a_split_character() {
    let tok = gpt2_shared().unwrap();
    // "😀" is the bytes f0 9f 98 80; GPT-2 encodes it as two tokens that split the character.
    let ids = tok.encode_ordinary("😀");
    assert!(
        ids.len() > 1,
        "expected the emoji to span tokens, got {ids:?}"
    );
    let mut dec = StreamDecoder::new(tok);
    assert_eq!(dec.push(ids[0]).unwrap(), "");
    let rest: String = ids[1..].iter().map(|&i| dec.push(i).unwrap()).collect();
    assert_eq!(rest, "😀");
    // A byte that can never start a character is released as U+FFFD at once.
    let mut dec = StreamDecoder::new(tok);
    assert_eq!(dec.push(tok.byte_token(0x80)).unwrap(), "\u{fffd}");
    assert_eq!(dec.push(tok.byte_token(0xe6)).unwrap(), "");
    assert_eq!(dec.finish(), "\u{fffd}");
}

#[test]
fn long_words_and_whitespace_runs_round_trip() {
    // Pieces this long take the O(n log n) heap path; the quadratic one would take minutes. Their
    // ids are checked against tiktoken in tests/reference.rs.
    let tok = gpt2_shared().unwrap();
    for text in [
        "a".repeat(100_000),
        " ".repeat(100_000),
        "ab1 ".repeat(25_000),
        "日".repeat(50_000),
    ] {
        let ids = tok.encode_ordinary(&text);
        assert_eq!(tok.decode(&ids).unwrap(), text);
    }
}
