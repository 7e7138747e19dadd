//! GGUF, llama.cpp's model file format: reading and writing the container (metadata and tensor
//! bytes), with no knowledge of any model. Layout (llama.cpp `docs/gguf.md`, `ggml/src/gguf.cpp`):
//!
//! ```text
//! "GGUF" | version u32 | tensor count u64 | metadata count u64
//! metadata:     key (u64 length + UTF-8) | value type u32 | value
//! tensor infos: name | n_dims u32 | dims u64 × n_dims (ggml order: dims[0] is contiguous) | type u32 | offset u64
//! padding to `general.alignment` (default 32), then the data section; offsets count from its start
//! ```
//!
//! All numbers are little-endian. A PyTorch `[out, in]` matrix has GGUF dims `[in, out]`.
pub mod ggml_type;
mod read;
mod value;
mod write;

pub use ggml_type::{type_block, type_name};
pub use value::{Array, Value, MAX_ARRAY_DEPTH};
pub use write::GgufWriter;

use crate::error::{ModelError, Result};
use read::Source;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The metadata key holding the alignment of tensor data.
pub const ALIGNMENT_KEY: &str = "general.alignment";
/// The alignment when the file does not set `general.alignment`.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// ggml tensors have at most 4 dimensions (`GGML_MAX_DIMS`).
pub const MAX_DIMS: usize = 4;

/// One tensor's entry in the header.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    /// ggml order: `dims[0]` is the contiguous (innermost) dimension.
    pub dims: Vec<u64>,
    /// A ggml type id; see [`ggml_type`].
    pub ttype: u32,
    /// From the start of the data section, as in the file.
    pub offset: u64,
    /// Bytes of data, from the dims and the type's block size.
    pub size: u64,
}

/// A parsed GGUF file: its header in memory, its tensor data read on demand.
pub struct GgufFile {
    path: PathBuf,
    version: u32,
    alignment: u64,
    data_start: u64,
    metadata: Vec<(String, Value)>,
    keys: HashMap<String, usize>,
    tensors: Vec<TensorInfo>,
    names: HashMap<String, usize>,
    source: Source,
}

impl GgufFile {
    /// Opens and checks a GGUF file; only the header is read.
    pub fn open(path: &Path) -> Result<GgufFile> {
        let file = std::fs::File::open(path).map_err(|e| ModelError::io(path, e))?;
        let len = file.metadata().map_err(|e| ModelError::io(path, e))?.len();
        Self::parse(path.to_path_buf(), Source::File(file), len)
    }

    /// Parses GGUF bytes held in memory; `name` stands for the file in messages.
    pub fn from_bytes(name: &str, bytes: Vec<u8>) -> Result<GgufFile> {
        let len = bytes.len() as u64;
        Self::parse(PathBuf::from(name), Source::Bytes(bytes), len)
    }

    fn parse(path: PathBuf, source: Source, len: u64) -> Result<GgufFile> {
        let h = read::read_header(&source, &path, len)?;
        let index = |names: Vec<&String>| -> HashMap<String, usize> {
            names
                .into_iter()
                .enumerate()
                .map(|(i, n)| (n.clone(), i))
                .collect()
        };
        Ok(GgufFile {
            keys: index(h.metadata.iter().map(|(k, _)| k).collect()),
            names: index(h.tensors.iter().map(|t| &t.name).collect()),
            path,
            version: h.version,
            alignment: h.alignment,
            data_start: h.data_start,
            metadata: h.metadata,
            tensors: h.tensors,
            source,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The format version: 2 or 3 (they differ only in that 3 may be big-endian, which we refuse).
    pub fn version(&self) -> u32 {
        self.version
    }

    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// Where the data section starts in the file.
    pub fn data_start(&self) -> u64 {
        self.data_start
    }

    /// All metadata, in file order.
    pub fn metadata(&self) -> &[(String, Value)] {
        &self.metadata
    }

    /// All tensors, in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.keys.get(key).map(|&i| &self.metadata[i].1)
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.names.get(name).map(|&i| &self.tensors[i])
    }

    /// The bytes of tensor `t` (one of [`Self::tensors`]), exactly as stored.
    pub fn read_tensor(&self, t: &TensorInfo) -> Result<Vec<u8>> {
        // Only our own entries, whose bounds were checked when parsing, so a TensorInfo made up by
        // the caller cannot ask for an allocation the file does not back.
        if self.tensor(&t.name) != Some(t) {
            let msg = format!(
                "has no tensor {:?} with these dims, type and offset",
                t.name
            );
            return Err(ModelError::file(&self.path, msg));
        }
        let outside = || {
            ModelError::file(
                &self.path,
                format!("tensor {:?} lies outside the file", t.name),
            )
        };
        let start = self.data_start.checked_add(t.offset).ok_or_else(outside)?;
        let mut bytes = vec![0; usize::try_from(t.size).map_err(|_| outside())?];
        self.source
            .read_exact_at(&mut bytes, start)
            .map_err(|e| ModelError::io(&self.path, e))?;
        Ok(bytes)
    }

    fn err(&self, key: &str, message: impl std::fmt::Display) -> ModelError {
        ModelError::file(&self.path, format!("metadata key {key:?}: {message}"))
    }

    /// The value of `key`, or an error naming the key when it is missing.
    pub fn require(&self, key: &str) -> Result<&Value> {
        self.get(key).ok_or_else(|| self.err(key, "missing"))
    }

    /// Wraps a typed getter into one that gives None for a missing key.
    fn opt<'a, T>(&'a self, key: &str, f: impl Fn(&'a Value) -> Result<T>) -> Result<Option<T>> {
        self.get(key).map(f).transpose()
    }

    fn wrong(&self, key: &str, expected: &str, found: &Value) -> ModelError {
        self.err(
            key,
            format!("expected {expected}, found {}", found.describe()),
        )
    }

    pub fn get_str(&self, key: &str) -> Result<&str> {
        self.as_str(key, self.require(key)?)
    }

    pub fn opt_str(&self, key: &str) -> Result<Option<&str>> {
        self.opt(key, |v| self.as_str(key, v))
    }

    fn as_str<'a>(&self, key: &str, v: &'a Value) -> Result<&'a str> {
        match v {
            Value::Str(s) => Ok(s),
            _ => Err(self.wrong(key, "a string", v)),
        }
    }

    /// An unsigned integer, stored as any integer type whose value is not negative.
    pub fn get_u64(&self, key: &str) -> Result<u64> {
        self.as_u64(key, self.require(key)?)
    }

    pub fn opt_u64(&self, key: &str) -> Result<Option<u64>> {
        self.opt(key, |v| self.as_u64(key, v))
    }

    fn as_u64(&self, key: &str, v: &Value) -> Result<u64> {
        let n = v
            .as_i128()
            .ok_or_else(|| self.wrong(key, "an integer", v))?;
        u64::try_from(n).map_err(|_| self.wrong(key, "a non-negative integer", v))
    }

    /// A float, stored as f32 or f64 (f64 rounds to the nearest f32).
    pub fn get_f32(&self, key: &str) -> Result<f32> {
        self.as_f32(key, self.require(key)?)
    }

    pub fn opt_f32(&self, key: &str) -> Result<Option<f32>> {
        self.opt(key, |v| self.as_f32(key, v))
    }

    fn as_f32(&self, key: &str, v: &Value) -> Result<f32> {
        match *v {
            Value::F32(x) => Ok(x),
            Value::F64(x) => Ok(x as f32),
            _ => Err(self.wrong(key, "a float", v)),
        }
    }

    pub fn get_bool(&self, key: &str) -> Result<bool> {
        self.as_bool(key, self.require(key)?)
    }

    pub fn opt_bool(&self, key: &str) -> Result<Option<bool>> {
        self.opt(key, |v| self.as_bool(key, v))
    }

    fn as_bool(&self, key: &str, v: &Value) -> Result<bool> {
        match *v {
            Value::Bool(b) => Ok(b),
            _ => Err(self.wrong(key, "a bool", v)),
        }
    }

    fn as_array<'a>(&self, key: &str, v: &'a Value) -> Result<&'a Array> {
        match v {
            Value::Array(a) => Ok(a),
            _ => Err(self.wrong(key, "an array", v)),
        }
    }

    pub fn get_str_array(&self, key: &str) -> Result<&[String]> {
        self.as_str_array(key, self.require(key)?)
    }

    pub fn opt_str_array(&self, key: &str) -> Result<Option<&[String]>> {
        self.opt(key, |v| self.as_str_array(key, v))
    }

    fn as_str_array<'a>(&self, key: &str, v: &'a Value) -> Result<&'a [String]> {
        match self.as_array(key, v)? {
            Array::Str(s) => Ok(s),
            _ => Err(self.wrong(key, "an array of strings", v)),
        }
    }

    /// An array of floats, stored as f32 or f64.
    pub fn get_f32_array(&self, key: &str) -> Result<Vec<f32>> {
        self.as_f32_array(key, self.require(key)?)
    }

    pub fn opt_f32_array(&self, key: &str) -> Result<Option<Vec<f32>>> {
        self.opt(key, |v| self.as_f32_array(key, v))
    }

    fn as_f32_array(&self, key: &str, v: &Value) -> Result<Vec<f32>> {
        match self.as_array(key, v)? {
            Array::F32(x) => Ok(x.clone()),
            Array::F64(x) => Ok(x.iter().map(|&f| f as f32).collect()),
            _ => Err(self.wrong(key, "an array of floats", v)),
        }
    }

    /// An array of integers that all fit i32, stored as any integer type.
    pub fn get_i32_array(&self, key: &str) -> Result<Vec<i32>> {
        self.int_array(key, self.require(key)?, "i32")
    }

    pub fn opt_i32_array(&self, key: &str) -> Result<Option<Vec<i32>>> {
        self.opt(key, |v| self.int_array(key, v, "i32"))
    }

    /// An array of integers that all fit u32, stored as any integer type.
    pub fn get_u32_array(&self, key: &str) -> Result<Vec<u32>> {
        self.int_array(key, self.require(key)?, "u32")
    }

    pub fn opt_u32_array(&self, key: &str) -> Result<Option<Vec<u32>>> {
        self.opt(key, |v| self.int_array(key, v, "u32"))
    }

    fn int_array<T: TryFrom<i128>>(&self, key: &str, v: &Value, name: &str) -> Result<Vec<T>> {
        let ints = self.as_array(key, v)?.to_i128();
        let ints = ints.ok_or_else(|| self.wrong(key, "an array of integers", v))?;
        ints.into_iter()
            .enumerate()
            .map(|(i, n)| {
                T::try_from(n).map_err(|_| {
                    self.err(
                        key,
                        format!("element {i} is {n}, which does not fit {name}"),
                    )
                })
            })
            .collect()
    }
}
