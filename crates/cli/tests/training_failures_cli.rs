//! How training commands fail and stop, as a user meets it: settings that cannot train are refused
//! before anything is written; Ctrl-C and SIGTERM stop any training task with a checkpoint and
//! exit 130, and `--resume` continues it.
use scratchllm_testutil::shared;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Output, Stdio};

fn scratchllm() -> Command {
    Command::new(env!("CARGO_BIN_EXE_scratchllm"))
}

/// `pretrain` of a tiny GPT on `text` into `out`, with `extra` flags.
fn pretrain(text: &Path, out: &Path, extra: &[&str]) -> Command {
    let mut c = scratchllm();
    c.args(["pretrain", "--model", "gpt2-tiny", "--context-length", "32"]);
    if !extra.contains(&"--batch-size") {
        c.args(["--batch-size", "2"]);
    }
    c.args(["--sample-prompt", "", "--data"])
        .arg(text)
        .arg("--out")
        .arg(out)
        .args(extra);
    c
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn settings_that_cannot_train_are_refused_before_any_work() {
    let Some(text) = shared("data/the-verdict.txt") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let cases: &[(&[&str], &str)] = &[
        (&["--lr", "nan"], "--lr NaN must be a positive number"),
        (
            &["--lr", "1e30"],
            "--lr 1000000000000000000000000000000 must be",
        ),
        (&["--lr=-1"], "--lr -1 must be a positive number"),
        (
            &["--min-lr", "0.01"],
            "--min-lr 0.01 must be between 0 and --lr 0.0004",
        ),
        (
            &["--grad-clip", "nan"],
            "--grad-clip NaN must be a positive number",
        ),
        (&["--weight-decay", "nan"], "--weight-decay NaN must be"),
        (&["--stride", "0"], "--stride must be at least 1"),
        (&["--batch-size", "100000"], "make no full batch of 100000"),
        (&["--stride", "100000"], "make no full batch of 2"),
    ];
    for (i, (flags, want)) in cases.iter().enumerate() {
        let run = tmp.path().join(format!("r{i}"));
        let mut args = vec!["--max-steps", "2", "--eval-every", "1"];
        args.extend_from_slice(flags);
        let out = pretrain(&text, &run, &args).output().unwrap();
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{flags:?}: {err}");
        assert!(err.contains(want), "{flags:?}: {err}");
        assert!(
            !err.contains("is intact"),
            "{flags:?} claims a checkpoint: {err}"
        );
        assert!(
            !run.join("best").exists() && !run.join("model").exists(),
            "{flags:?}"
        );
    }
    // The same for fine-tuning: a NaN rate never makes a classifier that answers "ham NaN".
    let Some(sms) = shared("data/sms-spam-collection.tsv") else {
        return;
    };
    let run = tmp.path().join("classify");
    let out = scratchllm()
        .args([
            "finetune",
            "classify",
            "--model",
            "gpt2-tiny",
            "--lr",
            "nan",
            "--max-steps",
            "1",
            "--data",
        ])
        .arg(&sms)
        .arg("--out")
        .arg(&run)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("--lr NaN"), "{}", stderr(&out));
    assert!(!run.join("config.json").exists() && !run.join("best").exists());
    // A LoRA rank wider than the model's layers is refused before any data is read.
    let out = scratchllm()
        .args([
            "finetune",
            "classify",
            "--model",
            "gpt2-tiny",
            "--trainable",
            "lora",
        ])
        .args(["--lora-rank", "100000", "--data"])
        .arg(&sms)
        .arg("--out")
        .arg(tmp.path().join("lora"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("LoRA rank 100000"),
        "{}",
        stderr(&out)
    );
}

/// Starts `cmd`, waits for its first training step on standard error, sends `signal`, and
/// returns its exit and everything it wrote to standard error.
fn interrupt(mut cmd: Command, signal: &str) -> (Option<i32>, String) {
    let mut child = cmd
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = String::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        seen += &line;
        seen.push('\n');
        if line.starts_with("step ") {
            break;
        }
    }
    let sent = Command::new("kill")
        .args([&format!("-{signal}"), &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    for line in lines {
        seen += &line.unwrap();
        seen.push('\n');
    }
    (child.wait().unwrap().code(), seen)
}

#[test]
fn ctrl_c_and_sigterm_stop_with_a_checkpoint_and_exit_130() {
    let (Some(text), Some(sms)) = (
        shared("data/the-verdict.txt"),
        shared("data/sms-spam-collection.tsv"),
    ) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    for signal in ["INT", "TERM"] {
        let run = tmp.path().join(format!("pretrain-{signal}"));
        let (code, err) = interrupt(pretrain(&text, &run, &["--epochs", "50"]), signal);
        assert_eq!(code, Some(130), "SIG{signal}: {err}");
        assert!(err.contains("stopped: checkpoint"), "SIG{signal}: {err}");
        assert!(err.contains("pretrain --resume"), "SIG{signal}: {err}");
        let checkpoints = std::fs::read_dir(run.join("checkpoints")).unwrap().count();
        assert!(checkpoints >= 1, "SIG{signal}: {err}");
    }
    // Fine-tuning stops the same way, and --resume takes it to the end.
    let run = tmp.path().join("classify");
    let mut cmd = scratchllm();
    cmd.args(["finetune", "classify", "--model", "gpt2-tiny", "--balance"])
        .args(["--max-steps", "30", "--eval-batches", "1", "--data"])
        .arg(&sms)
        .arg("--out")
        .arg(&run);
    let (code, err) = interrupt(cmd, "TERM");
    assert_eq!(code, Some(130), "{err}");
    assert!(err.contains("finetune classify --resume"), "{err}");
    let out = scratchllm()
        .args(["finetune", "classify", "--resume"])
        .arg(&run)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(run.join("results.json").is_file());
}
