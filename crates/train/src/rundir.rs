//! What every training run directory shares: its `config.json` (written when a run starts, read
//! back on resume, with a format version), its checkpoints directory, and JSON outputs.
use crate::checkpoint::{self, RunState};
use crate::settings::{OptimConfig, RunConfig};
use crate::trainer::Trainer;
use scratchllm_model::ModelError;
use scratchllm_tokenizer::io::atomic_write;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::path::{Path, PathBuf};

type Result<T, E = ModelError> = std::result::Result<T, E>;

pub(crate) fn err(path: &Path, message: impl Into<String>) -> ModelError {
    ModelError::File {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// Writes `v` as pretty JSON, atomically.
pub(crate) fn write_json(path: &Path, v: &impl Serialize) -> Result<()> {
    let text = serde_json::to_string_pretty(v).map_err(|e| err(path, e.to_string()))? + "\n";
    Ok(atomic_write(path, text.as_bytes())?)
}

/// A task's saved configuration: versioned, and checked before a run starts or resumes.
pub(crate) trait RunSettings: Serialize + DeserializeOwned {
    /// The format version this scratchllm writes and reads.
    const VERSION: u32;
    fn version(&self) -> u32;
    /// The parts every task has.
    fn shared(&self) -> (&OptimConfig, &RunConfig);
    /// Refuses the task's own settings that cannot train (each named, with its value).
    fn check(&self) -> Result<()>;

    /// Refuses any setting that cannot train.
    fn validate(&self) -> Result<()> {
        let (optim, run) = self.shared();
        optim.validate()?;
        run.validate()?;
        self.check()
    }
}

/// The configuration of the run in `run_dir`: `new` for a new run (checked, then written to
/// `config.json`; refused when the directory already has checkpoints), else the one saved there
/// (its version and settings checked). Nothing is written for settings that do not validate.
pub(crate) fn open<C: RunSettings>(run_dir: &Path, new: Option<C>) -> Result<C> {
    let ckpt_dir = run_dir.join("checkpoints");
    let config_path = run_dir.join("config.json");
    let cfg = match new {
        Some(cfg) => {
            cfg.validate()?;
            if !checkpoint::list(&ckpt_dir).is_empty() {
                return Err(err(run_dir, "this run directory already has checkpoints; continue it with --resume, or choose another --out"));
            }
            std::fs::create_dir_all(&ckpt_dir).map_err(|e| ModelError::Io {
                path: ckpt_dir.clone(),
                source: e,
            })?;
            write_json(&config_path, &cfg)?;
            cfg
        }
        None => {
            let text = scratchllm_tokenizer::io::read_text(&config_path)?;
            let cfg: C = serde_json::from_str(&text)
                .map_err(|e| err(&config_path, format!("invalid run configuration: {e}")))?;
            if cfg.version() != C::VERSION {
                return Err(err(
                    &config_path,
                    format!(
                        "run format {} but this scratchllm reads {}",
                        cfg.version(),
                        C::VERSION
                    ),
                ));
            }
            cfg.validate()
                .map_err(|e| err(&config_path, format!("the saved settings are invalid: {e}")))?;
            cfg
        }
    };
    Ok(cfg)
}

/// The state of a run that has not taken a step.
pub(crate) fn fresh_state() -> RunState {
    RunState {
        version: 1,
        step: 0,
        epoch: 0,
        batch: 0,
        tokens_seen: 0,
        adam_step: 0,
        best_val_loss: None,
        best_step: None,
        val_loss: None,
        best_val_accuracy: None,
    }
}

/// After a stretch of training: records where the run stands in `state`, writes the checkpoint and
/// keeps the newest `keep` (at least one). Returns the checkpoint's directory.
pub(crate) fn checkpoint_at(
    ckpt_dir: &Path,
    trainer: &Trainer,
    state: &mut RunState,
    position: (usize, usize),
    keep: usize,
) -> Result<PathBuf> {
    *state = RunState {
        step: trainer.step,
        epoch: position.0,
        batch: position.1,
        tokens_seen: trainer.tokens_seen,
        adam_step: trainer.opt.step,
        ..state.clone()
    };
    let saved = checkpoint::save(ckpt_dir, trainer, state)?;
    checkpoint::prune(ckpt_dir, keep.max(1))?;
    Ok(saved)
}
