//! The `override` feature: the program's C `malloc` family is spanalloc's, so C code linked
//! into a Rust binary allocates from it. A C file, compiled at test time (`cc`) into a
//! shared object and loaded with `dlopen`, mallocs a buffer that Rust frees with the C
//! `free`, and frees with its `free` a buffer Rust made; the C library's own functions
//! (`strdup`) allocate from spanalloc too. Each pointer is checked against spanalloc's page
//! map, which knows only the memory spanalloc handed out.
//!
//! Built only with the feature (`required-features`): `cargo test --release` at the root
//! has it through the C library's crate; alone, `cargo test --release -p spanalloc
//! --features override --test override`.

use core::ffi::{c_char, c_int, c_void};
use std::ffi::CString;
use std::process::Command;

/// Whether spanalloc's page map knows the span holding `p`: memory spanalloc handed out.
fn ours(p: *const c_void) -> bool {
    !spanalloc::internals::heap()
        .page_map()
        .lookup(p as usize)
        .is_null()
}

/// The test's C file, compiled into a shared object in a fresh directory, and loaded.
fn load_c_library() -> *mut c_void {
    let dir = std::env::temp_dir().join(format!("spanalloc-override-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let so = dir.join("liboverride.so");
    let src = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/c/override.c");
    let status = Command::new("cc")
        .args(["-O2", "-shared", "-fPIC", "-o"])
        .arg(&so)
        .arg(src)
        .status()
        .expect("a C compiler (cc) for the test's C file");
    assert!(status.success(), "cc failed on {src}");
    let path = CString::new(so.to_str().unwrap()).unwrap();
    // SAFETY: a NUL-terminated path; the library has no constructors.
    let lib = unsafe { libc::dlopen(path.as_ptr(), libc::RTLD_NOW) };
    assert!(!lib.is_null(), "dlopen {}", so.display());
    // Loaded: the mapping outlives the file.
    let _ = std::fs::remove_dir_all(&dir);
    lib
}

/// The function `name` of the loaded library.
fn symbol(lib: *mut c_void, name: &str) -> *mut c_void {
    let name = CString::new(name).unwrap();
    // SAFETY: a loaded library and a NUL-terminated name.
    let f = unsafe { libc::dlsym(lib, name.as_ptr()) };
    assert!(!f.is_null(), "dlsym {name:?}");
    f
}

#[test]
fn c_code_in_the_program_allocates_from_spanalloc() {
    let lib = load_c_library();
    // SAFETY: the functions of tests/c/override.c, with their C signatures.
    let (make, take) = unsafe {
        (
            core::mem::transmute::<*mut c_void, unsafe extern "C" fn(usize) -> *mut c_char>(
                symbol(lib, "c_make_buffer"),
            ),
            core::mem::transmute::<*mut c_void, unsafe extern "C" fn(*mut c_char) -> c_int>(
                symbol(lib, "c_take_buffer"),
            ),
        )
    };
    for size in [24usize, 1000, 40_000, 1 << 20] {
        // C mallocs, Rust frees.
        // SAFETY: C's malloc; the buffer is read within its size and freed once.
        unsafe {
            let p = make(size);
            assert!(!p.is_null());
            assert!(ours(p.cast()), "C's malloc({size}) is spanalloc's");
            assert_eq!(*p.add(size - 1), 7);
            libc::free(p.cast());
        }
        // Rust mallocs (the C function, from Rust), C frees.
        // SAFETY: a live buffer of `size` bytes, freed once by C.
        unsafe {
            let q = libc::malloc(size).cast::<c_char>();
            assert!(
                ours(q.cast()),
                "malloc({size}) called from Rust is spanalloc's"
            );
            q.write(42);
            assert_eq!(take(q), 42);
        }
    }
    // The C library's own allocations: strdup mallocs inside libc.
    let s = CString::new("spanalloc").unwrap();
    // SAFETY: a NUL-terminated string; the copy is freed once.
    unsafe {
        let copy = libc::strdup(s.as_ptr());
        assert!(ours(copy.cast()), "strdup's malloc is spanalloc's");
        libc::free(copy.cast());
    }
    // SAFETY: nothing of the library is used afterwards.
    unsafe { libc::dlclose(lib) };
}
