//! `libspanalloc.so`: spanalloc behind the C `malloc` ABI, for `LD_PRELOAD`.
//!
//! ```text
//! cargo build --release -p spanalloc-preload
//! LD_PRELOAD=$PWD/target/release/libspanalloc.so program args...
//! ```
//!
//! - [`c_api`]: `malloc`, `free`, `calloc`, `realloc`, `reallocarray`, `posix_memalign`,
//!   `aligned_alloc`, `memalign`, `valloc`, `pvalloc`, `malloc_usable_size`, `free_sized`,
//!   `free_aligned_sized` and glibc's `__libc_*` aliases, with glibc's semantics.
//! - [`stats`]: `SPANALLOC_SHOW_STATS=1` prints a summary to stderr at exit.
//!
//! The thread-local slot this library relies on is spanalloc's `c-abi` feature (one
//! pointer in initial-exec TLS); `docs/preload.md` explains why.

pub mod c_api;
pub mod stats;

pub use c_api::*;
