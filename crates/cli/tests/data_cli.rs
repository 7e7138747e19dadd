//! `data get` against a local mirror (python3's http.server) serving the shared data sets.
use scratchllm_testutil::shared;
use std::process::{Child, Command, Stdio};

struct Server(Child);
impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
    }
}

#[test]
fn data_get_fetches_and_verifies_from_a_mirror() {
    let Some(verdict) = shared("data/the-verdict.txt") else {
        return;
    };
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(root.path().join("the-verdict")).unwrap();
    std::fs::copy(&verdict, root.path().join("the-verdict/the-verdict.txt")).unwrap();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let _server = Server(
        Command::new("python3")
            .args([
                "-m",
                "http.server",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--directory",
            ])
            .arg(root.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let cache = tempfile::tempdir().unwrap();
    let mirror = format!("http://127.0.0.1:{port}");
    let run = || {
        Command::new(env!("CARGO_BIN_EXE_scratchllm"))
            .args([
                "data",
                "get",
                "the-verdict",
                "--quiet",
                "--mirror",
                &mirror,
                "--cache-dir",
            ])
            .arg(cache.path())
            .output()
            .unwrap()
    };
    // The server needs a moment to listen; retry briefly.
    let mut out = run();
    for _ in 0..50 {
        if out.status.success() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
        out = run();
    }
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = cache.path().join("the-verdict/the-verdict.txt");
    assert_eq!(
        std::fs::read(got).unwrap(),
        std::fs::read(&verdict).unwrap()
    );
    // A tampered mirror copy fails the catalog's SHA-256.
    std::fs::write(
        root.path().join("the-verdict/the-verdict.txt"),
        "not the verdict",
    )
    .unwrap();
    std::fs::remove_dir_all(cache.path().join("the-verdict")).unwrap();
    let bad = run();
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        !bad.status.success() && err.contains("does not match"),
        "{err}"
    );
    let unknown = Command::new(env!("CARGO_BIN_EXE_scratchllm"))
        .args(["data", "get", "gpt5"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("known: the-verdict"));
}
