//! Model directories: ours, Hugging Face's, OpenAI's TensorFlow checkpoint, the book's safetensors.
//!
//! Ours is `config.json` (versioned, see [`MODEL_FORMAT`]) + `model.safetensors` (the book's names) +
//! tokenizer files. [`load`] detects the layout of a path; when nothing matches, the error lists
//! what it found.
use crate::classifier::ClassifierSpec;
use crate::config::GptConfig;
use crate::error::{ModelError, Result};
use crate::lora;
use crate::prompt::PromptStyle;
use crate::quantized::InferenceDtype;
use crate::weights::{self, Weights};
use candle_core::{Device, Tensor};
use scratchllm_tokenizer::{self as tk, io::atomic_write, Tokenizer};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

mod adapter;
mod export;
pub mod gguf;

pub use adapter::{
    load_adapter, save_adapter, AdapterFiles, ADAPTER_CONFIG, ADAPTER_FORMAT, ADAPTER_WEIGHTS,
};
pub use export::export_hf;

pub const MODEL_FORMAT: &str = "scratchllm-model";
pub const MODEL_FORMAT_VERSION: u32 = 1;

/// Which layout a model came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    Scratchllm,
    HuggingFace,
    OpenAiTf,
    Book,
    Preset,
    /// A LoRA adapter directory, merged into its base model on load.
    Adapter,
    /// A GGUF file (llama.cpp's format).
    Gguf,
}

/// A model ready to build: configuration, weights under our names, tokenizer.
pub struct ModelFiles {
    pub config: GptConfig,
    pub weights: Weights,
    pub tokenizer: Tokenizer,
    pub layout: Layout,
    /// How a classifier reads text (classifiers only).
    pub classifier: Option<ClassifierSpec>,
    /// The prompt template an instruction-tuned model was trained with.
    pub prompt_style: Option<PromptStyle>,
}

impl ModelFiles {
    /// The weights made ready for inference as `dtype` says. By default (`None`) they stay as the
    /// file holds them: bf16 matrices for a file stored in bf16, quantized ones as quantized, f32
    /// otherwise. `f32`/`bf16` expand quantized matrices; `q8_0`/`q4_0` quantize the linear
    /// layers (see [`Weights::quantized`]) and keep the embedding in its stored dtype.
    pub fn prepare_inference(&mut self, dtype: Option<InferenceDtype>) -> Result<()> {
        let stored = std::mem::replace(&mut self.weights, Weights::new(HashMap::new(), ""));
        let cfg = &self.config;
        self.weights = match dtype {
            None => {
                let bf16 = stored.stores_bf16();
                stored.converted(bf16)?
            }
            Some(InferenceDtype::F32) => stored.dequantized(cfg)?.converted(false)?,
            Some(InferenceDtype::Bf16) => stored.dequantized(cfg)?.converted(true)?,
            Some(InferenceDtype::Quant(q)) => {
                let w = stored.quantized(cfg, q)?;
                let bf16 = w.stores_bf16();
                w.converted(bf16)?
            }
        };
        Ok(())
    }

    /// Every tensor in f32 (what training and the exact paths compute in).
    fn widened(mut self) -> Result<Self> {
        self.prepare_inference(Some(InferenceDtype::F32))?;
        Ok(self)
    }
}

#[derive(Serialize, Deserialize)]
struct OurConfigFile {
    format: String,
    version: u32,
    architecture: String,
    model: GptConfig,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    classifier: Option<ClassifierSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    prompt_style: Option<PromptStyle>,
}

/// Loads a model from a directory or `.safetensors` file of any supported layout, every tensor in
/// f32 (what training and the exact paths compute in; a bf16 file is widened tensor by tensor).
pub fn load(path: &Path, device: &Device) -> Result<ModelFiles> {
    load_with(path, None, device)
}

/// [`load`]; a file that carries no configuration (the book's safetensors) takes `config` when
/// given, instead of one read off its tensor shapes (which cannot tell the number of heads).
pub fn load_with(path: &Path, config: Option<&GptConfig>, device: &Device) -> Result<ModelFiles> {
    load_stored_with(path, config, device)?.widened()
}

/// [`load`], with every tensor in the dtype the file stores it in (a bf16 model stays bf16: it is
/// never copied to f32 as a whole). Inference picks its dtype from here.
pub fn load_stored(path: &Path, device: &Device) -> Result<ModelFiles> {
    load_stored_with(path, None, device)
}

fn load_stored_with(path: &Path, given: Option<&GptConfig>, device: &Device) -> Result<ModelFiles> {
    let files = load_any(path, given, device)?;
    // Every layout's numbers are checked here, so `model info` refuses what `Gpt::new` would.
    files
        .config
        .validate()
        .map_err(|e| ModelError::file(path, e.to_string()))?;
    Ok(files)
}

fn load_any(path: &Path, given: Option<&GptConfig>, device: &Device) -> Result<ModelFiles> {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(ModelError::file(path, "no such file or directory"))
        }
        Err(e) => return Err(ModelError::io(path, e)),
    };
    if meta.is_file() && gguf::is_gguf(path) {
        return gguf::load_gguf(path, device);
    }
    if meta.is_file() {
        return load_book(path, path.parent().unwrap_or(Path::new(".")), given, device);
    }
    if !meta.is_dir() {
        return Err(ModelError::file(
            path,
            format!(
                "is {}, not a regular file or a directory; expected a model directory or a \
                 .safetensors file",
                file_kind(&meta)
            ),
        ));
    }
    let has = |n: &str| path.join(n).is_file();
    if has(ADAPTER_CONFIG) {
        let a = load_adapter(path, None, device)?;
        let (config, tensors) = lora::merge(&a.config, &a.weights.into_tensors(), &a.lora)?;
        return Ok(ModelFiles {
            config,
            weights: Weights::new(tensors, format!("{} merged into its base", path.display())),
            tokenizer: a.tokenizer,
            layout: Layout::Adapter,
            classifier: a.classifier,
            prompt_style: a.prompt_style,
        });
    }
    if has("config.json") {
        let cfg: Value = serde_json::from_str(&read(&path.join("config.json"))?).map_err(|e| {
            ModelError::file(&path.join("config.json"), format!("invalid JSON: {e}"))
        })?;
        if cfg.get("format").and_then(Value::as_str) == Some(MODEL_FORMAT) {
            return load_ours(path, device);
        }
        let model_type = cfg.get("model_type").and_then(Value::as_str);
        if let Some(arch) = model_type.and_then(crate::hf::decoder_arch) {
            return load_hf_decoder(path, &cfg, arch, device);
        }
        let weights_here = has("model.safetensors") || has("model.safetensors.index.json");
        if cfg.get("n_embd").is_some() && weights_here {
            return load_hf(path, &cfg, device);
        }
        if let Some(t) = model_type.filter(|_| weights_here) {
            return Err(ModelError::file(
                &path.join("config.json"),
                format!(
                    "model_type {t:?} is not an architecture scratchllm computes (it reads {})",
                    crate::hf::MODEL_TYPES
                ),
            ));
        }
    }
    if has("hparams.json") {
        return load_openai(path, device);
    }
    if has("model.safetensors") {
        return load_book(&path.join("model.safetensors"), path, given, device);
    }
    let mut found: Vec<String> = std::fs::read_dir(path)
        .map_err(|e| ModelError::io(path, e))?
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect();
    found.sort();
    Err(ModelError::file(
        path,
        format!(
            "no model found: expected config.json + model.safetensors (scratchllm or Hugging Face), hparams.json + model.ckpt.* \
             (OpenAI), or a model.safetensors with the book's names; found: {}",
            if found.is_empty() { "nothing".into() } else { found.join(", ") }
        ),
    ))
}

/// What a path that is neither a file nor a directory is, for error messages.
fn file_kind(meta: &std::fs::Metadata) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        let t = meta.file_type();
        if t.is_char_device() {
            return "a character device";
        }
        if t.is_block_device() {
            return "a block device";
        }
        if t.is_fifo() {
            return "a named pipe";
        }
        if t.is_socket() {
            return "a socket";
        }
    }
    let _ = meta;
    "a special file"
}

fn read(path: &Path) -> Result<String> {
    Ok(tk::io::read_text(path)?)
}

/// The tokenizer in `dir`, or GPT-2's when the directory has none.
fn tokenizer_in(dir: &Path) -> Result<Tokenizer> {
    match tk::formats::load(dir) {
        Ok(t) => Ok(t),
        Err(tk::TokenizerError::Format { message, .. })
            if message.starts_with("no tokenizer found") =>
        {
            Ok(tk::gpt2()?)
        }
        Err(e) => Err(e.into()),
    }
}

fn load_ours(dir: &Path, device: &Device) -> Result<ModelFiles> {
    let path = dir.join("config.json");
    let file: OurConfigFile = serde_json::from_str(&read(&path)?)
        .map_err(|e| ModelError::file(&path, format!("invalid config: {e}")))?;
    if file.version != MODEL_FORMAT_VERSION {
        return Err(ModelError::file(
            &path,
            format!("format version {} but this scratchllm reads version {MODEL_FORMAT_VERSION}; use a matching scratchllm", file.version),
        ));
    }
    if file.architecture != file.model.arch.name() {
        return Err(ModelError::file(
            &path,
            format!(
                "architecture {:?} does not match the model's arch {:?} (scratchllm computes {})",
                file.architecture,
                file.model.arch.name(),
                crate::config::Arch::ALL.map(|a| a.name()).join(", ")
            ),
        ));
    }
    let st = dir.join("model.safetensors");
    let tensors = weights::read_safetensors(&st, device)?;
    Ok(ModelFiles {
        config: file.model,
        weights: Weights::new(tensors, st.display().to_string()),
        tokenizer: tokenizer_in(dir)?,
        layout: Layout::Scratchllm,
        classifier: file.classifier,
        prompt_style: file.prompt_style,
    })
}

fn usize_field(cfg: &Value, key: &str, path: &Path) -> Result<usize> {
    cfg.get(key)
        .and_then(Value::as_u64)
        .map(|v| v as usize)
        .ok_or_else(|| ModelError::file(path, format!("{key} is missing or not a number")))
}

/// GPT-2's `layer_norm_epsilon` is 1e-5, which our LayerNorm uses ([`crate::LayerNorm::EPS`]); a
/// config that asks for anything else (a negative or zero epsilon divides by a negative or zero
/// variance) is refused rather than silently computed with another value.
fn check_layer_norm_epsilon(cfg: &Value, path: &Path) -> Result<()> {
    let Some(v) = cfg.get("layer_norm_epsilon") else {
        return Ok(());
    };
    let want = crate::LayerNorm::EPS;
    match v.as_f64() {
        Some(eps) if eps.is_finite() && eps > 0.0 && ((eps - want) / want).abs() < 1e-6 => Ok(()),
        Some(eps) if !(eps.is_finite() && eps > 0.0) => Err(ModelError::file(
            path,
            format!("layer_norm_epsilon {eps} must be a positive number (GPT-2's is {want:e})"),
        )),
        Some(eps) => Err(ModelError::file(
            path,
            format!(
                "layer_norm_epsilon {eps:e} is not GPT-2's {want:e}, the only one scratchllm's \
                 GPT-2 supports"
            ),
        )),
        None => Err(ModelError::file(
            path,
            format!("layer_norm_epsilon is {v}, not a number"),
        )),
    }
}

fn load_hf(dir: &Path, cfg: &Value, device: &Device) -> Result<ModelFiles> {
    let cpath = dir.join("config.json");
    if let Some(act) = cfg.get("activation_function").and_then(Value::as_str) {
        if act != "gelu_new" && act != "gelu_pytorch_tanh" {
            return Err(ModelError::file(
                &cpath,
                format!("activation_function {act:?} is not GPT-2's tanh GELU"),
            ));
        }
    }
    check_layer_norm_epsilon(cfg, &cpath)?;
    let n_layers = usize_field(cfg, "n_layer", &cpath)?;
    let (tensors, st) = weights::read_hf_weights(dir, device)?;
    let (tensors, tied) = weights::from_hf(tensors, n_layers, &st)?;
    let config = GptConfig {
        vocab_size: usize_field(cfg, "vocab_size", &cpath)?,
        context_length: usize_field(cfg, "n_positions", &cpath)?,
        emb_dim: usize_field(cfg, "n_embd", &cpath)?,
        n_heads: usize_field(cfg, "n_head", &cpath)?,
        n_layers,
        drop_rate: cfg
            .get("resid_pdrop")
            .and_then(Value::as_f64)
            .unwrap_or(0.1) as f32,
        qkv_bias: true,
        tie_embeddings: tied,
        ..Default::default()
    };
    Ok(ModelFiles {
        config,
        weights: Weights::new(tensors, st),
        tokenizer: tokenizer_in(dir)?,
        layout: Layout::HuggingFace,
        classifier: None,
        prompt_style: None,
    })
}

/// A Hugging Face Llama, Qwen2/3 or Gemma 3 directory (`hf.rs` reads its config.json and names).
fn load_hf_decoder(
    dir: &Path,
    cfg: &Value,
    arch: crate::config::Arch,
    device: &Device,
) -> Result<ModelFiles> {
    let config = crate::hf::config_from_hf(cfg, arch, &dir.join("config.json"))?;
    let (tensors, source) = weights::read_hf_weights(dir, device)?;
    let tensors = crate::hf::from_hf(tensors, &config, &source)?;
    Ok(ModelFiles {
        config,
        weights: Weights::new(tensors, source),
        tokenizer: tokenizer_in(dir)?,
        layout: Layout::HuggingFace,
        classifier: None,
        prompt_style: None,
    })
}

fn load_openai(dir: &Path, device: &Device) -> Result<ModelFiles> {
    let hpath = dir.join("hparams.json");
    let h: Value = serde_json::from_str(&read(&hpath)?)
        .map_err(|e| ModelError::file(&hpath, format!("invalid JSON: {e}")))?;
    let n_layers = usize_field(&h, "n_layer", &hpath)?;
    let config = GptConfig {
        vocab_size: usize_field(&h, "n_vocab", &hpath)?,
        context_length: usize_field(&h, "n_ctx", &hpath)?,
        emb_dim: usize_field(&h, "n_embd", &hpath)?,
        n_heads: usize_field(&h, "n_head", &hpath)?,
        n_layers,
        drop_rate: 0.1,
        qkv_bias: true,
        tie_embeddings: true,
        ..Default::default()
    };
    config.validate()?;
    let index = checkpoint_index(dir)?;
    let tensors = weights::from_openai(
        crate::tf::read_checkpoint(&index, device)?,
        n_layers,
        &index.display().to_string(),
    )?;
    Ok(ModelFiles {
        config,
        weights: Weights::new(tensors, index.display().to_string()),
        tokenizer: tokenizer_in(dir)?,
        layout: Layout::OpenAiTf,
        classifier: None,
        prompt_style: None,
    })
}

/// `model.ckpt.index`, or the one the `checkpoint` file names.
fn checkpoint_index(dir: &Path) -> Result<PathBuf> {
    let named = std::fs::read_to_string(dir.join("checkpoint"))
        .ok()
        .and_then(|text| {
            text.lines().find_map(|l| {
                l.strip_prefix("model_checkpoint_path:")
                    .map(|p| p.trim().trim_matches('"').to_string())
            })
        });
    let index = dir.join(format!(
        "{}.index",
        named.as_deref().unwrap_or("model.ckpt")
    ));
    if !index.is_file() {
        return Err(ModelError::file(&index, "the checkpoint index is missing"));
    }
    Ok(index)
}

/// Heads for a width when a file carries no configuration: GPT-2's sizes.
fn heads_for(emb_dim: usize) -> Option<usize> {
    crate::config::PRESETS
        .iter()
        .filter_map(|p| GptConfig::preset(p))
        .find(|c| c.emb_dim == emb_dim)
        .map(|c| c.n_heads)
}

/// The book's safetensors (`torch.save`d `state_dict` converted): the configuration is read off the
/// tensor shapes; the number of heads comes from GPT-2's sizes.
fn load_book(
    file: &Path,
    dir: &Path,
    given: Option<&GptConfig>,
    device: &Device,
) -> Result<ModelFiles> {
    let tensors = weights::read_safetensors(file, device)?;
    if !tensors.contains_key("tok_emb.weight") {
        return Err(not_the_books_layout(file, dir, &tensors));
    }
    if let Some(config) = given {
        // The weights are checked against it when the model is built.
        return Ok(ModelFiles {
            config: config.clone(),
            weights: Weights::new(tensors, file.display().to_string()),
            tokenizer: tokenizer_in(dir)?,
            layout: Layout::Book,
            classifier: None,
            prompt_style: None,
        });
    }
    let shape = |n: &str| {
        tensors
            .get(n)
            .map(|t| t.dims().to_vec())
            .ok_or_else(|| ModelError::Missing {
                name: n.into(),
                hint: format!(" in {} (not the book's layout?)", file.display()),
            })
    };
    let tok = shape("tok_emb.weight")?;
    let pos = shape("pos_emb.weight")?;
    let (&[vocab_size, emb_dim], &[context_length, _]) = (tok.as_slice(), pos.as_slice()) else {
        return Err(ModelError::file(
            file,
            "tok_emb.weight and pos_emb.weight must be matrices",
        ));
    };
    let n_layers = (0..)
        .take_while(|i| tensors.contains_key(&format!("trf_blocks.{i}.norm1.scale")))
        .count();
    let n_heads = heads_for(emb_dim).ok_or_else(|| {
        ModelError::file(
            file,
            format!(
                "holds no configuration, and its width emb_dim {emb_dim} is none of GPT-2's, so its \
                 number of heads cannot be known; give the configuration (--model-config FILE)"
            ),
        )
    })?;
    let config = GptConfig {
        vocab_size,
        context_length,
        emb_dim,
        n_heads,
        n_layers,
        drop_rate: 0.1,
        qkv_bias: tensors.contains_key("trf_blocks.0.att.W_query.bias"),
        tie_embeddings: !tensors.contains_key("out_head.weight"),
        // The book's chapter 6 classifier: a [classes, C] head with a bias.
        num_classes: tensors
            .get("out_head.weight")
            .map(|t| t.dims()[0])
            .filter(|&n| n != vocab_size),
        ..Default::default()
    };
    Ok(ModelFiles {
        config,
        weights: Weights::new(tensors, file.display().to_string()),
        tokenizer: tokenizer_in(dir)?,
        layout: Layout::Book,
        classifier: None,
        prompt_style: None,
    })
}

/// Why a safetensors file without the book's `tok_emb.weight` cannot be loaded: which layouts were
/// looked for, which one the tensor names suggest, and what the directory lacks for it.
fn not_the_books_layout(file: &Path, dir: &Path, tensors: &HashMap<String, Tensor>) -> ModelError {
    let mut names: Vec<&str> = tensors.keys().map(String::as_str).collect();
    names.sort_unstable();
    let hf = names
        .iter()
        .find(|n| n.ends_with("wte.weight") || n.ends_with("c_attn.weight"));
    let what = match hf {
        None if names.is_empty() => "it holds no tensors at all".to_string(),
        Some(name) if dir.join("config.json").is_file() => format!(
            "its tensors are Hugging Face's GPT-2 names ({name}): give the directory {}, which has \
             the config.json they need, rather than the file",
            dir.display()
        ),
        Some(name) => format!(
            "its tensors are Hugging Face's GPT-2 names ({name}), and a Hugging Face model needs its \
             config.json (n_embd, n_head, n_layer, n_positions, vocab_size) beside model.safetensors, \
             but {} has no config.json",
            dir.display()
        ),
        None => format!(
            "its tensors have none of the known names (the book's tok_emb.weight, Hugging Face's \
             wte.weight); its tensors are: {}{}",
            names.iter().take(5).copied().collect::<Vec<_>>().join(", "),
            match names.len() {
                0..=5 => String::new(),
                n => format!(" and {} more", n - 5),
            }
        ),
    };
    ModelError::file(
        file,
        format!(
            "no model layout matches: looked for scratchllm's and Hugging Face's (config.json + \
             model.safetensors), OpenAI's (hparams.json + model.ckpt.*) and the book's \
             (model.safetensors with tok_emb.weight); {what}"
        ),
    )
}

/// [`load_or_preset`], keeping the stored dtypes (see [`load_stored`]).
pub fn load_or_preset_stored(spec: &str, seed: u64, device: &Device) -> Result<ModelFiles> {
    match GptConfig::preset(spec) {
        Some(config) if !Path::new(spec).exists() => Ok(ModelFiles {
            weights: Weights::random(&config, seed, device)?,
            config,
            tokenizer: tk::gpt2()?,
            layout: Layout::Preset,
            classifier: None,
            prompt_style: None,
        }),
        _ => load_stored(neither_path_nor_preset(spec)?, device),
    }
}

/// `spec` as a path, or an error listing the presets when it is neither a path nor one of them
/// (`--model qwen4-tiny` is more likely a mistyped preset than a missing directory).
fn neither_path_nor_preset(spec: &str) -> Result<&Path> {
    let path = Path::new(spec);
    if path.exists() || GptConfig::preset(spec).is_some() {
        return Ok(path);
    }
    Err(ModelError::file(
        path,
        format!(
            "no such file or directory, and not a preset (presets: {})",
            crate::config::PRESETS.join(", ")
        ),
    ))
}

/// A preset with random weights, or a model path.
pub fn load_or_preset(spec: &str, seed: u64, device: &Device) -> Result<ModelFiles> {
    load_or_preset_stored(spec, seed, device)?.widened()
}

/// Saves in our layout: config.json, model.safetensors (book names), tokenizer files.
pub fn save(
    dir: &Path,
    config: &GptConfig,
    tensors: &HashMap<String, Tensor>,
    tokenizer: &Tokenizer,
) -> Result<()> {
    save_with(dir, config, tensors, tokenizer, &Meta::default())
}

/// What a fine-tuned model records beside its weights.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Meta {
    /// How a classifier reads text.
    pub classifier: Option<ClassifierSpec>,
    /// The prompt template of an instruction-tuned model.
    pub prompt_style: Option<PromptStyle>,
}

/// [`save`], with what a fine-tuned model records (a classifier's reading, a prompt style).
pub fn save_with(
    dir: &Path,
    config: &GptConfig,
    tensors: &HashMap<String, Tensor>,
    tokenizer: &Tokenizer,
    meta: &Meta,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| ModelError::io(dir, e))?;
    weights::write_safetensors(tensors, &dir.join("model.safetensors"))?;
    tk::formats::save_dir(tokenizer, dir)?;
    let file = OurConfigFile {
        format: MODEL_FORMAT.into(),
        version: MODEL_FORMAT_VERSION,
        architecture: config.arch.name().into(),
        model: config.clone(),
        classifier: meta.classifier.clone(),
        prompt_style: meta.prompt_style,
    };
    write_json(
        &dir.join("config.json"),
        &serde_json::to_value(&file).map_err(|e| ModelError::Config(e.to_string()))?,
    )
}

fn write_json(path: &Path, v: &Value) -> Result<()> {
    let text =
        serde_json::to_string_pretty(v).map_err(|e| ModelError::file(path, e.to_string()))? + "\n";
    Ok(atomic_write(path, text.as_bytes())?)
}
