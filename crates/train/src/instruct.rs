//! Instruction fine-tuning (the book's chapter 7): Alpaca-style entries formatted in a prompt
//! style, batches padded with the end-of-text id, targets shifted by one with padding after the
//! first end-of-text ignored (-100), optionally the prompt masked too; trained fully or with LoRA.
//!
//! Run directory (as pretraining's): `config.json`, `metrics.jsonl`, `loss.svg`, `checkpoints/`,
//! `best/` (lowest validation loss), `model/` (or `adapter/` with LoRA), `results.json` (loss and
//! perplexity of the reference responses on each split) and `test-responses.json` (the test entries
//! with `model_response`, as the book's `instruction-data-with-response.json`).
use crate::checkpoint;
use crate::data::Loader;
use crate::finetune::{is_preset, starting_model, Base, Output, Trainable};
use crate::loss::{cross_entropy, IGNORE_INDEX};
use crate::metrics::Metrics;
use crate::optim::AdamWConfig;
use crate::plot::loss_svg;
use crate::pretrain::{Ending, EvalRecord, Observer};
use crate::rundir::{self, err, write_json};
use crate::trainer::{TrainSettings, Trainer};
use candle_core::{Device, Tensor};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use scratchllm_model::lora::{self, LoraSpec};
use scratchllm_model::{
    generate, modeldir, GenerateOptions, Gpt, GptConfig, ModelError, PromptStyle, Weights,
};
use scratchllm_tokenizer::{SpecialMode, Tokenizer, ENDOFTEXT};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::path::{Path, PathBuf};

pub type Result<T, E = ModelError> = std::result::Result<T, E>;

const CONFIG_VERSION: u32 = 1;

/// One instruction example; `extra` keeps every other field (written back with the responses).
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    pub instruction: String,
    pub input: String,
    pub output: String,
    pub extra: serde_json::Map<String, Value>,
}

impl Entry {
    /// The entry as JSON, with its other fields.
    pub fn to_json(&self) -> Value {
        let mut m = self.extra.clone();
        m.insert(
            "instruction".into(),
            Value::String(self.instruction.clone()),
        );
        m.insert("input".into(), Value::String(self.input.clone()));
        m.insert("output".into(), Value::String(self.output.clone()));
        Value::Object(m)
    }
}

/// Reads a JSON list of `{instruction, input, output}` objects (`input` may be missing or empty;
/// `required` names further string fields every entry must have, e.g. `chosen` and `rejected`).
pub fn read_entries(path: &Path, required: &[&str]) -> Result<Vec<Entry>> {
    let text = scratchllm_tokenizer::io::read_text(path)?;
    let v: Value =
        serde_json::from_str(&text).map_err(|e| err(path, format!("not valid JSON: {e}")))?;
    let Value::Array(list) = v else {
        return Err(err(
            path,
            "expected a JSON list of {instruction, input, output} objects",
        ));
    };
    if list.is_empty() {
        return Err(err(path, "the list of entries is empty"));
    }
    list.into_iter()
        .enumerate()
        .map(|(i, item)| {
            let Value::Object(mut m) = item else {
                return Err(err(path, format!("entry {i} is not an object")));
            };
            let take = |m: &mut serde_json::Map<String, Value>,
                        key: &str,
                        optional: bool|
             -> Result<String> {
                match m.remove(key) {
                    Some(Value::String(s)) => Ok(s),
                    None | Some(Value::Null) if optional => Ok(String::new()),
                    None => Err(err(path, format!("entry {i} has no \"{key}\""))),
                    Some(other) => Err(err(
                        path,
                        format!("entry {i}: \"{key}\" must be a string, not {other}"),
                    )),
                }
            };
            let instruction = take(&mut m, "instruction", false)?;
            let input = take(&mut m, "input", true)?;
            let output = take(&mut m, "output", false)?;
            for key in required {
                let value = take(&mut m, key, false)?;
                m.insert((*key).to_string(), Value::String(value));
            }
            if instruction.trim().is_empty() {
                return Err(err(path, format!("entry {i}: the instruction is empty")));
            }
            Ok(Entry {
                instruction,
                input,
                output,
                extra: m,
            })
        })
        .collect()
}

/// Splits into train, test and validation as the book (`int(n * train)`, `int(n * test)`, the
/// rest), after a seeded shuffle when `seed` is given.
pub fn split<T>(
    mut items: Vec<T>,
    train: f64,
    test: f64,
    seed: Option<u64>,
) -> (Vec<T>, Vec<T>, Vec<T>) {
    if let Some(seed) = seed {
        items.shuffle(&mut rand::rngs::StdRng::seed_from_u64(seed));
    }
    let n = items.len();
    let a = ((n as f64 * train) as usize).min(n);
    let b = (a + (n as f64 * test) as usize).min(n);
    let val = items.split_off(b);
    let test = items.split_off(a);
    (items, test, val)
}

/// A tokenized example: prompt followed by response, and where the response starts.
#[derive(Clone, Debug, PartialEq)]
pub struct Tokenized {
    pub ids: Vec<u32>,
    pub prompt_len: usize,
}

/// The book's `InstructionDataset` item: `format_input(entry)` + `"\n\n### Response:\n" + output`
/// (in Alpaca style; other styles put the response after their assistant marker).
pub fn tokenize(e: &Entry, style: PromptStyle, tok: &Tokenizer) -> Result<Tokenized> {
    let prompt = style.instruction(&e.instruction, &e.input);
    let prompt_ids = tok.encode(&prompt, SpecialMode::AsText)?;
    let mut ids = prompt_ids.clone();
    ids.extend(tok.encode(&e.output, SpecialMode::AsText)?);
    Ok(Tokenized {
        ids,
        prompt_len: prompt_ids.len(),
    })
}

/// The book's `custom_collate_fn`: each sequence gets one `pad_id` (end-of-text) and the batch is
/// padded to its longest + 1; inputs drop the last position, targets the first; in the targets every
/// pad after the first is `-100`; `mask_prompt` also ignores the targets that predict prompt tokens;
/// `max_length` cuts inputs and targets. Returns inputs (B, T) as ids and targets as `i64`.
pub fn collate(
    batch: &[&Tokenized],
    pad_id: u32,
    mask_prompt: bool,
    max_length: Option<usize>,
) -> (Vec<Vec<u32>>, Vec<Vec<i64>>) {
    let longest = batch.iter().map(|t| t.ids.len() + 1).max().unwrap_or(1);
    let mut inputs = Vec::with_capacity(batch.len());
    let mut targets = Vec::with_capacity(batch.len());
    for t in batch {
        let mut padded = t.ids.clone();
        padded.resize(longest, pad_id);
        let mut x = padded[..longest - 1].to_vec();
        let mut y: Vec<i64> = padded[1..].iter().map(|&i| i as i64).collect();
        // Pads in the targets: the first stays (the model learns to stop), the rest are ignored.
        let mut seen_pad = false;
        for v in y.iter_mut() {
            if *v == pad_id as i64 {
                if seen_pad {
                    *v = IGNORE_INDEX;
                }
                seen_pad = true;
            }
        }
        if mask_prompt {
            // Target j predicts token j + 1: the prompt's tokens 1..prompt_len.
            let n = t.prompt_len.saturating_sub(1).min(y.len());
            y[..n].fill(IGNORE_INDEX);
        }
        if let Some(m) = max_length {
            x.truncate(m);
            y.truncate(m);
        }
        inputs.push(x);
        targets.push(y);
    }
    (inputs, targets)
}

/// Everything that defines an instruction fine-tuning run; saved as `config.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InstructConfig {
    pub version: u32,
    /// The starting model: a path (any layout) or a preset name (random weights).
    pub model: String,
    pub model_config: Option<GptConfig>,
    pub data: PathBuf,
    pub prompt_style: PromptStyle,
    pub train_fraction: f64,
    pub test_fraction: f64,
    /// Shuffle before splitting (the book splits in file order).
    pub shuffle_split: bool,
    /// Cut batches to this many tokens (default: the model's context).
    pub max_length: Option<usize>,
    pub mask_prompt: bool,
    pub trainable: Trainable,
    pub lora: Option<LoraSpec>,
    pub drop_rate: f32,
    pub epochs: usize,
    pub max_steps: Option<usize>,
    pub batch_size: usize,
    pub lr: f64,
    pub weight_decay: f64,
    pub grad_clip: Option<f32>,
    pub seed: u64,
    pub eval_every: usize,
    pub eval_batches: Option<usize>,
    pub checkpoint_every: usize,
    pub keep_checkpoints: usize,
    /// Tokens generated per test response (0: no responses).
    pub response_tokens: usize,
    pub merge: bool,
    /// Linear layers multiply in bf16 (f32 weights, optimizer and accumulation), as PyTorch's
    /// bf16 autocast.
    #[serde(default)]
    pub bf16: bool,
}

impl InstructConfig {
    /// The book's chapter 7 settings.
    pub fn book(model: &str, data: &Path) -> Self {
        InstructConfig {
            version: CONFIG_VERSION,
            model: model.to_string(),
            model_config: None,
            data: data.to_path_buf(),
            prompt_style: PromptStyle::Alpaca,
            train_fraction: 0.85,
            test_fraction: 0.10,
            shuffle_split: false,
            max_length: None,
            mask_prompt: false,
            trainable: Trainable::All,
            lora: None,
            drop_rate: 0.0,
            epochs: 2,
            max_steps: None,
            batch_size: 8,
            lr: 5e-5,
            weight_decay: 0.1,
            grad_clip: None,
            seed: 123,
            eval_every: 5,
            eval_batches: Some(5),
            checkpoint_every: 200,
            keep_checkpoints: 2,
            response_tokens: 256,
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
            && self.test_fraction >= 0.0
            && self.train_fraction + self.test_fraction <= 1.0)
        {
            return bad(format!(
                "split fractions train {} and test {} must be positive and sum to at most 1",
                self.train_fraction, self.test_fraction
            ));
        }
        if (self.trainable == Trainable::Lora) != self.lora.is_some() {
            return bad("LoRA settings go with trainable = lora, and only with it".into());
        }
        if let Some(l) = &self.lora {
            l.validate()?;
        }
        Ok(())
    }
}

/// Mean loss over the first `max_batches` batches (all when `None`); NaN for no data.
fn evaluate(
    model: &Gpt,
    data: &[Tokenized],
    pad: u32,
    cfg: &InstructConfig,
    ctx: usize,
    max_batches: Option<usize>,
) -> Result<f32> {
    let loader = Loader {
        batch_size: cfg.batch_size,
        shuffle: false,
        drop_last: false,
        seed: 0,
    };
    let batches = loader.epoch(data.len(), 0);
    let n = max_batches.map_or(batches.len(), |m| m.min(batches.len()));
    if n == 0 {
        return Ok(f32::NAN);
    }
    let mut total = 0.0f64;
    for idx in &batches[..n] {
        total += batch_loss(model, data, idx, pad, cfg, ctx, None)?.to_scalar::<f32>()? as f64;
    }
    Ok((total / n as f64) as f32)
}

/// The loss of the examples `idx`, and (through `tokens`) how many inputs they hold.
fn batch_loss(
    model: &Gpt,
    data: &[Tokenized],
    idx: &[usize],
    pad: u32,
    cfg: &InstructConfig,
    ctx: usize,
    train: Option<&scratchllm_model::DropoutRng>,
) -> Result<Tensor> {
    let items: Vec<&Tokenized> = idx.iter().map(|&i| &data[i]).collect();
    let limit = cfg.max_length.unwrap_or(ctx).min(ctx);
    let (x, y) = collate(&items, pad, cfg.mask_prompt, Some(limit));
    let t = x[0].len();
    let x = Tensor::from_vec(x.concat(), (items.len(), t), model.device())?;
    let logits = model.forward(&x, train)?.flatten_to(1)?;
    Ok(cross_entropy(&logits, &y.concat(), IGNORE_INDEX)?)
}

/// What a finished run measured: the loss (and perplexity) of the reference responses.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InstructResults {
    pub train_examples: usize,
    pub val_examples: usize,
    pub test_examples: usize,
    pub trainable_params: usize,
    pub train_loss: f32,
    pub val_loss: f32,
    pub test_loss: f32,
    pub test_perplexity: f32,
    pub seconds: f64,
}

/// The text a model generates after an instruction, cut at end-of-text or the next turn.
pub fn respond(
    model: &Gpt,
    tok: &Tokenizer,
    style: PromptStyle,
    e: &Entry,
    max_tokens: usize,
) -> Result<String> {
    let prompt = tok.encode(
        &style.instruction(&e.instruction, &e.input),
        SpecialMode::AsText,
    )?;
    let ctx = model.config().context_length;
    let room = ctx.saturating_sub(prompt.len());
    if room == 0 {
        return Err(ModelError::Config(format!(
            "the prompt of {:?} has {} tokens and leaves no room in the context of {ctx}",
            e.instruction,
            prompt.len()
        )));
    }
    let opts = GenerateOptions {
        max_new_tokens: max_tokens.min(room),
        stop_id: tok.special_id(ENDOFTEXT),
        ..Default::default()
    };
    let ids = generate(model, &prompt, &opts, &mut |_| Ok(true))?;
    let ids: Vec<u32> = ids
        .into_iter()
        .filter(|&i| Some(i) != opts.stop_id)
        .collect();
    let mut text = tok.decode(&ids)?;
    for marker in style.turn_markers() {
        if let Some(at) = text.find(marker) {
            text.truncate(at);
        }
    }
    Ok(text.trim().to_string())
}

/// Starts a new instruction fine-tuning run in `run_dir`, or resumes the one there.
pub fn finetune_instruct(
    run_dir: &Path,
    new: Option<InstructConfig>,
    obs: &mut dyn Observer,
) -> Result<(Ending, Option<InstructResults>)> {
    let started = std::time::Instant::now();
    let (cfg, ckpt_dir) =
        rundir::open(run_dir, new, CONFIG_VERSION, |c: &InstructConfig| c.version)?;
    let _autocast = scratchllm_model::kernels::Autocast::bf16(cfg.bf16);
    cfg.validate()?;
    let device = Device::Cpu;
    let (base_cfg, base, tok) =
        starting_model(&cfg.model, cfg.model_config.as_ref(), cfg.seed, &device)?;
    if base_cfg.num_classes.is_some() {
        return Err(err(
            Path::new(&cfg.model),
            "this model is a classifier; instruction fine-tuning needs a language model",
        ));
    }
    let pad = tok.special_id(ENDOFTEXT).ok_or_else(|| {
        ModelError::Config(
            "the tokenizer has no <|endoftext|> token to pad and end responses with".into(),
        )
    })?;
    let entries = read_entries(&cfg.data, &[])?;
    let (train_e, test_e, val_e) = split(
        entries,
        cfg.train_fraction,
        cfg.test_fraction,
        cfg.shuffle_split.then_some(cfg.seed),
    );
    if train_e.len() < cfg.batch_size {
        return Err(err(
            &cfg.data,
            format!(
                "{} training entries for batches of {}; add data or lower the batch size",
                train_e.len(),
                cfg.batch_size
            ),
        ));
    }
    let ctx = base_cfg.context_length;
    let tokenize_all = |es: &[Entry]| {
        es.iter()
            .map(|e| tokenize(e, cfg.prompt_style, &tok))
            .collect::<Result<Vec<_>>>()
    };
    let (train, val, test) = (
        tokenize_all(&train_e)?,
        tokenize_all(&val_e)?,
        tokenize_all(&test_e)?,
    );
    let model_cfg = GptConfig {
        drop_rate: cfg.drop_rate,
        ..base_cfg.clone()
    };
    let base_tensors = base.tensors().clone();
    let mut tensors = base.into_tensors();
    if let Some(l) = &cfg.lora {
        tensors.extend(lora::init(&model_cfg, l, cfg.seed ^ 0x6c6f_7261, &device)?);
    }
    let settings = TrainSettings::finetune(
        train.len(),
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
    let total_steps = settings.schedule.total_steps;
    let n_layers = model_cfg.n_layers;
    let mut trainer = Trainer::partly_frozen(
        &model_cfg,
        Weights::new(tensors, "the model being fine-tuned"),
        cfg.lora.as_ref(),
        &|name| cfg.trainable.selects(name, n_layers),
        settings,
    )?;
    let mut state = rundir::fresh_state();
    if let Some((_, latest)) = checkpoint::list(&ckpt_dir).last() {
        state = checkpoint::load(latest, &mut trainer)?;
    }
    let mut metrics = Metrics::open(run_dir.join("metrics.jsonl"), state.step)?;
    let tokens = |d: &[Tokenized]| d.iter().map(|t| t.ids.len()).sum::<usize>();
    obs.start(total_steps, state.step, tokens(&train), tokens(&val));
    let style = cfg.prompt_style;
    let output = Output {
        run_dir,
        model_cfg: &model_cfg,
        lora: cfg.lora.as_ref(),
        tok: &tok,
        meta: modeldir::Meta {
            classifier: None,
            prompt_style: Some(style),
        },
    };
    let mut position = (state.epoch, state.batch);
    loop {
        let mut failure: Option<ModelError> = None;
        let (mut stop, mut due) = (false, false);
        position = trainer.run_examples(
            train.len(),
            position,
            &mut |m, idx, rng| {
                let loss = batch_loss(m, &train, idx, pad, &cfg, ctx, Some(rng))?;
                let n = idx.iter().map(|&i| train[i].ids.len() as u64).sum();
                Ok((loss, n))
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
                if (cfg.eval_every > 0 && r.step % cfg.eval_every == 0) || last {
                    let e = EvalRecord {
                        step: r.step,
                        tokens_seen: r.tokens_seen,
                        train_loss: evaluate(&t.model, &train, pad, &cfg, ctx, cfg.eval_batches)?,
                        val_loss: evaluate(&t.model, &val, pad, &cfg, ctx, cfg.eval_batches)?,
                        train_accuracy: None,
                        val_accuracy: None,
                    };
                    metrics.write(serde_json::json!({"step": e.step, "tokens_seen": e.tokens_seen, "train_loss_eval": e.train_loss, "val_loss": e.val_loss}))?;
                    scratchllm_tokenizer::io::atomic_write(
                        &run_dir.join("loss.svg"),
                        loss_svg(&metrics.points("train_loss_eval", "val_loss")).as_bytes(),
                    )?;
                    obs.eval(&e);
                    state.val_loss = Some(e.val_loss);
                    if e.val_loss.is_finite() && state.best_val_loss.is_none_or(|b| e.val_loss < b) {
                        state.best_val_loss = Some(e.val_loss);
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
        let eval = |d: &[Tokenized]| evaluate(&trainer.model, d, pad, &cfg, ctx, None);
        let (train_loss, val_loss, test_loss) = (eval(&train)?, eval(&val)?, eval(&test)?);
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
        if cfg.response_tokens > 0 {
            let mut responses = Vec::with_capacity(test_e.len());
            for e in &test_e {
                let mut v = e.to_json();
                // A prompt too long for the context costs its own response, not the others.
                match respond(&trainer.model, &tok, style, e, cfg.response_tokens) {
                    Ok(text) => v["model_response"] = Value::String(text),
                    Err(err) => {
                        v["model_response"] = Value::String(String::new());
                        v["error"] = Value::String(err.to_string());
                    }
                }
                responses.push(v);
            }
            write_json(&run_dir.join("test-responses.json"), &responses)?;
        }
        let results = InstructResults {
            train_examples: train.len(),
            val_examples: val.len(),
            test_examples: test.len(),
            trainable_params: trainer.trainable_params(),
            train_loss,
            val_loss,
            test_loss,
            test_perplexity: test_loss.exp(),
            seconds: started.elapsed().as_secs_f64(),
        };
        write_json(&run_dir.join("results.json"), &results)?;
        return Ok((Ending::Finished { model_dir: out }, Some(results)));
    }
}

/// The mean loss of the reference outputs given their prompts (only the response tokens and the
/// end-of-text after them are scored), in batches; its exponential is the perplexity.
pub fn response_loss(
    model: &Gpt,
    tok: &Tokenizer,
    style: PromptStyle,
    entries: &[Entry],
    batch_size: usize,
) -> Result<f32> {
    let pad = tok
        .special_id(ENDOFTEXT)
        .ok_or_else(|| ModelError::Config("the tokenizer has no <|endoftext|> token".into()))?;
    let ctx = model.config().context_length;
    let items = entries
        .iter()
        .map(|e| tokenize(e, style, tok))
        .collect::<Result<Vec<_>>>()?;
    let (mut total, mut count) = (0.0f64, 0usize);
    for chunk in items.chunks(batch_size.max(1)) {
        let refs: Vec<&Tokenized> = chunk.iter().collect();
        let (x, y) = collate(&refs, pad, true, Some(ctx));
        let t = x[0].len();
        let x = Tensor::from_vec(x.concat(), (refs.len(), t), model.device())?;
        let y = y.concat();
        let n = y.iter().filter(|&&v| v != IGNORE_INDEX).count();
        if n == 0 {
            continue;
        }
        let logits = model.forward(&x, None)?.flatten_to(1)?;
        total += cross_entropy(&logits, &y, IGNORE_INDEX)?.to_scalar::<f32>()? as f64 * n as f64;
        count += n;
    }
    if count == 0 {
        return Err(ModelError::Config(
            "no response tokens to score (every prompt fills the context)".into(),
        ));
    }
    Ok((total / count as f64) as f32)
}
