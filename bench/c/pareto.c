/*
 * pareto: many small allocations with a heavy tail, as general-purpose programs make them.
 *
 * Imitates the allocation stream of an ordinary C program (a compiler, an interpreter, a
 * text-processing tool): object sizes follow a Pareto distribution (most objects are a few
 * dozen bytes, one in a few hundred passes 1 KiB and the tail goes on to 256 KiB), and so do
 * lifetimes: most objects are temporaries freed at once, many live for a short while, a few
 * stay long. Each step mallocs one object, writes a byte to it and then
 *   - 70%: frees it again at once (a temporary buffer),
 *   - 25%: puts it in a FIFO of 1000 recent objects, freeing the oldest (short-lived),
 *   -  5%: puts it in a random slot of a table of 20000, freeing the old one (long-lived).
 *
 *   pareto TOTAL THREADS [ALPHA]
 *
 *   TOTAL    mallocs in all (each is freed, at once or later), split over the threads
 *   THREADS  threads, each with its own objects (1 runs on the main thread)
 *   ALPHA    Pareto shape (default 1.1; smaller is a heavier tail); the scale is 8 bytes
 *
 * Fixed work: prints the seconds for all TOTAL mallocs and their frees.
 */
#include "common.h"

#include <pthread.h>

#define PARETO_LEN 65536 /* power of two: the tail needs more entries than SIZE_TABLE_LEN */
#define FIFO_LEN 1000
#define TABLE_LEN 20000

static uint32_t pareto_sizes[PARETO_LEN];

typedef struct {
    long steps;
    uint64_t seed;
} job_t;

static void *run(void *arg) {
    const job_t *job = (const job_t *)arg;
    rng_t r = rng_seeded(job->seed);
    char *fifo[FIFO_LEN] = {0};
    char **table = (char **)calloc(TABLE_LEN, sizeof(char *));
    int head = 0;
    for (long i = 0; i < job->steps; i++) {
        uint64_t x = rng_next(&r);
        char *p = (char *)xmalloc(pareto_sizes[x >> 48]);
        p[0] = (char)i;
        /* the low bits of the same draw pick the lifetime: 0..99 */
        uint32_t life = (uint32_t)(((x & 0xffffffffu) * 100) >> 32);
        if (life < 70) {
            free(p);
        } else if (life < 95) {
            free(fifo[head]);
            fifo[head] = p;
            head = head + 1 == FIFO_LEN ? 0 : head + 1;
        } else {
            uint64_t j = rng_below(&r, TABLE_LEN);
            free(table[j]);
            table[j] = p;
        }
    }
    for (int i = 0; i < FIFO_LEN; i++) free(fifo[i]);
    for (int i = 0; i < TABLE_LEN; i++) free(table[i]);
    free(table);
    return NULL;
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: %s TOTAL THREADS [ALPHA]\n", argv[0]);
        return 2;
    }
    long total = (long)arg_int(argc, argv, 1, 100000000);
    int threads = (int)arg_int(argc, argv, 2, 1);
    double alpha = arg_double(argc, argv, 3, 1.1);
    if (total < 0 || threads < 1 || threads > 256 || alpha <= 0) {
        fprintf(stderr, "bad arguments\n");
        return 2;
    }

    /* Pareto(scale 8, shape alpha) by inversion, capped at 256 KiB. */
    rng_t r = rng_seeded(1234);
    long over_1k = 0;
    for (int i = 0; i < PARETO_LEN; i++) {
        double u = 1.0 - rng_unit(&r); /* (0, 1] */
        double s = 8.0 / pow(u, 1.0 / alpha);
        if (s > 262144.0) s = 262144.0;
        pareto_sizes[i] = (uint32_t)s;
        over_1k += pareto_sizes[i] > 1024;
    }

    job_t jobs[256];
    pthread_t tids[256];
    for (int t = 0; t < threads; t++) jobs[t] = (job_t){total / threads, (uint64_t)t + 1};
    double t0 = now_sec();
    if (threads == 1) {
        run(&jobs[0]);
    } else {
        for (int t = 0; t < threads; t++) pthread_create(&tids[t], NULL, run, &jobs[t]);
        for (int t = 0; t < threads; t++) pthread_join(tids[t], NULL);
    }
    double t1 = now_sec();
    printf("# total %ld threads %d alpha %.2f sizes over 1 KiB: %.2f%%\n", total, threads, alpha,
           100.0 * (double)over_1k / PARETO_LEN);
    report_seconds(t1 - t0);
    return 0;
}
