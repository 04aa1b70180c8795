//! The operating-system contract: where pages come from and where they go back. See `lib.rs`
//! for an overview.
//!
//! [`PageSource`] is the narrow interface every tier above uses; [`OsPages`] is the real one
//! (`sys/linux.rs`, the only code that names `libc` memory calls) and [`FakePages`] is an
//! in-memory one for tests that can fail on demand.

// The fake source exists for tests (the crate's own, and those built with `internals`): not
// in a program's build.
#[cfg(any(test, feature = "internals"))]
mod fake;
mod linux;

#[cfg(any(test, feature = "internals"))]
pub use fake::FakePages;
pub use linux::{OsPages, os_page_size};

use core::ptr::NonNull;

/// Where the page heap and the metadata allocator get memory.
///
/// # Safety
/// Implementations must keep the contract of each method: memory returned by `map` is
/// readable, writable, zero-filled, aligned as asked, owned by the caller until it gives
/// the range back with [`PageSource::unmap`] (or until process exit), and distinct from
/// every other mapping handed out and not unmapped.
pub unsafe trait PageSource: Sync {
    /// Maps `bytes` bytes aligned to `align`; both are multiples of the page size and `align`
    /// is a power of two. The memory reads as zero. `None` when the system is out of memory
    /// (or the fake source was told to fail).
    ///
    /// The memory is committed the way the system counts it: the real source asks the
    /// kernel for it under its overcommit policy (no `MAP_NORESERVE`), so a request the
    /// kernel would refuse to `malloc` in glibc is refused here too, at once, rather than
    /// granted and later paid for by the OOM killer. Padding taken only to align the
    /// mapping is not committed and is given back before `map` returns.
    fn map(&self, bytes: usize, align: usize) -> Option<NonNull<u8>>;

    /// Gives `[ptr, ptr + bytes)` back to the system: memory and address space. Returns
    /// whether it did; `false` leaves the range mapped and unchanged (the default, for a
    /// source that cannot unmap). `ptr` and `bytes` are multiples of
    /// [`PageSource::os_page_size`]; the range may span several `map` calls' mappings.
    ///
    /// # Safety
    /// The range lies inside memory this source mapped and did not unmap, nothing in it is
    /// live, and on `true` the caller never touches it again.
    unsafe fn unmap(&self, ptr: NonNull<u8>, bytes: usize) -> bool {
        let _ = (ptr, bytes);
        false
    }

    /// Gives the physical memory behind `[ptr, ptr + bytes)` back to the system. The range
    /// stays mapped and reads as zero afterwards. `ptr` and `bytes` are multiples of
    /// [`PageSource::os_page_size`].
    ///
    /// # Safety
    /// The range lies inside memory this source mapped, and nothing in it is live.
    unsafe fn release(&self, ptr: NonNull<u8>, bytes: usize);

    /// The operating system's page size, read at run time.
    fn os_page_size(&self) -> usize;

    /// Hardened build (guard pages): makes `[ptr, ptr + bytes)` inaccessible, so that any
    /// access faults (`accessible == false`), or readable and writable again, its contents
    /// kept. `ptr` and `bytes` are multiples of [`PageSource::os_page_size`]. `false` when
    /// the system refuses (Linux: `ENOMEM` past `vm.max_map_count` mappings).
    ///
    /// # Safety
    /// The range lies inside memory this source mapped; made inaccessible, nothing reads or
    /// writes it until it is made accessible again.
    #[cfg(feature = "hardened")]
    unsafe fn protect(&self, ptr: NonNull<u8>, bytes: usize, accessible: bool) -> bool;
}

/// Milliseconds since an arbitrary fixed point, never 0. `CLOCK_MONOTONIC_COARSE` through
/// the vDSO: a few nanoseconds, a few milliseconds of resolution, ample for decay.
pub fn monotonic_ms() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec to write.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    (ts.tv_sec as u64) * 1000 + (ts.tv_nsec as u64) / 1_000_000 + 1
}
