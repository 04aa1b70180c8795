/*
 * glibc_thread: the shape of glibc's own malloc benchmark, benchtests/bench-malloc-thread.c
 * (rewritten here, not copied).
 *
 * Each thread keeps a working set of slots and, for a fixed time, frees a random slot and
 * mallocs into it a block whose size is drawn with density 1/x^2 between 4 bytes and a
 * bound: mostly small blocks, a few large ones, as in glibc's benchmark. Like glibc's, it
 * does not touch the blocks, so it measures the allocator's own bookkeeping. Threads do not
 * share memory.
 *
 *   glibc_thread THREADS SECONDS [SLOTS] [MAX_SIZE]
 *
 *   THREADS   threads, each with its own working set (1 runs on the main thread)
 *   SECONDS   how long to run (fixed time)
 *   SLOTS     slots per thread (default 1024, glibc's WORKING_SET_SIZE)
 *   MAX_SIZE  largest block (default 32768, glibc's MAX_ALLOCATION_SIZE)
 *
 * Fixed time: prints free+malloc steps per second over all threads.
 */
#include "common.h"

#include <pthread.h>
#include <stdatomic.h>
#include <unistd.h>

typedef struct {
    long slots;
    uint64_t seed;
    const size_table_t *sizes;
    long ops;
} job_t;

static atomic_int stop_flag;

static void *run(void *arg) {
    job_t *job = (job_t *)arg;
    rng_t r = rng_seeded(job->seed);
    void **slot = (void **)calloc((size_t)job->slots, sizeof(void *));
    long ops = 0;
    while (!atomic_load_explicit(&stop_flag, memory_order_relaxed)) {
        /* 1024 steps between looks at the clock flag, as glibc's benchmark does */
        for (int k = 0; k < 1024; k++) {
            uint64_t j = rng_below(&r, (uint64_t)job->slots);
            free(slot[j]);
            slot[j] = malloc(size_pick(job->sizes, &r));
        }
        ops += 1024;
    }
    for (long j = 0; j < job->slots; j++) free(slot[j]);
    free(slot);
    job->ops = ops;
    return NULL;
}

/* Inverse CDF of the density 1/x^2 on [lo, hi]. */
static uint32_t inverse_square(double u, double lo, double hi) {
    double a = 1.0 / lo, b = 1.0 / hi;
    return (uint32_t)(1.0 / (a - u * (a - b)));
}

static void *timer(void *arg) {
    double seconds = *(const double *)arg;
    usleep((useconds_t)(seconds * 1e6));
    atomic_store(&stop_flag, 1);
    return NULL;
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: %s THREADS SECONDS [SLOTS] [MAX_SIZE]\n", argv[0]);
        return 2;
    }
    int threads = (int)arg_int(argc, argv, 1, 1);
    double seconds = arg_double(argc, argv, 2, 1.0);
    long slots = (long)arg_int(argc, argv, 3, 1024);
    double max_size = (double)arg_int(argc, argv, 4, 32768);
    if (threads < 1 || threads > 256 || slots < 1 || max_size < 4) {
        fprintf(stderr, "bad arguments\n");
        return 2;
    }

    static size_table_t sizes;
    rng_t r = rng_seeded(88172645463325252ULL);
    for (int i = 0; i < SIZE_TABLE_LEN; i++) sizes.v[i] = inverse_square(rng_unit(&r), 4, max_size);

    job_t jobs[256];
    pthread_t tids[256];
    for (int t = 0; t < threads; t++) jobs[t] = (job_t){slots, (uint64_t)t + 100, &sizes, 0};

    pthread_t timer_tid;
    double t0 = now_sec();
    pthread_create(&timer_tid, NULL, timer, &seconds);
    if (threads == 1) {
        run(&jobs[0]);
    } else {
        for (int t = 0; t < threads; t++) pthread_create(&tids[t], NULL, run, &jobs[t]);
        for (int t = 0; t < threads; t++) pthread_join(tids[t], NULL);
    }
    double t1 = now_sec();
    pthread_join(timer_tid, NULL);

    long ops = 0;
    for (int t = 0; t < threads; t++) ops += jobs[t].ops;
    printf("# threads %d ops %ld seconds %.3f\n", threads, ops, t1 - t0);
    report_throughput((double)ops / (t1 - t0));
    return 0;
}
