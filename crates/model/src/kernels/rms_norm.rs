//! RMSNorm over the last dimension (Zhang and Sennrich 2019, "Root Mean Square Layer
//! Normalization") with Llama's and Qwen3's gain `g = w` or Gemma 3's `g = 1 + w`; forward and
//! backward in one pass over the rows each. Matches Hugging Face's `LlamaRMSNorm` and
//! `Gemma3RMSNorm` in f32.
//!
//! Forward, per row of C: `r = 1 / sqrt(mean(x^2) + eps)`, `y = x r g`.
//! Backward with `xh = x r` and `d = dy g`: `dx = r (d - xh mean(d xh))`;
//! `dw = sum over rows of dy xh` for either gain (per-thread partial sums, added in thread order).
use super::{multiversion, par_for, par_split, reference, slice, sum_by, sum_by2, use_fused, Out};
use candle_core::{bail, CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor, D};

/// RMSNorm of `x` (.., C) with `weight` (C), gain `1 + weight` when `unit_offset`; fused on the
/// CPU for f32.
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64, unit_offset: bool) -> Result<Tensor> {
    if !(use_fused(x) && use_fused(weight)) {
        return reference::rms_norm(x, weight, eps, unit_offset);
    }
    let c = x.dim(D::Minus1)?;
    if weight.dims() != [c] {
        bail!(
            "rms norm: weight {:?} does not match the last dimension of {:?}",
            weight.dims(),
            x.dims()
        );
    }
    let op = RmsNorm {
        c,
        eps: eps as f32,
        unit_offset,
    };
    x.contiguous()?.apply_op2(&weight.contiguous()?, op)
}

#[derive(Clone, Copy)]
struct RmsNorm {
    c: usize,
    eps: f32,
    unit_offset: bool,
}

impl RmsNorm {
    /// The gain per channel: `w`, or `1 + w` (rounded as the reference's `weight + 1.0`).
    fn gain(&self, w: &[f32]) -> Vec<f32> {
        let offset = if self.unit_offset { 1.0 } else { 0.0 };
        w.iter().map(|&w| w + offset).collect()
    }
}

/// `1 / sqrt(mean(x^2) + eps)` of one row.
#[inline(always)]
fn rstd(x: &[f32], eps: f32) -> f32 {
    1.0 / (sum_by(x, |v| v * v) / x.len() as f32 + eps).sqrt()
}

multiversion! {
    fn forward_rows(x: &[f32], gain: &[f32], y: &mut [f32], eps: f32) {
        let c = gain.len();
        for (x, y) in x.chunks_exact(c).zip(y.chunks_exact_mut(c)) {
            let r = rstd(x, eps);
            for j in 0..c {
                y[j] = x[j] * r * gain[j];
            }
        }
    }
}

multiversion! {
    fn backward_rows(x: &[f32], g: &[f32], gain: &[f32], dx: &mut [f32], dw: &mut [f32], eps: f32) {
        let c = gain.len();
        let mut xh = vec![0.0f32; c];
        let mut d = vec![0.0f32; c];
        for ((x, g), dx) in x.chunks_exact(c).zip(g.chunks_exact(c)).zip(dx.chunks_exact_mut(c)) {
            let r = rstd(x, eps);
            for j in 0..c {
                xh[j] = x[j] * r;
                d[j] = g[j] * gain[j];
                dw[j] += g[j] * xh[j];
            }
            let mean_dxh = sum_by2(&d, &xh, |a, b| a * b) / c as f32;
            for j in 0..c {
                dx[j] = r * (d[j] - xh[j] * mean_dxh);
            }
        }
    }
}

impl CustomOp2 for RmsNorm {
    fn name(&self) -> &'static str {
        "fused-rms-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = slice(s1, l1, "rms norm input")?;
        let gain = self.gain(slice(s2, l2, "rms norm weight")?);
        let c = self.c;
        let mut y = vec![0.0f32; x.len()];
        let out = Out::new(&mut y);
        par_for(x.len() / c, 16, |r| {
            let span = r.start * c..r.end * c;
            // SAFETY: row ranges are disjoint.
            let y = unsafe { out.range(span.clone()) };
            forward_rows(&x[span], &gain, y, self.eps)
        });
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        _y: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let rows = x.elem_count() / self.c;
        let all = x.apply_op3_no_bwd(&g.contiguous()?, weight, &RmsNormBackward(*self))?;
        let dx = all.narrow(0, 0, rows)?.reshape(x.shape())?;
        let dw = all.narrow(0, rows, 1)?.reshape(self.c)?;
        Ok((Some(dx), Some(dw)))
    }
}

/// Gives one (rows + 1, C) tensor: dx, then dweight.
struct RmsNormBackward(RmsNorm);

impl CustomOp3 for RmsNormBackward {
    fn name(&self) -> &'static str {
        "fused-rms-norm-backward"
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
        let x = slice(s1, l1, "rms norm input")?;
        let g = slice(s2, l2, "rms norm output gradient")?;
        let gain = self.0.gain(slice(s3, l3, "rms norm weight")?);
        let RmsNorm { c, eps, .. } = self.0;
        if g.len() != x.len() {
            bail!(
                "rms norm backward: {} inputs, {} gradients",
                x.len(),
                g.len()
            );
        }
        let rows = x.len() / c;
        let mut all = vec![0.0f32; (rows + 1) * c];
        let out = Out::new(&mut all);
        let partials = par_split(rows, |r| {
            let span = r.start * c..r.end * c;
            let mut dw = vec![0.0f32; c];
            // SAFETY: each thread writes its own rows of dx.
            let dx = unsafe { out.range(span.clone()) };
            backward_rows(&x[span.clone()], &g[span], &gain, dx, &mut dw, eps);
            dw
        });
        let (_, dw) = all.split_at_mut(rows * c);
        for p in partials.iter().filter(|p| !p.is_empty()) {
            dw.iter_mut().zip(p).for_each(|(s, v)| *s += v);
        }
        Ok((CpuStorage::F32(all), Shape::from((rows + 1, c))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::testing::{check_grad, max_abs_diff, tensor, weighted_grads, weighted_sum};
    use candle_core::{DType, Var};

    #[test]
    fn fused_rms_norm_agrees_with_the_composition_forward_and_backward() {
        for unit_offset in [false, true] {
            let x = Var::from_tensor(&(tensor(&[2, 37, 64], 1, 3.0) + 0.5).unwrap()).unwrap();
            let w = Var::from_tensor(&(tensor(&[64], 2, 0.5) + 0.5).unwrap()).unwrap();
            let dy = tensor(&[2, 37, 64], 4, 1.0);
            let fused = rms_norm(&x, &w, 1e-6, unit_offset).unwrap();
            let plain = reference::rms_norm(&x, &w, 1e-6, unit_offset).unwrap();
            assert!(max_abs_diff(&fused, &plain) < 1e-5, "{unit_offset}");
            let gf = weighted_grads(&fused, &dy);
            let gp = weighted_grads(&plain, &dy);
            for v in [&x, &w] {
                let (a, b) = (
                    gf.get(v.as_tensor()).unwrap(),
                    gp.get(v.as_tensor()).unwrap(),
                );
                assert!(max_abs_diff(a, b) < 1e-4, "{unit_offset} {:?}", v.dims());
            }
        }
    }

    #[test]
    fn fused_rms_norm_gradients_match_finite_differences() {
        let x = Var::from_tensor(&(tensor(&[3, 5, 24], 5, 2.0) + 0.3).unwrap()).unwrap();
        let w = Var::from_tensor(&tensor(&[24], 6, 0.8)).unwrap();
        let dy = tensor(&[3, 5, 24], 7, 1.0);
        let f64s = |t: &Tensor| t.to_dtype(DType::F64).unwrap();
        let (x64, w64, dy64) = (f64s(&x), f64s(&w), f64s(&dy));
        for unit_offset in [false, true] {
            let grads = weighted_grads(&rms_norm(&x, &w, 1e-5, unit_offset).unwrap(), &dy);
            let loss = |x: &Tensor, w: &Tensor| {
                weighted_sum(
                    &reference::rms_norm(x, w, 1e-5, unit_offset).unwrap(),
                    &dy64,
                )
            };
            let gx = grads.get(x.as_tensor()).unwrap();
            check_grad(|t| loss(t, &w64), x.as_tensor(), gx, 1e-4, 360, 1e-3);
            let gw = grads.get(w.as_tensor()).unwrap();
            check_grad(|t| loss(&x64, t), w.as_tensor(), gw, 1e-4, 24, 1e-3);
        }
    }
}
