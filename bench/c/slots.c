/*
 * slots: a random-slot working set.
 *
 * Imitates a long-running program whose live data is a fixed number of objects that are
 * replaced one at a time in no particular order: a cache with random eviction, a
 * simulation's particle or entity table, an interpreter's heap in steady state. Each step
 * frees the object in a random slot and mallocs a new one into it, then writes a byte to
 * the new object (so that pages an allocator hands out are really touched).
 *
 *   slots SLOTS SIZE ITERS THREADS [MAX_LIVE]
 *
 *   SLOTS     live objects per working set (e.g. 1024, 100000)
 *   SIZE      object size in bytes (suffixes K, M), or "mixed": log-uniform 16 B .. 32 KiB
 *   ITERS     free+malloc steps per working set
 *   THREADS   independent working sets, one per thread (1 runs on the main thread)
 *   MAX_LIVE  cap on SLOTS * SIZE per working set (default 2G): at large sizes the slot
 *             count is lowered to MAX_LIVE / SIZE, so that 100000 slots of 256 KiB do not
 *             ask for 25 GiB; the slot count used is printed on a "#" line
 *
 * Fixed work: prints the seconds from the first malloc to the last free (filling the
 * slots, ITERS steps, freeing everything), over all threads.
 */
#include "common.h"

#include <pthread.h>

typedef struct {
    long slots;
    long size; /* 0 = mixed */
    long iters;
    uint64_t seed;
    const size_table_t *table;
} job_t;

static void *run(void *arg) {
    const job_t *job = (const job_t *)arg;
    rng_t r = rng_seeded(job->seed);
    char **slot = (char **)xmalloc((size_t)job->slots * sizeof(char *));
    const long n = job->slots;

    for (long i = 0; i < n; i++) {
        size_t sz = job->size ? (size_t)job->size : size_pick(job->table, &r);
        slot[i] = (char *)xmalloc(sz);
        slot[i][0] = (char)i;
    }
    if (job->size) {
        /* One size: the common case of a table of same-typed records. */
        const size_t sz = (size_t)job->size;
        for (long i = 0; i < job->iters; i++) {
            uint64_t j = rng_below(&r, (uint64_t)n);
            free(slot[j]);
            char *p = (char *)xmalloc(sz);
            p[0] = (char)i;
            slot[j] = p;
        }
    } else {
        for (long i = 0; i < job->iters; i++) {
            uint64_t j = rng_below(&r, (uint64_t)n);
            free(slot[j]);
            char *p = (char *)xmalloc(size_pick(job->table, &r));
            p[0] = (char)i;
            slot[j] = p;
        }
    }
    for (long i = 0; i < n; i++) free(slot[i]);
    free(slot);
    return NULL;
}

int main(int argc, char **argv) {
    if (argc < 5) {
        fprintf(stderr, "usage: %s SLOTS SIZE|mixed ITERS THREADS [MAX_LIVE]\n", argv[0]);
        return 2;
    }
    long slots = (long)arg_int(argc, argv, 1, 1024);
    long size = strcmp(argv[2], "mixed") == 0 ? 0 : (long)arg_int(argc, argv, 2, 64);
    long iters = (long)arg_int(argc, argv, 3, 1000000);
    int threads = (int)arg_int(argc, argv, 4, 1);
    long long max_live = arg_int(argc, argv, 5, 2LL << 30);
    if (slots < 1 || size < 0 || iters < 0 || threads < 1 || threads > 256) {
        fprintf(stderr, "bad arguments\n");
        return 2;
    }
    /* log-uniform 16 B .. 32 KiB averages (32768 - 16) / ln(2048) = 4.3 KiB */
    long cap_size = size ? size : 4310;
    if ((long long)slots * cap_size > max_live) slots = (long)(max_live / cap_size);
    if (slots < 1) slots = 1;

    static size_table_t table;
    size_table_log_uniform(&table, 7, 16, 32768);

    job_t jobs[256];
    pthread_t tids[256];
    for (int t = 0; t < threads; t++) {
        jobs[t] = (job_t){slots, size, iters, (uint64_t)t + 1, &table};
    }
    double t0 = now_sec();
    if (threads == 1) {
        run(&jobs[0]);
    } else {
        for (int t = 0; t < threads; t++) pthread_create(&tids[t], NULL, run, &jobs[t]);
        for (int t = 0; t < threads; t++) pthread_join(tids[t], NULL);
    }
    double t1 = now_sec();
    printf("# slots %ld size %s iters %ld threads %d\n", slots, size ? argv[2] : "mixed", iters,
           threads);
    report_seconds(t1 - t0);
    return 0;
}
