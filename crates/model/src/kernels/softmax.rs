//! Causal softmax of scaled attention scores, forward and backward in one pass over the rows each.
//!
//! Row i of the T queries (at position `p = offset + i`) sees keys `0..=p`, and with a sliding
//! window of w (Gemma 3's local layers, Mistral) only the last w of them, `p - w < j <= p`; other
//! keys get weight 0 and are never read. Backward: `ds = scale * y * (g - sum(g * y))` on the
//! visible keys.
use super::{multiversion, par_for, reference, slice, sum_by2, use_fused, Out};
use candle_core::{bail, CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor, D};
use std::ops::Range;

/// `softmax(scores * scale)` over the last dimension of (.., T, Tk) scores with the causal mask
/// (query i sits at position `offset + i`), fused on the CPU for f32.
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
    if !use_fused(scores) {
        return reference::causal_softmax_window(scores, scale, offset, window);
    }
    if window == Some(0) {
        bail!("causal softmax: a sliding window must hold at least one key");
    }
    let (t, tk) = (scores.dim(D::Minus2)?, scores.dim(D::Minus1)?);
    let op = CausalSoftmax {
        t,
        tk,
        offset,
        window,
        scale: scale as f32,
    };
    scores.contiguous()?.apply_op1(op)
}

#[derive(Clone, Copy)]
struct CausalSoftmax {
    t: usize,
    tk: usize,
    offset: usize,
    window: Option<usize>,
    scale: f32,
}

impl CausalSoftmax {
    /// The positions in the flattened scores of the keys visible to row `r` of the (.., T) rows.
    fn visible(&self, r: usize) -> Range<usize> {
        let p = self.offset + r % self.t;
        let end = (p + 1).min(self.tk);
        let start = self
            .window
            .map_or(0, |w| (p + 1).saturating_sub(w))
            .min(end);
        r * self.tk + start..r * self.tk + end
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
        let mut y = vec![0.0f32; x.len()];
        let out = Out::new(&mut y);
        par_for(x.len() / self.tk, 8, |rows| {
            for r in rows {
                let span = self.visible(r);
                // SAFETY: rows are disjoint.
                let y = unsafe { out.range(span.clone()) };
                forward_row(&x[span], y, self.scale);
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
        let mut ds = vec![0.0f32; y.len()];
        let out = Out::new(&mut ds);
        par_for(y.len() / op.tk, 8, |rows| {
            for r in rows {
                let span = op.visible(r);
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
    fn fused_sliding_window_softmax_agrees_with_the_composition_forward_and_backward() {
        for (t, tk, offset, w) in [(7, 7, 0, 1), (7, 7, 0, 3), (1, 9, 8, 4), (5, 12, 7, 20)] {
            let s = Var::from_tensor(&tensor(&[2, 3, t, tk], 3, 8.0)).unwrap();
            let dy = tensor(&[2, 3, t, tk], 4, 1.0);
            let fused = causal_softmax_window(&s, 0.25, offset, Some(w)).unwrap();
            let plain = reference::causal_softmax_window(&s, 0.25, offset, Some(w)).unwrap();
            assert!(max_abs_diff(&fused, &plain) < 1e-6, "{t} {tk} {offset} {w}");
            let gf = weighted_grads(&fused, &dy);
            let gp = weighted_grads(&plain, &dy);
            let (a, b) = (
                gf.get(s.as_tensor()).unwrap(),
                gp.get(s.as_tensor()).unwrap(),
            );
            assert!(max_abs_diff(a, b) < 1e-6, "{t} {tk} {offset} {w}");
        }
        let s = tensor(&[1, 1, 2, 2], 5, 1.0);
        assert!(causal_softmax_window(&s, 1.0, 0, Some(0)).is_err());
    }

    #[test]
    fn fused_causal_softmax_gradient_matches_finite_differences() {
        let s = Var::from_tensor(&tensor(&[2, 2, 9, 9], 5, 4.0)).unwrap();
        let w = tensor(&[2, 2, 9, 9], 6, 1.0);
        let w64 = w.to_dtype(DType::F64).unwrap();
        for window in [None, Some(4)] {
            let y = causal_softmax_window(&s, 0.5, 0, window).unwrap();
            let grads = weighted_grads(&y, &w);
            let loss = |s: &Tensor| {
                let y = reference::causal_softmax_window(s, 0.5, 0, window).unwrap();
                weighted_sum(&y, &w64)
            };
            let gs = grads.get(s.as_tensor()).unwrap();
            check_grad(loss, s.as_tensor(), gs, 1e-4, 324, 1e-4);
        }
    }
}
