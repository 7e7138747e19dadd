//! Tokenizers for scratchllm: text to token ids and back (the book's chapter 2).
//!
//! - [`Tokenizer`]: byte-level BPE, bit-exact with GPT-2 / tiktoken `r50k_base` ([`gpt2`]), loading
//!   every common vocabulary format ([`formats::load`]) and saving ours and Hugging Face's.
//! - [`SimpleTokenizer`]: the book's regex word tokenizer with `<|unk|>`.
//! - [`train`]: byte-level BPE training on a corpus.
//! - [`StreamDecoder`]: incremental decoding that never splits a UTF-8 character.
//! - [`hf`]: Hugging Face `tokenizer.json` pipelines (Llama 3, Qwen3, Gemma 3, ...), component by
//!   component as the `tokenizers` library defines them; [`Tokenizer`] runs them in place of the
//!   GPT-2 path when a file needs it.
//! - [`template`], [`meta`]: chat templates (Jinja, as transformers renders them) and special
//!   roles (bos, eos, end of turn, stop ids) from the files beside `tokenizer.json`.
//! - [`long`]: long pieces in near-linear time and small memory.
//!
//! This crate has no tensor dependency.
mod bpe;
pub mod bytes_unicode;
mod error;
pub mod formats;
pub mod gguf;
mod gpt2;
pub mod hf;
pub mod io;
pub mod long;
pub mod merge;
pub mod meta;
pub mod pretokenize;
mod simple;
mod stream;
pub mod template;
pub mod train;

pub use bpe::{MergeRule, SpecialMode, Tokenizer};
pub use error::{Result, TokenizerError};
pub use gpt2::{gpt2, gpt2_shared, ENDOFTEXT, ENDOFTEXT_ID};
pub use hf::SplitPreset;
pub use meta::{Meta, Role};
pub use simple::{split_words, SimpleTokenizer};
pub use stream::StreamDecoder;
pub use template::{ChatOptions, ChatTemplate};
pub use train::{train, TrainOptions, WordCounts};

/// Loads a tokenizer by name (`gpt2`) or path (a directory or file of any supported format).
pub fn load(spec: &str) -> Result<Tokenizer> {
    if spec == "gpt2" || spec == "r50k_base" {
        return gpt2();
    }
    let path = std::path::Path::new(spec);
    if !path.exists() {
        return Err(TokenizerError::Format {
            path: path.to_path_buf(),
            message:
                "no such file or directory, and not a built-in tokenizer name (built in: gpt2)"
                    .into(),
        });
    }
    formats::load(path)
}
