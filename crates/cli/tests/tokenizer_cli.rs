//! The tokenizer commands end to end, through the real binary.
use scratchllm_testutil::{shared, shared_json};
use std::io::Write;
use std::process::{Command, Output, Stdio};

fn run(args: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_scratchllm"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    child.wait_with_output().unwrap()
}

fn stdout(o: &Output) -> String {
    assert!(
        o.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout.clone()).unwrap()
}

fn ids(s: &str) -> Vec<u32> {
    s.split_whitespace().map(|t| t.parse().unwrap()).collect()
}

#[test]
fn tokenize_matches_tiktoken_and_detokenize_inverts_it() {
    let Some(cases) = shared_json("fixtures/tokenizer/gpt2-cases.json") else {
        return;
    };
    for case in cases["cases"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let want: Vec<u32> = case["allow_endoftext"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        let got = ids(&stdout(&run(
            &["tokenize", "--allow-special"],
            text.as_bytes(),
        )));
        assert_eq!(got, want, "{text:?}");
        let back = run(
            &["detokenize"],
            stdout(&run(&["tokenize", "--allow-special"], text.as_bytes())).as_bytes(),
        );
        assert_eq!(stdout(&back), text);
    }
}

#[test]
fn the_verdict_file_is_5145_tokens() {
    let Some(path) = shared("data/the-verdict.txt") else {
        return;
    };
    let out = stdout(&run(
        &["tokenize", "--format", "count", path.to_str().unwrap()],
        b"",
    ));
    assert_eq!(out.trim(), "5145");
    let words = stdout(&run(
        &[
            "tokenize",
            "--words",
            path.to_str().unwrap(),
            "--format",
            "count",
            path.to_str().unwrap(),
        ],
        b"",
    ));
    assert_eq!(words.trim(), "4690");
}

#[test]
fn special_tokens_follow_tiktoken_rules() {
    let refused = run(&["tokenize"], b"Hello <|endoftext|>");
    assert_eq!(refused.status.code(), Some(1));
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        err.contains("byte 6") && err.contains("--allow-special"),
        "{err}"
    );
    assert_eq!(
        ids(&stdout(&run(
            &["tokenize", "--allow-special"],
            b"<|endoftext|>"
        ))),
        [50256]
    );
    assert_eq!(
        ids(&stdout(&run(
            &["tokenize", "--special-as-text"],
            b"<|endoftext|>"
        )))
        .len(),
        7
    );
    let extended = run(
        &[
            "tokenize",
            "--allow-special",
            "--add-special",
            "MyNewToken_1",
            "--format",
            "json",
        ],
        b"MyNewToken_1 hi",
    );
    assert_eq!(stdout(&extended).trim(), "[50257,23105]");
}

#[test]
fn bad_input_gets_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let latin1 = dir.path().join("latin1.txt");
    std::fs::write(&latin1, b"caf\xe9").unwrap();
    let o = run(&["tokenize", latin1.to_str().unwrap()], b"");
    assert!(String::from_utf8_lossy(&o.stderr).contains("latin1.txt is not valid UTF-8 at byte 3"));
    let o = run(&["detokenize"], b"15496 70000");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("unknown token id 70000"),
        "{err}"
    );
    let o = run(&["detokenize"], b"15496 hello");
    assert!(String::from_utf8_lossy(&o.stderr).contains("item 2 (\"hello\") is not a token id"));
    let o = run(
        &["tokenize", "--tokenizer", dir.path().to_str().unwrap()],
        b"x",
    );
    assert!(String::from_utf8_lossy(&o.stderr).contains("no tokenizer found"));
}

#[test]
fn train_then_use_the_trained_tokenizer() {
    let Some(path) = shared("data/the-verdict.txt") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("tok");
    let o = run(
        &[
            "tokenizer",
            "train",
            "--input",
            path.to_str().unwrap(),
            "--vocab-size",
            "500",
            "--out",
            out.to_str().unwrap(),
            "--quiet",
        ],
        b"",
    );
    let files = stdout(&o);
    assert_eq!(files.lines().count(), 4);
    let info = stdout(&run(
        &["tokenizer", "info", "--tokenizer", out.to_str().unwrap()],
        b"",
    ));
    assert!(
        info.contains("500 ids") && info.contains("\"<|endoftext|>\" = 499"),
        "{info}"
    );
    let text = "I had always thought Jack Gisburn rather a cheap genius";
    let got = stdout(&run(
        &["tokenize", "--tokenizer", out.to_str().unwrap()],
        text.as_bytes(),
    ));
    let back = stdout(&run(
        &["detokenize", "--tokenizer", out.to_str().unwrap()],
        got.as_bytes(),
    ));
    assert_eq!(back, text);
}
