/*
 * measure: runs one benchmark process and reports its wall time and peak resident memory.
 * A helper of scripts/realprog.py, not a workload.
 *
 *   measure REPORT PRELOAD PROGRAM [ARGS...]
 *
 * Forks, sets LD_PRELOAD=PRELOAD in the child (or removes LD_PRELOAD when PRELOAD is
 * empty), execs PROGRAM, waits for it with wait4 and writes one line to the file REPORT:
 *
 *     wall <seconds> maxrss <KiB> status <wait status>
 *
 * Why not from Python directly: Linux counts the memory of the process that called exec into
 * the exec'd program's ru_maxrss, so a child forked from the Python runner would report at
 * least the runner's own 15-20 MiB. Forked from this small program, the floor is about a
 * MiB. The child's own children (gcc's cc1) are included, as wait4 reports them.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: %s REPORT PRELOAD PROGRAM [ARGS...]\n", argv[0]);
        return 2;
    }
    const char *report = argv[1], *preload = argv[2];
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    pid_t pid = fork();
    if (pid < 0) {
        perror("fork");
        return 2;
    }
    if (pid == 0) {
        if (preload[0])
            setenv("LD_PRELOAD", preload, 1);
        else
            unsetenv("LD_PRELOAD");
        execvp(argv[3], argv + 3);
        fprintf(stderr, "exec %s: %s\n", argv[3], strerror(errno));
        _exit(127);
    }
    int status;
    struct rusage ru;
    while (wait4(pid, &status, 0, &ru) < 0) {
        if (errno != EINTR) {
            perror("wait4");
            return 2;
        }
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    FILE *f = fopen(report, "w");
    if (!f) {
        perror(report);
        return 2;
    }
    double wall = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) * 1e-9;
    fprintf(f, "wall %.6f maxrss %ld status %d\n", wall, ru.ru_maxrss, status);
    fclose(f);
    return 0;
}
