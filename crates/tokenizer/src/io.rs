//! File helpers: reading text with a clear error, writing atomically.
use crate::error::{Result, TokenizerError};
use std::io::Write;
use std::path::Path;

/// Reads a UTF-8 file; an invalid byte is reported with its offset.
pub fn read_text(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).map_err(|e| TokenizerError::io(path, e))?;
    String::from_utf8(bytes).map_err(|e| TokenizerError::NotUtf8 {
        what: path.display().to_string(),
        offset: e.utf8_error().valid_up_to(),
    })
}

/// Writes `bytes` to `path` through a temporary file in the same directory and a rename, so a
/// reader never sees a half-written file and a crash leaves the old one in place.
pub fn atomic_write(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        TokenizerError::io(path, e)
    })
}
