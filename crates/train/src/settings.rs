//! The settings every training task shares, each part validated once before any work starts:
//! [`OptimConfig`] (epochs, batches, AdamW, the learning-rate schedule, clipping, accumulation) and
//! [`RunConfig`] (evaluation, checkpoints, the bf16 autocast). A task's saved `config.json` holds
//! them flattened beside its own fields, so the file reads as one flat object.
use crate::data::Loader;
use crate::optim::{AdamWConfig, Schedule};
use crate::trainer::TrainSettings;
use scratchllm_model::ModelError;
use serde::{Deserialize, Serialize};

type Result<T, E = ModelError> = std::result::Result<T, E>;

/// The largest peak learning rate accepted: AdamW moves every weight by about `lr` per step, so a
/// rate above 1 destroys any model in a step or two.
pub const MAX_LR: f64 = 1.0;

fn one() -> usize {
    1
}

fn default_warmup_start_lr() -> f64 {
    1e-5
}

/// How the optimizer runs (the book's chapter 5 loop, with appendix D's warmup, cosine decay and
/// clipping).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OptimConfig {
    pub epochs: usize,
    /// Stop after this many optimizer steps, whatever the epochs.
    pub max_steps: Option<usize>,
    pub batch_size: usize,
    /// Micro-batches per optimizer step (their losses averaged).
    #[serde(default = "one")]
    pub grad_accum: usize,
    /// The peak learning rate.
    pub lr: f64,
    pub weight_decay: f64,
    /// Exempt biases and norm parameters from weight decay (the book decays everything).
    #[serde(default)]
    pub no_decay_bias_norm: bool,
    /// Linear warmup over this many steps from `warmup_start_lr` to `lr` (0: none).
    #[serde(default)]
    pub warmup_steps: usize,
    #[serde(default = "default_warmup_start_lr")]
    pub warmup_start_lr: f64,
    /// Cosine decay to this after warmup; a constant rate when absent.
    #[serde(default)]
    pub min_lr: Option<f64>,
    /// Clip the global gradient norm to this.
    #[serde(default)]
    pub grad_clip: Option<f32>,
    /// Clip only once warmup is over (appendix D).
    #[serde(default)]
    pub clip_after_warmup: bool,
    /// Seeds the batch order, dropout and new weights.
    pub seed: u64,
}

impl OptimConfig {
    /// The book's fine-tuning settings with the given epochs, batch size, rate and decay: a
    /// constant rate, no clipping, seed 123.
    pub fn constant(epochs: usize, batch_size: usize, lr: f64, weight_decay: f64) -> Self {
        OptimConfig {
            epochs,
            max_steps: None,
            batch_size,
            grad_accum: 1,
            lr,
            weight_decay,
            no_decay_bias_norm: false,
            warmup_steps: 0,
            warmup_start_lr: default_warmup_start_lr(),
            min_lr: None,
            grad_clip: None,
            clip_after_warmup: false,
            seed: 123,
        }
    }

    /// Refuses settings that cannot train: counts of zero, rates that are not finite, negative or
    /// above [`MAX_LR`], a minimum or start rate above the peak, a non-positive clip.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(ModelError::Config(m));
        for (name, v) in [
            ("--epochs", self.epochs),
            ("--batch-size", self.batch_size),
            ("--grad-accum", self.grad_accum),
        ] {
            if v == 0 {
                return bad(format!("{name} must be at least 1"));
            }
        }
        if self.max_steps == Some(0) {
            return bad("--max-steps must be at least 1".into());
        }
        let lr = self.lr;
        if !(lr.is_finite() && lr > 0.0 && lr <= MAX_LR) {
            return bad(format!(
                "--lr {lr} must be a positive number of at most {MAX_LR} (AdamW moves every weight by about the rate each step; 1e-5 to 1e-3 is usual)"
            ));
        }
        // The warmup's start only bounds a warmup that happens: DPO's default rate (5e-6) is
        // below the default start (1e-5), and without warmup the start is never used.
        let warmup_start = Some(self.warmup_start_lr).filter(|_| self.warmup_steps > 0);
        for (name, v) in [
            ("--min-lr", self.min_lr),
            ("--warmup-start-lr", warmup_start),
        ] {
            if let Some(v) = v {
                if !(v.is_finite() && v >= 0.0 && v <= lr) {
                    return bad(format!("{name} {v} must be between 0 and --lr {lr}"));
                }
            }
        }
        let v = self.warmup_start_lr;
        if !(v.is_finite() && v >= 0.0) {
            return bad(format!(
                "--warmup-start-lr {v} must be a number of at least 0"
            ));
        }
        let wd = self.weight_decay;
        if !(wd.is_finite() && wd >= 0.0 && wd * lr < 1.0) {
            return bad(format!(
                "--weight-decay {wd} must be a number of at least 0 whose product with --lr {lr} is below 1"
            ));
        }
        if let Some(c) = self.grad_clip {
            if !(c.is_finite() && c > 0.0) {
                return bad(format!("--grad-clip {c} must be a positive number"));
            }
        }
        Ok(())
    }

    /// The trainer's settings for `n` training examples: batches shuffled with the seed (or in
    /// order), the last partial batch dropped, the schedule over the steps the run will take.
    pub fn settings(&self, n: usize, shuffle: bool) -> TrainSettings {
        let loader = Loader {
            batch_size: self.batch_size,
            shuffle,
            drop_last: true,
            seed: self.seed,
        };
        let accum = self.grad_accum.max(1);
        let per_epoch = loader.batches(n).div_ceil(accum);
        let all = per_epoch * self.epochs;
        TrainSettings {
            epochs: self.epochs,
            max_steps: self.max_steps,
            loader,
            adamw: AdamWConfig {
                lr: self.lr,
                weight_decay: self.weight_decay,
                ..Default::default()
            },
            schedule: Schedule {
                peak_lr: self.lr,
                warmup_steps: self.warmup_steps,
                warmup_start_lr: self.warmup_start_lr,
                min_lr: self.min_lr,
                total_steps: self.max_steps.map_or(all, |m| m.min(all)),
            },
            grad_clip: self.grad_clip,
            clip_after_warmup: self.clip_after_warmup,
            grad_accum: accum,
            no_decay_bias_norm: self.no_decay_bias_norm,
        }
    }
}

/// How a run evaluates, saves and computes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunConfig {
    /// Evaluate after every N-th step (0: at the end of each epoch); always after the last.
    pub eval_every: usize,
    /// Batches per evaluation (all when absent).
    pub eval_batches: Option<usize>,
    /// Write a checkpoint every N steps (0: only at the end and on a stop).
    pub checkpoint_every: usize,
    /// Checkpoints kept (at least one).
    pub keep_checkpoints: usize,
    /// Linear layers multiply in bf16 (f32 weights, optimizer and accumulation), as PyTorch's
    /// bf16 autocast.
    #[serde(default)]
    pub bf16: bool,
    /// Keep only each block's input in the forward and recompute the block in the backward.
    #[serde(default)]
    pub checkpoint_activations: bool,
}

impl RunConfig {
    /// Evaluation every `eval_every` steps over `eval_batches`, checkpoints every
    /// `checkpoint_every` steps (the newest two kept), f32 products.
    pub fn new(eval_every: usize, eval_batches: Option<usize>, checkpoint_every: usize) -> Self {
        RunConfig {
            eval_every,
            eval_batches,
            checkpoint_every,
            keep_checkpoints: 2,
            bf16: false,
            checkpoint_activations: false,
        }
    }

    pub fn validate(&self) -> Result<()> {
        if self.eval_batches == Some(0) {
            return Err(ModelError::Config(
                "--eval-batches must be at least 1 (leave it out to evaluate on every batch)"
                    .into(),
            ));
        }
        if self.keep_checkpoints == 0 {
            return Err(ModelError::Config(
                "--keep-checkpoints must be at least 1: a run always keeps its newest checkpoint"
                    .into(),
            ));
        }
        Ok(())
    }
}

/// Refuses a dropout rate outside [0, 1).
pub fn check_drop_rate(rate: f32) -> Result<()> {
    if (0.0..1.0).contains(&rate) {
        Ok(())
    } else {
        Err(ModelError::Config(format!(
            "--drop-rate {rate} must be at least 0 and below 1"
        )))
    }
}
