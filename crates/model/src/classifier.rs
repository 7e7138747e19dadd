//! Sequence classification with a GPT (the book's chapter 6 and its bonus experiments): the output
//! head maps hidden states to class logits, read at one token position or averaged over the text.
use crate::error::{ModelError, Result};
use crate::generate::{check_logits, LogitsError};
use crate::gpt::{DropoutRng, Gpt};
use candle_core::{DType, Device, Tensor};
use scratchllm_tokenizer::{SpecialMode, Tokenizer};
use serde::{Deserialize, Serialize};

/// Which hidden state classifies a text.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TokenPosition {
    /// The last position of the padded sequence (the book's choice: with right padding it reads a
    /// pad token, which still works because causal attention lets it see the whole text).
    Last,
    /// The first token (sees only itself under causal attention: a weak baseline).
    First,
    /// The last token of the text itself.
    LastNonPad,
}

/// How a classifier reads its input; saved with the model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassifierSpec {
    /// Class names, by class index.
    pub labels: Vec<String>,
    pub token_position: TokenPosition,
    /// Average the hidden states over the text's tokens instead of reading one position.
    pub average_embeddings: bool,
    /// Texts are truncated to this many tokens (and, for `Last`, padded to it).
    pub max_length: usize,
    pub pad_id: u32,
}

impl ClassifierSpec {
    pub fn validate(&self, context_length: usize) -> Result<()> {
        if self.labels.len() < 2 || self.max_length == 0 || self.max_length > context_length {
            return Err(ModelError::Config(format!(
                "a classifier needs at least 2 labels and a max_length in 1..={context_length}: {} labels, max_length {}",
                self.labels.len(),
                self.max_length
            )));
        }
        Ok(())
    }

    /// The padded length of a batch whose longest text has `longest` tokens.
    pub fn padded_length(&self, longest: usize) -> usize {
        if self.token_position == TokenPosition::Last && !self.average_embeddings {
            self.max_length
        } else {
            longest.max(1)
        }
    }

    /// Ids of `text`, truncated to `max_length` (special-token text is plain text here).
    pub fn encode(&self, tok: &Tokenizer, text: &str) -> Result<Vec<u32>> {
        let mut ids = tok.encode(text, SpecialMode::AsText)?;
        ids.truncate(self.max_length);
        Ok(ids)
    }

    /// A right-padded (B, T) batch of id sequences and their lengths.
    pub fn batch(&self, seqs: &[&[u32]], device: &Device) -> Result<(Tensor, Vec<usize>)> {
        let longest = seqs.iter().map(|s| s.len()).max().unwrap_or(0);
        let t = self.padded_length(longest);
        let mut ids = Vec::with_capacity(seqs.len() * t);
        let mut lengths = Vec::with_capacity(seqs.len());
        for s in seqs {
            if s.is_empty() {
                return Err(ModelError::Config("cannot classify an empty text".into()));
            }
            let s = &s[..s.len().min(t)];
            ids.extend_from_slice(s);
            ids.extend(std::iter::repeat_n(self.pad_id, t - s.len()));
            lengths.push(s.len());
        }
        Ok((Tensor::from_vec(ids, (seqs.len(), t), device)?, lengths))
    }
}

/// Class logits (B, classes) for a padded batch (B, T) whose texts have `lengths` tokens.
pub fn class_logits(
    gpt: &Gpt,
    spec: &ClassifierSpec,
    ids: &Tensor,
    lengths: &[usize],
    train: Option<&DropoutRng>,
) -> Result<Tensor> {
    let (b, t) = ids.dims2()?;
    let hidden = gpt.hidden(ids, train)?; // (B, T, C)
    let pooled = if spec.average_embeddings {
        // Mean over each text's own tokens: weights 1/len on them, 0 on padding.
        let mut w = vec![0f32; b * t];
        for (i, &n) in lengths.iter().enumerate() {
            w[i * t..i * t + n].fill(1.0 / n as f32);
        }
        let w = Tensor::from_vec(w, (b, t, 1), ids.device())?;
        hidden.broadcast_mul(&w)?.sum(1)? // (B, C)
    } else {
        let rows: Vec<u32> = lengths
            .iter()
            .enumerate()
            .map(|(i, &n)| {
                let pos = match spec.token_position {
                    TokenPosition::Last => t - 1,
                    TokenPosition::First => 0,
                    TokenPosition::LastNonPad => n - 1,
                };
                (i * t + pos) as u32
            })
            .collect();
        let rows = Tensor::from_vec(rows, b, ids.device())?;
        hidden.flatten_to(1)?.index_select(&rows, 0)? // (B, C)
    };
    gpt.head(&pooled)
}

/// One text's prediction.
#[derive(Clone, Debug, PartialEq)]
pub struct Prediction {
    pub class: usize,
    pub label: String,
    /// Softmax probability of each class.
    pub probs: Vec<f32>,
    /// The text was longer than `max_length` tokens and was cut.
    pub truncated: bool,
}

/// Softmax of one text's class logits, computed in f64 from the largest logit down (so huge or
/// tiny logits neither overflow nor all round to 0). NaN or +inf logits are an error (see
/// [`check_logits`]); a -inf logit gets probability 0; equal logits share equally.
pub fn class_probs(logits: &[f32]) -> Result<Vec<f32>, LogitsError> {
    check_logits(logits)?;
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let exps: Vec<f64> = logits.iter().map(|&x| (x as f64 - max).exp()).collect();
    let total: f64 = exps.iter().sum(); // >= 1: the maximum contributes exp(0)
    Ok(exps.iter().map(|e| (e / total) as f32).collect())
}

/// Classifies `texts` in batches of `batch_size`.
pub fn predict(
    gpt: &Gpt,
    spec: &ClassifierSpec,
    tok: &Tokenizer,
    texts: &[&str],
    batch_size: usize,
) -> Result<Vec<Prediction>> {
    let mut out = Vec::with_capacity(texts.len());
    for chunk in texts.chunks(batch_size.max(1)) {
        let mut seqs = Vec::with_capacity(chunk.len());
        let mut truncated = Vec::with_capacity(chunk.len());
        for (i, text) in chunk.iter().enumerate() {
            let full = tok.encode(text, SpecialMode::AsText)?;
            if full.is_empty() {
                return Err(ModelError::Config(format!(
                    "text {} is empty; there is nothing to classify",
                    out.len() + i + 1
                )));
            }
            truncated.push(full.len() > spec.max_length);
            seqs.push(full.into_iter().take(spec.max_length).collect::<Vec<u32>>());
        }
        let refs: Vec<&[u32]> = seqs.iter().map(Vec::as_slice).collect();
        let (ids, lengths) = spec.batch(&refs, gpt.device())?;
        let logits = class_logits(gpt, spec, &ids, &lengths, None)?
            .to_dtype(DType::F32)?
            .to_vec2::<f32>()?; // (B, classes)
        for (row, cut) in logits.iter().zip(truncated) {
            let p = class_probs(row).map_err(|problem| ModelError::Logits {
                model: gpt.source().to_string(),
                problem,
            })?;
            let class = crate::generate::argmax(row) as usize; // the logits: no rounding ties
            out.push(Prediction {
                class,
                label: spec
                    .labels
                    .get(class)
                    .cloned()
                    .unwrap_or_else(|| class.to_string()),
                probs: p,
                truncated: cut,
            });
        }
    }
    Ok(out)
}
