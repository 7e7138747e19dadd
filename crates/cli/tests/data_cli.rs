//! `data get` against a local mirror (python3's http.server) serving the shared data sets, and
//! against a fake Hugging Face Hub serving tiny model directories under the catalog's names.
use scratchllm_testutil::fake_hub::{model_repo, FakeHub};
use scratchllm_testutil::shared;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};

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

/// `data get ARGS` into `cache`, with HF_TOKEN set to `hf_token` (or unset) whatever the caller's
/// environment holds.
fn data_get(args: &[&str], cache: &Path, hf_token: Option<&str>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_scratchllm"));
    cmd.args(["data", "get", "--quiet", "--retries", "0", "--timeout", "5"])
        .args(args)
        .arg("--cache-dir")
        .arg(cache)
        .env_remove("HF_TOKEN");
    if let Some(t) = hf_token {
        cmd.env("HF_TOKEN", t);
    }
    cmd.output().unwrap()
}

/// Asserts that `dir` holds the files of `repo` (paths `PREFIX/NAME`), byte for byte.
fn assert_holds(dir: &Path, repo: &std::collections::BTreeMap<String, Vec<u8>>) {
    for (path, body) in repo {
        let name = path.split_once('/').unwrap().1;
        assert_eq!(&std::fs::read(dir.join(name)).unwrap(), body, "{name}");
    }
}

#[test]
fn data_get_fetches_gated_hub_models_with_a_token_from_the_flag_or_hf_token() {
    let gemma = model_repo("gemma3-270m", 0);
    let llama = model_repo("llama3.2-1b-instruct", 0);
    let mut files = gemma.clone();
    files.extend(llama.clone());
    let hub = FakeHub::start(files, Some("hf_cli_secret"));
    let cache = tempfile::tempdir().unwrap();
    let text = |o: &Output| {
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    };

    let out = data_get(&["gemma3-270m", "--mirror", &hub.url], cache.path(), None);
    let said = text(&out);
    assert!(!out.status.success());
    for part in [
        "google/gemma-3-270m is a gated model",
        "https://huggingface.co/google/gemma-3-270m",
        "--hf-token TOKEN or set HF_TOKEN",
    ] {
        assert!(said.contains(part), "{part:?} not in {said}");
    }

    let out = data_get(
        &["gemma3-270m", "--mirror", &hub.url],
        cache.path(),
        Some("hf_wrong_cli_token"),
    );
    let said = text(&out);
    assert!(
        !out.status.success() && said.contains("refused the token given"),
        "{said}"
    );
    assert!(!said.contains("hf_wrong_cli_token"), "{said}");
    assert!(!cache.path().join("gemma3-270m").exists());

    let out = data_get(
        &["gemma3-270m", "--mirror", &hub.url],
        cache.path(),
        Some("hf_cli_secret"),
    );
    assert!(out.status.success(), "{}", text(&out));
    let dir = cache.path().join("gemma3-270m");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        dir.display().to_string()
    );
    assert_holds(&dir, &gemma);

    // --hf-token wins over HF_TOKEN.
    let out = data_get(
        &[
            "llama3.2-1b-instruct",
            "--mirror",
            &hub.url,
            "--hf-token",
            "hf_cli_secret",
        ],
        cache.path(),
        Some("hf_wrong_cli_token"),
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_holds(&cache.path().join("llama3.2-1b-instruct"), &llama);
    let granted: Vec<_> = hub
        .seen()
        .into_iter()
        .filter(|s| s.authorization.as_deref() == Some("Bearer hf_cli_secret"))
        .collect();
    assert_eq!(
        granted.len(),
        10,
        "five files for each model, every one with the token"
    );
}

#[test]
fn data_get_fetches_an_open_hub_model_and_refuses_an_empty_token_flag() {
    let qwen = model_repo("qwen3-0.6b", 0);
    let hub = FakeHub::start(qwen.clone(), None);
    let cache = tempfile::tempdir().unwrap();
    let out = data_get(
        &["qwen3-0.6b", "--mirror", &hub.url],
        cache.path(),
        Some(" "),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_holds(&cache.path().join("qwen3-0.6b"), &qwen);
    assert!(
        hub.seen().iter().all(|s| s.authorization.is_none()),
        "a blank HF_TOKEN is unset"
    );

    let out = data_get(&["qwen3-0.6b", "--hf-token", ""], cache.path(), None);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("token is empty"),
        "{err}"
    );
}

#[test]
fn data_list_shows_the_hub_models_and_which_are_gated() {
    let out = Command::new(env!("CARGO_BIN_EXE_scratchllm"))
        .args(["data", "list"])
        .output()
        .unwrap();
    let list = String::from_utf8_lossy(&out.stdout);
    for (name, gated) in [
        ("llama3.2-1b", true),
        ("llama3.2-1b-instruct", true),
        ("qwen3-0.6b", false),
        ("gemma3-270m", true),
        ("gemma3-270m-it", true),
    ] {
        let line = list
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .unwrap_or_else(|| panic!("{name} not in {list}"));
        assert_eq!(line.contains("gated: --hf-token"), gated, "{line}");
    }
}
