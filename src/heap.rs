//! The shared tiers as one value: a central list per size class, the page heap, the page map
//! and the page source, plus the operations that need no thread cache (large objects,
//! pointer validation, statistics). See `lib.rs` for an overview.
//!
//! A `Heap` is an ordinary value: tests build one over [`crate::sys::FakePages`]; the
//! global allocator has exactly one, in `global.rs`, over [`crate::sys::OsPages`].
//!
//! Lock order (a thread holding one may take only those after it):
//! 1. the global orphan cache lock (`global.rs`),
//! 2. a central list lock (never two at once),
//! 3. the page heap lock (which also guards page-map writes and span records).
//!
//! In practice no code path nests 2 and 3: central lists drop their lock before they call
//! the page heap. `fork` takes all of them in this order.

use crate::central_free_list::{Backing, CentralFreeList, CentralStats};
use crate::check::fatal_at;
use crate::page_heap::{PageHeap, PageHeapStats};
use crate::page_map::PageMap;
use crate::pages::{PAGE_SIZE, Pages};
use crate::size_class::{CLASS_COUNT, SizeClass};
use crate::span::{Span, SpanKind};
use crate::sync::{AtomicI64, AtomicU64, AtomicUsize, Lock, Ordering};
use crate::sys::PageSource;
use core::ptr::NonNull;
use crossbeam_utils::CachePadded;

/// How many times its new size a growing buffer gets: a large object that `realloc` grows
/// in place, or the buffer a thread's `realloc` moved while growing and now moves again
/// (`ThreadCache::realloc`). The next growths then fit in place, with no copy and no lock.
pub const GROWTH_HEADROOM: usize = 4;

/// The smallest growing buffer that moves to a page span with headroom: one OS page. The
/// buffer touches only the OS pages it reaches, so a power-of-two capacity costs what its
/// size class would, and any other at most one OS page more; its room is address space
/// only, unless the page heap carved it from pages already resident. (From 2 KiB, a
/// 2 KiB capacity would touch a whole 4 KiB page: twice the memory of its class.)
pub const GROWTH_MIN: usize = 4096;

/// The smallest growing buffer that is lent a stashed span (`ThreadCache::lend_stashed`)
/// when the thread has one: below [`GROWTH_MIN`], because a lent span's pages are resident
/// already and a thread lends one at a time, so lending costs no memory per buffer.
pub const LEND_MIN: usize = 2048;

/// The most headroom a large object's in-place growth takes: `GROWTH_HEADROOM - 1` times
/// this. Past it a buffer grows by its new size, so address space stays bounded; the pages
/// themselves are touched only as the object reaches them.
pub const GROWTH_HEADROOM_MAX: usize = 1 << 20;

/// The bytes a growing buffer of `size` bytes gets: `GROWTH_HEADROOM` times its size, with
/// at most `(GROWTH_HEADROOM - 1) * GROWTH_HEADROOM_MAX` past it.
#[inline]
pub fn growth_room(size: usize) -> usize {
    size.saturating_add(size.min(GROWTH_HEADROOM_MAX) * (GROWTH_HEADROOM - 1))
}

/// The tiers every thread shares.
///
/// Laid out in the order declared and aligned to a page (4 KiB), so that where each field
/// falls within a page is fixed by this declaration, not by the chance of what precedes the
/// process's heap in the library's data: the page map's root, which every free and every
/// large allocation reads, sits 3 968 bytes into a page (checked below). At a page's start,
/// where a change elsewhere in the crate once moved it, its load shares the low 12 address
/// bits with the stores a program has just made to the first bytes of a page-aligned
/// object it frees (every large object is page-aligned), and the processor holds the load
/// back behind them ("4K aliasing", by all appearances: the instructions and the simulated
/// cache misses were the same): the large random-slot shapes took 1.2 to 1.6 times as
/// long on this project's x86-64 machine.
#[repr(C, align(4096))]
pub struct Heap<S: PageSource> {
    centrals: [CachePadded<CentralFreeList>; CLASS_COUNT],
    /// The page heap lock: the runs, the page-map writes, the span records.
    page_heap: CachePadded<Lock<PageHeap>>,
    map: PageMap,
    source: S,
    /// A clock override for tests (0: use the real monotonic clock).
    fake_now: AtomicU64,
    /// The last clock reading anyone made (see [`Heap::recent_now`]).
    last_now: AtomicU64,
    /// Free pages unused this long (ms) go back to the OS; 0: at once; negative: never.
    decay_ms: AtomicI64,
    /// The most bytes of free objects of one class a thread cache keeps.
    bin_bytes: AtomicUsize,
    /// The most bytes of free small objects a thread cache keeps in all.
    thread_cache_bytes: AtomicUsize,
    /// The clock time at or after which the next decay release is due.
    next_release_at: AtomicU64,
    /// The clock time at or after which the decay step next empties the central lists'
    /// transfer slots and spare spans into the page heap.
    next_drain_at: AtomicU64,
    /// Allocations and frees the thread caches have folded in ([`Heap::fold_counts`]).
    allocations: AtomicU64,
    frees: AtomicU64,
}

// The page map's root clear of a page's first bytes and of its last line (see `Heap`).
#[cfg(all(target_arch = "x86_64", not(loom)))]
const _: () = {
    let at = core::mem::offset_of!(Heap<crate::sys::OsPages>, map) % 4096;
    assert!(
        at >= 256 && at <= 4096 - 64,
        "the page map's root moved near a page boundary"
    );
};

/// Allocations and frees served: a thread cache's own, or the heap's folded totals.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Allocations (a `realloc` that moves the object counts as one, and as a free).
    pub allocations: u64,
    /// Frees.
    pub frees: u64,
}

impl Counts {
    /// What was counted since `earlier` (a reading of the same counters).
    pub fn since(self, earlier: Counts) -> Counts {
        Counts {
            allocations: self.allocations.wrapping_sub(earlier.allocations),
            frees: self.frees.wrapping_sub(earlier.frees),
        }
    }

    /// Both added up.
    pub fn plus(self, other: Counts) -> Counts {
        Counts {
            allocations: self.allocations.wrapping_add(other.allocations),
            frees: self.frees.wrapping_add(other.frees),
        }
    }
}

/// How long free pages stay resident by default before they go back to the OS.
pub const DEFAULT_DECAY_MS: i64 = 500;
/// The most bytes of free objects of one size class a thread cache keeps by default
/// (TCMalloc bounds a whole thread cache at 4 MiB by default, spread over the classes a
/// thread uses; a program touches a handful of classes hard, so this is per class).
pub const DEFAULT_BIN_BYTES: usize = 256 << 10;
/// The most bytes of free small objects a thread cache keeps in all by default (TCMalloc's
/// per-thread bound): at most 1 MiB in its bins, the rest in its reserve, which other
/// threads can give back when the thread is idle (`thread_cache/reserve.rs`). A bin that
/// would grow past the bins' part takes the room from the bin with the most.
pub const DEFAULT_THREAD_CACHE_BYTES: usize = 4 << 20;
/// The most one decay step gives back, so that no single request stalls for long.
pub const RELEASE_BYTES_PER_STEP: usize = 64 << 20;

/// What the program was doing with a pointer [`Heap::owner_for`] checks: it picks the
/// words of the stop message when the pointer is bad.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Access {
    /// `free`, `dealloc`: "invalid free: ...", "double free detected".
    Free,
    /// `realloc`: "invalid realloc: ...".
    Realloc,
    /// `malloc_usable_size` and other questions: "invalid pointer: ...".
    Query,
}

impl Access {
    /// The stop messages for a pointer into the middle of an object, one into memory
    /// already given back, and one spanalloc never handed out.
    fn messages(self) -> [&'static str; 3] {
        match self {
            Access::Free => [
                "invalid free: pointer into the middle of an object",
                "double free detected",
                "invalid free: pointer not allocated by spanalloc",
            ],
            Access::Realloc => [
                "invalid realloc: pointer into the middle of an object",
                "invalid realloc: pointer already freed",
                "invalid realloc: pointer not allocated by spanalloc",
            ],
            Access::Query => [
                "invalid pointer: into the middle of an object",
                "invalid pointer: already freed",
                "invalid pointer: not allocated by spanalloc",
            ],
        }
    }
}

/// A pointer `free` was given, classified.
pub enum Owner {
    /// The start of an object of a small span.
    Small(NonNull<Span>),
    /// The start of a large object.
    Large(NonNull<Span>),
}

impl<S: PageSource> Heap<S> {
    /// A heap that has mapped nothing yet.
    #[cfg(not(loom))]
    pub const fn new(source: S) -> Heap<S> {
        Heap::with_page_heap(source, PageHeap::new())
    }

    /// A heap over `page_heap` (for tests that want a small growth step).
    #[cfg(not(loom))]
    pub const fn with_page_heap(source: S, page_heap: PageHeap) -> Heap<S> {
        Heap {
            centrals: [const { CachePadded::new(CentralFreeList::new()) }; CLASS_COUNT],
            page_heap: CachePadded::new(Lock::new(page_heap)),
            map: PageMap::new(),
            source,
            fake_now: AtomicU64::new(0),
            last_now: AtomicU64::new(0),
            decay_ms: AtomicI64::new(DEFAULT_DECAY_MS),
            bin_bytes: AtomicUsize::new(DEFAULT_BIN_BYTES),
            thread_cache_bytes: AtomicUsize::new(DEFAULT_THREAD_CACHE_BYTES),
            next_release_at: AtomicU64::new(0),
            next_drain_at: AtomicU64::new(0),
            allocations: AtomicU64::new(0),
            frees: AtomicU64::new(0),
        }
    }

    /// A heap over `page_heap` (loom models: loom's locks and atomics are made at run time).
    #[cfg(loom)]
    pub fn with_page_heap(source: S, page_heap: PageHeap) -> Heap<S> {
        Heap {
            centrals: core::array::from_fn(|_| CachePadded::new(CentralFreeList::new())),
            page_heap: CachePadded::new(Lock::new(page_heap)),
            map: PageMap::new(),
            source,
            fake_now: AtomicU64::new(0),
            last_now: AtomicU64::new(0),
            decay_ms: AtomicI64::new(DEFAULT_DECAY_MS),
            bin_bytes: AtomicUsize::new(DEFAULT_BIN_BYTES),
            thread_cache_bytes: AtomicUsize::new(DEFAULT_THREAD_CACHE_BYTES),
            next_release_at: AtomicU64::new(0),
            next_drain_at: AtomicU64::new(0),
            allocations: AtomicU64::new(0),
            frees: AtomicU64::new(0),
        }
    }

    /// The page source.
    pub fn source(&self) -> &S {
        &self.source
    }

    /// The page map.
    pub fn page_map(&self) -> &PageMap {
        &self.map
    }

    /// The central list of `class`.
    #[inline]
    pub fn central(&self, class: SizeClass) -> &CentralFreeList {
        &self.centrals[class.index()]
    }

    /// Milliseconds on the heap's clock (monotonic; a test may set it).
    pub fn now(&self) -> u64 {
        match self.fake_now.load(Ordering::Relaxed) {
            0 => {
                let t = crate::sys::monotonic_ms();
                self.last_now.store(t, Ordering::Relaxed);
                t
            }
            t => t,
        }
    }

    /// The last clock reading any thread made, without reading the clock: good enough to
    /// stamp a freed run for decay on a path too hot for a clock read (a stale stamp only
    /// makes the run eligible for release sooner).
    #[inline]
    pub fn recent_now(&self) -> u64 {
        match self.fake_now.load(Ordering::Relaxed) {
            0 => self.last_now.load(Ordering::Relaxed),
            t => t,
        }
    }

    /// Sets the clock for tests (0 goes back to the real clock).
    pub fn set_fake_now(&self, ms: u64) {
        self.fake_now.store(ms, Ordering::Relaxed);
    }

    /// Sets the decay time: free pages unused for `ms` milliseconds go back to the OS; 0
    /// gives them back at once, a negative value never (only `release_free_memory`).
    pub fn set_decay_ms(&self, ms: i64) {
        self.decay_ms.store(ms, Ordering::Relaxed);
        self.next_release_at.store(0, Ordering::Relaxed);
    }

    /// Sets the most bytes of free objects of one size class a thread cache keeps (at least
    /// two batches whatever the value; see [`DEFAULT_BIN_BYTES`]). Bins over it shrink as
    /// their thread frees into them.
    pub fn set_bin_bytes(&self, bytes: usize) {
        self.bin_bytes.store(bytes, Ordering::Relaxed);
    }

    /// Sets the most bytes of free small objects a thread cache keeps in all (see
    /// [`DEFAULT_THREAD_CACHE_BYTES`]); a bin always keeps room for one batch.
    pub fn set_thread_cache_bytes(&self, bytes: usize) {
        self.thread_cache_bytes.store(bytes, Ordering::Relaxed);
    }

    /// The bound [`Heap::set_thread_cache_bytes`] set.
    #[inline]
    pub fn thread_cache_bytes(&self) -> usize {
        self.thread_cache_bytes.load(Ordering::Relaxed)
    }

    /// The bound [`Heap::set_bin_bytes`] set.
    #[inline]
    pub fn bin_bytes(&self) -> usize {
        self.bin_bytes.load(Ordering::Relaxed)
    }

    /// The decay time in milliseconds (see [`Heap::set_decay_ms`]).
    pub fn decay_ms(&self) -> i64 {
        self.decay_ms.load(Ordering::Relaxed)
    }

    /// The decay step, called from slow paths (refills, large objects, spans returning to
    /// the page heap): when due, gives back to the OS the free runs that have been unused for
    /// the decay time, until [`RELEASE_BYTES_PER_STEP`] resident bytes are given back (the
    /// run that crosses the bound is finished, so one step gives back at most the bound plus
    /// one run). Costs a clock read and a compare
    /// when not due; never waits for the page heap lock.
    #[inline]
    pub fn maybe_release(&self) {
        let decay = self.decay_ms.load(Ordering::Relaxed);
        if decay < 0 {
            return;
        }
        let now = self.now();
        if decay > 0 && now < self.next_release_at.load(Ordering::Relaxed) {
            return;
        }
        self.release_step(now, decay as u64);
    }

    #[cold]
    #[inline(never)]
    fn release_step(&self, now: u64, decay: u64) {
        // What the central lists keep for reuse (whole batches, one spare span a class) goes
        // back to the page heap on the same clock, at most once a millisecond: idle, it would
        // otherwise stay resident. Before the page heap lock, which comes after theirs.
        if now >= self.next_drain_at.load(Ordering::Relaxed) {
            self.next_drain_at
                .store(now + (decay / 4).max(1), Ordering::Relaxed);
            self.drain_centrals();
        }
        let Some(mut page_heap) = self.page_heap.try_lock() else {
            return;
        };
        let done = page_heap.release(
            now.saturating_sub(decay),
            RELEASE_BYTES_PER_STEP,
            &self.map,
            &self.source,
        );
        // More may be due: come back at once. Otherwise in a quarter of the decay time, so a
        // page is given back at most 1.25 decay times after it was freed.
        let next = if done >= RELEASE_BYTES_PER_STEP {
            now
        } else {
            now + (decay / 4).max(1)
        };
        self.next_release_at.store(next, Ordering::Relaxed);
    }

    /// Gives back, now, every free run that has been unused for the decay time, however
    /// much that is (for a background thread: waits for the lock and has no bound). Returns
    /// the bytes given back.
    pub fn release_due(&self) -> usize {
        let decay = self.decay_ms.load(Ordering::Relaxed);
        if decay < 0 {
            return 0;
        }
        let now = self.now();
        self.drain_centrals();
        self.page_heap.lock().release(
            now.saturating_sub(decay as u64),
            usize::MAX,
            &self.map,
            &self.source,
        )
    }

    /// What central lists need to grow and release. Spans they return are stamped with
    /// [`Heap::recent_now`]: the refill path has just read the clock in `maybe_release`, so
    /// this needs no clock read of its own.
    pub fn backing(&self) -> Backing<'_, S> {
        Backing {
            page_heap: &self.page_heap,
            map: &self.map,
            source: &self.source,
            now: self.recent_now(),
        }
    }

    /// Allocates a large object: a span of its own. Returns the object and whether it is
    /// known to be all zero. `None` when out of memory or `size` is absurd.
    pub fn alloc_large(&self, size: usize, align: usize) -> Option<(NonNull<u8>, bool)> {
        self.alloc_large_from(size, align, true)
    }

    /// As [`Heap::alloc_large`] for an object that is growing (`realloc`): from a free run
    /// with room after it rather than from the large-span cache (see
    /// [`PageHeap::alloc_to_grow`]).
    pub fn alloc_large_to_grow(&self, size: usize, align: usize) -> Option<(NonNull<u8>, bool)> {
        self.alloc_large_from(size, align, false)
    }

    fn alloc_large_from(
        &self,
        size: usize,
        align: usize,
        use_cache: bool,
    ) -> Option<(NonNull<u8>, bool)> {
        if size > isize::MAX as usize {
            return None;
        }
        let pages = Pages::for_bytes(size.max(1))?;
        let align = Pages((align / PAGE_SIZE).max(1));
        let mut page_heap = self.page_heap.lock();
        let (span, zeroed) = if use_cache {
            page_heap.alloc(pages, align, SizeClass::LARGE, &self.map, &self.source)?
        } else {
            page_heap.alloc_to_grow(pages, align, &self.map, &self.source)?
        };
        drop(page_heap);
        // SAFETY: a live span just handed to us.
        let start = unsafe { span.as_ref() }.start();
        Some((NonNull::new(start.ptr())?, zeroed))
    }

    /// Frees a large object's span.
    ///
    /// # Safety
    /// `span` holds a large object the caller owns and gives up.
    pub unsafe fn free_large(&self, span: NonNull<Span>) {
        // SAFETY: a live span record (per the caller), read before anything frees it.
        let record = unsafe { span.as_ref() };
        if record.is_stashed_large() {
            fatal_at("double free detected", record.start_addr());
        }
        #[cfg(not(feature = "hardened"))]
        // SAFETY: per the caller.
        let cached = unsafe {
            self.page_heap
                .lock()
                .free(span, self.recent_now(), &self.map)
        };
        #[cfg(feature = "hardened")]
        // SAFETY: per the caller.
        let cached = unsafe {
            self.page_heap
                .lock()
                .free(span, self.recent_now(), &self.map, &self.source)
        };
        // A span that went to the large-span cache is the hot path of large-object churn:
        // no clock read. Others run the decay step, as every page-heap slow path does (and a
        // decay of 0 means at once, cache or not).
        if !cached || self.decay_ms() == 0 {
            self.maybe_release();
        }
    }

    /// Finds what `ptr` is, stopping the process with a message if it is not the start of
    /// an object this heap handed out (as far as the page map can tell). The message names
    /// a free ([`Access::Free`]); [`Heap::owner_for`] names another use.
    #[inline]
    pub fn owner(&self, ptr: *mut u8) -> Owner {
        self.owner_for(ptr, Access::Free)
    }

    /// As [`Heap::owner`], with the stop message naming `access`, what the program was
    /// doing with the pointer.
    #[inline]
    pub fn owner_for(&self, ptr: *mut u8, access: Access) -> Owner {
        let addr = ptr as usize;
        let span = self.map.lookup(addr);
        // SAFETY: page-map entries point to span records, which are never unmapped.
        if let Some(s) = unsafe { span.as_ref() } {
            // SAFETY: non-null.
            let nn = unsafe { NonNull::new_unchecked(span) };
            match s.kind() {
                SpanKind::Small if s.object_index(addr).is_some() => return Owner::Small(nn),
                SpanKind::Large if addr == s.start_addr() => return Owner::Large(nn),
                _ => {}
            }
        }
        self.bad_pointer(addr, access)
    }

    /// Stops the process with the message that fits a pointer `owner` rejected. Only this
    /// error path pays for a precise answer: it walks the page map back from `addr` (a
    /// large or free span maps only its first and last page) to find the span covering it.
    #[cold]
    #[inline(never)]
    fn bad_pointer(&self, addr: usize, access: Access) -> ! {
        let [interior, freed, foreign] = access.messages();
        let mut page = addr >> crate::pages::PAGE_SHIFT;
        for _ in 0..(1usize << 17) {
            let span = self.map.lookup(page << crate::pages::PAGE_SHIFT);
            // SAFETY: page-map entries point to span records, which are never unmapped; a
            // record describes its current range, so one that contains `addr` covers it.
            if let Some(s) = unsafe { span.as_ref() } {
                if s.contains(addr) {
                    match s.kind() {
                        SpanKind::Small | SpanKind::Large => fatal_at(interior, addr),
                        // A guard page between span groups: never handed out.
                        #[cfg(feature = "hardened")]
                        SpanKind::Guard => fatal_at(foreign, addr),
                        // Its pages were given back: freed twice (or never handed out).
                        _ => fatal_at(freed, addr),
                    }
                }
            }
            if page == 0 {
                break;
            }
            page -= 1;
        }
        fatal_at(foreign, addr)
    }

    /// Bytes usable at `ptr`, an object this heap handed out.
    pub fn usable_size(&self, ptr: *mut u8) -> usize {
        match self.owner_for(ptr, Access::Query) {
            // SAFETY: `owner` validated the span.
            Owner::Small(span) => unsafe { span.as_ref() }.class().size(),
            // SAFETY: as above.
            Owner::Large(span) => unsafe { span.as_ref() }.object_bytes(),
        }
    }

    /// The bytes of the large span whose object starts at `ptr`, or 0 if `ptr` is not such
    /// an object: one page-map lookup, no lock (the span is the caller's, so its length is
    /// stable).
    #[inline]
    pub fn large_room(&self, ptr: *mut u8) -> usize {
        let addr = ptr as usize;
        // SAFETY: page-map entries point to span records, which are never unmapped.
        match unsafe { self.map.lookup(addr).as_ref() } {
            Some(s) if s.kind() == SpanKind::Large && s.start_addr() == addr => s.object_bytes(),
            _ => 0,
        }
    }

    /// Resizes large object `span` in place to hold `new_size` bytes if that can be done
    /// without moving it: shrinking, or growing into a free run that follows.
    ///
    /// # Safety
    /// `span` holds a large object the caller owns; on success its first `new_size` bytes
    /// are the object.
    pub unsafe fn resize_large_in_place(&self, span: NonNull<Span>, new_size: usize) -> bool {
        // A large object keeps at least one page (size 0 with a large alignment lands here).
        let Some(pages) = Pages::for_bytes(new_size.max(1)) else {
            return false;
        };
        // SAFETY: per the caller (the span is the caller's: its length is stable).
        let have = unsafe { span.as_ref() }.object_pages();
        if pages > have {
            // A large object that grows is a buffer that will likely grow again: take
            // headroom when the free run after it has it (its pages stay untouched until
            // the object reaches them), so the next growths need no lock.
            let room = Pages::for_bytes(growth_room(new_size));
            let mut page_heap = self.page_heap.lock();
            #[cfg(not(feature = "hardened"))]
            // SAFETY: per the caller.
            let grown = unsafe {
                room.is_some_and(|room| page_heap.grow_in_place(span, room, &self.map))
                    || page_heap.grow_in_place(span, pages, &self.map)
            };
            #[cfg(feature = "hardened")]
            // SAFETY: per the caller.
            let grown = unsafe {
                room.is_some_and(|room| {
                    page_heap.grow_in_place(span, room, &self.map, &self.source)
                }) || page_heap.grow_in_place(span, pages, &self.map, &self.source)
            };
            grown
        } else if pages.0 * 2 < have.0 {
            // Give back the tail only when it is at least half the span; otherwise keep it
            // (it makes a later grow free), and take no lock.
            let now = self.recent_now();
            // SAFETY: per the caller; the tail is past the object's new end.
            unsafe {
                self.page_heap
                    .lock()
                    .shrink(span, pages, now, &self.map, &self.source)
            };
            true
        } else {
            true
        }
    }

    /// Gives every free resident page back to the OS at once, after emptying the central
    /// lists' transfer slots and spare spans into the page heap. Returns the bytes released.
    pub fn release_free_memory(&self) -> usize {
        self.drain_centrals();
        self.page_heap
            .lock()
            .release(u64::MAX, usize::MAX, &self.map, &self.source)
    }

    /// Empties every central list's transfer slots and spare span into the page heap.
    pub fn drain_centrals(&self) {
        for class in SizeClass::all() {
            self.central(class).drain(&self.backing());
        }
    }

    /// Page heap counters.
    pub fn page_heap_stats(&self) -> PageHeapStats {
        self.page_heap.lock().stats()
    }

    /// Adds a thread cache's counts since its last fold to the heap's totals (on its slow
    /// paths and at its flush: the fast paths count in the cache alone).
    pub fn fold_counts(&self, counts: Counts) {
        self.allocations
            .fetch_add(counts.allocations, Ordering::Relaxed);
        self.frees.fetch_add(counts.frees, Ordering::Relaxed);
    }

    /// The counts folded in so far.
    pub fn folded_counts(&self) -> Counts {
        Counts {
            allocations: self.allocations.load(Ordering::Relaxed),
            frees: self.frees.load(Ordering::Relaxed),
        }
    }

    /// What the central list of `class` holds.
    pub fn central_stats(&self, class: SizeClass) -> CentralStats {
        self.central(class).stats(class)
    }

    /// Checks the invariants of every tier (for tests: panics on a violation).
    pub fn check_invariants(&self) {
        for class in SizeClass::all() {
            self.central(class).check_invariants(class, &self.map);
        }
        // Checked under the lock, reported after dropping it: a panic allocates, and an
        // allocation may need the page heap lock.
        let violation = self.page_heap.lock().invariant_violation(&self.map);
        if let Some(v) = violation {
            panic!("page heap invariant broken: {v}");
        }
    }

    /// Takes every lock of the heap, in the lock order (for `fork`).
    pub fn lock_all(&self) {
        for class in SizeClass::all() {
            self.central(class).lock_for_fork();
        }
        self.page_heap.raw_lock();
    }

    /// Releases every lock taken by [`Heap::lock_all`].
    ///
    /// # Safety
    /// This thread took them with `lock_all` (in this process or, after `fork`, its parent).
    pub unsafe fn unlock_all(&self) {
        // SAFETY: per the caller.
        unsafe {
            self.page_heap.raw_unlock();
            for class in SizeClass::all() {
                self.central(class).unlock_after_fork();
            }
        }
    }
}

#[cfg(all(test, not(loom)))]
pub(crate) mod tests {
    use super::*;
    use crate::page_heap::PageHeap;
    use crate::span::GUARD_PAGES;
    use crate::sys::FakePages;
    use crate::thread_cache::ThreadCache;

    /// The process's heap starts a page, so its page map's root has the place in a page
    /// that the layout check gives it, clear of where page-aligned objects start (see
    /// `Heap`).
    #[test]
    fn the_process_heap_keeps_the_page_map_root_clear_of_page_starts() {
        let heap = crate::global::heap();
        assert_eq!(heap as *const _ as usize % 4096, 0);
        // The place measured, and checked at build time, on x86-64.
        if cfg!(target_arch = "x86_64") {
            let at = heap.page_map() as *const PageMap as usize % 4096;
            assert!((256..=4096 - 64).contains(&at), "{at}");
        }
    }

    /// A heap over fake pages that grows 4 MiB at a time (shared by the tests of the
    /// tiers above).
    pub(crate) fn heap() -> Box<Heap<FakePages>> {
        Box::new(Heap::with_page_heap(
            FakePages::new(),
            PageHeap::with_grow_bytes(4 << 20),
        ))
    }

    /// Resident bytes the page heap has given back so far.
    fn released(heap: &Heap<FakePages>) -> usize {
        heap.page_heap_stats().released_total
    }

    /// Frees a 1 MiB large object at fake time `t` and returns its span's bytes (the guard
    /// page included, in the hardened build).
    fn free_large_at(heap: &Heap<FakePages>, t: u64) -> usize {
        heap.set_fake_now(t);
        let (p, _) = heap.alloc_large(1 << 20, 8).unwrap();
        let Owner::Large(span) = heap.owner(p.as_ptr()) else {
            unreachable!()
        };
        // SAFETY: our large object, freed once.
        unsafe { heap.free_large(span) };
        (1 << 20) + GUARD_PAGES.bytes()
    }

    #[test]
    fn free_pages_go_back_after_the_decay_time_and_not_before() {
        let heap = heap();
        heap.set_decay_ms(1000);
        let bytes = free_large_at(&heap, 10_000);
        assert_eq!(heap.page_heap_stats().free_resident, bytes);
        heap.set_fake_now(10_500);
        heap.maybe_release();
        assert_eq!(released(&heap), 0, "not before the decay time");
        heap.set_fake_now(11_001);
        heap.maybe_release();
        assert_eq!(released(&heap), bytes);
        assert_eq!(heap.page_heap_stats().free_resident, 0);
        heap.check_invariants();
    }

    #[test]
    fn decay_zero_releases_at_once_and_negative_never() {
        let heap = heap();
        heap.set_decay_ms(0);
        let bytes = free_large_at(&heap, 5);
        assert_eq!(released(&heap), bytes);
        let heap = self::heap();
        heap.set_decay_ms(-1);
        free_large_at(&heap, 5);
        heap.set_fake_now(1 << 40);
        heap.maybe_release();
        assert_eq!(released(&heap), 0);
        assert_eq!(
            heap.release_free_memory(),
            (1 << 20) + GUARD_PAGES.bytes(),
            "explicit release still works"
        );
    }

    /// `large_room`: the bytes of a large object's span at its start; 0 anywhere else (its
    /// interior, a small object, memory the heap does not hold).
    #[test]
    fn large_room_is_the_span_of_a_large_objects_start_and_nothing_else() {
        let heap = heap();
        let (p, _) = heap.alloc_large(100_000, 8).unwrap();
        let p = p.as_ptr();
        let Owner::Large(span) = heap.owner(p) else {
            unreachable!()
        };
        // SAFETY: a live span record.
        let bytes = unsafe { span.as_ref() }.object_bytes();
        assert!(bytes >= 100_000);
        assert_eq!(heap.large_room(p), bytes);
        assert_eq!(heap.large_room(p.wrapping_add(8)), 0, "interior");
        assert_eq!(heap.large_room(p.wrapping_add(16384)), 0, "a later page");
        let mut cache = ThreadCache::new();
        let small = cache.alloc(&heap, 64, 8);
        assert_eq!(heap.large_room(small), 0, "a small object");
        let mut outside = 0u64;
        assert_eq!(
            heap.large_room((&raw mut outside).cast()),
            0,
            "not the heap's"
        );
        // SAFETY: live, freed once.
        unsafe {
            cache.free(&heap, small);
            heap.free_large(span);
        }
        cache.flush(&heap);
    }

    /// A heap made over a page heap uses that one: its growth step is the first mapping.
    #[test]
    fn a_heap_grows_by_the_step_of_the_page_heap_it_was_given() {
        let heap = Heap::with_page_heap(FakePages::new(), PageHeap::with_grow_bytes(64 << 20));
        heap.alloc_large(1 << 20, 8).unwrap();
        // In the hardened build, less the guard page that ends each 2 MiB span group.
        let guards = if cfg!(feature = "hardened") {
            (64 << 20) / crate::page_heap::MAP_ALIGN * PAGE_SIZE
        } else {
            0
        };
        assert_eq!(heap.page_heap_stats().mapped + guards, 64 << 20);
    }

    /// The decay step's schedule: one step, then the next a quarter of the decay time
    /// later and not before, even when something is due meanwhile; with a decay of 0,
    /// every free is given back at once, two in the same millisecond included.
    #[test]
    fn the_decay_step_comes_a_quarter_decay_after_the_last_one() {
        let heap = heap();
        heap.set_decay_ms(100);
        assert_eq!(heap.decay_ms(), 100);
        heap.set_fake_now(1000);
        heap.maybe_release();
        let bytes = free_large_at(&heap, 1000);
        heap.set_fake_now(1099);
        heap.maybe_release();
        assert_eq!(released(&heap), 0, "not due at 1099");
        heap.set_fake_now(1100);
        heap.maybe_release();
        assert_eq!(released(&heap), 0, "due, but the last step was at 1099");
        heap.set_fake_now(1124);
        heap.maybe_release();
        assert_eq!(released(&heap), bytes, "the next step, at 1099 + 25");

        let heap = self::heap();
        heap.set_decay_ms(0);
        let a = free_large_at(&heap, 5);
        assert_eq!(released(&heap), a);
        let b = free_large_at(&heap, 5);
        assert_eq!(released(&heap), a + b, "in the same millisecond");
    }

    /// The central lists' transfer slots go back to the page heap with the first decay
    /// step, and then with the step a quarter of the decay time later.
    #[test]
    fn the_decay_step_drains_the_central_lists_on_its_own_clock() {
        let heap = heap();
        heap.set_decay_ms(100);
        heap.set_fake_now(1000);
        let class = crate::size_class::class_of(48).unwrap();
        let batch = crate::central_free_list::batch_size(class);
        // Whole batches a cache hands back when its bin fills wait in the transfer slots
        // (objects another cache made and flushed: the flush runs a step of its own).
        let mut consumer = ThreadCache::new();
        let mut fill = |heap: &Heap<FakePages>| {
            let mut producer = ThreadCache::new();
            let held: Vec<*mut u8> = (0..4 * batch)
                .map(|_| producer.alloc(heap, 48, 8))
                .collect();
            producer.flush(heap);
            for p in held {
                // SAFETY: live objects, freed once.
                unsafe { consumer.free(heap, p) };
            }
            heap.central_stats(class).transfer
        };
        heap.set_decay_ms(-1);
        assert!(fill(&heap) > 0);
        heap.set_decay_ms(100);
        heap.maybe_release();
        assert_eq!(
            heap.central_stats(class).transfer,
            0,
            "the first step drains"
        );
        heap.set_decay_ms(-1);
        assert!(fill(&heap) > 0);
        heap.set_decay_ms(100);
        heap.set_fake_now(1025);
        heap.maybe_release();
        assert_eq!(
            heap.central_stats(class).transfer,
            0,
            "and the step at 1025"
        );
        consumer.flush(&heap);
        heap.check_invariants();
    }

    /// `release_due` (the background thread's): what has been unused for the decay time,
    /// at once, without the steps' schedule; nothing when decay is off.
    #[test]
    fn release_due_gives_back_what_is_due_and_nothing_when_decay_is_off() {
        let heap = heap();
        heap.set_decay_ms(100);
        let bytes = free_large_at(&heap, 1000);
        heap.set_fake_now(1050);
        assert_eq!(heap.release_due(), 0);
        heap.set_fake_now(1100);
        assert_eq!(heap.release_due(), bytes);
        // Freed while decay was off (no step ran), then a decay of 0: all of it, at once.
        heap.set_decay_ms(-1);
        let bytes = free_large_at(&heap, 2000);
        heap.set_decay_ms(0);
        assert_eq!(heap.release_due(), bytes);
        heap.set_decay_ms(-1);
        free_large_at(&heap, 3000);
        heap.set_fake_now(1 << 40);
        assert_eq!(heap.release_due(), 0, "decay off");
        heap.check_invariants();
    }

    #[test]
    fn one_step_gives_back_at_most_its_bound() {
        let heap = Box::new(Heap::with_page_heap(
            FakePages::new(),
            PageHeap::with_grow_bytes(256 << 20),
        ));
        heap.set_decay_ms(-1);
        heap.set_fake_now(100);
        // Three 48 MiB objects kept apart by live one-page spacers, so they stay three runs.
        let mut big = Vec::new();
        for _ in 0..3 {
            big.push(heap.alloc_large(48 << 20, 8).unwrap().0);
            heap.alloc_large(8192, 8).unwrap();
        }
        for p in big {
            let Owner::Large(span) = heap.owner(p.as_ptr()) else {
                unreachable!()
            };
            // SAFETY: our large object, freed once.
            unsafe { heap.free_large(span) };
        }
        heap.set_decay_ms(10);
        heap.set_fake_now(200);
        heap.maybe_release();
        let span_bytes = (48 << 20) + GUARD_PAGES.bytes();
        assert_eq!(
            released(&heap),
            2 * span_bytes,
            "stops after the run that crosses 64 MiB"
        );
        heap.maybe_release();
        assert_eq!(
            released(&heap),
            3 * span_bytes,
            "the next step finishes the work"
        );
        heap.check_invariants();
    }

    #[test]
    fn small_spans_return_to_the_page_heap_when_another_cache_frees_their_objects() {
        let heap = heap();
        let mut producer = ThreadCache::new();
        let mut consumer = ThreadCache::new();
        // Under Miri, 1 000 objects (six spans) are enough and 10 000 take minutes.
        let n = if cfg!(miri) { 1_000 } else { 10_000 };
        let objs: Vec<_> = (0..n).map(|_| producer.alloc(&heap, 48, 8)).collect();
        producer.flush(&heap);
        for p in objs {
            // SAFETY: live objects, freed once, by a cache that did not allocate them.
            unsafe { consumer.free(&heap, p) };
        }
        consumer.flush(&heap);
        heap.release_free_memory();
        heap.check_invariants();
        let st = heap.page_heap_stats();
        assert_eq!(st.small_spans, 0, "every span went back");
        assert_eq!(st.free, st.mapped);
    }
}
