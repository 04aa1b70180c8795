//! The Linux side of the platform layer: what differs from macOS. `madvise(MADV_DONTNEED)`
//! to give pages back, the futex, `CLOCK_MONOTONIC_COARSE`, `getrandom`, `pipe2`, errno,
//! and `getrusage`'s unit. See `sys.rs` for the contract and `lib.rs` for an overview.

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
