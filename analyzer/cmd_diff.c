/*
 * `refscope diff [--json] [--limit N] TRACE [SNAP_A SNAP_B]`: what grew
 * between two heap snapshots (the first and the last by default): object
 * counts and bytes per type, and per allocation site and type — what
 * objgraph's show_growth and tracemalloc's compare_to report.
 */
#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "commands.h"
#include "snapshot.h"

struct diff_row {
    const char *type;
    uint32_t stack;            /* UINT32_MAX: per type only */
    int64_t count[2], bytes[2];
};

struct diff_table {
    struct diff_row *rows;
    size_t n, cap;
};

/* Linear probing over (type name pointer-independent) keys would be faster;
 * snapshots have few distinct (type, site) pairs, so a sorted merge suffices. */
static int row_cmp(const void *a, const void *b)
{
    const struct diff_row *x = a, *y = b;
    int c = strcmp(x->type, y->type);
    if (c)
        return c;
    return x->stack < y->stack ? -1 : x->stack > y->stack;
}

static int table_add(struct diff_table *t, const char *type, uint32_t stack, int side, uint64_t bytes)
{
    if (t->n == t->cap) {
        size_t c = t->cap ? t->cap * 2 : 1024;
        struct diff_row *r = realloc(t->rows, c * sizeof(*r));
        if (!r)
            return -ENOMEM;
        t->rows = r;
        t->cap = c;
    }
    struct diff_row *r = &t->rows[t->n++];
    memset(r, 0, sizeof(*r));
    r->type = type;
    r->stack = stack;
    r->count[side] = 1;
    r->bytes[side] = (int64_t)bytes;
    return 0;
}

/* Sort and merge equal keys. */
static void table_merge(struct diff_table *t)
{
    if (!t->n)
        return;
    qsort(t->rows, t->n, sizeof(*t->rows), row_cmp);
    size_t w = 0;
    for (size_t i = 1; i < t->n; i++) {
        if (!row_cmp(&t->rows[w], &t->rows[i])) {
            for (int s = 0; s < 2; s++) {
                t->rows[w].count[s] += t->rows[i].count[s];
                t->rows[w].bytes[s] += t->rows[i].bytes[s];
            }
        } else {
            t->rows[++w] = t->rows[i];
        }
    }
    t->n = w + 1;
}

/* Per snapshot, aggregate first (a million objects would make a big table). */
static int collect(struct diff_table *types, struct diff_table *sites, const struct rs_snapshot *s, int side)
{
    struct diff_table tt = {0}, st = {0};
    for (size_t i = 0; i < s->nobjs; i++) {
        const char *type = rs_snapshot_type_name(s, (uint32_t)i);
        if (table_add(&tt, type, UINT32_MAX, side, s->objs[i].size) ||
            table_add(&st, type, s->objs[i].stack, side, s->objs[i].size))
            return -ENOMEM;
        if (tt.n > 65536)
            table_merge(&tt);
        if (st.n > 65536)
            table_merge(&st);
    }
    table_merge(&tt);
    table_merge(&st);
    for (size_t i = 0; i < tt.n; i++)
        if (table_add(types, tt.rows[i].type, UINT32_MAX, side, 0) == 0) {
            types->rows[types->n - 1].count[side] = tt.rows[i].count[side];
            types->rows[types->n - 1].bytes[side] = tt.rows[i].bytes[side];
        }
    for (size_t i = 0; i < st.n; i++)
        if (table_add(sites, st.rows[i].type, st.rows[i].stack, side, 0) == 0) {
            sites->rows[sites->n - 1].count[side] = st.rows[i].count[side];
            sites->rows[sites->n - 1].bytes[side] = st.rows[i].bytes[side];
        }
    free(tt.rows);
    free(st.rows);
    return 0;
}

static int growth_cmp(const void *a, const void *b)
{
    const struct diff_row *x = a, *y = b;
    int64_t dx = x->bytes[1] - x->bytes[0], dy = y->bytes[1] - y->bytes[0];
    if (dx != dy)
        return dx > dy ? -1 : 1;
    int64_t cx = x->count[1] - x->count[0], cy = y->count[1] - y->count[0];
    return cx > cy ? -1 : cx < cy;
}

/* Keeps rows that grew in count or bytes, sorted by byte growth. */
static void keep_growth(struct diff_table *t)
{
    size_t w = 0;
    for (size_t i = 0; i < t->n; i++)
        if (t->rows[i].count[1] > t->rows[i].count[0] || t->rows[i].bytes[1] > t->rows[i].bytes[0])
            t->rows[w++] = t->rows[i];
    t->n = w;
    qsort(t->rows, t->n, sizeof(*t->rows), growth_cmp);
}

static json_t *row_json(struct rs_snapshot_trace *tr, const struct diff_row *r, int with_site)
{
    json_t *o = json_object();
    json_object_set_new(o, "type", json_string(r->type));
    if (with_site) {
        char site[512];
        json_object_set_new(o, "frames", rs_snapshot_frames_json(tr, r->stack));
        json_object_set_new(o, "site", json_string(rs_snapshot_site_text(tr, r->stack, site, sizeof(site))));
    }
    json_object_set_new(o, "count_a", json_integer(r->count[0]));
    json_object_set_new(o, "count_b", json_integer(r->count[1]));
    json_object_set_new(o, "count_delta", json_integer(r->count[1] - r->count[0]));
    json_object_set_new(o, "bytes_a", json_integer(r->bytes[0]));
    json_object_set_new(o, "bytes_b", json_integer(r->bytes[1]));
    json_object_set_new(o, "bytes_delta", json_integer(r->bytes[1] - r->bytes[0]));
    return o;
}

int cmd_diff(int argc, char **argv)
{
    int json = 0, limit = 20;
    static const struct option longopts[] = {
        {"json", no_argument, NULL, 'j'},
        {"limit", required_argument, NULL, 'n'},
        {NULL, 0, NULL, 0},
    };
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "jn:", longopts, NULL)) != -1) {
        if (c == 'j')
            json = 1;
        else if (c == 'n')
            limit = atoi(optarg);
        else
            return 2;
    }
    int rest = argc - optind;
    if ((rest != 1 && rest != 3) || limit <= 0) {
        fprintf(stderr, "usage: refscope diff [--json] [--limit N] TRACE [SNAP_A SNAP_B]\n");
        return 2;
    }
    const char *path = argv[optind];
    struct rs_snapshot_trace t;
    char err[512];
    if (rs_snapshot_trace_open(path, &t, err, sizeof(err)) < 0) {
        fprintf(stderr, "refscope diff: %s\n", err);
        return 1;
    }
    int status = 1;
    struct diff_table types = {0}, sites = {0};
    const struct rs_snapshot *a, *b;
    size_t count = rs_snapshots_count(t.snaps);
    if (rest == 3) {
        a = rs_snapshots_find(t.snaps, (uint32_t)atoi(argv[optind + 1]));
        b = rs_snapshots_find(t.snaps, (uint32_t)atoi(argv[optind + 2]));
    } else {
        a = count >= 2 ? rs_snapshots_get(t.snaps, 0) : NULL;
        b = count >= 2 ? rs_snapshots_get(t.snaps, count - 1) : NULL;
    }
    if (!a || !b) {
        fprintf(stderr, "refscope diff: %s: %s\n", path,
                rest == 3 ? "no snapshot with that number" : "the trace has fewer than two heap snapshots");
        goto out;
    }
    if (collect(&types, &sites, a, 0) || collect(&types, &sites, b, 1)) {
        fprintf(stderr, "refscope diff: out of memory\n");
        goto out;
    }
    table_merge(&types);
    table_merge(&sites);
    keep_growth(&types);
    keep_growth(&sites);
    size_t nt = types.n < (size_t)limit ? types.n : (size_t)limit;
    size_t ns = sites.n < (size_t)limit ? sites.n : (size_t)limit;
    if (json) {
        json_t *root = json_object(), *ta = json_array(), *sa = json_array();
        json_object_set_new(root, "trace", json_string(path));
        json_object_set_new(root, "a", json_integer(a->seq));
        json_object_set_new(root, "b", json_integer(b->seq));
        json_object_set_new(root, "seconds", json_real((double)(b->time_ns - a->time_ns) / 1e9));
        for (size_t i = 0; i < nt; i++)
            json_array_append_new(ta, row_json(&t, &types.rows[i], 0));
        for (size_t i = 0; i < ns; i++)
            json_array_append_new(sa, row_json(&t, &sites.rows[i], 1));
        json_object_set_new(root, "types", ta);
        json_object_set_new(root, "sites", sa);
        json_dumpf(root, stdout, JSON_INDENT(2));
        putchar('\n');
        json_decref(root);
    } else {
        printf("growth from snapshot %u to snapshot %u (%.2f s later)\n\n%-32s %10s %10s %12s\n", a->seq, b->seq,
               (double)(b->time_ns - a->time_ns) / 1e9, "type", "count", "+count", "+bytes");
        for (size_t i = 0; i < nt; i++) {
            const struct diff_row *r = &types.rows[i];
            printf("%-32s %10lld %+10lld %+12lld\n", r->type, (long long)r->count[1],
                   (long long)(r->count[1] - r->count[0]), (long long)(r->bytes[1] - r->bytes[0]));
        }
        printf("\nby site:\n");
        for (size_t i = 0; i < ns; i++) {
            const struct diff_row *r = &sites.rows[i];
            char site[512];
            printf("  %+10lld B %+8lld %-20s %s\n", (long long)(r->bytes[1] - r->bytes[0]),
                   (long long)(r->count[1] - r->count[0]), r->type,
                   rs_snapshot_site_text(&t, r->stack, site, sizeof(site)));
        }
    }
    status = 0;
out:
    free(types.rows);
    free(sites.rows);
    rs_snapshot_trace_close(&t);
    return status;
}
