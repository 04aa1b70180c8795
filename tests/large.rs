//! Large objects from 64 KiB to 64 MiB, 10 GiB moved in total: spans are reused, so the
//! mapped footprint stays bounded.

#[global_allocator]
static A: spanalloc::SpanAlloc = spanalloc::SpanAlloc;

use std::alloc::{Layout, alloc, dealloc};

#[test]
fn ten_gib_of_large_objects_keeps_the_footprint_bounded() {
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut live: Vec<(*mut u8, Layout)> = Vec::new();
    let mut moved = 0usize;
    let mut peak_mapped = 0;
    while moved < 10 << 30 {
        // 64 KiB .. 64 MiB, log-uniform.
        let shift = 16 + next() % 11;
        let size = (1usize << shift) + (next() as usize % (1 << shift));
        let size = size.min(64 << 20);
        let layout = Layout::from_size_align(size, 8).unwrap();
        // SAFETY: non-zero layout.
        let p = std::hint::black_box(unsafe { alloc(layout) });
        assert!(!p.is_null());
        // SAFETY: touch the first and last byte.
        unsafe {
            p.write(1);
            p.add(size - 1).write(1);
        }
        live.push((p, layout));
        moved += size;
        while live.len() > 4 {
            let (q, l) = live.swap_remove((next() % live.len() as u64) as usize);
            // SAFETY: allocated with `l`, freed once.
            unsafe { dealloc(q, l) };
        }
        peak_mapped = peak_mapped.max(spanalloc::internals::heap().page_heap_stats().mapped);
    }
    for (q, l) in live {
        // SAFETY: allocated with `l`, freed once.
        unsafe { dealloc(q, l) };
    }
    // At most 4 live objects of at most 64 MiB: a bound of a few times that.
    assert!(peak_mapped <= 1 << 30, "mapped peaked at {peak_mapped}");
    spanalloc::internals::heap().check_invariants();
}

#[test]
fn a_large_object_freed_without_its_size_goes_to_the_stash_without_a_lock() {
    std::thread::spawn(|| {
        for size in [32 << 10, 100_000, 256 << 10, 1 << 20] {
            // SAFETY: 8 is a power of two.
            let p = unsafe { spanalloc::raw::alloc(size, 8) };
            assert!(!p.is_null());
            // SAFETY: a large object of ours, given up here: the stash's short path (the
            // record found from the first page's small-object word) takes it.
            let stashed = unsafe { spanalloc::raw::free_large_fast(p) };
            assert!(stashed, "{size} B: the stash's short path");
            // SAFETY: 8 is a power of two.
            let q = unsafe { spanalloc::raw::alloc(size, 8) };
            assert_eq!(q, p, "{size} B: the stashed span, taken back");
            // SAFETY: ours, freed once.
            unsafe { spanalloc::raw::free(q) };
        }
    })
    .join()
    .unwrap();
}
