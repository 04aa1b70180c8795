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
    spanalloc::heap().check_invariants();
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
    // `try_reserve` goes through the global allocator for sizes that pass Layout checks.
    let mut v: Vec<u8> = Vec::new();
    assert!(v.try_reserve(isize::MAX as usize - 64).is_err());
    assert!(v.try_reserve(1 << 47).is_err());
    let mut w: Vec<u64> = vec![1, 2, 3];
    assert!(w.try_reserve(1 << 60).is_err());
    assert_eq!(w, [1, 2, 3]);
    heap_still_works();
}
