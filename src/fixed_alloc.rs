//! The metadata allocator: fixed-size records (spans, page-map leaves' owners, thread caches)
//! carved from memory of its own, never from the heap it describes (Go's `fixalloc`). See
//! `lib.rs` for an overview.
//!
//! Not thread-safe by itself: each `FixedAlloc` lives inside the lock that guards the records
//! it makes (span records: the page heap lock).

use crate::pages::PAGE_SIZE;
use crate::sys::PageSource;
use core::marker::PhantomData;
use core::ptr::NonNull;

/// Bytes mapped at a time for records.
const CHUNK_BYTES: usize = 16 * PAGE_SIZE;

/// A free record, threaded through the record's own memory. The link is written and read
/// atomically: a reader that reached a record through a stale pointer (a span record found
/// in the page map by an invalid `free`) loads the record's first word atomically while the
/// record is given back, and an atomic load racing a plain store would be a data race.
#[cfg(not(loom))]
struct FreeRecord {
    next: core::sync::atomic::AtomicPtr<FreeRecord>,
}
#[cfg(loom)]
struct FreeRecord {
    next: *mut FreeRecord,
}

/// An allocator of `T`-sized, `T`-aligned records.
pub struct FixedAlloc<T> {
    /// Records given back, most recent first.
    free: *mut FreeRecord,
    /// The unused tail of the newest chunk.
    chunk_next: usize,
    chunk_end: usize,
    /// Records handed out and not given back.
    in_use: usize,
    /// Bytes mapped for records.
    mapped: usize,
    _records: PhantomData<T>,
}

// SAFETY: the raw pointers point into memory this allocator owns; it moves between threads
// inside the lock that guards it.
unsafe impl<T> Send for FixedAlloc<T> {}

impl<T> FixedAlloc<T> {
    const RECORD: usize = {
        let size = core::mem::size_of::<T>();
        let align = core::mem::align_of::<T>();
        let min = core::mem::size_of::<FreeRecord>();
        let size = if size < min { min } else { size };
        size.div_ceil(align) * align
    };

    /// An allocator that has mapped nothing yet.
    pub const fn new() -> Self {
        FixedAlloc {
            free: core::ptr::null_mut(),
            chunk_next: 0,
            chunk_end: 0,
            in_use: 0,
            mapped: 0,
            _records: PhantomData,
        }
    }

    /// Memory for one record: zero-filled if it is new, whatever the last user left if it is
    /// reused. `None` when the source cannot map more.
    pub fn alloc(&mut self, source: &impl PageSource) -> Option<NonNull<T>> {
        let record = if !self.free.is_null() {
            let record = self.free;
            // SAFETY: records on the free list were handed out by us and given back; the
            // first word holds the link.
            #[cfg(not(loom))]
            // SAFETY: as above.
            let next = unsafe { (*record).next.load(core::sync::atomic::Ordering::Relaxed) };
            #[cfg(loom)]
            // SAFETY: as above.
            let next = unsafe { (*record).next };
            self.free = next;
            record.cast::<u8>()
        } else {
            if self.chunk_end - self.chunk_next < Self::RECORD {
                let chunk = source.map(CHUNK_BYTES, PAGE_SIZE)?;
                self.mapped += CHUNK_BYTES;
                self.chunk_next = chunk.as_ptr() as usize;
                self.chunk_end = self.chunk_next + CHUNK_BYTES;
            }
            let align = core::mem::align_of::<T>();
            let at = (self.chunk_next + align - 1) & !(align - 1);
            self.chunk_next = at + Self::RECORD;
            at as *mut u8
        };
        self.in_use += 1;
        NonNull::new(record.cast())
    }

    /// Gives a record back.
    ///
    /// # Safety
    /// `record` came from this allocator's `alloc` and is not used afterwards.
    pub unsafe fn free(&mut self, record: NonNull<T>) {
        let r = record.as_ptr().cast::<FreeRecord>();
        // SAFETY: the record is ours, at least as big and aligned as a FreeRecord, and dead;
        // any bit pattern of its first word is a valid `AtomicPtr`.
        #[cfg(not(loom))]
        unsafe {
            (*r).next
                .store(self.free, core::sync::atomic::Ordering::Relaxed)
        };
        // SAFETY: as above.
        #[cfg(loom)]
        unsafe {
            r.write(FreeRecord { next: self.free })
        };
        self.free = r;
        self.in_use -= 1;
    }

    /// Records handed out and not given back.
    pub fn in_use(&self) -> usize {
        self.in_use
    }

    /// Bytes mapped for records so far.
    pub fn mapped_bytes(&self) -> usize {
        self.mapped
    }
}

impl<T> Default for FixedAlloc<T> {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::FakePages;

    #[test]
    fn records_are_distinct_aligned_and_reused() {
        #[repr(align(64))]
        struct Rec(#[allow(dead_code)] [u8; 100]);
        let source = FakePages::new();
        let mut fa = FixedAlloc::<Rec>::new();
        let mut got: Vec<usize> = (0..1000)
            .map(|_| fa.alloc(&source).unwrap().as_ptr() as usize)
            .collect();
        assert!(got.iter().all(|&a| a % 64 == 0));
        let mut sorted = got.clone();
        sorted.sort();
        assert!(sorted.windows(2).all(|w| w[1] - w[0] >= 128));
        assert_eq!(fa.in_use(), 1000);
        let last = got.pop().unwrap();
        // SAFETY: `last` came from `fa` and is not used again.
        unsafe { fa.free(NonNull::new(last as *mut Rec).unwrap()) };
        assert_eq!(fa.alloc(&source).unwrap().as_ptr() as usize, last);
        assert_eq!(
            fa.mapped_bytes(),
            source.mapped.load(core::sync::atomic::Ordering::Relaxed)
        );
    }

    #[test]
    fn source_failure_gives_none() {
        let source = FakePages::new();
        source.fail_after(0);
        let mut fa = FixedAlloc::<u64>::new();
        assert!(fa.alloc(&source).is_none());
        assert_eq!(fa.in_use(), 0);
        source.heal();
        assert!(fa.alloc(&source).is_some());
    }
}
