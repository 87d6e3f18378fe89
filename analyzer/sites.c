/*
 * Per-stack allocation metrics (analyzer/sites.h): two replays of the trace
 * through the shared live-heap model. Pass 1 feeds the stack tables, counts
 * allocations and bytes per stack, tracks each stack's live bytes to the end
 * and learns the ordinal of the global peak from heap.h. Pass 2 replays up to
 * and including that record and copies each stack's live bytes at that
 * moment. Stack ids are small counters in practice, so metrics are indexed
 * through a dense id -> slot array.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sites.h"
#include "units.h"

#define MAX_DENSE_ID (1u << 26) /* larger ids (never seen so far) share slot of id 0 */

struct builder {
    struct rs_sites_model *m;
    uint32_t *slot_of;   /* stack id -> metrics index + 1 */
    size_t slot_cap;
    size_t metrics_cap;
    int64_t *live;       /* per metrics index, this pass: bytes */
    int64_t *blocks;     /* and blocks */
};

static int metrics_index(struct builder *b, uint32_t stack, size_t *out)
{
    struct rs_sites_model *m = b->m;
    if (stack >= MAX_DENSE_ID)
        stack = 0;
    if (stack >= b->slot_cap) {
        size_t cap = b->slot_cap ? b->slot_cap : 1024;
        while (cap <= stack)
            cap *= 2;
        uint32_t *p = realloc(b->slot_of, cap * sizeof(*p));
        if (!p)
            return -ENOMEM;
        memset(p + b->slot_cap, 0, (cap - b->slot_cap) * sizeof(*p));
        b->slot_of = p;
        b->slot_cap = cap;
    }
    if (!b->slot_of[stack]) {
        if (m->count == b->metrics_cap) {
            size_t cap = b->metrics_cap ? b->metrics_cap * 2 : 1024;
            struct rs_stack_metrics *p = realloc(m->metrics, cap * sizeof(*p));
            int64_t *l = realloc(b->live, cap * sizeof(*l));
            if (l)
                b->live = l;
            int64_t *k = realloc(b->blocks, cap * sizeof(*k));
            if (p)
                m->metrics = p;
            if (k)
                b->blocks = k;
            if (!p || !l || !k)
                return -ENOMEM;
            b->metrics_cap = cap;
        }
        memset(&m->metrics[m->count], 0, sizeof(m->metrics[0]));
        m->metrics[m->count].stack = stack;
        b->live[m->count] = 0;
        b->blocks[m->count] = 0;
        b->slot_of[stack] = (uint32_t)++m->count;
    }
    *out = b->slot_of[stack] - 1;
    return 0;
}

/* Applies one ALLOC/FREE to the heap and to the per-stack live bytes;
 * counts allocations when `count` is set. */
static int replay(struct builder *b, struct rs_heap *heap, const struct rs_event *ev, int count)
{
    uint8_t domain = ev->flags & RS_DOMAIN_MASK;
    struct rs_block freed;
    size_t i;
    int ret;

    if (domain == RS_DOMAIN_ARENA)
        return rs_heap_apply(heap, ev, NULL) < 0 ? -ENOMEM : 0;
    if (ev->kind == RS_EV_FREE) {
        ret = rs_heap_apply(heap, ev, &freed);
        if (ret < 0)
            return ret;
        if (ret == 1 && freed.domain != RS_DOMAIN_ARENA) {
            if ((ret = metrics_index(b, freed.stack, &i)))
                return ret;
            b->live[i] -= (int64_t)freed.size;
            b->blocks[i]--;
        }
        return 0;
    }
    /* ALLOC: a block already at this address was freed unseen */
    const struct rs_block *old = rs_heap_find(heap, ev->addr);
    if (old) {
        if ((ret = metrics_index(b, old->stack, &i)))
            return ret;
        b->live[i] -= (int64_t)old->size;
        b->blocks[i]--;
    }
    if ((ret = rs_heap_apply(heap, ev, NULL)) < 0)
        return ret;
    const struct rs_block *nb = rs_heap_find(heap, ev->addr);
    if (!nb)
        return 0;
    if ((ret = metrics_index(b, nb->stack, &i)))
        return ret;
    b->live[i] += (int64_t)nb->size;
    b->blocks[i]++;
    int restore = (ev->flags & (RS_F_REALLOC | RS_F_RESTORE)) == (RS_F_REALLOC | RS_F_RESTORE);
    if (count && !restore) {
        b->m->metrics[i].allocations++;
        b->m->metrics[i].bytes += ev->size;
    }
    return 0;
}

static void take_end(struct builder *b)
{
    struct rs_sites_model *m = b->m;
    for (size_t i = 0; i < m->count; i++) {
        m->metrics[i].live_bytes_end = b->live[i] > 0 ? (uint64_t)b->live[i] : 0;
        m->metrics[i].live_blocks_end = b->blocks[i] > 0 ? (uint64_t)b->blocks[i] : 0;
    }
    /* stacks first seen later start at zero (metrics_index zeroes them) */
}

int rs_sites_build(const char *path, struct rs_sites_model *m, char *err, size_t errlen)
{
    struct builder b = {.m = m};
    struct rs_heap *heap = NULL;
    struct rs_event ev;
    int ret;

    memset(m, 0, sizeof(*m));
    ret = rs_trace_open(path, &m->trace, err, errlen);
    if (ret)
        return ret;
    m->stacks = rs_stacks_new();
    heap = rs_heap_new();
    if (!m->stacks || !heap) {
        ret = -ENOMEM;
        goto nomem;
    }

    /* pass 1: definitions, totals, live at end, where the peak is */
    while ((ret = rs_trace_next(m->trace, &ev, err, errlen)) == 1) {
        if (ev.kind == RS_EV_ALLOC || ev.kind == RS_EV_FREE)
            ret = replay(&b, heap, &ev, 1);
        else if (ev.kind == RS_EV_GC_START && (ev.flags & RS_GC_F_SHUTDOWN) && !m->end_at_finalization) {
            /* the interpreter starts finalizing: what is live now is what
             * the program left behind (teardown frees the rest) */
            m->end_at_finalization = 1;
            m->end_ordinal = ev.ordinal;
            take_end(&b);
            ret = 0;
        } else {
            if (ev.kind == RS_EV_NATIVE_STACK)
                m->has_native = 1;
            ret = rs_stacks_feed(m->stacks, &ev);
            if (ret == -EPROTO) {
                rs_trace_record_error(err, errlen, path, &ev, ret);
                goto out;
            }
        }
        if (ret)
            goto nomem;
    }
    if (ret < 0)
        goto out;
    m->stats = *rs_heap_stats(heap);
    if (!m->end_at_finalization)
        take_end(&b);

    /* pass 2: each stack's live bytes at the peak record */
    if (m->stats.peak_live_bytes) {
        rs_heap_free(heap);
        heap = rs_heap_new();
        if (!heap) {
            ret = -ENOMEM;
            goto nomem;
        }
        for (size_t i = 0; i < m->count; i++)
            b.live[i] = b.blocks[i] = 0;
        if ((ret = rs_trace_rewind(m->trace, err, errlen)))
            goto out;
        while ((ret = rs_trace_next(m->trace, &ev, err, errlen)) == 1) {
            if (ev.kind == RS_EV_ALLOC || ev.kind == RS_EV_FREE) {
                if ((ret = replay(&b, heap, &ev, 0)))
                    goto nomem;
            }
            if (ev.ordinal == m->stats.peak_ordinal)
                break;
        }
        if (ret < 0)
            goto out;
        for (size_t i = 0; i < m->count; i++)
            m->metrics[i].peak_bytes = b.live[i] > 0 ? (uint64_t)b.live[i] : 0;
    }
    ret = 0;
    goto out;
nomem:
    if (ret == -ENOMEM)
        snprintf(err, errlen, "out of memory");
out:
    rs_heap_free(heap);
    free(b.slot_of);
    free(b.live);
    free(b.blocks);
    if (ret)
        rs_sites_free(m);
    return ret;
}

void rs_sites_free(struct rs_sites_model *m)
{
    rs_stacks_free(m->stacks);
    free(m->metrics);
    if (m->trace)
        rs_trace_close(m->trace);
    memset(m, 0, sizeof(*m));
}

int rs_sites_native(const struct rs_sites_model *m, int native_flag)
{
    return native_flag || rs_trace_info(m->trace)->py_version == 0;
}

int rs_sites_view(struct rs_sites_model *m, uint32_t stack, int native,
                  const struct rs_frame **out, int cap)
{
    const struct rs_frame *frames;
    int n = rs_stacks_resolve(m->stacks, stack, &frames), k = 0;
    for (int i = 0; i < n && k < cap; i++)
        if (native || !frames[i].native)
            out[k++] = &frames[i];
    return k;
}

