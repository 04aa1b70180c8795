//! spanalloc: a general-purpose, multi-threaded memory allocator in pure Rust, built the
//! TCMalloc way: per-thread caches of free objects by size class, fed in batches by
//! lock-protected central lists, fed by a page heap that maps memory with `mmap`.
//!
//! ```
//! #[global_allocator]
//! static GLOBAL: spanalloc::SpanAlloc = spanalloc::SpanAlloc;
//! # fn main() { let v = vec![1u8; 100]; assert_eq!(v.len(), 100); }
//! ```
//!
//! That is all a Rust program needs: no C compiler, no build script. The same code behind
//! the C ABI is `libspanalloc.so` (the repository's `preload/` crate) for `LD_PRELOAD`,
//! replacing `malloc` and C++ `new`/`delete` in any program.
//!
//! # Using it
//!
//! | call | what it does |
//! |---|---|
//! | [`SpanAlloc`] | the global allocator |
//! | [`stats()`] | where every mapped byte is, the heap's peak, allocation and free counts: [`stats::Stats`], printable as a table (`{}`) or as JSON ([`stats::Stats::to_json`]) |
//! | [`release_free_memory()`] | gives every free page back to the OS now, the calling thread's cached objects and every thread's reserve included |
//! | [`flush_thread_cache()`] | hands the calling thread's cached objects back to the shared lists |
//! | [`set_decay_ms`] | how long free pages stay resident before they go back on their own (default 500 ms) |
//! | [`start_background_release()`] | a thread that gives memory back on time even while the program makes no allocator call, idle threads' reserves included |
//! | [`set_thread_cache_bytes`], [`set_bin_bytes`] | the bounds of each thread's cache (default 4 MiB, 256 KiB of one class) |
//! | [`profiling`] | heap profiling: sampled allocation sites, written as pprof profiles |
//! | [`raw`] | the allocation functions without `Layout` (what `libspanalloc.so` calls) |
//!
//! **Configuration.** The same knobs come from the environment, read once before `main`:
//! `SPANALLOC_DECAY_MS`, `SPANALLOC_BACKGROUND_RELEASE=1`, `SPANALLOC_THREAD_CACHE_BYTES`,
//! `SPANALLOC_BIN_BYTES` (with `K`, `M`, `G` suffixes), `SPANALLOC_SHOW_STATS=1` (the
//! statistics on stderr at exit), `SPANALLOC_PROFILE=bytes` and
//! `SPANALLOC_PROFILE_DUMP=path`. A value that does not parse keeps the default, with one
//! line on stderr. A program's own calls come later and win.
//!
//! **Errors.** Out of memory is a null pointer (`GlobalAlloc`'s contract; Rust's
//! `handle_alloc_error` then). A bad pointer given to `dealloc`, `free` or `realloc` (never
//! allocated, interior, freed twice) stops the process with one line on stderr,
//! `spanalloc: <what> at 0x<address>`, and `abort`: run the program under valgrind or
//! AddressSanitizer with the system allocator to see where it came from.
//!
//! **Platforms.** Linux: x86_64 and aarch64 tested (any Linux target with `std` expected to
//! work). macOS (aarch64 and x86_64): builds, and is checked in CI (`cargo check`,
//! `clippy`), but is untested at run time; without the `override` feature (macOS replaces
//! `malloc` through malloc zones) and with heap profiles that carry no mappings. Other
//! operating systems stop the build with a `compile_error!` naming what a port provides
//! (the functions of `sys/linux.rs`).
//!
//! **Cost.** A small allocation and free take a few dozen instructions with no atomic and no
//! lock, cross-thread frees included; threads meet only in the central lists, once per
//! batch of objects. The repository's README has the measurements against glibc, mimalloc,
//! jemalloc and TCMalloc.
//!
//! **Cargo features.** `free-checks` (default: double frees caught), `hardened` (link
//! encoding, guard pages, random order, poisoning), `profiling` (profiles symbolized and
//! compressed in process), `override` (the C `malloc` family exported from the program, so
//! that C and C++ code linked into it allocates from spanalloc too), `small-tls` (the C
//! library's thread-local layout), `internals`
//! (unstable: the tiers below as `spanalloc::internals`, for the project's own tests).
//!
//! # How it works
//!
//! The rest of this page is the overview of the whole allocator; every other file opens with
//! one line and points here. `docs/design.md` gives the reasons for the choices. The
//! modules are crate-private; the `internals` feature re-exports them under
//! `spanalloc::internals`.
//!
//! ## Lineage and layers
//!
//! The design is TCMalloc's and Go's (`runtime/malloc.go`): a small-object front end of
//! per-thread caches of free objects, a middle of central lists that move them in batches,
//! a back end of pages. The modules below are listed lowest layer first; each uses only the
//! ones above it in this list.
//!
//! | module | role | Go name |
//! |---|---|---|
//! | `sys` | `sys::PageSource`: `mmap`, `munmap`, release; the kernel calls that differ by OS (lock wait and wake, clock, errno, random bytes); a fake source for tests | `mem_linux.go` |
//! | `check` | `fatal(msg)`: one line with `write(2)`, then abort; the double-free key | `throw` |
//! | `pages` | `pages::PageId` / `pages::Pages`: 8 KiB pages as types | |
//! | `size_class` | the class table (generated) and size → class lookup | `sizeclasses.go` |
//! | `sync` | atomics, `sync::GuardedCell` and the futex `sync::Lock`; the loom switch | |
//! | `hardening` | the `hardened` build's link keys, random order and poison (see below) | |
//! | `fixed_alloc` | `fixed_alloc::FixedAlloc`: metadata records from their own memory | `mfixalloc.go` |
//! | `span` | `span::Span`: a run of pages; its free list; the free-object link and key | `mspan` |
//! | `page_map` | `page_map::PageMap`: address → span and small-object word, lock-free reads | `arenas` |
//! | `page_heap` | `page_heap::PageHeap`: free runs, split and merged; release to the OS | `mheap` |
//! | `central_free_list` | `central_free_list::CentralFreeList`: per class, the spans and whole batches of free objects | `mcentral` |
//! | `heap` | `heap::Heap`: the shared tiers as one value; large objects; pointer validation | `mheap_` |
//! | `sampler` | `sampler::Sampler`: the heap profiler's per-thread countdown to the next sample | `nextSample` |
//! | `stack` | stack capture for the profiler: a walk by unwind rules cached per code address, a thread's last walk replayed while its stack holds the same words, `_Unwind_Backtrace` where it gives up | `callers` |
//! | `sample_table` | `sample_table::SampleTable`: live sampled objects and per-stack totals | `mProf` |
//! | `thread_cache` | `thread_cache::ThreadCache`: per thread, free objects by class, moved in batches; beside it, its `Reserve`, which other threads can give back | `mcache` |
//! | [`stats`](mod@stats) | [`stats::Stats`]: where every mapped byte is | `MemStats` |
//! | `config` | `config::Config`: the `SPANALLOC_*` variables, parsed without allocating | `parsedebugvars` |
//! | `global` | the only statics: the heap, the profiler's table, the thread-local slot, [`SpanAlloc`], [`raw`] | `mallocgc` |
//! | [`profiling`] | heap profiles: `start`, `stop`, `heap_profile`, pprof output | `runtime/pprof` |
//! | `startup` | the process's start and end: the configuration applied before `main`, statistics at exit | `schedinit` |
//! | `c_abi` | the C `malloc` family with glibc's semantics, exported with `override` (or by `libspanalloc.so`) | |
//!
//! ## Allocating (small: under 32 KiB)
//!
//! 1. **Thread cache**, no atomic, no lock: look the size up in a table (one load: below
//!    1 KiB it gives the bin's offset directly, above the class), pop the head of the
//!    thread's bin for that class. An empty bin has a null head, so this is the only test.
//! 2. **Reserve**, the thread's own lock (uncontended but for a reclaimer): a batch the
//!    bins kept past their 1 MiB, if the reserve holds one of the class.
//! 3. **Central list**, one lock per class: the bin was empty, so fetch a batch (up to 32
//!    objects, 64 KiB worth): a whole batch from a transfer slot in one step, else objects
//!    from the class's spans (their free lists, then never-used objects). Amortizes the
//!    lock over a batch; the bin's bound grows by a batch.
//! 4. **Page heap**, one lock: when no span of the class has a free object (and there is no
//!    spare span), carve a new span from a free run (best fit). Amortizes the lock over a
//!    span's objects.
//! 5. **OS**: when no run fits, map with `mmap` (2 MiB aligned): 2 MiB the first time, the
//!    step doubling up to 32 MiB. When the OS refuses, unmap the free runs of 1 MiB or more
//!    and try once more.
//!
//! ## Freeing (small)
//!
//! 1. Look the pointer's page up in the page map: its small-object word holds the span's
//!    start and class (three loads, no lock). The pointer must be an object's start (an
//!    offset below the objects' bytes, and a multiple of the class size by one multiply)
//!    and must not carry the free key already (a double free); then push it on this
//!    thread's bin of that class: no atomic, no lock, whichever thread allocated it and
//!    whether or not the size is known.
//! 2. A bin at its bound hands its most recently freed batch to the thread's reserve while
//!    the cache has budget left past the bins' 1 MiB, else back to the central list:
//!    into a transfer slot in one step when one is empty, else each object back to its span
//!    (found in the page map) under the lock. A span whose objects have all come back goes
//!    to the page heap (one per class stays as the spare).
//! 3. Anything the word does not vouch for (a large object, a bad pointer) goes to the slow
//!    path, which finds the span record and either frees the large object or stops the
//!    process with the message that fits.
//!
//! ## Large objects (32 KiB and up, or alignment above 8 KiB)
//!
//! A span of their own. A thread's freed large objects of 32 KiB to 256 KiB go onto its
//! cache's list of their length (up to 512 KiB in all; `thread_cache/large_lists.rs`):
//! the free reads only the first page's small-object word, which for these objects holds
//! their start and length (the *listed word*), and the next allocation of that length takes
//! the list's head, with no span record read, no atomic and no lock. Other freed large
//! spans of up to 1 MiB (and what the full lists refuse) wait in its cache's stash (four of
//! them) for its next allocation of the same length: one compare-and-swap, no lock. The free into an empty slot (`raw::free_large_fast`, also the C `free`'s, with
//! no `errno` to keep; the span record comes from the first page's small-object word, read
//! by the small-object test just before) and the allocation of the span freed last
//! (`alloc_large_newest`) are short paths of their own (a sampled object's free takes the
//! first too, and leaves the profile there); the rest (a full stash, a search of the stash)
//! is out of line. Otherwise from the page heap, under its lock.
//! Freed spans of up to 1 MiB wait, unmerged, in the page heap's large-span cache for the
//! next allocation of the same length (no search, split or merge); others go straight back
//! to the free runs and merge with free neighbours. `realloc` grows in place into a
//! following free run (a growing object is placed in a run with room after it) or shrinks
//! in place; `GlobalAlloc::realloc` within the pages a large object already has returns at
//! once.
//!
//! ## Buffers that keep growing
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
//! ## Zeroing
//!
//! Memory from the OS and memory given back (Linux: `MADV_DONTNEED`; macOS: a new mapping
//! over the range) is zero; the page heap tracks which free runs are wholly zero, and
//! `alloc_zeroed` of a large object skips the clearing for them. Small objects are always
//! cleared.
//!
//! ## Giving memory back
//!
//! Free runs that have stayed unused for the decay time (default 500 ms) are given back
//! (Linux: `MADV_DONTNEED`), a bounded amount at a time, from the allocator's own slow
//! paths (or, after [`start_background_release`], from a thread of its own), after the
//! central lists' transfer slots and spare spans have gone back to the page heap on the
//! same clock; [`release_free_memory`] gives back everything now (the calling thread's
//! cache included); [`set_decay_ms`] and `SPANALLOC_DECAY_MS` configure it (every
//! variable: `config`).
//!
//! ## Heap profiling
//!
//! Off unless started ([`profiling::start`] or `SPANALLOC_PROFILE`). Every allocation
//! subtracts its size from its cache's countdown (on the fast path one subtraction and one
//! branch, after the pop); the one that crosses it is sampled: its stack is captured with no
//! lock held, it is served as a large object (a span of its own; a large request is
//! recorded on the span it is served with), and its record, with the bytes it stands for,
//! goes into the profiler's table in metadata memory (the shard of the sampling thread's
//! stack, so threads sampling at once take different locks). Its span record points to that
//! record, so the free of an ordinary object never looks at the table and a sampled one is
//! found on the large-object free path. [`profiling::heap_profile`] sums the
//! table per stack; profiles are written as pprof. See `docs/design.md`, section 10.
//!
//! ## What is lock-free, and the lock order
//!
//! The fast paths take no lock and use no atomic, cross-thread frees included (a free goes
//! to the freeing thread's own cache); page-map lookups are lock-free reads. Threads meet
//! only in the central lists, once per batch. Locks, in the only order in which
//! they may be nested: the orphan cache (threads without a usable cache), a central list,
//! the page heap; the profiler's table is eight shards with a lock each, leaves (nothing is
//! taken while one is held; only `start`, `stop`, snapshots and `fork` take them all).
//! Central lists never hold their lock while they call the page heap. Every
//! lock is a `sync::Lock`, which never allocates.
//!
//! ## The hardened build
//!
//! The cargo feature `hardened` (off by default) adds, in the shape of snmalloc's checked
//! build and mimalloc's secure mode: free-list links encoded with a per-process key and
//! checked when followed (a link an overflow wrote over stops the process instead of being
//! followed), a guard page after every large object and at the end of every 2 MiB span
//! group, never-used objects handed out in random order, freed objects poisoned and
//! checked when reused (a write after free stops the process), and the sized free's layout
//! checked against the class. None of it is in the default build's code. What each
//! catches and costs: `docs/robustness.md`.
//!
//! ## Errors
//!
//! `Option` travels up; only [`SpanAlloc`] and [`raw`] turn `None` into null. Bad pointers
//! and impossible states stop the process with one line from `check::fatal`.
#![warn(missing_docs)]
// Without `internals`, the items of the tiers that only the tests, benchmarks and C library
// use (walkers, test hooks, statistics accessors) are unreachable: not dead code.
#![cfg_attr(not(feature = "internals"), allow(dead_code))]

// Two platforms are implemented: Linux (x86_64 and aarch64 tested, any Linux target with
// `std` expected to work) and macOS (builds, checked in CI; untested at run time).
// Elsewhere the build stops here, first, with what a port needs.
#[cfg(not(any(target_os = "linux", target_os = "macos")))]
compile_error!(
    "spanalloc supports Linux and macOS only. A port provides a file beside `sys/linux.rs` \
     and `sys/macos.rs` with: pages (mmap/munmap, a release after which they read as zero, \
     and for the hardened build a guard page, `protect` and `guards_cost_mappings`, which \
     mprotect serves), a monotonic clock, a lock's wait and wake without allocating (Linux: futex; \
     macOS: __ulock_wait), errno, random bytes, a close-on-exec pipe and the peak RSS; and \
     needs from the system a thread-exit hook (pthread keys), pthread_atfork, write(2), \
     abort, getenv and a load-time constructor (startup.rs)."
);

// The C allocation functions exported from the program replace the C library's only where
// symbols interpose (ELF). On macOS the two-level namespace binds every library to
// libSystem's `malloc`, which is replaced through malloc zones instead: not done here.
#[cfg(all(target_os = "macos", feature = "override"))]
compile_error!(
    "spanalloc's `override` feature is Linux-only: macOS replaces malloc through malloc zones"
);

// The modules, lowest layer first (each uses only the ones above it), declared only where the
// platform layer is implemented, so that another target's build stops at the
// `compile_error!` above alone. The tiers are crate-private; [`internals`] re-exports them
// for the project's own tests, benchmarks and C library. Some of their items are used only
// by those: hence no dead-code lint when `internals` is off (the crate attribute above).
#[cfg(any(target_os = "linux", target_os = "macos"))]
mod sys;
#[cfg(any(target_os = "linux", target_os = "macos"))]
mod check;
#[cfg(any(target_os = "linux", target_os = "macos"))]
mod pages;
#[cfg(any(target_os = "linux", target_os = "macos"))]
mod size_class;
#[cfg(any(target_os = "linux", target_os = "macos"))]
mod sync;
#[cfg(all(any(target_os = "linux", target_os = "macos"), feature = "hardened"))]
mod hardening;
#[cfg(any(target_os = "linux", target_os = "macos"))]
mod fixed_alloc;
#[cfg(any(target_os = "linux", target_os = "macos"))]
mod span;
#[cfg(any(target_os = "linux", target_os = "macos"))]
mod page_map;
#[cfg(any(target_os = "linux", target_os = "macos"))]
mod page_heap;
#[cfg(any(target_os = "linux", target_os = "macos"))]
mod central_free_list;
#[cfg(any(target_os = "linux", target_os = "macos"))]
mod heap;
#[cfg(any(target_os = "linux", target_os = "macos"))]
mod sampler;
#[cfg(any(target_os = "linux", target_os = "macos"))]
mod stack;
#[cfg(any(target_os = "linux", target_os = "macos"))]
mod sample_table;
#[cfg(any(target_os = "linux", target_os = "macos"))]
mod thread_cache;
#[cfg(any(target_os = "linux", target_os = "macos"))]
mod config;
#[cfg(any(target_os = "linux", target_os = "macos"))]
pub mod stats;
#[cfg(all(any(target_os = "linux", target_os = "macos"), not(loom)))]
mod global;
#[cfg(all(any(target_os = "linux", target_os = "macos"), not(loom)))]
pub mod profiling;
#[cfg(all(any(target_os = "linux", target_os = "macos"), not(loom)))]
mod startup;
#[cfg(all(
    target_os = "linux",
    not(loom),
    any(feature = "override", feature = "internals")
))]
mod c_abi;
#[cfg(all(any(target_os = "linux", target_os = "macos"), test, loom))]
mod loom_tests;

#[cfg(all(any(target_os = "linux", target_os = "macos"), not(loom)))]
pub use global::{
    SpanAlloc, flush_thread_cache, raw, release_free_memory, set_bin_bytes, set_decay_ms,
    set_thread_cache_bytes, start_background_release, stats,
};

/// The tiers, for this repository's tests, benchmarks and C library (cargo feature
/// `internals`). Unstable: not part of the API, changed in any release, and some of its safe
/// functions can break the process (take every lock, rewrite the page map). A program wants
/// none of it; see the crate overview for what each module is.
#[cfg(all(any(target_os = "linux", target_os = "macos"), feature = "internals"))]
pub mod internals {
    /// One re-exporting module per tier, named as the tier (see the crate overview).
    macro_rules! reexport {
        ($($(#[$m:meta])* $name:ident),* $(,)?) => {$(
            $(#[$m])*
            #[doc = concat!("The `", stringify!($name), "` tier (see the crate overview).")]
            pub mod $name {
                pub use crate::$name::*;
            }
        )*};
    }
    reexport!(
        sys,
        check,
        pages,
        size_class,
        sync,
        #[cfg(feature = "hardened")]
        hardening,
        fixed_alloc,
        span,
        page_map,
        page_heap,
        central_free_list,
        heap,
        sampler,
        stack,
        sample_table,
        thread_cache,
        config,
        #[cfg(all(target_os = "linux", not(loom)))]
        c_abi,
    );
    #[cfg(not(loom))]
    pub use crate::global::heap;
}
