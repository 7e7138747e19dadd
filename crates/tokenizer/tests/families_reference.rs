//! Differential tests of the Llama 3, Qwen3 and Gemma 3 tokenizer files against the `tokenizers`
//! library itself, on thousands of generated strings built from the characters that trip
//! pipelines up: contractions in any case (and `ſ`), digit runs, every kind of whitespace and line
//! break, combining marks that NFC composes, emoji sequences, special and added tokens whole and
//! cut, SentencePiece's `▁` and `<0x..>` spelled out, and long runs.
//!
//! They need `$SCRATCHLLM_PYTHON` (a Python with `tokenizers`, made by `scripts/test.sh`) and the
//! tokenizer files; without them they skip, except under `CI=true`, where they fail.
mod family_files;

use family_files::{family_dir, FAMILIES};
use scratchllm_testutil::json_ids;
use scratchllm_tokenizer::{load, SpecialMode};
use std::path::{Path, PathBuf};
use std::process::Command;

fn python() -> Option<String> {
    match std::env::var("SCRATCHLLM_PYTHON") {
        Ok(p) => Some(p),
        Err(_) if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!(
                "SCRATCHLLM_PYTHON is not set; scripts/test.sh sets it to a Python with tokenizers"
            )
        }
        Err(_) => {
            eprintln!("SKIPPED: set SCRATCHLLM_PYTHON to a Python with tokenizers to run");
            None
        }
    }
}

/// `{ids, ids_with_special, decoded}` of each text from the `tokenizers` library.
fn reference(
    py: &str,
    tokenizer_json: &Path,
    texts: &[String],
    dir: &Path,
) -> Vec<serde_json::Value> {
    let script =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/reference_tokenizers.py");
    let (src, dst) = (dir.join("in.json"), dir.join("out.json"));
    std::fs::write(&src, serde_json::to_string(texts).unwrap()).unwrap();
    let status = Command::new(py)
        .arg(script)
        .args([
            "hf-full".as_ref(),
            tokenizer_json.as_os_str(),
            src.as_os_str(),
            dst.as_os_str(),
        ])
        .status()
        .unwrap();
    assert!(status.success(), "reference script failed");
    serde_json::from_str(&std::fs::read_to_string(&dst).unwrap()).unwrap()
}

const ATOMS: &[&str] = &[
    "a",
    "Z",
    "é",
    "e\u{301}",
    "A\u{30a}",
    "\u{1100}\u{1161}",
    "ß",
    "ſ",
    "K",
    "İ",
    "ﬆ",
    "日本",
    "語",
    "x",
    " ",
    "  ",
    "   ",
    "\n",
    "\r\n",
    "\r",
    "\n\n",
    "\t",
    "\u{a0}",
    "\u{3000}",
    "\u{2028}",
    "\u{85}",
    "\u{1c}",
    "\u{b}",
    "'",
    "'s",
    "'S",
    "'t",
    "'re",
    "'RE",
    "'ve",
    "'m",
    "'ll",
    "'LL",
    "'d",
    "'ſ",
    "’s",
    "0",
    "42",
    "123456",
    "½",
    "٣",
    "Ⅻ",
    "!",
    "?",
    ".",
    ",",
    "--",
    "...",
    "(",
    "{",
    "$",
    "€",
    "😀",
    "👍🏽",
    "👨\u{200d}👩\u{200d}👧",
    "\u{301}",
    "ก",
    "ู",
    "\u{93c}",
    "-",
    "_",
    "<|im_start|>",
    "<|im_end|>",
    "<|eot_id|>",
    "<|begin_of_text|>",
    "<start_of_turn>",
    "<end_of_turn>",
    "<bos>",
    "<eos>",
    "<think>",
    "</think>",
    "<tool_call>",
    "<|",
    "|>",
    "<",
    ">",
    "▁",
    "▁▁",
    "<0x41>",
    "<unk>",
    "Hello",
    " world",
    "don't",
    "I'm",
    "\u{fffd}",
    "\u{10ffff}",
    "\u{e000}",
    "\u{200b}",
    "\u{feff}",
    "ǅ",
    "ʰ",
    "〃",
    "𝔘",
    "\0",
    "\u{7f}",
    "Привет",
    "مرحبا",
    "नमस्ते",
    "ﷺ",
    "\u{fb01}",
];

/// Deterministic strings of atoms (xorshift), plus long runs.
fn noise(n: usize, seed: u64) -> Vec<String> {
    let mut state = seed;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut out: Vec<String> = (0..n)
        .map(|_| {
            let len = (next() % 24) as usize;
            (0..len)
                .map(|_| ATOMS[(next() % ATOMS.len() as u64) as usize])
                .collect()
        })
        .collect();
    out.extend([
        "a".repeat(20_000),
        " ".repeat(5_000),
        "xyzzy ".repeat(3_000),
        "日本語のテキスト".repeat(2_000),
        "\n\n  ".repeat(2_000),
        "1234567890".repeat(500),
    ]);
    out
}

#[test]
fn generated_strings_match_the_tokenizers_library() {
    let Some(py) = python() else { return };
    for (k, family) in FAMILIES.iter().enumerate() {
        let Some(dir) = family_dir(family) else {
            return;
        };
        let tok = load(dir.to_str().unwrap()).unwrap();
        let texts = noise(3000, 0x5eed + k as u64);
        let tmp = tempfile::tempdir().unwrap();
        let want = reference(&py, &dir.join("tokenizer.json"), &texts, tmp.path());
        for (text, want) in texts.iter().zip(&want) {
            let ids = tok.encode(text, SpecialMode::Allow).unwrap();
            assert_eq!(ids, json_ids(&want["ids"]), "{family}: {text:?}");
            assert_eq!(
                tok.with_special_tokens(ids.clone()),
                json_ids(&want["ids_with_special"]),
                "{family}: {text:?}"
            );
            assert_eq!(
                tok.decode(&ids).unwrap(),
                want["decoded"].as_str().unwrap(),
                "{family}: {text:?}"
            );
        }
    }
}
