//! The Linux side of the platform layer: what differs from macOS. `madvise(MADV_DONTNEED)`
//! to give pages back, guard markers for the hardened build's guard pages, the futex,
//! `CLOCK_MONOTONIC_COARSE`, `getrandom`, `pipe2`, errno, and `getrusage`'s unit. See
//! `sys.rs` for the contract and `lib.rs` for an overview.

use core::ptr::NonNull;
use core::sync::atomic::AtomicU32;

/// Gives the physical memory behind the range back; it reads as zero afterwards.
///
/// # Safety
/// The range is part of our private anonymous mappings, page aligned, and holds nothing
/// live.
pub(super) unsafe fn release(ptr: NonNull<u8>, bytes: usize) {
    // SAFETY: per the caller; MADV_DONTNEED on a private anonymous mapping drops the pages,
    // which then read as zero. MADV_FREE would leave them counted in RSS until memory
    // pressure.
    unsafe {
        libc::madvise(ptr.as_ptr().cast(), bytes, libc::MADV_DONTNEED);
    }
}

/// `CLOCK_MONOTONIC_COARSE` through the vDSO: a few nanoseconds, a few milliseconds of
/// resolution, ample for decay.
pub(super) fn monotonic_ms() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec to write.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    (ts.tv_sec as u64) * 1000 + (ts.tv_nsec as u64) / 1_000_000 + 1
}

pub(super) fn futex_wait(state: &AtomicU32, expected: u32) {
    // SAFETY: `state` is a valid, aligned u32 for the duration of the call; FUTEX_WAIT only
    // reads it. A spurious or interrupted wake is handled by the caller's loop.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            state.as_ptr(),
            libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG,
            expected,
            core::ptr::null::<libc::timespec>(),
        );
    }
}

pub(super) fn futex_wake(state: &AtomicU32) {
    // SAFETY: `state` is a valid, aligned u32; FUTEX_WAKE does not access memory.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            state.as_ptr(),
            libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG,
            1,
        );
    }
}

pub(super) fn errno() -> i32 {
    // SAFETY: `__errno_location` returns this thread's errno slot, always valid.
    unsafe { *libc::__errno_location() }
}

pub(super) fn set_errno(value: i32) {
    // SAFETY: as in `errno`.
    unsafe { *libc::__errno_location() = value };
}

/// `getrandom(2)` with `GRND_NONBLOCK`: fails rather than waits before the kernel's pool is
/// ready (early boot).
pub(super) fn random_bytes(buf: &mut [u8]) -> bool {
    // SAFETY: `buf` is valid for writes of its length; GRND_NONBLOCK never blocks.
    let n = unsafe { libc::getrandom(buf.as_mut_ptr().cast(), buf.len(), libc::GRND_NONBLOCK) };
    n == buf.len() as isize
}

pub(super) fn pipe_cloexec() -> Option<[libc::c_int; 2]> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: `fds` has room for the two descriptors.
    (unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } == 0).then_some(fds)
}

pub(super) fn peak_rss_bytes() -> usize {
    // SAFETY: an all-zero `rusage` is a valid value to overwrite.
    let mut ru: libc::rusage = unsafe { core::mem::zeroed() };
    // SAFETY: `ru` is a valid out-pointer.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        return 0;
    }
    // Linux counts it in KiB.
    (ru.ru_maxrss as usize).saturating_mul(1024)
}

/// `madvise` advice of Linux 6.13 (not yet in the `libc` crate): installs guard markers in
/// the page table entries of a private anonymous range, so that any access faults with
/// `SIGSEGV`, without a change of protection and so without a new kernel mapping.
#[cfg(feature = "hardened")]
const MADV_GUARD_INSTALL: libc::c_int = 102;
/// Removes them; the pages read as zero afterwards.
#[cfg(feature = "hardened")]
const MADV_GUARD_REMOVE: libc::c_int = 103;

/// Whether the kernel has guard markers: not yet known, yes, no.
#[cfg(feature = "hardened")]
static GUARD_MARKERS: core::sync::atomic::AtomicU8 = core::sync::atomic::AtomicU8::new(UNKNOWN);
#[cfg(feature = "hardened")]
const UNKNOWN: u8 = 0;
#[cfg(feature = "hardened")]
const MARKERS: u8 = 1;
#[cfg(feature = "hardened")]
const NO_MARKERS: u8 = 2;

/// A guard page: guard markers where the kernel has them (Linux 6.13 and later), else
/// `mprotect`. An `mprotect` guard splits a kernel mapping in up to three, and each change
/// walks and rewrites the process's mapping tree: with tens of thousands of guarded large
/// objects, 11 to 14 µs a call under strace, and most of the hardened build's time on the
/// random slots of large objects. A marker is an entry in the page table: no mapping, no
/// split, no merge. The first call finds out which the kernel has (it refuses unknown
/// advice with `EINVAL`) and every later one uses the same, so a page guarded one way is
/// opened the same way.
///
/// # Safety
/// As [`super::PageSource::protect`]: the range is part of our private anonymous
/// mappings, page aligned; made inaccessible, nothing uses it.
#[cfg(feature = "hardened")]
pub(super) unsafe fn protect(ptr: NonNull<u8>, bytes: usize, accessible: bool) -> bool {
    use core::sync::atomic::Ordering::Relaxed;
    // Relaxed: every thread that finds out finds the same (it is the kernel's), so a stale
    // UNKNOWN only asks once more.
    let known = GUARD_MARKERS.load(Relaxed);
    if known != NO_MARKERS {
        let advice = if accessible {
            MADV_GUARD_REMOVE
        } else {
            MADV_GUARD_INSTALL
        };
        // SAFETY: per the caller; a marker drops the page's contents, which nothing uses
        // while it is a guard, and removing one leaves a zero page.
        if unsafe { libc::madvise(ptr.as_ptr().cast(), bytes, advice) } == 0 {
            if known == UNKNOWN {
                GUARD_MARKERS.store(MARKERS, Relaxed);
            }
            return true;
        }
        if known == MARKERS || errno() != libc::EINVAL {
            return false;
        }
        GUARD_MARKERS.store(NO_MARKERS, Relaxed);
    }
    // SAFETY: per the caller.
    unsafe { super::mmap::mprotect_guard(ptr, bytes, accessible) }
}

/// Whether a guard costs kernel mappings: unless guard markers are known to work here (a
/// guard made so far was one).
#[cfg(feature = "hardened")]
pub(super) fn guards_cost_mappings() -> bool {
    // Relaxed: as in `protect`.
    GUARD_MARKERS.load(core::sync::atomic::Ordering::Relaxed) != MARKERS
}
