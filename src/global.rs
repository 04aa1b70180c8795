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
//!
//! Beside each cache sits its [`Reserve`] (what the cache keeps past its bins' reachable
//! bound), in [`RESERVES`] from registration to the exit flush, so that
//! [`release_free_memory`] and the background release reach the memory of threads that
//! stopped making requests.
//!
//! # Heap profiling
//!
//! Every allocation is charged to its cache's sampling countdown (`sampler.rs`): on the
//! fast paths after the pop, elsewhere before the request is served. The allocation that
//! crosses the countdown goes to [`sampled_alloc`], which captures the stack with no lock
//! held and makes the object a large object recorded in [`PROFILE`] (`sample_table.rs`).

use crate::check::fatal;
use crate::heap::{Heap, LEND_MIN};
use crate::pages::PAGE_SHIFT;
use crate::sample_table::{SampleTable, Site};
use crate::size_class::{self, LARGE_THRESHOLD, MAX_SMALL_SIZE, MIN_ALIGN, SMALL_STEP_LIMIT};
use crate::stack::{RuleCache, WalkMemo};
use crate::sync::{AtomicU8, AtomicUsize, Lock, Ordering};
use crate::sys::OsPages;
use crate::thread_cache::ThreadCache;
use crate::thread_cache::reserve::{Reclaim, Reserve, Reserves};
use core::alloc::{GlobalAlloc, Layout};
use core::cell::UnsafeCell;

/// The one heap of the process.
static HEAP: Heap<OsPages> = Heap::new(OsPages);

/// The cache of threads that cannot use their own (BUSY or DEAD).
static ORPHAN: Lock<ThreadCache> = Lock::new(ThreadCache::new());

/// Every ACTIVE thread's reserve.
static RESERVES: Reserves = Reserves::new();

/// The heap profiler's setting and its table of sampled objects.
static PROFILE: SampleTable = SampleTable::new();

/// The heap profiler's stack walks' rules of code addresses seen before.
static UNWIND_RULES: RuleCache = RuleCache::new();

const FRESH: u8 = 0;
const BUSY: u8 = 1;
const ACTIVE: u8 = 2;
const DEAD: u8 = 3;

/// A thread's slot: its cache (hot, first), its state, where it is with the heap profiler
/// (`SAMPLE_IDLE`, `SAMPLE_BUSY` inside [`sampled_alloc`], `SAMPLE_PAUSED` while it writes a
/// profile), and the cache's reserve. Only the thread itself touches the other fields, and
/// it forms `&mut` to the cache alone, never to the whole slot: other threads reach the
/// reserve (through [`RESERVES`]) while it works. Aligned to 128 bytes (two cache lines, as
/// `crossbeam_utils::CachePadded` on x86_64) so that one thread's reserve, which its slow
/// paths write, never shares a line with the hot head of the next thread's cache when the
/// slots come from one pool (`small-tls`).
#[repr(C, align(128))]
struct Local {
    cache: ThreadCache,
    state: u8,
    sampling: u8,
    reserve: Reserve,
    /// The thread's last stack walk for the profiler, used only while `sampling` is BUSY.
    walk_memo: WalkMemo,
    /// Where the profiler captures a sample's stack, used only while `sampling` is BUSY
    /// (here, not on the stack, so that no sample clears it first).
    sample_frames: [usize; crate::stack::MAX_FRAMES],
}

const SAMPLE_IDLE: u8 = 0;
/// Inside [`sampled_alloc`]: an allocation made from there is not sampled (and is counted).
const SAMPLE_BUSY: u8 = 1;
/// Writing a profile: the profiler's own allocations are not sampled.
const SAMPLE_PAUSED: u8 = 2;

#[cfg(not(feature = "small-tls"))]
thread_local! {
    static LOCAL: UnsafeCell<Local> = const {
        UnsafeCell::new(Local {
            cache: ThreadCache::new(),
            state: FRESH,
            sampling: SAMPLE_IDLE,
            reserve: Reserve::new(),
            walk_memo: WalkMemo::new(),
            sample_frames: [0; crate::stack::MAX_FRAMES],
        })
    };
}

/// This thread's slot. Valid for the thread's whole life, including its key destructors.
#[cfg(not(feature = "small-tls"))]
#[inline(always)]
fn local() -> *mut Local {
    LOCAL.with(|l| l.get())
}

/// This thread's slot for the fast paths, which make no call: as [`local`] without making
/// one (the slot of exited threads, which is never filled, for a thread that has none yet).
#[cfg(not(feature = "small-tls"))]
#[inline(always)]
fn local_for_fast_path() -> *mut Local {
    local()
}

// With the `small-tls` feature (what libspanalloc.so builds with), thread-local storage
// holds one pointer, read with the initial-exec TLS model, and the `Local` itself comes from
// the metadata allocator. A library loaded with `dlopen` then needs 8 bytes of static TLS
// (glibc keeps a few hundred spare; a whole `Local` does not fit), and the fast path never
// calls `__tls_get_addr`, which glibc may make call `malloc` (see docs/preload.md).
//
// The pointer is 0 before the thread's first request, `SLOT_DEAD` after its exit flush, and
// otherwise the thread's `Local`. `local()` makes and registers a `Local` on first use and
// answers `DEAD_LOCAL` (empty, DEAD: everything goes to the orphan cache) after the flush,
// so it never returns null, as without the feature.

#[cfg(feature = "small-tls")]
const SLOT_DEAD: usize = 1;

/// The `Local` of threads that have been flushed at exit (or could not get one). Its cache
/// is never active and never written: the fast paths read it through raw pointers (`pop`
/// finds every bin empty, `free` finds it inactive) and never form a reference to it, and a
/// DEAD state sends the slow paths to the orphan cache.
#[cfg(feature = "small-tls")]
struct DeadLocal(UnsafeCell<Local>);
// SAFETY: never written after initialisation (see above); only read.
#[cfg(feature = "small-tls")]
unsafe impl Sync for DeadLocal {}
#[cfg(feature = "small-tls")]
static DEAD_LOCAL: DeadLocal = DeadLocal(UnsafeCell::new(Local {
    cache: ThreadCache::new(),
    state: DEAD,
    sampling: SAMPLE_IDLE,
    reserve: Reserve::new(),
    walk_memo: WalkMemo::new(),
    sample_frames: [0; crate::stack::MAX_FRAMES],
}));

/// Where `Local`s come from and go back to at thread exit. A leaf lock: nothing else is
/// taken while it is held.
#[cfg(feature = "small-tls")]
static LOCALS: Lock<crate::fixed_alloc::FixedAlloc<Local>> =
    Lock::new(crate::fixed_alloc::FixedAlloc::new());

/// The thread-local pointer itself, accessed with the initial-exec model.
#[cfg(all(feature = "small-tls", target_arch = "x86_64", target_os = "linux"))]
mod slot {
    use super::Local;

    // An 8-byte `.tbss` object. Global but hidden so that code inlined into other crates
    // (the preload library) can name it; invisible outside the linked object.
    core::arch::global_asm!(
        ".pushsection .tbss.__spanalloc_local_slot,\"awT\",@nobits",
        ".globl __spanalloc_local_slot",
        ".hidden __spanalloc_local_slot",
        ".type __spanalloc_local_slot,@object",
        ".size __spanalloc_local_slot,8",
        ".p2align 3",
        "__spanalloc_local_slot:",
        ".zero 8",
        ".popsection",
    );

    /// This thread's slot value.
    #[inline(always)]
    pub fn get() -> *mut Local {
        let value: *mut Local;
        // SAFETY: initial-exec access to our own TLS object: its offset from the thread
        // pointer comes from the GOT, the thread pointer is %fs; reads 8 bytes of this
        // thread's TLS block, which exists for the thread's whole life.
        unsafe {
            core::arch::asm!(
                "mov {v}, qword ptr [rip + __spanalloc_local_slot@GOTTPOFF]",
                "mov {v}, qword ptr fs:[{v}]",
                v = out(reg) value,
                options(nostack, preserves_flags, readonly, pure),
            );
        }
        value
    }

    /// Sets this thread's slot value.
    #[inline(always)]
    pub fn set(value: *mut Local) {
        // SAFETY: as in `get`; writes this thread's own 8 bytes.
        unsafe {
            core::arch::asm!(
                "mov {off}, qword ptr [rip + __spanalloc_local_slot@GOTTPOFF]",
                "mov qword ptr fs:[{off}], {v}",
                off = out(reg) _,
                v = in(reg) value,
                options(nostack, preserves_flags),
            );
        }
    }
}

/// Elsewhere the pointer is an ordinary `const` thread local (the platform's default model).
#[cfg(all(
    feature = "small-tls",
    not(all(target_arch = "x86_64", target_os = "linux"))
))]
mod slot {
    use super::Local;
    use core::cell::Cell;

    thread_local! {
        static SLOT: Cell<*mut Local> = const { Cell::new(core::ptr::null_mut()) };
    }

    /// This thread's slot value.
    #[inline(always)]
    pub fn get() -> *mut Local {
        SLOT.with(|s| s.get())
    }

    /// Sets this thread's slot value.
    #[inline(always)]
    pub fn set(value: *mut Local) {
        SLOT.with(|s| s.set(value))
    }
}

/// This thread's slot. Valid for the thread's whole life, including its key destructors.
#[cfg(feature = "small-tls")]
#[inline(always)]
fn local() -> *mut Local {
    let l = slot::get();
    if l as usize > SLOT_DEAD {
        l
    } else {
        local_slow(l)
    }
}

/// This thread's slot for the fast paths, which make no call: as [`local`] without making
/// one (`DEAD_LOCAL`, which is never filled, for a thread that has none yet: its fast paths
/// find no object and no room, and the slow paths call [`local`]).
#[cfg(feature = "small-tls")]
#[inline(always)]
fn local_for_fast_path() -> *mut Local {
    let l = slot::get();
    if l as usize > SLOT_DEAD {
        l
    } else {
        DEAD_LOCAL.0.get()
    }
}

/// Gives the thread its `Local` on first use (registered for the exit flush), or
/// `DEAD_LOCAL` once it has been flushed.
#[cfg(feature = "small-tls")]
#[cold]
#[inline(never)]
fn local_slow(current: *mut Local) -> *mut Local {
    if current as usize == SLOT_DEAD {
        return DEAD_LOCAL.0.get();
    }
    // glibc copies the TLS initialisation image into the main thread's block after the
    // loader's first `malloc` calls, which can clear the slot: take back the `Local` this
    // thread registered, if any.
    if INIT.load(Ordering::Acquire) == INIT_DONE {
        // SAFETY: a valid key; only `register` stores values, this thread's own `Local`.
        let old = unsafe { libc::pthread_getspecific(exit_key()) };
        if !old.is_null() {
            slot::set(old.cast());
            return old.cast();
        }
    }
    let Some(record) = LOCALS.lock().alloc(HEAP.source()) else {
        return DEAD_LOCAL.0.get();
    };
    let l = record.as_ptr();
    // SAFETY: a record of `Local` size and alignment that nobody else uses; then our own.
    unsafe {
        l.write(Local {
            cache: ThreadCache::new(),
            state: FRESH,
            sampling: SAMPLE_IDLE,
            reserve: Reserve::new(),
            walk_memo: WalkMemo::new(),
            sample_frames: [0; crate::stack::MAX_FRAMES],
        });
        slot::set(l);
        register(l);
    }
    l
}

/// Gives an exited thread's flushed `Local` back and points the slot at `DEAD_LOCAL`.
///
/// # Safety
/// `l` is this thread's flushed `Local` (DEAD), or `DEAD_LOCAL`; nothing uses it afterwards.
#[cfg(feature = "small-tls")]
unsafe fn retire(l: *mut Local) {
    slot::set(SLOT_DEAD as *mut Local);
    if let Some(l) = core::ptr::NonNull::new(l).filter(|&l| l.as_ptr() != DEAD_LOCAL.0.get()) {
        // SAFETY: per the caller, it came from LOCALS and is not used again.
        unsafe { LOCALS.lock().free(l) };
    }
}

/// The heap behind the global allocator (for statistics and tests).
pub fn heap() -> &'static Heap<OsPages> {
    &HEAP
}

/// The heap profiler's table (for `profiling`).
pub fn samples() -> &'static SampleTable {
    &PROFILE
}

/// The heap profiler's cached unwind rules (for `profiling`).
pub fn unwind_rules() -> &'static RuleCache {
    &UNWIND_RULES
}

/// Runs `f` with sampling paused on the calling thread: the profiler's own work (taking and
/// writing a profile, symbolizing) stays out of the profiles.
pub(crate) fn without_sampling<R>(f: impl FnOnce() -> R) -> R {
    struct Resume(*mut Local, u8);
    impl Drop for Resume {
        fn drop(&mut self) {
            // SAFETY: our own slot, not shared (checked when made).
            unsafe { (*self.0).sampling = self.1 };
        }
    }
    let l = local();
    #[cfg(feature = "small-tls")]
    if l == DEAD_LOCAL.0.get() {
        return f();
    }
    // SAFETY: our own slot, not shared; not inside a request.
    let _resume = Resume(l, unsafe {
        core::mem::replace(&mut (*l).sampling, SAMPLE_PAUSED)
    });
    f()
}

/// Restarts the calling thread's sampling countdown under `params` with random numbers
/// from `seed` (`profiling::start` and `stop`), so that the change holds from its next
/// allocation.
pub(crate) fn restart_sampler(params: crate::sampler::Params, seed: u64) {
    let l = local();
    #[cfg(feature = "small-tls")]
    if l == DEAD_LOCAL.0.get() {
        return;
    }
    // SAFETY: our own slot, not shared; nothing else on this thread uses it now (this is
    // not called from inside a request).
    unsafe {
        if matches!((*l).state, FRESH | ACTIVE) {
            (*l).cache.sampler().restart(params, seed);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Process-wide set-up: the thread-exit key and the fork handlers, made once, on the first
// slow-path allocation of the first thread.

const INIT_NONE: u8 = 0;
const INIT_RUNNING: u8 = 1;
const INIT_DONE: u8 = 2;
static INIT: AtomicU8 = AtomicU8::new(INIT_NONE);
/// The thread-exit key, a `pthread_key_t` (`u32` on Linux, `unsigned long` on macOS).
static EXIT_KEY: AtomicUsize = AtomicUsize::new(0);

/// The thread-exit key, once `ensure_process_init` has made it.
#[inline]
fn exit_key() -> libc::pthread_key_t {
    EXIT_KEY.load(Ordering::Relaxed) as libc::pthread_key_t
}

fn ensure_process_init() {
    // Acquire pairs with the Release store below: the key is visible.
    if INIT.load(Ordering::Acquire) == INIT_DONE {
        return;
    }
    if INIT
        .compare_exchange(
            INIT_NONE,
            INIT_RUNNING,
            Ordering::Acquire,
            Ordering::Acquire,
        )
        .is_ok()
    {
        let mut key: libc::pthread_key_t = 0;
        // SAFETY: `key` is a valid out-pointer; the destructor is an `extern "C" fn`.
        if unsafe { libc::pthread_key_create(&mut key, Some(thread_exit)) } != 0 {
            fatal("pthread_key_create failed");
        }
        EXIT_KEY.store(key as usize, Ordering::Relaxed);
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
    if unsafe { libc::pthread_setspecific(exit_key(), l.cast()) } != 0 {
        // Could not register: keep to the orphan cache rather than leak spans at exit.
        // SAFETY: our own slot.
        unsafe { (*l).state = DEAD };
        return;
    }
    // SAFETY: our own slot. The reserve is the slot's, which stays in place for the
    // thread's life; it leaves the list and the cache at the exit flush (`thread_exit`),
    // before the slot is given back.
    unsafe {
        (*l).cache.activate();
        (*l).cache.attach_reserve(&(*l).reserve);
        RESERVES.insert(&(*l).reserve);
        (*l).state = ACTIVE;
    }
}

/// The thread-exit key's destructor: gives the cache's spans back.
extern "C" fn thread_exit(_value: *mut libc::c_void) {
    // With `small-tls` the key's value is the thread's `Local` (the slot may have changed).
    #[cfg(feature = "small-tls")]
    let l: *mut Local = _value.cast();
    #[cfg(not(feature = "small-tls"))]
    let l = local();
    // SAFETY: our own slot; nothing else on this thread is using it during a destructor.
    unsafe {
        if (*l).state == ACTIVE {
            (*l).state = BUSY;
            RESERVES.remove(&(*l).reserve);
            (*l).cache.flush(&HEAP);
            (*l).cache.detach_reserve();
            (*l).cache.deactivate();
        }
        (*l).state = DEAD;
    }
    // SAFETY: this thread's `Local`, flushed and DEAD; later requests see `DEAD_LOCAL`.
    #[cfg(feature = "small-tls")]
    unsafe {
        retire(l)
    };
}

extern "C" fn fork_prepare() {
    // First, holding nothing of the allocator's: no walk is in the C library's
    // `dl_iterate_phdr` at the fork, whose lock the child would otherwise inherit held (see
    // `stack::rule_cache`). A walker waits for nothing of ours there (a thread loading code
    // may allocate while the walker waits for it), and no thread waits long for this lock
    // (walks try it a bounded number of times).
    UNWIND_RULES.lock_for_fork();
    // `LOCALS` is a leaf lock: taking it first cannot wait on a thread that waits on us.
    #[cfg(feature = "small-tls")]
    LOCALS.raw_lock();
    ORPHAN.raw_lock();
    // Taken before the heap's locks, as the reclaimer takes them; once it is held no
    // reclaimer is inside any reserve.
    RESERVES.lock_for_fork();
    HEAP.lock_all();
    PROFILE.lock_for_fork();
}

extern "C" fn fork_parent() {
    // SAFETY: `fork_prepare` took these locks on this thread.
    unsafe {
        UNWIND_RULES.unlock_after_fork();
        PROFILE.unlock_after_fork();
        HEAP.unlock_all();
        RESERVES.unlock_after_fork();
        ORPHAN.raw_unlock();
        #[cfg(feature = "small-tls")]
        LOCALS.raw_unlock();
    }
}

extern "C" fn fork_child() {
    // SAFETY: `fork_prepare` took these locks in the parent on the thread that is now the
    // child's only thread. Other threads' caches are gone with them; their spans stay owned.
    unsafe {
        UNWIND_RULES.unlock_after_fork();
        UNWIND_RULES.after_fork_in_child();
        PROFILE.unlock_after_fork();
        HEAP.unlock_all();
        RESERVES.unlock_after_fork();
        ORPHAN.raw_unlock();
        #[cfg(feature = "small-tls")]
        LOCALS.raw_unlock();
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
        if align <= MIN_ALIGN {
            if size <= SMALL_STEP_LIMIT {
                // SAFETY: `size` is small.
                return unsafe { alloc_small(size) };
            } else if size < LARGE_THRESHOLD {
                // SAFETY: the size is in the medium range.
                return unsafe { alloc_medium(size) };
            } else if size <= crate::thread_cache::LISTED_MAX_BYTES {
                return alloc_large(size);
            } else {
                return alloc_large_unlisted(size);
            }
        }
        alloc_slow(size, align)
    }

    /// [`alloc`] of `size` bytes at most `SMALL_STEP_LIMIT`, aligned to `MIN_ALIGN`: the
    /// newest object of its bin, else the slow path.
    ///
    /// # Safety
    /// `size <= SMALL_STEP_LIMIT`.
    #[inline(always)]
    pub unsafe fn alloc_small(size: usize) -> *mut u8 {
        // SAFETY: our own slot (or the never-filled one of exited threads); the fast path
        // makes no call that could re-enter. `size` is small, per the caller.
        let cache = unsafe { &raw mut (*local_for_fast_path()).cache };
        // SAFETY: as above.
        let obj = unsafe { ThreadCache::pop_small_raw(cache, size) };
        // SAFETY: popped from this cache for this request, if anything.
        unsafe { popped_or_slow(cache, obj, size) }
    }

    /// Frees `ptr`, allocated with `size` and `align`.
    ///
    /// # Safety
    /// `ptr` came from [`alloc`] (or the other allocation functions here) with this size and
    /// alignment, and is not used afterwards.
    #[inline(always)]
    pub unsafe fn dealloc(ptr: *mut u8, size: usize, align: usize) {
        // Debug and hardened builds: the layout must name the class the page map knows. The
        // fast path takes only an object whose page names the class of `size`, which for an
        // alignment of at most MIN_ALIGN is the layout's class (`size_class::class_for`):
        // the check then waits for the fast path to refuse, and costs nothing when it
        // does not.
        let checked = cfg!(debug_assertions) || cfg!(feature = "hardened");
        if checked && align > MIN_ALIGN {
            crate::thread_cache::check_layout(&HEAP, ptr, size, align);
        }
        // SAFETY: per the caller.
        if unsafe { dealloc_fast(ptr, size) } {
            return;
        }
        if checked && align <= MIN_ALIGN {
            crate::thread_cache::check_layout(&HEAP, ptr, size, align);
        }
        // SAFETY: per the caller.
        unsafe { free_slow(ptr) }
    }

    /// The fast path of [`dealloc`] alone: the bin comes from `size`, as allocation finds
    /// it, and the page map's word must name the same class and an object's start (the
    /// checks of [`free`], with the push not waiting for the page-map loads). Returns
    /// `false`, having done nothing, for anything else (another class, a large object, a
    /// bad pointer, a full bin): then call [`free`]. Makes no call outside the allocator on
    /// the common path.
    ///
    /// # Safety
    /// As [`free`]; `size` is the size `ptr` was allocated with (or another; then this
    /// returns `false` unless it names the same class).
    #[inline(always)]
    pub unsafe fn dealloc_fast(ptr: *mut u8, size: usize) -> bool {
        if size <= SMALL_STEP_LIMIT {
            let word = HEAP.page_map().small_word_of(ptr as usize);
            // SAFETY: our own slot (or the never-written one of exited threads); as in
            // `free_fast`; `size` is small.
            unsafe {
                ThreadCache::push_sized_raw(
                    &raw mut (*local_for_fast_path()).cache,
                    ptr,
                    word,
                    size,
                )
            }
        } else if size < LARGE_THRESHOLD {
            // SAFETY: per the caller.
            unsafe { dealloc_medium(ptr, size) }
        } else {
            false
        }
    }

    /// As [`alloc`], with the first `size` bytes zero.
    ///
    /// # Safety
    /// `align` is a power of two.
    pub unsafe fn alloc_zeroed(size: usize, align: usize) -> *mut u8 {
        alloc_charged(size, align, true)
    }

    /// Frees `ptr` without its size (C `free`). Stops the process with a message on a pointer
    /// spanalloc did not hand out, where the page map can tell.
    ///
    /// # Safety
    /// `ptr` is non-null; if spanalloc handed it out, it is not used afterwards.
    #[inline(always)]
    pub unsafe fn free(ptr: *mut u8) {
        // SAFETY: per the caller.
        if !unsafe { free_fast(ptr) } {
            // SAFETY: per the caller.
            unsafe { free_slow(ptr) }
        }
    }

    /// The fast path of [`free`] alone: pushes `ptr`, the start of a small object, on this
    /// thread's bin of its class and returns `true`; otherwise does nothing and returns
    /// `false` (then call [`free`]). Makes no call outside the allocator on the common path
    /// (the C library keeps its `errno` handling off it).
    ///
    /// # Safety
    /// As [`free`].
    #[inline(always)]
    pub unsafe fn free_fast(ptr: *mut u8) -> bool {
        // SAFETY: per the caller; the word of its page.
        unsafe { free_fast_with_word(ptr, page_word(ptr)) }
    }

    /// The free of a large object that the thread's stash (or, for a sampled object, its
    /// large lists) takes with no lock and no system call (see
    /// `ThreadCache::free_large_to_stash`), for a caller that tried [`free_fast`] first.
    /// Returns `false`, having done nothing (but take a sampled object's record out of the
    /// profile), for anything else: then call [`free_past_fast`].
    ///
    /// # Safety
    /// As [`free`].
    #[inline]
    pub unsafe fn free_large_fast(ptr: *mut u8) -> bool {
        // SAFETY: per the caller; the word of its page.
        unsafe { free_large_fast_with_word(ptr, page_word(ptr)) }
    }

    /// The rest of [`free`] once [`free_fast`] and [`free_large_fast`] returned `false`:
    /// the large objects the stash does not take, the full-bin, inactive-cache and
    /// bad-pointer cases, without the fast paths' tests again.
    ///
    /// # Safety
    /// As [`free`].
    #[inline]
    pub unsafe fn free_past_fast(ptr: *mut u8) {
        // SAFETY: per the caller.
        unsafe { free_rest(ptr) }
    }

    /// Resizes `ptr` (allocated with `align`) to `new_size` bytes. Null on failure, leaving
    /// `ptr` intact.
    ///
    /// # Safety
    /// `ptr` was handed out by spanalloc with alignment `align`; unless null is returned it
    /// is not used afterwards.
    pub unsafe fn realloc(ptr: *mut u8, new_size: usize, align: usize) -> *mut u8 {
        // A move allocates: it is charged; one in place is not.
        // SAFETY: the closure gets exclusive use of a cache; per the caller.
        let (new, sample) = unsafe {
            with_cache(|cache| {
                let new = cache.realloc(&HEAP, ptr, align, new_size);
                let moved = new != ptr && !new.is_null();
                let sample = moved
                    .then(|| cache.sampler().sample(new_size, params))
                    .flatten();
                (new, sample)
            })
        };
        match sample {
            // SAFETY: `new` is the live object just made for this request.
            Some(weight) => unsafe { resample(new, new_size, align, weight) },
            None => new,
        }
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
        let mut orphan = ORPHAN.lock();
        orphan.activate();
        f(&mut orphan)
    }
}

/// The small-object word of the page of `ptr` (see `page_map::small_word`): what the
/// sizeless free's fast paths need, read once.
#[inline(always)]
pub(crate) fn page_word(ptr: *mut u8) -> usize {
    HEAP.page_map().small_word_of(ptr as usize)
}

/// [`raw::free_fast`] with `word`, the small-object word of the page of `ptr`, read by the
/// caller.
///
/// # Safety
/// As [`raw::free`].
#[inline(always)]
pub(crate) unsafe fn free_fast_with_word(ptr: *mut u8, word: usize) -> bool {
    // SAFETY: our own slot (or the never-written one of exited threads).
    let cache = unsafe { &raw mut (*local_for_fast_path()).cache };
    // SAFETY: a cache with room in a bin is active, so this thread's alone (a shared one
    // never has room and is only read); the fast path makes no call that could re-enter;
    // per the caller.
    unsafe { ThreadCache::push_small_raw(cache, ptr, word) }
}

/// The free of a large object onto this thread's list of its length, when `word`, the
/// small-object word of the page of `ptr`, is its listed word and the lists take it
/// (`ThreadCache::push_listed_raw`); `false`, having done nothing, otherwise.
///
/// # Safety
/// As [`raw::free`].
#[inline(always)]
pub(crate) unsafe fn free_listed_fast_with_word(ptr: *mut u8, word: usize) -> bool {
    // SAFETY: our own slot (or the never-written one of exited threads, never active, which
    // the push only reads); per the caller, with the word of its page.
    unsafe { ThreadCache::push_listed_raw(&raw mut (*local_for_fast_path()).cache, ptr, word) }
}

/// [`raw::free_large_fast`] with `word`, the small-object word of the page of `ptr`, read by
/// the caller: the span record comes from it (`page_map::large_word`), in the cache line
/// the small-object test has just read, rather than from the leaf's span entry.
///
/// # Safety
/// As [`raw::free`].
#[inline]
pub(crate) unsafe fn free_large_fast_with_word(ptr: *mut u8, word: usize) -> bool {
    let addr = ptr as usize;
    if crate::page_map::word_listed_large(word).is_some() {
        // SAFETY: per the caller.
        return unsafe { free_listed_fast_with_word(ptr, word) };
    }
    let span = crate::page_map::word_large_span(word);
    // SAFETY: span records are never unmapped, and the fields read are atomics (a record
    // given back and reused is rewritten atomically); a stale word names a record whose
    // kind or start the test below rejects.
    let Some(s) = (unsafe { span.as_ref() }) else {
        return false;
    };
    if s.kind() != crate::span::SpanKind::Large || s.start_addr() != addr {
        return false;
    }
    let l = local_for_fast_path();
    // SAFETY: our own slot (or the never-written one of threads without one, never ACTIVE).
    if unsafe { (*l).state } != ACTIVE {
        return false;
    }
    // SAFETY: our own slot, ACTIVE, and no reference into it alive (as in `with_cache`); a
    // large object's span, checked above, that the caller gives up.
    unsafe {
        (*l).cache
            .free_large_to_stash(&HEAP, core::ptr::NonNull::from(s))
    }
}

/// The free of a large object, of a bad pointer, or from a thread whose cache is not active
/// (FRESH: registered now; BUSY or DEAD: the orphan cache).
///
/// # Safety
/// As [`raw::free`].
#[cold]
#[inline(never)]
unsafe fn free_slow(ptr: *mut u8) {
    // SAFETY: per the caller.
    if !unsafe { raw::free_large_fast(ptr) } {
        // SAFETY: per the caller.
        unsafe { free_rest(ptr) }
    }
}

/// [`free_slow`] past the stash's fast path.
///
/// # Safety
/// As [`raw::free`].
#[inline(never)]
unsafe fn free_rest(ptr: *mut u8) {
    // A large object (its page has no small-object word) goes straight to the stash or the
    // page heap: one page-map lookup, not the small path's tests first.
    if crate::page_map::word_class(page_word(ptr)) == 0 {
        if let crate::heap::Owner::Large(span) = HEAP.owner(ptr) {
            // SAFETY: the closure gets exclusive use of a cache; `owner` validated the span,
            // and the caller gives the object up.
            return unsafe { with_cache(|cache| cache.free_large(&HEAP, span)) };
        }
    }
    // SAFETY: the closure gets exclusive use of a cache; per the caller.
    unsafe { with_cache(|cache| cache.free(&HEAP, ptr)) }
}

// The fast paths of 1 KiB to 32 KiB: the same as below 1 KiB with the second size table,
// out of line so that the sub-KiB paths keep their length (inlined together, the two
// lookups merge into one with a variable shift).

/// The medium-size part of [`raw::dealloc_fast`].
///
/// # Safety
/// As [`raw::dealloc_fast`], with `SMALL_STEP_LIMIT < size < LARGE_THRESHOLD`.
#[inline(never)]
unsafe fn dealloc_medium(ptr: *mut u8, size: usize) -> bool {
    // SAFETY: per the caller (lets the table index go unchecked).
    unsafe { core::hint::assert_unchecked(size > SMALL_STEP_LIMIT && size < LARGE_THRESHOLD) };
    let class = size_class::class_of_medium(size);
    let word = HEAP.page_map().small_word_of(ptr as usize);
    // SAFETY: as in `raw::dealloc_fast`.
    unsafe {
        ThreadCache::push_class_raw_of(&raw mut (*local_for_fast_path()).cache, ptr, word, class)
    }
}

/// # Safety
/// `SMALL_STEP_LIMIT < size < LARGE_THRESHOLD`.
#[inline(never)]
unsafe fn alloc_medium(size: usize) -> *mut u8 {
    // SAFETY: per the caller (lets the table index go unchecked).
    unsafe { core::hint::assert_unchecked(size > SMALL_STEP_LIMIT && size < LARGE_THRESHOLD) };
    let class = size_class::class_of_medium(size);
    // SAFETY: as in `raw::alloc_small`.
    let cache = unsafe { &raw mut (*local_for_fast_path()).cache };
    // SAFETY: as in `raw::alloc_small`.
    let obj = unsafe { ThreadCache::pop_raw(cache, class) };
    // SAFETY: popped from this cache for this request, if anything.
    unsafe { popped_or_slow(cache, obj, size) }
}

/// The end of a small or medium fast path that popped `obj` (null: the bin was empty) for
/// `size` bytes at most `MIN_ALIGN` aligned: the object charged to the sampler, or
/// sampled, or the slow path.
///
/// # Safety
/// `cache` is the calling thread's fast-path cache, and `obj`, if not null, was just
/// popped from it for this request.
#[inline(always)]
unsafe fn popped_or_slow(cache: *mut ThreadCache, obj: *mut u8, size: usize) -> *mut u8 {
    if !obj.is_null() {
        // SAFETY: it held an object, so it is this thread's own active cache.
        if unsafe { ThreadCache::charge_raw(cache, size) } {
            return obj;
        }
        // SAFETY: `obj` was just popped for this request.
        return unsafe { sample_popped(obj, size) };
    }
    alloc_slow(size, MIN_ALIGN)
}

/// A large request of a length the thread cache's large lists keep (from
/// `LARGE_THRESHOLD` to `LISTED_MAX_BYTES`, alignment at most `MIN_ALIGN`), without the
/// general path's class lookup and dispatch: the newest listed object of its length,
/// charged after the pop as the small fast path does (the common case of programs that
/// keep replacing large buffers), else [`alloc_large_unlisted`].
#[inline(never)]
fn alloc_large(size: usize) -> *mut u8 {
    // SAFETY: our own slot (or the never-written one of exited threads, whose lists are
    // empty and only read).
    let cache = unsafe { &raw mut (*local_for_fast_path()).cache };
    // SAFETY: as above.
    let obj = unsafe { ThreadCache::pop_listed_raw(cache, &HEAP, size) };
    if !obj.is_null() {
        // SAFETY: it held an object, so it is this thread's own active cache.
        if unsafe { ThreadCache::charge_raw(cache, size) } {
            return obj;
        }
        // SAFETY: `obj` was just popped for this request.
        return unsafe { sample_popped(obj, size) };
    }
    alloc_large_unlisted(size)
}

/// A large request past the large lists (a longer one, or one whose list was empty) from
/// a thread with an active cache: charged, then the stash or the page heap. Anything else
/// takes [`alloc_slow`].
#[inline(never)]
fn alloc_large_unlisted(size: usize) -> *mut u8 {
    let l = local();
    // SAFETY: our own slot (or the shared one of exited threads, never ACTIVE).
    if unsafe { (*l).state } != ACTIVE {
        return alloc_slow(size, MIN_ALIGN);
    }
    // SAFETY: our own slot, ACTIVE: nothing else on this thread uses the cache now (as in
    // `with_cache`).
    let cache = unsafe { &mut (*l).cache };
    if !cache.sampler().charge(size) {
        return alloc_large_crossed(size);
    }
    cache.alloc_large_unlisted(&HEAP, size, MIN_ALIGN)
}

/// [`alloc_large`] whose charge crossed the countdown: sampled, or served as usual if the
/// crossing samples nothing. Apart, so that the common path keeps no frame for the
/// profiler's setting.
#[cold]
#[inline(never)]
fn alloc_large_crossed(size: usize) -> *mut u8 {
    let l = local();
    // SAFETY: our own slot, ACTIVE (checked by the caller, and nothing since ran on this
    // thread that could change it): as in `alloc_large`.
    let cache = unsafe { &mut (*l).cache };
    match cache.sampler().crossed(size, params()) {
        Some(weight) => sampled_alloc(size, MIN_ALIGN, false, weight),
        None => cache.alloc_large(&HEAP, size, MIN_ALIGN),
    }
}

#[cold]
#[inline(never)]
fn alloc_slow(size: usize, align: usize) -> *mut u8 {
    alloc_charged(size, align, false)
}

/// An allocation past the fast paths (or zeroed): charged to the cache's countdown, then
/// served by the cache, or sampled.
#[inline]
fn alloc_charged(size: usize, align: usize, zeroed: bool) -> *mut u8 {
    // SAFETY: the closure gets exclusive use of a cache.
    let served = unsafe {
        with_cache(|cache| match cache.sampler().sample(size, params) {
            None if zeroed => Ok(cache.alloc_zeroed(&HEAP, size, align)),
            None => Ok(cache.alloc(&HEAP, size, align)),
            Some(weight) => Err(weight),
        })
    };
    served.unwrap_or_else(|weight| sampled_alloc(size, align, zeroed, weight))
}

/// The profiler's setting, for a countdown that crossed.
fn params() -> crate::sampler::Params {
    PROFILE.params()
}

/// A fast-path allocation whose charge crossed the countdown: `obj`, popped for it, is
/// handed out if the crossing samples nothing (a recheck while profiling is off), or goes
/// back to its bin for the sampled object.
///
/// # Safety
/// `obj` was popped from this thread's active cache for a request of `size` bytes (at
/// most `MIN_ALIGN` aligned: a fast path's), and is not used otherwise.
#[cold]
#[inline(never)]
unsafe fn sample_popped(obj: *mut u8, size: usize) -> *mut u8 {
    let l = local();
    // SAFETY: our own slot; an object came from its cache, so it is ACTIVE and not in use.
    let weight = unsafe { (*l).cache.sampler().crossed(size, params()) };
    match weight {
        None => obj,
        Some(weight) => {
            // SAFETY: ours, unused: back to its bin (not a free of the program's: uncounted;
            // the cache is ACTIVE, so the free went to it).
            unsafe {
                raw::free(obj);
                (*l).cache.uncount_free();
            }
            sampled_alloc(size, MIN_ALIGN, false, weight)
        }
    }
}

/// A moved `realloc` whose charge crossed the countdown: a large `new` is recorded as the
/// sample where it is; a small one is replaced by a sampled object, and freed (or kept, if
/// the sampled object cannot be made).
///
/// # Safety
/// `new` is a live object of at least `size` bytes, just made for this request.
#[cold]
#[inline(never)]
unsafe fn resample(new: *mut u8, size: usize, align: usize, weight: usize) -> *mut u8 {
    if size_class::class_for(size, align).is_none() {
        with_sampled_stack(|frames, site| {
            PROFILE.record_large(&HEAP, new, size, frames, weight, site)
        });
        return new;
    }
    let sampled = sampled_alloc(size, align, false, weight);
    if sampled.is_null() {
        return new;
    }
    // SAFETY: both are live and distinct, of at least `size` bytes; `new` is ours to free
    // (not a free of the program's: uncounted, in the cache the free went to, as `with_cache`
    // picks it for both).
    unsafe {
        core::ptr::copy_nonoverlapping(new, sampled, size);
        raw::free(new);
        with_cache(|cache| cache.uncount_free());
    }
    sampled
}

/// The sampled allocation. A large request is served as any other (the thread's stash or
/// the page heap), and the object is recorded where it is; a small one becomes a large
/// object of its class's size, made the same way (so most often from the span of the last
/// such sample, freed into the stash), recorded in the profiler's table. An allocation
/// that comes back here from inside (something this called allocated) is served unsampled
/// and counted; so is one while the thread writes a profile, or from a thread that has no
/// slot of its own any more, uncounted.
#[cold]
#[inline(never)]
fn sampled_alloc(size: usize, align: usize, zeroed: bool, weight: usize) -> *mut u8 {
    if size_class::class_for(size, align).is_none() {
        let p = alloc_unsampled(size, align, zeroed);
        if !p.is_null() {
            with_sampled_stack(|frames, site| {
                PROFILE.record_large(&HEAP, p, size, frames, weight, site)
            });
        }
        return p;
    }
    // The object's span through the thread's cache, as a large object's: the span a sampled
    // object of this length left in the stash when freed, when there is one, so that
    // sampling a class's objects over and over costs no page-heap lock.
    let make_large = |bytes: usize, align: usize| {
        // SAFETY: the closure gets exclusive use of a cache.
        let p = unsafe { with_cache(|cache| cache.alloc_large(&HEAP, bytes, align)) };
        core::ptr::NonNull::new(p).map(|p| (p, false))
    };
    with_sampled_stack(|frames, site| {
        PROFILE.alloc_sampled(&HEAP, size, align, zeroed, frames, weight, make_large, site)
    })
    .filter(|p| !p.is_null())
    .unwrap_or_else(|| alloc_unsampled(size, align, zeroed))
}

/// Runs `make` with the stack captured here (its caller's frame left out: this is inlined
/// into it, and capturing takes no lock) and where `PROFILE` counted those frames last, if
/// the capture replayed the thread's last walk (`make` sets it to where they are counted
/// now), the thread marked as sampling so that an allocation from inside is served
/// unsampled. `None`, without running `make`, when this
/// thread cannot sample now: it is sampling already (counted), it is writing a profile,
/// or it has no slot of its own any more.
#[inline(always)]
fn with_sampled_stack<R>(make: impl FnOnce(&[usize], &mut Site) -> R) -> Option<R> {
    let l = local();
    #[cfg(feature = "small-tls")]
    let shared = l == DEAD_LOCAL.0.get();
    #[cfg(not(feature = "small-tls"))]
    let shared = false;
    // A thread past its exit flush with no slot of its own samples nothing.
    let now = if shared {
        SAMPLE_PAUSED
    } else {
        // SAFETY: our own slot, not shared.
        unsafe { (*l).sampling }
    };
    if now != SAMPLE_IDLE {
        if now == SAMPLE_BUSY {
            PROFILE.note_reentered();
        }
        return None;
    }
    // SAFETY: our own slot, not shared.
    unsafe { (*l).sampling = SAMPLE_BUSY };
    // SAFETY: our own slot, not shared; only a BUSY thread's sampling touches the memo and
    // the frames.
    let (memo, frames) = unsafe { (&mut (*l).walk_memo, &mut (*l).sample_frames) };
    // Leaves out the caller's frame (this function is inlined into it).
    let depth = crate::stack::capture(frames, 1, &UNWIND_RULES, Some(&mut *memo));
    // SAFETY: the memo's tag is set only here, to the site `PROFILE` returned for the
    // frames of the walk the memo holds, and a capture keeps it only when it replays that
    // walk (see `WalkMemo::tag`): null, or the site of these frames in `PROFILE`.
    let mut site = unsafe { Site::from_tag(memo.tag()) };
    let made = make(&frames[..depth], &mut site);
    memo.set_tag(site.tag());
    // SAFETY: our own slot.
    unsafe { (*l).sampling = SAMPLE_IDLE };
    Some(made)
}

/// An allocation served by the cache with no charge (the sampled path's fallback).
fn alloc_unsampled(size: usize, align: usize, zeroed: bool) -> *mut u8 {
    // SAFETY: the closure gets exclusive use of a cache.
    unsafe {
        with_cache(|cache| {
            if zeroed {
                cache.alloc_zeroed(&HEAP, size, align)
            } else {
                cache.alloc(&HEAP, size, align)
            }
        })
    }
}

/// `GlobalAlloc::realloc` past its inline same-class and same-pages shortcuts, where the old
/// size is known (`raw::realloc` serves C, which does not know it). Out of line, so that the
/// shortcuts inline into every caller at their length.
///
/// # Safety
/// `ptr` came from [`raw::alloc`] (or `realloc`) with `old_size` and `align`; unless null is
/// returned it is not used afterwards.
#[inline(never)]
unsafe fn realloc_sized(ptr: *mut u8, align: usize, old_size: usize, new_size: usize) -> *mut u8 {
    // Growing a page span's object (a large object, or a buffer given a page span to grow
    // in) within its pages: one page-map lookup, no lock. First, as the buffer that keeps
    // growing comes here most, and with the moves below as tail calls this needs no frame.
    if old_size > SMALL_STEP_LIMIT && new_size > old_size && new_size <= HEAP.large_room(ptr) {
        return ptr;
    }
    if align <= MIN_ALIGN && old_size <= MAX_SMALL_SIZE && new_size < LEND_MIN {
        // SAFETY: per the caller, and the sizes just checked.
        return unsafe { move_small(ptr, align, old_size, new_size) };
    }
    // SAFETY: per the caller.
    unsafe { raw::realloc(ptr, new_size, align) }
}

/// Moves a small object to the class of `new_size` (below `LEND_MIN`: a short buffer
/// growing) through the allocation and free fast paths; the general path when the new
/// class's bin is empty. (An object that is not in its layout's class, such as a page-span
/// buffer shrunk in place, moves just as well: the free finds its span.)
///
/// # Safety
/// As [`realloc_sized`], with `align <= MIN_ALIGN`, `old_size <= MAX_SMALL_SIZE` and
/// `new_size < LEND_MIN`.
#[inline(never)]
unsafe fn move_small(ptr: *mut u8, align: usize, old_size: usize, new_size: usize) -> *mut u8 {
    let l = local();
    // SAFETY: our own slot; read through the raw pointer (see `raw::free`).
    if !unsafe { ThreadCache::is_active(&raw const (*l).cache) } {
        // SAFETY: per the caller.
        return unsafe { raw::realloc(ptr, new_size, align) };
    }
    // SAFETY: our own slot, active: this thread's alone; the fast path makes no call that
    // could re-enter.
    let new = unsafe { (*l).cache.pop_for_move(old_size, new_size) };
    if new.is_null() {
        // SAFETY: per the caller.
        return unsafe { raw::realloc(ptr, new_size, align) };
    }
    // SAFETY: `ptr` is live with `old_size` bytes, `new` a distinct new object of `new_size`;
    // `ptr` is given up, with its layout.
    unsafe {
        core::ptr::copy_nonoverlapping(ptr, new, old_size.min(new_size));
        raw::dealloc(ptr, old_size, align);
    }
    // SAFETY: our own slot, active (checked above).
    if !unsafe { (*l).cache.sampler().charge(new_size) } {
        // SAFETY: as above.
        if let Some(weight) = unsafe { (*l).cache.sampler().crossed(new_size, params()) } {
            // SAFETY: `new` is the live object just made for this request.
            return unsafe { resample(new, new_size, align, weight) };
        }
    }
    new
}

/// Gives the calling thread's cached objects back to the central lists, so that memory this
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

/// Gives every free page back to the OS now (with `MADV_DONTNEED`), after handing the
/// calling thread's cached objects, every thread's reserve (what a cache keeps past its
/// bins' 1 MiB) and the central lists' kept batches and spare spans back to their spans.
/// Returns the bytes given back. (Other threads' bins keep their free objects, at most
/// 1 MiB a thread, until those threads exit, call [`flush_thread_cache`] or make requests
/// again.)
pub fn release_free_memory() -> usize {
    let l = local();
    // SAFETY: our own slot; ACTIVE: nothing else on this thread uses the cache now.
    unsafe {
        if (*l).state == ACTIVE {
            (*l).cache.trim_now(&HEAP);
        }
    }
    // SAFETY: every reserve in the list is a cache's over HEAP.
    unsafe { RESERVES.reclaim(&HEAP, Reclaim::All) };
    HEAP.release_free_memory()
}

/// One round of the background release: the reserves of threads idle for the decay time,
/// then the free pages due. Returns the bytes of pages given back.
fn release_due() -> usize {
    if let Ok(decay) = u64::try_from(HEAP.decay_ms()) {
        // SAFETY: every reserve in the list is a cache's over HEAP.
        unsafe { RESERVES.reclaim(&HEAP, Reclaim::IdleFor(decay)) };
    }
    HEAP.release_due()
}

static BACKGROUND_RELEASE: AtomicU8 = AtomicU8::new(0);

/// Starts a thread that gives free memory back to the OS on time even while the program makes
/// no allocator call at all (a program that frees and then sleeps), and takes back what the
/// caches of threads idle for the decay time keep past their bins' 1 MiB. Without it, the
/// decay release runs from the allocator's own slow paths and idle threads keep their
/// caches. The thread wakes every quarter of the decay time. Returns `false` if it was
/// already started (or could not be). Call it from ordinary code, not from inside an
/// allocation (it spawns a thread).
pub fn start_background_release() -> bool {
    if BACKGROUND_RELEASE.swap(1, Ordering::Relaxed) != 0 {
        return false;
    }
    let spawned = std::thread::Builder::new()
        .name("spanalloc-release".into())
        .spawn(|| {
            loop {
                let decay = HEAP.decay_ms();
                let nap = if decay <= 0 {
                    100
                } else {
                    (decay / 4).clamp(1, 1000)
                };
                std::thread::sleep(std::time::Duration::from_millis(nap as u64));
                release_due();
            }
        });
    spawned.is_ok()
}

/// Sets how long free pages stay resident before the allocator gives them back to the OS on
/// its own: `ms` milliseconds (default 500, or `SPANALLOC_DECAY_MS` from the environment);
/// 0 gives them back at once; a negative value never (only [`release_free_memory`]).
pub fn set_decay_ms(ms: i64) {
    HEAP.set_decay_ms(ms);
}

/// Sets the most bytes of free small objects one thread's cache keeps in all (default
/// 4 MiB, or `SPANALLOC_THREAD_CACHE_BYTES`). Every bin keeps room for one batch whatever
/// the value; caches over the bound shrink as their threads free into them.
pub fn set_thread_cache_bytes(bytes: usize) {
    HEAP.set_thread_cache_bytes(bytes);
}

/// Sets the most bytes of free objects of one size class a thread's cache keeps (default
/// 256 KiB, or `SPANALLOC_BIN_BYTES`; at least two batches whatever the value).
pub fn set_bin_bytes(bytes: usize) {
    HEAP.set_bin_bytes(bytes);
}

/// A snapshot of where the allocator's memory is (see [`crate::stats::Stats`]). Exact for
/// the calling thread's cache and every thread's reserve; objects in other threads' bins
/// (at most 1 MiB a thread) are counted as in use unless those threads called
/// [`flush_thread_cache`] (or exited).
pub fn stats() -> crate::stats::Stats {
    use crate::stats::CacheView;
    let l = local();
    // The orphan cache is read in one bounded step under its lock, which is dropped before
    // the snapshot takes the central and page heap locks one at a time.
    let orphan = CacheView::of(&ORPHAN.lock());
    let reserves = CacheView::of_reserves(&RESERVES);
    // SAFETY: our own slot; the snapshot only reads the cache, and makes no allocation.
    match unsafe { ((*l).state == ACTIVE).then(|| CacheView::of(&(*l).cache)) } {
        Some(own) => crate::stats::snapshot(&HEAP, &[own, orphan, reserves]),
        None => crate::stats::snapshot(&HEAP, &[orphan, reserves]),
    }
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
        let old_size = layout.size();
        // A large object's span has at least the pages its size needs (allocation, growth
        // and shrinking in place all keep that): a new size needing the same pages fits,
        // with no lookup and no lock (a buffer growing by small steps).
        if old_size >= LARGE_THRESHOLD
            && new_size >= LARGE_THRESHOLD
            && (old_size - 1) >> PAGE_SHIFT == (new_size - 1) >> PAGE_SHIFT
        {
            return ptr;
        }
        if let (Some(old), Some(new)) = (
            size_class::class_for(layout.size(), align),
            size_class::class_for(new_size, align),
        ) {
            if old == new {
                return ptr;
            }
        }
        // SAFETY: per GlobalAlloc's contract, `ptr` came from us with `layout`.
        unsafe { realloc_sized(ptr, align, old_size, new_size) }
    }
}
