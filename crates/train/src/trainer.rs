//! The pretraining loop (the book's `train_model_simple`, chapter 5, and `train_model`, appendix D).
//!
//! Each step: forward and backward over `grad_accum` micro-batches (losses averaged), the gradient
//! norm measured (and clipped when asked: from the first step, or only once warmup is over as
//! appendix D does), the learning rate set from the schedule, and one AdamW update.
use crate::data::{batch_tensors, Loader, Windows};
use crate::optim::{clip, global_norm, AdamW, AdamWConfig, Schedule};
use candle_core::{Device, Tensor, Var};
use scratchllm_model::{DropoutRng, Gpt, GptConfig, Weights};
use std::collections::HashMap;

pub type Result<T, E = scratchllm_model::ModelError> = std::result::Result<T, E>;

/// How to train.
#[derive(Clone, Debug)]
pub struct TrainSettings {
    pub epochs: usize,
    /// Stop after this many optimizer steps, whatever the epochs.
    pub max_steps: Option<usize>,
    pub loader: Loader,
    pub adamw: AdamWConfig,
    pub schedule: Schedule,
    /// Clip the global gradient norm to this.
    pub grad_clip: Option<f32>,
    /// Clip only from the end of warmup (appendix D).
    pub clip_after_warmup: bool,
    pub grad_accum: usize,
    /// Exempt biases and norm parameters from weight decay (the book decays everything).
    pub no_decay_bias_norm: bool,
}

/// What one optimizer step did.
#[derive(Clone, Debug, PartialEq)]
pub struct StepRecord {
    /// 0-based.
    pub step: usize,
    pub epoch: usize,
    pub train_loss: f32,
    pub lr: f64,
    /// Before clipping.
    pub grad_norm: f32,
    pub tokens_seen: u64,
}

/// A model being trained, with its optimizer.
pub struct Trainer {
    pub model: Gpt,
    pub opt: AdamW,
    pub settings: TrainSettings,
    pub step: usize,
    pub tokens_seen: u64,
}

fn decays(name: &str) -> bool {
    !(name.ends_with(".bias") || name.ends_with(".scale") || name.ends_with(".shift"))
}

impl Trainer {
    /// Makes every weight trainable and builds the model over them.
    pub fn new(cfg: &GptConfig, weights: Weights, settings: TrainSettings) -> Result<Self> {
        let mut names: Vec<String> = weights.tensors().keys().cloned().collect();
        names.sort();
        let mut vars = Vec::with_capacity(names.len());
        let mut tensors = HashMap::new();
        for name in names {
            let var = Var::from_tensor(&weights.tensors()[&name])?;
            tensors.insert(name.clone(), var.as_tensor().clone());
            vars.push((name, var));
        }
        let model = Gpt::new(cfg, &Weights::new(tensors, "trainable weights"))?;
        let exempt = settings.no_decay_bias_norm;
        let opt = AdamW::new(vars, settings.adamw.clone(), &|n| !exempt || decays(n));
        Ok(Trainer {
            model,
            opt,
            settings,
            step: 0,
            tokens_seen: 0,
        })
    }

    /// Mean cross-entropy of the next-token predictions of a batch.
    pub fn loss(&self, x: &Tensor, y: &Tensor, train: Option<&DropoutRng>) -> Result<Tensor> {
        let logits = self.model.forward(x, train)?.flatten_to(1)?; // (B*T, V)
        let targets: Vec<i64> = y
            .flatten_all()?
            .to_vec1::<u32>()?
            .into_iter()
            .map(i64::from)
            .collect();
        Ok(crate::loss::cross_entropy(
            &logits,
            &targets,
            crate::loss::IGNORE_INDEX,
        )?)
    }

    /// One optimizer step over micro-batches `(inputs, targets)`.
    pub fn train_step(&mut self, micro: &[(Tensor, Tensor)], epoch: usize) -> Result<StepRecord> {
        let n = micro.len().max(1) as f64;
        let mut grads: Vec<Option<Vec<f32>>> = vec![None; self.opt.params.len()];
        let mut total_loss = 0.0;
        for (k, (x, y)) in micro.iter().enumerate() {
            // Masks depend on the run's seed, the step and the micro-batch only (resumable).
            let rng = DropoutRng::new(
                self.settings.loader.seed
                    ^ ((self.step as u64) << 8 | k as u64).wrapping_mul(0xd6e8_feb8_6659_fd93),
            );
            let loss = (self.loss(x, y, Some(&rng))? / n)?;
            total_loss += loss.to_scalar::<f32>()? as f64;
            let store = loss.backward()?;
            for (slot, p) in grads.iter_mut().zip(&self.opt.params) {
                if let Some(g) = store.get(p.var.as_tensor()) {
                    let g: Vec<f32> = g.flatten_all()?.to_vec1()?;
                    match slot {
                        Some(acc) => acc.iter_mut().zip(&g).for_each(|(a, b)| *a += b),
                        None => *slot = Some(g),
                    }
                }
            }
            self.tokens_seen += x.elem_count() as u64;
        }
        let s = &self.settings;
        let grad_norm = match s.grad_clip {
            Some(max) if !s.clip_after_warmup || self.step >= s.schedule.warmup_steps => {
                clip(&mut grads, max)
            }
            _ => global_norm(&grads),
        };
        let lr = s.schedule.lr(self.step);
        self.opt.cfg.lr = lr;
        self.opt.update(&grads)?;
        let record = StepRecord {
            step: self.step,
            epoch,
            train_loss: total_loss as f32,
            lr,
            grad_norm,
            tokens_seen: self.tokens_seen,
        };
        self.step += 1;
        Ok(record)
    }

    /// Mean batch loss over the first `max_batches` batches (all when `None`), dropout off.
    pub fn evaluate(
        &self,
        w: &Windows,
        loader: &Loader,
        max_batches: Option<usize>,
    ) -> Result<f32> {
        let batches = loader.epoch(w.len(), 0);
        let n = max_batches.map_or(batches.len(), |m| m.min(batches.len()));
        if n == 0 {
            return Ok(f32::NAN);
        }
        let mut total = 0.0f64;
        for idx in &batches[..n] {
            let (x, y) = batch_tensors(w, idx, self.model.device())?;
            total += self.loss(&x, &y, None)?.to_scalar::<f32>()? as f64;
        }
        Ok((total / n as f64) as f32)
    }

    /// Trains from batch `start_batch` of epoch `start_epoch` to the end of the configured epochs
    /// (or `max_steps`), calling `on_step` after each step; `on_step` returns `false` to stop early.
    /// Returns the position to resume from: (epoch, batch within the epoch).
    pub fn run_from(
        &mut self,
        train: &Windows,
        start: (usize, usize),
        on_step: &mut dyn FnMut(&Trainer, &StepRecord) -> Result<bool>,
    ) -> Result<(usize, usize)> {
        let accum = self.settings.grad_accum.max(1);
        let device = self.model.device().clone();
        for epoch in start.0..self.settings.epochs {
            let batches = self.settings.loader.epoch(train.len(), epoch);
            let skip = if epoch == start.0 { start.1 } else { 0 };
            let mut at = skip;
            for group in batches[skip.min(batches.len())..].chunks(accum) {
                if self.settings.max_steps.is_some_and(|m| self.step >= m) {
                    return Ok((epoch, at));
                }
                let micro = group
                    .iter()
                    .map(|idx| batch_tensors(train, idx, &device))
                    .collect::<candle_core::Result<Vec<_>>>()?;
                let record = self.train_step(&micro, epoch)?;
                at += group.len();
                if !on_step(self, &record)? {
                    return Ok((epoch, at));
                }
            }
        }
        Ok((self.settings.epochs, 0))
    }

    /// Trains for the configured epochs (or steps) from the start.
    pub fn run(
        &mut self,
        train: &Windows,
        on_step: &mut dyn FnMut(&Trainer, &StepRecord) -> Result<()>,
    ) -> Result<()> {
        self.run_from(train, (0, 0), &mut |t, r| on_step(t, r).map(|_| true))?;
        Ok(())
    }

    /// The current weights by name.
    pub fn weights(&self) -> HashMap<String, Tensor> {
        self.opt
            .params
            .iter()
            .map(|p| (p.name.clone(), p.var.as_tensor().clone()))
            .collect()
    }

    pub fn device(&self) -> &Device {
        self.model.device()
    }
}
