//! The one place that chooses between real and loom-modelled atomics, cells and the lock.
//! See `lib.rs` for an overview.
//!
//! Everything else imports atomics from here. Under `cfg(loom)` they are loom's, so the
//! protocols in `span.rs`, `central_free_list.rs` and `page_map.rs` can be model-checked.
//!
//! [`Lock`] is the allocator's own lock. It never allocates (unlike `parking_lot`, whose
//! contended path allocates, or `std::sync::Mutex` on some platforms): it spins with
//! `crossbeam_utils::Backoff`, then sleeps in the kernel (`sys::futex_wait`: the futex on
//! Linux, `__ulock_wait` on macOS).

pub use core::sync::atomic::Ordering;
#[cfg(not(loom))]
pub use core::sync::atomic::{
    AtomicBool, AtomicI64, AtomicPtr, AtomicU8, AtomicU32, AtomicU64, AtomicUsize,
};
#[cfg(loom)]
pub use loom::sync::atomic::{
    AtomicBool, AtomicI64, AtomicPtr, AtomicU8, AtomicU32, AtomicU64, AtomicUsize,
};

use core::ops::{Deref, DerefMut};

/// A cell whose contents are guarded by something outside it (a lock, or ownership by one
/// thread), with loom's `with` / `with_mut` interface so loom can check the accesses.
#[derive(Debug)]
pub struct GuardedCell<T> {
    #[cfg(not(loom))]
    inner: core::cell::UnsafeCell<T>,
    #[cfg(loom)]
    inner: loom::cell::UnsafeCell<T>,
}

impl<T> GuardedCell<T> {
    /// A cell holding `value`.
    #[cfg(not(loom))]
    pub const fn new(value: T) -> Self {
        GuardedCell {
            inner: core::cell::UnsafeCell::new(value),
        }
    }

    /// A cell holding `value`.
    #[cfg(loom)]
    pub fn new(value: T) -> Self {
        GuardedCell {
            inner: loom::cell::UnsafeCell::new(value),
        }
    }

    /// Calls `f` with a shared pointer to the contents.
    ///
    /// # Safety
    /// The caller holds whatever guards this cell (no concurrent `with_mut`).
    #[inline(always)]
    pub unsafe fn with<R>(&self, f: impl FnOnce(*const T) -> R) -> R {
        #[cfg(not(loom))]
        {
            f(self.inner.get())
        }
        #[cfg(loom)]
        {
            self.inner.with(f)
        }
    }

    /// Calls `f` with an exclusive pointer to the contents.
    ///
    /// # Safety
    /// The caller holds whatever guards this cell (no concurrent access at all).
    #[inline(always)]
    pub unsafe fn with_mut<R>(&self, f: impl FnOnce(*mut T) -> R) -> R {
        #[cfg(not(loom))]
        {
            f(self.inner.get())
        }
        #[cfg(loom)]
        {
            self.inner.with_mut(f)
        }
    }
}

impl<T: Copy> GuardedCell<T> {
    /// Reads the contents.
    ///
    /// # Safety
    /// As [`GuardedCell::with`].
    #[inline(always)]
    pub unsafe fn get(&self) -> T {
        // SAFETY: the caller holds the guard; the pointer is valid for reads.
        unsafe { self.with(|p| *p) }
    }

    /// Replaces the contents.
    ///
    /// # Safety
    /// As [`GuardedCell::with_mut`].
    #[inline(always)]
    pub unsafe fn set(&self, value: T) {
        // SAFETY: the caller holds the guard exclusively; the pointer is valid for writes.
        unsafe { self.with_mut(|p| *p = value) }
    }
}

// SAFETY: access is synchronised by the external guard that every accessor requires.
unsafe impl<T: Send> Sync for GuardedCell<T> {}
// SAFETY: as above; moving the cell moves its `T`.
unsafe impl<T: Send> Send for GuardedCell<T> {}

const UNLOCKED: u32 = 0;
const LOCKED: u32 = 1;
/// Locked, and a thread may be asleep on the futex waiting for it.
const CONTENDED: u32 = 2;

/// A lock that never allocates: a compare-and-swap to take it, a short spin with backoff,
/// then a futex sleep. Taken through a [`LockGuard`].
pub struct Lock<T> {
    state: AtomicU32,
    value: GuardedCell<T>,
}

// SAFETY: the lock gives one thread at a time access to `value`.
unsafe impl<T: Send> Sync for Lock<T> {}
// SAFETY: as above.
unsafe impl<T: Send> Send for Lock<T> {}

impl<T> Lock<T> {
    /// An unlocked lock holding `value`.
    #[cfg(not(loom))]
    pub const fn new(value: T) -> Self {
        Lock {
            state: AtomicU32::new(UNLOCKED),
            value: GuardedCell::new(value),
        }
    }

    /// An unlocked lock holding `value`.
    #[cfg(loom)]
    pub fn new(value: T) -> Self {
        Lock {
            state: AtomicU32::new(UNLOCKED),
            value: GuardedCell::new(value),
        }
    }

    /// Takes the lock, waiting as long as it takes.
    #[inline]
    pub fn lock(&self) -> LockGuard<'_, T> {
        self.raw_lock();
        LockGuard { lock: self }
    }

    /// Takes the lock if it is free right now.
    #[inline]
    pub fn try_lock(&self) -> Option<LockGuard<'_, T>> {
        // Acquire pairs with the Release in `raw_unlock` of the previous holder.
        self.state
            .compare_exchange(UNLOCKED, LOCKED, Ordering::Acquire, Ordering::Relaxed)
            .ok()
            .map(|_| LockGuard { lock: self })
    }

    /// Takes the lock without making a guard; for `fork` handlers, which take every lock in
    /// one callback and release them in another.
    #[inline]
    pub fn raw_lock(&self) {
        // Acquire pairs with the Release in `raw_unlock` of the previous holder.
        if self
            .state
            .compare_exchange(UNLOCKED, LOCKED, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            self.lock_contended();
        }
    }

    #[cold]
    #[inline(never)]
    fn lock_contended(&self) {
        let backoff = crossbeam_utils::Backoff::new();
        loop {
            let s = self.state.load(Ordering::Relaxed);
            // Acquire pairs with the Release in `raw_unlock`.
            if s == UNLOCKED
                && self
                    .state
                    .compare_exchange(UNLOCKED, LOCKED, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
            {
                return;
            }
            // Under loom one round of spinning stands for all of them (each round is the
            // same load and compare-and-swap), to keep the models small.
            if backoff.is_completed() || cfg!(loom) {
                break;
            }
            backoff.snooze();
        }
        // Sleep. Whoever takes the lock from here on marks it CONTENDED so that its unlock
        // wakes a sleeper. Acquire pairs with the Release in `raw_unlock`.
        while self.state.swap(CONTENDED, Ordering::Acquire) != UNLOCKED {
            futex_wait(&self.state, CONTENDED);
        }
    }

    /// Releases a lock taken with [`Lock::raw_lock`].
    ///
    /// # Safety
    /// The calling thread holds the lock (took it with `raw_lock` and has not released it),
    /// and no guard for it is alive.
    #[inline]
    pub unsafe fn raw_unlock(&self) {
        // Release pairs with the Acquire in `raw_lock` / `lock_contended` of the next holder.
        if self.state.swap(UNLOCKED, Ordering::Release) == CONTENDED {
            futex_wake(&self.state);
        }
    }

    /// Whether the lock is held by anyone at this instant (for assertions).
    pub fn is_locked(&self) -> bool {
        self.state.load(Ordering::Relaxed) != UNLOCKED
    }
}

/// Exclusive access to a [`Lock`]'s contents; unlocks when dropped.
pub struct LockGuard<'a, T> {
    lock: &'a Lock<T>,
}

impl<T> Deref for LockGuard<'_, T> {
    type Target = T;
    #[inline(always)]
    fn deref(&self) -> &T {
        // SAFETY: the guard proves this thread holds the lock.
        unsafe { self.lock.value.with(|p| &*p) }
    }
}

impl<T> DerefMut for LockGuard<'_, T> {
    #[inline(always)]
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: the guard proves this thread holds the lock, and `&mut self` makes this
        // the only access through it.
        unsafe { self.lock.value.with_mut(|p| &mut *p) }
    }
}

impl<T> Drop for LockGuard<'_, T> {
    #[inline]
    fn drop(&mut self) {
        // SAFETY: the guard was made by `lock`, so this thread holds the lock, and this guard
        // is going away.
        unsafe { self.lock.raw_unlock() }
    }
}

// The kernel's wait and wake (Linux: the futex; macOS: `__ulock_wait`), from the platform
// layer.
#[cfg(not(loom))]
use crate::sys::{futex_wait, futex_wake};

/// Under loom, a model of the futex that keeps its contract, so that a lost wakeup shows as
/// a deadlock: `futex_wait` checks the value and goes to sleep atomically with respect to
/// `futex_wake` (both under one loom mutex, as the kernel uses its hash-bucket lock), and
/// `futex_wake` wakes exactly one sleeper on that address.
#[cfg(loom)]
mod futex_model {
    use loom::sync::{Condvar, Mutex};

    /// Sleepers as (address, ticket), oldest first, and the next ticket.
    pub(super) struct Futexes {
        pub(super) sleepers: Mutex<(Vec<(usize, u64)>, u64)>,
        pub(super) woken: Condvar,
    }

    loom::lazy_static! {
        pub(super) static ref FUTEXES: Futexes =
            Futexes { sleepers: Mutex::new((Vec::new(), 0)), woken: Condvar::new() };
    }
}

#[cfg(loom)]
fn futex_wait(state: &AtomicU32, expected: u32) {
    let f = &*futex_model::FUTEXES;
    let addr = state as *const AtomicU32 as usize;
    let mut g = f.sleepers.lock().unwrap();
    if state.load(Ordering::Relaxed) != expected {
        return;
    }
    let ticket = g.1;
    g.1 += 1;
    g.0.push((addr, ticket));
    while g.0.iter().any(|&(_, t)| t == ticket) {
        g = f.woken.wait(g).unwrap();
    }
}

#[cfg(loom)]
fn futex_wake(state: &AtomicU32) {
    let f = &*futex_model::FUTEXES;
    let addr = state as *const AtomicU32 as usize;
    let mut g = f.sleepers.lock().unwrap();
    if let Some(i) = g.0.iter().position(|&(a, _)| a == addr) {
        g.0.remove(i);
        f.woken.notify_all();
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn lock_excludes_across_threads() {
        static COUNTER: Lock<u64> = Lock::new(0);
        let threads: Vec<_> = (0..4)
            .map(|_| {
                std::thread::spawn(|| {
                    for _ in 0..100_000 {
                        *COUNTER.lock() += 1;
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(*COUNTER.lock(), 400_000);
        assert!(!COUNTER.is_locked());
    }
}
