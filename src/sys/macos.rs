//! The macOS side of the platform layer, with the same functions as `sys/linux.rs`: a fresh
//! mapping over the range to give pages back, `__ulock_wait` / `__ulock_wake` for the lock,
//! `CLOCK_UPTIME_RAW`, `getentropy`, `pipe` + `FD_CLOEXEC`, `__error`, and `getrusage`'s
//! unit. Checked in CI (`cargo check`, `clippy`), not run there: untested at run time. See
//! `sys.rs` for the contract, `lib.rs` for an overview and `docs/design.md` (section 1,
//! "Platforms") for the choices.

use core::ffi::{c_int, c_void};
use core::ptr::NonNull;
use core::sync::atomic::AtomicU32;

/// Gives the physical memory behind the range back; it reads as zero afterwards.
///
/// `madvise(MADV_DONTNEED)` on macOS only marks the pages as unneeded (they may keep their
/// contents), and `MADV_FREE_REUSABLE` takes them out of the footprint without zeroing
/// either. A new anonymous mapping over the range (`MAP_FIXED`) drops the old pages and
/// reads as zero, what jemalloc does where purging must zero.
///
/// # Safety
/// The range is part of our private anonymous mappings, page aligned, readable and
/// writable, and holds nothing live.
pub(super) unsafe fn release(ptr: NonNull<u8>, bytes: usize) {
    // SAFETY: per the caller the range is ours and holds nothing live, so replacing its
    // pages with fresh zero ones (same protection, same kind of mapping) breaks nothing.
    let raw = unsafe {
        libc::mmap(
            ptr.as_ptr().cast(),
            bytes,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_FIXED | libc::MAP_PRIVATE | libc::MAP_ANON,
            -1,
            0,
        )
    };
    if raw == libc::MAP_FAILED {
        // Refused (out of map entries): the kernel keeps the old mapping, so clear it by
        // hand. The range reads as zero as promised; its memory stays resident.
        // SAFETY: per the caller, the range is ours, writable and unused.
        unsafe { core::ptr::write_bytes(ptr.as_ptr(), 0, bytes) };
    }
}

/// `CLOCK_UPTIME_RAW`, the clock behind `mach_absolute_time` (and Rust's `Instant` on
/// macOS): read from the commpage without a system call. It stops while the machine sleeps,
/// which only delays decay.
pub(super) fn monotonic_ms() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec to write.
    unsafe { libc::clock_gettime(libc::CLOCK_UPTIME_RAW, &mut ts) };
    (ts.tv_sec as u64) * 1000 + (ts.tv_nsec as u64) / 1_000_000 + 1
}

// Darwin's futex: `__ulock_wait` / `__ulock_wake` (xnu's `bsd/sys/ulock.h`), in libSystem
// since macOS 10.12. Not in a public header, so not in the `libc` crate: declared here.
// libc++ builds `std::atomic<T>::wait` and `notify_one` on them, so they are as stable as
// the C++ ABI. The public `os_sync_wait_on_address` needs macOS 14.4.
unsafe extern "C" {
    fn __ulock_wait(operation: u32, addr: *mut c_void, value: u64, timeout_us: u32) -> c_int;
    fn __ulock_wake(operation: u32, addr: *mut c_void, wake_value: u64) -> c_int;
}

/// Compare a 32-bit value, then sleep; private to the process (a `FUTEX_PRIVATE_FLAG` wait).
const UL_COMPARE_AND_WAIT: u32 = 1;
/// Return `-errno` instead of setting `errno`.
const ULF_NO_ERRNO: u32 = 0x0100_0000;

pub(super) fn futex_wait(state: &AtomicU32, expected: u32) {
    // SAFETY: `state` is a valid, aligned u32 for the duration of the call; the kernel only
    // reads it. A timeout of 0 waits for as long as it takes. A spurious or interrupted
    // wake (`-EINTR`) is handled by the caller's loop.
    unsafe {
        __ulock_wait(
            UL_COMPARE_AND_WAIT | ULF_NO_ERRNO,
            state.as_ptr().cast(),
            u64::from(expected),
            0,
        );
    }
}

pub(super) fn futex_wake(state: &AtomicU32) {
    // SAFETY: `state` is a valid, aligned u32; the wake does not access memory. Without
    // `ULF_WAKE_ALL` it wakes one thread; `-ENOENT` (no thread asleep) is fine.
    unsafe {
        __ulock_wake(UL_COMPARE_AND_WAIT | ULF_NO_ERRNO, state.as_ptr().cast(), 0);
    }
}

pub(super) fn errno() -> i32 {
    // SAFETY: `__error` returns this thread's errno slot, always valid.
    unsafe { *libc::__error() }
}

pub(super) fn set_errno(value: i32) {
    // SAFETY: as in `errno`.
    unsafe { *libc::__error() = value };
}

/// `getentropy`, at most 256 bytes a call.
pub(super) fn random_bytes(buf: &mut [u8]) -> bool {
    buf.chunks_mut(256).all(|chunk| {
        // SAFETY: `chunk` is valid for writes of its length, at most 256 bytes.
        unsafe { libc::getentropy(chunk.as_mut_ptr().cast(), chunk.len()) == 0 }
    })
}

/// No `pipe2` on macOS: `pipe`, then close-on-exec on each end. A thread that forks and
/// execs between the two calls passes the ends to its child; this pipe is made once, for
/// the profiler's signal thread.
pub(super) fn pipe_cloexec() -> Option<[c_int; 2]> {
    let mut fds: [c_int; 2] = [0; 2];
    // SAFETY: `fds` has room for the two descriptors.
    if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
        return None;
    }
    for fd in fds {
        // SAFETY: `fcntl` on a descriptor we own.
        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    }
    Some(fds)
}

pub(super) fn peak_rss_bytes() -> usize {
    // SAFETY: an all-zero `rusage` is a valid value to overwrite.
    let mut ru: libc::rusage = unsafe { core::mem::zeroed() };
    // SAFETY: `ru` is a valid out-pointer.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        return 0;
    }
    // macOS counts it in bytes (Linux in KiB).
    ru.ru_maxrss as usize
}

/// A guard page: `mprotect` (see `sys/mmap.rs`).
///
/// # Safety
/// As [`super::PageSource::protect`].
#[cfg(feature = "hardened")]
pub(super) unsafe fn protect(ptr: NonNull<u8>, bytes: usize, accessible: bool) -> bool {
    // SAFETY: per the caller.
    unsafe { super::mmap::mprotect_guard(ptr, bytes, accessible) }
}

/// Every guard is an `mprotect`, which costs kernel mappings.
#[cfg(feature = "hardened")]
pub(super) fn guards_cost_mappings() -> bool {
    true
}
