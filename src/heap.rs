//! The shared tiers as one value: a central list per size class, the page heap, the page map
//! and the page source, plus the operations that need no thread cache (large objects,
//! cross-thread frees, pointer validation, statistics). See `lib.rs` for an overview.
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
use crate::check::fatal;
use crate::page_heap::{PageHeap, PageHeapStats};
use crate::page_map::PageMap;
use crate::pages::{PAGE_SIZE, Pages};
use crate::size_class::{CLASS_COUNT, SizeClass};
use crate::span::{RemoteAction, Span, SpanKind};
use crate::sync::{AtomicU64, Lock, Ordering};
use crate::sys::PageSource;
use core::ptr::NonNull;
use crossbeam_utils::CachePadded;

/// The tiers every thread shares.
pub struct Heap<S: PageSource> {
    centrals: [CachePadded<CentralFreeList>; CLASS_COUNT],
    /// The page heap lock: the runs, the page-map writes, the span records.
    page_heap: CachePadded<Lock<PageHeap>>,
    map: PageMap,
    source: S,
    /// A clock override for tests (0: use the real monotonic clock).
    fake_now: AtomicU64,
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

    /// The page heap and its lock.
    pub fn page_heap(&self) -> &Lock<PageHeap> {
        &self.page_heap
    }

    /// The central list of `class`.
    #[inline]
    pub fn central(&self, class: SizeClass) -> &CentralFreeList {
        &self.centrals[class.index()]
    }

    /// Milliseconds on the heap's clock (monotonic; a test may set it).
    pub fn now(&self) -> u64 {
        match self.fake_now.load(Ordering::Relaxed) {
            0 => crate::sys::monotonic_ms(),
            t => t,
        }
    }

    /// Sets the clock for tests (0 goes back to the real clock).
    pub fn set_fake_now(&self, ms: u64) {
        self.fake_now.store(ms, Ordering::Relaxed);
    }

    /// What central lists need to grow and release.
    pub fn backing(&self) -> Backing<'_, S> {
        Backing { page_heap: &self.page_heap, map: &self.map, source: &self.source, now: self.now() }
    }

    /// Allocates a large object: a span of its own. Returns the object and whether it is
    /// known to be all zero. `None` when out of memory or `size` is absurd.
    pub fn alloc_large(&self, size: usize, align: usize) -> Option<(NonNull<u8>, bool)> {
        if size > isize::MAX as usize {
            return None;
        }
        let pages = Pages::for_bytes(size.max(1))?;
        let align = Pages((align / PAGE_SIZE).max(1));
        let (span, zeroed) =
            self.page_heap.lock().alloc(pages, align, SizeClass::LARGE, &self.map, &self.source)?;
        // SAFETY: a live span just handed to us.
        let start = unsafe { span.as_ref() }.start();
        Some((NonNull::new(start.ptr())?, zeroed))
    }

    /// Frees a large object's span.
    ///
    /// # Safety
    /// `span` holds a large object the caller owns and gives up.
    pub unsafe fn free_large(&self, span: NonNull<Span>) {
        let now = self.now();
        // SAFETY: per the caller.
        unsafe { self.page_heap.lock().free(span, now, &self.map) };
    }

    /// Frees `ptr`, an object of small span `span` that the calling thread does not own:
    /// one compare-and-swap, and a central-lock visit on the rare transitions.
    ///
    /// # Safety
    /// `ptr` is an object of `span` that the caller gives up.
    #[inline]
    pub unsafe fn free_remote(&self, span: NonNull<Span>, ptr: *mut u8) {
        // SAFETY: per the caller.
        let action = unsafe { span.as_ref().push_remote(ptr) };
        if action != RemoteAction::Nothing {
            self.finish_remote_slow(span, action);
        }
    }

    #[cold]
    #[inline(never)]
    fn finish_remote_slow(&self, span: NonNull<Span>, action: RemoteAction) {
        // SAFETY: a live small span; `action` came from our own push.
        let class = unsafe { span.as_ref() }.class();
        // SAFETY: as above.
        unsafe { self.central(class).finish_remote(span, action, &self.backing()) };
    }

    /// Finds what `ptr` is, stopping the process with a message if it is not the start of
    /// an object this heap handed out (as far as the page map can tell).
    #[inline]
    pub fn owner(&self, ptr: *mut u8) -> Owner {
        let addr = ptr as usize;
        let span = self.map.lookup(addr);
        // SAFETY: page-map entries point to span records, which are never unmapped.
        let Some(s) = (unsafe { span.as_ref() }) else {
            fatal("invalid free: pointer not allocated by spanalloc");
        };
        if !s.contains(addr) {
            fatal("invalid free: pointer not allocated by spanalloc");
        }
        if s.kind() == SpanKind::Free {
            // Its pages were given back: a large object freed twice, or a pointer into
            // memory spanalloc holds but never handed out.
            fatal("double free detected");
        }
        // SAFETY: non-null (checked above).
        let span = unsafe { NonNull::new_unchecked(span) };
        match s.kind() {
            SpanKind::Small => {
                if s.object_index(addr).is_none() {
                    fatal("invalid free: pointer into the middle of an object");
                }
                Owner::Small(span)
            }
            SpanKind::Large => {
                if addr != s.start_addr() {
                    fatal("invalid free: pointer into the middle of an object");
                }
                Owner::Large(span)
            }
            _ => fatal("double free detected"),
        }
    }

    /// Bytes usable at `ptr`, an object this heap handed out.
    pub fn usable_size(&self, ptr: *mut u8) -> usize {
        match self.owner(ptr) {
            // SAFETY: `owner` validated the span.
            Owner::Small(span) => unsafe { span.as_ref() }.class().size(),
            // SAFETY: as above.
            Owner::Large(span) => unsafe { span.as_ref() }.bytes(),
        }
    }

    /// Resizes large object `span` in place to hold `new_size` bytes if that can be done
    /// without moving it: shrinking, or growing into a free run that follows.
    ///
    /// # Safety
    /// `span` holds a large object the caller owns; on success its first `new_size` bytes
    /// are the object.
    pub unsafe fn resize_large_in_place(&self, span: NonNull<Span>, new_size: usize) -> bool {
        let Some(pages) = Pages::for_bytes(new_size) else { return false };
        // SAFETY: per the caller.
        let have = unsafe { span.as_ref() }.pages();
        let mut heap = self.page_heap.lock();
        if pages > have {
            // SAFETY: per the caller.
            unsafe { heap.grow_in_place(span, pages, &self.map) }
        } else if pages.0 * 2 < have.0 {
            // Give back the tail only when it is at least half the span; otherwise keep it
            // (it makes a later grow free).
            // SAFETY: per the caller; the tail is past the object's new end.
            unsafe { heap.shrink(span, pages, self.now(), &self.map, &self.source) };
            true
        } else {
            true
        }
    }

    /// Gives every free resident page back to the OS at once. Returns the bytes released.
    pub fn release_free_memory(&self) -> usize {
        self.page_heap.lock().release(u64::MAX, usize::MAX, &self.source)
    }

    /// Page heap counters.
    pub fn page_heap_stats(&self) -> PageHeapStats {
        self.page_heap.lock().stats()
    }

    /// What the central list of `class` holds.
    pub fn central_stats(&self, class: SizeClass) -> CentralStats {
        self.central(class).stats()
    }

    /// Checks the invariants of every tier (for tests: panics on a violation).
    pub fn check_invariants(&self) {
        for class in SizeClass::all() {
            self.central(class).check_invariants(class, &self.map);
        }
        self.page_heap.lock().check_invariants(&self.map);
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
