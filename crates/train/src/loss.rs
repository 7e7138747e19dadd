//! Cross-entropy with an ignore index (PyTorch's `F.cross_entropy(..., ignore_index=-100)`).
//!
//! Targets equal to the ignore index contribute nothing and are not counted in the mean, which is
//! how the book masks padding in instruction fine-tuning (chapter 7). Built from candle ops that
//! have a backward (the composed `log_softmax`, `gather`, products and sums).
use candle_core::{DType, Result, Tensor, D};

/// PyTorch's default ignore index.
pub const IGNORE_INDEX: i64 = -100;

/// Mean cross-entropy of logits (N, V) against `targets` (N), skipping `ignore_index`.
/// Like PyTorch, the result is NaN when every target is ignored.
pub fn cross_entropy(logits: &Tensor, targets: &[i64], ignore_index: i64) -> Result<Tensor> {
    let (n, v) = logits.dims2()?;
    if targets.len() != n {
        candle_core::bail!("{} targets for {n} rows of logits", targets.len());
    }
    if let Some(bad) = targets
        .iter()
        .find(|&&t| t != ignore_index && !(0..v as i64).contains(&t))
    {
        candle_core::bail!("target {bad} is outside the vocabulary of {v}");
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn matches_candle_without_ignored_targets_and_skips_ignored_ones() {
        let logits = Tensor::new(
            &[[1.0f32, 2.0, 0.5], [0.1, -1.0, 3.0], [2.0, 2.0, 2.0]],
            &Device::Cpu,
        )
        .unwrap();
        let ours = cross_entropy(&logits, &[1, 2, 0], IGNORE_INDEX)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let targets = Tensor::new(&[1u32, 2, 0], &Device::Cpu).unwrap();
        let candle = candle_nn::loss::cross_entropy(&logits, &targets)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!((ours - candle).abs() < 1e-6);
        // By hand: row 0 target 1: -log(e^2 / (e^1 + e^2 + e^0.5)); row 2 ignored.
        let row0 = -(2f64.exp() / (1f64.exp() + 2f64.exp() + 0.5f64.exp())).ln();
        let row1 = -(3f64.exp() / (0.1f64.exp() + (-1f64).exp() + 3f64.exp())).ln();
        let got = cross_entropy(&logits, &[1, 2, IGNORE_INDEX], IGNORE_INDEX)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!((got as f64 - (row0 + row1) / 2.0).abs() < 1e-6, "{got}");
        assert!(cross_entropy(&logits, &[IGNORE_INDEX; 3], IGNORE_INDEX)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
            .is_nan());
        assert!(cross_entropy(&logits, &[1, 7, 0], IGNORE_INDEX).is_err());
    }
}
