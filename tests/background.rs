//! With `start_background_release()`, resident memory falls after the program frees what it
//! allocated even though it then makes no allocator call at all: it only sleeps (and reads
//! its RSS with raw system calls into a stack buffer, which allocate nothing).

#[global_allocator]
static A: spanalloc::SpanAlloc = spanalloc::SpanAlloc;

use std::alloc::{Layout, alloc, dealloc};
use std::time::{Duration, Instant};

mod common;
use common::rss;

#[test]
fn a_sleeping_program_gets_its_memory_back() {
    spanalloc::set_decay_ms(40);
    assert!(spanalloc::start_background_release());
    assert!(!spanalloc::start_background_release(), "started once");
    let start = rss();
    let small = Layout::from_size_align(512, 8).unwrap();
    let large = Layout::from_size_align(2 << 20, 8).unwrap();
    let mut ptrs: Vec<(*mut u8, Layout)> = Vec::with_capacity(300_000);
    for i in 0..300_000 {
        let layout = if i % 2000 == 0 { large } else { small };
        // SAFETY: non-zero layouts.
        let p = unsafe { alloc(layout) };
        assert!(!p.is_null());
        // SAFETY: touch every page of the object.
        unsafe { p.write_bytes(1, layout.size()) };
        ptrs.push((p, layout));
    }
    let peak = rss();
    assert!(peak > start + (200 << 20), "the test made memory resident");
    for (p, layout) in ptrs.drain(..) {
        // SAFETY: allocated above, freed once.
        unsafe { dealloc(p, layout) };
    }
    drop(ptrs);
    // From here on: no allocator call on this thread, only sleeping and raw reads.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        std::thread::sleep(Duration::from_millis(20));
        let now = rss();
        if now < start + (peak - start) / 10 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "RSS stayed at {now} (start {start}, peak {peak})"
        );
    }
}
