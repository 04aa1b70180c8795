//! The side-by-side table: spanalloc against the system allocator, mimalloc and jemalloc on
//! the workloads of `benches/workloads`, time per operation and peak resident memory.
//!
//! ```text
//! cargo run --release --example compare            # full table, about a minute
//! cargo run --release --example compare -- --quick # a few seconds, rougher
//! cargo run --release --example compare -- --json  # machine-readable (for scripts/chart.py)
//! ```
//!
//! Options: `--json-file PATH` (print the table and also write the JSON there), `--reps N` (measurements per cell, median reported; 5 by default, 1 with
//! `--quick`), `--filter a,b` (only workloads whose name contains one of these).
//!
//! Every allocator × workload × repetition runs in a child process of its own (this binary
//! re-executed as `compare --child <allocator> <workload> <iterations>`), so peak resident
//! memory (`VmHWM`) is that of one allocator on one workload. The child runs the workload
//! once briefly to warm up, then once timed, and prints the time per operation and its peak
//! on stdout. This binary's global allocator stays the system one: the workloads call each
//! allocator's `GlobalAlloc` methods directly.

#[path = "../benches/workloads/mod.rs"]
mod workloads;
#[path = "common/report.rs"]
mod report;

use report::{cpu_model, json_str, utc_now};
use std::alloc::GlobalAlloc;
use std::fmt::Write as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use workloads::{ALLOCATORS, WORKLOADS, WithAlloc, Workload, with_alloc};

/// `--quick` divides every workload's iterations by this.
const QUICK_DIVISOR: u64 = 20;
/// A child that takes longer than this is killed and its cell reported as failed.
const CHILD_TIMEOUT: Duration = Duration::from_secs(120);

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--child") {
        child(&args[1..]);
        return;
    }
    let opts = match Options::parse(&args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!(
                "compare: {e}\n\nusage: compare [--quick] [--json] [--json-file PATH] [--reps N] [--filter a,b]"
            );
            std::process::exit(2);
        }
    };
    let run = measure(&opts);
    if let Some(path) = &opts.json_file {
        if let Err(e) = std::fs::write(path, run.json()) {
            eprintln!("compare: cannot write {path}: {e}");
            std::process::exit(1);
        }
    }
    if opts.json {
        print!("{}", run.json());
    } else {
        print!("{}", run.markdown());
    }
}

// ---------------------------------------------------------------------------------------
// The child: one workload on one allocator.

/// Runs one workload on one allocator and reports on stdout.
struct ChildRun {
    workload: &'static Workload,
    iters: u64,
}

impl WithAlloc for ChildRun {
    type Out = ();

    fn call<A: GlobalAlloc + Sync>(self, _name: &'static str, a: &A) {
        let mut prepared = self.workload.prepare(a);
        prepared.run((self.iters / 10).max(1));
        let time = prepared.run(self.iters);
        let ops = self.iters * self.workload.ops_per_iter();
        let ns_per_op = time.as_nanos() as f64 / ops as f64;
        let peak = peak_rss_kib();
        drop(prepared);
        println!("ns_per_op={ns_per_op} peak_kib={peak}");
    }
}

fn child(args: &[String]) {
    let [alloc, name, iters] = args else {
        eprintln!("compare --child: expected <allocator> <workload> <iterations>");
        std::process::exit(2);
    };
    let Some(workload) = WORKLOADS.iter().find(|w| w.name == name.as_str()) else {
        eprintln!("compare --child: unknown workload {name}");
        std::process::exit(2);
    };
    let Ok(iters) = iters.parse() else {
        eprintln!("compare --child: bad iteration count {iters}");
        std::process::exit(2);
    };
    if with_alloc(alloc, ChildRun { workload, iters }).is_none() {
        eprintln!("compare --child: unknown allocator {alloc}");
        std::process::exit(2);
    }
}

/// Peak resident memory of this process in KiB: `VmHWM` of /proc/self/status, or
/// `getrusage`'s `ru_maxrss` where /proc is missing.
fn peak_rss_kib() -> u64 {
    if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
        for line in status.lines() {
            if let Some(v) = line.strip_prefix("VmHWM:") {
                if let Ok(kib) = v.trim().trim_end_matches("kB").trim().parse() {
                    return kib;
                }
            }
        }
    }
    // SAFETY: an all-zero `rusage` is a valid value; `getrusage` fills it in.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `usage` is a valid out-pointer.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } == 0 {
        usage.ru_maxrss.max(0) as u64
    } else {
        0
    }
}

// ---------------------------------------------------------------------------------------
// The parent: every cell, a few times, in children.

struct Options {
    quick: bool,
    json: bool,
    json_file: Option<String>,
    reps: usize,
    filter: Vec<String>,
}

impl Options {
    fn parse(args: &[String]) -> Result<Options, String> {
        let mut o = Options {
            quick: false,
            json: false,
            json_file: None,
            reps: 0,
            filter: Vec::new(),
        };
        let mut it = args.iter();
        while let Some(a) = it.next() {
            match a.as_str() {
                "--quick" => o.quick = true,
                "--json" => o.json = true,
                "--json-file" => {
                    o.json_file = Some(it.next().ok_or("--json-file needs a path")?.clone());
                }
                "--reps" => {
                    let n = it.next().ok_or("--reps needs a number")?;
                    o.reps = n.parse().map_err(|_| format!("bad --reps {n}"))?;
                }
                "--filter" => {
                    let f = it.next().ok_or("--filter needs a list")?;
                    o.filter = f.split(',').map(str::to_owned).collect();
                }
                other => return Err(format!("unknown option {other}")),
            }
        }
        if o.reps == 0 {
            o.reps = if o.quick { 1 } else { 5 };
        }
        Ok(o)
    }

    fn selected(&self, w: &Workload) -> bool {
        self.filter.is_empty() || self.filter.iter().any(|f| w.name.contains(f.as_str()))
    }

    fn iters(&self, w: &Workload) -> u64 {
        if self.quick {
            (w.compare_iters / QUICK_DIVISOR).max(1)
        } else {
            w.compare_iters
        }
    }
}

/// One cell: a workload on an allocator, medians over the repetitions.
#[derive(Clone, Default)]
struct Cell {
    ns: Vec<f64>,
    peak_kib: Vec<u64>,
    failures: Vec<String>,
}

impl Cell {
    fn ns(&self) -> Option<f64> {
        median(&self.ns)
    }

    fn peak_kib(&self) -> Option<f64> {
        median(&self.peak_kib.iter().map(|&k| k as f64).collect::<Vec<_>>())
    }
}

fn median(v: &[f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

struct Run {
    date: String,
    nproc: usize,
    cpu: String,
    quick: bool,
    reps: usize,
    wall: Duration,
    workloads: Vec<&'static Workload>,
    /// `cells[workload][allocator]`, allocators in [`ALLOCATORS`] order.
    cells: Vec<Vec<Cell>>,
}

fn measure(opts: &Options) -> Run {
    let exe = std::env::current_exe().expect("own path");
    let workloads: Vec<&'static Workload> = WORKLOADS.iter().filter(|w| opts.selected(w)).collect();
    let mut cells = vec![vec![Cell::default(); ALLOCATORS.len()]; workloads.len()];
    let started = Instant::now();
    for rep in 0..opts.reps {
        for (wi, w) in workloads.iter().enumerate() {
            let mut line = format!("[{}/{}] {:<20}", rep + 1, opts.reps, w.name);
            // Rotate the order each repetition so that no allocator always runs first.
            for k in 0..ALLOCATORS.len() {
                let ai = (k + rep + wi) % ALLOCATORS.len();
                let alloc = ALLOCATORS[ai];
                let cell = &mut cells[wi][ai];
                match run_child(&exe, alloc, w, opts.iters(w)) {
                    Ok((ns, peak)) => {
                        cell.ns.push(ns);
                        cell.peak_kib.push(peak);
                        let _ = write!(line, " {alloc} {}", fmt_time(ns));
                    }
                    Err(e) => {
                        let _ = write!(line, " {alloc} FAILED");
                        cell.failures.push(e);
                    }
                }
            }
            eprintln!("{line}  ({:.0} s)", started.elapsed().as_secs_f64());
        }
    }
    Run {
        date: utc_now(),
        nproc: std::thread::available_parallelism().map_or(1, |n| n.get()),
        cpu: cpu_model(),
        quick: opts.quick,
        reps: opts.reps,
        wall: started.elapsed(),
        workloads,
        cells,
    }
}

/// Runs one child; returns its time per operation (ns) and peak RSS (KiB).
fn run_child(
    exe: &std::path::Path,
    alloc: &str,
    w: &Workload,
    iters: u64,
) -> Result<(f64, u64), String> {
    let mut child = Command::new(exe)
        .args(["--child", alloc, w.name, &iters.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("spawn: {e}"))?;
    let deadline = Instant::now() + CHILD_TIMEOUT;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if Instant::now() > deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("timed out after {} s", CHILD_TIMEOUT.as_secs()));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(2)),
            Err(e) => return Err(format!("wait: {e}")),
        }
    }
    let out = child.wait_with_output().map_err(|e| format!("wait: {e}"))?;
    if !out.status.success() {
        return Err(format!("child exited with {}", out.status));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |key: &str| {
        text.split_whitespace()
            .find_map(|kv| kv.strip_prefix(key))
            .map(str::to_owned)
    };
    let ns = field("ns_per_op=").and_then(|v| v.parse().ok());
    let peak = field("peak_kib=").and_then(|v| v.parse().ok());
    match (ns, peak) {
        (Some(ns), Some(peak)) => Ok((ns, peak)),
        _ => Err(format!("unreadable child output {text:?}")),
    }
}

// ---------------------------------------------------------------------------------------
// Reporting.

const SYSTEM: usize = 1;

fn fmt_time(ns: f64) -> String {
    if ns < 1.0 {
        format!("{ns:.2} ns")
    } else if ns < 1e3 {
        format!("{ns:.1} ns")
    } else if ns < 1e6 {
        format!("{:.2} µs", ns / 1e3)
    } else {
        format!("{:.2} ms", ns / 1e6)
    }
}

fn fmt_mib(kib: f64) -> String {
    format!("{:.1} MiB", kib / 1024.0)
}

fn geomean(v: &[f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    Some((v.iter().map(|x| x.ln()).sum::<f64>() / v.len() as f64).exp())
}

impl Run {
    /// Ratios of allocator `ai` to the system allocator over the workloads where both ran:
    /// `(time ratios, peak ratios)`.
    fn ratios(&self, ai: usize) -> (Vec<f64>, Vec<f64>) {
        self.ratios_to(ai, SYSTEM)
    }

    fn ratios_to(&self, ai: usize, base: usize) -> (Vec<f64>, Vec<f64>) {
        let mut t = Vec::new();
        let mut m = Vec::new();
        for row in &self.cells {
            if let (Some(a), Some(b)) = (row[ai].ns(), row[base].ns()) {
                t.push(a / b);
            }
            if let (Some(a), Some(b)) = (row[ai].peak_kib(), row[base].peak_kib()) {
                m.push(a / b);
            }
        }
        (t, m)
    }

    /// The fastest allocator on row `wi` and spanalloc's time over its time.
    fn best(&self, wi: usize) -> Option<(usize, f64)> {
        let row = &self.cells[wi];
        let (bi, best) = (0..ALLOCATORS.len())
            .filter_map(|ai| row[ai].ns().map(|ns| (ai, ns)))
            .min_by(|a, b| a.1.total_cmp(&b.1))?;
        Some((bi, row[0].ns()? / best))
    }

    fn markdown(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "spanalloc compare, {}{}; {} CPUs, {}; median of {} run{} per cell; {:.0} s in all\n",
            self.date,
            if self.quick { " (--quick)" } else { "" },
            self.nproc,
            self.cpu,
            self.reps,
            if self.reps == 1 { "" } else { "s" },
            self.wall.as_secs_f64()
        );
        let header = |s: &mut String, first: &str, last: &str| {
            let _ = write!(s, "| {first} |");
            for a in ALLOCATORS {
                let _ = write!(s, " {a} |");
            }
            let _ = writeln!(s, "{last}");
            let _ = write!(s, "|---|");
            for _ in ALLOCATORS {
                let _ = write!(s, "---:|");
            }
            let _ = writeln!(s, "{}", if last.is_empty() { "" } else { "---|" });
        };

        let _ = writeln!(
            s,
            "Time per operation (ratio to system; lower is better):\n"
        );
        header(&mut s, "workload", " spanalloc vs best |");
        for (wi, w) in self.workloads.iter().enumerate() {
            let row = &self.cells[wi];
            let _ = write!(s, "| {} |", w.name);
            for cell in row {
                match (cell.ns(), row[SYSTEM].ns()) {
                    (Some(ns), Some(sys)) => {
                        let _ = write!(s, " {} ({:.2}x) |", fmt_time(ns), ns / sys);
                    }
                    (Some(ns), None) => {
                        let _ = write!(s, " {} |", fmt_time(ns));
                    }
                    _ => s.push_str(" failed |"),
                }
            }
            match self.best(wi) {
                Some((bi, r)) => {
                    let _ = writeln!(s, " {r:.2}x {} |", ALLOCATORS[bi]);
                }
                None => s.push_str(" - |\n"),
            }
        }

        let _ = writeln!(
            s,
            "\nPeak resident memory of the child process (ratio to system):\n"
        );
        header(&mut s, "workload", "");
        for (wi, w) in self.workloads.iter().enumerate() {
            let row = &self.cells[wi];
            let _ = write!(s, "| {} |", w.name);
            for cell in row {
                match (cell.peak_kib(), row[SYSTEM].peak_kib()) {
                    (Some(k), Some(sys)) => {
                        let _ = write!(s, " {} ({:.2}x) |", fmt_mib(k), k / sys);
                    }
                    _ => s.push_str(" failed |"),
                }
            }
            s.push('\n');
        }

        let _ = writeln!(
            s,
            "\nGeometric means over the workloads (ratio to system; lower is better):\n"
        );
        let _ = writeln!(
            s,
            "| allocator | time | peak RSS | time vs mimalloc | peak RSS vs mimalloc |"
        );
        let _ = writeln!(s, "|---|---:|---:|---:|---:|");
        for (ai, a) in ALLOCATORS.iter().enumerate() {
            let (t, m) = self.ratios(ai);
            let (tm, mm) = self.ratios_to(ai, 2);
            let g = |v: &[f64]| geomean(v).map_or("-".into(), |g| format!("{g:.2}x"));
            let _ = writeln!(
                s,
                "| {a} | {} | {} | {} | {} |",
                g(&t),
                g(&m),
                g(&tm),
                g(&mm)
            );
        }
        let failed: Vec<String> = self.failures().collect();
        if !failed.is_empty() {
            let _ = writeln!(s, "\nFailed runs (left out of the means):\n");
            for f in failed {
                let _ = writeln!(s, "- {f}");
            }
        }
        s
    }

    fn failures(&self) -> impl Iterator<Item = String> + '_ {
        self.workloads.iter().enumerate().flat_map(move |(wi, w)| {
            ALLOCATORS.iter().enumerate().flat_map(move |(ai, a)| {
                self.cells[wi][ai]
                    .failures
                    .iter()
                    .map(move |e| format!("{} on {a}: {e}", w.name))
            })
        })
    }

    fn json(&self) -> String {
        let num = |v: Option<f64>| v.map_or("null".into(), |x| format!("{x}"));
        let mut s = String::new();
        let _ = writeln!(s, "{{");
        let _ = writeln!(s, "  \"date\": {},", json_str(&self.date));
        let _ = writeln!(
            s,
            "  \"machine\": {{\"nproc\": {}, \"cpu\": {}}},",
            self.nproc,
            json_str(&self.cpu)
        );
        let _ = writeln!(s, "  \"quick\": {}, \"reps\": {},", self.quick, self.reps);
        let _ = writeln!(s, "  \"wall_seconds\": {:.1},", self.wall.as_secs_f64());
        let names: Vec<String> = ALLOCATORS.iter().map(|a| json_str(a)).collect();
        let _ = writeln!(s, "  \"allocators\": [{}],", names.join(", "));
        let _ = writeln!(s, "  \"baseline\": \"system\",");
        let _ = writeln!(s, "  \"workloads\": [");
        for (wi, w) in self.workloads.iter().enumerate() {
            let row = &self.cells[wi];
            let _ = writeln!(
                s,
                "    {{\"name\": {}, \"describe\": {}, \"results\": {{",
                json_str(w.name),
                json_str(&w.describe())
            );
            for (ai, a) in ALLOCATORS.iter().enumerate() {
                let c = &row[ai];
                let ratio = c.ns().zip(row[SYSTEM].ns()).map(|(a, b)| a / b);
                let rss_ratio = c.peak_kib().zip(row[SYSTEM].peak_kib()).map(|(a, b)| a / b);
                let samples: Vec<String> = c.ns.iter().map(|x| format!("{x}")).collect();
                let _ = writeln!(
                    s,
                    "      {}: {{\"ns_per_op\": {}, \"time_ratio\": {}, \"peak_kib\": {}, \"peak_ratio\": {}, \"samples_ns\": [{}], \"failures\": {}}}{}",
                    json_str(a),
                    num(c.ns()),
                    num(ratio),
                    num(c.peak_kib()),
                    num(rss_ratio),
                    samples.join(", "),
                    c.failures.len(),
                    if ai + 1 < ALLOCATORS.len() { "," } else { "" }
                );
            }
            let _ = writeln!(
                s,
                "    }}}}{}",
                if wi + 1 < self.workloads.len() {
                    ","
                } else {
                    ""
                }
            );
        }
        let _ = writeln!(s, "  ],");
        let _ = writeln!(s, "  \"geomean\": {{");
        for (ai, a) in ALLOCATORS.iter().enumerate() {
            let (t, m) = self.ratios(ai);
            let _ = writeln!(
                s,
                "    {}: {{\"time_ratio\": {}, \"peak_ratio\": {}}}{}",
                json_str(a),
                num(geomean(&t)),
                num(geomean(&m)),
                if ai + 1 < ALLOCATORS.len() { "," } else { "" }
            );
        }
        let _ = writeln!(s, "  }}");
        let _ = writeln!(s, "}}");
        s
    }
}
