//! The allocator makes no nested allocation call while it serves one: a wrapper global
//! allocator counts its nesting depth per thread; any allocation spanalloc made through the
//! global allocator (a `Vec`, a `format!`, a thread-local with lazy init) would show as
//! depth 2. The workload covers every path: first use and exit of threads, refills,
//! give-backs, remote frees, large objects, realloc, stats and release.
//!
//! The second test runs the workload with every allocation sampled by the heap profiler.
//! (What C code allocates from inside spanalloc, such as the unwinder the profiler captures
//! stacks with, is checked under `LD_PRELOAD` in `preload/tests/c_program.rs`: a test binary
//! that defined `malloc` itself could not run under AddressSanitizer.)

use spanalloc::SpanAlloc;
use std::alloc::{GlobalAlloc, Layout};
use std::cell::Cell;
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

/// The tests share the depth counter: one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn no_nested_allocation_while_serving_one() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    workload();
}

/// Every allocation sampled (mean 1 byte): stack capture and the profiler's table make no
/// allocation while an allocation is served, and the sampling path is never entered again
/// from inside itself.
#[test]
fn sampling_every_allocation_allocates_nothing() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    spanalloc::profiling::start(1);
    workload();
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
                    // At most 2 000 live (40 MiB a thread): the suite stays under 1 GiB.
                    if i % 3 == 0 || v.len() > 2000 {
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
