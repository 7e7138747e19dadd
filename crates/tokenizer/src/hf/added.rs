//! Added tokens of a `tokenizer.json`, found in the text as `tokenizers` finds them
//! (`tokenizers/src/tokenizer/added_vocabulary.rs`): leftmost-longest over all of them at once,
//! `single_word` ones only between non-word characters, `lstrip`/`rstrip` ones taking the
//! whitespace beside them. Tokens with `normalized: false` are looked for in the raw text first;
//! the others in the normalized remainder, as their normalized form.
use crate::bpe::SpecialMode;
use crate::error::{Result, TokenizerError};
use aho_corasick::{AhoCorasick, MatchKind};
use unicode_general_category::{get_general_category, GeneralCategory as G};

/// One added token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AddedToken {
    pub id: u32,
    pub content: String,
    pub special: bool,
    pub normalized: bool,
    pub lstrip: bool,
    pub rstrip: bool,
    pub single_word: bool,
}

impl AddedToken {
    /// A special token as our own files and GPT-2's carry them.
    pub fn special(content: &str, id: u32) -> Self {
        AddedToken {
            id,
            content: content.to_string(),
            special: true,
            normalized: false,
            lstrip: false,
            rstrip: false,
            single_word: false,
        }
    }
}

/// A part of a text: ordinary text (a byte range) or an added token's id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    Text(usize, usize),
    Token(u32),
}

/// A set of added tokens and the automaton that finds them.
#[derive(Clone, Debug)]
pub struct Matcher {
    automaton: Option<AhoCorasick>,
    /// The token of each pattern.
    tokens: Vec<AddedToken>,
}

impl Matcher {
    /// Finds `patterns[i]` as `tokens[i]`.
    pub fn new(patterns: Vec<String>, tokens: Vec<AddedToken>) -> Result<Self> {
        let automaton = if patterns.is_empty() {
            None
        } else {
            Some(
                AhoCorasick::builder()
                    .match_kind(MatchKind::LeftmostLongest)
                    .build(&patterns)
                    .map_err(|e| TokenizerError::Vocabulary(format!("added tokens: {e}")))?,
            )
        };
        Ok(Matcher { automaton, tokens })
    }

    /// `text` cut into ordinary text and added tokens (`find_matches`). Special tokens follow
    /// `mode`: matched (Allow), left as text (AsText), or an error naming the offset (Forbid);
    /// `base` is added to offsets in that error.
    pub fn split(&self, text: &str, mode: SpecialMode, base: usize) -> Result<Vec<Part>> {
        let Some(ac) = &self.automaton else {
            return Ok(vec![Part::Text(0, text.len())]);
        };
        let mut out = Vec::new();
        let mut done = 0;
        for m in ac.find_iter(text) {
            let token = &self.tokens[m.pattern().as_usize()];
            let (mut start, mut stop) = (m.start(), m.end());
            if token.special && mode != SpecialMode::Allow {
                if mode == SpecialMode::Forbid {
                    return Err(TokenizerError::DisallowedSpecial {
                        token: token.content.clone(),
                        offset: base + start,
                        id: token.id,
                    });
                }
                continue;
            }
            if token.single_word && !stands_alone(text, start, stop) {
                continue;
            }
            if token.lstrip {
                let trimmed = text[..start].trim_end_matches(char::is_whitespace).len();
                start = trimmed.max(done);
            }
            if token.rstrip {
                let rest = &text[stop..];
                stop += rest.len() - rest.trim_start_matches(char::is_whitespace).len();
            }
            if start > done {
                out.push(Part::Text(done, start));
            }
            out.push(Part::Token(token.id));
            done = stop;
        }
        if done < text.len() {
            out.push(Part::Text(done, text.len()));
        }
        Ok(out)
    }
}

/// `single_word`: no word character (regex `\w`) touches the match on either side.
fn stands_alone(text: &str, start: usize, stop: usize) -> bool {
    let before = text[..start].chars().next_back().is_some_and(is_word);
    let after = text[stop..].chars().next().is_some_and(is_word);
    !before && !after
}

/// The Rust `regex` crate's `\w`: Alphabetic, marks, decimal digits, connector punctuation and
/// the two join controls.
fn is_word(c: char) -> bool {
    c.is_alphabetic()
        || matches!(c, '\u{200C}' | '\u{200D}')
        || matches!(
            get_general_category(c),
            G::NonspacingMark
                | G::SpacingMark
                | G::EnclosingMark
                | G::DecimalNumber
                | G::ConnectorPunctuation
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(content: &str, id: u32) -> AddedToken {
        AddedToken::special(content, id)
    }

    #[test]
    fn longest_match_and_strip_flags() {
        let mut strip = token("<mask>", 9);
        strip.lstrip = true;
        strip.rstrip = true;
        let tokens = vec![token("<a>", 1), token("<a><b>", 2), strip];
        let patterns = tokens.iter().map(|t| t.content.clone()).collect();
        let m = Matcher::new(patterns, tokens).unwrap();
        assert_eq!(
            m.split("x<a><b>y  <mask>  z", SpecialMode::Allow, 0)
                .unwrap(),
            [
                Part::Text(0, 1),
                Part::Token(2),
                Part::Text(7, 8),
                Part::Token(9),
                Part::Text(18, 19)
            ]
        );
        assert_eq!(
            m.split("<a>", SpecialMode::AsText, 0).unwrap(),
            [Part::Text(0, 3)]
        );
        assert!(m.split("ok <a>", SpecialMode::Forbid, 10).is_err());
    }

    #[test]
    fn single_word_needs_non_word_neighbours() {
        let mut t = token("ab", 5);
        t.single_word = true;
        t.special = false;
        let m = Matcher::new(vec!["ab".into()], vec![t]).unwrap();
        assert_eq!(
            m.split("xab ab_ ab.", SpecialMode::Allow, 0).unwrap(),
            [Part::Text(0, 8), Part::Token(5), Part::Text(10, 11)]
        );
    }
}
