//! AdamW, updating a parameter in place, multi-threaded, with the gradient scaled on the fly (so
//! global-norm clipping needs no scaled copy of the gradients).
//!
//! The arithmetic is `torch.optim.AdamW`'s single-tensor path, in this order, in f32:
//! `g *= grad_scale; p *= decay; m += (g - m) * (1 - b1); v = v * b2 + (1 - b2) * g * g;
//!  p -= step_size * m / (sqrt(v) / bias2_sqrt + eps)`. The fused path and [`update_slice`] (the
//! reference, also used for non-f32 or non-CPU parameters) give bit-identical results.
use super::{multiversion, par_for, slice, Out};
use candle_core::{bail, CpuStorage, DType, InplaceOp2, Layout, Result, Tensor, Var};
use std::sync::Mutex;

/// The scalars of one AdamW update.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamWStep {
    /// `1 - lr * weight_decay`, or 1 for parameters without decay.
    pub decay: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    /// `lr / (1 - beta1^t)`.
    pub step_size: f32,
    /// `sqrt(1 - beta2^t)`.
    pub bias2_sqrt: f32,
    /// Multiplies the gradient first (the clipping coefficient; 1 when not clipping).
    pub grad_scale: f32,
}

multiversion! {
    fn update_chunk(w: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], s: &AdamWStep) {
        update_slice(w, g, m, v, s)
    }
}

/// The update on plain slices of equal length, one thread: the reference path, and (inlined into
/// vectorized copies) each chunk of the fused one.
#[inline(always)]
pub fn update_slice(w: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], s: &AdamWStep) {
    let n = w.len().min(g.len()).min(m.len()).min(v.len());
    let (w, g, m, v) = (&mut w[..n], &g[..n], &mut m[..n], &mut v[..n]);
    for i in 0..n {
        let g = g[i] * s.grad_scale;
        w[i] *= s.decay;
        m[i] += (g - m[i]) * (1.0 - s.beta1);
        v[i] = v[i] * s.beta2 + (1.0 - s.beta2) * g * g;
        let denom = v[i].sqrt() / s.bias2_sqrt + s.eps;
        w[i] -= s.step_size * m[i] / denom;
    }
}

/// Updates `param` in place from `grad` and the moment buffers `m`, `v` (all with the parameter's
/// element count). Fused for contiguous f32 CPU parameters (with the kernels on); otherwise the
/// values go through the host and back.
pub fn adamw_step(
    param: &Var,
    grad: &Tensor,
    m: &mut [f32],
    v: &mut [f32],
    s: &AdamWStep,
) -> Result<()> {
    let n = param.elem_count();
    if grad.elem_count() != n || m.len() != n || v.len() != n {
        bail!(
            "adamw: parameter {:?} with a gradient of {} and moments of {} and {} values",
            param.dims(),
            grad.elem_count(),
            m.len(),
            v.len()
        );
    }
    let grad = grad.to_dtype(DType::F32)?;
    if super::use_fused(param) && param.is_contiguous() {
        let op = AdamW {
            state: Mutex::new((m, v)),
            s: *s,
        };
        return param.inplace_op2(&grad.contiguous()?, &op);
    }
    let mut w: Vec<f32> = param.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
    let g: Vec<f32> = grad.flatten_all()?.to_vec1()?;
    update_slice(&mut w, &g, m, v, s);
    param.set(&Tensor::from_vec(w, param.shape(), param.device())?.to_dtype(param.dtype())?)
}

struct AdamW<'a> {
    state: Mutex<(&'a mut [f32], &'a mut [f32])>,
    s: AdamWStep,
}

impl InplaceOp2 for AdamW<'_> {
    fn name(&self) -> &'static str {
        "fused-adamw"
    }

    fn cpu_fwd(
        &self,
        dst: &mut CpuStorage,
        dst_l: &Layout,
        g: &CpuStorage,
        g_l: &Layout,
    ) -> Result<()> {
        let g = slice(g, g_l, "adamw gradient")?;
        let CpuStorage::F32(w) = dst else {
            bail!(
                "adamw: expected an f32 parameter, got {:?}",
                candle_core::backend::BackendStorage::dtype(dst)
            )
        };
        let Some((a, b)) = dst_l.contiguous_offsets() else {
            bail!("adamw: the parameter is not contiguous")
        };
        let w = &mut w[a..b];
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let (m, v) = &mut *state;
        let (wo, mo, vo) = (Out::new(w), Out::new(m), Out::new(v));
        par_for(g.len(), 64 * 1024, |r| {
            // SAFETY: chunks are disjoint ranges of the three buffers, all of g's length.
            let (w, m, v) = unsafe {
                (
                    wo.range(r.clone()),
                    mo.range(r.clone()),
                    vo.range(r.clone()),
                )
            };
            update_chunk(w, &g[r], m, v, &self.s)
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::testing::{tensor, values};

    #[test]
    fn fused_adamw_is_bit_identical_to_the_reference_loop() {
        let n = 300_007;
        let p = Var::from_tensor(&tensor(&[n], 1, 1.0)).unwrap();
        let mut w = values(n, 1, 1.0);
        let (mut m1, mut v1, mut m2, mut v2) =
            (vec![0.0; n], vec![0.0; n], vec![0.0; n], vec![0.0; n]);
        for t in 1..=3 {
            let g = tensor(&[n], 10 + t, 0.1);
            let s = AdamWStep {
                decay: 1.0 - 4e-4 * 0.1,
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
                step_size: (4e-4 / (1.0 - 0.9f64.powi(t as i32))) as f32,
                bias2_sqrt: (1.0 - 0.999f64.powi(t as i32)).sqrt() as f32,
                grad_scale: if t == 2 { 0.5 } else { 1.0 },
            };
            adamw_step(&p, &g, &mut m1, &mut v1, &s).unwrap();
            update_slice(&mut w, &g.to_vec1::<f32>().unwrap(), &mut m2, &mut v2, &s);
        }
        assert_eq!(p.as_tensor().to_vec1::<f32>().unwrap(), w);
        assert_eq!((m1, v1), (m2, v2));
        let mut short = vec![0.0; 3];
        assert!(adamw_step(
            &p,
            &tensor(&[n], 2, 1.0),
            &mut short.clone(),
            &mut short,
            &AdamWStep {
                decay: 1.0,
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
                step_size: 1e-3,
                bias2_sqrt: 1.0,
                grad_scale: 1.0,
            }
        )
        .is_err());
    }
}
