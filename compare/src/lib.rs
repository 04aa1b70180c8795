//! spanalloc side by side with the system allocator (glibc's malloc), mimalloc (its v2 and
//! v3 lines) and jemalloc: the workloads, the realistic program, the child-process harness
//! and the allocator registry behind the `compare` binary, the criterion suite
//! (`benches/alloc.rs`) and the measurement examples (`fastpath`, `rss_cycle`).
//!
//! This crate is a workspace member of its own, outside the workspace's default members, so
//! that `cargo test` at the root never builds a C allocator. Run it with
//! `cargo run --release -p spanalloc-compare` (see `docs/benchmarks.md`).

pub mod allocators;
pub mod child;
pub mod program;
pub mod report;
pub mod workloads;
