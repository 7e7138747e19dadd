//! Dropout whose mask is a hash of (key, element index): the forward never stores a mask, the
//! backward recomputes it, and the fused and reference paths drop exactly the same elements.
//! [`add_dropout`] also folds in the residual add around it (`x + dropout(h)`).
use super::{multiversion, par_for, slice, use_fused, Out};
use candle_core::{bail, CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};

const CHUNK: usize = 16 * 1024;

/// A dropout mask: element `i` is kept when a hash of `(key, i)` reaches `threshold`, and kept
/// elements are scaled by `scale = 1 / (1 - p)`.
#[derive(Clone, Copy, Debug)]
pub struct Mask {
    key: u32,
    threshold: u32,
    scale: f32,
}

impl Mask {
    /// Drops each element with probability `p` (in [0, 1)), the pattern set by `key`.
    pub fn new(key: u64, p: f32) -> Self {
        let k = (key ^ (key >> 32)).wrapping_mul(0xd6e8_feb8_6659_fd93);
        Mask {
            key: (k >> 32) as u32,
            threshold: (f64::from(p) * 4_294_967_296.0).min(u32::MAX as f64) as u32,
            scale: 1.0 / (1.0 - p),
        }
    }

    /// The factor element `i` is multiplied by: 0 or `1 / (1 - p)`.
    #[inline(always)]
    pub fn factor(&self, i: u32) -> f32 {
        let mut h = i.wrapping_mul(0x9e37_79b1) ^ self.key;
        h ^= h >> 16;
        h = h.wrapping_mul(0x7feb_352d);
        h ^= h >> 15;
        h = h.wrapping_mul(0x846c_a68b);
        h ^= h >> 16;
        if h >= self.threshold {
            self.scale
        } else {
            0.0
        }
    }

    /// The mask as a tensor shaped like `x` (the reference path).
    pub fn tensor(&self, x: &Tensor) -> Result<Tensor> {
        let n = x.elem_count();
        if n > u32::MAX as usize {
            bail!("dropout: {n} elements are more than a mask indexes");
        }
        let values: Vec<f32> = (0..n as u32).map(|i| self.factor(i)).collect();
        Tensor::from_vec(values, x.shape(), x.device())?.to_dtype(x.dtype())
    }
}

/// `x` with `mask` applied, fused on the CPU for f32.
pub fn dropout(x: &Tensor, mask: Mask) -> Result<Tensor> {
    if use_fused(x) && x.elem_count() <= u32::MAX as usize {
        x.contiguous()?.apply_op1(Dropout(mask))
    } else {
        x * mask.tensor(x)?
    }
}

/// `x + h` with `mask` applied to `h` (a residual connection around dropout), fused on the CPU
/// for f32.
pub fn add_dropout(x: &Tensor, h: &Tensor, mask: Mask) -> Result<Tensor> {
    if x.dims() != h.dims() {
        bail!("residual add: shapes {:?} and {:?}", x.dims(), h.dims());
    }
    if use_fused(x) && use_fused(h) && x.elem_count() <= u32::MAX as usize {
        x.contiguous()?
            .apply_op2(&h.contiguous()?, AddDropout(mask))
    } else {
        x + (h * mask.tensor(h)?)?
    }
}

multiversion! {
    fn apply(x: &[f32], y: &mut [f32], start: u32, mask: &Mask) {
        for (k, (y, &x)) in y.iter_mut().zip(x).enumerate() {
            *y = x * mask.factor(start + k as u32);
        }
    }
}

multiversion! {
    fn add_apply(x: &[f32], h: &[f32], y: &mut [f32], start: u32, mask: &Mask) {
        for (k, ((y, &x), &h)) in y.iter_mut().zip(x).zip(h).enumerate() {
            *y = x + h * mask.factor(start + k as u32);
        }
    }
}

/// `x * mask` into a new buffer, in parallel.
fn masked(x: &[f32], mask: &Mask) -> Vec<f32> {
    let mut y = vec![0.0f32; x.len()];
    let out = Out::new(&mut y);
    // SAFETY: chunks are disjoint ranges of `y`.
    par_for(x.len(), CHUNK, |r| {
        apply(
            &x[r.clone()],
            unsafe { out.range(r.clone()) },
            r.start as u32,
            mask,
        )
    });
    y
}

struct Dropout(Mask);

impl CustomOp1 for Dropout {
    fn name(&self) -> &'static str {
        "fused-dropout"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = slice(s, l, "dropout input")?;
        Ok((CpuStorage::F32(masked(x, &self.0)), l.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, _y: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(g.contiguous()?.apply_op1_no_bwd(&Dropout(self.0))?))
    }
}

struct AddDropout(Mask);

impl CustomOp2 for AddDropout {
    fn name(&self) -> &'static str {
        "fused-add-dropout"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = slice(s1, l1, "residual input")?;
        let h = slice(s2, l2, "residual branch")?;
        let mut y = vec![0.0f32; x.len()];
        let out = Out::new(&mut y);
        par_for(x.len(), CHUNK, |r| {
            // SAFETY: chunks are disjoint ranges of `y`.
            let y = unsafe { out.range(r.clone()) };
            add_apply(&x[r.clone()], &h[r.clone()], y, r.start as u32, &self.0)
        });
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        _h: &Tensor,
        _y: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let gh = g.contiguous()?.apply_op1_no_bwd(&Dropout(self.0))?;
        Ok((Some(g.clone()), Some(gh)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::testing::{check_grad, tensor, weighted_grads, weighted_sum};
    use candle_core::{DType, Var};

    #[test]
    fn fused_dropout_drops_what_the_reference_drops_forward_and_backward() {
        let x = Var::from_tensor(&tensor(&[3, 40_000], 1, 2.0)).unwrap();
        let h = Var::from_tensor(&tensor(&[3, 40_000], 2, 2.0)).unwrap();
        let w = tensor(&[3, 40_000], 3, 1.0);
        let mask = Mask::new(77, 0.1);
        let fused = add_dropout(&x, &dropout(&h, mask).unwrap(), Mask::new(78, 0.25)).unwrap();
        let plain = (x.as_tensor()
            + ((h.as_tensor() * mask.tensor(&h).unwrap()).unwrap()
                * Mask::new(78, 0.25).tensor(&h).unwrap())
            .unwrap())
        .unwrap();
        assert_eq!(
            fused.to_vec2::<f32>().unwrap(),
            plain.to_vec2::<f32>().unwrap()
        );
        let gf = weighted_grads(&fused, &w);
        let gp = weighted_grads(&plain, &w);
        for v in [&x, &h] {
            let (a, b) = (
                gf.get(v.as_tensor()).unwrap(),
                gp.get(v.as_tensor()).unwrap(),
            );
            assert_eq!(a.to_vec2::<f32>().unwrap(), b.to_vec2::<f32>().unwrap());
        }
        // The drop rate is p, and the pattern depends on the key.
        let kept = mask
            .tensor(&h)
            .unwrap()
            .ne(0.0)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap();
        let rate = 1.0 - kept.mean_all().unwrap().to_scalar::<f32>().unwrap();
        assert!((rate - 0.1).abs() < 0.005, "drop rate {rate}");
        let other = Mask::new(76, 0.1).tensor(&h).unwrap();
        assert_ne!(
            other.to_vec2::<f32>().unwrap(),
            mask.tensor(&h).unwrap().to_vec2::<f32>().unwrap()
        );
    }

    #[test]
    fn fused_dropout_gradient_matches_finite_differences() {
        let h = Var::from_tensor(&tensor(&[6, 7], 4, 1.0)).unwrap();
        let x = tensor(&[6, 7], 5, 1.0);
        let w = tensor(&[6, 7], 6, 1.0);
        let mask = Mask::new(3, 0.3);
        let grads = weighted_grads(&add_dropout(&x, &h, mask).unwrap(), &w);
        let f64s = |t: &Tensor| t.to_dtype(DType::F64).unwrap();
        let (x64, w64) = (f64s(&x), f64s(&w));
        let loss = |h: &Tensor| {
            let y = (&x64 + (h * mask.tensor(h).unwrap()).unwrap()).unwrap();
            weighted_sum(&y, &w64)
        };
        check_grad(
            loss,
            h.as_tensor(),
            grads.get(h.as_tensor()).unwrap(),
            1e-4,
            42,
            1e-6,
        );
    }
}
