//! Forged pointers that look like objects: a free of an object boundary the program was
//! never given, an interior pointer through the sized frees, a `realloc` of a freed block.
//! Each stops the process with one fixed line (child process, exact stderr line, SIGABRT),
//! as the death tests do; without the checks, each would hand one block to two owners.

mod common;

use common::{child_test, death_test};
use core::alloc::{GlobalAlloc, Layout};
use spanalloc::{SpanAlloc, raw};
use std::time::Duration;

#[global_allocator]
static A: SpanAlloc = SpanAlloc;

const INTERIOR: &str = "spanalloc: invalid free: pointer into the middle of an object";
const DOUBLE: &str = "spanalloc: double free detected";
const REALLOC_FREED: &str = "spanalloc: invalid realloc: pointer already freed";

/// A class nothing else in these children uses, so its span is fresh.
const SIZE: usize = 432;

/// `p = malloc(n); free(p + n * k)`, with object `k` of the span never handed out: every
/// object not handed out carries the free key, so the forged free is a double free. (Before
/// the never-used objects carried it, the free was taken and the object later handed out
/// twice: the free list became a cycle.)
fn forged_free_of_a_never_handed_out_object(k: usize) {
    // SAFETY: a live object.
    let p = unsafe { raw::alloc(SIZE, 8) };
    assert!(!p.is_null());
    let object = spanalloc::internals::size_class::class_of(SIZE)
        .unwrap()
        .size();
    // Object `k` of the span, counted from the span's start (the hardened build hands
    // never-used objects out in random order, so `p` need not be object 0); if that is `p`
    // itself, the one before it.
    let mut target = common::span_start(p) + object * k;
    if target == p as usize {
        target -= object;
    }
    // SAFETY: deliberately wrong: an object boundary of the same span, never handed out.
    unsafe { raw::free(target as *mut u8) };
}

#[test]
fn forged_free_of_an_object_in_the_threads_cache() {
    // The next object: in the batch this thread's cache took with `p`.
    death_test(
        "forged_free_of_an_object_in_the_threads_cache",
        DOUBLE,
        || forged_free_of_a_never_handed_out_object(1),
    );
}

#[test]
fn forged_free_of_an_object_never_carved() {
    // The span's last object (a span of this class holds 18): never taken out of it.
    death_test("forged_free_of_an_object_never_carved", DOUBLE, || {
        let objects = spanalloc::internals::size_class::class_of(SIZE)
            .unwrap()
            .objects();
        forged_free_of_a_never_handed_out_object(objects - 1)
    });
}

#[test]
fn interior_pointer_through_the_sized_rust_dealloc() {
    death_test(
        "interior_pointer_through_the_sized_rust_dealloc",
        INTERIOR,
        || {
            let layout = Layout::from_size_align(64, 8).unwrap();
            // SAFETY: a live object, then a pointer 16 bytes into it freed on purpose.
            unsafe {
                let p = A.alloc(layout);
                assert!(!p.is_null());
                A.dealloc(p.add(16), layout);
            }
        },
    );
}

#[test]
fn interior_pointer_through_raw_dealloc() {
    // What the C library's `free_sized(p + 16, 64)` calls.
    death_test("interior_pointer_through_raw_dealloc", INTERIOR, || {
        // SAFETY: a live object, then a pointer 16 bytes into it freed on purpose.
        unsafe {
            let p = raw::alloc(64, 16);
            assert!(!p.is_null());
            raw::dealloc(p.add(16), 64, 16);
        }
    });
}

#[test]
fn realloc_of_a_freed_large_object_in_the_stash() {
    death_test(
        "realloc_of_a_freed_large_object_in_the_stash",
        REALLOC_FREED,
        || {
            // SAFETY: a live large object (longer than the large lists take), freed (into
            // this thread's stash), then resized on purpose.
            unsafe {
                let p = raw::alloc(300_000, 16);
                assert!(!p.is_null());
                raw::free(p);
                raw::realloc(p, 300_500, 16);
            }
        },
    );
}

#[test]
fn realloc_of_a_freed_large_object_on_a_large_list() {
    death_test(
        "realloc_of_a_freed_large_object_on_a_large_list",
        REALLOC_FREED,
        || {
            // SAFETY: a live large object of a listed length, freed (onto this thread's list
            // of its length), then resized on purpose.
            unsafe {
                let p = raw::alloc(100_000, 16);
                assert!(!p.is_null());
                raw::free(p);
                raw::realloc(p, 100_500, 16);
            }
        },
    );
}

#[test]
fn realloc_of_a_freed_small_object() {
    death_test("realloc_of_a_freed_small_object", REALLOC_FREED, || {
        // SAFETY: a live small object, freed, then resized within its class on purpose.
        unsafe {
            let p = raw::alloc(100, 16);
            assert!(!p.is_null());
            raw::free(p);
            raw::realloc(p, 101, 16);
        }
    });
}

/// Not a bad input: a program that copies bytes it never wrote. Memory that held free
/// objects keeps their marks until it is written, and a new object may be made over it (a
/// large object here, as a sampled object of the heap profiler is). Copying its bytes into
/// another object (a struct copy with padding, a `memcpy` of a partly filled buffer) must
/// not make that object look freed: a mark is the key mixed with the object's own address,
/// so it does not hold at another address. With a plain key, the free of the copy stopped
/// the process with "double free detected".
#[test]
fn a_copy_of_bytes_that_held_free_objects_is_not_a_double_free() {
    child_test(
        "a_copy_of_bytes_that_held_free_objects_is_not_a_double_free",
        Duration::from_secs(60),
        || {
            let object = spanalloc::internals::size_class::class_of(SIZE)
                .unwrap()
                .size();
            let count = 4096;
            // SAFETY: live objects, each freed once; the copies are 16-byte objects of the
            // program's; reading `big` copies bytes that may be uninitialised, which
            // `copy_nonoverlapping` may do (they are only compared as a whole word after).
            unsafe {
                let objects: Vec<*mut u8> = (0..count).map(|_| raw::alloc(SIZE, 8)).collect();
                assert!(objects.iter().all(|p| !p.is_null()));
                for &p in &objects {
                    raw::free(p);
                }
                // The objects go back to their spans; the wholly free spans to the page heap,
                // whose free runs keep their bytes until the decay time.
                spanalloc::flush_thread_cache();
                let len = count * object;
                let big = raw::alloc(len, 8);
                assert!(!big.is_null());
                let key = spanalloc::internals::check::free_key();
                let mut marks = 0;
                for off in (0..len - 16).step_by(16) {
                    let mut bytes = [0u64; 2];
                    core::ptr::copy_nonoverlapping(big.add(off), bytes.as_mut_ptr().cast(), 16);
                    let at = big.add(off) as u64;
                    if bytes[1] == key || bytes[1] == key ^ at {
                        marks += 1;
                    }
                    let copy = raw::alloc(16, 8);
                    core::ptr::copy_nonoverlapping(big.add(off), copy, 16);
                    raw::free(copy);
                }
                // The case arose: the large object was made over the freed objects' pages.
                assert!(marks > 0, "no free object's mark in the large object");
                raw::free(big);
            }
        },
    );
}
