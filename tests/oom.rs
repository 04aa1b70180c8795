//! Out of memory is a null pointer, never a crash, and the heap recovers.
//!
//! Two kinds of test: real address-space exhaustion in a child process under `RLIMIT_AS`
//! (skipped under AddressSanitizer, which reserves terabytes of shadow address space), and
//! a fake page source failing on demand under every tier, checking that `None`/null travels
//! up, that the invariants hold and that nothing leaks.

mod common;

use common::{run_child_with, under_asan};
use spanalloc::internals::heap::Heap;
use spanalloc::internals::page_heap::PageHeap;
use spanalloc::internals::sys::FakePages;
use spanalloc::internals::thread_cache::ThreadCache;
use spanalloc::{SpanAlloc, raw};
use std::time::Duration;

#[global_allocator]
static A: SpanAlloc = SpanAlloc;

const GIB: u64 = 1 << 30;
const MIB: usize = 1 << 20;

fn set_address_space_limit(bytes: u64) -> std::io::Result<()> {
    let lim = libc::rlimit {
        rlim_cur: bytes,
        rlim_max: bytes,
    };
    // SAFETY: a valid rlimit value; setrlimit is async-signal-safe.
    if unsafe { libc::setrlimit(libc::RLIMIT_AS, &lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn limit_1g() -> std::io::Result<()> {
    set_address_space_limit(GIB)
}

fn limit_256m() -> std::io::Result<()> {
    set_address_space_limit(256 << 20)
}

// ---------------------------------------------------------------------------------------
// Real exhaustion under RLIMIT_AS.

/// Allocates blocks of `size` bytes until null, linking them through their first word
/// (so the bookkeeping itself needs no memory). Returns the list and the count.
///
/// # Safety
/// `size >= 8`.
unsafe fn fill(size: usize, mut list: *mut u8) -> (*mut u8, usize) {
    let mut n = 0;
    loop {
        // SAFETY: 8 is a power of two.
        let p = unsafe { raw::alloc(size, 8) };
        if p.is_null() {
            return (list, n);
        }
        // SAFETY: a new block of at least `size >= 8` bytes; the last byte is touched too,
        // to prove the memory is really there.
        unsafe {
            (p as *mut *mut u8).write(list);
            p.add(size - 1).write(0xee);
        }
        list = p;
        n += 1;
    }
}

/// Frees every block of a list made by [`fill`], checking each one's last byte.
///
/// # Safety
/// `list` came from [`fill`] with blocks of `size` bytes.
unsafe fn free_list(mut list: *mut u8, size: usize) {
    while !list.is_null() {
        // SAFETY: a live block of the list.
        unsafe {
            assert_eq!(list.add(size - 1).read(), 0xee);
            let next = (list as *mut *mut u8).read();
            raw::free(list);
            list = next;
        }
    }
}

/// One round of exhaustion: large blocks until null, then medium, then small ones, then
/// free everything. Returns the bytes obtained.
fn exhaust_and_free() -> usize {
    let mut total = 0;
    let sizes = [16 * MIB, MIB, 100_000, 20_000, 1000, 64];
    let mut lists = [core::ptr::null_mut::<u8>(); 6];
    for (i, &size) in sizes.iter().enumerate() {
        // SAFETY: `size >= 8`.
        let (list, n) = unsafe { fill(size, core::ptr::null_mut()) };
        lists[i] = list;
        total += n * size;
    }
    // Even completely out of memory, realloc fails cleanly, keeping the block.
    // SAFETY: a live block of ours, or none.
    unsafe {
        let p = lists[5];
        if !p.is_null() {
            assert!(raw::realloc(p, 64 * MIB, 8).is_null());
            assert_eq!(p.add(63).read(), 0xee);
        }
    }
    for (i, &size) in sizes.iter().enumerate() {
        // SAFETY: made by `fill` with this size.
        unsafe { free_list(lists[i], size) };
    }
    spanalloc::flush_thread_cache();
    spanalloc::internals::heap().check_invariants();
    total
}

#[test]
fn exhausting_the_address_space_gives_null_then_recovers() {
    const NAME: &str = "exhausting_the_address_space_gives_null_then_recovers";
    if under_asan() {
        eprintln!("{NAME}: skipped under AddressSanitizer (RLIMIT_AS and ASan's shadow memory)");
        return;
    }
    if common::child_case().as_deref() == Some(NAME) {
        // Page spans the program holds already (a growing buffer of the test harness may
        // live in one).
        let before = spanalloc::internals::heap().page_heap_stats().large_in_use;
        let first = exhaust_and_free();
        assert!(
            first > 256 * MIB,
            "got only {first} bytes under a 1 GiB limit"
        );
        let st = spanalloc::internals::heap().page_heap_stats();
        assert_eq!(
            st.large_in_use, before,
            "every large block was freed: {st:?}"
        );
        // Everything freed can be had again.
        let mut big = Vec::with_capacity(64);
        for _ in 0..16 {
            // SAFETY: 8 is a power of two.
            let p = unsafe { raw::alloc(16 * MIB, 8) };
            assert!(!p.is_null(), "a 16 MiB block after freeing everything");
            big.push(p);
        }
        for p in big {
            // SAFETY: live blocks of ours.
            unsafe { raw::free(p) };
        }
        let v: Vec<u64> = (0..1_000_000).collect();
        assert_eq!(v.iter().sum::<u64>(), 499_999_500_000);
        drop(v);
        let second = exhaust_and_free();
        println!(
            "under a 1 GiB limit: {} MiB, then {} MiB",
            first >> 20,
            second >> 20
        );
        assert!(
            second >= first / 2,
            "second round got {second} bytes, first {first}: memory lost"
        );
        std::process::exit(0);
    }
    let r = run_child_with(NAME, NAME, Duration::from_secs(120), Some(limit_1g));
    eprintln!("{}", r.stdout.trim());
    r.assert_success(NAME);
}

#[test]
fn starts_and_works_under_a_256_mib_limit() {
    const NAME: &str = "starts_and_works_under_a_256_mib_limit";
    if under_asan() {
        eprintln!("{NAME}: skipped under AddressSanitizer (RLIMIT_AS and ASan's shadow memory)");
        return;
    }
    if common::child_case().as_deref() == Some(NAME) {
        // The process started (runtime, test harness) under the limit; now do real work,
        // on several threads.
        let handles: Vec<_> = (0..4)
            .map(|t| {
                std::thread::spawn(move || {
                    let mut m = std::collections::BTreeMap::new();
                    for i in 0..50_000u64 {
                        m.insert(i, format!("{t}-{i}"));
                        if i % 3 == 0 {
                            m.remove(&(i / 2));
                        }
                    }
                    let big: Vec<Vec<u8>> = (0..20).map(|i| vec![i as u8; 1 << 20]).collect();
                    assert!(
                        big.iter()
                            .enumerate()
                            .all(|(i, b)| b.iter().all(|&x| x == i as u8))
                    );
                    m.len()
                })
            })
            .collect();
        for h in handles {
            assert!(h.join().unwrap() > 0);
        }
        spanalloc::internals::heap().check_invariants();
        std::process::exit(0);
    }
    let r = run_child_with(NAME, NAME, Duration::from_secs(120), Some(limit_256m));
    r.assert_success(NAME);
}

/// The address space the process holds now (`VmSize`), in bytes.
fn address_space_now() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmSize:")).unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib << 10
}

/// Limits the address space to what the process holds now plus `extra` bytes.
fn limit_to_now_plus(extra: usize) {
    set_address_space_limit(address_space_now() + extra as u64).unwrap();
}

/// Allocates `size` bytes and writes their first and last byte (the memory is really
/// there), or null.
fn alloc_touched(size: usize) -> *mut u8 {
    // SAFETY: 8 is a power of two.
    let p = unsafe { raw::alloc(size, 8) };
    if !p.is_null() {
        // SAFETY: a new block of `size` bytes.
        unsafe {
            p.write(1);
            p.add(size - 1).write(2);
        }
    }
    p
}

/// The largest block that can be had now (to 1 MiB), by bisection: each try is freed.
fn largest_block() -> usize {
    let (mut lo, mut hi) = (0usize, 4usize << 30);
    while hi - lo > MIB {
        let mid = lo + (hi - lo) / 2;
        let p = alloc_touched(mid);
        if p.is_null() {
            hi = mid;
        } else {
            // SAFETY: a live block of ours.
            unsafe { raw::free(p) };
            lo = mid;
        }
    }
    lo
}

/// Runs `body` in a child process of this test binary, except under AddressSanitizer.
fn rlimit_child(name: &str, body: impl FnOnce()) {
    if under_asan() {
        eprintln!("{name}: skipped under AddressSanitizer (RLIMIT_AS and ASan's shadow memory)");
        return;
    }
    if common::child_case().as_deref() == Some(name) {
        body();
        std::process::exit(0);
    }
    let r = common::run_child(name, name, Duration::from_secs(120));
    eprintln!("{}", r.stdout.trim());
    r.assert_success(name);
}

#[test]
fn a_freed_block_gives_its_address_space_to_a_larger_one() {
    rlimit_child(
        "a_freed_block_gives_its_address_space_to_a_larger_one",
        || {
            // 150 MiB freed leaves room for 200 MiB under a limit of what the process has plus
            // 300 MiB only if its address space goes back (glibc and mimalloc: it does).
            limit_to_now_plus(300 * MIB);
            let a = alloc_touched(150 * MIB);
            assert!(!a.is_null(), "150 MiB under start + 300 MiB");
            // SAFETY: a live block of ours.
            unsafe { raw::free(a) };
            let b = alloc_touched(200 * MIB);
            assert!(
                !b.is_null(),
                "200 MiB after freeing 150 MiB, under start + 300 MiB"
            );
            // SAFETY: as above.
            unsafe { raw::free(b) };
            spanalloc::internals::heap().check_invariants();
            // And back: the 200 MiB went back too, the heap serves everything else.
            let c = alloc_touched(150 * MIB);
            assert!(!c.is_null(), "150 MiB again");
            // SAFETY: as above.
            unsafe { raw::free(c) };
            let v: Vec<u64> = (0..1_000_000).collect();
            assert_eq!(v.iter().sum::<u64>(), 499_999_500_000);
            spanalloc::internals::heap().check_invariants();
        },
    );
}

#[test]
fn realloc_doubling_uses_the_address_space_of_the_smaller_copies() {
    rlimit_child(
        "realloc_doubling_uses_the_address_space_of_the_smaller_copies",
        || {
            // Doubling by realloc needs the old and the new block at once: 64 MiB from 32
            // needs 96 MiB, under a limit of start + 112 MiB only if the copies of 1, 2, 4,
            // 8 and 16 MiB freed on the way gave their address space back (glibc: 64 MiB;
            // spanalloc without it: 32).
            limit_to_now_plus(112 * MIB);
            let mut size = MIB;
            let mut p = alloc_touched(size);
            assert!(!p.is_null());
            loop {
                // SAFETY: a live block of ours, moved on success.
                let q = unsafe { raw::realloc(p, 2 * size, 8) };
                if q.is_null() {
                    break;
                }
                size *= 2;
                p = q;
                // SAFETY: a live block of `size` bytes.
                unsafe { p.write_bytes(0x6b, size) };
            }
            println!(
                "realloc doubling under start + 112 MiB reached {} MiB",
                size / MIB
            );
            // SAFETY: a live block of ours.
            unsafe {
                assert_eq!(
                    p.add(size - 1).read(),
                    0x6b,
                    "the failed realloc kept the block"
                );
                raw::free(p);
            }
            assert!(
                size >= 64 * MIB,
                "realloc doubling stopped at {} MiB",
                size / MIB
            );
            spanalloc::internals::heap().check_invariants();
        },
    );
}

#[test]
fn after_exhaustion_and_freeing_one_block_can_take_the_whole_limit() {
    rlimit_child(
        "after_exhaustion_and_freeing_one_block_can_take_the_whole_limit",
        || {
            limit_to_now_plus(512 * MIB);
            let before = largest_block();
            let got = exhaust_and_free();
            let after = largest_block();
            println!(
                "under start + 512 MiB: largest block {} MiB; exhausted at {} MiB; then \
                 largest block {} MiB",
                before / MIB,
                got / MIB,
                after / MIB
            );
            // Most of the 512 MiB (the rest holds the page map and span records, the test
            // harness's buffers, small spans other size classes keep).
            assert!(before >= 448 * MIB, "largest block {} MiB", before / MIB);
            assert!(
                after >= 448 * MIB,
                "largest block after exhaustion {} MiB",
                after / MIB
            );
        },
    );
}

// ---------------------------------------------------------------------------------------
// A fake page source failing on demand.

fn fake_heap() -> Box<Heap<FakePages>> {
    Box::new(Heap::with_page_heap(
        FakePages::new(),
        PageHeap::with_grow_bytes(4 << 20),
    ))
}

/// Sizes spanning small classes, the largest class and large objects.
const SIZES: [usize; 10] = [
    8,
    16,
    100,
    1024,
    1500,
    8000,
    32 * 1024 - 1,
    40_000,
    300_000,
    5 << 20,
];

/// Checks that after everything was freed and the cache flushed, nothing is left in use.
fn assert_nothing_leaked(heap: &Heap<FakePages>, when: &str) {
    // What the central lists keep for reuse (whole batches, a spare span) goes back first.
    heap.drain_centrals();
    heap.check_invariants();
    let st = heap.page_heap_stats();
    assert_eq!(st.small_spans, 0, "{when}: small spans left in use: {st:?}");
    assert_eq!(
        st.large_in_use, 0,
        "{when}: large spans left in use: {st:?}"
    );
    assert_eq!(
        st.free, st.mapped,
        "{when}: every mapped byte is free: {st:?}"
    );
}

/// The bytes of a block of `size` bytes that carry the pattern: the first and last 512 and
/// every 4093rd in between (all of a small block; a sample of a large one, to keep debug
/// builds fast).
fn pattern_indices(size: usize) -> impl Iterator<Item = usize> {
    let head = size.min(512);
    let tail = size.saturating_sub(512).max(head);
    (0..head)
        .chain((head..tail).step_by(4093))
        .chain(tail..size)
}

/// Fills a live block with a pattern of its address.
fn fill_pattern(p: *mut u8, size: usize) {
    for i in pattern_indices(size) {
        // SAFETY: `p` is a live block of `size` bytes.
        unsafe { p.add(i).write((p as usize + i) as u8 ^ 0x5a) };
    }
}

fn check_pattern(p: *mut u8, size: usize) {
    check_pattern_of(p, p as usize, size, size);
}

/// Checks the first `upto` bytes of the pattern `fill_pattern` wrote at address `was` into a
/// block of `size` bytes (the block may have moved to `p` since, by realloc).
fn check_pattern_of(p: *mut u8, was: usize, size: usize, upto: usize) {
    for i in pattern_indices(size).take_while(|&i| i < upto) {
        // SAFETY: `p` is a live block of `size` bytes.
        let b = unsafe { p.add(i).read() };
        assert_eq!(b, (was + i) as u8 ^ 0x5a, "block {p:?} byte {i} changed");
    }
}

#[test]
fn a_source_that_fails_from_the_start_gives_null_everywhere() {
    let heap = fake_heap();
    heap.source().fail_after(0);
    let mut cache = ThreadCache::new();
    for size in SIZES {
        for align in [8, 64, 4096, 1 << 16] {
            assert!(
                cache.alloc(&heap, size, align).is_null(),
                "alloc({size}, {align})"
            );
            assert!(
                cache.alloc_zeroed(&heap, size, align).is_null(),
                "alloc_zeroed({size})"
            );
        }
    }
    assert!(heap.alloc_large(1 << 20, 8).is_none());
    cache.flush(&heap);
    assert_nothing_leaked(&heap, "failing from the start");
    // It heals: the same requests work now.
    heap.source().heal();
    let ps: Vec<(*mut u8, usize)> = SIZES
        .iter()
        .map(|&s| (cache.alloc(&heap, s, 8), s))
        .collect();
    for &(p, s) in &ps {
        assert!(!p.is_null(), "alloc({s}) after heal");
        fill_pattern(p, s);
    }
    for (p, s) in ps {
        check_pattern(p, s);
        // SAFETY: live blocks of this heap, freed once.
        unsafe { cache.dealloc(&heap, p, s, 8) };
    }
    cache.flush(&heap);
    assert_nothing_leaked(&heap, "after heal");
}

/// Runs a mixed workload until the source (told to fail after `n` more maps) makes an
/// allocation fail; then checks, frees, heals, and checks nothing leaked.
fn workload_with_failure_after(n: usize, seed: u64) {
    let heap = fake_heap();
    let mut cache = ThreadCache::new();
    let mut rng = common::Rng::new(seed);
    // Some traffic before the failure is armed, so failures hit a heap with history.
    let mut live: Vec<(*mut u8, usize, usize)> = Vec::new();
    for _ in 0..200 {
        let size = SIZES[rng.below(SIZES.len() as u64 - 1) as usize];
        let p = cache.alloc(&heap, size, 8);
        assert!(!p.is_null());
        fill_pattern(p, size);
        live.push((p, size, 8));
    }
    heap.source().fail_after(n);
    let mut nulls = 0;
    let mut steps = 0;
    while nulls < 50 && steps < 20_000 {
        steps += 1;
        let size = SIZES[rng.below(SIZES.len() as u64) as usize] + rng.below(64) as usize;
        let align = [8, 16, 256, 4096, 1 << 15][rng.below(5) as usize];
        match rng.below(10) {
            0..=5 => {
                let zeroed = rng.chance(30);
                let p = if zeroed {
                    cache.alloc_zeroed(&heap, size, align)
                } else {
                    cache.alloc(&heap, size, align)
                };
                if p.is_null() {
                    nulls += 1;
                    continue;
                }
                assert_eq!(p as usize % align, 0);
                if zeroed {
                    // SAFETY: a new block of `size` bytes.
                    let s = unsafe { core::slice::from_raw_parts(p, size) };
                    assert!(s.iter().all(|&b| b == 0), "alloc_zeroed gave dirty memory");
                }
                fill_pattern(p, size);
                live.push((p, size, align));
            }
            6..=7 if !live.is_empty() => {
                let i = rng.below(live.len() as u64) as usize;
                let (p, size, align) = live.swap_remove(i);
                check_pattern(p, size);
                // SAFETY: a live block of this heap, freed once.
                unsafe {
                    if rng.chance(50) {
                        cache.dealloc(&heap, p, size, align);
                    } else {
                        cache.free(&heap, p);
                    }
                }
            }
            8..=9 if !live.is_empty() => {
                let i = rng.below(live.len() as u64) as usize;
                let (p, size, align) = live[i];
                let new_size = SIZES[rng.below(SIZES.len() as u64) as usize];
                // SAFETY: a live block of this heap with this alignment.
                let q = unsafe { cache.realloc(&heap, p, align, new_size) };
                if q.is_null() {
                    nulls += 1;
                    // Failure keeps the old block, intact.
                    check_pattern(p, size);
                } else {
                    assert_eq!(q as usize % align, 0);
                    check_pattern_of(q, p as usize, size, new_size);
                    fill_pattern(q, new_size);
                    live[i] = (q, new_size, align);
                }
            }
            _ => {}
        }
        if steps % 500 == 0 {
            heap.check_invariants();
        }
    }
    assert!(
        nulls > 0,
        "fail_after({n}): the source never failed a request ({steps} steps)"
    );
    heap.check_invariants();
    for (p, size, _) in live.drain(..) {
        check_pattern(p, size);
        // SAFETY: live blocks of this heap, freed once.
        unsafe { cache.free(&heap, p) };
    }
    cache.flush(&heap);
    assert_nothing_leaked(&heap, &format!("fail_after({n})"));
    // Healed, it serves again, out of what it already has and beyond.
    heap.source().heal();
    for size in SIZES {
        let p = cache.alloc(&heap, size, 8);
        assert!(!p.is_null(), "alloc({size}) after heal");
        // SAFETY: a live block of this heap, freed once.
        unsafe { cache.free(&heap, p) };
    }
    cache.flush(&heap);
    assert_nothing_leaked(&heap, &format!("fail_after({n}), healed"));
}

#[test]
fn failures_at_every_point_travel_up_as_null_and_leak_nothing() {
    for n in 0..24 {
        workload_with_failure_after(n, 1000 + n as u64);
    }
}

#[test]
fn large_maps_failing_leave_small_objects_working() {
    let heap = fake_heap();
    let mut cache = ThreadCache::new();
    // Anything bigger than the growth step fails; the page map and records are small maps.
    heap.source().fail_at_least(8 << 20);
    let big = cache.alloc(&heap, 16 << 20, 8);
    assert!(big.is_null());
    assert!(cache.alloc_zeroed(&heap, 64 << 20, 4096).is_null());
    let mut small = Vec::new();
    for i in 0..20_000usize {
        let size = 1 + (i * 37) % 4000;
        let p = cache.alloc(&heap, size, 8);
        assert!(!p.is_null(), "small alloc {i} with only big maps failing");
        fill_pattern(p, size);
        small.push((p, size));
    }
    // A large block that fits the growth step works, and cannot grow past it.
    let p = cache.alloc(&heap, 2 << 20, 8);
    assert!(!p.is_null());
    fill_pattern(p, 2 << 20);
    // SAFETY: a live block of ours.
    let q = unsafe { cache.realloc(&heap, p, 8, 32 << 20) };
    assert!(q.is_null(), "growing beyond what the source gives fails");
    check_pattern(p, 2 << 20);
    // SAFETY: as above.
    let q = unsafe { cache.realloc(&heap, p, 8, 100_000) };
    assert!(!q.is_null(), "shrinking works");
    check_pattern_of(q, p as usize, 2 << 20, 100_000);
    heap.check_invariants();
    // SAFETY: live blocks of ours, freed once.
    unsafe {
        cache.free(&heap, q);
        for (p, size) in small {
            check_pattern(p, size);
            cache.dealloc(&heap, p, size, 8);
        }
    }
    cache.flush(&heap);
    assert_nothing_leaked(&heap, "fail_at_least");
}

#[test]
fn many_threads_on_a_failing_source_leak_nothing() {
    let heap = fake_heap();
    heap.source().fail_after(12);
    let handoff: std::sync::Mutex<Vec<(usize, usize)>> = std::sync::Mutex::new(Vec::new());
    let nulls = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|s| {
        for t in 0..4u64 {
            let (heap, handoff, nulls) = (&*heap, &handoff, &nulls);
            s.spawn(move || {
                let mut cache = ThreadCache::new();
                let mut rng = common::Rng::new(t + 77);
                let mut live = Vec::new();
                for _ in 0..20_000 {
                    let size = SIZES[rng.below(SIZES.len() as u64 - 1) as usize];
                    let p = cache.alloc(heap, size, 8);
                    if p.is_null() {
                        nulls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    } else {
                        fill_pattern(p, size);
                        live.push((p as usize, size));
                    }
                    if live.len() > 300 {
                        let i = rng.below(live.len() as u64) as usize;
                        let (p, size) = live.swap_remove(i);
                        if rng.chance(50) {
                            // Another thread frees it (a remote free).
                            handoff.lock().unwrap().push((p, size));
                        } else {
                            check_pattern(p as *mut u8, size);
                            // SAFETY: a live block of this heap, freed once.
                            unsafe { cache.free(heap, p as *mut u8) };
                        }
                    }
                    if rng.chance(5) {
                        let theirs = core::mem::take(&mut *handoff.lock().unwrap());
                        for (p, size) in theirs {
                            check_pattern(p as *mut u8, size);
                            // SAFETY: a live block of this heap handed to us, freed once.
                            unsafe { cache.free(heap, p as *mut u8) };
                        }
                    }
                }
                for (p, size) in live {
                    check_pattern(p as *mut u8, size);
                    // SAFETY: live blocks of this heap, freed once.
                    unsafe { cache.free(heap, p as *mut u8) };
                }
                cache.flush(heap);
            });
        }
    });
    let mut cache = ThreadCache::new();
    for (p, size) in handoff.into_inner().unwrap() {
        check_pattern(p as *mut u8, size);
        // SAFETY: live blocks of this heap, freed once.
        unsafe { cache.free(&heap, p as *mut u8) };
    }
    cache.flush(&heap);
    assert!(nulls.into_inner() > 0, "the source failed some requests");
    assert_nothing_leaked(&heap, "threads on a failing source");
}
