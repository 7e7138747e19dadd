//! Softmax cross-entropy over the vocabulary, fused: the forward reads each row of logits twice
//! (max, then the sum of exponentials) and keeps only one log-sum-exp per row; the backward writes
//! the gradient `coef * (softmax - onehot)` in one pass. No log-probabilities tensor is ever made.
use super::{max_of, multiversion, par_for, par_split, reference, slice, sum_by, use_fused, Out};
use candle_core::{bail, CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};
use std::sync::{Arc, Mutex};

/// Mean cross-entropy of logits (N, V) against `targets` (N), skipping `ignore_index` (PyTorch's
/// `F.cross_entropy(..., ignore_index=...)`; NaN when every target is ignored), fused on the CPU
/// for f32.
pub fn cross_entropy(logits: &Tensor, targets: &[i64], ignore_index: i64) -> Result<Tensor> {
    let (n, v) = logits.dims2()?;
    let classes = checked_targets(n, v, targets, ignore_index)?;
    if !use_fused(logits) {
        return reference::cross_entropy(logits, targets, ignore_index);
    }
    let op = CrossEntropy {
        targets: Arc::new(classes),
        v,
        lse: Mutex::new(Vec::new()),
    };
    logits.contiguous()?.apply_op1(op)
}

/// Per row the target class, or `None` when ignored; refuses a wrong count or a class outside
/// `0..v`.
fn checked_targets(n: usize, v: usize, targets: &[i64], ignore: i64) -> Result<Vec<Option<usize>>> {
    if targets.len() != n {
        bail!("{} targets for {n} rows of logits", targets.len());
    }
    if let Some(bad) = targets
        .iter()
        .find(|&&t| t != ignore && !(0..v as i64).contains(&t))
    {
        bail!("target {bad} is outside the vocabulary of {v}");
    }
    Ok(targets
        .iter()
        .map(|&t| (t != ignore).then_some(t as usize))
        .collect())
}

/// Rows of logits [`linear_cross_entropy`] holds at once.
const CHUNK: usize = 256;

/// [`cross_entropy`] of the logits `h W^T` of hidden states `h` (N, C) and an output head `W`
/// (V, C), without ever holding the (N, V) logits (Wijmans et al. 2024, "Cut Your Losses in
/// Large-Vocabulary Language Models", done chunk-wise): [`CHUNK`] rows at a time, the forward keeps
/// a log-sum-exp per row, the backward computes each chunk's logits again and turns them into
/// their gradient at once. The products are the head's own (bf16 under autocast); `W` gets a
/// gradient only when it trains.
pub fn linear_cross_entropy(
    h: &Tensor,
    w: &Tensor,
    targets: &[i64],
    ignore_index: i64,
) -> Result<Tensor> {
    let ((n, c), (v, wc)) = (h.dims2()?, w.dims2()?);
    if c != wc {
        bail!(
            "output head: hidden states {:?}, weight {:?}",
            h.dims(),
            w.dims()
        );
    }
    let classes = checked_targets(n, v, targets, ignore_index)?;
    let bf16 = super::autocast_bf16();
    if !(use_fused(h) && use_fused(w)) {
        return cross_entropy(&head_product(bf16, h, &w.t()?)?, targets, ignore_index);
    }
    let (hd, wt) = (h.detach(), w.detach().t()?);
    let mut lse = vec![0.0f32; n];
    let mut sum = 0.0f64;
    for r0 in (0..n).step_by(CHUNK) {
        let rows = CHUNK.min(n - r0);
        let logits = head_product(bf16, &hd.narrow(0, r0, rows)?, &wt)?;
        let (guard, layout) = logits.storage_and_layout();
        let candle_core::Storage::Cpu(storage) = &*guard else {
            bail!("output head: logits not on the CPU")
        };
        let x = slice(storage, layout, "logits")?;
        let range = r0..r0 + rows;
        sum += row_losses(x, v, &classes[range.clone()], &mut lse[range]);
    }
    let count = classes.iter().flatten().count();
    let op = LinearCrossEntropy {
        targets: classes,
        lse,
        loss: (sum / count as f64) as f32,
        count,
        bf16,
    };
    h.apply_op2(w, op)
}

/// `a b` as the output head multiplies: in bf16 under autocast.
fn head_product(bf16: bool, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if bf16 {
        super::matmul_bf16(a, b)
    } else {
        a.matmul(b)
    }
}

struct LinearCrossEntropy {
    targets: Vec<Option<usize>>,
    lse: Vec<f32>,
    loss: f32,
    count: usize,
    bf16: bool,
}

impl CustomOp2 for LinearCrossEntropy {
    fn name(&self) -> &'static str {
        "linear-cross-entropy"
    }

    fn cpu_fwd(
        &self,
        _s1: &CpuStorage,
        _l1: &Layout,
        _s2: &CpuStorage,
        _l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        // Computed chunk by chunk before the op was made.
        Ok((CpuStorage::F32(vec![self.loss]), Shape::from(())))
    }

    fn bwd(
        &self,
        h: &Tensor,
        w: &Tensor,
        _loss: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let g = g.to_dtype(candle_core::DType::F32)?.to_scalar::<f32>()?;
        let coef = g / self.count as f32;
        let (hd, wd) = (h.detach(), w.detach());
        let (n, v) = (self.targets.len(), w.dim(0)?);
        let (mut dh, mut dw) = (Vec::new(), None);
        for r0 in (0..n).step_by(CHUNK) {
            let rows = CHUNK.min(n - r0);
            let hc = hd.narrow(0, r0, rows)?;
            let logits = head_product(self.bf16, &hc, &wd.t()?)?;
            let op = CrossEntropyBackward {
                targets: Arc::new(self.targets[r0..r0 + rows].to_vec()),
                v,
                lse: self.lse[r0..r0 + rows].to_vec(),
                coef,
            };
            let dl = logits.apply_op1_no_bwd(&op)?; // (rows, V)
            if h.track_op() {
                dh.push(head_product(self.bf16, &dl, &wd)?);
            }
            if w.track_op() {
                let d = head_product(self.bf16, &dl.t()?, &hc)?; // (V, C)
                dw = Some(match dw {
                    Some(acc) => (acc + d)?,
                    None => d,
                });
            }
        }
        let dh = match dh.is_empty() {
            true => None,
            false => Some(Tensor::cat(&dh, 0)?),
        };
        Ok((dh, dw))
    }
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

/// For each row of logits `x` (rows of `v`), its log-sum-exp into `lse`; gives the sum of the
/// losses of the rows with a target (threads over rows, partial sums in thread order).
fn row_losses(x: &[f32], v: usize, targets: &[Option<usize>], lse: &mut [f32]) -> f64 {
    let out = Out::new(lse);
    let partials = par_split(targets.len(), |r| {
        // SAFETY: each thread writes its own rows.
        let lse = unsafe { out.range(r.clone()) };
        let mut sum = 0.0f64;
        for (k, row) in r.enumerate() {
            let x = &x[row * v..(row + 1) * v];
            lse[k] = log_sum_exp(x);
            if let Some(t) = targets[row] {
                sum += f64::from(lse[k] - x[t]);
            }
        }
        sum
    });
    partials.iter().sum()
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
        let loss = row_losses(x, v, &self.targets, &mut lse) / self.count() as f64;
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

    #[test]
    fn chunked_head_cross_entropy_agrees_with_the_logits_path() {
        // Rows across chunk edges, ignored targets, a trained and a frozen head, bf16 autocast.
        let (n, c, v) = (CHUNK + 37, 24, 301);
        let targets: Vec<i64> = (0..n as i64)
            .map(|i| {
                if i % 7 == 3 {
                    IGNORE
                } else {
                    i * 31 % v as i64
                }
            })
            .collect();
        for (bf16, trained) in [(false, true), (false, false), (true, true)] {
            let _autocast = crate::kernels::Autocast::bf16(bf16);
            let h = Var::from_tensor(&tensor(&[n, c], 1, 1.0)).unwrap();
            let w = tensor(&[v, c], 2, 1.0);
            let w = if trained {
                Var::from_tensor(&w).unwrap().as_tensor().clone()
            } else {
                w
            };
            let fused = linear_cross_entropy(&h, &w, &targets, IGNORE).unwrap();
            let logits = head_product(bf16, &h, &w.t().unwrap()).unwrap();
            let plain = cross_entropy(&logits, &targets, IGNORE).unwrap();
            let (a, b) = (
                fused.to_scalar::<f32>().unwrap(),
                plain.to_scalar::<f32>().unwrap(),
            );
            assert!((a - b).abs() < 1e-5, "{bf16} {trained}: {a} {b}");
            let (gf, gp) = (fused.backward().unwrap(), plain.backward().unwrap());
            let dh = |g: &candle_core::backprop::GradStore| g.get(h.as_tensor()).unwrap().clone();
            let tol = if bf16 { 1e-4 } else { 1e-6 };
            assert!(max_abs_diff(&dh(&gf), &dh(&gp)) < tol, "{bf16} {trained}");
            match trained {
                true => {
                    let (x, y) = (gf.get(&w).unwrap(), gp.get(&w).unwrap());
                    assert!(max_abs_diff(x, y) < tol, "{bf16}: {}", max_abs_diff(x, y));
                }
                false => assert!(gf.get(&w).is_none()),
            }
        }
    }
}
