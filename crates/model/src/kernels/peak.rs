//! The machine's arithmetic peak, measured (`scratchllm bench peak`): f32 fused multiply-adds and
//! bf16 dot products per second on the threads in use, each thread running independent chains of
//! the widest instruction its kernels use on registers alone (no memory traffic). It is the
//! denominator of training's model FLOPs utilization, as the bandwidth figure in docs/ is the
//! ceiling of decoding.
//!
//! A chain is `acc = acc * m + c` (f32) or `acc += a . b` (bf16 pairs): 12 chains hide the
//! instruction's latency (4 cycles) on two pipes. FLOPs count a multiply-add as two.
use super::simd_level;
use std::time::Instant;

/// Independent chains per thread.
const CHAINS: usize = 12;

/// A measured peak.
#[derive(Clone, Copy, Debug)]
pub struct Peak {
    /// Billions of floating-point operations per second, all threads together.
    pub gflops: f64,
    /// The instructions measured: `avx512`, `avx2` or `portable` (f32), `avx512bf16` (bf16).
    pub kernel: &'static str,
    pub threads: usize,
}

/// The f32 peak with the widest vectors this CPU's kernels use (see `SCRATCHLLM_SIMD`).
pub fn f32_peak(threads: usize, rounds: u64) -> Peak {
    let (kernel, flops_per_round): (&'static str, f64) = match simd_level() {
        4 => ("avx512", (CHAINS * 16 * 2) as f64),
        3 => ("avx2", (CHAINS * 8 * 2) as f64),
        _ => ("portable", (CHAINS * 8 * 2) as f64),
    };
    let secs = timed(threads, || match simd_level() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU has AVX-512 F (checked by `simd_level`).
        4 => unsafe { x86::fma512(rounds) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU has AVX2 and FMA (checked by `simd_level`).
        3 => unsafe { x86::fma256(rounds) },
        _ => portable(rounds),
    });
    Peak {
        gflops: flops_per_round * rounds as f64 * threads as f64 / secs / 1e9,
        kernel,
        threads,
    }
}

/// The bf16 dot-product peak (`vdpbf16ps`: 16 lanes, each adding two products), where the CPU has
/// it (see [`super::has_bf16_dot`]).
pub fn bf16_peak(threads: usize, rounds: u64) -> Option<Peak> {
    if !super::has_bf16_dot() {
        return None;
    }
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: the CPU has AVX-512 F and BF16 (checked above).
        let secs = timed(threads, || unsafe { x86::dot_bf16(rounds) });
        Some(Peak {
            gflops: (CHAINS * 16 * 4) as f64 * rounds as f64 * threads as f64 / secs / 1e9,
            kernel: "avx512bf16",
            threads,
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    None
}

/// The best of `repeat` measurements of the f32 and bf16 peaks (see [`f32_peak`], [`bf16_peak`]).
pub fn measure(threads: usize, rounds: u64, repeat: usize) -> (Peak, Option<Peak>) {
    let better = |a: Peak, b: Peak| if b.gflops > a.gflops { b } else { a };
    let mut f = f32_peak(threads, rounds);
    let mut b = bf16_peak(threads, rounds);
    for _ in 1..repeat {
        f = better(f, f32_peak(threads, rounds));
        b = b.zip(bf16_peak(threads, rounds)).map(|(x, y)| better(x, y));
    }
    (f, b)
}

/// The peak that training's products run against (bf16 where autocast is on and the CPU has the
/// bf16 dot product, else f32) on the threads in use, measured briefly once per process (about
/// 40 ms) for the model FLOPs utilization logged during training runs.
pub fn training_peak(bf16: bool) -> Peak {
    static PEAKS: std::sync::OnceLock<(Peak, Option<Peak>)> = std::sync::OnceLock::new();
    let (f32s, bf16s) =
        PEAKS.get_or_init(|| measure(candle_core::utils::get_num_threads(), 5_000_000, 2));
    match bf16s {
        Some(b) if bf16 => *b,
        _ => *f32s,
    }
}

/// Seconds for `threads` threads to run `f` once each, started together.
fn timed(threads: usize, f: impl Fn() -> f32 + Sync) -> f64 {
    let threads = threads.max(1);
    let start = std::sync::Barrier::new(threads + 1);
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    start.wait();
                    std::hint::black_box(f())
                })
            })
            .collect();
        start.wait();
        let t = Instant::now();
        for w in workers {
            let _ = w.join();
        }
        t.elapsed().as_secs_f64()
    })
}

/// What the compiler makes of plain multiply-adds on arrays of 8 (SSE2 at the baseline target).
fn portable(rounds: u64) -> f32 {
    let mut acc = [[1.0f32; 8]; CHAINS];
    let (m, c) = std::hint::black_box((0.999_999f32, 1e-6f32));
    for _ in 0..rounds {
        for a in acc.iter_mut() {
            for x in a.iter_mut() {
                *x = *x * m + c;
            }
        }
    }
    acc.iter().flatten().sum()
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::CHAINS;
    use std::arch::x86_64::*;

    /// # Safety
    /// The CPU has AVX-512 F.
    #[target_feature(enable = "avx512f,fma")]
    pub(super) unsafe fn fma512(rounds: u64) -> f32 {
        let (m, c) = std::hint::black_box((0.999_999f32, 1e-6f32));
        let (m, c) = (_mm512_set1_ps(m), _mm512_set1_ps(c));
        let mut acc = [_mm512_set1_ps(1.0); CHAINS];
        for _ in 0..rounds {
            for a in acc.iter_mut() {
                *a = _mm512_fmadd_ps(*a, m, c);
            }
        }
        acc.iter().map(|&a| _mm512_reduce_add_ps(a)).sum()
    }

    /// # Safety
    /// The CPU has AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn fma256(rounds: u64) -> f32 {
        let (m, c) = std::hint::black_box((0.999_999f32, 1e-6f32));
        let (m, c) = (_mm256_set1_ps(m), _mm256_set1_ps(c));
        let mut acc = [_mm256_set1_ps(1.0); CHAINS];
        for _ in 0..rounds {
            for a in acc.iter_mut() {
                *a = _mm256_fmadd_ps(*a, m, c);
            }
        }
        let mut out = [0.0f32; 8];
        let mut total = 0.0;
        for a in acc {
            _mm256_storeu_ps(out.as_mut_ptr(), a);
            total += out.iter().sum::<f32>();
        }
        total
    }

    /// # Safety
    /// The CPU has AVX-512 F and BF16.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub(super) unsafe fn dot_bf16(rounds: u64) -> f32 {
        // bf16 pairs of small values: the sums grow slowly and stay finite.
        let (a, b) = std::hint::black_box((1e-3f32, 1e-3f32));
        let a: __m512bh = _mm512_cvtne2ps_pbh(_mm512_set1_ps(a), _mm512_set1_ps(a));
        let b: __m512bh = _mm512_cvtne2ps_pbh(_mm512_set1_ps(b), _mm512_set1_ps(b));
        let mut acc = [_mm512_setzero_ps(); CHAINS];
        for _ in 0..rounds {
            for c in acc.iter_mut() {
                *c = _mm512_dpbf16_ps(*c, a, b);
            }
        }
        acc.iter().map(|&a| _mm512_reduce_add_ps(a)).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_peaks_are_positive_and_say_what_they_measured() {
        let p = f32_peak(1, 10_000);
        assert!(p.gflops.is_finite() && p.gflops > 0.0, "{p:?}");
        assert!(["avx512", "avx2", "portable"].contains(&p.kernel));
        assert_eq!(super::super::has_bf16_dot(), bf16_peak(1, 10_000).is_some());
        // The portable chains compute what they say: 1 -> 1 * m + c, 12 x 8 of them.
        let want: f32 = {
            let mut x = 1.0f32;
            for _ in 0..3 {
                x = x * 0.999_999 + 1e-6;
            }
            x * 96.0
        };
        assert!((portable(3) - want).abs() < 1e-3);
    }
}
