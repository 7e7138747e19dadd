//! LoRA adapter directories: `adapter.json` (the base model's path, the LoRA settings, the
//! adapted configuration) + `adapter.safetensors` + tokenizer files.
use super::{load, read, tokenizer_in, write_json, Meta, MODEL_FORMAT_VERSION};
use crate::classifier::ClassifierSpec;
use crate::config::GptConfig;
use crate::error::{ModelError, Result};
use crate::lora::LoraSpec;
use crate::prompt::PromptStyle;
use crate::weights::{self, Weights};
use candle_core::{Device, Tensor};
use scratchllm_tokenizer::{self as tk, Tokenizer};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

pub const ADAPTER_FORMAT: &str = "scratchllm-adapter";
pub const ADAPTER_CONFIG: &str = "adapter.json";
pub const ADAPTER_WEIGHTS: &str = "adapter.safetensors";

#[derive(Serialize, Deserialize)]
struct AdapterFile {
    format: String,
    version: u32,
    /// The base model's path (absolute when it could be resolved).
    base: PathBuf,
    lora: LoraSpec,
    /// The adapted model's configuration (a classifier's head replaces the base's).
    model: GptConfig,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    classifier: Option<ClassifierSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    prompt_style: Option<PromptStyle>,
}

/// A base model with its adapters, unmerged.
pub struct AdapterFiles {
    pub config: GptConfig,
    /// Base weights, with the adapter's tensors added (or replacing, for a new head).
    pub weights: Weights,
    pub lora: LoraSpec,
    pub tokenizer: Tokenizer,
    pub classifier: Option<ClassifierSpec>,
    pub prompt_style: Option<PromptStyle>,
    pub base: PathBuf,
}

/// Saves a LoRA adapter: `adapter.json`, `adapter.safetensors` (the `lora_A`/`lora_B` tensors and
/// any tensor that is not the base's, such as a classifier's head) and the tokenizer files.
pub fn save_adapter(
    dir: &Path,
    base: &Path,
    config: &GptConfig,
    lora: &LoraSpec,
    tensors: &HashMap<String, Tensor>,
    tokenizer: &Tokenizer,
    meta: &Meta,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| ModelError::io(dir, e))?;
    weights::write_safetensors(tensors, &dir.join(ADAPTER_WEIGHTS))?;
    tk::formats::save_dir(tokenizer, dir)?;
    let file = AdapterFile {
        format: ADAPTER_FORMAT.into(),
        version: MODEL_FORMAT_VERSION,
        base: std::fs::canonicalize(base).unwrap_or_else(|_| base.to_path_buf()),
        lora: lora.clone(),
        model: config.clone(),
        classifier: meta.classifier.clone(),
        prompt_style: meta.prompt_style,
    };
    write_json(
        &dir.join(ADAPTER_CONFIG),
        &serde_json::to_value(&file).map_err(|e| ModelError::Config(e.to_string()))?,
    )
}

/// Loads an adapter directory and its base model (from `base`, or the path the adapter recorded).
pub fn load_adapter(dir: &Path, base: Option<&Path>, device: &Device) -> Result<AdapterFiles> {
    let path = dir.join(ADAPTER_CONFIG);
    let file: AdapterFile = serde_json::from_str(&read(&path)?)
        .map_err(|e| ModelError::file(&path, format!("invalid adapter configuration: {e}")))?;
    if file.format != ADAPTER_FORMAT || file.version != MODEL_FORMAT_VERSION {
        return Err(ModelError::file(
            &path,
            format!(
                "format {:?} version {}, but this scratchllm reads {ADAPTER_FORMAT:?} version {MODEL_FORMAT_VERSION}",
                file.format, file.version
            ),
        ));
    }
    file.lora.validate()?;
    let base_path = base.map_or(file.base.clone(), Path::to_path_buf);
    if !base_path.exists() {
        return Err(ModelError::file(
            &path,
            format!(
                "its base model {} does not exist; give the base model's path (--base)",
                base_path.display()
            ),
        ));
    }
    let base_files = load(&base_path, device)?;
    let same_body = |c: &GptConfig| GptConfig {
        drop_rate: 0.0,
        tie_embeddings: false,
        num_classes: None,
        ..c.clone()
    };
    if same_body(&base_files.config) != same_body(&file.model) {
        return Err(ModelError::file(
            &path,
            format!(
                "the adapter was made for a model configured {:?}, but the base {} is {:?}",
                file.model,
                base_path.display(),
                base_files.config
            ),
        ));
    }
    let wpath = dir.join(ADAPTER_WEIGHTS);
    let mut tensors = base_files.weights.into_tensors();
    tensors.extend(weights::read_safetensors(&wpath, device)?);
    Ok(AdapterFiles {
        config: file.model,
        weights: Weights::new(
            tensors,
            format!("{} + {}", base_path.display(), wpath.display()),
        ),
        lora: file.lora,
        tokenizer: tokenizer_in(dir)?,
        classifier: file.classifier,
        prompt_style: file.prompt_style,
        base: base_path,
    })
}
