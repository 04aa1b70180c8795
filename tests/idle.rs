//! Idle threads give their caches back without their help: eight threads free a working set
//! (small objects of sixteen classes, and large ones that go to the stash) and then block; what
//! their caches keep past the bins' 1 MiB goes back to the OS when another thread calls
//! `release_free_memory()`, and on its own after the decay time with the background release.
//! Resident memory is read from /proc.

#[global_allocator]
static A: spanalloc::SpanAlloc = spanalloc::SpanAlloc;

use std::alloc::{Layout, alloc, dealloc};
use std::sync::mpsc;
use std::time::{Duration, Instant};

mod common;
use common::rss;

const THREADS: usize = 8;
/// What each thread allocates, touches and frees: 384 KiB in each of sixteen classes (its
/// cache keeps 4 MiB of them, at most 256 KiB a class), and four large objects of 768 KiB
/// (stashed when freed, up to the stash's four slots).
const SMALL: [usize; 16] = [
    16, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048, 3072, 4096,
];
const SMALL_BYTES_PER_CLASS: usize = 384 << 10;
const LARGE: usize = 768 << 10;
const LARGE_COUNT: usize = 4;
/// What an idle thread may still hold afterwards: its bins' 1 MiB, with slack for the spans
/// those objects keep partly in use.
const IDLE_BOUND: usize = 2 << 20;

const CHILD_TIMEOUT: Duration = Duration::from_secs(120);

/// The resident memory the idle threads may leave: their bins, from `start`. Under
/// AddressSanitizer the shadow of every page touched stays resident whatever the allocator
/// gives back (an eighth of it, and more), so there the bound is half of what the threads
/// held while idle (`idle`); without the reclaim they keep about four fifths of it.
fn kept_bound(start: usize, idle: usize) -> usize {
    if common::under_asan() {
        start + (idle - start) / 2
    } else {
        start + THREADS * IDLE_BOUND
    }
}

/// Starts the threads; each frees its working set, says so, and then blocks until the
/// returned sender is dropped.
fn idle_threads() -> (Vec<std::thread::JoinHandle<()>>, mpsc::Sender<()>) {
    let (done_tx, done_rx) = mpsc::channel();
    let (stop_tx, stop_rx) = mpsc::channel::<()>();
    let stop_rx = std::sync::Arc::new(std::sync::Mutex::new(stop_rx));
    let handles = (0..THREADS)
        .map(|_| {
            let done = done_tx.clone();
            let stop = stop_rx.clone();
            std::thread::spawn(move || {
                let mut held = Vec::with_capacity(100_000);
                for &size in &SMALL {
                    for _ in 0..SMALL_BYTES_PER_CLASS / size {
                        held.push(Layout::from_size_align(size, 8).unwrap());
                    }
                }
                for _ in 0..LARGE_COUNT {
                    held.push(Layout::from_size_align(LARGE, 8).unwrap());
                }
                let ptrs: Vec<*mut u8> = held
                    .iter()
                    .map(|&layout| {
                        // SAFETY: non-zero layouts.
                        let p = unsafe { alloc(layout) };
                        assert!(!p.is_null());
                        // SAFETY: touch every page of the object.
                        unsafe { p.write_bytes(1, layout.size()) };
                        p
                    })
                    .collect();
                for (&p, &layout) in ptrs.iter().zip(&held) {
                    // SAFETY: allocated above, freed once.
                    unsafe { dealloc(p, layout) };
                }
                drop(ptrs);
                drop(held);
                done.send(()).unwrap();
                // Blocks, making no allocator call, until the test is over.
                let _ = stop.lock().unwrap().recv();
            })
        })
        .collect();
    for _ in 0..THREADS {
        done_rx.recv().unwrap();
    }
    (handles, stop_tx)
}

fn join(threads: (Vec<std::thread::JoinHandle<()>>, mpsc::Sender<()>)) {
    drop(threads.1);
    for h in threads.0 {
        h.join().unwrap();
    }
}

#[test]
fn release_free_memory_reaches_idle_threads_caches() {
    common::child_test(
        "release_free_memory_reaches_idle_threads_caches",
        CHILD_TIMEOUT,
        || {
            spanalloc::set_decay_ms(-1); // nothing goes back on its own
            spanalloc::release_free_memory();
            let start = rss();
            let threads = idle_threads();
            let idle = rss();
            let freed = spanalloc::release_free_memory();
            let after = rss();
            eprintln!(
                "start {start}, idle {idle}, after release {after} ({freed} bytes given back)"
            );
            // Each thread's cache was full (4 MiB of small objects) and its stash too.
            assert!(
                idle > start + THREADS * (5 << 20),
                "the threads' caches held their working sets: start {start}, idle {idle}"
            );
            assert!(
                after < kept_bound(start, idle),
                "idle threads keep at most their bins: start {start}, idle {idle}, after {after}"
            );
            join(threads);
        },
    );
}

#[test]
fn the_background_release_reaches_idle_threads_caches_after_the_decay_time() {
    common::child_test(
        "the_background_release_reaches_idle_threads_caches_after_the_decay_time",
        CHILD_TIMEOUT,
        || {
            spanalloc::set_decay_ms(100);
            let start = rss();
            let threads = idle_threads();
            let idle = rss();
            assert!(
                idle > start + THREADS * (5 << 20),
                "the threads' caches held their working sets: start {start}, idle {idle}"
            );
            assert!(spanalloc::start_background_release());
            // From here on this thread makes no allocator call: it sleeps and reads its RSS
            // with raw system calls.
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                std::thread::sleep(Duration::from_millis(50));
                let now = rss();
                if now < kept_bound(start, idle) {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "RSS stayed at {now} (start {start}, idle {idle})"
                );
            }
            join(threads);
        },
    );
}
