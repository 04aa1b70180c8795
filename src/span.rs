//! The span record: a run of pages, what it holds, and the cross-thread free protocol. See
//! `lib.rs` for an overview.
//!
//! A span is one of: a free run in the page heap ([`SpanKind::Free`]), a small-object span
//! of one size class ([`SpanKind::Small`]), or one large object ([`SpanKind::Large`]).
//!
//! # The remote word
//!
//! Every small span has one atomic 64-bit word, `remote`, that carries its cross-thread
//! frees and its ownership state:
//!
//! ```text
//! bits  0..32  head: byte offset + 1 of the first object on the remote list (0: empty)
//! bits 32..48  count: see below
//! bit  48      OWNED   a thread cache owns the span
//! bit  49      FULL    unowned, on its central list's full list, no free object at all
//! bit  50      MOVING  unowned; a freeing thread cleared FULL and will move the span to
//!                      the partial list under the central lock
//! bit  51      DEAD    unowned and wholly free; exactly one thread is returning it to
//!                      the page heap
//! ```
//!
//! While OWNED, `count` is the number of objects on the remote list. While unowned, it is
//! the number of objects still handed out: every free decrements it, so the thread that
//! takes it to zero knows, from the result of its own compare-and-swap, that the span is
//! wholly free. A free of an object from a span the thread does not own is therefore one
//! compare-and-swap in the common case; a lock is taken only on the rare transitions
//! (the first free into a full span, the last free of a span).
//!
//! # Invariants
//!
//! 1. A small span's objects are each in exactly one place: handed out, on the owner's
//!    local list (in its thread cache), on the span's `free` list, on the remote list, or
//!    never handed out (index `>= bump`).
//! 2. OWNED spans are on no central list; unowned spans are on their central list's
//!    `partial` list (some object free, or never used), its `full` list (FULL set), or in
//!    transit (MOVING, DEAD), on no list.
//! 3. Unowned: `count` + free objects (`free` list, remote list, `capacity - bump`) =
//!    capacity.
//! 4. Every page of a small span maps to it in the page map; the first and last page of
//!    every other span map to it.

use crate::check::fatal;
use crate::pages::{PageId, Pages};
use crate::size_class::SizeClass;
use crate::sync::{AtomicU8, AtomicU32, AtomicU64, AtomicUsize, GuardedCell, Ordering};
use core::ptr::null_mut;

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
    /// A thread cache's retained spans with free objects on their `free` list.
    CacheReady,
    /// A thread cache's retained spans with nothing on their `free` list.
    CacheFull,
}

const HEAD_MASK: u64 = 0xffff_ffff;
const COUNT_SHIFT: u32 = 32;
const COUNT_MASK: u64 = 0xffff << COUNT_SHIFT;
/// A thread cache owns the span.
pub const OWNED: u64 = 1 << 48;
/// Unowned and on the full list.
pub const FULL: u64 = 1 << 49;
/// Unowned; moving from the full list to the partial list.
pub const MOVING: u64 = 1 << 50;
/// Unowned and wholly free; being returned to the page heap.
pub const DEAD: u64 = 1 << 51;

/// The owner field of a large span in a thread's stash of freed large spans (never a
/// thread cache's id).
const STASHED_LARGE: usize = usize::MAX - 1;

/// What the thread that freed an object into an unowned span must do next, under the
/// span's central lock.
#[derive(Copy, Clone, PartialEq, Eq, Debug)]
pub enum RemoteAction {
    /// Nothing: the common case.
    Nothing,
    /// The span was full and now has a free object: move it to the partial list.
    Move,
    /// The span is wholly free: take it off its list and return it to the page heap.
    Release,
}

/// How a span left its owner.
#[derive(Copy, Clone, PartialEq, Eq, Debug)]
pub enum Disowned {
    /// Some objects are free: goes on the partial list.
    Partial,
    /// No object is free: goes on the full list.
    Full,
    /// Every object is free: goes back to the page heap.
    Free,
}

/// A span record. Lives in metadata memory ([`crate::fixed_alloc`]), never in the heap.
/// One record is two cache lines, and the first holds everything a free into an owned span
/// reads and writes (identity, class constants, owner, free list and count); the remote
/// word and the list links are in the second.
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
    // Small spans: the class's constants, copied at `init_small` so that the free paths
    // read them from the span (one cache line) rather than from three class tables.
    obj_size: AtomicU32,
    obj_count: AtomicU32,
    div_magic: AtomicU32,
    /// `obj_size * obj_count`: the bytes the objects cover, the bound of a valid offset.
    obj_bytes: AtomicU32,
    /// Small spans: the id of the thread cache that owns the span, 0 while unowned. Only
    /// the owner writes it (on taking and giving up the span), so a Relaxed load that
    /// returns a cache's own id means that cache owns the span: nobody else writes that id.
    /// Large spans: `STASHED_LARGE` while freed into a thread's stash, else 0.
    owner: AtomicUsize,
    /// Small, unowned: objects freed before the owner gave the span back. Small, owned and
    /// retained by its thread cache (not the span it allocates from): the owner's free
    /// objects of it.
    pub(crate) free: GuardedCell<*mut u8>,
    /// Small, owned and retained: the length of `free`.
    pub(crate) free_count: GuardedCell<u32>,
    /// Small: objects with index `>= bump` have never been handed out.
    pub(crate) bump: GuardedCell<u32>,
    // The second cache line: what frees into an owned span do not touch.
    /// Small spans: the cross-thread free word (see the module documentation). Apart from
    /// the owner's free list, so that other threads' frees do not take that line away.
    pub(crate) remote: AtomicU64,
    // Guarded by the lock of the list that holds the span, or by the owning thread cache.
    prev: GuardedCell<*mut Span>,
    next: GuardedCell<*mut Span>,
    list: GuardedCell<ListId>,
    /// Free runs: how many of its pages may be resident (an upper bound).
    pub(crate) resident: GuardedCell<usize>,
    /// Free runs and new spans: every byte is zero.
    pub(crate) zeroed: GuardedCell<bool>,
    /// Free runs: when the run was last freed, in the page heap's clock. Small spans
    /// retained by a thread cache: when the cache first found the span wholly free (0: not
    /// yet), for its own decay.
    pub(crate) freed_at: GuardedCell<u64>,
}

impl Span {
    /// Makes a record in place.
    ///
    /// # Safety
    /// `at` is valid for writes of a `Span` and holds no live span.
    pub unsafe fn init(at: *mut Span, start: PageId, pages: Pages, kind: SpanKind) {
        // SAFETY: per the caller, `at` is writable and unused.
        unsafe {
            at.write(Span {
                start: AtomicUsize::new(start.0),
                pages: AtomicUsize::new(pages.0),
                kind: AtomicU8::new(kind as u8),
                class: AtomicU8::new(0),
                obj_size: AtomicU32::new(0),
                obj_count: AtomicU32::new(0),
                div_magic: AtomicU32::new(0),
                obj_bytes: AtomicU32::new(0),
                remote: AtomicU64::new(0),
                owner: AtomicUsize::new(0),
                prev: GuardedCell::new(null_mut()),
                next: GuardedCell::new(null_mut()),
                list: GuardedCell::new(ListId::None),
                free: GuardedCell::new(null_mut()),
                free_count: GuardedCell::new(0),
                bump: GuardedCell::new(0),
                resident: GuardedCell::new(0),
                zeroed: GuardedCell::new(false),
                freed_at: GuardedCell::new(0),
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

    /// Makes a fresh span of `class`, owned by the calling thread cache, with every object
    /// never used.
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
            self.bump.set(0);
        }
        self.remote.store(OWNED, Ordering::Relaxed);
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

    // ---------------------------------------------------------------------------------
    // The remote word.

    /// Pushes `obj` onto the remote list: one compare-and-swap in the common case. Returns
    /// what the caller must then do under the central lock. Stops the process when the free
    /// cannot be valid (a double free detected by the counts).
    ///
    /// # Safety
    /// `obj` is the start of an object of this span that the caller was handed and is
    /// giving up.
    #[inline]
    pub unsafe fn push_remote(&self, obj: *mut u8) -> RemoteAction {
        let start = self.start_addr();
        let offset_plus_one = (obj as usize - start + 1) as u64;
        let capacity = self.capacity() as u64;
        // SAFETY: per the caller, an object of this span being given up.
        unsafe { mark_freed(obj, crate::check::free_key()) };
        let mut word = self.remote.load(Ordering::Relaxed);
        loop {
            let head = decode_head(word, start);
            // SAFETY: `obj` is an object the caller gives up; its first word becomes the link.
            unsafe { (obj as *mut *mut u8).write(head) };
            let count = (word & COUNT_MASK) >> COUNT_SHIFT;
            let flags = word & !(HEAD_MASK | COUNT_MASK);
            let (new_count, new_flags, action) = if flags & OWNED != 0 {
                if count >= capacity {
                    fatal("double free detected");
                }
                (count + 1, flags, RemoteAction::Nothing)
            } else {
                if count == 0 || flags & DEAD != 0 {
                    fatal("double free detected");
                }
                let left = count - 1;
                if flags & FULL != 0 {
                    if left == 0 {
                        (0, DEAD, RemoteAction::Release)
                    } else {
                        (left, MOVING, RemoteAction::Move)
                    }
                } else if flags & MOVING != 0 || left != 0 {
                    // MOVING: whoever is moving the span will see the count.
                    (left, flags, RemoteAction::Nothing)
                } else {
                    (0, DEAD, RemoteAction::Release)
                }
            };
            let new = offset_plus_one | (new_count << COUNT_SHIFT) | new_flags;
            // Release: publishes the link written into `obj` (and the caller's writes to the
            // object) to whoever takes the list with an Acquire swap/CAS.
            match self
                .remote
                .compare_exchange_weak(word, new, Ordering::Release, Ordering::Relaxed)
            {
                Ok(_) => return action,
                Err(seen) => word = seen,
            }
        }
    }

    /// The owner takes the whole remote list, leaving the span OWNED and the list empty.
    /// Returns the list (null-terminated), possibly empty.
    ///
    /// # Safety
    /// The calling thread cache owns the span.
    #[inline]
    pub unsafe fn take_remote_owned(&self) -> *mut u8 {
        if !self.has_remote() {
            return null_mut();
        }
        // Acquire pairs with the Release CAS in `push_remote`.
        let word = self.remote.swap(OWNED, Ordering::Acquire);
        debug_assert!(word & OWNED != 0);
        decode_head(word, self.start_addr())
    }

    /// A central list lends the span to a thread cache: marks it OWNED and returns its free
    /// objects (the `free` list with the remote list appended, possibly empty). `None` if
    /// the span is DEAD (its last object was freed; the freeing thread is releasing it).
    ///
    /// # Safety
    /// The caller holds the span's central lock and the span is on its partial list.
    pub unsafe fn own(&self) -> Option<*mut u8> {
        let mut word = self.remote.load(Ordering::Relaxed);
        loop {
            if word & DEAD != 0 {
                return None;
            }
            debug_assert!(word & (OWNED | FULL | MOVING) == 0);
            // Acquire pairs with the Release CAS in `push_remote`: we read the links.
            match self.remote.compare_exchange_weak(
                word,
                OWNED,
                Ordering::Acquire,
                Ordering::Relaxed,
            ) {
                Ok(_) => break,
                Err(seen) => word = seen,
            }
        }
        let remote = decode_head(word, self.start_addr());
        // SAFETY: the central lock guards `free` while the span is unowned; we now own it.
        let local = unsafe { self.free.get() };
        // SAFETY: as above.
        unsafe { self.free.set(null_mut()) };
        // SAFETY: both lists are null-terminated lists of this span's free objects, which
        // nobody else touches now.
        Some(unsafe { append(remote, local) })
    }

    /// The owner gives the span back to its central list. `local` is the owner's list of
    /// the span's free objects and `local_count` its length. Returns where the span goes.
    ///
    /// # Safety
    /// The calling thread cache owns the span and holds the central lock.
    pub unsafe fn disown(&self, local: *mut u8, local_count: usize) -> Disowned {
        let capacity = self.capacity();
        // SAFETY: the owner (the caller) guards `bump`.
        let never_used = capacity - unsafe { self.bump.get() } as usize;
        let mut word = self.remote.load(Ordering::Relaxed);
        loop {
            debug_assert!(word & OWNED != 0);
            let on_remote = ((word & COUNT_MASK) >> COUNT_SHIFT) as usize;
            let free = never_used + local_count + on_remote;
            if free > capacity {
                fatal("double free detected");
            }
            let in_use = (capacity - free) as u64;
            let (flags, result) = if in_use == 0 {
                (DEAD, Disowned::Free)
            } else if free == 0 {
                (FULL, Disowned::Full)
            } else {
                (0, Disowned::Partial)
            };
            // Acquire pairs with the Release CAS in `push_remote`: we read the links.
            match self.remote.compare_exchange_weak(
                word,
                (in_use << COUNT_SHIFT) | flags,
                Ordering::Acquire,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    let remote = decode_head(word, self.start_addr());
                    // SAFETY: both lists hold this span's free objects only; the central
                    // lock (held) guards `free` from now on.
                    unsafe { self.free.set(append(remote, local)) };
                    return result;
                }
                Err(seen) => word = seen,
            }
        }
    }

    /// The thread that cleared FULL, now holding the central lock, ends the move: `true` if
    /// the span goes on the partial list, `false` if it became wholly free meanwhile (it is
    /// then DEAD and the caller releases it).
    ///
    /// # Safety
    /// The caller holds the span's central lock and is the thread that set MOVING.
    pub unsafe fn finish_move(&self) -> bool {
        let mut word = self.remote.load(Ordering::Relaxed);
        loop {
            debug_assert!(word & MOVING != 0);
            let count = word & COUNT_MASK;
            let new = if count == 0 {
                (word & HEAD_MASK) | DEAD
            } else {
                word & !MOVING
            };
            match self
                .remote
                .compare_exchange_weak(word, new, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return count != 0,
                Err(seen) => word = seen,
            }
        }
    }

    /// The id of the thread cache that owns the span (0: none). Any thread may ask; the
    /// answer equals a cache's own id only while that cache owns the span.
    #[inline(always)]
    pub fn owner(&self) -> usize {
        self.owner.load(Ordering::Relaxed)
    }

    /// Records the owning thread cache's id (0 when giving the span up).
    ///
    /// # Safety
    /// The calling thread cache owns the span (it is taking it, or giving it up).
    pub unsafe fn set_owner(&self, id: usize) {
        self.owner.store(id, Ordering::Relaxed);
    }

    /// Marks a large span as sitting in a thread's stash of freed large spans (its object
    /// freed, its pages still the span's). `false` if it already was: the object was freed
    /// twice.
    #[inline]
    pub fn stash_large(&self) -> bool {
        self.owner.swap(STASHED_LARGE, Ordering::Relaxed) != STASHED_LARGE
    }

    /// Takes a large span out of a stash (to hand its object out again or to free it).
    ///
    /// # Safety
    /// The calling thread stashed the span and takes it out of its stash.
    #[inline]
    pub unsafe fn unstash_large(&self) {
        self.owner.store(0, Ordering::Relaxed);
    }

    /// Whether a large span sits in a thread's stash (its object is free).
    #[inline]
    pub fn is_stashed_large(&self) -> bool {
        self.owner.load(Ordering::Relaxed) == STASHED_LARGE
    }

    /// Whether the owned span has objects on its remote list.
    #[inline]
    pub fn has_remote(&self) -> bool {
        self.remote.load(Ordering::Relaxed) & (HEAD_MASK | COUNT_MASK) != 0
    }

    /// The raw remote word (for invariant checks and statistics).
    pub fn remote_word(&self) -> u64 {
        self.remote.load(Ordering::Acquire)
    }

    /// Objects handed out, for an unowned span (from its remote word).
    pub fn unowned_in_use(word: u64) -> usize {
        ((word & COUNT_MASK) >> COUNT_SHIFT) as usize
    }

    /// Length of the remote list of an owned span (from its remote word).
    pub fn owned_remote_len(word: u64) -> usize {
        ((word & COUNT_MASK) >> COUNT_SHIFT) as usize
    }

    /// Length of the remote list as it was in `word`, a value this span's remote word held
    /// (walks it). Pushes only put nodes in front of a head, so the list below `word`'s
    /// head does not change while nobody takes it: `word`'s count and this length describe
    /// the same moment, however many frees arrive meanwhile.
    ///
    /// # Safety
    /// The caller holds the central lock of an unowned span (nobody takes the list
    /// concurrently), and read `word` from it under that lock.
    pub unsafe fn remote_len_unowned(&self, word: u64) -> usize {
        // SAFETY: the list is only taken under the lock we hold; nodes stay valid.
        unsafe { list_len(decode_head(word, self.start_addr())) }
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

/// The object at `head` of a remote word, or null.
#[inline(always)]
fn decode_head(word: u64, start: usize) -> *mut u8 {
    let h = (word & HEAD_MASK) as usize;
    if h == 0 {
        null_mut()
    } else {
        (start + h - 1) as *mut u8
    }
}

/// Marks `obj` free: stops the process if it already carries the free `key` (a double
/// free), then writes the key into its second word. Nothing when the free checks are off.
///
/// # Safety
/// `obj` is an object of at least [`crate::size_class::MIN_OBJECT_SIZE`] bytes that the
/// caller gives up.
#[inline(always)]
pub unsafe fn mark_freed(obj: *mut u8, key: u64) {
    if crate::check::FREE_CHECKS {
        // SAFETY: per the caller, the object has a second word and is ours to write.
        unsafe {
            let word = obj.cast::<u64>().add(1);
            if word.read() == key {
                fatal("double free detected");
            }
            word.write(key);
        }
    }
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

/// Reads the link stored in a free object.
///
/// # Safety
/// `obj` is a free object whose first word is a link.
#[inline(always)]
pub unsafe fn next_free(obj: *mut u8) -> *mut u8 {
    // SAFETY: per the caller.
    unsafe { (obj as *mut *mut u8).read() }
}

/// Writes the link of a free object.
///
/// # Safety
/// `obj` is a free object owned by the caller, at least a word long and word-aligned.
#[inline(always)]
pub unsafe fn set_next_free(obj: *mut u8, next: *mut u8) {
    // SAFETY: per the caller.
    unsafe { (obj as *mut *mut u8).write(next) }
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

    #[cfg(not(loom))]
    #[test]
    fn a_free_into_an_owned_span_touches_one_cache_line() {
        use core::mem::{align_of, offset_of};
        assert_eq!(align_of::<Span>(), 64);
        for end in [
            offset_of!(Span, start) + 8,
            offset_of!(Span, pages) + 8,
            offset_of!(Span, kind) + 1,
            offset_of!(Span, obj_size) + 4,
            offset_of!(Span, div_magic) + 4,
            offset_of!(Span, obj_bytes) + 4,
            offset_of!(Span, owner) + 8,
            offset_of!(Span, free) + 8,
            offset_of!(Span, free_count) + 4,
        ] {
            assert!(end <= 64, "a free-path field ends at byte {end}");
        }
        assert!(offset_of!(Span, remote) >= 64);
    }

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
    fn owned_remote_frees_are_collected_by_the_owner() {
        let t = TestSpan::new();
        let s = t.get();
        assert_eq!(s.capacity(), 128);
        // SAFETY: objects of the span, freed once each.
        unsafe {
            s.bump.set(3);
            assert_eq!(s.push_remote(t.obj(0)), RemoteAction::Nothing);
            assert_eq!(s.push_remote(t.obj(2)), RemoteAction::Nothing);
            let list = s.take_remote_owned();
            assert_eq!(list_len(list), 2);
            assert_eq!(list, t.obj(2));
            assert!(s.take_remote_owned().is_null());
        }
    }

    #[test]
    fn last_free_of_an_unowned_span_releases_it_once() {
        let t = TestSpan::new();
        let s = t.get();
        // SAFETY: the test plays owner and central list on one thread.
        unsafe {
            s.bump.set(128);
            // Owner gives the span back with everything handed out: full.
            assert_eq!(s.disown(null_mut(), 0), Disowned::Full);
            assert_eq!(s.push_remote(t.obj(5)), RemoteAction::Move);
            assert_eq!(s.push_remote(t.obj(6)), RemoteAction::Nothing);
            assert!(s.finish_move());
            for i in 0..128 {
                if i == 5 || i == 6 {
                    continue;
                }
                let want = if i == 127 {
                    RemoteAction::Release
                } else {
                    RemoteAction::Nothing
                };
                assert_eq!(s.push_remote(t.obj(i)), want);
            }
            assert!(s.remote_word() & DEAD != 0);
            assert!(s.own().is_none(), "a dead span is never lent");
        }
    }

    #[test]
    fn move_that_finds_the_span_empty_releases_it() {
        let t = TestSpan::new();
        let s = t.get();
        // SAFETY: as above.
        unsafe {
            s.bump.set(128);
            // Two objects in use, the rest on the local list.
            let mut local = null_mut();
            for i in 2..128 {
                set_next_free(t.obj(i), local);
                local = t.obj(i);
            }
            assert_eq!(s.disown(local, 126), Disowned::Partial);
            let mut list = s.own().unwrap();
            assert_eq!(list_len(list), 126);
            // Hand everything out (clearing the free key, as allocation does) and give the
            // span back full.
            while !list.is_null() {
                let next = next_free(list);
                mark_allocated(list);
                list = next;
            }
            assert_eq!(s.disown(null_mut(), 0), Disowned::Full);
            assert_eq!(s.push_remote(t.obj(0)), RemoteAction::Move);
            for i in 1..128 {
                assert_eq!(s.push_remote(t.obj(i)), RemoteAction::Nothing);
            }
            assert!(!s.finish_move(), "the mover sees the span wholly free");
            assert!(s.remote_word() & DEAD != 0);
        }
    }

    #[test]
    fn own_collects_free_and_remote_objects() {
        let t = TestSpan::new();
        let s = t.get();
        // SAFETY: as above.
        unsafe {
            s.bump.set(10);
            let mut local = null_mut();
            for i in 0..4 {
                set_next_free(t.obj(i), local);
                local = t.obj(i);
            }
            assert_eq!(s.disown(local, 4), Disowned::Partial);
            assert_eq!(Span::unowned_in_use(s.remote_word()), 128 - 118 - 4);
            assert_eq!(s.push_remote(t.obj(7)), RemoteAction::Nothing);
            let list = s.own().unwrap();
            assert_eq!(list_len(list), 5);
            assert!(s.remote_word() & OWNED != 0);
        }
    }

    #[test]
    fn freed_objects_carry_the_key_and_allocation_clears_it() {
        let t = TestSpan::new();
        // SAFETY: an object of the span, freed once, then handed out again.
        unsafe {
            mark_freed(t.obj(0), crate::check::free_key());
            let word = t.obj(0).cast::<u64>().add(1).read();
            assert_eq!(word == crate::check::free_key(), crate::check::FREE_CHECKS);
            mark_allocated(t.obj(0));
            assert_ne!(
                t.obj(0).cast::<u64>().add(1).read(),
                crate::check::free_key()
            );
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
}
