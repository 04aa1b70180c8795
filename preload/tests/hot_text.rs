//! Where `libspanalloc.so`'s code lies (`hot_text.ld`): the code every process runs (the
//! C and C++ entry points, the tiers' allocation and free paths, start-up) together at the
//! start of the text, before the code few processes run (the heap profiler's encoder and
//! symbolizer). The kernel maps a library's code 64 KiB around each page a process first
//! runs, so the spread of that code is the library's share of every process's resident
//! memory.
//!
//! Reads the release library's symbols with `nm` (binutils, installed with the C compiler
//! the other tests need).

use std::process::Command;

mod common;
use common::library;

/// The most code the functions every process runs may span: the bytes that one
/// fault-around window and the part of another before the text's start hold.
const HOT_SPAN: u64 = 96 << 10;

/// A defined function: address, size, symbol.
struct Function {
    addr: u64,
    size: u64,
    name: String,
}

fn functions() -> Vec<Function> {
    let out = Command::new("nm")
        .args(["-S", "--defined-only"])
        .arg(library())
        .output()
        .expect("run nm");
    assert!(out.status.success(), "nm failed");
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() == 4 && matches!(f[2], "t" | "T")).then(|| Function {
                addr: u64::from_str_radix(f[0], 16).unwrap(),
                size: u64::from_str_radix(f[1], 16).unwrap(),
                name: f[3].to_string(),
            })
        })
        .collect()
}

#[test]
fn the_code_every_process_runs_comes_first_and_together() {
    if option_env!("SPANALLOC_HOT_TEXT").is_none() {
        println!("NOT RUN: this build links without hot_text.ld (the linker is not LLD)");
        return;
    }
    let all = functions();
    let find = |what: &str, pick: &dyn Fn(&str) -> bool| -> Vec<&Function> {
        let found: Vec<&Function> = all.iter().filter(|f| pick(&f.name)).collect();
        assert!(!found.is_empty(), "no function for {what}");
        found
    };
    let mut hot = Vec::new();
    for name in ["malloc", "free", "calloc", "realloc", "_Znwm", "_ZdlPvm"] {
        hot.extend(find(name, &|n| n == name));
    }
    // Module paths as they start the mangled symbols, the slow paths (#[cold]) included.
    for prefix in [
        "_ZN9spanalloc6global10alloc_slow",
        "_ZN9spanalloc6global10local_slow",
        "_ZN9spanalloc12thread_cache",
        "_ZN9spanalloc17central_free_list",
        "_ZN9spanalloc9page_heap8PageHeap10alloc_from",
        "_ZN9spanalloc7startup7on_load",
        "_ZN9spanalloc6config4read",
    ] {
        hot.extend(find(prefix, &|n| n.starts_with(prefix)));
    }
    // The standard library's constructor, which every process runs at load.
    hot.extend(find("ARGV_INIT_ARRAY", &|n| n.contains("ARGV_INIT_ARRAY")));
    let cold = find("the profile's encoder and symbolizer", &|n| {
        n.starts_with("_ZN9spanalloc9profiling5pprof") || n.contains("gimli")
    });

    let hot_start = hot.iter().map(|f| f.addr).min().unwrap();
    let hot_end = hot.iter().map(|f| f.addr + f.size).max().unwrap();
    let cold_start = cold.iter().map(|f| f.addr).min().unwrap();
    let last = hot.iter().max_by_key(|f| f.addr + f.size).unwrap();
    assert!(
        hot_end <= cold_start,
        "{} ends at {hot_end:#x}, after the profiler's code starts at {cold_start:#x}",
        last.name
    );
    assert!(
        hot_end - hot_start <= HOT_SPAN,
        "the code every process runs spans {:#x}..{hot_end:#x} ({} ends it), more than {} KiB",
        hot_start,
        last.name,
        HOT_SPAN >> 10
    );
}
