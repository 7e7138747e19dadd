//! `scratchllm serve` as a client sees it: the fixture model's greedy completion over HTTP, streamed
//! chat, stop sequences, limits, a malformed-request suite, concurrency, disconnects, and the real
//! `openai` Python client and the chat page in headless Chromium (when the test Python has them).
mod common;

use common::{fixture_model, python_check, sse_data, Server};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

impl Server {
    /// One HTTP/1.1 request; returns the status and the (de-chunked) body.
    fn request(&self, method: &str, path: &str, body: &[u8]) -> (u16, Vec<u8>) {
        let mut s = self.connect();
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        s.write_all(head.as_bytes()).unwrap();
        let _ = s.write_all(body); // a server may refuse a huge body before reading it all
        let mut raw = Vec::new();
        let _ = s.read_to_end(&mut raw);
        parse_response(&raw)
    }

    fn json(&self, path: &str, body: &Value) -> (u16, Value) {
        let (status, bytes) = self.request("POST", path, body.to_string().as_bytes());
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }
}

fn parse_response(raw: &[u8]) -> (u16, Vec<u8>) {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("no HTTP header");
    let head = String::from_utf8_lossy(&raw[..split]).to_lowercase();
    let status = head[9..12].parse().unwrap();
    let mut body = raw[split + 4..].to_vec();
    if head.contains("transfer-encoding: chunked") {
        let mut out = Vec::new();
        let mut rest = &body[..];
        while let Some(eol) = rest.windows(2).position(|w| w == b"\r\n") {
            let size = usize::from_str_radix(std::str::from_utf8(&rest[..eol]).unwrap().trim(), 16)
                .unwrap();
            if size == 0 {
                break;
            }
            out.extend_from_slice(&rest[eol + 2..eol + 2 + size]);
            rest = &rest[eol + 2 + size + 2..];
        }
        body = out;
    }
    (status, body)
}

/// The data chunks of a stream, parsed, without the final `[DONE]`.
fn stream_chunks(server: &Server, path: &str, body: &Value) -> Vec<Value> {
    let (status, raw) = server.request("POST", path, body.to_string().as_bytes());
    assert_eq!(status, 200);
    let events = sse_data(&raw);
    assert_eq!(events.last().unwrap(), "[DONE]");
    events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect()
}

#[test]
fn log_probabilities_are_transformers_and_the_same_streamed() {
    let (Some(model), Some(expected), Some(logits)) = (
        fixture_model(),
        scratchllm_testutil::shared_json("fixtures/gpt2-tiny/expected.json"),
        scratchllm_testutil::shared("fixtures/gpt2-tiny/expected-logits.safetensors"),
    ) else {
        return;
    };
    let server = Server::start(&model, &[]);
    let p = &expected["prompts"][0];
    let prompt = scratchllm_testutil::json_ids(&p["input_ids"]);
    // transformers' log-softmax at the prompt's last position.
    let all = candle_core::safetensors::load(logits, &candle_core::Device::Cpu).unwrap();
    let last: Vec<f32> = all["prompt0.logits"]
        .get(prompt.len() - 1)
        .unwrap()
        .to_vec1()
        .unwrap();
    let max = last.iter().copied().fold(f32::MIN, f32::max) as f64;
    let lse = max
        + last
            .iter()
            .map(|&x| (x as f64 - max).exp())
            .sum::<f64>()
            .ln();
    let mut want: Vec<(usize, f64)> = last
        .iter()
        .enumerate()
        .map(|(i, &x)| (i, x as f64 - lse))
        .collect();
    want.sort_by(|a, b| b.1.total_cmp(&a.1));
    let tok = scratchllm_tokenizer::gpt2().unwrap();
    let text = |id: usize| tok.decode(&[id as u32]).unwrap();

    // Completions: the first token's log-probability and its five alternatives are transformers'
    // to 1e-4; text offsets count the characters before each token.
    let (status, r) = server.json(
        "/v1/completions",
        &json!({"prompt": prompt, "max_tokens": 4, "temperature": 0, "logprobs": 5}),
    );
    assert_eq!(status, 200, "{r}");
    let lp = &r["choices"][0]["logprobs"];
    assert_eq!(lp["tokens"][0], text(want[0].0));
    assert!(
        (lp["token_logprobs"][0].as_f64().unwrap() - want[0].1).abs() < 1e-4,
        "{lp}"
    );
    let top = lp["top_logprobs"][0].as_object().unwrap();
    assert_eq!(top.len(), 5, "{lp}");
    for &(id, want) in &want[..5] {
        let got = top[&text(id)].as_f64().unwrap();
        assert!((got - want).abs() < 1e-4, "{}: {got} vs {want}", text(id));
    }
    let tokens: Vec<&str> = lp["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    assert_eq!(tokens.concat(), r["choices"][0]["text"].as_str().unwrap());
    let mut offset = 0;
    for (t, o) in tokens.iter().zip(lp["text_offset"].as_array().unwrap()) {
        assert_eq!(o.as_u64().unwrap() as usize, offset);
        offset += t.chars().count();
    }
    // Streamed: the same tokens and log-probabilities, chunk by chunk.
    let chunks = stream_chunks(
        &server,
        "/v1/completions",
        &json!({"prompt": prompt, "max_tokens": 4, "temperature": 0, "logprobs": 5, "stream": true}),
    );
    let streamed: Vec<Value> = chunks
        .iter()
        .flat_map(|c| {
            c["choices"][0]["logprobs"]["token_logprobs"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .collect();
    assert_eq!(&streamed, lp["token_logprobs"].as_array().unwrap());

    // Chat: logprobs with top_logprobs, whole and streamed alike, sampled with a seed.
    let req = json!({"messages": [{"role": "user", "content": "Name a color."}], "max_tokens": 6,
                     "temperature": 0.9, "seed": 3, "logprobs": true, "top_logprobs": 3});
    let (status, r) = server.json("/v1/chat/completions", &req);
    assert_eq!(status, 200, "{r}");
    let content = r["choices"][0]["logprobs"]["content"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(
        content.len(),
        r["usage"]["completion_tokens"].as_u64().unwrap() as usize
    );
    for t in &content {
        let top = t["top_logprobs"].as_array().unwrap();
        assert_eq!(top.len(), 3);
        let lps: Vec<f64> = top.iter().map(|x| x["logprob"].as_f64().unwrap()).collect();
        assert!(lps.windows(2).all(|w| w[0] >= w[1]), "{t}");
        assert!(t["logprob"].as_f64().unwrap() <= lps[0]);
        let bytes: Vec<u8> = t["bytes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b.as_u64().unwrap() as u8)
            .collect();
        assert_eq!(
            String::from_utf8_lossy(&bytes),
            t["token"].as_str().unwrap()
        );
    }
    let mut streamed_req = req.clone();
    streamed_req["stream"] = json!(true);
    let streamed: Vec<Value> = stream_chunks(&server, "/v1/chat/completions", &streamed_req)
        .iter()
        .flat_map(|c| {
            c["choices"][0]["logprobs"]["content"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .collect();
    assert_eq!(streamed, content);
    // Not asked: null.
    let (_, r) = server.json(
        "/v1/chat/completions",
        &json!({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}),
    );
    assert!(r["choices"][0]["logprobs"].is_null(), "{r}");

    // Counts above the limit, and alternatives without logprobs, are refused by name.
    for (path, body, param) in [
        (
            "/v1/completions",
            json!({"prompt": "Hi", "logprobs": 21}),
            "logprobs",
        ),
        (
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": "Hi"}], "logprobs": true, "top_logprobs": 21}),
            "top_logprobs",
        ),
        (
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": "Hi"}], "top_logprobs": 2}),
            "top_logprobs",
        ),
        (
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": "Hi"}], "logprobs": 3}),
            "logprobs",
        ),
    ] {
        let (status, r) = server.json(path, &body);
        assert_eq!(status, 400, "{body}: {r}");
        assert_eq!(r["error"]["param"], param, "{r}");
    }
}

#[test]
fn completions_chat_and_streams_are_openais_shapes() {
    let (Some(model), Some(expected)) = (
        fixture_model(),
        scratchllm_testutil::shared_json("fixtures/gpt2-tiny/expected.json"),
    ) else {
        return;
    };
    let server = Server::start(&model, &["--name", "tiny"]);
    let (_, models) = {
        let (s, b) = server.request("GET", "/v1/models", b"");
        (s, serde_json::from_slice::<Value>(&b).unwrap())
    };
    assert_eq!(models["data"][0]["id"], "tiny");

    // Greedy decoding over HTTP gives transformers' greedy continuation of the fixture.
    let p = &expected["prompts"][0];
    let want_ids = scratchllm_testutil::json_ids(&p["greedy_ids"]);
    let (status, r) = server.json(
        "/v1/completions",
        &json!({"model": "tiny", "prompt": p["text"], "max_tokens": want_ids.len(), "temperature": 0}),
    );
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["choices"][0]["text"], p["greedy_text"]);
    assert_eq!(r["choices"][0]["finish_reason"], "length");
    assert_eq!(r["usage"]["completion_tokens"], want_ids.len());
    assert_eq!(r["usage"]["prompt_tokens"], 4);

    // Token ids as the prompt, and a stop sequence that cuts the answer before it.
    let ids = scratchllm_testutil::json_ids(&p["input_ids"]);
    let (_, r) = server.json(
        "/v1/completions",
        &json!({"prompt": ids, "max_tokens": 20, "temperature": 0, "stop": [" Detect"]}),
    );
    assert_eq!(r["choices"][0]["text"], "oca");
    assert_eq!(r["choices"][0]["finish_reason"], "stop");

    // Sampled with a seed: the same answer twice, and the stream carries exactly it.
    let req = json!({"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a color."}],
                     "max_tokens": 12, "temperature": 0.8, "top_k": 20, "top_p": 0.95, "seed": 7});
    let (status, a) = server.json("/v1/chat/completions", &req);
    assert_eq!(status, 200, "{a}");
    let (_, b) = server.json("/v1/chat/completions", &req);
    assert_eq!(a["choices"][0]["message"], b["choices"][0]["message"]);
    assert_eq!(a["choices"][0]["message"]["role"], "assistant");
    let mut streamed = req.clone();
    streamed["stream"] = json!(true);
    let (status, body) = server.request(
        "POST",
        "/v1/chat/completions",
        streamed.to_string().as_bytes(),
    );
    assert_eq!(status, 200);
    let events = sse_data(&body);
    assert_eq!(events.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    assert!(chunks
        .iter()
        .all(|c| c["object"] == "chat.completion.chunk"));
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(
        text,
        a["choices"][0]["message"]["content"].as_str().unwrap()
    );
    assert_eq!(
        chunks.last().unwrap()["choices"][0]["finish_reason"],
        a["choices"][0]["finish_reason"]
    );

    // Completions stream too.
    let (_, body) = server.request(
        "POST",
        "/v1/completions",
        json!({"prompt": p["text"], "max_tokens": 5, "temperature": 0, "stream": true})
            .to_string()
            .as_bytes(),
    );
    let events = sse_data(&body);
    let text: String = events[..events.len() - 1]
        .iter()
        .map(|e| {
            serde_json::from_str::<Value>(e).unwrap()["choices"][0]["text"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(text, "oca Detect Detect Detect Detect");

    // Classification is for classifiers.
    let (status, r) = server.json("/v1/classify", &json!({"input": "hello"}));
    assert_eq!(status, 400);
    assert!(r["error"]["message"]
        .as_str()
        .unwrap()
        .contains("not a classifier"));
    // The page is served by the binary.
    let (status, page) = server.request("GET", "/", b"");
    assert_eq!(status, 200);
    assert!(String::from_utf8_lossy(&page).contains("/v1/chat/completions"));
    let log = server.log();
    assert!(log.contains("POST /v1/completions 200"), "{log}");
}

/// gpt2-tiny's random weights in our layout with a NaN final LayerNorm scale: every logit is NaN,
/// as in the `best/` of a diverged training run.
fn nan_model(root: &std::path::Path) -> std::path::PathBuf {
    let dir = root.join("diverged");
    let o = Command::new(env!("CARGO_BIN_EXE_scratchllm"))
        .args([
            "convert",
            "--model",
            "gpt2-tiny",
            "--to",
            "scratchllm",
            "--out",
        ])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let st = dir.join("model.safetensors");
    let dev = &candle_core::Device::Cpu;
    let mut t = scratchllm_model::weights::read_safetensors(&st, dev).unwrap();
    t.insert(
        "final_norm.scale".into(),
        candle_core::Tensor::full(f32::NAN, 64, dev).unwrap(),
    );
    scratchllm_model::weights::write_safetensors(&t, &st).unwrap();
    dir
}

#[test]
fn a_nan_model_gets_an_openai_500_and_the_server_lives_on() {
    let root = tempfile::tempdir().unwrap();
    let server = Server::start(&nan_model(root.path()), &[]);
    // Sampled with top-k (the panic in `pick`) and greedy: a 500 naming the model.
    for req in [
        json!({"prompt": "Hello", "max_tokens": 4, "temperature": 1, "top_k": 5}),
        json!({"prompt": "Hello", "max_tokens": 4, "temperature": 0}),
    ] {
        let (status, r) = server.json("/v1/completions", &req);
        assert_eq!(status, 500, "{r}");
        assert_eq!(r["error"]["type"], "server_error");
        assert_eq!(r["error"]["code"], "generation_failed");
        let m = r["error"]["message"].as_str().unwrap();
        assert!(
            m.contains("diverged/model.safetensors") && m.contains("produce NaN logits"),
            "{m}"
        );
    }
    // A stream ends with the same error as its last event, then [DONE].
    let (status, body) = server.request(
        "POST",
        "/v1/chat/completions",
        json!({"messages": [{"role": "user", "content": "Hi"}], "stream": true, "max_tokens": 4})
            .to_string()
            .as_bytes(),
    );
    assert_eq!(status, 200);
    let events = sse_data(&body);
    assert_eq!(events.last().unwrap(), "[DONE]");
    let err: Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("produce NaN logits"),
        "{err}"
    );
    // Still serving.
    assert_eq!(server.request("GET", "/health", b"").0, 200);
    let (status, _) = server.json(
        "/v1/completions",
        &json!({"prompt": "Again", "max_tokens": 2}),
    );
    assert_eq!(status, 500);
    assert!(!server.log().contains("panicked"), "{}", server.log());
}

#[test]
fn malformed_requests_get_openai_errors_and_no_panic() {
    let Some(model) = fixture_model() else {
        return;
    };
    let server = Server::start(
        &model,
        &["--max-body-bytes", "4096", "--max-tokens-limit", "100"],
    );
    let cases: Vec<(&str, Value, u16, &str, &str)> = vec![
        (
            "/v1/completions",
            json!({}),
            400,
            "prompt",
            "prompt must be a string",
        ),
        (
            "/v1/completions",
            json!({"prompt": 12}),
            400,
            "prompt",
            "prompt must be a string",
        ),
        (
            "/v1/completions",
            json!({"prompt": ""}),
            400,
            "prompt",
            "empty prompt",
        ),
        (
            "/v1/completions",
            json!({"prompt": ["a", "b"]}),
            400,
            "prompt",
            "one prompt per request",
        ),
        (
            "/v1/completions",
            json!({"prompt": [1, 99999999]}),
            400,
            "prompt",
            "outside the vocabulary",
        ),
        (
            "/v1/completions",
            json!({"prompt": "hi", "max_tokens": "ten"}),
            400,
            "max_tokens",
            "must be an integer",
        ),
        (
            "/v1/completions",
            json!({"prompt": "hi", "max_tokens": -5}),
            400,
            "max_tokens",
            "from 1 to 100",
        ),
        (
            "/v1/completions",
            json!({"prompt": "hi", "max_tokens": 1e300}),
            400,
            "max_tokens",
            "from 1 to 100",
        ),
        (
            "/v1/completions",
            json!({"prompt": "hi", "max_tokens": 101}),
            400,
            "max_tokens",
            "from 1 to 100",
        ),
        (
            "/v1/completions",
            json!({"prompt": "hi", "temperature": -1}),
            400,
            "temperature",
            "between 0 and 2",
        ),
        (
            "/v1/completions",
            json!({"prompt": "hi", "temperature": "hot"}),
            400,
            "temperature",
            "must be a number",
        ),
        (
            "/v1/completions",
            json!({"prompt": "hi", "top_p": 0}),
            400,
            "top_p",
            "greater than 0",
        ),
        (
            "/v1/completions",
            json!({"prompt": "hi", "top_p": 1.5}),
            400,
            "top_p",
            "between 0 and 1",
        ),
        (
            "/v1/completions",
            json!({"prompt": "hi", "top_k": 0}),
            400,
            "top_k",
            "from 1",
        ),
        (
            "/v1/completions",
            json!({"prompt": "hi", "seed": 1.5}),
            400,
            "seed",
            "must be an integer",
        ),
        (
            "/v1/completions",
            json!({"prompt": "hi", "seed": "x"}),
            400,
            "seed",
            "must be an integer",
        ),
        (
            "/v1/completions",
            json!({"prompt": "hi", "stop": 3}),
            400,
            "stop",
            "up to 4 strings",
        ),
        (
            "/v1/completions",
            json!({"prompt": "hi", "stop": ["a", "b", "c", "d", "e"]}),
            400,
            "stop",
            "up to 4 strings",
        ),
        (
            "/v1/completions",
            json!({"prompt": "hi", "n": 9}),
            400,
            "n",
            "n is 9; it must be a whole number from 1 to 8",
        ),
        (
            "/v1/completions",
            json!({"prompt": "hi", "stream": "yes"}),
            400,
            "stream",
            "true or false",
        ),
        (
            "/v1/completions",
            json!({"prompt": "hi", "model": "gpt-4"}),
            404,
            "model",
            "does not exist",
        ),
        (
            "/v1/completions",
            json!({"prompt": "word ".repeat(300)}),
            400,
            "prompt",
            "maximum context length is 256",
        ),
        (
            "/v1/chat/completions",
            json!({"prompt": "hi"}),
            400,
            "messages",
            "non-empty list",
        ),
        (
            "/v1/chat/completions",
            json!({"messages": []}),
            400,
            "messages",
            "messages is empty",
        ),
        (
            "/v1/chat/completions",
            json!({"messages": [{"role": "wizard", "content": "x"}]}),
            400,
            "messages[0]",
            "not system, user or assistant",
        ),
        (
            "/v1/chat/completions",
            json!({"messages": [{"content": "x"}]}),
            400,
            "messages[0]",
            "needs a role",
        ),
        (
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": 5}]}),
            400,
            "messages[0]",
            "must be a string",
        ),
        (
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": [{"type": "image"}]}]}),
            400,
            "messages[0]",
            "content parts",
        ),
        (
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": "word ".repeat(300)}]}),
            400,
            "messages",
            "context length",
        ),
    ];
    for (path, body, status, param, message) in cases {
        let (s, r) = server.json(path, &body);
        assert_eq!(s, status, "{body}: {r}");
        let e = &r["error"];
        assert_eq!(e["param"], param, "{body}: {r}");
        assert!(
            e["message"].as_str().unwrap().contains(message),
            "{body}: {r}"
        );
        assert_eq!(e["type"], "invalid_request_error");
    }
    let (_, r) = server.json("/v1/completions", &json!({"prompt": "word ".repeat(300)}));
    assert_eq!(r["error"]["code"], "context_length_exceeded");
    for (raw, message) in [
        (&b"{\"prompt\": \"\xff\xfe\"}"[..], "not valid UTF-8"),
        (b"{\"prompt\": ", "not valid JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (b"", "not valid JSON"),
    ] {
        let (s, b) = server.request("POST", "/v1/completions", raw);
        let r: Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(s, 400, "{r}");
        assert!(
            r["error"]["message"].as_str().unwrap().contains(message),
            "{r}"
        );
    }
    let (s, b) = server.request("POST", "/v1/completions", &vec![b' '; 10_000]);
    assert_eq!(s, 413);
    let r: Value = serde_json::from_slice(&b).unwrap();
    assert_eq!(r["error"]["code"], "request_too_large");
    let (s, _) = server.request("GET", "/v2/anything", b"");
    assert_eq!(s, 404);
    // After all of it, the server still answers.
    let (s, r) = server.json("/v1/completions", &json!({"prompt": "hi", "max_tokens": 2}));
    assert_eq!(s, 200, "{r}");
    assert!(!server.log().contains("panicked"), "{}", server.log());
}

#[test]
fn concurrent_clients_a_full_queue_and_disconnects() {
    let Some(model) = fixture_model() else {
        return;
    };
    // Four clients at once all get whole answers, interleaved.
    let server = Arc::new(Server::start(&model, &[]));
    let handles: Vec<_> = (0..4)
        .map(|i| {
            let s = server.clone();
            std::thread::spawn(move || {
                s.json(
                    "/v1/completions",
                    &json!({"prompt": format!("Client {i} says"), "max_tokens": 30, "seed": i}),
                )
            })
        })
        .collect();
    for h in handles {
        let (status, r) = h.join().unwrap();
        assert_eq!(status, 200, "{r}");
        assert!(r["usage"]["completion_tokens"].as_u64().unwrap() <= 30);
    }
    drop(server);

    // One at a time and a queue of one: a third simultaneous request is turned away with 503.
    let server = Arc::new(Server::start(
        &model,
        &["--max-active", "1", "--max-queue", "1"],
    ));
    let handles: Vec<_> = (0..6)
        .map(|_| {
            let s = server.clone();
            std::thread::spawn(move || {
                s.json(
                    "/v1/completions",
                    &json!({"prompt": "Once", "max_tokens": 250, "temperature": 0}),
                )
            })
        })
        .collect();
    let results: Vec<(u16, Value)> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let busy: Vec<&Value> = results
        .iter()
        .filter(|(s, _)| *s == 503)
        .map(|(_, r)| r)
        .collect();
    assert!(!busy.is_empty(), "{results:?}");
    assert!(results.iter().all(|(s, _)| *s == 200 || *s == 503));
    assert_eq!(busy[0]["error"]["code"], "queue_full");

    // A client that leaves mid-stream: its generation is dropped, the next request is served.
    // Wait for the first token (the headers come before the model takes the request off the
    // queue), so the queue is empty again when the client leaves.
    let (s, _) = server.open_stream(250);
    drop(s);
    let (status, _) = server.json("/v1/completions", &json!({"prompt": "hi", "max_tokens": 3}));
    assert_eq!(status, 200);
    let t = Instant::now();
    while !server.log().contains("client disconnected") {
        assert!(t.elapsed() < Duration::from_secs(10), "{}", server.log());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Reads one sample's value from `/metrics` (Prometheus' text format).
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("{name} not in /metrics:\n{text}"))
}

#[test]
fn batched_requests_give_what_each_gives_alone_and_metrics_count_them() {
    let Some(model) = fixture_model() else {
        return;
    };
    // Prompts of different lengths, fed 5 tokens per step; greedy and seeded sampling.
    let server = Arc::new(Server::start(
        &model,
        &["--max-active", "8", "--prefill-chunk", "5"],
    ));
    let body = |i: usize| {
        let prompt = format!("Client {i}: {}", "every effort moves you ".repeat(i));
        let sampling = if i.is_multiple_of(2) {
            json!({"temperature": 0})
        } else {
            json!({"temperature": 1.0, "top_k": 20, "seed": i})
        };
        let mut b = json!({"prompt": prompt, "max_tokens": 40, "ignore_eos": true});
        b.as_object_mut()
            .unwrap()
            .extend(sampling.as_object().unwrap().clone());
        b
    };
    let answer = |r: &Value| {
        assert_eq!(r["usage"]["completion_tokens"], 40, "ignore_eos: {r}");
        r["choices"][0]["text"].as_str().unwrap().to_string()
    };
    let alone: Vec<String> = (0..6)
        .map(|i| {
            let (status, r) = server.json("/v1/completions", &body(i));
            assert_eq!(status, 200, "{r}");
            answer(&r)
        })
        .collect();
    let (_, text) = server.request("GET", "/metrics", b"");
    let text = String::from_utf8(text).unwrap();
    let single_steps = metric(&text, "scratchllm_decode_batch_size_count");
    assert_eq!(
        metric(&text, "scratchllm_decode_batch_size_bucket{le=\"1\"}"),
        single_steps,
        "one request at a time is decoded alone"
    );
    let barrier = Arc::new(std::sync::Barrier::new(6));
    let handles: Vec<_> = (0..6)
        .map(|i| {
            let (s, b, barrier) = (server.clone(), body(i), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                s.json("/v1/completions", &b)
            })
        })
        .collect();
    for (i, h) in handles.into_iter().enumerate() {
        let (status, r) = h.join().unwrap();
        assert_eq!(status, 200, "{r}");
        assert_eq!(answer(&r), alone[i], "request {i} batched with the others");
    }
    // The six ran together: some steps decoded several sequences in one pass. (The gauges are
    // published after the step that sent the last token: wait for them to settle.)
    let t = Instant::now();
    let text = loop {
        let (status, text) = server.request("GET", "/metrics", b"");
        assert_eq!(status, 200);
        let text = String::from_utf8(text).unwrap();
        if metric(&text, "scratchllm_active_sequences") == 0.0
            || t.elapsed() > Duration::from_secs(5)
        {
            break text;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let steps = metric(&text, "scratchllm_decode_batch_size_count") - single_steps;
    let singles = metric(&text, "scratchllm_decode_batch_size_bucket{le=\"1\"}") - single_steps;
    assert!(singles < steps, "every step decoded one sequence:\n{text}");
    assert_eq!(
        metric(&text, "scratchllm_completion_tokens_total"),
        12.0 * 40.0
    );
    assert_eq!(metric(&text, "scratchllm_active_sequences"), 0.0);
    assert_eq!(metric(&text, "scratchllm_kv_cache_bytes"), 0.0);
    assert_eq!(
        metric(&text, "scratchllm_time_to_first_token_seconds_count"),
        12.0
    );
    assert_eq!(
        metric(
            &text,
            "scratchllm_requests_total{route=\"/v1/completions\",status=\"200\"}"
        ),
        12.0
    );
}

#[test]
fn streams_carry_usage_when_asked_and_bad_stream_options_are_named() {
    let Some(model) = fixture_model() else {
        return;
    };
    let server = Server::start(&model, &[]);
    let ask =
        json!({"prompt": "Every effort", "max_tokens": 7, "temperature": 0, "ignore_eos": true});
    let (status, plain) = server.json("/v1/completions", &ask);
    assert_eq!(status, 200, "{plain}");
    let chat = json!({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 5, "temperature": 0, "ignore_eos": true});
    let (_, plain_chat) = server.json("/v1/chat/completions", &chat);
    for (path, body, plain) in [
        ("/v1/completions", &ask, &plain),
        ("/v1/chat/completions", &chat, &plain_chat),
    ] {
        let mut b = body.clone();
        b["stream"] = json!(true);
        b["stream_options"] = json!({"include_usage": true});
        let (status, raw) = server.request("POST", path, b.to_string().as_bytes());
        assert_eq!(status, 200);
        let data = sse_data(&raw);
        assert_eq!(data.last().map(String::as_str), Some("[DONE]"), "{data:?}");
        let last: Value = serde_json::from_str(&data[data.len() - 2]).unwrap();
        assert_eq!(last["choices"], json!([]), "{last}");
        assert_eq!(last["usage"], plain["usage"], "{path}");
        // The chunk before it ends the choice.
        let end: Value = serde_json::from_str(&data[data.len() - 3]).unwrap();
        assert!(end["choices"][0]["finish_reason"].is_string(), "{end}");
        // Not asked: no usage chunk.
        b["stream_options"] = json!({"include_usage": false});
        let (_, raw) = server.request("POST", path, b.to_string().as_bytes());
        let data = sse_data(&raw);
        let last: Value = serde_json::from_str(&data[data.len() - 2]).unwrap();
        assert!(last.get("usage").is_none(), "{last}");
    }
    for (options, param) in [
        (json!("yes"), "stream_options"),
        (json!({"include_usage": 1}), "stream_options.include_usage"),
    ] {
        let mut b = ask.clone();
        b["stream"] = json!(true);
        b["stream_options"] = options;
        let (status, r) = server.json("/v1/completions", &b);
        assert_eq!(status, 400, "{r}");
        assert_eq!(r["error"]["param"], param);
    }
    // The penalties are checked too.
    let (status, r) = server.json(
        "/v1/completions",
        &json!({"prompt": "x", "presence_penalty": 2.5}),
    );
    assert_eq!(status, 400, "{r}");
    assert_eq!(r["error"]["param"], "presence_penalty");
}

/// The soak benchmark, shortened: 12 clients for 8 seconds, streaming and not, a fifth of the
/// streams dropped mid-way: no 5xx, every completed stream ends with `[DONE]`, and no gross growth
/// of the server's memory (the benchmark's 5% is for its 5-minute run; here 50%).
#[test]
fn a_short_soak_answers_everyone_and_ends_every_stream() {
    let Some(model) = fixture_model() else {
        return;
    };
    let server = Server::start(&model, &["--max-queue", "64"]);
    let (url, pid) = (
        format!("http://127.0.0.1:{}", server.port),
        server.child.id().to_string(),
    );
    let args = [
        url.as_str(),
        "--soak",
        "8",
        "--clients",
        "12",
        "--tokens",
        "24",
        "--pid",
        &pid,
        "--rss-growth-pct",
        "50",
    ];
    let Some(out) = python_check("bench_serve.py", "json", &args) else {
        return;
    };
    assert!(out.contains("RESULT soak_ok 1"), "{out}");
    let stats: Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert!(stats["requests"].as_u64().unwrap() > 12, "{out}");
    assert_eq!(stats["5xx"], 0, "{out}");
    assert_eq!(stats["streams"], stats["done"], "{out}");
    // The server still answers.
    let (status, _) = server.json("/v1/completions", &json!({"prompt": "hi", "max_tokens": 2}));
    assert_eq!(status, 200);
}

/// A classifier trained in seconds on a toy spam task (a tiny GPT-2 shape): its model directory.
fn toy_classifier(dir: &std::path::Path) -> std::path::PathBuf {
    std::fs::write(dir.join("toy.tsv"), scratchllm_testutil::toy_spam_tsv()).unwrap();
    std::fs::write(
        dir.join("tiny.json"),
        scratchllm_testutil::TINY_CLASSIFIER_CONFIG,
    )
    .unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_scratchllm"))
        .args(["finetune", "classify", "--model-config"])
        .arg(dir.join("tiny.json"))
        .arg("--data")
        .arg(dir.join("toy.tsv"))
        .arg("--out")
        .arg(dir.join("run"))
        .args(["--trainable", "all", "--lr", "2e-3", "--epochs", "2"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    dir.join("run").join("model")
}

#[test]
fn a_classifier_model_gets_the_classification_page() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&toy_classifier(dir.path()), &[]);
    let (status, page) = server.request("GET", "/", b"");
    assert_eq!(status, 200);
    let page = String::from_utf8(page).unwrap();
    assert!(
        page.contains("<title>scratchllm classifier</title>"),
        "{page}"
    );
    let texts = [
        "WIN a FREE prize 99! Call 09060099 now to claim your cash",
        "are we still meeting at 5 tonight? see you soon",
        "lunch?",
    ];
    let (status, r) = server.json("/v1/classify", &json!({ "input": texts }));
    assert_eq!(status, 200, "{r}");
    let data = r["data"].as_array().unwrap();
    let labels: Vec<&str> = data.iter().map(|d| d["label"].as_str().unwrap()).collect();
    let probs: Vec<Vec<f64>> = data
        .iter()
        .map(|d| {
            ["ham", "spam"]
                .iter()
                .map(|l| d["probabilities"][l].as_f64().unwrap())
                .collect()
        })
        .collect();
    assert_eq!(&labels[..2], ["spam", "ham"], "{r}");
    let expected = json!({"texts": texts, "labels": labels, "probabilities": probs}).to_string();
    let shot = common::artifact("classify-page.png");
    let url = format!("http://127.0.0.1:{}/", server.port);
    let args = [url.as_str(), shot.to_str().unwrap(), expected.as_str()];
    if let Some(out) = python_check("check_classify_page.py", "selenium", &args) {
        assert!(out.contains("classify page: ok"), "{out}");
    }
}

/// `n` choices: the prompt read once, choice k sampling with the request's seed plus k, each
/// exactly what a one-choice request with that seed gives; streamed with their indices.
#[test]
fn n_choices_share_the_prompt_and_each_is_its_seed() {
    let Some(model) = fixture_model() else {
        return;
    };
    let server = Server::start(&model, &[]);
    let ask = |n: usize, seed: u64| {
        json!({"prompt": "Every effort moves you", "max_tokens": 12, "temperature": 1.0,
               "seed": seed, "n": n, "ignore_eos": true})
    };
    let prompt_tokens = |s: &Server| {
        let (_, text) = s.request("GET", "/metrics", b"");
        metric(
            &String::from_utf8(text).unwrap(),
            "scratchllm_prompt_tokens_total",
        )
    };
    let before = prompt_tokens(&server);
    let (status, three) = server.json("/v1/completions", &ask(3, 40));
    assert_eq!(status, 200, "{three}");
    let prompt_len = three["usage"]["prompt_tokens"].as_f64().unwrap();
    assert_eq!(
        prompt_tokens(&server) - before,
        prompt_len,
        "the prompt is read once"
    );
    assert_eq!(three["usage"]["completion_tokens"], 36);
    let choices = three["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 3);
    for (k, c) in choices.iter().enumerate() {
        assert_eq!(c["index"], k);
        let (_, one) = server.json("/v1/completions", &ask(1, 40 + k as u64));
        assert_eq!(c["text"], one["choices"][0]["text"], "choice {k}");
    }
    assert_ne!(choices[0]["text"], choices[1]["text"], "{three}");
    // Streamed: each index's pieces make its text, and each ends with a finish_reason.
    let mut b = ask(3, 40);
    b["stream"] = json!(true);
    let (status, raw) = server.request("POST", "/v1/completions", b.to_string().as_bytes());
    assert_eq!(status, 200);
    let mut texts = vec![String::new(); 3];
    let mut ends = vec![0; 3];
    for d in sse_data(&raw).iter().filter(|d| *d != "[DONE]") {
        let v: Value = serde_json::from_str(d).unwrap();
        let c = &v["choices"][0];
        let i = c["index"].as_u64().unwrap() as usize;
        texts[i] += c["text"].as_str().unwrap();
        ends[i] += usize::from(c["finish_reason"].is_string());
    }
    assert_eq!(ends, [1, 1, 1]);
    for (k, t) in texts.iter().enumerate() {
        assert_eq!(
            t,
            choices[k]["text"].as_str().unwrap(),
            "streamed choice {k}"
        );
    }
    // Chat: as many messages.
    let (status, chat) = server.json(
        "/v1/chat/completions",
        &json!({"messages": [{"role": "user", "content": "Hi"}], "n": 2, "max_tokens": 4}),
    );
    assert_eq!(status, 200, "{chat}");
    assert_eq!(chat["choices"].as_array().unwrap().len(), 2);
    assert_eq!(chat["choices"][1]["index"], 1);
}

/// A KV-cache budget that holds one sequence: the others wait in the queue, and all are served.
#[test]
fn requests_wait_for_kv_cache_memory() {
    let Some(model) = fixture_model() else {
        return;
    };
    // gpt2-tiny: 2 layers x (k, v) x 64 floats = 1 KiB per position; each request below takes
    // about 203 KiB, 0.3 MiB (307 KiB) holds one.
    let server = Arc::new(Server::start(&model, &["--kv-cache-mb", "0.3"]));
    let handles: Vec<_> = (0..3)
        .map(|i| {
            let s = server.clone();
            std::thread::spawn(move || {
                s.json(
                    "/v1/completions",
                    &json!({"prompt": format!("Client {i}"), "max_tokens": 200, "ignore_eos": true, "temperature": 0}),
                )
            })
        })
        .collect();
    for h in handles {
        let (status, r) = h.join().unwrap();
        assert_eq!(status, 200, "{r}");
        assert_eq!(r["usage"]["completion_tokens"], 200);
    }
    let (_, text) = server.request("GET", "/metrics", b"");
    let text = String::from_utf8(text).unwrap();
    // Never two at once: every decode step had one sequence.
    assert_eq!(
        metric(&text, "scratchllm_decode_batch_size_bucket{le=\"1\"}"),
        metric(&text, "scratchllm_decode_batch_size_count"),
        "{text}"
    );
    assert_eq!(metric(&text, "scratchllm_kv_cache_budget_bytes"), 314572.0);
}

#[test]
fn the_openai_python_client_works_against_the_server() {
    let Some(model) = fixture_model() else {
        return;
    };
    let server = Server::start(&model, &["--name", "tiny"]);
    let url = format!("http://127.0.0.1:{}/v1", server.port);
    if let Some(out) = python_check("check_openai_client.py", "openai", &[&url]) {
        assert!(out.contains("openai client: ok"), "{out}");
    }
}

#[test]
fn the_chat_page_streams_an_answer_in_headless_chromium() {
    let Some(model) = fixture_model() else {
        return;
    };
    let server = Server::start(&model, &[]);
    let url = format!("http://127.0.0.1:{}/", server.port);
    let shot = common::artifact("chat-page.png");
    if let Some(out) = python_check(
        "check_chat_page.py",
        "selenium",
        &[&url, shot.to_str().unwrap()],
    ) {
        assert!(out.contains("chat page: ok"), "{out}");
        assert!(std::fs::metadata(&shot).unwrap().len() > 1000);
    }
}
