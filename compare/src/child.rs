//! One workload on one allocator per child process: the child's side
//! ([`child_main`], `compare --child <allocator> <workload> <iterations>`) and the parent's
//! ([`Binaries`], [`run_child`]), shared by the `compare` binary and the criterion suite.
//!
//! The child runs a micro-workload briefly to warm up, then once timed, and prints
//! `ns_per_op=… peak_kib=… check=…` on stdout: the time per operation, its peak resident
//! memory (`VmHWM`) and a checksum of the work (0 but for the program). The program
//! ([`crate::program`]) runs once, cold, as a program does, in a child whose global
//! allocator is the measured one ([`GLOBAL_ENV`]).

use std::alloc::GlobalAlloc;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::allocators::{
    ALLOCATORS, Dispatch, GLOBAL_ENV, MIMALLOC_V2, MIMALLOC_V3, WithAlloc, available,
    mimalloc_here, with_alloc,
};
use crate::workloads::{WORKLOADS, Workload};

/// A child that takes longer than this is killed and its measurement reported as failed.
pub const CHILD_TIMEOUT: Duration = Duration::from_secs(120);

/// What a child measured.
#[derive(Clone, Copy, Debug)]
pub struct Measurement {
    /// Time per operation, in nanoseconds.
    pub ns_per_op: f64,
    /// Peak resident memory of the child, in KiB.
    pub peak_kib: u64,
    /// The workload's checksum (the program's; 0 for the micro-workloads).
    pub check: u64,
}

// ---------------------------------------------------------------------------------------
// The child.

/// Runs one micro-workload on one allocator.
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
        let peak = peak_rss_kib();
        drop(prepared);
        report(self.workload, self.iters, time, peak, 0);
    }
}

fn report(w: &Workload, iters: u64, time: Duration, peak_kib: u64, check: u64) {
    let ns_per_op = time.as_nanos() as f64 / w.ops(iters) as f64;
    println!("ns_per_op={ns_per_op} peak_kib={peak_kib} check={check}");
}

fn fail(msg: &str) -> ! {
    eprintln!("compare --child: {msg}");
    std::process::exit(2);
}

/// The child: `args` are `<allocator> <workload> <iterations>`. Exits with status 2 on bad
/// arguments or an allocator this build cannot run.
pub fn child_main(args: &[String]) {
    let [alloc, name, iters] = args else {
        fail("expected <allocator> <workload> <iterations>");
    };
    let Some(workload) = WORKLOADS.iter().find(|w| w.name == name.as_str()) else {
        fail(&format!("unknown workload {name}"));
    };
    let Ok(iters) = iters.parse::<u64>() else {
        fail(&format!("bad iteration count {iters}"));
    };
    if workload.uses_global() {
        let global = Dispatch::current();
        if global != alloc.as_str() {
            fail(&format!(
                "{name} needs {alloc} as the global allocator, and this process has {global} \
                 (set {GLOBAL_ENV}={alloc}; this build links mimalloc {}.{}.{})",
                crate::allocators::mimalloc_version().0,
                crate::allocators::mimalloc_version().1,
                crate::allocators::mimalloc_version().2,
            ));
        }
        let out = crate::program::run(iters);
        report(workload, iters, out.time, peak_rss_kib(), out.check);
        return;
    }
    if with_alloc(alloc, ChildRun { workload, iters }).is_none() {
        fail(&format!(
            "this build cannot run allocator {alloc} (it links mimalloc v{})",
            crate::allocators::mimalloc_major()
        ));
    }
}

/// Peak resident memory of this process in KiB: `VmHWM` of /proc/self/status, or
/// `getrusage`'s `ru_maxrss` where /proc is missing.
pub fn peak_rss_kib() -> u64 {
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
// The parent.

/// The `compare` binaries that run the children: this build's, and a second build that
/// links the other mimalloc line, made on first use.
pub struct Binaries {
    main: PathBuf,
    other: OnceLock<Result<PathBuf, String>>,
}

impl Binaries {
    /// `main` is a `compare` binary of the same build as this process (the process itself,
    /// or `CARGO_BIN_EXE_compare` for the benchmarks).
    pub fn new(main: PathBuf) -> Binaries {
        Binaries {
            main,
            other: OnceLock::new(),
        }
    }

    /// The binary that runs allocator `alloc`, building the second one if it is needed
    /// and not built yet (cargo's output goes to stderr).
    pub fn for_alloc(&self, alloc: &str) -> Result<&Path, String> {
        if available(alloc) {
            return Ok(&self.main);
        }
        let other = ALLOCATORS[if mimalloc_here() == MIMALLOC_V2 {
            MIMALLOC_V3
        } else {
            MIMALLOC_V2
        }];
        if alloc != other {
            return Err(format!("{alloc} is not in this build"));
        }
        self.other
            .get_or_init(|| self.build_other(other))
            .as_deref()
            .map_err(Clone::clone)
    }

    /// Builds the `compare` binary with the other mimalloc line into a target directory of
    /// its own beside this one (`<target>/<other>/`), so that cargo never unifies the two
    /// feature sets and the two builds never invalidate each other.
    fn build_other(&self, other: &str) -> Result<PathBuf, String> {
        let profile_dir = self.main.parent().ok_or("no parent directory")?;
        let target = profile_dir.parent().ok_or("no target directory")?;
        let profile = profile_dir
            .file_name()
            .and_then(|p| p.to_str())
            .ok_or("no profile directory")?;
        let target_dir = target.join(other);
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args([
            "build",
            "--quiet",
            "-p",
            "spanalloc-compare",
            "--bin",
            "compare",
        ])
        .arg("--manifest-path")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"))
        .arg("--target-dir")
        .arg(&target_dir)
        .args(["--no-default-features", "--features"])
        .arg(if other == ALLOCATORS[MIMALLOC_V2] {
            "free-checks mimalloc-v2"
        } else {
            "free-checks"
        });
        match profile {
            "debug" => {}
            "release" => {
                cmd.arg("--release");
            }
            p => {
                cmd.args(["--profile", p]);
            }
        }
        eprintln!(
            "compare: bringing the {other} build of compare up to date in {} (a minute or \
             two the first time)",
            target_dir.display()
        );
        let status = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .status()
            .map_err(|e| format!("cannot run cargo to build the {other} binary: {e}"))?;
        if !status.success() {
            return Err(format!("cargo build of the {other} binary: {status}"));
        }
        let exe = target_dir.join(profile).join("compare");
        if exe.exists() {
            Ok(exe)
        } else {
            Err(format!("no binary at {}", exe.display()))
        }
    }
}

/// Runs one child of `exe`: workload `w` on allocator `alloc`, `iters` iterations.
pub fn run_child(exe: &Path, alloc: &str, w: &Workload, iters: u64) -> Result<Measurement, String> {
    let mut cmd = Command::new(exe);
    cmd.args(["--child", alloc, w.name, &iters.to_string()]);
    if w.uses_global() {
        cmd.env(GLOBAL_ENV, alloc);
    } else {
        cmd.env_remove(GLOBAL_ENV);
    }
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("spawn {}: {e}", exe.display()))?;
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
    let check = field("check=").and_then(|v| v.parse().ok());
    match (ns, peak, check) {
        (Some(ns_per_op), Some(peak_kib), Some(check)) => Ok(Measurement {
            ns_per_op,
            peak_kib,
            check,
        }),
        _ => Err(format!("unreadable child output {text:?}")),
    }
}
