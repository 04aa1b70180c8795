//! loom models of every protocol where threads meet. See `docs/loom.md` for what
//! each model checks, its preemption bound and how to run them:
//!
//! ```text
//! RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom cargo test --release --lib loom_tests
//! bash .ci/loom.sh
//! ```
//!
//! Every model runs the real code (the [`Lock`], the central lists and their transfer slots,
//! the page heap, the page map, thread caches) over real memory from [`ModelPages`]; loom
//! supplies the atomics, the guarded cells and the futex. Each model ends with a census
//! that every object is in exactly one place: handed out, in a thread cache, in a transfer
//! slot, on its span's free list, or back in the page heap with its span.

use crate::heap::Heap;
use crate::page_heap::{MAP_ALIGN, PageHeap};
use crate::pages::{PAGE_SIZE, PageId, Pages};
use crate::size_class::{SizeClass, class_of};
use crate::span::{Span, SpanKind};
use crate::sync::{Lock, Ordering};
use crate::sys::PageSource;
use crate::thread_cache::ThreadCache;
use core::ptr::{NonNull, null_mut};
use loom::thread;
use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

// -------------------------------------------------------------------------------------
// Harness.

/// Runs `f` under loom with the preemption bound from `LOOM_MAX_PREEMPTIONS` (or
/// `default_bound`), and room for the long executions of the heap models. `f` runs on a
/// thread of its own with a big stack (loom's main thread has a small one).
fn model(default_bound: usize, f: impl Fn() + Sync + Send + 'static) {
    let mut b = loom::model::Builder::new();
    if b.preemption_bound.is_none() {
        b.preemption_bound = Some(default_bound);
    }
    b.max_branches = b.max_branches.max(100_000);
    let f = Arc::new(f);
    let executions = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let n = executions.clone();
    b.check(move || {
        n.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let f = f.clone();
        spawn(move || f()).join().unwrap();
    });
    println!(
        "loom: {} executions, preemption bound {}",
        executions.load(std::sync::atomic::Ordering::Relaxed),
        b.preemption_bound.unwrap()
    );
}

/// Spawns a loom thread with a stack big enough for the allocator's slow paths.
fn spawn<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> thread::JoinHandle<T> {
    thread::Builder::new().stack_size(1 << 20).spawn(f).unwrap()
}

/// A pointer that may cross threads (objects handed from one thread to another).
#[derive(Copy, Clone, PartialEq, Eq, PartialOrd, Ord, Debug)]
struct Obj(*mut u8);
// SAFETY: an object address; the models hand each object to one thread at a time.
unsafe impl Send for Obj {}

/// A page source over the system allocator that frees everything when dropped (a model runs
/// thousands of executions). Its first mapping of [`MAP_ALIGN`] bytes is an arena reserved
/// when the source is made, so a model knows where the page heap's first span will be.
struct ModelPages {
    arena: usize,
    arena_taken: Mutex<bool>,
    mapped: Mutex<Vec<(usize, Layout)>>,
}

impl ModelPages {
    fn new() -> ModelPages {
        let layout = Layout::from_size_align(MAP_ALIGN, MAP_ALIGN).unwrap();
        // SAFETY: a non-zero size.
        let arena = unsafe { System.alloc_zeroed(layout) } as usize;
        assert_ne!(arena, 0);
        ModelPages {
            arena,
            arena_taken: Mutex::new(false),
            mapped: Mutex::new(vec![(arena, layout)]),
        }
    }
}

// SAFETY: every mapping is fresh zeroed memory from the system allocator, distinct, and
// lives as long as the source (which outlives the heap that uses it).
unsafe impl PageSource for ModelPages {
    fn map(&self, bytes: usize, align: usize) -> Option<NonNull<u8>> {
        if bytes == MAP_ALIGN && align == MAP_ALIGN {
            let mut taken = self.arena_taken.lock().unwrap();
            if !*taken {
                *taken = true;
                return NonNull::new(self.arena as *mut u8);
            }
        }
        let layout = Layout::from_size_align(bytes, align).ok()?;
        // SAFETY: sizes asked for are non-zero multiples of the page size.
        let p = unsafe { System.alloc_zeroed(layout) };
        self.mapped.lock().unwrap().push((p as usize, layout));
        NonNull::new(p)
    }

    unsafe fn release(&self, ptr: NonNull<u8>, bytes: usize) {
        // SAFETY: the caller guarantees the range is ours and holds nothing live.
        unsafe { core::ptr::write_bytes(ptr.as_ptr(), 0, bytes) };
    }

    fn os_page_size(&self) -> usize {
        4096
    }

    #[cfg(feature = "hardened")]
    unsafe fn protect(&self, _ptr: NonNull<u8>, _bytes: usize, _accessible: bool) -> bool {
        true
    }
}

impl Drop for ModelPages {
    fn drop(&mut self) {
        for (p, layout) in self.mapped.get_mut().unwrap().drain(..) {
            // SAFETY: allocated above with this layout; the heap using it is gone.
            unsafe { System.dealloc(p as *mut u8, layout) };
        }
    }
}

type ModelHeap = Heap<ModelPages>;

/// A heap shared by a model's threads, with the set of objects handed out (a plain set: loom
/// runs one thread at a time, so it follows the real order of events). Every allocation and
/// free of a heap model goes through it: an object handed out while it is still out, or a
/// free of an object that is not out, fails at once.
struct World {
    heap: ModelHeap,
    live: Mutex<BTreeSet<Obj>>,
}

impl World {
    /// A heap over a fresh [`ModelPages`] that grows one arena at a time, with a fixed clock
    /// and no time-based release (a model must do the same in every execution).
    fn new() -> Arc<World> {
        let heap = Heap::with_page_heap(ModelPages::new(), PageHeap::with_grow_bytes(MAP_ALIGN));
        heap.set_fake_now(1);
        heap.set_decay_ms(-1);
        Arc::new(World {
            heap,
            live: Mutex::new(BTreeSet::new()),
        })
    }

    /// `cache` allocates an object of class `c`, which must not be out already.
    fn alloc(&self, cache: &mut ThreadCache, c: SizeClass) -> Obj {
        let o = Obj(cache.alloc(&self.heap, c.size(), 8));
        assert!(!o.0.is_null());
        assert!(
            self.live.lock().unwrap().insert(o),
            "object handed out while still out"
        );
        o
    }

    /// `cache` frees `o`, which must be out; the caller gives it up first.
    fn free(&self, cache: &mut ThreadCache, o: Obj) {
        assert!(
            self.live.lock().unwrap().remove(&o),
            "free of an object that is not out"
        );
        // SAFETY: handed out by this heap, and given up once (checked just above).
        unsafe { cache.free(&self.heap, o.0) };
    }

    /// The census at the end of a heap model, after every object has been freed and every
    /// cache flushed: every span must be back in the page heap exactly once and the central
    /// lists empty. A lost object keeps its span out of the page heap; a span released twice
    /// stops the page heap (`fatal`, a panic under loom) or breaks its counters.
    fn assert_all_back_in_page_heap(&self) {
        assert!(
            self.live.lock().unwrap().is_empty(),
            "the model freed everything"
        );
        let heap = &self.heap;
        heap.drain_centrals();
        heap.check_invariants();
        let st = heap.page_heap_stats();
        assert_eq!(
            st.small_spans, 0,
            "every small span is back in the page heap"
        );
        assert_eq!(st.large_in_use, 0);
        assert_eq!(
            st.free, st.mapped,
            "the page heap holds every page it mapped, once"
        );
        for class in SizeClass::all() {
            assert_eq!(
                heap.central_stats(class).spans,
                0,
                "no span left with a central list"
            );
        }
    }
}

/// A size class by object size, checked to have the shape a model relies on.
fn class(size: usize, objects: usize, pages: usize) -> SizeClass {
    let c = class_of(size).unwrap();
    assert_eq!(
        (c.size(), c.objects(), c.pages().0),
        (size, objects, pages),
        "size class table changed"
    );
    c
}

// -------------------------------------------------------------------------------------
// 1. The lock.

/// Two threads take the lock twice each: the guarded cell (a loom cell) catches any overlap
/// of critical sections, the count any lost update, and loom's deadlock check any lost
/// wakeup of a thread asleep on the (modelled) futex.
#[test]
fn lock_two_threads() {
    model(4, || {
        let lock = Arc::new(Lock::new(0u32));
        let l = lock.clone();
        let t = spawn(move || {
            for _ in 0..2 {
                *l.lock() += 1;
            }
        });
        for _ in 0..2 {
            *lock.lock() += 1;
        }
        t.join().unwrap();
        assert_eq!(*lock.lock(), 4);
        assert!(!lock.is_locked());
    });
}

/// Three threads take the lock once each, so two can be asleep at once: each unlock must
/// wake one sleeper and pass the CONTENDED mark on, or the last sleeper is never woken.
#[test]
fn lock_three_threads_two_sleepers() {
    model(4, || {
        let lock = Arc::new(Lock::new(0u32));
        let ts: Vec<_> = (0..2)
            .map(|_| {
                let l = lock.clone();
                spawn(move || *l.lock() += 1)
            })
            .collect();
        *lock.lock() += 1;
        for t in ts {
            t.join().unwrap();
        }
        assert_eq!(*lock.lock(), 3);
        assert!(!lock.is_locked());
    });
}

// -------------------------------------------------------------------------------------
// 4. Page map publication.

/// One thread allocates the heap's first small span (a two-page span): the page heap maps
/// the arena, makes the page map's root and leaf, carves the span and publishes it. Another
/// thread looks up the span's second page meanwhile, as a `free` of a stray pointer would:
/// it finds nothing, or the whole span (kind, class, range): never a half-made record.
#[test]
fn page_map_reader_never_sees_half_made_span() {
    model(4, || {
        let w = World::new();
        let c = class(5120, 3, 2);
        let arena = w.heap.source().arena;
        let w1 = w.clone();
        let writer = spawn(move || {
            let mut cache = ThreadCache::new();
            let o = w1.alloc(&mut cache, c);
            (cache, o)
        });
        let w2 = w.clone();
        let reader = spawn(move || {
            let addr = arena + PAGE_SIZE + 8;
            let p = w2.heap.page_map().lookup(addr);
            if !p.is_null() {
                // SAFETY: page-map entries point to span records.
                let s = unsafe { &*p };
                assert_eq!(s.kind(), SpanKind::Small, "published span has its kind");
                assert_eq!(s.class(), c, "published span has its class");
                assert_eq!(
                    (s.start_addr(), s.pages()),
                    (arena, c.pages()),
                    "and its range"
                );
                assert!(s.contains(addr));
            }
        });
        let (mut cache, o) = writer.join().unwrap();
        reader.join().unwrap();
        assert_eq!(
            o.0 as usize, arena,
            "the first object is at the arena's start"
        );
        w.free(&mut cache, o);
        cache.flush(&w.heap);
        w.assert_all_back_in_page_heap();
    });
}

// -------------------------------------------------------------------------------------
// 5. Thread-exit flush racing frees from other threads.

/// A thread cache holds one free object of a span of three, two handed out. It exits
/// (`flush`, which gives its objects back to the central list) while another thread frees
/// one of the handed-out objects into its own cache and flushes it, before or after. Both
/// hand their objects back under the central lock, each to its span. Afterwards a new cache
/// takes a batch and must get exactly the two free objects, never the one still handed out;
/// then everything goes back.
#[test]
fn thread_exit_flush_races_another_threads_free() {
    model(4, || {
        let w = World::new();
        let c = class(2560, 3, 1);
        let mut exiting = ThreadCache::new();
        let a = w.alloc(&mut exiting, c);
        let b = w.alloc(&mut exiting, c);
        let kept = w.alloc(&mut exiting, c);
        w.free(&mut exiting, a);
        let w1 = w.clone();
        let t_exit = spawn(move || exiting.flush(&w1.heap));
        let w2 = w.clone();
        let t_free = spawn(move || {
            let mut other = ThreadCache::new();
            w2.free(&mut other, b);
            other.flush(&w2.heap);
        });
        t_exit.join().unwrap();
        t_free.join().unwrap();
        let st = w.heap.central_stats(c);
        assert_eq!((st.spans, st.partial_spans, st.out_of_spans), (1, 1, 1));
        let mut next = ThreadCache::new();
        let got = BTreeSet::from([w.alloc(&mut next, c), w.alloc(&mut next, c)]);
        assert_eq!(
            got,
            BTreeSet::from([a, b]),
            "exactly the two free objects, once each"
        );
        for o in got.into_iter().chain([kept]) {
            w.free(&mut next, o);
        }
        next.flush(&w.heap);
        w.assert_all_back_in_page_heap();
    });
}

/// As above with a third thread: the exiting cache gives its object back while the two
/// objects it handed out are freed by two other threads, so the span can become wholly free
/// through any of the three hand-backs. It goes back to the page heap (or becomes the spare)
/// exactly once.
#[test]
fn thread_exit_flush_races_two_frees_from_other_threads() {
    model(3, || {
        let w = World::new();
        let c = class(2560, 3, 1);
        let mut exiting = ThreadCache::new();
        let a = w.alloc(&mut exiting, c);
        let b = w.alloc(&mut exiting, c);
        let d = w.alloc(&mut exiting, c);
        w.free(&mut exiting, a);
        let w1 = w.clone();
        let t_exit = spawn(move || exiting.flush(&w1.heap));
        let frees: Vec<_> = [b, d]
            .into_iter()
            .map(|o| {
                let w = w.clone();
                spawn(move || {
                    let mut other = ThreadCache::new();
                    w.free(&mut other, o);
                    other.flush(&w.heap);
                })
            })
            .collect();
        t_exit.join().unwrap();
        for t in frees {
            t.join().unwrap();
        }
        w.assert_all_back_in_page_heap();
    });
}

// -------------------------------------------------------------------------------------
// 6. Objects freed by another thread race the allocating thread's refills.

/// One cache allocates two objects of a class with one object per span (a batch of two),
/// then hands them to another thread, which frees them into its own cache (each free past
/// that cache's bound hands the object back: to its span, which becomes the spare or goes
/// back to the page heap) while the first cache allocates two more (a refill from the
/// spare, from a span just given back, or from new pages). No object is handed out twice
/// (`World::alloc`), and in the end every span is back in the page heap exactly once.
#[test]
fn frees_from_another_thread_race_refills() {
    model(3, || {
        let w = World::new();
        let c = class(24576, 1, 3);
        let mut owner = ThreadCache::new();
        let given = [w.alloc(&mut owner, c), w.alloc(&mut owner, c)];
        let w2 = w.clone();
        let t_free = spawn(move || {
            let mut other = ThreadCache::new();
            for o in given {
                w2.free(&mut other, o);
            }
            other.flush(&w2.heap);
        });
        let more = [w.alloc(&mut owner, c), w.alloc(&mut owner, c)];
        t_free.join().unwrap();
        for o in more {
            w.free(&mut owner, o);
        }
        owner.flush(&w.heap);
        w.assert_all_back_in_page_heap();
    });
}

// -------------------------------------------------------------------------------------
// 7. A thread's reserve reclaimed by another thread.

/// A cache with a reserve, as a registered thread's: the reserve in a fresh list. The
/// reserve is leaked: it must stay in place while a reclaimer may reach it (one small
/// record per execution).
fn cache_with_listed_reserve() -> (
    ThreadCache,
    &'static crate::thread_cache::Reserve,
    Arc<crate::thread_cache::reserve::Reserves>,
) {
    use crate::thread_cache::reserve::{Reserve, Reserves};
    let reserves = Arc::new(Reserves::new());
    let reserve: &'static Reserve = Box::leak(Box::new(Reserve::new()));
    let mut cache = ThreadCache::new();
    // SAFETY: leaked, so in place for good; this cache's alone; in this list once.
    unsafe {
        cache.attach_reserve(reserve);
        reserves.insert(reserve);
    }
    (cache, reserve, reserves)
}

/// Spawns a thread that reclaims every reserve in `reserves` once.
fn spawn_reclaimer(
    w: &Arc<World>,
    reserves: &Arc<crate::thread_cache::reserve::Reserves>,
) -> thread::JoinHandle<()> {
    let (w, reserves) = (w.clone(), reserves.clone());
    spawn(move || {
        // SAFETY: every reserve in the list is a cache's over this heap.
        unsafe { reserves.reclaim(&w.heap, crate::thread_cache::reserve::Reclaim::All) };
    })
}

/// A thread keeps two free objects in its reserve, takes one back and hands it out, frees
/// it, then leaves as at thread exit (out of the list, then its flush), while another thread
/// reclaims every reserve in the list. Whatever the interleaving, each object is in one
/// place at every step (the reclaimer takes only what the reserve holds under its lock, and
/// never a reserve out of the list), so the census finds every span back in the page heap.
#[test]
fn reserve_reclaim_races_the_owner() {
    model(3, || {
        let w = World::new();
        let c = class(2560, 3, 1);
        let (mut cache, reserve, reserves) = cache_with_listed_reserve();
        let a = w.alloc(&mut cache, c);
        let b = w.alloc(&mut cache, c);
        for o in [a, b] {
            assert!(w.live.lock().unwrap().remove(&o));
        }
        let key = crate::check::free_key();
        // SAFETY: both handed out to us and given up: marked free, linked a -> b.
        unsafe {
            crate::span::mark_freed(a.0, key);
            crate::span::mark_freed(b.0, key);
            crate::span::set_next_free(a.0, b.0);
            crate::span::set_next_free(b.0, null_mut());
        }
        let (w1, r1) = (w.clone(), reserves.clone());
        let owner = spawn(move || {
            let (a, b) = (a, b); // the objects, not their pointer fields (which are not Send)
            // SAFETY: a chain of two free objects of `c`, ours, given up.
            assert!(unsafe { reserve.put(c, a.0, b.0, 2, usize::MAX, usize::MAX) });
            let map = w1.heap.page_map();
            let (obj, n) = reserve.take(c, 1, map, c.index() * 16);
            if n == 1 {
                // SAFETY: taken from the reserve: ours, handed out again.
                unsafe { crate::span::mark_allocated(obj) };
                let o = Obj(obj);
                assert!(w1.live.lock().unwrap().insert(o), "an object out twice");
                w1.free(&mut cache, o);
            }
            // SAFETY: in this list once.
            unsafe { r1.remove(reserve) };
            cache.flush(&w1.heap);
        });
        let reclaimer = spawn_reclaimer(&w, &reserves);
        owner.join().unwrap();
        reclaimer.join().unwrap();
        w.assert_all_back_in_page_heap();
    });
}

/// The stash's slots are outside the reserve's lock: the owner frees a large object into
/// its stash (a store into an empty slot), allocates the same length again (a
/// compare-and-swap from the span it chose) and frees it again, then leaves as at thread
/// exit, while another thread reclaims every reserve (each slot emptied with a
/// compare-and-swap from the value read). Whoever takes a
/// span out owns it: the owner never hands out a span the reclaimer gave back, and every
/// span goes back to the page heap exactly once.
#[test]
fn stash_reclaim_races_the_owner() {
    model(3, || {
        // Longer than the thread cache's large lists take (32 pages), so the free goes to
        // the stash, where a reclaimer can reach it.
        const STASHED: usize = 33 * PAGE_SIZE;
        let w = World::new();
        let (mut cache, reserve, reserves) = cache_with_listed_reserve();
        // A small allocation activates the cache (an inactive one stashes nothing).
        let small = w.alloc(&mut cache, class(2560, 3, 1));
        let big = Obj(cache.alloc(&w.heap, STASHED, 8));
        assert!(!big.0.is_null());
        let (w1, r1) = (w.clone(), reserves.clone());
        let owner = spawn(move || {
            let (big, small) = (big, small); // the objects, not their (non-Send) fields
            // SAFETY: a live large object, freed once (into the stash).
            unsafe { cache.free(&w1.heap, big.0) };
            let again = cache.alloc(&w1.heap, STASHED, 8);
            assert!(!again.is_null());
            // SAFETY: the object just allocated, written as its owner would, then freed once.
            unsafe {
                again.write_bytes(7, STASHED);
                cache.free(&w1.heap, again);
            }
            w1.free(&mut cache, small);
            // SAFETY: in this list once.
            unsafe { r1.remove(reserve) };
            cache.flush(&w1.heap);
        });
        let reclaimer = spawn_reclaimer(&w, &reserves);
        owner.join().unwrap();
        reclaimer.join().unwrap();
        assert_eq!(
            w.heap.page_heap_stats().large_in_use,
            0,
            "no span out twice"
        );
        w.assert_all_back_in_page_heap();
    });
}
