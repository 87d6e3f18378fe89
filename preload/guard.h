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

extern __thread int rs_guard_depth __attribute__((tls_model("initial-exec")));

/* Returns 1 when the caller is the outermost hook and should record. */
static inline int rs_guard_enter(void) { return rs_guard_depth++ == 0; }
static inline void rs_guard_leave(void) { rs_guard_depth--; }

#endif
