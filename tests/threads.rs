//! 200 short-lived threads each allocate and exit; their caches are flushed at exit and the
//! memory is reused, so the mapped footprint stays bounded.

#[global_allocator]
static A: spanalloc::SpanAlloc = spanalloc::SpanAlloc;

use spanalloc::internals::size_class::class_of;

/// A size whose class nothing but these threads uses.
const MARKER_SIZE: usize = 10_000;

#[test]
fn memory_of_exited_threads_is_reused() {
    let work = || {
        let v: Vec<Vec<u8>> = (0..2000).map(|i| vec![i as u8; 16 + i % 2000]).collect();
        let marked: Vec<Vec<u8>> = (0..10).map(|i| vec![i; MARKER_SIZE]).collect();
        // Keep one marker object alive past the thread's exit: the rest must still be given
        // back by the exit flush.
        let survivor = vec![7u8; MARKER_SIZE];
        (
            v.iter().map(|x| x.len()).sum::<usize>() + marked.len(),
            survivor,
        )
    };
    let marker = class_of(MARKER_SIZE).unwrap().index();
    // Warm up, so the baseline includes one round of everything.
    let mut survivors = Vec::new();
    for _ in 0..4 {
        survivors.push(std::thread::spawn(work).join().unwrap().1);
    }
    let base = spanalloc::internals::heap().page_heap_stats().mapped;
    for _ in 0..200 {
        survivors.push(std::thread::spawn(work).join().unwrap().1);
        let stats = spanalloc::stats();
        // Free objects of exited threads' caches would count as in use (no snapshot sees
        // into another thread's cache): exactly the survivors means every cache was flushed.
        assert_eq!(
            stats.classes[marker].objects_in_use,
            survivors.len(),
            "an exited thread's cache still holds objects of the marker class"
        );
    }
    assert!(survivors.iter().all(|s| s.iter().all(|&b| b == 7)));
    let after = spanalloc::internals::heap().page_heap_stats();
    assert!(
        after.mapped <= base + (64 << 20),
        "mapped grew from {base} to {} over 200 threads",
        after.mapped
    );
}
