//! What the tests that run C and C++ programs under `LD_PRELOAD` share: the release
//! library (built once per test binary) and the compilers.

#![allow(dead_code)]

use std::ffi::OsStr;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// `target/release/libspanalloc.so`, built once per test binary.
pub fn library() -> &'static Path {
    static LIB: OnceLock<PathBuf> = OnceLock::new();
    LIB.get_or_init(|| {
        let status = Command::new(env!("CARGO"))
            .args(["build", "--release", "-p", "spanalloc-preload"])
            .current_dir(workspace())
            .status()
            .expect("run cargo");
        assert!(
            status.success(),
            "cargo build --release -p spanalloc-preload"
        );
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| workspace().join("target"));
        let lib = target.join("release/libspanalloc.so");
        assert!(lib.exists(), "{} missing", lib.display());
        lib
    })
}

/// A compiled test program in the temporary directory, deleted when dropped (when its test
/// ends, passed or failed).
pub struct Exe(PathBuf);

impl Deref for Exe {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<OsStr> for Exe {
    fn as_ref(&self) -> &OsStr {
        self.0.as_os_str()
    }
}

impl Drop for Exe {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Compiles `tests/c/<file>` (C with `cc`, C++ with `c++`, by its extension) into a
/// temporary executable of its own; `tag` tells parallel tests apart.
pub fn compile(file: &str, tag: &str) -> Exe {
    let stem = file.split('.').next().unwrap();
    let out = std::env::temp_dir().join(format!("spanalloc-c-{}-{stem}-{tag}", std::process::id()));
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/c")
        .join(file);
    let mut cmd = if file.ends_with(".cpp") {
        let mut c = Command::new("c++");
        c.args(["-std=c++17", "-fsized-deallocation"]);
        c
    } else {
        Command::new("cc")
    };
    let status = cmd
        .args([
            "-O0",
            "-fno-builtin",
            "-w",
            "-pthread",
            "-fPIE",
            "-pie",
            "-o",
        ])
        .arg(&out)
        .arg(&src)
        .arg("-ldl")
        .status()
        .expect("run the compiler");
    assert!(status.success(), "compile {}", src.display());
    Exe(out)
}

/// The expected output `tests/c/<name>`.
pub fn expected(name: &str) -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/c")
            .join(name),
    )
    .unwrap()
}

/// Runs `exe` with `args`, under `LD_PRELOAD` of the library or not, with `env` set.
pub fn run(exe: &Path, args: &[&str], preload: bool, env: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = Command::new(exe);
    cmd.args(args);
    if preload {
        cmd.env("LD_PRELOAD", library());
    } else {
        cmd.env_remove("LD_PRELOAD");
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run the program")
}
