//! Quantized inference: the linear layers' matrices in GGUF's block formats ([`crate::quant`]),
//! chosen with `--dtype q8_0|q4_0` (quantized on load from any stored dtype) or read as they are
//! from a GGUF file. Embeddings, norms, biases and the KV cache stay as they are. The model sees
//! quantization only through its linear layers ([`crate::Lin`]), whatever the architecture.
use crate::config::GptConfig;
use crate::error::{ModelError, Result};
use crate::lora::Role;
use crate::quant::{QMatrix, QType};
use crate::weights::Weights;
use candle_core::{DType, Device, Tensor};
use std::sync::Arc;

/// How inference holds a model's weight matrices.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InferenceDtype {
    F32,
    /// bf16 matrices; norms, biases and activations f32.
    Bf16,
    /// The linear layers in a block format; the embedding in f32.
    Quant(QType),
}

impl InferenceDtype {
    /// `f32`, `bf16`, `q8_0`, `q4_0` (the formats weights are quantized to on load).
    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "f32" => Some(InferenceDtype::F32),
            "bf16" => Some(InferenceDtype::Bf16),
            "q8_0" => Some(InferenceDtype::Quant(QType::Q8_0)),
            "q4_0" => Some(InferenceDtype::Quant(QType::Q4_0)),
            _ => None,
        }
    }
}

impl Weights {
    /// The quantized matrix `name` (`NAME.weight`), when it is held quantized.
    pub fn quant(&self, name: &str) -> Option<&Arc<QMatrix>> {
        self.quant.get(name)
    }

    /// Every matrix held quantized, by name.
    pub fn quant_matrices(&self) -> impl Iterator<Item = (&String, &Arc<QMatrix>)> {
        self.quant.iter()
    }

    /// How many matrices are held in each block format, by name of the format.
    pub fn quant_summary(&self) -> Vec<(&'static str, usize)> {
        let mut counts: Vec<(&'static str, usize)> = Vec::new();
        for q in self.quant.values() {
            match counts.iter_mut().find(|(n, _)| *n == q.qtype().name()) {
                Some((_, c)) => *c += 1,
                None => counts.push((q.qtype().name(), 1)),
            }
        }
        counts.sort();
        counts
    }

    /// The linear layers of `cfg` (the tied output head included) quantized to `qtype`. A matrix
    /// already in `qtype` is kept as it is; one whose rows are not a whole number of blocks stays
    /// dense (none of the published shapes).
    pub fn quantized(mut self, cfg: &GptConfig, qtype: QType) -> Result<Weights> {
        for (name, out, inp, role) in crate::lora::linear_layers(cfg) {
            let key = format!("{name}.weight");
            if self.quant.get(&key).is_some_and(|q| q.qtype() == qtype) {
                continue;
            }
            if !inp.is_multiple_of(qtype.block_size()) {
                continue;
            }
            let tied = role == Role::Head && cfg.tie_embeddings && cfg.num_classes.is_none();
            let values: Vec<f32> = match self.tensors.get(&key) {
                Some(t) => to_f32s(t)?,
                None => match self.quant.get(&key) {
                    Some(q) => q.dequantize(),
                    None if tied => {
                        to_f32s(self.tensors.get("tok_emb.weight").ok_or_else(|| {
                            ModelError::Missing {
                                name: "tok_emb.weight".into(),
                                hint: format!(" in {}", self.source),
                            }
                        })?)?
                    }
                    None => {
                        return Err(ModelError::Missing {
                            name: key,
                            hint: format!(" in {}", self.source),
                        })
                    }
                },
            };
            let q = QMatrix::quantize(qtype, out, inp, &values)
                .map_err(|e| ModelError::Config(format!("{key}: {e}")))?;
            self.tensors.remove(&key);
            self.quant.insert(key, Arc::new(q));
        }
        self.source = format!("{} ({} matrices)", self.source, qtype.name());
        Ok(self)
    }

    /// Every quantized matrix expanded to an f32 tensor (what conversions and training need).
    pub fn dequantized(mut self, cfg: &GptConfig) -> Result<Weights> {
        let tied = cfg.tie_embeddings && cfg.num_classes.is_none();
        for (name, q) in std::mem::take(&mut self.quant) {
            if (tied && name == "out_head.weight") || self.tensors.contains_key(&name) {
                continue; // the embedding holds it
            }
            let t = Tensor::from_vec(q.dequantize(), (q.rows(), q.cols()), &Device::Cpu)?;
            self.tensors.insert(name, t);
        }
        Ok(self)
    }
}

fn to_f32s(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?)
}
