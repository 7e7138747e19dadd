//! The command line against broken models, absurd numbers, closed pipes, full disks, hung servers
//! and strange paths (issue 19), through the built binary: each ends with a named error (or,
//! for a closed pipe, quietly), never a panic (status 101) or a hang.
use candle_core::{DType, Device, Tensor};
use scratchllm_model::classifier::{ClassifierSpec, TokenPosition};
use scratchllm_model::{modeldir, weights, GptConfig, Weights};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_scratchllm"))
}

fn run(args: &[&str]) -> Output {
    bin().args(args).output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Fails with status 1 (not a panic's 101) and says all of `needles` on stderr.
fn fails_saying(o: &Output, needles: &[&str]) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    for n in needles {
        assert!(err.contains(n), "missing {n:?} in: {err}");
    }
}

/// gpt2-tiny's random weights in our layout, with the final LayerNorm's scale set to `scale`: NaN
/// makes every logit NaN, as a diverged training run's `best/` does.
fn model_dir(root: &Path, name: &str, scale: f32, classes: Option<usize>) -> PathBuf {
    let lm = GptConfig {
        tie_embeddings: classes.is_none(),
        ..GptConfig::preset("gpt2-tiny").unwrap()
    };
    let dev = &Device::Cpu;
    let mut t = Weights::random(&lm, 1, dev).unwrap().into_tensors();
    let c = lm.emb_dim;
    t.insert(
        "final_norm.scale".into(),
        Tensor::full(scale, c, dev).unwrap(),
    );
    let cfg = GptConfig {
        num_classes: classes,
        ..lm
    };
    let classifier = classes.map(|n| {
        t.insert(
            "out_head.weight".into(),
            Tensor::ones((n, c), DType::F32, dev).unwrap(),
        );
        t.insert(
            "out_head.bias".into(),
            Tensor::zeros(n, DType::F32, dev).unwrap(),
        );
        ClassifierSpec {
            labels: vec!["ham".into(), "spam".into()],
            token_position: TokenPosition::Last,
            average_embeddings: false,
            max_length: 32,
            pad_id: 50256,
        }
    });
    let dir = root.join(name);
    let tok = scratchllm_tokenizer::gpt2().unwrap();
    let meta = modeldir::Meta {
        classifier,
        prompt_style: None,
    };
    modeldir::save_with(&dir, &cfg, &t, &tok, &meta).unwrap();
    dir
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn a_nan_model_is_named_by_generate_classify_evaluate_and_chat() {
    let root = tempfile::tempdir().unwrap();
    let lm = model_dir(root.path(), "best", f32::NAN, None);
    // The issue's command (index out of bounds in `pick` before), and greedy decoding.
    for extra in [&["--temperature", "1", "--top-k", "5"][..], &[]] {
        let mut args = vec!["generate", "--model", s(&lm), "--prompt", "x"];
        args.extend(extra);
        fails_saying(
            &run(&args),
            &["the weights of", "model.safetensors", "produce NaN logits"],
        );
    }
    // classify printed `ham NaN` and exited 0.
    let clf = model_dir(root.path(), "clf", f32::NAN, Some(2));
    let o = run(&["classify", "--model", s(&clf), "win a prize"]);
    fails_saying(&o, &["clf/model.safetensors", "produce NaN logits (2 of 2"]);
    assert!(
        o.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    // evaluate printed a NaN loss and perplexity.
    let responses = root.path().join("responses.json");
    std::fs::write(
        &responses,
        r#"[{"instruction": "Name a color.", "input": "", "output": "Blue."}]"#,
    )
    .unwrap();
    fails_saying(
        &run(&["evaluate", "--responses", s(&responses), "--model", s(&lm)]),
        &["the weights of", "produce a NaN loss"],
    );
    // chat ends its first answer with the error.
    let mut child = bin()
        .args(["chat", "--model", s(&lm)])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(b"Hello there\n").unwrap();
    }
    fails_saying(&child.wait_with_output().unwrap(), &["produce NaN logits"]);
}

/// Spawns `args` with standard output piped, reads `bytes` of it, closes the pipe and waits at
/// most `limit` for the exit.
fn read_then_close(args: &[&str], bytes: usize, limit: Duration) -> Output {
    let mut child = bin()
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut got = vec![0u8; bytes];
    let mut read = 0;
    while read < bytes {
        match out.read(&mut got[read..]) {
            Ok(0) | Err(_) => break,
            Ok(n) => read += n,
        }
    }
    drop(out);
    wait_at_most(child, limit)
}

/// The child's output, or a failed test (after killing it) when it runs past `limit`.
fn wait_at_most(mut child: Child, limit: Duration) -> Output {
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > limit {
            let _ = child.kill();
            panic!(
                "still running after {limit:?}: {}",
                stderr(&child.wait_with_output().unwrap())
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

#[test]
fn an_astronomical_max_new_tokens_streams_until_the_reader_leaves() {
    // usize::MAX panicked with a capacity overflow; 10^12 aborted allocating 4 TB.
    for n in ["18446744073709551615", "1000000000000"] {
        let o = read_then_close(
            &[
                "generate",
                "--model",
                "gpt2-tiny",
                "--prompt",
                "Hi",
                "--max-new-tokens",
                n,
            ],
            40,
            Duration::from_secs(120),
        );
        assert!(o.status.success(), "{n}: {:?} {}", o.status, stderr(&o));
        assert!(!stderr(&o).contains("panicked"));
    }
}

/// Runs `args` with standard output's reader already gone.
fn into_closed_pipe(args: &[&str]) -> Output {
    let mut child = bin()
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    wait_at_most(child, Duration::from_secs(120))
}

/// Runs `args` with standard output on a full device.
fn into_full_device(args: &[&str]) -> Option<Output> {
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .ok()?;
    Some(bin().args(args).stdout(full).output().unwrap())
}

#[test]
fn closed_pipes_end_quietly_and_full_disks_are_write_errors() {
    let root = tempfile::tempdir().unwrap();
    let text = root.path().join("t.txt");
    std::fs::write(&text, "Hello, world. ".repeat(50)).unwrap();
    let ids = root.path().join("ids.txt");
    std::fs::write(&ids, "15496 11 995").unwrap();
    let export = root.path().join("export");
    let commands: Vec<Vec<&str>> = vec![
        vec!["model", "info", "--model", "gpt2-tiny"],
        vec!["tokenizer", "info"],
        vec!["tokenizer", "export", "--out", s(&export)],
        vec!["data", "list"],
        vec!["tokenize", s(&text)],
        vec!["detokenize", s(&ids)],
        vec![
            "generate",
            "--model",
            "gpt2-tiny",
            "--prompt",
            "Hi",
            "--max-new-tokens",
            "3",
        ],
        vec![
            "generate",
            "--model",
            "gpt2-tiny",
            "--prompt",
            "Hi",
            "--max-new-tokens",
            "3",
            "--format",
            "ids",
        ],
        vec!["bench", "tokenizer", s(&text), "--repeat", "1"],
    ];
    for args in &commands {
        // `| head -1`: "failed printing to stdout: Broken pipe", status 101 before.
        let o = into_closed_pipe(args);
        let err = stderr(&o);
        assert!(
            o.status.success() && !err.contains("error") && !err.contains("panicked"),
            "{args:?}: {:?} {err}",
            o.status
        );
        // `> /dev/full`: a panic, or "cannot read …: No space left on device", before.
        let Some(o) = into_full_device(args) else {
            eprintln!("SKIPPED: /dev/full is not writable here");
            return;
        };
        fails_saying(
            &o,
            &[
                "error: cannot write to standard output",
                "No space left on device",
            ],
        );
    }
}

#[test]
fn data_get_gives_up_on_a_mirror_that_never_answers() {
    // A server that accepts connections and never says a word.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mirror = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming().take(8).flatten() {
            held.push(stream);
        }
    });
    let cache = tempfile::tempdir().unwrap();
    let child = bin()
        .args([
            "data",
            "get",
            "the-verdict",
            "--mirror",
            &mirror,
            "--timeout",
            "0.5",
            "--retries",
            "1",
            "--cache-dir",
            s(cache.path()),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // It hung forever before; now it must end well within a minute.
    let o = wait_at_most(child, Duration::from_secs(60));
    fails_saying(
        &o,
        &[
            &mirror,
            "the server did not answer in time",
            "gave up after 2 attempts",
            "retrying in",
        ],
    );
    for bad in ["--timeout=0", "--timeout=-1", "--timeout=nan"] {
        fails_saying(
            &run(&["data", "get", "the-verdict", bad]),
            &["--timeout", "must be a number of seconds"],
        );
    }
}

#[test]
fn strange_model_paths_say_what_they_are_and_what_was_expected() {
    // "no such file" before.
    fails_saying(
        &run(&["model", "info", "--model", "/dev/zero"]),
        &[
            "/dev/zero: is a character device, not a regular file or a directory",
            "expected a model directory or a .safetensors file",
        ],
    );
    // A Hugging Face directory without its config.json: "tensor tok_emb.weight is missing (not
    // the book's layout?)" before.
    let root = tempfile::tempdir().unwrap();
    let hf = root.path().join("hf");
    let o = run(&[
        "convert",
        "--model",
        "gpt2-tiny",
        "--to",
        "hf",
        "--out",
        s(&hf),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    std::fs::remove_file(hf.join("config.json")).unwrap();
    fails_saying(
        &run(&["model", "info", "--model", s(&hf)]),
        &[
            "looked for",
            "Hugging Face's GPT-2 names",
            "has no config.json",
        ],
    );
    // An epsilon of -1 in its config.json was accepted.
    let o = run(&[
        "convert",
        "--model",
        "gpt2-tiny",
        "--to",
        "hf",
        "--out",
        s(&hf),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let cfg_path = hf.join("config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    cfg["layer_norm_epsilon"] = serde_json::json!(-1);
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    fails_saying(
        &run(&[
            "generate",
            "--model",
            s(&hf),
            "--prompt",
            "Hi",
            "--max-new-tokens",
            "1",
        ]),
        &["layer_norm_epsilon -1 must be a positive number"],
    );
}

#[test]
fn more_threads_than_cpus_are_capped_with_a_warning() {
    let o = run(&[
        "--threads",
        "100000",
        "model",
        "info",
        "--model",
        "gpt2-tiny",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains("warning: --threads 100000 is more than the")
            && err.contains("logical CPUs this process may use; using"),
        "{err}"
    );
    let o = run(&["--threads", "1", "model", "info", "--model", "gpt2-tiny"]);
    assert!(o.status.success() && o.stderr.is_empty(), "{}", stderr(&o));
}

#[test]
fn a_model_weights_file_that_is_not_a_model_names_its_tensors() {
    let root = tempfile::tempdir().unwrap();
    let file = root.path().join("other.safetensors");
    let mut t = std::collections::HashMap::new();
    t.insert(
        "encoder.layer.0.weight".to_string(),
        Tensor::zeros((2, 2), DType::F32, &Device::Cpu).unwrap(),
    );
    weights::write_safetensors(&t, &file).unwrap();
    fails_saying(
        &run(&["model", "info", "--model", s(&file)]),
        &["none of the known names", "encoder.layer.0.weight"],
    );
}

#[test]
fn serve_refuses_a_queue_it_cannot_make() {
    // 2^64-1 panicked in tokio's channel (in the model thread, so the server said "loading"
    // forever); 0 was silently taken as 1.
    let root = tempfile::tempdir().unwrap();
    let lm = model_dir(root.path(), "lm", 1.0, None);
    for q in ["18446744073709551615", "0"] {
        let child = bin()
            .args(["serve", "--port", "0", "--model", s(&lm), "--max-queue", q])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        fails_saying(
            &wait_at_most(child, Duration::from_secs(60)),
            &[&format!("the queue length {q} must be in 1..=1048576")],
        );
    }
}

#[test]
fn tokenizer_train_with_an_astronomical_vocab_size_stops_when_the_corpus_does() {
    // `Vec::with_capacity(vocab_size - 257)`: a capacity-overflow panic before.
    let root = tempfile::tempdir().unwrap();
    let text = root.path().join("t.txt");
    std::fs::write(&text, "hello world hello there").unwrap();
    let out = root.path().join("tok");
    let o = run(&[
        "tokenizer",
        "train",
        "--input",
        s(&text),
        "--vocab-size",
        "18446744073709551615",
        "--out",
        s(&out),
        "--quiet",
    ]);
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("the corpus ran out of pairs"), "{err}");
}

#[test]
fn evaluate_refuses_a_judge_timeout_the_clock_cannot_hold() {
    // Instant + Duration::from_secs(2^64 - 1) panicked ("overflow when adding duration to instant").
    let root = tempfile::tempdir().unwrap();
    let responses = root.path().join("r.json");
    std::fs::write(
        &responses,
        r#"[{"instruction": "a", "input": "", "output": "b", "model_response": "c"}]"#,
    )
    .unwrap();
    for t in ["18446744073709551615", "0"] {
        fails_saying(
            &run(&[
                "evaluate",
                "--responses",
                s(&responses),
                "--judge-url",
                "http://127.0.0.1:9/v1",
                "--judge-model",
                "j",
                "--retries",
                "0",
                "--timeout",
                t,
            ]),
            &[&format!("--timeout {t} must be in 1..=86400 seconds")],
        );
    }
}
