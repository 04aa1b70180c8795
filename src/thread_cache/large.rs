//! The thread cache's stash: freed large spans kept for the thread's next large allocation
//! of the same length (no lock), and lent to a buffer that keeps growing as its room. See
//! `lib.rs` for an overview.

use super::{STASH_SLOTS, ThreadCache};
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
    /// pages it needs (no lock), or `None`.
    #[inline]
    pub fn alloc_large_stashed(&mut self, size: usize, align: usize) -> Option<*mut u8> {
        let pages = Pages::for_bytes(size)?;
        let i = self.stash[..self.stash_len].iter().rposition(|&s| {
            // SAFETY: stashed spans are live large spans this cache holds.
            let s = unsafe { &*s };
            s.object_pages() == pages && s.start_addr() % align == 0
        })?;
        let span = self.stash[i];
        // Keep the rest oldest first (at most three moves; a loop, not a `memmove` call).
        for j in i + 1..self.stash_len {
            self.stash[j - 1] = self.stash[j];
        }
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
        let mut best = None;
        let mut best_bytes = usize::MAX;
        for (i, &s) in self.stash[..self.stash_len].iter().enumerate() {
            // SAFETY: stashed spans are live large spans this cache holds.
            let s = unsafe { &*s };
            let bytes = s.object_bytes();
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
        self.lent_start = start;
        Some(start as *mut u8)
    }

    /// Forgets the lent span if `span` is it: its buffer is being freed or moved off, so the
    /// next growing buffer may be lent a span again.
    #[inline]
    pub(super) fn forget_lent(&mut self, span: NonNull<Span>) {
        // SAFETY: the caller's live large span.
        if unsafe { span.as_ref() }.start_addr() == self.lent_start {
            self.lent_start = 0;
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
        crate::sample_table::release_sample(s);
        self.frees = self.frees.wrapping_add(1);
        self.maybe_fold_counts(heap);
        self.forget_lent(span);
        // The growing buffer's span (room included) is kept up to a longer bound: the next
        // buffer is lent it (`lend_stashed`). A cache that is not active may be one with no
        // exit flush (a FRESH thread's, freeing): it must hold nothing.
        let max = if s.start_addr() == self.grown {
            STASH_MAX_GROWN_PAGES
        } else {
            STASH_MAX_PAGES
        };
        if s.object_pages() > max || !self.active {
            // SAFETY: per the caller.
            return unsafe { heap.free_large(span) };
        }
        if !s.stash_large() {
            fatal_at("double free detected", s.start_addr());
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
    pub(super) fn free_stash<S: PageSource>(&mut self, heap: &Heap<S>) {
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
}
