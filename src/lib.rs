//! spanalloc: a memory allocator in pure Rust, built the TCMalloc way.
//!
//! (The full overview is written below the module list once the core settles.)
#![warn(missing_docs)]

pub mod check;
pub mod pages;
pub mod size_class;
pub mod sync;
pub mod sys;
pub mod fixed_alloc;
pub mod span;
pub mod page_map;
pub mod page_heap;
pub mod central_free_list;
pub mod heap;
pub mod thread_cache;
#[cfg(not(loom))]
mod global;

#[cfg(not(loom))]
pub use global::{SpanAlloc, flush_thread_cache, heap, raw, release_free_memory};
