//! Keeping freed tensor memory in the process.
//!
//! The flex CPU backend allocates a fresh buffer for every layer's output and frees its input.
//! With glibc's defaults those buffers go back to the operating system almost at once (the heap
//! top is trimmed, large blocks are unmapped), so the next layer faults the same pages in again,
//! and each unmap interrupts the other cores to flush their TLBs. Profiling a MobileNetV2
//! forward at batch 16 on 2 cores put about a third of the time in the kernel (page faults,
//! `munmap`, TLB shoot-downs); keeping freed memory doubled throughput at batch 64
//! (`cargo run --release -p benches`, docs/performance.md).
//!
//! The price: the process keeps up to [`TOP_PAD`] of freed memory resident instead of handing
//! it back, so its resident size stays near its peak.

/// Freed memory glibc keeps at the top of the heap (and the step it grows the heap by).
pub const TOP_PAD: usize = 1 << 30;
/// Allocations below this come from the heap (and are reused); glibc's ceiling on 64-bit.
pub const MMAP_THRESHOLD: usize = 32 << 20;

/// Tells the C allocator to keep freed memory for reuse. Call once at the start of `main`,
/// before any thread starts. Returns whether the settings took (false on allocators other
/// than glibc's, where it does nothing).
pub fn keep_freed_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only changes glibc's tuning parameters; it is safe to call at any
        // time, and is called before other threads allocate.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD as libc::c_int) == 1
                && libc::mallopt(libc::M_TOP_PAD, TOP_PAD as libc::c_int) == 1
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn glibc_accepts_the_settings() {
        assert!(keep_freed_memory());
    }
}
