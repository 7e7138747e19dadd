//! Dot products of one row of W (f32 or bf16) with up to four rows of x at once: the kernel of
//! [`super::linear_rows`], where W is streamed from memory once per step and every sequence
//! decoded in that step reads it.
//!
//! A row's arithmetic is the same whichever rows are computed beside it, so that a sequence decoded
//! in a batch gets exactly the logits it gets alone: 32 lanes, lane `l` accumulating
//! `w[k] * x[k]` for the `k = l (mod 32)` of each whole chunk of 32 in order (a fused multiply-add
//! in the vector kernels; a multiply and an add in the portable one), the last partial chunk as one
//! more chunk padded with zeros, then the lanes folded in halves: `s[i] = a[i] + a[i + 16]`, then
//! 8, 4, 2, 1. The AVX-512 kernel holds a row's lanes in two registers and does up to four rows per
//! pass over W (W's chunk loaded once for all); the AVX2 kernel holds them in four and does two.
use super::simd_level;
use half::bf16;
use std::ops::Range;

/// Lanes per dot product.
const L: usize = 32;

/// One row of W.
#[derive(Clone, Copy)]
pub(crate) enum WRow<'a> {
    F32(&'a [f32]),
    Bf16(&'a [bf16]),
}

impl WRow<'_> {
    fn len(&self) -> usize {
        match self {
            WRow::F32(w) => w.len(),
            WRow::Bf16(w) => w.len(),
        }
    }

    fn get(&self, i: usize) -> f32 {
        match self {
            // bf16 is the top half of an f32: widening is exact.
            WRow::F32(w) => w[i],
            WRow::Bf16(w) => f32::from_bits(u32::from(w[i].to_bits()) << 16),
        }
    }
}

/// Addresses (in bytes) of memory the caller will read next: the vector kernels ask for their cache
/// lines to be fetched into L2, spread over their loop, so that the next rows of W arrive while
/// these are computed. A hint only: it changes no value. `0..0` for none.
pub(crate) type Prefetch = Range<usize>;

/// `[w . x for x in xs]` (every row of x as long as w).
pub(crate) fn dots<const R: usize>(w: WRow, xs: [&[f32]; R], pf: Prefetch) -> [f32; R] {
    let n = w.len();
    assert!(
        xs.iter().all(|x| x.len() == n),
        "dots: rows of unequal length"
    );
    #[cfg(target_arch = "x86_64")]
    {
        if simd_level() >= 4 {
            return dots2_512([w], xs, pf)[0];
        }
        if simd_level() >= 3 {
            let wt = tail_of(w, n / L * L);
            let mut out = [0.0; R];
            let chunks = R.div_ceil(2).max(1);
            for (i, pair) in xs.chunks(2).enumerate() {
                let out = &mut out[2 * i..2 * i + pair.len()];
                let part = pf.len() / chunks;
                let pf = pf.start + i * part..pf.start + (i + 1) * part;
                // SAFETY: the CPU has AVX2 and FMA (checked at run time); lengths checked.
                unsafe {
                    match (pair, w) {
                        (&[a, b], WRow::F32(w)) => {
                            out.copy_from_slice(&x86::dots256(w, [a, b], wt, pf))
                        }
                        (&[a, b], WRow::Bf16(w)) => {
                            out.copy_from_slice(&x86::dots256(w, [a, b], wt, pf))
                        }
                        (&[a], WRow::F32(w)) => out.copy_from_slice(&x86::dots256(w, [a], wt, pf)),
                        (&[a], WRow::Bf16(w)) => out.copy_from_slice(&x86::dots256(w, [a], wt, pf)),
                        _ => unreachable!("chunks of two"),
                    }
                }
            }
            return out;
        }
    }
    let _ = pf;
    portable(w, xs)
}

/// [`dots`] for two rows of W at once (each x chunk loaded once for both), where the CPU has
/// AVX-512; the same values as two calls of [`dots`].
pub(crate) fn dots2<const R: usize>(w: [WRow; 2], xs: [&[f32]; R], pf: Prefetch) -> [[f32; R]; 2] {
    assert!(
        w[0].len() == w[1].len() && xs.iter().all(|x| x.len() == w[0].len()),
        "dots2: rows of unequal length"
    );
    #[cfg(target_arch = "x86_64")]
    if simd_level() >= 4 {
        return dots2_512(w, xs, pf);
    }
    let half = pf.start + pf.len() / 2;
    [dots(w[0], xs, pf.start..half), dots(w[1], xs, half..pf.end)]
}

/// The AVX-512 kernel for `O` rows of W of one type (f32, or bf16 for both).
#[cfg(target_arch = "x86_64")]
fn dots2_512<const O: usize, const R: usize>(
    w: [WRow; O],
    xs: [&[f32]; R],
    pf: Prefetch,
) -> [[f32; R]; O] {
    let full = w[0].len() / L * L;
    let tail = |o: usize| tail_of(w[o], full);
    // SAFETY (both): the CPU has AVX-512 (the caller checked); the lengths are checked.
    if w.iter().all(|r| matches!(r, WRow::F32(_))) {
        let ws = std::array::from_fn(|o| match w[o] {
            WRow::F32(v) => v,
            WRow::Bf16(_) => unreachable!("checked: every row is f32"),
        });
        return unsafe { x86::dots512(ws, xs, tail, pf) };
    }
    if w.iter().all(|r| matches!(r, WRow::Bf16(_))) {
        let ws = std::array::from_fn(|o| match w[o] {
            WRow::Bf16(v) => v,
            WRow::F32(_) => unreachable!("checked: every row is bf16"),
        });
        return unsafe { x86::dots512(ws, xs, tail, pf) };
    }
    std::array::from_fn(|o| portable(w[o], xs))
}

/// The plain loop (and the kernel on CPUs without AVX2).
pub(crate) fn portable<const R: usize>(w: WRow, xs: [&[f32]; R]) -> [f32; R] {
    let n = w.len();
    let mut out = [0.0f32; R];
    for (x, out) in xs.iter().zip(&mut out) {
        let mut acc = [0.0f32; L];
        for k in 0..n {
            acc[k % L] += w.get(k) * x[k];
        }
        *out = fold(acc);
    }
    out
}

/// The lanes folded in halves: 32 -> 16 -> 8 -> 4 -> 2 -> 1.
fn fold(mut a: [f32; L]) -> f32 {
    let mut h = L / 2;
    while h > 0 {
        for i in 0..h {
            a[i] += a[i + h];
        }
        h /= 2;
    }
    a[0]
}

/// The last `n % 32` values of a row, padded with zeros to a whole chunk.
fn tail_of(row: WRow, full: usize) -> [f32; L] {
    let mut t = [0.0f32; L];
    for (i, t) in t.iter_mut().enumerate().take(row.len() - full) {
        *t = row.get(full + i);
    }
    t
}

fn tail_x(x: &[f32], full: usize) -> [f32; L] {
    let mut t = [0.0f32; L];
    t[..x.len() - full].copy_from_slice(&x[full..]);
    t
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{tail_x, Prefetch, L};
    use std::arch::x86_64::*;

    /// Spreads the prefetches of `pf` over `steps` steps: step `i` calls [`Spread::at`].
    pub(super) struct Spread {
        next: usize,
        end: usize,
        per: usize,
    }

    impl Spread {
        pub(super) fn new(pf: Prefetch, steps: usize) -> Self {
            let lines = pf.len().div_ceil(64);
            Spread {
                next: pf.start & !63,
                end: pf.end,
                per: lines.div_ceil(steps.max(1)),
            }
        }

        /// This step's share of the lines.
        #[inline(always)]
        pub(super) fn step(&mut self) {
            for _ in 0..self.per {
                if self.next >= self.end {
                    return;
                }
                // SAFETY: a prefetch never faults, whatever the address.
                unsafe { _mm_prefetch(self.next as *const i8, _MM_HINT_T1) };
                self.next += 64;
            }
        }
    }

    /// A type W is stored in, widened to f32 by the vector kernels.
    pub(super) trait Elem: Copy {
        /// 16 values at `p` as f32.
        unsafe fn w16(p: *const Self) -> __m512;
        /// 8 values at `p` as f32.
        unsafe fn w8(p: *const Self) -> __m256;
    }

    impl Elem for f32 {
        #[inline(always)]
        unsafe fn w16(p: *const f32) -> __m512 {
            _mm512_loadu_ps(p)
        }
        #[inline(always)]
        unsafe fn w8(p: *const f32) -> __m256 {
            _mm256_loadu_ps(p)
        }
    }

    impl Elem for half::bf16 {
        // bf16 is the top half of an f32: widening is exact.
        #[inline(always)]
        unsafe fn w16(p: *const half::bf16) -> __m512 {
            let h = _mm256_loadu_si256(p as *const __m256i);
            _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16))
        }
        #[inline(always)]
        unsafe fn w8(p: *const half::bf16) -> __m256 {
            let h = _mm_loadu_si128(p as *const __m128i);
            _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16))
        }
    }

    /// # Safety
    /// The CPU has AVX-512 F, BW, VL, DQ and FMA; every row of `xs` is as long as each of `ws`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")]
    pub(super) unsafe fn dots512<T: Elem, const O: usize, const R: usize>(
        ws: [&[T]; O],
        xs: [&[f32]; R],
        tail: impl Fn(usize) -> [f32; L],
        pf: Prefetch,
    ) -> [[f32; R]; O] {
        let n = ws[0].len();
        let full = n / L * L;
        let mut spread = Spread::new(pf, full / L);
        let mut a0 = [[_mm512_setzero_ps(); R]; O];
        let mut a1 = [[_mm512_setzero_ps(); R]; O];
        let mut k = 0;
        while k < full {
            let w0: [__m512; O] = std::array::from_fn(|o| T::w16(ws[o].as_ptr().add(k)));
            let w1: [__m512; O] = std::array::from_fn(|o| T::w16(ws[o].as_ptr().add(k + 16)));
            spread.step();
            for r in 0..R {
                let x = xs[r].as_ptr().add(k);
                let (x0, x1) = (_mm512_loadu_ps(x), _mm512_loadu_ps(x.add(16)));
                for o in 0..O {
                    a0[o][r] = _mm512_fmadd_ps(w0[o], x0, a0[o][r]);
                    a1[o][r] = _mm512_fmadd_ps(w1[o], x1, a1[o][r]);
                }
            }
            k += L;
        }
        if full < n {
            let xt: [[f32; L]; R] = std::array::from_fn(|r| tail_x(xs[r], full));
            for o in 0..O {
                let wt = tail(o);
                let (w0, w1) = (
                    _mm512_loadu_ps(wt.as_ptr()),
                    _mm512_loadu_ps(wt.as_ptr().add(16)),
                );
                for r in 0..R {
                    a0[o][r] = _mm512_fmadd_ps(w0, _mm512_loadu_ps(xt[r].as_ptr()), a0[o][r]);
                    a1[o][r] =
                        _mm512_fmadd_ps(w1, _mm512_loadu_ps(xt[r].as_ptr().add(16)), a1[o][r]);
                }
            }
        }
        let mut out = [[0.0f32; R]; O];
        for o in 0..O {
            for r in 0..R {
                let s16 = _mm512_add_ps(a0[o][r], a1[o][r]);
                let s8 = _mm256_add_ps(
                    _mm512_castps512_ps256(s16),
                    _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(s16), 1)),
                );
                out[o][r] = fold8(s8);
            }
        }
        out
    }

    /// # Safety
    /// The CPU has AVX2 and FMA; every row of `xs` is as long as `w`.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn dots256<T: Elem, const R: usize>(
        w: &[T],
        xs: [&[f32]; R],
        wt: [f32; L],
        pf: Prefetch,
    ) -> [f32; R] {
        let n = w.len();
        let full = n / L * L;
        let mut spread = Spread::new(pf, full / L);
        let mut a = [[_mm256_setzero_ps(); 4]; R];
        let mut k = 0;
        while k < full {
            let p = w.as_ptr().add(k);
            let ws = [
                T::w8(p),
                T::w8(p.add(8)),
                T::w8(p.add(16)),
                T::w8(p.add(24)),
            ];
            spread.step();
            step256(&mut a, ws, std::array::from_fn(|r| xs[r].as_ptr().add(k)));
            k += L;
        }
        if full < n {
            let ws = std::array::from_fn(|j| _mm256_loadu_ps(wt.as_ptr().add(8 * j)));
            let xt: [[f32; L]; R] = std::array::from_fn(|r| tail_x(xs[r], full));
            step256(&mut a, ws, std::array::from_fn(|r| xt[r].as_ptr()));
        }
        let mut out = [0.0f32; R];
        for r in 0..R {
            // Lanes 0..8, 8..16, 16..24, 24..32 in a[r][0..4]: s[i] = a[i] + a[i + 16], then 8.
            let s16 = [
                _mm256_add_ps(a[r][0], a[r][2]),
                _mm256_add_ps(a[r][1], a[r][3]),
            ];
            out[r] = fold8(_mm256_add_ps(s16[0], s16[1]));
        }
        out
    }

    /// One chunk of 32: `a[r][j] += ws[j] * x[r][8j..8j + 8]`.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn step256<const R: usize>(
        a: &mut [[__m256; 4]; R],
        ws: [__m256; 4],
        x: [*const f32; R],
    ) {
        for r in 0..R {
            for j in 0..4 {
                a[r][j] = _mm256_fmadd_ps(ws[j], _mm256_loadu_ps(x[r].add(8 * j)), a[r][j]);
            }
        }
    }

    /// 8 lanes folded in halves: 8 -> 4 -> 2 -> 1.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn fold8(s8: __m256) -> f32 {
        let s4 = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps(s8, 1));
        let s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
        let s1 = _mm_add_ss(s2, _mm_movehdup_ps(s2));
        _mm_cvtss_f32(s1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| (((i as u32).wrapping_mul(2_654_435_761) ^ seed) % 2001) as f32 / 1000.0 - 1.0)
            .collect()
    }

    #[test]
    fn a_row_is_the_same_beside_any_rows_and_close_to_the_exact_sum() {
        for n in [1, 31, 32, 33, 64, 100, 768] {
            let w = row(n, 1);
            let wb: Vec<bf16> = w.iter().map(|&v| bf16::from_f32(v)).collect();
            let v = row(n, 2);
            let vb: Vec<bf16> = v.iter().map(|&v| bf16::from_f32(v)).collect();
            let xs: Vec<Vec<f32>> = (0..4).map(|s| row(n, 10 + s)).collect();
            for (wr, vr) in [
                (WRow::F32(&w), WRow::F32(&v)),
                (WRow::Bf16(&wb), WRow::Bf16(&vb)),
            ] {
                let four = dots(wr, [&xs[0], &xs[1], &xs[2], &xs[3]], 0..0);
                let two = dots(wr, [&xs[2], &xs[3]], 0..0);
                for (r, x) in xs.iter().enumerate() {
                    let one = dots(wr, [x], 0..0)[0];
                    assert_eq!(one.to_bits(), four[r].to_bits(), "n {n} row {r} of four");
                    let exact: f64 = (0..n).map(|k| wr.get(k) as f64 * x[k] as f64).sum();
                    assert!(
                        (one as f64 - exact).abs() <= 1e-5 * (1.0 + exact.abs()),
                        "n {n}: {one} vs {exact}"
                    );
                    let plain = portable(wr, [x])[0];
                    assert!(
                        (plain - one).abs() <= 1e-5 * (1.0 + one.abs()),
                        "n {n}: {plain} vs {one}"
                    );
                }
                // Prefetching (here the other row of W) changes nothing.
                let addr = |r: WRow| match r {
                    WRow::F32(v) => v.as_ptr_range().start as usize..v.as_ptr_range().end as usize,
                    WRow::Bf16(v) => v.as_ptr_range().start as usize..v.as_ptr_range().end as usize,
                };
                let fetched = dots(wr, [&xs[0], &xs[1], &xs[2], &xs[3]], addr(vr));
                assert_eq!(fetched.map(f32::to_bits), four.map(f32::to_bits));
                let fetched = dots2([wr, vr], [&xs[0], &xs[1], &xs[2], &xs[3]], addr(vr));
                assert_eq!(fetched[0].map(f32::to_bits), four.map(f32::to_bits));
                assert_eq!(two[0].to_bits(), four[2].to_bits());
                assert_eq!(two[1].to_bits(), four[3].to_bits());
                // Two rows of W at once: each as alone.
                let pair = dots2([wr, vr], [&xs[1], &xs[2], &xs[3], &xs[0]], 0..0);
                assert_eq!(pair[0][3].to_bits(), four[0].to_bits());
                let other = dots(vr, [&xs[1]], 0..0)[0];
                assert_eq!(pair[1][0].to_bits(), other.to_bits());
                let single = dots2([wr, vr], [&xs[2]], 0..0);
                assert_eq!(single[0][0].to_bits(), four[2].to_bits());
            }
        }
    }
}
