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
#include "refscope/ring.h"

/* Nonzero while records are being written (ring attached, not closed). */
int rs_emit_active(void);

/* This thread's index (assigns one and emits RS_EV_THREAD on first use). */
uint16_t rs_emit_thread(void);

/* Increments each time this process starts a new trace (a fork child gets
 * its own ring and file). Every dedup table (code objects, stacks, types,
 * native stacks, module maps) must forget what it emitted when this changes,
 * so that each trace defines everything it uses. Inline, below. */
static inline uint32_t rs_emit_epoch(void);

/* An exact reading of the event clock, now. Also becomes this thread's
 * cached reading (see rs_emit_event), so a thread's record times never go
 * backwards. For records that are rare or need an exact time. */
uint64_t rs_emit_now(void);

/* Any fixed record on the hot path (allocations, frees, object events),
 * stamped with this thread's cached clock reading: see "Resolution" in
 * include/refscope/clock.h. Inline, below: always inlined, because the hooks
 * are the callers and a call would cost about as much as the record. Only
 * the solo thread's lane (rs_emit_lane, about 30 instructions) is inline;
 * everything else (other threads, the first record, a clock reading, a full
 * ring) is rs_emit_event_shared. */
__attribute__((always_inline))
static inline void rs_emit_event(uint8_t kind, uint8_t flags, uint64_t addr, uint64_t size,
                                 uint32_t stack);

/* Allocation/free records. `stack` is a stack id or 0. Call rs_emit_free
 * BEFORE the real free and rs_emit_alloc AFTER the real allocation. */
__attribute__((always_inline))
static inline void rs_emit_alloc(uint8_t domain_flags, uint64_t addr, uint64_t size, uint32_t stack)
{
    rs_emit_event(RS_EV_ALLOC, domain_flags, addr, size, stack);
}

__attribute__((always_inline))
static inline void rs_emit_free(uint8_t domain_flags, uint64_t addr)
{
    rs_emit_event(RS_EV_FREE, domain_flags, addr, 0, 0);
}

/* Any fixed record; rec->thread and rec->time (exact: rs_emit_now) are
 * filled in when zero. */
void rs_emit_fixed(struct rs_slot *rec);

/* Any VAR record with payload; thread/time filled in as above. */
void rs_emit_var(uint8_t kind, uint8_t flags, uint64_t addr, uint64_t size,
                 const void *payload, uint32_t len);

/* An RS_EV_NOTE record: a fact or warning for reports (code from events.h). */
void rs_emit_note(uint16_t code, const char *text);

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

/* Before writing into the ring outside emit.c (shim.c's END record): see
 * rs_emit_claim below. */
static inline void rs_emit_claim(void);

/* Fork child: forget every thread index (only the caller survives a fork)
 * and start a new epoch. Call before rs_emit_start on the child's ring. */
void rs_emit_fork_child(void);


/* ---- the hot path, inline (state owned by emit.c) ------------------------------ */
/* Everything one fixed record needs, together: one cache line of globals read
 * per record, no calls. Set up by rs_emit_start/fork_child; while recording
 * only solo/solo_busy (solo mode) and ring.tail_cache (full ring) change. */
struct rs_emit_hot {
    int lossy;             /* RS_RING_LOSSY: drops are reported as RS_EV_LOST     */
    uint32_t clock_kind;   /* enum rs_clock_kind                                 */
    uint32_t solo;         /* solo mode (emit.c): the thread value (index + 1) that
                              may reserve without a locked instruction, or one of
                              the RS_EMIT_SOLO_* values, never a thread's. Only
                              while tracing is on: rs_emit_stop ends solo mode */
    uint32_t solo_busy;    /* nonzero while that thread is inside such a reservation */
    struct rs_ring ring;   /* this process's ring while rs_emit_on              */
    uint32_t epoch;        /* rs_emit_epoch()                                    */
};
extern struct rs_emit_hot rs_emit_hot;

/* rs_emit_hot.solo when no thread is in solo mode (none may claim it). */
#define RS_EMIT_SOLO_NONE 0xfffffffdu

/* Per-thread state (initial-exec TLS: no allocation on first touch). */
struct rs_emit_tls {
    uint32_t thread;       /* thread index + 1; 0 = none assigned yet            */
    int32_t left;          /* records the cached reading may still stamp         */
    uint64_t ticks;        /* cached event-clock reading                          */
    uint64_t seen;         /* the ring's `now` word when `ticks` was read        */
};
extern __thread struct rs_emit_tls rs_emit_tls __attribute__((tls_model("initial-exec")));

/* A thread re-reads the clock at least every RS_EMIT_CLOCK_RECORDS records
 * (and whenever the recorder has refreshed the ring's `now` since): reading
 * the TSC costs ~15-20 ns in our VMs, more than the rest of a record. */
#define RS_EMIT_CLOCK_RECORDS 64u

/* Out-of-line parts of rs_emit_event (emit.c). */
void rs_emit_event_shared(uint8_t kind, uint8_t flags, uint64_t addr, uint64_t size, uint32_t stack);
void rs_emit_solo_settle(uint32_t thread);

/* Make the calling thread's next locked reservation safe: it claims solo
 * mode when nobody has, or ends another thread's (emit.c). Every ring
 * reservation of the shim goes through here, or is the solo lane's
 * (rs_emit_event). */
static inline void rs_emit_claim(void)
{
    uint32_t me = rs_emit_tls.thread;
    uint32_t solo = __atomic_load_n(&rs_emit_hot.solo, __ATOMIC_RELAXED);
    if (__builtin_expect(solo != RS_EMIT_SOLO_NONE && solo != me, 0))
        rs_emit_solo_settle(me);
}

static inline uint32_t rs_emit_epoch(void)
{
    return __atomic_load_n(&rs_emit_hot.epoch, __ATOMIC_ACQUIRE);
}

/* Write a fixed record of thread index `thread` into the reserved slot
 * `index` and commit it. */
__attribute__((always_inline))
static inline void rs_emit_write(uint64_t index, uint8_t kind, uint8_t flags, uint16_t thread,
                                 uint32_t stack, uint64_t time, uint64_t addr, uint64_t size)
{
    struct rs_slot *slot = rs_ring_slot(&rs_emit_hot.ring, index);
    slot->flags = flags;
    slot->thread = thread;
    slot->stack = stack;
    slot->time = time;
    slot->addr = addr;
    slot->size = size;
    rs_ring_commit_slot(slot, kind);
}

/* The solo thread's lane: writes the record and returns 1, or declines
 * (returns 0, nothing written) and the caller takes rs_emit_event_shared.
 * A leaf: no call on any path, so that a hook calling it needs no stack
 * frame of its own. The thread's value in rs_emit_hot.solo says at once that
 * tracing is on (rs_emit_stop ends solo mode), that the thread has its index
 * and that no other thread reserves. It declines when the cached clock
 * reading is used up or stale (the shared path reads the clock) and when
 * the ring looks full (drops, in lossy mode, happen only on the shared path,
 * which reports them). The ring is never closed in solo mode: closing it
 * ends solo mode first (shim.c). */
__attribute__((always_inline))
static inline int rs_emit_lane(uint8_t kind, uint8_t flags, uint64_t addr, uint64_t size,
                               uint32_t stack)
{
    struct rs_emit_tls *t = &rs_emit_tls;
    uint32_t thread = t->thread;
    if (__builtin_expect(__atomic_load_n(&rs_emit_hot.solo, __ATOMIC_RELAXED) != thread, 0))
        return 0;
    struct rs_ring *ring = &rs_emit_hot.ring;
    /* the cached reading: counted down here even when the lane then declines
     * (the shared path reads the clock afresh once the count is used up) */
    if (__builtin_expect(__atomic_load_n(&ring->hdr->now, __ATOMIC_RELAXED) != t->seen, 0) ||
        __builtin_expect(--t->left < 0, 0))
        return 0;
    /* The busy count brackets the unlocked reservation; the fences are
     * compiler fences only, the CPU half is the membarrier of whoever ends
     * solo mode (emit.c). */
    uint64_t index;
    int got = 0;
    uint32_t busy = __atomic_load_n(&rs_emit_hot.solo_busy, __ATOMIC_RELAXED);
    __atomic_store_n(&rs_emit_hot.solo_busy, busy + 1, __ATOMIC_RELAXED);
    __atomic_signal_fence(__ATOMIC_SEQ_CST);
    if (__builtin_expect(__atomic_load_n(&rs_emit_hot.solo, __ATOMIC_RELAXED) == thread, 1))
        got = rs_ring_reserve_solo(ring, 1, &index);
    /* restores (not decrements): a signal handler in between left it as it found it */
    __atomic_store_n(&rs_emit_hot.solo_busy, busy, __ATOMIC_RELEASE);
    if (__builtin_expect(!got, 0))
        return 0;
    rs_emit_write(index, kind, flags, (uint16_t)(thread - 1), stack, t->ticks, addr, size);
    return 1;
}

__attribute__((always_inline))
static inline void rs_emit_event(uint8_t kind, uint8_t flags, uint64_t addr, uint64_t size,
                                 uint32_t stack)
{
    if (__builtin_expect(!rs_emit_lane(kind, flags, addr, size, stack), 0))
        rs_emit_event_shared(kind, flags, addr, size, stack);
}

#endif
