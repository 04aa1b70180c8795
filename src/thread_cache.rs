//! The thread cache: per thread, per size class, the spans the thread owns, whose free
//! objects it pops and pushes with no atomic and no lock. One of them, the bin's current
//! span, serves allocation (Go's `mcache`); the others, its retained spans, keep their own
//! free lists, so that the thread's frees into spans it filled earlier are local pushes too
//! (as mimalloc's pages stay with their thread). See `lib.rs` for an overview.
//!
//! Each [`Bin`] holds the current span's local free list and its address range. An empty bin
//! (no span) has a null list and an empty range, so the fast paths need no separate test for
//! "no span": allocation finds the list empty, and the range check of a free fails.
//!
//! Retained spans sit on two lists per class: `ready` (something on the span's `free` list)
//! and `full` (nothing there; frees from other threads may be waiting on its remote list).
//! When the current span runs dry, the bin takes a ready span, else the oldest full span if
//! other threads have freed into it, else a span from the central list. The retained spans
//! of a cache are bounded by [`RETAIN_BYTES`]; past it, the oldest go back to the central
//! lists.
//!
//! The value itself is plain data without `Drop`; `global.rs` keeps one per thread in a
//! `const`-initialised thread local and flushes it at thread exit. Tests build them freely
//! over a heap of fake pages.

use crate::check::fatal;
use crate::heap::{GROWTH_MIN, Heap, LEND_MIN, Owner, growth_room};
use crate::pages::{PAGE_SIZE, Pages};
use crate::size_class::{self, CLASS_COUNT, SMALL_STEP_LIMIT, SizeClass};
use crate::span::{self, ListId, Span, SpanKind, SpanList};
use crate::sys::PageSource;
use core::ptr::{NonNull, null_mut};

/// One size class of a thread cache: its current span.
#[repr(C)]
#[derive(Debug)]
pub struct Bin {
    /// Free objects of the current span, popped by allocation, pushed by local frees.
    free: *mut u8,
    /// Address of the current span's first byte (0 with no span).
    start: usize,
    /// Bytes of the current span (0 with no span, so no address is in range).
    len: usize,
    /// The current span, or null.
    span: *mut Span,
}

impl Bin {
    const EMPTY: Bin = Bin {
        free: null_mut(),
        start: 0,
        len: 0,
        span: null_mut(),
    };
}

/// One size class's retained spans: owned, but not the current span.
struct Retained {
    /// Spans with objects on their `free` list, most recently freed into first.
    ready: SpanList,
    /// Spans with an empty `free` list, most recently retired first.
    full: SpanList,
}

impl Retained {
    const EMPTY: Retained = Retained {
        ready: SpanList::new(ListId::CacheReady),
        full: SpanList::new(ListId::CacheFull),
    };
}

/// The most span bytes a cache retains besides its current spans: room for a working set
/// of about ten thousand mixed small objects per thread. Retained spans mostly hold live
/// objects; what the bound limits is the free memory a thread can keep from the others
/// (and from the OS) until it exits or calls `flush_thread_cache`. Past it, the spans a
/// thread fills go back to the central lists as before.
pub const RETAIN_BYTES: usize = 16 << 20;

/// Freed large spans a cache keeps for its next large allocations of the same length.
const STASH_SLOTS: usize = 4;
/// The longest large span a cache stashes (1 MiB, as the page heap's large-span cache).
const STASH_MAX_PAGES: Pages = Pages(128);
/// The longest span of a growing buffer a cache stashes (8 MiB: a buffer doubled past
/// 1 MiB holds room for four times its size, up to 3 MiB past it).
const STASH_MAX_GROWN_PAGES: Pages = Pages(1024);

/// [`ThreadCache::maybe_trim`] reads the clock on one call in this many.
const TRIM_CLOCK_EVERY: u32 = 64;

/// The id of a cache that has never owned a span.
const NO_ID: usize = usize::MAX;

/// A thread's cache: the spans it owns, by size class.
#[repr(C)]
pub struct ThreadCache {
    /// First, at offset 0, so a bin's address is the cache's plus `class * 32`.
    bins: [Bin; CLASS_COUNT],
    /// A copy of the double-free key (`check::free_key`), taken when the cache first gets a
    /// span, so the free fast path reads it from the cache rather than a global.
    key: u64,
    /// The id this cache writes into the spans it owns: [`NO_ID`] until its first span
    /// (no span's owner field holds it; unowned spans hold 0).
    id: usize,
    /// Bytes of the spans on the `retained` lists.
    retained_bytes: usize,
    /// When [`ThreadCache::maybe_trim`] next looks for retained spans left wholly free
    /// (heap clock, ms).
    trim_at: u64,
    /// Calls of [`ThreadCache::maybe_trim`] (it reads the clock on some of them).
    trim_ticks: u32,
    /// Whether the stash served an allocation since the last trim.
    stash_used: bool,
    /// Large spans this thread freed (each marked stashed), oldest first, `stash_len` of
    /// them: the next large allocation of the same length takes one with no lock.
    stash: [*mut Span; STASH_SLOTS],
    stash_len: usize,
    retained: [Retained; CLASS_COUNT],
    /// Where this thread's last `realloc` that grew an object moved it: a hint (the object
    /// may be gone) that a `realloc` of this address is a buffer growing again.
    grown: usize,
    /// The stashed span last lent to a growing buffer as its room, and where it starts: a
    /// thread lends one at a time, so a buffer that keeps its room for good pins at most
    /// one stashed span (see [`ThreadCache::lend_stashed`]). A hint, checked before use.
    lent: *mut Span,
    lent_start: usize,
}

// SAFETY: the cache only holds pointers to spans and objects it owns; moving it to another
// thread (the orphan cache behind its lock) moves that ownership with it.
unsafe impl Send for ThreadCache {}

/// The byte offset in [`ThreadCache`]'s bins of the bin for each size `0..=SMALL_STEP_LIMIT`:
/// the allocation and free fast paths index it with the size itself and get the bin's
/// address in one load, where the class table needs the index arithmetic `(size + 7) / 8`
/// before its load and a multiply by the bin's size after (3 instructions fewer a side).
/// 2 KiB; `const`, so a constant size still folds to its bin.
const SMALL_BIN_OFFSET: [u16; SMALL_STEP_LIMIT + 1] = {
    let mut table = [0u16; SMALL_STEP_LIMIT + 1];
    let mut size = 0;
    while size <= SMALL_STEP_LIMIT {
        let offset = size_class::class_index_of_small(size) * core::mem::size_of::<Bin>();
        assert!(offset <= u16::MAX as usize);
        table[size] = offset as u16;
        size += 1;
    }
    table
};

/// Pops a free object from `bin`'s local list, or null.
#[inline(always)]
fn pop_from(bin: &mut Bin) -> *mut u8 {
    let obj = bin.free;
    if !obj.is_null() {
        // SAFETY: objects on the local list are free objects of the owned span.
        unsafe {
            bin.free = span::next_free(obj);
            span::mark_allocated(obj);
        }
    }
    obj
}

/// Pushes `ptr` onto `bin`'s local list if it lies in the bin's span (marking it freed with
/// `key`). Returns whether it did.
///
/// # Safety
/// As [`ThreadCache::push_if_owned`].
#[inline(always)]
unsafe fn push_if_in(bin: &mut Bin, key: u64, ptr: *mut u8) -> bool {
    if (ptr as usize).wrapping_sub(bin.start) < bin.len {
        // SAFETY: the object is in our owned span and given up by the caller.
        unsafe {
            span::mark_freed(ptr, key);
            span::set_next_free(ptr, bin.free);
        }
        bin.free = ptr;
        true
    } else {
        false
    }
}

/// Objects carved from a span's never-used tail at a time: about 4 KiB worth, at least one.
#[inline]
fn carve_batch(class: SizeClass) -> usize {
    (PAGE_SIZE / 2 / class.size()).max(1)
}

impl ThreadCache {
    /// A cache with no spans.
    pub const fn new() -> ThreadCache {
        ThreadCache {
            bins: [Bin::EMPTY; CLASS_COUNT],
            key: 0,
            id: NO_ID,
            retained_bytes: 0,
            trim_at: 0,
            trim_ticks: 0,
            stash_used: false,
            stash: [null_mut(); STASH_SLOTS],
            stash_len: 0,
            retained: [Retained::EMPTY; CLASS_COUNT],
            grown: 0,
            lent: null_mut(),
            lent_start: 0,
        }
    }

    #[inline(always)]
    fn bin(&mut self, class: SizeClass) -> &mut Bin {
        // SAFETY: a `SizeClass` always indexes the class table, which has CLASS_COUNT
        // entries (classes are made only from the table or checked lookups).
        unsafe { self.bins.get_unchecked_mut(class.index()) }
    }

    /// The bin of the class of `size`.
    ///
    /// # Safety
    /// `size <= SMALL_STEP_LIMIT`.
    #[inline(always)]
    unsafe fn small_bin(&mut self, size: usize) -> &mut Bin {
        // SAFETY: `size` indexes the table (per the caller), whose entries are byte offsets
        // of elements of `bins`.
        unsafe {
            let offset = *SMALL_BIN_OFFSET.get_unchecked(size) as usize;
            &mut *self.bins.as_mut_ptr().byte_add(offset)
        }
    }

    /// Pops a free object of `class` from the owned span, or null when there is none
    /// (then call [`ThreadCache::alloc_slow`]). No atomic, no lock.
    #[inline(always)]
    pub fn pop(&mut self, class: SizeClass) -> *mut u8 {
        pop_from(self.bin(class))
    }

    /// As [`ThreadCache::pop`] for the class of `size`, found with one table load.
    ///
    /// # Safety
    /// `size <= SMALL_STEP_LIMIT`.
    #[inline(always)]
    pub unsafe fn pop_small(&mut self, size: usize) -> *mut u8 {
        // SAFETY: per the caller.
        pop_from(unsafe { self.small_bin(size) })
    }

    /// A new object for a small object of `old_size` bytes that `realloc` moves to the class
    /// of `new_size` (below [`LEND_MIN`], so never a page span), from the owned span; null
    /// when there is none (then the general path). A growth is remembered as the growing
    /// buffer, as the general path does. No atomic, no lock.
    #[inline(always)]
    pub fn pop_for_move(&mut self, old_size: usize, new_size: usize) -> *mut u8 {
        debug_assert!(new_size < LEND_MIN);
        let new = if new_size <= SMALL_STEP_LIMIT {
            // SAFETY: checked just above.
            unsafe { self.pop_small(new_size) }
        } else {
            self.pop(size_class::class_of_medium(new_size))
        };
        if new_size > old_size {
            self.grown = new as usize;
        }
        new
    }

    /// Pushes `ptr` onto the local list of `class` if it lies in the span this cache owns for
    /// that class. Returns whether it did. No atomic, no lock.
    ///
    /// # Safety
    /// `ptr` is an object the caller gives up, allocated from this allocator (with any
    /// class: an object of another class is never in range).
    #[inline(always)]
    pub unsafe fn push_if_owned(&mut self, ptr: *mut u8, class: SizeClass) -> bool {
        let key = self.key;
        // SAFETY: per the caller.
        unsafe { push_if_in(self.bin(class), key, ptr) }
    }

    /// As [`ThreadCache::push_if_owned`] for the class of `size`, found with one table load.
    ///
    /// # Safety
    /// As [`ThreadCache::push_if_owned`], and `size <= SMALL_STEP_LIMIT`.
    #[inline(always)]
    pub unsafe fn push_if_owned_small(&mut self, ptr: *mut u8, size: usize) -> bool {
        let key = self.key;
        // SAFETY: per the caller.
        unsafe { push_if_in(self.small_bin(size), key, ptr) }
    }

    /// Whether this cache owns `span` (as its current span or a retained one).
    #[inline(always)]
    pub fn owns(&self, span: NonNull<Span>) -> bool {
        // SAFETY: a live span record (records are never unmapped).
        unsafe { span.as_ref() }.owner() == self.id
    }

    /// Allocates an object of `class` when the local list is empty: collect the current
    /// span's remote frees, else carve never-used objects, else retire the span and switch
    /// to a retained span with free objects, else to one from the central list. Null when
    /// out of memory.
    #[cold]
    #[inline(never)]
    pub fn alloc_slow<S: PageSource>(&mut self, heap: &Heap<S>, class: SizeClass) -> *mut u8 {
        let obj = self.pop(class);
        if !obj.is_null() {
            return obj;
        }
        self.maybe_trim(heap);
        if let Some(span) = NonNull::new(self.bin(class).span) {
            // SAFETY: we own the span.
            let remote = unsafe { span.as_ref().take_remote_owned() };
            if !remote.is_null() {
                self.bin(class).free = remote;
                return self.pop(class);
            }
            // SAFETY: we own the span.
            let carved = unsafe { carve(span, class) };
            if !carved.is_null() {
                self.bin(class).free = carved;
                return self.pop(class);
            }
            let next = self.take_retained(class);
            self.retire(heap, class);
            if let Some((span, free)) = next {
                self.install(class, span, free);
                return self.pop(class);
            }
        } else if let Some((span, free)) = self.take_retained(class) {
            // No current span (the last refill failed, or the cache was trimmed): retained
            // spans with free objects come before the central list.
            self.install(class, span, free);
            return self.pop(class);
        }
        heap.maybe_release();
        self.ensure_id(heap);
        let Some((span, list)) = heap.central(class).cache_span(class, &heap.backing()) else {
            return null_mut();
        };
        // SAFETY: the central list just made us the owner.
        unsafe { span.as_ref().set_owner(self.id) };
        let free = if list.is_null() {
            // SAFETY: we own the span.
            unsafe { carve(span, class) }
        } else {
            list
        };
        debug_assert!(!free.is_null(), "a lent span has a free object");
        self.install(class, span, free);
        self.pop(class)
    }

    /// Gives the cache its id and the double-free key, before it holds anything: from then
    /// on it may own spans and stash large ones, and local frees are checked against the
    /// key. Only for a cache that will be flushed (a thread's registered cache, the orphan
    /// cache, a test's).
    #[inline]
    pub fn ensure_id<S: PageSource>(&mut self, heap: &Heap<S>) {
        if self.id == NO_ID {
            self.key = crate::check::free_key();
            self.id = heap.new_cache_id();
        }
    }

    /// Makes owned `span` the current span of `class`, with its free objects `free`.
    fn install(&mut self, class: SizeClass, span: NonNull<Span>, free: *mut u8) {
        // SAFETY: a live span record.
        let s = unsafe { span.as_ref() };
        *self.bin(class) = Bin {
            free,
            start: s.start_addr(),
            len: s.bytes(),
            span: span.as_ptr(),
        };
    }

    /// Takes a retained span of `class` with free objects off its list: a ready one, else
    /// the oldest full one if other threads have freed into it. Returns it with its free
    /// objects.
    fn take_retained(&mut self, class: SizeClass) -> Option<(NonNull<Span>, *mut u8)> {
        let r = &mut self.retained[class.index()];
        let ready = r.ready.first();
        let (span, from_ready) = if !ready.is_null() {
            (ready, true)
        } else {
            let oldest = r.full.last();
            if oldest.is_null() {
                return None;
            }
            // SAFETY: a span we own, on our list.
            if !unsafe { &*oldest }.has_remote() {
                // Look at the next oldest next time.
                // SAFETY: on our full list, which this cache guards.
                unsafe {
                    r.full.remove(oldest);
                    r.full.push(oldest);
                }
                return None;
            }
            (oldest, false)
        };
        // SAFETY: a span we own, on the list we take it off; this cache guards the lists
        // and the span's `free` list.
        let free = unsafe {
            let s = &*span;
            if from_ready {
                r.ready.remove(span);
                let free = s.free.get();
                s.free.set(null_mut());
                s.free_count.set(0);
                s.freed_at.set(0);
                free
            } else {
                r.full.remove(span);
                s.take_remote_owned()
            }
        };
        // SAFETY: as above.
        self.retained_bytes -= unsafe { &*span }.bytes();
        // SAFETY: non-null.
        Some((unsafe { NonNull::new_unchecked(span) }, free))
    }

    /// Moves the current span of `class` (its local list empty) to the retained spans, or
    /// gives it back to its central list when the cache already retains [`RETAIN_BYTES`].
    ///
    /// Past the bound the span just filled goes back, not the oldest: a program cycling
    /// through a working set larger than the bound then keeps the part that fits (evicting
    /// the oldest would keep none of it, as a least-recently-used cache does under a cyclic
    /// scan).
    fn retire<S: PageSource>(&mut self, heap: &Heap<S>, class: SizeClass) {
        let bin = self.bin(class);
        debug_assert!(bin.free.is_null());
        let (span, len) = (bin.span, bin.len);
        let Some(span) = NonNull::new(span) else {
            return;
        };
        if self.retained_bytes + len > RETAIN_BYTES {
            self.give_back(heap, class);
            return;
        }
        self.retained_bytes += len;
        *self.bin(class) = Bin::EMPTY;
        // SAFETY: we own the span; it is on no list. `freed_at` is ours to use (see `trim`).
        unsafe {
            span.as_ref().freed_at.set(0);
            self.retained[class.index()].full.push(span.as_ptr());
        }
    }

    /// Gives retained span `span` of `class` back to its central list.
    ///
    /// # Safety
    /// `span` is on one of this cache's retained lists of `class`.
    unsafe fn give_back_retained<S: PageSource>(
        &mut self,
        heap: &Heap<S>,
        class: SizeClass,
        span: NonNull<Span>,
    ) {
        // SAFETY: per the caller.
        unsafe { self.give_back_retained_at(heap, class, span, heap.backing()) }
    }

    /// As [`ThreadCache::give_back_retained`], with the decay stamp in `backing`.
    ///
    /// # Safety
    /// As [`ThreadCache::give_back_retained`].
    unsafe fn give_back_retained_at<S: PageSource>(
        &mut self,
        heap: &Heap<S>,
        class: SizeClass,
        span: NonNull<Span>,
        backing: crate::central_free_list::Backing<'_, S>,
    ) {
        let r = &mut self.retained[class.index()];
        // SAFETY: per the caller; this cache guards the lists and the span's free list.
        let (free, count) = unsafe {
            let s = span.as_ref();
            match s.list() {
                ListId::CacheReady => r.ready.remove(span.as_ptr()),
                _ => r.full.remove(span.as_ptr()),
            }
            let free = s.free.get();
            let count = s.free_count.get() as usize;
            s.free.set(null_mut());
            s.free_count.set(0);
            (free, count)
        };
        // SAFETY: as above.
        self.retained_bytes -= unsafe { span.as_ref() }.bytes();
        // SAFETY: we own the span and give it up with all our free objects of it.
        unsafe { disown_at(heap, class, span, free, count, backing) };
    }

    /// Gives back the retained spans that have been wholly free (by any thread's frees)
    /// for the heap's decay time, when a look is due (every quarter of the decay time, at
    /// most every millisecond). Called from the cache's slow paths and large allocations,
    /// so a thread that freed a working set and then runs on with little allocation does
    /// not keep it. Uses the heap's last clock reading, and reads the clock itself on one
    /// call in `TRIM_CLOCK_EVERY` (paths like cached large allocations read none); a few
    /// instructions when not due.
    #[inline]
    pub fn maybe_trim<S: PageSource>(&mut self, heap: &Heap<S>) {
        if self.retained_bytes == 0 && self.stash_len == 0 {
            return;
        }
        self.trim_ticks = self.trim_ticks.wrapping_add(1);
        let now = if self.trim_ticks % TRIM_CLOCK_EVERY == 0 {
            heap.now()
        } else {
            heap.recent_now()
        };
        if now >= self.trim_at {
            self.trim(heap, now, false);
        }
    }

    /// Gives back every retained span that is wholly free (by any thread's frees), now
    /// (`release_free_memory`).
    pub fn trim_now<S: PageSource>(&mut self, heap: &Heap<S>) {
        self.trim(heap, heap.now(), true);
    }

    /// Gives back the retained spans wholly free for the decay time (`all`: every wholly
    /// free one), stamping those newly found wholly free.
    #[cold]
    #[inline(never)]
    fn trim<S: PageSource>(&mut self, heap: &Heap<S>, now: u64, all: bool) {
        let decay = heap.decay_ms();
        self.trim_at = now + (decay.max(0) as u64 / 4).max(1);
        if decay < 0 && !all {
            return;
        }
        // A stash that served nothing for a quarter decay goes back whole.
        if all || !core::mem::take(&mut self.stash_used) {
            self.free_stash(heap);
        }
        for class in SizeClass::all() {
            // Both lists: a full span may be wholly free by other threads' frees.
            for first in [
                self.retained[class.index()].ready.first(),
                self.retained[class.index()].full.first(),
            ] {
                self.trim_list(heap, class, first, now, decay, all);
            }
        }
    }

    /// [`ThreadCache::trim`] over one retained list of `class`, from `first`.
    fn trim_list<S: PageSource>(
        &mut self,
        heap: &Heap<S>,
        class: SizeClass,
        first: *mut Span,
        now: u64,
        decay: i64,
        all: bool,
    ) {
        let mut at = first;
        while let Some(span) = NonNull::new(at) {
            // SAFETY: a span on our list; this cache guards the links and fields.
            let s = unsafe { span.as_ref() };
            // SAFETY: as above.
            at = unsafe { s.next_on_list() };
            // Free objects: ours on its list, and other threads' on its remote list.
            // SAFETY: as above.
            let (count, since) = unsafe {
                (
                    s.free_count.get() as usize + Span::owned_remote_len(s.remote_word()),
                    s.freed_at.get(),
                )
            };
            if count != s.capacity() {
                // SAFETY: as above.
                unsafe { s.freed_at.set(0) };
            } else if all {
                // SAFETY: on our list of `class`.
                unsafe { self.give_back_retained(heap, class, span) };
            } else if since == 0 {
                // Wholly free since at most a quarter decay ago: stamp it.
                // SAFETY: as above.
                unsafe { s.freed_at.set(now.max(1)) };
            } else if now.saturating_sub(since) >= decay as u64 {
                let mut backing = heap.backing();
                backing.now = since;
                // SAFETY: on our list of `class`.
                unsafe { self.give_back_retained_at(heap, class, span, backing) };
            }
        }
    }

    /// A large object of `size` bytes aligned to `align` from a stashed span of exactly the
    /// pages it needs (no lock), or `None`.
    #[inline]
    pub fn alloc_large_stashed(&mut self, size: usize, align: usize) -> Option<*mut u8> {
        let pages = Pages::for_bytes(size)?;
        let i = self.stash[..self.stash_len].iter().rposition(|&s| {
            // SAFETY: stashed spans are live large spans this cache holds.
            let s = unsafe { &*s };
            s.pages() == pages && s.start_addr() % align == 0
        })?;
        let span = self.stash[i];
        self.stash.copy_within(i + 1..self.stash_len, i);
        self.stash_len -= 1;
        self.stash_used = true;
        // SAFETY: we stashed it; its object is ours to hand out again.
        unsafe {
            (*span).unstash_large();
            Some((*span).start_addr() as *mut u8)
        }
    }

    /// The start of a stashed span with at least `room` bytes aligned to `align` (the
    /// shortest such), handed out as a growing buffer's room: its next growths then need no
    /// lock, as a buffer freed and built again each round finds its last round's span. Only
    /// while no earlier lent span is still out: a buffer that keeps a lent span for good
    /// (one that stops growing and lives on) pins at most that one span, up to
    /// `STASH_MAX_GROWN_PAGES`, until it is freed.
    fn lend_stashed(&mut self, room: usize, align: usize) -> Option<*mut u8> {
        if !self.lent.is_null() {
            // SAFETY: span records are never unmapped; the fields read are atomics.
            let s = unsafe { &*self.lent };
            // Still a live large object at the start we lent (or another that took its
            // place: lending waits for it too, the safe side).
            if s.kind() == SpanKind::Large
                && s.start_addr() == self.lent_start
                && !s.is_stashed_large()
            {
                return None;
            }
            self.lent = null_mut();
        }
        let mut best = None;
        let mut best_bytes = usize::MAX;
        for (i, &s) in self.stash[..self.stash_len].iter().enumerate() {
            // SAFETY: stashed spans are live large spans this cache holds.
            let s = unsafe { &*s };
            let bytes = s.bytes();
            if bytes >= room && bytes < best_bytes && s.start_addr() % align == 0 {
                best = Some(i);
                best_bytes = bytes;
            }
        }
        let i = best?;
        let span = self.stash[i];
        // Keep the rest oldest first (at most three moves).
        for j in i + 1..self.stash_len {
            self.stash[j - 1] = self.stash[j];
        }
        self.stash_len -= 1;
        self.stash_used = true;
        // SAFETY: we stashed it; its object is ours to hand out again.
        let start = unsafe {
            (*span).unstash_large();
            (*span).start_addr()
        };
        self.lent = span;
        self.lent_start = start;
        Some(start as *mut u8)
    }

    /// Forgets the lent span if `span` is it: its buffer is being freed or moved off, so the
    /// next growing buffer may be lent a span again.
    #[inline]
    fn forget_lent(&mut self, span: NonNull<Span>) {
        if span.as_ptr() == self.lent {
            self.lent = null_mut();
        }
    }

    /// Frees the large object of `span`: into the stash if it is short enough (the oldest
    /// stashed span goes back to the page heap when the stash is full), else to the page
    /// heap. Stops the process on a double free.
    ///
    /// # Safety
    /// `span` holds a live large object the caller gives up.
    #[inline(never)]
    pub unsafe fn free_large<S: PageSource>(&mut self, heap: &Heap<S>, span: NonNull<Span>) {
        // SAFETY: a live span record.
        let s = unsafe { span.as_ref() };
        self.forget_lent(span);
        // The growing buffer's span (room included) is kept up to a longer bound: the next
        // buffer is lent it (`lend_stashed`). A cache that never took a span may be one
        // with no exit flush (a FRESH thread's, freeing): it must hold nothing.
        let max = if s.start_addr() == self.grown {
            STASH_MAX_GROWN_PAGES
        } else {
            STASH_MAX_PAGES
        };
        if s.pages() > max || self.id == NO_ID {
            // SAFETY: per the caller.
            return unsafe { heap.free_large(span) };
        }
        if !s.stash_large() {
            fatal("double free detected");
        }
        if self.stash_len == STASH_SLOTS {
            let oldest = self.stash[0];
            self.stash.copy_within(1.., 0);
            self.stash_len -= 1;
            // SAFETY: we stashed it; its object is free.
            unsafe {
                (*oldest).unstash_large();
                heap.free_large(NonNull::new_unchecked(oldest));
            }
        }
        self.stash[self.stash_len] = span.as_ptr();
        self.stash_len += 1;
    }

    /// Gives every stashed large span back to the page heap.
    fn free_stash<S: PageSource>(&mut self, heap: &Heap<S>) {
        for &span in &self.stash[..self.stash_len] {
            // SAFETY: we stashed it; its object is free.
            unsafe {
                (*span).unstash_large();
                heap.free_large(NonNull::new_unchecked(span));
            }
        }
        self.stash_len = 0;
    }

    /// Bytes of the stashed large spans (for statistics).
    pub fn stashed_bytes(&self) -> usize {
        self.stash[..self.stash_len]
            .iter()
            // SAFETY: stashed spans are live large spans this cache holds.
            .map(|&s| unsafe { &*s }.bytes())
            .sum()
    }

    /// Pushes `ptr`, an object of `span`, a retained span of this cache, onto the span's
    /// free list (making the span ready if it was full).
    ///
    /// # Safety
    /// This cache owns `span` and it is not the current span of its class; `ptr` is an
    /// object of it that the caller gives up.
    #[inline(always)]
    unsafe fn push_retained(&mut self, span: NonNull<Span>, ptr: *mut u8) {
        // SAFETY: per the caller; this cache guards the span's free list and its lists.
        unsafe {
            let s = span.as_ref();
            span::mark_freed(ptr, self.key);
            let head = s.free.get();
            span::set_next_free(ptr, head);
            s.free.set(ptr);
            s.free_count.set(s.free_count.get() + 1);
            if head.is_null() {
                self.make_ready(span);
            }
        }
    }

    /// Moves retained span `span` from its class's full list to the ready list.
    ///
    /// # Safety
    /// `span` is on this cache's full list of its class.
    #[inline(never)]
    unsafe fn make_ready(&mut self, span: NonNull<Span>) {
        // SAFETY: a live span record.
        let r = &mut self.retained[unsafe { span.as_ref() }.class().index()];
        // SAFETY: per the caller; this cache guards its lists.
        unsafe {
            r.full.remove(span.as_ptr());
            r.ready.push(span.as_ptr());
        }
    }

    /// Returns the current span of `class` (if any) to its central list with the local list.
    fn give_back<S: PageSource>(&mut self, heap: &Heap<S>, class: SizeClass) {
        let bin = core::mem::replace(self.bin(class), Bin::EMPTY);
        if let Some(span) = NonNull::new(bin.span) {
            // SAFETY: the local list holds free objects of the span only.
            let count = unsafe { span::list_len(bin.free) };
            // SAFETY: we owned the span and give it up with all our free objects of it.
            unsafe { disown(heap, class, span, bin.free, count) };
        }
    }

    /// Gives every owned span back to the central lists (thread exit, or
    /// `flush_thread_cache`). The cache stays usable.
    pub fn flush<S: PageSource>(&mut self, heap: &Heap<S>) {
        for class in SizeClass::all() {
            self.give_back(heap, class);
            loop {
                let r = &self.retained[class.index()];
                let Some(span) = NonNull::new(r.ready.first()).or(NonNull::new(r.full.first()))
                else {
                    break;
                };
                // SAFETY: a retained span of `class`.
                unsafe { self.give_back_retained(heap, class, span) };
            }
        }
        debug_assert_eq!(self.retained_bytes, 0);
        self.free_stash(heap);
        heap.maybe_release();
    }

    /// For every owned span, its class and its free objects (local list, never-used tail,
    /// and frees from other threads not yet collected), for statistics.
    pub fn owned_spans(&self) -> impl Iterator<Item = (SizeClass, usize)> + '_ {
        SizeClass::all().flat_map(move |class| {
            let bin = &self.bins[class.index()];
            let r = &self.retained[class.index()];
            // SAFETY: the lists belong to this cache and it owns their spans, so this thread
            // guards them and each span's `bump` and `free`.
            let retained = unsafe { r.ready.iter().chain(r.full.iter()) }.map(move |s| {
                // SAFETY: as above.
                (class, unsafe { free_objects(&*s, (*s).free.get()) })
            });
            NonNull::new(bin.span)
                .map(|s| {
                    // SAFETY: as above.
                    (class, unsafe { free_objects(s.as_ref(), bin.free) })
                })
                .into_iter()
                .chain(retained)
        })
    }

    // ---------------------------------------------------------------------------------
    // Whole operations over a heap, as the global allocator and the C ABI use them.

    /// Allocates `size` bytes aligned to `align` (a power of two). Null when out of memory.
    #[inline]
    pub fn alloc<S: PageSource>(&mut self, heap: &Heap<S>, size: usize, align: usize) -> *mut u8 {
        match size_class::class_for(size, align) {
            Some(class) => {
                let obj = self.pop(class);
                if !obj.is_null() {
                    return obj;
                }
                self.alloc_slow(heap, class)
            }
            None => match self.alloc_large_stashed(size, align) {
                Some(p) => p,
                None => heap
                    .alloc_large(size, align)
                    .map_or(null_mut(), |(p, _)| p.as_ptr()),
            },
        }
    }

    /// As [`ThreadCache::alloc`], with the first `size` bytes zero. Large objects fresh from
    /// the OS (or given back to it and not reused since) are not cleared again.
    pub fn alloc_zeroed<S: PageSource>(
        &mut self,
        heap: &Heap<S>,
        size: usize,
        align: usize,
    ) -> *mut u8 {
        match size_class::class_for(size, align) {
            Some(_) => {
                let p = self.alloc(heap, size, align);
                if !p.is_null() {
                    // SAFETY: `p` is a new object of at least `size` bytes.
                    unsafe { core::ptr::write_bytes(p, 0, size) };
                }
                p
            }
            None => match heap.alloc_large(size, align) {
                Some((p, zeroed)) => {
                    if !zeroed {
                        // SAFETY: a new large object of at least `size` bytes.
                        unsafe { core::ptr::write_bytes(p.as_ptr(), 0, size) };
                    }
                    p.as_ptr()
                }
                None => null_mut(),
            },
        }
    }

    /// Frees `ptr` given the size and alignment it was allocated with.
    ///
    /// # Safety
    /// `ptr` was returned by an allocation of this heap with this `size` and `align`, and is
    /// not used afterwards.
    #[inline]
    pub unsafe fn dealloc<S: PageSource>(
        &mut self,
        heap: &Heap<S>,
        ptr: *mut u8,
        size: usize,
        align: usize,
    ) {
        if let Some(class) = size_class::class_for(size, align) {
            // SAFETY: per the caller.
            if unsafe { self.push_if_owned(ptr, class) } {
                return;
            }
        }
        // SAFETY: per the caller.
        unsafe { self.dealloc_slow(heap, ptr, size, align) }
    }

    /// [`ThreadCache::dealloc`] once the owned span of the size's class has been ruled out:
    /// finds the span in the page map. In debug builds, checks the layout's class.
    ///
    /// # Safety
    /// As [`ThreadCache::dealloc`].
    #[inline]
    pub unsafe fn dealloc_slow<S: PageSource>(
        &mut self,
        heap: &Heap<S>,
        ptr: *mut u8,
        size: usize,
        align: usize,
    ) {
        if cfg!(debug_assertions) {
            if let (Some(class), Owner::Small(span)) =
                (size_class::class_for(size, align), heap.owner(ptr))
            {
                // SAFETY: validated by `owner`.
                if unsafe { span.as_ref() }.class() != class {
                    fatal("dealloc with a layout of another size class than alloc");
                }
            }
        }
        // SAFETY: per the caller.
        unsafe { self.free(heap, ptr) }
    }

    /// Frees `ptr` without knowing its size (C `free`). Stops the process with a message on
    /// a pointer this heap did not hand out, where the page map can tell.
    ///
    /// # Safety
    /// `ptr` is non-null, and if it was handed out by this heap, it is not used afterwards.
    #[inline]
    pub unsafe fn free<S: PageSource>(&mut self, heap: &Heap<S>, ptr: *mut u8) {
        // SAFETY: per the caller; `owner` validated the pointer.
        unsafe { self.free_owned(heap, heap.owner(ptr), ptr) }
    }

    /// As [`ThreadCache::free`], with `owner` what `heap.owner(ptr)` answered.
    ///
    /// # Safety
    /// As [`ThreadCache::free`].
    #[inline(always)]
    unsafe fn free_owned<S: PageSource>(&mut self, heap: &Heap<S>, owner: Owner, ptr: *mut u8) {
        match owner {
            Owner::Small(span) if self.owns(span) => {
                // SAFETY: validated by `owner`: a live small span holding object `ptr`.
                let class = unsafe { span.as_ref() }.class();
                let key = self.key;
                let bin = self.bin(class);
                if bin.span == span.as_ptr() {
                    // SAFETY: an object of our current span, given up by the caller.
                    unsafe {
                        span::mark_freed(ptr, key);
                        span::set_next_free(ptr, bin.free);
                    }
                    bin.free = ptr;
                } else {
                    // SAFETY: an object of a span we retain, given up by the caller.
                    unsafe { self.push_retained(span, ptr) };
                }
            }
            // SAFETY: an object of a span we do not own, given up by the caller.
            Owner::Small(span) => unsafe { heap.free_remote(span, ptr) },
            // SAFETY: validated by `owner`; the caller gives the object up.
            Owner::Large(span) => unsafe { self.free_large(heap, span) },
        }
    }

    /// Resizes `ptr` (allocated with `align`) to `new_size` bytes: in place when the new size
    /// keeps the small object's class, or fits the page span's object with at most half of
    /// it wasted (as mimalloc does) or as the growing buffer's headroom, or when the page
    /// span can grow into a free run after it; otherwise moved. Growth into the large tier,
    /// and a buffer that keeps growing, move to a page span with headroom (see
    /// [`growth_room`]). Returns null (leaving `ptr` intact) when out of memory.
    ///
    /// # Safety
    /// `ptr` was handed out by this heap with alignment `align`, and is not used afterwards
    /// unless null is returned.
    pub unsafe fn realloc<S: PageSource>(
        &mut self,
        heap: &Heap<S>,
        ptr: *mut u8,
        align: usize,
        new_size: usize,
    ) -> *mut u8 {
        let owner = heap.owner(ptr);
        let (old_usable, old_span) = match owner {
            // SAFETY: validated by `owner`.
            Owner::Small(span) => (unsafe { span.as_ref() }.class().size(), None),
            // SAFETY: validated by `owner`.
            Owner::Large(span) => (unsafe { span.as_ref() }.bytes(), Some(span)),
        };
        let new_class = size_class::class_for(new_size, align);
        // The buffer this thread is growing (a hint: it can be stale, and then an object
        // merely keeps its room).
        let growing_buffer = ptr as usize == self.grown;
        // The room the new size needs: its class's size, as `GlobalAlloc::realloc`'s
        // same-class shortcut assumes.
        let fits = new_class.map_or(new_size, |c| c.size());
        match old_span {
            // A small object stays only in its own class (so a layout always names the
            // class of the span that holds the object, as the debug-build check expects).
            None if new_class.is_some_and(|c| c.size() == old_usable) => return ptr,
            // A page span holds it and wastes at most half (mimalloc's rule), or it is the
            // growing buffer in its headroom.
            Some(_) if fits <= old_usable && (growing_buffer || new_size >= old_usable / 2) => {
                return ptr;
            }
            // Within the large tier, or growing: in place if its pages (and a free run after
            // them) allow.
            Some(span)
                if (new_class.is_none() || fits > old_usable)
                    // SAFETY: we own the large object; its alignment is unchanged.
                    && unsafe { heap.resize_large_in_place(span, fits) } =>
            {
                return ptr;
            }
            _ => {}
        }
        let growing = new_size > old_usable;
        // Growing into the large tier, or the buffer this thread moved by growth before and
        // grows again: a page span with room for GROWTH_HEADROOM times the new size, that
        // can grow in place further (its pages past the object stay untouched). It moves
        // once where it would move at every class, and later growths take no lock. The
        // stash's spans count as room: they go back to the page heap first.
        let to_pages =
            growing && (new_class.is_none() || (growing_buffer && new_size >= GROWTH_MIN));
        // From LEND_MIN the growing buffer takes a lent stashed span if there is one: its
        // pages are resident already, and one lent span at a time bounds what it can pin.
        let lend = growing && growing_buffer && new_size >= LEND_MIN;
        let room = growth_room(new_size);
        let lent = if lend {
            self.lend_stashed(room, align)
        } else {
            None
        };
        let new = match lent {
            Some(p) => p,
            None if to_pages => {
                self.free_stash(heap);
                // Out of memory for the headroom is not out of memory: then the size.
                heap.alloc_large_to_grow(room, align)
                    .or_else(|| heap.alloc_large_to_grow(new_size, align))
                    .map_or(null_mut(), |(p, _)| p.as_ptr())
            }
            None => self.alloc(heap, new_size, align),
        };
        if new.is_null() {
            return new;
        }
        if growing {
            self.grown = new as usize;
        }
        // SAFETY: both are live, distinct objects of at least the copied length.
        unsafe {
            core::ptr::copy_nonoverlapping(ptr, new, old_usable.min(new_size));
            match old_span {
                // A large object that moved goes to the page heap, not the stash: its
                // pages may be the room the next growth needs.
                Some(span) => {
                    self.forget_lent(span);
                    heap.free_large(span)
                }
                None => self.free_owned(heap, owner, ptr),
            }
        }
        new
    }
}

impl Default for ThreadCache {
    fn default() -> Self {
        Self::new()
    }
}

/// Gives owned `span` of `class` up to its central list, with `free`, our `count` free
/// objects of it.
///
/// # Safety
/// This cache owns `span`, which is on none of its lists, and `free` holds exactly the
/// cache's free objects of it.
unsafe fn disown<S: PageSource>(
    heap: &Heap<S>,
    class: SizeClass,
    span: NonNull<Span>,
    free: *mut u8,
    count: usize,
) {
    // SAFETY: per the caller.
    unsafe { disown_at(heap, class, span, free, count, heap.backing()) }
}

/// As [`disown`], with the page heap's decay stamp in `backing` (when the span, if wholly
/// free, became free).
///
/// # Safety
/// As [`disown`].
unsafe fn disown_at<S: PageSource>(
    heap: &Heap<S>,
    class: SizeClass,
    span: NonNull<Span>,
    free: *mut u8,
    count: usize,
    backing: crate::central_free_list::Backing<'_, S>,
) {
    // SAFETY: per the caller.
    unsafe {
        span.as_ref().set_owner(0);
        heap.central(class)
            .uncache_span(span, free, count, &backing);
    }
}

/// Free objects of owned span `s` whose owner's list of them is `list`: the list, the
/// never-used tail and the remote list.
///
/// # Safety
/// The caller's cache owns `s`, and `list` is its free list of it.
unsafe fn free_objects(s: &Span, list: *mut u8) -> usize {
    // SAFETY: per the caller: the owner guards `bump` and its list; the remote count is read
    // atomically.
    unsafe {
        let tail = s.capacity() - s.bump.get() as usize;
        span::list_len(list) + tail + Span::owned_remote_len(s.remote_word())
    }
}

/// Links up to [`carve_batch`] never-used objects of owned span `span` into a list, in
/// address order. Null when the span has no never-used object.
///
/// # Safety
/// The calling thread cache owns `span`.
unsafe fn carve(span: NonNull<Span>, class: SizeClass) -> *mut u8 {
    // SAFETY: per the caller.
    let s = unsafe { span.as_ref() };
    // SAFETY: the owner guards `bump`.
    let bump = unsafe { s.bump.get() } as usize;
    let n = (class.objects() - bump).min(carve_batch(class));
    if n == 0 {
        return null_mut();
    }
    let size = class.size();
    let first = s.start_addr() + bump * size;
    for i in 0..n {
        let obj = (first + i * size) as *mut u8;
        let next = if i + 1 < n {
            (first + (i + 1) * size) as *mut u8
        } else {
            null_mut()
        };
        // SAFETY: never-used objects of our owned span.
        unsafe { span::set_next_free(obj, next) };
    }
    // SAFETY: the owner guards `bump`.
    unsafe { s.bump.set((bump + n) as u32) };
    first as *mut u8
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::heap::tests::heap;
    use crate::heap::{GROWTH_HEADROOM, GROWTH_HEADROOM_MAX};
    use crate::sys::FakePages;
    use std::collections::BTreeMap;

    /// A tiny deterministic generator (xorshift), so failures replay.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    /// Live blocks: start -> (size, fill byte). Checks no overlap and contents.
    #[derive(Default)]
    struct Shadow(BTreeMap<usize, (usize, u8)>);
    impl Shadow {
        fn add(&mut self, p: *mut u8, size: usize, fill: u8) {
            let a = p as usize;
            if let Some((&b, &(bs, _))) = self.0.range(..=a).next_back() {
                assert!(b + bs.max(1) <= a, "new block {a:#x} overlaps {b:#x}+{bs}");
            }
            if let Some((&b, _)) = self.0.range(a..).next() {
                assert!(
                    a + size.max(1) <= b,
                    "new block {a:#x}+{size} overlaps {b:#x}"
                );
            }
            // SAFETY: a fresh block of `size` bytes.
            unsafe { core::ptr::write_bytes(p, fill, size) };
            self.0.insert(a, (size, fill));
        }
        fn check(&self, a: usize) {
            let (size, fill) = self.0[&a];
            // SAFETY: a live block.
            let bytes = unsafe { core::slice::from_raw_parts(a as *const u8, size) };
            assert!(
                bytes.iter().all(|&b| b == fill),
                "block {a:#x}+{size} corrupted"
            );
        }
    }

    fn random_size(rng: &mut Rng) -> usize {
        match rng.below(10) {
            0..=5 => rng.below(256) as usize,
            6..=8 => rng.below(32 * 1024) as usize,
            _ => rng.below(600 * 1024) as usize,
        }
    }

    #[test]
    fn the_direct_bin_table_agrees_with_the_class_table() {
        let heap = heap();
        let mut cache = Box::new(ThreadCache::new());
        for size in 0..=SMALL_STEP_LIMIT {
            let class = size_class::class_of_small(size);
            let by_class: *mut Bin = cache.bin(class);
            // SAFETY: a small size.
            let by_size: *mut Bin = unsafe { cache.small_bin(size) };
            assert_eq!(by_size, by_class, "size {size}");
        }
        // The two fast paths serve and take back objects of the size's class.
        for size in [0, 1, 8, 9, 16, 17, 24, 25, 100, 512, 1000, 1024] {
            let p = cache.alloc(&heap, size, 8);
            assert!(!p.is_null());
            // SAFETY: `p` is live, of `class`, and given up.
            assert!(unsafe { cache.push_if_owned_small(p, size) });
            // SAFETY: a small size.
            assert_eq!(unsafe { cache.pop_small(size) }, p, "size {size}");
            // SAFETY: `p` is live and given up.
            unsafe { cache.free(&heap, p) };
        }
        cache.flush(&heap);
    }

    #[test]
    fn one_cache_against_a_shadow_model() {
        let heap = heap();
        let mut cache = ThreadCache::new();
        let mut rng = Rng(0x9e3779b97f4a7c15);
        let mut shadow = Shadow::default();
        let mut live: Vec<(usize, usize, usize)> = Vec::new(); // (addr, size, align)
        for step in 0..40_000 {
            if live.is_empty() || rng.below(100) < 55 {
                let size = random_size(&mut rng);
                let shift_range = if rng.below(10) == 0 { 16 } else { 4 };
                let align = 1usize << rng.below(shift_range);
                let p = if rng.below(4) == 0 {
                    let p = cache.alloc_zeroed(&heap, size, align);
                    // SAFETY: a fresh block of `size` bytes.
                    let bytes = unsafe { core::slice::from_raw_parts(p, size) };
                    assert!(bytes.iter().all(|&b| b == 0));
                    p
                } else {
                    cache.alloc(&heap, size, align)
                };
                assert!(!p.is_null());
                assert_eq!(p as usize % align, 0, "alignment {align}");
                assert!(heap.usable_size(p) >= size);
                shadow.add(p, size, step as u8);
                live.push((p as usize, size, align));
            } else {
                let i = rng.below(live.len() as u64) as usize;
                let (a, size, align) = live.swap_remove(i);
                shadow.check(a);
                shadow.0.remove(&a);
                if rng.below(5) == 0 {
                    let new_size = random_size(&mut rng);
                    // SAFETY: a live block of ours with this alignment.
                    let p = unsafe { cache.realloc(&heap, a as *mut u8, align, new_size) };
                    assert!(!p.is_null());
                    assert_eq!(p as usize % align, 0);
                    let kept = size.min(new_size);
                    // SAFETY: the first `kept` bytes were kept.
                    let bytes = unsafe { core::slice::from_raw_parts(p, kept) };
                    let fill = bytes.first().copied().unwrap_or(0);
                    assert!(
                        bytes.iter().all(|&b| b == fill),
                        "realloc kept the contents"
                    );
                    shadow.add(p, new_size, step as u8);
                    live.push((p as usize, new_size, align));
                } else if rng.below(2) == 0 {
                    // SAFETY: a live block of ours, freed once.
                    unsafe { cache.dealloc(&heap, a as *mut u8, size, align) };
                } else {
                    // SAFETY: as above.
                    unsafe { cache.free(&heap, a as *mut u8) };
                }
            }
            if step % 5000 == 0 {
                heap.check_invariants();
            }
        }
        for &(a, _, _) in &live {
            shadow.check(a);
        }
        for (a, size, align) in live.drain(..) {
            // SAFETY: live blocks of ours.
            unsafe { cache.dealloc(&heap, a as *mut u8, size, align) };
        }
        cache.flush(&heap);
        heap.check_invariants();
        let st = heap.page_heap_stats();
        assert_eq!(st.small_spans, 0, "every span is back in the page heap");
        assert_eq!(st.large_in_use, 0);
        assert_eq!(st.free, st.mapped);
    }

    /// Objects in use per class according to the central lists (all caches flushed).
    fn in_use_by_class(heap: &Heap<FakePages>) -> Vec<usize> {
        SizeClass::all()
            .map(|c| heap.central_stats(c).unowned_in_use)
            .collect()
    }

    #[test]
    fn caches_trading_objects_keep_every_count_exact() {
        let heap = heap();
        let mut caches: Vec<ThreadCache> = (0..4).map(|_| ThreadCache::new()).collect();
        let mut rng = Rng(12345);
        let mut live: Vec<(usize, usize)> = Vec::new(); // (addr, size)
        for round in 0..30 {
            for _ in 0..3000 {
                let who = rng.below(4) as usize;
                if live.is_empty() || rng.below(100) < 60 {
                    let size = 1 + rng.below(3000) as usize;
                    let p = caches[who].alloc(&heap, size, 8);
                    live.push((p as usize, size));
                } else {
                    // Freed by a random cache: usually not the owner, so a remote free.
                    let (a, size) = live.swap_remove(rng.below(live.len() as u64) as usize);
                    // SAFETY: a live object, freed once.
                    unsafe { caches[who].dealloc(&heap, a as *mut u8, size, 8) };
                }
            }
            // Give back: some caches flush (thread exit), the others keep their spans.
            for (i, cache) in caches.iter_mut().enumerate() {
                if (i + round) % 2 == 0 {
                    cache.flush(&heap);
                }
            }
            heap.check_invariants();
        }
        for cache in caches.iter_mut() {
            cache.flush(&heap);
        }
        heap.check_invariants();
        let mut want = vec![0usize; CLASS_COUNT - 1];
        for &(_, size) in &live {
            want[size_class::class_of(size).unwrap().index() - 1] += 1;
        }
        assert_eq!(
            in_use_by_class(&heap),
            want,
            "objects in use per class are exact"
        );
        for (a, size) in live.drain(..) {
            // SAFETY: live objects, freed once.
            unsafe { caches[0].dealloc(&heap, a as *mut u8, size, 8) };
        }
        caches[0].flush(&heap);
        heap.check_invariants();
        assert!(in_use_by_class(&heap).iter().all(|&n| n == 0));
        assert_eq!(
            heap.page_heap_stats().small_spans,
            0,
            "every span back in the page heap"
        );
    }

    #[test]
    fn caches_on_threads_passing_objects_keep_every_count_exact() {
        let heap: &'static Heap<FakePages> = Box::leak(heap());
        let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<(usize, usize)>>(4);
        let producer = std::thread::spawn(move || {
            let mut cache = ThreadCache::new();
            let mut rng = Rng(99);
            for _ in 0..200 {
                let batch: Vec<_> = (0..500)
                    .map(|_| {
                        let size = 1 + rng.below(2000) as usize;
                        let p = cache.alloc(heap, size, 8);
                        // SAFETY: a fresh object of `size` bytes.
                        unsafe { p.write_bytes(size as u8, size) };
                        (p as usize, size)
                    })
                    .collect();
                tx.send(batch).unwrap();
            }
            cache.flush(heap);
        });
        let consumer = std::thread::spawn(move || {
            let mut cache = ThreadCache::new();
            for batch in rx {
                for (a, size) in batch {
                    // SAFETY: the producer's object, now ours.
                    let bytes = unsafe { core::slice::from_raw_parts(a as *const u8, size) };
                    assert!(bytes.iter().all(|&b| b == size as u8), "contents kept");
                    // SAFETY: freed once.
                    unsafe { cache.dealloc(heap, a as *mut u8, size, 8) };
                }
            }
            cache.flush(heap);
        });
        producer.join().unwrap();
        consumer.join().unwrap();
        heap.check_invariants();
        assert!(in_use_by_class(heap).iter().all(|&n| n == 0));
        assert_eq!(heap.page_heap_stats().small_spans, 0);
    }

    #[test]
    fn failing_source_gives_null_and_the_heap_stays_sound() {
        let heap = heap();
        let mut cache = ThreadCache::new();
        let keep: Vec<_> = (0..100).map(|_| cache.alloc(&heap, 200, 8)).collect();
        heap.source().fail_after(0);
        let mut got = Vec::new();
        loop {
            let p = cache.alloc(&heap, 200, 8);
            if p.is_null() {
                break;
            }
            got.push(p);
        }
        assert!(cache.alloc(&heap, 100_000, 8).is_null(), "large fails too");
        assert!(cache.alloc_zeroed(&heap, 5000, 8).is_null());
        heap.check_invariants();
        heap.source().heal();
        assert!(!cache.alloc(&heap, 100_000, 8).is_null(), "and recovers");
        for p in keep.into_iter().chain(got) {
            // SAFETY: live objects, freed once.
            unsafe { cache.free(&heap, p) };
        }
        cache.flush(&heap);
        heap.check_invariants();
        assert_eq!(heap.page_heap_stats().small_spans, 0);
    }

    /// Spans of `class` on the central lists (partial + full), and spans in all.
    fn listed_and_total(heap: &Heap<FakePages>, class: SizeClass) -> (usize, usize) {
        let c = heap.central_stats(class);
        (c.partial_spans + c.full_spans, c.spans)
    }

    #[test]
    fn own_frees_into_earlier_spans_stay_in_the_cache() {
        let heap = heap();
        let mut cache = ThreadCache::new();
        let class = size_class::class_of(64).unwrap();
        let n = class.objects() * 8;
        let objs: Vec<*mut u8> = (0..n).map(|_| cache.alloc(&heap, 64, 8)).collect();
        let (listed, spans) = listed_and_total(&heap, class);
        assert_eq!(
            (listed, spans),
            (0, 8),
            "filled spans are retained, not listed"
        );
        for &p in &objs {
            // SAFETY: live objects of ours, freed once.
            unsafe { cache.dealloc(&heap, p, 64, 8) };
        }
        heap.check_invariants();
        for s in spans_of(&heap, &objs) {
            // SAFETY: a live span record.
            let s = unsafe { &*s };
            assert_eq!(
                Span::owned_remote_len(s.remote_word()),
                0,
                "the owner's frees are local pushes, not remote ones"
            );
        }
        assert_eq!(listed_and_total(&heap, class), (0, 8));
        // The next round reuses the same objects, from the same spans.
        let again: std::collections::BTreeSet<usize> =
            (0..n).map(|_| cache.alloc(&heap, 64, 8) as usize).collect();
        let before: std::collections::BTreeSet<usize> = objs.iter().map(|&p| p as usize).collect();
        assert_eq!(again, before);
        assert_eq!(listed_and_total(&heap, class), (0, 8));
        for a in again {
            // SAFETY: live, freed once.
            unsafe { cache.free(&heap, a as *mut u8) };
        }
        cache.flush(&heap);
        heap.check_invariants();
        assert_eq!(heap.page_heap_stats().small_spans, 0);
    }

    /// The span records holding `objs`, each once.
    fn spans_of(heap: &Heap<FakePages>, objs: &[*mut u8]) -> Vec<*mut Span> {
        let mut found: Vec<*mut Span> = objs
            .iter()
            .map(|&p| heap.page_map().lookup(p as usize))
            .collect();
        found.sort();
        found.dedup();
        found
    }

    #[test]
    fn retained_spans_are_bounded() {
        let heap = heap();
        let mut cache = ThreadCache::new();
        let class = size_class::class_of(1024).unwrap();
        let span_bytes = class.pages().bytes();
        let n = (2 * RETAIN_BYTES / span_bytes + 3) * class.objects();
        let objs: Vec<*mut u8> = (0..n).map(|_| cache.alloc(&heap, 1024, 8)).collect();
        assert!(cache.retained_bytes <= RETAIN_BYTES);
        assert!(
            cache.retained_bytes + span_bytes > RETAIN_BYTES,
            "the bound is used"
        );
        let (listed, spans) = listed_and_total(&heap, class);
        assert_eq!(
            listed,
            spans - 1 - cache.retained_bytes / span_bytes,
            "the spans past the bound are back on the central list"
        );
        let span_of = |p: *mut u8| NonNull::new(heap.page_map().lookup(p as usize)).unwrap();
        assert!(cache.owns(span_of(objs[0])), "the first spans filled stay");
        assert!(
            !cache.owns(span_of(objs[n - 1 - class.objects()])),
            "the spans filled past the bound go back"
        );
        assert!(cache.owns(span_of(objs[n - 1])), "the current span");
        for &p in &objs {
            // SAFETY: live objects of ours, freed once.
            unsafe { cache.dealloc(&heap, p, 1024, 8) };
        }
        heap.check_invariants();
        cache.flush(&heap);
        assert_eq!(cache.retained_bytes, 0);
        heap.check_invariants();
        assert_eq!(heap.page_heap_stats().small_spans, 0);
    }

    #[test]
    fn other_threads_frees_into_retained_spans_are_reused() {
        let heap = heap();
        let mut owner = ThreadCache::new();
        let mut other = ThreadCache::new();
        let class = size_class::class_of(256).unwrap();
        let n = class.objects() * 6;
        let objs: Vec<*mut u8> = (0..n).map(|_| owner.alloc(&heap, 256, 8)).collect();
        let spans_before = heap.central_stats(class).spans;
        // The other cache frees the objects of the owner's retained spans (remote frees).
        for &p in &objs[..n - class.objects()] {
            // SAFETY: live objects, freed once.
            unsafe { other.dealloc(&heap, p, 256, 8) };
        }
        heap.check_invariants();
        // The owner allocates them again: from its retained spans' remote lists, with no
        // new span.
        let again: Vec<*mut u8> = (0..n - class.objects())
            .map(|_| owner.alloc(&heap, 256, 8))
            .collect();
        assert_eq!(heap.central_stats(class).spans, spans_before);
        let mut a: Vec<_> = again.iter().map(|&p| p as usize).collect();
        let mut b: Vec<_> = objs[..n - class.objects()]
            .iter()
            .map(|&p| p as usize)
            .collect();
        a.sort();
        b.sort();
        assert_eq!(a, b);
        for &p in again.iter().chain(&objs[n - class.objects()..]) {
            // SAFETY: live objects, freed once.
            unsafe { other.free(&heap, p) };
        }
        owner.flush(&heap);
        other.flush(&heap);
        heap.check_invariants();
        assert_eq!(heap.page_heap_stats().small_spans, 0);
    }

    #[test]
    fn owned_spans_count_retained_spans() {
        let heap = heap();
        let mut cache = ThreadCache::new();
        let class = size_class::class_of(128).unwrap();
        let n = class.objects() * 3;
        let objs: Vec<*mut u8> = (0..n).map(|_| cache.alloc(&heap, 128, 8)).collect();
        for &p in objs.iter().step_by(2) {
            // SAFETY: live, freed once.
            unsafe { cache.dealloc(&heap, p, 128, 8) };
        }
        let owned: Vec<_> = cache.owned_spans().filter(|&(c, _)| c == class).collect();
        assert_eq!(owned.len(), 3, "the current span and two retained ones");
        let free: usize = owned.iter().map(|&(_, f)| f).sum();
        assert_eq!(free, n.div_ceil(2));
        for &p in objs.iter().skip(1).step_by(2) {
            // SAFETY: live, freed once.
            unsafe { cache.dealloc(&heap, p, 128, 8) };
        }
        cache.flush(&heap);
        heap.check_invariants();
    }

    #[test]
    fn wholly_free_retained_spans_go_back_after_the_decay_time() {
        let heap = heap();
        heap.set_fake_now(1000);
        heap.set_decay_ms(100);
        let mut cache = ThreadCache::new();
        let class = size_class::class_of(64).unwrap();
        let n = class.objects() * 4;
        let objs: Vec<*mut u8> = (0..n).map(|_| cache.alloc(&heap, 64, 8)).collect();
        // One retained span keeps a live object; the other two are left wholly free.
        let kept = objs[0];
        for &p in &objs[1..] {
            // SAFETY: live objects of ours, freed once.
            unsafe { cache.dealloc(&heap, p, 64, 8) };
        }
        let span_bytes = class.pages().bytes();
        assert_eq!(cache.retained_bytes, 3 * span_bytes);
        cache.maybe_trim(&heap);
        assert_eq!(
            cache.retained_bytes,
            3 * span_bytes,
            "first look: only noted"
        );
        heap.set_fake_now(1050);
        cache.maybe_trim(&heap);
        assert_eq!(
            cache.retained_bytes,
            3 * span_bytes,
            "not free for the decay time yet"
        );
        heap.set_fake_now(1200);
        cache.maybe_trim(&heap);
        assert_eq!(
            cache.retained_bytes, span_bytes,
            "the two wholly free spans went back"
        );
        assert_eq!(heap.central_stats(class).spans, 2, "to the page heap");
        heap.check_invariants();
        // SAFETY: live, freed once.
        unsafe { cache.dealloc(&heap, kept, 64, 8) };
        cache.flush(&heap);
        heap.check_invariants();
        assert_eq!(heap.page_heap_stats().small_spans, 0);
    }

    #[test]
    fn freed_large_spans_are_stashed_reused_and_given_back() {
        let heap = heap();
        heap.set_fake_now(1000);
        heap.set_decay_ms(100);
        let mut cache = ThreadCache::new();
        let small = cache.alloc(&heap, 64, 8); // the cache takes a span: it may stash now
        let sizes = [40 << 10, 100 << 10, 1 << 20, 300 << 10, 64 << 10, 2 << 20];
        let ptrs: Vec<*mut u8> = sizes.iter().map(|&s| cache.alloc(&heap, s, 8)).collect();
        for &p in &ptrs {
            // SAFETY: live, freed once.
            unsafe { cache.free(&heap, p) };
        }
        // 2 MiB is too long to stash; of the five others the oldest went back (4 slots).
        let bytes = |s: usize| Pages::for_bytes(s).unwrap().bytes();
        let want: usize = sizes[1..5].iter().map(|&s| bytes(s)).sum();
        assert_eq!(cache.stashed_bytes(), want);
        assert_eq!(
            heap.page_heap_stats().large_in_use,
            want,
            "stashed, not freed"
        );
        // The same length again: the same object, with no page-heap change.
        let q = cache.alloc(&heap, 300 << 10, 8);
        assert_eq!(q, ptrs[3]);
        assert_eq!(heap.page_heap_stats().large_in_use, want);
        // SAFETY: live, freed once.
        unsafe { cache.free(&heap, q) };
        // A stash that serves nothing between two looks goes back to the page heap.
        cache.maybe_trim(&heap);
        assert_eq!(cache.stashed_bytes(), want, "it served an allocation");
        heap.set_fake_now(1100);
        cache.maybe_trim(&heap);
        assert_eq!(cache.stashed_bytes(), 0);
        assert_eq!(heap.page_heap_stats().large_in_use, 0);
        // SAFETY: live, freed once.
        unsafe { cache.free(&heap, small) };
        cache.flush(&heap);
        heap.check_invariants();
    }

    #[test]
    fn a_buffer_grown_into_the_large_tier_again_and_again_reuses_its_room() {
        let heap = heap();
        let mut cache = ThreadCache::new();
        let top = size_class::class_of(size_class::MAX_SMALL_SIZE)
            .unwrap()
            .size();
        let mut starts = Vec::new();
        for _ in 0..5 {
            // From the largest class to the large tier at the same usable size (the class
            // holds exactly `top` bytes), then doubling to 1 MiB, then freed (stashed).
            let mut p = cache.alloc(&heap, top - 8, 8);
            // SAFETY: live; each result replaces the buffer.
            unsafe {
                p = cache.realloc(&heap, p, 8, top);
                starts.push(p as usize);
                let mut size = top;
                while size < 1 << 20 {
                    size *= 2;
                    p = cache.realloc(&heap, p, 8, size);
                    assert!(!p.is_null());
                }
                assert_eq!(p as usize, *starts.last().unwrap(), "grown in place");
                cache.free(&heap, p);
            }
        }
        assert!(
            starts.windows(2).all(|w| w[0] == w[1]),
            "each round reuses the last one's run: {starts:x?}"
        );
        cache.flush(&heap);
        heap.check_invariants();
    }

    /// A heap over fake pages that maps 32 MiB at a time: room for buffers of a few MiB
    /// and their headroom in one run.
    fn roomy_heap() -> Heap<FakePages> {
        Heap::with_page_heap(
            FakePages::new(),
            crate::page_heap::PageHeap::with_grow_bytes(32 << 20),
        )
    }

    /// Fills `len` bytes at `p` with a pattern from `seed`.
    fn fill(p: *mut u8, len: usize, seed: u8) {
        for i in 0..len {
            // SAFETY: the caller's live block of at least `len` bytes.
            unsafe { *p.add(i) = (i as u8).wrapping_mul(31).wrapping_add(seed) };
        }
    }

    /// Whether the `len` bytes at `p` still hold [`fill`]'s pattern.
    fn filled(p: *mut u8, len: usize, seed: u8) -> bool {
        // SAFETY: the caller's live block of at least `len` bytes.
        (0..len).all(|i| unsafe { *p.add(i) } == (i as u8).wrapping_mul(31).wrapping_add(seed))
    }

    #[test]
    fn a_buffer_that_keeps_growing_moves_once_into_a_page_span_with_headroom() {
        let heap = heap();
        let mut cache = ThreadCache::new();
        let mut p = cache.alloc(&heap, 1000, 8);
        fill(p, 1000, 7);
        // SAFETY: live; each result replaces the buffer.
        unsafe {
            // Its first growth is an ordinary move, to the exact class.
            p = cache.realloc(&heap, p, 8, 1500);
            assert_eq!(
                heap.usable_size(p),
                size_class::class_of(1500).unwrap().size()
            );
            assert!(matches!(heap.owner(p), Owner::Small(_)));
            // Moved by growth and growing again: a page span with GROWTH_HEADROOM times the
            // new size.
            p = cache.realloc(&heap, p, 8, GROWTH_MIN);
            assert!(matches!(heap.owner(p), Owner::Large(_)));
            assert_eq!(heap.usable_size(p), GROWTH_HEADROOM * GROWTH_MIN);
            assert!(filled(p, 1000, 7), "the move kept the contents");
            // The next growths fit in place.
            for size in [2 * GROWTH_MIN, GROWTH_HEADROOM * GROWTH_MIN] {
                assert_eq!(cache.realloc(&heap, p, 8, size), p, "{size} grows in place");
            }
            assert!(filled(p, 1000, 7));
            cache.free(&heap, p);
        }
        cache.flush(&heap);
        heap.check_invariants();
    }

    /// Builds a growing buffer as `Vec` does, from 1000 bytes doubling to `to`: returns it
    /// and where its page span starts (the move at GROWTH_MIN).
    fn build_buffer(
        heap: &Heap<FakePages>,
        cache: &mut ThreadCache,
        to: usize,
    ) -> (*mut u8, usize) {
        let mut p = cache.alloc(heap, 1000, 8);
        // SAFETY: live; each result replaces the buffer.
        unsafe {
            for next in [1500, GROWTH_MIN] {
                p = cache.realloc(heap, p, 8, next);
            }
            let span_start = p as usize;
            let mut size = GROWTH_MIN;
            while size < to {
                size *= 2;
                p = cache.realloc(heap, p, 8, size);
                assert!(!p.is_null());
            }
            (p, span_start)
        }
    }

    #[test]
    fn a_buffer_built_again_each_round_takes_its_last_span_from_the_stash() {
        let heap = heap();
        let mut cache = ThreadCache::new();
        let mut starts = Vec::new();
        for round in 0..4 {
            let (mut p, start) = build_buffer(&heap, &mut cache, GROWTH_MIN);
            // The first round's span is its room; later rounds are lent the whole span the
            // last round left in the stash.
            let room = if round == 0 {
                growth_room(GROWTH_MIN)
            } else {
                1 << 20
            };
            assert_eq!(heap.usable_size(p), room);
            let mut size = GROWTH_MIN;
            while size < 1 << 20 {
                size *= 2;
                // SAFETY: live; the result replaces it.
                p = unsafe { cache.realloc(&heap, p, 8, size) };
            }
            assert_eq!(
                p as usize, start,
                "grown in place from the page-span move on"
            );
            starts.push(start);
            // SAFETY: live, freed once: a 1 MiB span goes to the stash.
            unsafe { cache.free(&heap, p) };
            assert_eq!(cache.stashed_bytes(), 1 << 20);
        }
        assert!(
            starts.windows(2).all(|w| w[0] == w[1]),
            "each round is lent the last round's span: {starts:x?}"
        );
        cache.flush(&heap);
        heap.check_invariants();
    }

    #[test]
    fn the_growing_buffers_span_is_stashed_up_to_a_longer_bound() {
        let heap = roomy_heap();
        let mut cache = ThreadCache::new();
        // A 4 MiB buffer (with its room, a longer span than STASH_MAX_PAGES) is stashed...
        let (p, start) = build_buffer(&heap, &mut cache, 4 << 20);
        let span_bytes = heap.usable_size(p);
        assert!(span_bytes > STASH_MAX_PAGES.bytes());
        // SAFETY: live, freed once.
        unsafe { cache.free(&heap, p) };
        assert_eq!(cache.stashed_bytes(), span_bytes);
        // ...and lent to the next buffer.
        let (q, q_start) = build_buffer(&heap, &mut cache, GROWTH_MIN);
        assert_eq!(q_start, start);
        // Another large object of that length is not: it goes back to the page heap.
        let other = cache.alloc(&heap, 4 << 20, 8);
        // SAFETY: live, freed once.
        unsafe {
            cache.free(&heap, other);
            cache.free(&heap, q);
        }
        assert_eq!(cache.stashed_bytes(), span_bytes, "only the buffer's span");
        cache.flush(&heap);
        heap.check_invariants();
    }

    #[test]
    fn below_growth_min_the_buffer_keeps_its_class_unless_a_span_is_lent() {
        let heap = heap();
        let mut cache = ThreadCache::new();
        let grow = |cache: &mut ThreadCache| {
            let mut p = cache.alloc(&heap, 700, 8);
            // SAFETY: live; each result replaces the buffer.
            unsafe {
                for next in [1400, LEND_MIN + 100] {
                    p = cache.realloc(&heap, p, 8, next);
                }
            }
            p
        };
        // No stashed span: the growing buffer of LEND_MIN..GROWTH_MIN keeps an exact class.
        let p = grow(&mut cache);
        assert!(matches!(heap.owner(p), Owner::Small(_)));
        // With one (a freed 1 MiB object), it is lent that span: resident already.
        let big = cache.alloc(&heap, 1 << 20, 8);
        // SAFETY: live, freed once.
        unsafe { cache.free(&heap, big) };
        let q = grow(&mut cache);
        assert_eq!(q, big, "lent the stashed span");
        // SAFETY: live, freed once.
        unsafe {
            cache.free(&heap, p);
            cache.free(&heap, q);
        }
        cache.flush(&heap);
        heap.check_invariants();
    }

    #[test]
    fn a_thread_lends_one_stashed_span_at_a_time() {
        let heap = heap();
        let mut cache = ThreadCache::new();
        let (p, stashed) = build_buffer(&heap, &mut cache, 1 << 20);
        // SAFETY: live, freed once (into the stash).
        unsafe { cache.free(&heap, p) };
        // A is lent that span, and lives on.
        let (a, a_start) = build_buffer(&heap, &mut cache, GROWTH_MIN);
        assert_eq!(a_start, stashed);
        // Another 1 MiB span goes to the stash...
        let big = cache.alloc(&heap, 1 << 20, 8);
        // SAFETY: live, freed once.
        unsafe { cache.free(&heap, big) };
        assert_eq!(cache.stashed_bytes(), 1 << 20);
        // ...but while A holds its lent span, B is not lent it: B gets a span of its own
        // room from the page heap.
        let (b, _) = build_buffer(&heap, &mut cache, GROWTH_MIN);
        assert_eq!(heap.usable_size(b), growth_room(GROWTH_MIN));
        // Once A is freed (back to the stash), the next buffer is lent a stashed span again.
        // SAFETY: live, freed once.
        unsafe { cache.free(&heap, a) };
        let (c, c_start) = build_buffer(&heap, &mut cache, GROWTH_MIN);
        assert_eq!(c_start, stashed);
        assert_eq!(heap.usable_size(c), 1 << 20);
        // SAFETY: live, freed once.
        unsafe { cache.free(&heap, b) };
        // SAFETY: live, freed once.
        unsafe { cache.free(&heap, c) };
        cache.flush(&heap);
        heap.check_invariants();
    }

    #[test]
    fn an_object_resized_once_keeps_an_exact_class() {
        let heap = heap();
        let mut cache = ThreadCache::new();
        // A growth that is not the thread's growing buffer moves to the exact class (no
        // headroom, no page span), however large the medium size.
        let p = cache.alloc(&heap, 5000, 8);
        // SAFETY: live; the result replaces it.
        let p = unsafe { cache.realloc(&heap, p, 8, 20_000) };
        assert!(matches!(heap.owner(p), Owner::Small(_)));
        assert_eq!(
            heap.usable_size(p),
            size_class::class_of(20_000).unwrap().size()
        );
        // Shrinking a small object moves it to its exact class too (a layout names the
        // class of the span that holds the object).
        // SAFETY: as above.
        let q = unsafe { cache.realloc(&heap, p, 8, 12_000) };
        assert_ne!(q, p);
        assert_eq!(
            heap.usable_size(q),
            size_class::class_of(12_000).unwrap().size()
        );
        // SAFETY: live, freed once.
        unsafe { cache.free(&heap, q) };
        cache.flush(&heap);
        heap.check_invariants();
    }

    #[test]
    fn a_growing_large_object_takes_headroom_in_place_up_to_a_bound() {
        // A free run follows the span for all the growths below.
        let heap = roomy_heap();
        let mut cache = ThreadCache::new();
        let mut p = cache.alloc(&heap, 64 << 10, 8);
        fill(p, 64 << 10, 3);
        // SAFETY: live; each result replaces the buffer.
        unsafe {
            // A fresh heap has a free run after the span: growth is in place, with room for
            // GROWTH_HEADROOM times the new size.
            let q = cache.realloc(&heap, p, 8, 128 << 10);
            assert_eq!(q, p);
            assert_eq!(heap.usable_size(p), GROWTH_HEADROOM * (128 << 10));
            // Past GROWTH_HEADROOM_MAX the headroom stops growing with the object.
            let big = 4 * GROWTH_HEADROOM_MAX;
            p = cache.realloc(&heap, p, 8, big);
            assert_eq!(
                heap.usable_size(p),
                big + (GROWTH_HEADROOM - 1) * GROWTH_HEADROOM_MAX
            );
            assert!(filled(p, 64 << 10, 3));
            cache.free(&heap, p);
        }
        cache.flush(&heap);
        heap.check_invariants();
    }

    #[test]
    fn a_page_span_object_stays_when_it_shrinks_by_at_most_half() {
        let heap = heap();
        let mut cache = ThreadCache::new();
        let p = cache.alloc(&heap, 40 << 10, 8);
        let room = heap.usable_size(p);
        // SAFETY: live; each result replaces it.
        unsafe {
            // Into the small range, using more than half of the span: in place (it would
            // otherwise be copied to a class of nearly the same size).
            let q = cache.realloc(&heap, p, 8, room / 2 + 1);
            assert_eq!(q, p);
            assert_eq!(heap.usable_size(q), room);
            // Less than half: moved to its class.
            let r = cache.realloc(&heap, q, 8, 1000);
            assert_ne!(r, q);
            assert!(matches!(heap.owner(r), Owner::Small(_)));
            cache.free(&heap, r);
        }
        cache.flush(&heap);
        heap.check_invariants();
    }

    #[test]
    fn after_a_failed_refill_retained_free_objects_are_used() {
        let heap = heap();
        let mut cache = ThreadCache::new();
        let first = cache.alloc(&heap, 64, 8);
        heap.source().fail_after(0);
        let mut objs = vec![first];
        loop {
            let p = cache.alloc(&heap, 64, 8);
            if p.is_null() {
                break;
            }
            objs.push(p);
        }
        // The object of a retained span, freed: the next allocation must find it.
        // SAFETY: live, freed once.
        unsafe { cache.dealloc(&heap, first, 64, 8) };
        assert_eq!(cache.alloc(&heap, 64, 8), first);
        heap.source().heal();
        for &p in &objs {
            // SAFETY: live, freed once.
            unsafe { cache.free(&heap, p) };
        }
        cache.flush(&heap);
        heap.check_invariants();
    }

    #[test]
    fn retained_spans_emptied_by_other_threads_go_back_on_release() {
        let heap = heap();
        let mut owner = ThreadCache::new();
        let mut other = ThreadCache::new();
        let class = size_class::class_of(256).unwrap();
        let n = class.objects() * 4;
        let objs: Vec<*mut u8> = (0..n).map(|_| owner.alloc(&heap, 256, 8)).collect();
        for &p in &objs[..n - class.objects()] {
            // SAFETY: live, freed once (remote frees into the owner's retained spans).
            unsafe { other.dealloc(&heap, p, 256, 8) };
        }
        assert_eq!(owner.retained_bytes, 3 * class.pages().bytes());
        owner.trim_now(&heap);
        assert_eq!(
            owner.retained_bytes, 0,
            "wholly free by remote frees: given back"
        );
        assert_eq!(
            heap.central_stats(class).spans,
            1,
            "only the current span is left"
        );
        for &p in &objs[n - class.objects()..] {
            // SAFETY: live, freed once.
            unsafe { owner.dealloc(&heap, p, 256, 8) };
        }
        owner.flush(&heap);
        other.flush(&heap);
        heap.check_invariants();
        assert_eq!(heap.page_heap_stats().small_spans, 0);
    }
}
