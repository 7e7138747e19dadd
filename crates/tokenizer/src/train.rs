//! Training a byte-level BPE vocabulary (the book's chapter 2 bonus, Sennrich et al. 2016).
//!
//! 1. [`WordCounts`] pre-tokenizes the corpus with GPT-2's pattern (or Llama 3's) and counts each
//!    distinct piece;
//!    files are streamed in chunks, so memory grows with the number of distinct pieces, not with
//!    the corpus.
//! 2. [`train`] starts from the 256 single bytes and repeatedly merges the most frequent adjacent
//!    pair (ties: the smallest pair of ids), keeping pair counts and, per pair, the words that hold
//!    it, so each merge touches only the words it changes. A max-heap with lazy deletion finds the
//!    next pair.
//!
//! The result uses the merge-list rule and saves as our format or as a Hugging Face
//! `tokenizer.json`, which the `tokenizers` library encodes identically; with Llama 3's pattern it
//! is a `tokenizer.json` pipeline (a Split before ByteLevel, [`crate::hf::with_split`]).
use crate::bpe::Tokenizer;
use crate::error::{Result, TokenizerError};
use crate::hf::split::Llama3Pieces;
use crate::hf::SplitPreset;
use crate::merge::pair_key;
use crate::pretokenize::pieces;
use rustc_hash::{FxHashMap, FxHashSet};
use std::collections::BinaryHeap;
use std::path::Path;

/// Distinct pre-tokenized pieces of a corpus and how often each occurs.
#[derive(Default, Debug)]
pub struct WordCounts {
    counts: FxHashMap<Box<str>, u64>,
    specials: Vec<String>,
    split: SplitPreset,
}

impl WordCounts {
    /// Counts that will treat `specials` as boundaries (they are never merged with text).
    pub fn new(specials: &[String]) -> Self {
        Self::with_split(specials, SplitPreset::Gpt2)
    }

    /// Counts that pre-tokenize with `split`'s pattern (GPT-2's or Llama 3's).
    pub fn with_split(specials: &[String], split: SplitPreset) -> Self {
        WordCounts {
            counts: FxHashMap::default(),
            specials: specials.to_vec(),
            split,
        }
    }

    /// The split pattern the counts were made with.
    pub fn split(&self) -> SplitPreset {
        self.split
    }

    /// Number of distinct pieces.
    pub fn len(&self) -> usize {
        self.counts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.counts.is_empty()
    }

    /// Counts the pieces of a whole text.
    pub fn add_text(&mut self, text: &str) {
        for segment in self.segments(text) {
            match self.split {
                SplitPreset::Gpt2 => pieces(segment).for_each(|p| self.bump(p)),
                SplitPreset::Llama3 => Llama3Pieces::new(segment, 3).for_each(|p| self.bump(p)),
            }
        }
    }

    fn bump(&mut self, piece: &str) {
        match self.counts.get_mut(piece) {
            Some(c) => *c += 1,
            None => {
                self.counts.insert(piece.into(), 1);
            }
        }
    }

    /// Splits text at special tokens.
    fn segments<'a>(&self, text: &'a str) -> Vec<&'a str> {
        let mut out = vec![text];
        for s in &self.specials {
            out = out.iter().flat_map(|t| t.split(s.as_str())).collect();
        }
        out
    }

    /// Streams a file through the counter ([`crate::io::stream_text`]); `on_bytes` hears how many
    /// bytes were consumed. The counts equal those of the whole text.
    pub fn add_file(&mut self, path: &Path, on_bytes: &mut dyn FnMut(u64)) -> Result<()> {
        let specials = self.specials.clone();
        let last_piece_start = match self.split {
            SplitPreset::Gpt2 => crate::pretokenize::last_piece_start,
            SplitPreset::Llama3 => crate::hf::split::llama3_last_piece_start,
        };
        crate::io::stream_text_with(
            path,
            &specials,
            last_piece_start,
            &mut |text| {
                self.add_text(text);
                Ok::<(), TokenizerError>(())
            },
            on_bytes,
        )
    }
}

/// What to train.
#[derive(Clone, Debug)]
pub struct TrainOptions {
    /// Final vocabulary size, the 256 bytes and the special tokens included.
    pub vocab_size: usize,
    /// Special tokens, given the last ids.
    pub specials: Vec<String>,
    /// Pairs seen fewer times than this are never merged.
    pub min_frequency: u64,
}

/// Trains a vocabulary; `on_merge(done, total)` reports progress.
pub fn train(
    counts: &WordCounts,
    opts: &TrainOptions,
    on_merge: &mut dyn FnMut(usize, usize),
) -> Result<Tokenizer> {
    let base = 256 + opts.specials.len();
    if opts.vocab_size < base {
        return Err(TokenizerError::Training(format!(
            "vocabulary size {} is below the 256 byte tokens plus {} special tokens",
            opts.vocab_size,
            opts.specials.len()
        )));
    }
    let target = opts.vocab_size - base;
    let mut state = MergeState::new(counts);
    let mut vocab: Vec<Vec<u8>> = (0..=255u8).map(|b| vec![b]).collect();
    // `vocab_size` is the user's number (up to 2^64 - 1); the corpus usually runs out of pairs first.
    let mut merges = Vec::with_capacity(target.min(1 << 16));
    while merges.len() < target {
        let Some((a, b)) = state.best(opts.min_frequency.max(1)) else {
            break;
        };
        let id = vocab.len() as u32;
        vocab.push([vocab[a as usize].as_slice(), vocab[b as usize].as_slice()].concat());
        state.apply(a, b, id);
        merges.push((a, b));
        on_merge(merges.len(), target);
    }
    let specials: Vec<(String, u32)> = opts
        .specials
        .iter()
        .enumerate()
        .map(|(i, s)| (s.clone(), (vocab.len() + i) as u32))
        .collect();
    let tok = Tokenizer::from_merges(vocab, merges, &specials)?;
    crate::hf::with_split(tok, counts.split)
}

/// Words as symbol sequences, pair counts, and where each pair occurs.
struct MergeState {
    words: Vec<Vec<u32>>,
    freq: Vec<u64>,
    pair_count: FxHashMap<u64, u64>,
    pair_words: FxHashMap<u64, FxHashSet<u32>>,
    heap: BinaryHeap<(u64, std::cmp::Reverse<u64>)>,
}

impl MergeState {
    fn new(counts: &WordCounts) -> Self {
        // Sorted so that word indices, and with them everything after, do not depend on hashing.
        let mut entries: Vec<(&str, u64)> = counts.counts.iter().map(|(k, &v)| (&**k, v)).collect();
        entries.sort_unstable();
        let words: Vec<Vec<u32>> = entries
            .iter()
            .map(|(w, _)| w.bytes().map(u32::from).collect())
            .collect();
        let freq: Vec<u64> = entries.iter().map(|e| e.1).collect();
        let mut s = MergeState {
            words,
            freq,
            pair_count: FxHashMap::default(),
            pair_words: FxHashMap::default(),
            heap: BinaryHeap::new(),
        };
        for (wi, w) in s.words.iter().enumerate() {
            for p in w.windows(2) {
                let k = pair_key(p[0], p[1]);
                *s.pair_count.entry(k).or_default() += s.freq[wi];
                s.pair_words.entry(k).or_default().insert(wi as u32);
            }
        }
        s.heap = s
            .pair_count
            .iter()
            .map(|(&k, &c)| (c, std::cmp::Reverse(k)))
            .collect();
        s
    }

    /// The most frequent pair (smallest ids on ties), if seen at least `min` times.
    fn best(&mut self, min: u64) -> Option<(u32, u32)> {
        while let Some((c, std::cmp::Reverse(k))) = self.heap.pop() {
            let current = self.pair_count.get(&k).copied().unwrap_or(0);
            if current != c {
                // Counts only fall after a push, so a stale entry is re-queued at its true count.
                if current > 0 {
                    self.heap.push((current, std::cmp::Reverse(k)));
                }
                continue;
            }
            if c < min {
                return None;
            }
            return Some(((k >> 32) as u32, k as u32));
        }
        None
    }

    /// Replaces every `a b` with `id` and updates the counts of the pairs around each change.
    fn apply(&mut self, a: u32, b: u32, id: u32) {
        let key = pair_key(a, b);
        let Some(holders) = self.pair_words.remove(&key) else {
            return;
        };
        let mut holders: Vec<u32> = holders.into_iter().collect();
        holders.sort_unstable();
        let mut grown: FxHashSet<u64> = FxHashSet::default();
        for wi in holders {
            let f = self.freq[wi as usize];
            let word = &mut self.words[wi as usize];
            for p in word.windows(2) {
                let k = pair_key(p[0], p[1]);
                if let Some(c) = self.pair_count.get_mut(&k) {
                    *c -= f;
                }
            }
            let mut merged = Vec::with_capacity(word.len());
            let mut i = 0;
            while i < word.len() {
                if i + 1 < word.len() && word[i] == a && word[i + 1] == b {
                    merged.push(id);
                    i += 2;
                } else {
                    merged.push(word[i]);
                    i += 1;
                }
            }
            *word = merged;
            for p in word.windows(2) {
                let k = pair_key(p[0], p[1]);
                *self.pair_count.entry(k).or_default() += f;
                if p[0] == id || p[1] == id {
                    self.pair_words.entry(k).or_default().insert(wi);
                    grown.insert(k);
                }
            }
        }
        self.pair_count.remove(&key);
        let mut grown: Vec<u64> = grown.into_iter().collect();
        grown.sort_unstable();
        for k in grown {
            self.heap.push((self.pair_count[&k], std::cmp::Reverse(k)));
        }
    }
}
