/*
 * Growing an itable (analyzer/itable.h): a table twice the size, every
 * indexed element put back where its hash leads. Probing is the callers'
 * own, inline in the header.
 */
#include <errno.h>
#include <stdlib.h>
#include "itable.h"

int rs_itable_reserve(struct rs_itable *t, size_t count, rs_itable_hash_fn hash_of, const void *ctx)
{
    if (count * 2 <= t->cap)
        return 0;
    size_t cap = t->cap ? t->cap : 256;
    while (count * 2 > cap)
        cap *= 2;
    if (count > UINT32_MAX - 1)
        return -ENOMEM;
    uint32_t *slots = calloc(cap, sizeof(*slots));
    if (!slots)
        return -ENOMEM;
    for (size_t i = 0; i < t->cap; i++) {
        uint32_t k = t->slots[i];
        if (!k)
            continue;
        size_t j = (size_t)hash_of(ctx, k - 1) & (cap - 1);
        while (slots[j])
            j = (j + 1) & (cap - 1);
        slots[j] = k;
    }
    free(t->slots);
    t->slots = slots;
    t->cap = cap;
    return 0;
}

void rs_itable_free(struct rs_itable *t)
{
    free(t->slots);
    t->slots = NULL;
    t->cap = 0;
}
