//! One block at a time: ggml's reference quantizers and dequantizers, transcribed from
//! `ggml/src/ggml-quants.c` (`quantize_row_q8_0_ref`, `quantize_row_q4_0_ref`,
//! `quantize_row_q8_K_ref`, `dequantize_row_{q8_0,q4_0,q4_K,q6_K}`), and the quantized rows of x.
//!
//! Block layouts (`ggml-common.h`, little-endian, no padding):
//! - Q8_0 (34 bytes): `d: f16`, `qs: [i8; 32]`; `x = d * q`.
//! - Q4_0 (18 bytes): `d: f16`, `qs: [u8; 16]`, element j in the low nibble of byte j and element
//!   j + 16 in its high nibble; `x = d * (q - 8)`.
//! - Q4_K (144 bytes): `d: f16`, `dmin: f16`, `scales: [u8; 12]` (eight 6-bit scales and mins),
//!   `qs: [u8; 128]`; eight sub-blocks of 32, `x = d * sc * q - dmin * m`.
//! - Q6_K (210 bytes): `ql: [u8; 128]`, `qh: [u8; 64]`, `scales: [i8; 16]`, `d: f16`; sixteen
//!   sub-blocks of 16, `x = d * sc * (q - 32)`.
//! - Q8_K (x only, not stored): `d: f32`, `qs: [i8; 256]`, `bsums: [i16; 16]` (sums of 16 qs).
use super::QType;
use half::f16;

pub(super) const QK_K: usize = 256;

/// The f16 at `b[at..at + 2]` as f32.
#[inline(always)]
pub(super) fn f16_at(b: &[u8], at: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([b[at], b[at + 1]])).to_f32()
}

fn put_f16(b: &mut [u8], v: f32) {
    b[..2].copy_from_slice(&f16::from_f32(v).to_bits().to_le_bytes());
}

/// `quantize_row_q8_0_ref` for one block of 32.
pub(super) fn quantize_q8_0(x: &[f32], out: &mut [u8]) {
    let (d, qs) = q8_0(x);
    put_f16(out, d);
    for (o, q) in out[2..34].iter_mut().zip(qs) {
        *o = q as u8;
    }
}

/// The scale (before rounding to f16) and quants of a Q8_0 block.
#[inline(always)]
fn q8_0(x: &[f32]) -> (f32, [i8; 32]) {
    let amax = x
        .iter()
        .fold(0.0f32, |m, v| if m > v.abs() { m } else { v.abs() });
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    // roundf (half away from zero), as f32::round.
    (d, std::array::from_fn(|j| (x[j] * id).round() as i8))
}

/// `quantize_row_q4_0_ref` for one block of 32: the scale comes from the value of largest
/// magnitude with its sign (d = max / -8), so that value lands exactly on q = 0.
pub(super) fn quantize_q4_0(x: &[f32], out: &mut [u8]) {
    let (mut amax, mut max) = (0.0f32, 0.0f32);
    for &v in x {
        if amax < v.abs() {
            amax = v.abs();
            max = v;
        }
    }
    let d = max / -8.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    put_f16(out, d);
    // `MIN(15, (int8_t)(x*id + 8.5f))`: truncation toward zero, then the top clipped.
    let q = |v: f32| ((v * id + 8.5) as i8).min(15) as u8;
    for j in 0..16 {
        out[2 + j] = q(x[j]) | (q(x[j + 16]) << 4);
    }
}

pub(super) fn dequantize_q8_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    for (y, &q) in y.iter_mut().zip(&b[2..34]) {
        *y = (q as i8) as f32 * d;
    }
}

pub(super) fn dequantize_q4_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    for j in 0..16 {
        let q = b[2 + j];
        y[j] = ((q & 0x0F) as i32 - 8) as f32 * d;
        y[j + 16] = ((q >> 4) as i32 - 8) as f32 * d;
    }
}

/// `get_scale_min_k4`: the 6-bit scale and min of Q4_K sub-block `j` (0..8) from the 12 bytes.
#[inline(always)]
pub(super) fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

pub(super) fn dequantize_q4_k(b: &[u8], y: &mut [f32]) {
    let (d, min) = (f16_at(b, 0), f16_at(b, 2));
    let (scales, qs) = (&b[4..16], &b[16..144]);
    for k in 0..4 {
        let (sc1, m1) = scale_min_k4(2 * k, scales);
        let (sc2, m2) = scale_min_k4(2 * k + 1, scales);
        let (d1, m1) = (d * sc1 as f32, min * m1 as f32);
        let (d2, m2) = (d * sc2 as f32, min * m2 as f32);
        let q = &qs[32 * k..32 * k + 32];
        let y = &mut y[64 * k..64 * k + 64];
        for l in 0..32 {
            y[l] = d1 * (q[l] & 0x0F) as f32 - m1;
            y[l + 32] = d2 * (q[l] >> 4) as f32 - m2;
        }
    }
}

/// The 6-bit quant of Q6_K element `i` (0..256) of a block, 0..64 (the stored value is q - 32).
#[inline(always)]
pub(super) fn q6_k_quant(b: &[u8], i: usize) -> i32 {
    let (h, k, l) = (i / 128, i % 128 / 32, i % 32);
    let ql = b[64 * h + l + 32 * (k & 1)];
    let low = if k < 2 { ql & 0x0F } else { ql >> 4 };
    let high = (b[128 + 32 * h + l] >> (2 * k)) & 3;
    (low | (high << 4)) as i32
}

pub(super) fn dequantize_q6_k(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 208);
    for (i, y) in y.iter_mut().enumerate().take(QK_K) {
        let sc = b[192 + i / 16] as i8;
        // ggml: `d * sc[is] * q` evaluated left to right in f32.
        *y = d * sc as f32 * (q6_k_quant(b, i) - 32) as f32;
    }
}

/// The rows of x quantized for the dot products: Q8_0 blocks (Q8_0 and Q4_0 weights) or Q8_K
/// blocks (Q4_K and Q6_K weights), quants, scales and (Q8_K) the sums of each 16 quants.
pub(super) struct Acts {
    pub qs: Vec<i8>,
    pub d: Vec<f32>,
    pub bsums: Vec<i16>,
    /// The sum of each Q8_0 block's quants (what the packed kernels' unsigned weights shift).
    pub sums: Vec<i32>,
    /// Blocks per row.
    pub blocks: usize,
    /// Values per block.
    pub block: usize,
}

impl Acts {
    pub fn quantize(qtype: QType, x: &[f32], n: usize, cols: usize) -> Self {
        let k_quant = matches!(qtype, QType::Q4K | QType::Q6K);
        let bs = if k_quant { QK_K } else { 32 };
        let blocks = cols / bs;
        let mut acts = Acts {
            qs: vec![0; n * cols],
            d: vec![0.0; n * blocks],
            bsums: vec![0; if k_quant { n * blocks * 16 } else { 0 }],
            sums: vec![0; if k_quant { 0 } else { n * blocks }],
            blocks,
            block: bs,
        };
        for (b, (x, qs)) in x
            .chunks_exact(bs)
            .zip(acts.qs.chunks_exact_mut(bs))
            .enumerate()
        {
            if k_quant {
                acts.d[b] = q8_k(x, qs, &mut acts.bsums[16 * b..16 * b + 16]);
            } else {
                let (d, q) = q8_0(x);
                qs.copy_from_slice(&q);
                acts.sums[b] = q.iter().map(|&v| v as i32).sum();
                // The scale as stored in a block_q8_0.
                acts.d[b] = f16::from_f32(d).to_f32();
            }
        }
        acts
    }

    /// Row j's quants, scales and Q8_0 block sums.
    pub fn row_sums(&self, j: usize) -> (&[i8], &[f32], &[i32]) {
        let nb = self.blocks;
        (
            &self.qs[j * nb * 32..(j + 1) * nb * 32],
            &self.d[j * nb..(j + 1) * nb],
            &self.sums[j * nb..(j + 1) * nb],
        )
    }

    /// Row j's quants, scales and block sums.
    pub fn row(&self, j: usize) -> (&[i8], &[f32], &[i16]) {
        let (nb, bs) = (self.blocks, self.block);
        let sums = if self.bsums.is_empty() {
            &self.bsums[..]
        } else {
            &self.bsums[j * nb * 16..(j + 1) * nb * 16]
        };
        (
            &self.qs[j * nb * bs..(j + 1) * nb * bs],
            &self.d[j * nb..(j + 1) * nb],
            sums,
        )
    }
}

/// `quantize_row_q8_K_ref` for one block of 256: the scale from the value of largest magnitude
/// with its sign (-127 / max), quants rounded half to even (`nearest_int`); returns d.
fn q8_k(x: &[f32], qs: &mut [i8], bsums: &mut [i16]) -> f32 {
    let (mut amax, mut max) = (0.0f32, 0.0f32);
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    if amax == 0.0 {
        qs.fill(0);
        bsums.fill(0);
        return 0.0;
    }
    let iscale = -127.0 / max;
    for (q, &v) in qs.iter_mut().zip(x) {
        *q = ((iscale * v).round_ties_even() as i32).min(127) as i8;
    }
    for (s, q) in bsums.iter_mut().zip(qs.chunks_exact(16)) {
        *s = q.iter().map(|&v| v as i16).sum();
    }
    1.0 / iscale
}
