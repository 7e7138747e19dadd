//! Errors of the tokenizer crate: each names the file, line, byte offset or id that is wrong.
use std::path::PathBuf;

/// Everything that can go wrong while loading, encoding, decoding or training.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Format { path: PathBuf, message: String },
    #[error("{path}, line {line}: {message}")]
    Line {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("{what} is not valid UTF-8 at byte {offset}")]
    NotUtf8 { what: String, offset: usize },
    #[error(
        "the text contains the special token {token:?} at byte {offset}; allow it (--allow-special) \
         to encode it as id {id}, or encode it as ordinary text (--special-as-text)"
    )]
    DisallowedSpecial {
        token: String,
        offset: usize,
        id: u32,
    },
    #[error("unknown token id {id} (the vocabulary has ids 0..{vocab_size})")]
    UnknownId { id: u32, vocab_size: usize },
    #[error("invalid vocabulary: {0}")]
    Vocabulary(String),
    #[error("invalid training setting: {0}")]
    Training(String),
    #[error("{path}: {component}: {message}")]
    Component {
        path: PathBuf,
        component: String,
        message: String,
    },
    #[error("chat template in {path}: {message}")]
    Template { path: PathBuf, message: String },
    #[error("chat messages: {0}")]
    Messages(String),
}

pub type Result<T, E = TokenizerError> = std::result::Result<T, E>;

impl TokenizerError {
    pub(crate) fn format(path: &std::path::Path, message: impl Into<String>) -> Self {
        Self::Format {
            path: path.to_path_buf(),
            message: message.into(),
        }
    }

    pub(crate) fn line(path: &std::path::Path, line: usize, message: impl Into<String>) -> Self {
        Self::Line {
            path: path.to_path_buf(),
            line,
            message: message.into(),
        }
    }

    pub(crate) fn io(path: &std::path::Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}
