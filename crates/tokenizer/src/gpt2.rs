//! The GPT-2 vocabulary (tiktoken's `r50k_base`), bundled at build time so it works offline.
use crate::bpe::Tokenizer;
use crate::error::{Result, TokenizerError};
use std::sync::OnceLock;

static BLOB: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/r50k_base.bin"));

/// GPT-2's end-of-text token and its id.
pub const ENDOFTEXT: &str = "<|endoftext|>";
pub const ENDOFTEXT_ID: u32 = 50_256;

fn parse_blob() -> Result<Vec<Vec<u8>>> {
    let corrupt = || TokenizerError::Vocabulary("the bundled GPT-2 vocabulary is corrupt".into());
    let count = u32::from_le_bytes(
        BLOB.get(..4)
            .ok_or_else(corrupt)?
            .try_into()
            .map_err(|_| corrupt())?,
    );
    let mut tokens = Vec::with_capacity(count as usize);
    let mut at = 4;
    for _ in 0..count {
        let len = *BLOB.get(at).ok_or_else(corrupt)? as usize;
        tokens.push(BLOB.get(at + 1..at + 1 + len).ok_or_else(corrupt)?.to_vec());
        at += 1 + len;
    }
    Ok(tokens)
}

/// A fresh GPT-2 tokenizer (the ranks rule, `<|endoftext|>` = 50256).
pub fn gpt2() -> Result<Tokenizer> {
    Tokenizer::from_ranks(parse_blob()?, &[(ENDOFTEXT.to_string(), ENDOFTEXT_ID)])
}

/// A shared GPT-2 tokenizer, built once per process.
pub fn gpt2_shared() -> Result<&'static Tokenizer> {
    static TOK: OnceLock<std::result::Result<Tokenizer, String>> = OnceLock::new();
    TOK.get_or_init(|| gpt2().map_err(|e| e.to_string()))
        .as_ref()
        .map_err(|e| TokenizerError::Vocabulary(e.clone()))
}
