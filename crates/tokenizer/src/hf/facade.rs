//! The [`Tokenizer`] face of a pipeline: built from one, and the calls that only pipelines give a
//! meaning to (special tokens around a text, skipping special tokens when decoding).
use super::Pipeline;
use crate::bpe::{MergeRule, Tokenizer};
use crate::error::Result;
use crate::long::Junctions;
use crate::merge::MergeTable;
use crate::meta::Meta;
use rustc_hash::FxHashMap;
use std::sync::Arc;

impl Tokenizer {
    /// A tokenizer that runs a `tokenizer.json` pipeline; `vocab` holds what each id stands for on
    /// its own and `specials` the added tokens marked special.
    pub(crate) fn from_pipeline(p: Pipeline) -> Result<Self> {
        let n = p.vocab_size();
        let vocab: Vec<Vec<u8>> = (0..n as u32).map(|id| p.token_view(id)).collect();
        let mut byte_ids = [0u32; 256];
        if let crate::hf::model::Units::Bytes { byte_ids: b, .. } = &p.model.units {
            byte_ids = **b;
        }
        let mut specials: Vec<(String, u32)> = p
            .added
            .iter()
            .filter(|t| t.special)
            .map(|t| (t.content.clone(), t.id))
            .collect();
        specials.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.1.cmp(&b.1)));
        Ok(Tokenizer {
            vocab,
            encoder: FxHashMap::default(),
            byte_ids,
            merges: MergeTable::default(),
            merge_list: Vec::new(),
            rule: MergeRule::MergeList,
            specials,
            junctions: Junctions::default(),
            hf: Some(Arc::new(p)),
            meta: Meta::default(),
        })
    }

    /// The `tokenizer.json` pipeline this tokenizer runs, if it runs one.
    pub fn pipeline(&self) -> Option<&Pipeline> {
        self.hf.as_deref()
    }

    /// `ids` with the special tokens the tokenizer adds around a text (`add_special_tokens` of the
    /// `tokenizers` library: Gemma's `<bos>`); unchanged where it adds none, as for GPT-2.
    pub fn with_special_tokens(&self, ids: Vec<u32>) -> Vec<u32> {
        match &self.hf {
            Some(p) => p.post_process(ids),
            None => ids,
        }
    }

    /// Decodes `ids`, leaving out special tokens when `skip_special` (the library's
    /// `skip_special_tokens`).
    pub fn decode_with(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        if !skip_special {
            return self.decode(ids);
        }
        let kept: Vec<u32> = ids
            .iter()
            .copied()
            .filter(|&id| !self.is_special(id))
            .collect();
        for &id in ids {
            self.token_bytes(id)?;
        }
        self.decode(&kept)
    }
}
