/*
 * churn: threads created and destroyed in rounds, their objects outliving them.
 *
 * Imitates a program that starts a fresh batch of threads for each job (a build tool's
 * per-target workers, a thread-per-request server, a parallel loop without a pool): each
 * round starts THREADS threads; each one first frees the objects that a thread of the
 * previous round (not its own predecessor: thread t frees what thread t+1 kept) left
 * behind, then does OBJECTS mallocs of 16 B .. 4 KiB (log-uniform) into a working set of
 * random slots, frees most of them, hands KEEP of them to the next round, and exits.
 * Allocators that tie memory to a thread must cope with threads that die holding it and
 * with their memory being freed later by strangers.
 *
 *   churn ROUNDS THREADS OBJECTS KEEP
 *
 *   ROUNDS   rounds of threads (each round joins all its threads before the next starts)
 *   THREADS  threads per round
 *   OBJECTS  mallocs per thread per round
 *   KEEP     objects each thread leaves alive for the next round
 *
 * Fixed work: prints the seconds for all rounds, thread creation and exit included.
 */
#include "common.h"

#include <pthread.h>

typedef struct {
    char **free_these; /* KEEP objects left by a thread of the previous round, or NULL */
    char **keep_out;   /* where this thread leaves its KEEP objects */
    long objects, keep, local;
    uint64_t seed;
    const size_table_t *sizes;
} job_t;

static void *run(void *arg) {
    const job_t *job = (const job_t *)arg;
    rng_t r = rng_seeded(job->seed);
    if (job->free_these)
        for (long i = 0; i < job->keep; i++) free(job->free_these[i]);

    char **live = (char **)calloc((size_t)job->local, sizeof(char *));
    for (long i = 0; i < job->objects; i++) {
        uint64_t j = rng_below(&r, (uint64_t)job->local);
        free(live[j]);
        live[j] = (char *)xmalloc(size_pick(job->sizes, &r));
        live[j][0] = (char)i;
    }
    /* the first KEEP slots survive into the next round; the rest die here */
    long kept = 0;
    for (long j = 0; j < job->local; j++) {
        if (!live[j]) continue;
        if (kept < job->keep)
            job->keep_out[kept++] = live[j];
        else
            free(live[j]);
    }
    while (kept < job->keep) job->keep_out[kept++] = (char *)xmalloc(16);
    free(live);
    return NULL;
}

int main(int argc, char **argv) {
    if (argc < 5) {
        fprintf(stderr, "usage: %s ROUNDS THREADS OBJECTS KEEP\n", argv[0]);
        return 2;
    }
    long rounds = (long)arg_int(argc, argv, 1, 100);
    int threads = (int)arg_int(argc, argv, 2, 4);
    long objects = (long)arg_int(argc, argv, 3, 20000);
    long keep = (long)arg_int(argc, argv, 4, 1000);
    if (rounds < 1 || threads < 1 || threads > 256 || objects < 0 || keep < 0) {
        fprintf(stderr, "bad arguments\n");
        return 2;
    }
    long local = keep > 512 ? keep : 512;
    static size_table_t sizes;
    size_table_log_uniform(&sizes, 5, 16, 4096);

    /* two generations of kept objects: the previous round's and the current round's */
    char **gen[2];
    for (int g = 0; g < 2; g++) gen[g] = (char **)calloc((size_t)(threads * keep) + 1, sizeof(char *));
    job_t jobs[256];
    pthread_t tids[256];

    double t0 = now_sec();
    for (long round = 0; round < rounds; round++) {
        char **prev = gen[(round + 1) & 1], **cur = gen[round & 1];
        for (int t = 0; t < threads; t++) {
            jobs[t] = (job_t){
                round ? prev + ((t + 1) % threads) * keep : NULL,
                cur + t * keep,
                objects,
                keep,
                local,
                (uint64_t)(round * threads + t + 1),
                &sizes,
            };
            pthread_create(&tids[t], NULL, run, &jobs[t]);
        }
        for (int t = 0; t < threads; t++) pthread_join(tids[t], NULL);
    }
    /* the main thread frees the last round's survivors */
    char **last = gen[(rounds - 1) & 1];
    for (long i = 0; i < threads * keep; i++) free(last[i]);
    double t1 = now_sec();

    free(gen[0]);
    free(gen[1]);
    printf("# rounds %ld threads %d objects %ld keep %ld\n", rounds, threads, objects, keep);
    report_seconds(t1 - t0);
    return 0;
}
