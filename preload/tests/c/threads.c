/* Producer/consumer across threads: blocks malloc'd by one thread are freed by another, then
 * every thread exits (flushing its cache). Prints a checksum that must not depend on the
 * allocator. Usage: threads [pairs] [rounds]. */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SLOTS 1024

struct queue {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    void *items[SLOTS];
    size_t head, tail;
    int done;
};

static int rounds = 20000;

static void push(struct queue *q, void *p) {
    pthread_mutex_lock(&q->lock);
    while (q->tail - q->head == SLOTS) pthread_cond_wait(&q->cond, &q->lock);
    q->items[q->tail++ % SLOTS] = p;
    pthread_cond_broadcast(&q->cond);
    pthread_mutex_unlock(&q->lock);
}

static void *pop(struct queue *q) {
    pthread_mutex_lock(&q->lock);
    while (q->tail == q->head && !q->done) pthread_cond_wait(&q->cond, &q->lock);
    void *p = q->tail == q->head ? NULL : q->items[q->head++ % SLOTS];
    pthread_cond_broadcast(&q->cond);
    pthread_mutex_unlock(&q->lock);
    return p;
}

static void *producer(void *arg) {
    struct queue *q = arg;
    for (int i = 0; i < rounds; i++) {
        size_t n = 16 + (size_t)(i * 7919) % (i % 50 == 0 ? 200000 : 2000);
        unsigned char *p = malloc(n);
        memset(p, (unsigned char)n, n);
        memcpy(p, &n, sizeof n);
        push(q, p);
    }
    pthread_mutex_lock(&q->lock);
    q->done = 1;
    pthread_cond_broadcast(&q->cond);
    pthread_mutex_unlock(&q->lock);
    return NULL;
}

static void *consumer(void *arg) {
    struct queue *q = arg;
    uint64_t sum = 0;
    unsigned char *p;
    while ((p = pop(q)) != NULL) {
        size_t n;
        memcpy(&n, p, sizeof n);
        if (p[n - 1] != (unsigned char)n) { fprintf(stderr, "corrupted block\n"); abort(); }
        sum += n;
        free(p);
    }
    uint64_t *r = malloc(sizeof *r);
    *r = sum;
    return r;
}

int main(int argc, char **argv) {
    int pairs = argc > 1 ? atoi(argv[1]) : 4;
    if (argc > 2) rounds = atoi(argv[2]);
    pthread_t t[2 * 64];
    struct queue *qs = calloc((size_t)pairs, sizeof *qs);
    for (int i = 0; i < pairs; i++) {
        pthread_mutex_init(&qs[i].lock, NULL);
        pthread_cond_init(&qs[i].cond, NULL);
        pthread_create(&t[2 * i], NULL, producer, &qs[i]);
        pthread_create(&t[2 * i + 1], NULL, consumer, &qs[i]);
    }
    uint64_t total = 0;
    for (int i = 0; i < pairs; i++) {
        void *r;
        pthread_join(t[2 * i], NULL);
        pthread_join(t[2 * i + 1], &r);
        total += *(uint64_t *)r;
        free(r); /* allocated by the consumer thread, which has exited */
    }
    free(qs);
    printf("pairs %d rounds %d bytes %llu\n", pairs, rounds, (unsigned long long)total);
    return 0;
}
