//! The stress test of `tests/stress.rs`, standalone, in the shape of mimalloc's
//! test-stress:
//!
//! ```text
//! cargo run --release --example stress -- [THREADS [SCALE [ITER]]]
//! THREADS=8 SCALE=10 ITER=20 cargo run --release --example stress
//! ```
//!
//! Defaults: 8 threads, scale 10, 10 rounds. Exits non-zero on corruption (a panic) or when
//! more spans are in use after everything was freed than before the run (the runtime's own
//! few live objects; `tests/stress.rs` checks for exactly zero, in a process where nothing
//! else is live).

#[path = "../tests/common/stress_impl.rs"]
mod stress_impl;

#[global_allocator]
static A: spanalloc::SpanAlloc = spanalloc::SpanAlloc;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let params = stress_impl::Params {
        threads: stress_impl::param(&args, 0, "THREADS", 8),
        scale: stress_impl::param(&args, 1, "SCALE", 10),
        iter: stress_impl::param(&args, 2, "ITER", 10),
    };
    drop(args);
    // What the runtime itself keeps live (the first spawn makes some per-thread records of
    // the main thread): measured after a warm-up spawn, as the baseline.
    std::thread::spawn(|| ()).join().unwrap();
    spanalloc::flush_thread_cache();
    spanalloc::release_free_memory();
    let before = spanalloc::internals::heap().page_heap_stats();
    let start = std::time::Instant::now();
    let threads = stress_impl::run(params);
    let elapsed = start.elapsed();
    spanalloc::flush_thread_cache();
    // What the central lists keep for reuse (whole batches of free objects, a spare span per
    // class) is free memory too: it goes back before the count.
    spanalloc::release_free_memory();
    let heap = spanalloc::internals::heap();
    heap.check_invariants();
    let st = heap.page_heap_stats();
    // Printed with eprintln: stderr has no buffer to allocate.
    eprintln!(
        "stress: {params:?}: {threads} threads in {:.2} s",
        elapsed.as_secs_f64()
    );
    eprintln!("stress: page heap before: {before:?}");
    eprintln!("stress: page heap after:  {st:?}");
    if st.small_spans > before.small_spans || st.large_in_use > before.large_in_use {
        eprintln!("stress: FAILED: spans still in use after everything was freed");
        std::process::exit(2);
    }
    eprintln!("stress: ok");
}
