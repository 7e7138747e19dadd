//! Hugging Face's Llama, Qwen3 and Gemma 3 directories: `config.json` to our configuration and back,
//! and their tensor names to ours (the book's) and back.
//!
//! `config.json` comes in two forms. The Hub's files (transformers 4) have `rope_theta`,
//! `rope_scaling` and Gemma's `rope_local_base_freq` and `sliding_window_pattern`; transformers 5
//! writes `rope_parameters` (for Gemma 3 one per layer type) and `layer_types`. Both are read; we
//! write the first, which both versions load.
use crate::config::{gemma3_layer_types, Arch, GptConfig, LayerType, Llama3Rope, RopeScaling};
use crate::error::{ModelError, Result};
use candle_core::Tensor;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::Path;

/// The architecture of a Hugging Face `model_type`, or `None` for GPT-2 and what we do not know.
pub fn decoder_arch(model_type: &str) -> Option<Arch> {
    match model_type {
        "llama" | "qwen2" => Some(Arch::Llama),
        "qwen3" => Some(Arch::Qwen3),
        "gemma3_text" | "gemma3" => Some(Arch::Gemma3),
        _ => None,
    }
}

/// The `model_type`s [`decoder_arch`] reads, for error messages.
pub const MODEL_TYPES: &str = "gpt2, llama, qwen2, qwen3, gemma3_text";

fn field<'a>(cfg: &'a Value, key: &str) -> Option<&'a Value> {
    cfg.get(key).filter(|v| !v.is_null())
}

fn usize_of(cfg: &Value, key: &str, path: &Path) -> Result<usize> {
    let v = field(cfg, key).ok_or_else(|| ModelError::file(path, format!("{key} is missing")))?;
    v.as_u64()
        .map(|n| n as usize)
        .ok_or_else(|| ModelError::file(path, format!("{key} is {v}, not a whole number")))
}

fn opt_usize(cfg: &Value, key: &str, path: &Path) -> Result<Option<usize>> {
    match field(cfg, key) {
        None => Ok(None),
        Some(_) => usize_of(cfg, key, path).map(Some),
    }
}

fn opt_f64(cfg: &Value, key: &str, path: &Path) -> Result<Option<f64>> {
    match field(cfg, key) {
        None => Ok(None),
        Some(v) => v
            .as_f64()
            .map(Some)
            .ok_or_else(|| ModelError::file(path, format!("{key} is {v}, not a number"))),
    }
}

/// RoPE parameters (`rope_scaling` or a `rope_parameters` entry): the base, when given, and the
/// scaling, refusing the kinds we do not compute.
fn rope_params(p: &Value, key: &str, path: &Path) -> Result<(Option<f64>, Option<RopeScaling>)> {
    let base = opt_f64(p, "rope_theta", path)?;
    let kind = p
        .get("rope_type")
        .or_else(|| p.get("type"))
        .and_then(Value::as_str)
        .unwrap_or("default");
    let factor = || -> Result<f64> {
        opt_f64(p, "factor", path)?
            .ok_or_else(|| ModelError::file(path, format!("{key}.factor is missing")))
    };
    let scaling = match kind {
        "default" => None,
        "linear" => Some(RopeScaling {
            factor: factor()?,
            llama3: None,
        }),
        "llama3" => Some(RopeScaling {
            factor: factor()?,
            llama3: Some(Llama3Rope {
                low_freq_factor: opt_f64(p, "low_freq_factor", path)?.unwrap_or(1.0),
                high_freq_factor: opt_f64(p, "high_freq_factor", path)?.unwrap_or(4.0),
                original_context_length: usize_of(p, "original_max_position_embeddings", path)?,
            }),
        }),
        other => {
            return Err(ModelError::file(
                path,
                format!(
                    "{key} has rope_type {other:?}; scratchllm computes default, linear and llama3"
                ),
            ))
        }
    };
    Ok((base, scaling))
}

/// Our configuration of a Hugging Face decoder `config.json` (`path` names it in errors).
pub fn config_from_hf(cfg: &Value, arch: Arch, path: &Path) -> Result<GptConfig> {
    for key in ["attn_logit_softcapping", "final_logit_softcapping"] {
        if field(cfg, key).is_some() {
            return Err(ModelError::file(
                path,
                format!("{key} is set; scratchllm computes Gemma 3, which has none (Gemma 2 has)"),
            ));
        }
    }
    if cfg.get("mlp_bias").and_then(Value::as_bool) == Some(true) {
        return Err(ModelError::file(
            path,
            "mlp_bias is true; scratchllm's decoders have no MLP biases",
        ));
    }
    let act = cfg
        .get("hidden_act")
        .or_else(|| cfg.get("hidden_activation"))
        .and_then(Value::as_str);
    let want = if arch == Arch::Gemma3 {
        "gelu_pytorch_tanh"
    } else {
        "silu"
    };
    if let Some(a) = act.filter(|&a| a != want) {
        return Err(ModelError::file(
            path,
            format!("activation {a:?} is not {arch:?}'s {want:?}"),
        ));
    }
    let n_layers = usize_of(cfg, "num_hidden_layers", path)?;
    // RoPE: transformers 4's fields, or transformers 5's rope_parameters (per layer type for Gemma).
    let mut rope_base = opt_f64(cfg, "rope_theta", path)?;
    let mut rope_local_base = opt_f64(cfg, "rope_local_base_freq", path)?;
    let mut rope_scaling = match field(cfg, "rope_scaling") {
        Some(p) => rope_params(p, "rope_scaling", path)?.1,
        None => None,
    };
    if let Some(p) = field(cfg, "rope_parameters") {
        if let Some(full) = field(p, "full_attention") {
            let (b, s) = rope_params(full, "rope_parameters.full_attention", path)?;
            rope_base = b.or(rope_base);
            rope_scaling = s;
            if let Some(local) = field(p, "sliding_attention") {
                let (b, s) = rope_params(local, "rope_parameters.sliding_attention", path)?;
                if s.is_some() {
                    return Err(ModelError::file(
                        path,
                        "rope_parameters.sliding_attention has a scaling; scratchllm scales the \
                         global layers only (as Gemma 3 does)",
                    ));
                }
                rope_local_base = b.or(rope_local_base);
            }
        } else {
            let (b, s) = rope_params(p, "rope_parameters", path)?;
            rope_base = b.or(rope_base);
            rope_scaling = s;
        }
    }
    let sliding_window = opt_usize(cfg, "sliding_window", path)?;
    let layer_types = match field(cfg, "layer_types") {
        Some(Value::Array(types)) => types
            .iter()
            .map(|t| match t.as_str() {
                Some("full_attention") => Ok(LayerType::FullAttention),
                Some("sliding_attention") => Ok(LayerType::SlidingAttention),
                _ => Err(ModelError::file(
                    path,
                    format!("layer_types holds {t}; expected full_attention or sliding_attention"),
                )),
            })
            .collect::<Result<Vec<_>>>()?,
        Some(v) => {
            return Err(ModelError::file(
                path,
                format!("layer_types is {v}, not a list"),
            ))
        }
        None if arch == Arch::Gemma3 => {
            let period = opt_usize(cfg, "sliding_window_pattern", path)?.unwrap_or(6);
            gemma3_layer_types(n_layers, period)
        }
        None => Vec::new(),
    };
    // Qwen2/3 list layer types but slide only when use_sliding_window is set.
    let slides = arch == Arch::Gemma3
        || cfg.get("use_sliding_window").and_then(Value::as_bool) == Some(true);
    let layer_types = if slides && layer_types.contains(&LayerType::SlidingAttention) {
        layer_types
    } else {
        Vec::new()
    };
    let config = GptConfig {
        arch,
        vocab_size: usize_of(cfg, "vocab_size", path)?,
        context_length: usize_of(cfg, "max_position_embeddings", path)?,
        emb_dim: usize_of(cfg, "hidden_size", path)?,
        n_heads: usize_of(cfg, "num_attention_heads", path)?,
        n_layers,
        drop_rate: 0.0,
        qkv_bias: cfg
            .get("attention_bias")
            .and_then(Value::as_bool)
            .unwrap_or(cfg.get("model_type").and_then(Value::as_str) == Some("qwen2")),
        tie_embeddings: cfg
            .get("tie_word_embeddings")
            .and_then(Value::as_bool)
            .unwrap_or(arch == Arch::Gemma3),
        num_classes: None,
        n_kv_heads: opt_usize(cfg, "num_key_value_heads", path)?,
        head_dim: opt_usize(cfg, "head_dim", path)?,
        hidden_dim: Some(usize_of(cfg, "intermediate_size", path)?),
        rope_base: Some(rope_base.unwrap_or(10_000.0)),
        rope_local_base: if arch == Arch::Gemma3 {
            Some(rope_local_base.unwrap_or(10_000.0))
        } else {
            None
        },
        rope_scaling,
        sliding_window: if layer_types.is_empty() {
            None
        } else {
            sliding_window
        },
        layer_types,
        norm_eps: Some(opt_f64(cfg, "rms_norm_eps", path)?.unwrap_or(1e-6)),
        query_pre_attn_scalar: if arch == Arch::Gemma3 {
            opt_f64(cfg, "query_pre_attn_scalar", path)?
        } else {
            None
        },
    };
    config
        .validate()
        .map_err(|e| ModelError::file(path, e.to_string()))?;
    Ok(config)
}

/// A Hugging Face `config.json` for our configuration (transformers 4's form, which 5 also reads).
pub fn config_to_hf(cfg: &GptConfig, eos: u32) -> Value {
    let (arch_name, model_type) = match cfg.arch {
        Arch::Qwen3 => ("Qwen3ForCausalLM", "qwen3"),
        Arch::Gemma3 => ("Gemma3ForCausalLM", "gemma3_text"),
        _ => ("LlamaForCausalLM", "llama"),
    };
    let rope_scaling = match &cfg.rope_scaling {
        None => Value::Null,
        Some(RopeScaling {
            factor,
            llama3: None,
        }) => json!({"rope_type": "linear", "factor": factor}),
        Some(RopeScaling {
            factor,
            llama3: Some(l),
        }) => json!({
            "rope_type": "llama3",
            "factor": factor,
            "low_freq_factor": l.low_freq_factor,
            "high_freq_factor": l.high_freq_factor,
            "original_max_position_embeddings": l.original_context_length,
        }),
    };
    let mut v = json!({
        "architectures": [arch_name],
        "model_type": model_type,
        "vocab_size": cfg.vocab_size,
        "max_position_embeddings": cfg.context_length,
        "hidden_size": cfg.emb_dim,
        "intermediate_size": cfg.ff_dim(),
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.kv_heads(),
        "head_dim": cfg.head_dim(),
        "num_hidden_layers": cfg.n_layers,
        "rms_norm_eps": cfg.eps(),
        "rope_theta": cfg.rope_base.unwrap_or(10_000.0),
        "rope_scaling": rope_scaling,
        "attention_bias": cfg.qkv_bias,
        "attention_dropout": 0.0,
        "tie_word_embeddings": cfg.tie_embeddings,
        "bos_token_id": eos,
        "eos_token_id": eos,
        "torch_dtype": "float32",
        "use_cache": true,
    });
    let obj = v.as_object_mut().expect("a JSON object");
    match cfg.arch {
        Arch::Gemma3 => {
            obj.insert("hidden_activation".into(), json!("gelu_pytorch_tanh"));
            obj.insert(
                "rope_local_base_freq".into(),
                json!(cfg.rope_local_base.unwrap_or(10_000.0)),
            );
            obj.insert(
                "sliding_window".into(),
                json!(cfg.sliding_window.unwrap_or(cfg.context_length)),
            );
            // transformers 5 checks that it is an integer, as the Hub's files write it.
            let qpas = cfg.query_pre_attn_scalar.unwrap_or(cfg.head_dim() as f64);
            let qpas = if qpas.fract() == 0.0 && qpas < 1e15 {
                json!(qpas as u64)
            } else {
                json!(qpas)
            };
            obj.insert("query_pre_attn_scalar".into(), qpas);
            obj.insert("layer_types".into(), json!(layer_type_names(cfg)));
            obj.insert("final_logit_softcapping".into(), Value::Null);
            obj.insert("attn_logit_softcapping".into(), Value::Null);
        }
        _ => {
            obj.insert("hidden_act".into(), json!("silu"));
            obj.insert("mlp_bias".into(), json!(false));
        }
    }
    v
}

fn layer_type_names(cfg: &GptConfig) -> Vec<&'static str> {
    (0..cfg.n_layers)
        .map(|i| match cfg.layer_type(i) {
            LayerType::FullAttention => "full_attention",
            LayerType::SlidingAttention => "sliding_attention",
        })
        .collect()
}

/// (Hugging Face module, ours) inside each block, for `arch`.
fn block_names(arch: Arch) -> Vec<(&'static str, &'static str)> {
    let mut names = vec![
        ("self_attn.q_proj", "att.W_query"),
        ("self_attn.k_proj", "att.W_key"),
        ("self_attn.v_proj", "att.W_value"),
        ("self_attn.o_proj", "att.out_proj"),
        ("mlp.gate_proj", "ff.fc1"),
        ("mlp.up_proj", "ff.fc2"),
        ("mlp.down_proj", "ff.fc3"),
        ("input_layernorm", "norm1"),
    ];
    if arch != Arch::Llama {
        names.push(("self_attn.q_norm", "att.q_norm"));
        names.push(("self_attn.k_norm", "att.k_norm"));
    }
    if arch == Arch::Gemma3 {
        names.push(("post_attention_layernorm", "post_att_norm"));
        names.push(("pre_feedforward_layernorm", "norm2"));
        names.push(("post_feedforward_layernorm", "post_ff_norm"));
    } else {
        names.push(("post_attention_layernorm", "norm2"));
    }
    names
}

/// Whether our module `m` is a norm (its weight is our `scale`).
fn is_norm(ours: &str) -> bool {
    ours.ends_with("norm1") || ours.ends_with("norm2") || ours.ends_with("_norm")
}

/// Every (Hugging Face name, our name) pair of `cfg`'s tensors.
fn name_pairs(cfg: &GptConfig) -> Vec<(String, String)> {
    let mut pairs = vec![
        (
            "model.embed_tokens.weight".to_string(),
            "tok_emb.weight".to_string(),
        ),
        ("model.norm.weight".into(), "final_norm.scale".into()),
    ];
    for i in 0..cfg.n_layers {
        for (theirs, ours) in block_names(cfg.arch) {
            let (h, o) = (
                format!("model.layers.{i}.{theirs}"),
                format!("trf_blocks.{i}.{ours}"),
            );
            if is_norm(ours) {
                pairs.push((format!("{h}.weight"), format!("{o}.scale")));
            } else {
                pairs.push((format!("{h}.weight"), format!("{o}.weight")));
                let qkv = ours == "att.W_query" || ours == "att.W_key" || ours == "att.W_value";
                if qkv && cfg.qkv_bias {
                    pairs.push((format!("{h}.bias"), format!("{o}.bias")));
                }
            }
        }
    }
    if !cfg.tie_embeddings {
        pairs.push(("lm_head.weight".into(), "out_head.weight".into()));
    }
    pairs
}

/// Hugging Face's tensors to ours. A tensor the configuration does not account for is an error (a
/// file for another configuration would otherwise load with parts silently ignored), except
/// `lm_head.weight` equal to a tied embedding and rotary buffers.
pub fn from_hf(
    mut map: HashMap<String, Tensor>,
    cfg: &GptConfig,
    source: &str,
) -> Result<HashMap<String, Tensor>> {
    let mut out = HashMap::new();
    for (theirs, ours) in name_pairs(cfg) {
        let t = map.remove(&theirs).ok_or_else(|| ModelError::Missing {
            name: theirs.clone(),
            hint: format!(
                " in {source} (config.json describes a {} model)",
                cfg.arch.name()
            ),
        })?;
        out.insert(ours, t);
    }
    if cfg.tie_embeddings {
        map.remove("lm_head.weight");
    }
    map.retain(|name, _| !name.ends_with("rotary_emb.inv_freq"));
    if let Some(extra) = map.keys().min() {
        return Err(ModelError::Config(format!(
            "{source} holds {extra} (and {} more tensors) that a {} model of this config.json has \
             no place for",
            map.len() - 1,
            cfg.arch.name()
        )));
    }
    Ok(out)
}

/// Our tensors to Hugging Face's names.
pub fn to_hf(w: &HashMap<String, Tensor>, cfg: &GptConfig) -> Result<HashMap<String, Tensor>> {
    name_pairs(cfg)
        .into_iter()
        .map(|(theirs, ours)| {
            let t = w.get(&ours).ok_or_else(|| ModelError::Missing {
                name: ours.clone(),
                hint: String::new(),
            })?;
            Ok((theirs, t.clone()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_config_forms_give_the_same_gemma() {
        let path = Path::new("config.json");
        let v4 = json!({
            "model_type": "gemma3_text", "vocab_size": 100, "max_position_embeddings": 64,
            "hidden_size": 32, "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 16,
            "num_hidden_layers": 4, "intermediate_size": 48, "rms_norm_eps": 1e-6,
            "rope_theta": 1e6, "rope_local_base_freq": 1e4, "rope_scaling": null,
            "sliding_window": 8, "sliding_window_pattern": 2, "query_pre_attn_scalar": 16,
            "hidden_activation": "gelu_pytorch_tanh"
        });
        let v5 = json!({
            "model_type": "gemma3_text", "vocab_size": 100, "max_position_embeddings": 64,
            "hidden_size": 32, "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 16,
            "num_hidden_layers": 4, "intermediate_size": 48, "rms_norm_eps": 1e-6,
            "rope_parameters": {
                "full_attention": {"rope_type": "default", "rope_theta": 1e6},
                "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}
            },
            "layer_types": ["sliding_attention", "full_attention", "sliding_attention", "full_attention"],
            "sliding_window": 8, "query_pre_attn_scalar": 16,
            "hidden_activation": "gelu_pytorch_tanh"
        });
        let a = config_from_hf(&v4, Arch::Gemma3, path).unwrap();
        let b = config_from_hf(&v5, Arch::Gemma3, path).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.window(0), Some(8));
        assert_eq!(a.window(1), None);
        // Ours written back reads as the same configuration.
        assert_eq!(
            config_from_hf(&config_to_hf(&a, 0), Arch::Gemma3, path).unwrap(),
            a
        );
    }

    #[test]
    fn unknown_rope_kinds_and_missing_fields_are_named() {
        let path = Path::new("x/config.json");
        let mut v = json!({
            "model_type": "llama", "vocab_size": 100, "max_position_embeddings": 64,
            "hidden_size": 32, "num_attention_heads": 2, "num_hidden_layers": 1,
            "intermediate_size": 48, "rope_scaling": {"rope_type": "yarn", "factor": 4.0}
        });
        let e = config_from_hf(&v, Arch::Llama, path)
            .unwrap_err()
            .to_string();
        assert!(e.contains("x/config.json") && e.contains("yarn"), "{e}");
        v["rope_scaling"] = Value::Null;
        v.as_object_mut().unwrap().remove("hidden_size");
        let e = config_from_hf(&v, Arch::Llama, path)
            .unwrap_err()
            .to_string();
        assert!(e.contains("hidden_size is missing"), "{e}");
    }
}
