/*
 * Per-stack allocation metrics, shared by `refscope top` and
 * `refscope flamegraph`: for every stack id seen on an allocation, how many
 * allocations and bytes it made, how many of its bytes were live at the
 * moment of the global peak (leaf domains summed, as heap.h defines it) and
 * at the end of the trace. Built with two replays of the trace through
 * heap.h: the first finds the peak record and everything else, the second
 * stops at the peak record and reads each stack's live bytes there.
 * Arena blocks (RS_DOMAIN_ARENA) back other blocks and are never counted.
 * "End" is the start of interpreter finalization (the first shutdown
 * collection, RS_GC_F_SHUTDOWN) when the trace has one: module teardown
 * frees what the program left behind, so live bytes are read just before
 * it. Otherwise it is the end of the trace.
 */
#ifndef REFSCOPE_SITES_H
#define REFSCOPE_SITES_H

#include <stddef.h>
#include <stdint.h>
#include "heap.h"
#include "stacks.h"
#include "trace_read.h"

struct rs_stack_metrics {
    uint32_t stack;            /* stack id (0 = allocations without a stack) */
    uint64_t allocations;      /* ALLOC records (realloc halves included, restores not) */
    uint64_t bytes;            /* bytes allocated in total                   */
    uint64_t peak_bytes;       /* bytes live at the global peak              */
    uint64_t live_bytes_end;   /* bytes live at the end of the trace         */
    uint64_t live_blocks_end;
};

struct rs_sites_model {
    struct rs_trace *trace;
    struct rs_stacks *stacks;        /* every stack definition, resolved on demand */
    struct rs_stack_metrics *metrics; /* one per stack id seen, in no order  */
    size_t count;
    struct rs_heap_stats stats;      /* final heap statistics                 */
    int has_native;                  /* the trace has native stacks            */
    int end_at_finalization;         /* "end" = start of interpreter finalization */
    uint64_t end_ordinal;            /* its record, when end_at_finalization   */
};

/* Reads `path` and builds the model. Returns 0, or a negative errno with a
 * one-line message in err. */
int rs_sites_build(const char *path, struct rs_sites_model *m, char *err, size_t errlen);
void rs_sites_free(struct rs_sites_model *m);

/* The frames of `stack` as reports show them, innermost first, at most cap:
 * the mixed stack when `native` is set or the traced process is not Python,
 * else its Python frames only. Returns the count. */
int rs_sites_view(struct rs_sites_model *m, uint32_t stack, int native,
                  const struct rs_frame **out, int cap);

/* Whether reports show native frames for this trace given the --native flag. */
int rs_sites_native(const struct rs_sites_model *m, int native_flag);

#endif
