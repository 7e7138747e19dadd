//! The dot product of one K-quant weight row with one quantized row of x, per block type and
//! kernel (llama.cpp's `ggml_vec_dot_{q4_K,q6_K}_q8_K`); Q8_0 and Q4_0 go eight rows at a time
//! ([`super::packed`]).
//!
//! Per block the sum of quant products is exact in integers; the block's scales multiply it in
//! f32. The kernels differ only in the order of the f32 sums. Unsigned quants times x's signed
//! ones (`vpmaddubsw`, or with AVX512-VNNI `vpdpbusd`): Q4_K subtracts its mins with Q8_K's block
//! sums, Q6_K its offset of 32 the same way.
use super::blocks::{f16_at, q6_k_quant, scale_min_k4, Acts, QK_K};
use super::{QMatrix, QType};

/// Which instructions the kernels use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kernel {
    /// AVX2 with AVX-512 VNNI on 256-bit registers (Zen 4 splits 512-bit ones in two anyway).
    Avx512,
    /// AVX2, FMA and F16C.
    Avx2,
    /// Plain Rust.
    Portable,
}

impl Kernel {
    /// Best first.
    pub const ALL: [Kernel; 3] = [Kernel::Avx512, Kernel::Avx2, Kernel::Portable];

    pub fn name(self) -> &'static str {
        match self {
            Kernel::Avx512 => "avx512",
            Kernel::Avx2 => "avx2",
            Kernel::Portable => "portable",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Kernel::ALL
            .into_iter()
            .find(|k| k.name().eq_ignore_ascii_case(s))
    }

    /// Whether this CPU runs the kernel.
    pub fn supported(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            let avx2 = has!("avx2") && has!("fma") && has!("f16c");
            match self {
                Kernel::Avx512 => {
                    avx2 && has!("avx512f")
                        && has!("avx512vl")
                        && has!("avx512bw")
                        && has!("avx512vnni")
                }
                Kernel::Avx2 => avx2,
                Kernel::Portable => true,
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            self == Kernel::Portable
        }
    }

    /// This kernel if the CPU has it, else the next best one it has.
    pub fn available(self) -> Kernel {
        Kernel::ALL
            .into_iter()
            .skip_while(|&k| k != self)
            .find(|k| k.supported())
            .unwrap_or(Kernel::Portable)
    }

    /// The kernel [`QMatrix::matmul`] uses: `SCRATCHLLM_QUANT_KERNEL=avx512|avx2|portable` (for
    /// tests and benchmarks; an unsupported one gives the next best), else the best; read once.
    pub fn chosen() -> Kernel {
        static CHOSEN: std::sync::OnceLock<Kernel> = std::sync::OnceLock::new();
        *CHOSEN.get_or_init(|| {
            std::env::var("SCRATCHLLM_QUANT_KERNEL")
                .ok()
                .and_then(|v| Kernel::parse(&v))
                .unwrap_or(Kernel::Avx512)
                .available()
        })
    }
}

/// Row `r` of `m` dotted with row `j` of `acts`; `kernel` must be [`Kernel::available`].
#[inline]
pub(super) fn row_dot(kernel: Kernel, m: &QMatrix, r: usize, acts: &Acts, j: usize) -> f32 {
    let w = &m.row(r);
    let (qs, d, bsums) = acts.row(j);
    match kernel {
        // SAFETY: `available` checked the CPU's features.
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx512 => unsafe { x86::vnni::dot(m.qtype, w, qs, d, bsums) },
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx2 => unsafe { x86::avx2::dot(m.qtype, w, qs, d, bsums) },
        _ => portable(m.qtype, w, qs, d, bsums),
    }
}

fn portable(qtype: QType, w: &[u8], qs: &[i8], d: &[f32], bsums: &[i16]) -> f32 {
    let bs = qtype.block_size();
    let blocks = w
        .chunks_exact(qtype.block_bytes())
        .zip(qs.chunks_exact(bs))
        .zip(d)
        .enumerate();
    let mut sum = 0.0f32;
    for (i, ((b, a), &da)) in blocks {
        sum += match qtype {
            QType::Q8_0 | QType::Q4_0 => unreachable!("Q8_0 and Q4_0 rows are packed"),
            QType::Q4K => q4_k_portable(b, a, da, &bsums[16 * i..16 * i + 16]),
            QType::Q6K => q6_k_portable(b, a, da, &bsums[16 * i..16 * i + 16]),
        };
    }
    sum
}

/// One Q4_K block: `d * sum(sc * q . a) - dmin * sum(m * sum(a))`, times x's scale.
fn q4_k_portable(b: &[u8], a: &[i8], da: f32, bsums: &[i16]) -> f32 {
    let (mut sumi, mut summ) = (0i32, 0i32);
    for s in 0..8 {
        let (sc, m) = scale_min_k4(s, &b[4..16]);
        let q = &b[16 + 32 * (s / 2)..16 + 32 * (s / 2) + 32];
        let shift = 4 * (s % 2);
        let dot: i32 = q
            .iter()
            .zip(&a[32 * s..32 * s + 32])
            .map(|(&q, &a)| ((q >> shift) & 0x0F) as i32 * a as i32)
            .sum();
        sumi += sc as i32 * dot;
        summ += m as i32 * (bsums[2 * s] as i32 + bsums[2 * s + 1] as i32);
    }
    da * f16_at(b, 0) * sumi as f32 - da * f16_at(b, 2) * summ as f32
}

/// One Q6_K block: `d * sum(sc * (q . a - 32 sum(a)))`, times x's scale.
fn q6_k_portable(b: &[u8], a: &[i8], da: f32, bsums: &[i16]) -> f32 {
    let mut sumi = 0i32;
    for g in 0..QK_K / 16 {
        let dot: i32 = (16 * g..16 * g + 16)
            .map(|i| q6_k_quant(b, i) * a[i] as i32)
            .sum();
        sumi += (b[192 + g] as i8) as i32 * (dot - 32 * bsums[g] as i32);
    }
    da * f16_at(b, 208) * sumi as f32
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn load(p: *const u8) -> __m256i {
        _mm256_loadu_si256(p as *const __m256i)
    }

    #[inline]
    #[target_feature(enable = "f16c")]
    unsafe fn f16_at(p: *const u8) -> f32 {
        let bits = u16::from_le_bytes([*p, *p.add(1)]);
        _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
    }

    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
    }

    /// `acc + pairs(p * s)`: i16 products summed in pairs into the i32 lanes.
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn madd_acc_avx2(acc: __m256i, p: __m256i, s: __m256i) -> __m256i {
        _mm256_add_epi32(acc, _mm256_madd_epi16(p, s))
    }

    #[inline]
    #[target_feature(enable = "avx2,avx512f,avx512vl,avx512vnni")]
    unsafe fn madd_acc_vnni(acc: __m256i, p: __m256i, s: __m256i) -> __m256i {
        _mm256_dpwssd_epi32(acc, p, s)
    }

    /// The K-quant kernels for one instruction set: `madd_acc` as above.
    macro_rules! kernels {
        ($name:ident, $features:literal, $madd_acc:ident) => {
            pub(super) mod $name {
                use super::super::super::blocks::scale_min_k4;
                use super::super::super::QType;
                use super::{f16_at, hsum, load, $madd_acc};
                use std::arch::x86_64::*;

                /// # Safety
                /// The CPU has the features enabled here; the slices are one row's weights and
                /// one quantized row of x.
                #[target_feature(enable = $features)]
                pub unsafe fn dot(
                    qtype: QType,
                    w: &[u8],
                    qs: &[i8],
                    d: &[f32],
                    bsums: &[i16],
                ) -> f32 {
                    let nb = w.len() / qtype.block_bytes();
                    assert!(qs.len() >= nb * qtype.block_size() && d.len() >= nb);
                    let (w, a) = (w.as_ptr(), qs.as_ptr() as *const u8);
                    match qtype {
                        QType::Q8_0 | QType::Q4_0 => unreachable!("Q8_0 and Q4_0 rows are packed"),
                        QType::Q4K => {
                            assert!(bsums.len() >= 16 * nb);
                            q4_k(w, a, d, bsums, nb)
                        }
                        QType::Q6K => {
                            assert!(bsums.len() >= 16 * nb);
                            q6_k(w, a, d, bsums, nb)
                        }
                    }
                }

                #[target_feature(enable = $features)]
                unsafe fn q4_k(
                    w: *const u8,
                    a: *const u8,
                    d: &[f32],
                    bsums: &[i16],
                    nb: usize,
                ) -> f32 {
                    let m4 = _mm256_set1_epi8(0x0F);
                    let (mut acc, mut acc_min) = (_mm256_setzero_ps(), 0.0f32);
                    for b in 0..nb {
                        let (blk, a) = (w.add(144 * b), a.add(256 * b));
                        let scales = std::slice::from_raw_parts(blk.add(4), 12);
                        let bs = &bsums[16 * b..16 * b + 16];
                        let (mut sumi, mut summ) = (_mm256_setzero_si256(), 0i32);
                        for k in 0..4 {
                            let (s1, m1) = scale_min_k4(2 * k, scales);
                            let (s2, m2) = scale_min_k4(2 * k + 1, scales);
                            summ += m1 as i32 * (bs[4 * k] as i32 + bs[4 * k + 1] as i32)
                                + m2 as i32 * (bs[4 * k + 2] as i32 + bs[4 * k + 3] as i32);
                            // Sub-block 2k in the low nibbles of 32 bytes, 2k + 1 in the high.
                            let q = load(blk.add(16 + 32 * k));
                            let lo = _mm256_and_si256(q, m4);
                            let hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), m4);
                            let p0 = _mm256_maddubs_epi16(lo, load(a.add(64 * k)));
                            let p1 = _mm256_maddubs_epi16(hi, load(a.add(64 * k + 32)));
                            sumi = $madd_acc(sumi, p0, _mm256_set1_epi16(s1 as i16));
                            sumi = $madd_acc(sumi, p1, _mm256_set1_epi16(s2 as i16));
                        }
                        let dd = d[b] * f16_at(blk);
                        acc = _mm256_fmadd_ps(_mm256_set1_ps(dd), _mm256_cvtepi32_ps(sumi), acc);
                        acc_min += d[b] * f16_at(blk.add(2)) * summ as f32;
                    }
                    hsum(acc) - acc_min
                }

                #[target_feature(enable = $features)]
                unsafe fn q6_k(
                    w: *const u8,
                    a: *const u8,
                    d: &[f32],
                    bsums: &[i16],
                    nb: usize,
                ) -> f32 {
                    let m4 = _mm256_set1_epi8(0x0F);
                    let (m3, m12, m48) = (
                        _mm256_set1_epi8(0x03),
                        _mm256_set1_epi8(0x0C),
                        _mm256_set1_epi8(0x30),
                    );
                    let mut acc = _mm256_setzero_ps();
                    for b in 0..nb {
                        let (blk, a) = (w.add(210 * b), a.add(256 * b));
                        let sc = std::slice::from_raw_parts(blk.add(192) as *const i8, 16);
                        let bs = &bsums[16 * b..16 * b + 16];
                        // The offset of 32 on every quant, through x's block sums.
                        let offset: i32 = (0..16).map(|g| sc[g] as i32 * bs[g] as i32).sum();
                        let mut sumi = _mm256_setr_epi32(-32 * offset, 0, 0, 0, 0, 0, 0, 0);
                        for h in 0..2 {
                            let (ql, qh) = (blk.add(64 * h), load(blk.add(128 + 32 * h)));
                            let (ql0, ql1) = (load(ql), load(ql.add(32)));
                            // Quants 0..64 of elements 32k + l of this half, k = 0..4.
                            let q = [
                                _mm256_or_si256(
                                    _mm256_and_si256(ql0, m4),
                                    _mm256_slli_epi16(_mm256_and_si256(qh, m3), 4),
                                ),
                                _mm256_or_si256(
                                    _mm256_and_si256(ql1, m4),
                                    _mm256_slli_epi16(_mm256_and_si256(qh, m12), 2),
                                ),
                                _mm256_or_si256(
                                    _mm256_and_si256(_mm256_srli_epi16(ql0, 4), m4),
                                    _mm256_and_si256(qh, m48),
                                ),
                                _mm256_or_si256(
                                    _mm256_and_si256(_mm256_srli_epi16(ql1, 4), m4),
                                    _mm256_and_si256(_mm256_srli_epi16(qh, 2), m48),
                                ),
                            ];
                            for (k, &q) in q.iter().enumerate() {
                                let p = _mm256_maddubs_epi16(q, load(a.add(128 * h + 32 * k)));
                                let g = 8 * h + 2 * k;
                                let s = _mm256_set_m128i(
                                    _mm_set1_epi16(sc[g + 1] as i16),
                                    _mm_set1_epi16(sc[g] as i16),
                                );
                                sumi = $madd_acc(sumi, p, s);
                            }
                        }
                        let dd = d[b] * f16_at(blk.add(208));
                        acc = _mm256_fmadd_ps(_mm256_set1_ps(dd), _mm256_cvtepi32_ps(sumi), acc);
                    }
                    hsum(acc)
                }
            }
        };
    }

    kernels!(avx2, "avx2,fma,f16c", madd_acc_avx2);
    kernels!(
        vnni,
        "avx2,fma,f16c,avx512f,avx512vl,avx512bw,avx512vnni",
        madd_acc_vnni
    );
}
