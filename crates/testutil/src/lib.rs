//! Test helpers shared by the workspace's test suites.
//!
//! Reference data and fixtures live in `../shared` beside the checkout (or `$SCRATCHLLM_SHARED`).
//! They are read in place, never copied into the repository. When they are missing a test skips
//! with a message, except under `CI=true`, where a missing fixture must fail the run.
use std::path::PathBuf;

pub mod fake_hub;

/// The shared directory, if present.
pub fn shared_dir() -> Option<PathBuf> {
    let dir = match std::env::var_os("SCRATCHLLM_SHARED") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared"),
    };
    dir.is_dir().then_some(dir)
}

/// A file or directory under the shared directory, or `None` (after saying why) when the test
/// should skip. Panics under `CI=true`, where the material must be there.
pub fn shared(rel: &str) -> Option<PathBuf> {
    let found = shared_dir().map(|d| d.join(rel)).filter(|p| p.exists());
    if found.is_none() {
        let msg = format!(
            "shared material `{rel}` not found (set SCRATCHLLM_SHARED or put `shared/` beside the checkout)"
        );
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("{msg}; it is required under CI=true");
        }
        eprintln!("SKIPPED: {msg}");
    }
    found
}

/// Reads and parses a shared JSON file; `None` means skip (see [`shared`]).
pub fn shared_json(rel: &str) -> Option<serde_json::Value> {
    let path = shared(rel)?;
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    Some(serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
}

/// Reads a shared text file; `None` means skip (see [`shared`]).
pub fn shared_text(rel: &str) -> Option<String> {
    let path = shared(rel)?;
    Some(std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
}

/// A JSON list of token ids as `u32`s (panics on anything else: fixtures are trusted).
pub fn json_ids(v: &serde_json::Value) -> Vec<u32> {
    let list = v
        .as_array()
        .unwrap_or_else(|| panic!("expected a list of ids, got {v}"));
    list.iter()
        .map(|x| {
            x.as_u64()
                .and_then(|i| u32::try_from(i).ok())
                .unwrap_or_else(|| panic!("not an id: {x}"))
        })
        .collect()
}

/// A toy spam task (80 lines of `label<TAB>text`, half spam, half ham), separable in seconds by
/// a tiny model.
pub fn toy_spam_tsv() -> String {
    let mut t = String::new();
    for i in 0..40 {
        t += &format!("spam\tWIN a FREE prize {i}! Call 0906{i:04} now to claim your cash\n");
        t += &format!(
            "ham\tare we still meeting at {} tonight? see you soon\n",
            i % 12 + 1
        );
    }
    t
}

/// A GPT-2 shape small enough to fine-tune a classifier on [`toy_spam_tsv`] in seconds.
pub const TINY_CLASSIFIER_CONFIG: &str =
    r#"{"vocab_size": 50257, "context_length": 24, "emb_dim": 32, "n_heads": 2, "n_layers": 2}"#;
