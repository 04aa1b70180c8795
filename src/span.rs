//! The span record: a run of pages and what it holds. See `lib.rs` for an overview.
//!
//! A span is one of: a free run in the page heap ([`SpanKind::Free`]), a small-object span
//! of one size class ([`SpanKind::Small`]), or one large object ([`SpanKind::Large`]),
//! followed in the hardened build by a guard page ([`GUARD_PAGES`]); and in the hardened
//! build a guard page between span groups (`SpanKind::Guard`, one page, never handed out).
//!
//! # Small spans
//!
//! A small span belongs to its class's central list, which guards its object state under
//! the central lock: `free` (objects given back to the span), `in_use` (objects out of the
//! span: handed to thread caches, waiting in the central list's transfer slots, or held by
//! the program) and `bump` (objects with index `>= bump` have never been handed out).
//! Thread caches never touch a span's fields: they hold objects, not spans, and find an
//! object's class and span start in the page map's per-page word (see `page_map.rs`).
//!
//! # Invariants
//!
//! 1. A small span's objects are each in exactly one place: out of the span (counted by
//!    `in_use`), on the span's `free` list, or never handed out (index `>= bump`), so
//!    `in_use + len(free) + capacity - bump == capacity`.
//! 2. A small span with a free or never-used object is on its central list's `partial`
//!    list; one with none is on its `full` list; a span whose `in_use` falls to 0 goes back
//!    to the page heap (or waits as the class's one spare span).
//! 3. Every page of a small span maps to it in the page map, and its per-page word holds the
//!    span's start and class; the first and last page of every other span map to it, with a
//!    per-page word of 0.

use crate::check::fatal_at;
use crate::pages::{PageId, Pages};
use crate::size_class::SizeClass;
use crate::sync::{AtomicBool, AtomicU8, AtomicU32, AtomicUsize, GuardedCell, Ordering};
use core::ptr::null_mut;

/// The pages at the end of every large span that are not its object's: in the hardened
/// build one page, made inaccessible while the span is a large span (or waits in the page
/// heap's large-span cache), so that a linear overflow past the object faults (see
/// `page_heap`); none otherwise.
pub const GUARD_PAGES: Pages = Pages(if cfg!(feature = "hardened") { 1 } else { 0 });

/// What a span holds.
#[derive(Copy, Clone, PartialEq, Eq, Debug)]
#[repr(u8)]
pub enum SpanKind {
    /// The record is not describing any pages (being made, or given back).
    Unused = 0,
    /// A free run in the page heap.
    Free = 1,
    /// Objects of one size class.
    Small = 2,
    /// One large object.
    Large = 3,
    /// Hardened build: a guard page between span groups (see `page_heap`), never handed out.
    #[cfg(feature = "hardened")]
    Guard = 4,
}

/// Which list a span is on. Guarded by that list's lock.
#[derive(Copy, Clone, PartialEq, Eq, Debug)]
#[repr(u8)]
pub enum ListId {
    /// On no list.
    None = 0,
    /// A page heap free list.
    PageHeapFree,
    /// The page heap's cache of recently freed large spans.
    PageHeapCache,
    /// A central list's partial list.
    Partial,
    /// A central list's full list.
    Full,
}

/// A span record. Lives in metadata memory (`fixed_alloc`), never in the heap.
/// The identity fields are atomics, so that a reader that found the record through the
/// page map may read them whatever else happens to the record (see
/// `fixed_alloc`: a recycled record's first word is written atomically too).
#[repr(C, align(64))]
pub struct Span {
    // Identity: written under the page heap lock while the span is made or reshaped; read
    // without a lock by page-map users (free, usable size) to validate a pointer. Relaxed:
    // a reader finds the span through the page map, whose Release store / Acquire load
    // publish these fields.
    start: AtomicUsize,
    pages: AtomicUsize,
    kind: AtomicU8,
    class: AtomicU8,
    /// Large spans: freed into a thread's stash (its object is free, its pages still the
    /// span's). Written by the thread that stashes or unstashes it.
    stashed: AtomicBool,
    /// Large spans: the heap profiler's record of the object, when it was sampled (0: not
    /// sampled). Written when the sampled object is made and taken when it is freed.
    sample: AtomicUsize,
    // Small spans: the class's constants, copied when the span is made small, so that the
    // central list's per-object work reads them from the span.
    obj_size: AtomicU32,
    obj_count: AtomicU32,
    div_magic: AtomicU32,
    /// `obj_size * obj_count`: the bytes the objects cover, the bound of a valid offset.
    obj_bytes: AtomicU32,
    /// Small: objects given back to the span (guarded by the central lock).
    pub(crate) free: GuardedCell<*mut u8>,
    /// Small: objects out of the span (guarded by the central lock).
    pub(crate) in_use: GuardedCell<u32>,
    /// Small: objects with index `>= bump` have never been handed out (central lock).
    pub(crate) bump: GuardedCell<u32>,
    // Guarded by the lock of the list that holds the span.
    prev: GuardedCell<*mut Span>,
    next: GuardedCell<*mut Span>,
    list: GuardedCell<ListId>,
    /// Free runs: how many of its pages may be resident (an upper bound).
    pub(crate) resident: GuardedCell<usize>,
    /// Free runs and new spans: every byte is zero.
    pub(crate) zeroed: GuardedCell<bool>,
    /// Free runs: when the run was last freed, in the page heap's clock. Small spans: when
    /// the span became wholly free (the central list's spare span).
    pub(crate) freed_at: GuardedCell<u64>,
    /// Hardened build, large and cached spans: the last page is made inaccessible (the span
    /// has a guard; see `page_heap`). Guarded by the page heap lock.
    #[cfg(feature = "hardened")]
    pub(crate) guarded: GuardedCell<bool>,
}

impl Span {
    /// Makes a record in place.
    ///
    /// # Safety
    /// `at` is valid for writes of a `Span` and holds no live span.
    pub unsafe fn init(at: *mut Span, start: PageId, pages: Pages, kind: SpanKind) {
        // Outside loom the record is written field by field through a shared reference, the
        // identity fields with atomic stores: a reader may hold a stale pointer to this record
        // (an invalid `free` looking it up) and load them meanwhile. Fresh metadata memory is
        // zero and a recycled record is a span (with an atomically written first word), and
        // both are valid `Span`s.
        #[cfg(not(loom))]
        {
            // SAFETY: per the caller, and the memory holds a valid `Span` (above).
            let s = unsafe { &*at };
            s.start.store(start.0, Ordering::Relaxed);
            s.pages.store(pages.0, Ordering::Relaxed);
            s.kind.store(kind as u8, Ordering::Relaxed);
            s.class.store(0, Ordering::Relaxed);
            s.stashed.store(false, Ordering::Relaxed);
            s.sample.store(0, Ordering::Relaxed);
            s.obj_size.store(0, Ordering::Relaxed);
            s.obj_count.store(0, Ordering::Relaxed);
            s.div_magic.store(0, Ordering::Relaxed);
            s.obj_bytes.store(0, Ordering::Relaxed);
            // SAFETY: the guarded fields are read only by whoever holds the record's lock,
            // which the caller does (or nobody can reach the record yet).
            unsafe {
                s.free.set(null_mut());
                s.in_use.set(0);
                s.bump.set(0);
                s.prev.set(null_mut());
                s.next.set(null_mut());
                s.list.set(ListId::None);
                s.resident.set(0);
                s.zeroed.set(false);
                s.freed_at.set(0);
                #[cfg(feature = "hardened")]
                s.guarded.set(false);
            }
        }
        // SAFETY: per the caller, `at` is writable and unused.
        #[cfg(loom)]
        unsafe {
            at.write(Span {
                start: AtomicUsize::new(start.0),
                pages: AtomicUsize::new(pages.0),
                kind: AtomicU8::new(kind as u8),
                class: AtomicU8::new(0),
                stashed: AtomicBool::new(false),
                sample: AtomicUsize::new(0),
                obj_size: AtomicU32::new(0),
                obj_count: AtomicU32::new(0),
                div_magic: AtomicU32::new(0),
                obj_bytes: AtomicU32::new(0),
                free: GuardedCell::new(null_mut()),
                in_use: GuardedCell::new(0),
                bump: GuardedCell::new(0),
                prev: GuardedCell::new(null_mut()),
                next: GuardedCell::new(null_mut()),
                list: GuardedCell::new(ListId::None),
                resident: GuardedCell::new(0),
                zeroed: GuardedCell::new(false),
                freed_at: GuardedCell::new(0),
                #[cfg(feature = "hardened")]
                guarded: GuardedCell::new(false),
            })
        }
    }

    /// First page.
    #[inline(always)]
    pub fn start(&self) -> PageId {
        PageId(self.start.load(Ordering::Relaxed))
    }

    /// Number of pages.
    #[inline(always)]
    pub fn pages(&self) -> Pages {
        Pages(self.pages.load(Ordering::Relaxed))
    }

    /// One past the last page.
    #[inline(always)]
    pub fn end(&self) -> PageId {
        self.start() + self.pages()
    }

    /// Address of the first byte.
    #[inline(always)]
    pub fn start_addr(&self) -> usize {
        self.start().addr()
    }

    /// Bytes covered.
    #[inline(always)]
    pub fn bytes(&self) -> usize {
        self.pages().bytes()
    }

    /// What the span holds.
    #[inline(always)]
    pub fn kind(&self) -> SpanKind {
        match self.kind.load(Ordering::Relaxed) {
            1 => SpanKind::Free,
            2 => SpanKind::Small,
            3 => SpanKind::Large,
            #[cfg(feature = "hardened")]
            4 => SpanKind::Guard,
            _ => SpanKind::Unused,
        }
    }

    /// The size class of a small span.
    #[inline(always)]
    pub fn class(&self) -> SizeClass {
        SizeClass(self.class.load(Ordering::Relaxed))
    }

    /// Whether `addr` lies within the span.
    #[inline(always)]
    pub fn contains(&self, addr: usize) -> bool {
        addr.wrapping_sub(self.start_addr()) < self.bytes()
    }

    /// Reshapes the span. Caller holds the page heap lock.
    pub(crate) fn set_range(&self, start: PageId, pages: Pages) {
        self.start.store(start.0, Ordering::Relaxed);
        self.pages.store(pages.0, Ordering::Relaxed);
    }

    /// Changes what the span holds. Caller holds the page heap lock.
    pub(crate) fn set_kind(&self, kind: SpanKind, class: SizeClass) {
        self.class.store(class.0, Ordering::Relaxed);
        self.kind.store(kind as u8, Ordering::Relaxed);
    }

    /// Makes a fresh span of `class`, with every object never used.
    ///
    /// # Safety
    /// The span is not yet visible to any other thread as a small span.
    pub(crate) unsafe fn init_small(&self, class: SizeClass) {
        self.obj_size.store(class.size() as u32, Ordering::Relaxed);
        self.obj_count
            .store(class.objects() as u32, Ordering::Relaxed);
        self.div_magic.store(class.div_magic(), Ordering::Relaxed);
        self.obj_bytes
            .store((class.size() * class.objects()) as u32, Ordering::Relaxed);
        self.set_kind(SpanKind::Small, class);
        // SAFETY: no other thread can reach the span yet.
        unsafe {
            self.free.set(null_mut());
            self.in_use.set(0);
            self.bump.set(0);
        }
    }

    /// Objects in the span (small spans).
    #[inline]
    pub fn capacity(&self) -> usize {
        self.obj_count.load(Ordering::Relaxed) as usize
    }

    /// Bytes per object (small spans).
    #[inline]
    pub fn object_size(&self) -> usize {
        self.obj_size.load(Ordering::Relaxed) as usize
    }

    /// If `addr` is the start of an object of this small span, its index.
    #[inline]
    pub fn object_index(&self, addr: usize) -> Option<usize> {
        let offset = addr.wrapping_sub(self.start_addr());
        // Below the objects' bytes (not the span's: the tail after the last object holds
        // none), so an exact multiple of the size is an index below the capacity.
        if offset >= self.obj_bytes.load(Ordering::Relaxed) as usize {
            return None;
        }
        // offset / size by multiplication (exact over a span: see `size_class`).
        let magic = self.div_magic.load(Ordering::Relaxed) as u64;
        let index = ((offset as u64 * magic) >> 32) as usize;
        (index * self.object_size() == offset).then_some(index)
    }

    /// The pages of a large span that hold its object: all of them but the guard pages
    /// (see [`GUARD_PAGES`]).
    #[inline(always)]
    pub fn object_pages(&self) -> Pages {
        #[cfg(feature = "hardened")]
        return self.pages() - GUARD_PAGES;
        #[cfg(not(feature = "hardened"))]
        self.pages()
    }

    /// The bytes of a large span that hold its object (see [`Span::object_pages`]).
    #[inline(always)]
    pub fn object_bytes(&self) -> usize {
        self.object_pages().bytes()
    }

    /// Hardened build: the link of `obj`, a free object on this small span's own free list,
    /// decoded; stops the process unless it is null or an object of this span (a corrupted
    /// link, see [`next_free`]).
    ///
    /// # Safety
    /// As [`next_free`], and the caller holds the lock that guards the span's objects.
    #[cfg(feature = "hardened")]
    #[inline]
    pub unsafe fn next_free_checked(&self, obj: *mut u8) -> *mut u8 {
        // SAFETY: per the caller.
        let next = unsafe { next_free(obj) };
        if !next.is_null() && self.object_index(next as usize).is_none() {
            fatal_at("free list corrupted", obj as usize);
        }
        next
    }

    /// Marks a large span as sitting in a thread's stash of freed large spans. `false` if
    /// it already was: the object was freed twice.
    ///
    /// A load and a store, not a swap: while its object is live, only a free of it writes
    /// the mark (whoever takes a stashed span out clears it), so a read-modify-write would
    /// only tell apart two frees of one object racing on two threads, which the
    /// small-object check does not catch either; it would cost every large free a locked
    /// instruction.
    #[inline]
    pub fn stash_large(&self) -> bool {
        if self.stashed.load(Ordering::Relaxed) {
            return false;
        }
        self.stashed.store(true, Ordering::Relaxed);
        true
    }

    /// Takes a large span out of a stash (to hand its object out again or to free it).
    ///
    /// # Safety
    /// The calling thread stashed the span and takes it out of its stash.
    #[inline]
    pub unsafe fn unstash_large(&self) {
        // Release pairs with the Acquire in `is_stashed_large`: a thread that sees the mark
        // cleared also sees the stash slot the span was taken from emptied (the cache
        // walker's check, `ThreadCache::invariant_violation`).
        self.stashed.store(false, Ordering::Release);
    }

    /// Whether a large span sits in a thread's stash (its object is free).
    #[inline]
    pub fn is_stashed_large(&self) -> bool {
        // Acquire pairs with the Release in `unstash_large`.
        self.stashed.load(Ordering::Acquire)
    }

    /// Marks a large span's object as sampled by the heap profiler: `record` is its record
    /// (non-zero).
    #[inline]
    pub fn set_sample(&self, record: usize) {
        self.sample.store(record, Ordering::Relaxed);
    }

    /// The heap profiler's record of the span's object, 0 if it was not sampled. One load:
    /// what the large-object free path pays.
    #[inline(always)]
    pub fn sample(&self) -> usize {
        self.sample.load(Ordering::Relaxed)
    }

    /// Takes the heap profiler's record off the span (its object is being freed): the
    /// record, or 0 if there was none (or a racing free took it).
    #[inline]
    pub fn take_sample(&self) -> usize {
        self.sample.swap(0, Ordering::Relaxed)
    }

    // ---------------------------------------------------------------------------------
    // List links.

    /// The next span on the same list.
    ///
    /// # Safety
    /// The caller holds the lock of the list that holds the span.
    pub unsafe fn next_on_list(&self) -> *mut Span {
        // SAFETY: per the caller.
        unsafe { self.next.get() }
    }

    /// Which list holds the span.
    ///
    /// # Safety
    /// The caller holds the lock of the list that may hold the span.
    pub unsafe fn list(&self) -> ListId {
        // SAFETY: per the caller.
        unsafe { self.list.get() }
    }
}

/// The word a free object of address `obj` carries: the per-process `key` mixed with the
/// object's own address. A copy of a freed object's bytes to another address (a program
/// that copies memory it never initialised, which may hold a former free object's mark)
/// then does not carry the other address's mark, so it is never taken for a double free;
/// glibc's tcache uses one plain key and walks its bin to confirm a match instead.
#[inline(always)]
fn free_mark(obj: *mut u8, key: u64) -> u64 {
    key ^ obj as u64
}

/// Marks `obj` free: stops the process if it already carries its free mark (a double
/// free), then writes the mark into its second word. Nothing when the free checks are off.
///
/// # Safety
/// `obj` is an object of at least [`crate::size_class::MIN_OBJECT_SIZE`] bytes that the
/// caller gives up.
#[inline(always)]
pub unsafe fn mark_freed(obj: *mut u8, key: u64) {
    if crate::check::FREE_CHECKS {
        let mark = free_mark(obj, key);
        // SAFETY: per the caller, the object has a second word and is ours to write.
        unsafe {
            let word = obj.cast::<u64>().add(1);
            if word.read() == mark {
                fatal_at("double free detected", obj as usize);
            }
            word.write(mark);
        }
    }
}

/// Marks a never-used object free (it enters a free list for the first time): writes the
/// mark without the double-free check, since its memory holds whatever was there before.
///
/// # Safety
/// `obj` is a never-used object of at least two words that the caller owns.
#[inline(always)]
pub unsafe fn mark_freed_fresh(obj: *mut u8, key: u64) {
    if crate::check::FREE_CHECKS {
        // SAFETY: per the caller.
        unsafe { obj.cast::<u64>().add(1).write(free_mark(obj, key)) };
    }
}

/// Whether `obj` carries its free mark under `key` (it is on a free list). Always `false`
/// when the free checks are off.
///
/// # Safety
/// `obj` is the start of an object of at least two words.
#[inline(always)]
pub unsafe fn is_marked_freed(obj: *mut u8, key: u64) -> bool {
    // SAFETY: per the caller.
    crate::check::FREE_CHECKS && unsafe { obj.cast::<u64>().add(1).read() } == free_mark(obj, key)
}

/// Clears the free key of an object being handed out.
///
/// # Safety
/// `obj` is a free object of at least two words that the caller is handing out.
#[inline(always)]
pub unsafe fn mark_allocated(obj: *mut u8) {
    if crate::check::FREE_CHECKS {
        // SAFETY: per the caller.
        unsafe { obj.cast::<u64>().add(1).write(0) };
    }
}

/// Reads the link stored in a free object (the hardened build decodes it; the follower
/// checks it, see `Span::next_free_checked` and `PageMap::next_free_checked`).
///
/// # Safety
/// `obj` is a free object whose first word is a link.
#[inline(always)]
pub unsafe fn next_free(obj: *mut u8) -> *mut u8 {
    #[cfg(not(feature = "hardened"))]
    // SAFETY: per the caller.
    let next = unsafe { (obj as *mut *mut u8).read() };
    #[cfg(feature = "hardened")]
    // SAFETY: per the caller.
    let next = crate::hardening::decode_link(obj, unsafe { (obj as *mut usize).read() });
    next
}

/// Writes the link of a free object (the hardened build encodes it with the per-process
/// key and the object's address, `hardening::encode_link`).
///
/// # Safety
/// `obj` is a free object owned by the caller, at least a word long and word-aligned.
#[inline(always)]
pub unsafe fn set_next_free(obj: *mut u8, next: *mut u8) {
    #[cfg(not(feature = "hardened"))]
    // SAFETY: per the caller.
    unsafe {
        (obj as *mut *mut u8).write(next)
    };
    #[cfg(feature = "hardened")]
    // SAFETY: per the caller.
    unsafe {
        (obj as *mut usize).write(crate::hardening::encode_link(obj, next))
    };
}

/// Appends list `b` to list `a` (walking `a`), returning the head.
///
/// # Safety
/// Both are null-terminated lists of free objects owned by the caller.
pub unsafe fn append(a: *mut u8, b: *mut u8) -> *mut u8 {
    if a.is_null() {
        return b;
    }
    if !b.is_null() {
        let mut tail = a;
        // SAFETY: every node of `a` is a free object with a link.
        unsafe {
            loop {
                let n = next_free(tail);
                if n.is_null() {
                    break;
                }
                tail = n;
            }
            set_next_free(tail, b);
        }
    }
    a
}

/// Length of a free list.
///
/// # Safety
/// `list` is a null-terminated list of free objects owned by the caller.
pub unsafe fn list_len(mut list: *mut u8) -> usize {
    let mut n = 0;
    while !list.is_null() {
        n += 1;
        // SAFETY: per the caller.
        list = unsafe { next_free(list) };
    }
    n
}

/// An intrusive doubly linked list of spans, threaded through `prev`/`next`.
///
/// Guarded by the lock of whatever contains it.
pub struct SpanList {
    head: *mut Span,
    tail: *mut Span,
    len: usize,
    id: ListId,
}

// SAFETY: the list only holds pointers to span records; it moves inside its lock.
unsafe impl Send for SpanList {}

impl SpanList {
    /// An empty list that stamps its spans with `id`.
    pub const fn new(id: ListId) -> SpanList {
        SpanList {
            head: null_mut(),
            tail: null_mut(),
            len: 0,
            id,
        }
    }

    /// Number of spans.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the list is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The first span, or null.
    pub fn first(&self) -> *mut Span {
        self.head
    }

    /// The last span (the one on the list longest), or null.
    pub fn last(&self) -> *mut Span {
        self.tail
    }

    /// Adds `span` at the front.
    ///
    /// # Safety
    /// `span` is a live record on no list; the caller holds this list's lock.
    pub unsafe fn push(&mut self, span: *mut Span) {
        // SAFETY: per the caller, the list's lock guards every link touched here.
        unsafe {
            let s = &*span;
            debug_assert_eq!(s.list.get(), ListId::None);
            s.prev.set(null_mut());
            s.next.set(self.head);
            if self.head.is_null() {
                self.tail = span;
            } else {
                (*self.head).prev.set(span);
            }
            s.list.set(self.id);
        }
        self.head = span;
        self.len += 1;
    }

    /// Takes `span` off the list.
    ///
    /// # Safety
    /// `span` is on this list; the caller holds this list's lock.
    pub unsafe fn remove(&mut self, span: *mut Span) {
        // SAFETY: per the caller, the list's lock guards every link touched here.
        unsafe {
            let s = &*span;
            debug_assert_eq!(s.list.get(), self.id);
            let prev = s.prev.get();
            let next = s.next.get();
            if prev.is_null() {
                self.head = next;
            } else {
                (*prev).next.set(next);
            }
            if next.is_null() {
                self.tail = prev;
            } else {
                (*next).prev.set(prev);
            }
            s.prev.set(null_mut());
            s.next.set(null_mut());
            s.list.set(ListId::None);
        }
        self.len -= 1;
    }

    /// Iterates over the spans (do not change the list while iterating).
    ///
    /// # Safety
    /// The caller holds this list's lock for the whole iteration.
    pub unsafe fn iter(&self) -> impl Iterator<Item = *mut Span> + '_ {
        let mut at = self.head;
        core::iter::from_fn(move || {
            if at.is_null() {
                None
            } else {
                let this = at;
                // SAFETY: the caller holds the lock; `at` is a live span on this list.
                at = unsafe { (*at).next.get() };
                Some(this)
            }
        })
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::pages::PAGE_SIZE;

    /// A small span of the 64-byte class (128 objects) over real memory.
    struct TestSpan {
        _mem: Vec<u64>,
        span: Box<core::mem::MaybeUninit<Span>>,
    }

    impl TestSpan {
        fn new() -> TestSpan {
            let mem = vec![0u64; 2 * PAGE_SIZE / 8];
            let start = (mem.as_ptr() as usize).div_ceil(PAGE_SIZE) * PAGE_SIZE;
            let mut span = Box::new(core::mem::MaybeUninit::<Span>::uninit());
            // SAFETY: fresh memory.
            unsafe {
                Span::init(
                    span.as_mut_ptr(),
                    PageId::containing(start),
                    Pages(1),
                    SpanKind::Unused,
                )
            };
            let t = TestSpan { _mem: mem, span };
            // SAFETY: not shared.
            unsafe { t.get().init_small(crate::size_class::class_of(64).unwrap()) };
            t
        }
        fn get(&self) -> &Span {
            // SAFETY: initialised in `new`.
            unsafe { self.span.assume_init_ref() }
        }
        fn obj(&self, i: usize) -> *mut u8 {
            (self.get().start_addr() + i * 64) as *mut u8
        }
    }

    #[test]
    fn contains_and_object_index_know_the_span_and_its_object_starts() {
        let t = TestSpan::new();
        let s = t.get();
        let start = s.start_addr();
        assert!(s.contains(start) && s.contains(start + PAGE_SIZE - 1));
        assert!(!s.contains(start + PAGE_SIZE) && !s.contains(start.wrapping_sub(1)));
        for k in [0, 1, 2, 77, s.capacity() - 1] {
            assert_eq!(s.object_index(start + k * 64), Some(k));
            assert_eq!(
                s.object_index(start + k * 64 + 16),
                None,
                "inside object {k}"
            );
        }
        assert_eq!(s.object_index(start + s.capacity() * 64), None);
        assert_eq!(s.object_index(start.wrapping_sub(64)), None);
    }

    /// A free object's mark copied into another object's second word is not that object's
    /// mark (a program copying bytes it never wrote must not make a live object look freed).
    #[test]
    fn a_free_mark_copied_to_another_object_is_not_its_mark() {
        let t = TestSpan::new();
        let key = crate::check::free_key();
        // SAFETY: objects of the test's span, over its own memory.
        unsafe {
            mark_freed(t.obj(0), key);
            assert_eq!(is_marked_freed(t.obj(0), key), crate::check::FREE_CHECKS);
            let mark = t.obj(0).cast::<u64>().add(1).read();
            for k in 1..t.get().capacity() {
                t.obj(k).cast::<u64>().add(1).write(mark);
                assert!(
                    !is_marked_freed(t.obj(k), key),
                    "object {k} took object 0's mark"
                );
            }
        }
    }

    #[test]
    fn freed_objects_carry_the_key_and_allocation_clears_it() {
        let t = TestSpan::new();
        // SAFETY: an object of the span, freed once, then handed out again.
        unsafe {
            let key = crate::check::free_key();
            mark_freed(t.obj(0), key);
            assert_eq!(is_marked_freed(t.obj(0), key), crate::check::FREE_CHECKS);
            mark_allocated(t.obj(0));
            assert!(!is_marked_freed(t.obj(0), key));
        }
    }

    #[test]
    fn span_list_links() {
        let spans: Vec<TestSpan> = (0..3).map(|_| TestSpan::new()).collect();
        let ptrs: Vec<*mut Span> = spans
            .iter()
            .map(|t| t.get() as *const Span as *mut Span)
            .collect();
        let mut list = SpanList::new(ListId::Partial);
        // SAFETY: single-threaded; records are live.
        unsafe {
            for &p in &ptrs {
                list.push(p);
            }
            assert_eq!(list.len(), 3);
            assert_eq!((list.first(), list.last()), (ptrs[2], ptrs[0]));
            list.remove(ptrs[1]);
            let order: Vec<_> = list.iter().collect();
            assert_eq!(order, vec![ptrs[2], ptrs[0]]);
            assert_eq!((*ptrs[1]).list(), ListId::None);
            list.remove(ptrs[0]);
            assert_eq!((list.first(), list.last()), (ptrs[2], ptrs[2]));
            list.remove(ptrs[2]);
            assert!(list.is_empty());
            assert!(list.first().is_null() && list.last().is_null());
        }
    }

    /// A reader holding a stale pointer to a span record (an invalid `free` or a lent
    /// span's check found it in the page map) loads its identity fields while the page heap
    /// gives the record back and makes another span in it, with no ordering between them.
    /// Every store of that recycle where such a reader loads is atomic (the metadata
    /// allocator's free link, `Span::init`'s identity fields), so no load races a plain
    /// store: under Miri (CI's robustness job runs this module) a plain store there is a
    /// reported data race.
    #[test]
    fn a_record_recycled_while_a_stale_reader_loads_it() {
        use crate::fixed_alloc::FixedAlloc;
        use crate::sys::FakePages;
        let source = FakePages::new();
        let mut records = FixedAlloc::<Span>::new();
        let (old_start, new_start) = (16 * PAGE_SIZE, 64 * PAGE_SIZE);
        let rec = records.alloc(&source).unwrap();
        // SAFETY: a record of ours, holding no live span.
        unsafe {
            Span::init(
                rec.as_ptr(),
                PageId::containing(old_start),
                Pages(2),
                SpanKind::Large,
            )
        };
        let at = rec.as_ptr() as usize;
        std::thread::scope(|s| {
            let reader = s.spawn(move || {
                // SAFETY: records are never unmapped; the fields read are atomics.
                let span = unsafe { &*(at as *const Span) };
                let mut seen = Vec::new();
                for _ in 0..4 {
                    seen.push((span.kind(), span.start_addr(), span.pages()));
                }
                seen
            });
            // SAFETY: the record is ours and holds no live span from here on (the reader's
            // pointer is the stale one under test).
            unsafe { records.free(rec) };
            let again = records.alloc(&source).unwrap();
            assert_eq!(again, rec, "the record is recycled");
            // SAFETY: as above.
            unsafe {
                Span::init(
                    again.as_ptr(),
                    PageId::containing(new_start),
                    Pages(1),
                    SpanKind::Small,
                )
            };
            // Each field read is the old span's, the new one's, or (the first word) the
            // free link, null here: never a torn or invented value. The fields of one read
            // may mix old and new (they are independent relaxed loads, and Miri's weak
            // memory model does mix them); the callers' checks of a stale record's start
            // and range are what reject such a mix.
            for (kind, start, pages) in reader.join().unwrap() {
                assert!(
                    matches!(kind, SpanKind::Large | SpanKind::Small),
                    "{kind:?}"
                );
                assert!([old_start, new_start, 0].contains(&start), "{start:#x}");
                assert!(pages == Pages(2) || pages == Pages(1), "{pages:?}");
            }
        });
    }
}
