//! Criterion benchmarks: every workload of `spanalloc_compare::workloads` on spanalloc, the
//! system allocator, mimalloc v2 and v3 and jemalloc.
//!
//! `cargo bench -p spanalloc-compare` runs them all (several minutes);
//! `cargo bench -p spanalloc-compare -- pair-64B` runs one group. Each group is a workload
//! and each benchmark in it an allocator; throughput is in operations (see
//! `Workload::ops_per_iter`). The binary's own global allocator stays the system one, so
//! criterion's allocations do not mix with the measured ones.
//!
//! Most benchmarks run in this process, through the allocator's `GlobalAlloc` methods. Two
//! kinds run in child processes of the `compare` binary instead, one child per sample, each
//! timing itself exactly as the in-process benchmark does (process start-up and set-up stay
//! outside the time): the realistic program (`rust-program`), which allocates through the
//! global allocator and so needs a process whose global allocator is the measured one, and
//! the mimalloc line this build does not link (v2; one build links only one), whose
//! children run from the second build of `compare` that it makes on first use.

use criterion::{BenchmarkGroup, Criterion, SamplingMode, Throughput, measurement::WallTime};
use spanalloc_compare::allocators::{ALLOCATORS, WithAlloc, available, with_alloc};
use spanalloc_compare::child::{Binaries, run_child};
use spanalloc_compare::workloads::{WORKLOADS, Workload};
use std::alloc::GlobalAlloc;
use std::path::Path;
use std::time::Duration;

/// The size of the realistic program in its benchmark: one run is one iteration.
const PROGRAM_SCALE: u64 = 1;

/// Benchmarks one workload on one allocator, in this process.
struct Bench<'g, 'c> {
    group: &'g mut BenchmarkGroup<'c, WallTime>,
    workload: &'g Workload,
}

impl WithAlloc for Bench<'_, '_> {
    type Out = ();

    fn call<A: GlobalAlloc + Sync>(self, name: &'static str, a: &A) {
        // Set-up kept across samples (the long-lived set) is built once, outside timing.
        let mut prepared = self.workload.prepare(a);
        self.group
            .bench_function(name, |b| b.iter_custom(|iters| prepared.run(iters)));
    }
}

/// Benchmarks one workload on one allocator, one child process of `exe` per sample.
fn bench_in_child(
    group: &mut BenchmarkGroup<'_, WallTime>,
    exe: &Path,
    name: &str,
    workload: &Workload,
) {
    let measure = |iters: u64| -> Duration {
        let child = |n: u64| {
            run_child(exe, name, workload, n)
                .unwrap_or_else(|e| panic!("{} on {name}: {e}", workload.name))
        };
        if workload.uses_global() {
            // `iters` runs of the program, each timed whole.
            (0..iters)
                .map(|_| Duration::from_secs_f64(child(PROGRAM_SCALE).ns_per_op / 1e9))
                .sum()
        } else {
            let m = child(iters);
            Duration::from_secs_f64(m.ns_per_op * workload.ops(iters) as f64 / 1e9)
        }
    };
    group.bench_function(name, |b| b.iter_custom(measure));
}

fn all(c: &mut Criterion) {
    let bins = Binaries::new(env!("CARGO_BIN_EXE_compare").into());
    for workload in WORKLOADS {
        let mut group = c.benchmark_group(workload.name);
        if workload.uses_global() {
            // A run takes a few hundred milliseconds: the same number of runs per sample,
            // and time enough for ten samples of one run.
            group
                .sampling_mode(SamplingMode::Flat)
                .measurement_time(Duration::from_secs(6));
        }
        group.throughput(Throughput::Elements(workload.ops_per_iter()));
        for name in ALLOCATORS {
            if workload.uses_global() || !available(name) {
                match bins.for_alloc(name) {
                    Ok(exe) => bench_in_child(&mut group, exe, name, workload),
                    Err(e) => eprintln!("{}/{name} skipped: {e}", workload.name),
                }
            } else {
                with_alloc(
                    name,
                    Bench {
                        group: &mut group,
                        workload,
                    },
                )
                .expect("an allocator of this build");
            }
        }
        group.finish();
    }
}

fn main() {
    let mut c = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
        .without_plots()
        .configure_from_args();
    all(&mut c);
    c.final_summary();
}
