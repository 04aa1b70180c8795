//! `spanalloc::stats()`: its parts add up to what is mapped, and its bytes in use follow
//! what the program holds, counted at class size.

#[global_allocator]
static A: spanalloc::SpanAlloc = spanalloc::SpanAlloc;

use spanalloc::size_class::class_for;
use std::alloc::{Layout, alloc, dealloc};

#[test]
fn stats_identities_hold() {
    let sizes: Vec<usize> = (0..3000).map(|i| 1 + (i * 97) % 20_000).collect();
    let large = [40_000usize, 100_000, 1 << 20, (3 << 20) + 5];
    let mut held = Vec::with_capacity(sizes.len() + large.len());
    spanalloc::flush_thread_cache();
    let before = spanalloc::stats();
    assert_eq!(before.parts(), before.mapped, "{before:#?}");

    let mut expected = 0;
    for &s in sizes.iter().chain(large.iter()) {
        let layout = Layout::from_size_align(s, 8).unwrap();
        // SAFETY: non-zero layout.
        let p = unsafe { alloc(layout) };
        assert!(!p.is_null());
        held.push((p, layout));
        expected += match class_for(s, 8) {
            Some(class) => class.size(),
            None => s.div_ceil(8192) * 8192,
        };
    }
    spanalloc::flush_thread_cache();
    let during = spanalloc::stats();
    assert_eq!(during.parts(), during.mapped, "{during:#?}");
    assert_eq!(during.thread_cache, 0, "flushed");
    assert_eq!(
        during.in_use - before.in_use,
        expected,
        "bytes in use follow what the test holds, at class size"
    );
    let per_class: usize = during
        .classes
        .iter()
        .map(|c| c.objects_in_use * c.object_size)
        .sum();
    assert_eq!(
        per_class + during.large_in_use,
        during.in_use,
        "classes add up"
    );
    assert!(during.metadata > 0);

    // Unflushed: the calling thread's own cache is still exact.
    let (p, layout) = held.pop().unwrap();
    // SAFETY: allocated above with `layout`, freed once.
    unsafe { dealloc(p, layout) };
    let small = Layout::from_size_align(100, 8).unwrap();
    // SAFETY: non-zero layout.
    let q = std::hint::black_box(unsafe { alloc(small) });
    let unflushed = spanalloc::stats();
    assert_eq!(unflushed.parts(), unflushed.mapped, "{unflushed:#?}");
    assert_eq!(
        unflushed.in_use - before.in_use,
        expected - (3 << 20) - 8192 + class_for(100, 8).unwrap().size()
    );

    // SAFETY: allocated above, freed once.
    unsafe { dealloc(q, small) };
    for (p, layout) in held.drain(..) {
        // SAFETY: allocated above with `layout`, freed once.
        unsafe { dealloc(p, layout) };
    }
    spanalloc::flush_thread_cache();
    let after = spanalloc::stats();
    assert_eq!(after.parts(), after.mapped, "{after:#?}");
    assert_eq!(
        after.in_use, before.in_use,
        "everything freed is no longer in use"
    );
}
