/*
 * GC model (gcmodel.h): replays GC_START/GC_STOP, GC_INFO (baseline, config,
 * census, mode), NOTE, OBJ_CREATE/OBJ_DESTROY and ALLOC/FREE records.
 *
 * Promotions. A START census lists the objects of the generations about to be
 * collected (all are examined); an object of that census that does not die
 * between START and STOP survived and moves to generation g+1 (g = 2 stays).
 * After a generation-0 collection the shim adds a STOP census of generation
 * 1: then promoted = |start census ∩ stop census|, exact even for tuples the
 * collector untracks. For older generations promoted = census − deaths in
 * the window (objects the collector untracks count as promoted; documented).
 * Deaths are OBJ_DESTROY (3.13+) or the free of the OBJ-domain block that
 * holds the object: the block starts 0, 16 or 32 bytes before it (GC header,
 * managed dict/weakref pre-header).
 *
 * Objects are tracked in an open-addressing map keyed by address (backward
 * shift deletion), holding birth time, type, site, generation and whether
 * they reached the oldest generation.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include "gcmodel.h"
#include "heap.h"

struct obj {
    uint64_t addr;        /* 0 = empty slot */
    uint64_t born_ns;     /* RS_GC_UNKNOWN  */
    uint32_t type, stack;
    uint32_t census_seq;  /* collection whose START census listed it last */
    uint32_t stop_seq;    /* collection whose STOP census listed it       */
    uint8_t  tenured;
    uint8_t  created;     /* seen by OBJ_CREATE                           */
};

struct obj_map {
    struct obj *slots;
    uint64_t mask, count;
};

struct u64_vec {
    uint64_t *v;
    uint64_t n, cap;
};

struct rs_gc_model_priv {
    rs_gc_death_fn on_death;
    void *arg;
    struct obj_map objs;
    struct rs_heap *heap;
    uint64_t baseline[RS_GC_GENS][3];
    /* the collection being assembled */
    struct u64_vec census;      /* START census addresses of the next/current collection */
    struct rs_gc_collection *cur;
    uint64_t cur_index;
    uint64_t dead_in_window;
    uint64_t stop_matched;
    int stop_census_open;
    uint64_t cols_cap, cfg_cap;
    uint32_t notes_cap;
};

static inline uint64_t hash_addr(uint64_t a)
{
    return (a >> 4) * 0x9e3779b97f4a7c15ull;
}

static int map_grow(struct obj_map *m)
{
    uint64_t cap = m->slots ? (m->mask + 1) * 2 : 1 << 16;
    struct obj *old = m->slots;
    uint64_t old_cap = m->slots ? m->mask + 1 : 0;
    m->slots = calloc(cap, sizeof(*m->slots));
    if (!m->slots) {
        m->slots = old;
        return -ENOMEM;
    }
    m->mask = cap - 1;
    for (uint64_t i = 0; i < old_cap; i++) {
        if (!old[i].addr)
            continue;
        uint64_t j = hash_addr(old[i].addr) & m->mask;
        while (m->slots[j].addr)
            j = (j + 1) & m->mask;
        m->slots[j] = old[i];
    }
    free(old);
    return 0;
}

static struct obj *map_find(const struct obj_map *m, uint64_t addr)
{
    if (!m->slots || !addr)
        return NULL;
    for (uint64_t j = hash_addr(addr) & m->mask;; j = (j + 1) & m->mask) {
        if (m->slots[j].addr == addr)
            return &m->slots[j];
        if (!m->slots[j].addr)
            return NULL;
    }
}

/* Finds or inserts addr; *fresh = 1 when inserted (zeroed but for addr). */
static struct obj *map_get(struct obj_map *m, uint64_t addr, int *fresh)
{
    *fresh = 0;
    if (!m->slots || (m->count + 1) * 4 > (m->mask + 1) * 3)
        if (map_grow(m) != 0)
            return NULL;
    uint64_t j = hash_addr(addr) & m->mask;
    for (; m->slots[j].addr; j = (j + 1) & m->mask)
        if (m->slots[j].addr == addr)
            return &m->slots[j];
    memset(&m->slots[j], 0, sizeof(m->slots[j]));
    m->slots[j].addr = addr;
    m->slots[j].born_ns = RS_GC_UNKNOWN;
    m->count++;
    *fresh = 1;
    return &m->slots[j];
}

static void map_remove(struct obj_map *m, struct obj *o)
{
    uint64_t i = (uint64_t)(o - m->slots), j = i;
    m->slots[i].addr = 0;
    m->count--;
    for (;;) {
        j = (j + 1) & m->mask;
        if (!m->slots[j].addr)
            return;
        uint64_t k = hash_addr(m->slots[j].addr) & m->mask;
        /* move j back to i unless its home k lies cyclically in (i, j] */
        if ((j > i && (k <= i || k > j)) || (j < i && (k <= i && k > j))) {
            m->slots[i] = m->slots[j];
            m->slots[j].addr = 0;
            i = j;
        }
    }
}

static int vec_push(struct u64_vec *v, uint64_t x)
{
    if (v->n == v->cap) {
        uint64_t cap = v->cap ? v->cap * 2 : 4096;
        uint64_t *n = realloc(v->v, cap * sizeof(*n));
        if (!n)
            return -ENOMEM;
        v->v = n;
        v->cap = cap;
    }
    v->v[v->n++] = x;
    return 0;
}

static uint64_t le(const uint8_t *p, int n)
{
    uint64_t v = 0;
    for (int i = n - 1; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

int rs_gcmodel_init(struct rs_gc_model *m, rs_gc_death_fn on_death, void *arg)
{
    memset(m, 0, sizeof(*m));
    m->priv = calloc(1, sizeof(*m->priv));
    if (!m->priv)
        return -ENOMEM;
    m->priv->heap = rs_heap_new();
    if (!m->priv->heap) {
        free(m->priv);
        m->priv = NULL;
        return -ENOMEM;
    }
    m->priv->on_death = on_death;
    m->priv->arg = arg;
    m->generational = 1;
    m->shutdown_ns = RS_GC_UNKNOWN;
    return 0;
}

/* ---- deaths ----------------------------------------------------------------- */

static void report_death(struct rs_gc_model *m, const struct obj *o, const struct rs_block *b,
                         uint64_t now)
{
    struct rs_gc_model_priv *p = m->priv;
    struct rs_gc_death d = {0};
    if (!p->on_death)
        return;
    d.died_ns = now;
    d.at_shutdown = m->shutdown_ns != RS_GC_UNKNOWN && now >= m->shutdown_ns;
    if (b) {
        d.from_block = 1;
        d.addr = b->addr;
        d.born_ns = b->alloc_ns;
        d.stack = b->stack;
    }
    if (o) {
        d.addr = o->addr;
        d.type = o->type;
        d.tenured = o->tenured;
        if (!b) {
            d.born_ns = o->born_ns;
            d.stack = o->stack;
        }
    }
    p->on_death(p->arg, &d);
}

/* An object is gone: counts it against the collection in progress. */
static void object_died(struct rs_gc_model *m, struct obj *o)
{
    struct rs_gc_model_priv *p = m->priv;
    if (p->cur && !p->cur->complete && o->census_seq == p->cur->seq)
        p->dead_in_window++;
    map_remove(&p->objs, o);
}

static void on_destroy(struct rs_gc_model *m, const struct rs_event *ev)
{
    struct obj *o = map_find(&m->priv->objs, ev->addr);
    m->object_destroys++;
    if (!o)
        return;
    report_death(m, o, NULL, ev->time_ns);
    object_died(m, o);
}

static int on_alloc_free(struct rs_gc_model *m, const struct rs_event *ev)
{
    struct rs_gc_model_priv *p = m->priv;
    struct rs_block freed;
    int r = rs_heap_apply(p->heap, ev, &freed);
    if (r < 0)
        return r;
    if (r != 1 || freed.domain != RS_DOMAIN_OBJ)
        return 0;
    /* The object in this block, if the census or object events told us of it. */
    struct obj *o = NULL;
    static const uint64_t pre[] = {16, 32, 0};
    for (int i = 0; i < 3 && !o; i++)
        o = map_find(&p->objs, freed.addr + pre[i]);
    report_death(m, o, &freed, ev->time_ns);
    if (o)
        object_died(m, o);
    return 0;
}

/* ---- gc records --------------------------------------------------------------- */

static int on_gc_start(struct rs_gc_model *m, const struct rs_event *ev)
{
    struct rs_gc_model_priv *p = m->priv;
    struct rs_gc_collection *c;

    if (m->ncollections == p->cols_cap) {
        uint64_t cap = p->cols_cap ? p->cols_cap * 2 : 256;
        c = realloc(m->collections, cap * sizeof(*c));
        if (!c)
            return -ENOMEM;
        m->collections = c;
        p->cols_cap = cap;
    }
    c = &m->collections[m->ncollections];
    memset(c, 0, sizeof(*c));
    c->seq = ev->stack;
    c->generation = ev->flags & RS_GC_GEN_MASK;
    c->flags = ev->flags & ~RS_GC_GEN_MASK;
    c->start_ns = ev->time_ns;
    c->counts[0] = ev->addr;
    c->counts[1] = ev->size & 0xffffffffu;
    c->counts[2] = ev->size >> 32;
    c->examined = m->census && m->generational ? p->census.n : RS_GC_UNKNOWN;
    c->promoted = RS_GC_UNKNOWN;
    if ((c->flags & RS_GC_F_SHUTDOWN) && m->shutdown_ns == RS_GC_UNKNOWN)
        m->shutdown_ns = ev->time_ns;
    /* Census objects of this collection carry its sequence number. */
    for (uint64_t i = 0; i < p->census.n; i++) {
        struct obj *o = map_find(&p->objs, p->census.v[i]);
        if (o)
            o->census_seq = c->seq;
    }
    p->cur = c;
    p->cur_index = m->ncollections++;
    p->dead_in_window = 0;
    p->stop_matched = 0;
    p->stop_census_open = 0;
    m->have_gc = 1;
    return 0;
}

static void on_gc_stop(struct rs_gc_model *m, const struct rs_event *ev)
{
    struct rs_gc_model_priv *p = m->priv;
    struct rs_gc_collection *c = p->cur;
    if (!c || c->complete)
        return;
    c->complete = 1;
    c->collected = ev->addr;
    c->uncollectable = ev->size;
    c->pause_ns = ev->stack && ev->stack != UINT32_MAX ? ev->stack
                  : ev->time_ns > c->start_ns          ? ev->time_ns - c->start_ns
                                                       : 0;
    if (c->examined != RS_GC_UNKNOWN) {
        c->promoted = c->examined >= p->dead_in_window ? c->examined - p->dead_in_window : 0;
        /* Survivors of a collection of generation >= 1 reach the oldest one. */
        if (c->generation >= 1 && c->generation < RS_GC_GENS)
            for (uint64_t i = 0; i < p->census.n; i++) {
                struct obj *o = map_find(&p->objs, p->census.v[i]);
                if (o && o->census_seq == c->seq)
                    o->tenured = 1;
            }
    }
    p->census.n = 0;
}

static int on_census(struct rs_gc_model *m, const struct rs_event *ev)
{
    struct rs_gc_model_priv *p = m->priv;
    const uint8_t *d = ev->payload;
    uint32_t count;
    uint8_t phase;

    if (ev->payload_len < 8)
        return 0;
    phase = d[1];
    count = (uint32_t)le(d + 4, 4);
    if (8 + (uint64_t)count * 12 > ev->payload_len)
        return 0;
    for (uint32_t i = 0; i < count; i++) {
        uint64_t addr = le(d + 8 + i * 12, 8);
        uint32_t type = (uint32_t)le(d + 16 + i * 12, 4);
        int fresh;
        if (phase == 0) {
            struct obj *o = map_get(&p->objs, addr, &fresh);
            if (!o)
                return -ENOMEM;
            if (fresh) {
                /* Before 3.13: the object's block tells when and where it was born. */
                static const uint64_t pre[] = {16, 32, 0};
                for (int k = 0; k < 3; k++) {
                    const struct rs_block *b = rs_heap_find(p->heap, addr - pre[k]);
                    if (b && b->domain == RS_DOMAIN_OBJ) {
                        o->born_ns = b->alloc_ns;
                        o->stack = b->stack;
                        break;
                    }
                }
            }
            if (type)
                o->type = type;
            if (vec_push(&p->census, addr) != 0)
                return -ENOMEM;
        } else if (p->cur && p->cur->complete) {
            struct obj *o = map_find(&p->objs, addr);
            if (!p->stop_census_open) {
                p->stop_census_open = 1;
                p->stop_matched = 0;
            }
            if (o && o->census_seq == p->cur->seq && o->stop_seq != p->cur->seq) {
                o->stop_seq = p->cur->seq;
                p->stop_matched++;
            }
        }
    }
    if (phase == 1 && p->cur && p->cur->complete && (d[3] & RS_GC_CENSUS_LAST) &&
        p->cur->examined != RS_GC_UNKNOWN)
        p->cur->promoted = p->stop_matched; /* exact: start ∩ stop census */
    return 0;
}

static int on_config(struct rs_gc_model *m, const struct rs_event *ev)
{
    struct rs_gc_model_priv *p = m->priv;
    const uint8_t *d = ev->payload;
    struct rs_gc_config_change *c;
    uint32_t off, n;

    if (ev->payload_len < 8)
        return 0;
    n = d[3] > RS_GC_GENS ? RS_GC_GENS : d[3];
    if (ev->payload_len < 8 + (uint32_t)d[3] * 8 + 8)
        return 0;
    if (m->nconfigs == p->cfg_cap) {
        uint64_t cap = p->cfg_cap ? p->cfg_cap * 2 : 16;
        c = realloc(m->configs, cap * sizeof(*c));
        if (!c)
            return -ENOMEM;
        m->configs = c;
        p->cfg_cap = cap;
    }
    c = &m->configs[m->nconfigs++];
    memset(c, 0, sizeof(*c));
    c->time_ns = ev->time_ns;
    c->reason = d[1];
    c->enabled = d[2];
    c->nthresh = (uint8_t)n;
    for (uint32_t i = 0; i < n; i++)
        c->thresholds[i] = le(d + 8 + i * 8, 8);
    off = 8 + (uint32_t)d[3] * 8;
    c->freeze_count = le(d + off, 8);
    off += 8;
    if (off + 2 <= ev->payload_len) {
        uint32_t len = (uint32_t)le(d + off, 2);
        if (off + 2 + len <= ev->payload_len) {
            if (len >= sizeof(c->function))
                len = sizeof(c->function) - 1;
            memcpy(c->function, d + off + 2, len);
        }
    }
    return 0;
}

static int on_note(struct rs_gc_model *m, const struct rs_event *ev)
{
    struct rs_gc_model_priv *p = m->priv;
    uint16_t code;
    uint32_t len;
    char *text;

    if (ev->payload_len < 4)
        return 0;
    code = (uint16_t)le(ev->payload, 2);
    len = (uint32_t)le(ev->payload + 2, 2);
    if (4 + len > ev->payload_len || (code >> 8) != 0x04)
        return 0; /* only this feature's notes; others report their own */
    for (uint32_t i = 0; i < m->nnotes; i++)
        if (m->note_codes[i] == code)
            return 0;
    if (m->nnotes == p->notes_cap) {
        uint32_t cap = p->notes_cap ? p->notes_cap * 2 : 8;
        char **n = realloc(m->notes, cap * sizeof(*n));
        if (!n)
            return -ENOMEM;
        m->notes = n;
        uint16_t *c = realloc(m->note_codes, cap * sizeof(*c));
        if (!c)
            return -ENOMEM;
        m->note_codes = c;
        p->notes_cap = cap;
    }
    text = malloc(len + 1);
    if (!text)
        return -ENOMEM;
    memcpy(text, ev->payload + 4, len);
    text[len] = 0;
    m->notes[m->nnotes] = text;
    m->note_codes[m->nnotes++] = code;
    return 0;
}

static int on_gc_info(struct rs_gc_model *m, const struct rs_event *ev)
{
    const uint8_t *d = ev->payload;
    if (!d || ev->payload_len < 1)
        return 0;
    switch (d[0]) {
    case RS_GC_INFO_BASELINE:
        if (ev->payload_len >= 8) {
            uint32_t n = d[1] > RS_GC_GENS ? RS_GC_GENS : d[1];
            for (uint32_t g = 0; g < n && 8 + (g + 1) * 24 <= ev->payload_len; g++)
                for (int k = 0; k < 3; k++)
                    m->priv->baseline[g][k] = le(d + 8 + g * 24 + k * 8, 8);
            m->have_baseline = 1;
        }
        return 0;
    case RS_GC_INFO_CONFIG:
        return on_config(m, ev);
    case RS_GC_INFO_CENSUS:
        return on_census(m, ev);
    case RS_GC_INFO_MODE:
        if (ev->payload_len >= 4) {
            m->census = d[1];
            m->generational = d[2] != 0;
            m->incremental = d[3];
        }
        return 0;
    }
    return 0;
}

int rs_gcmodel_feed(struct rs_gc_model *m, const struct rs_event *ev)
{
    int fresh;
    struct obj *o;

    switch (ev->kind) {
    case RS_EV_ALLOC:
    case RS_EV_FREE:
        return on_alloc_free(m, ev);
    case RS_EV_OBJ_CREATE:
        m->object_creates++;
        o = map_find(&m->priv->objs, ev->addr);
        if (o) { /* a DESTROY we never saw (gh-130382): the old object is gone */
            report_death(m, o, NULL, ev->time_ns);
            object_died(m, o);
        }
        o = map_get(&m->priv->objs, ev->addr, &fresh);
        if (!o)
            return -ENOMEM;
        o->born_ns = ev->time_ns;
        o->type = (uint32_t)ev->size;
        o->stack = ev->stack;
        o->created = 1;
        return 0;
    case RS_EV_OBJ_DESTROY:
        on_destroy(m, ev);
        return 0;
    case RS_EV_GC_START:
        return on_gc_start(m, ev);
    case RS_EV_GC_STOP:
        on_gc_stop(m, ev);
        return 0;
    case RS_EV_GC_INFO:
        return on_gc_info(m, ev);
    case RS_EV_NOTE:
        return on_note(m, ev);
    }
    return 0;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

int rs_gcmodel_finish(struct rs_gc_model *m, uint64_t end_ns)
{
    uint64_t *pauses = malloc((m->ncollections + 1) * sizeof(*pauses));
    if (!pauses)
        return -ENOMEM;
    (void)end_ns;
    for (int g = 0; g < RS_GC_GENS; g++) {
        struct rs_gc_generation *s = &m->gens[g];
        uint64_t np = 0;
        memset(s, 0, sizeof(*s));
        s->before_tracing = m->priv->baseline[g][0];
        s->collected_before_tracing = m->priv->baseline[g][1];
        s->uncollectable_before_tracing = m->priv->baseline[g][2];
        s->collections = s->before_tracing;
        s->collected = s->collected_before_tracing;
        s->uncollectable = s->uncollectable_before_tracing;
        for (uint64_t i = 0; i < m->ncollections; i++) {
            const struct rs_gc_collection *c = &m->collections[i];
            if (c->generation != g || !c->complete)
                continue;
            if (c->flags & RS_GC_F_SHUTDOWN) {
                s->shutdown++;
                continue;
            }
            s->traced++;
            s->collections++;
            s->collected += c->collected;
            s->uncollectable += c->uncollectable;
            s->pause_total_ns += c->pause_ns;
            if (c->pause_ns > s->pause_max_ns)
                s->pause_max_ns = c->pause_ns;
            pauses[np++] = c->pause_ns;
            if (c->examined != RS_GC_UNKNOWN && c->promoted != RS_GC_UNKNOWN) {
                s->census_collections++;
                s->examined += c->examined;
                s->promoted += c->promoted;
            }
        }
        if (np) {
            qsort(pauses, np, sizeof(*pauses), cmp_u64);
            s->pause_mean_ns = (double)s->pause_total_ns / (double)np;
            s->pause_p50_ns = pauses[(np - 1) / 2];
            s->pause_p99_ns = pauses[(uint64_t)((double)(np - 1) * 0.99 + 0.5)];
        }
        s->survival_rate = s->examined ? (double)s->promoted / (double)s->examined : -1.0;
    }
    free(pauses);
    return 0;
}

void rs_gcmodel_foreach_alive(const struct rs_gc_model *m, rs_gc_death_fn fn, void *arg)
{
    const struct obj_map *om = &m->priv->objs;
    for (uint64_t i = 0; om->slots && i <= om->mask; i++) {
        const struct obj *o = &om->slots[i];
        if (!o->addr)
            continue;
        struct rs_gc_death d = {.born_ns = o->born_ns, .died_ns = RS_GC_UNKNOWN, .addr = o->addr,
                                .type = o->type, .stack = o->stack, .tenured = o->tenured};
        fn(arg, &d);
    }
}

void rs_gcmodel_free(struct rs_gc_model *m)
{
    if (!m->priv)
        return;
    rs_heap_free(m->priv->heap);
    free(m->priv->objs.slots);
    free(m->priv->census.v);
    free(m->priv);
    for (uint32_t i = 0; i < m->nnotes; i++)
        free(m->notes[i]);
    free(m->notes);
    free(m->note_codes);
    free(m->collections);
    free(m->configs);
    memset(m, 0, sizeof(*m));
}
