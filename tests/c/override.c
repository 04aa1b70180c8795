/* C code for tests/override.rs, compiled into a shared object at test time and loaded into
 * the test binary: its malloc and free are whatever the process's are (spanalloc's, with the
 * `override` feature). */
#include <stdlib.h>
#include <string.h>

/* A buffer of n bytes of 7s, from C's malloc. */
char *c_make_buffer(size_t n) {
    char *p = malloc(n);
    if (p) memset(p, 7, n);
    return p;
}

/* Frees, with C's free, a buffer made elsewhere (by Rust); returns its first byte. */
int c_take_buffer(char *p) {
    int first = p[0];
    free(p);
    return first;
}
