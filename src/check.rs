//! Fatal errors: one fixed line on stderr with `write(2)`, then `abort`. See `lib.rs` for an
//! overview.
//!
//! Nothing here allocates, formats or unwinds, so it is safe to call from inside the
//! allocator while it serves a request.

/// Writes `spanalloc: <msg>\n` to stderr with raw `write(2)` calls and aborts the process.
///
/// `msg` is a static string: no formatting, no allocation.
#[cold]
#[inline(never)]
#[cfg_attr(loom, allow(unreachable_code))]
pub fn fatal(msg: &'static str) -> ! {
    // Under loom (test builds only) a fatal error is a panic, so that the model checker
    // reports the interleaving that led to it instead of the process dying.
    #[cfg(loom)]
    panic!("spanalloc: {msg}");
    write_stderr(b"spanalloc: ");
    write_stderr(msg.as_bytes());
    write_stderr(b"\n");
    // SAFETY: `abort` has no preconditions; it never returns.
    unsafe { libc::abort() }
}

/// Like [`fatal`], for an error about one address: writes `spanalloc: <msg> at 0x<hex>\n`.
///
/// The address is formatted into a stack buffer, so this allocates no more than `fatal`.
/// It is the pointer the program passed (or the object or span it led to), for the reader
/// to look up in a debugger or a sanitizer's report.
#[cold]
#[inline(never)]
#[cfg_attr(loom, allow(unreachable_code))]
pub fn fatal_at(msg: &'static str, addr: usize) -> ! {
    #[cfg(loom)]
    panic!("spanalloc: {msg} at {addr:#x}");
    let mut buf = [0u8; 16];
    write_stderr(b"spanalloc: ");
    write_stderr(msg.as_bytes());
    write_stderr(b" at 0x");
    write_stderr(format_hex(addr as u64, &mut buf));
    write_stderr(b"\n");
    // SAFETY: `abort` has no preconditions; it never returns.
    unsafe { libc::abort() }
}

/// Formats `value` as lowercase hexadecimal, without leading zeros, into `buf`; returns
/// the digits written. No allocation.
pub fn format_hex(mut value: u64, buf: &mut [u8; 16]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b"0123456789abcdef"[(value & 0xf) as usize];
        value >>= 4;
        if value == 0 {
            break;
        }
    }
    &buf[i..]
}

/// Writes all of `bytes` to file descriptor 2, retrying short writes and `EINTR`; gives up
/// silently on any other error (there is nowhere left to report it).
pub fn write_stderr(bytes: &[u8]) {
    let mut rest = bytes;
    while !rest.is_empty() {
        // SAFETY: `rest` is a valid readable buffer of `rest.len()` bytes.
        let n = unsafe { libc::write(2, rest.as_ptr().cast(), rest.len()) };
        if n > 0 {
            rest = &rest[n as usize..];
        } else if n < 0 && crate::sys::errno() == libc::EINTR {
            continue;
        } else {
            return;
        }
    }
}

/// Formats `value` as decimal into `buf` without allocating; returns the digits written.
///
/// Used by the exit-time statistics and by tests; never by a request path.
pub fn format_decimal(mut value: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            break;
        }
    }
    &buf[i..]
}

/// Whether the always-on free checks are compiled in (cargo feature `free-checks`, on by
/// default): every freed small object carries [`free_key`] in its second word, checked on
/// free and cleared on allocation, as glibc's tcache does.
pub const FREE_CHECKS: bool = cfg!(feature = "free-checks");

/// Whether this is the hardened build (cargo feature `hardened`, off by default; see
/// `docs/robustness.md`): for code outside the crate, such as the C library's sized frees,
/// which check the size against the class when it is on.
pub const HARDENED: bool = cfg!(feature = "hardened");

/// The per-process double-free key. Starts as a fixed odd constant and is replaced by a
/// random value when the process first sets up (`seed_free_key`). An object freed before
/// the reseed carries the old key, so a double free of it is missed, never misreported.
static FREE_KEY: core::sync::atomic::AtomicU64 =
    core::sync::atomic::AtomicU64::new(0x9e37_79b9_7f4a_7c15);

/// The current double-free key.
#[inline(always)]
pub fn free_key() -> u64 {
    FREE_KEY.load(core::sync::atomic::Ordering::Relaxed)
}

/// Replaces the double-free key with a random one from the kernel (no allocation).
pub fn seed_free_key() {
    let mut key = [0u64];
    if !crate::sys::random_words(&mut key) {
        return;
    }
    let [key] = key;
    if key != 0 {
        FREE_KEY.store(key | 1, core::sync::atomic::Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal_formatting() {
        let mut buf = [0u8; 20];
        assert_eq!(format_decimal(0, &mut buf), b"0");
        assert_eq!(format_decimal(1234567890, &mut buf), b"1234567890");
        assert_eq!(format_decimal(u64::MAX, &mut buf), b"18446744073709551615");
    }

    #[test]
    fn hex_formatting() {
        let mut buf = [0u8; 16];
        assert_eq!(format_hex(0, &mut buf), b"0");
        assert_eq!(format_hex(0x7f3a_0000_10c0, &mut buf), b"7f3a000010c0");
        assert_eq!(format_hex(u64::MAX, &mut buf), b"ffffffffffffffff");
    }
}
