//! Statistics: where every mapped byte is. See `lib.rs` for an overview.
//!
//! A snapshot is computed by walking the tiers under their locks (each central list, then
//! the page heap), so the fast paths keep no shared counter. The caches the caller passes
//! (its own, the orphan cache) are looked into exactly; free objects in other live threads'
//! caches cannot be seen and are counted in [`Stats::in_use`] until those threads call
//! [`crate::flush_thread_cache`] or exit (exited threads are flushed already).

use crate::heap::Heap;
use crate::size_class::{CLASS_COUNT, SizeClass};
use crate::sys::PageSource;
use crate::thread_cache::ThreadCache;

/// One size class.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct ClassStats {
    /// Bytes per object.
    pub object_size: usize,
    /// Spans of the class, wherever they are.
    pub spans: usize,
    /// Objects handed out (in spans this snapshot can see into).
    pub objects_in_use: usize,
    /// Free objects: in their spans, in the central list's transfer slots, and in the
    /// caches this snapshot looks into.
    pub free_objects: usize,
}

/// A snapshot of the allocator. The byte fields other than `mapped` and `metadata` add up
/// to `mapped`: `in_use + thread_cache + central + span_overhead + page_heap_free + released
/// == mapped`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stats {
    /// Bytes in objects the program holds, counted at their class size (small) or whole
    /// pages (large): what a request was rounded up to, not what it asked for.
    pub in_use: usize,
    /// Of which in large objects.
    pub large_in_use: usize,
    /// Free object bytes in the calling thread's cache and the orphan cache, and their
    /// stashed large spans.
    pub thread_cache: usize,
    /// Free object bytes in the central lists: in spans, and in the transfer slots.
    pub central: usize,
    /// Bytes of small spans past their last whole object.
    pub span_overhead: usize,
    /// Free page-heap bytes that may be resident (not yet given back to the OS).
    pub page_heap_free: usize,
    /// Free page-heap bytes given back to the OS (`MADV_DONTNEED`).
    pub released: usize,
    /// Bytes mapped for spans: the sum of the fields above.
    pub mapped: usize,
    /// Bytes mapped for metadata: span records and page-map nodes (address space; page-map
    /// leaves are touched only where used).
    pub metadata: usize,
    /// Bytes given back to the OS over the process's life.
    pub released_total: usize,
    /// By size class (index 0, the large marker, is unused).
    pub classes: [ClassStats; CLASS_COUNT],
}

/// Takes a snapshot of `heap`, looking into the caches in `own` (the calling thread's, and
/// any other the caller holds exclusively, such as the orphan cache under its lock).
pub fn snapshot<S: PageSource>(heap: &Heap<S>, own: &[&ThreadCache]) -> Stats {
    let mut st = Stats {
        in_use: 0,
        large_in_use: 0,
        thread_cache: 0,
        central: 0,
        span_overhead: 0,
        page_heap_free: 0,
        released: 0,
        mapped: 0,
        metadata: 0,
        released_total: 0,
        classes: [ClassStats::default(); CLASS_COUNT],
    };
    let mut cached = [0usize; CLASS_COUNT];
    let mut stashed = 0;
    for cache in own {
        stashed += cache.stashed_bytes();
        for (c, n) in cache.cached_objects().into_iter().enumerate() {
            cached[c] += n;
        }
    }
    for class in SizeClass::all() {
        let c = heap.central_stats(class);
        let size = class.size();
        let span_bytes = class.pages().bytes();
        let cap = class.objects();
        let own = cached[class.index()];
        // Objects out of the spans are held by the program, by caches, or in the transfer
        // slots. (A cache's count is a moment behind its list only while its thread works.)
        let in_use = c.out_of_spans.saturating_sub(c.transfer + own);
        st.classes[class.index()] = ClassStats {
            object_size: size,
            spans: c.spans,
            objects_in_use: in_use,
            free_objects: c.in_spans_free + c.transfer + own,
        };
        st.in_use += in_use * size;
        st.thread_cache += own * size;
        st.central += (c.in_spans_free + c.transfer) * size;
        st.span_overhead += c.spans * (span_bytes - cap * size);
    }
    let ph = heap.page_heap_stats();
    // The page heap counts stashed large spans (freed into a thread cache) as in use.
    st.large_in_use = ph.large_in_use - stashed;
    st.in_use += ph.large_in_use - stashed;
    st.thread_cache += stashed;
    st.page_heap_free = ph.free_resident;
    st.released = ph.free - ph.free_resident;
    st.mapped = ph.mapped;
    st.metadata = ph.metadata + heap.page_map().node_bytes();
    st.released_total = ph.released_total;
    st
}

impl Stats {
    /// The sum of the parts, which equals `mapped` on a quiescent process.
    pub fn parts(&self) -> usize {
        self.in_use
            + self.thread_cache
            + self.central
            + self.span_overhead
            + self.page_heap_free
            + self.released
    }
}
