//! What every training command shows and how it stops: a progress bar with one line per step and
//! evaluation ([`Terminal`], the run loop's observer), Ctrl-C and SIGTERM asking the run to stop
//! after the current step with a checkpoint (a second Ctrl-C leaves at once), and the closing
//! report ([`report`]): where the model is, or how to resume — an interrupted run exits with 130.
use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use scratchllm_train::classify::{ClassifyObserver, RunInfo};
use scratchllm_train::{Ending, EvalRecord, Observer, StepRecord};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// A training run that stopped on a signal, with a checkpoint: `main` prints the message and
/// exits with 130, as shells expect of an interrupted program.
#[derive(Debug)]
pub struct Interrupted(pub String);

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Interrupted {}

/// Terminal progress: a bar, one line per step above it.
pub struct Terminal {
    pub bar: ProgressBar,
    stop: Arc<AtomicBool>,
    last: Instant,
    last_tokens: u64,
}

impl Terminal {
    /// A progress display; SIGINT (Ctrl-C) and SIGTERM ask the run to stop after this step.
    pub fn new() -> Result<Self> {
        use signal_hook::consts::{SIGINT, SIGTERM};
        let stop = Arc::new(AtomicBool::new(false));
        // A second Ctrl-C while the checkpoint is written leaves at once.
        signal_hook::flag::register_conditional_shutdown(SIGINT, 130, stop.clone())
            .and_then(|_| signal_hook::flag::register(SIGINT, stop.clone()))
            .and_then(|_| signal_hook::flag::register(SIGTERM, stop.clone()))
            .context("installing the Ctrl-C and SIGTERM handlers")?;
        let bar = ProgressBar::new(0);
        if let Ok(style) = ProgressStyle::with_template("{bar:40} {pos}/{len} steps, eta {eta}") {
            bar.set_style(style);
        }
        Ok(Terminal {
            bar,
            stop,
            last: Instant::now(),
            last_tokens: 0,
        })
    }

    /// A line above the bar; plain standard error when there is no terminal to draw a bar on.
    pub fn line(&self, text: String) {
        if self.bar.is_hidden() {
            eprintln!("{text}");
        } else {
            self.bar.println(text);
        }
    }
}

impl Observer for Terminal {
    fn start(&mut self, total: usize, first: usize, train_tokens: usize, val_tokens: usize) {
        self.bar.set_length(total as u64);
        self.bar.set_position(first as u64);
        self.line(format!(
            "training on {train_tokens} tokens, validating on {val_tokens}; {total} steps{}",
            if first > 0 {
                format!(", resuming at step {first}")
            } else {
                String::new()
            }
        ));
        self.last = Instant::now();
    }

    fn step(&mut self, r: &StepRecord) {
        let secs = self.last.elapsed().as_secs_f64().max(1e-9);
        let tps = (r.tokens_seen.saturating_sub(self.last_tokens)) as f64 / secs;
        self.last = Instant::now();
        self.last_tokens = r.tokens_seen;
        self.bar.set_position(r.step as u64 + 1);
        let eta = self.bar.eta().as_secs();
        self.line(format!(
            "step {:>6} | epoch {:>3} | loss {:.4} (ppl {:.1}) | lr {:.2e} | grad {:.3} | {:.0} tok/s | eta {}:{:02}",
            r.step, r.epoch + 1, r.train_loss, (r.train_loss as f64).exp(), r.lr, r.grad_norm, tps, eta / 60, eta % 60
        ));
    }

    fn eval(&mut self, r: &EvalRecord) {
        if let (Some(ta), Some(va)) = (r.train_accuracy, r.val_accuracy) {
            self.line(format!(
                "eval   {:>6} | train loss {:.4} accuracy {:.2}% | val loss {:.4} accuracy {:.2}%",
                r.step,
                r.train_loss,
                100.0 * ta,
                r.val_loss,
                100.0 * va
            ));
            return;
        }
        self.line(format!(
            "eval   {:>6} | train {:.4} | val {:.4} (ppl {:.1}) | {} tokens seen",
            r.step,
            r.train_loss,
            r.val_loss,
            (r.val_loss as f64).exp(),
            r.tokens_seen
        ));
    }

    fn sample(&mut self, _step: usize, text: &str) {
        self.line(format!("sample | {}", text.replace('\n', " ")));
    }

    fn checkpoint(&mut self, path: &Path) {
        self.line(format!("checkpoint {}", path.display()));
    }

    fn stop_requested(&self) -> bool {
        let stop = self.stop.load(Ordering::SeqCst);
        if stop {
            eprintln!("\nstopping after this step; writing a checkpoint (Ctrl-C again to abort)");
        }
        stop
    }
}

impl ClassifyObserver for Terminal {
    fn info(&mut self, i: &RunInfo) {
        self.line(format!(
            "classes: {} | examples: {} train, {} validation, {} test | max length {} tokens ({} texts cut)",
            i.labels.join(", "),
            i.train,
            i.val,
            i.test,
            i.max_length,
            i.truncated
        ));
        self.line(format!(
            "trainable parameters: {} of {} ({:.2}%)",
            i.trainable_params,
            i.total_params,
            100.0 * i.trainable_params as f64 / i.total_params.max(1) as f64
        ));
    }
}

/// The end of a training command: for a finished run, `summary` (if any) and where the model is
/// (its path alone on standard output); for a stopped run, an [`Interrupted`] error that says how
/// to resume with `command` (e.g. "finetune dpo").
pub fn report(
    term: &Terminal,
    ending: Ending,
    run_dir: &Path,
    command: &str,
    summary: Option<String>,
    also: &[(&str, PathBuf)],
) -> Result<()> {
    term.bar.finish_and_clear();
    match ending {
        Ending::Finished { model_dir } => {
            if let Some(s) = summary {
                eprintln!("{s}");
            }
            let mut line = format!("done: model in {}", model_dir.display());
            for (what, path) in also {
                line += &format!(", {what} in {}", path.display());
            }
            eprintln!("{line}");
            crate::out::outln!("{}", model_dir.display())?;
            Ok(())
        }
        Ending::Stopped { checkpoint } => Err(Interrupted(format!(
            "stopped: checkpoint {}; continue with `scratchllm {command} --resume {}`",
            checkpoint.display(),
            run_dir.display()
        ))
        .into()),
    }
}
