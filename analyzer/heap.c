/*
 * Live-heap replay (analyzer/heap.h): applies ALLOC/FREE records in trace
 * order to two maps of live blocks keyed by address (u64map), one for the
 * leaf domains (libc, raw, mem, obj) and one for pymalloc arenas, and keeps
 * the per-domain counters and the leaf peak. A third map holds refscope's
 * own blocks (RS_F_OWN), counted apart.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include "heap.h"
#include "u64map.h"

#define PENDING_REALLOCS 64u /* FREE|REALLOC halves waiting for a possible RESTORE */

/* Live blocks of one map: address -> index into blocks (a u64map), freed
 * indices reused first so blocks stays as large as the peak block count. */
struct block_map {
    struct u64map index;
    struct rs_block *blocks;
    uint64_t *unused;        /* stack of free indices into blocks */
    size_t nblocks, cap, nunused;
};

struct rs_heap {
    struct block_map leaf, arena, own;
    struct rs_heap_stats stats;
    uint64_t leaf_live;
    struct rs_block pending[PENDING_REALLOCS];
    unsigned pending_next;
};

static void map_free(struct block_map *m)
{
    u64map_free(&m->index);
    free(m->blocks);
    free(m->unused);
}

/* An index for a new block (not yet taken: map_take commits it). */
static int map_next_index(struct block_map *m, uint64_t *idx)
{
    if (m->nunused) {
        *idx = m->unused[m->nunused - 1];
        return 0;
    }
    if (m->nblocks == m->cap) {
        size_t cap = m->cap ? m->cap * 2 : 1024;
        struct rs_block *b = realloc(m->blocks, cap * sizeof(*b));
        if (!b)
            return -ENOMEM;
        m->blocks = b;
        uint64_t *u = realloc(m->unused, cap * sizeof(*u));
        if (!u)
            return -ENOMEM;
        m->unused = u;
        m->cap = cap;
    }
    *idx = m->nblocks;
    return 0;
}

static void map_take(struct block_map *m)
{
    if (m->nunused)
        m->nunused--;
    else
        m->nblocks++;
}

/* Insert or replace; *old receives a replaced block (returns 1 then). */
static int map_put(struct block_map *m, const struct rs_block *b, struct rs_block *old)
{
    uint64_t idx, *slot;
    int r = map_next_index(m, &idx);
    if (r < 0)
        return r;
    r = u64map_insert(&m->index, b->addr, idx, &slot);
    if (r < 0)
        return r;
    if (r == 1) {
        map_take(m);
        m->blocks[idx] = *b;
        return 0;
    }
    *old = m->blocks[*slot];
    m->blocks[*slot] = *b;
    return 1;
}

/* Removes addr; *out receives its block. Returns 1, or 0 when absent. */
static int map_remove(struct block_map *m, uint64_t addr, struct rs_block *out)
{
    uint64_t idx;
    if (!u64map_delete(&m->index, addr, &idx))
        return 0;
    *out = m->blocks[idx];
    m->unused[m->nunused++] = idx; /* unused has room for every index */
    return 1;
}

struct rs_heap *rs_heap_new(void)
{
    struct rs_heap *h = calloc(1, sizeof(*h));
    if (!h)
        return NULL;
    if (u64map_reserve(&h->leaf.index, 1u << 15) < 0 || u64map_reserve(&h->arena.index, 1u << 7) < 0) {
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
    map_free(&h->own);
    free(h);
}

static void account_add(struct rs_heap *h, const struct rs_block *b, const struct rs_event *ev)
{
    if (b->own) {
        h->stats.own.live_bytes += b->size;
        h->stats.own.live_blocks++;
        return;
    }
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
    if (b->own) {
        h->stats.own.live_bytes -= b->size;
        h->stats.own.live_blocks--;
        return;
    }
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

static struct block_map *map_of(struct rs_heap *h, const struct rs_block *b)
{
    return b->domain == RS_DOMAIN_ARENA ? &h->arena : b->own ? &h->own : &h->leaf;
}

static int apply_alloc(struct rs_heap *h, const struct rs_event *ev, uint8_t domain)
{
    struct rs_block b = {
        .addr = ev->addr, .size = ev->size, .alloc_ns = ev->time_ns,
        .alloc_ordinal = ev->ordinal, .stack = ev->stack, .thread = ev->thread, .domain = domain,
        .own = domain != RS_DOMAIN_ARENA && (ev->flags & RS_F_OWN),
    }, old;
    int restore = (ev->flags & (RS_F_REALLOC | RS_F_RESTORE)) == (RS_F_REALLOC | RS_F_RESTORE);
    if (!ev->addr)
        return 0;
    if (restore) {
        struct rs_block prev;
        if (take_pending(h, ev->addr, &prev)) {
            b = prev;
            /* the FREE half did not happen after all */
            if (b.own && h->stats.own.frees)
                h->stats.own.frees--;
            else if (!b.own && h->stats.frees[b.domain])
                h->stats.frees[b.domain]--;
        }
    } else if (b.own) {
        h->stats.own.allocations++;
        h->stats.own.bytes += ev->size;
    } else {
        h->stats.allocations[domain]++;
        h->stats.alloc_bytes[domain] += ev->size;
    }
    /* a leaf block still at this address in the other leaf map was freed unseen */
    if (b.domain != RS_DOMAIN_ARENA && map_remove(b.own ? &h->leaf : &h->own, b.addr, &old))
        account_remove(h, &old);
    int r = map_put(map_of(h, &b), &b, &old);
    if (r < 0)
        return r;
    if (r == 1) /* a free we never saw: the old block is gone */
        account_remove(h, &old);
    account_add(h, &b, ev);
    return 0;
}

static int apply_free(struct rs_heap *h, const struct rs_event *ev, uint8_t domain, struct rs_block *freed)
{
    struct rs_block b;
    int found = ev->addr && (domain == RS_DOMAIN_ARENA ? map_remove(&h->arena, ev->addr, &b)
                                                       : map_remove(&h->leaf, ev->addr, &b) ||
                                                             map_remove(&h->own, ev->addr, &b));
    if (!found) {
        h->stats.unknown_frees++;
        return 0;
    }
    account_remove(h, &b);
    if (ev->flags & RS_F_REALLOC) {
        h->pending[h->pending_next] = b;
        h->pending_next = (h->pending_next + 1) % PENDING_REALLOCS;
    }
    if (b.own) {
        h->stats.own.frees++;
        return 0;
    }
    h->stats.frees[b.domain]++;
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
    const uint64_t *idx = addr ? u64map_get(&h->leaf.index, addr) : NULL;
    return idx ? &h->leaf.blocks[*idx] : NULL;
}

int rs_heap_foreach(const struct rs_heap *h, int arena,
                    int (*fn)(const struct rs_block *b, void *arg), void *arg)
{
    const struct block_map *m = arena ? &h->arena : &h->leaf;
    uint64_t idx;
    for (size_t pos = 0; u64map_next(&m->index, &pos, NULL, &idx);) {
        int r = fn(&m->blocks[idx], arg);
        if (r)
            return r;
    }
    return 0;
}

const struct rs_heap_stats *rs_heap_stats(const struct rs_heap *h) { return &h->stats; }
