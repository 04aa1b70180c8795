//! The C allocation functions (cargo feature `override`), with glibc's semantics, over
//! [`crate::raw`]: `malloc`, `free`, `calloc`, `realloc`, `reallocarray`, `posix_memalign`,
//! `aligned_alloc`, `memalign`, `valloc`, `pvalloc`, `malloc_usable_size`, `free_sized`,
//! `free_aligned_sized` and glibc's `__libc_*` aliases. See `lib.rs` for an overview.
//!
//! With the `override` feature every function here is `#[unsafe(no_mangle)] extern "C"`:
//! linked into a program (a Rust binary) they replace the C library's for the whole
//! process, C and C++ code linked into it included (mimalloc's `override`). Without it they
//! are plain `extern "C"` functions, and [`export_c_abi!`](crate::export_c_abi) exports
//! them from the crate that invokes it: `libspanalloc.so` (`preload/`), which interposes
//! glibc's under `LD_PRELOAD`, and its tests.
//!
//! Nothing here allocates, formats, panics or unwinds. Errors are `NULL` plus `errno`
//! (`ENOMEM`, `EINVAL`), or an error code for `posix_memalign`.
//!
//! # Alignment
//!
//! glibc promises 16-byte alignment for every `malloc`ed block on x86_64 (`max_align_t`).
//! A request of `n` bytes is served as `n` rounded up to a multiple of 16 with the default
//! alignment: every size class that holds such a rounded size is a multiple of 16 (the
//! only class that is not, 24 bytes, is never chosen), and spans start on page
//! boundaries, so the object is 16-byte aligned. That is the same class
//! `raw::alloc(n, 16)` would choose (a test checks it for every small size), but it stays
//! on the thread cache's fast path, which only takes the default alignment.

use crate::raw;
use crate::size_class::{MIN_ALIGN, SMALL_STEP_LIMIT};
use core::ffi::{c_int, c_void};

/// The alignment of every block C `malloc` hands out (glibc's `MALLOC_ALIGNMENT`).
pub const C_ALIGN: usize = 16;

/// Largest alignment `memalign` accepts (glibc: `SIZE_MAX / 2 + 1`).
const MAX_ALIGN: usize = usize::MAX / 2 + 1;

#[inline(always)]
fn set_errno(value: c_int) {
    // SAFETY: `__errno_location` returns this thread's errno slot, always valid.
    unsafe { *libc::__errno_location() = value };
}

/// `size` rounded up to a multiple of [`C_ALIGN`], or `None` on overflow.
#[inline(always)]
pub fn c_size(size: usize) -> Option<usize> {
    Some(size.checked_add(C_ALIGN - 1)? & !(C_ALIGN - 1))
}

/// The OS page size, for `valloc` and `pvalloc`.
#[inline]
fn page_size() -> usize {
    crate::sys::os_page_size()
}

/// `malloc` without the `errno`: `size` bytes aligned to [`C_ALIGN`], or null.
#[inline(always)]
pub fn alloc_c(size: usize) -> *mut c_void {
    // A small request first: its rounding cannot overflow, so it needs no test for that.
    if size <= SMALL_STEP_LIMIT {
        // SAFETY: at most SMALL_STEP_LIMIT, a multiple of C_ALIGN, after rounding.
        return unsafe { raw::alloc_small((size + C_ALIGN - 1) & !(C_ALIGN - 1)) }.cast();
    }
    match c_size(size) {
        // SAFETY: MIN_ALIGN is a power of two.
        Some(n) => unsafe { raw::alloc(n, MIN_ALIGN) }.cast(),
        None => core::ptr::null_mut(),
    }
}

/// `size` bytes aligned to `align` (a power of two), or null.
#[inline]
pub fn alloc_aligned(align: usize, size: usize) -> *mut c_void {
    if align <= C_ALIGN {
        return alloc_c(size);
    }
    // SAFETY: `align` is a power of two (every caller checks).
    unsafe { raw::alloc(size.max(1), align) }.cast()
}

/// glibc's `memalign`: an alignment that is not a power of two is rounded up to one; one
/// larger than `SIZE_MAX / 2 + 1` is `EINVAL`.
#[inline]
fn memalign_impl(align: usize, size: usize) -> *mut c_void {
    if align > MAX_ALIGN {
        set_errno(libc::EINVAL);
        return core::ptr::null_mut();
    }
    let align = align.next_power_of_two();
    let p = alloc_aligned(align, size);
    if p.is_null() {
        set_errno(libc::ENOMEM);
    }
    p
}

/// Frees `ptr` keeping `errno` as it was: the free path may make system calls (`madvise`,
/// `futex`) that set it. Null does nothing, and is found on the slow path: the page map
/// has no span at address 0, so the fast path's object test fails for it (as TCMalloc's
/// size-class lookup and mimalloc's segment lookup do), and a free of an object costs no
/// null test.
///
/// # Safety
/// If spanalloc handed `ptr` out, it is not used afterwards.
#[inline(always)]
unsafe fn free_keep_errno(ptr: *mut c_void) {
    // The fast path touches no errno; only the slow path may (a system call). The page's
    // word is read once, for both the small and the large object's short path.
    let word = crate::global::page_word(ptr.cast());
    // SAFETY: per the caller; the word of its page.
    if !unsafe { crate::global::free_fast_with_word(ptr.cast(), word) } {
        // SAFETY: per the caller; as above.
        unsafe { free_slow_keep_errno(ptr, word) }
    }
}

/// The slow path of [`free_keep_errno`]: null, a large object into the stash, or the rest
/// with `errno` saved and restored around it.
///
/// # Safety
/// As [`free_keep_errno`]; `word` is the small-object word of the page of `ptr`.
#[cold]
#[inline(never)]
unsafe fn free_slow_keep_errno(ptr: *mut c_void, word: usize) {
    if ptr.is_null() {
        return;
    }
    // A large object onto the thread's large lists (its word says so): no lock, no system
    // call, no errno to keep, and no frame: the stash's path is a call of its own.
    if crate::page_map::word_listed_large(word).is_some() {
        // SAFETY: per the caller.
        if unsafe { crate::global::free_listed_fast_with_word(ptr.cast(), word) } {
            return;
        }
        // SAFETY: per the caller; the fast paths have been tried.
        return unsafe { free_rest_keep_errno(ptr) };
    }
    // SAFETY: per the caller.
    unsafe { free_recorded_keep_errno(ptr, word) }
}

/// [`free_slow_keep_errno`] for a word that is not a listed one: a large object into the
/// thread's stash (no errno to keep either), or the rest with `errno` kept.
///
/// # Safety
/// As [`free_slow_keep_errno`].
#[cold]
#[inline(never)]
unsafe fn free_recorded_keep_errno(ptr: *mut c_void, word: usize) {
    // SAFETY: per the caller.
    if unsafe { crate::global::free_large_fast_with_word(ptr.cast(), word) } {
        return;
    }
    // SAFETY: per the caller; the fast paths have been tried.
    unsafe { free_rest_keep_errno(ptr) }
}

/// [`free_slow_keep_errno`] past the stash: `errno` saved and restored around the rest.
/// Apart, so that the stash's path saves no registers for it (a tail call).
///
/// # Safety
/// As [`free_keep_errno`], with the fast paths tried.
#[cold]
#[inline(never)]
unsafe fn free_rest_keep_errno(ptr: *mut c_void) {
    // SAFETY: `__errno_location` returns this thread's errno slot, always valid.
    let errno = unsafe { libc::__errno_location() };
    // SAFETY: as above.
    let saved = unsafe { *errno };
    // SAFETY: per the caller; the fast paths have been tried.
    unsafe { raw::free_past_fast(ptr.cast()) };
    // SAFETY: as above.
    unsafe { *errno = saved };
}

/// C `malloc`: `size` bytes aligned to 16, or null with `errno` `ENOMEM`. `malloc(0)` is a
/// unique pointer that `free` accepts.
///
/// # Safety
/// Always safe to call; the result is raw memory for the caller to manage.
#[cfg_attr(feature = "override", unsafe(no_mangle))]
#[cfg_attr(not(feature = "override"), inline)]
pub unsafe extern "C" fn malloc(size: usize) -> *mut c_void {
    let p = alloc_c(size);
    if p.is_null() {
        set_errno(libc::ENOMEM);
    }
    p
}

/// C `free`: gives `ptr` back. `free(NULL)` does nothing; `errno` is preserved. Stops the
/// process with `spanalloc: invalid free: ...` or `spanalloc: double free detected` on a
/// pointer spanalloc did not hand out, where the page map can tell.
///
/// # Safety
/// `ptr` is null or was returned by one of these functions and is not used afterwards.
#[cfg_attr(feature = "override", unsafe(no_mangle))]
#[cfg_attr(not(feature = "override"), inline)]
pub unsafe extern "C" fn free(ptr: *mut c_void) {
    // SAFETY: per the caller.
    unsafe { free_impl(ptr) }
}

/// C `calloc`: `n * size` zero bytes, or null with `ENOMEM` (also when `n * size`
/// overflows).
///
/// # Safety
/// Always safe to call.
#[cfg_attr(feature = "override", unsafe(no_mangle))]
#[cfg_attr(not(feature = "override"), inline)]
pub unsafe extern "C" fn calloc(n: usize, size: usize) -> *mut c_void {
    let p: *mut c_void = match n.checked_mul(size).and_then(c_size) {
        // SAFETY: MIN_ALIGN is a power of two.
        Some(total) => unsafe { raw::alloc_zeroed(total, MIN_ALIGN) }.cast(),
        None => core::ptr::null_mut(),
    };
    if p.is_null() {
        set_errno(libc::ENOMEM);
    }
    p
}

/// C `realloc`: `realloc(NULL, n)` is `malloc(n)`; `realloc(p, 0)` frees `p` and returns
/// null; otherwise the block moved or resized to `size` bytes (16-aligned). On failure,
/// null with `ENOMEM` and `ptr` left intact.
///
/// # Safety
/// `ptr` is null or a live block from these functions; unless null is returned it is not
/// used afterwards.
#[cfg_attr(feature = "override", unsafe(no_mangle))]
#[cfg_attr(not(feature = "override"), inline)]
pub unsafe extern "C" fn realloc(ptr: *mut c_void, size: usize) -> *mut c_void {
    if ptr.is_null() {
        // SAFETY: always safe.
        return unsafe { malloc(size) };
    }
    if size == 0 {
        // SAFETY: non-null, and per the caller.
        unsafe { free_keep_errno(ptr) };
        return core::ptr::null_mut();
    }
    let p: *mut c_void = match c_size(size) {
        // SAFETY: per the caller, a live block of ours; MIN_ALIGN is a power of two.
        Some(n) => unsafe { raw::realloc(ptr.cast(), n, MIN_ALIGN) }.cast(),
        None => core::ptr::null_mut(),
    };
    if p.is_null() {
        set_errno(libc::ENOMEM);
    }
    p
}

/// C `reallocarray`: `realloc(ptr, n * size)`, but null with `ENOMEM` (and `ptr` intact)
/// when `n * size` overflows.
///
/// # Safety
/// As [`realloc`].
#[cfg_attr(feature = "override", unsafe(no_mangle))]
#[cfg_attr(not(feature = "override"), inline)]
pub unsafe extern "C" fn reallocarray(ptr: *mut c_void, n: usize, size: usize) -> *mut c_void {
    match n.checked_mul(size) {
        // SAFETY: per the caller.
        Some(total) => unsafe { realloc(ptr, total) },
        None => {
            set_errno(libc::ENOMEM);
            core::ptr::null_mut()
        }
    }
}

/// POSIX `posix_memalign`: stores a block of `size` bytes aligned to `align` in `*memptr`
/// and returns 0; returns `EINVAL` (for an alignment that is not a power of two times
/// `sizeof(void *)`) or `ENOMEM`, leaving `*memptr` untouched.
///
/// # Safety
/// `memptr` is valid for a pointer-sized write.
#[cfg_attr(feature = "override", unsafe(no_mangle))]
#[cfg_attr(not(feature = "override"), inline)]
pub unsafe extern "C" fn posix_memalign(
    memptr: *mut *mut c_void,
    align: usize,
    size: usize,
) -> c_int {
    if !align.is_power_of_two() || align % core::mem::size_of::<*mut c_void>() != 0 {
        return libc::EINVAL;
    }
    let p = alloc_aligned(align, size);
    if p.is_null() {
        return libc::ENOMEM;
    }
    // SAFETY: per the caller.
    unsafe { *memptr = p };
    0
}

/// C11 `aligned_alloc`: `size` bytes aligned to `align`; null with `EINVAL` when `align` is
/// not a power of two (as glibc 2.38 and later), `ENOMEM` when out of memory.
///
/// # Safety
/// Always safe to call.
#[cfg_attr(feature = "override", unsafe(no_mangle))]
#[cfg_attr(not(feature = "override"), inline)]
pub unsafe extern "C" fn aligned_alloc(align: usize, size: usize) -> *mut c_void {
    if !align.is_power_of_two() {
        set_errno(libc::EINVAL);
        return core::ptr::null_mut();
    }
    let p = alloc_aligned(align, size);
    if p.is_null() {
        set_errno(libc::ENOMEM);
    }
    p
}

/// glibc `memalign`: `size` bytes aligned to `align` rounded up to a power of two; null
/// with `EINVAL` when `align > SIZE_MAX / 2 + 1`, `ENOMEM` when out of memory.
///
/// # Safety
/// Always safe to call.
#[cfg_attr(feature = "override", unsafe(no_mangle))]
#[cfg_attr(not(feature = "override"), inline)]
pub unsafe extern "C" fn memalign(align: usize, size: usize) -> *mut c_void {
    memalign_impl(align, size)
}

/// `valloc`: `memalign(page size, size)`.
///
/// # Safety
/// Always safe to call.
#[cfg_attr(feature = "override", unsafe(no_mangle))]
#[cfg_attr(not(feature = "override"), inline)]
pub unsafe extern "C" fn valloc(size: usize) -> *mut c_void {
    memalign_impl(page_size(), size)
}

/// `pvalloc`: `size` rounded up to whole OS pages (one page for 0), page-aligned; null with
/// `ENOMEM` when the rounding overflows.
///
/// # Safety
/// Always safe to call.
#[cfg_attr(feature = "override", unsafe(no_mangle))]
#[cfg_attr(not(feature = "override"), inline)]
pub unsafe extern "C" fn pvalloc(size: usize) -> *mut c_void {
    let page = page_size();
    match size.max(1).checked_add(page - 1) {
        Some(n) => memalign_impl(page, n & !(page - 1)),
        None => {
            set_errno(libc::ENOMEM);
            core::ptr::null_mut()
        }
    }
}

/// `malloc_usable_size`: the bytes usable at `ptr` (0 for null). Stops the process on a
/// pointer spanalloc did not hand out, where the page map can tell.
///
/// # Safety
/// `ptr` is null or a live block from these functions.
#[cfg_attr(feature = "override", unsafe(no_mangle))]
#[cfg_attr(not(feature = "override"), inline)]
pub unsafe extern "C" fn malloc_usable_size(ptr: *mut c_void) -> usize {
    if ptr.is_null() {
        return 0;
    }
    // SAFETY: per the caller.
    unsafe { raw::usable_size(ptr.cast()) }
}

/// C23 `free_sized`: frees `ptr`, allocated by `malloc`, `calloc` or `realloc` with `size`
/// bytes. The class comes from the page map, as for `free` (which checks the pointer); a
/// debug build also checks it against `size`.
///
/// # Safety
/// As [`free`], and `size` is the size that was asked for (C23 leaves a wrong size
/// undefined; here a release build ignores it, a debug build stops).
#[cfg_attr(feature = "override", unsafe(no_mangle))]
#[cfg_attr(not(feature = "override"), inline)]
pub unsafe extern "C" fn free_sized(ptr: *mut c_void, size: usize) {
    // SAFETY: per the caller.
    unsafe { free_sized_impl(ptr, size) }
}

/// C23 `free_aligned_sized`: frees `ptr`, allocated by `aligned_alloc(align, size)`.
///
/// # Safety
/// As [`free_sized`], and `align` is the alignment that was asked for.
#[cfg_attr(feature = "override", unsafe(no_mangle))]
#[cfg_attr(not(feature = "override"), inline)]
pub unsafe extern "C" fn free_aligned_sized(ptr: *mut c_void, align: usize, size: usize) {
    // SAFETY: per the caller.
    unsafe { free_aligned_sized_impl(ptr, align, size) }
}

/// The body of [`free`], for the other front doors in this crate (the C++ `delete`s):
/// they call this rather than the exported symbol, which is interposable and so reached
/// through the GOT.
///
/// # Safety
/// As [`free`].
#[inline(always)]
pub unsafe fn free_impl(ptr: *mut c_void) {
    // SAFETY: per the caller (null included).
    unsafe { free_keep_errno(ptr) };
}

/// The body of [`free_sized`] (see [`free_impl`]).
///
/// # Safety
/// As [`free_sized`].
#[inline(always)]
pub unsafe fn free_sized_impl(ptr: *mut c_void, size: usize) {
    // Debug and hardened builds: the size must name the class the page map knows.
    if cfg!(debug_assertions) || crate::check::HARDENED {
        if ptr.is_null() {
            return;
        }
        if let Some(n) = c_size(size) {
            // The sized fast path: the bin from the size, checked against the page map.
            // SAFETY: non-null, and per the caller.
            if unsafe { raw::dealloc_fast(ptr.cast(), n) } {
                return;
            }
            // The fast path took only an object of the size's class, as in `raw::dealloc`.
            crate::thread_cache::check_layout(crate::global::heap(), ptr.cast(), n, MIN_ALIGN);
        }
    }
    // Otherwise the size is not used: it comes from C or C++ at run time, so finding the
    // bin from it costs a rounding, a table load and a class compare more than the class
    // the page-map word names, which the free reads anyway (the object-boundary check).
    // Null, too, is the unsized free's: its slow path returns for it.
    // SAFETY: per the caller (null included).
    unsafe { free_keep_errno(ptr) }
}

/// The body of [`free_aligned_sized`] (see [`free_impl`]).
///
/// # Safety
/// As [`free_aligned_sized`].
#[inline(always)]
pub unsafe fn free_aligned_sized_impl(ptr: *mut c_void, align: usize, size: usize) {
    if ptr.is_null() {
        return;
    }
    if align <= C_ALIGN {
        // SAFETY: per the caller; such blocks were allocated as by `malloc`.
        unsafe { free_sized_impl(ptr, size) };
        return;
    }
    if !align.is_power_of_two() {
        // Not an alignment `aligned_alloc` accepts: let the checked free judge the pointer.
        // SAFETY: non-null, and per the caller.
        unsafe { free_keep_errno(ptr) };
        return;
    }
    // SAFETY: `__errno_location` returns this thread's errno slot, always valid.
    let errno = unsafe { libc::__errno_location() };
    // SAFETY: as above.
    let saved = unsafe { *errno };
    // SAFETY: per the caller, allocated as `raw::alloc(size.max(1), align)`.
    unsafe { raw::dealloc(ptr.cast(), size.max(1), align) };
    // SAFETY: as above.
    unsafe { *errno = saved };
}

// glibc's internal names, which some programs and libraries call directly.

/// glibc's `__libc_malloc`: [`malloc`].
///
/// # Safety
/// As [`malloc`].
#[cfg_attr(feature = "override", unsafe(no_mangle))]
#[cfg_attr(not(feature = "override"), inline)]
pub unsafe extern "C" fn __libc_malloc(size: usize) -> *mut c_void {
    // SAFETY: per the caller.
    unsafe { malloc(size) }
}

/// glibc's `__libc_free`: [`free`].
///
/// # Safety
/// As [`free`].
#[cfg_attr(feature = "override", unsafe(no_mangle))]
#[cfg_attr(not(feature = "override"), inline)]
pub unsafe extern "C" fn __libc_free(ptr: *mut c_void) {
    // SAFETY: per the caller.
    unsafe { free(ptr) }
}

/// glibc's `__libc_calloc`: [`calloc`].
///
/// # Safety
/// As [`calloc`].
#[cfg_attr(feature = "override", unsafe(no_mangle))]
#[cfg_attr(not(feature = "override"), inline)]
pub unsafe extern "C" fn __libc_calloc(n: usize, size: usize) -> *mut c_void {
    // SAFETY: per the caller.
    unsafe { calloc(n, size) }
}

/// glibc's `__libc_realloc`: [`realloc`].
///
/// # Safety
/// As [`realloc`].
#[cfg_attr(feature = "override", unsafe(no_mangle))]
#[cfg_attr(not(feature = "override"), inline)]
pub unsafe extern "C" fn __libc_realloc(ptr: *mut c_void, size: usize) -> *mut c_void {
    // SAFETY: per the caller.
    unsafe { realloc(ptr, size) }
}

/// glibc's `__libc_memalign`: [`memalign`].
///
/// # Safety
/// As [`memalign`].
#[cfg_attr(feature = "override", unsafe(no_mangle))]
#[cfg_attr(not(feature = "override"), inline)]
pub unsafe extern "C" fn __libc_memalign(align: usize, size: usize) -> *mut c_void {
    memalign_impl(align, size)
}

/// Exports the C allocation functions of this module from the invoking crate, each an
/// `#[unsafe(no_mangle)] extern "C"` function that calls the one here: what
/// `libspanalloc.so` does (invoked once, in a module of its own), without turning the
/// `override` feature on for every crate built with it. Never together with `override`
/// (the symbols would be defined twice).
#[macro_export]
#[doc(hidden)]
macro_rules! export_c_abi {
    () => {
        $crate::export_c_abi!(@fns
            malloc(size: usize) -> *mut ::core::ffi::c_void;
            free(ptr: *mut ::core::ffi::c_void);
            calloc(n: usize, size: usize) -> *mut ::core::ffi::c_void;
            realloc(ptr: *mut ::core::ffi::c_void, size: usize) -> *mut ::core::ffi::c_void;
            reallocarray(ptr: *mut ::core::ffi::c_void, n: usize, size: usize) -> *mut ::core::ffi::c_void;
            posix_memalign(memptr: *mut *mut ::core::ffi::c_void, align: usize, size: usize) -> ::core::ffi::c_int;
            aligned_alloc(align: usize, size: usize) -> *mut ::core::ffi::c_void;
            memalign(align: usize, size: usize) -> *mut ::core::ffi::c_void;
            valloc(size: usize) -> *mut ::core::ffi::c_void;
            pvalloc(size: usize) -> *mut ::core::ffi::c_void;
            malloc_usable_size(ptr: *mut ::core::ffi::c_void) -> usize;
            free_sized(ptr: *mut ::core::ffi::c_void, size: usize);
            free_aligned_sized(ptr: *mut ::core::ffi::c_void, align: usize, size: usize);
            __libc_malloc(size: usize) -> *mut ::core::ffi::c_void;
            __libc_free(ptr: *mut ::core::ffi::c_void);
            __libc_calloc(n: usize, size: usize) -> *mut ::core::ffi::c_void;
            __libc_realloc(ptr: *mut ::core::ffi::c_void, size: usize) -> *mut ::core::ffi::c_void;
            __libc_memalign(align: usize, size: usize) -> *mut ::core::ffi::c_void;
        );
    };
    (@fns $($name:ident($($arg:ident: $ty:ty),*) $(-> $ret:ty)?;)*) => {$(
        #[doc = concat!("C `", stringify!($name), "`: spanalloc's.")]
        ///
        /// # Safety
        /// As the C function.
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn $name($($arg: $ty),*) $(-> $ret)? {
            // SAFETY: per the caller.
            unsafe { $crate::internals::c_abi::$name($($arg),*) }
        }
    )*};
}
