//! The book's simple word tokenizer (chapter 2, `SimpleTokenizerV2`).
//!
//! Splitting follows `re.split(r'([,.:;?_!"()\']|--|\s)', text)` with the whitespace items dropped;
//! decoding joins with spaces and removes the space before `, . ? ! " ( ) '` as
//! `re.sub(r'\s+([,.?!"()\'])', r'\1', text)` does. Unknown words become `<|unk|>`.
use std::collections::HashMap;

pub const UNK: &str = "<|unk|>";
pub const ENDOFTEXT: &str = "<|endoftext|>";

/// Python's `str.isspace`, which `\s` and `strip()` use (it includes U+001C..U+001F).
fn is_py_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// The book's pre-processing: words and punctuation, whitespace dropped.
pub fn split_words(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut word_start = 0;
    let mut chars = text.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        let delim_len = if ",.:;?_!\"()'".contains(c) {
            1
        } else if c == '-' && text[i + 1..].starts_with('-') {
            2
        } else if is_py_space(c) {
            c.len_utf8()
        } else {
            continue;
        };
        if word_start < i {
            out.push(&text[word_start..i]);
        }
        if !is_py_space(c) {
            out.push(&text[i..i + delim_len]);
        }
        if delim_len == 2 {
            chars.next();
        }
        word_start = i + delim_len;
    }
    if word_start < text.len() {
        out.push(&text[word_start..]);
    }
    out
}

/// A vocabulary of the words of a text plus `<|endoftext|>` and `<|unk|>`.
#[derive(Clone, Debug)]
pub struct SimpleTokenizer {
    words: Vec<String>,
    ids: HashMap<String, u32>,
}

impl SimpleTokenizer {
    /// Builds the vocabulary as the book does: sorted distinct words, then the two special tokens.
    pub fn from_text(text: &str) -> Self {
        let mut words: Vec<String> = split_words(text).into_iter().map(str::to_string).collect();
        words.sort();
        words.dedup();
        words.extend([ENDOFTEXT.to_string(), UNK.to_string()]);
        let ids = words
            .iter()
            .enumerate()
            .map(|(i, w)| (w.clone(), i as u32))
            .collect();
        SimpleTokenizer { words, ids }
    }

    pub fn vocab_size(&self) -> usize {
        self.words.len()
    }

    pub fn encode(&self, text: &str) -> Vec<u32> {
        let unk = self.ids[UNK];
        split_words(text)
            .into_iter()
            .map(|w| self.ids.get(w).copied().unwrap_or(unk))
            .collect()
    }

    /// Decodes ids; `None` if an id is outside the vocabulary.
    pub fn decode(&self, ids: &[u32]) -> Option<String> {
        let words = ids
            .iter()
            .map(|&i| self.words.get(i as usize).map(String::as_str))
            .collect::<Option<Vec<_>>>()?;
        Some(attach_punctuation(&words.join(" ")))
    }
}

/// `re.sub(r'\s+([,.?!"()\'])', r'\1', text)`.
fn attach_punctuation(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut spaces = String::new();
    for c in text.chars() {
        if is_py_space(c) {
            spaces.push(c);
            continue;
        }
        if !",.?!\"()'".contains(c) {
            out.push_str(&spaces);
        }
        spaces.clear();
        out.push(c);
    }
    out.push_str(&spaces);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_like_the_book() {
        assert_eq!(
            split_words("Hello, world. Is this-- a test?"),
            ["Hello", ",", "world", ".", "Is", "this", "--", "a", "test", "?"]
        );
        let t = SimpleTokenizer::from_text("Hello, world. Is this-- a test?");
        let ids = t.encode("Hello, do you like tea?");
        assert_eq!(
            t.decode(&ids).unwrap(),
            "Hello, <|unk|> <|unk|> <|unk|> <|unk|>?"
        );
    }
}
