//! Absurd sizes and alignments: null, never a small block, never a crash; the heap works
//! normally afterwards.

use core::alloc::{GlobalAlloc, Layout};
use spanalloc::{SpanAlloc, raw};

#[global_allocator]
static A: SpanAlloc = SpanAlloc;

/// Sizes no allocator can serve.
fn absurd_sizes() -> Vec<usize> {
    let half = isize::MAX as usize + 1;
    vec![
        usize::MAX,
        usize::MAX - 1,
        usize::MAX - 4095,
        usize::MAX - (1 << 20),
        half,
        half + 1,
        half + 8192,
        isize::MAX as usize,
        isize::MAX as usize - 7,
        isize::MAX as usize - 4095,
        isize::MAX as usize - (1 << 30),
        1 << 62,
        1 << 60,
        1 << 56,
        // 256 TiB: more than a 48-bit address space.
        1 << 48,
    ]
}

const ALIGNS: [usize; 8] = [1, 8, 16, 4096, 8192, 1 << 16, 1 << 21, 1 << 30];

/// Checks that the heap still serves ordinary requests and is consistent.
fn heap_still_works() {
    for size in [1usize, 8, 100, 1000, 5000, 40_000, 1 << 20] {
        // SAFETY: ordinary requests, freed once.
        unsafe {
            let p = raw::alloc(size, 8);
            assert!(
                !p.is_null(),
                "ordinary alloc of {size} after absurd requests"
            );
            p.write_bytes(0x11, size);
            assert!(raw::usable_size(p) >= size);
            raw::free(p);
        }
    }
    spanalloc::internals::heap().check_invariants();
}

#[test]
fn raw_alloc_of_absurd_sizes_is_null() {
    for size in absurd_sizes() {
        for align in ALIGNS {
            // SAFETY: `align` is a power of two.
            let p = unsafe { raw::alloc(size, align) };
            assert!(p.is_null(), "raw::alloc({size:#x}, {align}) gave {p:?}");
            // SAFETY: as above.
            let z = unsafe { raw::alloc_zeroed(size, align) };
            assert!(
                z.is_null(),
                "raw::alloc_zeroed({size:#x}, {align}) gave {z:?}"
            );
        }
    }
    heap_still_works();
}

#[test]
fn raw_alloc_of_near_maximum_sizes_with_huge_alignments_is_null() {
    // size + align overflows, or rounds up past the address space.
    for shift in [12u32, 20, 30, 40, 47, 48, 62, 63] {
        let align = 1usize << shift;
        for size in [
            usize::MAX - align + 1,
            usize::MAX - align + 2,
            (isize::MAX as usize).saturating_sub(align) + 1,
        ] {
            // SAFETY: `align` is a power of two.
            let p = unsafe { raw::alloc(size, align) };
            assert!(p.is_null(), "raw::alloc({size:#x}, {align:#x}) gave {p:?}");
            // SAFETY: as above.
            let z = unsafe { raw::alloc_zeroed(size, align) };
            assert!(
                z.is_null(),
                "raw::alloc_zeroed({size:#x}, {align:#x}) gave {z:?}"
            );
        }
    }
    heap_still_works();
}

#[test]
fn small_sizes_with_absurd_alignments_are_null_or_correct() {
    // An alignment of 2^47 or more cannot be met inside a 48-bit address space except at
    // address 0; such requests must be null. Smaller huge alignments may be served, but
    // then correctly (aligned, of full size), never as a small block.
    for shift in [47u32, 48, 56, 62, 63] {
        let align = 1usize << shift;
        for size in [1usize, 8, 64, 4096] {
            // SAFETY: `align` is a power of two.
            let p = unsafe { raw::alloc(size, align) };
            assert!(p.is_null(), "raw::alloc({size}, 2^{shift}) gave {p:?}");
        }
    }
    for shift in [16u32, 21, 26] {
        let align = 1usize << shift;
        for size in [1usize, 8, 64, 4096, 40_000] {
            // SAFETY: `align` is a power of two.
            let p = unsafe { raw::alloc(size, align) };
            assert!(!p.is_null(), "raw::alloc({size}, 2^{shift})");
            assert_eq!(
                p as usize % align,
                0,
                "raw::alloc({size}, 2^{shift}) misaligned"
            );
            // SAFETY: a live object of ours.
            unsafe {
                assert!(raw::usable_size(p) >= size);
                p.write_bytes(0x22, size);
                raw::free(p);
            }
        }
    }
    heap_still_works();
}

#[test]
fn realloc_to_absurd_sizes_is_null_and_keeps_the_block() {
    for old_size in [24usize, 1000, 100_000] {
        for new_size in absurd_sizes() {
            // SAFETY: a live block of ours; on null it stays ours and intact.
            unsafe {
                let p = raw::alloc(old_size, 8);
                assert!(!p.is_null());
                for i in 0..old_size {
                    *p.add(i) = i as u8;
                }
                let q = raw::realloc(p, new_size, 8);
                assert!(
                    q.is_null(),
                    "raw::realloc({old_size} -> {new_size:#x}) gave {q:?}"
                );
                for i in 0..old_size {
                    assert_eq!(*p.add(i), i as u8, "realloc failure kept the contents");
                }
                assert!(raw::usable_size(p) >= old_size);
                raw::free(p);
            }
        }
    }
    heap_still_works();
}

/// The largest valid `Layout` sizes for `align`, and a few just below.
fn near_max_layouts() -> Vec<Layout> {
    let mut v = Vec::new();
    for align in ALIGNS.into_iter().chain([1 << 40, 1 << 47, 1 << 62]) {
        let max = isize::MAX as usize - (align - 1);
        for size in [max, max - max % align, max / 2 + 1, 1 << 48, 1 << 47] {
            if let Ok(l) = Layout::from_size_align(size, align) {
                v.push(l);
            }
        }
    }
    assert!(v.len() > 20);
    v
}

#[test]
fn global_alloc_of_near_maximum_layouts_is_null() {
    for layout in near_max_layouts() {
        // SAFETY: non-zero size.
        let p = unsafe { A.alloc(layout) };
        assert!(p.is_null(), "GlobalAlloc::alloc({layout:?}) gave {p:?}");
        // SAFETY: non-zero size.
        let z = unsafe { A.alloc_zeroed(layout) };
        assert!(
            z.is_null(),
            "GlobalAlloc::alloc_zeroed({layout:?}) gave {z:?}"
        );
    }
    heap_still_works();
}

#[test]
fn global_realloc_to_near_maximum_sizes_is_null_and_keeps_the_block() {
    for old_size in [8usize, 200, 20_000, 300_000] {
        let layout = Layout::from_size_align(old_size, 8).unwrap();
        for new_size in [
            isize::MAX as usize - 7,
            isize::MAX as usize / 2,
            1 << 48,
            1 << 47,
        ] {
            // SAFETY: a live block of ours; `new_size` rounded up to 8 fits in isize.
            unsafe {
                let p = A.alloc(layout);
                assert!(!p.is_null());
                p.write_bytes(0x77, old_size);
                let q = A.realloc(p, layout, new_size);
                assert!(
                    q.is_null(),
                    "GlobalAlloc::realloc({old_size} -> {new_size:#x}) gave {q:?}"
                );
                assert!((0..old_size).all(|i| *p.add(i) == 0x77), "contents kept");
                A.dealloc(p, layout);
            }
        }
    }
    heap_still_works();
}

#[test]
fn std_collections_report_capacity_overflow_instead_of_corrupting() {
    // Sizes std accepts as a `Layout` reach the global allocator, which returns null; sizes
    // past `isize::MAX` bytes are refused by std itself, before it.
    let mut v: Vec<u8> = Vec::new();
    assert!(allocator_refused(v.try_reserve(isize::MAX as usize - 64)));
    assert!(allocator_refused(v.try_reserve(1 << 47)));
    let mut w: Vec<u64> = vec![1, 2, 3];
    assert!(w.try_reserve(1 << 60).is_err());
    assert_eq!(w, [1, 2, 3]);
    heap_still_works();
}

/// Whether `r` failed because the allocator returned null (not because std found the
/// capacity too large before asking it). `TryReserveErrorKind` is unstable; its `Display`
/// tells the two apart.
fn allocator_refused(r: Result<(), std::collections::TryReserveError>) -> bool {
    match r {
        Ok(()) => false,
        Err(e) => e.to_string().contains("allocator returned an error"),
    }
}

/// A size larger than this machine's memory and swap together, and at least 64 GiB, when
/// the kernel checks such requests (`vm.overcommit_memory` 0, the heuristic, or 2, strict);
/// `None` under 1 (always overcommit), where the kernel grants any size and so does glibc.
/// Linux only: the commit check is Linux's.
#[cfg(target_os = "linux")]
fn beyond_memory_and_swap() -> Option<usize> {
    let mode = std::fs::read_to_string("/proc/sys/vm/overcommit_memory").ok()?;
    if mode.trim() == "1" {
        return None;
    }
    // SAFETY: an all-zero sysinfo is a valid value to fill.
    let mut info: libc::sysinfo = unsafe { core::mem::zeroed() };
    // SAFETY: `info` is a valid sysinfo to write.
    assert_eq!(unsafe { libc::sysinfo(&mut info) }, 0);
    let total = (info.totalram as usize + info.totalswap as usize) * info.mem_unit as usize;
    Some((2 * total).next_power_of_two().max(64 << 30))
}

#[cfg(target_os = "linux")]
#[test]
fn more_than_memory_and_swap_is_null_as_in_glibc() {
    // Mapped with MAP_NORESERVE, such a block would be granted and the process killed by
    // the OOM killer once it used it; the kernel's commit check refuses it at once.
    let Some(size) = beyond_memory_and_swap() else {
        eprintln!("skipped: vm.overcommit_memory = 1 grants any size");
        return;
    };
    let mapped = spanalloc::internals::heap().page_heap_stats().mapped;
    // SAFETY: 8 and 4096 are powers of two.
    unsafe {
        assert!(raw::alloc(size, 8).is_null(), "raw::alloc({size:#x})");
        assert!(raw::alloc_zeroed(size, 4096).is_null());
        let p = raw::alloc(1000, 8);
        assert!(!p.is_null());
        p.write_bytes(0x5c, 1000);
        assert!(raw::realloc(p, size, 8).is_null());
        assert!(
            (0..1000).all(|i| *p.add(i) == 0x5c),
            "realloc failure kept the block"
        );
        raw::free(p);
    }
    // Through std: `Vec::try_reserve` reaches spanalloc (the Layout is valid).
    let mut v: Vec<u8> = Vec::new();
    assert!(
        allocator_refused(v.try_reserve(size)),
        "Vec<u8>::try_reserve({size:#x})"
    );
    let mut w: Vec<u64> = vec![7; 3];
    assert!(allocator_refused(w.try_reserve_exact(size / 8)));
    assert_eq!(w, [7, 7, 7]);
    // Nothing of it was kept mapped (other tests may map a little meanwhile).
    let grown = spanalloc::internals::heap()
        .page_heap_stats()
        .mapped
        .saturating_sub(mapped);
    assert!(grown < 1 << 30, "{grown} bytes mapped by refused requests");
    heap_still_works();
}

#[test]
fn small_sizes_with_huge_alignments_cost_a_mapping_not_the_alignment() {
    // One byte aligned to 64 GiB .. 32 TiB: the padding is address space reserved for a
    // moment while the kernel places the mapping, never memory the heap maps and keeps.
    for shift in 36u32..=45 {
        let align = 1usize << shift;
        let mapped = spanalloc::internals::heap().page_heap_stats().mapped;
        // SAFETY: `align` is a power of two.
        let p = unsafe { raw::alloc(1, align) };
        if p.is_null() && std::env::var_os("SPANALLOC_UNDER_ASAN").is_some() {
            // ASan's shadow takes a large part of the address space.
            continue;
        }
        assert!(!p.is_null(), "raw::alloc(1, 2^{shift})");
        assert_eq!(p as usize % align, 0, "raw::alloc(1, 2^{shift}) misaligned");
        let grown = spanalloc::internals::heap()
            .page_heap_stats()
            .mapped
            .saturating_sub(mapped);
        assert!(
            grown < 1 << 30,
            "raw::alloc(1, 2^{shift}) mapped {grown} bytes"
        );
        // SAFETY: a live object of ours, freed once.
        unsafe {
            assert!(raw::usable_size(p) >= 1);
            p.write(0x33);
            raw::free(p);
        }
    }
    heap_still_works();
}
