//! Fragmentation: a million small objects, every other one freed, then the rest. Every span
//! goes back to the page heap and resident memory falls.

#[global_allocator]
static A: spanalloc::SpanAlloc = spanalloc::SpanAlloc;

use std::alloc::{Layout, alloc, dealloc};

fn rss() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: usize = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    // SAFETY: sysconf has no preconditions.
    pages * unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize
}

#[test]
fn every_span_returns_after_interleaved_frees() {
    spanalloc::set_decay_ms(0);
    let layouts: Vec<Layout> = [24usize, 64, 100, 256, 500]
        .iter()
        .map(|&s| Layout::from_size_align(s, 8).unwrap())
        .collect();
    spanalloc::flush_thread_cache();
    let base = spanalloc::stats();
    let start_rss = rss();
    let mut ptrs: Vec<(*mut u8, Layout)> = Vec::with_capacity(1_000_000);
    for i in 0..1_000_000 {
        let layout = layouts[i % layouts.len()];
        // SAFETY: non-zero layout.
        let p = unsafe { alloc(layout) };
        assert!(!p.is_null());
        // SAFETY: a live object of `layout.size()` bytes.
        unsafe { p.write_bytes(7, layout.size()) };
        ptrs.push((p, layout));
    }
    let peak_rss = rss();
    let full = spanalloc::stats();
    for (p, layout) in ptrs.iter().step_by(2) {
        // SAFETY: allocated above, freed once.
        unsafe { dealloc(*p, *layout) };
    }
    let half = spanalloc::stats();
    assert!(half.in_use < full.in_use);
    for (p, layout) in ptrs.iter().skip(1).step_by(2) {
        // SAFETY: allocated above, freed once.
        unsafe { dealloc(*p, *layout) };
    }
    drop(ptrs);
    spanalloc::flush_thread_cache();
    let end = spanalloc::stats();
    let spans_before: usize = base.classes.iter().map(|c| c.spans).sum();
    let spans_after: usize = end.classes.iter().map(|c| c.spans).sum();
    assert_eq!(
        spans_after, spans_before,
        "every span made for the objects went back"
    );
    assert_eq!(end.in_use, base.in_use);
    spanalloc::internals::heap().check_invariants();
    let end_rss = rss();
    eprintln!("rss start {start_rss} peak {peak_rss} end {end_rss}");
    assert!(
        end_rss < start_rss + (peak_rss - start_rss) / 10,
        "resident memory fell: start {start_rss} peak {peak_rss} end {end_rss}"
    );
}
