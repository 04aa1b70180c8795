//! Heap profiling: sampled allocation sites, written as pprof profiles. See `lib.rs` for an
//! overview and `docs/design.md` (section 10) for how it works.
//!
//! ```
//! spanalloc::profiling::start(spanalloc::profiling::DEFAULT_MEAN);
//! let kept: Vec<Vec<u8>> = (0..100).map(|_| vec![0; 10_000]).collect();
//! let profile = spanalloc::profiling::heap_profile();
//! let mut out = Vec::new();
//! profile.write_pprof(&mut out).unwrap();   // gzip-compressed profile.proto
//! spanalloc::profiling::stop();
//! # drop(kept);
//! ```
//!
//! Each thread counts the bytes it allocates down from a random, exponentially distributed
//! distance with mean `mean_bytes` (`sampler.rs`); the allocation that crosses it is
//! sampled: its stack is captured (`stack.rs`) and it is recorded, with the bytes it stands
//! for, in a table in metadata memory (`sample_table.rs`) until it is freed.
//! [`heap_profile`] estimates from the table the bytes and objects live per stack (the
//! heap profile) and allocated per stack since [`start`] (the allocation profile);
//! [`HeapProfile::write_pprof`] writes both as one pprof profile.
//!
//! From the environment, read before `main` (the crate overview lists every variable):
//! `SPANALLOC_PROFILE=mean_bytes` starts profiling; `SPANALLOC_PROFILE_DUMP=path` writes a
//! profile to `path` when the process exits, and to `path.1`, `path.2`, ... on each
//! `SIGUSR2` (`%p` in the path is the process id).
//!
//! On macOS (untested at run time) the profiles carry no mappings (the loaded objects'
//! address ranges and build ids come from `/proc/self/maps` and the ELF notes, on Linux):
//! their locations are bare addresses, symbolized in process with the `profiling` feature.

mod pprof;
mod symbolize;

use crate::stack::MAX_FRAMES;
use core::sync::atomic::{AtomicI32, AtomicU32, Ordering};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The default mean distance between samples: 512 KiB, as jemalloc's `lg_prof_sample`
/// (TCMalloc's is 2 MiB).
pub const DEFAULT_MEAN: usize = 512 << 10;

/// Whether profiles are written symbolized (function names, files, lines) and
/// gzip-compressed: the `profiling` cargo feature.
pub const SYMBOLIZED: bool = cfg!(feature = "profiling");

/// Starts sampling: from now on each thread samples about one allocation per `mean_bytes`
/// bytes it allocates (1: every allocation). The calling thread starts with its next
/// allocation, every other thread at its next sample point, or within 16 MiB of its
/// allocations if profiling was off. The allocation totals start again from zero; objects
/// sampled before and still live stay in the heap profile.
pub fn start(mean_bytes: usize) {
    start_seeded(mean_bytes, random_seed());
}

/// As [`start`], with the calling thread's random numbers from `seed` (other threads mix
/// it with their own), so that a single-threaded run samples the same allocations each
/// time.
pub fn start_seeded(mean_bytes: usize, seed: u64) {
    // The first walk outside any allocation, so that whatever the unwinder sets up the
    // first time happens here.
    crate::stack::capture(&mut [0; 4], 0, crate::global::unwind_rules(), None);
    let params = crate::global::samples().start(mean_bytes.max(1), seed, unix_ms());
    crate::global::restart_sampler(params, seed);
}

/// Stops sampling. Sampled objects still live stay in the heap profile until they are
/// freed.
pub fn stop() {
    let params = crate::global::samples().stop();
    crate::global::restart_sampler(params, 0);
}

/// The mean distance between samples now; 0 while profiling is off.
pub fn mean() -> usize {
    crate::global::samples().params().mean
}

/// The heap profile now: per stack, the estimated bytes and objects live, and allocated
/// since [`start`].
pub fn heap_profile() -> HeapProfile {
    crate::global::without_sampling(heap_profile_now)
}

fn heap_profile_now() -> HeapProfile {
    let snap = crate::global::samples().snapshot();
    let now = SystemTime::now();
    let started = UNIX_EPOCH + Duration::from_millis(snap.started_ms);
    HeapProfile {
        stacks: snap
            .stacks
            .iter()
            .map(|s| StackProfile {
                frames: s.frames().to_vec(),
                inuse_bytes: s.inuse_bytes,
                inuse_objects: s.inuse_objects,
                alloc_bytes: s.alloc_bytes,
                alloc_objects: s.alloc_objects,
            })
            .collect(),
        mean: snap.mean,
        live_samples: snap.live_samples,
        reentered: snap.reentered,
        dropped: snap.dropped,
        metadata_bytes: snap.metadata_bytes,
        time: now,
        duration: now.duration_since(started).unwrap_or_default(),
    }
}

/// Writes [`heap_profile`] to `path` (see [`HeapProfile::write_pprof_file`]).
pub fn write_profile(path: impl AsRef<Path>) -> io::Result<()> {
    heap_profile().write_pprof_file(path)
}

/// The profiler's estimate for one stack.
#[derive(Clone, Debug, PartialEq)]
pub struct StackProfile {
    /// Return addresses, innermost first (the first is in the allocator's entry point).
    pub frames: Vec<usize>,
    /// Bytes live now (as asked for), allocated from this stack.
    pub inuse_bytes: f64,
    /// Objects live now, allocated from this stack.
    pub inuse_objects: f64,
    /// Bytes allocated from this stack since profiling started, freed or not.
    pub alloc_bytes: f64,
    /// Objects allocated from this stack since profiling started, freed or not.
    pub alloc_objects: f64,
}

/// A heap profile: estimates from the sampled objects, per stack.
#[derive(Clone, Debug)]
pub struct HeapProfile {
    /// Every stack with an object live or allocated since the start.
    pub stacks: Vec<StackProfile>,
    /// The mean distance between samples when the profile was taken (0: off).
    pub mean: usize,
    /// Sampled objects live.
    pub live_samples: usize,
    /// Samples not taken because the sampling path was entered again on its own thread
    /// (something it called allocated). 0 unless the unwinder allocates.
    pub reentered: u64,
    /// Samples not recorded because metadata memory ran out.
    pub dropped: u64,
    /// Bytes of metadata memory the profiler's table has mapped.
    pub metadata_bytes: usize,
    /// When the profile was taken.
    pub time: SystemTime,
    /// How long profiling had run (since the last [`start`]).
    pub duration: Duration,
}

impl HeapProfile {
    /// Estimated bytes live, over every stack.
    pub fn inuse_bytes(&self) -> f64 {
        self.stacks.iter().map(|s| s.inuse_bytes).sum()
    }

    /// Estimated bytes allocated since the start, over every stack.
    pub fn alloc_bytes(&self) -> f64 {
        self.stacks.iter().map(|s| s.alloc_bytes).sum()
    }

    /// The profile as an uncompressed `profile.proto` message: sample types
    /// `alloc_objects`, `alloc_space`, `inuse_objects`, `inuse_space` (the default), one
    /// location per return address with its mapping from `/proc/self/maps` (and the
    /// binary's build id), and, with the `profiling` feature, functions and lines.
    pub fn to_pprof(&self) -> Vec<u8> {
        crate::global::without_sampling(|| pprof::encode(self))
    }

    /// Writes the profile to `out`, gzip-compressed, as `pprof` reads it (`go tool pprof
    /// file`). Without the `profiling` feature the gzip stream is stored, not compressed.
    pub fn write_pprof(&self, out: impl Write) -> io::Result<()> {
        let raw = self.to_pprof();
        crate::global::without_sampling(|| pprof::gzip(&raw, out))
    }

    /// Writes the profile to the file `path` (through a temporary file renamed into place,
    /// so that a reader never sees half a profile).
    pub fn write_pprof_file(&self, path: impl AsRef<Path>) -> io::Result<()> {
        let path = path.as_ref();
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        let mut file = io::BufWriter::new(std::fs::File::create(&tmp)?);
        self.write_pprof(&mut file)?;
        file.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        std::fs::rename(&tmp, path)
    }
}

// ---------------------------------------------------------------------------------------
// The environment: `SPANALLOC_PROFILE` and `SPANALLOC_PROFILE_DUMP`, applied by `startup.rs`.

/// The dump path (`SPANALLOC_PROFILE_DUMP`), kept from start-up.
static DUMP_PATH: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();

/// The write end of the pipe the `SIGUSR2` handler writes to (-1: none).
static SIGNAL_PIPE: AtomicI32 = AtomicI32::new(-1);

/// Dumps made on the signal so far.
static SIGNAL_DUMPS: AtomicU32 = AtomicU32::new(0);

/// Applies the environment's profiling variables (`startup.rs`, before `main`): starts
/// profiling with `mean` (the default when only `dump` is set) and, with a dump path,
/// writes a profile there at exit and on `SIGUSR2`.
pub(crate) fn configure(mean: usize, dump: Option<&[u8]>) {
    start(if mean == 0 { DEFAULT_MEAN } else { mean });
    if let Some(path) = dump {
        if DUMP_PATH.set(path.to_vec()).is_ok() {
            dump_on_signal();
        }
    }
}

/// `path` with `%p` replaced by the process id and `suffix` appended.
fn expand_path(path: &[u8], suffix: &str) -> PathBuf {
    use std::os::unix::ffi::OsStrExt;
    let pid = std::process::id().to_string();
    let mut out = Vec::with_capacity(path.len() + 16);
    let mut i = 0;
    while i < path.len() {
        if path[i] == b'%' && path.get(i + 1) == Some(&b'p') {
            out.extend_from_slice(pid.as_bytes());
            i += 2;
        } else {
            out.push(path[i]);
            i += 1;
        }
    }
    out.extend_from_slice(suffix.as_bytes());
    PathBuf::from(std::ffi::OsStr::from_bytes(&out))
}

/// Writes a profile to the configured dump path with `suffix`; one line on stderr if it
/// cannot.
fn dump(suffix: &str) {
    let Some(path) = DUMP_PATH.get() else {
        return;
    };
    if write_profile(expand_path(path, suffix)).is_err() {
        crate::check::write_stderr(b"spanalloc: could not write the heap profile\n");
    }
}

/// The exit dump (`startup.rs`'s destructor).
pub(crate) fn dump_at_exit() {
    dump("");
}

extern "C" fn on_dump_signal(_signal: libc::c_int) {
    // Only a write to the pipe: the thread below does the work, outside the handler.
    // Reading and writing errno is async-signal-safe (this thread's own slot).
    let errno = crate::sys::errno();
    let fd = SIGNAL_PIPE.load(Ordering::Relaxed);
    if fd >= 0 {
        let byte = 1u8;
        // SAFETY: `write` is async-signal-safe and the byte is on this stack.
        unsafe { libc::write(fd, (&raw const byte).cast(), 1) };
    }
    crate::sys::set_errno(errno);
}

/// Starts the thread that writes a profile on each `SIGUSR2`, and installs the handler that
/// wakes it, unless the program handles the signal already.
fn dump_on_signal() {
    // SAFETY: a null new action only reads the current one into `old`.
    let mut old: libc::sigaction = unsafe { core::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::sigaction(libc::SIGUSR2, core::ptr::null(), &mut old) } != 0
        || old.sa_sigaction != libc::SIG_DFL
    {
        return;
    }
    let Some([read_end, write_end]) = crate::sys::pipe_cloexec() else {
        return;
    };
    // The handler must never block: a full pipe drops the extra wake-up.
    // SAFETY: `fcntl` on our own descriptor.
    unsafe { libc::fcntl(write_end, libc::F_SETFL, libc::O_NONBLOCK) };
    let spawned = std::thread::Builder::new()
        .name("spanalloc-prof".into())
        .spawn(move || {
            let mut byte = 0u8;
            loop {
                // SAFETY: a one-byte read into `byte` from our pipe.
                let n = unsafe { libc::read(read_end, (&raw mut byte).cast(), 1) };
                if n == 1 {
                    let k = SIGNAL_DUMPS.fetch_add(1, Ordering::Relaxed) + 1;
                    dump(&format!(".{k}"));
                } else if n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                    continue;
                } else {
                    return;
                }
            }
        });
    if spawned.is_err() {
        return;
    }
    SIGNAL_PIPE.store(write_end, Ordering::Relaxed);
    // SAFETY: an all-zero sigaction is valid to fill in; the handler is an `extern "C" fn`
    // that only writes to the pipe.
    unsafe {
        let mut action: libc::sigaction = core::mem::zeroed();
        action.sa_sigaction = on_dump_signal as *const () as usize;
        action.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut action.sa_mask);
        libc::sigaction(libc::SIGUSR2, &action, core::ptr::null_mut());
    }
}

/// How many profiles `SIGUSR2` has made so far.
pub fn signal_dumps() -> u32 {
    SIGNAL_DUMPS.load(Ordering::Relaxed)
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn random_seed() -> u64 {
    let mut seed = [0u64];
    let seed = if crate::sys::random_words(&mut seed) {
        seed[0]
    } else {
        unix_ms() ^ (std::process::id() as u64) << 32
    };
    seed | 1
}

const _: () = assert!(MAX_FRAMES >= 16);
