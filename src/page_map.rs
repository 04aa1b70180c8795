//! The page map: which span holds an address, answered in three loads without a lock. See
//! `lib.rs` for an overview.
//!
//! A two-level radix tree over 48-bit addresses: the root has one entry per GiB (2^18
//! entries, 2 MiB of address space, mapped on first use and touched only where used), each
//! leaf one entry per page of its GiB (2^17 entries, 1 MiB, mapped when the page heap first
//! takes memory in that GiB). Nodes come from the page source, never from the heap, and are
//! never freed, so a reader holding a stale entry still reads valid memory; readers validate
//! what they find against the span's own range and kind.
//!
//! Writers hold the page heap lock. A writer fills in a span record completely, then
//! publishes it with a Release store; readers load with Acquire, so they never see a
//! half-made span.

use crate::pages::{PAGE_SHIFT, PAGE_SIZE, PageId, Pages};
use crate::span::Span;
use crate::sync::{AtomicPtr, AtomicUsize, Ordering};
use crate::sys::PageSource;
use core::ptr::null_mut;

/// Address bits covered; higher addresses are never ours.
pub const ADDRESS_BITS: u32 = 48;
const LEAF_SPAN_BITS: u32 = 30;
const ROOT_BITS: u32 = ADDRESS_BITS - LEAF_SPAN_BITS;
const LEAF_BITS: u32 = LEAF_SPAN_BITS - PAGE_SHIFT;
const ROOT_LEN: usize = 1 << ROOT_BITS;
const LEAF_LEN: usize = 1 << LEAF_BITS;

/// A leaf: for each page of its GiB, the span record and the page's small-object word.
#[cfg(not(loom))]
#[repr(C)]
struct Leaf {
    spans: [AtomicPtr<Span>; LEAF_LEN],
    small: [AtomicUsize; LEAF_LEN],
}
#[cfg(not(loom))]
type Root = [AtomicPtr<Leaf>; ROOT_LEN];

/// The root of every map until its first [`PageMap::ensure`]: all null, never written (zero
/// pages of `.bss`, never resident), so that a lookup needs no test for "no root yet".
#[cfg(not(loom))]
static EMPTY_ROOT: Root = {
    // SAFETY: a null `AtomicPtr` is all zero bytes.
    unsafe { core::mem::zeroed() }
};

/// The root a map has before its first [`PageMap::ensure`].
#[cfg(not(loom))]
#[inline(always)]
const fn empty_root() -> *mut Root {
    core::ptr::addr_of!(EMPTY_ROOT).cast_mut()
}

/// Under loom the root is made at run time; null until then.
#[cfg(loom)]
#[inline(always)]
fn empty_root() -> *mut Root {
    null_mut()
}
#[cfg(loom)]
struct Leaf {
    spans: loom_node::Node<Span, { loom_node::LEAF_SLOTS }>,
    small: loom_node::WordNode<{ loom_node::LEAF_SLOTS }>,
}
#[cfg(loom)]
impl Leaf {
    fn new() -> Leaf {
        Leaf {
            spans: loom_node::Node::new(),
            small: loom_node::WordNode::new(),
        }
    }
}
#[cfg(loom)]
type Root = loom_node::Node<Leaf, { loom_node::ROOT_SLOTS }>;

/// The small-object word of a page of a small span: the span's first byte with its size
/// class times 16 in the low bits (spans start on page boundaries, so those bits are free;
/// times 16, the size of the free path's per-class records, so the free path indexes them
/// with the bits as they are). 0 for every other page but a large span's first page
/// ([`large_word`] or [`listed_large_word`], class bits 0 too). What the sizeless `free`
/// needs, in one load from the leaf.
#[inline(always)]
pub const fn small_word(start_addr: usize, class: u8) -> usize {
    start_addr | (class as usize) << 4
}

/// The small-object word of a large span's first page: the address of the span's record
/// above the class bits, which stay 0 ("not a small span's page"). The sizeless free of a
/// large object then finds the record in the load that finds a small object's word, one
/// cache miss fewer than the leaf's span entry, which lies 1 MiB away. Span records live
/// below 2^[`ADDRESS_BITS`], so the shifted address fits. The word is written when the span
/// becomes a large one in use and cleared when it stops being one; a reader validates the
/// record it names (its kind and start), as any page-map reader does, so a stale word sends
/// a free to the slow path and never to a wrong span.
#[inline(always)]
pub fn large_word(span: *const Span) -> usize {
    let addr = span.expose_provenance();
    debug_assert!(addr < 1 << ADDRESS_BITS && addr != 0);
    addr << PAGE_SHIFT
}

/// The mark of a [`listed_large_word`] (no other word has this bit: the others hold an
/// address below 2^[`ADDRESS_BITS`], or one shifted by [`PAGE_SHIFT`]).
const LISTED_LARGE: usize = 1 << 63;

/// The small-object word of the first page of a large span whose object a thread cache may
/// keep on its list of freed objects of `pages` pages (`thread_cache::large_lists`): the
/// object's start (page-aligned, so the class bits stay 0, "not a small span's page"), its
/// length in pages above [`ADDRESS_BITS`], and a mark. The sizeless free of such an object
/// needs nothing else: no span record is read on the way to the list, or off it. The
/// thread cache writes it while it owns the object (handing it out, or freeing it after its
/// heap-profile sample left); the page heap clears it with any large word.
#[inline(always)]
pub fn listed_large_word(start_addr: usize, pages: Pages) -> usize {
    debug_assert!(start_addr < 1 << ADDRESS_BITS && start_addr % PAGE_SIZE == 0);
    debug_assert!(pages.0 > 0 && pages.0 < 1 << (63 - ADDRESS_BITS));
    LISTED_LARGE | pages.0 << ADDRESS_BITS | start_addr
}

/// The object start and pages a [`listed_large_word`] holds, or `None` for any other word.
#[inline(always)]
pub fn word_listed_large(word: usize) -> Option<(usize, Pages)> {
    if word & LISTED_LARGE == 0 {
        return None;
    }
    Some((
        word & ((1 << ADDRESS_BITS) - 1),
        Pages((word & !LISTED_LARGE) >> ADDRESS_BITS),
    ))
}

/// The span record a [`large_word`] names, or null for any other word (0, a small span's
/// page, a [`listed_large_word`]).
#[inline(always)]
pub fn word_large_span(word: usize) -> *mut Span {
    if word_class_bytes(word) != 0 || word & LISTED_LARGE != 0 {
        return null_mut();
    }
    core::ptr::with_exposed_provenance_mut(word >> PAGE_SHIFT)
}

/// The size class index in a small-object word (0: not a small span's page).
#[inline(always)]
pub const fn word_class(word: usize) -> usize {
    word_class_bytes(word) >> 4
}

/// The size class index times 16 in a small-object word.
#[inline(always)]
pub const fn word_class_bytes(word: usize) -> usize {
    word & (PAGE_SIZE - 1)
}

/// The span start in a small-object word.
#[inline(always)]
pub const fn word_start(word: usize) -> usize {
    word & !(PAGE_SIZE - 1)
}

/// Under loom a node is a few loom atomics, made by loom (written into the node's memory
/// after it is mapped) rather than read from zeroed memory, and an index folds onto them
/// (index mod slots). The models' pages are one mapping of at most 256 pages, so folding
/// gives each of them, and each neighbour the page heap looks up, a slot of its own.
#[cfg(loom)]
mod loom_node {
    use crate::sync::{AtomicPtr, AtomicUsize};
    use core::ptr::null_mut;

    pub(super) const ROOT_SLOTS: usize = 2;
    pub(super) const LEAF_SLOTS: usize = 264;

    pub(super) struct Node<T, const N: usize>([AtomicPtr<T>; N]);

    impl<T, const N: usize> Node<T, N> {
        pub(super) fn new() -> Self {
            Node(core::array::from_fn(|_| AtomicPtr::new(null_mut())))
        }
    }

    impl<T, const N: usize> core::ops::Index<usize> for Node<T, N> {
        type Output = AtomicPtr<T>;
        fn index(&self, i: usize) -> &AtomicPtr<T> {
            &self.0[i % N]
        }
    }

    pub(super) struct WordNode<const N: usize>([AtomicUsize; N]);

    impl<const N: usize> WordNode<N> {
        pub(super) fn new() -> Self {
            WordNode(core::array::from_fn(|_| AtomicUsize::new(0)))
        }
    }

    impl<const N: usize> core::ops::Index<usize> for WordNode<N> {
        type Output = AtomicUsize;
        fn index(&self, i: usize) -> &AtomicUsize {
            &self.0[i % N]
        }
    }
}

/// Address to span.
pub struct PageMap {
    root: AtomicPtr<Root>,
    /// Bytes mapped for nodes (root and leaves). Written under the page heap lock.
    node_bytes: AtomicUsize,
}

// Under loom, indexing a node calls `Index` on a reference to it: nodes are live and never
// freed, so the reference is valid.
#[cfg_attr(loom, allow(unknown_lints, dangerous_implicit_autorefs))]
impl PageMap {
    /// An empty map; maps nothing until the first [`PageMap::ensure`].
    #[cfg(not(loom))]
    pub const fn new() -> PageMap {
        PageMap {
            root: AtomicPtr::new(empty_root()),
            node_bytes: AtomicUsize::new(0),
        }
    }

    /// An empty map; maps nothing until the first [`PageMap::ensure`].
    #[cfg(loom)]
    pub fn new() -> PageMap {
        PageMap {
            root: AtomicPtr::new(null_mut()),
            node_bytes: AtomicUsize::new(0),
        }
    }

    /// The span recorded for the page holding `addr`, or null. Lock-free. The result may be
    /// stale for pages inside large or free spans: callers check `span.contains(addr)`.
    #[inline(always)]
    pub fn lookup(&self, addr: usize) -> *mut Span {
        let leaf = self.leaf_of(addr);
        if leaf.is_null() {
            return null_mut();
        }
        let l = (addr >> PAGE_SHIFT) & (LEAF_LEN - 1);
        // Acquire pairs with the Release in `set`: the span record is fully written.
        // SAFETY: `leaf` points to a live leaf and `l` is in bounds.
        unsafe { (*leaf).spans[l].load(Ordering::Acquire) }
    }

    /// The leaf covering `addr`, or null. An address at or above 2^[`ADDRESS_BITS`] is
    /// folded onto a lower one (no branch for it): every caller then checks the address
    /// against a span's own range or start, which the folded one never matches.
    #[inline(always)]
    fn leaf_of(&self, addr: usize) -> *mut Leaf {
        // Acquire pairs with the Release stores in `ensure`: the nodes' zeroing is visible.
        let root = self.root.load(Ordering::Acquire);
        #[cfg(loom)]
        if root.is_null() {
            return null_mut();
        }
        let r = (addr >> LEAF_SPAN_BITS) & (ROOT_LEN - 1);
        // SAFETY: `root` points to a live root node (the empty one at first) and `r` is in
        // bounds.
        unsafe { (*root)[r].load(Ordering::Acquire) }
    }

    /// The small-object word of the page holding `addr` (see [`small_word`]), or 0 (for an
    /// address at or above 2^[`ADDRESS_BITS`], possibly a folded address's word, which fails
    /// the caller's offset check). Lock-free, three loads. Relaxed: a caller freeing a valid object got it, through
    /// the program's own synchronisation, after the word was written; a caller with an
    /// invalid pointer may read a stale word, which the pointer checks then judge.
    #[inline(always)]
    pub fn small_word_of(&self, addr: usize) -> usize {
        let leaf = self.leaf_of(addr);
        if leaf.is_null() {
            return 0;
        }
        let l = (addr >> PAGE_SHIFT) & (LEAF_LEN - 1);
        // SAFETY: `leaf` points to a live leaf and `l` is in bounds.
        unsafe { (*leaf).small[l].load(Ordering::Relaxed) }
    }

    /// Hardened build: whether `addr` is the start of an object of a small span whose class
    /// index times 16 is `class_bytes`, as its page's small-object word says. Three loads,
    /// two of the class's offset check (`size_class::is_object_offset`), one multiply.
    #[cfg(feature = "hardened")]
    #[inline]
    pub fn is_object_of_class(&self, addr: usize, class_bytes: usize) -> bool {
        let word = self.small_word_of(addr);
        if word_class_bytes(word) != class_bytes {
            return false;
        }
        let offset = addr.wrapping_sub(word_start(word));
        // SAFETY: `class_bytes` is a small-object word's class bits (it equals this
        // word's): a class index below CLASS_COUNT times 16.
        unsafe { crate::size_class::is_object_offset(class_bytes, offset) }
    }

    /// Hardened build: the link of `obj`, a free object of the class whose index times 16
    /// is `class_bytes` on a thread cache's bin or in a batch, decoded; stops the process
    /// unless it is null or the start of an object of a small span of that class (a link an
    /// overflow or a write after free changed: the encoding makes whatever was written
    /// decode to a random address).
    ///
    /// # Safety
    /// `obj` is a free object whose first word is a link.
    #[cfg(feature = "hardened")]
    #[inline(always)]
    pub unsafe fn next_free_checked(&self, obj: *mut u8, class_bytes: usize) -> *mut u8 {
        // SAFETY: per the caller.
        let next = unsafe { crate::span::next_free(obj) };
        if !next.is_null() && !self.is_object_of_class(next as usize, class_bytes) {
            crate::check::fatal_at("free list corrupted", obj as usize);
        }
        next
    }

    /// Writes [`large_word`] into the small-object word of the first page of `s`, a large
    /// span in use: its sizeless free then finds the record in one load. The page heap
    /// writes it when a span becomes a large one in use; the stash and the heap profiler
    /// write it over a listed word, whose free would not reach the record.
    pub fn name_large_record(&self, s: &Span) {
        self.set_small_words(s.start(), Pages(1), large_word(s));
    }

    /// Writes the small-object word of every page in `[start, start + pages)` (covered by
    /// [`PageMap::ensure`]): [`small_word`] when the pages become a small span, 0 before
    /// they stop being one; for a large span's first page alone, [`large_word`] when it
    /// becomes one in use, 0 before it stops being one. Caller holds the span exclusively
    /// (its central list's lock, the page heap lock for a large span, or the span is not
    /// yet published).
    pub fn set_small_words(&self, start: PageId, pages: Pages, word: usize) {
        let root = self.root.load(Ordering::Relaxed);
        debug_assert!(root != empty_root());
        for p in start.0..start.0 + pages.0 {
            let addr = PageId(p).addr();
            // SAFETY: `ensure` covered these pages, so the root and leaf exist.
            unsafe {
                let leaf = (*root)[addr >> LEAF_SPAN_BITS].load(Ordering::Relaxed);
                debug_assert!(!leaf.is_null());
                (*leaf).small[(addr >> PAGE_SHIFT) & (LEAF_LEN - 1)].store(word, Ordering::Relaxed);
            }
        }
    }

    /// Makes sure every page in `[start, start + pages)` has a slot. `false` if a node could
    /// not be mapped or the range is beyond [`ADDRESS_BITS`]. Caller holds the page heap
    /// lock.
    pub fn ensure(&self, start: PageId, pages: Pages, source: &impl PageSource) -> bool {
        if pages.0 == 0 {
            return true;
        }
        let last_addr = (start + pages).addr() - 1;
        if last_addr >> ADDRESS_BITS != 0 {
            return false;
        }
        let mut root = self.root.load(Ordering::Relaxed);
        if root == empty_root() {
            let bytes = core::mem::size_of::<Root>().next_multiple_of(PAGE_SIZE);
            root = match source.map(bytes, PAGE_SIZE) {
                Some(p) => p.as_ptr().cast(),
                None => return false,
            };
            #[cfg(loom)]
            // SAFETY: fresh memory of the node's size from the source, not yet shared.
            unsafe {
                root.write(Root::new())
            };
            self.node_bytes.fetch_add(bytes, Ordering::Relaxed);
            // Release pairs with the Acquire in `lookup`.
            self.root.store(root, Ordering::Release);
        }
        for r in (start.addr() >> LEAF_SPAN_BITS)..=(last_addr >> LEAF_SPAN_BITS) {
            // SAFETY: `root` is live and `r < ROOT_LEN` (checked against ADDRESS_BITS).
            let slot = unsafe { &(*root)[r] };
            if slot.load(Ordering::Relaxed).is_null() {
                let bytes = core::mem::size_of::<Leaf>().next_multiple_of(PAGE_SIZE);
                let Some(leaf) = source.map(bytes, PAGE_SIZE) else {
                    return false;
                };
                #[cfg(loom)]
                // SAFETY: as for the root.
                unsafe {
                    leaf.as_ptr().cast::<Leaf>().write(Leaf::new())
                };
                self.node_bytes.fetch_add(bytes, Ordering::Relaxed);
                // Release pairs with the Acquire in `lookup`: the leaf reads as null.
                slot.store(leaf.as_ptr().cast(), Ordering::Release);
            }
        }
        true
    }

    /// Bytes mapped for the map's nodes (address space; only touched pages are resident).
    pub fn node_bytes(&self) -> usize {
        self.node_bytes.load(Ordering::Relaxed)
    }

    /// Records `span` for `page`, which [`PageMap::ensure`] has covered. Caller holds the page
    /// heap lock.
    #[inline]
    pub fn set(&self, page: PageId, span: *mut Span) {
        let addr = page.addr();
        let root = self.root.load(Ordering::Relaxed);
        debug_assert!(root != empty_root());
        // SAFETY: `ensure` covered this page, so the root and leaf exist.
        unsafe {
            let leaf = (*root)[addr >> LEAF_SPAN_BITS].load(Ordering::Relaxed);
            debug_assert!(!leaf.is_null());
            // Release pairs with the Acquire in `lookup`: the record is published whole.
            (*leaf).spans[(addr >> PAGE_SHIFT) & (LEAF_LEN - 1)].store(span, Ordering::Release);
        }
    }

    /// Records `span` for every page in `[start, start + pages)`.
    pub fn set_range(&self, start: PageId, pages: Pages, span: *mut Span) {
        for p in start.0..start.0 + pages.0 {
            self.set(PageId(p), span);
        }
    }

    /// Records `span` for its first and last page (enough for coalescing and for finding a
    /// large object from its start).
    pub fn set_ends(&self, start: PageId, pages: Pages, span: *mut Span) {
        self.set(start, span);
        if pages.0 > 1 {
            self.set(PageId(start.0 + pages.0 - 1), span);
        }
    }
}

impl Default for PageMap {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::sys::FakePages;

    #[test]
    fn lookup_finds_what_was_set_and_nothing_else() {
        let source = FakePages::new();
        let map = PageMap::new();
        assert!(map.lookup(0x1234_5678).is_null());
        let base = PageId(3 << (LEAF_SPAN_BITS - PAGE_SHIFT)); // 3 GiB
        // A range straddling a GiB boundary.
        let start = PageId(base.0 - 2);
        assert!(map.ensure(start, Pages(4), &source));
        let fake = 0x1000 as *mut Span;
        map.set_range(start, Pages(4), fake);
        for p in 0..4 {
            assert_eq!(map.lookup(PageId(start.0 + p).addr() + 17), fake);
        }
        assert!(map.lookup(PageId(start.0 + 4).addr()).is_null());
        assert!(map.lookup(1 << ADDRESS_BITS).is_null());
        assert!(map.lookup(usize::MAX).is_null());
        assert!(!map.ensure(PageId::containing(1 << ADDRESS_BITS), Pages(1), &source));
    }

    #[test]
    fn a_large_word_names_its_record_and_no_other_word_names_one() {
        let record = Box::new(0u128);
        let span = (&*record as *const u128).cast::<Span>().cast_mut();
        let word = large_word(span);
        assert_eq!(word_class(word), 0, "not a small span's page");
        assert_eq!(word_large_span(word), span);
        assert!(word_large_span(0).is_null());
        let small = small_word(0x7f00_0000_2000, 5);
        assert!(word_large_span(small).is_null());
        assert_eq!(word_class(small), 5);
        assert_eq!(word_listed_large(word), None);
        assert_eq!(word_listed_large(small), None);
        assert_eq!(word_listed_large(0), None);
    }

    #[test]
    fn a_listed_word_holds_its_objects_start_and_pages_and_names_no_record() {
        for (start, pages) in [(0x7f00_0000_2000, 4), (0xffff_ffff_e000, 32), (0x2000, 13)] {
            let word = listed_large_word(start, Pages(pages));
            assert_eq!(word_listed_large(word), Some((start, Pages(pages))));
            assert_eq!(word_class(word), 0, "not a small span's page");
            assert!(word_large_span(word).is_null());
        }
    }

    #[test]
    fn failing_source_is_reported() {
        let source = FakePages::new();
        source.fail_after(0);
        let map = PageMap::new();
        assert!(!map.ensure(PageId(1000), Pages(1), &source));
        source.heal();
        assert!(map.ensure(PageId(1000), Pages(1), &source));
    }
}
