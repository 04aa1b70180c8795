//! `fork` in a multi-threaded program: 8 threads allocate and free (small, large, across
//! threads, flushing caches and releasing memory, so every allocator lock is busy) while
//! the main thread forks 100 times. Every child allocates, frees and exits 0 within 5 s.
//! CI runs it again with `SPANALLOC_PROFILE=1`: every allocation is sampled, so the forks
//! also land while threads hold the heap profiler's table lock.

mod common;

use spanalloc::{SpanAlloc, raw};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

#[global_allocator]
static A: SpanAlloc = SpanAlloc;

const THREADS: usize = 8;
const FORKS: usize = 100;
const CHILD_DEADLINE: Duration = Duration::from_secs(5);

/// What a forked child does: only the allocator (no locks of std's), then `_exit`.
fn child_work() -> ! {
    let mut ok = true;
    let mut ptrs = [core::ptr::null_mut::<u8>(); 64];
    for round in 0..20usize {
        for (i, slot) in ptrs.iter_mut().enumerate() {
            let size = match i % 4 {
                0 => 16 + i,
                1 => 1000 + i * 10,
                2 => 20_000,
                _ => 100_000 + round * 4096,
            };
            // SAFETY: 8 is a power of two.
            let p = unsafe { raw::alloc(size, 8) };
            if p.is_null() {
                ok = false;
                break;
            }
            // SAFETY: a new block of `size` bytes.
            unsafe {
                p.write_bytes(i as u8, size);
            }
            *slot = p;
        }
        for (i, slot) in ptrs.iter_mut().enumerate() {
            if slot.is_null() {
                continue;
            }
            // SAFETY: a live block of ours, written above, freed once.
            unsafe {
                ok &= slot.read() == i as u8;
                raw::free(*slot);
            }
            *slot = core::ptr::null_mut();
        }
    }
    // Rust collections too.
    let v: Vec<String> = (0..1000).map(|i| i.to_string()).collect();
    ok &= v.iter().map(|s| s.len()).sum::<usize>() == 2890;
    drop(v);
    spanalloc::flush_thread_cache();
    // SAFETY: `_exit` ends the process without running atexit handlers or destructors.
    unsafe { libc::_exit(if ok { 0 } else { 3 }) }
}

/// Waits for `pid` up to `deadline`; kills it on timeout. Returns its wait status, or
/// `None` if it hung.
fn wait_with_timeout(pid: libc::pid_t, deadline: Duration) -> Option<i32> {
    let start = Instant::now();
    loop {
        let mut status = 0;
        // SAFETY: `pid` is our child; `status` is a valid out-pointer.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if r == pid {
            return Some(status);
        }
        assert!(
            r == 0,
            "waitpid failed: {}",
            std::io::Error::last_os_error()
        );
        if start.elapsed() > deadline {
            // SAFETY: our own child, still running.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, &mut status, 0);
            }
            return None;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// One worker: allocations of every kind, cross-thread frees through `shared`, cache
/// flushes and releases, until `stop`.
fn worker(t: usize, stop: &AtomicBool, shared: &[AtomicUsize], ops: &AtomicUsize) {
    let mut rng = common::Rng::new(t as u64 + 1);
    let mut mine: Vec<(usize, usize)> = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        for _ in 0..256 {
            let size = match rng.below(100) {
                0..=69 => 1 + rng.below(512) as usize,
                70..=94 => 512 + rng.below(32 * 1024) as usize,
                _ => 32 * 1024 + rng.below(512 * 1024) as usize,
            };
            // SAFETY: 8 is a power of two.
            let p = unsafe { raw::alloc(size, 8) };
            assert!(!p.is_null());
            // SAFETY: a new block of at least one byte.
            unsafe { p.write(size as u8) };
            if rng.chance(30) {
                // Hand it to whichever thread takes the slot; free what was there.
                let slot = &shared[rng.below(shared.len() as u64) as usize];
                let old = slot.swap(p as usize, Ordering::AcqRel);
                if old != 0 {
                    // SAFETY: a live block someone handed over; freed once.
                    unsafe { raw::free(old as *mut u8) };
                }
            } else {
                mine.push((p as usize, size));
            }
            if mine.len() > 200 {
                let (p, size) = mine.swap_remove(rng.below(mine.len() as u64) as usize);
                // SAFETY: a live block of ours, freed once.
                unsafe {
                    assert_eq!((p as *mut u8).read(), size as u8);
                    raw::dealloc(p as *mut u8, size, 8);
                }
            }
            ops.fetch_add(1, Ordering::Relaxed);
        }
        match rng.below(20) {
            0 => spanalloc::flush_thread_cache(),
            1 => {
                spanalloc::release_free_memory();
            }
            _ => {}
        }
    }
    for (p, size) in mine {
        // SAFETY: live blocks of ours, freed once.
        unsafe { raw::dealloc(p as *mut u8, size, 8) };
    }
}

#[test]
fn forking_while_eight_threads_allocate() {
    let stop = AtomicBool::new(false);
    let shared: Vec<AtomicUsize> = (0..64).map(|_| AtomicUsize::new(0)).collect();
    let ops = AtomicUsize::new(0);
    let mut failures = Vec::new();
    std::thread::scope(|s| {
        for t in 0..THREADS {
            let (stop, shared, ops) = (&stop, &shared[..], &ops);
            s.spawn(move || worker(t, stop, shared, ops));
        }
        // Let the workers get going, so the forks land in the middle of their work.
        while ops.load(Ordering::Relaxed) < 10_000 {
            std::thread::yield_now();
        }
        for i in 0..FORKS {
            // SAFETY: the child only calls the allocator and async-signal-safe functions
            // before `_exit` (the allocator's fork handlers make it usable in the child).
            let pid = unsafe { libc::fork() };
            assert!(pid >= 0, "fork failed: {}", std::io::Error::last_os_error());
            if pid == 0 {
                child_work();
            }
            match wait_with_timeout(pid, CHILD_DEADLINE) {
                None => failures.push(format!("fork {i}: child hung (killed after 5 s)")),
                Some(st) if libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 0 => {}
                Some(st) => failures.push(format!("fork {i}: child wait status {st:#x}")),
            }
            // Let the workers move on between forks.
            std::thread::sleep(Duration::from_millis(1));
        }
        stop.store(true, Ordering::Relaxed);
    });
    for slot in &shared {
        let p = slot.swap(0, Ordering::AcqRel);
        if p != 0 {
            // SAFETY: a live block handed over and never taken; freed once.
            unsafe { raw::free(p as *mut u8) };
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {FORKS} children failed: {failures:#?}",
        failures.len()
    );
    spanalloc::internals::heap().check_invariants();
}
