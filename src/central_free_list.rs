//! Central free lists: per size class, the spans of the class and the objects thread caches
//! hand back, moved in batches (TCMalloc's `CentralFreeList` with its transfer cache in
//! front; Go's `mcentral`). See `lib.rs` for an overview.
//!
//! Each list is behind its own [`Lock`] on its own cache line. The verbs:
//! [`CentralFreeList::remove_range`] hands a thread cache a batch of free objects (a whole
//! batch from the transfer slots in one step, else objects from the spans, growing from the
//! page heap when no span has one), [`CentralFreeList::insert_range`] takes a batch back (a
//! whole batch into a transfer slot in one step, else each object back to its span),
//! [`CentralFreeList::drain`] empties the transfer slots into the spans and gives the spare
//! span back.
//!
//! A span whose last object comes back is returned to the page heap, except one per class
//! (the spare), which stays for the next growth: classes whose spans hold a few objects
//! would otherwise take a span from the page heap and give it back on every other batch.
//!
//! The central lock is never held while the page heap lock is taken: spans go to and come
//! from the page heap after the central lock is dropped.

use crate::page_heap::PageHeap;
use crate::page_map::{self, PageMap};
use crate::pages::Pages;
use crate::size_class::SizeClass;
use crate::span::{self, ListId, Span, SpanKind, SpanList};
use crate::sync::Lock;
use crate::sys::PageSource;
use core::ptr::{NonNull, null_mut};

/// Whole batches a class's transfer slots hold.
const TRANSFER_SLOTS: usize = 8;
/// The most object bytes a class's transfer slots hold (fewer slots for large batches).
const TRANSFER_BYTES: usize = 512 << 10;
/// The most objects one batch moves between a thread cache and a central list.
const MAX_BATCH: usize = 32;
/// The bytes a batch aims at: classes above 2 KiB move fewer objects at a time.
const BATCH_BYTES: usize = 64 << 10;
/// Spans released in one go after the lock is dropped.
const RELEASE_CHUNK: usize = 8;

/// The objects a batch moves for `class`: `BATCH_BYTES` worth, from 2 to 32.
#[inline]
pub fn batch_size(class: SizeClass) -> usize {
    (BATCH_BYTES / class.size()).clamp(2, MAX_BATCH)
}

/// The transfer slots a class has: whole batches kept for the next `remove_range`.
#[inline]
fn transfer_slots(class: SizeClass) -> usize {
    (TRANSFER_BYTES / (batch_size(class) * class.size())).clamp(1, TRANSFER_SLOTS)
}

/// The spans and objects of one size class that no thread cache holds.
pub struct CentralFreeList {
    lists: Lock<Lists>,
}

struct Lists {
    /// Spans with at least one free (or never used) object.
    partial: SpanList,
    /// Spans with none (every object out of the span).
    full: SpanList,
    /// The one wholly free span kept for the next growth (on `partial`), or null.
    spare: *mut Span,
    /// Small spans of this class that exist: listed, or in transit to the page heap.
    spans: usize,
    /// Objects out of the listed spans (the sum of their `in_use`), kept as they move so
    /// that statistics read it in one step under the lock rather than walk the spans.
    out_of_spans: usize,
    /// Whole batches (null-terminated lists of `batch_size` objects) kept as they came.
    slots: [*mut u8; TRANSFER_SLOTS],
    slots_len: usize,
}

// SAFETY: the raw pointers are span records and free objects this list guards; the lists
// move between threads only inside their lock.
unsafe impl Send for Lists {}

/// What a central list holds, for statistics.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct CentralStats {
    /// Spans of the class.
    pub spans: usize,
    /// Spans on the partial list.
    pub partial_spans: usize,
    /// Spans on the full list.
    pub full_spans: usize,
    /// Objects out of the spans: held by the program, in thread caches, or in the transfer
    /// slots.
    pub out_of_spans: usize,
    /// Free objects in the spans (given back, or never used).
    pub in_spans_free: usize,
    /// Objects in the transfer slots.
    pub transfer: usize,
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

/// Spans to give back once the central lock is dropped.
struct Releases {
    spans: [*mut Span; RELEASE_CHUNK],
    len: usize,
}

impl Releases {
    const fn new() -> Releases {
        Releases {
            spans: [null_mut(); RELEASE_CHUNK],
            len: 0,
        }
    }

    fn is_full(&self) -> bool {
        self.len == RELEASE_CHUNK
    }

    fn push(&mut self, span: *mut Span) {
        self.spans[self.len] = span;
        self.len += 1;
    }

    /// Gives every collected span back to the page heap.
    fn run<S: PageSource>(&mut self, backing: &Backing<'_, S>) {
        for &span in &self.spans[..self.len] {
            // SAFETY: taken off every list with no object out: only this thread reaches it.
            unsafe { release(NonNull::new_unchecked(span), backing) };
        }
        self.len = 0;
    }
}

impl Lists {
    const fn new() -> Lists {
        Lists {
            partial: SpanList::new(ListId::Partial),
            full: SpanList::new(ListId::Full),
            spare: null_mut(),
            spans: 0,
            out_of_spans: 0,
            slots: [null_mut(); TRANSFER_SLOTS],
            slots_len: 0,
        }
    }

    /// Takes up to `want` objects from the partial spans onto `list` (each already marked
    /// free). Returns the new head and count.
    ///
    /// # Safety
    /// The caller holds the lock; `list` holds `got` objects the caller owns.
    unsafe fn take_from_spans(
        &mut self,
        class: SizeClass,
        want: usize,
        mut list: *mut u8,
        mut got: usize,
    ) -> (*mut u8, usize) {
        let size = class.size();
        while got < want {
            let at = self.partial.first();
            if at.is_null() {
                break;
            }
            // SAFETY: a live span on our list; the lock guards its object fields.
            let s = unsafe { &*at };
            if at == self.spare {
                self.spare = null_mut();
            }
            // SAFETY: as above.
            unsafe {
                let mut free = s.free.get();
                let mut bump = s.bump.get() as usize;
                let start = s.start_addr();
                let cap = s.capacity();
                let mut taken = 0;
                while got < want && !free.is_null() {
                    let obj = free;
                    #[cfg(not(feature = "hardened"))]
                    let next = span::next_free(obj);
                    #[cfg(feature = "hardened")]
                    let next = s.next_free_checked(obj);
                    free = next;
                    span::set_next_free(obj, list);
                    list = obj;
                    got += 1;
                    taken += 1;
                }
                // Never-used objects (marked free when the span was made): linked so that the
                // lowest address is popped first; in random order in the hardened build.
                let n = (want - got).min(cap - bump);
                #[cfg(not(feature = "hardened"))]
                for i in (bump..bump + n).rev() {
                    let obj = (start + i * size) as *mut u8;
                    span::set_next_free(obj, list);
                    list = obj;
                }
                #[cfg(feature = "hardened")]
                {
                    list = link_shuffled(start, size, bump, n, list);
                }
                bump += n;
                got += n;
                taken += n;
                s.free.set(free);
                s.bump.set(bump as u32);
                s.in_use.set(s.in_use.get() + taken as u32);
                self.out_of_spans += taken;
                if free.is_null() && bump == cap {
                    self.partial.remove(at);
                    self.full.push(at);
                }
            }
        }
        (list, got)
    }

    /// Gives `obj` back to its span `s` (found in the page map); a span left with no
    /// object out goes to `releases` (unless it becomes the spare).
    ///
    /// # Safety
    /// The caller holds the lock; `obj` is a free object of `s`, a span of this list.
    unsafe fn return_to_span(&mut self, s: *mut Span, obj: *mut u8, releases: &mut Releases) {
        // SAFETY: per the caller; the lock guards the span's object fields and lists.
        unsafe {
            let span = &*s;
            let head = span.free.get();
            span::set_next_free(obj, head);
            span.free.set(obj);
            let in_use = span.in_use.get();
            if in_use == 0 {
                crate::check::fatal_at("double free detected", obj as usize);
            }
            span.in_use.set(in_use - 1);
            self.out_of_spans -= 1;
            if span.list() == ListId::Full {
                self.full.remove(s);
                self.partial.push(s);
            }
            if in_use == 1 {
                if self.spare.is_null() {
                    self.spare = s;
                    span.freed_at.set(1);
                } else {
                    self.partial.remove(s);
                    self.spans -= 1;
                    releases.push(s);
                }
            }
        }
    }
}

impl CentralFreeList {
    /// An empty central list.
    #[cfg(not(loom))]
    pub const fn new() -> CentralFreeList {
        CentralFreeList {
            lists: Lock::new(Lists::new()),
        }
    }

    /// An empty central list (not `const` under loom, whose lock is made at run time).
    #[cfg(loom)]
    pub fn new() -> CentralFreeList {
        CentralFreeList {
            lists: Lock::new(Lists::new()),
        }
    }

    /// Hands out up to `want` free objects of `class` as a null-terminated list, each marked
    /// free with `key`; returns the list and its length (0 when the page heap cannot grow).
    /// A whole batch comes from a transfer slot in one step.
    pub fn remove_range<S: PageSource>(
        &self,
        class: SizeClass,
        want: usize,
        key: u64,
        backing: &Backing<'_, S>,
    ) -> (*mut u8, usize) {
        debug_assert!(want > 0);
        let batch = batch_size(class);
        {
            let mut lists = self.lists.lock();
            if want == batch && lists.slots_len > 0 {
                lists.slots_len -= 1;
                let i = lists.slots_len;
                return (core::mem::replace(&mut lists.slots[i], null_mut()), batch);
            }
            // SAFETY: we hold the lock and own the (empty) list.
            let (list, got) = unsafe { lists.take_from_spans(class, want, null_mut(), 0) };
            if got > 0 {
                return (list, got);
            }
        }
        let Some((span, _zeroed)) = backing.page_heap.lock().alloc(
            class.pages(),
            Pages(1),
            class,
            backing.map,
            backing.source,
        ) else {
            return (null_mut(), 0);
        };
        // SAFETY: a fresh small span, not yet on any list: ours alone.
        let s = unsafe { span.as_ref() };
        // Hardened build: the link keys exist before the first link does.
        #[cfg(feature = "hardened")]
        crate::hardening::seed();
        // Every object not handed out carries the free key, never-used ones included: a
        // forged free of one (a pointer on an object boundary the program was never given)
        // then stops as a double free instead of putting the object on a list twice. The
        // hardened build poisons them too (checked when a bin hands them out).
        if crate::check::FREE_CHECKS {
            for i in 0..class.objects() {
                let obj = (s.start_addr() + i * class.size()) as *mut u8;
                // SAFETY: never-used objects of our fresh span.
                unsafe { span::mark_freed_fresh(obj, key) };
                #[cfg(feature = "hardened")]
                // SAFETY: as above.
                unsafe {
                    crate::hardening::poison(obj, class)
                };
            }
        }
        backing.map.set_small_words(
            s.start(),
            s.pages(),
            page_map::small_word(s.start_addr(), class.0),
        );
        let mut lists = self.lists.lock();
        lists.spans += 1;
        // SAFETY: a live span on no list; we hold the lock.
        unsafe {
            lists.partial.push(span.as_ptr());
            lists.take_from_spans(class, want, null_mut(), 0)
        }
    }

    /// Takes back `count` free objects of this class (the null-terminated list `list`, each
    /// marked free). A whole batch goes to a transfer slot when one is empty; otherwise each
    /// object goes back to its span, and spans with no object out go back to the page heap
    /// (but the spare).
    ///
    /// # Safety
    /// `list` holds exactly `count` distinct free objects of spans of this list's class that
    /// the caller gives up.
    pub unsafe fn insert_range<S: PageSource>(
        &self,
        class: SizeClass,
        list: *mut u8,
        count: usize,
        backing: &Backing<'_, S>,
    ) {
        if count == 0 {
            return;
        }
        let mut lists = self.lists.lock();
        if count == batch_size(class) && lists.slots_len < transfer_slots(class) {
            let i = lists.slots_len;
            lists.slots[i] = list;
            lists.slots_len += 1;
            return;
        }
        // SAFETY: per the caller.
        unsafe { self.return_objects(lists, list, backing) };
    }

    /// Gives every object of `list` back to its span, releasing spans as they empty; takes
    /// the held guard and drops it.
    ///
    /// # Safety
    /// As [`CentralFreeList::insert_range`].
    unsafe fn return_objects<'a, S: PageSource>(
        &'a self,
        mut lists: crate::sync::LockGuard<'a, Lists>,
        mut list: *mut u8,
        backing: &Backing<'_, S>,
    ) {
        let mut releases = Releases::new();
        // Hardened build: the links are checked against the class of the head, which the
        // caller vouches for.
        #[cfg(feature = "hardened")]
        let class_bytes = page_map::word_class_bytes(backing.map.small_word_of(list as usize));
        while !list.is_null() {
            let obj = list;
            #[cfg(not(feature = "hardened"))]
            // SAFETY: per the caller, a free object with a link.
            let next = unsafe { span::next_free(obj) };
            #[cfg(feature = "hardened")]
            // SAFETY: per the caller, a free object with a link.
            let next = unsafe { backing.map.next_free_checked(obj, class_bytes) };
            list = next;
            // Every page of a small span maps to it (span invariant 4), and the object's span
            // cannot change while the object is out of it.
            let s = backing.map.lookup(obj as usize);
            // SAFETY: we hold the lock; `obj` is a free object of `s`, a span of this class.
            unsafe { lists.return_to_span(s, obj, &mut releases) };
            if releases.is_full() {
                drop(lists);
                releases.run(backing);
                lists = self.lists.lock();
            }
        }
        drop(lists);
        releases.run(backing);
    }

    /// Empties the transfer slots into the spans and gives the spare span back, so that every
    /// span with no object out returns to the page heap (`release_free_memory`, flushes).
    pub fn drain<S: PageSource>(&self, backing: &Backing<'_, S>) {
        loop {
            let mut lists = self.lists.lock();
            if lists.slots_len == 0 {
                let spare = core::mem::replace(&mut lists.spare, null_mut());
                // SAFETY: we hold the lock; the spare is a live span on the partial list.
                if !spare.is_null() && unsafe { (*spare).in_use.get() } == 0 {
                    // SAFETY: as above.
                    unsafe { lists.partial.remove(spare) };
                    lists.spans -= 1;
                    drop(lists);
                    // SAFETY: off every list with no object out: only this thread reaches it.
                    unsafe { release(NonNull::new_unchecked(spare), backing) };
                }
                return;
            }
            lists.slots_len -= 1;
            let i = lists.slots_len;
            let list = core::mem::replace(&mut lists.slots[i], null_mut());
            // SAFETY: a whole batch of free objects of this class that the slot held.
            unsafe { self.return_objects(lists, list, backing) };
        }
    }

    /// A snapshot of what the list holds.
    pub fn stats(&self, class: SizeClass) -> CentralStats {
        // A few counters read under the lock: no walk, whatever the list holds.
        let lists = self.lists.lock();
        let listed = lists.partial.len() + lists.full.len();
        CentralStats {
            spans: lists.spans,
            partial_spans: lists.partial.len(),
            full_spans: lists.full.len(),
            transfer: lists.slots_len * batch_size(class),
            out_of_spans: lists.out_of_spans,
            in_spans_free: listed * class.objects() - lists.out_of_spans,
        }
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
        ensure!(
            lists.slots_len <= transfer_slots(class),
            "transfer slots within their bound"
        );
        for &slot in &lists.slots[..lists.slots_len] {
            // SAFETY: a slot's batch is a list of free objects the lock guards.
            let len = unsafe { span::list_len(slot) };
            ensure!(
                len == batch_size(class),
                "a transfer slot holds one whole batch"
            );
        }
        let mut listed = 0;
        let mut out = 0;
        for (list, want) in [
            (&lists.partial, ListId::Partial),
            (&lists.full, ListId::Full),
        ] {
            // SAFETY: we hold the lock for the whole walk.
            for s in unsafe { list.iter() } {
                listed += 1;
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
                ensure!(
                    map.small_word_of(span.start_addr())
                        == page_map::small_word(span.start_addr(), class.0)
                        && map.small_word_of(span.end().addr() - 1)
                            == page_map::small_word(span.start_addr(), class.0),
                    "a small span's pages carry its small-object word"
                );
                // SAFETY: as above.
                let (in_use, free, bump) = unsafe {
                    (
                        span.in_use.get() as usize,
                        span::list_len(span.free.get()),
                        span.bump.get() as usize,
                    )
                };
                ensure!(
                    in_use + free + span.capacity() - bump == span.capacity(),
                    "objects are conserved"
                );
                ensure!(
                    span.capacity() == class.objects(),
                    "a span holds its class's objects"
                );
                out += in_use;
                ensure!(
                    (free == 0 && bump == span.capacity()) == (want == ListId::Full),
                    "a span is on the full list exactly when it has no free object"
                );
                ensure!(
                    in_use > 0 || s == lists.spare,
                    "a span with no object out is the spare"
                );
            }
        }
        ensure!(listed == lists.spans, "every span of the class is listed");
        ensure!(
            out == lists.out_of_spans,
            "the count of objects out of the spans is their sum"
        );
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

/// Returns a span with no object out to the page heap, clearing its pages' small-object
/// words first (from then on a `free` of one of its addresses takes the checked path).
///
/// # Safety
/// Nobody else can reach the span; none of its objects is live.
unsafe fn release<S: PageSource>(span: NonNull<Span>, backing: &Backing<'_, S>) {
    // SAFETY: per the caller, the span is ours alone.
    let s = unsafe { span.as_ref() };
    backing.map.set_small_words(s.start(), s.pages(), 0);
    let mut heap = backing.page_heap.lock();
    #[cfg(not(feature = "hardened"))]
    // SAFETY: per the caller.
    unsafe {
        heap.free(span, backing.now, backing.map)
    };
    #[cfg(feature = "hardened")]
    // SAFETY: per the caller.
    unsafe {
        heap.free(span, backing.now, backing.map, backing.source)
    };
}

/// Hardened build: links the never-used objects `bump..bump + n` of the span at `start`
/// (objects of `size` bytes) in front of `list`, in random order (Fisher-Yates over at most
/// a batch of indices at a time, on the stack), and returns the new head. Which object a
/// program gets next is then not the one after its last.
///
/// # Safety
/// The objects are never-used objects of a span the caller holds the lock of.
#[cfg(feature = "hardened")]
unsafe fn link_shuffled(
    start: usize,
    size: usize,
    bump: usize,
    n: usize,
    mut list: *mut u8,
) -> *mut u8 {
    if n == 0 {
        return list;
    }
    let mut rng = crate::hardening::Rng::new();
    let mut order = [0u32; MAX_BATCH];
    let mut from = bump;
    while from < bump + n {
        let k = (bump + n - from).min(MAX_BATCH);
        for (j, slot) in order[..k].iter_mut().enumerate() {
            *slot = (from + j) as u32;
        }
        for j in (1..k).rev() {
            order.swap(j, rng.below(j + 1));
        }
        for &i in &order[..k] {
            let obj = (start + i as usize * size) as *mut u8;
            // SAFETY: per the caller.
            unsafe { span::set_next_free(obj, list) };
            list = obj;
        }
        from += k;
    }
    list
}

#[cfg(all(test, not(loom)))]
mod tests {
    use crate::heap::tests::heap;
    use crate::thread_cache::ThreadCache;

    /// Three spans' worth of a class held by the program but one object, the cache flushed:
    /// the list's
    /// figures add up (every span listed once, partial or full; every object either out of
    /// its span or free in it), and the objects out are the program's plus the transfer
    /// slots'.
    #[test]
    fn stats_count_the_spans_and_objects() {
        let heap = heap();
        let mut cache = ThreadCache::new();
        let class = crate::size_class::class_of(1000).unwrap();
        let n = 3 * class.objects();
        let mut held: Vec<*mut u8> = (0..n).map(|_| cache.alloc(&heap, 1000, 8)).collect();
        assert!(held.iter().all(|p| !p.is_null()));
        // One object back to its span: that span is partial.
        // SAFETY: our object, freed once.
        unsafe { cache.free(&heap, held.pop().unwrap()) };
        cache.flush(&heap);
        let st = heap.central(class).stats(class);
        assert!(st.spans >= 3, "{st:?}");
        assert!(st.partial_spans >= 1 && st.in_spans_free >= 1, "{st:?}");
        assert_eq!(st.partial_spans + st.full_spans, st.spans, "{st:?}");
        assert_eq!(st.out_of_spans, n - 1 + st.transfer, "{st:?}");
        assert_eq!(
            st.out_of_spans + st.in_spans_free,
            st.spans * class.objects(),
            "{st:?}"
        );
        for p in held {
            // SAFETY: our objects, freed once.
            unsafe { cache.free(&heap, p) };
        }
        cache.flush(&heap);
        heap.check_invariants();
    }

    /// The walker has teeth: a span whose object count no longer adds up is reported, by
    /// `invariant_violation` and by `check_invariants` (a panic, outside the lock).
    #[test]
    fn the_walker_reports_a_span_whose_objects_do_not_add_up() {
        let heap = heap();
        let mut cache = ThreadCache::new();
        let class = crate::size_class::class_of(1000).unwrap();
        let p = cache.alloc(&heap, 1000, 8);
        assert!(!p.is_null());
        let list = heap.central(class);
        assert_eq!(list.invariant_violation(class, heap.page_map()), None);
        let span = {
            let lists = list.lists.lock();
            // SAFETY: we hold the lock for the walk.
            unsafe { lists.partial.iter().chain(lists.full.iter()) }
                .next()
                .unwrap()
        };
        // SAFETY: the test's own span; its count is changed and put back under the lock.
        let bump = |by: isize| unsafe {
            let _lists = list.lists.lock();
            let in_use = (*span).in_use.get();
            (*span).in_use.set((in_use as isize + by) as u32);
        };
        bump(1);
        assert_eq!(
            list.invariant_violation(class, heap.page_map()),
            Some("objects are conserved")
        );
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            heap.check_invariants();
        }));
        assert!(caught.is_err(), "check_invariants panics on a broken list");
        bump(-1);
        assert_eq!(list.invariant_violation(class, heap.page_map()), None);
        // SAFETY: our object, freed once.
        unsafe { cache.free(&heap, p) };
        cache.flush(&heap);
        heap.check_invariants();
    }
}
