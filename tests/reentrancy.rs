//! The allocator makes no nested allocation call while it serves one: a wrapper global
//! allocator counts its nesting depth per thread; any allocation spanalloc made through the
//! global allocator (a `Vec`, a `format!`, a thread-local with lazy init) would show as
//! depth 2. The workload covers every path: first use and exit of threads, refills,
//! give-backs, remote frees, large objects, realloc, stats and release.
//!
//! The C library's allocation functions of this process are spanalloc too, counted the same
//! way, so that anything C code allocates from inside spanalloc (the unwinder the heap
//! profiler captures stacks with, libgcc_s) shows as depth 2 as well. The second test runs
//! the workload with every allocation sampled.

use spanalloc::{SpanAlloc, raw};
use std::alloc::{GlobalAlloc, Layout};
use std::cell::Cell;
use std::ffi::c_void;
use std::sync::atomic::{AtomicUsize, Ordering};

struct Counting;

thread_local! {
    static DEPTH: Cell<usize> = const { Cell::new(0) };
}
static MAX_DEPTH: AtomicUsize = AtomicUsize::new(0);
static CALLS: AtomicUsize = AtomicUsize::new(0);

fn enter() {
    DEPTH.with(|d| {
        let n = d.get() + 1;
        d.set(n);
        MAX_DEPTH.fetch_max(n, Ordering::Relaxed);
    });
    CALLS.fetch_add(1, Ordering::Relaxed);
}

fn leave() {
    DEPTH.with(|d| d.set(d.get() - 1));
}

// SAFETY: forwards every call to SpanAlloc unchanged.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        enter();
        // SAFETY: forwarded.
        let p = unsafe { SpanAlloc.alloc(layout) };
        leave();
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        enter();
        // SAFETY: forwarded.
        unsafe { SpanAlloc.dealloc(ptr, layout) };
        leave();
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        enter();
        // SAFETY: forwarded.
        let p = unsafe { SpanAlloc.alloc_zeroed(layout) };
        leave();
        p
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        enter();
        // SAFETY: forwarded.
        let p = unsafe { SpanAlloc.realloc(ptr, layout, new_size) };
        leave();
        p
    }
}

#[global_allocator]
static A: Counting = Counting;

// The C allocation functions, as libspanalloc.so serves them (sizes rounded up to 16 bytes
// so that blocks are 16-byte aligned), counted like the Rust ones. The process's own C
// code (the C library, the unwinder) calls these instead of glibc's.

fn c_size(size: usize) -> Option<usize> {
    Some(size.checked_add(15)? & !15)
}

/// # Safety
/// C `malloc`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn malloc(size: usize) -> *mut c_void {
    enter();
    // SAFETY: 8 is a power of two.
    let p = c_size(size).map_or(std::ptr::null_mut(), |n| unsafe { raw::alloc(n, 8) });
    leave();
    p.cast()
}

/// # Safety
/// C `free`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn free(ptr: *mut c_void) {
    if !ptr.is_null() {
        enter();
        // SAFETY: per the caller, a block of ours.
        unsafe { raw::free(ptr.cast()) };
        leave();
    }
}

/// # Safety
/// C `calloc`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn calloc(n: usize, size: usize) -> *mut c_void {
    enter();
    let p = n
        .checked_mul(size)
        .and_then(c_size)
        // SAFETY: 8 is a power of two.
        .map_or(std::ptr::null_mut(), |t| unsafe { raw::alloc_zeroed(t, 8) });
    leave();
    p.cast()
}

/// # Safety
/// C `realloc`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn realloc(ptr: *mut c_void, size: usize) -> *mut c_void {
    if ptr.is_null() {
        // SAFETY: as `malloc`.
        return unsafe { malloc(size) };
    }
    if size == 0 {
        // SAFETY: per the caller.
        unsafe { free(ptr) };
        return std::ptr::null_mut();
    }
    enter();
    let p = c_size(size).map_or(std::ptr::null_mut(), |n| {
        // SAFETY: per the caller, a block of ours, aligned to 8.
        unsafe { raw::realloc(ptr.cast(), n, 8) }
    });
    leave();
    p.cast()
}

/// # Safety
/// C `posix_memalign`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn posix_memalign(out: *mut *mut c_void, align: usize, size: usize) -> i32 {
    if !align.is_power_of_two() || align < 8 {
        return libc::EINVAL;
    }
    enter();
    // SAFETY: a power of two.
    let p = unsafe { raw::alloc(size.max(1), align) };
    leave();
    if p.is_null() {
        return libc::ENOMEM;
    }
    // SAFETY: per the caller, a place for the pointer.
    unsafe { *out = p.cast() };
    0
}

/// # Safety
/// C `aligned_alloc`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn aligned_alloc(align: usize, size: usize) -> *mut c_void {
    let mut p = std::ptr::null_mut();
    // SAFETY: `p` is a place for the pointer.
    unsafe { posix_memalign(&mut p, align.max(8), size) };
    p
}

/// # Safety
/// C `memalign`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memalign(align: usize, size: usize) -> *mut c_void {
    // SAFETY: as `aligned_alloc`.
    unsafe { aligned_alloc(align, size) }
}

/// # Safety
/// C `malloc_usable_size`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn malloc_usable_size(ptr: *mut c_void) -> usize {
    if ptr.is_null() {
        return 0;
    }
    // SAFETY: per the caller, a live block of ours.
    unsafe { raw::usable_size(ptr.cast()) }
}

/// The tests share the depth counter: one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn no_nested_allocation_while_serving_one() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    workload();
}

/// Every allocation sampled (mean 1 byte): stack capture and the profiler's table make no
/// allocation, Rust or C, while an allocation is served, and the sampling path is never
/// entered again from inside itself.
#[test]
fn sampling_every_allocation_allocates_nothing() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    spanalloc::profiling::start(1);
    workload();
    // C allocations too.
    for i in 1..2000usize {
        // SAFETY: C allocation functions, used as C would.
        unsafe {
            let p = libc::malloc(i);
            let q = libc::realloc(p, i * 3);
            libc::free(q);
        }
    }
    let profile = spanalloc::profiling::heap_profile();
    spanalloc::profiling::stop();
    assert!(profile.alloc_bytes() > 0.0);
    assert_eq!(
        profile.reentered, 0,
        "the sampling path was entered from inside itself"
    );
    assert_eq!(profile.dropped, 0);
}

fn workload() {
    MAX_DEPTH.store(0, Ordering::Relaxed);
    CALLS.store(0, Ordering::Relaxed);
    let threads: Vec<_> = (0..6)
        .map(|t| {
            std::thread::spawn(move || {
                let mut v: Vec<Vec<u8>> = Vec::new();
                for i in 0..20_000usize {
                    v.push(vec![t as u8; (i * 131) % 40_000]);
                    if i % 3 == 0 {
                        v.swap_remove(i % v.len());
                    }
                }
                let mut grow = Vec::new();
                for i in 0..300_000u32 {
                    grow.push(i);
                }
                (v, grow.len())
            })
        })
        .collect();
    // Frees on another thread than the allocating one: remote frees and span releases.
    let results: Vec<_> = threads.into_iter().map(|h| h.join().unwrap()).collect();
    drop(results);
    let big = vec![0u8; 50 << 20];
    drop(big);
    spanalloc::flush_thread_cache();
    let _ = spanalloc::stats();
    spanalloc::release_free_memory();
    assert!(CALLS.load(Ordering::Relaxed) > 100_000);
    assert_eq!(
        MAX_DEPTH.load(Ordering::Relaxed),
        1,
        "spanalloc allocated while allocating"
    );
}
