//! The real page source: anonymous `mmap`, `madvise(MADV_DONTNEED)`, and `mprotect` for
//! the hardened build's guard pages. See `lib.rs` for an overview. This file is the only code in the crate that names `libc` memory calls.

use super::PageSource;
use crate::sync::Ordering;
// A cached constant, not part of any protocol: core's atomic even under loom, whose atomics
// cannot live in a static.
use core::ptr::NonNull;
use core::sync::atomic::AtomicUsize;

/// Pages straight from the kernel.
#[derive(Debug, Default, Clone, Copy)]
pub struct OsPages;

static OS_PAGE_SIZE: AtomicUsize = AtomicUsize::new(0);

/// The kernel's page size (4, 16 or 64 KiB), read once with `sysconf` and remembered.
#[inline]
pub fn os_page_size() -> usize {
    let cached = OS_PAGE_SIZE.load(Ordering::Relaxed);
    if cached != 0 {
        return cached;
    }
    // SAFETY: sysconf has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    let size = if size > 0 { size as usize } else { 4096 };
    OS_PAGE_SIZE.store(size, Ordering::Relaxed);
    size
}

// SAFETY: anonymous private mappings are zero-filled and distinct; `map` trims to the asked
// alignment and never unmaps anything it handed out.
unsafe impl PageSource for OsPages {
    fn map(&self, bytes: usize, align: usize) -> Option<NonNull<u8>> {
        let os_page = os_page_size();
        let align = align.max(os_page);
        let padded = bytes.checked_add(align - os_page)?;
        // SAFETY: a fresh anonymous mapping; no existing memory is affected.
        let raw = unsafe {
            libc::mmap(
                core::ptr::null_mut(),
                padded,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if raw == libc::MAP_FAILED {
            return None;
        }
        let start = raw as usize;
        let aligned = (start + align - 1) & !(align - 1);
        let head = aligned - start;
        let tail = padded - head - bytes;
        // SAFETY: both ranges are parts of the mapping just made that we do not hand out.
        unsafe {
            if head > 0 {
                libc::munmap(raw, head);
            }
            if tail > 0 {
                libc::munmap((aligned + bytes) as *mut libc::c_void, tail);
            }
        }
        NonNull::new(aligned as *mut u8)
    }

    unsafe fn release(&self, ptr: NonNull<u8>, bytes: usize) {
        // SAFETY: the caller guarantees the range is ours and holds nothing live;
        // MADV_DONTNEED on a private anonymous mapping drops the pages, which then read as
        // zero. MADV_FREE would leave them counted in RSS until memory pressure.
        unsafe {
            libc::madvise(ptr.as_ptr().cast(), bytes, libc::MADV_DONTNEED);
        }
    }

    fn os_page_size(&self) -> usize {
        os_page_size()
    }

    #[cfg(feature = "hardened")]
    unsafe fn protect(&self, ptr: NonNull<u8>, bytes: usize, accessible: bool) -> bool {
        let prot = if accessible {
            libc::PROT_READ | libc::PROT_WRITE
        } else {
            libc::PROT_NONE
        };
        // SAFETY: the caller guarantees the range is ours and that nothing uses it while it
        // is inaccessible; `mprotect` changes no contents.
        unsafe { libc::mprotect(ptr.as_ptr().cast(), bytes, prot) == 0 }
    }
}
