/*
 * Live-heap replay (analyzer/heap.c): counts per domain, leaf vs arena,
 * realloc and failed-realloc (RESTORE) semantics, frees of unknown blocks,
 * refscope's own blocks (RS_F_OWN),
 * the peak and its time, and a randomized comparison with a naive model.
 */
#include <check.h>
#include <stdlib.h>
#include <string.h>
#include "heap.h"
#include "check_run.h"

static uint64_t ordinal;

static int apply(struct rs_heap *h, uint8_t kind, uint8_t flags, uint64_t addr, uint64_t size, uint64_t t)
{
    struct rs_event ev = {.ordinal = ordinal++, .kind = kind, .flags = flags, .addr = addr,
                          .size = size, .time_ns = t, .stack = 3};
    return rs_heap_apply(h, &ev, NULL);
}

START_TEST(domains_and_peak)
{
    struct rs_heap *h = rs_heap_new();
    apply(h, RS_EV_ALLOC, RS_DOMAIN_ARENA, 0x100000, 1 << 20, 1);
    apply(h, RS_EV_ALLOC, RS_DOMAIN_OBJ, 0x100010, 100, 2);
    apply(h, RS_EV_ALLOC, RS_DOMAIN_LIBC, 0x900000, 1000, 3);
    apply(h, RS_EV_ALLOC, RS_DOMAIN_MEM, 0x900400, 50, 4);
    ck_assert_int_eq(apply(h, RS_EV_FREE, RS_DOMAIN_LIBC, 0x900000, 0, 5), 1);
    ck_assert_int_eq(apply(h, RS_EV_FREE, RS_DOMAIN_LIBC, 0xdead0, 0, 6), 0); /* never seen */
    apply(h, RS_EV_ALLOC, RS_DOMAIN_RAW, 0x900000, 10, 7);
    const struct rs_heap_stats *st = rs_heap_stats(h);
    ck_assert_uint_eq(st->allocations[RS_DOMAIN_ARENA], 1);
    ck_assert_uint_eq(st->live_bytes[RS_DOMAIN_ARENA], 1 << 20);
    ck_assert_uint_eq(st->peak_live_bytes, 1150); /* arena never added */
    ck_assert_uint_eq(st->peak_ns, 4);
    ck_assert_uint_eq(st->frees[RS_DOMAIN_LIBC], 1);
    ck_assert_uint_eq(st->unknown_frees, 1);
    ck_assert_uint_eq(st->live_bytes[RS_DOMAIN_RAW], 10);
    ck_assert_ptr_nonnull(rs_heap_find(h, 0x100010));
    ck_assert_ptr_null(rs_heap_find(h, 0x100000)); /* arena blocks are not leaf blocks */
    rs_heap_free(h);
}
END_TEST

START_TEST(realloc_and_restore)
{
    struct rs_heap *h = rs_heap_new();
    apply(h, RS_EV_ALLOC, RS_DOMAIN_LIBC, 0x1000, 100, 1);
    /* successful realloc moving the block */
    apply(h, RS_EV_FREE, RS_DOMAIN_LIBC | RS_F_REALLOC, 0x1000, 0, 2);
    apply(h, RS_EV_ALLOC, RS_DOMAIN_LIBC | RS_F_REALLOC, 0x2000, 300, 3);
    const struct rs_heap_stats *st = rs_heap_stats(h);
    ck_assert_uint_eq(st->live_bytes[0], 300);
    ck_assert_uint_eq(st->live_blocks[0], 1);
    /* failed realloc: the block is live again with its old size */
    apply(h, RS_EV_FREE, RS_DOMAIN_LIBC | RS_F_REALLOC, 0x2000, 0, 4);
    apply(h, RS_EV_ALLOC, RS_DOMAIN_LIBC | RS_F_REALLOC | RS_F_RESTORE, 0x2000, 0, 5);
    ck_assert_uint_eq(st->live_bytes[0], 300);
    const struct rs_block *b = rs_heap_find(h, 0x2000);
    ck_assert_ptr_nonnull(b);
    ck_assert_uint_eq(b->size, 300);
    ck_assert_uint_eq(b->alloc_ns, 3);
    ck_assert_uint_eq(st->allocations[0], 2);
    ck_assert_uint_eq(st->frees[0], 1);
    rs_heap_free(h);
}
END_TEST

/* Blocks of refscope's own Python work (RS_F_OWN): counted apart, invisible
 * to queries, and whoever frees them, never a free of an unknown block. */
START_TEST(own_blocks)
{
    struct rs_heap *h = rs_heap_new();
    const struct rs_heap_stats *st = rs_heap_stats(h);
    apply(h, RS_EV_ALLOC, RS_DOMAIN_OBJ, 0x1000, 100, 1);
    apply(h, RS_EV_ALLOC, RS_DOMAIN_OBJ | RS_F_OWN, 0x2000, 56, 2);
    apply(h, RS_EV_ALLOC, RS_DOMAIN_MEM | RS_F_OWN, 0x3000, 8, 3);
    ck_assert_uint_eq(st->allocations[RS_DOMAIN_OBJ], 1);
    ck_assert_uint_eq(st->allocations[RS_DOMAIN_MEM], 0);
    ck_assert_uint_eq(st->peak_live_bytes, 100);
    ck_assert_uint_eq(st->own.allocations, 2);
    ck_assert_uint_eq(st->own.bytes, 64);
    ck_assert_uint_eq(st->own.live_blocks, 2);
    ck_assert_ptr_null(rs_heap_find(h, 0x2000));
    /* the program frees one of ours (finalization): known, not the program's */
    ck_assert_int_eq(apply(h, RS_EV_FREE, RS_DOMAIN_OBJ, 0x2000, 0, 4), 0);
    ck_assert_uint_eq(st->unknown_frees, 0);
    ck_assert_uint_eq(st->frees[RS_DOMAIN_OBJ], 0);
    ck_assert_uint_eq(st->own.frees, 1);
    ck_assert_uint_eq(st->own.live_bytes, 8);
    /* our work drops the program's last reference: the program's block is gone */
    ck_assert_int_eq(apply(h, RS_EV_FREE, RS_DOMAIN_OBJ | RS_F_OWN, 0x1000, 0, 5), 1);
    ck_assert_uint_eq(st->frees[RS_DOMAIN_OBJ], 1);
    ck_assert_uint_eq(st->live_bytes[RS_DOMAIN_OBJ], 0);
    /* our realloc of a program block (a list we append to) makes it ours;
     * a failed one gives it back to the program */
    apply(h, RS_EV_ALLOC, RS_DOMAIN_MEM, 0x4000, 32, 6);
    apply(h, RS_EV_FREE, RS_DOMAIN_MEM | RS_F_REALLOC | RS_F_OWN, 0x4000, 0, 7);
    apply(h, RS_EV_ALLOC, RS_DOMAIN_MEM | RS_F_REALLOC | RS_F_RESTORE | RS_F_OWN, 0x4000, 0, 8);
    ck_assert_ptr_nonnull(rs_heap_find(h, 0x4000));
    ck_assert_uint_eq(st->live_bytes[RS_DOMAIN_MEM], 32);
    apply(h, RS_EV_FREE, RS_DOMAIN_MEM | RS_F_REALLOC | RS_F_OWN, 0x4000, 0, 9);
    apply(h, RS_EV_ALLOC, RS_DOMAIN_MEM | RS_F_REALLOC | RS_F_OWN, 0x5000, 64, 10);
    ck_assert_ptr_null(rs_heap_find(h, 0x5000));
    ck_assert_uint_eq(st->live_bytes[RS_DOMAIN_MEM], 0);
    ck_assert_uint_eq(st->own.live_bytes, 72);
    /* an address reused by the program after an unseen free of ours */
    apply(h, RS_EV_ALLOC, RS_DOMAIN_MEM, 0x3000, 16, 11);
    ck_assert_uint_eq(st->own.live_blocks, 1);
    ck_assert_uint_eq(st->own.live_bytes, 64);
    ck_assert_int_eq(apply(h, RS_EV_FREE, RS_DOMAIN_MEM, 0x3000, 0, 12), 1);
    ck_assert_uint_eq(st->unknown_frees, 0);
    rs_heap_free(h);
}
END_TEST

static int count_block(const struct rs_block *b, void *arg)
{
    (void)b;
    (*(uint64_t *)arg)++;
    return 0;
}

START_TEST(random_against_model)
{
    enum { N = 20000 };
    static uint64_t addr[N], size[N];
    struct rs_heap *h = rs_heap_new();
    uint64_t x = 7, live = 0, peak = 0, blocks = 0;
    for (int step = 0; step < 400000; step++) {
        x = x * 6364136223846793005ull + 1442695040888963407ull;
        int i = (int)((x >> 33) % N);
        if (addr[i]) {
            ck_assert_int_eq(apply(h, RS_EV_FREE, RS_DOMAIN_OBJ, addr[i], 0, (uint64_t)step), 1);
            live -= size[i];
            blocks--;
            addr[i] = 0;
        } else {
            addr[i] = 0x10000 + (uint64_t)i * 4096 + ((x >> 20) % 16) * 16;
            size[i] = (x >> 40) % 2000;
            apply(h, RS_EV_ALLOC, RS_DOMAIN_OBJ, addr[i], size[i], (uint64_t)step);
            live += size[i];
            blocks++;
            if (live > peak)
                peak = live;
        }
    }
    const struct rs_heap_stats *st = rs_heap_stats(h);
    ck_assert_uint_eq(st->live_bytes[RS_DOMAIN_OBJ], live);
    ck_assert_uint_eq(st->peak_live_bytes, peak);
    uint64_t seen = 0;
    rs_heap_foreach(h, 0, count_block, &seen);
    ck_assert_uint_eq(seen, blocks);
    for (int i = 0; i < N; i++)
        if (addr[i])
            ck_assert_uint_eq(rs_heap_find(h, addr[i])->size, size[i]);
    rs_heap_free(h);
}
END_TEST

int main(void)
{
    const TTest *tests[] = {
        domains_and_peak,
        realloc_and_restore,
        own_blocks,
        random_against_model,
    };
    return rs_check_run("heap", 120, tests, sizeof(tests) / sizeof(tests[0]));
}
