//! The hardened build (cargo feature `hardened`): each invalid program of
//! `common/bad_programs.rs` stops, in a child process, with its one line and `SIGABRT` (or,
//! for an overflow into a guard page, `SIGSEGV`). `tests/unhardened.rs` runs the same
//! programs without the feature and shows that they go on: the default build does not
//! catch them.
#![cfg(feature = "hardened")]

mod common;
#[path = "common/bad_programs.rs"]
mod bad_programs;

use bad_programs::*;
use common::{DEATH_TIMEOUT, child_case, death_test, run_child};
use core::alloc::{GlobalAlloc, Layout};
use spanalloc::{SpanAlloc, raw};

#[global_allocator]
static A: SpanAlloc = SpanAlloc;

const CORRUPTED: &str = "spanalloc: free list corrupted";
const WRITE_AFTER_FREE: &str = "spanalloc: write after free detected";
const WRONG_LAYOUT: &str = "spanalloc: dealloc with a layout of another size class than alloc";

/// Runs `body` in a child and checks that it was killed by `SIGSEGV` (an access to a guard
/// page), with no line of spanalloc's on stderr.
fn fault_test(test_name: &str, body: impl FnOnce()) {
    if child_case().as_deref() == Some(test_name) {
        body();
        println!("CHILD-SURVIVED");
        std::process::exit(0);
    }
    let r = run_child(test_name, test_name, DEATH_TIMEOUT);
    assert!(r.status.is_some(), "{test_name}: child hung\n{r:#?}");
    assert_eq!(
        r.signal(),
        Some(libc::SIGSEGV),
        "{test_name}: child not killed by SIGSEGV\n{r:#?}"
    );
    assert!(
        !r.stderr.contains("spanalloc:"),
        "{test_name}: no spanalloc line\n{r:#?}"
    );
}

// ---------------------------------------------------------------------------------------
// 1. Free-list links encoded, checked when followed.

#[test]
fn overflow_into_a_free_objects_link_is_caught() {
    // The link points at memory of the overflow's choosing; the default build hands it
    // out (`unhardened.rs`).
    death_test(
        "overflow_into_a_free_objects_link_is_caught",
        CORRUPTED,
        || {
            overflow_into_a_free_objects_link(target());
        },
    );
}

#[test]
fn overflow_into_a_free_objects_link_with_a_plausible_value_is_caught() {
    // Even a link overwritten with the address of a real free object of the same class
    // (what an unencoded list would follow without a second look) decodes elsewhere.
    death_test(
        "overflow_into_a_free_objects_link_with_a_plausible_value_is_caught",
        CORRUPTED,
        || {
            // SAFETY: a live object of ours, freed: a real free object of the class.
            let other = unsafe {
                let p = raw::alloc(48, 8);
                raw::free(p);
                raw::alloc(48, 8)
            };
            overflow_into_a_free_objects_link(other as usize);
        },
    );
}

#[test]
fn write_after_free_over_a_spans_free_list_is_caught() {
    death_test(
        "write_after_free_over_a_spans_free_list_is_caught",
        CORRUPTED,
        || {
            write_after_free_over_a_spans_free_list(target());
        },
    );
}

// ---------------------------------------------------------------------------------------
// 2. A guard page after every large object.

#[test]
fn overflow_past_a_large_object_faults() {
    fault_test(
        "overflow_past_a_large_object_faults",
        overflow_past_a_large_object,
    );
}

#[test]
fn overflow_past_a_large_object_grown_in_place_faults() {
    fault_test(
        "overflow_past_a_large_object_grown_in_place_faults",
        overflow_past_a_large_object_grown_in_place,
    );
}

#[test]
fn overflow_past_a_large_object_shrunk_in_place_faults() {
    fault_test(
        "overflow_past_a_large_object_shrunk_in_place_faults",
        overflow_past_a_large_object_shrunk_in_place,
    );
}

#[test]
fn overflow_past_a_large_object_reused_from_the_stash_faults() {
    fault_test(
        "overflow_past_a_large_object_reused_from_the_stash_faults",
        overflow_past_a_large_object_reused_from_the_stash,
    );
}

/// Where the kernel has guard markers (`MADV_GUARD_INSTALL`, Linux 6.13), a large object's
/// guard page is one: guarding 200 large objects adds no kernel mapping, where an
/// `mprotect` guard splits one each time (about two mappings more per object). In a child,
/// whose heap and mappings are its own; says `NOT RUN` on an older kernel.
#[test]
#[cfg(target_os = "linux")]
fn guard_pages_add_no_kernel_mapping_where_the_kernel_has_guard_markers() {
    const NAME: &str = "guard_pages_add_no_kernel_mapping_where_the_kernel_has_guard_markers";
    let mappings = || {
        std::fs::read_to_string("/proc/self/maps")
            .unwrap()
            .lines()
            .count()
    };
    if child_case().as_deref() == Some(NAME) {
        // SAFETY: a fresh private anonymous page of ours, given a marker and unmapped.
        let markers = unsafe {
            let page = libc::mmap(
                core::ptr::null_mut(),
                4096,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            );
            assert_ne!(page, libc::MAP_FAILED);
            let ok = libc::madvise(page, 4096, 102 /* MADV_GUARD_INSTALL */) == 0;
            libc::munmap(page, 4096);
            ok
        };
        if !markers {
            println!("NO-MARKERS");
            std::process::exit(0);
        }
        let before = mappings();
        // SAFETY: live large objects, each with its guard page; freed below.
        let objects: Vec<*mut u8> = (0..200)
            .map(|_| unsafe { raw::alloc(64 << 10, 8) })
            .collect();
        assert!(objects.iter().all(|p| !p.is_null()));
        println!("MAPPINGS-ADDED {}", mappings() - before);
        for p in objects {
            // SAFETY: allocated above with this size and alignment.
            unsafe { raw::dealloc(p, 64 << 10, 8) };
        }
        std::process::exit(0);
    }
    let r = run_child(NAME, NAME, DEATH_TIMEOUT);
    assert_eq!(r.status.and_then(|s| s.code()), Some(0), "{r:#?}");
    if r.stdout.contains("NO-MARKERS") {
        println!("NOT RUN: this kernel has no guard markers (mprotect guards)");
        return;
    }
    let added: usize = r
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("MAPPINGS-ADDED "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no count from the child\n{r:#?}"));
    assert!(
        added < 20,
        "200 guarded large objects added {added} kernel mappings\n{r:#?}"
    );
}

#[test]
fn the_last_page_of_a_span_group_faults() {
    fault_test(
        "the_last_page_of_a_span_group_faults",
        touch_the_last_page_of_a_span_group,
    );
}

#[test]
fn a_free_into_a_group_guard_is_an_invalid_free() {
    // The guard has a record of its own in the page map: a pointer into it is nobody's.
    death_test(
        "a_free_into_a_group_guard_is_an_invalid_free",
        "spanalloc: invalid free: pointer not allocated by spanalloc",
        || {
            // SAFETY: a valid request, then a free of a pointer never handed out, on
            // purpose.
            unsafe {
                let p = raw::alloc(64, 8) as usize;
                let guard = (p | ((2 << 20) - 1)) + 1 - (8 << 10);
                raw::free(guard as *mut u8);
            }
        },
    );
}

// ---------------------------------------------------------------------------------------
// 3. Never-used objects in random order.

#[test]
fn never_used_objects_come_in_an_order_random_per_process() {
    const NAME: &str = "never_used_objects_come_in_an_order_random_per_process";
    if child_case().as_deref() == Some(NAME) {
        println!("ORDER {:?}", first_batch_order());
        std::process::exit(0);
    }
    let order = || {
        let r = run_child(NAME, NAME, DEATH_TIMEOUT);
        r.assert_success(NAME);
        let line = r.stdout.lines().find_map(|l| l.strip_prefix("ORDER "));
        let order: Vec<usize> = line
            .expect("the child prints its order")
            .trim_matches(['[', ']'])
            .split(", ")
            .map(|n| n.parse().unwrap())
            .collect();
        order
    };
    let (a, b) = (order(), order());
    for o in [&a, &b] {
        let mut sorted = o.clone();
        sorted.sort_unstable();
        assert!(
            sorted.windows(2).all(|w| w[0] != w[1]) && sorted.len() == 32,
            "distinct objects: {o:?}"
        );
        // The chance that 32 objects come out sorted, or twice in the same order, is 1/32!.
        assert_ne!(o, &sorted, "not in address order");
    }
    assert_ne!(a, b, "another order in another process");
}

// ---------------------------------------------------------------------------------------
// 4. Freed objects poisoned, checked when reused.

#[test]
fn write_after_free_is_caught() {
    death_test("write_after_free_is_caught", WRITE_AFTER_FREE, || {
        write_after_free();
    });
}

#[test]
fn write_after_free_is_caught_in_the_thread_that_reuses_the_object() {
    death_test(
        "write_after_free_is_caught_in_the_thread_that_reuses_the_object",
        WRITE_AFTER_FREE,
        || {
            write_after_free_seen_by_another_thread();
        },
    );
}

// ---------------------------------------------------------------------------------------
// 5. The sized free's layout checked against the class. (The default release build frees
// such an object by the page map's class and goes on: `death.rs`, `wrong_layout_case`.)

/// In a child: allocates with the layout `made` (size, alignment) through the global
/// allocator and frees with `freed`, which must stop it with the wrong-layout line.
fn wrong_layout_dies(test_name: &str, made: (usize, usize), freed: (usize, usize)) {
    death_test(test_name, WRONG_LAYOUT, || {
        // SAFETY: a live object, freed with the wrong layout on purpose.
        unsafe {
            let p = A.alloc(Layout::from_size_align(made.0, made.1).unwrap());
            A.dealloc(p, Layout::from_size_align(freed.0, freed.1).unwrap());
        }
    });
}

#[test]
fn dealloc_with_a_layout_of_another_class_is_caught() {
    wrong_layout_dies(
        "dealloc_with_a_layout_of_another_class_is_caught",
        (64, 8),
        (2048, 8),
    );
}

#[test]
fn dealloc_with_an_alignment_of_another_class_is_caught() {
    // 48 bytes aligned to 8 are an object of the 48-byte class; the same size aligned to 64
    // names the 64-byte class. The size alone names the object's own class, so the sized
    // fast path would take it: an alignment above 8 is checked before it.
    wrong_layout_dies(
        "dealloc_with_an_alignment_of_another_class_is_caught",
        (48, 8),
        (48, 64),
    );
}

/// The C library's `free_sized` with the size of another class: built with `override`
/// (the C functions exported from this test binary; `.ci/run`'s hardened step runs this
/// case that way).
#[cfg(feature = "override")]
#[test]
fn c_free_sized_with_the_size_of_another_class_is_caught() {
    unsafe extern "C" {
        fn malloc(size: usize) -> *mut core::ffi::c_void;
        fn free_sized(ptr: *mut core::ffi::c_void, size: usize);
    }
    death_test(
        "c_free_sized_with_the_size_of_another_class_is_caught",
        WRONG_LAYOUT,
        || {
            // SAFETY: a live block, freed with the wrong size on purpose.
            unsafe {
                let p = malloc(100);
                free_sized(p, 24);
            }
        },
    );
}

#[test]
fn raw_dealloc_with_the_size_of_another_class_is_caught() {
    // What the C library's `free_sized(p, 24)` of a 100-byte block calls.
    death_test(
        "raw_dealloc_with_the_size_of_another_class_is_caught",
        WRONG_LAYOUT,
        || {
            // SAFETY: a live object, freed with the wrong size on purpose.
            unsafe {
                let p = raw::alloc(100, 8);
                raw::dealloc(p, 24, 8);
            }
        },
    );
}
