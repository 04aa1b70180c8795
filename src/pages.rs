//! Pages, the allocator's unit of memory, and the types that keep page counts and byte
//! counts apart. See `lib.rs` for an overview.
//!
//! "Page" always means spanalloc's page of [`PAGE_SIZE`] bytes. The kernel's page is an
//! "OS page"; its size is read at run time ([`crate::sys::os_page_size`]) and may be 4, 16
//! or 64 KiB.

use core::ops::{Add, Sub};

/// log2 of [`PAGE_SIZE`].
pub const PAGE_SHIFT: u32 = 13;
/// Bytes in one page (8 KiB, as in TCMalloc and Go).
pub const PAGE_SIZE: usize = 1 << PAGE_SHIFT;

/// A page number: an address divided by [`PAGE_SIZE`].
#[derive(Copy, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default)]
pub struct PageId(pub usize);

/// A number of pages.
#[derive(Copy, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default)]
pub struct Pages(pub usize);

impl PageId {
    /// The page that holds `addr`.
    #[inline(always)]
    pub fn containing(addr: usize) -> PageId {
        PageId(addr >> PAGE_SHIFT)
    }

    /// The first byte of this page.
    #[inline(always)]
    pub fn addr(self) -> usize {
        self.0 << PAGE_SHIFT
    }

    /// The first byte of this page, as a pointer.
    #[inline(always)]
    pub fn ptr(self) -> *mut u8 {
        self.addr() as *mut u8
    }
}

impl Pages {
    /// The number of bytes in this many pages.
    #[inline(always)]
    pub const fn bytes(self) -> usize {
        self.0 << PAGE_SHIFT
    }

    /// The fewest pages that hold `bytes` bytes, or `None` if that overflows.
    #[inline]
    pub const fn for_bytes(bytes: usize) -> Option<Pages> {
        match bytes.checked_add(PAGE_SIZE - 1) {
            Some(b) => Some(Pages(b >> PAGE_SHIFT)),
            None => None,
        }
    }
}

impl Add<Pages> for PageId {
    type Output = PageId;
    #[inline(always)]
    fn add(self, n: Pages) -> PageId {
        PageId(self.0 + n.0)
    }
}

impl Sub<PageId> for PageId {
    type Output = Pages;
    #[inline(always)]
    fn sub(self, other: PageId) -> Pages {
        Pages(self.0 - other.0)
    }
}

impl Add for Pages {
    type Output = Pages;
    #[inline(always)]
    fn add(self, n: Pages) -> Pages {
        Pages(self.0 + n.0)
    }
}

impl Sub for Pages {
    type Output = Pages;
    #[inline(always)]
    fn sub(self, n: Pages) -> Pages {
        Pages(self.0 - n.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversions() {
        assert_eq!(Pages::for_bytes(0), Some(Pages(0)));
        assert_eq!(Pages::for_bytes(1), Some(Pages(1)));
        assert_eq!(Pages::for_bytes(PAGE_SIZE), Some(Pages(1)));
        assert_eq!(Pages::for_bytes(PAGE_SIZE + 1), Some(Pages(2)));
        assert_eq!(Pages::for_bytes(usize::MAX), None);
        assert_eq!(PageId::containing(3 * PAGE_SIZE + 5), PageId(3));
        assert_eq!(PageId(3).addr(), 3 * PAGE_SIZE);
        assert_eq!((PageId(3) + Pages(2)) - PageId(1), Pages(4));
    }
}
