//! The exported C functions, called directly: every function, every edge case of glibc's
//! contract. The library's C functions (`spanalloc::internals::c_abi`) are exported from
//! this test binary (`spanalloc::export_c_abi!`), so they replace glibc's for the whole
//! test process (the harness, std and libc all allocate through spanalloc here, as under
//! `LD_PRELOAD`).
//!
//! Cases that stop the process run in a child: the test binary re-runs itself with
//! `SPANALLOC_CHILD=<case>` and the parent checks the exit signal and the stderr line.

use spanalloc::internals::c_abi as c_api;

/// The C functions under their C names, for the whole process.
mod exports {
    spanalloc::export_c_abi!();
}

/// The C functions behind `black_box`: LLVM knows `malloc`, `free` and friends by name, and
/// in an optimised build would otherwise elide an allocation whose result is only compared
/// with null, or a `free` of a pointer it can see is not from the heap.
mod c {
    use core::ffi::{c_int, c_void};
    use spanalloc::internals::c_abi as c_api;
    use std::hint::black_box as bb;

    macro_rules! wrap {
        ($($name:ident($($arg:ident: $ty:ty),*) $(-> $ret:ty)?;)*) => {$(
            /// Calls the exported function of the same name, opaquely.
            ///
            /// # Safety
            /// As the exported function.
            pub unsafe fn $name($($arg: $ty),*) $(-> $ret)? {
                // SAFETY: per the caller.
                bb(unsafe { bb(c_api::$name as unsafe extern "C" fn($($ty),*) $(-> $ret)?)($(bb($arg)),*) })
            }
        )*};
    }

    wrap! {
        malloc(size: usize) -> *mut c_void;
        free(ptr: *mut c_void);
        calloc(n: usize, size: usize) -> *mut c_void;
        realloc(ptr: *mut c_void, size: usize) -> *mut c_void;
        reallocarray(ptr: *mut c_void, n: usize, size: usize) -> *mut c_void;
        posix_memalign(memptr: *mut *mut c_void, align: usize, size: usize) -> c_int;
        aligned_alloc(align: usize, size: usize) -> *mut c_void;
        memalign(align: usize, size: usize) -> *mut c_void;
        valloc(size: usize) -> *mut c_void;
        pvalloc(size: usize) -> *mut c_void;
        malloc_usable_size(ptr: *mut c_void) -> usize;
        free_sized(ptr: *mut c_void, size: usize);
        free_aligned_sized(ptr: *mut c_void, align: usize, size: usize);
        __libc_malloc(size: usize) -> *mut c_void;
        __libc_free(ptr: *mut c_void);
        __libc_calloc(n: usize, size: usize) -> *mut c_void;
        __libc_realloc(ptr: *mut c_void, size: usize) -> *mut c_void;
        __libc_memalign(align: usize, size: usize) -> *mut c_void;
    }
}

use c::*;
use c_api::{C_ALIGN, c_size};
use core::ffi::c_void;
use std::os::unix::process::ExitStatusExt;
use std::ptr::null_mut;

fn errno() -> i32 {
    // SAFETY: `__errno_location` returns this thread's errno slot, always valid.
    unsafe { *libc::__errno_location() }
}

fn set_errno(v: i32) {
    // SAFETY: `__errno_location` returns this thread's errno slot, always valid.
    unsafe { *libc::__errno_location() = v };
}

/// Fills `n` bytes at `p` with `byte` and checks them back.
fn fill_check(p: *mut c_void, n: usize, byte: u8) {
    // SAFETY: the caller passes a live block of at least `n` bytes.
    unsafe {
        std::ptr::write_bytes(p.cast::<u8>(), byte, n);
        assert!(
            std::slice::from_raw_parts(p.cast::<u8>(), n)
                .iter()
                .all(|&b| b == byte)
        );
    }
}

fn page() -> usize {
    // SAFETY: `sysconf` has no preconditions.
    unsafe { libc::sysconf(libc::_SC_PAGESIZE) as usize }
}

#[test]
fn malloc_zero_is_unique_and_freeable() {
    // SAFETY: C allocation calls on null, rejected or live blocks of ours, freed once.
    unsafe {
        let a = malloc(0);
        let b = malloc(0);
        assert!(!a.is_null() && !b.is_null());
        assert_ne!(a, b);
        assert!(malloc_usable_size(a) >= 1);
        free(a);
        free(b);
    }
}

#[test]
fn malloc_is_16_aligned_and_usable() {
    let mut sizes: Vec<usize> = (0..=4200).collect();
    sizes.extend((4200..80_000).step_by(97));
    sizes.extend([1 << 20, (1 << 20) + 1, 3 << 20]);
    for &n in &sizes {
        // SAFETY: C allocation calls on null, rejected or live blocks of ours, freed once.
        unsafe {
            let p = malloc(n);
            assert!(!p.is_null(), "malloc({n})");
            assert_eq!(p as usize % 16, 0, "malloc({n}) = {p:p} is not 16-aligned");
            assert!(malloc_usable_size(p) >= n);
            fill_check(p, n, n as u8);
            free(p);
        }
    }
}

#[test]
fn rounding_to_16_picks_the_class_align_16_would() {
    use spanalloc::internals::size_class::{MAX_SMALL_SIZE, class_for, class_of};
    for n in 0..=MAX_SMALL_SIZE {
        let rounded = c_size(n).unwrap();
        let by_rounding = class_of(rounded);
        assert_eq!(by_rounding, class_for(n, C_ALIGN), "size {n}");
        if let Some(c) = by_rounding {
            assert_eq!(
                c.size() % C_ALIGN,
                0,
                "class of {n} bytes is not 16-aligned"
            );
        }
    }
    assert_eq!(c_size(usize::MAX), None);
}

#[test]
fn malloc_failure_is_null_and_enomem() {
    for n in [usize::MAX, usize::MAX - 15, isize::MAX as usize, 1 << 62] {
        set_errno(0);
        // SAFETY: C allocation calls on null, rejected or live blocks of ours, freed once.
        let p = unsafe { malloc(n) };
        assert!(p.is_null(), "malloc({n:#x})");
        assert_eq!(errno(), libc::ENOMEM);
    }
}

#[test]
fn free_null_is_a_no_op_and_free_keeps_errno() {
    // SAFETY: C allocation calls on null, rejected or live blocks of ours, freed once.
    unsafe {
        set_errno(1234);
        free(null_mut());
        __libc_free(null_mut());
        free_sized(null_mut(), 10);
        free_aligned_sized(null_mut(), 64, 10);
        assert_eq!(errno(), 1234);
        for n in [1, 100, 5000, 40_000, 4 << 20] {
            let p = malloc(n);
            set_errno(4321);
            free(p);
            assert_eq!(errno(), 4321, "free of {n} bytes changed errno");
        }
        // A large free may give pages back to the OS at once (decay 0 is not assumed; the
        // release runs madvise either way on some frees).
        spanalloc::release_free_memory();
        let p = malloc(8 << 20);
        set_errno(77);
        free(p);
        assert_eq!(errno(), 77);
    }
}

#[test]
fn calloc_zeroes_and_detects_overflow() {
    // SAFETY: C allocation calls on null, rejected or live blocks of ours, freed once.
    unsafe {
        for n in [1usize, 16, 100, 1000, 5000, 40_000, 1 << 20] {
            let p = malloc(n);
            fill_check(p, n, 0xAA);
            free(p);
            let z = calloc(1, n);
            assert!(!z.is_null());
            assert_eq!(z as usize % 16, 0);
            assert!(
                std::slice::from_raw_parts(z.cast::<u8>(), n)
                    .iter()
                    .all(|&b| b == 0)
            );
            free(z);
            let z = calloc(n, 3);
            assert!(
                std::slice::from_raw_parts(z.cast::<u8>(), 3 * n)
                    .iter()
                    .all(|&b| b == 0)
            );
            free(z);
        }
        let z = calloc(0, 0);
        assert!(!z.is_null());
        free(z);
        for (n, s) in [
            (usize::MAX, 2),
            (2, usize::MAX),
            (1 << 33, 1 << 33),
            (usize::MAX, usize::MAX),
        ] {
            set_errno(0);
            assert!(calloc(n, s).is_null());
            assert_eq!(errno(), libc::ENOMEM);
        }
        set_errno(0);
        assert!(__libc_calloc(usize::MAX, 2).is_null());
        assert_eq!(errno(), libc::ENOMEM);
    }
}

#[test]
fn realloc_keeps_contents_across_sizes() {
    // SAFETY: C allocation calls on null, rejected or live blocks of ours, freed once.
    unsafe {
        let sizes = [
            1usize,
            8,
            17,
            24,
            100,
            1024,
            1025,
            5000,
            32 * 1024,
            100_000,
            1 << 20,
            3000,
            40,
            5,
        ];
        let mut p = realloc(null_mut(), 1); // realloc(NULL, n) is malloc(n)
        assert!(!p.is_null());
        *p.cast::<u8>() = 0;
        let mut have = 1usize;
        for (i, &n) in sizes.iter().enumerate() {
            let q = realloc(p, n);
            assert!(!q.is_null(), "realloc to {n}");
            assert_eq!(q as usize % 16, 0);
            assert!(malloc_usable_size(q) >= n);
            let kept = have.min(n);
            let bytes = std::slice::from_raw_parts(q.cast::<u8>(), kept);
            let expect = if i == 0 { 0 } else { (i - 1) as u8 };
            assert!(
                bytes.iter().all(|&b| b == expect),
                "contents kept by realloc to {n}"
            );
            std::ptr::write_bytes(q.cast::<u8>(), i as u8, n);
            p = q;
            have = n;
        }
        free(p);
        let p = __libc_realloc(null_mut(), 10);
        assert!(!p.is_null());
        free(p);
    }
}

#[test]
fn realloc_to_zero_frees_and_returns_null() {
    // SAFETY: C allocation calls on null, rejected or live blocks of ours, freed once.
    unsafe {
        for n in [1, 100, 50_000] {
            let p = malloc(n);
            assert!(realloc(p, 0).is_null());
        }
        // realloc(NULL, 0) is malloc(0): a unique pointer.
        let p = realloc(null_mut(), 0);
        assert!(!p.is_null());
        free(p);
    }
}

#[test]
fn failed_realloc_leaves_the_block_intact() {
    // SAFETY: C allocation calls on null, rejected or live blocks of ours, freed once.
    unsafe {
        for n in [10usize, 3000, 100_000] {
            let p = malloc(n);
            fill_check(p, n, 0x5C);
            for huge in [usize::MAX, usize::MAX - 8, isize::MAX as usize, 1 << 62] {
                set_errno(0);
                assert!(realloc(p, huge).is_null());
                assert_eq!(errno(), libc::ENOMEM);
                assert!(
                    std::slice::from_raw_parts(p.cast::<u8>(), n)
                        .iter()
                        .all(|&b| b == 0x5C)
                );
            }
            // Still ours and live: usable, resizable, freeable.
            assert!(malloc_usable_size(p) >= n);
            let q = realloc(p, n * 2);
            assert!(
                std::slice::from_raw_parts(q.cast::<u8>(), n)
                    .iter()
                    .all(|&b| b == 0x5C)
            );
            free(q);
        }
    }
}

#[test]
fn reallocarray_detects_overflow() {
    // SAFETY: C allocation calls on null, rejected or live blocks of ours, freed once.
    unsafe {
        let p = reallocarray(null_mut(), 10, 8);
        assert!(!p.is_null());
        fill_check(p, 80, 3);
        set_errno(0);
        assert!(reallocarray(p, usize::MAX, 2).is_null());
        assert_eq!(errno(), libc::ENOMEM);
        assert!(
            std::slice::from_raw_parts(p.cast::<u8>(), 80)
                .iter()
                .all(|&b| b == 3)
        );
        let q = reallocarray(p, 1000, 8);
        assert!(!q.is_null());
        assert!(
            std::slice::from_raw_parts(q.cast::<u8>(), 80)
                .iter()
                .all(|&b| b == 3)
        );
        assert!(
            reallocarray(q, 0, 8).is_null(),
            "reallocarray(p, 0, n) is realloc(p, 0)"
        );
    }
}

#[test]
fn posix_memalign_checks_alignment_and_leaves_out_pointer() {
    // SAFETY: C allocation calls on null, rejected or live blocks of ours, freed once.
    unsafe {
        let sentinel = 0xdead_beef_usize as *mut c_void;
        for bad in [0usize, 1, 2, 4, 3, 12, 24, 48, usize::MAX] {
            let mut out = sentinel;
            assert_eq!(
                posix_memalign(&mut out, bad, 16),
                libc::EINVAL,
                "align {bad}"
            );
            assert_eq!(out, sentinel);
        }
        let mut out = sentinel;
        assert_eq!(posix_memalign(&mut out, 64, usize::MAX), libc::ENOMEM);
        assert_eq!(out, sentinel);
        let mut align = 8;
        while align <= 4 << 20 {
            for n in [0usize, 1, 100, align, 3 * align + 5, 40_000] {
                let mut out = null_mut();
                assert_eq!(posix_memalign(&mut out, align, n), 0);
                assert!(!out.is_null());
                assert_eq!(out as usize % align, 0, "align {align} size {n}");
                assert_eq!(out as usize % 16, 0);
                assert!(malloc_usable_size(out) >= n);
                fill_check(out, n, 9);
                free(out);
            }
            align *= 2;
        }
    }
}

#[test]
fn aligned_alloc_and_free_aligned_sized() {
    // SAFETY: C allocation calls on null, rejected or live blocks of ours, freed once.
    unsafe {
        for bad in [0usize, 3, 24, 100] {
            set_errno(0);
            assert!(aligned_alloc(bad, 64).is_null(), "align {bad}");
            assert_eq!(errno(), libc::EINVAL);
        }
        set_errno(0);
        assert!(aligned_alloc(64, usize::MAX).is_null());
        assert_eq!(errno(), libc::ENOMEM);
        let mut align = 1;
        while align <= 1 << 20 {
            for n in [0usize, 1, 77, align, 2 * align, 50_000] {
                let p = aligned_alloc(align, n);
                assert!(!p.is_null());
                assert_eq!(p as usize % align, 0);
                fill_check(p, n, 1);
                if n % 2 == 0 {
                    free_aligned_sized(p, align, n);
                } else {
                    free(p);
                }
            }
            align *= 2;
        }
    }
}

#[test]
fn memalign_valloc_pvalloc() {
    // SAFETY: C allocation calls on null, rejected or live blocks of ours, freed once.
    unsafe {
        // glibc rounds an alignment that is not a power of two up to one.
        let p = memalign(24, 100);
        assert_eq!(p as usize % 32, 0);
        free(p);
        let p = memalign(0, 10);
        assert!(!p.is_null());
        free(p);
        set_errno(0);
        assert!(memalign(usize::MAX / 2 + 2, 10).is_null());
        assert_eq!(errno(), libc::EINVAL);
        // glibc's bound is exact: SIZE_MAX / 2 + 1 (2^63) is an alignment it accepts and
        // cannot serve (ENOMEM), as is one just below it (rounded up to 2^63).
        for align in [usize::MAX / 2 + 1, usize::MAX / 2, usize::MAX / 2 - 1] {
            set_errno(0);
            assert!(memalign(align, 10).is_null());
            assert_eq!(errno(), libc::ENOMEM, "memalign({align:#x}, 10)");
        }
        set_errno(0);
        assert!(memalign(4096, usize::MAX).is_null());
        assert_eq!(errno(), libc::ENOMEM);
        for align in [8usize, 16, 64, 4096, 65536, 1 << 21] {
            let p = memalign(align, 1000);
            assert_eq!(p as usize % align, 0);
            fill_check(p, 1000, 2);
            free(p);
            let p = __libc_memalign(align, 10);
            assert_eq!(p as usize % align, 0);
            free(p);
        }
        let pg = page();
        for n in [0usize, 1, pg, pg + 1, 100_000] {
            let p = valloc(n);
            assert_eq!(p as usize % pg, 0);
            fill_check(p, n, 4);
            free(p);
            let p = pvalloc(n);
            assert_eq!(p as usize % pg, 0);
            let whole = n.max(1).div_ceil(pg) * pg;
            assert!(
                malloc_usable_size(p) >= whole,
                "pvalloc({n}) rounds to pages"
            );
            fill_check(p, whole, 5);
            free(p);
        }
        set_errno(0);
        assert!(pvalloc(usize::MAX - 10).is_null());
        assert_eq!(errno(), libc::ENOMEM);
    }
}

#[test]
fn usable_size_and_sized_frees() {
    // SAFETY: C allocation calls on null, rejected or live blocks of ours, freed once.
    unsafe {
        assert_eq!(malloc_usable_size(null_mut()), 0);
        for n in [0usize, 1, 17, 24, 1000, 20_000, 70_000] {
            let p = malloc(n);
            let u = malloc_usable_size(p);
            assert!(u >= n);
            fill_check(p, u, 6); // the whole usable size is ours to write
            free_sized(p, n);
        }
        for n in [0usize, 1, 20, 100, 5000, 40_000] {
            let p = calloc(1, n);
            free_sized(p, n);
            let p = realloc(malloc(3), n.max(1));
            free_sized(p, n.max(1));
        }
        for align in [1usize, 16, 32, 256, 8192, 1 << 16] {
            for n in [0usize, 300, 70_000] {
                let p = aligned_alloc(align, n);
                free_aligned_sized(p, align, n);
            }
        }
        let p = __libc_malloc(10);
        assert!(!p.is_null());
        __libc_free(p);
    }
}

#[test]
fn frees_across_threads_and_many_thread_exits() {
    use std::sync::mpsc;
    let (tx, rx) = mpsc::channel::<Vec<usize>>();
    let producer = std::thread::spawn(move || {
        for round in 0..50 {
            let batch: Vec<usize> = (0..500)
                // SAFETY: C allocation calls on null, rejected or live blocks of ours, freed once.
                .map(|i| unsafe {
                    let n = (i * 37 + round) % 3000;
                    let p = malloc(n);
                    fill_check(p, n, 7);
                    p as usize
                })
                .collect();
            tx.send(batch).unwrap();
        }
    });
    let consumer = std::thread::spawn(move || {
        for batch in rx {
            for p in batch {
                // SAFETY: C allocation calls on null, rejected or live blocks of ours, freed once.
                unsafe { free(p as *mut c_void) };
            }
        }
    });
    producer.join().unwrap();
    consumer.join().unwrap();
    // Thread exit hands the cache back for reuse by the next thread.
    for _ in 0..300 {
        // SAFETY: C allocation calls on null, rejected or live blocks of ours, freed once.
        std::thread::spawn(|| unsafe {
            let v: Vec<*mut c_void> = (1..200).map(|n| malloc(n * 8)).collect();
            for p in v {
                free(p);
            }
        })
        .join()
        .unwrap();
    }
}

// ---------------------------------------------------------------------------------------
// Outcomes that stop the process, and what happens where the page map cannot tell.

/// Runs case `name` in a child copy of this test binary; returns (signal, stderr).
fn run_child(name: &str) -> (Option<i32>, String) {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_case", "--nocapture", "--test-threads=1"])
        .env("SPANALLOC_CHILD", name)
        .output()
        .unwrap();
    (
        out.status.signal(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Whether `line` is the stop line of message `msg`: the message, ` at 0x`, and the address
/// in hexadecimal.
fn is_stop_line(line: &str, msg: &str) -> bool {
    line.strip_prefix(msg)
        .and_then(|rest| rest.strip_prefix(" at 0x"))
        .is_some_and(|hex| !hex.is_empty() && hex.bytes().all(|b| b.is_ascii_hexdigit()))
}

fn expect_abort(case: &str, line: &str) {
    let (signal, stderr) = run_child(case);
    assert_eq!(signal, Some(libc::SIGABRT), "{case}: stderr {stderr:?}");
    assert!(
        stderr.lines().any(|l| is_stop_line(l, line)),
        "{case}: wanted {line:?} at an address, stderr {stderr:?}"
    );
}

/// Not a test by itself: the body of each child case (does nothing without the variable).
#[test]
fn child_case() {
    let Ok(case) = std::env::var("SPANALLOC_CHILD") else {
        return;
    };
    // SAFETY: C allocation calls on null, rejected or live blocks of ours, freed once.
    unsafe {
        match case.as_str() {
            "stack" => {
                let mut x = 0u64;
                free((&mut x as *mut u64).cast());
            }
            "foreign-mmap" => {
                // Memory of another allocator: a fresh mapping spanalloc never saw.
                let m = libc::mmap(
                    null_mut(),
                    1 << 16,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                );
                free(m.cast::<u8>().add(64).cast());
            }
            "interior" => {
                let p = malloc(64);
                free(p.cast::<u8>().add(16).cast());
            }
            "interior-large" => {
                let p = malloc(100_000);
                free(p.cast::<u8>().add(4096).cast());
            }
            "double-small" => {
                let p = malloc(48);
                let keep = malloc(48); // the span stays live
                free(p);
                free(p);
                free(keep);
            }
            "double-large" => {
                let p = malloc(200_000);
                free(p);
                free(p);
            }
            "realloc-foreign" => {
                let mut x = [0u64; 4];
                realloc(x.as_mut_ptr().cast(), 100);
            }
            "usable-foreign" => {
                let mut x = [0u64; 4];
                malloc_usable_size(x.as_mut_ptr().cast());
            }
            "forged-boundary" => {
                // An object boundary inside a live span that was never handed out: every
                // object not handed out carries the free key, so the free is a double free.
                let p = malloc(64).cast::<u8>();
                free(p.add(64 * 40).cast());
            }
            "forged-in-cache" => {
                // The object after `p`: in the batch the thread's bin took with `p`.
                let p = malloc(64).cast::<u8>();
                free(p.add(64 * 7).cast());
            }
            "interior-sized" => {
                let p = malloc(64).cast::<u8>();
                free_sized(p.add(16).cast(), 64);
            }
            other => panic!("unknown case {other}"),
        }
    }
    eprintln!("case {case}: not stopped");
    std::process::exit(3);
}

#[test]
fn invalid_frees_stop_the_process_with_one_line() {
    let not_ours = "spanalloc: invalid free: pointer not allocated by spanalloc";
    let middle = "spanalloc: invalid free: pointer into the middle of an object";
    let double = "spanalloc: double free detected";
    expect_abort("stack", not_ours);
    expect_abort("foreign-mmap", not_ours);
    expect_abort(
        "realloc-foreign",
        "spanalloc: invalid realloc: pointer not allocated by spanalloc",
    );
    expect_abort(
        "usable-foreign",
        "spanalloc: invalid pointer: not allocated by spanalloc",
    );
    expect_abort("interior", middle);
    expect_abort("interior-large", middle);
    expect_abort("double-small", double);
    expect_abort("double-large", double);
}

#[test]
fn forged_frees_of_object_boundaries_stop_the_process() {
    let double = "spanalloc: double free detected";
    let middle = "spanalloc: invalid free: pointer into the middle of an object";
    expect_abort("forged-boundary", double);
    expect_abort("forged-in-cache", double);
    expect_abort("interior-sized", middle);
}
