//! spanalloc: a general-purpose, multi-threaded memory allocator in pure Rust, built the
//! TCMalloc way.
//!
//! ```
//! #[global_allocator]
//! static GLOBAL: spanalloc::SpanAlloc = spanalloc::SpanAlloc;
//! # fn main() { let v = vec![1u8; 100]; assert_eq!(v.len(), 100); }
//! ```
//!
//! The same code, behind the C ABI, is `libspanalloc.so` (the `preload/` crate) for
//! `LD_PRELOAD`. This comment is the overview of the whole allocator; every other file
//! opens with one line and points here. `docs/design.md` gives the reasons for the choices.
//!
//! # Lineage and layers
//!
//! The design is TCMalloc's and Go's (`runtime/malloc.go`): a small-object front end of
//! per-thread caches, a middle of central lists, a back end of pages; mimalloc's per-span
//! lock-free cross-thread free lists. The modules below are listed lowest layer first; each
//! uses only the ones above it in this list.
//!
//! | module | role | Go name |
//! |---|---|---|
//! | [`check`] | `fatal(msg)`: one line with `write(2)`, then abort; the double-free key | `throw` |
//! | [`pages`] | [`pages::PageId`] / [`pages::Pages`]: 8 KiB pages as types | |
//! | [`size_class`] | the class table (generated) and size → class lookup | `sizeclasses.go` |
//! | [`sync`] | atomics, [`sync::GuardedCell`] and the futex [`sync::Lock`]; the loom switch | |
//! | [`sys`] | [`sys::PageSource`]: `mmap`, `MADV_DONTNEED`; a fake source for tests | `mem_linux.go` |
//! | [`fixed_alloc`] | [`fixed_alloc::FixedAlloc`]: metadata records from their own memory | `mfixalloc.go` |
//! | [`span`] | [`span::Span`]: a run of pages; its free lists; the remote-free word | `mspan` |
//! | [`page_map`] | [`page_map::PageMap`]: address → span, lock-free reads | `arenas` |
//! | [`page_heap`] | [`page_heap::PageHeap`]: free runs, split and merged; release to the OS | `mheap` |
//! | [`central_free_list`] | [`central_free_list::CentralFreeList`]: per class, spans no thread owns | `mcentral` |
//! | [`heap`](mod@heap) | [`heap::Heap`]: the shared tiers as one value; large objects; remote frees | `mheap_` |
//! | [`thread_cache`] | [`thread_cache::ThreadCache`]: per thread, free objects by class, moved in batches | `mcache` |
//! | [`stats`](mod@stats) | [`stats::Stats`]: where every mapped byte is | `MemStats` |
//! | `global` | the only statics: the heap, the thread-local slot, [`SpanAlloc`], [`raw`] | `mallocgc` |
//!
//! # Allocating (small: under 32 KiB)
//!
//! 1. **Thread cache**, no atomic, no lock: look the size up in a table (one load: below
//!    1 KiB it gives the bin's offset directly, above the class), pop the head of the
//!    thread's local free list for that class. Empty bins have a null list, so this is the
//!    only test.
//! 2. **Current span**, still no lock: the list was empty, so take the span's remote-free
//!    list with one atomic swap (objects other threads freed into it), or carve up to ~4 KiB
//!    of never-used objects from the span's tail. Amortizes the atomic over many objects.
//! 3. **Retained spans**, no lock: the used-up span stays owned, on the cache's retained
//!    lists (up to 16 MiB per thread; past that it goes back to its central list), and a
//!    retained span with free objects becomes current: one the thread freed into, else the
//!    oldest if other threads freed into it.
//! 4. **Central list**, one lock per class: take a span with free objects (`cache_span`).
//!    Amortizes the lock over a span.
//! 5. **Page heap**, one lock: when the central list has no span with free objects, carve a
//!    new span from a free run (best fit). Amortizes the lock over a span's pages.
//! 6. **OS**: when no run fits, map at least 32 MiB (2 MiB aligned) with `mmap`.
//!
//! # Freeing (small)
//!
//! 1. If the object lies in the thread's current span for its class (a subtraction and a
//!    compare against the bin's range), push it on the local list: no atomic, no lock.
//! 2. Otherwise find its span in the page map (three loads, no lock). If the span's owner
//!    field holds this cache's id (a retained span), push it on the span's own free list:
//!    still no atomic, no lock.
//! 3. Otherwise push it on the span's remote list: one compare-and-swap, which also counts
//!    the span's objects still in use while no thread owns it.
//! 4. The free that makes a full span partly free moves it to its central list's partial
//!    list, and the free that makes an unowned span wholly free returns it to the page heap:
//!    both take the central lock, once per span.
//!
//! # Large objects (32 KiB and up, or alignment above 8 KiB)
//!
//! A span of their own. A thread's freed large spans of up to 1 MiB wait in its cache's
//! stash (four of them) for its next allocation of the same length: no lock. Otherwise
//! from the page heap, under its lock.
//! Freed spans of up to 1 MiB wait, unmerged, in the page heap's large-span cache for the
//! next allocation of the same length (no search, split or merge); others go straight back
//! to the free runs and merge with free neighbours. `realloc` grows in place into a
//! following free run (a growing object is placed in a run with room after it) or shrinks
//! in place; `GlobalAlloc::realloc` within the pages a large object already has returns at
//! once.
//!
//! # Buffers that keep growing
//!
//! A thread remembers where its last growing `realloc` moved an object. When that buffer
//! grows again from 4 KiB it moves to a page span with room for four times its size
//! (untouched pages), and later growths inside the room return after one page-map lookup,
//! with no lock; a large object growing in place takes the same room. The buffer's span is
//! stashed when freed (up to 8 MiB) and lent to the thread's next growing buffer from
//! 2 KiB, one lent span at a time. Below 2 KiB, moves across classes go through the bin
//! fast paths; objects that are not a lent buffer keep exact classes below 4 KiB. See
//! `docs/design.md`, section 4.
//!
//! # Zeroing
//!
//! Memory from the OS and memory given back with `MADV_DONTNEED` is zero; the page heap
//! tracks which free runs are wholly zero, and `alloc_zeroed` of a large object skips the
//! clearing for them. Small objects are always cleared.
//!
//! # Giving memory back
//!
//! Free runs that have stayed unused for the decay time (default 500 ms) are given back with
//! `MADV_DONTNEED`, a bounded amount at a time, from the allocator's own slow paths (or,
//! after [`start_background_release`], from a thread of its own);
//! [`release_free_memory`] gives back everything now; [`set_decay_ms`] and
//! `SPANALLOC_DECAY_MS` configure it.
//!
//! # What is lock-free, and the lock order
//!
//! The fast paths take no lock and use no atomic. Cross-thread frees take one
//! compare-and-swap; page-map lookups are lock-free reads. Locks, in the only order in which
//! they may be nested: the orphan cache (threads without a usable cache), a central list,
//! the page heap. Central lists never hold their lock while they call the page heap. Every
//! lock is a [`sync::Lock`], which never allocates.
//!
//! # Errors
//!
//! `Option` travels up; only [`SpanAlloc`] and [`raw`] turn `None` into null. Bad pointers
//! and impossible states stop the process with one line from [`check::fatal`].
#![warn(missing_docs)]

pub mod check;
pub mod pages;
pub mod size_class;
pub mod sync;
pub mod sys;
pub mod fixed_alloc;
pub mod span;
pub mod page_map;
pub mod page_heap;
pub mod central_free_list;
pub mod heap;
pub mod thread_cache;
pub mod stats;
#[cfg(not(loom))]
mod global;
#[cfg(all(test, loom))]
mod loom_tests;

#[cfg(not(loom))]
pub use global::{
    SpanAlloc, flush_thread_cache, heap, raw, release_free_memory, set_decay_ms,
    start_background_release, stats,
};
