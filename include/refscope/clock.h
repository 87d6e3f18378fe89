/*
 * The event clock. Producers stamp events with raw ticks: the invariant TSC
 * on x86-64 when the CPU has one (rdtsc, ~3x cheaper than clock_gettime on
 * our VMs), CLOCK_MONOTONIC nanoseconds otherwise. Ticks are converted to
 * nanoseconds offline from RS_EV_CLOCK records (pairs of ticks and
 * CLOCK_MONOTONIC ns) that the shim writes at start and end and the recorder
 * writes about once a second; readers interpolate between pairs.
 *
 * Resolution. Even rdtsc costs 12-20 ns in our VMs, more than the rest of an
 * allocation record, so the hot-path records (RS_EV_ALLOC, RS_EV_FREE,
 * RS_EV_OBJ_CREATE, RS_EV_OBJ_DESTROY) carry the recording thread's cached
 * reading of the clock (preload/emit.h, rs_emit_lane). A thread reads the
 * clock afresh
 *   - for its first record,
 *   - after its cached reading has stamped 64 records (RS_EMIT_CLOCK_RECORDS),
 *   - at its first record after the recorder stored a new value in the ring's
 *     `now` word (ring.h), which it does once per loop iteration: about every
 *     0.1-0.4 ms while it waits for records, after each batch of at most
 *     65536 records of that ring while it drains,
 *   - and whenever it stamps any other record (those are always exact).
 * So a hot-path record made at true time T has a time t with
 *     T - X <= t <= T,
 * X being the shorter of the time the thread took for its 63 previous
 * records (about 2 us for a thread allocating flat out) and the time since
 * the recorder's last `now` store before T (one recorder loop turn; longer
 * only if the recorder is not scheduled). Times never decrease within a
 * thread; every other record kind is exact. (The recorder may also drop low
 * bits of every time, `time_shift` in trace.h.) An interval between two
 * records reads at most X1 longer and at most X2 shorter than it was (X1, X2:
 * the X of its first and of its last record). A thread that was idle, e.g.
 * sleeping, reads the clock afresh at its next record once the recorder has
 * run meanwhile (X = 0 there), so an interval that ends after such a pause
 * never reads short: lifetimes and pauses longer than a recorder loop turn
 * come out right to within X1.
 */
#ifndef REFSCOPE_CLOCK_H
#define REFSCOPE_CLOCK_H

#include <stdint.h>
#include <time.h>
#include "refscope/events.h"

#if defined(__x86_64__)
#include <x86intrin.h>
#endif

static inline uint64_t rs_clock_mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static inline uint64_t rs_clock_real_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* Ticks of the given clock kind (enum rs_clock_kind). */
static inline uint64_t rs_clock_ticks(uint32_t kind)
{
#if defined(__x86_64__)
    if (kind == RS_CLOCK_TSC)
        return __rdtsc();
#endif
    (void)kind;
    return rs_clock_mono_ns();
}

/* The best clock this machine offers: RS_CLOCK_TSC when the CPU reports an
 * invariant TSC (constant_tsc and nonstop_tsc), else RS_CLOCK_MONOTONIC_NS.
 * Reads /proc/cpuinfo with raw syscalls; safe in a constructor. */
uint32_t rs_clock_pick(void);

#endif
