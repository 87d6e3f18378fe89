/*
 * The event clock. Producers stamp events with raw ticks: the invariant TSC
 * on x86-64 when the CPU has one (rdtsc, ~3x cheaper than clock_gettime on
 * our VMs), CLOCK_MONOTONIC nanoseconds otherwise. Ticks are converted to
 * nanoseconds offline from RS_EV_CLOCK records (pairs of ticks and
 * CLOCK_MONOTONIC ns) that the shim writes at start and end and the recorder
 * writes about once a second; readers interpolate between pairs.
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
