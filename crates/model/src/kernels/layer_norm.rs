//! LayerNorm over the last dimension, forward and backward in one pass over the rows each.
//!
//! Backward, per row with `xh = (x - mean) * rstd` and `d = g * scale`:
//! `dx = rstd * (d - mean(d) - xh * mean(d * xh))`; `dscale = sum over rows of g * xh`,
//! `dshift = sum over rows of g` (per-thread partial sums, added in thread order).
use super::{multiversion, par_for, par_split, reference, slice, sum_by, sum_by2, use_fused, Out};
use candle_core::{bail, CpuStorage, CustomOp3, Layout, Result, Shape, Tensor, D};

/// LayerNorm of `x` (.., C) with `scale` and `shift` (C), fused on the CPU for f32.
pub fn layer_norm(x: &Tensor, scale: &Tensor, shift: &Tensor, eps: f64) -> Result<Tensor> {
    if use_fused(x) && use_fused(scale) && use_fused(shift) {
        let c = x.dim(D::Minus1)?;
        if scale.dims() != [c] || shift.dims() != [c] {
            bail!(
                "layer norm: scale {:?} and shift {:?} do not match the last dimension of {:?}",
                scale.dims(),
                shift.dims(),
                x.dims()
            );
        }
        x.contiguous()?
            .apply_op3(scale, shift, LayerNorm { c, eps: eps as f32 })
    } else {
        reference::layer_norm(x, scale, shift, eps)
    }
}

#[derive(Clone, Copy)]
struct LayerNorm {
    c: usize,
    eps: f32,
}

/// Mean and 1/std of one row.
#[inline(always)]
fn moments(x: &[f32], eps: f32) -> (f32, f32) {
    let n = x.len() as f32;
    let mean = sum_by(x, |v| v) / n;
    let var = sum_by(x, |v| (v - mean) * (v - mean)) / n;
    (mean, 1.0 / (var + eps).sqrt())
}

multiversion! {
    fn forward_rows(x: &[f32], scale: &[f32], shift: &[f32], y: &mut [f32], eps: f32) {
        let c = scale.len();
        for (x, y) in x.chunks_exact(c).zip(y.chunks_exact_mut(c)) {
            let (mean, rstd) = moments(x, eps);
            for j in 0..c {
                y[j] = (x[j] - mean) * rstd * scale[j] + shift[j];
            }
        }
    }
}

multiversion! {
    fn backward_rows(
        x: &[f32],
        g: &[f32],
        scale: &[f32],
        dx: &mut [f32],
        dscale: &mut [f32],
        dshift: &mut [f32],
        eps: f32,
    ) {
        let c = scale.len();
        let mut xh = vec![0.0f32; c];
        let mut d = vec![0.0f32; c];
        for ((x, g), dx) in x.chunks_exact(c).zip(g.chunks_exact(c)).zip(dx.chunks_exact_mut(c)) {
            let (mean, rstd) = moments(x, eps);
            for j in 0..c {
                xh[j] = (x[j] - mean) * rstd;
                d[j] = g[j] * scale[j];
                dscale[j] += g[j] * xh[j];
                dshift[j] += g[j];
            }
            let mean_d = sum_by(&d, |v| v) / c as f32;
            let mean_dxh = sum_by2(&d, &xh, |a, b| a * b) / c as f32;
            for j in 0..c {
                dx[j] = rstd * (d[j] - mean_d - xh[j] * mean_dxh);
            }
        }
    }
}

impl CustomOp3 for LayerNorm {
    fn name(&self) -> &'static str {
        "fused-layer-norm"
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
        let x = slice(s1, l1, "layer norm input")?;
        let scale = slice(s2, l2, "layer norm scale")?;
        let shift = slice(s3, l3, "layer norm shift")?;
        let c = self.c;
        let mut y = vec![0.0f32; x.len()];
        let out = Out::new(&mut y);
        par_for(x.len() / c, 16, |r| {
            let span = r.start * c..r.end * c;
            // SAFETY: row ranges are disjoint.
            let y = unsafe { out.range(span.clone()) };
            forward_rows(&x[span], scale, shift, y, self.eps)
        });
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        scale: &Tensor,
        _shift: &Tensor,
        _y: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let rows = x.elem_count() / self.c;
        let all = x.apply_op3_no_bwd(
            &g.contiguous()?,
            &scale.contiguous()?,
            &LayerNormBackward(*self),
        )?;
        let dx = all.narrow(0, 0, rows)?.reshape(x.shape())?;
        let dscale = all.narrow(0, rows, 1)?.reshape(self.c)?;
        let dshift = all.narrow(0, rows + 1, 1)?.reshape(self.c)?;
        Ok((Some(dx), Some(dscale), Some(dshift)))
    }
}

/// Gives one (rows + 2, C) tensor: dx, then dscale, then dshift.
struct LayerNormBackward(LayerNorm);

impl CustomOp3 for LayerNormBackward {
    fn name(&self) -> &'static str {
        "fused-layer-norm-backward"
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
        let x = slice(s1, l1, "layer norm input")?;
        let g = slice(s2, l2, "layer norm output gradient")?;
        let scale = slice(s3, l3, "layer norm scale")?;
        let LayerNorm { c, eps } = self.0;
        if g.len() != x.len() {
            bail!(
                "layer norm backward: {} inputs, {} gradients",
                x.len(),
                g.len()
            );
        }
        let rows = x.len() / c;
        let mut all = vec![0.0f32; (rows + 2) * c];
        let out = Out::new(&mut all);
        let partials = par_split(rows, |r| {
            let span = r.start * c..r.end * c;
            let mut sums = vec![0.0f32; 2 * c];
            let (dscale, dshift) = sums.split_at_mut(c);
            // SAFETY: each thread writes its own rows of dx.
            let dx = unsafe { out.range(span.clone()) };
            backward_rows(&x[span.clone()], &g[span], scale, dx, dscale, dshift, eps);
            sums
        });
        let (_, sums) = all.split_at_mut(rows * c);
        for p in partials.iter().filter(|p| !p.is_empty()) {
            sums.iter_mut().zip(p).for_each(|(s, v)| *s += v);
        }
        Ok((CpuStorage::F32(all), Shape::from((rows + 2, c))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::testing::{check_grad, max_abs_diff, tensor, weighted_grads, weighted_sum};
    use candle_core::{DType, Var};

    fn setup() -> (Var, Var, Var, Tensor) {
        let x = Var::from_tensor(&(tensor(&[2, 37, 64], 1, 3.0) + 0.5).unwrap()).unwrap();
        let scale = Var::from_tensor(&(tensor(&[64], 2, 0.5) + 1.0).unwrap()).unwrap();
        let shift = Var::from_tensor(&tensor(&[64], 3, 0.5)).unwrap();
        let w = tensor(&[2, 37, 64], 4, 1.0);
        (x, scale, shift, w)
    }

    #[test]
    fn fused_layer_norm_agrees_with_the_composition_forward_and_backward() {
        let (x, scale, shift, w) = setup();
        let eps = 1e-5;
        let fused = layer_norm(&x, &scale, &shift, eps).unwrap();
        let plain = reference::layer_norm(&x, &scale, &shift, eps).unwrap();
        assert!(max_abs_diff(&fused, &plain) < 1e-5);
        let gf = weighted_grads(&fused, &w);
        let gp = weighted_grads(&plain, &w);
        for v in [&x, &scale, &shift] {
            let (a, b) = (
                gf.get(v.as_tensor()).unwrap(),
                gp.get(v.as_tensor()).unwrap(),
            );
            assert!(max_abs_diff(a, b) < 1e-4, "{:?}", v.dims());
        }
    }

    #[test]
    fn fused_layer_norm_gradients_match_finite_differences() {
        let (x, scale, shift, w) = setup();
        let eps = 1e-5;
        let grads = weighted_grads(&layer_norm(&x, &scale, &shift, eps).unwrap(), &w);
        let f64s = |t: &Tensor| t.to_dtype(DType::F64).unwrap();
        let (x64, sc64, sh64, w64) = (f64s(&x), f64s(&scale), f64s(&shift), f64s(&w));
        let loss = |x: &Tensor, sc: &Tensor, sh: &Tensor| {
            let y = reference::layer_norm(x, sc, sh, eps).unwrap();
            weighted_sum(&y, &w64)
        };
        let gx = grads.get(x.as_tensor()).unwrap();
        check_grad(|t| loss(t, &sc64, &sh64), x.as_tensor(), gx, 1e-4, 97, 1e-3);
        let gs = grads.get(scale.as_tensor()).unwrap();
        check_grad(
            |t| loss(&x64, t, &sh64),
            scale.as_tensor(),
            gs,
            1e-4,
            64,
            1e-3,
        );
        let gh = grads.get(shift.as_tensor()).unwrap();
        check_grad(
            |t| loss(&x64, &sc64, t),
            shift.as_tensor(),
            gh,
            1e-4,
            64,
            1e-3,
        );
    }
}
