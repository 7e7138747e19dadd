//! Differential tests against the reference libraries themselves: tiktoken for GPT-2 on thousands
//! of generated strings, and Hugging Face `tokenizers` loading our trained `tokenizer.json`.
//!
//! They need a Python with `tiktoken` and `tokenizers`, named by `$SCRATCHLLM_PYTHON` (`.ci/run`
//! makes one); without it they skip, except under `CI=true`, where they fail.
use scratchllm_testutil::{shared, shared_text};
use scratchllm_tokenizer::{formats, gpt2, train, TrainOptions, WordCounts};
use std::path::{Path, PathBuf};
use std::process::Command;

fn python() -> Option<String> {
    match std::env::var("SCRATCHLLM_PYTHON") {
        Ok(p) => Some(p),
        Err(_) if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("SCRATCHLLM_PYTHON is not set; .ci/run sets it to a Python with tiktoken and tokenizers")
        }
        Err(_) => {
            eprintln!(
                "SKIPPED: set SCRATCHLLM_PYTHON to a Python with tiktoken and tokenizers to run"
            );
            None
        }
    }
}

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/reference_tokenizers.py")
}

/// Encodes `texts` with the reference library `kind` (`tiktoken` or `hf`) and vocabulary `vocab`.
fn reference(
    python: &str,
    kind: &str,
    vocab: &Path,
    texts: &[String],
    dir: &Path,
) -> Vec<Vec<u32>> {
    let (src, dst) = (
        dir.join(format!("{kind}-in.json")),
        dir.join(format!("{kind}-out.json")),
    );
    std::fs::write(&src, serde_json::to_string(texts).unwrap()).unwrap();
    let status = Command::new(python)
        .arg(script())
        .args([
            kind.as_ref(),
            vocab.as_os_str(),
            src.as_os_str(),
            dst.as_os_str(),
        ])
        .status()
        .unwrap();
    assert!(status.success(), "reference script failed for {kind}");
    let out: Vec<Vec<u32>> = serde_json::from_str(&std::fs::read_to_string(&dst).unwrap()).unwrap();
    assert_eq!(
        out.len(),
        texts.len(),
        "the reference encoded a different number of texts"
    );
    out
}

/// Strings built from the pieces that trip pre-tokenizers up.
fn tricky_strings(n: usize, seed: u64) -> Vec<String> {
    const ATOMS: &[&str] = &[
        "a",
        "Z",
        "é",
        "ß",
        "日本",
        "語",
        "x",
        " ",
        "  ",
        "   ",
        "\n",
        "\r\n",
        "\t",
        "\u{a0}",
        "\u{3000}",
        "\u{2028}",
        "\u{85}",
        "\u{1c}",
        "'",
        "'s",
        "'t",
        "'re",
        "'ve",
        "'m",
        "'ll",
        "'d",
        "'S",
        "’s",
        "0",
        "42",
        "½",
        "٣",
        "Ⅻ",
        "!",
        "?",
        ".",
        ",",
        "--",
        "...",
        "😀",
        "👍🏽",
        "👨‍👩‍👧",
        "\u{301}",
        "ก",
        "ู",
        "़",
        "-",
        "_",
        "$",
        "€",
        "<|endoftext|>",
        "<|",
        "|>",
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
    ];
    let mut state = seed;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    (0..n)
        .map(|_| {
            let len = (next() % 24) as usize;
            (0..len)
                .map(|_| ATOMS[(next() % ATOMS.len() as u64) as usize])
                .collect()
        })
        .collect()
}

#[test]
fn gpt2_matches_tiktoken_on_generated_strings() {
    let (Some(py), Some(ranks)) = (python(), shared("data/gpt2/r50k_base.tiktoken")) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut texts = tricky_strings(4000, 0x5eed);
    // Pieces long enough for the heap merge path.
    texts.extend([
        "a".repeat(100_000),
        " ".repeat(100_000),
        "xyzzy".repeat(20_000),
        "日本".repeat(30_000),
    ]);
    let want = reference(&py, "tiktoken", &ranks, &texts, dir.path());
    let tok = gpt2().unwrap();
    for (text, want) in texts.iter().zip(&want) {
        assert_eq!(&tok.encode_ordinary(text), want, "text {text:?}");
    }
}

#[test]
fn trained_tokenizer_json_encodes_identically_in_hf_tokenizers() {
    let (Some(py), Some(corpus)) = (python(), shared_text("data/the-verdict.txt")) else {
        return;
    };
    let specials = vec!["<|endoftext|>".to_string()];
    let mut counts = WordCounts::new(&specials);
    counts.add_text(&corpus);
    let opts = TrainOptions {
        vocab_size: 1000,
        specials,
        min_frequency: 0,
    };
    let tok = train(&counts, &opts, &mut |_, _| {}).unwrap();
    assert_eq!(tok.vocab_size(), 1000);
    let dir = tempfile::tempdir().unwrap();
    formats::save_dir(&tok, dir.path()).unwrap();
    let mut texts = tricky_strings(1000, 7);
    texts.retain(|t| !t.contains("<|endoftext|>"));
    texts.push(corpus.clone());
    let want = reference(
        &py,
        "hf",
        &dir.path().join("tokenizer.json"),
        &texts,
        dir.path(),
    );
    for (text, want) in texts.iter().zip(&want) {
        assert_eq!(&tok.encode_ordinary(text), want, "text {text:?}");
    }
    // Every format we wrote loads back to the same encoder.
    for f in ["tokenizer.json", "scratchllm-tokenizer.json", "vocab.json"] {
        let again = formats::load(&dir.path().join(f)).unwrap();
        assert_eq!(
            again.encode_ordinary(&corpus),
            tok.encode_ordinary(&corpus),
            "{f}"
        );
    }
}

#[test]
fn trained_vocabulary_compresses_like_hf_tokenizers_trainer() {
    let (Some(py), Some(path)) = (python(), shared("data/the-verdict.txt")) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("count.json");
    let status = Command::new(&py)
        .arg(script())
        .args([
            "hf-train".as_ref(),
            path.as_os_str(),
            "1000".as_ref(),
            out.as_os_str(),
        ])
        .status()
        .unwrap();
    assert!(status.success());
    let hf_count: usize = serde_json::from_str(&std::fs::read_to_string(out).unwrap()).unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    let specials = vec!["<|endoftext|>".to_string()];
    let mut counts = WordCounts::new(&specials);
    counts.add_text(&text);
    let tok = train(
        &counts,
        &TrainOptions {
            vocab_size: 1000,
            specials,
            min_frequency: 0,
        },
        &mut |_, _| {},
    )
    .unwrap();
    // Same corpus, same size: the same number of tokens, within 0.5% (tie-breaking may differ).
    let ours = tok.encode_ordinary(&text).len();
    assert!(
        ours.abs_diff(hf_count) * 200 <= hf_count,
        "ours {ours}, tokenizers {hf_count}"
    );
}
