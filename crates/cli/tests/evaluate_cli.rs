//! `evaluate` against a local judge that answers from a script: scores, answers that are not
//! scores, retries after errors, an unreachable judge keeping partial results, and the judge-free
//! loss and perplexity.
use scratchllm_testutil::shared;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};

/// A judge on a local port answering each request with the next (status, content) of `script`;
/// records the prompts it got. Stops after the script.
fn judge(script: Vec<(u16, &'static str)>) -> (u16, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    std::thread::spawn(move || {
        for (status, content) in script {
            let Ok((stream, _)) = listener.accept() else {
                return;
            };
            let mut reader = BufReader::new(stream);
            let mut len = 0;
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                if let Some(v) = line.to_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap();
                }
                if line == "\r\n" {
                    break;
                }
            }
            let mut body = vec![0; len];
            reader.read_exact(&mut body).unwrap();
            log.lock().unwrap().push(String::from_utf8(body).unwrap());
            let payload = if status == 200 {
                serde_json::json!({"choices": [{"index": 0, "message": {"role": "assistant", "content": content}}]}).to_string()
            } else {
                content.to_string()
            };
            let mut stream = reader.into_inner();
            let _ = write!(
                stream,
                "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{payload}",
                payload.len()
            );
        }
    });
    (port, seen)
}

fn evaluate(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_scratchllm"))
        .arg("evaluate")
        .args(args)
        .output()
        .unwrap()
}

fn responses(dir: &std::path::Path) -> String {
    let entries: Vec<serde_json::Value> = (0..3)
        .map(|i| serde_json::json!({"instruction": format!("Task {i}"), "input": "", "output": "right", "model_response": format!("answer {i}")}))
        .collect();
    let p = dir.join("responses.json");
    std::fs::write(&p, serde_json::to_string(&entries).unwrap()).unwrap();
    p.display().to_string()
}

#[test]
fn a_judge_scores_responses_and_failures_are_kept_apart() {
    let dir = tempfile::tempdir().unwrap();
    let file = responses(dir.path());
    let (port, seen) = judge(vec![
        (200, "85"),
        (500, "{\"error\": \"overloaded\"}"),
        (200, "Score: 70"),
        (200, "I cannot judge this."),
    ]);
    let url = format!("http://127.0.0.1:{port}/v1");
    let o = evaluate(&[
        "--responses",
        &file,
        "--judge-url",
        &url,
        "--judge-model",
        "judge",
        "--retries",
        "2",
    ]);
    let (out, err) = (
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
    );
    assert!(o.status.success(), "{err}");
    assert!(
        out.contains("average score 77.50 over 2 responses (1 without a score)"),
        "{out}"
    );
    assert!(
        err.contains("item 2: no score: the judge answered \"I cannot judge this.\""),
        "{err}"
    );
    let prompts = seen.lock().unwrap().clone();
    assert_eq!(prompts.len(), 4, "one retry after the 500");
    let first: serde_json::Value = serde_json::from_str(&prompts[0]).unwrap();
    assert_eq!(first["model"], "judge");
    let p = first["messages"][0]["content"].as_str().unwrap();
    assert!(p.contains("### Instruction:\nTask 0` and correct output `right`, score the model response `answer 0`"), "{p}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(format!("{file}.scores.json")).unwrap())
            .unwrap();
    assert_eq!(report["items"][0]["score"], 85);
    assert!(report["items"][2]["score"].is_null());
}

#[test]
fn an_unreachable_judge_keeps_what_was_scored_and_a_rerun_continues() {
    let dir = tempfile::tempdir().unwrap();
    let file = responses(dir.path());
    // The judge answers once, then is gone.
    let (port, _) = judge(vec![(200, "90")]);
    let url = format!("http://127.0.0.1:{port}/v1");
    let o = evaluate(&[
        "--responses",
        &file,
        "--judge-url",
        &url,
        "--judge-model",
        "j",
        "--retries",
        "1",
        "--timeout",
        "5",
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        err.contains("cannot reach the judge") && err.contains("stopped at item 1 of 3"),
        "{err}"
    );
    assert!(
        err.contains("The 1 scores so far are in") && err.contains("run again to continue"),
        "{err}"
    );
    // Run again with a judge that is back: only items 1 and 2 are asked.
    let (port, seen) = judge(vec![(200, "60"), (200, "30")]);
    let url = format!("http://127.0.0.1:{port}/v1");
    let o = evaluate(&[
        "--responses",
        &file,
        "--judge-url",
        &url,
        "--judge-model",
        "j",
    ]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        out.contains("average score 60.00 over 3 responses (0 without a score)"),
        "{out}"
    );
    assert_eq!(seen.lock().unwrap().len(), 2);
}

#[test]
fn judge_free_loss_and_perplexity_and_bad_files() {
    let dir = tempfile::tempdir().unwrap();
    let file = responses(dir.path());
    if let Some(model) = shared("fixtures/gpt2-tiny/hf") {
        let o = evaluate(&["--responses", &file, "--model", model.to_str().unwrap()]);
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        // A random-weight model: about ln(50257) = 10.8 per token.
        let loss: f64 = out
            .split("loss ")
            .nth(1)
            .unwrap()
            .split(',')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert!((9.5..12.5).contains(&loss), "{out}");
        assert!(
            out.contains("perplexity") && out.contains("3 entries, alpaca prompts"),
            "{out}"
        );
    }
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, r#"[{"instruction": "x", "output": "y"}]"#).unwrap();
    let o = evaluate(&[
        "--responses",
        bad.to_str().unwrap(),
        "--judge-url",
        "http://127.0.0.1:9/v1",
        "--judge-model",
        "j",
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("entry 0 has no string \"model_response\" to score"),
        "{err}"
    );
    let o = evaluate(&["--responses", bad.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("give a judge"));
}
