//! Links `libspanalloc.so` with `hot_text.ld`, which gathers the code every process runs
//! at the start of the text (the script says why), when the linker is LLD.
//!
//! GNU ld reads the script too, but makes a second `.text` section of it, in which
//! valgrind then finds no function; so the script is used only where rustc links with its
//! own LLD: x86_64 Linux from Rust 1.90 on, with no linker configured. Elsewhere the
//! library is the same, with its code in the linker's input order. The tests learn which
//! from `SPANALLOC_HOT_TEXT`.

use std::env;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=hot_text.ld");
    if !links_with_lld() {
        return;
    }
    let dir = env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    println!("cargo:rustc-cdylib-link-arg=-Wl,-T,{dir}/hot_text.ld");
    println!("cargo:rustc-env=SPANALLOC_HOT_TEXT=1");
}

/// Whether rustc links this build with its own LLD (its default for x86_64 Linux since
/// 1.90): the target, no linker set for it, no linker flag, and the compiler's version.
fn links_with_lld() -> bool {
    if env::var("TARGET").as_deref() != Ok("x86_64-unknown-linux-gnu")
        || env::var_os("RUSTC_LINKER").is_some()
    {
        return false;
    }
    let flags = env::var("CARGO_ENCODED_RUSTFLAGS").unwrap_or_default();
    if flags
        .split('\x1f')
        .any(|f| f.contains("linker") || f.contains("fuse-ld") || f.contains("link-self"))
    {
        return false;
    }
    let rustc = env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let Ok(out) = Command::new(rustc).arg("-V").output() else {
        return false;
    };
    // "rustc 1.95.0 (59807616e 2026-04-14)"
    let version = String::from_utf8_lossy(&out.stdout);
    let minor = version
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.split('.').nth(1))
        .and_then(|m| m.parse::<u32>().ok());
    matches!(minor, Some(m) if m >= 90)
}
