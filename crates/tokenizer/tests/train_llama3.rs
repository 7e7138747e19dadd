//! Training byte-level BPE with Llama 3's split pattern: streamed counts equal whole-text counts,
//! the result splits as Llama 3 does, and its `tokenizer.json` encodes identically in the
//! `tokenizers` library (which needs `$SCRATCHLLM_PYTHON`; that part skips without it, except under
//! `CI=true`).
use scratchllm_testutil::shared_text;
use scratchllm_tokenizer::{formats, train, SpecialMode, SplitPreset, TrainOptions, WordCounts};
use std::path::PathBuf;
use std::process::Command;

fn trained(text: &str, streamed_from: Option<&std::path::Path>) -> scratchllm_tokenizer::Tokenizer {
    let specials = vec!["<|endoftext|>".to_string()];
    let mut counts = WordCounts::with_split(&specials, SplitPreset::Llama3);
    match streamed_from {
        Some(path) => counts.add_file(path, &mut |_| {}).unwrap(),
        None => counts.add_text(text),
    }
    let opts = TrainOptions {
        vocab_size: 800,
        specials,
        min_frequency: 0,
    };
    train(&counts, &opts, &mut |_, _| {}).unwrap()
}

#[test]
fn llama3_split_training_streams_and_splits_as_llama3() {
    let Some(text) = shared_text("data/the-verdict.txt") else {
        return;
    };
    let big = format!("{text}<|endoftext|>\n  \n\r\n 12345 ").repeat(60);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("corpus.txt");
    std::fs::write(&path, &big).unwrap();
    let whole = trained(&big, None);
    let streamed = trained(&big, Some(&path));
    assert_eq!(whole.merge_list(), streamed.merge_list());
    // Digits come in threes and a word keeps its leading punctuation, as Llama 3 splits.
    let ids = whole.encode("x 12345 (hello", SpecialMode::Forbid).unwrap();
    let pieces: Vec<String> = ids.iter().map(|&i| whole.decode(&[i]).unwrap()).collect();
    assert!(
        pieces
            .iter()
            .all(|p| p.chars().filter(char::is_ascii_digit).count() <= 3),
        "{pieces:?}"
    );
    assert_eq!(whole.decode(&ids).unwrap(), "x 12345 (hello");
}

#[test]
fn llama3_split_tokenizer_round_trips_through_every_file_and_the_library() {
    let Some(text) = shared_text("data/the-verdict.txt") else {
        return;
    };
    let tok = trained(&text, None);
    let dir = tempfile::tempdir().unwrap();
    let files = formats::save_dir(&tok, dir.path()).unwrap();
    let names: Vec<String> = files
        .iter()
        .map(|f| f.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    // vocab.json + merges.txt cannot say how to split, so they are not written.
    assert_eq!(names, ["scratchllm-tokenizer.json", "tokenizer.json"]);
    let probe = "It's 2026!\n\n  Numbers 1234567 and 'LL words\r\n";
    for f in &names {
        let again = formats::load(&dir.path().join(f)).unwrap();
        assert_eq!(
            again.encode_ordinary(probe),
            tok.encode_ordinary(probe),
            "{f}"
        );
        assert_eq!(
            again.encode_ordinary(&text),
            tok.encode_ordinary(&text),
            "{f}"
        );
    }
    let Ok(py) = std::env::var("SCRATCHLLM_PYTHON") else {
        assert!(
            std::env::var("CI").map_or(true, |v| v != "true"),
            "SCRATCHLLM_PYTHON is not set"
        );
        eprintln!("SKIPPED: set SCRATCHLLM_PYTHON to compare with the tokenizers library");
        return;
    };
    let texts = vec![
        probe.to_string(),
        text.clone(),
        "a\u{a0} b\n\n\nc 99999".to_string(),
    ];
    let src = dir.path().join("in.json");
    let dst = dir.path().join("out.json");
    std::fs::write(&src, serde_json::to_string(&texts).unwrap()).unwrap();
    let script =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/reference_tokenizers.py");
    let tj = dir.path().join("tokenizer.json");
    let ok = Command::new(py)
        .arg(script)
        .args([
            "hf".as_ref(),
            tj.as_os_str(),
            src.as_os_str(),
            dst.as_os_str(),
        ])
        .status()
        .unwrap()
        .success();
    assert!(ok);
    let want: Vec<Vec<u32>> =
        serde_json::from_str(&std::fs::read_to_string(&dst).unwrap()).unwrap();
    for (t, w) in texts.iter().zip(&want) {
        assert_eq!(&tok.encode_ordinary(t), w, "{t:?}");
    }
}
