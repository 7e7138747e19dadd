//! A pretraining run: a corpus, a model, a run directory, and everything a long job needs —
//! periodic evaluation, samples, metrics, a loss plot, checkpoints, exact resume, a clean stop
//! (the one run loop, [`crate::run`], with language-model batches as its task).
//!
//! Run directory: `config.json` (the resolved [`PretrainConfig`]), `metrics.jsonl` (one object per
//! step and per evaluation), `loss.svg`, `checkpoints/step-N/` (the newest few), `best/` (the model
//! with the lowest validation loss so far) and `model/` (written at the end and at every stop).
use crate::data::{batch_tensors, split_text, Loader, Windows};
use crate::run::{self, BatchLoss, BestBy, Ending, Evaluation, Observer, Outcome, Task};
use crate::rundir::RunSettings;
use crate::settings::{OptimConfig, RunConfig};
use crate::trainer::{lm_loss, Trainer};
use candle_core::Device;
use scratchllm_model::{
    generate, modeldir, DropoutRng, GenerateOptions, Gpt, GptConfig, ModelError, Weights,
};
use scratchllm_tokenizer::{SpecialMode, Tokenizer, ENDOFTEXT};
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
    /// The tokenizer of a model trained from scratch (any tokenizer `tokenize` reads); GPT-2's
    /// when absent. A model from `init` brings its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokenizer: Option<PathBuf>,
    /// Text files or directories (a directory's `.txt` files; documents joined by <|endoftext|>).
    pub data: Vec<PathBuf>,
    /// Window step in tokens.
    pub stride: usize,
    /// Tokens per training window, when shorter than the model's context (a RoPE model trained
    /// on short windows keeps its full context).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<usize>,
    pub train_fraction: f64,
    /// Shuffle the windows each epoch (with the seed).
    pub shuffle: bool,
    pub sample_prompt: Option<String>,
    pub sample_tokens: usize,
    #[serde(flatten)]
    pub optim: OptimConfig,
    #[serde(flatten)]
    pub run: RunConfig,
}

impl PretrainConfig {
    /// Tokens per training window.
    pub fn window(&self) -> usize {
        self.window.unwrap_or(self.model.context_length)
    }
}

impl RunSettings for PretrainConfig {
    const VERSION: u32 = CONFIG_VERSION;

    fn version(&self) -> u32 {
        self.version
    }

    fn shared(&self) -> (&OptimConfig, &RunConfig) {
        (&self.optim, &self.run)
    }

    fn check(&self) -> Result<()> {
        self.model.validate()?;
        if self
            .window
            .is_some_and(|w| w == 0 || w > self.model.context_length)
        {
            return Err(ModelError::Config(format!(
                "--context-length {} must be between 1 and the model's context length {}",
                self.window.unwrap_or(0),
                self.model.context_length
            )));
        }
        if self.stride == 0 {
            return Err(ModelError::Config(
                "--stride must be at least 1 token (the step between training windows)".into(),
            ));
        }
        if !(self.train_fraction > 0.0 && self.train_fraction < 1.0) {
            return Err(ModelError::Config(format!(
                "--train-fraction {} must be between 0 and 1",
                self.train_fraction
            )));
        }
        Ok(())
    }
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

/// The corpus text: the documents of [`corpus_files`] joined by the tokenizer's end-of-text token
/// (GPT-2's <|endoftext|>, Llama 3's <|end_of_text|>, ...).
pub fn read_corpus(paths: &[PathBuf], tok: &Tokenizer) -> Result<String> {
    let docs = corpus_files(paths)?
        .iter()
        .map(|f| Ok(scratchllm_tokenizer::io::read_text(f)?))
        .collect::<Result<Vec<_>>>()?;
    let eot = tok
        .end_of_text()
        .map_or_else(|| ENDOFTEXT.to_string(), |r| r.text);
    Ok(docs.join(&eot))
}

/// Train and validation windows from the corpus, or an error with the numbers when either split is
/// too short for one window.
pub fn windows(cfg: &PretrainConfig, text: &str, tok: &Tokenizer) -> Result<(Windows, Windows)> {
    let (train_text, val_text) = split_text(text, cfg.train_fraction);
    let ctx = cfg.window();
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
    let ctx = cfg.window();
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

/// Language-model batches over corpus windows: pretraining as a task of the run loop.
struct Pretraining<'a> {
    cfg: &'a PretrainConfig,
    tok: &'a Tokenizer,
    train: Windows,
    val: Windows,
}

impl Task for Pretraining<'_> {
    fn examples(&self) -> usize {
        self.train.len()
    }

    fn tokens(&self) -> (usize, usize) {
        (self.train.token_count(), self.val.token_count())
    }

    fn loss(&mut self, model: &Gpt, idx: &[usize], rng: &DropoutRng) -> Result<BatchLoss> {
        let (x, y) = batch_tensors(&self.train, idx, model.device())?;
        Ok(BatchLoss {
            loss: lm_loss(model, &x, &y, Some(rng))?,
            tokens: x.elem_count() as u64,
            figures: Vec::new(),
        })
    }

    fn evaluate(&mut self, model: &Gpt, max_batches: Option<usize>) -> Result<Evaluation> {
        // In order; training windows in full batches only (the book's calc_loss_loader).
        let bs = self.cfg.optim.batch_size;
        let (train, val) = (&self.train, &self.val);
        let note = match &self.cfg.sample_prompt {
            Some(p) => Some(sample(model, self.tok, p, self.cfg.sample_tokens)?),
            None => None,
        };
        Ok(Evaluation {
            train_loss: windows_loss(
                model,
                train,
                &Loader::in_order(train.len(), bs, true, max_batches),
            )?,
            val_loss: windows_loss(
                model,
                val,
                &Loader::in_order(val.len(), bs, false, max_batches),
            )?,
            note,
            ..Default::default()
        })
    }

    fn best_by(&self) -> BestBy {
        BestBy::ValLoss
    }

    fn save_model(&self, t: &Trainer, dir: &Path) -> Result<()> {
        // Weights only: a full checkpoint at every improvement would triple the writes.
        modeldir::save(dir, &self.cfg.model, &t.weights(), self.tok)
    }
}

/// Mean loss of `w`'s windows over `batches`, dropout off; NaN when there is no batch.
pub fn windows_loss(model: &Gpt, w: &Windows, batches: &[Vec<usize>]) -> Result<f32> {
    if batches.is_empty() {
        return Ok(f32::NAN);
    }
    let mut total = 0.0f64;
    for idx in batches {
        let (x, y) = batch_tensors(w, idx, model.device())?;
        total += lm_loss(model, &x, &y, None)?.to_scalar::<f32>()? as f64;
    }
    Ok((total / batches.len() as f64) as f32)
}

/// Starts a new run in `run_dir` (which must not hold checkpoints), or resumes the one there.
pub fn pretrain(
    run_dir: &Path,
    new: Option<PretrainConfig>,
    obs: &mut dyn Observer,
) -> Result<Ending> {
    let cfg: PretrainConfig = crate::rundir::open(run_dir, new)?;
    let device = Device::Cpu;
    let (init, tok) = match &cfg.init {
        Some(p) => {
            let files = modeldir::load_with(p, Some(&cfg.model), &device)?;
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
        None => {
            let tok = match &cfg.tokenizer {
                Some(p) => scratchllm_tokenizer::load(&p.display().to_string())?,
                None => scratchllm_tokenizer::gpt2()?,
            };
            if tok.vocab_size() > cfg.model.vocab_size {
                return Err(ModelError::Config(format!(
                    "the tokenizer has {} tokens, but the model's vocab_size is {}",
                    tok.vocab_size(),
                    cfg.model.vocab_size
                )));
            }
            (Weights::random(&cfg.model, cfg.optim.seed, &device)?, tok)
        }
    };
    let (train, val) = match shard_dir(&cfg.data)? {
        Some(dir) => shard_windows(&cfg, &dir)?,
        None => windows(&cfg, &read_corpus(&cfg.data, &tok)?, &tok)?,
    };
    let _autocast = scratchllm_model::kernels::Autocast::bf16(cfg.run.bf16);
    let _checkpointing =
        scratchllm_model::recompute::Checkpointing::blocks(cfg.run.checkpoint_activations);
    let settings = cfg.optim.settings(train.len(), cfg.shuffle);
    let mut trainer = Trainer::new(&cfg.model, init, settings)?;
    let mut task = Pretraining {
        cfg: &cfg,
        tok: &tok,
        train,
        val,
    };
    let outcome = run::train(run_dir, &mut trainer, &mut task, &cfg.run, obs)?;
    let model_dir = run_dir.join("model");
    modeldir::save(&model_dir, &cfg.model, &trainer.weights(), &tok)?;
    Ok(match outcome {
        Outcome::Finished => Ending::Finished { model_dir },
        Outcome::Stopped(checkpoint) => Ending::Stopped { checkpoint },
    })
}

/// A short greedy continuation of `prompt` with the model being trained.
fn sample(model: &Gpt, tok: &Tokenizer, prompt: &str, n: usize) -> Result<String> {
    let ids = tok.encode(prompt, SpecialMode::Allow)?;
    let opts = GenerateOptions {
        max_new_tokens: n,
        stop_id: tok.end_of_text().map(|r| r.id),
        ..Default::default()
    };
    let out = generate(model, &ids, &opts, &mut |_| Ok(true))?;
    Ok(format!("{prompt}{}", tok.decode(&out)?))
}
