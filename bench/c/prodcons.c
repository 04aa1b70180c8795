/*
 * prodcons: producer/consumer pipelines, every object freed by a thread that did not
 * allocate it.
 *
 * Imitates a pipeline of threads passing messages through queues (a logging thread, a
 * network stage handing requests to workers, a parser feeding a compiler back end): each
 * producer mallocs messages of 16 B .. 1 KiB (log-uniform), writes into them and pushes them
 * into a bounded lock-free single-producer single-consumer ring; its consumer pops each one,
 * reads it and frees it. With PAIRS > 1 there are PAIRS producers and PAIRS consumers, each
 * pair with its own ring, all at once.
 *
 *   prodcons PAIRS MESSAGES [RING]
 *
 *   PAIRS     producer/consumer pairs (1: one thread allocates, one frees; 8: 8 + 8 threads)
 *   MESSAGES  messages per pair
 *   RING      ring capacity, a power of two (default 1024)
 *
 * Fixed work: prints the seconds until every message has been freed. A side that finds
 * the ring full (or empty) spins briefly and then yields, so that more threads than cores
 * still make progress.
 */
#include "common.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>

typedef struct {
    /* producer and consumer indices on their own cache lines */
    _Alignas(64) atomic_ulong head; /* next slot to write (producer) */
    _Alignas(64) atomic_ulong tail; /* next slot to read (consumer) */
    _Alignas(64) char **slot;
    unsigned long mask;
    long messages;
    uint64_t seed;
    const size_table_t *sizes;
    long checksum;
} ring_t;

static inline void backoff(int *spins) {
    if (++*spins < 64) {
        __builtin_ia32_pause();
    } else {
        sched_yield();
        *spins = 0;
    }
}

static void *producer(void *arg) {
    ring_t *q = (ring_t *)arg;
    rng_t r = rng_seeded(q->seed);
    unsigned long head = 0;
    for (long i = 0; i < q->messages; i++) {
        uint32_t sz = size_pick(q->sizes, &r);
        char *m = (char *)xmalloc(sz);
        m[0] = (char)i;
        m[sz - 1] = (char)(i >> 8);
        int spins = 0;
        while (head - atomic_load_explicit(&q->tail, memory_order_acquire) > q->mask)
            backoff(&spins);
        q->slot[head & q->mask] = m;
        atomic_store_explicit(&q->head, ++head, memory_order_release);
    }
    return NULL;
}

static void *consumer(void *arg) {
    ring_t *q = (ring_t *)arg;
    unsigned long tail = 0;
    long sum = 0;
    for (long i = 0; i < q->messages; i++) {
        int spins = 0;
        while (atomic_load_explicit(&q->head, memory_order_acquire) == tail) backoff(&spins);
        char *m = q->slot[tail & q->mask];
        atomic_store_explicit(&q->tail, ++tail, memory_order_release);
        sum += m[0];
        free(m);
    }
    q->checksum = sum;
    return NULL;
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: %s PAIRS MESSAGES [RING]\n", argv[0]);
        return 2;
    }
    int pairs = (int)arg_int(argc, argv, 1, 1);
    long messages = (long)arg_int(argc, argv, 2, 1000000);
    long ring = (long)arg_int(argc, argv, 3, 1024);
    if (pairs < 1 || pairs > 128 || messages < 0 || ring < 2 || (ring & (ring - 1))) {
        fprintf(stderr, "bad arguments\n");
        return 2;
    }
    static size_table_t sizes;
    size_table_log_uniform(&sizes, 99, 16, 1024);

    ring_t *q = (ring_t *)aligned_alloc(64, sizeof(ring_t) * (size_t)pairs);
    memset(q, 0, sizeof(ring_t) * (size_t)pairs);
    for (int p = 0; p < pairs; p++) {
        q[p].slot = (char **)calloc((size_t)ring, sizeof(char *));
        q[p].mask = (unsigned long)ring - 1;
        q[p].messages = messages;
        q[p].seed = (uint64_t)p + 1;
        q[p].sizes = &sizes;
    }
    pthread_t prod[128], cons[128];
    double t0 = now_sec();
    for (int p = 0; p < pairs; p++) {
        pthread_create(&cons[p], NULL, consumer, &q[p]);
        pthread_create(&prod[p], NULL, producer, &q[p]);
    }
    for (int p = 0; p < pairs; p++) {
        pthread_join(prod[p], NULL);
        pthread_join(cons[p], NULL);
    }
    double t1 = now_sec();
    long sum = 0;
    for (int p = 0; p < pairs; p++) {
        sum += q[p].checksum;
        free(q[p].slot);
    }
    free(q);
    printf("# pairs %d messages %ld ring %ld checksum %ld\n", pairs, messages, ring, sum);
    report_seconds(t1 - t0);
    return 0;
}
