//! The allocators compared, by name, and [`Dispatch`], a global allocator that forwards to
//! one of them chosen when the process starts.
//!
//! mimalloc comes in two lines, v2 and v3, and one build links only one of them: the
//! `mimalloc` crate builds one set of C sources, v3 unless its `v2` feature is on, and two
//! copies would clash (the same `links` key, the same C symbols). A build of this crate
//! serves the one it links ([`mimalloc_major`] asks the library itself); the other one is
//! served by a second build of the `compare` binary with the other feature set, in a
//! target directory of its own, which [`crate::child::Binaries`] makes and runs on demand.

use std::alloc::{GlobalAlloc, Layout, System};
use std::ffi::CStr;
use std::sync::atomic::{AtomicU8, Ordering};

/// The allocators compared, in table order.
pub const ALLOCATORS: [&str; 5] = [
    "spanalloc",
    "system",
    "mimalloc-v2",
    "mimalloc-v3",
    "jemalloc",
];

/// Index of the system allocator in [`ALLOCATORS`] (the baseline of the ratios).
pub const SYSTEM: usize = 1;
/// Index of mimalloc v2 in [`ALLOCATORS`].
pub const MIMALLOC_V2: usize = 2;
/// Index of mimalloc v3 in [`ALLOCATORS`].
pub const MIMALLOC_V3: usize = 3;
/// Index of jemalloc in [`ALLOCATORS`].
pub const JEMALLOC: usize = 4;

unsafe extern "C" {
    /// mimalloc's version, major × 10000 + minor × 100 + patch (both lines have it).
    safe fn mi_version() -> std::ffi::c_int;
}

/// The version of the mimalloc this build links, as `(major, minor, patch)`.
pub fn mimalloc_version() -> (u32, u32, u32) {
    let v = mi_version().max(0) as u32;
    (v / 10_000, v / 100 % 100, v % 100)
}

/// The major version of the mimalloc this build links (2 or 3).
pub fn mimalloc_major() -> u32 {
    mimalloc_version().0
}

/// The index in [`ALLOCATORS`] of the mimalloc this build links.
pub fn mimalloc_here() -> usize {
    if mimalloc_major() == 2 {
        MIMALLOC_V2
    } else {
        MIMALLOC_V3
    }
}

/// Whether this build can run allocator `name` (one of [`ALLOCATORS`]): every one but the
/// mimalloc line it does not link, and jemalloc when built without it.
pub fn available(name: &str) -> bool {
    match ALLOCATORS.iter().position(|&a| a == name) {
        Some(MIMALLOC_V2 | MIMALLOC_V3) => ALLOCATORS[mimalloc_here()] == name,
        Some(JEMALLOC) => cfg!(feature = "jemalloc"),
        Some(_) => true,
        None => false,
    }
}

/// Something to do with one allocator, whatever its type.
pub trait WithAlloc {
    /// What it returns.
    type Out;
    /// Does it with allocator `a`, called `name`.
    fn call<A: GlobalAlloc + Sync>(self, name: &'static str, a: &A) -> Self::Out;
}

/// Calls `f` with the allocator called `name`; `None` if this build cannot run it (see
/// [`available`]).
pub fn with_alloc<F: WithAlloc>(name: &str, f: F) -> Option<F::Out> {
    if !available(name) {
        return None;
    }
    Some(match name {
        "spanalloc" => f.call("spanalloc", &spanalloc::SpanAlloc),
        "system" => f.call("system", &System),
        "mimalloc-v2" => f.call("mimalloc-v2", &mimalloc::MiMalloc),
        "mimalloc-v3" => f.call("mimalloc-v3", &mimalloc::MiMalloc),
        #[cfg(feature = "jemalloc")]
        "jemalloc" => f.call("jemalloc", &tikv_jemallocator::Jemalloc),
        _ => return None,
    })
}

// ---------------------------------------------------------------------------------------
// The global allocator of the binaries.

/// The environment variable that names the global allocator of a process whose global
/// allocator is [`Dispatch`] (one of [`ALLOCATORS`]; the system allocator when unset).
pub const GLOBAL_ENV: &str = "SPANALLOC_COMPARE_GLOBAL";
/// [`GLOBAL_ENV`] as a C string, for `getenv` (which allocates nothing).
const GLOBAL_ENV_C: &CStr = c"SPANALLOC_COMPARE_GLOBAL";

/// Which allocator [`Dispatch`] forwards to.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
enum Choice {
    Span = 0,
    System = 1,
    Mi = 2,
    #[cfg(feature = "jemalloc")]
    Je = 3,
}

/// Not chosen yet: [`Dispatch`] reads [`GLOBAL_ENV`] at the process's first allocation.
const UNCHOSEN: u8 = u8::MAX;
static CHOICE: AtomicU8 = AtomicU8::new(UNCHOSEN);

/// The global allocator of the `compare` binary: the system allocator, unless [`GLOBAL_ENV`]
/// names another one of [`ALLOCATORS`] that this build can run ([`available`]), in which
/// case every allocation of the process goes to that one.
///
/// The choice is made once, at the process's first allocation (before `main`), from the
/// environment, so that no object ever moves between allocators. It costs a load and a
/// well-predicted branch per call, the same for every allocator. The micro-workloads do not
/// go through it (they call the measured allocator's methods directly and leave the global
/// one to the system allocator); [`crate::program`] does, in a child process started with
/// [`GLOBAL_ENV`] set.
pub struct Dispatch;

impl Dispatch {
    /// The name of the allocator this process's [`Dispatch`] forwards to.
    pub fn current() -> &'static str {
        match choice() {
            Choice::Span => "spanalloc",
            Choice::System => "system",
            Choice::Mi => ALLOCATORS[mimalloc_here()],
            #[cfg(feature = "jemalloc")]
            Choice::Je => "jemalloc",
        }
    }
}

#[inline(always)]
fn choice() -> Choice {
    match CHOICE.load(Ordering::Relaxed) {
        0 => Choice::Span,
        1 => Choice::System,
        2 => Choice::Mi,
        #[cfg(feature = "jemalloc")]
        3 => Choice::Je,
        _ => choose(),
    }
}

/// Reads [`GLOBAL_ENV`] and records the choice. Allocates nothing. Several threads may race
/// here only if they allocate before `main`; they all read the same environment.
#[cold]
#[inline(never)]
fn choose() -> Choice {
    // SAFETY: a NUL-terminated name; nothing in these binaries calls `setenv`.
    let v = unsafe { libc::getenv(GLOBAL_ENV_C.as_ptr()) };
    let name = if v.is_null() {
        &b"system"[..]
    } else {
        // SAFETY: `getenv` returned a NUL-terminated string that lives as long as the
        // environment, which is never modified.
        unsafe { CStr::from_ptr(v) }.to_bytes()
    };
    let c = match name {
        b"spanalloc" => Choice::Span,
        b"mimalloc-v2" if mimalloc_here() == MIMALLOC_V2 => Choice::Mi,
        b"mimalloc-v3" if mimalloc_here() == MIMALLOC_V3 => Choice::Mi,
        #[cfg(feature = "jemalloc")]
        b"jemalloc" => Choice::Je,
        // Unknown or not in this build: the system allocator, and the child that asked
        // for another one says so (it compares `Dispatch::current()` with its request).
        _ => Choice::System,
    };
    CHOICE.store(c as u8, Ordering::Relaxed);
    c
}

/// Forwards one `GlobalAlloc` call to the chosen allocator.
macro_rules! forward {
    ($method:ident($($arg:expr),*)) => {
        match choice() {
            Choice::Span => spanalloc::SpanAlloc.$method($($arg),*),
            Choice::System => System.$method($($arg),*),
            Choice::Mi => mimalloc::MiMalloc.$method($($arg),*),
            #[cfg(feature = "jemalloc")]
            Choice::Je => tikv_jemallocator::Jemalloc.$method($($arg),*),
        }
    };
}

// SAFETY: every call goes to the same allocator for the life of the process (the choice is
// made before the first allocation and never changes), so each pointer is freed or resized
// by the allocator that returned it, and each of them upholds the `GlobalAlloc` contract.
unsafe impl GlobalAlloc for Dispatch {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract, passed on.
        unsafe { forward!(alloc(layout)) }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract, passed on.
        unsafe { forward!(alloc_zeroed(layout)) }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract, passed on; `ptr` came from the same allocator.
        unsafe { forward!(dealloc(ptr, layout)) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller's contract, passed on; `ptr` came from the same allocator.
        unsafe { forward!(realloc(ptr, layout, new_size)) }
    }
}
