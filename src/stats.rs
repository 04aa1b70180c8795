//! Statistics: where every mapped byte is. See `lib.rs` for an overview.
//!
//! A snapshot reads each tier's counters under its lock, one lock at a time and a few words
//! under each (each central list, then the page heap): no lock an allocation needs is held
//! for more than a bounded step, whatever the heap holds. The fast paths keep no shared
//! counter. The caches the caller passes (its own, the orphan cache) are looked into
//! exactly, and so is every thread's reserve (what a cache keeps past its bins, up to all
//! but 1 MiB of it; each read under the reserve's own lock, skipped if that is busy at the
//! instant); free objects in the bins of other live threads' caches cannot be seen and are
//! counted in [`Stats::in_use`] until those threads call [`crate::flush_thread_cache`] or
//! exit (exited threads are flushed already).
//!
//! Allocation and free counts are kept per thread cache, by the fast paths (one increment
//! each, no atomic), and added to the heap's totals on the cache's slow paths once a few
//! thousand wait, and at its flush; a snapshot adds the caches it looks into.

use core::fmt::{self, Write as _};

use crate::heap::{Counts, Heap};
use crate::size_class::{CLASS_COUNT, SizeClass};
use crate::sys::PageSource;
use crate::thread_cache::ThreadCache;
use crate::thread_cache::reserve::Reserves;

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
    /// Free object bytes in the calling thread's cache, the orphan cache and every thread's
    /// reserve (what a cache keeps past its bins), and the reserves' stashed large spans and
    /// the calling thread's listed large objects.
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
    /// The most bytes the heap has had in spans in use at once: small-object spans (with
    /// the free objects in them) and large objects, stashed ones included. The high-water
    /// mark of `in_use + thread_cache + central + span_overhead`, at the grain of spans.
    pub peak: usize,
    /// Allocations served (a `realloc` that moves its object counts as an allocation and a
    /// free; one in place as neither). See the module overview for which threads' counts
    /// a snapshot sees.
    pub allocations: u64,
    /// Frees served.
    pub frees: u64,
    /// By size class (index 0, the large marker, is unused).
    pub classes: [ClassStats; CLASS_COUNT],
}

/// What a snapshot needs of one thread cache, read from it in one bounded step (so that a
/// cache behind a lock, the orphan cache, is held only that long).
#[derive(Copy, Clone)]
pub(crate) struct CacheView {
    cached: [usize; CLASS_COUNT],
    stashed: usize,
    unfolded: Counts,
}

impl CacheView {
    /// Reads `cache`'s bins and counts (its reserve is read with every other thread's, by
    /// [`CacheView::of_reserves`]).
    pub(crate) fn of(cache: &ThreadCache) -> CacheView {
        CacheView {
            cached: cache.cached_objects(),
            stashed: cache.listed_bytes(),
            unfolded: cache.unfolded_counts(),
        }
    }

    /// Reads every thread's reserve in `reserves`, one at a time.
    pub(crate) fn of_reserves(reserves: &Reserves) -> CacheView {
        let (cached, stashed) = reserves.held_counts();
        CacheView {
            cached,
            stashed,
            unfolded: Counts {
                allocations: 0,
                frees: 0,
            },
        }
    }
}

/// Takes a snapshot of `heap`, adding the caches seen in `own` (the calling thread's, and
/// any other the caller could read exclusively, such as the orphan cache under its lock).
pub(crate) fn snapshot<S: PageSource>(heap: &Heap<S>, own: &[CacheView]) -> Stats {
    let mut st = Stats::default();
    let mut cached = [0usize; CLASS_COUNT];
    let mut stashed = 0;
    let mut counts = heap.folded_counts();
    for view in own {
        stashed += view.stashed;
        counts = counts.plus(view.unfolded);
        for (c, n) in view.cached.into_iter().enumerate() {
            cached[c] += n;
        }
    }
    st.allocations = counts.allocations;
    st.frees = counts.frees;
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
    st.peak = ph.peak_in_use;
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

impl Default for Stats {
    /// All zeros: the snapshot of a heap that has mapped nothing.
    fn default() -> Stats {
        Stats {
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
            peak: 0,
            allocations: 0,
            frees: 0,
            classes: [ClassStats::default(); CLASS_COUNT],
        }
    }
}

/// A readable table in the manner of mimalloc's `mi_stats_print`: where the mapped bytes
/// are, in binary units, then one row per size class that has spans:
///
/// ```text
/// spanalloc statistics
///   in use                 125.4 KiB   objects the program holds, at class size (large: 0 B)
///   thread cache                 0 B   free in this thread's cache
///   central                 23.4 KiB   free in central lists
///   span overhead            3.2 KiB   small spans past their last object
///   page heap free               0 B   free pages, resident
///   released                31.5 MiB   free pages not resident (given back over the run: 0 B)
///   mapped                  32.0 MiB   for spans: the sum of the above
///   metadata                 3.1 MiB   span records and page-map nodes
///   peak                    32.0 MiB   most in spans in use at once
///   allocations                 1045   frees 1004
///   class      size    spans   in use     free
///       3        32        2        1      255
///      43      3200        8       40        0
/// ```
///
/// Formatting allocates nothing itself, but the writer it formats into may (a `String`):
/// do not print statistics from inside an allocation.
impl fmt::Display for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Name, bytes, meaning, and a note in brackets.
        type Row<'a> = (&'a str, usize, &'a str, Option<(&'a str, usize)>);
        let rows: [Row<'_>; 9] = [
            (
                "in use",
                self.in_use,
                "objects the program holds, at class size",
                Some(("large", self.large_in_use)),
            ),
            (
                "thread cache",
                self.thread_cache,
                "free in this thread's cache",
                None,
            ),
            ("central", self.central, "free in central lists", None),
            (
                "span overhead",
                self.span_overhead,
                "small spans past their last object",
                None,
            ),
            (
                "page heap free",
                self.page_heap_free,
                "free pages, resident",
                None,
            ),
            (
                "released",
                self.released,
                "free pages not resident",
                Some(("given back over the run", self.released_total)),
            ),
            (
                "mapped",
                self.mapped,
                "for spans: the sum of the above",
                None,
            ),
            (
                "metadata",
                self.metadata,
                "span records and page-map nodes",
                None,
            ),
            ("peak", self.peak, "most in spans in use at once", None),
        ];
        writeln!(f, "spanalloc statistics")?;
        for (name, bytes, meaning, note) in rows {
            write!(f, "  {name:<20}{:>12}   {meaning}", Bytes(bytes))?;
            match note {
                Some((label, bytes)) => writeln!(f, " ({label}: {})", Bytes(bytes))?,
                None => writeln!(f)?,
            }
        }
        writeln!(
            f,
            "  {:<20}{:>12}   frees {}",
            "allocations", self.allocations, self.frees
        )?;
        writeln!(
            f,
            "  {:>5} {:>9} {:>8} {:>8} {:>8}",
            "class", "size", "spans", "in use", "free"
        )?;
        for (index, c) in self.classes.iter().enumerate().skip(1) {
            if c.spans == 0 {
                continue;
            }
            writeln!(
                f,
                "  {index:>5} {:>9} {:>8} {:>8} {:>8}",
                c.object_size, c.spans, c.objects_in_use, c.free_objects
            )?;
        }
        Ok(())
    }
}

impl Stats {
    /// The snapshot as one JSON object: every field of [`Stats`] under its own name (byte
    /// counts as plain integers), and `classes`, an array with one object per size class
    /// (class 1 first) holding `class` (its index) and the fields of [`ClassStats`].
    ///
    /// Allocates the string: do not call it from inside an allocation.
    pub fn to_json(&self) -> String {
        let mut out = String::with_capacity(256 + 128 * CLASS_COUNT);
        // Writing into a `String` cannot fail.
        let _ = self.write_json(&mut out);
        out
    }

    fn write_json(&self, out: &mut String) -> fmt::Result {
        let fields: [(&str, u64); 13] = [
            ("in_use", self.in_use as u64),
            ("large_in_use", self.large_in_use as u64),
            ("thread_cache", self.thread_cache as u64),
            ("central", self.central as u64),
            ("span_overhead", self.span_overhead as u64),
            ("page_heap_free", self.page_heap_free as u64),
            ("released", self.released as u64),
            ("mapped", self.mapped as u64),
            ("metadata", self.metadata as u64),
            ("released_total", self.released_total as u64),
            ("peak", self.peak as u64),
            ("allocations", self.allocations),
            ("frees", self.frees),
        ];
        out.push('{');
        for (name, value) in fields {
            write!(out, "\"{name}\":{value},")?;
        }
        out.push_str("\"classes\":[");
        for (index, c) in self.classes.iter().enumerate().skip(1) {
            if index > 1 {
                out.push(',');
            }
            write!(
                out,
                "{{\"class\":{index},\"object_size\":{},\"spans\":{},\"objects_in_use\":{},\
                 \"free_objects\":{}}}",
                c.object_size, c.spans, c.objects_in_use, c.free_objects
            )?;
        }
        out.push_str("]}");
        Ok(())
    }
}

/// A byte count shown in binary units: `512 B`, `1.5 KiB`, `32.0 MiB` (one decimal,
/// rounded to nearest). Honours the formatter's width and alignment.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Bytes(pub usize);

impl fmt::Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
        let mut buf = StackStr::<24>::new();
        let n = self.0 as u128;
        if n < 1024 {
            write!(buf, "{n} B")?;
        } else {
            let mut unit = 0;
            // Tenths of a unit, rounded to nearest; a value that rounds up to 1024.0 moves
            // to the next unit.
            let mut tenths = (n * 10 + 512) / 1024;
            while tenths >= 10240 && unit + 1 < UNITS.len() {
                unit += 1;
                tenths = (n * 10 + (1 << (10 * (unit + 1))) / 2) >> (10 * (unit + 1));
            }
            write!(buf, "{}.{} {}", tenths / 10, tenths % 10, UNITS[unit])?;
        }
        f.pad(buf.as_str())
    }
}

/// A short string built on the stack, for padding formatted pieces without a `String`.
struct StackStr<const N: usize> {
    buf: [u8; N],
    len: usize,
}

impl<const N: usize> StackStr<N> {
    fn new() -> Self {
        StackStr {
            buf: [0; N],
            len: 0,
        }
    }

    fn as_str(&self) -> &str {
        // Only whole `&str`s are ever copied in (`write_str`), so the bytes are UTF-8.
        core::str::from_utf8(&self.buf[..self.len]).unwrap_or("")
    }
}

impl<const N: usize> fmt::Write for StackStr<N> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let end = self.len + s.len();
        if end > N {
            return Err(fmt::Error);
        }
        self.buf[self.len..end].copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn human(n: usize) -> String {
        Bytes(n).to_string()
    }

    #[test]
    fn human_sizes() {
        assert_eq!(human(0), "0 B");
        assert_eq!(human(1023), "1023 B");
        assert_eq!(human(1024), "1.0 KiB");
        assert_eq!(human(1536), "1.5 KiB");
        assert_eq!(human(8192), "8.0 KiB");
        assert_eq!(
            human(1024 * 1024 - 1),
            "1.0 MiB",
            "1023.99 KiB rounds to the next unit"
        );
        assert_eq!(human(1024 * 1024 - 60), "1023.9 KiB");
        assert_eq!(human(32 << 20), "32.0 MiB");
        assert_eq!(human((5 << 30) + (1 << 29)), "5.5 GiB");
        assert_eq!(human(usize::MAX), "16.0 EiB");
        assert_eq!(format!("[{:>9}]", Bytes(1536)), "[  1.5 KiB]");
        assert_eq!(format!("[{:<9}]", Bytes(5)), "[5 B      ]");
    }

    #[test]
    fn display_lists_only_classes_with_spans() {
        let mut st = Stats {
            in_use: 3 * 1024 * 1024,
            mapped: 32 << 20,
            ..Stats::default()
        };
        st.classes[3] = ClassStats {
            object_size: 24,
            spans: 2,
            objects_in_use: 500,
            free_objects: 182,
        };
        st.classes[5].object_size = 40;
        let text = st.to_string();
        assert!(text.contains("3.0 MiB"), "{text}");
        assert!(text.contains("32.0 MiB"), "{text}");
        let rows: Vec<Vec<&str>> = text
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .filter(|w| w.len() == 5 && w.iter().all(|x| x.parse::<u64>().is_ok()))
            .collect();
        assert_eq!(rows, [["3", "24", "2", "500", "182"]], "{text}");
    }

    #[test]
    fn json_of_the_default_is_complete() {
        let json = Stats::default().to_json();
        assert!(
            json.starts_with("{\"in_use\":0,\"large_in_use\":0,"),
            "{json}"
        );
        assert!(
            json.contains(
                ",\"released_total\":0,\"peak\":0,\"allocations\":0,\"frees\":0,\
                 \"classes\":[{\"class\":1,"
            ),
            "{json}"
        );
        assert_eq!(json.matches("\"class\":").count(), CLASS_COUNT - 1);
        assert!(json.ends_with("\"free_objects\":0}]}"), "{json}");
    }
}
