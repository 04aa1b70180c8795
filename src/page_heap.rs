//! The page heap: runs of pages, split on allocation and merged with free neighbours on
//! release; large objects; giving memory back to the OS. See `lib.rs` for an overview.
//!
//! Guarded by one lock (the page heap lock, [`crate::heap::Heap::page_heap`]), which also
//! guards page-map writes and the span-record allocator. Nothing here is on the small-object
//! fast path: thread caches reach it only through their central lists, a span at a time.
//!
//! Free runs of up to [`LISTED_PAGES`] pages sit on one list per length, with a bitmask of
//! the non-empty lists, so finding the smallest fitting run is a mask and a trailing-zero
//! count. Longer runs sit on one list searched best-fit (lowest address on ties).
//!
//! # Guard pages (hardened build)
//!
//! A large span has [`crate::span::GUARD_PAGES`] (one) more pages than its object needs,
//! and its last page is made inaccessible (`PageSource::protect`: a guard marker where
//! Linux has them, 6.13 and later, else `mprotect`), so that a linear overflow past the
//! object faults. One rule keeps this right through every split and merge: the last page of
//! every large span, and of every span in the large-span cache (which were large spans), is
//! inaccessible, and every other page is accessible. So a span becoming large protects its
//! last page; growing or shrinking in place moves the guard to the new end (a shrunk-off
//! tail is a large span whose last page is the old guard); a large span going back to the
//! free runs, or leaving the cache for them, makes its last page accessible first. Free
//! runs, which are split, merged and given back to the OS, never hold a guard page. The
//! large-span cache and the threads' stashes keep their spans' guards, so reusing a span of
//! the same length costs no system call. Callers see object pages: the `pages` that
//! [`PageHeap::alloc`], [`PageHeap::grow_in_place`] and [`PageHeap::shrink`] take for a
//! large span leave the guard out, as `Span::object_pages` does.
//!
//! Each `mprotect` guard splits a mapping into up to three kernel mappings (a guard marker
//! splits none: see the end of this paragraph), and the kernel caps their number per
//! process (`vm.max_map_count`, 65 530 by default); past the cap `mmap` fails and
//! the allocator would run out of memory with memory to spare. So a page heap keeps at most
//! `GUARD_BUDGET` guards at once (two kernel mappings each: half the default cap, the
//! other half left to the program and to the heap's own growth); a large span made while the
//! budget is spent goes without a guard (`Span::guarded` says which have one), as one does
//! when the kernel refuses the `mprotect`. Guards live where large objects are few and
//! large; a program with tens of thousands of live large objects (or the heap profiler
//! sampling every allocation, each sample being a large object) guards the first
//! `GUARD_BUDGET` of them. GrapheneOS's hardened_malloc, which guards its large
//! allocations the same way, asks instead for a raised `vm.max_map_count`; a budget keeps
//! the default working. Where guards cost no kernel mapping (Linux's guard markers,
//! `PageSource::guards_cost_mappings`), the budget does not apply: every large span has
//! its guard.
//!
//! **Span groups.** Each mapping the heap makes for requests shorter than [`GROUP_PAGES`]
//! is cut into span groups of [`MAP_ALIGN`] (mappings are aligned to it and a multiple of
//! it), and the last page of each group is a guard page for good: inaccessible from the
//! mapping on, with a record of its own (`SpanKind::Guard`) in the page map, so no free
//! run merges across it, no span covers it, and a pointer into it belongs to nobody. A
//! linear overflow out of the last span of a group faults there, and a group's spans
//! cannot be reached by running off the end of the group below. This is mimalloc's
//! secure mode, which guards the end of each segment once, when it is mapped: the guard
//! stays with the place, so the spans made and given back within a group cost no system
//! call (a guard page after every small span was tried and cost 2 times on a shape that
//! makes and frees spans all the time; see docs/robustness.md). A request of a group or
//! more maps a mapping of its own with no group guards (they would cut the run it needs;
//! its own guard ends it), as mimalloc gives a huge object a segment of its own; what is
//! left of such a mapping serves smaller requests without group guards. Unmapping the run
//! below a group guard unmaps the guard too (there is nothing left for it to guard).
//! Group guards count against `GUARD_BUDGET` with the large objects' guards, and none are
//! made where an OS page is larger than a page. Their cost: a page of address space in
//! 256 (never resident), one `mprotect` per group when a mapping is made, and no 2 MiB
//! transparent huge page for the heap's memory.

use crate::fixed_alloc::FixedAlloc;
use crate::page_map::PageMap;
use crate::pages::{PAGE_SIZE, PageId, Pages};
use crate::size_class::SizeClass;
#[cfg(feature = "hardened")]
use crate::span::GUARD_PAGES;
use crate::span::{ListId, Span, SpanKind, SpanList};
use crate::sys::PageSource;
use core::ptr::{NonNull, null_mut};

/// A growing large object is placed in a run at least this many times its size...
const GROW_ROOM: usize = 32;
/// ...and at least this long, when there is one (see `alloc_from`).
const GROW_ROOM_MIN: Pages = Pages(128);

/// Free runs up to this many pages have a list per length.
pub const LISTED_PAGES: usize = 128;
/// Memory is mapped from the source at least this much at a time, once the heap has grown:
/// [`PageHeap::new`] starts at [`MAP_ALIGN`] and doubles the step with every mapping up to
/// this, so a small program reserves a few MiB of address space, not 32.
pub const DEFAULT_GROW_BYTES: usize = 32 << 20;
/// Mappings are aligned to this, so that released runs can be whole huge pages.
pub const MAP_ALIGN: usize = 2 << 20;
/// Freed large spans up to this many pages wait in the large-span cache, unmerged, for an
/// allocation of the same length.
pub const CACHED_PAGES: usize = 128;
/// The most the large-span cache holds.
pub const CACHE_BYTES: usize = 8 << 20;
/// When the source cannot map more, free runs of at least this many bytes are unmapped
/// (their address space given back) before the one retry; shorter ones are kept, so that
/// holes between live spans do not multiply the kernel's mappings.
pub const UNMAP_MIN_BYTES: usize = 1 << 20;

/// Counters of the page heap, exact under its lock.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct PageHeapStats {
    /// Bytes mapped for spans (all runs, free or in use).
    pub mapped: usize,
    /// Bytes in free runs.
    pub free: usize,
    /// Bytes in free runs that may be resident (not yet given back).
    pub free_resident: usize,
    /// Bytes in large spans handed out.
    pub large_in_use: usize,
    /// Bytes in small-object spans handed to central lists.
    pub small_spans: usize,
    /// The most bytes `large_in_use + small_spans` has been: the heap's high-water mark, at
    /// the grain of spans (kept where spans are handed out, under the lock already held).
    pub peak_in_use: usize,
    /// Bytes given back to the OS over the heap's life.
    pub released_total: usize,
    /// Bytes unmapped (address space given back, see [`PageHeap::unmap_free_runs`]) over
    /// the heap's life; `mapped` counts only what is still mapped.
    pub unmapped_total: usize,
    /// Bytes mapped for span records.
    pub metadata: usize,
}

/// Runs of pages.
pub struct PageHeap {
    /// `by_length[n]`: free runs of exactly `n` pages (index 0 unused).
    by_length: [SpanList; LISTED_PAGES + 1],
    /// Bit `n - 1` set when `by_length[n]` is non-empty.
    nonempty: u128,
    /// Free runs longer than `LISTED_PAGES`.
    long_runs: SpanList,
    /// The large-span cache: `cached[n]` holds freed large spans of exactly `n` pages, not
    /// merged with their neighbours, so that an allocation of the same length takes one
    /// back with no search, split or merge. Counted as free (and resident) in `stats`.
    cached: [SpanList; CACHED_PAGES + 1],
    /// Bit `n - 1` set when `cached[n]` is non-empty.
    cached_mask: u128,
    cached_bytes: usize,
    records: FixedAlloc<Span>,
    /// The most the growth step becomes.
    grow_bytes: usize,
    /// The next growth step: at least this much is mapped when the heap grows.
    next_grow: usize,
    stats: PageHeapStats,
    /// Hardened build: spans with a guard now, and the most there may be.
    #[cfg(feature = "hardened")]
    guards: usize,
    #[cfg(feature = "hardened")]
    guard_budget: usize,
    /// Hardened build: guard pages between span groups, mapped now.
    #[cfg(feature = "hardened")]
    group_guards: usize,
}

/// Hardened build: the most guard pages a page heap keeps at once (see the module docs).
#[cfg(feature = "hardened")]
pub const GUARD_BUDGET: usize = 16 << 10;

/// Hardened build: a span group, the pages between two group guards: each [`MAP_ALIGN`]
/// piece of a mapping ends with a guard page (see the module docs).
#[cfg(feature = "hardened")]
pub const GROUP_PAGES: Pages = Pages(MAP_ALIGN / PAGE_SIZE);

impl PageHeap {
    /// An empty page heap that maps [`MAP_ALIGN`] the first time it grows and twice as much
    /// each time after, up to [`DEFAULT_GROW_BYTES`] at a time.
    pub const fn new() -> PageHeap {
        PageHeap::with_steps(MAP_ALIGN, DEFAULT_GROW_BYTES)
    }

    /// An empty page heap that maps `grow_bytes` (a multiple of [`MAP_ALIGN`]) at a time.
    pub const fn with_grow_bytes(grow_bytes: usize) -> PageHeap {
        PageHeap::with_steps(grow_bytes, grow_bytes)
    }

    const fn with_steps(first: usize, most: usize) -> PageHeap {
        PageHeap {
            by_length: [const { SpanList::new(ListId::PageHeapFree) }; LISTED_PAGES + 1],
            nonempty: 0,
            long_runs: SpanList::new(ListId::PageHeapFree),
            cached: [const { SpanList::new(ListId::PageHeapCache) }; CACHED_PAGES + 1],
            cached_mask: 0,
            cached_bytes: 0,
            records: FixedAlloc::new(),
            grow_bytes: most,
            next_grow: first,
            stats: PageHeapStats {
                mapped: 0,
                free: 0,
                free_resident: 0,
                large_in_use: 0,
                small_spans: 0,
                peak_in_use: 0,
                released_total: 0,
                unmapped_total: 0,
                metadata: 0,
            },
            #[cfg(feature = "hardened")]
            guards: 0,
            #[cfg(feature = "hardened")]
            guard_budget: GUARD_BUDGET,
            #[cfg(feature = "hardened")]
            group_guards: 0,
        }
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> PageHeapStats {
        PageHeapStats {
            metadata: self.records.mapped_bytes(),
            ..self.stats
        }
    }

    /// Raises the high-water mark to the bytes in spans in use now (after they grew).
    #[inline]
    fn note_peak(&mut self) {
        let now = self.stats.large_in_use + self.stats.small_spans;
        self.stats.peak_in_use = self.stats.peak_in_use.max(now);
    }

    /// Span records in use.
    pub fn records_in_use(&self) -> usize {
        self.records.in_use()
    }

    /// Allocates a span of `pages` pages whose start is a multiple of `align` pages, for a
    /// small span of `class` or (class [`SizeClass::LARGE`]) one large object. Returns the
    /// span and whether all its bytes are known to be zero. `None` when the source cannot
    /// map more.
    pub fn alloc(
        &mut self,
        pages: Pages,
        align: Pages,
        class: SizeClass,
        map: &PageMap,
        source: &impl PageSource,
    ) -> Option<(NonNull<Span>, bool)> {
        self.alloc_from(pages, align, class, true, map, source)
    }

    /// As [`PageHeap::alloc`] for a large span that is likely to grow (a `realloc` moving
    /// a growing object): never from the large-span cache, whose spans sit between others,
    /// but from a free run, whose remainder is free room to grow into.
    pub fn alloc_to_grow(
        &mut self,
        pages: Pages,
        align: Pages,
        map: &PageMap,
        source: &impl PageSource,
    ) -> Option<(NonNull<Span>, bool)> {
        // The cached spans are free room too: merged back first, they can be the largest
        // run (a buffer grown again and again would otherwise take fresh pages each time).
        #[cfg(not(feature = "hardened"))]
        self.drain_cache(u64::MAX, map);
        #[cfg(feature = "hardened")]
        self.drain_cache(u64::MAX, map, source);
        self.alloc_from(pages, align, SizeClass::LARGE, false, map, source)
    }

    fn alloc_from(
        &mut self,
        pages: Pages,
        align: Pages,
        class: SizeClass,
        use_cache: bool,
        map: &PageMap,
        source: &impl PageSource,
    ) -> Option<(NonNull<Span>, bool)> {
        debug_assert!(pages.0 > 0 && align.0.is_power_of_two());
        #[cfg(feature = "hardened")]
        let pages = if class == SizeClass::LARGE {
            pages + GUARD_PAGES
        } else {
            pages
        };
        if use_cache && class == SizeClass::LARGE && align.0 == 1 && pages.0 <= CACHED_PAGES {
            if let Some(span) = self.take_cached(pages) {
                mark_large_in_use(map, span);
                return Some((span, false));
            }
        }
        let want = Pages(pages.0.checked_add(align.0 - 1)?);
        let mut run = if use_cache {
            self.find(want)
        } else {
            // Room to grow: the best fit among runs of at least GROW_ROOM times the request
            // (and 1 MiB), else the largest. Not simply the largest: that is the untouched
            // rest of the newest mapping, so a buffer grown again and again would take fresh
            // pages every time while its last run waits for the decay.
            let room = Pages(want.0.saturating_mul(GROW_ROOM).max(GROW_ROOM_MIN.0));
            let fit = self.find(room);
            if fit.is_null() {
                self.find_largest(want)
            } else {
                fit
            }
        };
        if run.is_null() && self.cached_bytes > 0 {
            // Cached spans merged back may make a fitting run; try that before mapping more.
            #[cfg(not(feature = "hardened"))]
            self.drain_cache(u64::MAX, map);
            #[cfg(feature = "hardened")]
            self.drain_cache(u64::MAX, map, source);
            run = self.find(want);
        }
        if run.is_null() {
            // A new mapping is aligned as asked: it needs no room for alignment padding.
            run = self.grow(pages, align, map, source)?.as_ptr();
        }
        let span = self.carve(run, pages, align, map, source)?;
        // SAFETY: `carve` returned a live record we now own.
        let s = unsafe { span.as_ref() };
        // SAFETY: the page heap lock (held by the caller, as `&mut self`) guards `zeroed`.
        let zeroed = unsafe { s.zeroed.get() };
        if class == SizeClass::LARGE {
            s.set_kind(SpanKind::Large, class);
            map.set_ends(s.start(), pages, span.as_ptr());
            mark_large_in_use(map, span);
            self.stats.large_in_use += pages.bytes();
            #[cfg(feature = "hardened")]
            self.set_guard(s, false, source);
        } else {
            // SAFETY: the span is not yet published as a small span.
            unsafe { s.init_small(class) };
            map.set_range(s.start(), pages, span.as_ptr());
            self.stats.small_spans += pages.bytes();
        }
        self.note_peak();
        Some((span, zeroed))
    }

    /// Returns a small or large span to the free runs, merging it with free neighbours, or
    /// (a large span of at most [`CACHED_PAGES`]) to the large-span cache. Returns whether it
    /// went to the cache. `now` is the caller's clock, for decay.
    ///
    /// # Safety
    /// `span` came from [`PageHeap::alloc`] on this heap (possibly reshaped by
    /// `grow_in_place` / `shrink`), is not used afterwards, and none of its memory is live.
    pub unsafe fn free(
        &mut self,
        span: NonNull<Span>,
        now: u64,
        map: &PageMap,
        #[cfg(feature = "hardened")] source: &impl PageSource,
    ) -> bool {
        // SAFETY: per the caller, a live record of ours.
        let s = unsafe { span.as_ref() };
        if s.kind() == SpanKind::Large {
            // No longer a large span in use (see `mark_large_in_use`).
            map.set_small_words(s.start(), Pages(1), 0);
        }
        if s.kind() == SpanKind::Large
            && s.pages().0 <= CACHED_PAGES
            && self.cached_bytes + s.bytes() <= CACHE_BYTES
        {
            // SAFETY: per the caller.
            unsafe { self.put_cached(span, now, map) };
            return true;
        }
        match s.kind() {
            SpanKind::Large => self.stats.large_in_use -= s.bytes(),
            SpanKind::Small => self.stats.small_spans -= s.bytes(),
            _ => crate::check::fatal_at(
                "page heap: free of a span that is not in use",
                s.start_addr(),
            ),
        }
        // Hardened build: a large span's guard becomes an ordinary free page again.
        #[cfg(feature = "hardened")]
        if s.kind() == SpanKind::Large {
            self.set_guard(s, true, source);
        }
        // SAFETY: the lock is held (`&mut self`); the span is ours.
        unsafe {
            s.resident.set(s.pages().0);
            s.zeroed.set(false);
            s.freed_at.set(now);
        }
        s.set_kind(SpanKind::Free, SizeClass::LARGE);
        self.stats.free += s.bytes();
        self.stats.free_resident += s.bytes();
        let old_start = s.start();
        // SAFETY: a free run, not on a list.
        let run = unsafe { self.insert_merging(span, map) };
        // The freed span's first page now names the free run that holds it, so a second free
        // of the same pointer is reported as a double free (until the pages are reused).
        map.set(old_start, run.as_ptr());
        false
    }

    /// Grows large span `span` in place to `pages` pages if the run right after it is free
    /// and long enough. Returns whether it did.
    ///
    /// # Safety
    /// `span` is a large span of this heap, in use by the caller.
    pub unsafe fn grow_in_place(
        &mut self,
        span: NonNull<Span>,
        pages: Pages,
        map: &PageMap,
        #[cfg(feature = "hardened")] source: &impl PageSource,
    ) -> bool {
        #[cfg(feature = "hardened")]
        let pages = pages + GUARD_PAGES;
        // SAFETY: per the caller.
        let s = unsafe { span.as_ref() };
        let have = s.pages();
        if pages <= have {
            return true;
        }
        let extra = pages - have;
        let Some(next) = self.free_run_starting_at(map, s.end()) else {
            return false;
        };
        // SAFETY: checked just above: a free run of this heap.
        let n = unsafe { &*next };
        if n.pages() < extra {
            return false;
        }
        // SAFETY: `next` is on its free list.
        unsafe { self.unlist(next) };
        // SAFETY: the lock is held.
        let n_resident = unsafe { n.resident.get() };
        let taken_resident = n_resident.min(extra.0);
        self.stats.free -= extra.bytes();
        self.stats.free_resident -= taken_resident * PAGE_SIZE;
        if n.pages() == extra {
            n.set_kind(SpanKind::Unused, SizeClass::LARGE);
            // SAFETY: the record is off every list and no page maps to it any more below.
            unsafe { self.records.free(NonNull::new_unchecked(next)) };
        } else {
            n.set_range(n.start() + extra, n.pages() - extra);
            // SAFETY: the lock is held.
            unsafe { n.resident.set(n_resident - taken_resident) };
            map.set_ends(n.start(), n.pages(), next);
            // SAFETY: a free run on no list, whose neighbours did not change.
            unsafe { self.list(next) };
        }
        // Hardened build: the old guard page becomes part of the object, the new last page
        // the guard.
        #[cfg(feature = "hardened")]
        self.set_guard(s, true, source);
        s.set_range(s.start(), pages);
        map.set_ends(s.start(), pages, span.as_ptr());
        #[cfg(feature = "hardened")]
        self.set_guard(s, false, source);
        self.stats.large_in_use += extra.bytes();
        self.note_peak();
        true
    }

    /// Shrinks large span `span` to `pages` pages, freeing the tail. `false` (nothing done)
    /// when no record can be had for the tail.
    ///
    /// # Safety
    /// `span` is a large span of this heap, in use by the caller, whose bytes past `pages`
    /// pages are not live.
    pub unsafe fn shrink(
        &mut self,
        span: NonNull<Span>,
        pages: Pages,
        now: u64,
        map: &PageMap,
        source: &impl PageSource,
    ) -> bool {
        #[cfg(feature = "hardened")]
        let pages = pages + GUARD_PAGES;
        // SAFETY: per the caller.
        let s = unsafe { span.as_ref() };
        if pages >= s.pages() {
            return true;
        }
        let Some(tail) = self.records.alloc(source) else {
            return false;
        };
        let tail_pages = s.pages() - pages;
        // SAFETY: a fresh record.
        unsafe {
            Span::init(
                tail.as_ptr(),
                s.start() + pages,
                tail_pages,
                SpanKind::Large,
            )
        };
        s.set_range(s.start(), pages);
        map.set_ends(s.start(), pages, span.as_ptr());
        // Hardened build: the span's new last page is its guard; the tail's last page is the
        // old guard (the tail has the span's guard, if it had one), as a large span's must be.
        #[cfg(feature = "hardened")]
        // SAFETY: the lock is held (`&mut self`); both records are ours.
        unsafe {
            (*tail.as_ptr()).guarded.set(s.guarded.get());
            s.guarded.set(false);
            self.set_guard(s, false, source);
        }
        // The tail is a large span of ours that nobody uses; `free` handles the counters as
        // if it had been allocated (it was, as part of `span`).
        #[cfg(not(feature = "hardened"))]
        // SAFETY: as just said.
        unsafe {
            self.free(tail, now, map)
        };
        #[cfg(feature = "hardened")]
        // SAFETY: as just said.
        unsafe {
            self.free(tail, now, map, source)
        };
        true
    }

    /// Gives back to the OS the resident pages of every free run freed at or before
    /// `freed_by` (all of them for `u64::MAX`), stopping after the run that takes the total
    /// past `max_bytes`. Returns the resident bytes given back (as far as the page heap
    /// knows: its count of a run's resident pages is an upper bound).
    pub fn release(
        &mut self,
        freed_by: u64,
        max_bytes: usize,
        map: &PageMap,
        source: &impl PageSource,
    ) -> usize {
        #[cfg(not(feature = "hardened"))]
        self.drain_cache(freed_by, map);
        #[cfg(feature = "hardened")]
        self.drain_cache(freed_by, map, source);
        let mut done = 0;
        let os_page = source.os_page_size().max(PAGE_SIZE);
        let mut lists: [*const SpanList; LISTED_PAGES + 1] = [core::ptr::null(); LISTED_PAGES + 1];
        lists[0] = &self.long_runs;
        for (n, l) in self.by_length.iter().enumerate().skip(1) {
            lists[n] = l;
        }
        // Longest runs first: they are the most likely to be whole huge pages.
        for i in [0].into_iter().chain((1..=LISTED_PAGES).rev()) {
            if done >= max_bytes {
                break;
            }
            // SAFETY: the lists live in `self`, borrowed mutably by this call; we do not
            // change list membership while iterating.
            let list = unsafe { &*lists[i] };
            // SAFETY: the lock is held (`&mut self`).
            for run in unsafe { list.iter() } {
                if done >= max_bytes {
                    break;
                }
                // SAFETY: runs on our lists are live records guarded by the lock.
                let r = unsafe { &*run };
                // SAFETY: the lock is held.
                let (resident, freed_at) = unsafe { (r.resident.get(), r.freed_at.get()) };
                if resident == 0 || freed_at > freed_by {
                    continue;
                }
                let begin = r.start_addr().next_multiple_of(os_page);
                let end = r.start_addr() + r.bytes();
                let end = end - end % os_page;
                if end > begin {
                    // SAFETY: a free run of ours: nothing in it is live.
                    unsafe {
                        source.release(NonNull::new_unchecked(begin as *mut u8), end - begin)
                    };
                    let given = (resident * PAGE_SIZE).min(end - begin);
                    done += given;
                    self.stats.released_total += given;
                }
                self.stats.free_resident -= resident * PAGE_SIZE;
                // SAFETY: the lock is held.
                unsafe {
                    r.resident.set(0);
                    r.zeroed
                        .set(begin == r.start_addr() && end == r.start_addr() + r.bytes());
                }
            }
        }
        done
    }

    /// Checks every invariant of the free runs against the page map and the counters; panics
    /// on the first violation. Use it on a page heap no lock guards (tests); behind a lock,
    /// take [`PageHeap::invariant_violation`] under the lock and panic after dropping it (a
    /// panic allocates, and an allocation may need that lock).
    pub fn check_invariants(&self, map: &PageMap) {
        if let Some(violation) = self.invariant_violation(map) {
            panic!("page heap invariant broken: {violation}");
        }
    }

    /// The first broken invariant of the free runs, the page map and the counters, if any.
    pub fn invariant_violation(&self, map: &PageMap) -> Option<&'static str> {
        macro_rules! ensure {
            ($cond:expr, $msg:expr) => {
                if !$cond {
                    return Some($msg);
                }
            };
        }
        let mut free = 0;
        let mut resident = 0;
        let mut check_run = |run: *mut Span, list_len: Option<usize>| -> Option<&'static str> {
            // SAFETY: runs on our lists are live records; the caller holds the lock.
            let r = unsafe { &*run };
            ensure!(r.kind() == SpanKind::Free, "a listed run is free");
            // SAFETY: as above.
            let on_free_list = unsafe { r.list() } == ListId::PageHeapFree;
            ensure!(on_free_list, "a listed run is on a free list");
            match list_len {
                Some(n) => ensure!(r.pages().0 == n, "run on the list of its length"),
                None => ensure!(r.pages().0 > LISTED_PAGES, "long runs are long"),
            }
            ensure!(
                map.lookup(r.start_addr()) == run,
                "first page maps to the run"
            );
            ensure!(
                map.small_word_of(r.start_addr()) == 0,
                "a free run's first page has no small-object word"
            );
            ensure!(
                map.lookup(r.end().addr() - 1) == run,
                "last page maps to the run"
            );
            for neighbour in [
                map.lookup(r.start_addr().wrapping_sub(1)),
                map.lookup(r.end().addr()),
            ] {
                if !neighbour.is_null() && neighbour != run {
                    // SAFETY: page-map entries point to live (maybe stale) records.
                    let n = unsafe { &*neighbour };
                    let adjacent = n.end() == r.start() || n.start() == r.end();
                    // SAFETY: as above; the lock is held.
                    let listed_free =
                        n.kind() == SpanKind::Free && unsafe { n.list() } == ListId::PageHeapFree;
                    ensure!(!(adjacent && listed_free), "free neighbours are merged");
                }
            }
            // SAFETY: as above.
            let res = unsafe { r.resident.get() };
            ensure!(res <= r.pages().0, "resident pages within the run");
            free += r.bytes();
            resident += res * PAGE_SIZE;
            None
        };
        for (n, list) in self.by_length.iter().enumerate().skip(1) {
            ensure!(
                list.is_empty() == (self.nonempty & (1 << (n - 1)) == 0),
                "nonempty mask"
            );
            // SAFETY: the caller holds the lock.
            for run in unsafe { list.iter() } {
                if let Some(v) = check_run(run, Some(n)) {
                    return Some(v);
                }
            }
        }
        // SAFETY: as above.
        for run in unsafe { self.long_runs.iter() } {
            if let Some(v) = check_run(run, None) {
                return Some(v);
            }
        }
        let mut cached = 0;
        for (n, list) in self.cached.iter().enumerate().skip(1) {
            ensure!(
                list.is_empty() == (self.cached_mask & (1 << (n - 1)) == 0),
                "cache mask"
            );
            // SAFETY: the caller holds the lock.
            for span in unsafe { list.iter() } {
                // SAFETY: live records on our cache list.
                let s = unsafe { &*span };
                ensure!(
                    s.kind() == SpanKind::Free && s.pages().0 == n,
                    "cached span"
                );
                ensure!(
                    map.lookup(s.start_addr()) == span,
                    "cached span's first page"
                );
                ensure!(
                    map.small_word_of(s.start_addr()) == 0,
                    "a cached span's first page has no small-object word"
                );
                ensure!(
                    map.lookup(s.end().addr() - 1) == span,
                    "cached span's last page"
                );
                // SAFETY: as above.
                let res = unsafe { s.resident.get() };
                free += s.bytes();
                resident += res * PAGE_SIZE;
                cached += s.bytes();
            }
        }
        ensure!(cached == self.cached_bytes, "cached bytes counter");
        ensure!(free == self.stats.free, "free bytes counter");
        ensure!(
            resident == self.stats.free_resident,
            "resident bytes counter"
        );
        ensure!(
            self.stats.mapped == self.stats.free + self.stats.large_in_use + self.stats.small_spans,
            "mapped = free + large + small"
        );
        None
    }

    // ---------------------------------------------------------------------------------

    /// Puts freed large span `span` in the large-span cache. It reads as free (a second free
    /// of it is a double free); its first and last page map to it (a tail cut off by
    /// `shrink` comes here before it was ever mapped).
    ///
    /// # Safety
    /// As [`PageHeap::free`], for a large span of at most [`CACHED_PAGES`] pages.
    unsafe fn put_cached(&mut self, span: NonNull<Span>, now: u64, map: &PageMap) {
        // SAFETY: per the caller; the lock is held (`&mut self`).
        let s = unsafe { span.as_ref() };
        let n = s.pages().0;
        map.set_ends(s.start(), s.pages(), span.as_ptr());
        s.set_kind(SpanKind::Free, SizeClass::LARGE);
        // SAFETY: as above.
        unsafe {
            s.resident.set(n);
            s.zeroed.set(false);
            s.freed_at.set(now);
            self.cached[n].push(span.as_ptr());
        }
        self.cached_mask |= 1 << (n - 1);
        self.cached_bytes += s.bytes();
        self.stats.large_in_use -= s.bytes();
        self.stats.free += s.bytes();
        self.stats.free_resident += s.bytes();
    }

    /// Takes a cached span of exactly `pages` pages, as a large span in use.
    fn take_cached(&mut self, pages: Pages) -> Option<NonNull<Span>> {
        if self.cached_mask & (1 << (pages.0 - 1)) == 0 {
            return None;
        }
        let span = self.cached[pages.0].first();
        // SAFETY: a live record on our cache list; the lock is held.
        unsafe { self.unlist(span) };
        // SAFETY: as above.
        let s = unsafe { &*span };
        s.set_kind(SpanKind::Large, SizeClass::LARGE);
        // SAFETY: as above.
        let resident = unsafe { s.resident.get() };
        self.stats.free -= s.bytes();
        self.stats.free_resident -= resident * PAGE_SIZE;
        self.stats.large_in_use += s.bytes();
        self.note_peak();
        NonNull::new(span)
    }

    /// Moves cached spans freed at or before `freed_by` to the free runs, merging them with
    /// their neighbours.
    fn drain_cache(
        &mut self,
        freed_by: u64,
        map: &PageMap,
        #[cfg(feature = "hardened")] source: &impl PageSource,
    ) {
        // One span at a time: merging one may absorb other cached spans (its neighbours),
        // so the lists are searched afresh after each.
        while let Some(span) = self.cached_freed_by(freed_by) {
            // Hardened build: a cached span keeps its guard; free runs have none.
            #[cfg(feature = "hardened")]
            // SAFETY: a live record in the cache.
            self.set_guard(unsafe { span.as_ref() }, true, source);
            // SAFETY: a live record in the cache; the lock is held.
            unsafe {
                self.unlist(span.as_ptr());
                // A free run (already counted in `stats`) on no list.
                self.insert_merging(span, map);
            }
        }
    }

    /// A cached span freed at or before `freed_by`, if any.
    fn cached_freed_by(&self, freed_by: u64) -> Option<NonNull<Span>> {
        let mut mask = self.cached_mask;
        while mask != 0 {
            let n = mask.trailing_zeros() as usize + 1;
            mask &= mask - 1;
            // SAFETY: the lock is held (`&self` inside it).
            for span in unsafe { self.cached[n].iter() } {
                // SAFETY: live records on our cache list.
                if unsafe { (*span).freed_at.get() } <= freed_by {
                    return NonNull::new(span);
                }
            }
        }
        None
    }

    /// Bytes in the large-span cache.
    pub fn cached_bytes(&self) -> usize {
        self.cached_bytes
    }

    /// The largest free run if it has at least `pages` pages, or null: where a growing
    /// object has the most room to grow in place.
    fn find_largest(&self, pages: Pages) -> *mut Span {
        let mut best: *mut Span = null_mut();
        // SAFETY: the lock is held (`&self` inside the lock's guard).
        for run in unsafe { self.long_runs.iter() } {
            // SAFETY: live records on our list.
            let (r, b) = unsafe { (&*run, best.as_ref()) };
            if b.is_none_or(|b| r.pages() > b.pages()) {
                best = run;
            }
        }
        if best.is_null() && self.nonempty != 0 {
            best = self.by_length[128 - self.nonempty.leading_zeros() as usize].first();
        }
        // SAFETY: a live record, if non-null.
        match unsafe { best.as_ref() } {
            Some(b) if b.pages() >= pages => best,
            _ => null_mut(),
        }
    }

    /// The smallest listed run of at least `pages` pages, or null.
    fn find(&self, pages: Pages) -> *mut Span {
        if pages.0 <= LISTED_PAGES {
            let mask = self.nonempty & (u128::MAX << (pages.0 - 1));
            if mask != 0 {
                return self.by_length[mask.trailing_zeros() as usize + 1].first();
            }
        }
        let mut best: *mut Span = null_mut();
        // SAFETY: the lock is held (`&self` inside the lock's guard).
        for run in unsafe { self.long_runs.iter() } {
            // SAFETY: live records on our list.
            let (r, b) = unsafe { (&*run, best.as_ref()) };
            if r.pages() >= pages
                && b.is_none_or(|b| (r.pages(), r.start()) < (b.pages(), b.start()))
            {
                best = run;
            }
        }
        best
    }

    /// Maps more memory from the source, at least `pages` pages aligned to `align` pages,
    /// and adds it as a free run; returns that run (merged with free neighbours, so it may
    /// start earlier: it still holds `pages` aligned pages). When the source cannot map
    /// even that much (out of memory or address space), gives back the address space of
    /// the free runs ([`PageHeap::unmap_free_runs`]) and tries once more.
    fn grow(
        &mut self,
        pages: Pages,
        align: Pages,
        map: &PageMap,
        source: &impl PageSource,
    ) -> Option<NonNull<Span>> {
        let align_bytes = align.0.checked_mul(PAGE_SIZE)?.max(MAP_ALIGN);
        let need = pages
            .0
            .checked_mul(PAGE_SIZE)?
            .checked_next_multiple_of(MAP_ALIGN)?;
        // Hardened build: a request that fits in a span group maps the usual step in groups;
        // a longer one maps just enough for itself, with no group guards (they would cut the
        // run it needs), as mimalloc gives a huge object a segment of its own.
        #[cfg(feature = "hardened")]
        let grouped = pages.0 < GROUP_PAGES.0;
        #[cfg(not(feature = "hardened"))]
        let grouped = true;
        // The usual step first; when that fails (an address-space limit), just enough.
        let step = if grouped {
            need.max(self.next_grow)
        } else {
            need
        };
        if let Some(run) = self.map_run(step, align_bytes, grouped, map, source) {
            self.next_grow = self.next_grow.saturating_mul(2).min(self.grow_bytes);
            return Some(run);
        }
        if step > need {
            if let Some(run) = self.map_run(need, align_bytes, grouped, map, source) {
                return Some(run);
            }
        }
        if self.unmap_free_runs(map, source) == 0 {
            return None;
        }
        self.map_run(need, align_bytes, grouped, map, source)
    }

    /// Maps `bytes` (a multiple of [`MAP_ALIGN`]) aligned to `align` bytes and adds them as
    /// a free run. `None`, with nothing kept, when the source, the page map or the record
    /// allocator fails.
    fn map_run(
        &mut self,
        bytes: usize,
        align: usize,
        grouped: bool,
        map: &PageMap,
        source: &impl PageSource,
    ) -> Option<NonNull<Span>> {
        let ptr = source.map(bytes, align)?;
        let start = PageId::containing(ptr.as_ptr() as usize);
        let pages = Pages(bytes / PAGE_SIZE);
        let record = if map.ensure(start, pages, source) {
            self.records.alloc(source)
        } else {
            None
        };
        let Some(record) = record else {
            // Give the memory back rather than keep what the heap cannot describe (a source
            // that cannot unmap keeps it mapped and unused).
            // SAFETY: just mapped, never handed out.
            unsafe { source.unmap(ptr, bytes) };
            return None;
        };
        // SAFETY: a fresh record.
        unsafe { init_fresh_run(record, start, pages) };
        self.stats.mapped += bytes;
        self.stats.free += bytes;
        #[cfg(feature = "hardened")]
        if grouped {
            // SAFETY: a new free run on no list.
            unsafe { self.place_group_guards(record, map, source) };
        }
        #[cfg(not(feature = "hardened"))]
        let _ = grouped;
        // SAFETY: a new free run on no list.
        Some(unsafe { self.insert_merging(record, map) })
    }

    /// Gives the address space of every free run of at least [`UNMAP_MIN_BYTES`] back to
    /// the source (`munmap`), the large-span cache first merged into the runs. Returns the
    /// bytes unmapped. What is unmapped stops being counted in `mapped`; the page map keeps
    /// no entry that names a free run in it (its stale interior entries name records whose
    /// ranges exclude it, which every reader checks). Called when the source fails to map:
    /// freed memory is then address space that a limit (`RLIMIT_AS`, the commit limit) can
    /// give to the next mapping.
    pub fn unmap_free_runs(&mut self, map: &PageMap, source: &impl PageSource) -> usize {
        #[cfg(not(feature = "hardened"))]
        self.drain_cache(u64::MAX, map);
        #[cfg(feature = "hardened")]
        self.drain_cache(u64::MAX, map, source);
        let os_page = source.os_page_size().max(PAGE_SIZE);
        let min_pages = UNMAP_MIN_BYTES.div_ceil(PAGE_SIZE);
        let mut done = 0;
        for n in [0].into_iter().chain(min_pages..=LISTED_PAGES) {
            let mut at = if n == 0 {
                self.long_runs.first()
            } else {
                self.by_length[n].first()
            };
            while !at.is_null() {
                // SAFETY: a live record on our list; the lock is held (`&mut self`). The
                // next link is read before `unmap_run` takes `at` off the list (it lists
                // only leftovers shorter than an OS page, at list heads).
                let next = unsafe { (*at).next_on_list() };
                // SAFETY: as above.
                done += unsafe { self.unmap_run(at, os_page, map, source) };
                at = next;
            }
        }
        self.stats.unmapped_total += done;
        done
    }

    /// Unmaps the whole OS pages of free run `run`; the partial OS pages at its ends (only
    /// when OS pages are larger than ours) stay as free runs. Returns the bytes unmapped: 0,
    /// with nothing changed, if there are none, a record cannot be had or the source
    /// refuses.
    ///
    /// # Safety
    /// `run` is a free run on one of our free lists.
    unsafe fn unmap_run(
        &mut self,
        run: *mut Span,
        os_page: usize,
        map: &PageMap,
        source: &impl PageSource,
    ) -> usize {
        // SAFETY: per the caller.
        let r = unsafe { &*run };
        let (start, end) = (r.start_addr(), r.start_addr() + r.bytes());
        let begin = start.next_multiple_of(os_page);
        let stop = end - end % os_page;
        if stop <= begin {
            return 0;
        }
        let head = Pages((begin - start) / PAGE_SIZE);
        let tail = Pages((end - stop) / PAGE_SIZE);
        // The head keeps the run's record; the tail needs one of its own, had first so that
        // failure changes nothing.
        let tail_record = if tail.0 > 0 {
            match self.records.alloc(source) {
                Some(rec) => Some(rec),
                None => return 0,
            }
        } else {
            None
        };
        // SAFETY: the range is the whole OS pages of a free run of ours: nothing is live.
        if !unsafe { source.unmap(NonNull::new_unchecked(begin as *mut u8), stop - begin) } {
            if let Some(rec) = tail_record {
                // SAFETY: just allocated, unused.
                unsafe { self.records.free(rec) };
            }
            return 0;
        }
        // SAFETY: on its list, per the caller.
        unsafe { self.unlist(run) };
        // SAFETY: the lock is held.
        let (resident, zeroed, freed_at) =
            unsafe { (r.resident.get(), r.zeroed.get(), r.freed_at.get()) };
        // Resident pages go to the leftovers first (their counts stay upper bounds).
        let head_resident = resident.min(head.0);
        let tail_resident = (resident - head_resident).min(tail.0);
        let gone = stop - begin;
        self.stats.mapped -= gone;
        self.stats.free -= gone;
        self.stats.free_resident -= (resident - head_resident - tail_resident) * PAGE_SIZE;
        // No entry of the unmapped pages names a free run any more: the neighbours' merge
        // lookups there find nothing.
        map.set(PageId::containing(begin), null_mut());
        map.set(PageId::containing(stop - 1), null_mut());
        if head.0 > 0 {
            r.set_range(r.start(), head);
            // SAFETY: the lock is held.
            unsafe { r.resident.set(head_resident) };
            map.set_ends(r.start(), head, run);
            // SAFETY: a free run on no list; its left neighbour did not change and its
            // right one is the hole.
            unsafe { self.list(run) };
        } else {
            r.set_kind(SpanKind::Unused, SizeClass::LARGE);
            // SAFETY: off every list, and no page-map end names it any more.
            unsafe { self.records.free(NonNull::new_unchecked(run)) };
        }
        // Hardened build: a group guard just above an unmapped run guards nothing any more.
        #[cfg(feature = "hardened")]
        if tail.0 == 0 {
            self.unmap_group_guard(PageId::containing(stop), map, source);
        }
        if let Some(rec) = tail_record {
            let at = PageId::containing(stop);
            // SAFETY: a fresh record, listed at once below.
            unsafe {
                Span::init(rec.as_ptr(), at, tail, SpanKind::Free);
                let t = rec.as_ref();
                t.resident.set(tail_resident);
                t.zeroed.set(zeroed);
                t.freed_at.set(freed_at);
            }
            map.set_ends(at, tail, rec.as_ptr());
            // SAFETY: a free run on no list, next to the hole and an unchanged neighbour.
            unsafe { self.list(rec.as_ptr()) };
        }
        gone
    }

    /// Takes `pages` pages aligned to `align` out of free run `run` (which has room for
    /// them), returning the leftovers before and after to the free lists.
    fn carve(
        &mut self,
        run: *mut Span,
        pages: Pages,
        align: Pages,
        map: &PageMap,
        source: &impl PageSource,
    ) -> Option<NonNull<Span>> {
        // SAFETY: `run` is a live free run on our lists.
        let r = unsafe { &*run };
        let start = PageId(r.start().0.next_multiple_of(align.0));
        let before = start - r.start();
        let after = r.pages() - before - pages;
        // Get both leftover records first so that failure changes nothing.
        let rec_before = if before.0 > 0 {
            Some(self.records.alloc(source)?)
        } else {
            None
        };
        let rec_after = if after.0 > 0 {
            match self.records.alloc(source) {
                Some(rec) => Some(rec),
                None => {
                    if let Some(b) = rec_before {
                        // SAFETY: just allocated, unused.
                        unsafe { self.records.free(b) };
                    }
                    return None;
                }
            }
        } else {
            None
        };
        // SAFETY: `run` is on its list.
        unsafe { self.unlist(run) };
        // SAFETY: the lock is held.
        let (mut resident, zeroed, freed_at) =
            unsafe { (r.resident.get(), r.zeroed.get(), r.freed_at.get()) };
        // The span takes resident pages first (the free leftovers' count stays an upper
        // bound that sums to the whole).
        let span_resident = resident.min(pages.0);
        resident -= span_resident;
        self.stats.free -= pages.bytes();
        self.stats.free_resident -= span_resident * PAGE_SIZE;
        let mut leftover = |rec: Option<NonNull<Span>>, at: PageId, n: Pages| {
            if let Some(rec) = rec {
                let take = resident.min(n.0);
                resident -= take;
                // SAFETY: a fresh record, listed at once below.
                unsafe {
                    Span::init(rec.as_ptr(), at, n, SpanKind::Free);
                    let l = rec.as_ref();
                    l.resident.set(take);
                    l.zeroed.set(zeroed);
                    l.freed_at.set(freed_at);
                }
                map.set_ends(at, n, rec.as_ptr());
                // SAFETY: a free run on no list whose neighbours are in use (the span) or
                // were already not free (it was one run).
                unsafe { self.list(rec.as_ptr()) };
            }
        };
        leftover(rec_before, r.start(), before);
        leftover(rec_after, start + pages, after);
        r.set_range(start, pages);
        // SAFETY: the lock is held.
        unsafe { r.freed_at.set(0) };
        // SAFETY: `run` is non-null.
        Some(unsafe { NonNull::new_unchecked(run) })
    }

    /// The free run of ours on a free list (not in the large-span cache, whose spans are
    /// never merged) that starts at `page`, if any.
    fn free_run_starting_at(&self, map: &PageMap, page: PageId) -> Option<*mut Span> {
        let c = map.lookup(page.addr());
        // SAFETY: page-map entries are span records, which are never unmapped (a stale
        // entry reads a recycled record, which the checks below reject); the lock (held by
        // `&self`) guards `list`.
        let r = unsafe { c.as_ref()? };
        // SAFETY: as above.
        let listed = unsafe { r.list() } == ListId::PageHeapFree;
        (r.kind() == SpanKind::Free && listed && r.start() == page).then_some(c)
    }

    /// The free run of ours on a free list whose last page is just before `page`, if any.
    fn free_run_ending_at(&self, map: &PageMap, page: PageId) -> Option<*mut Span> {
        let c = map.lookup(page.addr().wrapping_sub(1));
        // SAFETY: as in `free_run_starting_at`.
        let r = unsafe { c.as_ref()? };
        // SAFETY: as above.
        let listed = unsafe { r.list() } == ListId::PageHeapFree;
        (r.kind() == SpanKind::Free && listed && r.end() == page).then_some(c)
    }

    /// Adds free run `span` to the lists, first merging it with free neighbours.
    ///
    /// # Safety
    /// `span` is a free run of ours on no list, with its counters already in `stats`.
    unsafe fn insert_merging(&mut self, span: NonNull<Span>, map: &PageMap) -> NonNull<Span> {
        // SAFETY: per the caller.
        let s = unsafe { span.as_ref() };
        if let Some(left) = self.free_run_ending_at(map, s.start()) {
            // SAFETY: a live record (read before `absorb` recycles it).
            let (left_start, left_pages) = unsafe { ((*left).start(), (*left).pages()) };
            // SAFETY: a free run of ours, on its list, adjacent to `s`.
            unsafe { self.absorb(s, left) };
            s.set_range(left_start, s.pages() + left_pages);
        }
        if let Some(right) = self.free_run_starting_at(map, s.end()) {
            // SAFETY: a live record (read before `absorb` recycles it).
            let right_pages = unsafe { (*right).pages() };
            // SAFETY: a free run of ours, on its list, adjacent to `s`.
            unsafe { self.absorb(s, right) };
            s.set_range(s.start(), s.pages() + right_pages);
        }
        map.set_ends(s.start(), s.pages(), span.as_ptr());
        // SAFETY: on no list.
        unsafe { self.list(span.as_ptr()) };
        span
    }

    /// Merges free neighbour `other`'s bookkeeping into `into` and frees its record. The
    /// caller then widens `into`'s range.
    ///
    /// # Safety
    /// `other` is a free run on our lists adjacent to `into`.
    unsafe fn absorb(&mut self, into: &Span, other: *mut Span) {
        // SAFETY: per the caller; the lock is held.
        unsafe {
            self.unlist(other);
            let o = &*other;
            // The merged run's age is that of the side holding more resident pages: a small
            // span freed next to a large idle run must not restart the run's decay (nor an
            // old sliver make a newly freed run look old).
            let (ri, ro) = (into.resident.get(), o.resident.get());
            let (ti, to) = (into.freed_at.get(), o.freed_at.get());
            into.freed_at.set(match ri.cmp(&ro) {
                core::cmp::Ordering::Greater => ti,
                core::cmp::Ordering::Less => to,
                core::cmp::Ordering::Equal => ti.max(to),
            });
            into.resident.set(ri + ro);
            into.zeroed.set(into.zeroed.get() && o.zeroed.get());
            o.set_kind(SpanKind::Unused, SizeClass::LARGE);
            self.records.free(NonNull::new_unchecked(other));
        }
    }

    /// Puts free run `span` on the list for its length.
    ///
    /// # Safety
    /// `span` is a free run on no list.
    unsafe fn list(&mut self, span: *mut Span) {
        // SAFETY: per the caller.
        let n = unsafe { (*span).pages().0 };
        if n <= LISTED_PAGES {
            // SAFETY: on no list; we hold the lock.
            unsafe { self.by_length[n].push(span) };
            self.nonempty |= 1 << (n - 1);
        } else {
            // SAFETY: as above.
            unsafe { self.long_runs.push(span) };
        }
    }

    /// Takes free run `span` off its list (a free list, or the large-span cache).
    ///
    /// # Safety
    /// `span` is on one of our free lists or in the cache.
    unsafe fn unlist(&mut self, span: *mut Span) {
        // SAFETY: per the caller.
        let n = unsafe { (*span).pages().0 };
        // SAFETY: per the caller; the lock is held.
        if unsafe { (*span).list() } == ListId::PageHeapCache {
            // SAFETY: in the cache list of its length.
            unsafe { self.cached[n].remove(span) };
            if self.cached[n].is_empty() {
                self.cached_mask &= !(1 << (n - 1));
            }
            self.cached_bytes -= n * PAGE_SIZE;
        } else if n <= LISTED_PAGES {
            // SAFETY: on this list; we hold the lock.
            unsafe { self.by_length[n].remove(span) };
            if self.by_length[n].is_empty() {
                self.nonempty &= !(1 << (n - 1));
            }
        } else {
            // SAFETY: as above.
            unsafe { self.long_runs.remove(span) };
        }
    }
}

#[cfg(feature = "hardened")]
impl PageHeap {
    /// Hardened build: makes the guard page of large (or cached) span `s`, its last page,
    /// inaccessible (`accessible == false`) or accessible again, and keeps `s.guarded` and
    /// the count of guards. Only where an OS page fits in a page (with larger OS pages the
    /// guard page is reserved but stays accessible) and while the budget allows (see the
    /// module docs). Making it inaccessible may fail (the kernel's mapping cap): the span
    /// then goes without a guard. Making it accessible again does not fail short of a broken
    /// kernel; if it does, the process stops, as the page would fault when reused.
    fn set_guard(&mut self, s: &Span, accessible: bool, source: &impl PageSource) {
        // SAFETY: the page heap lock is held (`&mut self`); it guards `guarded`.
        let guarded = unsafe { s.guarded.get() };
        if accessible != guarded {
            // Already as asked: a guard to make that is there, or one to open that is not.
            return;
        }
        if !accessible && !self.may_make_guard(source) {
            return;
        }
        let guard = PageId(s.end().0 - GUARD_PAGES.0);
        // SAFETY: the guard pages lie in the span, memory of the source's; nothing uses them
        // while they are inaccessible (the object's pages leave them out).
        let done = unsafe {
            source.protect(
                NonNull::new_unchecked(guard.ptr()),
                GUARD_PAGES.bytes(),
                accessible,
            )
        };
        if !done {
            if accessible {
                crate::check::fatal("a guard page could not be opened");
            }
            return;
        }
        // SAFETY: as above.
        unsafe { s.guarded.set(!accessible) };
        if accessible {
            self.guards -= 1;
        } else {
            self.guards += 1;
        }
    }

    /// Spans with a guard page now.
    pub fn guards(&self) -> usize {
        self.guards
    }

    /// Guard pages between span groups, mapped now.
    pub fn group_guards(&self) -> usize {
        self.group_guards
    }

    /// Whether one more guard page (a large span's or a group's) may be made: an OS page
    /// fits in a page, and the budget the two kinds share is not spent, where guards cost
    /// kernel mappings (`PageSource::guards_cost_mappings`; Linux's guard markers do not).
    fn may_make_guard(&self, source: &impl PageSource) -> bool {
        source.os_page_size() <= PAGE_SIZE
            && (self.guards + self.group_guards < self.guard_budget
                || !source.guards_cost_mappings())
    }

    /// Cuts fresh free run `first` (a new mapping, [`MAP_ALIGN`]-aligned) into span groups:
    /// the last page of each [`GROUP_PAGES`] becomes an inaccessible guard page with a
    /// record of its own (`SpanKind::Guard`, in the page map, so that no free run merges
    /// across it and a pointer into it is nobody's); `first` keeps the first group and the
    /// others are listed. Stops, leaving the rest as one run, when the guard budget is spent
    /// (with the large objects' guards), a record cannot be had, or the kernel refuses the
    /// `mprotect`; makes none where an OS page is larger than a page.
    ///
    /// # Safety
    /// `first` is a fresh free run on no list, counted in `stats`, starting a mapping.
    unsafe fn place_group_guards(
        &mut self,
        first: NonNull<Span>,
        map: &PageMap,
        source: &impl PageSource,
    ) {
        // SAFETY: per the caller.
        let end = unsafe { first.as_ref() }.end();
        let mut piece = first;
        // SAFETY: as above.
        let mut guard = PageId(unsafe { first.as_ref() }.start().0 + GROUP_PAGES.0 - 1);
        while guard < end && self.may_make_guard(source) {
            let Some(guard_record) = self.records.alloc(source) else {
                break;
            };
            let rest = PageId(guard.0 + 1);
            let rest_record = if rest < end {
                let Some(r) = self.records.alloc(source) else {
                    // SAFETY: just allocated, unused.
                    unsafe { self.records.free(guard_record) };
                    break;
                };
                Some(r)
            } else {
                None
            };
            // SAFETY: the page lies in the fresh mapping, and nothing will use it.
            let protected =
                unsafe { source.protect(NonNull::new_unchecked(guard.ptr()), PAGE_SIZE, false) };
            if !protected {
                // SAFETY: just allocated, unused.
                unsafe {
                    self.records.free(guard_record);
                    if let Some(r) = rest_record {
                        self.records.free(r);
                    }
                }
                break;
            }
            // SAFETY: `piece` is a fresh free run of ours on no list.
            let p = unsafe { piece.as_ref() };
            p.set_range(p.start(), Pages(guard.0 - p.start().0));
            // SAFETY: a fresh record.
            unsafe { Span::init(guard_record.as_ptr(), guard, Pages(1), SpanKind::Guard) };
            map.set(guard, guard_record.as_ptr());
            self.stats.mapped -= PAGE_SIZE;
            self.stats.free -= PAGE_SIZE;
            self.group_guards += 1;
            if piece != first {
                // SAFETY: a fresh free run on no list; guards on both sides.
                unsafe { self.insert_merging(piece, map) };
            }
            match rest_record {
                Some(r) => {
                    // SAFETY: a fresh record.
                    unsafe { init_fresh_run(r, rest, Pages(end.0 - rest.0)) };
                    piece = r;
                }
                None => return,
            }
            guard = PageId(guard.0 + GROUP_PAGES.0);
        }
        if piece != first {
            // SAFETY: as above.
            unsafe { self.insert_merging(piece, map) };
        }
    }

    /// Unmaps the group guard at `page`, if there is one (the run below it was just
    /// unmapped: it guards nothing any more).
    fn unmap_group_guard(&mut self, page: PageId, map: &PageMap, source: &impl PageSource) {
        let g = map.lookup(page.addr());
        // SAFETY: page-map entries point to span records, which are never unmapped; the
        // lock is held (`&mut self`).
        let Some(r) = (unsafe { g.as_ref() }) else {
            return;
        };
        if r.kind() != SpanKind::Guard || r.start() != page {
            return;
        }
        // SAFETY: a guard page of ours: nothing lives there.
        if !unsafe { source.unmap(NonNull::new_unchecked(page.ptr()), PAGE_SIZE) } {
            return;
        }
        map.set(page, null_mut());
        r.set_kind(SpanKind::Unused, SizeClass::LARGE);
        // SAFETY: no page-map entry names it any more.
        unsafe { self.records.free(NonNull::new_unchecked(g)) };
        self.group_guards -= 1;
        self.stats.unmapped_total += PAGE_SIZE;
    }
}

/// Makes `record` a free run of `pages` fresh pages from `start`: nothing resident, all zero.
///
/// # Safety
/// `record` is a record of ours that describes nothing.
unsafe fn init_fresh_run(record: NonNull<Span>, start: PageId, pages: Pages) {
    // SAFETY: per the caller; the page heap lock (held by our callers) guards the fields.
    unsafe {
        Span::init(record.as_ptr(), start, pages, SpanKind::Free);
        let r = record.as_ref();
        r.resident.set(0);
        r.zeroed.set(true);
        r.freed_at.set(0);
    }
}

/// Names the record of `span`, a span that has just become a large one in use, in its first
/// page's small-object word (`PageMap::name_large_record`). [`PageHeap::free`] clears it.
fn mark_large_in_use(map: &PageMap, span: NonNull<Span>) {
    // SAFETY: a live record of ours (the page heap lock is held by our callers).
    map.name_large_record(unsafe { span.as_ref() });
}

impl Default for PageHeap {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::page_map::large_word;
    use crate::span::GUARD_PAGES;
    use crate::sync::Ordering;
    use crate::sys::FakePages;
    use proptest::prelude::*;

    /// Pages of the guard that ends each span group of a mapping (the hardened build).
    const GROUP_GUARD: usize = if cfg!(feature = "hardened") { 1 } else { 0 };

    /// Bytes of the group guards `heap` has mapped now.
    fn group_guard_bytes(heap: &PageHeap) -> usize {
        #[cfg(feature = "hardened")]
        return heap.group_guards() * PAGE_SIZE;
        #[cfg(not(feature = "hardened"))]
        {
            let _ = heap;
            0
        }
    }

    /// Bytes the heap has mapped now for spans and group guards: whole mappings.
    fn mapped_with_guards(heap: &PageHeap) -> usize {
        heap.stats().mapped + group_guard_bytes(heap)
    }

    struct Fixture {
        heap: PageHeap,
        map: PageMap,
        source: FakePages,
    }

    impl Fixture {
        fn new() -> Fixture {
            Fixture {
                heap: PageHeap::with_grow_bytes(MAP_ALIGN),
                map: PageMap::new(),
                source: FakePages::new(),
            }
        }

        /// Frees `span` at time 1.
        ///
        /// # Safety
        /// As [`PageHeap::free`].
        unsafe fn free(&mut self, span: NonNull<Span>) -> bool {
            // SAFETY: per the caller.
            unsafe { self.free_at(span, 1) }
        }

        /// Frees `span` at time `now`.
        ///
        /// # Safety
        /// As [`PageHeap::free`].
        unsafe fn free_at(&mut self, span: NonNull<Span>, now: u64) -> bool {
            #[cfg(not(feature = "hardened"))]
            // SAFETY: per the caller.
            let cached = unsafe { self.heap.free(span, now, &self.map) };
            #[cfg(feature = "hardened")]
            // SAFETY: per the caller.
            let cached = unsafe { self.heap.free(span, now, &self.map, &self.source) };
            cached
        }

        /// Grows `span` in place to `pages` object pages.
        ///
        /// # Safety
        /// As [`PageHeap::grow_in_place`].
        unsafe fn grow_in_place(&mut self, span: NonNull<Span>, pages: Pages) -> bool {
            #[cfg(not(feature = "hardened"))]
            // SAFETY: per the caller.
            let grown = unsafe { self.heap.grow_in_place(span, pages, &self.map) };
            #[cfg(feature = "hardened")]
            // SAFETY: per the caller.
            let grown = unsafe {
                self.heap
                    .grow_in_place(span, pages, &self.map, &self.source)
            };
            grown
        }

        /// Checks the heap, and that every live span is mapped on every page it must be,
        /// and that no two live spans overlap.
        fn check(&self, live: &[(NonNull<Span>, SizeClass)]) {
            self.heap.check_invariants(&self.map);
            let mut ranges: Vec<(usize, usize)> = Vec::new();
            for &(span, class) in live {
                // SAFETY: live spans handed out by the fixture's heap.
                let s = unsafe { span.as_ref() };
                let pages: Vec<usize> = if class == SizeClass::LARGE {
                    vec![s.start().0, s.end().0 - 1]
                } else {
                    (s.start().0..s.end().0).collect()
                };
                for p in pages {
                    assert_eq!(self.map.lookup(PageId(p).addr()), span.as_ptr(), "page map");
                }
                if class == SizeClass::LARGE {
                    assert_eq!(s.kind(), SpanKind::Large, "a large span");
                    assert_eq!(
                        self.map.small_word_of(s.start_addr()),
                        large_word(span.as_ptr()),
                        "a large span's first page names its record"
                    );
                } else {
                    assert_eq!(
                        (s.kind(), s.class()),
                        (SpanKind::Small, class),
                        "a small span"
                    );
                }
                ranges.push((s.start().0, s.end().0));
            }
            ranges.sort();
            for w in ranges.windows(2) {
                assert!(w[0].1 <= w[1].0, "spans overlap: {w:?}");
            }
            let st = self.heap.stats();
            // Every byte the source mapped is metadata, a span or a free run, a group guard,
            // or was unmapped.
            assert_eq!(
                mapped_with_guards(&self.heap)
                    + st.unmapped_total
                    + st.metadata
                    + self.map.node_bytes(),
                self.source.mapped.load(Ordering::Relaxed),
                "mapped bytes accounted for"
            );
            assert_eq!(
                st.unmapped_total,
                self.source.unmapped.load(Ordering::Relaxed)
            );
            let live_bytes: usize = live
                .iter()
                // SAFETY: as above.
                .map(|(s, _)| unsafe { s.as_ref() }.bytes())
                .sum();
            let live_large: usize = live
                .iter()
                .filter(|(_, class)| *class == SizeClass::LARGE)
                // SAFETY: as above.
                .map(|(s, _)| unsafe { s.as_ref() }.bytes())
                .sum();
            assert_eq!(st.large_in_use, live_large, "large bytes in use");
            assert_eq!(st.small_spans, live_bytes - live_large, "small span bytes");
            assert!(
                st.peak_in_use >= live_bytes,
                "the peak holds what is in use now"
            );
            #[cfg(feature = "hardened")]
            self.check_guards(live);
        }

        /// Hardened build: the inaccessible OS pages are exactly the last page of every live
        /// large span and of every span in the large-span cache (of those the budget allowed
        /// a guard, when a test lowered it); none where an OS page is larger than a page (no
        /// guard can be made there). `Span::guarded` and the heap's count agree.
        #[cfg(feature = "hardened")]
        fn check_guards(&self, live: &[(NonNull<Span>, SizeClass)]) {
            let mut want: Vec<usize> = Vec::new();
            if self.source.os_page_size() > PAGE_SIZE {
                assert_eq!(self.source.protected_pages(), want, "no guards");
                assert_eq!(self.heap.guards(), 0);
                return;
            }
            let budget_lowered = self.heap.guard_budget < GUARD_BUDGET;
            let mut guarded = 0;
            let mut guard_of = |s: &Span| {
                // SAFETY: the fixture owns the heap; no lock guards it.
                if !unsafe { s.guarded.get() } {
                    assert!(budget_lowered, "a large span without a guard");
                    return;
                }
                guarded += 1;
                let at = s.end().addr() - PAGE_SIZE;
                want.extend((at..at + PAGE_SIZE).step_by(4096));
            };
            for &(span, class) in live {
                if class == SizeClass::LARGE {
                    // SAFETY: live spans handed out by the fixture's heap.
                    guard_of(unsafe { span.as_ref() });
                }
            }
            for list in &self.heap.cached {
                // SAFETY: the fixture owns the heap; no lock guards it.
                for span in unsafe { list.iter() } {
                    // SAFETY: live records in the cache.
                    guard_of(unsafe { &*span });
                }
            }
            // The other inaccessible pages are the group guards: each one page with a guard
            // record of its own in the page map, the last page of a span group.
            let mut group_guards = 0;
            for page in self.source.protected_pages() {
                if want.contains(&page) {
                    continue;
                }
                let g = self.map.lookup(page);
                // SAFETY: page-map entries point to live records.
                let r = unsafe { g.as_ref() }.expect("a group guard has a record");
                assert_eq!(r.kind(), SpanKind::Guard, "an inaccessible page is a guard");
                assert_eq!(r.pages(), Pages(1));
                assert_eq!(
                    (r.start().0 + 1) % GROUP_PAGES.0,
                    0,
                    "a group guard ends a span group"
                );
                if page == r.start_addr() {
                    group_guards += 1;
                    want.extend((page..page + PAGE_SIZE).step_by(4096));
                }
            }
            want.sort_unstable();
            assert_eq!(self.source.protected_pages(), want, "guard pages");
            assert_eq!(self.heap.guards(), guarded, "the count of guards");
            assert_eq!(
                self.heap.group_guards(),
                group_guards,
                "the count of group guards"
            );
            assert!(
                guarded + group_guards <= self.heap.guard_budget
                    || !self.source.guards_cost_mappings()
            );
        }
    }

    impl Fixture {
        /// Whether the first byte of any page of `span` holds the poison the fake source
        /// writes over what it unmaps (nothing else writes to spans in these tests: free
        /// runs read as zero, released ones too).
        fn holds_poison(&self, span: NonNull<Span>) -> bool {
            // SAFETY: a live span of the fixture's heap.
            let s = unsafe { span.as_ref() };
            (s.start().0..s.end().0)
                // SAFETY: pages of the span: memory the fake source mapped, never freed.
                .any(|p| unsafe { PageId(p).ptr().read() } == FakePages::POISON)
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        Alloc {
            pages: usize,
            align_shift: u32,
            small: bool,
        },
        Free(usize),
        Grow(usize, usize),
        Shrink(usize, usize),
        Release,
        Unmap,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (1usize..40, 0u32..4, any::<bool>())
                .prop_map(|(pages, align_shift, small)| Op::Alloc { pages, align_shift, small }),
            1 => (300usize..700).prop_map(|pages| Op::Alloc { pages, align_shift: 0, small: false }),
            4 => any::<usize>().prop_map(Op::Free),
            1 => (any::<usize>(), 1usize..50).prop_map(|(i, n)| Op::Grow(i, n)),
            1 => (any::<usize>(), 1usize..50).prop_map(|(i, n)| Op::Shrink(i, n)),
            1 => Just(Op::Release),
            1 => Just(Op::Unmap),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

        #[test]
        fn random_sequences_keep_the_heap_consistent(
            os_shift in 12u32..17,
            ops in proptest::collection::vec(op(), 1..120),
        ) {
            let mut f = Fixture::new();
            // OS pages of 4 to 64 KiB: releasing and unmapping take whole OS pages only.
            f.source.set_os_page_size(1 << os_shift);
            let mut live: Vec<(NonNull<Span>, SizeClass)> = Vec::new();
            let small_class = crate::size_class::class_of(1000).unwrap();
            for op in ops {
                match op {
                    Op::Alloc { pages, align_shift, small } => {
                        let class = if small { small_class } else { SizeClass::LARGE };
                        let pages = if small { class.pages() } else { Pages(pages) };
                        let align = Pages(1 << align_shift);
                        let (span, _) =
                            f.heap.alloc(pages, align, class, &f.map, &f.source).unwrap();
                        // SAFETY: just handed out.
                        let s = unsafe { span.as_ref() };
                        prop_assert_eq!(if small { s.pages() } else { s.object_pages() }, pages);
                        prop_assert_eq!(s.start().0 % align.0, 0);
                        prop_assert!(!f.holds_poison(span), "a span in unmapped memory");
                        live.push((span, class));
                    }
                    Op::Free(i) if !live.is_empty() => {
                        let (span, _) = live.swap_remove(i % live.len());
                        // SAFETY: a live span of this heap, freed once.
                        unsafe { f.free(span) };
                    }
                    Op::Grow(i, n) if !live.is_empty() => {
                        let (span, class) = live[i % live.len()];
                        if class == SizeClass::LARGE {
                            // SAFETY: a live large span.
                            let have = unsafe { span.as_ref() }.object_pages();
                            // SAFETY: as above.
                            let grown = unsafe { f.grow_in_place(span, have + Pages(n)) };
                            // SAFETY: as above.
                            let now = unsafe { span.as_ref() }.object_pages();
                            prop_assert_eq!(now, if grown { have + Pages(n) } else { have });
                        }
                    }
                    Op::Shrink(i, n) if !live.is_empty() => {
                        let (span, class) = live[i % live.len()];
                        // SAFETY: a live span.
                        let have = unsafe { span.as_ref() }.object_pages();
                        if class == SizeClass::LARGE && have.0 > n {
                            // SAFETY: a live large span; its tail holds nothing live.
                            let shrunk = unsafe { f.heap.shrink(span, Pages(have.0 - n), 1, &f.map, &f.source) };
                            prop_assert!(shrunk);
                        }
                    }
                    Op::Release => {
                        f.heap.release(u64::MAX, usize::MAX, &f.map, &f.source);
                        prop_assert_eq!(f.heap.stats().free_resident, 0);
                    }
                    Op::Unmap => {
                        let before = f.heap.stats();
                        let gone = f.heap.unmap_free_runs(&f.map, &f.source);
                        let after = f.heap.stats();
                        prop_assert_eq!(after.mapped, before.mapped - gone);
                        prop_assert_eq!(after.free, before.free - gone);
                        prop_assert_eq!(gone % f.source.os_page_size(), 0);
                    }
                    _ => {}
                }
                f.check(&live);
            }
            for (span, _) in live.drain(..) {
                // SAFETY: live spans, freed once.
                unsafe { f.free(span) };
            }
            f.check(&live);
            let st = f.heap.stats();
            prop_assert_eq!(st.free, st.mapped, "everything is free again");
            let listed = f.heap.by_length.iter().chain(f.heap.cached.iter()).map(SpanList::len).sum::<usize>();
            let guards = group_guard_bytes(&f.heap) / PAGE_SIZE;
            prop_assert_eq!(f.heap.records_in_use(), listed + f.heap.long_runs.len() + guards, "no record leaks");
        }
    }

    #[test]
    fn failing_source_gives_none_and_leaks_nothing() {
        let mut f = Fixture::new();
        let class = SizeClass::LARGE;
        let (a, _) = f
            .heap
            .alloc(Pages(10), Pages(1), class, &f.map, &f.source)
            .unwrap();
        let before = f.heap.stats();
        let records = f.heap.records_in_use();
        let guards_before = group_guard_bytes(&f.heap);
        f.source.fail_after(0);
        // Larger than anything free: the heap must grow, and cannot.
        assert!(
            f.heap
                .alloc(Pages(1000), Pages(1), class, &f.map, &f.source)
                .is_none()
        );
        assert!(
            f.heap
                .alloc(Pages(10), Pages(1 << 12), class, &f.map, &f.source)
                .is_none()
        );
        // Before failing, the heap gave back the address space of its free run (the rest
        // of the first mapping, which is longer than UNMAP_MIN_BYTES), with the group guard
        // after it in the hardened build, and nothing else.
        let after = f.heap.stats();
        let guards_gone = guards_before - group_guard_bytes(&f.heap);
        assert_eq!(
            guards_gone,
            GROUP_GUARD * PAGE_SIZE,
            "the run's guard went with it"
        );
        assert_eq!(
            after.unmapped_total,
            before.free + guards_gone,
            "the free run was unmapped"
        );
        assert_eq!(
            f.source.unmapped.load(Ordering::Relaxed),
            before.free + guards_gone
        );
        assert_eq!(
            after,
            PageHeapStats {
                mapped: before.mapped - before.free,
                free: 0,
                unmapped_total: before.free + guards_gone,
                ..before
            },
            "a failed allocation changes nothing else"
        );
        assert_eq!(
            f.heap.records_in_use(),
            records - 1 - GROUP_GUARD,
            "its record (and its guard's) went back"
        );
        f.check(&[(a, class)]);
        f.source.heal();
        let (b, _) = f
            .heap
            .alloc(Pages(1000), Pages(1), class, &f.map, &f.source)
            .unwrap();
        f.check(&[(a, class), (b, class)]);
        // SAFETY: live spans, freed once.
        unsafe {
            f.free(a);
            f.free(b);
        }
        f.check(&[]);
        assert_eq!(f.heap.stats().free, f.heap.stats().mapped);
    }

    #[test]
    fn neighbours_coalesce_into_one_run() {
        let mut f = Fixture::new();
        let spans: Vec<_> = (0..5)
            .map(|_| {
                f.heap
                    .alloc(Pages(3), Pages(1), SizeClass::LARGE, &f.map, &f.source)
                    .unwrap()
                    .0
            })
            .collect();
        // Free in an order that merges left, right and both.
        for i in [1, 3, 2, 0, 4] {
            // SAFETY: live spans, freed once.
            unsafe { f.free(spans[i]) };
            f.heap.check_invariants(&f.map);
        }
        let runs: usize =
            f.heap.by_length.iter().map(SpanList::len).sum::<usize>() + f.heap.long_runs.len();
        assert_eq!(runs, 1, "one mapping, all free: a single run");
    }

    const MIB: usize = 1 << 20;

    fn alloc_large(f: &mut Fixture, pages: usize) -> Option<NonNull<Span>> {
        f.heap
            .alloc(Pages(pages), Pages(1), SizeClass::LARGE, &f.map, &f.source)
            .map(|(span, _)| span)
    }

    fn free(f: &mut Fixture, span: NonNull<Span>) {
        // SAFETY: a live span of the fixture's heap, freed once by the callers.
        unsafe { f.free(span) };
    }

    #[test]
    fn a_long_request_takes_the_shortest_long_run_that_fits() {
        let mut f = Fixture::new();
        // Free runs of 300, 200 and 250 pages (past the length lists), each kept apart from
        // the next by a live one-page span.
        let mut runs = Vec::new();
        let mut keep = Vec::new();
        for pages in [300, 200, 250] {
            runs.push(alloc_large(&mut f, pages).unwrap());
            keep.push(alloc_large(&mut f, 1).unwrap());
        }
        let starts: Vec<PageId> = runs.iter().map(|&s| range_of(s).0).collect();
        for &s in &runs {
            free(&mut f, s);
        }
        f.heap.check_invariants(&f.map);
        let start_of = |s: NonNull<Span>| range_of(s).0;
        let b = alloc_large(&mut f, 150).unwrap();
        assert_eq!(start_of(b), starts[1], "150 pages from the 200-page run");
        let c = alloc_large(&mut f, 220).unwrap();
        assert_eq!(start_of(c), starts[2], "220 pages from the 250-page run");
        for s in [b, c].into_iter().chain(keep) {
            free(&mut f, s);
        }
        f.heap.check_invariants(&f.map);
    }

    #[test]
    fn the_peak_is_the_most_span_bytes_in_use_at_once() {
        let mut f = Fixture::new();
        // The bytes in spans in use now, and the most seen so far (the hardened build's
        // large spans carry a guard page: measured, not assumed).
        let mut most = 0;
        let mut step = |f: &Fixture, what: &str| {
            let st = f.heap.stats();
            most = most.max(st.large_in_use + st.small_spans);
            assert_eq!(st.peak_in_use, most, "{what}");
            most
        };
        // Out of a free run: 4 pages, then, that one freed, 8.
        let a = alloc_large(&mut f, 4).unwrap();
        let four = step(&f, "4 pages");
        free(&mut f, a);
        let b = alloc_large(&mut f, 8).unwrap();
        assert!(step(&f, "a free lowers no peak") > four);
        // Out of the large-span cache (the 4 pages freed above): both in use.
        let c = alloc_large(&mut f, 4).unwrap();
        let both = step(&f, "8 and 4 pages");
        assert!(both >= 12 * PAGE_SIZE);
        // Grown in place (into the free run after it): 8 pages more.
        // SAFETY: a live span of the fixture's heap.
        assert!(unsafe { f.grow_in_place(b, Pages(16)) });
        assert_eq!(step(&f, "grown in place"), both + 8 * PAGE_SIZE);
        free(&mut f, b);
        free(&mut f, c);
        let small = f
            .heap
            .alloc(Pages(2), Pages(1), SizeClass(1), &f.map, &f.source)
            .unwrap()
            .0;
        assert_eq!(step(&f, "a small span"), both + 8 * PAGE_SIZE);
        assert_eq!(f.heap.stats().small_spans, 2 * PAGE_SIZE);
        f.check(&[(small, SizeClass(1))]);
    }

    #[test]
    fn a_full_source_gets_the_address_space_of_free_runs_back() {
        // As under RLIMIT_AS: 12 MiB allocated and freed, then 16 MiB under a limit that
        // leaves room for 16 but not for 12 + 16.
        let mut f = Fixture::new();
        let a = alloc_large(&mut f, 12 * MIB / PAGE_SIZE).unwrap();
        free(&mut f, a);
        // The slack: the rest of the 16, and a page-map leaf should the new mapping land in
        // another GiB.
        f.source
            .limit_address_space(f.source.address_space() + 4 * MIB + 2 * MIB);
        let b = alloc_large(&mut f, 16 * MIB / PAGE_SIZE).expect("16 MiB after freeing 12");
        let st = f.heap.stats();
        assert!(st.unmapped_total >= 12 * MIB, "{st:?}");
        f.check(&[(b, SizeClass::LARGE)]);
        assert!(!f.holds_poison(b));
        free(&mut f, b);
        f.check(&[]);
        // Out of room altogether: null, and nothing lost.
        f.source.limit_address_space(f.source.address_space());
        assert!(alloc_large(&mut f, 32 * MIB / PAGE_SIZE).is_none());
        f.check(&[]);
        f.source.heal();
        let c = alloc_large(&mut f, 32 * MIB / PAGE_SIZE).unwrap();
        f.check(&[(c, SizeClass::LARGE)]);
    }

    #[test]
    fn unmapping_keeps_neighbours_and_the_page_map_consistent() {
        for os_page in [4096, 16 << 10, 64 << 10] {
            let mut f = Fixture::new();
            f.source.set_os_page_size(os_page);
            // live | free 128 pages | live | free 300 pages | live: a run on the list of the
            // longest listed length and a long run, starting and ending off the OS-page grid
            // (one-page spacers), so that with large OS pages their ends stay as short runs.
            let s0 = alloc_large(&mut f, 1).unwrap();
            let a = alloc_large(&mut f, LISTED_PAGES).unwrap();
            let s1 = alloc_large(&mut f, 1).unwrap();
            let b = alloc_large(&mut f, 300).unwrap();
            let s2 = alloc_large(&mut f, 3).unwrap();
            free(&mut f, a);
            free(&mut f, b);
            let live = [s0, s1, s2].map(|s| (s, SizeClass::LARGE));
            f.check(&live);
            let before = f.heap.stats();
            let gone = f.heap.unmap_free_runs(&f.map, &f.source);
            assert!(
                gone >= (LISTED_PAGES + 300) * PAGE_SIZE - 4 * os_page && gone % os_page == 0,
                "os page {os_page}: unmapped {gone}"
            );
            assert!(gone <= before.free);
            // No run of UNMAP_MIN_BYTES or more is left (only the short leftovers at the ends
            // of runs, when OS pages are larger than ours).
            assert!(f.heap.long_runs.is_empty() && f.heap.by_length[LISTED_PAGES].is_empty());
            f.check(&live);
            // The spacers' neighbours are holes or short leftovers: freeing them merges
            // with the leftovers only, never across a hole.
            for i in 0..live.len() {
                free(&mut f, live[i].0);
                f.check(&live[i + 1..]);
            }
            let st = f.heap.stats();
            assert_eq!(st.free, st.mapped, "os page {os_page}: everything free");
            assert_eq!(st.mapped, before.mapped - gone);
            // And the heap serves again, from what is left and from new mappings.
            let spans: Vec<_> = [1, 7, 200, 300, 600]
                .iter()
                .map(|&n| (alloc_large(&mut f, n).unwrap(), SizeClass::LARGE))
                .collect();
            f.check(&spans);
            for &(s, _) in &spans {
                assert!(
                    !f.holds_poison(s),
                    "os page {os_page}: a span in unmapped memory"
                );
            }
        }
    }

    #[test]
    fn a_large_alignment_maps_only_the_size() {
        // 64 MiB alignment for one page: one 2 MiB mapping placed on the boundary, not 64 MiB
        // of padding kept as free runs.
        let mut f = Fixture::new();
        let align = Pages(64 * MIB / PAGE_SIZE);
        let (span, zeroed) = f
            .heap
            .alloc(Pages(1), align, SizeClass::LARGE, &f.map, &f.source)
            .unwrap();
        // SAFETY: just handed out.
        assert_eq!(unsafe { span.as_ref() }.start().0 % align.0, 0);
        assert!(zeroed);
        assert_eq!(mapped_with_guards(&f.heap), MAP_ALIGN);
        f.check(&[(span, SizeClass::LARGE)]);
    }

    #[test]
    fn a_new_heap_maps_little_at_first_and_doubles_its_step() {
        let mut f = Fixture::new();
        f.heap = PageHeap::new();
        let mut steps = Vec::new();
        let mut live = Vec::new();
        // Spans of a span group each: MAP_ALIGN bytes, less the group's guard page and the
        // object's in the hardened build.
        while steps.len() < 7 {
            let before = mapped_with_guards(&f.heap);
            live.push((
                alloc_large(&mut f, MAP_ALIGN / PAGE_SIZE - GUARD_PAGES.0 - GROUP_GUARD).unwrap(),
                SizeClass::LARGE,
            ));
            let grown = mapped_with_guards(&f.heap) - before;
            if grown > 0 {
                steps.push(grown / MIB);
            }
        }
        assert_eq!(
            steps,
            [2, 4, 8, 16, 32, 32, 32],
            "MiB mapped at each growth"
        );
        f.check(&live);
        // A request larger than the step maps just what it needs (rounded to MAP_ALIGN), in
        // the hardened build with no group guards.
        let before = mapped_with_guards(&f.heap);
        let big = alloc_large(&mut f, (40 * MIB + 1) / PAGE_SIZE + 1 - GUARD_PAGES.0).unwrap();
        assert_eq!(mapped_with_guards(&f.heap) - before, 42 * MIB);
        live.push((big, SizeClass::LARGE));
        f.check(&live);
    }

    /// Hardened build: a mapping is cut into span groups, each ending with a guard page
    /// that no span covers and no free run merges across; a request longer than a group
    /// maps a mapping of its own, with no group guards.
    #[cfg(feature = "hardened")]
    #[test]
    fn a_mapping_is_cut_into_span_groups_by_guard_pages() {
        let mut f = Fixture::new();
        f.heap = PageHeap::with_grow_bytes(8 * MIB);
        let class = crate::size_class::class_of(1000).unwrap();
        let mut live = Vec::new();
        // Small spans until the 8 MiB mapping is full: never across a group's end.
        loop {
            let (span, _) = f
                .heap
                .alloc(class.pages(), Pages(1), class, &f.map, &f.source)
                .unwrap();
            if mapped_with_guards(&f.heap) > 8 * MIB {
                live.push((span, class));
                break;
            }
            live.push((span, class));
        }
        assert_eq!(
            f.heap.group_guards(),
            8,
            "four groups in each of two mappings"
        );
        for &(span, _) in &live {
            // SAFETY: live spans of the fixture's heap.
            let s = unsafe { span.as_ref() };
            let last_of_group = s.start().0 | (GROUP_PAGES.0 - 1);
            assert!(
                s.end().0 <= last_of_group,
                "a span ends before its group's guard"
            );
        }
        f.check(&live);
        // Each group holds as many spans as fit in all but its last page.
        let per_group = (GROUP_PAGES.0 - 1) / class.pages().0;
        assert_eq!(live.len(), 4 * per_group + 1);
        // A request longer than a group: a mapping of its own, no group guard in it.
        let before = f.heap.group_guards();
        let big = alloc_large(&mut f, GROUP_PAGES.0).unwrap();
        assert_eq!(f.heap.group_guards(), before);
        // SAFETY: live.
        assert_eq!(unsafe { big.as_ref() }.pages(), GROUP_PAGES + GUARD_PAGES);
        live.push((big, SizeClass::LARGE));
        f.check(&live);
    }

    /// Hardened build: unmapping the free run below a group guard unmaps the guard too;
    /// a guard whose group still ends with a live span stays.
    #[cfg(feature = "hardened")]
    #[test]
    fn an_unmapped_group_takes_its_guard_with_it() {
        let mut f = Fixture::new();
        f.heap = PageHeap::with_grow_bytes(8 * MIB);
        let group = GROUP_PAGES.0 - GUARD_PAGES.0 - 1;
        // Four groups: the second filled by one span, the others free.
        let a = alloc_large(&mut f, 1).unwrap();
        let b = alloc_large(&mut f, group).unwrap();
        free(&mut f, a);
        // SAFETY: live.
        let b_end = unsafe { b.as_ref() }.end();
        assert_eq!((b_end.0 + 1) % GROUP_PAGES.0, 0, "b fills its group");
        assert_eq!(f.heap.group_guards(), 4);
        f.check(&[(b, SizeClass::LARGE)]);
        f.heap.unmap_free_runs(&f.map, &f.source);
        assert_eq!(f.heap.group_guards(), 1, "only b's group keeps its guard");
        let guard = f.map.lookup(b_end.addr());
        // SAFETY: a live record.
        assert_eq!(unsafe { (*guard).kind() }, SpanKind::Guard);
        f.check(&[(b, SizeClass::LARGE)]);
        free(&mut f, b);
        f.heap.unmap_free_runs(&f.map, &f.source);
        assert_eq!(f.heap.group_guards(), 0);
        assert_eq!(f.heap.stats().mapped, 0);
        assert!(f.map.lookup(b_end.addr()).is_null());
        f.check(&[]);
    }

    /// Hardened build: group guards count against the guard budget, and a mapping made
    /// while it is spent keeps its remaining groups as one run.
    #[cfg(feature = "hardened")]
    #[test]
    fn group_guards_stop_at_the_budget() {
        let mut f = Fixture::new();
        f.heap = PageHeap::with_grow_bytes(8 * MIB);
        f.heap.guard_budget = 2;
        let a = alloc_large(&mut f, 1).unwrap();
        assert_eq!(f.heap.group_guards(), 2);
        // SAFETY: a live record; the fixture owns the heap, no lock guards it.
        let guarded = unsafe { a.as_ref().guarded.get() };
        assert!(!guarded, "none left for the object");
        // Two groups of GROUP_PAGES - 1 pages, then the last two groups as one run.
        assert!(!f.heap.find(Pages(2 * GROUP_PAGES.0)).is_null());
        f.check(&[(a, SizeClass::LARGE)]);
    }

    /// Hardened build: where guards cost no kernel mapping (Linux's guard markers), every
    /// large span has one, the budget spent or not.
    #[cfg(feature = "hardened")]
    #[test]
    fn guards_pass_the_budget_where_they_cost_no_mapping() {
        let mut f = Fixture::new();
        f.source.set_guard_markers(true);
        f.heap.guard_budget = 2;
        let spans: Vec<NonNull<Span>> = (1..=4).map(|n| alloc_large(&mut f, n).unwrap()).collect();
        // SAFETY: live records of the fixture's heap.
        assert!(spans.iter().all(|s| unsafe { s.as_ref().guarded.get() }));
        assert!(f.heap.guards() + f.heap.group_guards() > 2);
        let live: Vec<_> = spans.iter().map(|&s| (s, SizeClass::LARGE)).collect();
        f.check(&live);
        for s in spans {
            free(&mut f, s);
        }
        f.heap.release(u64::MAX, usize::MAX, &f.map, &f.source);
        assert_eq!(f.heap.guards(), 0);
        f.check(&[]);
    }

    /// Hardened build: no more guards than the budget; a span made while it is spent goes
    /// without one, and a guard given back makes room for the next span's.
    #[cfg(feature = "hardened")]
    #[test]
    fn guards_stay_within_their_budget() {
        let mut f = Fixture::new();
        // The first mapping's group guard first, then room for two more.
        let first = alloc_large(&mut f, 1).unwrap();
        assert_eq!(f.heap.group_guards(), 1);
        free(&mut f, first);
        // Out of the large-span cache, with its guard opened.
        f.heap.release(u64::MAX, usize::MAX, &f.map, &f.source);
        assert_eq!(f.heap.guards(), 0);
        f.heap.guard_budget = 3;
        let a = alloc_large(&mut f, 3).unwrap();
        let b = alloc_large(&mut f, 4).unwrap();
        let c = alloc_large(&mut f, 5).unwrap();
        assert_eq!(f.heap.guards(), 2);
        // SAFETY: a live record of the fixture's heap.
        assert!(!unsafe { c.as_ref().guarded.get() }, "over the budget");
        let large =
            |v: &[NonNull<Span>]| v.iter().map(|&s| (s, SizeClass::LARGE)).collect::<Vec<_>>();
        f.check(&large(&[a, b, c]));
        // Shrinking the unguarded span: neither it nor its tail has a guard.
        // SAFETY: a live large span of ours, nothing live past 2 pages.
        assert!(unsafe { f.heap.shrink(c, Pages(2), 1, &f.map, &f.source) });
        f.check(&large(&[a, b, c]));
        // b goes to the large-span cache with its guard; merged back, it opens it.
        free(&mut f, b);
        f.check(&large(&[a, c]));
        f.heap.release(u64::MAX, usize::MAX, &f.map, &f.source);
        assert_eq!(f.heap.guards(), 1);
        f.check(&large(&[a, c]));
        let d = alloc_large(&mut f, 6).unwrap();
        // SAFETY: as above.
        assert!(unsafe { d.as_ref().guarded.get() }, "room again");
        f.check(&large(&[a, c, d]));
        for s in [a, c, d] {
            free(&mut f, s);
        }
        f.heap.release(u64::MAX, usize::MAX, &f.map, &f.source);
        assert_eq!(f.heap.guards(), 0);
        f.check(&[]);
    }

    /// Large spans of `lengths` pages, each followed by a live one-page span, and the rest
    /// of the mapping taken by one more live span (after each, when `own_mapping`, so that
    /// each is in a mapping of its own): no free page left. Returns the spans of `lengths`
    /// (to be freed into runs) and the live ones.
    fn runs_between_live_spans(
        f: &mut Fixture,
        lengths: &[usize],
        own_mapping: bool,
    ) -> (Vec<NonNull<Span>>, Vec<NonNull<Span>>) {
        let mut runs = Vec::new();
        let mut live = Vec::new();
        for (i, &n) in lengths.iter().enumerate() {
            runs.push(alloc_large(f, n).unwrap());
            live.push(alloc_large(f, 1).unwrap());
            if own_mapping || i + 1 == lengths.len() {
                let rest = f.heap.stats().free / PAGE_SIZE;
                live.push(alloc_large(f, rest - GUARD_PAGES.0).unwrap());
                assert_eq!(f.heap.stats().free, 0);
            }
        }
        (runs, live)
    }

    /// A growing object, when no free run has the room it asks for, takes the largest run
    /// there is (among the length lists too), and none shorter than it needs.
    #[test]
    fn a_growing_object_takes_the_largest_run_when_none_has_its_room() {
        let mut f = Fixture::new();
        // Runs of 10, 40 and 20 pages in one mapping: no run of GROW_ROOM_MIN pages.
        let (runs, mut live) = runs_between_live_spans(&mut f, &[10, 40, 20], false);
        let starts: Vec<PageId> = runs.iter().map(|&r| range_of(r).0).collect();
        for r in runs {
            free(&mut f, r);
        }
        let (grown, _) = f
            .heap
            .alloc_to_grow(Pages(5), Pages(1), &f.map, &f.source)
            .unwrap();
        assert_eq!(range_of(grown).0, starts[1], "the 40-page run");
        live.push(grown);
        // Longer than any run: the heap grows instead.
        let mapped = mapped_with_guards(&f.heap);
        let (far, _) = f
            .heap
            .alloc_to_grow(Pages(36), Pages(1), &f.map, &f.source)
            .unwrap();
        assert!(mapped_with_guards(&f.heap) > mapped);
        assert!(!starts.contains(&range_of(far).0));
        live.push(far);
        let live: Vec<_> = live.into_iter().map(|s| (s, SizeClass::LARGE)).collect();
        f.check(&live);
    }

    /// The same among long runs (longer than the cache takes), whatever their order on
    /// their list: each in a mapping of its own, the rest of which is in use.
    #[test]
    fn a_growing_object_takes_the_largest_long_run_when_none_has_its_room() {
        let mut f = Fixture::new();
        let (runs, mut live) = runs_between_live_spans(&mut f, &[130, 150, 140], true);
        let longest = range_of(runs[1]).0;
        for r in runs {
            // SAFETY: live spans, freed once: too long for the cache.
            assert!(!unsafe { f.free(r) });
        }
        // Room asked: 32 times the request, more than any run has.
        let (grown, _) = f
            .heap
            .alloc_to_grow(Pages(6), Pages(1), &f.map, &f.source)
            .unwrap();
        assert_eq!(range_of(grown).0, longest, "the 150-page run");
        live.push(grown);
        let live: Vec<_> = live.into_iter().map(|s| (s, SizeClass::LARGE)).collect();
        f.check(&live);
    }

    /// The large-span cache gives back to the free runs the spans freed early enough,
    /// whatever their length: here the shorter length's span was freed last, so the search
    /// must go on to the next length.
    #[test]
    fn the_cache_drains_the_spans_freed_early_enough_of_every_length() {
        let mut f = Fixture::new();
        let long = alloc_large(&mut f, 5).unwrap();
        let s1 = alloc_large(&mut f, 1).unwrap();
        let short = alloc_large(&mut f, 3).unwrap();
        let s2 = alloc_large(&mut f, 1).unwrap();
        let short_bytes = range_of(short).1.bytes();
        // SAFETY: live spans, freed once.
        unsafe {
            assert!(f.free_at(long, 1));
            assert!(f.free_at(short, 10));
        }
        f.heap.release(5, usize::MAX, &f.map, &f.source);
        assert_eq!(f.heap.cached_bytes(), short_bytes, "the short one stays");
        f.check(&[(s1, SizeClass::LARGE), (s2, SizeClass::LARGE)]);
    }

    /// The start and length of a live span.
    fn range_of(span: NonNull<Span>) -> (PageId, Pages) {
        // SAFETY: a live span of a fixture's heap.
        let s = unsafe { span.as_ref() };
        (s.start(), s.pages())
    }

    /// `release` gives back the whole OS pages of each run with resident pages, and only
    /// once; a run given back whole reads as zero when it is reused, one with a partial OS
    /// page at an end does not.
    #[test]
    fn release_gives_back_whole_os_pages_once_and_knows_what_is_zero() {
        let released = |f: &Fixture| f.source.released.load(Ordering::Relaxed);
        // OS pages no larger than ours: the run of `a`, between the mapping's start and a
        // live span, goes back whole.
        let mut f = Fixture::new();
        let a = alloc_large(&mut f, 20).unwrap();
        let keep = alloc_large(&mut f, 1).unwrap();
        let (start, pages) = range_of(a);
        free(&mut f, a);
        let given = f.heap.release(u64::MAX, usize::MAX, &f.map, &f.source);
        assert_eq!(given, pages.bytes());
        assert_eq!(released(&f), pages.bytes());
        assert_eq!(f.heap.stats().free_resident, 0);
        // Nothing is resident any more: a second release makes no call.
        assert_eq!(f.heap.release(u64::MAX, usize::MAX, &f.map, &f.source), 0);
        assert_eq!(released(&f), pages.bytes());
        let (b, zeroed) = f
            .heap
            .alloc(Pages(20), Pages(1), SizeClass::LARGE, &f.map, &f.source)
            .unwrap();
        assert_eq!(range_of(b), (start, pages));
        assert!(zeroed, "a run given back whole is zero");
        f.check(&[(b, SizeClass::LARGE), (keep, SizeClass::LARGE)]);

        // 64 KiB OS pages: the same run (at the mapping's start, which is aligned) ends in
        // the middle of one; only the whole ones before it go back, and the run is not all
        // zero.
        let os_page = 64 << 10;
        let mut f = Fixture::new();
        f.source.set_os_page_size(os_page);
        let a = alloc_large(&mut f, 20).unwrap();
        let keep = alloc_large(&mut f, 1).unwrap();
        let (start, pages) = range_of(a);
        assert_eq!(start.addr() % os_page, 0);
        assert_ne!(pages.bytes() % os_page, 0);
        free(&mut f, a);
        let whole = pages.bytes() - pages.bytes() % os_page;
        let given = f.heap.release(u64::MAX, usize::MAX, &f.map, &f.source);
        assert_eq!(given, whole);
        assert_eq!(released(&f), whole);
        let (b, zeroed) = f
            .heap
            .alloc(Pages(20), Pages(1), SizeClass::LARGE, &f.map, &f.source)
            .unwrap();
        assert_eq!(range_of(b), (start, pages));
        assert!(!zeroed, "its last OS page was not given back");
        f.check(&[(b, SizeClass::LARGE), (keep, SizeClass::LARGE)]);
    }

    /// The invariant check, which every test here leans on, sees two free neighbours left
    /// unmerged, and does not take a stale page-map entry naming a free run elsewhere for
    /// a neighbour.
    #[test]
    fn the_invariant_check_sees_unmerged_neighbours_and_not_stale_entries() {
        let mut f = Fixture::new();
        // x (a free run on the lists: longer than the cache takes) | s live | r free.
        let x = alloc_large(&mut f, CACHED_PAGES + 2).unwrap();
        let s = alloc_large(&mut f, 1).unwrap();
        let (x_start, _) = range_of(x);
        free(&mut f, x);
        let (_, s_pages) = range_of(s);
        let (s_start, _) = range_of(s);
        let r_start = s_start + s_pages;
        let r = f.map.lookup(r_start.addr());
        let x = f.map.lookup(x_start.addr());
        // SAFETY: listed free runs of the fixture's heap.
        let (r_rec, x_rec) = unsafe { (&*r, &*x) };
        assert_eq!(r_rec.start(), r_start);
        assert_eq!(
            (r_rec.kind(), x_rec.kind()),
            (SpanKind::Free, SpanKind::Free)
        );
        assert_eq!(f.heap.invariant_violation(&f.map), None);
        // A stale entry just before r naming x (not adjacent): not a neighbour.
        let before_r = PageId(r_start.0 - 1);
        f.map.set(before_r, x);
        assert_eq!(f.heap.invariant_violation(&f.map), None);
        f.map.set(before_r, s.as_ptr());
        // r cut in two runs, both listed: free neighbours not merged.
        // SAFETY: r is on our lists; the fixture owns the heap.
        unsafe { f.heap.unlist(r) };
        let r_pages = r_rec.pages();
        // SAFETY: the fixture owns the heap; no lock guards it.
        let resident = unsafe { r_rec.resident.get() };
        let half = Pages(r_pages.0 / 2);
        let second = f.heap.records.alloc(&f.source).unwrap();
        r_rec.set_range(r_start, half);
        // SAFETY: a fresh record; the fixture owns the heap.
        unsafe {
            Span::init(
                second.as_ptr(),
                r_start + half,
                r_pages - half,
                SpanKind::Free,
            );
            r_rec.resident.set(resident.min(half.0));
            second
                .as_ref()
                .resident
                .set(resident - resident.min(half.0));
            f.map.set_ends(r_start, half, r);
            f.map
                .set_ends(r_start + half, r_pages - half, second.as_ptr());
            f.heap.list(r);
            f.heap.list(second.as_ptr());
        }
        assert_eq!(
            f.heap.invariant_violation(&f.map),
            Some("free neighbours are merged")
        );
        let map = &f.map;
        let heap = &f.heap;
        let panicked =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| heap.check_invariants(map)));
        assert!(panicked.is_err(), "check_invariants panics on it");
    }

    #[test]
    fn a_freed_large_span_waits_in_the_cache_for_the_same_length() {
        let mut f = Fixture::new();
        let a = alloc_large(&mut f, 10).unwrap();
        let keep = alloc_large(&mut f, 1).unwrap();
        // SAFETY: a live span of ours, freed once.
        assert!(unsafe { f.free(a) }, "to the cache");
        assert_eq!(f.heap.cached_bytes(), (10 + GUARD_PAGES.0) * PAGE_SIZE);
        // Not for a small span of the same length, nor for another length.
        let class = crate::size_class::class_of(1000).unwrap();
        let small_pages = class.pages();
        let (small, _) = f
            .heap
            .alloc(small_pages, Pages(1), class, &f.map, &f.source)
            .unwrap();
        assert_ne!(small, a);
        let b = alloc_large(&mut f, 9).unwrap();
        assert_ne!(b, a);
        assert_eq!(f.heap.cached_bytes(), (10 + GUARD_PAGES.0) * PAGE_SIZE);
        // The same length takes it back, as it was.
        let c = alloc_large(&mut f, 10).unwrap();
        assert_eq!(c, a, "the cached span");
        assert_eq!(f.heap.cached_bytes(), 0);
        f.check(&[
            (c, SizeClass::LARGE),
            (keep, SizeClass::LARGE),
            (small, class),
            (b, SizeClass::LARGE),
        ]);
    }

    #[test]
    fn only_a_large_span_in_use_has_a_first_page_word() {
        let mut f = Fixture::new();
        let word = |f: &Fixture, span: NonNull<Span>| {
            // SAFETY: a record of ours (live or free: records are never unmapped).
            f.map.small_word_of(unsafe { span.as_ref() }.start_addr())
        };
        let a = alloc_large(&mut f, 10).unwrap();
        let long = alloc_large(&mut f, CACHED_PAGES + 1).unwrap();
        let keep = alloc_large(&mut f, 1).unwrap();
        assert_eq!(word(&f, a), large_word(a.as_ptr()));
        assert_eq!(word(&f, long), large_word(long.as_ptr()));
        // SAFETY: a live span of ours, whose second page is in it.
        let second = unsafe { a.as_ref() }.start_addr() + PAGE_SIZE;
        assert_eq!(f.map.small_word_of(second), 0, "only the first page");
        // Freed into the cache, and into the free runs: no longer named.
        // SAFETY: live spans of ours, freed once.
        assert!(unsafe { f.free(a) }, "to the cache");
        assert_eq!(word(&f, a), 0);
        // SAFETY: as above.
        assert!(!unsafe { f.free(long) }, "to the free runs");
        assert_eq!(word(&f, long), 0);
        // Taken back from the cache: named again.
        let b = alloc_large(&mut f, 10).unwrap();
        assert_eq!(b, a, "the cached span");
        assert_eq!(word(&f, b), large_word(b.as_ptr()));
        f.check(&[(b, SizeClass::LARGE), (keep, SizeClass::LARGE)]);
    }

    #[test]
    fn cached_spans_are_merged_back_before_the_heap_grows() {
        let mut f = Fixture::new();
        // One mapping, all in use: a (10 pages) and b (the rest).
        let a = alloc_large(&mut f, 10).unwrap();
        let b = alloc_large(
            &mut f,
            MAP_ALIGN / PAGE_SIZE - 10 - 2 * GUARD_PAGES.0 - GROUP_GUARD,
        )
        .unwrap();
        free(&mut f, a);
        assert_eq!(f.heap.cached_bytes(), (10 + GUARD_PAGES.0) * PAGE_SIZE);
        // An aligned request skips the cache's exact-length lookup, finds no free run, and
        // must take the cached span (merged back) rather than map more, which fails here.
        f.source.fail_after(0);
        let (c, _) = f
            .heap
            .alloc(Pages(5), Pages(2), SizeClass::LARGE, &f.map, &f.source)
            .expect("the cached span, merged back");
        // SAFETY: live spans of ours.
        let (cs, as_) = unsafe { (c.as_ref().start(), a.as_ref()) };
        assert!(cs >= as_.start() && cs + Pages(5) <= as_.start() + Pages(10));
        assert_eq!(mapped_with_guards(&f.heap), MAP_ALIGN);
        f.check(&[(c, SizeClass::LARGE), (b, SizeClass::LARGE)]);
    }

    #[test]
    fn a_smaller_mapping_is_tried_before_free_runs_are_unmapped() {
        let mut f = Fixture::new();
        f.heap = PageHeap::with_grow_bytes(8 * MIB);
        // One 8 MiB mapping (four span groups in the hardened build): three groups' worth
        // in use, then 56 pages, leaving a free run of 200 pages (1.6 MiB, long enough to
        // be unmapped).
        let group = MAP_ALIGN / PAGE_SIZE - GUARD_PAGES.0 - GROUP_GUARD;
        let mut live: Vec<_> = (0..3)
            .map(|_| alloc_large(&mut f, group).unwrap())
            .collect();
        live.push(alloc_large(&mut f, 56 - GUARD_PAGES.0 - GROUP_GUARD).unwrap());
        assert_eq!(mapped_with_guards(&f.heap), 8 * MIB);
        assert_eq!(f.heap.stats().free, 200 * PAGE_SIZE);
        // Room for a 2 MiB mapping (and a 2 MiB page-map leaf, should the mapping land in
        // another GiB than the first, and a chunk of records), not for the 8 MiB step.
        f.source
            .limit_address_space(f.source.address_space() + 2 * MIB + 2 * MIB + MIB);
        live.push(alloc_large(&mut f, 250).expect("250 pages in a 2 MiB mapping"));
        let st = f.heap.stats();
        assert_eq!(
            st.unmapped_total, 0,
            "nothing unmapped when a smaller mapping fits"
        );
        assert_eq!(mapped_with_guards(&f.heap), 10 * MIB);
        let live: Vec<_> = live.into_iter().map(|s| (s, SizeClass::LARGE)).collect();
        f.check(&live);
    }
}
