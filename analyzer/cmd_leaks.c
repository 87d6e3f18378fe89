/*
 * `refscope leaks [--json] [--since SECONDS|import] [--snapshot N] [--limit N] [--depth N] TRACE`
 *
 * Leak candidates: objects still alive — reachable from a root — in a heap
 * snapshot (the last one, normally taken at exit, or --snapshot N) whose
 * memory was allocated after warm-up, grouped by type and allocation site
 * exactly as the report prints them (rs_snapshot_site: the innermost Python
 * frame, or --depth N frames, 0 = the whole stack), ranked by bytes.
 * Warm-up is import-time start-up by default: it ends with the first
 * allocation made by the program's own code, i.e. from a Python stack that
 * runs no import machinery and is inside a function (see snapshot.c);
 * `--since SECONDS` counts from that many seconds after start instead
 * (0 = everything).
 * Unreachable objects (cyclic garbage the collector has not freed yet, or
 * uncollectable in gc.garbage) and what only they keep alive are not leak
 * candidates: the program cannot reach them any more. They are the business
 * of `refscope cycles`; this report sums them up in a few lines.
 * For each candidate shown, the shortest reference chain from a root
 * (module first, else an object referenced from outside the graph) to its
 * oldest object says why it is still alive; cycles.h guarantees a chain for
 * every alive object.
 * Growth: sites whose live bytes grow steadily across snapshots (two or
 * more) or, always, across eight time windows of the heap replay, with the
 * least-squares slope in bytes per second.
 * Without any snapshot, candidates are the live blocks at the end of the
 * trace, grouped by site (type "(memory)"), without chains.
 *
 * The report is built once into struct leak_report; the text and JSON
 * renderers only read it.
 */
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "commands.h"
#include "cycles.h"
#include "grow.h"
#include "heap.h"
#include "snapshot.h"
#include "u64map.h"
#include "units.h"

#define LEAK_WINDOWS 8
#define LEAK_MAX_SAMPLES 64       /* snapshots used for growth (the first ones) */
#define LEAK_UNREACHABLE_TYPES 3  /* types named in the unreachable summary */
#define LEAK_CHAIN_BYTES (1 << 16)

/* ---- the model --------------------------------------------------------------------- */

/* Bytes per site, one row of nsamples per site: live bytes over time for
 * growth; alive and not alive bytes in the report's snapshot. */
struct site_series {
    struct u64map m;         /* site -> row                                  */
    uint64_t *rows;
    uint32_t *sites, *stacks;
    size_t n, cap;
    int nsamples;
};

/* One candidate: the objects of one type allocated at one site. */
struct leak_row {
    uint32_t site;           /* rs_snapshot_site id                          */
    uint32_t type;           /* canonical type index, RS_SNAP_NONE: plain memory */
    uint32_t stack;          /* the representative's stack (JSON frames)     */
    uint32_t representative; /* its oldest object, RS_SNAP_NONE without snapshot */
    uint64_t rep_ns;
    uint64_t count, bytes;
    char *chain;             /* rows shown: NUL-separated steps from a root  */
    int chain_steps;
};

struct leak_growth {
    uint32_t site, stack;
    double slope;            /* bytes per second                             */
    uint64_t samples[LEAK_MAX_SAMPLES];
    double times[LEAK_MAX_SAMPLES]; /* seconds since start, per sample      */
    int nsamples;
    const char *source;      /* "snapshots" or "windows"                     */
    double unreachable_share; /* windows: share of the site's bytes in the
                                report's snapshot that is unreachable or held
                                by unreachable objects; -1 unknown           */
    int garbage;             /* mostly unreachable: growing garbage, not a leak */
};

struct leak_type_total {
    uint32_t type;
    uint64_t count, bytes;
};

struct leak_report {
    const char *path;
    struct rs_snapshot_trace *t;
    const struct rs_snapshot *snap;  /* NULL: blocks live at run_end_ns     */
    uint64_t since;
    int since_given;                 /* --since, else end of start-up      */
    size_t limit;
    uint32_t *type_canon;            /* type index -> first index with its name */

    struct leak_row *rows;           /* ranked, largest first               */
    size_t nrows, rows_cap;
    uint64_t objects, bytes;         /* over all rows                       */

    struct rs_cycles cycles;         /* snapshot only: liveness and groups  */
    size_t uncollectable_groups;
    struct leak_type_total unreachable_types[LEAK_UNREACHABLE_TYPES];
    size_t nunreachable_types;
    struct rs_chain_tree tree;
    struct site_series by_liveness;  /* per site: [0] alive, [1] not alive bytes */

    struct leak_growth *growth;      /* steepest first                      */
    size_t ngrowth;
};

/* ---- types ------------------------------------------------------------------------- */

static const struct rs_snapshot *sort_snap; /* qsort has no context argument */

static const char *type_name_of(const struct rs_snapshot *s, uint32_t type)
{
    return s->types[type].name ? s->types[type].name : "?";
}

static int cmp_type_name(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    int c = strcmp(type_name_of(sort_snap, x), type_name_of(sort_snap, y));
    return c ? c : (x > y) - (x < y);
}

/* Two type objects with one name (a class defined twice, two modules'
 * `Node`) print the same, so they count as one type here. */
static int canon_types(struct leak_report *r)
{
    const struct rs_snapshot *s = r->snap;
    size_t n = s->ntypes;
    uint32_t *order = malloc((n ? n : 1) * sizeof(uint32_t));
    r->type_canon = malloc((n ? n : 1) * sizeof(uint32_t));
    if (!order || !r->type_canon) {
        free(order);
        return -ENOMEM;
    }
    for (size_t i = 0; i < n; i++)
        order[i] = (uint32_t)i;
    sort_snap = s;
    rs_sort(order, n, sizeof(uint32_t), cmp_type_name);
    for (size_t i = 0; i < n; i++) {
        int same = i && !strcmp(type_name_of(s, order[i - 1]), type_name_of(s, order[i]));
        r->type_canon[order[i]] = same ? r->type_canon[order[i - 1]] : order[i];
    }
    free(order);
    return 0;
}

/* "(memory)" for blocks without a snapshot, "?" for objects of a type the
 * snapshot did not name. */
static const char *type_text(const struct leak_report *r, uint32_t type)
{
    if (!r->snap)
        return "(memory)";
    return type < r->snap->ntypes ? type_name_of(r->snap, type) : "?";
}

/* ---- bytes per site ------------------------------------------------------------------ */

static int series_add(struct rs_snapshot_trace *t, struct site_series *ss, uint32_t stack, int sample,
                      uint64_t bytes)
{
    uint32_t site;
    uint64_t *slot;
    int rc = rs_snapshot_site(t, stack, &site);
    if (rc < 0)
        return rc;
    if (!site)
        return 0; /* no site to point at */
    if ((rc = u64map_insert(&ss->m, site, ss->n, &slot)) < 0)
        return rc;
    size_t idx = *slot;
    if (rc == 1) {
        if (ss->n == ss->cap) {
            size_t cap = ss->cap ? ss->cap * 2 : 256;
            uint64_t *rows = realloc(ss->rows, cap * ss->nsamples * sizeof(uint64_t));
            if (rows)
                ss->rows = rows;
            uint32_t *si = realloc(ss->sites, cap * sizeof(uint32_t));
            if (si)
                ss->sites = si;
            uint32_t *st = realloc(ss->stacks, cap * sizeof(uint32_t));
            if (st)
                ss->stacks = st;
            if (!rows || !si || !st)
                return -ENOMEM;
            ss->cap = cap;
        }
        memset(ss->rows + (size_t)idx * ss->nsamples, 0, ss->nsamples * sizeof(uint64_t));
        ss->sites[idx] = site;
        ss->stacks[idx] = stack;
        ss->n++;
    }
    ss->rows[(size_t)idx * ss->nsamples + sample] += bytes;
    return 0;
}

static void series_free(struct site_series *ss)
{
    u64map_free(&ss->m);
    free(ss->rows);
    free(ss->sites);
    free(ss->stacks);
}

/* ---- candidates -------------------------------------------------------------------- */

static int add_object(struct leak_report *r, struct u64map *m, uint32_t stack, uint32_t type, uint64_t bytes,
                      uint32_t obj, uint64_t ns)
{
    uint32_t site;
    uint64_t *slot;
    int rc = rs_snapshot_site(r->t, stack, &site);
    if (rc < 0)
        return rc;
    if ((rc = u64map_insert(m, (uint64_t)site << 32 | type, r->nrows, &slot)) < 0)
        return rc;
    size_t idx = *slot;
    if (rc == 1) {
        if (r->nrows == r->rows_cap) {
            size_t c = r->rows_cap ? r->rows_cap * 2 : 256;
            struct leak_row *v = realloc(r->rows, c * sizeof(*v));
            if (!v)
                return -ENOMEM;
            r->rows = v;
            r->rows_cap = c;
        }
        r->rows[r->nrows++] = (struct leak_row){.site = site, .type = type, .stack = stack,
                                                .representative = obj, .rep_ns = ns};
    }
    struct leak_row *row = &r->rows[idx];
    row->count++;
    row->bytes += bytes;
    r->objects++;
    r->bytes += bytes;
    if (ns < row->rep_ns) {
        row->rep_ns = ns;
        row->representative = obj;
        row->stack = stack;
    }
    return 0;
}

struct block_ctx {
    struct leak_report *r;
    struct u64map *m;
    int rc;
};

static int block_candidate(const struct rs_block *b, void *arg)
{
    struct block_ctx *c = arg;
    if (b->alloc_ns < c->r->since)
        return 0;
    c->rc = add_object(c->r, c->m, b->stack, RS_SNAP_NONE, b->size, RS_SNAP_NONE, b->alloc_ns);
    return c->rc < 0;
}

static int cmp_row(const void *a, const void *b)
{
    const struct leak_row *x = a, *y = b;
    if (x->bytes != y->bytes)
        return x->bytes > y->bytes ? -1 : 1;
    if (x->count != y->count)
        return x->count > y->count ? -1 : 1;
    if (x->site != y->site)
        return x->site < y->site ? -1 : 1;
    return (x->type > y->type) - (x->type < y->type);
}

static int cmp_type_total(const void *a, const void *b)
{
    const struct leak_type_total *x = a, *y = b;
    if (x->bytes != y->bytes)
        return x->bytes > y->bytes ? -1 : 1;
    return (x->type > y->type) - (x->type < y->type);
}

/* Candidates from the snapshot: alive objects only; the unreachable ones
 * (and what they hold) are summed up by type for their short section. */
static int snapshot_candidates(struct leak_report *r)
{
    const struct rs_snapshot *s = r->snap;
    struct u64map m = U64MAP_INIT;
    struct leak_type_total *by_type = NULL;
    int rc;
    if ((rc = canon_types(r)) < 0 || (rc = rs_cycles_find(s, &r->cycles)) < 0 ||
        (rc = rs_chain_tree_build(s, &r->tree)) < 0)
        goto out;
    rc = -ENOMEM;
    if (!(by_type = calloc(s->ntypes + 1, sizeof(*by_type))))
        goto out;
    r->by_liveness.nsamples = 2;
    for (size_t i = 0; i < s->nobjs; i++) {
        const struct rs_snap_object *o = &s->objs[i];
        uint32_t type = o->type < s->ntypes ? r->type_canon[o->type] : RS_SNAP_NONE;
        if (o->has_block && o->stack &&
            (rc = series_add(r->t, &r->by_liveness, o->stack, r->cycles.state[i] != RS_LIVE_ALIVE, o->size)) < 0)
            goto out;
        if (r->cycles.state[i] != RS_LIVE_ALIVE) {
            struct leak_type_total *tt = &by_type[type == RS_SNAP_NONE ? s->ntypes : type];
            tt->type = type == RS_SNAP_NONE ? (uint32_t)s->ntypes : type;
            tt->count++;
            tt->bytes += o->size;
            continue;
        }
        if (!o->has_block || o->alloc_ns < r->since || (o->flags & RS_SNAP_OBJ_IMMORTAL))
            continue;
        if ((rc = add_object(r, &m, o->stack, type, o->size, (uint32_t)i, o->alloc_ns)) < 0)
            goto out;
    }
    rs_sort(by_type, s->ntypes + 1, sizeof(*by_type), cmp_type_total);
    for (size_t k = 0; k < LEAK_UNREACHABLE_TYPES && k <= s->ntypes && by_type[k].count; k++)
        r->unreachable_types[r->nunreachable_types++] = by_type[k];
    for (size_t g = 0; g < r->cycles.n; g++)
        r->uncollectable_groups += r->cycles.groups[g].uncollectable != 0;
    rc = 0;
out:
    u64map_free(&m);
    free(by_type);
    return rc;
}

/* Chains for the rows that will be shown. */
static int chain_rows(struct leak_report *r)
{
    for (size_t k = 0; k < r->nrows && k < r->limit; k++) {
        struct leak_row *row = &r->rows[k];
        if (!r->snap || row->representative == RS_SNAP_NONE)
            continue;
        if (!(row->chain = malloc(LEAK_CHAIN_BYTES)))
            return -ENOMEM;
        row->chain_steps = rs_chain_steps(r->snap, &r->tree, row->representative, row->chain, LEAK_CHAIN_BYTES);
    }
    return 0;
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
 * from the first to the last sample by at least 4 KiB and a tenth of what
 * the site ends with (a lazy import adding a little to the import sites'
 * big, stable total is not growth anyone hunts). */
static int steady(const uint64_t *y, int n)
{
    if (n < 2 || y[n - 1] <= y[0] || y[n - 1] - y[0] < 4096 || y[n - 1] - y[0] < y[n - 1] / 10)
        return 0;
    for (int i = 1; i < n; i++)
        if ((double)y[i] < 0.9 * (double)y[i - 1])
            return 0;
    return 1;
}

/* Keeps the steadily growing sites of a series. Sites already found growing
 * by an earlier source are skipped: one line per site. */
static int series_growth(struct leak_report *r, struct site_series *ss, const double *x, const char *source)
{
    size_t before = r->ngrowth;
    for (size_t i = 0; i < ss->n; i++) {
        const uint64_t *y = ss->rows + i * ss->nsamples;
        if (!steady(y, ss->nsamples))
            continue;
        int dup = 0;
        for (size_t k = 0; k < before && !dup; k++)
            dup = r->growth[k].site == ss->sites[i];
        if (dup)
            continue;
        struct leak_growth *g = realloc(r->growth, (r->ngrowth + 1) * sizeof(*g));
        if (!g)
            return -ENOMEM;
        r->growth = g;
        g = &r->growth[r->ngrowth++];
        memset(g, 0, sizeof(*g));
        g->site = ss->sites[i];
        g->stack = ss->stacks[i];
        g->nsamples = ss->nsamples;
        memcpy(g->samples, y, ss->nsamples * sizeof(uint64_t));
        memcpy(g->times, x, ss->nsamples * sizeof(double));
        g->slope = slope_of(x, y, ss->nsamples);
        g->source = source;
        g->unreachable_share = -1;
        const uint64_t *idx = u64map_get(&r->by_liveness.m, g->site);
        if (!strcmp(source, "windows") && idx) {
            const uint64_t *row = r->by_liveness.rows + (size_t)*idx * 2;
            g->unreachable_share = row[0] + row[1] ? (double)row[1] / (double)(row[0] + row[1]) : 0;
            g->garbage = g->unreachable_share >= 0.5;
        }
    }
    return 0;
}

/* Alive objects only, as the candidates: garbage piling up while the
 * collector is disabled or behind grows too, but it is not a leak. */
static int snapshot_growth(struct leak_report *r)
{
    size_t ns = rs_snapshots_count(r->t->snaps);
    if (ns < 2)
        return 0;
    if (ns > LEAK_MAX_SAMPLES)
        ns = LEAK_MAX_SAMPLES;
    struct site_series ss = {.nsamples = (int)ns};
    double x[LEAK_MAX_SAMPLES];
    uint8_t *state = NULL;
    int rc = 0;
    for (size_t k = 0; k < ns && rc >= 0; k++) {
        const struct rs_snapshot *s = rs_snapshots_get(r->t->snaps, k);
        x[k] = s->time_ns / 1e9;
        free(state);
        if (!(state = malloc(s->nobjs ? s->nobjs : 1))) {
            rc = -ENOMEM;
            break;
        }
        long dead = rs_cycles_liveness(s, state, NULL);
        if (dead < 0) {
            rc = (int)dead;
            break;
        }
        for (size_t i = 0; i < s->nobjs && rc >= 0; i++) {
            const struct rs_snap_object *o = &s->objs[i];
            if (o->has_block && o->stack && state[i] == RS_LIVE_ALIVE)
                rc = series_add(r->t, &ss, o->stack, (int)k, o->size);
        }
    }
    if (rc >= 0)
        rc = series_growth(r, &ss, x, "snapshots");
    free(state);
    series_free(&ss);
    return rc;
}

struct window_ctx {
    struct rs_snapshot_trace *t;
    struct site_series *ss;
    int w;
    int rc;
};

static int window_sample(const struct rs_block *b, void *arg)
{
    struct window_ctx *c = arg;
    if (!b->stack)
        return 0;
    c->rc = series_add(c->t, c->ss, b->stack, c->w, b->size);
    return c->rc < 0;
}

/* Second pass over the trace: live bytes per site at the end of each of
 * LEAK_WINDOWS equal time windows of the program's own run, from warm-up
 * (imports only ever add) to run_end_ns (teardown, which frees everything,
 * would hide any growth). */
static int window_growth(struct leak_report *r, char *err, size_t errlen)
{
    struct rs_snapshot_trace *t = r->t;
    struct site_series ss = {.nsamples = LEAK_WINDOWS};
    struct rs_heap *h = rs_heap_new();
    int rc = -ENOMEM;
    if (!h)
        goto out;
    if ((rc = rs_trace_rewind(t->trace, err, errlen)) < 0)
        goto out;
    uint64_t end = t->run_end_ns ? t->run_end_ns : 1;
    uint64_t start = r->since < end ? r->since : 0, span = end - start;
    int w = 0;
    struct rs_event ev;
    struct window_ctx c = {t, &ss, 0, 0};
    while ((rc = rs_trace_next(t->trace, &ev, err, errlen)) > 0) {
        if (ev.time_ns > end)
            break;
        while (w < LEAK_WINDOWS - 1 && ev.time_ns > start + span * (uint64_t)(w + 1) / LEAK_WINDOWS) {
            c.w = w++;
            rs_heap_foreach(h, 0, window_sample, &c);
            if ((rc = c.rc) < 0)
                goto out;
        }
        if ((rc = rs_heap_apply(h, &ev, NULL)) < 0)
            goto out;
    }
    if (rc < 0)
        goto out;
    while (w < LEAK_WINDOWS) {
        c.w = w++;
        rs_heap_foreach(h, 0, window_sample, &c);
        if ((rc = c.rc) < 0)
            goto out;
    }
    double x[LEAK_WINDOWS];
    for (int i = 0; i < LEAK_WINDOWS; i++)
        x[i] = ((double)start + (double)span * (i + 1) / LEAK_WINDOWS) / 1e9;
    rc = series_growth(r, &ss, x, "windows");
out:
    if (h)
        rs_heap_free(h);
    series_free(&ss);
    return rc;
}

static int cmp_growth(const void *a, const void *b)
{
    const struct leak_growth *x = a, *y = b;
    if (x->slope != y->slope)
        return x->slope > y->slope ? -1 : 1;
    return (x->site > y->site) - (x->site < y->site);
}

/* ---- building the report ------------------------------------------------------------ */

/* Without a snapshot: the blocks live when the program's own run ended
 * (run_end_ns), from one more replay; t->heap is the end of the trace,
 * where teardown has freed what the program left behind, leaks included. */
static int block_candidates(struct leak_report *r, char *err, size_t errlen)
{
    struct u64map m = U64MAP_INIT;
    struct block_ctx bc = {r, &m, 0};
    struct rs_heap *h = rs_heap_new();
    struct rs_event ev;
    int rc = -ENOMEM;
    if (!h || (rc = rs_trace_rewind(r->t->trace, err, errlen)) < 0)
        goto out;
    while ((rc = rs_trace_next(r->t->trace, &ev, err, errlen)) > 0 && ev.time_ns <= r->t->run_end_ns)
        if ((rc = rs_heap_apply(h, &ev, NULL)) < 0)
            goto out;
    if (rc < 0)
        goto out;
    rs_heap_foreach(h, 0, block_candidate, &bc);
    rc = bc.rc;
out:
    if (h)
        rs_heap_free(h);
    u64map_free(&m);
    return rc;
}

static int report_build(struct leak_report *r, char *err, size_t errlen)
{
    int rc = r->snap ? snapshot_candidates(r) : block_candidates(r, err, errlen);
    if (rc < 0)
        goto fail;
    rs_sort(r->rows, r->nrows, sizeof(*r->rows), cmp_row);
    if ((rc = chain_rows(r)) < 0 || (rc = snapshot_growth(r)) < 0 || (rc = window_growth(r, err, errlen)) < 0)
        goto fail;
    rs_sort(r->growth, r->ngrowth, sizeof(*r->growth), cmp_growth);
    return 0;
fail:
    if (rc == -ENOMEM) /* the trace functions say what else went wrong */
        snprintf(err, errlen, "out of memory");
    return rc;
}

static void report_free(struct leak_report *r)
{
    for (size_t k = 0; k < r->nrows; k++)
        free(r->rows[k].chain);
    free(r->rows);
    free(r->type_canon);
    free(r->growth);
    rs_cycles_free(&r->cycles);
    rs_chain_tree_free(&r->tree);
    series_free(&r->by_liveness);
}

/* ---- rendering --------------------------------------------------------------------- */

static json_t *render_json(const struct leak_report *r)
{
    const struct rs_snapshot *s = r->snap;
    json_t *root = json_object(), *arr = json_array(), *garr = json_array();
    json_object_set_new(root, "trace", json_string(r->path));
    json_object_set_new(root, "snapshot", s ? json_integer(s->seq) : json_null());
    json_object_set_new(root, "since_ns", json_integer((json_int_t)r->since));
    json_object_set_new(root, "since", json_string(r->since_given ? "--since" : "import"));
    json_object_set_new(root, "startup_end_ns", r->t->startup_end_ns == UINT64_MAX
                                                    ? json_null()
                                                    : json_integer((json_int_t)r->t->startup_end_ns));
    json_object_set_new(root, "depth", json_integer(r->t->site_depth));
    json_object_set_new(root, "total_candidates", json_integer((json_int_t)r->nrows));
    json_object_set_new(root, "candidate_objects", json_integer((json_int_t)r->objects));
    json_object_set_new(root, "candidate_bytes", json_integer((json_int_t)r->bytes));
    for (size_t k = 0; k < r->nrows && k < r->limit; k++) {
        const struct leak_row *row = &r->rows[k];
        json_t *o = json_object(), *ch = json_array();
        json_object_set_new(o, "site", json_string(rs_snapshot_site_name(r->t, row->site)));
        json_object_set_new(o, "frames", rs_snapshot_frames_json(r->t, row->stack));
        json_object_set_new(o, "type", json_string(type_text(r, row->type)));
        json_object_set_new(o, "count", json_integer((json_int_t)row->count));
        json_object_set_new(o, "bytes", json_integer((json_int_t)row->bytes));
        if (s && row->representative != RS_SNAP_NONE) {
            char addr[32];
            snprintf(addr, sizeof(addr), "0x%llx", (unsigned long long)s->objs[row->representative].addr);
            json_object_set_new(o, "representative", json_string(addr));
        }
        const char *p = row->chain;
        for (int i = 0; i < row->chain_steps; i++, p += strlen(p) + 1)
            json_array_append_new(ch, json_string(p));
        json_object_set_new(o, "chain", ch);
        json_array_append_new(arr, o);
    }
    json_object_set_new(root, "candidates", arr);
    if (s) {
        const struct rs_cycles *c = &r->cycles;
        json_t *u = json_object(), *types = json_array();
        json_object_set_new(u, "objects", json_integer((json_int_t)c->unreachable));
        json_object_set_new(u, "bytes", json_integer((json_int_t)c->unreachable_bytes));
        json_object_set_new(u, "groups", json_integer((json_int_t)c->n));
        json_object_set_new(u, "uncollectable_groups", json_integer((json_int_t)r->uncollectable_groups));
        json_object_set_new(u, "held_objects", json_integer((json_int_t)c->held));
        json_object_set_new(u, "held_bytes", json_integer((json_int_t)c->held_bytes));
        json_object_set_new(u, "gc_enabled", s->gc_enabled == 255 ? json_null() : json_boolean(s->gc_enabled));
        for (size_t k = 0; k < r->nunreachable_types; k++) {
            const struct leak_type_total *tt = &r->unreachable_types[k];
            json_t *to = json_object();
            json_object_set_new(to, "type", json_string(type_text(r, tt->type)));
            json_object_set_new(to, "count", json_integer((json_int_t)tt->count));
            json_object_set_new(to, "bytes", json_integer((json_int_t)tt->bytes));
            json_array_append_new(types, to);
        }
        json_object_set_new(u, "types", types);
        json_object_set_new(u, "see", json_string("refscope cycles"));
        json_object_set_new(root, "unreachable", u);
    } else {
        json_object_set_new(root, "unreachable", json_null());
    }
    for (size_t k = 0; k < r->ngrowth && k < r->limit; k++) {
        const struct leak_growth *g = &r->growth[k];
        json_t *o = json_object(), *smp = json_array(), *tms = json_array();
        json_object_set_new(o, "site", json_string(rs_snapshot_site_name(r->t, g->site)));
        json_object_set_new(o, "frames", rs_snapshot_frames_json(r->t, g->stack));
        json_object_set_new(o, "source", json_string(g->source));
        json_object_set_new(o, "slope_bytes_per_s", json_real(g->slope));
        for (int i = 0; i < g->nsamples; i++) {
            json_array_append_new(smp, json_integer((json_int_t)g->samples[i]));
            json_array_append_new(tms, json_real(g->times[i]));
        }
        json_object_set_new(o, "live_bytes", smp);
        json_object_set_new(o, "times_s", tms);
        json_object_set_new(o, "unreachable_share",
                            g->unreachable_share < 0 ? json_null() : json_real(g->unreachable_share));
        json_object_set_new(o, "garbage", json_boolean(g->garbage));
        json_array_append_new(garr, o);
    }
    json_object_set_new(root, "growth", garr);
    return root;
}

static void render_unreachable_text(const struct leak_report *r)
{
    const struct rs_snapshot *s = r->snap;
    const struct rs_cycles *c = &r->cycles;
    char b[32], hb[32];
    if (!c->unreachable) {
        printf("\nunreachable: nothing (no cyclic garbage waiting for the collector)\n");
        return;
    }
    size_t garbage = c->n - r->uncollectable_groups;
    printf("\nnot leaks, unreachable: %zu objects (%s) in %zu group%s", c->unreachable,
           rs_units_bytes(c->unreachable_bytes, b, sizeof(b)), c->n, c->n == 1 ? "" : "s");
    if (c->held)
        printf(", and %zu objects (%s) only they keep alive", c->held,
               rs_units_bytes(c->held_bytes, hb, sizeof(hb)));
    printf("\n");
    if (garbage)
        printf("  %zu group%s of cyclic garbage: %s\n", garbage, garbage == 1 ? "" : "s",
               s->gc_enabled == 0 ? "the collector was disabled, nothing frees them"
                                  : "the collector has not run since, its next run frees them");
    if (r->uncollectable_groups)
        printf("  %zu group%s uncollectable: held in gc.garbage, never freed\n", r->uncollectable_groups,
               r->uncollectable_groups == 1 ? "" : "s");
    size_t growing = 0;
    for (size_t k = 0; k < r->ngrowth && growing < LEAK_UNREACHABLE_TYPES; k++) {
        const struct leak_growth *g = &r->growth[k];
        char rate[32];
        if (!g->garbage)
            continue;
        rs_snapshot_delta_bytes_text((int64_t)g->slope, rate, sizeof(rate));
        strcat(rate, "/s");
        printf("  %-18s %12s  %s\n", growing++ ? "" : "growing steadily:", rate, rs_snapshot_site_name(r->t, g->site));
    }
    printf("  mostly");
    for (size_t k = 0; k < r->nunreachable_types; k++) {
        const struct leak_type_total *tt = &r->unreachable_types[k];
        printf("%s %llu %s (%s)", k ? "," : "", (unsigned long long)tt->count,
               type_text(r, tt->type), rs_units_bytes(tt->bytes, b, sizeof(b)));
    }
    printf("; details: refscope cycles %s\n", r->path);
}

static void render_growth_text(const struct leak_report *r)
{
    size_t shown = 0, more = 0;
    for (size_t k = 0; k < r->ngrowth; k++) {
        const struct leak_growth *g = &r->growth[k];
        if (g->garbage)
            continue; /* in the unreachable section */
        if (shown == r->limit) {
            more++;
            continue;
        }
        if (!shown++)
            printf("\ngrowing sites: live bytes rising steadily, least-squares slope, steepest first\n");
        char rate[32], from[32], to[32], span[64];
        rs_snapshot_delta_bytes_text((int64_t)g->slope, rate, sizeof(rate));
        strcat(rate, "/s");
        snprintf(span, sizeof(span), "(%.2f-%.2f s, %d %s)", g->times[0], g->times[g->nsamples - 1], g->nsamples,
                 g->source);
        printf("  %12s  %9s -> %-9s %-26s %s\n", rate, rs_units_bytes(g->samples[0], from, sizeof(from)),
               rs_units_bytes(g->samples[g->nsamples - 1], to, sizeof(to)), span,
               rs_snapshot_site_name(r->t, g->site));
    }
    if (more)
        printf("  ... %zu more (--limit N)\n", more);
    if (!shown)
        printf("\ngrowth: no site's live memory grows steadily (over %d time windows%s)%s\n", LEAK_WINDOWS,
               rs_snapshots_count(r->t->snaps) >= 2 ? " or across snapshots" : "",
               r->ngrowth ? ", but for unreachable garbage (below)" : "");
}

static void render_text(const struct leak_report *r)
{
    const struct rs_snapshot *s = r->snap;
    char b[32], depth[64], since[96];
    rs_snapshot_site_depth_text(r->t, depth, sizeof(depth));
    if (r->since_given && !r->since)
        snprintf(since, sizeof(since), "allocated at any time (--since 0)");
    else if (r->since_given)
        snprintf(since, sizeof(since), "allocated %.3f s or more after start (--since)", r->since / 1e9);
    else if (r->t->startup_end_ns == UINT64_MAX)
        snprintf(since, sizeof(since), "allocated at any time (no end of start-up found)");
    else
        snprintf(since, sizeof(since), "allocated after start-up (%.3f s, the first call into the program)",
                 r->since / 1e9);
    if (s) {
        size_t nsnaps = rs_snapshots_count(r->t->snaps);
        printf("snapshot %u (%s, at %.3f s", s->seq, rs_snapshot_reason_name(s->reason), s->time_ns / 1e9);
        if (nsnaps > 1 && s == rs_snapshots_get(r->t->snaps, nsnaps - 1))
            printf("; the last of %zu, --snapshot N for another", nsnaps);
        printf("): %zu objects\n", s->nobjs);
        printf("leak candidates: objects reachable from a root, %s,\n", since);
        printf("by type and allocation site (%s), most bytes first\n", depth);
    } else {
        printf("no heap snapshot in this trace: leak candidates are the memory blocks live when the program\n"
               "ended (%.3f s, before interpreter teardown), %s,\nby allocation site (%s), most bytes first\n",
               r->t->run_end_ns / 1e9, since, depth);
    }
    if (!r->nrows)
        printf("\n  none\n");
    else if (r->nrows > r->limit)
        printf("%zu groups, %s in %llu objects; the largest %zu shown (--limit N)\n", r->nrows,
               rs_units_bytes(r->bytes, b, sizeof(b)), (unsigned long long)r->objects, r->limit);
    else
        printf("%zu group%s, %s in %llu object%s\n", r->nrows, r->nrows == 1 ? "" : "s",
               rs_units_bytes(r->bytes, b, sizeof(b)), (unsigned long long)r->objects,
               r->objects == 1 ? "" : "s");
    for (size_t k = 0; k < r->nrows && k < r->limit; k++) {
        const struct leak_row *row = &r->rows[k];
        printf("\n#%zu %s in %llu %s object%s at %s\n", k + 1, rs_units_bytes(row->bytes, b, sizeof(b)),
               (unsigned long long)row->count, type_text(r, row->type), row->count == 1 ? "" : "s",
               rs_snapshot_site_name(r->t, row->site));
        if (!row->chain)
            continue;
        printf("   alive because: ");
        const char *p = row->chain;
        for (int i = 0; i < row->chain_steps; i++, p += strlen(p) + 1)
            printf("%s%s", i ? " -> " : "", p);
        printf("%s\n", row->chain_steps ? "" : "(referenced from outside the snapshot)");
    }
    render_growth_text(r);
    if (s)
        render_unreachable_text(r);
}

/* ---- the command ------------------------------------------------------------------- */

int cmd_leaks(int argc, char **argv)
{
    int json = 0, limit = 10, depth = 1;
    const char *want = NULL; /* --snapshot N */
    const char *since_arg = "import";
    const struct rs_opt opts[] = {
        {"json", 'j', RS_OPT_FLAG, &json, 0, 0, NULL},
        {"since", 'S', RS_OPT_STR, &since_arg, 0, 0, NULL},
        {"snapshot", 's', RS_OPT_STR, &want, 0, 0, NULL}, /* checked against the trace's snapshots */
        {"limit", 'n', RS_OPT_INT, &limit, 1, INT_MAX, NULL},
        {"depth", 'D', RS_OPT_INT, &depth, 0, INT_MAX, NULL},
        RS_OPT_END,
    };
    const struct rs_cli cli = { "leaks", opts, "TRACE", 1, 1, 0 };
    if (rs_cli_parse(&cli, argc, argv) < 0)
        return 2;
    char *endp = NULL;
    double since_s = strcmp(since_arg, "import") ? strtod(since_arg, &endp) : 0;
    if (endp && (endp == since_arg || *endp || !(since_s >= 0))) {
        fprintf(stderr, "refscope leaks: --since takes seconds (>= 0) or 'import', not '%s' "
                        "(see 'refscope leaks --help')\n", since_arg);
        return 2;
    }
    const char *path = argv[1];
    struct rs_snapshot_trace t;
    if (rs_snapshot_trace_open("leaks", path, depth, &t) < 0)
        return 1;
    int status = 1;
    struct leak_report r = {
        .path = path,
        .t = &t,
        .limit = (size_t)limit,
        .since_given = endp != NULL,
        .since = endp ? (uint64_t)(since_s * 1e9) : (t.startup_end_ns == UINT64_MAX ? 0 : t.startup_end_ns),
    };
    size_t count = rs_snapshots_count(t.snaps);
    if (want) {
        if (!(r.snap = rs_snapshots_pick(t.snaps, "leaks", path, want)))
            goto out;
    } else if (count) {
        r.snap = rs_snapshots_get(t.snaps, count - 1);
    }
    char err[512];
    if (report_build(&r, err, sizeof(err)) < 0) {
        fprintf(stderr, "refscope leaks: %s: %s\n", path, err);
        goto out;
    }
    if (json) {
        if (rs_cli_print_json("leaks", render_json(&r)) < 0)
            goto out;
    } else {
        render_text(&r);
    }
    status = 0;
out:
    report_free(&r);
    rs_snapshot_trace_close(&t);
    return status;
}
