//! Normalizers of a `tokenizer.json`, as the `tokenizers` library defines them
//! (`tokenizers/src/normalizers`): Unicode forms, Lowercase, Replace, Prepend, Strip, Sequence.
//!
//! Only the normalized text matters here (ids carry no offsets), so each normalizer is a function
//! from text to text; one that changes nothing hands the text back without copying.
use super::component::{bool_field, pattern_field, str_field, Component};
use super::split::Splitter;
use crate::error::Result;
use std::borrow::Cow;
use unicode_normalization_alignments::{
    is_nfc_quick, is_nfd_quick, is_nfkc_quick, is_nfkd_quick, IsNormalized, UnicodeNormalization,
};

/// One normalizer.
#[derive(Clone, Debug)]
pub enum Normalizer {
    Nfc,
    Nfd,
    Nfkc,
    Nfkd,
    Lowercase,
    Replace { pattern: Splitter, content: String },
    Prepend(String),
    Strip { left: bool, right: bool },
    Sequence(Vec<Normalizer>),
}

impl Normalizer {
    /// Reads the normalizer at `c` (`None` for JSON null).
    pub fn parse(c: &Component) -> Result<Option<Self>> {
        if c.value.is_null() {
            return Ok(None);
        }
        let n = match c.kind()? {
            "NFC" => Normalizer::Nfc,
            "NFD" => Normalizer::Nfd,
            "NFKC" => Normalizer::Nfkc,
            "NFKD" => Normalizer::Nfkd,
            "Lowercase" => Normalizer::Lowercase,
            "Replace" => Normalizer::Replace {
                pattern: pattern_field(c, "pattern")?,
                content: str_field(c, "content")?.to_string(),
            },
            "Prepend" => Normalizer::Prepend(str_field(c, "prepend")?.to_string()),
            "Strip" => Normalizer::Strip {
                left: bool_field(c, "strip_left")?,
                right: bool_field(c, "strip_right")?,
            },
            "Sequence" => Normalizer::Sequence(c.each("normalizers", |item| {
                Normalizer::parse(item)?.ok_or_else(|| item.error("null inside a Sequence"))
            })?),
            other => return Err(c.unsupported(other)),
        };
        Ok(Some(n))
    }

    /// The normalized form of `text`.
    pub fn apply<'a>(&self, text: Cow<'a, str>) -> Cow<'a, str> {
        match self {
            Normalizer::Nfc => unicode_form(
                text,
                |s| is_nfc_quick(s.chars()),
                |s| s.nfc().map(|(c, _)| c).collect(),
            ),
            Normalizer::Nfkc => unicode_form(
                text,
                |s| is_nfkc_quick(s.chars()),
                |s| s.nfkc().map(|(c, _)| c).collect(),
            ),
            Normalizer::Nfd => unicode_form(
                text,
                |s| is_nfd_quick(s.chars()),
                |s| s.nfd().map(|(c, _)| c).collect(),
            ),
            Normalizer::Nfkd => unicode_form(
                text,
                |s| is_nfkd_quick(s.chars()),
                |s| s.nfkd().map(|(c, _)| c).collect(),
            ),
            Normalizer::Lowercase => {
                if text
                    .chars()
                    .any(|c| c.to_lowercase().ne(std::iter::once(c)))
                {
                    Cow::Owned(text.chars().flat_map(char::to_lowercase).collect())
                } else {
                    text
                }
            }
            Normalizer::Replace { pattern, content } => replace(text, pattern, content),
            Normalizer::Prepend(p) => {
                if text.is_empty() {
                    text
                } else {
                    Cow::Owned(format!("{p}{text}"))
                }
            }
            Normalizer::Strip { left, right } => strip(text, *left, *right),
            Normalizer::Sequence(list) => list.iter().fold(text, |t, n| n.apply(t)),
        }
    }

    /// Whether ASCII text comes out unchanged (Unicode normal forms only).
    pub fn is_identity_on_ascii(&self) -> bool {
        match self {
            Normalizer::Nfc | Normalizer::Nfd | Normalizer::Nfkc | Normalizer::Nfkd => true,
            Normalizer::Sequence(list) => list.iter().all(Normalizer::is_identity_on_ascii),
            _ => false,
        }
    }
}

/// A Unicode normal form, computed only where the text is not ASCII. An ASCII character is a
/// starter that no canonical composition takes as its second part and no reordering moves past,
/// so the text can be cut before any ASCII character and each part normalized alone: only the
/// non-ASCII stretches (with the ASCII character before each, which may compose with them) are
/// looked at, and only those that the quick check does not clear are rebuilt.
fn unicode_form<'a>(
    text: Cow<'a, str>,
    quick: impl Fn(&str) -> IsNormalized,
    full: impl Fn(&str) -> String,
) -> Cow<'a, str> {
    let bytes = text.as_bytes();
    let mut out: Option<String> = None;
    let mut copied = 0;
    let mut i = 0;
    while let Some(off) = bytes[i..].iter().position(|&b| b >= 0x80) {
        let start = (i + off).saturating_sub(usize::from(i + off > i));
        let end = bytes[i + off..]
            .iter()
            .position(|&b| b < 0x80)
            .map_or(bytes.len(), |e| i + off + e);
        let part = &text[start..end];
        if quick(part) != IsNormalized::Yes {
            let normalized = full(part);
            if normalized != part {
                let o = out.get_or_insert_with(|| String::with_capacity(text.len()));
                o.push_str(&text[copied..start]);
                o.push_str(&normalized);
                copied = end;
            }
        }
        i = end;
    }
    match out {
        None => text,
        Some(mut o) => {
            o.push_str(&text[copied..]);
            Cow::Owned(o)
        }
    }
}

/// Every match of `pattern` replaced by `content`.
pub fn replace<'a>(text: Cow<'a, str>, pattern: &Splitter, content: &str) -> Cow<'a, str> {
    let mut matches = pattern.matches(&text).peekable();
    if matches.peek().is_none() {
        return text;
    }
    let mut out = String::with_capacity(text.len() + text.len() / 4);
    let mut last = 0;
    for (start, end) in matches {
        out.push_str(&text[last..start]);
        out.push_str(content);
        last = end;
    }
    out.push_str(&text[last..]);
    Cow::Owned(out)
}

/// `str::trim` of the whitespace `char::is_whitespace` names, as `NormalizedString::lrstrip` does.
fn strip(text: Cow<'_, str>, left: bool, right: bool) -> Cow<'_, str> {
    let start = if left {
        text.len() - text.trim_start().len()
    } else {
        0
    };
    let end = if right {
        text.trim_end().len()
    } else {
        text.len()
    };
    if start == 0 && end == text.len() {
        return text;
    }
    let end = end.max(start);
    match text {
        Cow::Borrowed(s) => Cow::Borrowed(&s[start..end]),
        Cow::Owned(s) => Cow::Owned(s[start..end].to_string()),
    }
}

/// A normalizer described for `tokenizer info`.
pub fn describe(n: &Normalizer) -> String {
    match n {
        Normalizer::Sequence(list) => list.iter().map(describe).collect::<Vec<_>>().join(" + "),
        Normalizer::Replace { content, .. } => format!("Replace(→{content:?})"),
        Normalizer::Prepend(p) => format!("Prepend({p:?})"),
        other => format!("{other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normal_forms_touch_only_what_changes() {
        let nfc = |s: &str| Normalizer::Nfc.apply(Cow::Borrowed(s)).into_owned();
        assert_eq!(nfc("cafe\u{301} x \u{1100}\u{1161}!"), "café x \u{ac00}!");
        assert_eq!(nfc("a\u{323}\u{302}b"), "\u{1ead}b");
        assert!(matches!(
            Normalizer::Nfc.apply(Cow::Borrowed("plain ‘text’")),
            Cow::Borrowed(_)
        ));
        let nfd = |s: &str| Normalizer::Nfd.apply(Cow::Borrowed(s)).into_owned();
        assert_eq!(nfd("é!"), "e\u{301}!");
        let nfkc = |s: &str| Normalizer::Nfkc.apply(Cow::Borrowed(s)).into_owned();
        assert_eq!(nfkc("ﬁ ½"), "fi 1⁄2");
    }
}
