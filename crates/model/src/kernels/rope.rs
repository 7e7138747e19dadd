//! Rotary position embedding (Su et al. 2021, "RoFormer") in Hugging Face's non-interleaved
//! "rotate_half" convention, the one Llama, Qwen3 and Gemma 3 checkpoints are stored for.
//!
//! Per row of D at time t, with `x1 = x[:D/2]`, `x2 = x[D/2:]`, `c = cos[t]`, `s = sin[t]`:
//! `y1 = x1 c - x2 s`, `y2 = x2 c + x1 s`, a rotation of each pair `(x1[i], x2[i])` by angle t θ_i.
//! Backward is the inverse rotation, the same pass with `-s`: `dx1 = g1 c + g2 s`,
//! `dx2 = g2 c - g1 s`. `cos` and `sin` are constants (no gradient).
use super::{multiversion, par_for, reference, slice, use_fused, Out};
use candle_core::{bail, CpuStorage, CustomOp3, Layout, Result, Shape, Tensor, D};

/// RoPE of `x` (B, H, T, D), any strides, with `cos` and `sin` (T, D/2); fused on the CPU for f32.
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    if !(use_fused(x) && use_fused(cos) && use_fused(sin)) {
        return reference::rope(x, cos, sin);
    }
    let (t, d) = (x.dim(D::Minus2)?, x.dim(D::Minus1)?);
    if d % 2 != 0 || cos.dims() != [t, d / 2] || sin.dims() != [t, d / 2] {
        bail!(
            "rope: input {:?} needs an even last dimension and cos, sin of ({t}, {}); got {:?}, {:?}",
            x.dims(),
            d / 2,
            cos.dims(),
            sin.dims()
        );
    }
    let op = Rope {
        t,
        d,
        inverse: false,
    };
    // Detached: with no gradient coming back, a tracked cos (say, computed from a Var) would leave
    // candle's backward pass waiting for a gradient that never comes.
    let (cos, sin) = (cos.detach().contiguous()?, sin.detach().contiguous()?);
    x.contiguous()?.apply_op3(&cos, &sin, op)
}

#[derive(Clone, Copy)]
struct Rope {
    t: usize,
    d: usize,
    /// Rotate by minus the angle (the backward pass).
    inverse: bool,
}

multiversion! {
    fn rotate_rows(x: &[f32], cos: &[f32], sin: &[f32], y: &mut [f32], first_row: usize, t: usize, sign: f32) {
        let half = cos.len() / t;
        for (r, (x, y)) in x.chunks_exact(2 * half).zip(y.chunks_exact_mut(2 * half)).enumerate() {
            let at = (first_row + r) % t * half;
            let (c, s) = (&cos[at..at + half], &sin[at..at + half]);
            let (x1, x2) = x.split_at(half);
            let (y1, y2) = y.split_at_mut(half);
            for i in 0..half {
                let si = sign * s[i]; // exact: sign is 1 or -1
                y1[i] = x1[i] * c[i] - x2[i] * si;
                y2[i] = x2[i] * c[i] + x1[i] * si;
            }
        }
    }
}

impl CustomOp3 for Rope {
    fn name(&self) -> &'static str {
        if self.inverse {
            "fused-rope-backward"
        } else {
            "fused-rope"
        }
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = slice(s1, l1, "rope input")?;
        let cos = slice(s2, l2, "rope cos")?;
        let sin = slice(s3, l3, "rope sin")?;
        let Rope { t, d, inverse } = *self;
        let sign = if inverse { -1.0 } else { 1.0 };
        let mut y = vec![0.0f32; x.len()];
        let out = Out::new(&mut y);
        par_for(x.len() / d, 64, |r| {
            let span = r.start * d..r.end * d;
            // SAFETY: row ranges are disjoint.
            let y = unsafe { out.range(span.clone()) };
            rotate_rows(&x[span], cos, sin, y, r.start, t, sign)
        });
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        _y: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let back = Rope {
            inverse: !self.inverse,
            ..*self
        };
        let dx = g.contiguous()?.apply_op3_no_bwd(cos, sin, &back)?;
        Ok((Some(dx), None, None))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::testing::{check_grad, max_abs_diff, tensor, weighted_grads, weighted_sum};
    use candle_core::{DType, Var};

    /// The angles of Llama's RoPE for `t` positions from `start` and head dimension `d`.
    fn tables(start: usize, t: usize, d: usize) -> (Tensor, Tensor) {
        let angles: Vec<f32> = (start..start + t)
            .flat_map(|p| {
                (0..d / 2).map(move |i| p as f32 * 10_000f32.powf(-2.0 * i as f32 / d as f32))
            })
            .collect();
        let a = Tensor::from_vec(angles, (t, d / 2), &candle_core::Device::Cpu).unwrap();
        (a.cos().unwrap(), a.sin().unwrap())
    }

    #[test]
    fn fused_rope_agrees_with_the_composition_forward_and_backward() {
        let (cos, sin) = tables(3, 7, 16);
        let x = Var::from_tensor(&tensor(&[2, 3, 7, 16], 1, 2.0)).unwrap();
        let w = tensor(&[2, 3, 7, 16], 2, 1.0);
        let fused = rope(&x, &cos, &sin).unwrap();
        let plain = reference::rope(&x, &cos, &sin).unwrap();
        assert_eq!(max_abs_diff(&fused, &plain), 0.0);
        let gf = weighted_grads(&fused, &w);
        let gp = weighted_grads(&plain, &w);
        let (a, b) = (
            gf.get(x.as_tensor()).unwrap(),
            gp.get(x.as_tensor()).unwrap(),
        );
        assert!(max_abs_diff(a, b) < 1e-6);
    }

    #[test]
    fn fused_rope_gradient_matches_finite_differences() {
        let (cos, sin) = tables(0, 5, 6);
        let x = Var::from_tensor(&tensor(&[1, 2, 5, 6], 3, 2.0)).unwrap();
        let w = tensor(&[1, 2, 5, 6], 4, 1.0);
        let grads = weighted_grads(&rope(&x, &cos, &sin).unwrap(), &w);
        let w64 = w.to_dtype(DType::F64).unwrap();
        let loss = |x: &Tensor| weighted_sum(&reference::rope(x, &cos, &sin).unwrap(), &w64);
        let gx = grads.get(x.as_tensor()).unwrap();
        check_grad(loss, x.as_tensor(), gx, 1e-4, 60, 1e-5);
    }
}
