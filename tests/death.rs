//! Death tests: a bad pointer given to spanalloc stops the process with one fixed line on
//! stderr and `SIGABRT`. Each case runs in a child process (this binary re-executed to run
//! one test), and the parent checks the signal, the exact line and that it did not hang.
//! The line names the address; where a case knows it beforehand, it must be that one.

mod common;

use common::{child_case, death_test, expect_stop_at, run_child};
use core::alloc::{GlobalAlloc, Layout};
use spanalloc::{SpanAlloc, raw};

#[global_allocator]
static A: SpanAlloc = SpanAlloc;

const NOT_OURS: &str = "spanalloc: invalid free: pointer not allocated by spanalloc";
const INTERIOR: &str = "spanalloc: invalid free: pointer into the middle of an object";
const DOUBLE: &str = "spanalloc: double free detected";
const WRONG_LAYOUT: &str = "spanalloc: dealloc with a layout of another size class than alloc";

/// A large object (a span of its own): well above the 32 KiB small-object limit.
const LARGE: usize = 1 << 20;

/// Makes sure the heap has mapped memory (so the page map exists) before a bad free.
fn warm_up() {
    let v: Vec<Box<[u8]>> = (0..100)
        .map(|i| vec![i as u8; 1 + i * 97].into_boxed_slice())
        .collect();
    // SAFETY: a live allocation of ours.
    let big = unsafe { raw::alloc(LARGE, 8) };
    assert!(!big.is_null());
    drop(v);
    // SAFETY: allocated just above, freed once.
    unsafe { raw::free(big) };
}

// ---------------------------------------------------------------------------------------
// Pointers spanalloc never returned.

#[test]
fn free_of_a_wild_address() {
    death_test("free_of_a_wild_address", NOT_OURS, || {
        warm_up();
        expect_stop_at(0x1234_5678_9000);
        // SAFETY: deliberately wrong: the allocator must stop the process.
        unsafe { raw::free(0x1234_5678_9000 as *mut u8) };
    });
}

#[test]
fn free_of_a_non_canonical_address() {
    death_test("free_of_a_non_canonical_address", NOT_OURS, || {
        warm_up();
        // SAFETY: deliberately wrong.
        unsafe { raw::free(0xdead_beef_0000_0008_usize as *mut u8) };
    });
}

#[test]
fn free_of_a_stack_address() {
    death_test("free_of_a_stack_address", NOT_OURS, || {
        warm_up();
        let local = [0u64; 8];
        expect_stop_at(local.as_ptr() as usize);
        // SAFETY: deliberately wrong.
        unsafe { raw::free(std::hint::black_box(local.as_ptr() as *mut u8)) };
    });
}

static STATIC_BYTES: [u8; 64] = [7; 64];

#[test]
fn free_of_a_static() {
    death_test("free_of_a_static", NOT_OURS, || {
        warm_up();
        // SAFETY: deliberately wrong.
        unsafe { raw::free(std::hint::black_box(STATIC_BYTES.as_ptr() as *mut u8)) };
    });
}

#[test]
fn free_of_someone_elses_mmap() {
    death_test("free_of_someone_elses_mmap", NOT_OURS, || {
        warm_up();
        // SAFETY: a fresh anonymous mapping that spanalloc knows nothing about.
        let p = unsafe {
            libc::mmap(
                core::ptr::null_mut(),
                1 << 20,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED);
        // SAFETY: deliberately wrong (start, then middle of the foreign mapping).
        unsafe {
            raw::free(p.cast::<u8>().add(4096 * 17));
            raw::free(p.cast());
        }
    });
}

#[test]
fn free_before_any_allocation_of_the_thread() {
    // A thread whose cache was never used frees a foreign pointer.
    death_test("free_before_any_allocation_of_the_thread", NOT_OURS, || {
        warm_up();
        let local = 0u64;
        let addr = &local as *const u64 as usize;
        std::thread::scope(|s| {
            s.spawn(move || {
                // SAFETY: deliberately wrong.
                unsafe { raw::free(addr as *mut u8) };
            });
        });
    });
}

// ---------------------------------------------------------------------------------------
// Interior pointers.

#[test]
fn free_of_an_interior_pointer_small() {
    death_test("free_of_an_interior_pointer_small", INTERIOR, || {
        warm_up();
        // SAFETY: a live object of 64 bytes.
        let p = unsafe { raw::alloc(64, 8) };
        assert!(!p.is_null());
        expect_stop_at(p as usize + 8);
        // SAFETY: deliberately wrong: 8 bytes into the object.
        unsafe { raw::free(p.add(8)) };
    });
}

#[test]
fn free_of_an_interior_pointer_small_from_another_thread() {
    death_test(
        "free_of_an_interior_pointer_small_from_another_thread",
        INTERIOR,
        || {
            warm_up();
            // SAFETY: a live object of 3000 bytes.
            let p = unsafe { raw::alloc(3000, 8) } as usize;
            assert_ne!(p, 0);
            std::thread::scope(|s| {
                s.spawn(move || {
                    // SAFETY: deliberately wrong: the last byte of the object.
                    unsafe { raw::free((p + 2999) as *mut u8) };
                });
            });
        },
    );
}

#[test]
fn free_of_an_interior_pointer_large_first_page() {
    death_test(
        "free_of_an_interior_pointer_large_first_page",
        INTERIOR,
        || {
            warm_up();
            // SAFETY: a live large object.
            let p = unsafe { raw::alloc(LARGE, 8) };
            assert!(!p.is_null());
            // SAFETY: deliberately wrong: 16 bytes in.
            unsafe { raw::free(p.add(16)) };
        },
    );
}

#[test]
fn free_of_an_interior_pointer_large_middle_page() {
    death_test(
        "free_of_an_interior_pointer_large_middle_page",
        INTERIOR,
        || {
            warm_up();
            // SAFETY: a live large object.
            let p = unsafe { raw::alloc(LARGE, 8) };
            assert!(!p.is_null());
            // SAFETY: deliberately wrong: half-way into the object, a page-aligned address.
            unsafe { raw::free(p.add(LARGE / 2)) };
        },
    );
}

#[test]
fn free_of_an_interior_pointer_large_last_byte() {
    death_test(
        "free_of_an_interior_pointer_large_last_byte",
        INTERIOR,
        || {
            warm_up();
            // SAFETY: a live large object.
            let p = unsafe { raw::alloc(LARGE, 8) };
            assert!(!p.is_null());
            // SAFETY: deliberately wrong: its last byte.
            unsafe { raw::free(p.add(LARGE - 1)) };
        },
    );
}

// ---------------------------------------------------------------------------------------
// Double frees.

/// Allocates `size` bytes and frees them twice in a row: the second free must stop the
/// process, naming the object.
fn freed_twice_at_once(test_name: &str, size: usize) {
    death_test(test_name, DOUBLE, || {
        warm_up();
        // SAFETY: a live object, then freed twice on purpose.
        unsafe {
            let p = raw::alloc(size, 8);
            assert!(!p.is_null());
            expect_stop_at(p as usize);
            raw::free(p);
            raw::free(p);
        }
    });
}

#[test]
fn double_free_small_immediate() {
    freed_twice_at_once("double_free_small_immediate", 64);
}

#[test]
fn double_free_small_immediate_sized() {
    // The sized Rust path (`GlobalAlloc::dealloc`), which has its own fast path.
    death_test("double_free_small_immediate_sized", DOUBLE, || {
        warm_up();
        let layout = Layout::from_size_align(48, 8).unwrap();
        // SAFETY: a live object, then freed twice on purpose.
        unsafe {
            let p = A.alloc(layout);
            assert!(!p.is_null());
            A.dealloc(p, layout);
            A.dealloc(p, layout);
        }
    });
}

#[test]
fn double_free_small_after_other_frees() {
    death_test("double_free_small_after_other_frees", DOUBLE, || {
        warm_up();
        // SAFETY: live objects of ours; one of them freed twice on purpose.
        unsafe {
            let ptrs: Vec<*mut u8> = (0..200).map(|_| raw::alloc(100, 8)).collect();
            assert!(ptrs.iter().all(|p| !p.is_null()));
            let victim = ptrs[17];
            raw::free(victim);
            for (i, &p) in ptrs.iter().enumerate() {
                if i != 17 && i % 2 == 0 {
                    raw::free(p);
                }
            }
            raw::free(victim);
        }
    });
}

#[test]
fn double_free_small_after_other_allocations_of_other_sizes() {
    death_test(
        "double_free_small_after_other_allocations_of_other_sizes",
        DOUBLE,
        || {
            warm_up();
            // SAFETY: live objects of ours; one of them freed twice on purpose.
            unsafe {
                let victim = raw::alloc(256, 8);
                assert!(!victim.is_null());
                raw::free(victim);
                let others: Vec<*mut u8> = [40usize, 48, 56, 72]
                    .iter()
                    .map(|k| raw::alloc(k << 10, 8))
                    .collect();
                for p in others {
                    raw::free(p);
                }
                raw::free(victim);
            }
        },
    );
}

#[test]
fn double_free_small_on_two_threads() {
    // First free on another thread (a remote free), second on the owner.
    death_test("double_free_small_on_two_threads", DOUBLE, || {
        warm_up();
        // SAFETY: a live object of ours.
        let p = unsafe { raw::alloc(128, 8) } as usize;
        assert_ne!(p, 0);
        std::thread::scope(|s| {
            s.spawn(move || {
                // SAFETY: the first, valid free.
                unsafe { raw::free(p as *mut u8) };
            });
        });
        // SAFETY: the second free, on purpose.
        unsafe { raw::free(p as *mut u8) };
    });
}

#[test]
fn double_free_large_immediate() {
    freed_twice_at_once("double_free_large_immediate", LARGE);
}

#[test]
fn double_free_large_after_neighbours_merged() {
    // The freed span merges with its freed neighbours before the second free.
    death_test("double_free_large_after_neighbours_merged", DOUBLE, || {
        warm_up();
        // SAFETY: live objects of ours; the middle one freed twice on purpose.
        unsafe {
            let a = raw::alloc(LARGE, 8);
            let b = raw::alloc(LARGE, 8);
            let c = raw::alloc(LARGE, 8);
            assert!(!a.is_null() && !b.is_null() && !c.is_null());
            raw::free(b);
            raw::free(a);
            raw::free(c);
            raw::free(b);
        }
    });
}

#[test]
fn double_free_large_after_other_large_traffic() {
    death_test(
        "double_free_large_after_other_large_traffic",
        DOUBLE,
        || {
            warm_up();
            // SAFETY: live objects of ours; one freed twice on purpose.
            unsafe {
                let victim = raw::alloc(3 * LARGE, 8);
                assert!(!victim.is_null());
                raw::free(victim);
                // Other large objects come and go (bigger than the victim's run, so none of
                // them is placed at its address).
                for i in 0..20 {
                    let p = raw::alloc(8 * LARGE + i * 8192, 8);
                    assert!(!p.is_null());
                    raw::free(p);
                }
                raw::free(victim);
            }
        },
    );
}

#[test]
fn double_free_large_after_its_stash_slot_was_taken() {
    // The first free puts the span in the thread's stash of freed large spans; four more
    // large frees push it out to the page heap; the second free must still be caught there.
    death_test(
        "double_free_large_after_its_stash_slot_was_taken",
        DOUBLE,
        || {
            warm_up();
            // SAFETY: live objects of ours; the victim freed twice on purpose.
            unsafe {
                let victim = raw::alloc(64 << 10, 8);
                assert!(!victim.is_null());
                raw::free(victim);
                let others: Vec<*mut u8> =
                    (0..4).map(|i| raw::alloc((40 + 8 * i) << 10, 8)).collect();
                for p in others {
                    assert!(!p.is_null());
                    raw::free(p);
                }
                raw::free(victim);
            }
        },
    );
}

#[test]
fn double_free_large_after_it_went_back_unmerged() {
    // As above, with the victim's neighbours live: the page heap keeps a free span that
    // starts where the victim did, which the second free must not take for a large one.
    death_test(
        "double_free_large_after_it_went_back_unmerged",
        DOUBLE,
        || {
            warm_up();
            // SAFETY: live objects of ours; the victim freed twice on purpose.
            unsafe {
                let before = raw::alloc(64 << 10, 8);
                let victim = raw::alloc(64 << 10, 8);
                let after = raw::alloc(64 << 10, 8);
                assert!(!before.is_null() && !victim.is_null() && !after.is_null());
                raw::free(victim);
                let others: Vec<*mut u8> =
                    (0..4).map(|i| raw::alloc((40 + 8 * i) << 10, 8)).collect();
                for p in others {
                    assert!(!p.is_null());
                    raw::free(p);
                }
                expect_stop_at(victim as usize);
                raw::free(victim);
                raw::free(before);
                raw::free(after);
            }
        },
    );
}

#[test]
fn double_free_large_on_two_threads() {
    // The first free on another thread, whose stash keeps the span while the owner frees it
    // again.
    death_test("double_free_large_on_two_threads", DOUBLE, || {
        warm_up();
        // SAFETY: a live object of ours.
        let p = unsafe { raw::alloc(256 << 10, 8) } as usize;
        assert_ne!(p, 0);
        let (freed_tx, freed_rx) = std::sync::mpsc::channel::<()>();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let t = std::thread::spawn(move || {
            // SAFETY: a live object of this thread's (its cache registered, so it stashes),
            // then the first, valid free of `p`.
            unsafe {
                let own = raw::alloc(100 << 10, 8);
                assert!(!own.is_null());
                raw::free(own);
                raw::free(p as *mut u8);
            }
            freed_tx.send(()).unwrap();
            let _ = done_rx.recv();
        });
        freed_rx.recv().unwrap();
        expect_stop_at(p);
        // SAFETY: the second free, on purpose.
        unsafe { raw::free(p as *mut u8) };
        drop(done_tx);
        t.join().unwrap();
    });
}

#[test]
fn double_free_large_listed_immediate() {
    // 100 000 bytes: a length the thread's large lists keep (32 KiB to 256 KiB); the free
    // goes by the page's listed word, with no span record read.
    freed_twice_at_once("double_free_large_listed_immediate", 100_000);
}

#[test]
fn double_free_large_stashed_past_the_full_lists() {
    // Three of 256 KiB: two fill the large lists, the third goes to the stash; one taken
    // off the lists again makes room there, and the third's second free, which goes by its
    // listed word onto a list, must see that the stash holds it.
    death_test(
        "double_free_large_stashed_past_the_full_lists",
        DOUBLE,
        || {
            warm_up();
            // SAFETY: live objects of ours; the last freed twice on purpose.
            unsafe {
                let p: Vec<*mut u8> = (0..3).map(|_| raw::alloc(256 << 10, 8)).collect();
                assert!(p.iter().all(|p| !p.is_null()));
                for &q in &p {
                    raw::free(q);
                }
                assert_eq!(raw::alloc(256 << 10, 8), p[1], "the newest listed");
                expect_stop_at(p[2] as usize);
                raw::free(p[2]);
            }
        },
    );
}

/// Warms up, then allocates an object of a length the large lists keep and frees it once
/// (onto this thread's list); returns its address.
fn freed_onto_a_large_list() -> usize {
    warm_up();
    // SAFETY: a live object, freed once.
    unsafe {
        let p = raw::alloc(100_000, 8);
        assert!(!p.is_null());
        raw::free(p);
        p as usize
    }
}

#[test]
fn double_free_large_listed_then_freed_on_another_thread() {
    // The second free comes from another thread: whether its cache takes the object onto
    // its own lists or, having none yet, sends it by the span record towards the page heap,
    // the free key the first free left on the object must stop it.
    death_test(
        "double_free_large_listed_then_freed_on_another_thread",
        DOUBLE,
        || {
            let p = freed_onto_a_large_list();
            expect_stop_at(p);
            std::thread::spawn(move || {
                // SAFETY: the second free, on purpose.
                unsafe { raw::free(p as *mut u8) };
            })
            .join()
            .unwrap();
        },
    );
}

#[test]
fn double_free_large_listed_while_the_lists_are_full() {
    // Two of 256 KiB fill the large lists; the first one's second free finds no room on
    // them and goes by the span record towards the stash, which must not take it.
    death_test(
        "double_free_large_listed_while_the_lists_are_full",
        DOUBLE,
        || {
            warm_up();
            // SAFETY: live objects of ours; the first freed twice on purpose.
            unsafe {
                let p: Vec<*mut u8> = (0..2).map(|_| raw::alloc(256 << 10, 8)).collect();
                assert!(p.iter().all(|p| !p.is_null()));
                raw::free(p[0]);
                raw::free(p[1]);
                expect_stop_at(p[0] as usize);
                raw::free(p[0]);
            }
        },
    );
}

extern "C" fn free_in_key_destructor(p: *mut libc::c_void) {
    // SAFETY: the second free of a freed object, on purpose.
    unsafe { raw::free(p.cast()) };
}

#[test]
fn double_free_large_listed_then_freed_after_a_threads_exit_flush() {
    // The second free comes from a thread-exit key destructor that runs after spanalloc's
    // own has flushed the thread's cache: it goes through the orphan cache, which keeps no
    // large objects, straight towards the page heap, and must see the free key the first
    // free left on the object (glibc runs key destructors in key order, and spanalloc's key
    // was made first, by the warm-up).
    death_test(
        "double_free_large_listed_then_freed_after_a_threads_exit_flush",
        DOUBLE,
        || {
            let p = freed_onto_a_large_list();
            let mut key: libc::pthread_key_t = 0;
            // SAFETY: a valid out-pointer; the destructor is an `extern "C" fn`.
            let rc = unsafe { libc::pthread_key_create(&mut key, Some(free_in_key_destructor)) };
            assert_eq!(rc, 0);
            expect_stop_at(p);
            std::thread::spawn(move || {
                // SAFETY: a key we made; the value is freed by its destructor at exit.
                unsafe { libc::pthread_setspecific(key, p as *const libc::c_void) };
            })
            .join()
            .unwrap();
        },
    );
}

#[test]
fn double_free_large_sized() {
    death_test("double_free_large_sized", DOUBLE, || {
        warm_up();
        let layout = Layout::from_size_align(LARGE, 4096).unwrap();
        // SAFETY: a live object, then freed twice on purpose.
        unsafe {
            let p = A.alloc(layout);
            assert!(!p.is_null());
            A.dealloc(p, layout);
            A.dealloc(p, layout);
        }
    });
}

// ---------------------------------------------------------------------------------------
// A Rust dealloc with a Layout of another size class than the allocation's.
//
// Debug builds and the hardened build stop with a message. Other release builds do not
// check: the free goes by the page map, which knows the object's real class, so the object
// is freed correctly (the child checks the heap's invariants and that the object is reused)
// and the process goes on.

fn wrong_layout_case(test_name: &str, alloc_size: usize, dealloc_size: usize) {
    let body = || {
        warm_up();
        let good = Layout::from_size_align(alloc_size, 8).unwrap();
        let bad = Layout::from_size_align(dealloc_size, 8).unwrap();
        // SAFETY: a live object freed with the wrong layout on purpose.
        unsafe {
            let p = A.alloc(good);
            assert!(!p.is_null());
            p.write_bytes(0xa5, alloc_size);
            A.dealloc(p, bad);
        }
    };
    if cfg!(debug_assertions) || spanalloc::internals::check::HARDENED {
        death_test(test_name, WRONG_LAYOUT, body);
        return;
    }
    if child_case().as_deref() == Some(test_name) {
        body();
        spanalloc::flush_thread_cache();
        spanalloc::internals::heap().check_invariants();
        // The object went back to its own class: allocating that class again works and
        // the memory is intact for its whole size.
        let good = Layout::from_size_align(alloc_size, 8).unwrap();
        // SAFETY: fresh objects of ours, freed once.
        unsafe {
            let ps: Vec<*mut u8> = (0..1000).map(|_| A.alloc(good)).collect();
            for &p in &ps {
                assert!(!p.is_null());
                p.write_bytes(0x5a, alloc_size);
            }
            for p in ps {
                A.dealloc(p, good);
            }
        }
        spanalloc::internals::heap().check_invariants();
        std::process::exit(0);
    }
    let r = run_child(test_name, test_name, common::DEATH_TIMEOUT);
    r.assert_success(test_name);
}

#[test]
fn dealloc_with_a_layout_of_a_bigger_class() {
    wrong_layout_case("dealloc_with_a_layout_of_a_bigger_class", 64, 2048);
}

#[test]
fn dealloc_with_a_layout_of_a_smaller_class() {
    wrong_layout_case("dealloc_with_a_layout_of_a_smaller_class", 4096, 64);
}

#[test]
fn dealloc_with_a_layout_of_a_neighbouring_class() {
    // 16 and 32 bytes: both on the table-lookup fast path.
    wrong_layout_case("dealloc_with_a_layout_of_a_neighbouring_class", 16, 32);
}

// ---------------------------------------------------------------------------------------
// Other uses of a bad pointer: the line names the use.

#[test]
fn usable_size_of_a_stack_address() {
    death_test(
        "usable_size_of_a_stack_address",
        "spanalloc: invalid pointer: not allocated by spanalloc",
        || {
            warm_up();
            let local = [0u64; 8];
            expect_stop_at(local.as_ptr() as usize);
            // SAFETY: deliberately wrong.
            unsafe { raw::usable_size(std::hint::black_box(local.as_ptr() as *mut u8)) };
        },
    );
}

#[test]
fn realloc_of_an_interior_pointer() {
    death_test(
        "realloc_of_an_interior_pointer",
        "spanalloc: invalid realloc: pointer into the middle of an object",
        || {
            warm_up();
            // SAFETY: a live object of 64 bytes.
            let p = unsafe { raw::alloc(64, 8) };
            assert!(!p.is_null());
            expect_stop_at(p as usize + 16);
            // SAFETY: deliberately wrong: 16 bytes into the object.
            unsafe { raw::realloc(p.add(16), 200, 8) };
        },
    );
}
