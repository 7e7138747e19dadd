//! Causal self-attention for training and whole-sequence forwards that never holds the T x T
//! scores: a worker takes one (batch, query head) at a time and goes over its queries in tiles of
//! [`TILE`] rows; a tile's scores against the keys it can see (at most `TILE x T` values, in the
//! worker's scratch) become its weights and are multiplied into the values at once. The forward
//! keeps only each row's log-sum-exp; the backward recomputes the weights from it (Dao 2023,
//! "FlashAttention-2", algorithm 2, on the CPU with whole key rows instead of an online softmax:
//! the row's maximum is known before its exponentials, as in the plain softmax).
//!
//! Grouped-query attention: query head h reads key/value head `h / (nh / nkv)`; each query head's
//! key and value gradients are summed over its group in a fixed order, so results do not depend on
//! the thread count. Sliding windows: query i sees keys `i - w < j <= i`. Dropout on the weights
//! uses [`Mask`]'s hash of the index the weight has in the composed (B, nh, T, T) tensor, so the
//! fused and composed paths drop the same weights, and the backward needs no stored mask.
//!
//! Backward, with `P` the weights, `M` the dropout factors, `O = (P * M) V` and `dO` its gradient:
//! `dV = (P * M)^T dO`, `dP = (dO V^T) * M`, `dS = P * (dP - rowsum(dO * O)) * scale`,
//! `dQ = dS K`, `dK = dS^T Q`.
use super::{
    exp, fused, max_of, multiversion, par_for, reference, slice, sum_by, sum_by2, Mask, Out,
};
use candle_core::{bail, CpuStorage, CustomOp3, DType, Layout, Result, Shape, Storage, Tensor};
use std::sync::OnceLock;

/// Query rows per tile.
const TILE: usize = 32;

/// `softmax(q k^T * scale)` under the causal mask (and with `Some(w)` the sliding window
/// `i - j < w`), dropped out with `dropout`, times `v`, per query head: q (B, nh, T, hs), k and v
/// (B, nkv, T, hs) with nh a multiple of nkv, any strides. Gives (B, T, nh * hs). Fused on the
/// CPU for f32 and bf16 (computed in f32); otherwise [`reference::causal_attention`].
pub fn causal_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
    window: Option<usize>,
    dropout: Option<Mask>,
) -> Result<Tensor> {
    let (b, nh, t, hs) = q.dims4()?;
    let (kb, nkv, kt, khs) = k.dims4()?;
    let fits = kb == b && kt == t && khs == hs && v.dims() == k.dims();
    if !fits || nkv == 0 || !nh.is_multiple_of(nkv) || window == Some(0) {
        bail!(
            "causal attention: queries {:?}, keys {:?}, values {:?}, window {window:?}",
            q.dims(),
            k.dims(),
            v.dims()
        );
    }
    if dropout.is_some() && b * nh * t * t > u32::MAX as usize {
        bail!(
            "causal attention: {b} x {nh} x {t} x {t} weights are more than a dropout mask indexes"
        );
    }
    let dtype = q.dtype();
    let fusable = matches!(dtype, DType::F32 | DType::BF16) && q.device().is_cpu();
    if !(fusable && fused()) {
        return reference::causal_attention(q, k, v, scale, window, dropout);
    }
    let f32_rows = |x: &Tensor| -> Result<Tensor> {
        let x = x.to_dtype(DType::F32)?;
        if x.stride()[3] == 1 {
            Ok(x)
        } else {
            x.contiguous()
        }
    };
    let op = Flash {
        dims: Dims { b, nh, nkv, t, hs },
        scale: scale as f32,
        window,
        dropout,
        lse: OnceLock::new(),
    };
    f32_rows(q)?
        .apply_op3(&f32_rows(k)?, &f32_rows(v)?, op)?
        .to_dtype(dtype)
}

#[derive(Clone, Copy)]
struct Dims {
    b: usize,
    nh: usize,
    nkv: usize,
    t: usize,
    hs: usize,
}

struct Flash {
    dims: Dims,
    scale: f32,
    window: Option<usize>,
    dropout: Option<Mask>,
    /// Per (batch, query head, query) the log-sum-exp of the scaled scores, from the forward.
    lse: OnceLock<Vec<f32>>,
}

impl Flash {
    /// The first key query `i` sees.
    fn first_key(&self, i: usize) -> usize {
        self.window.map_or(0, |w| (i + 1).saturating_sub(w))
    }

    /// The tiles of query head `u = b * nh + h`: (first query, rows, first key seen).
    fn tiles(&self) -> impl Iterator<Item = (usize, usize, usize)> + '_ {
        let t = self.dims.t;
        (0..t)
            .step_by(TILE)
            .map(move |i0| (i0, TILE.min(t - i0), self.first_key(i0)))
    }

    /// Where the weight of query `i`, key `j` of head `u` sits in the composed (B, nh, T, T)
    /// weights (the dropout mask's index).
    fn weight_index(&self, u: usize, i: usize, j: usize) -> u32 {
        let t = self.dims.t;
        ((u * t + i) * t + j) as u32
    }
}

/// Rows of (B, n, T, hs) heads with the last dimension contiguous: row (b, h, i) starts at
/// `b * sb + h * sh + i * st`.
#[derive(Clone, Copy)]
struct Heads<'a> {
    x: &'a [f32],
    sb: usize,
    sh: usize,
    st: usize,
}

impl<'a> Heads<'a> {
    fn new(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<Self> {
        let CpuStorage::F32(x) = s else {
            bail!("causal attention: {what} are not f32")
        };
        match *l.stride() {
            [sb, sh, st, 1] => Ok(Heads {
                x: &x[l.start_offset()..],
                sb,
                sh,
                st,
            }),
            ref s => bail!("causal attention: {what} have strides {s:?}"),
        }
    }

    fn of(t: &'a Tensor, guard: &'a Storage, what: &str) -> Result<Self> {
        Heads::new(cpu(guard)?, t.layout(), what)
    }

    /// From row (b, h, i) on.
    fn from(&self, b: usize, h: usize, i: usize) -> &'a [f32] {
        &self.x[b * self.sb + h * self.sh + i * self.st..]
    }

    /// (B, n, hs, T): each head's rows as columns, for the products against all keys.
    fn transposed(&self, d: Dims, n: usize) -> Vec<f32> {
        let (t, hs) = (d.t, d.hs);
        let mut out = vec![0.0f32; d.b * n * hs * t];
        let o = Out::new(&mut out);
        par_for(d.b * n, 1, |units| {
            for u in units {
                // SAFETY: each (batch, head) block is written by one worker.
                let o = unsafe { o.range(u * hs * t..(u + 1) * hs * t) };
                for j in 0..t {
                    let row = &self.from(u / n, u % n, j)[..hs];
                    for (c, &x) in row.iter().enumerate() {
                        o[c * t + j] = x;
                    }
                }
            }
        });
        out
    }
}

fn cpu(s: &Storage) -> Result<&CpuStorage> {
    match s {
        Storage::Cpu(s) => Ok(s),
        _ => bail!("causal attention: a tensor not on the CPU"),
    }
}

multiversion! {
    /// `c[r][..n] += sum_i x[r * xr + i * xc] * b[i * bs..][..n]` for `r < m`, `i < k`, the rows
    /// of c `cs` apart: every product of the tiles, four rows by 32 columns at a time.
    fn mac(
        c: &mut [f32],
        cs: usize,
        x: &[f32],
        x_strides: (usize, usize),
        b: &[f32],
        bs: usize,
        mkn: (usize, usize, usize),
    ) {
        const W: usize = 32;
        let ((xr, xc), (m, k, n)) = (x_strides, mkn);
        for r in (0..m).step_by(4) {
            let rows = (m - r).min(4);
            for j in (0..n).step_by(W) {
                let w = (n - j).min(W);
                if rows == 4 && w == W {
                    let mut acc = [[0.0f32; W]; 4];
                    for i in 0..k {
                        let bi: &[f32; W] = b[i * bs + j..][..W].try_into().unwrap();
                        for (rr, acc) in acc.iter_mut().enumerate() {
                            let a = x[(r + rr) * xr + i * xc];
                            for l in 0..W {
                                acc[l] += a * bi[l];
                            }
                        }
                    }
                    for (rr, acc) in acc.iter().enumerate() {
                        let cr = &mut c[(r + rr) * cs + j..][..W];
                        for l in 0..W {
                            cr[l] += acc[l];
                        }
                    }
                } else {
                    for rr in r..r + rows {
                        let mut acc = [0.0f32; W];
                        for i in 0..k {
                            let a = x[rr * xr + i * xc];
                            for (acc, &bv) in acc.iter_mut().zip(&b[i * bs + j..][..w]) {
                                *acc += a * bv;
                            }
                        }
                        for (c, &acc) in c[rr * cs + j..][..w].iter_mut().zip(&acc) {
                            *c += acc;
                        }
                    }
                }
            }
        }
    }
}

multiversion! {
    /// Scores `s` (unscaled) of one query's visible keys to its weights; gives the log-sum-exp.
    fn softmax_row(s: &mut [f32], scale: f32) -> f32 {
        s.iter_mut().for_each(|x| *x *= scale);
        let m = max_of(s);
        s.iter_mut().for_each(|x| *x = exp(*x - m));
        let sum = sum_by(s, |x| x);
        let inv = 1.0 / sum;
        s.iter_mut().for_each(|x| *x *= inv);
        m + sum.ln()
    }
}

multiversion! {
    /// One query's visible keys in the backward: the scores `p` (unscaled) become the dropped-out
    /// weights `P * M`, and `dp` (`dO V^T`) becomes `dS` (with the scale); `d` is `dO . O`.
    fn backward_row(p: &mut [f32], dp: &mut [f32], scale: f32, lse: f32, d: f32, factor: &[f32]) {
        for ((p, dp), &f) in p.iter_mut().zip(dp.iter_mut()).zip(factor) {
            let w = exp(*p * scale - lse);
            *dp = w * (*dp * f - d) * scale;
            *p = w * f;
        }
    }
}

impl CustomOp3 for Flash {
    fn name(&self) -> &'static str {
        "fused-causal-attention"
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
        let (q, k, v) = (
            Heads::new(s1, l1, "queries")?,
            Heads::new(s2, l2, "keys")?,
            Heads::new(s3, l3, "values")?,
        );
        let d = self.dims;
        let Dims { b, nh, nkv, t, hs } = d;
        let kt = k.transposed(d, nkv);
        let mut y = vec![0.0f32; b * t * nh * hs];
        let mut lse = vec![0.0f32; b * nh * t];
        let (y_out, lse_out) = (Out::new(&mut y), Out::new(&mut lse));
        par_for(b * nh, 1, |units| {
            let mut s = vec![0.0f32; TILE * t];
            let mut o = vec![0.0f32; TILE * hs];
            for u in units {
                let (bi, h) = (u / nh, u % nh);
                let g = h / (nh / nkv);
                let kt = &kt[(bi * nkv + g) * hs * t..][..hs * t];
                for (i0, m, lo) in self.tiles() {
                    let n = i0 + m - lo;
                    let s = &mut s[..m * n];
                    s.fill(0.0);
                    mac(s, n, q.from(bi, h, i0), (q.st, 1), &kt[lo..], t, (m, hs, n));
                    // SAFETY: each head's rows are written by one worker.
                    let lse = unsafe { lse_out.range(u * t + i0..u * t + i0 + m) };
                    for (r, lse) in lse.iter_mut().enumerate() {
                        let i = i0 + r;
                        let row = &mut s[r * n..(r + 1) * n];
                        let (a, e) = (self.first_key(i) - lo, i + 1 - lo);
                        row[..a].fill(0.0);
                        row[e..].fill(0.0);
                        *lse = softmax_row(&mut row[a..e], self.scale);
                        if let Some(mask) = self.dropout {
                            for (j, w) in (lo + a..).zip(&mut row[a..e]) {
                                *w *= mask.factor(self.weight_index(u, i, j));
                            }
                        }
                    }
                    let o = &mut o[..m * hs];
                    o.fill(0.0);
                    mac(o, hs, s, (n, 1), v.from(bi, g, lo), v.st, (m, n, hs));
                    for (r, o) in o.chunks_exact(hs).enumerate() {
                        let at = ((bi * t + i0 + r) * nh + h) * hs;
                        // SAFETY: as above.
                        unsafe { y_out.range(at..at + hs) }.copy_from_slice(o);
                    }
                }
            }
        });
        let _ = self.lse.set(lse);
        Ok((CpuStorage::F32(y), Shape::from((b, t, nh * hs))))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let Some(lse) = self.lse.get() else {
            bail!("causal attention: backward before the forward")
        };
        let (y, dy) = (y.contiguous()?, dy.contiguous()?);
        let guards = [q, k, v, &y, &dy].map(|t| t.storage_and_layout().0);
        let q = Heads::of(q, &guards[0], "queries")?;
        let k = Heads::of(k, &guards[1], "keys")?;
        let v = Heads::of(v, &guards[2], "values")?;
        let y = slice(cpu(&guards[3])?, y.layout(), "attention outputs")?;
        let dy = slice(cpu(&guards[4])?, dy.layout(), "attention output gradients")?;
        let d = self.dims;
        let Dims { b, nh, nkv, t, hs } = d;
        let (kt, vt) = (k.transposed(d, nkv), v.transposed(d, nkv));
        let c = nh * hs; // a row of y
                         // Per query head: dq, and the key and value gradients it contributes, (B, nh, T, hs).
        let mut dq = vec![0.0f32; b * nh * t * hs];
        let mut dkh = vec![0.0f32; b * nh * t * hs];
        let mut dvh = vec![0.0f32; b * nh * t * hs];
        let outs = [&mut dq, &mut dkh, &mut dvh].map(|x| Out::new(x));
        par_for(b * nh, 1, |units| {
            let mut p = vec![0.0f32; TILE * t];
            let mut dp = vec![0.0f32; TILE * t];
            let mut factor = vec![1.0f32; t];
            for u in units {
                let (bi, h) = (u / nh, u % nh);
                let g = h / (nh / nkv);
                let block = u * t * hs..(u + 1) * t * hs;
                // SAFETY: each head's blocks are written by one worker.
                let [dq, dk, dv] = [0, 1, 2].map(|x| unsafe { outs[x].range(block.clone()) });
                let kt = &kt[(bi * nkv + g) * hs * t..][..hs * t];
                let vt = &vt[(bi * nkv + g) * hs * t..][..hs * t];
                for (i0, m, lo) in self.tiles() {
                    let n = i0 + m - lo;
                    let (p, dp) = (&mut p[..m * n], &mut dp[..m * n]);
                    p.fill(0.0);
                    dp.fill(0.0);
                    let (qi, dyi) = (q.from(bi, h, i0), &dy[(bi * t + i0) * c + h * hs..]);
                    mac(p, n, qi, (q.st, 1), &kt[lo..], t, (m, hs, n));
                    mac(dp, n, dyi, (c, 1), &vt[lo..], t, (m, hs, n));
                    for r in 0..m {
                        let i = i0 + r;
                        let (a, e) = (self.first_key(i) - lo, i + 1 - lo);
                        let (pr, dpr) = (&mut p[r * n..(r + 1) * n], &mut dp[r * n..(r + 1) * n]);
                        for x in [&mut *pr, &mut *dpr] {
                            x[..a].fill(0.0);
                            x[e..].fill(0.0);
                        }
                        let row = (bi * t + i) * c + h * hs;
                        let dsum = sum_by2(&dy[row..row + hs], &y[row..row + hs], |a, b| a * b);
                        let factor = &mut factor[..e - a];
                        if let Some(mask) = self.dropout {
                            for (j, f) in (lo + a..).zip(factor.iter_mut()) {
                                *f = mask.factor(self.weight_index(u, i, j));
                            }
                        }
                        let lse = lse[u * t + i];
                        backward_row(&mut pr[a..e], &mut dpr[a..e], self.scale, lse, dsum, factor);
                    }
                    // dV[j] += sum_r (P*M)[r][j] dO[r]; dK[j] += sum_r dS[r][j] Q[r];
                    // dQ[r] += sum_j dS[r][j] K[j].
                    mac(&mut dv[lo * hs..], hs, p, (1, n), dyi, c, (n, m, hs));
                    mac(&mut dk[lo * hs..], hs, dp, (1, n), qi, q.st, (n, m, hs));
                    let kj = k.from(bi, g, lo);
                    mac(&mut dq[i0 * hs..], hs, dp, (n, 1), kj, k.st, (m, n, hs));
                }
            }
        });
        let group = nh / nkv;
        let (dk, dv) = if group == 1 {
            (dkh, dvh)
        } else {
            let sum = |x: &[f32]| -> Vec<f32> {
                let head = t * hs;
                let mut out = vec![0.0f32; b * nkv * head];
                for (o, heads) in out.chunks_exact_mut(head).zip(x.chunks_exact(group * head)) {
                    for h in heads.chunks_exact(head) {
                        o.iter_mut().zip(h).for_each(|(o, &h)| *o += h);
                    }
                }
                out
            };
            (sum(&dkh), sum(&dvh))
        };
        let dev = candle_core::Device::Cpu;
        Ok((
            Some(Tensor::from_vec(dq, (b, nh, t, hs), &dev)?),
            Some(Tensor::from_vec(dk, (b, nkv, t, hs), &dev)?),
            Some(Tensor::from_vec(dv, (b, nkv, t, hs), &dev)?),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::testing::{check_grad, max_abs_diff, tensor, weighted_grads, weighted_sum};
    use candle_core::Var;

    /// q (B, nh, T, hs), k and v (B, nkv, T, hs) as variables.
    fn inputs(b: usize, nh: usize, nkv: usize, t: usize, hs: usize) -> [Var; 3] {
        [(nh, 1), (nkv, 2), (nkv, 3)]
            .map(|(n, seed)| Var::from_tensor(&tensor(&[b, n, t, hs], seed, 1.0)).unwrap())
    }

    #[test]
    fn fused_attention_agrees_with_the_composition_forward_and_backward() {
        // Shapes across tile edges, grouped queries, windows, dropout.
        let cases = [
            (2, 3, 3, 7, 8, None, None),
            (1, 4, 2, 45, 16, None, None),
            (2, 4, 1, 70, 8, Some(5), None),
            (1, 2, 2, 33, 40, Some(40), None),
            (2, 6, 3, 50, 8, None, Some(0.3)),
            (1, 4, 2, 66, 8, Some(9), Some(0.5)),
        ];
        for (b, nh, nkv, t, hs, window, p) in cases {
            let mask = p.map(|p| Mask::new(7, p));
            let [q, k, v] = inputs(b, nh, nkv, t, hs);
            let w = tensor(&[b, t, nh * hs], 4, 1.0);
            let scale = 1.0 / (hs as f64).sqrt();
            let fused = causal_attention(&q, &k, &v, scale, window, mask).unwrap();
            let plain = reference::causal_attention(&q, &k, &v, scale, window, mask).unwrap();
            let case = format!("{b} {nh} {nkv} {t} {hs} {window:?} {p:?}");
            assert!(max_abs_diff(&fused, &plain) < 2e-6, "{case}");
            let (gf, gp) = (weighted_grads(&fused, &w), weighted_grads(&plain, &w));
            for x in [&q, &k, &v] {
                let (a, b) = (
                    gf.get(x.as_tensor()).unwrap(),
                    gp.get(x.as_tensor()).unwrap(),
                );
                assert!(max_abs_diff(a, b) < 1e-5, "{case}: {}", max_abs_diff(a, b));
            }
        }
    }

    #[test]
    fn fused_attention_reads_strided_heads_and_bf16() {
        // Heads as views of (B, T, n * hs) rows, as the models make them.
        let (b, t, nh, hs) = (2, 37, 3, 8);
        let rows = |seed| tensor(&[b, t, nh * hs], seed, 1.0);
        let heads = |x: &Tensor| x.reshape((b, t, nh, hs)).unwrap().transpose(1, 2).unwrap();
        let (q, k, v) = (rows(1), rows(2), rows(3));
        let got = causal_attention(&heads(&q), &heads(&k), &heads(&v), 0.3, None, None).unwrap();
        let [qc, kc, vc] = [&q, &k, &v].map(|x| heads(x).contiguous().unwrap());
        let want = reference::causal_attention(&qc, &kc, &vc, 0.3, None, None).unwrap();
        assert!(max_abs_diff(&got, &want) < 2e-6);
        let bf = |x: &Tensor| heads(x).to_dtype(DType::BF16).unwrap();
        let got = causal_attention(&bf(&q), &bf(&k), &bf(&v), 0.3, None, None).unwrap();
        assert_eq!(got.dtype(), DType::BF16);
        let got = got.to_dtype(DType::F32).unwrap();
        assert!(max_abs_diff(&got, &want) < 2e-2);
    }

    #[test]
    fn fused_attention_gradient_matches_finite_differences() {
        let (b, nh, nkv, t, hs) = (1, 4, 2, 37, 4);
        let [q, k, v] = inputs(b, nh, nkv, t, hs);
        let w = tensor(&[b, t, nh * hs], 5, 1.0);
        let w64 = w.to_dtype(DType::F64).unwrap();
        let mask = Some(Mask::new(3, 0.2));
        for window in [None, Some(6)] {
            let y = causal_attention(&q, &k, &v, 0.5, window, mask).unwrap();
            let grads = weighted_grads(&y, &w);
            let f64s = |x: &Var| x.to_dtype(DType::F64).unwrap();
            let (q64, k64, v64) = (f64s(&q), f64s(&k), f64s(&v));
            let loss_q = |x: &Tensor| {
                let y = reference::causal_attention(x, &k64, &v64, 0.5, window, mask).unwrap();
                weighted_sum(&y, &w64)
            };
            let loss_k = |x: &Tensor| {
                let y = reference::causal_attention(&q64, x, &v64, 0.5, window, mask).unwrap();
                weighted_sum(&y, &w64)
            };
            let loss_v = |x: &Tensor| {
                let y = reference::causal_attention(&q64, &k64, x, 0.5, window, mask).unwrap();
                weighted_sum(&y, &w64)
            };
            let g = |x: &Var| grads.get(x.as_tensor()).unwrap().clone();
            check_grad(loss_q, q.as_tensor(), &g(&q), 1e-4, 150, 1e-3);
            check_grad(loss_k, k.as_tensor(), &g(&k), 1e-4, 150, 1e-3);
            check_grad(loss_v, v.as_tensor(), &g(&v), 1e-4, 150, 1e-3);
        }
    }

    #[test]
    fn mismatched_heads_are_refused_by_name() {
        let q = tensor(&[1, 3, 4, 8], 1, 1.0);
        let k = tensor(&[1, 2, 4, 8], 2, 1.0);
        let err = causal_attention(&q, &k, &k, 1.0, None, None).unwrap_err();
        assert!(err.to_string().contains("keys [1, 2, 4, 8]"), "{err}");
        let k = tensor(&[1, 3, 4, 8], 2, 1.0);
        assert!(causal_attention(&q, &k, &k, 1.0, Some(0), None).is_err());
    }
}
