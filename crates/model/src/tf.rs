//! OpenAI's original GPT-2 checkpoint, read natively: a TensorFlow "tensor bundle".
//!
//! `model.ckpt.index` is an SSTable (LevelDB table format): data blocks of prefix-compressed
//! key/value entries, an index block pointing at them, and a 48-byte footer ending in a magic number.
//! Keys are tensor names; values are `BundleEntryProto` messages (dtype, shape, shard, offset, size,
//! crc32c) that locate each tensor's little-endian bytes in `model.ckpt.data-0000N-of-0000M`. The
//! empty key holds the `BundleHeaderProto`. Everything is bounds-checked: the files are untrusted.
use crate::error::{ModelError, Result};
use candle_core::{Device, Tensor};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

const MAGIC: u64 = 0xdb47_7524_8b80_fb57;
const DT_FLOAT: u64 = 1;

/// Where one tensor lives.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub dtype: u64,
    pub shape: Vec<usize>,
    pub shard: u64,
    pub offset: u64,
    pub size: u64,
    pub crc32c: Option<u32>,
}

/// A cursor over bytes that reports where a read went out of range.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

type ParseResult<T> = std::result::Result<T, String>;

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    fn done(&self) -> bool {
        self.pos >= self.buf.len()
    }

    fn varint(&mut self) -> ParseResult<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = *self
                .buf
                .get(self.pos)
                .ok_or_else(|| format!("varint runs past the end at byte {}", self.pos))?;
            self.pos += 1;
            v |= ((b & 0x7f) as u64) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(format!("varint longer than 10 bytes at byte {}", self.pos))
    }

    fn bytes(&mut self, n: u64) -> ParseResult<&'a [u8]> {
        let end = usize::try_from(n)
            .ok()
            .and_then(|n| self.pos.checked_add(n))
            .filter(|&e| e <= self.buf.len());
        let end = end.ok_or_else(|| {
            format!(
                "{n} bytes at byte {} run past the end ({} bytes)",
                self.pos,
                self.buf.len()
            )
        })?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn fixed32(&mut self) -> ParseResult<u32> {
        let b = self.bytes(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// One protobuf field: (number, wire type), then the caller reads the value.
    fn field(&mut self) -> ParseResult<(u64, u64)> {
        let key = self.varint()?;
        Ok((key >> 3, key & 7))
    }

    fn skip(&mut self, wire: u64) -> ParseResult<()> {
        match wire {
            0 => self.varint().map(|_| ()),
            1 => self.bytes(8).map(|_| ()),
            2 => {
                let n = self.varint()?;
                self.bytes(n).map(|_| ())
            }
            5 => self.bytes(4).map(|_| ()),
            w => Err(format!("unsupported protobuf wire type {w}")),
        }
    }
}

/// Parses a `BundleEntryProto`.
fn parse_entry(buf: &[u8]) -> ParseResult<Entry> {
    let mut r = Reader::new(buf);
    let mut e = Entry {
        dtype: 0,
        shape: Vec::new(),
        shard: 0,
        offset: 0,
        size: 0,
        crc32c: None,
    };
    while !r.done() {
        match r.field()? {
            (1, 0) => e.dtype = r.varint()?,
            (2, 2) => {
                let n = r.varint()?;
                e.shape = parse_shape(r.bytes(n)?)?;
            }
            (3, 0) => e.shard = r.varint()?,
            (4, 0) => e.offset = r.varint()?,
            (5, 0) => e.size = r.varint()?,
            (6, 5) => e.crc32c = Some(r.fixed32()?),
            (7, _) => return Err("sliced tensors are not supported".into()),
            (_, w) => r.skip(w)?,
        }
    }
    Ok(e)
}

/// Parses a `TensorShapeProto` (repeated `dim { size }`).
fn parse_shape(buf: &[u8]) -> ParseResult<Vec<usize>> {
    let mut r = Reader::new(buf);
    let mut dims = Vec::new();
    while !r.done() {
        match r.field()? {
            (2, 2) => {
                let n = r.varint()?;
                let mut d = Reader::new(r.bytes(n)?);
                let mut size = 0u64;
                while !d.done() {
                    match d.field()? {
                        (1, 0) => size = d.varint()?,
                        (_, w) => d.skip(w)?,
                    }
                }
                // Sizes are int64; -1 (unknown) arrives as a huge varint and is refused here.
                dims.push(
                    usize::try_from(size)
                        .ok()
                        .filter(|&s| s < 1 << 40)
                        .ok_or_else(|| format!("dimension {size} out of range"))?,
                );
            }
            (_, w) => r.skip(w)?,
        }
    }
    Ok(dims)
}

/// The key/value entries of one SSTable block (without its 5-byte trailer).
fn block_entries(block: &[u8]) -> ParseResult<Vec<(Vec<u8>, &[u8])>> {
    if block.len() < 4 {
        return Err("block shorter than its restart count".into());
    }
    let n_restarts = u32::from_le_bytes(
        block[block.len() - 4..]
            .try_into()
            .map_err(|_| "bad block")?,
    ) as usize;
    let data_end = n_restarts
        .checked_mul(4)
        .and_then(|r| block.len().checked_sub(4 + r))
        .ok_or("restart array larger than the block")?;
    let mut r = Reader::new(&block[..data_end]);
    let mut key: Vec<u8> = Vec::new();
    let mut out = Vec::new();
    while !r.done() {
        let shared = r.varint()? as usize;
        let non_shared = r.varint()?;
        let value_len = r.varint()?;
        if shared > key.len() {
            return Err(format!(
                "entry shares {shared} bytes of a {}-byte key",
                key.len()
            ));
        }
        key.truncate(shared);
        key.extend_from_slice(r.bytes(non_shared)?);
        out.push((key.clone(), r.bytes(value_len)?));
    }
    Ok(out)
}

fn block_at<'a>(file: &'a [u8], handle: &[u8]) -> ParseResult<&'a [u8]> {
    let mut h = Reader::new(handle);
    let (offset, size) = (h.varint()?, h.varint()?);
    let mut r = Reader::new(file);
    r.pos = usize::try_from(offset)
        .ok()
        .filter(|&o| o <= file.len())
        .ok_or_else(|| format!("block offset {offset} past the end"))?;
    let block = r.bytes(size)?;
    let trailer = r.bytes(5)?;
    if trailer[0] != 0 {
        return Err(format!(
            "block at {offset} is compressed (type {}); only uncompressed bundles are supported",
            trailer[0]
        ));
    }
    Ok(block)
}

/// Parses an index file into tensor entries by name.
pub fn parse_index(file: &[u8]) -> ParseResult<HashMap<String, Entry>> {
    if file.len() < 48 {
        return Err(format!(
            "{} bytes is too short for an SSTable footer (48)",
            file.len()
        ));
    }
    let footer = &file[file.len() - 48..];
    let magic = u64::from_le_bytes(footer[40..48].try_into().map_err(|_| "bad footer")?);
    if magic != MAGIC {
        return Err(format!(
            "bad magic number {magic:#x}; not a TensorFlow checkpoint index"
        ));
    }
    let mut f = Reader::new(&footer[..40]);
    let (_meta_off, _meta_size) = (f.varint()?, f.varint()?);
    let index_start = f.pos;
    let (_idx_off, _idx_size) = (f.varint()?, f.varint()?);
    let index = block_at(file, &footer[index_start..f.pos])?;
    let mut entries = HashMap::new();
    for (_, handle) in block_entries(index)? {
        for (key, value) in block_entries(block_at(file, handle)?)? {
            if key.is_empty() {
                continue; // the BundleHeaderProto
            }
            let name =
                String::from_utf8(key).map_err(|_| "a tensor name is not UTF-8".to_string())?;
            let entry = parse_entry(value).map_err(|e| format!("tensor {name}: {e}"))?;
            entries.insert(name, entry);
        }
    }
    Ok(entries)
}

/// CRC-32C (Castagnoli), as TensorFlow checksums tensor data.
fn crc32c(data: &[u8]) -> u32 {
    static TABLE: std::sync::OnceLock<[u32; 256]> = std::sync::OnceLock::new();
    let table = TABLE.get_or_init(|| {
        let mut t = [0u32; 256];
        for (i, slot) in t.iter_mut().enumerate() {
            let mut c = i as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 {
                    0x82F6_3B78 ^ (c >> 1)
                } else {
                    c >> 1
                };
            }
            *slot = c;
        }
        t
    });
    !data.iter().fold(!0u32, |c, &b| {
        table[((c ^ b as u32) & 0xff) as usize] ^ (c >> 8)
    })
}

/// TensorFlow stores masked CRCs (`crc32c::Mask`) so that a CRC of data holding CRCs stays strong.
fn mask(crc: u32) -> u32 {
    crc.rotate_right(15).wrapping_add(0xa282_ead8)
}

/// Reads every float tensor of the checkpoint whose index is `index_path` (`model.ckpt.index`).
pub fn read_checkpoint(index_path: &Path, device: &Device) -> Result<HashMap<String, Tensor>> {
    let index = std::fs::read(index_path).map_err(|e| ModelError::io(index_path, e))?;
    let entries = parse_index(&index).map_err(|m| ModelError::file(index_path, m))?;
    let prefix = index_path
        .to_string_lossy()
        .trim_end_matches(".index")
        .to_string();
    let n_shards = entries.values().map(|e| e.shard).max().map_or(1, |m| m + 1);
    let mut shards: HashMap<u64, (PathBuf, memmap2::Mmap)> = HashMap::new();
    let mut out = HashMap::new();
    for (name, e) in entries {
        if e.dtype != DT_FLOAT {
            return Err(ModelError::file(
                index_path,
                format!(
                    "tensor {name} has TensorFlow dtype {}; only float32 is supported",
                    e.dtype
                ),
            ));
        }
        if let std::collections::hash_map::Entry::Vacant(slot) = shards.entry(e.shard) {
            let path = PathBuf::from(format!("{prefix}.data-{:05}-of-{:05}", e.shard, n_shards));
            let file = std::fs::File::open(&path).map_err(|err| ModelError::io(&path, err))?;
            // SAFETY: read-only map, copied from before it is dropped.
            let map =
                unsafe { memmap2::Mmap::map(&file) }.map_err(|err| ModelError::io(&path, err))?;
            slot.insert((path, map));
        }
        let (path, data) = &shards[&e.shard];
        let numel: usize = e.shape.iter().product();
        let bad = |m: String| ModelError::file(path, format!("tensor {name}: {m}"));
        if numel.checked_mul(4) != Some(e.size as usize) {
            return Err(bad(format!(
                "shape {:?} needs {} bytes but the index says {}",
                e.shape,
                numel * 4,
                e.size
            )));
        }
        let bytes = usize::try_from(e.offset)
            .ok()
            .and_then(|o| Some((o, o.checked_add(e.size as usize)?)))
            .and_then(|(o, end)| data.get(o..end))
            .ok_or_else(|| {
                bad(format!(
                    "bytes {}..{} lie outside the {}-byte data file",
                    e.offset,
                    e.offset + e.size,
                    data.len()
                ))
            })?;
        if let Some(want) = e.crc32c {
            let got = crc32c(bytes);
            if want != got && want != mask(got) {
                return Err(bad(format!("checksum mismatch (crc32c {got:#010x}, expected {want:#010x}); the file is corrupt")));
            }
        }
        out.insert(
            name,
            Tensor::from_raw_buffer(bytes, candle_core::DType::F32, &e.shape, device)?,
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn crc32c_matches_the_standard_check_value() {
        assert_eq!(super::crc32c(b"123456789"), 0xE306_9283);
    }
}
