//! Hugging Face `tokenizer.json` pipelines, component by component as the `tokenizers` library
//! defines them (`tokenizers/src/tokenizer/mod.rs`, `encode_single_sequence`):
//!
//! 1. added tokens with `normalized: false` are found in the raw text ([`added`]);
//! 2. the text between them is normalized ([`normalizer`]), and the normalized added tokens are
//!    found in it;
//! 3. the remaining text is cut into pieces ([`pretokenizer`], [`split`]);
//! 4. each piece is encoded by the BPE model ([`model`]);
//! 5. with `add_special_tokens`, the post-processor adds its tokens ([`post`]).
//!
//! Decoding maps ids to token texts and runs the decoder chain ([`decoder`]). Any component this
//! crate does not implement is an error naming it and the file ([`component`]).
pub mod added;
pub mod component;
mod convert;
pub mod decoder;
mod facade;
mod load;
pub mod model;
pub mod normalizer;
pub mod post;
pub mod pretokenizer;
pub mod split;

use crate::bpe::SpecialMode;
use crate::error::{Result, TokenizerError};
use added::{AddedToken, Matcher, Part};
use decoder::Decoder;
use model::{Cache, Model};
use normalizer::Normalizer;
use post::PostProcessor;
use pretokenizer::{Piece, PreTokenizer};
use serde_json::{Map, Value};
use std::borrow::Cow;
use std::path::Path;

pub use convert::{check_coverage, plain_gpt2, with_split, SplitPreset};
pub use load::{parse, to_json};

/// The components' JSON as read, written back unchanged by [`to_json`].
#[derive(Clone, Debug, Default)]
pub struct Json {
    pub normalizer: Value,
    pub pre_tokenizer: Value,
    pub post_processor: Value,
    pub decoder: Value,
    pub model_options: Map<String, Value>,
}

/// A whole `tokenizer.json` pipeline.
#[derive(Clone, Debug)]
pub struct Pipeline {
    pub normalizer: Option<Normalizer>,
    pub pre_tokenizer: Option<PreTokenizer>,
    pub model: Model,
    pub added: Vec<AddedToken>,
    raw: Matcher,
    normalized: Matcher,
    pub post: Option<PostProcessor>,
    pub decoder: Option<Decoder>,
    /// The text of every id (added tokens with `normalized` as normalized, as the library decodes).
    texts: Vec<String>,
    special: Vec<bool>,
    pub json: Json,
    /// Set when this pipeline is one of our trained presets, which our own format can hold.
    pub preset: Option<SplitPreset>,
}

impl Pipeline {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        path: &Path,
        normalizer: Option<Normalizer>,
        pre_tokenizer: Option<PreTokenizer>,
        model: Model,
        added: Vec<AddedToken>,
        post: Option<PostProcessor>,
        decoder: Option<Decoder>,
        json: Json,
    ) -> Result<Self> {
        let mut p = Pipeline {
            normalizer,
            pre_tokenizer,
            texts: model.tokens.clone(),
            model,
            added: Vec::new(),
            raw: Matcher::new(Vec::new(), Vec::new())?,
            normalized: Matcher::new(Vec::new(), Vec::new())?,
            post,
            decoder,
            special: Vec::new(),
            json,
            preset: None,
        };
        p.set_added(added)
            .map_err(|e| TokenizerError::format(path, e.to_string()))?;
        p.check_post(path)?;
        Ok(p)
    }

    /// Installs the added tokens: their texts, their flags and the two matchers.
    pub fn set_added(&mut self, added: Vec<AddedToken>) -> Result<()> {
        let n = self.model.tokens.len()
            + added
                .iter()
                .filter(|t| t.id as usize >= self.model.tokens.len())
                .count();
        self.texts.truncate(self.model.tokens.len());
        self.texts.resize(n, String::new());
        self.special = vec![false; n];
        let (mut raw, mut norm) = ((Vec::new(), Vec::new()), (Vec::new(), Vec::new()));
        for t in &added {
            let slot = t.id as usize;
            if slot >= n {
                return Err(TokenizerError::Vocabulary(format!(
                    "added token {:?} has id {}, past the {n} ids",
                    t.content, t.id
                )));
            }
            self.special[slot] = t.special;
            if t.normalized {
                let form = self.normalize(&t.content).into_owned();
                // An empty pattern would match between any two bytes; the library refuses it too.
                if form.is_empty() {
                    return Err(TokenizerError::Vocabulary(format!(
                        "added token {:?} (id {}) normalizes to nothing",
                        t.content, t.id
                    )));
                }
                self.texts[slot] = form.clone();
                norm.0.push(form);
                norm.1.push(t.clone());
            } else {
                self.texts[slot] = t.content.clone();
                raw.0.push(t.content.clone());
                raw.1.push(t.clone());
            }
        }
        self.raw = Matcher::new(raw.0, raw.1)?;
        self.normalized = Matcher::new(norm.0, norm.1)?;
        self.added = added;
        Ok(())
    }

    fn check_post(&self, path: &Path) -> Result<()> {
        let mut bad = None;
        let mut check = |p: &PostProcessor| {
            if let PostProcessor::Template(pieces) = p {
                bad = bad.or(pieces
                    .iter()
                    .flatten()
                    .flatten()
                    .find(|&&id| id as usize >= self.texts.len())
                    .copied());
            }
        };
        match &self.post {
            Some(PostProcessor::Sequence(list)) => list.iter().for_each(&mut check),
            Some(p) => check(p),
            None => {}
        }
        match bad {
            Some(id) => Err(TokenizerError::format(
                path,
                format!("post_processor: token id {id} is not in the vocabulary"),
            )),
            None => Ok(()),
        }
    }

    /// Number of ids, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.texts.len()
    }

    /// The text form of `id` (the vocabulary's, or the added token's).
    pub fn token_text(&self, id: u32) -> Option<&str> {
        self.texts.get(id as usize).map(String::as_str)
    }

    pub fn is_special(&self, id: u32) -> bool {
        self.special.get(id as usize).copied().unwrap_or(false)
    }

    /// The id of a token given by its text form: an added token, else a vocabulary entry.
    pub fn token_to_id(&self, text: &str) -> Option<u32> {
        self.added
            .iter()
            .rev()
            .find(|t| t.content == text)
            .map(|t| t.id)
            .or_else(|| self.model.token_to_id(text))
    }

    fn normalize<'a>(&self, text: &'a str) -> Cow<'a, str> {
        match &self.normalizer {
            Some(n) => n.apply(Cow::Borrowed(text)),
            None => Cow::Borrowed(text),
        }
    }

    /// Appends the ids of `text` to `out` (no post-processor); special added tokens as `mode` says.
    pub fn encode(&self, text: &str, mode: SpecialMode, out: &mut Vec<u32>) -> Result<()> {
        let mut cache = Cache::default();
        for part in self.raw.split(text, mode, 0)? {
            let (s, e) = match part {
                Part::Token(id) => {
                    out.push(id);
                    continue;
                }
                Part::Text(s, e) => (s, e),
            };
            let normalized = self.normalize(&text[s..e]);
            for inner in self.normalized.split(&normalized, mode, s)? {
                match inner {
                    Part::Token(id) => out.push(id),
                    Part::Text(a, b) => {
                        self.encode_text(&normalized[a..b], s == 0 && a == 0, &mut cache, out)
                    }
                }
            }
        }
        Ok(())
    }

    /// Pre-tokenizes and encodes text that holds no added token.
    fn encode_text(&self, text: &str, first: bool, cache: &mut Cache, out: &mut Vec<u32>) {
        if text.is_empty() {
            return;
        }
        match self.pre_tokenizer.as_ref() {
            Some(pre) => match pre.isolated_splitter() {
                Some(splitter) if splitter.tiles() => {
                    for (a, b) in splitter.matches(text) {
                        self.model.encode(&text[a..b], cache, out);
                    }
                }
                Some(splitter) => {
                    for (a, b, _) in splitter.find_matches(text) {
                        self.model.encode(&text[a..b], cache, out);
                    }
                }
                None => {
                    let pieces = pre.apply(vec![Piece {
                        text: Cow::Borrowed(text),
                        first,
                    }]);
                    for p in pieces {
                        self.model.encode(&p.text, cache, out);
                    }
                }
            },
            None => self.model.encode(text, cache, out),
        }
    }

    /// `ids` with the post-processor's special tokens (`add_special_tokens`).
    pub fn post_process(&self, ids: Vec<u32>) -> Vec<u32> {
        match &self.post {
            Some(p) => p.apply(ids),
            None => ids,
        }
    }

    /// The text of `ids` through the decoder chain (`Tokenizer::decode` of the library).
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        let mut tokens = Vec::with_capacity(ids.len());
        for &id in ids {
            let text = self.token_text(id).ok_or(TokenizerError::UnknownId {
                id,
                vocab_size: self.texts.len(),
            })?;
            if !(skip_special && self.is_special(id)) {
                tokens.push(text.to_string());
            }
        }
        Ok(match &self.decoder {
            Some(d) => d.chain(tokens).concat(),
            None => tokens.join(" "),
        })
    }

    /// The bytes one token stands for on its own (for streaming and `token_bytes`).
    pub fn token_view(&self, id: u32) -> Vec<u8> {
        let text = self.token_text(id).unwrap_or_default();
        if self.model.is_byte_level() {
            return model::byte_level_bytes(text);
        }
        match &self.decoder {
            Some(d) => d.view(text),
            None => text.as_bytes().to_vec(),
        }
    }
}
