//! Decoders of a `tokenizer.json` (`tokenizers/src/decoders`): each turns the list of token texts
//! into another list, and the last list is joined. ByteLevel, Replace, ByteFallback, Fuse, Strip,
//! Metaspace and Sequence, each as the library writes it (including ByteFallback's one U+FFFD per
//! byte of an invalid sequence, and Metaspace dropping every `▁` of the first token).
use super::component::{str_field, usize_field, Component};
use super::model::byte_fallback_value;
use super::normalizer::replace;
use super::pretokenizer::Prepend;
use super::split::Splitter;
use crate::bytes_unicode;
use crate::error::Result;
use std::borrow::Cow;

/// One decoder.
#[derive(Clone, Debug)]
pub enum Decoder {
    ByteLevel,
    Replace {
        pattern: Splitter,
        content: String,
    },
    ByteFallback,
    Fuse,
    Strip {
        content: char,
        start: usize,
        stop: usize,
    },
    Metaspace {
        replacement: char,
        prepend: Prepend,
    },
    Sequence(Vec<Decoder>),
}

impl Decoder {
    /// Reads the decoder at `c` (`None` for JSON null).
    pub fn parse(c: &Component) -> Result<Option<Self>> {
        if c.value.is_null() {
            return Ok(None);
        }
        let d = match c.kind()? {
            "ByteLevel" => Decoder::ByteLevel,
            "Replace" => Decoder::Replace {
                pattern: super::component::pattern_field(c, "pattern")?,
                content: str_field(c, "content")?.to_string(),
            },
            "ByteFallback" => Decoder::ByteFallback,
            "Fuse" => Decoder::Fuse,
            "Strip" => Decoder::Strip {
                content: one_char(c, "content")?,
                start: usize_field(c, "start")?,
                stop: usize_field(c, "stop")?,
            },
            "Metaspace" => match super::pretokenizer::PreTokenizer::parse(c)? {
                Some(super::pretokenizer::PreTokenizer::Metaspace {
                    replacement,
                    prepend,
                    ..
                }) => Decoder::Metaspace {
                    replacement,
                    prepend,
                },
                _ => return Err(c.error("not a Metaspace decoder")),
            },
            "Sequence" => Decoder::Sequence(c.each("decoders", |item| {
                Decoder::parse(item)?.ok_or_else(|| item.error("null inside a Sequence"))
            })?),
            other => return Err(c.unsupported(other)),
        };
        Ok(Some(d))
    }

    /// One step over the list of token texts (`decode_chain`).
    pub fn chain(&self, tokens: Vec<String>) -> Vec<String> {
        match self {
            Decoder::ByteLevel => {
                let mut bytes = Vec::new();
                for t in &tokens {
                    match bytes_unicode::decode(t) {
                        Ok(b) => bytes.extend_from_slice(&b),
                        Err(_) => bytes.extend_from_slice(t.as_bytes()),
                    }
                }
                vec![String::from_utf8_lossy(&bytes).into_owned()]
            }
            Decoder::Replace { pattern, content } => tokens
                .into_iter()
                .map(|t| replace(Cow::Owned(t), pattern, content).into_owned())
                .collect(),
            Decoder::ByteFallback => byte_fallback(tokens),
            Decoder::Fuse => vec![tokens.concat()],
            Decoder::Strip {
                content,
                start,
                stop,
            } => tokens
                .into_iter()
                .map(|t| strip(&t, *content, *start, *stop))
                .collect(),
            Decoder::Metaspace {
                replacement,
                prepend,
            } => tokens
                .into_iter()
                .enumerate()
                .map(|(i, t)| {
                    let drop_first = i == 0 && *prepend != Prepend::Never;
                    t.chars()
                        .filter_map(|c| match c == *replacement {
                            true if drop_first => None,
                            true => Some(' '),
                            false => Some(c),
                        })
                        .collect()
                })
                .collect(),
            Decoder::Sequence(list) => list.iter().fold(tokens, |t, d| d.chain(t)),
        }
    }
}

impl Decoder {
    /// The bytes a lone token stands for, leaving out what depends on its neighbours or its
    /// place (ByteFallback's check that bytes form a character, Strip, a first token's Metaspace).
    pub fn view(&self, text: &str) -> Vec<u8> {
        if self.has(&|d| matches!(d, Decoder::ByteFallback)) {
            if let Some(b) = byte_fallback_value(text).filter(|_| text.len() == 6) {
                return vec![b];
            }
        }
        if self.has(&|d| matches!(d, Decoder::ByteLevel)) {
            return super::model::byte_level_bytes(text);
        }
        self.rewrite(text.to_string()).into_bytes()
    }

    fn has(&self, f: &dyn Fn(&Decoder) -> bool) -> bool {
        match self {
            Decoder::Sequence(list) => list.iter().any(|d| d.has(f)),
            d => f(d),
        }
    }

    /// The character replacements of the chain, in order.
    fn rewrite(&self, text: String) -> String {
        match self {
            Decoder::Replace { pattern, content } => {
                replace(Cow::Owned(text), pattern, content).into_owned()
            }
            Decoder::Metaspace { replacement, .. } => text.replace(*replacement, " "),
            Decoder::Sequence(list) => list.iter().fold(text, |t, d| d.rewrite(t)),
            _ => text,
        }
    }
}

fn one_char(c: &Component, key: &str) -> Result<char> {
    let s = str_field(c, key)?;
    let mut chars = s.chars();
    match (chars.next(), chars.next()) {
        (Some(ch), None) => Ok(ch),
        _ => Err(c.error(format!("\"{key}\" must be one character"))),
    }
}

/// Runs of `<0xNN>` tokens become their text, or one U+FFFD per token when not valid UTF-8.
fn byte_fallback(tokens: Vec<String>) -> Vec<String> {
    let mut out = Vec::with_capacity(tokens.len());
    let mut pending: Vec<u8> = Vec::new();
    let flush = |pending: &mut Vec<u8>, out: &mut Vec<String>| {
        if pending.is_empty() {
            return;
        }
        match String::from_utf8(std::mem::take(pending)) {
            Ok(s) => out.push(s),
            Err(e) => out.extend(std::iter::repeat_n(
                "\u{fffd}".to_string(),
                e.as_bytes().len(),
            )),
        }
    };
    for t in tokens {
        match byte_fallback_value(&t) {
            Some(b) if t.len() == 6 => pending.push(b),
            _ => {
                flush(&mut pending, &mut out);
                out.push(t);
            }
        }
    }
    flush(&mut pending, &mut out);
    out
}

/// Up to `start` leading and `stop` trailing `content` characters removed.
fn strip(token: &str, content: char, start: usize, stop: usize) -> String {
    let chars: Vec<char> = token.chars().collect();
    let lead = chars
        .iter()
        .take(start)
        .take_while(|&&c| c == content)
        .count();
    let trail = chars[lead..]
        .iter()
        .rev()
        .take(stop)
        .take_while(|&&c| c == content)
        .count();
    chars[lead..chars.len() - trail].iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn gemma_style_chain() {
        let d = Decoder::Sequence(vec![
            Decoder::Replace {
                pattern: Splitter::literal("▁").unwrap(),
                content: " ".into(),
            },
            Decoder::ByteFallback,
            Decoder::Fuse,
        ]);
        let out = d.chain(texts(&["▁Hello", "<0xE2>", "<0x82>", "<0xAC>", "!"]));
        assert_eq!(out, [" Hello€!"]);
        // A run of byte tokens that is not UTF-8 as a whole gives one U+FFFD per token.
        let out = d.chain(texts(&["<0xE2>", "<0x82>", "<0xAC>", "<0xE2>", "!"]));
        assert_eq!(out, ["\u{fffd}\u{fffd}\u{fffd}\u{fffd}!"]);
    }

    #[test]
    fn strip_and_metaspace() {
        assert_eq!(strip("  ab ", ' ', 1, 0), " ab ");
        let d = Decoder::Metaspace {
            replacement: '▁',
            prepend: Prepend::Always,
        };
        assert_eq!(d.chain(texts(&["▁a▁b", "▁c"])), ["ab", " c"]);
    }
}
