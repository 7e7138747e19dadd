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

#[path = "../../tokenizer/tests/family_files/mod.rs"]
mod family_files;

fn fail(o: &Output) -> String {
    assert!(!o.status.success(), "expected a failure");
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn family_tokenizers_encode_render_and_describe_themselves() {
    let Some(cases) = shared_json("fixtures/tokenizer-families/cases.json") else {
        return;
    };
    for family in family_files::FAMILIES {
        let Some(dir) = family_files::family_dir(family) else {
            return;
        };
        let dir = dir.to_str().unwrap();
        let fam = &cases["families"][family];
        for case in fam["texts"].as_array().unwrap().iter().take(6) {
            let text = case["text"].as_str().unwrap();
            let plain = ["tokenize", "--tokenizer", dir, "--allow-special"];
            let got = ids(&stdout(&run(&plain, text.as_bytes())));
            assert_eq!(
                got,
                scratchllm_testutil::json_ids(&case["ids"]),
                "{family} {text:?}"
            );
            let with = [&plain[..], &["--add-special-tokens"]].concat();
            let got = ids(&stdout(&run(&with, text.as_bytes())));
            assert_eq!(
                got,
                scratchllm_testutil::json_ids(&case["ids_with_special"]),
                "{family} {text:?}"
            );
        }
        let tmp = tempfile::tempdir().unwrap();
        for chat in fam["chats"].as_array().unwrap() {
            let messages = tmp.path().join("messages.json");
            std::fs::write(&messages, chat["messages"].to_string()).unwrap();
            let mut args = vec![
                "tokenizer",
                "render-chat",
                "--tokenizer",
                dir,
                "--messages",
                messages.to_str().unwrap(),
            ];
            if !chat["add_generation_prompt"].as_bool().unwrap() {
                args.push("--no-generation-prompt");
            }
            assert_eq!(
                stdout(&run(&args, b"")),
                chat["rendered"].as_str().unwrap(),
                "{family}"
            );
        }
        let info = stdout(&run(&["tokenizer", "info", "--tokenizer", dir], b""));
        assert!(
            info.contains(&format!("family:          {family}")),
            "{info}"
        );
        assert!(info.contains("chat template:   default"), "{info}");
        let eot = ["<|eot_id|>", "<|im_end|>", "<end_of_turn>"][family_files::FAMILIES
            .iter()
            .position(|f| *f == family)
            .unwrap()];
        assert!(
            info.contains(&format!("end of turn:     {eot:?}")),
            "{info}"
        );
    }
}

#[test]
fn render_chat_takes_template_variables_and_names_bad_input() {
    let (Some(qwen), Some(gemma)) = (
        family_files::family_dir("qwen3"),
        family_files::family_dir("gemma3"),
    ) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let messages = tmp.path().join("m.json");
    std::fs::write(&messages, r#"[{"role": "user", "content": "Hi"}]"#).unwrap();
    let m = messages.to_str().unwrap();
    let q = qwen.to_str().unwrap();
    let out = stdout(&run(
        &[
            "tokenizer",
            "render-chat",
            "--tokenizer",
            q,
            "--messages",
            m,
            "--var",
            "enable_thinking=false",
        ],
        b"",
    ));
    // transformers: apply_chat_template(..., add_generation_prompt=True, enable_thinking=False).
    assert_eq!(
        out,
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
    );
    // Gemma's template raises on roles that do not alternate.
    std::fs::write(
        &messages,
        r#"[{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]"#,
    )
    .unwrap();
    let g = gemma.to_str().unwrap();
    let e = fail(&run(
        &[
            "tokenizer",
            "render-chat",
            "--tokenizer",
            g,
            "--messages",
            m,
        ],
        b"",
    ));
    assert!(
        e.contains("m.json") && e.contains("raised an error: Conversation roles must alternate"),
        "{e}"
    );
    std::fs::write(&messages, r#"{"role": "user"}"#).unwrap();
    let e = fail(&run(
        &[
            "tokenizer",
            "render-chat",
            "--tokenizer",
            g,
            "--messages",
            m,
        ],
        b"",
    ));
    assert!(
        e.contains("m.json") && e.contains("not a JSON list of messages"),
        "{e}"
    );
    std::fs::write(&messages, r#"[{"content": "no role"}]"#).unwrap();
    let e = fail(&run(
        &[
            "tokenizer",
            "render-chat",
            "--tokenizer",
            g,
            "--messages",
            m,
        ],
        b"",
    ));
    assert!(e.contains("message 0 has no string \"role\""), "{e}");
    // GPT-2 has no chat template at all.
    let e = fail(&run(&["tokenizer", "render-chat", "--messages", m], b""));
    assert!(e.contains("no chat template"), "{e}");
}

#[test]
fn broken_tokenizer_files_are_named_and_cut_merges_are_warned_about() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokenizer.json");
    std::fs::write(
        &path,
        r#"{"normalizer": {"type": "BertNormalizer"}, "model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}}"#,
    )
    .unwrap();
    let e = fail(&run(
        &["tokenize", "--tokenizer", path.to_str().unwrap()],
        b"a",
    ));
    assert!(
        e.contains("tokenizer.json: normalizer: type \"BertNormalizer\" is not supported"),
        "{e}"
    );
    // GPT-2's merges cut after 20,000 lines: it loads, but says what it is missing.
    let Some(gpt2) = shared("data/gpt2/encoder.json") else {
        return;
    };
    let bpe = std::fs::read_to_string(gpt2.with_file_name("vocab.bpe")).unwrap();
    let cut: String = bpe.lines().take(20_000).map(|l| format!("{l}\n")).collect();
    std::fs::copy(&gpt2, dir.path().join("encoder.json")).unwrap();
    std::fs::write(dir.path().join("vocab.bpe"), cut).unwrap();
    std::fs::remove_file(&path).unwrap();
    let o = run(
        &["tokenize", "--tokenizer", dir.path().to_str().unwrap()],
        b"hello",
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("warning:")
            && err.contains("30001 of the 50257 tokens")
            && err.contains("cut short"),
        "{err}"
    );
}

#[test]
fn train_with_llama3_splitting() {
    let Some(path) = shared("data/the-verdict.txt") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("tok");
    let args = [
        "tokenizer",
        "train",
        "--input",
        path.to_str().unwrap(),
        "--vocab-size",
        "500",
        "--out",
        out.to_str().unwrap(),
        "--quiet",
        "--pre-tokenizer",
        "llama3",
    ];
    let files = stdout(&run(&args, b""));
    assert_eq!(files.lines().count(), 2, "{files}");
    let text = "It was 1234567 years, I'd say.\n\n";
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
