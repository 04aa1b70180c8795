//! The operating-system contract: where pages come from and where they go back, and the
//! few other kernel services the allocator needs. The lowest layer: it names nothing of the
//! crate. See `lib.rs` for an overview.
//!
//! [`PageSource`] is the narrow interface every tier above uses for memory; [`OsPages`] is
//! the real one (`sys/mmap.rs`, anonymous `mmap`, alike on both unixes) and [`FakePages`] is
//! an in-memory one for tests that can fail on demand. Beside memory: a lock's wait and wake
//! ([`futex_wait`], [`futex_wake`]), a clock ([`monotonic_ms`]), [`errno`], random bytes
//! ([`random_words`]), a close-on-exec pipe ([`pipe_cloexec`]) and the peak resident set
//! ([`peak_rss_bytes`]). Each OS implements them in a file of its own, `sys/linux.rs` and
//! `sys/macos.rs`: this layer is the only code that names a call that differs between
//! them. The POSIX calls both give alike (`write`, `abort`, `getenv`, pthread keys,
//! `pthread_atfork`, `sigaction`, `fcntl`) are made where they are used.
//!
//! A port to another OS is one more file with the functions of `sys/linux.rs`, and the
//! target added to the `cfg` of the modules in `lib.rs`.

// The fake source exists for tests (the crate's own, and those built with `internals`): not
// in a program's build.
#[cfg(any(test, feature = "internals"))]
mod fake;
#[cfg(target_os = "linux")]
mod linux;
#[cfg(target_os = "macos")]
mod macos;
mod mmap;

// The OS file, under one name.
#[cfg(target_os = "linux")]
use linux as os;
#[cfg(target_os = "macos")]
use macos as os;

#[cfg(any(test, feature = "internals"))]
pub use fake::FakePages;
// The global allocator's source, which the loom build leaves out.
#[cfg(not(loom))]
pub use mmap::OsPages;

use core::ptr::NonNull;
use core::sync::atomic::AtomicU32;

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
    /// The memory is committed the way the system counts it: on Linux the real source asks
    /// the kernel for it under its overcommit policy (no `MAP_NORESERVE`), so a request the
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
    /// access faults (`accessible == false`), or readable and writable again, with contents
    /// the caller may not count on (nothing was stored while it was inaccessible; `mprotect`
    /// keeps the old bytes, Linux's guard markers, which the real source uses where the
    /// kernel has them, 6.13 and later, leave zeros: see `sys/linux.rs`). `ptr` and `bytes`
    /// are multiples of [`PageSource::os_page_size`]. `false` when the system refuses
    /// (`mprotect`: `ENOMEM` past `vm.max_map_count` mappings).
    ///
    /// # Safety
    /// The range lies inside memory this source mapped; made inaccessible, nothing reads or
    /// writes it until it is made accessible again.
    #[cfg(feature = "hardened")]
    unsafe fn protect(&self, ptr: NonNull<u8>, bytes: usize, accessible: bool) -> bool;

    /// Hardened build: whether a guard page that [`PageSource::protect`] makes costs kernel
    /// mappings, which the kernel caps per process: the page heap then keeps the number of
    /// guards within a budget. `true` unless the source knows otherwise (Linux's guard
    /// markers, once the real source has found the kernel has them).
    #[cfg(feature = "hardened")]
    fn guards_cost_mappings(&self) -> bool {
        true
    }
}

/// The kernel's page size (4, 16 or 64 KiB; 16 KiB on Apple silicon), read once and
/// remembered.
#[inline]
pub fn os_page_size() -> usize {
    mmap::os_page_size()
}

/// Milliseconds since an arbitrary fixed point, never 0. A few nanoseconds a call (no system
/// call); a resolution of a few milliseconds is ample for decay.
#[inline]
pub fn monotonic_ms() -> u64 {
    os::monotonic_ms()
}

/// Sleeps while `state` holds `expected`, until a [`futex_wake`] on it. Returns at once if
/// `state` holds another value, and may return spuriously (a signal): the caller checks again
/// in a loop. Never allocates. The lock's slow path (`sync.rs`); under loom `sync.rs` has a
/// model of its own.
#[inline]
pub fn futex_wait(state: &AtomicU32, expected: u32) {
    os::futex_wait(state, expected);
}

/// Wakes one thread asleep in [`futex_wait`] on `state`, if there is one.
#[inline]
pub fn futex_wake(state: &AtomicU32) {
    os::futex_wake(state);
}

/// This thread's `errno`.
#[inline]
pub fn errno() -> i32 {
    os::errno()
}

/// Sets this thread's `errno` (a signal handler puts back what it found).
#[inline]
pub fn set_errno(value: i32) {
    os::set_errno(value);
}

/// Fills `words` (at most 32) with random bits from the kernel, without blocking and
/// without allocating; `false` when the kernel has none to give yet (early boot). Every
/// caller wants whole words (keys, seeds): the OS files fill their bytes.
#[inline]
pub fn random_words(words: &mut [u64]) -> bool {
    debug_assert!(words.len() <= 32);
    // SAFETY: the words' memory, viewed as bytes: `u8` has no alignment, and every byte
    // pattern is a valid `u64`; the borrow of `words` covers the view's whole life.
    let bytes = unsafe {
        core::slice::from_raw_parts_mut(words.as_mut_ptr().cast::<u8>(), size_of_val(words))
    };
    os::random_bytes(bytes)
}

/// A new pipe, `[read end, write end]`, both closed on `exec`; `None` when the system
/// refuses.
#[inline]
pub fn pipe_cloexec() -> Option<[libc::c_int; 2]> {
    os::pipe_cloexec()
}

/// The process's peak resident set in bytes (`getrusage`), 0 if unknown.
#[inline]
pub fn peak_rss_bytes() -> usize {
    os::peak_rss_bytes()
}
