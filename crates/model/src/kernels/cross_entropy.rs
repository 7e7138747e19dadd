//! Softmax cross-entropy over the vocabulary, fused: the forward reads each row of logits twice
//! (max, then the sum of exponentials) and keeps only one log-sum-exp per row; the backward writes
//! the gradient `coef * (softmax - onehot)` in one pass. No log-probabilities tensor is ever made.
use super::{max_of, multiversion, par_for, par_split, reference, slice, sum_by, use_fused, Out};
use candle_core::{bail, CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use std::sync::{Arc, Mutex};

/// Mean cross-entropy of logits (N, V) against `targets` (N), skipping `ignore_index` (PyTorch's
/// `F.cross_entropy(..., ignore_index=...)`; NaN when every target is ignored), fused on the CPU
/// for f32.
pub fn cross_entropy(logits: &Tensor, targets: &[i64], ignore_index: i64) -> Result<Tensor> {
    let (n, v) = logits.dims2()?;
    if targets.len() != n {
        bail!("{} targets for {n} rows of logits", targets.len());
    }
    if let Some(bad) = targets
        .iter()
        .find(|&&t| t != ignore_index && !(0..v as i64).contains(&t))
    {
        bail!("target {bad} is outside the vocabulary of {v}");
    }
    if !use_fused(logits) {
        return reference::cross_entropy(logits, targets, ignore_index);
    }
    let targets = targets
        .iter()
        .map(|&t| (t != ignore_index).then_some(t as usize))
        .collect();
    let op = CrossEntropy {
        targets: Arc::new(targets),
        v,
        lse: Mutex::new(Vec::new()),
    };
    logits.contiguous()?.apply_op1(op)
}

struct CrossEntropy {
    /// Per row: the target class, or `None` when ignored.
    targets: Arc<Vec<Option<usize>>>,
    v: usize,
    /// Log-sum-exp of each row, kept by the forward pass for the backward.
    lse: Mutex<Vec<f32>>,
}

impl CrossEntropy {
    fn count(&self) -> usize {
        self.targets.iter().flatten().count()
    }
}

multiversion! {
    fn log_sum_exp(x: &[f32]) -> f32 {
        let m = max_of(x);
        m + sum_by(x, |v| super::exp(v - m)).ln()
    }
}

multiversion! {
    fn grad_row(x: &[f32], lse: f32, coef: f32, dx: &mut [f32]) {
        for (d, &v) in dx.iter_mut().zip(x) {
            *d = coef * super::exp(v - lse);
        }
    }
}

impl CustomOp1 for CrossEntropy {
    fn name(&self) -> &'static str {
        "fused-cross-entropy"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = slice(s, l, "logits")?;
        let v = self.v;
        let rows = self.targets.len();
        let mut lse = vec![0.0f32; rows];
        let out = Out::new(&mut lse);
        let partials = par_split(rows, |r| {
            // SAFETY: each thread writes its own rows.
            let lse = unsafe { out.range(r.clone()) };
            let mut sum = 0.0f64;
            for (k, row) in r.enumerate() {
                let x = &x[row * v..(row + 1) * v];
                lse[k] = log_sum_exp(x);
                if let Some(t) = self.targets[row] {
                    sum += f64::from(lse[k] - x[t]);
                }
            }
            sum
        });
        let loss = partials.iter().sum::<f64>() / self.count() as f64;
        *self.lse.lock().unwrap_or_else(|e| e.into_inner()) = lse;
        Ok((CpuStorage::F32(vec![loss as f32]), Shape::from(())))
    }

    fn bwd(&self, logits: &Tensor, _loss: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
        let g = g.to_dtype(candle_core::DType::F32)?.to_scalar::<f32>()?;
        let op = CrossEntropyBackward {
            targets: self.targets.clone(),
            v: self.v,
            lse: self.lse.lock().unwrap_or_else(|e| e.into_inner()).clone(),
            coef: g / self.count() as f32,
        };
        Ok(Some(logits.apply_op1_no_bwd(&op)?))
    }
}

struct CrossEntropyBackward {
    targets: Arc<Vec<Option<usize>>>,
    v: usize,
    lse: Vec<f32>,
    coef: f32,
}

impl CustomOp1 for CrossEntropyBackward {
    fn name(&self) -> &'static str {
        "fused-cross-entropy-backward"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = slice(s, l, "logits")?;
        let v = self.v;
        if self.lse.len() != self.targets.len() || x.len() != v * self.lse.len() {
            bail!("cross-entropy backward without its forward pass");
        }
        let mut dx = vec![0.0f32; x.len()];
        let out = Out::new(&mut dx);
        par_for(self.targets.len(), 1, |rows| {
            for row in rows {
                let Some(t) = self.targets[row] else { continue };
                // SAFETY: rows are disjoint.
                let dx = unsafe { out.range(row * v..(row + 1) * v) };
                grad_row(&x[row * v..(row + 1) * v], self.lse[row], self.coef, dx);
                dx[t] -= self.coef;
            }
        });
        Ok((CpuStorage::F32(dx), l.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::testing::{check_grad, max_abs_diff, tensor};
    use candle_core::{DType, Var};

    const IGNORE: i64 = -100;

    #[test]
    fn fused_cross_entropy_agrees_with_the_composition_forward_and_backward() {
        let logits = Var::from_tensor(&tensor(&[6, 50_257], 1, 9.0)).unwrap();
        for targets in [
            vec![0, 17, 50_256, 3, 3, 999],
            vec![5, IGNORE, 7, IGNORE, IGNORE, 50_000],
        ] {
            let fused = cross_entropy(&logits, &targets, IGNORE).unwrap();
            let plain = reference::cross_entropy(&logits, &targets, IGNORE).unwrap();
            let (a, b) = (
                fused.to_scalar::<f32>().unwrap(),
                plain.to_scalar::<f32>().unwrap(),
            );
            assert!((a - b).abs() < 1e-5 * b.abs(), "{a} vs {b}");
            let gf = (fused * 1.7).unwrap().backward().unwrap();
            let gp = (plain * 1.7).unwrap().backward().unwrap();
            let (ga, gb) = (gf.get(&logits).unwrap(), gp.get(&logits).unwrap());
            assert!(max_abs_diff(ga, gb) < 5e-6, "{}", max_abs_diff(ga, gb));
        }
        let all_ignored = cross_entropy(&logits, &[IGNORE; 6], IGNORE).unwrap();
        assert!(all_ignored.to_scalar::<f32>().unwrap().is_nan());
        let err = cross_entropy(&logits, &[1, 2, 3, 4, 5, 50_257], IGNORE).unwrap_err();
        assert!(err
            .to_string()
            .contains("target 50257 is outside the vocabulary of 50257"));
        assert!(cross_entropy(&logits, &[1, 2], IGNORE).is_err());
    }

    #[test]
    fn fused_cross_entropy_gradient_matches_finite_differences() {
        let logits = Var::from_tensor(&tensor(&[5, 11], 2, 3.0)).unwrap();
        let targets = [3, IGNORE, 0, 10, 4];
        let grads = cross_entropy(&logits, &targets, IGNORE)
            .unwrap()
            .backward()
            .unwrap();
        let loss = |x: &Tensor| {
            let logp = candle_nn::ops::log_softmax(x, 1).unwrap();
            let rows: Vec<f64> = logp.to_vec2().unwrap().into_iter().flatten().collect();
            let picked = [rows[3], rows[22], rows[43], rows[48]];
            -picked.iter().sum::<f64>() / 4.0
        };
        let x = logits.as_tensor();
        assert_eq!(x.to_dtype(DType::F64).unwrap().dims(), [5, 11]);
        check_grad(loss, x, grads.get(x).unwrap(), 1e-4, 55, 1e-4);
    }
}
