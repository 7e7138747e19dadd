//! Writing GGUF version 3: metadata in the order added, tensor data aligned to
//! `general.alignment`, each tensor padded to it as llama.cpp's `gguf_write_to_buf` does. The file
//! is streamed to a temporary file beside the target and renamed into place, so a reader never
//! sees half a model and a failed write leaves the old file.
use super::read::tensor_size;
use super::value::*;
use super::{TensorInfo, ALIGNMENT_KEY, DEFAULT_ALIGNMENT, MAX_DIMS};
use crate::error::{ModelError, Result};
use std::collections::HashSet;
use std::io::Write;
use std::path::Path;

/// The version this writer writes.
pub const WRITE_VERSION: u32 = 3;

/// A GGUF file being put together in memory, then written with [`GgufWriter::write`].
#[derive(Default)]
pub struct GgufWriter {
    metadata: Vec<(String, Value)>,
    keys: HashSet<String>,
    tensors: Vec<(TensorInfo, Vec<u8>)>,
    names: HashSet<String>,
    alignment: Option<u64>,
}

fn invalid(message: String) -> ModelError {
    ModelError::Gguf(message)
}

impl GgufWriter {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a metadata entry after those added before. `general.alignment` must be a power of two
    /// and sets the alignment of the tensor data.
    pub fn add(&mut self, key: impl Into<String>, value: Value) -> Result<()> {
        let key = key.into();
        if self.keys.contains(&key) {
            return Err(invalid(format!("metadata key {key:?} added twice")));
        }
        if let Value::Array(a) = &value {
            if a.depth() > MAX_ARRAY_DEPTH {
                let msg =
                    format!("metadata key {key:?}: arrays nested deeper than {MAX_ARRAY_DEPTH}");
                return Err(invalid(msg));
            }
        }
        if key == ALIGNMENT_KEY {
            match value.as_i128().and_then(|v| u64::try_from(v).ok()) {
                Some(a) if a.is_power_of_two() => self.alignment = Some(a),
                _ => {
                    return Err(invalid(format!(
                        "{key}: {} is not a power of two",
                        value.describe()
                    )))
                }
            }
        }
        self.keys.insert(key.clone());
        self.metadata.push((key, value));
        Ok(())
    }

    /// Adds a tensor: `dims` in ggml order (`dims[0]` contiguous), `ttype` a ggml type id, `data`
    /// exactly the bytes the dims and type call for.
    pub fn add_tensor(
        &mut self,
        name: impl Into<String>,
        dims: Vec<u64>,
        ttype: u32,
        data: Vec<u8>,
    ) -> Result<()> {
        let name = name.into();
        if self.names.contains(&name) {
            return Err(invalid(format!("tensor {name:?} added twice")));
        }
        if dims.len() > MAX_DIMS {
            let msg = format!(
                "tensor {name:?}: {} dimensions, ggml allows at most {MAX_DIMS}",
                dims.len()
            );
            return Err(invalid(msg));
        }
        let size =
            tensor_size(&dims, ttype).map_err(|m| invalid(format!("tensor {name:?}: {m}")))?;
        if size != data.len() as u64 {
            return Err(invalid(format!(
                "tensor {name:?}: dims {dims:?} of type {ttype} need {size} bytes, got {}",
                data.len()
            )));
        }
        self.names.insert(name.clone());
        let info = TensorInfo {
            name,
            dims,
            ttype,
            offset: 0,
            size,
        };
        self.tensors.push((info, data));
        Ok(())
    }

    /// Writes the file atomically (temporary file, fsync, rename).
    pub fn write(&self, path: &Path) -> Result<()> {
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("model.gguf");
        let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
        let write = || -> std::io::Result<()> {
            let file = std::fs::File::create(&tmp)?;
            let mut w = std::io::BufWriter::with_capacity(1 << 20, file);
            self.write_to(&mut w)?;
            let file = w.into_inner().map_err(|e| e.into_error())?;
            file.sync_all()?;
            std::fs::rename(&tmp, path)
        };
        write().map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            ModelError::io(path, e)
        })
    }

    fn write_to(&self, w: &mut impl Write) -> std::io::Result<()> {
        let alignment = self.alignment.unwrap_or(DEFAULT_ALIGNMENT);
        // The header (metadata and tensor infos, megabytes at most) is built in memory to know
        // its length; the tensor data is streamed.
        let mut header = b"GGUF".to_vec();
        header.extend(WRITE_VERSION.to_le_bytes());
        header.extend((self.tensors.len() as u64).to_le_bytes());
        header.extend((self.metadata.len() as u64).to_le_bytes());
        for (key, value) in &self.metadata {
            put_str(&mut header, key);
            header.extend(value.type_id().to_le_bytes());
            put_value(&mut header, value);
        }
        let mut offset = 0u64;
        for (t, _) in &self.tensors {
            put_str(&mut header, &t.name);
            header.extend((t.dims.len() as u32).to_le_bytes());
            t.dims.iter().for_each(|d| header.extend(d.to_le_bytes()));
            header.extend(t.ttype.to_le_bytes());
            header.extend(offset.to_le_bytes());
            offset = padded(offset + t.size, alignment)?;
        }
        w.write_all(&header)?;
        let pos = header.len() as u64;
        zeros(w, padded(pos, alignment)? - pos)?;
        for (t, data) in &self.tensors {
            w.write_all(data)?;
            zeros(w, padded(t.size, alignment)? - t.size)?;
        }
        Ok(())
    }
}

/// `n` rounded up to a multiple of `alignment`; an error past 2^64 (an absurd alignment).
fn padded(n: u64, alignment: u64) -> std::io::Result<u64> {
    n.checked_next_multiple_of(alignment).ok_or_else(|| {
        let msg = format!("padding {n} bytes to the alignment {alignment} overflows 64 bits");
        std::io::Error::new(std::io::ErrorKind::InvalidInput, msg)
    })
}

/// Writes `n` zero bytes, a page at a time (the alignment may be large).
fn zeros(w: &mut impl Write, mut n: u64) -> std::io::Result<()> {
    let page = [0u8; 4096];
    while n > 0 {
        let k = n.min(page.len() as u64) as usize;
        w.write_all(&page[..k])?;
        n -= k as u64;
    }
    Ok(())
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend((s.len() as u64).to_le_bytes());
    out.extend(s.as_bytes());
}

fn put_value(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::U8(x) => out.push(*x),
        Value::I8(x) => out.extend(x.to_le_bytes()),
        Value::U16(x) => out.extend(x.to_le_bytes()),
        Value::I16(x) => out.extend(x.to_le_bytes()),
        Value::U32(x) => out.extend(x.to_le_bytes()),
        Value::I32(x) => out.extend(x.to_le_bytes()),
        Value::U64(x) => out.extend(x.to_le_bytes()),
        Value::I64(x) => out.extend(x.to_le_bytes()),
        Value::F32(x) => out.extend(x.to_le_bytes()),
        Value::F64(x) => out.extend(x.to_le_bytes()),
        Value::Bool(x) => out.push(u8::from(*x)),
        Value::Str(s) => put_str(out, s),
        Value::Array(a) => put_array(out, a),
    }
}

fn put_array(out: &mut Vec<u8>, a: &Array) {
    out.extend(a.type_id().to_le_bytes());
    out.extend((a.len() as u64).to_le_bytes());
    match a {
        Array::U8(v) => out.extend(v),
        Array::I8(v) => v.iter().for_each(|x| out.extend(x.to_le_bytes())),
        Array::U16(v) => v.iter().for_each(|x| out.extend(x.to_le_bytes())),
        Array::I16(v) => v.iter().for_each(|x| out.extend(x.to_le_bytes())),
        Array::U32(v) => v.iter().for_each(|x| out.extend(x.to_le_bytes())),
        Array::I32(v) => v.iter().for_each(|x| out.extend(x.to_le_bytes())),
        Array::U64(v) => v.iter().for_each(|x| out.extend(x.to_le_bytes())),
        Array::I64(v) => v.iter().for_each(|x| out.extend(x.to_le_bytes())),
        Array::F32(v) => v.iter().for_each(|x| out.extend(x.to_le_bytes())),
        Array::F64(v) => v.iter().for_each(|x| out.extend(x.to_le_bytes())),
        Array::Bool(v) => out.extend(v.iter().map(|&b| u8::from(b))),
        Array::Str(v) => v.iter().for_each(|s| put_str(out, s)),
        Array::Array(v) => v.iter().for_each(|inner| put_array(out, inner)),
    }
}
