//! A thread cache's reserve: what the cache keeps past its bins' reachable bound (free
//! objects by class, behind a lock that only the cache's slow paths and a reclaimer on
//! another thread take, and the stash of freed large spans, in slots either side empties
//! with a compare-and-swap); and [`Reserves`], the list of every live thread's reserve that
//! the reclaimer walks. See `lib.rs` for an overview.
//!
//! The bins are the cache's fast part: the owner pops and pushes them with no atomic and no
//! lock, so no other thread may touch them, and a thread that frees a working set and then
//! blocks keeps what they hold. They are bounded to [`REACHABLE_BYTES`] (1 MiB) in all; what
//! the cache keeps beyond that sits here, where a reclaimer can take it without the owner's
//! help: [`Reserves::reclaim`] takes the whole reserve of every thread that has not touched
//! its own for the decay time (the background release thread calls it), or of every thread
//! (`release_free_memory`). Nothing changes on the fast paths; a bin's refill or spill past
//! the reachable bound takes the owner's own lock, which nobody else holds but for the few
//! reads and writes of a reclaim. A class keeps here only what the bins' budget kept its bin
//! from growing to when it ran dry (`ThreadCache::reserve_allowed`).
//!
//! The reserve is a value beside the cache, never inside it: the owner holds a `&mut` to its
//! cache for a whole request, and another thread's access to memory under that `&mut` would
//! be undefined behaviour even under a lock.

use crate::heap::Heap;
use crate::page_map::PageMap;
use crate::size_class::{CLASS_COUNT, SizeClass};
use crate::span::{self, Span};
use crate::sync::{AtomicBool, AtomicPtr, GuardedCell, Lock, LockGuard, Ordering};
use crate::sys::PageSource;
use core::ptr::{NonNull, null, null_mut};

/// The most bytes a cache's bins keep in all when the cache has a reserve: what an idle
/// thread holds that no other thread can reach. The rest of the cache's budget
/// (`thread_cache_bytes`) is the reserve's.
pub const REACHABLE_BYTES: usize = 1 << 20;

/// Whether a reserve's list of `class` is kept in segments: each chain a bin handed over
/// stays one, its first object holding the segment's last object and its length in its
/// third and fourth words (free memory: the first holds the link, the second the free key),
/// so that a bin takes a whole batch back in one step rather than a walk over objects that
/// have gone cold. Classes of 32 bytes and more; not in the hardened build, which poisons
/// those words and checks every link it follows.
#[inline]
pub(super) fn segmented(class: SizeClass) -> bool {
    !cfg!(feature = "hardened") && class.size() >= 32
}

/// Records in `head` that its segment ends at `tail` and holds `n` objects.
///
/// # Safety
/// `head` is a free object of a [`segmented`] class, ours.
#[inline]
unsafe fn write_segment(head: *mut u8, tail: *mut u8, n: usize) {
    // SAFETY: per the caller: at least 32 bytes, words 2 and 3 unused while free.
    unsafe {
        head.cast::<usize>().add(2).write(tail as usize);
        head.cast::<usize>().add(3).write(n);
    }
}

/// The last object and the length of the segment that starts at `head`.
///
/// # Safety
/// `head` starts a segment written by [`write_segment`].
#[inline]
pub(super) unsafe fn read_segment(head: *mut u8) -> (*mut u8, usize) {
    // SAFETY: per the caller.
    unsafe {
        (
            head.cast::<usize>().add(2).read() as *mut u8,
            head.cast::<usize>().add(3).read(),
        )
    }
}

/// Freed large spans a cache keeps for its next large allocations of the same length.
pub const STASH_SLOTS: usize = 4;

/// One class's free objects in a reserve, linked through their first word as in a bin (each
/// still carrying the free key).
#[derive(Copy, Clone)]
pub(super) struct List {
    pub(super) head: *mut u8,
    pub(super) len: usize,
}

/// The free objects a reserve holds, under its lock.
pub(super) struct Held {
    pub(super) lists: [List; CLASS_COUNT],
    /// Bytes of the objects on `lists`.
    pub(super) bytes: usize,
    /// Reclaimer's clock (heap ms): when it last found the reserve used.
    idle_since: u64,
}

// SAFETY: the pointers are to free objects the reserve owns; whoever holds the lock owns
// them.
unsafe impl Send for Held {}

const EMPTY: List = List {
    head: null_mut(),
    len: 0,
};

/// What was taken out of a reserve, given back with no reserve lock held.
pub(super) struct Taken {
    lists: [List; CLASS_COUNT],
    /// Stashed spans taken out (null where a slot was empty).
    stash: [*mut Span; STASH_SLOTS],
}

impl Taken {
    /// Gives the objects back to their central lists and the spans to the page heap; returns
    /// the bytes given back.
    ///
    /// # Safety
    /// Taken from a reserve of a cache over `heap`.
    pub(super) unsafe fn give_back<S: PageSource>(self, heap: &Heap<S>) -> usize {
        let mut bytes = 0;
        for class in SizeClass::all() {
            let list = self.lists[class.index()];
            if list.len != 0 {
                bytes += list.len * class.size();
                // SAFETY: per the caller: `len` free objects of `class`, null-terminated.
                unsafe {
                    heap.central(class)
                        .insert_range(class, list.head, list.len, &heap.backing())
                };
            }
        }
        for &s in self.stash.iter().filter(|s| !s.is_null()) {
            // SAFETY: a stashed span of this heap, whose object is free; ours now.
            unsafe {
                bytes += (*s).bytes();
                (*s).unstash_large();
                heap.free_large(NonNull::new_unchecked(s));
            }
        }
        bytes
    }
}

/// Where a reserve sits in the [`Reserves`] list; read and written under its lock only.
#[derive(Copy, Clone)]
struct Links {
    prev: *const Reserve,
    next: *const Reserve,
}

/// A thread cache's reserve (see the module documentation).
///
/// The stash is a few slots outside the lock, so that a large allocation or free costs the
/// owner at most one compare-and-swap: only the owner puts a span in a slot (an empty one,
/// with a store), and whoever takes a span out owns it: the owner with a compare-and-swap
/// from the span it chose, a reclaimer with a swap. A slot the owner finds empty stays
/// empty until the owner fills it, and a span the owner chose but a reclaimer took makes
/// the owner's compare-and-swap fail: no span is taken twice.
pub struct Reserve {
    held: Lock<Held>,
    /// Freed large spans (each marked stashed), null where empty; the owner keeps their
    /// order (`ThreadCache::stash_stamps`).
    stash: [AtomicPtr<Span>; STASH_SLOTS],
    /// Whether the owner used the reserve since the reclaimer last looked.
    touched: AtomicBool,
    links: GuardedCell<Links>,
}

// SAFETY: `held` is behind its lock, `stash` and `touched` are atomics (see above for who
// writes a slot); `links` is read and written only under the lock of the `Reserves` list
// the reserve is in.
unsafe impl Sync for Reserve {}
// SAFETY: as above.
unsafe impl Send for Reserve {}

impl Reserve {
    const HELD: Held = Held {
        lists: [EMPTY; CLASS_COUNT],
        bytes: 0,
        idle_since: 0,
    };
    const LINKS: Links = Links {
        prev: null(),
        next: null(),
    };

    /// An empty reserve, in no list.
    #[cfg(not(loom))]
    pub const fn new() -> Reserve {
        Reserve {
            held: Lock::new(Self::HELD),
            stash: [const { AtomicPtr::new(null_mut()) }; STASH_SLOTS],
            touched: AtomicBool::new(false),
            links: GuardedCell::new(Self::LINKS),
        }
    }

    /// An empty reserve, in no list.
    #[cfg(loom)]
    pub fn new() -> Reserve {
        Reserve {
            held: Lock::new(Self::HELD),
            stash: core::array::from_fn(|_| AtomicPtr::new(null_mut())),
            touched: AtomicBool::new(false),
            links: GuardedCell::new(Self::LINKS),
        }
    }

    /// Marks the reserve used by its owner, so an idle-time reclaim leaves it alone for
    /// another decay time. A load, and a store only when the mark is not set already.
    #[inline]
    pub(super) fn touch(&self) {
        if !self.touched.load(Ordering::Relaxed) {
            self.touched.store(true, Ordering::Relaxed);
        }
    }

    /// The owner's access to the objects: marks the reserve used.
    pub(super) fn lock(&self) -> LockGuard<'_, Held> {
        self.touch();
        self.held.lock()
    }

    /// The span in stash slot `i`, or null.
    #[inline]
    pub(super) fn stashed(&self, i: usize) -> *mut Span {
        // Acquire pairs with the owner's Release in `stash`: the span's stashed mark is set.
        self.stash[i].load(Ordering::Acquire)
    }

    /// Puts `span` in stash slot `i`, which the owner found empty.
    ///
    /// # Safety
    /// Called by the owner only, with slot `i` empty (only the owner fills a slot, so one
    /// it found empty stays empty); `span` is a large span marked stashed, the owner's.
    #[inline]
    pub(super) unsafe fn stash(&self, i: usize, span: *mut Span) {
        self.touch();
        // Release pairs with the Acquire of whoever takes it out.
        self.stash[i].store(span, Ordering::Release);
    }

    /// Takes `span` out of stash slot `i` if it is still there (the owner's take); whoever
    /// takes it out owns it.
    #[inline]
    pub(super) fn unstash(&self, i: usize, span: *mut Span) -> bool {
        self.touch();
        // Acquire pairs with the Release of the owner's `stash`.
        self.stash[i]
            .compare_exchange(span, null_mut(), Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
    }

    /// Takes whatever stash slot `i` holds (null if empty).
    ///
    /// A compare-and-swap from the value read, rather than a swap: the same on the hardware,
    /// but loom 0.7 lets a store fall between the read and the write of a swap (its issue
    /// 254), which would make the models report a span lost that no processor can lose.
    #[inline]
    pub(super) fn unstash_any(&self, i: usize) -> *mut Span {
        // Acquire pairs with the Release of the owner's `stash`.
        let mut s = self.stash[i].load(Ordering::Acquire);
        while !s.is_null() {
            match self.stash[i].compare_exchange(
                s,
                null_mut(),
                Ordering::Acquire,
                Ordering::Acquire,
            ) {
                Ok(_) => break,
                // Taken by the other side meanwhile (the slot is empty now), or, for a
                // reclaimer, emptied and filled again by the owner.
                Err(now) => s = now,
            }
        }
        s
    }

    /// Takes every stashed span out.
    pub(super) fn take_stash(&self) -> Taken {
        Taken {
            lists: [EMPTY; CLASS_COUNT],
            stash: core::array::from_fn(|i| self.unstash_any(i)),
        }
    }

    /// Bytes of the stashed spans (a moment's view: the owner or a reclaimer may be taking
    /// one out meanwhile).
    pub(crate) fn stashed_bytes(&self) -> usize {
        (0..STASH_SLOTS)
            .map(|i| self.stashed(i))
            .filter(|s| !s.is_null())
            // SAFETY: span records are never unmapped, and the field read is an atomic; a
            // span taken out and recycled meanwhile is counted at its record's size then.
            .map(|s| unsafe { &*s }.bytes())
            .sum()
    }

    /// Keeps the `n` free objects of `class` from `head` to `tail` (linked, each carrying the
    /// free key) if they fit under `budget` bytes in all and the class then holds at most
    /// `class_max` objects here; `false`, having kept nothing, otherwise. One step: the
    /// chain goes on the class's list whole, as a segment (see [`segmented`]).
    ///
    /// # Safety
    /// `head..=tail` is a chain of `n >= 1` free objects of `class`, ours, given up.
    pub(crate) unsafe fn put(
        &self,
        class: SizeClass,
        head: *mut u8,
        tail: *mut u8,
        n: usize,
        budget: usize,
        class_max: usize,
    ) -> bool {
        let bytes = n * class.size();
        let mut held = self.lock();
        if held.bytes + bytes > budget || held.lists[class.index()].len + n > class_max {
            return false;
        }
        held.bytes += bytes;
        let list = &mut held.lists[class.index()];
        // SAFETY: per the caller, `head` and `tail` are free objects of ours.
        unsafe {
            if segmented(class) {
                write_segment(head, tail, n);
            }
            span::set_next_free(tail, list.head);
        }
        list.head = head;
        list.len += n;
        true
    }

    /// Takes up to `max` free objects of `class`, null-terminated, and their count (0 when
    /// it holds none): the segment on top whole when it has no more than `max` (one step),
    /// else `max` of it. `map` and `class_bytes` are for the hardened build's link checks
    /// (`bins::next_in_bin`).
    pub(crate) fn take(
        &self,
        class: SizeClass,
        max: usize,
        map: *const PageMap,
        class_bytes: usize,
    ) -> (*mut u8, usize) {
        let mut held = self.lock();
        let list = held.lists[class.index()];
        if list.len == 0 || max == 0 {
            return (null_mut(), 0);
        }
        let segmented = segmented(class);
        // SAFETY: the list holds `len` free objects of `class`, linked, in segments that
        // record their tail and length when `segmented`.
        let (n, rest) = unsafe {
            let (seg_tail, seg_len) = if segmented {
                read_segment(list.head)
            } else {
                (null_mut(), list.len)
            };
            if segmented && seg_len <= max {
                let rest = super::bins::next_in_bin(map, seg_tail, class_bytes);
                span::set_next_free(seg_tail, null_mut());
                (seg_len, rest)
            } else {
                let n = max.min(seg_len);
                let mut tail = list.head;
                for _ in 1..n {
                    tail = super::bins::next_in_bin(map, tail, class_bytes);
                }
                let rest = super::bins::next_in_bin(map, tail, class_bytes);
                span::set_next_free(tail, null_mut());
                if segmented {
                    // The rest of the segment is a segment of its own.
                    write_segment(rest, seg_tail, seg_len - n);
                }
                (n, rest)
            }
        };
        held.lists[class.index()] = List {
            head: rest,
            len: list.len - n,
        };
        held.bytes -= n * class.size();
        (list.head, n)
    }

    /// Takes everything out: the objects by class and the stashed spans.
    pub(super) fn take_all(&self) -> Taken {
        Self::take_lists(&mut self.held.lock(), self.take_stash())
    }

    /// Takes the objects out of `held` into `taken`.
    fn take_lists(held: &mut Held, mut taken: Taken) -> Taken {
        taken.lists = core::mem::replace(&mut held.lists, [EMPTY; CLASS_COUNT]);
        held.bytes = 0;
        taken
    }

    /// The objects held, by class, and the stashed spans' bytes (a few reads under the lock);
    /// `None` if the lock is busy at the instant.
    fn try_held_counts(&self) -> Option<([usize; CLASS_COUNT], usize)> {
        let objects = {
            let held = self.held.try_lock()?;
            core::array::from_fn(|c| held.lists[c].len)
        };
        Some((objects, self.stashed_bytes()))
    }

    /// The reserve's objects for the cache's invariant walker (the owner's); does not mark
    /// the reserve used.
    pub(super) fn inspect(&self) -> LockGuard<'_, Held> {
        self.held.lock()
    }
}

impl Default for Reserve {
    fn default() -> Self {
        Self::new()
    }
}

/// What [`Reserves::reclaim`] takes.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Reclaim {
    /// Every reserve's contents (`release_free_memory`).
    All,
    /// The contents of the reserves whose owner has not used them for `idle_ms` milliseconds
    /// by the heap's clock (the background release, with the decay time).
    IdleFor(u64),
}

/// The list of every live thread's reserve, for the reclaimer. Its lock is taken by a thread
/// joining or leaving and by the reclaimer for its whole walk, never on an allocation's
/// path; while holding it the reclaimer takes each reserve's lock with `try_lock` only (a
/// reserve whose owner holds it is skipped until the next pass, and after a `fork`, one
/// locked by a thread that no longer exists stays skipped rather than deadlock the child),
/// then the central and page heap locks.
pub struct Reserves {
    first: Lock<First>,
}

struct First(*const Reserve);
// SAFETY: a pointer to a reserve, which is `Sync`; read and written under the lock.
unsafe impl Send for First {}

impl Reserves {
    /// An empty list.
    #[cfg(not(loom))]
    pub const fn new() -> Reserves {
        Reserves {
            first: Lock::new(First(null())),
        }
    }

    /// An empty list.
    #[cfg(loom)]
    pub fn new() -> Reserves {
        Reserves {
            first: Lock::new(First(null())),
        }
    }

    /// Adds `r` to the list.
    ///
    /// # Safety
    /// `r` is in no list, and stays at its address until [`Reserves::remove`] takes it out.
    pub unsafe fn insert(&self, r: &Reserve) {
        let mut first = self.first.lock();
        let old = first.0;
        // SAFETY: we hold the list's lock, which guards every member's links.
        unsafe {
            r.links.set(Links {
                prev: null(),
                next: old,
            });
            if let Some(old) = old.as_ref() {
                old.links.with_mut(|l| (*l).prev = r);
            }
        }
        first.0 = r;
    }

    /// Takes `r` out of the list: no reclaimer touches it afterwards.
    ///
    /// # Safety
    /// `r` is in this list.
    pub unsafe fn remove(&self, r: &Reserve) {
        let mut first = self.first.lock();
        // SAFETY: we hold the list's lock; `r`'s neighbours are members, alive until removed.
        unsafe {
            let Links { prev, next } = r.links.get();
            match prev.as_ref() {
                Some(p) => p.links.with_mut(|l| (*l).next = next),
                None => first.0 = next,
            }
            if let Some(n) = next.as_ref() {
                n.links.with_mut(|l| (*l).prev = prev);
            }
            r.links.set(Reserve::LINKS);
        }
    }

    /// Takes the contents of the reserves `what` names and gives them back (objects to their
    /// central lists, stashed spans to the page heap); returns the bytes given back.
    ///
    /// # Safety
    /// Every reserve in the list belongs to a cache over `heap`.
    pub unsafe fn reclaim<S: PageSource>(&self, heap: &Heap<S>, what: Reclaim) -> usize {
        let now = heap.now();
        let first = self.first.lock();
        let mut at = first.0;
        let mut bytes = 0;
        // SAFETY: members stay alive while in the list, and the list's lock is held.
        while let Some(r) = unsafe { at.as_ref() } {
            if let Some(mut held) = r.held.try_lock() {
                let due = match what {
                    Reclaim::All => true,
                    Reclaim::IdleFor(idle) => {
                        if r.touched.swap(false, Ordering::Relaxed) {
                            held.idle_since = now;
                        }
                        now.saturating_sub(held.idle_since) >= idle
                    }
                };
                if due {
                    let taken = Reserve::take_lists(&mut held, r.take_stash());
                    drop(held);
                    // SAFETY: per the caller; taken from this heap's cache's reserve.
                    bytes += unsafe { taken.give_back(heap) };
                }
            }
            // SAFETY: under the list's lock.
            at = unsafe { r.links.with(|l| (*l).next) };
        }
        bytes
    }

    /// The objects by class and stashed bytes of every reserve in the list, added up (for
    /// statistics; a few reads under each reserve's lock in turn, skipping one whose lock is
    /// busy at the instant: its owner's, or after a `fork` a thread's that no longer
    /// exists).
    #[cfg_attr(loom, allow(dead_code))] // statistics are left out of loom builds
    pub(crate) fn held_counts(&self) -> ([usize; CLASS_COUNT], usize) {
        let first = self.first.lock();
        let mut objects = [0; CLASS_COUNT];
        let mut stashed = 0;
        let mut at = first.0;
        // SAFETY: members stay alive while in the list, and the list's lock is held.
        while let Some(r) = unsafe { at.as_ref() } {
            let (o, s) = r.try_held_counts().unwrap_or(([0; CLASS_COUNT], 0));
            for (sum, n) in objects.iter_mut().zip(o) {
                *sum += n;
            }
            stashed += s;
            // SAFETY: under the list's lock.
            at = unsafe { r.links.with(|l| (*l).next) };
        }
        (objects, stashed)
    }

    /// Takes the list's lock for `fork` (no reclaimer is then inside any reserve).
    pub fn lock_for_fork(&self) {
        self.first.raw_lock();
    }

    /// Releases the lock [`Reserves::lock_for_fork`] took.
    ///
    /// # Safety
    /// This thread took it with `lock_for_fork`.
    pub unsafe fn unlock_after_fork(&self) {
        // SAFETY: per the caller.
        unsafe { self.first.raw_unlock() };
    }
}

impl Default for Reserves {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    /// `fork`'s handler holds the list's lock from `lock_for_fork` to `unlock_after_fork`,
    /// so no reclaimer or joining thread is inside the list at the fork; after it the list
    /// works as before.
    #[test]
    fn the_fork_lock_holds_the_list_until_unlocked() {
        let reserves = Reserves::new();
        let r = Reserve::new();
        reserves.lock_for_fork();
        assert!(reserves.first.try_lock().is_none(), "held for the fork");
        // SAFETY: this thread took it with `lock_for_fork`.
        unsafe { reserves.unlock_after_fork() };
        assert!(!reserves.first.is_locked(), "released");
        // SAFETY: `r` is in no list, in place until removed below.
        unsafe {
            reserves.insert(&r);
            assert_eq!(reserves.first.lock().0, &raw const r);
            reserves.remove(&r);
        }
        assert!(reserves.first.lock().0.is_null());
    }
}
