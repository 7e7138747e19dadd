//! The HTTP clients of scratchllm: downloading what the book downloads (GPT-2 weights and its four
//! data sets) and the Hugging Face model directories of Llama 3.2, Qwen3 and Gemma 3 ([`hub`]), and
//! asking a judge model to score responses ([`judge`]).
//!
//! Each asset is a list of files with their canonical URLs. A file is fetched into
//! `CACHE/ASSET/NAME.part`, resumed with an HTTP `Range` request after an interruption, checked
//! against its SHA-256 (from our catalog, or from Hugging Face's `X-Linked-Etag`, which is the
//! SHA-256 of large files), and only then renamed into place. A mirror replaces every URL by
//! `MIRROR/ASSET/NAME`, for air-gapped machines and for tests.
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

mod catalog;
pub mod hub;
pub mod judge;
pub use catalog::{asset, Asset, RemoteFile, ASSETS};
pub use hub::{HfToken, HubModel, Weights};

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("unknown asset {0:?}; known: {1}")]
    Unknown(String, String),
    #[error("{url}: {message}")]
    Http { url: String, message: String },
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("{path}: SHA-256 {got} does not match the expected {want}; the partial file was removed, run again to download it afresh")]
    Checksum {
        path: PathBuf,
        got: String,
        want: String,
    },
    /// HTTP 401 or 403; a Hub download turns it into [`FetchError::HubRefused`].
    #[error("{url}: the server refused access (HTTP {status})")]
    Denied { url: String, status: u16 },
    #[error("{}", hub::refusal(.repo, *.status, *.gated, *.token_sent))]
    HubRefused {
        repo: String,
        status: u16,
        gated: bool,
        token_sent: bool,
    },
    #[error("the Hugging Face token is empty or holds characters other than printable ASCII (it is not shown here); copy it again from https://huggingface.co/settings/tokens")]
    BadToken,
}

pub type Result<T, E = FetchError> = std::result::Result<T, E>;

fn file_err(path: &Path, e: impl std::fmt::Display) -> FetchError {
    FetchError::File {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

/// Where and how to download.
#[derive(Clone, Debug)]
pub struct Options {
    pub cache_dir: PathBuf,
    /// Replaces each file's URL by `MIRROR/ASSET/NAME`.
    pub mirror: Option<String>,
    pub network: Network,
    /// Sent as `Authorization: Bearer` with the files of Hugging Face model assets only (to the
    /// Hub, or to the mirror standing in for it); gated models need it.
    pub hf_token: Option<HfToken>,
}

impl Options {
    /// Downloads into `cache_dir` from the canonical URLs, with the default [`Network`] patience.
    pub fn new(cache_dir: PathBuf) -> Self {
        Options {
            cache_dir,
            mirror: None,
            network: Network::default(),
            hf_token: None,
        }
    }
}

/// How patient a download is with the network. Without limits a server that accepts the
/// connection and never answers would hold a download forever.
#[derive(Clone, Debug, PartialEq)]
pub struct Network {
    /// Longest wait to connect to the server.
    pub connect_timeout: Duration,
    /// Longest wait for the server's next bytes: the head of its answer, or more of the body (a
    /// stalled transfer); a multi-gigabyte file may take as long as it needs while bytes flow.
    pub read_timeout: Duration,
    /// Attempts after the first, on failures that may pass: no connection, no answer in time, a
    /// dropped transfer (the next attempt resumes it), HTTP 429 and 5xx.
    pub retries: u32,
    /// Wait before the first retry, doubled before each next one (at most 32 times as long).
    pub backoff: Duration,
}

impl Default for Network {
    fn default() -> Self {
        Network {
            connect_timeout: Duration::from_secs(30),
            read_timeout: Duration::from_secs(60),
            retries: 3,
            backoff: Duration::from_secs(1),
        }
    }
}

impl Network {
    fn agent(&self) -> ureq::Agent {
        ureq::Agent::config_builder()
            .timeout_connect(Some(self.connect_timeout))
            .timeout_recv_response(Some(self.read_timeout))
            .timeout_per_read(Some(self.read_timeout))
            // The Hub redirects large files to a CDN with a signed URL: the token stays home.
            .redirect_auth_headers(ureq::config::RedirectAuthHeaders::SameHost)
            .build()
            .into()
    }

    /// The wait before retry number `n` (0 for the first).
    fn wait(&self, n: u32) -> Duration {
        self.backoff.saturating_mul(1 << n.min(5))
    }
}

/// The default cache: `$SCRATCHLLM_CACHE`, else `$XDG_CACHE_HOME/scratchllm`, else `~/.cache/scratchllm`.
pub fn default_cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("SCRATCHLLM_CACHE") {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(d).join("scratchllm");
    }
    std::env::var_os("HOME").map_or_else(
        || PathBuf::from(".cache/scratchllm"),
        |h| PathBuf::from(h).join(".cache/scratchllm"),
    )
}

/// What happened to one file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Cached,
    Downloaded { bytes: u64, resumed_from: u64 },
}

/// Progress events: a file started (name, total bytes if known, bytes already there), bytes arrived.
pub trait Progress {
    fn start(&mut self, name: &str, total: Option<u64>, done: u64);
    fn advance(&mut self, bytes: u64);
    fn finish(&mut self, name: &str, outcome: &Outcome);
    /// An attempt at `name` failed with `problem`; the next one starts after `wait`.
    fn retry(&mut self, _name: &str, _problem: &str, _wait: Duration) {}
}

/// Fetches every file of `asset` into `CACHE/ASSET/`; returns that directory.
pub fn get(asset: &Asset, opts: &Options, progress: &mut dyn Progress) -> Result<PathBuf> {
    if let Some(model) = &asset.hub {
        return hub::get(asset.name, model, opts, progress);
    }
    let dir = opts.cache_dir.join(asset.name);
    std::fs::create_dir_all(&dir).map_err(|e| file_err(&dir, e))?;
    for f in asset.files {
        let url = match &opts.mirror {
            Some(m) => format!("{}/{}/{}", m.trim_end_matches('/'), asset.name, f.name),
            None => f.url.to_string(),
        };
        let outcome = fetch_file(&url, &dir.join(f.name), f.sha256, &opts.network, progress)?;
        progress.finish(f.name, &outcome);
        if let Some(inner) = f.unzip {
            unzip_one(
                &dir.join(f.name),
                inner,
                &dir.join(f.unzip_to.unwrap_or(inner)),
            )?;
        }
    }
    Ok(dir)
}

fn sha256_file(path: &Path) -> Result<String> {
    let mut file = std::fs::File::open(path).map_err(|e| file_err(path, e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buf).map_err(|e| file_err(path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex(&h.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Where the SHA-256 of a downloaded file is recorded: `NAME.sha256` beside it.
fn stamp_path(dest: &Path) -> PathBuf {
    dest.with_extension(format!(
        "{}sha256",
        dest.extension()
            .map_or(String::new(), |e| format!("{}.", e.to_string_lossy()))
    ))
}

/// Downloads `url` to `dest` unless a verified copy is there; resumes a `.part` file. Failures
/// that may pass are retried as `net` says, each attempt resuming what the last one got.
pub fn fetch_file(
    url: &str,
    dest: &Path,
    sha256: Option<&str>,
    net: &Network,
    progress: &mut dyn Progress,
) -> Result<Outcome> {
    fetch(url, dest, sha256, net, None, progress)
}

/// [`fetch_file`], sending `token` with every attempt.
fn fetch(
    url: &str,
    dest: &Path,
    sha256: Option<&str>,
    net: &Network,
    token: Option<&HfToken>,
    progress: &mut dyn Progress,
) -> Result<Outcome> {
    let stamp = stamp_path(dest);
    if dest.is_file() {
        let recorded = std::fs::read_to_string(&stamp).ok();
        let want = sha256.map(str::to_string).or(recorded);
        if want.is_some_and(|w| sha256_file(dest).is_ok_and(|got| got == w.trim())) {
            return Ok(Outcome::Cached);
        }
    }
    let agent = net.agent();
    let name = dest.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let mut retry = 0;
    loop {
        match attempt(&agent, url, dest, sha256, token, progress) {
            Ok(bytes) => {
                scratchllm_tokenizer::io::atomic_write(&stamp, bytes.digest.as_bytes())
                    .map_err(|e| file_err(&stamp, e))?;
                return Ok(Outcome::Downloaded {
                    bytes: bytes.total,
                    resumed_from: bytes.resumed_from,
                });
            }
            Err(Failure::Final(e)) => return Err(e),
            Err(Failure::Transient(problem)) if retry < net.retries => {
                let wait = net.wait(retry);
                progress.retry(name, &problem, wait);
                std::thread::sleep(wait);
                retry += 1;
            }
            Err(Failure::Transient(problem)) => {
                let tries = retry + 1;
                return Err(FetchError::Http {
                    url: url.to_string(),
                    message: format!(
                        "{problem}; gave up after {tries} attempt{}: check the network or the \
                         mirror, then run again to resume",
                        if tries == 1 { "" } else { "s" }
                    ),
                });
            }
        }
    }
}

/// Why an attempt failed: worth another try, or not.
enum Failure {
    Transient(String),
    Final(FetchError),
}

/// A finished download.
struct Downloaded {
    total: u64,
    resumed_from: u64,
    digest: String,
}

/// What went wrong with a request, and whether it may pass.
fn request_failure(e: ureq::Error, url: &str) -> Failure {
    match e {
        ureq::Error::Timeout(which) => Failure::Transient(format!(
            "the server did not answer in time (timeout: {which})"
        )),
        ureq::Error::StatusCode(status @ (401 | 403)) => Failure::Final(FetchError::Denied {
            url: url.to_string(),
            status,
        }),
        ureq::Error::StatusCode(code) if code == 429 || code >= 500 => {
            Failure::Transient(format!("the server answered HTTP {code}"))
        }
        ureq::Error::ConnectionFailed | ureq::Error::Io(_) | ureq::Error::Protocol(_) => {
            Failure::Transient(format!("cannot reach the server: {e}"))
        }
        e => Failure::Final(FetchError::Http {
            url: url.to_string(),
            message: e.to_string(),
        }),
    }
}

/// Whether a body read failed because no bytes came within the read timeout (ureq wraps its
/// timeout in an `io::Error`; a socket's own timeout is `TimedOut` or `WouldBlock`).
fn stalled(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock
    ) || e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<ureq::Error>())
        .is_some_and(|u| matches!(u, ureq::Error::Timeout(_)))
}

/// One request: the body is appended to `DEST.part` (resumed with `Range` when a part is there),
/// checked and renamed into place.
fn attempt(
    agent: &ureq::Agent,
    url: &str,
    dest: &Path,
    sha256: Option<&str>,
    token: Option<&HfToken>,
    progress: &mut dyn Progress,
) -> Result<Downloaded, Failure> {
    let part = PathBuf::from(format!("{}.part", dest.display()));
    let have = std::fs::metadata(&part).map_or(0, |m| m.len());
    let mut req = agent.get(url);
    if have > 0 {
        req = req.header("Range", format!("bytes={have}-"));
    }
    if let Some(token) = token {
        req = req.header("Authorization", token.bearer());
    }
    let fatal = |e: FetchError| Failure::Final(e);
    let resp = req.call().map_err(|e| request_failure(e, url))?;
    let status = resp.status().as_u16();
    let resumed_from = if status == 206 { have } else { 0 };
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    // Hugging Face serves large files with their SHA-256 as the linked ETag.
    let etag = header("x-linked-etag")
        .map(|e| e.trim_matches('"').to_string())
        .filter(|e| e.len() == 64 && e.bytes().all(|b| b.is_ascii_hexdigit()));
    let want = sha256.map(str::to_string).or(etag);
    let total = header("content-length")
        .and_then(|l| l.parse::<u64>().ok())
        .map(|l| l + resumed_from);
    let mut out = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .append(resumed_from > 0)
        .truncate(resumed_from == 0)
        .open(&part)
        .map_err(|e| fatal(file_err(&part, e)))?;
    progress.start(
        dest.file_name().and_then(|n| n.to_str()).unwrap_or("file"),
        total,
        resumed_from,
    );
    let mut body = resp.into_body().into_reader();
    let mut buf = vec![0u8; 1 << 16];
    let mut got = 0u64;
    loop {
        let n = body.read(&mut buf).map_err(|e| {
            let why = if stalled(&e) {
                "the transfer stalled".to_string()
            } else {
                e.to_string()
            };
            Failure::Transient(format!(
                "download interrupted after {} bytes ({why})",
                resumed_from + got
            ))
        })?;
        if n == 0 {
            break;
        }
        out.write_all(&buf[..n])
            .map_err(|e| fatal(file_err(&part, e)))?;
        got += n as u64;
        progress.advance(n as u64);
    }
    out.sync_all().map_err(|e| fatal(file_err(&part, e)))?;
    drop(out);
    if let Some(total) = total {
        if resumed_from + got != total {
            return Err(Failure::Transient(format!(
                "got {} of {total} bytes",
                resumed_from + got
            )));
        }
    }
    let digest = sha256_file(&part).map_err(fatal)?;
    if let Some(want) = &want {
        if &digest != want {
            let _ = std::fs::remove_file(&part);
            return Err(fatal(FetchError::Checksum {
                path: dest.to_path_buf(),
                got: digest,
                want: want.clone(),
            }));
        }
    }
    std::fs::rename(&part, dest).map_err(|e| fatal(file_err(dest, e)))?;
    Ok(Downloaded {
        total: resumed_from + got,
        resumed_from,
        digest,
    })
}

/// Extracts `inner` from the zip at `zip_path` into `dest` (atomically).
fn unzip_one(zip_path: &Path, inner: &str, dest: &Path) -> Result<()> {
    let file = std::fs::File::open(zip_path).map_err(|e| file_err(zip_path, e))?;
    let mut archive = zip::ZipArchive::new(file)
        .map_err(|e| file_err(zip_path, format!("not a zip archive: {e}")))?;
    let mut entry = archive
        .by_name(inner)
        .map_err(|e| file_err(zip_path, format!("no {inner} inside: {e}")))?;
    let mut bytes = Vec::new();
    entry
        .read_to_end(&mut bytes)
        .map_err(|e| file_err(zip_path, e))?;
    scratchllm_tokenizer::io::atomic_write(dest, &bytes).map_err(|e| file_err(dest, e))
}
