/*
 * `refscope top`: allocation sites ranked by a metric.
 *
 * A site is the innermost --depth frames of an allocation's stack (Python
 * frames; the mixed Python/native stack with --native or for a non-Python
 * process). Stacks that share those frames are merged. Metrics per site come
 * from the per-stack model (sites.h): peak (bytes the site held at the
 * moment of the global peak), total bytes allocated, allocation count, and
 * bytes live at the end (at the start of interpreter finalization for
 * Python, see sites.h). --file/--function keep allocations whose stack has
 * a frame matching the substring (anywhere in the stack, not only in the
 * shown frames). One model, rendered as text or JSON.
 */
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "commands.h"
#include "grow.h"
#include "itable.h"
#include "sites.h"
#include "units.h"

#define VIEW_MAX 512

enum metric { BY_PEAK, BY_TOTAL, BY_COUNT, BY_LIVE };
static const char *const metric_names[] = {"peak", "total", "count", "live", NULL};

struct site {
    const struct rs_frame **frames;
    int nframes;
    uint64_t hash;
    uint64_t allocations, bytes, peak_bytes, live_bytes_end, live_blocks_end;
};

struct top_opts {
    enum metric by;
    int depth;           /* 0: default for the mode */
    int limit;
    const char *file, *function;
    int native, json;
    const char *trace;
};

static int frame_matches(const struct rs_frame *const *frames, int n, const struct top_opts *o)
{
    int file_ok = !o->file, fn_ok = !o->function;
    for (int i = 0; i < n; i++) {
        if (!file_ok && frames[i]->file && strstr(frames[i]->file, o->file))
            file_ok = 1;
        if (!fn_ok && frames[i]->function && strstr(frames[i]->function, o->function))
            fn_ok = 1;
    }
    return file_ok && fn_ok;
}

/* Frames are interned by the stack tables: equal frames share pointers. */
static uint64_t site_hash(const struct rs_frame *const *f, int n)
{
    uint64_t h = 0x9e3779b97f4a7c15ull ^ (uint64_t)n;
    for (int i = 0; i < n; i++) {
        h = (h ^ (uintptr_t)f[i]->function) * 0x100000001b3ull;
        h = (h ^ (uintptr_t)f[i]->file) * 0x100000001b3ull;
        h = (h ^ f[i]->line) * 0x100000001b3ull;
    }
    return h;
}

/* rs_itable_hash_fn over the sites array */
static uint64_t site_hash_of(const void *ctx, uint32_t index)
{
    return ((const struct site *)ctx)[index].hash;
}

static int site_equal(const struct site *s, const struct rs_frame *const *f, int n)
{
    if (s->nframes != n)
        return 0;
    for (int i = 0; i < n; i++)
        if (s->frames[i]->function != f[i]->function || s->frames[i]->file != f[i]->file ||
            s->frames[i]->line != f[i]->line)
            return 0;
    return 1;
}

static uint64_t site_metric(const struct site *s, enum metric by)
{
    switch (by) {
    case BY_PEAK: return s->peak_bytes;
    case BY_TOTAL: return s->bytes;
    case BY_COUNT: return s->allocations;
    default: return s->live_bytes_end;
    }
}

static enum metric sort_by;
static int site_cmp(const void *a, const void *b)
{
    const struct site *x = a, *y = b;
    uint64_t mx = site_metric(x, sort_by), my = site_metric(y, sort_by);
    if (mx != my)
        return mx < my ? 1 : -1;
    if (x->bytes != y->bytes)
        return x->bytes < y->bytes ? 1 : -1;
    return x->allocations < y->allocations ? 1 : x->allocations > y->allocations ? -1 : 0;
}

/* Groups the model's stacks into sites. */
static int build_sites(struct rs_sites_model *m, const struct top_opts *o, int native,
                       struct site **out, size_t *count)
{
    const struct rs_frame *view[VIEW_MAX];
    struct site *sites = NULL;
    size_t n = 0, cap = 0;
    struct rs_itable by_frames = {0};
    int ret = 0;

    for (size_t i = 0; i < m->count; i++) {
        const struct rs_stack_metrics *sm = &m->metrics[i];
        if (!sm->allocations && !sm->live_bytes_end && !sm->peak_bytes)
            continue;
        int nv = rs_sites_view(m, sm->stack, native, view, VIEW_MAX);
        if ((o->file || o->function) && !frame_matches(view, nv, o))
            continue;
        int depth = nv < o->depth ? nv : o->depth;
        uint64_t h = site_hash(view, depth);
        if (rs_itable_reserve(&by_frames, n + 1, site_hash_of, sites)) {
            ret = -ENOMEM;
            goto out;
        }
        size_t j = rs_itable_start(&by_frames, h);
        uint32_t k;
        for (; (k = by_frames.slots[j]); j = rs_itable_next(&by_frames, j))
            if (sites[k - 1].hash == h && site_equal(&sites[k - 1], view, depth))
                break;
        if (!k) {
            if (rs_grow(&sites, &cap, n + 1, sizeof(*sites))) {
                ret = -ENOMEM;
                goto out;
            }
            struct site *s = &sites[n];
            memset(s, 0, sizeof(*s));
            s->hash = h;
            s->nframes = depth;
            s->frames = malloc((size_t)(depth ? depth : 1) * sizeof(*s->frames));
            if (!s->frames) {
                ret = -ENOMEM;
                goto out;
            }
            memcpy(s->frames, view, (size_t)depth * sizeof(*s->frames));
            k = by_frames.slots[j] = (uint32_t)++n;
        }
        struct site *s = &sites[k - 1];
        s->allocations += sm->allocations;
        s->bytes += sm->bytes;
        s->peak_bytes += sm->peak_bytes;
        s->live_bytes_end += sm->live_bytes_end;
        s->live_blocks_end += sm->live_blocks_end;
    }
out:
    rs_itable_free(&by_frames);
    *out = sites;
    *count = n;
    return ret;
}

static json_t *frame_json(const struct rs_frame *f)
{
    json_t *o = json_object();
    json_object_set_new(o, "function", json_string(f->function ? f->function : "??"));
    json_object_set_new(o, "file", f->file ? json_string(f->file) : json_null());
    json_object_set_new(o, "line", json_integer(f->line));
    json_object_set_new(o, "native", json_boolean(f->native));
    if (f->native) {
        json_object_set_new(o, "inlined", json_boolean(f->inlined));
        json_object_set_new(o, "module", f->module ? json_string(f->module) : json_null());
        char ip[32];
        snprintf(ip, sizeof(ip), "0x%llx", (unsigned long long)f->ip);
        json_object_set_new(o, "ip", json_string(ip));
    }
    return o;
}

static void print_frame(const struct rs_frame *f)
{
    printf("%s", f->function ? f->function : "??");
    if (f->file)
        printf(" (%s:%u)", f->file, f->line);
    else if (f->native && f->module) {
        const char *slash = strrchr(f->module, '/');
        printf(" [%s]", slash ? slash + 1 : f->module);
    }
    if (f->inlined)
        printf(" [inlined]");
}

int cmd_top(int argc, char **argv)
{
    struct top_opts o = {.by = BY_PEAK, .depth = 0, .limit = 20};
    struct rs_sites_model m;
    struct site *sites = NULL;
    size_t nsites = 0;
    char err[512] = "";
    int by = BY_PEAK, status = 1;
    const struct rs_opt opts[] = {
        {"by", 0, RS_OPT_CHOICE, &by, 0, 0, metric_names},
        {"depth", 0, RS_OPT_INT, &o.depth, 0, INT_MAX, NULL}, /* 0: 1 frame, 16 with --native */
        {"limit", 'n', RS_OPT_INT, &o.limit, 0, INT_MAX, NULL}, /* 0: every site */
        {"file", 0, RS_OPT_STR, &o.file, 0, 0, NULL},
        {"function", 0, RS_OPT_STR, &o.function, 0, 0, NULL},
        {"native", 0, RS_OPT_FLAG, &o.native, 0, 0, NULL},
        {"json", 'j', RS_OPT_FLAG, &o.json, 0, 0, NULL},
        RS_OPT_END,
    };
    const struct rs_cli cli = { "top", opts, "TRACE", 1, 1, 0 };
    if (rs_cli_parse(&cli, argc, argv) < 0)
        return 2;
    o.by = (enum metric)by;
    o.trace = argv[1];

    if (rs_sites_build(o.trace, &m, err, sizeof(err))) {
        fprintf(stderr, "refscope top: %s\n", err);
        return 1;
    }
    int native = rs_sites_native(&m, o.native);
    rs_stacks_set_native(m.stacks, native);
    if (o.depth <= 0)
        o.depth = native ? 16 : 1;
    if (o.depth > VIEW_MAX)
        o.depth = VIEW_MAX;
    if (build_sites(&m, &o, native, &sites, &nsites)) {
        fprintf(stderr, "refscope top: out of memory\n");
        goto out;
    }
    sort_by = o.by;
    rs_sort(sites, nsites, sizeof(*sites), site_cmp);
    size_t shown = o.limit && (size_t)o.limit < nsites ? (size_t)o.limit : nsites;

    const char *warnings = rs_stacks_warnings(m.stacks);
    const char *no_native = o.native && !m.has_native
        ? "the trace has no native stacks (record with 'refscope run --native')" : NULL;
    uint64_t total_allocs = 0, total_bytes = 0, total_live = 0;
    for (size_t i = 0; i < nsites; i++) {
        total_allocs += sites[i].allocations;
        total_bytes += sites[i].bytes;
        total_live += sites[i].live_bytes_end;
    }

    if (o.json) {
        json_t *root = json_object(), *arr = json_array(), *warn = json_array();
        json_object_set_new(root, "trace", json_string(o.trace));
        json_object_set_new(root, "by", json_string(metric_names[o.by]));
        json_object_set_new(root, "depth", json_integer(o.depth));
        json_object_set_new(root, "native", json_boolean(native));
        json_object_set_new(root, "peak_bytes", json_integer((json_int_t)m.stats.peak_live_bytes));
        json_object_set_new(root, "peak_ns", json_integer((json_int_t)m.stats.peak_ns));
        json_object_set_new(root, "total_sites", json_integer((json_int_t)nsites));
        json_object_set_new(root, "allocations", json_integer((json_int_t)total_allocs));
        json_object_set_new(root, "bytes", json_integer((json_int_t)total_bytes));
        json_object_set_new(root, "live_bytes_end", json_integer((json_int_t)total_live));
        json_object_set_new(root, "live_end_at", json_string(m.end_at_finalization
                                                             ? "interpreter finalization" : "end of trace"));
        for (size_t i = 0; i < shown; i++) {
            const struct site *s = &sites[i];
            json_t *so = json_object(), *fr = json_array();
            for (int k = 0; k < s->nframes; k++)
                json_array_append_new(fr, frame_json(s->frames[k]));
            json_object_set_new(so, "frames", fr);
            json_object_set_new(so, "allocations", json_integer((json_int_t)s->allocations));
            json_object_set_new(so, "bytes", json_integer((json_int_t)s->bytes));
            json_object_set_new(so, "peak_bytes", json_integer((json_int_t)s->peak_bytes));
            json_object_set_new(so, "live_bytes_end", json_integer((json_int_t)s->live_bytes_end));
            json_object_set_new(so, "live_blocks_end", json_integer((json_int_t)s->live_blocks_end));
            json_array_append_new(arr, so);
        }
        json_object_set_new(root, "sites", arr);
        for (const char *w = warnings; w && *w;) {
            const char *nl = strchr(w, '\n');
            size_t len = nl ? (size_t)(nl - w) : strlen(w);
            json_array_append_new(warn, json_stringn(w, len));
            w += len + (nl ? 1 : 0);
        }
        if (no_native)
            json_array_append_new(warn, json_string(no_native));
        json_object_set_new(root, "warnings", warn);
        if (rs_cli_print_json("top", root) < 0)
            goto out;
    } else {
        char b1[32], b2[32], b3[32];
        printf("%zu allocation sites by %s (showing %zu); peak %s; %s frames, depth %d\n",
               nsites, metric_names[o.by], shown, rs_units_bytes(m.stats.peak_live_bytes, b1, sizeof(b1)),
               native ? "Python+native" : "Python", o.depth);
        if (warnings)
            printf("warning: %s\n", warnings);
        if (no_native)
            printf("warning: %s\n", no_native);
        printf("%4s  %11s  %11s  %9s  %11s  %s\n", "#", "PEAK", "TOTAL", "COUNT", "LIVE END", "SITE");
        for (size_t i = 0; i < shown; i++) {
            const struct site *s = &sites[i];
            printf("%4zu  %11s  %11s  %9llu  %11s  ", i + 1, rs_units_bytes(s->peak_bytes, b1, sizeof(b1)),
                   rs_units_bytes(s->bytes, b2, sizeof(b2)), (unsigned long long)s->allocations,
                   rs_units_bytes(s->live_bytes_end, b3, sizeof(b3)));
            if (!s->nframes)
                puts(native ? "(no stack)" : "(no Python stack)");
            for (int k = 0; k < s->nframes; k++) {
                if (k)
                    printf("%4s  %11s  %11s  %9s  %11s  <- ", "", "", "", "", "");
                print_frame(s->frames[k]);
                putchar('\n');
            }
        }
    }
    status = 0;
out:
    for (size_t i = 0; i < nsites; i++)
        free(sites[i].frames);
    free(sites);
    rs_sites_free(&m);
    return status;
}
