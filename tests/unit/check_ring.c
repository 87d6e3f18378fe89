/*
 * Unit tests of the shared-memory ring (common/ring.c, include/refscope/ring.h):
 * several producer threads and one consumer thread lose, duplicate or
 * reorder nothing within a producer; VAR records survive the wrap point;
 * lossy mode counts drops; a dead producer's uncommitted slot is skipped;
 * a full lossless ring makes producers wait, and the waits are counted; an
 * overwritten header is corrupt, not a reason to wait or skip forever.
 */
#include <check.h>
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "refscope/ring.h"
#include "check_run.h"

static void *ring_map(size_t slots)
{
    void *map = NULL;
    size_t bytes = RS_RING_HEADER_BYTES + slots * sizeof(struct rs_slot);
    ck_assert_int_eq(posix_memalign(&map, 4096, bytes), 0);
    memset(map, 0, bytes);
    return map;
}

static void ring_new(struct rs_ring *ring, size_t slots, uint32_t flags)
{
    void *map = ring_map(slots);
    ck_assert_int_eq(rs_ring_format(ring, map, RS_RING_HEADER_BYTES + slots * 32, flags, 1), 0);
}

START_TEST(test_format_and_attach)
{
    struct rs_ring a, b;
    void *map = ring_map(1024);
    ck_assert_int_eq(rs_ring_format(&a, map, RS_RING_HEADER_BYTES + 1000 * 32, 0, 1), -EINVAL);
    ck_assert_int_eq(rs_ring_format(&a, map, RS_RING_HEADER_BYTES + 1024 * 32, 0, 7), 0);
    ck_assert_int_eq(rs_ring_attach(&b, map, RS_RING_HEADER_BYTES + 1024 * 32), 0);
    ck_assert_uint_eq(b.mask, 1023);
    ck_assert_uint_eq(b.hdr->producer_pid, 7);
    ck_assert_int_eq(rs_ring_attach(&b, map, RS_RING_HEADER_BYTES + 512 * 32), -EPROTO);
    a.hdr->magic = 0;
    ck_assert_int_eq(rs_ring_attach(&b, map, RS_RING_HEADER_BYTES + 1024 * 32), -EPROTO);
    free(map);
}
END_TEST

/* ---- 4 producers x 1M records, 1 consumer --------------------------------------- */

#define PRODUCERS 4
#define PER_PRODUCER 1000000u

struct producer_arg {
    struct rs_ring *ring;
    uint16_t id;
};

/* Check's assertions report every call to the parent process (a write per
 * assertion), far too slow for millions of records: hot loops count errors
 * and assert once at the end. */
static void *producer(void *p)
{
    struct producer_arg *arg = p;
    uintptr_t errors = 0;
    for (uint64_t seq = 0; seq < PER_PRODUCER; seq++) {
        struct rs_slot rec = { .kind = RS_EV_ALLOC, .thread = arg->id, .addr = seq,
                               .size = seq ^ arg->id, .time = seq };
        if (seq % 1000 == 999) {
            /* a VAR record now and then: its payload names producer and seq */
            uint64_t payload[6] = { arg->id, seq, seq * 3, seq * 5, seq * 7, ~seq };
            rec.kind = RS_EV_NOTE;
            errors += rs_ring_put_var(arg->ring, &rec, payload, sizeof(payload)) != 0;
        } else {
            errors += rs_ring_put(arg->ring, &rec) != 0;
        }
    }
    return (void *)errors;
}

START_TEST(test_producers_consumer)
{
    struct rs_ring ring;
    ring_new(&ring, 4096, 0); /* wraps ~1000 times; producers wait */
    pthread_t threads[PRODUCERS];
    struct producer_arg args[PRODUCERS];
    for (int i = 0; i < PRODUCERS; i++) {
        args[i] = (struct producer_arg){ &ring, (uint16_t)(i + 1) };
        ck_assert_int_eq(pthread_create(&threads[i], NULL, producer, &args[i]), 0);
    }

    /* The consumer runs on this thread, with the same view the recorder has. */
    struct rs_ring reader;
    ck_assert_int_eq(rs_ring_attach(&reader, ring.hdr, ring.map_bytes), 0);
    uint64_t next[PRODUCERS + 1] = { 0 };
    uint64_t total = 0, bad_order = 0, bad_content = 0;
    while (total < (uint64_t)PRODUCERS * PER_PRODUCER) {
        struct rs_slot rec;
        uint64_t payload[8];
        uint32_t len = 0;
        int got = rs_ring_consume(&reader, &rec, payload, sizeof(payload), &len, 0);
        if (got < 0)
            ck_abort_msg("consume failed: %d", got);
        if (!got) {
            sched_yield();
            continue;
        }
        if (rec.thread < 1 || rec.thread > PRODUCERS)
            ck_abort_msg("record from unknown producer %u", rec.thread);
        uint64_t seq = rec.time;
        bad_order += seq != next[rec.thread]; /* lost, duplicated or reordered */
        next[rec.thread] = seq + 1;
        if (rec.kind == RS_EV_NOTE)
            bad_content += len != 48 || payload[0] != rec.thread || payload[1] != seq ||
                           payload[4] != seq * 7 || payload[5] != ~seq;
        else
            bad_content += rec.kind != RS_EV_ALLOC || rec.addr != seq || rec.size != (seq ^ rec.thread);
        total++;
    }
    for (int i = 0; i < PRODUCERS; i++) {
        void *errors;
        pthread_join(threads[i], &errors);
        ck_assert_ptr_null(errors);
        ck_assert_uint_eq(next[i + 1], PER_PRODUCER);
    }
    ck_assert_uint_eq(bad_order, 0);
    ck_assert_uint_eq(bad_content, 0);
    struct rs_slot rec;
    ck_assert_int_eq(rs_ring_consume(&reader, &rec, NULL, 0, NULL, 0), 0);
    ck_assert_uint_eq(ring.hdr->head, ring.hdr->tail);
    ck_assert_uint_eq(ring.hdr->dropped, 0);
    free(ring.hdr);
}
END_TEST

/* ---- VAR records across the wrap point -------------------------------------------- */

START_TEST(test_var_wrap)
{
    struct rs_ring ring;
    ring_new(&ring, 16, 0);
    uint8_t payload[200], out[256];
    /* Shift the start by 1..16 slots so records begin at every position. */
    for (int shift = 1; shift <= 16; shift++) {
        struct rs_slot rec = { .kind = RS_EV_ALLOC };
        struct rs_slot got;
        uint32_t len;
        for (int i = 0; i < shift; i++) {
            ck_assert_int_eq(rs_ring_put(&ring, &rec), 0);
            ck_assert_int_eq(rs_ring_consume(&ring, &got, NULL, 0, NULL, 0), 1);
        }
        for (uint32_t n = 0; n < sizeof(payload); n += 37) {
            for (uint32_t i = 0; i < n; i++)
                payload[i] = (uint8_t)(i * 7 + n + (uint32_t)shift);
            struct rs_slot var = { .kind = RS_EV_NOTE, .flags = 3, .thread = 9, .time = n };
            ck_assert_int_le(rs_var_slots(n), 16);
            ck_assert_int_eq(rs_ring_put_var(&ring, &var, payload, n), 0);
            memset(out, 0xee, sizeof(out));
            ck_assert_int_eq(rs_ring_consume(&ring, &got, out, sizeof(out), &len, 0), 1);
            ck_assert_uint_eq(got.kind, RS_EV_NOTE);
            ck_assert_uint_eq(got.thread, 9);
            ck_assert_uint_eq(got.flags, 3);
            ck_assert_uint_eq(len, n);
            ck_assert_uint_eq(got.stack, n);
            ck_assert_mem_eq(out, payload, n);
            ck_assert_uint_eq(out[n], 0xee); /* nothing written past the payload */
        }
    }
    /* A payload longer than the caller's buffer is truncated and flagged. */
    struct rs_slot var = { .kind = RS_EV_NOTE }, got;
    uint32_t len;
    ck_assert_int_eq(rs_ring_put_var(&ring, &var, payload, 100), 0);
    ck_assert_int_eq(rs_ring_consume(&ring, &got, out, 10, &len, 0), 1);
    ck_assert_uint_eq(len, 100);
    ck_assert_mem_eq(out, payload, 10);
    ck_assert_uint_eq(ring.hdr->head, ring.hdr->tail);
    free(ring.hdr);
}
END_TEST

/* ---- lossy mode ---------------------------------------------------------------------- */

START_TEST(test_lossy_counts_drops)
{
    struct rs_ring ring;
    ring_new(&ring, 64, RS_RING_LOSSY);
    struct rs_slot rec = { .kind = RS_EV_FREE };
    int ok = 0, dropped = 0;
    for (int i = 0; i < 100; i++) {
        rec.addr = (uint64_t)i;
        if (rs_ring_put(&ring, &rec) == 0)
            ok++;
        else
            dropped++;
    }
    ck_assert_int_eq(ok, 64);
    ck_assert_int_eq(dropped, 36);
    ck_assert_uint_eq(ring.hdr->dropped, 36);
    ck_assert_uint_eq(ring.hdr->waits, 0);
    /* a VAR record that does not fit is dropped whole */
    uint8_t payload[64] = { 0 };
    ck_assert_int_eq(rs_ring_put_var(&ring, &rec, payload, sizeof(payload)), -ENOSPC);
    ck_assert_uint_eq(ring.hdr->dropped, 37);
    struct rs_slot got;
    for (int i = 0; i < 64; i++) {
        ck_assert_int_eq(rs_ring_consume(&ring, &got, NULL, 0, NULL, 0), 1);
        ck_assert_uint_eq(got.addr, (uint64_t)i);
    }
    ck_assert_int_eq(rs_ring_put(&ring, &rec), 0); /* room again */
    free(ring.hdr);
}
END_TEST

/* ---- a producer that died mid-write ---------------------------------------------------- */

START_TEST(test_dead_producer_skipped)
{
    struct rs_ring ring;
    ring_new(&ring, 64, 0);
    struct rs_slot rec = { .kind = RS_EV_ALLOC, .addr = 1 }, got;
    uint8_t payload[80];
    memset(payload, 0x5a, sizeof(payload));
    ck_assert_int_eq(rs_ring_put(&ring, &rec), 0);
    /* reserved, never committed: a fixed record, then a VAR record whose
     * continuation slots were written before the producer died */
    ck_assert_uint_eq(rs_ring_reserve(&ring, 1), 1);
    uint64_t var = rs_ring_reserve(&ring, rs_var_slots(sizeof(payload)));
    ck_assert_uint_eq(var, 2);
    for (uint32_t k = 1; k < rs_var_slots(sizeof(payload)); k++)
        ((uint8_t *)rs_ring_slot(&ring, var + k))[0] = RS_EV_CONT;
    rec.addr = 2;
    ck_assert_int_eq(rs_ring_put(&ring, &rec), 0); /* another thread's committed record */

    ck_assert_int_eq(rs_ring_consume(&ring, &got, NULL, 0, NULL, 0), 1);
    ck_assert_uint_eq(got.addr, 1);
    /* while the producer lives, the consumer waits for the slot */
    ck_assert_int_eq(rs_ring_consume(&ring, &got, NULL, 0, NULL, 0), 0);
    /* once it is dead, the slot and the orphaned continuations are skipped */
    ck_assert_int_eq(rs_ring_consume(&ring, &got, payload, sizeof(payload), NULL,
                                     RS_RING_PRODUCER_DEAD), 1);
    ck_assert_uint_eq(got.kind, RS_EV_ALLOC);
    ck_assert_uint_eq(got.addr, 2);
    ck_assert_int_eq(rs_ring_consume(&ring, &got, NULL, 0, NULL, RS_RING_PRODUCER_DEAD), 0);
    ck_assert_uint_eq(ring.hdr->tail, ring.hdr->head);
    /* the skipped slots are clean for the next lap */
    for (uint64_t i = 0; i < ring.hdr->head; i++)
        ck_assert_uint_eq(rs_ring_slot(&ring, i)->kind, 0);
    free(ring.hdr);
}
END_TEST

/* A program that overwrites the ring's header (the mapping is its memory):
 * a head more than a lap ahead of the tail, or a tail past the head, is
 * corrupt for the consumer, dead producer or not (skipping towards such a
 * head would take forever), and a producer drops at once instead of
 * waiting for room that will never come. */
START_TEST(test_overwritten_header)
{
    struct rs_ring ring;
    struct rs_slot rec = { .kind = RS_EV_ALLOC, .addr = 1 }, got;
    ring_new(&ring, 64, 0);
    ck_assert_int_eq(rs_ring_put(&ring, &rec), 0);
    ck_assert_int_eq(rs_ring_consume(&ring, &got, NULL, 0, NULL, 0), 1);
    ck_assert_int_eq(rs_ring_consume(&ring, &got, NULL, 0, NULL, 0), 0);
    ring.hdr->head = ring.hdr->tail + 64; /* a full lap reserved: still possible */
    ck_assert_int_eq(rs_ring_consume(&ring, &got, NULL, 0, NULL, 0), 0);
    ring.hdr->head = 0x5eed5eed5eed5eedull;
    ck_assert_int_eq(rs_ring_consume(&ring, &got, NULL, 0, NULL, 0), -EPROTO);
    ck_assert_int_eq(rs_ring_consume(&ring, &got, NULL, 0, NULL, RS_RING_PRODUCER_DEAD), -EPROTO);
    uint64_t dropped = ring.hdr->dropped;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    ck_assert_int_eq(rs_ring_put(&ring, &rec), -ENOSPC);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    ck_assert_uint_eq(ring.hdr->dropped, dropped + 1);
    ck_assert_int_lt((t1.tv_sec - t0.tv_sec) * 1000000000L + (t1.tv_nsec - t0.tv_nsec), 500000000L);
    ring.hdr->head = 3;
    ring.hdr->tail = 9; /* a tail past the head */
    ck_assert_int_eq(rs_ring_consume(&ring, &got, NULL, 0, NULL, 0), -EPROTO);
    ring.tail_cache = 9; /* a producer that has read it: its head is not merely stale */
    ck_assert_int_eq(rs_ring_put(&ring, &rec), -ENOSPC);
    free(ring.hdr);
}
END_TEST

/* ---- full ring, lossless: producers wait and the waits are counted ---------------------- */

static void *fill_producer(void *p)
{
    struct rs_ring *ring = p;
    uintptr_t errors = 0;
    for (uint64_t i = 0; i < 200; i++) {
        struct rs_slot rec = { .kind = RS_EV_ALLOC, .addr = i };
        errors += rs_ring_put(ring, &rec) != 0;
    }
    return (void *)errors;
}

START_TEST(test_full_ring_waits)
{
    struct rs_ring ring;
    ring_new(&ring, 32, 0);
    pthread_t thread;
    ck_assert_int_eq(pthread_create(&thread, NULL, fill_producer, &ring), 0);
    /* let it fill the ring and block */
    while (__atomic_load_n(&ring.hdr->waits, __ATOMIC_RELAXED) == 0)
        sched_yield();
    ck_assert_uint_eq(__atomic_load_n(&ring.hdr->head, __ATOMIC_RELAXED), 32);
    struct rs_slot got;
    for (uint64_t i = 0; i < 200; i++) {
        int rc;
        while ((rc = rs_ring_consume(&ring, &got, NULL, 0, NULL, 0)) == 0)
            sched_yield();
        ck_assert_int_eq(rc, 1);
        ck_assert_uint_eq(got.addr, i);
    }
    void *errors;
    pthread_join(thread, &errors);
    ck_assert_ptr_null(errors);
    ck_assert_uint_ge(ring.hdr->waits, 1);
    ck_assert_uint_le(ring.hdr->waits, 200 - 32);
    ck_assert_uint_eq(ring.hdr->dropped, 0);
    free(ring.hdr);
}
END_TEST

/* A closed ring, or a stall callback that gives up, drops instead of waiting. */
static int give_up(void *ctx)
{
    (*(int *)ctx)++;
    return 1;
}

START_TEST(test_closed_and_stalled)
{
    struct rs_ring ring;
    ring_new(&ring, 16, 0);
    struct rs_slot rec = { .kind = RS_EV_ALLOC };
    int calls = 0;
    ring.stalled = give_up;
    ring.stall_ctx = &calls;
    for (int i = 0; i < 16; i++)
        ck_assert_int_eq(rs_ring_put(&ring, &rec), 0);
    ck_assert_int_eq(rs_ring_put(&ring, &rec), -ENOSPC); /* full, recorder "gone" */
    ck_assert_int_eq(calls, 1);
    ck_assert_uint_eq(ring.hdr->dropped, 1);
    ring.hdr->closed = 1;
    ck_assert_uint_eq(rs_ring_reserve(&ring, 1), UINT64_MAX);
    free(ring.hdr);
}
END_TEST

/* A thread interrupted between reserving and committing, whose signal
 * handler then records into a full ring: the ring cannot drain past the
 * interrupted record, so the handler's lossless wait must give up (drop and
 * count) instead of waiting forever; further waits on that slot give up at
 * once, and once the record is committed and consumed everything is normal. */
START_TEST(test_blocked_ring_gives_up)
{
    struct rs_ring ring;
    struct timespec t0, t1, t2;
    ring_new(&ring, 16, 0);
    struct rs_slot rec = { .kind = RS_EV_ALLOC, .addr = 1 };
    uint64_t interrupted = rs_ring_reserve(&ring, 1); /* reserved, never committed (yet) */
    ck_assert_uint_eq(interrupted, 0);
    for (int i = 1; i < 16; i++)
        ck_assert_int_eq(rs_ring_put(&ring, &rec), 0);
    clock_gettime(CLOCK_MONOTONIC, &t0);
    ck_assert_int_eq(rs_ring_put(&ring, &rec), -ENOSPC); /* the "handler" */
    clock_gettime(CLOCK_MONOTONIC, &t1);
    ck_assert_int_eq(rs_ring_put(&ring, &rec), -ENOSPC);
    clock_gettime(CLOCK_MONOTONIC, &t2);
    double first = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
    double second = (double)(t2.tv_sec - t1.tv_sec) + (double)(t2.tv_nsec - t1.tv_nsec) / 1e9;
    ck_assert_msg(first >= 0.9 && first < 30, "gave up after %.3f s", first);
    ck_assert_msg(second < 0.5, "a second wait on the same slot took %.3f s", second);
    ck_assert_uint_eq(ring.hdr->dropped, 2);
    /* the interrupted record completes: the ring drains and takes records again */
    rs_ring_slot(&ring, interrupted)->addr = 7;
    rs_ring_commit(&ring, interrupted, RS_EV_FREE);
    struct rs_slot got;
    ck_assert_int_eq(rs_ring_consume(&ring, &got, NULL, 0, NULL, 0), 1);
    ck_assert_uint_eq(got.addr, 7);
    for (int i = 1; i < 16; i++)
        ck_assert_int_eq(rs_ring_consume(&ring, &got, NULL, 0, NULL, 0), 1);
    ck_assert_int_eq(rs_ring_put(&ring, &rec), 0);
    ck_assert_uint_eq(ring.hdr->dropped, 2);
    free(ring.hdr);
}
END_TEST

/* ...but a ring that drains, however slowly, is waited for: here two records
 * in flight at the tail take 1.4 s between them, 0.7 s each. */
static void *put_one(void *p)
{
    struct rs_slot rec = { .kind = RS_EV_ALLOC, .addr = 99 };
    return (void *)(uintptr_t)(rs_ring_put(p, &rec) != 0);
}

START_TEST(test_slow_ring_is_waited_for)
{
    struct rs_ring ring;
    struct timespec pause = { 0, 700000000 };
    struct rs_slot rec = { .kind = RS_EV_ALLOC, .addr = 1 }, got;
    pthread_t waiter;
    void *failed;
    ring_new(&ring, 16, 0);
    ck_assert_uint_eq(rs_ring_reserve(&ring, 1), 0);
    ck_assert_uint_eq(rs_ring_reserve(&ring, 1), 1);
    for (int i = 2; i < 16; i++)
        ck_assert_int_eq(rs_ring_put(&ring, &rec), 0);
    ck_assert_int_eq(pthread_create(&waiter, NULL, put_one, &ring), 0);
    for (uint64_t k = 0; k < 2; k++) {
        nanosleep(&pause, NULL);
        rs_ring_commit(&ring, k, RS_EV_FREE);
        ck_assert_int_eq(rs_ring_consume(&ring, &got, NULL, 0, NULL, 0), 1);
    }
    while (rs_ring_consume(&ring, &got, NULL, 0, NULL, 0) == 1)
        ;
    pthread_join(waiter, &failed);
    ck_assert_ptr_null(failed);
    ck_assert_uint_eq(ring.hdr->dropped, 0);
    free(ring.hdr);
}
END_TEST

/* A producer that found the ring full goes on only once a sixteenth of it
 * (plus its record) is free again: producer and consumer work in batches. */
static void *one_more_producer(void *p)
{
    struct rs_ring *ring = p;
    struct rs_slot rec = { .kind = RS_EV_FREE, .addr = 64 };
    return (void *)(uintptr_t)(rs_ring_put(ring, &rec) != 0);
}

START_TEST(test_full_ring_resumes_in_batches)
{
    struct rs_ring ring;
    ring_new(&ring, 64, 0);
    for (uint64_t i = 0; i < 64; i++) {
        struct rs_slot rec = { .kind = RS_EV_ALLOC, .addr = i };
        ck_assert_int_eq(rs_ring_put(&ring, &rec), 0);
    }
    pthread_t thread;
    ck_assert_int_eq(pthread_create(&thread, NULL, one_more_producer, &ring), 0);
    while (__atomic_load_n(&ring.hdr->waits, __ATOMIC_RELAXED) == 0)
        sched_yield();
    struct rs_slot got;
    ck_assert_int_eq(rs_ring_consume(&ring, &got, NULL, 0, NULL, 0), 1);
    struct timespec ts = { 0, 50000000 };
    nanosleep(&ts, NULL);
    /* one slot free: not enough */
    ck_assert_uint_eq(__atomic_load_n(&ring.hdr->head, __ATOMIC_ACQUIRE), 64);
    for (int i = 0; i < 4; i++)
        ck_assert_int_eq(rs_ring_consume(&ring, &got, NULL, 0, NULL, 0), 1);
    void *failed;
    pthread_join(thread, &failed);
    ck_assert_ptr_null(failed);
    ck_assert_uint_eq(ring.hdr->head, 65);
    for (uint64_t i = 5; i < 65; i++) {
        ck_assert_int_eq(rs_ring_consume(&ring, &got, NULL, 0, NULL, 0), 1);
        ck_assert_uint_eq(got.addr, i);
    }
    ck_assert_uint_eq(ring.hdr->waits, 1);
    free(ring.hdr);
}
END_TEST

/* rs_ring_reserve_solo's index, or NOT_RESERVED when it declined. */
#define NOT_RESERVED (UINT64_MAX - 1)
static uint64_t solo(struct rs_ring *ring, uint32_t n)
{
    uint64_t index;
    return rs_ring_reserve_solo(ring, n, &index) ? index : NOT_RESERVED;
}

/* The unlocked reservation of a lone producer: same indices as the CAS,
 * interleaves with it, and declines when full, asked for nothing or
 * more than the ring holds, or when the head is behind the tail. (It does not
 * look at `closed`: emit.c ends solo mode before the ring is closed.) */
START_TEST(test_solo_reserve)
{
    struct rs_ring ring;
    ring_new(&ring, 16, 0);
#if defined(__x86_64__)
    for (uint64_t i = 0; i < 16; i++) {
        uint64_t index = i % 3 ? solo(&ring, 1) : rs_ring_reserve(&ring, 1);
        ck_assert_uint_eq(index, i);
        rs_ring_commit(&ring, index, RS_EV_ALLOC);
    }
    ck_assert_uint_eq(solo(&ring, 1), NOT_RESERVED); /* full */
    struct rs_slot got;
    ck_assert_int_eq(rs_ring_consume(&ring, &got, NULL, 0, NULL, 0), 1);
    ring.tail_cache = ring.hdr->tail; /* what rs_ring_reserve_slow would learn */
    ck_assert_uint_eq(solo(&ring, 1), 16);
    ck_assert_uint_eq(solo(&ring, 1), NOT_RESERVED); /* full again */
    ck_assert_uint_eq(solo(&ring, 0), NOT_RESERVED);
    ck_assert_uint_eq(solo(&ring, 17), NOT_RESERVED);
    ck_assert_int_eq(rs_ring_consume(&ring, &got, NULL, 0, NULL, 0), 1);
    ring.tail_cache = ring.hdr->tail;
    ring.hdr->head = 0; /* scribbled by the program: behind the tail */
    ck_assert_uint_eq(solo(&ring, 1), NOT_RESERVED);
    ring.hdr->head = 17;
    ck_assert_uint_eq(solo(&ring, 1), 17);
#else
    ck_assert_uint_eq(solo(&ring, 1), NOT_RESERVED);
#endif
    free(ring.hdr);
}
END_TEST

/* ---- the consumer's fixed-record fast path ---------------------------------------- */

START_TEST(test_consume_fixed_runs)
{
    struct rs_ring ring;
    ring_new(&ring, 64, 0);
    struct rs_slot out[64], got;
    uint8_t payload[40] = {0}, buf[64];
    uint32_t len;
    uint64_t next = 0; /* size field numbers records in production order */
    for (int round = 0; round < 50; round++) {
        /* fixed, fixed, VAR, fixed: the run stops at the VAR record */
        for (int i = 0; i < 4; i++) {
            struct rs_slot rec = { .kind = i == 2 ? RS_EV_NOTE : RS_EV_ALLOC, .size = next++ };
            if (i == 2)
                ck_assert_int_eq(rs_ring_put_var(&ring, &rec, payload, sizeof(payload)), 0);
            else
                ck_assert_int_eq(rs_ring_put(&ring, &rec), 0);
        }
        ck_assert_uint_eq(rs_ring_consume_fixed(&ring, out, 64), 2);
        ck_assert_uint_eq(out[0].size, next - 4);
        ck_assert_uint_eq(out[1].size, next - 3);
        ck_assert_uint_eq(out[1].kind, RS_EV_ALLOC);
        ck_assert_uint_eq(rs_ring_consume_fixed(&ring, out, 64), 0); /* VAR at the tail */
        ck_assert_int_eq(rs_ring_consume(&ring, &got, buf, sizeof(buf), &len, 0), 1);
        ck_assert_uint_eq(got.kind, RS_EV_NOTE);
        ck_assert_uint_eq(rs_ring_consume_fixed(&ring, out, 64), 1);
        ck_assert_uint_eq(out[0].size, next - 1);
    }
    /* an uncommitted slot ends a run and is not consumed */
    uint64_t idx = rs_ring_reserve(&ring, 1);
    ck_assert_uint_eq(rs_ring_consume_fixed(&ring, out, 64), 0);
    rs_ring_slot(&ring, idx)->size = 7;
    rs_ring_commit(&ring, idx, RS_EV_FREE);
    ck_assert_uint_eq(rs_ring_consume_fixed(&ring, out, 64), 1);
    ck_assert_uint_eq(out[0].kind, RS_EV_FREE);
    ck_assert_uint_eq(ring.hdr->head, ring.hdr->tail);
    free(ring.hdr);
}
END_TEST

int main(void)
{
    const TTest *tests[] = {
        test_format_and_attach,
        test_producers_consumer,
        test_var_wrap,
        test_lossy_counts_drops,
        test_dead_producer_skipped,
        test_overwritten_header,
        test_full_ring_waits,
        test_closed_and_stalled,
        test_blocked_ring_gives_up,
        test_slow_ring_is_waited_for,
        test_full_ring_resumes_in_batches,
        test_solo_reserve,
        test_consume_fixed_runs,
    };
    return rs_check_run("ring", 120, tests, sizeof(tests) / sizeof(tests[0]));
}
