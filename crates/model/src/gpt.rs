//! The model: GPT-2 of the book's chapter 4 (and of nanoGPT / OpenAI's `model.py`), and the one
//! interface every architecture is used through ([`Gpt`]: embeddings, blocks, final norm, head,
//! forward with positions and a KV cache, hidden states). The decoders' blocks are in `decoder.rs`.
//!
//! Dimension letters, used in every shape comment: B batch, T new tokens, Tk keys (cached + new),
//! C = emb_dim, nh = n_heads, hs = C / nh, V = vocab_size.
//!
//! Pre-LayerNorm blocks: `x = x + drop(att(norm1(x))); x = x + drop(ff(norm2(x)))`. Every op here has a
//! backward in candle (our own LayerNorm and the composed softmax; candle-nn's fused `layer_norm` and
//! `softmax_last_dim` would silently stop gradients), so the same model trains.
use crate::config::GptConfig;
use crate::decoder::{DecoderBlock, RmsNorm, Rope};
use crate::error::Result;
pub use crate::kv_cache::KvCache;
use crate::lora::LoraSpec;
use crate::quant::QMatrix;
use crate::weights::Weights;
use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{Embedding, Linear};
use std::sync::Arc;

/// The source of dropout masks in training mode.
///
/// Mask number k drawn under seed s depends only on (s, k): a trainer that seeds it from the run's
/// seed and the step number draws the same masks after a resume as without one. (candle-nn's
/// `dropout` draws from an unseeded generator, which would break that.)
#[derive(Debug)]
pub struct DropoutRng {
    seed: u64,
    calls: std::cell::Cell<u64>,
}

impl DropoutRng {
    pub fn new(seed: u64) -> Self {
        DropoutRng {
            seed,
            calls: std::cell::Cell::new(0),
        }
    }

    /// (seed, masks drawn): where [`DropoutRng::at`] starts again.
    pub(crate) fn state(&self) -> (u64, u64) {
        (self.seed, self.calls.get())
    }

    /// A generator that draws the masks this one drew from `state` on.
    pub(crate) fn at((seed, calls): (u64, u64)) -> Self {
        DropoutRng {
            seed,
            calls: std::cell::Cell::new(calls),
        }
    }

    /// The next mask, dropping with probability `p` (see [`crate::kernels::Mask`]).
    fn next(&self, p: f32) -> crate::kernels::Mask {
        let k = self.calls.get();
        self.calls.set(k + 1);
        crate::kernels::Mask::new(self.seed ^ k.wrapping_mul(0x9e37_79b9_7f4a_7c15), p)
    }
}

/// Dropout, active only when a generator is given (training mode).
pub(crate) fn dropout(x: &Tensor, p: f32, rng: Option<&DropoutRng>) -> Result<Tensor> {
    match dropout_mask(p, rng) {
        Some(mask) => Ok(crate::kernels::dropout(x, mask)?),
        None => Ok(x.clone()),
    }
}

/// The next dropout mask when training with `p > 0`.
pub(crate) fn dropout_mask(p: f32, rng: Option<&DropoutRng>) -> Option<crate::kernels::Mask> {
    rng.filter(|_| p > 0.0).map(|rng| rng.next(p))
}

/// The residual connection `x + dropout(h)`.
pub(crate) fn residual(x: &Tensor, h: &Tensor, p: f32, rng: Option<&DropoutRng>) -> Result<Tensor> {
    match rng {
        Some(rng) if p > 0.0 => Ok(crate::kernels::add_dropout(x, h, rng.next(p))?),
        _ => Ok((x + h)?),
    }
}

/// LayerNorm with the biased variance and eps = 1e-5, as GPT-2 and the book's `LayerNorm`.
#[derive(Clone, Debug)]
pub struct LayerNorm {
    scale: Tensor,
    shift: Tensor,
}

impl LayerNorm {
    pub const EPS: f64 = 1e-5;

    fn load(w: &Weights, prefix: &str, c: usize) -> Result<Self> {
        Ok(LayerNorm {
            scale: w.get(&format!("{prefix}.scale"), &[c])?,
            shift: w.get(&format!("{prefix}.shift"), &[c])?,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(crate::kernels::layer_norm(
            x,
            &self.scale,
            &self.shift,
            Self::EPS,
        )?)
    }
}

/// A linear layer `y = x W^T + b` (PyTorch layout `[out, in]`), with an optional low-rank adapter
/// (LoRA, appendix E) added to its output: `+ (alpha / rank) * x A B`, A `[in, rank]`, B `[rank, out]`.
/// Its matrix is dense (f32 or bf16) or, for inference, block-quantized ([`crate::quant`]).
#[derive(Clone, Debug)]
pub struct Lin {
    base: Base,
    lora: Option<(Tensor, Tensor, f64)>,
}

#[derive(Clone, Debug)]
enum Base {
    Dense(Linear),
    Quant {
        w: Arc<QMatrix>,
        bias: Option<Tensor>,
    },
}

impl Lin {
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        // One (rows, in) x (in, out) product: candle's Linear would broadcast the weight over the
        // batch, and its backward then sums B per-batch weight gradients.
        let dims = x.dims();
        let (last, lead) = dims.split_last().ok_or_else(|| {
            crate::error::ModelError::Config("a linear layer needs at least one dimension".into())
        })?;
        let rows: usize = lead.iter().product();
        let x2 = x.reshape((rows, *last))?;
        let (y, out) = match &self.base {
            Base::Quant { w, bias } => (crate::quant::qlinear(&x2, w, bias.as_ref())?, w.rows()),
            Base::Dense(l) => (dense(&x2, l)?, l.weight().dim(0)?),
        };
        let mut shape = lead.to_vec();
        shape.push(out);
        let y = y.reshape(shape)?;
        match &self.lora {
            None => Ok(y),
            Some((a, b, scale)) => {
                let delta = x.broadcast_matmul(a)?.broadcast_matmul(b)?; // (.., rank) -> (.., out)
                Ok((y + (delta * *scale)?)?)
            }
        }
    }
}

/// `x2 (rows, in) W^T + b` with a dense weight.
fn dense(x2: &Tensor, l: &Linear) -> Result<Tensor> {
    let w = l.weight();
    if let Some(y) = crate::kernels::linear_rows(x2, w, l.bias())? {
        return Ok(y);
    }
    let w = if w.dtype() == x2.dtype() {
        w.clone()
    } else {
        w.to_dtype(x2.dtype())? // bf16 weights under f32 activations
    };
    let y = if crate::kernels::autocast_bf16() {
        crate::kernels::matmul_bf16(x2, &w.t()?)?
    } else {
        crate::kernels::matmul(x2, &w.t()?)? // no gradient for a frozen weight
    };
    Ok(match l.bias() {
        Some(b) => crate::kernels::add_bias(&y, b)?,
        None => y,
    })
}

/// The adapter of linear layer `name`, when the weights carry one.
fn adapter(
    w: &Weights,
    name: &str,
    out_dim: usize,
    in_dim: usize,
    lora: Option<&LoraSpec>,
) -> Result<Option<(Tensor, Tensor, f64)>> {
    let a_name = format!("{name}.{}", crate::lora::A);
    if !w.contains(&a_name) {
        return Ok(None);
    }
    let spec = lora.ok_or_else(|| {
        crate::error::ModelError::Config(format!(
            "{a_name} is a LoRA adapter, but no LoRA settings (rank, alpha) were given"
        ))
    })?;
    let a = w.get(&a_name, &[in_dim, spec.rank])?;
    let b = w.get(&format!("{name}.{}", crate::lora::B), &[spec.rank, out_dim])?;
    Ok(Some((a, b, spec.scale())))
}

pub(crate) fn linear(
    w: &Weights,
    name: &str,
    out_dim: usize,
    in_dim: usize,
    bias: bool,
    lora: Option<&LoraSpec>,
) -> Result<Lin> {
    let bias = if bias {
        Some(w.get(&format!("{name}.bias"), &[out_dim])?)
    } else {
        None
    };
    let base = match w.quant(&format!("{name}.weight")) {
        Some(q) => quant_base(q, bias, name, out_dim, in_dim)?,
        None => Base::Dense(Linear::new(
            w.get(&format!("{name}.weight"), &[out_dim, in_dim])?,
            bias,
        )),
    };
    Ok(Lin {
        base,
        lora: adapter(w, name, out_dim, in_dim, lora)?,
    })
}

/// A quantized layer's base, its matrix checked against the shape the model expects.
fn quant_base(
    q: &Arc<QMatrix>,
    bias: Option<Tensor>,
    name: &str,
    out_dim: usize,
    in_dim: usize,
) -> Result<Base> {
    if (q.rows(), q.cols()) != (out_dim, in_dim) {
        return Err(crate::error::ModelError::Shape {
            name: format!("{name}.weight ({})", q.qtype().name()),
            expected: vec![out_dim, in_dim],
            found: vec![q.rows(), q.cols()],
        });
    }
    Ok(Base::Quant { w: q.clone(), bias })
}

/// One sequence of a batched forward pass ([`Gpt::forward_segments`]): its new tokens, which
/// follow the positions in its cache.
pub struct Segment<'a> {
    pub ids: &'a [u32],
    pub cache: &'a mut KvCache,
}

/// What a layer's attention reads beside the new tokens.
pub(crate) enum Kv<'a, 'b> {
    /// Nothing: the new tokens are the whole sequence (training, a forward without cache).
    None,
    /// One cache, for a batch (B, T) of new tokens: (cache, layer).
    Cache(&'a mut KvCache, usize),
    /// Ragged rows (1, N): consecutive segments, each against its own cache: (segments, layer).
    Segments(&'a mut [Segment<'b>], usize),
}

impl<'b> Kv<'_, 'b> {
    /// A reborrow for one more layer.
    pub(crate) fn reborrow(&mut self, layer: usize) -> Kv<'_, 'b> {
        match self {
            Kv::None => Kv::None,
            Kv::Cache(c, _) => Kv::Cache(c, layer),
            Kv::Segments(s, _) => Kv::Segments(s, layer),
        }
    }

    /// `attend(q, k, v, cache, offset, train)` over the whole batch at `offset`, or, for ragged
    /// rows, over each segment's rows (cut from q, k, v along their row dimensions `rows`) against
    /// its own cache at its own positions, the results joined along the rows.
    pub(crate) fn attend(
        self,
        [q, k, v]: [Tensor; 3],
        rows: [usize; 3],
        offset: usize,
        train: Option<&DropoutRng>,
        mut attend: impl FnMut(
            [Tensor; 3],
            Option<(&mut KvCache, usize)>,
            usize,
            Option<&DropoutRng>,
        ) -> Result<Tensor>,
    ) -> Result<Tensor> {
        let segs = match self {
            Kv::None => return attend([q, k, v], None, offset, train),
            Kv::Cache(cache, layer) => {
                return attend([q, k, v], Some((cache, layer)), offset, train)
            }
            Kv::Segments(segs, layer) => (segs, layer),
        };
        let (segs, layer) = segs;
        let mut at = 0;
        let mut ys = Vec::with_capacity(segs.len());
        for seg in segs.iter_mut() {
            let t = seg.ids.len();
            let part = [
                q.narrow(rows[0], at, t)?,
                k.narrow(rows[1], at, t)?,
                v.narrow(rows[2], at, t)?,
            ];
            let offset = seg.cache.len();
            ys.push(attend(part, Some((&mut *seg.cache, layer)), offset, None)?);
            at += t;
        }
        Ok(Tensor::cat(&ys, 1)?)
    }
}

/// Causal multi-head self-attention (the book's `MultiHeadAttention`).
#[derive(Clone, Debug)]
pub struct MultiHeadAttention {
    w_query: Lin,
    w_key: Lin,
    w_value: Lin,
    out_proj: Lin,
    n_heads: usize,
    drop_rate: f32,
}

impl MultiHeadAttention {
    fn load(w: &Weights, p: &str, cfg: &GptConfig, lora: Option<&LoraSpec>) -> Result<Self> {
        let c = cfg.emb_dim;
        Ok(MultiHeadAttention {
            w_query: linear(w, &format!("{p}.W_query"), c, c, cfg.qkv_bias, lora)?,
            w_key: linear(w, &format!("{p}.W_key"), c, c, cfg.qkv_bias, lora)?,
            w_value: linear(w, &format!("{p}.W_value"), c, c, cfg.qkv_bias, lora)?,
            out_proj: linear(w, &format!("{p}.out_proj"), c, c, true, lora)?,
            n_heads: cfg.n_heads,
            drop_rate: cfg.drop_rate,
        })
    }

    /// `x` holds the new tokens, at positions `offset..offset + T` (for [`Kv::Segments`], each
    /// segment's rows at its own cache's positions).
    fn forward(
        &self,
        x: &Tensor,
        kv: Kv,
        offset: usize,
        train: Option<&DropoutRng>,
    ) -> Result<Tensor> {
        let (q, k, v) = (
            self.w_query.forward(x)?,
            self.w_key.forward(x)?,
            self.w_value.forward(x)?,
        ); // (B, T, C)
        let y = kv.attend(
            [q, k, v],
            [1, 1, 1],
            offset,
            train,
            |[q, k, v], c, o, tr| self.attend(q, k, v, c, o, tr),
        )?;
        self.out_proj.forward(&y)
    }

    /// Attention of queries (B, T, C) over these keys and values and the cached ones: (B, T, C)
    /// before the output projection.
    fn attend(
        &self,
        q: Tensor,
        mut k: Tensor,
        mut v: Tensor,
        cache: Option<(&mut KvCache, usize)>,
        offset: usize,
        train: Option<&DropoutRng>,
    ) -> Result<Tensor> {
        let (b, t, c) = q.dims3()?;
        let (nh, hs) = (self.n_heads, c / self.n_heads);
        let scale = 1.0 / (hs as f64).sqrt();
        if cache.is_none() && offset == 0 {
            let heads = |y: &Tensor| y.reshape((b, t, nh, hs))?.transpose(1, 2); // (B, nh, T, hs)
            let mask = dropout_mask(self.drop_rate, train);
            let (q, k, v) = (heads(&q)?, heads(&k)?, heads(&v)?);
            return Ok(crate::kernels::causal_attention(
                &q, &k, &v, scale, None, mask,
            )?);
        }
        let mut tk = t;
        if let Some((cache, layer)) = cache {
            let (kb, vb, _) = cache.append(layer, &k, &v)?; // (B, capacity, C); no window
            tk = offset + t;
            if train.is_none() {
                if let Some(y) = crate::kernels::cached_attention(&q, &kb, &vb, nh, tk)? {
                    return Ok(y);
                }
            }
            (k, v) = (kb.narrow(1, 0, tk)?, vb.narrow(1, 0, tk)?);
        }
        let heads = |y: &Tensor, n: usize| -> Result<Tensor> {
            Ok(y.reshape((b, n, nh, hs))?.transpose(1, 2)?.contiguous()?) // (B, nh, n, hs)
        };
        let (q, k, v) = (heads(&q, t)?, heads(&k, tk)?, heads(&v, tk)?);
        let scores = q.matmul(&k.t()?)?; // (B, nh, T, Tk)
        let weights = crate::kernels::causal_softmax(&scores, scale, offset)?;
        let weights = dropout(&weights, self.drop_rate, train)?;
        let y = weights.matmul(&v)?; // (B, nh, T, hs)
        Ok(y.transpose(1, 2)?.reshape((b, t, c))?) // (B, T, C)
    }
}

/// The feed-forward block: C → 4C, GELU (tanh approximation), 4C → C.
#[derive(Clone, Debug)]
pub struct FeedForward {
    fc: Lin,
    proj: Lin,
}

impl FeedForward {
    fn load(w: &Weights, p: &str, c: usize, lora: Option<&LoraSpec>) -> Result<Self> {
        Ok(FeedForward {
            fc: linear(w, &format!("{p}.layers.0"), 4 * c, c, true, lora)?,
            proj: linear(w, &format!("{p}.layers.2"), c, 4 * c, true, lora)?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.proj
            .forward(&crate::kernels::gelu(&self.fc.forward(x)?)?)
    }
}

/// A pre-LayerNorm transformer block.
#[derive(Clone, Debug)]
pub struct TransformerBlock {
    att: MultiHeadAttention,
    ff: FeedForward,
    norm1: LayerNorm,
    norm2: LayerNorm,
    drop_rate: f32,
}

impl TransformerBlock {
    fn load(w: &Weights, i: usize, cfg: &GptConfig, lora: Option<&LoraSpec>) -> Result<Self> {
        let p = format!("trf_blocks.{i}");
        Ok(TransformerBlock {
            att: MultiHeadAttention::load(w, &format!("{p}.att"), cfg, lora)?,
            ff: FeedForward::load(w, &format!("{p}.ff"), cfg.emb_dim, lora)?,
            norm1: LayerNorm::load(w, &format!("{p}.norm1"), cfg.emb_dim)?,
            norm2: LayerNorm::load(w, &format!("{p}.norm2"), cfg.emb_dim)?,
            drop_rate: cfg.drop_rate,
        })
    }

    fn forward(
        &self,
        x: &Tensor,
        kv: Kv,
        offset: usize,
        train: Option<&DropoutRng>,
    ) -> Result<Tensor> {
        let h = self
            .att
            .forward(&self.norm1.forward(x)?, kv, offset, train)?;
        let x = residual(x, &h, self.drop_rate, train)?;
        let h = self.ff.forward(&self.norm2.forward(&x)?)?;
        residual(&x, &h, self.drop_rate, train)
    }
}

/// The blocks of each architecture.
#[derive(Clone, Debug)]
enum Blocks {
    Gpt2(Vec<TransformerBlock>),
    Decoder(Vec<DecoderBlock>, Rope),
}

/// The final norm of each architecture.
#[derive(Clone, Debug)]
enum FinalNorm {
    Layer(LayerNorm),
    Rms(RmsNorm),
}

impl FinalNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            FinalNorm::Layer(n) => n.forward(x),
            FinalNorm::Rms(n) => n.forward(x),
        }
    }

    /// The dtype activations take: the norms' (matrices may be stored narrower).
    fn dtype(&self) -> DType {
        match self {
            FinalNorm::Layer(n) => n.scale.dtype(),
            FinalNorm::Rms(n) => n.weight.dtype(),
        }
    }
}

/// A causal language model of any architecture (the book's `GPTModel`, and its bonus chapters'
/// `Llama3Model`, `Qwen3Model`, `Gemma3Model`), or a classifier built on one.
#[derive(Clone, Debug)]
pub struct Gpt {
    cfg: GptConfig,
    tok_emb: Embedding,
    /// Learned positions (GPT-2); the decoders rotate queries and keys instead.
    pos_emb: Option<Embedding>,
    blocks: Blocks,
    final_norm: FinalNorm,
    out_head: Lin,
    /// Where the weights came from, to name the model in errors about its outputs.
    source: String,
}

impl Gpt {
    /// Builds the model from weights named as in the book (see [`crate::weights`]).
    pub fn new(cfg: &GptConfig, w: &Weights) -> Result<Self> {
        Self::with_lora(cfg, w, None)
    }

    /// Builds the model; linear layers whose weights carry `NAME.lora_A`/`NAME.lora_B` get those
    /// adapters, scaled by `lora`'s alpha / rank.
    pub fn with_lora(cfg: &GptConfig, w: &Weights, lora: Option<&LoraSpec>) -> Result<Self> {
        cfg.validate()?;
        let (v, c) = (cfg.vocab_size, cfg.emb_dim);
        let tok = w.get("tok_emb.weight", &[v, c])?;
        let out_head = match cfg.num_classes {
            Some(n) => linear(w, "out_head", n, c, true, lora)?,
            None if cfg.tie_embeddings => Lin {
                base: match w.quant("out_head.weight") {
                    Some(q) => quant_base(q, None, "out_head", v, c)?,
                    None => Base::Dense(Linear::new(tok.clone(), None)),
                },
                lora: adapter(w, "out_head", v, c, lora)?,
            },
            None => linear(w, "out_head", v, c, false, lora)?,
        };
        let (pos_emb, blocks, final_norm) = if cfg.arch.is_decoder() {
            let blocks = (0..cfg.n_layers)
                .map(|i| DecoderBlock::load(w, i, cfg, lora))
                .collect::<Result<_>>()?;
            (
                None,
                Blocks::Decoder(blocks, Rope::new(cfg)),
                FinalNorm::Rms(RmsNorm::load(w, "final_norm", c, cfg)?),
            )
        } else {
            let pos = w.get("pos_emb.weight", &[cfg.context_length, c])?;
            let blocks = (0..cfg.n_layers)
                .map(|i| TransformerBlock::load(w, i, cfg, lora))
                .collect::<Result<_>>()?;
            (
                Some(Embedding::new(pos, c)),
                Blocks::Gpt2(blocks),
                FinalNorm::Layer(LayerNorm::load(w, "final_norm", c)?),
            )
        };
        Ok(Gpt {
            tok_emb: Embedding::new(tok, c),
            pos_emb,
            blocks,
            final_norm,
            out_head,
            cfg: cfg.clone(),
            source: w.source().to_string(),
        })
    }

    pub fn config(&self) -> &GptConfig {
        &self.cfg
    }

    /// Where the weights came from (a file, or e.g. "random weights").
    pub fn source(&self) -> &str {
        &self.source
    }

    pub fn device(&self) -> &Device {
        self.tok_emb.embeddings().device()
    }

    /// Logits (B, T, V) for token ids (B, T); dropout on when `train` gives its generator.
    pub fn forward(&self, idx: &Tensor, train: Option<&DropoutRng>) -> Result<Tensor> {
        self.forward_impl(idx, None, train)
    }

    /// Logits (B, T, V) for new tokens (B, T) that follow the ones in `cache`, which is extended.
    pub fn forward_cached(&self, idx: &Tensor, cache: &mut KvCache) -> Result<Tensor> {
        self.forward_impl(idx, Some(cache), None)
    }

    /// The final-normed hidden states (B, T, C) for token ids (B, T), before the output head.
    pub fn hidden(&self, idx: &Tensor, train: Option<&DropoutRng>) -> Result<Tensor> {
        self.hidden_impl(idx, None, train)
    }

    /// Mean cross-entropy of the next-token logits of `idx` (B, T) against `targets` (B * T,
    /// `ignore_index` skipped): without the (B * T, V) logits when the head is a plain f32 matrix
    /// ([`crate::kernels::linear_cross_entropy`]), through them otherwise.
    pub fn lm_loss(
        &self,
        idx: &Tensor,
        targets: &[i64],
        ignore_index: i64,
        train: Option<&DropoutRng>,
    ) -> Result<Tensor> {
        let h = self.hidden(idx, train)?.flatten_to(1)?; // (B*T, C)
        let loss = match &self.out_head {
            Lin {
                base: Base::Dense(l),
                lora: None,
            } if l.bias().is_none() && l.weight().dtype() == h.dtype() => {
                crate::kernels::linear_cross_entropy(&h, l.weight(), targets, ignore_index)?
            }
            head => crate::kernels::cross_entropy(&head.forward(&h)?, targets, ignore_index)?,
        };
        Ok(loss)
    }

    /// The output head: (.., C) hidden states to (.., V) logits (or class logits).
    pub fn head(&self, hidden: &Tensor) -> Result<Tensor> {
        self.out_head.forward(hidden)
    }

    fn forward_impl(
        &self,
        idx: &Tensor,
        cache: Option<&mut KvCache>,
        train: Option<&DropoutRng>,
    ) -> Result<Tensor> {
        self.head(&self.hidden_impl(idx, cache, train)?) // (B, T, V)
    }

    fn hidden_impl(
        &self,
        idx: &Tensor,
        cache: Option<&mut KvCache>,
        train: Option<&DropoutRng>,
    ) -> Result<Tensor> {
        let (_b, t) = idx.dims2()?;
        let offset = cache.as_ref().map_or(0, |c| c.len());
        self.check_context(offset + t)?;
        let positions: Vec<usize> = (offset..offset + t).collect();
        let mut kv = match cache {
            Some(c) => Kv::Cache(c, 0),
            None => Kv::None,
        };
        let x = self.blocks_forward(idx, &positions, offset, &mut kv, train)?;
        if let Kv::Cache(cache, _) = kv {
            cache.advance(t);
        }
        self.final_norm.forward(&x)
    }

    /// Logits (S, V) of the last new token of each of S sequences, computed in one pass: the new
    /// tokens of every segment go through each linear layer together (the weights are read once
    /// for all), attention runs per segment against its own cache, which is extended. Each row is
    /// computed as in a pass of its segment alone (the kernels treat rows independently up to
    /// [`crate::kernels::MAX_ROWS`] rows, and a quantized layer for any number).
    pub fn forward_segments(&self, segs: &mut [Segment]) -> Result<Tensor> {
        let (mut ids, mut positions, mut last) = (Vec::new(), Vec::new(), Vec::new());
        for seg in segs.iter() {
            let (offset, t) = (seg.cache.len(), seg.ids.len());
            if t == 0 {
                return Err(crate::error::ModelError::Generation(
                    "a segment of a batched pass has no tokens".into(),
                ));
            }
            self.check_context(offset + t)?;
            ids.extend_from_slice(seg.ids);
            positions.extend(offset..offset + t);
            last.push((ids.len() - 1) as u32);
        }
        if segs.is_empty() {
            return Err(crate::error::ModelError::Generation(
                "a batched pass needs at least one segment".into(),
            ));
        }
        let dev = self.device();
        let idx = Tensor::new(ids.as_slice(), dev)?.unsqueeze(0)?; // (1, N)
        let x = self.blocks_forward(&idx, &positions, 0, &mut Kv::Segments(segs, 0), None)?;
        for seg in segs.iter_mut() {
            seg.cache.advance(seg.ids.len());
        }
        let x = x.squeeze(0)?.index_select(&Tensor::new(last, dev)?, 0)?; // (S, C)
        self.head(&self.final_norm.forward(&x)?) // (S, V)
    }

    fn check_context(&self, positions: usize) -> Result<()> {
        if positions > self.cfg.context_length {
            return Err(crate::error::ModelError::Generation(format!(
                "{positions} positions exceed the context length {}",
                self.cfg.context_length
            )));
        }
        Ok(())
    }

    /// Embeddings and blocks for token ids (B, T) at `positions` (T of them): the hidden states
    /// (B, T, C) before the final norm. `offset` is the first position when all rows share them.
    fn blocks_forward(
        &self,
        idx: &Tensor,
        positions: &[usize],
        offset: usize,
        kv: &mut Kv,
        train: Option<&DropoutRng>,
    ) -> Result<Tensor> {
        // Activations take the norms' dtype; matrices may be stored narrower (bf16 weights).
        let act = self.final_norm.dtype();
        let mut x = self.tok_emb.forward(idx)?.to_dtype(act)?; // (B, T, C)
        if let Some(pos_emb) = &self.pos_emb {
            let pos: Vec<u32> = positions.iter().map(|&p| p as u32).collect();
            let pos = Tensor::new(pos, idx.device())?;
            x = x.broadcast_add(&pos_emb.forward(&pos)?.to_dtype(act)?)?;
        }
        if let Some(s) = crate::decoder::embedding_scale(&self.cfg, act) {
            x = (x * s)?;
        }
        let mut x = dropout(&x, self.cfg.drop_rate, train)?;
        match &self.blocks {
            // Training forwards (no cache) may checkpoint their blocks.
            Blocks::Gpt2(blocks) if matches!(kv, Kv::None) => {
                for block in blocks {
                    let block = block.clone();
                    let f = move |x: &Tensor, tr: Option<&DropoutRng>| {
                        block.forward(x, Kv::None, offset, tr)
                    };
                    x = crate::recompute::block(&x, train, Box::new(f))?;
                }
            }
            Blocks::Gpt2(blocks) => {
                for (i, block) in blocks.iter().enumerate() {
                    x = block.forward(&x, kv.reborrow(i), offset, train)?;
                }
            }
            Blocks::Decoder(blocks, rope) => {
                let pos = std::sync::Arc::new(rope.positions(offset, positions, idx.device())?);
                let no_cache = matches!(kv, Kv::None);
                for (i, block) in blocks.iter().enumerate() {
                    if !no_cache {
                        x = block.forward(&x, &pos, kv.reborrow(i), train)?;
                        continue;
                    }
                    let (block, pos) = (block.clone(), pos.clone());
                    let f = move |x: &Tensor, tr: Option<&DropoutRng>| {
                        block.forward(x, &pos, Kv::None, tr)
                    };
                    x = crate::recompute::block(&x, train, Box::new(f))?;
                }
            }
        }
        Ok(x)
    }

    /// A fresh cache for this model.
    pub fn new_cache(&self) -> KvCache {
        KvCache::with_windows(
            (0..self.cfg.n_layers).map(|i| self.cfg.window(i)).collect(),
            self.cfg.context_length,
        )
    }

    /// A cache made now for `positions` positions of one sequence (see [`KvCache::preallocated`]).
    pub fn preallocated_cache(&self, positions: usize) -> Result<KvCache> {
        let (windows, width, dtype) = self.cache_layout();
        KvCache::preallocated(
            windows,
            self.cfg.context_length,
            positions,
            width,
            dtype,
            self.device(),
        )
    }

    /// The bytes [`Gpt::preallocated_cache`] takes for `positions` positions.
    pub fn cache_bytes(&self, positions: usize) -> usize {
        let (windows, width, dtype) = self.cache_layout();
        KvCache::bytes_for(
            &windows,
            positions.min(self.cfg.context_length),
            width,
            dtype,
        )
    }

    /// Per layer the attention window, the width of a cached row (key/value heads x head size),
    /// and the activations' dtype the cache holds.
    fn cache_layout(&self) -> (Vec<Option<usize>>, usize, DType) {
        let windows = (0..self.cfg.n_layers).map(|i| self.cfg.window(i)).collect();
        let width = match self.blocks {
            Blocks::Gpt2(_) => self.cfg.emb_dim,
            Blocks::Decoder(..) => self.cfg.kv_heads() * self.cfg.head_dim(),
        };
        (windows, width, self.final_norm.dtype())
    }

    /// The dtype of the weights.
    pub fn dtype(&self) -> DType {
        self.tok_emb.embeddings().dtype()
    }
}
