/*
 * `refscope diff [--json] [--limit N] [--depth N] TRACE [SNAP_A SNAP_B]`:
 * what grew between two heap snapshots (the first and the last by default):
 * object counts and bytes per type, and per type and allocation site as the
 * report prints it (rs_snapshot_site: the innermost Python frame, --depth N
 * frames) — what objgraph's show_growth and tracemalloc's compare_to report.
 * Every object of a snapshot counts, unreachable garbage included: it
 * takes memory too (`refscope cycles` tells what it is).
 */
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "commands.h"
#include "grow.h"
#include "snapshot.h"

struct diff_row {
    const char *type;
    uint32_t site;             /* rs_snapshot_site id; UINT32_MAX: per type only */
    uint32_t stack;            /* one stack of that site (JSON frames)           */
    int64_t count[2], bytes[2];
};

struct diff_table {
    struct diff_row *rows;
    size_t n, cap;
};

/* Snapshots have few distinct (type, site) pairs against many objects, so
 * rows are appended and merged by sorting now and then. */
static int row_cmp(const void *a, const void *b)
{
    const struct diff_row *x = a, *y = b;
    int c = strcmp(x->type, y->type);
    if (c)
        return c;
    return x->site < y->site ? -1 : x->site > y->site;
}

static int table_add(struct diff_table *t, const struct diff_row *row)
{
    if (t->n == t->cap) {
        size_t c = t->cap ? t->cap * 2 : 1024;
        struct diff_row *r = realloc(t->rows, c * sizeof(*r));
        if (!r)
            return -ENOMEM;
        t->rows = r;
        t->cap = c;
    }
    t->rows[t->n++] = *row;
    return 0;
}

/* Sort and merge equal keys. */
static void table_merge(struct diff_table *t)
{
    if (!t->n)
        return;
    rs_sort(t->rows, t->n, sizeof(*t->rows), row_cmp);
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
static int collect(struct rs_snapshot_trace *tr, struct diff_table *types, struct diff_table *sites,
                   const struct rs_snapshot *s, int side)
{
    struct diff_table tt = {0}, st = {0};
    int rc = 0;
    for (size_t i = 0; i < s->nobjs && rc >= 0; i++) {
        const struct rs_snap_object *o = &s->objs[i];
        struct diff_row row = {.type = rs_snapshot_type_name(s, (uint32_t)i), .site = UINT32_MAX,
                               .stack = o->stack};
        row.count[side] = 1;
        row.bytes[side] = o->size;
        if ((rc = table_add(&tt, &row)) < 0 || (rc = rs_snapshot_site(tr, o->stack, &row.site)) < 0 ||
            (rc = table_add(&st, &row)) < 0)
            break;
        if (tt.n > 65536)
            table_merge(&tt);
        if (st.n > 65536)
            table_merge(&st);
    }
    table_merge(&tt);
    table_merge(&st);
    for (size_t i = 0; i < tt.n && rc >= 0; i++)
        rc = table_add(types, &tt.rows[i]);
    for (size_t i = 0; i < st.n && rc >= 0; i++)
        rc = table_add(sites, &st.rows[i]);
    free(tt.rows);
    free(st.rows);
    return rc;
}

static int growth_cmp(const void *a, const void *b)
{
    const struct diff_row *x = a, *y = b;
    int64_t dx = x->bytes[1] - x->bytes[0], dy = y->bytes[1] - y->bytes[0];
    if (dx != dy)
        return dx > dy ? -1 : 1;
    int64_t cx = x->count[1] - x->count[0], cy = y->count[1] - y->count[0];
    if (cx != cy)
        return cx > cy ? -1 : 1;
    return row_cmp(a, b);
}

/* Keeps rows that grew in count or bytes, sorted by byte growth. */
static void keep_growth(struct diff_table *t)
{
    size_t w = 0;
    for (size_t i = 0; i < t->n; i++)
        if (t->rows[i].count[1] > t->rows[i].count[0] || t->rows[i].bytes[1] > t->rows[i].bytes[0])
            t->rows[w++] = t->rows[i];
    t->n = w;
    rs_sort(t->rows, t->n, sizeof(*t->rows), growth_cmp);
}

/* ---- the model and its renderers ------------------------------------------------- */

struct diff_report {
    const char *path;
    struct rs_snapshot_trace *t;
    const struct rs_snapshot *a, *b;
    struct diff_table types, sites;  /* rows that grew, most bytes first */
    size_t limit;
};

static json_t *row_json(const struct diff_report *r, const struct diff_row *row, int with_site)
{
    json_t *o = json_object();
    json_object_set_new(o, "type", json_string(row->type));
    if (with_site) {
        json_object_set_new(o, "site", json_string(rs_snapshot_site_name(r->t, row->site)));
        json_object_set_new(o, "frames", rs_snapshot_frames_json(r->t, row->stack));
    }
    json_object_set_new(o, "count_a", json_integer(row->count[0]));
    json_object_set_new(o, "count_b", json_integer(row->count[1]));
    json_object_set_new(o, "count_delta", json_integer(row->count[1] - row->count[0]));
    json_object_set_new(o, "bytes_a", json_integer(row->bytes[0]));
    json_object_set_new(o, "bytes_b", json_integer(row->bytes[1]));
    json_object_set_new(o, "bytes_delta", json_integer(row->bytes[1] - row->bytes[0]));
    return o;
}

static double seconds_between(const struct rs_snapshot *a, const struct rs_snapshot *b)
{
    return ((double)b->time_ns - (double)a->time_ns) / 1e9;
}

static json_t *render_json(const struct diff_report *r)
{
    json_t *root = json_object(), *ta = json_array(), *sa = json_array();
    json_object_set_new(root, "trace", json_string(r->path));
    json_object_set_new(root, "a", json_integer(r->a->seq));
    json_object_set_new(root, "b", json_integer(r->b->seq));
    json_object_set_new(root, "seconds", json_real(seconds_between(r->a, r->b)));
    json_object_set_new(root, "depth", json_integer(r->t->site_depth));
    json_object_set_new(root, "types_grown", json_integer((json_int_t)r->types.n));
    json_object_set_new(root, "sites_grown", json_integer((json_int_t)r->sites.n));
    for (size_t i = 0; i < r->types.n && i < r->limit; i++)
        json_array_append_new(ta, row_json(r, &r->types.rows[i], 0));
    for (size_t i = 0; i < r->sites.n && i < r->limit; i++)
        json_array_append_new(sa, row_json(r, &r->sites.rows[i], 1));
    json_object_set_new(root, "types", ta);
    json_object_set_new(root, "sites", sa);
    return root;
}

static void render_more(size_t n, size_t limit)
{
    if (n > limit)
        printf("  ... %zu more (--limit N)\n", n - limit);
}

static void render_text(const struct diff_report *r)
{
    const struct rs_snapshot *a = r->a, *b = r->b;
    char depth[64], db[32], bb[32];
    double dt = seconds_between(a, b);
    printf("growth from snapshot %u (%s, %.3f s) to snapshot %u (%s, %.3f s): %.3f s %s\n", a->seq,
           rs_snapshot_reason_name(a->reason), a->time_ns / 1e9, b->seq, rs_snapshot_reason_name(b->reason),
           b->time_ns / 1e9, dt < 0 ? -dt : dt, dt < 0 ? "earlier (B was taken before A)" : "later");
    if (!r->types.n) {
        printf("\nnothing grew: no type has more objects or bytes in snapshot %u than in snapshot %u\n", b->seq,
               a->seq);
        return;
    }
    printf("\nby type, most bytes gained first:\n  %-32s %10s %10s %12s\n", "type", "objects", "+objects",
           "+bytes");
    for (size_t i = 0; i < r->types.n && i < r->limit; i++) {
        const struct diff_row *row = &r->types.rows[i];
        printf("  %-32s %10lld %+10lld %12s\n", row->type, (long long)row->count[1],
               (long long)(row->count[1] - row->count[0]),
               rs_snapshot_delta_bytes_text(row->bytes[1] - row->bytes[0], db, sizeof(db)));
    }
    render_more(r->types.n, r->limit);
    rs_snapshot_site_depth_text(r->t, depth, sizeof(depth));
    printf("\nby type and allocation site (%s):\n  %12s %10s  %-24s %s\n", depth, "+bytes", "+objects", "type",
           "site");
    for (size_t i = 0; i < r->sites.n && i < r->limit; i++) {
        const struct diff_row *row = &r->sites.rows[i];
        snprintf(bb, sizeof(bb), "%s", rs_snapshot_delta_bytes_text(row->bytes[1] - row->bytes[0], db, sizeof(db)));
        printf("  %12s %+10lld  %-24s %s\n", bb, (long long)(row->count[1] - row->count[0]), row->type,
               rs_snapshot_site_name(r->t, row->site));
    }
    render_more(r->sites.n, r->limit);
}

int cmd_diff(int argc, char **argv)
{
    int json = 0, limit = 20, depth = 1;
    const struct rs_opt opts[] = {
        {"json", 'j', RS_OPT_FLAG, &json, 0, 0, NULL},
        {"limit", 'n', RS_OPT_INT, &limit, 1, INT_MAX, NULL},
        {"depth", 'D', RS_OPT_INT, &depth, 0, INT_MAX, NULL},
        RS_OPT_END,
    };
    const struct rs_cli cli = { "diff", opts, "TRACE [SNAP_A SNAP_B]", 1, 3, 0 };
    int rest = rs_cli_parse(&cli, argc, argv);
    if (rest < 0)
        return 2;
    if (rest == 2) {
        fprintf(stderr, "refscope diff: give two snapshots or none (see 'refscope diff --help')\n");
        return 2;
    }
    const char *path = argv[1];
    struct rs_snapshot_trace t;
    if (rs_snapshot_trace_open("diff", path, depth, &t) < 0)
        return 1;
    int status = 1;
    struct diff_report r = {.path = path, .t = &t, .limit = (size_t)limit};
    size_t count = rs_snapshots_count(t.snaps);
    if (rest == 3) {
        if (!(r.a = rs_snapshots_pick(t.snaps, "diff", path, argv[2])) ||
            !(r.b = rs_snapshots_pick(t.snaps, "diff", path, argv[3])))
            goto out;
    } else if (count < 2) {
        fprintf(stderr,
                "refscope diff: %s: the trace has %zu heap snapshot%s, diff needs two: take more with "
                "`refscope run --snapshot-interval SECONDS`, or `kill -USR2 PID` while the program runs\n",
                path, count, count == 1 ? "" : "s");
        goto out;
    } else {
        r.a = rs_snapshots_get(t.snaps, 0);
        r.b = rs_snapshots_get(t.snaps, count - 1);
    }
    if (collect(&t, &r.types, &r.sites, r.a, 0) < 0 || collect(&t, &r.types, &r.sites, r.b, 1) < 0) {
        fprintf(stderr, "refscope diff: out of memory\n");
        goto out;
    }
    table_merge(&r.types);
    table_merge(&r.sites);
    keep_growth(&r.types);
    keep_growth(&r.sites);
    if (json) {
        if (rs_cli_print_json("diff", render_json(&r)) < 0)
            goto out;
    } else {
        render_text(&r);
    }
    status = 0;
out:
    free(r.types.rows);
    free(r.sites.rows);
    rs_snapshot_trace_close(&t);
    return status;
}
