//! spanalloc as the global allocator, end to end: collections, threads passing memory,
//! every size near every class boundary at every alignment, realloc across classes and
//! tiers, zeroing of recycled memory.

#[global_allocator]
static A: spanalloc::SpanAlloc = spanalloc::SpanAlloc;

use spanalloc::internals::heap::{GROWTH_MIN, growth_room};
use spanalloc::internals::size_class::{self, SizeClass};
use std::alloc::{GlobalAlloc, Layout, alloc, alloc_zeroed, dealloc, realloc};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::mpsc;

#[test]
fn std_collections_churn() {
    let mut map: HashMap<u64, String> = HashMap::new();
    let mut tree: BTreeMap<String, Vec<u32>> = BTreeMap::new();
    let mut queue: VecDeque<Box<[u8]>> = VecDeque::new();
    for i in 0..200_000u64 {
        map.insert(i, format!("value-{i}"));
        if i % 3 == 0 {
            map.remove(&(i / 2));
        }
        if i % 7 == 0 {
            tree.entry(format!("k{}", i % 1000))
                .or_default()
                .push(i as u32);
        }
        queue.push_back(vec![i as u8; (i % 700) as usize].into_boxed_slice());
        if queue.len() > 500 {
            let b = queue.pop_front().unwrap();
            assert!(b.iter().all(|&x| x == b.first().copied().unwrap_or(0)));
        }
    }
    for (k, v) in &map {
        assert_eq!(v, &format!("value-{k}"));
    }
    assert_eq!(
        tree.values().map(Vec::len).sum::<usize>(),
        200_000usize.div_ceil(7)
    );
}

#[test]
fn eight_threads_pass_boxes_and_vecs_through_channels() {
    const THREADS: usize = 8;
    let (senders, receivers): (Vec<_>, Vec<_>) = (0..THREADS)
        .map(|_| mpsc::channel::<(Box<u64>, Vec<u64>)>())
        .unzip();
    let handles: Vec<_> = receivers
        .into_iter()
        .enumerate()
        .map(|(me, rx)| {
            let next = senders[(me + 1) % THREADS].clone();
            std::thread::spawn(move || {
                let mut received = 0u64;
                for i in 0..20_000u64 {
                    let tag = (me as u64) << 32 | i;
                    let len = (i % 300) as usize;
                    next.send((Box::new(tag), vec![tag; len])).unwrap();
                    while let Ok((b, v)) = rx.try_recv() {
                        assert!(
                            v.iter().all(|&x| x == *b),
                            "contents crossed threads intact"
                        );
                        received += 1;
                    }
                }
                drop(next);
                // Drain until every sender (the neighbour) is done.
                for (b, v) in rx {
                    assert!(
                        v.iter().all(|&x| x == *b),
                        "contents crossed threads intact"
                    );
                    received += 1;
                }
                received
            })
        })
        .collect();
    drop(senders);
    let received: u64 = handles.into_iter().map(|h| h.join().unwrap()).sum();
    assert_eq!(received, THREADS as u64 * 20_000, "every message arrived");
}

/// Sizes just around every class boundary, every page multiple up to 1 MiB, and 1 MiB.
fn boundary_sizes() -> Vec<usize> {
    let mut sizes: Vec<usize> = SizeClass::all().map(|c| c.size()).collect();
    sizes.extend((1..=128).map(|p| p * 8192));
    sizes.push(1 << 20);
    let mut out = vec![0];
    for s in sizes {
        out.extend([s - 1, s, s + 1]);
    }
    out.retain(|&s| s <= 1 << 20);
    out.sort();
    out.dedup();
    out
}

#[test]
fn every_size_near_class_boundaries_at_every_alignment() {
    for align_shift in 0..=20 {
        let align = 1usize << align_shift;
        let mut held = Vec::new();
        for (n, size) in boundary_sizes().into_iter().enumerate() {
            let layout = Layout::from_size_align(size, align).unwrap();
            // SAFETY: GlobalAlloc allows any layout here; size 0 is served as 1.
            let p = unsafe { A.alloc(layout) };
            assert!(!p.is_null(), "size {size} align {align}");
            assert_eq!(p as usize % align, 0, "size {size} align {align}");
            // SAFETY: a live object from spanalloc.
            let usable = unsafe { spanalloc::raw::usable_size(p) };
            assert!(usable >= size, "usable {usable} < {size}");
            let tag = n as u8 | 1;
            if size > 0 {
                // SAFETY: inside the object.
                unsafe {
                    p.write(tag);
                    p.add(size - 1).write(tag);
                }
            }
            held.push((p, layout, tag));
            if held.len() > 64 {
                let (q, l, t) = held.remove(0);
                if l.size() > 0 {
                    // SAFETY: inside a live object we wrote.
                    unsafe { assert_eq!((q.read(), q.add(l.size() - 1).read()), (t, t)) };
                }
                // SAFETY: allocated with `l`, freed once.
                unsafe { A.dealloc(q, l) };
            }
        }
        for (q, l, _) in held {
            // SAFETY: allocated with `l`, freed once.
            unsafe { A.dealloc(q, l) };
        }
    }
}

#[test]
fn realloc_across_classes_and_tiers_keeps_contents() {
    let sizes = [
        1usize,
        15,
        16,
        17,
        100,
        1000,
        1025,
        5000,
        32_767,
        32_768,
        40_000,
        100_000,
        1 << 20,
        3 << 20,
        200_000,
        33_000,
        20_000,
        700,
        24,
        1,
    ];
    for align in [8usize, 64, 4096, 1 << 16] {
        let mut layout = Layout::from_size_align(sizes[0], align).unwrap();
        // SAFETY: non-zero layout.
        let mut p = unsafe { alloc(layout) };
        // SAFETY: a live 1-byte object.
        unsafe { p.write(0x5a) };
        for &new in &sizes[1..] {
            let old = layout.size();
            // SAFETY: `p` is live with `layout`; `new` is non-zero.
            let q = unsafe { realloc(p, layout, new) };
            assert!(!q.is_null());
            assert_eq!(q as usize % align, 0);
            let kept = old.min(new);
            // SAFETY: the first `kept` bytes of the new block.
            let bytes = unsafe { std::slice::from_raw_parts(q, kept) };
            for (i, &b) in bytes.iter().enumerate() {
                assert_eq!(b, (i as u8) ^ 0x5a, "byte {i} after {old} -> {new}");
            }
            // SAFETY: the whole new block.
            let all = unsafe { std::slice::from_raw_parts_mut(q, new) };
            for (i, b) in all.iter_mut().enumerate() {
                *b = (i as u8) ^ 0x5a;
            }
            p = q;
            layout = Layout::from_size_align(new, align).unwrap();
        }
        // SAFETY: live with `layout`.
        unsafe { dealloc(p, layout) };
    }
}

#[test]
fn realloc_in_the_same_class_or_large_span_stays_in_place() {
    let layout = Layout::from_size_align(100, 8).unwrap();
    // SAFETY: non-zero layout.
    let p = unsafe { alloc(layout) };
    let class = size_class::class_of(100).unwrap();
    // SAFETY: live; the new size is in the same class.
    let q = unsafe { realloc(p, layout, class.size()) };
    assert_eq!(p, q, "same class: in place");
    // SAFETY: live with the new size.
    unsafe { dealloc(q, Layout::from_size_align(class.size(), 8).unwrap()) };

    let big = Layout::from_size_align(1 << 20, 8).unwrap();
    // SAFETY: non-zero layout.
    let p = unsafe { alloc(big) };
    // SAFETY: live; shrinking a large object keeps its span.
    let q = unsafe { realloc(p, big, (1 << 20) - 5000) };
    assert_eq!(p, q, "large shrink: in place");
    // SAFETY: live with the new size.
    unsafe { dealloc(q, Layout::from_size_align((1 << 20) - 5000, 8).unwrap()) };
}

#[test]
fn a_buffer_doubled_through_global_alloc_moves_only_while_small() {
    // 8 B to 1 MiB by doubling, as `Vec` grows: steps below 4 KiB move through the fast
    // paths, the move to 4 KiB puts the buffer in a page span with headroom, and from then on
    // every growth inside that room returns the same pointer (answered from one page-map
    // lookup). The page-heap growths past the room may move it if another test's span
    // follows; only the growths inside the room are certain. With the heap profiler
    // sampling (CI runs this suite with `SPANALLOC_PROFILE=1`), a sampled move is served
    // as a sampled object, without headroom: then only the contents are checked.
    let placed = spanalloc::profiling::mean() == 0;
    let mut size = 8;
    let mut layout = Layout::from_size_align(size, 8).unwrap();
    // SAFETY: non-zero layout.
    let mut p = unsafe { alloc(layout) };
    let mut in_room = 0;
    let mut room = 0;
    while size < 1 << 20 {
        // SAFETY: live with `layout`; the object has `size` bytes of ours.
        unsafe { p.add(size - 1).write(size.trailing_zeros() as u8) };
        let new_size = size * 2;
        // SAFETY: live with `layout`.
        let q = unsafe { realloc(p, layout, new_size) };
        assert!(!q.is_null());
        // SAFETY: the first `size` bytes were kept.
        assert_eq!(unsafe { *q.add(size - 1) }, size.trailing_zeros() as u8);
        if placed && new_size <= room {
            assert_eq!(q, p, "{size} -> {new_size} within the room of {room}");
            in_room += 1;
        }
        if new_size >= GROWTH_MIN {
            // SAFETY: live, ours.
            room = unsafe { spanalloc::raw::usable_size(q) };
        }
        if placed && new_size == GROWTH_MIN {
            // Moved by growth again and again (the sub-4 KiB moves on the fast path count):
            // a page span with headroom.
            assert_eq!(room, growth_room(GROWTH_MIN));
        }
        p = q;
        size = new_size;
        layout = Layout::from_size_align(size, 8).unwrap();
    }
    assert!(
        !placed || in_room >= 2,
        "the growths after the page-span move stay in place"
    );
    // SAFETY: live with `layout`.
    unsafe { dealloc(p, layout) };
}

#[test]
fn large_buffer_grown_by_small_steps_keeps_every_byte() {
    // 32 KiB to 1 MiB by 24-byte steps: most steps stay within the pages the span already
    // has (answered from the layout alone), the others grow the span or move it.
    let mut size = 32 << 10;
    let mut layout = Layout::from_size_align(size, 8).unwrap();
    // SAFETY: non-zero layout.
    let mut p = unsafe { alloc(layout) };
    assert!(!p.is_null());
    // SAFETY: a live object of `size` bytes.
    unsafe { p.write_bytes(0x5a, size) };
    while size < 1 << 20 {
        let new_size = size + 24;
        // SAFETY: live with `layout`.
        p = unsafe { realloc(p, layout, new_size) };
        assert!(!p.is_null());
        // SAFETY: the object now has `new_size` bytes: the old ones kept, the new ones ours.
        unsafe {
            assert_eq!(*p.add(size - 1), 0x5a, "contents kept at {size}");
            p.add(size).write_bytes(0x5a, 24);
        }
        size = new_size;
        layout = Layout::from_size_align(size, 8).unwrap();
        assert!(
            spanalloc::internals::heap().usable_size(p) >= size,
            "the span holds the object at {size}"
        );
    }
    // SAFETY: live, `size` bytes.
    let bytes = unsafe { std::slice::from_raw_parts(p, size) };
    assert!(bytes.iter().all(|&b| b == 0x5a));
    // SAFETY: live with `layout`.
    unsafe { dealloc(p, layout) };
}

#[test]
fn alloc_zeroed_returns_zeros_after_the_memory_was_dirtied() {
    for &size in &[
        16usize,
        24,
        100,
        1000,
        4096,
        20_000,
        32_768,
        100_000,
        1 << 20,
        5 << 20,
    ] {
        let layout = Layout::from_size_align(size, 8).unwrap();
        for _ in 0..4 {
            // SAFETY: non-zero layout.
            let p = unsafe { alloc(layout) };
            // SAFETY: the whole block.
            unsafe { p.write_bytes(0xff, size) };
            // SAFETY: freed once.
            unsafe { dealloc(p, layout) };
            // SAFETY: non-zero layout.
            let z = unsafe { alloc_zeroed(layout) };
            // SAFETY: the whole block.
            let bytes = unsafe { std::slice::from_raw_parts(z, size) };
            assert!(bytes.iter().all(|&b| b == 0), "size {size}: zeroed");
            // SAFETY: dirty it again before freeing, for the next round.
            unsafe {
                z.write_bytes(0xee, size);
                dealloc(z, layout);
            }
        }
    }
}

#[test]
fn realloc_to_zero_bytes_with_a_page_sized_alignment_keeps_a_live_block() {
    for align in [1usize << 14, 1 << 16] {
        // SAFETY: a power-of-two alignment.
        let p = unsafe { spanalloc::raw::alloc(100_000, align) };
        assert!(!p.is_null());
        // SAFETY: `p` is live with this alignment.
        let q = unsafe { spanalloc::raw::realloc(p, 0, align) };
        assert!(!q.is_null());
        // SAFETY: `q` is live: usable_size must find it (it stopped the process before).
        assert!(unsafe { spanalloc::raw::usable_size(q) } >= 1);
        // SAFETY: live, freed once.
        unsafe { spanalloc::raw::free(q) };
    }
}
