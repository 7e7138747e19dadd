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
//! `margin.svg`, `checkpoints/`, `model/` (or `adapter/`), `results.json`.
use crate::checkpoint;
use crate::data::Loader;
use crate::finetune::{is_preset, Base, Output, Trainable};
use crate::instruct::{read_entries, split, Entry};
use crate::metrics::Metrics;
use crate::optim::AdamWConfig;
use crate::plot::chart_svg;
use crate::pretrain::{Ending, EvalRecord, Observer};
use crate::rundir::{self, err, write_json};
use crate::trainer::{TrainSettings, Trainer};
use candle_core::{Device, Tensor, D};
use scratchllm_model::lora::{self, LoraSpec};
use scratchllm_model::{modeldir, DropoutRng, Gpt, GptConfig, ModelError, PromptStyle, Weights};
use scratchllm_tokenizer::{SpecialMode, Tokenizer, ENDOFTEXT};
use serde::{Deserialize, Serialize};
use std::cell::Cell;
use std::path::{Path, PathBuf};

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
    let prompt = tok.encode(
        &style.instruction(&e.instruction, &e.input),
        SpecialMode::AsText,
    )?;
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

/// Everything that defines a DPO run; saved as `config.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DpoConfig {
    pub version: u32,
    /// The policy's (and the reference's) starting model: a path or a preset.
    pub model: String,
    pub data: PathBuf,
    pub prompt_style: PromptStyle,
    pub train_fraction: f64,
    pub test_fraction: f64,
    pub shuffle_split: bool,
    pub max_length: Option<usize>,
    /// Score only the responses (the book's default).
    pub mask_prompt: bool,
    pub beta: f64,
    pub trainable: Trainable,
    pub lora: Option<LoraSpec>,
    pub epochs: usize,
    pub max_steps: Option<usize>,
    pub batch_size: usize,
    pub lr: f64,
    pub weight_decay: f64,
    pub seed: u64,
    pub eval_every: usize,
    pub eval_batches: Option<usize>,
    pub checkpoint_every: usize,
    pub keep_checkpoints: usize,
    pub merge: bool,
    /// Linear layers multiply in bf16 (f32 weights, optimizer and accumulation), as PyTorch's
    /// bf16 autocast.
    #[serde(default)]
    pub bf16: bool,
}

impl DpoConfig {
    /// The book's DPO settings (batch 8, lr 5e-6, beta 0.1, one epoch, evaluation every 5 steps).
    pub fn book(model: &str, data: &Path) -> Self {
        DpoConfig {
            version: CONFIG_VERSION,
            model: model.to_string(),
            data: data.to_path_buf(),
            prompt_style: PromptStyle::Alpaca,
            train_fraction: 0.85,
            test_fraction: 0.10,
            shuffle_split: false,
            max_length: None,
            mask_prompt: true,
            beta: 0.1,
            trainable: Trainable::All,
            lora: None,
            epochs: 1,
            max_steps: None,
            batch_size: 8,
            lr: 5e-6,
            weight_decay: 0.01,
            seed: 123,
            eval_every: 5,
            eval_batches: Some(5),
            checkpoint_every: 200,
            keep_checkpoints: 2,
            merge: false,
            bf16: false,
        }
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

struct Models<'a> {
    reference: &'a Gpt,
    pad: u32,
    cfg: &'a DpoConfig,
    ctx: usize,
}

impl Models<'_> {
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

    fn evaluate(&self, policy: &Gpt, data: &[Pair], max_batches: Option<usize>) -> Result<DpoEval> {
        let loader = Loader {
            batch_size: self.cfg.batch_size,
            shuffle: false,
            drop_last: false,
            seed: 0,
        };
        let batches = loader.epoch(data.len(), 0);
        let n = max_batches.map_or(batches.len(), |m| m.min(batches.len()));
        if n == 0 {
            return Ok(DpoEval {
                loss: f32::NAN,
                chosen_reward: f32::NAN,
                rejected_reward: f32::NAN,
            });
        }
        let mut acc = DpoEval::default();
        for idx in &batches[..n] {
            let (loss, c, r) = self.batch(policy, data, idx, None)?;
            acc.loss += loss.to_scalar::<f32>()? / n as f32;
            acc.chosen_reward += c / n as f32;
            acc.rejected_reward += r / n as f32;
        }
        Ok(acc)
    }
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
    let (cfg, ckpt_dir) = rundir::open(run_dir, new, CONFIG_VERSION, |c: &DpoConfig| c.version)?;
    let _autocast = scratchllm_model::kernels::Autocast::bf16(cfg.bf16);
    if cfg.batch_size == 0 || cfg.epochs == 0 || !(cfg.beta > 0.0 && cfg.beta.is_finite()) {
        return Err(ModelError::Config(
            "batch size and epochs must be at least 1, and beta positive".into(),
        ));
    }
    if (cfg.trainable == Trainable::Lora) != cfg.lora.is_some() {
        return Err(ModelError::Config(
            "LoRA settings go with trainable = lora, and only with it".into(),
        ));
    }
    let device = Device::Cpu;
    let files = modeldir::load_or_preset(&cfg.model, cfg.seed, &device)?;
    if files.config.num_classes.is_some() {
        return Err(err(
            Path::new(&cfg.model),
            "this model is a classifier; DPO needs a language model",
        ));
    }
    let tok = files.tokenizer;
    let pad = tok.special_id(ENDOFTEXT).ok_or_else(|| {
        ModelError::Config("the tokenizer has no <|endoftext|> token to pad with".into())
    })?;
    let model_cfg = GptConfig {
        drop_rate: 0.0,
        ..files.config.clone()
    };
    let reference = Gpt::new(&model_cfg, &files.weights)?;
    let entries = read_entries(&cfg.data, &["chosen", "rejected"])?;
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
                "{} training pairs for batches of {}",
                train_e.len(),
                cfg.batch_size
            ),
        ));
    }
    let pairs = |es: &[Entry]| {
        es.iter()
            .map(|e| pair(e, cfg.prompt_style, &tok))
            .collect::<Result<Vec<_>>>()
    };
    let (train, val, test) = (pairs(&train_e)?, pairs(&val_e)?, pairs(&test_e)?);
    let base_tensors = files.weights.tensors().clone();
    let mut tensors = files.weights.into_tensors();
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
        None,
        cfg.seed,
    );
    let total_steps = settings.schedule.total_steps;
    let n_layers = model_cfg.n_layers;
    let mut trainer = Trainer::partly_frozen(
        &model_cfg,
        Weights::new(tensors, "the policy"),
        cfg.lora.as_ref(),
        &|name| cfg.trainable.selects(name, n_layers),
        settings,
    )?;
    let mut state = rundir::fresh_state();
    if let Some((_, latest)) = checkpoint::list(&ckpt_dir).last() {
        state = checkpoint::load(latest, &mut trainer)?;
    }
    let mut metrics = Metrics::open(run_dir.join("metrics.jsonl"), state.step)?;
    let tokens = |d: &[Pair]| {
        d.iter()
            .map(|p| p.chosen.len() + p.rejected.len())
            .sum::<usize>()
    };
    obs.start(total_steps, state.step, tokens(&train), tokens(&val));
    let models = Models {
        reference: &reference,
        pad,
        cfg: &cfg,
        ctx: model_cfg.context_length,
    };
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
    let rewards = Cell::new((0f32, 0f32));
    let mut position = (state.epoch, state.batch);
    loop {
        let mut failure: Option<ModelError> = None;
        let (mut stop, mut due) = (false, false);
        position = trainer.run_examples(
            train.len(),
            position,
            &mut |m, idx, rng| {
                let (loss, c, r) = models.batch(m, &train, idx, Some(rng))?;
                rewards.set((c, r));
                let n = idx.iter().map(|&i| (train[i].chosen.len() + train[i].rejected.len()) as u64).sum();
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
                let (c, rj) = rewards.get();
                metrics.write(serde_json::json!({"step": r.step, "epoch": r.epoch, "train_loss": r.train_loss, "chosen_reward": c, "rejected_reward": rj, "reward_margin": c - rj, "lr": r.lr, "grad_norm": r.grad_norm, "tokens_seen": r.tokens_seen}))?;
                obs.step(r);
                let last = r.step + 1 == total_steps;
                if (cfg.eval_every > 0 && r.step % cfg.eval_every == 0) || last {
                    let te = models.evaluate(&t.model, &train, cfg.eval_batches)?;
                    let ve = models.evaluate(&t.model, &val, cfg.eval_batches)?;
                    metrics.write(serde_json::json!({"step": r.step, "tokens_seen": r.tokens_seen, "train_loss_eval": te.loss, "val_loss": ve.loss,
                        "train_chosen_reward": te.chosen_reward, "train_rejected_reward": te.rejected_reward, "train_margin": te.margin(),
                        "val_chosen_reward": ve.chosen_reward, "val_rejected_reward": ve.rejected_reward, "val_margin": ve.margin()}))?;
                    let write = |name: &str, svg: String| scratchllm_tokenizer::io::atomic_write(&run_dir.join(name), svg.as_bytes());
                    write("loss.svg", chart_svg(&metrics.points("train_loss_eval", "val_loss"), "DPO loss"))?;
                    write("margin.svg", chart_svg(&metrics.points("train_margin", "val_margin"), "reward margin"))?;
                    obs.eval(&EvalRecord {
                        step: r.step,
                        tokens_seen: r.tokens_seen,
                        train_loss: te.loss,
                        val_loss: ve.loss,
                        train_accuracy: None,
                        val_accuracy: None,
                    });
                    obs.sample(r.step, &format!("reward margin: train {:.3} | validation {:.3}", te.margin(), ve.margin()));
                    state.val_loss = Some(ve.loss);
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
        let out = output.finish(
            &trainer,
            &Base {
                source: &cfg.model,
                random: is_preset(&cfg.model),
                cfg: &model_cfg,
                tensors: &base_tensors,
            },
            cfg.merge,
        )?;
        let results = DpoResults {
            train_pairs: train.len(),
            val_pairs: val.len(),
            test_pairs: test.len(),
            trainable_params: trainer.trainable_params(),
            train: models.evaluate(&trainer.model, &train, cfg.eval_batches)?,
            val: models.evaluate(&trainer.model, &val, None)?,
            test: models.evaluate(&trainer.model, &test, None)?,
            seconds: started.elapsed().as_secs_f64(),
        };
        write_json(&run_dir.join("results.json"), &results)?;
        return Ok((Ending::Finished { model_dir: out }, Some(results)));
    }
}
