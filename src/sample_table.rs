//! The heap profiler's table: every live sampled object, and per distinct stack the bytes
//! and objects allocated from it since profiling started. Lives in metadata memory, never
//! in the heap it describes. See `lib.rs` for an overview and `docs/design.md` (section 10).
//!
//! A sampled object is a large object (a span of its own, as TCMalloc and jemalloc serve
//! sampled small objects; a large request's own object is recorded where it is, with
//! [`SampleTable::record_large`]), and its span record points to the object's [`LiveSample`]: the
//! free of an ordinary object never looks at the table, and the large-object free path,
//! which is out of line, reads one word of the span record it holds already
//! ([`release_sample`]).
//!
//! The table is split into [`SHARDS`] shards, each behind its own lock, and a sample goes
//! to the shard of the thread that takes it (by where its stack is), so that threads
//! sampling at once do not queue on one lock nor pass its cache lines between them
//! (`docs/design.md` has the figures; jemalloc shards its profile's locks for the same
//! reason). A stack seen on several threads has a record in each of their shards; a
//! snapshot adds them up.
//! A sample's record names its shard, so a free from any thread finds the lock to take.
//!
//! Stack records are never freed, so a recording returns where it counted the frames (a
//! [`Site`]), which a thread sampling again from the same stack passes back to skip the
//! hash and the search (`global.rs` keeps it with the thread's last stack walk).
//!
//! A shard's lock is a leaf: nothing is taken while it is held (its records come from
//! [`FixedAlloc`]s over the page source, which maps memory without a lock of ours), so it
//! may be taken under the orphan cache's lock. A sample takes one shard's lock; starting,
//! stopping, a snapshot and `fork` take them all, in the shards' order, and `fork` takes
//! them last.

use crate::fixed_alloc::FixedAlloc;
use crate::heap::Heap;
use crate::pages::PAGE_SIZE;
use crate::sampler::Params;
use crate::size_class;
use crate::span::{Span, SpanKind};
use crate::stack::MAX_FRAMES;
use crate::sync::{AtomicU32, AtomicU64, AtomicUsize, Lock, LockGuard, Ordering};
use crate::sys::PageSource;
use core::ptr::{NonNull, null_mut};
use crossbeam_utils::CachePadded;

/// Shards of the table (a power of two).
const SHARDS: usize = 8;
/// Hash buckets for the distinct stacks, per shard: a page of pointers.
const BUCKETS: usize = PAGE_SIZE / core::mem::size_of::<usize>();

/// One distinct stack and what was allocated from it.
#[repr(C)]
struct StackRecord {
    /// The next record in the same bucket.
    next: *mut StackRecord,
    /// The shard that holds it (its index), for a [`Site`] to be checked against.
    shard: usize,
    /// The next record of all of them (newest first).
    all: *mut StackRecord,
    hash: u64,
    depth: usize,
    frames: [usize; MAX_FRAMES],
    /// Bytes and objects allocated from this stack since profiling started (sums of the
    /// samples' weights).
    alloc_bytes: u64,
    alloc_objects: f64,
    /// Scratch for [`SampleTable::snapshot`]: the live samples' sums.
    inuse_bytes: u64,
    inuse_objects: f64,
}

/// A live sampled object.
#[repr(C)]
pub struct LiveSample {
    prev: *mut LiveSample,
    next: *mut LiveSample,
    /// The shard that holds it, so that a free finds it from the span record alone.
    shard: *const Shard,
    stack: *mut StackRecord,
    /// The bytes asked for.
    size: usize,
    /// The bytes the sample stands for ([`crate::sampler::Sampler::crossed`]).
    weight: usize,
}

/// Where the table counted a sample's stack: its record of those frames. Each recording
/// sets it; passed back with the same frames, it spares the next recording the hash and
/// the search of the stack's bucket (a thread sampling again from the place it sampled
/// last, which a replayed walk tells: `stack::WalkMemo`, whose tag keeps it).
///
/// A stack record is never freed or moved while its table lives (a start clears its
/// totals only), so a site stays a record of its table; passed back with other frames,
/// the sample would be counted under the wrong stack (a wrong profile, nothing worse), and
/// with another table's site, under a record of that table, which is why it is made only
/// by a recording or by the unsafe [`Site::from_tag`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Site(*mut StackRecord);

impl Site {
    /// No record known: the recording hashes the frames and searches.
    pub const NONE: Site = Site(null_mut());

    /// The site kept as `tag` ([`Site::tag`]).
    ///
    /// # Safety
    /// `tag` is null, or the tag of a site that a recording into the table it will be
    /// passed to returned for the frames it will be passed with.
    pub unsafe fn from_tag(tag: *mut ()) -> Site {
        Site(tag.cast())
    }

    /// The site as an untyped pointer, to be kept with the walk that gave its frames.
    pub fn tag(self) -> *mut () {
        self.0.cast()
    }
}

impl Default for Site {
    fn default() -> Site {
        Site::NONE
    }
}

/// One shard of the table: its own live samples and stack records, behind its own lock.
type Shard = Lock<Inner>;

/// What a shard's lock guards.
struct Inner {
    /// The live samples, newest first.
    live: *mut LiveSample,
    live_count: usize,
    /// `BUCKETS` heads, mapped on first use.
    buckets: *mut *mut StackRecord,
    /// Every stack record, newest first.
    all: *mut StackRecord,
    stack_count: usize,
    samples: FixedAlloc<LiveSample>,
    stacks: FixedAlloc<StackRecord>,
    bucket_bytes: usize,
    /// Recordings that looked their stack up (hashed and searched), not found by a site:
    /// what the tests check the sites by.
    #[cfg(test)]
    searches: u64,
}

// SAFETY: the raw pointers point into the table's own metadata memory; the table moves
// between threads only inside its lock.
unsafe impl Send for Inner {}

/// The profiler's setting and its table. The process has one (`global.rs`); tests build
/// their own over a heap of fake pages.
pub struct SampleTable {
    /// The mean distance between sample points; 0: profiling is off.
    mean: AtomicUsize,
    /// Bumped by every start and stop.
    epoch: AtomicU32,
    seed: AtomicU64,
    /// Samples not taken because the sampling path was entered again on its own thread
    /// (something it called allocated): should stay 0.
    reentered: AtomicU64,
    /// Samples not recorded because metadata memory ran out.
    dropped: AtomicU64,
    /// When profiling last started (ms, the heap's clock).
    started_ms: AtomicU64,
    shards: [CachePadded<Shard>; SHARDS],
}

/// One stack's totals in a [`Snapshot`].
#[derive(Clone, Debug)]
pub struct StackTotals {
    frames: [usize; MAX_FRAMES],
    depth: usize,
    /// Estimated bytes and objects live now, allocated from this stack.
    pub inuse_bytes: f64,
    /// See `inuse_bytes`.
    pub inuse_objects: f64,
    /// Estimated bytes and objects allocated from this stack since profiling started.
    pub alloc_bytes: f64,
    /// See `alloc_bytes`.
    pub alloc_objects: f64,
}

impl StackTotals {
    /// Return addresses, innermost first.
    pub fn frames(&self) -> &[usize] {
        &self.frames[..self.depth]
    }
}

/// A copy of the table's totals at one moment.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// Per stack with something allocated since the start or still live.
    pub stacks: Vec<StackTotals>,
    /// The sampling mean at the time (0: off).
    pub mean: usize,
    /// Live sampled objects.
    pub live_samples: usize,
    /// Samples not taken because the sampling path was entered again on its own thread.
    pub reentered: u64,
    /// Samples not recorded because metadata memory ran out.
    pub dropped: u64,
    /// Bytes of metadata the table has mapped.
    pub metadata_bytes: usize,
    /// When profiling last started (ms, the heap's clock).
    pub started_ms: u64,
}

fn hash_frames(frames: &[usize]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ frames.len() as u64;
    for &f in frames {
        h = (h ^ f as u64).wrapping_mul(0x0000_0100_0000_01b3);
        h ^= h >> 29;
    }
    h
}

impl SampleTable {
    /// An empty table, profiling off; maps nothing until the first sample.
    #[cfg(not(loom))]
    pub const fn new() -> SampleTable {
        SampleTable {
            mean: AtomicUsize::new(0),
            epoch: AtomicU32::new(0),
            seed: AtomicU64::new(0),
            reentered: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            started_ms: AtomicU64::new(0),
            shards: [const { CachePadded::new(Lock::new(Inner::new())) }; SHARDS],
        }
    }

    /// An empty table, profiling off (loom: its atomics are made at run time).
    #[cfg(loom)]
    pub fn new() -> SampleTable {
        SampleTable {
            mean: AtomicUsize::new(0),
            epoch: AtomicU32::new(0),
            seed: AtomicU64::new(0),
            reentered: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            started_ms: AtomicU64::new(0),
            shards: core::array::from_fn(|_| CachePadded::new(Lock::new(Inner::new()))),
        }
    }

    /// Every shard's lock, taken in the shards' order.
    fn lock_all(&self) -> [LockGuard<'_, Inner>; SHARDS] {
        core::array::from_fn(|i| self.shards[i].lock())
    }

    /// The shard for a sample taken on the thread whose stack holds `on_stack`: threads'
    /// stacks lie apart (a new thread's at least its stack's size from the last one's), so
    /// threads sampling at once mostly take different shards. Only a split of the work:
    /// any shard would be correct.
    fn shard_at(on_stack: usize) -> usize {
        (((on_stack as u64) >> 16).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> (64 - SHARDS.ilog2()))
            as usize
    }

    /// The setting every thread's sampler follows.
    #[inline]
    pub fn params(&self) -> Params {
        Params {
            mean: self.mean.load(Ordering::Relaxed),
            epoch: self.epoch.load(Ordering::Relaxed),
            seed: self.seed.load(Ordering::Relaxed),
        }
    }

    /// Starts (or restarts) sampling with a mean of `mean` bytes between sample points (at
    /// least 1) and random numbers from `seed`; the allocation totals start again from zero
    /// (live samples stay). Returns the new setting.
    pub fn start(&self, mean: usize, seed: u64, now_ms: u64) -> Params {
        let shards = self.lock_all();
        for inner in &shards {
            let mut s = inner.all;
            while !s.is_null() {
                // SAFETY: a stack record of the shard's; its lock is held.
                unsafe {
                    (*s).alloc_bytes = 0;
                    (*s).alloc_objects = 0.0;
                    s = (*s).all;
                }
            }
        }
        self.seed.store(seed, Ordering::Relaxed);
        self.mean.store(mean.max(1), Ordering::Relaxed);
        self.epoch.fetch_add(1, Ordering::Relaxed);
        self.started_ms.store(now_ms, Ordering::Relaxed);
        drop(shards);
        self.params()
    }

    /// Stops sampling. Live samples stay in the table until their objects are freed.
    pub fn stop(&self) -> Params {
        let _shards = self.lock_all();
        self.mean.store(0, Ordering::Relaxed);
        self.epoch.fetch_add(1, Ordering::Relaxed);
        self.params()
    }

    /// Counts a sample not taken because the sampling path was re-entered.
    pub fn note_reentered(&self) {
        self.reentered.fetch_add(1, Ordering::Relaxed);
    }

    /// Makes the sampled object of an allocation of `size` bytes aligned to `align`, which
    /// stands for `weight` bytes and was made from `frames`: a large object of the size's
    /// class (so that whatever the class's objects allow, such as `realloc` within it, this
    /// one allows too), with its record in the table and on its span. `make_large(bytes,
    /// align)` makes that object (the caller's allocator: a thread cache takes it from its
    /// stash when it can, so that a sample costs no page-heap lock) and says whether its
    /// bytes are zero. Null when the heap is out of memory; an object that cannot be
    /// recorded (metadata memory ran out) is handed out unsampled.
    #[allow(clippy::too_many_arguments)]
    pub fn alloc_sampled<S: PageSource>(
        &self,
        heap: &Heap<S>,
        size: usize,
        align: usize,
        zeroed: bool,
        frames: &[usize],
        weight: usize,
        make_large: impl FnOnce(usize, usize) -> Option<(NonNull<u8>, bool)>,
        site: &mut Site,
    ) -> *mut u8 {
        let bytes = size_class::class_for(size, align).map_or(size, |c| c.size());
        let Some((p, is_zero)) = make_large(bytes, align) else {
            return null_mut();
        };
        let p = p.as_ptr();
        let on_its_span = self.record_large(heap, p, size, frames, weight, site);
        debug_assert!(on_its_span, "a large object starts its span");
        if zeroed && !is_zero {
            // SAFETY: a new object of at least `size` bytes.
            unsafe { core::ptr::write_bytes(p, 0, size) };
        }
        p
    }

    /// Makes `p`, a large object just made for a request of `size` bytes and not yet
    /// handed out, the sampled object of that request: records it as standing for `weight`
    /// bytes, allocated from `frames`, where it is (no span of its own to make, nothing to
    /// copy: a large object already has one). `false`, recording nothing, when `p` is not
    /// the start of a large span; a sample that cannot be recorded (metadata memory ran
    /// out) is counted as dropped and `p` stays an ordinary object.
    pub fn record_large<S: PageSource>(
        &self,
        heap: &Heap<S>,
        p: *mut u8,
        size: usize,
        frames: &[usize],
        weight: usize,
        site: &mut Site,
    ) -> bool {
        // The record named by the first page's small-object word, which the large object's
        // free reads too (so it is in the cache when a stashed span is reused), else the
        // leaf's span entry, a line that nothing else on these paths reads.
        let map = heap.page_map();
        let mut span = crate::page_map::word_large_span(map.small_word_of(p as usize));
        if span.is_null() {
            span = map.lookup(p as usize);
        }
        if span.is_null() {
            return false;
        }
        // SAFETY: page-map entries point to span records, which are never unmapped; `p` is
        // a live object of the caller's, so the record is its span's for as long as this
        // runs (nothing frees or reuses it meanwhile).
        let span = unsafe { &*span };
        if span.kind() != SpanKind::Large || span.start_addr() != p as usize {
            return false;
        }
        if self.record(heap.source(), span, frames, size, weight, site) {
            // Its free must find the record (to take the sample off), not go by a listed
            // word to a thread cache's list without reading it.
            map.name_large_record(span);
        } else {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
        true
    }

    /// Records a sampled object of `size` bytes standing for `weight` bytes, allocated from
    /// `frames`, whose span is `span`, and marks the span. `false` when metadata memory ran
    /// out (nothing is recorded). In the shard of the calling thread (by where its stack
    /// is). `site` is where these frames were counted before, if known (then no hash and
    /// no search): set to where they are now, or [`Site::NONE`] if they have no record.
    pub fn record(
        &self,
        source: &impl PageSource,
        span: &Span,
        frames: &[usize],
        size: usize,
        weight: usize,
        site: &mut Site,
    ) -> bool {
        let on_stack = 0u8;
        let shard = Self::shard_at(core::hint::black_box(&on_stack) as *const u8 as usize);
        self.record_in(shard, source, span, frames, size, weight, site)
    }

    /// [`SampleTable::record`] in shard `shard`.
    #[allow(clippy::too_many_arguments)]
    fn record_in(
        &self,
        shard: usize,
        source: &impl PageSource,
        span: &Span,
        frames: &[usize],
        size: usize,
        weight: usize,
        site: &mut Site,
    ) -> bool {
        let frames = &frames[..frames.len().min(MAX_FRAMES)];
        // SAFETY: a site is one of this table's stack records (see `Site`), never freed;
        // its shard is written once, when it is made, before any site names it.
        let known = !site.0.is_null() && unsafe { (*site.0).shard } == shard;
        let lock: &Shard = &self.shards[shard];
        let mut inner = lock.lock();
        let stack = if known {
            debug_assert!(
                // SAFETY: as above; its frames are read under its shard's lock, held.
                unsafe { (&(*site.0).frames)[..(*site.0).depth] == *frames },
                "a site passed back with other frames"
            );
            site.0
        } else {
            match inner.find_or_add(shard, source, frames, hash_frames(frames)) {
                Some(stack) => stack,
                None => {
                    *site = Site::NONE;
                    return false;
                }
            }
        };
        *site = Site(stack);
        let Some(rec) = inner.samples.alloc(source) else {
            return false;
        };
        let rec = rec.as_ptr();
        let head = inner.live;
        // SAFETY: a fresh record of ours and the live list's head, under the lock.
        unsafe {
            rec.write(LiveSample {
                prev: null_mut(),
                next: head,
                shard: lock,
                stack,
                size,
                weight,
            });
            if !head.is_null() {
                (*head).prev = rec;
            }
            (*stack).alloc_bytes += weight as u64;
            // Both below `isize::MAX` (a weight saturates there, a size is an allocation's):
            // converted as signed, one instruction each.
            (*stack).alloc_objects += weight as isize as f64 / size.max(1) as isize as f64;
        }
        inner.live = rec;
        inner.live_count += 1;
        span.set_sample(rec as usize);
        true
    }

    /// The table's totals now. Allocates the copy before it takes the locks (and again if
    /// the table grew meanwhile), so that nothing allocates while a lock is held: an
    /// allocation there could be sampled, and recording it takes a shard's lock. A stack
    /// recorded in several shards is one entry, its totals added up; the entries come in
    /// the order of their stacks.
    pub fn snapshot(&self) -> Snapshot {
        loop {
            let want: usize = self.shards.iter().map(|s| s.lock().stack_count).sum();
            let mut stacks = Vec::with_capacity(want + 16);
            let mut shards = self.lock_all();
            if shards.iter().map(|s| s.stack_count).sum::<usize>() > stacks.capacity() {
                continue;
            }
            for inner in &mut shards {
                inner.fill(&mut stacks);
            }
            let params = self.params();
            let live_samples = shards.iter().map(|s| s.live_count).sum();
            let metadata_bytes = shards
                .iter()
                .map(|s| s.samples.mapped_bytes() + s.stacks.mapped_bytes() + s.bucket_bytes)
                .sum();
            drop(shards);
            // In place, so nothing allocates here either.
            stacks.sort_unstable_by(|a, b| a.frames().cmp(b.frames()));
            stacks.dedup_by(|later, kept| {
                let same = later.frames() == kept.frames();
                if same {
                    kept.inuse_bytes += later.inuse_bytes;
                    kept.inuse_objects += later.inuse_objects;
                    kept.alloc_bytes += later.alloc_bytes;
                    kept.alloc_objects += later.alloc_objects;
                }
                same
            });
            return Snapshot {
                stacks,
                mean: params.mean,
                live_samples,
                reentered: self.reentered.load(Ordering::Relaxed),
                dropped: self.dropped.load(Ordering::Relaxed),
                metadata_bytes,
                started_ms: self.started_ms.load(Ordering::Relaxed),
            };
        }
    }

    /// Live sampled objects now.
    pub fn live_samples(&self) -> usize {
        self.shards.iter().map(|s| s.lock().live_count).sum()
    }

    /// Takes every shard's lock without a guard (`fork`'s prepare handler).
    pub fn lock_for_fork(&self) {
        for s in &self.shards {
            s.raw_lock();
        }
    }

    /// Releases the locks taken by [`SampleTable::lock_for_fork`].
    ///
    /// # Safety
    /// The calling thread took them with [`SampleTable::lock_for_fork`] (in a forked child:
    /// its parent's thread that forked).
    pub unsafe fn unlock_after_fork(&self) {
        for s in &self.shards {
            // SAFETY: per the caller.
            unsafe { s.raw_unlock() };
        }
    }
}

impl Default for SampleTable {
    fn default() -> Self {
        Self::new()
    }
}

impl Inner {
    const fn new() -> Inner {
        Inner {
            live: null_mut(),
            live_count: 0,
            buckets: null_mut(),
            all: null_mut(),
            stack_count: 0,
            samples: FixedAlloc::new(),
            stacks: FixedAlloc::new(),
            bucket_bytes: 0,
            #[cfg(test)]
            searches: 0,
        }
    }

    /// Takes a live sample out of the shard (whose lock the caller holds).
    ///
    /// # Safety
    /// `rec` is a live sample of this shard, taken off its span (so that nobody else
    /// removes it).
    unsafe fn remove(&mut self, rec: *mut LiveSample) {
        // SAFETY: per the caller, a record on the shard's live list.
        unsafe {
            let (prev, next) = ((*rec).prev, (*rec).next);
            if prev.is_null() {
                self.live = next;
            } else {
                (*prev).next = next;
            }
            if !next.is_null() {
                (*next).prev = prev;
            }
            self.live_count -= 1;
            self.samples.free(NonNull::new_unchecked(rec));
        }
    }

    /// The record of `frames`, made if it is new. `None` when metadata memory ran out.
    fn find_or_add(
        &mut self,
        shard: usize,
        source: &impl PageSource,
        frames: &[usize],
        hash: u64,
    ) -> Option<*mut StackRecord> {
        #[cfg(test)]
        {
            self.searches += 1;
        }
        if self.buckets.is_null() {
            self.buckets = source.map(PAGE_SIZE, PAGE_SIZE)?.as_ptr().cast();
            self.bucket_bytes = PAGE_SIZE;
        }
        // SAFETY: the bucket array has BUCKETS entries (zero: null heads).
        let bucket = unsafe { self.buckets.add(hash as usize % BUCKETS) };
        // SAFETY: as above; the chain holds our records.
        let mut s = unsafe { *bucket };
        while !s.is_null() {
            // SAFETY: a stack record of ours.
            let r = unsafe { &*s };
            if r.hash == hash && r.frames[..r.depth] == *frames {
                return Some(s);
            }
            s = r.next;
        }
        let rec = self.stacks.alloc(source)?.as_ptr();
        let mut copy = [0usize; MAX_FRAMES];
        copy[..frames.len()].copy_from_slice(frames);
        // SAFETY: a fresh record of ours; the bucket is ours.
        unsafe {
            rec.write(StackRecord {
                next: *bucket,
                shard,
                all: self.all,
                hash,
                depth: frames.len(),
                frames: copy,
                alloc_bytes: 0,
                alloc_objects: 0.0,
                inuse_bytes: 0,
                inuse_objects: 0.0,
            });
            *bucket = rec;
        }
        self.all = rec;
        self.stack_count += 1;
        Some(rec)
    }

    /// Pushes every stack with something to show onto `out`, whose capacity holds them all
    /// (so nothing allocates).
    fn fill(&mut self, out: &mut Vec<StackTotals>) {
        // SAFETY: the records are ours and the caller holds the lock (the whole block).
        unsafe {
            let mut s = self.all;
            while !s.is_null() {
                (*s).inuse_bytes = 0;
                (*s).inuse_objects = 0.0;
                s = (*s).all;
            }
            let mut l = self.live;
            while !l.is_null() {
                let st = (*l).stack;
                (*st).inuse_bytes += (*l).weight as u64;
                (*st).inuse_objects += (*l).weight as f64 / (*l).size.max(1) as f64;
                l = (*l).next;
            }
            let mut s = self.all;
            while !s.is_null() {
                let r = &*s;
                if r.inuse_bytes != 0 || r.alloc_bytes != 0 {
                    debug_assert!(out.len() < out.capacity());
                    out.push(StackTotals {
                        frames: r.frames,
                        depth: r.depth,
                        inuse_bytes: r.inuse_bytes as f64,
                        inuse_objects: r.inuse_objects,
                        alloc_bytes: r.alloc_bytes as f64,
                        alloc_objects: r.alloc_objects,
                    });
                }
                s = r.all;
            }
        }
    }
}

/// The large-object free path's check: if `span`'s object was sampled, takes its record
/// out of its table. One load when it was not.
#[inline]
pub fn release_sample(span: &Span) {
    if span.sample() != 0 {
        release_sample_slow(span);
    }
}

#[cold]
#[inline(never)]
fn release_sample_slow(span: &Span) {
    let rec = span.take_sample() as *mut LiveSample;
    if rec.is_null() {
        return;
    }
    // SAFETY: the span held our record, taken off it just now by this thread alone; the
    // record names its shard, which outlives its records.
    unsafe { (*(*rec).shard).lock().remove(rec) };
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::heap::tests::heap;

    /// The sampled object's span straight from the page heap.
    fn from_heap<S: PageSource>(
        heap: &Heap<S>,
    ) -> impl FnOnce(usize, usize) -> Option<(NonNull<u8>, bool)> + '_ {
        |bytes, align| heap.alloc_large(bytes, align)
    }

    fn totals_for<'a>(snap: &'a Snapshot, frames: &[usize]) -> Option<&'a StackTotals> {
        snap.stacks.iter().find(|s| s.frames() == frames)
    }

    #[test]
    fn records_live_samples_per_stack_and_frees_them() {
        let heap = heap();
        let table = SampleTable::new();
        table.start(1000, 1, 0);
        let a = [1usize, 2, 3];
        let b = [9usize, 8];
        let pa: Vec<_> = (0..10)
            .map(|_| {
                table.alloc_sampled(
                    &heap,
                    100,
                    8,
                    false,
                    &a,
                    1000,
                    from_heap(&heap),
                    &mut Site::default(),
                )
            })
            .collect();
        let pb = table.alloc_sampled(
            &heap,
            50_000,
            8,
            true,
            &b,
            60_000,
            from_heap(&heap),
            &mut Site::default(),
        );
        assert!(pa.iter().chain([&pb]).all(|p| !p.is_null()));
        // SAFETY: a new zeroed object of 50 000 bytes.
        let bytes = unsafe { core::slice::from_raw_parts(pb, 50_000) };
        assert!(bytes.iter().all(|&x| x == 0));
        let snap = table.snapshot();
        assert_eq!(snap.live_samples, 11);
        let ta = totals_for(&snap, &a).unwrap();
        assert_eq!((ta.inuse_bytes, ta.inuse_objects), (10_000.0, 100.0));
        assert_eq!((ta.alloc_bytes, ta.alloc_objects), (10_000.0, 100.0));
        let tb = totals_for(&snap, &b).unwrap();
        assert_eq!((tb.inuse_bytes, tb.inuse_objects), (60_000.0, 1.2));
        // Sampled objects are large objects whose spans know their record.
        for &p in &pa {
            match heap.owner(p) {
                crate::heap::Owner::Large(span) => {
                    // SAFETY: a live span record.
                    let span = unsafe { span.as_ref() };
                    assert_ne!(span.sample(), 0);
                    release_sample(span);
                    assert_eq!(span.sample(), 0);
                    // SAFETY: our large object, freed once.
                    unsafe { heap.free_large(NonNull::from(span)) };
                }
                _ => panic!("a sampled object is a large object"),
            }
        }
        let snap = table.snapshot();
        assert_eq!(snap.live_samples, 1);
        let ta = totals_for(&snap, &a).unwrap();
        assert_eq!(ta.inuse_bytes, 0.0);
        assert_eq!(
            ta.alloc_bytes, 10_000.0,
            "freed objects stay in the allocation totals"
        );
        // A restart clears the allocation totals; live samples stay.
        table.start(1000, 1, 0);
        let snap = table.snapshot();
        assert!(totals_for(&snap, &a).is_none());
        assert_eq!(totals_for(&snap, &b).unwrap().alloc_bytes, 0.0);
        assert_eq!(totals_for(&snap, &b).unwrap().inuse_bytes, 60_000.0);
        heap.check_invariants();
    }

    #[test]
    fn a_large_object_is_recorded_where_it_is_and_nothing_else_is() {
        let heap = heap();
        let table = SampleTable::new();
        table.start(1000, 1, 0);
        let (p, _) = heap.alloc_large(40_000, 8).unwrap();
        let p = p.as_ptr();
        let frames = [4usize, 5];
        // Not the start of a large span: interior addresses (on the first page, which the
        // page map knows, and on another), an address of no object, the start of a small
        // span.
        assert!(!table.record_large(
            &heap,
            p.wrapping_add(16),
            40_000,
            &frames,
            50_000,
            &mut Site::default()
        ));
        assert!(!table.record_large(
            &heap,
            p.wrapping_add(8192),
            40_000,
            &frames,
            50_000,
            &mut Site::default()
        ));
        assert!(!table.record_large(&heap, 8192 as *mut u8, 1, &frames, 1, &mut Site::default()));
        let mut cache = crate::thread_cache::ThreadCache::new();
        let small = cache.alloc(&heap, 64, 8);
        let crate::heap::Owner::Small(small_span) = heap.owner(small) else {
            panic!("a small object");
        };
        // SAFETY: the page map's record of our live small object's span.
        let small_start = unsafe { small_span.as_ref() }.start_addr() as *mut u8;
        assert!(!table.record_large(&heap, small_start, 64, &frames, 64, &mut Site::default()));
        assert!(totals_for(&table.snapshot(), &frames).is_none());
        assert_eq!(table.live_samples(), 0);
        assert!(table.record_large(&heap, p, 40_000, &frames, 50_000, &mut Site::default()));
        assert_eq!(table.live_samples(), 1);
        let snap = table.snapshot();
        let metadata: usize = (table.shards.iter())
            .map(|s| {
                let inner = s.lock();
                inner.samples.mapped_bytes() + inner.stacks.mapped_bytes() + inner.bucket_bytes
            })
            .sum();
        assert!(metadata > 0);
        assert_eq!(snap.metadata_bytes, metadata);
        let t = totals_for(&snap, &frames).unwrap();
        assert_eq!((t.inuse_bytes, t.inuse_objects), (50_000.0, 1.25));
        // SAFETY: the page map's record of our live large object.
        let span = unsafe { &*heap.page_map().lookup(p as usize) };
        assert_ne!(span.sample(), 0);
        release_sample(span);
        assert_eq!(
            totals_for(&table.snapshot(), &frames).unwrap().inuse_bytes,
            0.0
        );
        // SAFETY: our large object, freed once; the small one too.
        unsafe {
            heap.free_large(NonNull::from(span));
            cache.free(&heap, small);
        }
        cache.flush(&heap);
        heap.check_invariants();
    }

    #[test]
    fn a_site_passed_back_finds_its_stack_without_a_search() {
        let heap = heap();
        let table = SampleTable::new();
        table.start(1000, 1, 0);
        let searches = || table.shards.iter().map(|s| s.lock().searches).sum::<u64>();
        let (frames, other) = ([21usize, 22, 23], [21usize, 24]);
        let mut site = Site::NONE;
        let mut objects = Vec::new();
        let mut sample = |frames: &[usize], site: &mut Site| {
            let p = table.alloc_sampled(
                &heap,
                40_000,
                8,
                false,
                frames,
                40_000,
                from_heap(&heap),
                site,
            );
            assert!(!p.is_null());
            objects.push(p);
        };
        for _ in 0..50 {
            sample(&frames, &mut site);
        }
        assert_ne!(site, Site::NONE);
        assert_eq!(searches(), 1, "looked up once, then found by its site");
        let kept = site;
        // Without a site: looked up, and the site now names the other stack's record.
        sample(&other, &mut Site::default());
        let mut other_site = Site::NONE;
        sample(&other, &mut other_site);
        assert_eq!(searches(), 3);
        assert_ne!(other_site, kept);
        sample(&other, &mut other_site);
        assert_eq!(searches(), 3);
        let snap = table.snapshot();
        assert_eq!(totals_for(&snap, &frames).unwrap().inuse_objects, 50.0);
        assert_eq!(totals_for(&snap, &other).unwrap().inuse_objects, 3.0);
        // A site from another shard is not used: looked up in this one.
        let (p, _) = heap.alloc_large(40_000, 8).unwrap();
        // SAFETY: the page map's record of our live large object.
        let span = unsafe { &*heap.page_map().lookup(p.as_ptr() as usize) };
        // SAFETY: a site of this table.
        let shard = unsafe { (*kept.0).shard };
        let mut site = kept;
        assert!(table.record_in(
            (shard + 1) % SHARDS,
            heap.source(),
            span,
            &frames,
            40_000,
            40_000,
            &mut site
        ));
        assert_eq!(searches(), 4);
        assert_ne!(site, kept);
        objects.push(p.as_ptr());
        for p in objects {
            // SAFETY: the page map's record of our live large object, freed once.
            unsafe {
                let span = &*heap.page_map().lookup(p as usize);
                release_sample(span);
                heap.free_large(NonNull::from(span));
            }
        }
        assert_eq!(table.live_samples(), 0);
        heap.check_invariants();
    }

    #[test]
    fn a_stack_sampled_in_several_shards_is_one_entry_with_their_sums() {
        let heap = heap();
        let table = SampleTable::new();
        table.start(1000, 1, 0);
        let frames = [11usize, 12, 13];
        let other = [11usize, 12];
        let mut spans = Vec::new();
        for (shard, size, weight) in [
            (0, 40_000, 50_000),
            (5, 80_000, 100_000),
            (5, 40_000, 40_000),
        ] {
            let (p, _) = heap.alloc_large(size, 8).unwrap();
            // SAFETY: the page map's record of our live large object.
            let span = unsafe { &*heap.page_map().lookup(p.as_ptr() as usize) };
            assert!(table.record_in(
                shard,
                heap.source(),
                span,
                &frames,
                size,
                weight,
                &mut Site::default()
            ));
            spans.push(span);
        }
        let (p, _) = heap.alloc_large(40_000, 8).unwrap();
        // SAFETY: as above.
        let span = unsafe { &*heap.page_map().lookup(p.as_ptr() as usize) };
        assert!(table.record_in(
            3,
            heap.source(),
            span,
            &other,
            40_000,
            40_000,
            &mut Site::default()
        ));
        spans.push(span);
        let snap = table.snapshot();
        assert_eq!(snap.live_samples, 4);
        assert_eq!(
            snap.stacks.iter().filter(|s| s.frames() == frames).count(),
            1,
            "one entry for the stack of two shards"
        );
        let t = totals_for(&snap, &frames).unwrap();
        assert_eq!((t.inuse_bytes, t.alloc_bytes), (190_000.0, 190_000.0));
        assert_eq!(
            (t.inuse_objects, t.alloc_objects),
            (3.5, 3.5),
            "1.25 + 1.25 + 1"
        );
        // One record per stack in each shard that saw it: shard 5's two samples share one.
        let records: Vec<usize> = (table.shards.iter())
            .map(|s| s.lock().stack_count)
            .collect();
        assert_eq!(records, [1, 0, 0, 1, 0, 1, 0, 0]);
        assert_eq!(totals_for(&snap, &other).unwrap().inuse_bytes, 40_000.0);
        // A free finds its sample's shard from the span alone.
        for span in spans {
            release_sample(span);
            // SAFETY: our large object, freed once.
            unsafe { heap.free_large(NonNull::from(span)) };
        }
        let snap = table.snapshot();
        assert_eq!(snap.live_samples, 0);
        assert_eq!(totals_for(&snap, &frames).unwrap().inuse_bytes, 0.0);
        assert_eq!(totals_for(&snap, &frames).unwrap().alloc_bytes, 190_000.0);
        heap.check_invariants();
    }

    #[test]
    fn threads_stacks_spread_over_the_shards() {
        // Stacks of 8 MiB and a guard page, one after another as the thread library maps
        // them: each shard takes one of any eight in a row, or near enough.
        let mut used = [0usize; SHARDS];
        for t in 0..64usize {
            used[SampleTable::shard_at(0x7f00_0000_0000 + t * ((8 << 20) + 4096) + 0x7_f000)] += 1;
        }
        assert!(used.iter().all(|&n| (4..=12).contains(&n)), "{used:?}");
    }

    #[test]
    fn samples_not_taken_for_reentry_are_counted() {
        let table = SampleTable::new();
        table.start(1, 1, 0);
        assert_eq!(table.snapshot().reentered, 0);
        table.note_reentered();
        table.note_reentered();
        assert_eq!(table.snapshot().reentered, 2);
    }

    #[test]
    fn a_zeroed_sampled_object_is_zero_on_reused_memory() {
        let heap = heap();
        let table = SampleTable::new();
        table.start(1, 1, 0);
        let (p, _) = heap.alloc_large(40_000, 8).unwrap();
        // SAFETY: our large object of 40 000 bytes, dirtied, then freed once (it waits in
        // the page heap's large-span cache for the same length).
        unsafe {
            core::ptr::write_bytes(p.as_ptr(), 0xab, 40_000);
            heap.free_large(NonNull::new_unchecked(
                heap.page_map().lookup(p.as_ptr() as usize),
            ));
        }
        let q = table.alloc_sampled(
            &heap,
            40_000,
            8,
            true,
            &[7],
            40_000,
            from_heap(&heap),
            &mut Site::default(),
        );
        assert_eq!(q, p.as_ptr(), "the dirty span again");
        // SAFETY: a live object of at least 40 000 bytes.
        let bytes = unsafe { core::slice::from_raw_parts(q, 40_000) };
        assert!(bytes.iter().all(|&b| b == 0));
        // SAFETY: the page map's record of our sampled large object, freed once.
        unsafe {
            let span = heap.page_map().lookup(q as usize);
            release_sample(&*span);
            heap.free_large(NonNull::new_unchecked(span));
        }
        heap.check_invariants();
    }

    #[test]
    fn metadata_failure_hands_the_object_out_unsampled() {
        let heap = heap();
        let table = SampleTable::new();
        table.start(1, 1, 0);
        // Map the heap's first memory, then fail every further mapping.
        let warm = table.alloc_sampled(
            &heap,
            16,
            8,
            false,
            &[1],
            16,
            from_heap(&heap),
            &mut Site::default(),
        );
        assert!(!warm.is_null());
        let n = table.live_samples();
        heap.source().fail_after(0);
        let mut got = Vec::new();
        for i in 0..10_000usize {
            let p = table.alloc_sampled(
                &heap,
                16,
                8,
                false,
                &[i + 2],
                16,
                from_heap(&heap),
                &mut Site::default(),
            );
            if p.is_null() {
                break;
            }
            got.push(p);
        }
        heap.source().heal();
        let snap = table.snapshot();
        assert!(snap.dropped > 0 || got.len() < 10_000);
        assert_eq!(snap.live_samples, n + got.len() - snap.dropped as usize);
    }

    #[test]
    fn stop_turns_the_setting_off() {
        let table = SampleTable::new();
        let on = table.start(4096, 5, 0);
        assert_eq!((on.mean, on.seed), (4096, 5));
        let off = table.stop();
        assert_eq!(off.mean, 0);
        assert_ne!(off.epoch, on.epoch);
    }
}
