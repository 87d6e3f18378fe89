/*
 * The shared-memory ring between a traced process (producers: every thread
 * of the shim) and the recorder (one consumer, in another process).
 *
 * Layout. One memfd per traced process, created by the shim (MFD_CLOEXEC,
 * mode 0600 by construction: memfds are private to the process and passed to
 * the recorder over a unix socket with SCM_RIGHTS). The mapping is
 *   [ struct rs_ring_header (4096 bytes) ][ capacity * 32-byte slots ]
 * capacity is a power of two.
 *
 * Protocol.
 *  - A producer reserves n consecutive slots by CAS on `head` (a 64-bit
 *    count of slots ever reserved, never wraps in practice). Slot index i
 *    lives at slots[i & (capacity - 1)]. Reservation fails while
 *    head + n - tail > capacity: lossless mode waits (counting one wait per
 *    reservation that had to wait), lossy mode drops the record and counts it.
 *  - The producer writes the record; for a VAR record the continuation slots
 *    first (byte 0 = RS_EV_CONT), then the first slot's fields, then stores
 *    the first slot's `kind` byte with release order. That store commits.
 *  - The consumer reads slot `tail`: kind == 0 means not yet committed; it
 *    waits. Otherwise it loads the record (acquire), copies it out, zeroes the
 *    kind byte of every slot of the record and advances `tail` (release).
 *    The consumer never sees a half-written record.
 *  - When the producer process is dead (socket EOF) a slot with kind == 0
 *    below `head` is a record whose producer died mid-write: the consumer
 *    skips it and any RS_EV_CONT slots after it (rs_ring_consume with
 *    RS_RING_PRODUCER_DEAD). Everything committed is still delivered.
 *  - A record never spans the wrap point in the reader's view: slots are
 *    addressed modulo capacity, so a VAR record may wrap; readers copy it out
 *    slot by slot.
 *
 * Nothing here allocates, locks or calls stdio: the producer side runs inside
 * malloc hooks and in fork children.
 */
#ifndef REFSCOPE_RING_H
#define REFSCOPE_RING_H

#include <stddef.h>
#include <stdint.h>
#include "refscope/events.h"

#define RS_RING_MAGIC   0x474e495253464552ull /* "REFSRING" */
#define RS_RING_VERSION 1u
#define RS_RING_HEADER_BYTES 4096u
#define RS_RING_DEFAULT_BYTES (64u << 20) /* slots area; REFSCOPE_RING_MB overrides */

#define RS_RING_LOSSY 0x1u

struct rs_ring_header {
    uint64_t magic;
    uint32_t version;
    uint32_t slot_bytes;     /* 32 */
    uint64_t capacity;       /* slots, power of two */
    uint32_t flags;          /* RS_RING_LOSSY */
    uint32_t producer_pid;
    uint8_t  pad0[64 - 32];
    _Alignas(64) uint64_t head;     /* slots reserved (producers, CAS)        */
    uint8_t  pad1[56];
    _Alignas(64) uint64_t tail;     /* slots consumed (consumer, release)     */
    uint8_t  pad2[56];
    _Alignas(64) uint64_t waits;    /* reservations that found the ring full  */
    uint64_t dropped;               /* records dropped in lossy mode          */
    uint64_t closed;                /* producer wrote RS_EV_END; no more records */
};
_Static_assert(sizeof(struct rs_ring_header) <= RS_RING_HEADER_BYTES, "ring header");

struct rs_ring {
    struct rs_ring_header *hdr;
    struct rs_slot *slots;
    uint64_t mask;        /* capacity - 1 */
    size_t map_bytes;     /* header + slots */
    /* Producer-process only (set to 0/NULL by rs_ring_format/attach): */
    uint64_t tail_cache;  /* last tail a producer read; avoids a shared load per reserve */
    /* Lossless waits call this about every 100 ms while the ring stays full;
     * a nonzero return gives up (the record is dropped and counted), e.g.
     * when the recorder is gone. NULL = wait forever. */
    int (*stalled)(void *ctx);
    void *stall_ctx;
};

/* Number of slots a VAR record with `len` payload bytes takes. */
static inline uint32_t rs_var_slots(uint32_t len)
{
    return len <= 16 ? 1u : 1u + (len - 16 + 30) / 31;
}

/* ---- set-up (either side) ------------------------------------------------------ */

/* Initialise a freshly mapped, zeroed region of `map_bytes` as a ring.
 * Returns 0 or -EINVAL when the size is not header + power-of-two slots. */
int rs_ring_format(struct rs_ring *ring, void *map, size_t map_bytes,
                   uint32_t flags, uint32_t producer_pid);

/* Attach to a region formatted by rs_ring_format (the recorder's side).
 * Returns 0, or -EPROTO on a bad magic/version/size. */
int rs_ring_attach(struct rs_ring *ring, void *map, size_t map_bytes);

/* ---- producer ------------------------------------------------------------------ */

/* Reserve n slots. Returns the first slot index, or UINT64_MAX when the
 * record was dropped (lossy mode, or the ring is closed). In lossless mode
 * waits (spin, then sched_yield, then short nanosleeps) while the ring is full. */
uint64_t rs_ring_reserve(struct rs_ring *ring, uint32_t n);

static inline struct rs_slot *rs_ring_slot(struct rs_ring *ring, uint64_t index)
{
    return &ring->slots[index & ring->mask];
}

/* Commit the record whose first slot is `index` (all fields but kind written). */
static inline void rs_ring_commit(struct rs_ring *ring, uint64_t index, uint8_t kind)
{
    __atomic_store_n(&rs_ring_slot(ring, index)->kind, kind, __ATOMIC_RELEASE);
}

/* Convenience: write a whole fixed record. Returns 0, or -ENOSPC if dropped. */
int rs_ring_put(struct rs_ring *ring, const struct rs_slot *rec);

/* Write a VAR record: fixed part from `rec` (its `stack` is set to len),
 * payload spread over continuation slots. Returns 0, or -ENOSPC if dropped. */
int rs_ring_put_var(struct rs_ring *ring, const struct rs_slot *rec,
                    const void *payload, uint32_t len);

/* ---- consumer ------------------------------------------------------------------ */

#define RS_RING_PRODUCER_DEAD 0x1u

/* Copy the next committed record out of the ring. The fixed part goes to
 * *rec; for a VAR record up to `cap` payload bytes go to `payload` and the
 * full length to *len (a record longer than cap is truncated and flagged by
 * *len > cap). Returns 1 when a record was consumed, 0 when none is ready,
 * -EPROTO when the ring is corrupt. With RS_RING_PRODUCER_DEAD, uncommitted
 * slots below head are skipped instead of waited for. */
int rs_ring_consume(struct rs_ring *ring, struct rs_slot *rec,
                    void *payload, uint32_t cap, uint32_t *len, unsigned flags);

#endif
