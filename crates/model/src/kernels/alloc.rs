//! The allocator setting that training needs on glibc.
//!
//! glibc's malloc serves every block above its mmap threshold (at most 32 MiB) with a fresh `mmap`
//! and returns it to the kernel on `free`; the kernel then zeroes every page again on first touch.
//! A training step allocates and frees dozens of logits-sized (100 MB) tensors, so half its time went
//! to `clear_page` and page faults. Serving large blocks from the heap and never trimming it keeps
//! freed memory for the next step (it doubled gpt2-small training speed on the 2-core machine).

/// Makes malloc keep freed memory for reuse (no per-block mmap, no trimming). Call once, early.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; it is called before other threads allocate.
    unsafe {
        libc::mallopt(libc::M_MMAP_MAX, 0);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
        libc::mallopt(libc::M_TOP_PAD, 256 << 20);
    }
}
