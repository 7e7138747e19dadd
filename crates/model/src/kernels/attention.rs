//! Attention for cached inference: queries (B, T, nh * hs) against cached keys and values kept in
//! their natural (B, Tk, n_kv * hs) layout, all heads at once, no transposes and no score tensors;
//! threads over (batch, head). Query i sits at position `p = offset + i` and sees keys `0..=p`, and
//! with a sliding window of w only `p - w < j <= p`. Grouped-query attention (Ainslie et al. 2023,
//! "GQA"): query head h reads key/value head `h / (nh / n_kv)`, as Hugging Face's `repeat_kv`
//! lays them out. Inference only (no backward): training takes the composed path with
//! [`super::causal_softmax`].
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
    let c = q.dim(candle_core::D::Minus1)?;
    if n_heads == 0 || c % n_heads != 0 {
        bail!(
            "cached attention: queries {:?} for {n_heads} heads",
            q.dims()
        );
    }
    let hs = c / n_heads;
    // The scale rounded as it always was, in f32.
    let scale = f64::from(1.0 / (hs as f32).sqrt());
    cached_attention_gqa(q, k, v, n_heads, n_heads, hs, tk, scale, None)
}

/// `softmax(q k^T * scale) v` per query head for `q` (B, T, n_heads * head_dim) at positions
/// `tk - T..tk` and the first `tk` rows of `k`, `v` (B, capacity, n_kv_heads * head_dim), query
/// head h reading key/value head `h / (n_heads / n_kv_heads)`, with the causal mask and, with
/// `Some(w)`, the sliding window `p - j < w`. Gives (B, T, n_heads * head_dim), or `None` when
/// the kernel does not apply (not f32 on the CPU, or kernels off).
#[allow(clippy::too_many_arguments)] // the signature the model code is written against
pub fn cached_attention_gqa(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
    tk: usize,
    scale: f64,
    window: Option<usize>,
) -> Result<Option<Tensor>> {
    if !(use_fused(q) && use_fused(k) && use_fused(v)) {
        return Ok(None);
    }
    let (b, t, qc) = q.dims3()?;
    let (kb, cap, kc) = k.dims3()?;
    let groups_ok = n_kv_heads > 0 && n_heads.is_multiple_of(n_kv_heads);
    let shapes_ok = kb == b && qc == n_heads * head_dim && kc == n_kv_heads * head_dim;
    if !groups_ok || !shapes_ok || v.dims() != k.dims() || tk > cap || tk < t || window == Some(0) {
        bail!(
            "cached attention: queries {:?}, keys {:?}, values {:?}, {tk} positions, \
             {n_heads} heads over {n_kv_heads} key/value heads of {head_dim}, window {window:?}",
            q.dims(),
            k.dims(),
            v.dims()
        );
    }
    let op = CachedAttention {
        b,
        t,
        cap,
        tk,
        n_heads,
        n_kv_heads,
        head_dim,
        scale: scale as f32,
        window,
    };
    let (k, v) = (k.contiguous()?, v.contiguous()?);
    Ok(Some(q.contiguous()?.apply_op3_no_bwd(&k, &v, &op)?))
}

struct CachedAttention {
    b: usize,
    t: usize,
    cap: usize,
    tk: usize,
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
    scale: f32,
    window: Option<usize>,
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
            cap,
            tk,
            n_heads,
            n_kv_heads,
            head_dim: hs,
            scale,
            window,
        } = *self;
        let (qc, kc) = (n_heads * hs, n_kv_heads * hs);
        let group = n_heads / n_kv_heads;
        let offset = tk - t;
        let mut y = vec![0.0f32; b * t * qc];
        let out = Out::new(&mut y);
        par_for(b * n_heads, 1, |pairs| {
            let mut w = vec![0.0f32; tk];
            for bh in pairs {
                let (bi, h) = (bh / n_heads, bh % n_heads);
                let kv = (h / group) * hs; // this head's columns in the cache rows
                for i in 0..t {
                    let qi = &q[(bi * t + i) * qc + h * hs..][..hs];
                    let p = offset + i;
                    let start = window.map_or(0, |win| (p + 1).saturating_sub(win));
                    let w = &mut w[start..p + 1];
                    for (j, wj) in (start..).zip(w.iter_mut()) {
                        *wj = dot(qi, &k[(bi * cap + j) * kc + kv..][..hs]) * scale;
                    }
                    let m = super::max_of(w);
                    w.iter_mut().for_each(|x| *x = super::exp(*x - m));
                    let inv = 1.0 / super::sum_by(w, |x| x);
                    // SAFETY: (batch, query, head) slices are written by one worker only.
                    let yi = unsafe {
                        out.range((bi * t + i) * qc + h * hs..(bi * t + i) * qc + (h + 1) * hs)
                    };
                    for (j, &wj) in (start..).zip(w.iter()) {
                        axpy(yi, wj * inv, &v[(bi * cap + j) * kc + kv..][..hs]);
                    }
                }
            }
        });
        Ok((CpuStorage::F32(y), Shape::from((b, t, qc))))
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
