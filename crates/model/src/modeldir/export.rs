//! Hugging Face directories written from ours: GPT-2 (`GPT2LMHeadModel`) and the decoders
//! (`LlamaForCausalLM`, `Qwen3ForCausalLM`, `Gemma3ForCausalLM`).
use super::write_json;
use crate::config::GptConfig;
use crate::error::{ModelError, Result};
use crate::weights;
use candle_core::Tensor;
use scratchllm_tokenizer::{self as tk, Tokenizer};
use serde_json::json;
use std::collections::HashMap;
use std::path::Path;

/// Exports a Hugging Face GPT-2 directory that `GPT2LMHeadModel.from_pretrained` loads.
pub fn export_hf(
    dir: &Path,
    config: &GptConfig,
    tensors: &HashMap<String, Tensor>,
    tokenizer: &Tokenizer,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| ModelError::io(dir, e))?;
    if config.arch.is_decoder() {
        return export_hf_decoder(dir, config, tensors, tokenizer);
    }
    weights::write_safetensors(
        &weights::to_hf(tensors, config)?,
        &dir.join("model.safetensors"),
    )?;
    tk::formats::save_hf_tokenizer_json(tokenizer, &dir.join("tokenizer.json"))?;
    tk::formats::save_vocab_merges(tokenizer, dir)?;
    let eos = tokenizer
        .special_id(tk::ENDOFTEXT)
        .unwrap_or(config.vocab_size as u32 - 1);
    let hf = json!({
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "activation_function": "gelu_new",
        "vocab_size": config.vocab_size,
        "n_positions": config.context_length,
        "n_ctx": config.context_length,
        "n_embd": config.emb_dim,
        "n_head": config.n_heads,
        "n_layer": config.n_layers,
        "n_inner": null,
        "layer_norm_epsilon": 1e-5,
        "resid_pdrop": config.drop_rate,
        "embd_pdrop": config.drop_rate,
        "attn_pdrop": config.drop_rate,
        "initializer_range": 0.02,
        "scale_attn_weights": true,
        "tie_word_embeddings": config.tie_embeddings,
        "bos_token_id": eos,
        "eos_token_id": eos,
        "use_cache": true,
    });
    write_json(&dir.join("config.json"), &hf)?;
    write_json(
        &dir.join("generation_config.json"),
        &json!({"bos_token_id": eos, "eos_token_id": eos}),
    )
}

/// Exports a Hugging Face Llama, Qwen3 or Gemma 3 directory (`config.json` in transformers 4's
/// form, `model.safetensors` with Hugging Face's names, the tokenizer's files).
fn export_hf_decoder(
    dir: &Path,
    config: &GptConfig,
    tensors: &HashMap<String, Tensor>,
    tokenizer: &Tokenizer,
) -> Result<()> {
    if config.num_classes.is_some() {
        return Err(ModelError::Config(
            "a classifier has no Hugging Face causal-LM form; export the language model it was \
             tuned from"
                .into(),
        ));
    }
    weights::write_safetensors(
        &crate::hf::to_hf(tensors, config)?,
        &dir.join("model.safetensors"),
    )?;
    tk::formats::save_hf_tokenizer_json(tokenizer, &dir.join("tokenizer.json"))?;
    if let Some(tc) = tk::meta::tokenizer_config(tokenizer) {
        write_json(&dir.join("tokenizer_config.json"), &tc)?;
    }
    let stops = tokenizer.stop_ids();
    let eos = stops.first().copied().unwrap_or(0);
    let mut hf = crate::hf::config_to_hf(config, eos);
    if tensors
        .values()
        .any(|t| t.dtype() == candle_core::DType::BF16)
    {
        hf["torch_dtype"] = json!("bfloat16");
    }
    write_json(&dir.join("config.json"), &hf)?;
    write_json(
        &dir.join("generation_config.json"),
        &json!({"bos_token_id": eos, "eos_token_id": stops}),
    )
}
