//! Thread teardown: allocations and frees from Rust `thread_local!` destructors and from a
//! pthread key destructor that runs after spanalloc's own thread-exit destructor flushed
//! the thread's cache; objects of an exited thread freed by others.

use spanalloc::SpanAlloc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

#[global_allocator]
static A: SpanAlloc = SpanAlloc;

/// Sizes from the smallest class to large objects.
const SIZES: [usize; 9] = [1, 16, 24, 100, 1000, 4000, 20_000, 40_000, 300_000];

/// A heap block filled with a pattern of its address, checked when dropped.
struct Block(Vec<u8>);

impl Block {
    fn new(size: usize) -> Block {
        let mut v = vec![0u8; size];
        let base = v.as_ptr() as usize;
        for (i, b) in v.iter_mut().enumerate() {
            *b = (base + i) as u8 ^ 0xc3;
        }
        Block(v)
    }
    fn check(&self) {
        let base = self.0.as_ptr() as usize;
        for (i, &b) in self.0.iter().enumerate() {
            assert_eq!(b, (base + i) as u8 ^ 0xc3, "block {base:#x} byte {i}");
        }
    }
}

impl Drop for Block {
    fn drop(&mut self) {
        self.check();
    }
}

/// Allocates and frees a mix of blocks, keeping none. Returns how many it made.
fn churn() -> usize {
    let mut n = 0;
    for round in 0..3 {
        let blocks: Vec<Block> = SIZES.iter().map(|&s| Block::new(s + round)).collect();
        n += blocks.len();
        let map: std::collections::HashMap<usize, String> =
            (0..300).map(|i| (i, format!("value {i}"))).collect();
        assert_eq!(map.len(), 300);
        drop(blocks);
    }
    n
}

// ---------------------------------------------------------------------------------------
// Rust thread_local! destructors.

static TLS_DTOR_RUNS: AtomicUsize = AtomicUsize::new(0);
/// Blocks made in destructors, to be freed by the main thread.
static HANDED_OUT: Mutex<Vec<Block>> = Mutex::new(Vec::new());

struct TlsHolder {
    early: Vec<Block>,
}

impl Drop for TlsHolder {
    fn drop(&mut self) {
        // Free what the thread allocated while it ran.
        for b in self.early.drain(..) {
            drop(b);
        }
        // Allocate and free.
        assert!(churn() > 0);
        // Allocate blocks that outlive the thread; another thread frees them.
        let keep: Vec<Block> = SIZES.iter().map(|&s| Block::new(s)).collect();
        HANDED_OUT.lock().unwrap().extend(keep);
        TLS_DTOR_RUNS.fetch_add(1, Ordering::SeqCst);
    }
}

thread_local! {
    static HOLDER: std::cell::RefCell<TlsHolder> =
        const { std::cell::RefCell::new(TlsHolder { early: Vec::new() }) };
}

#[test]
fn thread_local_destructors_allocate_and_free() {
    let threads = 8;
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            std::thread::spawn(|| {
                HOLDER.with(|h| {
                    h.borrow_mut().early = SIZES.iter().map(|&s| Block::new(s)).collect();
                });
                churn();
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    assert!(TLS_DTOR_RUNS.load(Ordering::SeqCst) >= threads);
    let blocks = std::mem::take(&mut *HANDED_OUT.lock().unwrap());
    assert!(blocks.len() >= threads * SIZES.len());
    drop(blocks); // checks every block's pattern, then frees it on this thread
    spanalloc::flush_thread_cache();
    spanalloc::internals::heap().check_invariants();
}

// ---------------------------------------------------------------------------------------
// A pthread key destructor that runs after spanalloc's.

static KEY_DTOR_RUNS: AtomicUsize = AtomicUsize::new(0);
static KEY_HANDED_OUT: Mutex<Vec<Block>> = Mutex::new(Vec::new());

/// The value stored under our key: blocks the thread made, and how many more destructor
/// rounds to ask for.
struct KeyValue {
    blocks: Vec<Block>,
    rounds_left: usize,
    key: libc::pthread_key_t,
}

extern "C" fn key_destructor(value: *mut libc::c_void) {
    // SAFETY: the value is the `Box<KeyValue>` leaked by `pthread_key_thread`, handed back
    // once per round.
    let mut v = unsafe { Box::from_raw(value.cast::<KeyValue>()) };
    KEY_DTOR_RUNS.fetch_add(1, Ordering::SeqCst);
    // Free what the thread allocated while alive (spanalloc's cache is flushed by now).
    v.blocks.clear();
    assert!(churn() > 0);
    // Blocks that outlive the thread.
    let keep: Vec<Block> = SIZES.iter().map(|&s| Block::new(s * 3)).collect();
    KEY_HANDED_OUT.lock().unwrap().extend(keep);
    if v.rounds_left > 0 {
        // Ask for another round: glibc calls destructors again (up to
        // PTHREAD_DESTRUCTOR_ITERATIONS rounds) while values are set; by the second round
        // every key's destructor, spanalloc's included, has run once.
        v.rounds_left -= 1;
        v.blocks = SIZES.iter().map(|&s| Block::new(s + 5)).collect();
        let key = v.key;
        // SAFETY: a valid key; the value is a leaked box that the next round takes back.
        let rc = unsafe { libc::pthread_setspecific(key, Box::into_raw(v).cast()) };
        assert_eq!(rc, 0);
    }
}

fn pthread_key_thread(key: libc::pthread_key_t) {
    // Make this thread's cache active (registered with spanalloc's exit key) first.
    churn();
    let v = Box::new(KeyValue {
        blocks: SIZES.iter().map(|&s| Block::new(s)).collect(),
        rounds_left: 1,
        key,
    });
    // SAFETY: a valid key; the destructor takes the box back.
    let rc = unsafe { libc::pthread_setspecific(key, Box::into_raw(v).cast()) };
    assert_eq!(rc, 0);
    churn();
}

#[test]
fn pthread_key_destructor_after_the_cache_was_flushed() {
    // spanalloc made its thread-exit key on the process's first allocation, long before
    // this one: glibc runs key destructors in key order, so ours runs after spanalloc has
    // flushed the exiting thread's cache (and, in the second round, certainly after).
    let _warm = Block::new(100);
    let mut key: libc::pthread_key_t = 0;
    // SAFETY: `key` is a valid out-pointer; the destructor is an `extern "C" fn`.
    let rc = unsafe { libc::pthread_key_create(&mut key, Some(key_destructor)) };
    assert_eq!(rc, 0);
    let threads = 8;
    let handles: Vec<_> = (0..threads)
        .map(|_| std::thread::spawn(move || pthread_key_thread(key)))
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    // Two rounds per thread.
    assert_eq!(KEY_DTOR_RUNS.load(Ordering::SeqCst), 2 * threads);
    let blocks = std::mem::take(&mut *KEY_HANDED_OUT.lock().unwrap());
    assert_eq!(blocks.len(), 2 * threads * SIZES.len());
    // Free half here and half on a fresh thread.
    let (here, there): (Vec<_>, Vec<_>) = blocks
        .into_iter()
        .enumerate()
        .partition(|(i, _)| i % 2 == 0);
    drop(here);
    std::thread::spawn(move || drop(there)).join().unwrap();
    spanalloc::flush_thread_cache();
    spanalloc::internals::heap().check_invariants();
    // SAFETY: a key we created; no thread uses it any more.
    unsafe { libc::pthread_key_delete(key) };
}

// ---------------------------------------------------------------------------------------
// Objects outliving the thread that allocated them.

#[test]
fn objects_of_an_exited_thread_are_freed_by_others() {
    for round in 0..4 {
        let blocks: Vec<Block> = std::thread::spawn(move || {
            (0..3000)
                .map(|i| Block::new(SIZES[i % SIZES.len()] + round))
                .collect()
        })
        .join()
        .unwrap();
        // The allocating thread has exited; its spans went back to the central lists.
        let mut blocks = blocks;
        let second_half = blocks.split_off(blocks.len() / 2);
        // Half freed by this thread, half by two other new threads, all checked.
        let t = std::thread::spawn(move || drop(second_half));
        for b in blocks.drain(..).rev() {
            drop(b);
        }
        t.join().unwrap();
        spanalloc::internals::heap().check_invariants();
    }
}

#[test]
fn a_thread_that_only_frees_then_exits() {
    // The thread's cache may stay unused (it allocates nothing itself): every free is a
    // remote free, and the thread's exit must not lose any of them.
    let blocks: Vec<(usize, usize)> = (0..2000)
        .map(|i| {
            let size = SIZES[i % SIZES.len()];
            // SAFETY: 8 is a power of two.
            let p = unsafe { spanalloc::raw::alloc(size, 8) };
            assert!(!p.is_null());
            // SAFETY: a new block of `size` bytes.
            unsafe { p.write_bytes(i as u8, size) };
            (p as usize, i)
        })
        .collect();
    std::thread::spawn(move || {
        for &(p, i) in &blocks {
            // SAFETY: live blocks handed to this thread, freed once.
            unsafe {
                assert_eq!((p as *mut u8).read(), i as u8);
                spanalloc::raw::free(p as *mut u8);
            }
        }
    })
    .join()
    .unwrap();
    spanalloc::flush_thread_cache();
    spanalloc::internals::heap().check_invariants();
}
