//! Pre-tokenized corpora: `data prepare` writes token shards; training memory-maps them.
//!
//! A shard directory holds `manifest.json` and `shard-NNNNN.bin` files. Each shard is a 16-byte
//! header (`b"SLLMTOK\0"`, format version u32, token count u32... see [`HEADER`]) followed by
//! little-endian `u32` token ids. Files are streamed in 1 MiB chunks, cut after the last newline and
//! before the last pre-tokenization piece, so the ids equal those of encoding each whole document;
//! documents are separated by `<|endoftext|>`. Memory stays constant in the corpus size, both when
//! preparing and when training (the shards are memory-mapped).
use scratchllm_model::ModelError;
use scratchllm_tokenizer::{
    io::{atomic_write, stream_text},
    SpecialMode, Tokenizer, ENDOFTEXT,
};
use std::path::{Path, PathBuf};

pub type Result<T, E = ModelError> = std::result::Result<T, E>;

const MAGIC: &[u8; 8] = b"SLLMTOK\0";
const VERSION: u32 = 1;
/// Magic (8 bytes), version (u32), reserved (u32).
pub const HEADER: usize = 16;
pub const MANIFEST: &str = "manifest.json";

fn io(path: &Path, e: std::io::Error) -> ModelError {
    ModelError::Io {
        path: path.to_path_buf(),
        source: e,
    }
}

/// Writes token ids into shards of at most `shard_tokens` ids.
struct ShardWriter {
    dir: PathBuf,
    shard_tokens: usize,
    buf: Vec<u32>,
    shards: Vec<(String, usize)>,
}

impl ShardWriter {
    fn push(&mut self, ids: &[u32]) -> Result<()> {
        for chunk in ids.chunks(self.shard_tokens.max(1)) {
            let room = self.shard_tokens - self.buf.len();
            let (now, later) = chunk.split_at(room.min(chunk.len()));
            self.buf.extend_from_slice(now);
            if self.buf.len() == self.shard_tokens {
                self.flush()?;
            }
            self.buf.extend_from_slice(later);
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let name = format!("shard-{:05}.bin", self.shards.len());
        let mut bytes = Vec::with_capacity(HEADER + 4 * self.buf.len());
        bytes.extend_from_slice(MAGIC);
        bytes.extend_from_slice(&VERSION.to_le_bytes());
        bytes.extend_from_slice(&0u32.to_le_bytes());
        bytes.extend(self.buf.iter().flat_map(|t| t.to_le_bytes()));
        atomic_write(&self.dir.join(&name), &bytes)?;
        self.shards.push((name, self.buf.len()));
        self.buf.clear();
        Ok(())
    }
}

/// Encodes a file as its whole text would be, in chunks ([`stream_text`]).
fn encode_file(
    path: &Path,
    tok: &Tokenizer,
    out: &mut ShardWriter,
    on_bytes: &mut dyn FnMut(u64),
) -> Result<()> {
    let specials = [ENDOFTEXT.to_string()];
    stream_text(
        path,
        &specials,
        &mut |text| out.push(&tok.encode(text, SpecialMode::Allow)?),
        on_bytes,
    )
}

/// Tokenizes `files` (documents separated by <|endoftext|>) into shards in `out`.
pub fn prepare(
    files: &[PathBuf],
    tok: &Tokenizer,
    out: &Path,
    shard_tokens: usize,
    on_bytes: &mut dyn FnMut(u64),
) -> Result<usize> {
    std::fs::create_dir_all(out).map_err(|e| io(out, e))?;
    let eot = tok.end_of_text().map(|r| r.id).ok_or_else(|| {
        ModelError::Config(
            "the tokenizer has no end-of-text (eos) token to separate documents".into(),
        )
    })?;
    let mut w = ShardWriter {
        dir: out.to_path_buf(),
        shard_tokens: shard_tokens.max(1),
        buf: Vec::new(),
        shards: Vec::new(),
    };
    for (i, f) in files.iter().enumerate() {
        if i > 0 {
            w.push(&[eot])?;
        }
        encode_file(f, tok, &mut w, on_bytes)?;
    }
    w.flush()?;
    let total: usize = w.shards.iter().map(|s| s.1).sum();
    let manifest = serde_json::json!({
        "format": "scratchllm-token-shards",
        "version": VERSION,
        "vocab_size": tok.vocab_size(),
        "tokens": total,
        "documents": files.len(),
        "shards": w.shards.iter().map(|(n, t)| serde_json::json!({"file": n, "tokens": t})).collect::<Vec<_>>(),
    });
    atomic_write(&out.join(MANIFEST), format!("{manifest:#}\n").as_bytes())?;
    Ok(total)
}

/// Memory-mapped shards read as one sequence of token ids.
pub struct MappedTokens {
    maps: Vec<memmap2::Mmap>,
    /// Cumulative token counts: shard i holds ids starts[i]..starts[i + 1].
    starts: Vec<usize>,
}

impl MappedTokens {
    /// Opens the shards listed in `dir/manifest.json`, checking each header and size.
    pub fn open(dir: &Path) -> Result<Self> {
        let mpath = dir.join(MANIFEST);
        let m: serde_json::Value =
            serde_json::from_str(&scratchllm_tokenizer::io::read_text(&mpath)?).map_err(|e| {
                ModelError::File {
                    path: mpath.clone(),
                    message: format!("invalid manifest: {e}"),
                }
            })?;
        if m["format"] != "scratchllm-token-shards" || m["version"] != VERSION {
            return Err(ModelError::File { path: mpath, message: format!("not a version-{VERSION} token shard manifest; prepare the data again with `scratchllm data prepare`") });
        }
        let mut maps = Vec::new();
        let mut starts = vec![0usize];
        for s in m["shards"].as_array().into_iter().flatten() {
            let path = dir.join(s["file"].as_str().unwrap_or_default());
            let file = std::fs::File::open(&path).map_err(|e| io(&path, e))?;
            // SAFETY: read-only map of a file we wrote; it is only read through bounds-checked slices.
            let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| io(&path, e))?;
            let tokens = s["tokens"].as_u64().unwrap_or(0) as usize;
            if map.len() != HEADER + 4 * tokens || &map[..8] != MAGIC {
                return Err(ModelError::File {
                    path,
                    message: format!(
                        "expected a shard of {tokens} tokens ({} bytes), found {} bytes",
                        HEADER + 4 * tokens,
                        map.len()
                    ),
                });
            }
            starts.push(starts.last().copied().unwrap_or(0) + tokens);
            maps.push(map);
        }
        Ok(MappedTokens { maps, starts })
    }

    pub fn len(&self) -> usize {
        self.starts.last().copied().unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends ids `start..start + n` to `out`.
    pub fn copy(&self, mut start: usize, mut n: usize, out: &mut Vec<u32>) {
        while n > 0 {
            let shard = self.starts.partition_point(|&s| s <= start) - 1;
            let local = start - self.starts[shard];
            let take = n.min(self.starts[shard + 1] - start);
            let bytes = &self.maps[shard][HEADER + 4 * local..HEADER + 4 * (local + take)];
            out.extend(
                bytes
                    .chunks_exact(4)
                    .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]])),
            );
            start += take;
            n -= take;
        }
    }
}
