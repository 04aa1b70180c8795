/* Heap profiling of a C program under LD_PRELOAD: leak_a keeps 8 MiB, leak_b 2 MiB, churn
 * frees what it allocates. With SPANALLOC_PROFILE_DUMP set, raises SIGUSR2 and waits for
 * the profile it makes (PATH.1), then exits (the exit profile goes to PATH). */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static void *kept[3000];

__attribute__((noinline)) void leak_a(void) {
    for (int i = 0; i < 2048; i++) {
        kept[i] = malloc(4096);
        memset(kept[i], i, 4096);
    }
}

__attribute__((noinline)) void leak_b(void) {
    for (int i = 2048; i < 2560; i++) {
        kept[i] = malloc(4096);
        memset(kept[i], i, 4096);
    }
}

__attribute__((noinline)) void churn(void) {
    for (int i = 0; i < 100000; i++) {
        char *p = malloc(100 + i % 200);
        p[0] = (char)i;
        free(p);
    }
}

int main(void) {
    leak_a();
    leak_b();
    churn();
    const char *path = getenv("SPANALLOC_PROFILE_DUMP");
    if (path == NULL) {
        return 2;
    }
    char signalled[4096];
    snprintf(signalled, sizeof signalled, "%s.1", path);
    raise(SIGUSR2);
    for (int i = 0; i < 2000 && access(signalled, F_OK) != 0; i++) {
        struct timespec ts = {0, 10 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    if (access(signalled, F_OK) != 0) {
        return 3;
    }
    puts("ok");
    return 0;
}
