//! loom models of every protocol where threads meet (issue #7). See `docs/loom.md` for what
//! each model checks, its preemption bound and how to run them:
//!
//! ```text
//! RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom cargo test --release --lib loom_tests
//! bash .ci/loom.sh
//! ```
//!
//! Every model runs the real code (the [`Lock`], the span's remote word, the central lists,
//! the page heap, the page map, thread caches) over real memory from [`ModelPages`]; loom
//! supplies the atomics, the guarded cells and the futex. Each model ends with a census
//! that every object is in exactly one place: handed out, on a local list, on a span's free
//! or remote list, or back in the page heap with its span.

use crate::heap::Heap;
use crate::page_heap::{MAP_ALIGN, PageHeap};
use crate::pages::{PAGE_SIZE, PageId, Pages};
use crate::size_class::{SizeClass, class_of};
use crate::span::{self, OWNED, RemoteAction, Span, SpanKind};
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

/// Touches `word` with a read-modify-write that changes nothing, so that loom explores the
/// other threads' compare-and-swaps on it both before and after this point.
///
/// loom 0.7's partial-order reduction remembers only the last access to each atomic: when a
/// thread loads a word and then compare-and-swaps it, the compare-and-swap is checked only
/// against that thread's own load, so a plain load by another thread earlier (the owner's
/// "is the remote list empty?") is never reordered after it, and the interleaving where the
/// free comes first is never run. A load conflicts with an earlier read-modify-write, so a
/// probe just before such a load makes loom try the other threads first.
fn probe(word: &crate::sync::AtomicU64) {
    word.fetch_or(0, Ordering::Relaxed);
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

    /// The span that holds `o`, from the page map.
    fn span_of(&self, o: Obj) -> &Span {
        let s = self.heap.page_map().lookup(o.0 as usize);
        assert!(!s.is_null());
        // SAFETY: page-map entries point to live span records.
        unsafe { &*s }
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
// 2. Remote frees racing the owner's collection.

/// An owned span of one page over real memory, built by hand as in `span.rs`'s unit tests,
/// with a loom cell per object standing for the object's contents: a freeing thread writes
/// it before it pushes the object, the owner writes it after it collects the object. loom
/// reports a data race on the cell unless the push's Release and the owner's Acquire order
/// the two, exactly the publication the remote word promises.
struct OwnedSpan {
    span: Box<core::mem::MaybeUninit<Span>>,
    mem: usize,
    layout: Layout,
    contents: Vec<Contents>,
}

struct Contents(loom::cell::UnsafeCell<u32>);
// SAFETY: the cell is only a race detector; loom checks every access to it.
unsafe impl Sync for Contents {}

// SAFETY: the record and memory are shared by the model's threads as the protocol allows.
unsafe impl Send for OwnedSpan {}
// SAFETY: as above.
unsafe impl Sync for OwnedSpan {}

impl OwnedSpan {
    /// A span of `class` owned by the model's main thread with every object handed out.
    fn new(class: SizeClass) -> OwnedSpan {
        let layout = Layout::from_size_align(PAGE_SIZE, PAGE_SIZE).unwrap();
        // SAFETY: a non-zero size.
        let mem = unsafe { System.alloc_zeroed(layout) } as usize;
        let mut span = Box::new(core::mem::MaybeUninit::<Span>::uninit());
        // SAFETY: fresh memory for the record; not shared yet.
        unsafe {
            Span::init(
                span.as_mut_ptr(),
                PageId::containing(mem),
                Pages(1),
                SpanKind::Unused,
            );
            let s = span.assume_init_ref();
            s.init_small(class);
            s.bump.set(class.objects() as u32);
        }
        let contents = (0..class.objects())
            .map(|_| Contents(loom::cell::UnsafeCell::new(0)))
            .collect();
        OwnedSpan {
            span,
            mem,
            layout,
            contents,
        }
    }

    fn get(&self) -> &Span {
        // SAFETY: initialised in `new`.
        unsafe { self.span.assume_init_ref() }
    }

    fn obj(&self, i: usize) -> Obj {
        Obj((self.mem + i * self.get().class().size()) as *mut u8)
    }

    fn index(&self, o: Obj) -> usize {
        self.get().object_index(o.0 as usize).unwrap()
    }

    /// The last user of object `i` writes it, then frees it from a thread that does not own
    /// the span.
    fn free_remote(&self, i: usize) -> RemoteAction {
        // SAFETY: loom checks this access.
        self.contents[i]
            .0
            .with_mut(|p| unsafe { *p = i as u32 + 1 });
        // SAFETY: object `i` was handed out and is given up once.
        unsafe { self.get().push_remote(self.obj(i).0) }
    }

    /// The owner takes a list (with `take`), walks it and hands each object out again: the
    /// next user writes it.
    fn collect(&self, take: impl Fn(&Span) -> *mut u8, got: &mut Vec<usize>) {
        let mut at = take(self.get());
        while !at.is_null() {
            let i = self.index(Obj(at));
            // SAFETY: a free object on the list we took; we own it now.
            at = unsafe { span::next_free(at) };
            // SAFETY: as above.
            unsafe { span::mark_allocated(self.obj(i).0) };
            // SAFETY: loom checks this access.
            self.contents[i].0.with_mut(|p| unsafe { *p = 0 });
            got.push(i);
        }
    }
}

impl Drop for OwnedSpan {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout; nothing uses it any more.
        unsafe { System.dealloc(self.mem as *mut u8, self.layout) };
    }
}

/// Two threads free three objects of a span into its remote list while the owner collects
/// twice; after they finish the owner collects once more. Every object comes back to the
/// owner exactly once, the owner sees each freeing thread's writes, and the remote word ends
/// OWNED with an empty list.
fn remote_frees_race_owner(take: fn(&Span) -> *mut u8) {
    let s = Arc::new(OwnedSpan::new(class(2560, 3, 1)));
    let s1 = s.clone();
    let t1 = spawn(move || {
        assert_eq!(s1.free_remote(0), RemoteAction::Nothing);
        assert_eq!(s1.free_remote(1), RemoteAction::Nothing);
    });
    let s2 = s.clone();
    let t2 = spawn(move || assert_eq!(s2.free_remote(2), RemoteAction::Nothing));
    let mut got = Vec::new();
    for _ in 0..2 {
        probe(&s.get().remote);
        s.collect(take, &mut got);
    }
    t1.join().unwrap();
    t2.join().unwrap();
    s.collect(take, &mut got);
    got.sort();
    assert_eq!(got, [0, 1, 2], "every freed object collected exactly once");
    assert_eq!(
        s.get().remote_word(),
        OWNED,
        "remote list empty, span still owned"
    );
}

#[test]
fn remote_frees_race_owner_collection() {
    model(4, || {
        remote_frees_race_owner(|s| {
            // SAFETY: the model's main thread owns the span.
            unsafe { s.take_remote_owned() }
        })
    });
}

/// The broken variant: the owner's swap weakened from Acquire to Relaxed (a copy of
/// `Span::take_remote_owned`, so production code is untouched). The owner then reuses an
/// object without seeing the freeing thread's writes to it, and loom reports the race.
#[test]
#[should_panic(expected = "Causality violation")]
fn broken_relaxed_collection_is_caught() {
    model(3, || {
        remote_frees_race_owner(|s| {
            if s.remote.load(Ordering::Relaxed) & 0xffff_ffff == 0 {
                return null_mut();
            }
            let word = s.remote.swap(OWNED, Ordering::Relaxed);
            match word & 0xffff_ffff {
                0 => null_mut(),
                h => (s.start_addr() + h as usize - 1) as *mut u8,
            }
        })
    });
}

// -------------------------------------------------------------------------------------
// 3. Central lists lending and taking back spans while remote frees arrive.

/// A thread cache owns a span of two objects, both handed out. It gives the span back to its
/// central list (`uncache_span` / `disown`) while two other threads free the two objects
/// remotely. Depending on the order the span is given back wholly free (DEAD at `disown`),
/// partial (the last free releases it), or full (the first free moves it: FULL, MOVING, and
/// the mover finds it partial or, if the second free came meanwhile, wholly free). In every
/// order it goes back to the page heap exactly once.
#[test]
fn central_hand_back_races_remote_frees() {
    model(3, || {
        let w = World::new();
        let c = class(4096, 2, 1);
        let mut owner = ThreadCache::new();
        let a = w.alloc(&mut owner, c);
        let b = w.alloc(&mut owner, c);
        assert!(core::ptr::eq(w.span_of(a), w.span_of(b)), "one span");
        let w1 = w.clone();
        let t_owner = spawn(move || owner.flush(&w1.heap));
        let frees: Vec<_> = [a, b]
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
        t_owner.join().unwrap();
        for t in frees {
            t.join().unwrap();
        }
        w.assert_all_back_in_page_heap();
    });
}

/// A span of a single object, handed out: its owner gives it back (full) while another
/// thread frees the object. The free either lands on the owned span's remote list (then
/// `disown` finds the span wholly free) or takes the full span's count to zero (DEAD at
/// once: the freeing thread takes it off the full list and releases it).
#[test]
fn central_full_span_last_free() {
    model(4, || {
        let w = World::new();
        let c = class(8192, 1, 1);
        let mut owner = ThreadCache::new();
        let a = w.alloc(&mut owner, c);
        let w1 = w.clone();
        let t_owner = spawn(move || owner.flush(&w1.heap));
        let w2 = w.clone();
        let t_free = spawn(move || {
            let mut other = ThreadCache::new();
            w2.free(&mut other, a);
            other.flush(&w2.heap);
        });
        t_owner.join().unwrap();
        t_free.join().unwrap();
        w.assert_all_back_in_page_heap();
    });
}

/// A span sits on the partial list with one object handed out and one free. One thread
/// asks the central list for a span (`cache_span` / `own`) while another frees the handed-out
/// object remotely, which makes the span wholly free. Either the lender wins (the span is
/// owned and the free goes to its remote list), or the free wins (DEAD: the lender must skip
/// the span, even while it is still on the partial list waiting for the freeing thread to
/// take the central lock, and take a span from the page heap, possibly the same pages once
/// the freeing thread has released them). The lender never gets an object that is still out.
#[test]
fn central_lends_while_last_free_arrives() {
    model(4, || {
        let w = World::new();
        let c = class(4096, 2, 1);
        let mut first = ThreadCache::new();
        let a = w.alloc(&mut first, c);
        let b = w.alloc(&mut first, c);
        w.free(&mut first, b);
        first.flush(&w.heap);
        assert_eq!(w.heap.central_stats(c).partial_spans, 1);
        let w1 = w.clone();
        let lender = spawn(move || {
            let mut cache = ThreadCache::new();
            let got = w1.alloc(&mut cache, c);
            (cache, got)
        });
        let w2 = w.clone();
        let freer = spawn(move || {
            let mut other = ThreadCache::new();
            w2.free(&mut other, a);
            other.flush(&w2.heap);
        });
        let (mut cache, got) = lender.join().unwrap();
        freer.join().unwrap();
        w.free(&mut cache, got);
        cache.flush(&w.heap);
        w.assert_all_back_in_page_heap();
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
// 5. Thread-exit flush racing remote frees.

/// A thread cache owns a span of three objects: one on its local list, two handed out. It
/// exits (`flush`, which gives the span back with its local list) while another thread
/// frees one of the handed-out objects remotely, before or after the hand-back. Afterwards a
/// new cache takes the span and must get exactly the two free objects (from the span's free
/// list and its remote list), never the one still handed out; then everything goes back.
#[test]
fn thread_exit_flush_races_remote_free() {
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
        assert_eq!((st.spans, st.partial_spans, st.unowned_in_use), (1, 1, 1));
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

/// A thread frees into a span it retains (a filled span it still owns: a plain push on the
/// span's own list, after reading the span's owner field) while another thread frees into
/// the same span (it reads a foreign owner and pushes on the remote list). Meanwhile the
/// owner runs its current span dry and switches to the retained span: it gets its own freed
/// object first, then the remote one if that has arrived (the collection's swap against the
/// push's CAS), else a new span. Never an object twice (`World::alloc`), and in the end
/// everything is back in the page heap.
#[test]
fn retained_span_local_and_remote_frees() {
    model(4, || {
        let w = World::new();
        let c = class(2560, 3, 1);
        let mut owner = ThreadCache::new();
        let first: Vec<Obj> = (0..4).map(|_| w.alloc(&mut owner, c)).collect();
        let (a, b) = (first[0], first[1]);
        assert!(core::ptr::eq(w.span_of(a), w.span_of(first[2])), "one span");
        assert!(
            !core::ptr::eq(w.span_of(a), w.span_of(first[3])),
            "then a new one"
        );
        let w2 = w.clone();
        let t_free = spawn(move || {
            let mut other = ThreadCache::new();
            w2.free(&mut other, b);
            other.flush(&w2.heap);
        });
        w.free(&mut owner, a);
        let rest = [w.alloc(&mut owner, c), w.alloc(&mut owner, c)];
        assert_eq!(w.alloc(&mut owner, c), a, "the owner's own free first");
        probe(&w.span_of(a).remote);
        let next = w.alloc(&mut owner, c);
        t_free.join().unwrap();
        for o in [a, next, first[2], first[3]].into_iter().chain(rest) {
            w.free(&mut owner, o);
        }
        owner.flush(&w.heap);
        w.assert_all_back_in_page_heap();
    });
}

/// As above with a third thread: the exiting cache gives the span back while the two
/// objects it handed out are freed remotely by two threads, so the span can become wholly
/// free in every way (at `disown`, or by either remote free, from the partial list). It goes
/// back to the page heap exactly once.
#[test]
fn thread_exit_flush_races_two_remote_frees() {
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
