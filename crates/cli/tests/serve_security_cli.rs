//! `scratchllm serve`'s access control and limits as a client sees them, over raw TCP so that every
//! header is exactly what the test writes: API keys (flags, a file, the environment), the refusal
//! to serve a public address without one, `Content-Type`, the Host check, CORS, oversized bodies
//! and slow clients, the connection cap, requests in progress per key, and graceful shutdown on
//! SIGTERM; then the `openai` Python client and the chat page with a key.
mod common;

use common::{fixture_model, python_check, serve_command, sse_data, Server};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

const JSON: &str = "Content-Type: application/json";

impl Server {
    /// One request with exactly these header lines (plus `Host: localhost` unless one is given,
    /// the body's length, and `Connection: close`).
    fn http(&self, method: &str, path: &str, headers: &[&str], body: &str) -> Reply {
        let mut head = format!("{method} {path} HTTP/1.1\r\n");
        if !headers
            .iter()
            .any(|h| h.to_lowercase().starts_with("host:"))
        {
            head += "Host: localhost\r\n";
        }
        for h in headers {
            head += &format!("{h}\r\n");
        }
        head += &format!(
            "Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        self.raw(head.as_bytes())
    }

    /// Sends raw bytes and reads until the server closes the connection.
    fn raw(&self, bytes: &[u8]) -> Reply {
        let mut s = self.connect();
        s.write_all(bytes).unwrap();
        Reply::read(&mut s)
    }
}

/// A response: status, lowercased head, de-chunked body.
#[derive(Debug)]
struct Reply {
    status: u16,
    head: String,
    body: Vec<u8>,
}

impl Reply {
    fn read(s: &mut TcpStream) -> Reply {
        let mut raw = Vec::new();
        let _ = s.read_to_end(&mut raw);
        Reply::parse(&raw)
    }

    fn parse(raw: &[u8]) -> Reply {
        let split = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .unwrap_or_else(|| panic!("no HTTP header in {:?}", String::from_utf8_lossy(raw)));
        let head = String::from_utf8_lossy(&raw[..split]).to_lowercase();
        let status = head[9..12].parse().unwrap();
        let mut body = raw[split + 4..].to_vec();
        if head.contains("transfer-encoding: chunked") {
            let mut out = Vec::new();
            let mut rest = &body[..];
            while let Some(eol) = rest.windows(2).position(|w| w == b"\r\n") {
                let size_text = std::str::from_utf8(&rest[..eol]).unwrap().trim();
                let size = usize::from_str_radix(size_text, 16).unwrap();
                if size == 0 || rest.len() < eol + 2 + size {
                    break;
                }
                out.extend_from_slice(&rest[eol + 2..eol + 2 + size]);
                rest = &rest[(eol + 4 + size).min(rest.len())..];
            }
            body = out;
        }
        Reply { status, head, body }
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    fn header(&self, name: &str) -> Option<&str> {
        let prefix = format!("{}: ", name.to_lowercase());
        self.head
            .lines()
            .find_map(|l| l.strip_prefix(prefix.as_str()))
    }

    /// The error's `code`, after checking the body is OpenAI's error shape.
    fn error_code(&self) -> String {
        let e = &self.json()["error"];
        assert!(
            e["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{self:?}"
        );
        assert!(
            e["type"].is_string() && e.get("param").is_some(),
            "{self:?}"
        );
        e["code"].as_str().unwrap_or_default().to_string()
    }

    fn message(&self) -> String {
        self.json()["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }
}

/// The `data:` payloads of a server-sent event stream.
fn completion(max_tokens: usize) -> String {
    json!({"prompt": "Every effort moves you", "max_tokens": max_tokens, "temperature": 0})
        .to_string()
}

#[test]
fn keys_guard_v1_and_leave_health_and_the_page_open() {
    let Some(model) = fixture_model() else {
        return;
    };
    let server = Server::start(
        &model,
        &["--api-key", "sk-alpha-1", "--api-key", "sk-beta-22"],
    );
    let body = completion(3);
    for (headers, why) in [
        (vec![], "no Authorization"),
        (
            vec!["Authorization: Bearer sk-alpha-2"],
            "last byte differs",
        ),
        (vec!["Authorization: Bearer sk-alpha-"], "a prefix of a key"),
        (vec!["Authorization: Bearer sk-alpha-11"], "a key and more"),
        (
            vec!["Authorization: Bearer sk-beta-22 sk-alpha-1"],
            "two keys",
        ),
        (
            vec!["Authorization: Basic c2stYWxwaGEtMQ=="],
            "another scheme",
        ),
        (vec!["Authorization: Bearer"], "no token"),
        (vec!["Authorization: Bearer   "], "a blank token"),
        (vec!["Authorization: sk-alpha-1"], "no scheme"),
    ] {
        for (method, path, ct) in [
            ("GET", "/v1/models", None),
            ("POST", "/v1/completions", Some(JSON)),
        ] {
            let h: Vec<&str> = headers.iter().copied().chain(ct).collect();
            let r = server.http(method, path, &h, if ct.is_some() { &body } else { "" });
            assert_eq!(r.status, 401, "{why} {path}: {r:?}");
            assert_eq!(r.error_code(), "invalid_api_key", "{why}");
            assert_eq!(r.json()["error"]["type"], "invalid_request_error");
            assert_eq!(r.json()["error"]["param"], Value::Null);
            assert_eq!(r.header("www-authenticate"), Some("bearer"), "{why}");
        }
    }
    let r = server.http(
        "GET",
        "/v1/models",
        &["Authorization: Bearer sk-alpha-2"],
        "",
    );
    assert!(
        r.message().starts_with("Incorrect API key provided"),
        "{r:?}"
    );
    let r = server.http("GET", "/v1/models", &[], "");
    assert!(r.message().contains("didn't provide an API key"), "{r:?}");
    // Bytes outside ASCII in the header: refused as malformed, not a panic.
    let r = server.raw(
        b"GET /v1/models HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer sk-alpha-\xc3\xa9\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(r.status, 401, "{r:?}");
    assert!(r.message().contains("malformed"), "{r:?}");
    // Unknown /v1 paths ask for the key before saying there is nothing there.
    assert_eq!(server.http("GET", "/v1/nothing", &[], "").status, 401);

    for key in ["sk-alpha-1", "sk-beta-22"] {
        let auth = format!("Authorization: Bearer {key}");
        let r = server.http("GET", "/v1/models", &[&auth], "");
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.json()["data"][0]["object"], "model");
        let r = server.http("POST", "/v1/completions", &[&auth, JSON], &body);
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.json()["usage"]["completion_tokens"], 3);
    }
    // The scheme is case-insensitive (RFC 7235).
    let r = server.http(
        "GET",
        "/v1/models",
        &["Authorization: bearer sk-beta-22"],
        "",
    );
    assert_eq!(r.status, 200);

    let health = server.http("GET", "/health", &[], "");
    assert_eq!(
        (health.status, health.json()["status"].clone()),
        (200, json!("ok"))
    );
    let page = server.http("GET", "/", &[], "");
    assert_eq!(page.status, 200);
    let page = String::from_utf8_lossy(&page.body);
    assert!(
        page.contains("id=\"key\"") && page.contains("Bearer"),
        "the page has no key field"
    );
    let log = server.log();
    assert!(
        !log.contains("sk-alpha-1") && !log.contains("sk-beta-22"),
        "{log}"
    );
}

#[test]
fn keys_come_from_files_and_the_environment_and_bad_ones_stop_the_start() {
    let Some(model) = fixture_model() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("keys.txt");
    std::fs::write(
        &file,
        "# team keys\n\nsk-file-one\n   sk-file-two  \n#sk-commented\n",
    )
    .unwrap();
    let f = file.to_str().unwrap();
    let server = Server::start_with_env(
        &model,
        &["--api-key-file", f],
        &[("SCRATCHLLM_API_KEY", "sk-from-env")],
    );
    for (key, status) in [
        ("sk-file-one", 200),
        ("sk-file-two", 200),
        ("sk-from-env", 200),
        ("sk-commented", 401),
        ("#", 401),
        ("team", 401),
    ] {
        let r = server.http(
            "GET",
            "/v1/models",
            &[&format!("Authorization: Bearer {key}")],
            "",
        );
        assert_eq!(r.status, status, "{key}: {r:?}");
    }
    assert_eq!(server.http("GET", "/v1/models", &[], "").status, 401);
    drop(server);

    // The environment alone is enough.
    let server = Server::start_with_env(&model, &[], &[("SCRATCHLLM_API_KEY", "sk-env-only")]);
    assert_eq!(server.http("GET", "/v1/models", &[], "").status, 401);
    let r = server.http(
        "GET",
        "/v1/models",
        &["Authorization: Bearer sk-env-only"],
        "",
    );
    assert_eq!(r.status, 200);
    drop(server);

    // A missing, an empty and a bad key file each stop the start with a message naming the file.
    let empty = dir.path().join("empty.txt");
    std::fs::write(&empty, "# nothing yet\n\n").unwrap();
    let spaced = dir.path().join("spaced.txt");
    std::fs::write(&spaced, "sk-ok\nsk bad\n").unwrap();
    let missing = dir.path().join("missing.txt");
    for (path, says) in [
        (&missing, "cannot read the API key file"),
        (&empty, "holds no keys"),
        (&spaced, "line 2"),
    ] {
        let out = serve_command(&model, &["--api-key-file", path.to_str().unwrap()], &[])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(
            err.contains(path.to_str().unwrap()) && err.contains(says),
            "{err}"
        );
        assert!(!err.contains("listening"), "{err}");
    }
}

#[test]
fn a_public_address_needs_a_key_or_an_explicit_opt_out() {
    let Some(model) = fixture_model() else {
        return;
    };
    let t = Instant::now();
    let out = serve_command(&model, &["--host", "0.0.0.0"], &[])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("refusing to serve on 0.0.0.0 without an API key")
            && err.contains("--allow-unauthenticated")
            && err.contains("--api-key"),
        "{err}"
    );
    assert!(t.elapsed() < Duration::from_secs(10));

    // Opted out: served; every interface answers IP literals and local names, not other names.
    let server = Server::start(
        &model,
        &[
            "--host",
            "0.0.0.0",
            "--allow-unauthenticated",
            "--allowed-host",
            "box.lan",
        ],
    );
    assert!(server.log().contains("listening on http://0.0.0.0:"));
    for (host, status) in [
        ("localhost", 200),
        ("127.0.0.1:9", 200),
        ("192.168.7.9:8080", 200),
        ("[fe80::1]:8080", 200),
        ("box.lan:8080", 200),
        ("evil.example", 403),
        ("evil.example:8080", 403),
    ] {
        let r = server.http("GET", "/v1/models", &[&format!("Host: {host}")], "");
        assert_eq!(r.status, status, "{host}: {r:?}");
    }
    drop(server);

    // With a key, any Host will do: a browser page on a rebound name has no key.
    let server = Server::start(&model, &["--host", "0.0.0.0", "--api-key", "sk-public"]);
    let r = server.http(
        "GET",
        "/v1/models",
        &["Host: api.example.com", "Authorization: Bearer sk-public"],
        "",
    );
    assert_eq!(r.status, 200, "{r:?}");
    let r = server.http("GET", "/v1/models", &["Host: api.example.com"], "");
    assert_eq!(r.status, 401, "{r:?}");
}

#[test]
fn json_content_type_and_host_names_are_checked() {
    let Some(model) = fixture_model() else {
        return;
    };
    let server = Server::start(&model, &["--allowed-host", "My-Box.lan"]);
    let body = completion(2);
    for (ct, status) in [
        (Some("Content-Type: text/plain"), 415),
        (Some("Content-Type: application/x-www-form-urlencoded"), 415),
        (Some("Content-Type: application/jsonx"), 415),
        (None, 415),
        (Some(JSON), 200),
        (Some("Content-Type: application/json; charset=utf-8"), 200),
        (Some("Content-Type: Application/JSON"), 200),
    ] {
        let r = server.http(
            "POST",
            "/v1/chat/completions",
            ct.as_slice(),
            &json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}).to_string(),
        );
        assert_eq!(r.status, status, "{ct:?}: {r:?}");
        if status == 415 {
            assert_eq!(r.error_code(), "unsupported_media_type");
            let m = r.message();
            match ct {
                Some(ct) => assert!(m.contains(&format!("{:?}", &ct[14..])), "{m}"),
                None => assert!(m.contains("no Content-Type"), "{m}"),
            }
        }
    }
    // GETs carry no body and need no Content-Type.
    assert_eq!(server.http("GET", "/v1/models", &[], "").status, 200);

    for (host, status) in [
        ("localhost", 200),
        ("LOCALHOST:1234", 200),
        ("127.0.0.1", 200),
        ("127.0.0.1:8080", 200),
        ("[::1]", 200),
        ("[::1]:8080", 200),
        ("my-box.lan", 200),
        ("evil.example", 403),
        ("localhost.evil.example:8080", 403),
        ("127.0.0.2", 403),
        ("192.168.1.4", 403),
        ("localhost:http", 403),
        ("", 403),
    ] {
        let h = format!("Host: {host}");
        for (method, path, body) in [
            ("GET", "/v1/models", ""),
            ("POST", "/v1/completions", body.as_str()),
            ("GET", "/", ""),
        ] {
            let r = server.http(method, path, &[&h, JSON], body);
            assert_eq!(r.status, status, "{host} {path}: {r:?}");
            if status == 403 {
                assert_eq!(r.error_code(), "host_not_allowed");
                assert!(r.message().contains("--allowed-host"), "{r:?}");
            }
        }
    }
    let r = server.http("POST", "/v1/completions", &[JSON], &body);
    assert_eq!(r.status, 200, "{r:?}");
}

#[test]
fn cors_answers_only_listed_origins() {
    let Some(model) = fixture_model() else {
        return;
    };
    let preflight = |server: &Server, origin: &str| {
        server.http(
            "OPTIONS",
            "/v1/chat/completions",
            &[
                &format!("Origin: {origin}"),
                "Access-Control-Request-Method: POST",
                "Access-Control-Request-Headers: authorization, content-type",
            ],
            "",
        )
    };
    // CORS off: no preflight passes, and no response names an origin.
    let server = Server::start(&model, &[]);
    let r = preflight(&server, "http://app.example");
    assert_eq!(r.status, 403, "{r:?}");
    assert_eq!(r.error_code(), "cors_origin_not_allowed");
    assert_eq!(r.header("access-control-allow-origin"), None);
    let r = server.http("GET", "/v1/models", &["Origin: http://app.example"], "");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("access-control-allow-origin"), None);
    drop(server);

    let server = Server::start(
        &model,
        &[
            "--cors-origin",
            "http://app.example",
            "--api-key",
            "sk-cors",
        ],
    );
    // The preflight needs no key: browsers send none with it.
    let r = preflight(&server, "http://app.example");
    assert_eq!(r.status, 204, "{r:?}");
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("http://app.example")
    );
    assert!(r
        .header("access-control-allow-methods")
        .unwrap()
        .contains("post"));
    assert_eq!(
        r.header("access-control-allow-headers"),
        Some("authorization, content-type")
    );
    assert!(r.header("vary").is_some_and(|v| v.contains("origin")));
    let r = preflight(&server, "http://evil.example");
    assert_eq!(r.status, 403);
    assert_eq!(r.header("access-control-allow-origin"), None);
    // Answers to the listed origin name it, errors included, so its page can read them.
    let ok = [
        "Origin: http://app.example",
        "Authorization: Bearer sk-cors",
        JSON,
    ];
    let r = server.http("POST", "/v1/completions", &ok, &completion(2));
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("http://app.example")
    );
    let r = server.http("GET", "/v1/models", &["Origin: http://app.example"], "");
    assert_eq!(r.status, 401);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("http://app.example")
    );
    let r = server.http(
        "GET",
        "/v1/models",
        &[
            "Origin: http://evil.example",
            "Authorization: Bearer sk-cors",
        ],
        "",
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.header("access-control-allow-origin"), None);
}

/// Runs `probe` on its own thread, returning its result and how long it took.
fn timed<T: Send + 'static>(
    probe: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<(T, Duration)> {
    std::thread::spawn(move || {
        let t = Instant::now();
        let out = probe();
        (out, t.elapsed())
    })
}

#[test]
fn big_bodies_and_slow_clients_are_cut_off() {
    let Some(model) = fixture_model() else {
        return;
    };
    let server = Arc::new(Server::start(
        &model,
        &["--request-timeout", "2", "--max-body-bytes", "1000"],
    ));
    let port = server.port;
    let open = move || {
        let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        s
    };
    // A declared length beyond the limit is refused at once, before any of the body is sent.
    let t = Instant::now();
    let mut s = open();
    s.write_all(b"POST /v1/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 100000000\r\n\r\n").unwrap();
    let r = Reply::read(&mut s);
    assert_eq!(r.status, 413, "{r:?}");
    assert_eq!(r.error_code(), "request_too_large");
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    // A chunked body with no declared length is cut at the limit.
    let chunk = "x".repeat(1500);
    let r = server.raw(format!("POST /v1/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{:x}\r\n{chunk}\r\n0\r\n\r\n", chunk.len()).as_bytes());
    assert_eq!(r.status, 413, "{r:?}");

    // Four slow clients at once; each is let go within the timeout (2 s), none sooner than ~2 s.
    let silent = timed(move || {
        let mut raw = Vec::new();
        let _ = open().read_to_end(&mut raw);
        raw
    });
    let half_header = timed(move || {
        let mut s = open();
        s.write_all(b"POST /v1/completions HTTP/1.1\r\nHost: localhost\r\nContent-Ty")
            .unwrap();
        let mut raw = Vec::new();
        let _ = s.read_to_end(&mut raw);
        raw
    });
    let short_body = timed(move || {
        let mut s = open();
        s.write_all(b"POST /v1/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 50\r\n\r\n{\"prompt\": ").unwrap();
        let mut raw = Vec::new();
        let _ = s.read_to_end(&mut raw);
        raw
    });
    let idle = timed(move || {
        let mut s = open();
        s.write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .unwrap();
        let mut raw = Vec::new();
        let _ = s.read_to_end(&mut raw); // the answer, then the idle keep-alive connection closes
        raw
    });
    let window = Duration::from_millis(1500)..Duration::from_secs(6);
    let (raw, took) = silent.join().unwrap();
    assert!(
        raw.is_empty() && window.contains(&took),
        "silent: {took:?} {raw:?}"
    );
    let (raw, took) = half_header.join().unwrap();
    assert!(window.contains(&took), "half a header: {took:?}");
    assert!(
        raw.is_empty() || raw.starts_with(b"HTTP/1.1 4"),
        "{:?}",
        String::from_utf8_lossy(&raw)
    );
    let (raw, took) = short_body.join().unwrap();
    let r = Reply::parse(&raw);
    assert!(window.contains(&took), "short body: {took:?}");
    assert_eq!(r.status, 408, "{r:?}");
    assert_eq!(r.error_code(), "request_timeout");
    let (raw, took) = idle.join().unwrap();
    assert!(window.contains(&took), "idle: {took:?}");
    assert_eq!(Reply::parse(&raw).status, 200);

    // After all of it, another client is served.
    let r = server.http("POST", "/v1/completions", &[JSON], &completion(3));
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["usage"]["completion_tokens"], 3);
    assert!(!server.log().contains("panicked"), "{}", server.log());
}

#[test]
fn beyond_the_connection_cap_new_clients_wait_for_a_free_slot() {
    let Some(model) = fixture_model() else {
        return;
    };
    let server = Server::start(
        &model,
        &["--max-connections", "2", "--request-timeout", "2"],
    );
    // Two silent connections fill the cap; the third is answered only when the first is timed out.
    let _a = server.connect();
    let _b = server.connect();
    std::thread::sleep(Duration::from_millis(200));
    let t = Instant::now();
    let r = server.http("GET", "/health", &[], "");
    let took = t.elapsed();
    assert_eq!(r.status, 200);
    assert!(
        (Duration::from_millis(1200)..Duration::from_secs(6)).contains(&took),
        "{took:?}"
    );
    // And with the cap free again, at once.
    let t = Instant::now();
    assert_eq!(server.http("GET", "/health", &[], "").status, 200);
    assert!(t.elapsed() < Duration::from_secs(1));
}

#[test]
fn each_key_has_a_limited_number_of_requests_in_progress() {
    let Some(model) = fixture_model() else {
        return;
    };
    let server = Server::start(
        &model,
        &[
            "--api-key",
            "sk-one",
            "--api-key",
            "sk-two",
            "--max-concurrent-per-key",
            "1",
        ],
    );
    // A request whose body is still on its way holds sk-one's only slot.
    let body = completion(4);
    let mut held = server.connect();
    write!(
        held,
        "POST /v1/completions HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer sk-one\r\n{JSON}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
        body.len(),
        &body[..5]
    )
    .unwrap();
    let one = ["Authorization: Bearer sk-one"];
    let t = Instant::now();
    let busy = loop {
        let r = server.http("GET", "/v1/models", &one, "");
        if r.status == 429 {
            break r;
        }
        assert_eq!(r.status, 200);
        assert!(t.elapsed() < Duration::from_secs(5), "never 429");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(busy.error_code(), "rate_limit_exceeded");
    assert!(
        busy.message().contains("--max-concurrent-per-key"),
        "{busy:?}"
    );
    assert_eq!(busy.header("retry-after"), Some("1"));
    // Other keys are not held back.
    let r = server.http("GET", "/v1/models", &["Authorization: Bearer sk-two"], "");
    assert_eq!(r.status, 200);
    // The held request completes once its body arrives, and frees the slot.
    held.write_all(&body.as_bytes()[5..]).unwrap();
    let r = Reply::read(&mut held);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["usage"]["completion_tokens"], 4);
    let r = server.http("POST", "/v1/completions", &[one[0], JSON], &completion(2));
    assert_eq!(r.status, 200, "{r:?}");
}

/// A GPT-2 with gpt2-tiny's tokenizer and deterministic random weights, wide and long enough that
/// a stream of a few thousand tokens takes seconds: something a shutdown can interrupt.
fn slow_model(root: &Path) -> Option<PathBuf> {
    let tiny = fixture_model()?;
    let dir = root.join("slow");
    std::fs::create_dir_all(&dir).unwrap();
    for f in [
        "vocab.json",
        "merges.txt",
        "tokenizer.json",
        "generation_config.json",
    ] {
        std::fs::copy(tiny.join(f), dir.join(f)).unwrap();
    }
    let (c, layers, positions, vocab) = (256usize, 2usize, 4096usize, 50257usize);
    let mut config: Value =
        serde_json::from_str(&std::fs::read_to_string(tiny.join("config.json")).unwrap()).unwrap();
    config["n_embd"] = json!(c);
    config["n_layer"] = json!(layers);
    config["n_positions"] = json!(positions);
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut random = |shape: &[usize]| {
        let n: usize = shape.iter().product();
        let data: Vec<f32> = (0..n)
            .map(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.2
            })
            .collect();
        candle_core::Tensor::from_vec(data, shape, &candle_core::Device::Cpu).unwrap()
    };
    let fill =
        |v: f32, n: usize| candle_core::Tensor::full(v, n, &candle_core::Device::Cpu).unwrap();
    let mut t = std::collections::HashMap::new();
    t.insert("transformer.wte.weight".to_string(), random(&[vocab, c]));
    t.insert(
        "transformer.wpe.weight".to_string(),
        random(&[positions, c]),
    );
    for l in 0..layers {
        let p = format!("transformer.h.{l}");
        for (name, shape) in [
            ("attn.c_attn.weight", vec![c, 3 * c]),
            ("attn.c_proj.weight", vec![c, c]),
            ("mlp.c_fc.weight", vec![c, 4 * c]),
            ("mlp.c_proj.weight", vec![4 * c, c]),
        ] {
            t.insert(format!("{p}.{name}"), random(&shape));
        }
        for (name, n) in [
            ("attn.c_attn.bias", 3 * c),
            ("attn.c_proj.bias", c),
            ("mlp.c_fc.bias", 4 * c),
            ("mlp.c_proj.bias", c),
            ("ln_1.bias", c),
            ("ln_2.bias", c),
        ] {
            t.insert(format!("{p}.{name}"), fill(0.0, n));
        }
        for name in ["ln_1.weight", "ln_2.weight"] {
            t.insert(format!("{p}.{name}"), fill(1.0, c));
        }
    }
    t.insert("transformer.ln_f.weight".to_string(), fill(1.0, c));
    t.insert("transformer.ln_f.bias".to_string(), fill(0.0, c));
    scratchllm_model::weights::write_safetensors(&t, &dir.join("model.safetensors")).unwrap();
    Some(dir)
}

/// The stream's JSON chunks and whether it ended with `[DONE]`.
fn finish_stream(mut s: TcpStream, mut seen: Vec<u8>) -> (Vec<Value>, bool) {
    let _ = s.read_to_end(&mut seen);
    let events = sse_data(&Reply::parse(&seen).body);
    let done = events.last().is_some_and(|e| e == "[DONE]");
    let chunks = events
        .iter()
        .filter(|e| *e != "[DONE]")
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    (chunks, done)
}

#[test]
fn sigterm_lets_streams_finish_then_ends_them_with_done() {
    let dir = tempfile::tempdir().unwrap();
    let Some(model) = slow_model(dir.path()) else {
        return;
    };
    // A long grace: the stream runs to its end; a full queue says when to come back; exit 0.
    let mut server = Server::start(
        &model,
        &[
            "--max-active",
            "1",
            "--max-queue",
            "1",
            "--shutdown-grace",
            "30",
        ],
    );
    let (s, seen) = server.open_stream(300);
    let port = server.port;
    let others: Vec<_> = (0..3)
        .map(|_| {
            std::thread::spawn(move || {
                let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
                let body = completion(2);
                write!(c, "POST /v1/completions HTTP/1.1\r\nHost: localhost\r\n{JSON}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len()).unwrap();
                Reply::read(&mut c)
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let t = Instant::now();
    server.sigterm();
    let status = server.exit_status(Duration::from_secs(60));
    let (chunks, done) = finish_stream(s, seen);
    assert!(status.success(), "{status:?}\n{}", server.log());
    assert!(done, "no [DONE]: {chunks:?}");
    let last = chunks.last().unwrap();
    assert_eq!(last["choices"][0]["finish_reason"], "length", "{last}");
    let replies: Vec<Reply> = others.into_iter().map(|h| h.join().unwrap()).collect();
    let busy: Vec<&Reply> = replies.iter().filter(|r| r.status == 503).collect();
    assert!(!busy.is_empty(), "{replies:?}");
    assert!(
        replies.iter().all(|r| r.status == 200 || r.status == 503),
        "{replies:?}"
    );
    for r in busy {
        assert_eq!(r.error_code(), "queue_full");
        assert_eq!(r.header("retry-after"), Some("1"));
    }
    let log = server.log();
    assert!(log.contains("SIGTERM: shutting down"), "{log}");
    assert!(!log.contains("ending the streams still open"), "{log}");
    assert!(t.elapsed() < Duration::from_secs(30));
    drop(server);

    // A short grace: the stream still generating after it ends with [DONE] and no finish.
    let mut server = Server::start(&model, &["--shutdown-grace", "1"]);
    let (s, seen) = server.open_stream(4000);
    let t = Instant::now();
    server.sigterm();
    // New connections are refused at once, while the stream goes on.
    while TcpStream::connect(("127.0.0.1", server.port)).is_ok() {
        assert!(t.elapsed() < Duration::from_millis(900), "still accepting");
        std::thread::sleep(Duration::from_millis(10));
    }
    let status = server.exit_status(Duration::from_secs(10));
    let (chunks, done) = finish_stream(s, seen);
    assert!(status.success(), "{status:?}\n{}", server.log());
    assert!(done, "no [DONE]");
    assert!(chunks.len() > 1, "{chunks:?}");
    assert!(
        chunks
            .iter()
            .all(|c| c["choices"][0]["finish_reason"].is_null()),
        "the stream finished within the grace period: nothing to cut"
    );
    let took = t.elapsed();
    assert!(
        (Duration::from_millis(900)..Duration::from_secs(6)).contains(&took),
        "{took:?}"
    );
    assert!(
        server.log().contains("ending the streams still open"),
        "{}",
        server.log()
    );
}

#[test]
fn the_openai_client_and_the_chat_page_work_with_a_key() {
    let Some(model) = fixture_model() else {
        return;
    };
    let server = Server::start(&model, &["--name", "tiny", "--api-key", "sk-python"]);
    let url = format!("http://127.0.0.1:{}/v1", server.port);
    if let Some(out) = python_check("check_openai_client.py", "openai", &[&url, "sk-python"]) {
        assert!(out.contains("openai client: ok"), "{out}");
    }
    let page = format!("http://127.0.0.1:{}/", server.port);
    let shot = common::artifact("chat-page-key.png");
    if let Some(out) = python_check(
        "check_chat_page.py",
        "selenium",
        &[&page, shot.to_str().unwrap(), "sk-python"],
    ) {
        assert!(out.contains("chat page: ok"), "{out}");
    }
    let log = server.log();
    assert!(
        log.contains("GET /v1/models 401"),
        "the page did not first ask without a key: {log}"
    );
    assert!(log.contains("POST /v1/chat/completions 200"), "{log}");
}
