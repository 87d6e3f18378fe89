/*
 * The per-thread recursion guard. Any hook that records an event first
 * enters the guard; a nested allocator call made while the guard is held
 * (dlsym, our own code, a PyMem domain forwarding to libc, pymalloc calling
 * PyMem_RawMalloc for a large block) passes straight through unrecorded.
 * This is what keeps one allocation from being counted twice.
 * Initial-exec TLS: no allocation on first touch, safe in every hook.
 */
#ifndef REFSCOPE_GUARD_H
#define REFSCOPE_GUARD_H

#include "refscope/events.h"

extern __thread int rs_guard_depth __attribute__((tls_model("initial-exec")));

/* Returns 1 when the caller is the outermost hook and should record. */
static inline int rs_guard_enter(void) { return rs_guard_depth++ == 0; }
static inline void rs_guard_leave(void) { rs_guard_depth--; }

/* Refscope's own Python work (whatever runs at safe points, pysafe.h, and
 * the gc layer's callbacks and wrappers, snapshots at exit) runs between
 * rs_guard_own_begin and rs_guard_own_end: the
 * guard is held, so nothing it does is taken for the program's, but the
 * allocator requests it makes are recorded, one record per request as for
 * the program, flagged RS_F_OWN (events.h) and without a stack. Its objects
 * outlive it (the gc module, our callbacks); without their ALLOC records
 * the program's later frees of them would be frees of unknown blocks, and
 * a program object it drops the last reference to would never be freed.
 * rs_guard_own holds the guard depth that work runs at (0: none). */
extern __thread int rs_guard_own __attribute__((tls_model("initial-exec")));

/* Returns the rs_guard_own to hand back to rs_guard_own_end. */
static inline int rs_guard_own_begin(void)
{
    int saved = rs_guard_own;
    rs_guard_own = ++rs_guard_depth;
    return saved;
}
static inline void rs_guard_own_end(int saved)
{
    rs_guard_own = saved;
    rs_guard_depth--;
}

/* rs_guard_enter for the allocator hooks: RS_GUARD_PASS for a nested call
 * (pass it through unrecorded), else the flags its records carry: 0 for the
 * program's request, RS_F_OWN for one of refscope's own Python work. */
#define RS_GUARD_PASS (-1)
static inline int rs_guard_enter_hook(void)
{
    int depth = rs_guard_depth++;
    if (__builtin_expect(depth == 0, 1))
        return 0;
    return depth == rs_guard_own ? (int)RS_F_OWN : RS_GUARD_PASS;
}

#endif
