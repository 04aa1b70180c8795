//! C programs under `LD_PRELOAD=target/release/libspanalloc.so`: `tests/c/api.c` calls
//! every exported symbol (its output must match `tests/c/api.expected`, and its fatal cases
//! must stop with spanalloc's line), `tests/c/threads.c` frees across threads and must print
//! what it prints without the preload.
//!
//! Needs a C compiler (`cc`); builds the release library with the same cargo.

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::Command;

mod common;
use common::{compile, library};

fn run(exe: &Path, args: &[&str], preload: bool) -> std::process::Output {
    let mut cmd = Command::new(exe);
    cmd.args(args);
    if preload {
        cmd.env("LD_PRELOAD", library());
    } else {
        cmd.env_remove("LD_PRELOAD");
    }
    cmd.output().expect("run the C program")
}

#[test]
fn every_exported_symbol_from_c() {
    let exe = compile("api.c", "api");
    let out = run(&exe, &[], true);
    let expected =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/c/api.expected"))
            .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), expected);
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for (case, line) in [
        (
            "invalid-free",
            "spanalloc: invalid free: pointer not allocated by spanalloc",
        ),
        ("double-free", "spanalloc: double free detected"),
        (
            "interior-free",
            "spanalloc: invalid free: pointer into the middle of an object",
        ),
    ] {
        let out = run(&exe, &[case], true);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.signal(), Some(libc::SIGABRT), "{case}: {stderr}");
        let stop = stderr.lines().find_map(|l| l.strip_prefix(line));
        assert!(
            stop.is_some_and(|at| at.starts_with(" at 0x")),
            "{case}: {stderr}"
        );
    }
}

#[test]
fn threads_free_across_threads() {
    let exe = compile("threads.c", "threads");
    let plain = run(&exe, &["4", "20000"], false);
    let ours = run(&exe, &["4", "20000"], true);
    assert!(plain.status.success() && ours.status.success(), "{ours:?}");
    assert_eq!(ours.stdout, plain.stdout);
}

#[test]
fn show_stats_prints_one_line_at_exit() {
    let exe = compile("threads.c", "stats");
    let out = Command::new(&exe)
        .args(["2", "2000"])
        .env("LD_PRELOAD", library())
        .env("SPANALLOC_SHOW_STATS", "1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success());
    let line = stderr
        .lines()
        .find(|l| l.starts_with("spanalloc: peak "))
        .unwrap_or_else(|| {
            panic!("no stats line in {stderr:?}");
        });
    for word in ["current ", "mapped ", "process peak RSS "] {
        assert!(line.contains(word), "{line}");
    }
    // The heap's own figures: its peak in spans, at least what is in spans at exit; the
    // program's 4 000 mallocs and frees (2 pairs of 2 000) counted, its threads' included.
    let number_after = |word: &str| -> u64 {
        let rest =
            &line[line.find(word).unwrap_or_else(|| panic!("{word}: {line}")) + word.len()..];
        rest.split(|c: char| !c.is_ascii_digit())
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    let number_before = |word: &str| -> u64 {
        let head = &line[..line.find(word).unwrap_or_else(|| panic!("{word}: {line}"))];
        head.trim_end().rsplit(' ').next().unwrap().parse().unwrap()
    };
    assert!(
        number_after("spanalloc: peak ") >= number_after("current "),
        "{line}"
    );
    assert!(number_before(" allocations") >= 4000, "{line}");
    assert!(number_before(" frees") >= 4000, "{line}");
    let quiet = run(&exe, &["2", "2000"], true);
    assert!(!String::from_utf8_lossy(&quiet.stderr).contains("spanalloc:"));
}

#[test]
fn dlopen_does_not_need_static_tls_it_cannot_get() {
    // dlopen (not LD_PRELOAD): the library's initial-exec TLS must fit glibc's surplus.
    let src = std::env::temp_dir().join(format!("spanalloc-dlopen-{}.c", std::process::id()));
    std::fs::write(
        &src,
        r#"#include <dlfcn.h>
#include <stdio.h>
int main(int argc, char **argv) {
    void *h = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    if (!h) { printf("dlopen failed: %s\n", dlerror()); return 1; }
    void *(*m)(unsigned long) = (void *(*)(unsigned long))dlsym(h, "malloc");
    void (*f)(void *) = (void (*)(void *))dlsym(h, "free");
    for (int i = 0; i < 100000; i++) f(m(i % 3000));
    printf("dlopen ok\n");
    return 0;
}
"#,
    )
    .unwrap();
    let exe = src.with_extension("");
    let status = Command::new("cc")
        .arg("-o")
        .arg(&exe)
        .arg(&src)
        .arg("-ldl")
        .status()
        .expect("run cc");
    assert!(status.success());
    let out = Command::new(&exe)
        .arg(library())
        .env_remove("LD_PRELOAD")
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "dlopen ok\n");
    let _ = std::fs::remove_file(src);
    let _ = std::fs::remove_file(exe);
}

/// The heap profile of a C program: `SPANALLOC_PROFILE_DUMP` writes one on `SIGUSR2` (from
/// spanalloc's thread, the handler only wakes it) and one at exit; both are gzip-compressed
/// pprof profiles whose functions include the C program's two leaking functions.
#[test]
fn heap_profile_on_sigusr2_and_at_exit() {
    use std::io::Read;
    let exe = compile("profile.c", "profile");
    let dir = std::env::temp_dir().join(format!("spanalloc-c-prof-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("heap.pb.gz");
    let out = Command::new(&exe)
        .env("LD_PRELOAD", library())
        .env("SPANALLOC_PROFILE", "64K")
        .env("SPANALLOC_PROFILE_DUMP", &path)
        .output()
        .expect("run the C program");
    assert!(
        out.status.success() && out.stdout == b"ok\n",
        "{out:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for written in [path.clone(), dir.join("heap.pb.gz.1")] {
        let gz = std::fs::read(&written).unwrap();
        let mut raw = Vec::new();
        flate2::read::GzDecoder::new(&gz[..])
            .read_to_end(&mut raw)
            .unwrap();
        for name in [&b"leak_a"[..], b"leak_b", b"inuse_space"] {
            assert!(
                raw.windows(name.len()).any(|w| w == name),
                "{} names {}",
                written.display(),
                String::from_utf8_lossy(name)
            );
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Every allocation of a C program sampled (`SPANALLOC_PROFILE=1`): whatever C code the
/// sampling path calls (the unwinder, libgcc_s) would allocate through this library's
/// `malloc` and re-enter the sampling path; the exit profile's comment counts such samples,
/// and there are none.
#[test]
fn sampling_every_c_allocation_reenters_nothing() {
    use std::io::Read;
    let exe = compile("profile.c", "every");
    let dir = std::env::temp_dir().join(format!("spanalloc-c-every-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("heap.pb.gz");
    let out = Command::new(&exe)
        .env("LD_PRELOAD", library())
        .env("SPANALLOC_PROFILE", "1")
        .env("SPANALLOC_PROFILE_DUMP", &path)
        .output()
        .expect("run the C program");
    assert!(out.status.success(), "{out:?}");
    let gz = std::fs::read(&path).unwrap();
    let mut raw = Vec::new();
    flate2::read::GzDecoder::new(&gz[..])
        .read_to_end(&mut raw)
        .unwrap();
    let text = String::from_utf8_lossy(&raw);
    assert!(text.contains("mean 1 bytes between samples"), "{text}");
    assert!(
        text.contains(" 0 re-entered"),
        "a sample re-entered: {text}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
