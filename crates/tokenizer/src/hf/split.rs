//! Split patterns: hand-written matchers for the patterns of today's byte-level families, and
//! fancy-regex for any other pattern.
//!
//! Llama 3 (and tiktoken's `cl100k_base`) and Qwen2/Qwen3 split text with
//!
//! ```text
//! (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
//! ```
//!
//! (Qwen: `\p{N}` instead of `\p{N}{1,3}`). As for GPT-2 ([`crate::pretokenize`]), the alternatives
//! are followed one by one by hand: every alternative is greedy, `\s*[\r\n]+` backtracks to the last
//! line break of a whitespace run, and `\s+(?!\S)` gives back the last whitespace character before a
//! word. Every character is matched by some alternative, so the matches tile the text. The
//! character classes are those of the Rust `regex` crate and of Oniguruma (which `tokenizers` runs):
//! `\s` is White_Space, `\p{L}`/`\p{N}` the general categories; `(?i)` folds `s` with `S` and `ſ`.
//! `tests` check the matchers against fancy-regex running the pattern itself.
use crate::pretokenize::{class_at, pieces, run_end, whitespace_end, Class, Pieces};
use std::sync::Arc;

/// Llama 3's split pattern, as its `tokenizer.json` writes it.
pub const LLAMA3_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen2's and Qwen3's split pattern: Llama 3's with single digits.
pub const QWEN2_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// GPT-2's split pattern (the one `ByteLevel` with `use_regex` runs).
pub const GPT2_PATTERN: &str =
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";

/// A compiled split pattern.
#[derive(Clone, Debug)]
pub enum Splitter {
    /// GPT-2's pattern, by hand.
    Gpt2,
    /// Llama 3's pattern (`max_digits` 3) or Qwen2's (1), by hand.
    Llama3 { max_digits: usize },
    /// A literal string (a `{"String": ...}` pattern), found left to right without overlaps.
    Literal(Arc<str>),
    /// Any other pattern.
    Regex(Arc<fancy_regex::Regex>),
}

impl Splitter {
    /// The matcher for `pattern`: a hand-written one when the pattern is one we know, else the
    /// pattern compiled by fancy-regex.
    pub fn new(pattern: &str) -> Result<Self, String> {
        Ok(match pattern {
            GPT2_PATTERN => Splitter::Gpt2,
            LLAMA3_PATTERN => Splitter::Llama3 { max_digits: 3 },
            QWEN2_PATTERN => Splitter::Llama3 { max_digits: 1 },
            _ => Splitter::Regex(Arc::new(compile(pattern)?)),
        })
    }

    /// A literal string, matched as the `tokenizers` library does (its regex-escaped form: the
    /// leftmost occurrences, without overlaps). The empty string matches nowhere here; as a regex
    /// it matches between every two characters, which only cuts text into characters, so it keeps
    /// the regex engine.
    pub fn literal(s: &str) -> Result<Self, String> {
        if s.is_empty() {
            return Ok(Splitter::Regex(Arc::new(compile("")?)));
        }
        Ok(Splitter::Literal(s.into()))
    }

    /// Whether every character is matched, so that the matches alone tile the text.
    pub fn tiles(&self) -> bool {
        matches!(self, Splitter::Gpt2 | Splitter::Llama3 { .. })
    }

    /// The matches in `text`, left to right, as byte ranges.
    pub fn matches<'a>(&'a self, text: &'a str) -> Matches<'a> {
        match self {
            Splitter::Gpt2 => Matches::Gpt2(pieces(text), 0),
            Splitter::Llama3 { max_digits } => Matches::Llama3(Llama3Pieces {
                s: text.as_bytes(),
                pos: 0,
                max_digits: *max_digits,
            }),
            Splitter::Literal(lit) => Matches::Literal(text.match_indices(&**lit)),
            Splitter::Regex(re) => Matches::Regex(re.find_iter(text)),
        }
    }

    /// `text` cut into matches and the gaps between them, each with whether it is a match (the
    /// `find_matches` of `tokenizers`, which the Split pre-tokenizer and Replace build on).
    pub fn find_matches(&self, text: &str) -> Vec<(usize, usize, bool)> {
        let mut out = Vec::new();
        let mut prev = 0;
        for (start, end) in self.matches(text) {
            if start > prev {
                out.push((prev, start, false));
            }
            out.push((start, end, true));
            prev = end;
        }
        if prev < text.len() {
            out.push((prev, text.len(), false));
        }
        out
    }
}

/// fancy-regex with no backtracking limit: a pattern either matches as Oniguruma would or takes
/// its time, never fails half way through a text.
fn compile(pattern: &str) -> Result<fancy_regex::Regex, String> {
    fancy_regex::RegexBuilder::new(pattern)
        .backtrack_limit(usize::MAX)
        .build()
        .map_err(|e| format!("the pattern {pattern:?} does not compile: {e}"))
}

/// Iterator over the matches of a [`Splitter`], as byte ranges.
pub enum Matches<'a> {
    Gpt2(Pieces<'a>, usize),
    Llama3(Llama3Pieces<'a>),
    Literal(std::str::MatchIndices<'a, &'a str>),
    Regex(fancy_regex::Matches<'a, 'a>),
}

impl Iterator for Matches<'_> {
    type Item = (usize, usize);

    #[inline]
    fn next(&mut self) -> Option<(usize, usize)> {
        match self {
            Matches::Gpt2(it, at) => {
                let p = it.next()?;
                let start = *at;
                *at += p.len();
                Some((start, *at))
            }
            Matches::Llama3(it) => it.next_range(),
            Matches::Literal(it) => it.next().map(|(at, m)| (at, at + m.len())),
            // With no backtracking limit the engine has no error left to report (see `compile`).
            Matches::Regex(it) => it.next().and_then(|m| m.ok()).map(|m| (m.start(), m.end())),
        }
    }
}

/// The pieces of Llama 3's (or Qwen2's) pattern.
pub struct Llama3Pieces<'a> {
    s: &'a [u8],
    pos: usize,
    max_digits: usize,
}

impl<'a> Llama3Pieces<'a> {
    pub fn new(text: &'a str, max_digits: usize) -> Self {
        Llama3Pieces {
            s: text.as_bytes(),
            pos: 0,
            max_digits,
        }
    }

    #[inline]
    fn next_range(&mut self) -> Option<(usize, usize)> {
        if self.pos >= self.s.len() {
            return None;
        }
        let start = self.pos;
        self.pos = llama3_piece_end(self.s, start, self.max_digits);
        Some((start, self.pos))
    }
}

impl<'a> Iterator for Llama3Pieces<'a> {
    type Item = &'a str;

    #[inline]
    fn next(&mut self) -> Option<&'a str> {
        let (start, end) = self.next_range()?;
        // Piece ends always fall on character boundaries of the valid UTF-8 input.
        std::str::from_utf8(&self.s[start..end]).ok()
    }
}

/// Where the last Llama 3 piece of `text` starts, so that a stream can be cut there
/// ([`crate::io::stable_cut_with`]).
pub fn llama3_last_piece_start(text: &str) -> usize {
    let mut it = Llama3Pieces::new(text, 3);
    let mut start = 0;
    while let Some((s, _)) = it.next_range() {
        start = s;
    }
    start
}

#[inline]
fn is_crlf(b: u8) -> bool {
    b == b'\r' || b == b'\n'
}

/// End of the piece that starts at byte `i` (`i < s.len()`), alternative by alternative.
#[inline]
pub fn llama3_piece_end(s: &[u8], i: usize, max_digits: usize) -> usize {
    let b = s[i];
    if b == b'\'' {
        if let Some(end) = contraction_end(s, i + 1) {
            return end;
        }
    }
    let (class, len) = class_at(s, i);
    // [^\r\n\p{L}\p{N}]?\p{L}+
    if class == Class::Letter {
        return run_end(s, i + len, Class::Letter);
    }
    if class != Class::Number && !is_crlf(b) && i + len < s.len() {
        let (next, next_len) = class_at(s, i + len);
        if next == Class::Letter {
            return run_end(s, i + len + next_len, Class::Letter);
        }
    }
    // \p{N}{1,max}
    if class == Class::Number {
        let mut end = i + len;
        for _ in 1..max_digits {
            if end >= s.len() {
                break;
            }
            let (c, l) = class_at(s, end);
            if c != Class::Number {
                break;
            }
            end += l;
        }
        return end;
    }
    //  ?[^\s\p{L}\p{N}]+[\r\n]*
    let other_at = if b == b' ' && i + 1 < s.len() && class_at(s, i + 1).0 == Class::Other {
        Some(i + 1)
    } else if class == Class::Other {
        Some(i)
    } else {
        None
    };
    if let Some(j) = other_at {
        let mut end = run_end(s, j, Class::Other);
        while end < s.len() && is_crlf(s[end]) {
            end += 1;
        }
        return end;
    }
    // \s*[\r\n]+ : the whitespace run up to and including its last line break.
    let mut j = i;
    let mut last_break = None;
    while j < s.len() {
        let (c, l) = class_at(s, j);
        if c != Class::Space {
            break;
        }
        if is_crlf(s[j]) {
            last_break = Some(j + 1);
        }
        j += l;
    }
    if let Some(end) = last_break {
        return end;
    }
    // \s+(?!\S)|\s+
    whitespace_end(s, i)
}

/// `(?i:'s|'t|'re|'ve|'m|'ll|'d)` after the apostrophe at `i - 1`: the end of the contraction.
#[inline]
fn contraction_end(s: &[u8], i: usize) -> Option<usize> {
    let lower = |k: usize| s.get(k).map(|b| b.to_ascii_lowercase());
    match lower(i)? {
        b's' | b't' | b'm' | b'd' => return Some(i + 1),
        b'r' if lower(i + 1) == Some(b'e') => return Some(i + 2),
        b'v' if lower(i + 1) == Some(b'e') => return Some(i + 2),
        b'l' if lower(i + 1) == Some(b'l') => return Some(i + 2),
        _ => {}
    }
    // U+017F LATIN SMALL LETTER LONG S folds to `s`.
    (s.get(i..i + 2) == Some(&[0xC5, 0xBF][..])).then_some(i + 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(t: &str, max_digits: usize) -> Vec<&str> {
        Llama3Pieces::new(t, max_digits).collect()
    }

    #[test]
    fn follows_the_llama3_pattern() {
        assert_eq!(
            split("It's 2026, I'LL go!", 3),
            ["It", "'s", " ", "202", "6", ",", " I", "'LL", " go", "!"]
        );
        assert_eq!(split("a\n\n  b", 3), ["a", "\n\n", " ", " b"]);
        assert_eq!(split("x  \r\n\ty", 3), ["x", "  \r\n", "\ty"]);
        assert_eq!(split("...\n\nend", 3), ["...\n\n", "end"]);
        assert_eq!(split("12345", 1), ["1", "2", "3", "4", "5"]);
        assert_eq!(split("'ſ 'x", 3), ["'ſ", " '", "x"]);
    }

    #[test]
    fn known_patterns_get_hand_written_matchers() {
        assert!(matches!(
            Splitter::new(LLAMA3_PATTERN),
            Ok(Splitter::Llama3 { max_digits: 3 })
        ));
        assert!(matches!(
            Splitter::new(QWEN2_PATTERN),
            Ok(Splitter::Llama3 { max_digits: 1 })
        ));
        assert!(matches!(Splitter::new(GPT2_PATTERN), Ok(Splitter::Gpt2)));
        assert!(Splitter::new("(unclosed").is_err());
    }
}
