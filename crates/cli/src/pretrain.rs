//! `pretrain`: flags to a [`PretrainConfig`], progress on the terminal, Ctrl-C to stop cleanly.
use anyhow::{bail, Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use scratchllm_model::GptConfig;
use scratchllm_train::{pretrain, Ending, EvalRecord, Observer, PretrainConfig, StepRecord};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

#[derive(Args)]
pub struct PretrainArgs {
    /// Text files or directories of .txt files (documents are joined with <|endoftext|>).
    #[arg(long, num_args = 1.., required_unless_present = "resume")]
    data: Vec<PathBuf>,
    /// Run directory: config, metrics.jsonl, loss.svg, checkpoints/, model/.
    #[arg(long, required_unless_present = "resume")]
    out: Option<PathBuf>,
    /// Continue the run in this directory from its last checkpoint (other flags are taken from it).
    #[arg(long, value_name = "RUN_DIR", conflicts_with_all = ["out", "data"])]
    resume: Option<PathBuf>,
    /// A preset (gpt2-tiny ... gpt2-xl; trained without qkv bias and with a separate head, as the book).
    #[arg(long, default_value = "gpt2-small")]
    model: String,
    /// A JSON model configuration (the book's GPT_CONFIG keys; a {"config": {...}} file works too).
    #[arg(long, value_name = "FILE")]
    model_config: Option<PathBuf>,
    /// Start from these weights (any layout `generate` reads) instead of random ones.
    #[arg(long, value_name = "WEIGHTS")]
    init: Option<PathBuf>,
    #[arg(long)]
    context_length: Option<usize>,
    /// Window step in tokens [default: the context length].
    #[arg(long)]
    stride: Option<usize>,
    #[arg(long, default_value_t = 2)]
    batch_size: usize,
    #[arg(long, default_value_t = 10)]
    epochs: usize,
    #[arg(long)]
    max_steps: Option<usize>,
    /// Peak learning rate.
    #[arg(long, default_value_t = 4e-4)]
    lr: f64,
    #[arg(long, default_value_t = 0.1)]
    weight_decay: f64,
    /// Exempt biases and LayerNorm parameters from weight decay (the book decays all).
    #[arg(long)]
    no_decay_bias_norm: bool,
    #[arg(long, default_value_t = 0)]
    warmup_steps: usize,
    #[arg(long, default_value_t = 1e-5)]
    warmup_start_lr: f64,
    /// Decay the rate to this with a cosine after warmup (constant without it).
    #[arg(long)]
    min_lr: Option<f64>,
    /// Clip the global gradient norm.
    #[arg(long)]
    grad_clip: Option<f32>,
    /// Clip only once warmup is over (appendix D).
    #[arg(long)]
    clip_after_warmup: bool,
    #[arg(long, default_value_t = 1)]
    grad_accum: usize,
    #[arg(long, default_value_t = 0.9)]
    train_fraction: f64,
    #[arg(long, default_value_t = 5)]
    eval_every: usize,
    #[arg(long, default_value_t = 5)]
    eval_batches: usize,
    #[arg(long, default_value = "Every effort moves you")]
    sample_prompt: String,
    #[arg(long, default_value_t = 50)]
    sample_tokens: usize,
    #[arg(long, default_value_t = 123)]
    seed: u64,
    #[arg(long)]
    no_shuffle: bool,
    /// Write a checkpoint every N steps (one is always written at the end and on Ctrl-C).
    #[arg(long, default_value_t = 500)]
    checkpoint_every: usize,
    /// Checkpoints to keep besides the best.
    #[arg(long, default_value_t = 3)]
    keep_checkpoints: usize,
    /// Matrix products of the linear layers: f32, or bf16 (f32 master weights and accumulation,
    /// as PyTorch's bf16 autocast; fastest on CPUs with AVX512-BF16).
    #[arg(long, value_enum, default_value_t = crate::model::WeightDtype::F32)]
    dtype: crate::model::WeightDtype,
}

fn model_config(a: &PretrainArgs) -> Result<GptConfig> {
    let mut cfg = if let Some(path) = &a.model_config {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let v: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("{} is not JSON", path.display()))?;
        let inner = v.get("config").cloned().unwrap_or(v);
        serde_json::from_value(inner)
            .with_context(|| format!("{}: not a model configuration", path.display()))?
    } else if let Some(init) = &a.init {
        scratchllm_model::modeldir::load(init, &candle_core::Device::Cpu)?.config
    } else {
        let preset =
            GptConfig::preset(&a.model).with_context(|| format!("unknown preset {:?}", a.model))?;
        // The book trains from scratch without query/key/value biases and with a separate head.
        GptConfig {
            qkv_bias: false,
            tie_embeddings: false,
            ..preset
        }
    };
    if let Some(ctx) = a.context_length {
        if a.init.is_some() && ctx != cfg.context_length {
            bail!(
                "--context-length {ctx} differs from the initial weights' {}",
                cfg.context_length
            );
        }
        cfg.context_length = ctx;
    }
    cfg.validate()?;
    Ok(cfg)
}

fn config(a: &PretrainArgs) -> Result<PretrainConfig> {
    let model = model_config(a)?;
    if a.batch_size == 0 || a.grad_accum == 0 || a.epochs == 0 {
        bail!("--batch-size, --grad-accum and --epochs must be at least 1");
    }
    Ok(PretrainConfig {
        version: 1,
        stride: a.stride.unwrap_or(model.context_length),
        model,
        init: a.init.clone(),
        data: a.data.clone(),
        batch_size: a.batch_size,
        epochs: a.epochs,
        max_steps: a.max_steps,
        lr: a.lr,
        weight_decay: a.weight_decay,
        no_decay_bias_norm: a.no_decay_bias_norm,
        warmup_steps: a.warmup_steps,
        warmup_start_lr: a.warmup_start_lr,
        min_lr: a.min_lr,
        grad_clip: a.grad_clip,
        clip_after_warmup: a.clip_after_warmup,
        grad_accum: a.grad_accum,
        train_fraction: a.train_fraction,
        eval_every: a.eval_every,
        eval_batches: Some(a.eval_batches),
        sample_prompt: (!a.sample_prompt.is_empty()).then(|| a.sample_prompt.clone()),
        sample_tokens: a.sample_tokens,
        seed: a.seed,
        shuffle: !a.no_shuffle,
        checkpoint_every: a.checkpoint_every,
        keep_checkpoints: a.keep_checkpoints,
        bf16: a.dtype == crate::model::WeightDtype::Bf16,
    })
}

/// Terminal progress: a bar, one line per step above it.
pub(crate) struct Terminal {
    pub(crate) bar: ProgressBar,
    stop: Arc<AtomicBool>,
    last: Instant,
    last_tokens: u64,
}

impl Terminal {
    /// A progress display whose Ctrl-C asks the run to stop after the current step.
    pub(crate) fn new() -> Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        ctrlc::set_handler(move || {
            if flag.swap(true, Ordering::SeqCst) {
                // A second Ctrl-C while the checkpoint is written: leave at once.
                std::process::exit(130);
            }
            eprintln!("\nstopping after this step; writing a checkpoint (Ctrl-C again to abort)");
        })
        .context("installing the Ctrl-C handler")?;
        let bar = ProgressBar::new(0);
        if let Ok(style) = ProgressStyle::with_template("{bar:40} {pos}/{len} steps, eta {eta}") {
            bar.set_style(style);
        }
        Ok(Terminal {
            bar,
            stop,
            last: Instant::now(),
            last_tokens: 0,
        })
    }

    /// A line above the bar; plain standard error when there is no terminal to draw a bar on.
    pub(crate) fn line(&self, text: String) {
        if self.bar.is_hidden() {
            eprintln!("{text}");
        } else {
            self.bar.println(text);
        }
    }
}

impl Observer for Terminal {
    fn start(&mut self, total: usize, first: usize, train_tokens: usize, val_tokens: usize) {
        self.bar.set_length(total as u64);
        self.bar.set_position(first as u64);
        self.line(format!(
            "training on {train_tokens} tokens, validating on {val_tokens}; {total} steps{}",
            if first > 0 {
                format!(", resuming at step {first}")
            } else {
                String::new()
            }
        ));
        self.last = Instant::now();
    }

    fn step(&mut self, r: &StepRecord) {
        let secs = self.last.elapsed().as_secs_f64().max(1e-9);
        let tps = (r.tokens_seen.saturating_sub(self.last_tokens)) as f64 / secs;
        self.last = Instant::now();
        self.last_tokens = r.tokens_seen;
        self.bar.set_position(r.step as u64 + 1);
        let eta = self.bar.eta().as_secs();
        self.line(format!(
            "step {:>6} | epoch {:>3} | loss {:.4} (ppl {:.1}) | lr {:.2e} | grad {:.3} | {:.0} tok/s | eta {}:{:02}",
            r.step, r.epoch + 1, r.train_loss, (r.train_loss as f64).exp(), r.lr, r.grad_norm, tps, eta / 60, eta % 60
        ));
    }

    fn eval(&mut self, r: &EvalRecord) {
        if let (Some(ta), Some(va)) = (r.train_accuracy, r.val_accuracy) {
            self.line(format!(
                "eval   {:>6} | train loss {:.4} accuracy {:.2}% | val loss {:.4} accuracy {:.2}%",
                r.step,
                r.train_loss,
                100.0 * ta,
                r.val_loss,
                100.0 * va
            ));
            return;
        }
        self.line(format!(
            "eval   {:>6} | train {:.4} | val {:.4} (ppl {:.1}) | {} tokens seen",
            r.step,
            r.train_loss,
            r.val_loss,
            (r.val_loss as f64).exp(),
            r.tokens_seen
        ));
    }

    fn sample(&mut self, _step: usize, text: &str) {
        self.line(format!("sample | {}", text.replace('\n', " ")));
    }

    fn checkpoint(&mut self, path: &Path) {
        self.line(format!("checkpoint {}", path.display()));
    }

    fn stop_requested(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }
}

pub fn run(a: PretrainArgs) -> Result<()> {
    let (run_dir, cfg) = match &a.resume {
        Some(dir) => (dir.clone(), None),
        None => (
            a.out.clone().context("--out is required")?,
            Some(config(&a)?),
        ),
    };
    let mut term = Terminal::new()?;
    let ending = pretrain(&run_dir, cfg, &mut term)
        .with_context(|| format!("pretraining in {}", run_dir.display()))?;
    term.bar.finish_and_clear();
    match ending {
        Ending::Finished { model_dir } => {
            eprintln!(
                "done: model in {}, metrics in {}, plot in {}",
                model_dir.display(),
                run_dir.join("metrics.jsonl").display(),
                run_dir.join("loss.svg").display()
            );
            println!("{}", model_dir.display());
        }
        Ending::Stopped { checkpoint } => {
            eprintln!(
                "stopped: checkpoint {}; continue with `scratchllm pretrain --resume {}`",
                checkpoint.display(),
                run_dir.display()
            );
        }
    }
    Ok(())
}
