//! The GGUF parser. Every length, count and dimension in the file is checked against the bytes
//! left before anything is allocated, with checked arithmetic, since GGUF files come from the
//! internet and llama.cpp's own reader had overflow CVEs here (CVE-2024-25664 .. 25668).
use super::value::*;
use super::{ggml_type, TensorInfo, ALIGNMENT_KEY, DEFAULT_ALIGNMENT, MAX_DIMS};
use crate::error::{ModelError, Result};
use std::collections::HashSet;
use std::path::Path;

/// Where the bytes come from: the file itself, read at offsets so a model of many GB is never
/// loaded whole, or bytes already in memory (tests, fuzzing).
pub(crate) enum Source {
    File(std::fs::File),
    Bytes(Vec<u8>),
}

impl Source {
    pub(crate) fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        match self {
            Source::File(f) => std::os::unix::fs::FileExt::read_exact_at(f, buf, offset),
            Source::Bytes(b) => {
                let piece = usize::try_from(offset)
                    .ok()
                    .and_then(|start| b.get(start..start.checked_add(buf.len())?));
                let piece = piece.ok_or(std::io::ErrorKind::UnexpectedEof)?;
                buf.copy_from_slice(piece);
                Ok(())
            }
        }
    }
}

/// Bytes fetched from the source per refill of the header buffer.
const CHUNK: usize = 1 << 16;

/// The most entries reserved ahead from a count in the file. A count is checked against the bytes
/// left at its smallest entry size, but an entry in memory is several times that (a 13-byte
/// metadata pair is about 80 bytes as a `(String, Value)` and its key in the set), so reserving
/// the whole count for a 4 GB file claiming 300M pairs would ask for tens of GB before the second
/// pair failed to parse. Real files have tens of pairs and hundreds of tensors; past this the
/// vectors grow as entries are actually read.
const MAX_PREALLOC: usize = 4096;

/// Everything the header says, in file order.
pub(crate) struct Header {
    pub version: u32,
    pub alignment: u64,
    pub data_start: u64,
    pub metadata: Vec<(String, Value)>,
    pub tensors: Vec<TensorInfo>,
}

/// A cursor over the source with a small read-ahead buffer, so a vocabulary of 150k strings costs
/// a few hundred reads rather than 300k.
struct Reader<'a> {
    src: &'a Source,
    path: &'a Path,
    len: u64,
    pos: u64,
    buf: Vec<u8>,
    buf_start: u64,
}

impl<'a> Reader<'a> {
    fn err(&self, message: String) -> ModelError {
        ModelError::file(self.path, message)
    }

    fn left(&self) -> u64 {
        self.len - self.pos
    }

    /// Fills `out` from the current position; `what` names the field for the error.
    fn fill(&mut self, out: &mut [u8], what: &dyn Fn() -> String) -> Result<()> {
        let n = out.len() as u64;
        if n > self.left() {
            let msg = format!(
                "{}: needs {n} bytes, the file has {} left (truncated?)",
                what(),
                self.left()
            );
            return Err(self.err(msg));
        }
        let buf_end = self.buf_start + self.buf.len() as u64;
        if self.pos < self.buf_start || self.pos + n > buf_end {
            if out.len() >= CHUNK {
                self.src
                    .read_exact_at(out, self.pos)
                    .map_err(|e| ModelError::io(self.path, e))?;
                self.pos += n;
                return Ok(());
            }
            // Refill with up to CHUNK bytes from here (fewer near the end of the file).
            let want = self.left().min(CHUNK as u64) as usize;
            self.buf.resize(want, 0);
            self.src
                .read_exact_at(&mut self.buf, self.pos)
                .map_err(|e| ModelError::io(self.path, e))?;
            self.buf_start = self.pos;
        }
        let at = (self.pos - self.buf_start) as usize;
        out.copy_from_slice(&self.buf[at..at + out.len()]);
        self.pos += n;
        Ok(())
    }

    fn array<const N: usize>(&mut self, what: &dyn Fn() -> String) -> Result<[u8; N]> {
        let mut b = [0; N];
        self.fill(&mut b, what)?;
        Ok(b)
    }

    fn u32(&mut self, what: &dyn Fn() -> String) -> Result<u32> {
        self.array(what).map(u32::from_le_bytes)
    }

    fn u64(&mut self, what: &dyn Fn() -> String) -> Result<u64> {
        self.array(what).map(u64::from_le_bytes)
    }

    /// `n` elements of `size` bytes each must fit in what is left of the file.
    fn check_room(&self, n: u64, size: u64, what: &dyn Fn() -> String) -> Result<usize> {
        match n.checked_mul(size) {
            Some(bytes) if bytes <= self.left() => Ok(n as usize),
            _ => Err(self.err(format!(
                "{} runs past the end of the file ({} bytes left)",
                what(),
                self.left()
            ))),
        }
    }

    fn string(&mut self, what: &dyn Fn() -> String) -> Result<String> {
        let n = self.u64(&|| format!("{}: string length", what()))?;
        let n = self.check_room(n, 1, &|| format!("{}: string of {n} bytes", what()))?;
        let mut bytes = vec![0; n];
        self.fill(&mut bytes, what)?;
        String::from_utf8(bytes).map_err(|e| {
            let at = e.utf8_error().valid_up_to();
            self.err(format!(
                "{}: not UTF-8 (invalid byte at offset {at} of the string)",
                what()
            ))
        })
    }

    /// A value of type `ty`; `depth` counts the arrays around it.
    fn value(&mut self, ty: u32, depth: usize, what: &dyn Fn() -> String) -> Result<Value> {
        Ok(match ty {
            T_U8 => Value::U8(self.array::<1>(what)?[0]),
            T_I8 => Value::I8(i8::from_le_bytes(self.array(what)?)),
            T_U16 => Value::U16(u16::from_le_bytes(self.array(what)?)),
            T_I16 => Value::I16(i16::from_le_bytes(self.array(what)?)),
            T_U32 => Value::U32(self.u32(what)?),
            T_I32 => Value::I32(i32::from_le_bytes(self.array(what)?)),
            T_U64 => Value::U64(self.u64(what)?),
            T_I64 => Value::I64(i64::from_le_bytes(self.array(what)?)),
            T_F32 => Value::F32(f32::from_le_bytes(self.array(what)?)),
            T_F64 => Value::F64(f64::from_le_bytes(self.array(what)?)),
            T_BOOL => Value::Bool(self.bool(what)?),
            T_STR => Value::Str(self.string(what)?),
            T_ARRAY => Value::Array(self.array_value(depth + 1, what)?),
            _ => return Err(self.err(format!("{}: unknown value type {ty}", what()))),
        })
    }

    fn bool(&mut self, what: &dyn Fn() -> String) -> Result<bool> {
        match self.array::<1>(what)?[0] {
            0 => Ok(false),
            1 => Ok(true),
            b => Err(self.err(format!("{}: bool byte is {b}, not 0 or 1", what()))),
        }
    }

    /// An array (element type, count, elements) at nesting depth `depth` (1 = not nested).
    fn array_value(&mut self, depth: usize, what: &dyn Fn() -> String) -> Result<Array> {
        if depth > MAX_ARRAY_DEPTH {
            let msg = format!("{}: arrays nested deeper than {MAX_ARRAY_DEPTH}", what());
            return Err(self.err(msg));
        }
        let ty = self.u32(&|| format!("{}: array element type", what()))?;
        let n = self.u64(&|| format!("{}: array length", what()))?;
        // The fewest bytes one element can take: a string is at least its length, an array at
        // least its element type and count.
        let min_size = match ty {
            T_U8 | T_I8 | T_BOOL => 1,
            T_U16 | T_I16 => 2,
            T_U32 | T_I32 | T_F32 => 4,
            T_U64 | T_I64 | T_F64 | T_STR => 8,
            T_ARRAY => 12,
            _ => return Err(self.err(format!("{}: unknown array element type {ty}", what()))),
        };
        let n = self.check_room(n, min_size, &|| {
            format!("{}: array of {n} {}", what(), plural(value_type_name(ty)))
        })?;
        let elem = |i: usize| move || format!("{}: element {i}", what());
        Ok(match ty {
            T_U8 => Array::U8(self.numbers(n, what, u8::from_le_bytes)?),
            T_I8 => Array::I8(self.numbers(n, what, i8::from_le_bytes)?),
            T_U16 => Array::U16(self.numbers(n, what, u16::from_le_bytes)?),
            T_I16 => Array::I16(self.numbers(n, what, i16::from_le_bytes)?),
            T_U32 => Array::U32(self.numbers(n, what, u32::from_le_bytes)?),
            T_I32 => Array::I32(self.numbers(n, what, i32::from_le_bytes)?),
            T_U64 => Array::U64(self.numbers(n, what, u64::from_le_bytes)?),
            T_I64 => Array::I64(self.numbers(n, what, i64::from_le_bytes)?),
            T_F32 => Array::F32(self.numbers(n, what, f32::from_le_bytes)?),
            T_F64 => Array::F64(self.numbers(n, what, f64::from_le_bytes)?),
            T_BOOL => Array::Bool((0..n).map(|i| self.bool(&elem(i))).collect::<Result<_>>()?),
            T_STR => Array::Str(
                (0..n)
                    .map(|i| self.string(&elem(i)))
                    .collect::<Result<_>>()?,
            ),
            _ => Array::Array(
                (0..n)
                    .map(|i| self.array_value(depth + 1, &elem(i)))
                    .collect::<Result<_>>()?,
            ),
        })
    }

    /// `n` little-endian numbers of `N` bytes each, read in one piece.
    fn numbers<T, const N: usize>(
        &mut self,
        n: usize,
        what: &dyn Fn() -> String,
        from_le: fn([u8; N]) -> T,
    ) -> Result<Vec<T>> {
        let mut bytes = vec![0; n * N]; // n * N <= bytes left: checked by the caller
        self.fill(&mut bytes, what)?;
        Ok(bytes
            .chunks_exact(N)
            .map(|c| from_le(c.try_into().unwrap_or([0; N])))
            .collect())
    }
}

fn plural(type_name: &str) -> String {
    format!("{type_name}s")
}

/// Reads and checks the whole header: everything but the tensor data.
pub(crate) fn read_header(src: &Source, path: &Path, len: u64) -> Result<Header> {
    let mut r = Reader {
        src,
        path,
        len,
        pos: 0,
        buf: Vec::new(),
        buf_start: 0,
    };
    let magic = r.array::<4>(&|| "magic".into())?;
    if &magic != b"GGUF" {
        return Err(r.err(format!(
            "not a GGUF file: it starts with {magic:02x?}, not \"GGUF\""
        )));
    }
    let version = r.u32(&|| "version".into())?;
    check_version(&r, version)?;
    let n_tensors = r.u64(&|| "tensor count".into())?;
    let n_kv = r.u64(&|| "metadata key count".into())?;
    // A key-value pair takes at least 13 bytes (key length, type, one byte of value).
    let n_kv = r.check_room(n_kv, 13, &|| format!("metadata key count {n_kv}"))?;
    let metadata = read_metadata(&mut r, n_kv)?;
    let alignment = alignment(&r, &metadata)?;
    // A tensor info takes at least 24 bytes (name length, n_dims, type, offset).
    let n_tensors = r.check_room(n_tensors, 24, &|| format!("tensor count {n_tensors}"))?;
    let mut tensors = Vec::with_capacity(n_tensors.min(MAX_PREALLOC));
    for i in 0..n_tensors {
        tensors.push(read_tensor_info(&mut r, i)?);
    }
    let data_start = r.pos.checked_next_multiple_of(alignment);
    let data_start = data_start.ok_or_else(|| r.err("data section offset overflows".into()))?;
    for t in &tensors {
        check_tensor(&r, t, alignment, data_start)?;
    }
    check_no_overlap(&r, &tensors)?;
    Ok(Header {
        version,
        alignment,
        data_start,
        metadata,
        tensors,
    })
}

fn check_version(r: &Reader, version: u32) -> Result<()> {
    match version {
        2 | 3 => Ok(()),
        1 => Err(r.err(
            "GGUF version 1 (2023, 32-bit counts) is not supported: convert the model again with a current llama.cpp".into(),
        )),
        v if matches!(v.swap_bytes(), 2 | 3) => Err(r.err(format!(
            "GGUF version {v} is version {} in big-endian byte order, which is not supported: use the little-endian file",
            v.swap_bytes()
        ))),
        v => Err(r.err(format!("GGUF version {v} is not supported (versions 2 and 3 are)"))),
    }
}

fn read_metadata(r: &mut Reader, n_kv: usize) -> Result<Vec<(String, Value)>> {
    let mut metadata = Vec::with_capacity(n_kv.min(MAX_PREALLOC));
    let mut seen = HashSet::with_capacity(n_kv.min(MAX_PREALLOC));
    for i in 0..n_kv {
        let key = r.string(&|| format!("metadata key #{i}"))?;
        let what = || format!("metadata key #{i} {key:?}");
        let ty = r.u32(&|| format!("{}: value type", what()))?;
        let value = r.value(ty, 0, &what)?;
        if !seen.insert(key.clone()) {
            return Err(r.err(format!("{}: the key appears twice", what())));
        }
        metadata.push((key, value));
    }
    Ok(metadata)
}

/// `general.alignment` (a power of two, default 32), which both tensor offsets and the start of
/// the data section are multiples of.
fn alignment(r: &Reader, metadata: &[(String, Value)]) -> Result<u64> {
    let Some((_, value)) = metadata.iter().find(|(k, _)| k == ALIGNMENT_KEY) else {
        return Ok(DEFAULT_ALIGNMENT);
    };
    match value.as_i128().and_then(|v| u64::try_from(v).ok()) {
        Some(a) if a.is_power_of_two() => Ok(a),
        _ => Err(r.err(format!(
            "metadata key {ALIGNMENT_KEY:?}: {} is not a power of two",
            value.describe()
        ))),
    }
}

fn read_tensor_info(r: &mut Reader, i: usize) -> Result<TensorInfo> {
    let name = r.string(&|| format!("tensor #{i}: name"))?;
    let what = || format!("tensor #{i} {name:?}");
    let n_dims = r.u32(&|| format!("{}: dimension count", what()))?;
    if n_dims as usize > MAX_DIMS {
        return Err(r.err(format!(
            "{}: {n_dims} dimensions, ggml allows at most {MAX_DIMS}",
            what()
        )));
    }
    let dims = (0..n_dims)
        .map(|d| r.u64(&|| format!("{}: dimension {d}", what())))
        .collect::<Result<Vec<u64>>>()?;
    let ttype = r.u32(&|| format!("{}: type", what()))?;
    let offset = r.u64(&|| format!("{}: offset", what()))?;
    let size = tensor_size(&dims, ttype).map_err(|m| r.err(format!("{}: {m}", what())))?;
    Ok(TensorInfo {
        name,
        dims,
        ttype,
        offset,
        size,
    })
}

/// Bytes of a tensor of shape `dims` (ggml order) and type `ttype`: rows × blocks per row × bytes
/// per block. The error says what is wrong, without the tensor's name.
pub(crate) fn tensor_size(dims: &[u64], ttype: u32) -> std::result::Result<u64, String> {
    let (block, block_bytes) =
        ggml_type::type_block(ttype).ok_or_else(|| format!("unknown ggml type id {ttype}"))?;
    // ggml divides by dimensions (llama.cpp's element-count check does, by ne[1..3]), and with a
    // zero among them the product below could not catch the others overflowing.
    if let Some(d) = dims.iter().position(|&n| n == 0) {
        return Err(format!(
            "dimension {d} is 0 (dimensions {dims:?}); a tensor holds at least one element"
        ));
    }
    let ne0 = dims.first().copied().unwrap_or(1);
    if ne0 % block != 0 {
        let name = ggml_type::type_name(ttype).unwrap_or("?");
        return Err(format!(
            "first dimension {ne0} is not a multiple of the {name} block size {block}"
        ));
    }
    let rows = dims
        .iter()
        .skip(1)
        .try_fold(1u64, |acc, &d| acc.checked_mul(d));
    // The element count must fit ggml's int64_t even when the byte size would.
    let elements = rows
        .and_then(|r| r.checked_mul(ne0))
        .filter(|&e| e <= i64::MAX as u64);
    if elements.is_none() {
        return Err(format!(
            "dimensions {dims:?} hold more than 2^63 - 1 elements (ggml counts in int64)"
        ));
    }
    let size = (ne0 / block)
        .checked_mul(block_bytes)
        .and_then(|row| rows?.checked_mul(row));
    size.ok_or_else(|| format!("dimensions {dims:?}: the byte size overflows 64 bits"))
}

fn check_tensor(r: &Reader, t: &TensorInfo, alignment: u64, data_start: u64) -> Result<()> {
    if !t.offset.is_multiple_of(alignment) {
        return Err(r.err(format!(
            "tensor {:?}: offset {} is not a multiple of the alignment {alignment}",
            t.name, t.offset
        )));
    }
    let end = data_start
        .checked_add(t.offset)
        .and_then(|s| s.checked_add(t.size));
    match end {
        Some(end) if end <= r.len => Ok(()),
        _ => Err(r.err(format!(
            "tensor {:?}: {} bytes at offset {} of the data section (which starts at {data_start}) run past the end of the file ({} bytes)",
            t.name, t.size, t.offset, r.len
        ))),
    }
}

/// Tensor names are unique and their bytes do not overlap, so reading every tensor costs at most
/// the file's size.
fn check_no_overlap(r: &Reader, tensors: &[TensorInfo]) -> Result<()> {
    let mut names = HashSet::with_capacity(tensors.len());
    for t in tensors {
        if !names.insert(t.name.as_str()) {
            return Err(r.err(format!("tensor {:?} appears twice", t.name)));
        }
    }
    let mut by_offset: Vec<&TensorInfo> = tensors.iter().filter(|t| t.size > 0).collect();
    by_offset.sort_by_key(|t| t.offset);
    for w in by_offset.windows(2) {
        // Both lie inside the file (checked before), so offset + size cannot overflow.
        if w[0].offset + w[0].size > w[1].offset {
            return Err(r.err(format!(
                "tensors {:?} and {:?} overlap (bytes {}..{} and from {})",
                w[0].name,
                w[1].name,
                w[0].offset,
                w[0].offset + w[0].size,
                w[1].offset
            )));
        }
    }
    Ok(())
}
