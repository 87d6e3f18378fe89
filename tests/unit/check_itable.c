/*
 * itable (analyzer/itable.c): interning through the index finds every
 * element again across many growths, with a good hash and with one that
 * sends everything to the same slot (probing across the wrap-around), and
 * reserve keeps the table at most half full.
 */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "itable.h"
#include "check_run.h"

struct pool {
    char (*names)[16];
    size_t n;
    int flat; /* every hash the same */
};

static uint64_t name_hash(const struct pool *p, const char *s)
{
    return p->flat ? 7 : rs_hash_str(RS_HASH_INIT, s);
}

static uint64_t hash_of(const void *ctx, uint32_t index)
{
    const struct pool *p = ctx;
    return name_hash(p, p->names[index]);
}

/* The index of `s`, added when new. */
static uint32_t intern(struct rs_itable *t, struct pool *p, const char *s)
{
    ck_assert_int_eq(rs_itable_reserve(t, p->n + 1, hash_of, p), 0);
    ck_assert(t->cap >= 2 * (p->n + 1));
    size_t j = rs_itable_start(t, name_hash(p, s));
    for (uint32_t k; (k = t->slots[j]); j = rs_itable_next(t, j))
        if (!strcmp(p->names[k - 1], s))
            return k - 1;
    snprintf(p->names[p->n], sizeof(p->names[0]), "%s", s);
    t->slots[j] = (uint32_t)p->n + 1;
    return (uint32_t)p->n++;
}

static void run(int flat, size_t count)
{
    struct pool p = { calloc(count, 16), 0, flat };
    struct rs_itable t = {0};
    char buf[16];
    ck_assert_ptr_nonnull(p.names);
    for (size_t i = 0; i < count; i++) {
        snprintf(buf, sizeof(buf), "n%zu", i);
        ck_assert_uint_eq(intern(&t, &p, buf), i);
    }
    for (size_t i = 0; i < count; i++) { /* every one found again, nothing added */
        snprintf(buf, sizeof(buf), "n%zu", count - 1 - i);
        ck_assert_uint_eq(intern(&t, &p, buf), count - 1 - i);
    }
    ck_assert_uint_eq(p.n, count);
    size_t used = 0;
    for (size_t i = 0; i < t.cap; i++)
        used += t.slots[i] != 0;
    ck_assert_uint_eq(used, count);
    rs_itable_free(&t);
    ck_assert_ptr_null(t.slots);
    free(p.names);
}

START_TEST(many_growths) { run(0, 200000); }
END_TEST

START_TEST(one_long_chain) { run(1, 3000); }
END_TEST

int main(void)
{
    const TTest *tests[] = {
        many_growths,
        one_long_chain,
    };
    return rs_check_run("itable", 60, tests, sizeof(tests) / sizeof(tests[0]));
}
