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
 *    count of slots ever reserved, never wraps in practice), or, while it is
 *    the only producer, by an unlocked compare-and-exchange
 *    (rs_ring_reserve_solo; who may is the producer side's business). Either
 *    way the order of head increments is the order of records. Slot index i
 *    lives at slots[i & (capacity - 1)]. Reservation fails while
 *    head + n - tail > capacity: lossless mode waits (counting one wait per
 *    reservation that had to wait) until n + capacity/16 slots are free
 *    (batches, see rs_ring_reserve_slow), lossy mode drops the record and
 *    counts it. A lossless wait drops and counts too when the ring cannot
 *    drain: the slot at tail reserved and uncommitted for a second (see
 *    struct rs_ring, `blocked_tail`).
 *  - The producer writes the record; for a VAR record the continuation slots
 *    first (byte 0 = RS_EV_CONT), then the first slot's fields, then stores
 *    the first slot's `kind` byte with release order. That store commits.
 *  - The consumer reads slot `tail`: kind == 0 means not yet committed; it
 *    waits. Otherwise it loads the record (acquire), copies it out, zeroes the
 *    kind byte of every slot of the record and advances `tail` (release).
 *    The consumer never sees a half-written record.
 *  - When the producer process is dead (the recorder saw it end, or exec)
 *    a slot with kind == 0 below `head` is a record whose producer died
 *    mid-write: the consumer skips it and any RS_EV_CONT slots after it
 *    (rs_ring_consume with RS_RING_PRODUCER_DEAD). Everything committed is
 *    still delivered.
 *  - A record never spans the wrap point in the reader's view: slots are
 *    addressed modulo capacity, so a VAR record may wrap; readers copy it out
 *    slot by slot.
 *  - `now` is the event clock's coarse shared time: the recorder stores its
 *    own reading of the producer's clock (clock.h) there about once per loop
 *    iteration. Producers never write it; they compare it with the value
 *    they saw when they last read the clock, to bound how stale a cached
 *    reading may get (clock.h, "Resolution"). It sits in the header's spare
 *    bytes, after every version-1 field, so older readers ignore it; 0 means
 *    the recorder has not stored it yet.
 *  - The end of a trace: the producer writes RS_EV_END and sets `closed`
 *    (no reservation succeeds after that); the recorder, seeing `closed`,
 *    drains the ring, finishes the trace file, stores RS_RING_DONE_OK (or
 *    RS_RING_DONE_FAILED) in `done` and wakes its futex. A producer that
 *    wants to wait for its trace to be on disk (the shim's destructor)
 *    waits on that futex: the mapping is shared, so the futex is too. `done`
 *    also sits after every version-1 field.
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
/* Default slots area (REFSCOPE_RING_MB overrides): 512 Ki records, ~20 ms of
 * a producer at full speed, to ride out the recorder's sleeps and batches.
 * Every page of the ring costs the traced process a page fault the first
 * time it is written (~2-4 us each for this shared memory: 64 MiB cost
 * 40-70 ms of CPU per process), and a ring that fits in the last-level cache
 * keeps the slots' cache lines off the memory bus. */
#define RS_RING_DEFAULT_BYTES (16u << 20)

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
    _Alignas(64) uint64_t now;      /* recorder's clock reading (ticks), about once per
                                       loop iteration; its own line: read by every
                                       record, written rarely                    */
    _Alignas(64) uint32_t done;     /* recorder: 0 while the trace is open, then
                                       RS_RING_DONE_OK or RS_RING_DONE_FAILED (futex) */
};
_Static_assert(sizeof(struct rs_ring_header) <= RS_RING_HEADER_BYTES, "ring header");
_Static_assert(offsetof(struct rs_ring_header, closed) == 208 &&
               offsetof(struct rs_ring_header, now) == 256, "version-1 header layout");

#define RS_RING_DONE_OK     1u  /* every record drained, the trace file complete on disk */
#define RS_RING_DONE_FAILED 2u  /* drained, but the trace could not be written          */

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
    /* Lossless waits give up (drop and count) when the slot at `tail` has
     * stayed reserved but uncommitted for RS_RING_BLOCKED_NS: the ring cannot
     * drain past it, and its writer may be the very thread waiting (a
     * signal handler that allocates, interrupting a record of its own
     * thread), which would otherwise wait forever. Such a slot is remembered
     * here (its index + 1) so that later waits on it give up at once. */
    uint64_t blocked_tail;
};
#define RS_RING_BLOCKED_NS 1000000000ull

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

/* The general reservation (below): full ring, lost CAS race, closed ring. */
uint64_t rs_ring_reserve_slow(struct rs_ring *ring, uint32_t n);

/* Reserve n slots. Returns the first slot index, or UINT64_MAX when the
 * record was dropped (lossy mode, or the ring is closed). In lossless mode
 * waits (spin, then sched_yield, then short nanosleeps) while the ring is full.
 * Inline because every allocation record goes through it: the common case
 * (room in the ring by the cached tail, no competing producer) is one CAS;
 * anything else takes rs_ring_reserve_slow, which starts over. */
static inline uint64_t rs_ring_reserve(struct rs_ring *ring, uint32_t n)
{
    struct rs_ring_header *hdr = ring->hdr;
    uint64_t head = __atomic_load_n(&hdr->head, __ATOMIC_RELAXED);
    /* acquire: see rs_ring_reserve_slow (orders our slot writes after the
     * consumer's release of those slots) */
    uint64_t tail = __atomic_load_n(&ring->tail_cache, __ATOMIC_ACQUIRE);
    if (__builtin_expect(n != 0 && head + n - tail <= ring->mask + 1 &&
                         !__atomic_load_n(&hdr->closed, __ATOMIC_RELAXED), 1) &&
        __builtin_expect(__atomic_compare_exchange_n(&hdr->head, &head, head + n, 1,
                                                     __ATOMIC_RELAXED, __ATOMIC_RELAXED), 1))
        return head;
    return rs_ring_reserve_slow(ring, n);
}

/* Reserve n slots without a locked instruction, for a producer that has made
 * sure no other thread reserves in this ring meanwhile (preload/emit.c, "solo
 * mode", ensures that with membarrier). The head is advanced by an unlocked
 * compare-and-exchange: one instruction, so it is atomic against a signal
 * handler that reserves on the same thread, though not against other CPUs.
 * The order of records is the order of head increments, as with the CAS.
 * Returns 1 with the first slot index in *index, or 0 when the ring looks
 * full, n is 0 or more than the ring holds, a nested handler reserved first,
 * or the CPU has no such instruction: the caller then takes rs_ring_reserve.
 * `closed` is not looked at: whoever closes the ring must first make sure no
 * producer is inside this (emit.c ends solo mode before shim.c closes). */
static inline int rs_ring_reserve_solo(struct rs_ring *ring, uint32_t n, uint64_t *index)
{
#if defined(__x86_64__)
    struct rs_ring_header *hdr = ring->hdr;
    uint64_t head = __atomic_load_n(&hdr->head, __ATOMIC_RELAXED);
    uint64_t tail = __atomic_load_n(&ring->tail_cache, __ATOMIC_ACQUIRE);
    /* head + n - tail > capacity, written so that n = 1 compares with mask */
    if (__builtin_expect(n == 0 || n - 1 > ring->mask || head - tail > ring->mask - (n - 1), 0))
        return 0;
    uint64_t seen = head;
    __asm__ __volatile__("cmpxchgq %2, %1" : "+a"(seen), "+m"(hdr->head) : "r"(head + n) : "cc", "memory");
    *index = head;
    return seen == head;
#else
    (void)ring;
    (void)n;
    (void)index;
    return 0;
#endif
}

static inline struct rs_slot *rs_ring_slot(struct rs_ring *ring, uint64_t index)
{
    return &ring->slots[index & ring->mask];
}

/* Commit the record whose first slot is `slot` (all fields but kind written). */
static inline void rs_ring_commit_slot(struct rs_slot *slot, uint8_t kind)
{
    __atomic_store_n(&slot->kind, kind, __ATOMIC_RELEASE);
}

/* The same, by the slot's index. */
static inline void rs_ring_commit(struct rs_ring *ring, uint64_t index, uint8_t kind)
{
    rs_ring_commit_slot(rs_ring_slot(ring, index), kind);
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
 * -EPROTO when the ring is corrupt: an orphaned continuation, or a head
 * more than the capacity ahead of the tail (the program overwrote the
 * header: the mapping is its memory too). With RS_RING_PRODUCER_DEAD,
 * uncommitted slots below head are skipped instead of waited for. */
int rs_ring_consume(struct rs_ring *ring, struct rs_slot *rec,
                    void *payload, uint32_t cap, uint32_t *len, unsigned flags);

/* The consumer's fast path for the common case: copies the longest run of
 * committed FIXED records at the tail (at most max) to out and consumes
 * them. A VAR record, an uncommitted or an orphaned slot ends the run and is
 * left for rs_ring_consume, so mixing the two keeps ring order. Returns the
 * number of records taken (0 when the tail is not a committed fixed record). */
size_t rs_ring_consume_fixed(struct rs_ring *ring, struct rs_slot *out, size_t max);

#endif
