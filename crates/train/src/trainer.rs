//! A model under training with its optimizer: one optimizer step — forward and backward over
//! `grad_accum` micro-batches (losses averaged), the gradient norm measured (and clipped when
//! asked: from the first step, or only once warmup is over as the book's appendix D does), the
//! learning rate set from the schedule, and one AdamW update — and the order of those steps over
//! epochs and batches ([`TrainSettings::groups`]). Evaluation, checkpoints and every other part of
//! a run are the run loop's ([`crate::run`]); [`Trainer::run`] is the bare chapter 5 loop.
use crate::data::{batch_tensors, Loader, Windows};
use crate::optim::{clip_coef, global_norm, AdamW, AdamWConfig, Schedule};
use candle_core::{Device, Tensor, Var};
use scratchllm_model::{DropoutRng, Gpt, GptConfig, LoraSpec, Weights};
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

/// One optimizer step's share of the data: its micro-batches (example indices), where it is, and
/// where the data resumes after it.
#[derive(Clone, Debug, PartialEq)]
pub struct Group {
    pub epoch: usize,
    pub batches: Vec<Vec<usize>>,
    /// (epoch, batch within the epoch) of the next step's first batch.
    pub next: (usize, usize),
    /// The last step of its epoch.
    pub epoch_end: bool,
}

impl TrainSettings {
    /// The steps over `n` examples from batch `start.1` of epoch `start.0` to the end of the
    /// epochs: each step's `grad_accum` batches (fewer at an epoch's end), in the loader's order.
    pub fn groups(&self, n: usize, start: (usize, usize)) -> impl Iterator<Item = Group> + '_ {
        let accum = self.grad_accum.max(1);
        (start.0..self.epochs).flat_map(move |epoch| {
            let batches = self.loader.epoch(n, epoch);
            let skip = if epoch == start.0 { start.1 } else { 0 };
            let len = batches.len();
            let mut at = skip.min(len);
            let mut groups = Vec::new();
            while at < len {
                let end = (at + accum).min(len);
                groups.push(Group {
                    epoch,
                    batches: batches[at..end].to_vec(),
                    next: (epoch, end),
                    epoch_end: end == len,
                });
                at = end;
            }
            groups
        })
    }
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

impl StepRecord {
    /// Whether the loss and the gradient norm are finite (else the step was not applied).
    pub fn is_finite(&self) -> bool {
        self.train_loss.is_finite() && self.grad_norm.is_finite()
    }
}

/// A model being trained, with its optimizer.
pub struct Trainer {
    pub model: Gpt,
    pub opt: AdamW,
    pub settings: TrainSettings,
    pub step: usize,
    pub tokens_seen: u64,
    /// Weights the optimizer does not touch (fine-tuning freezes most of the model).
    pub frozen: HashMap<String, Tensor>,
}

fn decays(name: &str) -> bool {
    !(name.ends_with(".bias") || name.ends_with(".scale") || name.ends_with(".shift"))
}

/// The loss of micro-batch `k` of a step under the model, and the tokens it covers.
pub type MicroLoss<'a> = dyn FnMut(&Gpt, usize, &DropoutRng) -> Result<(Tensor, u64)> + 'a;

/// The mean cross-entropy of next-token predictions `y` for inputs `x`.
pub fn lm_loss(model: &Gpt, x: &Tensor, y: &Tensor, train: Option<&DropoutRng>) -> Result<Tensor> {
    let targets: Vec<i64> = y
        .flatten_all()?
        .to_vec1::<u32>()?
        .into_iter()
        .map(i64::from)
        .collect();
    model.lm_loss(x, &targets, crate::loss::IGNORE_INDEX, train)
}

impl Trainer {
    /// Makes every weight trainable and builds the model over them.
    pub fn new(cfg: &GptConfig, weights: Weights, settings: TrainSettings) -> Result<Self> {
        Self::partly_frozen(cfg, weights, None, &|_| true, settings)
    }

    /// Trains the weights `trainable` selects (by name) and freezes the rest; the model is built
    /// with `lora`'s scaling for any adapters among the weights.
    pub fn partly_frozen(
        cfg: &GptConfig,
        weights: Weights,
        lora: Option<&LoraSpec>,
        trainable: &dyn Fn(&str) -> bool,
        settings: TrainSettings,
    ) -> Result<Self> {
        let mut names: Vec<String> = weights.tensors().keys().cloned().collect();
        names.sort();
        let mut vars = Vec::with_capacity(names.len());
        let mut tensors = HashMap::new();
        let mut frozen = HashMap::new();
        for name in names {
            let t = &weights.tensors()[&name];
            if trainable(&name) {
                let var = Var::from_tensor(t)?;
                tensors.insert(name.clone(), var.as_tensor().clone());
                vars.push((name, var));
            } else {
                tensors.insert(name.clone(), t.clone());
                frozen.insert(name, t.clone());
            }
        }
        if vars.is_empty() {
            return Err(scratchllm_model::ModelError::Config(
                "nothing to train: no weight is trainable".into(),
            ));
        }
        let model = Gpt::with_lora(cfg, &Weights::new(tensors, "trainable weights"), lora)?;
        let exempt = settings.no_decay_bias_norm;
        let opt = AdamW::new(vars, settings.adamw.clone(), &|n| !exempt || decays(n));
        Ok(Trainer {
            model,
            opt,
            settings,
            step: 0,
            tokens_seen: 0,
            frozen,
        })
    }

    /// Mean cross-entropy of the next-token predictions of a batch.
    pub fn loss(&self, x: &Tensor, y: &Tensor, train: Option<&DropoutRng>) -> Result<Tensor> {
        lm_loss(&self.model, x, y, train)
    }

    /// One optimizer step over micro-batches `(inputs, targets)`.
    pub fn train_step(&mut self, micro: &[(Tensor, Tensor)], epoch: usize) -> Result<StepRecord> {
        self.step_with(micro.len(), epoch, &mut |m, k, rng| {
            let (x, y) = &micro[k];
            Ok((lm_loss(m, x, y, Some(rng))?, x.elem_count() as u64))
        })
    }

    /// One optimizer step over `n_micro` micro-batches, whose losses `micro_loss` computes; the
    /// losses are averaged. A step whose loss or gradient norm is not finite is not applied: the
    /// weights and the optimizer stay as they were, and the record says so ([`StepRecord::is_finite`]).
    pub fn step_with(
        &mut self,
        n_micro: usize,
        epoch: usize,
        micro_loss: &mut MicroLoss,
    ) -> Result<StepRecord> {
        let n = n_micro.max(1) as f64;
        let mut grads: Vec<Option<Tensor>> = vec![None; self.opt.params.len()];
        let mut total_loss = 0.0;
        for k in 0..n_micro {
            // Masks depend on the run's seed, the step and the micro-batch only (resumable).
            let rng = DropoutRng::new(
                self.settings.loader.seed
                    ^ ((self.step as u64) << 8 | k as u64).wrapping_mul(0xd6e8_feb8_6659_fd93),
            );
            let (loss, tokens) = micro_loss(&self.model, k, &rng)?;
            let loss = (loss / n)?;
            total_loss += loss.to_scalar::<f32>()? as f64;
            let mut store = loss.backward()?;
            scratchllm_model::recompute::merge_grads(&mut store)?;
            for (slot, p) in grads.iter_mut().zip(&self.opt.params) {
                // Detached: a gradient keeps the op that made it, and with it the graph.
                if let Some(g) = store.remove(p.var.as_tensor()).map(|g| g.detach()) {
                    *slot = Some(match slot.take() {
                        Some(acc) => (acc + g)?,
                        None => g,
                    });
                }
            }
            drop(store);
            self.tokens_seen += tokens;
        }
        let s = &self.settings;
        let grad_norm = global_norm(&grads)?;
        let lr = s.schedule.lr(self.step);
        let record = StepRecord {
            step: self.step,
            epoch,
            train_loss: total_loss as f32,
            lr,
            grad_norm,
            tokens_seen: self.tokens_seen,
        };
        if !record.is_finite() {
            return Ok(record);
        }
        let grad_scale = match s.grad_clip {
            Some(max) if !s.clip_after_warmup || self.step >= s.schedule.warmup_steps => {
                clip_coef(grad_norm, max)
            }
            _ => 1.0,
        };
        self.opt.cfg.lr = lr;
        self.opt.update(&grads, grad_scale)?;
        drop(grads);
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
        let mut batches = loader.epoch(w.len(), 0);
        batches.truncate(max_batches.unwrap_or(usize::MAX));
        crate::pretrain::windows_loss(&self.model, w, &batches)
    }

    /// Trains on language-model windows for the configured epochs (or steps) from the start,
    /// calling `on_step` after each step; without evaluation, checkpoints or outputs (those are
    /// [`crate::run::train`]'s).
    pub fn run(
        &mut self,
        train: &Windows,
        on_step: &mut dyn FnMut(&Trainer, &StepRecord) -> Result<()>,
    ) -> Result<()> {
        let device = self.model.device().clone();
        let groups: Vec<Group> = self.settings.groups(train.len(), (0, 0)).collect();
        for group in groups {
            if self.settings.max_steps.is_some_and(|m| self.step >= m) {
                break;
            }
            let record = self.step_with(group.batches.len(), group.epoch, &mut |m, k, rng| {
                let (x, y) = batch_tensors(train, &group.batches[k], &device)?;
                Ok((lm_loss(m, &x, &y, Some(rng))?, x.elem_count() as u64))
            })?;
            on_step(self, &record)?;
        }
        Ok(())
    }

    /// The global L2 norm of the trained weights (not finite when any weight is not).
    pub fn weight_norm(&self) -> Result<f64> {
        let mut sum = 0.0;
        for p in &self.opt.params {
            sum += scratchllm_model::kernels::sum_of_squares(p.var.as_tensor())?;
        }
        Ok(sum.sqrt())
    }

    /// The current weights by name, frozen ones included.
    pub fn weights(&self) -> HashMap<String, Tensor> {
        let mut all = self.trainable_weights();
        all.extend(self.frozen.iter().map(|(n, t)| (n.clone(), t.clone())));
        all
    }

    /// The weights being trained, by name.
    pub fn trainable_weights(&self) -> HashMap<String, Tensor> {
        self.opt
            .params
            .iter()
            .map(|p| (p.name.clone(), p.var.as_tensor().clone()))
            .collect()
    }

    /// Number of trainable parameters.
    pub fn trainable_params(&self) -> usize {
        self.opt.params.iter().map(|p| p.var.elem_count()).sum()
    }

    pub fn device(&self) -> &Device {
        self.model.device()
    }
}
