//! The configuration read from the environment before `main`, and the statistics printed at
//! exit: each case runs this test binary again as a child with the variables set.

#[global_allocator]
static A: spanalloc::SpanAlloc = spanalloc::SpanAlloc;

use std::process::Command;

const CHILD: &str = "SPANALLOC_STARTUP_CHILD";

/// Runs the test `name` of this binary as a child with `vars`; returns its stderr.
fn child(name: &str, vars: &[(&str, &str)]) -> String {
    let out = Command::new(std::env::current_exe().unwrap())
        .args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD, "1")
        .envs(vars.iter().copied())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn in_child() -> bool {
    std::env::var_os(CHILD).is_some()
}

#[test]
fn variables_are_applied_before_main() {
    if in_child() {
        // What the child prints on stdout is read by nobody; the checks are its exit status.
        assert_eq!(spanalloc::internals::heap().decay_ms(), 1234);
        assert_eq!(spanalloc::internals::heap().bin_bytes(), 64 << 10);
        return;
    }
    let err = child(
        "variables_are_applied_before_main",
        &[
            ("SPANALLOC_DECAY_MS", "1234"),
            ("SPANALLOC_BIN_BYTES", "64K"),
        ],
    );
    assert!(!err.contains("spanalloc:"), "{err}");
}

#[test]
fn the_setters_change_what_the_environment_set() {
    if in_child() {
        let heap = spanalloc::internals::heap();
        spanalloc::set_decay_ms(77);
        spanalloc::set_bin_bytes(96 << 10);
        spanalloc::set_thread_cache_bytes(3 << 20);
        assert_eq!(heap.decay_ms(), 77);
        assert_eq!(heap.bin_bytes(), 96 << 10);
        assert_eq!(heap.thread_cache_bytes(), 3 << 20);
        return;
    }
    let err = child(
        "the_setters_change_what_the_environment_set",
        &[
            ("SPANALLOC_DECAY_MS", "1234"),
            ("SPANALLOC_BIN_BYTES", "64K"),
            ("SPANALLOC_THREAD_CACHE_BYTES", "8M"),
        ],
    );
    assert!(!err.contains("spanalloc:"), "{err}");
}

#[test]
fn a_bad_value_warns_once_and_keeps_the_default() {
    if in_child() {
        assert_eq!(
            spanalloc::internals::heap().decay_ms(),
            spanalloc::internals::heap::DEFAULT_DECAY_MS
        );
        return;
    }
    let err = child(
        "a_bad_value_warns_once_and_keeps_the_default",
        &[("SPANALLOC_DECAY_MS", "abc")],
    );
    let lines: Vec<&str> = err
        .lines()
        .filter(|l| l.starts_with("spanalloc:"))
        .collect();
    assert_eq!(
        lines,
        ["spanalloc: invalid SPANALLOC_DECAY_MS, keeping the default"],
        "{err}"
    );
}

#[test]
fn show_stats_prints_the_table_at_exit() {
    if in_child() {
        let v: Vec<Vec<u8>> = (0..1000).map(|i| vec![1; 100 + i]).collect();
        std::hint::black_box(&v);
        return;
    }
    let err = child(
        "show_stats_prints_the_table_at_exit",
        &[("SPANALLOC_SHOW_STATS", "1")],
    );
    assert!(err.contains("spanalloc: peak "), "{err}");
    assert!(err.contains("spanalloc statistics"), "{err}");
    assert!(err.contains("mapped"), "{err}");
    let quiet = child("show_stats_prints_the_table_at_exit", &[]);
    assert!(!quiet.contains("spanalloc"), "{quiet}");
}

#[test]
fn background_release_starts_its_thread_when_asked() {
    // The thread's name as the kernel keeps it (15 bytes).
    let running = || {
        std::fs::read_dir("/proc/self/task").unwrap().any(|t| {
            let comm = std::fs::read_to_string(t.unwrap().path().join("comm")).unwrap();
            comm.trim_end() == "spanalloc-relea"
        })
    };
    if in_child() {
        let asked = std::env::var_os("SPANALLOC_BACKGROUND_RELEASE").is_some();
        if asked {
            // The thread names itself once it runs, which may be a moment after the
            // constructor started it (a debug build under load took longer than this
            // test's first look): wait for it, up to 10 s.
            let start = std::time::Instant::now();
            while !running() && start.elapsed() < std::time::Duration::from_secs(10) {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        }
        assert_eq!(running(), asked);
        return;
    }
    child(
        "background_release_starts_its_thread_when_asked",
        &[("SPANALLOC_BACKGROUND_RELEASE", "1")],
    );
    child("background_release_starts_its_thread_when_asked", &[]);
}

#[test]
fn profile_variables_start_profiling_and_dump_at_exit_and_on_sigusr2() {
    let dir = std::env::temp_dir().join(format!("spanalloc-startup-prof-{}", std::process::id()));
    if in_child() {
        assert_eq!(spanalloc::profiling::mean(), 64 << 10);
        let kept: Vec<Vec<u8>> = (0..500).map(|i| vec![i as u8; 4000]).collect();
        // The signal's profile is written by a thread of spanalloc's, not in the handler.
        // SAFETY: raising a signal has no memory-safety preconditions.
        unsafe { libc::raise(libc::SIGUSR2) };
        let signalled = std::env::var("SPANALLOC_PROFILE_DUMP").unwrap() + ".1";
        let start = std::time::Instant::now();
        while spanalloc::profiling::signal_dumps() < 1 || !std::path::Path::new(&signalled).exists()
        {
            assert!(start.elapsed().as_secs() < 20, "no profile after SIGUSR2");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        std::hint::black_box(kept);
        return;
    }
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("heap.pb.gz");
    let err = child(
        "profile_variables_start_profiling_and_dump_at_exit_and_on_sigusr2",
        &[
            ("SPANALLOC_PROFILE", "64K"),
            ("SPANALLOC_PROFILE_DUMP", path.to_str().unwrap()),
        ],
    );
    assert!(!err.contains("spanalloc:"), "{err}");
    for written in [path.clone(), dir.join("heap.pb.gz.1")] {
        let bytes = std::fs::read(&written).unwrap();
        assert_eq!(&bytes[..2], &[0x1f, 0x8b], "{} is gzip", written.display());
        assert!(bytes.len() > 100, "{} has a profile", written.display());
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_bad_profile_mean_warns() {
    if in_child() {
        assert_eq!(spanalloc::profiling::mean(), 0);
        return;
    }
    let err = child("a_bad_profile_mean_warns", &[("SPANALLOC_PROFILE", "lots")]);
    assert!(
        err.contains("spanalloc: invalid SPANALLOC_PROFILE, keeping the default"),
        "{err}"
    );
}
