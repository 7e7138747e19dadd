//! File helpers: reading text with a clear error, writing atomically.
use crate::error::{Result, TokenizerError};
use crate::pretokenize::last_piece_start;
use std::io::{Read, Write};
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

/// Bytes read per step by [`stream_text`].
pub const CHUNK: usize = 1 << 20;

/// Where a chunk of a longer text can be cut so that everything before the cut pre-tokenizes as the
/// whole text would: after the last newline, after the last special token before it, at the start
/// of the last piece (which may continue in the next chunk). 0 when the chunk has no newline.
pub fn stable_cut(text: &str, specials: &[String]) -> usize {
    stable_cut_with(text, specials, last_piece_start)
}

/// [`stable_cut`] for a split pattern whose last piece starts where `last_piece_start` says.
pub fn stable_cut_with(
    text: &str,
    specials: &[String],
    last_piece_start: fn(&str) -> usize,
) -> usize {
    let Some(nl) = text.rfind('\n') else { return 0 };
    let head = &text[..nl + 1];
    // Special tokens hold no newline, so one that starts before it also ends before it.
    let seg = specials
        .iter()
        .filter_map(|s| head.rfind(s.as_str()).map(|i| i + s.len()))
        .max()
        .unwrap_or(0);
    seg + last_piece_start(&head[seg..])
}

/// Streams a UTF-8 file in chunks of about [`CHUNK`] bytes, handing `on_text` consecutive pieces of
/// text cut at [`stable_cut`], so that processing them one by one equals processing the whole file.
/// Memory stays bounded by the longest line. `on_bytes` hears how many bytes were handed over.
pub fn stream_text<E: From<TokenizerError>>(
    path: &Path,
    specials: &[String],
    on_text: &mut dyn FnMut(&str) -> std::result::Result<(), E>,
    on_bytes: &mut dyn FnMut(u64),
) -> std::result::Result<(), E> {
    stream_text_with(path, specials, last_piece_start, on_text, on_bytes)
}

/// [`stream_text`] for a split pattern whose last piece starts where `last_piece_start` says.
pub fn stream_text_with<E: From<TokenizerError>>(
    path: &Path,
    specials: &[String],
    last_piece_start: fn(&str) -> usize,
    on_text: &mut dyn FnMut(&str) -> std::result::Result<(), E>,
    on_bytes: &mut dyn FnMut(u64),
) -> std::result::Result<(), E> {
    let mut file = std::fs::File::open(path).map_err(|e| TokenizerError::io(path, e))?;
    let mut buf: Vec<u8> = Vec::with_capacity(2 * CHUNK);
    let mut offset = 0usize; // file offset of buf[0]
    loop {
        let start = buf.len();
        buf.resize(start + CHUNK, 0);
        let n = file
            .read(&mut buf[start..])
            .map_err(|e| TokenizerError::io(path, e))?;
        buf.truncate(start + n);
        let eof = n == 0;
        let valid = match std::str::from_utf8(&buf) {
            Ok(s) => s.len(),
            Err(e) if e.error_len().is_none() && !eof => e.valid_up_to(),
            Err(e) => {
                return Err(TokenizerError::NotUtf8 {
                    what: path.display().to_string(),
                    offset: offset + e.valid_up_to(),
                }
                .into())
            }
        };
        // Valid by the check above.
        let text = std::str::from_utf8(&buf[..valid]).unwrap_or_default();
        let cut = if eof {
            text.len()
        } else {
            stable_cut_with(text, specials, last_piece_start)
        };
        on_text(&text[..cut])?;
        buf.drain(..cut);
        offset += cut;
        on_bytes(cut as u64);
        if eof {
            return Ok(());
        }
    }
}
