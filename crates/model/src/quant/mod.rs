//! Quantized weight matrices in ggml's block formats (Q8_0, Q4_0, Q4_K, Q6_K), byte for byte the
//! layout of GGUF tensors, and the matrix products of generation and prompt processing on them.
//!
//! Reference: llama.cpp's `ggml/src/ggml-common.h` (block layouts), `ggml-quants.c` (the `_ref`
//! quantizers and the dequantizers, which [`blocks`] transcribes) and `ggml-cpu/arch/x86/quants.c`
//! (the `ggml_vec_dot_*` kernels, whose method [`dot`] follows). As in llama.cpp, `y = x W^T`
//! quantizes the rows of x (to Q8_0 blocks for Q8_0/Q4_0 weights, to Q8_K blocks for the K-quants),
//! takes integer dot products per block and applies the scales in f32. [`QMatrix::matmul_reference`]
//! is the plain path kept beside it: dequantized weights, f32 inputs, f64 sums.
//!
//! Shapes: a matrix is `[rows = out, cols = in]` (PyTorch's layout); x is `(n, cols)`, y `(n, rows)`.
mod blocks;
mod dot;
mod op;
mod packed;

pub use dot::Kernel;
pub use op::qlinear;

use crate::kernels::{par_for, Out};
use std::borrow::Cow;
use std::ops::Range;

/// A ggml block type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum QType {
    Q8_0,
    Q4_0,
    Q4K,
    Q6K,
}

impl QType {
    pub const ALL: [QType; 4] = [QType::Q8_0, QType::Q4_0, QType::Q4K, QType::Q6K];

    /// Weights per block.
    pub fn block_size(self) -> usize {
        match self {
            QType::Q8_0 | QType::Q4_0 => 32,
            QType::Q4K | QType::Q6K => 256,
        }
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        match self {
            QType::Q8_0 => 34,
            QType::Q4_0 => 18,
            QType::Q4K => 144,
            QType::Q6K => 210,
        }
    }

    /// The type's number in ggml's `enum ggml_type` (and in GGUF tensor infos).
    pub fn ggml_id(self) -> u32 {
        match self {
            QType::Q8_0 => 8,
            QType::Q4_0 => 2,
            QType::Q4K => 12,
            QType::Q6K => 14,
        }
    }

    pub fn from_ggml(id: u32) -> Option<Self> {
        QType::ALL.into_iter().find(|t| t.ggml_id() == id)
    }

    /// ggml's name (`ggml_type_name`).
    pub fn name(self) -> &'static str {
        match self {
            QType::Q8_0 => "q8_0",
            QType::Q4_0 => "q4_0",
            QType::Q4K => "q4_K",
            QType::Q6K => "q6_K",
        }
    }

    /// A name as [`QType::name`] gives it, in any case.
    pub fn parse(s: &str) -> Option<Self> {
        QType::ALL
            .into_iter()
            .find(|t| t.name().eq_ignore_ascii_case(s))
    }

    /// Bytes of one row of `cols` weights (`cols` a multiple of the block size).
    pub fn row_bytes(self, cols: usize) -> usize {
        cols / self.block_size() * self.block_bytes()
    }
}

impl std::fmt::Display for QType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A weight matrix `[rows, cols]` of ggml blocks: each row is `cols / block_size` blocks, the bytes
/// of a GGUF tensor of shape `[cols, rows]` (ggml lists the fastest dimension first). Q8_0 and
/// Q4_0 hold them rearranged in groups of eight rows ([`packed`]); [`QMatrix::bytes`] gives the
/// GGUF bytes back.
#[derive(Clone, Debug, PartialEq)]
pub struct QMatrix {
    qtype: QType,
    rows: usize,
    cols: usize,
    /// The GGUF bytes (K-quants), or the packed groups (Q8_0, Q4_0).
    data: Vec<u8>,
}

impl QType {
    /// Whether matrices of this type are held in [`packed`] groups.
    fn packed(self) -> bool {
        matches!(self, QType::Q8_0 | QType::Q4_0)
    }
}

impl QMatrix {
    /// A matrix from its GGUF bytes.
    pub fn from_bytes(
        qtype: QType,
        rows: usize,
        cols: usize,
        data: Vec<u8>,
    ) -> Result<Self, String> {
        check_cols(qtype, cols)?;
        let want = rows
            .checked_mul(qtype.row_bytes(cols))
            .ok_or_else(|| format!("{qtype} matrix {rows}x{cols}: size overflows"))?;
        if data.len() != want {
            return Err(format!(
                "{qtype} matrix {rows}x{cols}: expected {want} bytes, got {}",
                data.len()
            ));
        }
        Ok(QMatrix::held(qtype, rows, cols, data))
    }

    /// The matrix of GGUF bytes `data` in the form it is held.
    fn held(qtype: QType, rows: usize, cols: usize, data: Vec<u8>) -> Self {
        let data = if qtype.packed() {
            packed::pack(qtype, rows, cols, &data)
        } else {
            data
        };
        QMatrix {
            qtype,
            rows,
            cols,
            data,
        }
    }

    /// Quantizes row-major `values` (`rows * cols`) as ggml's `quantize_row_*_ref` does, bit for
    /// bit. Q8_0 and Q4_0 only: the K-quants come from GGUF files.
    pub fn quantize(
        qtype: QType,
        rows: usize,
        cols: usize,
        values: &[f32],
    ) -> Result<Self, String> {
        check_cols(qtype, cols)?;
        if values.len() != rows * cols {
            return Err(format!(
                "quantize {qtype} {rows}x{cols}: expected {} values, got {}",
                rows * cols,
                values.len()
            ));
        }
        if matches!(qtype, QType::Q4K | QType::Q6K) {
            return Err(format!("{qtype} is read from GGUF files only"));
        }
        let bs = qtype.block_size();
        let mut data = vec![0u8; rows * qtype.row_bytes(cols)];
        let out = data.chunks_exact_mut(qtype.block_bytes());
        for (x, b) in values.chunks_exact(bs).zip(out) {
            match qtype {
                QType::Q8_0 => blocks::quantize_q8_0(x, b),
                _ => blocks::quantize_q4_0(x, b),
            }
        }
        Ok(QMatrix::held(qtype, rows, cols, data))
    }

    pub fn qtype(&self) -> QType {
        self.qtype
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    /// The GGUF bytes.
    pub fn bytes(&self) -> Cow<'_, [u8]> {
        if !self.qtype.packed() {
            return Cow::Borrowed(&self.data);
        }
        let mut out = Vec::with_capacity(self.rows * self.qtype.row_bytes(self.cols));
        for r in 0..self.rows {
            packed::unpack_row(self.qtype, self.cols, &self.data, r, &mut out);
        }
        Cow::Owned(out)
    }

    /// How many bytes the matrix takes in memory (a packed one's last group is whole).
    pub fn held_bytes(&self) -> usize {
        self.data.len()
    }

    /// Row `r`'s GGUF bytes.
    fn row(&self, r: usize) -> Cow<'_, [u8]> {
        let rb = self.qtype.row_bytes(self.cols);
        if !self.qtype.packed() {
            return Cow::Borrowed(&self.data[r * rb..(r + 1) * rb]);
        }
        let mut out = Vec::with_capacity(rb);
        packed::unpack_row(self.qtype, self.cols, &self.data, r, &mut out);
        Cow::Owned(out)
    }

    /// Row `r`'s values into `out` (`cols` long), as ggml's `dequantize_row_*`.
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        assert_eq!(out.len(), self.cols, "dequantize_row: output length");
        let (bs, bb) = (self.qtype.block_size(), self.qtype.block_bytes());
        for (b, y) in self.row(r).chunks_exact(bb).zip(out.chunks_exact_mut(bs)) {
            match self.qtype {
                QType::Q8_0 => blocks::dequantize_q8_0(b, y),
                QType::Q4_0 => blocks::dequantize_q4_0(b, y),
                QType::Q4K => blocks::dequantize_q4_k(b, y),
                QType::Q6K => blocks::dequantize_q6_k(b, y),
            }
        }
    }

    /// All values, row-major `(rows, cols)`.
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = vec![0.0f32; self.rows * self.cols];
        for (r, o) in out.chunks_exact_mut(self.cols.max(1)).enumerate() {
            self.dequantize_row(r, o);
        }
        out
    }

    /// A copy of output rows `range` (splitting a fused QKV projection).
    pub fn rows_slice(&self, range: Range<usize>) -> Result<QMatrix, String> {
        if range.start > range.end || range.end > self.rows {
            return Err(format!(
                "rows {range:?} of a {qtype} matrix with {} rows",
                self.rows,
                qtype = self.qtype
            ));
        }
        let rb = self.qtype.row_bytes(self.cols);
        let data = self.bytes()[range.start * rb..range.end * rb].to_vec();
        Ok(QMatrix::held(self.qtype, range.len(), self.cols, data))
    }

    /// The matrices' rows one after another (same type and columns).
    pub fn concat_rows(parts: &[QMatrix]) -> Result<QMatrix, String> {
        let Some(first) = parts.first() else {
            return Err("concat_rows: no matrices".into());
        };
        if let Some(p) = parts
            .iter()
            .find(|p| (p.qtype, p.cols) != (first.qtype, first.cols))
        {
            return Err(format!(
                "concat_rows: {} with {} columns after {} with {}",
                p.qtype, p.cols, first.qtype, first.cols
            ));
        }
        let data = parts.iter().flat_map(|p| p.bytes().into_owned()).collect();
        let rows = parts.iter().map(|p| p.rows).sum();
        Ok(QMatrix::held(first.qtype, rows, first.cols, data))
    }

    /// `y (n, rows) = x (n, cols) W^T` on the kernel that [`Kernel::chosen`] picks.
    ///
    /// # Panics
    /// When `x` is not `n * cols` long or `y` not `n * rows`.
    pub fn matmul(&self, x: &[f32], n: usize, y: &mut [f32]) {
        self.matmul_with(Kernel::chosen(), x, n, y)
    }

    /// [`QMatrix::matmul`] on `kernel` (or the best one this CPU has below it).
    pub fn matmul_with(&self, kernel: Kernel, x: &[f32], n: usize, y: &mut [f32]) {
        self.check_io(x, n, y);
        let kernel = kernel.available();
        let acts = blocks::Acts::quantize(self.qtype, x, n, self.cols);
        if self.qtype.packed() {
            return self.matmul_packed(kernel, &acts, n, y);
        }
        let (rows, ys) = (self.rows, Out::new(y));
        // Rows per chunk of work: about 64 KiB of weights, at least one row.
        let row_bytes = self.qtype.row_bytes(self.cols).max(1);
        let min_chunk = (65536 / (row_bytes * n.max(1))).max(1);
        par_for(rows, min_chunk, |range| {
            // Weight rows in groups that stay in L2 while the rows of x pass over them, so each
            // weight block comes from memory once whatever n is.
            let group = (256 * 1024 / row_bytes).clamp(1, 64);
            let mut col = [0.0f32; 64];
            for r0 in range.clone().step_by(group) {
                let g = r0..(r0 + group).min(range.end);
                for j in 0..n {
                    for r in g.clone() {
                        col[r - r0] = dot::row_dot(kernel, self, r, &acts, j);
                    }
                    // SAFETY: the rows of `range` in output row j are this worker's only.
                    let out = unsafe { ys.range(j * rows + g.start..j * rows + g.end) };
                    out.copy_from_slice(&col[..g.len()]);
                }
            }
        });
    }

    /// [`QMatrix::matmul_with`] on packed groups: each group of eight rows against every row of
    /// x while its bytes are in L1.
    fn matmul_packed(&self, kernel: Kernel, acts: &blocks::Acts, n: usize, y: &mut [f32]) {
        let (rows, ys) = (self.rows, Out::new(y));
        let gbytes = self.qtype.row_bytes(self.cols) * packed::ROWS;
        let groups = rows.div_ceil(packed::ROWS);
        // About 64 KiB of weights per chunk of work.
        let min_chunk = (65536 / (gbytes.max(1) * n.max(1))).max(1);
        par_for(groups, min_chunk, |range| {
            for g in range {
                let group = &self.data[g * gbytes..(g + 1) * gbytes];
                let r = packed::ROWS * g..(packed::ROWS * (g + 1)).min(rows);
                let put = |j: usize, out: &[f32; packed::ROWS]| {
                    // SAFETY: the rows of group g in output row j are this worker's only.
                    let ys = unsafe { ys.range(j * rows + r.start..j * rows + r.end) };
                    ys.copy_from_slice(&out[..r.len()]);
                };
                // Rows of x four at a time (each weight loaded once for the four), then one by one.
                let mut j = 0;
                while j + 4 <= n {
                    let xs = std::array::from_fn(|i| acts.row_sums(j + i));
                    let outs = packed::group_dot::<4>(kernel, self.qtype, group, xs);
                    for (i, out) in outs.iter().enumerate() {
                        put(j + i, out);
                    }
                    j += 4;
                }
                for j in j..n {
                    let [out] = packed::group_dot(kernel, self.qtype, group, [acts.row_sums(j)]);
                    put(j, &out);
                }
            }
        });
    }

    /// The plain path: `y = x W^T` with W dequantized, f32 products summed in f64.
    pub fn matmul_reference(&self, x: &[f32], n: usize, y: &mut [f32]) {
        self.check_io(x, n, y);
        let mut w = vec![0.0f32; self.cols];
        for r in 0..self.rows {
            self.dequantize_row(r, &mut w);
            for j in 0..n {
                let xj = &x[j * self.cols..(j + 1) * self.cols];
                let s: f64 = w.iter().zip(xj).map(|(&a, &b)| a as f64 * b as f64).sum();
                y[j * self.rows + r] = s as f32;
            }
        }
    }

    fn check_io(&self, x: &[f32], n: usize, y: &[f32]) {
        assert_eq!(x.len(), n * self.cols, "matmul: x is not (n, cols)");
        assert_eq!(y.len(), n * self.rows, "matmul: y is not (n, rows)");
    }
}

fn check_cols(qtype: QType, cols: usize) -> Result<(), String> {
    if !cols.is_multiple_of(qtype.block_size()) {
        return Err(format!(
            "{qtype}: {cols} columns are not a multiple of the block size {}",
            qtype.block_size()
        ));
    }
    Ok(())
}
