//! GPT-2's pre-tokenizer, written out by hand instead of run through a regex engine.
//!
//! GPT-2 (OpenAI's `encoder.py`, tiktoken's `r50k_base`, Hugging Face's `ByteLevel`) splits text with
//!
//! ```text
//! 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
//! ```
//!
//! The alternatives are tried in order at each position and each is greedy; the only backtracking is
//! in `\s+(?!\S)`, which gives back the last whitespace character of a run that is followed by
//! something else, so that the character can prefix the next word. The scanner below follows the
//! alternatives one to one, which makes it several times faster than a backtracking regex and keeps
//! it linear in the input. Character classes are Unicode's: `\p{L}` letters (Lu Ll Lt Lm Lo),
//! `\p{N}` numbers (Nd Nl No), `\s` the White_Space property, as in Rust's `regex` crate that
//! tiktoken uses.
use std::sync::OnceLock;
use unicode_general_category::{get_general_category, GeneralCategory as G};

/// The class of a character as far as the pattern cares.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
pub enum Class {
    Letter = 0,
    Number = 1,
    Space = 2,
    Other = 3,
}

fn class_slow(c: char) -> Class {
    if c.is_whitespace() {
        return Class::Space;
    }
    match get_general_category(c) {
        G::UppercaseLetter
        | G::LowercaseLetter
        | G::TitlecaseLetter
        | G::ModifierLetter
        | G::OtherLetter => Class::Letter,
        G::DecimalNumber | G::LetterNumber | G::OtherNumber => Class::Number,
        _ => Class::Other,
    }
}

/// A table of the Basic Multilingual Plane, built once, so that classifying is one load.
fn bmp_table() -> &'static [Class] {
    static TABLE: OnceLock<Vec<Class>> = OnceLock::new();
    TABLE.get_or_init(|| {
        (0u32..0x1_0000)
            .map(|u| char::from_u32(u).map_or(Class::Other, class_slow))
            .collect()
    })
}

/// The class of `c`.
#[inline]
pub fn class_of(c: char) -> Class {
    let u = c as u32;
    if u < 0x1_0000 {
        bmp_table()[u as usize]
    } else {
        class_slow(c)
    }
}

/// Decodes the character starting at byte `i` of valid UTF-8; returns it and its length.
#[inline]
pub(crate) fn char_at(s: &[u8], i: usize) -> (char, usize) {
    let b0 = s[i] as u32;
    let (u, len) = if b0 < 0x80 {
        (b0, 1)
    } else if b0 < 0xE0 {
        (((b0 & 0x1F) << 6) | (s[i + 1] as u32 & 0x3F), 2)
    } else if b0 < 0xF0 {
        let u = ((b0 & 0x0F) << 12) | ((s[i + 1] as u32 & 0x3F) << 6) | (s[i + 2] as u32 & 0x3F);
        (u, 3)
    } else {
        let u = ((b0 & 0x07) << 18)
            | ((s[i + 1] as u32 & 0x3F) << 12)
            | ((s[i + 2] as u32 & 0x3F) << 6)
            | (s[i + 3] as u32 & 0x3F);
        (u, 4)
    };
    // The input is a `&str`, so the bytes form a valid scalar value.
    (
        char::from_u32(u).unwrap_or(char::REPLACEMENT_CHARACTER),
        len,
    )
}

/// Class and byte length of the character at `i`, with an ASCII fast path.
#[inline]
pub(crate) fn class_at(s: &[u8], i: usize) -> (Class, usize) {
    let b = s[i];
    if b < 0x80 {
        (ASCII[b as usize], 1)
    } else {
        let (c, len) = char_at(s, i);
        (class_of(c), len)
    }
}

const ASCII: [Class; 128] = {
    let mut t = [Class::Other; 128];
    let mut b = 0;
    while b < 128 {
        let c = b as u8;
        t[b] = if c.is_ascii_alphabetic() {
            Class::Letter
        } else if c.is_ascii_digit() {
            Class::Number
        } else if matches!(c, b' ' | b'\t' | b'\n' | 0x0B | 0x0C | b'\r') {
            Class::Space
        } else {
            Class::Other
        };
        b += 1;
    }
    // U+001C..U+001F are not White_Space (Python's str.isspace disagrees, the regex crate does not).
    t
};

/// End of the run of characters of class `class` that starts at `i`.
#[inline]
pub(crate) fn run_end(s: &[u8], mut i: usize, class: Class) -> usize {
    while i < s.len() {
        let (c, len) = class_at(s, i);
        if c != class {
            break;
        }
        i += len;
    }
    i
}

/// End of the piece that starts at byte `i` (`i < s.len()`).
#[inline]
pub fn piece_end(s: &[u8], i: usize) -> usize {
    let b = s[i];
    if b == b'\'' {
        if let Some(&n) = s.get(i + 1) {
            if matches!(n, b's' | b'd' | b'm' | b't') {
                return i + 2;
            }
            if let Some(&n2) = s.get(i + 2) {
                if matches!((n, n2), (b'l', b'l') | (b'v', b'e') | (b'r', b'e')) {
                    return i + 3;
                }
            }
        }
    }
    if b == b' ' && i + 1 < s.len() {
        let (next, len) = class_at(s, i + 1);
        if next != Class::Space {
            return run_end(s, i + 1 + len, next);
        }
    }
    let (class, len) = class_at(s, i);
    if class != Class::Space {
        return run_end(s, i + len, class);
    }
    whitespace_end(s, i)
}

/// `\s+(?!\S)|\s+` at a whitespace character: the run, less its last character when a
/// non-space follows and the run has more than one character.
pub(crate) fn whitespace_end(s: &[u8], i: usize) -> usize {
    let mut j = i;
    let mut last = i;
    while j < s.len() {
        let (c, len) = class_at(s, j);
        if c != Class::Space {
            break;
        }
        last = j;
        j += len;
    }
    if j == s.len() || last == i {
        j
    } else {
        last
    }
}

/// Iterator over the pieces of a text, as byte ranges.
pub struct Pieces<'a> {
    s: &'a [u8],
    pos: usize,
}

impl<'a> Iterator for Pieces<'a> {
    type Item = &'a str;

    #[inline]
    fn next(&mut self) -> Option<&'a str> {
        if self.pos >= self.s.len() {
            return None;
        }
        let start = self.pos;
        self.pos = piece_end(self.s, start);
        // Piece boundaries always fall on character boundaries of the valid UTF-8 input.
        std::str::from_utf8(&self.s[start..self.pos]).ok()
    }
}

/// Splits `text` into GPT-2 pre-tokenization pieces.
pub fn pieces(text: &str) -> Pieces<'_> {
    Pieces {
        s: text.as_bytes(),
        pos: 0,
    }
}

/// Where the last piece of `text` starts: every piece before it is final whatever text follows,
/// so a stream can be encoded up to here and the rest carried into the next chunk.
pub fn last_piece_start(text: &str) -> usize {
    let mut start = 0;
    let mut it = pieces(text).peekable();
    while let Some(p) = it.next() {
        if it.peek().is_none() {
            return start;
        }
        start += p.len();
    }
    start
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(t: &str) -> Vec<&str> {
        pieces(t).collect()
    }

    #[test]
    fn follows_the_gpt2_pattern() {
        assert_eq!(split("Hello, world!"), ["Hello", ",", " world", "!"]);
        assert_eq!(
            split("I'm can't we'll 's"),
            ["I", "'m", " can", "'t", " we", "'ll", " '", "s"]
        );
        assert_eq!(split("a  b"), ["a", " ", " b"]);
        assert_eq!(split("a \n\n b"), ["a", " \n\n", " b"]);
        assert_eq!(split("a\n\nb"), ["a", "\n", "\n", "b"]);
        assert_eq!(split("x   "), ["x", "   "]);
        assert_eq!(split("abc123 456"), ["abc", "123", " 456"]);
        assert_eq!(split("?!'s ...x"), ["?!'", "s", " ...", "x"]);
        assert_eq!(split("héllo 世界 ٣"), ["héllo", " 世界", " ٣"]);
        assert_eq!(split("'LL''ve"), ["'", "LL", "''", "ve"]);
    }

    #[test]
    fn pieces_cover_the_text() {
        let t = "Some  text,\twith\r\n mixed\u{a0}\u{a0}spaces 'n' stuff 😀😀 12½";
        assert_eq!(pieces(t).collect::<String>(), t);
    }
}
