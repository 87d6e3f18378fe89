/*
 * Reading a trace: the one API every analysis uses. It opens a .rfs file,
 * checks its header, and hands out records in trace order with times already
 * converted to nanoseconds since the process started. Analyses never parse
 * bytes themselves.
 */
#ifndef REFSCOPE_TRACE_READ_H
#define REFSCOPE_TRACE_READ_H

#include <stddef.h>
#include <stdint.h>
#include "refscope/events.h"
#include "refscope/trace.h"

/* One decoded record. For VAR kinds `payload`/`payload_len` hold the payload
 * (valid until the next rs_trace_next call); for fixed kinds they are NULL/0. */
struct rs_event {
    uint64_t ordinal;     /* position in the process's record stream      */
    uint8_t  kind;        /* enum rs_event_kind                           */
    uint8_t  flags;
    uint16_t thread;
    uint32_t stack;       /* fixed kinds only                             */
    uint64_t time_ns;     /* ns since process start (rs_trace_info.start) */
    uint64_t addr;
    uint64_t size;
    const uint8_t *payload;
    uint32_t payload_len;
};

struct rs_trace_info {
    uint16_t major, minor;
    uint32_t pid, ppid;
    uint32_t py_version;        /* PY_VERSION_HEX or 0 (an RS_EV_PYTHON record
                                   replaces it and proc_flags, at open)   */
    uint32_t proc_flags;        /* RS_PROC_*                              */
    uint64_t start_real_ns;     /* wall clock at process start            */
    const char *exe;
    const char *cmdline;        /* arguments joined by single spaces      */
    /* filled in as reading proceeds, final after rs_trace_next returned 0: */
    int      has_trailer;       /* 0: recorder did not finish the file     */
    uint32_t end_reason;        /* with a trailer: enum rs_end_reason (events.h) */
    int      truncated;         /* a damaged/short last chunk was dropped  */
    uint64_t producer_waits;
    uint64_t lost_events;
    uint64_t end_ns;            /* time of the last record                */
};

struct rs_trace;

/* Open `path`. Returns 0, or a negative errno-style code with a one-line
 * human message in err (e.g. "x.rfs: not a refscope trace",
 * "x.rfs: trace format 2.0 is newer than this refscope (reads 1.x)"). */
int rs_trace_open(const char *path, struct rs_trace **out, char *err, size_t errlen);

const struct rs_trace_info *rs_trace_info(const struct rs_trace *t);

/* Next record: 1 = *ev filled, 0 = end of trace, <0 = error (message in err).
 * A truncated last chunk is not an error: it sets info->truncated and ends. */
int rs_trace_next(struct rs_trace *t, struct rs_event *ev, char *err, size_t errlen);

/* Rewind to the first record (analyses that need two passes). */
int rs_trace_rewind(struct rs_trace *t, char *err, size_t errlen);

void rs_trace_close(struct rs_trace *t);

/* "alloc", "py_stack", ...: the name of a record kind (as `refscope dump`
 * prints it), or NULL for a kind this reader does not know. */
const char *rs_event_kind_name(uint8_t kind);

/* The analyses' "feed" functions (stacks, types, heap, gc model, snapshots)
 * return 0, -EPROTO for a record whose payload breaks its layout, or
 * -ENOMEM. This writes the one-line message for such a failure: "PATH:
 * malformed KIND record at ordinal N (the trace is damaged)", or "out of
 * memory". */
void rs_trace_record_error(char *err, size_t errlen, const char *path, const struct rs_event *ev, int ret);

#endif
