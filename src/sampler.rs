//! The heap profiler's per-thread sampling countdown (TCMalloc's `Sampler`). See `lib.rs`
//! for an overview and `docs/design.md` (section 10) for the statistics.
//!
//! Each thread cache holds a [`Sampler`]. Every allocation subtracts its size from the
//! countdown; the allocation that takes it below zero holds a sample point, and is sampled.
//! The countdown is drawn from an exponential distribution with the configured mean, so the
//! sample points form a Poisson process over the bytes a thread allocates: each byte is a
//! sample point with the same small probability, independently of every other byte, and an
//! allocation of `k` bytes is sampled with probability `1 - exp(-k / mean)`.
//!
//! The fast path's whole share is the subtraction and the sign test
//! ([`Sampler::charge`]); everything else is [`Sampler::crossed`], out of line. While
//! profiling is off the countdown is [`RECHECK_BYTES`] long, so a thread looks at the
//! process's setting once per 16 MiB it allocates and starts sampling within that much of
//! `profiling::start`.

/// The countdown while profiling is off: how many bytes a thread allocates between two
/// looks at whether profiling was turned on.
pub const RECHECK_BYTES: isize = 16 << 20;

/// The process's sampling setting, as the profiler publishes it (see
/// `sample_table::SampleTable::params`).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Params {
    /// The mean distance between sample points in bytes; 0 when profiling is off.
    pub mean: usize,
    /// Changes on every start and stop: an interval drawn under another epoch is stale.
    pub epoch: u32,
    /// Seeds a thread's random numbers when it first samples in this epoch.
    pub seed: u64,
}

impl Params {
    /// Profiling off.
    pub const OFF: Params = Params {
        mean: 0,
        epoch: 0,
        seed: 0,
    };
}

/// A thread's countdown to its next sample point.
#[repr(C)]
#[derive(Debug)]
pub struct Sampler {
    /// Bytes before the next sample point; every allocation subtracts its size. Read and
    /// written by the fast path, so first.
    countdown: isize,
    /// Allocations charged so far: the thread's allocation count for statistics (every
    /// allocation is charged exactly once, so this is the one place that sees them all).
    charges: u64,
    /// The mean the current interval was drawn with; 0 while it is a recheck interval.
    mean: usize,
    /// The epoch of [`Params`] the current interval belongs to.
    epoch: u32,
    /// The random number generator's state (SplitMix64); 0 until first seeded.
    rng: u64,
}

impl Sampler {
    /// A countdown at zero: the first allocation looks at the setting.
    pub const fn new() -> Sampler {
        Sampler {
            countdown: 0,
            charges: 0,
            mean: 0,
            epoch: 0,
            rng: 0,
        }
    }

    /// Counts an allocation of `size` bytes; `false` when its bytes hold the next sample
    /// point (then call [`Sampler::crossed`]). One subtraction, one sign test, and one
    /// increment of the allocation count.
    #[inline(always)]
    pub fn charge(&mut self, size: usize) -> bool {
        self.charges = self.charges.wrapping_add(1);
        self.countdown = self.countdown.wrapping_sub(size as isize);
        self.countdown >= 0
    }

    /// Allocations charged to this countdown since it was made.
    pub fn charges(&self) -> u64 {
        self.charges
    }

    /// As [`Sampler::charge`], through a raw pointer.
    ///
    /// # Safety
    /// `sampler` points to a live sampler that only this thread uses.
    #[inline(always)]
    pub unsafe fn charge_raw(sampler: *mut Sampler, size: usize) -> bool {
        // SAFETY: per the caller.
        unsafe {
            (*sampler).charges = (*sampler).charges.wrapping_add(1);
            let c = &raw mut (*sampler).countdown;
            *c = (*c).wrapping_sub(size as isize);
            *c >= 0
        }
    }

    /// [`Sampler::charge`] and, when it crossed, [`Sampler::crossed`] with the setting
    /// `params` gives (read only then).
    #[inline]
    pub fn sample(&mut self, size: usize, params: impl FnOnce() -> Params) -> Option<usize> {
        if self.charge(size) {
            None
        } else {
            self.crossed(size, params())
        }
    }

    /// After [`Sampler::charge`] of `size` bytes returned `false`: whether this allocation
    /// is sampled, as the bytes it stands for (its weight), under the setting `params`.
    ///
    /// The weight is TCMalloc's: with a mean `T`, a size `k` and `f` bytes left on the
    /// countdown before this allocation, the sample point falls `f` bytes in; the `k - f`
    /// bytes after it would hold `(k - f) / T` more points on average, so the sample stands
    /// for `T * (1 + (k - f) / T) = T + k - f` bytes. Its expectation over the countdown is
    /// `k` for every allocation, which makes the sum of weights an unbiased estimate of the
    /// bytes allocated (and `weight / k` of the objects). A mean of 1 samples every
    /// allocation, with a weight of exactly its size.
    ///
    /// An interval that was not drawn for sampling (a recheck interval, or one from before
    /// the last start or stop) samples nothing: a new one is drawn to start just before
    /// this allocation, which by the exponential's lack of memory is as good as one drawn
    /// at any earlier point, and this allocation is counted against it.
    #[cold]
    #[inline(never)]
    pub fn crossed(&mut self, size: usize, params: Params) -> Option<usize> {
        let live = self.mean != 0 && self.epoch == params.epoch && params.mean != 0;
        let mut weight = live.then(|| self.weight(size));
        if params.mean == 0 {
            self.mean = 0;
            self.epoch = params.epoch;
            self.countdown = RECHECK_BYTES;
            return None;
        }
        if self.epoch != params.epoch || self.rng == 0 {
            // Each thread's own numbers: the seed mixed with where its sampler lives.
            self.reseed(params.seed ^ (self as *const Sampler as u64));
        }
        self.mean = params.mean;
        self.epoch = params.epoch;
        if weight.is_none() {
            // A fresh interval, starting just before this allocation.
            let f = self.draw();
            self.countdown = f.wrapping_sub(size as isize);
            if self.countdown >= 0 {
                return None;
            }
            weight = Some(self.weight(size));
        }
        // The next interval starts after the sampled allocation.
        self.countdown = self.draw();
        weight
    }

    /// The weight of a sample of `size` bytes whose charge left the countdown negative.
    fn weight(&self, size: usize) -> usize {
        if self.mean == 1 {
            return size;
        }
        // T + k - f, where the countdown is now f - k < 0.
        (self.mean as isize).saturating_sub(self.countdown).max(1) as usize
    }

    /// Restarts the random numbers from `seed` (mixed, so that nearby seeds differ).
    pub fn reseed(&mut self, seed: u64) {
        self.rng = seed ^ 0x6a09_e667_f3bc_c909;
        if self.rng == 0 {
            self.rng = 1;
        }
        for _ in 0..4 {
            self.next_u64();
        }
    }

    /// SplitMix64.
    fn next_u64(&mut self) -> u64 {
        self.rng = self.rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A countdown drawn from the exponential distribution with the current mean, rounded
    /// down to whole bytes (0 for a mean of 1: every allocation is sampled).
    fn draw(&mut self) -> isize {
        if self.mean <= 1 {
            return 0;
        }
        // A uniform value in (0, 1]: 53 random bits, plus one so that the log is finite.
        let u = ((self.next_u64() >> 11) + 1) as f64 * (1.0 / (1u64 << 53) as f64);
        let x = -ln(u) * self.mean as f64;
        if x >= (isize::MAX / 2) as f64 {
            isize::MAX / 2
        } else {
            x as isize
        }
    }

    /// The mean of the current interval (0 while profiling is off for this thread).
    pub fn mean(&self) -> usize {
        self.mean
    }

    /// Starts a fresh interval under `params` now, with the random numbers from `seed`
    /// (`profiling::start` on the calling thread, so that it samples from its next
    /// allocation on, reproducibly).
    pub fn restart(&mut self, params: Params, seed: u64) {
        self.reseed(seed);
        self.mean = params.mean;
        self.epoch = params.epoch;
        self.countdown = if params.mean == 0 {
            RECHECK_BYTES
        } else {
            self.draw()
        };
    }
}

impl Default for Sampler {
    fn default() -> Self {
        Self::new()
    }
}

/// The natural logarithm of `x` (positive, finite, normal), to within a few units in the
/// last place (`1e-14` of the value; the draw needs far less): `x = m * 2^e` with `m` in
/// `[sqrt(1/2), sqrt(2))`, then `ln m = 2 atanh(s)` with `s = (m - 1) / (m + 1)`
/// (`|s| < 0.172`) by its series to `s^17` (the next term is below `2^-55` of the sum),
/// plus `e ln 2`.
///
/// Ours rather than `f64::ln`, which calls the C library's `log` in `libm`: the only
/// function of `libm` the library used, and linking it put `libm.so.6` in every process
/// that preloads `libspanalloc.so` (about 270 KiB of its pages resident after the loader
/// ran its resolvers, for a program whose whole footprint under glibc is about 1.2 MiB).
/// A sample costs about 20 instructions fewer with it (no call; callgrind, `slots 1024
/// 262144` under the profiler at 512 KiB: `Sampler::crossed` 2.33 to 2.04 million in
/// 40 000 steps).
#[inline]
fn ln(x: f64) -> f64 {
    const LN_2: f64 = core::f64::consts::LN_2;
    const SQRT_2: f64 = core::f64::consts::SQRT_2;
    let bits = x.to_bits();
    let mut e = ((bits >> 52) & 0x7ff) as i64 - 1023;
    // The mantissa with the exponent of 1.0: m in [1, 2).
    let mut m = f64::from_bits((bits & ((1u64 << 52) - 1)) | (1023u64 << 52));
    if m >= SQRT_2 {
        m *= 0.5;
        e += 1;
    }
    let s = (m - 1.0) / (m + 1.0);
    // 2 atanh(s) = 2 s (1 + t/3 + t^2/5 + ... + t^8/17) with t = s^2, by Estrin's scheme:
    // pairs of terms, then pairs of pairs, computed side by side, where Horner's rule is a
    // chain of eight multiply-adds each waiting for the last (the draw's latency, which the
    // sampled allocation waits for; its precision is the same).
    let t = s * s;
    let t2 = t * t;
    let t4 = t2 * t2;
    let p01 = 1.0 + t * (1.0 / 3.0);
    let p23 = 1.0 / 5.0 + t * (1.0 / 7.0);
    let p45 = 1.0 / 9.0 + t * (1.0 / 11.0);
    let p67 = 1.0 / 13.0 + t * (1.0 / 15.0);
    let p03 = p01 + t2 * p23;
    let p47 = p45 + t2 * p67;
    let sum = p03 + t4 * (p47 + t4 * (1.0 / 17.0));
    2.0 * s * sum + e as f64 * LN_2
}

#[cfg(test)]
mod tests {
    use super::*;

    const ON: Params = Params {
        mean: 4096,
        epoch: 1,
        seed: 7,
    };

    /// Bytes estimated from `n` allocations of `size` through one sampler.
    fn estimate(s: &mut Sampler, params: Params, size: usize, n: usize) -> (f64, f64, usize) {
        let (mut bytes, mut objects, mut samples) = (0.0, 0.0, 0);
        for _ in 0..n {
            if let Some(w) = s.sample(size, || params) {
                bytes += w as f64;
                objects += w as f64 / size as f64;
                samples += 1;
            }
        }
        (bytes, objects, samples)
    }

    /// `ln` agrees with the C library's `log` to within `1e-14` of the value (a few units
    /// in the last place) over the draw's whole domain, `(0, 1]` in steps of `2^-53`, and
    /// beyond it.
    #[test]
    fn ln_is_the_natural_logarithm() {
        let mut r = 12345u64;
        let mut xs: Vec<f64> = (0..200_000)
            .map(|_| {
                r = r
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((r >> 11) + 1) as f64 * (1.0 / (1u64 << 53) as f64)
            })
            .collect();
        // The ends and the seams: 2^-53, powers of two, both sides of sqrt(2), 1.
        xs.extend([
            1.0 / (1u64 << 53) as f64,
            0.5,
            0.25,
            1.0,
            core::f64::consts::FRAC_1_SQRT_2,
            f64::from_bits(core::f64::consts::FRAC_1_SQRT_2.to_bits() + 1),
            f64::from_bits(core::f64::consts::FRAC_1_SQRT_2.to_bits() - 1),
            f64::from_bits(1.0f64.to_bits() - 1),
            2.0,
            1e300,
            1e-300,
        ]);
        for x in xs {
            let (got, want) = (ln(x), x.ln());
            assert!(
                (got - want).abs() <= 1e-14 * want.abs(),
                "ln({x:e}) = {got:e}, want {want:e}"
            );
        }
    }

    #[test]
    fn off_samples_nothing_and_rechecks() {
        let mut s = Sampler::new();
        let (_, _, n) = estimate(&mut s, Params::OFF, 64, 1 << 20);
        assert_eq!(n, 0);
        assert_eq!(s.mean(), 0);
        assert!(s.countdown <= RECHECK_BYTES);
    }

    #[test]
    fn weights_are_unbiased_at_every_size() {
        for size in [1usize, 16, 100, 1000, 4096, 10_000, 100_000] {
            let mut s = Sampler::new();
            s.restart(ON, 42);
            let n = (64 << 20) / size;
            let (bytes, objects, samples) = estimate(&mut s, ON, size, n);
            let truth = (n * size) as f64;
            let err = (bytes - truth).abs() / truth;
            assert!(
                err < 0.03,
                "size {size}: {bytes} for {truth} ({samples} samples)"
            );
            let err = (objects - n as f64).abs() / n as f64;
            assert!(err < 0.03, "size {size}: {objects} objects for {n}");
        }
    }

    #[test]
    fn the_sampling_probability_is_poisson() {
        // An allocation of `mean` bytes is sampled with probability 1 - 1/e.
        let mut s = Sampler::new();
        s.restart(ON, 3);
        let n = 200_000;
        let (_, _, samples) = estimate(&mut s, ON, ON.mean, n);
        let p = samples as f64 / n as f64;
        let want = 1.0 - (-1.0f64).exp();
        assert!((p - want).abs() < 0.01, "{p} vs {want}");
    }

    #[test]
    fn a_mean_of_one_samples_everything_at_its_size() {
        let every = Params {
            mean: 1,
            epoch: 1,
            seed: 1,
        };
        let mut s = Sampler::new();
        for size in [1usize, 7, 64, 5000] {
            assert_eq!(s.sample(size, || every), Some(size));
        }
        assert_eq!(
            s.sample(0, || every),
            None,
            "zero bytes hold no sample point"
        );
    }

    #[test]
    fn a_new_epoch_drops_the_old_interval() {
        let mut s = Sampler::new();
        s.restart(ON, 5);
        // Stop: the next crossing samples nothing and goes back to rechecking.
        let off = Params {
            mean: 0,
            epoch: 2,
            seed: 0,
        };
        let (_, _, n) = estimate(&mut s, off, 64, 1 << 20);
        assert_eq!(n, 0);
        assert_eq!(s.mean(), 0);
        // Started again: samples within a recheck interval.
        let on = Params { epoch: 3, ..ON };
        let (_, _, n) = estimate(&mut s, on, 64, (RECHECK_BYTES as usize / 64) + 10_000);
        assert!(n > 0);
        assert_eq!(s.mean(), ON.mean);
    }

    #[test]
    fn the_same_seed_gives_the_same_samples() {
        let run = || {
            let mut s = Sampler::new();
            s.restart(ON, 99);
            (0..100_000)
                .map(|i| s.sample(16 + i % 200, || ON).unwrap_or(0))
                .collect::<Vec<_>>()
        };
        assert_eq!(run(), run());
    }

    /// A mean so long that a fresh interval all but never ends within a small allocation
    /// (the chance is about `size / 2^40`).
    const HUGE: Params = Params {
        mean: 1 << 40,
        epoch: 1,
        seed: 7,
    };

    #[test]
    fn next_u64_is_splitmix64() {
        // The reference outputs of Vigna's splitmix64.c for two states (1234567: the
        // Rosetta Code task's; 1477776061723855037: rand_xoshiro's test), checked with an
        // independent implementation of the published definition.
        let cases: [(u64, [u64; 5]); 2] = [
            (
                1234567,
                [
                    6457827717110365317,
                    3203168211198807973,
                    9817491932198370423,
                    4593380528125082431,
                    16408922859458223821,
                ],
            ),
            (
                1477776061723855037,
                [
                    1985237415132408290,
                    2979275885539914483,
                    13511426838097143398,
                    8488337342461049707,
                    15141737807933549159,
                ],
            ),
        ];
        for (state, want) in cases {
            let mut s = Sampler::new();
            s.rng = state;
            let got: Vec<u64> = (0..5).map(|_| s.next_u64()).collect();
            assert_eq!(got, want, "state {state}");
        }
    }

    /// The first numbers a fresh sampler draws after `reseed(seed)`.
    fn numbers_after_reseed(seed: u64) -> [u64; 4] {
        let mut s = Sampler::new();
        s.reseed(seed);
        [s.next_u64(), s.next_u64(), s.next_u64(), s.next_u64()]
    }

    #[test]
    fn nearby_seeds_give_different_numbers() {
        // Seeds next to each other, every single bit, and the seed that the mixing takes
        // to a zero state.
        let mut seeds: Vec<u64> = (0..=64).collect();
        seeds.extend((0..64).map(|i| 1u64 << i));
        seeds.push(0x6a09_e667_f3bc_c909);
        seeds.push(u64::MAX);
        seeds.sort_unstable();
        seeds.dedup();
        let mut streams: Vec<[u64; 4]> = seeds.iter().map(|&s| numbers_after_reseed(s)).collect();
        streams.sort_unstable();
        streams.dedup();
        assert_eq!(
            streams.len(),
            seeds.len(),
            "two seeds gave the same numbers"
        );
    }

    #[test]
    fn reseeding_with_a_seed_restarts_its_numbers() {
        let mut s = Sampler::new();
        s.reseed(5);
        let first = [s.next_u64(), s.next_u64()];
        for _ in 0..100 {
            s.next_u64();
        }
        s.reseed(5);
        assert_eq!([s.next_u64(), s.next_u64()], first);
        assert_eq!(numbers_after_reseed(5)[..2], first);
    }

    #[test]
    fn draws_are_exponential_with_the_mean() {
        let mut s = Sampler::new();
        s.restart(ON, 1);
        let n = 1_000_000;
        let mean = ON.mean as f64;
        let (mut sum, mut below) = (0.0, 0usize);
        for _ in 0..n {
            let x = s.draw();
            assert!(x >= 0);
            sum += x as f64;
            below += usize::from((x as f64) < mean);
        }
        // Rounded down to whole bytes: the mean of the draws is 1 / (e^(1/T) - 1), about
        // T - 1/2; the standard error over a million draws is T / 1000.
        let want = 1.0 / ((1.0 / mean).exp() - 1.0);
        let avg = sum / n as f64;
        assert!((avg - want).abs() < 0.01 * mean, "{avg} vs {want}");
        // P(X < T) = 1 - 1/e; the standard error is under 0.0005.
        let p = below as f64 / n as f64;
        let want = 1.0 - (-1.0f64).exp();
        assert!((p - want).abs() < 0.005, "{p} vs {want}");
    }

    #[test]
    fn the_longest_draw_is_finite_and_capped() {
        // The state before a SplitMix64 output of 0 (the mixer takes 0 to 0): the smallest
        // uniform value, 2^-53, and so the longest draw, 53 ln 2 means.
        let zero_next = 0u64.wrapping_sub(0x9e37_79b9_7f4a_7c15);
        let mut s = Sampler::new();
        s.mean = 4096;
        s.rng = zero_next;
        assert_eq!(s.draw(), 150_473, "53 ln 2 * 4096 = 150473.93...");
        // With a mean that long the draw would pass isize::MAX / 2: it stops there, so that
        // charging any allocation after it cannot wrap the countdown.
        s.mean = 1 << 58;
        s.rng = zero_next;
        assert_eq!(s.draw(), isize::MAX / 2);
    }

    #[test]
    fn the_charge_that_takes_the_countdown_below_zero_crosses() {
        let mut s = Sampler::new();
        s.restart(ON, 11);
        let f = s.countdown;
        assert!(f > 0);
        // The last byte of the interval does not cross, nor does an empty allocation.
        assert!(s.charge(f as usize - 1));
        assert!(s.charge(1));
        assert!(s.charge(0));
        assert_eq!(s.countdown, 0);
        // The next byte holds the sample point: weight T + k - f with nothing left.
        assert!(!s.charge(1));
        assert_eq!(s.crossed(1, ON), Some(ON.mean + 1));
        // The same through the raw pointer.
        let f = s.countdown;
        let p = &raw mut s;
        // SAFETY: `s` is live and only this thread uses it.
        unsafe {
            assert!(Sampler::charge_raw(p, f as usize));
            assert!(!Sampler::charge_raw(p, 1));
        }
    }

    #[test]
    fn every_allocation_is_charged_exactly_once() {
        let mut s = Sampler::new();
        assert_eq!(s.charges(), 0);
        let every = Params {
            mean: 1,
            epoch: 1,
            seed: 1,
        };
        let mut n = 0u64;
        for (params, count) in [(Params::OFF, 1000), (ON, 100_000), (every, 1000)] {
            for i in 0..count {
                s.sample(1 + i % 5000, || params);
                n += 1;
                assert_eq!(s.charges(), n);
            }
        }
        assert!(!s.charge(usize::MAX / 2));
        assert_eq!(s.charges(), n + 1);
    }

    #[test]
    fn profiling_off_rechecks_once_per_16_mib() {
        let mut s = Sampler::new();
        let mut looks = 0;
        // A new countdown is at zero: the first allocation looks.
        assert_eq!(
            s.sample(64, || {
                looks += 1;
                Params::OFF
            }),
            None
        );
        assert_eq!(looks, 1);
        // Exactly 16 MiB more without a look, then the next byte looks again.
        for _ in 0..(16 << 20) / 4096 {
            assert_eq!(s.sample(4096, || unreachable!("looked early")), None);
        }
        assert_eq!(
            s.sample(1, || {
                looks += 1;
                Params::OFF
            }),
            None
        );
        assert_eq!(looks, 2);
    }

    #[test]
    fn a_stale_or_recheck_interval_samples_nothing() {
        // A new sampler's zero countdown, and a recheck interval, were not drawn for
        // sampling: the allocation that ends them is counted against a fresh interval (one
        // that a mean of 2^40 makes all but endless).
        let mut s = Sampler::new();
        assert_eq!(s.sample(64, || HUGE), None);
        assert_eq!(s.mean(), HUGE.mean);
        let mut s = Sampler::new();
        s.restart(Params::OFF, 1);
        assert_eq!(s.countdown, RECHECK_BYTES);
        assert_eq!(s.sample(RECHECK_BYTES as usize + 1, || HUGE), None);
        // An interval drawn before the last start samples nothing either.
        let mut s = Sampler::new();
        s.restart(ON, 1);
        let f = s.countdown as usize;
        let later = Params { epoch: 2, ..HUGE };
        assert_eq!(s.sample(f + 1, || later), None);
        assert_eq!(s.mean(), HUGE.mean);
        assert_eq!(s.epoch, 2);
    }

    /// The countdown a new sampler at `s`'s place draws at its first allocation (1 byte)
    /// under `params`.
    fn first_interval(s: &mut Sampler, params: Params) -> isize {
        *s = Sampler::new();
        assert_eq!(s.sample(1, || params), None);
        s.countdown
    }

    #[test]
    fn each_seed_and_each_sampler_draws_its_own_intervals() {
        // One place, many seeds: the seed mixed with the place must keep every seed apart.
        let mut s = Sampler::new();
        let mut seeds = vec![0u64];
        seeds.extend((0..64).map(|i| 1u64 << i));
        let mut firsts: Vec<isize> = seeds
            .iter()
            .map(|&seed| first_interval(&mut s, Params { seed, ..HUGE }))
            .collect();
        firsts.sort_unstable();
        firsts.dedup();
        assert_eq!(
            firsts.len(),
            seeds.len(),
            "two seeds drew the same interval"
        );
        // Two places, one seed: two threads' samplers draw apart.
        let mut t = Sampler::new();
        for seed in [0, 7] {
            let params = Params { seed, ..HUGE };
            assert_ne!(
                first_interval(&mut s, params),
                first_interval(&mut t, params)
            );
        }
    }

    #[test]
    fn a_new_epoch_reseeds_whatever_came_before() {
        // Intervals of the new epoch depend on its seed alone, not on the numbers the
        // sampler drew before (each run: an epoch of mean 1, which draws nothing, then a
        // second one).
        let every = Params {
            mean: 1,
            epoch: 1,
            seed: 0,
        };
        let next = Params { epoch: 2, ..ON };
        let mut s = Sampler::new();
        let run = |s: &mut Sampler, seed: u64| {
            *s = Sampler::new();
            s.restart(every, seed);
            (0..10_000)
                .map(|i| s.sample(16 + i % 300, || next).unwrap_or(0))
                .collect::<Vec<_>>()
        };
        let a = run(&mut s, 1);
        let b = run(&mut s, 2);
        assert!(a.iter().any(|&w| w != 0));
        assert_eq!(a, b);
    }

    #[test]
    fn restart_takes_effect_at_the_next_allocation() {
        let mut s = Sampler::new();
        // Off, so 16 MiB from the next look.
        assert_eq!(s.sample(64, || Params::OFF), None);
        s.restart(ON, 11);
        assert_eq!(s.mean(), ON.mean);
        let f = s.countdown;
        assert!((0..RECHECK_BYTES).contains(&f));
        // The fresh interval runs out exactly where it was drawn to: no look before it.
        assert_eq!(s.sample(f as usize, || unreachable!("looked early")), None);
        assert_eq!(s.sample(1, || ON), Some(ON.mean + 1));
        // The same seed draws the same interval, on any sampler.
        let mut t = Sampler::new();
        t.restart(ON, 11);
        assert_eq!(t.countdown, f);
        t.restart(ON, 12);
        assert_ne!(t.countdown, f);
        // Restarted off: a recheck interval.
        s.restart(Params::OFF, 11);
        assert_eq!((s.mean(), s.countdown), (0, RECHECK_BYTES));
    }
}
