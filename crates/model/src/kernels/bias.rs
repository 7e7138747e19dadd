//! Adding a bias to the rows of a matrix product; the backward sums the output gradient's columns
//! for the bias (threads over column blocks) instead of candle's general reduction.
use super::{multiversion, par_for, par_split, slice, use_fused, Out};
use candle_core::{bail, CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};

/// `y (rows, n) + b (n)`, fused on the CPU for f32.
pub fn add_bias(y: &Tensor, b: &Tensor) -> Result<Tensor> {
    let (_, n) = y.dims2()?;
    if b.dims() != [n] {
        bail!("bias {:?} for outputs {:?}", b.dims(), y.dims());
    }
    if use_fused(y) && use_fused(b) {
        y.contiguous()?.apply_op2(&b.contiguous()?, AddBias)
    } else {
        y.broadcast_add(b)
    }
}

multiversion! {
    fn add_rows(y: &[f32], b: &[f32], out: &mut [f32]) {
        let n = b.len();
        for (o, y) in out.chunks_exact_mut(n).zip(y.chunks_exact(n)) {
            for j in 0..n {
                o[j] = y[j] + b[j];
            }
        }
    }
}

multiversion! {
    fn column_sums(g: &[f32], n: usize, sums: &mut [f32]) {
        for row in g.chunks_exact(n) {
            for j in 0..n {
                sums[j] += row[j];
            }
        }
    }
}

struct AddBias;

impl CustomOp2 for AddBias {
    fn name(&self) -> &'static str {
        "fused-add-bias"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let y = slice(s1, l1, "linear output")?;
        let b = slice(s2, l2, "bias")?;
        let n = b.len();
        let mut out = vec![0.0f32; y.len()];
        let o = Out::new(&mut out);
        par_for(y.len() / n, 16, |r| {
            let span = r.start * n..r.end * n;
            // SAFETY: row ranges are disjoint.
            add_rows(&y[span.clone()], b, unsafe { o.range(span) })
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        _y: &Tensor,
        b: &Tensor,
        _out: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let gb = g
            .contiguous()?
            .apply_op1_no_bwd(&ColumnSums(b.elem_count()))?;
        Ok((Some(g.clone()), Some(gb)))
    }
}

/// The sums of the columns of a (rows, n) matrix: per-thread partial sums over row blocks, added
/// in thread order.
struct ColumnSums(usize);

impl CustomOp1 for ColumnSums {
    fn name(&self) -> &'static str {
        "column-sums"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = slice(s, l, "output gradient")?;
        let n = self.0;
        let partials = par_split(g.len() / n, |r| {
            let mut sums = vec![0.0f32; n];
            column_sums(&g[r.start * n..r.end * n], n, &mut sums);
            sums
        });
        let mut sums = vec![0.0f32; n];
        for p in partials.iter().filter(|p| !p.is_empty()) {
            sums.iter_mut().zip(p).for_each(|(s, v)| *s += v);
        }
        Ok((CpuStorage::F32(sums), Shape::from(n)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::testing::{max_abs_diff, tensor, weighted_grads};
    use candle_core::Var;

    #[test]
    fn fused_bias_add_agrees_with_broadcast_add_forward_and_backward() {
        let y = Var::from_tensor(&tensor(&[301, 96], 1, 2.0)).unwrap();
        let b = Var::from_tensor(&tensor(&[96], 2, 2.0)).unwrap();
        let w = tensor(&[301, 96], 3, 1.0);
        let fused = add_bias(&y, &b).unwrap();
        let plain = y.broadcast_add(&b).unwrap();
        assert_eq!(max_abs_diff(&fused, &plain), 0.0);
        let gf = weighted_grads(&fused, &w);
        let gp = weighted_grads(&plain, &w);
        assert_eq!(max_abs_diff(gf.get(&y).unwrap(), gp.get(&y).unwrap()), 0.0);
        // The bias gradient is the column sums of w, by hand in f64.
        let rows: Vec<Vec<f32>> = w.to_vec2().unwrap();
        let want: Vec<f32> = (0..96)
            .map(|j| rows.iter().map(|r| f64::from(r[j])).sum::<f64>() as f32)
            .collect();
        let got: Vec<f32> = gf.get(&b).unwrap().to_vec1().unwrap();
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() < 1e-4, "{g} vs {w}");
        }
        assert!(add_bias(&y, &tensor(&[95], 2, 1.0)).is_err());
    }
}
