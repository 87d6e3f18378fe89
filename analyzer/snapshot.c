/*
 * Heap snapshots, rebuilt offline (see snapshot.h). Records of one snapshot
 * arrive in any order between BEGIN and END (an object's MORE_REFS or labels
 * may come before its entry), so everything is collected raw and resolved
 * when END arrives: addresses become object indices, references a CSR graph,
 * and each object gets its allocation site from the live heap at that moment.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <jansson.h>

#include "refscope/events.h"
#include "grow.h"
#include "siteindex.h"
#include "snapshot.h"
#include "stacks.h"
#include "units.h"

/* ---- small helpers -------------------------------------------------------------- */

static uint64_t rd64(const uint8_t *p) { uint64_t v; memcpy(&v, p, 8); return v; }
static uint32_t rd32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static uint16_t rd16(const uint8_t *p) { uint16_t v; memcpy(&v, p, 2); return v; }

/* ---- snapshot under construction ------------------------------------------------ */

struct pending_label {
    uint64_t addr;
    uint32_t edge;
    uint32_t text;
    uint8_t kind;
};

struct builder {
    int active;
    struct rs_snapshot *snap;
    size_t objs_cap, types_cap, strings_cap;
    uint32_t *edge_src; uint64_t *edge_dst; size_t nedge, edge_cap, edge_src_cap;
    uint64_t *more_src; uint64_t *more_dst; size_t nmore, more_cap, more_src_cap;
    struct pending_label *labels; size_t nlabels, labels_cap;
    uint32_t *typeref; size_t typeref_cap;   /* type ref -> index + 1 */
    uint32_t *type_name_off;                  /* per type: offset of its name */
    size_t type_name_cap;
};

/* Objects announced by RS_EV_OBJ_CREATE (3.13+ object events): creation
 * site and time by address. Better than the memory block's allocation when
 * a freelist hands out a recycled object (lists, tuples, dicts, floats). */
struct obj_entry {
    uint64_t ns;
    uint32_t stack;
};

/* address -> index into entries; freed indices are reused first */
struct obj_map {
    struct u64map index;
    struct obj_entry *entries;
    uint64_t *unused;        /* stack of free indices into entries */
    size_t nentries, cap, nunused;
};

struct rs_snapshots {
    struct rs_snapshot **v;
    size_t n, cap;
    struct builder b;
    struct obj_map objs;
};

static int objmap_put(struct obj_map *m, uint64_t addr, uint32_t stack, uint64_t ns)
{
    uint64_t idx, *slot;
    if (m->nunused) {
        idx = m->unused[m->nunused - 1];
    } else {
        if (m->nentries == m->cap) {
            size_t cap = m->cap ? m->cap * 2 : 4096;
            struct obj_entry *e = realloc(m->entries, cap * sizeof(*e));
            if (!e)
                return -ENOMEM;
            m->entries = e;
            uint64_t *u = realloc(m->unused, cap * sizeof(*u));
            if (!u)
                return -ENOMEM;
            m->unused = u;
            m->cap = cap;
        }
        idx = m->nentries;
    }
    int r = u64map_insert(&m->index, addr, idx, &slot);
    if (r < 0)
        return r;
    if (r == 1) {
        if (m->nunused)
            m->nunused--;
        else
            m->nentries++;
    }
    m->entries[*slot] = (struct obj_entry){ns, stack};
    return 0;
}

static const struct obj_entry *objmap_get(const struct obj_map *m, uint64_t addr)
{
    const uint64_t *idx = u64map_get(&m->index, addr);
    return idx ? &m->entries[*idx] : NULL;
}

static void objmap_del(struct obj_map *m, uint64_t addr)
{
    uint64_t idx;
    if (u64map_delete(&m->index, addr, &idx))
        m->unused[m->nunused++] = idx; /* unused has room for every index */
}

static void objmap_free(struct obj_map *m)
{
    u64map_free(&m->index);
    free(m->entries);
    free(m->unused);
}

struct rs_snapshots *rs_snapshots_new(void)
{
    return calloc(1, sizeof(struct rs_snapshots));
}

static void snapshot_free(struct rs_snapshot *s)
{
    if (!s)
        return;
    free(s->objs);
    free(s->edge_start);
    free(s->edges);
    free(s->types);
    free(s->strings);
    free(s->key_edge);
    free(s->key_text);
    u64map_free(&s->by_addr);
    free(s);
}

static void builder_reset(struct builder *b)
{
    snapshot_free(b->snap);
    free(b->edge_src);
    free(b->edge_dst);
    free(b->more_src);
    free(b->more_dst);
    free(b->labels);
    free(b->typeref);
    free(b->type_name_off);
    memset(b, 0, sizeof(*b));
}

void rs_snapshots_free(struct rs_snapshots *s)
{
    if (!s)
        return;
    for (size_t i = 0; i < s->n; i++)
        snapshot_free(s->v[i]);
    free(s->v);
    builder_reset(&s->b);
    objmap_free(&s->objs);
    free(s);
}

size_t rs_snapshots_count(const struct rs_snapshots *s) { return s ? s->n : 0; }

const struct rs_snapshot *rs_snapshots_get(const struct rs_snapshots *s, size_t i)
{
    return s && i < s->n ? s->v[i] : NULL;
}

const struct rs_snapshot *rs_snapshots_find(const struct rs_snapshots *s, uint32_t seq)
{
    for (size_t i = 0; s && i < s->n; i++)
        if (s->v[i]->seq == seq)
            return s->v[i];
    return NULL;
}

const struct rs_snapshot *rs_snapshots_pick(const struct rs_snapshots *s, const char *cmd,
                                            const char *path, const char *number)
{
    char *end;
    unsigned long seq = strtoul(number, &end, 10);
    const struct rs_snapshot *snap = NULL;
    if (*number >= '0' && *number <= '9' && !*end && seq <= UINT32_MAX)
        snap = rs_snapshots_find(s, (uint32_t)seq);
    if (snap)
        return snap;
    char have[64];
    size_t n = rs_snapshots_count(s);
    if (!n)
        snprintf(have, sizeof(have), "no snapshot");
    else if (n == 1)
        snprintf(have, sizeof(have), "snapshot %u", s->v[0]->seq);
    else
        snprintf(have, sizeof(have), "snapshots %u to %u", s->v[0]->seq, s->v[n - 1]->seq);
    fprintf(stderr, "refscope %s: %s: no snapshot numbered '%s' (the trace has %s)\n", cmd, path, number, have);
    return NULL;
}

static int add_string(struct builder *b, const uint8_t *p, uint32_t n, uint32_t *off)
{
    struct rs_snapshot *s = b->snap;
    if (rs_grow(&s->strings, &b->strings_cap, s->strings_len + n + 1, 1))
        return -ENOMEM;
    memcpy(s->strings + s->strings_len, p, n);
    s->strings[s->strings_len + n] = 0;
    *off = (uint32_t)s->strings_len;
    s->strings_len += n + 1;
    return 0;
}

static int map_build(struct rs_snapshot *s)
{
    int rc = u64map_reserve(&s->by_addr, s->nobjs);
    for (size_t i = 0; rc >= 0 && i < s->nobjs; i++) /* a duplicate address: the later entry wins */
        rc = u64map_put(&s->by_addr, s->objs[i].addr, i);
    return rc < 0 ? rc : 0;
}

uint32_t rs_snapshot_lookup(const struct rs_snapshot *s, uint64_t addr)
{
    const uint64_t *idx = addr ? u64map_get(&s->by_addr, addr) : NULL;
    return idx ? (uint32_t)*idx : RS_SNAP_NONE;
}

static int cmp_key(const void *a, const void *b)
{
    const uint64_t *x = a, *y = b;
    return x[0] < y[0] ? -1 : x[0] > y[0];
}

/* END: resolve everything and publish the snapshot. */
static int builder_finish(struct rs_snapshots *ss, const struct rs_heap *heap, uint64_t time_ns)
{
    struct builder *b = &ss->b;
    struct rs_snapshot *s = b->snap;
    int rc = -ENOMEM;
    s->time_ns = time_ns;
    for (size_t i = 0; i < s->ntypes; i++)
        s->types[i].name = s->strings ? s->strings + b->type_name_off[i] : "?";
    if (map_build(s))
        goto out;

    /* MORE_REFS → edges */
    for (size_t i = 0; i < b->nmore; i++) {
        uint32_t src = rs_snapshot_lookup(s, b->more_src[i]);
        if (src == RS_SNAP_NONE)
            continue;
        if (rs_grow(&b->edge_src, &b->edge_src_cap, b->nedge + 1, sizeof(uint32_t)) ||
            rs_grow(&b->edge_dst, &b->edge_cap, b->nedge + 1, sizeof(uint64_t)))
            goto out;
        b->edge_src[b->nedge] = src;
        b->edge_dst[b->nedge++] = b->more_dst[i];
    }

    /* CSR by counting sort (stable: keeps each object's edge order) */
    s->edge_start = calloc(s->nobjs + 2, sizeof(uint64_t));
    s->edges = malloc((b->nedge ? b->nedge : 1) * sizeof(uint32_t));
    if (!s->edge_start || !s->edges)
        goto out;
    for (size_t e = 0; e < b->nedge; e++)
        s->edge_start[b->edge_src[e] + 1]++;
    for (size_t i = 0; i < s->nobjs; i++)
        s->edge_start[i + 1] += s->edge_start[i];
    uint64_t *fill = calloc(s->nobjs + 1, sizeof(uint64_t));
    if (!fill)
        goto out;
    for (size_t e = 0; e < b->nedge; e++) {
        uint32_t src = b->edge_src[e];
        s->edges[s->edge_start[src] + fill[src]++] = rs_snapshot_lookup(s, b->edge_dst[e]);
    }
    free(fill);
    s->nedges = b->nedge;

    /* labels */
    uint64_t *keys = malloc((b->nlabels ? b->nlabels : 1) * 2 * sizeof(uint64_t));
    if (!keys)
        goto out;
    size_t nk = 0;
    for (size_t i = 0; i < b->nlabels; i++) {
        struct pending_label *l = &b->labels[i];
        uint32_t o = rs_snapshot_lookup(s, l->addr);
        if (o == RS_SNAP_NONE)
            continue;
        if (l->kind == RS_SNAP_LABEL_KEY) {
            if (l->edge >= s->edge_start[o + 1] - s->edge_start[o])
                continue;
            keys[2 * nk] = s->edge_start[o] + l->edge;
            keys[2 * nk + 1] = l->text;
            nk++;
        } else {
            s->objs[o].label = l->text;
        }
    }
    rs_sort(keys, nk, 2 * sizeof(uint64_t), cmp_key);
    s->key_edge = malloc((nk ? nk : 1) * sizeof(uint64_t));
    s->key_text = malloc((nk ? nk : 1) * sizeof(uint32_t));
    if (!s->key_edge || !s->key_text) {
        free(keys);
        goto out;
    }
    for (size_t i = 0; i < nk; i++) {
        s->key_edge[i] = keys[2 * i];
        s->key_text[i] = (uint32_t)keys[2 * i + 1];
    }
    s->nkeys = nk;
    free(keys);

    /* allocation sites through the live heap */
    for (size_t i = 0; i < s->nobjs; i++) {
        struct rs_snap_object *o = &s->objs[i];
        o->alloc_ns = UINT64_MAX;
        const struct rs_block *blk = heap ? rs_heap_find(heap, o->addr - o->preheader) : NULL;
        const struct obj_entry *created = objmap_get(&ss->objs, o->addr);
        if (blk) {
            o->stack = blk->stack;
            o->alloc_ns = blk->alloc_ns;
            o->has_block = 1;
        }
        if (created && (!blk || created->ns >= blk->alloc_ns)) {
            o->stack = created->stack;
            o->alloc_ns = created->ns;
            o->has_block = 1;
        }
    }

    if (rs_grow(&ss->v, &ss->cap, ss->n + 1, sizeof(*ss->v)))
        goto out;
    ss->v[ss->n++] = s;
    b->snap = NULL;
    rc = 0;
out:
    builder_reset(b);
    return rc;
}

static int feed_payload(struct rs_snapshots *ss, uint8_t sub, const uint8_t *p, const uint8_t *end)
{
    struct builder *b = &ss->b;
    struct rs_snapshot *s = b->snap;
    switch (sub) {
    case RS_SNAP_TYPE: {
        if (end - p < 22)
            return 0;
        uint32_t ref = rd32(p), id = rd32(p + 4), flags = rd32(p + 16);
        uint64_t addr = rd64(p + 8);
        uint16_t n = rd16(p + 20);
        if (p + 22 + n > end || ref > (1u << 20))
            return 0;
        if (rs_grow(&b->typeref, &b->typeref_cap, ref + 1, sizeof(uint32_t)))
            return -ENOMEM;
        if (rs_grow(&s->types, &b->types_cap, s->ntypes + 1, sizeof(*s->types)) ||
            rs_grow(&b->type_name_off, &b->type_name_cap, s->ntypes + 1, sizeof(uint32_t)))
            return -ENOMEM;
        uint32_t off;
        if (add_string(b, p + 22, n, &off))
            return -ENOMEM;
        s->types[s->ntypes] = (struct rs_snap_type){.addr = addr, .id = id, .flags = flags, .name = NULL};
        b->type_name_off[s->ntypes] = off;
        b->typeref[ref] = (uint32_t)++s->ntypes;
        return 0;
    }
    case RS_SNAP_OBJECTS:
        while (end - p >= RS_SNAP_OBJ_FIXED) {
            uint32_t n = rd32(p + 28);
            if ((uint64_t)(end - p - RS_SNAP_OBJ_FIXED) < (uint64_t)n * 8)
                break;
            if (rs_grow(&s->objs, &b->objs_cap, s->nobjs + 1, sizeof(*s->objs)))
                return -ENOMEM;
            struct rs_snap_object *o = &s->objs[s->nobjs];
            uint32_t ref = rd32(p + 8);
            memset(o, 0, sizeof(*o));
            o->addr = rd64(p);
            o->type = ref < b->typeref_cap && b->typeref[ref] ? b->typeref[ref] - 1 : RS_SNAP_NONE;
            o->size = rd32(p + 12);
            o->refcnt = rd64(p + 16);
            o->flags = p[24];
            o->preheader = p[25];
            o->label = RS_SNAP_NONE;
            if (rs_grow(&b->edge_src, &b->edge_src_cap, b->nedge + n, sizeof(uint32_t)) ||
                rs_grow(&b->edge_dst, &b->edge_cap, b->nedge + n, sizeof(uint64_t)))
                return -ENOMEM;
            for (uint32_t k = 0; k < n; k++) {
                b->edge_src[b->nedge] = (uint32_t)s->nobjs;
                b->edge_dst[b->nedge++] = rd64(p + RS_SNAP_OBJ_FIXED + 8 * k);
            }
            s->nobjs++;
            p += RS_SNAP_OBJ_FIXED + 8 * (size_t)n;
        }
        return 0;
    case RS_SNAP_MORE_REFS: {
        if (end - p < 12)
            return 0;
        uint64_t src = rd64(p);
        uint32_t n = rd32(p + 8);
        if ((uint64_t)(end - p - 12) < (uint64_t)n * 8)
            return 0;
        if (rs_grow(&b->more_src, &b->more_src_cap, b->nmore + n, sizeof(uint64_t)) ||
            rs_grow(&b->more_dst, &b->more_cap, b->nmore + n, sizeof(uint64_t)))
            return -ENOMEM;
        for (uint32_t k = 0; k < n; k++) {
            b->more_src[b->nmore] = src;
            b->more_dst[b->nmore++] = rd64(p + 12 + 8 * k);
        }
        return 0;
    }
    case RS_SNAP_LABELS:
        while (end - p >= 15) {
            uint16_t n = rd16(p + 13);
            if (p + 15 + n > end)
                break;
            if (rs_grow(&b->labels, &b->labels_cap, b->nlabels + 1, sizeof(*b->labels)))
                return -ENOMEM;
            struct pending_label *l = &b->labels[b->nlabels++];
            l->addr = rd64(p);
            l->kind = p[8];
            l->edge = rd32(p + 9);
            if (add_string(b, p + 15, n, &l->text))
                return -ENOMEM;
            p += 15 + n;
        }
        return 0;
    default:
        return 0;
    }
}

int rs_snapshots_feed(struct rs_snapshots *ss, const struct rs_event *ev, const struct rs_heap *heap)
{
    if (ev->kind == RS_EV_OBJ_CREATE)
        return objmap_put(&ss->objs, ev->addr, ev->stack, ev->time_ns);
    if (ev->kind == RS_EV_OBJ_DESTROY) {
        objmap_del(&ss->objs, ev->addr);
        return 0;
    }
    if (ev->kind != RS_EV_SNAPSHOT || ev->payload_len < 8)
        return 0;
    const uint8_t *p = ev->payload, *end = ev->payload + ev->payload_len;
    uint8_t sub = p[0];
    uint32_t seq = rd32(p + 4);
    struct builder *b = &ss->b;
    p += 8;
    if (sub == RS_SNAP_BEGIN) {
        builder_reset(b); /* a previous snapshot without END is dropped */
        b->snap = calloc(1, sizeof(*b->snap));
        if (!b->snap)
            return -ENOMEM;
        b->active = 1;
        b->snap->seq = seq;
        if (end - p >= 2) {
            b->snap->reason = p[0];
            b->snap->gc_enabled = p[1];
        }
        b->snap->record_bytes = ev->payload_len;
        return 0;
    }
    if (!b->active || b->snap->seq != seq)
        return 0;
    b->snap->record_bytes += ev->payload_len;
    if (sub == RS_SNAP_END) {
        if (end - p >= 28) {
            b->snap->status = rd32(p);
            b->snap->duration_ns = rd64(p + 20);
        }
        return builder_finish(ss, heap, ev->time_ns);
    }
    int rc = feed_payload(ss, sub, p, end);
    if (rc < 0)
        builder_reset(b);
    return rc;
}

/* ---- descriptions --------------------------------------------------------------- */

const char *rs_snapshot_type_name(const struct rs_snapshot *s, uint32_t i)
{
    uint32_t t = s->objs[i].type;
    return t < s->ntypes && s->types[t].name ? s->types[t].name : "?";
}

const char *rs_snapshot_label(const struct rs_snapshot *s, uint32_t i)
{
    return s->objs[i].label == RS_SNAP_NONE ? NULL : s->strings + s->objs[i].label;
}

const char *rs_snapshot_edge_key(const struct rs_snapshot *s, uint64_t e)
{
    size_t lo = 0, hi = s->nkeys;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (s->key_edge[mid] < e)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < s->nkeys && s->key_edge[lo] == e ? s->strings + s->key_text[lo] : NULL;
}

/* A label as one printable line: control characters escaped (a docstring
 * must not break a report's line), cut at max bytes with "...". */
static const char *label_text(const char *in, size_t max, char *out, size_t len)
{
    size_t o = 0, i = 0;
    for (; in[i] && i < max && o + 5 < len; i++) {
        unsigned char ch = (unsigned char)in[i];
        if (ch == '\n' || ch == '\t' || ch == '\r') {
            out[o++] = '\\';
            out[o++] = ch == '\n' ? 'n' : ch == '\t' ? 't' : 'r';
        } else if (ch < 0x20 || ch == 0x7f) {
            o += (size_t)snprintf(out + o, len - o, "\\x%02x", ch);
        } else {
            out[o++] = (char)ch;
        }
    }
    out[o] = 0;
    if (in[i] && o + 4 <= len)
        strcat(out, "...");
    return out;
}

const char *rs_snapshot_describe(const struct rs_snapshot *s, uint32_t i, char *buf, size_t len)
{
    const char *type = rs_snapshot_type_name(s, i);
    const char *label = rs_snapshot_label(s, i);
    char text[4 * RS_SNAP_LABEL_MAX + 8];
    if (!label)
        snprintf(buf, len, "%s", type);
    else if (!strcmp(type, "module"))
        snprintf(buf, len, "module %s", label_text(label, RS_SNAP_LABEL_MAX, text, sizeof(text)));
    else if (!strcmp(type, "str"))
        snprintf(buf, len, "str '%s'", label_text(label, 40, text, sizeof(text)));
    else
        snprintf(buf, len, "%s %s", type, label_text(label, RS_SNAP_LABEL_MAX, text, sizeof(text)));
    return buf;
}

const char *rs_snapshot_describe_edge(const struct rs_snapshot *s, uint32_t i, uint64_t e,
                                      char *buf, size_t len)
{
    const char *type = rs_snapshot_type_name(s, i);
    const char *key = rs_snapshot_edge_key(s, e);
    buf[0] = 0;
    char text[4 * RS_SNAP_LABEL_MAX + 8];
    if (key)
        snprintf(buf, len, "key '%s'", label_text(key, RS_SNAP_LABEL_MAX, text, sizeof(text)));
    else if (!strcmp(type, "list") || !strcmp(type, "tuple"))
        snprintf(buf, len, "index %llu", (unsigned long long)(e - s->edge_start[i]));
    else if (!strcmp(type, "dict"))
        snprintf(buf, len, (e - s->edge_start[i]) % 2 ? "value" : "key");
    return buf;
}

/* ---- one-pass trace reading --------------------------------------------------------- */

/* Start-up detection: import-time start-up ends with the first allocation
 * whose Python stack runs no import machinery and no frozen start-up code
 * (no frame in an importlib or "<frozen ...>" file), starts at module-level code
 * ("<module>", the main script) and has a function frame above it: the
 * program has finished importing and started calling its own code.
 * A class body is a frame above <module> too, but executing a class
 * statement still defines the program rather than running it (else the
 * script's own classes and functions would all look like leaks). The frame
 * data has no co_flags, so it is recognised by its place: in the script's
 * own file, below the <module> frame's current line (the body follows its
 * class statement), where a function called from module level was defined
 * above the call. */
static int stack_after_startup(struct rs_stacks *st, uint32_t id)
{
    const struct rs_frame *f;
    int n = rs_stacks_resolve(st, id, &f);
    int python = 0, function = 0;
    const struct rs_frame *outermost = NULL, *entry = NULL; /* entry: the frame <module> called */
    for (int i = 0; i < n; i++) {
        if (f[i].native)
            continue;
        python++;
        entry = outermost;
        outermost = &f[i];
        if (f[i].file && (strstr(f[i].file, "importlib") || !strncmp(f[i].file, "<frozen ", 8)))
            return 0; /* import machinery, or start-up code such as <frozen getpath> (3.11+) */
        if (f[i].function && strcmp(f[i].function, "<module>"))
            function = 1;
    }
    /* the main script's module-level code calling into a function (C code
     * calling Python during start-up, e.g. the codec search, has no
     * <module> frame below it) */
    if (python < 2 || !function || !outermost->function || strcmp(outermost->function, "<module>"))
        return 0;
    int class_body = entry->file && outermost->file && !strcmp(entry->file, outermost->file) &&
                     entry->line > outermost->line;
    return !class_body;
}

static int trace_load(const char *path, struct rs_snapshot_trace *t, char *err, size_t errlen)
{
    int rc = rs_trace_open(path, &t->trace, err, errlen);
    if (rc < 0)
        return rc;
    t->heap = rs_heap_new();
    t->stacks = rs_stacks_new();
    t->snaps = rs_snapshots_new();
    if (!t->heap || !t->stacks || !t->snaps) {
        snprintf(err, errlen, "%s: out of memory", path);
        rc = -ENOMEM;
        goto fail;
    }
    uint32_t checked_stack = 0;
    uint64_t finalize_ns = UINT64_MAX;
    struct rs_event ev;
    while ((rc = rs_trace_next(t->trace, &ev, err, errlen)) > 0) {
        if ((rc = rs_stacks_feed(t->stacks, &ev)) < 0 || (rc = rs_heap_apply(t->heap, &ev, NULL)) < 0 ||
            (rc = rs_snapshots_feed(t->snaps, &ev, t->heap)) < 0) {
            rs_trace_record_error(err, errlen, path, &ev, rc);
            goto fail;
        }
        if (ev.kind == RS_EV_ALLOC && t->startup_end_ns == UINT64_MAX && ev.stack &&
            ev.stack != checked_stack) {
            checked_stack = ev.stack;
            if (stack_after_startup(t->stacks, ev.stack))
                t->startup_end_ns = ev.time_ns;
        }
        if (ev.kind == RS_EV_GC_START && (ev.flags & RS_GC_F_SHUTDOWN) && finalize_ns == UINT64_MAX)
            finalize_ns = ev.time_ns;
        t->end_ns = ev.time_ns;
    }
    if (rc < 0)
        goto fail;
    t->run_end_ns = finalize_ns < t->end_ns ? finalize_ns : t->end_ns;
    size_t nsnaps = rs_snapshots_count(t->snaps);
    const struct rs_snapshot *last = nsnaps ? rs_snapshots_get(t->snaps, nsnaps - 1) : NULL;
    if (last && last->reason == RS_SNAP_REASON_EXIT && last->time_ns < t->run_end_ns)
        t->run_end_ns = last->time_ns;
    return 0;
fail:
    rs_snapshot_trace_close(t);
    return rc;
}

int rs_snapshot_trace_open(const char *cmd, const char *path, int site_depth,
                           struct rs_snapshot_trace *t)
{
    char err[512];
    memset(t, 0, sizeof(*t));
    t->startup_end_ns = UINT64_MAX;
    t->site_depth = site_depth;
    int rc = trace_load(path, t, err, sizeof(err));
    if (rc < 0)
        fprintf(stderr, "refscope %s: %s\n", cmd, err);
    return rc;
}

void rs_snapshot_trace_close(struct rs_snapshot_trace *t)
{
    rs_site_index_free(t->sites);
    if (t->snaps)
        rs_snapshots_free(t->snaps);
    if (t->stacks)
        rs_stacks_free(t->stacks);
    if (t->heap)
        rs_heap_free(t->heap);
    if (t->trace)
        rs_trace_close(t->trace);
    memset(t, 0, sizeof(*t));
}

int rs_snapshot_frames(struct rs_snapshot_trace *t, uint32_t stack, const struct rs_frame **frames)
{
    if (!stack)
        return 0;
    const struct rs_frame *f;
    int n = rs_stacks_resolve(t->stacks, stack, &f);
    *frames = f;
    return n;
}

#define SNAP_JSON_FRAMES 256

struct json_t *rs_snapshot_frames_json(struct rs_snapshot_trace *t, uint32_t stack)
{
    const struct rs_frame *frames[SNAP_JSON_FRAMES];
    json_t *arr = json_array();
    int n = rs_site_frames(t->stacks, stack, frames, SNAP_JSON_FRAMES);
    for (int i = 0; i < n; i++) {
        const struct rs_frame *f = frames[i];
        json_t *o = json_object();
        json_object_set_new(o, "function", json_string(f->function ? f->function : "??"));
        json_object_set_new(o, "file", f->file ? json_string(f->file) : json_null());
        json_object_set_new(o, "line", json_integer(f->line));
        json_object_set_new(o, "native", json_boolean(f->native));
        json_array_append_new(arr, o);
    }
    return arr;
}

/* ---- sites --------------------------------------------------------------------- */

int rs_snapshot_site(struct rs_snapshot_trace *t, uint32_t stack, uint32_t *site)
{
    *site = 0;
    if (!t->sites && !(t->sites = rs_site_index_new(t->stacks, t->site_depth)))
        return -ENOMEM;
    return rs_site_of(t->sites, stack, site);
}

const char *rs_snapshot_site_name(const struct rs_snapshot_trace *t, uint32_t site)
{
    return rs_site_name(t->sites, site);
}

const char *rs_snapshot_site_depth_text(const struct rs_snapshot_trace *t, char *buf, size_t len)
{
    return rs_site_depth_text(t->site_depth, buf, len);
}

const char *rs_snapshot_reason_name(uint8_t reason)
{
    static const char *const names[] = {"exit", "signal", "interval"};
    return reason < sizeof(names) / sizeof(names[0]) ? names[reason] : "?";
}

const char *rs_snapshot_delta_bytes_text(int64_t delta, char *buf, size_t len)
{
    char abs_text[32];
    uint64_t magnitude = delta < 0 ? (uint64_t)0 - (uint64_t)delta : (uint64_t)delta;
    snprintf(buf, len, "%c%s", delta < 0 ? '-' : '+', rs_units_bytes(magnitude, abs_text, sizeof(abs_text)));
    return buf;
}
