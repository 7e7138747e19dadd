//! GELU (tanh approximation), forward and backward in one pass each.
//!
//! `y = x/2 (1 + tanh(u))`, `u = k (x + 0.044715 x^3)`, `k = sqrt(2/pi)`;
//! `dy/dx = (1 + t)/2 + x/2 (1 - t^2) k (1 + 3 * 0.044715 x^2)` with `t = tanh(u)`.
use super::{multiversion, par_for, reference, slice, use_fused, Out};
use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};

const K: f32 = 0.797_884_6; // sqrt(2 / pi)
const A: f32 = 0.044_715;
const CHUNK: usize = 16 * 1024;

/// `gelu_tanh(x)` and its derivative (the gated units use it too).
#[inline(always)]
pub(super) fn value_and_slope(x: f32) -> (f32, f32) {
    let t = super::tanh(K * (x + A * x * x * x));
    let d = 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * K * (1.0 + 3.0 * A * x * x);
    (0.5 * x * (1.0 + t), d)
}

/// GELU of `x`, fused on the CPU for f32.
pub fn gelu(x: &Tensor) -> Result<Tensor> {
    if use_fused(x) {
        x.contiguous()?.apply_op1(Gelu)
    } else {
        reference::gelu(x)
    }
}

multiversion! {
    fn forward(x: &[f32], y: &mut [f32]) {
        for (y, &x) in y.iter_mut().zip(x) {
            *y = value_and_slope(x).0;
        }
    }
}

multiversion! {
    fn backward(x: &[f32], g: &[f32], dx: &mut [f32]) {
        for ((dx, &x), &g) in dx.iter_mut().zip(x).zip(g) {
            *dx = g * value_and_slope(x).1;
        }
    }
}

struct Gelu;

impl CustomOp1 for Gelu {
    fn name(&self) -> &'static str {
        "fused-gelu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = slice(s, l, "gelu input")?;
        let mut y = vec![0.0f32; x.len()];
        let out = Out::new(&mut y);
        // SAFETY: chunks are disjoint ranges of `y`.
        par_for(x.len(), CHUNK, |r| {
            forward(&x[r.clone()], unsafe { out.range(r) })
        });
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(x.apply_op2_no_bwd(&g.contiguous()?, &GeluBackward)?))
    }
}

struct GeluBackward;

impl CustomOp2 for GeluBackward {
    fn name(&self) -> &'static str {
        "fused-gelu-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = slice(s1, l1, "gelu input")?;
        let g = slice(s2, l2, "gelu output gradient")?;
        if x.len() != g.len() {
            candle_core::bail!("gelu backward: {} inputs, {} gradients", x.len(), g.len());
        }
        let mut dx = vec![0.0f32; x.len()];
        let out = Out::new(&mut dx);
        par_for(x.len(), CHUNK, |r| {
            // SAFETY: chunks are disjoint ranges of `dx`.
            backward(&x[r.clone()], &g[r.clone()], unsafe { out.range(r) })
        });
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::testing::{check_grad, max_abs_diff, tensor, weighted_grads, weighted_sum};
    use candle_core::{DType, Var};

    #[test]
    fn fused_gelu_agrees_with_candle_forward_and_backward() {
        let x = Var::from_tensor(&tensor(&[3, 50_000], 1, 6.0)).unwrap();
        let w = tensor(&[3, 50_000], 2, 1.0);
        let fused = gelu(x.as_tensor()).unwrap();
        let plain = reference::gelu(x.as_tensor()).unwrap();
        assert!(max_abs_diff(&fused, &plain) < 2e-6);
        let gf = weighted_grads(&fused, &w);
        let gp = weighted_grads(&plain, &w);
        let (gf, gp) = (
            gf.get(x.as_tensor()).unwrap(),
            gp.get(x.as_tensor()).unwrap(),
        );
        assert!(max_abs_diff(gf, gp) < 2e-6);
    }

    #[test]
    fn fused_gelu_gradient_matches_finite_differences() {
        let x = Var::from_tensor(&tensor(&[4, 33], 3, 4.0)).unwrap();
        let w = tensor(&[4, 33], 4, 1.0);
        let grads = weighted_grads(&gelu(x.as_tensor()).unwrap(), &w);
        let w64 = w.to_dtype(DType::F64).unwrap();
        let loss = |x: &Tensor| {
            let y = reference::gelu(x).unwrap();
            weighted_sum(&y, &w64)
        };
        check_grad(
            loss,
            x.as_tensor(),
            grads.get(x.as_tensor()).unwrap(),
            1e-5,
            132,
            1e-5,
        );
    }
}
