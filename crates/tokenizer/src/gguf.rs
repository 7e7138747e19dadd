//! A tokenizer as GGUF files hold it (llama.cpp's `tokenizer.ggml.*` metadata), and back.
//!
//! llama.cpp keeps a byte-level BPE vocabulary as `tokenizer.ggml.model = "gpt2"`: the tokens in
//! the byte-to-unicode form that `tokenizer.json` uses, a type per token (control tokens are the
//! special ones), the merges as `"a b"` strings, and `tokenizer.ggml.pre` naming the split
//! pattern. [`GgufVocab::tokenizer`] turns that into the `tokenizer.json` pipeline it stands for,
//! so one code path encodes both; [`GgufVocab::from_tokenizer`] goes the other way. This crate
//! has no GGUF reader: the model crate reads the file and fills a [`GgufVocab`].
use crate::bpe::Tokenizer;
use crate::error::{Result, TokenizerError};
use crate::hf::split::{GPT2_PATTERN, LLAMA3_PATTERN, QWEN2_PATTERN};
use crate::template::ChatTemplate;
use serde_json::{json, Map, Value};
use std::path::Path;

/// llama.cpp's token types (`llama_token_type`).
pub const NORMAL: i32 = 1;
pub const UNKNOWN: i32 = 2;
pub const CONTROL: i32 = 3;
pub const USER_DEFINED: i32 = 4;
pub const UNUSED: i32 = 5;
pub const BYTE: i32 = 6;

/// The split patterns we run, by their `tokenizer.ggml.pre` names (llama.cpp's `llama-vocab.cpp`).
const PRE_NAMES: &[(&str, &str)] = &[
    ("gpt-2", GPT2_PATTERN),
    ("llama-bpe", LLAMA3_PATTERN),
    ("qwen2", QWEN2_PATTERN),
];

/// The `tokenizer.ggml.*` values of one vocabulary.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GgufVocab {
    /// `tokenizer.ggml.model`: "gpt2" (byte-level BPE) is the one read here.
    pub model: String,
    /// `tokenizer.ggml.pre`: the split pattern's name.
    pub pre: String,
    pub tokens: Vec<String>,
    pub token_types: Vec<i32>,
    /// `"a b"`, in merge order (byte-level BPE).
    pub merges: Vec<String>,
    /// Per token, SentencePiece's score (`"llama"` vocabularies: pieces merge by highest score).
    pub scores: Vec<f32>,
    /// `tokenizer.ggml.add_space_prefix` (SentencePiece: a "▁" before the text; llama.cpp's default
    /// is true).
    pub add_space_prefix: Option<bool>,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    /// End of turn (`tokenizer.ggml.eot_token_id`).
    pub eot: Option<u32>,
    pub pad: Option<u32>,
    /// `tokenizer.ggml.add_bos_token`.
    pub add_bos: bool,
    pub chat_template: Option<String>,
}

impl GgufVocab {
    /// The tokenizer these values describe; `source` (the GGUF file) names it in errors.
    pub fn tokenizer(&self, source: &Path) -> Result<Tokenizer> {
        let bad = |m: String| TokenizerError::format(source, m);
        if self.model != "gpt2" && self.model != "llama" {
            return Err(bad(format!(
                "tokenizer.ggml.model is {:?}; scratchllm reads \"gpt2\" (byte-level BPE) and \
                 \"llama\" (SentencePiece BPE) vocabularies from GGUF files",
                self.model
            )));
        }
        if !self.token_types.is_empty() && self.token_types.len() != self.tokens.len() {
            return Err(bad(format!(
                "tokenizer.ggml.token_type has {} entries for {} tokens",
                self.token_types.len(),
                self.tokens.len()
            )));
        }
        let spm = self.model == "llama";
        let pattern = PRE_NAMES
            .iter()
            .find(|(name, _)| *name == self.pre || (spm && self.pre.is_empty()))
            .map(|(_, p)| *p)
            .ok_or_else(|| {
                let known: Vec<&str> = PRE_NAMES.iter().map(|(n, _)| *n).collect();
                bad(format!(
                    "tokenizer.ggml.pre {:?} is not a split pattern scratchllm knows ({})",
                    self.pre,
                    known.join(", ")
                ))
            });
        let text = |id: Option<u32>, field: &str| -> Result<Option<&str>> {
            match id {
                None => Ok(None),
                Some(id) => self
                    .tokens
                    .get(id as usize)
                    .map(|t| Some(t.as_str()))
                    .ok_or_else(|| {
                        bad(format!(
                            "{field} is {id}, past the {} tokens",
                            self.tokens.len()
                        ))
                    }),
            }
        };
        let (bos, eos) = (
            text(self.bos, "tokenizer.ggml.bos_token_id")?,
            text(self.eos, "tokenizer.ggml.eos_token_id")?,
        );
        let eot = text(self.eot, "tokenizer.ggml.eot_token_id")?;
        let mut vocab = Map::new();
        let mut added = Vec::new();
        for (id, t) in self.tokens.iter().enumerate() {
            if vocab.insert(t.clone(), json!(id)).is_some() {
                return Err(bad(format!(
                    "tokenizer.ggml.tokens[{id}] {t:?} appears twice"
                )));
            }
            let ty = self.token_types.get(id).copied().unwrap_or(NORMAL);
            if ty == CONTROL || ty == USER_DEFINED {
                added.push(
                    json!({"id": id, "content": t, "single_word": false, "lstrip": false,
                    "rstrip": false, "normalized": false, "special": ty == CONTROL}),
                );
            }
        }
        if spm {
            return self.spm_tokenizer(source, vocab, added, bos, eos, eot);
        }
        let pattern = pattern?;
        let mut merges = Vec::with_capacity(self.merges.len());
        for (i, m) in self.merges.iter().enumerate() {
            let (a, b) = m.split_once(' ').ok_or_else(|| {
                bad(format!(
                    "tokenizer.ggml.merges[{i}] {m:?} is not two tokens split by a space"
                ))
            })?;
            merges.push(json!([a, b]));
        }
        let byte_level = |regex: bool| json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": regex});
        let pre_tokenizer = if pattern == GPT2_PATTERN {
            byte_level(true)
        } else {
            json!({"type": "Sequence", "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": false},
                byte_level(false)
            ]})
        };
        let post_processor = match (self.add_bos, bos) {
            (true, Some(b)) => json!({"type": "TemplateProcessing",
                "single": [{"SpecialToken": {"id": b, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
                "pair": [{"SpecialToken": {"id": b, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                         {"SpecialToken": {"id": b, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
                "special_tokens": {b: {"id": b, "ids": [self.bos], "tokens": [b]}}}),
            _ => Value::Null,
        };
        let doc = json!({
            "version": "1.0", "truncation": null, "padding": null, "added_tokens": added,
            "normalizer": null, "pre_tokenizer": pre_tokenizer, "post_processor": post_processor,
            "decoder": byte_level(true),
            "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                "vocab": vocab, "merges": merges}
        });
        self.finish(source, &doc, bos, eos, eot)
    }

    /// The tokenizer of `doc` (a `tokenizer.json`) with the special roles and template set.
    fn finish(
        &self,
        source: &Path,
        doc: &Value,
        bos: Option<&str>,
        eos: Option<&str>,
        eot: Option<&str>,
    ) -> Result<Tokenizer> {
        let mut tok = crate::formats::load_hf(source, &doc.to_string())?;
        let mut config = Map::new();
        for (name, t) in [("bos_token", bos), ("eos_token", eos)] {
            if let Some(t) = t {
                config.insert(name.into(), json!(t));
            }
        }
        tok.apply_tokenizer_config(source, &Value::Object(config))?;
        if let Some(source_text) = &self.chat_template {
            tok.meta.templates = vec![ChatTemplate {
                name: "default".into(),
                source: source_text.clone(),
                origin: source.to_path_buf(),
            }];
        }
        tok.meta.generation_eos = self.eos.iter().chain(&self.eot).copied().collect();
        tok.guess_roles();
        if let (Some(id), Some(t)) = (self.eot, eot) {
            if !tok.meta.end_of_turn.iter().any(|r| r.id == id) {
                tok.meta.end_of_turn.push(crate::meta::Role {
                    text: t.to_string(),
                    id,
                });
            }
        }
        Ok(tok)
    }

    /// A SentencePiece BPE vocabulary (Gemma's) as the `tokenizer.json` pipeline transformers
    /// ships for it: spaces become "▁", pieces merge by score, unknown characters fall back to
    /// `<0xNN>` byte tokens. The merge list is derived from the scores as `tokenizers`' converter
    /// does (`SentencePieceExtractor`): every split of a piece into two pieces, ordered by the
    /// piece's score, then by the lengths of the two halves.
    fn spm_tokenizer(
        &self,
        source: &Path,
        vocab: Map<String, Value>,
        added: Vec<Value>,
        bos: Option<&str>,
        eos: Option<&str>,
        eot: Option<&str>,
    ) -> Result<Tokenizer> {
        let bad = |m: String| TokenizerError::format(source, m);
        if self.scores.len() != self.tokens.len() {
            return Err(bad(format!(
                "tokenizer.ggml.scores has {} entries for {} tokens",
                self.scores.len(),
                self.tokens.len()
            )));
        }
        let ty = |id: usize| self.token_types.get(id).copied().unwrap_or(NORMAL);
        let mergeable = |id: usize| !matches!(ty(id), CONTROL | UNUSED);
        let mut order: Vec<usize> = (0..self.tokens.len()).filter(|&i| mergeable(i)).collect();
        order.sort_by(|&a, &b| self.scores[b].total_cmp(&self.scores[a]));
        let id_of = |t: &str| vocab.get(t).and_then(Value::as_u64).map(|i| i as usize);
        let mut merges: Vec<(f32, usize, usize, usize, usize)> = Vec::new();
        for &id in &order {
            let piece = &self.tokens[id];
            let mut local: Vec<(usize, usize, usize, usize)> = Vec::new();
            for (cut, _) in piece.char_indices().skip(1) {
                let (l, r) = (&piece[..cut], &piece[cut..]);
                if let (Some(a), Some(b)) = (id_of(l), id_of(r)) {
                    if mergeable(a) && mergeable(b) {
                        local.push((a, b, l.chars().count(), r.chars().count()));
                    }
                }
            }
            local.sort_by_key(|&(a, b, ..)| (a, b));
            merges.extend(
                local
                    .into_iter()
                    .map(|(a, b, la, lb)| (self.scores[id], la, lb, a, b)),
            );
        }
        merges.sort_by(|x, y| y.0.total_cmp(&x.0).then(y.1.cmp(&x.1)).then(y.2.cmp(&x.2)));
        let merges: Vec<Value> = merges
            .iter()
            .map(|&(_, _, _, a, b)| json!([self.tokens[a], self.tokens[b]]))
            .collect();
        let unk = (0..self.tokens.len())
            .find(|&i| ty(i) == UNKNOWN)
            .map(|i| self.tokens[i].clone());
        let replace = json!({"type": "Replace", "pattern": {"String": " "}, "content": "\u{2581}"});
        let normalizer = if self.add_space_prefix.unwrap_or(true) {
            json!({"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "\u{2581}"}, replace]})
        } else {
            replace
        };
        let post_processor = match (self.add_bos, bos) {
            (true, Some(b)) => json!({"type": "TemplateProcessing",
                "single": [{"SpecialToken": {"id": b, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
                "pair": [{"SpecialToken": {"id": b, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                         {"SpecialToken": {"id": b, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
                "special_tokens": {b: {"id": b, "ids": [self.bos], "tokens": [b]}}}),
            _ => Value::Null,
        };
        let doc = json!({
            "version": "1.0", "truncation": null, "padding": null, "added_tokens": added,
            "normalizer": normalizer, "pre_tokenizer": null, "post_processor": post_processor,
            "decoder": {"type": "Sequence", "decoders": [
                {"type": "Replace", "pattern": {"String": "\u{2581}"}, "content": " "},
                {"type": "ByteFallback"}, {"type": "Fuse"}]},
            "model": {"type": "BPE", "dropout": null, "unk_token": unk, "continuing_subword_prefix": null,
                "end_of_word_suffix": null, "fuse_unk": true, "byte_fallback": true, "ignore_merges": false,
                "vocab": vocab, "merges": merges}
        });
        self.finish(source, &doc, bos, eos, eot)
    }

    /// The GGUF values of `tok`: a byte-level BPE split by GPT-2's, Llama 3's or Qwen2's pattern.
    pub fn from_tokenizer(tok: &Tokenizer) -> Result<GgufVocab> {
        let unsupported = |what: String| {
            TokenizerError::Vocabulary(format!(
                "this tokenizer cannot be written to a GGUF file: {what}"
            ))
        };
        let doc = crate::formats::hf_tokenizer_json(tok);
        let model = &doc["model"];
        if model["type"] != "BPE" {
            return Err(unsupported(format!(
                "its model is {}; GGUF holds BPE vocabularies",
                model["type"]
            )));
        }
        let spm = model["byte_fallback"] == true;
        let add_space_prefix = if spm {
            Some(spm_normalizer(&doc["normalizer"]).ok_or_else(|| {
                unsupported(format!(
                    "a byte-fallback BPE with normalizer {} is not SentencePiece's (spaces as \"▁\")",
                    doc["normalizer"]
                ))
            })?)
        } else {
            None
        };
        if !spm && !doc["normalizer"].is_null() {
            return Err(unsupported(format!(
                "it has a normalizer ({}), which llama.cpp's byte-level BPE does not run",
                doc["normalizer"]
            )));
        }
        let pre = if spm {
            Some("default")
        } else {
            pre_name(&doc["pre_tokenizer"])
        };
        let pre = pre.ok_or_else(|| {
            unsupported(format!(
                "its pre-tokenizer {} is not one llama.cpp names (GPT-2's, Llama 3's or Qwen2's split)",
                doc["pre_tokenizer"]
            ))
        })?;
        let n = tok.vocab_size();
        let mut tokens: Vec<Option<String>> = vec![None; n];
        let mut types = vec![NORMAL; n];
        if let Some(vocab) = model["vocab"].as_object() {
            for (t, id) in vocab {
                if let Some(slot) = id.as_u64().and_then(|id| tokens.get_mut(id as usize)) {
                    *slot = Some(t.clone());
                }
            }
        }
        for a in doc["added_tokens"].as_array().into_iter().flatten() {
            let (Some(id), Some(t)) = (a["id"].as_u64(), a["content"].as_str()) else {
                continue;
            };
            if let Some(slot) = tokens.get_mut(id as usize) {
                *slot = Some(t.to_string());
                types[id as usize] = if a["special"] == true {
                    CONTROL
                } else {
                    USER_DEFINED
                };
            }
        }
        // Ids no token fills are written as llama.cpp's converter writes them: unused padding.
        let tokens: Vec<String> = tokens
            .into_iter()
            .enumerate()
            .map(|(id, t)| {
                t.unwrap_or_else(|| {
                    types[id] = UNUSED;
                    format!("[PAD{id}]")
                })
            })
            .collect();
        let merges = model["merges"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|m| match m {
                Value::String(s) => Ok(s.clone()),
                Value::Array(p) if p.len() == 2 => Ok(format!(
                    "{} {}",
                    p[0].as_str().unwrap_or_default(),
                    p[1].as_str().unwrap_or_default()
                )),
                other => Err(unsupported(format!("a merge {other} is not a pair"))),
            })
            .collect::<Result<Vec<_>>>()?;
        let (merges, scores) = if spm {
            // SentencePiece merges by score: a piece made by merge r scores -r, so the highest
            // score is the earliest merge; pieces no merge makes score below every merge.
            let mut scores = vec![-(merges.len() as f32) - 1.0; tokens.len()];
            let id_of: std::collections::HashMap<&str, usize> = tokens
                .iter()
                .enumerate()
                .map(|(i, t)| (t.as_str(), i))
                .collect();
            for (rank, m) in merges.iter().enumerate().rev() {
                if let Some(&id) = id_of.get(m.replacen(' ', "", 1).as_str()) {
                    scores[id] = -(rank as f32);
                }
            }
            for (id, t) in tokens.iter().enumerate() {
                if types[id] == NORMAL && crate::hf::model::byte_fallback_value(t).is_some() {
                    types[id] = BYTE;
                }
            }
            if let Some(unk) = model["unk_token"].as_str().and_then(|u| id_of.get(u)) {
                types[*unk] = UNKNOWN;
            }
            (Vec::new(), scores)
        } else {
            (merges, Vec::new())
        };
        let meta = tok.meta();
        let bos = meta.bos.as_ref().map(|r| r.id);
        let with_specials = tok.with_special_tokens(Vec::new());
        Ok(GgufVocab {
            model: if spm { "llama" } else { "gpt2" }.into(),
            pre: pre.into(),
            tokens,
            token_types: types,
            merges,
            bos,
            eos: tok.end_of_text().map(|r| r.id),
            eot: meta.end_of_turn.first().map(|r| r.id),
            pad: meta.pad.as_ref().map(|r| r.id),
            add_bos: bos.is_some() && with_specials.first() == bos.as_ref(),
            chat_template: meta.templates.first().map(|t| t.source.clone()),
            scores,
            add_space_prefix,
        })
    }
}

/// For SentencePiece's normalizer (spaces to "▁", optionally a "▁" first): whether it prepends.
fn spm_normalizer(n: &Value) -> Option<bool> {
    let replace = |r: &Value| {
        r["type"] == "Replace" && r["pattern"]["String"] == " " && r["content"] == "\u{2581}"
    };
    if replace(n) {
        return Some(false);
    }
    match n["normalizers"].as_array()?.as_slice() {
        [p, r]
            if n["type"] == "Sequence"
                && p["type"] == "Prepend"
                && p["prepend"] == "\u{2581}"
                && replace(r) =>
        {
            Some(true)
        }
        _ => None,
    }
}

/// llama.cpp's name for the split of a `tokenizer.json` pre-tokenizer: GPT-2's when ByteLevel
/// splits by itself, else the pattern of a Split before a ByteLevel that does not.
fn pre_name(pre: &Value) -> Option<&'static str> {
    let name_of = |pattern: &str| {
        PRE_NAMES
            .iter()
            .find(|(_, p)| *p == pattern)
            .map(|(n, _)| *n)
    };
    match pre["type"].as_str()? {
        "ByteLevel" if pre["use_regex"] != false && pre["add_prefix_space"] != true => {
            Some("gpt-2")
        }
        "Sequence" => match pre["pretokenizers"].as_array()?.as_slice() {
            [split, byte_level]
                if split["type"] == "Split"
                    && split["behavior"] == "Isolated"
                    && split["invert"] != true
                    && byte_level["type"] == "ByteLevel"
                    && byte_level["use_regex"] == false
                    && byte_level["add_prefix_space"] != true =>
            {
                name_of(split["pattern"]["Regex"].as_str()?)
            }
            _ => None,
        },
        _ => None,
    }
}
