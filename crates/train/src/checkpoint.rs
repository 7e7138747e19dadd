//! Checkpoints: everything a run needs to continue exactly where it stopped.
//!
//! A checkpoint is a directory `step-NNNNNNN/` with `model.safetensors` (weights, our names),
//! `optimizer.safetensors` (AdamW's `m.NAME` and `v.NAME`) and `state.json` (format version, step,
//! AdamW's step count, data position, tokens seen, best validation loss). It is written into a
//! temporary directory and renamed into place, so a crash never leaves a half checkpoint. Dropout
//! masks and the shuffled batch order are functions of (seed, step) and (seed, epoch), so no random
//! generator state needs saving.
use crate::trainer::Trainer;
use candle_core::{Device, Tensor};
use scratchllm_model::{weights, ModelError};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

pub type Result<T, E = ModelError> = std::result::Result<T, E>;

const STATE_VERSION: u32 = 1;

/// Where a run stands.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunState {
    pub version: u32,
    /// Optimizer steps done.
    pub step: usize,
    /// Next batch to train on: epoch, and batch index within it.
    pub epoch: usize,
    pub batch: usize,
    pub tokens_seen: u64,
    pub adam_step: u64,
    pub best_val_loss: Option<f32>,
    /// Steps done when the best validation loss was measured (its model is in `best/`).
    pub best_step: Option<usize>,
    /// Validation loss at this checkpoint, if evaluated.
    pub val_loss: Option<f32>,
    /// The best validation accuracy so far (classifiers; their `best/` is chosen by it).
    #[serde(default)]
    pub best_val_accuracy: Option<f32>,
}

fn io(path: &Path, e: std::io::Error) -> ModelError {
    ModelError::Io {
        path: path.to_path_buf(),
        source: e,
    }
}

/// The directory name of the checkpoint at `step`.
pub fn name(step: usize) -> String {
    format!("step-{step:07}")
}

/// Writes a checkpoint of `trainer` at `state` into `dir/step-N/`, atomically.
pub fn save(dir: &Path, trainer: &Trainer, state: &RunState) -> Result<PathBuf> {
    let final_dir = dir.join(name(state.step));
    let tmp = dir.join(format!(".{}.tmp", name(state.step)));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| io(&tmp, e))?;
    }
    std::fs::create_dir_all(&tmp).map_err(|e| io(&tmp, e))?;
    // Trainable weights only: frozen ones come back from the run's initial weights.
    weights::write_safetensors(&trainer.trainable_weights(), &tmp.join("model.safetensors"))?;
    let mut opt = HashMap::new();
    for p in &trainer.opt.params {
        let shape = p.var.shape().clone();
        opt.insert(
            format!("m.{}", p.name),
            Tensor::from_slice(&p.m, shape.clone(), &Device::Cpu)?,
        );
        opt.insert(
            format!("v.{}", p.name),
            Tensor::from_slice(&p.v, shape, &Device::Cpu)?,
        );
    }
    weights::write_safetensors(&opt, &tmp.join("optimizer.safetensors"))?;
    let json =
        serde_json::to_string_pretty(state).map_err(|e| ModelError::Config(e.to_string()))?;
    scratchllm_tokenizer::io::atomic_write(&tmp.join("state.json"), json.as_bytes())?;
    if final_dir.exists() {
        std::fs::remove_dir_all(&final_dir).map_err(|e| io(&final_dir, e))?;
    }
    std::fs::rename(&tmp, &final_dir).map_err(|e| io(&final_dir, e))?;
    Ok(final_dir)
}

/// Restores `trainer` from the checkpoint directory `ckpt`; returns its state.
pub fn load(ckpt: &Path, trainer: &mut Trainer) -> Result<RunState> {
    let state_path = ckpt.join("state.json");
    let text = scratchllm_tokenizer::io::read_text(&state_path)?;
    let state: RunState = serde_json::from_str(&text).map_err(|e| ModelError::File {
        path: state_path.clone(),
        message: format!("invalid checkpoint state: {e}"),
    })?;
    if state.version != STATE_VERSION {
        return Err(ModelError::File {
            path: state_path,
            message: format!(
                "checkpoint format {} but this scratchllm reads {STATE_VERSION}",
                state.version
            ),
        });
    }
    let w = weights::read_safetensors(&ckpt.join("model.safetensors"), trainer.device())?;
    let o = weights::read_safetensors(&ckpt.join("optimizer.safetensors"), &Device::Cpu)?;
    for p in &mut trainer.opt.params {
        let get = |map: &HashMap<String, Tensor>, key: String| -> Result<Tensor> {
            let t = map.get(&key).ok_or_else(|| ModelError::Missing {
                name: key.clone(),
                hint: format!(" in checkpoint {}", ckpt.display()),
            })?;
            if t.dims() != p.var.dims() {
                return Err(ModelError::Shape {
                    name: key,
                    expected: p.var.dims().to_vec(),
                    found: t.dims().to_vec(),
                });
            }
            Ok(t.clone())
        };
        p.var.set(&get(&w, p.name.clone())?)?;
        p.m = get(&o, format!("m.{}", p.name))?.flatten_all()?.to_vec1()?;
        p.v = get(&o, format!("v.{}", p.name))?.flatten_all()?.to_vec1()?;
    }
    trainer.opt.step = state.adam_step;
    trainer.step = state.step;
    trainer.tokens_seen = state.tokens_seen;
    Ok(state)
}

/// Checkpoint directories in `dir`, oldest first.
pub fn list(dir: &Path) -> Vec<(usize, PathBuf)> {
    let mut found: Vec<(usize, PathBuf)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let n = e
                .file_name()
                .to_string_lossy()
                .strip_prefix("step-")?
                .parse()
                .ok()?;
            e.path().join("state.json").is_file().then(|| (n, e.path()))
        })
        .collect();
    found.sort();
    found
}

/// Removes all but the newest `keep` checkpoints.
pub fn prune(dir: &Path, keep: usize) -> Result<()> {
    let all = list(dir);
    let cut = all.len().saturating_sub(keep);
    for (_, path) in &all[..cut] {
        std::fs::remove_dir_all(path).map_err(|e| io(path, e))?;
    }
    Ok(())
}
