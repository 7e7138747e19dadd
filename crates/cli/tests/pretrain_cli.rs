//! `scratchllm pretrain` runs the configuration of the PyTorch trace and gets its losses; a stop
//! and `--resume` continue it.
use scratchllm_testutil::{shared, shared_json};
use std::path::{Path, PathBuf};
use std::process::Command;

fn losses(run: &std::path::Path) -> Vec<f64> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .filter_map(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .ok()?
                .get("train_loss")?
                .as_f64()
        })
        .collect()
}

#[test]
fn the_cli_reproduces_the_chapter5_trace_and_resumes() {
    let Some((trace, dir, text)) = trace_fixtures() else {
        return;
    };
    let want = trace_losses(&trace);
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let base = |max_steps: &str| trace_run(&text, &dir, &run, max_steps);
    // First 10 steps, then the rest with --resume (max-steps comes from the saved configuration).
    let out = base("10").output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("step      9"));
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("config.json")).unwrap()).unwrap();
    cfg["max_steps"] = serde_json::Value::Null;
    std::fs::write(run.join("config.json"), cfg.to_string()).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_scratchllm"))
        .arg("pretrain")
        .arg("--resume")
        .arg(&run)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = losses(&run);
    assert_eq!(got.len(), want.len());
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert!((g - w).abs() <= 1e-3 * w, "step {i}: {g} vs PyTorch {w}");
    }
    // Each step's speed: tokens per second (4 x its context each step) and a utilization of the
    // measured peak between 0 and 1.
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    for l in metrics.lines().filter(|l| l.contains("\"train_loss\"")) {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        let (speed, mfu) = (
            v["tokens_per_s"].as_f64().unwrap(),
            v["mfu"].as_f64().unwrap(),
        );
        assert!(speed > 0.0 && mfu > 0.0 && mfu < 1.0, "{l}");
    }
    // The final model generates.
    let gen = Command::new(env!("CARGO_BIN_EXE_scratchllm"))
        .args([
            "generate",
            "--prompt",
            "Every effort moves you",
            "--max-new-tokens",
            "5",
            "--model",
        ])
        .arg(run.join("model"))
        .output()
        .unwrap();
    assert!(
        gen.status.success(),
        "{}",
        String::from_utf8_lossy(&gen.stderr)
    );
}

/// `pretrain` with the PyTorch trace's configuration and initial weights, into `run`.
fn trace_run(text: &Path, dir: &Path, run: &Path, max_steps: &str) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_scratchllm"));
    c.arg("pretrain")
        .arg("--data")
        .arg(text)
        .arg("--out")
        .arg(run);
    c.arg("--model-config")
        .arg(dir.join("trace.json"))
        .arg("--init")
        .arg(dir.join("init.safetensors"));
    c.args([
        "--batch-size",
        "4",
        "--epochs",
        "1",
        "--no-shuffle",
        "--eval-every",
        "0",
        "--sample-prompt",
        "",
        "--max-steps",
        max_steps,
    ]);
    c
}

/// The PyTorch trace, its directory and The Verdict (`None` without `../shared`).
fn trace_fixtures() -> Option<(serde_json::Value, PathBuf, PathBuf)> {
    Some((
        shared_json("fixtures/train-trace/trace.json")?,
        shared("fixtures/train-trace")?,
        shared("data/the-verdict.txt")?,
    ))
}

/// Trace losses of the chapter 5 run (PyTorch's, per step).
fn trace_losses(trace: &serde_json::Value) -> Vec<f64> {
    trace["chapter5"]["train_loss_per_step"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect()
}

#[test]
fn checkpointed_activations_give_the_same_trace() {
    let Some((trace, dir, text)) = trace_fixtures() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let (plain, checkpointed) = (tmp.path().join("plain"), tmp.path().join("checkpointed"));
    for (run, flag) in [
        (&plain, None),
        (&checkpointed, Some("--checkpoint-activations")),
    ] {
        let out = trace_run(&text, &dir, run, "6")
            .args(flag)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(checkpointed.join("config.json")).unwrap())
            .unwrap();
    assert_eq!(saved["checkpoint_activations"], true, "{saved}");
    // Recomputing the blocks changes nothing: the losses are the plain run's, bit for bit, and
    // PyTorch's.
    let got = losses(&checkpointed);
    assert_eq!(got, losses(&plain));
    for (i, (g, w)) in got.iter().zip(trace_losses(&trace)).enumerate() {
        assert!((g - w).abs() <= 1e-3 * w, "step {i}: {g} vs PyTorch {w}");
    }
}

#[test]
fn pretraining_from_prepared_shards() {
    let Some(text) = shared("data/the-verdict.txt") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let shards = tmp.path().join("shards");
    let bin = env!("CARGO_BIN_EXE_scratchllm");
    let out = Command::new(bin)
        .args([
            "data",
            "prepare",
            "--quiet",
            "--shard-tokens",
            "2000",
            "--input",
        ])
        .arg(&text)
        .arg("--out")
        .arg(&shards)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("5145 tokens"));
    let run = tmp.path().join("run");
    let out = Command::new(bin)
        .args([
            "pretrain",
            "--model",
            "gpt2-tiny",
            "--context-length",
            "32",
            "--batch-size",
            "2",
            "--max-steps",
            "3",
            "--eval-every",
            "2",
            "--sample-tokens",
            "3",
            "--data",
        ])
        .arg(&shards)
        .arg("--out")
        .arg(&run)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("training on 4630 tokens, validating on 515"),
        "{err}"
    );
    assert_eq!(losses(&run).len(), 3);
}
