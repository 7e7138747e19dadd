//! Byte-level BPE, bit-exact with GPT-2 (OpenAI's `encoder.py`, tiktoken's `r50k_base`).
//!
//! Text is split into pieces by the GPT-2 pre-tokenizer ([`crate::pretokenize`]); each piece starts as
//! one token per byte and is merged pair by pair ([`crate::merge`]). Two merge rules exist in the
//! wild and both are supported:
//! - *ranks* (tiktoken, `.tiktoken` files): any two adjacent tokens whose concatenation is a token
//!   merge, the lowest-ranked concatenation first;
//! - *merge list* (Hugging Face `merges.txt`, `tokenizer.json`): only the listed pairs merge, in list
//!   order.
//!
//! Both become one table from a pair of ids to `(priority, merged id)`, so encoding has one path.
//! Special tokens (`<|endoftext|>`) are matched in the raw text before pre-tokenization, as tiktoken
//! does, and are refused by default.
use crate::error::{Result, TokenizerError};
use crate::hf::Pipeline;
use crate::long::{byte_segments, merge_runs, Junctions};
use crate::merge::{merge, merge_flat, pair_key, MergeTable};
use crate::meta::Meta;
use crate::pretokenize::pieces;
use rustc_hash::FxHashMap;
use std::sync::Arc;

/// How special-token text (such as `<|endoftext|>`) inside the input is treated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum SpecialMode {
    /// An error naming the byte offset (tiktoken's `encode` default).
    #[default]
    Forbid,
    /// Encoded as ordinary text (tiktoken's `encode_ordinary`).
    AsText,
    /// Encoded as the special token's id (tiktoken's `allowed_special="all"`).
    Allow,
}

/// Which merge rule the vocabulary follows (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MergeRule {
    Ranks,
    MergeList,
}

/// A byte-level BPE tokenizer: vocabulary, merges and special tokens.
#[derive(Clone, Debug)]
pub struct Tokenizer {
    /// Bytes of every id; a special token's bytes are its text.
    pub(crate) vocab: Vec<Vec<u8>>,
    /// Ordinary tokens only.
    pub(crate) encoder: FxHashMap<Vec<u8>, u32>,
    pub(crate) byte_ids: [u32; 256],
    pub(crate) merges: MergeTable,
    /// The merge list in priority order (for [`MergeRule::MergeList`]; derived on demand otherwise).
    pub(crate) merge_list: Vec<(u32, u32)>,
    pub(crate) rule: MergeRule,
    /// Special tokens, longest first so that a longer one wins where two start at one place.
    pub(crate) specials: Vec<(String, u32)>,
    /// Where long pieces can be cut ([`crate::long`]).
    pub(crate) junctions: Junctions,
    /// A Hugging Face `tokenizer.json` pipeline that encodes and decodes in place of the GPT-2
    /// path above; `vocab` then holds what each id stands for on its own ([`crate::hf`]).
    pub(crate) hf: Option<Arc<Pipeline>>,
    /// Special roles, chat templates and load warnings ([`crate::meta`]).
    pub(crate) meta: Meta,
}

impl Tokenizer {
    /// A tokenizer with tiktoken's rule from token bytes in rank order (id = rank).
    pub fn from_ranks(tokens: Vec<Vec<u8>>, specials: &[(String, u32)]) -> Result<Self> {
        let encoder = build_encoder(&tokens)?;
        let mut merges = MergeTable::default();
        for (id, t) in tokens.iter().enumerate() {
            for k in 1..t.len() {
                if let (Some(&a), Some(&b)) = (encoder.get(&t[..k]), encoder.get(&t[k..])) {
                    merges.insert(pair_key(a, b), (id as u32, id as u32));
                }
            }
        }
        Self::assemble(
            tokens,
            encoder,
            merges,
            Vec::new(),
            MergeRule::Ranks,
            specials,
        )
    }

    /// A tokenizer with the merge-list rule: `merges[i]` (a pair of ids) has priority `i`.
    pub fn from_merges(
        tokens: Vec<Vec<u8>>,
        merge_list: Vec<(u32, u32)>,
        specials: &[(String, u32)],
    ) -> Result<Self> {
        let encoder = build_encoder(&tokens)?;
        let mut merges = MergeTable::default();
        for (i, &(a, b)) in merge_list.iter().enumerate() {
            let (ta, tb) = match (tokens.get(a as usize), tokens.get(b as usize)) {
                (Some(ta), Some(tb)) => (ta, tb),
                _ => {
                    return Err(vocab_err(format!(
                        "merge {i} names an unknown id ({a}, {b})"
                    )))
                }
            };
            let joined = [ta.as_slice(), tb.as_slice()].concat();
            let Some(&id) = encoder.get(&joined) else {
                return Err(vocab_err(format!(
                    "merge {i} makes a token not in the vocabulary"
                )));
            };
            if merges.insert(pair_key(a, b), (i as u32, id)).is_some() {
                return Err(vocab_err(format!("merge {i} repeats an earlier merge")));
            }
        }
        Self::assemble(
            tokens,
            encoder,
            merges,
            merge_list,
            MergeRule::MergeList,
            specials,
        )
    }

    fn assemble(
        mut vocab: Vec<Vec<u8>>,
        encoder: FxHashMap<Vec<u8>, u32>,
        merges: MergeTable,
        merge_list: Vec<(u32, u32)>,
        rule: MergeRule,
        specials: &[(String, u32)],
    ) -> Result<Self> {
        let mut byte_ids = [0u32; 256];
        for (b, slot) in byte_ids.iter_mut().enumerate() {
            *slot = *encoder.get(&[b as u8][..]).ok_or_else(|| {
                vocab_err(format!(
                    "no token for the single byte 0x{b:02x}; byte-level BPE needs all 256"
                ))
            })?;
        }
        let junctions = Junctions::of_bytes(&merges, &vocab);
        let mut tok = Tokenizer {
            vocab: Vec::new(),
            encoder,
            byte_ids,
            merges,
            merge_list,
            rule,
            specials: Vec::new(),
            junctions,
            hf: None,
            meta: Meta::default(),
        };
        std::mem::swap(&mut tok.vocab, &mut vocab);
        for (text, id) in specials {
            tok.insert_special(text, *id)?;
        }
        Ok(tok)
    }

    /// Adds a special token with the next free id (the book's vocabulary extension) and returns it;
    /// an existing special of that text keeps its id.
    pub fn add_special(&mut self, text: &str) -> Result<u32> {
        if let Some(id) = self.special_id(text) {
            return Ok(id);
        }
        let id = self.vocab.len() as u32;
        self.insert_special(text, id)?;
        if let Some(p) = &mut self.hf {
            let p = Arc::make_mut(p);
            let mut added = p.added.clone();
            added.push(crate::hf::added::AddedToken::special(text, id));
            p.set_added(added)?;
        }
        Ok(id)
    }

    fn insert_special(&mut self, text: &str, id: u32) -> Result<()> {
        if text.is_empty() {
            return Err(vocab_err("a special token cannot be empty".into()));
        }
        let idx = id as usize;
        if idx < self.vocab.len() {
            // A special token that is also a vocabulary entry (GPT-2's vocab.json lists
            // `<|endoftext|>`): it must be the same text.
            if self.vocab[idx] != text.as_bytes() {
                return Err(vocab_err(format!(
                    "special token {text:?} has id {id}, which is already the token {:?}",
                    String::from_utf8_lossy(&self.vocab[idx])
                )));
            }
            self.encoder.remove(text.as_bytes());
        } else if idx == self.vocab.len() {
            self.vocab.push(text.as_bytes().to_vec());
        } else {
            return Err(vocab_err(format!(
                "special token {text:?} has id {id}, but the vocabulary ends at {}; ids must be contiguous",
                self.vocab.len()
            )));
        }
        self.specials.retain(|(t, _)| t != text);
        self.specials.push((text.to_string(), id));
        self.specials
            .sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.1.cmp(&b.1)));
        Ok(())
    }

    /// Number of ids, special tokens included.
    pub fn vocab_size(&self) -> usize {
        self.vocab.len()
    }

    /// The special tokens and their ids.
    pub fn specials(&self) -> &[(String, u32)] {
        &self.specials
    }

    /// The id of special token `text`, if it is one.
    pub fn special_id(&self, text: &str) -> Option<u32> {
        self.specials.iter().find(|(t, _)| t == text).map(|s| s.1)
    }

    pub fn is_special(&self, id: u32) -> bool {
        self.specials.iter().any(|s| s.1 == id)
    }

    pub fn rule(&self) -> MergeRule {
        self.rule
    }

    /// The id of the single-byte token for `b`.
    pub fn byte_token(&self, b: u8) -> u32 {
        self.byte_ids[b as usize]
    }

    /// The table of mergeable pairs (for tests and tools that merge by hand).
    pub fn merge_table(&self) -> &MergeTable {
        match &self.hf {
            Some(p) => &p.model.merges,
            None => &self.merges,
        }
    }

    /// Number of mergeable pairs.
    pub fn merge_count(&self) -> usize {
        self.merge_table().len()
    }

    /// The bytes of token `id`.
    pub fn token_bytes(&self, id: u32) -> Result<&[u8]> {
        self.vocab
            .get(id as usize)
            .map(Vec::as_slice)
            .ok_or(TokenizerError::UnknownId {
                id,
                vocab_size: self.vocab.len(),
            })
    }

    /// Encodes `text` with special tokens treated as ordinary text (a `tokenizer.json`'s added
    /// tokens that are not special are still found, as the `tokenizers` library finds them).
    pub fn encode_ordinary(&self, text: &str) -> Vec<u32> {
        let mut out = Vec::with_capacity(text.len() / 3 + 1);
        match &self.hf {
            // Only `SpecialMode::Forbid` can fail.
            Some(p) => p
                .encode(text, SpecialMode::AsText, &mut out)
                .unwrap_or_default(),
            None => Encoder::new(self).encode_into(text, &mut out),
        }
        out
    }

    /// Encodes `text`, treating special-token text as `mode` says.
    pub fn encode(&self, text: &str, mode: SpecialMode) -> Result<Vec<u32>> {
        if let Some(p) = &self.hf {
            let mut out = Vec::with_capacity(text.len() / 3 + 1);
            p.encode(text, mode, &mut out)?;
            return Ok(out);
        }
        if mode == SpecialMode::AsText || self.specials.is_empty() {
            return Ok(self.encode_ordinary(text));
        }
        let mut out = Vec::with_capacity(text.len() / 3 + 1);
        let mut enc = Encoder::new(self);
        let mut finder = SpecialFinder::new(&self.specials);
        let mut rest = 0;
        while let Some((offset, k)) = finder.next_at(text, rest) {
            let (special, id) = &self.specials[k];
            if mode == SpecialMode::Forbid {
                return Err(TokenizerError::DisallowedSpecial {
                    token: special.clone(),
                    offset,
                    id: *id,
                });
            }
            enc.encode_into(&text[rest..offset], &mut out);
            out.push(*id);
            rest = offset + special.len();
        }
        enc.encode_into(&text[rest..], &mut out);
        Ok(out)
    }

    /// The bytes of `ids` concatenated.
    pub fn decode_bytes(&self, ids: &[u32]) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(ids.len() * 4);
        for &id in ids {
            out.extend_from_slice(self.token_bytes(id)?);
        }
        Ok(out)
    }

    /// Decodes `ids` to text; bytes that are not valid UTF-8 become U+FFFD, as tiktoken does. A
    /// `tokenizer.json` pipeline decodes through its decoder chain, as the `tokenizers` library.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        if let Some(p) = &self.hf {
            return p.decode(ids, false);
        }
        Ok(String::from_utf8_lossy(&self.decode_bytes(ids)?).into_owned())
    }

    /// The merge list in priority order; for a ranks vocabulary, the pair each token is made of.
    pub fn merge_list(&self) -> Vec<(u32, u32)> {
        if let Some(p) = &self.hf {
            return p.model.merge_list.clone();
        }
        if self.rule == MergeRule::MergeList {
            return self.merge_list.clone();
        }
        // Under the ranks rule a token of rank r is what BPE makes of its own bytes using only
        // merges of lower rank, which always ends in exactly two parts: those are its merge.
        let mut list = Vec::new();
        let mut parts = Vec::new();
        for (id, t) in self.vocab.iter().enumerate() {
            if t.len() < 2 || self.is_special(id as u32) {
                continue;
            }
            parts.clear();
            parts.extend(t.iter().map(|&b| self.byte_ids[b as usize]));
            merge_below(&mut parts, &self.merges, id as u32);
            if let [a, b] = parts[..] {
                list.push((a, b));
            }
        }
        list
    }

    /// Every id's bytes (special tokens included, as their text).
    pub fn vocab(&self) -> &[Vec<u8>] {
        &self.vocab
    }

    fn encode_piece(&self, piece: &[u8], scratch: &mut Vec<u32>) {
        scratch.clear();
        if piece.len() > LONG_PIECE {
            return self.encode_long(piece, scratch);
        }
        scratch.extend(piece.iter().map(|&b| self.byte_ids[b as usize]));
        merge(scratch, &self.merges);
    }

    /// A long piece: cut where no merge can join ([`crate::long`]), each part merged on its own.
    fn encode_long(&self, piece: &[u8], out: &mut Vec<u32>) {
        let mut part = Vec::new();
        byte_segments(piece, &self.junctions, |s, e| {
            let seg = &piece[s..e];
            if seg.len() <= LONG_PIECE {
                part.clear();
                part.extend(seg.iter().map(|&b| self.byte_ids[b as usize]));
                merge_flat(&mut part, &self.merges);
                out.extend_from_slice(&part);
            } else {
                let symbols = seg.iter().map(|&b| (self.byte_ids[b as usize], 1));
                merge_runs(symbols, &self.merges, out);
            }
        });
    }
}

/// Pieces longer than this (bytes) are cut at junctions and merged over runs.
const LONG_PIECE: usize = 256;

/// Finds special tokens left to right in linear time: each special's next occurrence is remembered
/// and searched again only once the scan has passed it.
struct SpecialFinder<'a> {
    specials: &'a [(String, u32)],
    /// Next occurrence of each special at or after the last search (`None`: no more).
    next: Vec<Option<usize>>,
    searched: Vec<bool>,
}

impl<'a> SpecialFinder<'a> {
    fn new(specials: &'a [(String, u32)]) -> Self {
        SpecialFinder {
            specials,
            next: vec![None; specials.len()],
            searched: vec![false; specials.len()],
        }
    }

    /// The earliest special starting at or after `from`: (offset, index); the longest on ties
    /// (specials are sorted longest first).
    fn next_at(&mut self, text: &str, from: usize) -> Option<(usize, usize)> {
        let mut best: Option<(usize, usize)> = None;
        for (k, (t, _)) in self.specials.iter().enumerate() {
            if !self.searched[k] || self.next[k].is_some_and(|at| at < from) {
                self.next[k] = text[from..].find(t.as_str()).map(|at| from + at);
                self.searched[k] = true;
            }
            if let Some(at) = self.next[k] {
                if best.is_none_or(|(b, _)| at < b) {
                    best = Some((at, k));
                }
            }
        }
        best
    }
}

/// Merges using only pairs whose priority is below `limit`.
fn merge_below(parts: &mut Vec<u32>, merges: &MergeTable, limit: u32) {
    loop {
        let best = parts
            .windows(2)
            .enumerate()
            .filter_map(|(i, w)| merges.get(&pair_key(w[0], w[1])).map(|&(p, id)| (p, i, id)))
            .filter(|&(p, _, _)| p < limit)
            .min();
        let Some((_, i, id)) = best else { return };
        parts[i] = id;
        parts.remove(i + 1);
    }
}

fn vocab_err(message: String) -> TokenizerError {
    TokenizerError::Vocabulary(message)
}

fn build_encoder(tokens: &[Vec<u8>]) -> Result<FxHashMap<Vec<u8>, u32>> {
    let mut encoder = FxHashMap::with_capacity_and_hasher(tokens.len(), Default::default());
    for (id, t) in tokens.iter().enumerate() {
        if t.is_empty() {
            return Err(vocab_err(format!("token {id} is empty")));
        }
        if let Some(prev) = encoder.insert(t.clone(), id as u32) {
            return Err(vocab_err(format!(
                "tokens {prev} and {id} are the same bytes {:?}",
                String::from_utf8_lossy(t)
            )));
        }
    }
    Ok(encoder)
}

/// One encoding call's state: a cache of the pieces merged so far. Text repeats its words, so
/// most pieces are merged once per call; the cache borrows its keys from the input.
struct Encoder<'t, 's> {
    tok: &'t Tokenizer,
    cache: FxHashMap<&'s [u8], (u32, u32)>,
    arena: Vec<u32>,
    scratch: Vec<u32>,
}

impl<'t, 's> Encoder<'t, 's> {
    fn new(tok: &'t Tokenizer) -> Self {
        Encoder {
            tok,
            cache: FxHashMap::default(),
            arena: Vec::new(),
            scratch: Vec::new(),
        }
    }

    fn encode_into(&mut self, text: &'s str, out: &mut Vec<u32>) {
        let shortcut = self.tok.rule == MergeRule::Ranks;
        for piece in pieces(text) {
            let piece = piece.as_bytes();
            if piece.len() == 1 {
                out.push(self.tok.byte_ids[piece[0] as usize]);
                continue;
            }
            // Under the ranks rule a piece that is itself a token always merges into that token.
            if shortcut {
                if let Some(&id) = self.tok.encoder.get(piece) {
                    out.push(id);
                    continue;
                }
            }
            if let Some(&(start, len)) = self.cache.get(piece) {
                out.extend_from_slice(&self.arena[start as usize..(start + len) as usize]);
                continue;
            }
            self.tok.encode_piece(piece, &mut self.scratch);
            out.extend_from_slice(&self.scratch);
            if piece.len() <= 64 {
                let start = self.arena.len() as u32;
                self.arena.extend_from_slice(&self.scratch);
                self.cache.insert(piece, (start, self.scratch.len() as u32));
            }
        }
    }
}
