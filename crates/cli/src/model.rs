//! `model info`, `generate` and `convert`.
use crate::out::{self, outln};
use anyhow::{bail, Context, Result};
use candle_core::Device;
use clap::{Args, Subcommand, ValueEnum};
use scratchllm_model::quant::QType;
use scratchllm_model::{
    generate::GenerateOptions, modeldir, Gpt, GptConfig, InferenceDtype, ModelFiles, Weights,
};
use scratchllm_tokenizer::{SpecialMode, StreamDecoder};
use std::path::PathBuf;

/// How a model's weight matrices are stored for inference.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum WeightDtype {
    F32,
    /// bf16 matrices (linear layers, embeddings); norms, biases and activations stay f32.
    Bf16,
}

/// How inference commands hold the weight matrices (`--dtype`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum InferDtype {
    F32,
    Bf16,
    /// 8-bit blocks of 32 with an f16 scale (GGUF's Q8_0), for the linear layers.
    #[value(name = "q8_0")]
    Q8_0,
    /// 4-bit blocks of 32 with an f16 scale (GGUF's Q4_0), for the linear layers.
    #[value(name = "q4_0")]
    Q4_0,
}

impl InferDtype {
    pub fn model(self) -> InferenceDtype {
        match self {
            InferDtype::F32 => InferenceDtype::F32,
            InferDtype::Bf16 => InferenceDtype::Bf16,
            InferDtype::Q8_0 => InferenceDtype::Quant(QType::Q8_0),
            InferDtype::Q4_0 => InferenceDtype::Quant(QType::Q4_0),
        }
    }
}

/// The help of inference commands' `--dtype`.
pub const DTYPE_HELP: &str = "Weight matrices in f32, bf16, or quantized to q8_0 or q4_0 (GGUF's \
    block formats, for the linear layers; the embedding keeps its dtype) [default: as the file \
    holds them: bf16 for a model stored in bf16, the quantized types of a GGUF file as they are, \
    f32 otherwise]; norms, biases and activations are f32 either way. f32 from a bf16 file \
    computes with the exact stored values widened (what transformers does in float32).";

/// The model of `files` with its matrices held as `dtype` (default: as the file stores them, see
/// [`DTYPE_HELP`]); `files` then holds those weights, so no second copy stays.
pub fn build_model(files: &mut ModelFiles, dtype: Option<InferDtype>) -> Result<Gpt> {
    files.prepare_inference(dtype.map(InferDtype::model))?;
    Ok(Gpt::new(&files.config, &files.weights)?)
}

/// Loads a model directory/file of any layout (in its stored dtypes), or a preset with random weights.
pub fn load_model(spec: &str, seed: u64) -> Result<ModelFiles> {
    modeldir::load_or_preset_stored(spec, seed, &Device::Cpu)
        .with_context(|| format!("loading model {spec:?}"))
}

#[derive(Subcommand)]
pub enum ModelCommand {
    /// Parameters and memory of a preset or a model directory.
    Info(InfoArgs),
    /// Fold a LoRA adapter into its base model: a plain model directory.
    MergeLora(MergeLoraArgs),
}

#[derive(Args)]
pub struct MergeLoraArgs {
    /// The adapter directory (adapter.json + adapter.safetensors).
    #[arg(long)]
    adapter: PathBuf,
    /// The base model [default: the path the adapter recorded].
    #[arg(long)]
    base: Option<PathBuf>,
    /// Output model directory.
    #[arg(long)]
    out: PathBuf,
}

fn merge_lora(a: MergeLoraArgs) -> Result<()> {
    let files = modeldir::load_adapter(&a.adapter, a.base.as_deref(), &Device::Cpu)
        .with_context(|| format!("loading adapter {}", a.adapter.display()))?;
    let n = scratchllm_model::lora::adapter_params(files.weights.tensors());
    let (cfg, tensors) =
        scratchllm_model::lora::merge(&files.config, files.weights.tensors(), &files.lora)?;
    Gpt::new(&cfg, &Weights::new(tensors.clone(), "merged weights"))?;
    modeldir::save_with(
        &a.out,
        &cfg,
        &tensors,
        &files.tokenizer,
        &modeldir::Meta {
            classifier: files.classifier.clone(),
            prompt_style: files.prompt_style,
        },
    )?;
    eprintln!(
        "merged {n} adapter parameters (rank {}, alpha {}) into {}; wrote {}",
        files.lora.rank,
        files.lora.alpha,
        files.base.display(),
        a.out.display()
    );
    Ok(())
}

#[derive(Args)]
pub struct InfoArgs {
    /// A preset (gpt2-tiny, gpt2-small, gpt2-medium, gpt2-large, gpt2-xl) or a model path.
    #[arg(long)]
    model: String,
}

pub fn model(c: ModelCommand) -> Result<()> {
    match c {
        ModelCommand::Info(a) => info(a),
        ModelCommand::MergeLora(a) => merge_lora(a),
    }
}

fn gib(bytes: usize) -> String {
    format!("{:.2} GiB", bytes as f64 / (1u64 << 30) as f64)
}

fn info(a: InfoArgs) -> Result<()> {
    // The block formats a file's matrices are held in, and their bytes.
    let mut quantized = String::new();
    let (cfg, layout) = match GptConfig::preset(&a.model) {
        Some(cfg) if !std::path::Path::new(&a.model).exists() => (cfg, "preset".to_string()),
        _ => {
            let files = load_model(&a.model, 0)?;
            // A tied head and its embedding are one matrix.
            let mut held: Vec<&std::sync::Arc<scratchllm_model::quant::QMatrix>> = Vec::new();
            for (_, q) in files.weights.quant_matrices() {
                if !held.iter().any(|h| std::sync::Arc::ptr_eq(h, q)) {
                    held.push(q);
                }
            }
            if !held.is_empty() {
                let mut kinds: Vec<(&str, usize)> = Vec::new();
                for q in &held {
                    match kinds.iter_mut().find(|(t, _)| *t == q.qtype().name()) {
                        Some((_, c)) => *c += 1,
                        None => kinds.push((q.qtype().name(), 1)),
                    }
                }
                let kinds: Vec<String> = kinds.iter().map(|(t, c)| format!("{c} {t}")).collect();
                let bytes: usize = held.iter().map(|q| q.held_bytes()).sum();
                let mib = bytes as f64 / (1u64 << 20) as f64;
                quantized = format!("{} matrices, {mib:.1} MiB", kinds.join(", "));
            }
            (files.config, format!("{:?}", files.layout))
        }
    };
    let n = cfg.param_count();
    let head = cfg.vocab_size * cfg.emb_dim;
    outln!("model:           {} ({layout})", a.model)?;
    outln!("architecture:    {}", cfg.arch.name())?;
    outln!(
        "layers {} | heads {} | emb_dim {} | context {} | vocab {} | qkv_bias {} | dropout {}",
        cfg.n_layers,
        cfg.n_heads,
        cfg.emb_dim,
        cfg.context_length,
        cfg.vocab_size,
        cfg.qkv_bias,
        cfg.drop_rate
    )?;
    if cfg.arch.is_decoder() {
        let sliding = (0..cfg.n_layers)
            .filter(|&i| cfg.window(i).is_some())
            .count();
        outln!(
            "kv heads {} | head_dim {} | hidden_dim {} | rope base {} | norm eps {:e}{}",
            cfg.kv_heads(),
            cfg.head_dim(),
            cfg.ff_dim(),
            cfg.rope_base.unwrap_or(10_000.0),
            cfg.eps(),
            match cfg.sliding_window {
                Some(w) if sliding > 0 => format!(
                    " | {sliding} of {} layers slide over {w} positions",
                    cfg.n_layers
                ),
                _ => String::new(),
            }
        )?;
    }
    if cfg.tie_embeddings {
        outln!("parameters:      {n} (output head tied to the token embedding)")?;
        outln!("with a separate head: {}", n + head)?;
    } else {
        outln!("parameters:      {n} (separate output head)")?;
        outln!("without the head (weight tying): {}", n - head)?;
    }
    if layout == "preset" && !cfg.arch.is_decoder() {
        // The book's GPT_CONFIG (chapter 4) has no query/key/value biases.
        let book = GptConfig {
            qkv_bias: false,
            tie_embeddings: false,
            ..cfg.clone()
        };
        let total = book.param_count();
        outln!(
            "as the book configures it (qkv_bias false): {total} total, {} without the output head",
            total - head
        )?;
    }
    outln!("memory fp32:     {}", gib(n * 4))?;
    outln!("memory bf16:     {}", gib(n * 2))?;
    if !quantized.is_empty() {
        outln!("quantized:       {quantized}")?;
    }
    // Keys and values of every layer, f32, for one sequence (a sliding layer keeps its window).
    let kv_width = 2 * cfg.kv_heads() * cfg.head_dim() * 4;
    let per_token = cfg.n_layers * kv_width;
    let full: usize = (0..cfg.n_layers)
        .map(|i| {
            cfg.window(i)
                .unwrap_or(cfg.context_length)
                .min(cfg.context_length)
                * kv_width
        })
        .sum();
    outln!(
        "KV cache (f32): {} KiB per token, {} at the full context of {} tokens",
        per_token / 1024,
        gib(full),
        cfg.context_length
    )?;
    Ok(())
}

#[derive(Clone, Copy, ValueEnum, PartialEq)]
pub enum GenFormat {
    /// The generated text, streamed as it is produced.
    Text,
    /// Only the new token ids, separated by spaces.
    Ids,
}

#[derive(Args)]
pub struct GenerateArgs {
    /// A model directory (any layout) or a preset (random weights).
    #[arg(long)]
    model: String,
    /// The prompt text (special tokens such as <|endoftext|> are allowed).
    #[arg(long)]
    prompt: String,
    #[arg(long, default_value_t = 50)]
    max_new_tokens: usize,
    /// Sample with this temperature (> 0); without it decoding is greedy.
    #[arg(long)]
    temperature: Option<f32>,
    /// Sample only among the k most likely tokens.
    #[arg(long)]
    top_k: Option<usize>,
    /// Sample only from the smallest set of tokens whose probability reaches p, in (0, 1].
    #[arg(long)]
    top_p: Option<f32>,
    /// Random seed for sampling (and for a preset's random weights); same seed, same text.
    #[arg(long, default_value_t = 123)]
    seed: u64,
    /// Greedy decoding (the default when no temperature is given).
    #[arg(long, conflicts_with_all = ["temperature", "top_k", "top_p"])]
    greedy: bool,
    /// Recompute the whole context every step instead of caching keys and values.
    #[arg(long)]
    no_kv_cache: bool,
    /// Keep going past <|endoftext|>.
    #[arg(long)]
    ignore_eos: bool,
    #[arg(long, value_enum, default_value = "text")]
    format: GenFormat,
    /// How the weight matrices are stored: f32, or bf16 (half the memory, faster generation).
    #[arg(long, value_enum, help = DTYPE_HELP)]
    dtype: Option<InferDtype>,
}

pub fn generate(a: GenerateArgs) -> Result<()> {
    let mut files = load_model(&a.model, a.seed)?;
    if files.config.num_classes.is_some() {
        bail!(
            "{} is a classifier; it labels text (`scratchllm classify`) rather than generating it",
            a.model
        );
    }
    let model = build_model(&mut files, a.dtype)?;
    let tok = &files.tokenizer;
    let prompt = tok.encode(&a.prompt, SpecialMode::Allow)?;
    let ctx = files.config.context_length;
    if prompt.len() > ctx {
        eprintln!(
            "note: the prompt has {} tokens; only its last {ctx} fit the context",
            prompt.len()
        );
    }
    let opts = GenerateOptions {
        max_new_tokens: a.max_new_tokens,
        temperature: if a.greedy { None } else { a.temperature },
        top_k: a.top_k,
        top_p: a.top_p,
        seed: a.seed,
        stop_id: if a.ignore_eos {
            None
        } else {
            tok.end_of_text().map(|r| r.id)
        },
        use_cache: !a.no_kv_cache,
    };
    opts.validate()?;
    let mut decoder = StreamDecoder::new(tok);
    // A failed write (a closed pipe, a full disk) stops the generation; it is returned as itself
    // once the library's loop has ended, not disguised as a generation error.
    let mut write_error = None;
    let ids = scratchllm_model::generate(&model, &prompt, &opts, &mut |id| {
        if a.format == GenFormat::Text {
            let text = decoder.push(id)?;
            if let Err(e) = out::text(&text) {
                write_error = Some(e);
                return Ok(false);
            }
        }
        Ok(true)
    })?;
    if let Some(e) = write_error {
        return Err(e.into());
    }
    match a.format {
        GenFormat::Text => outln!("{}", decoder.finish())?,
        GenFormat::Ids => outln!(
            "{}",
            ids.iter().map(u32::to_string).collect::<Vec<_>>().join(" ")
        )?,
    }
    Ok(())
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Target {
    /// Hugging Face directory (transformers' GPT2LMHeadModel, LlamaForCausalLM, Qwen3ForCausalLM or
    /// Gemma3ForCausalLM loads it).
    Hf,
    /// Our directory: config.json + model.safetensors (the book's names) + tokenizer files.
    Scratchllm,
    /// Only model.safetensors with the book's parameter names.
    Book,
    /// One GGUF file (llama.cpp, Ollama) with the tokenizer and chat template; --out is the file.
    Gguf,
}

/// How `convert --to gguf` stores the weights.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum GgufQuantArg {
    F32,
    F16,
    /// The embedding and linear layers in Q8_0 blocks; vectors f32.
    #[value(name = "q8_0")]
    Q8_0,
    /// The embedding and linear layers in Q4_0 blocks; vectors f32.
    #[value(name = "q4_0")]
    Q4_0,
}

#[derive(Args)]
pub struct ConvertArgs {
    /// Input model (any layout, a GGUF file included).
    #[arg(long)]
    model: String,
    #[arg(long, value_enum)]
    to: Target,
    /// Output directory (a file for --to gguf).
    #[arg(long)]
    out: PathBuf,
    /// For --to gguf: how the weights are stored [default: as the input holds them: f32, bf16,
    /// or its quantized types].
    #[arg(long, value_enum)]
    quant: Option<GgufQuantArg>,
}

pub fn convert(a: ConvertArgs) -> Result<()> {
    if a.out.as_os_str().is_empty() {
        bail!("empty output path");
    }
    if a.quant.is_some() && a.to != Target::Gguf {
        bail!("--quant applies to --to gguf only");
    }
    let files = load_model(&a.model, 0)?;
    if GptConfig::preset(&a.model).is_some() && !std::path::Path::new(&a.model).exists() {
        eprintln!(
            "note: {} is a preset; converting its random weights",
            a.model
        );
    }
    // Build once so that a shape problem is reported before anything is written.
    Gpt::new(&files.config, &files.weights)?;
    if a.to == Target::Gguf {
        use modeldir::gguf::GgufQuant;
        let quant = match a.quant {
            None => GgufQuant::Stored,
            Some(GgufQuantArg::F32) => GgufQuant::F32,
            Some(GgufQuantArg::F16) => GgufQuant::F16,
            Some(GgufQuantArg::Q8_0) => GgufQuant::Blocks(QType::Q8_0),
            Some(GgufQuantArg::Q4_0) => GgufQuant::Blocks(QType::Q4_0),
        };
        modeldir::gguf::write_gguf(
            &a.out,
            &files.config,
            &files.weights,
            &files.tokenizer,
            quant,
        )?;
        eprintln!("wrote {}", a.out.display());
        return Ok(());
    }
    let weights = files.weights.dequantized(&files.config)?;
    let tensors = weights.tensors();
    match a.to {
        Target::Hf if files.config.num_classes.is_some() => {
            bail!("exporting a classifier to Hugging Face's layout is not supported (only language models)")
        }
        Target::Hf => modeldir::export_hf(&a.out, &files.config, tensors, &files.tokenizer)?,
        Target::Scratchllm => modeldir::save_with(
            &a.out,
            &files.config,
            tensors,
            &files.tokenizer,
            &modeldir::Meta {
                classifier: files.classifier.clone(),
                prompt_style: files.prompt_style,
            },
        )?,
        Target::Book | Target::Gguf => {
            std::fs::create_dir_all(&a.out)?;
            scratchllm_model::weights::write_safetensors(
                tensors,
                &a.out.join("model.safetensors"),
            )?;
        }
    }
    eprintln!("wrote {}", a.out.display());
    Ok(())
}
