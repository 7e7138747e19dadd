//! `finetune classify` and `classify`: the book's chapter 6 (and appendix E's LoRA) on the command
//! line.
use crate::pretrain::Terminal;
use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use scratchllm_model::classifier::{predict, ClassifierSpec, TokenPosition};
use scratchllm_model::lora::{LoraSpec, Target};
use scratchllm_model::{GptConfig, PromptStyle};
use scratchllm_train::classify::{
    finetune_classify, ClassifyConfig, ClassifyObserver, Column, RunInfo, TableFormat, Trainable,
};
use scratchllm_train::dpo::{finetune_dpo, DpoConfig};
use scratchllm_train::instruct::{finetune_instruct, InstructConfig};
use scratchllm_train::Ending;
use std::io::BufRead;
use std::path::{Path, PathBuf};

#[derive(Subcommand)]
pub enum FinetuneCommand {
    /// Fine-tune a model into a text classifier (spam or not, sentiment, topics, ...).
    Classify(Box<ClassifyArgs>),
    /// Fine-tune a language model to follow instructions (Alpaca-style JSON).
    Instruct(Box<InstructArgs>),
    /// Preference-tune a language model with DPO ({instruction, input, output, chosen, rejected}).
    Dpo(Box<DpoArgs>),
}

#[derive(Args)]
pub struct DpoArgs {
    /// The model to tune (also the frozen reference): a path (any layout) or a preset.
    #[arg(long, required_unless_present = "resume")]
    model: Option<String>,
    /// A JSON list of {instruction, input, output, chosen, rejected} entries.
    #[arg(long, required_unless_present = "resume")]
    data: Option<PathBuf>,
    /// Run directory: config, metrics.jsonl, loss.svg, margin.svg, checkpoints/, model/.
    #[arg(long, required_unless_present = "resume")]
    out: Option<PathBuf>,
    #[arg(long, value_name = "RUN_DIR", conflicts_with_all = ["out", "data", "model"])]
    resume: Option<PathBuf>,
    /// Prompt template: alpaca (the book) or phi3.
    #[arg(long, default_value = "alpaca")]
    prompt_style: String,
    /// Training and test fractions (the rest is validation).
    #[arg(long, value_delimiter = ',', default_values_t = [0.85, 0.1])]
    split: Vec<f64>,
    #[arg(long)]
    shuffle_split: bool,
    #[arg(long)]
    max_length: Option<usize>,
    /// Score prompts too, not only the responses.
    #[arg(long)]
    no_mask_prompt: bool,
    /// How far the policy may move from the reference (DPO's beta).
    #[arg(long, default_value_t = 0.1)]
    beta: f64,
    #[arg(long)]
    lora: bool,
    #[arg(long, default_value_t = 16)]
    lora_rank: usize,
    #[arg(long, default_value_t = 16.0)]
    lora_alpha: f64,
    #[arg(long, value_delimiter = ',', default_values_t = ["attention".to_string(), "ff".to_string()])]
    lora_targets: Vec<String>,
    #[arg(long)]
    merge: bool,
    #[arg(long, default_value_t = 1)]
    epochs: usize,
    #[arg(long)]
    max_steps: Option<usize>,
    #[arg(long, default_value_t = 8)]
    batch_size: usize,
    #[arg(long, default_value_t = 5e-6)]
    lr: f64,
    #[arg(long, default_value_t = 0.01)]
    weight_decay: f64,
    #[arg(long, default_value_t = 123)]
    seed: u64,
    #[arg(long, default_value_t = 5)]
    eval_every: usize,
    #[arg(long, default_value_t = 5)]
    eval_batches: usize,
    #[arg(long, default_value_t = 200)]
    checkpoint_every: usize,
    #[arg(long, default_value_t = 2)]
    keep_checkpoints: usize,
    /// Matrix products of the linear layers: f32, or bf16 (f32 master weights and accumulation,
    /// as PyTorch's bf16 autocast).
    #[arg(long, value_enum, default_value_t = crate::model::WeightDtype::F32)]
    dtype: crate::model::WeightDtype,
}

fn dpo_config(a: &DpoArgs) -> Result<DpoConfig> {
    let data = a.data.clone().context("--data is required")?;
    let model = a.model.clone().context("--model is required")?;
    let &[train, test] = a.split.as_slice() else {
        bail!(
            "--split takes two fractions, training and test; got {}",
            a.split.len()
        );
    };
    let mut cfg = DpoConfig::book(&model, &data);
    cfg.prompt_style = PromptStyle::parse(&a.prompt_style)
        .with_context(|| format!("unknown prompt style {:?} (alpaca or phi3)", a.prompt_style))?;
    cfg.train_fraction = train;
    cfg.test_fraction = test;
    cfg.shuffle_split = a.shuffle_split;
    cfg.max_length = a.max_length;
    cfg.mask_prompt = !a.no_mask_prompt;
    cfg.beta = a.beta;
    if a.lora {
        cfg.trainable = Trainable::Lora;
        cfg.lora = Some(lora_spec(a.lora_rank, a.lora_alpha, &a.lora_targets)?);
    }
    cfg.merge = a.merge;
    cfg.bf16 = a.dtype == crate::model::WeightDtype::Bf16;
    cfg.epochs = a.epochs;
    cfg.max_steps = a.max_steps;
    cfg.batch_size = a.batch_size;
    cfg.lr = a.lr;
    cfg.weight_decay = a.weight_decay;
    cfg.seed = a.seed;
    cfg.eval_every = a.eval_every;
    cfg.eval_batches = Some(a.eval_batches);
    cfg.checkpoint_every = a.checkpoint_every;
    cfg.keep_checkpoints = a.keep_checkpoints;
    Ok(cfg)
}

fn dpo_run(a: DpoArgs) -> Result<()> {
    let (run_dir, cfg) = match &a.resume {
        Some(dir) => (dir.clone(), None),
        None => (
            a.out.clone().context("--out is required")?,
            Some(dpo_config(&a)?),
        ),
    };
    let mut term = Terminal::new()?;
    let (ending, results) = finetune_dpo(&run_dir, cfg, &mut term)
        .with_context(|| format!("DPO in {}", run_dir.display()))?;
    term.bar.finish_and_clear();
    match ending {
        Ending::Finished { model_dir } => {
            if let Some(r) = results {
                eprintln!(
                    "reward margin: train {:.3} | validation {:.3} | test {:.3} (loss {:.3} / {:.3} / {:.3}); {:.0} s",
                    r.train.margin(), r.val.margin(), r.test.margin(), r.train.loss, r.val.loss, r.test.loss, r.seconds
                );
            }
            eprintln!("done: model in {}", model_dir.display());
            println!("{}", model_dir.display());
        }
        Ending::Stopped { checkpoint } => eprintln!(
            "stopped: checkpoint {}; continue with `scratchllm finetune dpo --resume {}`",
            checkpoint.display(),
            run_dir.display()
        ),
    }
    Ok(())
}

#[derive(Args)]
pub struct InstructArgs {
    /// The starting model: a model path (any layout) or a preset (random weights).
    #[arg(long, required_unless_present_any = ["resume", "model_config"])]
    model: Option<String>,
    /// A JSON model configuration to start from random weights (instead of --model).
    #[arg(long, value_name = "FILE", conflicts_with = "model")]
    model_config: Option<PathBuf>,
    /// A JSON list of {instruction, input, output} entries.
    #[arg(long, required_unless_present = "resume")]
    data: Option<PathBuf>,
    /// Run directory: config, metrics.jsonl, loss.svg, checkpoints/, model/, test-responses.json.
    #[arg(long, required_unless_present = "resume")]
    out: Option<PathBuf>,
    /// Continue the run in this directory from its last checkpoint.
    #[arg(long, value_name = "RUN_DIR", conflicts_with_all = ["out", "data", "model"])]
    resume: Option<PathBuf>,
    /// Prompt template: alpaca (the book) or phi3.
    #[arg(long, default_value = "alpaca")]
    prompt_style: String,
    /// Training and test fractions (the rest is validation; the book: 0.85, 0.10).
    #[arg(long, value_delimiter = ',', default_values_t = [0.85, 0.1])]
    split: Vec<f64>,
    /// Shuffle the entries (with --seed) before splitting; the book splits in file order.
    #[arg(long)]
    shuffle_split: bool,
    /// Cut batches to this many tokens [default: the context length].
    #[arg(long)]
    max_length: Option<usize>,
    /// Train only on the responses: the prompt's targets are ignored.
    #[arg(long)]
    mask_prompt: bool,
    /// Train LoRA adapters instead of every weight.
    #[arg(long)]
    lora: bool,
    #[arg(long, default_value_t = 16)]
    lora_rank: usize,
    #[arg(long, default_value_t = 16.0)]
    lora_alpha: f64,
    /// Layers that get adapters: attention, ff, head (comma-separated).
    #[arg(long, value_delimiter = ',', default_values_t = ["attention".to_string(), "ff".to_string()])]
    lora_targets: Vec<String>,
    /// With LoRA, also write model/ with the adapters merged.
    #[arg(long)]
    merge: bool,
    #[arg(long, default_value_t = 0.0)]
    drop_rate: f32,
    #[arg(long, default_value_t = 2)]
    epochs: usize,
    #[arg(long)]
    max_steps: Option<usize>,
    #[arg(long, default_value_t = 8)]
    batch_size: usize,
    #[arg(long, default_value_t = 5e-5)]
    lr: f64,
    #[arg(long, default_value_t = 0.1)]
    weight_decay: f64,
    #[arg(long)]
    grad_clip: Option<f32>,
    #[arg(long, default_value_t = 123)]
    seed: u64,
    #[arg(long, default_value_t = 5)]
    eval_every: usize,
    #[arg(long, default_value_t = 5)]
    eval_batches: usize,
    #[arg(long, default_value_t = 200)]
    checkpoint_every: usize,
    #[arg(long, default_value_t = 2)]
    keep_checkpoints: usize,
    /// Tokens generated for each test response (0: none).
    #[arg(long, default_value_t = 256)]
    response_tokens: usize,
    /// Matrix products of the linear layers: f32, or bf16 (f32 master weights and accumulation,
    /// as PyTorch's bf16 autocast).
    #[arg(long, value_enum, default_value_t = crate::model::WeightDtype::F32)]
    dtype: crate::model::WeightDtype,
}

fn lora_spec(rank: usize, alpha: f64, targets: &[String]) -> Result<LoraSpec> {
    let targets = targets
        .iter()
        .map(|t| {
            Target::parse(t)
                .with_context(|| format!("unknown LoRA target {t:?} (attention, ff or head)"))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(LoraSpec {
        rank,
        alpha,
        targets,
    })
}

fn instruct_config(a: &InstructArgs) -> Result<InstructConfig> {
    let data = a.data.clone().context("--data is required")?;
    let &[train, test] = a.split.as_slice() else {
        bail!(
            "--split takes two fractions, training and test (e.g. 0.85,0.1); got {}",
            a.split.len()
        );
    };
    let style = PromptStyle::parse(&a.prompt_style)
        .with_context(|| format!("unknown prompt style {:?} (alpaca or phi3)", a.prompt_style))?;
    let model_config = a
        .model_config
        .as_deref()
        .map(read_model_config)
        .transpose()?;
    let model = match (&a.model, &a.model_config) {
        (Some(m), _) => m.clone(),
        (None, Some(p)) => p.display().to_string(),
        (None, None) => bail!("give --model (a path or preset) or --model-config"),
    };
    let mut cfg = InstructConfig::book(&model, &data);
    cfg.model_config = model_config;
    cfg.prompt_style = style;
    cfg.train_fraction = train;
    cfg.test_fraction = test;
    cfg.shuffle_split = a.shuffle_split;
    cfg.max_length = a.max_length;
    cfg.mask_prompt = a.mask_prompt;
    if a.lora {
        cfg.trainable = Trainable::Lora;
        cfg.lora = Some(lora_spec(a.lora_rank, a.lora_alpha, &a.lora_targets)?);
    }
    cfg.merge = a.merge;
    cfg.bf16 = a.dtype == crate::model::WeightDtype::Bf16;
    cfg.drop_rate = a.drop_rate;
    cfg.epochs = a.epochs;
    cfg.max_steps = a.max_steps;
    cfg.batch_size = a.batch_size;
    cfg.lr = a.lr;
    cfg.weight_decay = a.weight_decay;
    cfg.grad_clip = a.grad_clip;
    cfg.seed = a.seed;
    cfg.eval_every = a.eval_every;
    cfg.eval_batches = Some(a.eval_batches);
    cfg.checkpoint_every = a.checkpoint_every;
    cfg.keep_checkpoints = a.keep_checkpoints;
    cfg.response_tokens = a.response_tokens;
    Ok(cfg)
}

fn instruct_run(a: InstructArgs) -> Result<()> {
    let (run_dir, cfg) = match &a.resume {
        Some(dir) => (dir.clone(), None),
        None => (
            a.out.clone().context("--out is required")?,
            Some(instruct_config(&a)?),
        ),
    };
    let mut term = Terminal::new()?;
    let (ending, results) = finetune_instruct(&run_dir, cfg, &mut term)
        .with_context(|| format!("fine-tuning in {}", run_dir.display()))?;
    term.bar.finish_and_clear();
    match ending {
        Ending::Finished { model_dir } => {
            if let Some(r) = results {
                eprintln!(
                    "reference responses: loss train {:.3} | validation {:.3} | test {:.3} (perplexity {:.1}); {:.0} s",
                    r.train_loss, r.val_loss, r.test_loss, r.test_perplexity, r.seconds
                );
            }
            eprintln!(
                "done: model in {}; test responses in {}",
                model_dir.display(),
                run_dir.join("test-responses.json").display()
            );
            println!("{}", model_dir.display());
        }
        Ending::Stopped { checkpoint } => eprintln!(
            "stopped: checkpoint {}; continue with `scratchllm finetune instruct --resume {}`",
            checkpoint.display(),
            run_dir.display()
        ),
    }
    Ok(())
}

#[derive(Clone, Copy, ValueEnum)]
enum TrainableArg {
    LastLayer,
    LastBlock,
    LastTwoBlocks,
    All,
    Lora,
}

#[derive(Clone, Copy, ValueEnum)]
enum PositionArg {
    Last,
    First,
    LastNonPad,
}

#[derive(Clone, Copy, ValueEnum)]
enum FormatArg {
    Tsv,
    Csv,
}

#[derive(Args)]
pub struct ClassifyArgs {
    /// The starting model: a model path (any layout) or a preset (random weights).
    #[arg(long, required_unless_present_any = ["resume", "model_config"])]
    model: Option<String>,
    /// A JSON model configuration to start from random weights (instead of --model).
    #[arg(long, value_name = "FILE", conflicts_with = "model")]
    model_config: Option<PathBuf>,
    /// A table of labels and texts: TSV `label<TAB>text` (the SMS Spam Collection) or CSV.
    #[arg(long, required_unless_present = "resume")]
    data: Option<PathBuf>,
    /// Run directory: config, metrics.jsonl, loss.svg, accuracy.svg, checkpoints/, model/.
    #[arg(long, required_unless_present = "resume")]
    out: Option<PathBuf>,
    /// Continue the run in this directory from its last checkpoint.
    #[arg(long, value_name = "RUN_DIR", conflicts_with_all = ["out", "data", "model"])]
    resume: Option<PathBuf>,
    /// File format [default: csv for .csv files, tsv otherwise].
    #[arg(long, value_enum)]
    format: Option<FormatArg>,
    /// The first row names the columns [default: yes for CSV, no for TSV].
    #[arg(long)]
    header: Option<bool>,
    /// The label column: a 0-based index or a header name [default: 0, or "label" in a CSV].
    #[arg(long)]
    label_column: Option<String>,
    /// The text column: a 0-based index or a header name [default: 1, or "text" in a CSV].
    #[arg(long)]
    text_column: Option<String>,
    /// Class names in class order, comma-separated [default: the labels found, sorted].
    #[arg(long, value_delimiter = ',')]
    labels: Vec<String>,
    /// Undersample every class to the size of the smallest.
    #[arg(long)]
    balance: bool,
    /// Training and validation fractions (the rest is the test set).
    #[arg(long, value_delimiter = ',', default_values_t = [0.7, 0.1])]
    split: Vec<f64>,
    /// Cut texts to this many tokens [default: the longest training text].
    #[arg(long)]
    max_length: Option<usize>,
    /// Which weights to train.
    #[arg(long, value_enum, default_value = "last-block")]
    trainable: TrainableArg,
    /// LoRA rank (with --trainable lora).
    #[arg(long, default_value_t = 16)]
    lora_rank: usize,
    /// LoRA alpha; adapters are scaled by alpha / rank.
    #[arg(long, default_value_t = 16.0)]
    lora_alpha: f64,
    /// Layers that get adapters: attention, ff, head (comma-separated).
    #[arg(long, value_delimiter = ',', default_values_t = ["attention".to_string(), "ff".to_string(), "head".to_string()])]
    lora_targets: Vec<String>,
    /// With LoRA, also write model/ with the adapters merged.
    #[arg(long)]
    merge: bool,
    /// Which token's hidden state classifies (`last` reads a pad token when padding, as the book).
    #[arg(long, value_enum, default_value = "last-non-pad")]
    token_position: PositionArg,
    /// Average the hidden states over the text instead of reading one token.
    #[arg(long)]
    average_embeddings: bool,
    #[arg(long, default_value_t = 0.0)]
    drop_rate: f32,
    #[arg(long, default_value_t = 5)]
    epochs: usize,
    #[arg(long)]
    max_steps: Option<usize>,
    #[arg(long, default_value_t = 8)]
    batch_size: usize,
    #[arg(long, default_value_t = 5e-5)]
    lr: f64,
    #[arg(long, default_value_t = 0.1)]
    weight_decay: f64,
    #[arg(long)]
    grad_clip: Option<f32>,
    #[arg(long, default_value_t = 123)]
    seed: u64,
    /// Also evaluate every N steps (0: after each epoch only).
    #[arg(long, default_value_t = 0)]
    eval_every: usize,
    /// Batches per evaluation [default: all].
    #[arg(long)]
    eval_batches: Option<usize>,
    /// Write a checkpoint every N steps (one is always written at the end and on Ctrl-C).
    #[arg(long, default_value_t = 200)]
    checkpoint_every: usize,
    #[arg(long, default_value_t = 2)]
    keep_checkpoints: usize,
    /// Matrix products of the linear layers: f32, or bf16 (f32 master weights and accumulation,
    /// as PyTorch's bf16 autocast).
    #[arg(long, value_enum, default_value_t = crate::model::WeightDtype::F32)]
    dtype: crate::model::WeightDtype,
}

pub fn run(c: FinetuneCommand) -> Result<()> {
    match c {
        FinetuneCommand::Classify(a) => classify_run(*a),
        FinetuneCommand::Instruct(a) => instruct_run(*a),
        FinetuneCommand::Dpo(a) => dpo_run(*a),
    }
}

fn read_model_config(path: &Path) -> Result<GptConfig> {
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
    cfg.validate()?;
    Ok(cfg)
}

fn config(a: &ClassifyArgs) -> Result<ClassifyConfig> {
    let data = a.data.clone().context("--data is required")?;
    let &[train_fraction, val_fraction] = a.split.as_slice() else {
        bail!(
            "--split takes two fractions, training and validation (e.g. 0.7,0.1); got {}",
            a.split.len()
        );
    };
    let csv = match a.format {
        Some(f) => matches!(f, FormatArg::Csv),
        None => data
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("csv")),
    };
    let header = a.header.unwrap_or(csv);
    let column = |given: &Option<String>, index: usize, name: &str| match given {
        Some(s) => Column::parse(s),
        None if header => Column::Name(name.into()),
        None => Column::Index(index),
    };
    let trainable = match a.trainable {
        TrainableArg::LastLayer => Trainable::LastLayer,
        TrainableArg::LastBlock => Trainable::LastBlock,
        TrainableArg::LastTwoBlocks => Trainable::LastTwoBlocks,
        TrainableArg::All => Trainable::All,
        TrainableArg::Lora => Trainable::Lora,
    };
    let lora = if trainable == Trainable::Lora {
        Some(lora_spec(a.lora_rank, a.lora_alpha, &a.lora_targets)?)
    } else {
        None
    };
    let model_config = a
        .model_config
        .as_deref()
        .map(read_model_config)
        .transpose()?;
    let model = match (&a.model, &a.model_config) {
        (Some(m), _) => m.clone(),
        (None, Some(p)) => p.display().to_string(),
        (None, None) => bail!("give --model (a path or preset) or --model-config"),
    };
    let mut cfg = ClassifyConfig::book(&model, &data);
    cfg.model_config = model_config;
    cfg.format = TableFormat {
        csv,
        header,
        label_column: column(&a.label_column, 0, "label"),
        text_column: column(&a.text_column, 1, "text"),
    };
    cfg.labels = (!a.labels.is_empty()).then(|| a.labels.clone());
    cfg.balance = a.balance;
    cfg.train_fraction = train_fraction;
    cfg.val_fraction = val_fraction;
    cfg.max_length = a.max_length;
    cfg.trainable = trainable;
    cfg.lora = lora;
    cfg.merge = a.merge;
    cfg.bf16 = a.dtype == crate::model::WeightDtype::Bf16;
    cfg.token_position = match a.token_position {
        PositionArg::Last => TokenPosition::Last,
        PositionArg::First => TokenPosition::First,
        PositionArg::LastNonPad => TokenPosition::LastNonPad,
    };
    cfg.average_embeddings = a.average_embeddings;
    cfg.drop_rate = a.drop_rate;
    cfg.epochs = a.epochs;
    cfg.max_steps = a.max_steps;
    cfg.batch_size = a.batch_size;
    cfg.lr = a.lr;
    cfg.weight_decay = a.weight_decay;
    cfg.grad_clip = a.grad_clip;
    cfg.seed = a.seed;
    cfg.eval_every = a.eval_every;
    cfg.eval_batches = a.eval_batches;
    cfg.checkpoint_every = a.checkpoint_every;
    cfg.keep_checkpoints = a.keep_checkpoints;
    Ok(cfg)
}

impl ClassifyObserver for Terminal {
    fn info(&mut self, i: &RunInfo) {
        self.line(format!(
            "classes: {} | examples: {} train, {} validation, {} test | max length {} tokens ({} texts cut)",
            i.labels.join(", "),
            i.train,
            i.val,
            i.test,
            i.max_length,
            i.truncated
        ));
        self.line(format!(
            "trainable parameters: {} of {} ({:.2}%)",
            i.trainable_params,
            i.total_params,
            100.0 * i.trainable_params as f64 / i.total_params.max(1) as f64
        ));
    }
}

fn classify_run(a: ClassifyArgs) -> Result<()> {
    let (run_dir, cfg) = match &a.resume {
        Some(dir) => (dir.clone(), None),
        None => (
            a.out.clone().context("--out is required")?,
            Some(config(&a)?),
        ),
    };
    let mut term = Terminal::new()?;
    let (ending, results) = finetune_classify(&run_dir, cfg, &mut term)
        .with_context(|| format!("fine-tuning in {}", run_dir.display()))?;
    term.bar.finish_and_clear();
    match ending {
        Ending::Finished { model_dir } => {
            if let Some(r) = results {
                eprintln!(
                    "accuracy: train {:.2}% | validation {:.2}% | test {:.2}%  (loss {:.3} / {:.3} / {:.3}; {:.0} s)",
                    100.0 * r.train_accuracy,
                    100.0 * r.val_accuracy,
                    100.0 * r.test_accuracy,
                    r.train_loss,
                    r.val_loss,
                    r.test_loss,
                    r.seconds
                );
            }
            eprintln!(
                "done: classifier in {}; results in {}",
                model_dir.display(),
                run_dir.join("results.json").display()
            );
            println!("{}", model_dir.display());
        }
        Ending::Stopped { checkpoint } => eprintln!(
            "stopped: checkpoint {}; continue with `scratchllm finetune classify --resume {}`",
            checkpoint.display(),
            run_dir.display()
        ),
    }
    Ok(())
}

#[derive(Args)]
pub struct PredictArgs {
    /// A classifier: model directory, adapter directory, or a fine-tuning run directory.
    #[arg(long)]
    model: PathBuf,
    /// Texts to classify; without any, one text per line of standard input.
    texts: Vec<String>,
    /// One JSON object per text: label, probabilities by label, truncated.
    #[arg(long)]
    json: bool,
    #[arg(long, default_value_t = 16)]
    batch_size: usize,
}

/// The classifier's model directory: the path itself, or a run directory's model/ or adapter/.
fn classifier_dir(path: &Path) -> PathBuf {
    for inner in ["model", "adapter"] {
        let p = path.join(inner);
        if path.join("config.json").is_file()
            && !path.join("model.safetensors").exists()
            && p.is_dir()
        {
            return p;
        }
    }
    path.to_path_buf()
}

pub fn predict_run(a: PredictArgs) -> Result<()> {
    let dir = classifier_dir(&a.model);
    let files = crate::model::load_model(&dir.display().to_string(), 0)?;
    let Some(classes) = files.config.num_classes else {
        bail!(
            "{} is a language model, not a classifier; make one with `scratchllm finetune classify`",
            dir.display()
        );
    };
    // A book-layout classifier carries no reading settings: the book's (last token, full context).
    let spec = files.classifier.clone().unwrap_or_else(|| ClassifierSpec {
        labels: (0..classes).map(|c| c.to_string()).collect(),
        token_position: TokenPosition::Last,
        average_embeddings: false,
        max_length: files.config.context_length,
        pad_id: files
            .tokenizer
            .special_id(scratchllm_tokenizer::ENDOFTEXT)
            .unwrap_or(0),
    });
    spec.validate(files.config.context_length)?;
    let gpt = scratchllm_model::Gpt::new(&files.config, &files.weights)?;
    let texts: Vec<String> = if a.texts.is_empty() {
        std::io::stdin()
            .lock()
            .lines()
            .collect::<std::io::Result<_>>()
            .context("reading texts from standard input")?
    } else {
        a.texts.clone()
    };
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let preds = predict(&gpt, &spec, &files.tokenizer, &refs, a.batch_size)?;
    let mut out = std::io::stdout().lock();
    use std::io::Write;
    for (text, p) in texts.iter().zip(preds) {
        if a.json {
            let probs: serde_json::Map<String, serde_json::Value> = spec
                .labels
                .iter()
                .zip(&p.probs)
                .map(|(l, &v)| (l.clone(), serde_json::json!(v)))
                .collect();
            writeln!(
                out,
                "{}",
                serde_json::json!({"text": text, "label": p.label, "probability": p.probs[p.class], "probabilities": probs, "truncated": p.truncated})
            )?;
        } else {
            writeln!(
                out,
                "{}\t{:.4}\t{}{}",
                p.label,
                p.probs[p.class],
                if p.truncated { "[truncated] " } else { "" },
                text
            )?;
        }
    }
    Ok(())
}
