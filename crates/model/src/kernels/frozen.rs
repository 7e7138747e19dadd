//! Matrix products against a frozen weight: candle's `matmul` backward computes the gradient of
//! both operands and keeps it until the end of the backward, also for a weight that trains
//! nothing (LoRA's base weights, a frozen tied head: 2.4 GB of gradients nobody reads for a 0.6B
//! model, and a third of the backward's arithmetic). Here the right operand, when it carries no
//! gradient, is held by the op instead of being one of its inputs, so only the left operand's
//! gradient is computed.
use super::use_fused;
use candle_core::{bail, CpuStorage, CustomOp1, Layout, Result, Shape, Storage, Tensor};

/// `a (m, k) b (k, n)`; when `a` trains and `b` does not, the backward computes `a`'s gradient
/// only. Any strides.
pub fn matmul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if b.track_op() || !a.track_op() || !(use_fused(a) && use_fused(b)) {
        return a.matmul(b);
    }
    let ((_, k), (k2, _)) = (a.dims2()?, b.dims2()?);
    if k != k2 {
        bail!(
            "matmul: shapes {:?} and {:?} do not chain",
            a.dims(),
            b.dims()
        );
    }
    a.apply_op1(FrozenRight(b.clone()))
}

/// The product with this right operand, which gets no gradient.
struct FrozenRight(Tensor);

impl CustomOp1 for FrozenRight {
    fn name(&self) -> &'static str {
        "matmul-frozen-right"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(a) = s else {
            bail!("matmul: the left operand is not f32")
        };
        let (guard, bl) = self.0.storage_and_layout();
        let Storage::Cpu(CpuStorage::F32(b)) = &*guard else {
            bail!("matmul: the right operand is not f32 on the CPU")
        };
        let (&[m, k], &[_, n]) = (l.dims(), bl.dims()) else {
            bail!(
                "matmul: operands {:?} and {:?} are not matrices",
                l.dims(),
                bl.dims()
            )
        };
        let (sa, sb) = (l.stride(), bl.stride());
        let (a, b) = (&a[l.start_offset()..], &b[bl.start_offset()..]);
        let mut c = vec![0.0f32; m * n];
        let threads = candle_core::utils::get_num_threads();
        let parallelism = if threads > 1 {
            gemm::Parallelism::Rayon(threads)
        } else {
            gemm::Parallelism::None
        };
        // SAFETY: a and b hold every element their strides reach (their layouts say so), c is
        // m x n row-major; the arguments are candle's own for its CPU matmul.
        unsafe {
            gemm::gemm(
                m,
                n,
                k,
                c.as_mut_ptr(),
                1,
                n as isize,
                false,
                a.as_ptr(),
                sa[1] as isize,
                sa[0] as isize,
                b.as_ptr(),
                sb[1] as isize,
                sb[0] as isize,
                0.0,
                1.0,
                false,
                false,
                false,
                parallelism,
            );
        }
        Ok((CpuStorage::F32(c), Shape::from((m, n))))
    }

    fn bwd(&self, _a: &Tensor, _c: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(g.matmul(&self.0.t()?)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::testing::{max_abs_diff, tensor, weighted_grads};
    use candle_core::Var;

    #[test]
    fn a_frozen_right_operand_gets_no_gradient_and_the_left_the_same() {
        let a = Var::from_tensor(&tensor(&[7, 19], 1, 1.0)).unwrap();
        let w = tensor(&[23, 19], 2, 1.0); // a weight [out, in], used transposed
        let g = tensor(&[7, 23], 3, 1.0);
        let wt = w.t().unwrap();
        let got = matmul(&a, &wt).unwrap();
        let want = a.matmul(&wt).unwrap();
        assert_eq!(max_abs_diff(&got, &want), 0.0);
        let (gg, gw) = (weighted_grads(&got, &g), weighted_grads(&want, &g));
        let (x, y) = (
            gg.get(a.as_tensor()).unwrap(),
            gw.get(a.as_tensor()).unwrap(),
        );
        assert_eq!(max_abs_diff(x, y), 0.0);
        // candle's product keeps a gradient for the frozen weight; this one does not.
        assert!(gw.get(&wt).is_some());
        assert!(gg.get(&wt).is_none());
    }
}
