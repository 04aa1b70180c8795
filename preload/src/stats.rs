//! `SPANALLOC_SHOW_STATS=1`: one summary line on stderr at process exit, written with
//! `write(2)` and formatted without allocating.
//!
//! The library's `.init_array` constructor reads the variable once; its `.fini_array`
//! destructor prints. A preloaded library is finalised after the program and the libraries
//! that depend on it, so the line shows the heap as the process leaves it.

use core::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use spanalloc::check::format_decimal;

static SHOW: AtomicBool = AtomicBool::new(false);

/// A private copy of stderr, made at load time: programs such as coreutils close fd 2 in an
/// `atexit` handler, before the library's destructor runs.
static STDERR_COPY: AtomicI32 = AtomicI32::new(2);

/// Whether `SPANALLOC_SHOW_STATS` is set to something other than empty or `0`.
fn wanted() -> bool {
    // SAFETY: a NUL-terminated name; `getenv` neither allocates nor keeps the pointer.
    let v = unsafe { libc::getenv(c"SPANALLOC_SHOW_STATS".as_ptr()) };
    if v.is_null() {
        return false;
    }
    // SAFETY: `getenv` returned a NUL-terminated string.
    let first = unsafe { *v };
    first != 0 && first != b'0' as libc::c_char
}

extern "C" fn on_load() {
    if wanted() {
        // SAFETY: `fcntl` on a descriptor number has no memory-safety preconditions.
        let fd = unsafe { libc::fcntl(2, libc::F_DUPFD_CLOEXEC, 3) };
        if fd >= 0 {
            STDERR_COPY.store(fd, Ordering::Relaxed);
        }
        SHOW.store(true, Ordering::Relaxed);
    }
}

/// Writes all of `bytes` to the stderr copy, retrying short writes and `EINTR`.
fn write_all(mut bytes: &[u8]) {
    let fd = STDERR_COPY.load(Ordering::Relaxed);
    while !bytes.is_empty() {
        // SAFETY: `bytes` is a valid readable buffer of `bytes.len()` bytes.
        let n = unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
        if n > 0 {
            bytes = &bytes[n as usize..];
        // SAFETY: `__errno_location` returns this thread's errno slot, always valid.
        } else if n < 0 && unsafe { *libc::__errno_location() } == libc::EINTR {
            continue;
        } else {
            return;
        }
    }
}

extern "C" fn on_unload() {
    if SHOW.load(Ordering::Relaxed) {
        print_summary();
    }
}

#[used]
#[unsafe(link_section = ".init_array")]
static INIT: extern "C" fn() = on_load;

#[used]
#[unsafe(link_section = ".fini_array")]
static FINI: extern "C" fn() = on_unload;

/// A fixed-capacity line buffer on the stack.
struct Line {
    buf: [u8; 512],
    len: usize,
}

impl Line {
    fn push(&mut self, bytes: &[u8]) {
        let n = bytes.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&bytes[..n]);
        self.len += n;
    }

    fn num(&mut self, value: usize) {
        let mut digits = [0u8; 20];
        self.push(format_decimal(value as u64, &mut digits));
    }
}

/// The process's peak resident set in bytes (`getrusage`), 0 if unknown.
fn peak_rss_bytes() -> usize {
    // SAFETY: an all-zero `rusage` is a valid value to overwrite.
    let mut ru: libc::rusage = unsafe { core::mem::zeroed() };
    // SAFETY: `ru` is a valid out-pointer.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        return 0;
    }
    (ru.ru_maxrss as usize).saturating_mul(1024)
}

/// Writes the summary line to stderr now. No allocation, no formatting machinery.
///
/// `current` is the bytes in spans handed out (small-object spans and large objects);
/// `mapped` never falls (spanalloc does not unmap), so it is also the page heap's peak.
/// The core keeps no high-water mark of bytes in use, so the peak shown is the process's
/// peak RSS.
pub fn print_summary() {
    let st = spanalloc::heap().page_heap_stats();
    let mut line = Line {
        buf: [0; 512],
        len: 0,
    };
    line.push(b"spanalloc: peak ");
    line.num(peak_rss_bytes());
    line.push(b" bytes (process peak RSS), current ");
    line.num(st.small_spans + st.large_in_use);
    line.push(b" bytes in spans (small ");
    line.num(st.small_spans);
    line.push(b", large ");
    line.num(st.large_in_use);
    line.push(b"), mapped ");
    line.num(st.mapped);
    line.push(b" bytes (free ");
    line.num(st.free);
    line.push(b", given back to the OS ");
    line.num(st.released_total);
    line.push(b" over the run, metadata ");
    line.num(st.metadata);
    line.push(b")\n");
    write_all(&line.buf[..line.len]);
}
