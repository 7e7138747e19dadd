//! Weights by name, and the name tables between checkpoint layouts.
//!
//! Our canonical names are the book's (`tok_emb.weight`, `trf_blocks.N.att.W_query.weight`, ...),
//! with PyTorch `nn.Linear` layout `[out, in]`. Every other layout is one conversion here:
//! - Hugging Face GPT-2: `[transformer.]h.N.attn.c_attn.weight` etc., Conv1D weights `[in, out]`
//!   (transposed), the fused `c_attn` split into query, key and value; `attn.bias`/`masked_bias`
//!   buffers ignored; `lm_head.weight` only when untied.
//! - OpenAI's TensorFlow checkpoint: `model/h0/attn/c_attn/w` of shape `[1, in, out]`, `model/wte`,
//!   `ln_1/g` and `ln_1/b` for scale and shift.
use crate::config::GptConfig;
use crate::error::{ModelError, Result};
use crate::quant::QMatrix;
use candle_core::{DType, Device, Tensor};
use rand::{Rng, SeedableRng};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

/// Tensors by canonical name, with where they came from for error messages.
#[derive(Clone, Debug)]
pub struct Weights {
    pub(crate) tensors: HashMap<String, Tensor>,
    /// Linear layers' matrices (`NAME.weight`) held in a block-quantized format for inference
    /// ([`crate::quantized`]); an embedding read quantized from a GGUF file is here too, so it is
    /// written back unchanged.
    pub(crate) quant: HashMap<String, Arc<QMatrix>>,
    pub(crate) source: String,
}

impl Weights {
    pub fn new(tensors: HashMap<String, Tensor>, source: impl Into<String>) -> Self {
        Weights {
            tensors,
            quant: HashMap::new(),
            source: source.into(),
        }
    }

    /// The tensor `name`, which must have `shape`.
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let t = self
            .tensors
            .get(name)
            .ok_or_else(|| match self.quant.get(name) {
                Some(q) => ModelError::Config(format!(
                "{name} is held quantized ({}) in {}; this needs it dense (load with --dtype f32)",
                q.qtype().name(),
                self.source
            )),
                None => ModelError::Missing {
                    name: name.to_string(),
                    hint: format!(" in {}", self.source),
                },
            })?;
        if t.dims() != shape {
            return Err(ModelError::Shape {
                name: format!("{name} (in {})", self.source),
                expected: shape.to_vec(),
                found: t.dims().to_vec(),
            });
        }
        Ok(t.clone())
    }

    /// Where the weights came from (a file, or a description such as random weights).
    pub fn source(&self) -> &str {
        &self.source
    }

    pub fn tensors(&self) -> &HashMap<String, Tensor> {
        &self.tensors
    }

    pub fn into_tensors(self) -> HashMap<String, Tensor> {
        self.tensors
    }

    /// Whether the matrices are stored in bf16 (a model published in bf16).
    pub fn stores_bf16(&self) -> bool {
        self.tensors
            .values()
            .any(|t| t.rank() == 2 && t.dtype() == DType::BF16)
    }

    /// The weights converted tensor by tensor (each stored tensor is freed as its replacement is
    /// made, so a bf16 model is never held twice): vectors (norms, biases) in f32, matrices
    /// (linear layers, embeddings) in bf16 when `bf16_matrices` (half the memory and the bytes
    /// generation streams), else f32. A tensor already in the wanted dtype is kept without a copy.
    pub fn converted(self, bf16_matrices: bool) -> Result<Weights> {
        let source = if bf16_matrices {
            format!("{} (bf16 matrices)", self.source)
        } else {
            self.source
        };
        let tensors = self
            .tensors
            .into_iter()
            .map(|(n, t)| {
                let dtype = if t.rank() == 2 && bf16_matrices {
                    DType::BF16
                } else {
                    DType::F32
                };
                Ok((n, t.to_dtype(dtype)?))
            })
            .collect::<Result<_>>()?;
        Ok(Weights {
            tensors,
            quant: self.quant,
            source,
        })
    }

    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// Random weights as the book initializes them (PyTorch defaults: Linear and Embedding from
    /// kaiming-uniform / normal(0, 1); norms at scale 1, shift 0); used for fresh models and benchmarks.
    /// Llama, Qwen3 and Gemma 3 are initialized as transformers does ([`random_decoder`]).
    pub fn random(cfg: &GptConfig, seed: u64, device: &Device) -> Result<Self> {
        cfg.validate()?;
        if cfg.arch.is_decoder() {
            return random_decoder(cfg, seed, device);
        }
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let (v, c) = (cfg.vocab_size, cfg.emb_dim);
        let mut t = HashMap::new();
        let mut uniform = |n: usize, bound: f32| -> Vec<f32> {
            (0..n).map(|_| rng.random_range(-bound..bound)).collect()
        };
        let mut linear = |t: &mut HashMap<String, Tensor>,
                          name: String,
                          out_dim: usize,
                          in_dim: usize,
                          bias: bool|
         -> Result<()> {
            // PyTorch's nn.Linear default: U(-1/sqrt(in), 1/sqrt(in)) for weight and bias.
            let bound = 1.0 / (in_dim as f32).sqrt();
            t.insert(
                format!("{name}.weight"),
                Tensor::from_vec(uniform(out_dim * in_dim, bound), (out_dim, in_dim), device)?,
            );
            if bias {
                t.insert(
                    format!("{name}.bias"),
                    Tensor::from_vec(uniform(out_dim, bound), out_dim, device)?,
                );
            }
            Ok(())
        };
        let mut normal_rng = rand::rngs::StdRng::seed_from_u64(seed ^ 0x9e37_79b9_7f4a_7c15);
        let mut normal = |rows: usize| -> Result<Tensor> {
            Ok(Tensor::from_vec(
                standard_normal(rows * c, &mut normal_rng),
                (rows, c),
                device,
            )?)
        };
        t.insert("tok_emb.weight".into(), normal(v)?);
        t.insert("pos_emb.weight".into(), normal(cfg.context_length)?);
        for i in 0..cfg.n_layers {
            let p = format!("trf_blocks.{i}");
            for m in ["W_query", "W_key", "W_value"] {
                linear(&mut t, format!("{p}.att.{m}"), c, c, cfg.qkv_bias)?;
            }
            linear(&mut t, format!("{p}.att.out_proj"), c, c, true)?;
            linear(&mut t, format!("{p}.ff.layers.0"), 4 * c, c, true)?;
            linear(&mut t, format!("{p}.ff.layers.2"), c, 4 * c, true)?;
            for n in ["norm1", "norm2"] {
                t.insert(
                    format!("{p}.{n}.scale"),
                    Tensor::ones(c, DType::F32, device)?,
                );
                t.insert(
                    format!("{p}.{n}.shift"),
                    Tensor::zeros(c, DType::F32, device)?,
                );
            }
        }
        t.insert(
            "final_norm.scale".into(),
            Tensor::ones(c, DType::F32, device)?,
        );
        t.insert(
            "final_norm.shift".into(),
            Tensor::zeros(c, DType::F32, device)?,
        );
        if !cfg.tie_embeddings {
            linear(&mut t, "out_head".into(), v, c, false)?;
        }
        Ok(Weights::new(t, "random initialization"))
    }
}

/// transformers' `_init_weights` for Llama, Qwen3 and Gemma 3: every matrix (embedding and linear
/// layers) from N(0, 0.02), the published models' `initializer_range`; norms start at 1 (Gemma's
/// scale is 1 + w, so zeros there). The book's N(0, 1) embedding is wrong here: with a tied head
/// and RMSNorm, each token's own logit starts near `emb_dim` (a first loss of ~60 instead of
/// ln(vocab) for llama3-tiny).
fn random_decoder(cfg: &GptConfig, seed: u64, device: &Device) -> Result<Weights> {
    const STD: f32 = 0.02;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut t = HashMap::new();
    let mut matrix =
        |t: &mut HashMap<String, Tensor>, name: String, rows: usize, cols: usize| -> Result<()> {
            let w: Vec<f32> = standard_normal(rows * cols, &mut rng)
                .into_iter()
                .map(|x| x * STD)
                .collect();
            t.insert(name, Tensor::from_vec(w, (rows, cols), device)?);
            Ok(())
        };
    let norm_init = if cfg.arch == crate::config::Arch::Gemma3 {
        0.0
    } else {
        1.0
    };
    let norm = |t: &mut HashMap<String, Tensor>, name: String, n: usize| -> Result<()> {
        t.insert(name, Tensor::full(norm_init as f32, n, device)?);
        Ok(())
    };
    let (v, c, hs, h) = (cfg.vocab_size, cfg.emb_dim, cfg.head_dim(), cfg.ff_dim());
    let (q, kv) = (cfg.n_heads * hs, cfg.kv_heads() * hs);
    matrix(&mut t, "tok_emb.weight".into(), v, c)?;
    for i in 0..cfg.n_layers {
        let p = format!("trf_blocks.{i}");
        for (m, out_dim) in [("W_query", q), ("W_key", kv), ("W_value", kv)] {
            matrix(&mut t, format!("{p}.att.{m}.weight"), out_dim, c)?;
            if cfg.qkv_bias {
                t.insert(
                    format!("{p}.att.{m}.bias"),
                    Tensor::zeros(out_dim, DType::F32, device)?,
                );
            }
        }
        matrix(&mut t, format!("{p}.att.out_proj.weight"), c, q)?;
        matrix(&mut t, format!("{p}.ff.fc1.weight"), h, c)?;
        matrix(&mut t, format!("{p}.ff.fc2.weight"), h, c)?;
        matrix(&mut t, format!("{p}.ff.fc3.weight"), c, h)?;
        norm(&mut t, format!("{p}.norm1.scale"), c)?;
        norm(&mut t, format!("{p}.norm2.scale"), c)?;
        if cfg.arch != crate::config::Arch::Llama {
            norm(&mut t, format!("{p}.att.q_norm.scale"), hs)?;
            norm(&mut t, format!("{p}.att.k_norm.scale"), hs)?;
        }
        if cfg.arch == crate::config::Arch::Gemma3 {
            norm(&mut t, format!("{p}.post_att_norm.scale"), c)?;
            norm(&mut t, format!("{p}.post_ff_norm.scale"), c)?;
        }
    }
    norm(&mut t, "final_norm.scale".into(), c)?;
    if !cfg.tie_embeddings {
        matrix(&mut t, "out_head.weight".into(), v, c)?;
    }
    Ok(Weights::new(t, "random initialization"))
}

/// `n` draws from N(0, 1) (Box–Muller), as `nn.Embedding` initializes.
fn standard_normal(n: usize, rng: &mut impl Rng) -> Vec<f32> {
    let mut out = Vec::with_capacity(n + 1);
    while out.len() < n {
        let u1: f64 = rng.random_range(f64::MIN_POSITIVE..1.0);
        let u2: f64 = rng.random();
        let r = (-2.0 * u1.ln()).sqrt();
        let theta = 2.0 * std::f64::consts::PI * u2;
        out.push((r * theta.cos()) as f32);
        out.push((r * theta.sin()) as f32);
    }
    out.truncate(n);
    out
}

/// Reads every tensor of a safetensors file on `device`, each in its stored dtype (f32, bf16, f16;
/// f64 becomes f32). The header is validated by the `safetensors` crate (offsets in range and not
/// overlapping) on a read-only map of the file; each tensor's bytes are then read straight into the
/// buffer the tensor keeps, so loading costs the weights' size plus nothing (no mapped pages stay
/// resident, no whole-file copy, no f32 copy of a bf16 model).
pub fn read_safetensors(path: &Path, device: &Device) -> Result<HashMap<String, Tensor>> {
    use std::os::unix::fs::FileExt;
    let file = std::fs::File::open(path).map_err(|e| ModelError::io(path, e))?;
    // SAFETY: the map is read-only and dropped before returning; only the header is read from it.
    let mmap = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| ModelError::io(path, e))?;
    let st = safetensors::SafeTensors::deserialize(&mmap)
        .map_err(|e| ModelError::file(path, format!("not a valid safetensors file: {e}")))?;
    let mut out = HashMap::new();
    for (name, view) in st.tensors() {
        let start = view.data().as_ptr() as usize - mmap.as_ptr() as usize;
        let read = |bytes: &mut [u8]| {
            file.read_exact_at(bytes, start as u64)
                .map_err(|e| ModelError::io(path, e))
        };
        let shape = view.shape().to_vec();
        let t = match view.dtype() {
            safetensors::Dtype::F32 => {
                Tensor::from_vec(read_into::<f32>(&shape, read)?, shape, device)
            }
            safetensors::Dtype::BF16 => {
                Tensor::from_vec(read_into::<half::bf16>(&shape, read)?, shape, device)
            }
            safetensors::Dtype::F16 => {
                Tensor::from_vec(read_into::<half::f16>(&shape, read)?, shape, device)
            }
            safetensors::Dtype::F64 => {
                Tensor::from_vec(read_into::<f64>(&shape, read)?, shape, device)
                    .and_then(|t| t.to_dtype(DType::F32))
            }
            // Integer buffers (such as old attention masks) are not weights.
            _ => continue,
        }
        .map_err(|e| ModelError::file(path, format!("tensor {name}: {e}")))?;
        out.insert(name, t);
    }
    Ok(out)
}

/// A buffer of `shape`'s element count filled by `read` with the stored little-endian bytes.
fn read_into<T: Copy + Default>(
    shape: &[usize],
    read: impl Fn(&mut [u8]) -> Result<()>,
) -> Result<Vec<T>> {
    let n: usize = shape.iter().product();
    let mut buf = vec![T::default(); n];
    // SAFETY: T is a plain number type (f32, f64, bf16, f16) for which every bit pattern is valid,
    // and the byte view covers exactly the buffer; safetensors stores little-endian, as x86 and
    // aarch64 are.
    let bytes = unsafe {
        std::slice::from_raw_parts_mut(buf.as_mut_ptr().cast::<u8>(), n * std::mem::size_of::<T>())
    };
    read(bytes)?;
    Ok(buf)
}

/// The weights of a Hugging Face directory: `model.safetensors`, or the shards that
/// `model.safetensors.index.json` lists (each shard a plain file name in the directory, each tensor
/// found in the shard the index names). Returns the tensors and a description of where they are.
pub fn read_hf_weights(dir: &Path, device: &Device) -> Result<(HashMap<String, Tensor>, String)> {
    let index = dir.join("model.safetensors.index.json");
    if !index.is_file() {
        let st = dir.join("model.safetensors");
        return Ok((read_safetensors(&st, device)?, st.display().to_string()));
    }
    let text = scratchllm_tokenizer::io::read_text(&index)?;
    let v: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| ModelError::file(&index, format!("invalid JSON: {e}")))?;
    let map = v
        .get("weight_map")
        .and_then(serde_json::Value::as_object)
        .ok_or_else(|| ModelError::file(&index, "weight_map is missing or not an object"))?;
    let mut shards: Vec<&str> = Vec::new();
    for (name, file) in map {
        let file = file.as_str().ok_or_else(|| {
            ModelError::file(
                &index,
                format!("weight_map[{name:?}] is {file}, not a file name"),
            )
        })?;
        let plain = !file.is_empty() && !file.contains(['/', '\\']) && file != "." && file != "..";
        if !plain {
            return Err(ModelError::file(
                &index,
                format!("weight_map[{name:?}] names {file:?}, which is not a file name in the directory"),
            ));
        }
        if !shards.contains(&file) {
            shards.push(file);
        }
    }
    shards.sort_unstable();
    let mut out = HashMap::new();
    for shard in &shards {
        let path = dir.join(shard);
        if !path.is_file() {
            return Err(ModelError::file(
                &index,
                format!(
                    "lists shard {shard}, which is missing from {}",
                    dir.display()
                ),
            ));
        }
        let tensors = read_safetensors(&path, device)?;
        for (name, t) in tensors {
            if map.get(&name).and_then(serde_json::Value::as_str) == Some(shard) {
                out.insert(name, t);
            }
        }
    }
    if let Some((name, file)) = map.iter().find(|(n, _)| !out.contains_key(*n)) {
        return Err(ModelError::file(
            &index,
            format!("tensor {name} is listed in {file}, but that shard does not hold it"),
        ));
    }
    Ok((
        out,
        format!("{} ({} shards)", index.display(), shards.len()),
    ))
}

/// Writes tensors to a safetensors file atomically, bf16 and f16 tensors as they are and every
/// other one as f32.
pub fn write_safetensors(tensors: &HashMap<String, Tensor>, path: &Path) -> Result<()> {
    let mut names: Vec<&String> = tensors.keys().collect();
    names.sort();
    let mut views = Vec::with_capacity(names.len());
    for name in names {
        let t = &tensors[name];
        let (dtype, bytes): (_, Vec<u8>) = match t.dtype() {
            DType::BF16 => (
                safetensors::Dtype::BF16,
                t.flatten_all()?
                    .to_vec1::<half::bf16>()?
                    .iter()
                    .flat_map(|x| x.to_le_bytes())
                    .collect(),
            ),
            DType::F16 => (
                safetensors::Dtype::F16,
                t.flatten_all()?
                    .to_vec1::<half::f16>()?
                    .iter()
                    .flat_map(|x| x.to_le_bytes())
                    .collect(),
            ),
            _ => (
                safetensors::Dtype::F32,
                t.to_dtype(DType::F32)?
                    .flatten_all()?
                    .to_vec1::<f32>()?
                    .iter()
                    .flat_map(|x| x.to_le_bytes())
                    .collect(),
            ),
        };
        views.push((name.clone(), dtype, t.dims().to_vec(), bytes));
    }
    let st: Vec<(String, safetensors::tensor::TensorView)> = views
        .iter()
        .map(|(n, dtype, shape, bytes)| {
            safetensors::tensor::TensorView::new(*dtype, shape.clone(), bytes)
                .map(|v| (n.clone(), v))
                .map_err(|e| ModelError::file(path, format!("tensor {n}: {e}")))
        })
        .collect::<Result<_>>()?;
    let bytes =
        safetensors::serialize(st, None).map_err(|e| ModelError::file(path, e.to_string()))?;
    scratchllm_tokenizer::io::atomic_write(path, &bytes)?;
    Ok(())
}

/// Takes `name` out of `map`, or says it is missing from `source`.
fn take(map: &mut HashMap<String, Tensor>, name: &str, source: &str) -> Result<Tensor> {
    map.remove(name).ok_or_else(|| ModelError::Missing {
        name: name.to_string(),
        hint: format!(" in {source}"),
    })
}

/// Splits a fused `[.., 3C]` query/key/value tensor along its last dimension.
fn split3(t: &Tensor) -> Result<[Tensor; 3]> {
    let n = t.dims()[t.rank() - 1];
    if !n.is_multiple_of(3) {
        return Err(ModelError::Config(format!(
            "c_attn has width {n}, which is not 3 * emb_dim"
        )));
    }
    let d = t.rank() - 1;
    Ok([
        t.narrow(d, 0, n / 3)?,
        t.narrow(d, n / 3, n / 3)?,
        t.narrow(d, 2 * n / 3, n / 3)?,
    ])
}

/// The per-block parts of GPT-2's layout: (HF/TF module path, our module path, is Conv1D).
const BLOCK_LINEARS: [(&str, &str); 3] = [
    ("attn.c_proj", "att.out_proj"),
    ("mlp.c_fc", "ff.layers.0"),
    ("mlp.c_proj", "ff.layers.2"),
];
const BLOCK_NORMS: [(&str, &str); 2] = [("ln_1", "norm1"), ("ln_2", "norm2")];

/// Converts GPT-2's layout to ours. `key(module, param)` names a tensor in the source
/// (`param` is `weight`/`bias`, or for norms `scale`/`shift`); `conv(t)` turns a Conv1D weight into `[in, out]`.
fn from_gpt2_layout(
    map: &mut HashMap<String, Tensor>,
    n_layers: usize,
    source: &str,
    key: &dyn Fn(&str, &str) -> String,
    conv: &dyn Fn(Tensor) -> Result<Tensor>,
) -> Result<HashMap<String, Tensor>> {
    let mut out = HashMap::new();
    let mut get = |m: &str, p: &str| take(map, &key(m, p), source);
    out.insert("tok_emb.weight".into(), get("wte", "weight")?);
    out.insert("pos_emb.weight".into(), get("wpe", "weight")?);
    for i in 0..n_layers {
        let h = format!("h{i}");
        let ours = format!("trf_blocks.{i}");
        let w = split3(&conv(get(&format!("{h}.attn.c_attn"), "weight")?)?)?; // 3 x [in, C]
        let b = split3(&get(&format!("{h}.attn.c_attn"), "bias")?)?;
        for (j, m) in ["W_query", "W_key", "W_value"].iter().enumerate() {
            out.insert(format!("{ours}.att.{m}.weight"), w[j].t()?.contiguous()?); // [out, in]
            out.insert(format!("{ours}.att.{m}.bias"), b[j].contiguous()?);
        }
        for (theirs, mine) in BLOCK_LINEARS {
            out.insert(
                format!("{ours}.{mine}.weight"),
                conv(get(&format!("{h}.{theirs}"), "weight")?)?
                    .t()?
                    .contiguous()?,
            );
            out.insert(
                format!("{ours}.{mine}.bias"),
                get(&format!("{h}.{theirs}"), "bias")?,
            );
        }
        for (theirs, mine) in BLOCK_NORMS {
            out.insert(
                format!("{ours}.{mine}.scale"),
                get(&format!("{h}.{theirs}"), "scale")?,
            );
            out.insert(
                format!("{ours}.{mine}.shift"),
                get(&format!("{h}.{theirs}"), "shift")?,
            );
        }
    }
    out.insert("final_norm.scale".into(), get("ln_f", "scale")?);
    out.insert("final_norm.shift".into(), get("ln_f", "shift")?);
    Ok(out)
}

/// Hugging Face GPT-2 names (with or without `transformer.`) to ours; the head stays tied unless
/// an `lm_head.weight` differs from the embedding.
pub fn from_hf(
    mut map: HashMap<String, Tensor>,
    n_layers: usize,
    source: &str,
) -> Result<(HashMap<String, Tensor>, bool)> {
    let prefix = if map.contains_key("transformer.wte.weight") {
        "transformer."
    } else {
        ""
    };
    let key = |m: &str, p: &str| {
        // "h3.attn.c_attn" is "h.3.attn.c_attn" here.
        let m = match m.strip_prefix('h').and_then(|r| r.split_once('.')) {
            Some((i, rest)) if i.parse::<usize>().is_ok() => format!("h.{i}.{rest}"),
            _ => m.to_string(),
        };
        let p = match p {
            "scale" => "weight",
            "shift" => "bias",
            p => p,
        };
        format!("{prefix}{m}.{p}")
    };
    let lm_head = map.remove("lm_head.weight");
    let mut out = from_gpt2_layout(&mut map, n_layers, source, &key, &|t| Ok(t))?;
    let tied = match lm_head {
        None => true,
        Some(h) => {
            let same = h.dims() == out["tok_emb.weight"].dims()
                && (&h - &out["tok_emb.weight"])?
                    .abs()?
                    .max_all()?
                    .to_scalar::<f32>()?
                    == 0.0;
            if !same {
                out.insert("out_head.weight".into(), h);
            }
            same
        }
    };
    Ok((out, tied))
}

/// OpenAI's TensorFlow names (`model/h0/attn/c_attn/w`, Conv1D as `[1, in, out]`) to ours.
pub fn from_openai(
    mut map: HashMap<String, Tensor>,
    n_layers: usize,
    source: &str,
) -> Result<HashMap<String, Tensor>> {
    let key = |m: &str, p: &str| {
        let m = m.replace('.', "/");
        let p = match (m.as_str(), p) {
            ("wte" | "wpe", _) => return format!("model/{m}"),
            (_, "weight") => "w",
            (_, "bias") => "b",
            (_, "scale") => "g",
            (_, "shift") => "b",
            (_, p) => p,
        };
        format!("model/{m}/{p}")
    };
    let squeeze = |t: Tensor| -> Result<Tensor> {
        if t.rank() == 3 {
            Ok(t.squeeze(0)?)
        } else {
            Ok(t)
        }
    };
    from_gpt2_layout(&mut map, n_layers, source, &key, &squeeze)
}

/// Our names to Hugging Face's `GPT2LMHeadModel` names (with `transformer.`, Conv1D `[in, out]`).
pub fn to_hf(w: &HashMap<String, Tensor>, cfg: &GptConfig) -> Result<HashMap<String, Tensor>> {
    let get = |n: &str| {
        w.get(n).cloned().ok_or_else(|| ModelError::Missing {
            name: n.into(),
            hint: String::new(),
        })
    };
    let mut out = HashMap::new();
    out.insert("transformer.wte.weight".into(), get("tok_emb.weight")?);
    out.insert("transformer.wpe.weight".into(), get("pos_emb.weight")?);
    for i in 0..cfg.n_layers {
        let (h, ours) = (format!("transformer.h.{i}"), format!("trf_blocks.{i}"));
        let qkv: Vec<Tensor> = ["W_query", "W_key", "W_value"]
            .iter()
            .map(|m| get(&format!("{ours}.att.{m}.weight")))
            .collect::<Result<_>>()?;
        out.insert(
            format!("{h}.attn.c_attn.weight"),
            Tensor::cat(&qkv, 0)?.t()?.contiguous()?,
        ); // [C, 3C]
        let bias: Vec<Tensor> = ["W_query", "W_key", "W_value"]
            .iter()
            .map(|m| match w.get(&format!("{ours}.att.{m}.bias")) {
                Some(b) => Ok(b.clone()),
                None => Ok(Tensor::zeros(cfg.emb_dim, DType::F32, qkv[0].device())?),
            })
            .collect::<Result<_>>()?;
        out.insert(format!("{h}.attn.c_attn.bias"), Tensor::cat(&bias, 0)?);
        for (theirs, mine) in BLOCK_LINEARS {
            out.insert(
                format!("{h}.{theirs}.weight"),
                get(&format!("{ours}.{mine}.weight"))?.t()?.contiguous()?,
            );
            out.insert(
                format!("{h}.{theirs}.bias"),
                get(&format!("{ours}.{mine}.bias"))?,
            );
        }
        for (theirs, mine) in BLOCK_NORMS {
            out.insert(
                format!("{h}.{theirs}.weight"),
                get(&format!("{ours}.{mine}.scale"))?,
            );
            out.insert(
                format!("{h}.{theirs}.bias"),
                get(&format!("{ours}.{mine}.shift"))?,
            );
        }
    }
    out.insert("transformer.ln_f.weight".into(), get("final_norm.scale")?);
    out.insert("transformer.ln_f.bias".into(), get("final_norm.shift")?);
    if !cfg.tie_embeddings {
        out.insert("lm_head.weight".into(), get("out_head.weight")?);
    }
    Ok(out)
}
