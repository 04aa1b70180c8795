/* Instruction counts of the C malloc ABI under callgrind (run by scripts/callgrind_c.sh).
 *
 *   pairs same N     N times: p = malloc(64); free(p)            (the same pointer back)
 *   pairs random N   4096 live 64 B objects; N times: free a random one, malloc into its slot
 *
 * Every call goes through the PLT, as in any program linked against libc. The script runs
 * each shape with N and 2N iterations and reports the difference per iteration, so start-up
 * and set-up cancel out. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SLOTS 4096

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: pairs same|random N\n");
        return 2;
    }
    long n = atol(argv[2]);
    uint64_t x = 88172645463325252ull;
    if (strcmp(argv[1], "same") == 0) {
        for (long i = 0; i < n; i++) {
            void *volatile p = malloc(64);
            free(p);
        }
        return 0;
    }
    static void *slots[SLOTS];
    for (int i = 0; i < SLOTS; i++) slots[i] = malloc(64);
    for (long i = 0; i < n; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        unsigned k = (unsigned)(x & (SLOTS - 1));
        free(slots[k]);
        slots[k] = malloc(64);
    }
    for (int i = 0; i < SLOTS; i++) free(slots[i]);
    return 0;
}
