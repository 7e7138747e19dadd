//! Instruction fine-tuning (the book's chapter 7): Alpaca-style entries formatted in a prompt
//! style, batches padded with the end-of-text id, targets shifted by one with padding after the
//! first end-of-text ignored (-100), optionally the prompt masked too; trained fully or with LoRA.
//!
//! Run directory (as pretraining's): `config.json`, `metrics.jsonl`, `loss.svg`, `checkpoints/`,
//! `best/` (lowest validation loss), `model/` (or `adapter/` with LoRA), `results.json` (loss and
//! perplexity of the reference responses on each split) and `test-responses.json` (the test entries
//! with `model_response`, as the book's `instruction-data-with-response.json`).
use crate::data::Loader;
use crate::finetune::{Output, TuneConfig};
use crate::loss::{cross_entropy, IGNORE_INDEX};
use crate::run::{self, BatchLoss, BestBy, Ending, Evaluation, Observer, Outcome, Task};
use crate::rundir::{err, write_json, RunSettings};
use crate::settings::{OptimConfig, RunConfig};
use crate::trainer::Trainer;
use candle_core::{Device, Tensor};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use scratchllm_model::{
    generate, modeldir, DropoutRng, GenerateOptions, Gpt, GptConfig, ModelError, PromptStyle,
};
use scratchllm_tokenizer::{SpecialMode, Tokenizer};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::path::Path;

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
    let prompt_ids = style.encode_instruction(tok, &e.instruction, &e.input)?;
    let mut ids = prompt_ids.clone();
    ids.extend(tok.encode(&e.output, SpecialMode::AsText)?);
    Ok(Tokenized {
        ids,
        prompt_len: prompt_ids.len(),
    })
}

/// The book's `custom_collate_fn`: each sequence gets one `pad_id` (end-of-text) and the batch is
/// padded to its longest + 1; inputs drop the last position, targets the first; in the targets every
/// pad after the sequence's first is `-100` (a pad id inside the sequence is a token like any other); `mask_prompt` also ignores the targets that predict prompt tokens;
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
        // By position, where the book's `custom_collate_fn` goes by value: a chat template's own
        // tokens can be the pad (Qwen3's eos is <|im_end|>, which closes the user's turn in every
        // prompt), and counting that one as the first pad would ignore the response's end.
        for v in y.iter_mut().skip(t.ids.len()) {
            *v = IGNORE_INDEX;
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
    #[serde(flatten)]
    pub tune: TuneConfig,
    pub prompt_style: PromptStyle,
    pub train_fraction: f64,
    pub test_fraction: f64,
    /// Shuffle before splitting (the book splits in file order).
    pub shuffle_split: bool,
    /// Cut batches to this many tokens (default: the model's context).
    pub max_length: Option<usize>,
    pub mask_prompt: bool,
    /// Tokens generated per test response (0: no responses).
    pub response_tokens: usize,
    #[serde(flatten)]
    pub optim: OptimConfig,
    #[serde(flatten)]
    pub run: RunConfig,
}

impl InstructConfig {
    /// The book's chapter 7 settings (2 epochs, batch 8, lr 5e-5, weight decay 0.1, evaluation
    /// every 5 steps over 5 batches).
    pub fn book(model: &str, data: &Path) -> Self {
        InstructConfig {
            version: CONFIG_VERSION,
            tune: TuneConfig::new(model, data),
            prompt_style: PromptStyle::Alpaca,
            train_fraction: 0.85,
            test_fraction: 0.10,
            shuffle_split: false,
            max_length: None,
            mask_prompt: false,
            response_tokens: 256,
            optim: OptimConfig::constant(2, 8, 5e-5, 0.1),
            run: RunConfig::new(5, Some(5), 200),
        }
    }
}

impl RunSettings for InstructConfig {
    const VERSION: u32 = CONFIG_VERSION;

    fn version(&self) -> u32 {
        self.version
    }

    fn shared(&self) -> (&OptimConfig, &RunConfig) {
        (&self.optim, &self.run)
    }

    fn check(&self) -> Result<()> {
        self.tune.validate()?;
        check_split(self.train_fraction, self.test_fraction)
    }
}

/// Refuses training and test fractions that are not positive or sum past 1.
pub(crate) fn check_split(train: f64, test: f64) -> Result<()> {
    if train > 0.0 && test >= 0.0 && train + test <= 1.0 {
        return Ok(());
    }
    Err(ModelError::Config(format!(
        "split fractions train {train} and test {test} must be positive and sum to at most 1"
    )))
}

/// Padded prompt-and-response batches: instruction tuning as a task of the run loop.
struct Instructing<'a> {
    cfg: &'a InstructConfig,
    pad: u32,
    ctx: usize,
    train: &'a [Tokenized],
    val: &'a [Tokenized],
    output: Output<'a>,
}

impl Instructing<'_> {
    /// Mean loss over the first `max_batches` batches (all when `None`); NaN for no data.
    fn eval_loss(
        &self,
        model: &Gpt,
        data: &[Tokenized],
        max_batches: Option<usize>,
    ) -> Result<f32> {
        let batches = Loader::in_order(data.len(), self.cfg.optim.batch_size, false, max_batches);
        let n = batches.len();
        if n == 0 {
            return Ok(f32::NAN);
        }
        let mut total = 0.0f64;
        for idx in &batches {
            total += self
                .batch_loss(model, data, idx, None)?
                .to_scalar::<f32>()? as f64;
        }
        Ok((total / n as f64) as f32)
    }

    /// The loss of the examples `idx` of `data`.
    fn batch_loss(
        &self,
        model: &Gpt,
        data: &[Tokenized],
        idx: &[usize],
        train: Option<&DropoutRng>,
    ) -> Result<Tensor> {
        let items: Vec<&Tokenized> = idx.iter().map(|&i| &data[i]).collect();
        let limit = self.cfg.max_length.unwrap_or(self.ctx).min(self.ctx);
        let (x, y) = collate(&items, self.pad, self.cfg.mask_prompt, Some(limit));
        let t = x[0].len();
        let x = Tensor::from_vec(x.concat(), (items.len(), t), model.device())?; // (B, T)
        model.lm_loss(&x, &y.concat(), IGNORE_INDEX, train)
    }
}

impl Task for Instructing<'_> {
    fn examples(&self) -> usize {
        self.train.len()
    }

    fn tokens(&self) -> (usize, usize) {
        let tokens = |d: &[Tokenized]| d.iter().map(|t| t.ids.len()).sum::<usize>();
        (tokens(self.train), tokens(self.val))
    }

    fn loss(&mut self, model: &Gpt, idx: &[usize], rng: &DropoutRng) -> Result<BatchLoss> {
        Ok(BatchLoss {
            loss: self.batch_loss(model, self.train, idx, Some(rng))?,
            tokens: idx.iter().map(|&i| self.train[i].ids.len() as u64).sum(),
            figures: Vec::new(),
        })
    }

    fn evaluate(&mut self, model: &Gpt, max_batches: Option<usize>) -> Result<Evaluation> {
        Ok(Evaluation {
            train_loss: self.eval_loss(model, self.train, max_batches)?,
            val_loss: self.eval_loss(model, self.val, max_batches)?,
            ..Default::default()
        })
    }

    fn best_by(&self) -> BestBy {
        BestBy::ValLoss
    }

    fn save_model(&self, t: &Trainer, dir: &Path) -> Result<()> {
        self.output.save_model(t, dir)
    }
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
    let prompt = style.encode_instruction(tok, &e.instruction, &e.input)?;
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
        stop_id: tok.end_of_text().map(|r| r.id),
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
    let cfg: InstructConfig = crate::rundir::open(run_dir, new)?;
    let _autocast = scratchllm_model::kernels::Autocast::bf16(cfg.run.bf16);
    let _checkpointing =
        scratchllm_model::recompute::Checkpointing::blocks(cfg.run.checkpoint_activations);
    let device = Device::Cpu;
    let seed = cfg.optim.seed;
    let (base_cfg, base, tok) = cfg.tune.start(seed, &device)?;
    let pad = language_model_pad(&cfg.tune.model, &base_cfg, &tok)?;
    let data = &cfg.tune.data;
    let (train_e, test_e, val_e) = split(
        read_entries(data, &[])?,
        cfg.train_fraction,
        cfg.test_fraction,
        cfg.shuffle_split.then_some(seed),
    );
    if train_e.len() < cfg.optim.batch_size {
        return Err(err(
            data,
            format!(
                "{} training entries for batches of {}; add data or lower the batch size",
                train_e.len(),
                cfg.optim.batch_size
            ),
        ));
    }
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
        drop_rate: cfg.tune.drop_rate,
        ..base_cfg.clone()
    };
    let base_tensors = base.tensors().clone();
    let settings = cfg.optim.settings(train.len(), true);
    let mut trainer = cfg
        .tune
        .trainer(&model_cfg, base.into_tensors(), seed, settings, &device)?;
    let style = cfg.prompt_style;
    let meta = modeldir::Meta {
        classifier: None,
        prompt_style: Some(style),
    };
    let mut task = Instructing {
        cfg: &cfg,
        pad,
        ctx: base_cfg.context_length,
        train: &train,
        val: &val,
        output: cfg.tune.output(run_dir, &model_cfg, &tok, meta),
    };
    if let Outcome::Stopped(checkpoint) =
        run::train(run_dir, &mut trainer, &mut task, &cfg.run, obs)?
    {
        return Ok((Ending::Stopped { checkpoint }, None));
    }
    let eval = |d: &[Tokenized]| task.eval_loss(&trainer.model, d, None);
    let (train_loss, val_loss, test_loss) = (eval(&train)?, eval(&val)?, eval(&test)?);
    let base = cfg.tune.base(&base_cfg, &base_tensors);
    let out = task.output.finish(&trainer, &base, cfg.tune.merge)?;
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
    Ok((Ending::Finished { model_dir: out }, Some(results)))
}

/// The end-of-text id that pads batches and ends responses, for a language model (not a
/// classifier) loaded from `source`.
pub(crate) fn language_model_pad(source: &str, cfg: &GptConfig, tok: &Tokenizer) -> Result<u32> {
    if cfg.num_classes.is_some() {
        return Err(err(
            Path::new(source),
            "this model is a classifier; instruction tuning and DPO need a language model",
        ));
    }
    tok.end_of_text().map(|r| r.id).ok_or_else(|| {
        ModelError::Config(
            "the tokenizer has no end-of-text (eos) token to pad and end responses with".into(),
        )
    })
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
        .end_of_text()
        .map(|r| r.id)
        .ok_or_else(|| ModelError::Config("the tokenizer has no end-of-text (eos) token".into()))?;
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
    let loss = (total / count as f64) as f32;
    // A diverged model's logits are NaN, and so is its loss: that is a broken model, not a
    // score (perplexity NaN would read like a result).
    if !loss.is_finite() {
        return Err(ModelError::Config(format!(
            "the weights of {} produce a {loss} loss on the reference responses; the model is \
             broken (did its training diverge? retrain it, or use an earlier checkpoint)",
            model.source()
        )));
    }
    Ok(loss)
}
