//! The unwind rules of code addresses seen before, shared by every thread: a sampled
//! allocation's stack mostly repeats frames already walked, and a cached rule is a few loads
//! where reading it from the unwind tables is a search and an interpretation. See
//! `stack.rs`.
//!
//! A direct-mapped table of (address, packed rule) pairs under one sequence lock (a
//! seqlock): a reader never waits and never writes; a writer takes the lock with one
//! compare-and-swap, or does not cache at all if another writer has it. So neither side can
//! block the other, and a thread interrupted while writing (by a signal handler that
//! allocates, or by `fork`) delays nobody: the reader's lookups miss meanwhile and it reads
//! the tables itself.
//!
//! The ordering argument is the fence-based sequence lock of Boehm's "Can seqlocks get
//! along with programming language memory models?" (2012): the writer's release fence after
//! making the sequence odd pairs with the reader's acquire fence before its second read of
//! the sequence, so a reader that saw any of a writer's entry stores sees the sequence
//! moved and misses. (A loom model of it was tried: loom 0.7 did not reach the torn read
//! even with the second check removed, so none is kept.)
//!
//! Code can be unloaded (`dlclose`) and other code loaded at the same addresses, with other
//! rules. The table remembers the C library's count of unloaded objects (`dlpi_subs`) when
//! it is filled, and is emptied when the count has moved: each walk reads it once
//! ([`RuleCache::read_unloads`]) and [`RuleCache::begin`]s with it.
//!
//! Reading the count (`dl_iterate_phdr`) takes the C library's `dl_load_write_lock`, and
//! glibc (2.36 here) does not reset that lock in a child after `fork`: a thread inside
//! `dl_iterate_phdr` when another forks leaves it held in the child for good, and the
//! child's next sample (or any `dl_iterate_phdr` of its own) waits forever. So the count is
//! read under a lock of the table's own, taken with a bounded number of tries (a walk that
//! still finds it taken does not use the table), and `fork`'s prepare handler takes it
//! ([`RuleCache::lock_for_fork`]): no thread of ours is in `dl_iterate_phdr` at a fork.
//! The bound matters: a thread that holds the C library's lock (a program's own
//! `dl_iterate_phdr` callback that allocates) and then samples would otherwise wait for a
//! walker that waits for it.

use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering, fence};

/// Entries in the table (a power of two): 32 KiB.
const ENTRIES: usize = 2048;
/// Tries a walk makes at the flag of the reading of the count of unloaded objects (with
/// spins of 1, 2, 4, ... 64 and then 64 waits between them: a few microseconds at most).
const READ_TRIES: u32 = 12;

struct Entry {
    /// The looked-up address, 0 for none.
    address: AtomicUsize,
    rule: AtomicU64,
}

/// The table. The one instance lives with the other statics (`global.rs`).
pub struct RuleCache {
    /// Even: no writer. Odd: a writer is changing entries.
    sequence: AtomicUsize,
    /// The count of unloaded objects the entries were read under.
    unloads: AtomicU64,
    /// Held while a walk reads the count of unloaded objects, and by `fork` (see the
    /// module's documentation).
    reading_unloads: AtomicBool,
    entries: [Entry; ENTRIES],
}

impl Default for RuleCache {
    fn default() -> Self {
        Self::new()
    }
}

impl RuleCache {
    /// An empty table.
    pub const fn new() -> Self {
        #[allow(clippy::declare_interior_mutable_const)]
        const EMPTY: Entry = Entry {
            address: AtomicUsize::new(0),
            rule: AtomicU64::new(0),
        };
        RuleCache {
            sequence: AtomicUsize::new(0),
            unloads: AtomicU64::new(0),
            reading_unloads: AtomicBool::new(false),
            entries: [EMPTY; ENTRIES],
        }
    }

    fn entry(&self, address: usize) -> &Entry {
        let hash =
            (address as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> (64 - ENTRIES.trailing_zeros());
        &self.entries[hash as usize]
    }

    /// The C library's count of unloaded objects, read with `read_unloads` under the
    /// table's own lock; `None`, without reading, if another thread (or `fork`) holds that
    /// lock through the walk's tries.
    pub fn read_unloads(&self, read_unloads: impl FnOnce() -> u64) -> Option<u64> {
        if !self.hold_reading(READ_TRIES) {
            return None;
        }
        let unloads = read_unloads();
        self.release_reading();
        Some(unloads)
    }

    /// For `fork`'s prepare handler: waits until no walk is reading the count of unloaded
    /// objects, and keeps the next from starting, until
    /// [`unlock_after_fork`](Self::unlock_after_fork).
    pub fn lock_for_fork(&self) {
        let backoff = crossbeam_utils::Backoff::new();
        while !self.try_hold_reading() {
            backoff.snooze();
        }
    }

    /// Releases what [`lock_for_fork`](Self::lock_for_fork) took (in the parent and in the
    /// child).
    pub fn unlock_after_fork(&self) {
        self.release_reading();
    }

    /// Takes the flag a walk holds while it reads the count of unloaded objects, trying
    /// `tries` times with a growing spin between tries. Another walk holds it for one call
    /// of `dl_iterate_phdr` (a few hundred instructions), so waiting for it costs less than
    /// the walk without the table that giving up means (on two threads sampling at once,
    /// giving up at once made one walk in several read the unwind tables); a bound, because
    /// the holder may be waiting for the C library's lock that this thread holds.
    fn hold_reading(&self, tries: u32) -> bool {
        let backoff = crossbeam_utils::Backoff::new();
        for _ in 0..tries {
            if self.try_hold_reading() {
                return true;
            }
            backoff.spin();
        }
        false
    }

    /// Takes the flag a walk holds while it reads the count of unloaded objects, if it is
    /// free.
    fn try_hold_reading(&self) -> bool {
        // Acquire pairs with the Release in `release_reading` of the previous holder.
        self.reading_unloads
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
    }

    fn release_reading(&self) {
        self.reading_unloads.store(false, Ordering::Release);
    }

    /// Starts a walk with the C library's current count of unloaded objects: empties the
    /// table if code was unloaded since it was filled. False if it needed emptying and
    /// another thread was writing: the walk must not use the table then.
    pub fn begin(&self, unloads: u64) -> bool {
        if self.unloads.load(Ordering::Acquire) == unloads {
            return true;
        }
        self.write(|| {
            for e in &self.entries {
                e.address.store(0, Ordering::Relaxed);
            }
            self.unloads.store(unloads, Ordering::Release);
        })
    }

    /// The packed rule cached for `address`, if any.
    pub fn get(&self, address: usize) -> Option<u64> {
        let before = self.sequence.load(Ordering::Acquire);
        if before & 1 != 0 {
            return None;
        }
        let e = self.entry(address);
        let found = e.address.load(Ordering::Relaxed);
        let rule = e.rule.load(Ordering::Relaxed);
        // Orders the entry's loads before the second read of the sequence: a reader that saw
        // a writer's stores sees its odd sequence (or a later one) there.
        fence(Ordering::Acquire);
        let after = self.sequence.load(Ordering::Relaxed);
        (before == after && found == address).then_some(rule)
    }

    /// Caches `rule` for `address`, unless another thread is writing.
    pub fn put(&self, address: usize, rule: u64) {
        let e = self.entry(address);
        self.write(|| {
            e.address.store(address, Ordering::Relaxed);
            e.rule.store(rule, Ordering::Relaxed);
        });
    }

    /// Runs `f` holding the write side; false (and `f` not run) if another writer has it.
    fn write(&self, f: impl FnOnce()) -> bool {
        let s = self.sequence.load(Ordering::Relaxed);
        if s & 1 != 0
            || self
                .sequence
                .compare_exchange(s, s + 1, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return false;
        }
        // Orders the odd sequence before the entries' stores (the readers' acquire fence
        // pairs with this one).
        fence(Ordering::Release);
        f();
        self.sequence.store(s + 2, Ordering::Release);
        true
    }

    /// Takes (or gives back) the write side as a writer in progress holds it.
    #[cfg(test)]
    pub fn hold_for_test(&self, hold: bool) {
        assert_eq!(self.sequence.load(Ordering::Relaxed) & 1 == 1, !hold);
        self.sequence.fetch_add(1, Ordering::Relaxed);
    }

    /// In a child after `fork`, the only thread: a writer that was in the parent's table
    /// when it forked left it odd and half written here. Empties it and makes it usable.
    pub fn after_fork_in_child(&self) {
        let s = self.sequence.load(Ordering::Relaxed);
        if s & 1 != 0 {
            for e in &self.entries {
                e.address.store(0, Ordering::Relaxed);
            }
            self.sequence.store(s + 1, Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_is_found_until_another_address_takes_its_place() {
        let cache = RuleCache::new();
        assert_eq!(cache.get(0x1234), None);
        cache.put(0x1234, 7);
        assert_eq!(cache.get(0x1234), Some(7));
        assert_eq!(cache.get(0x1235), None);
        // An address that maps to the same entry replaces it.
        let rival = (1..)
            .map(|i| 0x1234 + i * 8)
            .find(|&a| core::ptr::eq(cache.entry(a), cache.entry(0x1234)))
            .unwrap();
        cache.put(rival, 9);
        assert_eq!(cache.get(rival), Some(9));
        assert_eq!(cache.get(0x1234), None);
    }

    #[test]
    fn a_writer_in_progress_stops_lookups_and_other_writers() {
        let cache = RuleCache::new();
        cache.put(0x1000, 1);
        cache.sequence.fetch_add(1, Ordering::Relaxed); // a writer is in
        assert_eq!(cache.get(0x1000), None);
        cache.put(0x2000, 2);
        assert!(!cache.begin(5), "emptying needs the write side");
        // The writer's half-written table is emptied in a forked child.
        cache.after_fork_in_child();
        assert_eq!(cache.get(0x1000), None);
        cache.put(0x2000, 2);
        assert_eq!(cache.get(0x2000), Some(2));
        cache.after_fork_in_child(); // no writer: nothing is emptied
        assert_eq!(cache.get(0x2000), Some(2));
    }

    /// While a write runs, the sequence is odd, so a lookup finds nothing (it would read
    /// entries half written); after it, the sequence is even and moved on, so a lookup that
    /// began before the write and ends after it sees two different values and finds nothing.
    #[test]
    fn a_write_makes_the_sequence_odd_then_moves_it_on() {
        let cache = RuleCache::new();
        cache.put(0x1000, 1);
        for round in 0..3 {
            let before = cache.sequence.load(Ordering::Relaxed);
            assert!(cache.write(|| {
                assert_eq!(
                    cache.sequence.load(Ordering::Relaxed) & 1,
                    1,
                    "round {round}"
                );
                assert_eq!(cache.get(0x1000), None, "round {round}");
            }));
            let after = cache.sequence.load(Ordering::Relaxed);
            assert_eq!(after & 1, 0);
            assert_ne!(after, before, "round {round}: a torn read would go unseen");
            assert_eq!(cache.get(0x1000), Some(1));
        }
    }

    /// The count is read under the table's lock, and not at all while `fork` holds it.
    #[test]
    fn the_count_is_read_only_when_the_fork_lock_is_free() {
        let cache = RuleCache::new();
        cache.put(0x1000, 1);
        assert_eq!(cache.read_unloads(|| 0), Some(0));
        assert!(cache.begin(0));
        assert_eq!(cache.get(0x1000), Some(1));
        cache.lock_for_fork();
        assert_eq!(
            cache.read_unloads(|| panic!("read while fork holds the lock")),
            None,
            "a walk during a fork does not read the count (nor use the table)"
        );
        cache.unlock_after_fork();
        assert_eq!(cache.read_unloads(|| 1), Some(1));
        assert!(cache.begin(1), "the count moved: emptied");
        assert_eq!(cache.get(0x1000), None);
        // The reader's own hold ends with the read.
        cache.lock_for_fork();
        cache.unlock_after_fork();
        assert_eq!(cache.read_unloads(|| 1), Some(1));
    }

    /// Runs `wait` on another thread while this one holds the flag as a walk reading the
    /// count, and lets go of it once `wait` has started and 50 ms more have passed: well
    /// within the 2^20 tries of the waits below (a second or more), so a release that does
    /// nothing fails those tests rather than hanging them. Returns what `wait` returned.
    fn released_while_waiting<R: Send>(
        cache: &RuleCache,
        wait: impl FnOnce(&RuleCache) -> R + Send,
    ) -> R {
        assert!(cache.try_hold_reading(), "a walk reads");
        std::thread::scope(|s| {
            let (started_tx, started_rx) = std::sync::mpsc::channel();
            let waiter = s.spawn(move || {
                started_tx.send(()).unwrap();
                wait(cache)
            });
            started_rx.recv().unwrap();
            std::thread::sleep(std::time::Duration::from_millis(50));
            cache.release_reading();
            waiter.join().unwrap()
        })
    }

    /// A walk that finds another reading the count waits for it to end (it holds the flag
    /// for one `dl_iterate_phdr`), rather than walking without the table; for a bounded
    /// number of tries.
    #[test]
    fn a_walk_waits_for_another_reading_of_the_count() {
        let cache = RuleCache::new();
        assert!(
            released_while_waiting(&cache, |c| c.hold_reading(1 << 20)),
            "the second took it when the first let go"
        );
        assert!(
            !cache.hold_reading(READ_TRIES),
            "held (by the second walk, for good here): a walk gives up after its tries"
        );
        cache.release_reading();
        assert!(cache.hold_reading(1));
    }

    /// `fork`'s handler waits for a walk that is reading the count, and then holds the
    /// flag itself.
    #[test]
    fn fork_waits_for_a_walk_reading_the_count_and_then_holds_it() {
        let cache = RuleCache::new();
        released_while_waiting(&cache, RuleCache::lock_for_fork);
        assert!(!cache.try_hold_reading(), "held by the fork handler");
        cache.unlock_after_fork();
        assert!(cache.try_hold_reading());
    }

    #[test]
    fn an_unload_empties_the_table() {
        let cache = RuleCache::new();
        assert!(cache.begin(0));
        cache.put(0x1000, 1);
        assert!(cache.begin(0));
        assert_eq!(cache.get(0x1000), Some(1));
        assert!(cache.begin(1));
        assert_eq!(cache.get(0x1000), None);
        cache.put(0x1000, 3);
        assert!(cache.begin(1));
        assert_eq!(cache.get(0x1000), Some(3));
    }
}
