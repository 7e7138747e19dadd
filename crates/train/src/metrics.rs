//! `metrics.jsonl`: one JSON object per line, appended as a run goes, trimmed on resume.
use crate::plot::Point;
use scratchllm_model::ModelError;
use scratchllm_tokenizer::io::atomic_write;
use std::io::Write;
use std::path::PathBuf;

type Result<T, E = ModelError> = std::result::Result<T, E>;

/// Appends JSON lines to `metrics.jsonl`.
pub(crate) struct Metrics {
    file: std::fs::File,
    path: PathBuf,
}

impl Metrics {
    /// Opens the file, dropping lines from steps at or after `from_step` (a resumed run redoes them).
    pub(crate) fn open(path: PathBuf, from_step: usize) -> Result<Self> {
        let kept: Vec<String> = std::fs::read_to_string(&path)
            .unwrap_or_default()
            .lines()
            .filter(|l| {
                serde_json::from_str::<serde_json::Value>(l)
                    .ok()
                    .and_then(|v| v["step"].as_u64())
                    .is_some_and(|s| (s as usize) < from_step)
            })
            .map(str::to_string)
            .collect();
        let mut text = kept.join("\n");
        if !text.is_empty() {
            text.push('\n');
        }
        atomic_write(&path, text.as_bytes())?;
        let file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(|e| ModelError::Io {
                path: path.clone(),
                source: e,
            })?;
        Ok(Metrics { file, path })
    }

    pub(crate) fn write(&mut self, v: serde_json::Value) -> Result<()> {
        writeln!(self.file, "{v}").map_err(|e| ModelError::Io {
            path: self.path.clone(),
            source: e,
        })
    }

    /// The evaluation points so far, for a plot: (tokens seen, line[train_key], line[val_key]).
    pub(crate) fn points(&self, train_key: &str, val_key: &str) -> Vec<Point> {
        std::fs::read_to_string(&self.path)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter_map(|v| {
                Some((
                    v["tokens_seen"].as_u64()?,
                    v[train_key].as_f64()? as f32,
                    v[val_key].as_f64()? as f32,
                ))
            })
            .collect()
    }
}
