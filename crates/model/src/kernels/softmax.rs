//! Causal softmax of scaled attention scores, forward and backward in one pass over the rows each.
//!
//! Row i of the T queries (at position `offset + i`) sees keys `0..=offset + i`; later keys get
//! weight 0 and are never read. Backward: `ds = scale * y * (g - sum(g * y))` on the visible keys.
use super::{multiversion, par_for, reference, slice, sum_by2, use_fused, Out};
use candle_core::{bail, CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor, D};

/// `softmax(scores * scale)` over the last dimension of (.., T, Tk) scores with the causal mask
/// (query i sits at position `offset + i`), fused on the CPU for f32.
pub fn causal_softmax(scores: &Tensor, scale: f64, offset: usize) -> Result<Tensor> {
    let (t, tk) = (scores.dim(D::Minus2)?, scores.dim(D::Minus1)?);
    if use_fused(scores) {
        let op = CausalSoftmax {
            t,
            tk,
            offset,
            scale: scale as f32,
        };
        scores.contiguous()?.apply_op1(op)
    } else {
        reference::causal_softmax(scores, scale, offset)
    }
}

#[derive(Clone, Copy)]
struct CausalSoftmax {
    t: usize,
    tk: usize,
    offset: usize,
    scale: f32,
}

impl CausalSoftmax {
    /// Keys visible to row `r` of the flattened (.., T) rows.
    fn visible(&self, r: usize) -> usize {
        (self.offset + r % self.t + 1).min(self.tk)
    }
}

multiversion! {
    fn forward_row(s: &[f32], y: &mut [f32], scale: f32) {
        let m = super::max_of(s) * scale;
        for (y, &s) in y.iter_mut().zip(s) {
            *y = super::exp(s * scale - m);
        }
        let inv = 1.0 / super::sum_by(y, |v| v);
        y.iter_mut().for_each(|y| *y *= inv);
    }
}

multiversion! {
    fn backward_row(y: &[f32], g: &[f32], ds: &mut [f32], scale: f32) {
        let dot = sum_by2(g, y, |g, y| g * y);
        for ((ds, &y), &g) in ds.iter_mut().zip(y).zip(g) {
            *ds = scale * y * (g - dot);
        }
    }
}

impl CustomOp1 for CausalSoftmax {
    fn name(&self) -> &'static str {
        "fused-causal-softmax"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = slice(s, l, "attention scores")?;
        let tk = self.tk;
        let mut y = vec![0.0f32; x.len()];
        let out = Out::new(&mut y);
        par_for(x.len() / tk, 8, |rows| {
            for r in rows {
                let n = self.visible(r);
                // SAFETY: rows are disjoint.
                let y = unsafe { out.range(r * tk..r * tk + n) };
                forward_row(&x[r * tk..r * tk + n], y, self.scale);
            }
        });
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, _s: &Tensor, y: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(y.apply_op2_no_bwd(
            &g.contiguous()?,
            &CausalSoftmaxBackward(*self),
        )?))
    }
}

struct CausalSoftmaxBackward(CausalSoftmax);

impl CustomOp2 for CausalSoftmaxBackward {
    fn name(&self) -> &'static str {
        "fused-causal-softmax-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let y = slice(s1, l1, "attention weights")?;
        let g = slice(s2, l2, "attention weights gradient")?;
        if y.len() != g.len() {
            bail!(
                "causal softmax backward: {} weights, {} gradients",
                y.len(),
                g.len()
            );
        }
        let op = self.0;
        let tk = op.tk;
        let mut ds = vec![0.0f32; y.len()];
        let out = Out::new(&mut ds);
        par_for(y.len() / tk, 8, |rows| {
            for r in rows {
                let span = r * tk..r * tk + op.visible(r);
                // SAFETY: rows are disjoint.
                let ds = unsafe { out.range(span.clone()) };
                backward_row(&y[span.clone()], &g[span], ds, op.scale);
            }
        });
        Ok((CpuStorage::F32(ds), l1.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::testing::{check_grad, max_abs_diff, tensor, weighted_grads, weighted_sum};
    use candle_core::{DType, Var};

    #[test]
    fn fused_causal_softmax_agrees_with_the_composition_forward_and_backward() {
        for (t, tk, offset) in [(7, 7, 0), (1, 9, 8), (3, 12, 9), (40, 40, 0)] {
            let s = Var::from_tensor(&tensor(&[2, 3, t, tk], 1, 8.0)).unwrap();
            let w = tensor(&[2, 3, t, tk], 2, 1.0);
            let scale = 0.125;
            let fused = causal_softmax(&s, scale, offset).unwrap();
            let plain = reference::causal_softmax(&s, scale, offset).unwrap();
            assert!(max_abs_diff(&fused, &plain) < 1e-6, "{t} {tk} {offset}");
            let gf = weighted_grads(&fused, &w);
            let gp = weighted_grads(&plain, &w);
            let (a, b) = (
                gf.get(s.as_tensor()).unwrap(),
                gp.get(s.as_tensor()).unwrap(),
            );
            assert!(max_abs_diff(a, b) < 1e-6, "{t} {tk} {offset}");
        }
    }

    #[test]
    fn fused_causal_softmax_gradient_matches_finite_differences() {
        let s = Var::from_tensor(&tensor(&[2, 2, 9, 9], 5, 4.0)).unwrap();
        let w = tensor(&[2, 2, 9, 9], 6, 1.0);
        let grads = weighted_grads(&causal_softmax(&s, 0.5, 0).unwrap(), &w);
        let w64 = w.to_dtype(DType::F64).unwrap();
        let loss = |s: &Tensor| {
            let y = reference::causal_softmax(s, 0.5, 0).unwrap();
            weighted_sum(&y, &w64)
        };
        check_grad(
            loss,
            s.as_tensor(),
            grads.get(s.as_tensor()).unwrap(),
            1e-4,
            324,
            1e-4,
        );
    }
}
