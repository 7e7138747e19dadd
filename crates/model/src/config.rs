//! GPT configuration (the book's `GPT_CONFIG_124M` and friends) and the GPT-2 presets.
use crate::error::{ModelError, Result};
use serde::{Deserialize, Serialize};

/// The hyper-parameters of a GPT-2-style model, named as in the book.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GptConfig {
    /// V: vocabulary size.
    pub vocab_size: usize,
    /// Maximum sequence length (positions embedded).
    pub context_length: usize,
    /// C: embedding width.
    pub emb_dim: usize,
    /// nh: attention heads; hs = C / nh.
    pub n_heads: usize,
    pub n_layers: usize,
    /// Dropout on embeddings, attention weights and residual branches (training only).
    #[serde(default)]
    pub drop_rate: f32,
    /// Biases on the query, key and value projections (GPT-2's checkpoints have them).
    #[serde(default)]
    pub qkv_bias: bool,
    /// The output head shares the token embedding (GPT-2's checkpoints do).
    #[serde(default)]
    pub tie_embeddings: bool,
    /// A classifier: the output head maps to this many classes (with a bias) instead of the
    /// vocabulary. Never tied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_classes: Option<usize>,
}

/// Preset names, smallest first.
pub const PRESETS: [&str; 5] = [
    "gpt2-tiny",
    "gpt2-small",
    "gpt2-medium",
    "gpt2-large",
    "gpt2-xl",
];

impl GptConfig {
    /// A preset: `gpt2-tiny` (tests), `gpt2-small` (124M), `gpt2-medium` (355M), `gpt2-large` (774M),
    /// `gpt2-xl` (1558M). Sizes as GPT-2's checkpoints (qkv bias, tied head), dropout as the book's 0.1.
    pub fn preset(name: &str) -> Option<Self> {
        let (ctx, emb_dim, n_heads, n_layers) = match name {
            "gpt2-tiny" => (256, 64, 4, 2),
            "gpt2-small" | "gpt2" | "124M" => (1024, 768, 12, 12),
            "gpt2-medium" | "355M" => (1024, 1024, 16, 24),
            "gpt2-large" | "774M" => (1024, 1280, 20, 36),
            "gpt2-xl" | "1558M" => (1024, 1600, 25, 48),
            _ => return None,
        };
        Some(GptConfig {
            vocab_size: 50_257,
            context_length: ctx,
            emb_dim,
            n_heads,
            n_layers,
            drop_rate: 0.1,
            qkv_bias: true,
            tie_embeddings: true,
            num_classes: None,
        })
    }

    pub fn head_dim(&self) -> usize {
        self.emb_dim / self.n_heads
    }

    /// Checks the values a model cannot be built from.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(ModelError::Config(m));
        if self.vocab_size == 0
            || self.context_length == 0
            || self.emb_dim == 0
            || self.n_heads == 0
            || self.n_layers == 0
        {
            return bad(format!("every size must be positive: {self:?}"));
        }
        if !self.emb_dim.is_multiple_of(self.n_heads) {
            return bad(format!(
                "emb_dim {} is not divisible by n_heads {}",
                self.emb_dim, self.n_heads
            ));
        }
        if let Some(n) = self.num_classes {
            if n < 2 || self.tie_embeddings {
                return bad(format!(
                    "a classifier needs at least 2 classes and an untied head (num_classes {n}, tie_embeddings {})",
                    self.tie_embeddings
                ));
            }
        }
        if !(0.0..1.0).contains(&self.drop_rate) {
            return bad(format!("drop_rate {} is outside [0, 1)", self.drop_rate));
        }
        // Keeps parameter counts and memory in range on any machine a file may come from.
        if self.vocab_size > 1 << 24
            || self.context_length > 1 << 20
            || self.emb_dim > 1 << 16
            || self.n_layers > 1024
        {
            return bad(format!("sizes beyond any supported model: {self:?}"));
        }
        Ok(())
    }

    /// Parameter count of one transformer block.
    pub fn block_params(&self) -> usize {
        let c = self.emb_dim;
        let qkv = 3 * c * c + if self.qkv_bias { 3 * c } else { 0 };
        let out_proj = c * c + c;
        let ff = (c * 4 * c + 4 * c) + (4 * c * c + c);
        let norms = 4 * c;
        qkv + out_proj + ff + norms
    }

    /// Rows of the output head: the classes of a classifier, else the vocabulary.
    pub fn out_dim(&self) -> usize {
        self.num_classes.unwrap_or(self.vocab_size)
    }

    /// Total parameters, counting a separate output head when the head is not tied.
    pub fn param_count(&self) -> usize {
        let c = self.emb_dim;
        let head = match self.num_classes {
            Some(n) => n * c + n,
            None if self.tie_embeddings => 0,
            None => self.vocab_size * c,
        };
        self.vocab_size * c
            + self.context_length * c
            + self.n_layers * self.block_params()
            + 2 * c
            + head
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameter_counts_match_the_book() {
        // Chapter 4: qkv_bias false, separate output head / head counted as tied.
        let book = |name: &str| GptConfig {
            qkv_bias: false,
            tie_embeddings: false,
            ..GptConfig::preset(name).unwrap()
        };
        let small = book("gpt2-small");
        assert_eq!(small.param_count(), 163_009_536);
        assert_eq!(
            small.param_count() - small.vocab_size * small.emb_dim,
            124_412_160
        );
        assert_eq!(book("gpt2-medium").param_count(), 406_212_608);
        assert_eq!(book("gpt2-large").param_count(), 838_220_800);
        assert_eq!(book("gpt2-xl").param_count(), 1_637_792_000);
        // OpenAI's GPT-2 124M as transformers counts it.
        assert_eq!(
            GptConfig::preset("gpt2-small").unwrap().param_count(),
            124_439_808
        );
    }
}
