//! The hardened build's secrets and fills (cargo feature `hardened`): the keys free-list
//! links are encoded with, the random source that orders never-used objects, the poison
//! freed objects carry. See `lib.rs` for an overview, and `docs/robustness.md` ("Hardened
//! build") for what each protection catches and what it costs.
//!
//! Each protection lives with the code it protects, behind `cfg(feature = "hardened")`;
//! this module holds what they share:
//!
//! | protection | where |
//! |---|---|
//! | links encoded with [`encode_link`], checked when followed | `span::next_free` / `set_next_free`; `PageMap::next_free_checked` (bins, batches); `Span::next_free_checked` (a span's own list) |
//! | a guard page after every large object | `page_heap` (`span::GUARD_PAGES`, `PageSource::protect`) |
//! | a guard page at the end of every span group | `page_heap` (`GROUP_PAGES`, `SpanKind::Guard`) |
//! | never-used objects in random order ([`Rng`]) | `central_free_list` (`take_from_spans`) |
//! | freed objects [`poison`]ed, checked on reuse | thread cache bins (filled on push, checked on pop); new spans |
//! | the sized free's layout checked | `thread_cache::check_layout`: from `raw::dealloc` and the C `free_sized` when the sized fast path refuses the object (before it for an alignment above 8), from `ThreadCache::dealloc` always |
//!
//! No link exists before the first span is made, and making one calls [`seed`] first, so
//! the keys never change once a link is written.

use crate::size_class::SizeClass;
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

/// The link keys: `[rotation and offset, mask]`, random per process, never 0 once set.
static LINK_KEYS: [AtomicUsize; 2] = [AtomicUsize::new(0), AtomicUsize::new(0)];
/// The shared Weyl sequence [`random`] draws from.
static RANDOM: AtomicU64 = AtomicU64::new(0);
/// Whether [`seed`] has run to the end (on some thread).
static SEEDED: AtomicBool = AtomicBool::new(false);

const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;

/// Sets the keys and the random source from the kernel's random bytes, once per process; a few
/// instructions after the first call. Called before the first span is made.
#[inline]
pub fn seed() {
    // Acquire pairs with the Release store in `seed_slow`: the keys are visible.
    if !SEEDED.load(Ordering::Acquire) {
        seed_slow();
    }
}

#[cold]
#[inline(never)]
fn seed_slow() {
    let mut r = [0u64; 3];
    if !crate::sys::random_words(&mut r) {
        // No entropy yet (early boot): the address-space layout and the clock, mixed.
        let here = &r as *const _ as u64;
        let t = crate::sys::monotonic_ms();
        r = [
            mix(here ^ t),
            mix(here.rotate_left(17) ^ GOLDEN),
            mix(t ^ GOLDEN),
        ];
    }
    // Each key is set once, by whichever thread gets there first; the losers keep the
    // winner's value. Relaxed: published by the Release store below.
    let _ =
        LINK_KEYS[0].compare_exchange(0, r[0] as usize | 1, Ordering::Relaxed, Ordering::Relaxed);
    let _ =
        LINK_KEYS[1].compare_exchange(0, r[1] as usize | 1, Ordering::Relaxed, Ordering::Relaxed);
    let _ = RANDOM.compare_exchange(0, r[2] | 1, Ordering::Relaxed, Ordering::Relaxed);
    // Release pairs with the Acquire load in `seed`.
    SEEDED.store(true, Ordering::Release);
}

/// The word stored in free object `slot` to link it to `next` (null included): mimalloc's
/// `mi_ptr_encode` with the slot's address mixed in, `rotl(next ^ slot ^ k1, k0) + k0`.
/// Without the keys, a value written over the link (an overflow from the object before,
/// a write after free) decodes to a random address, which the follower's check rejects; a
/// link copied from another free object decodes wrong too.
#[inline(always)]
pub fn encode_link(slot: *mut u8, next: *mut u8) -> usize {
    // Relaxed: set before any link exists (see the module comment).
    let k0 = LINK_KEYS[0].load(Ordering::Relaxed);
    let k1 = LINK_KEYS[1].load(Ordering::Relaxed);
    ((next as usize) ^ (slot as usize) ^ k1)
        .rotate_left(k0 as u32 & 63)
        .wrapping_add(k0)
}

/// The link that [`encode_link`] stored as `stored` in `slot`. Not checked: the follower
/// checks it (against the page map or the span).
#[inline(always)]
pub fn decode_link(slot: *mut u8, stored: usize) -> *mut u8 {
    // Relaxed: as in `encode_link`.
    let k0 = LINK_KEYS[0].load(Ordering::Relaxed);
    let k1 = LINK_KEYS[1].load(Ordering::Relaxed);
    (stored.wrapping_sub(k0).rotate_right(k0 as u32 & 63) ^ k1 ^ (slot as usize)) as *mut u8
}

/// splitmix64's finaliser.
#[inline]
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A random 64-bit value from the per-process sequence (one atomic add): splitmix64 over a
/// Weyl sequence that [`seed`] started at a random point.
#[inline]
pub fn random() -> u64 {
    mix(RANDOM.fetch_add(GOLDEN, Ordering::Relaxed))
}

/// A small generator for one shuffle, seeded from [`random`]: no atomic per draw.
pub struct Rng(u64);

impl Rng {
    /// A generator at a random point of its sequence.
    #[inline]
    pub fn new() -> Rng {
        Rng(random())
    }

    /// A value in `0..n` (`n > 0`), by Lemire's multiply-shift.
    #[inline]
    pub fn below(&mut self, n: usize) -> usize {
        self.0 = self.0.wrapping_add(GOLDEN);
        ((mix(self.0) as u128 * n as u128) >> 64) as usize
    }
}

impl Default for Rng {
    fn default() -> Self {
        Self::new()
    }
}

/// How much of a freed object is poisoned: its bytes from the third word up to this bound
/// (the first two words hold the link and the free key), the rest of its first 64 bytes,
/// filled and checked by six stores and six loads in line (no call). The bound was 256
/// bytes, filled by the C library's `memset` and checked by its `memcmp`: the calls, not
/// the bytes, were most of the hardened build's cost (docs/robustness.md, "Hardened
/// build").
pub const POISON_LIMIT: usize = 64;

/// The poison byte (mimalloc's debug fill for freed memory).
pub const POISON_BYTE: u8 = 0xdf;
const POISON_WORD: u64 = u64::from_ne_bytes([POISON_BYTE; 8]);
/// The first poisoned word, and one past the last.
const FIRST_WORD: usize = 2;
const WORDS: usize = POISON_LIMIT / 8;

/// The first class whose objects hold all [`WORDS`]: classes are in size order, so one
/// compare of the class tells the common case (no load of the class's size).
const FIRST_WHOLE_CLASS: u8 = crate::size_class::class_index_of_small(POISON_LIMIT) as u8;

/// Calls `f` with the address of every poisoned word of object `w` of `class`, some twice:
/// the six of a whole class unrolled; for a smaller class, words `2..size / 8` as up to
/// three pairs from both ends that overlap (no loop: any size below [`POISON_LIMIT`] is
/// covered by them).
///
/// A branch-free form (each word's index clamped to the object's last word, the same code
/// for every class) was measured and dropped: it took the `slots` step from 144 to 189
/// instructions at 64 bytes, where this branch costs only where sizes mix around 64 bytes
/// (it then mispredicts), and the real-program suite's geometric mean came out the same
/// within its noise. So did a form with this branch and the small classes' pair branches
/// replaced by four clamped accesses (the 16-byte class's on its link word, the check's
/// mask hidden from the optimiser): on `pareto 2000000 1` 0.89 fewer mispredictions an
/// operation but 40 more instructions, and on the quick suite 1.057 times this form's
/// time (the 16-byte random slots 1.4 to 1.5, `pareto` 0.99; 2026-12-07).
///
/// # Safety
/// `w` is an object of `class`.
#[inline(always)]
unsafe fn each_poisoned_word(w: *mut u64, class: SizeClass, mut f: impl FnMut(*mut u64)) {
    // SAFETY: per the caller, every word below the class's size, or below WORDS for a
    // whole class, lies in the object; each `add` stays below that.
    unsafe {
        if class.0 >= FIRST_WHOLE_CLASS {
            for i in FIRST_WORD..WORDS {
                f(w.add(i));
            }
            return;
        }
        let end = class.size() / 8;
        for k in 0..(WORDS - FIRST_WORD) / 2 {
            if end > FIRST_WORD + 2 * k {
                f(w.add(FIRST_WORD + k));
                f(w.add(end - 1 - k));
            }
        }
    }
}

/// Fills the poisoned part of free object `obj` of `class` (see [`POISON_LIMIT`]).
///
/// # Safety
/// `obj` is a free object of `class` (8-aligned) that the caller owns.
#[inline(always)]
pub unsafe fn poison(obj: *mut u8, class: SizeClass) {
    // SAFETY: per the caller; each word is one of the object's.
    unsafe { each_poisoned_word(obj.cast(), class, |w| w.write(POISON_WORD)) }
}

/// Whether the poisoned part of free object `obj` of `class` is intact (nothing wrote to
/// it since [`poison`]): its words compared with the poison, the differences or-ed
/// together, one branch.
///
/// # Safety
/// `obj` is a free object of `class` (8-aligned) that the caller owns.
#[inline(always)]
pub unsafe fn poison_intact(obj: *mut u8, class: SizeClass) -> bool {
    let mut diff = 0;
    // SAFETY: per the caller; each word is one of the object's, and nothing writes to it
    // while the caller owns it.
    unsafe { each_poisoned_word(obj.cast(), class, |w| diff |= w.read() ^ POISON_WORD) };
    diff == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_round_trip_and_depend_on_the_slot() {
        seed();
        let slot = 0x7f00_1234_5000usize as *mut u8;
        for next in [0usize, 0x7f00_1234_5040, 0x5555_0000_0010, usize::MAX - 7] {
            let stored = encode_link(slot, next as *mut u8);
            assert_eq!(decode_link(slot, stored) as usize, next);
            assert_ne!(stored, next, "the link is not stored as it is");
            // The same word read in another slot decodes elsewhere.
            assert_ne!(decode_link(slot.wrapping_add(64), stored) as usize, next);
        }
    }

    #[test]
    fn poison_is_checked_past_the_first_two_words_up_to_the_limit() {
        let mut obj = [0u64; 16];
        let p = obj.as_mut_ptr().cast::<u8>();
        let whole = SizeClass::all().find(|c| c.size() >= POISON_LIMIT).unwrap();
        // The first whole class is the first of POISON_LIMIT bytes or more.
        assert_eq!(whole.0, FIRST_WHOLE_CLASS);
        // SAFETY: a 128-byte buffer of ours, used as an object of each class below (the
        // poison touches at most POISON_LIMIT bytes of it).
        unsafe {
            for class in SizeClass::all() {
                poison(p, class);
                assert!(poison_intact(p, class), "class {}", class.0);
            }
            poison(p, whole);
            // The link and key words are free to change.
            p.cast::<u64>().write(1);
            p.cast::<u64>().add(1).write(2);
            assert!(poison_intact(p, whole));
            // Past the limit is not checked; below it is.
            p.add(POISON_LIMIT).write(0);
            assert!(poison_intact(p, whole));
            p.add(POISON_LIMIT - 1).write(0);
            assert!(!poison_intact(p, whole));
        }
    }

    /// `mix` is splitmix64's finaliser: splitmix64.c's reference outputs for state 1234567
    /// (the Rosetta Code task's, as in `sampler::tests::next_u64_is_splitmix64`) are `mix`
    /// of the state plus 1 to 5 times the golden gamma.
    #[test]
    fn mix_is_splitmix64s_finaliser() {
        let want: [u64; 5] = [
            6457827717110365317,
            3203168211198807973,
            9817491932198370423,
            4593380528125082431,
            16408922859458223821,
        ];
        for (k, &w) in (1u64..).zip(&want) {
            assert_eq!(
                mix(1234567u64.wrapping_add(GOLDEN.wrapping_mul(k))),
                w,
                "step {k}"
            );
        }
    }

    /// The inverse of `x` modulo 2^64 (`x` odd), by Newton's iteration.
    fn inverse(x: u64) -> u64 {
        let mut y = x;
        for _ in 0..6 {
            y = y.wrapping_mul(2u64.wrapping_sub(x.wrapping_mul(y)));
        }
        assert_eq!(x.wrapping_mul(y), 1);
        y
    }

    /// The `z` whose `mix` is `m` (each step of `mix` undone).
    fn unmix(m: u64) -> u64 {
        let unshift = |z: u64, s: u32| (0..64 / s + 1).fold(0, |acc, i| acc ^ (z >> (s * i)));
        let mut z = unshift(m, 31);
        z = unshift(z.wrapping_mul(inverse(0x94d0_49bb_1331_11eb)), 27);
        unshift(z.wrapping_mul(inverse(0xbf58_476d_1ce4_e5b9)), 30)
    }

    /// After `seed`, the link keys and the start of the random sequence are random words:
    /// not 0 (unset), not a bare low bit (`r & 1`), and not the early-boot fallback's mix
    /// of an address and the clock, which is used only when the kernel has no random bytes.
    /// Random words fail the test with a chance of about 2^-31.
    #[test]
    fn seed_sets_the_keys_and_the_sequence_from_random_words() {
        seed();
        assert!(SEEDED.load(Ordering::Acquire));
        let k0 = LINK_KEYS[0].load(Ordering::Relaxed) as u64;
        let k1 = LINK_KEYS[1].load(Ordering::Relaxed) as u64;
        assert!(k0 > 1 && k1 > 1, "keys {k0:#x} {k1:#x}");
        // The sequence is its start plus a golden gamma per draw so far (fewer than 2^32 in
        // a test process): from a start of 0 or 1 it is a small number of steps.
        let now = RANDOM.load(Ordering::Relaxed);
        let inv = inverse(GOLDEN);
        for start in [0, 1] {
            let steps = now.wrapping_sub(start).wrapping_mul(inv);
            assert!(steps >= 1 << 32, "the sequence started at {start}");
        }
        // The fallback sets k0 to `mix(here ^ t) | 1` and k1 to
        // `mix(here.rotate_left(17) ^ GOLDEN) | 1`, `t` the monotonic clock at seeding:
        // undone, the keys would give back a `t` no later than now.
        for x in [0, 1, GOLDEN, k0, k1, u64::MAX] {
            assert_eq!(unmix(mix(x)), x, "unmix undoes mix");
        }
        let clock = crate::sys::monotonic_ms();
        for a in [k0, k0 ^ 1] {
            for b in [k1, k1 ^ 1] {
                let here = (unmix(b) ^ GOLDEN).rotate_right(17);
                let t = unmix(a) ^ here;
                assert!(t > clock, "the keys are the fallback's, seeded at {t} ms");
            }
        }
    }

    /// Each draw of the shared sequence is new: consecutive draws differ (`mix` is a
    /// bijection and each draw takes the next point of the Weyl sequence).
    #[test]
    fn draws_of_the_shared_sequence_differ() {
        seed();
        let draws: Vec<u64> = (0..4).map(|_| random()).collect();
        for w in draws.windows(2) {
            assert_ne!(w[0], w[1]);
        }
    }

    #[test]
    fn every_poisoned_byte_is_filled_and_checked() {
        // Every class up to a few past the limit, and a change of every byte the poison
        // covers; nothing written outside it.
        for class in SizeClass::all().take_while(|c| c.size() <= POISON_LIMIT + 48) {
            let mut obj = [0u64; POISON_LIMIT / 8 + 8];
            let p = obj.as_mut_ptr().cast::<u8>();
            // SAFETY: a buffer of ours, longer than every poisoned part.
            unsafe {
                poison(p, class);
                let end = class.size().min(POISON_LIMIT);
                for i in 0..obj.len() * 8 {
                    let want = if (16..end).contains(&i) {
                        POISON_BYTE
                    } else {
                        0
                    };
                    assert_eq!(p.add(i).read(), want, "class {}, byte {i}", class.0);
                }
                assert!(poison_intact(p, class), "class {}", class.0);
                for i in 16..end {
                    p.add(i).write(POISON_BYTE ^ 1);
                    assert!(
                        !poison_intact(p, class),
                        "class {}, byte {i} changed",
                        class.0
                    );
                    p.add(i).write(POISON_BYTE);
                }
            }
        }
    }

    #[test]
    fn below_stays_below() {
        seed();
        let mut rng = Rng::new();
        let mut seen = [false; 7];
        for _ in 0..1000 {
            seen[rng.below(7)] = true;
        }
        assert!(seen.iter().all(|&s| s));
    }
}
