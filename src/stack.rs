//! Stack capture for the heap profiler: the return addresses of the calling thread's
//! frames, through the unwinder the toolchain links (`_Unwind_Backtrace` from libgcc_s,
//! which reads the `.eh_frame` unwind tables). See `lib.rs` for an overview and
//! `docs/design.md` (section 10) for why this unwinder.
//!
//! Safe inside the allocator: the buffer is the caller's (on its stack), the unwinder
//! allocates nothing (the Rust standard library links it for panics already, so there is
//! no `dlopen` of libgcc_s as glibc's `backtrace()` makes on its first call), and the only
//! lock it may take is the dynamic loader's recursive lock around `dl_iterate_phdr`, on
//! glibc versions without `_dl_find_object`: no allocation path of ours takes it. The
//! caller holds no allocator lock while it captures. On macOS the unwinder is the system's
//! libunwind (reading `__unwind_info`); that it allocates nothing there is expected, not
//! checked (macOS is untested at run time).
//!
//! What the program needs for good stacks: unwind tables for its code, which Rust emits on
//! Linux by default (even with `panic = "abort"`) and GCC and Clang emit on x86-64 by
//! default (`-fasynchronous-unwind-tables`). Frame pointers are not needed. A frame with
//! no unwind information (hand-written assembly, JIT code) ends the stack there.

use core::ffi::{c_int, c_void};

/// The most frames a sample keeps (the innermost ones).
pub const MAX_FRAMES: usize = 64;

#[repr(C)]
struct UnwindContext {
    _opaque: [u8; 0],
}

type TraceFn = extern "C" fn(ctx: *mut UnwindContext, arg: *mut c_void) -> c_int;

/// `_URC_NO_REASON`: go on to the next frame.
const URC_NO_REASON: c_int = 0;
/// `_URC_NORMAL_STOP`: stop here.
const URC_NORMAL_STOP: c_int = 4;

// libgcc_s, linked by the standard library on every Linux target (its unwinding uses it);
// on macOS the system's libunwind, part of libSystem.
unsafe extern "C" {
    fn _Unwind_Backtrace(trace: TraceFn, arg: *mut c_void) -> c_int;
    fn _Unwind_GetIP(ctx: *mut UnwindContext) -> usize;
}

/// Where the callback writes.
struct Frames<'a> {
    out: &'a mut [usize],
    len: usize,
    skip: usize,
}

extern "C" fn on_frame(ctx: *mut UnwindContext, arg: *mut c_void) -> c_int {
    // SAFETY: `arg` is the `Frames` that `capture` passed, alive for the whole walk and
    // used by nothing else meanwhile.
    let frames = unsafe { &mut *arg.cast::<Frames<'_>>() };
    // SAFETY: `ctx` is the unwinder's context for the current frame.
    let ip = unsafe { _Unwind_GetIP(ctx) };
    if ip == 0 {
        return URC_NORMAL_STOP;
    }
    if frames.skip > 0 {
        frames.skip -= 1;
        return URC_NO_REASON;
    }
    frames.out[frames.len] = ip;
    frames.len += 1;
    if frames.len == frames.out.len() {
        URC_NORMAL_STOP
    } else {
        URC_NO_REASON
    }
}

/// Writes the return addresses of the calling thread's frames into `out`, innermost first,
/// leaving out this function's own frame and `skip` more; returns how many it wrote. Makes
/// no allocation and takes no lock of the allocator's.
#[inline(never)]
pub fn capture(out: &mut [usize], skip: usize) -> usize {
    if out.is_empty() {
        return 0;
    }
    let mut frames = Frames { out, len: 0, skip };
    // The first frame the unwinder reports is this function's own (where it called
    // `_Unwind_Backtrace`).
    frames.skip += 1;
    // SAFETY: `on_frame` matches the callback type and only touches `frames`.
    unsafe { _Unwind_Backtrace(on_frame, (&raw mut frames).cast()) };
    let len = frames.len;
    // Keep the frame of the caller from being a tail call, so that `skip` counts right.
    core::hint::black_box(len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[inline(never)]
    fn two_deep(out: &mut [usize]) -> usize {
        core::hint::black_box(one_deep(out))
    }

    #[inline(never)]
    fn one_deep(out: &mut [usize]) -> usize {
        core::hint::black_box(capture(out, 0))
    }

    #[test]
    fn captures_the_callers_frames() {
        let mut out = [0usize; MAX_FRAMES];
        let n = two_deep(&mut out);
        assert!(n >= 3, "{n} frames");
        assert!(out[..n].iter().all(|&ip| ip != 0));
        // The first frame is in `one_deep`, the second in `two_deep`: return addresses just
        // past their calls, so above each function's start.
        assert!(out[0] > one_deep as *const () as usize && out[1] > two_deep as *const () as usize);
    }

    #[test]
    fn skip_and_a_short_buffer() {
        let mut all = [0usize; MAX_FRAMES];
        let n = two_deep(&mut all);
        let mut short = [0usize; 2];
        assert_eq!(two_deep(&mut short), 2);
        assert_eq!(short, [all[0], all[1]]);
        let mut skipped = [0usize; MAX_FRAMES];
        let m = capture(&mut skipped, 1);
        assert!(m + 1 >= 1 && m < n + 8);
        assert_eq!(capture(&mut [], 0), 0);
    }
}
