//! The benchmark workloads, written once and shared by the criterion suite
//! (`benches/alloc.rs`) and the side-by-side table (the `compare` binary).
//!
//! Every micro-workload is generic over `A: GlobalAlloc` and calls the allocator's
//! `GlobalAlloc` methods directly, so one binary can measure spanalloc, the system allocator,
//! mimalloc and jemalloc side by side while its own global allocator stays the system one.
//! The exception is [`Kind::Program`], the realistic program of [`crate::program`]: it uses
//! `std`'s collections, threads and channels, which allocate through the global allocator,
//! so it runs in a child process whose global allocator is the measured one (see
//! [`crate::allocators::Dispatch`]).
//!
//! A workload runs `iters` iterations of its unit of work (see [`Workload::ops_per_iter`])
//! and returns the time of the timed region only: set-up (threads spawned, working sets
//! filled, the long-lived set built) and tear-down happen outside it.

use std::alloc::{GlobalAlloc, Layout, handle_alloc_error};
use std::cell::Cell;
use std::hint::black_box;
use std::ptr::NonNull;
use std::sync::Barrier;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crossbeam_utils::{Backoff, CachePadded};

/// Alignment of every object (that of `u64`, the common Rust case).
const ALIGN: usize = 8;
/// Objects in a batch (workload 2).
pub const BATCH: usize = 10_000;
/// Objects in each Larson thread's working set.
const LARSON_SLOTS: usize = 1_000;
/// Larson threads.
pub const LARSON_THREADS: usize = 4;
/// Bytes of the long-lived set of workload 6.
pub const LIVE_BYTES: usize = 100 << 20;
/// Slots of small objects churned next to the long-lived set.
const CHURN_SLOTS: usize = 1_000;
/// Slots of the producer/consumer ring.
const RING_SLOTS: usize = 1_024;
/// Elements pushed by the `Vec<u64>`-like workload.
pub const VEC_ELEMS: usize = 1 << 20;
/// The size every realloc-growth workload grows to.
pub const REALLOC_TO: usize = 1 << 20;

// ---------------------------------------------------------------------------------------
// A small seeded random number generator.

/// xorshift64*: small, fast, seeded, good enough to pick sizes and orders.
#[derive(Clone, Debug)]
pub struct XorShift(u64);

impl XorShift {
    /// A generator with the given seed (any value; zero is remapped).
    pub fn new(seed: u64) -> XorShift {
        XorShift(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// The next 64 random bits.
    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number in `0..n` (`n > 0`), by multiply-shift (no division).
    #[inline]
    pub fn below(&mut self, n: usize) -> usize {
        (((self.next_u64() >> 32) * n as u64) >> 32) as usize
    }

    /// A size spread evenly over the powers of two from `2^lo` to `2^hi` (log-uniform),
    /// so small sizes are as common as in real programs and every size class is hit.
    #[inline]
    pub fn log_uniform(&mut self, lo: u32, hi: u32) -> usize {
        let e = lo + self.below((hi - lo) as usize) as u32;
        (1usize << e) + self.below(1usize << e)
    }

    /// A mixed size in 8 B ..= 4 KiB.
    #[inline]
    pub fn mixed(&mut self) -> usize {
        self.log_uniform(3, 12).min(4096)
    }
}

/// Shuffles `v` in place (Fisher-Yates).
fn shuffle<T>(v: &mut [T], rng: &mut XorShift) {
    for i in (1..v.len()).rev() {
        v.swap(i, rng.below(i + 1));
    }
}

// ---------------------------------------------------------------------------------------
// Allocation helpers: the only unsafe code of the workloads.

/// The layout of an object of `size` bytes (`size` > 0).
#[inline(always)]
fn layout(size: usize) -> Layout {
    match Layout::from_size_align(size, ALIGN) {
        Ok(l) => l,
        Err(_) => unreachable!("object sizes are small"),
    }
}

/// Allocates an object of `size` (> 0) bytes from `a` and writes its first byte, as a
/// program would. Stops the process if `a` is out of memory.
#[inline(always)]
fn new_obj<A: GlobalAlloc>(a: &A, size: usize) -> NonNull<u8> {
    let l = layout(size);
    // SAFETY: `l` has a non-zero size.
    let p = unsafe { a.alloc(l) };
    let Some(p) = NonNull::new(p) else {
        handle_alloc_error(l)
    };
    // SAFETY: `p` is a fresh allocation of at least one byte.
    unsafe { p.as_ptr().write(size as u8) };
    p
}

/// Frees an object made by [`new_obj`].
///
/// # Safety
/// `p` came from `new_obj(a, size)` with this `a` and `size`, and is not used afterwards.
#[inline(always)]
unsafe fn free_obj<A: GlobalAlloc>(a: &A, p: NonNull<u8>, size: usize) {
    // SAFETY: per the caller, `p` is a live allocation of `a` with this layout.
    unsafe { a.dealloc(p.as_ptr(), layout(size)) }
}

/// Resizes an object made by [`new_obj`] (or a previous `resize`) and writes its new last
/// byte.
///
/// # Safety
/// `p` is a live object of `a` of `old` bytes; it is not used afterwards.
#[inline(always)]
unsafe fn resize<A: GlobalAlloc>(a: &A, p: NonNull<u8>, old: usize, new: usize) -> NonNull<u8> {
    // SAFETY: per the caller; `new` is non-zero and small.
    let q = unsafe { a.realloc(p.as_ptr(), layout(old), new) };
    let Some(q) = NonNull::new(q) else {
        handle_alloc_error(layout(new))
    };
    // SAFETY: `q` holds at least `new` bytes.
    unsafe { q.as_ptr().add(new - 1).write(1) };
    q
}

/// A set of live objects, each with its size; frees whatever it still holds when dropped.
struct Objects<'a, A: GlobalAlloc> {
    a: &'a A,
    objs: Vec<(NonNull<u8>, usize)>,
}

impl<'a, A: GlobalAlloc> Objects<'a, A> {
    fn with_capacity(a: &'a A, n: usize) -> Self {
        Objects {
            a,
            objs: Vec::with_capacity(n),
        }
    }

    #[inline(always)]
    fn push(&mut self, size: usize) {
        let p = new_obj(self.a, size);
        self.objs.push((p, size));
    }

    /// Replaces object `i` with a fresh one of `size` bytes.
    #[inline(always)]
    fn replace(&mut self, i: usize, size: usize) {
        let (p, old) = self.objs[i];
        // SAFETY: `p` is a live object of `old` bytes that this set owns; it is overwritten.
        unsafe { free_obj(self.a, p, old) };
        self.objs[i] = (new_obj(self.a, size), size);
    }

    /// Frees object `i` (which the set must no longer name afterwards).
    ///
    /// # Safety
    /// Object `i` is live and is neither freed nor read again.
    #[inline(always)]
    unsafe fn free_at(&self, i: usize) {
        let (p, size) = self.objs[i];
        // SAFETY: per the caller.
        unsafe { free_obj(self.a, p, size) };
    }

    /// Forgets every object without freeing (after the caller freed them all).
    fn forget_all(&mut self) {
        self.objs.clear();
    }
}

impl<A: GlobalAlloc> Drop for Objects<'_, A> {
    fn drop(&mut self) {
        for &(p, size) in &self.objs {
            // SAFETY: each object is live and owned by the set, which is going away.
            unsafe { free_obj(self.a, p, size) };
        }
    }
}

// ---------------------------------------------------------------------------------------
// The workloads.

/// The order in which a batch is freed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Order {
    /// Last allocated, first freed.
    Lifo,
    /// First allocated, first freed.
    Fifo,
    /// A seeded random permutation.
    Random,
}

/// What a workload does.
#[derive(Clone, Copy, Debug)]
pub enum Kind {
    /// 1. One malloc+free pair of this size per iteration.
    Pair(usize),
    /// 2. Allocate [`BATCH`] objects, then free them in `order`; fixed 64 B or mixed sizes.
    Batch {
        /// The order in which the batch is freed.
        order: Order,
        /// Mixed sizes 8 B..4 KiB rather than 64 B.
        mixed: bool,
    },
    /// 3a. One buffer grown from 8 B to [`REALLOC_TO`] by doubling, then freed.
    ReallocDouble,
    /// 3b. One buffer grown from 16 B to [`REALLOC_TO`] in +16 B steps, then freed.
    ReallocStep16,
    /// 3c. A `Vec<u64>`-like push loop to [`VEC_ELEMS`] elements, growing by realloc.
    VecPush,
    /// 4. One thread allocates, another frees; one object per iteration.
    ProducerConsumer {
        /// Mixed sizes 8 B..4 KiB rather than 64 B.
        mixed: bool,
    },
    /// 5. [`LARSON_THREADS`] threads each replace a random object of their working set.
    Larson,
    /// 6. Small objects churn next to a long-lived set of about [`LIVE_BYTES`].
    LiveSet,
    /// 7. The realistic program of [`crate::program`], through the global allocator.
    ///
    /// The iteration count is its size (see [`crate::program::run`]); one run is one
    /// operation.
    Program,
}

/// A named workload.
#[derive(Clone, Copy, Debug)]
pub struct Workload {
    /// Short unique name (also the criterion group name).
    pub name: &'static str,
    /// What it does.
    pub kind: Kind,
    /// Iterations for one measurement of the `compare` binary (its `--quick` runs fewer).
    pub compare_iters: u64,
}

const fn w(name: &'static str, kind: Kind, compare_iters: u64) -> Workload {
    Workload {
        name,
        kind,
        compare_iters,
    }
}

const fn batch_kind(order: Order, mixed: bool) -> Kind {
    Kind::Batch { order, mixed }
}

/// Every workload, in the order of the table.
pub const WORKLOADS: &[Workload] = &[
    w("pair-8B", Kind::Pair(8), 4_000_000),
    w("pair-16B", Kind::Pair(16), 4_000_000),
    w("pair-64B", Kind::Pair(64), 4_000_000),
    w("pair-256B", Kind::Pair(256), 4_000_000),
    w("pair-1KiB", Kind::Pair(1 << 10), 2_000_000),
    w("pair-4KiB", Kind::Pair(4 << 10), 2_000_000),
    w("pair-16KiB", Kind::Pair(16 << 10), 1_000_000),
    w("pair-32KiB", Kind::Pair(32 << 10), 600_000),
    w("pair-256KiB", Kind::Pair(256 << 10), 200_000),
    w("pair-1MiB", Kind::Pair(1 << 20), 200_000),
    w("batch-lifo-64B", batch_kind(Order::Lifo, false), 200),
    w("batch-fifo-64B", batch_kind(Order::Fifo, false), 200),
    w("batch-random-64B", batch_kind(Order::Random, false), 200),
    w("batch-lifo-mixed", batch_kind(Order::Lifo, true), 100),
    w("batch-fifo-mixed", batch_kind(Order::Fifo, true), 100),
    w("batch-random-mixed", batch_kind(Order::Random, true), 100),
    w("realloc-double", Kind::ReallocDouble, 600),
    w("realloc-step16", Kind::ReallocStep16, 40),
    w("vec-push-1M", Kind::VecPush, 20),
    w(
        "prodcons-64B",
        Kind::ProducerConsumer { mixed: false },
        600_000,
    ),
    w(
        "prodcons-mixed",
        Kind::ProducerConsumer { mixed: true },
        400_000,
    ),
    w("larson-4t", Kind::Larson, 500_000),
    w("liveset-100MB", Kind::LiveSet, 2_000_000),
    w("rust-program", Kind::Program, crate::program::FULL_SCALE),
];

impl Workload {
    /// Operations in one iteration: what "time per operation" divides by. An operation is
    /// one object allocated and freed (pairs, batches, producer/consumer, churn), one
    /// `realloc` call (realloc growth) or one element pushed (`Vec` push).
    pub fn ops_per_iter(&self) -> u64 {
        match self.kind {
            Kind::Pair(_) | Kind::ProducerConsumer { .. } | Kind::LiveSet => 1,
            Kind::Program => 1,
            Kind::Batch { .. } => BATCH as u64,
            Kind::ReallocDouble => (REALLOC_TO / 8).trailing_zeros() as u64,
            Kind::ReallocStep16 => (REALLOC_TO / 16 - 1) as u64,
            Kind::VecPush => VEC_ELEMS as u64,
            Kind::Larson => LARSON_THREADS as u64,
        }
    }

    /// One line on what the workload does (for tables and docs).
    pub fn describe(&self) -> String {
        match self.kind {
            Kind::Pair(size) => format!("malloc+free pair of {size} B"),
            Kind::Batch { order, mixed } => format!(
                "allocate {BATCH} objects of {}, free them {}",
                if mixed {
                    "mixed sizes 8 B..4 KiB"
                } else {
                    "64 B"
                },
                match order {
                    Order::Lifo => "LIFO",
                    Order::Fifo => "FIFO",
                    Order::Random => "in random order",
                }
            ),
            Kind::ReallocDouble => "grow one buffer 8 B -> 1 MiB by doubling (realloc)".into(),
            Kind::ReallocStep16 => "grow one buffer 16 B -> 1 MiB in +16 B steps (realloc)".into(),
            Kind::VecPush => "push 1M u64 into a Vec-like buffer grown by realloc".into(),
            Kind::ProducerConsumer { mixed } => format!(
                "one thread allocates {}, another frees it",
                if mixed { "mixed 8 B..4 KiB" } else { "64 B" }
            ),
            Kind::Larson => format!(
                "{LARSON_THREADS} threads replace random objects of {LARSON_SLOTS} mixed 8 B..4 KiB each"
            ),
            Kind::LiveSet => "small objects churn beside a 100 MB live set of mixed sizes".into(),
            Kind::Program => crate::program::DESCRIPTION.into(),
        }
    }

    /// Operations in a measurement of `iters` iterations: what the time is divided by.
    /// For [`Kind::Program`], whose iteration count is its size, one run is one operation.
    pub fn ops(&self, iters: u64) -> u64 {
        match self.kind {
            Kind::Program => 1,
            _ => iters * self.ops_per_iter(),
        }
    }

    /// Whether the workload allocates through the process's global allocator (so that a
    /// measurement must run in a process whose global allocator is the measured one)
    /// rather than through the `GlobalAlloc` methods of the allocator it is handed.
    pub fn uses_global(&self) -> bool {
        matches!(self.kind, Kind::Program)
    }

    /// Builds what the workload keeps across measurements (the long-lived set of
    /// [`Kind::LiveSet`]); runs are made on the returned value.
    pub fn prepare<'a, A: GlobalAlloc + Sync>(&self, a: &'a A) -> Prepared<'a, A> {
        let live = match self.kind {
            Kind::LiveSet => Some(build_live_set(a)),
            _ => None,
        };
        let churn = match self.kind {
            Kind::LiveSet => {
                let mut rng = XorShift::new(6);
                let mut churn = Objects::with_capacity(a, CHURN_SLOTS);
                for _ in 0..CHURN_SLOTS {
                    churn.push(rng.log_uniform(3, 8));
                }
                Some((churn, rng))
            }
            _ => None,
        };
        Prepared {
            w: *self,
            a,
            live,
            churn,
        }
    }
}

/// A workload ready to run on one allocator.
pub struct Prepared<'a, A: GlobalAlloc + Sync> {
    w: Workload,
    a: &'a A,
    live: Option<Objects<'a, A>>,
    churn: Option<(Objects<'a, A>, XorShift)>,
}

impl<A: GlobalAlloc + Sync> Prepared<'_, A> {
    /// Runs `iters` iterations; returns the time of the timed region. [`Kind::Program`]
    /// allocates through the global allocator, whatever `A` is (see
    /// [`Workload::uses_global`]).
    pub fn run(&mut self, iters: u64) -> Duration {
        let a = self.a;
        match self.w.kind {
            Kind::Pair(size) => pairs(a, size, iters),
            Kind::Batch { order, mixed } => batch(a, order, mixed, iters),
            Kind::ReallocDouble => realloc_growth(a, 8, |s| s * 2, iters),
            Kind::ReallocStep16 => realloc_growth(a, 16, |s| s + 16, iters),
            Kind::VecPush => vec_push(a, iters),
            Kind::ProducerConsumer { mixed } => producer_consumer(a, mixed, iters),
            Kind::Larson => larson(a, iters),
            Kind::LiveSet => {
                let (churn, rng) = self.churn.as_mut().expect("prepared");
                live_set_churn(churn, rng, iters)
            }
            // The global allocator, not `a`: the caller has made them the same allocator.
            Kind::Program => crate::program::run(iters).time,
        }
    }

    /// Bytes of the long-lived set, if the workload has one.
    pub fn live_bytes(&self) -> usize {
        self.live
            .as_ref()
            .map_or(0, |l| l.objs.iter().map(|o| o.1).sum())
    }
}

/// 1. malloc/free pairs of one size.
fn pairs<A: GlobalAlloc>(a: &A, size: usize, iters: u64) -> Duration {
    let start = Instant::now();
    for _ in 0..iters {
        let p = new_obj(a, size);
        black_box(p);
        // SAFETY: just allocated with this size, not used again.
        unsafe { free_obj(a, p, size) };
    }
    start.elapsed()
}

/// 2. Batches of [`BATCH`] objects freed in `order`.
fn batch<A: GlobalAlloc>(a: &A, order: Order, mixed: bool, iters: u64) -> Duration {
    let mut rng = XorShift::new(2);
    let sizes: Vec<usize> = (0..BATCH)
        .map(|_| if mixed { rng.mixed() } else { 64 })
        .collect();
    let mut perm: Vec<usize> = (0..BATCH).collect();
    match order {
        Order::Lifo => perm.reverse(),
        Order::Fifo => {}
        Order::Random => shuffle(&mut perm, &mut rng),
    }
    let mut objs = Objects::with_capacity(a, BATCH);
    let start = Instant::now();
    for _ in 0..iters {
        for &size in &sizes {
            objs.push(size);
        }
        for &i in &perm {
            // SAFETY: `perm` is a permutation, so each object is freed exactly once.
            unsafe { objs.free_at(i) };
        }
        objs.forget_all();
    }
    start.elapsed()
}

/// 3a/3b. One buffer grown from `from` to [`REALLOC_TO`] bytes by `step`, then freed.
fn realloc_growth<A: GlobalAlloc>(
    a: &A,
    from: usize,
    step: impl Fn(usize) -> usize,
    iters: u64,
) -> Duration {
    let start = Instant::now();
    for _ in 0..iters {
        let mut size = from;
        let mut p = new_obj(a, size);
        while size < REALLOC_TO {
            let next = step(size);
            // SAFETY: `p` is live with `size` bytes and replaced by the result.
            p = unsafe { resize(a, p, size, next) };
            size = next;
        }
        black_box(p);
        // SAFETY: live with `size` bytes, not used again.
        unsafe { free_obj(a, p, size) };
    }
    start.elapsed()
}

/// 3c. A `Vec<u64>` push loop: capacity 4, doubled by realloc when full.
fn vec_push<A: GlobalAlloc>(a: &A, iters: u64) -> Duration {
    let start = Instant::now();
    for _ in 0..iters {
        let mut cap = 4;
        let mut p = new_obj(a, cap * 8).cast::<u64>();
        let mut len = 0;
        while len < VEC_ELEMS {
            if len == cap {
                // SAFETY: `p` is live with `cap * 8` bytes and replaced by the result.
                p = unsafe { resize(a, p.cast(), cap * 8, cap * 16) }.cast();
                cap *= 2;
            }
            let end = cap.min(VEC_ELEMS);
            // SAFETY: `len..end` is within the buffer of `cap` elements.
            unsafe { push_run(p.as_ptr(), len, end) };
            len = end;
        }
        black_box(p);
        // SAFETY: live with `cap * 8` bytes, not used again.
        unsafe { free_obj(a, p.cast(), cap * 8) };
    }
    start.elapsed()
}

/// The pushes of [`vec_push`] from `from` to `to` (element `i` holds `i`), out of line and
/// not generic: every allocator runs this same machine code at the same address. Inlined
/// into each allocator's copy of the workload, the store loop landed at a different code
/// alignment per allocator and ran at one or two cycles per push by that alone (a 2x swing
/// that followed unrelated code changes).
///
/// # Safety
/// `buf` holds at least `to` elements.
#[inline(never)]
unsafe fn push_run(buf: *mut u64, from: usize, to: usize) {
    for i in from..to {
        // SAFETY: `i < to`, within the buffer; aligned to 8.
        unsafe { buf.add(i).write(i as u64) };
    }
}

/// A bounded single-producer single-consumer ring of `(address, size)` pairs (its own
/// memory comes from the global allocator, outside the timed region). Each side publishes
/// its index only every [`PUBLISH`] items or before it waits, so the ring costs a fraction
/// of a cache-line transfer per item and the time measured is mostly the allocator's.
struct Ring {
    slots: Box<[(AtomicUsize, AtomicUsize)]>,
    /// Items the producer has published (only the producer stores).
    tail: CachePadded<AtomicUsize>,
    /// Items the consumer has taken (only the consumer stores).
    head: CachePadded<AtomicUsize>,
}

/// Items between index publications.
const PUBLISH: usize = 32;

/// One side's view of the ring: its own count and its last view of the other side's.
#[derive(Default)]
struct Side {
    mine: usize,
    theirs: usize,
}

impl Ring {
    fn new() -> Ring {
        Ring {
            slots: (0..RING_SLOTS)
                .map(|_| (AtomicUsize::new(0), AtomicUsize::new(0)))
                .collect(),
            tail: CachePadded::new(AtomicUsize::new(0)),
            head: CachePadded::new(AtomicUsize::new(0)),
        }
    }

    /// Sends `(addr, size)`.
    fn push(&self, me: &mut Side, addr: usize, size: usize) {
        if me.mine - me.theirs == RING_SLOTS {
            // Publish before waiting, or the consumer could wait for us forever.
            // Release pairs with the Acquire load of `tail` in `pop`.
            self.tail.store(me.mine, Ordering::Release);
            let backoff = Backoff::new();
            loop {
                // Acquire pairs with the Release stores of `head` in `pop`: slots read.
                me.theirs = self.head.load(Ordering::Acquire);
                if me.mine - me.theirs < RING_SLOTS {
                    break;
                }
                backoff.snooze();
            }
        }
        let slot = &self.slots[me.mine % RING_SLOTS];
        slot.0.store(addr, Ordering::Relaxed);
        slot.1.store(size, Ordering::Relaxed);
        me.mine += 1;
        if me.mine % PUBLISH == 0 {
            // Release pairs with the Acquire load of `tail` in `pop`: the slots (and the
            // objects they name) are written before the consumer sees them.
            self.tail.store(me.mine, Ordering::Release);
        }
    }

    /// Publishes what the producer has sent (at its end).
    fn flush(&self, me: &Side) {
        // Release pairs with the Acquire load of `tail` in `pop`.
        self.tail.store(me.mine, Ordering::Release);
    }

    /// Receives the next `(addr, size)`.
    fn pop(&self, me: &mut Side) -> (usize, usize) {
        if me.mine == me.theirs {
            // Release pairs with the Acquire load of `head` in `push`.
            self.head.store(me.mine, Ordering::Release);
            let backoff = Backoff::new();
            loop {
                // Acquire pairs with the Release stores of `tail` in `push` and `flush`.
                me.theirs = self.tail.load(Ordering::Acquire);
                if me.theirs != me.mine {
                    break;
                }
                backoff.snooze();
            }
        }
        let slot = &self.slots[me.mine % RING_SLOTS];
        let v = (
            slot.0.load(Ordering::Relaxed),
            slot.1.load(Ordering::Relaxed),
        );
        me.mine += 1;
        if me.mine % PUBLISH == 0 {
            // Release pairs with the Acquire load of `head` in `push`: the slots were read.
            self.head.store(me.mine, Ordering::Release);
        }
        v
    }
}

/// Runs `work(i, ready, done)` on `threads` threads spawned before the timed region. Each
/// thread may set up before calling `ready()` (which waits for all) and tear down after
/// `done()` (which also waits for all); both must be called exactly once. The time is from
/// the first thread's start to the last one's finish, read by the workers themselves, so a
/// descheduled main thread cannot shorten or stretch it.
fn timed_threads<F>(threads: usize, work: F) -> Duration
where
    F: Fn(usize, &dyn Fn(), &dyn Fn()) + Sync,
{
    let start = Barrier::new(threads);
    let end = Barrier::new(threads);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|i| {
                let (work, start, end) = (&work, &start, &end);
                s.spawn(move || {
                    let (t0, t1) = (Cell::new(None), Cell::new(None));
                    let ready = || {
                        start.wait();
                        t0.set(Some(Instant::now()));
                    };
                    let done = || {
                        t1.set(Some(Instant::now()));
                        end.wait();
                    };
                    work(i, &ready, &done);
                    (
                        t0.get().expect("ready() called"),
                        t1.get().expect("done() called"),
                    )
                })
            })
            .collect();
        let times: Vec<(Instant, Instant)> = handles
            .into_iter()
            .map(|h| h.join().expect("worker panicked"))
            .collect();
        let first = times.iter().map(|t| t.0).min().expect("threads > 0");
        let last = times.iter().map(|t| t.1).max().expect("threads > 0");
        last - first
    })
}

/// 4. One thread allocates, the other frees: `iters` objects cross threads.
fn producer_consumer<A: GlobalAlloc + Sync>(a: &A, mixed: bool, iters: u64) -> Duration {
    let ring = Ring::new();
    timed_threads(2, |i, ready, done| {
        let mut me = Side::default();
        ready();
        if i == 0 {
            let mut rng = XorShift::new(4);
            for _ in 0..iters {
                let size = if mixed { rng.mixed() } else { 64 };
                let p = new_obj(a, size);
                ring.push(&mut me, p.as_ptr() as usize, size);
            }
            ring.flush(&me);
        } else {
            for _ in 0..iters {
                let (p, size) = ring.pop(&mut me);
                // SAFETY: the producer sent a live object of `size` bytes and gave it up.
                unsafe { free_obj(a, NonNull::new_unchecked(p as *mut u8), size) };
            }
        }
        done();
    })
}

/// 5. Larson-like: each thread replaces random objects of its own working set.
fn larson<A: GlobalAlloc + Sync>(a: &A, iters: u64) -> Duration {
    timed_threads(LARSON_THREADS, |i, ready, done| {
        let mut rng = XorShift::new(50 + i as u64);
        let mut objs = Objects::with_capacity(a, LARSON_SLOTS);
        for _ in 0..LARSON_SLOTS {
            objs.push(rng.mixed());
        }
        ready();
        for _ in 0..iters {
            let slot = rng.below(LARSON_SLOTS);
            let size = rng.mixed();
            objs.replace(slot, size);
        }
        done();
        drop(objs);
    })
}

/// The long-lived set of workload 6: about [`LIVE_BYTES`] of mixed objects, one in 16 of
/// 4 KiB..1 MiB, the rest 8 B..4 KiB, every OS page of them touched.
fn build_live_set<A: GlobalAlloc>(a: &A) -> Objects<'_, A> {
    let mut rng = XorShift::new(66);
    let mut live = Objects::with_capacity(a, 16_384);
    let mut total = 0;
    while total < LIVE_BYTES {
        let size = if rng.below(16) == 0 {
            rng.log_uniform(12, 20)
        } else {
            rng.mixed()
        };
        live.push(size);
        let p = live.objs.last().expect("just pushed").0;
        for off in (0..size).step_by(4096) {
            // SAFETY: `off < size`, within the object.
            unsafe { p.as_ptr().add(off).write(1) };
        }
        total += size;
    }
    live
}

/// 6. Replaces random small objects (8..256 B) of the churn set, one per iteration.
fn live_set_churn<A: GlobalAlloc>(
    churn: &mut Objects<'_, A>,
    rng: &mut XorShift,
    iters: u64,
) -> Duration {
    let start = Instant::now();
    for _ in 0..iters {
        let slot = rng.below(CHURN_SLOTS);
        let size = rng.log_uniform(3, 8);
        churn.replace(slot, size);
    }
    start.elapsed()
}
