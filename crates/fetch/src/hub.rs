//! Hugging Face model repositories as `data get` assets: the files that make a model runnable
//! (`config.json`, `generation_config.json`, `tokenizer.json`, `tokenizer_config.json`, and the
//! weights: one `model.safetensors`, or `model.safetensors.index.json` and every shard it names),
//! fetched from `https://huggingface.co/REPO/resolve/main/FILE` (or `MIRROR/ASSET/FILE`) into one
//! directory.
//!
//! The directory is assembled as `CACHE/ASSET.partial/` and renamed to `CACHE/ASSET` only when
//! every file is there and checked, so a directory under the final name is always complete; an
//! interrupted download resumes in the `.partial` one (each file from its `.part`).
//!
//! Integrity: the catalog pins no SHA-256 for these files. They follow the repositories' `main`
//! branch and we cannot compute their digests offline, and a digest we did not compute from the
//! files themselves would be invented. What is checked instead: the length the server announces;
//! the SHA-256 the Hub sends as `X-Linked-Etag` when the answer carries it; the JSON files must
//! parse as objects; each safetensors file's header must parse and its last tensor must end
//! exactly where the file ends (a truncated file or an error page fails); each tensor the index
//! names must be in the shard it names. After the first download each file's SHA-256 is recorded beside it and
//! checked whenever the asset is fetched again.
//!
//! Gated repositories (Meta's and Google's) answer 401/403 until the account behind the token has
//! accepted the license on the model's page.
use crate::{stamp_path, FetchError, Options, Progress, Result};
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

const HUB: &str = "https://huggingface.co";
/// The files besides the weights, in download order.
pub const MODEL_FILES: &[&str] = &[
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
];
const SINGLE: &str = "model.safetensors";
const INDEX: &str = "model.safetensors.index.json";
/// The safetensors format's own limit on the header (100 MB).
const MAX_HEADER: u64 = 100_000_000;

/// How a repository stores its weights.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Weights {
    /// One `model.safetensors`.
    Single,
    /// `model.safetensors.index.json` and the shards its `weight_map` names.
    Sharded,
}

/// A model repository on the Hugging Face Hub.
#[derive(Clone, Copy, Debug)]
pub struct HubModel {
    /// `owner/name`.
    pub repo: &'static str,
    /// Whether the Hub asks for an accepted license and a token.
    pub gated: bool,
    pub weights: Weights,
}

impl HubModel {
    /// The model's page, where its license is accepted.
    pub fn page(&self) -> String {
        format!("{HUB}/{}", self.repo)
    }

    /// The canonical URL of one file of the repository.
    pub fn url(&self, file: &str) -> String {
        format!("{HUB}/{}/resolve/main/{file}", self.repo)
    }
}

/// A Hugging Face access token. `Debug` hides it, and no error repeats it.
#[derive(Clone)]
pub struct HfToken(String);

impl HfToken {
    /// Trims the token (a copy from a file ends in a newline) and refuses an empty one or one
    /// that an HTTP header cannot carry.
    pub fn new(token: &str) -> Result<Self> {
        let token = token.trim();
        if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(FetchError::BadToken);
        }
        Ok(HfToken(token.to_string()))
    }

    pub(crate) fn bearer(&self) -> String {
        format!("Bearer {}", self.0)
    }
}

impl std::fmt::Debug for HfToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HfToken(hidden)")
    }
}

/// The message of [`FetchError::HubRefused`].
pub(crate) fn refusal(repo: &str, status: u16, gated: bool, token_sent: bool) -> String {
    let page = format!("{HUB}/{repo}");
    match (gated, token_sent) {
        (true, false) => format!(
            "{repo} is a gated model and the Hub answered HTTP {status} without a token: accept \
             its license on {page} (logged in to the Hub), then pass a read token with \
             --hf-token TOKEN or set HF_TOKEN (tokens: {HUB}/settings/tokens)"
        ),
        (true, true) => format!(
            "{repo} is a gated model and the Hub refused the token given (HTTP {status}): check \
             that the token is valid and that its account has accepted the license on {page} \
             (access may await approval)"
        ),
        (false, sent) => format!(
            "the Hub refused access to {repo} (HTTP {status}){}: check the name on {page}; a \
             private repository needs --hf-token TOKEN or HF_TOKEN",
            if sent { " with the token given" } else { "" }
        ),
    }
}

/// Fetches `model` into `CACHE/NAME/` (see the module docs); returns that directory.
pub(crate) fn get(
    name: &str,
    model: &HubModel,
    opts: &Options,
    progress: &mut dyn Progress,
) -> Result<PathBuf> {
    let dir = opts.cache_dir.join(name);
    // A directory under the final name was complete when it was renamed there: check it in place.
    let work = if dir.is_dir() {
        dir.clone()
    } else {
        opts.cache_dir.join(format!("{name}.partial"))
    };
    std::fs::create_dir_all(&work).map_err(|e| crate::file_err(&work, e))?;
    let repo = Repo {
        name,
        model,
        opts,
        work: &work,
    };
    for file in MODEL_FILES {
        check_json(&repo.fetch(file, progress)?)?;
    }
    match model.weights {
        Weights::Single => check_safetensors(&repo.fetch(SINGLE, progress)?, &[])?,
        Weights::Sharded => {
            let index = repo.fetch(INDEX, progress)?;
            for (shard, tensors) in read_index(&index)? {
                check_safetensors(&repo.fetch(&shard, progress)?, &tensors)?;
            }
        }
    }
    if work != dir {
        std::fs::rename(&work, &dir).map_err(|e| crate::file_err(&dir, e))?;
    }
    Ok(dir)
}

/// One repository being fetched into `work`.
struct Repo<'a> {
    name: &'a str,
    model: &'a HubModel,
    opts: &'a Options,
    work: &'a Path,
}

impl Repo<'_> {
    fn fetch(&self, file: &str, progress: &mut dyn Progress) -> Result<PathBuf> {
        let url = match &self.opts.mirror {
            Some(m) => format!("{}/{}/{file}", m.trim_end_matches('/'), self.name),
            None => self.model.url(file),
        };
        let dest = self.work.join(file);
        let token = self.opts.hf_token.as_ref();
        let outcome = crate::fetch(&url, &dest, None, &self.opts.network, token, progress)
            .map_err(|e| match e {
                FetchError::Denied { status, .. } => FetchError::HubRefused {
                    repo: self.model.repo.to_string(),
                    status,
                    gated: self.model.gated,
                    token_sent: token.is_some(),
                },
                e => e,
            })?;
        progress.finish(file, &outcome);
        Ok(dest)
    }
}

/// A file that is not what its name says: removed with its recorded digest, so that the next
/// run downloads it afresh.
fn corrupt(path: &Path, what: String) -> FetchError {
    let _ = std::fs::remove_file(path);
    let _ = std::fs::remove_file(stamp_path(path));
    crate::file_err(
        path,
        format!(
            "{what}; the file was removed, run again to download it afresh (a mirror or proxy \
             may have answered with an error page)"
        ),
    )
}

fn check_json(path: &Path) -> Result<()> {
    let bytes = std::fs::read(path).map_err(|e| crate::file_err(path, e))?;
    match serde_json::from_slice::<serde_json::Value>(&bytes) {
        Ok(v) if v.is_object() => Ok(()),
        Ok(_) => Err(corrupt(path, "not a JSON object".into())),
        Err(e) => Err(corrupt(path, format!("not valid JSON ({e})"))),
    }
}

#[derive(serde::Deserialize)]
struct Index {
    weight_map: BTreeMap<String, String>,
}

/// The shards `model.safetensors.index.json` names, each with the tensors it should hold.
/// Shard names are refused unless they are plain file names ending in `.safetensors`: the index
/// comes from the network and must not place files outside the model directory.
fn read_index(path: &Path) -> Result<BTreeMap<String, Vec<String>>> {
    let bytes = std::fs::read(path).map_err(|e| crate::file_err(path, e))?;
    let index: Index = serde_json::from_slice(&bytes)
        .map_err(|e| corrupt(path, format!("not a safetensors index ({e})")))?;
    if index.weight_map.is_empty() {
        return Err(corrupt(path, "its weight_map names no tensors".into()));
    }
    let mut shards = BTreeMap::<String, Vec<String>>::new();
    for (tensor, shard) in index.weight_map {
        if !plain_shard_name(&shard) {
            return Err(crate::file_err(
                path,
                format!(
                    "puts tensor {tensor} in shard {shard:?}, which is not a plain file name \
                     ending in .safetensors (no path separators, no '..'); refused, nothing was \
                     fetched for it"
                ),
            ));
        }
        shards.entry(shard).or_default().push(tensor);
    }
    Ok(shards)
}

fn plain_shard_name(name: &str) -> bool {
    name.len() <= 255
        && name.ends_with(".safetensors")
        && !name.starts_with('.')
        && !name.contains("..")
        && !name.contains(['/', '\\', ':'])
        && !name.chars().any(char::is_control)
}

/// Checks that `path` is a safetensors file whose tensors end where it ends and include `want`.
fn check_safetensors(path: &Path, want: &[String]) -> Result<()> {
    let header = read_header(path)?;
    for tensor in want {
        if !header.contains_key(tensor) {
            return Err(crate::file_err(
                path,
                format!("the index puts tensor {tensor} in this shard, but it is not there"),
            ));
        }
    }
    Ok(())
}

/// The header of a safetensors file, after checking that its last tensor ends where the file does.
fn read_header(path: &Path) -> Result<BTreeMap<String, serde_json::Value>> {
    let mut file = std::fs::File::open(path).map_err(|e| crate::file_err(path, e))?;
    let len = file.metadata().map_err(|e| crate::file_err(path, e))?.len();
    let mut n = [0u8; 8];
    file.read_exact(&mut n).map_err(|_| {
        corrupt(
            path,
            format!("{len} bytes, too short for a safetensors file"),
        )
    })?;
    let n = u64::from_le_bytes(n);
    if n > MAX_HEADER || n > len - 8 {
        return Err(corrupt(
            path,
            format!("not a safetensors file (header length {n} in a file of {len} bytes)"),
        ));
    }
    let mut header = vec![0u8; n as usize];
    file.read_exact(&mut header)
        .map_err(|e| crate::file_err(path, e))?;
    let header: BTreeMap<String, serde_json::Value> = serde_json::from_slice(&header)
        .map_err(|e| corrupt(path, format!("not a safetensors file (header: {e})")))?;
    let data = len - 8 - n;
    let mut end = 0;
    for (name, entry) in header.iter().filter(|(k, _)| *k != "__metadata__") {
        let range = entry
            .get("data_offsets")
            .and_then(|o| serde_json::from_value::<[u64; 2]>(o.clone()).ok())
            .filter(|[a, b]| a <= b)
            .ok_or_else(|| corrupt(path, format!("tensor {name} has no valid data_offsets")))?;
        end = end.max(range[1]);
    }
    if end != data {
        return Err(corrupt(
            path,
            format!("its tensors end at byte {end} of {data} bytes of data"),
        ));
    }
    Ok(header)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_urls_and_pages() {
        let m = HubModel {
            repo: "meta-llama/Llama-3.2-1B",
            gated: true,
            weights: Weights::Single,
        };
        assert_eq!(
            m.url("config.json"),
            "https://huggingface.co/meta-llama/Llama-3.2-1B/resolve/main/config.json"
        );
        assert_eq!(m.page(), "https://huggingface.co/meta-llama/Llama-3.2-1B");
    }

    #[test]
    fn shard_names_must_be_plain() {
        for ok in ["model-00001-of-00002.safetensors", "a.b.safetensors"] {
            assert!(plain_shard_name(ok), "{ok}");
        }
        for bad in [
            "../model.safetensors",
            "sub/model.safetensors",
            "sub\\model.safetensors",
            "/etc/model.safetensors",
            "C:model.safetensors",
            "..safetensors",
            ".hidden.safetensors",
            "config.json",
            "model.safetensors\n",
            "",
        ] {
            assert!(!plain_shard_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn tokens_are_trimmed_checked_and_never_shown() {
        let t = HfToken::new("hf_abc123\n").unwrap();
        assert_eq!(t.bearer(), "Bearer hf_abc123");
        assert!(!format!("{t:?}").contains("abc"));
        for bad in ["", "  ", "hf_a b", "hf_\u{e9}"] {
            let e = HfToken::new(bad).unwrap_err().to_string();
            assert!(e.contains("not shown"), "{e}");
        }
    }
}
