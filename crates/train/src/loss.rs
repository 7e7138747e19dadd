//! Cross-entropy with an ignore index (PyTorch's `F.cross_entropy(..., ignore_index=-100)`).
//!
//! Targets equal to the ignore index contribute nothing and are not counted in the mean, which is
//! how the book masks padding in instruction fine-tuning (chapter 7). A fused kernel on the CPU
//! ([`scratchllm_model::kernels::cross_entropy`]), candle's composed ops elsewhere.
use candle_core::{Result, Tensor};

/// PyTorch's default ignore index.
pub const IGNORE_INDEX: i64 = -100;

/// Mean cross-entropy of logits (N, V) against `targets` (N), skipping `ignore_index`.
/// Like PyTorch, the result is NaN when every target is ignored.
pub fn cross_entropy(logits: &Tensor, targets: &[i64], ignore_index: i64) -> Result<Tensor> {
    scratchllm_model::kernels::cross_entropy(logits, targets, ignore_index)
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
