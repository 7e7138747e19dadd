//! Direct preference optimization (the book's chapter 7 bonus): a policy model learns to prefer
//! `chosen` over `rejected` responses relative to a frozen reference model.
//!
//! For a prompt x and responses y_c, y_r, with log p the mean log-probability of a response's tokens
//! (the book's `compute_logprobs` with a selection mask):
//! `loss = -log sigmoid(beta * ((log p(y_c) - log p(y_r)) - (log p_ref(y_c) - log p_ref(y_r))))`,
//! chosen reward `log p(y_c) - log p_ref(y_c)`, rejected reward likewise, margin their difference.
//!
//! Run directory (as pretraining's): `config.json`, `metrics.jsonl` (per step: loss and rewards; per
//! evaluation: train and validation loss, chosen and rejected rewards, margin), `loss.svg`,
//! `margin.svg`, `checkpoints/`, `best/` (lowest validation DPO loss), `model/` (or `adapter/`),
//! `results.json`.
use crate::data::Loader;
use crate::finetune::{Output, TuneConfig};
use crate::instruct::{check_split, language_model_pad, read_entries, split, Entry};
use crate::run::{self, BatchLoss, BestBy, Ending, Evaluation, Observer, Outcome, Plot, Task};
use crate::rundir::{err, write_json, RunSettings};
use crate::settings::{OptimConfig, RunConfig};
use crate::trainer::Trainer;
use candle_core::{Device, Tensor, D};
use scratchllm_model::{modeldir, DropoutRng, Gpt, GptConfig, ModelError, PromptStyle};
use scratchllm_tokenizer::{SpecialMode, Tokenizer};
use serde::{Deserialize, Serialize};
use std::path::Path;

pub type Result<T, E = ModelError> = std::result::Result<T, E>;

const CONFIG_VERSION: u32 = 1;

/// The mean log-probability of each row's selected tokens: `ids` (B, T), `mask` (B, T) with 1 on
/// the tokens to score (the response); token t is scored by the logits at t - 1.
pub fn sequence_logprobs(
    model: &Gpt,
    ids: &Tensor,
    mask: &Tensor,
    train: Option<&DropoutRng>,
) -> Result<Tensor> {
    let (_, t) = ids.dims2()?;
    let logits = model.forward(ids, train)?.narrow(1, 0, t - 1)?; // (B, T-1, V)
    let labels = ids.narrow(1, 1, t - 1)?.contiguous()?; // (B, T-1)
    let logp = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
    let picked = logp.gather(&labels.unsqueeze(2)?, 2)?.squeeze(2)?; // (B, T-1)
    let m = mask.narrow(1, 1, t - 1)?;
    Ok(((picked * &m)?.sum(1)? / m.sum(1)?)?) // (B)
}

/// `log sigmoid(x)`, stable for large |x|: `min(x, 0) - log(1 + exp(-|x|))`.
fn log_sigmoid(x: &Tensor) -> Result<Tensor> {
    let zero = x.zeros_like()?;
    let soft = (x.abs()?.neg()?.exp()? + 1.0)?.log()?;
    Ok((x.minimum(&zero)? - soft)?)
}

/// The DPO loss (mean over the batch) and the mean chosen and rejected rewards.
pub fn dpo_loss(
    policy_chosen: &Tensor,
    policy_rejected: &Tensor,
    reference_chosen: &Tensor,
    reference_rejected: &Tensor,
    beta: f64,
) -> Result<(Tensor, f32, f32)> {
    let logits = ((policy_chosen - policy_rejected)? - (reference_chosen - reference_rejected)?)?;
    let loss = log_sigmoid(&(logits * beta)?)?.neg()?.mean_all()?;
    let reward = |p: &Tensor, r: &Tensor| -> Result<f32> {
        Ok((p.detach() - r)?.mean_all()?.to_scalar::<f32>()?)
    };
    Ok((
        loss,
        reward(policy_chosen, reference_chosen)?,
        reward(policy_rejected, reference_rejected)?,
    ))
}

/// A tokenized preference pair: prompt + chosen and prompt + rejected, and the prompt's length.
#[derive(Clone, Debug)]
pub struct Pair {
    pub chosen: Vec<u32>,
    pub rejected: Vec<u32>,
    pub prompt_len: usize,
}

fn pair(e: &Entry, style: PromptStyle, tok: &Tokenizer) -> Result<Pair> {
    let prompt = style.encode_instruction(tok, &e.instruction, &e.input)?;
    let full = |key: &str| -> Result<Vec<u32>> {
        let text = e
            .extra
            .get(key)
            .and_then(|v| v.as_str())
            .unwrap_or_default();
        let mut ids = prompt.clone();
        ids.extend(tok.encode(text, SpecialMode::AsText)?);
        Ok(ids)
    };
    Ok(Pair {
        chosen: full("chosen")?,
        rejected: full("rejected")?,
        prompt_len: prompt.len(),
    })
}

/// Right-padded (B, T) ids and response masks for one side of a batch of pairs (the book's DPO
/// collate: pad with end-of-text, mask the prompt when asked, cut to `max_length`).
fn side(
    pairs: &[&Pair],
    chosen: bool,
    pad: u32,
    mask_prompt: bool,
    max_length: usize,
    device: &Device,
) -> Result<(Tensor, Tensor)> {
    let seq = |p: &Pair| -> Vec<u32> {
        let s = if chosen { &p.chosen } else { &p.rejected };
        s[..s.len().min(max_length)].to_vec()
    };
    let t = pairs.iter().map(|p| seq(p).len()).max().unwrap_or(1).max(2);
    let (mut ids, mut mask) = (Vec::new(), Vec::new());
    for p in pairs {
        let s = seq(p);
        let from = if mask_prompt {
            p.prompt_len.min(s.len())
        } else {
            0
        };
        for j in 0..t {
            ids.push(s.get(j).copied().unwrap_or(pad));
            mask.push(if j >= from && j < s.len() { 1f32 } else { 0.0 });
        }
    }
    let b = pairs.len();
    Ok((
        Tensor::from_vec(ids, (b, t), device)?,
        Tensor::from_vec(mask, (b, t), device)?,
    ))
}

/// Everything that defines a DPO run; saved as `config.json`. `tune.model` is the policy's and
/// the frozen reference's starting model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DpoConfig {
    pub version: u32,
    #[serde(flatten)]
    pub tune: TuneConfig,
    pub prompt_style: PromptStyle,
    pub train_fraction: f64,
    pub test_fraction: f64,
    pub shuffle_split: bool,
    pub max_length: Option<usize>,
    /// Score only the responses (the book's default).
    pub mask_prompt: bool,
    /// How far the policy may move from the reference.
    pub beta: f64,
    #[serde(flatten)]
    pub optim: OptimConfig,
    #[serde(flatten)]
    pub run: RunConfig,
}

impl DpoConfig {
    /// The book's DPO settings (batch 8, lr 5e-6, weight decay 0.01, beta 0.1, one epoch,
    /// evaluation every 5 steps over 5 batches).
    pub fn book(model: &str, data: &Path) -> Self {
        DpoConfig {
            version: CONFIG_VERSION,
            tune: TuneConfig::new(model, data),
            prompt_style: PromptStyle::Alpaca,
            train_fraction: 0.85,
            test_fraction: 0.10,
            shuffle_split: false,
            max_length: None,
            mask_prompt: true,
            beta: 0.1,
            optim: OptimConfig::constant(1, 8, 5e-6, 0.01),
            run: RunConfig::new(5, Some(5), 200),
        }
    }
}

impl RunSettings for DpoConfig {
    const VERSION: u32 = CONFIG_VERSION;

    fn version(&self) -> u32 {
        self.version
    }

    fn shared(&self) -> (&OptimConfig, &RunConfig) {
        (&self.optim, &self.run)
    }

    fn check(&self) -> Result<()> {
        self.tune.validate()?;
        check_split(self.train_fraction, self.test_fraction)?;
        if !(self.beta > 0.0 && self.beta.is_finite()) {
            return Err(ModelError::Config(format!(
                "--beta {} must be a positive number",
                self.beta
            )));
        }
        Ok(())
    }
}

/// Loss and rewards over some batches.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DpoEval {
    pub loss: f32,
    pub chosen_reward: f32,
    pub rejected_reward: f32,
}

impl DpoEval {
    pub fn margin(&self) -> f32 {
        self.chosen_reward - self.rejected_reward
    }
}

/// Preference pairs scored against a frozen reference: DPO as a task of the run loop.
struct Preferring<'a> {
    reference: &'a Gpt,
    pad: u32,
    cfg: &'a DpoConfig,
    ctx: usize,
    train: &'a [Pair],
    val: &'a [Pair],
    output: Output<'a>,
}

/// The reward-margin plot beside the loss plot.
const MARGIN_PLOT: Plot = Plot {
    file: "margin.svg",
    train_key: "train_margin",
    val_key: "val_margin",
    title: "reward margin",
};

impl Preferring<'_> {
    /// Loss and rewards of the pairs `idx` under `policy`.
    fn batch(
        &self,
        policy: &Gpt,
        data: &[Pair],
        idx: &[usize],
        train: Option<&DropoutRng>,
    ) -> Result<(Tensor, f32, f32)> {
        let pairs: Vec<&Pair> = idx.iter().map(|&i| &data[i]).collect();
        let limit = self.cfg.max_length.unwrap_or(self.ctx).min(self.ctx);
        let dev = policy.device();
        let (c_ids, c_mask) = side(&pairs, true, self.pad, self.cfg.mask_prompt, limit, dev)?;
        let (r_ids, r_mask) = side(&pairs, false, self.pad, self.cfg.mask_prompt, limit, dev)?;
        let pc = sequence_logprobs(policy, &c_ids, &c_mask, train)?;
        let pr = sequence_logprobs(policy, &r_ids, &r_mask, train)?;
        let rc = sequence_logprobs(self.reference, &c_ids, &c_mask, None)?.detach();
        let rr = sequence_logprobs(self.reference, &r_ids, &r_mask, None)?.detach();
        dpo_loss(&pc, &pr, &rc, &rr, self.cfg.beta)
    }

    fn eval_pairs(
        &self,
        policy: &Gpt,
        data: &[Pair],
        max_batches: Option<usize>,
    ) -> Result<DpoEval> {
        let batches = Loader::in_order(data.len(), self.cfg.optim.batch_size, false, max_batches);
        let n = batches.len();
        if n == 0 {
            let nan = f32::NAN;
            return Ok(DpoEval {
                loss: nan,
                chosen_reward: nan,
                rejected_reward: nan,
            });
        }
        let mut acc = DpoEval::default();
        for idx in &batches {
            let (loss, c, r) = self.batch(policy, data, idx, None)?;
            acc.loss += loss.to_scalar::<f32>()? / n as f32;
            acc.chosen_reward += c / n as f32;
            acc.rejected_reward += r / n as f32;
        }
        Ok(acc)
    }
}

impl Task for Preferring<'_> {
    fn examples(&self) -> usize {
        self.train.len()
    }

    fn tokens(&self) -> (usize, usize) {
        (pair_tokens(self.train), pair_tokens(self.val))
    }

    fn loss(&mut self, model: &Gpt, idx: &[usize], rng: &DropoutRng) -> Result<BatchLoss> {
        let (loss, c, r) = self.batch(model, self.train, idx, Some(rng))?;
        let sizes = idx
            .iter()
            .map(|&i| self.train[i].chosen.len() + self.train[i].rejected.len());
        Ok(BatchLoss {
            loss,
            tokens: sizes.sum::<usize>() as u64,
            figures: vec![
                ("chosen_reward", c),
                ("rejected_reward", r),
                ("reward_margin", c - r),
            ],
        })
    }

    fn evaluate(&mut self, model: &Gpt, max_batches: Option<usize>) -> Result<Evaluation> {
        let te = self.eval_pairs(model, self.train, max_batches)?;
        let ve = self.eval_pairs(model, self.val, max_batches)?;
        Ok(Evaluation {
            train_loss: te.loss,
            val_loss: ve.loss,
            figures: vec![
                ("train_chosen_reward", te.chosen_reward),
                ("train_rejected_reward", te.rejected_reward),
                ("train_margin", te.margin()),
                ("val_chosen_reward", ve.chosen_reward),
                ("val_rejected_reward", ve.rejected_reward),
                ("val_margin", ve.margin()),
            ],
            note: Some(format!(
                "reward margin: train {:.3} | validation {:.3}",
                te.margin(),
                ve.margin()
            )),
            ..Default::default()
        })
    }

    /// The DPO loss falls as the margin between chosen and rejected rewards grows; unlike the
    /// mean margin, it cannot be won by pushing a few pairs far apart.
    fn best_by(&self) -> BestBy {
        BestBy::ValLoss
    }

    fn plots(&self) -> &'static [Plot] {
        &[MARGIN_PLOT]
    }

    fn save_model(&self, t: &Trainer, dir: &Path) -> Result<()> {
        self.output.save_model(t, dir)
    }
}

/// Tokens of both sides of the pairs.
fn pair_tokens(pairs: &[Pair]) -> usize {
    pairs
        .iter()
        .map(|p| p.chosen.len() + p.rejected.len())
        .sum()
}

/// What a finished DPO run measured.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DpoResults {
    pub train_pairs: usize,
    pub val_pairs: usize,
    pub test_pairs: usize,
    pub trainable_params: usize,
    pub train: DpoEval,
    pub val: DpoEval,
    pub test: DpoEval,
    pub seconds: f64,
}

/// Starts a new DPO run in `run_dir`, or resumes the one there.
pub fn finetune_dpo(
    run_dir: &Path,
    new: Option<DpoConfig>,
    obs: &mut dyn Observer,
) -> Result<(Ending, Option<DpoResults>)> {
    let started = std::time::Instant::now();
    let cfg: DpoConfig = crate::rundir::open(run_dir, new)?;
    let _autocast = scratchllm_model::kernels::Autocast::bf16(cfg.run.bf16);
    let _checkpointing =
        scratchllm_model::recompute::Checkpointing::blocks(cfg.run.checkpoint_activations);
    let device = Device::Cpu;
    let seed = cfg.optim.seed;
    let (base_cfg, base, tok) = cfg.tune.start(seed, &device)?;
    let pad = language_model_pad(&cfg.tune.model, &base_cfg, &tok)?;
    let model_cfg = GptConfig {
        drop_rate: cfg.tune.drop_rate,
        ..base_cfg.clone()
    };
    let reference = Gpt::new(
        &GptConfig {
            drop_rate: 0.0,
            ..base_cfg.clone()
        },
        &base,
    )?;
    let data = &cfg.tune.data;
    let (train_e, test_e, val_e) = split(
        read_entries(data, &["chosen", "rejected"])?,
        cfg.train_fraction,
        cfg.test_fraction,
        cfg.shuffle_split.then_some(seed),
    );
    if train_e.len() < cfg.optim.batch_size {
        return Err(err(
            data,
            format!(
                "{} training pairs for batches of {}",
                train_e.len(),
                cfg.optim.batch_size
            ),
        ));
    }
    let pairs = |es: &[Entry]| {
        es.iter()
            .map(|e| pair(e, cfg.prompt_style, &tok))
            .collect::<Result<Vec<_>>>()
    };
    let (train, val, test) = (pairs(&train_e)?, pairs(&val_e)?, pairs(&test_e)?);
    let base_tensors = base.tensors().clone();
    let settings = cfg.optim.settings(train.len(), true);
    let mut trainer = cfg
        .tune
        .trainer(&model_cfg, base.into_tensors(), seed, settings, &device)?;
    let meta = modeldir::Meta {
        classifier: None,
        prompt_style: Some(cfg.prompt_style),
    };
    let mut task = Preferring {
        reference: &reference,
        pad,
        cfg: &cfg,
        ctx: model_cfg.context_length,
        train: &train,
        val: &val,
        output: cfg.tune.output(run_dir, &model_cfg, &tok, meta),
    };
    if let Outcome::Stopped(checkpoint) =
        run::train(run_dir, &mut trainer, &mut task, &cfg.run, obs)?
    {
        return Ok((Ending::Stopped { checkpoint }, None));
    }
    let base = cfg.tune.base(&base_cfg, &base_tensors);
    let out = task.output.finish(&trainer, &base, cfg.tune.merge)?;
    let results = DpoResults {
        train_pairs: train.len(),
        val_pairs: val.len(),
        test_pairs: test.len(),
        trainable_params: trainer.trainable_params(),
        train: task.eval_pairs(&trainer.model, &train, cfg.run.eval_batches)?,
        val: task.eval_pairs(&trainer.model, &val, None)?,
        test: task.eval_pairs(&trainer.model, &test, None)?,
        seconds: started.elapsed().as_secs_f64(),
    };
    write_json(&run_dir.join("results.json"), &results)?;
    Ok((Ending::Finished { model_dir: out }, Some(results)))
}
