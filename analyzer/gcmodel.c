/*
 * GC model (gcmodel.h): replays GC_START/GC_STOP, GC_INFO (baseline, config,
 * census, mode), NOTE, OBJ_CREATE/OBJ_DESTROY and ALLOC/FREE records.
 *
 * Promotions come from the shim, exact (census format 2, events.h): each
 * collection's SURVIVAL record, right after its STOP, says how many objects
 * each examined generation held at START and how many of them are in the
 * next generation at STOP. TENURED records name the objects that reached
 * the oldest generation; the model marks them "tenured" so that lifetimes
 * can report tenured garbage, and before 3.13 (no object events) they are
 * also where object types come from. A trace with census format 1 (an older
 * shim) is read as one without census, with a note.
 *
 * Objects are tracked in an array indexed through a u64map keyed by address,
 * each entry holding birth time, type, site and whether they reached
 * the oldest generation. Deaths are OBJ_DESTROY (3.13+) or the free of the
 * OBJ-domain block that holds the object: the block starts 0, 16 or 32
 * bytes before it (GC header, managed dict/weakref pre-header).
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include "gcmodel.h"
#include "grow.h"
#include "heap.h"
#include "u64map.h"

struct obj {
    uint64_t addr;
    uint64_t born_ns;     /* RS_GC_UNKNOWN  */
    uint32_t type, stack;
    uint8_t  tenured;
    uint8_t  created;     /* seen by OBJ_CREATE                           */
};

/* Known objects: address -> index into objs (a u64map); freed indices are
 * reused first. */
struct obj_map {
    struct u64map index;
    struct obj *objs;
    uint64_t *unused;        /* stack of free indices into objs */
    size_t nobjs, cap, nunused;
};

struct rs_gc_model_priv {
    rs_gc_death_fn on_death;
    void *arg;
    struct obj_map objs;
    struct rs_heap *heap;
    uint64_t baseline[RS_GC_GENS][3];
    uint64_t cols_cap, cfg_cap;
    uint32_t notes_cap;
};

static struct obj *map_find(const struct obj_map *m, uint64_t addr)
{
    const uint64_t *idx = u64map_get(&m->index, addr);
    return idx ? &m->objs[*idx] : NULL;
}

/* Finds or inserts addr; *fresh = 1 when inserted (zeroed but for addr). */
static struct obj *map_get(struct obj_map *m, uint64_t addr, int *fresh)
{
    uint64_t idx, *slot;
    *fresh = 0;
    if (m->nunused) {
        idx = m->unused[m->nunused - 1];
    } else {
        if (m->nobjs == m->cap) {
            size_t cap = m->cap ? m->cap * 2 : 1024;
            struct obj *o = realloc(m->objs, cap * sizeof(*o));
            if (!o)
                return NULL;
            m->objs = o;
            uint64_t *u = realloc(m->unused, cap * sizeof(*u));
            if (!u)
                return NULL;
            m->unused = u;
            m->cap = cap;
        }
        idx = m->nobjs;
    }
    int r = u64map_insert(&m->index, addr, idx, &slot);
    if (r < 0)
        return NULL;
    if (r == 0)
        return &m->objs[*slot];
    if (m->nunused)
        m->nunused--;
    else
        m->nobjs++;
    struct obj *o = &m->objs[idx];
    memset(o, 0, sizeof(*o));
    o->addr = addr;
    o->born_ns = RS_GC_UNKNOWN;
    *fresh = 1;
    return o;
}

static void map_remove(struct obj_map *m, struct obj *o)
{
    uint64_t idx;
    if (u64map_delete(&m->index, o->addr, &idx))
        m->unused[m->nunused++] = idx; /* unused has room for every index */
}

static void map_free(struct obj_map *m)
{
    u64map_free(&m->index);
    free(m->objs);
    free(m->unused);
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

static void object_died(struct rs_gc_model *m, struct obj *o)
{
    map_remove(&m->priv->objs, o);
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
    c = &m->collections[m->ncollections++];
    memset(c, 0, sizeof(*c));
    c->seq = ev->stack;
    c->generation = ev->flags & RS_GC_GEN_MASK;
    c->flags = ev->flags & ~RS_GC_GEN_MASK;
    c->start_ns = ev->time_ns;
    c->counts[0] = ev->addr;
    c->counts[1] = ev->size & 0xffffffffu;
    c->counts[2] = ev->size >> 32;
    c->examined = c->promoted = c->tenured = RS_GC_UNKNOWN; /* until its SURVIVAL record */
    if ((c->flags & RS_GC_F_SHUTDOWN) && m->shutdown_ns == RS_GC_UNKNOWN)
        m->shutdown_ns = ev->time_ns;
    m->have_gc = 1;
    return 0;
}

static void on_gc_stop(struct rs_gc_model *m, const struct rs_event *ev)
{
    struct rs_gc_collection *c = m->ncollections ? &m->collections[m->ncollections - 1] : NULL;
    if (!c || c->complete)
        return;
    c->complete = 1;
    c->collected = ev->addr;
    c->uncollectable = ev->size;
    c->pause_ns = ev->stack && ev->stack != UINT32_MAX ? ev->stack
                  : ev->time_ns > c->start_ns          ? ev->time_ns - c->start_ns
                                                       : 0;
}

/* LEB128 at *off; on a payload cut short, 0 with *off past len. */
static uint64_t get_varint(const uint8_t *d, uint32_t len, uint32_t *off)
{
    uint64_t v = 0;
    for (unsigned shift = 0; *off < len && shift < 64; shift += 7) {
        uint8_t byte = d[(*off)++];
        v |= (uint64_t)(byte & 0x7f) << shift;
        if (!(byte & 0x80))
            return v;
    }
    *off = len + 1;
    return 0;
}

static void on_survival(struct rs_gc_model *m, const struct rs_event *ev)
{
    const uint8_t *d = ev->payload;
    uint32_t len = ev->payload_len, off = 8, seq;
    uint64_t examined = 0, promoted, tenured;
    struct rs_gc_collection *c = NULL;

    if (len < 8 || m->census_format != RS_GC_CENSUS_FORMAT)
        return;
    seq = (uint32_t)le(d + 4, 4);
    /* its collection: the last one, unless records were lost */
    for (uint64_t i = m->ncollections, k = 0; i-- > 0 && k < 16 && !c; k++)
        if (m->collections[i].seq == seq)
            c = &m->collections[i];
    if (!c || d[1] >= RS_GC_GENS || (d[2] & RS_GC_SURVIVAL_FAILED))
        return;
    for (unsigned g = 0; g <= d[1]; g++)
        examined += get_varint(d, len, &off);
    promoted = get_varint(d, len, &off);
    tenured = get_varint(d, len, &off); /* the TENURED records say which */
    if (off > len)
        return;
    m->tenured_expected += tenured;
    c->examined = examined;
    c->promoted = promoted;
    c->tenured = tenured;
}

/* Marks one object tenured, adding it to the map (with its block's birth
 * and site before 3.13) when object events did not. */
static int mark_tenured(struct rs_gc_model *m, uint64_t addr, int has_type, uint32_t type)
{
    struct rs_gc_model_priv *p = m->priv;
    int fresh;
    struct obj *o = map_get(&p->objs, addr, &fresh);
    if (!o)
        return -ENOMEM;
    if (fresh) {
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
    if (has_type && type)
        o->type = type;
    o->tenured = 1;
    return 0;
}

/* A TENURED record: the address stream, then (TYPES) the type stream. */
static int on_tenured(struct rs_gc_model *m, const struct rs_event *ev)
{
    const uint8_t *d = ev->payload;
    uint32_t len = ev->payload_len, off = 8, toff;
    uint64_t n, addr = 0, done = 0, type = 0, type_left = 0;
    int types, shift;

    if (len < 8 || m->census_format != RS_GC_CENSUS_FORMAT)
        return 0;
    types = (d[1] & RS_GC_TENURED_TYPES) != 0;
    shift = (d[1] & RS_GC_TENURED_BYTES) ? 0 : 4;
    n = get_varint(d, len, &off);
    if (off > len || n > RS_GC_TENURED_MAX_ENTRIES)
        return 0; /* malformed */
    if (d[4] | d[5] | d[6] | d[7]) /* a collection's, not registration's */
        m->tenured_listed += n;
    /* the type stream starts where the address stream ends */
    toff = off;
    for (uint64_t k = 0; k < n && toff <= len;) {
        uint64_t t = get_varint(d, len, &toff);
        k += (t & 1) ? get_varint(d, len, &toff) : 1;
    }
    while (done < n && off <= len) {
        uint64_t t = get_varint(d, len, &off), reps = (t & 1) ? get_varint(d, len, &off) : 1;
        for (uint64_t k = 0; k < reps && done < n && off <= len; k++, done++) {
            addr += (t >> 1) << shift;
            if (types && !type_left) {
                type = get_varint(d, len, &toff);
                type_left = get_varint(d, len, &toff);
                if (toff > len || !type_left)
                    return 0; /* malformed: keep what was read */
            }
            type_left -= types;
            int r = mark_tenured(m, addr, types, (uint32_t)type);
            if (r < 0)
                return r;
        }
    }
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
    case RS_GC_INFO_SURVIVAL:
        on_survival(m, ev);
        return 0;
    case RS_GC_INFO_TENURED:
        return on_tenured(m, ev);
    case RS_GC_INFO_MODE:
        if (ev->payload_len >= 4) {
            m->census_format = d[1];
            m->census = d[1] == RS_GC_CENSUS_FORMAT;
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
            rs_sort(pauses, np, sizeof(*pauses), cmp_u64);
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
    uint64_t idx;
    for (size_t pos = 0; u64map_next(&om->index, &pos, NULL, &idx);) {
        const struct obj *o = &om->objs[idx];
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
    map_free(&m->priv->objs);
    free(m->priv);
    for (uint32_t i = 0; i < m->nnotes; i++)
        free(m->notes[i]);
    free(m->notes);
    free(m->note_codes);
    free(m->collections);
    free(m->configs);
    memset(m, 0, sizeof(*m));
}
