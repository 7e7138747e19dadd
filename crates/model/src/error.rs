//! Errors of the model crate: each names the file, the tensor and the shapes involved.
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("tensor {name}: expected shape {expected:?}, found {found:?}")]
    Shape {
        name: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    #[error("tensor {name} is missing{hint}")]
    Missing { name: String, hint: String },
    /// A GGUF file being written would be invalid (a duplicate name, data of the wrong length).
    #[error("invalid GGUF content: {0}")]
    Gguf(String),
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("invalid generation setting: {0}")]
    Generation(String),
    /// The model's output cannot be used: its weights are broken (typically a training run that
    /// diverged and saved NaN weights). `model` names where the weights came from.
    #[error("the weights of {model} produce {problem}; the model is broken (did its training diverge? retrain it, or use an earlier checkpoint)")]
    Logits {
        model: String,
        problem: crate::generate::LogitsError,
    },
    #[error(transparent)]
    Tokenizer(#[from] scratchllm_tokenizer::TokenizerError),
    #[error("tensor operation failed: {0}")]
    Candle(#[from] candle_core::Error),
}

pub type Result<T, E = ModelError> = std::result::Result<T, E>;

impl ModelError {
    pub(crate) fn file(path: &std::path::Path, message: impl Into<String>) -> Self {
        Self::File {
            path: path.to_path_buf(),
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
