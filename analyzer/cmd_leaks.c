/*
 * `refscope leaks [--json] [--since SECONDS|import] [--snapshot N] [--limit N] TRACE`
 *
 * Leak candidates: objects alive in a heap snapshot (the last one — normally
 * the one taken at exit — or --snapshot N) whose memory was allocated after
 * warm-up, grouped by allocation site and type, ranked by bytes. Warm-up is
 * import-time start-up by default: it ends with the first allocation made by
 * the program's own code, i.e. from a Python stack that runs no import
 * machinery and is inside a function (see snapshot.c); `--since SECONDS`
 * counts from that many seconds after start instead (0 = everything).
 * For each top candidate, the shortest reference chain from a root (module
 * first, else an object referenced from outside the graph) to its oldest
 * object says why it is still alive.
 * Growth: sites whose live bytes grow steadily across snapshots (two or
 * more) or, always, across eight time windows of the heap replay, with the
 * least-squares slope in bytes per second.
 * Without any snapshot, candidates are the live blocks at the end of the
 * trace, grouped by site (type "(memory)"), without chains.
 */
#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "commands.h"
#include "cycles.h"
#include "heap.h"
#include "snapshot.h"

#define LEAK_WINDOWS 8

struct candidate {
    uint32_t stack;
    uint32_t type;          /* type index in the snapshot, RS_SNAP_NONE: plain memory */
    uint64_t count, bytes;
    uint32_t representative; /* object index (oldest) */
    uint64_t rep_ns;
};

struct growth {
    uint32_t stack;
    double slope;           /* bytes per second */
    uint64_t samples[LEAK_WINDOWS > 64 ? LEAK_WINDOWS : 64];
    int nsamples;
    const char *source;
};

/* ---- a small stack-keyed map ------------------------------------------------------- */

struct keymap {
    uint64_t *keys; /* key + 1; 0 = empty */
    uint32_t *vals;
    size_t cap, used;
};

static int keymap_get(struct keymap *m, uint64_t key, uint32_t *val, int insert, uint32_t newval)
{
    if (insert && (m->used + 1) * 2 > m->cap) {
        size_t cap = m->cap ? m->cap * 2 : 1024;
        uint64_t *k = calloc(cap, sizeof(uint64_t));
        uint32_t *v = malloc(cap * sizeof(uint32_t));
        if (!k || !v) {
            free(k);
            free(v);
            return -ENOMEM;
        }
        for (size_t i = 0; i < m->cap; i++) {
            if (!m->keys[i])
                continue;
            size_t j = (m->keys[i] * 0x9e3779b97f4a7c15ull >> 20) & (cap - 1);
            while (k[j])
                j = (j + 1) & (cap - 1);
            k[j] = m->keys[i];
            v[j] = m->vals[i];
        }
        free(m->keys);
        free(m->vals);
        m->keys = k;
        m->vals = v;
        m->cap = cap;
    }
    if (!m->cap)
        return 0;
    uint64_t k1 = key + 1;
    size_t j = (k1 * 0x9e3779b97f4a7c15ull >> 20) & (m->cap - 1);
    while (m->keys[j]) {
        if (m->keys[j] == k1) {
            *val = m->vals[j];
            return 1;
        }
        j = (j + 1) & (m->cap - 1);
    }
    if (!insert)
        return 0;
    m->keys[j] = k1;
    m->vals[j] = newval;
    m->used++;
    *val = newval;
    return 2;
}

static void keymap_free(struct keymap *m)
{
    free(m->keys);
    free(m->vals);
    memset(m, 0, sizeof(*m));
}

static int cmp_candidate(const void *a, const void *b)
{
    const struct candidate *x = a, *y = b;
    if (x->bytes != y->bytes)
        return x->bytes > y->bytes ? -1 : 1;
    return x->count > y->count ? -1 : x->count < y->count;
}

static int cmp_growth(const void *a, const void *b)
{
    const struct growth *x = a, *y = b;
    return x->slope > y->slope ? -1 : x->slope < y->slope;
}

/* ---- candidates -------------------------------------------------------------------- */

static int add_to(struct candidate **v, size_t *n, size_t *cap, struct keymap *m, uint32_t stack, uint32_t type,
                  uint64_t bytes, uint32_t obj, uint64_t ns)
{
    uint32_t idx;
    int r = keymap_get(m, (uint64_t)stack << 32 | type, &idx, 1, (uint32_t)*n);
    if (r < 0)
        return r;
    if (r == 2) {
        if (*n == *cap) {
            size_t c = *cap ? *cap * 2 : 256;
            struct candidate *nv = realloc(*v, c * sizeof(**v));
            if (!nv)
                return -ENOMEM;
            *v = nv;
            *cap = c;
        }
        (*v)[(*n)++] = (struct candidate){.stack = stack, .type = type, .representative = obj, .rep_ns = ns};
    }
    struct candidate *c = &(*v)[idx];
    c->count++;
    c->bytes += bytes;
    if (ns < c->rep_ns) {
        c->rep_ns = ns;
        c->representative = obj;
    }
    return 0;
}

struct block_ctx {
    struct candidate **v;
    size_t *n, *cap;
    struct keymap *m;
    uint64_t since;
    int rc;
};

static int block_candidate(const struct rs_block *b, void *arg)
{
    struct block_ctx *c = arg;
    if (b->alloc_ns < c->since)
        return 0;
    c->rc = add_to(c->v, c->n, c->cap, c->m, b->stack, RS_SNAP_NONE, b->size, RS_SNAP_NONE, b->alloc_ns);
    return c->rc < 0;
}

/* ---- growth ------------------------------------------------------------------------- */

static double slope_of(const double *x, const uint64_t *y, int n)
{
    double sx = 0, sy = 0, sxx = 0, sxy = 0;
    for (int i = 0; i < n; i++) {
        sx += x[i];
        sy += (double)y[i];
        sxx += x[i] * x[i];
        sxy += x[i] * (double)y[i];
    }
    double d = n * sxx - sx * sx;
    return d > 0 ? (n * sxy - sx * sy) / d : 0;
}

/* Steady growth: never shrinks by more than 10% between samples, and grows
 * from the first to the last sample. */
static int steady(const uint64_t *y, int n)
{
    if (n < 2 || y[n - 1] <= y[0] || y[n - 1] < 4096)
        return 0;
    for (int i = 1; i < n; i++)
        if ((double)y[i] < 0.9 * (double)y[i - 1])
            return 0;
    return 1;
}

struct window_ctx {
    struct keymap *m;
    uint64_t **rows;  /* per site: LEAK_WINDOWS samples */
    uint32_t **stacks;
    size_t *n, *cap;
    int w;
    int rc;
};

static int window_sample(const struct rs_block *b, void *arg)
{
    struct window_ctx *c = arg;
    uint32_t idx;
    int r = keymap_get(c->m, b->stack, &idx, 1, (uint32_t)*c->n);
    if (r < 0) {
        c->rc = r;
        return 1;
    }
    if (r == 2) {
        if (*c->n == *c->cap) {
            size_t cap = *c->cap ? *c->cap * 2 : 256;
            uint64_t *rows = realloc(*c->rows, cap * LEAK_WINDOWS * sizeof(uint64_t));
            if (!rows) {
                c->rc = -ENOMEM;
                return 1;
            }
            *c->rows = rows;
            uint32_t *st = realloc(*c->stacks, cap * sizeof(uint32_t));
            if (!st) {
                c->rc = -ENOMEM;
                return 1;
            }
            *c->stacks = st;
            *c->cap = cap;
        }
        memset(*c->rows + idx * LEAK_WINDOWS, 0, LEAK_WINDOWS * sizeof(uint64_t));
        (*c->stacks)[idx] = b->stack;
        (*c->n)++;
    }
    (*c->rows)[idx * LEAK_WINDOWS + c->w] += b->size;
    return 0;
}

/* Second pass over the trace: live bytes per site at the end of each of
 * LEAK_WINDOWS equal time windows. */
static int window_growth(struct rs_snapshot_trace *t, struct growth **out, size_t *nout, char *err, size_t errlen)
{
    struct keymap m = {0};
    uint64_t *rows = NULL;
    uint32_t *stacks = NULL;
    size_t n = 0, cap = 0;
    struct rs_heap *h = rs_heap_new();
    int rc = -ENOMEM;
    if (!h)
        goto out;
    if ((rc = rs_trace_rewind(t->trace, err, errlen)) < 0)
        goto out;
    uint64_t end = t->end_ns ? t->end_ns : 1;
    int w = 0;
    struct rs_event ev;
    struct window_ctx c = {&m, &rows, &stacks, &n, &cap, 0, 0};
    while ((rc = rs_trace_next(t->trace, &ev, err, errlen)) > 0) {
        while (w < LEAK_WINDOWS - 1 && ev.time_ns > end * (uint64_t)(w + 1) / LEAK_WINDOWS) {
            c.w = w++;
            rs_heap_foreach(h, 0, window_sample, &c);
            if (c.rc < 0) {
                rc = c.rc;
                goto out;
            }
        }
        if ((rc = rs_heap_apply(h, &ev, NULL)) < 0)
            goto out;
    }
    if (rc < 0)
        goto out;
    while (w < LEAK_WINDOWS) {
        c.w = w++;
        rs_heap_foreach(h, 0, window_sample, &c);
        if (c.rc < 0) {
            rc = c.rc;
            goto out;
        }
    }
    double x[LEAK_WINDOWS];
    for (int i = 0; i < LEAK_WINDOWS; i++)
        x[i] = (double)end * (i + 1) / LEAK_WINDOWS / 1e9;
    for (size_t i = 0; i < n; i++) {
        uint64_t *y = rows + i * LEAK_WINDOWS;
        if (!stacks[i] || !steady(y, LEAK_WINDOWS))
            continue;
        struct growth *g = realloc(*out, (*nout + 1) * sizeof(**out));
        if (!g) {
            rc = -ENOMEM;
            goto out;
        }
        *out = g;
        g = &(*out)[(*nout)++];
        memset(g, 0, sizeof(*g));
        g->stack = stacks[i];
        g->nsamples = LEAK_WINDOWS;
        memcpy(g->samples, y, LEAK_WINDOWS * sizeof(uint64_t));
        g->slope = slope_of(x, y, LEAK_WINDOWS);
        g->source = "windows";
    }
    rc = 0;
out:
    if (h)
        rs_heap_free(h);
    keymap_free(&m);
    free(rows);
    free(stacks);
    return rc;
}

static int snapshot_growth(struct rs_snapshot_trace *t, struct growth **out, size_t *nout)
{
    size_t ns = rs_snapshots_count(t->snaps);
    if (ns < 2)
        return 0;
    if (ns > 64)
        ns = 64;
    struct keymap m = {0};
    uint64_t *rows = NULL;
    uint32_t *stacks = NULL;
    size_t n = 0, cap = 0;
    int rc = -ENOMEM;
    double x[64];
    for (size_t k = 0; k < ns; k++) {
        const struct rs_snapshot *s = rs_snapshots_get(t->snaps, k);
        x[k] = s->time_ns / 1e9;
        for (size_t i = 0; i < s->nobjs; i++) {
            const struct rs_snap_object *o = &s->objs[i];
            if (!o->has_block || !o->stack)
                continue;
            uint32_t idx;
            int r = keymap_get(&m, o->stack, &idx, 1, (uint32_t)n);
            if (r < 0)
                goto out;
            if (r == 2) {
                if (n == cap) {
                    size_t c = cap ? cap * 2 : 256;
                    uint64_t *nr = realloc(rows, c * 64 * sizeof(uint64_t));
                    if (!nr)
                        goto out;
                    rows = nr;
                    uint32_t *st = realloc(stacks, c * sizeof(uint32_t));
                    if (!st)
                        goto out;
                    stacks = st;
                    cap = c;
                }
                memset(rows + idx * 64, 0, 64 * sizeof(uint64_t));
                stacks[idx] = o->stack;
                n++;
            }
            rows[idx * 64 + k] += o->size;
        }
    }
    for (size_t i = 0; i < n; i++) {
        uint64_t *y = rows + i * 64;
        if (!steady(y, (int)ns))
            continue;
        struct growth *g = realloc(*out, (*nout + 1) * sizeof(**out));
        if (!g)
            goto out;
        *out = g;
        g = &(*out)[(*nout)++];
        memset(g, 0, sizeof(*g));
        g->stack = stacks[i];
        g->nsamples = (int)ns;
        memcpy(g->samples, y, ns * sizeof(uint64_t));
        g->slope = slope_of(x, y, (int)ns);
        g->source = "snapshots";
    }
    rc = 0;
out:
    keymap_free(&m);
    free(rows);
    free(stacks);
    return rc;
}

/* ---- the command ------------------------------------------------------------------- */

int cmd_leaks(int argc, char **argv)
{
    int json = 0, want = -1, limit = 10;
    const char *since_arg = "import";
    static const struct option longopts[] = {
        {"json", no_argument, NULL, 'j'},
        {"since", required_argument, NULL, 'S'},
        {"snapshot", required_argument, NULL, 's'},
        {"limit", required_argument, NULL, 'n'},
        {NULL, 0, NULL, 0},
    };
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "jS:s:n:", longopts, NULL)) != -1) {
        if (c == 'j')
            json = 1;
        else if (c == 'S')
            since_arg = optarg;
        else if (c == 's')
            want = atoi(optarg);
        else if (c == 'n')
            limit = atoi(optarg);
        else
            return 2;
    }
    char *endp = NULL;
    double since_s = strcmp(since_arg, "import") ? strtod(since_arg, &endp) : 0;
    if (optind + 1 != argc || limit <= 0 || (endp && (*endp || since_s < 0))) {
        fprintf(stderr, "usage: refscope leaks [--json] [--since SECONDS|import] [--snapshot N] [--limit N] TRACE\n");
        return 2;
    }
    const char *path = argv[optind];
    struct rs_snapshot_trace t;
    char err[512];
    if (rs_snapshot_trace_open(path, &t, err, sizeof(err)) < 0) {
        fprintf(stderr, "refscope leaks: %s\n", err);
        return 1;
    }
    int status = 1;
    struct candidate *cands = NULL;
    size_t ncand = 0, capcand = 0;
    struct keymap m = {0};
    struct growth *growth = NULL;
    size_t ngrowth = 0;
    struct rs_chain_tree tree = {0};
    uint64_t since = endp ? (uint64_t)(since_s * 1e9) : (t.startup_end_ns == UINT64_MAX ? 0 : t.startup_end_ns);

    size_t count = rs_snapshots_count(t.snaps);
    const struct rs_snapshot *s = NULL;
    if (want >= 0) {
        s = rs_snapshots_find(t.snaps, (uint32_t)want);
        if (!s) {
            fprintf(stderr, "refscope leaks: %s: no snapshot numbered %d\n", path, want);
            goto out;
        }
    } else if (count) {
        s = rs_snapshots_get(t.snaps, count - 1);
    }
    if (s) {
        for (size_t i = 0; i < s->nobjs; i++) {
            const struct rs_snap_object *o = &s->objs[i];
            if (!o->has_block || o->alloc_ns < since || (o->flags & RS_SNAP_OBJ_IMMORTAL))
                continue;
            if (add_to(&cands, &ncand, &capcand, &m, o->stack, o->type, o->size, (uint32_t)i, o->alloc_ns) < 0)
                goto oom;
        }
        if (rs_chain_tree_build(s, &tree) < 0)
            goto oom;
    } else {
        struct block_ctx bc = {&cands, &ncand, &capcand, &m, since, 0};
        rs_heap_foreach(t.heap, 0, block_candidate, &bc);
        if (bc.rc < 0)
            goto oom;
    }
    qsort(cands, ncand, sizeof(*cands), cmp_candidate);
    if (snapshot_growth(&t, &growth, &ngrowth) < 0 || window_growth(&t, &growth, &ngrowth, err, sizeof(err)) < 0)
        goto oom;
    qsort(growth, ngrowth, sizeof(*growth), cmp_growth);

    size_t shown = ncand < (size_t)limit ? ncand : (size_t)limit;
    size_t gshown = ngrowth < (size_t)limit ? ngrowth : (size_t)limit;
    static char chain[1 << 16];
    if (json) {
        json_t *root = json_object(), *arr = json_array(), *garr = json_array();
        json_object_set_new(root, "trace", json_string(path));
        json_object_set_new(root, "snapshot", s ? json_integer(s->seq) : json_null());
        json_object_set_new(root, "since_ns", json_integer((json_int_t)since));
        json_object_set_new(root, "startup_end_ns",
                            t.startup_end_ns == UINT64_MAX ? json_null() : json_integer((json_int_t)t.startup_end_ns));
        json_object_set_new(root, "total_candidates", json_integer((json_int_t)ncand));
        for (size_t k = 0; k < shown; k++) {
            const struct candidate *cd = &cands[k];
            json_t *o = json_object(), *ch = json_array();
            char site[512];
            json_object_set_new(o, "frames", rs_snapshot_frames_json(&t, cd->stack));
            json_object_set_new(o, "site", json_string(rs_snapshot_site_text(&t, cd->stack, site, sizeof(site))));
            json_object_set_new(o, "type", json_string(cd->type == RS_SNAP_NONE ? "(memory)"
                                                       : s->types[cd->type].name));
            json_object_set_new(o, "count", json_integer((json_int_t)cd->count));
            json_object_set_new(o, "bytes", json_integer((json_int_t)cd->bytes));
            if (s && cd->representative != RS_SNAP_NONE) {
                char addr[32];
                snprintf(addr, sizeof(addr), "0x%llx", (unsigned long long)s->objs[cd->representative].addr);
                json_object_set_new(o, "representative", json_string(addr));
                int steps = rs_chain_steps(s, &tree, cd->representative, chain, sizeof(chain));
                const char *p = chain;
                for (int i = 0; i < steps; i++, p += strlen(p) + 1)
                    json_array_append_new(ch, json_string(p));
            }
            json_object_set_new(o, "chain", ch);
            json_array_append_new(arr, o);
        }
        for (size_t k = 0; k < gshown; k++) {
            const struct growth *g = &growth[k];
            json_t *o = json_object(), *smp = json_array();
            char site[512];
            json_object_set_new(o, "frames", rs_snapshot_frames_json(&t, g->stack));
            json_object_set_new(o, "site", json_string(rs_snapshot_site_text(&t, g->stack, site, sizeof(site))));
            json_object_set_new(o, "source", json_string(g->source));
            json_object_set_new(o, "slope_bytes_per_s", json_real(g->slope));
            for (int i = 0; i < g->nsamples; i++)
                json_array_append_new(smp, json_integer((json_int_t)g->samples[i]));
            json_object_set_new(o, "live_bytes", smp);
            json_array_append_new(garr, o);
        }
        json_object_set_new(root, "candidates", arr);
        json_object_set_new(root, "growth", garr);
        json_dumpf(root, stdout, JSON_INDENT(2));
        putchar('\n');
        json_decref(root);
    } else {
        char b[32];
        if (s)
            printf("leak candidates in snapshot %u (%zu objects), allocated after %.3f s (%s)\n", s->seq, s->nobjs,
                   since / 1e9, endp ? "--since" : "end of import-time start-up");
        else
            printf("no heap snapshot in this trace: live blocks at the end, allocated after %.3f s\n", since / 1e9);
        if (!shown)
            printf("  none\n");
        for (size_t k = 0; k < shown; k++) {
            const struct candidate *cd = &cands[k];
            char site[512];
            printf("\n#%zu %s in %llu %s object%s at %s\n", k + 1, rs_snapshot_bytes_text(cd->bytes, b, sizeof(b)),
                   (unsigned long long)cd->count, cd->type == RS_SNAP_NONE ? "(memory)" : s->types[cd->type].name,
                   cd->count == 1 ? "" : "s", rs_snapshot_site_text(&t, cd->stack, site, sizeof(site)));
            if (s && cd->representative != RS_SNAP_NONE) {
                int steps = rs_chain_steps(s, &tree, cd->representative, chain, sizeof(chain));
                const char *p = chain;
                printf("   alive because: ");
                if (!steps)
                    printf("(no chain from a root)");
                for (int i = 0; i < steps; i++, p += strlen(p) + 1)
                    printf("%s%s", i ? " -> " : "", p);
                printf("\n");
            }
        }
        if (gshown)
            printf("\ngrowing sites:\n");
        for (size_t k = 0; k < gshown; k++) {
            char site[512];
            printf("  %+.0f B/s over %d %s  %s\n", growth[k].slope, growth[k].nsamples, growth[k].source,
                   rs_snapshot_site_text(&t, growth[k].stack, site, sizeof(site)));
        }
    }
    status = 0;
    goto out;
oom:
    fprintf(stderr, "refscope leaks: out of memory or unreadable trace\n");
out:
    rs_chain_tree_free(&tree);
    keymap_free(&m);
    free(cands);
    free(growth);
    rs_snapshot_trace_close(&t);
    return status;
}
