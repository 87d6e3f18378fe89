/*
 * `refscope summary [--json] TRACE`: one replay of the trace through the
 * live heap (heap.c) gives the per-domain totals, the peak and the live
 * bytes at the end; the same model is printed as text or as JSON.
 */
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "cli.h"
#include "commands.h"
#include "heap.h"
#include "recorder.h"
#include "trace_read.h"
#include "units.h"

static const char *const domain_names[RS_DOMAIN_COUNT] = {"libc", "raw", "mem", "obj", "arena"};

struct summary {
    const struct rs_trace_info *info;
    const struct rs_heap_stats *st;
    uint64_t records;
    uint64_t threads;
    uint64_t allocations, frees, alloc_bytes, live_end; /* leaf domains */
};

static void python_version(uint32_t hex, char *buf, size_t len)
{
    if (!hex)
        snprintf(buf, len, "-");
    else
        snprintf(buf, len, "%u.%u.%u", hex >> 24, (hex >> 16) & 0xff, (hex >> 8) & 0xff);
}

/* How the process image ended (enum rs_end_reason), for JSON and for text. */
static const struct {
    const char *name, *text;
} end_reasons[] = {
    [RS_END_EXIT] = {"exit", "exit"},
    [RS_END_EXEC] = {"exec", "exec (the next program has a trace of its own, if it is traced)"},
    [RS_END_ABRUPT] = {"abrupt", "abruptly: killed by a signal, crashed, or left through _exit (no exit handlers ran)"},
};

static const char *end_reason(uint32_t reason, int text)
{
    if (reason >= sizeof(end_reasons) / sizeof(end_reasons[0]))
        return "unknown";
    return text ? end_reasons[reason].text : end_reasons[reason].name;
}

static void print_text(const struct summary *s)
{
    const struct rs_trace_info *in = s->info;
    const struct rs_heap_stats *st = s->st;
    char pyv[32], b1[32], b2[32];
    python_version(in->py_version, pyv, sizeof(pyv));
    printf("process       %u (parent %u)  %s\n", in->pid, in->ppid, in->exe);
    printf("command       %s\n", in->cmdline);
    printf("python        %s\n", pyv);
    printf("duration      %.3f s\n", (double)in->end_ns / 1e9);
    printf("records       %llu\n\n", (unsigned long long)s->records);
    printf("%-8s %14s %14s %14s %14s\n", "domain", "allocations", "frees", "bytes", "live at end");
    for (int d = 0; d < RS_DOMAIN_COUNT; d++) {
        rs_units_bytes(st->alloc_bytes[d], b1, sizeof(b1));
        rs_units_bytes(st->live_bytes[d], b2, sizeof(b2));
        printf("%-8s %14llu %14llu %14s %14s\n", domain_names[d], (unsigned long long)st->allocations[d],
               (unsigned long long)st->frees[d], b1, b2);
    }
    rs_units_bytes(s->alloc_bytes, b1, sizeof(b1));
    rs_units_bytes(s->live_end, b2, sizeof(b2));
    printf("%-8s %14llu %14llu %14s %14s\n\n", "total", (unsigned long long)s->allocations,
           (unsigned long long)s->frees, b1, b2);
    rs_units_bytes(st->peak_live_bytes, b1, sizeof(b1));
    printf("peak live     %s at %.3f s (arena blocks not included)\n", b1, (double)st->peak_ns / 1e9);
    rs_units_bytes(s->live_end, b1, sizeof(b1));
    printf("live at end   %s\n", b1);
    printf("threads       %llu\n", (unsigned long long)s->threads);
    printf("lost events   %llu\n", (unsigned long long)in->lost_events);
    printf("producer waits %llu\n", (unsigned long long)in->producer_waits);
    if (in->has_trailer)
        printf("ended         %s\n", end_reason(in->end_reason, 1));
    if (st->own.allocations) {
        rs_units_bytes(st->own.bytes, b1, sizeof(b1));
        rs_units_bytes(st->own.live_bytes, b2, sizeof(b2));
        printf("refscope's own %llu allocations, %s (%s live at end), not counted above\n",
               (unsigned long long)st->own.allocations, b1, b2);
    }
    if (st->unknown_frees)
        printf("frees of blocks allocated before tracing: %llu\n", (unsigned long long)st->unknown_frees);
    if (in->truncated)
        printf("warning: the trace is truncated: its damaged or incomplete last chunk was dropped\n");
    else if (!in->has_trailer)
        printf("warning: the recorder did not finish this trace; it may end early\n");
}

static json_t *to_json(const struct summary *s)
{
    const struct rs_trace_info *in = s->info;
    const struct rs_heap_stats *st = s->st;
    char pyv[32];
    json_t *domains = json_object();
    for (int d = 0; d < RS_DOMAIN_COUNT; d++)
        json_object_set_new(domains, domain_names[d],
                            json_pack("{s:I, s:I, s:I, s:I, s:I}", "allocations", (json_int_t)st->allocations[d],
                                      "frees", (json_int_t)st->frees[d], "bytes", (json_int_t)st->alloc_bytes[d],
                                      "live_bytes_end", (json_int_t)st->live_bytes[d],
                                      "live_blocks_end", (json_int_t)st->live_blocks[d]));
    python_version(in->py_version, pyv, sizeof(pyv));
    json_t *root = json_pack(
        "{s:I, s:I, s:s, s:s, s:o, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:o, s:I, s:I, s:I, s:b, s:b}",
        "pid", (json_int_t)in->pid, "ppid", (json_int_t)in->ppid, "exe", in->exe, "command", in->cmdline,
        "python_version", in->py_version ? json_string(pyv) : json_null(),
        "duration_ns", (json_int_t)in->end_ns, "records", (json_int_t)s->records,
        "allocations", (json_int_t)s->allocations, "frees", (json_int_t)s->frees,
        "bytes", (json_int_t)s->alloc_bytes, "peak_bytes", (json_int_t)st->peak_live_bytes,
        "peak_ns", (json_int_t)st->peak_ns, "live_bytes_end", (json_int_t)s->live_end,
        "unknown_frees", (json_int_t)st->unknown_frees, "domains", domains,
        "threads", (json_int_t)s->threads, "lost_events", (json_int_t)in->lost_events,
        "producer_waits", (json_int_t)in->producer_waits, "truncated", in->truncated,
        "complete", in->has_trailer);
    json_object_set_new(root, "end", in->has_trailer ? json_string(end_reason(in->end_reason, 0)) : json_null());
    json_object_set_new(root, "refscope_own",
                        json_pack("{s:I, s:I, s:I, s:I}", "allocations", (json_int_t)st->own.allocations,
                                  "frees", (json_int_t)st->own.frees, "bytes", (json_int_t)st->own.bytes,
                                  "live_bytes_end", (json_int_t)st->own.live_bytes));
    return root;
}

int cmd_summary(int argc, char **argv)
{
    const char *path = NULL;
    int json = 0, status = 1, r;
    char err[512];
    struct rs_trace *t = NULL;
    struct rs_heap *h = NULL;
    uint8_t *seen = NULL;
    struct summary s = {0};
    struct rs_event ev;

    const struct rs_opt opts[] = { {"json", 0, RS_OPT_FLAG, &json, 0, 0, NULL}, RS_OPT_END };
    const struct rs_cli cli = { "summary", opts, "TRACE", 1, 1, 0 };
    if (rs_cli_parse(&cli, argc, argv) < 0)
        return 2;
    path = argv[1];
    if (rs_trace_open(path, &t, err, sizeof(err)) < 0) {
        fprintf(stderr, "refscope summary: %s\n", err);
        return 1;
    }
    h = rs_heap_new();
    seen = calloc(65536 / 8, 1);
    if (!h || !seen) {
        fprintf(stderr, "refscope summary: out of memory\n");
        goto out;
    }
    while ((r = rs_trace_next(t, &ev, err, sizeof(err))) == 1) {
        s.records++;
        if (ev.kind != RS_EV_CLOCK && ev.thread != RS_RECORDER_THREAD &&
            !(seen[ev.thread / 8] & (1u << (ev.thread % 8)))) {
            seen[ev.thread / 8] |= (uint8_t)(1u << (ev.thread % 8));
            s.threads++;
        }
        if (rs_heap_apply(h, &ev, NULL) < 0) {
            fprintf(stderr, "refscope summary: out of memory\n");
            goto out;
        }
    }
    if (r < 0) {
        fprintf(stderr, "refscope summary: %s\n", err);
        goto out;
    }
    s.info = rs_trace_info(t);
    s.st = rs_heap_stats(h);
    for (int d = 0; d < RS_DOMAIN_ARENA; d++) {
        s.allocations += s.st->allocations[d];
        s.frees += s.st->frees[d];
        s.alloc_bytes += s.st->alloc_bytes[d];
        s.live_end += s.st->live_bytes[d];
    }
    if (json) {
        if (rs_cli_print_json("summary", to_json(&s)) < 0)
            goto out;
    } else {
        print_text(&s);
    }
    status = 0;
out:
    free(seen);
    rs_heap_free(h);
    rs_trace_close(t);
    return status;
}
