//! Gated linear units of the decoder feed-forwards (Shazeer 2020, "GLU Variants Improve
//! Transformer"): SwiGLU `silu(gate) * up` (Llama, Qwen3) and GeGLU `gelu_tanh(gate) * up`
//! (Gemma 3), forward and backward in one pass each.
//!
//! `silu(a) = a s`, `s = 1 / (1 + e^-a)`, `silu'(a) = s (1 + a (1 - s))`; GELU and its derivative
//! as in [`super::gelu`]. Backward: `dgate = dy up act'(gate)`, `dup = dy act(gate)`.
use super::gelu::value_and_slope as gelu;
use super::{multiversion, par_for, reference, slice, use_fused, Out};
use candle_core::{bail, CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};

const CHUNK: usize = 16 * 1024;

/// `silu(gate) * up`, fused on the CPU for f32.
pub fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    glu(gate, up, Act::Silu)
}

/// `gelu_tanh(gate) * up`, fused on the CPU for f32.
pub fn geglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    glu(gate, up, Act::GeluTanh)
}

fn glu(gate: &Tensor, up: &Tensor, act: Act) -> Result<Tensor> {
    if !(use_fused(gate) && use_fused(up)) {
        return match act {
            Act::Silu => reference::swiglu(gate, up),
            Act::GeluTanh => reference::geglu(gate, up),
        };
    }
    if gate.dims() != up.dims() {
        bail!(
            "gated unit: gate {:?} and up {:?} differ in shape",
            gate.dims(),
            up.dims()
        );
    }
    gate.contiguous()?.apply_op2(&up.contiguous()?, act)
}

#[derive(Clone, Copy)]
enum Act {
    Silu,
    GeluTanh,
}

/// `silu(a)` and its derivative.
#[inline(always)]
fn silu(a: f32) -> (f32, f32) {
    let s = 1.0 / (1.0 + super::exp(-a));
    (a * s, s * (1.0 + a * (1.0 - s)))
}

multiversion! {
    fn forward(gate: &[f32], up: &[f32], y: &mut [f32], act: Act) {
        let it = y.iter_mut().zip(gate).zip(up);
        match act {
            Act::Silu => it.for_each(|((y, &a), &u)| *y = silu(a).0 * u),
            Act::GeluTanh => it.for_each(|((y, &a), &u)| *y = gelu(a).0 * u),
        }
    }
}

multiversion! {
    fn backward(gate: &[f32], up: &[f32], g: &[f32], dgate: &mut [f32], dup: &mut [f32], act: Act) {
        let it = dgate.iter_mut().zip(dup.iter_mut()).zip(gate.iter().zip(up).zip(g));
        match act {
            Act::Silu => it.for_each(|((dg, du), ((&a, &u), &g))| {
                let (f, d) = silu(a);
                (*dg, *du) = (g * u * d, g * f);
            }),
            Act::GeluTanh => it.for_each(|((dg, du), ((&a, &u), &g))| {
                let (f, d) = gelu(a);
                (*dg, *du) = (g * u * d, g * f);
            }),
        }
    }
}

impl CustomOp2 for Act {
    fn name(&self) -> &'static str {
        match self {
            Act::Silu => "fused-swiglu",
            Act::GeluTanh => "fused-geglu",
        }
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let gate = slice(s1, l1, "gated unit gate")?;
        let up = slice(s2, l2, "gated unit up")?;
        let mut y = vec![0.0f32; gate.len()];
        let out = Out::new(&mut y);
        par_for(gate.len(), CHUNK, |r| {
            // SAFETY: chunks are disjoint ranges of `y`.
            forward(
                &gate[r.clone()],
                &up[r.clone()],
                unsafe { out.range(r) },
                *self,
            )
        });
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        gate: &Tensor,
        up: &Tensor,
        _y: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let n = gate.elem_count();
        let both = gate.apply_op3_no_bwd(up, &g.contiguous()?, &GluBackward(*self))?;
        let dgate = both.narrow(0, 0, n)?.reshape(gate.shape())?;
        let dup = both.narrow(0, n, n)?.reshape(gate.shape())?;
        Ok((Some(dgate), Some(dup)))
    }
}

/// Gives one (2 N) tensor: dgate, then dup.
struct GluBackward(Act);

impl CustomOp3 for GluBackward {
    fn name(&self) -> &'static str {
        "fused-gated-unit-backward"
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
        let gate = slice(s1, l1, "gated unit gate")?;
        let up = slice(s2, l2, "gated unit up")?;
        let g = slice(s3, l3, "gated unit output gradient")?;
        let n = gate.len();
        if up.len() != n || g.len() != n {
            bail!(
                "gated unit backward: {n} gates, {} ups, {} gradients",
                up.len(),
                g.len()
            );
        }
        let mut both = vec![0.0f32; 2 * n];
        let out = Out::new(&mut both);
        par_for(n, CHUNK, |r| {
            // SAFETY: chunks are disjoint ranges of each half of `both`.
            let (dgate, dup) = unsafe { (out.range(r.clone()), out.range(n + r.start..n + r.end)) };
            let (gate, up, g) = (&gate[r.clone()], &up[r.clone()], &g[r]);
            backward(gate, up, g, dgate, dup, self.0)
        });
        Ok((CpuStorage::F32(both), Shape::from(2 * n)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::testing::{check_grad, max_abs_diff, tensor, weighted_grads, weighted_sum};
    use candle_core::{DType, Var};

    type Glu = fn(&Tensor, &Tensor) -> Result<Tensor>;
    const UNITS: [(&str, Glu, Glu); 2] = [
        ("swiglu", swiglu, reference::swiglu),
        ("geglu", geglu, reference::geglu),
    ];

    #[test]
    fn fused_gated_units_agree_with_candle_forward_and_backward() {
        let gate = Var::from_tensor(&tensor(&[3, 20_000], 1, 8.0)).unwrap();
        let up = Var::from_tensor(&tensor(&[3, 20_000], 2, 2.0)).unwrap();
        let w = tensor(&[3, 20_000], 3, 1.0);
        for (name, fused, plain) in UNITS {
            let f = fused(&gate, &up).unwrap();
            let p = plain(&gate, &up).unwrap();
            assert!(max_abs_diff(&f, &p) < 1e-5, "{name}");
            let gf = weighted_grads(&f, &w);
            let gp = weighted_grads(&p, &w);
            for v in [&gate, &up] {
                let (a, b) = (
                    gf.get(v.as_tensor()).unwrap(),
                    gp.get(v.as_tensor()).unwrap(),
                );
                assert!(max_abs_diff(a, b) < 1e-5, "{name}");
            }
        }
    }

    #[test]
    fn fused_gated_unit_gradients_match_finite_differences() {
        let gate = Var::from_tensor(&tensor(&[4, 19], 4, 5.0)).unwrap();
        let up = Var::from_tensor(&tensor(&[4, 19], 5, 2.0)).unwrap();
        let w = tensor(&[4, 19], 6, 1.0);
        let f64s = |t: &Tensor| t.to_dtype(DType::F64).unwrap();
        let (gate64, up64, w64) = (f64s(&gate), f64s(&up), f64s(&w));
        for (_, fused, plain) in UNITS {
            let grads = weighted_grads(&fused(&gate, &up).unwrap(), &w);
            let loss = |g: &Tensor, u: &Tensor| weighted_sum(&plain(g, u).unwrap(), &w64);
            let dg = grads.get(gate.as_tensor()).unwrap();
            check_grad(|t| loss(t, &up64), gate.as_tensor(), dg, 1e-5, 76, 1e-4);
            let du = grads.get(up.as_tensor()).unwrap();
            check_grad(|t| loss(&gate64, t), up.as_tensor(), du, 1e-5, 76, 1e-4);
        }
    }
}
