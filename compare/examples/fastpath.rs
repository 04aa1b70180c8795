//! The fast-path harness: `n` malloc+free pairs of one size through an allocator's
//! `GlobalAlloc` methods, each call made through a non-inlined shim (as `__rust_alloc`
//! is). Run under `valgrind --tool=callgrind` at two values of `n`; the difference in
//! instructions divided by the difference in `n` is the cost of one pair, and the `empty`
//! allocator (shims that do nothing) gives the loop's own share. `scripts/fastpath.sh` does
//! all of that and prints the table.
//!
//! A second form, `inline`, calls the `GlobalAlloc` methods directly with a 64-byte layout
//! known at compile time, as a Rust program sees them when the global allocator is inlined
//! into it (LTO): spanalloc's fast path folds to its essentials, while the C allocators stay
//! calls.
//!
//! A third form, `spanalloc-c`, calls `raw::alloc` and `raw::free` (no size: the page-map
//! path), as `libspanalloc.so`'s `malloc` and `free` do.
//!
//! Usage: `fastpath <spanalloc|spanalloc-c|system|mimalloc|jemalloc|empty> <pairs> [size|inline]`
//!
//! `mimalloc` is the line this build links: v3, the `mimalloc` crate's default (v2 with
//! `--features mimalloc-v2`).

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;

/// An allocator that hands out one static block and does nothing: the harness's baseline.
struct Empty;

static mut BLOCK: [u64; 512] = [0; 512];

// SAFETY: only used by this harness, single-threaded; never frees or reuses anything.
unsafe impl GlobalAlloc for Empty {
    unsafe fn alloc(&self, _layout: Layout) -> *mut u8 {
        (&raw mut BLOCK).cast()
    }
    unsafe fn dealloc(&self, _ptr: *mut u8, _layout: Layout) {}
}

macro_rules! shims {
    ($alloc_name:ident, $dealloc_name:ident, $a:expr) => {
        #[inline(never)]
        fn $alloc_name(layout: Layout) -> *mut u8 {
            // SAFETY: a non-zero layout.
            unsafe { GlobalAlloc::alloc(&$a, layout) }
        }
        #[inline(never)]
        fn $dealloc_name(ptr: *mut u8, layout: Layout) {
            // SAFETY: `ptr` came from the matching alloc shim with `layout`.
            unsafe { GlobalAlloc::dealloc(&$a, ptr, layout) }
        }
    };
}

shims!(span_alloc, span_dealloc, spanalloc::SpanAlloc);
shims!(sys_alloc, sys_dealloc, System);
shims!(mi_alloc, mi_dealloc, mimalloc::MiMalloc);
shims!(je_alloc, je_dealloc, tikv_jemallocator::Jemalloc);
shims!(empty_alloc, empty_dealloc, Empty);

/// The C form: what `libspanalloc.so`'s `malloc` and `free` call (`free` has no size, so it
/// finds the span in the page map).
#[inline(never)]
fn c_alloc(layout: Layout) -> *mut u8 {
    // SAFETY: a power-of-two alignment.
    unsafe { spanalloc::raw::alloc(layout.size(), layout.align()) }
}
#[inline(never)]
fn c_free(ptr: *mut u8, _layout: Layout) {
    // SAFETY: from `c_alloc`, freed once.
    unsafe { spanalloc::raw::free(ptr) }
}

type AllocFn = fn(Layout) -> *mut u8;
type DeallocFn = fn(*mut u8, Layout);

#[inline(never)]
fn pairs(n: usize, layout: Layout, alloc: AllocFn, dealloc: DeallocFn) {
    for _ in 0..n {
        let p = black_box(alloc(layout));
        dealloc(p, layout);
    }
}

/// `n` pairs with a constant 64-byte layout through `a`'s methods, free to inline.
#[inline(never)]
fn pairs_inline<A: GlobalAlloc>(a: &A, n: usize) {
    const LAYOUT: Layout = match Layout::from_size_align(64, 8) {
        Ok(l) => l,
        Err(_) => panic!(),
    };
    for _ in 0..n {
        // SAFETY: a non-zero layout; the pointer is freed once with it.
        unsafe {
            let p = black_box(a.alloc(LAYOUT));
            a.dealloc(p, LAYOUT);
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let which = args.get(1).map(String::as_str).unwrap_or("spanalloc");
    let n: usize = args
        .get(2)
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    if args.get(3).map(String::as_str) == Some("inline") {
        let run = |n| match which {
            "spanalloc" => pairs_inline(&spanalloc::SpanAlloc, n),
            "system" => pairs_inline(&System, n),
            "mimalloc" => pairs_inline(&mimalloc::MiMalloc, n),
            "jemalloc" => pairs_inline(&tikv_jemallocator::Jemalloc, n),
            _ => pairs_inline(&Empty, n),
        };
        run(16);
        run(n);
        return;
    }
    let size: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(64);
    let layout = Layout::from_size_align(size, 8).unwrap();
    let (a, d): (AllocFn, DeallocFn) = match which {
        "spanalloc" => (span_alloc, span_dealloc),
        "spanalloc-c" => (c_alloc, c_free),
        "system" => (sys_alloc, sys_dealloc),
        "mimalloc" => (mi_alloc, mi_dealloc),
        "jemalloc" => (je_alloc, je_dealloc),
        "empty" => (empty_alloc, empty_dealloc),
        other => {
            eprintln!("unknown allocator {other}");
            std::process::exit(2);
        }
    };
    // Warm up: the first pair takes the slow path (thread set-up, a span).
    pairs(16, layout, a, d);
    pairs(n, layout, a, d);
}
