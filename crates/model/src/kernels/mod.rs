//! Fused CPU kernels for training and inference.
//!
//! Each kernel is a candle custom op with its backward, and each public function here picks it for
//! f32 tensors on the CPU and otherwise falls back to the plain candle composition in
//! [`reference`] (which is also what CUDA and Metal builds run, and what the tests compare against).
//! [`set_fused`] turns the fused paths off for the current thread (for comparisons and debugging);
//! the environment variable `SCRATCHLLM_KERNELS=reference` turns them off everywhere.
//!
//! Work is split over candle's own thread pool (`CANDLE_NUM_THREADS`, else `RAYON_NUM_THREADS`, else
//! the physical cores), the pool that candle's element-wise ops use, so no second pool competes with
//! it. Inner loops are written for auto-vectorization and compiled three times (AVX-512, AVX2+FMA,
//! baseline), chosen at run time. Element-wise results do not depend on the vector width: no fused
//! multiply-adds, and sums run over a fixed number of lanes in a fixed order.
mod adamw;
mod alloc;
mod attention;
mod bias;
mod cross_entropy;
mod dots;
mod dropout;
mod flash;
mod frozen;
mod gelu;
mod glu;
mod layer_norm;
mod linear;
mod matmul_bf16;
pub mod peak;
pub mod reference;
mod rms_norm;
mod rope;
mod softmax;

pub use adamw::{adamw_step, AdamWStep};
pub use alloc::keep_freed_memory;
pub use attention::{cached_attention, cached_attention_gqa};
pub use bias::add_bias;
pub use cross_entropy::{cross_entropy, linear_cross_entropy};
pub use dropout::{add_dropout, dropout, Mask};
pub use flash::causal_attention;
pub use frozen::matmul;
pub use gelu::gelu;
pub use glu::{geglu, swiglu};
pub use layer_norm::layer_norm;
pub use linear::{linear_rows, MAX_ROWS};
pub use matmul_bf16::{has_bf16_dot, matmul_bf16};
pub use rms_norm::rms_norm;
pub use rope::rope;
pub use softmax::{causal_softmax, causal_softmax_window};

use candle_core::{bail, CpuStorage, DType, Layout, Result, Tensor};
use std::cell::Cell;
use std::ops::Range;

thread_local! {
    static FUSED: Cell<bool> = Cell::new(
        std::env::var("SCRATCHLLM_KERNELS").map_or(true, |v| v != "reference")
    );
}

/// The logical CPUs this process may run on (its CPU affinity and cgroup quota counted), at least 1.
pub fn logical_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// A requested thread count, capped at the logical CPUs and at least 1. More threads than CPUs
/// only adds waiting: each op on candle's barrier pool ends when all its threads have, so with
/// more threads than CPUs it waits for descheduled ones (`--threads 1000` ran 50 times slower).
pub fn capped_threads(requested: usize) -> usize {
    requested.clamp(1, logical_cpus())
}

/// Sets the number of threads for candle's ops and the kernels (`None`: keep the environment's
/// `CANDLE_NUM_THREADS` / `RAYON_NUM_THREADS`, else the physical cores; a count is capped by
/// [`capped_threads`]). Call first thing in `main`, before any tensor work and before other threads
/// start. The count is fixed in the environment either way: candle otherwise reads
/// `/proc/cpuinfo` again on every matrix product.
pub fn set_threads(threads: Option<usize>) {
    let from_env = ["CANDLE_NUM_THREADS", "RAYON_NUM_THREADS"]
        .iter()
        .any(|v| std::env::var(v).is_ok_and(|s| s.parse::<usize>().is_ok_and(|n| n > 0)));
    let n = match threads {
        Some(n) => capped_threads(n),
        None if from_env => return,
        None => candle_core::utils::get_num_threads(),
    };
    // Only called at start-up, before threads that read the environment exist.
    std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    std::env::set_var("CANDLE_NUM_THREADS", n.to_string());
}

thread_local! {
    static AUTOCAST_BF16: Cell<bool> = const { Cell::new(false) };
}

/// Makes the linear layers of models run on this thread multiply in bf16 (f32 accumulation, f32
/// weights and activations kept), as PyTorch's `autocast(dtype=torch.bfloat16)` does.
pub fn set_autocast_bf16(on: bool) {
    AUTOCAST_BF16.with(|f| f.set(on));
}

/// bf16 autocast on this thread while it lives; the previous setting comes back on drop.
pub struct Autocast {
    previous: bool,
}

impl Autocast {
    pub fn bf16(on: bool) -> Self {
        let previous = autocast_bf16();
        set_autocast_bf16(on);
        Autocast { previous }
    }
}

impl Drop for Autocast {
    fn drop(&mut self) {
        set_autocast_bf16(self.previous);
    }
}

/// Whether linear layers on this thread multiply in bf16.
pub fn autocast_bf16() -> bool {
    AUTOCAST_BF16.with(|f| f.get())
}

/// Turns the fused kernels on or off for ops built on this thread from now on.
pub fn set_fused(on: bool) {
    FUSED.with(|f| f.set(on));
}

/// Whether ops built on this thread use the fused kernels.
pub fn fused() -> bool {
    FUSED.with(|f| f.get())
}

/// Whether `t` goes through a fused kernel: an f32 tensor on the CPU with the kernels on.
fn use_fused(t: &Tensor) -> bool {
    fused() && t.device().is_cpu() && t.dtype() == DType::F32
}

/// The f32 values of a contiguous CPU tensor's storage.
pub(crate) fn slice<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [f32]> {
    let CpuStorage::F32(v) = s else {
        bail!(
            "{what}: expected f32, got {:?}",
            candle_core::backend::BackendStorage::dtype(s)
        )
    };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&v[a..b]),
        None => bail!(
            "{what}: expected a contiguous tensor, got strides {:?}",
            l.stride()
        ),
    }
}

/// An output buffer that parallel workers fill in disjoint ranges.
pub(crate) struct Out(*mut f32);

// SAFETY: workers only write the disjoint ranges they are handed (see `Out::range`).
unsafe impl Send for Out {}
unsafe impl Sync for Out {}

impl Out {
    pub(crate) fn new(v: &mut [f32]) -> Self {
        Out(v.as_mut_ptr())
    }

    /// # Safety
    /// `r` lies inside the buffer and no other live slice overlaps it.
    #[allow(clippy::mut_from_ref)]
    pub(crate) unsafe fn range(&self, r: Range<usize>) -> &mut [f32] {
        std::slice::from_raw_parts_mut(self.0.add(r.start), r.len())
    }
}

/// Runs `f` over `0..n` in chunks on candle's thread pool (inline when small).
pub(crate) fn par_for(n: usize, min_chunk: usize, f: impl Fn(Range<usize>) + Sync) {
    let pool = candle_core::utils::barrier_pool();
    if n <= min_chunk || pool.n_workers() == 0 {
        f(0..n);
    } else {
        pool.execute_chunked(n, f);
    }
}

/// Runs `f(thread, range)` with `0..n` split evenly over the pool's threads; returns each thread's
/// result in thread order (so reductions over them are deterministic for a given thread count).
fn par_split<T: Send + Default + Clone>(n: usize, f: impl Fn(Range<usize>) -> T + Sync) -> Vec<T> {
    let pool = candle_core::utils::barrier_pool();
    let threads = pool.n_workers() + 1;
    let chunk = n.div_ceil(threads).max(1);
    let results = std::sync::Mutex::new(vec![T::default(); threads]);
    let run = |tid: usize| {
        let start = (tid * chunk).min(n);
        let r = f(start..(start + chunk).min(n));
        results.lock().unwrap_or_else(|e| e.into_inner())[tid] = r;
    };
    if threads == 1 {
        run(0);
    } else {
        pool.execute(run);
    }
    results.into_inner().unwrap_or_else(|e| e.into_inner())
}

/// The sum of the squares of `t`'s values in f64 (f32 CPU tensors in parallel, deterministic for
/// a given thread count).
pub fn sum_of_squares(t: &Tensor) -> Result<f64> {
    if !use_fused(t) {
        return t.to_dtype(DType::F64)?.sqr()?.sum_all()?.to_scalar::<f64>();
    }
    let t = t.contiguous()?;
    let (s, l) = t.storage_and_layout();
    let candle_core::Storage::Cpu(s) = &*s else {
        bail!("sum of squares: expected a CPU tensor")
    };
    let x = slice(s, l, "sum of squares")?;
    Ok(par_split(x.len(), |r| squares(&x[r])).iter().sum())
}

multiversion! {
    fn squares(x: &[f32]) -> f64 {
        let mut acc = [0.0f64; 8];
        let chunks = x.chunks_exact(8);
        let rest = chunks.remainder();
        for c in chunks {
            for i in 0..8 {
                acc[i] += f64::from(c[i]) * f64::from(c[i]);
            }
        }
        rest.iter().map(|&v| f64::from(v) * f64::from(v)).sum::<f64>() + acc.iter().sum::<f64>()
    }
}

/// Compiles `$body` for AVX-512, AVX2+FMA and baseline x86-64 and picks one at run time.
macro_rules! multiversion {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$meta])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn inner($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512dq,avx2,fma")]
                unsafe fn v4($($arg: $ty),*) $(-> $ret)? { inner($($arg),*) }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn v3($($arg: $ty),*) $(-> $ret)? { inner($($arg),*) }
                if $crate::kernels::simd_level() >= 4 {
                    // SAFETY: the CPU has these features (checked at run time).
                    return unsafe { v4($($arg),*) };
                }
                if $crate::kernels::simd_level() >= 3 {
                    // SAFETY: as above.
                    return unsafe { v3($($arg),*) };
                }
            }
            inner($($arg),*)
        }
    };
}
pub(crate) use multiversion;

/// 4: AVX-512 (F, VL, BW, DQ), 3: AVX2 and FMA, 0: neither (or not x86-64). `SCRATCHLLM_SIMD=avx2`
/// or `portable` caps it (to measure the paths other CPUs take; candle's own matrix products pick
/// their instructions themselves).
pub fn simd_level() -> u8 {
    static LEVEL: std::sync::OnceLock<u8> = std::sync::OnceLock::new();
    *LEVEL.get_or_init(|| {
        let cap = match std::env::var("SCRATCHLLM_SIMD").as_deref() {
            Ok("avx2") => 3,
            Ok("portable") => 0,
            _ => 4,
        };
        detected_simd_level().min(cap)
    })
}

fn detected_simd_level() -> u8 {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        if has!("avx512f") && has!("avx512vl") && has!("avx512bw") && has!("avx512dq") {
            return 4;
        }
        if has!("avx2") && has!("fma") {
            return 3;
        }
    }
    0
}

/// Lanes of the sums in the kernels (one AVX-512 register of f32).
const LANES: usize = 16;

/// The sum of `f(x)` over `xs`, accumulated in `LANES` partial sums then added in a fixed order.
#[inline(always)]
fn sum_by(xs: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut acc = [0.0f32; LANES];
    let chunks = xs.chunks_exact(LANES);
    let rest = chunks.remainder();
    for c in chunks {
        for i in 0..LANES {
            acc[i] += f(c[i]);
        }
    }
    for (i, &x) in rest.iter().enumerate() {
        acc[i] += f(x);
    }
    acc.iter().sum()
}

/// The sum of `f(x, y)` over pairs of `xs` and `ys` (equal lengths), as [`sum_by`].
#[inline(always)]
fn sum_by2(xs: &[f32], ys: &[f32], f: impl Fn(f32, f32) -> f32) -> f32 {
    let mut acc = [0.0f32; LANES];
    let n = xs.len().min(ys.len());
    let full = n / LANES * LANES;
    for (cx, cy) in xs[..full]
        .chunks_exact(LANES)
        .zip(ys[..full].chunks_exact(LANES))
    {
        for i in 0..LANES {
            acc[i] += f(cx[i], cy[i]);
        }
    }
    for i in full..n {
        acc[i - full] += f(xs[i], ys[i]);
    }
    acc.iter().sum()
}

/// The maximum of `xs` (-inf when empty).
#[inline(always)]
fn max_of(xs: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let chunks = xs.chunks_exact(LANES);
    let rest = chunks.remainder();
    for c in chunks {
        for i in 0..LANES {
            acc[i] = if c[i] > acc[i] { c[i] } else { acc[i] };
        }
    }
    for (i, &x) in rest.iter().enumerate() {
        acc[i] = if x > acc[i] { x } else { acc[i] };
    }
    acc.iter()
        .fold(f32::NEG_INFINITY, |m, &x| if x > m { x } else { m })
}

/// `e^x` in f32 to about 2 ulp (Cephes' `expf`), branch-free so loops over it vectorize; 0 below
/// -87.3, and inputs above 88.3 are taken as 88.3.
#[inline(always)]
fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const ROUND: f32 = 12_582_912.0; // 1.5 * 2^23: adding it rounds to an integer
    let xc = x.clamp(-87.3, 88.3);
    let t = xc * LOG2E + ROUND;
    let n = t - ROUND;
    let r = xc - n * 0.693_359_4 - n * -2.121_944_4e-4;
    let mut p = 1.987_569_1e-4f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let y = p * r * r + r + 1.0;
    let scale = f32::from_bits(((t.to_bits() as i32 - 0x4B40_0000 + 127) << 23) as u32);
    if x < -87.3 {
        0.0
    } else {
        y * scale
    }
}

/// `tanh(x)` from [`exp`], branch-free.
#[inline(always)]
fn tanh(x: f32) -> f32 {
    let a = x.abs();
    let e = exp(2.0 * a);
    let t = 1.0 - 2.0 / (e + 1.0);
    t.copysign(x)
}

/// The gradient check of the kernels' tests: central differences of a scalar function of one
/// tensor's values, against the analytic gradient, in f64 on the reference path.
#[cfg(test)]
pub(crate) mod testing {
    use candle_core::{DType, Device, Tensor};

    /// Deterministic values in [-scale, scale].
    pub fn values(n: usize, seed: u64, scale: f32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
            })
            .collect()
    }

    pub fn tensor(shape: &[usize], seed: u64, scale: f32) -> Tensor {
        let n = shape.iter().product();
        Tensor::from_vec(values(n, seed, scale), shape, &Device::Cpu).unwrap()
    }

    /// Gradients of `sum(y * w)`: a loss that weighs every output differently.
    pub fn weighted_grads(y: &Tensor, w: &Tensor) -> candle_core::backprop::GradStore {
        (y * w).unwrap().sum_all().unwrap().backward().unwrap()
    }

    /// `sum(y * w)` as f64 (for the finite differences, on f64 tensors).
    pub fn weighted_sum(y: &Tensor, w: &Tensor) -> f64 {
        (y * w)
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f64>()
            .unwrap()
    }

    pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
        assert_eq!(a.dims(), b.dims());
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    /// Checks `grad` (of `loss` at `x`) against central differences with step `h`, at up to
    /// `samples` positions; f64 arithmetic so the check measures the kernel, not rounding.
    pub fn check_grad(
        loss: impl Fn(&Tensor) -> f64,
        x: &Tensor,
        grad: &Tensor,
        h: f64,
        samples: usize,
        tol: f64,
    ) {
        let xs: Vec<f64> = x
            .to_dtype(DType::F64)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let gs: Vec<f32> = grad.flatten_all().unwrap().to_vec1().unwrap();
        let step = (xs.len() / samples).max(1);
        for i in (0..xs.len()).step_by(step) {
            let at = |d: f64| {
                let mut v = xs.clone();
                v[i] += d;
                loss(&Tensor::from_vec(v, x.shape(), x.device()).unwrap())
            };
            let numeric = (at(h) - at(-h)) / (2.0 * h);
            let analytic = gs[i] as f64;
            assert!(
                (numeric - analytic).abs() <= tol * (1.0 + numeric.abs()),
                "gradient at {i}: analytic {analytic}, numeric {numeric}"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_and_tanh_match_the_standard_library() {
        let mut worst_exp = 0.0f64;
        let mut worst_tanh = 0.0f64;
        let mut x = -90.0f32;
        while x < 88.0 {
            let (want, got) = (f64::from(x).exp(), exp(x) as f64);
            if want > 1e-37 {
                worst_exp = worst_exp.max((got - want).abs() / want);
            }
            let (want, got) = (f64::from(x).tanh(), tanh(x) as f64);
            worst_tanh = worst_tanh.max((got - want).abs());
            x += 0.0137;
        }
        assert!(worst_exp < 3e-7, "exp relative error {worst_exp}");
        assert!(worst_tanh < 2e-7, "tanh absolute error {worst_tanh}");
        assert_eq!(exp(-100.0), 0.0);
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(tanh(0.0), 0.0);
        assert_eq!(tanh(30.0), 1.0);
        assert_eq!(tanh(-30.0), -1.0);
    }

    #[test]
    fn lane_sums_and_max_cover_every_element() {
        let xs: Vec<f32> = (0..37).map(|i| i as f32).collect();
        assert_eq!(sum_by(&xs, |x| x), 666.0);
        assert_eq!(
            sum_by2(&xs, &xs, |x, y| x * y),
            (0..37).map(|i| i * i).sum::<i32>() as f32
        );
        assert_eq!(max_of(&xs), 36.0);
        assert_eq!(max_of(&[]), f32::NEG_INFINITY);
    }
}
