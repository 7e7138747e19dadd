//! `pretrain`: flags to a [`PretrainConfig`]; progress, Ctrl-C and the closing report are
//! [`crate::terminal`]'s.
use crate::terminal::{report, Terminal};
use crate::train_args::{read_model_config, OptimArgs, OutArgs, RunArgs};
use anyhow::{bail, Context, Result};
use clap::Args;
use scratchllm_model::GptConfig;
use scratchllm_train::{pretrain, PretrainConfig};
use std::path::PathBuf;

/// Defaults: the book's chapter 5 run (gpt2-small without qkv bias, batch 2, 10 epochs, lr 4e-4,
/// weight decay 0.1, evaluation every 5 steps over 5 batches).
#[derive(Args)]
#[command(
    mut_arg("epochs", |a| a.default_value("10")),
    mut_arg("batch_size", |a| a.default_value("2")),
    mut_arg("lr", |a| a.default_value("4e-4")),
    mut_arg("checkpoint_every", |a| a.default_value("500")),
    mut_arg("keep_checkpoints", |a| a.default_value("3")),
)]
pub struct PretrainArgs {
    /// Text files or directories of .txt files (documents are joined with <|endoftext|>).
    #[arg(long, num_args = 1.., required_unless_present = "resume", conflicts_with = "resume")]
    data: Vec<PathBuf>,
    #[command(flatten)]
    out: OutArgs,
    /// A preset: gpt2-tiny ... gpt2-xl (trained without qkv bias and with a separate head, as the
    /// book), llama3-tiny, qwen3-tiny, gemma3-tiny, llama3.2-1b, qwen3-0.6b, gemma3-270m (as published).
    #[arg(long, default_value = "gpt2-small")]
    model: String,
    /// The tokenizer of a model trained from scratch (a file or directory `tokenize` reads, e.g. one
    /// `tokenizer train` made) [default: GPT-2's]; the model's vocabulary takes its size.
    #[arg(long, value_name = "TOKENIZER", conflicts_with = "init")]
    tokenizer: Option<PathBuf>,
    /// A JSON model configuration (the book's GPT_CONFIG keys; a {"config": {...}} file works too).
    #[arg(long, value_name = "FILE")]
    model_config: Option<PathBuf>,
    /// Start from these weights (any layout `generate` reads) instead of random ones.
    #[arg(long, value_name = "WEIGHTS")]
    init: Option<PathBuf>,
    /// Tokens per training window: the model's context length, or with --init the window
    /// trained on (at most the model's context) [default: the model's context length].
    #[arg(long)]
    context_length: Option<usize>,
    /// Window step in tokens [default: the context length].
    #[arg(long)]
    stride: Option<usize>,
    #[arg(long, default_value_t = 0.9)]
    train_fraction: f64,
    /// Keep the windows in corpus order (they are shuffled each epoch with --seed by default).
    #[arg(long)]
    no_shuffle: bool,
    /// Greedy continuation shown after each evaluation ("" for none).
    #[arg(long, default_value = "Every effort moves you")]
    sample_prompt: String,
    #[arg(long, default_value_t = 50)]
    sample_tokens: usize,
    #[command(flatten)]
    optim: OptimArgs,
    #[command(flatten)]
    run: RunArgs,
}

fn model_config(a: &PretrainArgs) -> Result<GptConfig> {
    let mut cfg = if let Some(path) = &a.model_config {
        read_model_config(path)?
    } else if let Some(init) = &a.init {
        scratchllm_model::modeldir::load(init, &candle_core::Device::Cpu)?.config
    } else {
        let preset = GptConfig::preset(&a.model).with_context(|| {
            format!(
                "unknown preset {:?} (presets: {})",
                a.model,
                scratchllm_model::PRESETS.join(", ")
            )
        })?;
        if preset.arch.is_decoder() {
            preset
        } else {
            // The book trains GPT-2 from scratch without query/key/value biases and with a
            // separate head.
            GptConfig {
                qkv_bias: false,
                tie_embeddings: false,
                ..preset
            }
        }
    };
    if let Some(path) = &a.tokenizer {
        let tok = scratchllm_tokenizer::load(&path.display().to_string())
            .with_context(|| format!("loading tokenizer {}", path.display()))?;
        if a.model_config.is_some() && tok.vocab_size() > cfg.vocab_size {
            bail!(
                "the tokenizer {} has {} tokens, more than the configuration's vocab_size {}",
                path.display(),
                tok.vocab_size(),
                cfg.vocab_size
            );
        }
        if a.model_config.is_none() {
            cfg.vocab_size = tok.vocab_size();
        }
    }
    if let (Some(ctx), None) = (a.context_length, &a.init) {
        cfg.context_length = ctx;
    }
    cfg.validate()?;
    Ok(cfg)
}

fn config(a: &PretrainArgs) -> Result<PretrainConfig> {
    let model = model_config(a)?;
    Ok(PretrainConfig {
        version: 1,
        stride: a
            .stride
            .or(a.context_length)
            .unwrap_or(model.context_length),
        // From initial weights, --context-length is the training window (at most the model's).
        window: a.context_length.filter(|_| a.init.is_some()),
        model,
        init: a.init.clone(),
        tokenizer: a.tokenizer.clone(),
        data: a.data.clone(),
        train_fraction: a.train_fraction,
        shuffle: !a.no_shuffle,
        sample_prompt: (!a.sample_prompt.is_empty()).then(|| a.sample_prompt.clone()),
        sample_tokens: a.sample_tokens,
        optim: a.optim.config()?,
        run: a.run.config()?,
    })
}

/// Checks the settings of a new run without running it.
pub fn check(a: &PretrainArgs) -> Result<()> {
    match a.out.run_dir()? {
        (_, true) => config(a).map(|_| ()),
        (_, false) => Ok(()),
    }
}

pub fn run(a: PretrainArgs) -> Result<()> {
    let (run_dir, new) = a.out.run_dir()?;
    let cfg = new.then(|| config(&a)).transpose()?;
    let mut term = Terminal::new()?;
    let ending = pretrain(&run_dir, cfg, &mut term)
        .with_context(|| format!("pretraining in {}", run_dir.display()))?;
    let also = [
        ("metrics", run_dir.join("metrics.jsonl")),
        ("plot", run_dir.join("loss.svg")),
    ];
    report(&term, ending, &run_dir, "pretrain", None, &also)
}
