//! glibc's extras from C: `tests/c/glibc_ext.c` calls `malloc_trim`, `mallinfo`,
//! `mallinfo2`, `malloc_stats`, `malloc_info` and `mallopt` under
//! `LD_PRELOAD=target/release/libspanalloc.so` (live memory shows in `uordblks` and
//! `hblkhd`, `malloc_trim` gives it back and RSS falls); its output must match
//! `tests/c/glibc_ext.expected`, and `malloc_stats` must print glibc's lines to stderr.
//!
//! Needs a C compiler (`cc`); builds the release library with the same cargo.

mod common;
use common::*;

#[test]
fn glibc_extras_from_c() {
    let exe = compile("glibc_ext.c", "glibc-ext");
    // Nothing goes back to the OS on its own: only malloc_trim gives memory back.
    let out = run(&exe, &[], true, &[("SPANALLOC_DECAY_MS", "-1")]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stdout, expected("glibc_ext.expected"), "stderr: {stderr}");
    assert!(out.status.success(), "{out:?}");

    // malloc_stats: glibc's shape, 8 lines, the numbers right-aligned in 10 columns.
    let lines: Vec<&str> = stderr.lines().collect();
    let labels = [
        "Arena 0:",
        "system bytes     = ",
        "in use bytes     = ",
        "Total (incl. mmap):",
        "system bytes     = ",
        "in use bytes     = ",
        "max mmap regions = ",
        "max mmap bytes   = ",
    ];
    assert_eq!(lines.len(), labels.len(), "{stderr}");
    let mut values = Vec::new();
    for (line, label) in lines.iter().zip(labels) {
        assert!(line.starts_with(label), "{line:?} in {stderr}");
        if label.ends_with("= ") {
            let value = &line[label.len()..];
            assert!(value.len() >= 10, "{line:?}");
            values.push(value.trim_start().parse::<usize>().expect(line));
        }
    }
    // Arena: system >= in use; the totals add the large objects to both.
    assert!(values[0] >= values[1] && values[0] > 0, "{stderr}");
    assert_eq!(values[2] - values[0], values[3] - values[1], "{stderr}");

    // Without the library these are glibc's: the program must notice.
    let plain = run(&exe, &[], false, &[]);
    assert!(!plain.status.success());
    assert!(
        String::from_utf8_lossy(&plain.stdout).contains("mallopt are spanalloc's: FAIL"),
        "{plain:?}"
    );
}
