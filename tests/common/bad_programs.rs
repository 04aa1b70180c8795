//! Invalid programs that the hardened build stops and the default build does not catch:
//! shared by `tests/hardened.rs` (the feature on: each stops with its message) and
//! `tests/unhardened.rs` (the feature off: each goes on, and the test shows what it got
//! away with). Each runs in a child process.
#![allow(dead_code)]

use crate::common::span_start;
use spanalloc::internals::size_class::class_of;
use spanalloc::raw;
use std::collections::HashSet;

/// Where a forged link points: memory the allocator never owned, zero (so that following
/// its own first word ends the list) and writable (the allocator clears a handed-out
/// object's second word).
static mut TARGET: [u64; 64] = [0; 64];

/// The address of [`TARGET`].
pub fn target() -> usize {
    (&raw mut TARGET) as usize
}

/// An overflow over a free object's link. Of 64 objects of 48 bytes, takes `x` whose
/// neighbour `x + 48` is one of them, frees the neighbour (the head of this thread's bin),
/// then overflows `x` by one word with `payload`, the neighbour's link. Returns the next
/// two allocations of the class: the neighbour, then wherever the link now points. The
/// default build follows the link as it is: the second allocation is `payload`, an address
/// the overflow chose. The hardened build stops at the first, when it follows the link.
pub fn overflow_into_a_free_objects_link(payload: usize) -> (usize, usize) {
    let size = class_of(48).unwrap().size();
    // SAFETY: live objects of ours; then one freed, and the one before it overflowed on
    // purpose.
    unsafe {
        let objs: Vec<usize> = (0..64).map(|_| raw::alloc(size, 8) as usize).collect();
        let set: HashSet<usize> = objs.iter().copied().collect();
        let x = *objs.iter().find(|&&x| set.contains(&(x + size))).unwrap();
        raw::free((x + size) as *mut u8);
        let p = x as *mut u8;
        p.write_bytes(0x41, size);
        p.add(size).cast::<usize>().write(payload);
        let first = raw::alloc(size, 8) as usize;
        let second = raw::alloc(size, 8) as usize;
        (first, second)
    }
}

/// A write after free over the links of objects on their span's own free list (the central
/// list's, not a thread's bin). Of 40 objects of 448 bytes, keeps one per span (so the spans
/// stay) and frees the rest, hands them back to their spans (flush, then the central
/// lists' kept batches drained), writes `payload` over each freed object's first word, and
/// allocates 40 again. The default build follows the links as they are, so one allocation
/// is `payload`; returns them all. The hardened build stops when it follows the first.
pub fn write_after_free_over_a_spans_free_list(payload: usize) -> Vec<usize> {
    let size = class_of(448).unwrap().size();
    // SAFETY: live objects of ours, freed once; then written on purpose after the free.
    unsafe {
        let objs: Vec<*mut u8> = (0..40).map(|_| raw::alloc(size, 8)).collect();
        let mut anchors = HashSet::new();
        let mut freed = Vec::new();
        for &p in &objs {
            if !anchors.insert(span_start(p)) {
                raw::free(p);
                freed.push(p);
            }
        }
        spanalloc::flush_thread_cache();
        spanalloc::release_free_memory();
        for &p in &freed {
            p.cast::<usize>().write(payload);
        }
        (0..40).map(|_| raw::alloc(size, 8) as usize).collect()
    }
}

/// A write after free: frees a 64-byte object, writes one byte 24 bytes into it, and
/// allocates the class again, which hands the same object back (the bin is last in, first
/// out). Returns the object freed, the one allocated, and the byte it holds there. The
/// default build hands the changed object out as it is; the hardened build stops at the
/// allocation, which checks the poison the free filled in.
pub fn write_after_free() -> (usize, usize, u8) {
    // SAFETY: a live object of ours, freed once, then written on purpose after the free.
    unsafe {
        let p = raw::alloc(64, 8);
        p.write_bytes(0, 64);
        raw::free(p);
        p.add(24).write(0x41);
        let q = raw::alloc(64, 8);
        (p as usize, q as usize, q.add(24).read())
    }
}

/// As [`write_after_free`], with the object passed through the central list to another
/// thread: this thread frees and writes, then flushes its cache; another allocates 200
/// objects of the class. Returns whether the other thread got the object back with the
/// written byte in it. The hardened build stops in the other thread.
pub fn write_after_free_seen_by_another_thread() -> bool {
    // SAFETY: as in `write_after_free`.
    let p = unsafe {
        let p = raw::alloc(64, 8);
        p.write_bytes(0, 64);
        raw::free(p);
        p.add(24).write(0x41);
        p as usize
    };
    spanalloc::flush_thread_cache();
    std::thread::spawn(move || {
        let got: Vec<usize> = (0..200)
            // SAFETY: fresh objects of ours.
            .map(|_| unsafe { raw::alloc(64, 8) } as usize)
            .collect();
        // SAFETY: `p` is among them, a live object of this thread's now.
        got.contains(&p) && unsafe { (p as *const u8).add(24).read() } == 0x41
    })
    .join()
    .unwrap()
}

/// The first batch of a class this process never used (240 bytes: 34 objects a span, 32 a
/// batch): the index of each object in its span, in the order the allocations return
/// them. The default build hands never-used objects out in address order, so a program
/// (or an attacker grooming the heap) knows that its next object follows its last; the
/// hardened build hands them out in an order random per process.
pub fn first_batch_order() -> Vec<usize> {
    let size = class_of(240).unwrap().size();
    // SAFETY: fresh objects of ours (leaked: the child exits).
    let objs: Vec<*mut u8> = (0..32).map(|_| unsafe { raw::alloc(size, 8) }).collect();
    let start = span_start(objs[0]);
    objs.iter()
        .map(|&p| {
            assert_eq!(
                span_start(p),
                start,
                "one span: a class this process never used"
            );
            (p as usize - start) / size
        })
        .collect()
}

/// A linear overflow one byte past the end of large object `p` (past its usable size).
///
/// # Safety
/// Invalid on purpose: `p` is a live large object.
pub unsafe fn overflow_past(p: *mut u8) {
    // SAFETY: the object's own bytes, then one past them on purpose.
    unsafe {
        let n = raw::usable_size(p);
        p.write_bytes(0x41, n);
        std::ptr::write_volatile(p.add(n), 0x41);
    }
}

/// A 64 KiB object overflowed by one byte.
pub fn overflow_past_a_large_object() {
    // SAFETY: a live large object, overflowed on purpose.
    unsafe { overflow_past(raw::alloc(64 << 10, 8)) }
}

/// A 64 KiB object grown in place by `realloc` (into the free pages after it, with room to
/// grow again), overflowed past its new usable size.
pub fn overflow_past_a_large_object_grown_in_place() {
    // SAFETY: a live large object, resized, then overflowed on purpose.
    unsafe {
        let p = raw::alloc(64 << 10, 8);
        let q = raw::realloc(p, 200 << 10, 8);
        assert_eq!(p, q, "grown in place");
        overflow_past(q)
    }
}

/// A 1 MiB object shrunk in place to 64 KiB by `realloc` (its tail given back), overflowed
/// past its new usable size.
pub fn overflow_past_a_large_object_shrunk_in_place() {
    // SAFETY: as above.
    unsafe {
        let p = raw::alloc(1 << 20, 8);
        let q = raw::realloc(p, 64 << 10, 8);
        assert_eq!(p, q, "shrunk in place");
        assert!(raw::usable_size(q) < 1 << 20);
        overflow_past(q)
    }
}

/// A 64 KiB object freed and allocated again (from this thread's stash of freed large
/// spans, no page-heap call), overflowed by one byte.
pub fn overflow_past_a_large_object_reused_from_the_stash() {
    // SAFETY: as above.
    unsafe {
        let p = raw::alloc(64 << 10, 8);
        raw::free(p);
        let q = raw::alloc(64 << 10, 8);
        assert_eq!(p, q, "the stashed span again");
        overflow_past(q)
    }
}

/// An access to the last page of the 2 MiB span group that holds a small object: where a
/// linear overflow out of the group's last span lands first (mappings are 2 MiB-aligned
/// multiples of 2 MiB, so the page is the heap's in both builds). The byte is read and
/// written back unchanged, so that the default build, where the page is an ordinary heap
/// page (maybe another object's), goes on unharmed.
pub fn touch_the_last_page_of_a_span_group() {
    const GROUP: usize = 2 << 20;
    // SAFETY: a valid request; the object stays live.
    let p = unsafe { raw::alloc(64, 8) } as usize;
    let last_page = (p | (GROUP - 1)) + 1 - (8 << 10);
    // SAFETY: invalid on purpose: heap memory outside the object, read and restored.
    unsafe {
        let at = last_page as *mut u8;
        let v = std::ptr::read_volatile(at);
        std::ptr::write_volatile(at, v);
    }
}
