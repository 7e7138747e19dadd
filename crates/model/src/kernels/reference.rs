//! The plain candle compositions the fused kernels replace: every op has candle's own backward, so
//! these run on any device and dtype, and the kernels' tests hold the fused paths to them.
use candle_core::{bail, DType, Result, Tensor, D};

/// LayerNorm over the last dimension with the biased variance (GPT-2's and the book's).
pub fn layer_norm(x: &Tensor, scale: &Tensor, shift: &Tensor, eps: f64) -> Result<Tensor> {
    let mean = x.mean_keepdim(D::Minus1)?; // (.., 1)
    let centered = x.broadcast_sub(&mean)?;
    let var = centered.sqr()?.mean_keepdim(D::Minus1)?; // biased: divides by C
    let normed = centered.broadcast_div(&(var + eps)?.sqrt()?)?;
    normed.broadcast_mul(scale)?.broadcast_add(shift)
}

/// GELU with the tanh approximation GPT-2 uses (candle's `gelu`; `gelu_erf` is the exact one).
pub fn gelu(x: &Tensor) -> Result<Tensor> {
    x.gelu()
}

/// Softmax over the last dimension of `scores * scale` (B, nh, T, Tk) where query i, at position
/// `offset + i`, sees keys `0..=offset + i` (the others get weight 0).
pub fn causal_softmax(scores: &Tensor, scale: f64, offset: usize) -> Result<Tensor> {
    causal_softmax_window(scores, scale, offset, None)
}

/// [`causal_softmax`] where, with `Some(w)`, query position p also sees only keys j with
/// `p - j < w` (Hugging Face's sliding window, `kv_idx > q_idx - sliding_window`).
pub fn causal_softmax_window(
    scores: &Tensor,
    scale: f64,
    offset: usize,
    window: Option<usize>,
) -> Result<Tensor> {
    if window == Some(0) {
        bail!("causal softmax: a sliding window must hold at least one key");
    }
    let (t, tk) = (scores.dim(D::Minus2)?, scores.dim(D::Minus1)?);
    let mask: Vec<f32> = (0..t)
        .flat_map(|i| {
            let p = offset + i;
            (0..tk).map(move |j| {
                let outside = window.is_some_and(|w| j + w <= p);
                if j > p || outside {
                    f32::NEG_INFINITY
                } else {
                    0.0
                }
            })
        })
        .collect();
    let mask = Tensor::from_vec(mask, (t, tk), scores.device())?.to_dtype(scores.dtype())?;
    let scores = (scores * scale)?.broadcast_add(&mask)?;
    candle_nn::ops::softmax(&scores, D::Minus1) // composed: candle's fused softmax has no backward
}

/// RMSNorm over the last dimension: `x / sqrt(mean(x^2) + eps) * g` with `g = weight` (Llama,
/// Qwen3) or `g = 1 + weight` (Gemma 3, `unit_offset`). bf16 and f16 inputs are normalized in f32
/// and rounded back, as Hugging Face's `LlamaRMSNorm` and `Gemma3RMSNorm` do: a mean of squares
/// over thousands of channels summed in bf16 keeps few of its digits.
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64, unit_offset: bool) -> Result<Tensor> {
    let dtype = x.dtype();
    let wide = match dtype {
        DType::BF16 | DType::F16 => DType::F32,
        d => d,
    };
    let x = x.to_dtype(wide)?;
    let ms = x.sqr()?.mean_keepdim(D::Minus1)?; // (.., 1)
    let normed = x.broadcast_div(&(ms + eps)?.sqrt()?)?;
    let weight = weight.to_dtype(wide)?;
    let gain = if unit_offset { (weight + 1.0)? } else { weight };
    normed.broadcast_mul(&gain)?.to_dtype(dtype)
}

/// Rotary position embedding of `x` (.., T, D) with `cos`, `sin` (T, D/2), in Hugging Face's
/// non-interleaved "rotate_half" convention: with `x1 = x[.., :D/2]`, `x2 = x[.., D/2:]`,
/// `out = cat(x1 cos - x2 sin, x2 cos + x1 sin)`.
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let d = x.dim(D::Minus1)?;
    if d % 2 != 0 {
        bail!("rope: the head dimension {d} of {:?} is odd", x.dims());
    }
    let half = d / 2;
    let (cos, sin) = (cos.to_dtype(x.dtype())?, sin.to_dtype(x.dtype())?); // (T, D/2)
    let x1 = x.narrow(D::Minus1, 0, half)?; // (.., T, D/2)
    let x2 = x.narrow(D::Minus1, half, half)?;
    let out1 = (x1.broadcast_mul(&cos)? - x2.broadcast_mul(&sin)?)?;
    let out2 = (x2.broadcast_mul(&cos)? + x1.broadcast_mul(&sin)?)?;
    Tensor::cat(&[out1, out2], D::Minus1) // (.., T, D)
}

/// `silu(gate) * up`, the gated feed-forward of Llama and Qwen3 (Shazeer 2020, "GLU Variants
/// Improve Transformer").
pub fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    gate.silu()? * up
}

/// `gelu(gate) * up` with GELU's tanh approximation (PyTorch's `approximate='tanh'`), Gemma 3's
/// gated feed-forward.
pub fn geglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    gate.gelu()? * up
}

/// Mean cross-entropy of logits (N, V) against `targets` (N), skipping `ignore_index` (NaN when
/// every target is ignored, as PyTorch). Targets are checked by [`super::cross_entropy`].
pub fn cross_entropy(logits: &Tensor, targets: &[i64], ignore_index: i64) -> Result<Tensor> {
    let n = targets.len();
    let idx: Vec<u32> = targets
        .iter()
        .map(|&t| if t == ignore_index { 0 } else { t as u32 })
        .collect();
    let mask: Vec<f32> = targets
        .iter()
        .map(|&t| if t == ignore_index { 0.0 } else { 1.0 })
        .collect();
    let count = mask.iter().sum::<f32>();
    let logp = candle_nn::ops::log_softmax(&logits.to_dtype(DType::F32)?, D::Minus1)?; // (N, V)
    let picked = logp
        .gather(&Tensor::from_vec(idx, (n, 1), logits.device())?, 1)?
        .squeeze(1)?; // (N)
    let masked = (picked * Tensor::from_vec(mask, n, logits.device())?)?;
    masked.sum_all()?.neg()? / count as f64
}

/// `softmax(q k^T * scale)` under the causal mask (and the sliding window `i - j < w`), dropped out
/// with `dropout`, times `v`, for q (B, nh, T, hs) and k, v (B, nkv, T, hs), each key/value head
/// repeated for its nh / nkv query heads as Hugging Face's `repeat_kv`: (B, T, nh * hs).
pub fn causal_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
    window: Option<usize>,
    dropout: Option<super::Mask>,
) -> Result<Tensor> {
    let (b, nh, t, hs) = q.dims4()?;
    let nkv = k.dim(1)?;
    let repeat = |y: &Tensor| -> Result<Tensor> {
        if nh == nkv {
            return y.contiguous();
        }
        y.unsqueeze(2)?
            .broadcast_as((b, nkv, nh / nkv, t, hs))?
            .reshape((b, nh, t, hs))
    };
    let scores = q.contiguous()?.matmul(&repeat(k)?.t()?)?; // (B, nh, T, T)
    let mut weights = causal_softmax_window(&scores, scale, 0, window)?;
    if let Some(mask) = dropout {
        weights = (&weights * mask.tensor(&weights)?)?;
    }
    let y = weights.matmul(&repeat(v)?)?; // (B, nh, T, hs)
    y.transpose(1, 2)?.reshape((b, t, nh * hs))
}
