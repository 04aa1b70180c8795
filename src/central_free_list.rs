//! Central free lists: per size class, the spans no thread owns, lent to thread caches and
//! taken back (Go's `mcentral`). See `lib.rs` for an overview.
//!
//! Each list is behind its own [`Lock`] on its own cache line. The verbs are Go's:
//! [`CentralFreeList::cache_span`] lends a span with free objects to a thread cache (growing
//! from the page heap when there is none), [`CentralFreeList::uncache_span`] takes one back.
//! [`CentralFreeList::finish_remote`] completes the rare cross-thread frees that change a
//! span's list (see the remote word in `span.rs`).
//!
//! The central lock is never held while the page heap lock is taken: spans go to and come
//! from the page heap after the central lock is dropped.

use crate::page_heap::PageHeap;
use crate::page_map::PageMap;
use crate::pages::Pages;
use crate::size_class::SizeClass;
use crate::span::{self, Disowned, ListId, RemoteAction, Span, SpanKind, SpanList};
use crate::sync::Lock;
use crate::sys::PageSource;
use core::ptr::{NonNull, null_mut};

/// The spans of one size class that no thread owns.
pub struct CentralFreeList {
    lists: Lock<Lists>,
}

struct Lists {
    /// Unowned spans with at least one free (or never used) object.
    partial: SpanList,
    /// Unowned spans with no free object (FULL or MOVING).
    full: SpanList,
    /// Small spans of this class that exist: owned, listed or in transit.
    spans: usize,
}

/// What a central list holds, for statistics.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct CentralStats {
    /// Spans of the class, wherever they are.
    pub spans: usize,
    /// Spans on the partial list.
    pub partial_spans: usize,
    /// Spans on the full list.
    pub full_spans: usize,
    /// Objects handed out from spans no thread owns.
    pub unowned_in_use: usize,
    /// Free objects in spans no thread owns.
    pub unowned_free: usize,
}

/// The shared tiers a central list grows from and releases to.
pub struct Backing<'a, S: PageSource> {
    /// The page heap behind its lock.
    pub page_heap: &'a Lock<PageHeap>,
    /// The page map (written under the page heap lock).
    pub map: &'a PageMap,
    /// Where pages come from.
    pub source: &'a S,
    /// The clock for decay, as the page heap counts it.
    pub now: u64,
}

impl CentralFreeList {
    /// An empty central list.
    #[cfg(not(loom))]
    pub const fn new() -> CentralFreeList {
        CentralFreeList {
            lists: Lock::new(Lists {
                partial: SpanList::new(ListId::Partial),
                full: SpanList::new(ListId::Full),
                spans: 0,
            }),
        }
    }

    /// An empty central list (not `const` under loom, whose lock is made at run time).
    #[cfg(loom)]
    pub fn new() -> CentralFreeList {
        CentralFreeList {
            lists: Lock::new(Lists {
                partial: SpanList::new(ListId::Partial),
                full: SpanList::new(ListId::Full),
                spans: 0,
            }),
        }
    }

    /// Lends a span with free objects to a thread cache, marking it owned. Returns the span
    /// and its free objects (a null-terminated list, possibly empty when the free objects are
    /// all never used: see `Span::bump`). `None` when the page heap cannot grow.
    pub fn cache_span<S: PageSource>(
        &self,
        class: SizeClass,
        backing: &Backing<'_, S>,
    ) -> Option<(NonNull<Span>, *mut u8)> {
        {
            let mut lists = self.lists.lock();
            let mut at = lists.partial.first();
            while !at.is_null() {
                // SAFETY: spans on our list are live; we hold the lock.
                let next = unsafe { (*at).next_on_list() };
                // SAFETY: the span is on our partial list and we hold the lock.
                if let Some(free) = unsafe { (*at).own() } {
                    // SAFETY: on our partial list.
                    unsafe { lists.partial.remove(at) };
                    // SAFETY: non-null.
                    return Some((unsafe { NonNull::new_unchecked(at) }, free));
                }
                // DEAD: its last free is returning it to the page heap; leave it.
                at = next;
            }
        }
        let (span, _zeroed) = backing.page_heap.lock().alloc(
            class.pages(),
            Pages(1),
            class,
            backing.map,
            backing.source,
        )?;
        self.lists.lock().spans += 1;
        Some((span, null_mut()))
    }

    /// Takes back a span from its owner, with the owner's free objects of it (`local`, of
    /// length `local_count`). A wholly free span goes back to the page heap.
    ///
    /// # Safety
    /// The calling thread cache owns `span` (of this list's class) and gives it up, with
    /// `local` holding exactly the free objects it has of it.
    pub unsafe fn uncache_span<S: PageSource>(
        &self,
        span: NonNull<Span>,
        local: *mut u8,
        local_count: usize,
        backing: &Backing<'_, S>,
    ) {
        let mut lists = self.lists.lock();
        // SAFETY: the caller owns the span; we hold the central lock.
        match unsafe { span.as_ref().disown(local, local_count) } {
            // SAFETY: unowned now, on no list; we hold the lock.
            Disowned::Partial => unsafe { lists.partial.push(span.as_ptr()) },
            // SAFETY: as above.
            Disowned::Full => unsafe { lists.full.push(span.as_ptr()) },
            Disowned::Free => {
                lists.spans -= 1;
                drop(lists);
                // SAFETY: DEAD: no object of it is live and nobody else will touch it.
                unsafe { release(span, backing) };
            }
        }
    }

    /// Completes a cross-thread free whose `Span::push_remote` asked for `action`.
    ///
    /// # Safety
    /// `action` came from `push_remote` on `span` (of this list's class) by this thread.
    pub unsafe fn finish_remote<S: PageSource>(
        &self,
        span: NonNull<Span>,
        action: RemoteAction,
        backing: &Backing<'_, S>,
    ) {
        let s = span.as_ptr();
        let mut lists = self.lists.lock();
        let released = match action {
            RemoteAction::Nothing => return,
            RemoteAction::Move => {
                // SAFETY: MOVING spans stay on the full list until their mover (us) takes
                // them off; we hold the lock.
                unsafe { lists.full.remove(s) };
                // SAFETY: we set MOVING and hold the lock.
                if unsafe { (*s).finish_move() } {
                    // SAFETY: on no list now.
                    unsafe { lists.partial.push(s) };
                    false
                } else {
                    true
                }
            }
            RemoteAction::Release => {
                // SAFETY: we hold the lock, which guards the span's list membership.
                match unsafe { (*s).list() } {
                    // SAFETY: on that list.
                    ListId::Partial => unsafe { lists.partial.remove(s) },
                    // SAFETY: on that list.
                    ListId::Full => unsafe { lists.full.remove(s) },
                    _ => crate::check::fatal("central list: releasing a span on no list"),
                }
                true
            }
        };
        if released {
            lists.spans -= 1;
            drop(lists);
            // SAFETY: DEAD and off every list: only this thread can reach it.
            unsafe { release(span, backing) };
        }
    }

    /// A snapshot of what the list holds.
    pub fn stats(&self) -> CentralStats {
        let lists = self.lists.lock();
        let mut st = CentralStats {
            spans: lists.spans,
            partial_spans: lists.partial.len(),
            full_spans: lists.full.len(),
            ..CentralStats::default()
        };
        // SAFETY: we hold the lock for the whole walk.
        for s in unsafe { lists.partial.iter().chain(lists.full.iter()) } {
            // SAFETY: live spans on our lists.
            let span = unsafe { &*s };
            let in_use = Span::unowned_in_use(span.remote_word());
            st.unowned_in_use += in_use;
            st.unowned_free += span.capacity() - in_use;
        }
        st
    }

    /// Checks every invariant of the listed spans; panics on a violation (after dropping
    /// the lock: a panic allocates, and an allocation may need this list).
    pub fn check_invariants(&self, class: SizeClass, map: &PageMap) {
        let violation = self.invariant_violation(class, map);
        if let Some(v) = violation {
            panic!("central list invariant broken (class {}): {v}", class.0);
        }
    }

    /// The first broken invariant of the listed spans, if any (taken under the lock).
    pub fn invariant_violation(&self, class: SizeClass, map: &PageMap) -> Option<&'static str> {
        macro_rules! ensure {
            ($cond:expr, $msg:expr) => {
                if !$cond {
                    return Some($msg);
                }
            };
        }
        let lists = self.lists.lock();
        for (list, want) in [
            (&lists.partial, ListId::Partial),
            (&lists.full, ListId::Full),
        ] {
            // SAFETY: we hold the lock for the whole walk.
            for s in unsafe { list.iter() } {
                // SAFETY: live spans on our lists; the lock guards the guarded fields.
                let span = unsafe { &*s };
                ensure!(span.kind() == SpanKind::Small, "listed spans are small");
                ensure!(
                    span.class() == class,
                    "listed spans are of the list's class"
                );
                // SAFETY: as above.
                ensure!(unsafe { span.list() } == want, "a span knows its list");
                ensure!(
                    map.lookup(span.start_addr()) == s,
                    "first page maps to the span"
                );
                ensure!(
                    map.lookup(span.end().addr() - 1) == s,
                    "last page maps to the span"
                );
                let word = span.remote_word();
                ensure!(word & span::OWNED == 0, "listed spans are unowned");
                let in_use = Span::unowned_in_use(word);
                // SAFETY: as above: the free list is guarded by the lock.
                let (local, bump) = unsafe { (span::list_len(span.free.get()), span.bump.get()) };
                // SAFETY: we hold the central lock of this unowned span.
                // (From the same snapshot as `in_use`: frees may arrive while we walk.)
                let remote = unsafe { span.remote_len_unowned(word) };
                let free = local + remote + span.capacity() - bump as usize;
                if word & span::DEAD == 0 {
                    ensure!(in_use + free == span.capacity(), "objects are conserved");
                }
                let full_flags = word & (span::FULL | span::MOVING) != 0;
                ensure!(
                    full_flags == (want == ListId::Full),
                    "FULL/MOVING exactly on the full list"
                );
            }
        }
        None
    }

    /// Takes this list's lock without a guard (for `fork`).
    pub fn lock_for_fork(&self) {
        self.lists.raw_lock();
    }

    /// Releases the lock taken by [`CentralFreeList::lock_for_fork`].
    ///
    /// # Safety
    /// This thread took the lock with `lock_for_fork`.
    pub unsafe fn unlock_after_fork(&self) {
        // SAFETY: per the caller.
        unsafe { self.lists.raw_unlock() }
    }
}

impl Default for CentralFreeList {
    fn default() -> Self {
        Self::new()
    }
}

/// Returns a DEAD span to the page heap.
///
/// # Safety
/// Nobody else can reach the span; none of its objects is live.
unsafe fn release<S: PageSource>(span: NonNull<Span>, backing: &Backing<'_, S>) {
    let mut heap = backing.page_heap.lock();
    // SAFETY: per the caller.
    unsafe { heap.free(span, backing.now, backing.map) };
}
