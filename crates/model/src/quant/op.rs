//! `x W^T + b` with a quantized W as a candle op (inference only: no gradient reaches W or x).
use super::QMatrix;
use crate::kernels::{add_bias, fused, slice};
use candle_core::{bail, CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor};
use std::sync::Arc;

/// `x (.., cols) W^T + b` → `(.., rows)` in f32 for x on the CPU (f32, or bf16 widened to f32).
/// With the fused kernels off ([`crate::kernels::set_fused`]) it runs
/// [`QMatrix::matmul_reference`].
pub fn qlinear(x: &Tensor, w: &Arc<QMatrix>, bias: Option<&Tensor>) -> Result<Tensor> {
    if !x.device().is_cpu() {
        bail!("qlinear: quantized weights run on the CPU only");
    }
    let dims = x.dims().to_vec();
    let Some((&cols, lead)) = dims.split_last() else {
        bail!("qlinear: x is a scalar")
    };
    if cols != w.cols() {
        bail!(
            "qlinear: {} weight {}x{} for inputs {dims:?}",
            w.qtype(),
            w.rows(),
            w.cols()
        );
    }
    let n: usize = lead.iter().product();
    let x = x.to_dtype(DType::F32)?.reshape((n, cols))?.contiguous()?; // (n, cols)
    let op = QLinear {
        w: w.clone(),
        n,
        reference: !fused(),
    };
    let y = x.apply_op1(op)?; // (n, rows)
    let y = match bias {
        Some(b) => add_bias(&y, b)?,
        None => y,
    };
    let mut out = lead.to_vec();
    out.push(w.rows());
    y.reshape(out) // (.., rows)
}

struct QLinear {
    w: Arc<QMatrix>,
    n: usize,
    reference: bool,
}

impl CustomOp1 for QLinear {
    fn name(&self) -> &'static str {
        "qlinear"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = slice(s, l, "qlinear input")?;
        let mut y = vec![0.0f32; self.n * self.w.rows()];
        if self.reference {
            self.w.matmul_reference(x, self.n, &mut y);
        } else {
            self.w.matmul(x, self.n, &mut y);
        }
        Ok((CpuStorage::F32(y), Shape::from((self.n, self.w.rows()))))
    }

    fn bwd(&self, _x: &Tensor, _y: &Tensor, _g: &Tensor) -> Result<Option<Tensor>> {
        bail!("qlinear: quantized weights are inference-only (no backward)")
    }
}
