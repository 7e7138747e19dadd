//! `finetune classify`, `classify` and `model merge-lora` through the binary: a toy spam task, the
//! outputs people read, and the errors for bad input.
use std::path::Path;
use std::process::{Command, Output, Stdio};

fn scratchllm(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_scratchllm"))
        .args(args)
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn toy(dir: &Path) -> String {
    let p = dir.join("toy.tsv");
    std::fs::write(&p, scratchllm_testutil::toy_spam_tsv()).unwrap();
    p.display().to_string()
}

fn model_config(dir: &Path) -> String {
    let p = dir.join("tiny.json");
    std::fs::write(&p, scratchllm_testutil::TINY_CLASSIFIER_CONFIG).unwrap();
    p.display().to_string()
}

#[test]
fn finetune_classify_then_classify_texts() {
    let dir = tempfile::tempdir().unwrap();
    let (data, cfg) = (toy(dir.path()), model_config(dir.path()));
    let out = dir.path().join("run");
    let o = scratchllm(&[
        "finetune",
        "classify",
        "--model-config",
        &cfg,
        "--data",
        &data,
        "--out",
        out.to_str().unwrap(),
        "--trainable",
        "all",
        "--lr",
        "2e-3",
        "--epochs",
        "4",
    ]);
    let err = text(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("classes: ham, spam | examples: 56 train, 8 validation, 16 test"),
        "{err}"
    );
    assert!(err.contains("accuracy: train"), "{err}");
    assert_eq!(
        text(&o.stdout).trim(),
        out.join("model").display().to_string()
    );

    // A run directory, its model/ and stdin all work; long texts are cut and flagged.
    let long = "WIN a FREE prize! ".repeat(30);
    let o = scratchllm(&[
        "classify",
        "--model",
        out.to_str().unwrap(),
        "WIN a FREE prize 99! Call 09060099 now to claim your cash",
        "are we still meeting at 5 tonight? see you soon",
        &long,
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let lines: Vec<String> = text(&o.stdout).lines().map(str::to_string).collect();
    assert!(lines[0].starts_with("spam\t"), "{lines:?}");
    assert!(lines[1].starts_with("ham\t"), "{lines:?}");
    assert!(lines[2].contains("[truncated]"), "{lines:?}");

    let mut child = Command::new(env!("CARGO_BIN_EXE_scratchllm"))
        .args(["classify", "--json", "--model"])
        .arg(out.join("model"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"are we still meeting at 2 tonight? see you soon\n")
        .unwrap();
    let o = child.wait_with_output().unwrap();
    let v: serde_json::Value = serde_json::from_str(text(&o.stdout).trim()).unwrap();
    assert_eq!(v["label"], "ham");
    let p =
        v["probabilities"]["ham"].as_f64().unwrap() + v["probabilities"]["spam"].as_f64().unwrap();
    assert!((p - 1.0).abs() < 1e-5);

    // A classifier does not generate, and an empty text is named.
    let o = scratchllm(&[
        "generate",
        "--model",
        out.join("model").to_str().unwrap(),
        "--prompt",
        "hi",
    ]);
    assert!(
        text(&o.stderr).contains("is a classifier"),
        "{}",
        text(&o.stderr)
    );
    let o = scratchllm(&["classify", "--model", out.to_str().unwrap(), "fine", ""]);
    assert!(
        text(&o.stderr).contains("text 2 is empty"),
        "{}",
        text(&o.stderr)
    );
}

#[test]
fn lora_adapters_merge_into_a_plain_model() {
    let dir = tempfile::tempdir().unwrap();
    let (data, cfg) = (toy(dir.path()), model_config(dir.path()));
    let out = dir.path().join("run");
    let o = scratchllm(&[
        "finetune",
        "classify",
        "--model-config",
        &cfg,
        "--data",
        &data,
        "--out",
        out.to_str().unwrap(),
        "--trainable",
        "lora",
        "--lora-rank",
        "2",
        "--lora-targets",
        "attention,head",
        "--epochs",
        "1",
    ]);
    let err = text(&o.stderr);
    assert!(o.status.success(), "{err}");
    // rank 2 x (32 + 32) x 4 attention layers x 2 blocks + rank 2 x (32 + 2) for the head.
    assert!(err.contains("trainable parameters: 1092 of"), "{err}");
    assert_eq!(
        text(&o.stdout).trim(),
        out.join("adapter").display().to_string()
    );
    assert!(!out.join("model").exists());

    let merged = dir.path().join("merged");
    let o = scratchllm(&[
        "model",
        "merge-lora",
        "--adapter",
        out.join("adapter").to_str().unwrap(),
        "--out",
        merged.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(
        text(&o.stderr).contains("merged 1092 adapter parameters"),
        "{}",
        text(&o.stderr)
    );
    let texts = [
        "WIN a FREE prize 3! Call 09060003 now",
        "see you at 4 tonight",
    ];
    let a = scratchllm(
        &[
            &[
                "classify",
                "--json",
                "--model",
                out.join("adapter").to_str().unwrap(),
            ][..],
            &texts[..],
        ]
        .concat(),
    );
    let m = scratchllm(
        &[
            &["classify", "--json", "--model", merged.to_str().unwrap()][..],
            &texts[..],
        ]
        .concat(),
    );
    assert!(a.status.success() && m.status.success());
    for (x, y) in text(&a.stdout).lines().zip(text(&m.stdout).lines()) {
        let (x, y): (serde_json::Value, serde_json::Value) = (
            serde_json::from_str(x).unwrap(),
            serde_json::from_str(y).unwrap(),
        );
        assert_eq!(x["label"], y["label"]);
        assert!(
            (x["probability"].as_f64().unwrap() - y["probability"].as_f64().unwrap()).abs() < 1e-5
        );
    }
}

#[test]
fn bad_tables_and_settings_are_explained() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = model_config(dir.path());
    let data = dir.path().join("bad.tsv");
    std::fs::write(&data, "ham\tok\nspam\twin\nham no tab\n").unwrap();
    let run = |extra: &[&str]| {
        let out = dir.path().join("r");
        let _ = std::fs::remove_dir_all(&out);
        let o = scratchllm(
            &[
                &[
                    "finetune",
                    "classify",
                    "--model-config",
                    &cfg,
                    "--data",
                    data.to_str().unwrap(),
                    "--out",
                    out.to_str().unwrap(),
                ][..],
                extra,
            ]
            .concat(),
        );
        assert!(!o.status.success());
        text(&o.stderr)
    };
    let e = run(&[]);
    assert!(e.contains("bad.tsv: line 3: 1 field(s), expected 2"), "{e}");
    std::fs::write(&data, "ham\tok\nspam\twin\nmaybe\thm\n").unwrap();
    let e = run(&["--labels", "ham,spam"]);
    assert!(
        e.contains("line 3: unknown label \"maybe\"; the labels are ham, spam"),
        "{e}"
    );
    let e = run(&["--lora-targets", "everything", "--trainable", "lora"]);
    assert!(e.contains("unknown LoRA target \"everything\""), "{e}");
    let e = run(&["--split", "0.9,0.5"]);
    assert!(e.contains("must be positive and sum to at most 1"), "{e}");
    let o = scratchllm(&["classify", "--model", "gpt2-tiny", "hello"]);
    assert!(
        text(&o.stderr).contains("is a language model, not a classifier"),
        "{}",
        text(&o.stderr)
    );
}
