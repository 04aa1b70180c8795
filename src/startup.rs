//! The process's start and end: the configuration read from the environment once, before
//! `main`, and the statistics written at exit (`SPANALLOC_SHOW_STATS=1`), and the heap
//! profile (`SPANALLOC_PROFILE_DUMP`). See `lib.rs` for an overview and [`crate::config`]
//! for the variables.
//!
//! Both are ELF constructor and destructor entries (`.init_array`, `.fini_array`), so they
//! work the same in a Rust program and in `libspanalloc.so` under `LD_PRELOAD` or `dlopen`
//! (on macOS the constructor is a Mach-O initializer, `__mod_init_func`, and registers the
//! exit work with `atexit`, Mach-O's `__mod_term_func` being deprecated):
//! the constructor runs when the binary or library is loaded, after the C library is set
//! up and outside any allocation (so it may start the background release thread);
//! allocations made before it (the dynamic loader's, other libraries' constructors) see the
//! defaults, and a program's own calls (`set_decay_ms`) come after it and win. A preloaded
//! library is finalised after the program and the libraries that depend on it, so the
//! statistics show the heap as the process leaves it. The two flags below are the only
//! statics outside `global.rs`: they belong to the process's start and end, not to a tier.

use crate::config::{self, Config};
use core::fmt::{self, Write};
use core::sync::atomic::{AtomicBool, AtomicI32, Ordering};

/// Whether the statistics are printed at exit.
static SHOW_STATS: AtomicBool = AtomicBool::new(false);

/// A private copy of stderr, made at load time: programs such as coreutils close fd 2 in an
/// `atexit` handler, before the destructor runs.
static STDERR_COPY: AtomicI32 = AtomicI32::new(2);

/// Reads the environment and applies it.
extern "C" fn on_load() {
    // SAFETY: the bytes are used only during this call, before `main`: nothing changes the
    // environment meanwhile (a loader thread racing `setenv` would race every `getenv`).
    let config = Config::from_env(|name| unsafe { config::getenv(name) });
    let heap = crate::global::heap();
    heap.set_decay_ms(config.decay_ms);
    heap.set_bin_bytes(config.bin_bytes);
    heap.set_thread_cache_bytes(config.thread_cache_bytes);
    if config.show_stats {
        // SAFETY: `fcntl` on a descriptor number has no memory-safety preconditions.
        let fd = unsafe { libc::fcntl(2, libc::F_DUPFD_CLOEXEC, 3) };
        if fd >= 0 {
            STDERR_COPY.store(fd, Ordering::Relaxed);
        }
        SHOW_STATS.store(true, Ordering::Relaxed);
    }
    if config.background_release {
        crate::start_background_release();
    }
    if config.profile_mean != 0 || config.profile_dump.is_some() {
        let dump = config.profile_dump.as_ref().map(|p| p.as_bytes());
        crate::profiling::configure(config.profile_mean, dump);
    }
    #[cfg(target_os = "macos")]
    // SAFETY: `on_unload` is an `extern "C" fn()` that may run at any point of `exit`.
    unsafe {
        libc::atexit(on_unload);
    }
}

extern "C" fn on_unload() {
    if SHOW_STATS.load(Ordering::Relaxed) {
        print_stats();
    }
    crate::profiling::dump_at_exit();
}

#[used]
#[cfg_attr(target_os = "linux", unsafe(link_section = ".init_array"))]
#[cfg_attr(
    target_os = "macos",
    unsafe(link_section = "__DATA,__mod_init_func,mod_init_funcs")
)]
static ON_LOAD: extern "C" fn() = on_load;

#[cfg(target_os = "linux")]
#[used]
#[unsafe(link_section = ".fini_array")]
static ON_UNLOAD: extern "C" fn() = on_unload;

/// Writes the statistics to stderr now: a summary line (`spanalloc: peak ...`), then the
/// table of [`crate::stats::Stats`]'s `Display`. Formats into a stack buffer, written with
/// `write(2)` as it fills: nothing allocates.
fn print_stats() {
    let st = crate::stats();
    let ph = crate::global::heap().page_heap_stats();
    let mut out = StackWriter {
        buf: [0; 2048],
        len: 0,
    };
    let _ = writeln!(
        out,
        "spanalloc: peak {} bytes in spans (process peak RSS {}), current {} bytes in spans \
         (small {}, large {}), mapped {} bytes (free {}, given back to the OS {} over the run, \
         metadata {}), {} allocations, {} frees",
        st.peak,
        crate::sys::peak_rss_bytes(),
        ph.small_spans + ph.large_in_use,
        ph.small_spans,
        ph.large_in_use,
        ph.mapped,
        ph.free,
        ph.released_total,
        ph.metadata,
        st.allocations,
        st.frees
    );
    let _ = write!(out, "{st}");
    out.flush();
}

/// A `fmt::Write` into a fixed buffer on the stack, written to the stderr copy when full.
struct StackWriter {
    buf: [u8; 2048],
    len: usize,
}

impl StackWriter {
    fn flush(&mut self) {
        write_all(&self.buf[..self.len]);
        self.len = 0;
    }
}

impl Write for StackWriter {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for chunk in s.as_bytes().chunks(self.buf.len()) {
            if self.len + chunk.len() > self.buf.len() {
                self.flush();
            }
            self.buf[self.len..self.len + chunk.len()].copy_from_slice(chunk);
            self.len += chunk.len();
        }
        Ok(())
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
        } else if n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted
        {
            continue;
        } else {
            return;
        }
    }
}
