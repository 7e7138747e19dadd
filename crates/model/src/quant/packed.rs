//! Q8_0 and Q4_0 matrices held in groups of eight rows, interleaved so that one 256-bit register
//! holds four weights of each of the eight rows: the integer dot products of a whole group with
//! one block of x end in the eight i32 lanes, one per row, with no horizontal sums, and the group's
//! eight scales convert in one instruction. (llama.cpp repacks its Q4_0 the same way for the same
//! reason, `block_q4_0x8` in `ggml-cpu/repack.cpp`.) Same bytes as the GGUF layout, rearranged:
//!
//! - group g, block b (of 32 columns) at `(g * blocks + b) * 8 * block_bytes`;
//! - 16 bytes: the f16 scales of rows 8g..8g+8;
//! - Q8_0: 8 steps k of 32 bytes, weights `4k..4k+4` of each row in turn, stored as `q ^ 0x80`
//!   (`q + 128`, unsigned, what `vpdpbusd` multiplies);
//! - Q4_0: 4 steps k of 32 bytes, bytes `4k..4k+4` of each row's 16 (weights `4k..4k+4` in the low
//!   nibbles, `16 + 4k..` in the high ones).
//!
//! Rows past the last (up to 7) are zero, scale 0. The unsigned forms shift each product sum by a
//! constant times x's block sum (`128 * sum(a)`, `8 * sum(a)`), taken off once per group and block.
use super::blocks::f16_at;
use super::dot::Kernel;
use super::QType;

/// Rows per group.
pub(super) const ROWS: usize = 8;

/// Bytes of one group's block.
pub(super) fn group_block_bytes(qtype: QType) -> usize {
    ROWS * qtype.block_bytes()
}

/// The packed bytes of a matrix of GGUF bytes `gguf` (`rows` rows of `cols`).
pub(super) fn pack(qtype: QType, rows: usize, cols: usize, gguf: &[u8]) -> Vec<u8> {
    let (nb, bb) = (cols / 32, qtype.block_bytes());
    let mut out = vec![0u8; rows.div_ceil(ROWS) * nb * ROWS * bb];
    for r in 0..rows {
        for b in 0..nb {
            let src = &gguf[r * nb * bb + b * bb..][..bb];
            let dst = &mut out[((r / ROWS) * nb + b) * ROWS * bb..][..ROWS * bb];
            let i = r % ROWS;
            dst[2 * i..2 * i + 2].copy_from_slice(&src[..2]);
            for k in 0..(bb - 2) / 4 {
                for t in 0..4 {
                    let q = src[2 + 4 * k + t];
                    dst[16 + 32 * k + 4 * i + t] = if qtype == QType::Q8_0 { q ^ 0x80 } else { q };
                }
            }
        }
    }
    out
}

/// Row `r`'s GGUF bytes from packed `data`.
pub(super) fn unpack_row(qtype: QType, cols: usize, data: &[u8], r: usize, out: &mut Vec<u8>) {
    let (nb, bb) = (cols / 32, qtype.block_bytes());
    let i = r % ROWS;
    for b in 0..nb {
        let src = &data[((r / ROWS) * nb + b) * ROWS * bb..][..ROWS * bb];
        out.extend_from_slice(&src[2 * i..2 * i + 2]);
        for k in 0..(bb - 2) / 4 {
            for t in 0..4 {
                let q = src[16 + 32 * k + 4 * i + t];
                out.push(if qtype == QType::Q8_0 { q ^ 0x80 } else { q });
            }
        }
    }
}

/// One quantized row of x: its quants, block scales and block sums of the quants.
pub(super) type XRow<'a> = (&'a [i8], &'a [f32], &'a [i32]);

/// The eight rows of group `group` (its bytes: `blocks` group blocks) dotted with each of `J`
/// quantized rows of x; the vector kernels load (and unpack) each weight once for all `J`.
pub(super) fn group_dot<const J: usize>(
    kernel: Kernel,
    qtype: QType,
    group: &[u8],
    xs: [XRow; J],
) -> [[f32; ROWS]; J] {
    for (a, d, sums) in xs {
        let nb = d.len();
        assert!(
            group.len() == nb * group_block_bytes(qtype) && a.len() == 32 * nb && sums.len() == nb
        );
    }
    match kernel {
        // SAFETY: `kernel` is available on this CPU (`Kernel::available`), the lengths are checked.
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx512 => unsafe { x86::vnni::group(qtype, group, xs) },
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx2 => unsafe { x86::avx2::group(qtype, group, xs) },
        _ => xs.map(|(a, d, _)| portable(qtype, group, a, d)),
    }
}

fn portable(qtype: QType, group: &[u8], a: &[i8], d: &[f32]) -> [f32; ROWS] {
    let gb = group_block_bytes(qtype);
    let mut acc = [0.0f32; ROWS];
    for (b, (blk, a)) in group.chunks_exact(gb).zip(a.chunks_exact(32)).enumerate() {
        let mut s = [0i32; ROWS];
        for (r, s) in s.iter_mut().enumerate() {
            for k in 0..(qtype.block_bytes() - 2) / 4 {
                for t in 0..4 {
                    let q = blk[16 + 32 * k + 4 * r + t];
                    *s += match qtype {
                        QType::Q8_0 => (q ^ 0x80) as i8 as i32 * a[4 * k + t] as i32,
                        _ => {
                            ((q & 0x0F) as i32 - 8) * a[4 * k + t] as i32
                                + ((q >> 4) as i32 - 8) * a[16 + 4 * k + t] as i32
                        }
                    };
                }
            }
        }
        for (r, acc) in acc.iter_mut().enumerate() {
            *acc += f16_at(blk, 2 * r) * d[b] * s[r] as f32;
        }
    }
    acc
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// `acc + u . s` per i32 lane (four u8 times i8 products each), AVX2 only: valid while every
    /// pair of products fits an i16 (Q4_0's `u < 16`).
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn dot_avx2(acc: __m256i, u: __m256i, s: __m256i) -> __m256i {
        let p = _mm256_maddubs_epi16(u, s);
        _mm256_add_epi32(acc, _mm256_madd_epi16(p, _mm256_set1_epi16(1)))
    }

    #[inline]
    #[target_feature(enable = "avx2,avx512f,avx512vl,avx512vnni")]
    unsafe fn dot_vnni(acc: __m256i, u: __m256i, s: __m256i) -> __m256i {
        _mm256_dpbusd_epi32(acc, u, s)
    }

    /// Q8_0's `u = q + 128` times a: with VNNI the unsigned product (the shift of `128 sum(a)` is
    /// in the block's starting sum); on AVX2, whose pairs of `255 * 127` overflow an i16, the
    /// signed q back (`u ^ 0x80`) through the sign trick, and no shift.
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn q8_avx2(acc: __m256i, u: __m256i, a: __m256i) -> __m256i {
        let q = _mm256_xor_si256(u, _mm256_set1_epi8(-128));
        let p = _mm256_maddubs_epi16(_mm256_sign_epi8(q, q), _mm256_sign_epi8(a, q));
        _mm256_add_epi32(acc, _mm256_madd_epi16(p, _mm256_set1_epi16(1)))
    }

    macro_rules! kernels {
        ($name:ident, $features:literal, $dot:ident, $q8:ident, $q8_shift:literal) => {
            pub(super) mod $name {
                use super::super::super::QType;
                use super::super::{XRow, ROWS};
                use super::{$dot, $q8};
                use std::arch::x86_64::*;

                /// # Safety
                /// The CPU has the features enabled here; the lengths are as `group_dot` checks.
                #[target_feature(enable = $features)]
                pub unsafe fn group<const J: usize>(
                    qtype: QType,
                    group: &[u8],
                    xs: [XRow; J],
                ) -> [[f32; ROWS]; J] {
                    let g = group.as_ptr();
                    let acc = match qtype {
                        QType::Q8_0 => q8_0(g, &xs),
                        _ => q4_0(g, &xs),
                    };
                    let mut out = [[0.0f32; ROWS]; J];
                    for (o, acc) in out.iter_mut().zip(acc) {
                        _mm256_storeu_ps(o.as_mut_ptr(), acc);
                    }
                    out
                }

                /// Four quants of x, `a[at..at + 4]`, in every lane.
                #[inline]
                #[target_feature(enable = $features)]
                unsafe fn four(a: &[i8], at: usize) -> __m256i {
                    _mm256_set1_epi32((a.as_ptr().add(at) as *const i32).read_unaligned())
                }

                /// `acc + (the eight scales times x's) * s`.
                #[inline]
                #[target_feature(enable = $features)]
                unsafe fn scaled(acc: __m256, dw: __m256, d: f32, s: __m256i) -> __m256 {
                    let scale = _mm256_mul_ps(dw, _mm256_set1_ps(d));
                    _mm256_fmadd_ps(scale, _mm256_cvtepi32_ps(s), acc)
                }

                #[target_feature(enable = $features)]
                unsafe fn q8_0<const J: usize>(g: *const u8, xs: &[XRow; J]) -> [__m256; J] {
                    let mut acc = [_mm256_setzero_ps(); J];
                    for b in 0..xs[0].1.len() {
                        let blk = g.add(272 * b);
                        let mut s = xs.map(|(_, _, sums)| _mm256_set1_epi32($q8_shift * sums[b]));
                        for k in 0..8 {
                            let w = _mm256_loadu_si256(blk.add(16 + 32 * k) as *const __m256i);
                            for (s, (a, _, _)) in s.iter_mut().zip(xs) {
                                *s = $q8(*s, w, four(a, 32 * b + 4 * k));
                            }
                        }
                        let dw = _mm256_cvtph_ps(_mm_loadu_si128(blk as *const __m128i));
                        for j in 0..J {
                            acc[j] = scaled(acc[j], dw, xs[j].1[b], s[j]);
                        }
                    }
                    acc
                }

                #[target_feature(enable = $features)]
                unsafe fn q4_0<const J: usize>(g: *const u8, xs: &[XRow; J]) -> [__m256; J] {
                    let m4 = _mm256_set1_epi8(0x0F);
                    let mut acc = [_mm256_setzero_ps(); J];
                    for b in 0..xs[0].1.len() {
                        let blk = g.add(144 * b);
                        // Quants 0..16 against x less 8 each: `- 8 sum(a)`.
                        let mut s = xs.map(|(_, _, sums)| _mm256_set1_epi32(-8 * sums[b]));
                        for k in 0..4 {
                            let v = _mm256_loadu_si256(blk.add(16 + 32 * k) as *const __m256i);
                            let lo = _mm256_and_si256(v, m4);
                            let hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), m4);
                            for (s, (a, _, _)) in s.iter_mut().zip(xs) {
                                *s = $dot(*s, lo, four(a, 32 * b + 4 * k));
                                *s = $dot(*s, hi, four(a, 32 * b + 16 + 4 * k));
                            }
                        }
                        let dw = _mm256_cvtph_ps(_mm_loadu_si128(blk as *const __m128i));
                        for j in 0..J {
                            acc[j] = scaled(acc[j], dw, xs[j].1[b], s[j]);
                        }
                    }
                    acc
                }
            }
        };
    }

    #[inline]
    #[target_feature(enable = "avx2,avx512f,avx512vl,avx512vnni")]
    unsafe fn q8_vnni(acc: __m256i, u: __m256i, a: __m256i) -> __m256i {
        _mm256_dpbusd_epi32(acc, u, a)
    }

    kernels!(avx2, "avx2,fma,f16c", dot_avx2, q8_avx2, 0);
    kernels!(
        vnni,
        "avx2,fma,f16c,avx512f,avx512vl,avx512bw,avx512vnni",
        dot_vnni,
        q8_vnni,
        -128
    );
}
