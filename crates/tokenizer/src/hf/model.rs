//! The BPE model of a `tokenizer.json` (`tokenizers/src/models/bpe`): byte-level (GPT-2, Llama 3,
//! Qwen) or character-level with byte fallback and unknown tokens (Gemma, Llama 2).
//!
//! A piece starts as one symbol per byte (byte-level) or per character (its id, else the
//! `<0xNN>` tokens of its bytes when `byte_fallback`, else `unk_token`, fused when `fuse_unk`, else
//! nothing, as the library drops it); `ignore_merges` takes a piece that is itself a token as is.
//! Merging follows the merge list ([`crate::merge`]); pieces longer than [`LONG`] bytes are cut at
//! junctions no merge crosses and merged over runs ([`crate::long`]), which gives the same ids.
use crate::bytes_unicode;
use crate::long::{byte_segments, merge_runs, Junctions};
use crate::merge::{merge_flat, pair_key, MergeTable};
use rustc_hash::FxHashMap;

/// Pieces longer than this (bytes) take the long path.
pub const LONG: usize = 256;
/// Pieces up to this length (bytes) are remembered within one encoding call.
const CACHED: usize = 64;
const NONE: u32 = u32::MAX;

/// How a piece becomes its first symbols.
#[derive(Clone, Debug)]
pub enum Units {
    Bytes {
        byte_ids: Box<[u32; 256]>,
        /// Token bytes to id, for `ignore_merges`.
        encoder: FxHashMap<Vec<u8>, u32>,
    },
    Chars {
        char_ids: FxHashMap<char, u32>,
        /// `<0xNN>` ids when `byte_fallback` (NONE where missing).
        fallback: Option<Box<[u32; 256]>>,
        unk: Option<u32>,
        fuse_unk: bool,
        /// Token text to id, for `ignore_merges`.
        vocab: FxHashMap<String, u32>,
    },
}

/// A BPE model.
#[derive(Clone, Debug)]
pub struct Model {
    /// The text form of every model id.
    pub tokens: Vec<String>,
    pub merges: MergeTable,
    /// Merges in rank order, as id pairs.
    pub merge_list: Vec<(u32, u32)>,
    pub ignore_merges: bool,
    pub units: Units,
    junctions: Junctions,
}

/// What one encoding call remembers: merged short pieces.
#[derive(Default)]
pub struct Cache {
    map: FxHashMap<Box<[u8]>, (u32, u32)>,
    arena: Vec<u32>,
    scratch: Vec<u32>,
}

impl Model {
    /// A model from its parts; `tokens[id]` is id's text form. Errors are plain messages.
    pub fn new(
        tokens: Vec<String>,
        merges: MergeTable,
        merge_list: Vec<(u32, u32)>,
        ignore_merges: bool,
        units: Units,
    ) -> Self {
        let junctions = match &units {
            Units::Bytes { .. } => {
                let bytes: Vec<Vec<u8>> = tokens.iter().map(|t| byte_level_bytes(t)).collect();
                Junctions::of_bytes(&merges, &bytes)
            }
            Units::Chars { .. } => Junctions::of_chars(&merges, &tokens),
        };
        Model {
            tokens,
            merges,
            merge_list,
            ignore_merges,
            units,
            junctions,
        }
    }

    pub fn is_byte_level(&self) -> bool {
        matches!(self.units, Units::Bytes { .. })
    }

    /// The id of a token's text form.
    pub fn token_to_id(&self, text: &str) -> Option<u32> {
        match &self.units {
            Units::Bytes { encoder, .. } => bytes_unicode::decode(text)
                .ok()
                .and_then(|b| encoder.get(&b).copied()),
            Units::Chars { vocab, .. } => vocab.get(text).copied(),
        }
    }

    /// Appends the ids of one piece to `out`.
    pub fn encode(&self, piece: &str, cache: &mut Cache, out: &mut Vec<u32>) {
        match &self.units {
            Units::Bytes { byte_ids, encoder } => {
                let b = piece.as_bytes();
                if let [one] = b {
                    out.push(byte_ids[*one as usize]);
                    return;
                }
                if self.ignore_merges {
                    if let Some(&id) = encoder.get(b) {
                        out.push(id);
                        return;
                    }
                }
                let symbols =
                    |s: &[u8], v: &mut Vec<u32>| v.extend(s.iter().map(|&x| byte_ids[x as usize]));
                if b.len() <= LONG {
                    self.cached(b, cache, out, symbols);
                    return;
                }
                byte_segments(b, &self.junctions, |s, e| {
                    let seg = &b[s..e];
                    if seg.len() <= LONG {
                        self.cached(seg, cache, out, symbols);
                    } else {
                        merge_runs(
                            seg.iter().map(|&x| (byte_ids[x as usize], 1)),
                            &self.merges,
                            out,
                        );
                    }
                });
            }
            Units::Chars { vocab, .. } => {
                if self.ignore_merges {
                    if let Some(&id) = vocab.get(piece) {
                        out.push(id);
                        return;
                    }
                }
                if piece.len() <= LONG {
                    self.cached(piece.as_bytes(), cache, out, |s, v| {
                        self.char_symbols(s, &mut |id, _| v.push(id))
                    });
                    return;
                }
                for (s, e) in self.char_segments(piece) {
                    let seg = &piece.as_bytes()[s..e];
                    if seg.len() <= LONG {
                        self.cached(seg, cache, out, |s, v| {
                            self.char_symbols(s, &mut |id, _| v.push(id))
                        });
                    } else {
                        let mut symbols = Vec::new();
                        self.char_symbols(seg, &mut |id, w| symbols.push((id, w)));
                        merge_runs(symbols, &self.merges, out);
                    }
                }
            }
        }
    }

    /// Merges `key` (via the cache when it is short); `symbols` makes its first symbols.
    fn cached(
        &self,
        key: &[u8],
        cache: &mut Cache,
        out: &mut Vec<u32>,
        symbols: impl Fn(&[u8], &mut Vec<u32>),
    ) {
        if key.len() <= CACHED {
            if let Some(&(start, len)) = cache.map.get(key) {
                out.extend_from_slice(&cache.arena[start as usize..(start + len) as usize]);
                return;
            }
        }
        cache.scratch.clear();
        symbols(key, &mut cache.scratch);
        merge_flat(&mut cache.scratch, &self.merges);
        out.extend_from_slice(&cache.scratch);
        if key.len() <= CACHED {
            let start = cache.arena.len() as u32;
            cache.arena.extend_from_slice(&cache.scratch);
            cache
                .map
                .insert(key.into(), (start, cache.scratch.len() as u32));
        }
    }

    /// The first symbols of character-level text (`merge_word`): `emit(id, byte width)`.
    fn char_symbols(&self, text: &[u8], emit: &mut dyn FnMut(u32, u32)) {
        let Units::Chars {
            char_ids,
            fallback,
            unk,
            fuse_unk,
            ..
        } = &self.units
        else {
            return;
        };
        // Callers slice text at character boundaries.
        let text = std::str::from_utf8(text).unwrap_or_default();
        let mut pending_unk: Option<u32> = None;
        for c in text.chars() {
            let width = c.len_utf8() as u32;
            if let Some(&id) = char_ids.get(&c) {
                if let Some(w) = pending_unk.take() {
                    emit(unk.unwrap_or(NONE), w);
                }
                emit(id, width);
                continue;
            }
            if let Some(ids) = fallback_ids(fallback.as_deref(), c) {
                // `tokenizers` leaves a pending unknown in place across byte fallback.
                for id in ids.into_iter().flatten() {
                    emit(id, 1);
                }
                continue;
            }
            if unk.is_some() {
                pending_unk = match pending_unk {
                    Some(w) if *fuse_unk => Some(w + width),
                    Some(w) => {
                        emit(unk.unwrap_or(NONE), w);
                        Some(width)
                    }
                    None => Some(width),
                };
            }
        }
        if let Some(w) = pending_unk {
            emit(unk.unwrap_or(NONE), w);
        }
    }

    /// Byte ranges of a long character-level piece that merge independently: cut between two
    /// characters that both have their own token and that no merge joins.
    fn char_segments(&self, piece: &str) -> Vec<(usize, usize)> {
        let Units::Chars { char_ids, .. } = &self.units else {
            return vec![(0, piece.len())];
        };
        let mut out = Vec::new();
        let mut start = 0;
        let mut prev: Option<char> = None;
        for (i, c) in piece.char_indices() {
            let plain = char_ids.contains_key(&c);
            if let (Some(p), true) = (prev, plain) {
                if !self.junctions.chars_join(p, c) {
                    out.push((start, i));
                    start = i;
                }
            }
            prev = plain.then_some(c);
        }
        out.push((start, piece.len()));
        out
    }

    /// Number of mergeable pairs.
    pub fn merge_count(&self) -> usize {
        self.merges.len()
    }
}

/// The `<0xNN>` ids of a character's bytes, if every one exists.
fn fallback_ids(fallback: Option<&[u32; 256]>, c: char) -> Option<[Option<u32>; 4]> {
    let table = fallback?;
    let mut buf = [0u8; 4];
    let mut ids = [None; 4];
    for (slot, &b) in ids.iter_mut().zip(c.encode_utf8(&mut buf).as_bytes()) {
        let id = table[b as usize];
        if id == NONE {
            return None;
        }
        *slot = Some(id);
    }
    Some(ids)
}

/// The bytes a byte-level token stands for; a text form outside GPT-2's byte alphabet stands for its
/// own UTF-8 (as the ByteLevel decoder reads it).
pub fn byte_level_bytes(text: &str) -> Vec<u8> {
    bytes_unicode::decode(text).unwrap_or_else(|_| text.as_bytes().to_vec())
}

/// The id of a `<0xNN>` token text, if it is one.
pub fn byte_fallback_value(text: &str) -> Option<u8> {
    let hex = text.strip_prefix("<0x")?.strip_suffix('>')?;
    (hex.len() == 2)
        .then(|| u8::from_str_radix(hex, 16).ok())
        .flatten()
}

/// Builds the merge table of `list`; a repeated pair takes its later rank, as in `tokenizers`.
pub fn merge_table(
    list: &[(u32, u32)],
    result: impl Fn(u32, u32) -> Option<u32>,
) -> Result<MergeTable, usize> {
    let mut table = MergeTable::default();
    table.reserve(list.len());
    for (rank, &(a, b)) in list.iter().enumerate() {
        let id = result(a, b).ok_or(rank)?;
        table.insert(pair_key(a, b), (rank as u32, id));
    }
    Ok(table)
}
