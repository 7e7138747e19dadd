//! What the fine-tuning runs (classification, instruction, DPO) share: their settings of the
//! starting model and of what is trained ([`TuneConfig`]), the trainer over a partly frozen model
//! with LoRA adapters, saving the model being tuned (adapters merged), and the final outputs —
//! `model/`, or with LoRA `adapter/` beside its base.
use crate::settings::check_drop_rate;
use crate::trainer::{TrainSettings, Trainer};
use candle_core::Device;
use candle_core::Tensor;
use scratchllm_model::lora::{self, LoraSpec};
use scratchllm_model::modeldir::{self, Meta};
use scratchllm_model::{GptConfig, ModelError, Weights};
use scratchllm_tokenizer::Tokenizer;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

type Result<T, E = ModelError> = std::result::Result<T, E>;

/// Which weights fine-tuning trains.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Trainable {
    /// The new head only.
    LastLayer,
    /// The last transformer block, the final LayerNorm and the head (the book's choice).
    LastBlock,
    /// The last two blocks, the final LayerNorm and the head.
    LastTwoBlocks,
    All,
    /// LoRA adapters only; the base (and the new head) stay frozen, as in appendix E.
    Lora,
}

impl Trainable {
    /// Whether the weight `name` of a model with `n_layers` blocks is trained.
    pub fn selects(self, name: &str, n_layers: usize) -> bool {
        let head = name.starts_with("out_head.") && !lora::is_adapter(name);
        let norm = name.starts_with("final_norm.");
        let block = |back: usize| {
            (1..=back.min(n_layers))
                .any(|k| name.starts_with(&format!("trf_blocks.{}.", n_layers - k)))
        };
        match self {
            Trainable::LastLayer => head,
            Trainable::LastBlock => head || norm || block(1),
            Trainable::LastTwoBlocks => head || norm || block(2),
            Trainable::All => !lora::is_adapter(name),
            Trainable::Lora => lora::is_adapter(name),
        }
    }
}

/// The settings every fine-tuning run shares: where it starts and what it trains.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TuneConfig {
    /// The starting model: a path (any layout) or a preset name (random weights).
    pub model: String,
    /// A configuration for a randomly initialized model (instead of `model`).
    #[serde(default)]
    pub model_config: Option<GptConfig>,
    pub data: PathBuf,
    pub trainable: Trainable,
    pub lora: Option<LoraSpec>,
    /// With LoRA, also write `model/` with the adapters merged.
    pub merge: bool,
    #[serde(default)]
    pub drop_rate: f32,
}

impl TuneConfig {
    /// Full training of `model` on `data`, no dropout.
    pub fn new(model: &str, data: &Path) -> Self {
        TuneConfig {
            model: model.to_string(),
            model_config: None,
            data: data.to_path_buf(),
            trainable: Trainable::All,
            lora: None,
            merge: false,
            drop_rate: 0.0,
        }
    }

    pub fn validate(&self) -> Result<()> {
        if (self.trainable == Trainable::Lora) != self.lora.is_some() {
            return Err(ModelError::Config(
                "LoRA settings go with trainable = lora, and only with it".into(),
            ));
        }
        if let Some(l) = &self.lora {
            l.validate()?;
        }
        if let Some(mc) = &self.model_config {
            mc.validate()?;
        }
        check_drop_rate(self.drop_rate)
    }

    /// The starting model: random weights for `model_config` (GPT-2's tokenizer), else the model
    /// at `model`, or a preset's random weights.
    pub(crate) fn start(
        &self,
        seed: u64,
        device: &Device,
    ) -> Result<(GptConfig, Weights, Tokenizer)> {
        let (cfg, weights, tok) =
            starting_model(&self.model, self.model_config.as_ref(), seed, device)?;
        // A rank the model's layers cannot hold is refused before any data is read.
        if let Some(l) = &self.lora {
            l.validate_for(&cfg)?;
        }
        Ok((cfg, weights, tok))
    }

    /// The weights it started from, as [`Output::finish`] needs them.
    pub(crate) fn base<'a>(
        &'a self,
        cfg: &'a GptConfig,
        tensors: &'a HashMap<String, Tensor>,
    ) -> Base<'a> {
        Base {
            source: &self.model,
            random: self.model_config.is_some() || is_preset(&self.model),
            cfg,
            tensors,
        }
    }

    /// The trainer over `tensors` of a `model_cfg` model: LoRA adapters added (seeded), the
    /// weights this run trains selected and the rest frozen.
    pub(crate) fn trainer(
        &self,
        model_cfg: &GptConfig,
        mut tensors: HashMap<String, Tensor>,
        seed: u64,
        settings: TrainSettings,
        device: &Device,
    ) -> Result<Trainer> {
        if let Some(l) = &self.lora {
            tensors.extend(lora::init(model_cfg, l, seed ^ 0x6c6f_7261, device)?);
            // "lora"
        }
        let n_layers = model_cfg.n_layers;
        Trainer::partly_frozen(
            model_cfg,
            Weights::new(tensors, "the model being fine-tuned"),
            self.lora.as_ref(),
            &|name| self.trainable.selects(name, n_layers),
            settings,
        )
    }

    /// Where and how the run writes models.
    pub(crate) fn output<'a>(
        &'a self,
        run_dir: &'a Path,
        model_cfg: &'a GptConfig,
        tok: &'a Tokenizer,
        meta: Meta,
    ) -> Output<'a> {
        Output {
            run_dir,
            model_cfg,
            lora: self.lora.as_ref(),
            tok,
            meta,
        }
    }
}

/// The starting model and tokenizer: random weights for `model_config` (GPT-2's tokenizer), else
/// the model at `model`, or a preset's random weights.
fn starting_model(
    model: &str,
    model_config: Option<&GptConfig>,
    seed: u64,
    device: &Device,
) -> Result<(GptConfig, Weights, Tokenizer)> {
    if let Some(mc) = model_config {
        return Ok((
            mc.clone(),
            Weights::random(mc, seed, device)?,
            scratchllm_tokenizer::gpt2()?,
        ));
    }
    let files = modeldir::load_or_preset(model, seed, device)?;
    Ok((files.config, files.weights, files.tokenizer))
}

/// Whether a run's `model` names a preset (random weights) rather than a path.
fn is_preset(model: &str) -> bool {
    GptConfig::preset(model).is_some() && !Path::new(model).exists()
}

/// The weights a run started from.
pub(crate) struct Base<'a> {
    /// The path they were loaded from, or the preset or configuration that drew them.
    pub source: &'a str,
    /// Drawn at random: no path can find them again.
    pub random: bool,
    pub cfg: &'a GptConfig,
    pub tensors: &'a HashMap<String, Tensor>,
}

/// Where and how a fine-tuning run writes models.
pub(crate) struct Output<'a> {
    pub run_dir: &'a Path,
    pub model_cfg: &'a GptConfig,
    pub lora: Option<&'a LoraSpec>,
    pub tok: &'a Tokenizer,
    pub meta: Meta,
}

impl Output<'_> {
    /// The trainer's model as a plain model directory (adapters merged).
    pub fn save_model(&self, t: &Trainer, dir: &Path) -> Result<()> {
        match self.lora {
            None => modeldir::save_with(dir, self.model_cfg, &t.weights(), self.tok, &self.meta),
            Some(l) => {
                let (plain, merged) = lora::merge(self.model_cfg, &t.weights(), l)?;
                modeldir::save_with(dir, &plain, &merged, self.tok, &self.meta)
            }
        }
    }

    /// The final outputs: `model/`; with LoRA, `adapter/` (the adapters and every tensor the base
    /// does not have in that shape, such as a classifier's new head; a random base is saved as
    /// `base/` beside it) and `model/` too when `merge`. Returns the directory to use.
    pub fn finish(&self, t: &Trainer, base: &Base, merge: bool) -> Result<PathBuf> {
        let model_dir = self.run_dir.join("model");
        let Some(l) = self.lora else {
            self.save_model(t, &model_dir)?;
            return Ok(model_dir);
        };
        let own: HashMap<String, Tensor> = t
            .weights()
            .into_iter()
            .filter(|(n, w)| base.tensors.get(n).is_none_or(|b| b.dims() != w.dims()))
            .collect();
        let base_path = if base.random {
            let dir = self.run_dir.join("base");
            modeldir::save(&dir, base.cfg, base.tensors, self.tok)?;
            dir
        } else {
            PathBuf::from(base.source)
        };
        let adapter_dir = self.run_dir.join("adapter");
        modeldir::save_adapter(
            &adapter_dir,
            &base_path,
            self.model_cfg,
            l,
            &own,
            self.tok,
            &self.meta,
        )?;
        if merge {
            self.save_model(t, &model_dir)?;
            return Ok(model_dir);
        }
        Ok(adapter_dir)
    }
}
