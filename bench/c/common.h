/*
 * Shared helpers for the real-program shape benchmarks (the C and C++ programs here).
 *
 * Every program in this folder is a self-contained workload that calls malloc/free (or
 * new/delete) through the C ABI, so that any allocator can be put under it with LD_PRELOAD.
 * Each one prints exactly one line of its own measure on stdout:
 *
 *     result <seconds> s          fixed work: seconds the workload took (process start,
 *                                 argument parsing and thread start-up excluded where the
 *                                 program can tell them apart)
 *     result <ops per second> ops/s   fixed time: operations completed per second
 *
 * plus, optionally, lines starting with "#" (ignored by scripts/realprog.py) that say what
 * was done, so a run can be checked by eye.
 *
 * Randomness comes from a small xorshift64* generator with fixed seeds, so that every run of
 * a program with the same arguments does the same sequence of allocations.
 */
#ifndef SPANALLOC_BENCH_COMMON_H
#define SPANALLOC_BENCH_COMMON_H

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* ---- random numbers ---------------------------------------------------------------- */

/* xorshift64*: tiny, fast, good enough for picking slots and sizes. State must not be 0. */
typedef struct {
    uint64_t s;
} rng_t;

static inline rng_t rng_seeded(uint64_t seed) {
    rng_t r;
    /* splitmix64 of the seed, so that seeds 1, 2, 3... give unrelated streams */
    uint64_t z = seed + 0x9e3779b97f4a7c15ULL;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    z ^= z >> 31;
    r.s = z ? z : 0x2545f4914f6cdd1dULL;
    return r;
}

static inline uint64_t rng_next(rng_t *r) {
    uint64_t x = r->s;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    r->s = x;
    return x * 0x2545f4914f6cdd1dULL;
}

/* Uniform in [0, n), n > 0 (multiply-shift, no division). */
static inline uint64_t rng_below(rng_t *r, uint64_t n) {
    return (uint64_t)(((unsigned __int128)rng_next(r) * n) >> 64);
}

/* Uniform in [lo, hi] inclusive. */
static inline uint64_t rng_range(rng_t *r, uint64_t lo, uint64_t hi) {
    return lo + rng_below(r, hi - lo + 1);
}

/* Uniform double in [0, 1). */
static inline double rng_unit(rng_t *r) {
    return (double)(rng_next(r) >> 11) * (1.0 / 9007199254740992.0);
}

/* ---- size tables --------------------------------------------------------------------
 * Drawing sizes with pow/log in the hot loop would cost more than the malloc being
 * measured, so programs that need a distribution precompute a table of sizes once and then
 * index it with the generator.
 */
#define SIZE_TABLE_LEN 4096 /* power of two */

typedef struct {
    uint32_t v[SIZE_TABLE_LEN];
} size_table_t;

/* Log-uniform sizes in [lo, hi]: as many objects in 16..32 B as in 16..32 KiB. */
static inline void size_table_log_uniform(size_table_t *t, uint64_t seed, double lo, double hi) {
    rng_t r = rng_seeded(seed);
    double a = log(lo), b = log(hi);
    for (int i = 0; i < SIZE_TABLE_LEN; i++) {
        double x = exp(a + (b - a) * rng_unit(&r));
        t->v[i] = (uint32_t)x;
    }
}

static inline uint32_t size_pick(const size_table_t *t, rng_t *r) {
    return t->v[rng_next(r) >> (64 - 12)];
}

/* ---- time and output ----------------------------------------------------------------- */

static inline double now_sec(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static inline void report_seconds(double s) {
    printf("result %.6f s\n", s);
    fflush(stdout);
}

static inline void report_throughput(double ops_per_sec) {
    printf("result %.3f ops/s\n", ops_per_sec);
    fflush(stdout);
}

/* ---- arguments ----------------------------------------------------------------------- */

/* Integer argument i of argv, or def when absent; accepts k/K (x1024) and m/M (x1024^2)
 * suffixes so that sizes read naturally ("4K", "256K"). Exits on garbage. */
static inline long long arg_int(int argc, char **argv, int i, long long def) {
    if (i >= argc) return def;
    char *end;
    long long v = strtoll(argv[i], &end, 10);
    if (end == argv[i]) goto bad;
    if (*end == 'k' || *end == 'K') {
        v *= 1024;
        end++;
    } else if (*end == 'm' || *end == 'M') {
        v *= 1024 * 1024;
        end++;
    }
    if (*end != '\0') goto bad;
    return v;
bad:
    fprintf(stderr, "bad integer argument %d: '%s'\n", i, argv[i]);
    exit(2);
}

static inline double arg_double(int argc, char **argv, int i, double def) {
    if (i >= argc) return def;
    char *end;
    double v = strtod(argv[i], &end);
    if (end == argv[i] || *end != '\0') {
        fprintf(stderr, "bad number argument %d: '%s'\n", i, argv[i]);
        exit(2);
    }
    return v;
}

/* malloc that dies loudly: a benchmark that silently skips failed allocations would
 * measure less work for the allocator that fails. */
static inline void *xmalloc(size_t n) {
    void *p = malloc(n);
    if (!p) {
        fprintf(stderr, "malloc(%zu) failed\n", n);
        abort();
    }
    return p;
}

#endif
