//! Reading one component of a `tokenizer.json` with errors that name the file, the component's
//! place in it (`pre_tokenizer.pretokenizers[1]`) and what is wrong.
use super::split::Splitter;
use crate::error::{Result, TokenizerError};
use serde_json::Value;
use std::path::Path;

/// Which part of the pipeline a component belongs to (for the list of what is supported).
#[derive(Clone, Copy, Debug)]
pub enum Part {
    Normalizer,
    PreTokenizer,
    Model,
    PostProcessor,
    Decoder,
}

impl Part {
    fn supported(self) -> &'static str {
        match self {
            Part::Normalizer => {
                "NFC, NFD, NFKC, NFKD, Lowercase, Replace, Prepend, Strip, Sequence"
            }
            Part::PreTokenizer => "Split, ByteLevel, Metaspace, Sequence",
            Part::Model => "BPE",
            Part::PostProcessor => "TemplateProcessing, ByteLevel, Sequence",
            Part::Decoder => "ByteLevel, Replace, ByteFallback, Fuse, Strip, Metaspace, Sequence",
        }
    }
}

/// A JSON value inside a `tokenizer.json`, with where it is.
#[derive(Clone, Copy)]
pub struct Component<'a> {
    pub path: &'a Path,
    pub at: &'a str,
    pub part: Part,
    pub value: &'a Value,
}

impl<'a> Component<'a> {
    pub fn new(path: &'a Path, at: &'a str, part: Part, value: &'a Value) -> Self {
        Component {
            path,
            at,
            part,
            value,
        }
    }

    /// An error about this component.
    pub fn error(&self, message: impl Into<String>) -> TokenizerError {
        TokenizerError::Component {
            path: self.path.to_path_buf(),
            component: self.at.to_string(),
            message: message.into(),
        }
    }

    /// The error for a component type we do not implement: never ignored, never guessed.
    pub fn unsupported(&self, kind: &str) -> TokenizerError {
        self.error(format!(
            "type {kind:?} is not supported (scratchllm reads {}); refusing rather than tokenizing differently",
            self.part.supported()
        ))
    }

    /// The component's `"type"`.
    pub fn kind(&self) -> Result<&'a str> {
        self.value
            .get("type")
            .and_then(Value::as_str)
            .ok_or_else(|| self.error("has no string \"type\""))
    }

    /// Field `key`, if present and not null.
    pub fn get(&self, key: &str) -> Option<&'a Value> {
        self.value.get(key).filter(|v| !v.is_null())
    }

    /// `parse` applied to each component of list field `key`, each knowing its place (`at.key[i]`).
    pub fn each<T>(
        &self,
        key: &str,
        mut parse: impl FnMut(&Component) -> Result<T>,
    ) -> Result<Vec<T>> {
        let items = self
            .get(key)
            .and_then(Value::as_array)
            .ok_or_else(|| self.error(format!("\"{key}\" is not a list")))?;
        let mut out = Vec::with_capacity(items.len());
        for (i, v) in items.iter().enumerate() {
            let at = format!("{}.{key}[{i}]", self.at);
            out.push(parse(&Component::new(self.path, &at, self.part, v))?);
        }
        Ok(out)
    }
}

/// String field `key` of `c`.
pub fn str_field<'a>(c: &Component<'a>, key: &str) -> Result<&'a str> {
    c.get(key)
        .and_then(Value::as_str)
        .ok_or_else(|| c.error(format!("\"{key}\" is missing or not a string")))
}

/// Boolean field `key` of `c`, `default` when absent.
pub fn bool_or(c: &Component, key: &str, default: bool) -> Result<bool> {
    match c.get(key) {
        None => Ok(default),
        Some(v) => v
            .as_bool()
            .ok_or_else(|| c.error(format!("\"{key}\" is not true or false"))),
    }
}

/// Boolean field `key` of `c`, required.
pub fn bool_field(c: &Component, key: &str) -> Result<bool> {
    c.get(key)
        .and_then(Value::as_bool)
        .ok_or_else(|| c.error(format!("\"{key}\" is missing or not true/false")))
}

/// Unsigned integer field `key` of `c`.
pub fn usize_field(c: &Component, key: &str) -> Result<usize> {
    c.get(key)
        .and_then(Value::as_u64)
        .and_then(|n| usize::try_from(n).ok())
        .ok_or_else(|| c.error(format!("\"{key}\" is missing or not a count")))
}

/// A pattern field: `{"String": s}` (matched literally) or `{"Regex": r}`.
pub fn pattern_field(c: &Component, key: &str) -> Result<Splitter> {
    let p = c.get(key);
    let compiled = match (
        p.and_then(|p| p.get("String")).and_then(Value::as_str),
        p.and_then(|p| p.get("Regex")).and_then(Value::as_str),
    ) {
        (Some(s), None) => Splitter::literal(s),
        (None, Some(r)) => Splitter::new(r),
        _ => {
            return Err(c.error(format!(
                "\"{key}\" is neither {{\"String\": ...}} nor {{\"Regex\": ...}}"
            )))
        }
    };
    compiled.map_err(|e| c.error(e))
}
