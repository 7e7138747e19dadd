//! Between the GPT-2 path and pipelines: a `tokenizer.json` that is GPT-2's own pipeline runs on
//! the GPT-2 path ([`plain_gpt2`]); a byte-level vocabulary trained with another split pattern
//! becomes a pipeline ([`with_split`]); and a check that a vocabulary's merges can reach all of it.
use super::added::AddedToken;
use super::decoder::Decoder;
use super::model::{byte_level_bytes, Model, Units};
use super::post::PostProcessor;
use super::pretokenizer::{Behavior, PreTokenizer};
use super::split::{Splitter, LLAMA3_PATTERN};
use super::{Json, Pipeline};
use crate::bpe::Tokenizer;
use crate::bytes_unicode;
use crate::error::Result;
use rustc_hash::FxHashSet;
use serde_json::json;
use std::path::Path;

/// The split pattern a byte-level vocabulary was trained with.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SplitPreset {
    /// GPT-2's pattern (the GPT-2 path).
    #[default]
    Gpt2,
    /// Llama 3's pattern, run as a `tokenizer.json` pipeline.
    Llama3,
}

impl SplitPreset {
    pub fn name(self) -> &'static str {
        match self {
            SplitPreset::Gpt2 => "gpt2",
            SplitPreset::Llama3 => "llama3",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "gpt2" => Some(SplitPreset::Gpt2),
            "llama3" => Some(SplitPreset::Llama3),
            _ => None,
        }
    }
}

/// A GPT-2-path vocabulary: token bytes, the merge list and the special tokens.
pub type Gpt2Parts = (Vec<Vec<u8>>, Vec<(u32, u32)>, Vec<(String, u32)>);

/// Vocabulary bytes, merges and specials when `p` is exactly GPT-2's pipeline (ByteLevel with its
/// regex and no prefix space, plain special tokens, no normalizer): the GPT-2 path then encodes it.
pub fn plain_gpt2(p: &Pipeline) -> Option<Gpt2Parts> {
    let gpt2_split = matches!(
        p.pre_tokenizer.as_ref()?.isolated_splitter(),
        Some(Splitter::Gpt2)
    );
    let plain_added = p
        .added
        .iter()
        .all(|t| t.special && !t.normalized && !t.lstrip && !t.rstrip && !t.single_word);
    let ok = gpt2_split
        && plain_added
        && p.normalizer.is_none()
        && p.model.is_byte_level()
        && !p.model.ignore_merges
        && p.model.merges.len() == p.model.merge_list.len()
        && matches!(p.decoder, None | Some(Decoder::ByteLevel))
        && matches!(p.post, None | Some(PostProcessor::ByteLevel))
        && p.model
            .tokens
            .iter()
            .all(|t| bytes_unicode::decode(t).is_ok());
    if !ok {
        return None;
    }
    let tokens = p.model.tokens.iter().map(|t| byte_level_bytes(t)).collect();
    let specials = p.added.iter().map(|t| (t.content.clone(), t.id)).collect();
    Some((tokens, p.model.merge_list.clone(), specials))
}

/// A byte-level merge-list tokenizer (from training) that splits with `preset`'s pattern. GPT-2's
/// pattern keeps the GPT-2 path; any other becomes a pipeline with the same vocabulary and merges.
pub fn with_split(core: Tokenizer, preset: SplitPreset) -> Result<Tokenizer> {
    if preset == SplitPreset::Gpt2 {
        return Ok(core);
    }
    let specials: FxHashSet<u32> = core.specials().iter().map(|s| s.1).collect();
    let ordinary = core.vocab_size() - specials.len();
    let tokens: Vec<String> = (0..ordinary as u32)
        .map(|id| bytes_unicode::encode(core.vocab()[id as usize].as_slice()))
        .collect();
    let mut encoder = rustc_hash::FxHashMap::default();
    for (id, t) in core.vocab()[..ordinary].iter().enumerate() {
        encoder.insert(t.clone(), id as u32);
    }
    let byte_ids = std::array::from_fn(|b| core.byte_token(b as u8));
    let units = Units::Bytes {
        byte_ids: Box::new(byte_ids),
        encoder,
    };
    let model = Model::new(
        tokens,
        core.merge_table().clone(),
        core.merge_list(),
        false,
        units,
    );
    let split = json!({"type": "Split", "pattern": {"Regex": LLAMA3_PATTERN}, "behavior": "Isolated", "invert": false});
    let byte_level = json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false});
    let json = Json {
        normalizer: serde_json::Value::Null,
        pre_tokenizer: json!({"type": "Sequence", "pretokenizers": [split, byte_level]}),
        post_processor: serde_json::Value::Null,
        decoder: json!({"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true}),
        model_options: json!({"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false})
        .as_object()
        .cloned()
        .unwrap_or_default(),
    };
    let pre = PreTokenizer::Sequence(vec![
        PreTokenizer::Split {
            pattern: Splitter::Llama3 { max_digits: 3 },
            behavior: Behavior::Isolated,
            invert: false,
        },
        PreTokenizer::ByteLevel {
            add_prefix_space: false,
            use_regex: false,
        },
    ]);
    let added = core
        .specials()
        .iter()
        .map(|(t, id)| AddedToken::special(t, *id))
        .collect();
    let mut p = Pipeline::new(
        Path::new("<trained>"),
        None,
        Some(pre),
        model,
        added,
        None,
        Some(Decoder::ByteLevel),
        json,
    )?;
    p.preset = Some(preset);
    Tokenizer::from_pipeline(p)
}

/// Warns when some tokens of the vocabulary are made by no merge: text then never encodes to
/// them, which is what a merges file cut short looks like.
pub fn check_coverage(tok: &mut Tokenizer) {
    let (total, missing) = match tok.pipeline() {
        Some(p) => unreachable_model_tokens(p),
        None => unreachable_core_tokens(tok),
    };
    if let Some(&first) = missing.first() {
        let text = String::from_utf8_lossy(tok.vocab()[first as usize].as_slice()).into_owned();
        let msg = format!(
            "{} of the {total} tokens of the vocabulary are made by no merge (the first is id {first}, {text:?}), \
             so no text will ever encode to them: the merge list looks cut short",
            missing.len()
        );
        tok.warn(msg);
    }
}

fn merge_results(table: &crate::merge::MergeTable) -> FxHashSet<u32> {
    table.values().map(|&(_, id)| id).collect()
}

fn unreachable_core_tokens(tok: &Tokenizer) -> (usize, Vec<u32>) {
    if tok.rule() != crate::bpe::MergeRule::MergeList {
        return (0, Vec::new());
    }
    let made = merge_results(tok.merge_table());
    let missing = (0..tok.vocab_size() as u32)
        .filter(|&id| {
            !tok.is_special(id) && tok.vocab()[id as usize].len() > 1 && !made.contains(&id)
        })
        .collect();
    (tok.vocab_size(), missing)
}

fn unreachable_model_tokens(p: &Pipeline) -> (usize, Vec<u32>) {
    let made = merge_results(&p.model.merges);
    let added: FxHashSet<u32> = p.added.iter().map(|t| t.id).collect();
    let base = |t: &str| {
        if p.model.is_byte_level() {
            byte_level_bytes(t).len() <= 1
        } else {
            t.chars().nth(1).is_none() || super::model::byte_fallback_value(t).is_some()
        }
    };
    let missing = p
        .model
        .tokens
        .iter()
        .enumerate()
        .filter(|(id, t)| {
            !made.contains(&(*id as u32)) && !added.contains(&(*id as u32)) && !base(t)
        })
        .map(|(id, _)| id as u32)
        .collect();
    (p.model.tokens.len(), missing)
}
