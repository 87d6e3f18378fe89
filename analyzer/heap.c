/*
 * Live-heap replay (analyzer/heap.h): applies ALLOC/FREE records in trace
 * order to two open-addressing hash maps keyed by address, one for the leaf
 * domains (libc, raw, mem, obj) and one for pymalloc arenas, and keeps the
 * per-domain counters and the leaf peak. Deletion uses backward shifting, so
 * the maps never fill with tombstones over millions of alloc/free pairs.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include "heap.h"

#define PENDING_REALLOCS 64u /* FREE|REALLOC halves waiting for a possible RESTORE */

/* Keys apart from values: probing walks a dense array of addresses (0 =
 * empty), and only a hit touches the block itself. */
struct block_map {
    uint64_t *keys;
    struct rs_block *slots;
    uint64_t mask;
    uint64_t count;
};

struct rs_heap {
    struct block_map leaf, arena;
    struct rs_heap_stats stats;
    uint64_t leaf_live;
    struct rs_block pending[PENDING_REALLOCS];
    unsigned pending_next;
};

/* Callers mask the low bits, so mix the high bits down (murmur3 finalizer):
 * aligned addresses otherwise share their low hash bits and cluster. */
static inline uint64_t hash_addr(uint64_t addr)
{
    uint64_t h = addr >> 4;
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdull;
    h ^= h >> 33;
    return h;
}

static int map_init(struct block_map *m, uint64_t cap)
{
    m->keys = calloc(cap, sizeof(*m->keys));
    m->slots = malloc(cap * sizeof(*m->slots));
    if (!m->keys || !m->slots) {
        free(m->keys);
        free(m->slots);
        m->keys = NULL;
        m->slots = NULL;
        return -ENOMEM;
    }
    m->mask = cap - 1;
    m->count = 0;
    return 0;
}

static void map_free(struct block_map *m)
{
    free(m->keys);
    free(m->slots);
}

/* Index of addr's slot, or UINT64_MAX. */
static uint64_t map_find(const struct block_map *m, uint64_t addr)
{
    for (uint64_t i = hash_addr(addr) & m->mask;; i = (i + 1) & m->mask) {
        if (m->keys[i] == addr)
            return i;
        if (m->keys[i] == 0)
            return UINT64_MAX;
    }
}

static int map_grow(struct block_map *m)
{
    struct block_map bigger;
    if (map_init(&bigger, (m->mask + 1) * 2) < 0)
        return -ENOMEM;
    for (uint64_t i = 0; i <= m->mask; i++) {
        if (!m->keys[i])
            continue;
        uint64_t j = hash_addr(m->keys[i]) & bigger.mask;
        while (bigger.keys[j])
            j = (j + 1) & bigger.mask;
        bigger.keys[j] = m->keys[i];
        bigger.slots[j] = m->slots[i];
    }
    bigger.count = m->count;
    map_free(m);
    *m = bigger;
    return 0;
}

/* Insert or replace; *old receives a replaced block (returns 1 then). */
static int map_put(struct block_map *m, const struct rs_block *b, struct rs_block *old)
{
    if ((m->count + 1) * 2 > m->mask + 1 && map_grow(m) < 0)
        return -ENOMEM;
    uint64_t i = hash_addr(b->addr) & m->mask;
    for (;; i = (i + 1) & m->mask) {
        if (m->keys[i] == b->addr) {
            *old = m->slots[i];
            m->slots[i] = *b;
            return 1;
        }
        if (m->keys[i] == 0)
            break;
    }
    m->keys[i] = b->addr;
    m->slots[i] = *b;
    m->count++;
    return 0;
}

static void map_remove(struct block_map *m, uint64_t i)
{
    uint64_t j = i;
    for (;;) {
        j = (j + 1) & m->mask;
        if (m->keys[j] == 0)
            break;
        uint64_t home = hash_addr(m->keys[j]) & m->mask;
        /* move j back into the hole at i unless its home lies cyclically in (i, j] */
        if (((j - home) & m->mask) >= ((j - i) & m->mask)) {
            m->keys[i] = m->keys[j];
            m->slots[i] = m->slots[j];
            i = j;
        }
    }
    m->keys[i] = 0;
    m->count--;
}

struct rs_heap *rs_heap_new(void)
{
    struct rs_heap *h = calloc(1, sizeof(*h));
    if (!h)
        return NULL;
    if (map_init(&h->leaf, 1u << 16) < 0 || map_init(&h->arena, 1u << 8) < 0) {
        rs_heap_free(h);
        return NULL;
    }
    return h;
}

void rs_heap_free(struct rs_heap *h)
{
    if (!h)
        return;
    map_free(&h->leaf);
    map_free(&h->arena);
    free(h);
}

static void account_add(struct rs_heap *h, const struct rs_block *b, const struct rs_event *ev)
{
    h->stats.live_bytes[b->domain] += b->size;
    h->stats.live_blocks[b->domain]++;
    if (b->domain == RS_DOMAIN_ARENA)
        return;
    h->leaf_live += b->size;
    if (h->leaf_live > h->stats.peak_live_bytes) {
        h->stats.peak_live_bytes = h->leaf_live;
        h->stats.peak_ns = ev->time_ns;
        h->stats.peak_ordinal = ev->ordinal;
    }
}

static void account_remove(struct rs_heap *h, const struct rs_block *b)
{
    h->stats.live_bytes[b->domain] -= b->size;
    h->stats.live_blocks[b->domain]--;
    if (b->domain != RS_DOMAIN_ARENA)
        h->leaf_live -= b->size;
}

static int take_pending(struct rs_heap *h, uint64_t addr, struct rs_block *out)
{
    for (unsigned i = 0; i < PENDING_REALLOCS; i++) {
        if (h->pending[i].addr == addr && addr) {
            *out = h->pending[i];
            h->pending[i].addr = 0;
            return 1;
        }
    }
    return 0;
}

static int apply_alloc(struct rs_heap *h, const struct rs_event *ev, uint8_t domain)
{
    struct rs_block b = {
        .addr = ev->addr, .size = ev->size, .alloc_ns = ev->time_ns,
        .alloc_ordinal = ev->ordinal, .stack = ev->stack, .thread = ev->thread, .domain = domain,
    }, old;
    int restore = (ev->flags & (RS_F_REALLOC | RS_F_RESTORE)) == (RS_F_REALLOC | RS_F_RESTORE);
    if (!ev->addr)
        return 0;
    if (restore) {
        struct rs_block prev;
        if (take_pending(h, ev->addr, &prev)) {
            b = prev;
            if (h->stats.frees[b.domain])
                h->stats.frees[b.domain]--; /* the FREE half did not happen after all */
        }
    } else {
        h->stats.allocations[domain]++;
        h->stats.alloc_bytes[domain] += ev->size;
    }
    struct block_map *m = domain == RS_DOMAIN_ARENA ? &h->arena : &h->leaf;
    int r = map_put(m, &b, &old);
    if (r < 0)
        return r;
    if (r == 1) /* a free we never saw: the old block is gone */
        account_remove(h, &old);
    account_add(h, &b, ev);
    return 0;
}

static int apply_free(struct rs_heap *h, const struct rs_event *ev, uint8_t domain, struct rs_block *freed)
{
    struct block_map *m = domain == RS_DOMAIN_ARENA ? &h->arena : &h->leaf;
    uint64_t i = ev->addr ? map_find(m, ev->addr) : UINT64_MAX;
    if (i == UINT64_MAX) {
        h->stats.unknown_frees++;
        return 0;
    }
    struct rs_block b = m->slots[i];
    map_remove(m, i);
    account_remove(h, &b);
    h->stats.frees[b.domain]++;
    if (ev->flags & RS_F_REALLOC) {
        h->pending[h->pending_next] = b;
        h->pending_next = (h->pending_next + 1) % PENDING_REALLOCS;
    }
    if (freed)
        *freed = b;
    return 1;
}

int rs_heap_apply(struct rs_heap *h, const struct rs_event *ev, struct rs_block *freed)
{
    uint8_t domain = ev->flags & RS_DOMAIN_MASK;
    if (domain >= RS_DOMAIN_COUNT)
        domain = RS_DOMAIN_LIBC;
    if (ev->kind == RS_EV_ALLOC)
        return apply_alloc(h, ev, domain);
    if (ev->kind == RS_EV_FREE)
        return apply_free(h, ev, domain, freed);
    return 0;
}

const struct rs_block *rs_heap_find(const struct rs_heap *h, uint64_t addr)
{
    uint64_t i = addr ? map_find(&h->leaf, addr) : UINT64_MAX;
    return i == UINT64_MAX ? NULL : &h->leaf.slots[i];
}

int rs_heap_foreach(const struct rs_heap *h, int arena,
                    int (*fn)(const struct rs_block *b, void *arg), void *arg)
{
    const struct block_map *m = arena ? &h->arena : &h->leaf;
    for (uint64_t i = 0; i <= m->mask; i++) {
        if (!m->keys[i])
            continue;
        int r = fn(&m->slots[i], arg);
        if (r)
            return r;
    }
    return 0;
}

const struct rs_heap_stats *rs_heap_stats(const struct rs_heap *h) { return &h->stats; }
