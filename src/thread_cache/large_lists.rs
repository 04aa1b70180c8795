//! The thread cache's lists of freed large objects by length: 32 KiB to 256 KiB, one list
//! per page count, each object a whole span the page heap handed out, linked through its
//! first word and carrying the free key as a small free object does. See `lib.rs` for an
//! overview.
//!
//! A program that keeps replacing large buffers of a few lengths frees and allocates them
//! here without reading a span record: the page map's word of the object's first page
//! (`page_map::listed_large_word`) holds its start and length, which is all the free needs,
//! and the allocation takes the list's head. TCMalloc gets the same by making these lengths
//! size classes of its thread cache; here the objects stay the page heap's large spans
//! (the stash and the page heap see them as live), so nothing below the thread cache
//! changes. What the lists may hold is bounded ([`LISTED_BYTES`]); past it a free goes to
//! the stash (`large.rs`), which another thread can give back while this one idles: the
//! lists cannot be reached from another thread, as the bins cannot, so their bound is what
//! an idle thread keeps of large objects.

use super::ThreadCache;
use crate::heap::Heap;
use crate::page_map::{listed_large_word, word_listed_large};
use crate::pages::Pages;
use crate::size_class::LARGE_THRESHOLD;
use crate::span::{self, Span, SpanKind};
use crate::sys::PageSource;
use core::ptr::{NonNull, null_mut};

/// The shortest listed object, in pages: the large threshold.
pub(super) const LISTED_MIN_PAGES: usize = LARGE_THRESHOLD / crate::pages::PAGE_SIZE;
/// The longest listed object, in pages (256 KiB, TCMalloc's largest size class).
pub(super) const LISTED_MAX_PAGES: usize = 32;
/// The longest listed object, in bytes: larger requests need not look at the lists.
pub const LISTED_MAX_BYTES: usize = LISTED_MAX_PAGES * crate::pages::PAGE_SIZE;
/// Lists, one per page count from [`LISTED_MIN_PAGES`] to [`LISTED_MAX_PAGES`].
const LISTS: usize = LISTED_MAX_PAGES - LISTED_MIN_PAGES + 1;
/// The most bytes of freed objects a cache's lists hold: two of the longest, or one each of
/// two lengths; a working set that replaces objects one at a time needs one.
pub(super) const LISTED_BYTES: usize = 512 * 1024;

/// A cache's lists of freed large objects.
#[repr(C)]
pub(super) struct LargeLists {
    /// By page count less [`LISTED_MIN_PAGES`]: the newest freed object (null: none).
    heads: [*mut u8; LISTS],
    /// Bytes of the objects on the lists.
    pub(super) bytes: usize,
    /// The most bytes the lists may hold: [`LISTED_BYTES`] for an active cache with a
    /// reserve (one flushed at its thread's exit), 0 otherwise, so that one test on the
    /// free path covers the bound and whether the cache may keep anything at all.
    limit: usize,
}

impl LargeLists {
    pub(super) const fn new() -> LargeLists {
        LargeLists {
            heads: [null_mut(); LISTS],
            bytes: 0,
            limit: 0,
        }
    }
}

/// Whether an object of `pages` pages may be listed.
#[inline(always)]
pub(super) fn listable(pages: Pages) -> bool {
    (LISTED_MIN_PAGES..=LISTED_MAX_PAGES).contains(&pages.0)
}

/// The pages `size` bytes need, for a size of at least [`LARGE_THRESHOLD`]: sizes so close
/// to `usize::MAX` that the rounding wraps come out below [`LISTED_MIN_PAGES`], which no
/// list serves.
#[inline(always)]
fn pages_for(size: usize) -> Pages {
    Pages(size.wrapping_add(crate::pages::PAGE_SIZE - 1) >> crate::pages::PAGE_SHIFT)
}

/// The small-object word the first page of `s`, a large span in use, should hold: the
/// listed word when its object may be listed (its length fits the lists, and the heap
/// profiler did not sample it: a sampled object's free must reach its record), else the
/// word naming the record.
fn large_word_for(s: &Span) -> usize {
    if listable(s.object_pages()) && s.sample() == 0 {
        listed_large_word(s.start_addr(), s.object_pages())
    } else {
        crate::page_map::large_word(s)
    }
}

impl ThreadCache {
    /// Writes the word its first page should hold for `span`, a large span whose object this
    /// cache's thread owns (being handed out, resized, or freed after its sample left).
    pub(super) fn set_large_word<S: PageSource>(heap: &Heap<S>, span: NonNull<Span>) {
        // SAFETY: the caller's live large span.
        let s = unsafe { span.as_ref() };
        let word = large_word_for(s);
        if heap.page_map().small_word_of(s.start_addr()) != word {
            heap.page_map().set_small_words(s.start(), Pages(1), word);
        }
    }

    /// Makes `p`, a large object the page heap just handed to this cache's thread (its
    /// pages all zero if `zeroed`), ready to hand out: clears the free key an earlier object
    /// at its address may have left in memory the page heap kept (listed or stashed, then
    /// given back; the free and `realloc` of this one read it, and a program need not write
    /// that word), and gives its first page its word. Returns `p`.
    pub(super) fn take_large<S: PageSource>(heap: &Heap<S>, p: *mut u8, zeroed: bool) -> *mut u8 {
        if !zeroed {
            // SAFETY: a new large object: its first two words are ours.
            unsafe { span::mark_allocated(p) };
        }
        if let Some(span) = NonNull::new(heap.page_map().lookup(p as usize)) {
            Self::set_large_word(heap, span);
        }
        p
    }

    /// Whether the lists hold nothing.
    #[inline]
    pub(super) fn large_lists_empty(&self) -> bool {
        self.large_lists.bytes == 0
    }

    /// Sets the lists' limit for the cache's state (see `LargeLists::limit`): after
    /// `activate`, `deactivate`, `attach_reserve`, `detach_reserve`.
    pub(super) fn update_lists_limit(&mut self) {
        debug_assert!(self.active || self.large_lists.bytes == 0);
        self.large_lists.limit = if self.active && !self.reserve.is_null() {
            LISTED_BYTES
        } else {
            0
        };
    }

    /// Frees `ptr` onto the list of its length if the page map's small-object word `word`
    /// of its page is a listed large word naming it: `false`, having done nothing, for any
    /// other word, when `ptr` is not the object's start, when the cache may not keep it
    /// (inactive, or without a reserve: a cache whose objects nobody gives back but its own
    /// flush), or when the lists are full. Stops the process if the object carries the free
    /// key already (a double free). No atomic, no lock, no span record read.
    ///
    /// # Safety
    /// `ptr` is a pointer the caller gives up; `word` is the small-object word of its page;
    /// the cache is this thread's alone.
    #[inline]
    pub unsafe fn push_listed(&mut self, ptr: *mut u8, word: usize) -> bool {
        // SAFETY: per the caller.
        unsafe { Self::push_listed_raw(self, ptr, word) }
    }

    /// As [`ThreadCache::push_listed`] through a raw pointer: forms a reference to the cache
    /// only when the lists take the object, so that a cache shared by several threads and
    /// never active (the one of exited threads) is only read.
    ///
    /// # Safety
    /// As [`ThreadCache::push_listed`], except that the cache may be one that is inactive
    /// (then it is only read).
    #[inline(always)]
    pub unsafe fn push_listed_raw(cache: *mut ThreadCache, ptr: *mut u8, word: usize) -> bool {
        let Some((start, pages)) = word_listed_large(word) else {
            return false;
        };
        let bytes = pages.bytes();
        if ptr as usize != start {
            return false;
        }
        // SAFETY: per the caller, `cache` points to a live cache; the two fields are read
        // through the raw pointer, with no reference formed, so a cache that other threads
        // read at the same time (the shared one of exited threads, never active) is only
        // read.
        let (held, limit) = unsafe { ((*cache).large_lists.bytes, (*cache).large_lists.limit) };
        if held + bytes > limit {
            return false;
        }
        // SAFETY: a limit above what the lists hold is set only on an active cache with a
        // reserve (`update_lists_limit`), which per the caller is this thread's alone: no
        // other reference to it exists while this free runs.
        let this = unsafe { &mut *cache };
        debug_assert!(listable(pages) && this.active);
        // SAFETY: listed words are written only by `large_word_for`, for listable lengths,
        // so `pages - LISTED_MIN_PAGES` indexes the lists.
        let head = unsafe {
            this.large_lists
                .heads
                .get_unchecked_mut(pages.0 - LISTED_MIN_PAGES)
        };
        // SAFETY: the start of a large object of at least 32 KiB that the caller gives up
        // (the word, written while its thread owned it, says so).
        unsafe {
            span::mark_freed(ptr, this.key);
            span::set_next_free(ptr, *head);
        }
        *head = ptr;
        this.large_lists.bytes += bytes;
        this.frees = this.frees.wrapping_add(1);
        this.forget_lent(start);
        true
    }

    /// A listed object of exactly the pages `size` bytes need, for an alignment of at most a
    /// page; null when its list is empty (or the length is not listed).
    #[inline(always)]
    pub(super) fn pop_listed<S: PageSource>(
        &mut self,
        heap: &Heap<S>,
        size: usize,
        align: usize,
    ) -> *mut u8 {
        if align > crate::pages::PAGE_SIZE {
            return null_mut();
        }
        // SAFETY: our own cache.
        unsafe { Self::pop_listed_raw(self, heap, size) }
    }

    /// As `ThreadCache::pop_listed` for an alignment of at most a page, through a raw
    /// pointer: forms a reference to the cache only when a list holds an object (see
    /// [`ThreadCache::push_listed_raw`]). The allocation is not charged to the sampler.
    ///
    /// # Safety
    /// `cache` points to a live cache that is either this thread's alone or never holds an
    /// object.
    #[inline(always)]
    pub unsafe fn pop_listed_raw<S: PageSource>(
        cache: *mut ThreadCache,
        heap: &Heap<S>,
        size: usize,
    ) -> *mut u8 {
        let pages = pages_for(size);
        if !listable(pages) {
            return null_mut();
        }
        // SAFETY: per the caller; a place read through the raw pointer, in bounds.
        let obj = unsafe { (*cache).large_lists.heads[pages.0 - LISTED_MIN_PAGES] };
        if obj.is_null() {
            return obj;
        }
        // It held an object: this thread's own cache.
        // SAFETY: per the caller.
        let this = unsafe { &mut *cache };
        let head = &mut this.large_lists.heads[pages.0 - LISTED_MIN_PAGES];
        // SAFETY: listed objects are free large objects linked through their first word.
        let next = unsafe { span::next_free(obj) };
        #[cfg(feature = "hardened")]
        if !next.is_null()
            && heap.page_map().small_word_of(next as usize)
                != listed_large_word(next as usize, pages)
        {
            crate::check::fatal_at("free list corrupted", obj as usize);
        }
        #[cfg(not(feature = "hardened"))]
        let _ = heap;
        *head = next;
        this.large_lists.bytes -= pages.bytes();
        // SAFETY: a free object being handed out.
        unsafe { span::mark_allocated(obj) };
        this.stash_used = true;
        obj
    }

    /// The shortest listed object with at least `room` bytes, for an alignment of at most a
    /// page, taken off its list (to be lent to a growing buffer: `lend_stashed`).
    pub(super) fn lend_listed<S: PageSource>(
        &mut self,
        heap: &Heap<S>,
        room: usize,
        align: usize,
    ) -> Option<*mut u8> {
        if self.large_lists.bytes == 0 || align > crate::pages::PAGE_SIZE || room > LISTED_MAX_BYTES
        {
            return None;
        }
        let from = pages_for(room).0.max(LISTED_MIN_PAGES);
        let pages = (from..=LISTED_MAX_PAGES)
            .find(|&pages| !self.large_lists.heads[pages - LISTED_MIN_PAGES].is_null())?;
        Some(self.pop_listed(heap, Pages(pages).bytes(), align))
    }

    /// Gives every listed object back to the page heap.
    pub(super) fn free_listed<S: PageSource>(&mut self, heap: &Heap<S>) {
        for i in 0..LISTS {
            let mut obj = core::mem::replace(&mut self.large_lists.heads[i], null_mut());
            while !obj.is_null() {
                // SAFETY: a listed object: free, linked through its first word.
                let next = unsafe { span::next_free(obj) };
                let span = heap.page_map().lookup(obj as usize);
                // SAFETY: the page map names the record of a live large span, ours.
                unsafe {
                    debug_assert!(
                        span.as_ref()
                            .is_some_and(|s| s.start_addr() == obj as usize)
                    );
                    heap.free_large(NonNull::new_unchecked(span));
                }
                obj = next;
            }
        }
        self.large_lists.bytes = 0;
    }

    /// Bytes of the listed objects.
    pub fn listed_bytes(&self) -> usize {
        self.large_lists.bytes
    }

    /// The first broken invariant of the lists, if any: each object is the start of a live,
    /// unstashed large span of its list's length, whose first page holds the listed word,
    /// and carries the free key; the bytes add up. (`ThreadCache::invariant_violation`.)
    pub(super) fn listed_violation<S: PageSource>(&self, heap: &Heap<S>) -> Option<&'static str> {
        let mut bytes = 0;
        for (i, &first) in self.large_lists.heads.iter().enumerate() {
            let pages = Pages(i + LISTED_MIN_PAGES);
            let mut obj = first;
            let mut n = 0;
            while !obj.is_null() {
                n += 1;
                if n > LISTED_BYTES / pages.bytes() {
                    return Some("a large list holds more than its bound (a cycle?)");
                }
                let at = obj as usize;
                if heap.page_map().small_word_of(at) != listed_large_word(at, pages) {
                    return Some("a listed object's page does not hold its listed word");
                }
                // SAFETY: page-map entries point to span records, never unmapped.
                let Some(s) = (unsafe { heap.page_map().lookup(at).as_ref() }) else {
                    return Some("a listed object has no span");
                };
                if s.kind() != SpanKind::Large
                    || s.start_addr() != at
                    || s.object_pages() != pages
                    || s.is_stashed_large()
                    || s.sample() != 0
                {
                    return Some(
                        "a listed object is not the start of an unstashed large span of its length",
                    );
                }
                // SAFETY: a listed object: at least two words, free.
                if crate::check::FREE_CHECKS && !unsafe { span::is_marked_freed(obj, self.key) } {
                    return Some("a listed object lacks the free key");
                }
                bytes += pages.bytes();
                // SAFETY: as above.
                obj = unsafe { span::next_free(obj) };
            }
        }
        (bytes != self.large_lists.bytes).then_some("the large lists' bytes do not add up")
    }
}
