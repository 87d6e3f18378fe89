/*
 * Allocation-site interning for reports (analyzer/siteindex.h): stack id ->
 * site text -> site id, with a memo per stack id and an open-addressing
 * index over the texts.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "grow.h"
#include "itable.h"
#include "siteindex.h"
#include "u64map.h"

#define SITE_MAX_FRAMES 256

struct site_name {
    char *text;
    uint32_t stack;          /* first stack id found here */
};

struct rs_site_index {
    struct rs_stacks *stacks;
    int depth;
    struct site_name *names; /* id -> text (owned); names[0] is "(unknown site)" */
    size_t nnames, names_cap;
    struct rs_itable by_text; /* site ids by text                          */
    struct u64map memo;      /* stack id -> site id                        */
    char *buf;               /* text being built                           */
    size_t buf_len, buf_cap;
};

static uint64_t name_hash(const void *ctx, uint32_t id)
{
    const struct rs_site_index *x = ctx;
    return rs_hash_str(RS_HASH_INIT, x->names[id].text);
}

static int append(struct rs_site_index *x, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int append(struct rs_site_index *x, const char *fmt, ...)
{
    if (!x->buf && rs_grow(&x->buf, &x->buf_cap, 256, 1)) /* no offset on a NULL buf */
        return -ENOMEM;
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(x->buf + x->buf_len, x->buf_cap - x->buf_len, fmt, ap);
        va_end(ap);
        if (n < 0)
            return -EINVAL;
        if ((size_t)n < x->buf_cap - x->buf_len) {
            x->buf_len += (size_t)n;
            return 0;
        }
        if (rs_grow(&x->buf, &x->buf_cap, x->buf_len + (size_t)n + 1, 1))
            return -ENOMEM;
    }
}

/* The id of the text in x->buf, adding it (found at `stack`) when new. */
static int intern(struct rs_site_index *x, uint32_t stack, uint32_t *id)
{
    if (rs_itable_reserve(&x->by_text, x->nnames + 1, name_hash, x))
        return -ENOMEM;
    size_t j = rs_itable_start(&x->by_text, rs_hash_str(RS_HASH_INIT, x->buf));
    for (uint32_t k; (k = x->by_text.slots[j]); j = rs_itable_next(&x->by_text, j)) {
        if (!strcmp(x->names[k - 1].text, x->buf)) {
            *id = k - 1;
            return 0;
        }
    }
    if (rs_grow(&x->names, &x->names_cap, x->nnames + 1, sizeof(*x->names)))
        return -ENOMEM;
    char *copy = strdup(x->buf);
    if (!copy)
        return -ENOMEM;
    x->names[x->nnames] = (struct site_name){copy, stack};
    x->by_text.slots[j] = (uint32_t)x->nnames + 1;
    *id = (uint32_t)x->nnames++;
    return 0;
}

struct rs_site_index *rs_site_index_new(struct rs_stacks *stacks, int depth)
{
    uint32_t id;
    struct rs_site_index *x = calloc(1, sizeof(*x));
    if (!x)
        return NULL;
    x->stacks = stacks;
    x->depth = depth;
    if (append(x, "(unknown site)") < 0 || intern(x, 0, &id) < 0) {
        rs_site_index_free(x);
        return NULL;
    }
    return x;
}

void rs_site_index_free(struct rs_site_index *x)
{
    if (!x)
        return;
    for (size_t i = 0; i < x->nnames; i++)
        free(x->names[i].text);
    free(x->names);
    rs_itable_free(&x->by_text);
    u64map_free(&x->memo);
    free(x->buf);
    free(x);
}

int rs_site_frames(struct rs_stacks *stacks, uint32_t stack, const struct rs_frame **out, int cap)
{
    const struct rs_frame *f;
    int n = stack ? rs_stacks_resolve(stacks, stack, &f) : 0, k = 0;
    for (int i = 0; i < n && k < cap; i++)
        if (!f[i].native)
            out[k++] = &f[i];
    for (int i = 0; !k && i < n && i < cap; i++)
        out[i] = &f[i];
    return k ? k : (n < cap ? n : cap);
}

int rs_site_of(struct rs_site_index *x, uint32_t stack, uint32_t *site)
{
    const struct rs_frame *frames[SITE_MAX_FRAMES];
    *site = 0;
    if (!stack)
        return 0;
    const uint64_t *memo = u64map_get(&x->memo, stack);
    if (memo) {
        *site = (uint32_t)*memo;
        return 0;
    }
    int n = rs_site_frames(x->stacks, stack, frames, SITE_MAX_FRAMES);
    if (n) {
        int depth = x->depth > 0 && x->depth < n ? x->depth : n;
        x->buf_len = 0;
        for (int i = 0; i < depth; i++) {
            const struct rs_frame *f = frames[i];
            const char *fn = f->function ? f->function : "??";
            int rc = f->file ? append(x, "%s%s (%s:%u)", i ? " <- " : "", fn, f->file, f->line)
                             : append(x, "%s%s", i ? " <- " : "", fn);
            if (rc < 0)
                return rc;
        }
        int rc = intern(x, stack, site);
        if (rc < 0)
            return rc;
    }
    return u64map_put(&x->memo, stack, *site) < 0 ? -ENOMEM : 0;
}

const char *rs_site_name(const struct rs_site_index *x, uint32_t site)
{
    return x && site < x->nnames ? x->names[site].text : "(unknown site)";
}

uint32_t rs_site_stack(const struct rs_site_index *x, uint32_t site)
{
    return x && site < x->nnames ? x->names[site].stack : 0;
}

const char *rs_site_depth_text(int depth, char *buf, size_t len)
{
    if (depth <= 0)
        snprintf(buf, len, "whole stack");
    else if (depth == 1)
        snprintf(buf, len, "innermost Python frame");
    else
        snprintf(buf, len, "%d innermost frames", depth);
    return buf;
}
