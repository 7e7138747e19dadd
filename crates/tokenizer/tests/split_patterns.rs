//! The hand-written split matchers cut text exactly where fancy-regex, running the patterns
//! themselves, cuts it (the regex crate's classes: the same as Oniguruma's on these patterns, which
//! `families_reference.rs` checks against the `tokenizers` library).
use proptest::prelude::*;
use scratchllm_tokenizer::hf::split::{Splitter, GPT2_PATTERN, LLAMA3_PATTERN, QWEN2_PATTERN};

const ATOMS: &[&str] = &[
    "a", "Z", "é", "e\u{301}", "ß", "ſ", "K", "日本", " ", "  ", "\n", "\r\n", "\r", "\t",
    "\u{a0}", "\u{3000}", "\u{2028}", "\u{85}", "\u{1c}", "\u{b}", "\u{c}", "'", "'s", "'S", "'t",
    "'re", "'Re", "'ve", "'VE", "'m", "'ll", "'lL", "'d", "'ſ", "’s", "0", "42", "1234", "½", "٣",
    "Ⅻ", "!", "?", ".", "...", "(", "😀", "\u{301}", "ก", "ู", "-", "_", "<|", "|>", "▁",
    "\u{200d}", "\u{fffd}", "ǅ", "ʰ", "𝔘", "\0",
];

fn regex_matches(pattern: &str, text: &str) -> Vec<(usize, usize)> {
    static COMPILED: std::sync::Mutex<Vec<(String, fancy_regex::Regex)>> =
        std::sync::Mutex::new(Vec::new());
    let mut compiled = COMPILED.lock().unwrap();
    if !compiled.iter().any(|(p, _)| p == pattern) {
        compiled.push((
            pattern.to_string(),
            fancy_regex::Regex::new(pattern).unwrap(),
        ));
    }
    let re = &compiled.iter().find(|(p, _)| p == pattern).unwrap().1;
    re.find_iter(text)
        .map(|m| m.unwrap())
        .map(|m| (m.start(), m.end()))
        .collect()
}

fn text_of(parts: &[usize]) -> String {
    parts.iter().map(|&i| ATOMS[i % ATOMS.len()]).collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    #[test]
    fn hand_written_matchers_equal_the_regex(parts in prop::collection::vec(0usize..1000, 0..40)) {
        let text = text_of(&parts);
        for pattern in [LLAMA3_PATTERN, QWEN2_PATTERN, GPT2_PATTERN] {
            let hand = Splitter::new(pattern).unwrap();
            prop_assert!(hand.tiles());
            let got: Vec<(usize, usize)> = hand.matches(&text).collect();
            prop_assert_eq!(got, regex_matches(pattern, &text), "pattern {} text {:?}", pattern, text);
        }
    }
}

#[test]
fn other_patterns_run_on_the_regex_engine() {
    // GPT-4o's pattern has no hand-written matcher; it must still split as the regex does.
    let o200k = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    let s = Splitter::new(o200k).unwrap();
    assert!(!s.tiles());
    let text = "HelloWorld it's 12345 \n\n  x";
    let got: Vec<(usize, usize)> = s.matches(text).collect();
    assert_eq!(got, regex_matches(o200k, text));
}
