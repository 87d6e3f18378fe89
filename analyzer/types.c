/*
 * The Python type table rebuilt from RS_EV_PY_TYPE records (types.h;
 * payload layout in events.h, issue 4 section). Type ids are small and
 * dense (the shim hands them out from 1), so the table is an array indexed
 * by id. A later definition of an id replaces the earlier one, except that a
 * known module is never replaced by an unknown one.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "types.h"

struct type_entry {
    struct rs_type_info info;
    char *display;
    int defined;
};

struct rs_types {
    struct type_entry *entries;
    uint32_t cap;
};

struct rs_types *rs_types_new(void)
{
    return calloc(1, sizeof(struct rs_types));
}

static void entry_clear(struct type_entry *e)
{
    free((char *)e->info.name);
    free((char *)e->info.module);
    free(e->display);
    memset(e, 0, sizeof(*e));
}

void rs_types_free(struct rs_types *t)
{
    if (!t)
        return;
    for (uint32_t i = 0; i < t->cap; i++)
        entry_clear(&t->entries[i]);
    free(t->entries);
    free(t);
}

static uint64_t get_le(const uint8_t *p, int n)
{
    uint64_t v = 0;
    for (int i = n - 1; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

/* A u16-prefixed string at *off; returns a malloc'd copy or NULL. */
static char *read_str(const uint8_t *p, uint32_t len, uint32_t *off)
{
    uint32_t n;
    char *s;
    if (*off + 2 > len)
        return NULL;
    n = (uint32_t)get_le(p + *off, 2);
    if (*off + 2 + n > len)
        return NULL;
    s = malloc(n + 1);
    if (!s)
        return NULL;
    memcpy(s, p + *off + 2, n);
    s[n] = 0;
    *off += 2 + n;
    return s;
}

int rs_types_feed(struct rs_types *t, const struct rs_event *ev)
{
    const uint8_t *p = ev->payload;
    uint32_t id, flags, off = 24;
    char *name = NULL, *module = NULL;
    struct type_entry *e;

    if (ev->kind != RS_EV_PY_TYPE)
        return 0;
    if (!p || ev->payload_len < 24)
        return 0; /* malformed: ignored, the type stays unknown */
    id = (uint32_t)get_le(p + 8, 4);
    flags = (uint32_t)get_le(p + 12, 4);
    if (id == 0 || id > (1u << 24))
        return 0;
    name = read_str(p, ev->payload_len, &off);
    module = name ? read_str(p, ev->payload_len, &off) : NULL;
    if (!name || !module) {
        free(name);
        free(module);
        return 0;
    }
    if (id >= t->cap) {
        uint32_t cap = t->cap ? t->cap : 256;
        while (cap <= id)
            cap *= 2;
        struct type_entry *n = realloc(t->entries, cap * sizeof(*n));
        if (!n) {
            free(name);
            free(module);
            return -ENOMEM;
        }
        memset(n + t->cap, 0, (cap - t->cap) * sizeof(*n));
        t->entries = n;
        t->cap = cap;
    }
    e = &t->entries[id];
    if (e->defined && (e->info.flags & RS_TYPE_MODULE) && !(flags & RS_TYPE_MODULE) &&
        !strcmp(e->info.name, name)) {
        free(name);
        free(module);
        return 0;
    }
    entry_clear(e);
    e->info.name = name;
    e->info.module = module[0] ? module : NULL;
    if (!module[0])
        free(module);
    e->info.flags = flags;
    e->defined = 1;
    return 0;
}

const struct rs_type_info *rs_types_get(const struct rs_types *t, uint32_t id)
{
    if (!t || id >= t->cap || !t->entries[id].defined)
        return NULL;
    return &t->entries[id].info;
}

const char *rs_types_display(const struct rs_types *t, uint32_t id)
{
    struct type_entry *e;
    if (!t || id >= t->cap || !t->entries[id].defined)
        return "?";
    e = &t->entries[id];
    if (e->display)
        return e->display;
    if ((e->info.flags & RS_TYPE_HEAP) && e->info.module && strcmp(e->info.module, "builtins")) {
        size_t n = strlen(e->info.module) + strlen(e->info.name) + 2;
        e->display = malloc(n);
        if (e->display) {
            snprintf(e->display, n, "%s.%s", e->info.module, e->info.name);
            return e->display;
        }
    }
    return e->info.name;
}
