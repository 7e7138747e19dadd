//! Attention for cached inference: queries (B, T, C) against cached keys and values kept in their
//! natural (B, Tk, C) layout, all heads at once, no transposes and no score tensors; threads over
//! (batch, head). Query i sits at position `offset + i` and sees keys `0..=offset + i`. Inference
//! only (no backward): training takes the composed path with [`super::causal_softmax`].
use super::{multiversion, par_for, slice, use_fused, Out};
use candle_core::{bail, CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};

/// `softmax(q k^T / sqrt(hs)) v` per head for `q` (B, T, C) and the first `tk` rows of `k`, `v`
/// (B, capacity, C); `None` when the kernel does not apply (not f32 on the CPU, or kernels off).
pub fn cached_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    n_heads: usize,
    tk: usize,
) -> Result<Option<Tensor>> {
    if !(use_fused(q) && use_fused(k) && use_fused(v)) {
        return Ok(None);
    }
    let (b, t, c) = q.dims3()?;
    let (kb, cap, kc) = k.dims3()?;
    if kb != b || kc != c || v.dims() != k.dims() || tk > cap || tk < t || c % n_heads != 0 {
        bail!(
            "cached attention: queries {:?}, keys {:?}, values {:?}, {tk} positions, {n_heads} heads",
            q.dims(),
            k.dims(),
            v.dims()
        );
    }
    let op = CachedAttention {
        b,
        t,
        c,
        cap,
        tk,
        n_heads,
    };
    Ok(Some(q.contiguous()?.apply_op3_no_bwd(k, v, &op)?))
}

struct CachedAttention {
    b: usize,
    t: usize,
    c: usize,
    cap: usize,
    tk: usize,
    n_heads: usize,
}

multiversion! {
    fn dot(a: &[f32], b: &[f32]) -> f32 {
        super::sum_by2(a, b, |x, y| x * y)
    }
}

multiversion! {
    fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
        for (y, &x) in y.iter_mut().zip(x) {
            *y += a * x;
        }
    }
}

impl CustomOp3 for CachedAttention {
    fn name(&self) -> &'static str {
        "cached-attention"
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
        let q = slice(s1, l1, "queries")?;
        let k = slice(s2, l2, "cached keys")?;
        let v = slice(s3, l3, "cached values")?;
        let CachedAttention {
            b,
            t,
            c,
            cap,
            tk,
            n_heads,
        } = *self;
        let hs = c / n_heads;
        let scale = 1.0 / (hs as f32).sqrt();
        let offset = tk - t;
        let mut y = vec![0.0f32; b * t * c];
        let out = Out::new(&mut y);
        par_for(b * n_heads, 1, |pairs| {
            let mut w = vec![0.0f32; tk];
            for bh in pairs {
                let (bi, h) = (bh / n_heads, bh % n_heads);
                for i in 0..t {
                    let qi = &q[(bi * t + i) * c + h * hs..][..hs];
                    let n = offset + i + 1;
                    for (j, wj) in w[..n].iter_mut().enumerate() {
                        *wj = dot(qi, &k[(bi * cap + j) * c + h * hs..][..hs]) * scale;
                    }
                    let m = super::max_of(&w[..n]);
                    w[..n].iter_mut().for_each(|x| *x = super::exp(*x - m));
                    let inv = 1.0 / super::sum_by(&w[..n], |x| x);
                    // SAFETY: (batch, query, head) slices are written by one worker only.
                    let yi = unsafe {
                        out.range((bi * t + i) * c + h * hs..(bi * t + i) * c + (h + 1) * hs)
                    };
                    for (j, &wj) in w[..n].iter().enumerate() {
                        axpy(yi, wj * inv, &v[(bi * cap + j) * c + h * hs..][..hs]);
                    }
                }
            }
        });
        Ok((CpuStorage::F32(y), Shape::from((b, t, c))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::reference;
    use crate::kernels::testing::{max_abs_diff, tensor};

    #[test]
    fn cached_attention_agrees_with_the_composed_heads() {
        let (b, nh, hs, cap) = (2, 3, 8, 20);
        let c = nh * hs;
        for (t, tk) in [(1, 1), (1, 13), (4, 9), (9, 9)] {
            let q = tensor(&[b, t, c], 1, 1.0);
            let k = tensor(&[b, cap, c], 2, 1.0);
            let v = tensor(&[b, cap, c], 3, 1.0);
            let got = cached_attention(&q, &k, &v, nh, tk).unwrap().unwrap();
            let heads = |x: &Tensor, n: usize| {
                x.narrow(1, 0, n)
                    .unwrap()
                    .reshape((b, n, nh, hs))
                    .unwrap()
                    .transpose(1, 2)
                    .unwrap()
                    .contiguous()
                    .unwrap()
            };
            let (qh, kh, vh) = (heads(&q, t), heads(&k, tk), heads(&v, tk));
            let scores = qh.matmul(&kh.t().unwrap()).unwrap();
            let w = reference::causal_softmax(&scores, 1.0 / (hs as f64).sqrt(), tk - t).unwrap();
            let want = w
                .matmul(&vh)
                .unwrap()
                .transpose(1, 2)
                .unwrap()
                .reshape((b, t, c))
                .unwrap();
            assert!(max_abs_diff(&got, &want) < 1e-5, "{t} {tk}");
        }
        let q = tensor(&[b, 2, c], 1, 1.0);
        let k = tensor(&[b, cap, c], 2, 1.0);
        assert!(cached_attention(&q, &k, &k, nh, 1).is_err());
    }
}
