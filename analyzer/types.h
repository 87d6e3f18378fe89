/*
 * The Python type table, rebuilt from RS_EV_PY_TYPE records: type id →
 * name, module, flags. Shared by gc, lifetimes, leaks and cycles reports.
 */
#ifndef REFSCOPE_TYPES_H
#define REFSCOPE_TYPES_H

#include <stdint.h>
#include "trace_read.h"

struct rs_type_info {
    const char *name;      /* tp_name as the interpreter has it ("dict", "mod.Cls") */
    const char *module;    /* or NULL */
    uint32_t flags;        /* RS_TYPE_* from events.h */
};

struct rs_types;
struct rs_types *rs_types_new(void);
void rs_types_free(struct rs_types *t);
int rs_types_feed(struct rs_types *t, const struct rs_event *ev);
/* NULL for unknown ids */
const struct rs_type_info *rs_types_get(const struct rs_types *t, uint32_t id);

/* The name a report shows: "module.Name" for heap types whose module is known
 * (and not builtins), tp_name otherwise, "?" for unknown ids. Valid until
 * rs_types_free. */
const char *rs_types_display(const struct rs_types *t, uint32_t id);

#endif
