//! glibc's extras: `malloc_trim`, `mallinfo`, `mallinfo2`, `malloc_stats`, `malloc_info`
//! and `mallopt`, over [`spanalloc::stats()`] and [`spanalloc::release_free_memory`]. See
//! `docs/preload.md` for how glibc's fields map onto spanalloc's figures.
//!
//! These are called by the program, never from inside an allocation. Each takes one
//! statistics snapshot (which walks the tiers under their locks and allocates nothing),
//! then formats into a buffer on the stack, with no lock held, and only then writes:
//! `malloc_stats` and `malloc_info` hand the text to stdio (`fwrite`), which may allocate
//! its `FILE` buffer through this library's `malloc`; that is safe, as no allocator state
//! is held by then.
//!
//! # The mapping
//!
//! glibc splits its memory into arenas (`arena`, `uordblks`, `fordblks`) and chunks of
//! their own `mmap` (`hblks`, `hblkhd`), and programs add the two (glibc's own
//! `malloc_stats` prints `arena + hblkhd` as the total). spanalloc's large objects (32 KiB
//! and more, spans of their own) play the part of glibc's `mmap`ed chunks:
//!
//! | field | value |
//! |---|---|
//! | `arena` | bytes mapped for spans and not given back to the OS, less `hblkhd` |
//! | `ordblks` | free small objects (in the caches and central lists the snapshot sees) |
//! | `smblks`, `usmblks`, `fsmblks` | 0 (no fastbins; glibc's `usmblks` is always 0) |
//! | `hblks` | 0 (the core keeps no count of large objects) |
//! | `hblkhd` | bytes in large objects handed out |
//! | `uordblks` | bytes in small objects handed out, at their class size |
//! | `fordblks` | `arena - uordblks`: free objects, span tails, other threads' cached spans, free pages not yet given back |
//! | `keepcost` | free pages not yet given back (what `malloc_trim` would release) |
//!
//! `mallinfo` (the `int` version) saturates each field at `INT_MAX` (glibc wraps).

use core::ffi::{c_int, c_void};
use spanalloc::internals::check::format_decimal;
use spanalloc::stats::Stats;

/// glibc's `struct mallinfo` (`<malloc.h>`), every field an `int`.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct Mallinfo {
    /// Non-`mmap` space, in use and free.
    pub arena: c_int,
    /// Free chunks.
    pub ordblks: c_int,
    /// Free fastbin chunks.
    pub smblks: c_int,
    /// `mmap`ed chunks.
    pub hblks: c_int,
    /// Bytes in `mmap`ed chunks.
    pub hblkhd: c_int,
    /// Always 0.
    pub usmblks: c_int,
    /// Bytes in free fastbin chunks.
    pub fsmblks: c_int,
    /// Bytes in use (outside `mmap`ed chunks).
    pub uordblks: c_int,
    /// Free bytes.
    pub fordblks: c_int,
    /// Bytes `malloc_trim` could release.
    pub keepcost: c_int,
}

/// glibc's `struct mallinfo2` (2.33 and later): `struct mallinfo` with `size_t` fields.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct Mallinfo2 {
    /// Non-`mmap` space, in use and free.
    pub arena: usize,
    /// Free chunks.
    pub ordblks: usize,
    /// Free fastbin chunks.
    pub smblks: usize,
    /// `mmap`ed chunks.
    pub hblks: usize,
    /// Bytes in `mmap`ed chunks.
    pub hblkhd: usize,
    /// Always 0.
    pub usmblks: usize,
    /// Bytes in free fastbin chunks.
    pub fsmblks: usize,
    /// Bytes in use (outside `mmap`ed chunks).
    pub uordblks: usize,
    /// Free bytes.
    pub fordblks: usize,
    /// Bytes `malloc_trim` could release.
    pub keepcost: usize,
}

/// Free small objects the snapshot sees: (count, bytes).
fn free_objects(st: &Stats) -> (usize, usize) {
    st.classes.iter().fold((0, 0), |(n, b), c| {
        (n + c.free_objects, b + c.free_objects * c.object_size)
    })
}

/// glibc's figures from a snapshot (the table in the module documentation).
pub fn mallinfo2_from(st: &Stats) -> Mallinfo2 {
    let large = st.large_in_use;
    let held = st.mapped.saturating_sub(st.released);
    let arena = held.saturating_sub(large);
    let uordblks = st.in_use.saturating_sub(large).min(arena);
    Mallinfo2 {
        arena,
        ordblks: free_objects(st).0,
        smblks: 0,
        hblks: 0,
        hblkhd: large,
        usmblks: 0,
        fsmblks: 0,
        uordblks,
        fordblks: arena - uordblks,
        keepcost: st.page_heap_free,
    }
}

/// glibc `mallinfo2`: the allocator's figures (see the module documentation).
///
/// # Safety
/// Always safe to call (not from inside an allocation).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mallinfo2() -> Mallinfo2 {
    mallinfo2_from(&spanalloc::stats())
}

/// glibc `mallinfo`: [`mallinfo2`] with each field saturated to `INT_MAX`.
///
/// # Safety
/// Always safe to call (not from inside an allocation).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mallinfo() -> Mallinfo {
    let m = mallinfo2_from(&spanalloc::stats());
    let int = |v: usize| v.min(c_int::MAX as usize) as c_int;
    Mallinfo {
        arena: int(m.arena),
        ordblks: int(m.ordblks),
        smblks: int(m.smblks),
        hblks: int(m.hblks),
        hblkhd: int(m.hblkhd),
        usmblks: int(m.usmblks),
        fsmblks: int(m.fsmblks),
        uordblks: int(m.uordblks),
        fordblks: int(m.fordblks),
        keepcost: int(m.keepcost),
    }
}

/// glibc `malloc_trim`: gives the calling thread's cached spans and every thread's reserve
/// back to the central lists and every free page back to the OS (`MADV_DONTNEED`). Returns 1 if memory was given
/// back, 0 if there was none to give. `pad` is ignored (glibc keeps that much at the top
/// of its heap; spanalloc has no top).
///
/// # Safety
/// Always safe to call (not from inside an allocation).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn malloc_trim(pad: usize) -> c_int {
    let _ = pad;
    spanalloc::flush_thread_cache();
    (spanalloc::release_free_memory() > 0) as c_int
}

/// glibc `mallopt`: accepted and ignored; returns 1 (success) for every parameter.
/// spanalloc has no trim or `mmap` threshold (`M_TRIM_THRESHOLD`, `M_MMAP_THRESHOLD`,
/// `M_TOP_PAD`: free pages go back to the OS after `SPANALLOC_DECAY_MS`), no arenas
/// (`M_ARENA_MAX`, `M_ARENA_TEST`), no fastbins (`M_MXFAST`) and no checking or perturb
/// modes (`M_CHECK_ACTION`, `M_PERTURB`).
///
/// # Safety
/// Always safe to call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mallopt(param: c_int, value: c_int) -> c_int {
    let _ = (param, value);
    1
}

/// A text buffer on the stack, written out to a `FILE` when full and at the end.
struct Text {
    buf: [u8; 4096],
    len: usize,
    file: *mut libc::FILE,
}

impl Text {
    fn new(file: *mut libc::FILE) -> Text {
        Text {
            buf: [0; 4096],
            len: 0,
            file,
        }
    }

    fn flush(&mut self) {
        if self.len > 0 {
            // SAFETY: `file` is a valid stream (the caller's); the bytes are initialised.
            unsafe { libc::fwrite(self.buf.as_ptr().cast(), 1, self.len, self.file) };
            self.len = 0;
        }
    }

    fn push(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            if self.len == self.buf.len() {
                self.flush();
            }
            let n = bytes.len().min(self.buf.len() - self.len);
            self.buf[self.len..self.len + n].copy_from_slice(&bytes[..n]);
            self.len += n;
            bytes = &bytes[n..];
        }
    }

    fn num(&mut self, value: usize) {
        let mut digits = [0u8; 20];
        self.push(format_decimal(value as u64, &mut digits));
    }

    /// `value` right-aligned in 10 columns (`printf("%10u")`).
    fn num10(&mut self, value: usize) {
        let mut digits = [0u8; 20];
        let d = format_decimal(value as u64, &mut digits);
        for _ in d.len()..10 {
            self.push(b" ");
        }
        self.push(d);
    }
}

impl Drop for Text {
    fn drop(&mut self) {
        self.flush();
    }
}

/// The process's `stderr` stream.
fn stderr_stream() -> *mut libc::FILE {
    unsafe extern "C" {
        static mut stderr: *mut libc::FILE;
    }
    // SAFETY: glibc's `stderr` variable; read by value (the program may assign it).
    unsafe { core::ptr::read_volatile(&raw const stderr) }
}

/// glibc `malloc_stats`: prints glibc's summary to `stderr`, one arena:
///
/// ```text
/// Arena 0:
/// system bytes     =    2097152
/// in use bytes     =     163840
/// Total (incl. mmap):
/// system bytes     =    2359296
/// in use bytes     =     425984
/// max mmap regions =          0
/// max mmap bytes   =     262144
/// ```
///
/// "Arena 0" is `arena` and `uordblks`, the totals add `hblkhd` (large objects). The core
/// keeps no high-water marks: "max mmap regions" is 0 and "max mmap bytes" is the bytes
/// in large objects now.
///
/// # Safety
/// Always safe to call (not from inside an allocation).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn malloc_stats() {
    let m = mallinfo2_from(&spanalloc::stats());
    let mut t = Text::new(stderr_stream());
    t.push(b"Arena 0:\nsystem bytes     = ");
    t.num10(m.arena);
    t.push(b"\nin use bytes     = ");
    t.num10(m.uordblks);
    t.push(b"\nTotal (incl. mmap):\nsystem bytes     = ");
    t.num10(m.arena + m.hblkhd);
    t.push(b"\nin use bytes     = ");
    t.num10(m.uordblks + m.hblkhd);
    t.push(b"\nmax mmap regions = ");
    t.num10(m.hblks);
    t.push(b"\nmax mmap bytes   = ");
    t.num10(m.hblkhd);
    t.push(b"\n");
}

/// glibc `malloc_info`: writes glibc's XML summary to `file` and returns 0; `EINVAL` when
/// `options` is not 0 (or `file` is null). One heap; its `<sizes>` are the size classes
/// with free objects (`from` the previous class size + 1, `to` the class size, `total` the
/// free bytes, `count` the free objects); "rest" is `ordblks` and `fordblks`, "mmap" is
/// `hblks` and `hblkhd`, "system current" `arena`, "system max" and "aspace total" the
/// bytes mapped for spans less `hblkhd`.
///
/// # Safety
/// `file` is null or a valid output stream.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn malloc_info(options: c_int, file: *mut c_void) -> c_int {
    if options != 0 || file.is_null() {
        return libc::EINVAL;
    }
    let st = spanalloc::stats();
    let m = mallinfo2_from(&st);
    let max = st.mapped.saturating_sub(m.hblkhd);
    let mut t = Text::new(file.cast());
    t.push(b"<malloc version=\"1\">\n<heap nr=\"0\">\n<sizes>\n");
    let mut from = 1;
    for c in st.classes.iter().skip(1) {
        if c.object_size == 0 {
            continue;
        }
        if c.free_objects > 0 {
            t.push(b"  <size from=\"");
            t.num(from);
            t.push(b"\" to=\"");
            t.num(c.object_size);
            t.push(b"\" total=\"");
            t.num(c.free_objects * c.object_size);
            t.push(b"\" count=\"");
            t.num(c.free_objects);
            t.push(b"\"/>\n");
        }
        from = c.object_size + 1;
    }
    t.push(b"</sizes>\n");
    let totals = |t: &mut Text| {
        t.push(b"<total type=\"fast\" count=\"0\" size=\"0\"/>\n<total type=\"rest\" count=\"");
        t.num(m.ordblks);
        t.push(b"\" size=\"");
        t.num(m.fordblks);
        t.push(b"\"/>\n");
    };
    let system = |t: &mut Text| {
        t.push(b"<system type=\"current\" size=\"");
        t.num(m.arena);
        t.push(b"\"/>\n<system type=\"max\" size=\"");
        t.num(max);
        t.push(b"\"/>\n<aspace type=\"total\" size=\"");
        t.num(max);
        t.push(b"\"/>\n<aspace type=\"mprotect\" size=\"");
        t.num(max);
        t.push(b"\"/>\n");
    };
    totals(&mut t);
    system(&mut t);
    t.push(b"</heap>\n");
    totals(&mut t);
    t.push(b"<total type=\"mmap\" count=\"");
    t.num(m.hblks);
    t.push(b"\" size=\"");
    t.num(m.hblkhd);
    t.push(b"\"/>\n");
    system(&mut t);
    t.push(b"</malloc>\n");
    0
}
