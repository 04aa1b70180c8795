//! An in-memory page source for tests: hands out memory from the system allocator, counts
//! what it gave and got back, fails on demand and can hold to an address-space limit (as
//! `RLIMIT_AS` does). See `lib.rs` for an overview.

use super::PageSource;
use core::ptr::NonNull;
// Counters and switches of a test fixture, not a protocol: core's atomics even under loom
// (whose models use a page source of their own), and `sys` sits below `sync`.
use core::sync::atomic::{AtomicUsize, Ordering};

/// A page source for tests, backed by `std::alloc::System`.
///
/// It frees nothing it handed out while it lives (`unmap` only counts the bytes and poisons
/// them, so a stale pointer into an unmapped range still reads), and everything when it is
/// dropped, with the heap that owns it: a test that builds many heaps holds one heap's
/// memory at a time.
#[derive(Debug, Default)]
pub struct FakePages {
    /// Bytes handed out by `map`.
    pub mapped: AtomicUsize,
    /// Bytes passed to `release`.
    pub released: AtomicUsize,
    /// Bytes given back with `unmap`.
    pub unmapped: AtomicUsize,
    /// Number of `map` calls that succeeded.
    pub maps: AtomicUsize,
    /// `map` fails when `mapped - unmapped` would exceed this. 0 (the default): no limit.
    limit: AtomicUsize,
    /// The OS page size it reports; 0 (the default): 4096.
    os_page: AtomicUsize,
    /// The next this-many `map` calls succeed; after that they fail. `usize::MAX`: never fail.
    fail_after: AtomicUsize,
    /// Fail every call whose size is at least this many bytes.
    fail_at_least: AtomicUsize,
    /// Hardened build: the OS pages made inaccessible, by address. Nothing is protected for
    /// real; instead the fake checks the page heap's use of `protect` (no page protected
    /// twice or made accessible when it was not protected, none released while protected).
    #[cfg(feature = "hardened")]
    protected: std::sync::Mutex<std::collections::BTreeSet<usize>>,
    /// Hardened build: whether it says its guards cost no kernel mapping (as Linux's guard
    /// markers): off by default.
    #[cfg(feature = "hardened")]
    guard_markers: core::sync::atomic::AtomicBool,
    /// Every allocation `map` made (address and layout), freed on drop.
    allocations: std::sync::Mutex<Vec<(usize, std::alloc::Layout)>>,
}

impl Drop for FakePages {
    fn drop(&mut self) {
        let allocations = self
            .allocations
            .get_mut()
            .unwrap_or_else(|e| e.into_inner());
        for &(addr, layout) in allocations.iter() {
            // SAFETY: allocated by `map` with this layout and not freed before; the source
            // is being dropped, so the heap that used it is gone.
            unsafe {
                std::alloc::GlobalAlloc::dealloc(&std::alloc::System, addr as *mut u8, layout)
            };
        }
    }
}

impl FakePages {
    /// A source that never fails.
    pub fn new() -> FakePages {
        let pages = FakePages::default();
        pages.fail_after.store(usize::MAX, Ordering::Relaxed);
        pages.fail_at_least.store(usize::MAX, Ordering::Relaxed);
        pages
    }

    /// After `n` more successful maps, every map fails (until [`FakePages::heal`]).
    pub fn fail_after(&self, n: usize) {
        self.fail_after.store(n, Ordering::Relaxed);
    }

    /// Every map of `bytes` or more fails.
    pub fn fail_at_least(&self, bytes: usize) {
        self.fail_at_least.store(bytes, Ordering::Relaxed);
    }

    /// Every map that would take the bytes mapped and not unmapped past `bytes` fails, as
    /// under `RLIMIT_AS` (until [`FakePages::heal`]).
    pub fn limit_address_space(&self, bytes: usize) {
        self.limit.store(bytes, Ordering::Relaxed);
    }

    /// Bytes mapped and not unmapped: the address space the source holds.
    pub fn address_space(&self) -> usize {
        self.mapped.load(Ordering::Relaxed) - self.unmapped.load(Ordering::Relaxed)
    }

    /// Reports `bytes` (a power of two, at least 4096) as the OS page size, so that tests
    /// can run the page heap as on a kernel with 16 or 64 KiB pages. `release` and `unmap`
    /// then check that their ranges are whole OS pages.
    pub fn set_os_page_size(&self, bytes: usize) {
        assert!(bytes.is_power_of_two() && bytes >= 4096);
        self.os_page.store(bytes, Ordering::Relaxed);
    }

    /// Stops failing.
    pub fn heal(&self) {
        self.fail_after.store(usize::MAX, Ordering::Relaxed);
        self.fail_at_least.store(usize::MAX, Ordering::Relaxed);
        self.limit.store(0, Ordering::Relaxed);
    }

    /// The byte `unmap` fills given-back memory with, so that a test that reads memory the
    /// heap gave back sees it.
    pub const POISON: u8 = 0xdd;
}

impl FakePages {
    /// Panics unless `[ptr, ptr + bytes)` is whole OS pages (the contract of `release` and
    /// `unmap`; a test source may panic, the real one never checks).
    fn assert_os_pages(&self, ptr: NonNull<u8>, bytes: usize) {
        let os_page = self.os_page_size();
        assert!(
            (ptr.as_ptr() as usize) % os_page == 0 && bytes % os_page == 0 && bytes > 0,
            "FakePages: a range of whole OS pages"
        );
    }

    /// Hardened build: makes [`PageSource::guards_cost_mappings`] say `!on`.
    #[cfg(feature = "hardened")]
    pub fn set_guard_markers(&self, on: bool) {
        self.guard_markers.store(on, Ordering::Relaxed);
    }

    /// Hardened build: the addresses of the OS pages made inaccessible, in order.
    #[cfg(feature = "hardened")]
    pub fn protected_pages(&self) -> Vec<usize> {
        self.protected.lock().unwrap().iter().copied().collect()
    }
}

// SAFETY: every `map` is a fresh zeroed allocation from the system allocator, freed only when
// the source is dropped, so mappings are distinct and live as long as the source (an
// unmapped range stays readable).
unsafe impl PageSource for FakePages {
    fn map(&self, bytes: usize, align: usize) -> Option<NonNull<u8>> {
        if bytes >= self.fail_at_least.load(Ordering::Relaxed) {
            return None;
        }
        let limit = self.limit.load(Ordering::Relaxed);
        if limit != 0 && self.address_space().saturating_add(bytes) > limit {
            return None;
        }
        let left = self.fail_after.load(Ordering::Relaxed);
        if left == 0 {
            return None;
        }
        if left != usize::MAX {
            self.fail_after.store(left - 1, Ordering::Relaxed);
        }
        let align = align.max(self.os_page_size());
        let layout = std::alloc::Layout::from_size_align(bytes, align).ok()?;
        // SAFETY: `bytes` is non-zero (a multiple of the page size, never zero here).
        let ptr = NonNull::new(unsafe {
            std::alloc::GlobalAlloc::alloc_zeroed(&std::alloc::System, layout)
        })?;
        self.mapped.fetch_add(bytes, Ordering::Relaxed);
        self.maps.fetch_add(1, Ordering::Relaxed);
        self.allocations
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((ptr.as_ptr() as usize, layout));
        Some(ptr)
    }

    unsafe fn release(&self, ptr: NonNull<u8>, bytes: usize) {
        self.assert_os_pages(ptr, bytes);
        #[cfg(feature = "hardened")]
        {
            let start = ptr.as_ptr() as usize;
            let protected = self.protected.lock().unwrap();
            assert!(
                protected.range(start..start + bytes).next().is_none(),
                "fake pages: an inaccessible page released"
            );
        }
        // Released memory reads as zero, as after MADV_DONTNEED.
        // SAFETY: the caller guarantees the range is ours and holds nothing live.
        unsafe { core::ptr::write_bytes(ptr.as_ptr(), 0, bytes) };
        self.released.fetch_add(bytes, Ordering::Relaxed);
    }

    unsafe fn unmap(&self, ptr: NonNull<u8>, bytes: usize) -> bool {
        self.assert_os_pages(ptr, bytes);
        // An unmapped page is no longer protected (`munmap` takes the protection with it).
        #[cfg(feature = "hardened")]
        {
            let start = ptr.as_ptr() as usize;
            let mut protected = self.protected.lock().unwrap();
            let gone: Vec<usize> = protected.range(start..start + bytes).copied().collect();
            for page in gone {
                protected.remove(&page);
            }
        }
        // Not freed (a range may be part of one system allocation, or span several), only
        // poisoned and counted.
        // SAFETY: the caller guarantees the range is ours and holds nothing live.
        unsafe { core::ptr::write_bytes(ptr.as_ptr(), Self::POISON, bytes) };
        self.unmapped.fetch_add(bytes, Ordering::Relaxed);
        true
    }

    fn os_page_size(&self) -> usize {
        match self.os_page.load(Ordering::Relaxed) {
            0 => 4096,
            n => n,
        }
    }

    #[cfg(feature = "hardened")]
    unsafe fn protect(&self, ptr: NonNull<u8>, bytes: usize, accessible: bool) -> bool {
        let start = ptr.as_ptr() as usize;
        assert!(
            start % 4096 == 0 && bytes % 4096 == 0,
            "fake pages: protect of part of a page"
        );
        let mut protected = self.protected.lock().unwrap();
        for page in (start..start + bytes).step_by(4096) {
            if accessible {
                assert!(
                    protected.remove(&page),
                    "fake pages: unprotect of an accessible page"
                );
            } else {
                assert!(protected.insert(page), "fake pages: page protected twice");
            }
        }
        true
    }

    #[cfg(feature = "hardened")]
    fn guards_cost_mappings(&self) -> bool {
        !self.guard_markers.load(Ordering::Relaxed)
    }
}
