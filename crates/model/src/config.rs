//! Model configuration (the book's `GPT_CONFIG_124M`, and its bonus chapters' Llama 3.2, Qwen3 and
//! Gemma 3 configurations) and the presets.
//!
//! One flat configuration serves every architecture: the fields of GPT-2 are the book's chapter 4
//! names, and the decoder architectures add theirs (named as in the bonus chapters: `n_kv_groups`
//! is `n_kv_heads` here, `hidden_dim`, `head_dim`, `rope_base`, ...), each ignored by GPT-2 and
//! omitted from the JSON when unset, so GPT-2 configuration files are exactly what they were.
use crate::error::{ModelError, Result};
use serde::{Deserialize, Serialize};

/// The architectures (see `gpt.rs` for GPT-2 and `decoder.rs` for the others).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    /// GPT-2: learned positions, LayerNorm, GELU MLP, multi-head attention.
    #[default]
    Gpt2,
    /// Llama 2/3 (and Qwen2/2.5 with `qkv_bias`): RoPE, RMSNorm, SwiGLU, grouped-query attention.
    Llama,
    /// Qwen3: Llama plus RMSNorm on each query and key head (QK-norm).
    Qwen3,
    /// Gemma 3 text: QK-norm, (1 + w) RMSNorm, four norms per block, GeGLU (tanh), embeddings
    /// scaled by sqrt(C), sliding-window and global layers with two RoPE bases.
    Gemma3,
}

impl Arch {
    pub const ALL: [Arch; 4] = [Arch::Gpt2, Arch::Llama, Arch::Qwen3, Arch::Gemma3];

    pub fn name(self) -> &'static str {
        match self {
            Arch::Gpt2 => "gpt2",
            Arch::Llama => "llama",
            Arch::Qwen3 => "qwen3",
            Arch::Gemma3 => "gemma3",
        }
    }

    /// Whether this is one of the RoPE/RMSNorm decoders of `decoder.rs`.
    pub fn is_decoder(self) -> bool {
        self != Arch::Gpt2
    }

    fn is_gpt2(&self) -> bool {
        *self == Arch::Gpt2
    }
}

/// Llama 3's RoPE frequency scaling (`rope_scaling` with `rope_type: llama3` in Hugging Face's
/// configs, the book's `rope_freq`), or a plain linear scaling (`factor` only).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RopeScaling {
    pub factor: f64,
    /// Llama 3's: wavelengths longer than `original_context_length / low_freq_factor` are divided
    /// by `factor`, shorter than `original_context_length / high_freq_factor` kept, smoothed between.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub llama3: Option<Llama3Rope>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Llama3Rope {
    pub low_freq_factor: f64,
    pub high_freq_factor: f64,
    pub original_context_length: usize,
}

/// What a layer of a decoder attends to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LayerType {
    FullAttention,
    /// The last `sliding_window` positions only (Gemma 3's local layers).
    SlidingAttention,
}

/// The hyper-parameters of a model, named as in the book.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GptConfig {
    /// The architecture; GPT-2 when absent (every file written before there were others).
    #[serde(default, skip_serializing_if = "Arch::is_gpt2")]
    pub arch: Arch,
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
    /// Key/value heads of grouped-query attention (decoders; `n_heads` when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n_kv_heads: Option<usize>,
    /// hs: the width of one head, when it is not `emb_dim / n_heads` (Qwen3, Gemma 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head_dim: Option<usize>,
    /// H: the feed-forward width (decoders; GPT-2's is 4C).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hidden_dim: Option<usize>,
    /// RoPE's base (theta) for the global layers (decoders).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_base: Option<f64>,
    /// RoPE's base for the sliding-window layers (Gemma 3's `rope_local_base_freq`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_local_base: Option<f64>,
    /// RoPE frequency scaling of the global layers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_scaling: Option<RopeScaling>,
    /// The window of the sliding-window layers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sliding_window: Option<usize>,
    /// Per layer, what it attends to (all full when empty).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub layer_types: Vec<LayerType>,
    /// RMSNorm's epsilon (decoders; 1e-5 when absent, GPT-2's LayerNorm always uses 1e-5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub norm_eps: Option<f64>,
    /// Gemma 3: attention scores are scaled by `query_pre_attn_scalar^-0.5` instead of `hs^-0.5`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query_pre_attn_scalar: Option<f64>,
}

impl Default for GptConfig {
    /// GPT-2 with every size zero: a base for struct literals (`..Default::default()`), not a model.
    fn default() -> Self {
        GptConfig {
            arch: Arch::Gpt2,
            vocab_size: 0,
            context_length: 0,
            emb_dim: 0,
            n_heads: 0,
            n_layers: 0,
            drop_rate: 0.0,
            qkv_bias: false,
            tie_embeddings: false,
            num_classes: None,
            n_kv_heads: None,
            head_dim: None,
            hidden_dim: None,
            rope_base: None,
            rope_local_base: None,
            rope_scaling: None,
            sliding_window: None,
            layer_types: Vec::new(),
            norm_eps: None,
            query_pre_attn_scalar: None,
        }
    }
}

/// Preset names: GPT-2's smallest first, then the decoders' tiny test shapes and real shapes.
pub const PRESETS: [&str; 11] = [
    "gpt2-tiny",
    "gpt2-small",
    "gpt2-medium",
    "gpt2-large",
    "gpt2-xl",
    "llama3-tiny",
    "qwen3-tiny",
    "gemma3-tiny",
    "llama3.2-1b",
    "qwen3-0.6b",
    "gemma3-270m",
];

/// Gemma 3's layer pattern: every `period`-th layer global, the others sliding.
pub fn gemma3_layer_types(n_layers: usize, period: usize) -> Vec<LayerType> {
    (0..n_layers)
        .map(|i| {
            if period > 0 && (i + 1).is_multiple_of(period) {
                LayerType::FullAttention
            } else {
                LayerType::SlidingAttention
            }
        })
        .collect()
}

impl GptConfig {
    /// A preset: `gpt2-tiny` (tests), `gpt2-small` (124M), `gpt2-medium` (355M), `gpt2-large` (774M),
    /// `gpt2-xl` (1558M), sizes as GPT-2's checkpoints (qkv bias, tied head), dropout as the book's
    /// 0.1; `llama3.2-1b`, `qwen3-0.6b`, `gemma3-270m` at the published models' shapes (their Hub
    /// `config.json`s), and `llama3-tiny`, `qwen3-tiny`, `gemma3-tiny` at test sizes. Decoders have
    /// no dropout, as published; the tiny ones take GPT-2's vocabulary until a tokenizer says otherwise.
    pub fn preset(name: &str) -> Option<Self> {
        if let Some(c) = Self::decoder_preset(name) {
            return Some(c);
        }
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
            ..Default::default()
        })
    }

    fn decoder_preset(name: &str) -> Option<Self> {
        let llama3_rope = |factor, original_context_length| RopeScaling {
            factor,
            llama3: Some(Llama3Rope {
                low_freq_factor: 1.0,
                high_freq_factor: 4.0,
                original_context_length,
            }),
        };
        let base = GptConfig {
            tie_embeddings: true,
            ..Default::default()
        };
        Some(match name {
            "llama3-tiny" => GptConfig {
                arch: Arch::Llama,
                vocab_size: 50_257,
                context_length: 256,
                emb_dim: 64,
                n_heads: 4,
                n_layers: 2,
                n_kv_heads: Some(2),
                hidden_dim: Some(160),
                rope_base: Some(500_000.0),
                rope_scaling: Some(llama3_rope(8.0, 32)),
                norm_eps: Some(1e-5),
                ..base
            },
            "qwen3-tiny" => GptConfig {
                arch: Arch::Qwen3,
                vocab_size: 50_257,
                context_length: 256,
                emb_dim: 64,
                n_heads: 4,
                n_layers: 2,
                n_kv_heads: Some(2),
                head_dim: Some(32),
                hidden_dim: Some(128),
                rope_base: Some(1_000_000.0),
                norm_eps: Some(1e-6),
                ..base
            },
            "gemma3-tiny" => GptConfig {
                arch: Arch::Gemma3,
                vocab_size: 50_257,
                context_length: 256,
                emb_dim: 64,
                n_heads: 4,
                n_layers: 3,
                n_kv_heads: Some(1),
                head_dim: Some(16),
                hidden_dim: Some(128),
                rope_base: Some(1_000_000.0),
                rope_local_base: Some(10_000.0),
                sliding_window: Some(32),
                layer_types: gemma3_layer_types(3, 3),
                norm_eps: Some(1e-6),
                query_pre_attn_scalar: Some(16.0),
                ..base
            },
            "llama3.2-1b" => GptConfig {
                arch: Arch::Llama,
                vocab_size: 128_256,
                context_length: 131_072,
                emb_dim: 2048,
                n_heads: 32,
                n_layers: 16,
                n_kv_heads: Some(8),
                head_dim: Some(64),
                hidden_dim: Some(8192),
                rope_base: Some(500_000.0),
                rope_scaling: Some(llama3_rope(32.0, 8192)),
                norm_eps: Some(1e-5),
                ..base
            },
            "qwen3-0.6b" => GptConfig {
                arch: Arch::Qwen3,
                vocab_size: 151_936,
                context_length: 40_960,
                emb_dim: 1024,
                n_heads: 16,
                n_layers: 28,
                n_kv_heads: Some(8),
                head_dim: Some(128),
                hidden_dim: Some(3072),
                rope_base: Some(1_000_000.0),
                norm_eps: Some(1e-6),
                ..base
            },
            "gemma3-270m" => GptConfig {
                arch: Arch::Gemma3,
                vocab_size: 262_144,
                context_length: 32_768,
                emb_dim: 640,
                n_heads: 4,
                n_layers: 18,
                n_kv_heads: Some(1),
                head_dim: Some(256),
                hidden_dim: Some(2048),
                rope_base: Some(1_000_000.0),
                rope_local_base: Some(10_000.0),
                sliding_window: Some(512),
                layer_types: gemma3_layer_types(18, 6),
                norm_eps: Some(1e-6),
                query_pre_attn_scalar: Some(256.0),
                ..base
            },
            _ => return None,
        })
    }

    /// hs: the width of one attention head.
    pub fn head_dim(&self) -> usize {
        self.head_dim.unwrap_or(self.emb_dim / self.n_heads.max(1))
    }

    /// Key/value heads (all of them unless grouped-query attention).
    pub fn kv_heads(&self) -> usize {
        self.n_kv_heads.unwrap_or(self.n_heads)
    }

    /// H: the feed-forward width.
    pub fn ff_dim(&self) -> usize {
        match self.arch {
            Arch::Gpt2 => 4 * self.emb_dim,
            _ => self.hidden_dim.unwrap_or(4 * self.emb_dim),
        }
    }

    /// Model FLOPs of one training token in windows of `ctx` tokens: forward plus backward, the
    /// backward counted as twice the forward (as the book's chapter 4 FLOPs analysis, and PaLM's
    /// model FLOPs utilization), a multiply-add as two. The forward is every weight matrix's
    /// product (the head included, the embeddings' lookups not) and attention's two products per
    /// query head (scores, weighted values) over `ctx` positions, or the layer's window (PaLM's
    /// convention: the causal mask's half is not subtracted). Norms, activations and softmax are
    /// not counted.
    pub fn train_flops_per_token(&self, ctx: usize) -> f64 {
        let c = self.emb_dim as f64;
        let (h, kv, hs) = (
            self.n_heads as f64,
            self.kv_heads() as f64,
            self.head_dim() as f64,
        );
        let ff = self.ff_dim() as f64;
        let projections = c * (h + 2.0 * kv) * hs + h * hs * c;
        let mlp = match self.arch {
            Arch::Gpt2 => 2.0 * c * ff,
            // Gate, up and down.
            _ => 3.0 * c * ff,
        };
        let head = c * self.num_classes.unwrap_or(self.vocab_size) as f64;
        let mut forward = 2.0 * (self.n_layers as f64 * (projections + mlp) + head);
        for i in 0..self.n_layers {
            let t = self.window(i).map_or(ctx, |w| w.min(ctx)) as f64;
            forward += 2.0 * 2.0 * t * h * hs;
        }
        3.0 * forward
    }

    /// The normalization epsilon.
    pub fn eps(&self) -> f64 {
        self.norm_eps.unwrap_or(1e-5)
    }

    /// What layer `i` attends to.
    pub fn layer_type(&self, i: usize) -> LayerType {
        self.layer_types
            .get(i)
            .copied()
            .unwrap_or(LayerType::FullAttention)
    }

    /// The attention window of layer `i` (`None`: every earlier position).
    pub fn window(&self, i: usize) -> Option<usize> {
        match self.layer_type(i) {
            LayerType::SlidingAttention => self.sliding_window,
            LayerType::FullAttention => None,
        }
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
        if self.head_dim.is_none() && !self.emb_dim.is_multiple_of(self.n_heads) {
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
            || self.n_heads > 1 << 12
            || self.head_dim() > 1 << 12
            || self.ff_dim() > 1 << 18
        {
            return bad(format!("sizes beyond any supported model: {self:?}"));
        }
        if self.arch == Arch::Gpt2 {
            let decoder_only = [
                ("n_kv_heads", self.n_kv_heads.is_some()),
                ("head_dim", self.head_dim.is_some()),
                ("hidden_dim", self.hidden_dim.is_some()),
                ("rope_base", self.rope_base.is_some()),
                ("rope_scaling", self.rope_scaling.is_some()),
                ("sliding_window", self.sliding_window.is_some()),
                ("layer_types", !self.layer_types.is_empty()),
            ];
            if let Some((name, _)) = decoder_only.iter().find(|(_, set)| *set) {
                return bad(format!(
                    "{name} is set, but GPT-2 has none (it belongs to the decoder architectures: \
                     set \"arch\" to llama, qwen3 or gemma3)"
                ));
            }
            return Ok(());
        }
        self.validate_decoder()
    }

    fn validate_decoder(&self) -> Result<()> {
        let bad = |m: String| Err(ModelError::Config(m));
        let (nh, nkv, hs) = (self.n_heads, self.kv_heads(), self.head_dim());
        if nkv == 0 || !nh.is_multiple_of(nkv) {
            return bad(format!(
                "n_heads {nh} is not a multiple of n_kv_heads {nkv} (grouped-query attention \
                 shares each key/value head among n_heads / n_kv_heads query heads)"
            ));
        }
        if hs == 0 || !hs.is_multiple_of(2) {
            return bad(format!(
                "head_dim {hs} must be even and positive (RoPE rotates pairs)"
            ));
        }
        if self.ff_dim() == 0 {
            return bad("hidden_dim must be positive".into());
        }
        let positive = |name: &str, v: Option<f64>| -> Result<()> {
            match v {
                Some(x) if !(x.is_finite() && x > 0.0) => Err(ModelError::Config(format!(
                    "{name} {x} must be a positive number"
                ))),
                _ => Ok(()),
            }
        };
        positive("rope_base", self.rope_base)?;
        positive("rope_local_base", self.rope_local_base)?;
        positive("norm_eps", self.norm_eps)?;
        positive("query_pre_attn_scalar", self.query_pre_attn_scalar)?;
        if let Some(r) = &self.rope_scaling {
            positive("rope_scaling.factor", Some(r.factor))?;
            if let Some(l) = &r.llama3 {
                positive("rope_scaling.low_freq_factor", Some(l.low_freq_factor))?;
                positive("rope_scaling.high_freq_factor", Some(l.high_freq_factor))?;
                if l.high_freq_factor <= l.low_freq_factor || l.original_context_length == 0 {
                    return bad(format!(
                        "rope_scaling needs high_freq_factor > low_freq_factor and a positive \
                         original_context_length: {l:?}"
                    ));
                }
            }
        }
        if !self.layer_types.is_empty() && self.layer_types.len() != self.n_layers {
            return bad(format!(
                "layer_types lists {} layers, but n_layers is {}",
                self.layer_types.len(),
                self.n_layers
            ));
        }
        let sliding = self.layer_types.contains(&LayerType::SlidingAttention);
        match self.sliding_window {
            None if sliding => bad("sliding-window layers need sliding_window".into()),
            Some(0) => bad("sliding_window must be positive".into()),
            _ => Ok(()),
        }
    }

    /// Parameter count of one transformer block.
    pub fn block_params(&self) -> usize {
        let c = self.emb_dim;
        if self.arch.is_decoder() {
            let (q, kv) = (
                self.n_heads * self.head_dim(),
                self.kv_heads() * self.head_dim(),
            );
            let bias = if self.qkv_bias { q + 2 * kv } else { 0 };
            let att = c * q + 2 * c * kv + q * c + bias;
            let ff = 3 * c * self.ff_dim();
            let norms = match self.arch {
                Arch::Gemma3 => 4 * c + 2 * self.head_dim(),
                Arch::Qwen3 => 2 * c + 2 * self.head_dim(),
                _ => 2 * c,
            };
            return att + ff + norms;
        }
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
        let (positions, final_norm) = match self.arch {
            Arch::Gpt2 => (self.context_length * c, 2 * c),
            _ => (0, c),
        };
        self.vocab_size * c + positions + self.n_layers * self.block_params() + final_norm + head
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn training_flops_per_token_are_palms_for_gpt2_and_count_grouped_heads_and_windows() {
        // GPT-2 small at 1024 tokens: PaLM's 6N + 12 L H Q T with N the matrices' parameters
        // (the head included): nanoGPT's `estimate_mfu`.
        let cfg = GptConfig::preset("gpt2-small").unwrap();
        let n = 12.0 * (4.0 * 768.0 * 768.0 + 2.0 * 768.0 * 3072.0) + 768.0 * 50257.0;
        let palm = 6.0 * n + 12.0 * 12.0 * 12.0 * 64.0 * 1024.0;
        assert_eq!(cfg.train_flops_per_token(1024), palm);
        // Grouped-query attention: 2 key/value heads of 16 for 4 query heads, SwiGLU of 160.
        let gqa = GptConfig {
            arch: Arch::Llama,
            vocab_size: 100,
            emb_dim: 64,
            n_heads: 4,
            n_kv_heads: Some(2),
            head_dim: Some(16),
            hidden_dim: Some(160),
            n_layers: 1,
            ..Default::default()
        };
        let forward = 2.0 * (64.0 * (4.0 + 4.0) * 16.0 + 64.0 * 16.0 * 4.0 + 3.0 * 64.0 * 160.0)
            + 2.0 * 64.0 * 100.0
            + 4.0 * 10.0 * 64.0;
        assert_eq!(gqa.train_flops_per_token(10), 3.0 * forward);
        // A sliding window caps what a layer attends to.
        let windowed = GptConfig {
            layer_types: vec![LayerType::SlidingAttention],
            sliding_window: Some(4),
            ..gqa.clone()
        };
        let fewer = 3.0 * 4.0 * (10.0 - 4.0) * 64.0;
        assert_eq!(windowed.train_flops_per_token(10), 3.0 * forward - fewer);
    }

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

#[cfg(test)]
mod decoder_tests {
    use super::*;

    #[test]
    fn decoder_parameter_counts_match_the_published_models() {
        // transformers' num_parameters() of the Hub's models (tied heads counted once).
        let count = |n: &str| GptConfig::preset(n).unwrap().param_count();
        assert_eq!(count("qwen3-0.6b"), 596_049_920);
        assert_eq!(count("llama3.2-1b"), 1_235_814_400);
        assert_eq!(count("gemma3-270m"), 268_098_176);
    }

    #[test]
    fn gemma3_layers_alternate_five_sliding_one_global() {
        let t = gemma3_layer_types(12, 6);
        assert_eq!(t[5], LayerType::FullAttention);
        assert_eq!(t[11], LayerType::FullAttention);
        assert_eq!(
            t.iter().filter(|&&l| l == LayerType::FullAttention).count(),
            2
        );
    }

    #[test]
    fn gpt2_files_stay_as_they_were() {
        let c = GptConfig::preset("gpt2-tiny").unwrap();
        let json = serde_json::to_string(&c).unwrap();
        assert!(!json.contains("arch") && !json.contains("rope"), "{json}");
        let back: GptConfig = serde_json::from_str(&json).unwrap();
        assert_eq!(back, c);
    }
}
