//! A pretraining run: a corpus, a model, a run directory, and everything a long job needs —
//! periodic evaluation, samples, metrics, a loss plot, checkpoints, exact resume, a clean stop.
//!
//! Run directory: `config.json` (the resolved [`PretrainConfig`]), `metrics.jsonl` (one object per
//! step and per evaluation), `loss.svg`, `checkpoints/step-N/` (the newest few), `best/` (the model
//! with the lowest validation loss so far) and `model/` (written at the end and at every stop).
use crate::checkpoint;
use crate::data::{split_text, Loader, Windows};
use crate::metrics::Metrics;
use crate::optim::{AdamWConfig, Schedule};
use crate::plot::loss_svg;
use crate::trainer::{StepRecord, TrainSettings, Trainer};
use candle_core::Device;
use scratchllm_model::{generate, modeldir, GenerateOptions, GptConfig, ModelError, Weights};
use scratchllm_tokenizer::{io::atomic_write, SpecialMode, Tokenizer, ENDOFTEXT};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

pub type Result<T, E = ModelError> = std::result::Result<T, E>;

const CONFIG_VERSION: u32 = 1;

/// Everything that defines a run; saved as `config.json` in the run directory.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PretrainConfig {
    pub version: u32,
    pub model: GptConfig,
    /// Starting weights (any layout `generate` reads); random when absent.
    pub init: Option<PathBuf>,
    /// Text files or directories (a directory's `.txt` files; documents joined by <|endoftext|>).
    pub data: Vec<PathBuf>,
    pub stride: usize,
    pub batch_size: usize,
    pub epochs: usize,
    pub max_steps: Option<usize>,
    pub lr: f64,
    pub weight_decay: f64,
    pub no_decay_bias_norm: bool,
    pub warmup_steps: usize,
    pub warmup_start_lr: f64,
    /// Cosine decay to this after warmup; constant rate when absent.
    pub min_lr: Option<f64>,
    pub grad_clip: Option<f32>,
    pub clip_after_warmup: bool,
    pub grad_accum: usize,
    pub train_fraction: f64,
    /// Evaluate every N steps (0: only at the end of each epoch).
    pub eval_every: usize,
    /// Batches per evaluation (all when absent).
    pub eval_batches: Option<usize>,
    pub sample_prompt: Option<String>,
    pub sample_tokens: usize,
    pub seed: u64,
    pub shuffle: bool,
    /// Write a checkpoint every N steps (0: only at the end and on a stop).
    pub checkpoint_every: usize,
    /// Checkpoints kept besides the best one.
    pub keep_checkpoints: usize,
    /// Linear layers multiply in bf16 (f32 weights, optimizer and accumulation), as PyTorch's
    /// bf16 autocast.
    #[serde(default)]
    pub bf16: bool,
}

/// One evaluation.
#[derive(Clone, Debug, PartialEq)]
pub struct EvalRecord {
    pub step: usize,
    pub tokens_seen: u64,
    pub train_loss: f32,
    pub val_loss: f32,
    /// Classification accuracy (fine-tuning a classifier only).
    pub train_accuracy: Option<f32>,
    pub val_accuracy: Option<f32>,
}

/// What a run reports as it goes (the command line prints it).
pub trait Observer {
    /// Steps the run will take in all, and the step it starts at.
    fn start(
        &mut self,
        total_steps: usize,
        first_step: usize,
        train_tokens: usize,
        val_tokens: usize,
    );
    fn step(&mut self, r: &StepRecord);
    fn eval(&mut self, r: &EvalRecord);
    fn sample(&mut self, step: usize, text: &str);
    fn checkpoint(&mut self, path: &Path);
    /// Polled after every step; `true` stops the run after a checkpoint (Ctrl-C).
    fn stop_requested(&self) -> bool;
}

/// How a run ended.
#[derive(Clone, Debug, PartialEq)]
pub enum Ending {
    Finished { model_dir: PathBuf },
    Stopped { checkpoint: PathBuf },
}

fn err(path: &Path, message: impl Into<String>) -> ModelError {
    ModelError::File {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// The corpus files: files in order, and each directory's `.txt` files sorted.
pub fn corpus_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for p in paths {
        if p.is_dir() {
            let mut inner: Vec<PathBuf> = std::fs::read_dir(p)
                .map_err(|e| ModelError::Io {
                    path: p.clone(),
                    source: e,
                })?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| f.is_file() && f.extension().is_some_and(|x| x == "txt"))
                .collect();
            inner.sort();
            if inner.is_empty() {
                return Err(err(p, "the directory has no .txt files"));
            }
            files.extend(inner);
        } else {
            files.push(p.clone());
        }
    }
    Ok(files)
}

/// The corpus text: the documents of [`corpus_files`] joined by <|endoftext|>.
pub fn read_corpus(paths: &[PathBuf]) -> Result<String> {
    let docs = corpus_files(paths)?
        .iter()
        .map(|f| Ok(scratchllm_tokenizer::io::read_text(f)?))
        .collect::<Result<Vec<_>>>()?;
    Ok(docs.join(ENDOFTEXT))
}

/// Train and validation windows from the corpus, or an error with the numbers when either split is
/// too short for one window.
pub fn windows(cfg: &PretrainConfig, text: &str, tok: &Tokenizer) -> Result<(Windows, Windows)> {
    if !(cfg.train_fraction > 0.0 && cfg.train_fraction < 1.0) {
        return Err(ModelError::Config(format!(
            "train fraction {} must be between 0 and 1",
            cfg.train_fraction
        )));
    }
    let (train_text, val_text) = split_text(text, cfg.train_fraction);
    let ctx = cfg.model.context_length;
    let make = |t: &str, what: &str| -> Result<Windows> {
        let ids = tok.encode(t, SpecialMode::Allow)?;
        let n = ids.len();
        let w = Windows::new(ids, ctx, cfg.stride);
        if w.is_empty() {
            return Err(ModelError::Config(format!(
                "the {what} split has {n} tokens, but one window needs context_length + 1 = {}; \
                 add text, lower --context-length, or change --train-fraction",
                ctx + 1
            )));
        }
        Ok(w)
    };
    Ok((make(train_text, "training")?, make(val_text, "validation")?))
}

/// The shard directory, when the data is one (a directory with a shard manifest).
fn shard_dir(data: &[PathBuf]) -> Result<Option<PathBuf>> {
    let shards: Vec<&PathBuf> = data
        .iter()
        .filter(|p| p.join(crate::shards::MANIFEST).is_file())
        .collect();
    match (shards.len(), data.len()) {
        (0, _) => Ok(None),
        (1, 1) => Ok(Some(shards[0].clone())),
        _ => Err(ModelError::Config(
            "token shards (from `data prepare`) must be the only --data".into(),
        )),
    }
}

/// Train and validation windows over memory-mapped shards, split by a fraction of tokens.
fn shard_windows(cfg: &PretrainConfig, dir: &Path) -> Result<(Windows, Windows)> {
    let tokens = crate::shards::MappedTokens::open(dir)?;
    let n = tokens.len();
    let cut = (n as f64 * cfg.train_fraction) as usize;
    let store = std::sync::Arc::new(crate::data::TokenStore::Mapped(tokens));
    let ctx = cfg.model.context_length;
    let train = Windows::over(store.clone(), 0, cut, ctx, cfg.stride);
    let val = Windows::over(store, cut, n - cut, ctx, cfg.stride);
    for (w, what) in [(&train, "training"), (&val, "validation")] {
        if w.is_empty() {
            return Err(ModelError::Config(format!(
                "the {what} split has {} tokens, but one window needs context_length + 1 = {}; add text, lower --context-length, or change --train-fraction",
                w.token_count(),
                ctx + 1
            )));
        }
    }
    Ok((train, val))
}

fn settings(cfg: &PretrainConfig, train_windows: usize) -> TrainSettings {
    let loader = Loader {
        batch_size: cfg.batch_size,
        shuffle: cfg.shuffle,
        drop_last: true,
        seed: cfg.seed,
    };
    let per_epoch = loader
        .batches(train_windows)
        .div_ceil(cfg.grad_accum.max(1));
    let total = cfg
        .max_steps
        .map_or(per_epoch * cfg.epochs, |m| m.min(per_epoch * cfg.epochs));
    TrainSettings {
        epochs: cfg.epochs,
        max_steps: cfg.max_steps,
        loader,
        adamw: AdamWConfig {
            lr: cfg.lr,
            weight_decay: cfg.weight_decay,
            ..Default::default()
        },
        schedule: Schedule {
            peak_lr: cfg.lr,
            warmup_steps: cfg.warmup_steps,
            warmup_start_lr: cfg.warmup_start_lr,
            min_lr: cfg.min_lr,
            total_steps: total,
        },
        grad_clip: cfg.grad_clip,
        clip_after_warmup: cfg.clip_after_warmup,
        grad_accum: cfg.grad_accum.max(1),
        no_decay_bias_norm: cfg.no_decay_bias_norm,
    }
}

/// Starts a new run in `run_dir` (which must not hold checkpoints), or resumes the one there.
pub fn pretrain(
    run_dir: &Path,
    new: Option<PretrainConfig>,
    obs: &mut dyn Observer,
) -> Result<Ending> {
    let (cfg, ckpt_dir) =
        crate::rundir::open(run_dir, new, CONFIG_VERSION, |c: &PretrainConfig| c.version)?;
    cfg.model.validate()?;
    let device = Device::Cpu;
    let (init, tok) = match &cfg.init {
        Some(p) => {
            let files = modeldir::load(p, &device)?;
            // Dropout is a training choice, not part of the weights.
            if (GptConfig {
                drop_rate: cfg.model.drop_rate,
                ..files.config.clone()
            }) != cfg.model
            {
                return Err(err(
                    p,
                    format!(
                        "its configuration {:?} differs from the run's {:?}",
                        files.config, cfg.model
                    ),
                ));
            }
            (files.weights, files.tokenizer)
        }
        None => (
            Weights::random(&cfg.model, cfg.seed, &device)?,
            scratchllm_tokenizer::gpt2()?,
        ),
    };
    let (train, val) = match shard_dir(&cfg.data)? {
        Some(dir) => shard_windows(&cfg, &dir)?,
        None => windows(&cfg, &read_corpus(&cfg.data)?, &tok)?,
    };
    let _autocast = scratchllm_model::kernels::Autocast::bf16(cfg.bf16);
    let mut trainer = Trainer::new(&cfg.model, init, settings(&cfg, train.len()))?;
    let mut state = crate::rundir::fresh_state();
    if let Some((_, latest)) = checkpoint::list(&ckpt_dir).last() {
        state = checkpoint::load(latest, &mut trainer)?;
    }
    let mut metrics = Metrics::open(run_dir.join("metrics.jsonl"), state.step)?;
    obs.start(
        trainer.settings.schedule.total_steps,
        state.step,
        train.token_count(),
        val.token_count(),
    );
    let eval_loader = Loader {
        batch_size: cfg.batch_size,
        shuffle: false,
        drop_last: false,
        seed: 0,
    };
    let train_eval_loader = Loader {
        drop_last: true,
        ..eval_loader.clone()
    };
    let mut position = (state.epoch, state.batch);
    loop {
        let mut failure: Option<ModelError> = None;
        let mut stop = false;
        let mut due = false;
        position = trainer.run_from(&train, position, &mut |t, r| {
            if !(r.train_loss.is_finite() && r.grad_norm.is_finite()) {
                failure = Some(ModelError::Config(format!(
                    "step {}: the loss ({}) or gradient norm ({}) is not finite; stopping. The last checkpoint in {} is intact: \
                     resume from it with a lower --lr or with --grad-clip",
                    r.step,
                    r.train_loss,
                    r.grad_norm,
                    ckpt_dir.display()
                )));
                return Ok(false);
            }
            metrics.write(serde_json::json!({"step": r.step, "epoch": r.epoch, "train_loss": r.train_loss, "lr": r.lr, "grad_norm": r.grad_norm, "tokens_seen": r.tokens_seen}))?;
            obs.step(r);
            let last = r.step + 1 == t.settings.schedule.total_steps;
            if (cfg.eval_every > 0 && r.step % cfg.eval_every == 0) || last {
                let e = EvalRecord {
                    step: r.step,
                    tokens_seen: r.tokens_seen,
                    train_loss: t.evaluate(&train, &train_eval_loader, cfg.eval_batches)?,
                    val_loss: t.evaluate(&val, &eval_loader, cfg.eval_batches)?,
                    train_accuracy: None,
                    val_accuracy: None,
                };
                metrics.write(serde_json::json!({"step": e.step, "tokens_seen": e.tokens_seen, "train_loss_eval": e.train_loss, "val_loss": e.val_loss}))?;
                atomic_write(&run_dir.join("loss.svg"), loss_svg(&metrics.points("train_loss_eval", "val_loss")).as_bytes())?;
                obs.eval(&e);
                state.val_loss = Some(e.val_loss);
                if state.best_val_loss.is_none_or(|b| e.val_loss < b) {
                    state.best_val_loss = Some(e.val_loss);
                    state.best_step = Some(r.step + 1);
                    // The best model by validation loss, as a model directory (weights only: a
                    // full checkpoint at every improvement would triple the writes).
                    modeldir::save(&run_dir.join("best"), &cfg.model, &t.weights(), &tok)?;
                }
                if let Some(prompt) = &cfg.sample_prompt {
                    obs.sample(r.step, &sample(t, &tok, prompt, cfg.sample_tokens)?);
                }
            }
            stop = obs.stop_requested();
            due = cfg.checkpoint_every > 0 && (r.step + 1) % cfg.checkpoint_every == 0;
            Ok(!stop && !due)
        })?;
        if let Some(e) = failure {
            return Err(e);
        }
        let saved = crate::rundir::checkpoint_at(
            &ckpt_dir,
            &trainer,
            &mut state,
            position,
            cfg.keep_checkpoints,
        )?;
        obs.checkpoint(&saved);
        let finished = !stop && !due || trainer.step >= trainer.settings.schedule.total_steps;
        if stop || finished {
            let model_dir = run_dir.join("model");
            modeldir::save(&model_dir, &cfg.model, &trainer.weights(), &tok)?;
            return Ok(if finished {
                Ending::Finished { model_dir }
            } else {
                Ending::Stopped { checkpoint: saved }
            });
        }
    }
}

/// A short greedy continuation of `prompt` with the model being trained.
fn sample(t: &Trainer, tok: &Tokenizer, prompt: &str, n: usize) -> Result<String> {
    let ids = tok.encode(prompt, SpecialMode::Allow)?;
    let opts = GenerateOptions {
        max_new_tokens: n,
        stop_id: tok.special_id(ENDOFTEXT),
        ..Default::default()
    };
    let out = generate(&t.model, &ids, &opts, &mut |_| Ok(true))?;
    Ok(format!("{prompt}{}", tok.decode(&out)?))
}
