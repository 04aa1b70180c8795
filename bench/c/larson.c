/*
 * larson: a server that hands its work from thread to thread (after Larson and Krishnan's
 * benchmark, "Memory allocation for long-running server applications", ISMM 1998).
 *
 * Imitates a threaded server whose connections are served by short-lived worker threads:
 * each worker owns an array of objects of 8..1000 bytes, replaces random ones (free one,
 * malloc another, write to it), and after a while hands the whole array to a new worker
 * thread and exits. The new worker frees the objects the old one allocated as it goes on, so
 * most frees are remote frees of memory whose allocating thread has already exited. The
 * main thread allocates the first arrays, so even the first workers free someone else's
 * memory.
 *
 *   larson THREADS SECONDS SLOTS MIN MAX ROUNDS
 *
 *   THREADS   workers running at once (each a chain of successive threads)
 *   SECONDS   how long to run (fixed time)
 *   SLOTS     objects per worker's array (e.g. 5000)
 *   MIN, MAX  object sizes are uniform in [MIN, MAX] (e.g. 8 and 1000)
 *   ROUNDS    a worker does ROUNDS * SLOTS replacements, then hands over (e.g. 20)
 *
 * Fixed time: prints replacements (free + malloc) per second over all workers, from the
 * start to the moment the last worker has seen the stop flag.
 */
#include "common.h"

#include <pthread.h>
#include <stdatomic.h>
#include <unistd.h>

typedef struct {
    char **slot;
    long slots;
    long per_thread; /* replacements before handing over */
    uint32_t min, max;
    rng_t rng;
    long ops;
    long handoffs;
} chain_t;

static atomic_int stop_flag;
static atomic_int live_chains;
static pthread_attr_t detached;

static void *worker(void *arg) {
    chain_t *c = (chain_t *)arg;
    const uint64_t range = c->max - c->min + 1;
    long i;
    for (i = 0; i < c->per_thread; i++) {
        uint64_t v = rng_below(&c->rng, (uint64_t)c->slots);
        free(c->slot[v]);
        size_t sz = c->min + rng_below(&c->rng, range);
        volatile char *p = (volatile char *)xmalloc(sz);
        p[0] = 'a';
        p[1] = 'b';
        c->slot[v] = (char *)p;
        /* checked every 64 steps: an atomic load per step would be noticeable */
        if ((i & 63) == 63 && atomic_load_explicit(&stop_flag, memory_order_relaxed)) {
            i++;
            break;
        }
    }
    c->ops += i;
    if (!atomic_load(&stop_flag)) {
        /* Hand the array to a fresh thread and exit: the server's next worker. */
        pthread_t next;
        c->handoffs++;
        if (pthread_create(&next, &detached, worker, c) == 0) return NULL;
        fprintf(stderr, "pthread_create failed\n");
    }
    atomic_fetch_sub(&live_chains, 1);
    return NULL;
}

int main(int argc, char **argv) {
    if (argc < 7) {
        fprintf(stderr, "usage: %s THREADS SECONDS SLOTS MIN MAX ROUNDS\n", argv[0]);
        return 2;
    }
    int threads = (int)arg_int(argc, argv, 1, 2);
    double seconds = arg_double(argc, argv, 2, 1.0);
    long slots = (long)arg_int(argc, argv, 3, 5000);
    uint32_t min = (uint32_t)arg_int(argc, argv, 4, 8);
    uint32_t max = (uint32_t)arg_int(argc, argv, 5, 1000);
    long rounds = (long)arg_int(argc, argv, 6, 20);
    if (threads < 1 || threads > 256 || slots < 1 || min < 2 || max < min || rounds < 1) {
        fprintf(stderr, "bad arguments\n");
        return 2;
    }

    pthread_attr_init(&detached);
    pthread_attr_setdetachstate(&detached, PTHREAD_CREATE_DETACHED);

    chain_t *chains = (chain_t *)calloc((size_t)threads, sizeof(chain_t));
    for (int t = 0; t < threads; t++) {
        chain_t *c = &chains[t];
        c->slots = slots;
        c->per_thread = rounds * slots;
        c->min = min;
        c->max = max;
        c->rng = rng_seeded(4141 + (uint64_t)t);
        c->slot = (char **)xmalloc((size_t)slots * sizeof(char *));
        for (long i = 0; i < slots; i++) {
            c->slot[i] = (char *)xmalloc(c->min + rng_below(&c->rng, max - min + 1));
            c->slot[i][0] = 'a';
        }
    }

    atomic_store(&live_chains, threads);
    double t0 = now_sec();
    for (int t = 0; t < threads; t++) {
        pthread_t tid;
        if (pthread_create(&tid, &detached, worker, &chains[t]) != 0) {
            fprintf(stderr, "pthread_create failed\n");
            return 1;
        }
    }
    usleep((useconds_t)(seconds * 1e6));
    atomic_store(&stop_flag, 1);
    while (atomic_load(&live_chains) > 0) usleep(200);
    double t1 = now_sec();

    long ops = 0, handoffs = 0;
    for (int t = 0; t < threads; t++) {
        ops += chains[t].ops;
        handoffs += chains[t].handoffs;
        for (long i = 0; i < slots; i++) free(chains[t].slot[i]);
        free(chains[t].slot);
    }
    free(chains);
    printf("# threads %d ops %ld handoffs %ld seconds %.3f\n", threads, ops, handoffs, t1 - t0);
    report_throughput((double)ops / (t1 - t0));
    return 0;
}
