//! Fine-tuning a GPT for text classification (the book's chapter 6, its bonus experiments, and
//! LoRA from appendix E).
//!
//! Data is a TSV or CSV of labels and texts; it is balanced (optionally), shuffled and split with a
//! seed, tokenized, truncated to a maximum length and right-padded with the end-of-text id. The
//! model's output head is replaced by a `classes x C` linear layer; the chosen part of the model is
//! trained with AdamW on the cross-entropy of the class logits.
//!
//! Run directory (as pretraining's): `config.json`, `metrics.jsonl`, `loss.svg`, `accuracy.svg`,
//! `checkpoints/`, `best/` (best validation accuracy), `results.json` and `model/` (a classifier
//! model directory), or with LoRA `adapter/` (adapters and the new head on their own; `model/` too
//! when `merge` is set).
use crate::data::Loader;
use crate::finetune::Output;
pub use crate::finetune::{Trainable, TuneConfig};
pub use crate::labeled::{
    balance, balance_like_pandas, class_labels, encode, read_examples, split, split_like_pandas,
    Column, Encoded, Example, TableFormat,
};
use crate::run::{self, BatchLoss, BestBy, Ending, Evaluation, Observer, Outcome, Plot, Task};
use crate::rundir::{err, write_json, RunSettings};
use crate::settings::{OptimConfig, RunConfig};
use crate::trainer::Trainer;
use candle_core::{Device, Tensor};
use rand::{Rng, SeedableRng};
use scratchllm_model::classifier::{class_logits, ClassifierSpec, TokenPosition};
use scratchllm_model::{modeldir, DropoutRng, Gpt, GptConfig, ModelError, Weights};
use scratchllm_tokenizer::Tokenizer;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;

pub type Result<T, E = ModelError> = std::result::Result<T, E>;

const CONFIG_VERSION: u32 = 1;

/// Everything that defines a classification fine-tuning run; saved as `config.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClassifyConfig {
    pub version: u32,
    #[serde(flatten)]
    pub tune: TuneConfig,
    pub format: TableFormat,
    /// Class names in order; the sorted labels of the data when absent.
    pub labels: Option<Vec<String>>,
    pub balance: bool,
    pub train_fraction: f64,
    pub val_fraction: f64,
    /// Truncate texts to this many tokens (default: the longest training text, within the context).
    pub max_length: Option<usize>,
    pub token_position: TokenPosition,
    pub average_embeddings: bool,
    /// Balance and split drawing as pandas does with `random_state` = the seed (the book's code):
    /// the book's very rows.
    #[serde(default)]
    pub pandas_sampling: bool,
    #[serde(flatten)]
    pub optim: OptimConfig,
    #[serde(flatten)]
    pub run: RunConfig,
}

impl ClassifyConfig {
    /// The book's chapter 6 settings for `data` from `model` (5 epochs, batch 8, lr 5e-5,
    /// weight decay 0.1; the last block, final norm and head trained; evaluation each epoch).
    pub fn book(model: &str, data: &Path) -> Self {
        ClassifyConfig {
            version: CONFIG_VERSION,
            tune: TuneConfig {
                trainable: Trainable::LastBlock,
                ..TuneConfig::new(model, data)
            },
            format: TableFormat::tsv(),
            labels: None,
            balance: true,
            train_fraction: 0.7,
            val_fraction: 0.1,
            max_length: None,
            token_position: TokenPosition::Last,
            average_embeddings: false,
            pandas_sampling: false,
            optim: OptimConfig::constant(5, 8, 5e-5, 0.1),
            run: RunConfig::new(0, None, 0),
        }
    }
}

impl RunSettings for ClassifyConfig {
    const VERSION: u32 = CONFIG_VERSION;

    fn version(&self) -> u32 {
        self.version
    }

    fn shared(&self) -> (&OptimConfig, &RunConfig) {
        (&self.optim, &self.run)
    }

    fn check(&self) -> Result<()> {
        self.tune.validate()?;
        if !(self.train_fraction > 0.0
            && self.val_fraction >= 0.0
            && self.train_fraction + self.val_fraction <= 1.0)
        {
            return Err(ModelError::Config(format!(
                "split fractions train {} and validation {} must be positive and sum to at most 1",
                self.train_fraction, self.val_fraction
            )));
        }
        if self.pandas_sampling && u32::try_from(self.optim.seed).is_err() {
            return Err(ModelError::Config(format!(
                "seed {} is above 4294967295, the largest random_state pandas' sampling takes",
                self.optim.seed
            )));
        }
        Ok(())
    }
}

/// The data of a run, split and tokenized.
pub struct Prepared {
    pub labels: Vec<String>,
    pub train: Encoded,
    pub val: Encoded,
    pub test: Encoded,
    pub spec: ClassifierSpec,
}

/// Reads, balances, splits and tokenizes the run's data (deterministic in the seed).
pub fn prepare(cfg: &ClassifyConfig, tok: &Tokenizer, context_length: usize) -> Result<Prepared> {
    let data = &cfg.tune.data;
    let examples = read_examples(data, &cfg.format)?;
    let labels = class_labels(&examples, cfg.labels.as_deref(), data)?;
    if labels.len() < 2 {
        return Err(err(
            data,
            format!(
                "only one class ({}); a classifier needs at least two",
                labels.join(", ")
            ),
        ));
    }
    // Checked to fit by `check`.
    let pandas_seed = cfg
        .pandas_sampling
        .then(|| u32::try_from(cfg.optim.seed).unwrap_or(u32::MAX));
    let examples = match (cfg.balance, pandas_seed) {
        (true, Some(seed)) => balance_like_pandas(examples, &labels, seed),
        (true, None) => balance(examples, &labels, cfg.optim.seed),
        (false, _) => examples,
    };
    let n = examples.len();
    let (train, val, test) = match pandas_seed {
        Some(seed) => split_like_pandas(examples, cfg.train_fraction, cfg.val_fraction, seed),
        None => split(
            examples,
            cfg.train_fraction,
            cfg.val_fraction,
            cfg.optim.seed,
        ),
    };
    if train.len() < cfg.optim.batch_size || train.len() < labels.len() {
        return Err(err(
            data,
            format!(
                "{} training examples (of {n}{}) for batches of {} and {} classes; add data, lower the batch size or raise the training fraction",
                train.len(),
                if cfg.balance { " after balancing" } else { "" },
                cfg.optim.batch_size,
                labels.len()
            ),
        ));
    }
    if let Some(m) = cfg.max_length {
        if m == 0 || m > context_length {
            return Err(ModelError::Config(format!(
                "max length {m} must be within the model's context of {context_length} tokens"
            )));
        }
    }
    let mut train_enc = encode(&train, &labels, tok, None)?;
    // The book pads to the longest training text, and cuts validation and test texts to it.
    let max_length = cfg.max_length.unwrap_or_else(|| {
        let longest = train_enc.ids.iter().map(Vec::len).max().unwrap_or(1);
        longest.min(context_length)
    });
    for ids in &mut train_enc.ids {
        if ids.len() > max_length {
            ids.truncate(max_length);
            train_enc.truncated += 1;
        }
    }
    let pad_id = tok
        .end_of_text()
        .map(|r| r.id)
        .unwrap_or(tok.vocab_size().saturating_sub(1) as u32);
    let spec = ClassifierSpec {
        labels: labels.clone(),
        token_position: cfg.token_position,
        average_embeddings: cfg.average_embeddings,
        max_length,
        pad_id,
    };
    Ok(Prepared {
        train: train_enc,
        val: encode(&val, &labels, tok, Some(max_length))?,
        test: encode(&test, &labels, tok, Some(max_length))?,
        labels,
        spec,
    })
}

/// Input ids, lengths and class targets of the examples `idx`.
fn batch(
    spec: &ClassifierSpec,
    data: &Encoded,
    idx: &[usize],
    device: &Device,
) -> Result<(Tensor, Vec<usize>, Vec<i64>)> {
    let seqs: Vec<&[u32]> = idx.iter().map(|&i| data.ids[i].as_slice()).collect();
    let (ids, lengths) = spec.batch(&seqs, device)?;
    let targets = idx.iter().map(|&i| data.labels[i] as i64).collect();
    Ok((ids, lengths, targets))
}

/// Mean loss and accuracy over the first `max_batches` batches of `data` (all when `None`).
pub fn evaluate(
    model: &Gpt,
    spec: &ClassifierSpec,
    data: &Encoded,
    batch_size: usize,
    max_batches: Option<usize>,
) -> Result<(f32, f32)> {
    let batches = Loader::in_order(data.len(), batch_size, false, max_batches);
    let n = batches.len();
    if n == 0 {
        return Ok((f32::NAN, f32::NAN));
    }
    let (mut loss, mut correct, mut seen) = (0.0f64, 0usize, 0usize);
    for idx in &batches {
        let (ids, lengths, targets) = batch(spec, data, idx, model.device())?;
        let logits = class_logits(model, spec, &ids, &lengths, None)?;
        loss += crate::loss::cross_entropy(&logits, &targets, crate::loss::IGNORE_INDEX)?
            .to_scalar::<f32>()? as f64;
        let predicted = logits.argmax(1)?.to_vec1::<u32>()?;
        correct += predicted
            .iter()
            .zip(&targets)
            .filter(|(p, t)| **p as i64 == **t)
            .count();
        seen += idx.len();
    }
    Ok(((loss / n as f64) as f32, correct as f32 / seen as f32))
}

/// The model to fine-tune: the starting weights with a fresh `classes x C` head (PyTorch's
/// `nn.Linear` initialization, seeded), unless they already are a classifier of as many classes.
fn classifier_weights(
    base_cfg: &GptConfig,
    base: Weights,
    classes: usize,
    cfg: &ClassifyConfig,
    device: &Device,
) -> Result<(GptConfig, HashMap<String, Tensor>)> {
    let c = base_cfg.emb_dim;
    let model_cfg = GptConfig {
        num_classes: Some(classes),
        tie_embeddings: false,
        drop_rate: cfg.tune.drop_rate,
        ..base_cfg.clone()
    };
    let mut tensors = base.into_tensors();
    if base_cfg.num_classes != Some(classes) {
        let mut rng = rand::rngs::StdRng::seed_from_u64(cfg.optim.seed ^ 0x6865_6164); // "head"
        let bound = 1.0 / (c as f32).sqrt();
        let mut uniform =
            |n: usize| -> Vec<f32> { (0..n).map(|_| rng.random_range(-bound..bound)).collect() };
        tensors.insert(
            "out_head.weight".into(),
            Tensor::from_vec(uniform(classes * c), (classes, c), device)?,
        );
        tensors.insert(
            "out_head.bias".into(),
            Tensor::from_vec(uniform(classes), classes, device)?,
        );
    }
    model_cfg.validate()?;
    Ok((model_cfg, tensors))
}

/// What a finished run measured.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Results {
    pub labels: Vec<String>,
    pub train_examples: usize,
    pub val_examples: usize,
    pub test_examples: usize,
    pub max_length: usize,
    pub trainable_params: usize,
    pub total_params: usize,
    pub train_loss: f32,
    pub val_loss: f32,
    pub test_loss: f32,
    pub train_accuracy: f32,
    pub val_accuracy: f32,
    pub test_accuracy: f32,
    pub seconds: f64,
}

/// What the run will train on, for the observer.
#[derive(Clone, Debug)]
pub struct RunInfo {
    pub labels: Vec<String>,
    pub train: usize,
    pub val: usize,
    pub test: usize,
    pub max_length: usize,
    pub truncated: usize,
    pub trainable_params: usize,
    pub total_params: usize,
}

/// Classification progress beyond pretraining's.
pub trait ClassifyObserver: Observer {
    fn info(&mut self, info: &RunInfo);
}

/// Class logits of labeled texts: classification as a task of the run loop.
struct Classifying<'a> {
    data: &'a Prepared,
    batch_size: usize,
    output: Output<'a>,
}

/// The accuracy plot beside the loss plot.
const ACCURACY_PLOT: Plot = Plot {
    file: "accuracy.svg",
    train_key: "train_accuracy",
    val_key: "val_accuracy",
    title: "accuracy",
};

impl Task for Classifying<'_> {
    fn examples(&self) -> usize {
        self.data.train.len()
    }

    fn tokens(&self) -> (usize, usize) {
        (self.data.train.tokens(), self.data.val.tokens())
    }

    fn loss(&mut self, model: &Gpt, idx: &[usize], rng: &DropoutRng) -> Result<BatchLoss> {
        let spec = &self.data.spec;
        let (ids, lengths, targets) = batch(spec, &self.data.train, idx, model.device())?;
        let logits = class_logits(model, spec, &ids, &lengths, Some(rng))?;
        Ok(BatchLoss {
            loss: crate::loss::cross_entropy(&logits, &targets, crate::loss::IGNORE_INDEX)?,
            tokens: lengths.iter().sum::<usize>() as u64,
            figures: Vec::new(),
        })
    }

    fn evaluate(&mut self, model: &Gpt, max_batches: Option<usize>) -> Result<Evaluation> {
        let d = self.data;
        let (train_loss, train_acc) =
            evaluate(model, &d.spec, &d.train, self.batch_size, max_batches)?;
        let (val_loss, val_acc) = evaluate(model, &d.spec, &d.val, self.batch_size, max_batches)?;
        Ok(Evaluation {
            train_loss,
            val_loss,
            train_accuracy: Some(train_acc),
            val_accuracy: Some(val_acc),
            ..Default::default()
        })
    }

    fn best_by(&self) -> BestBy {
        BestBy::ValAccuracy
    }

    fn plots(&self) -> &'static [Plot] {
        &[ACCURACY_PLOT]
    }

    fn save_model(&self, t: &Trainer, dir: &Path) -> Result<()> {
        self.output.save_model(t, dir)
    }
}

/// Starts a new fine-tuning run in `run_dir`, or resumes the one there (`new` = `None`).
pub fn finetune_classify(
    run_dir: &Path,
    new: Option<ClassifyConfig>,
    obs: &mut dyn ClassifyObserver,
) -> Result<(Ending, Option<Results>)> {
    let started = std::time::Instant::now();
    let cfg: ClassifyConfig = crate::rundir::open(run_dir, new)?;
    let _autocast = scratchllm_model::kernels::Autocast::bf16(cfg.run.bf16);
    let _checkpointing =
        scratchllm_model::recompute::Checkpointing::blocks(cfg.run.checkpoint_activations);
    let device = Device::Cpu;
    let seed = cfg.optim.seed;
    let (base_cfg, base, tok) = cfg.tune.start(seed, &device)?;
    let base_tensors = base.tensors().clone();
    let data = prepare(&cfg, &tok, base_cfg.context_length)?;
    let (model_cfg, tensors) =
        classifier_weights(&base_cfg, base, data.labels.len(), &cfg, &device)?;
    let total_params = tensors.values().map(|t| t.elem_count()).sum::<usize>();
    let settings = cfg.optim.settings(data.train.len(), true);
    let mut trainer = cfg
        .tune
        .trainer(&model_cfg, tensors, seed, settings, &device)?;
    obs.info(&RunInfo {
        labels: data.labels.clone(),
        train: data.train.len(),
        val: data.val.len(),
        test: data.test.len(),
        max_length: data.spec.max_length,
        truncated: data.train.truncated + data.val.truncated + data.test.truncated,
        trainable_params: trainer.trainable_params(),
        total_params,
    });
    let meta = modeldir::Meta {
        classifier: Some(data.spec.clone()),
        prompt_style: None,
    };
    let mut task = Classifying {
        data: &data,
        batch_size: cfg.optim.batch_size,
        output: cfg.tune.output(run_dir, &model_cfg, &tok, meta),
    };
    if let Outcome::Stopped(checkpoint) =
        run::train(run_dir, &mut trainer, &mut task, &cfg.run, obs)?
    {
        return Ok((Ending::Stopped { checkpoint }, None));
    }
    let eval = |d: &Encoded| evaluate(&trainer.model, &data.spec, d, cfg.optim.batch_size, None);
    let (train_loss, train_accuracy) = eval(&data.train)?;
    let (val_loss, val_accuracy) = eval(&data.val)?;
    let (test_loss, test_accuracy) = eval(&data.test)?;
    let base = cfg.tune.base(&base_cfg, &base_tensors);
    let out = task.output.finish(&trainer, &base, cfg.tune.merge)?;
    let results = Results {
        labels: data.labels.clone(),
        train_examples: data.train.len(),
        val_examples: data.val.len(),
        test_examples: data.test.len(),
        max_length: data.spec.max_length,
        trainable_params: trainer.trainable_params(),
        total_params,
        train_loss,
        val_loss,
        test_loss,
        train_accuracy,
        val_accuracy,
        test_accuracy,
        seconds: started.elapsed().as_secs_f64(),
    };
    write_json(&run_dir.join("results.json"), &results)?;
    Ok((Ending::Finished { model_dir: out }, Some(results)))
}
