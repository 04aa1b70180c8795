//! The only statics: the one heap, the thread-local cache slot, the orphan cache, the
//! thread-exit key and the fork handlers; and the front doors built on them,
//! [`SpanAlloc`] (`GlobalAlloc`) and [`raw`] (what the C ABI calls). See `lib.rs` for an
//! overview.
//!
//! # The thread-local slot
//!
//! Each thread has a `const`-initialised [`ThreadCache`] in a `thread_local!` of a type
//! without `Drop`, which lowers to a plain `#[thread_local]`: no lazy initialisation, no
//! destructor registration, nothing that allocates. Its state moves
//! `FRESH -> BUSY -> ACTIVE -> BUSY -> DEAD`:
//!
//! - FRESH: never used for allocation. Frees work (they never give the cache a span).
//! - BUSY: registering with the thread-exit key, or flushing at thread exit. Anything that
//!   arrives meanwhile (say `pthread_setspecific` calling `malloc` under `LD_PRELOAD`) goes
//!   to the orphan cache.
//! - ACTIVE: the cache is in use, and registered so that the key's destructor flushes it.
//! - DEAD: flushed at thread exit. Later allocations and frees (other destructors) go to
//!   the orphan cache.
//!
//! The orphan cache is one [`ThreadCache`] behind a lock, shared by every thread that cannot
//! use its own.

use crate::check::fatal;
use crate::heap::Heap;
use crate::size_class::{self, MIN_ALIGN, SMALL_STEP_LIMIT};
use crate::sync::{AtomicU8, AtomicU32, Lock, Ordering};
use crate::sys::OsPages;
use crate::thread_cache::ThreadCache;
use core::alloc::{GlobalAlloc, Layout};
use core::cell::UnsafeCell;

/// The one heap of the process.
static HEAP: Heap<OsPages> = Heap::new(OsPages);

/// The cache of threads that cannot use their own (BUSY or DEAD).
static ORPHAN: Lock<ThreadCache> = Lock::new(ThreadCache::new());

const FRESH: u8 = 0;
const BUSY: u8 = 1;
const ACTIVE: u8 = 2;
const DEAD: u8 = 3;

/// A thread's slot: its cache (hot, first) and its state.
#[repr(C)]
struct Local {
    cache: ThreadCache,
    state: u8,
}

thread_local! {
    static LOCAL: UnsafeCell<Local> = const {
        UnsafeCell::new(Local { cache: ThreadCache::new(), state: FRESH })
    };
}

/// This thread's slot. Valid for the thread's whole life, including its key destructors.
#[inline(always)]
fn local() -> *mut Local {
    LOCAL.with(|l| l.get())
}

/// The heap behind the global allocator (for statistics and tests).
pub fn heap() -> &'static Heap<OsPages> {
    &HEAP
}

// ---------------------------------------------------------------------------------------
// Process-wide set-up: the thread-exit key and the fork handlers, made once, on the first
// slow-path allocation of the first thread.

const INIT_NONE: u8 = 0;
const INIT_RUNNING: u8 = 1;
const INIT_DONE: u8 = 2;
static INIT: AtomicU8 = AtomicU8::new(INIT_NONE);
static EXIT_KEY: AtomicU32 = AtomicU32::new(0);

fn ensure_process_init() {
    // Acquire pairs with the Release store below: the key is visible.
    if INIT.load(Ordering::Acquire) == INIT_DONE {
        return;
    }
    if INIT
        .compare_exchange(INIT_NONE, INIT_RUNNING, Ordering::Acquire, Ordering::Acquire)
        .is_ok()
    {
        let mut key: libc::pthread_key_t = 0;
        // SAFETY: `key` is a valid out-pointer; the destructor is an `extern "C" fn`.
        if unsafe { libc::pthread_key_create(&mut key, Some(thread_exit)) } != 0 {
            fatal("pthread_key_create failed");
        }
        EXIT_KEY.store(key, Ordering::Relaxed);
        crate::check::seed_free_key();
        // SAFETY: the handlers are `extern "C" fn`s that only take and release our locks.
        unsafe { libc::pthread_atfork(Some(fork_prepare), Some(fork_parent), Some(fork_child)) };
        // Release pairs with the Acquire loads above.
        INIT.store(INIT_DONE, Ordering::Release);
    } else {
        // Another thread is setting up; it makes no allocation that could wait on us.
        let backoff = crossbeam_utils::Backoff::new();
        while INIT.load(Ordering::Acquire) != INIT_DONE {
            backoff.snooze();
        }
    }
}

/// Makes this thread's cache ACTIVE, registered for the thread-exit flush.
///
/// # Safety
/// `l` is this thread's slot and its state is FRESH; no reference into it is alive.
unsafe fn register(l: *mut Local) {
    // SAFETY: our own slot.
    unsafe { (*l).state = BUSY };
    ensure_process_init();
    // SAFETY: a valid key; any non-null value makes the destructor run at thread exit.
    if unsafe { libc::pthread_setspecific(EXIT_KEY.load(Ordering::Relaxed), l.cast()) } != 0 {
        // Could not register: keep to the orphan cache rather than leak spans at exit.
        // SAFETY: our own slot.
        unsafe { (*l).state = DEAD };
        return;
    }
    // SAFETY: our own slot.
    unsafe { (*l).state = ACTIVE };
}

/// The thread-exit key's destructor: gives the cache's spans back.
extern "C" fn thread_exit(_value: *mut libc::c_void) {
    let l = local();
    // SAFETY: our own slot; nothing else on this thread is using it during a destructor.
    unsafe {
        if (*l).state == ACTIVE {
            (*l).state = BUSY;
            (*l).cache.flush(&HEAP);
        }
        (*l).state = DEAD;
    }
}

extern "C" fn fork_prepare() {
    ORPHAN.raw_lock();
    HEAP.lock_all();
}

extern "C" fn fork_parent() {
    // SAFETY: `fork_prepare` took these locks on this thread.
    unsafe {
        HEAP.unlock_all();
        ORPHAN.raw_unlock();
    }
}

extern "C" fn fork_child() {
    // SAFETY: `fork_prepare` took these locks in the parent on the thread that is now the
    // child's only thread. Other threads' caches are gone with them; their spans stay owned.
    unsafe {
        HEAP.unlock_all();
        ORPHAN.raw_unlock();
    }
}

// ---------------------------------------------------------------------------------------
// The request paths.

/// The allocation and free entry points that both front doors use.
pub mod raw {
    use super::*;

    /// Allocates `size` bytes aligned to `align` (a power of two). Null when out of memory.
    ///
    /// # Safety
    /// `align` is a power of two.
    #[inline(always)]
    pub unsafe fn alloc(size: usize, align: usize) -> *mut u8 {
        if size <= SMALL_STEP_LIMIT && align <= MIN_ALIGN {
            let class = size_class::class_of_small(size);
            // SAFETY: our own slot; the fast path makes no call that could re-enter.
            let obj = unsafe { (*local()).cache.pop(class) };
            if !obj.is_null() {
                return obj;
            }
        }
        alloc_slow(size, align)
    }

    /// Frees `ptr`, allocated with `size` and `align`.
    ///
    /// # Safety
    /// `ptr` came from [`alloc`] (or the other allocation functions here) with this size and
    /// alignment, and is not used afterwards.
    #[inline(always)]
    pub unsafe fn dealloc(ptr: *mut u8, size: usize, align: usize) {
        if size <= SMALL_STEP_LIMIT && align <= MIN_ALIGN {
            let class = size_class::class_of_small(size);
            // SAFETY: our own slot; per the caller, `ptr` is an object of `class`.
            if unsafe { (*local()).cache.push_if_owned(ptr, class) } {
                return;
            }
        }
        // SAFETY: per the caller.
        unsafe { dealloc_slow(ptr, size, align) }
    }

    /// As [`alloc`], with the first `size` bytes zero.
    ///
    /// # Safety
    /// `align` is a power of two.
    pub unsafe fn alloc_zeroed(size: usize, align: usize) -> *mut u8 {
        // SAFETY: the closure gets exclusive use of a cache.
        unsafe { with_cache(|cache| cache.alloc_zeroed(&HEAP, size, align)) }
    }

    /// Frees `ptr` without its size (C `free`). Stops the process with a message on a pointer
    /// spanalloc did not hand out, where the page map can tell.
    ///
    /// # Safety
    /// `ptr` is non-null; if spanalloc handed it out, it is not used afterwards.
    #[inline]
    pub unsafe fn free(ptr: *mut u8) {
        // SAFETY: per the caller.
        unsafe { with_cache_for_free(|cache| cache.free(&HEAP, ptr)) }
    }

    /// Resizes `ptr` (allocated with `align`) to `new_size` bytes. Null on failure, leaving
    /// `ptr` intact.
    ///
    /// # Safety
    /// `ptr` was handed out by spanalloc with alignment `align`; unless null is returned it
    /// is not used afterwards.
    pub unsafe fn realloc(ptr: *mut u8, new_size: usize, align: usize) -> *mut u8 {
        // SAFETY: per the caller.
        unsafe { with_cache(|cache| cache.realloc(&HEAP, ptr, align, new_size)) }
    }

    /// Bytes usable at `ptr`, which spanalloc handed out.
    ///
    /// # Safety
    /// `ptr` was handed out by spanalloc and is live.
    pub unsafe fn usable_size(ptr: *mut u8) -> usize {
        HEAP.usable_size(ptr)
    }
}

/// Runs `f` with this thread's cache if it can be used (registering it on first use),
/// otherwise with the orphan cache under its lock.
#[inline]
unsafe fn with_cache<R>(f: impl FnOnce(&mut ThreadCache) -> R) -> R {
    let l = local();
    // SAFETY: our own slot.
    let mut state = unsafe { (*l).state };
    if state == FRESH {
        // SAFETY: our slot, FRESH, no reference into it alive.
        unsafe { register(l) };
        // SAFETY: our own slot.
        state = unsafe { (*l).state };
    }
    if state == ACTIVE {
        // SAFETY: our own slot, ACTIVE: nothing else on this thread uses the cache now (the
        // allocator makes no call that re-enters while serving a request).
        f(unsafe { &mut (*l).cache })
    } else {
        f(&mut ORPHAN.lock())
    }
}

/// As [`with_cache`] but without registering a FRESH cache: freeing never gives the cache a
/// span, so it needs no thread-exit flush.
#[inline]
unsafe fn with_cache_for_free<R>(f: impl FnOnce(&mut ThreadCache) -> R) -> R {
    let l = local();
    // SAFETY: our own slot.
    match unsafe { (*l).state } {
        // SAFETY: as in `with_cache`.
        FRESH | ACTIVE => f(unsafe { &mut (*l).cache }),
        _ => f(&mut ORPHAN.lock()),
    }
}

#[cold]
#[inline(never)]
fn alloc_slow(size: usize, align: usize) -> *mut u8 {
    // SAFETY: the closure gets exclusive use of a cache.
    unsafe { with_cache(|cache| cache.alloc(&HEAP, size, align)) }
}

#[cold]
#[inline(never)]
unsafe fn dealloc_slow(ptr: *mut u8, size: usize, align: usize) {
    // SAFETY: per the caller of `raw::dealloc`.
    unsafe { with_cache_for_free(|cache| cache.dealloc(&HEAP, ptr, size, align)) }
}

/// Gives the calling thread's cached spans back to the central lists, so that memory this
/// thread freed can be reused by others or returned to the OS. The cache refills on its next
/// allocation.
pub fn flush_thread_cache() {
    let l = local();
    // SAFETY: our own slot; no reference into it is alive.
    unsafe {
        if (*l).state == ACTIVE {
            (*l).state = BUSY;
            (*l).cache.flush(&HEAP);
            (*l).state = ACTIVE;
        }
    }
    ORPHAN.lock().flush(&HEAP);
}

/// Gives every free page back to the OS now (with `MADV_DONTNEED`). Returns the bytes given
/// back.
pub fn release_free_memory() -> usize {
    HEAP.release_free_memory()
}

/// spanalloc as a Rust global allocator:
///
/// ```
/// #[global_allocator]
/// static GLOBAL: spanalloc::SpanAlloc = spanalloc::SpanAlloc;
///
/// let v: Vec<u64> = (0..1000).collect();
/// assert_eq!(v.iter().sum::<u64>(), 499_500);
/// ```
#[derive(Copy, Clone, Debug, Default)]
pub struct SpanAlloc;

// SAFETY: every method returns memory of at least the layout's size and alignment that no
// other live allocation overlaps, or null; none of them unwinds.
unsafe impl GlobalAlloc for SpanAlloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: a Layout's alignment is a power of two.
        unsafe { raw::alloc(layout.size(), layout.align()) }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: per GlobalAlloc's contract, `ptr` came from us with `layout`.
        unsafe { raw::dealloc(ptr, layout.size(), layout.align()) }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: a Layout's alignment is a power of two.
        unsafe { raw::alloc_zeroed(layout.size(), layout.align()) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let align = layout.align();
        if let (Some(old), Some(new)) =
            (size_class::class_for(layout.size(), align), size_class::class_for(new_size, align))
        {
            if old == new {
                return ptr;
            }
        }
        // SAFETY: per GlobalAlloc's contract, `ptr` came from us with `layout`.
        unsafe { raw::realloc(ptr, new_size, align) }
    }
}
