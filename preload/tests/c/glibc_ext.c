/* glibc's extras from C: malloc_trim, mallinfo, mallinfo2, malloc_stats, malloc_info and
 * mallopt, under LD_PRELOAD=libspanalloc.so with SPANALLOC_DECAY_MS=-1 (nothing goes back
 * to the OS but through malloc_trim). Prints one line per check; tests/glibc_ext_program.rs
 * compares the output with glibc_ext.expected and checks malloc_stats's lines on stderr.
 * Build with -O0 -fno-builtin so that the compiler keeps every call.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int failures;

static void check(const char *what, int ok) {
    printf("%s: %s\n", what, ok ? "ok" : "FAIL");
    if (!ok) failures++;
}

/* Resident set in bytes, read without stdio (which would malloc and free a buffer). */
static size_t rss(void) {
    char buf[128] = {0};
    int fd = open("/proc/self/statm", O_RDONLY);
    if (fd < 0) return 0;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0) return 0;
    unsigned long size, resident;
    if (sscanf(buf, "%lu %lu", &size, &resident) != 2) return 0;
    return resident * (size_t)sysconf(_SC_PAGESIZE);
}

static int in_spanalloc(const char *name) {
    Dl_info info;
    void *sym = dlsym(RTLD_DEFAULT, name);
    return sym && dladdr(sym, &info) && info.dli_fname && strstr(info.dli_fname, "libspanalloc");
}

#define SMALL 20000
#define SMALL_SIZE 100
#define LARGE 100
#define LARGE_SIZE (1 << 20)
#define MiB (1 << 20)

static void *small[SMALL], *large[LARGE];

int main(void) {
    const char *names[] = {"malloc_trim", "mallinfo", "mallinfo2", "malloc_stats", "malloc_info", "mallopt"};
    int all = 1;
    for (size_t i = 0; i < sizeof names / sizeof *names; i++) {
        if (!in_spanalloc(names[i])) printf("  %s does not resolve to libspanalloc.so\n", names[i]);
        all &= in_spanalloc(names[i]);
    }
    check("malloc_trim, mallinfo, mallinfo2, malloc_stats, malloc_info, mallopt are spanalloc's", all);

    check("mallopt accepts every parameter (returns 1)",
          mallopt(M_TRIM_THRESHOLD, 128 * 1024) == 1 && mallopt(M_MMAP_THRESHOLD, 64 * 1024) == 1 &&
              mallopt(M_TOP_PAD, 0) == 1 && mallopt(M_ARENA_MAX, 1) == 1 && mallopt(M_MXFAST, 1 << 30) == 1 &&
              mallopt(12345, 0) == 1);

    struct mallinfo2 m0 = mallinfo2();
    for (int i = 0; i < SMALL; i++) {
        small[i] = malloc(SMALL_SIZE);
        memset(small[i], 1, SMALL_SIZE);
    }
    struct mallinfo2 m1 = mallinfo2();
    check("mallinfo2: uordblks grows with live small objects", m1.uordblks >= m0.uordblks + SMALL * SMALL_SIZE);
    check("mallinfo2: arena = uordblks + fordblks", m1.arena == m1.uordblks + m1.fordblks);
    for (int i = 0; i < LARGE; i++) {
        large[i] = malloc(LARGE_SIZE);
        memset(large[i], 1, LARGE_SIZE);
    }
    struct mallinfo2 m2 = mallinfo2();
    struct mallinfo mi = mallinfo();
    check("mallinfo2: hblkhd grows with live large objects", m2.hblkhd >= m1.hblkhd + (size_t)LARGE * LARGE_SIZE);
    check("mallinfo agrees with mallinfo2",
          (size_t)mi.uordblks == m2.uordblks && (size_t)mi.hblkhd == m2.hblkhd && (size_t)mi.arena == m2.arena &&
              mi.usmblks == 0);

    size_t before = rss();
    for (int i = 0; i < SMALL; i++) free(small[i]);
    for (int i = 0; i < LARGE; i++) free(large[i]);
    struct mallinfo2 m3 = mallinfo2();
    check("mallinfo2: uordblks and hblkhd fall after the frees",
          m3.uordblks + SMALL * SMALL_SIZE <= m1.uordblks && m3.hblkhd + (size_t)LARGE * LARGE_SIZE <= m2.hblkhd);
    check("mallinfo2: keepcost counts free pages not yet given back", m3.keepcost >= 50 * MiB);

    int trimmed = malloc_trim(0);
    size_t after = rss();
    struct mallinfo2 m4 = mallinfo2();
    check("malloc_trim(0) returns 1 after freeing", trimmed == 1);
    check("malloc_trim(0): RSS falls by most of what was freed", before > after && before - after >= 80 * MiB);
    check("malloc_trim(0): keepcost is 0 after it", m4.keepcost == 0);
    check("malloc_trim(0) again returns 0 (nothing left to give back)", malloc_trim(0) == 0);

    FILE *f = tmpfile();
    int rc = malloc_info(0, f);
    char text[65536] = {0};
    rewind(f);
    size_t n = fread(text, 1, sizeof text - 1, f);
    fclose(f);
    check("malloc_info(0, f) returns 0 and writes glibc's XML",
          rc == 0 && n > 0 && strncmp(text, "<malloc version=\"1\">\n<heap nr=\"0\">\n<sizes>\n", 42) == 0 &&
              strstr(text, "<total type=\"mmap\" count=\"") && strstr(text, "<system type=\"current\" size=\"") &&
              n > 10 && strcmp(text + n - 10, "</malloc>\n") == 0);
    check("malloc_info(1, f) returns EINVAL", malloc_info(1, stdout) == EINVAL);

    fflush(stdout);
    malloc_stats();

    printf("%d failures\n", failures);
    return failures != 0;
}
