//! The default build (without the cargo feature `hardened`) does not catch the invalid
//! programs of `common/bad_programs.rs`: each runs in a child process that goes on, and the
//! test shows what the program got away with. `tests/hardened.rs` runs the same programs
//! with the feature and checks that each stops; its test names say what the hardened build
//! does (`..._is_caught`, `..._faults`), these what the default build does.
#![cfg(not(feature = "hardened"))]

mod common;
#[path = "common/bad_programs.rs"]
mod bad_programs;

use bad_programs::*;
use common::{DEATH_TIMEOUT, child_case, run_child};
use spanalloc::SpanAlloc;

#[global_allocator]
static A: SpanAlloc = SpanAlloc;

/// Runs `body` in a child, which must exit normally: it ends with `exit(0)` when `body`
/// returns `true` (what the test expects the program got away with) and 1 otherwise.
fn survives(test_name: &str, body: impl FnOnce() -> bool) {
    if child_case().as_deref() == Some(test_name) {
        std::process::exit(if body() { 0 } else { 1 });
    }
    run_child(test_name, test_name, DEATH_TIMEOUT).assert_success(test_name);
}

// 1. Links as they are: an overflow chooses what the allocator hands out.

#[test]
fn overflow_into_a_free_objects_link_hands_out_the_address_written() {
    survives(
        "overflow_into_a_free_objects_link_hands_out_the_address_written",
        || {
            let (_, second) = overflow_into_a_free_objects_link(target());
            second == target()
        },
    );
}

#[test]
fn write_after_free_over_a_spans_free_list_hands_out_the_address_written() {
    survives(
        "write_after_free_over_a_spans_free_list_hands_out_the_address_written",
        || write_after_free_over_a_spans_free_list(target()).contains(&target()),
    );
}

// 2. No guard page: the byte past a large object is the next page's, and writable.

#[test]
fn overflow_past_a_large_object_goes_on() {
    survives("overflow_past_a_large_object_goes_on", || {
        overflow_past_a_large_object();
        true
    });
}

#[test]
fn overflow_past_a_large_object_grown_in_place_goes_on() {
    survives(
        "overflow_past_a_large_object_grown_in_place_goes_on",
        || {
            overflow_past_a_large_object_grown_in_place();
            true
        },
    );
}

#[test]
fn overflow_past_a_large_object_shrunk_in_place_goes_on() {
    survives(
        "overflow_past_a_large_object_shrunk_in_place_goes_on",
        || {
            overflow_past_a_large_object_shrunk_in_place();
            true
        },
    );
}

#[test]
fn overflow_past_a_large_object_reused_from_the_stash_goes_on() {
    survives(
        "overflow_past_a_large_object_reused_from_the_stash_goes_on",
        || {
            overflow_past_a_large_object_reused_from_the_stash();
            true
        },
    );
}

// 2. No guard between span groups: the last page of a 2 MiB group is heap memory.

#[test]
fn the_last_page_of_a_span_group_is_heap_memory() {
    survives("the_last_page_of_a_span_group_is_heap_memory", || {
        touch_the_last_page_of_a_span_group();
        true
    });
}

// 3. Address order: the next never-used object is the one after the last.

#[test]
fn never_used_objects_come_in_address_order() {
    survives("never_used_objects_come_in_address_order", || {
        first_batch_order() == (0..32).collect::<Vec<_>>()
    });
}

// 4. No poison: the object written after its free is handed out with the write in it.

#[test]
fn write_after_free_is_handed_out_with_the_write_in_it() {
    survives(
        "write_after_free_is_handed_out_with_the_write_in_it",
        || {
            let (freed, got, byte) = write_after_free();
            got == freed && byte == 0x41
        },
    );
}

#[test]
fn write_after_free_reaches_the_thread_that_reuses_the_object() {
    survives(
        "write_after_free_reaches_the_thread_that_reuses_the_object",
        write_after_free_seen_by_another_thread,
    );
}

// 5. The sized free with another class's layout: `death.rs`, `wrong_layout_case` (release
// builds go on; debug builds stop, as the hardened build does).
