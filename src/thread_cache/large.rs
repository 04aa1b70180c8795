//! The thread cache's stash: freed large spans kept for the thread's next large allocation
//! of the same length (one compare-and-swap, no lock), and lent to a buffer that keeps
//! growing as its room. The stash's slots live in the cache's reserve (`reserve.rs`), so
//! another thread can give an idle thread's stash back; a cache without a reserve stashes
//! nothing. See `lib.rs` for an overview.

use super::ThreadCache;
use super::large_lists::listable;
use super::reserve::{Reserve, STASH_SLOTS};
use crate::check::fatal_at;
use crate::heap::Heap;
use crate::pages::Pages;
use crate::span::{Span, SpanKind};
use crate::sys::PageSource;
use core::ptr::NonNull;

/// The longest large span a cache stashes (1 MiB, as the page heap's large-span cache).
pub(super) const STASH_MAX_PAGES: Pages = Pages(128);
/// The longest span of a growing buffer a cache stashes (8 MiB: a buffer doubled past
/// 1 MiB holds room for four times its size, up to 3 MiB past it).
pub(super) const STASH_MAX_GROWN_PAGES: Pages = Pages(1024);

impl ThreadCache {
    /// A large object of `size` bytes aligned to `align` from a stashed span of exactly the
    /// pages it needs (the newest such), or `None`. One compare-and-swap on a hit.
    #[inline]
    pub fn alloc_large_stashed<S: PageSource>(
        &mut self,
        heap: &Heap<S>,
        size: usize,
        align: usize,
    ) -> Option<*mut u8> {
        if !self.stash_seen {
            return None;
        }
        let pages = Pages::for_bytes(size)?;
        let span = self.pick_stashed(heap, |s| {
            (s.object_pages() == pages && s.start_addr() % align == 0).then_some(0)
        })?;
        self.stash_used = true;
        // SAFETY: a live large span (it was stashed until now).
        Some(unsafe { (*span).start_addr() } as *mut u8)
    }

    /// As [`ThreadCache::alloc_large_stashed`] for the newest stashed span only: the
    /// common case of a program that frees a large buffer and allocates another of the same
    /// size, which the full search would pick too (the newest of the exact fits).
    #[inline(always)]
    pub(super) fn alloc_large_newest<S: PageSource>(
        &mut self,
        heap: &Heap<S>,
        size: usize,
        align: usize,
    ) -> Option<*mut u8> {
        let i = self.stash_newest;
        let r = self.reserve()?;
        let s = r.stashed(i);
        // SAFETY: span records are never unmapped, and the fields read are atomics; a span
        // a reclaimer took meanwhile is no longer in the slot, so taking it below fails.
        let span = unsafe { s.as_ref() }?;
        if span.object_pages() != Pages::for_bytes(size)? || span.start_addr() % align != 0 {
            return None;
        }
        if !r.unstash(i, s) {
            return None;
        }
        // SAFETY: taken out of the stash by us: the span and its free object are ours.
        unsafe { span.unstash_large() };
        Self::unstashed_word(heap, span);
        self.stash_used = true;
        Some(span.start_addr() as *mut u8)
    }

    /// Takes out of the stash the span `rank` ranks best (the lowest rank, the newest among
    /// equals; `None`: not a candidate), and clears its stashed mark; `None` when no span is
    /// a candidate or a reclaimer took the chosen one meanwhile.
    fn pick_stashed<S: PageSource>(
        &mut self,
        heap: &Heap<S>,
        rank: impl Fn(&Span) -> Option<usize>,
    ) -> Option<*mut Span> {
        let r = self.reserve()?;
        let mut best: Option<(usize, *mut Span, usize)> = None;
        let mut any = false;
        for i in 0..STASH_SLOTS {
            let s = r.stashed(i);
            if s.is_null() {
                continue;
            }
            any = true;
            // SAFETY: span records are never unmapped, and the fields `rank` reads are
            // atomics. A span a reclaimer took meanwhile (its record perhaps recycled) is
            // no longer in the slot, so taking it below fails.
            let Some(k) = rank(unsafe { &*s }) else {
                continue;
            };
            let better = match best {
                None => true,
                Some((b, _, bk)) => {
                    k < bk || (k == bk && self.stash_stamps[i] > self.stash_stamps[b])
                }
            };
            if better {
                best = Some((i, s, k));
            }
        }
        self.stash_seen = any;
        let (i, span, _) = best?;
        if !r.unstash(i, span) {
            return None;
        }
        // SAFETY: taken out of the stash by us: the span and its free object are ours.
        unsafe {
            (*span).unstash_large();
            Self::unstashed_word(heap, &*span);
        }
        Some(span)
    }

    /// The start of a listed object or a stashed span with at least `room` bytes aligned to
    /// `align` (the shortest listed one, else the shortest stashed one), handed out as a
    /// growing buffer's room: its next growths then need no page heap lock, as a buffer
    /// freed and built again each round finds its last round's span. Only while no earlier
    /// lent span is still out: a buffer that keeps a lent span for good (one that stops
    /// growing and lives on) pins at most that one span, up to `STASH_MAX_GROWN_PAGES`,
    /// until it is freed.
    pub(super) fn lend_stashed<S: PageSource>(
        &mut self,
        heap: &Heap<S>,
        room: usize,
        align: usize,
    ) -> Option<*mut u8> {
        if self.lent_start != 0 {
            // The record the page map holds now for the lent start (never one kept from
            // before, which may have been recycled meanwhile).
            // SAFETY: page-map entries point to span records, which are never unmapped; the
            // fields read are atomics, and a recycled record is rewritten atomically.
            let s = unsafe { heap.page_map().lookup(self.lent_start).as_ref() };
            // Still a live large object at the start we lent (or another that took its
            // place: lending waits for it too, the safe side).
            if s.is_some_and(|s| {
                s.kind() == SpanKind::Large
                    && s.start_addr() == self.lent_start
                    && !s.is_stashed_large()
            }) {
                return None;
            }
            self.lent_start = 0;
        }
        if let Some(p) = self.lend_listed(heap, room, align) {
            self.lent_start = p as usize;
            return Some(p);
        }
        if !self.stash_seen {
            return None;
        }
        let span = self.pick_stashed(heap, |s| {
            let bytes = s.object_bytes();
            (bytes >= room && s.start_addr() % align == 0).then_some(bytes)
        })?;
        self.stash_used = true;
        // SAFETY: a live large span (it was stashed until now).
        let start = unsafe { (*span).start_addr() };
        self.lent_start = start;
        Some(start as *mut u8)
    }

    /// Forgets the lent span if it starts at `start`: its buffer is being freed or moved
    /// off, so the next growing buffer may be lent a span again.
    #[inline]
    pub(super) fn forget_lent(&mut self, start: usize) {
        if start == self.lent_start {
            self.lent_start = 0;
        }
    }

    /// Frees the large object of `span` into an empty stash slot if that is all it takes:
    /// no lock, no system call, nothing given back to the page heap (a cache with a reserve
    /// and an empty slot, a span short enough). `false`, having done nothing (but take a
    /// sampled object's record out of the profile), otherwise: then call
    /// [`ThreadCache::free_large`]. Stops the process on a double free.
    ///
    /// # Safety
    /// As [`ThreadCache::free_large`].
    #[inline]
    pub unsafe fn free_large_to_stash<S: PageSource>(
        &mut self,
        heap: &Heap<S>,
        span: NonNull<Span>,
    ) -> bool {
        // SAFETY: a live span record.
        let s = unsafe { span.as_ref() };
        if s.sample() != 0 {
            // SAFETY: per the caller.
            return unsafe { self.free_sampled_large_to_stash(heap, span) };
        }
        let Some((reserve, i)) = self.empty_stash_slot_for(s) else {
            return false;
        };
        // SAFETY: per the caller; slot `i` is empty.
        unsafe { self.stash_freed(heap, reserve, i, span) };
        true
    }

    /// [`ThreadCache::free_large_to_stash`] for a sampled object: its record leaves the
    /// profile's table (under its shard's lock, as on the slow path), and then it goes
    /// where its unsampled free would have gone: onto the list of its length if it has one
    /// and the lists have room (its first page's word back to the listed word), else into
    /// the stash. Under the profiler a sampled object of these sizes is common (one
    /// allocation of 256 KiB in two at the default mean); apart, so that the unsampled path
    /// stays as it was. `false` (the record gone, the object not freed) as
    /// [`ThreadCache::free_large_to_stash`].
    ///
    /// # Safety
    /// As [`ThreadCache::free_large`].
    #[cold]
    #[inline(never)]
    unsafe fn free_sampled_large_to_stash<S: PageSource>(
        &mut self,
        heap: &Heap<S>,
        span: NonNull<Span>,
    ) -> bool {
        // SAFETY: a live span record.
        let s = unsafe { span.as_ref() };
        crate::sample_table::release_sample(s);
        let (start, pages) = (s.start_addr(), s.object_pages());
        let listed = crate::page_map::listed_large_word(start, pages);
        // SAFETY: per the caller, the object at `start` is given up and the cache is this
        // thread's; `listed` is the listed word of this very object.
        if listable(pages) && unsafe { self.push_listed(start as *mut u8, listed) } {
            // Unsampled now: found by its word again, as a listed object is.
            Self::set_large_word(heap, span);
            return true;
        }
        let Some((reserve, i)) = self.empty_stash_slot_for(s) else {
            return false;
        };
        // SAFETY: per the caller; slot `i` is empty.
        unsafe { self.stash_freed(heap, reserve, i, span) };
        true
    }

    /// Counts the free of the large object of `span` and stashes the span in slot `i` of
    /// `reserve`.
    ///
    /// # Safety
    /// As [`ThreadCache::free_large`], and slot `i` is empty.
    #[inline(always)]
    unsafe fn stash_freed<S: PageSource>(
        &mut self,
        heap: &Heap<S>,
        reserve: &Reserve,
        i: usize,
        span: NonNull<Span>,
    ) {
        // SAFETY: a live span record.
        self.count_large_free(heap, unsafe { span.as_ref() });
        // SAFETY: per the caller.
        unsafe { self.stash_in(heap, reserve, i, span) };
    }

    /// The reserve and an empty stash slot that `s`, a large span being freed, may go to
    /// (see [`ThreadCache::may_stash`]), if any.
    #[inline(always)]
    fn empty_stash_slot_for<'r>(&self, s: &Span) -> Option<(&'r Reserve, usize)> {
        if !self.may_stash(s) {
            return None;
        }
        let reserve = self.reserve()?;
        let i = (0..STASH_SLOTS).find(|&i| reserve.stashed(i).is_null())?;
        Some((reserve, i))
    }

    /// Frees the large object of `span`: into the stash if it is short enough (the oldest
    /// stashed span goes back to the page heap when the stash is full), else to the page
    /// heap. Stops the process on a double free.
    ///
    /// # Safety
    /// `span` holds a live large object the caller gives up.
    #[inline]
    pub unsafe fn free_large<S: PageSource>(&mut self, heap: &Heap<S>, span: NonNull<Span>) {
        // A listed object (on some thread's list, the free key on it) freed again by a path
        // that goes by its record (from a cache that lists nothing, or whose lists are
        // full): neither the stash's mark nor the page heap would see it.
        // SAFETY: the caller's live large span; its object's start has at least two words.
        let start = unsafe { span.as_ref() }.start_addr();
        // SAFETY: as above.
        if unsafe { crate::span::is_marked_freed(start as *mut u8, self.key) } {
            fatal_at("double free detected", start);
        }
        // SAFETY: per the caller.
        if !unsafe { self.free_large_to_stash(heap, span) } {
            // SAFETY: per the caller; nothing was done with the span (but for its sample,
            // which may have left the table).
            unsafe { self.free_large_slow(heap, span) }
        }
    }

    /// [`ThreadCache::free_large`] past [`ThreadCache::free_large_to_stash`]: a full stash,
    /// a span too long for it, a cache that may hold nothing.
    ///
    /// # Safety
    /// As [`ThreadCache::free_large`].
    #[inline(never)]
    unsafe fn free_large_slow<S: PageSource>(&mut self, heap: &Heap<S>, span: NonNull<Span>) {
        // SAFETY: a live span record.
        let s = unsafe { span.as_ref() };
        crate::sample_table::release_sample(s);
        self.count_large_free(heap, s);
        let reserve = match self.reserve() {
            Some(r) if self.may_stash(s) => r,
            // SAFETY: per the caller.
            _ => return unsafe { heap.free_large(span) },
        };
        // An empty slot, else the oldest span's (going back to the page heap).
        let mut slot = None;
        let mut oldest = 0;
        for i in 0..STASH_SLOTS {
            if reserve.stashed(i).is_null() {
                slot = Some(i);
                break;
            }
            if self.stash_stamps[i] < self.stash_stamps[oldest] {
                oldest = i;
            }
        }
        let (i, evicted) = match slot {
            Some(i) => (i, core::ptr::null_mut()),
            None => (oldest, reserve.unstash_any(oldest)),
        };
        // SAFETY: per the caller; slot `i` is empty now.
        unsafe { self.stash_in(heap, reserve, i, span) };
        if !evicted.is_null() {
            // SAFETY: taken out of the stash by us (null if a reclaimer took it first): its
            // object is free.
            unsafe {
                (*evicted).unstash_large();
                heap.free_large(NonNull::new_unchecked(evicted));
            }
        }
    }

    /// Whether the cache may stash `s`, a large span being freed: it is active (one that is
    /// not may be a cache with no exit flush, a FRESH thread's: it must hold nothing), and
    /// the span is short enough. The growing buffer's span (room included) is kept up to a
    /// longer bound: the next buffer is lent it (`lend_stashed`).
    #[inline(always)]
    fn may_stash(&self, s: &Span) -> bool {
        let max = if s.start_addr() == self.grown {
            STASH_MAX_GROWN_PAGES
        } else {
            STASH_MAX_PAGES
        };
        self.active && s.object_pages() <= max
    }

    /// The counts and the lent span's mark, for the free of the large object of `s`.
    #[inline(always)]
    fn count_large_free<S: PageSource>(&mut self, heap: &Heap<S>, s: &Span) {
        self.frees = self.frees.wrapping_add(1);
        self.maybe_fold_counts(heap);
        self.forget_lent(s.start_addr());
    }

    /// Gives `s`, a span of ours just taken out of the stash, its listed word back if its
    /// length is listed (the stash gave it the record's word: `stash_in`).
    fn unstashed_word<S: PageSource>(heap: &Heap<S>, s: &Span) {
        if listable(s.object_pages()) {
            Self::set_large_word(heap, NonNull::from(s));
        }
    }

    /// Marks `span` stashed (stopping the process if it already was: a double free) and
    /// puts it in slot `i`, the newest. A span of a listed length first gets the word
    /// naming its record (see [`ThreadCache::unstashed_word`]).
    ///
    /// # Safety
    /// `reserve` is this cache's, slot `i` is empty, and `span` holds a large object the
    /// caller frees.
    #[inline(always)]
    unsafe fn stash_in<S: PageSource>(
        &mut self,
        heap: &Heap<S>,
        reserve: &Reserve,
        i: usize,
        span: NonNull<Span>,
    ) {
        // SAFETY: a live span record.
        let s = unsafe { span.as_ref() };
        if !s.stash_large() {
            fatal_at("double free detected", s.start_addr());
        }
        // A stashed span's free must go by its record, whose mark catches a second free: a
        // listed word would send it onto a list without a look at the record. Written
        // before the slot publishes the span (a reclaimer may take it from then on).
        if listable(s.object_pages()) {
            heap.page_map().name_large_record(s);
        }
        self.stash_clock = self.stash_clock.wrapping_add(1);
        self.stash_stamps[i] = self.stash_clock;
        // SAFETY: we are the owner and slot `i` is empty (only the owner fills a slot, so
        // one it found empty stays empty); the span is marked stashed.
        unsafe { reserve.stash(i, span.as_ptr()) };
        self.stash_newest = i;
        self.stash_seen = true;
    }

    /// Gives every stashed large span back to the page heap.
    pub(super) fn free_stash<S: PageSource>(&mut self, heap: &Heap<S>) {
        self.stash_seen = false;
        if let Some(r) = self.reserve() {
            // SAFETY: taken from this cache's reserve, over `heap`.
            unsafe { r.take_stash().give_back(heap) };
        }
    }

    /// Bytes of the stashed large spans.
    pub fn stashed_bytes(&self) -> usize {
        self.reserve().map_or(0, |r| r.stashed_bytes())
    }
}
