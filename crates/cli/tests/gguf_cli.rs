//! GGUF files and quantized inference through the binary, on the Llama 3, Qwen3 and Gemma 3
//! fixtures (`shared/fixtures/arch/*`, made with transformers): `convert --to gguf` and back keeps
//! transformers' greedy ids; `--dtype q8_0|q4_0` and quantized files generate, and `model info`
//! names their block formats; `bench generate` runs on a file; a damaged file is named.
use scratchllm_testutil::{json_ids, shared, shared_json};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const ARCHS: [&str; 3] = ["llama3-tiny", "qwen3-tiny", "gemma3-tiny"];

fn scratchllm(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_scratchllm"))
        .args(args)
        .output()
        .unwrap()
}

/// Runs a command that must succeed; returns its stdout.
fn ok(args: &[&str]) -> String {
    let o = scratchllm(args);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "scratchllm {}: {err}", args.join(" "));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn fixture(name: &str) -> Option<(PathBuf, Value)> {
    Some((
        shared(&format!("fixtures/arch/{name}"))?,
        shared_json(&format!("fixtures/arch/{name}/expected.json"))?,
    ))
}

/// `generate` greedy with the end-of-text ignored (`extra` appended); the new ids.
fn greedy_ids(model: &Path, prompt: &str, n: usize, extra: &[&str]) -> Vec<u32> {
    let n = n.to_string();
    let mut args = vec![
        "generate",
        "--model",
        s(model),
        "--prompt",
        prompt,
        "--max-new-tokens",
        &n,
        "--greedy",
        "--ignore-eos",
        "--format",
        "ids",
    ];
    args.extend_from_slice(extra);
    ok(&args)
        .split_whitespace()
        .map(|t| t.parse().unwrap())
        .collect()
}

fn convert(model: &Path, to: &str, out: &Path, extra: &[&str]) {
    let mut args = vec!["convert", "--model", s(model), "--to", to, "--out", s(out)];
    args.extend_from_slice(extra);
    ok(&args);
}

#[test]
fn gguf_files_and_back_keep_each_fixtures_greedy_ids() {
    for name in ARCHS {
        let Some((dir, expected)) = fixture(name) else {
            return;
        };
        let p = &expected["prompts"][0];
        let (prompt, want) = (p["text"].as_str().unwrap(), json_ids(&p["greedy_new_ids"]));
        let tmp = tempfile::tempdir().unwrap();
        let gguf = tmp.path().join("model.gguf");
        convert(&dir, "gguf", &gguf, &["--quant", "f32"]);
        let hf = tmp.path().join("hf");
        convert(&gguf, "hf", &hf, &[]);
        for model in [&gguf, &hf] {
            let got = greedy_ids(model, prompt, want.len(), &[]);
            assert_eq!(got, want, "{name}: {}", model.display());
        }
        // The round trip through the Hugging Face directory gives the same file again.
        let again = tmp.path().join("again.gguf");
        convert(&hf, "gguf", &again, &["--quant", "f32"]);
        assert!(
            std::fs::read(&gguf).unwrap() == std::fs::read(&again).unwrap(),
            "{name}: the second GGUF file differs"
        );
    }
}

#[test]
fn quantized_models_generate_and_say_what_they_hold() {
    let Some((dir, expected)) = fixture("qwen3-tiny") else {
        return;
    };
    let prompt = expected["prompts"][0]["text"].as_str().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    for quant in ["q8_0", "q4_0"] {
        let file = tmp.path().join(format!("{quant}.gguf"));
        convert(&dir, "gguf", &file, &["--quant", quant]);
        // Qwen3-tiny: 2 layers of 7 linear layers, and the tied embedding.
        let info = ok(&["model", "info", "--model", s(&file)]);
        assert!(
            info.contains(&format!("quantized:       15 {quant} matrices")),
            "{quant}: {info}"
        );
        let from_file = greedy_ids(&file, prompt, 6, &[]);
        assert_eq!(from_file.len(), 6, "{quant}");
        // Quantizing on load: the linear layers only (the embedding stays as stored).
        let on_load = greedy_ids(&dir, prompt, 6, &["--dtype", quant]);
        assert_eq!(on_load.len(), 6, "{quant}");
        let out = ok(&[
            "bench",
            "generate",
            "--model",
            s(&file),
            "--prompt-tokens",
            "4",
            "--new-tokens",
            "3",
            "--repeat",
            "1",
        ]);
        assert!(out.contains("RESULT decode_tokens_per_s"), "{out}");
    }
}

#[test]
fn a_damaged_file_is_named_and_nothing_panics() {
    let Some((dir, _)) = fixture("gemma3-tiny") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("model.gguf");
    convert(&dir, "gguf", &file, &["--quant", "q8_0"]);
    let bytes = std::fs::read(&file).unwrap();
    let cut = tmp.path().join("cut.gguf");
    std::fs::write(&cut, &bytes[..bytes.len() - 100]).unwrap();
    let o = scratchllm(&["generate", "--model", s(&cut), "--prompt", "Hi"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && !err.contains("panicked"), "{err}");
    assert!(
        err.contains("cut.gguf") && err.contains("past the end"),
        "{err}"
    );
}
