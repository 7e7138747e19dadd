//! The one run loop every training task uses — pretraining, classification, instruction tuning and
//! DPO: the steps over epochs and batches (with gradient accumulation), the stop on a non-finite
//! step, evaluation, `metrics.jsonl` and its plots, the best model in `best/`, checkpoints with
//! pruning, exact resume, and a clean stop when the observer asks (Ctrl-C, SIGTERM).
//!
//! A [`Task`] supplies only what differs: how many examples it trains on, the loss of a batch of
//! them, its evaluation, how its best model is chosen, and how a model is saved. The loop is the
//! book's `train_model_simple` (chapter 5), which every later chapter reuses:
//!
//! - Evaluation, the same rule for every task: after step `s` (0-based) when `s % eval_every == 0`
//!   (the book's `global_step % eval_freq == 0`), at the end of each epoch when `eval_every` is 0,
//!   and always after the last step.
//! - `best/`: the model of the best evaluation so far, by [`BestBy`]; an evaluation whose figure is
//!   not finite never counts.
//! - A step whose loss or gradient norm is not finite is not applied: the run stops with an error,
//!   and no checkpoint or `best/` is written from it. A checkpoint is only written from finite
//!   weights.
//! - Checkpoints: every `checkpoint_every` steps, on a stop, and at the end; the newest
//!   `keep_checkpoints` are kept.
use crate::checkpoint::{self, RunState};
use crate::metrics::Metrics;
use crate::plot::chart_svg;
use crate::settings::RunConfig;
use crate::trainer::{StepRecord, Trainer};
use candle_core::Tensor;
use scratchllm_model::{DropoutRng, Gpt, ModelError};
use scratchllm_tokenizer::io::atomic_write;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

pub type Result<T, E = ModelError> = std::result::Result<T, E>;

/// One evaluation, as the observer sees it.
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
    /// Steps the run will take in all, the step it starts at, and the tokens of each split.
    fn start(
        &mut self,
        total_steps: usize,
        first_step: usize,
        train_tokens: usize,
        val_tokens: usize,
    );
    fn step(&mut self, r: &StepRecord);
    fn eval(&mut self, r: &EvalRecord);
    /// A line of text after an evaluation: pretraining's sample, DPO's reward margins.
    fn sample(&mut self, step: usize, text: &str);
    fn checkpoint(&mut self, path: &Path);
    /// Polled after every step; `true` stops the run after a checkpoint (Ctrl-C, SIGTERM).
    fn stop_requested(&self) -> bool;
}

/// How a run ended.
#[derive(Clone, Debug, PartialEq)]
pub enum Ending {
    Finished { model_dir: PathBuf },
    Stopped { checkpoint: PathBuf },
}

/// What the loop hands back to its task.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// Every step is done; the task writes its final outputs.
    Finished,
    /// Stopped on request after writing this checkpoint.
    Stopped(PathBuf),
}

/// What a task's evaluation measured.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Evaluation {
    pub train_loss: f32,
    pub val_loss: f32,
    pub train_accuracy: Option<f32>,
    pub val_accuracy: Option<f32>,
    /// Further figures for `metrics.jsonl`, by name (DPO's rewards and margins).
    pub figures: Vec<(&'static str, f32)>,
    /// A line to show after the evaluation (pretraining's sample text, DPO's margins).
    pub note: Option<String>,
}

/// How a task picks the model it keeps in `best/`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BestBy {
    /// The lowest validation loss (pretraining, instruction tuning; DPO by its validation loss).
    ValLoss,
    /// The highest validation accuracy; among equals, the lowest validation loss (classifiers).
    ValAccuracy,
}

/// One batch's loss, the tokens it covered and any further figures (averaged over micro-batches).
pub struct BatchLoss {
    pub loss: Tensor,
    pub tokens: u64,
    pub figures: Vec<(&'static str, f32)>,
}

/// A plot written after each evaluation: `file` charts `train_key` and `val_key` of the
/// evaluation lines of `metrics.jsonl` against tokens seen.
pub struct Plot {
    pub file: &'static str,
    pub train_key: &'static str,
    pub val_key: &'static str,
    pub title: &'static str,
}

/// The loss plot every task writes.
pub const LOSS_PLOT: Plot = Plot {
    file: "loss.svg",
    train_key: "train_loss_eval",
    val_key: "val_loss",
    title: "loss",
};

/// What differs between training tasks.
pub trait Task {
    /// Training examples; batches are drawn from `0..examples()`.
    fn examples(&self) -> usize;
    /// Tokens in the training and validation splits (reported at the start).
    fn tokens(&self) -> (usize, usize);
    /// The loss of the training examples `idx` under `model`, dropout drawn from `rng`.
    fn loss(&mut self, model: &Gpt, idx: &[usize], rng: &DropoutRng) -> Result<BatchLoss>;
    /// Loss (and accuracy, figures) on the first `max_batches` batches of each split (all when
    /// `None`), dropout off.
    fn evaluate(&mut self, model: &Gpt, max_batches: Option<usize>) -> Result<Evaluation>;
    fn best_by(&self) -> BestBy;
    /// Plots beyond [`LOSS_PLOT`].
    fn plots(&self) -> &'static [Plot] {
        &[]
    }
    /// Writes the trainer's model as a model directory (for `best/`).
    fn save_model(&self, trainer: &Trainer, dir: &Path) -> Result<()>;
}

/// Runs `task` with `trainer` in `run_dir` from its newest checkpoint (if any) to the end of the
/// configured steps, or until the observer asks to stop.
pub fn train(
    run_dir: &Path,
    trainer: &mut Trainer,
    task: &mut dyn Task,
    cfg: &RunConfig,
    obs: &mut dyn Observer,
) -> Result<Outcome> {
    let ckpt_dir = run_dir.join("checkpoints");
    let total = trainer.settings.schedule.total_steps;
    let n = task.examples();
    if total == 0 {
        let s = &trainer.settings;
        return Err(ModelError::Config(format!(
            "{n} training examples make no full batch of {} x {} accumulated: the run would take no step; lower --batch-size (or --grad-accum), or add data",
            s.loader.batch_size, s.grad_accum
        )));
    }
    let mut state = resume(&ckpt_dir, trainer)?;
    let mut run = Run {
        dir: run_dir,
        ckpt_dir: &ckpt_dir,
        cfg,
        metrics: Metrics::open(run_dir.join("metrics.jsonl"), state.step)?,
        saved: None,
    };
    let (train_tokens, val_tokens) = task.tokens();
    // Measured before any step (after the steps' work it can come out lower), kept for the run.
    scratchllm_model::kernels::peak::training_peak(scratchllm_model::kernels::autocast_bf16());
    obs.start(total, state.step, train_tokens, val_tokens);
    let settings = trainer.settings.clone();
    // Where the data resumes after the latest step.
    let mut next = (state.epoch, state.batch);
    for group in settings.groups(n, next) {
        if trainer.step >= total {
            break;
        }
        run.saved = None;
        let mut figures: Vec<Vec<(&'static str, f32)>> = Vec::new();
        let (started, seen) = (std::time::Instant::now(), trainer.tokens_seen);
        let record = trainer.step_with(group.batches.len(), group.epoch, &mut |m, k, rng| {
            let b = task.loss(m, &group.batches[k], rng)?;
            figures.push(b.figures);
            Ok((b.loss, b.tokens))
        })?;
        if !record.is_finite() {
            return Err(run.non_finite(&record));
        }
        next = group.next;
        let speed = Speed::of(trainer, record.tokens_seen - seen, started.elapsed());
        run.metrics
            .write(step_line(&record, &mean_figures(&figures), &speed))?;
        obs.step(&record);
        let every = cfg.eval_every;
        let last = trainer.step >= total;
        if (every > 0 && record.step.is_multiple_of(every))
            || (every == 0 && group.epoch_end)
            || last
        {
            run.evaluate(trainer, task, &mut state, &record, obs)?;
        }
        let stop = obs.stop_requested();
        let due = cfg.checkpoint_every > 0 && trainer.step.is_multiple_of(cfg.checkpoint_every);
        if stop || due {
            run.checkpoint(trainer, &mut state, next, obs)?;
        }
        if stop && !last {
            return Ok(Outcome::Stopped(run.saved.unwrap_or_default()));
        }
    }
    if run.saved.is_none() {
        run.checkpoint(trainer, &mut state, next, obs)?;
    }
    Ok(Outcome::Finished)
}

/// The run's outputs while it goes.
struct Run<'a> {
    dir: &'a Path,
    ckpt_dir: &'a Path,
    cfg: &'a RunConfig,
    metrics: Metrics,
    /// The checkpoint written after the latest step, if one was.
    saved: Option<PathBuf>,
}

impl Run<'_> {
    fn evaluate(
        &mut self,
        trainer: &Trainer,
        task: &mut dyn Task,
        state: &mut RunState,
        r: &StepRecord,
        obs: &mut dyn Observer,
    ) -> Result<()> {
        let e = task.evaluate(&trainer.model, self.cfg.eval_batches)?;
        let mut line = json!({"step": r.step, "epoch": r.epoch, "tokens_seen": r.tokens_seen,
                              "train_loss_eval": e.train_loss, "val_loss": e.val_loss});
        if let (Some(ta), Some(va)) = (e.train_accuracy, e.val_accuracy) {
            line["train_accuracy"] = json!(ta);
            line["val_accuracy"] = json!(va);
        }
        for (name, v) in &e.figures {
            line[*name] = json!(v);
        }
        self.metrics.write(line)?;
        for p in std::iter::once(&LOSS_PLOT).chain(task.plots()) {
            let points = self.metrics.points(p.train_key, p.val_key);
            atomic_write(
                &self.dir.join(p.file),
                chart_svg(&points, p.title).as_bytes(),
            )?;
        }
        obs.eval(&EvalRecord {
            step: r.step,
            tokens_seen: r.tokens_seen,
            train_loss: e.train_loss,
            val_loss: e.val_loss,
            train_accuracy: e.train_accuracy,
            val_accuracy: e.val_accuracy,
        });
        if let Some(note) = &e.note {
            obs.sample(r.step, note);
        }
        state.val_loss = Some(e.val_loss);
        if is_better(task.best_by(), &e, state) {
            state.best_val_loss = Some(e.val_loss);
            state.best_val_accuracy = e.val_accuracy;
            state.best_step = Some(r.step + 1);
            task.save_model(trainer, &self.dir.join("best"))?;
        }
        Ok(())
    }

    /// Writes a checkpoint of the trainer at data position `next` (refusing non-finite weights)
    /// and prunes the old ones.
    fn checkpoint(
        &mut self,
        trainer: &Trainer,
        state: &mut RunState,
        next: (usize, usize),
        obs: &mut dyn Observer,
    ) -> Result<()> {
        let norm = trainer.weight_norm()?;
        if !norm.is_finite() {
            return Err(ModelError::Config(format!(
                "after step {} the weights are not finite (norm {norm}); no checkpoint was written. {}",
                trainer.step,
                self.restart_hint()
            )));
        }
        let saved = crate::rundir::checkpoint_at(
            self.ckpt_dir,
            trainer,
            state,
            next,
            self.cfg.keep_checkpoints,
        )?;
        obs.checkpoint(&saved);
        self.saved = Some(saved);
        Ok(())
    }

    fn non_finite(&self, r: &StepRecord) -> ModelError {
        ModelError::Config(format!(
            "step {}: the loss ({}) or gradient norm ({}) is not finite; the run stopped without applying it. {}",
            r.step,
            r.train_loss,
            r.grad_norm,
            self.restart_hint()
        ))
    }

    /// What is kept, and how to go on: resuming would repeat the same steps, so settings change.
    fn restart_hint(&self) -> String {
        let fix = "start a new run (another --out) with a lower --lr, or with --grad-clip or --warmup-steps";
        match checkpoint::list(self.ckpt_dir).last() {
            Some((step, path)) => format!(
                "The last checkpoint, {} (step {step}), is intact; resuming repeats the same steps, so {fix}",
                path.display()
            ),
            None => format!("No checkpoint was written yet; {fix}"),
        }
    }
}

/// Whether evaluation `e` beats the best so far; non-finite figures never do.
fn is_better(by: BestBy, e: &Evaluation, state: &RunState) -> bool {
    let loss_better = |best: Option<f32>| best.is_none_or(|b| e.val_loss < b);
    if !e.val_loss.is_finite() {
        return false;
    }
    match by {
        BestBy::ValLoss => loss_better(state.best_val_loss),
        BestBy::ValAccuracy => {
            let Some(acc) = e.val_accuracy.filter(|a| a.is_finite()) else {
                return false;
            };
            state.best_val_accuracy.is_none_or(|a| acc > a)
                || (state.best_val_accuracy == Some(acc) && loss_better(state.best_val_loss))
        }
    }
}

/// The state of the newest checkpoint in `ckpt_dir`, loaded into the trainer; a fresh state when
/// there is none. A damaged newest checkpoint is an error that names the previous intact one.
fn resume(ckpt_dir: &Path, trainer: &mut Trainer) -> Result<RunState> {
    let all = checkpoint::list(ckpt_dir);
    let Some((_, newest)) = all.last() else {
        return Ok(crate::rundir::fresh_state());
    };
    let damage = match checkpoint::load(newest, trainer) {
        Ok(state) => return Ok(state),
        Err(e) => e,
    };
    let previous = all[..all.len() - 1]
        .iter()
        .rev()
        .find(|(_, p)| checkpoint::load(p, trainer).is_ok());
    let offer = match previous {
        Some((step, p)) => format!(
            "the previous checkpoint, {} (step {step}), is intact: move the damaged one out of {} and resume again to continue from it",
            p.display(),
            ckpt_dir.display()
        ),
        None => "no earlier intact checkpoint is left; start the run again".into(),
    };
    Err(ModelError::File {
        path: newest.clone(),
        message: format!("this checkpoint is damaged ({damage}); {offer}"),
    })
}

/// A step's speed: tokens per second, and the model FLOPs utilization (the model's training FLOPs
/// per token at its context length, see `GptConfig::train_flops_per_token`, over the measured peak
/// of the instructions its products use; frozen weights and padding are counted as computed).
struct Speed {
    tokens_per_s: f64,
    mfu: f64,
}

impl Speed {
    fn of(trainer: &Trainer, tokens: u64, took: std::time::Duration) -> Speed {
        let tokens_per_s = tokens as f64 / took.as_secs_f64().max(1e-9);
        let cfg = trainer.model.config();
        let flops = cfg.train_flops_per_token(cfg.context_length) * tokens_per_s;
        let peak = scratchllm_model::kernels::peak::training_peak(
            scratchllm_model::kernels::autocast_bf16(),
        );
        Speed {
            tokens_per_s,
            mfu: flops / 1e9 / peak.gflops,
        }
    }
}

fn step_line(r: &StepRecord, figures: &[(&'static str, f32)], speed: &Speed) -> Value {
    let mut line = json!({"step": r.step, "epoch": r.epoch, "train_loss": r.train_loss,
                          "lr": r.lr, "grad_norm": r.grad_norm, "tokens_seen": r.tokens_seen,
                          "tokens_per_s": speed.tokens_per_s, "mfu": speed.mfu});
    for (name, v) in figures {
        line[*name] = json!(v);
    }
    line
}

/// Each figure's mean over the micro-batches of a step.
fn mean_figures(per_micro: &[Vec<(&'static str, f32)>]) -> Vec<(&'static str, f32)> {
    let Some(first) = per_micro.first() else {
        return Vec::new();
    };
    let n = per_micro.len() as f32;
    first
        .iter()
        .enumerate()
        .map(|(i, (name, _))| {
            let sum: f32 = per_micro.iter().filter_map(|f| f.get(i)).map(|f| f.1).sum();
            (*name, sum / n)
        })
        .collect()
}
