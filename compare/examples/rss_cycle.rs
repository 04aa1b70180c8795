//! Resident memory through an allocate / free / idle cycle: spanalloc against the
//! system allocator (glibc), mimalloc (the line this build links: v3 by default) and jemalloc.
//!
//! ```text
//! cargo run --release -p spanalloc-compare --example rss_cycle          # table on stdout
//! cargo run --release -p spanalloc-compare --example rss_cycle -- --json-file /tmp/rss.json
//! python3 scripts/rss_plot.py /tmp/rss.json docs/rss_cycle.svg         # the chart
//! ```
//!
//! Every allocator runs in a child process of its own (this binary re-executed as
//! `rss_cycle --child <allocator>`). The child goes through five phases while a sampler
//! thread records the resident set (resident pages of `/proc/self/statm` × page size) every
//! 50 ms into a preallocated array:
//!
//! 1. `baseline`: 0.3 s of nothing;
//! 2. `alloc`: about 512 MiB in small objects (16..=1024 bytes) and 512 MiB in large ones
//!    (64 KiB..4 MiB, log-uniform), interleaved, sizes from a seeded xorshift, every page
//!    written;
//! 3. `hold`: 0.5 s;
//! 4. `free`: everything freed, in a shuffled order;
//! 5. `idle`: 2.5 s of a program that keeps running lightly: every 50 ms, 20 objects of
//!    16 bytes..64 KiB (log-uniform) allocated, written and freed.
//!
//! The binary's global allocator stays the system one, and the measured allocator is called
//! through its `GlobalAlloc` methods only: the samples, the sampler thread and the output
//! never go through it. The table of live objects (16 bytes an object, about 16 MiB) is an
//! `mmap` of its own, unmapped right after the free phase, so it shows in every allocator's
//! peak alike and in none of the figures after the free, and it does not disturb glibc's
//! heap. spanalloc runs with its default decay (`spanalloc::internals::heap::DEFAULT_DECAY_MS`, or
//! `SPANALLOC_DECAY_MS`).
//!
//! The parent prints a Markdown table (RSS at the end of the baseline, the peak, right after
//! the free, 1 s and 2 s after it) and with `--json-file PATH` writes every sample there.
//! Progress goes to stderr. About 5 s a child.

use spanalloc_compare::report::{cpu_model, json_str, utc_now};
use std::alloc::{GlobalAlloc, Layout};
use std::fmt::Write as _;
use std::io::Read as _;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::time::{Duration, Instant};

/// The allocators, in the order they run and are reported.
const ALLOCATORS: [&str; 4] = ["spanalloc", "system", "mimalloc", "jemalloc"];
/// The phases, in order; a sample carries the index of the phase it was taken in.
const PHASES: [&str; 5] = ["baseline", "alloc", "hold", "free", "idle"];
const BASELINE: usize = 0;
const ALLOC: usize = 1;
const HOLD: usize = 2;
const FREE: usize = 3;
const IDLE: usize = 4;

const SAMPLE_EVERY: Duration = Duration::from_millis(50);
const BASELINE_TIME: Duration = Duration::from_millis(300);
const HOLD_TIME: Duration = Duration::from_millis(500);
const IDLE_TIME: Duration = Duration::from_millis(2500);
/// Room for 100 s of samples; a child stops recording (not running) when it is full.
const MAX_SAMPLES: usize = 2000;

const SMALL_BYTES: usize = 512 << 20;
const SMALL_MIN: usize = 16;
const SMALL_MAX: usize = 1024;
const LARGE_BYTES: usize = 512 << 20;
const LARGE_MIN: usize = 64 << 10;
const LARGE_MAX: usize = 4 << 20;
/// Idle phase: objects allocated and freed every tick, and their size range.
const IDLE_OBJECTS: usize = 20;
const IDLE_MIN: usize = 16;
const IDLE_MAX: usize = 64 << 10;
const ALIGN: usize = 8;
const SEED: u64 = 0x5eed_2545_f491_4f6d;

/// A child that takes longer than this is killed and reported as failed.
const CHILD_TIMEOUT: Duration = Duration::from_secs(60);

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--child") {
        let [_, alloc] = &args[..] else {
            eprintln!("rss_cycle --child: expected <allocator>");
            std::process::exit(2);
        };
        match alloc.as_str() {
            "spanalloc" => child(&spanalloc::SpanAlloc),
            "system" => child(&std::alloc::System),
            "mimalloc" => child(&mimalloc::MiMalloc),
            "jemalloc" => child(&tikv_jemallocator::Jemalloc),
            other => {
                eprintln!("rss_cycle --child: unknown allocator {other}");
                std::process::exit(2);
            }
        }
        return;
    }
    let json_file = match &args[..] {
        [] => None,
        [flag, path] if flag == "--json-file" => Some(path.clone()),
        _ => {
            eprintln!("usage: rss_cycle [--json-file PATH]");
            std::process::exit(2);
        }
    };
    parent(json_file.as_deref());
}

// ---------------------------------------------------------------------------------------
// The child: one allocator through the cycle.

/// A seeded xorshift64* generator.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next() % (hi - lo + 1) as u64) as usize
    }

    /// Log-uniform in `lo..=hi`.
    fn log_range(&mut self, lo: usize, hi: usize) -> usize {
        let u = (self.next() >> 11) as f64 / (1u64 << 53) as f64;
        let v = (lo as f64) * (hi as f64 / lo as f64).powf(u);
        (v as usize).clamp(lo, hi)
    }
}

/// One RSS sample.
#[derive(Clone, Copy)]
struct Sample {
    ms: u32,
    rss: u64,
    phase: u8,
}

/// Resident bytes of this process: the second field of `/proc/self/statm` × page size. Does
/// not allocate.
fn rss_bytes(page: u64) -> u64 {
    let mut buf = [0u8; 256];
    let Ok(mut f) = std::fs::File::open("/proc/self/statm") else {
        return 0;
    };
    let n = f.read(&mut buf).unwrap_or(0);
    let text = std::str::from_utf8(&buf[..n]).unwrap_or("");
    text.split_ascii_whitespace()
        .nth(1)
        .and_then(|v| v.parse::<u64>().ok())
        .map_or(0, |pages| pages * page)
}

fn page_size() -> u64 {
    // SAFETY: `sysconf` has no preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 { p as u64 } else { 4096 }
}

/// The table of live objects, `(address, size)`: an anonymous mapping of its own, so that
/// neither the measured allocator nor the system one holds it. Pages count when written.
struct Table {
    base: *mut [usize; 2],
    cap: usize,
    len: usize,
}

impl Table {
    fn new(cap: usize) -> Table {
        let bytes = cap * size_of::<[usize; 2]>();
        // SAFETY: a fresh private anonymous mapping; no existing memory is affected.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        assert!(
            p != libc::MAP_FAILED,
            "rss_cycle: cannot map the object table"
        );
        Table {
            base: p.cast(),
            cap,
            len: 0,
        }
    }

    fn push(&mut self, addr: usize, size: usize) {
        assert!(self.len < self.cap, "rss_cycle: object table full");
        // SAFETY: `len < cap`, inside the mapping.
        unsafe { self.base.add(self.len).write([addr, size]) };
        self.len += 1;
    }

    fn entries(&mut self) -> &mut [[usize; 2]] {
        // SAFETY: the first `len` entries are written; the mapping is ours while `self` is.
        unsafe { std::slice::from_raw_parts_mut(self.base, self.len) }
    }
}

impl Drop for Table {
    fn drop(&mut self) {
        // SAFETY: our own mapping, of this size; nothing borrows it any more.
        unsafe {
            libc::munmap(self.base.cast(), self.cap * size_of::<[usize; 2]>());
        }
    }
}

/// Allocates `size` bytes from `a` and writes one byte in every page of it (and its last
/// byte), so that all of it is resident.
fn alloc_touch<A: GlobalAlloc>(a: &A, size: usize) -> *mut u8 {
    let layout = Layout::from_size_align(size, ALIGN).expect("layout");
    // SAFETY: `layout` has a non-zero size.
    let p = unsafe { a.alloc(layout) };
    assert!(!p.is_null(), "rss_cycle: out of memory at {size} bytes");
    let mut off = 0;
    while off < size {
        // SAFETY: `off < size`, inside the object.
        unsafe { p.add(off).write_volatile(1) };
        off += 4096;
    }
    // SAFETY: the last byte of the object.
    unsafe { p.add(size - 1).write_volatile(1) };
    p
}

/// Frees an object of `alloc_touch`.
///
/// # Safety
/// `p` came from `alloc_touch(a, size)` and is freed once.
unsafe fn free<A: GlobalAlloc>(a: &A, p: *mut u8, size: usize) {
    let layout = Layout::from_size_align(size, ALIGN).expect("layout");
    // SAFETY: per the caller.
    unsafe { a.dealloc(p, layout) };
}

/// Sleeps until `t`, if it is still ahead.
fn sleep_until(t: Instant) {
    let now = Instant::now();
    if t > now {
        std::thread::sleep(t - now);
    }
}

fn child<A: GlobalAlloc>(a: &A) {
    let page = page_size();
    let start = Instant::now();
    let phase = Arc::new(AtomicU8::new(BASELINE as u8));
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (phase, stop) = (Arc::clone(&phase), Arc::clone(&stop));
        let mut samples: Vec<Sample> = Vec::with_capacity(MAX_SAMPLES);
        std::thread::spawn(move || {
            let mut tick = start;
            while !stop.load(Ordering::Relaxed) {
                if samples.len() < MAX_SAMPLES {
                    samples.push(Sample {
                        ms: start.elapsed().as_millis() as u32,
                        rss: rss_bytes(page),
                        phase: phase.load(Ordering::Relaxed),
                    });
                }
                tick += SAMPLE_EVERY;
                sleep_until(tick);
            }
            samples
        })
    };
    let mut events = [0u32; PHASES.len()];
    let mut enter = |p: usize| {
        events[p] = start.elapsed().as_millis() as u32;
        phase.store(p as u8, Ordering::Relaxed);
        eprintln!("  {:>5} ms {}", events[p], PHASES[p]);
    };
    let mut rng = Rng(SEED);

    // Baseline.
    sleep_until(start + BASELINE_TIME);

    // Allocate, small and large interleaved so that both reach their total together.
    enter(ALLOC);
    let mut table = Table::new(SMALL_BYTES / SMALL_MIN + LARGE_BYTES / LARGE_MIN);
    let (mut small, mut large) = (0usize, 0usize);
    while small < SMALL_BYTES || large < LARGE_BYTES {
        // Is `large` behind its share of the way (in proportion to the totals)?
        let want_large = small >= SMALL_BYTES
            || (large < LARGE_BYTES
                && large as f64 / LARGE_BYTES as f64 <= small as f64 / SMALL_BYTES as f64);
        let size = if want_large {
            rng.log_range(LARGE_MIN, LARGE_MAX)
        } else {
            rng.range(SMALL_MIN, SMALL_MAX)
        };
        let p = alloc_touch(a, size);
        table.push(p as usize, size);
        if want_large {
            large += size;
        } else {
            small += size;
        }
    }
    let objects = table.len;

    // Hold.
    enter(HOLD);
    std::thread::sleep(HOLD_TIME);

    // Free everything, in a shuffled order.
    enter(FREE);
    let entries = table.entries();
    for i in (1..entries.len()).rev() {
        let j = (rng.next() % (i as u64 + 1)) as usize;
        entries.swap(i, j);
    }
    for &[addr, size] in entries.iter() {
        // SAFETY: every entry is a live object of `alloc_touch(a, size)`, freed once here.
        unsafe { free(a, addr as *mut u8, size) };
    }
    drop(table);

    // Idle, lightly busy.
    enter(IDLE);
    let idle_start = Instant::now();
    let mut tick = idle_start;
    let mut live = [(std::ptr::null_mut::<u8>(), 0usize); IDLE_OBJECTS];
    while idle_start.elapsed() < IDLE_TIME {
        for slot in live.iter_mut() {
            let size = rng.log_range(IDLE_MIN, IDLE_MAX);
            *slot = (alloc_touch(a, size), size);
        }
        for &(p, size) in live.iter() {
            // SAFETY: allocated just above, freed once.
            unsafe { free(a, p, size) };
        }
        tick += SAMPLE_EVERY;
        sleep_until(tick);
    }
    // One more sample after the last tick, then stop.
    std::thread::sleep(SAMPLE_EVERY);
    stop.store(true, Ordering::Relaxed);
    let samples = sampler.join().expect("sampler thread");

    let mut out = String::with_capacity(64 * samples.len() + 256);
    let _ = writeln!(
        out,
        "objects {objects} small_bytes {small} large_bytes {large}"
    );
    for (p, ms) in events.iter().enumerate() {
        let _ = writeln!(out, "event {} {ms}", PHASES[p]);
    }
    for s in &samples {
        let _ = writeln!(
            out,
            "sample {} {} {}",
            s.ms, s.rss, PHASES[s.phase as usize]
        );
    }
    print!("{out}");
}

// ---------------------------------------------------------------------------------------
// The parent: the four children, the table and the JSON.

/// One child's results.
struct Run {
    name: &'static str,
    objects: u64,
    /// Start of every phase, ms from the child's start.
    events: [u32; PHASES.len()],
    samples: Vec<Sample>,
    wall: Duration,
}

impl Run {
    fn baseline(&self) -> Option<u64> {
        self.samples
            .iter()
            .rev()
            .find(|s| s.phase as usize == BASELINE)
            .map(|s| s.rss)
    }

    fn peak(&self) -> Option<u64> {
        self.samples.iter().map(|s| s.rss).max()
    }

    /// The first sample at least `ms` after the free phase ended.
    fn after_free(&self, ms: u32) -> Option<u64> {
        let t = self.events[IDLE] + ms;
        self.samples.iter().find(|s| s.ms >= t).map(|s| s.rss)
    }

    /// The figures of the table, bytes: baseline, peak, right after free, +1 s, +2 s.
    fn summary(&self) -> [Option<u64>; 5] {
        [
            self.baseline(),
            self.peak(),
            self.after_free(0),
            self.after_free(1000),
            self.after_free(2000),
        ]
    }
}

const SUMMARY: [&str; 5] = [
    "baseline",
    "peak",
    "after_free",
    "after_free_1s",
    "after_free_2s",
];

fn run_child(exe: &std::path::Path, name: &'static str) -> Result<Run, String> {
    let started = Instant::now();
    let mut child = Command::new(exe)
        .args(["--child", name])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("spawn: {e}"))?;
    let mut stdout = child.stdout.take().expect("piped stdout");
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stdout.read_to_string(&mut text);
        text
    });
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if started.elapsed() > CHILD_TIMEOUT => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("timed out after {} s", CHILD_TIMEOUT.as_secs()));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => return Err(format!("wait: {e}")),
        }
    }
    let status = child.wait().map_err(|e| format!("wait: {e}"))?;
    let text = reader.join().map_err(|_| "reader thread panicked")?;
    if !status.success() {
        return Err(format!("child exited with {status}"));
    }
    let mut run = Run {
        name,
        objects: 0,
        events: [0; PHASES.len()],
        samples: Vec::new(),
        wall: started.elapsed(),
    };
    let bad = |line: &str| format!("unreadable child line {line:?}");
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        match f[..] {
            ["objects", n, ..] => run.objects = n.parse().map_err(|_| bad(line))?,
            ["event", p, ms] => {
                let i = PHASES
                    .iter()
                    .position(|&x| x == p)
                    .ok_or_else(|| bad(line))?;
                run.events[i] = ms.parse().map_err(|_| bad(line))?;
            }
            ["sample", ms, rss, p] => run.samples.push(Sample {
                ms: ms.parse().map_err(|_| bad(line))?,
                rss: rss.parse().map_err(|_| bad(line))?,
                phase: PHASES
                    .iter()
                    .position(|&x| x == p)
                    .ok_or_else(|| bad(line))? as u8,
            }),
            _ => return Err(bad(line)),
        }
    }
    if run.samples.is_empty() {
        return Err("no samples".into());
    }
    Ok(run)
}

fn parent(json_file: Option<&str>) {
    let exe = std::env::current_exe().expect("own path");
    let started = Instant::now();
    let mut runs = Vec::new();
    let mut failed = Vec::new();
    for name in ALLOCATORS {
        eprintln!("rss_cycle: {name}");
        match run_child(&exe, name) {
            Ok(run) => {
                eprintln!(
                    "rss_cycle: {name}: {} objects, {} samples, {:.1} s",
                    run.objects,
                    run.samples.len(),
                    run.wall.as_secs_f64()
                );
                runs.push(run);
            }
            Err(e) => {
                eprintln!("rss_cycle: {name} FAILED: {e}");
                failed.push((name, e));
            }
        }
    }
    let date = utc_now();
    let nproc = std::thread::available_parallelism().map_or(1, |n| n.get());
    let cpu = cpu_model();
    let decay = std::env::var("SPANALLOC_DECAY_MS")
        .unwrap_or_else(|_| spanalloc::internals::heap::DEFAULT_DECAY_MS.to_string());

    let mib = |b: Option<u64>| b.map_or("failed".into(), |b| format!("{:.1}", b as f64 / MIB));
    let mut s = String::new();
    let _ = writeln!(
        s,
        "rss_cycle, {date}; {nproc} CPUs, {cpu}; spanalloc decay {decay} ms; {:.0} s in all\n",
        started.elapsed().as_secs_f64()
    );
    let _ = writeln!(
        s,
        "| RSS (MiB) | baseline | peak | right after free | 1 s after free | 2 s after free |"
    );
    let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|");
    for run in &runs {
        let _ = write!(s, "| {} |", run.name);
        for v in run.summary() {
            let _ = write!(s, " {} |", mib(v));
        }
        let _ = writeln!(s);
    }
    for (name, e) in &failed {
        let _ = writeln!(s, "| {name} | failed: {e} |||||");
    }
    print!("{s}");

    if let Some(path) = json_file {
        let json = to_json(&runs, &failed, &date, nproc, &cpu, &decay);
        if let Err(e) = std::fs::write(path, json) {
            eprintln!("rss_cycle: cannot write {path}: {e}");
            std::process::exit(1);
        }
        eprintln!("rss_cycle: wrote {path}");
    }
    if !failed.is_empty() {
        std::process::exit(1);
    }
}

const MIB: f64 = (1u64 << 20) as f64;

fn to_json(
    runs: &[Run],
    failed: &[(&str, String)],
    date: &str,
    nproc: usize,
    cpu: &str,
    decay: &str,
) -> String {
    let mut j = String::new();
    let _ = write!(
        j,
        "{{\n  \"date\": {},\n  \"machine\": {{\"nproc\": {nproc}, \"cpu\": {}}},\n",
        json_str(date),
        json_str(cpu)
    );
    let _ = write!(
        j,
        "  \"spanalloc_decay_ms\": {},\n  \"sample_ms\": {},\n",
        json_str(decay),
        SAMPLE_EVERY.as_millis()
    );
    let _ = writeln!(
        j,
        "  \"workload\": {{\"small_bytes\": {SMALL_BYTES}, \"small_sizes\": [{SMALL_MIN}, {SMALL_MAX}], \
         \"large_bytes\": {LARGE_BYTES}, \"large_sizes\": [{LARGE_MIN}, {LARGE_MAX}], \
         \"idle_objects_per_tick\": {IDLE_OBJECTS}, \"idle_sizes\": [{IDLE_MIN}, {IDLE_MAX}]}},"
    );
    let phases: Vec<String> = PHASES.iter().map(|p| json_str(p)).collect();
    let _ = writeln!(j, "  \"phases\": [{}],", phases.join(", "));
    let names: Vec<String> = runs.iter().map(|r| json_str(r.name)).collect();
    let _ = writeln!(j, "  \"allocators\": [{}],", names.join(", "));
    let fails: Vec<String> = failed
        .iter()
        .map(|(n, e)| format!("{}: {}", json_str(n), json_str(e)))
        .collect();
    let _ = writeln!(j, "  \"failed\": {{{}}},", fails.join(", "));
    let _ = writeln!(j, "  \"runs\": {{");
    for (i, run) in runs.iter().enumerate() {
        let _ = writeln!(j, "    {}: {{", json_str(run.name));
        let _ = writeln!(j, "      \"objects\": {},", run.objects);
        let ev: Vec<String> = PHASES
            .iter()
            .zip(run.events)
            .map(|(p, ms)| format!("{}: {ms}", json_str(p)))
            .collect();
        let _ = writeln!(j, "      \"phase_start_ms\": {{{}}},", ev.join(", "));
        let sum: Vec<String> = SUMMARY
            .iter()
            .zip(run.summary())
            .map(|(k, v)| {
                let v = v.map_or("null".into(), |b| b.to_string());
                format!("\"{k}_bytes\": {v}")
            })
            .collect();
        let _ = writeln!(j, "      \"summary\": {{{}}},", sum.join(", "));
        let samples: Vec<String> = run
            .samples
            .iter()
            .map(|s| {
                format!(
                    "[{}, {}, {}]",
                    s.ms,
                    s.rss,
                    json_str(PHASES[s.phase as usize])
                )
            })
            .collect();
        let _ = writeln!(j, "      \"samples\": [{}]", samples.join(", "));
        let _ = writeln!(j, "    }}{}", if i + 1 < runs.len() { "," } else { "" });
    }
    let _ = writeln!(j, "  }}\n}}");
    j
}
