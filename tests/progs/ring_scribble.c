/*
 * A C program with a wild write into refscope's ring, for
 * tests/integration/test_pipeline_c.py: the ring is shared memory mapped
 * into the traced process, so a buggy extension can overwrite it like any
 * other memory. It allocates 100 blocks of 7777 bytes, waits 0.3 s (the
 * recorder drains them), then overwrites what argv[1] names ("slots": every
 * slot with random bytes; "header": head, tail and the header's other
 * counters; "both"; "record": one ALLOC of 2^60 bytes, reserved and
 * committed as the shim would), then allocates and frees 20000
 * blocks and 100 more of 7778 bytes. Prints "done" and exits 0: tracing must neither crash nor
 * stall it, whatever the recorder makes of the rest.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

/* The ring's mapping, from /proc/self/maps (the memfd is named refscope-ring). */
static uint8_t *find_ring(size_t *len)
{
    FILE *f = fopen("/proc/self/maps", "r");
    char line[512];
    uint8_t *found = NULL;
    while (f && fgets(line, sizeof(line), f)) {
        unsigned long lo, hi;
        if (strstr(line, "refscope-ring") && sscanf(line, "%lx-%lx", &lo, &hi) == 2) {
            found = (uint8_t *)lo;
            *len = hi - lo;
            break;
        }
    }
    if (f)
        fclose(f);
    return found;
}

void *keep[200]; /* kept live to the end */

int main(int argc, char **argv)
{
    const char *what = argc > 1 ? argv[1] : "both";
    for (int i = 0; i < 100; i++)
        keep[i] = malloc(7777);
    usleep(300000);
    size_t len = 0;
    uint8_t *ring = find_ring(&len);
    if (!ring) {
        fprintf(stderr, "ring_scribble: no refscope-ring mapping\n");
        return 3;
    }
    uint64_t x = 0x9E3779B97F4A7C15ull;
    if (!strcmp(what, "record")) {
        uint64_t head, capacity, size = 1ull << 60;
        memcpy(&capacity, ring + 16, 8);
        memcpy(&head, ring + 64, 8);
        uint8_t *slot = ring + 4096 + 32 * (head & (capacity - 1));
        memcpy(slot + 24, &size, 8);
        /* reserved and committed, as the shim would (this program has one thread) */
        __atomic_fetch_add((uint64_t *)(ring + 64), 1, __ATOMIC_SEQ_CST);
        __atomic_store_n(slot, (uint8_t)1, __ATOMIC_RELEASE); /* RS_EV_ALLOC */
        what = "none";
    }
    if (!strcmp(what, "none"))
        ;
    else if (strcmp(what, "header")) /* slots: everything past the 4096-byte header */
        for (size_t i = 4096; i + 8 <= len; i += 8) {
            x ^= x << 13, x ^= x >> 7, x ^= x << 17;
            memcpy(ring + i, &x, 8);
        }
    if (strcmp(what, "slots") && strcmp(what, "none")) { /* head, tail, waits, dropped, closed, now */
        static const size_t at[] = { 64, 128, 192, 200, 208, 256 };
        for (size_t k = 0; k < sizeof(at) / sizeof(at[0]); k++) {
            x ^= x << 13, x ^= x >> 7, x ^= x << 17;
            memcpy(ring + at[k], &x, 8);
        }
    }
    for (int i = 0; i < 20000; i++)
        free(malloc(64 + i % 512));
    for (int i = 100; i < 200; i++)
        keep[i] = malloc(7778);
    puts(keep[199] ? "done" : "no memory");
    return 0;
}
