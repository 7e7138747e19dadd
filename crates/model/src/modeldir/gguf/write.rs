//! Writing a model as one GGUF file, with the metadata llama.cpp's loader requires.
use super::{arch_name, expected_shape, gemma_norm, llama_row_of, name_pairs, reorder_rows};
use crate::config::{Arch, GptConfig, LayerType, RopeScaling};
use crate::error::{ModelError, Result};
use crate::gguf::{self, Array, GgufWriter, Value};
use crate::quant::{QMatrix, QType};
use crate::weights::Weights;
use candle_core::{DType, Device, Tensor};
use scratchllm_tokenizer::gguf::GgufVocab;
use scratchllm_tokenizer::Tokenizer;
use std::path::Path;

/// How [`write_gguf`] stores the tensors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GgufQuant {
    /// Dense tensors as they are held (f32 or bf16); quantized ones kept.
    Stored,
    F32,
    F16,
    /// Matrices (the embedding and the linear layers) in a block format; vectors and GPT-2's
    /// position embedding f32.
    Blocks(QType),
}

/// The GGUF `general.file_type` (llama.cpp's `llama_ftype`) of a quantization.
fn file_type(q: GgufQuant, weights: &Weights) -> u32 {
    match q {
        GgufQuant::F32 => 0,
        GgufQuant::F16 => 1,
        GgufQuant::Blocks(QType::Q4_0) => 2,
        GgufQuant::Blocks(QType::Q8_0) => 7,
        GgufQuant::Blocks(QType::Q4K) => 15,
        GgufQuant::Blocks(QType::Q6K) => 18,
        GgufQuant::Stored => {
            // The block format most matrices are in; else the dense matrices' type.
            let types: Vec<QType> = weights.quant_matrices().map(|(_, q)| q.qtype()).collect();
            let count = |t: &QType| types.iter().filter(|u| *u == t).count();
            let held = |d: DType| {
                weights
                    .tensors()
                    .values()
                    .any(|t| t.rank() == 2 && t.dtype() == d)
            };
            match types.iter().max_by_key(|t| count(t)) {
                Some(&q) => file_type(GgufQuant::Blocks(q), weights),
                None if held(DType::F16) => 1,
                None if held(DType::BF16) => 32,
                None => 0,
            }
        }
    }
}

/// Writes `cfg`'s model with `w`'s weights and `tok` as one GGUF file, atomically.
pub fn write_gguf(
    path: &Path,
    cfg: &GptConfig,
    w: &Weights,
    tok: &Tokenizer,
    quant: GgufQuant,
) -> Result<()> {
    if cfg.num_classes.is_some() {
        return Err(ModelError::Config(
            "a classifier has no GGUF form (llama.cpp runs language models)".into(),
        ));
    }
    let mut out = GgufWriter::new();
    let name = arch_name(cfg.arch);
    let key = |k: &str| format!("{name}.{k}");
    let u32v = |v: usize| Value::U32(v as u32);
    out.add("general.architecture", Value::Str(name.into()))?;
    out.add("general.name", Value::Str(format!("scratchllm {name}")))?;
    out.add("general.quantization_version", Value::U32(2))?;
    out.add("general.file_type", Value::U32(file_type(quant, w)))?;
    out.add(key("context_length"), u32v(cfg.context_length))?;
    out.add(key("embedding_length"), u32v(cfg.emb_dim))?;
    out.add(key("block_count"), u32v(cfg.n_layers))?;
    out.add(key("feed_forward_length"), u32v(cfg.ff_dim()))?;
    out.add(key("attention.head_count"), u32v(cfg.n_heads))?;
    if cfg.arch == Arch::Gpt2 {
        out.add(key("attention.layer_norm_epsilon"), Value::F32(1e-5))?;
    } else {
        out.add(key("attention.head_count_kv"), u32v(cfg.kv_heads()))?;
        out.add(key("attention.key_length"), u32v(cfg.head_dim()))?;
        out.add(key("attention.value_length"), u32v(cfg.head_dim()))?;
        out.add(key("rope.dimension_count"), u32v(cfg.head_dim()))?;
        out.add(
            key("attention.layer_norm_rms_epsilon"),
            Value::F32(cfg.eps() as f32),
        )?;
        out.add(
            key("rope.freq_base"),
            Value::F32(cfg.rope_base.unwrap_or(10_000.0) as f32),
        )?;
        out.add(key("vocab_size"), u32v(cfg.vocab_size))?;
        if let Some(RopeScaling {
            factor,
            llama3: None,
        }) = &cfg.rope_scaling
        {
            out.add(key("rope.scaling.type"), Value::Str("linear".into()))?;
            out.add(key("rope.scaling.factor"), Value::F32(*factor as f32))?;
        }
    }
    if cfg.arch == Arch::Gemma3 {
        gemma_settings(cfg, &mut out)?;
    } else if cfg.sliding_window.is_some() {
        return Err(ModelError::Config(format!(
            "sliding-window layers on a {} model have no GGUF form",
            cfg.arch.name()
        )));
    }
    let mut vocab =
        GgufVocab::from_tokenizer(tok).map_err(|e| ModelError::Config(e.to_string()))?;
    if vocab.tokens.len() > cfg.vocab_size {
        return Err(ModelError::Config(format!(
            "the tokenizer has {} tokens but the model's embedding only {} rows",
            vocab.tokens.len(),
            cfg.vocab_size
        )));
    }
    // Embedding rows past the tokenizer (a vocabulary padded to a round size) get unused tokens,
    // as llama.cpp's converter writes them: llama.cpp wants one token per row.
    for id in vocab.tokens.len()..cfg.vocab_size {
        vocab.tokens.push(format!("[PAD{id}]"));
        vocab.token_types.push(scratchllm_tokenizer::gguf::UNUSED);
        if !vocab.scores.is_empty() {
            vocab.scores.push(f32::MIN);
        }
    }
    write_vocab(&mut out, vocab)?;
    let tensor = |ours: &str| -> Result<Tensor> {
        w.tensors()
            .get(ours)
            .cloned()
            .ok_or_else(|| ModelError::Missing {
                name: ours.to_string(),
                hint: format!(" in {}", w.source()),
            })
    };
    let llama_heads = |ours: &str| match ours {
        _ if cfg.arch != Arch::Llama => None,
        s if s.ends_with("att.W_query.weight") => Some(cfg.n_heads),
        s if s.ends_with("att.W_key.weight") => Some(cfg.kv_heads()),
        _ => None,
    };
    let mut add = |gguf_name: String, ours: &str, rows_from: Option<usize>| -> Result<()> {
        let shape = expected_shape(cfg, ours);
        let matrix = shape.len() == 2 && ours != "pos_emb.weight";
        let (ttype, mut bytes) = encode(w, ours, &tensor, matrix, quant, cfg)?;
        if let Some(h) = rows_from {
            let hd = cfg.head_dim();
            bytes = reorder_rows(&bytes, h * hd, |r| llama_row_of(r, hd));
        }
        let dims: Vec<u64> = shape.iter().rev().map(|&d| d as u64).collect();
        out.add_tensor(&gguf_name, dims, ttype, bytes)
    };
    for (theirs, ours) in name_pairs(cfg) {
        add(theirs, &ours, llama_heads(&ours))?;
    }
    if cfg.arch == Arch::Gpt2 {
        gpt2_qkv(cfg, w, &tensor, quant, &mut out)?;
    }
    if let Some(RopeScaling {
        llama3: Some(_), ..
    }) = &cfg.rope_scaling
    {
        let base = cfg.rope_base.unwrap_or(10_000.0);
        let plain = crate::decoder::inv_freq(cfg.head_dim(), base, None);
        let scaled = crate::decoder::inv_freq(cfg.head_dim(), base, cfg.rope_scaling.as_ref());
        let factors: Vec<u8> = plain
            .iter()
            .zip(&scaled)
            .flat_map(|(p, s)| (p / s).to_le_bytes())
            .collect();
        out.add_tensor(
            "rope_freqs.weight",
            vec![(cfg.head_dim() / 2) as u64],
            gguf::ggml_type::F32,
            factors,
        )?;
    }
    out.write(path)
}

fn gemma_settings(cfg: &GptConfig, out: &mut GgufWriter) -> Result<()> {
    let key = |k: &str| format!("gemma3.{k}");
    if cfg
        .query_pre_attn_scalar
        .is_some_and(|s| s != cfg.head_dim() as f64)
    {
        return Err(ModelError::Config(format!(
            "query_pre_attn_scalar {:?} differs from head_dim {}; llama.cpp scales Gemma 3's \
             attention by head_dim (27B excepted)",
            cfg.query_pre_attn_scalar,
            cfg.head_dim()
        )));
    }
    out.add(
        key("rope.freq_base_swa"),
        Value::F32(cfg.rope_local_base.unwrap_or(10_000.0) as f32),
    )?;
    if let Some(window) = cfg.sliding_window {
        out.add(key("attention.sliding_window"), Value::U32(window as u32))?;
        let period = (1..=cfg.n_layers.max(1))
            .find(|&p| crate::config::gemma3_layer_types(cfg.n_layers, p) == cfg.layer_types)
            .ok_or_else(|| {
                ModelError::Config(
                    "layer_types follow no period (llama.cpp's sliding_window_pattern)".into(),
                )
            })?;
        out.add(
            key("attention.sliding_window_pattern"),
            Value::U32(period as u32),
        )?;
    } else if cfg.layer_types.contains(&LayerType::SlidingAttention) {
        return Err(ModelError::Config(
            "sliding layers without a sliding_window".into(),
        ));
    }
    Ok(())
}

fn write_vocab(out: &mut GgufWriter, v: GgufVocab) -> Result<()> {
    let strs = |list: Vec<String>| Value::Array(Array::Str(list));
    out.add("tokenizer.ggml.model", Value::Str(v.model))?;
    out.add("tokenizer.ggml.pre", Value::Str(v.pre))?;
    out.add("tokenizer.ggml.tokens", strs(v.tokens))?;
    out.add(
        "tokenizer.ggml.token_type",
        Value::Array(Array::I32(v.token_types)),
    )?;
    if !v.merges.is_empty() {
        out.add("tokenizer.ggml.merges", strs(v.merges))?;
    }
    if !v.scores.is_empty() {
        out.add("tokenizer.ggml.scores", Value::Array(Array::F32(v.scores)))?;
    }
    if let Some(prefix) = v.add_space_prefix {
        out.add("tokenizer.ggml.add_space_prefix", Value::Bool(prefix))?;
    }
    for (k, id) in [
        ("tokenizer.ggml.bos_token_id", v.bos),
        ("tokenizer.ggml.eos_token_id", v.eos),
        ("tokenizer.ggml.eot_token_id", v.eot),
        ("tokenizer.ggml.padding_token_id", v.pad),
    ] {
        if let Some(id) = id {
            out.add(k, Value::U32(id))?;
        }
    }
    out.add("tokenizer.ggml.add_bos_token", Value::Bool(v.add_bos))?;
    if let Some(t) = v.chat_template {
        out.add("tokenizer.chat_template", Value::Str(t))?;
    }
    Ok(())
}

/// The GGUF type and bytes of our tensor `ours`: a quantized matrix kept when it already has the
/// wanted block type, else the dense values (Gemma's norms as `1 + w`) in the wanted type.
fn encode(
    w: &Weights,
    ours: &str,
    tensor: &dyn Fn(&str) -> Result<Tensor>,
    matrix: bool,
    quant: GgufQuant,
    cfg: &GptConfig,
) -> Result<(u32, Vec<u8>)> {
    let held = w.quant(ours);
    let want_blocks = match quant {
        GgufQuant::Blocks(q) if matrix => Some(q),
        GgufQuant::Stored if matrix => held.map(|q| q.qtype()),
        _ => None,
    };
    if let (Some(q), Some(want)) = (held, want_blocks) {
        if q.qtype() == want {
            return Ok((want.ggml_id(), q.bytes().to_vec()));
        }
    }
    let dense = match tensor(ours) {
        Ok(t) => t,
        Err(e) => match held {
            Some(q) => Tensor::from_vec(q.dequantize(), (q.rows(), q.cols()), &Device::Cpu)?,
            None => return Err(e),
        },
    };
    let dense = if gemma_norm(cfg, ours) {
        (dense.to_dtype(DType::F32)? + 1.0)?
    } else {
        dense
    };
    let f32s = || -> Result<Vec<f32>> { Ok(dense.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?) };
    if let Some(q) = want_blocks {
        let (rows, cols) = dense.dims2()?;
        if cols % q.block_size() == 0 {
            let m = QMatrix::quantize(q, rows, cols, &f32s()?)
                .map_err(|e| ModelError::Config(format!("{ours}: {e}")))?;
            return Ok((q.ggml_id(), m.bytes().to_vec()));
        }
    }
    let raw = |t: Tensor, dtype: DType| -> Result<Vec<u8>> {
        let t = t.to_dtype(dtype)?.flatten_all()?;
        Ok(match dtype {
            DType::F16 => t
                .to_vec1::<half::f16>()?
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect(),
            DType::BF16 => t
                .to_vec1::<half::bf16>()?
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect(),
            _ => t
                .to_vec1::<f32>()?
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect(),
        })
    };
    let (ttype, dtype) = match quant {
        GgufQuant::F16 | GgufQuant::Blocks(_) if matrix => (gguf::ggml_type::F16, DType::F16),
        GgufQuant::Stored if matrix && dense.dtype() == DType::BF16 => {
            (gguf::ggml_type::BF16, DType::BF16)
        }
        GgufQuant::Stored if matrix && dense.dtype() == DType::F16 => {
            (gguf::ggml_type::F16, DType::F16)
        }
        _ => (gguf::ggml_type::F32, DType::F32),
    };
    Ok((ttype, raw(dense, dtype)?))
}

/// GPT-2's query, key and value stacked into `attn_qkv` (weights and biases).
fn gpt2_qkv(
    cfg: &GptConfig,
    w: &Weights,
    tensor: &dyn Fn(&str) -> Result<Tensor>,
    quant: GgufQuant,
    out: &mut GgufWriter,
) -> Result<()> {
    let c = cfg.emb_dim as u64;
    for i in 0..cfg.n_layers {
        for (part, matrix, dims) in [
            ("weight", true, vec![c, 3 * c]),
            ("bias", false, vec![3 * c]),
        ] {
            let mut bytes = Vec::new();
            let mut ttype = None;
            for m in ["W_query", "W_key", "W_value"] {
                let ours = format!("trf_blocks.{i}.att.{m}.{part}");
                let (t, b) = encode(w, &ours, tensor, matrix, quant, cfg)?;
                if ttype.is_some_and(|x| x != t) {
                    return Err(ModelError::Config(format!(
                        "block {i}'s query, key and value are stored in different types"
                    )));
                }
                ttype = Some(t);
                bytes.extend(b);
            }
            out.add_tensor(
                format!("blk.{i}.attn_qkv.{part}"),
                dims,
                ttype.unwrap_or(gguf::ggml_type::F32),
                bytes,
            )?;
        }
    }
    Ok(())
}
