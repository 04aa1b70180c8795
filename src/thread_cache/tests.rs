//! Tests of the thread cache over a heap of fake pages.

use super::*;
use crate::heap::tests::heap;
use crate::heap::{GROWTH_HEADROOM, GROWTH_HEADROOM_MAX, GROWTH_MIN, LEND_MIN, growth_room};
use crate::pages::Pages;
use crate::size_class::SMALL_STEP_LIMIT;
use crate::span;
use crate::span::GUARD_PAGES;
use crate::sys::FakePages;
#[cfg(not(feature = "hardened"))]
use large::STASH_MAX_PAGES;
use large_lists::LISTED_BYTES;
use std::collections::BTreeMap;

/// A cache with a reserve attached, as every thread's is. The reserve is leaked: it must
/// outlive the cache, and a test's few are nothing.
fn cache_with_reserve() -> ThreadCache {
    let mut cache = ThreadCache::new();
    let reserve: &'static Reserve = Box::leak(Box::new(Reserve::new()));
    // SAFETY: leaked, so alive and in place for good; this cache's alone.
    unsafe { cache.attach_reserve(reserve) };
    cache
}

/// The starts of the spans in the stash of `cache`'s reserve, oldest first.
fn stash_starts(cache: &ThreadCache) -> Vec<usize> {
    let r = cache.reserve().unwrap();
    let mut slots: Vec<(u64, usize)> = (0..reserve::STASH_SLOTS)
        .map(|i| (cache.stash_stamps[i], r.stashed(i)))
        .filter(|(_, s)| !s.is_null())
        // SAFETY: stashed spans are live records.
        .map(|(t, s)| (t, unsafe { &*s }.start_addr()))
        .collect();
    slots.sort();
    slots.into_iter().map(|(_, start)| start).collect()
}

/// A tiny deterministic generator (xorshift), so failures replay.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Live blocks: start -> (size, fill byte). Checks no overlap and contents.
#[derive(Default)]
struct Shadow(BTreeMap<usize, (usize, u8)>);
impl Shadow {
    fn add(&mut self, p: *mut u8, size: usize, fill: u8) {
        let a = p as usize;
        if let Some((&b, &(bs, _))) = self.0.range(..=a).next_back() {
            assert!(b + bs.max(1) <= a, "new block {a:#x} overlaps {b:#x}+{bs}");
        }
        if let Some((&b, _)) = self.0.range(a..).next() {
            assert!(
                a + size.max(1) <= b,
                "new block {a:#x}+{size} overlaps {b:#x}"
            );
        }
        // SAFETY: a fresh block of `size` bytes.
        unsafe { core::ptr::write_bytes(p, fill, size) };
        self.0.insert(a, (size, fill));
    }
    fn check(&self, a: usize) {
        let (size, fill) = self.0[&a];
        // SAFETY: a live block.
        let bytes = unsafe { core::slice::from_raw_parts(a as *const u8, size) };
        assert!(
            bytes.iter().all(|&b| b == fill),
            "block {a:#x}+{size} corrupted"
        );
    }
}

fn random_size(rng: &mut Rng) -> usize {
    match rng.below(10) {
        0..=5 => rng.below(256) as usize,
        6..=8 => rng.below(32 * 1024) as usize,
        _ => rng.below(600 * 1024) as usize,
    }
}

#[test]
fn the_direct_bin_table_agrees_with_the_class_table() {
    let heap = heap();
    let mut cache = Box::new(ThreadCache::new());
    for size in 0..=SMALL_STEP_LIMIT {
        let class = size_class::class_of_small(size);
        let by_class: *mut Bin = cache.bin(class);
        // SAFETY: a small size.
        let by_size: *mut Bin = unsafe { cache.small_bin(size) };
        assert_eq!(by_size, by_class, "size {size}");
    }
    // The two fast paths serve and take back objects of the size's class.
    for size in [0, 1, 8, 9, 16, 17, 24, 25, 100, 512, 1000, 1024] {
        let p = cache.alloc(&heap, size, 8);
        assert!(!p.is_null());
        let word = heap.page_map().small_word_of(p as usize);
        // SAFETY: `p` is live and given up; `word` is its page's.
        assert!(unsafe { cache.push_small(&heap, p, word) });
        // SAFETY: a small size.
        assert_eq!(unsafe { cache.pop_small(size) }, p, "size {size}");
        // SAFETY: `p` is live and given up.
        unsafe { cache.free(&heap, p) };
    }
    cache.flush(&heap);
}

#[test]
fn one_cache_against_a_shadow_model() {
    let heap = heap();
    let mut cache = cache_with_reserve();
    let mut rng = Rng(0x9e3779b97f4a7c15);
    let mut shadow = Shadow::default();
    let mut live: Vec<(usize, usize, usize)> = Vec::new(); // (addr, size, align)
    for step in 0..40_000 {
        if live.is_empty() || rng.below(100) < 55 {
            let size = random_size(&mut rng);
            let shift_range = if rng.below(10) == 0 { 16 } else { 4 };
            let align = 1usize << rng.below(shift_range);
            let p = if rng.below(4) == 0 {
                let p = cache.alloc_zeroed(&heap, size, align);
                // SAFETY: a fresh block of `size` bytes.
                let bytes = unsafe { core::slice::from_raw_parts(p, size) };
                assert!(bytes.iter().all(|&b| b == 0));
                p
            } else {
                cache.alloc(&heap, size, align)
            };
            assert!(!p.is_null());
            assert_eq!(p as usize % align, 0, "alignment {align}");
            assert!(heap.usable_size(p) >= size);
            shadow.add(p, size, step as u8);
            live.push((p as usize, size, align));
        } else {
            let i = rng.below(live.len() as u64) as usize;
            let (a, size, align) = live.swap_remove(i);
            shadow.check(a);
            shadow.0.remove(&a);
            if rng.below(5) == 0 {
                let new_size = random_size(&mut rng);
                // SAFETY: a live block of ours with this alignment.
                let p = unsafe { cache.realloc(&heap, a as *mut u8, align, new_size) };
                assert!(!p.is_null());
                assert_eq!(p as usize % align, 0);
                let kept = size.min(new_size);
                // SAFETY: the first `kept` bytes were kept.
                let bytes = unsafe { core::slice::from_raw_parts(p, kept) };
                let fill = bytes.first().copied().unwrap_or(0);
                assert!(
                    bytes.iter().all(|&b| b == fill),
                    "realloc kept the contents"
                );
                shadow.add(p, new_size, step as u8);
                live.push((p as usize, new_size, align));
            } else if rng.below(2) == 0 {
                // SAFETY: a live block of ours, freed once.
                unsafe { cache.dealloc(&heap, a as *mut u8, size, align) };
            } else {
                // SAFETY: as above.
                unsafe { cache.free(&heap, a as *mut u8) };
            }
        }
        if step % 5000 == 0 {
            heap.check_invariants();
            cache.check_invariants(&heap);
        }
    }
    for &(a, _, _) in &live {
        shadow.check(a);
    }
    for (a, size, align) in live.drain(..) {
        // SAFETY: live blocks of ours.
        unsafe { cache.dealloc(&heap, a as *mut u8, size, align) };
    }
    cache.flush(&heap);
    heap.release_free_memory();
    heap.check_invariants();
    let st = heap.page_heap_stats();
    assert_eq!(st.small_spans, 0, "every span is back in the page heap");
    assert_eq!(st.large_in_use, 0);
    assert_eq!(st.free, st.mapped);
}

/// Objects in use per class according to the central lists (all caches flushed).
fn in_use_by_class(heap: &Heap<FakePages>) -> Vec<usize> {
    SizeClass::all()
        .map(|c| {
            let st = heap.central_stats(c);
            st.out_of_spans - st.transfer
        })
        .collect()
}

#[test]
fn caches_trading_objects_keep_every_count_exact() {
    let heap = heap();
    let mut caches: Vec<ThreadCache> = (0..4).map(|_| ThreadCache::new()).collect();
    let mut rng = Rng(12345);
    let mut live: Vec<(usize, usize)> = Vec::new(); // (addr, size)
    for round in 0..30 {
        for _ in 0..3000 {
            let who = rng.below(4) as usize;
            if live.is_empty() || rng.below(100) < 60 {
                let size = 1 + rng.below(3000) as usize;
                let p = caches[who].alloc(&heap, size, 8);
                live.push((p as usize, size));
            } else {
                // Freed by a random cache: usually not the owner, so a remote free.
                let (a, size) = live.swap_remove(rng.below(live.len() as u64) as usize);
                // SAFETY: a live object, freed once.
                unsafe { caches[who].dealloc(&heap, a as *mut u8, size, 8) };
            }
        }
        // Give back: some caches flush (thread exit), the others keep their spans.
        for (i, cache) in caches.iter_mut().enumerate() {
            if (i + round) % 2 == 0 {
                cache.flush(&heap);
            }
            cache.check_invariants(&heap);
        }
        heap.check_invariants();
    }
    for cache in caches.iter_mut() {
        cache.flush(&heap);
    }
    heap.check_invariants();
    let mut want = vec![0usize; CLASS_COUNT - 1];
    for &(_, size) in &live {
        want[size_class::class_of(size).unwrap().index() - 1] += 1;
    }
    assert_eq!(
        in_use_by_class(&heap),
        want,
        "objects in use per class are exact"
    );
    for (a, size) in live.drain(..) {
        // SAFETY: live objects, freed once.
        unsafe { caches[0].dealloc(&heap, a as *mut u8, size, 8) };
    }
    caches[0].flush(&heap);
    heap.release_free_memory();
    heap.check_invariants();
    assert!(in_use_by_class(&heap).iter().all(|&n| n == 0));
    assert_eq!(
        heap.page_heap_stats().small_spans,
        0,
        "every span back in the page heap"
    );
}

#[test]
fn caches_on_threads_passing_objects_keep_every_count_exact() {
    let heap: &'static Heap<FakePages> = Box::leak(heap());
    let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<(usize, usize)>>(4);
    let producer = std::thread::spawn(move || {
        let mut cache = cache_with_reserve();
        let mut rng = Rng(99);
        for _ in 0..200 {
            let batch: Vec<_> = (0..500)
                .map(|_| {
                    let size = 1 + rng.below(2000) as usize;
                    let p = cache.alloc(heap, size, 8);
                    // SAFETY: a fresh object of `size` bytes.
                    unsafe { p.write_bytes(size as u8, size) };
                    (p as usize, size)
                })
                .collect();
            tx.send(batch).unwrap();
        }
        cache.flush(heap);
    });
    let consumer = std::thread::spawn(move || {
        let mut cache = cache_with_reserve();
        for batch in rx {
            for (a, size) in batch {
                // SAFETY: the producer's object, now ours.
                let bytes = unsafe { core::slice::from_raw_parts(a as *const u8, size) };
                assert!(bytes.iter().all(|&b| b == size as u8), "contents kept");
                // SAFETY: freed once.
                unsafe { cache.dealloc(heap, a as *mut u8, size, 8) };
            }
        }
        cache.flush(heap);
    });
    producer.join().unwrap();
    consumer.join().unwrap();
    heap.release_free_memory();
    heap.check_invariants();
    assert!(in_use_by_class(heap).iter().all(|&n| n == 0));
    assert_eq!(heap.page_heap_stats().small_spans, 0);
}

#[test]
fn failing_source_gives_null_and_the_heap_stays_sound() {
    let heap = heap();
    let mut cache = cache_with_reserve();
    let keep: Vec<_> = (0..100).map(|_| cache.alloc(&heap, 200, 8)).collect();
    heap.source().fail_after(0);
    let mut got = Vec::new();
    loop {
        let p = cache.alloc(&heap, 200, 8);
        if p.is_null() {
            break;
        }
        got.push(p);
    }
    assert!(cache.alloc(&heap, 100_000, 8).is_null(), "large fails too");
    assert!(cache.alloc_zeroed(&heap, 5000, 8).is_null());
    heap.check_invariants();
    heap.source().heal();
    assert!(!cache.alloc(&heap, 100_000, 8).is_null(), "and recovers");
    for p in keep.into_iter().chain(got) {
        // SAFETY: live objects, freed once.
        unsafe { cache.free(&heap, p) };
    }
    cache.flush(&heap);
    heap.release_free_memory();
    heap.check_invariants();
    assert_eq!(heap.page_heap_stats().small_spans, 0);
}

#[test]
fn freed_large_spans_are_stashed_reused_and_given_back() {
    let heap = heap();
    heap.set_fake_now(1000);
    heap.set_decay_ms(100);
    let mut cache = cache_with_reserve();
    let small = cache.alloc(&heap, 64, 8); // the cache takes a span: it may stash now
    // All longer than the large lists take (`large_lists.rs`).
    let sizes = [300 << 10, 400 << 10, 1 << 20, 700 << 10, 600 << 10, 2 << 20];
    let ptrs: Vec<*mut u8> = sizes.iter().map(|&s| cache.alloc(&heap, s, 8)).collect();
    for &p in &ptrs {
        // SAFETY: live, freed once.
        unsafe { cache.free(&heap, p) };
    }
    // 2 MiB is too long to stash; of the five others the oldest went back (4 slots). A
    // stashed span's bytes include its guard page (hardened build).
    let bytes = |s: usize| Pages::for_bytes(s).unwrap().bytes() + GUARD_PAGES.bytes();
    let want: usize = sizes[1..5].iter().map(|&s| bytes(s)).sum();
    assert_eq!(cache.stashed_bytes(), want);
    assert_eq!(
        heap.page_heap_stats().large_in_use,
        want,
        "stashed, not freed"
    );
    // The same length again: the same object, with no page-heap change.
    let q = cache.alloc(&heap, 700 << 10, 8);
    assert_eq!(q, ptrs[3]);
    assert_eq!(heap.page_heap_stats().large_in_use, want);
    // SAFETY: live, freed once.
    unsafe { cache.free(&heap, q) };
    // A stash that serves nothing between two looks goes back to the page heap.
    cache.maybe_trim(&heap);
    assert_eq!(cache.stashed_bytes(), want, "it served an allocation");
    heap.set_fake_now(1100);
    cache.maybe_trim(&heap);
    assert_eq!(cache.stashed_bytes(), 0);
    assert_eq!(heap.page_heap_stats().large_in_use, 0);
    // SAFETY: live, freed once.
    unsafe { cache.free(&heap, small) };
    cache.flush(&heap);
    heap.check_invariants();
}

/// A large allocation looks at the span freed last first, and takes it only when it has
/// exactly the pages and the alignment asked for; otherwise the whole stash is searched.
#[test]
fn a_large_allocation_takes_the_span_freed_last_only_when_it_fits() {
    let heap = heap();
    let mut cache = cache_with_reserve();
    let small = cache.alloc(&heap, 64, 8);
    // Longer than the large lists take.
    let [a, b, c] = [300 << 10, 300 << 10, 600 << 10].map(|s| cache.alloc(&heap, s, 8));
    // SAFETY: live, freed once each (into the stash).
    unsafe {
        cache.free(&heap, a);
        cache.free(&heap, b);
        cache.free(&heap, c);
    }
    assert_eq!(stash_starts(&cache), [a as usize, b as usize, c as usize]);
    // The newest (600 KiB) has too many pages: the search finds the newer of the others.
    assert_eq!(cache.alloc(&heap, 300 << 10, 8), b);
    // The newest has the right pages but not the alignment asked for: the page heap.
    let align = 1usize << ((c as usize).trailing_zeros() + 1);
    let e = cache.alloc(&heap, 600 << 10, align);
    assert_ne!(e, c);
    assert_eq!(e as usize % align, 0);
    assert_eq!(cache.alloc(&heap, 300 << 10, 8), a);
    assert_eq!(stash_starts(&cache), [c as usize]);
    // SAFETY: live, freed once.
    unsafe { cache.free(&heap, b) };
    assert_eq!(cache.alloc(&heap, 300 << 10, 8), b, "the newest fits");
    assert_eq!(stash_starts(&cache), [c as usize]);
    // Too few pages for the newest: from the page heap.
    let d = cache.alloc(&heap, 900 << 10, 8);
    assert_ne!(d, c);
    assert_eq!(stash_starts(&cache), [c as usize]);
    assert_eq!(cache.alloc(&heap, 600 << 10, 8), c, "the newest fits");
    for p in [a, b, c, d, e, small] {
        // SAFETY: live, freed once each.
        unsafe { cache.free(&heap, p) };
    }
    cache.check_invariants(&heap);
    cache.flush(&heap);
    heap.check_invariants();
}

// Not in the hardened build: its span groups end every free run at a 2 MiB boundary, so a
// buffer placed late in a group, or grown past 2 MiB, moves where the default build grows it
// in place into the next mapping (see docs/robustness.md, "Hardened build").
#[cfg(not(feature = "hardened"))]
#[test]
fn a_buffer_grown_into_the_large_tier_again_and_again_reuses_its_room() {
    let heap = heap();
    let mut cache = cache_with_reserve();
    let top = size_class::class_of(size_class::MAX_SMALL_SIZE)
        .unwrap()
        .size();
    let mut starts = Vec::new();
    for _ in 0..5 {
        // From the largest class to the large tier at the same usable size (the class
        // holds exactly `top` bytes), then doubling to 1 MiB, then freed (stashed).
        let mut p = cache.alloc(&heap, top - 8, 8);
        // SAFETY: live; each result replaces the buffer.
        unsafe {
            p = cache.realloc(&heap, p, 8, top);
            starts.push(p as usize);
            let mut size = top;
            while size < 1 << 20 {
                size *= 2;
                p = cache.realloc(&heap, p, 8, size);
                assert!(!p.is_null());
            }
            assert_eq!(p as usize, *starts.last().unwrap(), "grown in place");
            cache.free(&heap, p);
        }
    }
    assert!(
        starts.windows(2).all(|w| w[0] == w[1]),
        "each round reuses the last one's run: {starts:x?}"
    );
    cache.flush(&heap);
    heap.check_invariants();
}

/// A heap over fake pages that maps 32 MiB at a time: room for buffers of a few MiB
/// and their headroom in one run.
fn roomy_heap() -> Heap<FakePages> {
    Heap::with_page_heap(
        FakePages::new(),
        crate::page_heap::PageHeap::with_grow_bytes(32 << 20),
    )
}

/// Fills `len` bytes at `p` with a pattern from `seed`.
fn fill(p: *mut u8, len: usize, seed: u8) {
    for i in 0..len {
        // SAFETY: the caller's live block of at least `len` bytes.
        unsafe { *p.add(i) = (i as u8).wrapping_mul(31).wrapping_add(seed) };
    }
}

/// Whether the `len` bytes at `p` still hold [`fill`]'s pattern.
fn filled(p: *mut u8, len: usize, seed: u8) -> bool {
    // SAFETY: the caller's live block of at least `len` bytes.
    (0..len).all(|i| unsafe { *p.add(i) } == (i as u8).wrapping_mul(31).wrapping_add(seed))
}

#[test]
fn a_buffer_that_keeps_growing_moves_once_into_a_page_span_with_headroom() {
    let heap = heap();
    let mut cache = cache_with_reserve();
    let mut p = cache.alloc(&heap, 1000, 8);
    fill(p, 1000, 7);
    // SAFETY: live; each result replaces the buffer.
    unsafe {
        // Its first growth is an ordinary move, to the exact class.
        p = cache.realloc(&heap, p, 8, 1500);
        assert_eq!(
            heap.usable_size(p),
            size_class::class_of(1500).unwrap().size()
        );
        assert!(matches!(heap.owner(p), Owner::Small(_)));
        // Moved by growth and growing again: a page span with GROWTH_HEADROOM times the
        // new size.
        p = cache.realloc(&heap, p, 8, GROWTH_MIN);
        assert!(matches!(heap.owner(p), Owner::Large(_)));
        assert_eq!(heap.usable_size(p), GROWTH_HEADROOM * GROWTH_MIN);
        assert!(filled(p, 1000, 7), "the move kept the contents");
        // The next growths fit in place.
        for size in [2 * GROWTH_MIN, GROWTH_HEADROOM * GROWTH_MIN] {
            assert_eq!(cache.realloc(&heap, p, 8, size), p, "{size} grows in place");
        }
        assert!(filled(p, 1000, 7));
        cache.free(&heap, p);
    }
    cache.flush(&heap);
    heap.check_invariants();
}

/// Builds a growing buffer as `Vec` does, from 1000 bytes doubling to `to`: returns it
/// and where its page span starts (the move at GROWTH_MIN).
fn build_buffer(heap: &Heap<FakePages>, cache: &mut ThreadCache, to: usize) -> (*mut u8, usize) {
    let mut p = cache.alloc(heap, 1000, 8);
    // SAFETY: live; each result replaces the buffer.
    unsafe {
        for next in [1500, GROWTH_MIN] {
            p = cache.realloc(heap, p, 8, next);
        }
        let span_start = p as usize;
        let mut size = GROWTH_MIN;
        while size < to {
            size *= 2;
            p = cache.realloc(heap, p, 8, size);
            assert!(!p.is_null());
        }
        (p, span_start)
    }
}

/// A growing buffer is lent the shortest stashed span with room for it, not the first
/// one the search meets.
#[test]
fn a_growing_buffer_is_lent_the_shortest_stashed_span_with_room() {
    let heap = heap();
    let mut cache = cache_with_reserve();
    let small = cache.alloc(&heap, 64, 8);
    let long = cache.alloc(&heap, 1 << 20, 8);
    // Longer than the large lists take.
    let short = cache.alloc(&heap, 512 << 10, 8);
    // SAFETY: live, freed once each (into the stash, the long one in the first slot).
    unsafe {
        cache.free(&heap, long);
        cache.free(&heap, short);
    }
    assert_eq!(stash_starts(&cache), [long as usize, short as usize]);
    assert_eq!(cache.lend_stashed(&heap, 100_000, 8), Some(short));
    assert_eq!(stash_starts(&cache), [long as usize]);
    // SAFETY: live (lent), freed once each.
    unsafe {
        cache.free(&heap, short);
        cache.free(&heap, small);
    }
    cache.flush(&heap);
    heap.check_invariants();
}

#[test]
fn a_buffer_built_again_each_round_takes_its_last_span_from_the_stash() {
    let heap = heap();
    let mut cache = cache_with_reserve();
    let mut starts = Vec::new();
    for round in 0..4 {
        let (mut p, start) = build_buffer(&heap, &mut cache, GROWTH_MIN);
        // The first round's span is its room; later rounds are lent the whole span the
        // last round left in the stash.
        let room = if round == 0 {
            growth_room(GROWTH_MIN)
        } else {
            1 << 20
        };
        assert_eq!(heap.usable_size(p), room);
        let mut size = GROWTH_MIN;
        while size < 1 << 20 {
            size *= 2;
            // SAFETY: live; the result replaces it.
            p = unsafe { cache.realloc(&heap, p, 8, size) };
        }
        assert_eq!(
            p as usize, start,
            "grown in place from the page-span move on"
        );
        starts.push(start);
        // SAFETY: live, freed once: a 1 MiB span goes to the stash.
        unsafe { cache.free(&heap, p) };
        assert_eq!(cache.stashed_bytes(), (1 << 20) + GUARD_PAGES.bytes());
    }
    assert!(
        starts.windows(2).all(|w| w[0] == w[1]),
        "each round is lent the last round's span: {starts:x?}"
    );
    cache.flush(&heap);
    heap.check_invariants();
}

// Not in the hardened build: its span groups end every free run at a 2 MiB boundary, so a
// buffer placed late in a group, or grown past 2 MiB, moves where the default build grows it
// in place into the next mapping (see docs/robustness.md, "Hardened build").
#[cfg(not(feature = "hardened"))]
#[test]
fn the_growing_buffers_span_is_stashed_up_to_a_longer_bound() {
    let heap = roomy_heap();
    let mut cache = cache_with_reserve();
    // A 4 MiB buffer (with its room, a longer span than STASH_MAX_PAGES) is stashed...
    let (p, start) = build_buffer(&heap, &mut cache, 4 << 20);
    let span_bytes = heap.usable_size(p);
    assert!(span_bytes > STASH_MAX_PAGES.bytes());
    // SAFETY: live, freed once.
    unsafe { cache.free(&heap, p) };
    let span_bytes = span_bytes + GUARD_PAGES.bytes();
    assert_eq!(cache.stashed_bytes(), span_bytes);
    // ...and lent to the next buffer.
    let (q, q_start) = build_buffer(&heap, &mut cache, GROWTH_MIN);
    assert_eq!(q_start, start);
    // Another large object of that length is not: it goes back to the page heap.
    let other = cache.alloc(&heap, 4 << 20, 8);
    // SAFETY: live, freed once.
    unsafe {
        cache.free(&heap, other);
        cache.free(&heap, q);
    }
    assert_eq!(cache.stashed_bytes(), span_bytes, "only the buffer's span");
    cache.flush(&heap);
    heap.check_invariants();
}

#[test]
fn below_growth_min_the_buffer_keeps_its_class_unless_a_span_is_lent() {
    let heap = heap();
    let mut cache = cache_with_reserve();
    let grow = |cache: &mut ThreadCache| {
        let mut p = cache.alloc(&heap, 700, 8);
        // SAFETY: live; each result replaces the buffer.
        unsafe {
            for next in [1400, LEND_MIN + 100] {
                p = cache.realloc(&heap, p, 8, next);
            }
        }
        p
    };
    // No stashed span: the growing buffer of LEND_MIN..GROWTH_MIN keeps an exact class.
    let p = grow(&mut cache);
    assert!(matches!(heap.owner(p), Owner::Small(_)));
    // With one (a freed 1 MiB object), it is lent that span: resident already.
    let big = cache.alloc(&heap, 1 << 20, 8);
    // SAFETY: live, freed once.
    unsafe { cache.free(&heap, big) };
    let q = grow(&mut cache);
    assert_eq!(q, big, "lent the stashed span");
    // SAFETY: live, freed once.
    unsafe {
        cache.free(&heap, p);
        cache.free(&heap, q);
    }
    cache.flush(&heap);
    heap.check_invariants();
}

#[test]
fn a_thread_lends_one_stashed_span_at_a_time() {
    let heap = heap();
    let mut cache = cache_with_reserve();
    let (p, stashed) = build_buffer(&heap, &mut cache, 1 << 20);
    // SAFETY: live, freed once (into the stash).
    unsafe { cache.free(&heap, p) };
    // A is lent that span, and lives on.
    let (a, a_start) = build_buffer(&heap, &mut cache, GROWTH_MIN);
    assert_eq!(a_start, stashed);
    // Another 1 MiB span goes to the stash...
    let big = cache.alloc(&heap, 1 << 20, 8);
    // SAFETY: live, freed once.
    unsafe { cache.free(&heap, big) };
    assert_eq!(cache.stashed_bytes(), (1 << 20) + GUARD_PAGES.bytes());
    // ...but while A holds its lent span, B is not lent it: B gets a span of its own
    // room from the page heap.
    let (b, _) = build_buffer(&heap, &mut cache, GROWTH_MIN);
    assert_eq!(heap.usable_size(b), growth_room(GROWTH_MIN));
    // Once A is freed (back to the stash), the next buffer is lent a stashed span again.
    // SAFETY: live, freed once.
    unsafe { cache.free(&heap, a) };
    let (c, c_start) = build_buffer(&heap, &mut cache, GROWTH_MIN);
    assert_eq!(c_start, stashed);
    assert_eq!(heap.usable_size(c), 1 << 20);
    // SAFETY: live, freed once.
    unsafe { cache.free(&heap, b) };
    // SAFETY: live, freed once.
    unsafe { cache.free(&heap, c) };
    cache.flush(&heap);
    heap.check_invariants();
}

#[test]
fn an_object_resized_once_keeps_an_exact_class() {
    let heap = heap();
    let mut cache = cache_with_reserve();
    // A growth that is not the thread's growing buffer moves to the exact class (no
    // headroom, no page span), however large the medium size.
    let p = cache.alloc(&heap, 5000, 8);
    // SAFETY: live; the result replaces it.
    let p = unsafe { cache.realloc(&heap, p, 8, 20_000) };
    assert!(matches!(heap.owner(p), Owner::Small(_)));
    assert_eq!(
        heap.usable_size(p),
        size_class::class_of(20_000).unwrap().size()
    );
    // Shrinking a small object moves it to its exact class too (a layout names the
    // class of the span that holds the object).
    // SAFETY: as above.
    let q = unsafe { cache.realloc(&heap, p, 8, 12_000) };
    assert_ne!(q, p);
    assert_eq!(
        heap.usable_size(q),
        size_class::class_of(12_000).unwrap().size()
    );
    // SAFETY: live, freed once.
    unsafe { cache.free(&heap, q) };
    cache.flush(&heap);
    heap.check_invariants();
}

#[test]
fn a_growing_large_object_takes_headroom_in_place_up_to_a_bound() {
    // A free run follows the span for all the growths below.
    let heap = roomy_heap();
    let mut cache = cache_with_reserve();
    let mut p = cache.alloc(&heap, 64 << 10, 8);
    fill(p, 64 << 10, 3);
    // SAFETY: live; each result replaces the buffer.
    unsafe {
        // A fresh heap has a free run after the span: growth is in place, with room for
        // GROWTH_HEADROOM times the new size.
        let q = cache.realloc(&heap, p, 8, 128 << 10);
        assert_eq!(q, p);
        assert_eq!(heap.usable_size(p), GROWTH_HEADROOM * (128 << 10));
        // Past GROWTH_HEADROOM_MAX the headroom stops growing with the object.
        let big = 4 * GROWTH_HEADROOM_MAX;
        p = cache.realloc(&heap, p, 8, big);
        assert_eq!(
            heap.usable_size(p),
            big + (GROWTH_HEADROOM - 1) * GROWTH_HEADROOM_MAX
        );
        assert!(filled(p, 64 << 10, 3));
        cache.free(&heap, p);
    }
    cache.flush(&heap);
    heap.check_invariants();
}

#[test]
fn a_page_span_object_stays_when_it_shrinks_by_at_most_half() {
    let heap = heap();
    let mut cache = cache_with_reserve();
    let p = cache.alloc(&heap, 40 << 10, 8);
    let room = heap.usable_size(p);
    // SAFETY: live; each result replaces it.
    unsafe {
        // Into the small range, using more than half of the span: in place (it would
        // otherwise be copied to a class of nearly the same size).
        let q = cache.realloc(&heap, p, 8, room / 2 + 1);
        assert_eq!(q, p);
        assert_eq!(heap.usable_size(q), room);
        // Less than half: moved to its class.
        let r = cache.realloc(&heap, q, 8, 1000);
        assert_ne!(r, q);
        assert!(matches!(heap.owner(r), Owner::Small(_)));
        cache.free(&heap, r);
    }
    cache.flush(&heap);
    heap.check_invariants();
}

#[test]
fn the_cache_walker_catches_a_broken_bin() {
    let heap = heap();
    let mut cache = cache_with_reserve();
    let objs: Vec<*mut u8> = (0..100).map(|_| cache.alloc(&heap, 48, 8)).collect();
    for &p in &objs[..50] {
        // SAFETY: live objects, freed once.
        unsafe { cache.free(&heap, p) };
    }
    assert_eq!(cache.invariant_violation(&heap), None);
    // A live object slipped onto the bin behind the cache's back: it carries no key.
    let class = size_class::class_of(48).unwrap();
    let head = cache.bin(class).head;
    // SAFETY: test only: `objs[60]` is live and ours; the bin's count is raised to match.
    unsafe { span::set_next_free(objs[60], head) };
    cache.bin(class).head = objs[60];
    cache.bin(class).room -= 1;
    if crate::check::FREE_CHECKS {
        assert_eq!(
            cache.invariant_violation(&heap),
            Some("a bin's objects carry the free key")
        );
    }
    // A count that disagrees with the list: undo, then break the count.
    cache.bin(class).head = head;
    cache.bin(class).room += 2;
    assert_eq!(
        cache.invariant_violation(&heap),
        Some("a bin holds no more objects than its count")
    );
    cache.bin(class).room -= 2;
    assert_eq!(
        cache.invariant_violation(&heap),
        Some("a bin holds as many objects as its count")
    );
    cache.bin(class).room += 1;
    assert_eq!(cache.invariant_violation(&heap), None);
    for &p in &objs[50..] {
        // SAFETY: live objects, freed once.
        unsafe { cache.free(&heap, p) };
    }
    cache.flush(&heap);
    cache.check_invariants(&heap);
}

#[test]
fn a_cache_keeps_its_free_objects_within_the_thread_budget() {
    let heap = heap();
    heap.set_thread_cache_bytes(512 << 10);
    let mut cache = cache_with_reserve();
    let mut rng = Rng(777);
    // Rounds of many objects of a few sizes, allocated and then all freed: each round's
    // frees would fill several bins to their own bounds (256 KiB each).
    for round in 0..6 {
        let sizes = [48, 200, 1000, 3000, 9000, 20000];
        let live: Vec<(*mut u8, usize)> = (0..3000)
            .map(|_| {
                let size = sizes[(rng.below(6) + round) as usize % 6];
                (cache.alloc(&heap, size, 8), size)
            })
            .collect();
        for (p, size) in live {
            assert!(!p.is_null());
            // SAFETY: live objects, freed once.
            unsafe { cache.dealloc(&heap, p, size, 8) };
        }
        cache.check_invariants(&heap);
        let held: usize = cache
            .cached_objects()
            .iter()
            .enumerate()
            .map(|(c, n)| n * SizeClass(c as u8).size())
            .sum();
        // The budget, plus at most one batch a class kept whatever the budget.
        let slack: usize = SizeClass::all()
            .map(|c| crate::central_free_list::batch_size(c) * c.size())
            .max()
            .unwrap();
        assert!(
            held <= (512 << 10) + slack,
            "round {round}: {held} bytes held"
        );
    }
    cache.flush(&heap);
    heap.release_free_memory();
    heap.check_invariants();
    assert_eq!(heap.page_heap_stats().small_spans, 0);
}

/// The cache of exited threads (with `small-tls`: one static that every exited thread's
/// fast paths use at once) is never filled: its fast paths find no object and no room, and
/// only read it. Two threads run the raw fast paths on one such cache at once. Under Miri
/// (CI's robustness job), a `&mut ThreadCache` or `&mut Bin` formed by either thread is
/// undefined behaviour: two live mutable references from two threads, whose uses Stacked
/// Borrows rejects. Natively: nothing is found and nothing is written.
#[test]
fn a_shared_never_filled_cache_is_only_read_by_the_fast_paths() {
    let shared = Box::leak(Box::new(ThreadCache::new())) as *mut ThreadCache as usize;
    let class = size_class::class_of(64).unwrap();
    // An object's start in a small span of that class, as its page's word says: the pushes
    // pass the pointer checks and stop at the bin's room (never written to).
    let start = 1usize << 30;
    let word = crate::page_map::small_word(start, class.index() as u8);
    // A large object's start, as its listed word says: the push stops at the lists' limit.
    let listed = crate::page_map::listed_large_word(start, Pages(13));
    let heap = heap();
    let heap = &*heap;
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(move || {
                let cache = shared as *mut ThreadCache;
                for _ in 0..3 {
                    // SAFETY: `cache` is live and never holds an object (the fast paths'
                    // contract for a shared cache); 64 is a small size; `start` is never
                    // dereferenced by a push that finds no room.
                    unsafe {
                        assert!(ThreadCache::pop_small_raw(cache, 64).is_null());
                        assert!(ThreadCache::pop_raw(cache, class).is_null());
                        assert!(!ThreadCache::push_small_raw(cache, start as *mut u8, word));
                        assert!(!ThreadCache::push_sized_raw(
                            cache,
                            start as *mut u8,
                            word,
                            64
                        ));
                        assert!(ThreadCache::pop_listed_raw(cache, heap, 100_000).is_null());
                        assert!(!ThreadCache::push_listed_raw(
                            cache,
                            start as *mut u8,
                            listed
                        ));
                    }
                }
            });
        }
    });
    // SAFETY: the threads are done; the cache was only read.
    let cache = unsafe { &*(shared as *const ThreadCache) };
    assert!(!cache.active);
    assert!(
        cache
            .bins
            .iter()
            .all(|b| b.head.is_null() && b.room == 0 && b.max == 0)
    );
    assert!(cache.large_lists_empty());
}

/// Past its budget, a cache that keeps running dry in one class takes room from its largest
/// bin on one growth in `STEAL_EVERY`, not on every one (which traded objects back and forth
/// through the central lists): the largest bin keeps its bound through 15 refused growths
/// and is halved at the 16th.
#[test]
fn past_its_budget_a_cache_takes_room_from_its_largest_bin_once_in_sixteen_growths() {
    let heap = heap();
    // A cache with no reserve (the orphan cache's kind); one with a reserve halves the same
    // way, and lets a refused growth wait in the reserve besides
    // (`past_the_bins_budget_a_refused_growth_is_allowed_in_the_reserve`).
    let mut cache = ThreadCache::new();
    let big = size_class::class_of(1000).unwrap();
    let hot = size_class::class_of(48).unwrap();
    // The 1000-byte bin's bound grows with every refill to its class bound.
    let mut held: Vec<(*mut u8, usize)> = (0..2000)
        .map(|_| (cache.alloc(&heap, 1000, 8), 1000))
        .collect();
    let big_max = cache.bins[big.index()].max;
    assert!(big_max > 2 * crate::central_free_list::batch_size(big) as u32);
    // From now on every growth is past the budget.
    heap.set_thread_cache_bytes(cache.bound_bytes);
    let mut growths = 0;
    while growths < bins::STEAL_EVERY {
        let runs_dry = cache.bins[hot.index()].head.is_null();
        let p = cache.alloc(&heap, 48, 8);
        assert!(!p.is_null());
        held.push((p, 48));
        if runs_dry {
            // A refill: it asks for one batch more than the bound (from none at first).
            growths += 1;
            let now = cache.bins[big.index()].max;
            if growths < bins::STEAL_EVERY {
                assert_eq!(
                    now, big_max,
                    "growth {growths}: the largest bin keeps its bound"
                );
            } else {
                assert_eq!(
                    now,
                    big_max / 2,
                    "growth {growths}: the largest bin is halved"
                );
            }
        }
    }
    cache.check_invariants(&heap);
    for (p, size) in held {
        // SAFETY: live objects, freed once.
        unsafe { cache.dealloc(&heap, p, size, 8) };
    }
    cache.flush(&heap);
    heap.check_invariants();
}

/// With a reserve, a growth past the bins' budget that is refused lets the class keep that
/// much more in the reserve instead: a batch per refused growth.
#[test]
fn past_the_bins_budget_a_refused_growth_is_allowed_in_the_reserve() {
    let heap = heap();
    heap.set_bin_bytes(reserve::REACHABLE_BYTES);
    let mut cache = cache_with_reserve();
    let hot = size_class::class_of(48).unwrap();
    let batch = crate::central_free_list::batch_size(hot) as u32;
    // One class takes the bins' whole budget.
    let mut held = alloc_n(&heap, &mut cache, 1000, 1100);
    let mut refused = 0;
    while refused < 2 * bins::STEAL_EVERY {
        let runs_dry = cache.bins[hot.index()].head.is_null();
        let before = (
            cache.bins[hot.index()].max,
            cache.reserve_allowed[hot.index()],
        );
        held.push(cache.alloc(&heap, 48, 8));
        if runs_dry && before.0 >= batch && cache.bins[hot.index()].max == before.0 {
            refused += 1;
            assert_eq!(
                cache.reserve_allowed[hot.index()],
                before.1 + batch,
                "a refused growth is allowed in the reserve"
            );
        }
    }
    cache.check_invariants(&heap);
    free_all(&heap, &mut cache, &held);
    cache.flush(&heap);
    heap.check_invariants();
}

/// A cache with no budget at all still takes frees: a bin always has room for one batch.
/// Objects made by one cache and freed into another whose bins have never held anything
/// (their bound is 0, and past the budget no bin may grow): before, the full, empty bin
/// had nothing to hand back and the free followed a null link.
#[test]
fn a_cache_with_no_budget_takes_frees_into_empty_bins() {
    let heap = heap();
    heap.set_thread_cache_bytes(0);
    let mut maker = ThreadCache::new();
    let mut freer = ThreadCache::new();
    let sizes = [16, 48, 200, 1000, 5000, 20000];
    let objects: Vec<(*mut u8, usize)> = (0..600)
        .map(|i| {
            let size = sizes[i % sizes.len()];
            (maker.alloc(&heap, size, 8), size)
        })
        .collect();
    for (p, size) in objects {
        assert!(!p.is_null());
        // SAFETY: live objects, freed once (into another cache).
        unsafe { freer.dealloc(&heap, p, size, 8) };
    }
    freer.check_invariants(&heap);
    maker.flush(&heap);
    freer.flush(&heap);
    heap.check_invariants();
}

/// Lending the best-fitting stashed span out of the middle of the stash keeps the others,
/// each once and in order: they serve the next allocations of their lengths.
#[test]
fn lending_a_span_from_the_middle_of_the_stash_keeps_the_others_once_each() {
    let heap = heap();
    let mut cache = cache_with_reserve();
    // A small allocation activates the cache (an inactive one stashes nothing).
    let small = cache.alloc(&heap, 64, 8);
    // Longer than the large lists take.
    let sizes = [300_000, 400_000, 900_000];
    let large: Vec<*mut u8> = sizes.iter().map(|&s| cache.alloc(&heap, s, 8)).collect();
    for &p in &large {
        // SAFETY: live, freed once (into the stash).
        unsafe { cache.free(&heap, p) };
    }
    assert_eq!(stash_starts(&cache).len(), 3);
    // The shortest stashed span with 350 000 bytes of room: the middle one.
    let lent = cache.lend_stashed(&heap, 350_000, 8);
    assert_eq!(lent, Some(large[1]));
    assert_eq!(stash_starts(&cache).len(), 2);
    let starts = stash_starts(&cache);
    assert_eq!(starts, [large[0] as usize, large[2] as usize]);
    assert_eq!(cache.alloc(&heap, sizes[0], 8), large[0]);
    assert_eq!(cache.alloc(&heap, sizes[2], 8), large[2]);
    assert_eq!(stash_starts(&cache).len(), 0);
    for p in [large[0], large[1], large[2], small] {
        // SAFETY: live, freed once.
        unsafe { cache.free(&heap, p) };
    }
    cache.flush(&heap);
    heap.check_invariants();
}

/// A cache counts its frees (small ones on the fast path, large ones, a moved large
/// `realloc`'s), adds its counts to the heap's totals on a slow path once
/// `FOLD_EVERY` wait, and all of them at its flush. (Allocations are the sampler's
/// charges, which the global allocator makes: none here.)
#[test]
fn a_cache_counts_its_frees_and_folds_them_into_the_heap() {
    let heap = heap();
    let mut cache = cache_with_reserve();
    let small: Vec<*mut u8> = (0..100).map(|_| cache.alloc(&heap, 64, 8)).collect();
    let large = cache.alloc(&heap, 100_000, 8);
    let grown = cache.alloc(&heap, 50_000, 8);
    for &p in &small {
        // SAFETY: live, freed once.
        unsafe { cache.free(&heap, p) };
    }
    // SAFETY: live, freed once (into the stash).
    unsafe { cache.free(&heap, large) };
    // SAFETY: live; moved into a page span with room, the old one freed.
    let moved = unsafe { cache.realloc(&heap, grown, 8, 4 << 20) };
    assert_ne!(moved, grown);
    assert_eq!(cache.counts().frees, 102);
    assert_eq!(
        heap.folded_counts(),
        Counts::default(),
        "nothing folded yet"
    );
    // Past `FOLD_EVERY`, the next slow path folds.
    for _ in 0..FOLD_EVERY {
        let p = cache.alloc(&heap, 64, 8);
        // SAFETY: live, freed once.
        unsafe { cache.free(&heap, p) };
    }
    assert_eq!(heap.folded_counts(), Counts::default(), "fast paths only");
    let held: Vec<*mut u8> = (0..5000).map(|_| cache.alloc(&heap, 200, 8)).collect();
    let folded = heap.folded_counts().frees;
    assert_eq!(folded, 102 + FOLD_EVERY, "the allocation slow path folded");
    // A cache that only frees (objects another made) folds on its free slow path.
    let mut freer = ThreadCache::new();
    for &p in &held {
        // SAFETY: live, freed once.
        unsafe { freer.free(&heap, p) };
    }
    assert!(
        heap.folded_counts().frees >= folded + FOLD_EVERY,
        "the free slow path folded"
    );
    // SAFETY: live, freed once.
    unsafe { cache.free(&heap, moved) };
    cache.flush(&heap);
    freer.flush(&heap);
    assert_eq!(heap.folded_counts().frees, 102 + FOLD_EVERY + 5000 + 1);
    assert_eq!(cache.unfolded_counts(), Counts::default());
    heap.check_invariants();
}

/// A bin that grew to its bound shrinks to a lowered one (`Heap::set_bin_bytes`) the next
/// time a free finds it full, handing back what it then holds too many of.
#[test]
fn a_full_bin_shrinks_to_a_lowered_bound_at_its_next_spill() {
    let heap = heap();
    let mut cache = cache_with_reserve();
    let class = crate::size_class::class_of(64).unwrap();
    let bound = bins::class_bound(class, heap.bin_bytes());
    // Twice the bound allocated and freed: the bin grows to its bound on the way.
    let held: Vec<*mut u8> = (0..2 * bound).map(|_| cache.alloc(&heap, 64, 8)).collect();
    for &p in &held {
        // SAFETY: live, freed once.
        unsafe { cache.free(&heap, p) };
    }
    assert_eq!(cache.bin(class).max, bound);
    heap.set_bin_bytes(16 << 10);
    let lowered = bins::class_bound(class, heap.bin_bytes());
    assert!(lowered < bound);
    // More objects freed than the bin holds: once it is full, the next free spills a
    // batch, then shrinks the bin to the new bound.
    let more: Vec<*mut u8> = (0..2 * bound).map(|_| cache.alloc(&heap, 64, 8)).collect();
    for &p in &more {
        // SAFETY: live, freed once.
        unsafe { cache.free(&heap, p) };
    }
    assert_eq!(cache.bin(class).max, lowered);
    assert!(cache.bin(class).len() <= lowered);
    cache.check_invariants(&heap);
    cache.flush(&heap);
    heap.check_invariants();
}

/// The budget test of a bin's growth, at its edges: a growth that fits the budget exactly
/// is taken, one a byte past it is not; past the budget, the growth that takes room from
/// the largest other bin is taken when that room makes it fit exactly, and refused when it
/// does not make it fit.
#[test]
fn a_growth_is_taken_exactly_when_it_fits_the_budget() {
    let heap = heap();
    // The halving path: a cache with no reserve.
    let mut cache = ThreadCache::new();
    let hot = size_class::class_of(48).unwrap();
    let batch = crate::central_free_list::batch_size(hot) as u32;
    let batch_bytes = batch as usize * hot.size();
    let mut held = Vec::new();
    // Allocates from the hot bin until it refills once; the bin's bound after it.
    let refill = |cache: &mut ThreadCache, held: &mut Vec<*mut u8>| {
        while !cache.bins[hot.index()].head.is_null() {
            held.push(cache.alloc(&heap, 48, 8));
        }
        held.push(cache.alloc(&heap, 48, 8));
        cache.bins[hot.index()].max
    };
    assert_eq!(refill(&mut cache, &mut held), batch, "the first refill");
    heap.set_thread_cache_bytes(cache.bound_bytes + batch_bytes);
    assert_eq!(refill(&mut cache, &mut held), 2 * batch, "fits exactly");
    heap.set_thread_cache_bytes(cache.bound_bytes + batch_bytes - 1);
    assert_eq!(
        refill(&mut cache, &mut held),
        2 * batch,
        "a byte past the budget"
    );

    // A victim: the 1000-byte bin, grown to four batches (under a wide budget), halved by
    // the steal.
    heap.set_thread_cache_bytes(4 << 20);
    let big = size_class::class_of(1000).unwrap();
    let big_held: Vec<*mut u8> = (0..600).map(|_| cache.alloc(&heap, 1000, 8)).collect();
    for &p in &big_held {
        // SAFETY: live, freed once.
        unsafe { cache.free(&heap, p) };
    }
    let vmax = cache.bins[big.index()].max;
    assert!(vmax >= 4, "{vmax}");
    let freed_by_steal = (vmax - vmax / 2) as usize * big.size();
    // Past the budget by exactly what halving the victim frees: the sixteenth refused
    // growth steals, and then fits exactly.
    heap.set_thread_cache_bytes(cache.bound_bytes + batch_bytes - freed_by_steal);
    cache.over_budget = 0;
    for growth in 1..=bins::STEAL_EVERY {
        let max = refill(&mut cache, &mut held);
        if growth < bins::STEAL_EVERY {
            assert_eq!(max, 2 * batch, "growth {growth}: refused");
        } else {
            assert_eq!(max, 3 * batch, "growth {growth}: the steal made room");
            assert_eq!(cache.bins[big.index()].max, vmax / 2);
        }
    }
    // Past it by more than the victim can give: the steal halves it, and the growth is
    // still refused.
    let vmax = cache.bins[big.index()].max;
    heap.set_thread_cache_bytes(cache.bound_bytes + batch_bytes - (vmax as usize * big.size()) - 1);
    cache.over_budget = 0;
    for growth in 1..=bins::STEAL_EVERY {
        assert_eq!(
            refill(&mut cache, &mut held),
            3 * batch,
            "growth {growth}: refused"
        );
    }
    for p in held {
        // SAFETY: live objects, freed once.
        unsafe { cache.free(&heap, p) };
    }
    cache.check_invariants(&heap);
    cache.flush(&heap);
    heap.check_invariants();
}

/// `realloc`'s move without a lock: an object of the new size's class from its bin (null
/// when the bin is empty), remembered as the growing buffer only when it grows.
#[test]
fn pop_for_move_takes_the_new_class_and_remembers_only_growth() {
    let heap = heap();
    let mut cache = cache_with_reserve();
    for (new_size, medium) in [(100usize, false), (1500, true)] {
        let class = size_class::class_of(new_size).unwrap();
        assert!(cache.pop_for_move(16, new_size).is_null(), "an empty bin");
        assert_eq!(cache.cached_objects()[class.index()], 0);
        // Fill the bin: an object allocated (the bin refilled with a batch) and freed.
        let p = cache.alloc(&heap, new_size, 8);
        // SAFETY: live, freed once.
        unsafe { cache.free(&heap, p) };
        let n = cache.cached_objects()[class.index()];
        assert!(n >= 1);
        cache.grown = 0;
        let q = cache.pop_for_move(16, new_size);
        assert_eq!(q, p, "{new_size}: the bin's last freed object");
        assert_eq!(cache.cached_objects()[class.index()], n - 1);
        assert_eq!(
            cache.grown, q as usize,
            "{new_size}: a growth is remembered"
        );
        match heap.owner(q) {
            // SAFETY: a live span record the page map named.
            Owner::Small(span) => assert_eq!(unsafe { span.as_ref() }.class(), class),
            Owner::Large(_) => panic!("{new_size}: a large object"),
        }
        // Shrinking, or the same size: not a growth.
        for old_size in [new_size, 20_000] {
            // SAFETY: live, freed once.
            unsafe { cache.free(&heap, q) };
            cache.grown = 0;
            let r = cache.pop_for_move(old_size, new_size);
            assert_eq!(r, q);
            assert_eq!(
                cache.grown, 0,
                "{old_size} -> {new_size} (medium: {medium})"
            );
        }
        // SAFETY: live, freed once.
        unsafe { cache.free(&heap, q) };
    }
    cache.flush(&heap);
    heap.check_invariants();
}

/// The stash goes back when it served nothing for a quarter of the decay time: a trim
/// that finds it used keeps it and looks again a quarter decay later, not before.
/// The first look at a stash starts its first period (a stash that has not served yet is
/// kept); a later look gives it back if it served nothing for a quarter decay since the
/// look before.
#[test]
fn an_unused_stash_goes_back_a_quarter_decay_after_the_last_look() {
    let heap = heap();
    heap.set_decay_ms(100);
    heap.set_fake_now(1000);
    let mut cache = cache_with_reserve();
    let small = cache.alloc(&heap, 64, 8);
    // Longer than the large lists take.
    let p = cache.alloc(&heap, 300_000, 8);
    // SAFETY: live, freed once (into the stash).
    unsafe { cache.free(&heap, p) };
    cache.maybe_trim(&heap);
    assert_eq!(
        stash_starts(&cache),
        [p as usize],
        "the first look keeps it"
    );
    // Taken again (the stash served), stashed again.
    let q = cache.alloc(&heap, 300_000, 8);
    assert_eq!(q, p, "from the stash");
    // SAFETY: live, freed once (into the stash).
    unsafe { cache.free(&heap, q) };
    heap.set_fake_now(1025);
    cache.maybe_trim(&heap);
    assert_eq!(
        stash_starts(&cache).len(),
        1,
        "used since the last look: kept"
    );
    heap.set_fake_now(1049);
    cache.maybe_trim(&heap);
    assert_eq!(stash_starts(&cache).len(), 1, "the next look is at 1050");
    heap.set_fake_now(1050);
    cache.maybe_trim(&heap);
    assert_eq!(
        stash_starts(&cache).len(),
        0,
        "unused for a quarter decay: given back"
    );
    // SAFETY: live, freed once.
    unsafe { cache.free(&heap, small) };
    cache.flush(&heap);
    heap.check_invariants();
}

/// Bytes of free objects in the reserve of `cache`.
fn reserve_bytes(cache: &ThreadCache) -> usize {
    cache.reserve().unwrap().inspect().bytes
}

/// Allocates `n` objects of `size` bytes through `cache`.
fn alloc_n(heap: &Heap<FakePages>, cache: &mut ThreadCache, size: usize, n: usize) -> Vec<*mut u8> {
    (0..n)
        .map(|_| {
            let p = cache.alloc(heap, size, 8);
            assert!(!p.is_null());
            p
        })
        .collect()
}

/// Frees every object of `ptrs` through `cache`.
fn free_all(heap: &Heap<FakePages>, cache: &mut ThreadCache, ptrs: &[*mut u8]) {
    for &p in ptrs {
        // SAFETY: live objects of this heap, freed once.
        unsafe { cache.free(heap, p) };
    }
}

/// With a reserve, the bins keep at most `REACHABLE_BYTES` of bound and what a bin spills
/// past that stays with the cache, in its reserve, up to the rest of the budget: no object
/// goes back to its central list, and the cache's next allocations take them from the
/// reserve again.
#[test]
fn past_its_bins_a_cache_keeps_its_frees_in_its_reserve() {
    let heap = heap();
    heap.set_bin_bytes(4 << 20); // one class may take the whole budget
    let mut cache = cache_with_reserve();
    let class = size_class::class_for(1024, 8).unwrap();
    let n = (3 << 20) / 1024;
    let ptrs = alloc_n(&heap, &mut cache, 1024, n);
    let out = heap.central_stats(class).out_of_spans;
    assert!(out >= n);
    free_all(&heap, &mut cache, &ptrs);
    cache.check_invariants(&heap);
    assert!(cache.bound_bytes <= reserve::REACHABLE_BYTES);
    let kept = reserve_bytes(&cache);
    assert!(
        kept >= (2 << 20),
        "the bins' overflow is in the reserve: {kept}"
    );
    assert_eq!(
        heap.central_stats(class).out_of_spans,
        out,
        "nothing went back to the central list"
    );
    let again = alloc_n(&heap, &mut cache, 1024, n);
    assert_eq!(reserve_bytes(&cache), 0, "taken from the reserve again");
    assert_eq!(
        heap.central_stats(class).out_of_spans,
        out,
        "and not the central list"
    );
    cache.check_invariants(&heap);
    free_all(&heap, &mut cache, &again);
    cache.flush(&heap);
    assert_eq!(reserve_bytes(&cache), 0, "a flush empties the reserve");
    assert_eq!(heap.central_stats(class).out_of_spans, 0);
    heap.check_invariants();
}

/// A class keeps no more objects in the bin and the reserve together than a bin of it may
/// hold (`class_bound`): a bin at that bound spills to the central list, where other
/// threads find the objects (a consumer thread freeing what producers allocate).
#[test]
fn a_class_keeps_no_more_in_the_reserve_than_its_bin_could_hold() {
    let heap = heap();
    let mut cache = cache_with_reserve();
    let class = size_class::class_for(1024, 8).unwrap();
    let bound = bins::class_bound(class, heap.bin_bytes()) as usize;
    let ptrs = alloc_n(&heap, &mut cache, 1024, 4 * bound);
    free_all(&heap, &mut cache, &ptrs);
    cache.check_invariants(&heap);
    assert_eq!(
        cache.cached_objects()[class.index()],
        bound,
        "the bin at its bound"
    );
    assert_eq!(reserve_bytes(&cache), 0, "and nothing of it in the reserve");
    cache.flush(&heap);
    // With a bound past the bins' budget (2 MiB of the class), the bin stops at the budget
    // (1 MiB) and the reserve holds the difference to the bound, no more, though its own
    // budget (3 MiB) has room.
    heap.set_bin_bytes(2 << 20);
    let bound = bins::class_bound(class, heap.bin_bytes()) as usize;
    let mut cache = cache_with_reserve();
    let ptrs = alloc_n(&heap, &mut cache, 1024, 2 * bound);
    free_all(&heap, &mut cache, &ptrs);
    cache.check_invariants(&heap);
    let in_bin = cache.cached_objects()[class.index()];
    let in_reserve = cache.reserve().unwrap().inspect().lists[class.index()].len;
    assert!(in_bin < bound, "the bin is short of its bound: {in_bin}");
    assert!(in_reserve > 0, "the reserve holds some");
    assert!(
        in_bin + in_reserve <= bound,
        "{in_bin} + {in_reserve} > {bound}"
    );
    assert!(
        in_bin + in_reserve + crate::central_free_list::batch_size(class) > bound,
        "up to the bound: {in_bin} + {in_reserve}"
    );
    cache.flush(&heap);
    heap.check_invariants();
}

/// The reserve keeps what the bins' budget kept a bin from growing to when it ran dry: a
/// cache that only frees what another allocated (a consumer thread) never runs dry, keeps
/// nothing in its reserve, and sends its spills on to the central lists, where the
/// allocating thread finds them.
#[test]
fn a_cache_that_only_frees_keeps_nothing_in_its_reserve() {
    let heap = heap();
    heap.set_bin_bytes(4 << 20);
    let mut producer = cache_with_reserve();
    let mut consumer = cache_with_reserve();
    let ptrs = alloc_n(&heap, &mut producer, 1024, (3 << 20) / 1024);
    free_all(&heap, &mut consumer, &ptrs);
    consumer.check_invariants(&heap);
    assert_eq!(reserve_bytes(&consumer), 0);
    assert!(
        consumer.cached_objects().iter().sum::<usize>() <= 64,
        "a batch or two"
    );
    producer.flush(&heap);
    consumer.flush(&heap);
    heap.check_invariants();
}

/// The reserve keeps no more than the budget the bins leave it; the rest of a spill goes
/// back to the central list.
#[test]
fn a_reserve_keeps_only_what_the_bins_leave_of_the_budget() {
    let heap = heap();
    heap.set_thread_cache_bytes(reserve::REACHABLE_BYTES + (512 << 10));
    heap.set_bin_bytes(4 << 20);
    let mut cache = cache_with_reserve();
    let class = size_class::class_for(1024, 8).unwrap();
    let n = (3 << 20) / 1024;
    let ptrs = alloc_n(&heap, &mut cache, 1024, n);
    free_all(&heap, &mut cache, &ptrs);
    cache.check_invariants(&heap);
    let kept = reserve_bytes(&cache);
    assert!(kept <= 512 << 10, "within its budget: {kept}");
    assert!(kept > (512 << 10) - 64 * 1024, "and filled to it: {kept}");
    let in_cache: usize = cache.cached_objects()[class.index()] + kept / 1024;
    let c = heap.central_stats(class);
    assert_eq!(c.out_of_spans - c.transfer, in_cache, "the rest went back");
    cache.flush(&heap);
    heap.check_invariants();
}

/// A cache with no reserve (the orphan cache, a bare test cache) keeps its whole budget in
/// its bins, as before reserves.
#[test]
fn without_a_reserve_the_bins_take_the_whole_budget() {
    let heap = heap();
    let mut cache = ThreadCache::new();
    assert_eq!(
        cache.bins_budget(&heap),
        crate::heap::DEFAULT_THREAD_CACHE_BYTES
    );
    assert_eq!(cache.reserve_budget(&heap), 0);
    let with = cache_with_reserve();
    assert_eq!(with.bins_budget(&heap), reserve::REACHABLE_BYTES);
    assert_eq!(
        with.reserve_budget(&heap),
        crate::heap::DEFAULT_THREAD_CACHE_BYTES - reserve::REACHABLE_BYTES
    );
    heap.set_thread_cache_bytes(100 << 10);
    assert_eq!(with.bins_budget(&heap), 100 << 10);
    assert_eq!(with.reserve_budget(&heap), 0);
    // A freed large object goes straight back: no stash without a reserve.
    let small = cache.alloc(&heap, 64, 8);
    let p = cache.alloc(&heap, 100_000, 8);
    // SAFETY: live, freed once.
    unsafe { cache.free(&heap, p) };
    assert_eq!(cache.stashed_bytes(), 0);
    assert_eq!(heap.page_heap_stats().large_in_use, 0);
    // SAFETY: live, freed once.
    unsafe { cache.free(&heap, small) };
    cache.flush(&heap);
    heap.check_invariants();
}

/// Another thread's reclaim takes a reserve the owner has not used for the idle time, and
/// not one it used since: the reclaimer stamps a reserve when it finds it used, and takes
/// it once the idle time has passed since that stamp. `Reclaim::All` takes every reserve;
/// one taken out of the list, or whose lock is busy, is left alone.
#[test]
fn a_reclaim_takes_the_reserves_idle_for_the_time_and_no_others() {
    use reserve::{Reclaim, Reserves};
    let heap = heap();
    heap.set_fake_now(1000);
    heap.set_bin_bytes(4 << 20);
    let reserves = Reserves::new();
    let mut a = cache_with_reserve();
    let mut b = cache_with_reserve();
    // SAFETY: leaked reserves, in place for good; each in this list once.
    unsafe {
        reserves.insert(a.reserve().unwrap());
        reserves.insert(b.reserve().unwrap());
    }
    let n = (3 << 20) / 256;
    let pa = alloc_n(&heap, &mut a, 256, n);
    let pb = alloc_n(&heap, &mut b, 256, n);
    free_all(&heap, &mut a, &pa);
    free_all(&heap, &mut b, &pb);
    let (ka, kb) = (reserve_bytes(&a), reserve_bytes(&b));
    assert!(ka > 0 && kb > 0);
    let (objects, stashed) = reserves.held_counts();
    assert_eq!(objects.iter().sum::<usize>() * 256, ka + kb);
    assert_eq!(stashed, 0);
    // SAFETY: both caches are over `heap`.
    let reclaim = |what| unsafe { reserves.reclaim(&heap, what) };
    assert_eq!(reclaim(Reclaim::IdleFor(100)), 0, "both just used");
    heap.set_fake_now(1050);
    // `b` uses its reserve: a batch out.
    let in_bin = cache_bins_len(&b, 256);
    let more = alloc_n(&heap, &mut b, 256, in_bin + 1);
    let kb = reserve_bytes(&b);
    heap.set_fake_now(1099);
    assert_eq!(reclaim(Reclaim::IdleFor(100)), 0, "a: 99 ms idle");
    heap.set_fake_now(1100);
    assert_eq!(reclaim(Reclaim::IdleFor(100)), ka, "a: 100 ms idle");
    assert_eq!(reserve_bytes(&a), 0);
    assert_eq!(reserve_bytes(&b), kb, "b was used at 1050");
    a.check_invariants(&heap);
    // The reclaimed objects are back in their spans: `a` still works.
    let again = alloc_n(&heap, &mut a, 256, n);
    free_all(&heap, &mut a, &again);
    // A busy reserve is skipped, and one out of the list is never looked at.
    {
        let _busy = b.reserve().unwrap().inspect();
        // SAFETY: as above.
        unsafe { reserves.remove(a.reserve().unwrap()) };
        assert_eq!(reclaim(Reclaim::All), 0);
    }
    assert!(reserve_bytes(&a) > 0);
    assert_eq!(reclaim(Reclaim::All), kb);
    assert_eq!(reserve_bytes(&b), 0);
    free_all(&heap, &mut b, &more);
    b.check_invariants(&heap);
    a.flush(&heap);
    b.flush(&heap);
    heap.release_free_memory();
    heap.check_invariants();
    assert_eq!(
        heap.page_heap_stats().small_spans,
        0,
        "every object came home"
    );
}

/// Objects of the class of `size` in the bins of `cache`.
fn cache_bins_len(cache: &ThreadCache, size: usize) -> usize {
    cache.cached_objects()[size_class::class_for(size, 8).unwrap().index()]
}

/// The stash is in the reserve: a reclaim gives stashed spans back to the page heap, and
/// the owner, finding its stash emptied, takes a new span from the page heap.
#[test]
fn a_reclaim_gives_an_idle_threads_stash_back() {
    use reserve::{Reclaim, Reserves};
    let heap = heap();
    let reserves = Reserves::new();
    let mut cache = cache_with_reserve();
    // SAFETY: a leaked reserve, in this list once.
    unsafe { reserves.insert(cache.reserve().unwrap()) };
    let small = cache.alloc(&heap, 64, 8);
    // Longer than the large lists take.
    let p = cache.alloc(&heap, 300_000, 8);
    // SAFETY: live, freed once (into the stash).
    unsafe { cache.free(&heap, p) };
    let stashed = cache.stashed_bytes();
    assert!(stashed >= 300_000);
    assert_eq!(reserves.held_counts().1, stashed);
    assert_eq!(heap.page_heap_stats().large_in_use, stashed);
    // SAFETY: the cache is over `heap`.
    let taken = unsafe { reserves.reclaim(&heap, Reclaim::All) };
    assert_eq!(taken, stashed);
    assert_eq!(cache.stashed_bytes(), 0);
    assert_eq!(heap.page_heap_stats().large_in_use, 0);
    cache.maybe_trim(&heap);
    let q = cache.alloc(&heap, 300_000, 8);
    assert!(!q.is_null());
    assert_eq!(heap.page_heap_stats().large_in_use, stashed);
    // SAFETY: live, freed once.
    unsafe {
        cache.free(&heap, q);
        cache.free(&heap, small);
    }
    cache.check_invariants(&heap);
    cache.flush(&heap);
    heap.check_invariants();
}

/// An owner that fills and drains its reserve while another thread reclaims it again and
/// again loses no object and hands none out twice.
#[test]
fn an_owner_and_a_reclaimer_racing_keep_every_object_once() {
    use reserve::{Reclaim, Reserves};
    let heap = heap();
    let reserves = Reserves::new();
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        let (heap, reserves, stop) = (&*heap, &reserves, &stop);
        let owner = s.spawn(move || {
            let mut cache = cache_with_reserve();
            // SAFETY: a leaked reserve, in this list once.
            unsafe { reserves.insert(cache.reserve().unwrap()) };
            let mut rng = Rng(99);
            for _ in 0..40 {
                let size = [32, 128, 512, 2048][rng.below(4) as usize];
                let ptrs = alloc_n(heap, &mut cache, size, (1 << 21) / size);
                let mut seen = std::collections::HashSet::new();
                assert!(
                    ptrs.iter().all(|&p| seen.insert(p)),
                    "an object handed out twice"
                );
                free_all(heap, &mut cache, &ptrs);
            }
            cache.check_invariants(heap);
            // SAFETY: in this list.
            unsafe { reserves.remove(cache.reserve().unwrap()) };
            cache.flush(heap);
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
        });
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            // SAFETY: every cache in the list is over `heap`.
            unsafe { reserves.reclaim(heap, Reclaim::All) };
            std::thread::yield_now();
        }
        owner.join().unwrap();
    });
    heap.release_free_memory();
    heap.check_invariants();
    assert_eq!(
        heap.page_heap_stats().small_spans,
        0,
        "every object came home"
    );
}

/// The objects of the chain that starts at `head`, up to the null link.
#[cfg(not(feature = "hardened"))]
fn chain(mut head: *mut u8) -> Vec<*mut u8> {
    let mut out = Vec::new();
    while !head.is_null() {
        out.push(head);
        // SAFETY: a chain of objects linked through their first word, null-terminated.
        head = unsafe { span::next_free(head) };
    }
    out
}

/// A reserve keeps each chain it is given as a segment: a take of at least its length gets
/// the newest segment whole, in one step; a shorter take gets the first objects and leaves
/// the rest a segment of its own, which the next take gets whole.
#[cfg(not(feature = "hardened"))]
#[test]
fn a_reserve_hands_back_a_segment_whole_or_split() {
    let heap = heap();
    let mut cache = cache_with_reserve();
    let class = size_class::class_for(64, 8).unwrap();
    assert!(reserve::segmented(class));
    let objs = alloc_n(&heap, &mut cache, 64, 10);
    let link = |from: usize, to: usize| {
        for i in from..to - 1 {
            // SAFETY: live objects of ours, used as a chain by the test.
            unsafe { span::set_next_free(objs[i], objs[i + 1]) };
        }
        // SAFETY: as above.
        unsafe { span::set_next_free(objs[to - 1], null_mut()) };
    };
    link(0, 6);
    link(6, 10);
    let r = Reserve::new();
    let map = heap.page_map() as *const crate::page_map::PageMap;
    let class_bytes = class.index() * core::mem::size_of::<Bin>();
    // SAFETY: two chains of objects of `class`, given to the reserve.
    unsafe {
        assert!(r.put(class, objs[0], objs[5], 6, usize::MAX, usize::MAX));
        assert!(r.put(class, objs[6], objs[9], 4, usize::MAX, usize::MAX));
    }
    let (h, n) = r.take(class, 32, map, class_bytes);
    assert_eq!(
        (n, chain(h)),
        (4, objs[6..10].to_vec()),
        "the newest segment whole"
    );
    let (h, n) = r.take(class, 2, map, class_bytes);
    assert_eq!((n, chain(h)), (2, objs[0..2].to_vec()), "a split");
    let (h, n) = r.take(class, 32, map, class_bytes);
    assert_eq!(
        (n, chain(h)),
        (4, objs[2..6].to_vec()),
        "the rest, a segment of its own"
    );
    assert_eq!(r.take(class, 32, map, class_bytes).1, 0);
    free_all(&heap, &mut cache, &objs);
    cache.flush(&heap);
    heap.check_invariants();
}

/// The first-page word of the large object at `p`.
fn first_word(heap: &Heap<FakePages>, p: *mut u8) -> usize {
    heap.page_map().small_word_of(p as usize)
}

/// Large objects of 32 KiB to 256 KiB carry the listed word from their allocation, go onto
/// the list of their length when freed (not the stash, and the page heap still counts them
/// in use) and come back from it; longer ones keep the word naming their record.
#[test]
fn freed_large_objects_of_listed_lengths_come_back_from_their_lists() {
    use crate::page_map::{large_word, listed_large_word};
    let heap = heap();
    let mut cache = cache_with_reserve();
    let small = cache.alloc(&heap, 64, 8);
    let mut listed = 0;
    for (size, pages) in [(32 << 10, 4), (100_000, 13), (256 << 10, 32)] {
        let p = cache.alloc(&heap, size, 8);
        assert_eq!(
            first_word(&heap, p),
            listed_large_word(p as usize, Pages(pages))
        );
        let in_use = heap.page_heap_stats().large_in_use;
        // SAFETY: live, freed once.
        unsafe { cache.free(&heap, p) };
        assert_eq!(cache.listed_bytes(), listed + Pages(pages).bytes());
        assert_eq!(cache.stashed_bytes(), 0);
        assert_eq!(heap.page_heap_stats().large_in_use, in_use);
        cache.check_invariants(&heap);
        assert_eq!(cache.alloc(&heap, size, 8), p, "the listed object");
        assert_eq!(cache.listed_bytes(), listed);
        // SAFETY: live, freed once.
        unsafe { cache.free(&heap, p) };
        listed += Pages(pages).bytes();
    }
    let long = cache.alloc(&heap, (256 << 10) + 1, 8);
    // SAFETY: page-map entries point to span records.
    assert_eq!(
        first_word(&heap, long),
        large_word(heap.page_map().lookup(long as usize))
    );
    // SAFETY: live, freed once each.
    unsafe {
        cache.free(&heap, long);
        cache.free(&heap, small);
    }
    assert_eq!(cache.listed_bytes(), (4 + 13 + 32) * 8192);
    assert!(cache.stashed_bytes() > 256 << 10);
    cache.check_invariants(&heap);
    cache.flush(&heap);
    assert_eq!(cache.listed_bytes(), 0);
    assert_eq!(heap.page_heap_stats().large_in_use, 0);
    heap.check_invariants();
}

/// The lists hold at most `LISTED_BYTES`; the next free of a listed length goes to the
/// stash, and a cache that may keep nothing (no reserve, or inactive) lists nothing.
#[test]
fn the_large_lists_hold_at_most_their_bound_and_the_stash_takes_the_rest() {
    let heap = heap();
    let mut cache = cache_with_reserve();
    let small = cache.alloc(&heap, 64, 8);
    let ptrs: Vec<*mut u8> = (0..3).map(|_| cache.alloc(&heap, 256 << 10, 8)).collect();
    for &p in &ptrs {
        // SAFETY: live, freed once.
        unsafe { cache.free(&heap, p) };
    }
    assert_eq!(cache.listed_bytes(), LISTED_BYTES);
    assert_eq!(stash_starts(&cache), [ptrs[2] as usize]);
    cache.check_invariants(&heap);
    // The newest listed first, then the stash.
    assert_eq!(cache.alloc(&heap, 256 << 10, 8), ptrs[1]);
    assert_eq!(cache.alloc(&heap, 256 << 10, 8), ptrs[0]);
    assert_eq!(cache.alloc(&heap, 256 << 10, 8), ptrs[2]);
    for &p in &ptrs {
        // SAFETY: live, freed once.
        unsafe { cache.free(&heap, p) };
    }
    // SAFETY: live, freed once.
    unsafe { cache.free(&heap, small) };
    cache.flush(&heap);

    // No reserve: nothing listed, nothing stashed.
    let mut bare = ThreadCache::new();
    let small = bare.alloc(&heap, 64, 8);
    let p = bare.alloc(&heap, 100_000, 8);
    // SAFETY: live, freed once each.
    unsafe {
        bare.free(&heap, p);
        bare.free(&heap, small);
    }
    assert_eq!(bare.listed_bytes(), 0);
    assert_eq!(heap.page_heap_stats().large_in_use, 0);
    bare.flush(&heap);

    // Inactive (a reserve, and never activated): the push refuses, having written nothing.
    let mut idle = cache_with_reserve();
    let q = cache.alloc(&heap, 100_000, 8);
    // SAFETY: a live object and its page's word; `idle` is ours.
    assert!(!unsafe { idle.push_listed(q, first_word(&heap, q)) });
    assert_eq!(idle.listed_bytes(), 0);
    // SAFETY: live, freed once.
    unsafe { cache.free(&heap, q) };
    // And a flushed, deactivated cache refuses again.
    cache.flush(&heap);
    cache.deactivate();
    let r = idle.alloc(&heap, 100_000, 8);
    // SAFETY: as above.
    assert!(!unsafe { cache.push_listed(r, first_word(&heap, r)) });
    // SAFETY: live, freed once.
    unsafe { idle.free(&heap, r) };
    idle.flush(&heap);
    heap.check_invariants();
}

/// A growing buffer is lent the shortest listed object with room for it (before the
/// stash), and a second buffer nothing while the first keeps it.
#[test]
fn a_growing_buffer_is_lent_the_shortest_listed_object_with_room() {
    let heap = heap();
    let mut cache = cache_with_reserve();
    let small = cache.alloc(&heap, 64, 8);
    let [a, b, c] = [64 << 10, 200 << 10, 600 << 10].map(|s| cache.alloc(&heap, s, 8));
    // SAFETY: live, freed once each (two listed, one stashed).
    unsafe {
        cache.free(&heap, a);
        cache.free(&heap, b);
        cache.free(&heap, c);
    }
    assert_eq!(cache.lend_stashed(&heap, 100_000, 8), Some(b));
    assert_eq!(cache.listed_bytes(), Pages(8).bytes());
    assert_eq!(
        cache.lend_stashed(&heap, 10_000, 8),
        None,
        "one lent at a time"
    );
    // SAFETY: live (lent), freed once.
    unsafe { cache.free(&heap, b) };
    assert_eq!(
        cache.lend_stashed(&heap, 300_000, 8),
        Some(c),
        "past the lists: the stash"
    );
    // SAFETY: live, freed once each.
    unsafe {
        cache.free(&heap, c);
        cache.free(&heap, small);
    }
    cache.check_invariants(&heap);
    cache.flush(&heap);
    heap.check_invariants();
}

/// A listed object's free needs its start: an interior pointer, or a word of another
/// object, is refused (the caller's slow path reports it).
#[test]
fn a_listed_free_takes_only_the_objects_start() {
    let heap = heap();
    let mut cache = cache_with_reserve();
    let small = cache.alloc(&heap, 64, 8);
    let p = cache.alloc(&heap, 100_000, 8);
    let word = first_word(&heap, p);
    // SAFETY: deliberately wrong pointers; refused, nothing written.
    unsafe {
        assert!(!cache.push_listed(p.add(16), word));
        assert!(!cache.push_listed(p.add(8192), word));
        assert!(!cache.push_listed(p, first_word(&heap, small)));
    }
    assert_eq!(cache.listed_bytes(), 0);
    // SAFETY: live, freed once each.
    unsafe {
        cache.free(&heap, p);
        cache.free(&heap, small);
    }
    cache.flush(&heap);
    heap.check_invariants();
}

/// A listed object given back to the page heap leaves its free key in memory the page heap
/// keeps; the next large object placed there is handed out without it, so its own free is
/// not taken for a double free.
#[test]
fn a_large_object_reusing_a_listed_objects_address_is_not_taken_for_freed() {
    let heap = heap();
    let mut cache = cache_with_reserve();
    let small = cache.alloc(&heap, 64, 8);
    let p = cache.alloc(&heap, 100_000, 8);
    // SAFETY: live, freed once.
    unsafe { cache.free(&heap, p) };
    cache.flush(&heap);
    let q = cache.alloc(&heap, 100_000, 8);
    assert_eq!(q, p, "the page heap's cached span");
    // SAFETY: a live large object of ours.
    assert!(!unsafe { span::is_marked_freed(q, cache.key) });
    // SAFETY: live, freed once each.
    unsafe {
        cache.free(&heap, q);
        cache.free(&heap, small);
    }
    cache.flush(&heap);
    heap.check_invariants();
}

/// A listed object resized in place gets the word of its new length (or the record's,
/// past the lists), so its free goes onto the right list.
#[test]
fn a_large_object_resized_in_place_gets_the_word_of_its_new_length() {
    use crate::page_map::{large_word, listed_large_word};
    let heap = roomy_heap();
    let mut cache = cache_with_reserve();
    let small = cache.alloc(&heap, 64, 8);
    let p = cache.alloc(&heap, 200 << 10, 8);
    assert_eq!(
        first_word(&heap, p),
        listed_large_word(p as usize, Pages(25))
    );
    // SAFETY: a live object; grown in place past the lists (into the free run after it).
    let q = unsafe { cache.realloc(&heap, p, 8, 600 << 10) };
    assert_eq!(q, p, "grown in place");
    assert_eq!(
        first_word(&heap, q),
        large_word(heap.page_map().lookup(q as usize))
    );
    // SAFETY: live; shrunk in place by more than half, to a listed length.
    let r = unsafe { cache.realloc(&heap, q, 8, 64 << 10) };
    assert_eq!(r, p, "shrunk in place");
    assert_eq!(
        first_word(&heap, r),
        listed_large_word(r as usize, Pages(8))
    );
    // SAFETY: live, freed once each.
    unsafe {
        cache.free(&heap, r);
        cache.free(&heap, small);
    }
    assert_eq!(
        cache.listed_bytes(),
        Pages(8).bytes(),
        "on the list of its new length"
    );
    assert_eq!(cache.alloc(&heap, 64 << 10, 8), r);
    // SAFETY: live, freed once.
    unsafe { cache.free(&heap, r) };
    cache.check_invariants(&heap);
    cache.flush(&heap);
    heap.check_invariants();
}

/// The cache walker catches a broken list: an object without the free key, and bytes
/// that do not add up.
#[test]
fn the_cache_walker_catches_a_broken_large_list() {
    let heap = heap();
    let mut cache = cache_with_reserve();
    let small = cache.alloc(&heap, 64, 8);
    let p = cache.alloc(&heap, 100_000, 8);
    // SAFETY: live, freed once.
    unsafe { cache.free(&heap, p) };
    assert_eq!(cache.invariant_violation(&heap), None);
    if crate::check::FREE_CHECKS {
        // SAFETY: the listed object's second word, ours; put back below.
        let key = unsafe { p.cast::<u64>().add(1).read() };
        // SAFETY: as above.
        unsafe { p.cast::<u64>().add(1).write(0) };
        assert_eq!(
            cache.invariant_violation(&heap),
            Some("a listed object lacks the free key")
        );
        // SAFETY: as above.
        unsafe { p.cast::<u64>().add(1).write(key) };
    }
    cache.large_lists.bytes += 8192;
    assert_eq!(
        cache.invariant_violation(&heap),
        Some("the large lists' bytes do not add up")
    );
    cache.large_lists.bytes -= 8192;
    assert_eq!(cache.invariant_violation(&heap), None);
    // SAFETY: live, freed once.
    unsafe { cache.free(&heap, small) };
    cache.flush(&heap);
    heap.check_invariants();
}
