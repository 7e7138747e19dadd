//! Low-rank adaptation (LoRA, the book's appendix E): a frozen linear layer `W` gets a trainable
//! `A [in, rank]` and `B [rank, out]`, and computes `x W^T + b + (alpha / rank) * x A B`.
//!
//! Adapters live beside the weights under `NAME.lora_A` / `NAME.lora_B` (NAME a linear layer, e.g.
//! `trf_blocks.3.att.W_query`), so one [`crate::Weights`] carries base and adapters and
//! [`crate::Gpt::with_lora`] builds the adapted model. [`merge`] folds them into plain weights.
use crate::config::GptConfig;
use crate::error::{ModelError, Result};
use candle_core::{Device, Tensor};
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// Suffixes of the adapter tensors.
pub const A: &str = "lora_A";
pub const B: &str = "lora_B";

/// What a linear layer does, in every architecture: LoRA, freezing and quantization name layers by
/// role, not by one architecture's tensor names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    Query,
    Key,
    Value,
    /// The attention's output projection.
    Output,
    /// The gated feed-forward's gate (decoders; GPT-2 has none).
    Gate,
    /// The feed-forward's widening layer (GPT-2's `c_fc`, the decoders' up projection).
    Up,
    /// The feed-forward's narrowing layer.
    Down,
    Head,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Query => "query",
            Role::Key => "key",
            Role::Value => "value",
            Role::Output => "output",
            Role::Gate => "gate",
            Role::Up => "up",
            Role::Down => "down",
            Role::Head => "head",
        }
    }
}

/// Which linear layers get adapters: a group of roles, or one role.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Target {
    /// Query, key, value and output projections of every attention block.
    Attention,
    /// Every layer of every feed-forward block.
    FeedForward,
    /// The output head.
    Head,
    /// One role in every block.
    Query,
    Key,
    Value,
    Output,
    Gate,
    Up,
    Down,
}

impl Target {
    pub const ALL: [Target; 3] = [Target::Attention, Target::FeedForward, Target::Head];

    /// The name `parse` reads (the short one for the groups).
    pub fn name(self) -> &'static str {
        match self {
            Target::Attention => "attention",
            Target::FeedForward => "ff",
            Target::Head => "head",
            Target::Query => "query",
            Target::Key => "key",
            Target::Value => "value",
            Target::Output => "output",
            Target::Gate => "gate",
            Target::Up => "up",
            Target::Down => "down",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "attention" | "att" => Some(Target::Attention),
            "feed-forward" | "ff" => Some(Target::FeedForward),
            "head" => Some(Target::Head),
            "query" | "q" => Some(Target::Query),
            "key" | "k" => Some(Target::Key),
            "value" | "v" => Some(Target::Value),
            "output" | "o" => Some(Target::Output),
            "gate" => Some(Target::Gate),
            "up" => Some(Target::Up),
            "down" => Some(Target::Down),
            _ => None,
        }
    }

    /// Whether layers of `role` are adapted.
    pub fn covers(self, role: Role) -> bool {
        match self {
            Target::Attention => {
                matches!(role, Role::Query | Role::Key | Role::Value | Role::Output)
            }
            Target::FeedForward => matches!(role, Role::Gate | Role::Up | Role::Down),
            Target::Head => role == Role::Head,
            Target::Query => role == Role::Query,
            Target::Key => role == Role::Key,
            Target::Value => role == Role::Value,
            Target::Output => role == Role::Output,
            Target::Gate => role == Role::Gate,
            Target::Up => role == Role::Up,
            Target::Down => role == Role::Down,
        }
    }
}

/// Rank, scaling and placement of the adapters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoraSpec {
    pub rank: usize,
    pub alpha: f64,
    pub targets: Vec<Target>,
}

impl LoraSpec {
    /// The factor on `x A B`.
    pub fn scale(&self) -> f64 {
        self.alpha / self.rank as f64
    }

    pub fn validate(&self) -> Result<()> {
        if self.rank == 0 || !self.alpha.is_finite() || self.targets.is_empty() {
            return Err(ModelError::Config(format!(
                "LoRA needs a rank of at least 1, a finite alpha and at least one target: {self:?}"
            )));
        }
        Ok(())
    }

    /// [`LoraSpec::validate`], and a rank no larger than the input width of every adapted layer of
    /// `cfg`. An update `x A B` with `A [in, rank]` has rank at most `in`: a larger rank only adds
    /// parameters (`--lora-rank 100000` on a 64-wide model trained 70 times the model's own
    /// weights). A rank above a layer's *output* width is as useless but tolerated, because the
    /// book's appendix E adapts its 2-class head with rank 16 (it costs `rank * (in + out)`
    /// parameters, a few thousand). For GPT-2 the limit is the model's width, `emb_dim`.
    /// Trainers call this before any work starts; [`init`] calls it too.
    pub fn validate_for(&self, cfg: &GptConfig) -> Result<()> {
        self.validate()?;
        let layers = linear_layers(cfg);
        if let Some(t) = self
            .targets
            .iter()
            .find(|t| !layers.iter().any(|l| t.covers(l.3)))
        {
            let mut roles: Vec<&str> = layers.iter().map(|l| l.3.name()).collect();
            roles.dedup();
            roles.sort_unstable();
            roles.dedup();
            return Err(ModelError::Config(format!(
                "LoRA target {} names no layer of this {} model (its layers' roles: {})",
                t.name(),
                cfg.arch.name(),
                roles.join(", ")
            )));
        }
        let narrow = self.adapted(cfg).find(|&(_, _, in_dim)| self.rank > in_dim);
        if let Some((name, out_dim, in_dim)) = narrow {
            return Err(ModelError::Config(format!(
                "LoRA rank {} is larger than layer {name}'s input width {in_dim} ({out_dim} \
                 outputs x {in_dim} inputs): a rank above it adds parameters, not capacity; use a \
                 rank of at most {}",
                self.rank,
                self.max_rank(cfg).unwrap_or(1),
            )));
        }
        Ok(())
    }

    /// The largest rank [`LoraSpec::validate_for`] accepts for `cfg` (`None`: nothing adapted).
    pub fn max_rank(&self, cfg: &GptConfig) -> Option<usize> {
        self.adapted(cfg).map(|(_, _, in_dim)| in_dim).min()
    }

    /// The adapted layers of `cfg`: (name, out, in).
    fn adapted(&self, cfg: &GptConfig) -> impl Iterator<Item = (String, usize, usize)> + '_ {
        linear_layers(cfg)
            .into_iter()
            .filter(|(_, _, _, role)| self.adapts(*role))
            .map(|(name, out_dim, in_dim, _)| (name, out_dim, in_dim))
    }

    /// Whether layers of `role` get adapters.
    pub fn adapts(&self, role: Role) -> bool {
        self.targets.iter().any(|t| t.covers(role))
    }
}

/// The linear layers of a model: (name, out, in, role).
pub fn linear_layers(cfg: &GptConfig) -> Vec<(String, usize, usize, Role)> {
    let c = cfg.emb_dim;
    let mut out = Vec::new();
    for i in 0..cfg.n_layers {
        let p = format!("trf_blocks.{i}");
        if cfg.arch.is_decoder() {
            let (q, kv, h) = (
                cfg.n_heads * cfg.head_dim(),
                cfg.kv_heads() * cfg.head_dim(),
                cfg.ff_dim(),
            );
            out.push((format!("{p}.att.W_query"), q, c, Role::Query));
            out.push((format!("{p}.att.W_key"), kv, c, Role::Key));
            out.push((format!("{p}.att.W_value"), kv, c, Role::Value));
            out.push((format!("{p}.att.out_proj"), c, q, Role::Output));
            out.push((format!("{p}.ff.fc1"), h, c, Role::Gate));
            out.push((format!("{p}.ff.fc2"), h, c, Role::Up));
            out.push((format!("{p}.ff.fc3"), c, h, Role::Down));
            continue;
        }
        for (m, role) in [
            ("W_query", Role::Query),
            ("W_key", Role::Key),
            ("W_value", Role::Value),
            ("out_proj", Role::Output),
        ] {
            out.push((format!("{p}.att.{m}"), c, c, role));
        }
        out.push((format!("{p}.ff.layers.0"), 4 * c, c, Role::Up));
        out.push((format!("{p}.ff.layers.2"), c, 4 * c, Role::Down));
    }
    out.push(("out_head".into(), cfg.out_dim(), c, Role::Head));
    out
}

/// Whether `name` is an adapter tensor.
pub fn is_adapter(name: &str) -> bool {
    name.ends_with(&format!(".{A}")) || name.ends_with(&format!(".{B}"))
}

/// Fresh adapters for `spec`'s targets: A kaiming-uniform as PyTorch's
/// `kaiming_uniform_(A, a=sqrt(5))` on an `[in, rank]` tensor (its fan-in is `rank`, so
/// U(-1/sqrt(rank), 1/sqrt(rank))), B zeros — the adapted model starts equal to the base.
pub fn init(
    cfg: &GptConfig,
    spec: &LoraSpec,
    seed: u64,
    device: &Device,
) -> Result<HashMap<String, Tensor>> {
    spec.validate_for(cfg)?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let bound = 1.0 / (spec.rank as f32).sqrt();
    let mut out = HashMap::new();
    for (name, out_dim, in_dim, role) in linear_layers(cfg) {
        if !spec.adapts(role) {
            continue;
        }
        let a: Vec<f32> = (0..in_dim * spec.rank)
            .map(|_| rng.random_range(-bound..bound))
            .collect();
        out.insert(
            format!("{name}.{A}"),
            Tensor::from_vec(a, (in_dim, spec.rank), device)?,
        );
        out.insert(
            format!("{name}.{B}"),
            Tensor::zeros((spec.rank, out_dim), candle_core::DType::F32, device)?,
        );
    }
    Ok(out)
}

/// Folds the adapters into the weights: `W += (alpha / rank) * (A B)^T`. A tied output head with
/// an adapter becomes a separate head (the embedding keeps its values). Returns the plain
/// configuration and weights.
pub fn merge(
    cfg: &GptConfig,
    tensors: &HashMap<String, Tensor>,
    spec: &LoraSpec,
) -> Result<(GptConfig, HashMap<String, Tensor>)> {
    let mut cfg = cfg.clone();
    let mut out: HashMap<String, Tensor> = tensors
        .iter()
        .filter(|(n, _)| !is_adapter(n))
        .map(|(n, t)| (n.clone(), t.clone()))
        .collect();
    for (name, _, _, _) in linear_layers(&cfg.clone()) {
        let (Some(a), Some(b)) = (
            tensors.get(&format!("{name}.{A}")),
            tensors.get(&format!("{name}.{B}")),
        ) else {
            continue;
        };
        let delta = (a.matmul(b)?.t()? * spec.scale())?; // [out, in]
        let key = format!("{name}.weight");
        let base = if name == "out_head" && cfg.tie_embeddings && cfg.num_classes.is_none() {
            cfg.tie_embeddings = false;
            out.get("tok_emb.weight")
        } else {
            out.get(&key)
        }
        .ok_or_else(|| ModelError::Missing {
            name: key.clone(),
            hint: " (the base weight of a LoRA adapter)".into(),
        })?;
        if base.dims() != delta.dims() {
            return Err(ModelError::Shape {
                name: format!("{name}.{A} x {name}.{B}"),
                expected: base.dims().to_vec(),
                found: delta.dims().to_vec(),
            });
        }
        let merged = (base + delta)?;
        out.insert(key, merged);
    }
    Ok((cfg, out))
}

/// Parameters in the adapters of `tensors`.
pub fn adapter_params(tensors: &HashMap<String, Tensor>) -> usize {
    tensors
        .iter()
        .filter(|(n, _)| is_adapter(n))
        .map(|(_, t)| t.elem_count())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adapter_count_matches_the_book() {
        // Appendix E: gpt2-small with a 2-class head, rank 16, every linear layer: 2,666,528.
        let cfg = GptConfig {
            num_classes: Some(2),
            tie_embeddings: false,
            ..GptConfig::preset("gpt2-small").unwrap()
        };
        let spec = LoraSpec {
            rank: 16,
            alpha: 16.0,
            targets: Target::ALL.to_vec(),
        };
        let n = adapter_params(&init(&cfg, &spec, 0, &Device::Cpu).unwrap());
        assert_eq!(n, 2_666_528);
        // Rank 16 exceeds the head's 2 outputs but not its 768 inputs: the book's setting stands.
        assert_eq!(spec.max_rank(&cfg), Some(768));
    }
}
