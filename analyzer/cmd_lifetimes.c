/*
 * `refscope lifetimes [--json] [--depth N] TRACE`: how long objects live, in
 * log2-scale buckets, by type and by allocation site (siteindex.h: the
 * innermost Python frame, or N frames), and "tenured garbage": objects
 * promoted to the oldest generation that later died (what a different
 * threshold could have collected young), by type and site.
 *
 * On 3.13+ an object's lifetime runs from OBJ_CREATE to OBJ_DESTROY. Before
 * 3.13 (no object events) it is the lifetime of the PyObject-domain block,
 * with the block's stack; the type is known for the objects the gc census
 * listed as reaching the oldest generation (the tenured ones). Deaths during
 * interpreter shutdown are counted apart: they end with the process, not
 * with the program. Deaths come from gcmodel.c.
 */
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "cli.h"
#include "commands.h"
#include "gcmodel.h"
#include "grow.h"
#include "siteindex.h"
#include "stacks.h"
#include "trace_read.h"
#include "types.h"
#include "u64map.h"
#include "units.h"

#define BUCKETS 64 /* bucket b holds lifetimes in [2^(b-1), 2^b) ns; bucket 0 = 0 ns */

struct group {
    uint64_t key;  /* type id, stack id, or site id (by_site, once merged) */
    uint64_t count, tenured, total_ns, min_ns, max_ns;
    uint64_t hist[BUCKETS];
};

/* key -> index into g, in order of first appearance */
struct group_table {
    struct u64map index;
    struct group *g;
    size_t n, cap;
};

struct agg {
    struct group_table by_type[2], by_site[2]; /* [0] object events, [1] blocks */
    uint64_t deaths[2], tenured[2], at_shutdown[2], unknown_birth[2];
    int oom;
};

static struct group *group_get(struct group_table *t, uint64_t key)
{
    uint64_t *slot;
    if (t->n == t->cap) {
        size_t cap = t->cap ? t->cap * 2 : 128;
        struct group *g = realloc(t->g, cap * sizeof(*g));
        if (!g)
            return NULL;
        t->g = g;
        t->cap = cap;
    }
    int r = u64map_insert(&t->index, key, t->n, &slot);
    if (r < 0)
        return NULL;
    if (r == 1) {
        memset(&t->g[t->n], 0, sizeof(t->g[t->n]));
        t->g[t->n].key = key;
        t->g[t->n].min_ns = UINT64_MAX;
        t->n++;
    }
    return &t->g[*slot];
}

static void group_table_free(struct group_table *t)
{
    u64map_free(&t->index);
    free(t->g);
}

static int bucket_of(uint64_t ns)
{
    return ns ? 64 - __builtin_clzll(ns) : 0;
}

static void group_add(struct agg *a, struct group_table *t, uint64_t key, uint64_t life, int tenured)
{
    struct group *g = group_get(t, key);
    if (!g) {
        a->oom = 1;
        return;
    }
    g->count++;
    g->tenured += tenured;
    g->total_ns += life;
    if (life < g->min_ns)
        g->min_ns = life;
    if (life > g->max_ns)
        g->max_ns = life;
    g->hist[bucket_of(life) < BUCKETS ? bucket_of(life) : BUCKETS - 1]++;
}

static void on_death(void *arg, const struct rs_gc_death *d)
{
    struct agg *a = arg;
    int k = d->from_block ? 1 : 0;
    uint64_t life;

    a->deaths[k]++;
    if (d->at_shutdown) {
        a->at_shutdown[k]++;
        return;
    }
    if (d->born_ns == RS_GC_UNKNOWN || d->died_ns < d->born_ns) {
        a->unknown_birth[k]++;
        return;
    }
    life = d->died_ns - d->born_ns;
    a->tenured[k] += d->tenured;
    group_add(a, &a->by_type[k], d->type, life, d->tenured);
    group_add(a, &a->by_site[k], d->stack, life, d->tenured);
}

static int cmp_count(const void *x, const void *y)
{
    const struct group *a = x, *b = y;
    return a->count < b->count ? 1 : a->count > b->count ? -1 : (a->key > b->key) - (a->key < b->key);
}

static int cmp_tenured(const void *x, const void *y)
{
    const struct group *a = x, *b = y;
    return a->tenured < b->tenured ? 1 : a->tenured > b->tenured ? -1 : (a->key > b->key) - (a->key < b->key);
}

/* Dense, sorted copy of a table (caller frees). */
static struct group *sorted(const struct group_table *t, uint64_t *n,
                            int (*cmp)(const void *, const void *))
{
    struct group *out = malloc((t->n + 1) * sizeof(*out));
    *n = 0;
    if (!out)
        return NULL;
    if (t->n)
        memcpy(out, t->g, t->n * sizeof(*out));
    *n = t->n;
    rs_sort(out, *n, sizeof(*out), cmp);
    return out;
}

static void group_merge(struct group *into, const struct group *g)
{
    into->count += g->count;
    into->tenured += g->tenured;
    into->total_ns += g->total_ns;
    if (g->min_ns < into->min_ns)
        into->min_ns = g->min_ns;
    if (g->max_ns > into->max_ns)
        into->max_ns = g->max_ns;
    for (int b = 0; b < BUCKETS; b++)
        into->hist[b] += g->hist[b];
}

/* The groups by stack id, merged by site into *out. Returns 0 or -ENOMEM. */
static int merge_by_site(const struct group_table *by_stack, struct rs_site_index *sites,
                         struct group_table *out)
{
    for (size_t i = 0; i < by_stack->n; i++) {
        uint32_t site;
        struct group *g;
        if (rs_site_of(sites, (uint32_t)by_stack->g[i].key, &site) < 0 || !(g = group_get(out, site)))
            return -ENOMEM;
        group_merge(g, &by_stack->g[i]);
    }
    return 0;
}

static json_t *group_json(const struct group *g, const char *label_key, const char *label)
{
    json_t *o = json_object(), *h = json_array();
    json_object_set_new(o, label_key, json_string(label));
    json_object_set_new(o, "count", json_integer((json_int_t)g->count));
    json_object_set_new(o, "tenured", json_integer((json_int_t)g->tenured));
    json_object_set_new(o, "mean_ns", json_real(g->count ? (double)g->total_ns / (double)g->count : 0));
    json_object_set_new(o, "min_ns", json_integer((json_int_t)g->min_ns));
    json_object_set_new(o, "max_ns", json_integer((json_int_t)g->max_ns));
    for (int b = 0; b < BUCKETS; b++) {
        if (!g->hist[b])
            continue;
        /* upper bound of bucket b: lifetimes < 2^b ns */
        json_array_append_new(h, json_pack("{s:I,s:I}", "lt_ns", (json_int_t)(b >= 63 ? INT64_MAX : (1ll << b)),
                                           "count", (json_int_t)g->hist[b]));
    }
    json_object_set_new(o, "histogram", h);
    return o;
}

#define TOP_TEXT 20

static void print_hist(const struct group *g)
{
    char lo[32], hi[32];
    for (int b = 0; b < BUCKETS; b++) {
        if (!g->hist[b])
            continue;
        rs_units_ns(b ? (double)(1ull << (b - 1)) : 0, lo, sizeof(lo));
        rs_units_ns((double)(b >= 63 ? UINT64_MAX : (1ull << b)), hi, sizeof(hi));
        printf("      [%8s, %8s) %llu\n", lo, hi, (unsigned long long)g->hist[b]);
    }
}

int cmd_lifetimes(int argc, char **argv)
{
    int json = 0, depth = 1, rc = 1, r, k;
    const char *path = NULL;
    char err[256], a1[32], a2[32], a3[32];
    struct rs_trace *t = NULL;
    struct rs_event ev;
    struct rs_gc_model m;
    struct rs_types *types = NULL;
    struct rs_stacks *stacks = NULL;
    struct rs_site_index *sites = NULL;
    struct group_table by_site;
    struct agg agg;
    struct group *bt = NULL, *bs = NULL, *tt = NULL, *ts = NULL;
    uint64_t nbt = 0, nbs = 0, ntt = 0, nts = 0;
    json_t *root = NULL, *warn;

    memset(&agg, 0, sizeof(agg));
    memset(&m, 0, sizeof(m));
    memset(&by_site, 0, sizeof(by_site));
    const struct rs_opt opts[] = { {"json", 0, RS_OPT_FLAG, &json, 0, 0, NULL},
                                   {"depth", 'D', RS_OPT_INT, &depth, 0, INT_MAX, NULL}, /* 0: whole stack */
                                   RS_OPT_END };
    const struct rs_cli cli = { "lifetimes", opts, "TRACE", 1, 1, 0 };
    if (rs_cli_parse(&cli, argc, argv) < 0)
        return 2;
    path = argv[1];
    if (rs_trace_open(path, &t, err, sizeof(err)) < 0) {
        fprintf(stderr, "refscope lifetimes: %s\n", err);
        return 1;
    }
    types = rs_types_new();
    stacks = rs_stacks_new();
    if (!types || !stacks || rs_gcmodel_init(&m, on_death, &agg) < 0) {
        snprintf(err, sizeof(err), "out of memory");
        goto fail;
    }
    while ((r = rs_trace_next(t, &ev, err, sizeof(err))) == 1) {
        if ((r = rs_gcmodel_feed(&m, &ev)) < 0 || (r = rs_types_feed(types, &ev)) < 0 ||
            (r = rs_stacks_feed(stacks, &ev)) < 0 || (agg.oom && (r = -ENOMEM))) {
            rs_trace_record_error(err, sizeof(err), path, &ev, r);
            goto fail;
        }
    }
    if (r < 0 || rs_gcmodel_finish(&m, rs_trace_info(t)->end_ns) < 0)
        goto fail;

    k = m.object_creates ? 0 : 1; /* object events when the trace has them */
    if (!(sites = rs_site_index_new(stacks, depth)) || merge_by_site(&agg.by_site[k], sites, &by_site) < 0) {
        snprintf(err, sizeof(err), "out of memory");
        goto fail;
    }
    bt = sorted(&agg.by_type[k], &nbt, cmp_count);
    bs = sorted(&by_site, &nbs, cmp_count);
    tt = sorted(&agg.by_type[k], &ntt, cmp_tenured);
    ts = sorted(&by_site, &nts, cmp_tenured);
    if (!bt || !bs || !tt || !ts) {
        snprintf(err, sizeof(err), "out of memory");
        goto fail;
    }

    root = json_object();
    warn = json_array();
    for (uint32_t i = 0; i < m.nnotes; i++)
        json_array_append_new(warn, json_string(m.notes[i]));
    if (k == 1)
        json_array_append_new(warn, json_string("no object events (CPython < 3.13 or tracer unavailable): "
                                                "lifetimes are PyObject-domain block lifetimes; types only "
                                                "for objects that reached the oldest gc generation"));
    if (!m.census)
        json_array_append_new(warn, json_string("no gc census: tenured garbage unknown"));
    else if (m.tenured_listed < m.tenured_expected)
        json_array_append_new(warn, json_string("some gc census records are missing (lost events?): "
                                                "tenured garbage is a lower bound"));
    if (!rs_trace_info(t)->has_trailer || rs_trace_info(t)->truncated)
        json_array_append_new(warn, json_string("trace is truncated"));
    if (rs_stacks_warnings(stacks))
        json_array_append_new(warn, json_string(rs_stacks_warnings(stacks)));

    if (json) {
        json_t *jt = json_array(), *js = json_array(), *tg = json_object(), *tgt = json_array(),
               *tgs = json_array();
        json_object_set_new(root, "trace", json_string(path));
        json_object_set_new(root, "mode", json_string(k ? "blocks" : "objects"));
        json_object_set_new(root, "depth", json_integer(depth));
        json_object_set_new(root, "deaths", json_integer((json_int_t)agg.deaths[k]));
        json_object_set_new(root, "died_at_shutdown", json_integer((json_int_t)agg.at_shutdown[k]));
        json_object_set_new(root, "born_before_tracing", json_integer((json_int_t)agg.unknown_birth[k]));
        for (uint64_t i = 0; i < nbt; i++)
            json_array_append_new(jt, group_json(&bt[i], "type", rs_types_display(types, (uint32_t)(bt[i].key))));
        for (uint64_t i = 0; i < nbs; i++) {
            json_t *o = group_json(&bs[i], "site", rs_site_name(sites, (uint32_t)bs[i].key));
            json_object_set_new(o, "stack", json_integer(rs_site_stack(sites, (uint32_t)bs[i].key)));
            json_array_append_new(js, o);
        }
        json_object_set_new(root, "by_type", jt);
        json_object_set_new(root, "by_site", js);
        json_object_set_new(tg, "total", json_integer((json_int_t)agg.tenured[k]));
        for (uint64_t i = 0; i < ntt && tt[i].tenured; i++)
            json_array_append_new(tgt, json_pack("{s:s,s:I}", "type", rs_types_display(types, (uint32_t)(tt[i].key)),
                                                 "count", (json_int_t)tt[i].tenured));
        for (uint64_t i = 0; i < nts && ts[i].tenured; i++)
            json_array_append_new(tgs, json_pack("{s:s,s:I,s:I}", "site", rs_site_name(sites, (uint32_t)ts[i].key),
                                                 "stack", (json_int_t)rs_site_stack(sites, (uint32_t)ts[i].key),
                                                 "count", (json_int_t)ts[i].tenured));
        json_object_set_new(tg, "by_type", tgt);
        json_object_set_new(tg, "by_site", tgs);
        json_object_set_new(root, "tenured_garbage", tg);
        json_object_set_new(root, "warnings", warn);
        json_t *report = root;
        root = NULL; /* rs_cli_print_json releases it */
        if (rs_cli_print_json("lifetimes", report) < 0)
            goto out;
    } else {
        printf("lifetimes (%s): %llu deaths, %llu during shutdown, %llu born before tracing\n\n",
               k ? "PyObject-domain blocks" : "object events", (unsigned long long)agg.deaths[k],
               (unsigned long long)agg.at_shutdown[k], (unsigned long long)agg.unknown_birth[k]);
        printf("by type (top %d):\n", TOP_TEXT);
        for (uint64_t i = 0; i < nbt && i < TOP_TEXT; i++) {
            rs_units_ns((double)bt[i].total_ns / (double)bt[i].count, a1, sizeof(a1));
            rs_units_ns((double)bt[i].min_ns, a2, sizeof(a2));
            rs_units_ns((double)bt[i].max_ns, a3, sizeof(a3));
            printf("  %-40s %10llu  mean %9s  min %9s  max %9s\n",
                   rs_types_display(types, (uint32_t)(bt[i].key)), (unsigned long long)bt[i].count, a1, a2, a3);
            if (i < 5)
                print_hist(&bt[i]);
        }
        printf("\nby allocation site (%s; top %d):\n", rs_site_depth_text(depth, a2, sizeof(a2)), TOP_TEXT);
        for (uint64_t i = 0; i < nbs && i < TOP_TEXT; i++) {
            rs_units_ns((double)bs[i].total_ns / (double)bs[i].count, a1, sizeof(a1));
            printf("  %-60s %10llu  mean %9s\n", rs_site_name(sites, (uint32_t)bs[i].key),
                   (unsigned long long)bs[i].count, a1);
        }
        printf("\ntenured garbage: %llu objects promoted to the oldest generation died later\n",
               (unsigned long long)agg.tenured[k]);
        for (uint64_t i = 0; i < ntt && tt[i].tenured && i < TOP_TEXT; i++)
            printf("  %-40s %10llu\n", rs_types_display(types, (uint32_t)(tt[i].key)),
                   (unsigned long long)tt[i].tenured);
        for (uint64_t i = 0; i < nts && ts[i].tenured && i < TOP_TEXT; i++)
            printf("  at %-60s %10llu\n", rs_site_name(sites, (uint32_t)ts[i].key),
                   (unsigned long long)ts[i].tenured);
        for (size_t i = 0; i < json_array_size(warn); i++)
            printf("warning: %s\n", json_string_value(json_array_get(warn, i)));
        json_decref(warn); /* only the JSON report takes it over */
    }
    rc = 0;
    goto out;
fail:
    fprintf(stderr, "refscope lifetimes: %s\n", err);
out:
    json_decref(root);
    free(bt);
    free(bs);
    free(tt);
    free(ts);
    for (int i = 0; i < 2; i++) {
        group_table_free(&agg.by_type[i]);
        group_table_free(&agg.by_site[i]);
    }
    group_table_free(&by_site);
    rs_site_index_free(sites);
    rs_gcmodel_free(&m);
    rs_types_free(types);
    if (stacks)
        rs_stacks_free(stacks);
    rs_trace_close(t);
    return rc;
}
