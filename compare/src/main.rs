//! The side-by-side table: spanalloc against the system allocator, mimalloc (v2 and v3) and
//! jemalloc on the workloads of `spanalloc_compare::workloads` (the realistic program
//! included), time per operation and peak resident memory.
//!
//! ```text
//! cargo run --release -p spanalloc-compare            # full table, a few minutes
//! cargo run --release -p spanalloc-compare -- --quick # under a minute, rougher
//! cargo run --release -p spanalloc-compare -- --json  # machine-readable (for scripts/chart.py)
//! ```
//!
//! Options: `--json-file PATH` (print the table and also write the JSON there), `--reps N`
//! (measurements per cell, median reported; 5 by default, 1 with `--quick`), `--filter a,b`
//! (only workloads whose name contains one of these), `--alloc a,b` (only these allocators).
//!
//! Every allocator × workload × repetition runs in a child process of its own (this binary
//! re-executed as `compare --child <allocator> <workload> <iterations>`), so peak resident
//! memory (`VmHWM`) is that of one allocator on one workload. The child runs the workload
//! once briefly to warm up, then once timed, and prints the time per operation and its peak
//! on stdout. This binary's global allocator stays the system one for the micro-workloads,
//! which call each allocator's `GlobalAlloc` methods directly; for the realistic program the
//! child's global allocator is the measured one (`spanalloc_compare::allocators::Dispatch`).
//!
//! One build links one mimalloc line (v3, the `mimalloc` crate's default); the children of
//! the other line run from a second build of this binary, which the first run makes (into
//! `target/mimalloc-v2/`; see `spanalloc_compare::child::Binaries`).

use spanalloc_compare::allocators::{
    ALLOCATORS, Dispatch, MIMALLOC_V2, MIMALLOC_V3, SYSTEM, mimalloc_version,
};
use spanalloc_compare::child::{Binaries, child_main, run_child};
use spanalloc_compare::report::{cpu_model, json_str, utc_now};
use spanalloc_compare::workloads::{WORKLOADS, Workload};
use std::fmt::Write as _;
use std::time::{Duration, Instant};

#[global_allocator]
static GLOBAL: Dispatch = Dispatch;

/// `--quick` divides every workload's iterations by this.
const QUICK_DIVISOR: u64 = 20;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("--child") => {
            child_main(&args[1..]);
            return;
        }
        Some("--mimalloc-version") => {
            let (a, b, c) = mimalloc_version();
            println!("{a}.{b}.{c}");
            return;
        }
        _ => {}
    }
    let opts = match Options::parse(&args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!(
                "compare: {e}\n\nusage: compare [--quick] [--json] [--json-file PATH] [--reps N] [--filter a,b] [--alloc a,b]"
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
// The parent: every cell, a few times, in children.

struct Options {
    quick: bool,
    json: bool,
    json_file: Option<String>,
    reps: usize,
    filter: Vec<String>,
    allocs: Vec<String>,
}

impl Options {
    fn parse(args: &[String]) -> Result<Options, String> {
        let mut o = Options {
            quick: false,
            json: false,
            json_file: None,
            reps: 0,
            filter: Vec::new(),
            allocs: Vec::new(),
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
                "--alloc" => {
                    let f = it.next().ok_or("--alloc needs a list")?;
                    o.allocs = f.split(',').map(str::to_owned).collect();
                    if let Some(bad) = o.allocs.iter().find(|a| !ALLOCATORS.contains(&a.as_str())) {
                        return Err(format!(
                            "unknown allocator {bad} (one of {})",
                            ALLOCATORS.join(", ")
                        ));
                    }
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

    fn alloc_selected(&self, a: &str) -> bool {
        self.allocs.is_empty() || self.allocs.iter().any(|x| x == a)
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
    checks: Vec<u64>,
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
    /// The mimalloc version of each mimalloc column that ran, e.g. `("mimalloc-v3", "3.3.2")`.
    mimalloc: Vec<(&'static str, String)>,
    /// The allocators measured, in [`ALLOCATORS`] order (all of them unless `--alloc`).
    allocs: Vec<&'static str>,
    workloads: Vec<&'static Workload>,
    /// `cells[workload][allocator]`, allocators in [`ALLOCATORS`] order.
    cells: Vec<Vec<Cell>>,
}

fn measure(opts: &Options) -> Run {
    let bins = Binaries::new(std::env::current_exe().expect("own path"));
    let workloads: Vec<&'static Workload> = WORKLOADS.iter().filter(|w| opts.selected(w)).collect();
    let allocs: Vec<usize> = (0..ALLOCATORS.len())
        .filter(|&ai| opts.alloc_selected(ALLOCATORS[ai]))
        .collect();
    let mut cells = vec![vec![Cell::default(); ALLOCATORS.len()]; workloads.len()];
    // Build the second binary (the other mimalloc line) before any measurement, so that
    // its compilation does not run beside one.
    for &ai in &allocs {
        if let Err(e) = bins.for_alloc(ALLOCATORS[ai]) {
            eprintln!("compare: {} will fail: {e}", ALLOCATORS[ai]);
        }
    }
    let started = Instant::now();
    for rep in 0..opts.reps {
        for (wi, w) in workloads.iter().enumerate() {
            let mut line = format!("[{}/{}] {:<20}", rep + 1, opts.reps, w.name);
            // Rotate the order each repetition so that no allocator always runs first.
            for k in 0..allocs.len() {
                let ai = allocs[(k + rep + wi) % allocs.len()];
                let alloc = ALLOCATORS[ai];
                let cell = &mut cells[wi][ai];
                let result = bins
                    .for_alloc(alloc)
                    .and_then(|exe| run_child(exe, alloc, w, opts.iters(w)));
                match result {
                    Ok(m) => {
                        cell.ns.push(m.ns_per_op);
                        cell.peak_kib.push(m.peak_kib);
                        cell.checks.push(m.check);
                        let _ = write!(line, " {alloc} {}", fmt_time(m.ns_per_op));
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
    let mut mimalloc = Vec::new();
    for ai in [MIMALLOC_V2, MIMALLOC_V3] {
        if !allocs.contains(&ai) {
            continue;
        }
        let name = ALLOCATORS[ai];
        let version = match bins.for_alloc(name) {
            Ok(exe) => std::process::Command::new(exe)
                .arg("--mimalloc-version")
                .output()
                .ok()
                .filter(|o| o.status.success())
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned()),
            Err(_) => None,
        };
        if let Some(v) = version {
            mimalloc.push((name, v));
        }
    }
    Run {
        date: utc_now(),
        nproc: std::thread::available_parallelism().map_or(1, |n| n.get()),
        cpu: cpu_model(),
        quick: opts.quick,
        reps: opts.reps,
        wall: started.elapsed(),
        mimalloc,
        allocs: allocs.iter().map(|&ai| ALLOCATORS[ai]).collect(),
        workloads,
        cells,
    }
}

// ---------------------------------------------------------------------------------------
// Reporting.

fn fmt_time(ns: f64) -> String {
    if ns < 1.0 {
        format!("{ns:.2} ns")
    } else if ns < 1e3 {
        format!("{ns:.1} ns")
    } else if ns < 1e6 {
        format!("{:.2} µs", ns / 1e3)
    } else if ns < 1e9 {
        format!("{:.2} ms", ns / 1e6)
    } else {
        format!("{:.2} s", ns / 1e9)
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
    /// Indices in [`ALLOCATORS`] of the allocators measured.
    fn alloc_indices(&self) -> Vec<usize> {
        (0..ALLOCATORS.len())
            .filter(|&ai| self.allocs.contains(&ALLOCATORS[ai]))
            .collect()
    }

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
        if !self.mimalloc.is_empty() {
            let versions: Vec<String> = self
                .mimalloc
                .iter()
                .map(|(a, v)| format!("{a} is mimalloc {v}"))
                .collect();
            let _ = writeln!(s, "{}.\n", versions.join(", "));
        }
        let allocs = self.alloc_indices();
        let header = |s: &mut String, first: &str, last: &str| {
            let _ = write!(s, "| {first} |");
            for &ai in &allocs {
                let _ = write!(s, " {} |", ALLOCATORS[ai]);
            }
            let _ = writeln!(s, "{last}");
            let _ = write!(s, "|---|");
            for _ in &allocs {
                let _ = write!(s, "---:|");
            }
            let _ = writeln!(s, "{}", if last.is_empty() { "" } else { "---|" });
        };

        let _ = writeln!(
            s,
            "Time per operation (ratio to system; lower is better; `rust-program`: one run):\n"
        );
        header(&mut s, "workload", " spanalloc vs best |");
        for (wi, w) in self.workloads.iter().enumerate() {
            let row = &self.cells[wi];
            let _ = write!(s, "| {} |", w.name);
            for &ai in &allocs {
                let cell = &row[ai];
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
            for &ai in &allocs {
                match (row[ai].peak_kib(), row[SYSTEM].peak_kib()) {
                    (Some(k), Some(sys)) => {
                        let _ = write!(s, " {} ({:.2}x) |", fmt_mib(k), k / sys);
                    }
                    (Some(k), None) => {
                        let _ = write!(s, " {} |", fmt_mib(k));
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
            "| allocator | time | peak RSS | time vs mimalloc-v2 | time vs mimalloc-v3 | peak RSS vs mimalloc-v2 | peak RSS vs mimalloc-v3 |"
        );
        let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|");
        let g = |v: &[f64]| geomean(v).map_or("-".into(), |g| format!("{g:.2}x"));
        for &ai in &allocs {
            let (t, m) = self.ratios(ai);
            let (t2, m2) = self.ratios_to(ai, MIMALLOC_V2);
            let (t3, m3) = self.ratios_to(ai, MIMALLOC_V3);
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} |",
                ALLOCATORS[ai],
                g(&t),
                g(&m),
                g(&t2),
                g(&t3),
                g(&m2),
                g(&m3)
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

    /// Every failed child, and every row whose allocators did not all compute the same
    /// checksum (the program must do the same work on every allocator).
    fn failures(&self) -> impl Iterator<Item = String> + '_ {
        let children = self.workloads.iter().enumerate().flat_map(move |(wi, w)| {
            ALLOCATORS.iter().enumerate().flat_map(move |(ai, a)| {
                self.cells[wi][ai]
                    .failures
                    .iter()
                    .map(move |e| format!("{} on {a}: {e}", w.name))
            })
        });
        let checks = self
            .workloads
            .iter()
            .enumerate()
            .filter_map(move |(wi, w)| {
                let mut all: Vec<(&str, u64)> = Vec::new();
                for (ai, a) in ALLOCATORS.iter().enumerate() {
                    all.extend(self.cells[wi][ai].checks.iter().map(|&c| (*a, c)));
                }
                let first = all.first()?.1;
                all.iter().any(|&(_, c)| c != first).then(|| {
                    let list: Vec<String> = all.iter().map(|(a, c)| format!("{a} {c:x}")).collect();
                    format!("{}: checksums differ: {}", w.name, list.join(", "))
                })
            });
        children.chain(checks)
    }

    fn json(&self) -> String {
        let num = |v: Option<f64>| v.map_or("null".into(), |x| format!("{x}"));
        let allocs = self.alloc_indices();
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
        let names: Vec<String> = allocs.iter().map(|&ai| json_str(ALLOCATORS[ai])).collect();
        let _ = writeln!(s, "  \"allocators\": [{}],", names.join(", "));
        let versions: Vec<String> = self
            .mimalloc
            .iter()
            .map(|(a, v)| format!("{}: {}", json_str(a), json_str(v)))
            .collect();
        let _ = writeln!(s, "  \"mimalloc_versions\": {{{}}},", versions.join(", "));
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
            for (k, &ai) in allocs.iter().enumerate() {
                let c = &row[ai];
                let ratio = c.ns().zip(row[SYSTEM].ns()).map(|(a, b)| a / b);
                let rss_ratio = c.peak_kib().zip(row[SYSTEM].peak_kib()).map(|(a, b)| a / b);
                let samples: Vec<String> = c.ns.iter().map(|x| format!("{x}")).collect();
                let _ = writeln!(
                    s,
                    "      {}: {{\"ns_per_op\": {}, \"time_ratio\": {}, \"peak_kib\": {}, \"peak_ratio\": {}, \"samples_ns\": [{}], \"failures\": {}}}{}",
                    json_str(ALLOCATORS[ai]),
                    num(c.ns()),
                    num(ratio),
                    num(c.peak_kib()),
                    num(rss_ratio),
                    samples.join(", "),
                    c.failures.len(),
                    if k + 1 < allocs.len() { "," } else { "" }
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
        for (k, &ai) in allocs.iter().enumerate() {
            let (t, m) = self.ratios(ai);
            let _ = writeln!(
                s,
                "    {}: {{\"time_ratio\": {}, \"peak_ratio\": {}}}{}",
                json_str(ALLOCATORS[ai]),
                num(geomean(&t)),
                num(geomean(&m)),
                if k + 1 < allocs.len() { "," } else { "" }
            );
        }
        let _ = writeln!(s, "  }}");
        let _ = writeln!(s, "}}");
        s
    }
}
