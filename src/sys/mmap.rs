//! The real page source, the same on Linux and macOS: anonymous `mmap`, `munmap`, and
//! `mprotect` for the hardened build's guard pages; giving pages back is the OS file's
//! `release` (they differ there). See `lib.rs` for an overview. With the OS files, the only
//! code in the crate that names `libc` memory calls.

use super::PageSource;
use core::ptr::NonNull;
// A cached constant, not part of any protocol: core's atomic even under loom, whose atomics
// cannot live in a static.
use core::sync::atomic::{AtomicUsize, Ordering};

/// Pages straight from the kernel.
#[derive(Debug, Default, Clone, Copy)]
pub struct OsPages;

static OS_PAGE_SIZE: AtomicUsize = AtomicUsize::new(0);

/// `sysconf(_SC_PAGESIZE)`, read once and remembered.
#[inline]
pub(super) fn os_page_size() -> usize {
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

/// A fresh private anonymous mapping of `bytes` bytes with protection `prot`, or `None`.
/// Without `MAP_NORESERVE`: on Linux a writable one is charged to the kernel's commit count,
/// and refused when the overcommit policy says no (`vm.overcommit_memory` 0: more than RAM
/// plus swap in one request; 2: past the commit limit). macOS keeps no such count.
fn mmap_anonymous(bytes: usize, prot: libc::c_int) -> Option<usize> {
    // SAFETY: a fresh anonymous mapping; no existing memory is affected.
    let raw = unsafe {
        libc::mmap(
            core::ptr::null_mut(),
            bytes,
            prot,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    (raw != libc::MAP_FAILED).then_some(raw as usize)
}

/// Unmaps `[addr, addr + bytes)`; nothing for an empty range.
///
/// # Safety
/// The range is a part of a mapping of ours that nothing uses.
unsafe fn munmap(addr: usize, bytes: usize) -> bool {
    // SAFETY: per the caller.
    bytes == 0 || unsafe { libc::munmap(addr as *mut libc::c_void, bytes) } == 0
}

// SAFETY: anonymous private mappings are zero-filled and distinct; `map` trims to the asked
// alignment and unmaps only the padding it took itself, `unmap` only what the caller gives.
unsafe impl PageSource for OsPages {
    fn map(&self, bytes: usize, align: usize) -> Option<NonNull<u8>> {
        let os_page = os_page_size();
        let align = align.max(os_page);
        // First exactly `bytes`, writable: Linux checks the whole request against its
        // overcommit policy, and a refusal here is final (a padded mapping would need more).
        // Linux places anonymous mappings of whole huge pages on a huge-page boundary, so
        // for the page heap's 2 MiB alignment this one is usually aligned already.
        let first = mmap_anonymous(bytes, libc::PROT_READ | libc::PROT_WRITE)?;
        if first % align == 0 {
            return NonNull::new(first as *mut u8);
        }
        // SAFETY: the mapping just made, not handed out.
        unsafe { munmap(first, bytes) };
        // Misaligned: reserve room to align in, inaccessible (not charged: Linux counts only
        // writable private memory), keep the aligned part and make only that writable,
        // which is when Linux charges it. An alignment far beyond the size (a 1 TiB
        // alignment of one page) costs address space for a moment, never memory.
        let padded = bytes.checked_add(align - os_page)?;
        let start = mmap_anonymous(padded, libc::PROT_NONE)?;
        let aligned = start.next_multiple_of(align);
        let head = aligned - start;
        let tail = padded - head - bytes;
        // SAFETY: both ranges are parts of the reservation just made that we do not hand out.
        unsafe {
            munmap(start, head);
            munmap(aligned + bytes, tail);
        }
        // SAFETY: the aligned part of our reservation, not yet handed out.
        let ok = unsafe {
            libc::mprotect(
                aligned as *mut libc::c_void,
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
            )
        } == 0;
        if !ok {
            // Refused by the commit check: give the reservation back.
            // SAFETY: as above.
            unsafe { munmap(aligned, bytes) };
            return None;
        }
        NonNull::new(aligned as *mut u8)
    }

    unsafe fn unmap(&self, ptr: NonNull<u8>, bytes: usize) -> bool {
        // SAFETY: the caller guarantees the range is ours, holds nothing live and is never
        // touched again.
        unsafe { munmap(ptr.as_ptr() as usize, bytes) }
    }

    unsafe fn release(&self, ptr: NonNull<u8>, bytes: usize) {
        // SAFETY: the caller guarantees the range is one of our private anonymous mappings
        // (or several) and holds nothing live.
        unsafe { super::os::release(ptr, bytes) }
    }

    fn os_page_size(&self) -> usize {
        os_page_size()
    }

    #[cfg(feature = "hardened")]
    unsafe fn protect(&self, ptr: NonNull<u8>, bytes: usize, accessible: bool) -> bool {
        // SAFETY: per the caller (the range is ours; nothing uses it while inaccessible).
        unsafe { super::os::protect(ptr, bytes, accessible) }
    }

    #[cfg(feature = "hardened")]
    fn guards_cost_mappings(&self) -> bool {
        super::os::guards_cost_mappings()
    }
}

/// `mprotect` to `PROT_NONE` (`accessible == false`) or back to read and write: the
/// portable guard page. Each one splits a kernel mapping in up to three.
///
/// # Safety
/// The range is part of our mappings, page aligned; made inaccessible, nothing uses it.
#[cfg(feature = "hardened")]
pub(super) unsafe fn mprotect_guard(ptr: NonNull<u8>, bytes: usize, accessible: bool) -> bool {
    let prot = if accessible {
        libc::PROT_READ | libc::PROT_WRITE
    } else {
        libc::PROT_NONE
    };
    // SAFETY: per the caller; `mprotect` changes no contents.
    unsafe { libc::mprotect(ptr.as_ptr().cast(), bytes, prot) == 0 }
}
