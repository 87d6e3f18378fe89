/*
 * Waiting for another thread to finish a short step the caller depends on:
 * a claimed table slot being filled in, a definition being emitted. Spin a
 * little (the usual case is a few stores away), then yield the CPU so that
 * an owner the scheduler (or the hypervisor) took off its CPU can finish, up
 * to a time limit after which the caller takes its fallback. No allocation,
 * no lock: safe inside any hook.
 *
 *     struct rs_backoff b = RS_BACKOFF_INIT;
 *     while (!done())
 *         if (!rs_backoff(&b, limit_ns))
 *             return fallback();
 *
 * or, for a word that another thread changes from a "busy" value,
 * rs_wait_while_u32/u64 (below).
 */
#ifndef REFSCOPE_BACKOFF_H
#define REFSCOPE_BACKOFF_H

#include <sched.h>
#include <stdint.h>

#include "refscope/clock.h"

#define RS_BACKOFF_SPINS 256

/* How long a lookup waits for another thread: to fill in a slot it claimed
 * (a few stores; longer only when it was taken off its CPU), and to publish
 * the id of a definition it emits (which waits for ring room when the ring
 * is full). Past these the caller defines again, or goes without. */
#define RS_WAIT_CLAIM_NS  100000000ull   /* 100 ms */
#define RS_WAIT_DEFINE_NS 1000000000ull  /* 1 s    */

struct rs_backoff {
    unsigned step;
    uint64_t since;  /* when yielding began (monotonic ns) */
};
#define RS_BACKOFF_INIT { 0, 0 }

/* One step of waiting; returns 0 once `limit_ns` have passed since the
 * spinning ended. */
static inline int rs_backoff(struct rs_backoff *b, uint64_t limit_ns)
{
    if (b->step < RS_BACKOFF_SPINS) {
        b->step++;
#if defined(__x86_64__)
        __builtin_ia32_pause();
#endif
        return 1;
    }
    uint64_t now = rs_clock_mono_ns();
    if (!b->since)
        b->since = now;
    else if (now - b->since >= limit_ns)
        return 0;
    sched_yield();
    return 1;
}

/* The common wait: while *p still holds `busy` (another thread's step in
 * progress: an id not yet published, a slot being claimed), up to
 * `limit_ns` after the spinning. Returns the last value read, `busy` when
 * the limit passed. */
static inline uint32_t rs_wait_while_u32(const uint32_t *p, uint32_t busy, uint64_t limit_ns)
{
    struct rs_backoff b = RS_BACKOFF_INIT;
    uint32_t v;
    while ((v = __atomic_load_n(p, __ATOMIC_ACQUIRE)) == busy && rs_backoff(&b, limit_ns))
        ;
    return v;
}

static inline uint64_t rs_wait_while_u64(const uint64_t *p, uint64_t busy, uint64_t limit_ns)
{
    struct rs_backoff b = RS_BACKOFF_INIT;
    uint64_t v;
    while ((v = __atomic_load_n(p, __ATOMIC_ACQUIRE)) == busy && rs_backoff(&b, limit_ns))
        ;
    return v;
}

#endif
