//! The flag groups every training command shares (`pretrain`, `finetune classify|instruct|dpo`),
//! each declared once and flattened into the commands, and each turned into its part of a run's
//! configuration once. A command sets its own defaults with `mut_arg` (they show in `--help`).
use crate::model::WeightDtype;
use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use scratchllm_model::lora::{LoraSpec, Target};
use scratchllm_model::{GptConfig, PromptStyle};
use scratchllm_train::classify::{Trainable, TuneConfig};
use scratchllm_train::{OptimConfig, RunConfig};
use std::path::{Path, PathBuf};

/// Where a run writes, or which run it continues.
#[derive(Args)]
pub struct OutArgs {
    /// Run directory: config.json, metrics.jsonl, plots, checkpoints/, best/, model/.
    #[arg(long, required_unless_present = "resume")]
    pub out: Option<PathBuf>,
    /// Continue the run in this directory from its newest checkpoint, with its saved settings.
    #[arg(long, value_name = "RUN_DIR", conflicts_with = "out")]
    pub resume: Option<PathBuf>,
}

impl OutArgs {
    /// The run directory, and whether the run is new.
    pub fn run_dir(&self) -> Result<(PathBuf, bool)> {
        match (&self.resume, &self.out) {
            (Some(dir), _) => Ok((dir.clone(), false)),
            (None, Some(out)) => Ok((out.clone(), true)),
            (None, None) => bail!("give --out for a new run, or --resume RUN_DIR"),
        }
    }
}

/// Epochs, batches, AdamW and the learning-rate schedule.
#[derive(Args)]
#[command(next_help_heading = "Optimizer and schedule")]
pub struct OptimArgs {
    #[arg(long, default_value_t = 1)]
    pub epochs: usize,
    /// Stop after this many optimizer steps, whatever the epochs.
    #[arg(long)]
    pub max_steps: Option<usize>,
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    /// Micro-batches per optimizer step (their losses averaged).
    #[arg(long, default_value_t = 1)]
    pub grad_accum: usize,
    /// Peak learning rate (at most 1).
    #[arg(long, default_value_t = 5e-5)]
    pub lr: f64,
    #[arg(long, default_value_t = 0.1)]
    pub weight_decay: f64,
    /// Exempt biases and norm parameters from weight decay (the book decays all).
    #[arg(long)]
    pub no_decay_bias_norm: bool,
    /// Linear warmup over this many steps (appendix D).
    #[arg(long, default_value_t = 0)]
    pub warmup_steps: usize,
    #[arg(long, default_value_t = 1e-5)]
    pub warmup_start_lr: f64,
    /// Decay the rate to this with a cosine after warmup (constant without it).
    #[arg(long)]
    pub min_lr: Option<f64>,
    /// Clip the global gradient norm.
    #[arg(long)]
    pub grad_clip: Option<f32>,
    /// Clip only once warmup is over (appendix D).
    #[arg(long)]
    pub clip_after_warmup: bool,
    /// Seeds the batch order, dropout, splits and new weights.
    #[arg(long, default_value_t = 123)]
    pub seed: u64,
}

impl OptimArgs {
    pub fn config(&self) -> Result<OptimConfig> {
        let cfg = OptimConfig {
            epochs: self.epochs,
            max_steps: self.max_steps,
            batch_size: self.batch_size,
            grad_accum: self.grad_accum,
            lr: self.lr,
            weight_decay: self.weight_decay,
            no_decay_bias_norm: self.no_decay_bias_norm,
            warmup_steps: self.warmup_steps,
            warmup_start_lr: self.warmup_start_lr,
            min_lr: self.min_lr,
            grad_clip: self.grad_clip,
            clip_after_warmup: self.clip_after_warmup,
            seed: self.seed,
        };
        cfg.validate()?;
        Ok(cfg)
    }
}

/// Evaluation, checkpoints and the arithmetic of the matrix products.
#[derive(Args)]
#[command(next_help_heading = "Evaluation and checkpoints")]
pub struct RunArgs {
    /// Evaluate after every N-th step (0: at the end of each epoch); always after the last.
    #[arg(long, default_value_t = 5)]
    pub eval_every: usize,
    /// Batches per evaluation (0: all).
    #[arg(long, default_value_t = 5)]
    pub eval_batches: usize,
    /// Write a checkpoint every N steps (one is always written at the end and on Ctrl-C).
    #[arg(long, default_value_t = 200)]
    pub checkpoint_every: usize,
    /// Checkpoints to keep (the newest).
    #[arg(long, default_value_t = 2)]
    pub keep_checkpoints: usize,
    /// Matrix products of the linear layers: f32, or bf16 (f32 master weights and accumulation,
    /// as PyTorch's bf16 autocast; fastest on CPUs with AVX512-BF16).
    #[arg(long, value_enum, default_value_t = WeightDtype::F32)]
    pub dtype: WeightDtype,
    /// Keep only each block's input during the forward and run the block again in the backward:
    /// activation memory of one block instead of all, for about a third more compute. The
    /// gradients are the same.
    #[arg(long)]
    pub checkpoint_activations: bool,
}

impl RunArgs {
    pub fn config(&self) -> Result<RunConfig> {
        let cfg = RunConfig {
            eval_every: self.eval_every,
            eval_batches: (self.eval_batches > 0).then_some(self.eval_batches),
            checkpoint_every: self.checkpoint_every,
            keep_checkpoints: self.keep_checkpoints,
            bf16: self.dtype == WeightDtype::Bf16,
            checkpoint_activations: self.checkpoint_activations,
        };
        cfg.validate()?;
        Ok(cfg)
    }
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TrainableArg {
    /// The new head only.
    LastLayer,
    /// The last block, the final norm and the head (the book's choice for classifiers).
    LastBlock,
    LastTwoBlocks,
    All,
    /// LoRA adapters only (appendix E).
    Lora,
}

/// The starting model and what fine-tuning trains.
#[derive(Args)]
#[command(next_help_heading = "Model and trained weights")]
pub struct TuneArgs {
    /// The starting model: a model path (any layout) or a preset (random weights).
    #[arg(long, required_unless_present_any = ["resume", "model_config"], conflicts_with = "resume")]
    pub model: Option<String>,
    /// A JSON model configuration to start from random weights (instead of --model).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["model", "resume"])]
    pub model_config: Option<PathBuf>,
    /// The training data.
    #[arg(long, required_unless_present = "resume", conflicts_with = "resume")]
    pub data: Option<PathBuf>,
    /// Which weights to train.
    #[arg(long, value_enum, default_value = "all")]
    pub trainable: TrainableArg,
    /// Train LoRA adapters only (the same as --trainable lora).
    #[arg(long)]
    pub lora: bool,
    /// LoRA rank (at most the smaller side of every adapted layer).
    #[arg(long, default_value_t = 16)]
    pub lora_rank: usize,
    /// LoRA alpha; adapters are scaled by alpha / rank.
    #[arg(long, default_value_t = 16.0)]
    pub lora_alpha: f64,
    /// Layers that get adapters (comma-separated): the groups attention, ff and head, or single
    /// roles query, key, value, output, gate, up, down (gate only in gated feed-forwards: Llama,
    /// Qwen3, Gemma).
    #[arg(long, value_delimiter = ',', default_value = "attention,ff")]
    pub lora_targets: Vec<String>,
    /// With LoRA, also write model/ with the adapters merged.
    #[arg(long)]
    pub merge: bool,
    #[arg(long, default_value_t = 0.0)]
    pub drop_rate: f32,
}

impl TuneArgs {
    pub fn config(&self) -> Result<TuneConfig> {
        let data = self.data.clone().context("--data is required")?;
        let model_config = self
            .model_config
            .as_deref()
            .map(read_model_config)
            .transpose()?;
        let model = match (&self.model, &self.model_config) {
            (Some(m), _) => m.clone(),
            (None, Some(p)) => p.display().to_string(),
            (None, None) => bail!("give --model (a path or preset) or --model-config"),
        };
        let trainable = match (self.lora, self.trainable) {
            (true, _) | (_, TrainableArg::Lora) => Trainable::Lora,
            (false, TrainableArg::LastLayer) => Trainable::LastLayer,
            (false, TrainableArg::LastBlock) => Trainable::LastBlock,
            (false, TrainableArg::LastTwoBlocks) => Trainable::LastTwoBlocks,
            (false, TrainableArg::All) => Trainable::All,
        };
        let lora = (trainable == Trainable::Lora)
            .then(|| lora_spec(self.lora_rank, self.lora_alpha, &self.lora_targets))
            .transpose()?;
        let cfg = TuneConfig {
            model,
            model_config,
            data,
            trainable,
            lora,
            merge: self.merge,
            drop_rate: self.drop_rate,
        };
        cfg.validate()?;
        Ok(cfg)
    }
}

fn lora_spec(rank: usize, alpha: f64, targets: &[String]) -> Result<LoraSpec> {
    let targets = targets
        .iter()
        .map(|t| {
            Target::parse(t).with_context(|| {
                format!(
                    "unknown LoRA target {t:?} (attention, ff, head, or one role: query, key, \
                     value, output, gate, up, down)"
                )
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(LoraSpec {
        rank,
        alpha,
        targets,
    })
}

/// Two split fractions; the rest of the data is the third split.
#[derive(Args)]
pub struct SplitArgs {
    /// Training and test fractions (the rest is validation).
    #[arg(long, value_delimiter = ',', default_value = "0.85,0.1")]
    pub split: Vec<f64>,
}

impl SplitArgs {
    /// The two fractions; `second` names the second split in the error.
    pub fn fractions(&self, second: &str) -> Result<(f64, f64)> {
        match self.split.as_slice() {
            &[a, b] => Ok((a, b)),
            other => bail!(
                "--split takes two fractions, training and {second} (e.g. 0.85,0.1); got {}",
                other.len()
            ),
        }
    }
}

/// The help of every `--prompt-style` flag.
pub const PROMPT_STYLE_HELP: &str = "Prompt template: alpaca (the book), phi3 (exercise 7.1), \
    plain (no template) or template (the model's own chat template, from its tokenizer files)";

/// The help of `--prompt-style` where the model's own style is the default.
pub const MODEL_PROMPT_STYLE_HELP: &str =
    "Prompt template: alpaca (the book), phi3 (exercise 7.1), \
    plain (no template) or template (the model's own chat template) [default: the style the model \
    was tuned with, else its chat template when its tokenizer has one, else alpaca]";

/// Parses a prompt style name (every `--prompt-style` flag uses this).
pub fn prompt_style(s: &str) -> Result<PromptStyle, String> {
    PromptStyle::parse(s)
        .ok_or_else(|| format!("unknown prompt style {s:?} (alpaca, phi3, plain or template)"))
}

/// A JSON model configuration: the book's GPT_CONFIG keys, or a `{"config": {...}}` (or
/// `{"model": {...}}`) file around them.
pub fn read_model_config(path: &Path) -> Result<GptConfig> {
    // Not a device or a pipe, and not a file too large to be a configuration (a read of
    // /dev/zero would never end).
    let meta = std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
    if !meta.is_file() || meta.len() > 1 << 20 {
        bail!(
            "{}: expected a JSON model configuration file (a regular file of at most 1 MiB)",
            path.display()
        );
    }
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))?;
    let inner = v
        .get("config")
        .or_else(|| v.get("model"))
        .cloned()
        .unwrap_or(v);
    let cfg: GptConfig = serde_json::from_value(inner)
        .with_context(|| format!("{}: not a model configuration", path.display()))?;
    cfg.validate()
        .with_context(|| format!("{}: invalid model configuration", path.display()))?;
    Ok(cfg)
}
