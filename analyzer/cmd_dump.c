/*
 * `refscope dump [--json] [--kind alloc,free,...] TRACE`: every record, one
 * line each, in trace order — for debugging the shim and the format. JSON
 * output is one object per line (kind, ordinal, time_ns, thread, domain,
 * addr, size, stack, flags; payload_len for variable records).
 */
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "cli.h"
#include "commands.h"
#include "trace_read.h"

static const char *const domain_names[RS_DOMAIN_COUNT] = {"libc", "raw", "mem", "obj", "arena"};

static const char *kind_name(uint8_t kind, char *buf, size_t len)
{
    const char *name = rs_event_kind_name(kind);
    if (name)
        return name;
    snprintf(buf, len, "kind_0x%02x", kind);
    return buf;
}

/* "alloc,free" -> mask of kinds. Returns 0 or -EINVAL (unknown name in *bad). */
static int parse_kinds(char *list, uint8_t *want, const char **bad)
{
    for (char *save = NULL, *tok = strtok_r(list, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        int found = 0;
        for (int k = 0; k <= RS_EV_KIND_MAX; k++) {
            const char *name = rs_event_kind_name((uint8_t)k);
            if (name && !strcmp(name, tok))
                want[k] = found = 1;
        }
        if (!found) {
            *bad = tok;
            return -EINVAL;
        }
    }
    return 0;
}

static int has_domain(uint8_t kind) { return kind == RS_EV_ALLOC || kind == RS_EV_FREE; }

static int print_json(const struct rs_event *ev)
{
    char kb[16];
    json_t *o = json_pack("{s:s, s:I, s:I, s:i, s:I, s:I, s:i, s:i}", "kind", kind_name(ev->kind, kb, sizeof(kb)),
                          "ordinal", (json_int_t)ev->ordinal, "time_ns", (json_int_t)ev->time_ns,
                          "thread", (int)ev->thread, "addr", (json_int_t)ev->addr, "size", (json_int_t)ev->size,
                          "stack", (int)ev->stack, "flags", (int)ev->flags);
    if (!o)
        return -ENOMEM;
    json_object_set_new(o, "domain", has_domain(ev->kind) ? json_string(domain_names[(ev->flags & 7) % 5])
                                                          : json_null());
    if (RS_EV_IS_VAR(ev->kind))
        json_object_set_new(o, "payload_len", json_integer(ev->payload_len));
    int r = json_dumpf(o, stdout, JSON_COMPACT);
    json_decref(o);
    putchar('\n');
    return r < 0 ? -EIO : 0;
}

static void print_text(const struct rs_event *ev)
{
    char kb[16];
    printf("%llu %.9f %-12s t%-3u", (unsigned long long)ev->ordinal, (double)ev->time_ns / 1e9,
           kind_name(ev->kind, kb, sizeof(kb)), ev->thread);
    if (has_domain(ev->kind))
        printf(" %-5s 0x%llx size=%llu stack=%u flags=0x%02x%s", domain_names[(ev->flags & 7) % 5],
               (unsigned long long)ev->addr, (unsigned long long)ev->size, ev->stack, ev->flags,
               ev->flags & RS_F_OWN ? " refscope" : ""); /* refscope's own Python work (events.h) */
    else if (RS_EV_IS_VAR(ev->kind))
        printf(" payload=%u flags=0x%02x", ev->payload_len, ev->flags);
    else
        printf(" addr=0x%llx size=%llu flags=0x%02x", (unsigned long long)ev->addr,
               (unsigned long long)ev->size, ev->flags);
    putchar('\n');
}

int cmd_dump(int argc, char **argv)
{
    const char *path = NULL, *bad = NULL;
    int json = 0, filter = 0, status = 1, r;
    uint8_t want[RS_EV_KIND_MAX + 1] = {0};
    char err[512];
    struct rs_trace *t = NULL;
    struct rs_event ev;

    const char *kinds = NULL;
    const struct rs_opt opts[] = {
        {"json", 0, RS_OPT_FLAG, &json, 0, 0, NULL},
        {"kind", 0, RS_OPT_STR, &kinds, 0, 0, NULL},
        RS_OPT_END,
    };
    const struct rs_cli cli = { "dump", opts, "TRACE", 1, 1, 0 };
    if (rs_cli_parse(&cli, argc, argv) < 0)
        return 2;
    path = argv[1];
    if (kinds) {
        filter = 1;
        if (parse_kinds((char *)kinds, want, &bad) < 0) { /* argv text: writable */
            fprintf(stderr, "refscope dump: unknown record kind '%s' (see 'refscope dump --help')\n", bad);
            return 2;
        }
    }
    if (rs_trace_open(path, &t, err, sizeof(err)) < 0) {
        fprintf(stderr, "refscope dump: %s\n", err);
        return 1;
    }
    while ((r = rs_trace_next(t, &ev, err, sizeof(err))) == 1) {
        if (filter && !want[ev.kind & RS_EV_KIND_MAX])
            continue;
        if (json) {
            if (print_json(&ev) < 0)
                goto out;
        } else {
            print_text(&ev);
        }
    }
    if (r < 0) {
        fflush(stdout);
        fprintf(stderr, "refscope dump: %s\n", err);
        goto out;
    }
    if (rs_trace_info(t)->truncated)
        fprintf(stderr, "refscope dump: warning: %s is truncated; its damaged last chunk was dropped\n", path);
    status = 0;
out:
    fflush(stdout);
    rs_trace_close(t);
    return status;
}
