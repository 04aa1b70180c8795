//! Property test: random sequences of alloc / alloc_zeroed / free / dealloc / realloc /
//! hand-to-another-thread through the global allocator's `raw` API, against a shadow model
//! of the live blocks: every block is aligned, no two live blocks overlap, contents are
//! kept (through realloc too), zeroed blocks read zero, `usable_size` covers the request.
//! And freed means counted and reusable: after each sequence, with everything freed, the
//! bytes the statistics count as held by the program are back where they started, and the
//! memory mapped stops growing (run in a child process, where nothing else allocates).

mod common;

use proptest::prelude::*;
use proptest::strategy::ValueTree;
use spanalloc::{SpanAlloc, raw};
use std::collections::BTreeMap;
use std::sync::mpsc;

#[global_allocator]
static A: SpanAlloc = SpanAlloc;

#[derive(Clone, Debug)]
enum Op {
    Alloc {
        size: usize,
        align_shift: u32,
        zeroed: bool,
    },
    /// Free the live block picked by `pick` (mod the number of live blocks) with `free`.
    Free {
        pick: usize,
    },
    /// Free it with the sized `dealloc`.
    Dealloc {
        pick: usize,
    },
    Realloc {
        pick: usize,
        size: usize,
    },
    /// Hand it to the helper thread, which checks it and frees it.
    HandOff {
        pick: usize,
    },
    /// The helper thread allocates a block and hands it to us.
    Remote {
        size: usize,
    },
    /// Flush this thread's cache.
    Flush,
}

fn size_strategy() -> impl Strategy<Value = usize> {
    prop_oneof![
        8 => 0usize..=256,
        4 => 257usize..=1024,
        3 => 1025usize..=32 * 1024,
        1 => 32 * 1024usize..=300_000,
    ]
}

fn op_strategy() -> impl Strategy<Value = Op> {
    prop_oneof![
        10 => (size_strategy(), prop_oneof![6 => 0u32..=3, 3 => 4u32..=12, 1 => 13u32..=16], any::<bool>())
            .prop_map(|(size, align_shift, zeroed)| Op::Alloc { size, align_shift, zeroed }),
        4 => any::<usize>().prop_map(|pick| Op::Free { pick }),
        3 => any::<usize>().prop_map(|pick| Op::Dealloc { pick }),
        3 => (any::<usize>(), size_strategy()).prop_map(|(pick, size)| Op::Realloc { pick, size }),
        2 => any::<usize>().prop_map(|pick| Op::HandOff { pick }),
        2 => size_strategy().prop_map(|size| Op::Remote { size }),
        1 => Just(Op::Flush),
    ]
}

/// A live block in the model.
#[derive(Clone, Copy, Debug)]
struct Block {
    size: usize,
    align: usize,
    fill: u8,
}

/// Requests the helper thread serves.
enum Req {
    /// Check that the block holds `fill` and free it.
    Free(usize, usize, u8),
    /// Allocate `size` bytes filled with `fill` and send back the address.
    Alloc(usize, u8),
}

fn check_fill(p: usize, size: usize, fill: u8) -> Result<(), TestCaseError> {
    // SAFETY: a live block of at least `size` bytes.
    let s = unsafe { core::slice::from_raw_parts(p as *const u8, size) };
    if let Some(i) = s.iter().position(|&b| b != fill) {
        return Err(TestCaseError::fail(format!(
            "block {p:#x} ({size} bytes) byte {i} is {:#x}, want {fill:#x}",
            s[i]
        )));
    }
    Ok(())
}

struct Model {
    live: BTreeMap<usize, Block>,
    next_fill: u8,
}

impl Model {
    fn fill(&mut self) -> u8 {
        self.next_fill = self.next_fill.wrapping_add(1);
        self.next_fill
    }

    /// Records a new block at `p`, checking alignment, usable size and no overlap.
    fn add(&mut self, p: usize, b: Block) -> Result<(), TestCaseError> {
        prop_assert!(p != 0, "allocation of {} bytes failed", b.size);
        prop_assert_eq!(p % b.align, 0, "block {:#x} not aligned to {}", p, b.align);
        // SAFETY: a live block of ours.
        let usable = unsafe { raw::usable_size(p as *mut u8) };
        prop_assert!(usable >= b.size, "usable_size {} < {}", usable, b.size);
        let end = p + b.size.max(1);
        if let Some((&q, qb)) = self.live.range(..end).next_back() {
            prop_assert!(
                q + qb.size.max(1) <= p || q >= end,
                "{:#x}+{} overlaps {:#x}+{}",
                p,
                b.size,
                q,
                qb.size
            );
        }
        if let Some((&q, _)) = self.live.range(p..).next() {
            prop_assert!(q >= end, "{:#x}+{} overlaps {:#x}", p, b.size, q);
        }
        self.live.insert(p, b);
        Ok(())
    }

    fn pick(&mut self, pick: usize) -> Option<(usize, Block)> {
        if self.live.is_empty() {
            return None;
        }
        let p = *self.live.keys().nth(pick % self.live.len()).unwrap();
        let b = self.live.remove(&p).unwrap();
        Some((p, b))
    }
}

fn run_ops(ops: &[Op]) -> Result<(), TestCaseError> {
    let (req_tx, req_rx) = mpsc::channel::<Req>();
    let (resp_tx, resp_rx) = mpsc::channel::<Result<usize, String>>();
    let helper = std::thread::spawn(move || {
        for req in req_rx {
            let resp = match req {
                Req::Free(p, size, fill) => match check_fill(p, size, fill) {
                    Ok(()) => {
                        // SAFETY: a live block handed to this thread, freed once.
                        unsafe { raw::free(p as *mut u8) };
                        Ok(0)
                    }
                    Err(e) => Err(e.to_string()),
                },
                Req::Alloc(size, fill) => {
                    // SAFETY: 8 is a power of two.
                    let p = unsafe { raw::alloc(size, 8) };
                    if !p.is_null() {
                        // SAFETY: a new block of `size` bytes.
                        unsafe { p.write_bytes(fill, size) };
                    }
                    Ok(p as usize)
                }
            };
            resp_tx.send(resp).unwrap();
        }
    });
    let mut m = Model {
        live: BTreeMap::new(),
        next_fill: 0,
    };
    let result = (|| -> Result<(), TestCaseError> {
        for op in ops {
            match *op {
                Op::Alloc {
                    size,
                    align_shift,
                    zeroed,
                } => {
                    let align = 1usize << align_shift;
                    // SAFETY: `align` is a power of two.
                    let p = unsafe {
                        if zeroed {
                            raw::alloc_zeroed(size, align)
                        } else {
                            raw::alloc(size, align)
                        }
                    };
                    let fill = m.fill();
                    m.add(p as usize, Block { size, align, fill })?;
                    if zeroed {
                        check_fill(p as usize, size, 0)?;
                    }
                    // SAFETY: a new block of `size` bytes.
                    unsafe { p.write_bytes(fill, size) };
                }
                Op::Free { pick } | Op::Dealloc { pick } => {
                    if let Some((p, b)) = m.pick(pick) {
                        check_fill(p, b.size, b.fill)?;
                        // SAFETY: a live block of ours, freed once.
                        unsafe {
                            if matches!(op, Op::Free { .. }) {
                                raw::free(p as *mut u8);
                            } else if b.size > 0 {
                                raw::dealloc(p as *mut u8, b.size, b.align);
                            } else {
                                raw::free(p as *mut u8);
                            }
                        }
                    }
                }
                Op::Realloc { pick, size } => {
                    if let Some((p, b)) = m.pick(pick) {
                        check_fill(p, b.size, b.fill)?;
                        // SAFETY: a live block of ours with alignment `b.align`.
                        let q = unsafe { raw::realloc(p as *mut u8, size, b.align) } as usize;
                        prop_assert!(q != 0, "realloc to {} failed", size);
                        check_fill(q, size.min(b.size), b.fill)?;
                        let fill = m.fill();
                        m.add(
                            q,
                            Block {
                                size,
                                align: b.align,
                                fill,
                            },
                        )?;
                        // SAFETY: the resized block of `size` bytes.
                        unsafe { (q as *mut u8).write_bytes(fill, size) };
                    }
                }
                Op::HandOff { pick } => {
                    if let Some((p, b)) = m.pick(pick) {
                        req_tx.send(Req::Free(p, b.size, b.fill)).unwrap();
                        resp_rx.recv().unwrap().map_err(TestCaseError::fail)?;
                    }
                }
                Op::Remote { size } => {
                    let fill = m.fill();
                    req_tx.send(Req::Alloc(size, fill)).unwrap();
                    let p = resp_rx.recv().unwrap().map_err(TestCaseError::fail)?;
                    m.add(
                        p,
                        Block {
                            size,
                            align: 8,
                            fill,
                        },
                    )?;
                    check_fill(p, size, fill)?;
                }
                Op::Flush => spanalloc::flush_thread_cache(),
            }
        }
        for (&p, b) in &m.live {
            check_fill(p, b.size, b.fill)?;
        }
        Ok(())
    })();
    // Free whatever is left, success or not.
    for (p, _) in std::mem::take(&mut m.live) {
        // SAFETY: live blocks of ours, freed once.
        unsafe { raw::free(p as *mut u8) };
    }
    drop(req_tx);
    helper.join().unwrap();
    result
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn allocator_matches_the_shadow_model(ops in prop::collection::vec(op_strategy(), 1..300)) {
        run_ops(&ops)?;
    }
}

#[test]
fn heap_invariants_hold_after_the_model_runs() {
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let strategy = prop::collection::vec(op_strategy(), 50..200);
    for _ in 0..20 {
        let ops = strategy.new_tree(&mut runner).unwrap().current();
        run_ops(&ops).unwrap();
        spanalloc::internals::heap().check_invariants();
    }
}

/// The "freed means counted and reusable" oracle. In a child process (this test alone, so no
/// other test's allocations move the figures): 40 sequences from the deterministic runner;
/// before and after each, with this thread's cache flushed (the helper thread has exited and
/// flushed its own), the bytes held by the program (small objects at class size plus large
/// spans) must be equal, and the heap's invariants hold. A free that was dropped or counted
/// twice, an object lost between caches and central lists, or a large span kept in use
/// breaks the equality. The memory mapped after the last sequence may not exceed what the
/// first ten needed plus 64 MiB: the same work again must reuse what was freed.
#[test]
fn freed_blocks_are_counted_and_reused() {
    common::child_test(
        "freed_blocks_are_counted_and_reused",
        std::time::Duration::from_secs(300),
        || {
            let mut runner = proptest::test_runner::TestRunner::deterministic();
            let strategy = prop::collection::vec(op_strategy(), 50..300);
            let sequences: Vec<Vec<Op>> = (0..40)
                .map(|_| strategy.new_tree(&mut runner).unwrap().current())
                .collect();
            let held = || {
                spanalloc::flush_thread_cache();
                let s = spanalloc::stats();
                s.in_use + s.large_in_use
            };
            // Three sequences first, unmeasured: the first thread spawns settle std's lazily
            // made state.
            for ops in &sequences[..3] {
                run_ops(ops).unwrap();
            }
            let mut mapped_after_ten = 0;
            for (i, ops) in sequences.iter().enumerate() {
                let before = held();
                run_ops(ops).unwrap();
                let after = held();
                assert_eq!(after, before, "sequence {i}: bytes held before and after");
                spanalloc::internals::heap().check_invariants();
                let mapped = spanalloc::stats().mapped;
                if i == 9 {
                    mapped_after_ten = mapped;
                }
                if i > 9 {
                    assert!(
                        mapped <= mapped_after_ten + (64 << 20),
                        "sequence {i}: {mapped} bytes mapped, {mapped_after_ten} after ten"
                    );
                }
            }
        },
    );
}
