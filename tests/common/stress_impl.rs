//! The stress workload, in the shape of mimalloc's `test/test-stress.c`; shared by
//! `tests/stress.rs` and `examples/stress.rs` (which includes this file with `#[path]`).
//!
//! `threads` threads run at once; every round they are all joined and re-created. Each
//! thread allocates objects (mostly small, 1% medium, 0.01% huge), keeps some in a local
//! array and some in a longer-lived "retained" array, frees some, resizes some, and swaps
//! some with a process-wide array of transfer slots (atomic pointers), so objects are freed
//! by threads other than their allocator, often after that thread has exited. Every object
//! is filled with a pattern derived from its address, checked when it is freed or resized;
//! zeroed objects are checked to be zero first.
#![allow(dead_code)]

use core::sync::atomic::{AtomicPtr, Ordering};
use spanalloc::raw;

/// Number of transfer slots.
pub const TRANSFERS: usize = 1000;

/// The process-wide transfer slots.
static TRANSFER: [AtomicPtr<usize>; TRANSFERS] =
    [const { AtomicPtr::new(core::ptr::null_mut()) }; TRANSFERS];

const COOKIE: usize = 0x5bd1_e995_1234_5678;

/// The stress parameters.
#[derive(Copy, Clone, Debug)]
pub struct Params {
    /// Threads alive at once.
    pub threads: usize,
    /// Work per thread: thread `tid` allocates `100 * scale * (tid % 8 + 1)` objects and
    /// retains half as many more (mimalloc's definition; its default is 10).
    pub scale: usize,
    /// Rounds; threads are re-created every round.
    pub iter: usize,
}

/// A deterministic generator (splitmix-like), as in mimalloc's `pick`.
struct Rand(u64);

impl Rand {
    fn pick(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.pick() % 100 < percent
    }
}

/// Word `i` of the object at `p` of `items` words.
#[inline]
fn pattern(p: *mut usize, items: usize, i: usize) -> usize {
    if i == 0 {
        items ^ COOKIE
    } else {
        (p as usize).rotate_left(i as u32 % 64) ^ i ^ COOKIE
    }
}

fn fill(p: *mut usize, items: usize) {
    for i in 0..items {
        // SAFETY: `p` is a live object of `items` words.
        unsafe { p.add(i).write(pattern(p, items, i)) };
    }
}

/// Checks the object's pattern (as written at address `was`) over its first `upto` words.
fn check(p: *mut usize, was: *mut usize, items: usize, upto: usize) {
    for i in 0..upto.min(items) {
        // SAFETY: `p` is a live object of at least `upto` words.
        let w = unsafe { p.add(i).read() };
        if w != pattern(was, items, i) {
            panic!("stress: object {p:?} ({items} words) word {i} is {w:#x}: heap corruption");
        }
    }
}

/// The number of words of a live object (its word 0).
fn items_of(p: *mut usize) -> usize {
    // SAFETY: `p` is a live object of at least one word.
    unsafe { p.read() ^ COOKIE }
}

/// Allocates an object of `items` words (at least one), zeroed or not, and fills it.
fn alloc_items(items: usize, r: &mut Rand) -> *mut usize {
    let items = items.max(1);
    let bytes = items * 8;
    let zeroed = r.chance(10);
    // SAFETY: 8 is a power of two.
    let p = unsafe {
        if zeroed {
            raw::alloc_zeroed(bytes, 8)
        } else {
            raw::alloc(bytes, 8)
        }
    } as *mut usize;
    assert!(
        !p.is_null(),
        "stress: out of memory allocating {bytes} bytes"
    );
    assert_eq!(p as usize % 8, 0);
    if zeroed {
        for i in 0..items {
            // SAFETY: a new object of `items` words.
            let w = unsafe { p.add(i).read() };
            assert_eq!(w, 0, "stress: zeroed object {p:?} word {i} is {w:#x}");
        }
    }
    fill(p, items);
    p
}

/// Checks and frees an object (null is ignored), by sized dealloc or by `free`.
fn free_items(p: *mut usize, r: &mut Rand) {
    if p.is_null() {
        return;
    }
    let items = items_of(p);
    check(p, p, items, items);
    // SAFETY: a live object of `items` words, freed once.
    unsafe {
        if r.chance(50) {
            raw::dealloc(p.cast(), items * 8, 8);
        } else {
            raw::free(p.cast());
        }
    }
}

/// Resizes an object, checking that the kept words survived, and refills it.
fn realloc_items(p: *mut usize, r: &mut Rand) -> *mut usize {
    let items = items_of(p);
    check(p, p, items, items);
    let new_items = (items / 2 + (r.pick() % (items as u64 * 2 + 8)) as usize).max(1);
    // SAFETY: a live object of ours with alignment 8; on success `p` is given up.
    let q = unsafe { raw::realloc(p.cast(), new_items * 8, 8) } as *mut usize;
    assert!(
        !q.is_null(),
        "stress: realloc to {} bytes failed",
        new_items * 8
    );
    check(q, p, items, new_items);
    fill(q, new_items);
    q
}

/// The size of a new object, in words: mostly under 128, 1% up to 100x, 0.01% up to
/// 10000x (about 10 MiB), as in mimalloc's test-stress.
fn pick_items(r: &mut Rand) -> usize {
    let mut items = (r.pick() % 128) as usize;
    if r.chance(1) {
        items *= 100;
        if r.chance(1) {
            items *= 100;
        }
    }
    items
}

/// One thread's work.
fn stress(tid: u64, params: Params) {
    let mut r = Rand(tid.wrapping_mul(0x2545_F491_4F6C_DD1D) ^ 0x1234);
    let mut allocs = 100 * params.scale * (tid as usize % 8 + 1);
    let mut retain = allocs / 2;
    let mut data: Vec<*mut usize> = Vec::new();
    let mut retained: Vec<*mut usize> = Vec::with_capacity(retain);
    while allocs > 0 || retain > 0 {
        if retain == 0 || (r.chance(50) && allocs > 0) {
            // 50%+ alloc
            allocs -= 1;
            data.push(alloc_items(pick_items(&mut r), &mut r));
        } else {
            // 25% retain
            retained.push(alloc_items(10 * pick_items(&mut r), &mut r));
            retain -= 1;
        }
        if r.chance(66) && !data.is_empty() {
            // 66% free previous alloc
            let idx = (r.pick() % data.len() as u64) as usize;
            let p = data.swap_remove(idx);
            free_items(p, &mut r);
        }
        if r.chance(10) && !data.is_empty() {
            // 10% resize
            let idx = (r.pick() % data.len() as u64) as usize;
            data[idx] = realloc_items(data[idx], &mut r);
        }
        if r.chance(25) && !data.is_empty() {
            // 25% exchange a local pointer with the (shared) transfer buffer
            let data_idx = (r.pick() % data.len() as u64) as usize;
            let transfer_idx = (r.pick() % TRANSFERS as u64) as usize;
            let p = data[data_idx];
            let q = TRANSFER[transfer_idx].swap(p, Ordering::AcqRel);
            if q.is_null() {
                data.swap_remove(data_idx);
            } else {
                // Check it right away: it was allocated by another (maybe exited) thread.
                let items = items_of(q);
                check(q, q, items, items);
                data[data_idx] = q;
            }
        }
    }
    // Free everything that is left.
    for p in retained.drain(..) {
        free_items(p, &mut r);
    }
    for p in data.drain(..) {
        free_items(p, &mut r);
    }
}

/// Runs the whole workload; at the end frees the transfer slots too. Returns the number of
/// threads run.
pub fn run(params: Params) -> usize {
    let mut started = 0;
    for n in 0..params.iter {
        let handles: Vec<_> = (0..params.threads)
            .map(|i| {
                let tid = (n * params.threads + i) as u64;
                started += 1;
                std::thread::spawn(move || stress(tid, params))
            })
            .collect();
        for h in handles {
            h.join().expect("stress thread panicked");
        }
    }
    let mut r = Rand(7);
    for slot in TRANSFER.iter() {
        free_items(slot.swap(core::ptr::null_mut(), Ordering::AcqRel), &mut r);
    }
    started
}

/// Reads a parameter from the command line (`THREADS SCALE ITER` as positional
/// arguments) or else from the environment, else `default`.
pub fn param(args: &[String], pos: usize, env: &str, default: usize) -> usize {
    args.get(pos)
        .and_then(|a| a.parse().ok())
        .or_else(|| std::env::var(env).ok().and_then(|v| v.parse().ok()))
        .unwrap_or(default)
}
