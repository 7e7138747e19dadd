//! The plain candle compositions the fused kernels replace: every op has candle's own backward, so
//! these run on any device and dtype, and the kernels' tests hold the fused paths to them.
use candle_core::{DType, Result, Tensor, D};

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
    let (t, tk) = (scores.dim(D::Minus2)?, scores.dim(D::Minus1)?);
    let mask: Vec<f32> = (0..t)
        .flat_map(|i| {
            (0..tk).map(move |j| {
                if j > offset + i {
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
