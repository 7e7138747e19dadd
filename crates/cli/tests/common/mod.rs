//! What the server's test files share: a `scratchllm serve` process on a free port (killed on
//! drop, its standard error kept), the fixture model, server-sent event payloads, and the Python
//! check scripts.
#![allow(dead_code)] // each test file uses part of it
use scratchllm_testutil::shared;
use serde_json::json;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A running server; killed on drop. Its standard error is collected in `log`.
pub struct Server {
    pub child: Child,
    pub port: u16,
    log: Arc<Mutex<String>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    pub fn start(model: &Path, extra: &[&str]) -> Server {
        Server::start_with_env(model, extra, &[])
    }

    pub fn start_with_env(model: &Path, extra: &[&str], env: &[(&str, &str)]) -> Server {
        let mut child = serve_command(model, extra, env)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.strip_prefix("listening on http://") {
                    let port = rest.split(' ').next().unwrap().rsplit(':').next().unwrap();
                    let _ = tx.send(port.parse::<u16>().unwrap());
                }
                sink.lock().unwrap().push_str(&(line + "\n"));
            }
        });
        let port = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("server did not start");
        let server = Server { child, port, log };
        let t = Instant::now();
        while server.health() != 200 {
            assert!(t.elapsed() < Duration::from_secs(30), "model did not load");
            std::thread::sleep(Duration::from_millis(50));
        }
        server
    }

    /// The status of `GET /health` (0 when there is no answer).
    fn health(&self) -> u16 {
        let mut s = self.connect();
        let _ =
            s.write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
        let mut raw = Vec::new();
        let _ = s.read_to_end(&mut raw);
        String::from_utf8_lossy(&raw)
            .get(9..12)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0)
    }

    pub fn connect(&self) -> TcpStream {
        let s = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        s
    }

    /// Starts a greedy stream of `tokens` tokens and returns the connection once the first event is in.
    pub fn open_stream(&self, tokens: usize) -> (TcpStream, Vec<u8>) {
        let body =
            json!({"prompt": "Once", "max_tokens": tokens, "temperature": 0, "stream": true})
                .to_string();
        let mut s = self.connect();
        write!(
            s,
            "POST /v1/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut seen = Vec::new();
        while !String::from_utf8_lossy(&seen).contains("data: ") {
            let mut chunk = [0u8; 512];
            let n = s.read(&mut chunk).unwrap();
            assert!(n > 0, "the stream ended early");
            seen.extend_from_slice(&chunk[..n]);
        }
        (s, seen)
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    pub fn sigterm(&self) {
        let killed = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(killed.success());
    }

    /// Waits (at most `limit`) for the exit.
    pub fn exit_status(&mut self, limit: Duration) -> ExitStatus {
        let t = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                t.elapsed() < limit,
                "no exit after SIGTERM:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

pub fn serve_command(model: &Path, extra: &[&str], env: &[(&str, &str)]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_scratchllm"));
    c.args(["serve", "--port", "0", "--model"])
        .arg(model)
        .args(extra)
        .env_remove("SCRATCHLLM_API_KEY")
        .envs(env.iter().copied())
        .stdout(Stdio::null());
    c
}

pub fn sse_data(body: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(body)
        .split("\n\n")
        .filter_map(|e| {
            e.lines()
                .find_map(|l| l.strip_prefix("data: "))
                .map(str::to_string)
        })
        .collect()
}

pub fn fixture_model() -> Option<PathBuf> {
    shared("fixtures/gpt2-tiny/hf")
}

/// Runs a Python check script from `scripts/` against a server, when the test Python has what it
/// needs (`scripts/test.sh` installs it; skipped otherwise, but required under CI=true).
pub fn python_check(script: &str, modules: &str, args: &[&str]) -> Option<String> {
    let python = std::env::var("SCRATCHLLM_PYTHON").unwrap_or_else(|_| "python3".into());
    let has = Command::new(&python)
        .args(["-c", &format!("import {modules}")])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has {
        let msg = format!("{python} lacks {modules}; run scripts/test.sh");
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("{msg}");
        }
        eprintln!("SKIPPED: {msg}");
        return None;
    }
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../scripts")
        .join(script);
    let out = Command::new(&python).arg(path).args(args).output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{script} failed:\n{text}");
    Some(text)
}

/// Where a test saves a file to look at afterwards (a screenshot): `target/test-artifacts/NAME`,
/// its folder made.
pub fn artifact(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/test-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}
