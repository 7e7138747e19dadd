//! Where chat templates and special roles come from: `chat_template.jinja` before
//! `tokenizer_config.json`'s `chat_template` (a string or named templates, `tool_use` chosen when
//! tools are given), special tokens as strings or AddedToken objects, `generation_config.json`'s
//! eos ids among the stop ids; and that saving writes them back.
use scratchllm_testutil::shared;
use scratchllm_tokenizer::{formats, load, ChatOptions};
use std::path::Path;

/// A directory with the tiny Llama 3-style tokenizer of the arch fixtures and `files` beside it.
fn dir_with(files: &[(&str, &str)]) -> Option<tempfile::TempDir> {
    let src = shared("fixtures/arch/llama3-tiny/tokenizer.json")?;
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(src, dir.path().join("tokenizer.json")).unwrap();
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    Some(dir)
}

fn render(dir: &Path, opts: &ChatOptions) -> String {
    let tok = load(dir.to_str().unwrap()).unwrap();
    tok.render_chat(r#"[{"role": "user", "content": "hi"}]"#, opts)
        .unwrap()
}

const CONFIG: &str = r#"{
  "bos_token": {"content": "<|endoftext|>", "lstrip": false},
  "eos_token": "<|endoftext|>",
  "chat_template": [
    {"name": "default", "template": "D{{ bos_token }}{% for m in messages %}{{ m.content }}{% endfor %}"},
    {"name": "tool_use", "template": "T{{ tools | length }}"}
  ]
}"#;

#[test]
fn named_templates_and_the_jinja_file() {
    let Some(dir) = dir_with(&[("tokenizer_config.json", CONFIG)]) else {
        return;
    };
    assert_eq!(
        render(dir.path(), &ChatOptions::default()),
        "D<|endoftext|>hi"
    );
    let tools = ChatOptions {
        vars: vec![("tools".into(), r#"[{"name": "f"}, {"name": "g"}]"#.into())],
        ..Default::default()
    };
    assert_eq!(render(dir.path(), &tools), "T2");
    let named = ChatOptions {
        template: Some("default".into()),
        ..tools.clone()
    };
    assert_eq!(render(dir.path(), &named), "D<|endoftext|>hi");
    let missing = ChatOptions {
        template: Some("rag".into()),
        ..Default::default()
    };
    let tok = load(dir.path().to_str().unwrap()).unwrap();
    let e = tok.render_chat("[]", &missing).unwrap_err().to_string();
    assert!(
        e.contains("no chat template named \"rag\"") && e.contains("default, tool_use"),
        "{e}"
    );
    // The newer layout's file wins over the config's template.
    std::fs::write(
        dir.path().join("chat_template.jinja"),
        "J{{ messages | length }}\n",
    )
    .unwrap();
    assert_eq!(render(dir.path(), &ChatOptions::default()), "J1");
}

#[test]
fn roles_and_stop_ids_come_from_both_configs_and_are_saved_back() {
    let gen = r#"{"bos_token_id": 0, "eos_token_id": [0, 5]}"#;
    let Some(dir) = dir_with(&[
        ("tokenizer_config.json", CONFIG),
        ("generation_config.json", gen),
    ]) else {
        return;
    };
    let tok = load(dir.path().to_str().unwrap()).unwrap();
    assert_eq!(tok.meta().bos.as_ref().unwrap().id, 0);
    assert_eq!(tok.meta().eos.as_ref().unwrap().text, "<|endoftext|>");
    assert_eq!(tok.stop_ids(), [0, 5]);
    let out = tempfile::tempdir().unwrap();
    let files = formats::save_dir(&tok, out.path()).unwrap();
    assert!(
        files.iter().any(|f| f.ends_with("tokenizer_config.json")),
        "{files:?}"
    );
    let again = load(out.path().to_str().unwrap()).unwrap();
    assert_eq!(again.meta().templates.len(), 2);
    assert_eq!(
        render(out.path(), &ChatOptions::default()),
        "D<|endoftext|>hi"
    );
    // A role naming a token the vocabulary lacks is an error naming the file.
    std::fs::write(
        dir.path().join("tokenizer_config.json"),
        r#"{"eos_token": "<nope>"}"#,
    )
    .unwrap();
    let e = load(dir.path().to_str().unwrap()).unwrap_err().to_string();
    assert!(
        e.contains("tokenizer_config.json") && e.contains("\"<nope>\" is not a token"),
        "{e}"
    );
}
