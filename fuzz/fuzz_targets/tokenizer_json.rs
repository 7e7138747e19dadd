//! `tokenizer.json` pipelines assembled from the fuzzer's bytes: every normalizer, pre-tokenizer,
//! decoder and post-processor we read (and some we do not, and some malformed), a byte-level or
//! character-level BPE with random merges, added tokens with random flags. Loading gives an error
//! or a tokenizer; a tokenizer encodes any text in every special-token mode and decodes what it
//! made, never panicking.
#![no_main]
use libfuzzer_sys::fuzz_target;
use scratchllm_tokenizer::{formats, SpecialMode};
use serde_json::{json, Value};

/// Reads choices from the fuzzer's bytes (zeros once they run out).
struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn byte(&mut self) -> u8 {
        let (b, rest) = self.0.split_first().unwrap_or((&0, &[]));
        self.0 = rest;
        *b
    }
    fn pick<'b, T>(&mut self, items: &'b [T]) -> &'b T {
        &items[self.byte() as usize % items.len()]
    }
    fn flag(&mut self) -> bool {
        self.byte() & 1 == 1
    }
    fn text(&mut self, max: usize) -> String {
        let n = (self.byte() as usize % (max + 1)).min(self.0.len());
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        String::from_utf8_lossy(head).into_owned()
    }
}

const PATTERNS: &[&str] = &[
    " ", "▁", "", "a", r"\s+", r"\p{L}+|\p{N}{1,3}", r"(?i:'s|'t)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+", "(", r"(a)\1", r"x*",
];
const BEHAVIORS: &[&str] = &["Removed", "Isolated", "MergedWithPrevious", "MergedWithNext", "Contiguous", "Bogus"];
const CHARS: &[&str] = &["a", "b", "é", "▁", " ", "\n", "日", "<", ">", "0", "1"];

fn pattern(b: &mut Bytes) -> Value {
    let p = if b.byte() % 8 == 0 { b.text(8) } else { b.pick(PATTERNS).to_string() };
    match b.byte() % 4 {
        0 => json!({"String": p}),
        1 => json!({"Regex": p}),
        2 => json!(p),
        _ => json!({"Regex": p, "String": p}),
    }
}

fn normalizer(b: &mut Bytes, depth: u32) -> Value {
    match b.byte() % 11 {
        0 => Value::Null,
        1 => json!({"type": "NFC"}),
        2 => json!({"type": "NFKC"}),
        3 => json!({"type": "NFD"}),
        4 => json!({"type": "Lowercase"}),
        5 => json!({"type": "Replace", "pattern": pattern(b), "content": b.text(3)}),
        6 => json!({"type": "Prepend", "prepend": b.text(3)}),
        7 => json!({"type": "Strip", "strip_left": b.flag(), "strip_right": b.flag()}),
        8 if depth < 2 => json!({"type": "Sequence", "normalizers": [normalizer(b, depth + 1), normalizer(b, depth + 1)]}),
        9 => json!({"type": "BertNormalizer"}),
        _ => json!({"type": b.text(6)}),
    }
}

fn pre_tokenizer(b: &mut Bytes, depth: u32) -> Value {
    match b.byte() % 7 {
        0 => Value::Null,
        1 => json!({"type": "ByteLevel", "add_prefix_space": b.flag(), "trim_offsets": b.flag(), "use_regex": b.flag()}),
        2 => json!({"type": "Split", "pattern": pattern(b), "behavior": b.pick(BEHAVIORS), "invert": b.flag()}),
        3 => {
            let scheme = b.pick(&["always", "first", "never", "sometimes"]).to_string();
            json!({"type": "Metaspace", "replacement": b.pick(&["▁", "_", "ab"]), "prepend_scheme": scheme, "split": b.flag()})
        }
        4 if depth < 2 => json!({"type": "Sequence", "pretokenizers": [pre_tokenizer(b, depth + 1), pre_tokenizer(b, depth + 1)]}),
        5 => json!({"type": "Whitespace"}),
        _ => json!({"type": "Split"}),
    }
}

fn decoder(b: &mut Bytes, depth: u32) -> Value {
    match b.byte() % 9 {
        0 => Value::Null,
        1 => json!({"type": "ByteLevel"}),
        2 => json!({"type": "Replace", "pattern": pattern(b), "content": b.text(2)}),
        3 => json!({"type": "ByteFallback"}),
        4 => json!({"type": "Fuse"}),
        5 => json!({"type": "Strip", "content": b.pick(&[" ", "▁", "xy"]), "start": b.byte() % 3, "stop": b.byte() % 3}),
        6 => json!({"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always", "split": true}),
        7 if depth < 2 => json!({"type": "Sequence", "decoders": [decoder(b, depth + 1), decoder(b, depth + 1)]}),
        _ => json!({"type": "WordPiece"}),
    }
}

fn post(b: &mut Bytes, n: usize) -> Value {
    let id = b.byte() as usize % (n + 3);
    match b.byte() % 5 {
        0 => Value::Null,
        1 => json!({"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true}),
        2 => json!({"type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [], "special_tokens": {"<s>": {"id": "<s>", "ids": [id], "tokens": ["<s>"]}}}),
        3 => json!({"type": "TemplateProcessing", "single": [{"Sequence": {"id": "B", "type_id": 0}}], "special_tokens": {}}),
        _ => json!({"type": "RobertaProcessing"}),
    }
}

/// A vocabulary and merges: bytes in GPT-2's alphabet, or a few characters with `<0x..>` tokens.
fn model(b: &mut Bytes, byte_level: bool) -> (Value, usize) {
    let mut tokens: Vec<String> = if byte_level {
        (0..=255u8).map(|x| scratchllm_tokenizer::bytes_unicode::encode(&[x])).collect()
    } else {
        let mut t: Vec<String> = CHARS.iter().map(|s| s.to_string()).collect();
        t.extend((0..=255u8).filter(|_| b.flag()).map(|x| format!("<0x{x:02X}>")));
        t.push("<unk>".into());
        t
    };
    let mut merges = Vec::new();
    for _ in 0..b.byte() % 24 {
        let (a, c) = (b.byte() as usize % tokens.len(), b.byte() as usize % tokens.len());
        let joined = format!("{}{}", tokens[a], tokens[c]);
        if !tokens.contains(&joined) {
            tokens.push(joined);
        }
        merges.push(json!([tokens[a], tokens[c]]));
    }
    let vocab: serde_json::Map<String, Value> = tokens.iter().enumerate().map(|(i, t)| (t.clone(), json!(i))).collect();
    let unk = if byte_level || b.flag() { Value::Null } else { json!("<unk>") };
    let m = json!({"type": if b.byte() == 7 { "Unigram" } else { "BPE" }, "vocab": vocab, "merges": merges,
        "unk_token": unk, "fuse_unk": b.flag(), "byte_fallback": b.flag(), "ignore_merges": b.flag(), "dropout": null});
    (m, tokens.len())
}

fuzz_target!(|data: &[u8]| {
    let mut b = Bytes(data);
    let pre = pre_tokenizer(&mut b, 0);
    let byte_level = pre.to_string().contains("ByteLevel");
    let (model, n) = model(&mut b, byte_level);
    let added: Vec<Value> = (0..b.byte() % 4)
        .map(|i| {
            json!({"id": n + i as usize, "content": b.pick(&["<s>", "</s>", "<|x|>", "ab", " ", "é"]), "special": b.flag(),
                "normalized": b.flag(), "lstrip": b.flag(), "rstrip": b.flag(), "single_word": b.flag()})
        })
        .collect();
    let doc = json!({"version": "1.0", "truncation": null, "padding": null, "added_tokens": added,
        "normalizer": normalizer(&mut b, 0), "pre_tokenizer": pre, "post_processor": post(&mut b, n),
        "decoder": decoder(&mut b, 0), "model": model});
    let text = b.text(200);
    let dir = std::env::temp_dir().join(format!("scratchllm-fuzz-tj-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join("tokenizer.json");
    if std::fs::write(&path, doc.to_string()).is_err() {
        return;
    }
    if let Ok(tok) = formats::load(&path) {
        for mode in [SpecialMode::Allow, SpecialMode::AsText, SpecialMode::Forbid] {
            if let Ok(ids) = tok.encode(&text, mode) {
                let _ = tok.decode(&ids);
                let ids = tok.with_special_tokens(ids);
                let _ = tok.decode_with(&ids, true);
            }
        }
        let _ = formats::save_hf_tokenizer_json(&tok, &dir.join("again.json"));
    }
});
