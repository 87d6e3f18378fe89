/*
 * The shared-memory ring (include/refscope/ring.h): multi-producer reserve by
 * CAS on `head`, commit by a release store of the first slot's kind byte,
 * single consumer in another process. Used by the shim (producers, inside
 * malloc hooks: no allocation, no locks, no stdio) and by the recorder.
 */
#include <errno.h>
#include <sched.h>
#include <string.h>
#include <time.h>

#include "refscope/clock.h"
#include "refscope/ring.h"

static int is_pow2(uint64_t v) { return v && !(v & (v - 1)); }

int rs_ring_format(struct rs_ring *ring, void *map, size_t map_bytes,
                   uint32_t flags, uint32_t producer_pid)
{
    if (map_bytes <= RS_RING_HEADER_BYTES)
        return -EINVAL;
    size_t slot_bytes = map_bytes - RS_RING_HEADER_BYTES;
    if (slot_bytes % sizeof(struct rs_slot) || !is_pow2(slot_bytes / sizeof(struct rs_slot)))
        return -EINVAL;

    struct rs_ring_header *hdr = map;
    memset(hdr, 0, sizeof(*hdr));
    hdr->version = RS_RING_VERSION;
    hdr->slot_bytes = sizeof(struct rs_slot);
    hdr->capacity = slot_bytes / sizeof(struct rs_slot);
    hdr->flags = flags;
    hdr->producer_pid = producer_pid;
    __atomic_store_n(&hdr->magic, RS_RING_MAGIC, __ATOMIC_RELEASE);
    return rs_ring_attach(ring, map, map_bytes);
}

int rs_ring_attach(struct rs_ring *ring, void *map, size_t map_bytes)
{
    struct rs_ring_header *hdr = map;
    if (map_bytes <= RS_RING_HEADER_BYTES ||
        __atomic_load_n(&hdr->magic, __ATOMIC_ACQUIRE) != RS_RING_MAGIC ||
        hdr->version != RS_RING_VERSION || hdr->slot_bytes != sizeof(struct rs_slot) ||
        !is_pow2(hdr->capacity) ||
        hdr->capacity != (map_bytes - RS_RING_HEADER_BYTES) / sizeof(struct rs_slot))
        return -EPROTO;
    memset(ring, 0, sizeof(*ring));
    ring->hdr = hdr;
    ring->slots = (struct rs_slot *)((char *)map + RS_RING_HEADER_BYTES);
    ring->mask = hdr->capacity - 1;
    ring->map_bytes = map_bytes;
    ring->tail_cache = __atomic_load_n(&hdr->tail, __ATOMIC_ACQUIRE);
    return 0;
}

/* One step of a full-ring wait: spin, then yield, then sleep 50 us. Returns
 * nonzero when the stall callback says to give up. */
static int ring_wait_step(struct rs_ring *ring, unsigned *step)
{
    unsigned s = (*step)++;
    if (s < 64) {
#if defined(__x86_64__)
        __builtin_ia32_pause();
#endif
        return 0;
    }
    if (s < 128) {
        sched_yield();
        return 0;
    }
    struct timespec ts = { 0, 50000 };
    nanosleep(&ts, NULL);
    if (ring->stalled && (s - 128) % 2000 == 1999) /* about every 100 ms */
        return ring->stalled(ring->stall_ctx);
    return 0;
}

/* More reserved than the ring holds (or a tail past the head): producers
 * never reserve beyond tail + capacity, so the program overwrote the
 * header; the mapping is its memory as much as ours. */
static int ring_overrun(const struct rs_ring *ring, uint64_t tail, uint64_t head)
{
    return head - tail > ring->mask + 1;
}

/* What one wait has seen of the slot at tail: since when (ns, 0 = not
 * seen uncommitted) slot `tail` has been uncommitted. */
struct blocked_watch {
    uint64_t tail, since;
};

/* Is the ring stuck on an uncommitted slot at `tail` (see struct rs_ring,
 * `blocked_tail`)? */
static int ring_blocked(struct rs_ring *ring, uint64_t tail, struct blocked_watch *w)
{
    if (__atomic_load_n(&rs_ring_slot(ring, tail)->kind, __ATOMIC_ACQUIRE) != RS_EV_EMPTY) {
        w->since = 0; /* committed: the consumer is merely behind */
        return 0;
    }
    if (__atomic_load_n(&ring->blocked_tail, __ATOMIC_RELAXED) == tail + 1)
        return 1;
    uint64_t now = rs_clock_mono_ns();
    if (!w->since || w->tail != tail || now < w->since) {
        w->tail = tail;
        w->since = now;
        return 0;
    }
    if (now - w->since < RS_RING_BLOCKED_NS)
        return 0;
    __atomic_store_n(&ring->blocked_tail, tail + 1, __ATOMIC_RELAXED);
    return 1;
}

uint64_t rs_ring_reserve_slow(struct rs_ring *ring, uint32_t n)
{
    struct rs_ring_header *hdr = ring->hdr;
    uint64_t capacity = ring->mask + 1;
    if (n == 0 || n > capacity)
        return UINT64_MAX;
    /* Lossless mode: a producer that finds less than n + `slack` slots free
     * waits until that much is free. With a consumer slower than the
     * producers the ring stays full; waiting for a sixteenth of it rather
     * than for one slot keeps producer and consumer from trading `tail` and
     * the slots' cache lines record by record (each side then works on its
     * own part of the ring, in batches). Lossy mode drops only when full. */
    int lossy = (hdr->flags & RS_RING_LOSSY) != 0;
    uint64_t slack = lossy ? 0 : capacity / 16 < capacity - n ? capacity / 16 : capacity - n;

    uint64_t head = __atomic_load_n(&hdr->head, __ATOMIC_RELAXED);
    struct blocked_watch blocked = {0, 0};
    unsigned step = 0;
    int waited = 0;
    for (;;) {
        if (__builtin_expect(__atomic_load_n(&hdr->closed, __ATOMIC_RELAXED) != 0, 0))
            return UINT64_MAX;
        /* The acquire on tail (or on a tail_cache stored with release after
         * such an acquire) orders our slot writes after the consumer's. */
        uint64_t tail = __atomic_load_n(&ring->tail_cache, __ATOMIC_ACQUIRE);
        if (__builtin_expect(head + n - tail > capacity, 0) || waited) {
            tail = __atomic_load_n(&hdr->tail, __ATOMIC_ACQUIRE);
            __atomic_store_n(&ring->tail_cache, tail, __ATOMIC_RELEASE);
            if (tail > head) /* our head is stale: others reserved and were consumed */
                head = __atomic_load_n(&hdr->head, __ATOMIC_RELAXED);
            /* a tail past even a fresh head, or more reserved than the ring
             * holds: nothing will free room, drop at once rather than wait
             * for the blocked watch */
            if (ring_overrun(ring, tail, head))
                goto drop;
            if (head + n + slack - tail > capacity) {
                if (lossy)
                    goto drop;
                if (!waited) {
                    waited = 1;
                    __atomic_fetch_add(&hdr->waits, 1, __ATOMIC_RELAXED);
                }
                if (ring_blocked(ring, tail, &blocked) || ring_wait_step(ring, &step))
                    goto drop;
                head = __atomic_load_n(&hdr->head, __ATOMIC_RELAXED);
                continue;
            }
        }
        if (__atomic_compare_exchange_n(&hdr->head, &head, head + n, 1,
                                        __ATOMIC_RELAXED, __ATOMIC_RELAXED))
            return head;
    }
drop:
    __atomic_fetch_add(&hdr->dropped, 1, __ATOMIC_RELAXED);
    return UINT64_MAX;
}

int rs_ring_put(struct rs_ring *ring, const struct rs_slot *rec)
{
    uint64_t index = rs_ring_reserve(ring, 1);
    if (index == UINT64_MAX)
        return -ENOSPC;
    struct rs_slot *slot = rs_ring_slot(ring, index);
    memcpy((char *)slot + 1, (const char *)rec + 1, sizeof(*slot) - 1);
    rs_ring_commit(ring, index, rec->kind);
    return 0;
}

int rs_ring_put_var(struct rs_ring *ring, const struct rs_slot *rec,
                    const void *payload, uint32_t len)
{
    uint32_t n = rs_var_slots(len);
    uint64_t index = rs_ring_reserve(ring, n);
    if (index == UINT64_MAX)
        return -ENOSPC;
    const uint8_t *p = payload;
    uint32_t head_len = len < 16 ? len : 16;

    for (uint32_t k = 1; k < n; k++) {
        uint8_t *cont = (uint8_t *)rs_ring_slot(ring, index + k);
        uint32_t off = 16 + (k - 1) * 31;
        uint32_t chunk = len - off < 31 ? len - off : 31;
        cont[0] = RS_EV_CONT;
        memcpy(cont + 1, p + off, chunk);
        memset(cont + 1 + chunk, 0, 31 - chunk);
    }
    struct rs_slot *first = rs_ring_slot(ring, index);
    first->flags = rec->flags;
    first->thread = rec->thread;
    first->stack = len;
    first->time = rec->time;
    uint8_t inline_bytes[16] = { 0 };
    memcpy(inline_bytes, p, head_len);
    memcpy(&first->addr, inline_bytes, 8);
    memcpy(&first->size, inline_bytes + 8, 8);
    rs_ring_commit(ring, index, rec->kind);
    return 0;
}

/* Clear the kind byte of `n` slots from `index` and publish the new tail. */
static void ring_release(struct rs_ring *ring, uint64_t index, uint64_t n)
{
    for (uint64_t k = 0; k < n; k++)
        __atomic_store_n(&rs_ring_slot(ring, index + k)->kind, 0, __ATOMIC_RELAXED);
    __atomic_store_n(&ring->hdr->tail, index + n, __ATOMIC_RELEASE);
}

int rs_ring_consume(struct rs_ring *ring, struct rs_slot *rec,
                    void *payload, uint32_t cap, uint32_t *len, unsigned flags)
{
    struct rs_ring_header *hdr = ring->hdr;
    uint64_t tail = __atomic_load_n(&hdr->tail, __ATOMIC_RELAXED);

    for (;;) {
        struct rs_slot *slot = rs_ring_slot(ring, tail);
        uint8_t kind = __atomic_load_n(&slot->kind, __ATOMIC_ACQUIRE);
        if (kind == RS_EV_EMPTY || kind == RS_EV_CONT) {
            uint64_t head = __atomic_load_n(&hdr->head, __ATOMIC_ACQUIRE);
            if (!(flags & RS_RING_PRODUCER_DEAD))
                return kind == RS_EV_EMPTY && !ring_overrun(ring, tail, head) ? 0 : -EPROTO;
            if (tail >= head)
                return 0;
            if (ring_overrun(ring, tail, head)) /* skipping to that head would take forever */
                return -EPROTO;
            /* A record whose producer died mid-write, or an orphaned
             * continuation of one: skip it. */
            ring_release(ring, tail, 1);
            tail++;
            continue;
        }

        memcpy(rec, slot, sizeof(*rec));
        rec->kind = kind;
        uint64_t n = 1;
        if (RS_EV_IS_VAR(kind)) {
            uint32_t l = rec->stack;
            n = rs_var_slots(l);
            if (n > ring->mask + 1)
                return -EPROTO;
            uint8_t *out = payload;
            uint32_t want = l < cap ? l : cap;
            uint8_t inline_bytes[16];
            memcpy(inline_bytes, &rec->addr, 8);
            memcpy(inline_bytes + 8, &rec->size, 8);
            uint32_t done = want < 16 ? want : 16;
            if (done)
                memcpy(out, inline_bytes, done);
            for (uint64_t k = 1; k < n && done < want; k++) {
                const uint8_t *cont = (const uint8_t *)rs_ring_slot(ring, tail + k);
                if (cont[0] != RS_EV_CONT)
                    return -EPROTO;
                uint32_t chunk = want - done < 31 ? want - done : 31;
                memcpy(out + done, cont + 1, chunk);
                done += chunk;
            }
            if (len)
                *len = l;
        } else if (len) {
            *len = 0;
        }
        ring_release(ring, tail, n);
        return 1;
    }
}

#define RING_PREFETCH_SLOTS 32u /* slots ahead of the one being taken */

/* (ring.h) An acquire load of each kind byte, then the record; then the
 * run's kind bytes are cleared and the new tail is published (release) once.
 * The clearing is a pass of its own: a slot's line arrives shared from the
 * producer's cache, and a store right after each load stalls on taking it
 * over, line by line, while a run of stores takes them over together.
 * Taking the lines over also drops them from the producer's caches, which
 * matters more than the consumer's cost: a version that marked laps in the
 * kind byte instead and never wrote to slots left the consumed lines in the
 * traced program's L2, and the program ran ~8% slower (churn, default mode). */
size_t rs_ring_consume_fixed(struct rs_ring *ring, struct rs_slot *out, size_t max)
{
    uint64_t tail = __atomic_load_n(&ring->hdr->tail, __ATOMIC_RELAXED);
    size_t n = 0;
    while (n < max) {
        const struct rs_slot *slot = &ring->slots[(tail + n) & ring->mask];
        /* the lines come from the producer's core: ask for them early */
        __builtin_prefetch(&ring->slots[(tail + n + RING_PREFETCH_SLOTS) & ring->mask], 1);
        uint8_t kind = __atomic_load_n(&slot->kind, __ATOMIC_ACQUIRE);
        if (kind == RS_EV_EMPTY || kind == RS_EV_CONT || RS_EV_IS_VAR(kind))
            break;
        memcpy(&out[n], slot, sizeof(*slot));
        out[n].kind = kind;
        n++;
    }
    for (size_t i = 0; i < n; i++)
        __atomic_store_n(&ring->slots[(tail + i) & ring->mask].kind, 0, __ATOMIC_RELAXED);
    if (n)
        __atomic_store_n(&ring->hdr->tail, tail + n, __ATOMIC_RELEASE);
    return n;
}
