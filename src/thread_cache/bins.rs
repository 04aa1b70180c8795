//! The thread cache's per-class lists of free objects: the fast paths (pop, push), and the
//! slow paths that move batches to and from the central lists. See `lib.rs` for an
//! overview.
//!
//! A bin holds free objects of one class from any span (TCMalloc's `ThreadCache::FreeList`):
//! a free never asks which span the object is in, so a free that lands far from the last
//! allocation costs what a free of the last allocation costs. Each bin has a bound and the
//! room left under it; allocation from an empty bin fetches a batch from the central list
//! ([`ThreadCache::alloc_slow`]), a free into a bin with no room left hands a batch back
//! first ([`ThreadCache::push_small_slow`]). The bound starts at 0 (so an inactive cache,
//! whose bins never grow, sends every free to the slow path without being written), and
//! grows by one batch each time the bin runs dry or fills while short, up to
//! [`class_bound`], so a class a thread uses a lot keeps more.

use super::ThreadCache;
use crate::central_free_list::batch_size;
use crate::heap::Heap;
use crate::page_map::{PageMap, word_class, word_class_bytes};
use crate::size_class::{CLASS_COUNT, SMALL_STEP_LIMIT, SizeClass, is_object_offset};
use crate::span;
use crate::sys::PageSource;
use core::ptr::null_mut;

/// Past its budget, a cache grows one bin in this many by halving its largest bin
/// ([`ThreadCache::grow_bound`]).
pub(super) const STEAL_EVERY: u32 = 16;

/// One size class of a thread cache.
#[repr(C)]
#[derive(Debug)]
pub struct Bin {
    /// Free objects, each carrying the free key, linked through their first word.
    pub(super) head: *mut u8,
    /// How many more objects the bin takes before a free must hand a batch back: `max`
    /// minus the objects on `head`.
    pub(super) room: u32,
    /// The bin's bound.
    pub(super) max: u32,
}

impl Bin {
    pub(super) const fn empty() -> Bin {
        Bin {
            head: null_mut(),
            room: 0,
            max: 0,
        }
    }

    /// Objects on the bin.
    #[inline(always)]
    pub(super) fn len(&self) -> u32 {
        self.max - self.room
    }
}

/// The most objects a bin of `class` keeps: `bin_bytes` worth (the heap's
/// [`Heap::bin_bytes`]), at least two batches, at most what a count holds.
#[inline]
pub fn class_bound(class: SizeClass, bin_bytes: usize) -> u32 {
    (bin_bytes / class.size())
        .max(2 * batch_size(class))
        .min(u32::MAX as usize / 2) as u32
}

// The free path indexes the bins (and `size_class::is_object_offset` its table) with a
// small-object word's class bits, the class times 16.
const _: () = assert!(core::mem::size_of::<Bin>() == 16);

/// The offset of `ptr` from the start of the span that `word`, its page's small-object
/// word, names: `ptr - page_map::word_start(word)`, computed as `ptr - word + class bits` (the same
/// value, wrapping alike), which leaves `word` intact in its register for a slow path that
/// takes it, with no copy.
#[inline(always)]
fn object_offset(ptr: *mut u8, word: usize) -> usize {
    (ptr as usize)
        .wrapping_sub(word)
        .wrapping_add(word_class_bytes(word))
}

/// The byte offset in [`ThreadCache`]'s bins of the bin for each size `0..=SMALL_STEP_LIMIT`:
/// the allocation fast path indexes it with the size itself and gets the bin's address in
/// one load. `const`, so a constant size still folds to its bin.
const SMALL_BIN_OFFSET: [u16; SMALL_STEP_LIMIT + 1] = {
    let mut table = [0u16; SMALL_STEP_LIMIT + 1];
    let mut size = 0;
    while size <= SMALL_STEP_LIMIT {
        let offset = crate::size_class::class_index_of_small(size) * core::mem::size_of::<Bin>();
        assert!(offset <= u16::MAX as usize);
        table[size] = offset as u16;
        size += 1;
    }
    table
};

impl ThreadCache {
    #[inline(always)]
    pub(super) fn bin(&mut self, class: SizeClass) -> &mut Bin {
        // SAFETY: a `SizeClass` always indexes the class table, which has CLASS_COUNT
        // entries (classes are made only from the table or checked lookups).
        unsafe { self.bins.get_unchecked_mut(class.index()) }
    }

    /// The bin of the class of `size`.
    ///
    /// # Safety
    /// `size <= SMALL_STEP_LIMIT`.
    #[inline(always)]
    pub(super) unsafe fn small_bin(&mut self, size: usize) -> &mut Bin {
        // SAFETY: `size` indexes the table (per the caller), whose entries are byte offsets
        // of elements of `bins`.
        unsafe {
            let offset = *SMALL_BIN_OFFSET.get_unchecked(size) as usize;
            &mut *self.bins.as_mut_ptr().byte_add(offset)
        }
    }

    /// Pops a free object of `class`, or null when the bin is empty (then call
    /// [`ThreadCache::alloc_slow`]). No atomic, no lock.
    #[inline(always)]
    pub fn pop(&mut self, class: SizeClass) -> *mut u8 {
        // SAFETY: our own cache.
        let map = unsafe { link_map(self) };
        pop_from(
            self.bin(class),
            map,
            class.index() * core::mem::size_of::<Bin>(),
        )
    }

    /// As [`ThreadCache::pop`] for the class of `size`, found with one table load.
    ///
    /// # Safety
    /// `size <= SMALL_STEP_LIMIT`.
    #[inline(always)]
    pub unsafe fn pop_small(&mut self, size: usize) -> *mut u8 {
        // SAFETY: our own cache.
        let map = unsafe { link_map(self) };
        // SAFETY: per the caller.
        let class_bytes = unsafe { *SMALL_BIN_OFFSET.get_unchecked(size) } as usize;
        // SAFETY: per the caller.
        pop_from(unsafe { self.small_bin(size) }, map, class_bytes)
    }

    /// As [`ThreadCache::pop_small`] through a raw pointer: forms a reference to the bin only
    /// when it holds an object, so that a cache shared by several threads and never filled
    /// (the one of exited threads) is only read.
    ///
    /// # Safety
    /// `size <= SMALL_STEP_LIMIT`; `cache` points to a live cache that is either this
    /// thread's alone or never holds an object.
    #[inline(always)]
    pub unsafe fn pop_small_raw(cache: *mut ThreadCache, size: usize) -> *mut u8 {
        // SAFETY: per the caller; the table's entries are byte offsets of elements of `bins`.
        unsafe {
            let offset = *SMALL_BIN_OFFSET.get_unchecked(size) as usize;
            let bin = (&raw mut (*cache).bins).cast::<Bin>().byte_add(offset);
            if (*bin).head.is_null() {
                return null_mut();
            }
            pop_from(&mut *bin, link_map(cache), offset)
        }
    }

    /// As [`ThreadCache::pop`], through a raw pointer (see [`ThreadCache::pop_small_raw`]).
    ///
    /// # Safety
    /// As [`ThreadCache::pop_small_raw`], without the bound on the size.
    #[inline(always)]
    pub unsafe fn pop_raw(cache: *mut ThreadCache, class: SizeClass) -> *mut u8 {
        // SAFETY: per the caller; a class indexes the bins.
        unsafe {
            let bin = (&raw mut (*cache).bins).cast::<Bin>().add(class.index());
            if (*bin).head.is_null() {
                return null_mut();
            }
            let class_bytes = class.index() * core::mem::size_of::<Bin>();
            pop_from(&mut *bin, link_map(cache), class_bytes)
        }
    }

    /// Frees `ptr` if the page map's small-object word `word` of its page says it is the
    /// start of an object of a small span and its bin has room: pushes it there. Returns
    /// `false`, having written nothing, otherwise (a large object, a pointer that is no
    /// object's start, a full bin, an inactive cache: the caller's slow path). No atomic, no
    /// lock, no call.
    ///
    /// # Safety
    /// `ptr` is a pointer the caller gives up; `word` is the small-object word of its page;
    /// the cache is this thread's alone, or inactive (then it is only read).
    #[inline(always)]
    pub unsafe fn push_small_raw(cache: *mut ThreadCache, ptr: *mut u8, word: usize) -> bool {
        // The class from the word itself: the class test of `push_class_raw` folds away.
        // SAFETY: per the caller.
        unsafe { Self::push_class_raw(cache, ptr, word, word_class_bytes(word)) }
    }

    /// As [`ThreadCache::push_small_raw`] for a free that knows the object's size: the bin
    /// comes from `size` (one table load, as allocation finds it), and the page map's word
    /// must name the same class. The push's address then does not wait for the page-map
    /// loads: they only feed the checks, which the processor resolves alongside the push.
    /// `false`, having written nothing, when the word names another class (an object whose
    /// layout is not its class's, such as an over-aligned one: the caller's slow path takes
    /// the word's class) or on any failure [`ThreadCache::push_small_raw`] reports.
    ///
    /// # Safety
    /// As [`ThreadCache::push_small_raw`], and `size <= SMALL_STEP_LIMIT`.
    #[inline(always)]
    pub unsafe fn push_sized_raw(
        cache: *mut ThreadCache,
        ptr: *mut u8,
        word: usize,
        size: usize,
    ) -> bool {
        // SAFETY: per the caller, `size` indexes the table.
        let class_bytes = unsafe { *SMALL_BIN_OFFSET.get_unchecked(size) } as usize;
        // SAFETY: per the caller.
        unsafe { Self::push_class_raw(cache, ptr, word, class_bytes) }
    }

    /// As [`ThreadCache::push_sized_raw`] for a class found by the caller.
    ///
    /// # Safety
    /// As [`ThreadCache::push_small_raw`], and `class` is the class of the object's layout.
    #[inline(always)]
    pub unsafe fn push_class_raw_of(
        cache: *mut ThreadCache,
        ptr: *mut u8,
        word: usize,
        class: SizeClass,
    ) -> bool {
        // SAFETY: per the caller.
        unsafe {
            Self::push_class_raw(
                cache,
                ptr,
                word,
                class.index() * core::mem::size_of::<Bin>(),
            )
        }
    }

    /// The push of [`ThreadCache::push_sized_raw`], with the class as its bins' byte offset.
    ///
    /// # Safety
    /// As [`ThreadCache::push_small_raw`], and `class_bytes` is a class's index times 16.
    #[inline(always)]
    unsafe fn push_class_raw(
        cache: *mut ThreadCache,
        ptr: *mut u8,
        word: usize,
        class_bytes: usize,
    ) -> bool {
        if word_class_bytes(word) != class_bytes
            // SAFETY: `class_bytes` is a class's index times 16, per the caller.
            || !unsafe { is_object_offset(class_bytes, object_offset(ptr, word)) }
        {
            return false;
        }
        // SAFETY: per the caller; the class is below CLASS_COUNT.
        unsafe {
            let bin = (&raw mut (*cache).bins).cast::<Bin>().byte_add(class_bytes);
            if (*bin).room == 0 {
                return false;
            }
            // Room means an active cache: this thread's alone.
            let bin = &mut *bin;
            span::mark_freed(ptr, (*cache).key);
            #[cfg(feature = "hardened")]
            crate::hardening::poison(ptr, class_of_bytes(class_bytes));
            span::set_next_free(ptr, bin.head);
            bin.head = ptr;
            bin.room -= 1;
            (*cache).frees = (*cache).frees.wrapping_add(1);
        }
        true
    }

    /// As [`ThreadCache::push_small_raw`] when the bin may have no room: makes room first
    /// (a batch back to the central list, or a larger bound). `false`, having done nothing,
    /// when `ptr` is not a small object's start.
    ///
    /// # Safety
    /// As [`ThreadCache::push_small_raw`], and the cache is active.
    #[inline]
    pub unsafe fn push_small<S: PageSource>(
        &mut self,
        heap: &Heap<S>,
        ptr: *mut u8,
        word: usize,
    ) -> bool {
        // SAFETY: a small-object word's class bits are a class index below CLASS_COUNT
        // times 16 (see `page_map::small_word`).
        if !unsafe { is_object_offset(word_class_bytes(word), object_offset(ptr, word)) } {
            return false;
        }
        debug_assert!(self.active);
        let class = SizeClass(word_class(word) as u8);
        if self.bin(class).room == 0 {
            self.push_small_slow(heap, class);
        }
        // SAFETY: per the caller; the bin has room now.
        unsafe { Self::push_small_raw(self, ptr, word) }
    }

    /// Makes room in the full bin of `class`: hands a batch back to the central list (the
    /// most recently freed objects, whose links are in cache) when the bin holds one, else
    /// raises the bound by a batch.
    #[cold]
    #[inline(never)]
    pub fn push_small_slow<S: PageSource>(&mut self, heap: &Heap<S>, class: SizeClass) {
        self.maybe_fold_counts(heap);
        #[cfg(feature = "hardened")]
        {
            self.map = heap.page_map();
        }
        let batch = batch_size(class) as u32;
        let bound = class_bound(class, heap.bin_bytes());
        debug_assert_eq!(self.bin(class).room, 0);
        let max = self.bin(class).max;
        if max < batch {
            // Less than a batch of bound: a bin always has room for one batch, budget or
            // not (past the budget, `grow_bound` may refuse; a full bin of fewer objects
            // than a batch has nothing to hand back to make room).
            if !self.grow_bound(heap, class, max + batch) {
                self.raise_bound(class, max + batch);
            }
            return;
        }
        // A bound lowered since the bin grew (`Heap::set_bin_bytes`): shrink towards it
        // first, handing back what the bin then holds too many of. The batch handed back
        // after it is what makes room: shrunk to exactly what it holds, the bin would have
        // none, and the free that called this would find it full again.
        if max > bound {
            self.shrink_bound(heap, class, bound.max(batch));
        }
        if self.bin(class).room == 0 {
            self.release_slow(heap, class);
        }
    }

    /// Whether the bins' bounds, `extra` bytes more, stay within the bins' budget
    /// (`ThreadCache::bins_budget`).
    fn fits_bins_budget<S: PageSource>(&self, heap: &Heap<S>, extra: usize) -> bool {
        self.bound_bytes + extra <= self.bins_budget(heap)
    }

    /// Raises the bound of `class`'s bin to `want` if the cache's bounds stay within the
    /// bins' budget (halving the bin that holds the most bytes, another class's, to make
    /// room if need be). Returns whether it did.
    fn grow_bound<S: PageSource>(&mut self, heap: &Heap<S>, class: SizeClass, want: u32) -> bool {
        let max = self.bin(class).max;
        debug_assert!(want > max);
        let extra = (want - max) as usize * class.size();
        if !self.fits_bins_budget(heap, extra) {
            self.allow_in_reserve(heap, class, want - max);
            // Past the budget, one growth in `STEAL_EVERY` takes room from the largest bin;
            // the others keep the bounds as they are. Halving another bin on every refill
            // made the caches trade objects back and forth through the central lists: a
            // mixed-size working set of 1024 slots took 163 instructions a step (callgrind),
            // 137 this way, and 100 000 slots 195 against 156, the bounds as adaptive over
            // a longer run.
            // With a reserve too: without halving, the bins that took the budget in one
            // phase of a program keep it in the next, and the classes of the new phase go
            // through the reserve on every batch (`compare`'s `liveset-100MB`, small objects
            // churned after a 100 MB set is built: 10.6 ns an operation without halving,
            // 8.4 with it; the mixed batches 14.6 against 12.5), though a single phase
            // costs 2% more instructions with it (callgrind, `slots 1024 mixed`).
            self.over_budget = self.over_budget.wrapping_add(1);
            if self.over_budget % STEAL_EVERY != 0 {
                return false;
            }
            // The bin with the most bytes of bound, but this class's.
            let victim = SizeClass::all()
                .filter(|&c| c != class)
                .max_by_key(|&c| self.bins[c.index()].max as usize * c.size());
            if let Some(v) = victim {
                let vmax = self.bins[v.index()].max;
                self.shrink_bound(heap, v, vmax / 2);
            }
            if !self.fits_bins_budget(heap, extra) {
                return false;
            }
        }
        self.raise_bound(class, want);
        true
    }

    /// The bins' budget refused to raise the bound of `class`'s bin by `extra`: lets the
    /// reserve keep that many more objects of the class instead, up to the class's bound
    /// (`class_bound`, bin and reserve together) and as far as the reserve's budget goes.
    /// (A bin that never runs dry, a consumer thread's, never asks, and its spills go on to
    /// the central list, where the threads that allocate find them.)
    fn allow_in_reserve<S: PageSource>(&mut self, heap: &Heap<S>, class: SizeClass, extra: u32) {
        if self.reserve.is_null() {
            return;
        }
        let c = class.index();
        let have = self.bins[c].max + self.reserve_allowed[c];
        let add = extra.min(class_bound(class, heap.bin_bytes()).saturating_sub(have));
        let bytes = add as usize * class.size();
        if self.reserve_allowed_bytes + bytes <= self.reserve_budget(heap) {
            self.reserve_allowed[c] += add;
            self.reserve_allowed_bytes += bytes;
        }
    }

    /// Raises the bound of `class`'s bin to `want` (more than it has), whatever the budget.
    fn raise_bound(&mut self, class: SizeClass, want: u32) {
        let bin = self.bin(class);
        let max = bin.max;
        debug_assert!(want > max);
        bin.max = want;
        bin.room += want - max;
        self.bound_bytes += (want - max) as usize * class.size();
    }

    /// Lowers the bound of `class`'s bin to `want`, handing back to the central list the
    /// objects it then holds too many of.
    fn shrink_bound<S: PageSource>(&mut self, heap: &Heap<S>, class: SizeClass, want: u32) {
        let bin = self.bin(class);
        if want >= bin.max {
            return;
        }
        let len = bin.len();
        if len > want {
            let n = (len - want) as usize;
            let head = bin.head;
            let mut tail = head;
            // SAFETY: the bin holds `len > want` free objects linked through their first word.
            unsafe {
                for _ in 1..n {
                    tail = span::next_free(tail);
                }
                bin.head = span::next_free(tail);
                span::set_next_free(tail, null_mut());
                heap.central(class)
                    .insert_range(class, head, n, &heap.backing());
            }
        }
        let len = len.min(want);
        let max = self.bin(class).max;
        self.bound_bytes -= (max - want) as usize * class.size();
        let bin = self.bin(class);
        bin.max = want;
        bin.room = want - len;
    }

    /// Fills the empty bin of `class` with a batch from the reserve, else from its central
    /// list, and pops one object. Null when out of memory.
    #[cold]
    #[inline(never)]
    pub fn alloc_slow<S: PageSource>(&mut self, heap: &Heap<S>, class: SizeClass) -> *mut u8 {
        let obj = self.pop(class);
        if !obj.is_null() {
            return obj;
        }
        self.expensive_check(heap, false);
        #[cfg(feature = "hardened")]
        {
            self.map = heap.page_map();
        }
        let batch = batch_size(class);
        // A batch the reserve kept is the thread's own: none of the shared tiers' upkeep
        // below (the clock read of the decay step, the stash's trim), and the bin grows only
        // within the bins' budget (the reserve holds the class because it could not).
        if let Some(r) = self.reserve() {
            let class_bytes = class.index() * core::mem::size_of::<Bin>();
            let (list, n) = r.take(class, batch, heap.page_map(), class_bytes);
            if n != 0 {
                return self.fill_bin(heap, class, list, n, false);
            }
        }
        self.maybe_trim(heap);
        self.maybe_fold_counts(heap);
        heap.maybe_release();
        self.activate();
        let key = self.key;
        let (list, n) = heap
            .central(class)
            .remove_range(class, batch, key, &heap.backing());
        if n == 0 {
            return null_mut();
        }
        self.fill_bin(heap, class, list, n, true)
    }

    /// Puts the `n` objects of `list` in the empty bin of `class` and pops one. The bin ran
    /// dry: it keeps one batch more from now on, within the bins' budget (making room from
    /// the largest bin now and then if `steal`: `grow_bound`), and always has room for the
    /// batch it takes.
    fn fill_bin<S: PageSource>(
        &mut self,
        heap: &Heap<S>,
        class: SizeClass,
        list: *mut u8,
        n: usize,
        steal: bool,
    ) -> *mut u8 {
        let bound = class_bound(class, heap.bin_bytes());
        debug_assert!(self.bin(class).head.is_null());
        let max = self.bin(class).max;
        let want = (max + batch_size(class) as u32).min(bound);
        let grown = want > max
            && if steal {
                self.grow_bound(heap, class, want)
            } else {
                let fits = self.fits_bins_budget(heap, (want - max) as usize * class.size());
                if fits {
                    self.raise_bound(class, want);
                }
                fits
            };
        if !grown {
            let max = self.bin(class).max;
            if max < n as u32 {
                self.bound_bytes += (n - max as usize) * class.size();
                self.bin(class).max = n as u32;
            }
        }
        let bin = self.bin(class);
        bin.head = list;
        bin.room = bin.max - n as u32;
        self.pop(class)
    }

    /// Hands a batch of the bin of `class` to the reserve while it has budget left, else back
    /// to the central list: the most recently freed objects, whose links are in cache.
    fn release_slow<S: PageSource>(&mut self, heap: &Heap<S>, class: SizeClass) {
        self.expensive_check(heap, false);
        let batch = batch_size(class);
        let bin = self.bin(class);
        let len = bin.len() as usize;
        let n = batch.min(len);
        let head = bin.head;
        let mut tail = head;
        let map: *const PageMap = heap.page_map();
        let class_bytes = class.index() * core::mem::size_of::<Bin>();
        // SAFETY: the bin holds `len >= n` free objects linked through their first word.
        unsafe {
            for _ in 1..n {
                tail = next_in_bin(map, tail, class_bytes);
            }
            bin.head = next_in_bin(map, tail, class_bytes);
            span::set_next_free(tail, null_mut());
        }
        bin.room += n as u32;
        if let Some(r) = self.reserve() {
            // Up to what the bins' budget kept the bin from growing to (`allow_in_reserve`).
            let class_max = self.reserve_allowed[class.index()] as usize;
            let budget = self.reserve_budget(heap);
            // SAFETY: `n` free objects of `class` from `head` to `tail`, ours, given up.
            if class_max >= n && unsafe { r.put(class, head, tail, n, budget, class_max) } {
                return;
            }
        }
        // SAFETY: `n` free objects of `class`, ours, given up.
        unsafe {
            heap.central(class)
                .insert_range(class, head, n, &heap.backing())
        };
    }

    /// Hands every object of the bin of `class` back to its central list.
    pub(super) fn empty_bin<S: PageSource>(&mut self, heap: &Heap<S>, class: SizeClass) {
        let bin = self.bin(class);
        let head = core::mem::replace(&mut bin.head, null_mut());
        let len = bin.len() as usize;
        let max = bin.max as usize;
        bin.room = 0;
        bin.max = 0;
        self.bound_bytes -= max * class.size();
        // SAFETY: the bin's `len` free objects of `class`, ours, given up.
        unsafe {
            heap.central(class)
                .insert_range(class, head, len, &heap.backing())
        };
    }

    /// Free objects in this cache, by class (for statistics).
    pub fn cached_objects(&self) -> [usize; CLASS_COUNT] {
        core::array::from_fn(|c| self.bins[c].len() as usize)
    }
}

/// Pops a free object from `bin`, or null. `map` and `class_bytes` (the bin's class index
/// times 16) serve the hardened build, which checks the link it follows against the page
/// map and the popped object's poison.
#[inline(always)]
fn pop_from(bin: &mut Bin, map: *const PageMap, class_bytes: usize) -> *mut u8 {
    let obj = bin.head;
    if !obj.is_null() {
        // SAFETY: objects on a bin are free objects of its class, linked through their first
        // word; the one popped is handed out.
        unsafe {
            bin.head = next_in_bin(map, obj, class_bytes);
            #[cfg(feature = "hardened")]
            if !crate::hardening::poison_intact(obj, class_of_bytes(class_bytes)) {
                crate::check::fatal_at("write after free detected", obj as usize);
            }
            span::mark_allocated(obj);
        }
        bin.room += 1;
    }
    obj
}

/// The link of `obj`, a free object of a bin (or a batch) of the class whose index times 16
/// is `class_bytes`. The hardened build checks it against the page map `map`
/// ([`PageMap::next_free_checked`]); otherwise neither argument is used.
///
/// # Safety
/// `obj` is a free object whose first word is a link; hardened: `map` is the map of the
/// heap the object belongs to.
#[inline(always)]
pub(super) unsafe fn next_in_bin(map: *const PageMap, obj: *mut u8, class_bytes: usize) -> *mut u8 {
    #[cfg(not(feature = "hardened"))]
    let _ = (map, class_bytes);
    #[cfg(not(feature = "hardened"))]
    // SAFETY: per the caller.
    let next = unsafe { span::next_free(obj) };
    #[cfg(feature = "hardened")]
    // SAFETY: per the caller.
    let next = unsafe { (*map).next_free_checked(obj, class_bytes) };
    next
}

/// The map the hardened build checks a cache's links against (the heap's its slow paths
/// last served); null otherwise, and unused.
///
/// # Safety
/// `cache` points to a live cache.
#[inline(always)]
unsafe fn link_map(cache: *const ThreadCache) -> *const PageMap {
    #[cfg(not(feature = "hardened"))]
    let _ = cache;
    #[cfg(not(feature = "hardened"))]
    let map = core::ptr::null();
    #[cfg(feature = "hardened")]
    // SAFETY: per the caller.
    let map = unsafe { (*cache).map };
    map
}

/// The class whose index times 16 is `class_bytes`.
#[cfg(feature = "hardened")]
#[inline(always)]
fn class_of_bytes(class_bytes: usize) -> SizeClass {
    SizeClass((class_bytes >> 4) as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A bin's bound: `bin_bytes` worth of objects, but never less than two batches.
    #[test]
    fn a_bin_keeps_bin_bytes_worth_and_at_least_two_batches() {
        for class in SizeClass::all() {
            let two_batches = 2 * batch_size(class) as u32;
            assert_eq!(class_bound(class, 0), two_batches, "class {}", class.0);
            let wide = 1 << 30;
            assert_eq!(
                class_bound(class, wide),
                (wide / class.size()) as u32,
                "class {}",
                class.0
            );
            let bytes = 256 << 10;
            assert_eq!(
                class_bound(class, bytes),
                ((bytes / class.size()) as u32).max(two_batches),
                "class {}",
                class.0
            );
        }
    }
}
