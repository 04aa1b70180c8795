//! Resident memory falls after the program frees what it allocated: at once with
//! `release_free_memory()`, and on its own after the decay time while the program keeps
//! making a few small allocations. One test function: RSS is a property of the process.

#[global_allocator]
static A: spanalloc::SpanAlloc = spanalloc::SpanAlloc;

use std::alloc::{Layout, alloc, dealloc};
use std::time::{Duration, Instant};

/// Each half of the churn: small objects, then large ones (512 MiB in all, so that the whole
/// test suite stays under 1 GiB resident).
const PART: usize = 256 << 20;
/// Fixed allowance on top of 10% of the starting RSS: the thread's cached spans (one per
/// class), metadata and page-map nodes touched by 512 MiB of traffic, and the pointer array.
const SLACK: usize = 24 << 20;

fn rss() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: usize = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    // SAFETY: sysconf has no preconditions.
    pages * unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize
}

/// Allocates 256 MiB in 256-byte objects and 256 MiB in 4 MiB objects, touching every page,
/// then frees it all.
fn churn() {
    let small = Layout::from_size_align(256, 8).unwrap();
    let large = Layout::from_size_align(4 << 20, 8).unwrap();
    let mut ptrs: Vec<*mut u8> = Vec::with_capacity(PART / 256);
    for _ in 0..PART / 256 {
        // SAFETY: a non-zero layout.
        let p = unsafe { alloc(small) };
        assert!(!p.is_null());
        // SAFETY: a live 256-byte object.
        unsafe { p.write_bytes(0xa5, 256) };
        ptrs.push(p);
    }
    let mut big: Vec<*mut u8> = Vec::with_capacity(PART / (4 << 20));
    for _ in 0..PART / (4 << 20) {
        // SAFETY: a non-zero layout.
        let p = unsafe { alloc(large) };
        assert!(!p.is_null());
        for off in (0..4 << 20).step_by(4096) {
            // SAFETY: inside the live object.
            unsafe { p.add(off).write(1) };
        }
        big.push(p);
    }
    for p in ptrs {
        // SAFETY: allocated above with `small`, freed once.
        unsafe { dealloc(p, small) };
    }
    for p in big {
        // SAFETY: allocated above with `large`, freed once.
        unsafe { dealloc(p, large) };
    }
}

fn within_bound(rss_now: usize, start: usize) -> bool {
    rss_now <= start + start / 10 + SLACK
}

#[test]
fn resident_memory_falls_after_freeing() {
    spanalloc::set_decay_ms(-1);
    let start = rss();

    // 1. Explicit release, right after freeing.
    churn();
    let before = rss();
    assert!(
        before > start + PART,
        "the churn made memory resident: {before} vs {start}"
    );
    spanalloc::release_free_memory();
    let after = rss();
    eprintln!("release_free_memory: start {start} after-free {before} after-release {after}");
    assert!(
        within_bound(after, start),
        "after release_free_memory: {after} vs start {start}"
    );

    // 2. Decay: no call, a short decay time, a few small allocations while waiting.
    churn();
    spanalloc::set_decay_ms(50);
    let freed = rss();
    assert!(freed > start + PART);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut keep = Vec::new();
    let mut size = 16;
    loop {
        std::thread::sleep(Duration::from_millis(20));
        // A few small allocations, of a size not asked for before.
        size = size * 9 / 8 + 8;
        if size > 30_000 {
            size = 16;
        }
        keep.push(vec![0u8; size]);
        if keep.len() > 8 {
            keep.remove(0);
        }
        let now = rss();
        if within_bound(now, start) {
            eprintln!("decay: start {start} after-free {freed} now {now}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "RSS stayed at {now} (start {start}) after decay"
        );
    }
}
