/*
 * u64map (analyzer/u64map.h): the open-addressing uint64_t -> uint64_t map
 * every analyzer table keyed by an address or an id is built on.
 *
 * Layout: one array of {key, value} entries, so a hit costs one cache line;
 * key 0 marks an empty entry, and the real key 0 lives in has_zero/zero_val.
 * Linear probing from hash(key) & mask; the table doubles before it gets
 * more than half full. Deletion is backward-shift: walk the chain after the
 * hole and move back every entry whose home slot does not lie cyclically in
 * (hole, entry], so every remaining key stays reachable from its home.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "u64map.h"

#define U64MAP_MIN_CAP 16u

/* murmur3 fmix64: every key bit reaches the low bits the mask keeps, so
 * 16-byte-aligned addresses and dense small ids both spread evenly. */
static inline size_t slot_of(const struct u64map *m, uint64_t key)
{
    key ^= key >> 33;
    key *= 0xff51afd7ed558ccdull;
    key ^= key >> 33;
    key *= 0xc4ceb9fe1a85ec53ull;
    key ^= key >> 33;
    return (size_t)key & m->mask;
}

static int resize(struct u64map *m, size_t cap)
{
    struct u64map bigger = {.mask = cap - 1, .count = m->count,
                            .has_zero = m->has_zero, .zero_val = m->zero_val};
    bigger.slots = calloc(cap, sizeof(*bigger.slots));
    if (!bigger.slots)
        return -ENOMEM;
    for (size_t i = 0; m->slots && i <= m->mask; i++) {
        if (!m->slots[i].key)
            continue;
        size_t j = slot_of(&bigger, m->slots[i].key);
        while (bigger.slots[j].key)
            j = (j + 1) & bigger.mask;
        bigger.slots[j] = m->slots[i];
    }
    free(m->slots);
    *m = bigger;
    return 0;
}

/* Capacity that holds n keys at most half full. */
static size_t cap_for(size_t n)
{
    size_t cap = U64MAP_MIN_CAP;
    while (cap / 2 < n)
        cap *= 2;
    return cap;
}

int u64map_reserve(struct u64map *m, size_t n)
{
    size_t cap = cap_for(n);
    if (m->slots && cap <= m->mask + 1)
        return 0;
    return resize(m, cap);
}

uint64_t *u64map_get(const struct u64map *m, uint64_t key)
{
    if (!key)
        return m->has_zero ? (uint64_t *)&m->zero_val : NULL;
    if (!m->slots)
        return NULL;
    for (size_t i = slot_of(m, key);; i = (i + 1) & m->mask) {
        if (m->slots[i].key == key)
            return &m->slots[i].val;
        if (!m->slots[i].key)
            return NULL;
    }
}

int u64map_insert(struct u64map *m, uint64_t key, uint64_t val, uint64_t **slot)
{
    if (!key) {
        int fresh = !m->has_zero;
        if (fresh) {
            m->has_zero = 1;
            m->zero_val = val;
        }
        if (slot)
            *slot = &m->zero_val;
        return fresh;
    }
    if (!m->slots || (m->count + 1) * 2 > m->mask + 1) {
        int r = resize(m, m->slots ? (m->mask + 1) * 2 : U64MAP_MIN_CAP);
        if (r < 0)
            return r;
    }
    size_t i = slot_of(m, key);
    for (; m->slots[i].key; i = (i + 1) & m->mask) {
        if (m->slots[i].key == key) {
            if (slot)
                *slot = &m->slots[i].val;
            return 0;
        }
    }
    m->slots[i].key = key;
    m->slots[i].val = val;
    m->count++;
    if (slot)
        *slot = &m->slots[i].val;
    return 1;
}

int u64map_put(struct u64map *m, uint64_t key, uint64_t val)
{
    uint64_t *v;
    int r = u64map_insert(m, key, val, &v);
    if (r == 0)
        *v = val;
    return r;
}

int u64map_delete(struct u64map *m, uint64_t key, uint64_t *old)
{
    if (!key) {
        if (!m->has_zero)
            return 0;
        if (old)
            *old = m->zero_val;
        m->has_zero = 0;
        return 1;
    }
    if (!m->slots)
        return 0;
    size_t hole = slot_of(m, key);
    while (m->slots[hole].key != key) {
        if (!m->slots[hole].key)
            return 0;
        hole = (hole + 1) & m->mask;
    }
    if (old)
        *old = m->slots[hole].val;
    for (size_t j = (hole + 1) & m->mask; m->slots[j].key; j = (j + 1) & m->mask) {
        size_t home = slot_of(m, m->slots[j].key);
        /* j may move back into the hole unless its home lies cyclically in (hole, j] */
        if (((j - home) & m->mask) >= ((j - hole) & m->mask)) {
            m->slots[hole] = m->slots[j];
            hole = j;
        }
    }
    m->slots[hole].key = 0;
    m->count--;
    return 1;
}

int u64map_next(const struct u64map *m, size_t *pos, uint64_t *key, uint64_t *val)
{
    /* position 0 is key 0; position i + 1 is slot i */
    if (*pos == 0) {
        *pos = 1;
        if (m->has_zero) {
            if (key)
                *key = 0;
            if (val)
                *val = m->zero_val;
            return 1;
        }
    }
    for (; m->slots && *pos - 1 <= m->mask; (*pos)++) {
        const struct u64map_entry *e = &m->slots[*pos - 1];
        if (!e->key)
            continue;
        if (key)
            *key = e->key;
        if (val)
            *val = e->val;
        (*pos)++;
        return 1;
    }
    return 0;
}

void u64map_clear(struct u64map *m)
{
    if (m->slots)
        memset(m->slots, 0, (m->mask + 1) * sizeof(*m->slots));
    m->count = 0;
    m->has_zero = 0;
}

void u64map_free(struct u64map *m)
{
    free(m->slots);
    memset(m, 0, sizeof(*m));
}
