//! Heap profiling end to end, through the global allocator: the estimates per call site
//! are unbiased, the written file is a valid pprof profile that names the call sites,
//! sampling every allocation keeps the table exact across threads, thread exit and fork.
//!
//! The tests share the process's one profiler, so they run one at a time (`SERIAL`). Call
//! sites are told apart by symbolizing the sampled stacks here (the `backtrace` crate), so
//! that the checks hold with and without the `profiling` feature.

use spanalloc::profiling::{self, HeapProfile, StackProfile};
use std::collections::HashMap;
use std::hint::black_box;
use std::io::Read;
use std::sync::Mutex;

#[global_allocator]
static A: spanalloc::SpanAlloc = spanalloc::SpanAlloc;

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// The function names at a code address (innermost first).
fn names_at(pc: usize, cache: &mut HashMap<usize, Vec<String>>) -> Vec<String> {
    cache
        .entry(pc)
        .or_insert_with(|| {
            let mut out = Vec::new();
            backtrace::resolve(pc as *mut _, |s| {
                if let Some(n) = s.name() {
                    out.push(format!("{n:#}"));
                }
            });
            out
        })
        .clone()
}

/// Which of `sites` a stack of return addresses passes through, if any.
fn site_of(
    frames: &[usize],
    sites: &[&'static str],
    cache: &mut HashMap<usize, Vec<String>>,
) -> Option<&'static str> {
    for &ret in frames {
        for name in names_at(ret - 1, cache) {
            if let Some(site) = sites.iter().find(|s| name.ends_with(*s)) {
                return Some(site);
            }
        }
    }
    None
}

/// Per site: (inuse bytes, inuse objects, alloc bytes, alloc objects).
fn per_site(profile: &HeapProfile, sites: &[&'static str]) -> HashMap<&'static str, [f64; 4]> {
    let mut cache = HashMap::new();
    let mut out: HashMap<&'static str, [f64; 4]> = HashMap::new();
    for s in &profile.stacks {
        let StackProfile {
            frames,
            inuse_bytes,
            inuse_objects,
            alloc_bytes,
            alloc_objects,
        } = s;
        if let Some(site) = site_of(frames, sites, &mut cache) {
            let t = out.entry(site).or_default();
            t[0] += inuse_bytes;
            t[1] += inuse_objects;
            t[2] += alloc_bytes;
            t[3] += alloc_objects;
        }
    }
    out
}

const SIZES: [usize; 5] = [24, 200, 1500, 5000, 40_000];
const BYTES_PER_SIZE: usize = 8 << 20;

/// How many objects `site_keep` and `site_half` make.
fn objects_per_site() -> usize {
    SIZES.iter().map(|s| BYTES_PER_SIZE / s).sum()
}

/// A vector with room for a site's objects, so that the sites allocate nothing else.
fn room() -> Vec<Vec<u8>> {
    Vec::with_capacity(objects_per_site())
}

/// Keeps `BYTES_PER_SIZE` bytes of objects of each size in `SIZES`.
#[inline(never)]
fn site_keep(out: &mut Vec<Vec<u8>>) {
    for size in SIZES {
        for i in 0..BYTES_PER_SIZE / size {
            out.push(vec![i as u8; size]);
        }
    }
}

/// The same amount, of which the caller frees every other object. Filled with other bytes
/// than `site_keep`'s, so that the compiler cannot fold the two functions into one (it did,
/// in the hardened build, and both sites then symbolized as one).
#[inline(never)]
fn site_half(out: &mut Vec<Vec<u8>>) {
    for size in SIZES {
        for i in 0..BYTES_PER_SIZE / size {
            out.push(vec![!(i as u8); size]);
        }
    }
}

/// 16 MiB of 100-byte objects, each freed at once.
#[inline(never)]
fn site_gone() {
    for i in 0..(16 << 20) / 100 {
        black_box(vec![i as u8; 100]);
    }
}

fn within(estimate: f64, truth: f64, what: &str) {
    let err = (estimate - truth).abs() / truth;
    eprintln!(
        "{what}: estimate {estimate:.0}, truth {truth:.0}, error {:.1}%",
        err * 100.0
    );
    assert!(err < 0.10, "{what}: estimate {estimate} for {truth}");
}

#[test]
fn estimates_per_call_site_are_unbiased() {
    let _g = serial();
    profiling::start_seeded(16 << 10, 0x5eed);
    let (mut keep, mut half) = (room(), room());
    site_keep(&mut keep);
    site_half(&mut half);
    site_gone();
    let mut i = 0;
    half.retain(|_| {
        i += 1;
        i % 2 == 0
    });
    let profile = profiling::heap_profile();
    profiling::stop();
    let truth = |v: &[Vec<u8>]| v.iter().map(|b| b.len()).sum::<usize>() as f64;
    let all_bytes = (SIZES.len() * BYTES_PER_SIZE) as f64;
    let all_objects: f64 = SIZES.iter().map(|s| (BYTES_PER_SIZE / s) as f64).sum();
    let sites = per_site(&profile, &["site_keep", "site_half", "site_gone"]);
    let k = sites["site_keep"];
    within(k[0], truth(&keep), "site_keep inuse_space");
    within(k[1], keep.len() as f64, "site_keep inuse_objects");
    within(k[2], all_bytes, "site_keep alloc_space");
    within(k[3], all_objects, "site_keep alloc_objects");
    let h = sites["site_half"];
    within(h[0], truth(&half), "site_half inuse_space");
    within(h[2], all_bytes, "site_half alloc_space");
    let g = sites["site_gone"];
    assert_eq!((g[0], g[1]), (0.0, 0.0), "freed objects are not in use");
    within(
        g[2],
        ((16 << 20) / 100 * 100) as f64,
        "site_gone alloc_space",
    );
    black_box((keep, half));
}

// ---------------------------------------------------------------------------------------
// The file: a protobuf reader of our own (nothing shared with the writer), then pprof.

/// A field's value: a varint or length-delimited bytes.
#[derive(Debug, Clone, Copy)]
enum Value<'a> {
    Int(u64),
    Bytes(&'a [u8]),
}

fn varint(b: &mut &[u8]) -> u64 {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = b[0];
        *b = &b[1..];
        v |= u64::from(byte & 0x7f) << shift;
        if byte < 0x80 {
            return v;
        }
    }
    panic!("varint too long");
}

/// Every field of a message, in order.
fn fields(mut b: &[u8]) -> Vec<(u64, Value<'_>)> {
    let mut out = Vec::new();
    while !b.is_empty() {
        let key = varint(&mut b);
        let value = match key & 7 {
            0 => Value::Int(varint(&mut b)),
            2 => {
                let n = varint(&mut b) as usize;
                let (v, rest) = b.split_at(n);
                b = rest;
                Value::Bytes(v)
            }
            1 => {
                let (v, rest) = b.split_at(8);
                b = rest;
                Value::Int(u64::from_le_bytes(v.try_into().unwrap()))
            }
            w => panic!("wire type {w}"),
        };
        out.push((key >> 3, value));
    }
    out
}

fn int(v: Value<'_>) -> u64 {
    match v {
        Value::Int(i) => i,
        Value::Bytes(_) => panic!("expected a varint"),
    }
}

fn msg<'a>(v: Value<'a>) -> &'a [u8] {
    match v {
        Value::Bytes(b) => b,
        Value::Int(_) => panic!("expected a message"),
    }
}

/// Repeated varints, packed or not.
fn ints(v: Value<'_>) -> Vec<u64> {
    match v {
        Value::Int(i) => vec![i],
        Value::Bytes(mut b) => {
            let mut out = Vec::new();
            while !b.is_empty() {
                out.push(varint(&mut b));
            }
            out
        }
    }
}

fn get(fields: &[(u64, Value<'_>)], n: u64) -> u64 {
    fields
        .iter()
        .find(|(f, _)| *f == n)
        .map_or(0, |(_, v)| int(*v))
}

/// A decoded profile: sample types, samples as (values, leaf-first function names).
struct Decoded {
    types: Vec<String>,
    samples: Vec<(Vec<i64>, Vec<String>)>,
    mappings: usize,
    symbolized_in_file: bool,
}

fn decode(raw: &[u8]) -> Decoded {
    let top = fields(raw);
    let strings: Vec<String> = top
        .iter()
        .filter(|(f, _)| *f == 6)
        .map(|(_, v)| String::from_utf8(msg(*v).to_vec()).unwrap())
        .collect();
    assert_eq!(strings[0], "", "string 0 is empty");
    let s = |i: u64| strings[i as usize].clone();
    let functions: HashMap<u64, String> = top
        .iter()
        .filter(|(f, _)| *f == 5)
        .map(|(_, v)| {
            let f = fields(msg(*v));
            (get(&f, 1), s(get(&f, 2)))
        })
        .collect();
    let mut mapping_ids = vec![0u64];
    for (_, v) in top.iter().filter(|(f, _)| *f == 3) {
        let m = fields(msg(*v));
        assert!(
            get(&m, 2) < get(&m, 3),
            "a mapping's start is below its limit"
        );
        assert!(!s(get(&m, 5)).is_empty(), "a mapping names its file");
        mapping_ids.push(get(&m, 1));
    }
    let mut cache = HashMap::new();
    let mut locations: HashMap<u64, Vec<String>> = HashMap::new();
    for (_, v) in top.iter().filter(|(f, _)| *f == 4) {
        let l = fields(msg(*v));
        assert!(
            mapping_ids.contains(&get(&l, 2)),
            "a location's mapping exists"
        );
        let mut names: Vec<String> = l
            .iter()
            .filter(|(f, _)| *f == 4)
            .map(|(_, line)| functions[&get(&fields(msg(*line)), 1)].clone())
            .collect();
        if names.is_empty() {
            names = names_at(get(&l, 3) as usize, &mut cache);
        }
        locations.insert(get(&l, 1), names);
    }
    let types = top
        .iter()
        .filter(|(f, _)| *f == 1)
        .map(|(_, v)| s(get(&fields(msg(*v)), 1)))
        .collect();
    let mut samples = Vec::new();
    for (_, v) in top.iter().filter(|(f, _)| *f == 2) {
        let fs = fields(msg(*v));
        let mut values = Vec::new();
        let mut names = Vec::new();
        for (f, v) in fs {
            match f {
                1 => {
                    for id in ints(v) {
                        names.extend(locations[&id].iter().cloned());
                    }
                }
                2 => values.extend(ints(v).into_iter().map(|x| x as i64)),
                _ => {}
            }
        }
        samples.push((values, names));
    }
    Decoded {
        types,
        samples,
        mappings: mapping_ids.len() - 1,
        symbolized_in_file: !functions.is_empty(),
    }
}

#[test]
fn the_written_profile_parses_and_names_the_call_sites() {
    let _g = serial();
    profiling::start_seeded(64 << 10, 7);
    let (mut keep, mut half) = (room(), room());
    site_keep(&mut keep);
    site_half(&mut half);
    let dir = std::env::temp_dir().join(format!("spanalloc-prof-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("heap.pb.gz");
    profiling::write_profile(&path).unwrap();
    profiling::stop();
    let mut gz = Vec::new();
    std::fs::File::open(&path)
        .unwrap()
        .read_to_end(&mut gz)
        .unwrap();
    assert_eq!(&gz[..2], &[0x1f, 0x8b], "gzip");
    let mut raw = Vec::new();
    flate2::read::GzDecoder::new(&gz[..])
        .read_to_end(&mut raw)
        .unwrap();
    let p = decode(&raw);
    assert_eq!(
        p.types,
        [
            "alloc_objects",
            "alloc_space",
            "inuse_objects",
            "inuse_space"
        ]
    );
    assert!(p.mappings >= 1);
    assert_eq!(
        p.symbolized_in_file,
        profiling::SYMBOLIZED,
        "functions are in the file exactly with the `profiling` feature"
    );
    let inuse = |site: &str| -> i64 {
        p.samples
            .iter()
            .filter(|(_, names)| names.iter().any(|n| n.ends_with(site)))
            .map(|(v, _)| v[3])
            .sum()
    };
    let truth = (SIZES.len() * BYTES_PER_SIZE) as f64;
    within(
        inuse("site_keep") as f64,
        truth,
        "file: site_keep inuse_space",
    );
    within(
        inuse("site_half") as f64,
        truth,
        "file: site_half inuse_space",
    );
    if profiling::SYMBOLIZED {
        // The allocator's frames are cut: each sample's leaf is past them.
        for (_, names) in &p.samples {
            let leaf = &names[0];
            assert!(
                !leaf.contains("spanalloc") && !leaf.starts_with("__rust_alloc"),
                "leaf {leaf}"
            );
        }
    }

    // And pprof itself, where it is installed.
    match std::process::Command::new("go")
        .args(["tool", "pprof", "-raw"])
        .arg(&path)
        .output()
    {
        Ok(out) if out.status.success() => {
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(text.contains("site_keep"), "{text}");
            assert!(text.contains("site_half"), "{text}");
            eprintln!("checked with `go tool pprof -raw`: it names both call sites");
        }
        Ok(out) => panic!("go tool pprof -raw failed: {out:?}"),
        Err(_) => eprintln!("`go` is not installed: skipped the `go tool pprof -raw` check"),
    }
    std::fs::remove_dir_all(&dir).unwrap();
    black_box((keep, half));
}

// ---------------------------------------------------------------------------------------
// Every allocation sampled (mean 1 byte): the table is exact.

/// `n` objects of `N` bytes, each allocated by `make` (a call site of its own), in a
/// vector allocated here.
fn made<const N: usize>(n: usize, make: fn(u8) -> Box<[u8; N]>) -> Vec<Box<[u8; N]>> {
    let mut v = Vec::with_capacity(n);
    for i in 0..n {
        v.push(make(i as u8));
    }
    v
}

// Each returns through `black_box`, so that it is not a tail call: its frame stays on the
// stack the allocation captures.

#[inline(never)]
fn site_threads(i: u8) -> Box<[u8; 64]> {
    black_box(Box::new([i; 64]))
}

#[inline(never)]
fn site_exiting(i: u8) -> Box<[u8; 300]> {
    black_box(Box::new([i; 300]))
}

#[inline(never)]
fn site_forked(i: u8) -> Box<[u8; 1000]> {
    black_box(Box::new([i; 1000]))
}

const SITES: [&str; 3] = ["site_threads", "site_exiting", "site_forked"];

/// (inuse objects, alloc objects) of `site` now.
fn objects(site: &'static str) -> (f64, f64) {
    objects_among(&SITES, site)
}

/// (inuse objects, alloc objects) of `site`, one of `sites`, now.
fn objects_among(sites: &[&'static str], site: &'static str) -> (f64, f64) {
    let t = per_site(&profiling::heap_profile(), sites)
        .get(site)
        .copied()
        .unwrap_or_default();
    (t[1], t[3])
}

#[test]
fn sampling_everything_keeps_the_table_exact() {
    let _g = serial();
    profiling::start_seeded(1, 1);

    // Allocated on four threads, freed on others.
    let (tx, rx) = std::sync::mpsc::channel::<Vec<Box<[u8; 64]>>>();
    let freer = std::thread::spawn(move || {
        let mut n = 0;
        for batch in rx {
            n += batch.len();
            drop(batch);
        }
        n
    });
    let makers: Vec<_> = (0..4)
        .map(|_| {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for _ in 0..10 {
                    tx.send(made(500, site_threads)).unwrap();
                }
            })
        })
        .collect();
    drop(tx);
    for m in makers {
        m.join().unwrap();
    }
    assert_eq!(freer.join().unwrap(), 20_000);
    assert_eq!(objects("site_threads"), (0.0, 20_000.0));

    // Allocated by threads that have exited; some freed by a thread during its exit.
    let kept: Vec<_> = (0..3)
        .map(|_| {
            std::thread::spawn(|| made(1000, site_exiting))
                .join()
                .unwrap()
        })
        .collect();
    assert_eq!(objects("site_exiting"), (3000.0, 3000.0));
    let mut kept = kept.into_iter();
    let first = kept.next().unwrap();
    std::thread::spawn(move || {
        // Boxes, as `site_exiting` made them: each is a sampled object of its own.
        #[allow(clippy::vec_box)]
        struct FreeAtExit(Option<Vec<Box<[u8; 300]>>>);
        impl Drop for FreeAtExit {
            fn drop(&mut self) {
                drop(self.0.take());
            }
        }
        thread_local! {
            static AT_EXIT: std::cell::RefCell<FreeAtExit> =
                const { std::cell::RefCell::new(FreeAtExit(None)) };
        }
        AT_EXIT.with(|a| a.borrow_mut().0 = Some(first));
    })
    .join()
    .unwrap();
    assert_eq!(objects("site_exiting"), (2000.0, 3000.0));
    drop(kept);
    assert_eq!(objects("site_exiting"), (0.0, 3000.0));

    // Freed in a forked child: the child's table loses them, the parent's keeps them.
    let forked = made(200, site_forked);
    assert_eq!(objects("site_forked"), (200.0, 200.0));
    // SAFETY: the child only uses the allocator and its own memory, then `_exit`s.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        let live = profiling::heap_profile().live_samples;
        drop(forked);
        let after = profiling::heap_profile().live_samples;
        // The 200 objects and the vector that held them.
        let code = if after + 201 != live {
            1
        } else if objects("site_forked") != (0.0, 200.0) {
            2
        } else {
            0
        };
        // SAFETY: ends the child without running the parent's exit handlers.
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    // SAFETY: our child.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "child: exit status {} (1: live samples, 2: the site's objects)",
        libc::WEXITSTATUS(status)
    );
    assert_eq!(objects("site_forked"), (200.0, 200.0));
    drop(forked);
    assert_eq!(objects("site_forked"), (0.0, 200.0));

    let after = profiling::heap_profile();
    profiling::stop();
    assert_eq!(after.reentered, 0, "the sampling path allocated");
    assert_eq!(after.dropped, 0);
}

#[test]
fn stop_and_start_again() {
    let _g = serial();
    profiling::start_seeded(1, 3);
    assert_eq!(profiling::mean(), 1);
    let v = made(10, site_threads);
    profiling::stop();
    assert_eq!(profiling::mean(), 0);
    let w = made(10, site_threads);
    // Stopped: the second ten are not sampled; the first stay live in the profile.
    assert_eq!(objects("site_threads").0, 10.0);
    drop(v);
    assert_eq!(objects("site_threads").0, 0.0);
    // A new start clears the allocation totals.
    profiling::start_seeded(1, 3);
    assert_eq!(objects("site_threads"), (0.0, 0.0));
    profiling::stop();
    drop(w);
}

#[test]
fn the_profilers_own_work_is_not_sampled() {
    let _g = serial();
    profiling::start_seeded(1, 5);
    // Every allocation is sampled now but those the profiler makes itself: taking a
    // profile (its table copy, its stacks) and encoding one.
    let first = profiling::heap_profile();
    let raw = first.to_pprof();
    assert!(!raw.is_empty());
    drop(first);
    let sites = ["heap_profile", "heap_profile_now", "to_pprof", "encode"];
    let second = profiling::heap_profile();
    profiling::stop();
    let own = per_site(&second, &sites);
    assert!(
        own.is_empty(),
        "the profiler's own allocations were sampled: {own:?}"
    );
}

// ---------------------------------------------------------------------------------------
// A sampled large object is an ordinary large object, recorded where it is.

/// A large buffer of `n` bytes, from a call site of its own.
#[inline(never)]
fn site_large(n: usize) -> Vec<u8> {
    black_box(Vec::with_capacity(n))
}

/// Grows `v` to room for `n` bytes, from a call site of its own.
#[inline(never)]
fn site_grow(v: &mut Vec<u8>, n: usize) {
    v.reserve_exact(n - v.len());
    black_box(v);
}

/// (inuse objects, alloc objects) of `site` (`site_large` or `site_grow`) now.
fn large_objects(site: &'static str) -> (f64, f64) {
    objects_among(&["site_large", "site_grow"], site)
}

/// With every allocation sampled, a large allocation is served where an unsampled one
/// would be (a freed buffer of its size, waiting in the thread's cache, is reused), and a
/// `realloc` that moves a small buffer to a large size hands out the buffer it moved to,
/// with its room for growth (not a copy of it in another sampled object of the size
/// alone); both are recorded at their call sites.
#[test]
fn a_sampled_large_object_is_recorded_where_it_is() {
    let _g = serial();
    profiling::start_seeded(1, 7);
    let n = 100 << 10;

    let first = site_large(n);
    let at = first.as_ptr();
    drop(first);
    let second = site_large(n);
    assert_eq!(second.as_ptr(), at, "the freed buffer was not reused");
    assert_eq!(large_objects("site_large"), (1.0, 2.0));
    drop(second);
    assert_eq!(large_objects("site_large"), (0.0, 2.0));

    // A small buffer (made unsampled) grown to the large size: `realloc` moves it to a
    // page span with room to grow in place, and the move is the sample.
    profiling::stop();
    let mut grown = vec![1u8; 1000];
    profiling::start_seeded(1, 7);
    site_grow(&mut grown, n);
    // SAFETY: a live object of spanalloc's.
    let room = unsafe { spanalloc::raw::usable_size(grown.as_mut_ptr()) };
    assert!(
        room >= 2 * n,
        "{room} bytes: the moved buffer lost its room for growth (copied into a sampled object)"
    );
    assert!(grown.iter().all(|&b| b == 1));
    assert_eq!(large_objects("site_grow"), (1.0, 1.0));
    drop(grown);
    let profile = profiling::heap_profile();
    profiling::stop();
    assert_eq!(large_objects("site_grow"), (0.0, 1.0));
    assert_eq!(profile.reentered, 0);
    assert_eq!(profile.dropped, 0);
}

/// A sampled large object takes the short path when freed (`raw::free_large_fast`, what
/// the C `free` of a large object tries first), leaves the profile there, and goes where
/// its unsampled free would: a length the thread's large lists keep (up to 256 KiB) onto
/// its list, its first page's word the listed one again at once; a longer one into the
/// stash. Both are taken back by the next allocation of their length.
#[test]
fn a_sampled_large_object_freed_goes_to_the_lists_or_the_stash_and_leaves_the_profile() {
    let _g = serial();
    // A fresh thread, whose lists and stash are empty; sampling on for one allocation only
    // (with every allocation sampled, each small one is a page span of its own, and their
    // frees would fill the stash).
    std::thread::spawn(|| {
        let listed_start = |p: *const u8| {
            let word = spanalloc::internals::heap()
                .page_map()
                .small_word_of(p as usize);
            spanalloc::internals::page_map::word_listed_large(word).map(|(start, _)| start)
        };
        for (n, listed) in [(100 << 10, true), (300 << 10, false)] {
            profiling::start_seeded(1, 11);
            let v = site_large(n);
            profiling::stop();
            let p = v.as_ptr().cast_mut();
            core::mem::forget(v);
            assert_eq!(large_objects("site_large"), (1.0, 1.0), "sampled");
            assert_eq!(
                listed_start(p),
                None,
                "its word sends its free to its record"
            );
            // SAFETY: the buffer's object, given up here (its Vec forgotten above).
            let taken = unsafe { spanalloc::raw::free_large_fast(p) };
            assert!(taken, "the short path took the sampled object of {n} bytes");
            assert_eq!(
                large_objects("site_large"),
                (0.0, 1.0),
                "out of the profile"
            );
            assert_eq!(
                listed_start(p),
                listed.then_some(p as usize),
                "on the list of its length, found by its word, or else stashed"
            );
            let again = site_large(n);
            assert_eq!(again.as_ptr(), p.cast_const(), "the freed span, taken back");
            if listed {
                assert_eq!(listed_start(p), Some(p as usize));
            }
        }
    })
    .join()
    .unwrap();
    assert_eq!(profiling::heap_profile().dropped, 0);
}

/// A zeroed small buffer of `n` bytes (`n` below the large sizes), from a call site of its
/// own.
#[inline(never)]
fn site_small(n: usize) -> Vec<u8> {
    black_box(vec![0; n])
}

/// A sampled small object is a page span of its own, made the way a large object is: a
/// class's objects sampled one after another take the span the last one, freed, left in
/// the thread's stash (no page-heap lock a sample), and each is recorded.
#[test]
fn a_sampled_small_object_takes_the_span_the_last_one_left_in_the_stash() {
    let _g = serial();
    // A fresh thread, whose stash has empty slots, sampling every allocation.
    std::thread::spawn(|| {
        profiling::start_seeded(1, 13);
        let mut first = site_small(100);
        first.fill(0xab);
        let at = first.as_ptr();
        drop(first);
        let second = site_small(100);
        let second_at = second.as_ptr();
        let zero = second.iter().all(|&b| b == 0);
        drop(second);
        let objects = objects_among(&["site_small"], "site_small");
        profiling::stop();
        assert_eq!(
            second_at, at,
            "the first sample's span, taken back from the stash"
        );
        assert!(
            zero,
            "the reused span's bytes cleared for the zeroed request"
        );
        assert_eq!(objects, (0.0, 2.0), "both sampled, both freed");
    })
    .join()
    .unwrap();
    assert_eq!(profiling::heap_profile().dropped, 0);
}
