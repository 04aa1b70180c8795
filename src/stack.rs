//! Stack capture for the heap profiler: the return addresses of the calling thread's
//! frames. See `lib.rs` for an overview and `docs/design.md` (section 10) for why it is
//! done this way.
//!
//! On x86-64 Linux the walk is this module's own: each frame's unwind rule (where the
//! caller's stack pointer, return address and frame pointer are) is read from the
//! `.eh_frame` unwind tables the first time its address is seen (`cfi.rs`, with the FDE found
//! by libgcc_s's `_Unwind_Find_FDE`) and kept in a table shared by all threads
//! (`rule_cache.rs`), so that a stack of frames seen before costs a few loads per frame; and
//! a thread's last walk is kept (`memo.rs`) and replayed, a load and a compare per frame,
//! while its stack holds the words that walk read (a loop sampled again and again). A
//! frame beyond that reader (a CFA computed by an expression, a signal frame, code without
//! unwind tables) hands the whole stack to the unwinder the toolchain links,
//! `_Unwind_Backtrace`, which is also what every other target uses.
//!
//! Safe inside the allocator: the buffer is the caller's (on its stack); neither walk
//! allocates (the Rust standard library links libgcc_s for panics already, so there is no
//! `dlopen` as glibc's `backtrace()` makes on its first call); the rule table's writer
//! takes it with one compare-and-swap or skips caching, and never waits. The only lock
//! either walk may take is the dynamic loader's recursive lock around `dl_iterate_phdr`
//! (once a walk that is not a replay, to read its count of unloaded objects; and in the
//! FDE search on glibc versions without `_dl_find_object`): no allocation path of ours
//! takes it. The caller holds no allocator lock while it captures. On macOS the unwinder
//! is the system's libunwind (reading `__unwind_info`); that it allocates nothing there is
//! expected, not checked (macOS is untested at run time).
//!
//! What the program needs for good stacks: unwind tables for its code, which Rust emits on
//! Linux by default (even with `panic = "abort"`) and GCC and Clang emit on x86-64 by
//! default (`-fasynchronous-unwind-tables`). Frame pointers are not needed. A frame with
//! no unwind information (hand-written assembly, JIT code) ends the stack there.

// Only x86-64 Linux walks stacks with them; elsewhere they are built and tested, unused.
#[cfg_attr(
    not(all(target_arch = "x86_64", target_os = "linux", not(miri))),
    allow(dead_code)
)]
mod cfi;
#[cfg_attr(
    not(all(target_arch = "x86_64", target_os = "linux", not(miri))),
    allow(dead_code)
)]
mod rule_cache;
// Only x86-64 Linux replays walks; elsewhere it is built, unused.
#[cfg_attr(
    not(all(target_arch = "x86_64", target_os = "linux", not(miri))),
    allow(dead_code)
)]
mod memo;

#[cfg(all(target_arch = "x86_64", target_os = "linux", not(miri)))]
pub use memo::WalkMemo;
pub use rule_cache::RuleCache;

/// Where only `_Unwind_Backtrace` walks, there is no walk to remember: the thread's slot
/// holds nothing for it.
#[cfg(not(all(target_arch = "x86_64", target_os = "linux", not(miri))))]
#[derive(Default)]
pub struct WalkMemo;

#[cfg(not(all(target_arch = "x86_64", target_os = "linux", not(miri))))]
impl WalkMemo {
    /// The empty memo.
    pub const fn new() -> WalkMemo {
        WalkMemo
    }

    /// Nothing is kept: null.
    pub fn tag(&self) -> *mut () {
        core::ptr::null_mut()
    }

    /// Nothing is kept.
    pub fn set_tag(&mut self, _tag: *mut ()) {}
}

use core::ffi::{c_int, c_void};

/// The most frames a sample keeps (the innermost ones).
pub const MAX_FRAMES: usize = 64;

/// Writes the return addresses of the calling thread's frames into `out`, innermost first,
/// leaving out this function's own frame and `skip` more; returns how many it wrote. Makes
/// no allocation and takes no lock of the allocator's.
///
/// On x86-64 Linux it walks the stack itself with the rules in `rules`, reading a frame's
/// rule from the unwind tables (found with the toolchain's `_Unwind_Find_FDE`) the first
/// time its address is seen; a stack with a frame beyond that reader is walked again by
/// `_Unwind_Backtrace`. Elsewhere `_Unwind_Backtrace` walks every stack. With `memo` (the
/// calling thread's), a walk that would read the words the last one read is answered from
/// it (`memo.rs`).
#[inline(never)]
pub fn capture(
    out: &mut [usize],
    skip: usize,
    rules: &RuleCache,
    memo: Option<&mut WalkMemo>,
) -> usize {
    if out.is_empty() {
        return 0;
    }
    #[cfg(all(target_arch = "x86_64", target_os = "linux", not(miri)))]
    {
        let here = walk::Registers::here();
        if let Some(n) = walk::walk(here, out, skip, rules, memo) {
            return core::hint::black_box(n);
        }
    }
    #[cfg(not(all(target_arch = "x86_64", target_os = "linux", not(miri))))]
    let _ = (rules, memo);
    // Keeps this frame from being a tail call, so that `skip` counts right: the `+ 1` is
    // this function's own frame.
    core::hint::black_box(capture_with_unwinder(out, skip + 1))
}

#[repr(C)]
struct UnwindContext {
    _opaque: [u8; 0],
}

type TraceFn = extern "C" fn(ctx: *mut UnwindContext, arg: *mut c_void) -> c_int;

/// `_URC_NO_REASON`: go on to the next frame.
const URC_NO_REASON: c_int = 0;
/// `_URC_NORMAL_STOP`: stop here.
const URC_NORMAL_STOP: c_int = 4;

// libgcc_s, linked by the standard library on every Linux target (its unwinding uses it);
// on macOS the system's libunwind, part of libSystem.
unsafe extern "C" {
    fn _Unwind_Backtrace(trace: TraceFn, arg: *mut c_void) -> c_int;
    fn _Unwind_GetIP(ctx: *mut UnwindContext) -> usize;
}

/// Where the callback writes.
struct Frames<'a> {
    out: &'a mut [usize],
    len: usize,
    skip: usize,
}

extern "C" fn on_frame(ctx: *mut UnwindContext, arg: *mut c_void) -> c_int {
    // SAFETY: `arg` is the `Frames` that `capture_with_unwinder` passed, alive for the
    // whole walk and used by nothing else meanwhile.
    let frames = unsafe { &mut *arg.cast::<Frames<'_>>() };
    // SAFETY: `ctx` is the unwinder's context for the current frame.
    let ip = unsafe { _Unwind_GetIP(ctx) };
    if ip == 0 {
        return URC_NORMAL_STOP;
    }
    if frames.skip > 0 {
        frames.skip -= 1;
        return URC_NO_REASON;
    }
    frames.out[frames.len] = ip;
    frames.len += 1;
    if frames.len == frames.out.len() {
        URC_NORMAL_STOP
    } else {
        URC_NO_REASON
    }
}

/// [`capture`] by the toolchain's unwinder: leaves out its own frame and `skip` more.
#[inline(never)]
fn capture_with_unwinder(out: &mut [usize], skip: usize) -> usize {
    let mut frames = Frames { out, len: 0, skip };
    // The first frame the unwinder reports is this function's own (where it called
    // `_Unwind_Backtrace`).
    frames.skip += 1;
    // SAFETY: `on_frame` matches the callback type and only touches `frames`.
    unsafe { _Unwind_Backtrace(on_frame, (&raw mut frames).cast()) };
    let len = frames.len;
    core::hint::black_box(len)
}

/// The walk by cached rules (x86-64 Linux).
#[cfg(all(target_arch = "x86_64", target_os = "linux", not(miri)))]
mod walk {
    use super::cfi::{self, FrameRule, SavedRbp};
    use super::{RuleCache, WalkMemo};
    use core::ffi::{c_int, c_void};

    /// The largest frame the walk believes: a CFA further than this above the stack
    /// pointer is taken for a broken stack, and the stack ends there.
    const MAX_FRAME_BYTES: usize = 64 << 20;

    /// The registers a frame's caller is found from.
    #[derive(Clone, Copy)]
    pub struct Registers {
        pc: usize,
        rsp: usize,
        rbp: usize,
    }

    impl Registers {
        /// The caller's registers, at a point inside it (inlined into [`super::capture`], so
        /// that its frame is the first the walk steps out of).
        #[inline(always)]
        pub fn here() -> Registers {
            let (pc, rsp, rbp): (usize, usize, usize);
            // SAFETY: reads three registers; touches no memory.
            unsafe {
                core::arch::asm!(
                    "lea {pc}, [rip]",
                    "mov {rsp}, rsp",
                    "mov {rbp}, rbp",
                    pc = out(reg) pc,
                    rsp = out(reg) rsp,
                    rbp = out(reg) rbp,
                    options(nomem, nostack, preserves_flags),
                );
            }
            Registers { pc, rsp, rbp }
        }

        /// Made-up registers, for walks over made-up stacks.
        #[cfg(test)]
        pub fn at(pc: usize, rsp: usize, rbp: usize) -> Registers {
            Registers { pc, rsp, rbp }
        }
    }

    #[repr(C)]
    struct DwarfEhBases {
        tbase: *mut c_void,
        dbase: *mut c_void,
        func: *mut c_void,
    }

    unsafe extern "C" {
        /// libgcc_s's lookup of the FDE covering `pc` (what `_Unwind_Backtrace` uses too):
        /// the entry's address, or null; `bases.func` is where its function starts.
        fn _Unwind_Find_FDE(pc: *mut c_void, bases: *mut DwarfEhBases) -> *const u8;
    }

    /// Walks the stack from `here` (the frame of [`super::capture`], left out) into `out`,
    /// leaving out `skip` more frames. `None`: a frame is beyond the cached rules' reader,
    /// and the toolchain's unwinder must walk this stack. With `memo`, replays the last walk
    /// if the stack holds the words it read, and else records this one there.
    #[inline(never)]
    pub fn walk(
        here: Registers,
        out: &mut [usize],
        skip: usize,
        rules: &RuleCache,
        mut memo: Option<&mut WalkMemo>,
    ) -> Option<usize> {
        let start = (here.pc, here.rsp, here.rbp);
        // The last walk first: a replay uses no rule, so it needs no count of unloaded
        // objects (see `memo.rs`), whose reading takes the C library's lock.
        if let Some(m) = memo.as_deref_mut() {
            if let Some(n) = m.replay(start, out, skip) {
                return Some(n);
            }
            m.start(start, skip, out.len());
        }
        let unloads = rules.read_unloads(unloaded_objects);
        let cached = unloads.is_some_and(|u| rules.begin(u));
        let n = walk_rules(here, out, skip, rules, cached, memo.as_deref_mut());
        if let (Some(m), Some(n)) = (memo, n) {
            m.finish(n);
        }
        n
    }

    /// [`walk`] by the rules (from `rules` if `cached`), each level's reads recorded in
    /// `memo`.
    #[inline(always)]
    fn walk_rules(
        here: Registers,
        out: &mut [usize],
        mut skip: usize,
        rules: &RuleCache,
        cached: bool,
        mut memo: Option<&mut WalkMemo>,
    ) -> Option<usize> {
        let Registers {
            mut pc,
            mut rsp,
            mut rbp,
        } = here;
        let mut len = 0;
        // The first frame is looked up at the address read there; the others at their
        // return address minus one, inside the call.
        let mut lookup = pc;
        loop {
            let rule = match cached.then(|| rules.get(lookup)).flatten() {
                Some(word) => FrameRule::unpack(word),
                None => {
                    // SAFETY: `lookup` is an address in a frame of this thread's stack,
                    // so in code that stays loaded while this walk runs.
                    let rule = unsafe { read_rule(lookup) };
                    if cached {
                        rules.put(lookup, rule.pack());
                    }
                    // Through the cache's packing, as a hit would see it.
                    FrameRule::unpack(rule.pack())
                }
            };
            let step = match rule {
                FrameRule::Step(step) => step,
                FrameRule::End => return Some(len),
                FrameRule::Unsupported => return None,
            };
            let base = if step.cfa_from_rbp {
                if let Some(m) = memo.as_deref_mut() {
                    m.rbp_used();
                }
                rbp
            } else {
                rsp
            };
            let cfa = base.wrapping_add(step.cfa_offset as isize as usize);
            // A CFA implausibly far above the stack pointer (or below it: the difference
            // wraps), or a slot outside this frame (so none if the CFA is the stack
            // pointer): the stack is not what the rules say. It ends here.
            if cfa.wrapping_sub(rsp) > MAX_FRAME_BYTES {
                return Some(len);
            }
            let slot = |offset: i32| {
                let at = cfa.wrapping_add(offset as isize as usize);
                (at >= rsp && at < cfa && at % 8 == 0).then_some(at)
            };
            let Some(ra_at) = slot(step.ra_offset) else {
                return Some(len);
            };
            let rbp_at = match step.rbp {
                SavedRbp::Same => None,
                SavedRbp::Undefined => Some(None),
                SavedRbp::At(offset) => match slot(offset) {
                    Some(at) => Some(Some(at)),
                    None => return Some(len),
                },
            };
            // SAFETY: `ra_at` and `rbp_at` are aligned words of the frame between this
            // frame's stack pointer and its CFA, on this thread's stack, which the unwind
            // rules place there; the frames above `capture` stay put while it runs.
            unsafe {
                pc = core::ptr::read_volatile(ra_at as *const usize);
                if let Some(at) = rbp_at {
                    rbp = at.map_or(0, |at| core::ptr::read_volatile(at as *const usize));
                }
            }
            if let Some(m) = memo.as_deref_mut() {
                m.level(ra_at, pc, rbp_at.map(|at| at.map(|at| (at, rbp))));
            }
            rsp = cfa;
            if pc == 0 {
                return Some(len);
            }
            if skip > 0 {
                skip -= 1;
            } else {
                out[len] = pc;
                len += 1;
                if len == out.len() {
                    return Some(len);
                }
            }
            lookup = pc - 1;
        }
    }

    /// The rule at `address`, read from the unwind tables.
    ///
    /// # Safety
    /// `address` is in code that stays loaded meanwhile.
    unsafe fn read_rule(address: usize) -> FrameRule {
        let mut bases = DwarfEhBases {
            tbase: core::ptr::null_mut(),
            dbase: core::ptr::null_mut(),
            func: core::ptr::null_mut(),
        };
        // SAFETY: the lookup reads the loaded objects' tables; `bases` is ours.
        let fde = unsafe { _Unwind_Find_FDE(address as *mut c_void, &mut bases) };
        if fde.is_null() {
            return FrameRule::Unsupported;
        }
        // SAFETY: an FDE in a loaded object's `.eh_frame`: a 4-byte length, then a 4-byte
        // distance back from that field to its CIE, which has the same length field. A
        // 64-bit entry (length 0xffffffff) is left to the unwinder.
        unsafe {
            let entry = |at: *const u8| {
                let len = at.cast::<u32>().read_unaligned();
                (len != u32::MAX).then(|| core::slice::from_raw_parts(at, 4 + len as usize))
            };
            let Some(fde_bytes) = entry(fde) else {
                return FrameRule::Unsupported;
            };
            let back = fde.add(4).cast::<u32>().read_unaligned() as usize;
            let Some(cie_bytes) = entry(fde.add(4).wrapping_sub(back)) else {
                return FrameRule::Unsupported;
            };
            cfi::rule_at(cie_bytes, fde_bytes, bases.func as u64, address as u64)
        }
    }

    /// The C library's count of objects unloaded so far (`dlpi_subs`), read through
    /// `dl_iterate_phdr` from its first object.
    pub(super) fn unloaded_objects() -> u64 {
        unsafe extern "C" fn first(
            info: *mut libc::dl_phdr_info,
            size: usize,
            data: *mut c_void,
        ) -> c_int {
            let needed = core::mem::offset_of!(libc::dl_phdr_info, dlpi_subs) + 8;
            if size >= needed {
                // SAFETY: the C library passes its record of `size` bytes, which holds the
                // field, and `data` is the `u64` below.
                unsafe { *data.cast::<u64>() = (*info).dlpi_subs };
            }
            1
        }
        let mut subs = 0u64;
        // SAFETY: `first` matches the callback type and writes only `subs`.
        unsafe { libc::dl_iterate_phdr(Some(first), (&raw mut subs).cast()) };
        subs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A table of rules of its own per test, so that each starts cold.
    fn fresh_rules() -> Box<RuleCache> {
        Box::new(RuleCache::new())
    }

    #[inline(never)]
    fn two_deep(out: &mut [usize], rules: &RuleCache) -> usize {
        core::hint::black_box(one_deep(out, rules))
    }

    #[inline(never)]
    fn one_deep(out: &mut [usize], rules: &RuleCache) -> usize {
        core::hint::black_box(capture(out, 0, rules, None))
    }

    #[test]
    fn captures_the_callers_frames() {
        let rules = fresh_rules();
        for _ in 0..2 {
            let mut out = [0usize; MAX_FRAMES];
            let n = two_deep(&mut out, &rules);
            assert!(n >= 3, "{n} frames");
            assert!(out[..n].iter().all(|&ip| ip != 0));
            // The first frame is in `one_deep`, the second in `two_deep`: return addresses
            // just past their calls, so above each function's start.
            assert!(
                out[0] > one_deep as *const () as usize && out[1] > two_deep as *const () as usize
            );
        }
    }

    #[test]
    fn skip_and_a_short_buffer() {
        let rules = fresh_rules();
        let mut all = [0usize; MAX_FRAMES];
        let n = two_deep(&mut all, &rules);
        let mut short = [0usize; 2];
        assert_eq!(two_deep(&mut short, &rules), 2);
        assert_eq!(short, [all[0], all[1]]);
        let mut skipped = [0usize; MAX_FRAMES];
        let m = capture(&mut skipped, 1, &rules, None);
        assert!(m + 1 >= 1 && m < n + 8);
        assert_eq!(capture(&mut [], 0, &rules, None), 0);
    }

    /// A stack by the unwinder, and by the walk if it did not give up.
    #[cfg(all(target_arch = "x86_64", target_os = "linux", not(miri)))]
    type TwoWays = (Vec<usize>, Option<Vec<usize>>);

    /// The stack seen from the caller of this function: by the toolchain's unwinder, and by
    /// the walk with `rules` (`None` if the walk gave up on it).
    #[cfg(all(target_arch = "x86_64", target_os = "linux", not(miri)))]
    #[inline(never)]
    fn both_ways(rules: &RuleCache) -> TwoWays {
        let mut by_unwinder = [0usize; MAX_FRAMES + 1];
        let n = capture_with_unwinder(&mut by_unwinder, 0);
        let mut by_walk = [0usize; MAX_FRAMES];
        let here = walk::Registers::here();
        let m = walk::walk(here, &mut by_walk, 0, rules, None);
        // The unwinder's first frame is its return address into this function.
        let walked = m.map(|m| by_walk[..m].to_vec());
        core::hint::black_box((by_unwinder[1..n].to_vec(), walked))
    }

    #[cfg(all(target_arch = "x86_64", target_os = "linux", not(miri)))]
    #[inline(never)]
    fn recurse(depth: usize, rules: &RuleCache) -> TwoWays {
        // A frame of varying size, so that the CFA offsets differ per level.
        let mut pad = [0u8; 200];
        core::hint::black_box(&mut pad);
        if depth == 0 {
            return both_ways(rules);
        }
        let r = recurse(depth - 1, rules);
        core::hint::black_box(pad[depth % 200]);
        r
    }

    #[cfg(all(target_arch = "x86_64", target_os = "linux", not(miri)))]
    #[test]
    fn the_walk_finds_what_the_unwinder_finds() {
        let rules = fresh_rules();
        for depth in [0, 1, 5, 40, 80] {
            // Cold, then from the cache.
            for _ in 0..2 {
                let (expected, walked) = recurse(depth, &rules);
                assert_eq!(walked.as_deref(), Some(&expected[..]), "depth {depth}");
            }
        }
        // From a thread of its own (its stack ends in the C library's thread start).
        let rules = &*rules;
        std::thread::scope(|s| {
            s.spawn(|| {
                let (expected, walked) = recurse(3, rules);
                assert_eq!(walked.as_deref(), Some(&expected[..]));
            });
        });
        // With a writer holding the table: every rule read afresh.
        let busy = fresh_rules();
        let _hold = Hold::new(&busy);
        let (expected, walked) = recurse(2, &busy);
        assert_eq!(walked.as_deref(), Some(&expected[..]));
    }

    /// Keeps a table's write side, as a writer in progress does.
    #[cfg(all(target_arch = "x86_64", target_os = "linux", not(miri)))]
    struct Hold<'a>(&'a RuleCache);

    #[cfg(all(target_arch = "x86_64", target_os = "linux", not(miri)))]
    impl<'a> Hold<'a> {
        fn new(rules: &'a RuleCache) -> Self {
            rules.hold_for_test(true);
            Hold(rules)
        }
    }

    #[cfg(all(target_arch = "x86_64", target_os = "linux", not(miri)))]
    impl Drop for Hold<'_> {
        fn drop(&mut self) {
            self.0.hold_for_test(false);
        }
    }

    #[cfg(all(target_arch = "x86_64", target_os = "linux", not(miri)))]
    #[test]
    fn the_walk_through_c_frames() {
        // Frames of the C library between ours: `qsort` calls the comparison.
        use std::cell::RefCell;
        thread_local!(static SEEN: RefCell<Option<TwoWays>> = const { RefCell::new(None) });
        static RULES: RuleCache = RuleCache::new();
        extern "C" fn compare(a: *const libc::c_void, b: *const libc::c_void) -> libc::c_int {
            SEEN.with(|s| *s.borrow_mut() = Some(both_ways(&RULES)));
            // SAFETY: `qsort` passes pointers to two of the array's `u32`s.
            unsafe { (*a.cast::<u32>()).cmp(&*b.cast::<u32>()) as libc::c_int }
        }
        let mut values = [3u32, 1, 2];
        // SAFETY: the array, its length and element size, and a comparison of `u32`s.
        unsafe { libc::qsort(values.as_mut_ptr().cast(), 3, 4, Some(compare)) };
        assert_eq!(values, [1, 2, 3]);
        let (expected, walked) = SEEN.with(|s| s.borrow_mut().take()).unwrap();
        assert!(expected.len() > 3);
        assert_eq!(walked.as_deref(), Some(&expected[..]));
    }

    #[cfg(all(target_arch = "x86_64", target_os = "linux", not(miri)))]
    #[test]
    fn a_signal_frame_is_left_to_the_unwinder() {
        // In a signal handler, the stack passes through the C library's signal return
        // trampoline, whose unwind rule is an expression: the walk gives up, and `capture`
        // takes the unwinder's stack, which goes on past the interrupted frame.
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        static RULES: RuleCache = RuleCache::new();
        static GAVE_UP: AtomicBool = AtomicBool::new(false);
        static SAME: AtomicBool = AtomicBool::new(false);
        static DEPTH: AtomicUsize = AtomicUsize::new(0);
        extern "C" fn on_signal(_: libc::c_int) {
            // Nothing here allocates: arrays on the stack, atomics.
            let mut by_walk = [0usize; MAX_FRAMES];
            let here = walk::Registers::here();
            GAVE_UP.store(
                walk::walk(here, &mut by_walk, 0, &RULES, None).is_none(),
                Ordering::SeqCst,
            );
            let mut a = [0usize; MAX_FRAMES];
            let mut b = [0usize; MAX_FRAMES];
            let (n, m) = (
                capture(&mut a, 0, &RULES, None),
                capture_with_unwinder(&mut b, 0),
            );
            // Past the first frame (each one's own call site here) the two agree.
            SAME.store(n == m && a[1..n] == b[1..m], Ordering::SeqCst);
            DEPTH.store(n, Ordering::SeqCst);
        }
        // SAFETY: a handler for a signal nothing else in the tests uses (its default is to
        // ignore it), raised on this thread.
        unsafe {
            let mut action: libc::sigaction = core::mem::zeroed();
            action.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as usize;
            libc::sigaction(libc::SIGWINCH, &action, core::ptr::null_mut());
            libc::raise(libc::SIGWINCH);
        }
        assert!(GAVE_UP.load(Ordering::SeqCst));
        assert!(SAME.load(Ordering::SeqCst));
        // The handler, the trampoline, `raise` and this test's frames.
        assert!(DEPTH.load(Ordering::SeqCst) > 4);
    }

    /// A stack made up of `words`, walked with made-up rules: `rules` for the addresses
    /// 0x1000, 0x2000, ... in turn (each frame's return address is the next one plus one).
    #[cfg(all(target_arch = "x86_64", target_os = "linux", not(miri)))]
    fn walk_made_up(words: &[usize], rbp: usize, rules: &[cfi::FrameRule]) -> Option<Vec<usize>> {
        walk_made_up_into(MAX_FRAMES, 0, words, rbp, rules)
    }

    /// As `walk_made_up`, into a buffer of `frames`, leaving out `skip` frames.
    #[cfg(all(target_arch = "x86_64", target_os = "linux", not(miri)))]
    fn walk_made_up_into(
        frames: usize,
        skip: usize,
        words: &[usize],
        rbp: usize,
        rules: &[cfi::FrameRule],
    ) -> Option<Vec<usize>> {
        let cache = made_up_rules(rules);
        let mut out = vec![0usize; frames];
        let here = walk::Registers::at(0x1000, words.as_ptr() as usize, rbp);
        walk::walk(here, &mut out, skip, &cache, None).map(|n| out[..n].to_vec())
    }

    #[cfg(all(target_arch = "x86_64", target_os = "linux", not(miri)))]
    #[test]
    fn a_walk_follows_its_rules_and_stops_where_the_stack_is_broken() {
        use cfi::{FrameRule, SavedRbp, Step};
        let rsp_based = |cfa_offset, ra_offset, rbp| {
            FrameRule::Step(Step {
                cfa_from_rbp: false,
                cfa_offset,
                ra_offset,
                rbp,
            })
        };
        // Words no rule points to hold a return address, so that reading one shows.
        let mut stack = [0x7771usize; 16];
        let base = stack.as_ptr() as usize;
        // Frame 0: 16 bytes, rbp saved at its bottom, returns to 0x2001. Frame 1: CFA from
        // the rbp frame 0 saved (word 6), return address below it, returns to 0x3001.
        // Frame 2: the outermost.
        stack[0] = base + 6 * 8 - 16;
        stack[1] = 0x2001;
        stack[5] = 0x3001;
        let frame0 = rsp_based(16, -8, SavedRbp::At(-16));
        let frame1 = FrameRule::Step(Step {
            cfa_from_rbp: true,
            cfa_offset: 16,
            ra_offset: -8,
            rbp: SavedRbp::Same,
        });
        assert_eq!(
            walk_made_up(&stack, 0, &[frame0, frame1, FrameRule::End]),
            Some(vec![0x2001, 0x3001])
        );
        assert_eq!(
            walk_made_up_into(4, 1, &stack, 0, &[frame0, frame1, FrameRule::End]),
            Some(vec![0x3001])
        );
        // The same stack where frame 1's rule is beyond the reader: the walk gives up.
        assert_eq!(
            walk_made_up(&stack, 0, &[frame0, FrameRule::Unsupported]),
            None
        );
        // An undefined rbp is 0: frame 1's CFA is then below the stack pointer. (With rbp
        // unchanged instead, frame 1 is found from the rbp the walk started with.)
        let frame1_rbp = base + 6 * 8 - 16;
        let frame0_undefined = rsp_based(16, -8, SavedRbp::Undefined);
        assert_eq!(
            walk_made_up(
                &stack,
                frame1_rbp,
                &[frame0_undefined, frame1, FrameRule::End]
            ),
            Some(vec![0x2001])
        );
        let frame0_same = rsp_based(16, -8, SavedRbp::Same);
        assert_eq!(
            walk_made_up(&stack, frame1_rbp, &[frame0_same, frame1, FrameRule::End]),
            Some(vec![0x2001, 0x3001])
        );
        // Broken: a CFA at the stack pointer, one implausibly far above, a return address
        // or a saved rbp outside the frame, a misaligned slot: the stack ends there.
        for broken in [
            rsp_based(0, -8, SavedRbp::Same),
            rsp_based(64 << 20 | 8, -8, SavedRbp::Same),
            rsp_based(16, 0, SavedRbp::Same),
            rsp_based(16, -24, SavedRbp::Same),
            rsp_based(16, -8, SavedRbp::At(8)),
            rsp_based(16, -8, SavedRbp::At(-24)),
        ] {
            assert_eq!(
                walk_made_up(&stack, 0, &[broken]),
                Some(vec![]),
                "{broken:?}"
            );
            assert_eq!(
                walk_made_up(&stack, 0, &[frame0, broken]),
                Some(vec![0x2001]),
                "{broken:?}"
            );
        }
        let misaligned = FrameRule::Step(Step {
            cfa_from_rbp: true,
            cfa_offset: 3,
            ra_offset: -8,
            rbp: SavedRbp::Same,
        });
        assert_eq!(
            walk_made_up(&stack, 0, &[frame0, misaligned]),
            Some(vec![0x2001])
        );
        // A return address of 0 ends the stack; the buffer's length ends the walk.
        stack[5] = 0;
        assert_eq!(
            walk_made_up(&stack, 0, &[frame0, frame1, FrameRule::End]),
            Some(vec![0x2001])
        );
        // Eight frames of 16 bytes, each returning to the same address: a buffer of three
        // takes the first three.
        let looped = rsp_based(16, -8, SavedRbp::Same);
        let stack: [usize; 16] = core::array::from_fn(|i| if i % 2 == 1 { 0x1001 } else { 0 });
        assert_eq!(
            walk_made_up_into(3, 0, &stack, 0, &[looped]),
            Some(vec![0x1001; 3])
        );
    }

    /// Made-up rules in a table of their own: `rules` for the addresses 0x1000, 0x2000, ...
    /// in turn.
    #[cfg(all(target_arch = "x86_64", target_os = "linux", not(miri)))]
    fn made_up_rules(rules: &[cfi::FrameRule]) -> Box<RuleCache> {
        let cache = fresh_rules();
        assert!(cache.begin(walk::unloaded_objects()));
        for (i, rule) in rules.iter().enumerate() {
            cache.put(0x1000 * (i + 1), rule.pack());
        }
        cache
    }

    /// The rule of a 16-byte frame: the CFA 16 bytes above `rsp` (or `rbp`, if
    /// `cfa_from_rbp`), the return address just below it, the caller's `rbp` as `rbp` says.
    #[cfg(all(target_arch = "x86_64", target_os = "linux", not(miri)))]
    fn frame16(cfa_from_rbp: bool, rbp: cfi::SavedRbp) -> cfi::FrameRule {
        cfi::FrameRule::Step(cfi::Step {
            cfa_from_rbp,
            cfa_offset: 16,
            ra_offset: -8,
            rbp,
        })
    }

    /// A walk of the made-up stack `words` with `rules` and `memo`, into a buffer of
    /// `frames`.
    #[cfg(all(target_arch = "x86_64", target_os = "linux", not(miri)))]
    fn walk_remembered(
        words: &[usize],
        rbp: usize,
        rules: &RuleCache,
        memo: &mut WalkMemo,
        frames: usize,
    ) -> Option<Vec<usize>> {
        let mut out = vec![0usize; frames];
        let here = walk::Registers::at(0x1000, words.as_ptr() as usize, rbp);
        walk::walk(here, &mut out, 0, rules, Some(memo)).map(|n| out[..n].to_vec())
    }

    #[cfg(all(target_arch = "x86_64", target_os = "linux", not(miri)))]
    #[test]
    fn a_walk_is_replayed_only_while_the_words_it_read_are_there() {
        use cfi::{FrameRule, SavedRbp};
        // Frame 0 saves rbp and returns to 0x2001; frame 1 (rule at 0x2000) finds its CFA
        // from that rbp and returns to 0x3001 or 0x4001, both outermost.
        let frame0 = frame16(false, SavedRbp::At(-16));
        let frame1 = frame16(true, SavedRbp::Same);
        let rules = made_up_rules(&[frame0, frame1, FrameRule::End, FrameRule::End]);
        let mut memo = WalkMemo::new();
        let mut stack = [0x7771usize; 16];
        let base = stack.as_ptr() as usize;
        stack[0] = base + 6 * 8 - 16;
        stack[1] = 0x2001;
        stack[5] = 0x3001;
        stack[9] = 0x4001;
        let walked = |stack: &[usize; 16], memo: &mut WalkMemo| {
            walk_remembered(stack, 0, &rules, memo, MAX_FRAMES)
        };
        assert_eq!(walked(&stack, &mut memo), Some(vec![0x2001, 0x3001]));
        assert_eq!(memo.replays(), 0);
        assert_eq!(walked(&stack, &mut memo), Some(vec![0x2001, 0x3001]));
        assert_eq!(memo.replays(), 1, "the same words: replayed");
        // Another return address where frame 1's was read: walked again.
        stack[5] = 0x4001;
        assert_eq!(walked(&stack, &mut memo), Some(vec![0x2001, 0x4001]));
        assert_eq!(memo.replays(), 1);
        stack[5] = 0x3001;
        assert_eq!(walked(&stack, &mut memo), Some(vec![0x2001, 0x3001]));
        assert_eq!(walked(&stack, &mut memo), Some(vec![0x2001, 0x3001]));
        assert_eq!(memo.replays(), 2);
        // Another saved rbp, which frame 1 finds its CFA from: another frame there.
        stack[0] = base + 10 * 8 - 16;
        assert_eq!(walked(&stack, &mut memo), Some(vec![0x2001, 0x4001]));
        assert_eq!(memo.replays(), 2);
        // The same walk from a buffer of another length, or leaving out a frame: walked.
        assert_eq!(
            walk_remembered(&stack, 0, &rules, &mut memo, 1),
            Some(vec![0x2001])
        );
        assert_eq!(walked(&stack, &mut memo), Some(vec![0x2001, 0x4001]));
        let mut out = [0usize; MAX_FRAMES];
        let here = walk::Registers::at(0x1000, base, 0);
        assert_eq!(
            walk::walk(here, &mut out, 1, &rules, Some(&mut memo)),
            Some(1)
        );
        assert_eq!(out[0], 0x4001);
        assert_eq!(memo.replays(), 2);
        // From another address (frame 1's rule, its CFA from an rbp of 0): walked.
        assert_eq!(walked(&stack, &mut memo), Some(vec![0x2001, 0x4001]));
        let here = walk::Registers::at(0x2000, base, 0);
        assert_eq!(
            walk::walk(here, &mut out, 0, &rules, Some(&mut memo)),
            Some(0)
        );
        assert_eq!(memo.replays(), 2);
    }

    #[cfg(all(target_arch = "x86_64", target_os = "linux", not(miri)))]
    #[test]
    fn the_tag_stays_with_a_replayed_walk_and_goes_with_a_new_one() {
        use cfi::{FrameRule, SavedRbp};
        // One frame that returns to 0x2001 or 0x3001, outermost.
        let rules = made_up_rules(&[
            frame16(false, SavedRbp::Same),
            FrameRule::End,
            FrameRule::End,
        ]);
        let mut memo = WalkMemo::new();
        let mut stack = [0usize; 4];
        stack[1] = 0x2001;
        let walked = |stack: &[usize; 4], memo: &mut WalkMemo| {
            walk_remembered(stack, 0, &rules, memo, MAX_FRAMES)
        };
        let mut tag = 0u8;
        let tag = (&raw mut tag).cast::<()>();
        assert_eq!(walked(&stack, &mut memo), Some(vec![0x2001]));
        assert!(memo.tag().is_null());
        memo.set_tag(tag);
        assert_eq!(walked(&stack, &mut memo), Some(vec![0x2001]));
        assert_eq!((memo.replays(), memo.tag()), (1, tag), "replayed: kept");
        stack[1] = 0x3001;
        assert_eq!(walked(&stack, &mut memo), Some(vec![0x3001]));
        assert_eq!(memo.replays(), 1);
        assert!(memo.tag().is_null(), "another walk: cleared");
        // The same words into a buffer of another length: walked, cleared.
        memo.set_tag(tag);
        assert_eq!(
            walk_remembered(&stack, 0, &rules, &mut memo, 4),
            Some(vec![0x3001])
        );
        assert_eq!(memo.replays(), 1);
        assert!(memo.tag().is_null());
    }

    #[cfg(all(target_arch = "x86_64", target_os = "linux", not(miri)))]
    #[test]
    fn a_deeper_frames_saved_rbp_is_checked_when_a_later_frame_uses_it() {
        use cfi::{FrameRule, SavedRbp};
        // Frame 0 returns to 0x2001; frame 1 saves rbp and returns to 0x3001; frame 2 finds
        // its CFA from that rbp and returns to 0x4001 or 0x5001, both outermost.
        let rules = made_up_rules(&[
            frame16(false, SavedRbp::Same),
            frame16(false, SavedRbp::At(-16)),
            frame16(true, SavedRbp::Same),
            FrameRule::End,
            FrameRule::End,
        ]);
        let mut memo = WalkMemo::new();
        let mut stack = [0usize; 12];
        let base = stack.as_ptr() as usize;
        stack[1] = 0x2001;
        stack[2] = base + 6 * 8 - 16;
        stack[3] = 0x3001;
        stack[5] = 0x4001;
        stack[9] = 0x5001;
        let walked = |stack: &[usize; 12], memo: &mut WalkMemo| {
            walk_remembered(stack, 0, &rules, memo, MAX_FRAMES)
        };
        assert_eq!(
            walked(&stack, &mut memo),
            Some(vec![0x2001, 0x3001, 0x4001])
        );
        assert_eq!(
            walked(&stack, &mut memo),
            Some(vec![0x2001, 0x3001, 0x4001])
        );
        assert_eq!(memo.replays(), 1);
        stack[2] = base + 10 * 8 - 16;
        assert_eq!(
            walked(&stack, &mut memo),
            Some(vec![0x2001, 0x3001, 0x5001])
        );
        assert_eq!(memo.replays(), 1);
    }

    #[cfg(all(target_arch = "x86_64", target_os = "linux", not(miri)))]
    #[test]
    fn an_rbp_no_frame_uses_is_not_checked() {
        use cfi::{FrameRule, SavedRbp};
        // Frame 0 saves rbp (data, in code without frame pointers); frame 1 finds its CFA
        // from rsp. A walk starting with rbp and using it is checked against it.
        let rules = made_up_rules(&[
            frame16(false, SavedRbp::At(-16)),
            frame16(false, SavedRbp::Same),
        ]);
        let mut memo = WalkMemo::new();
        let mut stack = [0usize; 8];
        stack[0] = 0x5555;
        stack[1] = 0x2001;
        stack[3] = 0x2001;
        stack[5] = 0x2001;
        let walk = |stack: &[usize; 8], rbp, memo: &mut WalkMemo| {
            walk_remembered(stack, rbp, &rules, memo, 3)
        };
        assert_eq!(walk(&stack, 0, &mut memo), Some(vec![0x2001; 3]));
        stack[0] = 0x6666;
        assert_eq!(walk(&stack, 9, &mut memo), Some(vec![0x2001; 3]));
        assert_eq!(memo.replays(), 1, "neither rbp is used: replayed");
        // The first frame's CFA from the starting rbp: a walk from another rbp is walked.
        let rules = made_up_rules(&[frame16(true, SavedRbp::Same), FrameRule::End]);
        let mut memo = WalkMemo::new();
        let base = stack.as_ptr() as usize;
        stack[5] = 0;
        let walk = |rbp, memo: &mut WalkMemo| walk_remembered(&stack, rbp, &rules, memo, 3);
        assert_eq!(walk(base, &mut memo), Some(vec![0x2001]));
        assert_eq!(walk(base, &mut memo), Some(vec![0x2001]));
        assert_eq!(memo.replays(), 1);
        assert_eq!(walk(base + 16, &mut memo), Some(vec![0x2001]));
        assert_eq!(walk(base + 32, &mut memo), Some(vec![]));
        assert_eq!(memo.replays(), 1);
    }

    #[cfg(all(target_arch = "x86_64", target_os = "linux", not(miri)))]
    #[test]
    fn a_walk_deeper_than_the_memo_is_not_kept() {
        // Frames of 16 bytes, each returning to the same address.
        let rules = made_up_rules(&[frame16(false, cfi::SavedRbp::Same)]);
        let stack: [usize; 2 * memo::MEMO_LEVELS + 2] =
            core::array::from_fn(|i| if i % 2 == 1 { 0x1001 } else { 0 });
        let levels = memo::MEMO_LEVELS;
        let mut memo = WalkMemo::new();
        for (frames, replays) in [(levels, 0), (levels, 1), (levels + 1, 1), (levels + 1, 1)] {
            assert_eq!(
                walk_remembered(&stack, 0, &rules, &mut memo, frames),
                Some(vec![0x1001; frames])
            );
            assert_eq!(memo.replays(), replays, "{frames} frames");
        }
    }

    #[cfg(all(target_arch = "x86_64", target_os = "linux", not(miri)))]
    #[inline(never)]
    fn remembered_here(rules: &RuleCache, memo: &mut WalkMemo) -> TwoWays {
        let mut by_unwinder = [0usize; MAX_FRAMES + 1];
        let n = capture_with_unwinder(&mut by_unwinder, 0);
        let mut by_walk = [0usize; MAX_FRAMES];
        let here = walk::Registers::here();
        let m = walk::walk(here, &mut by_walk, 0, rules, Some(memo));
        core::hint::black_box((by_unwinder[1..n].to_vec(), m.map(|m| by_walk[..m].to_vec())))
    }

    #[cfg(all(target_arch = "x86_64", target_os = "linux", not(miri)))]
    #[inline(never)]
    fn remembered_at(depth: usize, rules: &RuleCache, memo: &mut WalkMemo) -> TwoWays {
        let mut pad = [0u8; 64];
        core::hint::black_box(&mut pad);
        if depth == 0 {
            return remembered_here(rules, memo);
        }
        let r = remembered_at(depth - 1, rules, memo);
        core::hint::black_box(pad[depth % 64]);
        r
    }

    #[cfg(all(target_arch = "x86_64", target_os = "linux", not(miri)))]
    #[test]
    fn a_replayed_walk_finds_what_the_unwinder_finds() {
        let rules = fresh_rules();
        let mut memo = WalkMemo::new();
        let mut replays = 0;
        // A loop the compiler cannot unroll: each call from one call site (unrolled, each
        // would return to another address, and nothing would replay).
        let depths = core::hint::black_box(vec![0, 3, 3, 3, 0, 0]);
        for &depth in &depths {
            let (expected, walked) = remembered_at(depth, &rules, &mut memo);
            assert_eq!(walked.as_deref(), Some(&expected[..]), "depth {depth}");
            replays = memo.replays();
        }
        // The repeats of a depth from the same loop (the same words): replayed.
        assert!(replays >= 2, "{replays} replays");
    }

    /// Captures from the frame of a function that ends in a call that does not return (its
    /// return address is past the function's end): the walk looks its rule up inside it.
    #[cfg(all(target_arch = "x86_64", target_os = "linux", not(miri)))]
    #[test]
    fn a_call_that_ends_a_function() {
        static RULES: RuleCache = RuleCache::new();
        #[inline(never)]
        fn diverge(seen: &mut Option<TwoWays>) -> ! {
            *seen = Some(both_ways(&RULES));
            std::panic::resume_unwind(Box::new(()))
        }
        #[inline(never)]
        fn ends_in_a_call(seen: &mut Option<TwoWays>) {
            let mut pad = [0u8; 100];
            core::hint::black_box(&mut pad);
            if core::hint::black_box(pad[7]) == 0 {
                diverge(seen)
            }
        }
        let mut seen = None;
        let _ =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| ends_in_a_call(&mut seen)));
        let (expected, walked) = seen.unwrap();
        assert!(expected.len() > 2);
        assert_eq!(walked.as_deref(), Some(&expected[..]));
    }

    #[cfg(all(target_arch = "x86_64", target_os = "linux", not(miri)))]
    #[test]
    fn an_unload_empties_the_table_at_the_next_walk_that_is_not_a_replay() {
        // A walk of a made-up stack (one frame, outermost caller), remembered.
        let rules = made_up_rules(&[frame16(false, cfi::SavedRbp::Same), cfi::FrameRule::End]);
        let before = walk::unloaded_objects();
        let mut memo = WalkMemo::new();
        let mut stack = [0usize; 4];
        stack[1] = 0x2001;
        assert_eq!(
            walk_remembered(&stack, 0, &rules, &mut memo, 8),
            Some(vec![0x2001])
        );
        assert_eq!(memo.replays(), 0);
        // A library of the C library's own that nothing else here loads: loaded, then
        // unloaded.
        // SAFETY: a library with no initialisers of interest, closed once.
        unsafe {
            let h = libc::dlopen(c"libBrokenLocale.so.1".as_ptr(), libc::RTLD_NOW);
            assert!(
                !h.is_null(),
                "libBrokenLocale.so.1 (part of glibc) not found"
            );
            assert_eq!(libc::dlclose(h), 0);
        }
        assert!(walk::unloaded_objects() > before);
        assert!(rules.get(0x1000).is_some(), "nothing emptied the table yet");
        // The same words: replayed, with no rule and no count read.
        let rule = rules.get(0x1000);
        assert_eq!(
            walk_remembered(&stack, 0, &rules, &mut memo, 8),
            Some(vec![0x2001])
        );
        assert_eq!(memo.replays(), 1, "replayed across the unload");
        assert_eq!(rules.get(0x1000), rule, "a replay reads no count");
        // Another word where the walk read: a walk, which reads the count first and empties
        // the table, so the made-up address has no rule any more (the unwind tables have
        // none for it).
        stack[1] = 0x3001;
        assert_eq!(walk_remembered(&stack, 0, &rules, &mut memo, 8), None);
        assert_eq!(memo.replays(), 1);
        assert_ne!(rules.get(0x1000), rule, "the walk emptied the table");
    }
}
