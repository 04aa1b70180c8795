//! Helpers shared by the robustness tests: running one case in a child process (the test
//! binary re-executed with an environment variable naming the case), with a hang timeout,
//! and the environment switches of `.ci/robustness.sh`.
#![allow(dead_code)]

use std::io::Read;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// The environment variable that tells a re-executed test binary which case to run.
pub const CHILD_CASE: &str = "SPANALLOC_TEST_CHILD_CASE";

/// Set by `.ci/robustness.sh` when the tests run under AddressSanitizer, which reserves
/// terabytes of shadow address space and so cannot run under `RLIMIT_AS`.
pub const UNDER_ASAN: &str = "SPANALLOC_UNDER_ASAN";

/// Whether the tests run under AddressSanitizer (see [`UNDER_ASAN`]).
pub fn under_asan() -> bool {
    std::env::var_os(UNDER_ASAN).is_some()
}

/// The case this process was started to run, if it is a child.
pub fn child_case() -> Option<String> {
    std::env::var(CHILD_CASE).ok()
}

/// What a child process did.
#[derive(Debug)]
pub struct ChildResult {
    /// Its exit status (`None` if it hung and was killed).
    pub status: Option<ExitStatus>,
    /// Everything it wrote to stdout.
    pub stdout: String,
    /// Everything it wrote to stderr.
    pub stderr: String,
}

impl ChildResult {
    /// The signal that ended it, if any.
    pub fn signal(&self) -> Option<i32> {
        self.status.and_then(|s| s.signal())
    }

    /// Its exit code, if it exited.
    pub fn code(&self) -> Option<i32> {
        self.status.and_then(|s| s.code())
    }

    /// Panics with the child's output unless it exited with code 0.
    pub fn assert_success(&self, what: &str) {
        assert!(
            self.status.is_some(),
            "{what}: child hung and was killed\n{self:#?}"
        );
        assert_eq!(self.code(), Some(0), "{what}: child failed\n{self:#?}");
    }
}

/// Re-executes this test binary to run only `test_name`, with [`CHILD_CASE`] set to `case`
/// and `pre_exec` run in the child between `fork` and `exec` (for `setrlimit`). Kills the
/// child and reports `status: None` if it has not ended after `timeout`.
pub fn run_child_with(
    test_name: &str,
    case: &str,
    timeout: Duration,
    pre_exec: Option<fn() -> std::io::Result<()>>,
) -> ChildResult {
    run_child_in(test_name, case, timeout, pre_exec, &[])
}

/// [`run_child_with`], with the variables of `env` set in the child's environment too.
pub fn run_child_in(
    test_name: &str,
    case: &str,
    timeout: Duration,
    pre_exec: Option<fn() -> std::io::Result<()>>,
    env: &[(&str, &str)],
) -> ChildResult {
    use std::os::unix::process::CommandExt;
    let exe = std::env::current_exe().expect("current_exe");
    let mut cmd = Command::new(exe);
    cmd.args([
        test_name,
        "--exact",
        "--nocapture",
        "--test-threads=1",
        "-q",
    ])
    .env(CHILD_CASE, case)
    .env("RUST_BACKTRACE", "0")
    // glibc's own malloc (still used inside libc, e.g. by `pthread_getattr_np`) would
    // otherwise reserve 64 MiB of address space per thread arena, which alone can exhaust
    // the `RLIMIT_AS` of the out-of-memory tests.
    .env("MALLOC_ARENA_MAX", "1")
    .envs(env.iter().copied())
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    if let Some(f) = pre_exec {
        // SAFETY: `f` only makes async-signal-safe calls (setrlimit), as `pre_exec` requires.
        unsafe { cmd.pre_exec(f) };
    }
    let mut child = cmd.spawn().expect("spawn child test process");
    let mut out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    // Read both pipes on their own threads, so a chatty child cannot block on a full pipe.
    let out_reader = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = out.read_to_end(&mut s);
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = err.read_to_end(&mut s);
        s
    });
    let start = Instant::now();
    let status = loop {
        match child.try_wait().expect("try_wait") {
            Some(status) => break Some(status),
            None if start.elapsed() > timeout => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            None => std::thread::sleep(Duration::from_millis(10)),
        }
    };
    let stdout = String::from_utf8_lossy(&out_reader.join().unwrap()).into_owned();
    let stderr = String::from_utf8_lossy(&err_reader.join().unwrap()).into_owned();
    ChildResult {
        status,
        stdout,
        stderr,
    }
}

/// [`run_child_with`] without a `pre_exec` hook.
pub fn run_child(test_name: &str, case: &str, timeout: Duration) -> ChildResult {
    run_child_with(test_name, case, timeout, None)
}

/// Hang timeout of a death-test child.
pub const DEATH_TIMEOUT: Duration = Duration::from_secs(30);

/// Whether `line` is the stop line of message `msg` (`spanalloc: ...`): the message, then
/// ` at 0x` and the address in hexadecimal.
pub fn is_stop_line(line: &str, msg: &str) -> bool {
    line.strip_prefix(msg)
        .and_then(|rest| rest.strip_prefix(" at 0x"))
        .is_some_and(|hex| !hex.is_empty() && hex.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Runs `body` in a child process (this test binary, re-executed to run only `test_name`)
/// and checks that the child was killed by `SIGABRT` (not hung), and that the one line of
/// spanalloc's on its stderr is `msg` with an address ([`is_stop_line`]). If the child
/// printed `STOP-AT 0x...` on stdout before the bad call, the address must be that one. In
/// the child, runs `body`; if `body` returns, the child exits with code 0 after printing a
/// marker, which the parent reports as a failure.
pub fn death_test(test_name: &str, msg: &str, body: impl FnOnce()) {
    if child_case().as_deref() == Some(test_name) {
        body();
        println!("CHILD-SURVIVED");
        std::process::exit(0);
    }
    let r = run_child(test_name, test_name, DEATH_TIMEOUT);
    assert!(r.status.is_some(), "{test_name}: child hung\n{r:#?}");
    assert_eq!(
        r.signal(),
        Some(libc::SIGABRT),
        "{test_name}: child not killed by SIGABRT\n{r:#?}"
    );
    let ours: Vec<&str> = r
        .stderr
        .lines()
        .filter(|l| l.starts_with("spanalloc:"))
        .collect();
    assert!(
        ours.len() == 1 && is_stop_line(ours[0], msg),
        "{test_name}: wanted exactly one line {msg:?} at an address\n{r:#?}"
    );
    if let Some(addr) = r.stdout.lines().find_map(|l| l.strip_prefix("STOP-AT ")) {
        assert_eq!(ours[0], format!("{msg} at {addr}"), "{test_name}\n{r:#?}");
    }
}

/// In a death test's child: says on stdout which address the stop line must name.
pub fn expect_stop_at(addr: usize) {
    println!("STOP-AT {addr:#x}");
}

/// Runs `body` in a child process and checks that it exits with code 0 within `timeout`.
pub fn child_test(test_name: &str, timeout: Duration, body: impl FnOnce()) {
    child_test_in(test_name, timeout, &[], body);
}

/// [`child_test`], with the variables of `env` set in the child's environment.
pub fn child_test_in(
    test_name: &str,
    timeout: Duration,
    env: &[(&str, &str)],
    body: impl FnOnce(),
) {
    if child_case().as_deref() == Some(test_name) {
        body();
        std::process::exit(0);
    }
    run_child_in(test_name, test_name, timeout, None, env).assert_success(test_name);
}

/// Resident bytes, read from /proc/self/statm without allocating.
pub fn rss() -> usize {
    let mut buf = [0u8; 128];
    // SAFETY: a NUL-terminated path; `buf` is a valid buffer of its length.
    let n = unsafe {
        let fd = libc::open(c"/proc/self/statm".as_ptr(), libc::O_RDONLY);
        assert!(fd >= 0);
        let n = libc::read(fd, buf.as_mut_ptr().cast(), buf.len());
        libc::close(fd);
        n
    };
    assert!(n > 0);
    let text = &buf[..n as usize];
    let field = text.split(|&b| b == b' ').nth(1).unwrap();
    let pages = field
        .iter()
        .fold(0usize, |v, &d| v * 10 + (d - b'0') as usize);
    // SAFETY: sysconf has no preconditions.
    pages * unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize
}

/// A tiny deterministic generator (xorshift64*), so failures replay.
#[derive(Clone)]
pub struct Rng(pub u64);

impl Rng {
    /// A generator seeded with `seed` (any value).
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    /// The next value.
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// A value in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    /// True with probability `percent`/100.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// The start of the span holding small object `p`, from the page map.
#[allow(dead_code)]
pub fn span_start(p: *mut u8) -> usize {
    spanalloc::internals::page_map::word_start(
        spanalloc::internals::heap()
            .page_map()
            .small_word_of(p as usize),
    )
}
