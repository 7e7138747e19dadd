//! A linear layer for a few rows at a time (generation's one new token per sequence): `y = x W^T + b`
//! with W `[out, in]` in f32 or bf16 and x, b, y in f32.
//!
//! A general matrix product gains nothing at one row: the work is reading W once, so the kernel
//! splits the output rows over the threads and streams each row of W through dot products with
//! every row of x (bf16 weights halve the bytes read; they widen to f32 exactly by a shift).
//! The backward (for completeness; training uses the general product) is candle's matrix products.
use super::dots::{dots, dots2, WRow};
use super::{par_for, slice, Out};
use candle_core::{bail, CpuStorage, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor};
use std::ops::Range;

/// At most this many rows go through the kernel; more use the general matrix product.
pub const MAX_ROWS: usize = 16;

/// `x (rows, in) W^T + b` for f32 `x` on the CPU with at most [`MAX_ROWS`] rows and an f32 or bf16
/// `w`; `None` when the kernel does not apply (the caller uses a matrix product).
pub fn linear_rows(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Option<Tensor>> {
    let (rows, inp) = x.dims2()?;
    let out = w.dim(0)?;
    let wanted = super::use_fused(x)
        && w.device().is_cpu()
        && matches!(w.dtype(), DType::F32 | DType::BF16)
        && b.is_none_or(|b| b.dtype() == DType::F32 && b.dims() == [out])
        && rows <= MAX_ROWS;
    if !wanted {
        return Ok(None);
    }
    if w.dims() != [out, inp] {
        bail!("linear: weight {:?} for inputs {:?}", w.dims(), x.dims());
    }
    let (x, w) = (x.contiguous()?, w.contiguous()?);
    let op = RowsLinear { rows, inp, out };
    Ok(Some(match b {
        Some(b) => x.apply_op3(&w, b, op)?,
        None => x.apply_op2(&w, op)?,
    }))
}

#[derive(Clone, Copy)]
struct RowsLinear {
    rows: usize,
    inp: usize,
    out: usize,
}

/// W's values.
#[derive(Clone, Copy)]
enum Matrix<'a> {
    F32(&'a [f32]),
    Bf16(&'a [half::bf16]),
}

impl RowsLinear {
    fn run(&self, x: &[f32], w: &CpuStorage, wl: &Layout, b: Option<&[f32]>) -> Result<CpuStorage> {
        let RowsLinear { rows, inp, out } = *self;
        let weights = match w {
            CpuStorage::F32(_) => Matrix::F32(slice(w, wl, "linear weight")?),
            CpuStorage::BF16(v) => {
                let Some((a, e)) = wl.contiguous_offsets() else {
                    bail!("linear: the weight is not contiguous")
                };
                Matrix::Bf16(&v[a..e])
            }
            _ => bail!("linear: weights must be f32 or bf16"),
        };
        let row = |o: usize| match weights {
            Matrix::F32(w) => WRow::F32(&w[o * inp..(o + 1) * inp]),
            Matrix::Bf16(w) => WRow::Bf16(&w[o * inp..(o + 1) * inp]),
        };
        let mut y = vec![0.0f32; rows * out];
        let ys = Out::new(&mut y);
        let xr = |r: usize| &x[r * inp..(r + 1) * inp];
        // SAFETY: each output column o is written by one worker only.
        let put = |r: usize, o: usize, v: f32| unsafe {
            ys.range(r * out + o..r * out + o + 1)[0] = v + b.map_or(0.0, |b| b[o])
        };
        let (base, row_bytes) = match weights {
            Matrix::F32(w) => (w.as_ptr() as usize, inp * 4),
            Matrix::Bf16(w) => (w.as_ptr() as usize, inp * 2),
        };
        // Several rows of x make the kernel compute-bound where one row is bound by reading W: the
        // rows of W two pairs on are fetched into L2 while these are computed, a part in each pass
        // over them (one pair on left too little time at 8 rows: 2026-12-03, Zen 4).
        let passes = rows / 4 + rows % 4;
        let prefetch = |ahead: Range<usize>, pass: usize| {
            if rows < 2 || ahead.is_empty() {
                return 0..0;
            }
            let (a, e) = (base + ahead.start * row_bytes, base + ahead.end * row_bytes);
            a + (e - a) * pass / passes..a + (e - a) * (pass + 1) / passes
        };
        // Output columns o (and o + 1 when `pair`) for every row of x: rows four at a time (W's
        // rows read once for the four, the x chunks once for both columns), then one by one; each
        // value is the same whichever way it is computed. `ahead`: W's rows to fetch meanwhile.
        let columns = |o: usize, pair: bool, ahead: Range<usize>| {
            let four = rows / 4 * 4;
            for r in (0..four).step_by(4) {
                let xs = [xr(r), xr(r + 1), xr(r + 2), xr(r + 3)];
                let pf = prefetch(ahead.clone(), r / 4);
                if pair {
                    let vs = dots2([row(o), row(o + 1)], xs, pf);
                    for (j, v) in vs.iter().enumerate() {
                        v.iter()
                            .enumerate()
                            .for_each(|(i, &v)| put(r + i, o + j, v));
                    }
                } else {
                    let vs = dots(row(o), xs, pf);
                    vs.iter().enumerate().for_each(|(i, &v)| put(r + i, o, v));
                }
            }
            for r in four..rows {
                let pf = prefetch(ahead.clone(), four / 4 + r - four);
                if pair {
                    let vs = dots2([row(o), row(o + 1)], [xr(r)], pf);
                    put(r, o, vs[0][0]);
                    put(r, o + 1, vs[1][0]);
                } else {
                    put(r, o, dots(row(o), [xr(r)], pf)[0]);
                }
            }
        };
        par_for(out, 64, |os: Range<usize>| {
            let mut o = os.start;
            while o < os.end {
                // One row of x: the kernel is bound by reading W, one stream is enough.
                let pair = rows > 1 && o + 1 < os.end;
                let next = o + 1 + usize::from(pair);
                columns(o, pair, (next + 2).min(os.end)..(next + 4).min(os.end));
                o = next;
            }
        });
        Ok(CpuStorage::F32(y))
    }

    fn shape(&self) -> Shape {
        Shape::from((self.rows, self.out))
    }

    /// Gradients of x, W and b from the output gradient, with candle's ops.
    fn grads(&self, x: &Tensor, w: &Tensor, g: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
        let gx = g.matmul(&w.to_dtype(DType::F32)?)?;
        let gw = g.t()?.matmul(x)?.to_dtype(w.dtype())?;
        Ok((gx, gw, g.sum(0)?))
    }
}

impl CustomOp2 for RowsLinear {
    fn name(&self) -> &'static str {
        "rows-linear"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = slice(s1, l1, "linear input")?;
        Ok((self.run(x, s2, l2, None)?, self.shape()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _y: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (gx, gw, _) = self.grads(x, w, g)?;
        Ok((Some(gx), Some(gw)))
    }
}

impl CustomOp3 for RowsLinear {
    fn name(&self) -> &'static str {
        "rows-linear-bias"
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
        let x = slice(s1, l1, "linear input")?;
        let b = slice(s3, l3, "linear bias")?;
        Ok((self.run(x, s2, l2, Some(b))?, self.shape()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _y: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (gx, gw, gb) = self.grads(x, w, g)?;
        Ok((Some(gx), Some(gw), Some(gb)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::testing::{check_grad, max_abs_diff, tensor, weighted_grads, weighted_sum};
    use candle_core::Var;

    #[test]
    fn row_kernel_agrees_with_the_matrix_product_in_f32_and_bf16() {
        let w = tensor(&[301, 77], 1, 0.5);
        let b = tensor(&[301], 2, 0.5);
        for rows in [1, 3, MAX_ROWS] {
            let x = tensor(&[rows, 77], 3 + rows as u64, 1.0);
            let want = x
                .matmul(&w.t().unwrap())
                .unwrap()
                .broadcast_add(&b)
                .unwrap();
            let got = linear_rows(&x, &w, Some(&b)).unwrap().unwrap();
            assert!(max_abs_diff(&got, &want) < 1e-5);
            let got = linear_rows(&x, &w, None).unwrap().unwrap();
            let want = x.matmul(&w.t().unwrap()).unwrap();
            assert!(max_abs_diff(&got, &want) < 1e-5);
            // bf16 weights: exactly the product with the rounded weights widened to f32.
            let w16 = w.to_dtype(DType::BF16).unwrap();
            let got = linear_rows(&x, &w16, Some(&b)).unwrap().unwrap();
            let wide = w16.to_dtype(DType::F32).unwrap();
            let want = x
                .matmul(&wide.t().unwrap())
                .unwrap()
                .broadcast_add(&b)
                .unwrap();
            assert!(max_abs_diff(&got, &want) < 1e-5);
        }
        let many = tensor(&[MAX_ROWS + 1, 77], 9, 1.0);
        assert!(linear_rows(&many, &w, None).unwrap().is_none());
        assert!(linear_rows(&tensor(&[1, 76], 9, 1.0), &w, None).is_err());
    }

    #[test]
    fn row_kernel_gradients_match_finite_differences() {
        let x = Var::from_tensor(&tensor(&[2, 9], 1, 1.0)).unwrap();
        let w = tensor(&[5, 9], 2, 1.0);
        let b = tensor(&[5], 3, 1.0);
        let m = tensor(&[2, 5], 4, 1.0);
        let y = linear_rows(&x, &w, Some(&b)).unwrap().unwrap();
        let grads = weighted_grads(&y, &m);
        let f64s = |t: &Tensor| t.to_dtype(DType::F64).unwrap();
        let (w64, b64, m64) = (f64s(&w), f64s(&b), f64s(&m));
        let loss = |x: &Tensor| {
            let y = x
                .matmul(&w64.t().unwrap())
                .unwrap()
                .broadcast_add(&b64)
                .unwrap();
            weighted_sum(&y, &m64)
        };
        check_grad(
            loss,
            x.as_tensor(),
            grads.get(x.as_tensor()).unwrap(),
            1e-4,
            18,
            1e-4,
        );
    }
}
