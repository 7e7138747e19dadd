//! Pre-tokenizers of a `tokenizer.json`, as the `tokenizers` library defines them
//! (`tokenizers/src/pre_tokenizers`): Split (string or regex, every `behavior`), ByteLevel (with or
//! without its GPT-2 regex), Metaspace, Sequence.
//!
//! A pre-tokenizer turns one text into pieces; every piece is then encoded on its own. The common
//! case, one split pattern whose matches are the pieces (Llama 3, Qwen, GPT-2), is recognised once
//! ([`PreTokenizer::isolated_splitter`]) so that encoding can run the matcher directly.
use super::component::{bool_or, pattern_field, str_field, Component};
use super::split::Splitter;
use crate::error::Result;
use std::borrow::Cow;

/// How a Split keeps its matches (`SplitDelimiterBehavior`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Behavior {
    Removed,
    Isolated,
    MergedWithPrevious,
    MergedWithNext,
    Contiguous,
}

/// Metaspace's `prepend_scheme`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Prepend {
    Always,
    First,
    Never,
}

/// One pre-tokenizer.
#[derive(Clone, Debug)]
pub enum PreTokenizer {
    Split {
        pattern: Splitter,
        behavior: Behavior,
        invert: bool,
    },
    /// Marks the pipeline byte-level; the byte-to-character map itself is the model's business.
    ByteLevel {
        add_prefix_space: bool,
        use_regex: bool,
    },
    Metaspace {
        replacement: char,
        prepend: Prepend,
        split: bool,
    },
    Sequence(Vec<PreTokenizer>),
}

/// A piece of text on its way to the model; `first` when it starts the whole input (Metaspace's
/// `first` scheme prepends only there).
#[derive(Clone, Debug)]
pub struct Piece<'a> {
    pub text: Cow<'a, str>,
    pub first: bool,
}

impl PreTokenizer {
    /// Reads the pre-tokenizer at `c` (`None` for JSON null).
    pub fn parse(c: &Component) -> Result<Option<Self>> {
        if c.value.is_null() {
            return Ok(None);
        }
        let p = match c.kind()? {
            "Split" => PreTokenizer::Split {
                pattern: pattern_field(c, "pattern")?,
                behavior: behavior(c)?,
                invert: bool_or(c, "invert", false)?,
            },
            "ByteLevel" => PreTokenizer::ByteLevel {
                add_prefix_space: bool_or(c, "add_prefix_space", true)?,
                use_regex: bool_or(c, "use_regex", true)?,
            },
            "Metaspace" => metaspace(c)?,
            "Sequence" => {
                let list = c.each("pretokenizers", |item| {
                    PreTokenizer::parse(item)?.ok_or_else(|| item.error("null inside a Sequence"))
                })?;
                // ByteLevel rewrites the text into its byte alphabet; a pre-tokenizer after it would
                // see that alphabet, which the model here does not reproduce.
                if list[..list.len().saturating_sub(1)]
                    .iter()
                    .any(PreTokenizer::has_byte_level)
                {
                    return Err(c.error("a pre-tokenizer after ByteLevel is not supported"));
                }
                PreTokenizer::Sequence(list)
            }
            other => return Err(c.unsupported(other)),
        };
        Ok(Some(p))
    }

    /// Whether a ByteLevel step is part of this pre-tokenizer (the model is then byte-level).
    pub fn has_byte_level(&self) -> bool {
        match self {
            PreTokenizer::ByteLevel { .. } => true,
            PreTokenizer::Sequence(list) => list.iter().any(PreTokenizer::has_byte_level),
            _ => false,
        }
    }

    /// The splitter when this pre-tokenizer only cuts text into the matches of one pattern and the
    /// gaps between them (Isolated), as Llama 3's, Qwen's and GPT-2's do.
    pub fn isolated_splitter(&self) -> Option<&Splitter> {
        static GPT2: Splitter = Splitter::Gpt2;
        match self {
            PreTokenizer::Split {
                pattern,
                behavior: Behavior::Isolated,
                ..
            } => Some(pattern),
            PreTokenizer::ByteLevel {
                add_prefix_space: false,
                use_regex: true,
            } => Some(&GPT2),
            PreTokenizer::Sequence(list) => match &list[..] {
                [one] => one.isolated_splitter(),
                [split, PreTokenizer::ByteLevel {
                    add_prefix_space: false,
                    use_regex: false,
                }] => split.isolated_splitter(),
                _ => None,
            },
            _ => None,
        }
    }

    /// The pieces of `pieces`, in order.
    pub fn apply<'a>(&self, pieces: Vec<Piece<'a>>) -> Vec<Piece<'a>> {
        match self {
            PreTokenizer::Split {
                pattern,
                behavior,
                invert,
            } => flat_map(pieces, |p| split(p, pattern, *behavior, *invert)),
            PreTokenizer::ByteLevel {
                add_prefix_space,
                use_regex,
            } => flat_map(pieces, |mut p| {
                if *add_prefix_space && !p.text.starts_with(' ') {
                    p.text = Cow::Owned(format!(" {}", p.text));
                }
                if *use_regex {
                    split(p, &Splitter::Gpt2, Behavior::Isolated, false)
                } else {
                    vec![p]
                }
            }),
            PreTokenizer::Metaspace {
                replacement,
                prepend,
                split: cut,
            } => flat_map(pieces, |p| metaspace_piece(p, *replacement, *prepend, *cut)),
            PreTokenizer::Sequence(list) => list.iter().fold(pieces, |acc, pre| pre.apply(acc)),
        }
    }
}

fn flat_map<'a>(
    pieces: Vec<Piece<'a>>,
    f: impl FnMut(Piece<'a>) -> Vec<Piece<'a>>,
) -> Vec<Piece<'a>> {
    let mut out: Vec<Piece<'a>> = pieces.into_iter().flat_map(f).collect();
    // `tokenizers` drops empty pieces after every step.
    out.retain(|p| !p.text.is_empty());
    out
}

fn behavior(c: &Component) -> Result<Behavior> {
    Ok(match str_field(c, "behavior")? {
        "Removed" => Behavior::Removed,
        "Isolated" => Behavior::Isolated,
        "MergedWithPrevious" => Behavior::MergedWithPrevious,
        "MergedWithNext" => Behavior::MergedWithNext,
        "Contiguous" => Behavior::Contiguous,
        other => return Err(c.error(format!("unknown behavior {other:?}"))),
    })
}

fn metaspace(c: &Component) -> Result<PreTokenizer> {
    let rep = str_field(c, "replacement")?;
    let mut chars = rep.chars();
    let (Some(replacement), None) = (chars.next(), chars.next()) else {
        return Err(c.error("\"replacement\" must be one character"));
    };
    let mut prepend = match c.get("prepend_scheme").and_then(|v| v.as_str()) {
        None | Some("always") => Prepend::Always,
        Some("first") => Prepend::First,
        Some("never") => Prepend::Never,
        Some(other) => return Err(c.error(format!("unknown prepend_scheme {other:?}"))),
    };
    // The older `add_prefix_space: false` means never (and must not contradict the scheme).
    if !bool_or(c, "add_prefix_space", true)? {
        if prepend != Prepend::Never && c.get("prepend_scheme").is_some() {
            return Err(c.error("add_prefix_space does not match prepend_scheme"));
        }
        prepend = Prepend::Never;
    }
    Ok(PreTokenizer::Metaspace {
        replacement,
        prepend,
        split: bool_or(c, "split", true)?,
    })
}

fn metaspace_piece(p: Piece<'_>, replacement: char, prepend: Prepend, cut: bool) -> Vec<Piece<'_>> {
    let mut text = if p.text.contains(' ') {
        p.text.replace(' ', replacement.encode_utf8(&mut [0; 4]))
    } else {
        p.text.into_owned()
    };
    let add = match prepend {
        Prepend::Always => true,
        Prepend::First => p.first,
        Prepend::Never => false,
    };
    if add && !text.starts_with(replacement) {
        text.insert(0, replacement);
    }
    let piece = Piece {
        text: Cow::Owned(text),
        first: p.first,
    };
    if !cut {
        return vec![piece];
    }
    let rep = replacement.to_string();
    match Splitter::literal(&rep) {
        Ok(s) => split(piece, &s, Behavior::MergedWithNext, false),
        // A one-character literal always compiles; keep the piece whole if it somehow does not.
        Err(_) => vec![piece],
    }
}

/// One piece cut by `pattern` as `behavior` says (`NormalizedString::split`).
pub fn split<'a>(
    p: Piece<'a>,
    pattern: &Splitter,
    behavior: Behavior,
    invert: bool,
) -> Vec<Piece<'a>> {
    let matches: Vec<(usize, usize, bool)> = pattern
        .find_matches(&p.text)
        .into_iter()
        .map(|(s, e, m)| (s, e, m != invert))
        .collect();
    let ranges = keep(matches, behavior);
    let sub = |s: usize, e: usize| match &p.text {
        Cow::Borrowed(t) => Cow::Borrowed(&t[s..e]),
        Cow::Owned(t) => Cow::Owned(t[s..e].to_string()),
    };
    ranges
        .into_iter()
        .map(|(s, e)| Piece {
            text: sub(s, e),
            first: p.first && s == 0,
        })
        .collect()
}

/// The ranges a behavior keeps, merged as `tokenizers` merges them.
fn keep(matches: Vec<(usize, usize, bool)>, behavior: Behavior) -> Vec<(usize, usize)> {
    let mut out: Vec<(usize, usize)> = Vec::with_capacity(matches.len());
    let mut previous_match = false;
    match behavior {
        Behavior::Isolated => out.extend(matches.iter().map(|&(s, e, _)| (s, e))),
        Behavior::Removed => out.extend(matches.iter().filter(|m| !m.2).map(|&(s, e, _)| (s, e))),
        Behavior::Contiguous | Behavior::MergedWithPrevious => {
            for (s, e, is_match) in matches {
                let join = if behavior == Behavior::Contiguous {
                    is_match == previous_match
                } else {
                    is_match && !previous_match
                };
                match out.last_mut() {
                    Some(last) if join => last.1 = e,
                    _ => out.push((s, e)),
                }
                previous_match = is_match;
            }
        }
        Behavior::MergedWithNext => {
            for (s, e, is_match) in matches.into_iter().rev() {
                match out.last_mut() {
                    Some(last) if is_match && !previous_match => last.0 = s,
                    _ => out.push((s, e)),
                }
                previous_match = is_match;
            }
            out.reverse();
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cut(text: &str, pattern: &str, behavior: Behavior) -> Vec<String> {
        let p = Piece {
            text: Cow::Borrowed(text),
            first: true,
        };
        let s = Splitter::literal(pattern).unwrap();
        split(p, &s, behavior, false)
            .into_iter()
            .map(|p| p.text.into_owned())
            .collect()
    }

    #[test]
    fn behaviors_match_the_library_examples() {
        // The examples of `tokenizers/src/pre_tokenizers/split.rs`.
        let t = "How are you doing?";
        assert_eq!(
            cut(t, " ", Behavior::Removed),
            ["How", "are", "you", "doing?"]
        );
        assert_eq!(
            cut(t, " ", Behavior::Isolated),
            ["How", " ", "are", " ", "you", " ", "doing?"]
        );
        assert_eq!(
            cut(t, " ", Behavior::MergedWithPrevious),
            ["How ", "are ", "you ", "doing?"]
        );
        assert_eq!(
            cut(t, " ", Behavior::MergedWithNext),
            ["How", " are", " you", " doing?"]
        );
        assert_eq!(
            cut("a--b-c", "-", Behavior::Contiguous),
            ["a", "--", "b", "-", "c"]
        );
    }
}
