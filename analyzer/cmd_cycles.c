/*
 * `refscope cycles [--json] [--all] [--limit N] [--depth N] [--dot OUT.dot] [--snapshot N] TRACE`:
 * CPython's cycle detection run offline on a heap snapshot (the last one by
 * default): unreachable groups with their members' types, refcounts, sizes
 * and allocation sites, classified as cyclic garbage not yet collected or as
 * uncollectable (in gc.garbage), with what they alone keep alive.
 *
 * A program that leaks cycles leaks thousands of identical ones, so groups
 * of one shape — the same kind and the same multiset of (member type,
 * allocation site) — are one entry with a count, ranked by total bytes, shown
 * through one representative (the largest). `--all` lists every group on its
 * own (count 1). Sites are what the reports print (rs_snapshot_site: the
 * innermost Python frame, --depth N frames). --dot draws the entries in the
 * style of objgraph's show_refs (and an SVG next to it when Graphviz is
 * installed). The report is built once (struct cycles_report) and rendered
 * as text, JSON or dot from it.
 */
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cli.h"
#include "commands.h"
#include "cycles.h"
#include "grow.h"
#include "snapshot.h"
#include "units.h"

#define CYCLES_MAX_DOT_NODES 300
#define CYCLES_MAX_MEMBERS_SHOWN 20
#define CYCLES_DEFAULT_LIMIT 20
#define CYCLES_TYPES_SHOWN 4      /* member types named in an entry's summary */

/* What makes two groups the same shape, per member. */
struct member_key {
    const char *type;
    uint32_t site;
};

/* One entry: groups of one shape (a single group with --all). */
struct cycle_shape {
    size_t rep;              /* index in cy.groups of its largest group       */
    size_t count;            /* groups                                         */
    size_t objects, held;    /* totals over its groups                         */
    uint64_t bytes, held_bytes;
};

struct cycles_report {
    const char *path;
    struct rs_snapshot_trace *t;
    const struct rs_snapshot *snap;
    struct rs_cycles cy;
    struct cycle_shape *shapes; /* largest total first                        */
    size_t nshapes;
    size_t garbage_groups, uncollectable_groups;
    struct member_key *keys;    /* per group, sorted: keys + key_start[g]     */
    size_t *key_start;
    int all;
};

/* ---- shapes ------------------------------------------------------------------------ */

static int cmp_member_key(const void *a, const void *b)
{
    const struct member_key *x = a, *y = b;
    int c = strcmp(x->type, y->type);
    return c ? c : (x->site > y->site) - (x->site < y->site);
}

/* Orders groups by shape; 0 when they have the same one. */
static int shape_compare(const struct cycles_report *r, size_t x, size_t y)
{
    const struct rs_cycle_group *gx = &r->cy.groups[x], *gy = &r->cy.groups[y];
    if (gx->uncollectable != gy->uncollectable)
        return gx->uncollectable ? -1 : 1;
    if (gx->n != gy->n)
        return gx->n < gy->n ? -1 : 1;
    for (size_t k = 0; k < gx->n; k++) {
        int c = cmp_member_key(&r->keys[r->key_start[x] + k], &r->keys[r->key_start[y] + k]);
        if (c)
            return c;
    }
    return 0;
}

static const struct cycles_report *sort_report; /* qsort has no context argument */

static int cmp_group_shape(const void *a, const void *b)
{
    size_t x = *(const size_t *)a, y = *(const size_t *)b;
    int c = shape_compare(sort_report, x, y);
    return c ? c : (x > y) - (x < y); /* each run stays in bytes order: its first is the largest */
}

/* By what collecting them would free: a small cycle that holds a big
 * buffer outranks a bigger cycle that holds nothing. */
static int cmp_shape(const void *a, const void *b)
{
    const struct cycle_shape *x = a, *y = b;
    if (x->bytes + x->held_bytes != y->bytes + y->held_bytes)
        return x->bytes + x->held_bytes > y->bytes + y->held_bytes ? -1 : 1;
    if (x->count != y->count)
        return x->count > y->count ? -1 : 1;
    return (x->rep > y->rep) - (x->rep < y->rep);
}

static void shape_add(struct cycle_shape *sh, const struct rs_cycle_group *g)
{
    sh->count++;
    sh->objects += g->n;
    sh->bytes += g->bytes;
    sh->held += g->held;
    sh->held_bytes += g->held_bytes;
}

static int report_build(struct cycles_report *r)
{
    const struct rs_snapshot *s = r->snap;
    size_t ng = r->cy.n, *order = NULL;
    int rc = -ENOMEM;
    r->keys = malloc((r->cy.unreachable ? r->cy.unreachable : 1) * sizeof(*r->keys));
    r->key_start = malloc((ng ? ng : 1) * sizeof(size_t));
    r->shapes = calloc(ng ? ng : 1, sizeof(*r->shapes));
    order = malloc((ng ? ng : 1) * sizeof(size_t));
    if (!r->keys || !r->key_start || !r->shapes || !order)
        goto out;
    size_t nk = 0;
    for (size_t g = 0; g < ng; g++) {
        const struct rs_cycle_group *grp = &r->cy.groups[g];
        r->key_start[g] = nk;
        for (size_t k = 0; k < grp->n; k++) {
            uint32_t i = grp->members[k];
            r->keys[nk].type = rs_snapshot_type_name(s, i);
            if ((rc = rs_snapshot_site(r->t, s->objs[i].stack, &r->keys[nk].site)) < 0)
                goto out;
            nk++;
        }
        rs_sort(r->keys + r->key_start[g], grp->n, sizeof(*r->keys), cmp_member_key);
        if (grp->uncollectable)
            r->uncollectable_groups++;
        else
            r->garbage_groups++;
        order[g] = g;
    }
    if (r->all) {
        for (size_t g = 0; g < ng; g++) {
            r->shapes[g].rep = g;
            shape_add(&r->shapes[g], &r->cy.groups[g]);
        }
        r->nshapes = ng;
        rs_sort(r->shapes, r->nshapes, sizeof(*r->shapes), cmp_shape);
    } else {
        sort_report = r;
        rs_sort(order, ng, sizeof(size_t), cmp_group_shape);
        for (size_t k = 0; k < ng; k++) {
            size_t g = order[k];
            if (!k || shape_compare(r, order[k - 1], g))
                r->shapes[r->nshapes++].rep = g;
            shape_add(&r->shapes[r->nshapes - 1], &r->cy.groups[g]);
        }
        rs_sort(r->shapes, r->nshapes, sizeof(*r->shapes), cmp_shape);
    }
    rc = 0;
out:
    free(order);
    return rc;
}

static void report_free(struct cycles_report *r)
{
    rs_cycles_free(&r->cy);
    free(r->keys);
    free(r->key_start);
    free(r->shapes);
}

static const char *kind_name(const struct rs_cycle_group *g)
{
    return g->uncollectable ? "uncollectable" : "garbage";
}

/* "2 Node, 1 dict": the representative's member types, most frequent
 * first (keys are sorted by type, so equal types are adjacent). */
static void member_types_text(const struct cycles_report *r, size_t g, char *buf, size_t len)
{
    const struct member_key *k = r->keys + r->key_start[g];
    size_t n = r->cy.groups[g].n, pos = 0, shown = 0, ntypes = 0;
    struct type_count {
        const char *type;
        size_t count;
    } types[CYCLES_TYPES_SHOWN + 1];
    buf[0] = 0;
    for (size_t i = 0; i < n; i++) {
        if (i && !strcmp(k[i].type, k[i - 1].type))
            continue;
        size_t c = 1;
        while (i + c < n && !strcmp(k[i + c].type, k[i].type))
            c++;
        ntypes++;
        /* keep the CYCLES_TYPES_SHOWN most frequent, insertion-sorted */
        size_t at = shown < CYCLES_TYPES_SHOWN ? shown++ : CYCLES_TYPES_SHOWN;
        types[at].type = k[i].type;
        types[at].count = c;
        for (; at > 0 && types[at].count > types[at - 1].count; at--) {
            struct type_count tmp = types[at];
            types[at] = types[at - 1];
            types[at - 1] = tmp;
        }
    }
    for (size_t i = 0; i < shown && pos < len; i++)
        pos += (size_t)snprintf(buf + pos, len - pos, "%s%zu %s", i ? ", " : "", types[i].count, types[i].type);
    if (ntypes > shown && pos < len)
        snprintf(buf + pos, len - pos, ", %zu other types", ntypes - shown);
}

/* ---- JSON --------------------------------------------------------------------------- */

static json_t *group_objects_json(const struct cycles_report *r, const struct rs_cycle_group *grp)
{
    const struct rs_snapshot *s = r->snap;
    json_t *objs = json_array();
    for (size_t k = 0; k < grp->n; k++) {
        uint32_t i = grp->members[k], site = 0;
        const struct rs_snap_object *o = &s->objs[i];
        json_t *oo = json_object();
        char addr[32], desc[160];
        snprintf(addr, sizeof(addr), "0x%llx", (unsigned long long)o->addr);
        rs_snapshot_site(r->t, o->stack, &site); /* already resolved by report_build */
        json_object_set_new(oo, "address", json_string(addr));
        json_object_set_new(oo, "type", json_string(rs_snapshot_type_name(s, i)));
        json_object_set_new(oo, "description", json_string(rs_snapshot_describe(s, i, desc, sizeof(desc))));
        json_object_set_new(oo, "refcount", json_integer((json_int_t)o->refcnt));
        json_object_set_new(oo, "size", json_integer(o->size));
        json_object_set_new(oo, "scc", json_integer(r->cy.comp[i]));
        json_object_set_new(oo, "in_gc_garbage", json_boolean(o->flags & RS_SNAP_OBJ_GARBAGE));
        json_object_set_new(oo, "site", json_string(rs_snapshot_site_name(r->t, site)));
        json_object_set_new(oo, "frames", rs_snapshot_frames_json(r->t, o->stack));
        json_array_append_new(objs, oo);
    }
    return objs;
}

/* Cyclic SCCs of a group as lists of member positions. */
static json_t *group_sccs_json(const struct cycles_report *r, const struct rs_cycle_group *grp)
{
    const struct rs_cycles *cy = &r->cy;
    json_t *sccs = json_array();
    for (size_t k = 0; k < grp->n; k++) {
        uint32_t comp = cy->comp[grp->members[k]];
        if (!cy->cyclic[comp])
            continue;
        int first = 1;
        for (size_t m = 0; m < k && first; m++)
            first = cy->comp[grp->members[m]] != comp;
        if (!first)
            continue;
        json_t *sc = json_array();
        for (size_t m = k; m < grp->n; m++)
            if (cy->comp[grp->members[m]] == comp)
                json_array_append_new(sc, json_integer((json_int_t)m));
        json_array_append_new(sccs, sc);
    }
    return sccs;
}

static json_t *render_json(const struct cycles_report *r)
{
    const struct rs_snapshot *s = r->snap;
    json_t *root = json_object(), *groups = json_array(), *all = json_array();
    json_object_set_new(root, "trace", json_string(r->path));
    json_object_set_new(root, "snapshot", json_integer(s->seq));
    json_object_set_new(root, "gc_enabled", s->gc_enabled == 255 ? json_null() : json_boolean(s->gc_enabled));
    json_object_set_new(root, "objects", json_integer((json_int_t)s->nobjs));
    json_object_set_new(root, "unreachable", json_integer((json_int_t)r->cy.unreachable));
    json_object_set_new(root, "unreachable_bytes", json_integer((json_int_t)r->cy.unreachable_bytes));
    json_object_set_new(root, "held_objects", json_integer((json_int_t)r->cy.held));
    json_object_set_new(root, "held_bytes", json_integer((json_int_t)r->cy.held_bytes));
    json_object_set_new(root, "group_count", json_integer((json_int_t)r->cy.n));
    json_object_set_new(root, "garbage_groups", json_integer((json_int_t)r->garbage_groups));
    json_object_set_new(root, "uncollectable_groups", json_integer((json_int_t)r->uncollectable_groups));
    json_object_set_new(root, "aggregated", json_boolean(!r->all));
    json_object_set_new(root, "depth", json_integer(r->t->site_depth));
    for (size_t k = 0; k < rs_snapshots_count(r->t->snaps); k++) {
        const struct rs_snapshot *x = rs_snapshots_get(r->t->snaps, k);
        json_t *so = json_object();
        json_object_set_new(so, "snapshot", json_integer(x->seq));
        json_object_set_new(so, "reason", json_string(rs_snapshot_reason_name(x->reason)));
        json_object_set_new(so, "objects", json_integer((json_int_t)x->nobjs));
        json_object_set_new(so, "references", json_integer((json_int_t)x->nedges));
        json_object_set_new(so, "time_ns", json_integer((json_int_t)x->time_ns));
        json_object_set_new(so, "duration_ns", json_integer((json_int_t)x->duration_ns));
        json_object_set_new(so, "record_bytes", json_integer((json_int_t)x->record_bytes));
        json_object_set_new(so, "status", json_integer(x->status));
        json_array_append_new(all, so);
    }
    json_object_set_new(root, "snapshots", all);
    for (size_t k = 0; k < r->nshapes; k++) {
        const struct cycle_shape *sh = &r->shapes[k];
        const struct rs_cycle_group *grp = &r->cy.groups[sh->rep];
        json_t *go = json_object();
        json_object_set_new(go, "kind", json_string(kind_name(grp)));
        json_object_set_new(go, "count", json_integer((json_int_t)sh->count));
        json_object_set_new(go, "bytes", json_integer((json_int_t)sh->bytes));
        json_object_set_new(go, "total_objects", json_integer((json_int_t)sh->objects));
        json_object_set_new(go, "held_objects", json_integer((json_int_t)sh->held));
        json_object_set_new(go, "held_bytes", json_integer((json_int_t)sh->held_bytes));
        json_object_set_new(go, "members", json_integer((json_int_t)grp->n));
        json_object_set_new(go, "group_bytes", json_integer((json_int_t)grp->bytes));
        json_object_set_new(go, "cycles", json_integer((json_int_t)grp->cycles));
        json_object_set_new(go, "objects", group_objects_json(r, grp));
        json_object_set_new(go, "sccs", group_sccs_json(r, grp));
        json_array_append_new(groups, go);
    }
    json_object_set_new(root, "groups", groups);
    return root;
}

/* ---- text ---------------------------------------------------------------------------- */

static void render_text(const struct cycles_report *r, size_t limit)
{
    const struct rs_snapshot *s = r->snap;
    const struct rs_cycles *cy = &r->cy;
    char b[32], hb[32], tb[32], depth[64];
    printf("snapshot %u (%s, at %.3f s): %zu objects", s->seq, rs_snapshot_reason_name(s->reason), s->time_ns / 1e9,
           s->nobjs);
    if (!cy->n) {
        printf("; nothing is unreachable: no cyclic garbage waits for the collector\n");
        return;
    }
    printf("; %zu unreachable (%s) in %zu group%s\n", cy->unreachable,
           rs_units_bytes(cy->unreachable_bytes, b, sizeof(b)), cy->n, cy->n == 1 ? "" : "s");
    if (r->garbage_groups)
        printf("  %zu group%s of cyclic garbage, not yet collected: %s\n", r->garbage_groups,
               r->garbage_groups == 1 ? "" : "s",
               s->gc_enabled == 0   ? "the collector was disabled, nothing frees them"
               : s->gc_enabled == 1 ? "the collector's next run frees them"
                                    : "the collector frees them when it runs");
    if (r->uncollectable_groups)
        printf("  %zu group%s uncollectable: held in gc.garbage, never freed\n", r->uncollectable_groups,
               r->uncollectable_groups == 1 ? "" : "s");
    if (cy->held)
        printf("  they alone keep %zu more objects (%s) alive; collecting all of it frees %s\n", cy->held,
               rs_units_bytes(cy->held_bytes, hb, sizeof(hb)),
               rs_units_bytes(cy->unreachable_bytes + cy->held_bytes, tb, sizeof(tb)));
    rs_snapshot_site_depth_text(r->t, depth, sizeof(depth));
    if (r->all)
        printf("every group on its own, most bytes freed first\n");
    else
        printf("%zu group%s in %zu shape%s (same kind, member types and allocation sites, %s),\n"
               "most bytes freed first; --all lists every group\n",
               cy->n, cy->n == 1 ? "" : "s", r->nshapes, r->nshapes == 1 ? "" : "s", depth);
    for (size_t k = 0; k < r->nshapes && k < limit; k++) {
        const struct cycle_shape *sh = &r->shapes[k];
        const struct rs_cycle_group *grp = &cy->groups[sh->rep];
        char types[256];
        member_types_text(r, sh->rep, types, sizeof(types));
        printf("\n#%zu %s: %zu group%s, %s", k + 1,
               grp->uncollectable ? "uncollectable (in gc.garbage)" : "garbage, not yet collected", sh->count,
               sh->count == 1 ? "" : "s", rs_units_bytes(sh->bytes, b, sizeof(b)));
        if (sh->held)
            printf(" (+%s they alone keep alive)", rs_units_bytes(sh->held_bytes, hb, sizeof(hb)));
        printf("\n   %s%zu object%s (%s), %zu cycle%s, %s:\n", sh->count > 1 ? "each like this one: " : "", grp->n,
               grp->n == 1 ? "" : "s", types, grp->cycles, grp->cycles == 1 ? "" : "s",
               rs_units_bytes(grp->bytes, b, sizeof(b)));
        for (size_t m = 0; m < grp->n && m < CYCLES_MAX_MEMBERS_SHOWN; m++) {
            uint32_t i = grp->members[m], site = 0;
            const struct rs_snap_object *o = &s->objs[i];
            char desc[160];
            rs_snapshot_site(r->t, o->stack, &site); /* already resolved by report_build */
            printf("   %-30s refcount %-4llu %9s  0x%llx  %s\n", rs_snapshot_describe(s, i, desc, sizeof(desc)),
                   (unsigned long long)o->refcnt, rs_units_bytes(o->size, b, sizeof(b)),
                   (unsigned long long)o->addr, rs_snapshot_site_name(r->t, site));
        }
        if (grp->n > CYCLES_MAX_MEMBERS_SHOWN)
            printf("   ... %zu more members (--json)\n", grp->n - CYCLES_MAX_MEMBERS_SHOWN);
    }
    if (r->nshapes > limit)
        printf("\n... %zu more %s (--limit N, --json)\n", r->nshapes - limit, r->all ? "groups" : "shapes");
}

/* ---- dot ------------------------------------------------------------------------------ */

static void dot_escape(FILE *f, const char *s)
{
    for (; *s; s++) {
        if (*s == '"' || *s == '\\')
            fputc('\\', f);
        if ((unsigned char)*s >= 0x20)
            fputc(*s, f);
    }
}

/* One cluster per entry: its representative group. Returns 0, or -1 after
 * one line on stderr. */
static int write_dot(const char *path, const struct cycles_report *r)
{
    const struct rs_snapshot *s = r->snap;
    const struct rs_cycles *c = &r->cy;
    FILE *f = fopen(path, "w");
    if (!f) {
        fprintf(stderr, "refscope cycles: cannot write %s: %s\n", path, strerror(errno));
        return -1;
    }
    fprintf(f, "digraph ObjectGraph {\n  node[shape=box, style=filled, fillcolor=white];\n");
    size_t drawn = 0;
    for (size_t k = 0; k < r->nshapes && drawn < CYCLES_MAX_DOT_NODES; k++) {
        const struct rs_cycle_group *grp = &c->groups[r->shapes[k].rep];
        fprintf(f, "  subgraph cluster_%zu {\n    label=\"#%zu %s", k, k + 1, kind_name(grp));
        if (r->shapes[k].count > 1)
            fprintf(f, ", %zu groups like this", r->shapes[k].count);
        fprintf(f, "\";\n");
        for (size_t m = 0; m < grp->n && drawn < CYCLES_MAX_DOT_NODES; m++, drawn++) {
            uint32_t i = grp->members[m];
            const struct rs_snap_object *o = &s->objs[i];
            char desc[160];
            rs_snapshot_describe(s, i, desc, sizeof(desc));
            fprintf(f, "    o%llx [label=\"", (unsigned long long)o->addr);
            dot_escape(f, desc);
            fprintf(f, "\\nrefcount %llu, %u bytes\", fillcolor=\"%s\"];\n", (unsigned long long)o->refcnt,
                    o->size, grp->uncollectable ? "#ff9999" : "#ffcc88");
        }
        fprintf(f, "  }\n");
        for (size_t m = 0; m < grp->n; m++) {
            uint32_t i = grp->members[m];
            for (uint64_t e = s->edge_start[i]; e < s->edge_start[i + 1]; e++) {
                uint32_t j = s->edges[e];
                if (j == RS_SNAP_NONE || c->comp[j] == RS_SNAP_NONE)
                    continue;
                char lab[160];
                rs_snapshot_describe_edge(s, i, e, lab, sizeof(lab));
                fprintf(f, "  o%llx -> o%llx [label=\"", (unsigned long long)s->objs[i].addr,
                        (unsigned long long)s->objs[j].addr);
                dot_escape(f, lab);
                fprintf(f, "\"];\n");
            }
        }
    }
    fprintf(f, "}\n");
    return rs_cli_close_output(f, "cycles", path);
}

/* OUT.dot -> OUT.svg when `dot` is on PATH; silently skipped otherwise. */
static void write_svg(const char *dot_path)
{
    char svg[4096];
    size_t n = strlen(dot_path);
    if (n + 5 > sizeof(svg))
        return;
    memcpy(svg, dot_path, n + 1);
    if (n > 4 && !strcmp(svg + n - 4, ".dot"))
        svg[n - 4] = 0;
    strcat(svg, ".svg");
    pid_t pid = fork();
    if (pid == 0) {
        execlp("dot", "dot", "-Tsvg", "-o", svg, dot_path, (char *)NULL);
        _exit(127);
    }
    if (pid > 0) {
        int st;
        waitpid(pid, &st, 0);
        if (WIFEXITED(st) && WEXITSTATUS(st) == 0)
            fprintf(stderr, "refscope cycles: wrote %s\n", svg);
    }
}

/* ---- the command ------------------------------------------------------------------- */

int cmd_cycles(int argc, char **argv)
{
    int json = 0, all = 0, limit = -1, depth = 1;
    const char *want = NULL; /* --snapshot N */
    const char *dot = NULL;
    const struct rs_opt opts[] = {
        {"json", 'j', RS_OPT_FLAG, &json, 0, 0, NULL},
        {"all", 'a', RS_OPT_FLAG, &all, 0, 0, NULL},
        {"limit", 'n', RS_OPT_INT, &limit, 1, INT_MAX, NULL}, /* default -1: every group */
        {"depth", 'D', RS_OPT_INT, &depth, 0, INT_MAX, NULL},
        {"dot", 'd', RS_OPT_STR, &dot, 0, 0, NULL},
        {"snapshot", 's', RS_OPT_STR, &want, 0, 0, NULL},
        RS_OPT_END,
    };
    const struct rs_cli cli = { "cycles", opts, "TRACE", 1, 1, 0 };
    if (rs_cli_parse(&cli, argc, argv) < 0)
        return 2;
    const char *path = argv[1];
    struct rs_snapshot_trace t;
    if (rs_snapshot_trace_open("cycles", path, depth, &t) < 0)
        return 1;
    int status = 1;
    struct cycles_report r = {.path = path, .t = &t, .all = all};
    size_t count = rs_snapshots_count(t.snaps);
    if (want)
        r.snap = rs_snapshots_pick(t.snaps, "cycles", path, want);
    else if (count)
        r.snap = rs_snapshots_get(t.snaps, count - 1);
    else
        fprintf(stderr, "refscope cycles: %s: the trace has no heap snapshot (was the program Python? "
                        "were snapshots off, REFSCOPE_SNAPSHOTS=0?)\n", path);
    if (!r.snap)
        goto out;
    if (rs_cycles_find(r.snap, &r.cy) < 0 || report_build(&r) < 0) {
        fprintf(stderr, "refscope cycles: out of memory\n");
        goto out;
    }
    if (dot) {
        if (write_dot(dot, &r) < 0)
            goto out;
        write_svg(dot);
    }
    if (json) {
        if (rs_cli_print_json("cycles", render_json(&r)) < 0)
            goto out;
    } else {
        size_t shown = limit > 0 ? (size_t)limit : all ? SIZE_MAX : CYCLES_DEFAULT_LIMIT;
        render_text(&r, shown);
    }
    status = 0;
out:
    report_free(&r);
    rs_snapshot_trace_close(&t);
    return status;
}
