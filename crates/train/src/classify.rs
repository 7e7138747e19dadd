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
use crate::checkpoint;
use crate::data::Loader;
pub use crate::finetune::Trainable;
use crate::finetune::{is_preset, starting_model, Base, Output};
pub use crate::labeled::{
    balance, class_labels, encode, read_examples, split, Column, Encoded, Example, TableFormat,
};
use crate::metrics::Metrics;
use crate::optim::AdamWConfig;
use crate::plot::chart_svg;
use crate::pretrain::{Ending, EvalRecord, Observer};
use crate::rundir::{self, err, write_json};
use crate::trainer::{TrainSettings, Trainer};
use candle_core::{Device, Tensor};
use rand::{Rng, SeedableRng};
use scratchllm_model::classifier::{class_logits, ClassifierSpec, TokenPosition};
use scratchllm_model::lora::{self, LoraSpec};
use scratchllm_model::{modeldir, Gpt, GptConfig, ModelError, Weights};
use scratchllm_tokenizer::{io::atomic_write, Tokenizer, ENDOFTEXT};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

pub type Result<T, E = ModelError> = std::result::Result<T, E>;

const CONFIG_VERSION: u32 = 1;

/// Everything that defines a classification fine-tuning run; saved as `config.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClassifyConfig {
    pub version: u32,
    /// The starting model: a path (any layout) or a preset name (random weights).
    pub model: String,
    /// A configuration for a randomly initialized model (instead of `model`).
    pub model_config: Option<GptConfig>,
    pub data: PathBuf,
    pub format: TableFormat,
    /// Class names in order; the sorted labels of the data when absent.
    pub labels: Option<Vec<String>>,
    pub balance: bool,
    pub train_fraction: f64,
    pub val_fraction: f64,
    /// Truncate texts to this many tokens (default: the longest training text, within the context).
    pub max_length: Option<usize>,
    pub trainable: Trainable,
    pub lora: Option<LoraSpec>,
    pub token_position: TokenPosition,
    pub average_embeddings: bool,
    pub drop_rate: f32,
    pub epochs: usize,
    pub max_steps: Option<usize>,
    pub batch_size: usize,
    pub lr: f64,
    pub weight_decay: f64,
    pub grad_clip: Option<f32>,
    pub seed: u64,
    /// Evaluate every N steps as well as after each epoch (0: after each epoch only).
    pub eval_every: usize,
    /// Batches per evaluation of loss and accuracy (all when absent).
    pub eval_batches: Option<usize>,
    pub checkpoint_every: usize,
    pub keep_checkpoints: usize,
    /// With LoRA, also write `model/` with the adapters merged.
    pub merge: bool,
    /// Linear layers multiply in bf16 (f32 weights, optimizer and accumulation), as PyTorch's
    /// bf16 autocast.
    #[serde(default)]
    pub bf16: bool,
}

impl ClassifyConfig {
    /// The book's chapter 6 settings for `data` from `model`.
    pub fn book(model: &str, data: &Path) -> Self {
        ClassifyConfig {
            version: CONFIG_VERSION,
            model: model.to_string(),
            model_config: None,
            data: data.to_path_buf(),
            format: TableFormat::tsv(),
            labels: None,
            balance: true,
            train_fraction: 0.7,
            val_fraction: 0.1,
            max_length: None,
            trainable: Trainable::LastBlock,
            lora: None,
            token_position: TokenPosition::Last,
            average_embeddings: false,
            drop_rate: 0.0,
            epochs: 5,
            max_steps: None,
            batch_size: 8,
            lr: 5e-5,
            weight_decay: 0.1,
            grad_clip: None,
            seed: 123,
            eval_every: 0,
            eval_batches: None,
            checkpoint_every: 0,
            keep_checkpoints: 2,
            merge: false,
            bf16: false,
        }
    }

    fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(ModelError::Config(m));
        if self.batch_size == 0 || self.epochs == 0 {
            return bad("the batch size and the number of epochs must be at least 1".into());
        }
        if !(self.train_fraction > 0.0
            && self.val_fraction >= 0.0
            && self.train_fraction + self.val_fraction <= 1.0)
        {
            return bad(format!(
                "split fractions train {} and validation {} must be positive and sum to at most 1",
                self.train_fraction, self.val_fraction
            ));
        }
        if (self.trainable == Trainable::Lora) != self.lora.is_some() {
            return bad("LoRA settings go with trainable = lora, and only with it".into());
        }
        if let Some(l) = &self.lora {
            l.validate()?;
        }
        if !(0.0..1.0).contains(&self.drop_rate) {
            return bad(format!("drop rate {} is outside [0, 1)", self.drop_rate));
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
    let examples = read_examples(&cfg.data, &cfg.format)?;
    let labels = class_labels(&examples, cfg.labels.as_deref(), &cfg.data)?;
    if labels.len() < 2 {
        return Err(err(
            &cfg.data,
            format!(
                "only one class ({}); a classifier needs at least two",
                labels.join(", ")
            ),
        ));
    }
    let examples = if cfg.balance {
        balance(examples, &labels, cfg.seed)
    } else {
        examples
    };
    let n = examples.len();
    let (train, val, test) = split(examples, cfg.train_fraction, cfg.val_fraction, cfg.seed);
    if train.len() < cfg.batch_size || train.len() < labels.len() {
        return Err(err(
            &cfg.data,
            format!(
                "{} training examples (of {n}{}) for batches of {} and {} classes; add data, lower the batch size or raise the training fraction",
                train.len(),
                if cfg.balance { " after balancing" } else { "" },
                cfg.batch_size,
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
        .special_id(ENDOFTEXT)
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
    let loader = Loader {
        batch_size,
        shuffle: false,
        drop_last: false,
        seed: 0,
    };
    let batches = loader.epoch(data.len(), 0);
    let n = max_batches.map_or(batches.len(), |m| m.min(batches.len()));
    if n == 0 {
        return Ok((f32::NAN, f32::NAN));
    }
    let (mut loss, mut correct, mut seen) = (0.0f64, 0usize, 0usize);
    for idx in &batches[..n] {
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
/// `nn.Linear` initialization, seeded), unless they already are a classifier of as many classes;
/// adapters added for LoRA.
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
        drop_rate: cfg.drop_rate,
        ..base_cfg.clone()
    };
    let mut tensors = base.into_tensors();
    if base_cfg.num_classes != Some(classes) {
        let mut rng = rand::rngs::StdRng::seed_from_u64(cfg.seed ^ 0x6865_6164); // "head"
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
    if let Some(spec) = &cfg.lora {
        tensors.extend(lora::init(
            &model_cfg,
            spec,
            cfg.seed ^ 0x6c6f_7261,
            device,
        )?); // "lora"
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

/// Starts a new fine-tuning run in `run_dir`, or resumes the one there (`new` = `None`).
pub fn finetune_classify(
    run_dir: &Path,
    new: Option<ClassifyConfig>,
    obs: &mut dyn ClassifyObserver,
) -> Result<(Ending, Option<Results>)> {
    let started = std::time::Instant::now();
    let (cfg, ckpt_dir) =
        rundir::open(run_dir, new, CONFIG_VERSION, |c: &ClassifyConfig| c.version)?;
    let _autocast = scratchllm_model::kernels::Autocast::bf16(cfg.bf16);
    cfg.validate()?;
    let device = Device::Cpu;
    let (base_cfg, base, tok) =
        starting_model(&cfg.model, cfg.model_config.as_ref(), cfg.seed, &device)?;
    let base_tensors = base.tensors().clone();
    let data = prepare(&cfg, &tok, base_cfg.context_length)?;
    let (model_cfg, tensors) =
        classifier_weights(&base_cfg, base, data.labels.len(), &cfg, &device)?;
    let total_params = tensors
        .iter()
        .filter(|(n, _)| !lora::is_adapter(n))
        .map(|(_, t)| t.elem_count())
        .sum::<usize>();
    let settings = TrainSettings::finetune(
        data.train.len(),
        cfg.batch_size,
        cfg.epochs,
        cfg.max_steps,
        AdamWConfig {
            lr: cfg.lr,
            weight_decay: cfg.weight_decay,
            ..Default::default()
        },
        cfg.grad_clip,
        cfg.seed,
    );
    let per_epoch = settings.loader.batches(data.train.len());
    let total_steps = settings.schedule.total_steps;
    let n_layers = model_cfg.n_layers;
    let mut trainer = Trainer::partly_frozen(
        &model_cfg,
        Weights::new(tensors, "the model being fine-tuned"),
        cfg.lora.as_ref(),
        &|name| cfg.trainable.selects(name, n_layers),
        settings,
    )?;
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
    let mut state = rundir::fresh_state();
    if let Some((_, latest)) = checkpoint::list(&ckpt_dir).last() {
        state = checkpoint::load(latest, &mut trainer)?;
    }
    let mut metrics = Metrics::open(run_dir.join("metrics.jsonl"), state.step)?;
    obs.start(
        total_steps,
        state.step,
        data.train.tokens(),
        data.val.tokens(),
    );
    let spec = &data.spec;
    let output = Output {
        run_dir,
        model_cfg: &model_cfg,
        lora: cfg.lora.as_ref(),
        tok: &tok,
        meta: modeldir::Meta {
            classifier: Some(spec.clone()),
            prompt_style: None,
        },
    };
    let mut position = (state.epoch, state.batch);
    loop {
        let mut failure: Option<ModelError> = None;
        let mut stop = false;
        let mut due = false;
        let train = &data.train;
        position = trainer.run_examples(
            train.len(),
            position,
            &mut |m, idx, rng| {
                let (ids, lengths, targets) = batch(spec, train, idx, m.device())?;
                let logits = class_logits(m, spec, &ids, &lengths, Some(rng))?;
                let loss =
                    crate::loss::cross_entropy(&logits, &targets, crate::loss::IGNORE_INDEX)?;
                Ok((loss, lengths.iter().sum::<usize>() as u64))
            },
            &mut |t, r| {
                if !(r.train_loss.is_finite() && r.grad_norm.is_finite()) {
                    failure = Some(ModelError::Config(format!(
                        "step {}: the loss ({}) or gradient norm ({}) is not finite; stopping. Resume from the last checkpoint in {} with a lower --lr",
                        r.step, r.train_loss, r.grad_norm, ckpt_dir.display()
                    )));
                    return Ok(false);
                }
                metrics.write(serde_json::json!({"step": r.step, "epoch": r.epoch, "train_loss": r.train_loss, "lr": r.lr, "grad_norm": r.grad_norm, "tokens_seen": r.tokens_seen}))?;
                obs.step(r);
                let last = r.step + 1 == total_steps;
                let epoch_end = per_epoch > 0 && (r.step + 1) % per_epoch == 0;
                if (cfg.eval_every > 0 && (r.step + 1) % cfg.eval_every == 0) || epoch_end || last {
                    let (train_loss, train_acc) =
                        evaluate(&t.model, spec, train, cfg.batch_size, cfg.eval_batches)?;
                    let (val_loss, val_acc) =
                        evaluate(&t.model, spec, &data.val, cfg.batch_size, cfg.eval_batches)?;
                    let e = EvalRecord {
                        step: r.step,
                        tokens_seen: r.tokens_seen,
                        train_loss,
                        val_loss,
                        train_accuracy: Some(train_acc),
                        val_accuracy: Some(val_acc),
                    };
                    metrics.write(serde_json::json!({"step": e.step, "epoch": r.epoch, "tokens_seen": e.tokens_seen, "train_loss_eval": train_loss, "val_loss": val_loss, "train_accuracy": train_acc, "val_accuracy": val_acc}))?;
                    atomic_write(&run_dir.join("loss.svg"), chart_svg(&metrics.points("train_loss_eval", "val_loss"), "loss").as_bytes())?;
                    atomic_write(&run_dir.join("accuracy.svg"), chart_svg(&metrics.points("train_accuracy", "val_accuracy"), "accuracy").as_bytes())?;
                    obs.eval(&e);
                    state.val_loss = Some(val_loss);
                    // Best by validation accuracy; among equals, by validation loss.
                    let better = state.best_val_accuracy.is_none_or(|a| val_acc > a)
                        || (state.best_val_accuracy == Some(val_acc)
                            && state.best_val_loss.is_none_or(|b| val_loss < b));
                    if !data.val.is_empty() && better {
                        state.best_val_accuracy = Some(val_acc);
                        state.best_val_loss = Some(val_loss);
                        state.best_step = Some(r.step + 1);
                        output.save_model(t, &run_dir.join("best"))?;
                    }
                }
                stop = obs.stop_requested();
                due = cfg.checkpoint_every > 0 && (r.step + 1) % cfg.checkpoint_every == 0;
                Ok(!stop && !due)
            },
        )?;
        if let Some(e) = failure {
            return Err(e);
        }
        let saved = rundir::checkpoint_at(
            &ckpt_dir,
            &trainer,
            &mut state,
            position,
            cfg.keep_checkpoints,
        )?;
        obs.checkpoint(&saved);
        let finished = !stop && !due || trainer.step >= total_steps;
        if stop && !finished {
            return Ok((Ending::Stopped { checkpoint: saved }, None));
        }
        if !finished {
            continue;
        }
        let eval = |d: &Encoded| evaluate(&trainer.model, spec, d, cfg.batch_size, None);
        let (train_loss, train_accuracy) = eval(&data.train)?;
        let (val_loss, val_accuracy) = eval(&data.val)?;
        let (test_loss, test_accuracy) = eval(&data.test)?;
        let out = output.finish(
            &trainer,
            &Base {
                source: &cfg.model,
                random: cfg.model_config.is_some() || is_preset(&cfg.model),
                cfg: &base_cfg,
                tensors: &base_tensors,
            },
            cfg.merge,
        )?;
        let results = Results {
            labels: data.labels.clone(),
            train_examples: data.train.len(),
            val_examples: data.val.len(),
            test_examples: data.test.len(),
            max_length: spec.max_length,
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
        return Ok((Ending::Finished { model_dir: out }, Some(results)));
    }
}
