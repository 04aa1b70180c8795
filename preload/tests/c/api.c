/* Calls every symbol libspanalloc.so exports, through the dynamic linker, and prints one
 * line per check. Run under LD_PRELOAD=libspanalloc.so; tests/c_program.rs compares the
 * output with api.expected. With an argument it does one thing that must stop the process.
 * Build with -O0 -fno-builtin so that the compiler keeps every call.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <malloc.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <dlfcn.h>

/* Not declared by every libc's headers. */
void *reallocarray(void *, size_t, size_t);
void *pvalloc(size_t);
/* C23, newer than this glibc: looked up at run time (found in libspanalloc.so). */
static void (*free_sized)(void *, size_t);
static void (*free_aligned_sized)(void *, size_t, size_t);
void *__libc_malloc(size_t);
void __libc_free(void *);
void *__libc_calloc(size_t, size_t);
void *__libc_realloc(void *, size_t);
void *__libc_memalign(size_t, size_t);

static int failures;

static void check(const char *what, int ok) {
    printf("%s: %s\n", what, ok ? "ok" : "FAIL");
    if (!ok) failures++;
}

static int aligned(void *p, size_t a) { return ((uintptr_t)p & (a - 1)) == 0; }

static int all(const void *p, int byte, size_t n) {
    const unsigned char *c = p;
    for (size_t i = 0; i < n; i++)
        if (c[i] != byte) return 0;
    return 1;
}

int main(int argc, char **argv) {
    free_sized = (void (*)(void *, size_t))dlsym(RTLD_DEFAULT, "free_sized");
    free_aligned_sized = (void (*)(void *, size_t, size_t))dlsym(RTLD_DEFAULT, "free_aligned_sized");
    check("free_sized and free_aligned_sized found", free_sized && free_aligned_sized);
    if (!free_sized || !free_aligned_sized) return 1;
    if (argc > 1) {
        if (!strcmp(argv[1], "invalid-free")) { int x; free(&x); }
        if (!strcmp(argv[1], "double-free")) { void *p = malloc(32), *k = malloc(32); free(p); free(p); free(k); }
        if (!strcmp(argv[1], "interior-free")) { char *p = malloc(100); free(p + 8); }
        printf("not stopped\n");
        return 0;
    }
    /* A size glibc serves as 24 usable bytes and spanalloc as 32: shows whose malloc runs. */
    void *probe = malloc(17);
    check("malloc is spanalloc (usable size of 17 is 32)", malloc_usable_size(probe) == 32);
    free(probe);

    void *a = malloc(0), *b = malloc(0);
    check("malloc(0) unique and non-null", a && b && a != b);
    free(a); free(b);
    int ok = 1;
    for (size_t n = 1; n < 5000; n += 7) {
        char *p = malloc(n);
        ok &= p && aligned(p, 16) && malloc_usable_size(p) >= n;
        memset(p, 0x33, n);
        free(p);
    }
    check("malloc 16-aligned, usable", ok);
    errno = 0;
    check("malloc(SIZE_MAX) NULL ENOMEM", malloc(SIZE_MAX) == NULL && errno == ENOMEM);

    errno = 42;
    free(NULL);
    void *f = malloc(1 << 20);
    free(f);
    check("free(NULL) no-op, free keeps errno", errno == 42);

    char *c = calloc(100, 10);
    check("calloc zeroed", c && all(c, 0, 1000));
    free(c);
    errno = 0;
    check("calloc overflow NULL ENOMEM", calloc(SIZE_MAX / 2, 3) == NULL && errno == ENOMEM);

    char *r = realloc(NULL, 10);
    memset(r, 7, 10);
    r = realloc(r, 100000);
    check("realloc grows, keeps contents", r && all(r, 7, 10));
    errno = 0;
    char *r2 = realloc(r, SIZE_MAX - 4);
    check("failed realloc NULL ENOMEM, block intact", r2 == NULL && errno == ENOMEM && all(r, 7, 10));
    check("realloc(p, 0) NULL", realloc(r, 0) == NULL);

    int *arr = reallocarray(NULL, 10, sizeof(int));
    errno = 0;
    check("reallocarray overflow NULL ENOMEM", reallocarray(arr, SIZE_MAX / 2, 4) == NULL && errno == ENOMEM);
    arr = reallocarray(arr, 1000, sizeof(int));
    check("reallocarray", arr != NULL);
    free(arr);

    void *pm = (void *)0x1234;
    check("posix_memalign EINVAL, *p untouched", posix_memalign(&pm, 12, 10) == EINVAL && pm == (void *)0x1234);
    check("posix_memalign 4096", posix_memalign(&pm, 4096, 10) == 0 && aligned(pm, 4096));
    free(pm);

    void *al = aligned_alloc(256, 512);
    check("aligned_alloc 256", al && aligned(al, 256));
    free_aligned_sized(al, 256, 512);
    errno = 0;
    check("aligned_alloc bad alignment EINVAL", aligned_alloc(3, 10) == NULL && errno == EINVAL);

    void *m = memalign(64, 100);
    check("memalign 64", m && aligned(m, 64));
    free(m);
    long pg = sysconf(_SC_PAGESIZE);
    void *v = valloc(10);
    check("valloc page-aligned", v && aligned(v, pg));
    free(v);
    void *pv = pvalloc(1);
    check("pvalloc page-aligned, whole page", pv && aligned(pv, pg) && malloc_usable_size(pv) >= (size_t)pg);
    free(pv);

    check("malloc_usable_size(NULL) 0", malloc_usable_size(NULL) == 0);
    void *s = malloc(40);
    free_sized(s, 40);
    check("free_sized", 1);

    void *l = __libc_malloc(20);
    l = __libc_realloc(l, 200);
    __libc_free(l);
    char *lc = __libc_calloc(4, 4);
    check("__libc_calloc zeroed", lc && all(lc, 0, 16));
    __libc_free(lc);
    void *lm = __libc_memalign(128, 10);
    check("__libc_memalign", lm && aligned(lm, 128));
    free(lm);

    char *dup = strdup("libc's own allocations come from spanalloc too");
    check("strdup", malloc_usable_size(dup) >= strlen(dup) + 1);
    free(dup);

    printf("%d failures\n", failures);
    return failures != 0;
}
