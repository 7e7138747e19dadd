//! `chat` through the binary: greedy answers equal `generate`'s, commands change the settings,
//! the conversation is kept within the context, and classifiers are refused.
use scratchllm_testutil::shared;
use std::io::Write;
use std::process::{Command, Stdio};

fn chat(model: &str, args: &[&str], input: &str) -> (String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_scratchllm"))
        .args(["chat", "--model", model])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn greedy_chat_answers_as_generate_and_commands_work() {
    let Some(model) = shared("fixtures/gpt2-tiny/hf") else {
        return;
    };
    let model = model.to_str().unwrap();
    let (out, err) = chat(
        model,
        &["--prompt-style", "plain"],
        "/temp 0\n/max 8\nEvery effort moves you\n/topk 5\n/temp nine\n/reset\n/help\n",
    );
    // The plain style's prompt is the message and a newline.
    let g = Command::new(env!("CARGO_BIN_EXE_scratchllm"))
        .args([
            "generate",
            "--model",
            model,
            "--prompt",
            "Every effort moves you\n",
            "--max-new-tokens",
            "8",
            "--greedy",
        ])
        .output()
        .unwrap();
    assert_eq!(
        out.lines().next().unwrap(),
        String::from_utf8_lossy(&g.stdout).trim_end_matches('\n')
    );
    for ack in [
        "(temperature 0: greedy)",
        "(at most 8 tokens per answer)",
        "(top-k 5)",
        "/temp takes a number",
        "(new conversation)",
        "commands: /reset",
    ] {
        assert!(err.contains(ack), "{ack}: {err}");
    }
    // Alpaca turns: a long conversation drops its oldest turns instead of failing.
    let long = "word ".repeat(120);
    let (out, err) = chat(
        model,
        &["--max-tokens", "4", "--temperature", "0"],
        &format!("{long}\n{long}\n{long}\n"),
    );
    assert_eq!(out.lines().count(), 3, "{out}");
    assert!(err.contains("the oldest turns were dropped"), "{err}");
}
