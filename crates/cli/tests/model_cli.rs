//! `model info`, `generate` and `convert` through the real binary.
use scratchllm_testutil::{shared, shared_json};
use std::process::{Command, Output};

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_scratchllm"))
        .args(args)
        .output()
        .unwrap()
}

fn ok(o: Output) -> String {
    assert!(
        o.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

#[test]
fn model_info_reports_the_books_parameter_counts() {
    let out = ok(run(&["model", "info", "--model", "gpt2-small"]));
    assert!(
        out.contains("124439808") && out.contains("0.46 GiB"),
        "{out}"
    );
    let out = ok(run(&["model", "info", "--model", "gpt2-xl"]));
    assert!(
        out.contains("layers 48") && out.contains("heads 25"),
        "{out}"
    );
    let e = run(&["model", "info", "--model", "gpt2-huge"]);
    assert!(!e.status.success() && String::from_utf8_lossy(&e.stderr).contains("no such file"));
}

#[test]
fn generate_and_convert_keep_transformers_greedy_ids() {
    let (Some(tf), Some(expected)) = (
        shared("fixtures/gpt2-tiny/openai-tf"),
        shared_json("fixtures/gpt2-tiny/expected.json"),
    ) else {
        return;
    };
    let p = &expected["prompts"][0];
    let want: Vec<String> = p["greedy_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.to_string())
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let hf = dir.path().join("hf");
    ok(run(&[
        "convert",
        "--model",
        tf.to_str().unwrap(),
        "--to",
        "hf",
        "--out",
        hf.to_str().unwrap(),
    ]));
    let ours = dir.path().join("ours");
    ok(run(&[
        "convert",
        "--model",
        hf.to_str().unwrap(),
        "--to",
        "scratchllm",
        "--out",
        ours.to_str().unwrap(),
    ]));
    for model in [&tf, &hf, &ours] {
        for cache in [&[][..], &["--no-kv-cache"][..]] {
            let mut args = vec![
                "generate",
                "--model",
                model.to_str().unwrap(),
                "--prompt",
                p["text"].as_str().unwrap(),
                "--max-new-tokens",
                "20",
                "--format",
                "ids",
            ];
            args.extend_from_slice(cache);
            assert_eq!(
                ok(run(&args)).split_whitespace().collect::<Vec<_>>(),
                want,
                "{} {cache:?}",
                model.display()
            );
        }
    }
    // bf16 weight matrices keep the greedy path on this model.
    let bf16 = ok(run(&[
        "generate",
        "--model",
        ours.to_str().unwrap(),
        "--prompt",
        p["text"].as_str().unwrap(),
        "--max-new-tokens",
        "20",
        "--format",
        "ids",
        "--dtype",
        "bf16",
    ]));
    assert_eq!(bf16.split_whitespace().collect::<Vec<_>>(), want, "bf16");
    let text = ok(run(&[
        "generate",
        "--model",
        ours.to_str().unwrap(),
        "--prompt",
        p["text"].as_str().unwrap(),
        "--max-new-tokens",
        "20",
    ]));
    assert_eq!(
        text.trim_end_matches('\n'),
        p["greedy_text"].as_str().unwrap()
    );
}

#[test]
fn generate_rejects_bad_settings() {
    for (args, needle) in [
        (vec!["--temperature", "0"], "temperature 0 must be positive"),
        (vec!["--temperature", "1", "--top-p", "1.5"], "top-p 1.5"),
        (vec!["--top-k", "5"], "need sampling"),
    ] {
        let mut all = vec![
            "generate",
            "--model",
            "gpt2-tiny",
            "--prompt",
            "Hi",
            "--max-new-tokens",
            "2",
        ];
        all.extend(args);
        let o = run(&all);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            !o.status.success() && err.contains(needle),
            "{all:?}: {err}"
        );
    }
    let sampled = |seed: &str| {
        ok(run(&[
            "generate",
            "--model",
            "gpt2-tiny",
            "--prompt",
            "Hi",
            "--max-new-tokens",
            "8",
            "--temperature",
            "1.2",
            "--top-k",
            "50",
            "--seed",
            seed,
            "--format",
            "ids",
        ]))
    };
    assert_eq!(sampled("5"), sampled("5"));
}
