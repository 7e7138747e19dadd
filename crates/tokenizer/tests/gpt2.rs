//! GPT-2 BPE against tiktoken's ids (../shared/fixtures/tokenizer/gpt2-cases.json) and the
//! vocabulary files in ../shared/data/gpt2, in every format we read.
use scratchllm_testutil::{json_ids as ids, shared, shared_json, shared_text};
use scratchllm_tokenizer::{formats, gpt2, MergeRule, SpecialMode, Tokenizer, TokenizerError};

fn check_cases(tok: &Tokenizer, label: &str) {
    let Some(cases) = shared_json("fixtures/tokenizer/gpt2-cases.json") else {
        return;
    };
    let cases = cases["cases"].as_array().unwrap();
    assert!(cases.len() >= 10, "too few cases");
    for case in cases {
        let text = case["text"].as_str().unwrap();
        assert_eq!(
            tok.encode_ordinary(text),
            ids(&case["ordinary"]),
            "{label}: ordinary {text:?}"
        );
        assert_eq!(
            tok.encode(text, SpecialMode::Allow).unwrap(),
            ids(&case["allow_endoftext"]),
            "{label}: allow {text:?}"
        );
        assert_eq!(
            tok.decode(&ids(&case["ordinary"])).unwrap(),
            text,
            "{label}: decode {text:?}"
        );
    }
}

#[test]
fn bundled_gpt2_matches_tiktoken_cases() {
    check_cases(&gpt2().unwrap(), "bundled");
}

#[test]
fn every_vocabulary_format_matches_tiktoken_cases() {
    let Some(dir) = shared("data/gpt2") else {
        return;
    };
    let tiktoken = formats::load(&dir.join("r50k_base.tiktoken")).unwrap();
    assert_eq!(tiktoken.rule(), MergeRule::Ranks);
    check_cases(&tiktoken, "r50k_base.tiktoken");
    let openai = formats::load(&dir.join("encoder.json")).unwrap();
    assert_eq!(openai.rule(), MergeRule::MergeList);
    assert_eq!(openai.vocab_size(), 50257);
    check_cases(&openai, "encoder.json + vocab.bpe");
}

#[test]
fn the_verdict_is_5145_tokens_in_every_format() {
    let (Some(text), Some(dir)) = (shared_text("data/the-verdict.txt"), shared("data/gpt2")) else {
        return;
    };
    let bundled = gpt2().unwrap();
    let want = bundled.encode(&text, SpecialMode::Forbid).unwrap();
    assert_eq!(want.len(), 5145);
    assert_eq!(bundled.decode(&want).unwrap(), text);
    for f in ["r50k_base.tiktoken", "encoder.json"] {
        assert_eq!(
            formats::load(&dir.join(f)).unwrap().encode_ordinary(&text),
            want,
            "{f}"
        );
    }
}

#[test]
fn endoftext_is_refused_by_default_with_its_offset() {
    let tok = gpt2().unwrap();
    match tok.encode("Hello <|endoftext|>", SpecialMode::Forbid) {
        Err(TokenizerError::DisallowedSpecial { offset, id, .. }) => {
            assert_eq!((offset, id), (6, 50256))
        }
        other => panic!("expected a disallowed-special error, got {other:?}"),
    }
    assert_eq!(
        tok.encode("<|endoftext|>", SpecialMode::Allow).unwrap(),
        [50256]
    );
    assert_eq!(
        tok.encode("<|endoftext|>", SpecialMode::AsText).unwrap(),
        [27, 91, 437, 1659, 5239, 91, 29]
    );
}

#[test]
fn extends_the_vocabulary_with_new_special_tokens() {
    // The book's chapter 2 bonus: two new tokens after `<|endoftext|>`.
    let mut tok = gpt2().unwrap();
    assert_eq!(tok.add_special("MyNewToken_1").unwrap(), 50257);
    assert_eq!(tok.add_special("MyNewToken_2").unwrap(), 50258);
    let text = "MyNewToken_1 is a new token. <|endoftext|> MyNewToken_2 is another new token.";
    let ids = tok.encode(text, SpecialMode::Allow).unwrap();
    assert_eq!(
        ids,
        [50257, 318, 257, 649, 11241, 13, 220, 50256, 220, 50258, 318, 1194, 649, 11241, 13]
    );
    assert_eq!(tok.decode(&ids).unwrap(), text);
}

#[test]
fn specials_next_to_multibyte_text_and_overlapping_specials() {
    let mut tok = gpt2().unwrap();
    let long = tok.add_special("<|endoftext|>日").unwrap();
    let text = "é<|endoftext|>日本<|endoftext|>x<|endoftext|>";
    let ids = tok.encode(text, SpecialMode::Allow).unwrap();
    // The longer special wins where both start; the plain one is found after it.
    assert_eq!(ids.iter().filter(|&&i| i == long).count(), 1);
    assert_eq!(ids.iter().filter(|&&i| i == 50256).count(), 2);
    assert_eq!(tok.decode(&ids).unwrap(), text);
    match tok.encode("日本<|endoftext|>日", SpecialMode::Forbid) {
        Err(TokenizerError::DisallowedSpecial { offset, token, .. }) => {
            assert_eq!((offset, token.as_str()), (6, "<|endoftext|>日"))
        }
        other => panic!("{other:?}"),
    }
}
