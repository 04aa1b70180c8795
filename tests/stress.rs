//! The stress test (see `tests/common/stress_impl.rs`, also runnable as
//! `cargo run --release --example stress -- THREADS SCALE ITER`): 8 threads, re-created
//! every round, passing objects through shared slots; no corruption, and at the end every
//! span is back in the page heap.
//!
//! "Every span is back" needs a process where nothing else is live. A libtest process
//! always has live allocations of its own (test names, channels, output buffers), so the
//! workload runs in a child process of this binary *before `main`*: a function in
//! `.init_array` sees the child's environment variable, runs the stress, checks the page
//! heap and ends the process with `_exit`, before the test harness allocates anything.

mod common;

#[path = "common/stress_impl.rs"]
mod stress_impl;

use spanalloc::SpanAlloc;
use std::time::Duration;

#[global_allocator]
static A: SpanAlloc = SpanAlloc;

/// The CI parameters: 8 threads, moderate scale, 10 rounds.
const PARAMS: stress_impl::Params = stress_impl::Params {
    threads: 8,
    scale: 5,
    iter: 10,
};

const CHILD_ENV: &str = "SPANALLOC_STRESS_CHILD";

/// Runs in every process of this binary before `main`; does something only in the child.
#[used]
#[unsafe(link_section = ".init_array")]
static RUN_CHILD_BEFORE_MAIN: extern "C" fn() = run_child_before_main;

extern "C" fn run_child_before_main() {
    if std::env::var_os(CHILD_ENV).is_none() {
        return;
    }
    let start = std::time::Instant::now();
    let threads = stress_impl::run(PARAMS);
    spanalloc::flush_thread_cache();
    // What the central lists keep for reuse (whole batches, a spare span) goes back too.
    spanalloc::release_free_memory();
    let heap = spanalloc::internals::heap();
    heap.check_invariants();
    let st = heap.page_heap_stats();
    // stderr is unbuffered: printing allocates nothing, so it cannot disturb the counts
    // (which were read above anyway).
    eprintln!(
        "stress: {PARAMS:?}, {threads} threads in {:?}; page heap {st:?}",
        start.elapsed()
    );
    let code = if st.small_spans == 0 && st.large_in_use == 0 && st.free == st.mapped {
        0
    } else {
        eprintln!("stress: spans still in use after everything was freed");
        2
    };
    // SAFETY: ends the process at once, without running the test harness.
    unsafe { libc::_exit(code) };
}

#[test]
fn stress_eight_threads_then_every_span_is_back() {
    use std::process::{Command, Stdio};
    let _one = one_at_a_time();
    let exe = std::env::current_exe().unwrap();
    let mut child = Command::new(exe)
        .env(CHILD_ENV, "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Hang detection only (the run takes seconds).
    let deadline = std::time::Instant::now() + Duration::from_secs(300);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break Some(st);
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stderr}");
    let status = status.expect("stress child hung (killed after 300 s)");
    assert!(
        status.success(),
        "stress child failed: {status:?}\n{stderr}"
    );
    assert!(
        stderr.contains("stress: "),
        "the child ran the stress workload"
    );
}

/// The tests of this binary run one at a time: the in-process one compares the bytes live
/// before and after its run, which another test allocating meanwhile would change.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

/// Bytes in objects the process holds (small and large), as spanalloc's statistics count
/// them, with this thread's cache flushed (threads that exited are flushed already).
fn live_bytes() -> (usize, usize) {
    spanalloc::flush_thread_cache();
    let st = spanalloc::stats();
    (st.in_use, st.large_in_use)
}

#[test]
fn stress_in_process_with_invariants() {
    // A smaller run inside the test process too (the harness's allocations live alongside).
    // Every object's contents are checked on every free, resize and hand-over (a corrupted
    // one panics its thread, and `run` fails); after each round the invariants hold and the
    // bytes live are exactly what they were before: nothing the workload allocated is left.
    let _one = one_at_a_time();
    // The harness records the other test's result when that test ends, just before this one
    // gets the lock: let it finish.
    std::thread::sleep(std::time::Duration::from_millis(100));
    // A first spawn and join sets up what std keeps for good (thread ids, output capture).
    stress_impl::run(stress_impl::Params {
        threads: 1,
        scale: 1,
        iter: 1,
    });
    let before = live_bytes();
    for round in 0..3 {
        let p = stress_impl::Params {
            threads: 4,
            scale: 1,
            iter: 2,
        };
        assert_eq!(stress_impl::run(p), 8, "round {round}");
        spanalloc::internals::heap().check_invariants();
        assert_eq!(
            live_bytes(),
            before,
            "round {round}: (in use, of which large) after the stress, against before"
        );
    }
    let _ = common::under_asan();
}
