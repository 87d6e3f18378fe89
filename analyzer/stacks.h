/*
 * Stacks, resolved offline: turns the stack ids carried by ALLOC records
 * into frames a person reads. Python frames come from RS_EV_PY_CODE and
 * RS_EV_PY_STACK records; native frames from RS_EV_NATIVE_STACK and
 * RS_EV_MODULE_MAP records, symbolized with libdw (function, file:line,
 * inlined frames). With native stacks, Python frames are spliced in place of
 * the interpreter's eval-loop frames to give one mixed stack.
 */
#ifndef REFSCOPE_STACKS_H
#define REFSCOPE_STACKS_H

#include <stdint.h>
#include "trace_read.h"

struct rs_frame {
    const char *function;   /* qualified name where the version has it, or symbol */
    const char *file;       /* source file, or NULL                               */
    uint32_t line;          /* 0 when unknown                                     */
    uint8_t native;         /* 1 = native frame                                   */
    uint8_t inlined;        /* native frame inlined into the next one             */
    uint64_t ip;            /* native instruction pointer                         */
    const char *module;     /* native: shared object path                         */
};

struct rs_stacks;

struct rs_stacks *rs_stacks_new(void);
void rs_stacks_free(struct rs_stacks *s);

/* Feed every record in trace order; stack-definition records are kept,
 * others ignored. Returns 0, -EPROTO for a malformed stack record (a damaged
 * trace: rs_trace_record_error says so) or -ENOMEM. */
int rs_stacks_feed(struct rs_stacks *s, const struct rs_event *ev);

/* Frames of stack `id`, innermost first. Returns the count (0 for id 0 or
 * unknown ids); *frames stays valid until rs_stacks_free. */
int rs_stacks_resolve(struct rs_stacks *s, uint32_t id, const struct rs_frame **frames);

/* Added by the stacks feature (backward compatible): native = 1 (the
 * default) resolves native frames and splices Python frames into them;
 * native = 0 returns Python frames only without symbolizing anything (fast).
 * Call before the first rs_stacks_resolve. */
void rs_stacks_set_native(struct rs_stacks *s, int native);

/* Warnings to print once in reports (e.g. "libfoo.so changed since the
 * trace was taken (build-id differs): its frames are not symbolized"), or NULL. */
const char *rs_stacks_warnings(const struct rs_stacks *s);

#endif
