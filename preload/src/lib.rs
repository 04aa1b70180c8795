//! `libspanalloc.so`: spanalloc behind the C `malloc` ABI, for `LD_PRELOAD`.
//!
//! ```text
//! cargo build --release -p spanalloc-preload
//! LD_PRELOAD=$PWD/target/release/libspanalloc.so program args...
//! ```
//!
//! - [`c_api`] (the library's `spanalloc::internals::c_abi`, exported here by its
//!   `export_c_abi!`): `malloc`, `free`, `calloc`, `realloc`, `reallocarray`, `posix_memalign`,
//!   `aligned_alloc`, `memalign`, `valloc`, `pvalloc`, `malloc_usable_size`, `free_sized`,
//!   `free_aligned_sized` and glibc's `__libc_*` aliases, with glibc's semantics.
//! - [`cxx`]: the C++ `operator new` / `new[]` / `delete` / `delete[]` in every form
//!   (sized, `std::align_val_t`, `std::nothrow`), with the new-handler loop and
//!   `std::bad_alloc`, though the library links no C++ runtime (x86_64 Linux).
//! - [`glibc_ext`]: glibc's `malloc_trim`, `mallinfo`, `mallinfo2`, `malloc_stats`,
//!   `malloc_info` and `mallopt`, filled from spanalloc's statistics.
//!
//! `SPANALLOC_SHOW_STATS=1` and the other `SPANALLOC_*` variables are the core's
//! (`spanalloc::internals::config`), read by its constructor when the library is loaded.
//!
//! The thread-local slot this library relies on is spanalloc's `small-tls` feature (one
//! pointer in initial-exec TLS); `docs/preload.md` explains why.

pub use spanalloc::internals::c_abi as c_api;
pub mod cxx;
/// The C functions of [`c_api`], exported under their C names.
pub mod exports {
    spanalloc::export_c_abi!();
}
pub mod glibc_ext;

pub use exports::*;
