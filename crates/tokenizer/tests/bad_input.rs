//! Malformed vocabulary files and bad ids: each error names the file and line, or the id.
use scratchllm_tokenizer::{formats, gpt2_shared, load};
use std::path::Path;

fn err_of(path: &Path) -> String {
    formats::load(path)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_else(|| panic!("{} loaded", path.display()))
}

/// A tiny valid byte-level vocabulary: the 256 bytes plus "ab" made by one merge.
fn write_vocab(dir: &Path, merges: &str, extra: &[(&str, u32)]) {
    let mut map: Vec<String> = (0u8..=255)
        .map(|b| format!("{:?}: {b}", bytes_text(&[b])))
        .collect();
    map.push(format!("{:?}: 256", "ab"));
    for (t, id) in extra {
        map.push(format!("{t:?}: {id}"));
    }
    std::fs::write(dir.join("vocab.json"), format!("{{{}}}", map.join(", "))).unwrap();
    std::fs::write(dir.join("merges.txt"), merges).unwrap();
}

fn bytes_text(b: &[u8]) -> String {
    scratchllm_tokenizer::bytes_unicode::encode(b)
}

#[test]
fn merges_errors_name_the_line() {
    let dir = tempfile::tempdir().unwrap();
    write_vocab(dir.path(), "#version: 0.2\na b\n", &[]);
    assert_eq!(
        formats::load(dir.path()).unwrap().encode_ordinary("abab"),
        [256, 256]
    );

    write_vocab(dir.path(), "#version: 0.2\na b\nab\n", &[]);
    let e = err_of(dir.path());
    assert!(
        e.contains("merges.txt, line 3") && e.contains("two tokens"),
        "{e}"
    );

    write_vocab(dir.path(), "#version: 0.2\na b\na b\n", &[]);
    let e = err_of(dir.path());
    assert!(
        e.contains("line 3") && e.contains("duplicate merge") && e.contains("line 2"),
        "{e}"
    );

    write_vocab(dir.path(), "#version: 0.2\na c\n", &[]);
    let e = err_of(dir.path());
    assert!(
        e.contains("line 2") && e.contains("\"ac\" is not in the vocabulary"),
        "{e}"
    );

    write_vocab(dir.path(), "#version: 0.2\na q\u{3000}\n", &[]);
    let e = err_of(dir.path());
    assert!(
        e.contains("line 2") && e.contains("not in the vocabulary"),
        "{e}"
    );
}

#[test]
fn vocabulary_errors_name_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    write_vocab(dir.path(), "", &[("zz", 999)]);
    let e = err_of(dir.path());
    assert!(e.contains("vocab.json") && e.contains("id 999"), "{e}");

    std::fs::write(dir.path().join("vocab.json"), "{\"a\": 0, \"b\": 1").unwrap();
    let e = err_of(dir.path());
    assert!(e.contains("vocab.json") && e.contains("line 1"), "{e}");

    std::fs::write(dir.path().join("vocab.json"), "{\"a\": 0, \"b\": 1}").unwrap();
    std::fs::write(dir.path().join("merges.txt"), "").unwrap();
    let e = err_of(dir.path());
    assert!(e.contains("single byte 0x00"), "{e}");
}

#[test]
fn tiktoken_errors_name_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.tiktoken");
    std::fs::write(&path, "IQ== 0\n!!!! 1\n").unwrap();
    let e = err_of(&path);
    assert!(
        e.contains("x.tiktoken, line 2") && e.contains("base64"),
        "{e}"
    );
    std::fs::write(&path, "IQ== 0\nIg== 5\n").unwrap();
    assert!(err_of(&path).contains("line 2"));
    std::fs::write(&path, "IQ== 0\nIg==\n").unwrap();
    assert!(err_of(&path).contains("line 2"));
    std::fs::write(&path, b"IQ== 0\n\xff\n").unwrap();
    assert!(err_of(&path).contains("not valid UTF-8 at byte 7"));
}

#[test]
fn json_errors_and_unknown_layouts() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokenizer.json");
    std::fs::write(&path, "{\"model\": {\"type\": \"WordPiece\"}}").unwrap();
    let e = err_of(&path);
    assert!(
        e.contains("model: type \"WordPiece\" is not supported"),
        "{e}"
    );
    // A component this crate does not implement is refused by name, never skipped.
    std::fs::write(
        &path,
        "{\"pre_tokenizer\": {\"type\": \"Whitespace\"}, \"model\": {\"type\": \"BPE\", \"vocab\": {}, \"merges\": []}}",
    )
    .unwrap();
    let e = err_of(&path);
    assert!(
        e.contains("tokenizer.json: pre_tokenizer: type \"Whitespace\" is not supported"),
        "{e}"
    );
    std::fs::write(&path, "{\"format\": \"scratchllm-bpe\", \"version\": 9}").unwrap();
    let e = err_of(&path);
    assert!(
        e.contains("version 9") && e.contains("reads version 1"),
        "{e}"
    );
    std::fs::write(&path, "{\"model\": ").unwrap();
    assert!(err_of(&path).contains("invalid JSON"));
    std::fs::remove_file(&path).unwrap();
    std::fs::write(dir.path().join("notes.txt"), "hi").unwrap();
    let e = err_of(dir.path());
    assert!(
        e.contains("no tokenizer found") && e.contains("notes.txt"),
        "{e}"
    );
    assert!(load("no/such/tokenizer")
        .unwrap_err()
        .to_string()
        .contains("built in: gpt2"));
}

#[test]
fn unknown_ids_are_named() {
    let tok = gpt2_shared().unwrap();
    let e = tok.decode(&[15496, 99999]).unwrap_err().to_string();
    assert!(e.contains("99999") && e.contains("50257"), "{e}");
}

#[test]
fn exports_of_gpt2_load_back_identically() {
    // The ranks rule exported as a merge list (tokenizer.json, vocab.json + merges.txt) must encode
    // exactly as the ranks do.
    let tok = gpt2_shared().unwrap();
    let dir = tempfile::tempdir().unwrap();
    formats::save_dir(tok, dir.path()).unwrap();
    let text = "Hello, world! It's 2026 —  naïve café 😀\n\n  x";
    for f in ["tokenizer.json", "vocab.json", "scratchllm-tokenizer.json"] {
        let again = formats::load(&dir.path().join(f)).unwrap();
        assert_eq!(again.vocab_size(), 50257, "{f}");
        assert_eq!(
            again.encode_ordinary(text),
            tok.encode_ordinary(text),
            "{f}"
        );
    }
}

#[test]
fn an_added_token_that_normalizes_to_nothing_is_refused() {
    // Found by fuzz/tokenizer_json: an empty pattern would match inside characters.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokenizer.json");
    std::fs::write(
        &path,
        r#"{"normalizer": {"type": "Strip", "strip_left": true, "strip_right": true},
            "added_tokens": [{"id": 1, "content": " ", "special": false, "normalized": true}],
            "model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}}"#,
    )
    .unwrap();
    let e = err_of(&path);
    assert!(
        e.contains("tokenizer.json") && e.contains("\" \" (id 1) normalizes to nothing"),
        "{e}"
    );
}
