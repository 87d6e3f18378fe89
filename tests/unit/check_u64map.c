/*
 * u64map (analyzer/u64map.c): key 0 beside the table, insert-if-absent and
 * put semantics, backward-shift deletion inside long collision chains and
 * across the table's wrap-around, growth, iteration, clear, and random
 * operations checked against a naive reference.
 */
#include <check.h>
#include <stdlib.h>
#include <string.h>
#include "u64map.h"
#include "check_run.h"

START_TEST(empty_map)
{
    struct u64map m = U64MAP_INIT;
    uint64_t k, v;
    size_t pos = 0;
    ck_assert_ptr_null(u64map_get(&m, 0));
    ck_assert_ptr_null(u64map_get(&m, 42));
    ck_assert_int_eq(u64map_delete(&m, 42, NULL), 0);
    ck_assert_int_eq(u64map_delete(&m, 0, NULL), 0);
    ck_assert_int_eq(u64map_next(&m, &pos, &k, &v), 0);
    ck_assert_uint_eq(u64map_count(&m), 0);
    u64map_clear(&m);
    u64map_free(&m);
}
END_TEST

START_TEST(key_zero)
{
    struct u64map m = U64MAP_INIT;
    uint64_t *slot, old, k, v;
    ck_assert_int_eq(u64map_insert(&m, 0, 7, &slot), 1);
    ck_assert_uint_eq(*slot, 7);
    ck_assert_int_eq(u64map_insert(&m, 0, 9, &slot), 0);
    ck_assert_uint_eq(*slot, 7); /* insert never replaces */
    ck_assert_int_eq(u64map_put(&m, 0, 11), 0);
    ck_assert_uint_eq(*u64map_get(&m, 0), 11);
    ck_assert_int_eq(u64map_put(&m, 5, 55), 1);
    ck_assert_uint_eq(u64map_count(&m), 2);
    size_t pos = 0, seen = 0;
    while (u64map_next(&m, &pos, &k, &v)) {
        ck_assert(k == 0 ? v == 11 : k == 5 && v == 55);
        seen++;
    }
    ck_assert_uint_eq(seen, 2);
    ck_assert_int_eq(u64map_delete(&m, 0, &old), 1);
    ck_assert_uint_eq(old, 11);
    ck_assert_ptr_null(u64map_get(&m, 0));
    ck_assert_uint_eq(*u64map_get(&m, 5), 55);
    ck_assert_uint_eq(u64map_count(&m), 1);
    u64map_free(&m);
}
END_TEST

/* Keys whose home is slot `home` of a 16-slot table (the capacity a map has
 * up to 8 keys), found by trying keys; fills out[n]. */
static void keys_with_home(size_t home, uint64_t *out, int n)
{
    struct u64map probe = U64MAP_INIT;
    ck_assert_int_eq(u64map_reserve(&probe, 1), 0);
    ck_assert_uint_eq(probe.mask, 15);
    int found = 0;
    for (uint64_t k = 1; found < n; k++) {
        ck_assert_int_eq(u64map_put(&probe, k, 0), 1);
        int at_home = probe.slots[home].key == k;
        u64map_delete(&probe, k, NULL);
        if (at_home)
            out[found++] = k;
    }
    u64map_free(&probe);
}

/* Deleting from the middle of a chain that wraps past the table's end keeps
 * every other key reachable, and moves no key before its home. */
START_TEST(deletion_chains)
{
    uint64_t a[4], b[3];
    keys_with_home(14, a, 4); /* a[0..3] occupy 14, 15, 0, 1 */
    keys_with_home(15, b, 3); /* then 2, 3, 4 */
    for (int victim = 0; victim < 7; victim++) {
        struct u64map m = U64MAP_INIT;
        uint64_t all[7] = {a[0], a[1], a[2], a[3], b[0], b[1], b[2]}, old;
        for (int i = 0; i < 7; i++)
            ck_assert_int_eq(u64map_put(&m, all[i], all[i] * 3), 1);
        ck_assert_uint_eq(m.mask, 15); /* still no growth: the chain wraps */
        ck_assert_int_eq(u64map_delete(&m, all[victim], &old), 1);
        ck_assert_uint_eq(old, all[victim] * 3);
        ck_assert_int_eq(u64map_delete(&m, all[victim], NULL), 0);
        for (int i = 0; i < 7; i++) {
            uint64_t *v = u64map_get(&m, all[i]);
            if (i == victim) {
                ck_assert_ptr_null(v);
            } else {
                ck_assert_ptr_nonnull(v);
                ck_assert_uint_eq(*v, all[i] * 3);
            }
        }
        ck_assert_uint_eq(u64map_count(&m), 6);
        /* delete the rest in a scrambled order */
        for (int i = 0; i < 7; i++) {
            int j = (i * 3 + victim) % 7;
            ck_assert_int_eq(u64map_delete(&m, all[j], NULL), j != victim);
        }
        ck_assert_uint_eq(u64map_count(&m), 0);
        for (size_t i = 0; i <= m.mask; i++)
            ck_assert_uint_eq(m.slots[i].key, 0);
        u64map_free(&m);
    }
}
END_TEST

START_TEST(growth_and_clear)
{
    struct u64map m = U64MAP_INIT;
    const uint64_t n = 200000;
    for (uint64_t i = 0; i < n; i++) /* 16-byte-aligned, like heap addresses */
        ck_assert_int_eq(u64map_put(&m, 0x7f0000000000ull + i * 16, i), 1);
    ck_assert_uint_eq(u64map_count(&m), n);
    ck_assert((m.mask + 1) >= 2 * m.count); /* at most half full */
    for (uint64_t i = 0; i < n; i++) {
        uint64_t *v = u64map_get(&m, 0x7f0000000000ull + i * 16);
        ck_assert_ptr_nonnull(v);
        ck_assert_uint_eq(*v, i);
    }
    ck_assert_ptr_null(u64map_get(&m, 0x7f0000000008ull));
    size_t cap = m.mask + 1;
    u64map_clear(&m);
    ck_assert_uint_eq(u64map_count(&m), 0);
    ck_assert_uint_eq(m.mask + 1, cap);
    ck_assert_ptr_null(u64map_get(&m, 0x7f0000000000ull));
    ck_assert_int_eq(u64map_reserve(&m, 10), 0);
    ck_assert_uint_eq(m.mask + 1, cap); /* reserve never shrinks */
    u64map_free(&m);
    ck_assert_ptr_null(m.slots);
    ck_assert_int_eq(u64map_reserve(&m, 1000), 0);
    size_t reserved = m.mask + 1;
    for (uint64_t i = 0; i < 1000; i++)
        u64map_put(&m, i, i);
    ck_assert_uint_eq(m.mask + 1, reserved); /* no growth after reserve */
    u64map_free(&m);
}
END_TEST

static uint64_t rng_state = 0x243f6a8885a308d3ull;
static uint64_t rng(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

/* Random insert/put/delete/get over a small key space (so chains collide and
 * deletions hit present keys), checked against a plain array. */
START_TEST(random_against_reference)
{
    enum { KEYS = 4096, OPS = 400000 };
    static uint64_t ref_val[KEYS];
    static unsigned char ref_has[KEYS];
    static uint64_t keyv[KEYS];
    struct u64map m = U64MAP_INIT;
    size_t count = 0;
    memset(ref_has, 0, sizeof(ref_has));
    for (int i = 0; i < KEYS; i++) /* key 0, small ids, addresses, high bits */
        keyv[i] = i == 0 ? 0 : i < 1024 ? (uint64_t)i : i < 3072 ? 0x55550000ull + (uint64_t)i * 64
                                                                 : (uint64_t)i << 52 | 1;
    for (int op = 0; op < OPS; op++) {
        uint64_t r = rng();
        int k = (int)(r % KEYS);
        uint64_t key = keyv[k], val = r >> 20, *slot, old;
        switch ((r >> 12) % 4) {
        case 0: {
            int ins = u64map_insert(&m, key, val, &slot);
            ck_assert_int_eq(ins, !ref_has[k]);
            if (ins) {
                ref_has[k] = 1;
                ref_val[k] = val;
                count++;
            }
            ck_assert_uint_eq(*slot, ref_val[k]);
            break;
        }
        case 1:
            ck_assert_int_eq(u64map_put(&m, key, val), !ref_has[k]);
            count += !ref_has[k];
            ref_has[k] = 1;
            ref_val[k] = val;
            break;
        case 2:
            ck_assert_int_eq(u64map_delete(&m, key, &old), ref_has[k]);
            if (ref_has[k]) {
                ck_assert_uint_eq(old, ref_val[k]);
                ref_has[k] = 0;
                count--;
            }
            break;
        default:
            slot = u64map_get(&m, key);
            if (ref_has[k]) {
                ck_assert_ptr_nonnull(slot);
                ck_assert_uint_eq(*slot, ref_val[k]);
            } else {
                ck_assert_ptr_null(slot);
            }
        }
        ck_assert_uint_eq(u64map_count(&m), count);
    }
    /* iteration visits every key exactly once with its value */
    static unsigned char seen[KEYS];
    memset(seen, 0, sizeof(seen));
    uint64_t key, val;
    size_t pos = 0, visited = 0;
    while (u64map_next(&m, &pos, &key, &val)) {
        int k = -1;
        for (int i = 0; i < KEYS && k < 0; i++)
            if (keyv[i] == key)
                k = i;
        ck_assert_int_ge(k, 0);
        ck_assert(ref_has[k] && !seen[k]);
        ck_assert_uint_eq(val, ref_val[k]);
        seen[k] = 1;
        visited++;
    }
    ck_assert_uint_eq(visited, count);
    u64map_free(&m);
}
END_TEST

int main(void)
{
    const TTest *tests[] = {
        empty_map,
        key_zero,
        deletion_chains,
        growth_and_clear,
        random_against_reference,
    };
    return rs_check_run("u64map", 30, tests, sizeof(tests) / sizeof(tests[0]));
}
