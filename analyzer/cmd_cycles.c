/*
 * `refscope cycles [--json] [--dot OUT.dot] [--snapshot N] TRACE`: CPython's
 * cycle detection run offline on a heap snapshot (the last one by default):
 * unreachable groups with their members' types, refcounts, sizes and
 * allocation sites, classified as cyclic garbage not yet collected or as
 * uncollectable (in gc.garbage). --dot draws the groups in the style of
 * objgraph's show_refs (and an SVG next to it when Graphviz is installed).
 */
#include <getopt.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "commands.h"
#include "cycles.h"
#include "snapshot.h"

#define CYCLES_MAX_DOT_NODES 300

static void dot_escape(FILE *f, const char *s)
{
    for (; *s; s++) {
        if (*s == '"' || *s == '\\')
            fputc('\\', f);
        if ((unsigned char)*s >= 0x20)
            fputc(*s, f);
    }
}

static int write_dot(const char *path, const struct rs_snapshot *s, const struct rs_cycles *c)
{
    FILE *f = fopen(path, "w");
    if (!f)
        return -1;
    fprintf(f, "digraph ObjectGraph {\n  node[shape=box, style=filled, fillcolor=white];\n");
    size_t drawn = 0;
    for (size_t g = 0; g < c->n && drawn < CYCLES_MAX_DOT_NODES; g++) {
        const struct rs_cycle_group *grp = &c->groups[g];
        fprintf(f, "  subgraph cluster_%zu {\n    label=\"%s group %zu\";\n", g,
                grp->uncollectable ? "uncollectable" : "garbage", g + 1);
        for (size_t k = 0; k < grp->n && drawn < CYCLES_MAX_DOT_NODES; k++, drawn++) {
            uint32_t i = grp->members[k];
            const struct rs_snap_object *o = &s->objs[i];
            char desc[160];
            rs_snapshot_describe(s, i, desc, sizeof(desc));
            fprintf(f, "    o%llx [label=\"", (unsigned long long)o->addr);
            dot_escape(f, desc);
            fprintf(f, "\\nrefcount %llu, %u bytes\", fillcolor=\"%s\"];\n", (unsigned long long)o->refcnt,
                    o->size, grp->uncollectable ? "#ff9999" : "#ffcc88");
        }
        fprintf(f, "  }\n");
        for (size_t k = 0; k < grp->n; k++) {
            uint32_t i = grp->members[k];
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
    return fclose(f) ? -1 : 0;
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

int cmd_cycles(int argc, char **argv)
{
    int json = 0, want = -1;
    const char *dot = NULL;
    static const struct option longopts[] = {
        {"json", no_argument, NULL, 'j'},
        {"dot", required_argument, NULL, 'd'},
        {"snapshot", required_argument, NULL, 's'},
        {NULL, 0, NULL, 0},
    };
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "jd:s:", longopts, NULL)) != -1) {
        if (c == 'j')
            json = 1;
        else if (c == 'd')
            dot = optarg;
        else if (c == 's')
            want = atoi(optarg);
        else
            return 2;
    }
    if (optind + 1 != argc) {
        fprintf(stderr, "usage: refscope cycles [--json] [--dot OUT.dot] [--snapshot N] TRACE\n");
        return 2;
    }
    const char *path = argv[optind];
    struct rs_snapshot_trace t;
    char err[512];
    if (rs_snapshot_trace_open(path, &t, err, sizeof(err)) < 0) {
        fprintf(stderr, "refscope cycles: %s\n", err);
        return 1;
    }
    int status = 1;
    size_t count = rs_snapshots_count(t.snaps);
    const struct rs_snapshot *s = want >= 0 ? rs_snapshots_find(t.snaps, (uint32_t)want)
                                            : rs_snapshots_get(t.snaps, count ? count - 1 : 0);
    if (!s) {
        fprintf(stderr, "refscope cycles: %s: %s\n", path,
                count ? "no snapshot with that number" : "the trace has no heap snapshot (was the program Python?)");
        goto out;
    }
    struct rs_cycles cy;
    if (rs_cycles_find(s, &cy) < 0) {
        fprintf(stderr, "refscope cycles: out of memory\n");
        goto out;
    }
    if (dot) {
        if (write_dot(dot, s, &cy) < 0) {
            fprintf(stderr, "refscope cycles: cannot write %s\n", dot);
            rs_cycles_free(&cy);
            goto out;
        }
        write_svg(dot);
    }
    size_t garbage = 0, uncollectable = 0;
    for (size_t g = 0; g < cy.n; g++) {
        if (cy.groups[g].uncollectable)
            uncollectable++;
        else
            garbage++;
    }
    if (json) {
        json_t *root = json_object(), *groups = json_array();
        json_object_set_new(root, "trace", json_string(path));
        json_object_set_new(root, "snapshot", json_integer(s->seq));
        json_object_set_new(root, "gc_enabled", s->gc_enabled == 255 ? json_null() : json_boolean(s->gc_enabled));
        json_object_set_new(root, "objects", json_integer((json_int_t)s->nobjs));
        json_object_set_new(root, "unreachable", json_integer((json_int_t)cy.unreachable));
        json_t *all = json_array();
        static const char *const reasons[] = {"exit", "signal", "interval"};
        for (size_t k = 0; k < count; k++) {
            const struct rs_snapshot *x = rs_snapshots_get(t.snaps, k);
            json_t *so = json_object();
            json_object_set_new(so, "snapshot", json_integer(x->seq));
            json_object_set_new(so, "reason", json_string(x->reason < 3 ? reasons[x->reason] : "?"));
            json_object_set_new(so, "objects", json_integer((json_int_t)x->nobjs));
            json_object_set_new(so, "references", json_integer((json_int_t)x->nedges));
            json_object_set_new(so, "time_ns", json_integer((json_int_t)x->time_ns));
            json_object_set_new(so, "duration_ns", json_integer((json_int_t)x->duration_ns));
            json_object_set_new(so, "record_bytes", json_integer((json_int_t)x->record_bytes));
            json_object_set_new(so, "status", json_integer(x->status));
            json_array_append_new(all, so);
        }
        json_object_set_new(root, "snapshots", all);
        for (size_t g = 0; g < cy.n; g++) {
            const struct rs_cycle_group *grp = &cy.groups[g];
            json_t *go = json_object(), *objs = json_array(), *sccs = json_array();
            json_object_set_new(go, "kind", json_string(grp->uncollectable ? "uncollectable" : "garbage"));
            json_object_set_new(go, "count", json_integer((json_int_t)grp->n));
            json_object_set_new(go, "bytes", json_integer((json_int_t)grp->bytes));
            json_object_set_new(go, "cycles", json_integer((json_int_t)grp->cycles));
            for (size_t k = 0; k < grp->n; k++) {
                uint32_t i = grp->members[k];
                const struct rs_snap_object *o = &s->objs[i];
                json_t *oo = json_object();
                char addr[32], desc[160];
                snprintf(addr, sizeof(addr), "0x%llx", (unsigned long long)o->addr);
                json_object_set_new(oo, "address", json_string(addr));
                json_object_set_new(oo, "type", json_string(rs_snapshot_type_name(s, i)));
                json_object_set_new(oo, "description", json_string(rs_snapshot_describe(s, i, desc, sizeof(desc))));
                json_object_set_new(oo, "refcount", json_integer((json_int_t)o->refcnt));
                json_object_set_new(oo, "size", json_integer(o->size));
                json_object_set_new(oo, "scc", json_integer(cy.comp[i]));
                json_object_set_new(oo, "in_gc_garbage", json_boolean(o->flags & RS_SNAP_OBJ_GARBAGE));
                json_object_set_new(oo, "frames", rs_snapshot_frames_json(&t, o->stack));
                json_array_append_new(objs, oo);
            }
            /* cyclic SCCs as lists of member positions */
            for (size_t k = 0; k < grp->n; k++) {
                uint32_t comp = cy.comp[grp->members[k]];
                if (!cy.cyclic[comp])
                    continue;
                int first = 1;
                for (size_t m = 0; m < k && first; m++)
                    first = cy.comp[grp->members[m]] != comp;
                if (!first)
                    continue;
                json_t *sc = json_array();
                for (size_t m = k; m < grp->n; m++)
                    if (cy.comp[grp->members[m]] == comp)
                        json_array_append_new(sc, json_integer((json_int_t)m));
                json_array_append_new(sccs, sc);
            }
            json_object_set_new(go, "objects", objs);
            json_object_set_new(go, "sccs", sccs);
            json_array_append_new(groups, go);
        }
        json_object_set_new(root, "groups", groups);
        json_dumpf(root, stdout, JSON_INDENT(2));
        putchar('\n');
        json_decref(root);
    } else {
        char b[32];
        printf("snapshot %u: %zu objects, %zu unreachable in %zu groups (%zu cyclic garbage not yet collected, "
               "%zu uncollectable)%s\n",
               s->seq, s->nobjs, cy.unreachable, cy.n, garbage, uncollectable,
               s->gc_enabled == 0 ? "; the collector was disabled" : "");
        for (size_t g = 0; g < cy.n && g < 50; g++) {
            const struct rs_cycle_group *grp = &cy.groups[g];
            printf("\n%s: %zu objects, %s, %zu cycle%s\n",
                   grp->uncollectable ? "uncollectable (in gc.garbage)" : "garbage (not yet collected)", grp->n,
                   rs_snapshot_bytes_text(grp->bytes, b, sizeof(b)), grp->cycles, grp->cycles == 1 ? "" : "s");
            for (size_t k = 0; k < grp->n && k < 20; k++) {
                uint32_t i = grp->members[k];
                const struct rs_snap_object *o = &s->objs[i];
                char desc[160], site[512];
                printf("  %-30s refcount %-4llu %6u B  0x%llx  %s\n", rs_snapshot_describe(s, i, desc, sizeof(desc)),
                       (unsigned long long)o->refcnt, o->size, (unsigned long long)o->addr,
                       rs_snapshot_site_text(&t, o->stack, site, sizeof(site)));
            }
            if (grp->n > 20)
                printf("  ... %zu more\n", grp->n - 20);
        }
        if (cy.n > 50)
            printf("\n... %zu more groups (see --json)\n", cy.n - 50);
    }
    rs_cycles_free(&cy);
    status = 0;
out:
    rs_snapshot_trace_close(&t);
    return status;
}
