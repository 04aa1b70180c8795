//! With `start_background_release()`, resident memory falls after the program frees what it
//! allocated even though it then makes no allocator call at all: it only sleeps (and reads
//! its RSS with raw system calls into a stack buffer, which allocate nothing).

#[global_allocator]
static A: spanalloc::SpanAlloc = spanalloc::SpanAlloc;

use std::alloc::{Layout, alloc, dealloc};
use std::time::{Duration, Instant};

/// Resident bytes, read from /proc/self/statm without allocating.
fn rss() -> usize {
    let mut buf = [0u8; 128];
    // SAFETY: a NUL-terminated path; `buf` is a valid buffer of its length.
    let n = unsafe {
        let fd = libc::open(c"/proc/self/statm".as_ptr(), libc::O_RDONLY);
        assert!(fd >= 0);
        let n = libc::read(fd, buf.as_mut_ptr().cast(), buf.len());
        libc::close(fd);
        n
    };
    assert!(n > 0);
    let text = &buf[..n as usize];
    let field = text.split(|&b| b == b' ').nth(1).unwrap();
    let pages = field
        .iter()
        .fold(0usize, |v, &d| v * 10 + (d - b'0') as usize);
    // SAFETY: sysconf has no preconditions.
    pages * unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize
}

#[test]
fn a_sleeping_program_gets_its_memory_back() {
    spanalloc::set_decay_ms(40);
    assert!(spanalloc::start_background_release());
    assert!(!spanalloc::start_background_release(), "started once");
    let start = rss();
    let small = Layout::from_size_align(512, 8).unwrap();
    let large = Layout::from_size_align(2 << 20, 8).unwrap();
    let mut ptrs: Vec<(*mut u8, Layout)> = Vec::with_capacity(300_000);
    for i in 0..300_000 {
        let layout = if i % 2000 == 0 { large } else { small };
        // SAFETY: non-zero layouts.
        let p = unsafe { alloc(layout) };
        assert!(!p.is_null());
        // SAFETY: touch every page of the object.
        unsafe { p.write_bytes(1, layout.size()) };
        ptrs.push((p, layout));
    }
    let peak = rss();
    assert!(peak > start + (200 << 20), "the test made memory resident");
    for (p, layout) in ptrs.drain(..) {
        // SAFETY: allocated above, freed once.
        unsafe { dealloc(p, layout) };
    }
    drop(ptrs);
    // From here on: no allocator call on this thread, only sleeping and raw reads.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        std::thread::sleep(Duration::from_millis(20));
        let now = rss();
        if now < start + (peak - start) / 10 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "RSS stayed at {now} (start {start}, peak {peak})"
        );
    }
}
