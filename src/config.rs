//! Start-up settings from the environment, parsed without allocating. See `lib.rs` for an
//! overview.
//!
//! | variable | value | default | meaning |
//! |---|---|---|---|
//! | `SPANALLOC_DECAY_MS` | integer milliseconds | 500 | how long free pages stay resident before they are given back to the OS; 0 at once, negative never |
//! | `SPANALLOC_SHOW_STATS` | `0` or `1` | 0 | print statistics to stderr at exit |
//! | `SPANALLOC_BACKGROUND_RELEASE` | `0` or `1` | 0 | start the thread that gives memory back on time |
//! | `SPANALLOC_THREAD_CACHE_BYTES` | bytes, optional `K`, `M` or `G` suffix | 4M | the most bytes of free small objects a thread cache keeps in all (up to 1 MiB in its bins, the rest in its reserve) |
//! | `SPANALLOC_BIN_BYTES` | bytes, optional `K`, `M` or `G` suffix (powers of 1024) | 256K | the most bytes of free objects of one size class a thread cache keeps (at least two batches) |
//! | `SPANALLOC_PROFILE` | bytes, as `SPANALLOC_BIN_BYTES` | 0 (off) | start heap profiling before `main`, with this mean distance between samples ([`crate::profiling`]) |
//! | `SPANALLOC_PROFILE_DUMP` | a path, at most 511 bytes; `%p` is the process id | none | write a heap profile there at exit, and to `path.N` on the N-th `SIGUSR2`; profiles at 512K unless `SPANALLOC_PROFILE` says otherwise |
//!
//! Each parser takes a variable's raw bytes, as `getenv` gives them, and returns the value or
//! `Err(())`. [`Config::from_env`] reads every variable through a `getenv` it is given (so
//! tests pass a fake environment), writes one fixed line on stderr for each value it cannot
//! parse ([`warn_invalid`]) and keeps the default for that one. Nothing here allocates,
//! formats or panics: `startup.rs` reads the configuration once, before `main`.

// A parser has one error, "not a value of this variable", and its caller's one answer is to
// keep the default: `()` says all of it.
#![allow(clippy::result_unit_err)]

use core::ffi::CStr;

use crate::check::write_stderr;

/// `SPANALLOC_DECAY_MS`: the decay time in milliseconds ([`parse_decay_ms`]).
pub const DECAY_MS: &CStr = c"SPANALLOC_DECAY_MS";
/// `SPANALLOC_SHOW_STATS`: `1` prints statistics at exit ([`parse_switch`]).
pub const SHOW_STATS: &CStr = c"SPANALLOC_SHOW_STATS";
/// `SPANALLOC_BACKGROUND_RELEASE`: `1` starts the background release thread
/// ([`parse_switch`]).
pub const BACKGROUND_RELEASE: &CStr = c"SPANALLOC_BACKGROUND_RELEASE";
/// `SPANALLOC_THREAD_CACHE_BYTES`: the bound on a thread cache's free small objects in all
/// ([`parse_bytes`]).
pub const THREAD_CACHE_BYTES: &CStr = c"SPANALLOC_THREAD_CACHE_BYTES";
/// `SPANALLOC_BIN_BYTES`: the bound on a thread cache's free objects of one class
/// ([`parse_bytes`]).
pub const BIN_BYTES: &CStr = c"SPANALLOC_BIN_BYTES";
/// `SPANALLOC_PROFILE`: the heap profiler's mean distance between samples, 0 for off
/// ([`parse_bytes`]).
pub const PROFILE: &CStr = c"SPANALLOC_PROFILE";
/// `SPANALLOC_PROFILE_DUMP`: where heap profiles are written ([`parse_path`]).
pub const PROFILE_DUMP: &CStr = c"SPANALLOC_PROFILE_DUMP";

/// A file path kept from the environment (which may change after start-up).
#[derive(Copy, Clone, PartialEq, Eq)]
pub struct Path {
    bytes: [u8; Path::MAX],
    len: u16,
}

impl Path {
    /// The longest path kept, in bytes.
    pub const MAX: usize = 511;

    /// The path's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len as usize]
    }
}

impl core::fmt::Debug for Path {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{:?}", self.as_bytes().escape_ascii().to_string())
    }
}

/// The settings the environment can change, each with its default.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Milliseconds free pages stay resident before the allocator gives them back on its
    /// own; 0 gives them back at once, a negative value never (only
    /// `release_free_memory`).
    pub decay_ms: i64,
    /// Print statistics to stderr when the process exits.
    pub show_stats: bool,
    /// Start the thread that gives free memory back on time, even while the program makes
    /// no allocator call.
    pub background_release: bool,
    /// The most bytes of free small objects a thread cache keeps in all.
    pub thread_cache_bytes: usize,
    /// The most bytes of free objects of one size class a thread cache keeps; past it, a
    /// free hands a batch back to the central list.
    pub bin_bytes: usize,
    /// The heap profiler's mean distance between samples; 0: not started from the
    /// environment.
    pub profile_mean: usize,
    /// Where heap profiles are written (at exit and on `SIGUSR2`).
    pub profile_dump: Option<Path>,
}

impl Config {
    /// The defaults: what the allocator does with no variable set.
    pub const DEFAULT: Config = Config {
        decay_ms: crate::heap::DEFAULT_DECAY_MS,
        show_stats: false,
        background_release: false,
        thread_cache_bytes: crate::heap::DEFAULT_THREAD_CACHE_BYTES,
        bin_bytes: crate::heap::DEFAULT_BIN_BYTES,
        profile_mean: 0,
        profile_dump: None,
    };

    /// Reads every variable through `getenv` (a variable's name to its value's bytes, or
    /// `None` when it is not set), keeping the default for each one that is not set, and
    /// for each one that does not parse, after one line on stderr ([`warn_invalid`]).
    ///
    /// The process's own environment is `Config::from_env(|name| unsafe { getenv(name) })`
    /// (see [`getenv`] for when that is sound).
    pub fn from_env<'e>(getenv: impl Fn(&CStr) -> Option<&'e [u8]>) -> Config {
        Config::from_env_warning(getenv, warn_invalid)
    }

    /// [`Config::from_env`], reporting each value that does not parse to `warn`.
    fn from_env_warning<'e>(
        getenv: impl Fn(&CStr) -> Option<&'e [u8]>,
        mut warn: impl FnMut(&'static str),
    ) -> Config {
        let d = Config::DEFAULT;
        Config {
            decay_ms: read(&getenv, &mut warn, DECAY_MS, parse_decay_ms, d.decay_ms),
            show_stats: read(&getenv, &mut warn, SHOW_STATS, parse_switch, d.show_stats),
            background_release: read(
                &getenv,
                &mut warn,
                BACKGROUND_RELEASE,
                parse_switch,
                d.background_release,
            ),
            thread_cache_bytes: read(
                &getenv,
                &mut warn,
                THREAD_CACHE_BYTES,
                parse_bytes,
                d.thread_cache_bytes,
            ),
            bin_bytes: read(&getenv, &mut warn, BIN_BYTES, parse_bytes, d.bin_bytes),
            profile_mean: read(&getenv, &mut warn, PROFILE, parse_bytes, d.profile_mean),
            profile_dump: read(
                &getenv,
                &mut warn,
                PROFILE_DUMP,
                |v| parse_path(v).map(Some),
                None,
            ),
        }
    }
}

impl Default for Config {
    fn default() -> Config {
        Config::DEFAULT
    }
}

/// One variable: its parsed value; `default` when it is not set, or, after `warn`, when it
/// does not parse.
fn read<'e, T>(
    getenv: &impl Fn(&CStr) -> Option<&'e [u8]>,
    warn: &mut impl FnMut(&'static str),
    name: &'static CStr,
    parse: fn(&[u8]) -> Result<T, ()>,
    default: T,
) -> T {
    let Some(value) = getenv(name) else {
        return default;
    };
    parse(value).unwrap_or_else(|()| {
        // Every name above is ASCII.
        warn(name.to_str().unwrap_or("SPANALLOC variable"));
        default
    })
}

/// The process environment's value of `name`, without allocating: `libc::getenv`'s bytes,
/// up to the NUL.
///
/// # Safety
/// No thread may change the environment (`setenv`, `putenv`, `unsetenv`) while the bytes
/// are in use: they are the C library's own storage. Read them once, at start-up.
pub unsafe fn getenv(name: &CStr) -> Option<&'static [u8]> {
    // SAFETY: `name` is NUL-terminated; `getenv` neither allocates nor keeps the pointer.
    let value = unsafe { libc::getenv(name.as_ptr()) };
    if value.is_null() {
        return None;
    }
    // SAFETY: non-null, so a NUL-terminated string, which stays as it is while nobody
    // changes the environment (the caller's promise).
    Some(unsafe { CStr::from_ptr(value) }.to_bytes())
}

/// A decimal `i64`, with an optional leading `-`: `500`, `0`, `-1`. Nothing else (no `+`,
/// no spaces, no suffix); a value out of `i64`'s range is an error.
pub fn parse_decay_ms(value: &[u8]) -> Result<i64, ()> {
    let (negative, digits) = match value {
        [b'-', rest @ ..] => (true, rest),
        _ => (false, value),
    };
    if digits.is_empty() {
        return Err(());
    }
    let mut n: i64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return Err(());
        }
        let d = (d - b'0') as i64;
        // Negative values accumulate downwards, so that `i64::MIN` parses too.
        n = n.checked_mul(10).ok_or(())?;
        n = if negative {
            n.checked_sub(d)
        } else {
            n.checked_add(d)
        }
        .ok_or(())?;
    }
    Ok(n)
}

/// A switch: `0` is off, `1` is on; anything else is an error.
pub fn parse_switch(value: &[u8]) -> Result<bool, ()> {
    match value {
        b"0" => Ok(false),
        b"1" => Ok(true),
        _ => Err(()),
    }
}

/// A byte count: decimal digits with an optional `K`, `M` or `G` (or lower case) for 2^10,
/// 2^20 or 2^30: `65536`, `64K`, `16M`, `1G`. A count that overflows `usize` is an error.
pub fn parse_bytes(value: &[u8]) -> Result<usize, ()> {
    let (digits, shift) = match value {
        [rest @ .., b'k' | b'K'] => (rest, 10),
        [rest @ .., b'm' | b'M'] => (rest, 20),
        [rest @ .., b'g' | b'G'] => (rest, 30),
        _ => (value, 0),
    };
    if digits.is_empty() {
        return Err(());
    }
    let mut n: usize = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return Err(());
        }
        n = n
            .checked_mul(10)
            .and_then(|n| n.checked_add((d - b'0') as usize))
            .ok_or(())?;
    }
    n.checked_mul(1 << shift).ok_or(())
}

/// A path: any non-empty bytes up to [`Path::MAX`] long.
pub fn parse_path(value: &[u8]) -> Result<Path, ()> {
    if value.is_empty() || value.len() > Path::MAX {
        return Err(());
    }
    let mut bytes = [0u8; Path::MAX];
    bytes[..value.len()].copy_from_slice(value);
    Ok(Path {
        bytes,
        len: value.len() as u16,
    })
}

/// The longest line [`warn_invalid`] writes; a longer name is cut.
const LINE_MAX: usize = 128;
const HEAD: &[u8] = b"spanalloc: invalid ";
const TAIL: &[u8] = b", keeping the default\n";

/// Writes `spanalloc: invalid <name>, keeping the default` to stderr, with one `write(2)`:
/// the pieces are put together in a stack buffer, so nothing allocates or formats.
#[cold]
pub fn warn_invalid(name: &'static str) {
    let mut line = [0u8; LINE_MAX];
    let len = invalid_line(name, &mut line);
    write_stderr(&line[..len]);
}

/// Puts the [`warn_invalid`] line for `name` in `line`; returns its length.
fn invalid_line(name: &str, line: &mut [u8; LINE_MAX]) -> usize {
    let name = &name.as_bytes()[..name.len().min(LINE_MAX - HEAD.len() - TAIL.len())];
    let mut len = 0;
    for piece in [HEAD, name, TAIL] {
        line[len..len + piece.len()].copy_from_slice(piece);
        len += piece.len();
    }
    len
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decay_ms_good_values() {
        assert_eq!(parse_decay_ms(b"0"), Ok(0));
        assert_eq!(parse_decay_ms(b"500"), Ok(500));
        assert_eq!(parse_decay_ms(b"007"), Ok(7));
        assert_eq!(parse_decay_ms(b"-1"), Ok(-1));
        assert_eq!(parse_decay_ms(b"-0"), Ok(0));
        assert_eq!(parse_decay_ms(b"9223372036854775807"), Ok(i64::MAX));
        assert_eq!(parse_decay_ms(b"-9223372036854775808"), Ok(i64::MIN));
    }

    #[test]
    fn decay_ms_bad_values() {
        for bad in [
            &b""[..],
            b"-",
            b"abc",
            b"12x",
            b"x12",
            b"+5",
            b" 5",
            b"5 ",
            b"1.5",
            b"--1",
            b"5-",
            b"9223372036854775808",
            b"-9223372036854775809",
            b"99999999999999999999999",
        ] {
            assert_eq!(parse_decay_ms(bad), Err(()), "{:?}", bad.escape_ascii());
        }
    }

    #[test]
    fn switches() {
        assert_eq!(parse_switch(b"0"), Ok(false));
        assert_eq!(parse_switch(b"1"), Ok(true));
        for bad in [&b""[..], b"2", b"01", b"yes", b"true", b"1 ", b"abc"] {
            assert_eq!(parse_switch(bad), Err(()), "{:?}", bad.escape_ascii());
        }
    }

    #[test]
    fn byte_counts_good_values() {
        assert_eq!(parse_bytes(b"0"), Ok(0));
        assert_eq!(parse_bytes(b"65536"), Ok(65536));
        assert_eq!(parse_bytes(b"64K"), Ok(64 << 10));
        assert_eq!(parse_bytes(b"64k"), Ok(64 << 10));
        assert_eq!(parse_bytes(b"16M"), Ok(16 << 20));
        assert_eq!(parse_bytes(b"16m"), Ok(16 << 20));
        assert_eq!(parse_bytes(b"2G"), Ok(2 << 30));
        assert_eq!(parse_bytes(b"0G"), Ok(0));
        assert_eq!(
            parse_bytes(usize::MAX.to_string().as_bytes()),
            Ok(usize::MAX)
        );
    }

    #[test]
    fn byte_counts_bad_values() {
        let too_big = format!("{}0", usize::MAX);
        let too_big_g = format!("{}G", usize::MAX >> 29);
        for bad in [
            &b""[..],
            b"K",
            b"abc",
            b"12x",
            b"12KB",
            b"12KK",
            b"1.5M",
            b"-1",
            b"+1",
            b" 1",
            b"1 ",
            b"1T",
            too_big.as_bytes(),
            too_big_g.as_bytes(),
        ] {
            assert_eq!(parse_bytes(bad), Err(()), "{:?}", bad.escape_ascii());
        }
    }

    /// A fake environment and the names `from_env` warned about.
    fn run(env: &[(&CStr, &'static [u8])]) -> (Config, Vec<&'static str>) {
        let mut warned = Vec::new();
        let config = Config::from_env_warning(
            |name| env.iter().find(|(n, _)| *n == name).map(|(_, v)| *v),
            |name| warned.push(name),
        );
        (config, warned)
    }

    #[test]
    fn empty_environment_gives_the_defaults() {
        assert_eq!(run(&[]), (Config::DEFAULT, vec![]));
        assert_eq!(Config::default(), Config::DEFAULT);
        assert_eq!(Config::DEFAULT.decay_ms, 500);
        assert_eq!(Config::DEFAULT.bin_bytes, 256 << 10);
        assert_eq!(Config::DEFAULT.thread_cache_bytes, 4 << 20);
    }

    #[test]
    fn every_variable_is_read() {
        let (config, warned) = run(&[
            (DECAY_MS, b"-1"),
            (SHOW_STATS, b"1"),
            (BACKGROUND_RELEASE, b"1"),
            (BIN_BYTES, b"4M"),
            (THREAD_CACHE_BYTES, b"1g"),
            (PROFILE, b"64K"),
            (PROFILE_DUMP, b"/tmp/heap.%p.pb.gz"),
        ]);
        assert_eq!(
            config,
            Config {
                decay_ms: -1,
                show_stats: true,
                background_release: true,
                thread_cache_bytes: 1 << 30,
                bin_bytes: 4 << 20,
                profile_mean: 64 << 10,
                profile_dump: Some(parse_path(b"/tmp/heap.%p.pb.gz").unwrap()),
            }
        );
        assert_eq!(
            config.profile_dump.unwrap().as_bytes(),
            b"/tmp/heap.%p.pb.gz"
        );
        assert!(warned.is_empty());
    }

    #[test]
    fn bad_values_warn_and_keep_the_default() {
        let (config, warned) = run(&[
            (DECAY_MS, b"abc"),
            (SHOW_STATS, b""),
            (BACKGROUND_RELEASE, b"1"),
            (BIN_BYTES, b"12x"),
            (PROFILE, b"on"),
            (PROFILE_DUMP, b""),
        ]);
        assert_eq!(
            config,
            Config {
                background_release: true,
                ..Config::DEFAULT
            }
        );
        assert_eq!(
            warned,
            [
                "SPANALLOC_DECAY_MS",
                "SPANALLOC_SHOW_STATS",
                "SPANALLOC_BIN_BYTES",
                "SPANALLOC_PROFILE",
                "SPANALLOC_PROFILE_DUMP"
            ]
        );
    }

    #[test]
    fn paths() {
        assert_eq!(parse_path(b"/a/b").unwrap().as_bytes(), b"/a/b");
        let longest = vec![b'x'; Path::MAX];
        assert_eq!(parse_path(&longest).unwrap().as_bytes(), &longest[..]);
        assert_eq!(parse_path(b""), Err(()));
        assert_eq!(parse_path(&vec![b'x'; Path::MAX + 1]), Err(()));
    }

    #[test]
    fn the_warning_line() {
        let mut line = [0u8; LINE_MAX];
        let len = invalid_line("SPANALLOC_DECAY_MS", &mut line);
        assert_eq!(
            &line[..len],
            b"spanalloc: invalid SPANALLOC_DECAY_MS, keeping the default\n"
        );
        let long = "N".repeat(500);
        let len = invalid_line(&long, &mut line);
        assert_eq!(len, LINE_MAX, "a long name is cut to fit");
        assert!(line.ends_with(TAIL));
    }
}
