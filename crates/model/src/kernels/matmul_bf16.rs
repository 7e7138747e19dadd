//! Matrix products in bf16 with f32 accumulation (PyTorch's bf16 autocast for linear layers), on
//! the AVX-512 BF16 dot-product instruction (`vdpbf16ps`: 16 lanes, each adding two products).
//!
//! `C (m, n) = A (m, k) B (k, n)` from f32 operands of any strides: A is packed once into panels of
//! [`MR`] rows, k-pairs interleaved (`a(r, 2p) | a(r, 2p+1) << 16`, broadcast as one 32-bit lane);
//! each thread takes panels of [`NR`] columns of B, packs one (k-pairs interleaved per column) and
//! runs the [`MR`] x [`NR`] micro-kernel over every row panel, the accumulators in 16 registers for
//! the whole depth. Operands are rounded to bf16 (to nearest, ties to even) while packing; products
//! and sums are f32. Without AVX512-BF16 the portable path computes the same rounded product in f32.
use super::{multiversion, par_for, use_fused, Out};
use candle_core::{bail, CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor};

/// Rows of A per micro-kernel tile.
const MR: usize = 8;
/// Columns of B per micro-kernel tile (two registers of 16 f32 lanes).
const NR: usize = 32;

/// Whether this CPU has the bf16 dot-product instruction (and AVX-512).
pub fn has_bf16_dot() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        super::simd_level() >= 4 && std::arch::is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// `a (m, k) b (k, n)` with bf16-rounded operands and f32 accumulation; 2-D f32 tensors on a CPU
/// with the bf16 dot product (anything else: candle's f32 product of the bf16-rounded operands).
/// Backward: the same kind of product for both gradients.
pub fn matmul_bf16(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let ((m, k), (k2, n)) = (a.dims2()?, b.dims2()?);
    if k != k2 {
        bail!(
            "matmul: shapes {:?} and {:?} do not chain",
            a.dims(),
            b.dims()
        );
    }
    // Without the bf16 dot product, the rounded operands go through the f32 matrix product (gemm's
    // vector kernels): the packed tiles widened back to f32 one by one were 7x slower for gpt2-small
    // training under SCRATCHLLM_SIMD=avx2 (29.9 tokens/s against f32's 146; 2026-12-03, Zen 4).
    if use_fused(a) && use_fused(b) && has_bf16_dot() {
        a.apply_op2(b, MatmulBf16 { m, n, k })
    } else {
        reference(a, b)
    }
}

/// The product of the bf16-rounded operands in f32 (what [`matmul_bf16`] computes, up to the order
/// of the sums).
pub fn reference(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let round = |t: &Tensor| t.to_dtype(DType::BF16)?.to_dtype(DType::F32);
    round(a)?.matmul(&round(b)?)
}

#[derive(Clone, Copy)]
struct MatmulBf16 {
    m: usize,
    n: usize,
    k: usize,
}

/// An f32 operand: element (i, j) at `data[i * rs + j * cs]`.
#[derive(Clone, Copy)]
struct Operand<'a> {
    data: &'a [f32],
    rs: usize,
    cs: usize,
}

impl<'a> Operand<'a> {
    fn new(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<Self> {
        let CpuStorage::F32(v) = s else {
            bail!("{what}: expected f32")
        };
        let (st, dims) = (l.stride(), l.dims());
        if dims.len() != 2 {
            bail!("{what}: expected a matrix, got {dims:?}");
        }
        Ok(Operand {
            data: &v[l.start_offset()..],
            rs: st[0],
            cs: st[1],
        })
    }

    /// Row `i`, columns `j..j + len`, when columns are contiguous (`cs == 1`).
    fn row(&self, i: usize, j: usize, len: usize) -> &[f32] {
        &self.data[i * self.rs + j..i * self.rs + j + len]
    }

    /// Column `j`, rows `i..i + len`, when rows are contiguous (`rs == 1`).
    fn col(&self, i: usize, j: usize, len: usize) -> &[f32] {
        &self.data[j * self.cs + i..j * self.cs + i + len]
    }
}

/// f32 to bf16 bits, rounding to nearest with ties to even (as `half`); NaN stays NaN.
#[inline(always)]
fn bf16_bits(x: f32) -> u32 {
    let b = x.to_bits();
    let rounded = b.wrapping_add(0x7fff + ((b >> 16) & 1)) >> 16;
    if b & 0x7fff_ffff > 0x7f80_0000 {
        0x7fc0
    } else {
        rounded
    }
}

/// Interleaves bf16 pairs: `out[t] = bf16(lo[t]) | bf16(hi[t]) << 16` (`hi` may be absent: 0).
#[inline(always)]
fn pairs(lo: &[f32], hi: Option<&[f32]>, out: &mut [u32]) {
    match hi {
        Some(hi) => {
            for ((o, &l), &h) in out.iter_mut().zip(lo).zip(hi) {
                *o = bf16_bits(l) | bf16_bits(h) << 16;
            }
        }
        None => {
            for (o, &l) in out.iter_mut().zip(lo) {
                *o = bf16_bits(l);
            }
        }
    }
}

fn kp(k: usize) -> usize {
    k.div_ceil(2)
}

multiversion! {
    /// Panel `i` of A (rows `i * MR..`): k-pair `p`, row `r` at `p * MR + r`.
    fn pack_a_panel(a: Operand, m: usize, k: usize, i: usize, dst: &mut [u32]) {
        let rows = MR.min(m - i * MR);
        dst.fill(0);
        if a.rs == 1 {
            // Column-major A: each k reads `rows` contiguous values.
            let mut lo = [0u32; MR];
            for p in 0..kp(k) {
                let l = a.col(i * MR, 2 * p, rows);
                let h = (2 * p + 1 < k).then(|| a.col(i * MR, 2 * p + 1, rows));
                pairs(l, h, &mut lo[..rows]);
                dst[p * MR..p * MR + rows].copy_from_slice(&lo[..rows]);
            }
        } else {
            let mut tmp = vec![0u32; kp(k)];
            for r in 0..rows {
                let row = i * MR + r;
                for (p, t) in tmp.iter_mut().enumerate() {
                    let lo = bf16_bits(a.data[row * a.rs + 2 * p * a.cs]);
                    let hi = if 2 * p + 1 < k { bf16_bits(a.data[row * a.rs + (2 * p + 1) * a.cs]) } else { 0 };
                    *t = lo | hi << 16;
                }
                for (p, &t) in tmp.iter().enumerate() {
                    dst[p * MR + r] = t;
                }
            }
        }
    }
}

/// A's rows packed by panels of MR: panel `i`, k-pair `p`, row `r` at `(i * kp + p) * MR + r`.
fn pack_a(a: Operand, m: usize, k: usize) -> Vec<u32> {
    let panels = m.div_ceil(MR);
    let kp = kp(k);
    let mut out = vec![0u32; panels * kp * MR];
    let o = Out32(out.as_mut_ptr());
    par_for(panels, 1, |ps| {
        for i in ps {
            // SAFETY: panel i's range is written by this worker only.
            let dst = unsafe { o.range(i * kp * MR..(i + 1) * kp * MR) };
            pack_a_panel(a, m, k, i, dst);
        }
    });
    out
}

multiversion! {
    /// Columns `j0..j0 + NR` of B packed: k-pair `p`, column `c` at `p * NR + c` (as one u32).
    fn pack_b_panel(b: Operand, k: usize, n: usize, j0: usize, dst: &mut [u32]) {
        let cols = NR.min(n - j0);
        dst.fill(0);
        if b.cs == 1 {
            // Row-major B: each k reads `cols` contiguous values.
            for p in 0..kp(k) {
                let l = b.row(2 * p, j0, cols);
                let h = (2 * p + 1 < k).then(|| b.row(2 * p + 1, j0, cols));
                pairs(l, h, &mut dst[p * NR..p * NR + cols]);
            }
        } else {
            let mut tmp = vec![0u32; kp(k)];
            for c in 0..cols {
                if b.rs == 1 {
                    let col = b.col(0, j0 + c, k);
                    let (even, odd) = (col.chunks_exact(2), col.len() % 2 == 1);
                    for (t, pr) in tmp.iter_mut().zip(even) {
                        *t = bf16_bits(pr[0]) | bf16_bits(pr[1]) << 16;
                    }
                    if odd {
                        tmp[k / 2] = bf16_bits(col[k - 1]);
                    }
                } else {
                    for (p, t) in tmp.iter_mut().enumerate() {
                        let lo = bf16_bits(b.data[2 * p * b.rs + (j0 + c) * b.cs]);
                        let hi = if 2 * p + 1 < k { bf16_bits(b.data[(2 * p + 1) * b.rs + (j0 + c) * b.cs]) } else { 0 };
                        *t = lo | hi << 16;
                    }
                }
                for (p, &t) in tmp.iter().enumerate() {
                    dst[p * NR + c] = t;
                }
            }
        }
    }
}

struct Out32(*mut u32);
// SAFETY: workers write disjoint ranges only.
unsafe impl Send for Out32 {}
unsafe impl Sync for Out32 {}
impl Out32 {
    #[allow(clippy::mut_from_ref)]
    unsafe fn range(&self, r: std::ops::Range<usize>) -> &mut [u32] {
        std::slice::from_raw_parts_mut(self.0.add(r.start), r.len())
    }
}

/// The MR x NR tile of packed A panel `a` times packed B panel `b` over `kp` k-pairs.
fn tile(a: &[u32], b: &[u32], kp: usize, acc: &mut [[f32; NR]; MR]) {
    #[cfg(target_arch = "x86_64")]
    if has_bf16_dot() {
        // SAFETY: the features are present; the slices hold kp * MR and kp * NR values.
        unsafe { tile_avx512bf16(a, b, kp, acc) };
        return;
    }
    tile_portable(a, b, kp, acc)
}

/// [`tile`] without the dot-product instruction: the same rounded operands, f32 products.
fn tile_portable(a: &[u32], b: &[u32], kp: usize, acc: &mut [[f32; NR]; MR]) {
    let wide = |v: u32, hi: bool| f32::from_bits(if hi { v & 0xffff_0000 } else { v << 16 });
    for p in 0..kp {
        for r in 0..MR {
            let av = a[p * MR + r];
            let (a0, a1) = (wide(av, false), wide(av, true));
            for c in 0..NR {
                let bv = b[p * NR + c];
                acc[r][c] += a0 * wide(bv, false) + a1 * wide(bv, true);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn tile_avx512bf16(a: &[u32], b: &[u32], kp: usize, acc: &mut [[f32; NR]; MR]) {
    use std::arch::x86_64::*;
    assert!(a.len() >= kp * MR && b.len() >= kp * NR);
    let mut c = [[_mm512_setzero_ps(); 2]; MR];
    let (ap, bp) = (a.as_ptr(), b.as_ptr());
    for p in 0..kp {
        let b0: __m512bh = std::mem::transmute(_mm512_loadu_si512(bp.add(p * NR).cast()));
        let b1: __m512bh = std::mem::transmute(_mm512_loadu_si512(bp.add(p * NR + 16).cast()));
        for (r, c) in c.iter_mut().enumerate() {
            let av: __m512bh = std::mem::transmute(_mm512_set1_epi32(*ap.add(p * MR + r) as i32));
            c[0] = _mm512_dpbf16_ps(c[0], av, b0);
            c[1] = _mm512_dpbf16_ps(c[1], av, b1);
        }
    }
    for (r, c) in c.iter().enumerate() {
        _mm512_storeu_ps(acc[r].as_mut_ptr(), c[0]);
        _mm512_storeu_ps(acc[r].as_mut_ptr().add(16), c[1]);
    }
}

impl MatmulBf16 {
    fn run(&self, a: Operand, b: Operand) -> Vec<f32> {
        let MatmulBf16 { m, n, k } = *self;
        let kp = kp(k);
        let packed_a = pack_a(a, m, k);
        let mut c = vec![0.0f32; m * n];
        let co = Out::new(&mut c);
        par_for(n.div_ceil(NR), 1, |panels| {
            let mut pb = vec![0u32; kp * NR];
            let mut acc = [[0.0f32; NR]; MR];
            for jp in panels {
                let j0 = jp * NR;
                pack_b_panel(b, k, n, j0, &mut pb);
                let cols = NR.min(n - j0);
                for ip in 0..m.div_ceil(MR) {
                    let pa = &packed_a[ip * kp * MR..(ip + 1) * kp * MR];
                    acc.iter_mut().for_each(|r| r.fill(0.0));
                    tile(pa, &pb, kp, &mut acc);
                    for (r, tile_row) in acc.iter().enumerate().take(MR.min(m - ip * MR)) {
                        let at = (ip * MR + r) * n + j0;
                        // SAFETY: this worker owns columns j0..j0 + cols of every row.
                        unsafe { co.range(at..at + cols) }.copy_from_slice(&tile_row[..cols]);
                    }
                }
            }
        });
        c
    }
}

impl CustomOp2 for MatmulBf16 {
    fn name(&self) -> &'static str {
        "matmul-bf16"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let a = Operand::new(s1, l1, "matmul left operand")?;
        let b = Operand::new(s2, l2, "matmul right operand")?;
        Ok((
            CpuStorage::F32(self.run(a, b)),
            Shape::from((self.m, self.n)),
        ))
    }

    fn bwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        _c: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        // An operand that carries no gradient (a frozen weight) gets none computed.
        let ga = a.track_op().then(|| {
            let op = MatmulBf16 {
                m: self.m,
                n: self.k,
                k: self.n,
            };
            g.apply_op2_no_bwd(&b.t()?, &op)
        });
        let gb = b.track_op().then(|| {
            let op = MatmulBf16 {
                m: self.k,
                n: self.n,
                k: self.m,
            };
            a.t()?.apply_op2_no_bwd(g, &op)
        });
        Ok((ga.transpose()?, gb.transpose()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::testing::{check_grad, max_abs_diff, tensor, weighted_grads, weighted_sum};
    use candle_core::Var;

    #[test]
    fn bf16_product_is_the_product_of_the_rounded_operands() {
        for (m, k, n) in [
            (1, 1, 1),
            (8, 32, 32),
            (13, 77, 45),
            (64, 768, 100),
            (3, 5, 300),
        ] {
            let a = tensor(&[m, k], 1, 1.0);
            let b = tensor(&[k, n], 2, 1.0);
            let got = matmul_bf16(&a, &b).unwrap();
            let want = reference(&a, &b).unwrap();
            let tol = 2e-6 * (k as f32).sqrt() * 4.0;
            assert!(
                max_abs_diff(&got, &want) < tol,
                "{m}x{k}x{n}: {}",
                max_abs_diff(&got, &want)
            );
            // Transposed (strided) operands read the same values.
            let at = tensor(&[k, m], 3, 1.0);
            let got = matmul_bf16(&at.t().unwrap(), &b).unwrap();
            let want = reference(&at.t().unwrap().contiguous().unwrap(), &b).unwrap();
            assert!(max_abs_diff(&got, &want) < tol);
        }
        // Neither rows nor columns contiguous.
        let odd = |r: usize, c: usize, seed| {
            tensor(&[r, c, 2], seed, 1.0)
                .narrow(2, 1, 1)
                .unwrap()
                .squeeze(2)
                .unwrap()
        };
        let (a, b) = (odd(9, 21, 7), odd(21, 40, 8));
        let want = reference(&a.contiguous().unwrap(), &b.contiguous().unwrap()).unwrap();
        assert!(max_abs_diff(&matmul_bf16(&a, &b).unwrap(), &want) < 1e-4);
        assert!(matmul_bf16(&tensor(&[2, 3], 1, 1.0), &tensor(&[4, 2], 1, 1.0)).is_err());
    }

    #[test]
    fn portable_path_agrees_with_the_dot_product_instruction() {
        let a = tensor(&[16, 64], 4, 1.0);
        let b = tensor(&[64, 32], 5, 1.0);
        let op = MatmulBf16 {
            m: 16,
            n: 32,
            k: 64,
        };
        let (sa, la) = a.storage_and_layout();
        let (sb, lb) = b.storage_and_layout();
        let (candle_core::Storage::Cpu(sa), candle_core::Storage::Cpu(sb)) = (&*sa, &*sb) else {
            panic!("cpu tensors")
        };
        let (oa, ob) = (
            Operand::new(sa, la, "a").unwrap(),
            Operand::new(sb, lb, "b").unwrap(),
        );
        let packed_a = pack_a(oa, 16, 64);
        let mut pb = vec![0u32; 32 * NR];
        pack_b_panel(ob, 64, 32, 0, &mut pb);
        let fast = op.run(oa, ob);
        let mut acc = [[0.0f32; NR]; MR];
        tile_portable(&packed_a, &pb, 32, &mut acc);
        for r in 0..MR {
            for c in 0..NR {
                assert!((fast[r * 32 + c] - acc[r][c]).abs() < 1e-5, "{r} {c}");
            }
        }
    }

    #[test]
    fn bf16_product_gradients_match_finite_differences_of_the_rounded_product() {
        let a = Var::from_tensor(&tensor(&[5, 6], 6, 1.0)).unwrap();
        let b = Var::from_tensor(&tensor(&[6, 4], 7, 1.0)).unwrap();
        let w = tensor(&[5, 4], 8, 1.0);
        let grads = weighted_grads(&matmul_bf16(&a, &b).unwrap(), &w);
        // d/dA of sum(w * A B) is w B^T: with bf16 operands, the gradient is w B^T of the
        // rounded values, to bf16 precision.
        let f64s = |t: &Tensor| {
            t.to_dtype(DType::BF16)
                .unwrap()
                .to_dtype(DType::F64)
                .unwrap()
        };
        let (b64, a64, w64) = (f64s(&b), f64s(&a), f64s(&w));
        let loss_a = |x: &Tensor| weighted_sum(&x.matmul(&b64).unwrap(), &w64);
        check_grad(
            loss_a,
            a.as_tensor(),
            grads.get(&a).unwrap(),
            1e-3,
            30,
            1e-5,
        );
        let loss_b = |x: &Tensor| weighted_sum(&a64.matmul(x).unwrap(), &w64);
        check_grad(
            loss_b,
            b.as_tensor(),
            grads.get(&b).unwrap(),
            1e-3,
            24,
            1e-5,
        );
    }
}
