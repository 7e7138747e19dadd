//! Hugging Face model directories against a fake Hub on a local port (there is no internet
//! here): a single-file repository, a sharded one, a gated one, an index that names a path, and
//! broken or interrupted downloads, which must leave nothing under the final directory name.
use scratchllm_fetch::hub::MODEL_FILES;
use scratchllm_fetch::{
    get, Asset, FetchError, HfToken, HubModel, Network, Options, Outcome, Progress, RemoteFile,
    Weights,
};
use scratchllm_testutil::fake_hub::{model_repo, safetensors, FakeHub};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

struct Quiet;
impl Progress for Quiet {
    fn start(&mut self, _: &str, _: Option<u64>, _: u64) {}
    fn advance(&mut self, _: u64) {}
    fn finish(&mut self, _: &str, _: &Outcome) {}
}

fn hub_asset(name: &'static str, repo: &'static str, gated: bool, weights: Weights) -> Asset {
    Asset {
        name,
        about: "",
        files: &[],
        hub: Some(HubModel {
            repo,
            gated,
            weights,
        }),
    }
}

/// Fetches from `hub` as the mirror, with quick timeouts, `retries` and `token`.
fn options(cache: &Path, hub: &FakeHub, token: Option<&str>, retries: u32) -> Options {
    Options {
        mirror: Some(hub.url.clone()),
        network: Network {
            connect_timeout: Duration::from_secs(5),
            read_timeout: Duration::from_millis(500),
            retries,
            backoff: Duration::from_millis(10),
        },
        hf_token: token.map(|t| HfToken::new(t).unwrap()),
        ..Options::new(cache.to_path_buf())
    }
}

/// The names in `dir`, without the recorded digests, sorted.
fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.ends_with(".sha256"))
        .collect();
    names.sort();
    names
}

/// Asserts that `dir` holds exactly the files of `repo` (paths `PREFIX/NAME`), byte for byte.
fn assert_holds(dir: &Path, repo: &BTreeMap<String, Vec<u8>>) {
    let mut want = Vec::new();
    for (path, body) in repo {
        let name = path.split_once('/').unwrap().1;
        assert_eq!(&std::fs::read(dir.join(name)).unwrap(), body, "{name}");
        want.push(name.to_string());
    }
    want.sort();
    assert_eq!(listing(dir), want);
}

#[test]
fn a_single_file_repository_becomes_one_complete_directory_then_comes_from_the_cache() {
    let repo = model_repo("tiny", 0);
    let hub = FakeHub::start(repo.clone(), None);
    let cache = tempfile::tempdir().unwrap();
    let asset = hub_asset("tiny", "Qwen/Qwen3-0.6B", false, Weights::Single);
    let opts = options(cache.path(), &hub, None, 0);
    let dir = get(&asset, &opts, &mut Quiet).unwrap();
    assert_eq!(dir, cache.path().join("tiny"));
    assert_holds(&dir, &repo);
    assert_eq!(
        listing(cache.path()),
        ["tiny"],
        "no .partial directory left"
    );
    let paths: Vec<String> = hub.seen().iter().map(|s| s.path.clone()).collect();
    assert_eq!(
        paths,
        [
            "tiny/config.json",
            "tiny/generation_config.json",
            "tiny/tokenizer.json",
            "tiny/tokenizer_config.json",
            "tiny/model.safetensors"
        ]
    );
    assert!(hub.seen().iter().all(|s| s.authorization.is_none()));
    assert_eq!(get(&asset, &opts, &mut Quiet).unwrap(), dir);
    assert_eq!(
        hub.seen().len(),
        5,
        "a complete directory is not fetched again"
    );
}

#[test]
fn a_sharded_repository_brings_the_index_and_every_shard_it_names() {
    let repo = model_repo("big", 3);
    let hub = FakeHub::start(repo.clone(), None);
    let cache = tempfile::tempdir().unwrap();
    let asset = hub_asset("big", "owner/big", false, Weights::Sharded);
    let dir = get(&asset, &options(cache.path(), &hub, None, 0), &mut Quiet).unwrap();
    assert_holds(&dir, &repo);
    assert_eq!(listing(&dir).len(), MODEL_FILES.len() + 1 + 3);
    for k in 1..=3 {
        let shard = format!("big/model-{k:05}-of-00003.safetensors");
        assert_eq!(
            hub.seen().iter().filter(|s| s.path == shard).count(),
            1,
            "{shard}"
        );
    }
}

#[test]
fn a_gated_repository_needs_the_token_and_the_errors_say_how_without_repeating_it() {
    let repo = model_repo("gemma", 0);
    let hub = FakeHub::start(repo.clone(), Some("hf_right_token"));
    let cache = tempfile::tempdir().unwrap();
    let asset = hub_asset("gemma", "google/gemma-3-270m", true, Weights::Single);

    let e = get(&asset, &options(cache.path(), &hub, None, 2), &mut Quiet).unwrap_err();
    assert!(
        matches!(
            e,
            FetchError::HubRefused {
                status: 401,
                gated: true,
                token_sent: false,
                ..
            }
        ),
        "{e:?}"
    );
    let msg = e.to_string();
    for part in [
        "google/gemma-3-270m is a gated model",
        "accept its license on https://huggingface.co/google/gemma-3-270m",
        "--hf-token TOKEN",
        "HF_TOKEN",
    ] {
        assert!(msg.contains(part), "{part:?} not in {msg}");
    }
    assert_eq!(hub.seen().len(), 1, "a refusal is final, not retried");
    assert!(!cache.path().join("gemma").exists());

    let opts = options(cache.path(), &hub, Some("hf_wrong_secret"), 0);
    let e = get(&asset, &opts, &mut Quiet).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("refused the token given (HTTP 403)")
            && msg.contains("https://huggingface.co/google/gemma-3-270m"),
        "{msg}"
    );
    for shown in [msg, format!("{e:?}"), format!("{opts:?}")] {
        assert!(!shown.contains("hf_wrong_secret"), "{shown}");
    }
    assert!(!cache.path().join("gemma").exists());

    let opts = options(cache.path(), &hub, Some("hf_right_token"), 0);
    let dir = get(&asset, &opts, &mut Quiet).unwrap();
    assert_holds(&dir, &repo);
    let last = &hub.seen()[2..];
    assert_eq!(last.len(), 5);
    assert!(last
        .iter()
        .all(|s| s.authorization.as_deref() == Some("Bearer hf_right_token")));
}

#[test]
fn the_token_is_sent_only_with_model_repositories() {
    let files = BTreeMap::from([("plain/x.txt".to_string(), b"hello".to_vec())]);
    let hub = FakeHub::start(files, None);
    const FILES: &[RemoteFile] = &[RemoteFile {
        name: "x.txt",
        url: "https://example.invalid/x.txt",
        sha256: None,
        unzip: None,
        unzip_to: None,
    }];
    let asset = Asset {
        name: "plain",
        about: "",
        files: FILES,
        hub: None,
    };
    let cache = tempfile::tempdir().unwrap();
    let opts = options(cache.path(), &hub, Some("hf_secret"), 0);
    let dir = get(&asset, &opts, &mut Quiet).unwrap();
    assert_eq!(std::fs::read(dir.join("x.txt")).unwrap(), b"hello");
    assert_eq!(hub.seen()[0].authorization, None);
}

#[test]
fn an_index_naming_a_path_is_refused_before_anything_is_fetched_for_it() {
    for bad in [
        "../evil.safetensors",
        "sub/evil.safetensors",
        "..\\evil.safetensors",
        "/tmp/evil.safetensors",
    ] {
        let mut repo = model_repo("m", 1);
        let index = serde_json::json!({"weight_map": {"layers.1.a": bad}});
        repo.insert(
            "m/model.safetensors.index.json".into(),
            index.to_string().into_bytes(),
        );
        let hub = FakeHub::start(repo, None);
        let root = tempfile::tempdir().unwrap();
        let cache = root.path().join("cache");
        let asset = hub_asset("m", "owner/m", false, Weights::Sharded);
        let e = get(&asset, &options(&cache, &hub, None, 0), &mut Quiet)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("model.safetensors.index.json")
                && e.contains(&format!("{bad:?}"))
                && e.contains("not a plain file name"),
            "{e}"
        );
        let last = hub.seen().last().unwrap().path.clone();
        assert_eq!(last, "m/model.safetensors.index.json", "{bad}");
        assert!(!cache.join("m").exists());
        assert_eq!(listing(root.path()), ["cache"], "{bad}");
        assert_eq!(listing(&cache), ["m.partial"], "{bad}");
    }
}

#[test]
fn an_interrupted_download_leaves_nothing_under_the_final_names_and_resumes() {
    let repo = model_repo("cut", 2);
    let hub = FakeHub::start(repo.clone(), None);
    let shard = "model-00002-of-00002.safetensors";
    hub.cut(&format!("cut/{shard}"), 1);
    let cache = tempfile::tempdir().unwrap();
    let asset = hub_asset("cut", "owner/cut", false, Weights::Sharded);
    let opts = options(cache.path(), &hub, None, 0);
    let e = get(&asset, &opts, &mut Quiet).unwrap_err().to_string();
    assert!(
        e.contains(shard) && e.contains("run again to resume"),
        "{e}"
    );
    assert!(!cache.path().join("cut").exists());
    let partial = cache.path().join("cut.partial");
    assert!(!partial.join(shard).exists());
    let half = std::fs::metadata(partial.join(format!("{shard}.part")))
        .unwrap()
        .len();
    assert_eq!(half, repo[&format!("cut/{shard}")].len() as u64 / 2);

    let dir = get(&asset, &opts, &mut Quiet).unwrap();
    assert_holds(&dir, &repo);
    assert!(!partial.exists());
    let again = hub.seen().last().unwrap().clone();
    assert_eq!(
        (again.path.as_str(), again.range),
        (format!("cut/{shard}").as_str(), Some(half))
    );
}

#[test]
fn error_pages_and_truncated_weights_are_refused_and_removed() {
    let repo = model_repo("bad", 0);
    let hub = FakeHub::start(repo.clone(), None);
    let cache = tempfile::tempdir().unwrap();
    let asset = hub_asset("bad", "owner/bad", false, Weights::Single);
    let opts = options(cache.path(), &hub, None, 0);
    let partial = cache.path().join("bad.partial");

    hub.put("bad/config.json", b"<html>502 Bad Gateway</html>".to_vec());
    let e = get(&asset, &opts, &mut Quiet).unwrap_err().to_string();
    assert!(
        e.contains("config.json") && e.contains("not valid JSON") && e.contains("removed"),
        "{e}"
    );
    assert!(!partial.join("config.json").exists());
    hub.put("bad/config.json", repo["bad/config.json"].clone());

    hub.put(
        "bad/model.safetensors",
        b"<html>502 Bad Gateway</html>".to_vec(),
    );
    let e = get(&asset, &opts, &mut Quiet).unwrap_err().to_string();
    assert!(
        e.contains("model.safetensors") && e.contains("not a safetensors file"),
        "{e}"
    );
    assert!(!partial.join("model.safetensors").exists());

    // A consistent answer of the wrong length: the tensors say 12 bytes, 8 arrived.
    let whole = safetensors(&[("embed", &[1.0, 2.0]), ("norm", &[3.0])]);
    hub.put("bad/model.safetensors", whole[..whole.len() - 4].to_vec());
    let e = get(&asset, &opts, &mut Quiet).unwrap_err().to_string();
    assert!(e.contains("tensors end at byte 12 of 8 bytes"), "{e}");
    assert!(!cache.path().join("bad").exists());

    hub.put("bad/model.safetensors", whole);
    assert_holds(&get(&asset, &opts, &mut Quiet).unwrap(), &repo);
}

#[test]
fn a_tensor_the_index_places_in_a_shard_must_be_there() {
    let mut repo = model_repo("ghost", 1);
    let shard = "model-00001-of-00001.safetensors";
    let index = serde_json::json!({"weight_map": {
        "layers.1.a": shard, "layers.1.b": shard, "layers.1.ghost": shard
    }});
    repo.insert(
        "ghost/model.safetensors.index.json".into(),
        index.to_string().into_bytes(),
    );
    let hub = FakeHub::start(repo, None);
    let cache = tempfile::tempdir().unwrap();
    let asset = hub_asset("ghost", "owner/ghost", false, Weights::Sharded);
    let e = get(&asset, &options(cache.path(), &hub, None, 0), &mut Quiet)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(shard) && e.contains("tensor layers.1.ghost") && e.contains("not there"),
        "{e}"
    );
    assert!(!cache.path().join("ghost").exists());
}
