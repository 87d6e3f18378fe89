/*
 * `refscope gc [--json] TRACE`: per generation — collections (including
 * those before refscope registered), objects examined, collected,
 * uncollectable, promoted, survival rate, pauses — then the pause timeline
 * and the thresholds in force and when they changed. Built from gcmodel.c;
 * text and JSON render the same model.
 */
#include <jansson.h>
#include <stdio.h>
#include <string.h>
#include "cli.h"
#include "commands.h"
#include "gcmodel.h"
#include "trace_read.h"
#include "units.h"

static const char *reason_name(uint8_t r)
{
    switch (r) {
    case RS_GC_CFG_INITIAL: return "initial";
    case RS_GC_CFG_CALL: return "call";
    case RS_GC_CFG_NOTICED: return "noticed";
    case RS_GC_CFG_EXIT: return "exit";
    }
    return "?";
}

/* Reads the whole trace into the model. Returns 0 or 1 after printing why. */
static int load(const char *path, struct rs_gc_model *m, const struct rs_trace_info **info_out,
                struct rs_trace **t_out)
{
    char err[256];
    struct rs_event ev;
    struct rs_trace *t;
    int r;

    if (rs_trace_open(path, &t, err, sizeof(err)) < 0) {
        fprintf(stderr, "refscope gc: %s\n", err);
        return 1;
    }
    if (rs_gcmodel_init(m, NULL, NULL) < 0) {
        fprintf(stderr, "refscope gc: out of memory\n");
        rs_trace_close(t);
        return 1;
    }
    while ((r = rs_trace_next(t, &ev, err, sizeof(err))) == 1)
        if ((r = rs_gcmodel_feed(m, &ev)) < 0) {
            rs_trace_record_error(err, sizeof(err), path, &ev, r);
            break;
        }
    if (r < 0 || rs_gcmodel_finish(m, rs_trace_info(t)->end_ns) < 0) {
        fprintf(stderr, "refscope gc: %s\n", r < 0 ? err : "out of memory");
        rs_gcmodel_free(m);
        rs_trace_close(t);
        return 1;
    }
    *info_out = rs_trace_info(t);
    *t_out = t;
    return 0;
}

/* Warnings every gc report repeats. fn(text, arg) per line. */
static void warnings(const struct rs_gc_model *m, const struct rs_trace_info *info,
                     void (*fn)(const char *, void *), void *arg)
{
    char buf[256];
    int gc_off = 0; /* run --no-gc: the shim's note says so */
    for (uint32_t i = 0; i < m->nnotes; i++) {
        fn(m->notes[i], arg);
        gc_off |= m->note_codes[i] == RS_NOTE_GC_OFF;
    }
    if (!m->have_gc && !gc_off)
        fn(info->py_version ? "no gc events in this trace (the gc callback was never registered or "
                              "the process ended before the first safe point)"
                            : "not a Python process: no gc events",
           arg);
    if (m->have_gc && !m->census && m->generational) {
        int unavailable = 0; /* the shim said why in a note, repeated above */
        for (uint32_t i = 0; i < m->nnotes; i++)
            unavailable |= m->note_codes[i] == RS_NOTE_GC_CENSUS_UNAVAILABLE ||
                           m->note_codes[i] == RS_NOTE_GC_CENSUS_OFF;
        if (m->census_format)
            fn("this trace's gc census is in a format this refscope does not read (format 1, "
               "from an older refscope): examined/promoted unknown; record the program again",
               arg);
        else if (!unavailable)
            fn("no gc census: examined/promoted unknown (run without --gc-census=off)", arg);
    }
    if (!info->has_trailer || info->truncated)
        fn("trace is truncated: the last collections may be missing", arg);
    if (info->lost_events) {
        snprintf(buf, sizeof(buf), "%llu events were lost (lossy mode): counts are lower bounds",
                 (unsigned long long)info->lost_events);
        fn(buf, arg);
    }
}

static void json_warning(const char *text, void *arg)
{
    json_array_append_new((json_t *)arg, json_string(text));
}

static void text_warning(const char *text, void *arg)
{
    (void)arg;
    printf("warning: %s\n", text);
}

static json_t *ju(uint64_t v)
{
    return v == RS_GC_UNKNOWN ? json_null() : json_integer((json_int_t)v);
}

static int render_json(const struct rs_gc_model *m, const struct rs_trace_info *info, const char *path)
{
    json_t *root = json_object(), *gens = json_array(), *cols = json_array(), *cfgs = json_array(),
           *warn = json_array();
    json_object_set_new(root, "trace", json_string(path));
    json_object_set_new(root, "pid", json_integer(info->pid));
    json_object_set_new(root, "py_version", json_integer(info->py_version));
    json_object_set_new(root, "census", json_boolean(m->census));
    json_object_set_new(root, "generational", json_boolean(m->generational));
    json_object_set_new(root, "incremental", json_boolean(m->incremental));
    for (int g = 0; g < RS_GC_GENS; g++) {
        const struct rs_gc_generation *s = &m->gens[g];
        json_t *o = json_object();
        int known = s->census_collections > 0;
        json_object_set_new(o, "generation", json_integer(g));
        json_object_set_new(o, "collections", json_integer((json_int_t)s->collections));
        json_object_set_new(o, "collections_before_tracing", json_integer((json_int_t)s->before_tracing));
        json_object_set_new(o, "collections_traced", json_integer((json_int_t)s->traced));
        json_object_set_new(o, "shutdown_collections", json_integer((json_int_t)s->shutdown));
        json_object_set_new(o, "collected", json_integer((json_int_t)s->collected));
        json_object_set_new(o, "uncollectable", json_integer((json_int_t)s->uncollectable));
        json_object_set_new(o, "examined", known ? json_integer((json_int_t)s->examined) : json_null());
        json_object_set_new(o, "promoted", known ? json_integer((json_int_t)s->promoted) : json_null());
        json_object_set_new(o, "survival_rate", s->survival_rate >= 0 ? json_real(s->survival_rate) : json_null());
        json_object_set_new(o, "pause_total_ns", json_integer((json_int_t)s->pause_total_ns));
        json_object_set_new(o, "pause_mean_ns", json_real(s->pause_mean_ns));
        json_object_set_new(o, "pause_p50_ns", json_integer((json_int_t)s->pause_p50_ns));
        json_object_set_new(o, "pause_p99_ns", json_integer((json_int_t)s->pause_p99_ns));
        json_object_set_new(o, "pause_max_ns", json_integer((json_int_t)s->pause_max_ns));
        json_array_append_new(gens, o);
    }
    json_object_set_new(root, "generations", gens);
    for (uint64_t i = 0; i < m->ncollections; i++) {
        const struct rs_gc_collection *c = &m->collections[i];
        json_t *o = json_object();
        json_object_set_new(o, "seq", json_integer(c->seq));
        json_object_set_new(o, "generation", json_integer(c->generation == RS_GC_GEN_MASK ? -1 : c->generation));
        json_object_set_new(o, "start_ns", json_integer((json_int_t)c->start_ns));
        json_object_set_new(o, "pause_ns", json_integer((json_int_t)c->pause_ns));
        json_object_set_new(o, "collected", json_integer((json_int_t)c->collected));
        json_object_set_new(o, "uncollectable", json_integer((json_int_t)c->uncollectable));
        json_object_set_new(o, "examined", ju(c->examined));
        json_object_set_new(o, "promoted", ju(c->promoted));
        json_object_set_new(o, "tenured", ju(c->tenured));
        json_object_set_new(o, "counts", json_pack("[III]", (json_int_t)c->counts[0],
                                                   (json_int_t)c->counts[1], (json_int_t)c->counts[2]));
        json_object_set_new(o, "shutdown", json_boolean(c->flags & RS_GC_F_SHUTDOWN));
        json_object_set_new(o, "complete", json_boolean(c->complete));
        json_array_append_new(cols, o);
    }
    json_object_set_new(root, "collections", cols);
    for (uint64_t i = 0; i < m->nconfigs; i++) {
        const struct rs_gc_config_change *c = &m->configs[i];
        json_t *o = json_object(), *th = json_array();
        for (int k = 0; k < c->nthresh; k++)
            json_array_append_new(th, json_integer((json_int_t)c->thresholds[k]));
        json_object_set_new(o, "time_ns", json_integer((json_int_t)c->time_ns));
        json_object_set_new(o, "reason", json_string(reason_name(c->reason)));
        json_object_set_new(o, "function", json_string(c->function));
        json_object_set_new(o, "enabled", json_boolean(c->enabled));
        json_object_set_new(o, "thresholds", th);
        json_object_set_new(o, "freeze_count", c->freeze_count == UINT64_MAX ? json_null()
                                                   : json_integer((json_int_t)c->freeze_count));
        json_array_append_new(cfgs, o);
    }
    json_object_set_new(root, "thresholds", cfgs);
    warnings(m, info, json_warning, warn);
    json_object_set_new(root, "warnings", warn);
    return rs_cli_print_json("gc", root) < 0 ? 1 : 0;
}

static void fmt_opt(char *buf, size_t n, uint64_t v, int known)
{
    if (known)
        snprintf(buf, n, "%llu", (unsigned long long)v);
    else
        snprintf(buf, n, "-");
}

static int render_text(const struct rs_gc_model *m, const struct rs_trace_info *info)
{
    char a[32], b[32], c[32], d[32], e[32], f[32], g2[32];
    printf("gc: pid %u%s\n\n", info->pid,
           m->generational ? "" : " (free-threaded/incremental: generation numbers are not generational)");
    printf("%-4s %11s %8s %10s %8s %10s %10s %8s %9s %9s %9s %9s %9s\n", "gen", "collections",
           "(before)", "collected", "uncoll", "examined", "promoted", "surv%", "pause", "mean",
           "p50", "p99", "max");
    for (int g = 0; g < RS_GC_GENS; g++) {
        const struct rs_gc_generation *s = &m->gens[g];
        int known = s->census_collections > 0;
        fmt_opt(a, sizeof(a), s->examined, known);
        fmt_opt(b, sizeof(b), s->promoted, known);
        if (s->survival_rate >= 0)
            snprintf(c, sizeof(c), "%.1f", s->survival_rate * 100.0);
        else
            snprintf(c, sizeof(c), "-");
        rs_units_ns((double)s->pause_total_ns, d, sizeof(d));
        rs_units_ns(s->pause_mean_ns, e, sizeof(e));
        rs_units_ns((double)s->pause_p50_ns, f, sizeof(f));
        rs_units_ns((double)s->pause_p99_ns, g2, sizeof(g2));
        printf("%-4d %11llu %8llu %10llu %8llu %10s %10s %8s %9s %9s %9s %9s", g,
               (unsigned long long)s->collections, (unsigned long long)s->before_tracing,
               (unsigned long long)s->collected, (unsigned long long)s->uncollectable, a, b, c, d, e,
               f, g2);
        rs_units_ns((double)s->pause_max_ns, a, sizeof(a));
        printf(" %9s\n", a);
    }
    for (int g = 0; g < RS_GC_GENS; g++)
        if (m->gens[g].shutdown)
            printf("(+%llu generation-%d collection(s) during interpreter shutdown, not counted above)\n",
                   (unsigned long long)m->gens[g].shutdown, g);

    printf("\npause timeline (%llu traced collections):\n", (unsigned long long)m->ncollections);
    uint64_t shown = 0;
    for (uint64_t i = 0; i < m->ncollections; i++) {
        const struct rs_gc_collection *col = &m->collections[i];
        /* Long timelines: the first 20, then every pause above the p99 of its generation. */
        int gen = col->generation < RS_GC_GENS ? col->generation : 0;
        if (shown >= 20 && col->pause_ns <= m->gens[gen].pause_p99_ns)
            continue;
        shown++;
        rs_units_ns((double)col->start_ns, a, sizeof(a));
        rs_units_ns((double)col->pause_ns, b, sizeof(b));
        fmt_opt(c, sizeof(c), col->examined, col->examined != RS_GC_UNKNOWN);
        fmt_opt(d, sizeof(d), col->promoted, col->promoted != RS_GC_UNKNOWN);
        printf("  #%-5u at %9s gen %d pause %9s collected %6llu examined %7s promoted %7s%s\n",
               col->seq, a, col->generation == RS_GC_GEN_MASK ? -1 : col->generation, b,
               (unsigned long long)col->collected, c, d,
               col->flags & RS_GC_F_SHUTDOWN ? " (shutdown)" : "");
    }
    if (shown < m->ncollections)
        printf("  (%llu shorter collections not shown; --json lists all)\n",
               (unsigned long long)(m->ncollections - shown));

    printf("\nthresholds:\n");
    for (uint64_t i = 0; i < m->nconfigs; i++) {
        const struct rs_gc_config_change *cf = &m->configs[i];
        rs_units_ns((double)cf->time_ns, a, sizeof(a));
        printf("  at %9s %-8s %-14s %s thresholds", a, reason_name(cf->reason),
               cf->function[0] ? cf->function : "-", cf->enabled ? "enabled " : "DISABLED");
        for (int k = 0; k < cf->nthresh; k++)
            printf(" %llu", (unsigned long long)cf->thresholds[k]);
        if (cf->freeze_count != UINT64_MAX)
            printf(" frozen %llu", (unsigned long long)cf->freeze_count);
        printf("\n");
    }
    if (!m->nconfigs)
        printf("  (none recorded)\n");
    printf("\n");
    warnings(m, info, text_warning, NULL);
    return 0;
}

int cmd_gc(int argc, char **argv)
{
    int json = 0, rc;
    const char *path = NULL;
    struct rs_gc_model m;
    const struct rs_trace_info *info;
    struct rs_trace *t;

    const struct rs_opt opts[] = { {"json", 0, RS_OPT_FLAG, &json, 0, 0, NULL}, RS_OPT_END };
    const struct rs_cli cli = { "gc", opts, "TRACE", 1, 1, 0 };
    if (rs_cli_parse(&cli, argc, argv) < 0)
        return 2;
    path = argv[1];
    if (load(path, &m, &info, &t) != 0)
        return 1;
    rc = json ? render_json(&m, info, path) : render_text(&m, info);
    rs_gcmodel_free(&m);
    rs_trace_close(t);
    return rc;
}
