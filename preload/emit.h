/*
 * How shim modules put records into this process's ring. Every hook and
 * every feature (stacks, gc, snapshots) emits through these functions; none
 * touches the ring directly. All of them are safe inside malloc hooks: no
 * allocation, no stdio, no locks. When tracing is off (set-up failed, or after
 * the destructor) they return without doing anything.
 */
#ifndef REFSCOPE_EMIT_H
#define REFSCOPE_EMIT_H

#include <stdint.h>
#include "refscope/events.h"

/* Nonzero while records are being written (ring attached, not closed). */
int rs_emit_active(void);

/* This thread's index (assigns one and emits RS_EV_THREAD on first use). */
uint16_t rs_emit_thread(void);

/* Increments each time this process starts a new trace (a fork child gets
 * its own ring and file). Every dedup table (code objects, stacks, types,
 * native stacks, module maps) must forget what it emitted when this changes,
 * so that each trace defines everything it uses. */
uint32_t rs_emit_epoch(void);

/* Current tick count of the event clock. */
uint64_t rs_emit_now(void);

/* Allocation/free records. `stack` is a stack id or 0. Call rs_emit_free
 * BEFORE the real free and rs_emit_alloc AFTER the real allocation. */
void rs_emit_alloc(uint8_t domain_flags, uint64_t addr, uint64_t size, uint32_t stack);
void rs_emit_free(uint8_t domain_flags, uint64_t addr);

/* Any fixed record; rec->thread and rec->time are filled in when zero. */
void rs_emit_fixed(struct rs_slot *rec);

/* Any VAR record with payload; thread/time filled in as above. */
void rs_emit_var(uint8_t kind, uint8_t flags, uint64_t addr, uint64_t size,
                 const void *payload, uint32_t len);

/* Payload builder for VAR records, on the caller's stack (no allocation).
 * Writes past `cap` set `overflow` and are dropped. */
struct rs_buf {
    uint8_t *data;
    uint32_t len, cap;
    int overflow;
};
void rs_buf_u8(struct rs_buf *b, uint8_t v);
void rs_buf_u16(struct rs_buf *b, uint16_t v);
void rs_buf_u32(struct rs_buf *b, uint32_t v);
void rs_buf_u64(struct rs_buf *b, uint64_t v);
void rs_buf_bytes(struct rs_buf *b, const void *p, uint32_t n);
void rs_buf_str(struct rs_buf *b, const char *s, uint32_t n); /* u16 length + bytes */

/* ---- core set-up: shim.c, forkexec.c and hooks_libc.c only -------------------- */
#include "refscope/ring.h"

/* Hot-path copy of rs_emit_active() for the libc hooks. */
extern int rs_emit_on;

/* Thread index of records made by a thread after its RS_EV_THREAD_EXIT (late
 * frees during thread teardown); never bound by an RS_EV_THREAD record. */
#define RS_THREAD_NONE 0xffffu

/* Create the thread-exit key. Constructor only. Returns 0 or -errno. */
int rs_emit_init(void);

/* Start writing into `ring` (formatted, PROCESS record already in it) with
 * clock `clock_kind`; from now on rs_emit_active() is 1. */
void rs_emit_start(const struct rs_ring *ring, uint32_t clock_kind);

/* Stop writing: every emit returns at once from now on. */
void rs_emit_stop(void);

/* Fork child: forget every thread index (only the caller survives a fork)
 * and start a new epoch. Call before rs_emit_start on the child's ring. */
void rs_emit_fork_child(void);

#endif
