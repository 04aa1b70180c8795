//! The C++ operators from C++: `tests/c/cxx_ops.cpp` calls every form of `operator new`
//! and `delete` under `LD_PRELOAD=target/release/libspanalloc.so` (alignment, sized
//! delete, `std::bad_alloc`, the new-handler loop, `nothrow`, that each of the 20 symbols
//! resolves to the library); its output must match `tests/c/cxx_ops.expected`.
//!
//! Needs a C++ compiler (`c++`) and its runtime; builds the release library with the same
//! cargo.

mod common;
use common::*;

#[test]
fn every_cxx_operator_from_cxx() {
    let exe = compile("cxx_ops.cpp", "cxx");
    let out = run(&exe, &[], true, &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        stdout,
        expected("cxx_ops.expected"),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{out:?}");

    // Without the library the operators are libstdc++'s: the program must notice.
    let plain = run(&exe, &[], false, &[]);
    let stdout = String::from_utf8_lossy(&plain.stdout);
    assert!(!plain.status.success(), "{stdout}");
    assert!(
        stdout.contains("all 20 operators resolve to libspanalloc.so: FAIL"),
        "{stdout}"
    );
}
