//! Heap profiling in a small program: `leak_buffers` keeps what it allocates, `churn` frees
//! it at once; the profile written at the end shows `leak_buffers` holding about 24 MiB.
//!
//! ```text
//! cargo run --release --example profile --features profiling -- heap.pb.gz
//! go tool pprof -top heap.pb.gz
//! ```

#[global_allocator]
static GLOBAL: spanalloc::SpanAlloc = spanalloc::SpanAlloc;

use std::hint::black_box;

/// Keeps 3 000 buffers of 8 KiB: 24 MiB that the program never frees.
#[inline(never)]
fn leak_buffers(kept: &mut Vec<Vec<u8>>) {
    for i in 0..3000 {
        kept.push(vec![i as u8; 8192]);
    }
}

/// Allocates and frees 2 million strings of 90 bytes, about 470 MiB in all as each grows
/// while it is formatted: in the allocation profile only.
#[inline(never)]
fn churn() {
    for i in 0..2_000_000u32 {
        black_box(format!("{i:>90}"));
    }
}

fn main() {
    let path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "heap.pb.gz".into());
    spanalloc::profiling::start(spanalloc::profiling::DEFAULT_MEAN);
    let mut kept = Vec::new();
    leak_buffers(&mut kept);
    churn();
    let profile = spanalloc::profiling::heap_profile();
    profile.write_pprof_file(&path).expect("write the profile");
    println!(
        "{path}: {} live samples, about {:.1} MiB live, {:.1} MiB allocated since the start",
        profile.live_samples,
        profile.inuse_bytes() / (1 << 20) as f64,
        profile.alloc_bytes() / (1 << 20) as f64,
    );
    black_box(kept);
}
