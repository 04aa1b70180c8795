//! Criterion benchmarks: every workload of `benches/workloads` through the `GlobalAlloc`
//! methods of spanalloc, the system allocator, mimalloc and jemalloc, in one binary.
//!
//! `cargo bench` runs them all (a few minutes); `cargo bench -- pair-64B` runs one group.
//! Each group is a workload and each benchmark in it an allocator; throughput is in
//! operations (see `Workload::ops_per_iter`). The binary's own global allocator stays the
//! system one, so criterion's allocations do not mix with the measured ones.

mod workloads;

use criterion::{BenchmarkGroup, Criterion, Throughput, measurement::WallTime};
use std::alloc::GlobalAlloc;
use std::time::Duration;
use workloads::{ALLOCATORS, WORKLOADS, WithAlloc, Workload, with_alloc};

/// Benchmarks one workload on one allocator.
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

fn all(c: &mut Criterion) {
    for workload in WORKLOADS {
        let mut group = c.benchmark_group(workload.name);
        group.throughput(Throughput::Elements(workload.ops_per_iter()));
        for name in ALLOCATORS {
            with_alloc(
                name,
                Bench {
                    group: &mut group,
                    workload,
                },
            )
            .expect("known allocator");
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
