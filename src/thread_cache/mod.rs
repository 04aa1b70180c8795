//! The thread cache: per thread, per size class, a list of free objects the thread pops and
//! pushes with no atomic and no lock (TCMalloc's `ThreadCache`; Go's `mcache` keeps spans
//! instead). See `lib.rs` for an overview.
//!
//! | file | concern |
//! |---|---|
//! | `mod.rs` | the value, and the whole operations the global allocator and the tests use |
//! | [`bins`] | the per-class lists: fast paths, batches to and from the central lists |
//! | `large_lists.rs` | freed large objects of 32 KiB to 256 KiB by length, freed and reused without a span record |
//! | `large.rs` | freed large spans kept for reuse (the stash), and lending them to growing buffers |
//! | `realloc.rs` | `realloc`: in place where it can, buffers that keep growing |
//! | [`reserve`] | what the cache keeps past its bins' reachable bound, where another thread can give it back |
//!
//! The value is plain data without `Drop`; `global.rs` keeps one per thread in a
//! `const`-initialised thread local, with its [`Reserve`] beside it, and flushes both at
//! thread exit. Tests build them freely over a heap of fake pages.

pub mod bins;
mod large;
mod large_lists;
mod realloc;
pub mod reserve;
#[cfg(all(test, not(loom)))]
mod tests;

use crate::heap::{Counts, Heap, Owner};
use crate::sampler::Sampler;
use crate::size_class::{self, CLASS_COUNT, SizeClass};
use crate::sys::PageSource;
use bins::Bin;
use core::ptr::null_mut;
pub(crate) use large_lists::LISTED_MAX_BYTES;
pub use reserve::Reserve;

/// Debug builds walk the whole cache on one slow-path call in this many (and at every flush).
#[cfg(debug_assertions)]
const EXPENSIVE_CHECK_EVERY: u32 = 32;

/// A cache adds its counts to the heap's totals on a slow path once it has this many
/// allocations and frees not yet added (and at every flush).
const FOLD_EVERY: u64 = 4096;

/// [`ThreadCache::maybe_trim`] reads the clock on one call in this many.
const TRIM_CLOCK_EVERY: u32 = 64;

/// A thread's cache: free objects by size class, and freed large spans.
#[repr(C)]
pub struct ThreadCache {
    /// A copy of the double-free key (`check::free_key`), taken when the cache is first
    /// activated, so the free fast path reads it from the cache rather than a global.
    key: u64,
    /// Frees through this cache (the allocations are its sampler's charges); the free fast
    /// path adds one, next to the key it reads.
    frees: u64,
    /// The counts already added to the heap's totals ([`ThreadCache::fold_counts`]).
    folded: Counts,
    /// Whether the cache may hold anything: only a cache that will be flushed (a thread's
    /// registered cache, the orphan cache, a test's) is activated. The free fast path reads
    /// it (through a raw pointer) before it forms a reference to the cache.
    active: bool,
    /// The heap profiler's countdown: every allocation through this cache is charged to it
    /// (by the caller, `global.rs`, which samples the one that crosses it).
    sampler: Sampler,
    /// By class; a bin's address is the cache's plus a constant plus `class * 16`.
    bins: [Bin; CLASS_COUNT],
    /// Freed large objects of 32 KiB to 256 KiB, by length.
    large_lists: large_lists::LargeLists,
    /// The bins' bounds in bytes (each bin's bound times its class size): what the cache
    /// may hold in free small objects, kept within the heap's `thread_cache_bytes`.
    bound_bytes: usize,
    /// When [`ThreadCache::maybe_trim`] next looks at the stash (heap clock, ms; 0: it has not
    /// looked yet).
    trim_at: u64,
    /// Calls of [`ThreadCache::maybe_trim`] (it reads the clock on some of them).
    trim_ticks: u32,
    /// Whether the stash or the large lists served an allocation since the last trim.
    stash_used: bool,
    /// Whether the stash held a span when this thread last looked (a reclaimer may have
    /// emptied it since): the stash is not looked at while it is `false`.
    stash_seen: bool,
    /// When each stash slot was filled, by `stash_clock`: the order of the reserve's stash
    /// slots (oldest out first when all are full, newest first to reuse).
    stash_stamps: [u64; reserve::STASH_SLOTS],
    stash_clock: u64,
    /// The stash slot filled last. Only the owner fills a slot, so that slot holds the
    /// newest stashed span or nothing (taken since): where a large allocation looks first.
    stash_newest: usize,
    /// By class, how many objects the reserve may keep: growths of the bin's bound that the
    /// bins' budget refused and the cache's whole budget had room for (the bins keep at
    /// most `REACHABLE_BYTES`; the reserve holds what the bins would have held beyond it).
    /// Back to 0 at a flush, with the bounds.
    reserve_allowed: [u32; CLASS_COUNT],
    /// The bytes `reserve_allowed` adds up to, within the reserve's budget.
    reserve_allowed_bytes: usize,
    /// The reserve beside the cache (null: none; the cache then keeps no more than its bins
    /// and stashes nothing). See [`ThreadCache::attach_reserve`].
    reserve: *const Reserve,
    /// Where this thread's last `realloc` that grew an object moved it: a hint (the object
    /// may be gone) that a `realloc` of this address is a buffer growing again.
    grown: usize,
    /// The start of the stashed span last lent to a growing buffer as its room (0: none
    /// out): a thread lends one at a time, so a buffer that keeps its room for good pins at
    /// most one stashed span (see `lend_stashed`). Checked through the page map, never
    /// through a record pointer kept from before.
    lent_start: usize,
    /// Hardened build: the page map the bins' links are checked against when followed (the
    /// heap's whose slow paths last filled or made room in a bin; a bin holds objects only
    /// after one of them ran).
    #[cfg(feature = "hardened")]
    map: *const crate::page_map::PageMap,
    /// Bin growths refused for the budget (`grow_bound`: one in `STEAL_EVERY` takes room
    /// from the largest bin).
    over_budget: u32,
    /// Debug builds: slow-path calls so far, for the expensive checks' period.
    #[cfg(debug_assertions)]
    slow_calls: u32,
}

// SAFETY: the cache only holds pointers to objects and spans it owns; moving it to another
// thread (the orphan cache behind its lock) moves that ownership with it.
unsafe impl Send for ThreadCache {}

impl ThreadCache {
    /// An empty cache.
    pub const fn new() -> ThreadCache {
        ThreadCache {
            key: 0,
            frees: 0,
            folded: Counts {
                allocations: 0,
                frees: 0,
            },
            active: false,
            sampler: Sampler::new(),
            bins: [const { Bin::empty() }; CLASS_COUNT],
            large_lists: large_lists::LargeLists::new(),
            bound_bytes: 0,
            trim_at: 0,
            trim_ticks: 0,
            stash_used: false,
            stash_seen: false,
            stash_stamps: [0; reserve::STASH_SLOTS],
            stash_clock: 0,
            stash_newest: 0,
            reserve_allowed: [0; CLASS_COUNT],
            reserve_allowed_bytes: 0,
            reserve: core::ptr::null(),
            grown: 0,
            lent_start: 0,
            #[cfg(feature = "hardened")]
            map: core::ptr::null(),
            over_budget: 0,
            #[cfg(debug_assertions)]
            slow_calls: 0,
        }
    }

    /// Whether the cache at `cache` is active, read without forming a reference to it (a
    /// cache shared by several threads, such as the one of exited threads, is never active
    /// and never written).
    ///
    /// # Safety
    /// `cache` points to a live cache.
    #[inline(always)]
    pub unsafe fn is_active(cache: *const ThreadCache) -> bool {
        // SAFETY: per the caller; a place read through the raw pointer.
        unsafe { (*cache).active }
    }

    /// The heap profiler's countdown for allocations through this cache.
    #[inline(always)]
    pub fn sampler(&mut self) -> &mut Sampler {
        &mut self.sampler
    }

    /// Charges an allocation of `size` bytes to the countdown of the cache at `cache`
    /// ([`Sampler::charge`]); `false` when it crossed. Through a raw pointer, for the fast
    /// paths.
    ///
    /// # Safety
    /// `cache` points to a live cache that is this thread's alone (one it just popped an
    /// object from).
    #[inline(always)]
    pub unsafe fn charge_raw(cache: *mut ThreadCache, size: usize) -> bool {
        // SAFETY: per the caller.
        unsafe { Sampler::charge_raw(&raw mut (*cache).sampler, size) }
    }

    /// Allocations and frees served through this cache since it was made.
    pub fn counts(&self) -> Counts {
        Counts {
            allocations: self.sampler.charges(),
            frees: self.frees,
        }
    }

    /// The counts not yet added to the heap's totals.
    pub fn unfolded_counts(&self) -> Counts {
        self.counts().since(self.folded)
    }

    /// Adds the counts since the last fold to the heap's totals.
    pub fn fold_counts<S: PageSource>(&mut self, heap: &Heap<S>) {
        heap.fold_counts(self.unfolded_counts());
        self.folded = self.counts();
    }

    /// [`ThreadCache::fold_counts`] once [`FOLD_EVERY`] operations wait (slow paths).
    #[inline]
    pub(crate) fn maybe_fold_counts<S: PageSource>(&mut self, heap: &Heap<S>) {
        let c = self.unfolded_counts();
        if c.allocations + c.frees >= FOLD_EVERY {
            self.fold_counts(heap);
        }
    }

    /// Takes back the count of a free the allocator made itself (an object it popped for a
    /// request and then served otherwise, such as a sampled one).
    pub fn uncount_free(&mut self) {
        self.frees = self.frees.wrapping_sub(1);
    }

    /// Gives the cache the double-free key, before it holds anything: from then on it may
    /// keep objects and stash large spans. Only for a cache that will be flushed.
    #[inline]
    pub fn activate(&mut self) {
        if !self.active {
            self.key = crate::check::free_key();
            self.active = true;
            self.update_lists_limit();
        }
    }

    /// Makes a flushed cache inactive again (thread exit): the fast paths then leave it alone
    /// and requests go to the slow paths.
    pub fn deactivate(&mut self) {
        debug_assert!(self.bins.iter().all(|b| b.head.is_null()));
        self.active = false;
        self.update_lists_limit();
    }

    /// Gives the cache a reserve: from then on its bins keep at most [`REACHABLE_BYTES`] in
    /// all (within `thread_cache_bytes`), the rest of the budget goes to the reserve, and
    /// freed large spans are stashed there.
    ///
    /// # Safety
    /// `reserve` stays alive, at its address, and is used by no other cache, until
    /// [`ThreadCache::detach_reserve`].
    ///
    /// [`REACHABLE_BYTES`]: reserve::REACHABLE_BYTES
    pub unsafe fn attach_reserve(&mut self, reserve: &Reserve) {
        self.reserve = reserve;
        self.update_lists_limit();
    }

    /// Forgets the reserve (after a flush, which emptied it).
    pub fn detach_reserve(&mut self) {
        self.reserve = core::ptr::null();
        self.update_lists_limit();
    }

    /// The cache's reserve, if it has one. The lifetime is not tied to the cache: the
    /// reserve is a value beside it (see [`ThreadCache::attach_reserve`]).
    #[inline]
    fn reserve<'r>(&self) -> Option<&'r Reserve> {
        // SAFETY: an attached reserve stays alive until detached (`attach_reserve`), and
        // callers use the reference within one operation on the cache.
        unsafe { self.reserve.as_ref() }
    }

    /// The most bytes of bound the bins may take in all: the heap's `thread_cache_bytes`,
    /// and no more than [`reserve::REACHABLE_BYTES`] when the cache has a reserve.
    #[inline]
    fn bins_budget<S: PageSource>(&self, heap: &Heap<S>) -> usize {
        let budget = heap.thread_cache_bytes();
        if self.reserve.is_null() {
            budget
        } else {
            budget.min(reserve::REACHABLE_BYTES)
        }
    }

    /// The most bytes of free objects the reserve may keep: the rest of the budget.
    #[inline]
    fn reserve_budget<S: PageSource>(&self, heap: &Heap<S>) -> usize {
        heap.thread_cache_bytes() - self.bins_budget(heap)
    }

    /// Gives every cached object back to the central lists, and the listed and stashed
    /// large objects to the page heap (thread exit, or `flush_thread_cache`), the reserve's
    /// included. The cache stays usable.
    pub fn flush<S: PageSource>(&mut self, heap: &Heap<S>) {
        self.expensive_check(heap, true);
        for class in SizeClass::all() {
            self.empty_bin(heap, class);
        }
        self.free_listed(heap);
        self.stash_seen = false;
        self.reserve_allowed = [0; CLASS_COUNT];
        self.reserve_allowed_bytes = 0;
        if let Some(r) = self.reserve() {
            let taken = r.take_all();
            // SAFETY: taken from this cache's reserve, over `heap`.
            unsafe { taken.give_back(heap) };
        }
        self.fold_counts(heap);
        heap.maybe_release();
    }

    /// Gives the stash and the large lists back when they served nothing for a quarter of
    /// the decay time. Called from the cache's slow paths and large allocations; a few
    /// instructions when not due.
    #[inline]
    pub fn maybe_trim<S: PageSource>(&mut self, heap: &Heap<S>) {
        if !self.stash_seen && self.large_lists_empty() {
            return;
        }
        self.trim_ticks = self.trim_ticks.wrapping_add(1);
        let now = if self.trim_ticks % TRIM_CLOCK_EVERY == 0 {
            heap.now()
        } else {
            heap.recent_now()
        };
        if now >= self.trim_at {
            let decay = heap.decay_ms();
            // The first look starts the first period rather than ending one: a stash is
            // given back only after a whole quarter decay without use.
            let first = self.trim_at == 0;
            self.trim_at = now + (decay.max(0) as u64 / 4).max(1);
            if !core::mem::take(&mut self.stash_used) && decay >= 0 && !first {
                self.free_stash(heap);
                self.free_listed(heap);
            }
        }
    }

    /// Gives back what the cache keeps for reuse, now (`release_free_memory`): every cached
    /// object, and the stash.
    pub fn trim_now<S: PageSource>(&mut self, heap: &Heap<S>) {
        self.flush(heap);
    }

    // ---------------------------------------------------------------------------------
    // Whole operations over a heap, as the global allocator, the C ABI and the tests use
    // them.

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
            None => self.alloc_large(heap, size, align),
        }
    }

    /// A large object (no class serves `size` at `align`): the newest listed object of the
    /// same length, else a stashed span of the same length, else the page heap. A listed
    /// object takes a few loads and stores; the span stashed last, when it fits, a few loads
    /// and one compare-and-swap; both out of the slow path's frame.
    #[inline]
    pub fn alloc_large<S: PageSource>(
        &mut self,
        heap: &Heap<S>,
        size: usize,
        align: usize,
    ) -> *mut u8 {
        let p = self.pop_listed(heap, size, align);
        if !p.is_null() {
            return p;
        }
        self.alloc_large_unlisted(heap, size, align)
    }

    /// [`ThreadCache::alloc_large`] past the large lists (for a caller that looked there
    /// already): the stash, else the page heap.
    #[inline(always)]
    pub fn alloc_large_unlisted<S: PageSource>(
        &mut self,
        heap: &Heap<S>,
        size: usize,
        align: usize,
    ) -> *mut u8 {
        if let Some(p) = self.alloc_large_newest(heap, size, align) {
            return p;
        }
        self.alloc_large_slow(heap, size, align)
    }

    /// [`ThreadCache::alloc_large`] past the newest stashed span.
    #[inline(never)]
    fn alloc_large_slow<S: PageSource>(
        &mut self,
        heap: &Heap<S>,
        size: usize,
        align: usize,
    ) -> *mut u8 {
        if self.active {
            if let Some(p) = self.alloc_large_stashed(heap, size, align) {
                return p;
            }
            self.maybe_trim(heap);
        }
        heap.alloc_large(size, align)
            .map_or(null_mut(), |(p, zeroed)| {
                Self::take_large(heap, p.as_ptr(), zeroed)
            })
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
                    let p = Self::take_large(heap, p.as_ptr(), zeroed);
                    if !zeroed {
                        // SAFETY: a new large object of at least `size` bytes.
                        unsafe { core::ptr::write_bytes(p, 0, size) };
                    }
                    p
                }
                None => null_mut(),
            },
        }
    }

    /// Frees `ptr` given the size and alignment it was allocated with. The class comes from
    /// the page map, as for [`ThreadCache::free`]; debug and hardened builds check it against
    /// the layout.
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
        if cfg!(debug_assertions) || cfg!(feature = "hardened") {
            check_layout(heap, ptr, size, align);
        }
        // SAFETY: per the caller.
        unsafe { self.free(heap, ptr) }
    }

    /// Frees `ptr` without knowing its size (C `free`): the page map's small-object word
    /// gives the class and the span start, and the object goes on its bin. Stops the process
    /// with a message on a pointer this heap did not hand out, where the page map can tell.
    ///
    /// # Safety
    /// `ptr` is non-null, and if it was handed out by this heap, it is not used afterwards.
    #[inline]
    pub unsafe fn free<S: PageSource>(&mut self, heap: &Heap<S>, ptr: *mut u8) {
        self.activate();
        let word = heap.page_map().small_word_of(ptr as usize);
        // SAFETY: per the caller; `word` is the word of its page.
        if !unsafe { self.push_small(heap, ptr, word) || self.push_listed(ptr, word) } {
            // SAFETY: per the caller.
            unsafe { self.free_slow(heap, ptr) }
        }
    }

    /// The free of anything but a small object's start: a large object goes to the stash or
    /// the page heap; anything else stops the process with the message that fits.
    ///
    /// # Safety
    /// As [`ThreadCache::free`].
    #[cold]
    #[inline(never)]
    pub unsafe fn free_slow<S: PageSource>(&mut self, heap: &Heap<S>, ptr: *mut u8) {
        match heap.owner(ptr) {
            // SAFETY: validated by `owner`; the caller gives the object up.
            Owner::Large(span) => unsafe { self.free_large(heap, span) },
            // The page's word said otherwise a moment ago: only a racing invalid free (the
            // span given back meanwhile) gets here.
            Owner::Small(_) => crate::check::fatal_at(
                "invalid free: pointer not allocated by spanalloc",
                ptr as usize,
            ),
        }
    }
}

impl ThreadCache {
    /// The first broken invariant of this cache, if any: every bin holds exactly as many
    /// objects as its count says, ending in null (so no object twice, no cycle), its room
    /// within its bound; each is the start of an object of a small span of the bin's class
    /// (as the page map says) and carries the free key; the reserve's lists likewise, each
    /// segment as long as it records, their bytes adding up; the large lists (see
    /// `large_lists.rs`); every stashed span is a large span marked stashed (one of a
    /// listed length with the word naming its record). Walks every object (an expensive check: for tests).
    pub fn invariant_violation<S: PageSource>(&self, heap: &Heap<S>) -> Option<&'static str> {
        macro_rules! ensure {
            ($cond:expr, $msg:expr) => {
                if !$cond {
                    return Some($msg);
                }
            };
        }
        let bound_bytes: usize = SizeClass::all()
            .map(|c| self.bins[c.index()].max as usize * c.size())
            .sum();
        ensure!(
            bound_bytes == self.bound_bytes,
            "the cache's bound in bytes is the sum of its bins'"
        );
        for class in SizeClass::all() {
            let bin = &self.bins[class.index()];
            ensure!(bin.room <= bin.max, "a bin's room is within its bound");
            ensure!(
                self.active || bin.max == 0,
                "an inactive cache holds nothing"
            );
            let mut at = bin.head;
            let mut n = 0;
            while !at.is_null() {
                ensure!(n < bin.len(), "a bin holds no more objects than its count");
                let word = heap.page_map().small_word_of(at as usize);
                ensure!(
                    crate::page_map::word_class(word) == class.index(),
                    "a bin's objects are of its class"
                );
                let offset = at as usize - crate::page_map::word_start(word);
                ensure!(
                    offset % class.size() == 0 && offset < class.objects() * class.size(),
                    "a bin's objects are object starts"
                );
                // SAFETY: a free object of our bin: its first two words are ours.
                unsafe {
                    ensure!(
                        !crate::check::FREE_CHECKS || crate::span::is_marked_freed(at, self.key),
                        "a bin's objects carry the free key"
                    );
                    at = crate::span::next_free(at);
                }
                n += 1;
            }
            ensure!(n == bin.len(), "a bin holds as many objects as its count");
        }
        ensure!(
            self.active || self.large_lists_empty(),
            "an inactive cache holds nothing"
        );
        if let Some(v) = self.listed_violation(heap) {
            return Some(v);
        }
        if let Some(r) = self.reserve() {
            let held = r.inspect();
            let mut bytes = 0;
            for class in SizeClass::all() {
                let list = held.lists[class.index()];
                let mut at = list.head;
                let mut n = 0;
                while !at.is_null() {
                    ensure!(n < list.len, "a reserve list holds no more than its count");
                    let word = heap.page_map().small_word_of(at as usize);
                    ensure!(
                        crate::page_map::word_class(word) == class.index(),
                        "a reserve list's objects are of its class"
                    );
                    // SAFETY: a free object of our reserve: its first two words are ours.
                    unsafe {
                        ensure!(
                            !crate::check::FREE_CHECKS
                                || crate::span::is_marked_freed(at, self.key),
                            "a reserve list's objects carry the free key"
                        );
                        at = crate::span::next_free(at);
                    }
                    n += 1;
                }
                ensure!(n == list.len, "a reserve list holds as many as its count");
                bytes += n * class.size();
            }
            ensure!(bytes == held.bytes, "a reserve's bytes are its objects'");
            for class in SizeClass::all().filter(|&c| reserve::segmented(c)) {
                let list = held.lists[class.index()];
                let (mut at, mut left) = (list.head, list.len);
                while left != 0 {
                    // SAFETY: free objects of our reserve, in segments (checked above to
                    // hold `len` linked objects).
                    let (tail, n) = unsafe { reserve::read_segment(at) };
                    ensure!(
                        n >= 1 && n <= left,
                        "a reserve segment's length fits its list"
                    );
                    let mut end = at;
                    for _ in 1..n {
                        // SAFETY: as above.
                        end = unsafe { crate::span::next_free(end) };
                    }
                    ensure!(end == tail, "a reserve segment ends where it says");
                    // SAFETY: as above.
                    at = unsafe { crate::span::next_free(end) };
                    left -= n;
                }
            }
            drop(held);
            for i in 0..reserve::STASH_SLOTS {
                let p = r.stashed(i);
                if p.is_null() {
                    continue;
                }
                // SAFETY: span records are never unmapped and the fields read are atomics.
                // A reclaimer on another thread may take the span out meanwhile (it empties
                // the slot, then clears the mark, then frees the span): a span that looks
                // wrong is a violation only if its slot still holds it afterwards. The mark
                // is read first: cleared, it was cleared after the slot was emptied
                // (`unstash_large` releases, `is_stashed_large` acquires), and a span is
                // freed, and its record recycled, only after its mark is cleared.
                let s = unsafe { &*p };
                let sound = s.is_stashed_large()
                    && s.kind() == crate::span::SpanKind::Large
                    && (!large_lists::listable(s.object_pages())
                        || heap.page_map().small_word_of(s.start_addr())
                            == crate::page_map::large_word(s));
                ensure!(
                    sound || r.stashed(i) != p,
                    "stashed spans are large spans marked stashed, whose word names their record"
                );
            }
        }
        None
    }

    /// The expensive-checks tier of debug builds (mimalloc's full-debug build is the model):
    /// the whole walker, [`ThreadCache::invariant_violation`], at every flush (`always`) and
    /// on one slow-path call in `EXPENSIVE_CHECK_EVERY`, stopping the process on a broken
    /// invariant (no panic inside the allocator). Release builds: nothing.
    #[inline]
    pub(crate) fn expensive_check<S: PageSource>(&mut self, heap: &Heap<S>, always: bool) {
        #[cfg(debug_assertions)]
        {
            self.slow_calls = self.slow_calls.wrapping_add(1);
            if always || self.slow_calls % EXPENSIVE_CHECK_EVERY == 0 {
                if let Some(violation) = self.invariant_violation(heap) {
                    crate::check::fatal(violation);
                }
            }
        }
        #[cfg(not(debug_assertions))]
        let _ = (heap, always);
    }

    /// Panics on the first broken invariant of [`ThreadCache::invariant_violation`].
    pub fn check_invariants<S: PageSource>(&self, heap: &Heap<S>) {
        if let Some(v) = self.invariant_violation(heap) {
            panic!("thread cache invariant broken: {v}");
        }
    }
}

impl Default for ThreadCache {
    fn default() -> Self {
        Self::new()
    }
}

/// Debug and hardened builds: stops the process if a small object is freed with a layout of
/// another class than the one it was allocated with.
pub fn check_layout<S: PageSource>(heap: &Heap<S>, ptr: *mut u8, size: usize, align: usize) {
    let word = heap.page_map().small_word_of(ptr as usize);
    let class = crate::page_map::word_class(word);
    if class != 0 {
        if let Some(want) = size_class::class_for(size, align) {
            if want.index() != class {
                crate::check::fatal_at(
                    "dealloc with a layout of another size class than alloc",
                    ptr as usize,
                );
            }
        }
    }
}
