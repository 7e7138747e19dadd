//! Reading a GGUF file: the configuration from `<arch>.*`, the tokenizer from `tokenizer.ggml.*`,
//! the weights under our names.
use super::{expected_shape, gemma_norm, gguf_row_of, name_pairs, reorder_rows};
use crate::config::{Arch, GptConfig, Llama3Rope, RopeScaling};
use crate::error::{ModelError, Result};
use crate::gguf::{self, GgufFile};
use crate::modeldir::{Layout, ModelFiles};
use crate::quant::{QMatrix, QType};
use crate::weights::Weights;
use candle_core::{DType, Device, Tensor};
use scratchllm_tokenizer::gguf::GgufVocab;
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

/// Loads a GGUF file: configuration from `<arch>.*`, tokenizer from `tokenizer.ggml.*`, weights
/// under our names (dense tensors in their stored dtype, quantized linear layers as blocks).
pub fn load_gguf(path: &Path, device: &Device) -> Result<ModelFiles> {
    let file = GgufFile::open(path)?;
    let bad = |m: String| ModelError::file(path, m);
    let cfg = config_of(&file, path)?;
    let tokenizer = vocab_of(&file)?
        .tokenizer(path)
        .map_err(|e| bad(format!("its tokenizer: {e}")))?;
    let mut tensors = HashMap::new();
    let mut quant = HashMap::new();
    let mut used = std::collections::HashSet::new();
    let linear: std::collections::HashSet<String> = crate::lora::linear_layers(&cfg)
        .into_iter()
        .map(|(n, ..)| format!("{n}.weight"))
        .collect();
    let put = |ours: String,
               info: &gguf::TensorInfo,
               bytes: Vec<u8>,
               tensors: &mut HashMap<String, Tensor>,
               quant: &mut HashMap<String, Arc<QMatrix>>|
     -> Result<()> {
        let shape: Vec<usize> = info.dims.iter().rev().map(|&d| d as usize).collect();
        let (rows, cols) = match shape.as_slice() {
            [r, c] => (*r, *c),
            [c] => (1, *c),
            _ => {
                return Err(bad(format!(
                    "tensor {} has {} dimensions; scratchllm's tensors have 1 or 2",
                    info.name,
                    shape.len()
                )))
            }
        };
        let dense = |dtype: DType| -> Result<Tensor> {
            Ok(Tensor::from_raw_buffer(&bytes, dtype, &shape, device)?)
        };
        let t = match info.ttype {
            gguf::ggml_type::F32 => dense(DType::F32)?,
            gguf::ggml_type::F16 => dense(DType::F16)?,
            gguf::ggml_type::BF16 => dense(DType::BF16)?,
            id => {
                let qtype = QType::from_ggml(id).ok_or_else(|| {
                    bad(format!(
                        "tensor {} is {} (ggml type {id}), which scratchllm does not compute \
                         (it reads f32, f16, bf16, q8_0, q4_0, q4_K and q6_K)",
                        info.name,
                        gguf::type_name(id).unwrap_or("unknown")
                    ))
                })?;
                let q = QMatrix::from_bytes(qtype, rows, cols, bytes)
                    .map_err(|e| bad(format!("tensor {}: {e}", info.name)))?;
                if shape.len() != 2 {
                    return Err(bad(format!(
                        "tensor {} is a quantized vector; scratchllm keeps vectors in f32",
                        info.name
                    )));
                }
                let q = Arc::new(q);
                let tied_head = ours == "tok_emb.weight" && cfg.tie_embeddings;
                if linear.contains(&ours) || tied_head || ours == "tok_emb.weight" {
                    quant.insert(ours.clone(), q.clone());
                }
                if tied_head {
                    quant.insert("out_head.weight".into(), q.clone());
                }
                if linear.contains(&ours) {
                    return Ok(());
                }
                Tensor::from_vec(q.dequantize(), (rows, cols), device)?
            }
        };
        let t = if gemma_norm(&cfg, &ours) {
            (t.to_dtype(DType::F32)? - 1.0)?
        } else {
            t
        };
        tensors.insert(ours, t);
        Ok(())
    };
    let heads = |ours: &str| match ours {
        s if s.ends_with("att.W_query.weight") => Some(cfg.n_heads),
        s if s.ends_with("att.W_key.weight") => Some(cfg.kv_heads()),
        _ => None,
    };
    for (theirs, ours) in name_pairs(&cfg) {
        let info = file.tensor(&theirs).ok_or_else(|| ModelError::Missing {
            name: theirs.clone(),
            hint: format!(
                " in {} (its metadata describes a {} model)",
                path.display(),
                cfg.arch.name()
            ),
        })?;
        used.insert(theirs.clone());
        let want: Vec<u64> = expected_shape(&cfg, &ours)
            .iter()
            .rev()
            .map(|&d| d as u64)
            .collect();
        if info.dims != want {
            return Err(ModelError::Shape {
                name: format!("{theirs} (in {})", path.display()),
                expected: want.iter().map(|&d| d as usize).collect(),
                found: info.dims.iter().map(|&d| d as usize).collect(),
            });
        }
        let mut bytes = file.read_tensor(info)?;
        if cfg.arch == Arch::Llama {
            if let Some(h) = heads(&ours) {
                let rows = h * cfg.head_dim();
                let hd = cfg.head_dim();
                bytes = reorder_rows(&bytes, rows, |r| gguf_row_of(r, hd));
            }
        }
        put(ours, info, bytes, &mut tensors, &mut quant)?;
    }
    if cfg.arch == Arch::Gpt2 {
        for i in 0..cfg.n_layers {
            for part in ["weight", "bias"] {
                let name = format!("blk.{i}.attn_qkv.{part}");
                let info = file.tensor(&name).ok_or_else(|| ModelError::Missing {
                    name: name.clone(),
                    hint: format!(" in {}", path.display()),
                })?;
                used.insert(name.clone());
                let c = cfg.emb_dim;
                let want: Vec<u64> = if part == "weight" {
                    vec![c as u64, 3 * c as u64]
                } else {
                    vec![3 * c as u64]
                };
                if info.dims != want {
                    return Err(ModelError::Shape {
                        name: format!("{name} (in {})", path.display()),
                        expected: want.iter().map(|&d| d as usize).collect(),
                        found: info.dims.iter().map(|&d| d as usize).collect(),
                    });
                }
                let bytes = file.read_tensor(info)?;
                let third = bytes.len() / 3;
                for (k, m) in ["W_query", "W_key", "W_value"].iter().enumerate() {
                    let mut piece = info.clone();
                    piece.dims = if part == "weight" {
                        vec![c as u64, c as u64]
                    } else {
                        vec![c as u64]
                    };
                    put(
                        format!("trf_blocks.{i}.att.{m}.{part}"),
                        &piece,
                        bytes[k * third..(k + 1) * third].to_vec(),
                        &mut tensors,
                        &mut quant,
                    )?;
                }
            }
        }
    }
    if let Some(info) = file.tensor("rope_freqs.weight") {
        used.insert(info.name.clone());
    }
    if let Some(extra) = file.tensors().iter().find(|t| !used.contains(&t.name)) {
        return Err(bad(format!(
            "holds tensor {} that a {} model of its metadata has no place for",
            extra.name,
            cfg.arch.name()
        )));
    }
    let mut weights = Weights::new(tensors, path.display().to_string());
    weights.quant = quant;
    Ok(ModelFiles {
        config: cfg,
        weights,
        tokenizer,
        layout: Layout::Gguf,
        classifier: None,
        prompt_style: None,
    })
}

fn config_of(file: &GgufFile, path: &Path) -> Result<GptConfig> {
    let bad = |m: String| ModelError::file(path, m);
    let name = file.get_str("general.architecture")?;
    let arch = match name {
        "gpt2" => Arch::Gpt2,
        "llama" => Arch::Llama,
        "qwen3" => Arch::Qwen3,
        "gemma3" => Arch::Gemma3,
        other => {
            return Err(bad(format!(
            "general.architecture is {other:?}; scratchllm computes gpt2, llama, qwen3 and gemma3"
        )))
        }
    };
    let key = |k: &str| format!("{name}.{k}");
    let usize_of = |k: &str| -> Result<usize> {
        let v = file.get_u64(&key(k))?;
        usize::try_from(v).map_err(|_| bad(format!("{} is {v}, too large", key(k))))
    };
    let opt_usize =
        |k: &str| -> Result<Option<usize>> { Ok(file.opt_u64(&key(k))?.map(|v| v as usize)) };
    let emb = file
        .tensor("token_embd.weight")
        .ok_or_else(|| ModelError::Missing {
            name: "token_embd.weight".into(),
            hint: format!(" in {}", path.display()),
        })?;
    let vocab_size =
        *emb.dims
            .get(1)
            .ok_or_else(|| bad("token_embd.weight is not a matrix".into()))? as usize;
    let mut cfg = GptConfig {
        arch,
        vocab_size,
        context_length: usize_of("context_length")?,
        emb_dim: usize_of("embedding_length")?,
        n_heads: usize_of("attention.head_count")?,
        n_layers: usize_of("block_count")?,
        tie_embeddings: file.tensor("output.weight").is_none(),
        ..Default::default()
    };
    if emb.dims[0] != cfg.emb_dim as u64 {
        return Err(bad(format!(
            "{} is {} but token_embd.weight's rows are {} long",
            key("embedding_length"),
            cfg.emb_dim,
            emb.dims[0]
        )));
    }
    // The sizes within range before anything is sized from them.
    let valid = |cfg: &GptConfig| {
        cfg.validate()
            .map_err(|e| bad(format!("its metadata: {e}")))
    };
    if arch == Arch::Gpt2 {
        cfg.qkv_bias = true;
        valid(&cfg)?;
        let ff = usize_of("feed_forward_length")?;
        if ff != 4 * cfg.emb_dim {
            return Err(bad(format!(
                "{} is {ff}; GPT-2's is 4 x embedding_length ({})",
                key("feed_forward_length"),
                4 * cfg.emb_dim
            )));
        }
        return Ok(cfg);
    }
    cfg.n_kv_heads = Some(opt_usize("attention.head_count_kv")?.unwrap_or(cfg.n_heads));
    let head_dim = opt_usize("attention.key_length")?.unwrap_or(cfg.emb_dim / cfg.n_heads.max(1));
    if let Some(v) = opt_usize("attention.value_length")? {
        if v != head_dim {
            return Err(bad(format!(
                "{} is {v} but {} is {head_dim}; scratchllm's heads have one width",
                key("attention.value_length"),
                key("attention.key_length")
            )));
        }
    }
    cfg.head_dim = Some(head_dim);
    cfg.hidden_dim = Some(usize_of("feed_forward_length")?);
    cfg.rope_base = Some(file.opt_f32(&key("rope.freq_base"))?.unwrap_or(10_000.0) as f64);
    cfg.norm_eps = Some(file.get_f32(&key("attention.layer_norm_rms_epsilon"))? as f64);
    cfg.qkv_bias = file.tensor("blk.0.attn_q.bias").is_some();
    if let Some(scaling) = file.opt_str(&key("rope.scaling.type"))? {
        if scaling != "none" {
            let factor = file.get_f32(&key("rope.scaling.factor"))? as f64;
            if scaling != "linear" {
                return Err(bad(format!(
                    "{} is {scaling:?}; scratchllm computes linear and Llama 3 scaling",
                    key("rope.scaling.type")
                )));
            }
            cfg.rope_scaling = Some(RopeScaling {
                factor,
                llama3: None,
            });
        }
    }
    if let Some(info) = file.tensor("rope_freqs.weight") {
        if info.ttype != gguf::ggml_type::F32 {
            return Err(bad("rope_freqs.weight is not f32".into()));
        }
        let bytes = file.read_tensor(info)?;
        let factors: Vec<f32> = bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        cfg.rope_scaling = Some(llama3_scaling_of(&factors, &cfg).ok_or_else(|| {
            bad("rope_freqs.weight holds factors that no Llama 3 frequency scaling gives".into())
        })?);
    }
    if arch == Arch::Gemma3 {
        cfg.query_pre_attn_scalar = Some(head_dim as f64);
        valid(&cfg)?;
        cfg.rope_local_base = Some(
            file.opt_f32(&key("rope.freq_base_swa"))?
                .unwrap_or(10_000.0) as f64,
        );
        if let Some(window) = opt_usize("attention.sliding_window")?.filter(|&w| w > 0) {
            let period = opt_usize("attention.sliding_window_pattern")?.unwrap_or(6);
            cfg.sliding_window = Some(window);
            cfg.layer_types = crate::config::gemma3_layer_types(cfg.n_layers, period);
        }
    }
    valid(&cfg)?;
    Ok(cfg)
}

/// The Llama 3 scaling whose per-pair factors are `factors` (what llama.cpp's converter writes as
/// `rope_freqs`): `factor` is the largest; between the two thresholds a factor is
/// `1 / ((1 - s) / factor + s)` with `s` linear in the pair's frequency, which fixes
/// `original_context_length / (high - low)` and `low / (high - low)`; low is taken as 1 and the
/// result checked against every factor.
fn llama3_scaling_of(factors: &[f32], cfg: &GptConfig) -> Option<RopeScaling> {
    let base = cfg.rope_base?;
    let hd = cfg.head_dim();
    if factors.len() != hd / 2 {
        return None;
    }
    let factor = factors.iter().cloned().fold(1.0f32, f32::max) as f64;
    let freq = |i: usize| 1.0 / base.powf(2.0 * i as f64 / hd as f64);
    let mid: Vec<(f64, f64)> = factors
        .iter()
        .enumerate()
        .filter(|(_, &f)| (f as f64) > 1.0 + 1e-6 && (f as f64) < factor - 1e-6)
        .map(|(i, &f)| {
            let s = (1.0 / f as f64 - 1.0 / factor) / (1.0 - 1.0 / factor);
            (freq(i) / (2.0 * std::f64::consts::PI), s) // s = A * (1 / wavelen) + B
        })
        .collect();
    let candidates: Vec<Llama3Rope> = if mid.len() >= 2 {
        let (x0, s0) = mid[0];
        let (x1, s1) = mid[mid.len() - 1];
        let a = (s1 - s0) / (x1 - x0);
        let b = s0 - a * x0;
        // low = 1: B = -1 / (high - 1), A = original / (high - 1).
        let high = 1.0 - 1.0 / b;
        let original = a * (high - 1.0);
        vec![Llama3Rope {
            low_freq_factor: 1.0,
            high_freq_factor: (high * 1e6).round() / 1e6,
            original_context_length: original.round() as usize,
        }]
    } else {
        // No pair between the thresholds: the published settings with the context they imply.
        [8192, 4096, 2048, 1024, 512, 256, 128, 64, 32, 16]
            .iter()
            .map(|&original| Llama3Rope {
                low_freq_factor: 1.0,
                high_freq_factor: 4.0,
                original_context_length: original,
            })
            .collect()
    };
    candidates.into_iter().find_map(|llama3| {
        let scaling = RopeScaling {
            factor,
            llama3: Some(llama3),
        };
        let ours = crate::decoder::inv_freq(hd, base, Some(&scaling));
        let plain = crate::decoder::inv_freq(hd, base, None);
        let ok = factors.iter().enumerate().all(|(i, &f)| {
            let got = plain[i] / ours[i];
            (got - f).abs() <= 1e-4 * f.abs().max(1.0)
        });
        ok.then_some(scaling)
    })
}

fn vocab_of(file: &GgufFile) -> Result<GgufVocab> {
    let id = |k: &str| -> Result<Option<u32>> { Ok(file.opt_u64(k)?.map(|v| v as u32)) };
    Ok(GgufVocab {
        model: file.get_str("tokenizer.ggml.model")?.to_string(),
        pre: file
            .opt_str("tokenizer.ggml.pre")?
            .unwrap_or("gpt-2")
            .to_string(),
        tokens: file.get_str_array("tokenizer.ggml.tokens")?.to_vec(),
        token_types: file
            .opt_i32_array("tokenizer.ggml.token_type")?
            .unwrap_or_default(),
        merges: file
            .opt_str_array("tokenizer.ggml.merges")?
            .map(<[String]>::to_vec)
            .unwrap_or_default(),
        bos: id("tokenizer.ggml.bos_token_id")?,
        eos: id("tokenizer.ggml.eos_token_id")?,
        eot: id("tokenizer.ggml.eot_token_id")?,
        pad: id("tokenizer.ggml.padding_token_id")?,
        scores: file
            .opt_f32_array("tokenizer.ggml.scores")?
            .unwrap_or_default(),
        add_space_prefix: file.opt_bool("tokenizer.ggml.add_space_prefix")?,
        add_bos: file
            .opt_bool("tokenizer.ggml.add_bos_token")?
            .unwrap_or(false),
        chat_template: file.opt_str("tokenizer.chat_template")?.map(str::to_string),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llama3_scaling_is_recovered_from_its_factors() {
        let cfg = crate::config::GptConfig::preset("llama3.2-1b").unwrap();
        let base = cfg.rope_base.unwrap();
        let plain = crate::decoder::inv_freq(cfg.head_dim(), base, None);
        let scaled = crate::decoder::inv_freq(cfg.head_dim(), base, cfg.rope_scaling.as_ref());
        let factors: Vec<f32> = plain.iter().zip(&scaled).map(|(p, s)| p / s).collect();
        let got = llama3_scaling_of(&factors, &cfg).expect("a scaling");
        assert_eq!(Some(got), cfg.rope_scaling);
    }
}
