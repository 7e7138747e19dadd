//! Reading a Hugging Face `tokenizer.json` into a [`Pipeline`], and writing one back.
//!
//! The large parts (the vocabulary and the merges) are read straight into typed values; every
//! other component is kept as JSON, read by its own module, and written back as it came.
use super::added::AddedToken;
use super::component::{Component, Part};
use super::decoder::Decoder;
use super::model::{byte_fallback_value, merge_table, Model, Units};
use super::normalizer::Normalizer;
use super::post::PostProcessor;
use super::pretokenizer::PreTokenizer;
use super::{Json, Pipeline};
use crate::error::{Result, TokenizerError};
use rustc_hash::FxHashMap;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use std::path::Path;

#[derive(Deserialize)]
struct FileJson {
    #[serde(default)]
    added_tokens: Vec<AddedJson>,
    #[serde(default)]
    normalizer: Value,
    #[serde(default)]
    pre_tokenizer: Value,
    #[serde(default)]
    post_processor: Value,
    #[serde(default)]
    decoder: Value,
    #[serde(default)]
    truncation: Value,
    #[serde(default)]
    padding: Value,
    model: ModelJson,
}

#[derive(Deserialize)]
struct AddedJson {
    id: u32,
    content: String,
    #[serde(default)]
    single_word: bool,
    #[serde(default)]
    lstrip: bool,
    #[serde(default)]
    rstrip: bool,
    normalized: Option<bool>,
    #[serde(default)]
    special: bool,
}

#[derive(Deserialize)]
struct ModelJson {
    #[serde(rename = "type")]
    kind: Option<String>,
    vocab: Option<Vocab>,
    merges: Option<Vec<MergeJson>>,
    #[serde(default)]
    dropout: Value,
    #[serde(default)]
    unk_token: Value,
    #[serde(default)]
    continuing_subword_prefix: Value,
    #[serde(default)]
    end_of_word_suffix: Value,
    #[serde(default)]
    fuse_unk: Value,
    #[serde(default)]
    byte_fallback: Value,
    #[serde(default)]
    ignore_merges: Value,
}

/// `model.vocab`, a map of token text to id, read into a list.
struct Vocab(Vec<(String, u32)>);

impl<'de> Deserialize<'de> for Vocab {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Vocab;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a map of token to id (a BPE vocabulary)")
            }
            fn visit_map<A: MapAccess<'de>>(
                self,
                mut m: A,
            ) -> std::result::Result<Vocab, A::Error> {
                let mut out = Vec::with_capacity(m.size_hint().unwrap_or(0));
                while let Some((k, v)) = m.next_entry::<String, u32>()? {
                    out.push((k, v));
                }
                Ok(Vocab(out))
            }
        }
        d.deserialize_map(V)
    }
}

/// One merge: `"a b"` or `["a", "b"]`.
struct MergeJson(String, String);

impl<'de> Deserialize<'de> for MergeJson {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = MergeJson;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a merge as \"a b\" or [\"a\", \"b\"]")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> std::result::Result<MergeJson, E> {
                let (a, b) = s
                    .split_once(' ')
                    .ok_or_else(|| E::custom(format!("merge {s:?} has no space")))?;
                Ok(MergeJson(a.to_string(), b.to_string()))
            }
            fn visit_seq<A: SeqAccess<'de>>(
                self,
                mut s: A,
            ) -> std::result::Result<MergeJson, A::Error> {
                let a: String = s
                    .next_element()?
                    .ok_or_else(|| de::Error::invalid_length(0, &self))?;
                let b: String = s
                    .next_element()?
                    .ok_or_else(|| de::Error::invalid_length(1, &self))?;
                if s.next_element::<de::IgnoredAny>()?.is_some() {
                    return Err(de::Error::invalid_length(3, &self));
                }
                Ok(MergeJson(a, b))
            }
        }
        d.deserialize_any(V)
    }
}

/// Reads `text`, the contents of `path`, as a `tokenizer.json`.
pub fn parse(path: &Path, text: &str) -> Result<Pipeline> {
    let file: FileJson = serde_json::from_str(text).map_err(|e| explain(path, text, e))?;
    for (name, v) in [("truncation", &file.truncation), ("padding", &file.padding)] {
        if !v.is_null() {
            return Err(Component::new(path, name, Part::PostProcessor, v).error(
                "is set; scratchllm does not truncate or pad inside the tokenizer (remove it)",
            ));
        }
    }
    let c = |at: &'static str, part, v| Component::new(path, at, part, v);
    let normalizer = Normalizer::parse(&c("normalizer", Part::Normalizer, &file.normalizer))?;
    let pre_tokenizer =
        PreTokenizer::parse(&c("pre_tokenizer", Part::PreTokenizer, &file.pre_tokenizer))?;
    let post = PostProcessor::parse(&c(
        "post_processor",
        Part::PostProcessor,
        &file.post_processor,
    ))?;
    let decoder = Decoder::parse(&c("decoder", Part::Decoder, &file.decoder))?;
    let byte_level = pre_tokenizer
        .as_ref()
        .is_some_and(PreTokenizer::has_byte_level);
    let (model, options) = model(path, file.model, byte_level)?;
    let added = added_tokens(path, file.added_tokens, &model)?;
    let json = Json {
        normalizer: file.normalizer,
        pre_tokenizer: file.pre_tokenizer,
        post_processor: file.post_processor,
        decoder: file.decoder,
        model_options: options,
    };
    Pipeline::new(
        path,
        normalizer,
        pre_tokenizer,
        model,
        added,
        post,
        decoder,
        json,
    )
}

/// A serde error, with the model type named when that is what does not fit.
fn explain(path: &Path, text: &str, e: serde_json::Error) -> TokenizerError {
    let kind = serde_json::from_str::<Value>(text).ok().and_then(|v| {
        v.pointer("/model/type")
            .and_then(Value::as_str)
            .map(str::to_string)
    });
    match kind {
        Some(k) if k != "BPE" => {
            Component::new(path, "model", Part::Model, &Value::Null).unsupported(&k)
        }
        _ => TokenizerError::format(
            path,
            format!("not a tokenizer.json this scratchllm reads: {e}"),
        ),
    }
}

fn model(path: &Path, m: ModelJson, byte_level: bool) -> Result<(Model, Map<String, Value>)> {
    let at = Component::new(path, "model", Part::Model, &Value::Null);
    match m.kind.as_deref() {
        None | Some("BPE") => {}
        Some(other) => return Err(at.unsupported(other)),
    }
    let (Some(Vocab(vocab)), Some(merges)) = (m.vocab, m.merges) else {
        return Err(at.error("a BPE model needs \"vocab\" and \"merges\""));
    };
    if !(m.dropout.is_null() || m.dropout.as_f64() == Some(0.0)) {
        return Err(
            at.error("dropout is random at every call; a tokenizer with dropout is not supported")
        );
    }
    for (name, v) in [
        ("continuing_subword_prefix", &m.continuing_subword_prefix),
        ("end_of_word_suffix", &m.end_of_word_suffix),
    ] {
        if !(v.is_null() || v.as_str() == Some("")) {
            return Err(at.error(format!("{name} {v} is not supported")));
        }
    }
    let flag = |name: &str, v: &Value| -> Result<bool> {
        match v {
            Value::Null => Ok(false),
            Value::Bool(b) => Ok(*b),
            _ => Err(at.error(format!("{name} is not true or false"))),
        }
    };
    let (fuse_unk, byte_fallback, ignore_merges) = (
        flag("fuse_unk", &m.fuse_unk)?,
        flag("byte_fallback", &m.byte_fallback)?,
        flag("ignore_merges", &m.ignore_merges)?,
    );
    let unk_token = match &m.unk_token {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        _ => return Err(at.error("unk_token is not a string")),
    };
    let tokens = ordered(&at, vocab)?;
    let ids: FxHashMap<&str, u32> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.as_str(), i as u32))
        .collect();
    let mut list = Vec::with_capacity(merges.len());
    for (i, MergeJson(a, b)) in merges.iter().enumerate() {
        let id = |t: &str| {
            ids.get(t)
                .copied()
                .ok_or_else(|| at.error(format!("merges[{i}]: {t:?} is not in the vocabulary")))
        };
        list.push((id(a)?, id(b)?));
    }
    let table = merge_table(&list, |a, b| {
        ids.get(format!("{}{}", tokens[a as usize], tokens[b as usize]).as_str())
            .copied()
    })
    .map_err(|i| {
        at.error(format!(
            "merges[{i}] makes a token that is not in the vocabulary"
        ))
    })?;
    let unk = match &unk_token {
        Some(u) => Some(
            ids.get(u.as_str())
                .copied()
                .ok_or_else(|| at.error(format!("unk_token {u:?} is not in the vocabulary")))?,
        ),
        None => None,
    };
    let units = if byte_level {
        byte_units(&at, &tokens)?
    } else {
        char_units(&tokens, byte_fallback, unk, fuse_unk)
    };
    let options = json!({
        "type": "BPE", "dropout": m.dropout, "unk_token": m.unk_token,
        "continuing_subword_prefix": m.continuing_subword_prefix, "end_of_word_suffix": m.end_of_word_suffix,
        "fuse_unk": fuse_unk, "byte_fallback": byte_fallback, "ignore_merges": ignore_merges,
    });
    let options = options.as_object().cloned().unwrap_or_default();
    Ok((
        Model::new(tokens, table, list, ignore_merges, units),
        options,
    ))
}

/// Token texts by id; ids must run 0..n.
fn ordered(at: &Component, vocab: Vec<(String, u32)>) -> Result<Vec<String>> {
    let n = vocab.len();
    let mut tokens: Vec<Option<String>> = vec![None; n];
    for (text, id) in vocab {
        let slot = tokens.get_mut(id as usize).ok_or_else(|| {
            at.error(format!(
                "token {text:?} has id {id}, but there are only {n} tokens"
            ))
        })?;
        if slot.replace(text).is_some() {
            return Err(at.error(format!("id {id} is given to two tokens")));
        }
    }
    tokens
        .into_iter()
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| at.error("the vocabulary ids do not run from 0 without gaps"))
}

fn byte_units(at: &Component, tokens: &[String]) -> Result<Units> {
    let mut encoder = FxHashMap::default();
    encoder.reserve(tokens.len());
    for (id, t) in tokens.iter().enumerate() {
        if let Ok(bytes) = crate::bytes_unicode::decode(t) {
            encoder.insert(bytes, id as u32);
        }
    }
    let mut byte_ids = [0u32; 256];
    for (b, slot) in byte_ids.iter_mut().enumerate() {
        *slot = *encoder.get(&[b as u8][..]).ok_or_else(|| {
            at.error(format!(
                "the byte-level vocabulary has no token for byte 0x{b:02x}"
            ))
        })?;
    }
    Ok(Units::Bytes {
        byte_ids: Box::new(byte_ids),
        encoder,
    })
}

fn char_units(tokens: &[String], byte_fallback: bool, unk: Option<u32>, fuse_unk: bool) -> Units {
    let mut char_ids = FxHashMap::default();
    let mut vocab = FxHashMap::default();
    let mut fallback = Box::new([u32::MAX; 256]);
    for (id, t) in tokens.iter().enumerate() {
        let mut chars = t.chars();
        if let (Some(c), None) = (chars.next(), chars.next()) {
            char_ids.insert(c, id as u32);
        }
        if let Some(b) = byte_fallback_value(t).filter(|_| t.len() == 6) {
            fallback[b as usize] = id as u32;
        }
        vocab.insert(t.clone(), id as u32);
    }
    Units::Chars {
        char_ids,
        fallback: byte_fallback.then_some(fallback),
        unk,
        fuse_unk,
        vocab,
    }
}

/// The added tokens, with ids checked as the library assigns them: a token of the model keeps
/// the model's id, others follow the model's vocabulary in order.
fn added_tokens(path: &Path, list: Vec<AddedJson>, model: &Model) -> Result<Vec<AddedToken>> {
    let mut out: Vec<AddedToken> = Vec::with_capacity(list.len());
    for (i, a) in list.into_iter().enumerate() {
        let at = format!("added_tokens[{i}]");
        let c = Component::new(path, &at, Part::Model, &Value::Null);
        if a.content.is_empty() {
            return Err(c.error("empty content"));
        }
        let own = match model.token_to_id(&a.content) {
            Some(id) => id,
            None => {
                (model.tokens.len()
                    + out
                        .iter()
                        .filter(|t| t.id as usize >= model.tokens.len())
                        .count()) as u32
            }
        };
        if a.id != own {
            return Err(c.error(format!(
                "{:?} has id {}, but the tokenizers library would give it id {own}",
                a.content, a.id
            )));
        }
        out.push(AddedToken {
            id: a.id,
            normalized: a.normalized.unwrap_or(!a.special),
            content: a.content,
            special: a.special,
            lstrip: a.lstrip,
            rstrip: a.rstrip,
            single_word: a.single_word,
        });
    }
    Ok(out)
}

/// The `tokenizer.json` of `p`.
pub fn to_json(p: &Pipeline) -> Value {
    let m = &p.model;
    let vocab: Map<String, Value> = m
        .tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), json!(i)))
        .collect();
    let merges: Vec<Value> = m
        .merge_list
        .iter()
        .map(|&(a, b)| json!([m.tokens[a as usize], m.tokens[b as usize]]))
        .collect();
    let mut model = p.json.model_options.clone();
    model.insert("vocab".into(), Value::Object(vocab));
    model.insert("merges".into(), Value::Array(merges));
    let added: Vec<Value> = p
        .added
        .iter()
        .map(|t| {
            json!({"id": t.id, "content": t.content, "single_word": t.single_word, "lstrip": t.lstrip,
                   "rstrip": t.rstrip, "normalized": t.normalized, "special": t.special})
        })
        .collect();
    json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": added,
        "normalizer": p.json.normalizer, "pre_tokenizer": p.json.pre_tokenizer,
        "post_processor": p.json.post_processor, "decoder": p.json.decoder, "model": model,
    })
}
