/*
 * Heap snapshots rebuilt from RS_EV_SNAPSHOT records (layout: the issue-5
 * section of include/refscope/events.h): for each complete snapshot, its
 * objects (address, type, size, refcount, flags), their references as an
 * index graph (CSR), labels (module names, str prefixes, dict keys), and the
 * allocation site of each object found through the live heap at the moment
 * the snapshot ended (object address minus pre-header → block → stack).
 * Shared by `refscope leaks`, `refscope cycles` and `refscope diff`.
 */
#ifndef REFSCOPE_SNAPSHOT_H
#define REFSCOPE_SNAPSHOT_H

#include <stddef.h>
#include <stdint.h>
#include "heap.h"
#include "stacks.h"
#include "trace_read.h"
#include "u64map.h"

#define RS_SNAP_NONE UINT32_MAX

struct rs_snap_object {
    uint64_t addr;
    uint64_t refcnt;        /* 0 when immortal                         */
    uint64_t alloc_ns;      /* time of its allocation, UINT64_MAX unknown */
    uint32_t type;          /* index into rs_snapshot.types            */
    uint32_t size;
    uint32_t stack;         /* allocation stack id (0 = unknown)       */
    uint32_t label;         /* offset into rs_snapshot.strings, or RS_SNAP_NONE */
    uint8_t  flags;         /* RS_SNAP_OBJ_*                           */
    uint8_t  preheader;
    uint8_t  has_block;     /* its memory block was found in the heap   */
};

struct rs_snap_type {
    uint64_t addr;
    uint32_t id;            /* RS_EV_PY_TYPE id, 0 unknown             */
    uint32_t flags;         /* tp_flags                                */
    const char *name;
};

struct rs_snapshot {
    uint32_t seq;
    uint8_t reason;         /* enum rs_snap_reason                     */
    uint8_t gc_enabled;     /* 0, 1, 255 unknown                       */
    uint32_t status;        /* END status bits                         */
    uint64_t time_ns;       /* when it ended                           */
    uint64_t duration_ns;   /* as the shim measured it                 */
    uint64_t record_bytes;  /* payload bytes of its records            */
    struct rs_snap_object *objs;
    size_t nobjs;
    uint64_t *edge_start;   /* nobjs + 1 entries (CSR)                 */
    uint32_t *edges;        /* target object index, RS_SNAP_NONE when unknown */
    size_t nedges;
    struct rs_snap_type *types;
    size_t ntypes;
    char *strings;          /* labels, NUL-terminated                  */
    size_t strings_len;
    /* dict-key labels of edges, sorted by edge index */
    uint64_t *key_edge;     /* edge index                              */
    uint32_t *key_text;     /* offset into strings                     */
    size_t nkeys;
    struct u64map by_addr;  /* address → object index                  */
};

struct rs_snapshots;

struct rs_snapshots *rs_snapshots_new(void);
void rs_snapshots_free(struct rs_snapshots *s);

/* Feed every record in trace order, after applying it to `heap` (which may
 * be NULL: then objects get no allocation site). Returns 0 or -ENOMEM. */
int rs_snapshots_feed(struct rs_snapshots *s, const struct rs_event *ev, const struct rs_heap *heap);

size_t rs_snapshots_count(const struct rs_snapshots *s);
/* The i-th complete snapshot (0-based, in trace order). */
const struct rs_snapshot *rs_snapshots_get(const struct rs_snapshots *s, size_t i);
/* The snapshot numbered seq (as the shim numbered it), or NULL. */
const struct rs_snapshot *rs_snapshots_find(const struct rs_snapshots *s, uint32_t seq);
/* The snapshot numbered by the text `number` (a command-line argument), or
 * NULL after one line on stderr: "refscope CMD: PATH: no snapshot numbered
 * 'N' (the trace has snapshots 1 to 4)". */
const struct rs_snapshot *rs_snapshots_pick(const struct rs_snapshots *s, const char *cmd,
                                            const char *path, const char *number);

/* Index of the object at addr, or RS_SNAP_NONE. */
uint32_t rs_snapshot_lookup(const struct rs_snapshot *snap, uint64_t addr);

/* Type name of object i ("?" when unknown). */
const char *rs_snapshot_type_name(const struct rs_snapshot *snap, uint32_t i);
/* Label of object i (module name, str prefix, type name) or NULL. */
const char *rs_snapshot_label(const struct rs_snapshot *snap, uint32_t i);
/* Dict-key label of edge e (index into edges) or NULL. */
const char *rs_snapshot_edge_key(const struct rs_snapshot *snap, uint64_t e);

/* One readable step for object i ("module __main__", "list", "str 'abc'",
 * "Foo") into buf; and for edge e of object i ("key 'x'", "index 3") or ""
 * when the edge has nothing to say. Return buf. */
const char *rs_snapshot_describe(const struct rs_snapshot *snap, uint32_t i, char *buf, size_t len);
const char *rs_snapshot_describe_edge(const struct rs_snapshot *snap, uint32_t i, uint64_t e,
                                      char *buf, size_t len);

/* Reads a whole trace: heap replay, stacks and snapshots in one pass, for
 * the three commands. On success *t owns everything (free with
 * rs_snapshot_trace_close) and its sites are `site_depth` frames deep.
 * Returns 0, or a negative errno after printing "refscope CMD: <why>" on
 * stderr (like rs_snapshots_pick). */
struct rs_site_index;
struct rs_snapshot_trace {
    struct rs_trace *trace;
    struct rs_heap *heap;
    struct rs_stacks *stacks;
    struct rs_snapshots *snaps;
    uint64_t end_ns;
    uint64_t startup_end_ns;   /* end of import-time start-up (see cmd_leaks.c), UINT64_MAX unknown */
    uint64_t run_end_ns;       /* end of the program's own run: the exit snapshot, else the
                                  start of interpreter finalization, else end_ns (teardown
                                  frees what the program left behind, leaks included) */
    int site_depth;            /* frames per site (rs_snapshot_site), 0 = all */
    struct rs_site_index *sites;
};
int rs_snapshot_trace_open(const char *cmd, const char *path, int site_depth,
                           struct rs_snapshot_trace *t);
void rs_snapshot_trace_close(struct rs_snapshot_trace *t);

/* The frames of a stack, innermost first (Python frames only when it has
 * any). Returns the count. */
int rs_snapshot_frames(struct rs_snapshot_trace *t, uint32_t stack, const struct rs_frame **frames);

/* JSON list of {function, file, line, native} for a stack (jansson json_t *). */
struct json_t;
struct json_t *rs_snapshot_frames_json(struct rs_snapshot_trace *t, uint32_t stack);

/* Allocation sites (siteindex.h) t->site_depth frames deep, the index made
 * on first use. *site receives the site id; site 0 is "(unknown site)".
 * Returns 0 or -ENOMEM. */
int rs_snapshot_site(struct rs_snapshot_trace *t, uint32_t stack, uint32_t *site);
/* The text of a site id from rs_snapshot_site. */
const char *rs_snapshot_site_name(const struct rs_snapshot_trace *t, uint32_t site);
/* "innermost Python frame", "2 innermost frames", "whole stack": what a
 * site is at t->site_depth, for report headers. */
const char *rs_snapshot_site_depth_text(const struct rs_snapshot_trace *t, char *buf, size_t len);

/* "exit", "signal", "interval" or "?" for enum rs_snap_reason. */
const char *rs_snapshot_reason_name(uint8_t reason);

/* A signed byte count: "+1.50 MiB" / "-12 B" (unsigned ones: units.h). */
const char *rs_snapshot_delta_bytes_text(int64_t delta, char *buf, size_t len);

#endif
